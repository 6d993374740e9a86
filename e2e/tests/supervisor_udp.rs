//! UDP under the supervisor, process mode: a Go program built here with CGO_ENABLED=0 (raw
//! system calls, its own resolver) runs unmodified in the test world's `legacy` namespace
//! (nothing but `lo`, so a datagram not outsourced fails instead of leaking) through
//! `outsock run`, and:
//! - dials `udp4` by name to the world's UDP echo (a connected socket of host-server's in its
//!   descriptor): Write/Read round trip, and ReadFrom reports the name's dummy IPv4;
//! - on an unconnected `ListenPacket("udp4", ":0")` socket (an association) sends WriteTo the
//!   dummy and hears the echo back with ReadFrom, from the dummy;
//! - serves UDP on `:5353` (an association bound where host-server listens) to an IPv6 client
//!   in `world`, which gets its echo from the host's port; the server saw the client as its
//!   source-pool dummy; a port host-server does not allow is EACCES at bind;
//! - keeps loopback UDP on its own `lo` (a 127.0.0.1 echo round trip, not outsourced).
//!
//! A C program checks the finer semantics (poll, MSG_PEEK, MSG_TRUNC, a short address length,
//! EAGAIN, a signal interrupting a blocking recvfrom, SO_RCVTIMEO, getsockname/getpeername,
//! EMSGSIZE, a connected socket's send/recv/recvfrom) under `--supervisor-only` and, the same
//! lines, with the preload beside the supervisor (the default).

// Test code throughout; helpers outside #[test] functions unwrap too.
#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use outsock_e2e::{ok, outsock_run, skip, stack, text, wait_udp_bound, world_udp_ping};
use tempfile::TempDir;
use testworld::stack::Stack;
use testworld::{addr, zone};

/// The UDP server's port, allowed at host-server.
const PORT: u16 = 5353;
const CONFIG: &str = "[listen]\nallowed_ports = [5353]\n";

/// One Go program, its mode in the first argument.
const GO_UDP: &str = r#"package main

import (
	"fmt"
	"net"
	"os"
	"time"
)

func fail(what string, err error) {
	fmt.Fprintln(os.Stderr, what+":", err)
	os.Exit(2)
}

func atoi(s string) int {
	n := 0
	fmt.Sscan(s, &n)
	return n
}

func main() {
	switch os.Args[1] {
	case "dial":
		// Connected, by name: the kernel's Write/Read; ReadFrom with the peer's address.
		c, err := net.Dial("udp4", net.JoinHostPort(os.Args[2], "7"))
		if err != nil {
			fail("dial", err)
		}
		c.SetDeadline(time.Now().Add(20 * time.Second))
		fmt.Printf("remote %s\n", c.RemoteAddr())
		if _, err := c.Write([]byte("hello connected")); err != nil {
			fail("write", err)
		}
		buf := make([]byte, 2048)
		n, err := c.Read(buf)
		if err != nil {
			fail("read", err)
		}
		fmt.Printf("read %s\n", buf[:n])
		if _, err := c.Write([]byte("again")); err != nil {
			fail("write", err)
		}
		n, from, err := c.(*net.UDPConn).ReadFrom(buf)
		if err != nil {
			fail("readfrom", err)
		}
		fmt.Printf("readfrom %s %s\n", from, buf[:n])
	case "unconnected":
		// An association: WriteTo the name's dummy, ReadFrom it.
		to, err := net.ResolveUDPAddr("udp4", net.JoinHostPort(os.Args[2], "7"))
		if err != nil {
			fail("resolve", err)
		}
		pc, err := net.ListenPacket("udp4", ":0")
		if err != nil {
			fail("listen", err)
		}
		pc.SetDeadline(time.Now().Add(20 * time.Second))
		fmt.Printf("to %s\n", to)
		fmt.Printf("local %s\n", pc.LocalAddr())
		for _, m := range []string{"first", "second"} {
			if _, err := pc.WriteTo([]byte(m), to); err != nil {
				fail("writeto", err)
			}
			buf := make([]byte, 2048)
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				fail("readfrom", err)
			}
			fmt.Printf("readfrom %s %s\n", from, buf[:n])
		}
	case "server":
		pc, err := net.ListenPacket("udp4", ":"+os.Args[2])
		if err != nil {
			fail("listen", err)
		}
		pc.SetDeadline(time.Now().Add(30 * time.Second))
		fmt.Printf("listening %s\n", pc.LocalAddr())
		buf := make([]byte, 2048)
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			fail("readfrom", err)
		}
		fmt.Printf("from %s %s\n", from, buf[:n])
		if _, err := pc.WriteTo(append([]byte("echo "), buf[:n]...), from); err != nil {
			fail("writeto", err)
		}
	case "msgserver":
		// As a DNS server does: recvmsg and sendmsg with the peer's address (ReadMsgUDP,
		// WriteMsgUDP), no recvfrom or sendto at all.
		pc, err := net.ListenUDP("udp4", &net.UDPAddr{Port: atoi(os.Args[2])})
		if err != nil {
			fail("listen", err)
		}
		pc.SetDeadline(time.Now().Add(30 * time.Second))
		fmt.Printf("listening %s\n", pc.LocalAddr())
		buf := make([]byte, 2048)
		oob := make([]byte, 512)
		n, _, _, from, err := pc.ReadMsgUDP(buf, oob)
		if err != nil {
			fail("readmsg", err)
		}
		fmt.Printf("from %s %s\n", from, buf[:n])
		if _, _, err := pc.WriteMsgUDP(append([]byte("echo "), buf[:n]...), nil, from); err != nil {
			fail("writemsg", err)
		}
	case "fire":
		// One datagram with sendmsg (WriteMsgUDP), and the program is gone at once.
		to, err := net.ResolveUDPAddr("udp4", net.JoinHostPort(os.Args[2], os.Args[3]))
		if err != nil {
			fail("resolve", err)
		}
		pc, err := net.ListenUDP("udp4", nil)
		if err != nil {
			fail("listen", err)
		}
		if _, _, err := pc.WriteMsgUDP([]byte("last words"), nil, to); err != nil {
			fail("writemsg", err)
		}
		fmt.Printf("to %s\n", to)
		os.Exit(0)
	case "loopback":
		srv, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			fail("listen", err)
		}
		go func() {
			buf := make([]byte, 2048)
			for {
				n, from, err := srv.ReadFrom(buf)
				if err != nil {
					return
				}
				srv.WriteTo(buf[:n], from)
			}
		}()
		c, err := net.Dial("udp4", srv.LocalAddr().String())
		if err != nil {
			fail("dial", err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		c.Write([]byte("local"))
		buf := make([]byte, 2048)
		n, from, err := c.(*net.UDPConn).ReadFrom(buf)
		if err != nil {
			fail("readfrom", err)
		}
		fmt.Printf("server %s\nreadfrom %s %s\n", srv.LocalAddr(), from, buf[:n])
	}
}
"#;

/// The test world with `config` and [`GO_UDP`] built in a temporary folder, or `None` (after
/// [`skip`]) where supervision, the world or `go` is unavailable.
fn go_world(test: &str, label: &str, config: &str) -> Option<(Stack, TempDir, PathBuf)> {
    if !outsock_supervisor::available() {
        skip(test, "this kernel has no seccomp user notification");
        return None;
    }
    let s = stack(label, config)?;
    let dir = tempfile::tempdir().unwrap();
    let Some(bin) = testworld::programs::build_go(dir.path(), "udp", GO_UDP).unwrap() else {
        skip(
            test,
            "go is not installed (golang-go, scripts/install-deps)",
        );
        return None;
    };
    let file = text(&Command::new("file").arg(&bin).output().unwrap().stdout);
    assert!(file.contains("statically linked"), "{file}");
    Some((s, dir, bin))
}

/// Runs `program args…` through `outsock run FLAGS…` and logs what it said.
fn run(s: &Stack, flags: &[&str], program: &Path, args: &[&str]) -> Output {
    let out = outsock_run(s, &["timeout", "60"], flags, program, args)
        .output()
        .unwrap();
    println!(
        "{args:?}: {}\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

/// The value after `key ` on the line that starts with it.
fn field<'a>(stdout: &'a str, key: &str) -> &'a str {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no {key} line in {stdout}"))
}

/// Asserts that `a` is the dummy dns-cache gave [`zone::ECHO`], on the echo port.
fn assert_echo_dummy(s: &Stack, a: SocketAddrV4) {
    assert_eq!(a.port(), addr::ECHO_PORT);
    let mapped = s.mappings(&["--address", &a.ip().to_string()]).unwrap();
    assert!(
        mapped.contains(zone::ECHO),
        "{a} is not the dummy of {}: {mapped}",
        zone::ECHO
    );
}

#[test]
fn go_udp4_dial_by_name_round_trip_and_readfrom_the_dummy() {
    let test = "go_udp4_dial_by_name_round_trip_and_readfrom_the_dummy";
    let Some((s, _dir, bin)) = go_world(test, "sup-udp-dial", "") else {
        return;
    };
    let out = run(&s, &[], &bin, &["dial", zone::ECHO]);
    let stdout = ok(&s, &out, "go udp dial");
    let remote: SocketAddrV4 = field(&stdout, "remote").parse().unwrap();
    assert_echo_dummy(&s, remote);
    assert_eq!(field(&stdout, "read"), "hello connected", "{stdout}");
    assert_eq!(
        field(&stdout, "readfrom"),
        format!("{remote} again"),
        "{stdout}"
    );

    // `--shim-only`: the static program's connect to the same dummy is not outsourced, and
    // `legacy` has no route.
    let ip = remote.ip().to_string();
    let plain = run(&s, &["--shim-only"], &bin, &["dial", &ip]);
    assert!(!plain.status.success(), "{}", text(&plain.stdout));
    assert!(
        text(&plain.stderr).contains("network is unreachable"),
        "{}",
        text(&plain.stderr)
    );
}

#[test]
fn go_unconnected_udp4_writeto_the_dummy_hears_it_back() {
    let test = "go_unconnected_udp4_writeto_the_dummy_hears_it_back";
    let Some((s, _dir, bin)) = go_world(test, "sup-udp-unc", "") else {
        return;
    };
    let out = run(&s, &[], &bin, &["unconnected", zone::ECHO]);
    let stdout = ok(&s, &out, "go unconnected udp");
    let to: SocketAddrV4 = field(&stdout, "to").parse().unwrap();
    assert_echo_dummy(&s, to);
    // getsockname: the AF_INET view of the association (host-server's port).
    let local: SocketAddrV4 = field(&stdout, "local").parse().unwrap();
    assert_ne!(local.port(), 0, "{stdout}");
    let got: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("readfrom "))
        .collect();
    assert_eq!(
        got,
        vec![format!("{to} first"), format!("{to} second")],
        "{stdout}"
    );
}

#[test]
fn go_udp4_server_answers_an_ipv6_client_seen_as_its_dummy() {
    let test = "go_udp4_server_answers_an_ipv6_client_seen_as_its_dummy";
    let Some(s) = server_case(test, "sup-udp-srv", "server") else {
        return;
    };
    // A port host-server does not allow: the bind fails as liboutsock's does (EACCES).
    let bin = s.1.path().join("udp");
    let refused = run(&s.0, &[], &bin, &["server", "5354"]);
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("bind: permission denied"),
        "{}",
        text(&refused.stderr)
    );
}

/// The same server receiving with `recvmsg` and answering with `sendmsg` (Go's ReadMsgUDP and
/// WriteMsgUDP, as DNS servers do): the kernel's own calls on the association's end in the
/// supervisor's private network, addresses and all.
#[test]
fn go_udp4_server_with_recvmsg_and_sendmsg_answers_an_ipv6_client() {
    let test = "go_udp4_server_with_recvmsg_and_sendmsg_answers_an_ipv6_client";
    let _ = server_case(test, "sup-udp-msg", "msgserver");
}

/// Runs the Go program as a UDP server in `mode` on [`PORT`], has a world client send it
/// `ping` over IPv6, and checks the echo and what the server saw (the client's source-pool
/// dummy); the world and the program's folder, or `None` after a skip.
fn server_case(test: &str, label: &str, mode: &str) -> Option<(Stack, TempDir)> {
    let (s, dir, bin) = go_world(test, label, CONFIG)?;
    let port = PORT.to_string();
    let mut server = outsock_run(&s, &["timeout", "60"], &[], &bin, &[mode, &port]);
    server.stdout(Stdio::piped()).stderr(Stdio::piped());
    let server = server.spawn().unwrap();
    wait_udp_bound(&s, PORT);
    let reply = world_udp_ping(&s, PORT);
    let out = server.wait_with_output().unwrap();
    println!("server: {}\n{}", text(&out.stdout), text(&out.stderr));
    let stdout = ok(&s, &out, "go udp server");
    assert_eq!(
        reply,
        (
            b"echo ping".to_vec(),
            SocketAddr::new(addr::HOST.into(), PORT)
        ),
        "{stdout}"
    );
    assert_eq!(field(&stdout, "listening"), "0.0.0.0:5353", "{stdout}");
    let (from, payload) = field(&stdout, "from").split_once(' ').unwrap();
    assert_eq!(payload, "ping");
    let from: SocketAddrV4 = from.parse().unwrap();
    // The IPv6 client as the program sees it: its source-pool dummy.
    let table = s.mappings(&["--direction", "inbound-peer"]).unwrap();
    let row = table
        .lines()
        .find(|l| l.starts_with(&format!("{} ", from.ip())))
        .unwrap_or_else(|| panic!("{from} not in\n{table}"));
    assert!(row.contains(&addr::CLIENT.to_string()), "{row}");
    Some((s, dir))
}

/// A datagram sent with `sendmsg` (not notified: it leaves through the private network's TUN
/// device) by a program that exits at once still reaches the world: the supervisor carries
/// what its sockets sent before it ends.
#[test]
fn a_datagram_sent_with_sendmsg_just_before_exit_still_arrives() {
    let test = "a_datagram_sent_with_sendmsg_just_before_exit_still_arrives";
    let Some((s, _dir, bin)) = go_world(test, "sup-udp-fire", "") else {
        return;
    };
    let sink = s
        .world
        .world()
        .run(|| UdpSocket::bind(SocketAddr::new(addr::ECHO.into(), 9999)).unwrap())
        .unwrap();
    sink.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    for round in 0..5 {
        let out = run(
            &s,
            &["--supervisor-only"],
            &bin,
            &["fire", zone::ECHO, "9999"],
        );
        let stdout = ok(&s, &out, "go fire");
        let mut buf = [0u8; 64];
        let got = sink.recv_from(&mut buf);
        assert!(
            got.is_ok(),
            "round {round}: nothing arrived ({got:?}): {stdout}"
        );
        let (n, _) = got.unwrap();
        assert_eq!(&buf[..n], b"last words", "round {round}");
    }
}

#[test]
fn static_loopback_udp_stays_local() {
    let test = "static_loopback_udp_stays_local";
    let Some((s, _dir, bin)) = go_world(test, "sup-udp-lo", "") else {
        return;
    };
    let out = run(&s, &[], &bin, &["loopback"]);
    let stdout = ok(&s, &out, "go loopback udp");
    let server: SocketAddrV4 = field(&stdout, "server").parse().unwrap();
    assert_eq!(*server.ip(), Ipv4Addr::LOCALHOST);
    assert_eq!(
        field(&stdout, "readfrom"),
        format!("{server} local"),
        "{stdout}"
    );
}

/// A C program's UDP semantics against the world's echo by name: an unconnected socket
/// (poll, MSG_PEEK with a short address length, MSG_TRUNC, an empty non-blocking receive, a
/// blocking receive a signal interrupts without losing a datagram, SO_RCVTIMEO,
/// getsockname/getpeername, an oversized datagram) and a connected one (getpeername,
/// send/recv, recvfrom, an interrupted recvfrom, a sendto elsewhere after which it still
/// hears its peer alone, ECONNREFUSED, connect(AF_UNSPEC)); a timeout set before the socket is outsourced; a
/// server's bound socket connecting to one client keeps its port.
const C_UDP: &str = r#"
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

static void on_alarm(int sig) { (void)sig; }

static const char *err(long n) { return n < 0 ? strerror(errno) : "ok"; }

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IONBF, 0);
    struct addrinfo hints = { .ai_family = AF_INET, .ai_socktype = SOCK_DGRAM }, *ai;
    int rc = getaddrinfo(argv[1], "7", &hints, &ai);
    if (rc) {
        fprintf(stderr, "getaddrinfo: %s\n", gai_strerror(rc));
        return 2;
    }
    struct sockaddr_in to = *(struct sockaddr_in *)ai->ai_addr;
    printf("to %s:%d\n", inet_ntoa(to.sin_addr), ntohs(to.sin_port));
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm;
    sigaction(SIGALRM, &sa, NULL);

    int u = socket(AF_INET, SOCK_DGRAM, 0);
    char buf[100];
    struct sockaddr_in from;
    socklen_t len;
    long n = sendto(u, "peekaboo", 8, 0, (struct sockaddr *)&to, sizeof to);
    printf("sendto %ld %s\n", n, err(n));
    struct pollfd p = { .fd = u, .events = POLLIN };
    rc = poll(&p, 1, 10000);
    printf("poll %d readable %d\n", rc, !!(p.revents & POLLIN));
    memset(&from, 0, sizeof from);
    len = 4;
    n = recvfrom(u, buf, sizeof buf, MSG_PEEK, (struct sockaddr *)&from, &len);
    printf("peek %ld len %d family %d port %d addr %s\n", n, (int)len, from.sin_family,
           ntohs(from.sin_port), inet_ntoa(from.sin_addr));
    len = sizeof from;
    n = recvfrom(u, buf, 4, MSG_TRUNC, (struct sockaddr *)&from, &len);
    printf("trunc %ld %.4s from %s:%d len %d\n", n, buf, inet_ntoa(from.sin_addr),
           ntohs(from.sin_port), (int)len);
    n = recvfrom(u, buf, sizeof buf, MSG_DONTWAIT, (struct sockaddr *)&from, &len);
    printf("empty %ld %s\n", n, err(n));
    alarm(1);
    n = recvfrom(u, buf, sizeof buf, 0, (struct sockaddr *)&from, &len);
    printf("interrupted %ld %s\n", n, err(n));
    n = sendto(u, "after", 5, 0, (struct sockaddr *)&to, sizeof to);
    len = sizeof from;
    n = recvfrom(u, buf, sizeof buf, 0, (struct sockaddr *)&from, &len);
    printf("after %ld %.*s from %s:%d\n", n, (int)(n > 0 ? n : 0), buf,
           inet_ntoa(from.sin_addr), ntohs(from.sin_port));
    struct timeval tv = { 0, 300000 };
    setsockopt(u, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    n = recvfrom(u, buf, sizeof buf, 0, (struct sockaddr *)&from, &len);
    printf("timeout %ld %s\n", n, err(n));
    len = sizeof from;
    rc = getsockname(u, (struct sockaddr *)&from, &len);
    printf("local %d family %d port-set %d\n", rc, from.sin_family, from.sin_port != 0);
    len = sizeof from;
    rc = getpeername(u, (struct sockaddr *)&from, &len);
    printf("peer %d %s\n", rc, err(rc));
    static char big[70000];
    n = sendto(u, big, sizeof big, 0, (struct sockaddr *)&to, sizeof to);
    printf("big %ld %s\n", n, err(n));

    int c = socket(AF_INET, SOCK_DGRAM, 0);
    rc = connect(c, (struct sockaddr *)&to, sizeof to);
    printf("connect %d %s\n", rc, err(rc));
    len = sizeof from;
    rc = getpeername(c, (struct sockaddr *)&from, &len);
    printf("cpeer %s:%d family %d\n", inet_ntoa(from.sin_addr), ntohs(from.sin_port),
           from.sin_family);
    n = send(c, "conn", 4, 0);
    n = recv(c, buf, sizeof buf, 0);
    printf("crecv %ld %.*s\n", n, (int)(n > 0 ? n : 0), buf);
    int dom = -1, typ = -1, pro = -1;
    socklen_t ol = sizeof dom;
    getsockopt(c, SOL_SOCKET, SO_DOMAIN, &dom, &ol);
    ol = sizeof typ;
    getsockopt(c, SOL_SOCKET, SO_TYPE, &typ, &ol);
    ol = sizeof pro;
    getsockopt(c, SOL_SOCKET, SO_PROTOCOL, &pro, &ol);
    printf("copts domain %d type %d protocol %d\n", dom, typ, pro);
    n = send(c, "conn2", 5, 0);
    len = sizeof from;
    memset(&from, 0, sizeof from);
    n = recvfrom(c, buf, sizeof buf, 0, (struct sockaddr *)&from, &len);
    printf("crecvfrom %ld %.*s from %s:%d\n", n, (int)(n > 0 ? n : 0), buf,
           inet_ntoa(from.sin_addr), ntohs(from.sin_port));
    alarm(1);
    n = recvfrom(c, buf, sizeof buf, 0, (struct sockaddr *)&from, &len);
    printf("cinterrupted %ld %s\n", n, err(n));
    /* Natively a connected UDP socket may send elsewhere, and still hears its peer alone. */
    rc = getaddrinfo(argv[2], "7", &hints, &ai);
    if (rc) {
        fprintf(stderr, "getaddrinfo: %s\n", gai_strerror(rc));
        return 2;
    }
    n = sendto(c, "elsewhere", 9, 0, ai->ai_addr, ai->ai_addrlen);
    printf("csendto-other %ld %s\n", n, err(n));
    n = send(c, "still", 5, 0);
    len = sizeof from;
    n = recvfrom(c, buf, sizeof buf, 0, (struct sockaddr *)&from, &len);
    printf("cstill %ld %.*s from %s:%d\n", n, (int)(n > 0 ? n : 0), buf,
           inet_ntoa(from.sin_addr), ntohs(from.sin_port));
    len = sizeof from;
    rc = getpeername(c, (struct sockaddr *)&from, &len);
    printf("cpeer-after %s:%d\n", inet_ntoa(from.sin_addr), ntohs(from.sin_port));
    /* connect(AF_UNSPEC) disconnects: that one, and a freshly connected one, which can then
       send anywhere and hear anyone. */
    struct sockaddr unspec = { .sa_family = AF_UNSPEC };
    rc = connect(c, &unspec, sizeof unspec);
    len = sizeof from;
    int rc2 = getpeername(c, (struct sockaddr *)&from, &len);
    printf("cunspec %d %s, getpeername %d %s\n", rc, err(rc), rc2, err(rc2));
    int d = socket(AF_INET, SOCK_DGRAM, 0);
    connect(d, (struct sockaddr *)&to, sizeof to);
    rc = connect(d, &unspec, sizeof unspec);
    len = sizeof from;
    rc2 = getpeername(d, (struct sockaddr *)&from, &len);
    printf("dunspec %d %s, getpeername %d %s\n", rc, err(rc), rc2, err(rc2));
    n = sendto(d, "re", 2, 0, (struct sockaddr *)&to, sizeof to);
    len = sizeof from;
    n = recvfrom(d, buf, sizeof buf, 0, (struct sockaddr *)&from, &len);
    printf("dagain %ld %.*s from %s:%d\n", n, (int)(n > 0 ? n : 0), buf,
           inet_ntoa(from.sin_addr), ntohs(from.sin_port));

    /* A timeout set before the socket is outsourced still holds; nothing answers on port 9. */
    struct sockaddr_in closed = to;
    closed.sin_port = htons(9);
    int t = socket(AF_INET, SOCK_DGRAM, 0);
    setsockopt(t, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    n = sendto(t, "x", 1, 0, (struct sockaddr *)&closed, sizeof closed);
    len = sizeof from;
    n = recvfrom(t, buf, sizeof buf, 0, (struct sockaddr *)&from, &len);
    printf("carried-timeout %ld %s\n", n, err(n));
    /* A connected socket learns of the ICMP port unreachable, as natively. */
    int r = socket(AF_INET, SOCK_DGRAM, 0);
    struct timeval two = { 2, 0 };
    setsockopt(r, SOL_SOCKET, SO_RCVTIMEO, &two, sizeof two);
    connect(r, (struct sockaddr *)&closed, sizeof closed);
    send(r, "x", 1, 0);
    n = recv(r, buf, sizeof buf, 0);
    printf("refused %ld %s\n", n, err(n));
    /* A UDP server's socket (bound to its port) connecting to one client keeps its port. */
    int b = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in any = { .sin_family = AF_INET, .sin_port = htons(5353) };
    rc = bind(b, (struct sockaddr *)&any, sizeof any);
    printf("bind %d %s\n", rc, err(rc));
    rc = connect(b, (struct sockaddr *)&to, sizeof to);
    printf("bconnect %d %s\n", rc, err(rc));
    len = sizeof from;
    getsockname(b, (struct sockaddr *)&from, &len);
    printf("bport %d\n", ntohs(from.sin_port));
    setsockopt(b, SOL_SOCKET, SO_RCVTIMEO, &two, sizeof two);
    send(b, "bound", 5, 0);
    n = recv(b, buf, sizeof buf, 0);
    printf("brecv %ld %.*s\n", n, (int)(n > 0 ? n : 0), buf);
    return 0;
}
"#;

/// The lines [`C_UDP`] must print talking to the echo at `to` (its dummy).
fn c_udp_expected(to: &str) -> Vec<String> {
    let (ip, _) = to.split_once(':').unwrap();
    [
        format!("to {to}"),
        "sendto 8 ok".into(),
        "poll 1 readable 1".into(),
        // A 4-byte address buffer gets the family and port only; the length is the whole.
        "peek 8 len 16 family 2 port 7 addr 0.0.0.0".into(),
        format!("trunc 8 peek from {to} len 16"),
        "empty -1 Resource temporarily unavailable".into(),
        "interrupted -1 Interrupted system call".into(),
        format!("after 5 after from {to}"),
        "timeout -1 Resource temporarily unavailable".into(),
        "local 0 family 2 port-set 1".into(),
        "peer -1 Transport endpoint is not connected".into(),
        "big -1 Message too long".into(),
        "connect 0 ok".into(),
        format!("cpeer {ip}:7 family 2"),
        "crecv 4 conn".into(),
        // As natively: AF_INET, SOCK_DGRAM, IPPROTO_UDP (not host-server's IPv6 socket's).
        "copts domain 2 type 2 protocol 17".into(),
        format!("crecvfrom 5 conn2 from {to}"),
        "cinterrupted -1 Interrupted system call".into(),
        "csendto-other 9 ok".into(),
        format!("cstill 5 still from {to}"),
        format!("cpeer-after {to}"),
        "cunspec 0 ok, getpeername -1 Transport endpoint is not connected".into(),
        "dunspec 0 ok, getpeername -1 Transport endpoint is not connected".into(),
        format!("dagain 2 re from {to}"),
        "carried-timeout -1 Resource temporarily unavailable".into(),
        "refused -1 Connection refused".into(),
        "bind 0 ok".into(),
        "bconnect 0 ok".into(),
        "bport 5353".into(),
        "brecv 5 bound".into(),
    ]
    .into()
}

#[test]
fn udp_semantics_of_a_c_program_under_the_supervisor_alone_and_with_the_preload() {
    let test = "udp_semantics_of_a_c_program_under_the_supervisor_alone_and_with_the_preload";
    if !outsock_supervisor::available() {
        skip(test, "this kernel has no seccomp user notification");
        return;
    }
    let Some(s) = stack("sup-udp-c", CONFIG) else {
        return;
    };
    let bin = testworld::programs::build_c(s.world.dir(), "udp_semantics", &[C_UDP]).unwrap();
    // The supervisor alone (no preload: the dynamic program is translated as a static one
    // is), then the default (liboutsock in process, the supervisor beside it), then the
    // supervisor alone without its private network (`AF_UNIX` ends, where no TUN device or
    // namespace can be had): the same lines.
    for (flags, private) in [
        (&["--supervisor-only"][..], "on"),
        (&[], "on"),
        (&["--supervisor-only"][..], "off"),
    ] {
        let out = outsock_run(
            &s,
            &["timeout", "60"],
            flags,
            &bin,
            &[zone::ECHO, zone::V6ONLY],
        )
        .env("OUTSOCK_PRIVATE_NET", private)
        .output()
        .unwrap();
        let stdout = ok(&s, &out, "C udp semantics");
        let to = field(&stdout, "to").to_string();
        assert_echo_dummy(&s, to.parse().unwrap());
        let want = c_udp_expected(&to);
        let got: Vec<&str> = stdout.lines().collect();
        assert_eq!(got, want, "{flags:?}, private network {private}:\n{stdout}");
    }
}
