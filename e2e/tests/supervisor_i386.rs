//! The i386 ABI under `outsock run` (by default, and `--supervisor-only`): a legacy 32-bit
//! program — a C program built here with `cc -m32` (gcc-multilib), static and dynamic — makes
//! its socket calls as i386 system calls, by the direct socket calls of Linux >= 4.3 or
//! through `socketcall(2)` (by hand, and as Debian's i386 glibc makes every socket function,
//! as old binaries do), and a 64-bit static program makes them through `int $0x80`. They run
//! unmodified in the test world's `legacy` namespace (nothing but `lo`: a call not
//! outsourced fails instead of leaking).
//!
//! - A dynamic 32-bit program is run without the (64-bit) preload, which ld.so would refuse
//!   with an error line: the supervisor alone serves it.
//! - A client resolves the IPv6-only server's name by its own query to the guest DNS address
//!   (sendto/recvfrom with an address: the answer from 10.170.160.1:53) and fetches a page from
//!   the dummy it got, seeing that dummy as its peer (getpeername) and an AF_INET local name.
//! - A server (bind 0.0.0.0:8080, listen, getsockname, accept, getpeername) listens through
//!   host-server and is reached by an IPv6 world client, seen as its source-pool dummy.
//! - A UDP server (bind, getsockname, recvfrom, sendto) answers a world client, which it sees
//!   as its dummy and which hears the answer from the host's address.
//! - Bad pointers (socketcall's argument array, a connect's address) are EFAULT, as natively.
//! - Nothing escapes: under `--shim-only` (no supervisor) the same connect to the dummy is
//!   "Network is unreachable", and under the supervisor a connect to an unmapped dummy is
//!   host-server's "No route to host", not the kernel's answer.
//!
//! Where the machine cannot build or run i386 programs (no gcc-multilib, a kernel without IA32
//! emulation) the tests say so and skip (fail under CI).

// Test code throughout; helpers outside #[test] functions unwrap too.
#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use outsock_e2e::{
    assert_client_dummy, ok, outsock_run, skip, stack, text, wait_listening, wait_udp_bound,
    world_request, world_udp_ping,
};
use tempfile::TempDir;
use testworld::stack::{Stack, GUEST_DNS};
use testworld::{addr, zone, INDEX_BODY};

/// The legacy program (see its comment): `probe`, `client MODE NAMESERVER NAME|ADDRESS`,
/// `server MODE PORT`, `udp-server MODE PORT`, `fault MODE`.
const C_I386: &str = r#"
/* A legacy program in the i386 ABI: `probe`, `client MODE NAMESERVER NAME|ADDRESS`,
 * `server MODE PORT`, `udp-server MODE PORT` and `fault MODE`, whose socket calls are i386
 * system calls: MODE `direct` (the direct socket calls of Linux >= 4.3, made by hand),
 * `socketcall` (socketcall(2) by hand, what old binaries make), `libc` (glibc's functions,
 * which make socketcall on Debian: its i386 glibc is built for older kernels) or, built for
 * x86_64, `int80` (socketcall through `int $0x80` from a 64-bit program). Every buffer is
 * static: below 4 GiB in a static binary, so a 32-bit pointer reaches it from either build
 * (and from the dynamic i386 one). */
#include <arpa/inet.h>
#include <errno.h>
#include <linux/net.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

enum {
    NR_SOCKETCALL = 102, NR_SOCKET = 359, NR_BIND = 361, NR_CONNECT = 362, NR_LISTEN = 363,
    NR_ACCEPT4 = 364, NR_SETSOCKOPT = 366, NR_GETSOCKNAME = 367, NR_GETPEERNAME = 368,
    NR_SENDTO = 369, NR_RECVFROM = 371,
};

static int direct, libc;

/* One i386 system call; -errno on failure, as the kernel answers. */
static long sys32(long nr, long a, long b, long c, long d, long e, long f) {
#ifdef __x86_64__
    long r;
    (void)f;
    __asm__ volatile("int $0x80"
                     : "=a"(r)
                     : "a"(nr), "b"(a), "c"(b), "d"(c), "S"(d), "D"(e)
                     : "memory");
    return r;
#else
    long r = syscall(nr, a, b, c, d, e, f);
    return r == -1 ? -errno : r;
#endif
}

static uint32_t args[6];

/* glibc's function for socket call `call`; -errno on failure. */
static long by_libc(int call, long a, long b, long c, long d, long e, long f) {
    long r = -1;
    switch (call) {
    case SYS_SOCKET: r = socket(a, b, c); break;
    case SYS_BIND: r = bind(a, (void *)b, c); break;
    case SYS_CONNECT: r = connect(a, (void *)b, c); break;
    case SYS_LISTEN: r = listen(a, b); break;
    case SYS_ACCEPT: r = accept(a, (void *)b, (void *)c); break;
    case SYS_GETSOCKNAME: r = getsockname(a, (void *)b, (void *)c); break;
    case SYS_GETPEERNAME: r = getpeername(a, (void *)b, (void *)c); break;
    case SYS_SENDTO: r = sendto(a, (void *)b, c, d, (void *)e, f); break;
    case SYS_RECVFROM: r = recvfrom(a, (void *)b, c, d, (void *)e, (void *)f); break;
    case SYS_SETSOCKOPT: r = setsockopt(a, b, c, (void *)d, e); break;
    default: errno = ENOSYS;
    }
    return r < 0 ? -errno : r;
}

/* Socket call `call` (linux/net.h), or its direct i386 number `nr`. */
static long net(int call, long nr, long a, long b, long c, long d, long e, long f) {
    if (libc)
        return by_libc(call, a, b, c, d, e, f);
    if (direct)
        return sys32(nr, a, b, c, d, e, f);
    uint32_t v[6] = {a, b, c, d, e, f};
    memcpy(args, v, sizeof v);
    return sys32(NR_SOCKETCALL, call, (long)(uintptr_t)args, 0, 0, 0, 0);
}

#define P(x) ((long)(uintptr_t)(x))

static long accept_(long fd, void *addr, uint32_t *len) {
    if (direct)
        return sys32(NR_ACCEPT4, fd, P(addr), P(len), 0, 0, 0);
    return net(SYS_ACCEPT, 0, fd, P(addr), P(len), 0, 0, 0);
}

static const char *err(long r) { return r < 0 ? strerror(-r) : "ok"; }

static const char *show(const struct sockaddr_in *a) {
    static char s[64];
    snprintf(s, sizeof s, "%s:%d", inet_ntoa(a->sin_addr), ntohs(a->sin_port));
    return s;
}

static unsigned char query[512], answer[512], buf[65536];
static struct sockaddr_in ns, from, dst, peer, local, any;
static uint32_t len;
static int one = 1;

static int fetch(void);

static int client(const char *nameserver, const char *name) {
    dst.sin_family = AF_INET;
    dst.sin_port = htons(80);
    if (inet_pton(AF_INET, name, &dst.sin_addr) == 1)
        return fetch();
    /* An A query for `name`, sent to the nameserver and answered by recvfrom. */
    long u = net(SYS_SOCKET, NR_SOCKET, AF_INET, SOCK_DGRAM, 0, 0, 0, 0);
    size_t q = 0;
    const unsigned char head[12] = {0x32, 0x32, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0};
    memcpy(query, head, sizeof head);
    q = sizeof head;
    for (const char *p = name; *p;) {
        const char *dot = strchr(p, '.');
        size_t n = dot ? (size_t)(dot - p) : strlen(p);
        query[q++] = (unsigned char)n;
        memcpy(query + q, p, n);
        q += n;
        p += n + (dot != NULL);
    }
    query[q++] = 0;
    const unsigned char tail[4] = {0, 1, 0, 1};
    memcpy(query + q, tail, 4);
    q += 4;
    ns.sin_family = AF_INET;
    ns.sin_port = htons(53);
    inet_pton(AF_INET, nameserver, &ns.sin_addr);
    long r = net(SYS_SENDTO, NR_SENDTO, u, P(query), q, 0, P(&ns), sizeof ns);
    printf("sendto %s\n", err(r));
    if (r < 0)
        return 2;
    len = sizeof from;
    r = net(SYS_RECVFROM, NR_RECVFROM, u, P(answer), sizeof answer, 0, P(&from), P(&len));
    if (r < 16) {
        printf("recvfrom %s\n", err(r));
        return 2;
    }
    printf("dns from %s len %u id %d answers %d\n", show(&from), len,
           answer[0] == 0x32 && answer[1] == 0x32, answer[7]);
    /* One A record: the message's last four bytes. */
    memcpy(&dst.sin_addr, answer + r - 4, 4);
    printf("answer %s\n", inet_ntoa(dst.sin_addr));
    return fetch();
}

/* GET /index.html from `dst`. */
static int fetch(void) {
    long t = net(SYS_SOCKET, NR_SOCKET, AF_INET, SOCK_STREAM, 0, 0, 0, 0);
    long r = net(SYS_CONNECT, NR_CONNECT, t, P(&dst), sizeof dst, 0, 0, 0);
    printf("connect %s\n", err(r));
    if (r < 0)
        return 3;
    len = sizeof peer;
    r = net(SYS_GETPEERNAME, NR_GETPEERNAME, t, P(&peer), P(&len), 0, 0, 0);
    printf("peer %s family %d len %u %s\n", show(&peer), peer.sin_family, len, err(r));
    len = sizeof local;
    r = net(SYS_GETSOCKNAME, NR_GETSOCKNAME, t, P(&local), P(&len), 0, 0, 0);
    printf("local family %d len %u %s\n", local.sin_family, len, err(r));
    const char get[] = "GET /index.html HTTP/1.0\r\n\r\n";
    if (write(t, get, sizeof get - 1) < 0)
        return 4;
    size_t got = 0;
    ssize_t n;
    while ((n = read(t, buf + got, sizeof buf - 1 - got)) > 0)
        got += (size_t)n;
    buf[got] = 0;
    fputs((char *)buf, stdout);
    return 0;
}

static int server(int port) {
    long l = net(SYS_SOCKET, NR_SOCKET, AF_INET, SOCK_STREAM, 0, 0, 0, 0);
    net(SYS_SETSOCKOPT, NR_SETSOCKOPT, l, SOL_SOCKET, SO_REUSEADDR, P(&one), sizeof one, 0);
    any.sin_family = AF_INET;
    any.sin_port = htons(port);
    long r = net(SYS_BIND, NR_BIND, l, P(&any), sizeof any, 0, 0, 0);
    if (r == 0)
        r = net(SYS_LISTEN, NR_LISTEN, l, 8, 0, 0, 0, 0);
    if (r < 0) {
        printf("bind/listen %s\n", err(r));
        return 2;
    }
    len = sizeof local;
    r = net(SYS_GETSOCKNAME, NR_GETSOCKNAME, l, P(&local), P(&len), 0, 0, 0);
    printf("listening %s family %d %s\n", show(&local), local.sin_family, err(r));
    len = sizeof peer;
    long c = accept_(l, &peer, &len);
    if (c < 0) {
        printf("accept %s\n", err(c));
        return 3;
    }
    printf("accepted %s family %d len %u\n", show(&peer), peer.sin_family, len);
    memset(&from, 0, sizeof from);
    len = sizeof from;
    r = net(SYS_GETPEERNAME, NR_GETPEERNAME, c, P(&from), P(&len), 0, 0, 0);
    printf("getpeername %s family %d %s\n", show(&from), from.sin_family, err(r));
    const char msg[] = "hello from a 32-bit server\n";
    if (write(c, msg, sizeof msg - 1) < 0)
        return 4;
    close(c);
    return 0;
}

static int udp_server(int port) {
    long u = net(SYS_SOCKET, NR_SOCKET, AF_INET, SOCK_DGRAM, 0, 0, 0, 0);
    any.sin_family = AF_INET;
    any.sin_port = htons(port);
    long r = net(SYS_BIND, NR_BIND, u, P(&any), sizeof any, 0, 0, 0);
    if (r < 0) {
        printf("bind %s\n", err(r));
        return 2;
    }
    len = sizeof local;
    r = net(SYS_GETSOCKNAME, NR_GETSOCKNAME, u, P(&local), P(&len), 0, 0, 0);
    printf("listening %s family %d %s\n", show(&local), local.sin_family, err(r));
    memcpy(answer, "echo ", 5);
    len = sizeof from;
    r = net(SYS_RECVFROM, NR_RECVFROM, u, P(answer + 5), sizeof answer - 5, 0, P(&from), P(&len));
    if (r < 0) {
        printf("recvfrom %s\n", err(r));
        return 3;
    }
    printf("from %s family %d len %u payload %.*s\n", show(&from), from.sin_family, len, (int)r,
           answer + 5);
    r = net(SYS_SENDTO, NR_SENDTO, u, P(answer), r + 5, 0, P(&from), sizeof from);
    printf("sendto %ld %s\n", r, err(r));
    return r < 0 ? 4 : 0;
}

/* Bad pointers: socketcall's argument array (socketcall only), a connect's address. */
static int fault(void) {
    long r;
    if (!direct) {
        r = sys32(NR_SOCKETCALL, SYS_CONNECT, 0x10, 0, 0, 0, 0);
        printf("arguments %s\n", err(r));
    }
    long t = net(SYS_SOCKET, NR_SOCKET, AF_INET, SOCK_STREAM, 0, 0, 0, 0);
    r = net(SYS_CONNECT, NR_CONNECT, t, 0x10, sizeof dst, 0, 0, 0);
    printf("address %s\n", err(r));
    return 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IONBF, 0);
    if (argc == 2 && !strcmp(argv[1], "probe")) {
        printf("%zu-bit\n", sizeof(void *) * 8);
        return 0;
    }
    if (argc < 3)
        return 64;
    direct = !strcmp(argv[2], "direct");
    libc = !strcmp(argv[2], "libc");
#ifdef __x86_64__
    if (direct || libc) /* int $0x80 here passes five arguments: socketcall only. */
        return 64;
#endif
    if (!strcmp(argv[1], "client") && argc == 5)
        return client(argv[3], argv[4]);
    if (!strcmp(argv[1], "server") && argc == 4)
        return server(atoi(argv[3]));
    if (!strcmp(argv[1], "udp-server") && argc == 4)
        return udp_server(atoi(argv[3]));
    if (!strcmp(argv[1], "fault") && argc == 3)
        return fault();
    return 64;
}
"#;

/// host-server may listen on these ports: TCP 8080, UDP from [`UDP_PORT`] on (one per run).
const CONFIG: &str =
    "[listen]\nallowed_ports = [8080, 5350, 5351, 5352, 5353, 5354, 5355, 5356, 5357, 5358, 5359]\n";

/// The UDP server's first port.
const UDP_PORT: u16 = 5350;

/// The builds: i386 (`-m32`) static and dynamic, and x86_64 (its calls through `int $0x80`).
struct Programs {
    i386: PathBuf,
    i386_dynamic: PathBuf,
    x86_64: PathBuf,
}

impl Programs {
    /// Each way a program here makes i386 socket calls: the binary and its MODE.
    fn each(&self) -> [(&Path, &'static str); 5] {
        [
            (&self.i386, "direct"),
            (&self.i386, "socketcall"),
            (&self.i386, "libc"),
            (&self.i386_dynamic, "libc"),
            (&self.x86_64, "int80"),
        ]
    }
}

/// `cc FLAGS` of [`C_I386`] into `dir/name`, or `None` after [`skip`].
fn build(test: &str, dir: &Path, name: &str, flags: &[&str]) -> Option<PathBuf> {
    let src = dir.join("i386.c");
    std::fs::write(&src, C_I386).unwrap();
    let bin = dir.join(name);
    let out = Command::new("cc")
        .args(flags)
        .args(["-O1", "-Wall", "-o"])
        .arg(&bin)
        .arg(&src)
        .output();
    match out {
        Ok(o) if o.status.success() => Some(bin),
        Ok(o) => {
            skip(
                test,
                &format!(
                    "cc {flags:?} failed (gcc-multilib: scripts/install-deps): {}",
                    text(&o.stderr)
                ),
            );
            None
        }
        Err(e) => {
            skip(test, &format!("no C compiler: {e}"));
            None
        }
    }
}

/// The test world with `config` and both builds, or `None` (after [`skip`]) where
/// supervision, the world, gcc-multilib or the kernel's IA32 emulation is missing.
fn world(test: &str, label: &str, config: &str) -> Option<(Stack, TempDir, Programs)> {
    if !outsock_supervisor::available() {
        skip(test, "this kernel has no seccomp user notification");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let i386 = build(test, dir.path(), "legacy32", &["-m32", "-static"])?;
    let i386_dynamic = build(test, dir.path(), "legacy32-dynamic", &["-m32"])?;
    let x86_64 = build(test, dir.path(), "legacy64", &["-static", "-no-pie"])?;
    let s = stack(label, config)?;
    // A trivial run first (in `legacy`, like everything here): does this kernel run i386?
    let bits = [(&i386, "32"), (&i386_dynamic, "32"), (&x86_64, "64")];
    for (bin, want) in bits.map(|(b, n)| (b, format!("{n}-bit\n"))) {
        let out = s.world.legacy().command(bin).arg("probe").output();
        match out {
            Ok(o) if text(&o.stdout) == want => {}
            Ok(o) => panic!("{} probe: {o:?}", bin.display()),
            Err(e) => {
                skip(
                    test,
                    &format!("this kernel does not run an i386 program (IA32 emulation): {e}"),
                );
                return None;
            }
        }
    }
    let programs = Programs {
        i386,
        i386_dynamic,
        x86_64,
    };
    Some((s, dir, programs))
}

/// Runs `program args…` in `legacy` through `outsock run FLAGS…`, bounded to 60 s.
fn run(s: &Stack, flags: &[&str], program: &Path, args: &[&str]) -> Output {
    let out = outsock_run(s, &["timeout", "60"], flags, program, args)
        .output()
        .unwrap();
    println!(
        "{} {flags:?} {args:?}: {}\nstdout: {}\nstderr: {}",
        program.display(),
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

/// The flags of the runs each test makes: the default run and the supervisor alone.
const RUNS: [&[&str]; 2] = [&[], &["--supervisor-only"]];

#[test]
fn i386_clients_resolve_and_fetch_from_an_ipv6_only_server_by_its_dummy() {
    let test = "i386_clients_resolve_and_fetch_from_an_ipv6_only_server_by_its_dummy";
    let Some((s, _dir, programs)) = world(test, "i386-cli", "") else {
        return;
    };
    let ns = GUEST_DNS.to_string();
    for flags in RUNS {
        for (bin, mode) in programs.each() {
            let what = format!("{} {mode} client {flags:?}", bin.display());
            let out = run(&s, flags, bin, &["client", mode, &ns, zone::V6ONLY]);
            let stdout = ok(&s, &out, &what);
            // The 64-bit preload is not offered to a 32-bit program (ld.so would complain).
            let stderr = text(&out.stderr);
            assert!(!stderr.contains("ld.so"), "{what}: {stderr}");
            let lines: Vec<&str> = stdout.lines().collect();
            assert_eq!(lines[0], "sendto ok", "{what}: {stdout}");
            // recvfrom's source: the nameserver asked (sockaddr_in, 16 bytes).
            assert_eq!(
                lines[1],
                format!("dns from {ns}:53 len 16 id 1 answers 1"),
                "{what}: {stdout}"
            );
            let dummy = s.dummy_for(addr::HTTP).unwrap();
            assert_eq!(lines[2], format!("answer {dummy}"), "{what}: {stdout}");
            assert_eq!(lines[3], "connect ok", "{what}: {stdout}");
            assert_eq!(
                lines[4],
                format!("peer {dummy}:80 family 2 len 16 ok"),
                "{what}: {stdout}"
            );
            assert_eq!(lines[5], "local family 2 len 16 ok", "{what}: {stdout}");
            assert!(stdout.ends_with(INDEX_BODY), "{what}: {stdout}");
        }
    }
}

#[test]
fn i386_servers_listen_through_host_server_and_see_the_world_clients_dummy() {
    let test = "i386_servers_listen_through_host_server_and_see_the_world_clients_dummy";
    let Some((s, _dir, programs)) = world(test, "i386-srv", CONFIG) else {
        return;
    };
    for flags in RUNS {
        for (bin, mode) in programs.each() {
            let what = format!("{} {mode} server {flags:?}", bin.display());
            let mut server = outsock_run(
                &s,
                &["timeout", "60"],
                flags,
                bin,
                &["server", mode, "8080"],
            );
            server.stdout(Stdio::piped()).stderr(Stdio::piped());
            let server = server.spawn().unwrap();
            wait_listening(&s, 8080, true);
            let answer = world_request(&s, 8080, b"");
            let out = server.wait_with_output().unwrap();
            let stdout = ok(&s, &out, &what);
            println!("{what}: {stdout}");
            assert_eq!(answer, "hello from a 32-bit server\n", "{what}: {stdout}");
            let lines: Vec<&str> = stdout.lines().collect();
            assert_eq!(
                lines[0], "listening 0.0.0.0:8080 family 2 ok",
                "{what}: {stdout}"
            );
            let accepted = lines[1]
                .strip_prefix("accepted ")
                .and_then(|l| l.strip_suffix(" family 2 len 16"))
                .unwrap_or_else(|| panic!("{what}: {stdout}"));
            let peer: SocketAddrV4 = accepted.parse().unwrap();
            assert_eq!(
                lines[2],
                format!("getpeername {peer} family 2 ok"),
                "{what}: {stdout}"
            );
            assert_client_dummy(&s, *peer.ip());
            // host-server's listener goes with the program's: the next run listens afresh.
            wait_listening(&s, 8080, false);
        }
    }
}

#[test]
fn i386_udp_servers_answer_a_world_client_seen_as_its_dummy() {
    let test = "i386_udp_servers_answer_a_world_client_seen_as_its_dummy";
    let Some((s, _dir, programs)) = world(test, "i386-udp", CONFIG) else {
        return;
    };
    let mut port = UDP_PORT;
    for flags in RUNS {
        for (bin, mode) in programs.each() {
            let what = format!("{} {mode} udp server {flags:?}", bin.display());
            let args = ["udp-server", mode, &port.to_string()];
            let mut server = outsock_run(&s, &["timeout", "60"], flags, bin, &args);
            server.stdout(Stdio::piped()).stderr(Stdio::piped());
            let server = server.spawn().unwrap();
            wait_udp_bound(&s, port);
            let reply = world_udp_ping(&s, port);
            let out = server.wait_with_output().unwrap();
            let stdout = ok(&s, &out, &what);
            println!("{what}: {stdout}");
            let host = SocketAddr::new(addr::HOST.into(), port);
            assert_eq!(reply, (b"echo ping".to_vec(), host), "{what}: {stdout}");
            let lines: Vec<&str> = stdout.lines().collect();
            assert_eq!(
                lines[0],
                format!("listening 0.0.0.0:{port} family 2 ok"),
                "{what}: {stdout}"
            );
            let from = lines[1]
                .strip_prefix("from ")
                .and_then(|l| l.strip_suffix(" family 2 len 16 payload ping"))
                .unwrap_or_else(|| panic!("{what}: {stdout}"));
            let from: SocketAddrV4 = from.parse().unwrap();
            assert_client_dummy(&s, *from.ip());
            assert_eq!(lines[2], "sendto 9 ok", "{what}: {stdout}");
            port += 1;
        }
    }
}

#[test]
fn i386_bad_pointers_fail_as_natively() {
    let test = "i386_bad_pointers_fail_as_natively";
    let Some((s, _dir, programs)) = world(test, "i386-flt", "") else {
        return;
    };
    for (bin, mode) in programs.each() {
        let native = run(&s, &["--shim-only"], bin, &["fault", mode]);
        let want = if mode == "direct" {
            "address Bad address\n"
        } else {
            "arguments Bad address\naddress Bad address\n"
        };
        assert_eq!(text(&native.stdout), want, "{mode} --shim-only");
        for flags in RUNS {
            let out = run(&s, flags, bin, &["fault", mode]);
            assert_eq!(text(&out.stdout), want, "{mode} {flags:?}");
        }
    }
}

#[test]
fn an_i386_af_inet_socket_never_reaches_the_network_unmapped() {
    let test = "an_i386_af_inet_socket_never_reaches_the_network_unmapped";
    let Some((s, _dir, programs)) = world(test, "i386-esc", "") else {
        return;
    };
    // The dummy of the IPv6-only server, resolved once under the supervisor.
    let ns = GUEST_DNS.to_string();
    let out = run(
        &s,
        &[],
        &programs.i386,
        &["client", "direct", &ns, zone::V6ONLY],
    );
    ok(&s, &out, "resolving client");
    let dummy = s.dummy_for(addr::HTTP).unwrap().to_string();
    // A dummy in the pool that nothing was given: host-server knows no such address.
    let unmapped = Ipv4Addr::new(10, 170, 175, 251).to_string();
    for (bin, mode) in programs.each() {
        // Without the supervisor the i386 calls are the kernel's, and `legacy` has no route:
        // a call the filter missed would fail as loudly.
        let plain = run(&s, &["--shim-only"], bin, &["client", mode, &ns, &dummy]);
        assert!(!plain.status.success(), "{mode}: {}", text(&plain.stdout));
        assert_eq!(
            text(&plain.stdout),
            "connect Network is unreachable\n",
            "{mode} --shim-only"
        );
        let plain = run(
            &s,
            &["--shim-only"],
            bin,
            &["client", mode, &ns, zone::V6ONLY],
        );
        assert_eq!(
            text(&plain.stdout),
            "sendto Network is unreachable\n",
            "{mode} --shim-only"
        );
        // Under the supervisor every such connect is host-server's to answer, an unknown
        // dummy included (the kernel would say "Network is unreachable").
        for flags in RUNS {
            let out = run(&s, flags, bin, &["client", mode, &ns, &unmapped]);
            assert_eq!(
                text(&out.stdout),
                "connect No route to host\n",
                "{mode} {flags:?}\n{}",
                s.logs()
            );
        }
    }
}
