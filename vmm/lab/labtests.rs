//! outsock-vmm-labtests: the VMM boot tests, run against a real /dev/kvm (inside the lab VM
//! or on a host with hardware KVM; see vmm/lab/run, which builds everything and starts it).
//!
//! Each run spawns `outsock-vmm` on the guest image with a command for its /init, captures
//! the guest console with timestamps, and checks markers and the exit status. Results go to
//! stdout and, one line per test (`PASS name: detail` / `FAIL name: detail`), to `--results`;
//! the full console of each run to `--logs`.

use std::cell::RefCell;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;

mod machine_tests;
mod sd_notify;
mod vm_e2e;
mod vm_plural;
mod vm_world;

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
    /// Run only these comma-separated test groups: boot, reboot, console, panic, bad-kernel,
    /// stop, vm (with plural), plural.
    #[arg(long)]
    only: Option<String>,
    /// Where outsock-dns-cache and outsock-host-server are (the `vm` group's test world).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// The `outsock` CLI: the `vm` group also checks `outsock vm run` and `outsock vm ls`
    /// (after its own run).
    #[arg(long)]
    outsock: Option<PathBuf>,
    /// Per-run limit in seconds.
    #[arg(long, default_value_t = 150)]
    run_timeout: u64,
    /// Keep the results of groups an earlier, interrupted run finished (see `finished_groups`).
    #[arg(long)]
    resume: bool,
    /// Run a test once more when its guest crashed (VMM exit 4: triple fault, KVM internal
    /// error). Only for the lab VM, whose emulated SVM occasionally crashes a guest; each
    /// retry is reported as an INFO line.
    #[arg(long)]
    retry_guest_crash: bool,
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
    /// Whether the guest crashed the vCPU (VMM exit 4).
    fn guest_crashed(&self) -> bool {
        self.status == Some(4)
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
    /// stops a unit), then SIGKILL if the VMM is still there 30 s later (the VMM's stop
    /// timeout is 10 s by default, systemd's TimeoutStopSec in our unit 20 s).
    stop_when: Option<(&'a str, usize)>,
    /// With `stop_when`: a second SIGTERM this long after the first.
    stop_again_after: Option<Duration>,
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
    /// The console log's name (`<log_name>.log`), when not the run's name.
    log_name: Option<&'a str>,
}

struct Driver {
    args: Args,
    results: Vec<String>,
    /// Added to every guest command line before the `--`.
    extra_cmdline: String,
    /// INFO lines from runs (retries), written before the next result.
    notes: RefCell<Vec<String>>,
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

    /// Like [`Driver::run`] with more options. With `--retry-guest-crash`, a run whose guest
    /// crashed (VMM exit 4) runs once more, unless it is interactive (`on_line`: the caller
    /// decides).
    fn run_with(&self, name: &str, extra: &[&str], cmd: Option<&str>, mut opts: RunOpts) -> Run {
        let run = self.run_once(name, extra, cmd, &mut opts);
        if self.args.retry_guest_crash && run.guest_crashed() && opts.on_line.is_none() {
            let log = opts.log_name.unwrap_or(name);
            self.keep_crashed_log(log);
            self.note(&format!(
                "{log}: the guest crashed ({}; console in {log}-crashed.log); running it again",
                run.stderr.lines().last().unwrap_or("no message").trim()
            ));
            return self.run_once(name, extra, cmd, &mut opts);
        }
        run
    }

    /// Keeps the console log of a run that is about to be repeated.
    fn keep_crashed_log(&self, name: &str) {
        self.keep_crashed_log_as(name, &format!("{name}-crashed"));
    }

    /// Keeps `name`'s console as `kept`.log.
    fn keep_crashed_log_as(&self, name: &str, kept: &str) {
        let _ = std::fs::rename(
            self.args.logs.join(format!("{name}.log")),
            self.args.logs.join(format!("{kept}.log")),
        );
    }

    /// Queues an INFO line (written before the next result).
    fn note(&self, text: &str) {
        println!("INFO {text}");
        self.notes.borrow_mut().push(format!("INFO {text}"));
    }

    #[allow(clippy::too_many_lines)] // One linear sequence: spawn, watch, stop, collect.
    fn run_once(&self, name: &str, extra: &[&str], cmd: Option<&str>, opts: &mut RunOpts) -> Run {
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
                    let st = terminate(&mut child, opts.stop_again_after);
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
        let log = self
            .args
            .logs
            .join(format!("{}.log", opts.log_name.unwrap_or(name)));
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
        let notes = std::mem::take(&mut *self.notes.borrow_mut());
        self.results.extend(notes);
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
                let expected: usize = groups().iter().map(|(_, tests, _)| tests.len()).sum();
                let _ = writeln!(f, "EXPECTED {expected}");
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

/// Stops the VMM as systemd would: SIGTERM (again after `again_after`, if given), then SIGKILL
/// after 30 s.
fn terminate(child: &mut Child, again_after: Option<Duration>) -> Option<ExitStatus> {
    let sigterm = |child: &Child| {
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
    };
    sigterm(child);
    let started = Instant::now();
    let mut again = again_after;
    let deadline = started + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        if again.is_some_and(|a| started.elapsed() >= a) {
            sigterm(child);
            again = None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait().ok()
}

/// A test group: its name (for `--only`), the tests it reports, and what runs it.
type Group = (&'static str, &'static [&'static str], fn(&mut Driver));

/// The groups, in order.
fn groups() -> Vec<Group> {
    vec![
        ("boot", machine_tests::BOOT, machine_tests::boot),
        ("reboot", machine_tests::REBOOT, machine_tests::reboot),
        ("console", machine_tests::CONSOLE, machine_tests::console),
        ("panic", machine_tests::PANIC, machine_tests::panic),
        (
            "bad-kernel",
            machine_tests::BAD_KERNEL,
            machine_tests::bad_kernel,
        ),
        ("stop", machine_tests::STOP, machine_tests::stop),
        ("vm", &vm_e2e::NAMES, vm_e2e::run),
        ("plural", &vm_plural::NAMES, vm_plural::run),
    ]
}

/// With `--resume`: the results of an earlier, interrupted driver run (the lab VM crashed)
/// that belong to groups it finished; those groups are not run again.
fn finished_groups(args: &Args) -> (Vec<String>, Vec<&'static str>) {
    if !args.resume {
        return (Vec::new(), Vec::new());
    }
    let old = std::fs::read_to_string(&args.results).unwrap_or_default();
    let reported = |test: &str| {
        old.lines().find(|l| {
            (l.starts_with("PASS ") || l.starts_with("FAIL "))
                && l[5..].split(':').next() == Some(test)
        })
    };
    let mut kept = Vec::new();
    let mut done = Vec::new();
    for (name, tests, _) in groups() {
        let lines: Vec<&str> = tests.iter().filter_map(|t| reported(t)).collect();
        if lines.len() == tests.len() {
            kept.extend(lines.into_iter().map(str::to_owned));
            done.push(name);
        }
    }
    (kept, done)
}

/// How often the driver shows it is alive (see [`start_heartbeat`]).
const HEARTBEAT: Duration = Duration::from_secs(10);

/// Rewrites `heartbeat` next to the results file every [`HEARTBEAT`]: the results folder is a
/// 9p share of the host's, so `vmm/lab/run` sees the file's time move while the lab VM runs,
/// and a lab VM frozen by the emulation (no console output, no timer: seen in CI) shows as a
/// heartbeat that stopped. A slow test keeps the heartbeat going.
fn start_heartbeat(results: &std::path::Path) {
    let path = results.with_file_name("heartbeat");
    let start = Instant::now();
    let _ = std::thread::Builder::new()
        .name("heartbeat".into())
        .spawn(move || loop {
            let _ = std::fs::write(&path, format!("{}\n", start.elapsed().as_secs()));
            std::thread::sleep(HEARTBEAT);
        });
}

fn main() {
    let args = Args::parse();
    start_heartbeat(&args.results);
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
    let (kept, done) = finished_groups(&args);
    let mut d = Driver {
        args,
        results: kept,
        extra_cmdline,
        notes: RefCell::new(Vec::new()),
    };
    if d.args.resume {
        d.info(&format!(
            "the lab VM was booted again after it crashed or froze; groups already finished: {}",
            if done.is_empty() {
                "none".to_owned()
            } else {
                done.join(", ")
            }
        ));
    }
    if !constant_tsc {
        d.info("this CPU has no constant_tsc flag (emulated lab CPU): guests get tsc=reliable");
    }
    let total = Instant::now();
    let only = d.args.only.clone().unwrap_or_default();
    // `vm` includes `plural` (the two-VM checks); `plural` alone runs only those.
    let want = |group: &str| {
        only.is_empty()
            || only
                .split(',')
                .any(|g| g == group || (g == "vm" && group == "plural"))
    };
    for (name, _, run) in groups() {
        if want(name) && !done.contains(&name) {
            run(&mut d);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_keeps_only_finished_groups() {
        let dir = tempfile::tempdir().expect("temp dir");
        let results = dir.path().join("results.txt");
        std::fs::write(
            &results,
            "EXPECTED 9\nINFO x\nPASS reboot-exit: a\nFAIL reboot-restart: b\nPASS sd-notify: c\n\
             PASS boot-1vcpu: d\nPASS panic: e\n",
        )
        .expect("write");
        let args = Args::parse_from([
            "labtests",
            "--vmm=v",
            "--kernel=k",
            "--initramfs=i",
            "--kernel-release=r",
            "--logs=l",
            "--resume",
            &format!("--results={}", results.display()),
        ]);
        let (kept, done) = finished_groups(&args);
        assert_eq!(done, ["reboot", "panic"], "boot is unfinished");
        assert_eq!(
            kept,
            [
                "PASS reboot-exit: a",
                "FAIL reboot-restart: b",
                "PASS sd-notify: c",
                "PASS panic: e"
            ]
        );
    }
}
