//! `outsock run` (liboutsock under the supervisor, the default) end to end: programs that liboutsock cannot see into — Debian's
//! busybox-static (static glibc, its own resolver) and a Go client built with CGO_ENABLED=0
//! (raw system calls, Go's own resolver) — run unmodified in the test world's `legacy`
//! namespace (nothing but `lo`, so a call that is not outsourced fails instead of leaking) and
//! reach IPv6-only services by name through outsock-supervisor, host-server and dns-cache.
//! Their resolvers ask the machine's /etc/resolv.conf nameserver, which the supervisor
//! redirects to the guest DNS. A dynamic program still works with the preload under the
//! supervisor, and a loopback connect stays on the program's own `lo`. Descendants stay
//! served after the program exits. Static servers (busybox httpd, Go, raw-syscall prefork
//! children, C) listen through host-server on the host's IPv6 address, allowed ports only
//! (`PORTS`), and IPv6 clients in `world` reach them, seen as their source-pool dummies.
//! `--shim-only` leaves a static program untranslated, `--supervisor-only` translates a
//! dynamic one with no preload, and where a filter with a listener is already in place (an
//! `outsock run` inside another) it says so in one line and runs with the preload alone.

// Test code throughout; helpers outside #[test] functions unwrap too.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use std::time::{Duration, Instant};

use outsock_e2e::{
    assert_client_dummy, check_socket_options, connect_from_client, ok, outsock_run, skip, stack,
    text, wait_listening, world_request, BUSYBOX_STATIC_DEB, PY_SOCKET_OPTIONS,
};
use tempfile::TempDir;
use testworld::stack::{artefact, Stack};
use testworld::{addr, zone, INDEX_BODY};

/// Whether this kernel can supervise (seccomp user notification).
fn can_supervise(test: &str) -> bool {
    if outsock_supervisor::available() {
        return true;
    }
    skip(test, "this kernel has no seccomp user notification");
    false
}

/// `outsock run -- program args…` in `legacy`, started through `wrapper` (its arguments
/// first).
fn supervised_command(s: &Stack, wrapper: &[&str], program: &Path, args: &[&str]) -> Command {
    outsock_run(s, wrapper, &[], program, args)
}

/// Runs `program args…` in `legacy` through `outsock run`, bounded to 60 s.
fn supervised(s: &Stack, program: &Path, args: &[&str]) -> Output {
    run_with(s, &[], program, args)
}

/// Runs `program args…` in `legacy` through `outsock run FLAGS…`, bounded to 60 s.
fn run_with(s: &Stack, flags: &[&str], program: &Path, args: &[&str]) -> Output {
    let out = outsock_run(s, &["timeout", "60"], flags, program, args)
        .output()
        .unwrap();
    // For the test log (shown with --nocapture or on failure).
    println!(
        "{} {args:?}: {}\nstdout: {}\nstderr: {}",
        program.display(),
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

/// Debian's static busybox, unpacked into `dir` (from install-deps' copy, else apt-get
/// download), or `None` after [`skip`].
fn busybox_static(test: &str, dir: &Path) -> Option<PathBuf> {
    let deb = if Path::new(BUSYBOX_STATIC_DEB).is_file() {
        PathBuf::from(BUSYBOX_STATIC_DEB)
    } else {
        let got = Command::new("apt-get")
            .args(["download", "-q", "busybox-static"])
            .current_dir(dir)
            .output();
        let found = std::fs::read_dir(dir).ok().and_then(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|x| x == "deb"))
        });
        match (got, found) {
            (Ok(o), Some(p)) if o.status.success() => p,
            _ => {
                skip(
                    test,
                    "busybox-static could not be downloaded (scripts/install-deps)",
                );
                return None;
            }
        }
    };
    let root = dir.join("root");
    let st = Command::new("dpkg")
        .arg("-x")
        .arg(&deb)
        .arg(&root)
        .status()
        .unwrap();
    assert!(st.success(), "dpkg -x {} failed", deb.display());
    let bb = root.join("bin/busybox");
    let file = text(&Command::new("file").arg(&bb).output().unwrap().stdout);
    assert!(file.contains("statically linked"), "{file}");
    Some(bb)
}

/// The test world with `config` and Debian's busybox-static in a temporary folder, or `None`
/// (after [`skip`]) where supervision, the world or the binary is unavailable.
fn busybox_world(test: &str, label: &str, config: &str) -> Option<(Stack, TempDir, PathBuf)> {
    if !can_supervise(test) {
        return None;
    }
    let s = stack(label, config)?;
    let dir = tempfile::tempdir().unwrap();
    let bb = busybox_static(test, dir.path())?;
    Some((s, dir, bb))
}

/// The test world with `config` and the Go program `source` built in a temporary folder, or
/// `None` (after [`skip`]) where supervision, the world or `go` is unavailable.
fn go_world(
    test: &str,
    label: &str,
    config: &str,
    source: &str,
) -> Option<(Stack, TempDir, PathBuf)> {
    if !can_supervise(test) {
        return None;
    }
    let s = stack(label, config)?;
    let dir = tempfile::tempdir().unwrap();
    let bin = go_build(test, dir.path(), source)?;
    Some((s, dir, bin))
}

#[test]
fn static_busybox_wget_by_name() {
    let test = "static_busybox_wget_by_name";
    let Some((s, _dir, bb)) = busybox_world(test, "sup-bb", "") else {
        return;
    };
    let url = format!("http://{}/index.html", zone::V6ONLY);
    let out = supervised(&s, &bb, &["wget", "-q", "-O", "-", &url]);
    assert_eq!(ok(&s, &out, "busybox wget"), INDEX_BODY);

    // `--shim-only` (no supervisor): the same static program cannot see the name or the
    // network, since nothing in `legacy` leads anywhere, so it fails.
    let plain = run_with(&s, &["--shim-only"], &bb, &["wget", "-q", "-O", "-", &url]);
    assert!(
        !plain.status.success(),
        "busybox-static reached {url} with --shim-only: {}",
        text(&plain.stdout)
    );
    assert!(!text(&plain.stdout).contains(INDEX_BODY));

    // `--supervise`, the old spelling of the default, still works.
    let old = run_with(&s, &["--supervise"], &bb, &["wget", "-q", "-O", "-", &url]);
    assert_eq!(ok(&s, &old, "busybox wget (--supervise)"), INDEX_BODY);
}

/// busybox-static's `nc` client to the world's TCP echo server by name: the line comes back.
#[test]
fn static_busybox_nc_client_by_name() {
    let test = "static_busybox_nc_client_by_name";
    let Some((s, _dir, bb)) = busybox_world(test, "sup-bb-nc", "") else {
        return;
    };
    // The shell feeds the line; the connect is the static nc's own.
    let script = format!(
        "printf 'static nc line\\n' | {} nc -w 10 {} {}",
        bb.display(),
        zone::ECHO,
        addr::ECHO_PORT
    );
    let out = supervised(&s, Path::new("/bin/sh"), &["-c", &script]);
    assert_eq!(ok(&s, &out, "busybox nc"), "static nc line\n");
    // Without the supervisor the static nc reaches nothing.
    let plain = run_with(&s, &["--shim-only"], Path::new("/bin/sh"), &["-c", &script]);
    assert!(
        !text(&plain.stdout).contains("static nc line"),
        "busybox-static nc was echoed with --shim-only"
    );
}

/// The socket options a program sets before its connect reach the host's socket under the
/// supervisor too (no preload: it sees no setsockopt, only the socket), and a socket that set
/// none keeps the host's defaults — the process-mode test's probe, unchanged.
#[test]
fn supervisor_carries_socket_options_set_before_connect() {
    let test = "supervisor_carries_socket_options_set_before_connect";
    if !can_supervise(test) {
        return;
    }
    let Some(s) = stack("sup-opts", "") else {
        return;
    };
    let out = run_with(
        &s,
        &["--supervisor-only"],
        Path::new("/usr/bin/python3"),
        &["-c", PY_SOCKET_OPTIONS, zone::ECHO],
    );
    check_socket_options(&ok(&s, &out, "python options --supervisor-only"));
}

#[test]
fn supervisor_only_serves_a_dynamic_program_without_the_preload() {
    let test = "supervisor_only_serves_a_dynamic_program_without_the_preload";
    if !can_supervise(test) {
        return;
    }
    let Some(s) = stack("sup-only", "") else {
        return;
    };
    // curl -4 by name with no LD_PRELOAD: glibc's resolver asks resolv.conf's nameserver over
    // UDP (the supervisor's DNS pair) and its connect is the supervisor's outsourced one.
    let url = format!("http://{}/index.html", zone::V6ONLY);
    let out = run_with(
        &s,
        &["--supervisor-only"],
        Path::new("/bin/sh"),
        &[
            "-c",
            &format!("echo \"preload=$LD_PRELOAD\" >&2; exec curl -4 -sS -m 20 -w '\n%{{remote_ip}}\n' {url}"),
        ],
    );
    let stdout = ok(&s, &out, "curl -4 --supervisor-only");
    assert!(
        text(&out.stderr).contains("preload=\n"),
        "{}",
        text(&out.stderr)
    );
    assert!(stdout.starts_with(INDEX_BODY), "{stdout}");
    let ip: Ipv4Addr = stdout.trim_end().lines().last().unwrap().parse().unwrap();
    let mapped = s.mappings(&["--address", &ip.to_string()]).unwrap();
    assert!(mapped.contains(zone::V6ONLY), "{ip}: {mapped}");
}

#[test]
fn a_second_filter_with_a_listener_falls_back_to_the_preload_in_one_line() {
    let test = "a_second_filter_with_a_listener_falls_back_to_the_preload_in_one_line";
    if !can_supervise(test) {
        return;
    }
    let Some(s) = stack("sup-nested", "") else {
        return;
    };
    // `outsock run` inside `outsock run`: the inner one cannot add a second listener (EBUSY),
    // says so in one line and runs curl with the preload, which needs no supervisor.
    let url = format!("http://{}/index.html", zone::V6ONLY);
    let inner = artefact("outsock").unwrap();
    let host_sock = s.host_sock().display().to_string();
    let shim = artefact("liboutsock.so").unwrap().display().to_string();
    let out = supervised(
        &s,
        &inner,
        &[
            "run", "--socket", &host_sock, "--shim", &shim, "--", "curl", "-4", "-sS", "-m", "20",
            &url,
        ],
    );
    let stdout = ok(&s, &out, "nested outsock run curl -4");
    assert_eq!(stdout, INDEX_BODY);
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("seccomp user notification is unavailable")
            && stderr.contains("preload only"),
        "{stderr}"
    );
}

#[test]
fn static_loopback_connect_stays_local() {
    let test = "static_loopback_connect_stays_local";
    let Some((s, _dir, bb)) = busybox_world(test, "sup-lo", "") else {
        return;
    };
    // A server on `legacy`'s own loopback, which host-server could never reach (it refuses
    // loopback destinations, and lives in another namespace).
    let listener = s
        .world
        .legacy()
        .run(|| TcpListener::bind("127.0.0.1:0").unwrap())
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut c, _) = listener.accept().unwrap();
        let mut req = [0u8; 1024];
        let _ = c.read(&mut req).unwrap();
        c.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 6\r\n\r\nlocal\n")
            .unwrap();
    });
    let url = format!("http://127.0.0.1:{port}/");
    let out = supervised(&s, &bb, &["wget", "-q", "-O", "-", &url]);
    assert_eq!(ok(&s, &out, "busybox wget to loopback"), "local\n");
    server.join().unwrap();
}

const GO_CLIENT: &str = r#"package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"time"
)

func main() {
	host := os.Args[1]
	d := net.Dialer{Timeout: 20 * time.Second}
	if len(os.Args) > 2 && os.Args[2] == "tcp-dns" {
		// Go's own resolver over a stream: DNS over TCP to the resolv.conf nameserver.
		d.Resolver = &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, address string) (net.Conn, error) {
			var nd net.Dialer
			c, err := nd.DialContext(ctx, "tcp4", address)
			if err == nil {
				fmt.Fprintf(os.Stderr, "dns over %s to %s\n", c.RemoteAddr().Network(), c.RemoteAddr())
			}
			return c, err
		}}
	}
	conn, err := d.Dial("tcp4", net.JoinHostPort(host, "80"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "dial:", err)
		os.Exit(2)
	}
	fmt.Fprintf(os.Stderr, "remote %s\nlocal %s\n", conn.RemoteAddr(), conn.LocalAddr())
	fmt.Fprintf(conn, "GET /index.html HTTP/1.0\r\nHost: %s\r\n\r\n", host)
	resp, err := io.ReadAll(conn)
	if err != nil {
		fmt.Fprintln(os.Stderr, "read:", err)
		os.Exit(3)
	}
	fmt.Printf("remote %s\n%s", conn.RemoteAddr(), resp)
}
"#;

/// A raw-syscall client: socket, a non-blocking connect (EINPROGRESS), select for the
/// handshake, a second connect (0: Linux reports the finished connect once) and a third
/// (EISCONN), then getpeername and getsockname, all through Go's `syscall` package.
const RAW_CLIENT: &str = r#"package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"syscall"
)

func main() {
	ips, err := net.DefaultResolver.LookupIP(context.Background(), "ip4", os.Args[1])
	if err != nil || len(ips) == 0 {
		fmt.Fprintln(os.Stderr, "lookup:", err)
		os.Exit(2)
	}
	var sa syscall.SockaddrInet4
	copy(sa.Addr[:], ips[0].To4())
	sa.Port = 80
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK, 0)
	if err != nil {
		fmt.Fprintln(os.Stderr, "socket:", err)
		os.Exit(3)
	}
	fmt.Printf("first connect: %v\n", syscall.Connect(fd, &sa))
	var w syscall.FdSet
	w.Bits[fd/64] |= 1 << (uint(fd) % 64)
	tv := syscall.Timeval{Sec: 20}
	if _, err := syscall.Select(fd+1, nil, &w, nil, &tv); err != nil {
		fmt.Fprintln(os.Stderr, "select:", err)
		os.Exit(4)
	}
	fmt.Printf("second connect: %v\n", syscall.Connect(fd, &sa))
	fmt.Printf("third connect: %v\n", syscall.Connect(fd, &sa))
	peer, _ := syscall.Getpeername(fd)
	if p, ok := peer.(*syscall.SockaddrInet4); ok {
		fmt.Printf("peer %v:%d (dummy %v)\n", net.IP(p.Addr[:]), p.Port, ips[0])
	} else {
		fmt.Printf("peer not AF_INET: %#v\n", peer)
	}
	local, _ := syscall.Getsockname(fd)
	_, ok := local.(*syscall.SockaddrInet4)
	fmt.Printf("local AF_INET: %v\n", ok)
	req := "GET /index.html HTTP/1.0\r\n\r\n"
	syscall.Write(fd, []byte(req))
	buf := make([]byte, 4096)
	var got []byte
	for {
		n, err := syscall.Read(fd, buf)
		if err == syscall.EAGAIN {
			var r syscall.FdSet
			r.Bits[fd/64] |= 1 << (uint(fd) % 64)
			tv := syscall.Timeval{Sec: 20}
			syscall.Select(fd+1, &r, nil, nil, &tv)
			continue
		}
		if n <= 0 {
			break
		}
		got = append(got, buf[:n]...)
	}
	os.Stdout.Write(got)
}
"#;

#[test]
fn raw_syscalls_see_an_af_inet_socket() {
    let test = "raw_syscalls_see_an_af_inet_socket";
    let Some((s, _dir, bin)) = go_world(test, "sup-raw", "", RAW_CLIENT) else {
        return;
    };
    let out = supervised(&s, &bin, &[zone::V6ONLY]);
    let stdout = ok(&s, &out, "raw-syscall client");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines[0], "first connect: operation now in progress",
        "{stdout}"
    );
    // Connects again on a socket made by the supervisor are the kernel's answers about it, not
    // new connections (those would say EINPROGRESS again).
    assert_eq!(lines[1], "second connect: <nil>", "{stdout}");
    assert_eq!(
        lines[2], "third connect: transport endpoint is already connected",
        "{stdout}"
    );
    let peer = lines[3]
        .strip_prefix("peer ")
        .unwrap_or_else(|| panic!("{stdout}"));
    let (addr, dummy) = peer.split_once(" (dummy ").unwrap();
    assert_eq!(
        addr,
        format!("{}:80", dummy.trim_end_matches(')')),
        "{stdout}"
    );
    assert_eq!(lines[4], "local AF_INET: true", "{stdout}");
    assert!(stdout.ends_with(INDEX_BODY), "{stdout}");
}

/// The Go client built with CGO_ENABLED=0 (a static binary making raw system calls), or
/// `None` after [`skip`].
fn go_client(test: &str, dir: &Path) -> Option<PathBuf> {
    go_build(test, dir, GO_CLIENT)
}

/// `source` built with CGO_ENABLED=0, or `None` after [`skip`].
fn go_build(test: &str, dir: &Path, source: &str) -> Option<PathBuf> {
    let Some(bin) = testworld::programs::build_go(dir, "client", source).unwrap() else {
        skip(
            test,
            "go is not installed (golang-go, scripts/install-deps)",
        );
        return None;
    };
    let file = text(&Command::new("file").arg(&bin).output().unwrap().stdout);
    assert!(file.contains("statically linked"), "{file}");
    Some(bin)
}

#[test]
fn go_client_dials_tcp4_by_name() {
    let test = "go_client_dials_tcp4_by_name";
    let Some((s, _dir, bin)) = go_world(test, "sup-go", "", GO_CLIENT) else {
        return;
    };
    let out = supervised(&s, &bin, &[zone::V6ONLY]);
    let stdout = ok(&s, &out, "go client");
    let first = stdout.lines().next().unwrap();
    // The program sees AF_INET: its peer is the dummy IPv4 that dns-cache gave the name.
    let remote: SocketAddrV4 = first
        .strip_prefix("remote ")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("not an IPv4 peer: {first}\n{}", text(&out.stderr)));
    assert_eq!(remote.port(), 80);
    let mapped = s
        .mappings(&["--address", &remote.ip().to_string()])
        .unwrap();
    assert!(
        mapped.contains(zone::V6ONLY),
        "{remote} is not the dummy of {}: {mapped}",
        zone::V6ONLY
    );
    assert!(stdout.ends_with(INDEX_BODY), "{stdout}");
    assert!(stdout.contains("200 OK"), "{stdout}");
}

/// The static Go client by an IPv6 literal name (`fd00-64--80.ipv6.outsock`): Go's own
/// resolver asks dns-cache, which answers the dummy for the address the name spells.
#[test]
fn go_client_dials_an_ipv6_literal_name() {
    let test = "go_client_dials_an_ipv6_literal_name";
    let Some((s, _dir, bin)) = go_world(test, "sup-go-lit", "", GO_CLIENT) else {
        return;
    };
    let name = outsock_e2e::ipv6_literal_name(addr::HTTP);
    let out = supervised(&s, &bin, &[&name]);
    let stdout = ok(&s, &out, "go client");
    let first = stdout.lines().next().unwrap();
    let remote: SocketAddrV4 = first
        .strip_prefix("remote ")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("not an IPv4 peer: {first}\n{}", text(&out.stderr)));
    let mapped = s
        .mappings(&["--address", &remote.ip().to_string()])
        .unwrap();
    assert!(
        mapped.contains(&addr::HTTP.to_string()),
        "{remote} is not the dummy of {}: {mapped}",
        addr::HTTP
    );
    assert!(stdout.ends_with(INDEX_BODY), "{stdout}");
}

#[test]
fn dynamic_program_still_works_under_the_supervisor() {
    let test = "dynamic_program_still_works_under_the_supervisor";
    if !can_supervise(test) {
        return;
    }
    let Some(s) = stack("sup-dyn", "") else {
        return;
    };
    let url = format!("http://{}/index.html", zone::V6ONLY);
    let out = supervised(
        &s,
        Path::new("curl"),
        &["-4", "-sS", "-m", "20", "-w", "\n%{remote_ip}\n", &url],
    );
    let stdout = ok(&s, &out, "curl -4");
    assert!(stdout.starts_with(INDEX_BODY), "{stdout}");
    let ip = stdout.trim_end().lines().last().unwrap();
    assert!(ip.parse::<std::net::Ipv4Addr>().is_ok(), "{stdout}");
}

#[test]
fn go_resolver_over_tcp() {
    let test = "go_resolver_over_tcp";
    if !can_supervise(test) {
        return;
    }
    let Some(ns) = outsock_supervisor::nameservers(Path::new("/etc/resolv.conf"))
        .first()
        .copied()
    else {
        skip(test, "/etc/resolv.conf names no IPv4 nameserver");
        return;
    };
    let Some(s) = stack("sup-gotcp", "") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let Some(bin) = go_client(test, dir.path()) else {
        return;
    };
    let out = supervised(&s, &bin, &[zone::V6ONLY, "tcp-dns"]);
    let stdout = ok(&s, &out, "go client, DNS over TCP");
    // The program asked its nameserver over TCP, and saw that nameserver as its peer.
    assert!(
        text(&out.stderr).contains(&format!("dns over tcp to {ns}:53")),
        "{}",
        text(&out.stderr)
    );
    assert!(stdout.ends_with(INDEX_BODY), "{stdout}");
}

#[test]
fn host_server_refusal_reaches_the_static_program() {
    let test = "host_server_refusal_reaches_the_static_program";
    if !can_supervise(test) {
        return;
    }
    // host-server refuses the prefix; dns-cache still gives the name a dummy.
    let deny = format!("\n[destinations]\ndeny = [\"{}\"]\n", addr::DENIED_PREFIX);
    let Some(s) = stack("sup-deny", &deny) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let Some(bin) = go_client(test, dir.path()) else {
        return;
    };
    let out = supervised(&s, &bin, &[zone::DENIED_AAAA]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    // EACCES, host-server's answer, as the program's own connect error.
    assert!(
        text(&out.stderr).contains("connect: permission denied"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn sigterm_reaches_the_supervised_program() {
    let test = "sigterm_reaches_the_supervised_program";
    let Some((s, _dir, bb)) = busybox_world(test, "sup-term", "") else {
        return;
    };
    // `ip netns exec` execs outsock, so the child's pid is outsock's.
    let mut child = supervised_command(&s, &["env"], &bb, &["sleep", "30"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let pid = rustix::process::Pid::from_raw(i32::try_from(child.id()).unwrap()).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "outsock run ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    // The program died of the forwarded SIGTERM, and outsock said so as a shell would.
    assert_eq!(status.code(), Some(128 + 15), "{status}");
}

/// A resolver as musl's sends: an unconnected UDP socket, `sendto` the resolv.conf nameserver,
/// `recvfrom` checking where the answer came from.
const SENDTO_CLIENT: &str = r#"package main

import (
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"
)

func nameserver() [4]byte {
	data, _ := os.ReadFile("/etc/resolv.conf")
	for _, l := range strings.Split(string(data), "\n") {
		f := strings.Fields(l)
		if len(f) >= 2 && f[0] == "nameserver" {
			if ip := net.ParseIP(f[1]).To4(); ip != nil {
				var a [4]byte
				copy(a[:], ip)
				return a
			}
		}
	}
	fmt.Fprintln(os.Stderr, "no IPv4 nameserver")
	os.Exit(2)
	return [4]byte{}
}

func main() {
	ns := nameserver()
	q := []byte{0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0}
	for _, label := range strings.Split(os.Args[1], ".") {
		q = append(q, byte(len(label)))
		q = append(q, label...)
	}
	q = append(q, 0, 0, 1, 0, 1)
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_DGRAM, 0)
	if err != nil {
		fmt.Fprintln(os.Stderr, "socket:", err)
		os.Exit(3)
	}
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{}); err != nil {
		fmt.Fprintln(os.Stderr, "bind:", err)
		os.Exit(3)
	}
	if err := syscall.Sendto(fd, q, 0, &syscall.SockaddrInet4{Port: 53, Addr: ns}); err != nil {
		fmt.Fprintln(os.Stderr, "sendto:", err)
		os.Exit(4)
	}
	buf := make([]byte, 1500)
	n, from, err := syscall.Recvfrom(fd, buf, 0)
	if err != nil {
		fmt.Fprintln(os.Stderr, "recvfrom:", err)
		os.Exit(5)
	}
	f, ok := from.(*syscall.SockaddrInet4)
	if !ok {
		fmt.Printf("from not AF_INET: %#v\n", from)
		os.Exit(6)
	}
	fmt.Printf("from %v:%d\n", net.IP(f.Addr[:]), f.Port)
	fmt.Printf("id %#x answers %d\n", binary.BigEndian.Uint16(buf[0:2]), binary.BigEndian.Uint16(buf[6:8]))
	// The one A record's address ends the answer.
	fmt.Printf("a %v\n", net.IP(buf[n-4:n]))
}
"#;

#[test]
fn unconnected_sendto_a_nameserver_is_answered_by_the_guest_dns() {
    let test = "unconnected_sendto_a_nameserver_is_answered_by_the_guest_dns";
    if !can_supervise(test) {
        return;
    }
    let Some(ns) = outsock_supervisor::nameservers(Path::new("/etc/resolv.conf"))
        .first()
        .copied()
    else {
        skip(test, "/etc/resolv.conf names no IPv4 nameserver");
        return;
    };
    let Some(s) = stack("sup-sendto", "") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let Some(bin) = go_build(test, dir.path(), SENDTO_CLIENT) else {
        return;
    };
    let out = supervised(&s, &bin, &[zone::V6ONLY]);
    let stdout = ok(&s, &out, "sendto client");
    let lines: Vec<&str> = stdout.lines().collect();
    // The answer seems to come from the nameserver the program asked, as resolvers check.
    assert_eq!(lines[0], format!("from {ns}:53"), "{stdout}");
    assert_eq!(lines[1], "id 0x1234 answers 1", "{stdout}");
    let a = lines[2].strip_prefix("a ").unwrap();
    let mapped = s.mappings(&["--address", a]).unwrap();
    assert!(mapped.contains(zone::V6ONLY), "{a}: {mapped}");
}

#[test]
fn descendants_stay_supervised_after_the_program_exits() {
    let test = "descendants_stay_supervised_after_the_program_exits";
    let Some((s, _dir, bb)) = busybox_world(test, "sup-desc", "") else {
        return;
    };
    // The shell exits at once; its background child fetches a second later, when the
    // supervisor's own child is long gone (it used to stop then: ENOSYS for the orphan).
    let url = format!("http://{}/index.html", zone::V6ONLY);
    let bb_path = bb.display().to_string();
    let script = format!("({bb_path} sleep 1; {bb_path} wget -q -O - {url}) &");
    let started = Instant::now();
    let out = supervised(&s, &bb, &["sh", "-c", &script]);
    assert_eq!(ok(&s, &out, "sh with a background wget"), INDEX_BODY);
    // outsock served until the orphan was done, and returned the shell's status (0).
    assert!(started.elapsed() >= Duration::from_secs(1));
}

/// host-server may listen on these guest ports in the listener tests.
const PORTS: &str = "[listen]\nallowed_ports = [8080, 8081, 8082]\n";

/// Asks `child` (a `timeout` wrapping outsock: it passes SIGTERM on) to stop, and waits.
fn stop(child: Child) -> Output {
    let pid = rustix::process::Pid::from_raw(i32::try_from(child.id()).unwrap()).unwrap();
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    child.wait_with_output().unwrap()
}

/// A prefork server in raw system calls: the parent makes an AF_INET listener (socket, bind
/// 0.0.0.0:8080, listen, getsockname) and starts two children that inherit it as fd 3 and
/// accept on it (blocking `accept4` with SOCK_CLOEXEC), each connection answered with its
/// line, the peer accept wrote and whether getpeername agrees. The parent interrupts the
/// children's blocking accepts with SIGUSR1 every few milliseconds (restarted calls: a stale
/// wait must never take a connection), and on SIGTERM kills them and exits.
const PREFORK_SERVER: &str = r#"package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func inet4(sa syscall.Sockaddr) string {
	if p, ok := sa.(*syscall.SockaddrInet4); ok {
		return fmt.Sprintf("%v:%d", net.IP(p.Addr[:]), p.Port)
	}
	return fmt.Sprintf("not AF_INET: %#v", sa)
}

func serve(fd int, who string) {
	signal.Ignore(syscall.SIGPIPE)
	for {
		nfd, sa, err := syscall.Accept4(fd, syscall.SOCK_CLOEXEC)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, who, "accept:", err)
			os.Exit(3)
		}
		peer := inet4(sa)
		gp, _ := syscall.Getpeername(nfd)
		f := os.NewFile(uintptr(nfd), "conn")
		line, _ := bufio.NewReader(f).ReadString('\n')
		fmt.Fprintf(f, "%s got %q from %s getpeername-agrees %v\n", who, line, peer, inet4(gp) == peer)
		f.Close()
	}
}

func main() {
	if len(os.Args) > 1 {
		serve(3, os.Args[1])
	}
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		fmt.Fprintln(os.Stderr, "socket:", err)
		os.Exit(2)
	}
	syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1)
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Port: 8080}); err != nil {
		fmt.Fprintln(os.Stderr, "bind:", err)
		os.Exit(2)
	}
	if err := syscall.Listen(fd, 16); err != nil {
		fmt.Fprintln(os.Stderr, "listen:", err)
		os.Exit(2)
	}
	local, _ := syscall.Getsockname(fd)
	fmt.Printf("listening %s\n", inet4(local))
	l := os.NewFile(uintptr(fd), "listener")
	var kids []*os.Process
	for _, name := range []string{"child-1", "child-2"} {
		p, err := os.StartProcess("/proc/self/exe", []string{os.Args[0], name},
			&os.ProcAttr{Files: []*os.File{os.Stdin, os.Stdout, os.Stderr, l}})
		if err != nil {
			fmt.Fprintln(os.Stderr, "start:", err)
			os.Exit(2)
		}
		kids = append(kids, p)
	}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM)
	tick := time.NewTicker(5 * time.Millisecond)
	for {
		select {
		case <-stop:
			for _, k := range kids {
				k.Kill()
				k.Wait()
			}
			return
		case <-tick.C:
			for _, k := range kids {
				k.Signal(syscall.SIGUSR1)
			}
		}
	}
}
"#;

#[test]
fn prefork_children_accept_each_connection_once() {
    let test = "prefork_children_accept_each_connection_once";
    let Some((s, _dir, bin)) = go_world(test, "sup-fork", PORTS, PREFORK_SERVER) else {
        return;
    };
    let mut server = supervised_command(&s, &["timeout", "90"], &bin, &[]);
    server.stdout(Stdio::piped()).stderr(Stdio::piped());
    let server = server.spawn().unwrap();
    wait_listening(&s, 8080, true);
    const CLIENTS: usize = 12;
    let replies = s
        .world
        .world()
        .run(|| {
            let clients: Vec<_> = (0..CLIENTS)
                .map(|i| {
                    std::thread::spawn(move || {
                        let mut c = connect_from_client(8080);
                        c.write_all(format!("hello {i}\n").as_bytes()).unwrap();
                        let mut back = Vec::new();
                        c.read_to_end(&mut back).unwrap();
                        text(&back)
                    })
                })
                .collect();
            clients
                .into_iter()
                .map(|c| c.join().unwrap())
                .collect::<Vec<_>>()
        })
        .unwrap();
    let out = stop(server);
    println!(
        "prefork: {}\n{}\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    assert_eq!(
        text(&out.stdout).lines().next(),
        Some("listening 0.0.0.0:8080")
    );
    println!("{replies:#?}");
    let mut peer = None;
    for (i, r) in replies.iter().enumerate() {
        // Exactly one child answered each connection, with the client's own line.
        let (who, rest) = r
            .split_once(" got ")
            .unwrap_or_else(|| panic!("client {i}: {r:?}\n{}", text(&out.stderr)));
        assert!(who == "child-1" || who == "child-2", "client {i}: {r}");
        let want = format!("\"hello {i}\\n\" from ");
        assert!(rest.starts_with(&want), "client {i}: {r}");
        assert!(
            r.trim_end().ends_with("getpeername-agrees true"),
            "client {i}: {r}"
        );
        let addr: SocketAddrV4 = rest[want.len()..]
            .split_whitespace()
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("client {i}: {r}"));
        peer = Some(*addr.ip());
    }
    assert_client_dummy(&s, peer.unwrap());
}

/// busybox-static `httpd -f -vv -p LISTEN` under the supervisor serves `body` (a page in
/// `dir`) to a world client on port 8081; returns httpd's log once it is stopped.
fn httpd_serves(s: &Stack, dir: &Path, bb: &Path, listen: &str, body: &str) -> String {
    let www = dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("page.txt"), body).unwrap();
    let www = www.display().to_string();
    let mut server = supervised_command(
        s,
        &["timeout", "60"],
        bb,
        &["httpd", "-f", "-vv", "-p", listen, "-h", &www],
    );
    server.stdout(Stdio::piped()).stderr(Stdio::piped());
    let server = server.spawn().unwrap();
    wait_listening(s, 8081, true);
    let page = world_request(s, 8081, b"GET /page.txt HTTP/1.0\r\n\r\n");
    assert!(page.contains("200 OK"), "{page}");
    assert!(page.ends_with(body), "{page}");
    let log = text(&stop(server).stderr);
    println!("httpd log: {log}");
    log
}

#[test]
fn static_httpd_serves_an_ipv6_client_and_logs_its_dummy() {
    let test = "static_httpd_serves_an_ipv6_client_and_logs_its_dummy";
    let Some((s, dir, bb)) = busybox_world(test, "sup-httpd", PORTS) else {
        return;
    };
    // An AF_INET listener (`-p PORT` alone makes a dual-stack AF_INET6 one: see
    // static_httpd_on_a_port_alone_serves_a_world_client_v4_mapped).
    let log = httpd_serves(
        &s,
        dir.path(),
        &bb,
        "0.0.0.0:8081",
        "static busybox httpd\n",
    );
    // Each log line starts with the peer, `IP:PORT:`; it is the client's source-pool dummy.
    let peer: SocketAddrV4 = log
        .lines()
        .find_map(|l| {
            l.split_whitespace()
                .next()?
                .trim_end_matches(':')
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no peer in the log: {log}"));
    assert_client_dummy(&s, *peer.ip());
}

/// A Go server (CGO_ENABLED=0: raw accept4 on a non-blocking listener, epoll) on
/// `net.Listen("tcp4", ":8082")`, answering one request with the peer it saw.
const GO_SERVER: &str = r#"package main

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"time"
)

func main() {
	l, err := net.Listen("tcp4", ":8082")
	if err != nil {
		fmt.Fprintln(os.Stderr, "listen:", err)
		os.Exit(2)
	}
	fmt.Printf("listening %s\n", l.Addr())
	done := make(chan string, 1)
	go http.Serve(l, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "remote %s\n", r.RemoteAddr)
		local := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
		select {
		case done <- fmt.Sprintf("%s local %s", r.RemoteAddr, local):
		default:
		}
	}))
	fmt.Printf("served %s\n", <-done)
	time.Sleep(500 * time.Millisecond)
}
"#;

#[test]
fn go_server_sees_the_ipv6_clients_dummy() {
    let test = "go_server_sees_the_ipv6_clients_dummy";
    let Some((s, _dir, bin)) = go_world(test, "sup-gosrv", PORTS, GO_SERVER) else {
        return;
    };
    let mut server = supervised_command(&s, &["timeout", "60"], &bin, &[]);
    server.stdout(Stdio::piped()).stderr(Stdio::piped());
    let server = server.spawn().unwrap();
    wait_listening(&s, 8082, true);
    let answer = world_request(&s, 8082, b"GET / HTTP/1.0\r\n\r\n");
    let out = server.wait_with_output().unwrap();
    let stdout = ok(&s, &out, "go server");
    assert!(answer.contains("200 OK"), "{answer}");
    let remote: SocketAddrV4 = answer
        .lines()
        .last()
        .and_then(|l| l.strip_prefix("remote "))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no IPv4 remote in {answer}"));
    assert_client_dummy(&s, *remote.ip());
    let lines: Vec<&str> = stdout.lines().collect();
    // getsockname on the listener: the AF_INET address it bound.
    assert_eq!(lines[0], "listening 0.0.0.0:8082", "{stdout}");
    // The accepted connection's view is AF_INET both ways (getpeername, getsockname).
    let served = lines[1]
        .strip_prefix("served ")
        .unwrap_or_else(|| panic!("{stdout}"));
    let (peer, local) = served.split_once(" local ").unwrap();
    assert_eq!(peer, remote.to_string(), "{stdout}");
    assert!(local.parse::<SocketAddrV4>().is_ok(), "{stdout}");
}

/// A static C server in plain libc calls: getsockname on the listener, a blocking accept that
/// a signal without SA_RESTART interrupts, a non-blocking accept with nothing waiting, a second
/// listen, poll for readiness, accept4 with SOCK_NONBLOCK|SOCK_CLOEXEC, getpeername.
const C_SERVER: &str = r#"
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void on_alarm(int sig) { (void)sig; }

int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(8080) };
    if (bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 8)) {
        perror("bind/listen");
        return 2;
    }
    struct sockaddr_in got;
    socklen_t len = sizeof got;
    getsockname(l, (struct sockaddr *)&got, &len);
    printf("listening %s:%d family %d\n", inet_ntoa(got.sin_addr), ntohs(got.sin_port), got.sin_family);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm;
    sigaction(SIGALRM, &sa, NULL);
    alarm(1);
    int r = accept(l, NULL, NULL);
    printf("interrupted accept: %d %s\n", r, r < 0 ? strerror(errno) : "");
    fcntl(l, F_SETFL, fcntl(l, F_GETFL) | O_NONBLOCK);
    r = accept4(l, NULL, NULL, SOCK_NONBLOCK);
    printf("non-blocking accept: %d %s\n", r, r < 0 ? strerror(errno) : "");
    printf("listen again: %d\n", listen(l, 16));
    printf("ready\n");
    struct pollfd p = { .fd = l, .events = POLLIN };
    r = poll(&p, 1, 20000);
    printf("poll: %d readable %d\n", r, !!(p.revents & POLLIN));
    struct sockaddr_in peer;
    len = sizeof peer;
    int c = accept4(l, (struct sockaddr *)&peer, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (c < 0) {
        perror("accept4");
        return 3;
    }
    printf("accepted %s:%d len %d nonblock %d cloexec %d\n", inet_ntoa(peer.sin_addr),
           ntohs(peer.sin_port), (int)len, !!(fcntl(c, F_GETFL) & O_NONBLOCK),
           !!(fcntl(c, F_GETFD) & FD_CLOEXEC));
    struct sockaddr_in gp;
    len = sizeof gp;
    getpeername(c, (struct sockaddr *)&gp, &len);
    printf("getpeername %s:%d family %d\n", inet_ntoa(gp.sin_addr), ntohs(gp.sin_port), gp.sin_family);
    fcntl(c, F_SETFL, 0);
    const char msg[] = "hello from a static C server\n";
    if (write(c, msg, sizeof msg - 1) < 0) {
        perror("write");
        return 4;
    }
    close(c);
    return 0;
}
"#;

#[test]
fn static_c_server_accept_semantics() {
    let test = "static_c_server_accept_semantics";
    if !can_supervise(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("server.c"), C_SERVER).unwrap();
    let bin = dir.path().join("server");
    let built = Command::new("cc")
        .args(["-static", "-O1", "-o"])
        .arg(&bin)
        .arg(dir.path().join("server.c"))
        .output();
    match built {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!("cc -static: {}", text(&o.stderr)),
        Err(e) => {
            skip(test, &format!("no C compiler: {e}"));
            return;
        }
    }
    let Some(s) = stack("sup-csrv", PORTS) else {
        return;
    };
    let mut server = supervised_command(&s, &["timeout", "60"], &bin, &[]);
    server.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut server = server.spawn().unwrap();
    let mut stdout = std::io::BufReader::new(server.stdout.take().unwrap());
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if std::io::BufRead::read_line(&mut stdout, &mut line).unwrap() == 0 {
            break;
        }
        let ready = line == "ready\n";
        lines.push(line);
        if ready {
            break;
        }
    }
    assert_eq!(
        lines.last().map(String::as_str),
        Some("ready\n"),
        "{lines:?}\n{}",
        s.logs()
    );
    let answer = world_request(&s, 8080, b"");
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    let out = server.wait_with_output().unwrap();
    println!("{lines:?}\n{rest}\n{}", text(&out.stderr));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(answer, "hello from a static C server\n");
    assert_eq!(lines[0], "listening 0.0.0.0:8080 family 2\n");
    // The signal ends the supervised wait as it ends a native one.
    assert_eq!(lines[1], "interrupted accept: -1 Interrupted system call\n");
    assert_eq!(
        lines[2],
        "non-blocking accept: -1 Resource temporarily unavailable\n"
    );
    assert_eq!(lines[3], "listen again: 0\n");
    let rest: Vec<&str> = rest.lines().collect();
    assert_eq!(rest[0], "poll: 1 readable 1", "{rest:?}");
    let accepted = rest[1]
        .strip_prefix("accepted ")
        .unwrap_or_else(|| panic!("{rest:?}"));
    let (peer, flags) = accepted.split_once(' ').unwrap();
    assert_eq!(flags, "len 16 nonblock 1 cloexec 1", "{rest:?}");
    assert_eq!(rest[2], format!("getpeername {peer} family 2"), "{rest:?}");
    let peer: SocketAddrV4 = peer.parse().unwrap();
    assert_client_dummy(&s, *peer.ip());
}

/// `net.Listen("tcp4", ARG)`: prints the listener's address or the error.
const GO_LISTEN: &str = r#"package main

import (
	"fmt"
	"net"
	"os"
)

func main() {
	l, err := net.Listen("tcp4", os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	fmt.Println(l.Addr())
}
"#;

#[test]
fn a_port_host_server_does_not_allow_is_eacces() {
    let test = "a_port_host_server_does_not_allow_is_eacces";
    let Some((s, _dir, bin)) = go_world(test, "sup-lport", PORTS, GO_LISTEN) else {
        return;
    };
    // 8089 is not in allowed_ports: host-server's EACCES is the program's listen error.
    let out = supervised(&s, &bin, &[":8089"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("listen: permission denied"),
        "{}",
        text(&out.stderr)
    );
    // An allowed one listens (and closes again at exit).
    let out = supervised(&s, &bin, &[":8080"]);
    assert_eq!(ok(&s, &out, "listen on 8080"), "0.0.0.0:8080\n");
}

#[test]
fn sigterm_ends_the_supervisor_once_the_program_is_gone() {
    let test = "sigterm_ends_the_supervisor_once_the_program_is_gone";
    let Some((s, _dir, bb)) = busybox_world(test, "sup-term2", "") else {
        return;
    };
    // The shell exits at once; its background sleep keeps the supervisor serving.
    let script = format!("{} sleep 5 >/dev/null 2>&1 &", bb.display());
    let mut child = supervised_command(&s, &["env"], &bb, &["sh", "-c", &script])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        child.try_wait().unwrap().is_none(),
        "outsock did not wait for the background sleep"
    );
    let pid = rustix::process::Pid::from_raw(i32::try_from(child.id()).unwrap()).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "outsock run ignored SIGTERM with only descendants left"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(128 + 15), "{status}");
}

#[test]
fn a_daemonized_static_httpd_stays_served() {
    let test = "a_daemonized_static_httpd_stays_served";
    let Some((s, dir, bb)) = busybox_world(test, "sup-daemon", PORTS) else {
        return;
    };
    let www = dir.path().join("www-daemon");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("page.txt"), "daemonized busybox httpd\n").unwrap();
    let www = www.display().to_string();
    // Without -f httpd forks into the background and the program itself exits 0 at once.
    let mut server = supervised_command(
        &s,
        &["env"],
        &bb,
        &["httpd", "-p", "0.0.0.0:8081", "-h", &www],
    );
    let mut server = server
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_listening(&s, 8081, true);
    let page = world_request(&s, 8081, b"GET /page.txt HTTP/1.0\r\n\r\n");
    assert!(page.ends_with("daemonized busybox httpd\n"), "{page}");
    assert!(
        server.try_wait().unwrap().is_none(),
        "outsock stopped serving while the daemon runs"
    );
    // The daemon: the process whose command line names our directory. Once it is gone,
    // outsock returns the program's own status (0).
    let daemons: Vec<i32> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| text(&c).contains(&www) && text(&c).contains("httpd"))
                && i64::from(*pid) != i64::from(server.id())
        })
        .collect();
    assert!(!daemons.is_empty(), "no httpd daemon found");
    for pid in daemons {
        let pid = rustix::process::Pid::from_raw(pid).unwrap();
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = server.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "outsock outlived the daemon");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0), "{status}");
}

/// The IPv4 address in `a`, an `IP:PORT` or `[IP]:PORT` of the peer as a program printed it:
/// it must be v4-mapped (`[::ffff:a.b.c.d]:PORT`), as natively on a dual-stack socket.
fn v4_mapped_peer(a: &str) -> Ipv4Addr {
    let a: std::net::SocketAddrV6 = a
        .parse()
        .unwrap_or_else(|e| panic!("{a:?} is not an IPv6 socket address: {e}"));
    a.ip()
        .to_ipv4_mapped()
        .unwrap_or_else(|| panic!("{a} is not v4-mapped"))
}

#[test]
fn static_nc_listens_dual_stack_and_answers_a_world_client() {
    let test = "static_nc_listens_dual_stack_and_answers_a_world_client";
    let Some((s, _dir, bb)) = busybox_world(test, "sup-ncl", PORTS) else {
        return;
    };
    // `nc -l -p PORT` makes an AF_INET6 socket on [::]:PORT (dual stack); what it reads
    // from the peer goes to stdout, its stdin to the peer.
    let script = format!(
        "echo 'answer from busybox nc' | {} nc -l -p 8080",
        bb.display()
    );
    let mut server = supervised_command(&s, &["timeout", "60"], &bb, &["sh", "-c", &script]);
    server.stdout(Stdio::piped()).stderr(Stdio::piped());
    let server = server.spawn().unwrap();
    wait_listening(&s, 8080, true);
    let reply = s
        .world
        .world()
        .run(|| {
            let mut c = connect_from_client(8080);
            c.write_all(b"line from the world\n").unwrap();
            let mut r = std::io::BufReader::new(c);
            let mut line = String::new();
            std::io::BufRead::read_line(&mut r, &mut line).unwrap();
            line
        })
        .unwrap();
    let out = server.wait_with_output().unwrap();
    let got = ok(&s, &out, "nc -l");
    assert_eq!(reply, "answer from busybox nc\n");
    assert_eq!(got, "line from the world\n");
}

#[test]
fn static_httpd_on_a_port_alone_serves_a_world_client_v4_mapped() {
    let test = "static_httpd_on_a_port_alone_serves_a_world_client_v4_mapped";
    let Some((s, dir, bb)) = busybox_world(test, "sup-httpd6", PORTS) else {
        return;
    };
    // `-p PORT` alone: an AF_INET6 listener on [::]:PORT.
    let log = httpd_serves(&s, dir.path(), &bb, "8081", "dual-stack busybox httpd\n");
    // Each log line starts with the peer: the client's dummy, v4-mapped.
    let peer = log
        .lines()
        .find_map(|l| {
            let first = l.split_whitespace().next()?.trim_end_matches(':');
            first.starts_with('[').then(|| first.to_owned())
        })
        .unwrap_or_else(|| panic!("no IPv6 peer in the log: {log}"));
    assert_client_dummy(&s, v4_mapped_peer(&peer));
}

/// `server MODE PORT` in plain libc calls: an AF_INET6 listener on `[::]:PORT` with
/// IPV6_V6ONLY off (`dual`) or on (`v6only`), on `[::1]:PORT` (`loopback`), or on the
/// v4-mapped `[::ffff:192.0.2.1]:PORT` (`mapped`: an address `legacy` does not have); prints its
/// getsockname, then accepts one connection and prints what accept, getpeername (also into a
/// sockaddr_in's 16 bytes) and getsockname say, and answers its line.
const C_SERVER6: &str = r#"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void show(const char *what, struct sockaddr_in6 *a, socklen_t len) {
    char ip[INET6_ADDRSTRLEN] = "?";
    inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof ip);
    printf("%s [%s]:%d family %d len %d\n", what, ip, ntohs(a->sin6_port), a->sin6_family, (int)len);
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IONBF, 0);
    if (argc != 3) return 1;
    int one = 1, off = 0;
    int l = socket(AF_INET6, SOCK_STREAM, 0);
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(l, IPPROTO_IPV6, IPV6_V6ONLY, strcmp(argv[1], "v6only") ? &off : &one, sizeof one);
    struct sockaddr_in6 a = { .sin6_family = AF_INET6, .sin6_port = htons(atoi(argv[2])) };
    a.sin6_addr = strcmp(argv[1], "loopback") ? in6addr_any : in6addr_loopback;
    if (!strcmp(argv[1], "mapped")) inet_pton(AF_INET6, "::ffff:192.0.2.1", &a.sin6_addr);
    if (bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 8)) {
        perror("bind/listen");
        return 2;
    }
    struct sockaddr_in6 got;
    socklen_t len = sizeof got;
    getsockname(l, (struct sockaddr *)&got, &len);
    show("listening", &got, len);
    len = sizeof got;
    int c = accept(l, (struct sockaddr *)&got, &len);
    if (c < 0) {
        perror("accept");
        return 3;
    }
    show("accepted", &got, len);
    len = sizeof got;
    getpeername(c, (struct sockaddr *)&got, &len);
    show("getpeername", &got, len);
    struct sockaddr_in6 short_;
    memset(&short_, 0, sizeof short_);
    len = 16;
    getpeername(c, (struct sockaddr *)&short_, &len);
    printf("short getpeername len %d port %d zero tail %d\n", (int)len, ntohs(short_.sin6_port),
           short_.sin6_addr.s6_addr[8] == 0 && short_.sin6_addr.s6_addr[15] == 0);
    len = sizeof got;
    getsockname(c, (struct sockaddr *)&got, &len);
    show("getsockname", &got, len);
    char line[128] = "";
    ssize_t n = read(c, line, sizeof line - 1);
    char reply[160];
    int m = snprintf(reply, sizeof reply, "echo: %.*s", n > 0 ? (int)n : 0, line);
    if (write(c, reply, m) < 0) return 4;
    close(c);
    return 0;
}
"#;

/// [`C_SERVER6`] built (dynamically linked) into `dir`, or `None` after [`skip`].
fn c_server6(test: &str, dir: &Path) -> Option<PathBuf> {
    match testworld::programs::build_c(dir, "server6", &[C_SERVER6]) {
        Ok(b) => Some(b),
        Err(e) => {
            skip(test, &format!("no C compiler: {e:#}"));
            None
        }
    }
}

/// Starts `outsock run -- server MODE PORT` and returns it with its first line (what it
/// listens on).
fn start_server6(s: &Stack, bin: &Path, mode: &str, port: u16) -> (Child, String) {
    let port = port.to_string();
    let mut server = supervised_command(s, &["timeout", "60"], bin, &[mode, &port]);
    server.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut server = server.spawn().unwrap();
    let mut stdout = std::io::BufReader::new(server.stdout.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut first).unwrap();
    // The rest of its output, for wait_with_output.
    server.stdout = Some(stdout.into_inner());
    (server, first)
}

#[test]
fn dynamic_dual_stack_listener_under_the_default_run() {
    let test = "dynamic_dual_stack_listener_under_the_default_run";
    if !can_supervise(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(bin) = c_server6(test, dir.path()) else {
        return;
    };
    let Some(s) = stack("sup-dual6", PORTS) else {
        return;
    };
    // liboutsock leaves AF_INET6 to the kernel, so the supervisor outsources the listen.
    let (server, first) = start_server6(&s, &bin, "dual", 8082);
    assert_eq!(
        first,
        "listening [::]:8082 family 10 len 28\n",
        "{}",
        s.logs()
    );
    wait_listening(&s, 8082, true);
    let answer = world_request(&s, 8082, b"hi dual stack\n");
    let out = server.wait_with_output().unwrap();
    let stdout = ok(&s, &out, "server6 dual");
    println!("{stdout}");
    assert_eq!(answer, "echo: hi dual stack\n");
    let lines: Vec<&str> = stdout.lines().collect();
    let field = |i: usize, what: &str| -> String {
        let l = lines.get(i).copied().unwrap_or("");
        let rest = l
            .strip_prefix(what)
            .unwrap_or_else(|| panic!("line {i} {l:?} is not {what}: {stdout}"));
        assert!(rest.ends_with(" family 10 len 28"), "{l}");
        rest.split_whitespace().next().unwrap().to_owned()
    };
    // accept and getpeername agree: the client's dummy, v4-mapped, once (no double mapping).
    let peer = field(0, "accepted ");
    assert_eq!(field(1, "getpeername "), peer, "{stdout}");
    let port: u16 = peer.rsplit(':').next().unwrap().parse().unwrap();
    // Truncated to 16 bytes as the kernel truncates, the full length reported.
    assert_eq!(
        lines[2],
        format!("short getpeername len 28 port {port} zero tail 1")
    );
    let local = field(3, "getsockname ");
    assert!(
        local.starts_with("[::ffff:") && local.ends_with("]:8082"),
        "{local}"
    );
    assert_client_dummy(&s, v4_mapped_peer(&peer));

    // Bound to a v4-mapped address `legacy` does not have (natively EADDRNOTAVAIL): recorded
    // as an AF_INET bind is, outsourced at listen, named as it was bound.
    let (server, first) = start_server6(&s, &bin, "mapped", 8080);
    assert_eq!(
        first,
        "listening [::ffff:192.0.2.1]:8080 family 10 len 28\n",
        "{}",
        s.logs()
    );
    wait_listening(&s, 8080, true);
    let answer = world_request(&s, 8080, b"hi mapped\n");
    let out = server.wait_with_output().unwrap();
    let stdout = ok(&s, &out, "server6 mapped");
    assert_eq!(answer, "echo: hi mapped\n");
    let peer = stdout.lines().next().unwrap_or("");
    assert!(peer.starts_with("accepted [::ffff:"), "{stdout}");
}

#[test]
fn v6only_and_loopback_ipv6_listeners_stay_local() {
    let test = "v6only_and_loopback_ipv6_listeners_stay_local";
    if !can_supervise(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(bin) = c_server6(test, dir.path()) else {
        return;
    };
    let Some(s) = stack("sup-v6only", PORTS) else {
        return;
    };
    for (mode, port) in [("v6only", 8080), ("loopback", 8081)] {
        let (server, first) = start_server6(&s, &bin, mode, port);
        let bound = if mode == "loopback" { "::1" } else { "::" };
        assert_eq!(
            first,
            format!("listening [{bound}]:{port} family 10 len 28\n"),
            "{mode}: {}",
            s.logs()
        );
        // host-server does not listen for it; a world client is refused.
        wait_listening(&s, port, false);
        let from_world = s
            .world
            .world()
            .run(move || {
                std::net::TcpStream::connect_timeout(
                    &std::net::SocketAddr::new(addr::HOST.into(), port),
                    Duration::from_secs(2),
                )
                .map(|_| ())
                .map_err(|e| e.kind())
            })
            .unwrap();
        assert!(from_world.is_err(), "{mode}: the world reached it");
        // Inside the legacy namespace it is the kernel's own listener.
        let answer = s
            .world
            .legacy()
            .run(move || {
                let mut c = std::net::TcpStream::connect(("::1", port)).unwrap();
                c.write_all(b"hi local\n").unwrap();
                let mut back = String::new();
                c.read_to_string(&mut back).unwrap();
                back
            })
            .unwrap();
        let out = server.wait_with_output().unwrap();
        let stdout = ok(&s, &out, mode);
        println!("{mode}: {stdout}");
        assert_eq!(answer, "echo: hi local\n", "{mode}");
        // The peer is the kernel's ::1, not a dummy.
        assert!(stdout.starts_with("accepted [::1]:"), "{mode}: {stdout}");
    }
}
