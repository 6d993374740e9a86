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
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use outsock_e2e::{stack, text, wait_udp_bound};
use testworld::stack::Stack;
use testworld::{addr, programs, zone};

/// A UDP server port in `allowed_ports`, and a short idle timeout to outlive.
const CONFIG: &str = "udp_idle_timeout_secs = 1\n[listen]\nallowed_ports = [5353, 5354]\n";

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

#[test]
fn netcat_udp_server_hears_an_ipv6_client_and_replies_from_its_port() {
    let Some(s) = stack("nc-udp-l", CONFIG) else {
        return;
    };
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
    // From the address and port the client wrote to (host-server's socket is on `::`).
    assert_eq!(
        replies,
        vec![(b"pong\n".to_vec(), SocketAddr::new(addr::HOST.into(), 5353))],
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
    let Some(s) = stack("py-udp-server", CONFIG) else {
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
    let peer = s
        .dummy_for(addr::CLIENT)
        .expect("a source-pool dummy for the world client");
    let from = SocketAddr::new(addr::HOST.into(), 5354);
    assert_eq!(
        replies,
        vec![
            (format!("reply:one from {peer}").into_bytes(), from),
            (format!("reply:two from {peer}").into_bytes(), from),
        ]
    );
}

/// Builds the C `parts` with the system compiler into the test world's directory.
fn compile(s: &Stack, name: &str, parts: &[&str]) -> PathBuf {
    programs::build_c(s.world.dir(), name, parts).unwrap()
}

/// Runs `bin args…` in `legacy` through outsock, bounded to 60 s.
fn run_c(s: &Stack, bin: &Path, args: &[&str]) -> Output {
    let mut cmd = s.legacy("timeout").unwrap();
    cmd.arg("60").arg(bin).args(args);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.output().unwrap()
}

#[test]
fn connects_on_descriptors_above_69000_are_outsourced() {
    let Some(s) = stack("c-high-fds", CONFIG) else {
        return;
    };
    let bin = compile(&s, "high_fds", &[programs::C_COMMON, programs::C_HIGH_FDS]);
    let out = run_c(&s, &bin, &[zone::ECHO]);
    assert!(out.status.success(), "{}\n{}", text(&out.stderr), s.logs());
    let stderr = text(&out.stderr);
    let top: usize = stderr
        .lines()
        .find_map(|l| l.strip_prefix("top "))
        .and_then(|n| n.parse().ok())
        .unwrap();
    if top < 70_000 {
        println!(
            "NOTE: RLIMIT_NOFILE's hard limit is below 70,010 here and cannot be raised \
             (no CAP_SYS_RESOURCE): held {top} descriptors and connected above {}",
            top - 1000
        );
    }
    assert_eq!(text(&out.stdout), programs::C_HIGH_FDS_OUTPUT);
}

#[test]
fn close_range_and_closefrom_forget_outsourced_descriptors() {
    let Some(s) = stack("c-close-range", CONFIG) else {
        return;
    };
    let bin = compile(
        &s,
        "close_range",
        &[programs::C_COMMON, programs::C_CLOSE_RANGE],
    );
    let out = run_c(&s, &bin, &[zone::ECHO]);
    assert!(out.status.success(), "{}\n{}", text(&out.stderr), s.logs());
    assert_eq!(text(&out.stdout), programs::C_CLOSE_RANGE_OUTPUT);
}

/// C, with [`programs::C_COMMON`] in front: a blocking connect that a signal (without
/// SA_RESTART) interrupts: EINTR, and the connect goes on, so a non-blocking connect then says
/// EALREADY.
const C_EINTR: &str = r#"
static void on_alarm(int sig) { (void)sig; }

int main(int argc, char **argv) {
    struct sockaddr_in to = lookup(argv[1], atoi(argv[2]));
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm;
    sigaction(SIGALRM, &sa, NULL);
    int s = socket(AF_INET, SOCK_STREAM, 0);
    alarm(1);
    int rc = connect(s, (struct sockaddr *)&to, sizeof to);
    printf("blocking %s\n", rc == 0 ? "ok" : err(errno));
    fcntl(s, F_SETFL, fcntl(s, F_GETFL) | O_NONBLOCK);
    rc = connect(s, (struct sockaddr *)&to, sizeof to);
    printf("again %s\n", rc == 0 ? "ok" : err(errno));
    return 0;
}
"#;

/// A port in `world` whose listener's accept queue is full: SYNs go unanswered.
const STALLED_PORT: u16 = 5399;

#[test]
fn a_signal_interrupts_a_blocking_connect_as_natively() {
    let Some(s) = stack("c-eintr", CONFIG) else {
        return;
    };
    // In `world`: a listener with a full accept queue, so a connect stays under way.
    let held = s
        .world
        .world()
        .run(|| {
            let l =
                socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None).unwrap();
            l.bind(&SocketAddr::new(std::net::Ipv6Addr::UNSPECIFIED.into(), STALLED_PORT).into())
                .unwrap();
            l.listen(0).unwrap();
            let mut fill = vec![l];
            for _ in 0..3 {
                let c = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None)
                    .unwrap();
                c.set_nonblocking(true).unwrap();
                let _ = c.connect(&SocketAddr::new(addr::ECHO.into(), STALLED_PORT).into());
                fill.push(c);
            }
            std::thread::sleep(Duration::from_millis(300));
            fill
        })
        .unwrap();
    let bin = compile(&s, "eintr", &[programs::C_COMMON, C_EINTR]);
    let out = run_c(&s, &bin, &[zone::ECHO, &STALLED_PORT.to_string()]);
    drop(held);
    assert!(out.status.success(), "{}\n{}", text(&out.stderr), s.logs());
    assert_eq!(text(&out.stdout), "blocking EINTR\nagain EALREADY\n");
}
