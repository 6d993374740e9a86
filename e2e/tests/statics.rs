//! Static mappings (`[static]` in dns-cache's settings, issue #19): an operator's fixed dummy
//! IPv4 for an IPv6-only host, for legacy configurations that hold an address, not a name.
//! Reached by its IPv4 literal in process mode (no DNS on the way), kept across restarts of
//! both daemons, answered for the host's name too, shown as `static`; a static entry that
//! collides with a live mapping stops dns-cache's start with a message naming both.

// Test code throughout; helpers outside #[test] functions unwrap too.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::process::{Output, Stdio};

use outsock_e2e::{ok, text};
use testworld::stack::Stack;
use testworld::{addr, zone, INDEX_BODY};

const STATIC: &str = "10.170.175.10";

/// Runs `program args…` in `legacy` through outsock with `stdin`, bounded to 60 s.
fn run(s: &Stack, program: &str, args: &[&str], stdin: &[u8]) -> Output {
    let mut cmd = s.legacy("timeout").unwrap();
    cmd.arg("60").arg(program).args(args);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

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
}
