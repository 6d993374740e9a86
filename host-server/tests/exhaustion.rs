//! Exhaustion defences of outsock-host-server, end to end with real users (DESIGN.md §11):
//! one uid holding thousands of streams that never send a request does not keep another uid
//! from connecting and getting its answer.
//!
//! dns-cache and host-server run in the test world's `host` namespace (testworld's `Stack`);
//! the users are made with useradd (`testworld::users`) and their programs run under `setpriv`
//! in `legacy` (nothing but `lo`), reaching host-server through its Unix socket.

// This whole file is test code; its helpers may unwrap too.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shared_proto::outsource::{ToGuest, ToHost, UdpRequest};
use shared_proto::{frame, Errno};
use testworld::stack::Stack;
use testworld::users::TestUser;

/// Streams the flooding user opens.
const FLOOD: usize = 2_000;
/// The cap under test (`limits.max_awaiting_request`).
const CAP: usize = 128;
/// What another uid's answer may take while the flood is on.
const BOUND: Duration = Duration::from_millis(100);

/// Opens N streams to host.sock and never sends on them; after a second reports how many are
/// still open (held) and how many host-server answered and closed (refused), with the first
/// refusal's bytes; keeps the held ones open until stdin closes.
const FLOODER: &str = r#"
import resource, socket, sys, time
path, n = sys.argv[1], int(sys.argv[2])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
socks = []
deadline = time.time() + 30
for i in range(n):
    if time.time() > deadline:
        break
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(path)
    socks.append(s)
print("connected %d" % len(socks), flush=True)
time.sleep(1.0)
held, refused, first = 0, 0, b""
for s in socks:
    s.setblocking(False)
    try:
        d = s.recv(64)
        refused += 1
        if d and not first:
            first = d
    except BlockingIOError:
        held += 1
    except OSError:
        refused += 1
print("held %d refused %d first %s" % (held, refused, first.hex()), flush=True)
sys.stdin.read()
"#;

/// Sends one pre-encoded request per stream, N times, 20 ms apart; prints each answer's
/// latency in microseconds and bytes.
const ASKER: &str = r#"
import socket, sys, time
path, req, n = sys.argv[1], bytes.fromhex(sys.argv[2]), int(sys.argv[3])
for i in range(n):
    t0 = time.monotonic()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(path)
    s.sendall(req)
    d = s.recv(4096)
    us = int((time.monotonic() - t0) * 1e6)
    print("%d %s" % (us, d.hex()), flush=True)
    s.close()
    time.sleep(0.02)
"#;

fn as_user(stack: &Stack, user: &TestUser, script: &str, args: &[String]) -> Command {
    let mut cmd = stack.world.legacy().command("setpriv");
    cmd.arg(format!("--reuid={}", user.uid()))
        .arg(format!("--regid={}", user.gid()))
        .arg("--clear-groups")
        .arg("/usr/bin/python3")
        .arg("-c")
        .arg(script)
        .args(args);
    cmd
}

fn udp_request() -> Vec<u8> {
    frame::to_vec(&ToHost::Udp(UdpRequest {
        bind: "0.0.0.0:0".parse().unwrap(),
        channel: false,
    }))
    .unwrap()
}

fn decode(hex: &str) -> ToGuest {
    let bytes: Vec<u8> = (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    frame::decode::<ToGuest>(&bytes)
        .unwrap()
        .expect("a whole frame")
        .0
}

#[test]
fn streams_without_a_request_are_capped_per_uid() {
    if !testworld::skip_unless_root("streams_without_a_request_are_capped_per_uid") {
        return;
    }
    let flooder = TestUser::create("fld").unwrap();
    let other = TestUser::create("oth").unwrap();
    // Both are process-mode users (host.sock admits them by SO_PEERCRED uid).
    let stack = Stack::start(
        "hs-awaiting",
        &format!(
            "request_timeout_ms = 30000\nprocess_uids = [{}, {}]\n\
             [limits]\nmax_awaiting_request = {CAP}\n",
            flooder.uid(),
            other.uid()
        ),
    )
    .unwrap();
    // The users reach host.sock: the world's directory is root's 0700, the socket root's 0660.
    std::fs::set_permissions(stack.world.dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(stack.host_sock(), std::fs::Permissions::from_mode(0o666)).unwrap();
    let sock = stack.host_sock().display().to_string();

    let mut flood = as_user(
        &stack,
        &flooder,
        FLOODER,
        &[sock.clone(), FLOOD.to_string()],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    let mut flood_out = BufReader::new(flood.stdout.take().unwrap());
    // The other user asks while the flood is being opened and while it is held.
    std::thread::sleep(Duration::from_millis(50));
    let req_hex: String = udp_request().iter().map(|b| format!("{b:02x}")).collect();
    let asker = as_user(&stack, &other, ASKER, &[sock.clone(), req_hex, "60".into()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    flood_out.read_line(&mut line).unwrap();
    assert_eq!(
        line.trim(),
        format!("connected {FLOOD}"),
        "{}",
        stack.logs()
    );
    line.clear();
    flood_out.read_line(&mut line).unwrap();
    let words: Vec<&str> = line.split_whitespace().collect();
    let held: usize = words[1].parse().unwrap();
    let refused: usize = words[3].parse().unwrap();
    // The flooder's streams beyond the cap were answered EAGAIN and closed at once.
    assert!(held <= CAP, "{line}");
    assert!(refused >= FLOOD - CAP, "{line}");
    assert_eq!(decode(words[5]), ToGuest::Failed(Errno::EAGAIN));

    // Root (a third uid), from the test itself, while the flood is held.
    let sock_path = stack.host_sock();
    let root_latencies: Vec<Duration> = stack
        .world
        .legacy()
        .run(move || {
            (0..20)
                .map(|_| {
                    let t0 = Instant::now();
                    let mut s = UnixStream::connect(&sock_path).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    s.write_all(&udp_request()).unwrap();
                    let mut buf = [0u8; 256];
                    let n = s.read(&mut buf).unwrap();
                    let took = t0.elapsed();
                    let answer = frame::decode::<ToGuest>(&buf[..n]).unwrap().unwrap().0;
                    assert!(matches!(answer, ToGuest::Associated { .. }), "{answer:?}");
                    took
                })
                .collect()
        })
        .unwrap();

    let out = asker.wait_with_output().unwrap();
    assert!(out.status.success());
    let answers: Vec<(Duration, ToGuest)> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (us, hex) = l.split_once(' ').unwrap();
            (Duration::from_micros(us.parse().unwrap()), decode(hex))
        })
        .collect();
    assert_eq!(answers.len(), 60);
    for (_, answer) in &answers {
        assert!(matches!(answer, ToGuest::Associated { .. }), "{answer:?}");
    }
    let worst_other = answers.iter().map(|a| a.0).max().unwrap();
    let worst_root = root_latencies.iter().copied().max().unwrap();
    println!("other uid: worst {worst_other:?}; root: worst {worst_root:?}; flooder held {held}, refused {refused}");
    assert!(worst_other < BOUND, "another uid waited {worst_other:?}");
    assert!(worst_root < BOUND, "root waited {worst_root:?}");

    drop(flood.stdin.take());
    let _ = flood.wait();
    assert!(
        stack
            .logs()
            .contains("too many streams awaiting their request"),
        "{}",
        stack.logs()
    );
}
