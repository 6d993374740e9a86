//! `run` without a network: the program runs under the filter (its /proc status says so), its
//! exit status comes back, and `run` returns only once its descendants are gone too. Nothing
//! here makes a network call.

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

#[test]
fn run_serves_until_the_last_descendant_is_gone_and_returns_the_programs_status() {
    if !outsock_supervisor::available() {
        println!("SKIP: no seccomp user notification on this kernel");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let done = dir.path().join("done");
    let mut cmd = Command::new("sh");
    // The shell exits at once with 3; its background child (filtered too) works on.
    cmd.arg("-c").arg(format!(
        "(sleep 1; grep -c '^Seccomp:.2' /proc/self/status > {}) & exit 3",
        done.display()
    ));
    let started = std::time::Instant::now();
    let status = outsock_supervisor::run(&mut cmd, &opts()).unwrap();
    assert_eq!(status.code(), Some(3));
    assert!(started.elapsed() >= std::time::Duration::from_secs(1));
    // The descendant had finished, under the filter, when run returned.
    assert_eq!(std::fs::read_to_string(&done).unwrap(), "1\n");
}
