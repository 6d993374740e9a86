//! The test world's side of the `vm` group: the extra servers it needs in `world` (iperf3, and
//! a "whoami" server that answers with the IPv6 address it was reached on), an IPv6 client in
//! `world` for the inbound checks, and reading dns-cache's mappings.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpStream};
use std::process::Stdio;
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

/// Whether something listens on TCP `port` in `ns` (any address).
fn listening(ns: &Netns, port: u16) -> bool {
    ns.command("ss")
        .args(["-Hltn", &format!("sport = :{port}")])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&format!(":{port}")))
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

/// Starts iperf3's server and the whoami server in `world`; they stop with the world.
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
    for port in [IPERF_PORT, WHOAMI_PORT] {
        wait_listening(stack.world.world(), port, Duration::from_secs(15))?;
    }
    Ok(())
}

/// An IPv6 client in `world`, bound to [`addr::CLIENT`] so the host sees a known peer: sends
/// `data` to `[to]:port`, half-closes, and returns everything that comes back.
pub fn world_client(stack: &Stack, to: Ipv6Addr, port: u16, data: Vec<u8>) -> Result<Vec<u8>> {
    stack.world.world().run(move || -> Result<Vec<u8>> {
        let sock = Socket::new(Domain::IPV6, Type::STREAM, None)?;
        sock.bind(&SocketAddr::new(addr::CLIENT.into(), 0).into())?;
        sock.connect_timeout(
            &SocketAddr::new(to.into(), port).into(),
            Duration::from_secs(10),
        )
        .with_context(|| format!("connecting to [{to}]:{port}"))?;
        let mut c: TcpStream = sock.into();
        c.set_read_timeout(Some(Duration::from_secs(30)))?;
        c.write_all(&data)?;
        c.shutdown(Shutdown::Write)?;
        let mut back = Vec::new();
        c.read_to_end(&mut back)
            .context("reading the guest server's answer")?;
        Ok(back)
    })?
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
