//! A child process that is stopped (SIGTERM, then SIGKILL) when its handle drops.

use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// A running background program owned by a test.
#[derive(Debug)]
pub struct Daemon {
    what: String,
    child: Option<Child>,
}

impl Daemon {
    pub(crate) fn spawn(what: &str, mut cmd: Command) -> Result<Self> {
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {what}: {cmd:?}"))?;
        Ok(Self {
            what: what.to_owned(),
            child: Some(child),
        })
    }

    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Takes the child's piped stdout (set `Stdio::piped()` before spawning).
    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.as_mut().and_then(|c| c.stdout.take())
    }

    /// Whether it has exited, and how.
    ///
    /// # Errors
    /// When waiting on the child fails.
    pub fn try_status(&mut self) -> Result<Option<ExitStatus>> {
        match &mut self.child {
            Some(c) => c
                .try_wait()
                .with_context(|| format!("polling {}", self.what)),
            None => Ok(None),
        }
    }

    /// Sends `signal` (e.g. `libc::SIGKILL` to simulate a crash) without waiting.
    pub fn signal(&self, signal: i32) {
        if let Some(c) = &self.child {
            if let Ok(pid) = i32::try_from(c.id()) {
                // SAFETY: kill with our own child's pid (not yet reaped, so not reused) and a
                // caller-chosen signal number; no memory is involved.
                unsafe { libc::kill(pid, signal) };
            }
        }
    }

    /// Stops it: SIGTERM, up to `grace` to exit, then SIGKILL. Returns how it ended.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if let Ok(pid) = i32::try_from(child.id()) {
            // SAFETY: as in `signal`: our unreaped child's pid and a constant signal.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        child.wait().ok()
    }

    /// Waits up to `limit` for `ready()` (a socket that accepts, a file that exists), polling
    /// every 20 ms.
    ///
    /// # Errors
    /// When the daemon exits first (with its status), or `ready()` is still false at `limit`.
    pub fn wait_until(&mut self, limit: Duration, ready: impl Fn() -> bool) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            if ready() {
                return Ok(());
            }
            if let Some(status) = self.try_status()? {
                anyhow::bail!("{} exited ({status}) before it was ready", self.what);
            }
            if Instant::now() >= deadline {
                anyhow::bail!("{} was not ready within {limit:?}", self.what);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for it to exit on its own, up to `limit`.
    pub fn wait_timeout(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            match self.try_status() {
                Ok(Some(s)) => {
                    self.child = None;
                    return Some(s);
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(_) => return None,
            }
        }
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(2));
    }
}
