//! outsock-e2e: end-to-end tests of process mode (tests/) and the `outsock-demo` program, both
//! on top of `testworld::stack`.

#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use testworld::stack::Stack;

/// A test world with outsock's daemons and `config` added to host-server's settings, or `None`
/// (after saying why) where the test world cannot run; with `OUTSOCK_E2E_REQUIRED=1` that is a
/// failure instead.
///
/// # Panics
/// When the world does not start.
#[must_use]
pub fn stack(label: &str, config: &str) -> Option<Stack> {
    if !testworld::skip_unless_root(label) {
        return None;
    }
    match Stack::start(label, config) {
        Ok(s) => Some(s),
        Err(e) => panic!("{label}: the test world did not start: {e:#}"),
    }
}

/// A program's output as text, for messages and matching.
#[must_use]
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Waits until host-server has a UDP socket on `port` in `host` (seen with `ss`).
///
/// # Panics
/// When none appears within 15 s.
pub fn wait_udp_bound(s: &Stack, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = s
            .world
            .host()
            .command("ss")
            .args(["-Hlun", &format!("sport = :{port}")])
            .output()
            .expect("ss runs in the host namespace");
        if text(&out.stdout).contains(&format!(":{port}")) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no UDP socket on port {port} after 15 s\n{}",
            s.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
