//! Process mode end to end: real, unmodified IPv4-only programs from Debian run in the test
//! world's `legacy` namespace (nothing but `lo`) with liboutsock preloaded by `outsock run`, and
//! reach IPv6-only services in `world` through outsock-host-server and outsock-dns-cache in
//! `host`. IPv6 clients in `world` reach servers running in `legacy` through host-server's
//! listeners on the host's IPv6 address.

// Test code throughout; helpers outside #[test] functions unwrap too.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown};
use std::process::Stdio;
use std::time::{Duration, Instant};

use outsock_e2e::{
    check_socket_options, connect_from_client, ok, stack, text, wait_listening, PY_SOCKET_OPTIONS,
};
use testworld::stack::Stack;
use testworld::{addr, big_file_byte, programs, zone, BIG_FILE_LEN, INDEX_BODY};

const PORTS: &str = "[listen]\nallowed_ports = [8080, 8081, 8082, 8083, 8084, 8085, 8086]\n";

use outsock_e2e::run_legacy as run;

/// An IPv6 client in `world`, bound to [`addr::CLIENT`] so the host sees a known peer, that
/// sends `data` to the host's `port`, half-closes and returns what came back.
fn world_client(s: &Stack, port: u16, data: &'static [u8]) -> Vec<u8> {
    s.world
        .world()
        .run(move || {
            let mut c = connect_from_client(port);
            c.write_all(data).unwrap();
            c.shutdown(Shutdown::Write).unwrap();
            let mut back = Vec::new();
            c.read_to_end(&mut back).unwrap();
            back
        })
        .unwrap()
}

#[test]
fn netcat_traditional_client_and_server() {
    let Some(s) = stack("nc", PORTS) else { return };
    // Client by name to the IPv6 echo server.
    let out = run(
        &s,
        "nc",
        &["-q", "5", zone::ECHO, "7"],
        b"hello through outsock\n",
    );
    assert_eq!(ok(&s, &out, "nc client"), "hello through outsock\n");

    // UDP client by name: the datagram goes to the IPv6 UDP echo server and comes back.
    let out = run(
        &s,
        "nc",
        &["-u", "-q", "3", "-w", "10", zone::ECHO, "7"],
        b"a datagram through outsock\n",
    );
    assert_eq!(ok(&s, &out, "nc -u client"), "a datagram through outsock\n");

    // Server: `nc -l -p 8080` in legacy, an IPv6 client in world.
    let mut server = s.legacy("timeout").unwrap();
    server
        .args(["30", "nc", "-l", "-p", "8080"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let server = server.spawn().unwrap();
    wait_listening(&s, 8080, true);
    let back = world_client(&s, 8080, b"from an IPv6 client\n");
    let out = server.wait_with_output().unwrap();
    assert_eq!(ok(&s, &out, "nc -l"), "from an IPv6 client\n");
    assert!(back.is_empty());
}

/// An IPv6 literal name (`fd00-64--80.ipv6.outsock`, dns-cache's `ipv6_literal_suffix`):
/// curl reaches the server it spells with no zone anywhere, `dig -x` on the dummy gives the
/// name back, and a name that spells no address does not resolve.
#[test]
fn curl_by_an_ipv6_literal_name_and_dig_x_gives_it_back() {
    let Some(s) = stack("literal", "") else {
        return;
    };
    let name = outsock_e2e::ipv6_literal_name(addr::HTTP);
    let url = format!("http://{name}/index.html");
    let out = run(
        &s,
        "curl",
        &["-4", "-sS", "-m", "20", "-w", "\n%{remote_ip}\n", &url],
        b"",
    );
    let stdout = ok(&s, &out, "curl -4 by a literal name");
    assert!(stdout.starts_with(INDEX_BODY), "{stdout}");
    let dummy: Ipv4Addr = stdout.trim_end().lines().last().unwrap().parse().unwrap();
    let mapped = s.mappings(&["--address", &dummy.to_string()]).unwrap();
    assert!(
        mapped.contains(&addr::HTTP.to_string()) && mapped.contains(&name),
        "{dummy} is not {name}'s dummy: {mapped}"
    );
    let out = run(
        &s,
        "dig",
        &["+time=3", "+tries=2", "+short", "-x", &dummy.to_string()],
        b"",
    );
    assert_eq!(ok(&s, &out, "dig -x").trim(), format!("{name}."));
    // Not an address: NXDOMAIN, which curl reports as a name it could not resolve (6).
    let out = run(
        &s,
        "curl",
        &["-4", "-sS", "-m", "20", "http://fd00-64-zz.ipv6.outsock/"],
        b"",
    );
    assert_eq!(out.status.code(), Some(6), "{}", text(&out.stderr));
}

#[test]
fn curl_and_wget_fetch_by_name() {
    let Some(s) = stack("curl-wget", PORTS) else {
        return;
    };
    let url = format!("http://{}/index.html", zone::V6ONLY);
    let out = run(&s, "curl", &["-4", "-sS", "-m", "20", &url], b"");
    assert_eq!(ok(&s, &out, "curl -4"), INDEX_BODY);

    let big = format!("http://{}/big.bin", zone::V6ONLY);
    let out = run(&s, "wget", &["-4", "-q", "-T", "20", "-O", "-", &big], b"");
    ok(&s, &out, "wget -4");
    assert_eq!(out.stdout.len(), BIG_FILE_LEN);
    assert!(
        out.stdout
            .iter()
            .enumerate()
            .all(|(i, b)| *b == big_file_byte(i)),
        "wget body differs"
    );

    // The name maps to a dummy that maps back to the server's IPv6 address.
    assert!(
        s.dummy_for(addr::HTTP).is_some(),
        "{}",
        s.mappings(&[]).unwrap()
    );
}

#[test]
fn busybox_wget_nc_and_httpd() {
    let Some(s) = stack("busybox", PORTS) else {
        return;
    };
    let url = format!("http://{}/index.html", zone::V6ONLY);
    let out = run(&s, "busybox", &["wget", "-O", "-", &url], b"");
    assert_eq!(ok(&s, &out, "busybox wget"), INDEX_BODY);

    let out = run(
        &s,
        "busybox",
        &["nc", "-w", "5", zone::ECHO, "7"],
        b"busybox nc\n",
    );
    assert_eq!(ok(&s, &out, "busybox nc"), "busybox nc\n");

    // busybox httpd serving a directory from legacy; an IPv6 client in world fetches it.
    let www = s.world.path("legacy-www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("hello.txt"), "served from an IPv4-only httpd\n").unwrap();
    let mut httpd = s.legacy("busybox").unwrap();
    // `-p 0.0.0.0:8081`: busybox otherwise listens on an AF_INET6 socket, and IPv6 is not what
    // the shim outsources (a legacy program speaks IPv4).
    httpd
        .args(["httpd", "-f", "-vv", "-p", "0.0.0.0:8081", "-h"])
        .arg(&www)
        .stderr(Stdio::piped())
        .stdout(Stdio::null());
    let mut httpd = httpd.spawn().unwrap();
    wait_listening(&s, 8081, true);
    let page = world_client(&s, 8081, b"GET /hello.txt HTTP/1.0\r\n\r\n");
    let page = text(&page);
    assert!(
        page.starts_with("HTTP/1.") && page.contains(" 200 "),
        "{page}"
    );
    assert!(page.ends_with("served from an IPv4-only httpd\n"), "{page}");
    httpd.kill().unwrap();
    let log = text(&httpd.wait_with_output().unwrap().stderr);
    // The server saw the IPv6 client as a dummy from the source pool.
    let peer = s
        .dummy_for(addr::CLIENT)
        .expect("an inbound-peer mapping for the world client");
    assert!(peer.to_string().starts_with("172.21."), "{peer}");
    assert!(
        log.contains(&peer.to_string()),
        "httpd log lacks {peer}: {log}"
    );
}

#[test]
fn iperf3_transfer_completes() {
    let Some(mut s) = stack("iperf3", PORTS) else {
        return;
    };
    outsock_e2e::world_iperf3_server(&mut s, 5201, &[]);
    let bytes = 32 * 1024 * 1024;
    let out = run(
        &s,
        "iperf3",
        &[
            "-4",
            "-c",
            zone::ECHO,
            "-p",
            "5201",
            "-n",
            &bytes.to_string(),
            "-J",
        ],
        b"",
    );
    let json = ok(&s, &out, "iperf3 -4");
    let sent = json_number(&json, "sum_sent", "bytes");
    let received = json_number(&json, "sum_received", "bytes");
    // iperf3 -n stops after the block that reaches the count: at most one 128 KiB block more.
    assert!(
        sent >= bytes && sent <= bytes + 128 * 1024,
        "sent {sent} for -n {bytes}: {json}"
    );
    // iperf3's server stops counting when the client reports the end of the test, so its
    // received total trails the sent one even natively (33554432 sent, 29884416 received in
    // the same world over plain IPv6); that it received data is what we check here.
    assert!(received > 0 && received <= sent, "{json}");
    s.stop_host();
}

/// The `key` number inside the JSON object named `object` (enough for iperf3's report).
fn json_number(json: &str, object: &str, key: &str) -> u64 {
    let at = json
        .find(&format!("\"{object}\""))
        .unwrap_or_else(|| panic!("no {object} in {json}"));
    let rest = &json[at..];
    let k = rest.find(&format!("\"{key}\"")).unwrap();
    rest[k + key.len() + 2..]
        .trim_start_matches([':', ' ', '\t'])
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn python3_clients_tcp_asyncio_udp() {
    let Some(s) = stack("py-clients", PORTS) else {
        return;
    };
    let out = run(
        &s,
        "python3",
        &["-c", programs::PY_CLIENTS, zone::ECHO],
        b"",
    );
    assert_eq!(ok(&s, &out, "python clients"), programs::PY_CLIENTS_OUTPUT);
}

const PY_SERVER: &str = r#"
import os, socket, sys, threading
srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", int(sys.argv[1])))
srv.listen(8)
print("listening", srv.getsockname(), srv.family == socket.AF_INET,
      srv.getsockopt(socket.SOL_SOCKET, socket.SO_DOMAIN) == socket.AF_INET, flush=True)
# 1: a forked child serves the first connection on the inherited socket.
c, peer = srv.accept()
pid = os.fork()
if pid == 0:
    c.sendall(b"child:" + c.recv(64))
    c.close()
    os._exit(0)
c.close()
os.waitpid(pid, 0)
# 2: a second thread serves the next one.
c, peer2 = srv.accept()
def serve(conn):
    conn.sendall(b"thread:" + conn.recv(64))
    conn.close()
t = threading.Thread(target=serve, args=(c,))
t.start(); t.join()
print("peers", peer[0], peer2[0], c.family == socket.AF_INET, flush=True)
srv.close()
print("closed", flush=True)
"#;

#[test]
fn connected_udp_gets_a_host_socket_with_native_errors() {
    let Some(s) = stack("py-udp-connected", PORTS) else {
        return;
    };
    let out = run(
        &s,
        "python3",
        &["-c", programs::PY_UDP_CONNECTED, zone::ECHO, zone::V6ONLY],
        b"",
    );
    assert_eq!(
        ok(&s, &out, "python connected UDP"),
        programs::PY_UDP_CONNECTED_OUTPUT
    );
}

/// A blocking connect waits on the program's own socket (passed while its handshake is under
/// way) and reports the kernel's outcome: refused at a closed port, connected with no error.
const PY_BLOCKING_CONNECT: &str = r#"
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
try:
    s.connect((sys.argv[1], 9))
    print("connected")
except ConnectionRefusedError:
    print("refused")
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.connect((sys.argv[1], 7))
print(s.getpeername()[1], s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))
"#;

#[test]
fn blocking_connect_reports_the_kernels_outcome() {
    let Some(s) = stack("py-blocking", PORTS) else {
        return;
    };
    let out = run(&s, "python3", &["-c", PY_BLOCKING_CONNECT, zone::ECHO], b"");
    assert_eq!(ok(&s, &out, "python blocking connect"), "refused\n7 0\n");
}

/// Options set before connect reach the host's socket (which the program's fd becomes); options
/// never set keep the host socket's defaults.

#[test]
fn socket_options_set_before_connect_reach_the_host_socket() {
    let Some(s) = stack("py-options", PORTS) else {
        return;
    };
    let out = run(&s, "python3", &["-c", PY_SOCKET_OPTIONS, zone::ECHO], b"");
    check_socket_options(&ok(&s, &out, "python options"));
}

#[test]
fn python3_server_fork_thread_and_listener_close() {
    let Some(s) = stack("py-server", PORTS) else {
        return;
    };
    let mut server = s.legacy("timeout").unwrap();
    server
        .args(["30", "python3", "-c", PY_SERVER, "8082"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let server = server.spawn().unwrap();
    wait_listening(&s, 8082, true);
    assert_eq!(world_client(&s, 8082, b"one"), b"child:one");
    assert_eq!(world_client(&s, 8082, b"two"), b"thread:two");
    let out = server.wait_with_output().unwrap();
    let stdout = ok(&s, &out, "python server");
    let peer = s.dummy_for(addr::CLIENT).unwrap();
    assert_eq!(
        stdout,
        format!("listening ('0.0.0.0', 8082) True True\npeers {peer} {peer} True\nclosed\n"),
        "{}",
        text(&out.stderr)
    );
    // Closing the listener closed host-server's IPv6 listener.
    wait_listening(&s, 8082, false);
}

#[test]
fn dup2_onto_stdio_with_nc_e() {
    let Some(s) = stack("nc-e", PORTS) else {
        return;
    };
    // nc -e: the accepted connection is dup2'd onto cat's stdin and stdout.
    let mut server = s.legacy("timeout").unwrap();
    server
        .args(["30", "nc", "-l", "-p", "8084", "-e", "/bin/cat"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let server = server.spawn().unwrap();
    wait_listening(&s, 8084, true);
    assert_eq!(
        world_client(&s, 8084, b"echoed by cat\n"),
        b"echoed by cat\n"
    );
    let out = server.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn inbound_peer_is_traced_back_to_its_ipv6_address() {
    let Some(s) = stack("inbound", PORTS) else {
        return;
    };
    let www = s.world.path("py-www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("page.txt"), "python http.server in legacy\n").unwrap();
    let mut server = s.legacy("python3").unwrap();
    server
        .args([
            "-m",
            "http.server",
            "8083",
            "--bind",
            "0.0.0.0",
            "--directory",
        ])
        .arg(&www);
    server.stdout(Stdio::null()).stderr(Stdio::piped());
    let mut server = server.spawn().unwrap();
    wait_listening(&s, 8083, true);
    let page = text(&world_client(&s, 8083, b"GET /page.txt HTTP/1.0\r\n\r\n"));
    assert!(page.ends_with("python http.server in legacy\n"), "{page}");
    server.kill().unwrap();
    let log = text(&server.wait_with_output().unwrap().stderr);
    // The log names the peer by its dummy; `outsock mappings` traces it to the client's IPv6.
    let logged: Ipv4Addr = log
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("{log}"));
    let table = s.mappings(&["--direction", "inbound-peer"]).unwrap();
    let row = table
        .lines()
        .find(|l| l.starts_with(&logged.to_string()))
        .unwrap_or_else(|| panic!("{logged} not in\n{table}"));
    assert!(
        row.contains(&addr::CLIENT.to_string()) && row.contains("inbound-peer"),
        "{row}"
    );
}

const PY_RESOLVER: &str = r#"
import ctypes, socket, sys
multi, v6only = sys.argv[1], sys.argv[2]
# gethostbyname_r (gethostbyname_ex) and getaddrinfo agree.
name, aliases, addrs = socket.gethostbyname_ex(multi)
print(name, len(addrs), sorted(addrs) == sorted({a[4][0] for a in socket.getaddrinfo(multi, 80, socket.AF_INET)}))
# gethostbyaddr_r and getnameinfo: a dummy maps back to its name (PTR answered by dns-cache).
print(socket.gethostbyaddr(addrs[0])[0])
print(socket.getnameinfo((addrs[0], 80), 0))
# res_query through libc, as a C program calls it: one A record in the answer.
libc = ctypes.CDLL(None)
buf = ctypes.create_string_buffer(512)
n = libc.__res_query(v6only.encode(), 1, 1, buf, 512)
ancount = int.from_bytes(buf.raw[6:8], "big")
print(n > 12, ancount, socket.inet_ntoa(buf.raw[n-4:n]) == socket.gethostbyname(v6only))
print(libc.__res_query(b"missing.outsock.test", 1, 1, buf, 512))
"#;

#[test]
fn resolver_functions_answer_from_dns_cache() {
    let Some(s) = stack("resolver", PORTS) else {
        return;
    };
    let out = run(
        &s,
        "python3",
        &["-c", PY_RESOLVER, zone::MULTI, zone::V6ONLY],
        b"",
    );
    assert_eq!(
        ok(&s, &out, "python resolver calls"),
        format!(
            "{m} 3 True\n{m}\n('{m}', 'http')\nTrue 1 True\n-1\n",
            m = zone::MULTI
        )
    );
    // netcat-traditional -v names the peer with gethostbyaddr.
    let out = run(&s, "nc", &["-v", "-q", "3", zone::ECHO, "7"], b"x\n");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!("{} [", zone::ECHO)) && stderr.contains("open"),
        "{stderr}"
    );
}

/// kdig (Knot) builds its own DNS packets and sends them over UDP and TCP sockets itself.
/// (BIND's dig, whose libuv sends and receives through `syscall(3)`, is tests/dig.rs.)
#[test]
fn kdig_with_its_own_dns_code() {
    let Some(s) = stack("kdig", PORTS) else {
        return;
    };
    let server = format!("@{}", testworld::stack::GUEST_DNS);
    let udp = run(
        &s,
        "kdig",
        &[&server, "+short", "+time=3", "+retry=1", "A", zone::MULTI],
        b"",
    );
    let mut got: Vec<Ipv4Addr> = ok(&s, &udp, "kdig")
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    got.sort();
    let mut want: Vec<Ipv4Addr> = zone::MULTI_AAAA
        .iter()
        .map(|a| s.dummy_for(*a).unwrap())
        .collect();
    want.sort();
    assert_eq!(got, want);
    let tcp = run(
        &s,
        "kdig",
        &[&server, "+tcp", "+short", "+time=3", "A", zone::V6ONLY],
        b"",
    );
    assert_eq!(
        ok(&s, &tcp, "kdig +tcp").trim(),
        s.dummy_for(addr::HTTP).unwrap().to_string()
    );
}

#[test]
fn programs_fail_fast_when_host_server_is_stopped() {
    let Some(mut s) = stack("stopped", PORTS) else {
        return;
    };
    s.stop_host();
    for (program, args) in [
        ("nc", vec!["-w", "5", "10.170.160.2", "80"]),
        (
            "curl",
            vec!["-4", "-sS", "-m", "20", "http://v6only.outsock.test/"],
        ),
        (
            "wget",
            vec![
                "-4",
                "-q",
                "-T",
                "20",
                "-O",
                "-",
                "http://v6only.outsock.test/",
            ],
        ),
        (
            "busybox",
            vec!["wget", "-q", "-O", "-", "http://v6only.outsock.test/"],
        ),
    ] {
        let t = Instant::now();
        let out = run(&s, program, &args, b"");
        let took = t.elapsed();
        assert!(
            !out.status.success(),
            "{program} succeeded without host-server"
        );
        assert!(took < Duration::from_secs(5), "{program} took {took:?}");
        assert!(
            text(&out.stderr).contains("liboutsock: cannot reach host-server"),
            "{program}: {}",
            text(&out.stderr)
        );
    }
}

/// liboutsock keeps the stream of a connect whose socket host-server passed or lent, for the
/// next request (one for a program that connects from one thread at a time, used within a
/// second): the program sees one extra Unix socket, the same across connects; a forked child opens its own; one the program closed
/// behind the shim's back (closerange) is forgotten — the file that takes its number is left
/// alone — and an old one is replaced.
const PY_KEPT: &str = r#"
import os, socket, sys, time
def sockets():
    # The process's Unix sockets (its streams to host-server); the spare sockets host-server
    # lent are TCP ones of another namespace.
    with open("/proc/net/unix") as f:
        unix = {"socket:[%s]" % line.split()[6] for line in list(f)[1:]}
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            t = os.readlink("/proc/self/fd/" + fd)
        except OSError:
            continue
        if t in unix:
            out.add(t)
    return out
def echo(tag):
    c = socket.create_connection((sys.argv[1], 7), timeout=10)
    c.sendall(tag)
    assert c.recv(16) == tag
    c.close()
seen = []
for i in range(3):
    echo(b"k%d" % i)
    seen.append(sockets())
print("reused", len(seen[0]) == 1 and seen[0] == seen[1] == seen[2])
pid = os.fork()
if pid == 0:
    echo(b"child")
    mine = sockets()
    os._exit(0 if len(mine) == 1 and mine != seen[0] else 3)
_, status = os.waitpid(pid, 0)
print("child", os.waitstatus_to_exitcode(status))
os.closerange(3, 4096)
with open(sys.argv[2], "w") as f:
    f.write("untouched")
fds = [os.open(sys.argv[2], os.O_RDONLY) for _ in range(4)]
echo(b"after")
print("file", all(os.pread(fd, 32, 0) == b"untouched" for fd in fds))
before = sockets()
time.sleep(1.5)
echo(b"old")
after = sockets()
print("renewed", len(after) == 1 and after != before)
"#;

#[test]
fn liboutsock_keeps_one_stream_per_process_for_its_connects() {
    let Some(s) = stack("py-kept", PORTS) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kept-probe.txt");
    let out = run(
        &s,
        "python3",
        &["-c", PY_KEPT, zone::ECHO, &file.display().to_string()],
        b"",
    );
    assert_eq!(
        ok(&s, &out, "python kept stream"),
        "reused True\nchild 0\nfile True\nrenewed True\n"
    );
}

/// liboutsock keeps a stream for each thread connecting at the same moment (up to its slots):
/// a burst of six threads leaves several kept streams, at most one per thread (six threads
/// released together connect at once: all six are kept here), the next burst takes them up
/// again instead of opening new ones, and once they are too old to be used the next connect
/// closes them all — the program is left with the one stream it used.
const PY_KEPT_THREADS: &str = r#"
import os, socket, sys, threading, time
def sockets():
    # The process's Unix sockets (its streams to host-server); the spare sockets host-server
    # lent are TCP ones of another namespace.
    with open("/proc/net/unix") as f:
        unix = {"socket:[%s]" % line.split()[6] for line in list(f)[1:]}
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            t = os.readlink("/proc/self/fd/" + fd)
        except OSError:
            continue
        if t in unix:
            out.add(t)
    return out
def echo(tag):
    c = socket.create_connection((sys.argv[1], 7), timeout=10)
    c.sendall(tag)
    assert c.recv(16) == tag
    c.close()
def burst(n):
    gate = threading.Barrier(n)
    def one(i):
        gate.wait()
        for k in range(3):
            echo(b"t%d.%d" % (i, k))
    ts = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
burst(6)
first = sockets()
burst(6)
second = sockets()
print("several", 2 <= len(first) <= 6 and 1 <= len(second) <= 6)
print("reused", len(first & second) >= 1)
time.sleep(1.5)
echo(b"old")
after = sockets()
print("renewed", len(after) == 1 and not (after & (first | second)))
"#;

#[test]
fn liboutsock_keeps_a_stream_per_concurrent_thread() {
    let Some(s) = stack("py-kept-threads", PORTS) else {
        return;
    };
    let out = run(&s, "python3", &["-c", PY_KEPT_THREADS, zone::ECHO], b"");
    assert_eq!(
        ok(&s, &out, "python kept streams, threads"),
        "several True\nreused True\nrenewed True\n"
    );
}

/// Connects to the echo server by name again and again, checks that a socket made then (a lent
/// one standing in) looks and works as an AF_INET one on loopback, then forks and connects from
/// both processes at once; every echo must come back as sent.
const PY_SHORT_CONNECTIONS: &str = r#"
import os, socket, sys
def one(tag):
    c = socket.create_connection((sys.argv[1], 7), timeout=10)
    c.sendall(tag.encode())
    c.shutdown(socket.SHUT_WR)
    got = b""
    while True:
        b = c.recv(64)
        if not b:
            break
        got += b
    c.close()
    assert got == tag.encode(), (got, tag)
for i in range(40):
    one("first-%d" % i)
# A new socket now stands in with a lent one: still AF_INET to the program, and a loopback
# server and client still work (each becomes an AF_INET socket of this namespace first).
s = socket.socket()
assert s.getsockname() == ("0.0.0.0", 0), s.getsockname()
assert s.getsockopt(socket.SOL_SOCKET, socket.SO_DOMAIN) == socket.AF_INET
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 0))
s.listen(1)
assert s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1
c = socket.create_connection(("127.0.0.1", s.getsockname()[1]), timeout=5)
a, peer = s.accept()
assert peer[0] == "127.0.0.1", peer
a.sendall(b"lo")
assert c.recv(2) == b"lo"
for x in (a, c, s):
    x.close()
pid = os.fork()
who = "child" if pid == 0 else "parent"
for i in range(20):
    one("%s-%d-%d" % (who, os.getpid(), i))
if pid == 0:
    os._exit(0)
_, status = os.waitpid(pid, 0)
assert status == 0, status
print("ok")
"#;

/// Restarts host-server with `from` replaced by `to` in its settings, runs
/// [`PY_SHORT_CONNECTIONS`] through outsock, and returns host-server's metrics page after it.
fn short_connections(s: &mut Stack, from: &str, to: &str, what: &str) -> String {
    s.stop_host();
    outsock_e2e::edit(s, "host-server.toml", from, to);
    s.start_host().unwrap();
    let out = run(s, "python3", &["-c", PY_SHORT_CONNECTIONS, zone::ECHO], b"");
    assert_eq!(ok(s, &out, what).trim(), "ok");
    outsock_e2e::scrape(s, "[::1]:9643")
}

#[test]
fn short_connections_are_made_on_lent_sockets_and_a_fork_gets_its_own() {
    let Some(mut s) = stack("lent", "") else {
        return;
    };
    let metrics = "metrics_listen = \"[::1]:9643\"";
    let page = short_connections(&mut s, "metrics_listen = \"\"", metrics, "lent sockets");
    let lent = outsock_e2e::series(&page, "outsock_host_sockets_lent_total");
    let routes = outsock_e2e::series(&page, "outsock_host_routes_lent_total");
    // 80 connections, each on a lent socket: host-server connected none itself, and routed far
    // fewer times than the program connected (routes and spares are kept).
    assert!(lent >= 80, "{page}");
    assert!((1..20).contains(&routes), "{page}");
    assert!(!page.contains("outsock_host_connects_total"), "{page}");

    // Switched off, host-server connects every one itself.
    let off = format!("{metrics}\nlend_sockets = false");
    let page = short_connections(&mut s, metrics, &off, "without lending");
    let connects =
        outsock_e2e::series(&page, "outsock_host_connects_total{result=\"in_progress\"}")
            + outsock_e2e::series(&page, "outsock_host_connects_total{result=\"ok\"}");
    assert_eq!(connects, 80, "{page}");
    assert_eq!(
        outsock_e2e::series(&page, "outsock_host_sockets_lent_total"),
        0,
        "{page}"
    );
}
