//! End-to-end tests of outsock-dns-cache in the test world (DESIGN.md §9): the real binary runs
//! in the `host` namespace with dnsmasq in `world` as its upstream, and is queried with `dig`
//! and over dns.sock. One test per rule of DESIGN.md §5, plus restart after `kill -9`, bad
//! input, pins as leases of their dns.sock connection, systemd notifications, and (on an extra
//! zone served by a dnsmasq of the tests' own in `world`) negative caching and truncation.
//! Each test builds its own world; without root they print why and pass as skipped.

// The whole file is test code (helpers included): a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use shared_proto::lookup::{ListQuery, LookupOp, LookupReply};
use testworld::{addr, skip_unless_root, zone, Daemon, World};

mod common;
use common::*;

#[test]
fn synthesises_a_dummy_a_from_aaaa() {
    world_test!(synthesises_a_dummy_a_from_aaaa);
    let c = Cache::start("synth", "");
    let a = c.a(zone::V6ONLY);
    assert_eq!(a.len(), 1, "one AAAA gives one A");
    assert!(in_pool(a[0]), "{} is not in the destination pool", a[0]);
    assert_ne!(
        a[0],
        Ipv4Addr::new(10, 170, 160, 1),
        "the guest DNS address is reserved"
    );
    assert_eq!(c.a(zone::V6ONLY), a, "the same IPv6 keeps its dummy");
    assert_eq!(resolve(&c, a[0]), addr::HTTP);
}

#[test]
fn n_aaaa_records_give_n_a_records() {
    world_test!(n_aaaa_records_give_n_a_records);
    let c = Cache::start("multi", "");
    let mut a = c.a(zone::MULTI);
    a.sort();
    a.dedup();
    assert_eq!(a.len(), 3);
    let mut v6: Vec<Ipv6Addr> = a.iter().map(|d| resolve(&c, *d)).collect();
    v6.sort();
    let mut want = zone::MULTI_AAAA.to_vec();
    want.sort();
    assert_eq!(v6, want);
}

#[test]
fn cname_chain_is_followed_and_returned() {
    world_test!(cname_chain_is_followed_and_returned);
    let c = Cache::start("cname", "");
    let out = c.dig(&["+noall", "+answer", zone::ALIAS, "A"]);
    let lines: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines[0].contains("CNAME") && lines[0].contains(zone::ALIAS2),
        "{out}"
    );
    assert!(
        lines[1].contains("CNAME") && lines[1].contains(zone::V6ONLY),
        "{out}"
    );
    assert!(
        lines[2].starts_with(zone::V6ONLY) && lines[2].contains("\tA\t"),
        "{out}"
    );
    // The chain ends at the same dummy as the target name.
    assert_eq!(c.a(zone::ALIAS).last(), c.a(zone::V6ONLY).first());
}

#[test]
fn nxdomain_stays_nxdomain() {
    world_test!(nxdomain_stays_nxdomain);
    let c = Cache::start("nx", "");
    assert_eq!(status(&c.dig(&[zone::MISSING, "A"])), "NXDOMAIN");
    let pool_used = match c.lookup(LookupOp::List(ListQuery {
        direction: None,
        offset: 0,
        limit: 1000,
    })) {
        LookupReply::Mappings { total, .. } => total,
        other => panic!("{other:?}"),
    };
    assert_eq!(pool_used, 0, "nothing is allocated for a missing name");
}

#[test]
fn a_only_name_is_nodata_without_ipv4_egress() {
    world_test!(a_only_name_is_nodata_without_ipv4_egress);
    let c = Cache::start("v4only", "");
    let out = c.dig(&[zone::V4ONLY, "A"]);
    assert_eq!(status(&out), "NOERROR", "{out}");
    assert!(out.contains("ANSWER: 0"), "{out}");
}

#[test]
fn dual_stack_name_is_synthesised_when_ipv4_egress_is_off() {
    world_test!(dual_stack_name_is_synthesised_when_ipv4_egress_is_off);
    let c = Cache::start("dual-off", "ipv4_egress = false");
    let a = c.a(zone::DUAL);
    assert_eq!(a.len(), 1);
    assert!(in_pool(a[0]));
    assert_eq!(resolve(&c, a[0]), zone::DUAL_AAAA);
}

#[test]
fn dual_stack_name_passes_real_a_when_ipv4_egress_is_on() {
    world_test!(dual_stack_name_passes_real_a_when_ipv4_egress_is_on);
    let c = Cache::start("dual-on", "ipv4_egress = true");
    assert_eq!(c.a(zone::DUAL), vec![zone::DUAL_A]);
    assert_eq!(c.a(zone::V4ONLY), vec![zone::V4ONLY_A]);
    // A name without A is still synthesised.
    assert!(in_pool(c.a(zone::V6ONLY)[0]));
}

#[test]
fn aaaa_queries_get_nodata() {
    world_test!(aaaa_queries_get_nodata);
    let c = Cache::start("aaaa", "");
    let out = c.dig(&[zone::V6ONLY, "AAAA"]);
    assert_eq!(status(&out), "NOERROR", "{out}");
    assert!(out.contains("ANSWER: 0"), "{out}");
}

#[test]
fn other_types_are_forwarded() {
    world_test!(other_types_are_forwarded);
    let c = Cache::start("txt", "");
    let out = c.dig(&["+short", zone::TXT, "TXT"]);
    assert!(out.contains(zone::TXT_DATA), "{out}");
}

#[test]
fn ptr_of_a_dummy_names_what_it_stands_for() {
    world_test!(ptr_of_a_dummy_names_what_it_stands_for);
    let c = Cache::start("ptr", "");
    let a = c.a(zone::V6ONLY)[0];
    let out = c.dig(&["+short", "-x", &a.to_string()]);
    assert!(out.contains(&format!("{}.", zone::V6ONLY)), "{out}");
    // An unused dummy is NXDOMAIN, never forwarded upstream.
    assert_eq!(status(&c.dig(&["-x", "10.170.175.200"])), "NXDOMAIN");
    // An inbound peer's dummy answers with the reverse name of its IPv6 address.
    let peer = match c.lookup(LookupOp::PeerDummy { v6: addr::HTTP }) {
        LookupReply::Dummy { dummy } => dummy,
        other => panic!("{other:?}"),
    };
    let out = c.dig(&["+short", "-x", &peer.to_string()]);
    assert!(out.contains(&format!("{}.", zone::V6ONLY)), "{out}");
    // Other PTRs are forwarded.
    let out = c.dig(&["+short", "-x", &addr::HTTP.to_string()]);
    assert!(out.contains(&format!("{}.", zone::V6ONLY)), "{out}");
}

#[test]
fn ttl_is_min_of_upstream_and_configured_max() {
    world_test!(ttl_is_min_of_upstream_and_configured_max);
    let c = Cache::start("ttl", "max_ttl = 120");
    let ttl = |name: &str| -> u32 {
        let out = c.dig(&["+noall", "+answer", name, "A"]);
        let line = out
            .lines()
            .find(|l| l.contains("\tA\t"))
            .expect(&out)
            .to_owned();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    assert_eq!(ttl(zone::LONG_TTL), 120);
    assert!(ttl(zone::SHORT_TTL) <= zone::SHORT_TTL_SECS);
}

#[test]
fn synthesised_answers_never_carry_ad() {
    world_test!(synthesised_answers_never_carry_ad);
    let c = Cache::start("ad", "");
    let out = c.dig(&["+adflag", "+dnssec", zone::V6ONLY, "A"]);
    assert_eq!(status(&out), "NOERROR");
    assert!(!flags(&out).contains("ad"), "{out}");
}

#[test]
fn cd_and_do_get_no_synthesis() {
    world_test!(cd_and_do_get_no_synthesis);
    let c = Cache::start("cddo", "");
    let out = c.dig(&["+cd", "+dnssec", "+short", zone::V6ONLY, "A"]);
    assert!(out.trim().is_empty(), "{out}");
    // Either bit alone still synthesises.
    assert_eq!(
        c.dig(&["+cd", "+short", zone::V6ONLY, "A"]).lines().count(),
        1
    );
}

#[test]
fn filters_pass_through_and_never_synthesise() {
    world_test!(filters_pass_through_and_never_synthesise);
    let c = Cache::start(
        "filters",
        &format!(
            "pass_through = [\"{}\"]\nnever_synthesise = [\"{}\"]",
            zone::DUAL,
            zone::V6ONLY
        ),
    );
    assert_eq!(c.a(zone::DUAL), vec![zone::DUAL_A]);
    let out = c.dig(&[zone::V6ONLY, "A"]);
    assert_eq!(status(&out), "NOERROR");
    assert!(out.contains("ANSWER: 0"), "{out}");
    assert!(
        in_pool(c.a(zone::MULTI)[0]),
        "other names are still synthesised"
    );
}

#[test]
fn upstream_failure_is_servfail() {
    world_test!(upstream_failure_is_servfail);
    let mut c = Cache::start("servfail", "");
    // Point upstream at an address in world where nothing listens.
    let toml = std::fs::read_to_string(&c.config).unwrap().replace(
        &format!("[{}]:53", addr::DNS),
        &format!("[{}]:53", addr::NO_HOST),
    );
    std::fs::write(&c.config, toml).unwrap();
    if let Some(mut d) = c.daemon.take() {
        d.stop(Duration::from_secs(5));
    }
    c.launch();
    let out = c.dig(&[zone::V6ONLY, "A"]);
    assert_eq!(status(&out), "SERVFAIL", "{out}");
}

#[test]
fn full_pool_answers_servfail() {
    world_test!(full_pool_answers_servfail);
    // A /29 holds 5 dummies after the DNS address; mappings stay in grace for an hour.
    let c = Cache::start("full", "destination_pool = \"10.170.160.0/29\"");
    let mut given = c.a(zone::MULTI);
    given.extend(c.a(zone::V6ONLY));
    given.extend(c.a(zone::ECHO));
    assert_eq!(given.len(), 5);
    let out = c.dig(&[zone::DUAL, "A"]);
    assert_eq!(status(&out), "SERVFAIL", "{out}");
    // Live names keep their addresses.
    assert_eq!(c.a(zone::V6ONLY), vec![given[3]]);
}

#[test]
fn tcp_and_edns_work() {
    world_test!(tcp_and_edns_work);
    let c = Cache::start("tcp", "");
    let udp = c.a(zone::MULTI);
    let tcp: Vec<Ipv4Addr> = c
        .dig(&["+tcp", "+short", zone::MULTI, "A"])
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect();
    let (mut u, mut t) = (udp.clone(), tcp);
    u.sort();
    t.sort();
    assert_eq!(u, t);
    let out = c.dig(&["+bufsize=1400", zone::V6ONLY, "A"]);
    assert!(out.contains("EDNS: version: 0"), "{out}");
    let out = c.dig(&["+noedns", zone::V6ONLY, "A"]);
    assert!(!out.contains("OPT PSEUDOSECTION"), "{out}");
    let out = c.dig(&["+edns=1", "+noednsnegotiation", zone::V6ONLY, "A"]);
    assert_eq!(status(&out), "BADVERS", "{out}");
}

#[test]
fn dns_sock_serves_lookups_pins_and_guest_queries() {
    world_test!(dns_sock_serves_lookups_pins_and_guest_queries);
    let c = Cache::start("sock", "");
    let a = c.a(zone::V6ONLY)[0];
    let mut conn = Conn::open(&c.sock);
    assert_eq!(
        conn.call(LookupOp::Pin { dummy: a }),
        LookupReply::Pinned { pins: 1 }
    );
    assert_eq!(
        conn.call(LookupOp::Unpin { dummy: a }),
        LookupReply::Pinned { pins: 0 }
    );
    assert_eq!(
        c.lookup(LookupOp::Resolve {
            dummy: Ipv4Addr::new(10, 170, 170, 1)
        }),
        LookupReply::NotFound
    );
    let p1 = c.lookup(LookupOp::PeerDummy { v6: addr::CLIENT });
    let p2 = c.lookup(LookupOp::PeerDummy { v6: addr::CLIENT });
    assert_eq!(p1, p2);
    let LookupReply::Dummy { dummy } = p1 else {
        panic!("{p1:?}")
    };
    assert!(dummy.to_string().starts_with("172.21."), "{dummy}");
    match c.lookup(LookupOp::List(ListQuery {
        direction: None,
        offset: 0,
        limit: 1000,
    })) {
        LookupReply::Mappings { total, .. } => assert_eq!(total, 2),
        other => panic!("{other:?}"),
    }
    assert!(matches!(c.lookup(LookupOp::Stats), LookupReply::Stats(s) if !s.is_empty()));
    assert!(matches!(
        c.lookup(LookupOp::Flush),
        LookupReply::Flushed { .. }
    ));
    // A guest DNS packet through dns.sock gets the same answer as over UDP.
    let query = dns_query(0x4242, zone::V6ONLY, 1);
    let LookupReply::DnsAnswer { packet } = c.lookup(LookupOp::DnsQuery {
        tcp: false,
        packet: query,
    }) else {
        panic!("no DnsAnswer")
    };
    assert_eq!(&packet[..2], &[0x42, 0x42]);
    assert_eq!(packet[3] & 0x0f, 0, "NOERROR");
    assert!(
        packet.windows(4).any(|w| w == a.octets()),
        "the dummy is in the answer"
    );
}

#[test]
fn metrics_are_served_in_prometheus_format() {
    world_test!(metrics_are_served_in_prometheus_format);
    let c = Cache::start("metrics", "");
    c.a(zone::V6ONLY);
    let body = c
        .world
        .host()
        .run(|| {
            let mut s = TcpStream::connect("[::1]:9153").unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        })
        .unwrap();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(
        body.contains("outsock_dns_queries_total{type=\"A\"} 1"),
        "{body}"
    );
    assert!(body.contains("outsock_dns_allocations_total 1"), "{body}");
    assert!(
        body.contains("outsock_dns_pool_used{pool=\"destination\"} 1"),
        "{body}"
    );
}

#[test]
fn invalid_settings_stop_start_up_naming_the_key() {
    world_test!(invalid_settings_stop_start_up_naming_the_key);
    let world = World::start("badcfg").expect("world");
    let cfg = world.path("bad.toml");
    std::fs::write(&cfg, "upstreams = [\"[::1]:53\"]\nmax_ttl = 0\n").unwrap();
    let out = world
        .host()
        .command(env!("CARGO_BIN_EXE_outsock-dns-cache"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_ttl"), "{err}");
    // An environment override is checked the same way.
    std::fs::write(&cfg, "upstreams = [\"[::1]:53\"]\n").unwrap();
    let out = world
        .host()
        .command(env!("CARGO_BIN_EXE_outsock-dns-cache"))
        .arg("--config")
        .arg(&cfg)
        .arg("--check")
        .env("OUTSOCK_DNS_DESTINATION_POOL", "172.21.112.0/24")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("overlap"), "{err}");
}

fn pins_of(c: &Cache, dummy: Ipv4Addr) -> u32 {
    match c.lookup(LookupOp::Resolve { dummy }) {
        LookupReply::Resolved(m) => m.pins,
        other => panic!("Resolve({dummy}) gave {other:?}"),
    }
}

fn listed_pins(c: &Cache) -> Vec<(Ipv4Addr, u32)> {
    match c.lookup(LookupOp::List(ListQuery {
        direction: None,
        offset: 0,
        limit: 1000,
    })) {
        LookupReply::Mappings { entries, .. } => {
            entries.iter().map(|m| (m.dummy, m.pins)).collect()
        }
        other => panic!("{other:?}"),
    }
}

/// Polls `f` every 50 ms until it holds or `limit` passes.

#[test]
fn pins_end_with_the_connection_that_took_them() {
    world_test!(pins_end_with_the_connection_that_took_them);
    // A /29 holds 5 dummies; with a 1 s TTL and no grace, only pins keep a mapping alive.
    let c = Cache::start(
        "pinlease",
        "destination_pool = \"10.170.160.0/29\"\ngrace_secs = 0\nmax_ttl = 1",
    );
    let mut given = c.a(zone::V6ONLY);
    given.extend(c.a(zone::MULTI));
    given.extend(c.a(zone::ECHO));
    assert_eq!(given.len(), 5, "{given:?}");
    let mut holder = Conn::open(&c.sock);
    for d in &given {
        assert_eq!(
            holder.call(LookupOp::Pin { dummy: *d }),
            LookupReply::Pinned { pins: 1 }
        );
    }
    assert_eq!(
        holder.call(LookupOp::Pin { dummy: given[0] }),
        LookupReply::Pinned { pins: 2 }
    );
    // Another connection can neither take nor see-through the holder's pins.
    assert!(
        matches!(
            c.lookup(LookupOp::Unpin { dummy: given[0] }),
            LookupReply::Error { .. }
        ),
        "an Unpin from a connection that holds no pin is refused"
    );
    assert_eq!(pins_of(&c, given[0]), 2);
    // Past TTL and grace, every address is pinned: a new name cannot get one.
    std::thread::sleep(Duration::from_millis(2_200));
    assert_eq!(status(&c.dig(&[zone::DUAL, "A"])), "SERVFAIL");

    // The pinning client is a separate process that holds the connection, and it is killed.
    let stream = holder.stream;
    let mut client = c
        .world
        .host()
        .command("sleep")
        .arg("600")
        .stdin(std::process::Stdio::from(std::os::fd::OwnedFd::from(
            stream,
        )))
        .spawn()
        .unwrap();
    assert_eq!(
        pins_of(&c, given[0]),
        2,
        "the child still holds the connection"
    );
    client.kill().unwrap(); // SIGKILL
    client.wait().unwrap();
    assert!(
        eventually(Duration::from_secs(5), || listed_pins(&c)
            .iter()
            .all(|(_, p)| *p == 0)),
        "pins after the holder died: {:?}",
        listed_pins(&c)
    );
    // Unpinned and past TTL and grace: the least recently used mapping is recycled.
    let mut recycled = Vec::new();
    assert!(
        eventually(Duration::from_secs(5), || {
            recycled = c.a(zone::DUAL);
            !recycled.is_empty()
        }),
        "DUAL never got an address"
    );
    assert!(
        given.contains(&recycled[0]),
        "{recycled:?} not in {given:?}"
    );
    assert_eq!(resolve(&c, recycled[0]), zone::DUAL_AAAA);
}

#[test]
fn pins_are_reset_when_dns_cache_restarts() {
    world_test!(pins_are_reset_when_dns_cache_restarts);
    let mut c = Cache::start("pinreset", "");
    let a = c.a(zone::V6ONLY)[0];
    let mut holder = Conn::open(&c.sock);
    assert_eq!(
        holder.call(LookupOp::Pin { dummy: a }),
        LookupReply::Pinned { pins: 1 }
    );
    let stored_pins = |c: &Cache| -> String {
        let out = Command::new("sqlite3")
            .arg(&c.db)
            .arg(format!("select pins from mappings_view where ipv4 = '{a}'"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert!(
        eventually(Duration::from_secs(5), || stored_pins(&c) == "1"),
        "the live pin count reaches the database: {}",
        stored_pins(&c)
    );
    // dns-cache dies without any chance to release; the holder's connection dies with it.
    let d = c.daemon.take().unwrap();
    d.signal(SIGKILL);
    drop(d);
    drop(holder);
    c.launch();
    assert_eq!(stored_pins(&c), "0", "reset in the database at start");
    assert_eq!(listed_pins(&c), vec![(a, 0)]);
    assert_eq!(resolve(&c, a), addr::HTTP, "the mapping itself is kept");
}

#[test]
fn tells_systemd_when_ready_alive_and_stopping() {
    world_test!(tells_systemd_when_ready_alive_and_stopping);
    let world = World::start("notify").expect("test world");
    let path = world.path("notify.sock");
    let rx = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let next = || {
        let mut buf = [0u8; 256];
        let n = rx.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let mut c = Cache::start_with(
        world,
        &format!("[{}]:53", addr::DNS),
        "",
        vec![
            ("NOTIFY_SOCKET".into(), path.display().to_string()),
            // A 200 ms watchdog: a keep-alive every 100 ms.
            ("WATCHDOG_USEC".into(), "200000".into()),
        ],
    );
    assert_eq!(next(), "READY=1", "READY comes first");
    // Ready means ready: DNS and dns.sock answer at once.
    assert!(in_pool(c.a(zone::V6ONLY)[0]));
    assert!(matches!(c.lookup(LookupOp::Stats), LookupReply::Stats(_)));
    let started = Instant::now();
    assert_eq!(next(), "WATCHDOG=1");
    assert_eq!(next(), "WATCHDOG=1");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "keep-alives come often"
    );
    let mut d = c.daemon.take().unwrap();
    d.signal(SIGTERM);
    let mut last = next();
    while last == "WATCHDOG=1" {
        last = next();
    }
    assert_eq!(last, "STOPPING=1");
    let status = d.wait_timeout(Duration::from_secs(10)).expect("it exits");
    assert!(status.success(), "{status}");
}

/// Port of the extra zone's dnsmasq, on the world's DNS address.
const EXTRA_PORT: u16 = 5454;
/// AAAA records of `big.neg.test`: more than a 512-byte UDP answer holds as A records, and
/// more than dnsmasq puts in a 1232-byte UDP answer as AAAA records (so dns-cache's own upstream
/// query has to retry over TCP too).
const BIG: usize = 50;

/// An extra zone, `neg.test`, served by a dnsmasq of this test's own in the world namespace
/// (the test world's zone is not changed). Authoritative, so that negative answers carry an SOA
/// (TTL and MINIMUM 300 s) as RFC 2308 caching needs:
/// - `a-only.neg.test`: an A record only, so NODATA for AAAA;
/// - `big.neg.test`: [`BIG`] AAAA records;
/// - anything else: NXDOMAIN.
fn start_extra_zone(world: &World) -> Daemon {
    use std::fmt::Write as _;
    let conf = world.path("extra-dnsmasq.conf");
    let mut text = format!(
        "no-resolv\nno-hosts\nno-poll\nbind-interfaces\nlisten-address={dns}\nport={EXTRA_PORT}\n\
         auth-server=ns.neg.test,{dns}\nauth-zone=neg.test\nauth-ttl=300\n\
         auth-soa=1,hostmaster.neg.test,1200,180,1209600\nedns-packet-max=1232\n\
         host-record=a-only.neg.test,203.0.113.30\n",
        dns = addr::DNS
    );
    for i in 1..=BIG {
        writeln!(text, "host-record=big.neg.test,fd00:64::b:{i:x}").unwrap();
    }
    std::fs::write(&conf, text).unwrap();
    let mut cmd = world.world().command("dnsmasq");
    cmd.arg("--keep-in-foreground")
        .arg(format!("--conf-file={}", conf.display()))
        .arg("--pid-file=")
        .stdout(std::process::Stdio::null());
    let d = world.world().spawn("extra-zone dnsmasq", cmd).unwrap();
    let server = addr::DNS.to_string();
    let port = EXTRA_PORT.to_string();
    assert!(
        eventually(Duration::from_secs(10), || world
            .dig(&server, &["-p", &port, "+short", "a-only.neg.test", "A"])
            .is_ok_and(|out| out.contains("203.0.113.30"))),
        "the extra zone's dnsmasq does not answer"
    );
    d
}

fn extra_upstream() -> String {
    format!("[{}]:{EXTRA_PORT}", addr::DNS)
}

#[test]
fn negative_answers_are_cached_for_the_soa_time_within_the_cap() {
    world_test!(negative_answers_are_cached_for_the_soa_time_within_the_cap);
    let world = World::start("negcache").expect("test world");
    let upstream = start_extra_zone(&world);
    // SOA says 300 s; the setting caps negative answers at 3 s.
    let c = Cache::start_with(world, &extra_upstream(), "negative_ttl_max = 3", Vec::new());
    let asked = Instant::now();
    let nx = c.dig(&["nx.neg.test", "A"]);
    assert_eq!(status(&nx), "NXDOMAIN", "{nx}");
    assert!(nx.contains("SOA"), "the SOA comes with it: {nx}");
    let nodata = c.dig(&["a-only.neg.test", "A"]);
    assert_eq!(status(&nodata), "NOERROR", "{nodata}");
    assert!(
        nodata.contains("ANSWER: 0") && nodata.contains("SOA"),
        "{nodata}"
    );
    // Upstream goes away. Past the reply cache's second, the answers still come from the
    // answer cache...
    drop(upstream);
    std::thread::sleep(
        (asked + Duration::from_millis(1_500)).saturating_duration_since(Instant::now()),
    );
    let nx = c.dig(&["nx.neg.test", "A"]);
    assert_eq!(status(&nx), "NXDOMAIN", "still cached: {nx}");
    let nodata = c.dig(&["a-only.neg.test", "A"]);
    assert_eq!(status(&nodata), "NOERROR", "still cached: {nodata}");
    assert!(nodata.contains("ANSWER: 0"), "{nodata}");
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "the machine was too slow to check within the 3 s"
    );
    // ...until the capped negative TTL runs out: then upstream is asked, and it is gone.
    std::thread::sleep(
        (asked + Duration::from_millis(4_000)).saturating_duration_since(Instant::now()),
    );
    let nx = c.dig(&["nx.neg.test", "A"]);
    assert_eq!(status(&nx), "SERVFAIL", "expired after 3 s, not 300: {nx}");
}

#[test]
fn answers_too_big_for_udp_are_truncated_and_whole_over_tcp() {
    world_test!(answers_too_big_for_udp_are_truncated_and_whole_over_tcp);
    let world = World::start("trunc").expect("test world");
    let _upstream = start_extra_zone(&world);
    let c = Cache::start_with(world, &extra_upstream(), "", Vec::new());
    let answers = |out: &str| -> Vec<Ipv4Addr> {
        out.lines()
            .filter(|l| l.contains("\tA\t"))
            .filter_map(|l| l.split_whitespace().last()?.parse().ok())
            .collect()
    };
    // Plain UDP (512 bytes): TC, and what fits.
    let udp = c.dig(&["+noedns", "+ignore", "big.neg.test", "A"]);
    assert_eq!(status(&udp), "NOERROR", "{udp}");
    assert!(flags(&udp).contains("tc"), "{udp}");
    assert!(answers(&udp).len() < BIG, "{udp}");
    // dig retries over TCP on TC, as resolvers do: every record arrives.
    let tcp = c.dig(&["+noedns", "big.neg.test", "A"]);
    assert!(!flags(&tcp).contains("tc"), "{tcp}");
    let mut over_tcp = answers(&tcp);
    assert_eq!(
        over_tcp.len(),
        BIG,
        "all of upstream's records (its own answer was truncated too): {tcp}"
    );
    // With EDNS the whole answer fits in one datagram, with the same dummies.
    let edns = c.dig(&["+bufsize=1232", "big.neg.test", "A"]);
    assert!(!flags(&edns).contains("tc"), "{edns}");
    let mut over_edns = answers(&edns);
    over_tcp.sort();
    over_edns.sort();
    assert_eq!(over_tcp, over_edns);
    over_tcp.dedup();
    assert_eq!(over_tcp.len(), BIG, "one dummy per IPv6 address");
    let mut v6: Vec<Ipv6Addr> = over_tcp.iter().map(|d| resolve(&c, *d)).collect();
    v6.sort();
    let want: Vec<Ipv6Addr> = (1..=BIG)
        .map(|i| format!("fd00:64::b:{i:x}").parse().unwrap())
        .collect();
    assert_eq!(v6, want);
}

/// A DNS query packet: id, RD, one question of `qtype`, no EDNS.
fn dns_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        p.push(u8::try_from(label.len()).unwrap());
        p.extend_from_slice(label.as_bytes());
    }
    p.push(0);
    p.extend_from_slice(&qtype.to_be_bytes());
    p.extend_from_slice(&1u16.to_be_bytes());
    p
}

#[test]
fn bad_input_never_crashes_and_formerr_where_due() {
    world_test!(bad_input_never_crashes_and_formerr_where_due);
    let mut c = Cache::start("badinput", "");
    let results = c
        .world
        .host()
        .run(|| {
            let server: SocketAddr = "[::1]:53".parse().unwrap();
            let u = UdpSocket::bind("[::1]:0").unwrap();
            u.set_read_timeout(Some(Duration::from_millis(700)))
                .unwrap();
            let mut out = Vec::new();
            let mut ask = |label: &str, packet: &[u8]| {
                u.send_to(packet, server).unwrap();
                let mut buf = [0u8; 4096];
                let reply = u.recv(&mut buf).ok().map(|n| buf[..n].to_vec());
                out.push((label.to_owned(), reply));
            };
            // Pseudo-random bytes (a fixed LCG: the test must be repeatable).
            let mut x: u32 = 12345;
            for i in 0..50 {
                let len = 1 + (i * 37) % 300;
                let junk: Vec<u8> = (0..len)
                    .map(|_| {
                        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                        (x >> 16) as u8
                    })
                    .map(|b| b & 0x7f) // keep QR clear so a reply is due when the header parses
                    .collect();
                ask("random", &junk);
            }
            ask("short", &[0x12, 0x34, 0x01]);
            // A header that promises a question that is not there.
            ask(
                "truncated",
                &[0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 3, b'f'],
            );
            // A compression pointer that points at itself.
            let mut lp = vec![0xbe, 0xef, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
            lp.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
            ask("loop", &lp);
            let mut big = dns_query(0x7777, zone::V6ONLY, 1);
            big.resize(65_000, 0);
            ask("oversized", &big);
            out
        })
        .unwrap();
    for (label, reply) in &results {
        if label == "truncated" || label == "loop" {
            let r = reply
                .as_ref()
                .unwrap_or_else(|| panic!("{label}: no FORMERR"));
            assert_eq!(r[3] & 0x0f, 1, "{label}: rcode should be FORMERR");
        }
        if label == "short" {
            assert!(
                reply.is_none(),
                "a packet shorter than a header gets no answer"
            );
        }
    }
    // The same over TCP: a length prefix with garbage, a loop, then a good query on a fresh
    // connection.
    c.world
        .host()
        .run(|| {
            let mut lp = vec![0xbe, 0xef, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
            lp.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
            let mut s = TcpStream::connect("[::1]:53").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            let mut framed = (lp.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&lp);
            s.write_all(&framed).unwrap();
            let mut len = [0u8; 2];
            s.read_exact(&mut len).unwrap();
            let mut r = vec![0u8; usize::from(u16::from_be_bytes(len))];
            s.read_exact(&mut r).unwrap();
            assert_eq!(r[3] & 0x0f, 1, "TCP compression loop: FORMERR");
            let mut s = TcpStream::connect("[::1]:53").unwrap();
            let _ = s.write_all(&[0xff, 0xff, 1, 2, 3]);
            drop(s);
        })
        .unwrap();
    assert!(in_pool(c.a(zone::V6ONLY)[0]), "still answering");
    let d = c.daemon.as_mut().unwrap();
    assert!(
        d.try_status().unwrap().is_none(),
        "dns-cache is still running"
    );
}

#[test]
fn restart_after_kill_9_keeps_every_mapping() {
    world_test!(restart_after_kill_9_keeps_every_mapping);
    let mut c = Cache::start("restart", "");
    // Queries in flight while the process is killed: dig loops in the background.
    let names = [zone::V6ONLY, zone::MULTI, zone::ECHO, zone::ALIAS];
    // Sorted per name: upstream rotates the order of a name's records.
    let sorted = |mut v: Vec<Ipv4Addr>| {
        v.sort();
        v
    };
    let mut before: Vec<Ipv4Addr> = Vec::new();
    for n in names {
        before.extend(sorted(c.a(n)));
    }
    let storm_files: Vec<PathBuf> = (0..4)
        .map(|i| c.world.path(&format!("storm-{i}.txt")))
        .collect();
    let mut storm: Vec<std::process::Child> = storm_files
        .iter()
        .map(|f| {
            c.world
                .host()
                .command("sh")
                .arg("-c")
                .arg(format!(
                    "for i in $(seq 1 200); do dig @::1 +time=1 +tries=1 +short {} A {} A >>{}; done",
                    zone::SHORT_TTL,
                    zone::LONG_TTL,
                    f.display()
                ))
                .spawn()
                .unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let d = c.daemon.take().unwrap();
    d.signal(SIGKILL);
    drop(d);
    for s in &mut storm {
        let _ = s.kill();
        let _ = s.wait();
    }
    // Whatever was answered before the kill is in the database.
    c.launch();
    for (i, dummy) in before.iter().enumerate() {
        let v6 = resolve(&c, *dummy);
        let row = Command::new("sqlite3")
            .arg(&c.db)
            .arg(format!(
                "select ipv6 from mappings_view where ipv4 = '{dummy}'"
            ))
            .output()
            .unwrap();
        let row = String::from_utf8_lossy(&row.stdout).trim().to_owned();
        assert_eq!(row, v6.to_string(), "mapping {i} ({dummy})");
    }
    // Every dummy answered to the in-flight queries before the kill still means the same.
    let mut answered = 0;
    for f in &storm_files {
        for line in std::fs::read_to_string(f).unwrap_or_default().lines() {
            if let Ok(dummy) = line.trim().parse::<Ipv4Addr>() {
                let v6 = resolve(&c, dummy);
                assert!(
                    [zone::SHORT_TTL_AAAA, zone::LONG_TTL_AAAA].contains(&v6),
                    "{dummy} -> {v6}"
                );
                answered += 1;
            }
        }
    }
    assert!(answered > 0, "the storm got answers before the kill");
    let mut again: Vec<Ipv4Addr> = Vec::new();
    for n in names {
        again.extend(sorted(c.a(n)));
    }
    assert_eq!(again, before, "every name keeps its dummies after kill -9");
    // New names allocate without colliding with the old ones.
    let dual = c.a(zone::DUAL);
    assert_eq!(dual.len(), 1);
    assert!(!before.contains(&dual[0]));
    assert_eq!(resolve(&c, dual[0]), zone::DUAL_AAAA);
    let mut all: Vec<Ipv4Addr> = match c.lookup(LookupOp::List(ListQuery {
        direction: None,
        offset: 0,
        limit: 1000,
    })) {
        LookupReply::Mappings { entries, .. } => entries.iter().map(|m| m.dummy).collect(),
        other => panic!("{other:?}"),
    };
    let n = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), n, "no dummy is listed twice");
}

/// Signals 9 and 15, spelled out so the test needs no libc binding.
const SIGKILL: i32 = 9;
const SIGTERM: i32 = 15;
