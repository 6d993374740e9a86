//! ICMP echo, translated: the real iputils `ping` runs unmodified in the test world's `legacy`
//! namespace (nothing but `lo`) through `outsock run`. Its ping socket
//! (`socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP)`) becomes an ICMP association with host-server,
//! which sends ICMPv6 echo requests from its own ping socket in `host` (the test world allows
//! ping sockets there: `net.ipv4.ping_group_range`) and hands the replies back as ICMPv4 echo
//! replies from the destination's dummy address.

// Test code throughout; helpers outside #[test] functions unwrap too.
#![allow(clippy::unwrap_used)]

use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use outsock_e2e::{ping_target as target, stack, text};
use testworld::stack::Stack;
use testworld::{addr, zone};

/// Runs `ping ARGS…` in `legacy` through outsock, bounded to 30 s by `timeout`; with how long
/// it took.
fn ping(s: &Stack, args: &[&str]) -> (Output, Duration) {
    ping_with(s, &[], args)
}

/// [`ping`] through `outsock run FLAGS…`.
fn ping_with(s: &Stack, flags: &[&str], args: &[&str]) -> (Output, Duration) {
    let mut cmd = s.legacy_with(flags, "timeout").unwrap();
    cmd.arg("30").arg("ping").args(args);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let out = cmd.output().unwrap();
    (out, start.elapsed())
}

#[test]
fn ping_by_name_gets_every_echo_back_from_the_dummy() {
    ping_by_name_case("ping", &[]);
}

/// The same with the supervisor alone: iputils sends with `sendto` and receives with
/// `recvmsg`, which are the kernel's own on an association's end in the supervisor's private
/// network.
#[test]
fn iputils_ping_under_the_supervisor_alone_gets_every_echo_back() {
    ping_by_name_case("ping-sup", &["--supervisor-only"]);
}

fn ping_by_name_case(label: &str, flags: &[&str]) {
    let Some(s) = stack(label, "") else { return };
    let (out, _) = ping_with(
        &s,
        flags,
        &["-c", "3", "-i", "0.2", "-w", "10", zone::V6ONLY],
    );
    let stdout = text(&out.stdout);
    let why = format!("{stdout}\n{}\n{}", text(&out.stderr), s.logs());
    assert!(out.status.success(), "ping failed ({}): {why}", out.status);
    let dummy = target(&stdout);
    assert!(dummy.starts_with("10.170.160."), "not a dummy: {why}");
    // getaddrinfo's AI_CANONNAME: ping's header names the host.
    assert!(
        stdout.starts_with(&format!("PING {} ({dummy})", zone::V6ONLY)),
        "{why}"
    );
    assert!(!stdout.contains("ttl=0 "), "the reply's hop limit: {why}");
    assert!(
        stdout.contains("3 packets transmitted, 3 received, 0% packet loss"),
        "{why}"
    );
    let replies: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains(" bytes from "))
        .collect();
    assert_eq!(replies.len(), 3, "{why}");
    for (i, line) in replies.iter().enumerate() {
        assert!(
            line.contains(&dummy),
            "reply not from {dummy}: {line}\n{why}"
        );
        assert!(
            line.contains(&format!("icmp_seq={}", i + 1)),
            "sequence numbers kept: {line}\n{why}"
        );
        // 56 data bytes + the 8-byte header, checksum intact (ping flags a bad one).
        assert!(line.starts_with("64 bytes from "), "{line}\n{why}");
        assert!(!line.contains("BAD CHECKSUM"), "{line}\n{why}");
        assert!(!line.contains("DUP!"), "{line}\n{why}");
        // Honest round trips: the veth and one local relay, no timer or batching in the way
        // (generous for a loaded CI machine; a held-back reply would take a whole interval).
        let ms: f64 = line
            .split("time=")
            .nth(1)
            .and_then(|t| t.split(' ').next())
            .and_then(|t| t.parse().ok())
            .unwrap_or(f64::MAX);
        assert!(ms < 150.0, "round trip {ms} ms: {line}\n{why}");
    }
}

#[test]
fn an_unanswered_ping_reports_total_loss_within_its_deadline() {
    let Some(s) = stack("ping-nohost", "") else {
        return;
    };
    let (out, took) = ping(&s, &["-c", "3", "-i", "0.2", "-w", "3", zone::NO_HOST_AAAA]);
    let stdout = text(&out.stdout);
    let why = format!("{stdout}\n{}\n{}", text(&out.stderr), s.logs());
    // iputils: exit status 1 when no reply arrived; never timeout's 124.
    assert_eq!(out.status.code(), Some(1), "{why}");
    assert!(stdout.contains("100% packet loss"), "{why}");
    assert!(took < Duration::from_secs(8), "took {took:?}: {why}");
}

#[test]
fn a_refused_destination_is_an_error_and_nothing_is_sent() {
    // Only host-server refuses the prefix, so dns-cache still gives the name a dummy.
    let deny = format!("\n[destinations]\ndeny = [\"{}\"]\n", addr::DENIED_PREFIX);
    let Some(s) = stack("ping-denied", &deny) else {
        return;
    };
    let (out, took) = ping(&s, &["-c", "2", "-i", "0.2", "-w", "5", zone::DENIED_AAAA]);
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    let why = format!("{stdout}\n{stderr}\n{}", s.logs());
    // iputils first connects a UDP probe to learn its source address: host-server refuses it
    // with EACCES, which iputils reports (as its broadcast hint) and exits 2 without sending.
    assert_eq!(out.status.code(), Some(2), "{why}");
    assert!(!stderr.trim().is_empty(), "{why}");
    assert!(!stdout.contains(" bytes from "), "{why}");
    assert!(took < Duration::from_secs(10), "took {took:?}: {why}");
    assert!(
        s.logs().contains("refused destination"),
        "host-server logs the refusal: {why}"
    );
}

/// A ping socket's details, from Python (`socket.socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP)`):
/// a reply keeps the identifier, sequence number and data, comes from the dummy, carries its
/// TTL when asked (`IP_RECVTTL`); another ICMP type is EINVAL, a refused destination EACCES.
const PING_SOCKET_PY: &str = r#"
import errno, socket, struct, sys
ok_name, denied_name = sys.argv[1], sys.argv[2]
IP_TTL, IP_RECVTTL = 2, 12  # Linux; Python names neither

def csum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s > 0xffff: s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff

def echo(ident, seq, data, kind=8):
    m = struct.pack("!BBHHH", kind, 0, 0, ident, seq) + data
    return m[:2] + struct.pack("!H", csum(m)) + m[4:]

def err(f):
    try:
        f()
        return "ok"
    except OSError as e:
        return errno.errorcode[e.errno]

s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
print("proto", s.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL))
s.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
s.settimeout(5)
dummy = socket.gethostbyname(ok_name)
s.sendto(echo(0x4242, 5, b"outsock ping"), (ok_name, 0))
data, anc, flags, addr = s.recvmsg(1024, 64)
t, code, c, ident, seq = struct.unpack("!BBHHH", data[:8])
ttl = [struct.unpack("i", d)[0] for (l, ty, d) in anc if l == socket.IPPROTO_IP and ty == IP_TTL]
print("reply", t, code, hex(ident), seq, data[8:].decode(), csum(data), addr[0] == dummy, ttl)
print("timestamp", err(lambda: s.sendto(echo(1, 1, b"x" * 12, kind=13), (ok_name, 0))))
print("short", err(lambda: s.sendto(b"\x08\x00", (ok_name, 0))))
d = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
print("denied", err(lambda: d.sendto(echo(7, 1, b"x"), (denied_name, 0))))
"#;

#[test]
fn ping_sockets_keep_their_semantics() {
    let deny = format!("\n[destinations]\ndeny = [\"{}\"]\n", addr::DENIED_PREFIX);
    let Some(s) = stack("ping-socket", &deny) else {
        return;
    };
    let mut cmd = s.legacy("timeout").unwrap();
    cmd.args([
        "30",
        "python3",
        "-c",
        PING_SOCKET_PY,
        zone::V6ONLY,
        zone::DENIED_AAAA,
    ]);
    let out = cmd.output().unwrap();
    let stdout = text(&out.stdout);
    let why = format!("{stdout}\n{}\n{}", text(&out.stderr), s.logs());
    assert!(out.status.success(), "{why}");
    assert_eq!(
        stdout,
        "proto 1\n\
         reply 0 0 0x4242 5 outsock ping 0 True [64]\n\
         timestamp EINVAL\n\
         short EINVAL\n\
         denied EACCES\n",
        "{why}"
    );
}

/// busybox ping, as root, opens a raw ICMP socket: its replies begin with an IPv4 header.
#[test]
fn busybox_ping_on_a_raw_socket() {
    let Some(s) = stack("ping-busybox", "") else {
        return;
    };
    let mut cmd = s.legacy("timeout").unwrap();
    cmd.args(["30", "busybox", "ping", "-c", "3", "-W", "5", zone::V6ONLY]);
    let out = cmd.output().unwrap();
    let stdout = text(&out.stdout);
    let why = format!("{stdout}\n{}\n{}", text(&out.stderr), s.logs());
    assert!(out.status.success(), "{why}");
    assert!(
        stdout.contains("3 packets transmitted, 3 packets received, 0% packet loss"),
        "{why}"
    );
    let replies = stdout
        .lines()
        .filter(|l| l.contains(" bytes from 10.170.160."))
        .count();
    assert_eq!(replies, 3, "{why}");
    assert!(stdout.contains("ttl=64"), "{why}");
}
