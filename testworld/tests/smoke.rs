//! Smoke test of the test world itself: the zone answers, IPv6 services answer, and the
//! namespaces that must have no IPv4 (or no route at all) really have none. Also checks that a
//! world is torn down on drop, including while unwinding from a panic.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::time::Duration;

use testworld::{addr, zone, World};

fn start(label: &str) -> Option<World> {
    if !testworld::skip_unless_root(label) {
        return None;
    }
    Some(World::start(label).expect("test world starts"))
}

fn short(world: &World, qtype: &str, name: &str) -> Vec<String> {
    let out = world
        .dig(&addr::DNS.to_string(), &["+short", qtype, name])
        .expect("dig runs");
    let mut v: Vec<String> = out.lines().map(str::to_owned).collect();
    v.sort();
    v
}

#[test]
fn zone_answers_from_host() {
    let Some(world) = start("zone") else { return };
    assert_eq!(
        short(&world, "AAAA", zone::V6ONLY),
        [addr::HTTP.to_string()]
    );
    let mut multi: Vec<String> = zone::MULTI_AAAA.iter().map(ToString::to_string).collect();
    multi.sort();
    assert_eq!(short(&world, "AAAA", zone::MULTI), multi);
    // CNAME chain: both aliases, then the address.
    let chain = world
        .dig(
            &addr::DNS.to_string(),
            &["+noall", "+answer", "AAAA", zone::ALIAS],
        )
        .unwrap();
    assert!(chain.contains(&format!("{}.", zone::ALIAS2)), "{chain}");
    assert!(chain.contains(&format!("{}.", zone::V6ONLY)), "{chain}");
    assert!(chain.contains(&addr::HTTP.to_string()), "{chain}");
    assert_eq!(short(&world, "A", zone::DUAL), [zone::DUAL_A.to_string()]);
    assert_eq!(
        short(&world, "AAAA", zone::DUAL),
        [zone::DUAL_AAAA.to_string()]
    );
    assert_eq!(
        short(&world, "A", zone::V4ONLY),
        [zone::V4ONLY_A.to_string()]
    );
    assert!(short(&world, "AAAA", zone::V4ONLY).is_empty());
    assert_eq!(
        short(&world, "TXT", zone::TXT),
        [format!("\"{}\"", zone::TXT_DATA)]
    );
    // TTLs differ as the zone says.
    let ttl = |name: &str| -> u32 {
        let out = world
            .dig(&addr::DNS.to_string(), &["+noall", "+answer", "AAAA", name])
            .unwrap();
        out.split_whitespace()
            .nth(1)
            .unwrap_or_else(|| panic!("no answer for {name}: {out}"))
            .parse()
            .unwrap()
    };
    assert_eq!(ttl(zone::SHORT_TTL), zone::SHORT_TTL_SECS);
    assert_eq!(ttl(zone::LONG_TTL), zone::LONG_TTL_SECS);
    let nx = world
        .dig(&addr::DNS.to_string(), &["AAAA", zone::MISSING])
        .unwrap();
    assert!(nx.contains("status: NXDOMAIN"), "{nx}");
}

#[test]
fn ipv6_services_answer_from_host() {
    let Some(world) = start("services") else {
        return;
    };
    let (echoed, udp, http) = world
        .host()
        .run(|| {
            let echo = SocketAddr::new(addr::ECHO.into(), addr::ECHO_PORT);
            let mut s = TcpStream::connect_timeout(&echo, Duration::from_secs(5)).unwrap();
            s.write_all(b"round trip").unwrap();
            s.shutdown(Shutdown::Write).unwrap();
            let mut echoed = Vec::new();
            s.read_to_end(&mut echoed).unwrap();

            let u = UdpSocket::bind("[::]:0").unwrap();
            u.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            u.send_to(b"datagram", echo).unwrap();
            let mut buf = [0; 64];
            let (n, from) = u.recv_from(&mut buf).unwrap();
            assert_eq!(from, echo);

            let web = SocketAddr::new(addr::HTTP.into(), addr::HTTP_PORT);
            let mut h = TcpStream::connect_timeout(&web, Duration::from_secs(5)).unwrap();
            h.write_all(b"GET /index.html HTTP/1.0\r\n\r\n").unwrap();
            let mut page = String::new();
            h.read_to_string(&mut page).unwrap();
            (echoed, buf[..n].to_vec(), page)
        })
        .unwrap();
    assert_eq!(echoed, b"round trip");
    assert_eq!(udp, b"datagram");
    assert!(http.starts_with("HTTP/1.0 200"), "{http}");
    assert!(http.ends_with(testworld::INDEX_BODY), "{http}");
}

#[test]
fn legacy_has_only_lo_and_host_has_no_ipv4_route() {
    let Some(world) = start("isolation") else {
        return;
    };
    let links = world.legacy().ip(&["-o", "link", "show"]).unwrap();
    let names: Vec<&str> = links
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(str::trim)
        .collect();
    assert_eq!(names, ["lo"], "{links}");
    assert_eq!(
        world
            .legacy()
            .ip(&["-4", "route", "show", "table", "all"])
            .unwrap()
            .lines()
            .filter(|l| !l.contains("dev lo"))
            .count(),
        0
    );
    let v6 = world.legacy().ip(&["-6", "route", "show"]).unwrap();
    assert!(
        v6.lines().all(|l| l.contains("dev lo")),
        "legacy has an IPv6 route off lo: {v6}"
    );
    assert_eq!(
        world.host().ip(&["-4", "route", "show"]).unwrap().trim(),
        ""
    );
    let v4addrs = world.host().ip(&["-4", "-o", "addr", "show"]).unwrap();
    assert!(
        v4addrs.lines().all(|l| l.contains(" lo ")),
        "host has IPv4 off lo: {v4addrs}"
    );

    // And the kernel agrees: IPv4 from host and anything off-box from legacy fail at once.
    let v4 = world
        .host()
        .run(|| {
            TcpStream::connect_timeout(&"203.0.113.10:80".parse().unwrap(), Duration::from_secs(2))
        })
        .unwrap();
    assert_eq!(v4.unwrap_err().raw_os_error(), Some(libc::ENETUNREACH));
    let from_legacy = world
        .legacy()
        .run(|| {
            TcpStream::connect_timeout(
                &SocketAddr::new(addr::ECHO.into(), addr::ECHO_PORT),
                Duration::from_secs(2),
            )
        })
        .unwrap();
    assert_eq!(
        from_legacy.unwrap_err().raw_os_error(),
        Some(libc::ENETUNREACH)
    );
    let refused = world
        .host()
        .run(|| {
            TcpStream::connect_timeout(
                &SocketAddr::new(addr::ECHO.into(), addr::CLOSED_PORT),
                Duration::from_secs(2),
            )
        })
        .unwrap();
    assert_eq!(refused.unwrap_err().kind(), ErrorKind::ConnectionRefused);
}

#[test]
fn world_is_torn_down_on_drop_and_on_panic() {
    let Some(world) = start("teardown") else {
        return;
    };
    let names = world.namespace_names();
    let dir = world.dir().to_path_buf();
    for n in &names {
        assert!(
            Path::new("/run/netns").join(n).exists(),
            "{n} missing while alive"
        );
    }
    drop(world);
    for n in &names {
        assert!(
            !Path::new("/run/netns").join(n).exists(),
            "{n} left behind after drop"
        );
    }
    assert!(!dir.exists());

    let names = std::panic::catch_unwind(|| {
        let world = World::start("panicking").unwrap();
        let names = world.namespace_names();
        std::panic::panic_any(names)
    })
    .unwrap_err()
    .downcast::<[String; 3]>()
    .unwrap();
    for n in names.iter() {
        assert!(
            !Path::new("/run/netns").join(n).exists(),
            "{n} left behind after a panic"
        );
    }
}
