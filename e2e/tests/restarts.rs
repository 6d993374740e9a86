//! Listeners outlive host-server: unmodified servers in `legacy` under `outsock run` keep their
//! listeners across a `kill -9` of host-server and its restart, without noticing — nginx (a
//! master and two workers, through liboutsock), a python3 asyncio server (liboutsock) and a
//! static C server (the supervisor). While host-server is away none of them may spin (each
//! uses < 1 % of a CPU, measured from /proc/PID/stat over 3 s), and once it is back the same
//! ports serve world clients again. A listener whose re-registration host-server refuses (its
//! port no longer allowed) fails one accept with EINVAL and is never readable again, through
//! liboutsock and through the supervisor alike (see the supervisor's `keeper`). UDP servers
//! keep their ports the same way: a static C server (the supervisor's association), the same
//! server linked dynamically and a python asyncio server (liboutsock's, through the keeper);
//! one whose association is refused after the restart fails one receive with ENETDOWN and
//! goes quiet.
//!
//! Traffic stays inside the test world: clients in `world`, servers in `legacy`, host-server in
//! `host`.

// Test code throughout; helpers outside #[test] functions unwrap too.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use outsock_e2e::{skip, stack, text, wait_tcp_listener};
use testworld::addr;
use testworld::programs::build_c;
use testworld::stack::Stack;

const C_SERVER: &str = include_str!("../c/keep_listening.c");

const NGINX_PORT: u16 = 8080;
const PY_PORT: u16 = 8086;
const STATIC_PORT: u16 = 8087;
const REFUSED_DYNAMIC: u16 = 8088;
const REFUSED_STATIC: u16 = 8089;

const NGINX_CONF: &str = "\
user root;
worker_processes 2;
pid DIR/nginx.pid;
error_log DIR/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path DIR/body;
    server {
        listen 8080;
        location / { return 200 \"nginx\\n\"; }
    }
}
";

const PY_ASYNCIO: &str = r#"
import asyncio, sys
async def handle(r, w):
    await r.read(512)
    w.write(b"HTTP/1.0 200 OK\r\n\r\npython\n")
    await w.drain()
    w.close()
async def main():
    srv = await asyncio.start_server(handle, "0.0.0.0", int(sys.argv[1]))
    print("serving", flush=True)
    async with srv:
        await srv.serve_forever()
asyncio.run(main())
"#;

/// A python asyncio UDP server on 0.0.0.0:argv[1], answering "py " and each datagram; a
/// receive error is printed (asyncio reports it and goes on).
const PY_UDP: &str = r#"
import asyncio, sys
class Echo(asyncio.DatagramProtocol):
    def connection_made(self, t):
        self.t = t
    def datagram_received(self, data, addr):
        self.t.sendto(b"py " + data, addr)
    def error_received(self, exc):
        print("error", exc, file=sys.stderr, flush=True)
async def main():
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(Echo, local_addr=("0.0.0.0", int(sys.argv[1])))
    print("bound", flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"#;

/// One request from the world client to the host's `port`: the answer's body, or why not.
fn request(s: &Stack, port: u16) -> Result<String, String> {
    s.world
        .world()
        .run(move || {
            let mut c = TcpStream::connect_timeout(
                &SocketAddr::new(addr::HOST.into(), port),
                Duration::from_secs(2),
            )
            .map_err(|e| format!("connect: {e}"))?;
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            c.write_all(b"GET / HTTP/1.0\r\n\r\n")
                .map_err(|e| format!("write: {e}"))?;
            let mut back = Vec::new();
            c.read_to_end(&mut back).map_err(|e| format!("read: {e}"))?;
            let back = text(&back);
            back.split("\r\n\r\n")
                .nth(1)
                .map(str::to_owned)
                .ok_or_else(|| format!("answer {back:?}"))
        })
        .unwrap()
}

/// Waits (up to `limit`) until `port` answers with `body`; how long it took.
fn serves_within(s: &Stack, port: u16, body: &str, limit: Duration) -> Duration {
    let t = Instant::now();
    loop {
        let got = request(s, port);
        if got.as_deref() == Ok(body) {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < limit,
            "port {port} did not serve {body:?} within {limit:?}: {got:?}\n{}",
            s.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// utime + stime of `pid` in clock ticks (/proc/PID/stat fields 14 and 15).
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The command may hold spaces: fields are counted after its closing parenthesis.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// The processes in `legacy` whose command line contains `what` (but `outsock run` and the
/// `timeout` wrappers, whose command lines name the program too).
fn pids_of(s: &Stack, what: &str) -> Vec<i32> {
    s.world
        .legacy()
        .pids()
        .into_iter()
        .filter(|p| {
            let comm = std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
            let cmdline = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            let cmdline = text(&cmdline.split(|b| *b == 0).collect::<Vec<_>>().join(&b' '));
            !["outsock\n", "timeout\n"].contains(&comm.as_str()) && cmdline.contains(what)
        })
        .collect()
}

/// Compiles the C server dynamically (liboutsock serves it) and statically (the supervisor
/// alone does).
fn c_servers(dir: &Path) -> (PathBuf, PathBuf) {
    let dynamic = build_c(dir, "keep_listening", &[C_SERVER]).unwrap();
    let stat = dir.join("keep_listening_static");
    let out = Command::new("cc")
        .args(["-O1", "-Wall", "-static", "-o"])
        .arg(&stat)
        .arg(dir.join("keep_listening.c"))
        .output()
        .unwrap();
    assert!(out.status.success(), "cc -static: {}", text(&out.stderr));
    (dynamic, stat)
}

/// Stops a server started under `timeout` (SIGTERM passes on) and waits for it.
fn stop(child: Child) -> std::process::Output {
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    child.wait_with_output().unwrap()
}

/// Reads `child`'s stdout until a line containing `what` (the server is ready).
fn ready(child: &mut Child, what: &str) -> BufReader<std::process::ChildStdout> {
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while out.read_line(&mut line).unwrap() > 0 {
        if line.contains(what) {
            return out;
        }
        line.clear();
    }
    panic!("the server ended before saying {what:?}");
}

fn can_supervise(test: &str) -> bool {
    if outsock_supervisor::available() {
        return true;
    }
    skip(test, "this kernel has no seccomp user notification");
    false
}

#[test]
fn servers_keep_their_listeners_across_a_kill_9_of_host_server_without_spinning() {
    let test = "servers_keep_their_listeners_across_a_kill_9_of_host_server_without_spinning";
    if !can_supervise(test) {
        return;
    }
    if !Path::new("/usr/sbin/nginx").exists() {
        skip(test, "nginx is not installed (scripts/install-deps)");
        return;
    }
    let Some(mut s) = stack("ls-kill", "[listen]\nallowed_ports = [8080, 8086, 8087]\n") else {
        return;
    };
    let dir = s.world.path("servers");
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.to_string_lossy().into_owned();
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, NGINX_CONF.replace("DIR", &d)).unwrap();
    let mut nginx = s.legacy("timeout").unwrap();
    nginx
        .args(["120", "/usr/sbin/nginx", "-p", &d, "-e"])
        .arg(dir.join("error.log"))
        .arg("-c")
        .arg(&conf)
        .args(["-g", "daemon off;"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let nginx = nginx.spawn().unwrap();
    let mut python = s.legacy("timeout").unwrap();
    python
        .args(["120", "python3", "-c", PY_ASYNCIO, &PY_PORT.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut python = python.spawn().unwrap();
    let _py_out = ready(&mut python, "serving");
    let (_, static_bin) = c_servers(&dir);
    let mut static_server = s.legacy("timeout").unwrap();
    static_server
        .arg("120")
        .arg(&static_bin)
        .arg(STATIC_PORT.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut static_server = static_server.spawn().unwrap();
    let _st_out = ready(&mut static_server, "listening");
    for port in [NGINX_PORT, PY_PORT, STATIC_PORT] {
        wait_tcp_listener(&s, port, "host-server's listener", |l| {
            l.contains(&format!(":{port}"))
        });
    }
    let bodies = [
        (NGINX_PORT, "nginx\n"),
        (PY_PORT, "python\n"),
        (STATIC_PORT, "static\n"),
    ];
    for (port, body) in bodies {
        serves_within(&s, port, body, Duration::from_secs(10));
    }
    let workers = pids_of(&s, "nginx: worker process");
    assert_eq!(workers.len(), 2, "nginx workers: {workers:?}");
    let py = pids_of(&s, "python3 -c");
    assert_eq!(py.len(), 1, "python: {py:?}");
    let st = pids_of(&s, "keep_listening_static");
    assert_eq!(st.len(), 1, "static server: {st:?}");
    let watched: Vec<(String, i32)> = workers
        .iter()
        .map(|p| ("nginx worker".to_owned(), *p))
        .chain(py.iter().map(|p| ("python asyncio".to_owned(), *p)))
        .chain(st.iter().map(|p| ("static C server".to_owned(), *p)))
        .collect();

    // host-server dies as in a crash.
    s.kill_host();
    std::thread::sleep(Duration::from_millis(300));
    let before: Vec<u64> = watched.iter().map(|(_, p)| cpu_ticks(*p)).collect();
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    let secs = t.elapsed().as_secs_f64();
    // SAFETY: sysconf(3) has no preconditions.
    let hz = f64::from(u32::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap());
    for ((what, pid), b) in watched.iter().zip(before) {
        let used = (cpu_ticks(*pid) - b) as f64 / hz / secs;
        println!(
            "{what} (pid {pid}) used {:.2} % of a CPU while host-server was away",
            used * 100.0
        );
        assert!(
            used < 0.01,
            "{what} (pid {pid}) used {:.1} % of a CPU while host-server was away",
            used * 100.0
        );
    }

    s.start_host().unwrap();
    for (port, body) in bodies {
        let took = serves_within(&s, port, body, Duration::from_secs(5));
        println!("port {port} served again {took:?} after host-server was back");
    }
    let nginx_out = stop(nginx);
    let errors = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
    let py_out = stop(python);
    let st_out = stop(static_server);
    let context = format!(
        "nginx: {}\nerror.log:\n{errors}\npython: {}\nstatic: {}\n{}",
        text(&nginx_out.stderr),
        text(&py_out.stderr),
        text(&st_out.stderr),
        s.logs()
    );
    assert!(!errors.contains("accept4()"), "{context}");
    assert!(!text(&st_out.stderr).contains("accept:"), "{context}");
    assert!(!text(&py_out.stderr).contains("Error"), "{context}");
}

/// A listener host-server refuses to take back (its port no longer allowed after the restart)
/// fails one accept with EINVAL, then is never readable again: through liboutsock (a dynamic
/// C program) and through the supervisor (the same program linked statically). The keeper says
/// so in one line naming the address and errno.
#[test]
fn a_refused_reregistration_fails_one_accept_with_einval_and_goes_quiet() {
    let test = "a_refused_reregistration_fails_one_accept_with_einval_and_goes_quiet";
    if !can_supervise(test) {
        return;
    }
    let Some(mut s) = stack("ls-refuse", "[listen]\nallowed_ports = [8088, 8089]\n") else {
        return;
    };
    let dir = s.world.path("servers");
    std::fs::create_dir_all(&dir).unwrap();
    let (dynamic, stat) = c_servers(&dir);
    let mut servers = Vec::new();
    for (bin, port) in [(&dynamic, REFUSED_DYNAMIC), (&stat, REFUSED_STATIC)] {
        let mut cmd = s.legacy("timeout").unwrap();
        cmd.arg("60")
            .arg(bin)
            .arg(port.to_string())
            .arg("refusal")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let out = ready(&mut child, "listening");
        wait_tcp_listener(&s, port, "host-server's listener", |l| {
            l.contains(&format!(":{port}"))
        });
        servers.push((child, out, port));
    }
    s.kill_host();
    s.set_host_extra("[listen]\nallowed_ports = [8080]\n")
        .unwrap();
    s.start_host().unwrap();
    for (mut child, mut out, port) in servers {
        child.stdin.take().unwrap().write_all(b"go\n").unwrap();
        let mut rest = String::new();
        out.read_to_string(&mut rest).unwrap();
        let status = child.wait().unwrap();
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        let context = format!(
            "port {port}: {status}\nstdout:\n{rest}\nstderr:\n{err}\n{}",
            s.logs()
        );
        assert_eq!(
            rest, "poll 1 1\naccept -1 errno 22\npoll again 0\n",
            "{context}"
        );
        assert!(
            err.contains(&format!(
                "host-server refused listener 0.0.0.0:{port} again (EACCES)"
            )),
            "{context}"
        );
        assert_eq!(err.matches("refused listener").count(), 1, "{context}");
    }
}

/// Without a keeper (`--shim-only`: no supervisor) liboutsock keeps a hidden copy of the
/// channel's host end, so a listener never reads EOF while host-server is away (no spin), even
/// after the program closed every descriptor above it (closefrom); it is not taken back after
/// a restart (docs/reliability.md). A python asyncio server stays idle too.
#[test]
fn without_a_keeper_a_listener_goes_quiet_instead_of_spinning() {
    let Some(mut s) = stack("ls-shim", "[listen]\nallowed_ports = [8086, 8088]\n") else {
        return;
    };
    let dir = s.world.path("servers");
    std::fs::create_dir_all(&dir).unwrap();
    let (dynamic, _) = c_servers(&dir);
    let mut c = s.legacy_with(&["--shim-only"], "timeout").unwrap();
    c.arg("60")
        .arg(&dynamic)
        .arg(REFUSED_DYNAMIC.to_string())
        .arg("closefrom")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut c = c.spawn().unwrap();
    let mut c_out = ready(&mut c, "closed from");
    let mut python = s.legacy_with(&["--shim-only"], "timeout").unwrap();
    python
        .args(["60", "python3", "-c", PY_ASYNCIO, &PY_PORT.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut python = python.spawn().unwrap();
    let _py_out = ready(&mut python, "serving");
    serves_within(&s, PY_PORT, "python\n", Duration::from_secs(10));
    let py = pids_of(&s, "python3 -c");
    assert_eq!(py.len(), 1, "python: {py:?}");
    s.kill_host();
    std::thread::sleep(Duration::from_millis(300));
    let before = cpu_ticks(py[0]);
    let t = Instant::now();
    c.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let mut rest = String::new();
    c_out.read_to_string(&mut rest).unwrap();
    std::thread::sleep(Duration::from_secs(3).saturating_sub(t.elapsed()));
    // SAFETY: sysconf(3) has no preconditions.
    let hz = f64::from(u32::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap());
    let used = (cpu_ticks(py[0]) - before) as f64 / hz / t.elapsed().as_secs_f64();
    let py_out = stop(python);
    println!(
        "python asyncio (--shim-only) used {:.2} % of a CPU while host-server was away",
        used * 100.0
    );
    assert!(
        used < 0.01,
        "python asyncio used {:.1} % of a CPU: {}",
        used * 100.0,
        text(&py_out.stderr)
    );
    assert_eq!(
        rest, "poll 0\n",
        "the listener read its end after closefrom"
    );
    c.wait().unwrap();
}

/// One UDP exchange from the world client to the host's `port` (500 ms to answer): the answer,
/// or `None`.
fn udp_exchange(s: &Stack, port: u16) -> Option<Vec<u8>> {
    s.world
        .world()
        .run(move || {
            let sock = std::net::UdpSocket::bind(SocketAddr::new(addr::CLIENT.into(), 0)).unwrap();
            sock.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            sock.send_to(b"ping", SocketAddr::new(addr::HOST.into(), port))
                .ok()?;
            let mut buf = [0u8; 512];
            let (n, _) = sock.recv_from(&mut buf).ok()?;
            Some(buf[..n].to_vec())
        })
        .unwrap()
}

/// A server and the rest of its stdout (held open while it runs).
type Running = (Child, BufReader<std::process::ChildStdout>);

/// Runs `cmd` (a UDP server under `outsock run` in `legacy`) until it says `what`, then waits
/// until host-server's socket is bound on `port`.
fn udp_server(s: &Stack, mut cmd: Command, what: &str, port: u16) -> Running {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let out = ready(&mut child, what);
    outsock_e2e::wait_udp_bound(s, port);
    (child, out)
}

/// UDP servers keep their ports across a `kill -9` of host-server: a static C server (the
/// supervisor's association, opened again by its relay), the same C server linked dynamically
/// and a python asyncio server (liboutsock's associations, opened again by the keeper on the
/// same channel). While host-server is away none of them uses 1 % of a CPU (a receive loop on
/// a channel at end of file would spin), and once it is back each port answers world clients
/// again, without one receive error in any of them.
#[test]
fn udp_servers_are_associated_again_after_a_kill_9_of_host_server() {
    let test = "udp_servers_are_associated_again_after_a_kill_9_of_host_server";
    if !can_supervise(test) {
        return;
    }
    let Some(mut s) = stack("ls-udp", "[listen]\nallowed_ports = [5300, 5301, 5302]\n") else {
        return;
    };
    let dir = s.world.path("servers");
    std::fs::create_dir_all(&dir).unwrap();
    let (dynamic, stat) = c_servers(&dir);
    let mut servers = Vec::new();
    for (bin, port) in [(&stat, 5300u16), (&dynamic, 5301)] {
        let mut cmd = s.legacy("timeout").unwrap();
        cmd.arg("60").arg(bin).arg(port.to_string()).arg("udp");
        servers.push((
            udp_server(&s, cmd, "bound", port),
            port,
            b"udp ping".to_vec(),
        ));
    }
    let mut py = s.legacy("timeout").unwrap();
    py.args(["60", "python3", "-c", PY_UDP, "5302"]);
    servers.push((udp_server(&s, py, "bound", 5302), 5302, b"py ping".to_vec()));
    for (_, port, answer) in &servers {
        assert_eq!(
            udp_exchange(&s, *port).as_ref(),
            Some(answer),
            "port {port}"
        );
    }
    let pids: Vec<i32> = ["keep_listening_static", "keep_listening 5301", "python3 -c"]
        .iter()
        .map(|what| {
            let p = pids_of(&s, what);
            assert_eq!(p.len(), 1, "{what}: {p:?}");
            p[0]
        })
        .collect();
    s.kill_host();
    std::thread::sleep(Duration::from_millis(300));
    let before: Vec<u64> = pids.iter().map(|p| cpu_ticks(*p)).collect();
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    // SAFETY: sysconf(3) has no preconditions.
    let hz = f64::from(u32::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap());
    for ((pid, b), (_, port, _)) in pids.iter().zip(before).zip(&servers) {
        let used = (cpu_ticks(*pid) - b) as f64 / hz / t.elapsed().as_secs_f64();
        println!(
            "the UDP server on {port} used {:.2} % of a CPU while host-server was away",
            used * 100.0
        );
        assert!(
            used < 0.01,
            "the UDP server on {port} used {:.1} % of a CPU",
            used * 100.0
        );
    }
    s.start_host().unwrap();
    for (_, port, answer) in &servers {
        let t = Instant::now();
        while udp_exchange(&s, *port).as_ref() != Some(answer) {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "no answer on {port} since host-server came back\n{}",
                s.logs()
            );
        }
        println!(
            "UDP port {port} answered again {:?} after host-server was back",
            t.elapsed()
        );
    }
    for ((child, _out), port, _) in servers {
        let out = stop(child);
        let err = text(&out.stderr);
        // The C servers' and asyncio's receive errors (the supervisor's own lines about
        // host-server being away may come).
        assert!(
            !err.lines()
                .any(|l| l.starts_with("recvfrom:") || l.starts_with("error ")),
            "port {port}: {err}"
        );
    }
}

/// A UDP server whose association host-server refuses to open again (its port no longer
/// allowed after the restart) fails one receive with ENETDOWN, then waits quietly (< 1 % of a
/// CPU); the keeper says so in one line naming the address and errno.
#[test]
fn a_refused_udp_server_fails_one_receive_with_enetdown_and_goes_quiet() {
    let test = "a_refused_udp_server_fails_one_receive_with_enetdown_and_goes_quiet";
    if !can_supervise(test) {
        return;
    }
    let Some(mut s) = stack("ls-udpref", "[listen]\nallowed_ports = [5303]\n") else {
        return;
    };
    let dir = s.world.path("servers");
    std::fs::create_dir_all(&dir).unwrap();
    let (dynamic, _) = c_servers(&dir);
    let mut cmd = s.legacy("timeout").unwrap();
    cmd.arg("60").arg(&dynamic).args(["5303", "udp"]);
    let (server, _out) = udp_server(&s, cmd, "bound", 5303);
    assert_eq!(udp_exchange(&s, 5303).as_deref(), Some(&b"udp ping"[..]));
    let pid = pids_of(&s, "keep_listening 5303");
    assert_eq!(pid.len(), 1, "{pid:?}");
    s.kill_host();
    s.set_host_extra("[listen]\nallowed_ports = [8080]\n")
        .unwrap();
    s.start_host().unwrap();
    // The keeper's first tries come within a second; then nothing may run.
    std::thread::sleep(Duration::from_secs(1));
    let before = cpu_ticks(pid[0]);
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    // SAFETY: sysconf(3) has no preconditions.
    let hz = f64::from(u32::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap());
    let used = (cpu_ticks(pid[0]) - before) as f64 / hz / t.elapsed().as_secs_f64();
    let out = stop(server);
    let err = text(&out.stderr);
    let context = format!("stderr:\n{err}\n{}", s.logs());
    assert!(
        used < 0.01,
        "used {:.1} % of a CPU: {context}",
        used * 100.0
    );
    assert!(
        err.contains("host-server refused UDP server 0.0.0.0:5303 again (EACCES)"),
        "{context}"
    );
    assert_eq!(err.matches("refused UDP server").count(), 1, "{context}");
    assert_eq!(
        err.matches("recvfrom: Network is down").count(),
        1,
        "{context}"
    );
    assert_eq!(err.matches("recvfrom:").count(), 1, "{context}");
}
