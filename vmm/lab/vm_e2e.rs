//! The VM-mode end-to-end test (group `vm`): the test world's dns-cache and host-server
//! (testworld's `Stack`, in the world's `host` namespace) with a `[vms.vm0]` table, and one
//! guest booted by outsock-vmm with a vsock device bridged to that host-server. Inside the
//! guest, unmodified programs reach the IPv6-only world by name; each check prints a marker
//! line that is read back from the console.

use std::net::Ipv4Addr;
use std::path::Path;

use testworld::stack::{Stack, GUEST_DNS};
use testworld::{addr, big_file_byte, zone, BIG_FILE_LEN, INDEX_BODY};

use crate::Driver;

/// The checks this group reports.
pub const CHECKS: usize = 7;

const VM_SOCKET: &str = "/tmp/outsock-lab-vm0.vsock";

fn md5_of(bytes: &[u8]) -> String {
    let dir = std::env::temp_dir().join("outsock-lab-md5");
    let _ = std::fs::create_dir_all(&dir);
    let f = dir.join("big.bin");
    if std::fs::write(&f, bytes).is_err() {
        return String::new();
    }
    std::process::Command::new("md5sum")
        .arg(&f)
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .next()
                .map(str::to_owned)
        })
        .unwrap_or_default()
}

/// Runs the group; reports [`CHECKS`] results.
pub fn run(d: &mut Driver) {
    let extra = format!(
        "vmm_uids = [0]\n[listen]\nallowed_ports = [8080]\n[vms.vm0]\nsocket = \"{VM_SOCKET}\"\naddress = \"{}\"\n",
        addr::HOST_VMS[0]
    );
    let stack = match Stack::start("labvm", &extra) {
        Ok(s) => s,
        Err(e) => {
            for name in [
                "vm-curl",
                "vm-wget",
                "vm-busybox-wget",
                "vm-nc",
                "vm-kdig",
                "vm-big-md5",
                "vm-boot",
            ] {
                d.report(name, false, &format!("the test world did not start: {e:#}"));
            }
            return;
        }
    };
    let host_sock = stack.host_sock();
    let v6 = zone::V6ONLY;
    // No double quotes: the script travels on the kernel command line inside "…". Full paths:
    // the image's static busybox sh runs its own applets (wget, nc) before anything on PATH.
    // Debian's dynamic busybox is built without FEATURE_WGET_TIMEOUT, and its wget crashes on
    // `-T` (getopt32 stores the number through the NULL it was given for the missing option;
    // SIGSEGV with no network at all): `timeout` bounds it instead.
    let script = format!(
        "curl -4 -sS -m 30 http://{v6}/index.html; echo CURL-RC=$?; \
         /usr/bin/wget -4 -q -T 30 -O - http://{v6}/index.html; echo WGET-RC=$?; \
         timeout 30 /usr/local/bin/busybox wget -q -O - http://{v6}/index.html; echo BBWGET-RC=$?; \
         echo via-netcat | /usr/bin/nc.traditional -q 3 -w 20 {echo} 7; echo NC-RC=$?; \
         kdig +short +timeout=5 @{dns} {v6} A; echo KDIG-RC=$?; \
         echo BIG-MD5=$(/usr/bin/wget -4 -q -T 60 -O - http://{v6}/big.bin | md5sum)",
        echo = zone::ECHO,
        dns = GUEST_DNS,
    );
    // The run's name is the VM's name, which host-server must know ([vms.vm0]).
    let run = d.run(
        "vm0",
        &[
            "--host-socket",
            &host_sock.to_string_lossy(),
            "--vsock-socket",
            VM_SOCKET,
            "--mem-mib",
            "512",
        ],
        &script,
        None,
    );
    let console = run.console();
    let marker_rc = |m: &str| {
        run.lines
            .iter()
            .find_map(|(_, l)| l.trim().strip_prefix(m).map(|v| v.trim().to_owned()))
    };
    let index = INDEX_BODY.trim();
    let count_index = console.matches(index).count();
    d.report(
        "vm-boot",
        run.has("OUTSOCK-INIT: exit="),
        &format!(
            "guest with vsock ran the script -> VMM {}",
            run.status_text()
        ),
    );
    for (name, marker, what) in [
        ("vm-curl", "CURL-RC=", "curl -4 http://v6only (by name)"),
        ("vm-wget", "WGET-RC=", "wget -4 http://v6only (by name)"),
        (
            "vm-busybox-wget",
            "BBWGET-RC=",
            "busybox wget (dynamic) by name",
        ),
    ] {
        let rc = marker_rc(marker);
        d.report(
            name,
            rc.as_deref() == Some("0"),
            &format!("{what}: exit {rc:?}; index bodies seen on the console: {count_index}/3"),
        );
    }
    let nc_rc = marker_rc("NC-RC=");
    d.report(
        "vm-nc",
        // The piped line goes to the server; the one on the console is its echo.
        nc_rc.as_deref() == Some("0") && run.lines.iter().any(|(_, l)| l.trim() == "via-netcat"),
        &format!("netcat-traditional to the IPv6-only echo server by name: exit {nc_rc:?}"),
    );
    let kdig_rc = marker_rc("KDIG-RC=");
    let synthesised = console
        .lines()
        .filter_map(|l| l.trim().parse::<Ipv4Addr>().ok())
        .any(|a| u32::from(a) >> 12 == u32::from(Ipv4Addr::new(10, 170, 160, 0)) >> 12);
    d.report(
        "vm-kdig",
        kdig_rc.as_deref() == Some("0") && synthesised,
        &format!("kdig @{GUEST_DNS} (UDP through host-server to dns-cache): exit {kdig_rc:?}, dummy A seen: {synthesised}"),
    );
    let want: Vec<u8> = (0..BIG_FILE_LEN).map(big_file_byte).collect();
    let want_md5 = md5_of(&want);
    let got_md5 = marker_rc("BIG-MD5=")
        .and_then(|v| v.split_whitespace().next().map(str::to_owned))
        .unwrap_or_default();
    d.report(
        "vm-big-md5",
        !want_md5.is_empty() && got_md5 == want_md5,
        &format!(
            "md5 of a {BIG_FILE_LEN}-byte file fetched with wget -4: {got_md5} (want {want_md5})"
        ),
    );
    let _ = std::fs::write(
        Path::new(&d.args.logs).join("vm-e2e-daemons.log"),
        stack.logs(),
    );
}
