//! outsock-vmm-labtests: the VMM boot tests, run against a real /dev/kvm (inside the lab VM
//! or on a host with hardware KVM; see vmm/lab/run, which builds everything and starts it).
//!
//! Each run spawns `outsock-vmm` on the guest image with a command for its /init, captures
//! the guest console with timestamps, and checks markers and the exit status. Results go to
//! stdout and, one line per test (`PASS name: detail` / `FAIL name: detail`), to `--results`;
//! the full console of each run to `--logs`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;

mod sd_notify;
mod vm_e2e;

use sd_notify::Notify;

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
    /// The signal that ended the VMM, if one did.
    signal: Option<i32>,
    timed_out: bool,
    /// What the VMM told systemd (with `RunOpts::notify`), timed like `lines`.
    notify: Vec<(Duration, String)>,
    /// How long the run took.
    took: Duration,
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
        match (self.timed_out, self.status, self.signal) {
            (true, _, _) => "timed out".into(),
            (false, Some(s), _) => format!("exit {s}"),
            (false, None, Some(sig)) => format!("ended by signal {sig}"),
            (false, None, None) => "killed by a signal".into(),
        }
    }
}

/// Sees each console line of a run; what it returns is typed into the console.
type LineHook<'a> = dyn FnMut(&str) -> Option<String> + 'a;

/// How a VMM run is driven, beyond its name, flags and guest command.
#[derive(Default)]
struct RunOpts<'a> {
    /// End the run once this many console lines contain the text: SIGTERM (the way systemd
    /// stops a unit), then SIGKILL if the VMM is still there 10 s later.
    stop_when: Option<(&'a str, usize)>,
    /// Typed into the console (stdin) once /init has started.
    input: Option<&'a str>,
    /// Extra environment for the VMM.
    env: Vec<(String, String)>,
    /// A recording notification socket, given to the VMM as `NOTIFY_SOCKET`.
    notify: Option<&'a Notify>,
    /// Called with each new console line; what it returns is typed into the console. Runs on
    /// the driver's thread while the guest goes on (it may take seconds).
    on_line: Option<&'a mut LineHook<'a>>,
    /// The run's limit, when not `--run-timeout`.
    timeout: Option<Duration>,
}

struct Driver {
    args: Args,
    results: Vec<String>,
    /// Added to every guest command line before the `--`.
    extra_cmdline: String,
}

impl Driver {
    /// Runs the VMM with `cmd` for the guest's /init (`None`: /init starts a shell on the
    /// console). `extra` are more VMM flags.
    fn run(&self, name: &str, extra: &[&str], cmd: &str, stop_when: Option<(&str, usize)>) -> Run {
        self.run_with(
            name,
            extra,
            Some(cmd),
            RunOpts {
                stop_when,
                ..RunOpts::default()
            },
        )
    }

    #[allow(clippy::too_many_lines)] // One linear sequence: spawn, watch, stop, collect.
    fn run_with(&self, name: &str, extra: &[&str], cmd: Option<&str>, mut opts: RunOpts) -> Run {
        let started = Instant::now();
        let interactive = opts.input.is_some() || opts.on_line.is_some();
        let mut command = Command::new(&self.args.vmm);
        if !extra.contains(&"--kernel") {
            command.arg("--kernel").arg(&self.args.kernel);
        }
        if let Some(n) = opts.notify {
            command.env("NOTIFY_SOCKET", n.path());
        }
        let mut child = match command
            .envs(opts.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .arg("--initramfs")
            .arg(&self.args.initramfs)
            .arg("--name")
            .arg(name)
            .args(if interactive {
                &[][..]
            } else {
                &["--no-stdin"][..]
            })
            .arg("--extra-cmdline")
            .arg(match cmd {
                Some(cmd) => format!("{} -- \"{cmd}\"", self.extra_cmdline),
                None => self.extra_cmdline.clone(),
            })
            .args(extra)
            .stdin(if interactive {
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
        let limit = opts
            .timeout
            .unwrap_or(Duration::from_secs(self.args.run_timeout));
        let deadline = started + limit;
        let mut run = Run::default();
        let mut stdin = child.stdin.take();
        let mut input = opts.input;
        let mut seen = 0;
        loop {
            let new: Vec<String> = {
                let l = lines.lock().expect("lock");
                let new = l[seen..].iter().map(|(_, t)| t.clone()).collect();
                seen = l.len();
                new
            };
            for line in &new {
                if let (Some(text), true) = (input, line.contains("OUTSOCK-INIT: start")) {
                    // Give the shell a moment to print its prompt, then type.
                    std::thread::sleep(Duration::from_millis(500));
                    type_into(stdin.as_mut(), text);
                    input = None;
                }
                if let Some(f) = opts.on_line.as_mut() {
                    if let Some(text) = f(line) {
                        type_into(stdin.as_mut(), &text);
                    }
                }
            }
            if let Ok(Some(st)) = child.try_wait() {
                run.status = st.code();
                run.signal = st.signal();
                break;
            }
            if let Some((needle, count)) = opts.stop_when {
                let matched = lines
                    .lock()
                    .expect("lock")
                    .iter()
                    .filter(|(_, l)| l.contains(needle))
                    .count();
                if matched >= count {
                    let st = terminate(&mut child);
                    run.status = st.and_then(|s| s.code());
                    run.signal = st.and_then(|s| s.signal());
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
        drop(stdin);
        run.took = started.elapsed();
        let _ = reader.join();
        run.stderr = err_reader.join().unwrap_or_default();
        run.lines = std::mem::take(&mut *lines.lock().expect("lock"));
        if let Some(n) = opts.notify {
            // The last datagrams may still be in flight when the VMM has just ended.
            std::thread::sleep(Duration::from_millis(300));
            run.notify = n.events_since(started);
        }
        let log = self.args.logs.join(format!("{name}.log"));
        let notify_log: String = run
            .notify
            .iter()
            .map(|(t, s)| format!("{} ms {}\n", t.as_millis(), s.replace('\n', " ")))
            .collect();
        let _ = std::fs::write(
            &log,
            format!(
                "{}\n--- stderr ---\n{}\n--- notifications ---\n{notify_log}",
                run.console(),
                run.stderr
            ),
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

/// Types `text` into the VMM's stdin (the guest console), if it is piped.
fn type_into(stdin: Option<&mut ChildStdin>, text: &str) {
    if let Some(pipe) = stdin {
        let _ = pipe.write_all(text.as_bytes());
        let _ = pipe.flush();
    }
}

/// Stops the VMM as systemd would: SIGTERM, then SIGKILL after 10 s.
fn terminate(child: &mut Child) -> Option<ExitStatus> {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait().ok()
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

const EXPECTED: usize = 11 + vm_e2e::CHECKS;

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
    if want("console") {
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
