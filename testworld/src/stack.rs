//! outsock's own daemons running in a test world: outsock-dns-cache and outsock-host-server in
//! `host`, with their sockets, database and configs in the world's temp dir, and legacy programs
//! started in `legacy` with liboutsock preloaded (process mode).
//!
//! The binaries are found in the cargo target directory of the running test (`target/debug`,
//! next to `deps/`), or in `$OUTSOCK_BIN_DIR`. `scripts/test` builds them all first.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::addr;
use crate::daemon::Daemon;
use crate::world::World;

/// The guest DNS address (first address of dns-cache's default destination pool).
pub const GUEST_DNS: Ipv4Addr = Ipv4Addr::new(10, 170, 160, 1);

/// Where the workspace's binaries are.
///
/// # Errors
/// When the directory cannot be determined.
pub fn bin_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("OUTSOCK_BIN_DIR") {
        return Ok(PathBuf::from(d));
    }
    let exe = std::env::current_exe()?;
    let mut dir = exe
        .parent()
        .context("test binary has no directory")?
        .to_path_buf();
    // Test binaries live in target/debug/deps; programs (and the demo) in target/debug.
    if dir.ends_with("deps") {
        dir.pop();
    }
    Ok(dir)
}

/// A built artefact of the workspace, checked to exist.
///
/// # Errors
/// When it is not built.
pub fn artefact(name: &str) -> Result<PathBuf> {
    let p = bin_dir()?.join(name);
    if !p.is_file() {
        bail!(
            "{} is not built (run `cargo build --workspace` first)",
            p.display()
        );
    }
    Ok(p)
}

/// dns-cache and host-server running in a world.
#[derive(Debug)]
pub struct Stack {
    pub world: World,
    dns: Option<Daemon>,
    host: Option<Daemon>,
    host_extra: String,
    dns_extra: String,
}

impl Stack {
    /// Starts a world and both daemons. `host_extra` is appended to host-server's TOML config
    /// (e.g. `[listen]\nallowed_ports = [8080]`).
    ///
    /// # Errors
    /// When the world or a daemon does not come up.
    pub fn start(label: &str, host_extra: &str) -> Result<Self> {
        Self::start_with(label, "", host_extra)
    }

    /// [`Stack::start`], with `dns_extra` appended to dns-cache's TOML config as well (e.g.
    /// `source_dummies_per_64 = 16`).
    ///
    /// # Errors
    /// When the world or a daemon does not come up.
    pub fn start_with(label: &str, dns_extra: &str, host_extra: &str) -> Result<Self> {
        let world = World::start(label)?;
        let mut s = Self {
            world,
            dns: None,
            host: None,
            host_extra: host_extra.to_owned(),
            dns_extra: dns_extra.to_owned(),
        };
        s.write_configs()?;
        s.start_dns()?;
        s.start_host()?;
        Ok(s)
    }

    fn write_configs(&self) -> Result<()> {
        let w = &self.world;
        std::fs::write(
            w.path("dns-cache.toml"),
            format!(
                "listen = [\"[::1]:53\"]\nupstreams = [\"[{dns}]:53\"]\nupstream_timeout_ms = 1000\n\
                 database = \"{db}\"\nlookup_socket = \"{sock}\"\nmetrics = \"\"\n{extra}\n",
                dns = addr::DNS,
                db = self.db().display(),
                sock = self.dns_sock().display(),
                extra = self.dns_extra,
            ),
        )?;
        std::fs::write(
            w.path("host-server.toml"),
            format!(
                "socket = \"{sock}\"\ndns_socket = \"{dns}\"\ndatabase = \"{db}\"\n\
                 metrics_listen = \"\"\nconnect_timeout_ms = 5000\ndrain_timeout_secs = 2\n{extra}\n",
                sock = self.host_sock().display(),
                dns = self.dns_sock().display(),
                db = self.db().display(),
                extra = self.host_extra,
            ),
        )?;
        Ok(())
    }

    /// host-server's socket (what liboutsock connects to).
    #[must_use]
    pub fn host_sock(&self) -> PathBuf {
        self.world.path("host.sock")
    }

    /// dns-cache's look-up socket.
    #[must_use]
    pub fn dns_sock(&self) -> PathBuf {
        self.world.path("dns.sock")
    }

    /// The mapping database.
    #[must_use]
    pub fn db(&self) -> PathBuf {
        self.world.path("mappings.sqlite3")
    }

    fn launch(&self, bin: &str, config: &str, log: &str) -> Result<Daemon> {
        let mut cmd = self.world.host().command(artefact(bin)?);
        cmd.arg("--config").arg(self.world.path(config));
        // A restart starts LOG afresh (tests read what this instance says); what the earlier
        // instances said moves to LOG.earlier, which `logs` shows too: a failure seen after
        // a restart may have begun before it.
        if let Ok(said) = std::fs::read(self.world.path(log)) {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.world.path(&format!("{log}.earlier")))?
                .write_all(&said)?;
        }
        cmd.stdout(std::fs::File::create(self.world.path(log))?);
        cmd.stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.world.path(log))?,
        );
        self.world.host().spawn(bin, cmd)
    }

    fn wait_for_socket(path: &Path, d: &mut Daemon, what: &str, log: &Path) -> Result<()> {
        d.wait_until(Duration::from_secs(15), || {
            std::os::unix::net::UnixStream::connect(path).is_ok()
        })
        .with_context(|| {
            format!(
                "{what} did not listen on {}: {}",
                path.display(),
                std::fs::read_to_string(log).unwrap_or_default()
            )
        })
    }

    /// Starts (or restarts) dns-cache.
    ///
    /// # Errors
    /// When it does not come up.
    pub fn start_dns(&mut self) -> Result<()> {
        let mut d = self.launch("outsock-dns-cache", "dns-cache.toml", "dns-cache.log")?;
        Self::wait_for_socket(
            &self.dns_sock(),
            &mut d,
            "outsock-dns-cache",
            &self.world.path("dns-cache.log"),
        )?;
        self.dns = Some(d);
        Ok(())
    }

    /// Starts (or restarts) host-server.
    ///
    /// # Errors
    /// When it does not come up.
    pub fn start_host(&mut self) -> Result<()> {
        let mut d = self.launch("outsock-host-server", "host-server.toml", "host-server.log")?;
        Self::wait_for_socket(
            &self.host_sock(),
            &mut d,
            "outsock-host-server",
            &self.world.path("host-server.log"),
        )?;
        self.host = Some(d);
        Ok(())
    }

    /// host-server's process id (0 when stopped), e.g. to read its memory use.
    #[must_use]
    pub fn host_pid(&self) -> u32 {
        self.host.as_ref().map_or(0, Daemon::pid)
    }

    /// dns-cache's process id (0 when stopped), e.g. to send it SIGHUP.
    #[must_use]
    pub fn dns_pid(&self) -> u32 {
        self.dns.as_ref().map_or(0, Daemon::pid)
    }

    /// Stops host-server (SIGTERM, then SIGKILL).
    pub fn stop_host(&mut self) {
        if let Some(mut d) = self.host.take() {
            d.stop(Duration::from_secs(5));
        }
        let _ = std::fs::remove_file(self.host_sock());
    }

    /// Kills host-server with SIGKILL (a crash: nothing cleaned up, its socket file left
    /// behind) and reaps it.
    pub fn kill_host(&mut self) {
        if let Some(mut d) = self.host.take() {
            d.signal(libc::SIGKILL);
            d.wait_timeout(Duration::from_secs(5));
        }
    }

    /// Replaces what was appended to host-server's config (takes effect at its next start).
    ///
    /// # Errors
    /// When the config cannot be written.
    pub fn set_host_extra(&mut self, host_extra: &str) -> Result<()> {
        host_extra.clone_into(&mut self.host_extra);
        self.write_configs()
    }

    /// Stops dns-cache (SIGTERM, then SIGKILL).
    pub fn stop_dns(&mut self) {
        if let Some(mut d) = self.dns.take() {
            d.stop(Duration::from_secs(5));
        }
    }

    /// A command that runs `program` unmodified in `legacy` (nothing but `lo`) through
    /// `outsock run` as users run it — liboutsock preloaded, under the seccomp supervisor
    /// where the kernel has it — talking to this stack's host-server.
    ///
    /// # Errors
    /// When `outsock` or liboutsock is not built.
    pub fn legacy(&self, program: &str) -> Result<Command> {
        self.legacy_with(&[], program)
    }

    /// [`Stack::legacy`] with `outsock run` flags (`--shim-only`, `--supervisor-only`) first.
    ///
    /// # Errors
    /// When `outsock` or liboutsock is not built.
    pub fn legacy_with(&self, flags: &[&str], program: &str) -> Result<Command> {
        let mut cmd = self.world.legacy().command(artefact("outsock")?);
        cmd.arg("run")
            .args(flags)
            .arg("--socket")
            .arg(self.host_sock())
            .arg("--shim")
            .arg(artefact("liboutsock.so")?)
            .arg("--")
            .arg(program);
        Ok(cmd)
    }

    /// `outsock mappings ARGS…` against this stack's dns-cache; its stdout.
    ///
    /// # Errors
    /// When the command fails.
    pub fn mappings(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(artefact("outsock")?)
            .arg("mappings")
            .arg("--socket")
            .arg(self.dns_sock())
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!(
                "outsock mappings failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The dummy IPv4 address dns-cache maps `v6` to, from `outsock mappings --json`; `None`
    /// when there is none (or the table cannot be read).
    #[must_use]
    pub fn dummy_for(&self, v6: std::net::Ipv6Addr) -> Option<Ipv4Addr> {
        let json = self.mappings(&["--json"]).ok()?;
        json.lines()
            .find(|l| l.contains(&format!("\"ipv6\":\"{v6}\"")))
            .and_then(|l| l.split("\"dummy\":\"").nth(1))
            .and_then(|r| r.split('"').next())
            .and_then(|d| d.parse().ok())
    }

    /// The daemons' logs so far, for assertion messages: each daemon's earlier instances
    /// (before a restart), if any, then the running one's.
    #[must_use]
    pub fn logs(&self) -> String {
        let read = |n: &str| std::fs::read_to_string(self.world.path(n)).unwrap_or_default();
        let mut out = String::new();
        for log in ["dns-cache.log", "host-server.log"] {
            let earlier = read(&format!("{log}.earlier"));
            if !earlier.is_empty() {
                out.push_str(&format!(
                    "--- {log}.earlier (before a restart)\n{earlier}\n"
                ));
            }
            out.push_str(&format!("--- {log}\n{}\n", read(log)));
        }
        out
    }
}
