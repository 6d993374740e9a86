//! `run` without a network: the program runs under the filter (its /proc status says so) and
//! its exit status comes back. Nothing here makes a network call.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;

fn opts() -> outsock_supervisor::Options {
    outsock_supervisor::Options {
        host_socket: PathBuf::from("/nonexistent/host.sock"),
        guest_dns: outsock_supervisor::DEFAULT_GUEST_DNS,
        resolv_conf: PathBuf::from("/nonexistent/resolv.conf"),
    }
}

#[test]
fn the_program_runs_filtered_and_its_status_comes_back() {
    if !outsock_supervisor::available() {
        println!("SKIP: no seccomp user notification on this kernel");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("status");
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(format!(
        "grep -E '^(NoNewPrivs|Seccomp|Seccomp_filters):' /proc/self/status > {}; exit 7",
        out.display()
    ));
    let status = outsock_supervisor::run(&mut cmd, &opts()).unwrap();
    assert_eq!(status.code(), Some(7));
    let seen = std::fs::read_to_string(&out).unwrap();
    // Mode 2 is SECCOMP_MODE_FILTER.
    assert!(seen.contains("Seccomp:\t2"), "{seen}");
    assert!(seen.contains("Seccomp_filters:\t1"), "{seen}");
}
