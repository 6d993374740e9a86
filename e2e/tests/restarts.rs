//! Listeners outlive host-server: unmodified servers in `legacy` under `outsock run` keep their
//! listeners across a `kill -9` of host-server and its restart, without noticing — nginx (a
//! master and two workers, through liboutsock), a python3 asyncio server (liboutsock) and a
//! static C server (the supervisor). While host-server is away none of them may spin (each
//! uses < 1 % of a CPU, measured from /proc/PID/stat over 3 s), and once it is back the same
//! ports serve world clients again. A listener whose re-registration host-server refuses (its
//! port no longer allowed) fails one accept with EINVAL and is never readable again, through
//! liboutsock and through the supervisor alike (see the supervisor's `keeper`).
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

/// A static UDP server (the supervisor's association, a port of its own) stays quiet while
/// host-server is away (< 1 % CPU) and hears world clients on the same port again once it is
/// back: the supervisor opens the association again and puts the new channel in place.
#[test]
fn a_static_udp_servers_association_is_opened_again_after_host_server_restarts() {
    let test = "a_static_udp_servers_association_is_opened_again_after_host_server_restarts";
    if !can_supervise(test) {
        return;
    }
    let Some(mut s) = stack("ls-udp", "[listen]\nallowed_ports = [5300]\n") else {
        return;
    };
    let dir = s.world.path("servers");
    std::fs::create_dir_all(&dir).unwrap();
    let (_, stat) = c_servers(&dir);
    let mut server = s.legacy("timeout").unwrap();
    server
        .arg("60")
        .arg(&stat)
        .args(["5300", "udp"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut server = server.spawn().unwrap();
    let _out = ready(&mut server, "bound");
    outsock_e2e::wait_udp_bound(&s, 5300);
    assert_eq!(udp_exchange(&s, 5300).as_deref(), Some(&b"udp ping"[..]));
    let pid = pids_of(&s, "keep_listening_static");
    assert_eq!(pid.len(), 1, "{pid:?}");
    s.kill_host();
    std::thread::sleep(Duration::from_millis(300));
    let before = cpu_ticks(pid[0]);
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    // SAFETY: sysconf(3) has no preconditions.
    let hz = f64::from(u32::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap());
    let used = (cpu_ticks(pid[0]) - before) as f64 / hz / t.elapsed().as_secs_f64();
    assert!(
        used < 0.01,
        "the UDP server used {:.1} % of a CPU",
        used * 100.0
    );
    s.start_host().unwrap();
    let t = Instant::now();
    loop {
        if udp_exchange(&s, 5300).as_deref() == Some(&b"udp ping"[..]) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "no answer on 5300 since host-server came back\n{}",
            s.logs()
        );
    }
    println!(
        "UDP port 5300 answered again {:?} after host-server was back",
        t.elapsed()
    );
    let out = stop(server);
    assert!(
        !text(&out.stderr).contains("recvfrom:"),
        "{}",
        text(&out.stderr)
    );
}
