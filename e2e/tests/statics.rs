//! Static mappings (`[static]` in dns-cache's settings, issue #19): an operator's fixed dummy
//! IPv4 for an IPv6-only host, for legacy configurations that hold an address, not a name.
//! Reached by its IPv4 literal in process mode (no DNS on the way), kept across restarts of
//! both daemons, answered for the host's name too, shown as `static`; a static entry that
//! collides with a live mapping stops dns-cache's start with a message naming both. Live
//! changes with `outsock mappings add/remove/show`, and `[static]` applied again on SIGHUP.

// Test code throughout; helpers outside #[test] functions unwrap too.
#![allow(clippy::unwrap_used)]

use outsock_e2e::{ok, text};
use testworld::stack::Stack;
use testworld::{addr, zone, INDEX_BODY};

const STATIC: &str = "10.170.175.10";

use outsock_e2e::run_legacy as run;

fn echo_by_literal(s: &Stack) {
    let out = run(s, "nc", &["-q", "5", STATIC, "7"], b"to a static mapping\n");
    assert_eq!(
        ok(s, &out, "nc to the static dummy"),
        "to a static mapping\n"
    );
}

#[test]
fn a_static_mapping_is_reached_by_its_literal_and_kept_and_conflicts_stop_the_start() {
    if !testworld::skip_unless_root("statics") {
        return;
    }
    let dns_extra = format!("[static]\n\"{STATIC}\" = \"{}\"\n", addr::ECHO);
    let mut s = match Stack::start_with("statics", &dns_extra, "") {
        Ok(s) => s,
        Err(e) => panic!("statics: the test world did not start: {e:#}"),
    };
    echo_by_literal(&s);
    let row = s.mappings(&["--address", STATIC]).unwrap();
    assert!(
        row.contains("static") && row.contains(&addr::ECHO.to_string()),
        "{row}"
    );
    // The host's name is answered with its static dummy, not a new one.
    let out = run(&s, "getent", &["ahostsv4", zone::ECHO], b"");
    assert!(
        ok(&s, &out, "getent").contains(STATIC),
        "{}",
        text(&out.stdout)
    );

    // Both daemons restarted: the same pair, still static.
    s.stop_host();
    s.stop_dns();
    s.start_dns().unwrap();
    s.start_host().unwrap();
    echo_by_literal(&s);
    assert!(s
        .mappings(&["--address", STATIC])
        .unwrap()
        .contains("static"));

    // A live dynamic mapping, then a static entry for its dummy: dns-cache refuses to start
    // and names both; nothing was remapped.
    let out = run(
        &s,
        "curl",
        &[
            "-4",
            "-sS",
            "-m",
            "20",
            &format!("http://{}/index.html", zone::V6ONLY),
        ],
        b"",
    );
    assert_eq!(ok(&s, &out, "curl by name"), INDEX_BODY);
    let live = s.dummy_for(addr::HTTP).unwrap();
    let cfg = s.world.path("dns-cache.toml");
    let good = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, format!("{good}\"{live}\" = \"{}\"\n", addr::NO_HOST)).unwrap();
    s.stop_dns();
    assert!(s.start_dns().is_err(), "dns-cache started over a conflict");
    let log = std::fs::read_to_string(s.world.path("dns-cache.log")).unwrap();
    assert!(
        log.contains(&format!(
            "conflicts with the live mapping {live} = {}",
            addr::HTTP
        )),
        "{log}"
    );
    std::fs::write(&cfg, good).unwrap();
    s.start_dns().unwrap();
    assert_eq!(s.dummy_for(addr::HTTP), Some(live));
    echo_by_literal(&s);

    // Live changes by an operator (root here), persisted at once. One that [static] sets is
    // changed there only.
    let err = s.mappings(&["remove", STATIC]).unwrap_err().to_string();
    assert!(err.contains("[static]"), "{err}");
    let added_at = "10.170.175.20";
    let added = s
        .mappings(&[
            "add",
            added_at,
            &addr::DNS.to_string(),
            "--name",
            "ns.static.test",
        ])
        .unwrap();
    assert!(added.contains(added_at), "{added}");
    // The world's DNS server by its new static dummy, over TCP.
    let at = format!("@{added_at}");
    let out = run(
        &s,
        "dig",
        &[
            "+tcp",
            "+time=3",
            "+tries=2",
            "+short",
            &at,
            zone::V6ONLY,
            "AAAA",
        ],
        b"",
    );
    assert_eq!(ok(&s, &out, "dig @static").trim(), addr::HTTP.to_string());
    // PTR of a static dummy: its name.
    let out = run(
        &s,
        "dig",
        &["+time=3", "+tries=2", "+short", "-x", added_at],
        b"",
    );
    assert_eq!(ok(&s, &out, "dig -x").trim(), "ns.static.test.");
    // A live mapping in the way of an add: refused, naming it.
    let err = s
        .mappings(&["add", &live.to_string(), &addr::NO_HOST.to_string()])
        .unwrap_err()
        .to_string();
    assert!(err.contains("conflicts with the live mapping"), "{err}");
    // `show`: the dummy of an address, made only on request.
    let shown = s.mappings(&["show", &addr::ECHO.to_string()]).unwrap();
    assert_eq!(shown.trim(), STATIC);
    assert!(s.mappings(&["show", &addr::NO_HOST.to_string()]).is_err());
    let made = s
        .mappings(&["show", "--allocate", &addr::NO_HOST.to_string()])
        .unwrap();
    assert!(made.trim().parse::<std::net::Ipv4Addr>().is_ok(), "{made}");
    // SIGHUP: a new [static] entry is applied without a restart; one that conflicts is
    // logged and changes nothing, and dns-cache keeps answering.
    let reloaded = "10.170.175.30";
    let cfg_text = std::fs::read_to_string(&cfg).unwrap();
    // NO_HOST has a live dynamic dummy (`show --allocate` above): one address, one dummy,
    // so this entry conflicts.
    std::fs::write(
        &cfg,
        format!("{cfg_text}\"{reloaded}\" = \"{}\"\n", addr::NO_HOST),
    )
    .unwrap();
    let hup = || {
        let status = std::process::Command::new("kill")
            .args(["-HUP", &s.dns_pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    hup();
    let log = s.world.path("dns-cache.log");
    let seen = (0..50).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("SIGHUP: [static] reloaded"))
    });
    assert!(seen, "no reload in the log");
    let text_log = std::fs::read_to_string(&log).unwrap();
    assert!(
        text_log.contains(&format!("static mapping {reloaded} = {}", addr::NO_HOST))
            && text_log.contains("conflicts with the live mapping"),
        "{text_log}"
    );
    // Fixed in the file: the reload applies it.
    std::fs::write(
        &cfg,
        format!("{cfg_text}\"{reloaded}\" = \"fd00:64::d02\"\n"),
    )
    .unwrap();
    let before = text_log.matches("SIGHUP: [static] reloaded").count();
    hup();
    let seen = (0..50).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        std::fs::read_to_string(&log)
            .is_ok_and(|l| l.matches("SIGHUP: [static] reloaded").count() > before)
    });
    assert!(seen, "no second reload in the log");
    let row = s.mappings(&["--address", reloaded]).unwrap();
    assert!(
        row.contains("static") && row.contains("fd00:64::d02"),
        "{row}"
    );
    std::fs::write(&cfg, cfg_text).unwrap();

    // Kept across a restart; removed, persisted: gone after the next one.
    s.stop_dns();
    s.start_dns().unwrap();
    let row = s.mappings(&["--address", added_at]).unwrap();
    assert!(row.contains("static"), "{row}");
    let removed = s.mappings(&["remove", added_at]).unwrap();
    assert!(removed.contains("removed"), "{removed}");
    s.stop_dns();
    s.start_dns().unwrap();
    let row = s.mappings(&["--address", added_at]).unwrap();
    assert!(!row.contains(&addr::DNS.to_string()), "{row}");
}

/// A pool under exhaustion pressure never recycles a static mapping: a /28 destination pool
/// (12 dynamic dummies besides the static one and the guest DNS address), TTL 1 s and no
/// grace, and 48 different IPv6 literal names asked in batches: the dummies go round, never
/// onto the static one, which still reaches the echo server.
#[test]
fn a_pool_under_pressure_never_recycles_a_static_mapping() {
    if !testworld::skip_unless_root("statics-pressure") {
        return;
    }
    let fixed = "10.170.160.14";
    let dns_extra = format!(
        "destination_pool = \"10.170.160.0/28\"\nmax_ttl = 1\ngrace_secs = 0\n\
         dummy_quota_per_minute = 10000\n[static]\n\"{fixed}\" = \"{}\"\n",
        addr::ECHO
    );
    let s = match Stack::start_with("statics-pressure", &dns_extra, "") {
        Ok(s) => s,
        Err(e) => panic!("statics-pressure: the test world did not start: {e:#}"),
    };
    let mut answered = std::collections::BTreeMap::new();
    for batch in 0..4u16 {
        let names: Vec<String> = (0..12u16)
            .map(|i| {
                let v6 = std::net::Ipv6Addr::new(0xfd00, 0x64, 0, 0, 0, 0, 0x1000, batch * 16 + i);
                outsock_e2e::ipv6_literal_name(v6)
            })
            .collect();
        let mut args = vec!["+time=3", "+tries=2", "+short"];
        args.extend(names.iter().map(String::as_str));
        let out = run(&s, "dig", &args, b"");
        for (name, line) in names.iter().zip(ok(&s, &out, "dig").lines()) {
            answered.insert(name.clone(), line.trim().to_owned());
        }
        // Past every TTL (1 s, no grace): the next batch recycles these.
        std::thread::sleep(std::time::Duration::from_millis(1200));
    }
    assert_eq!(answered.len(), 48, "{answered:?}");
    let dummies: std::collections::BTreeSet<&String> = answered.values().collect();
    assert!(
        dummies.len() <= 12,
        "more dummies than the pool holds: {dummies:?}"
    );
    assert!(
        !dummies.contains(&fixed.to_owned()),
        "the static dummy was handed out: {answered:?}"
    );
    let row = s.mappings(&["--address", fixed]).unwrap();
    assert!(
        row.contains("static") && row.contains(&addr::ECHO.to_string()),
        "{row}"
    );
    let out = run(&s, "nc", &["-q", "5", fixed, "7"], b"still static\n");
    assert_eq!(ok(&s, &out, "nc to the static dummy"), "still static\n");
}
