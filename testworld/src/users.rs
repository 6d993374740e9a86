//! Real local users for the tests where permissions are the point (who may use outsock's
//! sockets): `useradd` at the start of a test, `userdel` when the [`TestUser`] is dropped, also
//! while unwinding from a failed assertion. Names are `osu<pid><role>`, so parallel tests and
//! parallel runs never collide, and a later run deletes the leftovers of a crashed one.

use std::process::Command;

use anyhow::{Context, Result};

use crate::cmd::sh;

/// Prefix of every user this module creates.
const PREFIX: &str = "osu";

/// A system user that exists for as long as this value.
#[derive(Debug)]
pub struct TestUser {
    name: String,
    uid: u32,
    gid: u32,
}

impl TestUser {
    /// Creates the user `osu<pid><role>` (no home, no login shell) with its own group.
    /// `role` is a few lowercase letters (`proc`, `vmma`, `out`, …).
    ///
    /// # Errors
    /// When `useradd` fails or the new ids cannot be read.
    pub fn create(role: &str) -> Result<Self> {
        remove_leftovers();
        let name = format!("{PREFIX}{}{role}", std::process::id());
        sh(Command::new("useradd")
            .args(["--system", "--user-group", "--no-create-home"])
            .args(["--shell", "/usr/sbin/nologin"])
            .arg(&name))?;
        let user = Self {
            uid: id(&name, "-u")?,
            gid: id(&name, "-g")?,
            name,
        };
        Ok(user)
    }

    /// The user's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The user's uid.
    #[must_use]
    pub fn uid(&self) -> u32 {
        self.uid
    }

    /// The user's primary gid.
    #[must_use]
    pub fn gid(&self) -> u32 {
        self.gid
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).output();
    }
}

fn id(name: &str, flag: &str) -> Result<u32> {
    let out = sh(Command::new("id").arg(flag).arg(name))?;
    out.trim()
        .parse()
        .with_context(|| format!("`id {flag} {name}` printed {out:?}"))
}

/// Deletes the users of test processes that no longer exist.
fn remove_leftovers() {
    let Ok(passwd) = std::fs::read_to_string("/etc/passwd") else {
        return;
    };
    for line in passwd.lines() {
        let Some(name) = line.split(':').next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if !pid.is_empty() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("userdel").arg(name).output();
        }
    }
}
