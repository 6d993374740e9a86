//! The `outsock-vmm` binary as a user meets it, without booting anything: help, settings
//! errors, and the refusal on a host whose /dev/kvm cannot boot an unmodified kernel.

use std::process::Command;

use outsock_vmm::host_check::{self, HostKvm};

fn vmm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_outsock-vmm"))
}

#[test]
fn help_describes_flags_and_exit_statuses() {
    let out = vmm()
        .arg("--help")
        .output()
        .expect("run outsock-vmm --help");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "--kernel",
        "--initramfs",
        "--vcpus",
        "--mem-mib",
        "--on-reboot",
        "--serial-log",
        "OUTSOCK_VMM_",
        "5 guest kernel panicked",
        "6 the VMM made a system call its seccomp filter forbids",
        "--no-seccomp",
    ] {
        assert!(text.contains(needle), "--help lacks {needle}:\n{text}");
    }
}

#[test]
fn settings_errors_exit_1_with_a_sentence() {
    let out = vmm()
        .env_remove("OUTSOCK_VMM_KERNEL")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no kernel given"));

    let out = vmm()
        .args(["--kernel", "/nonexistent", "--vcpus", "9"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 to 4 vCPUs"));

    let out = vmm().args(["--vcpus", "many"]).output().expect("run");
    assert_eq!(out.status.code(), Some(2), "clap usage error");
}

/// On this project's machines (PVM /dev/kvm) or without /dev/kvm, the VMM must stop at once
/// and point at the lab harness. On a hardware-KVM host this case cannot be shown here (the
/// lab harness covers booting there).
#[test]
fn refuses_a_host_without_hardware_kvm() {
    let host = host_check::probe(&host_check::HostPaths::default());
    if host == HostKvm::Hardware {
        println!("SKIP refuses_a_host_without_hardware_kvm: this host has hardware KVM");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let kernel = dir.path().join("bzImage");
    std::fs::write(&kernel, b"not booted").expect("write");
    let start = std::time::Instant::now();
    let out = vmm()
        .arg("--kernel")
        .arg(&kernel)
        .arg("--no-stdin")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("vmm/lab/run"), "{err}");
    assert!(err.contains("/dev/kvm"), "{err}");
    assert!(
        start.elapsed() < std::time::Duration::from_secs(5),
        "stops at once"
    );
}
