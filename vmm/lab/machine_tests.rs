//! The lab's machine-level groups: boot (1 and 2 vCPUs, a clean kernel log, power-off),
//! reboot (exit, restart in place, and systemd's notifications), console input, panic, and a
//! rejected kernel. Each is one or two VMM runs on the guest image; see lab/README.md.

use crate::sd_notify::{self, Notify};
use crate::{Driver, RunOpts};

/// Tests of the `boot` group.
pub const BOOT: &[&str] = &[
    "boot-1vcpu",
    "klog-clean-1vcpu",
    "poweroff",
    "boot-2vcpu",
    "klog-clean-2vcpu",
];
/// Tests of the `reboot` group.
pub const REBOOT: &[&str] = &["reboot-exit", "reboot-restart", "sd-notify"];
/// Tests of the `console` group.
pub const CONSOLE: &[&str] = &["console-input"];
/// Tests of the `panic` group.
pub const PANIC: &[&str] = &["panic"];
/// Tests of the `bad-kernel` group.
pub const BAD_KERNEL: &[&str] = &["bad-kernel-rejected"];

/// Kernel log lines that must not appear (XSAVE, TSC, IRQ and ACPI trouble).
const BAD_KLOG: &[&str] = &[
    "XSAVE consistency problem",
    "WARNING: CPU",
    "TSC unstable",
    "Marking TSC unstable",
    "unstable TSC",
    "clocksource tsc unstable",
    "nobody cared",
    "spurious 8259A",
    "No IRQ",
    "irq: ",
    "IRQ bypass",
    "ACPI Error",
    "ACPI BIOS Error",
    "ACPI Exception",
    "ACPI Warning",
    "APIC error",
    "unable to open an initial console",
];

fn bad_klog_lines(console: &str) -> Vec<String> {
    console
        .lines()
        .filter(|l| {
            BAD_KLOG
                .iter()
                .any(|b| l.to_lowercase().contains(&b.to_lowercase()))
        })
        .map(str::to_owned)
        .collect()
}

fn boot_run(d: &mut Driver, vcpus: u8) {
    let name = format!("boot-{vcpus}vcpu");
    // The guest searches its own kernel log and prints only the matches (and the log's size):
    // every console byte is a VM exit, and the whole log is tens of thousands of them. The
    // lines with the kernel command line are left out: they hold these very patterns.
    let patterns: String = BAD_KLOG.iter().map(|p| format!(" -e '{p}'")).collect();
    let cmd = format!(
        "echo UNAME=$(uname -r); echo CPUS=$(grep -c ^processor /proc/cpuinfo); \
         dmesg | grep -v 'ommand line:' | grep -i{patterns} | sed 's/^/KLOG-BAD /'; \
         echo KLOG-LINES=$(dmesg | wc -l)"
    );
    let run = d.run(&name, &["--vcpus", &vcpus.to_string()], &cmd, None);
    let want_uname = format!("UNAME={}", d.args.kernel_release);
    let want_cpus = format!("CPUS={vcpus}");
    let start = run
        .first("OUTSOCK-INIT: start")
        .map(|(t, l)| (t, l.to_owned()));
    let ok = start.is_some()
        && run.has(&want_uname)
        && run.has(&want_cpus)
        && run.has("OUTSOCK-INIT: exit=0");
    let detail = match &start {
        Some((t, l)) => format!(
            "/init reached {} ms after VMM start ({}), {}, {}, {}",
            t.as_millis(),
            l.trim_start_matches("OUTSOCK-INIT: start ").trim(),
            if run.has(&want_uname) {
                want_uname.clone()
            } else {
                format!("missing {want_uname}")
            },
            if run.has(&want_cpus) {
                want_cpus.clone()
            } else {
                format!("missing {want_cpus}")
            },
            run.status_text()
        ),
        None => format!(
            "no OUTSOCK-INIT start marker ({}); see {name}.log",
            run.status_text()
        ),
    };
    d.report(&name, ok, &detail);

    // Matches arrive as KLOG-BAD lines; anything printed on the console itself counts too.
    let bad = bad_klog_lines(&run.console());
    let searched = run
        .lines
        .iter()
        .find_map(|(_, l)| l.trim().strip_prefix("KLOG-LINES="))
        .and_then(|n| n.trim().parse::<u32>().ok())
        .unwrap_or(0);
    let klog_ok = run.has("OUTSOCK-INIT: exit=0") && bad.is_empty() && searched > 100;
    d.report(
        &format!("klog-clean-{vcpus}vcpu"),
        klog_ok,
        &if bad.is_empty() {
            format!("no XSAVE/TSC/IRQ/ACPI error lines among the {searched} lines of dmesg")
        } else {
            format!("{bad:?}")
        },
    );

    if vcpus == 1 {
        let ok = run.status == Some(0)
            && run.has("OUTSOCK-INIT: exit=0")
            && run.stderr.contains("powered off");
        d.report(
            "poweroff",
            ok,
            &format!("guest `poweroff -f` -> VMM {}", run.status_text()),
        );
    }
}

/// Boots with 1 and 2 vCPUs.
pub fn boot(d: &mut Driver) {
    boot_run(d, 1);
    boot_run(d, 2);
}

/// Reboot with `--on-reboot exit` and `restart`; the latter also checks the notifications.
pub fn reboot(d: &mut Driver) {
    let run = d.run("reboot-exit", &["--on-reboot", "exit"], "reboot -f", None);
    let ok = run.status == Some(3) && run.stderr.contains("rebooted");
    d.report(
        "reboot-exit",
        ok,
        &format!(
            "guest `reboot -f` with --on-reboot exit -> VMM {} (want 3)",
            run.status_text()
        ),
    );

    // Also the systemd notification check: this run restarts in place and is then
    // stopped with SIGTERM, the way systemd stops a unit.
    // Not in the results folder: a 9p share cannot hold a socket.
    let notify = Notify::bind(
        std::env::temp_dir().join("outsock-lab-reboot-restart.notify"),
        None,
    );
    let run = d.run_with(
        "reboot-restart",
        &["--on-reboot", "restart"],
        Some("reboot -f"),
        RunOpts {
            stop_when: Some(("OUTSOCK-INIT: start", 2)),
            notify: notify.as_ref().ok(),
            env: vec![("WATCHDOG_USEC".into(), sd_notify::WATCHDOG_USEC.to_string())],
            ..RunOpts::default()
        },
    );
    let boots = run
        .lines
        .iter()
        .filter(|(_, l)| l.contains("OUTSOCK-INIT: start"))
        .count();
    d.report(
        "reboot-restart",
        boots >= 2 && run.stderr.contains("restarting"),
        &format!("guest `reboot -f` with --on-reboot restart -> {boots} boots seen (want 2, then stopped)"),
    );
    // One READY=1 per process start: the first and one per restart in place (the guest
    // may reboot once more before SIGTERM lands).
    let starts = 1 + run.stderr.matches("restarting the VM").count();
    let (ok, detail) = match &notify {
        Ok(_) => sd_notify::judge(
            &run.notify,
            starts,
            run.first("OUTSOCK-INIT: start").map(|(t, _)| t),
            run.took,
        ),
        Err(e) => (false, format!("cannot bind a notification socket: {e}")),
    };
    let by_sigterm = run.signal == Some(libc::SIGTERM);
    d.report(
        "sd-notify",
        ok && by_sigterm,
        &format!(
            "NOTIFY_SOCKET + WATCHDOG_USEC={}, {starts} VMM starts, then SIGTERM: {detail}; VMM {}",
            sd_notify::WATCHDOG_USEC,
            run.status_text()
        ),
    );
}

/// Input typed into the guest's shell on the console.
pub fn console(d: &mut Driver) {
    let run = d.run_with(
        "console-input",
        &[],
        None,
        RunOpts {
            input: Some("echo $((6*7))-from-stdin\npoweroff -f\n"),
            ..RunOpts::default()
        },
    );
    let ok = run.has("42-from-stdin") && run.status == Some(0);
    d.report(
        "console-input",
        ok,
        &format!(
            "stdin typed into the guest shell on ttyS0 -> {}, VMM {}",
            if run.has("42-from-stdin") {
                "its output came back"
            } else {
                "no output"
            },
            run.status_text()
        ),
    );
}

/// A guest kernel panic reaches the VMM through pvpanic.
pub fn panic(d: &mut Driver) {
    let run = d.run("panic", &[], "echo c > /proc/sysrq-trigger", None);
    let panic_line = run
        .first("Kernel panic - not syncing")
        .map(|(_, l)| l.trim().to_owned());
    let ok = matches!(run.status, Some(s) if s != 0) && panic_line.is_some();
    d.report(
        "panic",
        ok,
        &format!(
            "sysrq crash -> VMM {} (want non-zero, 5 = pvpanic), console: {}",
            run.status_text(),
            panic_line.unwrap_or_else(|| "no panic text".into())
        ),
    );
}

/// A file that is not a bzImage is refused with a message.
pub fn bad_kernel(d: &mut Driver) {
    let run = d.run(
        "no-initramfs-bad-kernel",
        &["--kernel", "/etc/hostname"],
        "true",
        None,
    );
    let ok = run.status == Some(1) && run.stderr.contains("bzImage");
    d.report(
        "bad-kernel-rejected",
        ok,
        &format!(
            "a non-bzImage kernel -> VMM {} with a message",
            run.status_text()
        ),
    );
}
