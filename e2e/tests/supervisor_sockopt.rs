//! Socket options under the supervisor (`--supervisor-only`: no preload) in process mode: a
//! static C program (glibc, `cc -static`, plain libc calls that reach the kernel as system
//! calls) reads `SO_DOMAIN`, `SO_TYPE`, `SO_PROTOCOL` and `SO_ACCEPTCONN` on the sockets the
//! supervisor replaced — an AF_INET listener (the packet channel stands in for it), a
//! dual-stack AF_INET6 listener, a connection accepted from a world client and one connected
//! to the world's echo server by name (host-server's IPv6 sockets stand in for them) — and
//! sees what the socket it made would answer natively: AF_INET (AF_INET6 for the dual-stack
//! listener), SOCK_STREAM, IPPROTO_TCP, listening or not. Sockets the supervisor did not make
//! (a loopback listener, an `AF_UNIX` pair) keep the kernel's answers, and what a server does
//! on a listener after `listen` (SO_REUSEADDR set and read, SO_ERROR, SO_RCVBUF) works.

// Test code throughout; helpers outside #[test] functions unwrap too.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use outsock_e2e::{connect_from_client, outsock_run, skip, stack, text};
use testworld::zone;

/// host-server may listen on these guest ports.
const PORTS: &str = "[listen]\nallowed_ports = [8080, 8081]\n";

/// Prints `WHAT domain type protocol acceptconn` for each socket (a negative number: the
/// errno of a failed getsockopt). Argument: the echo server's name.
const C_SOCKOPTS: &str = r#"
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int opt(int fd, int name) {
    int v = -1;
    socklen_t len = sizeof v;
    if (getsockopt(fd, SOL_SOCKET, name, &v, &len))
        return -errno;
    return len == sizeof v ? v : -1000 - (int)len;
}

static void show(const char *what, int fd) {
    printf("%s %d %d %d %d\n", what, opt(fd, SO_DOMAIN), opt(fd, SO_TYPE), opt(fd, SO_PROTOCOL),
           opt(fd, SO_ACCEPTCONN));
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IONBF, 0);
    if (argc < 2)
        return 2;
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(8080) };
    if (bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 8)) {
        perror("bind/listen");
        return 2;
    }
    show("listener", l);
    /* What servers do on a listener after listen. */
    int one = 1, reuse = -1, err = -1, rcvbuf = -1;
    int set = setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    socklen_t len = sizeof reuse;
    getsockopt(l, SOL_SOCKET, SO_REUSEADDR, &reuse, &len);
    len = sizeof err;
    getsockopt(l, SOL_SOCKET, SO_ERROR, &err, &len);
    len = sizeof rcvbuf;
    getsockopt(l, SOL_SOCKET, SO_RCVBUF, &rcvbuf, &len);
    printf("listener-options reuseaddr-set %d reads %d error %d rcvbuf-positive %d\n", set, reuse,
           err, rcvbuf > 0);
    /* A short optlen is cut as the kernel cuts it. */
    char b = 0x55;
    len = 1;
    int r = getsockopt(l, SOL_SOCKET, SO_DOMAIN, &b, &len);
    printf("short %d len %d byte %d\n", r, (int)len, b);

    int l6 = socket(AF_INET6, SOCK_STREAM, 0);
    int off = 0;
    setsockopt(l6, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off);
    struct sockaddr_in6 a6 = { .sin6_family = AF_INET6, .sin6_port = htons(8081) };
    if (bind(l6, (struct sockaddr *)&a6, sizeof a6) || listen(l6, 8)) {
        perror("bind/listen [::]:8081");
        return 2;
    }
    show("listener6", l6);
    printf("ready\n");

    int c = accept(l, NULL, NULL);
    if (c < 0) {
        perror("accept");
        return 3;
    }
    show("accepted", c);
    if (write(c, "x\n", 2) != 2)
        return 3;
    close(c);

    struct addrinfo hints = { .ai_family = AF_INET, .ai_socktype = SOCK_STREAM }, *ai;
    int g = getaddrinfo(argv[1], "7", &hints, &ai);
    if (g) {
        printf("getaddrinfo: %s\n", gai_strerror(g));
        return 4;
    }
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(s, ai->ai_addr, ai->ai_addrlen)) {
        perror("connect");
        return 4;
    }
    show("connected", s);
    char ch = 0;
    if (write(s, "y", 1) != 1 || read(s, &ch, 1) != 1)
        return 4;
    printf("echoed %c\n", ch);

    /* Not made by the supervisor: the kernel's own answers. */
    int lo = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in la = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    if (bind(lo, (struct sockaddr *)&la, sizeof la) || listen(lo, 1)) {
        perror("loopback listen");
        return 5;
    }
    show("loopback", lo);
    int pair[2];
    socketpair(AF_UNIX, SOCK_SEQPACKET, 0, pair);
    show("unix", pair[0]);
    return 0;
}
"#;

/// Builds `source` statically (`cc -static`) into `dir/name`; `None` (after saying why)
/// without a C compiler.
fn build_static(test: &str, dir: &Path, name: &str, source: &str) -> Option<std::path::PathBuf> {
    let c = dir.join(format!("{name}.c"));
    std::fs::write(&c, source).unwrap();
    let bin = dir.join(name);
    match Command::new("cc")
        .args(["-static", "-O1", "-Wall", "-o"])
        .arg(&bin)
        .arg(&c)
        .output()
    {
        Ok(o) if o.status.success() => Some(bin),
        Ok(o) => panic!("cc -static {name}: {}", text(&o.stderr)),
        Err(e) => {
            skip(test, &format!("no C compiler: {e}"));
            None
        }
    }
}

#[test]
fn a_static_program_sees_its_af_inet_sockets_options() {
    let test = "a_static_program_sees_its_af_inet_sockets_options";
    if !outsock_supervisor::available() {
        skip(test, "this kernel has no seccomp user notification");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(bin) = build_static(test, dir.path(), "sockopts", C_SOCKOPTS) else {
        return;
    };
    let file = text(&Command::new("file").arg(&bin).output().unwrap().stdout);
    assert!(file.contains("statically linked"), "{file}");
    let Some(s) = stack("sup-sopt", PORTS) else {
        return;
    };
    let mut program = outsock_run(
        &s,
        &["timeout", "60"],
        &["--supervisor-only"],
        &bin,
        &[zone::ECHO],
    );
    let mut program = program
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(program.stdout.take().unwrap());
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if stdout.read_line(&mut line).unwrap() == 0 {
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
    // A world client connects to the host's port 8080: the program's accept.
    let answer = s
        .world
        .world()
        .run(|| {
            let mut c = connect_from_client(8080);
            let mut back = Vec::new();
            c.read_to_end(&mut back).unwrap();
            c.flush().unwrap();
            text(&back)
        })
        .unwrap();
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    let out = program.wait_with_output().unwrap();
    let all = format!("{}{rest}", lines.concat());
    println!("{all}\nstderr: {}", text(&out.stderr));
    assert!(
        out.status.success(),
        "{all}\n{}\n{}",
        text(&out.stderr),
        s.logs()
    );
    assert_eq!(answer, "x\n");
    let af_inet = libc::AF_INET;
    let (stream, tcp) = (libc::SOCK_STREAM, libc::IPPROTO_TCP);
    let want = [
        format!("listener {af_inet} {stream} {tcp} 1"),
        "listener-options reuseaddr-set 0 reads 1 error 0 rcvbuf-positive 1".to_owned(),
        format!("short 0 len 1 byte {af_inet}"),
        format!("listener6 {} {stream} {tcp} 1", libc::AF_INET6),
        "ready".to_owned(),
        format!("accepted {af_inet} {stream} {tcp} 0"),
        format!("connected {af_inet} {stream} {tcp} 0"),
        "echoed y".to_owned(),
        format!("loopback {af_inet} {stream} {tcp} 1"),
        format!("unix {} {} 0 0", libc::AF_UNIX, libc::SOCK_SEQPACKET),
    ];
    assert_eq!(all.lines().collect::<Vec<_>>(), want, "{all}");
}
