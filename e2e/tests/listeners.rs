//! Listeners shared by processes and threads, in process mode: unmodified servers in `legacy`
//! (through `outsock run`) that accept on one outsourced listener from several processes
//! (inherited across fork) and threads at once, loaded by many parallel IPv6 clients in
//! `world`. Each connection must reach exactly one acceptor, with its own peer address (the
//! client's dummy from the source pool), and nothing may fail: this is what the listener's packet
//! channel guarantees (one accepted connection per `SOCK_SEQPACKET` packet, see
//! host-server's `inbound` and liboutsock's `listen`). A second `listen(2)` on a listening socket
//! succeeds and changes the backlog, as natively.
//!
//! Traffic stays inside the test world: clients in `world`, servers in `legacy`, host-server in
//! `host`.

// Test code throughout; helpers outside #[test] functions unwrap too.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::process::{Child, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use outsock_e2e::{connect_from_client, stack, text, wait_tcp_listener};
use testworld::addr;
use testworld::stack::Stack;

const PORTS: &str = "[listen]\nallowed_ports = [8080, 8085]\n";

/// In the source pool (172.21.112.0/20).
fn in_source_pool(a: Ipv4Addr) -> bool {
    u32::from(a) >> 12 == u32::from(Ipv4Addr::new(172, 21, 112, 0)) >> 12
}

/// Runs `total` exchanges against the host's `port` from [`addr::CLIENT`] in `world`, `parallel`
/// at a time: `exchange(i, stream)` returns `None` on success or a description of what went
/// wrong. Returns the failures (at most a few dozen kept).
fn load<F>(s: &Stack, port: u16, total: usize, parallel: usize, exchange: F) -> Vec<String>
where
    F: Fn(usize, TcpStream) -> Option<String> + Send + Sync + 'static,
{
    let exchange = Arc::new(exchange);
    s.world
        .world()
        .run(move || {
            let next = Arc::new(AtomicUsize::new(0));
            let deadline = Instant::now() + Duration::from_secs(120);
            let workers: Vec<_> = (0..parallel)
                .map(|_| {
                    let next = Arc::clone(&next);
                    let exchange = Arc::clone(&exchange);
                    std::thread::spawn(move || {
                        let mut failures = Vec::new();
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            if i >= total {
                                break;
                            }
                            if Instant::now() > deadline {
                                failures.push(format!("request {i}: past the 120 s bound"));
                                continue;
                            }
                            if let Some(f) = exchange(i, connect_from_client(port)) {
                                failures.push(f);
                            }
                        }
                        failures
                    })
                })
                .collect();
            let mut all = Vec::new();
            for w in workers {
                all.extend(w.join().unwrap());
            }
            all
        })
        .unwrap()
}

/// Asks `child` (a `timeout` wrapping the server: it passes SIGTERM on) to stop, and waits.
fn stop(child: Child) -> Output {
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    child.wait_with_output().unwrap()
}

const NGINX_CONF: &str = "\
user root;
worker_processes 2;
pid DIR/nginx.pid;
error_log DIR/error.log warn;
events { worker_connections 1024; }
http {
    log_format peers '$remote_addr $remote_port $status';
    access_log DIR/access.log peers;
    client_body_temp_path DIR/body;
    server {
        listen 8080;
        location / { return 200 \"served\\n\"; }
    }
}
";

#[test]
fn nginx_master_and_two_workers_serve_every_request_with_its_peer() {
    let Some(s) = stack("nginx-workers", PORTS) else {
        return;
    };
    let nginx = std::path::Path::new("/usr/sbin/nginx");
    if !nginx.exists() {
        assert!(
            std::env::var("OUTSOCK_E2E_REQUIRED").as_deref() != Ok("1"),
            "nginx is not installed (scripts/install-deps), and OUTSOCK_E2E_REQUIRED=1 forbids skipping"
        );
        println!("SKIP nginx: not installed");
        return;
    }
    let dir = s.world.path("nginx");
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.to_string_lossy().into_owned();
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, NGINX_CONF.replace("DIR", &d)).unwrap();
    let mut cmd = s.legacy("timeout").unwrap();
    cmd.args(["150", "/usr/sbin/nginx", "-p", &d, "-e"])
        .arg(dir.join("error.log"))
        .arg("-c")
        .arg(&conf)
        .args(["-g", "daemon off;"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let server = cmd.spawn().unwrap();
    wait_tcp_listener(&s, 8080, "host-server's listener", |l| l.contains(":8080"));

    const TOTAL: usize = 5000;
    let failures = load(&s, 8080, TOTAL, 64, |i, mut c| {
        let req = format!("GET /r{i} HTTP/1.0\r\nHost: host\r\n\r\n");
        if let Err(e) = c.write_all(req.as_bytes()) {
            return Some(format!("request {i}: write: {e}"));
        }
        let mut back = String::new();
        match c.read_to_string(&mut back) {
            Ok(_) if back.starts_with("HTTP/1.1 200 ") && back.ends_with("served\n") => None,
            Ok(_) => Some(format!("request {i}: answer {back:?}")),
            Err(e) => Some(format!("request {i}: read: {e}")),
        }
    });
    let out = stop(server);
    let access = std::fs::read_to_string(dir.join("access.log")).unwrap_or_default();
    let errors = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
    let context = format!(
        "nginx stderr: {}\nerror.log:\n{errors}\n{}",
        text(&out.stderr),
        s.logs()
    );
    assert!(
        failures.is_empty(),
        "{} of {TOTAL} requests failed, e.g. {:?}\n{context}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    let peer = s.dummy_for(addr::CLIENT).unwrap();
    assert!(in_source_pool(peer), "client dummy {peer} not in the pool");
    let lines: Vec<&str> = access.lines().collect();
    assert_eq!(lines.len(), TOTAL, "access log lines\n{context}");
    for l in &lines {
        let mut f = l.split(' ');
        assert_eq!(f.next(), Some(peer.to_string().as_str()), "peer in {l:?}");
        assert!(
            f.next().and_then(|p| p.parse::<u16>().ok()).is_some(),
            "{l:?}"
        );
        assert_eq!(f.next(), Some("200"), "{l:?}");
    }
    for bad in ["accept4()", "failed (", "[alert]", "[crit]", "[emerg]"] {
        assert!(!errors.contains(bad), "nginx logged {bad:?}\n{context}");
    }
}

/// A prefork server: listen (twice: the second changes the backlog), fork four children, each
/// with two threads blocking in accept() on the inherited listener; each reply names the peer
/// address the acceptor saw and the pid that served it.
const PY_PREFORK: &str = r#"
import os, signal, socket, sys, threading
port = int(sys.argv[1])
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", port))
s.listen(8)
s.listen(128)
print("listened twice", flush=True)
def serve():
    while True:
        c, a = s.accept()
        data = c.recv(64)
        c.sendall(data + (" %s %d %d\n" % (a[0], a[1], os.getpid())).encode())
        c.close()
children = []
for _ in range(4):
    pid = os.fork()
    if pid == 0:
        t = threading.Thread(target=serve, daemon=True)
        t.start()
        serve()
    children.append(pid)
def bye(*_):
    for p in children:
        os.kill(p, signal.SIGKILL)
    os._exit(0)
signal.signal(signal.SIGTERM, bye)
while True:
    signal.pause()
"#;

#[test]
fn prefork_children_and_threads_each_get_their_own_connection() {
    let Some(s) = stack("prefork", PORTS) else {
        return;
    };
    let mut cmd = s.legacy("timeout").unwrap();
    cmd.args(["150", "python3", "-c", PY_PREFORK, "8085"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let server = cmd.spawn().unwrap();
    // listen(128) after listen(8) succeeded, and host-server's listener took the new backlog
    // (`ss` shows a listener's backlog as its Send-Q).
    wait_tcp_listener(&s, 8085, "backlog 128", |l| {
        l.split_whitespace().nth(2) == Some("128")
    });
    let peer = s.dummy_for(addr::CLIENT);
    const TOTAL: usize = 2000;
    let pids = Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
    let seen = Arc::clone(&pids);
    let failures = load(&s, 8085, TOTAL, 32, move |i, mut c| {
        let me = c.local_addr().unwrap().port();
        let id = format!("client-{i}");
        if let Err(e) = c.write_all(id.as_bytes()) {
            return Some(format!("{id}: write: {e}"));
        }
        let mut back = String::new();
        if let Err(e) = c.read_to_string(&mut back) {
            return Some(format!("{id}: read: {e}"));
        }
        let f: Vec<&str> = back.trim_end().split(' ').collect();
        let ok = f.len() == 4
            && f[0] == id
            && f[1].parse::<Ipv4Addr>().is_ok_and(in_source_pool)
            && f[2] == me.to_string();
        if !ok {
            return Some(format!("{id} (port {me}): answer {back:?}"));
        }
        seen.lock()
            .unwrap()
            .insert((f[1].to_owned(), f[3].to_owned()));
        None
    });
    let out = stop(server);
    let context = format!(
        "server stdout: {}\nstderr: {}\n{}",
        text(&out.stdout),
        text(&out.stderr),
        s.logs()
    );
    assert!(
        failures.is_empty(),
        "{} of {TOTAL} exchanges failed, e.g. {:?}\n{context}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    // listen() twice on one socket succeeded.
    assert!(
        text(&out.stdout).starts_with("listened twice\n"),
        "{context}"
    );
    // Every reply named the client's own dummy (and its port, checked per reply).
    let peer = peer.or_else(|| s.dummy_for(addr::CLIENT)).unwrap();
    let seen = pids.lock().unwrap();
    assert!(
        seen.iter().all(|(p, _)| *p == peer.to_string()),
        "peers other than {peer}: {seen:?}"
    );
    let served_by = seen
        .iter()
        .map(|(_, pid)| pid)
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    assert!(
        served_by >= 2,
        "only {served_by} process served 2,000 connections\n{context}"
    );
    // The children died with the parent: the listener closed.
    wait_tcp_listener(&s, 8085, "closed listener", str::is_empty);
}
