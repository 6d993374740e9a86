//! Exhaustion defences and the open-resolver guard of outsock-dns-cache, end to end in the
//! IPv6-only test world (DESIGN.md §9, §11):
//! - a flood of 10,000 UDP sources from one /64 towards a guest's UDP socket never holds more
//!   than `source_dummies_per_64` source dummies, and never takes a pinned one;
//! - a non-loopback listener needs `allow_clients`, public metrics need `metrics_public`
//!   (start-up errors naming the key), and a client outside the list is answered REFUSED.
//!
//! Everything runs in namespaces the test world created: the daemons in `host`, the senders and
//! DNS clients in `world`; the flooding /64 is an AnyIP local route inside `world`.

// This whole file is test code; its helpers may unwrap too.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use shared_proto::frame;
use shared_proto::lookup::{LookupOp, LookupReply, LookupRequest, LookupResponse};
use shared_proto::outsource::{ToGuest, ToHost, UdpRequest};
use testworld::stack::{artefact, Stack};
use testworld::{addr, zone, Daemon, World};

/// The /64 the flood comes from (AnyIP in `world`, routed there from `host`).
const FLOOD_NET: &str = "fd00:67::";
/// The cap under test.
const CAP: usize = 16;
/// The guest's UDP port.
const PORT: u16 = 5555;
/// Sources in the flood.
const SOURCES: u32 = 10_000;

/// Sends one datagram from each of `n` addresses `NET:start` … of one /64, each from its own
/// socket bound there with IPV6_FREEBIND, pacing `pace` seconds between them.
const SENDER: &str = r#"
import socket, sys, time
net, dst, port, start, n, pace = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
deadline = time.time() + 60
for i in range(start, start + n):
    if time.time() > deadline:
        break
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, 78, 1)  # IPV6_FREEBIND
    s.bind(("%s%x" % (net, i), 0))
    s.sendto(b"x", (dst, port))
    s.close()
    if pace:
        time.sleep(pace)
"#;

fn sender(world: &World, start: u32, n: u32, pace: f64) -> Command {
    let mut cmd = world.world().command("/usr/bin/python3");
    cmd.args(["-c", SENDER, FLOOD_NET, &addr::HOST.to_string()])
        .arg(PORT.to_string())
        .arg(start.to_string())
        .arg(n.to_string())
        .arg(pace.to_string());
    cmd
}

fn lookup(s: &mut UnixStream, id: u32, op: LookupOp) -> LookupReply {
    s.write_all(&frame::to_vec(&LookupRequest { id, op }).unwrap())
        .unwrap();
    let mut buf = Vec::new();
    loop {
        if let Some((r, _)) = frame::decode::<LookupResponse>(&buf).unwrap() {
            assert_eq!(r.id, id);
            return r.reply;
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "dns.sock closed");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Source dummies per the database, and the rows of the flooding /64.
fn source_rows(db: &Path) -> (usize, usize) {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    let count = |sql: &str| -> usize {
        c.query_row(sql, [], |r| r.get::<_, i64>(0))
            .map(|n| usize::try_from(n).unwrap())
            .unwrap()
    };
    (
        count("select count(*) from mappings where direction = 'inbound-peer'"),
        count(&format!(
            "select count(*) from mappings where direction = 'inbound-peer' \
             and ipv6 like '{FLOOD_NET}%'"
        )),
    )
}

#[test]
fn a_flood_from_one_64_stays_within_its_cap_and_spares_pinned_dummies() {
    if !testworld::skip_unless_root("a_flood_from_one_64") {
        return;
    }
    let stack = Stack::start_with(
        "dc-flood",
        &format!("source_dummies_per_64 = {CAP}\n"),
        &format!("request_timeout_ms = 30000\n[listen]\nallowed_ports = [{PORT}]\n"),
    )
    .unwrap();
    let w = &stack.world;
    w.world()
        .ip(&[
            "-6",
            "route",
            "add",
            "local",
            &format!("{FLOOD_NET}/64"),
            "dev",
            "lo",
        ])
        .unwrap();
    w.host()
        .ip(&[
            "-6",
            "route",
            "add",
            &format!("{FLOOD_NET}/64"),
            "via",
            &addr::WORLD.to_string(),
        ])
        .unwrap();

    // A process's UDP socket bound to the guest port: an association that receives.
    let mut assoc = UnixStream::connect(stack.host_sock()).unwrap();
    assoc
        .write_all(
            &frame::to_vec(&ToHost::Udp(UdpRequest {
                bind: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, PORT),
                channel: false,
            }))
            .unwrap(),
        )
        .unwrap();
    // A process's association answers with its packet channel attached: one datagram frame per
    // packet from then on.
    let mut head = [0u8; 4096];
    let (n, channel) =
        outsock_fdpass::recv_with_fd(std::os::fd::AsRawFd::as_raw_fd(&assoc), &mut head).unwrap();
    let (answer, _) = frame::decode::<ToGuest>(&head[..n]).unwrap().unwrap();
    assert!(matches!(answer, ToGuest::Associated { .. }), "{answer:?}");
    let channel = std::os::unix::net::UnixDatagram::from(channel.expect("a packet channel"));
    let (tx, rx) = mpsc::channel::<Ipv4Addr>();
    std::thread::spawn(move || {
        let mut packet = vec![0u8; 70_000];
        while let Ok(n) = channel.recv(&mut packet) {
            if n == 0 {
                return;
            }
            if let Ok(Some((ToGuest::Datagram(d), _))) = frame::decode::<ToGuest>(&packet[..n]) {
                if tx.send(*d.addr.ip()).is_err() {
                    return;
                }
            }
        }
    });

    // The first source gets a dummy, which a live connection then pins (as host-server pins
    // a dummy while a connection through it is open).
    assert!(sender(w, 1, 1, 0.0).status().unwrap().success());
    let first = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let mut pins = UnixStream::connect(stack.dns_sock()).unwrap();
    pins.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(
        lookup(&mut pins, 1, LookupOp::Pin { dummy: first }),
        LookupReply::Pinned { pins: 1 }
    );

    // The flood, paced so that host-server takes in most of it; the table is sampled meanwhile.
    let mut flood = sender(w, 2, SOURCES, 0.0003).spawn().unwrap();
    let mut worst = 0;
    let deadline = Instant::now() + Duration::from_secs(90);
    while flood.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the flood did not end");
        worst = worst.max(source_rows(&stack.db()).1);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(flood.wait().unwrap().success());
    // Let host-server and dns-cache take in what is still queued.
    let mut received: Vec<Ipv4Addr> = Vec::new();
    while let Ok(a) = rx.recv_timeout(Duration::from_secs(2)) {
        received.push(a);
    }
    let (all, of_flood) = source_rows(&stack.db());
    worst = worst.max(of_flood);
    let mut distinct = received.clone();
    distinct.sort_unstable();
    distinct.dedup();
    println!(
        "datagrams delivered {}, distinct source dummies {}, rows of the /64 now {of_flood} \
         (worst sampled {worst}), source rows {all}",
        received.len(),
        distinct.len()
    );
    assert!(worst <= CAP, "the /64 held {worst} source dummies");
    assert!(
        distinct.len() <= CAP,
        "the guest saw {} dummies",
        distinct.len()
    );
    assert!(
        received.len() >= 1_000,
        "only {} datagrams reached the guest:\n{}",
        received.len(),
        stack.logs()
    );
    // The pinned dummy still stands for the first source.
    let LookupReply::Resolved(m) = lookup(&mut pins, 2, LookupOp::Resolve { dummy: first }) else {
        panic!("the pinned dummy is gone");
    };
    assert_eq!(m.v6, format!("{FLOOD_NET}1").parse::<Ipv6Addr>().unwrap());
    assert_eq!(m.pins, 1);
    let LookupReply::Stats(stats) = lookup(&mut pins, 3, LookupOp::Stats) else {
        panic!("no stats");
    };
    let reused = stats
        .iter()
        .find(|c| c.name == "prefix_reused")
        .unwrap()
        .value;
    assert!(reused > 1_000, "prefix_reused = {reused}");
    // `outsock mappings` tells the same story.
    let listing = stack.mappings(&[]).unwrap();
    assert!(listing.lines().filter(|l| l.contains(FLOOD_NET)).count() <= CAP);
}

/// dns-cache started in `host` with `extra` settings, and its log.
fn dns_cache(world: &World, name: &str, extra: &str) -> (Daemon, std::path::PathBuf) {
    let cfg = world.path(&format!("{name}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "upstreams = [\"[{dns}]:53\"]\nupstream_timeout_ms = 1000\ndatabase = \"{db}\"\n\
             lookup_socket = \"{sock}\"\n{extra}\n",
            dns = addr::DNS,
            db = world.path(&format!("{name}.sqlite3")).display(),
            sock = world.path(&format!("{name}.sock")).display(),
        ),
    )
    .unwrap();
    let log = world.path(&format!("{name}.log"));
    let mut cmd = world.host().command(artefact("outsock-dns-cache").unwrap());
    cmd.arg("--config").arg(&cfg);
    cmd.stderr(std::fs::File::create(&log).unwrap());
    (world.host().spawn(name, cmd).unwrap(), log)
}

/// Waits for `d` to exit by itself; its log.
fn refused_start(mut d: Daemon, log: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = d.try_status().unwrap() {
            assert!(!status.success());
            return std::fs::read_to_string(log).unwrap();
        }
        assert!(Instant::now() < deadline, "the daemon started");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn dig_status(world: &World, from: Ipv6Addr, server: Ipv6Addr, tcp: bool) -> String {
    let mut cmd = world.world().command("dig");
    cmd.arg(format!("@{server}"))
        .args(["-p", "53", "-b"])
        .arg(from.to_string())
        .args(["+tries=1", "+time=3", zone::V6ONLY, "A"]);
    if tcp {
        cmd.arg("+tcp");
    }
    let out = String::from_utf8(cmd.output().unwrap().stdout).unwrap();
    out.split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or_else(|| panic!("no status in {out}"))
        .to_owned()
}

#[test]
fn never_an_open_resolver_by_accident() {
    if !testworld::skip_unless_root("never_an_open_resolver_by_accident") {
        return;
    }
    let world = World::start("dc-open").unwrap();
    // A non-loopback listener without allow_clients, and public metrics without the flag.
    let (d, log) = dns_cache(
        &world,
        "open",
        &format!("listen = [\"[{}]:53\"]", addr::HOST),
    );
    let text = refused_start(d, &log);
    assert!(text.contains("allow_clients"), "{text}");
    let (d, log) = dns_cache(&world, "pubm", "metrics = \"[::]:9153\"");
    let text = refused_start(d, &log);
    assert!(text.contains("metrics_public"), "{text}");
    // host-server: the same rule for its metrics.
    let cfg = world.path("hs.toml");
    std::fs::write(
        &cfg,
        format!(
            "socket = \"{}\"\nmetrics_listen = \"[::]:9641\"\n",
            world.path("hs.sock").display()
        ),
    )
    .unwrap();
    let log = world.path("hs.log");
    let mut cmd = world
        .host()
        .command(artefact("outsock-host-server").unwrap());
    cmd.arg("--config").arg(&cfg);
    cmd.stderr(std::fs::File::create(&log).unwrap());
    let text = refused_start(world.host().spawn("hs", cmd).unwrap(), &log);
    assert!(text.contains("metrics_public"), "{text}");

    // With the list: the listed client is answered, another is REFUSED (UDP and TCP), counted.
    let (mut d, log) = dns_cache(
        &world,
        "listed",
        &format!(
            "listen = [\"[{}]:53\"]\nallow_clients = [\"{}/128\"]\nmetrics = \"\"",
            addr::HOST,
            addr::WORLD
        ),
    );
    let sock = world.path("listed.sock");
    let deadline = Instant::now() + Duration::from_secs(15);
    while UnixStream::connect(&sock).is_err() {
        assert!(
            d.try_status().unwrap().is_none(),
            "{}",
            std::fs::read_to_string(&log).unwrap()
        );
        assert!(Instant::now() < deadline, "dns-cache did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        dig_status(&world, addr::WORLD, addr::HOST, false),
        "NOERROR"
    );
    assert_eq!(
        dig_status(&world, addr::CLIENT, addr::HOST, false),
        "REFUSED"
    );
    assert_eq!(
        dig_status(&world, addr::CLIENT, addr::HOST, true),
        "REFUSED"
    );
    assert_eq!(dig_status(&world, addr::WORLD, addr::HOST, true), "NOERROR");
    let mut s = UnixStream::connect(&sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let LookupReply::Stats(stats) = lookup(&mut s, 1, LookupOp::Stats) else {
        panic!("no stats");
    };
    let refused = stats.iter().find(|c| c.name == "refused_clients").unwrap();
    assert_eq!(refused.value, 2);
    d.stop(Duration::from_secs(5));
}
