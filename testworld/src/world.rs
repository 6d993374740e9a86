//! The world itself: three namespaces, the veth between `host` and `world`, dnsmasq and the
//! IPv6 services, built in [`World::start`] and torn down on drop (also while unwinding from a
//! failed assertion).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::daemon::Daemon;
use crate::netns::{self, Netns};
use crate::{addr, zone};

/// Prefix of every namespace a world creates: `osw<pid>x<n>-<role>`.
const PREFIX: &str = "osw";

/// Bytes of the file `GET /big.bin` serves (a deterministic pattern, see [`big_file_byte`]).
pub const BIG_FILE_LEN: usize = 4 * 1024 * 1024;
/// Body of `GET /index.html`.
pub const INDEX_BODY: &str = "hello from the IPv6-only world\n";

/// Byte `i` of `/big.bin`.
#[must_use]
pub fn big_file_byte(i: usize) -> u8 {
    // Truncation is the point: a repeating, position-dependent pattern.
    #[allow(clippy::cast_possible_truncation)]
    let b = (i.wrapping_mul(31) ^ (i >> 8)) as u8;
    b
}

/// A running test world. See the crate docs for the layout.
#[derive(Debug)]
pub struct World {
    // Field order is drop order: daemons stop before their namespaces go.
    daemons: Vec<Daemon>,
    host: Netns,
    world: Netns,
    legacy: Netns,
    dir: tempfile::TempDir,
}

impl World {
    /// Builds a fresh world. `label` names it in logs and temp paths.
    ///
    /// # Errors
    /// When a namespace, link, address or service cannot be set up (not root, a missing
    /// program); whatever was built so far is torn down.
    pub fn start(label: &str) -> Result<Self> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        sweep_leftovers();
        let base = format!(
            "{PREFIX}{}x{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let dir = tempfile::Builder::new()
            .prefix(&format!("outsock-{label}-"))
            .tempdir()?;
        let host = Netns::create(&format!("{base}-host"))?;
        let world = Netns::create(&format!("{base}-world"))?;
        let legacy = Netns::create(&format!("{base}-legacy"))?;
        let mut w = Self {
            daemons: Vec::new(),
            host,
            world,
            legacy,
            dir,
        };
        w.link().context("linking host and world")?;
        w.start_dns().context("starting dnsmasq in world")?;
        w.start_services()
            .context("starting the world's IPv6 services")?;
        Ok(w)
    }

    fn link(&self) -> Result<()> {
        self.host.ip(&[
            "link",
            "add",
            "name",
            "h0",
            "type",
            "veth",
            "peer",
            "name",
            "w0",
            "netns",
            self.world.name(),
        ])?;
        let plen = addr::PREFIX_LEN;
        self.host.ip(&[
            "addr",
            "add",
            &format!("{}/{plen}", addr::HOST),
            "dev",
            "h0",
            "nodad",
        ])?;
        for a in addr::HOST_VMS {
            self.host
                .ip(&["addr", "add", &format!("{a}/{plen}"), "dev", "h0", "nodad"])?;
        }
        for a in zone::world_addresses() {
            self.world
                .ip(&["addr", "add", &format!("{a}/{plen}"), "dev", "w0", "nodad"])?;
        }
        self.host.ip(&["link", "set", "h0", "up"])?;
        self.world.ip(&["link", "set", "w0", "up"])?;
        // host-server's ping sockets (ICMP echo, translated): a new namespace allows none
        // ("1 0"); this range covers every group, IPv6 ping sockets included.
        crate::cmd::sh(
            self.host
                .command("sysctl")
                .args(["-qw", "net.ipv4.ping_group_range=0 2147483647"]),
        )
        .context("allowing ping sockets in host")?;
        Ok(())
    }

    fn start_dns(&mut self) -> Result<()> {
        let conf = self.dir.path().join("dnsmasq.conf");
        let log = self.dir.path().join("dnsmasq.log");
        std::fs::write(&conf, zone::dnsmasq_conf(&log.to_string_lossy()))?;
        let mut cmd = self.world.command("dnsmasq");
        cmd.arg("--keep-in-foreground")
            .arg(format!("--conf-file={}", conf.display()))
            .arg("--pid-file=");
        cmd.stdout(Stdio::null());
        let d = self.world.spawn("dnsmasq", cmd)?;
        self.daemons.push(d);
        // Ready when it answers a query for a name in the zone, asked from `host`.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = self
                .host
                .command("dig")
                .args([
                    "+short",
                    "+time=1",
                    "+tries=1",
                    &format!("@{}", addr::DNS),
                    "AAAA",
                    zone::V6ONLY,
                ])
                .output()?;
            if String::from_utf8_lossy(&out.stdout).trim() == addr::HTTP.to_string() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "dnsmasq did not answer within 10 s; log: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn start_services(&mut self) -> Result<()> {
        let root = self.dir.path().join("www");
        std::fs::create_dir_all(&root)?;
        std::fs::write(root.join("index.html"), INDEX_BODY)?;
        let big: Vec<u8> = (0..BIG_FILE_LEN).map(big_file_byte).collect();
        std::fs::write(root.join("big.bin"), big)?;
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("servers/world_services.py");
        let mut cmd = self.world.command("python3");
        cmd.arg(script).arg("--root").arg(&root);
        cmd.arg("--echo-port")
            .arg(addr::ECHO_PORT.to_string())
            .arg("--http-port")
            .arg(addr::HTTP_PORT.to_string());
        cmd.stdout(Stdio::piped());
        let log = std::fs::File::create(self.dir.path().join("services.log"))?;
        cmd.stderr(log);
        let mut d = self.world.spawn("world services", cmd)?;
        let stdout = d.take_stdout().context("services stdout")?;
        self.daemons.push(d);
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        if line.trim() != "ready" {
            bail!(
                "world services did not start: {}",
                std::fs::read_to_string(self.dir.path().join("services.log")).unwrap_or_default()
            );
        }
        Ok(())
    }

    /// The namespace where outsock's daemons run: IPv6 only, no IPv4 address or route.
    #[must_use]
    pub fn host(&self) -> &Netns {
        &self.host
    }

    /// The IPv6-only "internet": DNS, servers and IPv6 clients.
    #[must_use]
    pub fn world(&self) -> &Netns {
        &self.world
    }

    /// Where legacy programs run in process mode: nothing but `lo`, no routes.
    #[must_use]
    pub fn legacy(&self) -> &Netns {
        &self.legacy
    }

    /// A temporary directory for this world (sockets, databases, logs); removed on drop.
    #[must_use]
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A path inside [`Self::dir`].
    #[must_use]
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The upstream DNS server as `[addr]:53`.
    #[must_use]
    pub fn dns_server(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::new(addr::DNS.into(), 53)
    }

    /// The names of this world's namespaces (for teardown checks).
    #[must_use]
    pub fn namespace_names(&self) -> [String; 3] {
        [
            self.host.name().to_owned(),
            self.world.name().to_owned(),
            self.legacy.name().to_owned(),
        ]
    }

    /// Keeps `d` running until the world drops.
    pub fn adopt(&mut self, d: Daemon) {
        self.daemons.push(d);
    }

    /// Runs `dig` in `host` against `server` with `args`, returning its stdout.
    ///
    /// # Errors
    /// When dig cannot be run.
    pub fn dig(&self, server: &str, args: &[&str]) -> Result<String> {
        let out = self
            .host
            .command("dig")
            .arg(format!("@{server}"))
            .args(["+time=2", "+tries=1"])
            .args(args)
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// Deletes namespaces left by test processes that no longer exist (a crash, a `kill -9`).
fn sweep_leftovers() {
    for name in netns::list() {
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some((pid, _)) = rest.split_once('x') else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            netns::delete(&name);
        }
    }
}
