//! outsock-e2e: end-to-end tests of process mode (tests/) and the `outsock-demo` program, both
//! on top of `testworld::stack`.

#![forbid(unsafe_code)]

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use std::process::Stdio;

use socket2::{Domain, Socket, Type};
use testworld::stack::Stack;
use testworld::{addr, Netns};

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

/// Runs `program args…` in `legacy` through `outsock run` with `stdin`, bounded to 60 s.
///
/// # Panics
/// When the program cannot be started.
#[must_use]
pub fn run_legacy(s: &Stack, program: &str, args: &[&str], stdin: &[u8]) -> std::process::Output {
    use std::io::Write;
    let mut cmd = s.legacy("timeout").expect("outsock run");
    cmd.arg("60").arg(program).args(args);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn the program");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin).expect("write stdin");
    drop(input);
    child.wait_with_output().expect("wait for the program")
}

/// Replaces the first `from` by `to` in one of the stack's config files.
///
/// # Panics
/// When the file cannot be read or written, or lacks `from`.
pub fn edit(s: &Stack, file: &str, from: &str, to: &str) {
    let p = s.world.path(file);
    let t = std::fs::read_to_string(&p).expect("read the config file");
    assert!(t.contains(from), "{file} lacks {from:?}");
    std::fs::write(&p, t.replacen(from, to, 1)).expect("write the config file");
}

/// The Prometheus page a daemon serves at `addr` in `host` (its `metrics_listen`).
///
/// # Panics
/// When nothing answers there.
#[must_use]
pub fn scrape(s: &Stack, addr: &'static str) -> String {
    use std::io::{Read, Write};
    s.world
        .host()
        .run(move || {
            let mut c = TcpStream::connect(addr).expect("connect to the metrics address");
            c.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
                .expect("send the request");
            let mut page = String::new();
            c.read_to_string(&mut page).expect("read the page");
            page
        })
        .expect("run in host")
}

/// The value of `series` (name and labels, as written) on a Prometheus page; 0 when absent.
#[must_use]
pub fn series(page: &str, series: &str) -> u64 {
    page.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// The IPv6 literal name of `v6` in dns-cache's default `ipv6_literal_suffix`
/// (`fd00:64::80` → `fd00-64--80.ipv6.outsock`).
#[must_use]
pub fn ipv6_literal_name(v6: std::net::Ipv6Addr) -> String {
    format!("{}.ipv6.outsock", v6.to_string().replace(':', "-"))
}

/// A program's output as text, for messages and matching.
#[must_use]
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The sockets on `port` in namespace `ns` as `ss FLAGS` lists them (`-Hltn`: TCP listeners,
/// `-Hlun`: UDP sockets); empty when none.
///
/// # Panics
/// When `ss` cannot run there.
#[must_use]
pub fn ss_line(ns: &Netns, flags: &str, port: u16) -> String {
    let out = ns
        .command("ss")
        .args([flags, &format!("sport = :{port}")])
        .output()
        .expect("ss runs in the namespace");
    text(&out.stdout)
}

/// Waits until `ok` holds for [`ss_line`]`(ns, flags, port)`.
///
/// # Panics
/// When it does not within 20 s, naming `what`, with the stack's logs.
pub fn wait_ss(
    s: &Stack,
    ns: &Netns,
    flags: &str,
    port: u16,
    what: &str,
    ok: impl Fn(&str) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let line = ss_line(ns, flags, port);
        if ok(&line) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "port {port}: {what} not seen after 20 s (ss {flags}: {line:?})\n{}",
            s.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until host-server has a UDP socket on `port` in `host`.
///
/// # Panics
/// As [`wait_ss`].
pub fn wait_udp_bound(s: &Stack, port: u16) {
    wait_ss(s, s.world.host(), "-Hlun", port, "a UDP socket", |l| {
        l.contains(&format!(":{port}"))
    });
}

/// Waits until `ok` holds for host-server's TCP listener line on `port` in `host`.
///
/// # Panics
/// As [`wait_ss`].
pub fn wait_tcp_listener(s: &Stack, port: u16, what: &str, ok: impl Fn(&str) -> bool) {
    wait_ss(s, s.world.host(), "-Hltn", port, what, ok);
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

/// A UDP client at [`addr::CLIENT`] in `world` sends `ping` to the host's IPv6 address on
/// `port` and waits (10 s) for one datagram back: its payload and source.
///
/// # Panics
/// When nothing comes back in time, or the client cannot bind or send.
#[must_use]
pub fn world_udp_ping(s: &Stack, port: u16) -> (Vec<u8>, SocketAddr) {
    s.world
        .world()
        .run(move || {
            let sock = std::net::UdpSocket::bind(SocketAddr::new(addr::CLIENT.into(), 0))
                .expect("bind the world client");
            sock.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("a read timeout");
            sock.send_to(b"ping", SocketAddr::new(addr::HOST.into(), port))
                .expect("send the ping");
            let mut buf = [0u8; 2048];
            let (n, from) = sock
                .recv_from(&mut buf)
                .expect("a datagram back within 10 s");
            (buf[..n].to_vec(), from)
        })
        .expect("the world client runs")
}

/// Sends `data` from an IPv6 client in `world` to the host's `port` and reads the answer to
/// its end.
///
/// # Panics
/// When the client cannot connect, send or read.
#[must_use]
pub fn world_request(s: &Stack, port: u16, data: &'static [u8]) -> String {
    use std::io::{Read, Write};
    s.world
        .world()
        .run(move || {
            let mut c = connect_from_client(port);
            c.write_all(data).expect("send the request");
            let mut back = Vec::new();
            c.read_to_end(&mut back).expect("read the answer");
            text(&back)
        })
        .expect("the world client runs")
}

/// Asserts that `peer` is the source-pool dummy dns-cache gave [`addr::CLIENT`]'s address.
///
/// # Panics
/// When it is not, or the mappings cannot be read.
pub fn assert_client_dummy(s: &Stack, peer: std::net::Ipv4Addr) {
    let table = s
        .mappings(&["--direction", "inbound-peer"])
        .expect("outsock mappings");
    let row = table
        .lines()
        .find(|l| l.starts_with(&format!("{peer} ")))
        .unwrap_or_else(|| panic!("{peer} not in\n{table}"));
    assert!(
        row.contains(&addr::CLIENT.to_string()) && row.contains("inbound-peer"),
        "{row}"
    );
}

/// Starts `iperf3 -s -p PORT EXTRA…` in `world` (stopped with the world) and waits until it
/// listens.
///
/// # Panics
/// When it cannot start or does not listen within 20 s.
pub fn world_iperf3_server(s: &mut Stack, port: u16, extra: &[&str]) {
    let mut server = s.world.world().command("iperf3");
    server
        .args(["-s", "-p", &port.to_string()])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let server = s
        .world
        .world()
        .spawn("iperf3 server", server)
        .expect("iperf3 starts in world");
    s.world.adopt(server);
    wait_ss(
        s,
        s.world.world(),
        "-Hltn",
        port,
        "the world's iperf3 server",
        |l| l.contains(&format!(":{port}")),
    );
}

/// A Python probe (argument: the echo server's name): one socket with options set before its
/// connect (TCP_NODELAY, SO_RCVBUF 24576, SO_RCVTIMEO 7 s, TCP_KEEPIDLE 33), one without; each
/// prints the four values read back after connecting, then echoes a byte. See
/// [`check_socket_options`].
pub const PY_SOCKET_OPTIONS: &str = r#"
import socket, struct, sys
def probe(set_options):
    c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if set_options:
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 24576)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 7, 0))
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 33)
    c.connect((sys.argv[1], 7))
    print(c.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0,
          c.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
          struct.unpack("ll", c.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16))[0],
          c.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE))
    c.sendall(b"x")
    assert c.recv(1) == b"x"
    c.close()
probe(True)
probe(False)
"#;

/// Checks [`PY_SOCKET_OPTIONS`]' output: the options set before the connect are the host
/// socket's, and the socket that set none has the host's defaults.
///
/// # Panics
/// When they are not.
pub fn check_socket_options(got: &str) {
    let lines: Vec<&str> = got.lines().collect();
    // Linux doubles SO_RCVBUF on set: 24576 reads back as 49152, natively and here.
    assert_eq!(lines.first(), Some(&"True 49152 7 33"), "{got}");
    let unset: Vec<&str> = lines.get(1).map_or(vec![], |l| l.split(' ').collect());
    assert_eq!(unset.len(), 4, "{got}");
    assert_eq!(unset[0], "False", "{got}");
    assert_ne!(
        unset[1], "49152",
        "an unset SO_RCVBUF keeps the default: {got}"
    );
    assert_eq!(unset[2], "0", "{got}");
    // The host's default keepalive idle time (7200 s), not the first socket's 33.
    assert_eq!(unset[3], "7200", "{got}");
}

/// Where scripts/install-deps leaves Debian's busybox-static package (it conflicts with the
/// installed busybox, so it is unpacked, never installed).
pub const BUSYBOX_STATIC_DEB: &str = "/var/cache/outsock/busybox-static.deb";

/// Fails where a missing prerequisite must not be skipped (CI, or `OUTSOCK_E2E_REQUIRED=1`),
/// else says why and skips.
///
/// # Panics
/// Under CI: a test that cannot run fails.
pub fn skip(test: &str, why: &str) {
    let required = std::env::var("OUTSOCK_E2E_REQUIRED").as_deref() == Ok("1")
        || std::env::var("CI").as_deref() == Ok("true");
    assert!(
        !required,
        "{test}: {why}, and CI / OUTSOCK_E2E_REQUIRED=1 forbid skipping"
    );
    println!("SKIP {test}: {why}");
}

/// Asserts that `out` (of `what`) succeeded, showing its output and the daemons' logs if not;
/// returns its stdout.
///
/// # Panics
/// When it did not succeed.
pub fn ok(s: &Stack, out: &std::process::Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}\n{}\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr),
        s.logs()
    );
    text(&out.stdout)
}

/// The address in a ping's first line: `PING name (ADDRESS) …` (iputils and busybox alike).
#[must_use]
pub fn ping_target(stdout: &str) -> String {
    let first = stdout.lines().next().unwrap_or_default();
    let open = first.find('(').unwrap_or(0);
    let close = first.find(')').unwrap_or(0);
    first.get(open + 1..close).unwrap_or_default().to_owned()
}

/// `outsock run FLAGS… -- program args…` in `legacy`, started through `wrapper` (a program and
/// its arguments first, e.g. `timeout 60`), with the stack's host.sock and liboutsock, stdin
/// empty.
///
/// # Panics
/// When the `outsock` binary or liboutsock is not built.
pub fn outsock_run(
    s: &Stack,
    wrapper: &[&str],
    flags: &[&str],
    program: &std::path::Path,
    args: &[&str],
) -> std::process::Command {
    use testworld::stack::artefact;
    let mut cmd = s.world.legacy().command(wrapper[0]);
    cmd.args(&wrapper[1..])
        .arg(artefact("outsock").expect("the outsock binary"))
        .arg("run")
        .args(flags)
        .arg("--socket")
        .arg(s.host_sock())
        .arg("--shim")
        .arg(artefact("liboutsock.so").expect("liboutsock"))
        .arg("--")
        .arg(program)
        .args(args)
        .stdin(std::process::Stdio::null());
    cmd
}

/// The `q` quantile (0 to 1) of `sorted` (nearest rank; NaN when empty).
#[must_use]
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i]
}
