//! Named network namespaces: create, enter, run programs in, and delete.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::cmd::sh;
use crate::daemon::Daemon;

/// A named network namespace (`/run/netns/NAME`), deleted on drop together with every process
/// still inside it.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace with its loopback up.
    ///
    /// # Errors
    /// When `ip netns add` fails (not root, or the name exists).
    pub fn create(name: &str) -> Result<Self> {
        sh(Command::new("ip").args(["netns", "add", name]))?;
        let ns = Self {
            name: name.to_owned(),
        };
        sh(Command::new("ip").args(["-n", name, "link", "set", "lo", "up"]))?;
        Ok(ns)
    }

    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs `program` inside this namespace (through `ip netns exec`, which also
    /// gives it this namespace's /sys). The process dies with the test process.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        die_with_parent(&mut cmd);
        cmd
    }

    /// `ip -n NAME ARGS…`, for configuring this namespace's links, addresses and routes.
    ///
    /// # Errors
    /// When `ip` exits with failure; the error carries its stderr.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        sh(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// Starts a long-running program in this namespace; it is stopped when the [`Daemon`] drops.
    ///
    /// # Errors
    /// When the program cannot be started.
    pub fn spawn(&self, what: &str, mut cmd: Command) -> Result<Daemon> {
        // `cmd` may have been built by `command()` already; a plain Command is wrapped here.
        if cmd.get_program() != "ip" {
            let mut wrapped = self.command(cmd.get_program());
            wrapped.args(cmd.get_args());
            if let Some(dir) = cmd.get_current_dir() {
                wrapped.current_dir(dir);
            }
            for (k, v) in cmd.get_envs() {
                match v {
                    Some(v) => wrapped.env(k, v),
                    None => wrapped.env_remove(k),
                };
            }
            cmd = wrapped;
        }
        cmd.stdin(Stdio::null());
        Daemon::spawn(what, cmd)
    }

    /// Runs `f` on a fresh thread that has entered this namespace, so in-process sockets (a
    /// `TcpStream`, a test client) live here. Only the network namespace changes.
    ///
    /// # Errors
    /// When the namespace cannot be entered; `f`'s own panics propagate.
    pub fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let path = self.path();
        let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        let handle = std::thread::spawn(move || -> Result<T> {
            // SAFETY: setns takes a valid open namespace fd (owned by `file`, alive for the
            // call) and a constant flag; it changes only this new thread's network namespace.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                bail!(
                    "setns({}) failed: {}",
                    path.display(),
                    std::io::Error::last_os_error()
                );
            }
            Ok(f())
        });
        match handle.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// PIDs of the processes inside this namespace.
    #[must_use]
    pub fn pids(&self) -> Vec<i32> {
        pids_in(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        delete(&self.name);
    }
}

fn pids_in(name: &str) -> Vec<i32> {
    Command::new("ip")
        .args(["netns", "pids", name])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Kills what still runs inside `name` and deletes it. Used on drop and for leftovers.
pub(crate) fn delete(name: &str) {
    for pid in pids_in(name) {
        // SAFETY: kill with a pid read from `ip netns pids` and a constant signal; at worst the
        // pid is already gone and kill fails harmlessly.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let _ = Command::new("ip")
        .args(["netns", "del", name])
        .stderr(Stdio::null())
        .status();
}

/// Lists existing namespace names.
pub(crate) fn list() -> Vec<String> {
    Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Makes the child get SIGKILL when the test process goes away, so a crashed test leaves no
/// daemons behind (the namespaces themselves are swept at the next start).
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec and calls only prctl, which is
    // async-signal-safe; it touches no memory shared with the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
