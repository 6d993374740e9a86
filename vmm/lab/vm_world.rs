//! The test world's side of the `vm` and `plural` groups: the extra servers they need in
//! `world` (iperf3, a "whoami" server that answers with the IPv6 address it was reached on,
//! and a "peer" server that answers with the address it was reached from), IPv6 clients in
//! `world` for the inbound checks (one exchange, and many HTTP requests in parallel), and
//! reading dns-cache's mappings.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpStream};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use socket2::{Domain, Socket, Type};
use testworld::addr;
use testworld::stack::Stack;
use testworld::Netns;

/// The iperf3 server's port in `world`.
pub const IPERF_PORT: u16 = 5201;
/// The whoami server's port in `world`.
pub const WHOAMI_PORT: u16 = 7777;
/// The peer server's port in `world`.
pub const PEER_PORT: u16 = 7778;

/// Answers every connection with the local address it arrived on (one line), then closes.
const WHOAMI: &str = r#"
import socket
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", int(__import__("sys").argv[1])))
s.listen(64)
while True:
    c, _ = s.accept()
    try:
        c.sendall((c.getsockname()[0] + "\n").encode())
    except OSError:
        pass
    c.close()
"#;

/// Answers every connection with the peer's address (one line), then closes.
const PEER: &str = r#"
import socket
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", int(__import__("sys").argv[1])))
s.listen(64)
while True:
    c, peer = s.accept()
    try:
        c.sendall((peer[0] + "\n").encode())
    except OSError:
        pass
    c.close()
"#;

/// Whether something listens on TCP `port` in `ns` (any address).
fn listening(ns: &Netns, port: u16) -> bool {
    ns.command("ss")
        .args(["-Hltn", &format!("sport = :{port}")])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&format!(":{port}")))
}

/// Waits up to `limit` until nothing listens on TCP `port` in `ns` any more.
pub fn wait_not_listening(ns: &Netns, port: u16, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    while listening(ns, port) {
        if Instant::now() > deadline {
            bail!(
                "port {port} in {} still has a listener after {limit:?}",
                ns.name()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Waits up to `limit` for a TCP listener on `port` in `ns`.
pub fn wait_listening(ns: &Netns, port: u16, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    while !listening(ns, port) {
        if Instant::now() > deadline {
            bail!(
                "nothing listens on port {port} in {} after {limit:?}",
                ns.name()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Starts iperf3's server, the whoami and the peer server in `world`; they stop with the
/// world.
pub fn start_servers(stack: &mut Stack) -> Result<()> {
    let mut iperf = stack.world.world().command("iperf3");
    iperf
        .args(["-s", "-p", &IPERF_PORT.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let d = stack.world.world().spawn("iperf3 server", iperf)?;
    stack.world.adopt(d);
    let mut whoami = stack.world.world().command("python3");
    whoami
        .args(["-c", WHOAMI, &WHOAMI_PORT.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let d = stack.world.world().spawn("whoami server", whoami)?;
    stack.world.adopt(d);
    let mut peer = stack.world.world().command("python3");
    peer.args(["-c", PEER, &PEER_PORT.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let d = stack.world.world().spawn("peer server", peer)?;
    stack.world.adopt(d);
    for port in [IPERF_PORT, WHOAMI_PORT, PEER_PORT] {
        wait_listening(stack.world.world(), port, Duration::from_secs(15))?;
    }
    Ok(())
}

/// A TCP connection from [`addr::CLIENT`] to `[to]:port` (call inside `world`), with
/// `read_timeout` on its reads.
fn connect_from_client(to: Ipv6Addr, port: u16, read_timeout: Duration) -> Result<TcpStream> {
    let sock = Socket::new(Domain::IPV6, Type::STREAM, None)?;
    sock.bind(&SocketAddr::new(addr::CLIENT.into(), 0).into())?;
    sock.connect_timeout(
        &SocketAddr::new(to.into(), port).into(),
        Duration::from_secs(30),
    )
    .with_context(|| format!("connecting to [{to}]:{port}"))?;
    let c: TcpStream = sock.into();
    c.set_read_timeout(Some(read_timeout))?;
    Ok(c)
}

/// An IPv6 client in `world`, bound to [`addr::CLIENT`] so the host sees a known peer: sends
/// `data` to `[to]:port`, half-closes, and returns everything that comes back.
pub fn world_client(stack: &Stack, to: Ipv6Addr, port: u16, data: Vec<u8>) -> Result<Vec<u8>> {
    stack.world.world().run(move || -> Result<Vec<u8>> {
        let mut c = connect_from_client(to, port, Duration::from_secs(30))?;
        c.write_all(&data)?;
        c.shutdown(Shutdown::Write)?;
        let mut back = Vec::new();
        c.read_to_end(&mut back)
            .context("reading the guest server's answer")?;
        Ok(back)
    })?
}

/// An IPv6 client in `world`, bound to [`addr::CLIENT`]: sends `payload` to the UDP server at
/// `[to]:port` every 200 ms until the same bytes come back from there; how long that took, or
/// an error after `limit`.
pub fn world_udp_echo(
    stack: &Stack,
    to: Ipv6Addr,
    port: u16,
    payload: &'static [u8],
    limit: Duration,
) -> Result<Duration> {
    stack.world.world().run(move || -> Result<Duration> {
        let sock = Socket::new(Domain::IPV6, Type::DGRAM, None)?;
        sock.bind(&SocketAddr::new(addr::CLIENT.into(), 0).into())?;
        let sock: std::net::UdpSocket = sock.into();
        sock.set_read_timeout(Some(Duration::from_millis(200)))?;
        let server = SocketAddr::new(to.into(), port);
        let start = Instant::now();
        let mut buf = [0u8; 2048];
        let mut sent = 0;
        while start.elapsed() < limit {
            sock.send_to(payload, server)?;
            sent += 1;
            while let Ok((n, from)) = sock.recv_from(&mut buf) {
                if &buf[..n] == payload && from == server {
                    return Ok(start.elapsed());
                }
            }
        }
        bail!("no echo from {server} to {sent} datagrams in {limit:?}")
    })?
}

/// What [`http_load`] saw.
#[derive(Debug, Default)]
pub struct Load {
    /// Requests answered `200` with the body asked for.
    pub ok: usize,
    /// What went wrong with the first failed requests (at most [`Load::KEPT`]).
    pub failures: Vec<String>,
    /// How many requests failed.
    pub failed: usize,
    /// From the first connect to the last answer.
    pub took: Duration,
}

impl Load {
    /// How many failure descriptions are kept.
    pub const KEPT: usize = 10;
}

/// `total` HTTP/1.0 requests (`GET /rN`, one per connection) from [`addr::CLIENT`] in `world`
/// to `[to]:port`, `parallel` at a time: each answer must be `HTTP/1.1 200` ending in `body`.
/// Requests not started within `limit` count as failed.
pub fn http_load(
    stack: &Stack,
    to: Ipv6Addr,
    port: u16,
    (total, parallel): (usize, usize),
    body: &'static str,
    limit: Duration,
) -> Result<Load> {
    stack.world.world().run(move || {
        let started = Instant::now();
        let next = Arc::new(AtomicUsize::new(0));
        let ok = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new((0usize, Vec::new())));
        let exchange = move |i: usize| -> Result<()> {
            let mut c = connect_from_client(to, port, Duration::from_secs(60))?;
            c.write_all(format!("GET /r{i} HTTP/1.0\r\nHost: vm0\r\n\r\n").as_bytes())
                .context("write")?;
            let mut back = String::new();
            c.read_to_string(&mut back).context("read")?;
            if back.starts_with("HTTP/1.1 200 ") && back.ends_with(body) {
                Ok(())
            } else {
                bail!("answer {back:?}")
            }
        };
        let workers: Vec<_> = (0..parallel)
            .map(|_| {
                let (next, ok, failures) = (next.clone(), ok.clone(), failures.clone());
                std::thread::spawn(move || loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    let outcome = if started.elapsed() > limit {
                        Err(anyhow::anyhow!("not started: past the {limit:?} bound"))
                    } else {
                        exchange(i)
                    };
                    match outcome {
                        Ok(()) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            let mut f = failures.lock().expect("lock");
                            f.0 += 1;
                            if f.1.len() < Load::KEPT {
                                f.1.push(format!("request {i}: {e:#}"));
                            }
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            let _ = w.join();
        }
        let (failed, failures) = std::mem::take(&mut *failures.lock().expect("lock"));
        Load {
            ok: ok.load(Ordering::Relaxed),
            failures,
            failed,
            took: started.elapsed(),
        }
    })
}

/// dns-cache's mappings as (dummy, IPv6) pairs, from `outsock mappings --json`.
pub fn mappings(stack: &Stack) -> Result<Vec<(Ipv4Addr, Ipv6Addr)>> {
    let json = stack.mappings(&["--json"])?;
    let field = |line: &str, key: &str| -> Option<String> {
        line.split(&format!("\"{key}\":\""))
            .nth(1)
            .and_then(|r| r.split('"').next())
            .map(str::to_owned)
    };
    Ok(json
        .lines()
        .filter_map(|l| {
            Some((
                field(l, "dummy")?.parse().ok()?,
                field(l, "ipv6")?.parse().ok()?,
            ))
        })
        .collect())
}
