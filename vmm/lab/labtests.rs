//! outsock-vmm-labtests: the VMM boot tests, run against a real /dev/kvm (inside the lab VM
//! or on a host with hardware KVM; see vmm/lab/run, which builds everything and starts it).
//!
//! Each run spawns `outsock-vmm` on the guest image with a command for its /init, captures
//! the guest console with timestamps, and checks markers and the exit status. Results go to
//! stdout and, one line per test (`PASS name: detail` / `FAIL name: detail`), to `--results`;
//! the full console of each run to `--logs`.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;

mod vm_e2e;

#[derive(Debug, Parser)]
struct Args {
    #[arg(long)]
    vmm: PathBuf,
    #[arg(long)]
    kernel: PathBuf,
    #[arg(long)]
    initramfs: PathBuf,
    /// The `uname -r` the guest must print.
    #[arg(long)]
    kernel_release: String,
    #[arg(long)]
    results: PathBuf,
    #[arg(long)]
    logs: PathBuf,
    /// Run only these comma-separated test groups: boot, reboot, console, panic, bad-kernel, vm.
    #[arg(long)]
    only: Option<String>,
    /// Where outsock-dns-cache and outsock-host-server are (the `vm` group's test world).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Per-run limit in seconds.
    #[arg(long, default_value_t = 150)]
    run_timeout: u64,
}

/// One captured VMM run.
#[derive(Debug, Default)]
struct Run {
    /// Guest console lines with the time since the VMM was started.
    lines: Vec<(Duration, String)>,
    stderr: String,
    status: Option<i32>,
    timed_out: bool,
}

impl Run {
    fn console(&self) -> String {
        self.lines
            .iter()
            .map(|(_, l)| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }
    fn has(&self, needle: &str) -> bool {
        self.lines.iter().any(|(_, l)| l.contains(needle))
    }
    fn first(&self, needle: &str) -> Option<(Duration, &str)> {
        self.lines
            .iter()
            .find(|(_, l)| l.contains(needle))
            .map(|(t, l)| (*t, l.as_str()))
    }
    fn status_text(&self) -> String {
        match (self.timed_out, self.status) {
            (true, _) => "timed out".into(),
            (false, Some(s)) => format!("exit {s}"),
            (false, None) => "killed by a signal".into(),
        }
    }
}

struct Driver {
    args: Args,
    results: Vec<String>,
    /// Added to every guest command line before the `--`.
    extra_cmdline: String,
}

impl Driver {
    /// Runs the VMM; `stop_when` ends the run early (VMM killed) once a line matches.
    fn run(&self, name: &str, extra: &[&str], cmd: &str, stop_when: Option<(&str, usize)>) -> Run {
        self.run_with_input(name, extra, Some(cmd), stop_when, None)
    }

    /// Like [`Driver::run`]; `cmd: None` leaves /init to start a shell on the console, and
    /// `input` is typed into the console (stdin) once /init has started.
    fn run_with_input(
        &self,
        name: &str,
        extra: &[&str],
        cmd: Option<&str>,
        stop_when: Option<(&str, usize)>,
        input: Option<&str>,
    ) -> Run {
        let started = Instant::now();
        let mut command = Command::new(&self.args.vmm);
        if !extra.contains(&"--kernel") {
            command.arg("--kernel").arg(&self.args.kernel);
        }
        let mut child = match command
            .arg("--initramfs")
            .arg(&self.args.initramfs)
            .arg("--name")
            .arg(name)
            .args(if input.is_none() {
                &["--no-stdin"][..]
            } else {
                &[][..]
            })
            .arg("--extra-cmdline")
            .arg(match cmd {
                Some(cmd) => format!("{} -- \"{cmd}\"", self.extra_cmdline),
                None => self.extra_cmdline.clone(),
            })
            .args(extra)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                return Run {
                    stderr: format!("cannot start {}: {e}", self.args.vmm.display()),
                    ..Default::default()
                }
            }
        };
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("piped stdout");
        let out_lines = Arc::clone(&lines);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).split(b'\n') {
                let Ok(line) = line else { break };
                let text = String::from_utf8_lossy(&line)
                    .trim_end_matches('\r')
                    .to_string();
                out_lines
                    .lock()
                    .expect("lock")
                    .push((started.elapsed(), text));
            }
        });
        let mut stderr = child.stderr.take().expect("piped stderr");
        let err_reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
            s
        });
        let deadline = started + Duration::from_secs(self.args.run_timeout);
        let mut run = Run::default();
        let mut stdin = child.stdin.take();
        loop {
            if let (Some(text), Some(pipe)) = (input, stdin.as_mut()) {
                if lines
                    .lock()
                    .expect("lock")
                    .iter()
                    .any(|(_, l)| l.contains("OUTSOCK-INIT: start"))
                {
                    // Give the shell a moment to print its prompt, then type.
                    std::thread::sleep(Duration::from_millis(500));
                    let _ = pipe.write_all(text.as_bytes());
                    let _ = pipe.flush();
                    stdin = None;
                }
            }
            if let Ok(Some(st)) = child.try_wait() {
                run.status = st.code();
                break;
            }
            if let Some((needle, count)) = stop_when {
                let seen = lines
                    .lock()
                    .expect("lock")
                    .iter()
                    .filter(|(_, l)| l.contains(needle))
                    .count();
                if seen >= count {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
            }
            if Instant::now() > deadline {
                run.timed_out = true;
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = reader.join();
        run.stderr = err_reader.join().unwrap_or_default();
        run.lines = std::mem::take(&mut *lines.lock().expect("lock"));
        let log = self.args.logs.join(format!("{name}.log"));
        let _ = std::fs::write(
            &log,
            format!("{}\n--- stderr ---\n{}", run.console(), run.stderr),
        );
        run
    }

    fn report(&mut self, name: &str, ok: bool, detail: &str) {
        let line = format!("{} {name}: {detail}", if ok { "PASS" } else { "FAIL" });
        println!("{line}");
        self.results.push(line);
        self.flush();
    }

    fn info(&mut self, text: &str) {
        let line = format!("INFO {text}");
        println!("{line}");
        self.results.push(line);
        self.flush();
    }

    fn flush(&self) {
        if let Ok(mut f) = std::fs::File::create(&self.args.results) {
            if self.args.only.is_none() {
                let _ = writeln!(f, "EXPECTED {EXPECTED}");
            }
            for l in &self.results {
                let _ = writeln!(f, "{l}");
            }
        }
    }
}

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

const EXPECTED: usize = 10 + vm_e2e::CHECKS;

fn boot_tests(d: &mut Driver, vcpus: u8) {
    let name = format!("boot-{vcpus}vcpu");
    let cmd = "echo UNAME=$(uname -r); echo CPUS=$(grep -c ^processor /proc/cpuinfo); dmesg";
    let run = d.run(&name, &["--vcpus", &vcpus.to_string()], cmd, None);
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

    let bad = bad_klog_lines(&run.console());
    let klog_ok = run.has("OUTSOCK-INIT: exit=0") && bad.is_empty();
    d.report(
        &format!("klog-clean-{vcpus}vcpu"),
        klog_ok,
        &if bad.is_empty() {
            "no XSAVE/TSC/IRQ/ACPI error lines in dmesg".into()
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

fn main() {
    let args = Args::parse();
    if let Some(dir) = &args.bin_dir {
        // Read by testworld::stack::bin_dir; set before any thread starts.
        std::env::set_var("OUTSOCK_BIN_DIR", dir);
    }
    let _ = std::fs::create_dir_all(&args.logs);
    // A host CPU without a constant TSC (QEMU's emulated CPU in the lab) cannot give the guest
    // one, and a multi-vCPU guest on a non-Intel CPU without it marks its TSC unstable. That
    // is a property of the host, not of the VMM: say so and tell the guest to trust its TSC.
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let constant_tsc = cpuinfo
        .lines()
        .any(|l| l.starts_with("flags") && l.split_whitespace().any(|f| f == "constant_tsc"));
    let extra_cmdline = if constant_tsc {
        String::new()
    } else {
        "tsc=reliable".to_owned()
    };
    let mut d = Driver {
        args,
        results: Vec::new(),
        extra_cmdline,
    };
    if !constant_tsc {
        d.info("this CPU has no constant_tsc flag (emulated lab CPU): guests get tsc=reliable");
    }
    let total = Instant::now();
    let only = d.args.only.clone().unwrap_or_default();
    let want = |group: &str| only.is_empty() || only.split(',').any(|g| g == group);

    if want("boot") {
        boot_tests(&mut d, 1);
        boot_tests(&mut d, 2);
    }
    if want("reboot") {
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

        let run = d.run(
            "reboot-restart",
            &["--on-reboot", "restart"],
            "reboot -f",
            Some(("OUTSOCK-INIT: start", 2)),
        );
        let boots = run
            .lines
            .iter()
            .filter(|(_, l)| l.contains("OUTSOCK-INIT: start"))
            .count();
        d.report("reboot-restart", boots >= 2 && run.stderr.contains("restarting"), &format!("guest `reboot -f` with --on-reboot restart -> {boots} boots seen (want 2, then stopped)"),
    );
    }
    if want("console") {
        let run = d.run_with_input(
            "console-input",
            &[],
            None,
            None,
            Some("echo $((6*7))-from-stdin\npoweroff -f\n"),
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
    if want("panic") {
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
    if want("bad-kernel") {
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

    if want("vm") {
        vm_e2e::run(&mut d);
    }

    let passed = d.results.iter().filter(|l| l.starts_with("PASS")).count();
    let failed = d.results.iter().filter(|l| l.starts_with("FAIL")).count();
    d.info(&format!(
        "in-lab driver finished in {} s",
        total.elapsed().as_secs()
    ));
    println!("labtests summary: passed={passed} failed={failed}");
    std::process::exit(i32::from(failed > 0));
}
