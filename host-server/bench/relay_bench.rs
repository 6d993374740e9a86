//! Benchmark: host-server's relay and fd passing against native IPv6, in one run, inside the
//! test world (DESIGN.md §10). Throughput of a bulk download and connect + first byte latency,
//! each mode run in turn for several rounds; prints min/median/max and ratios to native, and
//! host-server's CPU time (utime + stime) per GB of the downloads (what the relay's splice
//! saves shows here even where the shared machine blurs the throughput).
//!
//! The physical limit of a user-space relay is measured beside them: `Splice`, a bare relay of
//! this bench's own (a process in `host` that accepts on a Unix socket, connects over IPv6 and
//! moves bytes with splice(2) through a pipe each way; no protocol, no policy), which the
//! relay's figures can be held against.
//!
//! Run through `host-server/bench/run.sh` (builds the release binaries first). Needs root (the
//! test world). Nothing leaves the world's namespaces.

#![allow(clippy::unwrap_used, clippy::cast_precision_loss)]

use std::io::{Read, Write};
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use outsock_host_server::fdpass::recv_with_fd;
use shared_proto::frame;
use shared_proto::outsource::{ConnectRequest, ToGuest, ToHost};
use testworld::{addr, record, zone, World};

const PORT: u16 = 5001;
const BULK: usize = 256 * 1024 * 1024;
const ROUNDS: usize = 5;
const LATENCY_SAMPLES: usize = 300;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Native,
    Relay,
    FdPass,
    /// The bare splice relay ([`splice_relay`]).
    Splice,
}

fn sibling(name: &str) -> PathBuf {
    // target/release/examples/relay-bench → target/release/NAME
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().join(name)
}

fn wait_for(p: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !p.exists() {
        assert!(Instant::now() < deadline, "{} did not appear", p.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The sink/source server in `world`: 'T' → BULK bytes then close; 'L' → one byte.
fn serve(world: &World) {
    world
        .world()
        .run(|| {
            let l = TcpListener::bind((Ipv6Addr::UNSPECIFIED, PORT)).unwrap();
            // The detached thread inherits this thread's network namespace.
            std::thread::spawn(move || {
                for s in l.incoming() {
                    let Ok(mut s) = s else { continue };
                    std::thread::spawn(move || {
                        let mut cmd = [0u8; 1];
                        if s.read_exact(&mut cmd).is_err() {
                            return;
                        }
                        if cmd[0] == b'T' {
                            let chunk = vec![0x5au8; 256 * 1024];
                            let mut left = BULK;
                            while left > 0 {
                                let n = left.min(chunk.len());
                                if s.write_all(&chunk[..n]).is_err() {
                                    return;
                                }
                                left -= n;
                            }
                        } else {
                            let _ = s.write_all(b"!");
                        }
                    });
                }
            });
        })
        .unwrap();
}

fn read_frame(s: &mut UnixStream) -> ToGuest {
    let mut head = [0u8; frame::HEADER_LEN];
    s.read_exact(&mut head).unwrap();
    let total = frame::frame_len(&head).unwrap().unwrap();
    let mut whole = head.to_vec();
    whole.resize(total, 0);
    s.read_exact(&mut whole[frame::HEADER_LEN..]).unwrap();
    frame::decode_exact(&whole).unwrap()
}

/// One connection in `mode`, as a boxed reader/writer.
fn open(mode: Mode, sock: &Path, dummy: SocketAddrV4) -> Box<dyn ReadWrite> {
    match mode {
        Mode::Native => {
            Box::new(TcpStream::connect(SocketAddr::new(addr::ECHO.into(), PORT)).unwrap())
        }
        Mode::Splice => Box::new(UnixStream::connect(sock.with_file_name("splice.sock")).unwrap()),
        Mode::Relay | Mode::FdPass => {
            let mut s = UnixStream::connect(sock).unwrap();
            let req = ToHost::Connect(ConnectRequest {
                dest: dummy,
                pass_fd: mode == Mode::FdPass,
                nonblocking: false,
            });
            s.write_all(&frame::to_vec(&req).unwrap()).unwrap();
            if mode == Mode::Relay {
                let a = read_frame(&mut s);
                assert!(matches!(a, ToGuest::Connected { .. }), "{a:?}");
                Box::new(s)
            } else {
                let mut head = [0u8; 64];
                let (_, fd) = recv_with_fd(s.as_raw_fd(), &mut head).unwrap();
                Box::new(TcpStream::from(fd.expect("a passed socket")))
            }
        }
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

fn throughput(mode: Mode, sock: &Path, dummy: SocketAddrV4) -> f64 {
    let mut c = open(mode, sock, dummy);
    let t = Instant::now();
    c.write_all(b"T").unwrap();
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0usize;
    loop {
        let n = c.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got += n;
    }
    assert_eq!(got, BULK);
    got as f64 / t.elapsed().as_secs_f64() / 1e6
}

fn latencies(mode: Mode, sock: &Path, dummy: SocketAddrV4) -> Vec<Duration> {
    let mut v: Vec<Duration> = (0..LATENCY_SAMPLES)
        .map(|_| {
            let t = Instant::now();
            let mut c = open(mode, sock, dummy);
            c.write_all(b"L").unwrap();
            let mut b = [0u8; 1];
            c.read_exact(&mut b).unwrap();
            t.elapsed()
        })
        .collect();
    v.sort();
    v
}

/// A process's CPU time so far (utime + stime, 10 ms ticks), seconds.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f: Vec<f64> = stat
        .rsplit_once(')')
        .map(|(_, r)| {
            r.split_whitespace()
                .map(|x| x.parse().unwrap_or(0.0))
                .collect()
        })
        .unwrap_or_default();
    (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / 100.0
}

fn stats(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

/// `relay-bench splice-relay PATH`: the bare relay — accepts on the Unix socket PATH; per
/// connection connects to the world's server over IPv6 and splices each direction through a
/// pipe of its own, on two threads, until either side ends.
fn splice_relay(path: &str) {
    let l = std::os::unix::net::UnixListener::bind(path).unwrap();
    for c in l.incoming() {
        let Ok(c) = c else { continue };
        let t = TcpStream::connect(SocketAddr::new(addr::ECHO.into(), PORT)).unwrap();
        let (c2, t2) = (c.try_clone().unwrap(), t.try_clone().unwrap());
        std::thread::spawn(move || {
            splice_one_way(&c, &t);
            let _ = t.shutdown(std::net::Shutdown::Write);
        });
        std::thread::spawn(move || {
            splice_one_way(&t2, &c2);
            let _ = c2.shutdown(std::net::Shutdown::Write);
        });
    }
}

/// Moves bytes from `src` to `dst` with splice(2) through a pipe until `src` ends.
fn splice_one_way(src: &impl std::os::fd::AsFd, dst: &impl std::os::fd::AsFd) {
    use rustix::pipe::{pipe, splice, SpliceFlags};
    let (r, w) = pipe().unwrap();
    let flags = SpliceFlags::MOVE;
    loop {
        let n = match splice(src, None, &w, None, 1 << 20, flags) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut left = n;
        while left > 0 {
            match splice(&r, None, dst, None, left, flags) {
                Ok(0) | Err(_) => return,
                Ok(m) => left -= m,
            }
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("splice-relay") {
        splice_relay(&args[2]);
        return;
    }
    if !testworld::skip_unless_root("relay-bench") {
        return;
    }
    let world = World::start("bench").unwrap();
    let db = world.path("mappings.sqlite3");
    let dns_sock = world.path("dns.sock");
    let host_sock = world.path("host.sock");
    std::fs::write(
        world.path("dns.toml"),
        format!(
            "listen = [\"[::1]:53\"]\nupstreams = [\"[{}]:53\"]\ndatabase = \"{}\"\n\
             lookup_socket = \"{}\"\nmetrics = \"\"\n",
            addr::DNS,
            db.display(),
            dns_sock.display()
        ),
    )
    .unwrap();
    std::fs::write(
        world.path("host.toml"),
        format!(
            "socket = \"{}\"\ndns_socket = \"{}\"\ndatabase = \"{}\"\nmetrics_listen = \"\"\n",
            host_sock.display(),
            dns_sock.display(),
            db.display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(sibling("outsock-dns-cache"));
    cmd.arg("--config")
        .arg(world.path("dns.toml"))
        .env("RUST_LOG", "warn");
    let _dns = world.host().spawn("dns-cache", cmd).unwrap();
    wait_for(&dns_sock);
    let mut cmd = Command::new(sibling("outsock-host-server"));
    cmd.arg("--config")
        .arg(world.path("host.toml"))
        .env("RUST_LOG", "warn");
    let host = world.host().spawn("host-server", cmd).unwrap();
    let host_pid = host.pid();
    wait_for(&host_sock);
    serve(&world);
    let out = world.dig("::1", &["+short", zone::ECHO, "A"]).unwrap();
    let dummy = SocketAddrV4::new(out.trim().parse().unwrap(), PORT);

    let splice_sock = host_sock.with_file_name("splice.sock");
    let cmd = Command::new(std::env::current_exe().unwrap());
    let mut cmd = cmd;
    cmd.arg("splice-relay").arg(&splice_sock);
    let splice = world.host().spawn("splice-relay", cmd).unwrap();
    wait_for(&splice_sock);

    let modes = [Mode::Native, Mode::Relay, Mode::FdPass, Mode::Splice];
    let mut tput: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    let mut lat: Vec<Vec<Duration>> = vec![Vec::new(); modes.len()];
    // host-server's CPU, or for Splice the bare relay's.
    let mut relay_cpu = [0.0f64; 4];
    for _ in 0..ROUNDS {
        for (i, m) in modes.iter().enumerate() {
            let (sock, m) = (host_sock.clone(), *m);
            // Native runs in `host` (it has the route); outsock modes in `legacy` (only lo).
            let ns = if m == Mode::Native {
                world.host()
            } else {
                world.legacy()
            };
            let relay_pid = if m == Mode::Splice {
                splice.pid()
            } else {
                host_pid
            };
            let before = cpu_secs(relay_pid);
            let s2 = sock.clone();
            let t = ns.run(move || throughput(m, &s2, dummy)).unwrap();
            relay_cpu[i] += cpu_secs(relay_pid) - before;
            let l = ns.run(move || latencies(m, &sock, dummy)).unwrap();
            tput[i].push(t);
            lat[i].extend(l);
        }
    }
    let gb = (ROUNDS * BULK) as f64 / 1e9;
    println!("outsock host-server bench: {ROUNDS} rounds, {} MiB downloads, {LATENCY_SAMPLES} connects per round", BULK >> 20);
    let (_, native_med, _) = stats(&mut tput[0].clone());
    let mut native_lat = lat[0].clone();
    native_lat.sort();
    let pct = |v: &[Duration], p: usize| v[(v.len() * p / 100).min(v.len() - 1)];
    for (i, m) in modes.iter().enumerate() {
        let (min, med, max) = stats(&mut tput[i]);
        lat[i].sort();
        let (p50, p99) = (pct(&lat[i], 50), pct(&lat[i], 99));
        println!(
            "{m:?}: throughput MB/s min {min:.0} median {med:.0} max {max:.0} (ratio {:.2}); \
             connect+first byte p50 {:?} (+{:?}) p99 {:?} (+{:?}); {} CPU {:.3} s/GB",
            med / native_med,
            p50,
            p50.saturating_sub(pct(&native_lat, 50)),
            p99,
            p99.saturating_sub(pct(&native_lat, 99)),
            if *m == Mode::Splice {
                "the bare relay's"
            } else {
                "host-server"
            },
            relay_cpu[i] / gb,
        );
        let name = format!("{m:?}");
        record::figure("relay", &format!("median MB/s: {name}"), "MB/s", med);
        record::figure("relay", &format!("ratio: {name}"), "×", med / native_med);
        record::figure(
            "relay",
            &format!("CPU per GB: {name}"),
            "s",
            relay_cpu[i] / gb,
        );
        let micros: Vec<f64> = lat[i].iter().map(|d| d.as_secs_f64() * 1e6).collect();
        record::samples("relay-latency", &name, "µs", &micros);
    }
}
