//! The harness shared by dns-cache's end-to-end test files: one real outsock-dns-cache in a
//! test world (namespaces of its own), asked with `dig` and over dns.sock.

// Each test file uses a part of the harness.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use shared_proto::lookup::{LookupOp, LookupReply, LookupRequest, LookupResponse};
use testworld::{addr, Daemon, World};

pub const DESTINATION_POOL: &str = "10.170.160.0/20";

/// One running dns-cache in a world.
pub struct Cache {
    pub world: World,
    pub daemon: Option<Daemon>,
    pub config: PathBuf,
    pub db: PathBuf,
    pub sock: PathBuf,
    /// Extra environment for the daemon.
    pub env: Vec<(String, String)>,
    /// Where the daemon's stderr goes, when set (else inherited).
    pub log: Option<PathBuf>,
}

impl Cache {
    /// Starts a world and dns-cache with the default settings plus `extra` TOML lines.
    pub fn start(label: &str, extra: &str) -> Cache {
        Self::start_with(
            World::start(label).expect("test world"),
            &format!("[{}]:53", addr::DNS),
            extra,
            Vec::new(),
        )
    }

    /// Starts dns-cache in `world` asking `upstream`, with `extra` TOML lines and `env` in its
    /// environment.
    pub fn start_with(
        world: World,
        upstream: &str,
        extra: &str,
        env: Vec<(String, String)>,
    ) -> Cache {
        let db = world.path("mappings.sqlite3");
        let mut c = Self::prepare(world, upstream, extra, env, db);
        c.launch();
        c
    }

    /// A dns-cache in `world` asking `upstream` with its database at `db`, configured but not
    /// started ([`Cache::launch`]).
    pub fn prepare(
        world: World,
        upstream: &str,
        extra: &str,
        env: Vec<(String, String)>,
        db: PathBuf,
    ) -> Cache {
        let sock = world.path("dns.sock");
        let config = world.path("dns-cache.toml");
        let toml = format!(
            "listen = [\"[::1]:53\"]\n\
             upstreams = [\"{upstream}\"]\n\
             upstream_timeout_ms = 1000\n\
             database = \"{db}\"\n\
             lookup_socket = \"{sock}\"\n\
             metrics = \"[::1]:9153\"\n\
             {extra}\n",
            db = db.display(),
            sock = sock.display(),
        );
        std::fs::write(&config, toml).expect("write config");
        Cache {
            world,
            daemon: None,
            config,
            db,
            sock,
            env,
            log: None,
        }
    }

    pub fn launch(&mut self) {
        let _ = std::fs::remove_file(&self.sock);
        let bin = env!("CARGO_BIN_EXE_outsock-dns-cache");
        let mut cmd = match &self.log {
            // The same process (exec), its stderr appended to the log.
            Some(log) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg("exec \"$0\" --config \"$1\" 2>>\"$2\"")
                    .arg(bin)
                    .arg(&self.config)
                    .arg(log);
                c
            }
            None => {
                let mut c = Command::new(bin);
                c.arg("--config").arg(&self.config);
                c
            }
        };
        cmd.env("RUST_LOG", "warn");
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        let d = self
            .world
            .host()
            .spawn("outsock-dns-cache", cmd)
            .expect("spawn");
        self.daemon = Some(d);
        let deadline = Instant::now() + Duration::from_secs(15);
        while !self.sock.exists() {
            if let Some(d) = self.daemon.as_mut() {
                if let Ok(Some(status)) = d.try_status() {
                    panic!("outsock-dns-cache exited during start-up: {status}");
                }
            }
            assert!(Instant::now() < deadline, "dns.sock did not appear");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `dig @::1 ARGS` in the host namespace; full output.
    pub fn dig(&self, args: &[&str]) -> String {
        self.world.dig("::1", args).expect("dig")
    }

    /// The addresses of `dig +short NAME TYPE` (lines that parse as IPv4).
    pub fn a(&self, name: &str) -> Vec<Ipv4Addr> {
        self.dig(&["+short", name, "A"])
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    pub fn lookup(&self, op: LookupOp) -> LookupReply {
        lookup(&self.sock, op)
    }
}

/// One request on a fresh dns.sock connection, closed afterwards.
pub fn lookup(sock: &std::path::Path, op: LookupOp) -> LookupReply {
    Conn::open(sock).call(op)
}

/// A dns.sock connection kept open across requests (pins are leases of their connection).
pub struct Conn {
    pub stream: UnixStream,
    pub next_id: u32,
}

impl Conn {
    pub fn open(sock: &std::path::Path) -> Conn {
        let stream = UnixStream::connect(sock).expect("connect dns.sock");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Conn { stream, next_id: 1 }
    }

    pub fn call(&mut self, op: LookupOp) -> LookupReply {
        let id = self.next_id;
        self.next_id += 1;
        let frame = shared_proto::frame::to_vec(&LookupRequest { id, op }).unwrap();
        self.stream.write_all(&frame).unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 65536];
        loop {
            if let Some((resp, _)) = shared_proto::frame::decode::<LookupResponse>(&buf).unwrap() {
                assert_eq!(resp.id, id);
                return resp.reply;
            }
            let n = self.stream.read(&mut chunk).expect("read dns.sock");
            assert!(n > 0, "dns.sock closed without a reply");
            buf.extend_from_slice(&chunk[..n]);
        }
    }
}

pub fn in_pool(a: Ipv4Addr) -> bool {
    let p: Vec<&str> = DESTINATION_POOL.split('/').collect();
    let base = u32::from(p[0].parse::<Ipv4Addr>().unwrap());
    let len: u32 = p[1].parse().unwrap();
    u32::from(a) >> (32 - len) == base >> (32 - len)
}

pub fn status(out: &str) -> &str {
    out.split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("NO ANSWER")
}

pub fn flags(out: &str) -> String {
    out.split("flags:")
        .nth(1)
        .and_then(|s| s.split(';').next())
        .unwrap_or("")
        .to_owned()
}

pub fn resolve(c: &Cache, dummy: Ipv4Addr) -> Ipv6Addr {
    match c.lookup(LookupOp::Resolve { dummy }) {
        LookupReply::Resolved(m) => m.v6,
        other => panic!("Resolve({dummy}) gave {other:?}"),
    }
}

#[macro_export]
macro_rules! world_test {
    ($name:ident) => {
        if !skip_unless_root(stringify!($name)) {
            return;
        }
    };
}

pub fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// dns-cache's metrics page, fetched in the host namespace.
pub fn metrics(c: &Cache) -> String {
    c.world
        .host()
        .run(|| {
            let mut s = std::net::TcpStream::connect("[::1]:9153").unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        })
        .unwrap()
}
