//! The `plural` group (issue 14, items 3 and 4; run with the `vm` group): two VMs side by
//! side, `vm0` and `vm1`, each its own `[vms.NAME]` with its own `address`, against one
//! dns-cache and one host-server in a fresh test world; then host-server stalled under a VM.
//!
//! - both reach the world by name (`curl -4` to `v6only`);
//! - each one's outbound source is its own address: the world's peer server answers every
//!   connection with the address it saw;
//! - each one's listener receives only its own inbound traffic: both guests listen on the same
//!   port, and a world client sends each VM's address a line of its own;
//! - killing one (SIGKILL to vm1's VMM while its guest holds a TCP connection to the world,
//!   as a crash would) ends that connection at once on the network side — the passed socket
//!   died with the VMM, host-server keeps nothing of it — and leaves the other untouched: vm0
//!   connects by name again afterwards, from its own address;
//! - host-server stalled (SIGSTOP for 5 s, and its listen backlog filled by the driver, so that
//!   a connect to host.sock would block: what a stopped host-server under load looks like)
//!   never freezes the VMM: the guest starts a `curl` (its connects to host.sock cannot
//!   complete), and meanwhile lines typed on vm0's console are answered and a host connection
//!   to a guest vsock listener (through the VM's own socket, no host-server in its path) keeps
//!   echoing; after SIGCONT a fresh connect by name works. A VMM whose connect blocked would
//!   answer neither until SIGCONT.
//!
//! Unlike the `vm` group's runs (one VM at a time through [`crate::Driver::run_with`]), the two
//! VMMs here run at once, each with its console read by a thread of its own, and the driver
//! types into each console and waits for marker lines as the scenario goes.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::Ipv6Addr;
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use testworld::stack::Stack;
use testworld::{addr, zone, Netns};

use crate::vm_world::{self, PEER_PORT};
use crate::Driver;

/// The checks this group reports, in order.
pub const NAMES: [&str; 5] = [
    "vms-two-by-name",
    "vms-own-source",
    "vms-own-inbound",
    "vms-stop-one",
    "vms-host-server-stalled",
];
const VMS: [&str; 2] = ["vm0", "vm1"];
/// The guests' `nc -l` port (both VMs, each on its own address).
const INBOUND_PORT: u16 = 8081;
/// vm0's vsock echo listener (python3, AF_VSOCK), reached through the VM's socket.
const VSOCK_PORT: u32 = 9000;
/// The world's port where vm1 holds a connection when its VMM is killed.
const HOLD_PORT: u16 = 9101;
/// How soon the world must see that connection end after the kill.
const HOLD_ENDS_WITHIN: Duration = Duration::from_secs(5);
/// How long host-server stays stopped.
const STALL: Duration = Duration::from_secs(5);

fn vm_socket(vm: &str) -> String {
    format!("/tmp/outsock-lab-plural-{vm}.vsock")
}

/// The guests' script: `$1` is the VM's name. Markers are prefixed `PL-`; where the driver
/// acts the guest waits for a line on its console.
fn guest_script() -> String {
    format!(
        r#"VM=$1; V6={v6}
curl -4 -sS -m 30 http://$V6/index.html >/tmp/page; echo PL-CURL-RC=$? PL-PAGE=$(cat /tmp/page)
echo PL-SOURCE=$(/usr/bin/nc.traditional -w 10 $V6 {peer} </dev/null)
/usr/bin/nc.traditional -n -l -p {inbound} </dev/null >/tmp/nc-in.out 2>/dev/null & N=$!
echo PL-LISTENING
read -t 120 GO; echo PL-INBOUND=$(cat /tmp/nc-in.out)
kill $N 2>/dev/null; wait $N 2>/dev/null
if [ "$VM" != vm0 ]; then (sleep 600 | /usr/bin/nc.traditional $V6 {hold} >/dev/null 2>&1) & echo PL-IDLE; sleep 600; exit 0; fi
read -t 120 GO; echo PL-OTHER-STOPPED=$GO
curl -4 -sS -m 30 -o /dev/null http://$V6/index.html; echo PL-AFTER-STOP-RC=$?
echo PL-AFTER-STOP-SOURCE=$(/usr/bin/nc.traditional -w 10 $V6 {peer} </dev/null)
curl -4 -sS -m 30 -o /tmp/vsock-echo.py http://$V6/vsock-echo.py
python3 /tmp/vsock-echo.py {vsock} & P=$!
while read -t 120 L; do
  case "$L" in
    curl) (curl -4 -sS -m 40 -o /dev/null http://$V6/index.html; echo PL-STALLED-CURL-RC=$?) & C=$! ;;
    end) break ;;
    *) echo "PL-ECHO:$L" ;;
  esac
done
wait $C; curl -4 -sS -m 30 -o /dev/null http://$V6/index.html; echo PL-FRESH-CURL-RC=$?
kill $P 2>/dev/null
echo PL-DONE
"#,
        v6 = zone::V6ONLY,
        peer = PEER_PORT,
        hold = HOLD_PORT,
        inbound = INBOUND_PORT,
        vsock = VSOCK_PORT,
    )
}

/// vm0's vsock echo server: one connection, echoed until EOF.
const VSOCK_ECHO: &str = r#"import socket, sys
s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
s.bind((socket.VMADDR_CID_ANY, int(sys.argv[1])))
s.listen(4)
print("PL-VSOCK-LISTENING", flush=True)
c, _ = s.accept()
while True:
    d = c.recv(4096)
    if not d:
        break
    c.sendall(d)
"#;

/// One running VMM with its console.
struct Vm {
    name: &'static str,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Arc<Mutex<Vec<(Duration, String)>>>,
    stderr: Arc<Mutex<String>>,
    started: Instant,
    status: Option<ExitStatus>,
}

impl Vm {
    fn spawn(d: &Driver, name: &'static str, host_sock: &str, cmd: &str) -> Result<Self> {
        let started = Instant::now();
        let vsock = vm_socket(name);
        let mut child = Command::new(&d.args.vmm)
            .arg("--kernel")
            .arg(&d.args.kernel)
            .arg("--initramfs")
            .arg(&d.args.initramfs)
            .args(["--name", name, "--host-socket", host_sock])
            .args(["--vsock-socket", &vsock, "--mem-mib", "256"])
            .arg("--extra-cmdline")
            .arg(format!("{} -- \"{cmd}\"", d.extra_cmdline))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", d.args.vmm.display()))?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().context("stdout")?;
        let l = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(out).split(b'\n') {
                let Ok(line) = line else { break };
                let text = String::from_utf8_lossy(&line)
                    .trim_end_matches('\r')
                    .to_owned();
                l.lock().expect("lock").push((started.elapsed(), text));
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().context("stderr")?;
        let e = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            e.lock().expect("lock").push_str(&s);
        });
        Ok(Self {
            name,
            stdin: child.stdin.take(),
            child,
            lines,
            stderr,
            started,
            status: None,
        })
    }

    /// The first console line containing `needle` (its text after the needle), waiting up to
    /// `limit` for it.
    fn wait_for(&mut self, needle: &str, limit: Duration) -> Option<String> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(rest) = self.find(needle) {
                return Some(rest);
            }
            if Instant::now() > deadline || self.ended() {
                return self.find(needle);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn find(&self, needle: &str) -> Option<String> {
        self.lines.lock().expect("lock").iter().find_map(|(_, l)| {
            l.find(needle)
                .map(|at| l[at + needle.len()..].trim().to_owned())
        })
    }

    /// Whether the guest crashed its vCPU (the VMM's exit 4).
    fn crashed(&self) -> bool {
        self.status.and_then(|s| s.code()) == Some(4)
    }

    fn ended(&mut self) -> bool {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status.is_some()
    }

    fn type_line(&mut self, text: &str) {
        if let Some(pipe) = self.stdin.as_mut() {
            let _ = pipe.write_all(format!("{text}\n").as_bytes());
            let _ = pipe.flush();
        }
    }

    /// SIGTERM, as systemd stops a unit; waits up to `limit` for the VMM to end (then kills).
    fn stop(&mut self, limit: Duration) -> Option<ExitStatus> {
        self.signal("-TERM", limit)
    }

    /// SIGKILL, as a crash ends it; waits up to `limit` for the VMM to be reaped.
    fn kill(&mut self, limit: Duration) -> Option<ExitStatus> {
        self.signal("-KILL", limit)
    }

    fn signal(&mut self, sig: &str, limit: Duration) -> Option<ExitStatus> {
        let _ = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + limit;
        while !self.ended() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if !self.ended() {
            let _ = self.child.kill();
            let _ = self.child.wait();
            return None;
        }
        self.status
    }

    fn status_text(&self) -> String {
        match self.status {
            Some(s) => match (s.code(), s.signal()) {
                (Some(c), _) => format!("exit {c}"),
                (None, Some(sig)) => format!("ended by signal {sig}"),
                _ => "ended".to_owned(),
            },
            None => "running".to_owned(),
        }
    }

    /// Ends the VMM (if still running) and writes its console to `<name>-plural.log`.
    fn finish(&mut self, d: &Driver) {
        if !self.ended() {
            drop(self.stdin.take());
            self.stop(Duration::from_secs(20));
        }
        std::thread::sleep(Duration::from_millis(200));
        let console: String = self
            .lines
            .lock()
            .expect("lock")
            .iter()
            .map(|(t, l)| format!("{:>8.3} {l}\n", t.as_secs_f64()))
            .collect();
        let _ = std::fs::write(
            d.args.logs.join(format!("{}-plural.log", self.name)),
            format!(
                "{console}\n--- stderr ---\n{}\n--- {} after {:.1} s\n",
                self.stderr.lock().expect("lock"),
                self.status_text(),
                self.started.elapsed().as_secs_f64()
            ),
        );
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if !self.ended() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Whether something listens on exactly `[a]:port` in `ns`.
fn listening_on(ns: &Netns, a: Ipv6Addr, port: u16) -> bool {
    ns.command("ss")
        .args(["-Hltn", &format!("sport = :{port}")])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&format!("[{a}]:{port}")))
}

/// What the driver saw.
#[derive(Default)]
struct Seen {
    /// The world client's lines to each VM's address: the error, if one failed.
    inbound: Vec<Result<(), String>>,
    /// vm1's VMM after SIGKILL.
    vm1_stop: Option<String>,
    /// vm1's held connection, as the world's end saw it.
    hold: Hold,
    stall: Stall,
}

/// vm1's connection held across the kill of its VMM.
#[derive(Default, Debug)]
struct Hold {
    /// The address it came from (vm1's own).
    source: Option<Ipv6Addr>,
    /// How long after the kill the world saw it end (EOF or reset).
    ended_after: Option<Duration>,
    error: Option<String>,
}

/// A server in `world` on [`HOLD_PORT`]: accepts one connection and reports its source, then
/// when it ends.
fn hold_server(stack: &Stack) -> Result<std::sync::mpsc::Receiver<(Option<Ipv6Addr>, Instant)>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let listener = stack.world.world().run(|| {
        std::net::TcpListener::bind(("::", HOLD_PORT)).context("binding the hold server")
    })??;
    std::thread::spawn(move || {
        let Ok((mut c, peer)) = listener.accept() else {
            return;
        };
        let source = match peer.ip() {
            std::net::IpAddr::V6(a) => Some(a),
            std::net::IpAddr::V4(_) => None,
        };
        let _ = tx.send((source, Instant::now()));
        let mut buf = [0u8; 4096];
        while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
        let _ = tx.send((source, Instant::now()));
    });
    Ok(rx)
}

/// What happened while host-server was stopped.
#[derive(Default, Debug)]
struct Stall {
    /// Console echoes that came back while host-server was stopped, and how long each took.
    console: Vec<(String, Option<Duration>)>,
    /// The vsock echo through the VM's socket: before the stall, during it (and its time).
    vsock_before: Option<Result<(), String>>,
    vsock_during: Option<Result<Duration, String>>,
    /// How long host-server was stopped.
    stopped_for: Option<Duration>,
    /// Connections the driver made to fill host-server's backlog while it was stopped.
    filled: usize,
    error: Option<String>,
}

/// Runs the group; reports every check in [`NAMES`].
pub fn run(d: &mut Driver) {
    let mut outcome = attempt(d);
    // The emulated lab now and then crashes a guest's vCPU (a triple fault early in boot, the
    // VMM's exit 4): with `--retry-guest-crash` the group runs once more, as a single guest's
    // run does, each crashed console kept.
    let crashed: Vec<&'static str> = match &outcome {
        Ok((vms, _)) if d.args.retry_guest_crash => {
            vms.iter().filter(|v| v.crashed()).map(|v| v.name).collect()
        }
        _ => Vec::new(),
    };
    if !crashed.is_empty() {
        for name in &crashed {
            d.keep_crashed_log_as(&format!("{name}-plural"), &format!("{name}-plural-crashed"));
        }
        d.note(&format!(
            "{}: the guest crashed (exit 4; console in <vm>-plural-crashed.log); running the two-VM group again",
            crashed.join(", ")
        ));
        drop(outcome);
        outcome = attempt(d);
    }
    let (vms, seen) = match outcome {
        Ok(x) => x,
        Err(e) => {
            for name in NAMES {
                d.report(
                    name,
                    false,
                    &format!("the two-VM run did not happen: {e:#}"),
                );
            }
            return;
        }
    };
    judge(d, &vms, &seen);
}

#[allow(clippy::too_many_lines)] // One scenario, step by step.
fn attempt(d: &mut Driver) -> Result<([Vm; 2], Seen)> {
    let mut extra = format!(
        "[listen]\ndefault_address = \"{}\"\nallowed_ports = [{INBOUND_PORT}]\n",
        addr::HOST
    );
    for (i, vm) in VMS.iter().enumerate() {
        extra += &format!(
            "[vms.{vm}]\nsocket = \"{}\"\naddress = \"{}\"\nvmm_uid = 0\n",
            vm_socket(vm),
            addr::HOST_VMS[i]
        );
    }
    let mut stack = Stack::start("labvms", &extra)?;
    vm_world::start_servers(&mut stack)?;
    let www = stack.world.path("www");
    std::fs::write(www.join("vm-plural.sh"), guest_script())?;
    std::fs::write(www.join("vsock-echo.py"), VSOCK_ECHO)?;
    let host_sock = stack.host_sock().to_string_lossy().into_owned();
    let cmd = |vm: &str| {
        format!(
            "curl -4 -sS -m 60 -o /tmp/pl.sh http://{}/vm-plural.sh; echo FETCH-RC=$?; sh /tmp/pl.sh {vm}",
            zone::V6ONLY
        )
    };
    let mut vms = [
        Vm::spawn(d, VMS[0], &host_sock, &cmd(VMS[0]))?,
        Vm::spawn(d, VMS[1], &host_sock, &cmd(VMS[1]))?,
    ];
    let mut seen = Seen::default();
    let result = scenario(&mut stack, &mut vms, &mut seen);
    for vm in &mut vms {
        vm.finish(d);
    }
    let _ = std::fs::write(d.args.logs.join("vms-plural-daemons.log"), stack.logs());
    if let Err(e) = result {
        seen.stall.error.get_or_insert(format!("{e:#}"));
    }
    Ok((vms, seen))
}

fn scenario(stack: &mut Stack, vms: &mut [Vm; 2], seen: &mut Seen) -> Result<()> {
    // Both boot, connect by name and listen, side by side (the lab is slow: generous bounds).
    for vm in vms.iter_mut() {
        if vm
            .wait_for("PL-LISTENING", Duration::from_secs(240))
            .is_none()
        {
            bail!("{} never listened ({})", vm.name, vm.status_text());
        }
    }
    let host = stack.world.host();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !addr::HOST_VMS
        .iter()
        .all(|a| listening_on(host, *a, INBOUND_PORT))
    {
        if Instant::now() > deadline {
            bail!("host-server does not listen on both VMs' addresses, port {INBOUND_PORT}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for (i, a) in addr::HOST_VMS.iter().enumerate() {
        let line = format!("to-{}\n", VMS[i]);
        seen.inbound.push(
            vm_world::world_client(stack, *a, INBOUND_PORT, line.into_bytes())
                .map(|_| ())
                .map_err(|e| format!("{e:#}")),
        );
    }
    for vm in vms.iter_mut() {
        vm.type_line("go");
    }
    for vm in vms.iter_mut() {
        vm.wait_for("PL-INBOUND=", Duration::from_secs(60));
    }
    // Kill vm1's VMM while its guest holds a connection to the world; vm0 goes on.
    let held = hold_server(stack)?;
    vms[1].wait_for("PL-IDLE", Duration::from_secs(30));
    match held.recv_timeout(Duration::from_secs(30)) {
        Ok((source, _)) => {
            seen.hold.source = source;
            let killed = Instant::now();
            vms[1].kill(Duration::from_secs(30));
            match held.recv_timeout(HOLD_ENDS_WITHIN) {
                Ok((_, ended)) => {
                    seen.hold.ended_after = Some(ended.saturating_duration_since(killed));
                }
                Err(_) => seen.hold.error = Some("still open after the kill".into()),
            }
        }
        Err(_) => {
            seen.hold.error = Some("vm1's connection never reached the world".into());
            vms[1].kill(Duration::from_secs(30));
        }
    }
    seen.vm1_stop = Some(vms[1].status_text());
    let vm0 = &mut vms[0];
    vm0.type_line("go");
    if vm0
        .wait_for("PL-VSOCK-LISTENING", Duration::from_secs(120))
        .is_none()
    {
        bail!("vm0's vsock listener did not start");
    }
    stall(stack, vm0, &mut seen.stall);
    vm0.wait_for("PL-DONE", Duration::from_secs(120));
    // The script ends: /init powers the guest off and the VMM exits by itself.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !vm0.ended() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Opens a host connection to vm0's vsock listener through the VM's socket (`CONNECT`).
fn vsock_connect() -> Result<UnixStream> {
    let mut s = UnixStream::connect(vm_socket("vm0")).context("connect to vm0's socket")?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(format!("CONNECT {VSOCK_PORT}\n").as_bytes())?;
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.last() != Some(&b'\n') {
        s.read_exact(&mut b).context("reading the OK line")?;
        line.push(b[0]);
    }
    if !line.starts_with(b"OK ") {
        bail!("answer {:?}", String::from_utf8_lossy(&line));
    }
    Ok(s)
}

fn vsock_echo(s: &mut UnixStream, text: &str) -> Result<Duration> {
    let t0 = Instant::now();
    s.write_all(text.as_bytes())?;
    let mut back = vec![0u8; text.len()];
    s.read_exact(&mut back).context("reading the echo")?;
    if back != text.as_bytes() {
        bail!("echo {:?}", String::from_utf8_lossy(&back));
    }
    Ok(t0.elapsed())
}

/// Connects to `path` without blocking until its listen backlog is full (EAGAIN); returns the
/// connections, which hold the backlog while they are open.
fn fill_backlog(path: &std::path::Path) -> Result<Vec<std::os::fd::OwnedFd>> {
    use rustix::io::Errno;
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    // The backlog is net.core.somaxconn (4096) deep; the lab's init gives 1024/4096
    // descriptors. Root may raise both.
    let want = 1 << 16;
    let hard = getrlimit(Resource::Nofile)
        .maximum
        .unwrap_or(want)
        .max(want);
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(want),
            maximum: Some(hard),
        },
    )
    .context("raising RLIMIT_NOFILE")?;
    let addr = SocketAddrUnix::new(path)?;
    let mut held = Vec::new();
    while held.len() < 70_000 {
        let fd = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
            None,
        )?;
        match rustix::net::connect(&fd, &addr) {
            Ok(()) => held.push(fd),
            Err(Errno::AGAIN) => return Ok(held),
            Err(e) => bail!("filling host.sock's backlog: connect {}: {e}", held.len()),
        }
    }
    bail!(
        "host.sock's backlog was not full after {} connects",
        held.len()
    )
}

/// host-server SIGSTOPped for [`STALL`] under vm0: its console, a vsock connection through
/// the VM's socket, and a guest connect started meanwhile.
fn stall(stack: &Stack, vm0: &mut Vm, seen: &mut Stall) {
    let mut vs = match vsock_connect() {
        Ok(s) => s,
        Err(e) => {
            seen.vsock_before = Some(Err(format!("{e:#}")));
            return;
        }
    };
    seen.vsock_before = Some(
        vsock_echo(&mut vs, "before-stall\n")
            .map(|_| ())
            .map_err(|e| format!("{e:#}")),
    );
    let pid = stack.host_pid().to_string();
    let signal = |sig: &str| Command::new("kill").args([sig, &pid]).status();
    if !signal("-STOP").is_ok_and(|s| s.success()) {
        seen.error = Some("cannot SIGSTOP host-server".into());
        return;
    }
    let stopped = Instant::now();
    // host-server's listen backlog full: from now on a connect to host.sock would block.
    let fillers = match fill_backlog(&stack.host_sock()) {
        Ok(f) => f,
        Err(e) => {
            let _ = signal("-CONT");
            seen.error = Some(format!("{e:#}"));
            return;
        }
    };
    seen.filled = fillers.len();
    // The guest starts a connection to host-server: the VMM's connect finds the backlog full.
    vm0.type_line("curl");
    std::thread::sleep(Duration::from_millis(300));
    for i in 1..=2 {
        let text = format!("typed-{i}");
        let t0 = Instant::now();
        vm0.type_line(&text);
        let back = vm0
            .wait_for(
                &format!("PL-ECHO:{text}"),
                STALL.saturating_sub(stopped.elapsed()),
            )
            .map(|_| t0.elapsed());
        seen.console.push((text, back));
        if i == 1 {
            seen.vsock_during =
                Some(vsock_echo(&mut vs, "during-stall\n").map_err(|e| format!("{e:#}")));
        }
    }
    if let Some(rest) = STALL.checked_sub(stopped.elapsed()) {
        std::thread::sleep(rest);
    }
    drop(fillers);
    let _ = signal("-CONT");
    seen.stopped_for = Some(stopped.elapsed());
    // Echoes that arrived only after SIGCONT do not count as answered during the stall.
    for (_, back) in &mut seen.console {
        if back.is_some_and(|t| t > STALL + Duration::from_millis(500)) {
            *back = None;
        }
    }
    if matches!(&seen.vsock_during, Some(Ok(t)) if *t > STALL) {
        seen.vsock_during = Some(Err("answered only after SIGCONT".into()));
    }
    drop(vs);
    vm0.wait_for("PL-STALLED-CURL-RC=", Duration::from_secs(60));
    vm0.type_line("end");
}

fn judge(d: &mut Driver, vms: &[Vm; 2], seen: &Seen) {
    let marker = |vm: &Vm, m: &str| vm.find(m).unwrap_or_else(|| "none".to_owned());
    let status = |vm: &Vm| vm.status_text();
    // Both by name.
    let curls: Vec<String> = vms.iter().map(|v| marker(v, "PL-CURL-RC=")).collect();
    let ok = curls
        .iter()
        .all(|c| c.starts_with("0 ") && c.contains(testworld::INDEX_BODY.trim()));
    d.report(
        "vms-two-by-name",
        ok,
        &format!(
            "vm0 and vm1 at once against one host-server and dns-cache, curl -4 http://{}/: {:?} (exit code, page); consoles in vm0-plural.log, vm1-plural.log",
            zone::V6ONLY,
            curls
        ),
    );
    // Own source address.
    let sources: Vec<String> = vms.iter().map(|v| marker(v, "PL-SOURCE=")).collect();
    let want: Vec<String> = addr::HOST_VMS.iter().map(ToString::to_string).collect();
    d.report(
        "vms-own-source",
        sources == want,
        &format!("the source address the world's peer server saw from vm0, vm1: {sources:?} (want their own addresses {want:?})"),
    );
    // Own inbound.
    let got: Vec<String> = vms.iter().map(|v| marker(v, "PL-INBOUND=")).collect();
    let want_in: Vec<String> = VMS.iter().map(|v| format!("to-{v}")).collect();
    d.report(
        "vms-own-inbound",
        got == want_in && seen.inbound.len() == 2 && seen.inbound.iter().all(Result::is_ok),
        &format!(
            "both guests listen on port {INBOUND_PORT}; a world client sends \"to-vmN\" to [{}]:{INBOUND_PORT} and [{}]:{INBOUND_PORT}: vm0, vm1 received {got:?} (want {want_in:?}); clients {:?}",
            addr::HOST_VMS[0],
            addr::HOST_VMS[1],
            seen.inbound
        ),
    );
    // Stopping vm1 leaves vm0 untouched.
    let after_rc = marker(&vms[0], "PL-AFTER-STOP-RC=");
    let after_src = marker(&vms[0], "PL-AFTER-STOP-SOURCE=");
    let h = &seen.hold;
    d.report(
        "vms-stop-one",
        seen.vm1_stop.as_deref().is_some_and(|s| s != "running")
            && h.error.is_none()
            && h.source == Some(addr::HOST_VMS[1])
            && h.ended_after.is_some_and(|t| t <= HOLD_ENDS_WITHIN)
            && after_rc == "0"
            && after_src == addr::HOST_VMS[0].to_string(),
        &format!(
            "vm1's VMM after SIGKILL: {}; its guest's connection to the world (from {:?}, want {}) ended {:?} after the kill{}; then vm0: curl by name exit {after_rc}, source {after_src} (want {})",
            seen.vm1_stop.as_deref().unwrap_or("not stopped"),
            h.source,
            addr::HOST_VMS[1],
            h.ended_after,
            h.error.as_ref().map_or(String::new(), |e| format!(" ({e})")),
            addr::HOST_VMS[0]
        ),
    );
    // host-server stalled.
    let s = &seen.stall;
    let console_ok = s.console.len() == 2 && s.console.iter().all(|(_, t)| t.is_some());
    let stalled_curl = marker(&vms[0], "PL-STALLED-CURL-RC=");
    let fresh = marker(&vms[0], "PL-FRESH-CURL-RC=");
    d.report(
        "vms-host-server-stalled",
        s.error.is_none()
            && s.stopped_for.is_some_and(|t| t >= STALL)
            && console_ok
            && matches!(s.vsock_before, Some(Ok(())))
            && s.filled > 0
            && matches!(s.vsock_during, Some(Ok(_)))
            && stalled_curl != "none"
            && fresh == "0",
        &format!(
            "host-server SIGSTOPped for {:?} under vm0 ({}), its backlog filled ({} connections): console lines answered while stopped {:?}; vsock echo through the VM's socket before {:?}, during {:?}; a curl started during the stall (its connects wait, then RST after 2 s) exit {stalled_curl}; after SIGCONT a fresh curl by name exit {fresh}{}",
            s.stopped_for,
            status(&vms[0]),
            s.filled,
            s.console,
            s.vsock_before,
            s.vsock_during,
            s.error.as_ref().map_or(String::new(), |e| format!("; error: {e}")),
        ),
    );
}
