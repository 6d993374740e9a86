//! ICMP echo under the supervisor, process mode: programs that make their own system calls
//! (no liboutsock inside them) ping by name in the test world's `legacy` namespace (nothing but
//! `lo`: natively "Network is unreachable") through the default `outsock run`. Their ping or
//! raw ICMP socket's first `sendto` off loopback opens an ICMP association with host-server
//! (the descriptor becomes the association's `AF_UNIX` end), whose echo requests host-server
//! sends as ICMPv6 echo and whose replies come back from the destination's dummy address.
//!
//! - Debian's busybox-static `ping` as root (a raw ICMP socket: each reply read behind an IPv4
//!   header the supervisor's relay puts in front): 3 replies from the dummy, 0% loss.
//!   Root only: Debian's busybox-static gives up when a raw socket is refused ("permission
//!   denied (are you root?)"), never trying a ping socket, so it cannot ping unprivileged even
//!   natively.
//! - An unanswered destination reports total loss within ping's deadline.
//! - A static C program on a ping socket (sendto/recvfrom, poll, epoll, connect + send/recv,
//!   getpeername; another destination, then the first again): unprivileged where the legacy
//!   namespace's `net.ipv4.ping_group_range` forbids ping sockets (a new namespace allows
//!   none, not even root's; the supervisor's private network makes the socket), then as root
//!   and unprivileged with the range widened (as an administrator would for unprivileged
//!   ping): the reply comes from the dummy (port 0), with its sequence number and data;
//!   another ICMP type and a short header are EINVAL.

// Test code throughout; helpers outside #[test] functions unwrap too.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use outsock_e2e::{ping_target as target, skip, stack, text, BUSYBOX_STATIC_DEB};
use tempfile::TempDir;
use testworld::stack::Stack;
use testworld::zone;

/// The user an unprivileged ping runs as (nobody).
const NOBODY: &str = "65534";

/// The test world and a temporary folder (readable by everyone: an unprivileged program runs
/// from it), or `None` (after [`skip`]) where supervision or the world is unavailable.
fn world(test: &str, label: &str) -> Option<(Stack, TempDir)> {
    if !outsock_supervisor::available() {
        skip(test, "this kernel has no seccomp user notification");
        return None;
    }
    let s = stack(label, "")?;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    Some((s, dir))
}

/// Debian's static busybox, unpacked into `dir`, or `None` after [`skip`].
fn busybox_static(test: &str, dir: &Path) -> Option<PathBuf> {
    if !Path::new(BUSYBOX_STATIC_DEB).is_file() {
        skip(test, "no busybox-static package (scripts/install-deps)");
        return None;
    }
    let root = dir.join("root");
    let st = Command::new("dpkg")
        .arg("-x")
        .arg(BUSYBOX_STATIC_DEB)
        .arg(&root)
        .status()
        .unwrap();
    assert!(st.success(), "dpkg -x failed");
    for d in [root.clone(), root.join("bin")] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let bb = root.join("bin/busybox");
    let file = text(&Command::new("file").arg(&bb).output().unwrap().stdout);
    assert!(file.contains("statically linked"), "{file}");
    Some(bb)
}

/// Lets every group open ping sockets in `legacy` (a new namespace allows none).
fn allow_ping_sockets(s: &Stack) {
    let st = s
        .world
        .legacy()
        .command("sysctl")
        .args(["-qw", "net.ipv4.ping_group_range=0 2147483647"])
        .status()
        .unwrap();
    assert!(st.success(), "sysctl in legacy failed");
}

/// `outsock run -- timeout 30 [setpriv as nobody] PROGRAM ARGS…` in `legacy`: its output and
/// how long it took.
fn run(s: &Stack, unprivileged: bool, program: &Path, args: &[&str]) -> (Output, Duration) {
    let mut cmd = s.legacy("timeout").unwrap();
    cmd.arg("30");
    if unprivileged {
        cmd.args([
            "setpriv",
            "--reuid",
            NOBODY,
            "--regid",
            NOBODY,
            "--clear-groups",
        ]);
    }
    cmd.arg(program).args(args);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let out = cmd.output().unwrap();
    (out, start.elapsed())
}

/// busybox ping's three echoes to [`zone::V6ONLY`] all came back, from its dummy.
fn check_replies(out: &Output, s: &Stack) {
    let stdout = text(&out.stdout);
    let why = format!("{stdout}\n{}\n{}", text(&out.stderr), s.logs());
    assert!(out.status.success(), "ping failed ({}): {why}", out.status);
    let dummy = target(&stdout);
    assert!(dummy.starts_with("10.170.160."), "not a dummy: {why}");
    assert!(
        stdout.contains("3 packets transmitted, 3 packets received, 0% packet loss"),
        "{why}"
    );
    let replies: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains(" bytes from "))
        .collect();
    assert_eq!(replies.len(), 3, "{why}");
    for (i, line) in replies.iter().enumerate() {
        // 56 data bytes + the 8-byte header, from the dummy, in order, with a real TTL.
        assert!(
            line.starts_with(&format!("64 bytes from {dummy}: seq={i} ttl=")),
            "{line}\n{why}"
        );
        assert!(!line.contains("ttl=0 "), "{line}\n{why}");
        assert!(!line.contains("DUP"), "{line}\n{why}");
    }
}

#[test]
fn static_busybox_ping_as_root_uses_a_raw_socket() {
    let test = "static_busybox_ping_as_root_uses_a_raw_socket";
    let Some((s, dir)) = world(test, "sup-ping-root") else {
        return;
    };
    let Some(bb) = busybox_static(test, dir.path()) else {
        return;
    };
    let (out, _) = run(
        &s,
        false,
        &bb,
        &["ping", "-c", "3", "-W", "5", zone::V6ONLY],
    );
    check_replies(&out, &s);
}

#[test]
fn static_busybox_ping_unanswered_reports_total_loss_within_its_deadline() {
    let test = "static_busybox_ping_unanswered_reports_total_loss_within_its_deadline";
    let Some((s, dir)) = world(test, "sup-ping-nohost") else {
        return;
    };
    let Some(bb) = busybox_static(test, dir.path()) else {
        return;
    };
    let (out, took) = run(
        &s,
        false,
        &bb,
        &["ping", "-c", "3", "-W", "2", zone::NO_HOST_AAAA],
    );
    let stdout = text(&out.stdout);
    let why = format!("{stdout}\n{}\n{}", text(&out.stderr), s.logs());
    // busybox: exit status 1 when no reply arrived; never timeout's 124.
    assert_eq!(out.status.code(), Some(1), "{why}");
    assert!(target(&stdout).starts_with("10.170.160."), "{why}");
    assert!(stdout.contains("100% packet loss"), "{why}");
    assert!(!stdout.contains(" bytes from "), "{why}");
    assert!(took < Duration::from_secs(8), "took {took:?}: {why}");
}

/// A ping socket's semantics from a static C program: by name (its own resolver), sendto and
/// recvfrom, poll and epoll on the descriptor, EINVAL for anything but an echo request, and a
/// connected socket's send/recv.
const C_PING: &str = r#"
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <arpa/inet.h>

static int s;
static struct sockaddr_in dummy, other;

static struct sockaddr_in resolve(const char *name) {
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_DGRAM}, *ai;
    if (getaddrinfo(name, NULL, &hints, &ai)) { printf("resolve %s failed\n", name); exit(1); }
    return *(struct sockaddr_in *)ai->ai_addr;
}

static void echo(unsigned char *m, int type, int seq) {
    memset(m, 0, 16);
    m[0] = type;
    m[4] = 0x42; m[5] = 0x42;
    m[6] = seq >> 8; m[7] = seq & 0xff;
    memcpy(m + 8, "outsock!", 8);
}

static const char *err(long r) { return r < 0 ? strerror(errno) : "ok"; }

/* One reply: its type, code, sequence, data and whether it came from `want`, port 0. */
static void reply(const char *how, const struct sockaddr_in *want) {
    unsigned char b[256];
    struct sockaddr_in from;
    socklen_t len = sizeof from;
    memset(&from, 0xff, sizeof from);
    long n = recvfrom(s, b, sizeof b, 0, (struct sockaddr *)&from, &len);
    if (n < 16) { printf("%s recvfrom %ld %s\n", how, n, err(n)); return; }
    printf("%s reply %d %d seq %d %.8s from expected %d port %d len %d\n", how, b[0], b[1],
           b[6] << 8 | b[7], (char *)b + 8, from.sin_addr.s_addr == want->sin_addr.s_addr,
           ntohs(from.sin_port), (int)len);
}

int main(int argc, char **argv) {
    dummy = resolve(argv[1]);
    other = resolve(argv[2]);
    printf("dummy %s\n", strncmp(inet_ntoa(dummy.sin_addr), "10.170.160.", 11) ? "no" : "yes");
    printf("other %s\n", dummy.sin_addr.s_addr != other.sin_addr.s_addr ? "yes" : "no");
    s = socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP);
    if (s < 0) { printf("socket %s\n", strerror(errno)); return 1; }
    unsigned char m[16];
    echo(m, 8, 1);
    printf("sendto %ld\n", (long)sendto(s, m, 16, 0, (struct sockaddr *)&dummy, sizeof dummy));
    struct pollfd p = {.fd = s, .events = POLLIN};
    int ready = poll(&p, 1, 5000);
    printf("poll %d %d\n", ready, p.revents & POLLIN);
    reply("poll", &dummy);
    echo(m, 13, 2);
    printf("timestamp %s\n", err(sendto(s, m, 16, 0, (struct sockaddr *)&dummy, sizeof dummy)));
    echo(m, 8, 2);
    printf("short %s\n", err(sendto(s, m, 4, 0, (struct sockaddr *)&dummy, sizeof dummy)));
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN}, got;
    epoll_ctl(ep, EPOLL_CTL_ADD, s, &ev);
    echo(m, 8, 3);
    printf("sendto %ld\n", (long)sendto(s, m, 16, 0, (struct sockaddr *)&dummy, sizeof dummy));
    printf("epoll %d\n", epoll_wait(ep, &got, 1, 5000));
    reply("epoll", &dummy);
    /* Another destination (its own association), then the first again. */
    echo(m, 8, 5);
    printf("sendto %ld\n", (long)sendto(s, m, 16, 0, (struct sockaddr *)&other, sizeof other));
    reply("other", &other);
    echo(m, 8, 6);
    printf("sendto %ld\n", (long)sendto(s, m, 16, 0, (struct sockaddr *)&dummy, sizeof dummy));
    reply("again", &dummy);
    printf("connect %s\n", err(connect(s, (struct sockaddr *)&dummy, sizeof dummy)));
    echo(m, 8, 4);
    printf("send %ld\n", (long)send(s, m, 16, 0));
    p.revents = 0;
    printf("poll %d\n", poll(&p, 1, 5000));
    unsigned char b[64];
    long n = recv(s, b, sizeof b, 0);
    printf("recv %ld type %d seq %d\n", n, b[0], b[6] << 8 | b[7]);
    struct sockaddr_in peer;
    socklen_t plen = sizeof peer;
    memset(&peer, 0xff, sizeof peer);
    long r = getpeername(s, (struct sockaddr *)&peer, &plen);
    printf("getpeername %s %d port %d len %d\n", err(r),
           peer.sin_addr.s_addr == dummy.sin_addr.s_addr, ntohs(peer.sin_port), (int)plen);
    return 0;
}
"#;

#[test]
fn a_static_c_program_keeps_a_ping_sockets_semantics_as_root_and_unprivileged() {
    let test = "a_static_c_program_keeps_a_ping_sockets_semantics_as_root_and_unprivileged";
    let Some((s, dir)) = world(test, "sup-ping-c") else {
        return;
    };
    let src = dir.path().join("ping.c");
    std::fs::write(&src, C_PING).unwrap();
    let bin = dir.path().join("ping-c");
    let cc = Command::new("cc")
        .args(["-static", "-O1", "-Wall", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .unwrap();
    assert!(cc.status.success(), "cc: {}", text(&cc.stderr));
    // Unprivileged where `legacy`'s range forbids ping sockets (a new namespace's default):
    // the supervisor's private network makes one for it. Then, the range widened, as root and
    // unprivileged: the program's own.
    for (unprivileged, widen) in [(true, false), (false, true), (true, true)] {
        if widen && !unprivileged {
            allow_ping_sockets(&s);
        }
        let (out, _) = run(&s, unprivileged, &bin, &[zone::V6ONLY, zone::ECHO]);
        let stdout = text(&out.stdout);
        let why = format!(
            "unprivileged {unprivileged}, widened {widen}: {stdout}\n{}\n{}",
            text(&out.stderr),
            s.logs()
        );
        assert!(out.status.success(), "{why}");
        assert_eq!(
            stdout,
            "dummy yes\n\
             other yes\n\
             sendto 16\n\
             poll 1 1\n\
             poll reply 0 0 seq 1 outsock! from expected 1 port 0 len 16\n\
             timestamp Invalid argument\n\
             short Invalid argument\n\
             sendto 16\n\
             epoll 1\n\
             epoll reply 0 0 seq 3 outsock! from expected 1 port 0 len 16\n\
             sendto 16\n\
             other reply 0 0 seq 5 outsock! from expected 1 port 0 len 16\n\
             sendto 16\n\
             again reply 0 0 seq 6 outsock! from expected 1 port 0 len 16\n\
             connect ok\n\
             send 16\n\
             poll 1\n\
             recv 16 type 0 seq 4\n\
             getpeername ok 1 port 0 len 16\n",
            "{why}"
        );
    }
}
