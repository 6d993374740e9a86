//! The destination policy end to end (docs/security.md, "Destinations"): names whose addresses
//! point back at the host (loopback, link-local, IPv4-mapped, the host's own address) or into an
//! operator's deny prefix get NODATA from dns-cache through the guest DNS; mappings to such
//! addresses made before the policy existed (rows written into the database before dns-cache
//! starts) are refused by host-server with EACCES, by TCP and by UDP, for an unmodified python3
//! in `legacy`; and a sentinel service bound on the `host` namespace's own addresses (`[::]`,
//! so `[::1]` too) is never reached. With IPv4 egress the same rules hold on IPv4, while a real
//! A record is passed through and reached over IPv4 inside the test world, and an address the
//! host gains while the daemons run is refused at once (followed over netlink).

// Test code throughout; helpers outside #[test] functions unwrap too.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, Ipv6Addr, TcpStream};
use std::process::{Output, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use outsock_e2e::{edit, scrape};
use testworld::stack::{Stack, GUEST_DNS};
use testworld::{addr, zone};

/// The sentinel's port in `host` (TCP and UDP).
const SENTINEL_PORT: u16 = 7070;

/// Listens on `[::]:7070` (not V6ONLY, so IPv4 too) in `host`, TCP and UDP, and writes a line to
/// argv[1] for every connection or datagram.
const SENTINEL: &str = r#"
import socket, sys, threading
out = open(sys.argv[1], "a", buffering=1)
t = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
t.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("::", int(sys.argv[2])))
t.listen(16)
u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
u.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
u.bind(("::", int(sys.argv[2])))
def tcp():
    while True:
        c, a = t.accept()
        out.write("tcp %s\n" % a[0])
        c.close()
def udp():
    while True:
        d, a = u.recvfrom(2048)
        out.write("udp %s\n" % a[0])
threading.Thread(target=tcp, daemon=True).start()
threading.Thread(target=udp, daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"#;

/// A legacy client: for each `ADDRESS:PORT` argument, a TCP connect, a connected UDP socket and
/// an unconnected sendto; prints `ADDRESS:PORT tcp udp-connect sendto` with an errno name or
/// `ok` for each.
const PROBE: &str = r#"
import errno, socket, sys
def name(e):
    return errno.errorcode.get(e.errno, str(e.errno))
for t in sys.argv[1:]:
    ip, port = t.rsplit(":", 1)
    port = int(port)
    c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    c.settimeout(5)
    try:
        c.connect((ip, port)); r1 = "ok"
    except OSError as e:
        r1 = name(e)
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        u.connect((ip, port)); u.send(b"leak"); r2 = "ok"
    except OSError as e:
        r2 = name(e)
    v = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        v.sendto(b"leak", (ip, port)); r3 = "ok"
    except OSError as e:
        r3 = name(e)
    print(t, r1, r2, r3, flush=True)
"#;

/// A TCP echo server on argv[1] (IPv4), one connection at a time.
const ECHO4: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 7))
s.listen(8)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    data = b""
    while True:
        b = c.recv(4096)
        if not b:
            break
        data += b
    c.sendall(data)
    c.close()
"#;

/// Runs `program args…` in `legacy` through outsock, bounded to 60 s.
fn run(s: &Stack, program: &str, args: &[&str]) -> Output {
    let mut cmd = s.legacy("timeout").unwrap();
    cmd.arg("60").arg(program).args(args);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Asks the guest DNS for `name`'s A records with kdig (its own DNS code) run through outsock.
fn kdig(s: &Stack, name: &str) -> String {
    let out = run(
        s,
        "kdig",
        &[&format!("@{GUEST_DNS}"), "+time=3", "+retry=1", "A", name],
    );
    assert!(out.status.success(), "kdig {name}: {}", text(&out.stderr));
    text(&out.stdout)
}

/// Asserts NOERROR with an empty answer section (NODATA).
fn assert_nodata(s: &Stack, name: &str) {
    let out = kdig(s, name);
    assert!(
        out.contains("status: NOERROR") && out.contains("ANSWER: 0;"),
        "{name} should be NODATA:\n{out}\n{}",
        s.logs()
    );
}

fn append(s: &Stack, file: &str, more: &str) {
    let p = s.world.path(file);
    let t = std::fs::read_to_string(&p).unwrap();
    std::fs::write(&p, format!("{t}{more}")).unwrap();
}

/// Starts the sentinel in `host`; returns the file it writes hits to.
fn sentinel(s: &mut Stack) -> std::path::PathBuf {
    let hits = s.world.path("sentinel.log");
    std::fs::write(&hits, "").unwrap();
    let mut cmd = s.world.host().command("python3");
    cmd.arg("-c")
        .arg(SENTINEL)
        .arg(&hits)
        .arg(SENTINEL_PORT.to_string())
        .stdout(Stdio::piped());
    let mut d = s.world.host().spawn("sentinel", cmd).unwrap();
    let mut line = String::new();
    BufReader::new(d.take_stdout().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    s.world.adopt(d);
    hits
}

/// The positive control: the sentinel does count a hit from inside `host` itself.
fn assert_sentinel_works(s: &Stack, hits: &std::path::Path) {
    s.world
        .host()
        .run(|| TcpStream::connect(("::1", SENTINEL_PORT)).map(drop))
        .unwrap()
        .unwrap();
    for _ in 0..100 {
        if std::fs::read_to_string(hits).unwrap().contains("tcp ::1") {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the sentinel never saw the control connection");
}

fn now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// Mappings made "before the policy existed": rows written while dns-cache is stopped.
fn write_mappings(s: &Stack, rows: &[(Ipv4Addr, Ipv6Addr)]) {
    let now = now_ms();
    let mut sql = String::from("BEGIN;");
    for (v4, v6) in rows {
        sql.push_str(&format!(
            "INSERT INTO mappings (ipv4, ipv6, direction, created_ms, last_used_ms, expires_ms, pins) \
             VALUES ({}, '{v6}', 'synthesised', {now}, {now}, {}, 0);",
            u32::from(*v4),
            now + 3_600_000
        ));
    }
    sql.push_str("COMMIT;");
    let out = std::process::Command::new("sqlite3")
        .arg(s.db())
        .arg(sql)
        .output()
        .unwrap();
    assert!(out.status.success(), "sqlite3: {}", text(&out.stderr));
}

fn probe(s: &Stack, targets: &[String]) -> Vec<String> {
    let mut args = vec!["-c", PROBE];
    args.extend(targets.iter().map(String::as_str));
    let out = run(s, "python3", &args);
    assert!(
        out.status.success(),
        "probe failed: {}\n{}",
        text(&out.stderr),
        s.logs()
    );
    text(&out.stdout).lines().map(str::to_owned).collect()
}

#[test]
fn refused_destinations_get_nodata_and_eacces_and_nothing_reaches_the_host() {
    if !testworld::skip_unless_root("destinations") {
        return;
    }
    let deny = format!("\n[destinations]\ndeny = [\"{}\"]\n", addr::DENIED_PREFIX);
    let mut s = Stack::start("destinations", &deny).unwrap();
    let hits = sentinel(&mut s);
    // Restart both daemons with metrics, dns-cache with the same deny prefix, and mappings to
    // refused addresses already in the database.
    s.stop_host();
    s.stop_dns();
    edit(
        &s,
        "dns-cache.toml",
        "metrics = \"\"",
        "metrics = \"[::1]:9153\"",
    );
    append(&s, "dns-cache.toml", &deny);
    edit(
        &s,
        "host-server.toml",
        "metrics_listen = \"\"",
        "metrics_listen = \"[::1]:9641\"",
    );
    let refused: [(Ipv4Addr, Ipv6Addr, &str); 5] = [
        (
            Ipv4Addr::new(10, 170, 175, 1),
            Ipv6Addr::LOCALHOST,
            "loopback",
        ),
        (
            Ipv4Addr::new(10, 170, 175, 2),
            zone::LINK_LOCAL_V6,
            "link_local",
        ),
        (
            Ipv4Addr::new(10, 170, 175, 3),
            zone::MAPPED_V6,
            "ipv4_mapped",
        ),
        (Ipv4Addr::new(10, 170, 175, 4), addr::HOST, "host_address"),
        (Ipv4Addr::new(10, 170, 175, 5), addr::DENIED, "denied"),
    ];
    let rows: Vec<(Ipv4Addr, Ipv6Addr)> = refused.iter().map(|(a, b, _)| (*a, *b)).collect();
    write_mappings(&s, &rows);
    s.start_dns().unwrap();
    s.start_host().unwrap();

    // dns-cache: no dummy for any of them.
    for name in [
        zone::LOOPBACK_AAAA,
        zone::LINK_LOCAL_AAAA,
        zone::MAPPED_AAAA,
        zone::SELF_AAAA,
        zone::DENIED_AAAA,
    ] {
        assert_nodata(&s, name);
    }
    let page = scrape(&s, "[::1]:9153");
    for reason in [
        "loopback",
        "link_local",
        "ipv4_mapped",
        "host_address",
        "denied",
    ] {
        assert!(
            page.contains(&format!(
                "outsock_dns_refused_addresses_total{{reason=\"{reason}\"}} 1\n"
            )),
            "{reason}:\n{page}"
        );
    }
    // An allowed ULA name still gets its dummy.
    let ula = kdig(&s, zone::V6ONLY);
    assert!(ula.contains("\tA\t10.170.160."), "{ula}");

    // host-server: the old mappings are refused with EACCES (TCP connect, connected UDP); an
    // unconnected datagram is dropped (counted and logged).
    let targets: Vec<String> = refused
        .iter()
        .map(|(v4, _, _)| format!("{v4}:{SENTINEL_PORT}"))
        .collect();
    let lines = probe(&s, &targets);
    assert_eq!(lines.len(), targets.len(), "{lines:?}");
    for (line, t) in lines.iter().zip(&targets) {
        assert_eq!(line, &format!("{t} EACCES EACCES ok"), "{}", s.logs());
    }
    // The allowed name works through the same program.
    let ok = run(
        &s,
        "python3",
        &[
            "-c",
            "import socket,sys; c=socket.create_connection((sys.argv[1],7),timeout=10); \
             c.sendall(b'allowed'); c.shutdown(socket.SHUT_WR); print(c.recv(64).decode())",
            zone::ECHO,
        ],
    );
    assert_eq!(text(&ok.stdout).trim(), "allowed", "{}", text(&ok.stderr));

    // Nothing reached the host's own services; the control connection does.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(std::fs::read_to_string(&hits).unwrap(), "", "{}", s.logs());
    assert_sentinel_works(&s, &hits);

    let page = scrape(&s, "[::1]:9641");
    for (_, _, reason) in refused {
        // Two refusals (TCP, connected UDP) and one dropped datagram per address.
        assert!(
            page.contains(&format!(
                "outsock_host_refused_destinations_total{{reason=\"{reason}\"}} 3\n"
            )),
            "{reason}:\n{page}"
        );
    }
    let logs = s.logs();
    // The log line names the identity (the legacy program runs as root here).
    assert!(
        logs.lines()
            .any(|l| l.contains("refused destination") && l.contains("uid:0")),
        "{logs}"
    );
}

#[test]
fn ipv4_egress_passes_real_a_and_applies_the_same_policy() {
    if !testworld::skip_unless_root("destinations-v4") {
        return;
    }
    let mut s = Stack::start("destinations-v4", "ipv4_egress = true\n").unwrap();
    // IPv4 on the veth of this world only (TEST-NET-3), and an IPv4 echo server in `world`.
    let plen = addr::V4_PREFIX_LEN;
    s.world
        .host()
        .ip(&[
            "addr",
            "add",
            &format!("{}/{plen}", addr::HOST_V4),
            "dev",
            "h0",
        ])
        .unwrap();
    s.world
        .world()
        .ip(&[
            "addr",
            "add",
            &format!("{}/{plen}", addr::WORLD_V4),
            "dev",
            "w0",
        ])
        .unwrap();
    let mut cmd = s.world.world().command("python3");
    cmd.arg("-c")
        .arg(ECHO4)
        .arg(addr::WORLD_V4.to_string())
        .stdout(Stdio::piped());
    let mut echo = s.world.world().spawn("echo4", cmd).unwrap();
    let mut line = String::new();
    BufReader::new(echo.take_stdout().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    s.world.adopt(echo);
    let hits = sentinel(&mut s);
    s.stop_dns();
    s.stop_host();
    append(&s, "dns-cache.toml", "ipv4_egress = true\n");
    edit(
        &s,
        "host-server.toml",
        "metrics_listen = \"\"",
        "metrics_listen = \"[::1]:9641\"",
    );
    s.start_dns().unwrap();
    s.start_host().unwrap();

    // The real A record is passed through and reached over IPv4.
    let dual = kdig(&s, zone::DUAL);
    assert!(dual.contains(&format!("\tA\t{}", zone::DUAL_A)), "{dual}");
    let out = run(
        &s,
        "python3",
        &[
            "-c",
            "import socket,sys; c=socket.create_connection((sys.argv[1],7),timeout=10); \
             print(c.getpeername()[0]); c.sendall(b'over ipv4'); c.shutdown(socket.SHUT_WR); \
             print(c.recv(64).decode())",
            zone::DUAL,
        ],
    );
    assert_eq!(
        text(&out.stdout),
        format!("{}\nover ipv4\n", addr::WORLD_V4),
        "{}\n{}",
        text(&out.stderr),
        s.logs()
    );

    // The same policy on IPv4: NODATA for loopback, link-local and the host's own address.
    for name in [zone::LOOPBACK_A, zone::LINK_LOCAL_A, zone::SELF_A] {
        assert_nodata(&s, name);
    }
    // An address the host gains while the daemons run is refused too (netlink, not a restart).
    let late = Ipv4Addr::new(203, 0, 113, 2);
    s.world
        .host()
        .ip(&["addr", "add", &format!("{late}/{plen}"), "dev", "h0"])
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // Direct connects and sends to refused IPv4 addresses.
    let targets = vec![
        format!("{}:{SENTINEL_PORT}", zone::LINK_LOCAL_V4),
        format!("{}:{SENTINEL_PORT}", addr::HOST_V4),
        format!("{late}:{SENTINEL_PORT}"),
    ];
    let lines = probe(&s, &targets);
    for (line, t) in lines.iter().zip(&targets) {
        assert_eq!(line, &format!("{t} EACCES EACCES ok"), "{}", s.logs());
    }
    assert_eq!(lines.len(), targets.len());
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(std::fs::read_to_string(&hits).unwrap(), "", "{}", s.logs());
    assert_sentinel_works(&s, &hits);
    let page = scrape(&s, "[::1]:9641");
    for (reason, n) in [("link_local", 3), ("host_address", 6)] {
        assert!(
            page.contains(&format!(
                "outsock_host_refused_destinations_total{{reason=\"{reason}\"}} {n}\n"
            )),
            "{reason}:\n{page}"
        );
    }
}
