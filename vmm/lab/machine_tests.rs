//! The lab's machine-level groups: boot (1 and 2 vCPUs, a clean kernel log, power-off),
//! reboot (exit, restart in place, and systemd's notifications), console input, panic, a
//! rejected kernel, and stop (SIGTERM shuts the guest down gracefully, or stops it at the stop
//! timeout or a second SIGTERM). Each is one or two VMM runs on the guest image; see
//! lab/README.md.

use std::time::Duration;

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
/// Tests of the `stop` group.
pub const STOP: &[&str] = &["stop-graceful", "stop-timeout", "stop-twice", "stop-shell"];

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

/// The stop timeout of the `stop-timeout` run, and the one `stop-twice` never reaches.
const SHORT_STOP_TIMEOUT_S: u64 = 3;
const LONG_STOP_TIMEOUT_S: u64 = 60;

/// A guest command that ignores a stop: the kernel's Ctrl-Alt-Del signal goes to the command's
/// own shell (`cad_pid`), which as a background job of /init ignores SIGINT, so PID 1 never
/// learns of it and the guest does not power off. It then prints `marker-42`.
fn ignoring_guest(marker: &str) -> String {
    format!("echo $$ > /proc/sys/kernel/cad_pid; echo {marker}-$((6*7)); while :; do sleep 1; done")
}

/// SIGTERM → Ctrl+Alt+Del → /init stops the command (SIGTERM) and powers off → the VMM ends by
/// SIGTERM, long before its stop timeout; then a guest that ignores the stop is stopped at the
/// timeout, and at a second SIGTERM.
pub fn stop(d: &mut Driver) {
    // The markers are computed in the guest, so the kernel command line (which holds the
    // command) never matches them.
    let run = d.run_with(
        "stop-graceful",
        &["--stop-timeout-secs", "20"],
        Some(
            "dmesg | grep -v 'ommand line' | grep -e i8042 -e serio | sed 's/^/KBD-LOG /'; \
             trap 'echo GOT-$((6*7))-TERM; exit 0' TERM; echo STOP-READY-$((6*7)); \
             while :; do sleep 1; done",
        ),
        RunOpts {
            stop_when: Some(("STOP-READY-42", 1)),
            ..RunOpts::default()
        },
    );
    let after = stop_took(&run, "STOP-READY-42");
    // How the guest's kernel found the keyboard, for the record (its input device line).
    let keyboard = run
        .lines
        .iter()
        .find(|(_, l)| l.starts_with("KBD-LOG") && l.contains("keyboard as"))
        .and_then(|(_, l)| l.split("input: ").nth(1))
        .unwrap_or("no kernel log line about it")
        .trim()
        .to_owned();
    let ok = run.has("GOT-42-TERM")
        && run.has("OUTSOCK-INIT: stop requested")
        && run.has("OUTSOCK-INIT: exit=0")
        && run.signal == Some(libc::SIGTERM)
        && run.stderr.contains("Ctrl+Alt+Del")
        && after.is_some_and(|t| t < Duration::from_secs(15));
    d.report(
        "stop-graceful",
        ok,
        &format!(
            "keyboard: {keyboard}; SIGTERM with --stop-timeout-secs 20 -> {}, {}, {}; VMM {} {} \
             after the SIGTERM",
            seen(&run, "GOT-42-TERM", "the command's TERM trap ran"),
            seen(&run, "OUTSOCK-INIT: stop requested", "/init saw the stop"),
            seen(&run, "OUTSOCK-INIT: exit=0", "/init exit=0"),
            run.status_text(),
            ms(after),
        ),
    );

    let timeout = SHORT_STOP_TIMEOUT_S.to_string();
    let run = d.run_with(
        "stop-timeout",
        &["--stop-timeout-secs", &timeout],
        Some(&ignoring_guest("IGNORE-READY")),
        RunOpts {
            stop_when: Some(("IGNORE-READY-42", 1)),
            ..RunOpts::default()
        },
    );
    let after = stop_took(&run, "IGNORE-READY-42");
    let ok = !run.has("OUTSOCK-INIT: stop requested")
        && run.signal == Some(libc::SIGTERM)
        && run.stderr.contains("did not power off")
        && after.is_some_and(|t| {
            t >= Duration::from_secs(SHORT_STOP_TIMEOUT_S)
                && t < Duration::from_secs(SHORT_STOP_TIMEOUT_S + 10)
        });
    d.report(
        "stop-timeout",
        ok,
        &format!(
            "a guest that ignores the stop, --stop-timeout-secs {timeout}: VMM {} {} after the \
             SIGTERM{}",
            run.status_text(),
            ms(after),
            if run.stderr.contains("did not power off") {
                ", said the guest did not power off"
            } else {
                ", no timeout message"
            },
        ),
    );

    let timeout = LONG_STOP_TIMEOUT_S.to_string();
    let again = Duration::from_secs(2);
    let run = d.run_with(
        "stop-twice",
        &["--stop-timeout-secs", &timeout],
        Some(&ignoring_guest("TWICE-READY")),
        RunOpts {
            stop_when: Some(("TWICE-READY-42", 1)),
            stop_again_after: Some(again),
            ..RunOpts::default()
        },
    );
    let after = stop_took(&run, "TWICE-READY-42");
    let ok = run.signal == Some(libc::SIGTERM)
        && run.stderr.contains("again")
        && after.is_some_and(|t| t >= again && t < again + Duration::from_secs(10));
    d.report(
        "stop-twice",
        ok,
        &format!(
            "a guest that ignores the stop, --stop-timeout-secs {timeout}, a second SIGTERM \
             {} s after the first: VMM {} {} after the first",
            again.as_secs(),
            run.status_text(),
            ms(after),
        ),
    );
    stop_shell(d);
}

/// The interactive shell keeps the kernel's Ctrl-Alt-Del reboot: a stop reboots the guest at
/// once, and the VMM counts that reboot as the stop.
fn stop_shell(d: &mut Driver) {
    let run = d.run_with(
        "stop-shell",
        &["--stop-timeout-secs", "20"],
        None,
        RunOpts {
            input: Some("echo SHELL-$((6*7))\n"),
            stop_when: Some(("SHELL-42", 1)),
            ..RunOpts::default()
        },
    );
    let after = stop_took(&run, "SHELL-42");
    let ok = run.signal == Some(libc::SIGTERM)
        && run.stderr.contains("Ctrl+Alt+Del")
        && run.has("Restarting system")
        && after.is_some_and(|t| t < Duration::from_secs(15));
    d.report(
        "stop-shell",
        ok,
        &format!(
            "no command (shell on the console), SIGTERM -> {}; VMM {} {} after the SIGTERM",
            seen(&run, "Restarting system", "the kernel rebooted"),
            run.status_text(),
            ms(after),
        ),
    );
}

/// From the console line with `marker` (the driver sends SIGTERM within ~20 ms of it) to the
/// end of the VMM.
/// "N ms", or "?" when the stop was not timed.
fn ms(took: Option<Duration>) -> String {
    took.map_or("?".into(), |t| format!("{} ms", t.as_millis()))
}

fn stop_took(run: &crate::Run, marker: &str) -> Option<Duration> {
    run.first(marker)
        .map(|(t, _)| run.took.saturating_sub(t))
        .filter(|_| !run.timed_out)
}

fn seen(run: &crate::Run, needle: &str, what: &str) -> String {
    if run.has(needle) {
        what.to_owned()
    } else {
        format!("no `{needle}`")
    }
}
