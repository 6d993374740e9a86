//! Process mode end to end, UDP servers and the shim's descriptor edge cases: unmodified
//! programs in the test world's `legacy` namespace (nothing but `lo`) through `outsock run`,
//! IPv6 clients in `world`.
//!
//! - A UDP server that only binds and receives (`nc -u -l`, python) hears an IPv6 client at
//!   once, sees it as its source-pool dummy, replies from its bound port, and outlives the UDP
//!   idle timeout (set to one second here).
//! - C programs compiled here: connects on descriptors above 65,536, and `close_range` over
//!   outsourced descriptors whose numbers are then reused.

// Test code throughout; helpers outside #[test] functions unwrap too.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::process::Stdio;
use std::time::{Duration, Instant};

use testworld::addr;
use testworld::stack::Stack;

/// A UDP server port in `allowed_ports`, and a short idle timeout to outlive.
const CONFIG: &str = "udp_idle_timeout_secs = 1\n[listen]\nallowed_ports = [5353, 5354]\n";

fn stack(label: &str) -> Option<Stack> {
    if !testworld::skip_unless_root(label) {
        return None;
    }
    Some(Stack::start(label, CONFIG).unwrap())
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Waits until host-server has a UDP socket on `port` in `host` (seen with `ss`).
fn wait_udp_bound(s: &Stack, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = s
            .world
            .host()
            .command("ss")
            .args(["-Hlun", &format!("sport = :{port}")])
            .output()
            .unwrap();
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

/// From [`addr::CLIENT`] in `world`: after waiting `wait`, sends each of `datagrams` to the
/// host's UDP `port` from one socket and collects each reply with its source.
fn world_udp_client(
    s: &Stack,
    port: u16,
    wait: Duration,
    datagrams: &'static [&'static [u8]],
) -> Vec<(Vec<u8>, SocketAddr)> {
    s.world
        .world()
        .run(move || {
            let sock = UdpSocket::bind(SocketAddr::new(addr::CLIENT.into(), 0)).unwrap();
            sock.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let to = SocketAddr::new(addr::HOST.into(), port);
            let mut replies = Vec::new();
            for d in datagrams {
                std::thread::sleep(wait);
                sock.send_to(d, to).unwrap();
                let mut buf = [0u8; 2048];
                let (n, from) = sock.recv_from(&mut buf).unwrap();
                replies.push((buf[..n].to_vec(), from));
            }
            replies
        })
        .unwrap()
}

/// The dummy IPv4 that `outsock mappings` lists for `v6`.
fn dummy_for(s: &Stack, v6: std::net::Ipv6Addr) -> Option<Ipv4Addr> {
    let json = s.mappings(&["--json"]).unwrap();
    json.lines()
        .find(|l| l.contains(&format!("\"ipv6\":\"{v6}\"")))
        .and_then(|l| l.split("\"dummy\":\"").nth(1))
        .and_then(|r| r.split('"').next())
        .and_then(|d| d.parse().ok())
}

#[test]
fn netcat_udp_server_hears_an_ipv6_client_and_replies_from_its_port() {
    let Some(s) = stack("nc-udp-l") else { return };
    let mut server = s.legacy("timeout").unwrap();
    server
        .args(["30", "nc", "-u", "-l", "-p", "5353", "-q", "2"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut server = server.spawn().unwrap();
    // netcat sends its stdin to the first client once it has heard from it.
    let mut stdin = server.stdin.take().unwrap();
    stdin.write_all(b"pong\n").unwrap();
    drop(stdin);
    wait_udp_bound(&s, 5353);
    // Quiet past the idle timeout first: a server's socket stays.
    let replies = world_udp_client(&s, 5353, Duration::from_secs(3), &[b"ping\n"]);
    let out = server.wait_with_output().unwrap();
    let got: Vec<_> = replies
        .iter()
        .map(|(d, from)| (d.clone(), from.port()))
        .collect();
    assert_eq!(
        got,
        vec![(b"pong\n".to_vec(), 5353)],
        "{}\n{}",
        text(&out.stderr),
        s.logs()
    );
    assert_eq!(text(&out.stdout), "ping\n", "{}", text(&out.stderr));
}

/// bind + recvfrom only; replies with what it received and whom from.
const PY_UDP_SERVER: &str = r"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(('0.0.0.0', int(sys.argv[1])))
print('bound', s.getsockname(), flush=True)
for _ in range(2):
    data, peer = s.recvfrom(2048)
    s.sendto(b'reply:' + data + b' from ' + peer[0].encode(), peer)
print('done', flush=True)
";

#[test]
fn python_udp_server_outlives_the_idle_timeout_and_sees_source_dummies() {
    let Some(s) = stack("py-udp-server") else {
        return;
    };
    let mut server = s.legacy("timeout").unwrap();
    server
        .args(["30", "python3", "-c", PY_UDP_SERVER, "5354"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let server = server.spawn().unwrap();
    wait_udp_bound(&s, 5354);
    // Each datagram after 2.5 s of silence, well past the 1 s idle timeout.
    let replies = world_udp_client(&s, 5354, Duration::from_millis(2500), &[b"one", b"two"]);
    let out = server.wait_with_output().unwrap();
    assert!(out.status.success(), "{}\n{}", text(&out.stderr), s.logs());
    assert_eq!(
        text(&out.stdout),
        "bound ('0.0.0.0', 5354)\ndone\n",
        "{}",
        text(&out.stderr)
    );
    let peer = dummy_for(&s, addr::CLIENT).expect("a source-pool dummy for the world client");
    let got: Vec<_> = replies
        .iter()
        .map(|(d, from)| (text(d), from.port()))
        .collect();
    assert_eq!(
        got,
        vec![
            (format!("reply:one from {peer}"), 5354),
            (format!("reply:two from {peer}"), 5354),
        ]
    );
}
