//! Process mode end to end, one UDP association shared by threads (issue 13): unmodified
//! python programs in the test world's `legacy` namespace through `outsock run`, IPv6 peers in
//! `world`. The association's channel is a packet channel (one datagram, one packet), so each
//! datagram reaches exactly one of the threads receiving on the socket, whole and with its own
//! source address, and concurrent sends never interleave.
//!
//! - A server: 4 threads blocking in `recvfrom` on one bound socket, each replying with
//!   `sendto`; 2,000 requests from 4 IPv6 client sockets in `world`, 8 in flight per socket.
//! - A client: 4 threads doing `sendto`/`recvfrom` on one unconnected socket (with a timeout,
//!   so non-blocking underneath: EAGAIN is met all the time) to the world's UDP echo, by name.
//!
//! Over veth inside the test's namespaces nothing is dropped: the tolerance for lost or
//! damaged datagrams is 0.

// Test code throughout; helpers outside #[test] functions unwrap too.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::process::Stdio;
use std::time::{Duration, Instant};

use outsock_e2e::{stack, text, wait_udp_bound};
use testworld::{addr, zone};

const PORT: u16 = 5355;
const CONFIG: &str = "[listen]\nallowed_ports = [5355]\n";
/// Requests in all, from `CLIENTS` sockets, `WINDOW` in flight on each.
const REQUESTS: usize = 2000;
const CLIENTS: usize = 4;
const WINDOW: usize = 8;

/// 4 threads receive on one socket and reply; after `total` replies it prints how many each
/// thread answered and exits.
const PY_THREADED_SERVER: &str = r"
import socket, sys, threading
port, total = int(sys.argv[1]), int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(('0.0.0.0', port))
lock = threading.Lock()
done = threading.Event()
counts = [0] * 4
def serve(i):
    while True:
        data, peer = s.recvfrom(2048)
        s.sendto(b'reply:' + data + b' to ' + str(peer[1]).encode(), peer)
        with lock:
            counts[i] += 1
            if sum(counts) >= total:
                done.set()
for i in range(4):
    threading.Thread(target=serve, args=(i,), daemon=True).start()
print('bound', flush=True)
done.wait()
print('counts', ' '.join(map(str, counts)), flush=True)
";

/// What went wrong on one client socket, if anything.
type ClientResult = Result<usize, String>;

/// One client socket in `world`: `n` requests in windows of `WINDOW`; every reply must be the
/// one for a request of this window, whole, from the server's port, naming this socket's port.
fn client(id: usize, n: usize) -> ClientResult {
    let sock = UdpSocket::bind(SocketAddr::new(addr::CLIENT.into(), 0)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let me = sock.local_addr().unwrap().port();
    let to = SocketAddr::new(addr::HOST.into(), PORT);
    let mut answered = 0;
    let mut seq = 0;
    while seq < n {
        let mut want: BTreeMap<Vec<u8>, ()> = BTreeMap::new();
        for _ in 0..WINDOW.min(n - seq) {
            let body = format!("client{id}-req{seq}-{}", "x".repeat(seq % 97));
            sock.send_to(body.as_bytes(), to).unwrap();
            want.insert(format!("reply:{body} to {me}").into_bytes(), ());
            seq += 1;
        }
        while !want.is_empty() {
            let mut buf = [0u8; 2048];
            let (len, from) = sock
                .recv_from(&mut buf)
                .map_err(|e| format!("client {id}: {e} with {} replies missing", want.len()))?;
            if from != to {
                return Err(format!("client {id}: a reply from {from}"));
            }
            if want.remove(&buf[..len]).is_none() {
                return Err(format!(
                    "client {id}: unexpected reply {:?}",
                    text(&buf[..len])
                ));
            }
            answered += 1;
        }
    }
    Ok(answered)
}

#[test]
fn four_server_threads_share_one_socket_and_every_reply_reaches_its_client() {
    let Some(s) = stack("udp-threads-server", CONFIG) else {
        return;
    };
    let mut server = s.legacy("timeout").unwrap();
    server
        .args(["60", "python3", "-c", PY_THREADED_SERVER])
        .args([PORT.to_string(), REQUESTS.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let server = server.spawn().unwrap();
    wait_udp_bound(&s, PORT);
    let started = Instant::now();
    let results = s
        .world
        .world()
        .run(|| {
            // Threads made here are in `world` too.
            let threads: Vec<_> = (0..CLIENTS)
                .map(|id| std::thread::spawn(move || client(id, REQUESTS / CLIENTS)))
                .collect();
            threads
                .into_iter()
                .map(|t| t.join().unwrap())
                .collect::<Vec<_>>()
        })
        .unwrap();
    let elapsed = started.elapsed();
    let out = server.wait_with_output().unwrap();
    let log = format!("{}\n{}", text(&out.stderr), s.logs());
    let answered: usize = results
        .into_iter()
        .map(|r| r.unwrap_or_else(|e| panic!("{e}\n{log}")))
        .sum();
    assert_eq!(answered, REQUESTS, "{log}");
    assert!(out.status.success(), "{log}");
    let stdout = text(&out.stdout);
    let counts: Vec<usize> = stdout
        .lines()
        .find_map(|l| l.strip_prefix("counts "))
        .unwrap_or_else(|| panic!("no counts in {stdout:?}\n{log}"))
        .split(' ')
        .map(|c| c.parse().unwrap())
        .collect();
    assert_eq!(counts.iter().sum::<usize>(), REQUESTS, "{stdout}");
    // Each datagram went to exactly one thread (the sum), and more than one thread was reading.
    assert!(
        counts.iter().filter(|&&c| c > 0).count() >= 2,
        "one thread took everything: {counts:?}"
    );
    assert!(
        elapsed < Duration::from_secs(30),
        "{REQUESTS} requests took {elapsed:?}"
    );
}

/// 4 threads send and receive on one unconnected socket (timeout: non-blocking underneath) to
/// the UDP echo server by name. Every echo must come back whole, from the echo server, and the
/// echoes taken by all threads together must be exactly the datagrams sent.
const PY_THREADED_CLIENT: &str = r"
import socket, sys, threading
host, per = sys.argv[1], int(sys.argv[2])
dest = socket.getaddrinfo(host, 7, socket.AF_INET, socket.SOCK_DGRAM)[0][4]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(10)
lock = threading.Lock()
sent, got, bad = [], [], []
def run(i):
    for n in range(per):
        msg = ('thread%d-msg%d-' % (i, n) + 'y' * (n % 61)).encode()
        with lock:
            sent.append(msg)
        s.sendto(msg, dest)
        data, peer = s.recvfrom(2048)
        with lock:
            got.append(data)
            if peer != dest:
                bad.append(peer)
ts = [threading.Thread(target=run, args=(i,)) for i in range(4)]
for t in ts: t.start()
for t in ts: t.join()
print('sent', len(sent), 'got', len(got), 'same', sorted(sent) == sorted(got), 'bad', len(bad))
";

#[test]
fn four_client_threads_share_one_unconnected_socket_to_an_echo_by_name() {
    let Some(s) = stack("udp-threads-client", "") else {
        return;
    };
    let mut cmd = s.legacy("timeout").unwrap();
    cmd.args(["60", "python3", "-c", PY_THREADED_CLIENT, zone::ECHO, "200"])
        .stdin(Stdio::null());
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}\n{}", text(&out.stderr), s.logs());
    assert_eq!(
        text(&out.stdout),
        "sent 800 got 800 same True bad 0\n",
        "{}",
        text(&out.stderr)
    );
}
