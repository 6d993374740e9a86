//! outsock-e2e: end-to-end tests of process mode (tests/) and the `outsock-demo` program, both
//! on top of `testworld::stack`.

#![forbid(unsafe_code)]

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};
use testworld::addr;
use testworld::stack::Stack;

/// A test world with outsock's daemons and `config` added to host-server's settings, or `None`
/// (after saying why) where the test world cannot run; with `OUTSOCK_E2E_REQUIRED=1` that is a
/// failure instead.
///
/// # Panics
/// When the world does not start.
#[must_use]
pub fn stack(label: &str, config: &str) -> Option<Stack> {
    if !testworld::skip_unless_root(label) {
        return None;
    }
    match Stack::start(label, config) {
        Ok(s) => Some(s),
        Err(e) => panic!("{label}: the test world did not start: {e:#}"),
    }
}

/// A program's output as text, for messages and matching.
#[must_use]
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Waits until host-server has a UDP socket on `port` in `host` (seen with `ss`).
///
/// # Panics
/// When none appears within 15 s.
pub fn wait_udp_bound(s: &Stack, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = s
            .world
            .host()
            .command("ss")
            .args(["-Hlun", &format!("sport = :{port}")])
            .output()
            .expect("ss runs in the host namespace");
        if text(&out.stdout).contains(&format!(":{port}")) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no UDP socket on port {port} after 15 s\n{}",
            s.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// host-server's listener on TCP `port` in `host`, as `ss -Hltn` shows it (empty: none).
///
/// # Panics
/// When `ss` cannot run in the host namespace.
#[must_use]
pub fn tcp_listener_line(s: &Stack, port: u16) -> String {
    let out = s
        .world
        .host()
        .command("ss")
        .args(["-Hltn", &format!("sport = :{port}")])
        .output()
        .expect("ss runs in the host namespace");
    text(&out.stdout)
}

/// Waits until `ok` holds for host-server's listener line on `port` ([`tcp_listener_line`]).
///
/// # Panics
/// When it does not within 20 s, naming `what`.
pub fn wait_tcp_listener(s: &Stack, port: u16, what: &str, ok: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let line = tcp_listener_line(s, port);
        if ok(&line) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "port {port}: {what} not seen after 20 s (ss: {line:?})\n{}",
            s.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until host-server listens on TCP `port` in `host` (`want`), or no longer does.
///
/// # Panics
/// As [`wait_tcp_listener`].
pub fn wait_listening(s: &Stack, port: u16, want: bool) {
    let what = if want { "a listener" } else { "no listener" };
    wait_tcp_listener(s, port, what, |l| l.contains(&format!(":{port}")) == want);
}

/// A TCP connection from [`addr::CLIENT`] to the host's IPv6 address, with a 30 s read timeout
/// (call inside `world`).
///
/// # Panics
/// When it cannot connect within 5 s.
#[must_use]
pub fn connect_from_client(port: u16) -> TcpStream {
    let sock = Socket::new(Domain::IPV6, Type::STREAM, None).expect("an IPv6 TCP socket");
    sock.bind(&SocketAddr::new(addr::CLIENT.into(), 0).into())
        .expect("bind the world client's address");
    sock.connect_timeout(
        &SocketAddr::new(addr::HOST.into(), port).into(),
        Duration::from_secs(5),
    )
    .unwrap_or_else(|e| panic!("connect to the host's port {port}: {e}"));
    let t: TcpStream = sock.into();
    t.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("set a read timeout");
    t
}
