//! `outsock vm run` and `outsock vm ls` against a real host-server, with a stand-in for
//! outsock-vmm (a VM cannot boot on this machine's KVM; the lab's `vm-run` check runs the real
//! VMM): the stand-in takes the VMM's flags, binds the VM's socket as the VMM does, prints a
//! console (a kernel line, the program's output with a carriage return, `/init`'s report) and
//! exits. `vm run` must print only the program's output, send the kernel line to stderr and
//! exit with the reported status; `vm ls` must show the VM running, with the stand-in's pid,
//! while it runs, and stopped after.

#![allow(clippy::unwrap_used)]

use std::process::Stdio;
use std::time::{Duration, Instant};

use testworld::stack::{artefact, Stack};

const FAKE_VMM: &str = r#"#!/usr/bin/python3
import os, socket, sys, time
args = sys.argv[1:]
path = args[args.index("--vsock-socket") + 1]
try:
    os.unlink(path)
except OSError:
    pass
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(path)
s.listen(16)
print("[    0.512345] fake kernel boots", flush=True)
print("hello from the guest\r", flush=True)
time.sleep(4)
print("OUTSOCK-INIT: exit=3", flush=True)
os.unlink(path)
"#;

#[test]
fn vm_run_prints_the_program_and_exits_with_its_status_and_vm_ls_sees_it() {
    if !testworld::skip_unless_root("vm-cli") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let vm_sock = dir.path().join("vm-vm0.vsock");
    let host_extra = format!(
        "[listen]\ndefault_address = \"{}\"\n[vms.vm0]\nsocket = \"{}\"\naddress = \"{}\"\nvmm_uid = 0\n",
        testworld::addr::HOST,
        vm_sock.display(),
        testworld::addr::HOST_VMS[0]
    );
    let s = match Stack::start("vm-cli", &host_extra) {
        Ok(s) => s,
        Err(e) => panic!("vm-cli: the test world did not start: {e:#}"),
    };
    let fake = dir.path().join("fake-vmm");
    std::fs::write(&fake, FAKE_VMM).unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let (kernel, initramfs) = (dir.path().join("vmlinuz"), dir.path().join("initrd"));
    std::fs::write(&kernel, b"").unwrap();
    std::fs::write(&initramfs, b"").unwrap();
    let outsock = artefact("outsock").unwrap();
    let host_sock = s.host_sock();
    let ls = || {
        let out = s
            .world
            .host()
            .command(&outsock)
            .args(["vm", "ls", "--json", "--socket"])
            .arg(&host_sock)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(ls().contains("\"running\":false"), "{}", ls());
    let child = s
        .world
        .host()
        .command(&outsock)
        .args(["vm", "run", "--name", "vm0", "--host-socket"])
        .arg(&host_sock)
        .arg("--kernel")
        .arg(&kernel)
        .arg("--initramfs")
        .arg(&initramfs)
        .arg("--vmm")
        .arg(&fake)
        .args(["--", "echo", "hi"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // While it runs: running, with the stand-in's pid (the child of `vm run`).
    let deadline = Instant::now() + Duration::from_secs(3);
    let during = loop {
        let line = ls();
        if line.contains("\"running\":true") || Instant::now() > deadline {
            break line;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(during.contains("\"running\":true"), "{during}");
    let pid: u32 = during
        .split("\"vmm_pid\":")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|p| p.parse().ok())
        .unwrap();
    let parent = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let ppid: u32 = parent
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(ppid, child.id(), "the VMM's pid is not vm run's child");
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from the guest\n"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("[    0.512345] fake kernel boots"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(ls().contains("\"running\":false"), "{}", ls());
}
