//! End-to-end tests of outsock-host-server in the IPv6-only test world (DESIGN.md §9).
//!
//! host-server and the real outsock-dns-cache run in the world's `host` namespace; the test
//! client speaks shared-proto over host.sock from the `legacy` namespace (nothing but `lo`), as
//! a guest or liboutsock would. dns-cache's binary is found next to this test's target dir
//! (`cargo build -p outsock-dns-cache` with the same CARGO_TARGET_DIR) or at
//! `$OUTSOCK_DNS_CACHE_BIN`.

// This whole file is test code; its helpers (outside `#[test]` functions) may unwrap too.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use outsock_host_server::fdpass::recv_with_fd;
use shared_proto::lookup::{LookupOp, LookupReply, LookupRequest, LookupResponse};
use shared_proto::outsource::{
    ConnectRequest, Datagram, ListenRequest, ToGuest, ToHost, UdpRequest, VmHello,
};
use shared_proto::{frame, Errno};
use testworld::{addr, zone, Daemon, World};

const GUEST_DNS: Ipv4Addr = Ipv4Addr::new(10, 170, 160, 1);
/// Routed from `host` to `world`, where a blackhole route drops it silently: connects time out.
const BLACKHOLE: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x66, 0, 0, 0, 0, 0, 1);
const LISTEN_PORT: u16 = 8080;

fn dns_cache_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("OUTSOCK_DNS_CACHE_BIN") {
        return Some(PathBuf::from(p));
    }
    // target/debug/deps/e2e-HASH → target/debug/outsock-dns-cache
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.parent()?.join("outsock-dns-cache");
    p.is_file().then_some(p)
}

/// A world with dns-cache and host-server running in `host`.
struct Rig {
    world: World,
    dns: Option<Daemon>,
    hosts: Vec<Option<Daemon>>,
    host_cfgs: Vec<PathBuf>,
    dns_cfg: PathBuf,
    dns_bin: PathBuf,
    db: PathBuf,
    dns_sock: PathBuf,
}

impl Rig {
    /// `None` (with the reason printed) when the world cannot run here.
    fn start(label: &str, host_configs: &[&str]) -> Option<Rig> {
        if !testworld::skip_unless_root(label) {
            return None;
        }
        let Some(dns_bin) = dns_cache_bin() else {
            let why = "outsock-dns-cache is not built (cargo build -p outsock-dns-cache)";
            assert!(
                std::env::var("OUTSOCK_E2E_REQUIRED").as_deref() != Ok("1"),
                "{label}: {why}, and OUTSOCK_E2E_REQUIRED=1 forbids skipping"
            );
            println!("SKIP {label}: {why}");
            return None;
        };
        let world = World::start(label).expect("test world starts");
        // The blackhole: host routes it to world, world drops it without a word.
        world
            .host()
            .ip(&[
                "-6",
                "route",
                "add",
                &format!("{BLACKHOLE}/64"),
                "via",
                &addr::WORLD.to_string(),
            ])
            .expect("route to the blackhole");
        world
            .world()
            .ip(&[
                "-6",
                "route",
                "add",
                "blackhole",
                &format!("{BLACKHOLE}/64"),
            ])
            .expect("blackhole route");
        let db = world.path("mappings.sqlite3");
        let dns_sock = world.path("dns.sock");
        let dns_cfg = world.path("dns-cache.toml");
        std::fs::write(
            &dns_cfg,
            format!(
                "listen = [\"[::1]:53\"]\nupstreams = [\"[{dns}]:53\"]\nupstream_timeout_ms = 1000\n\
                 database = \"{db}\"\nlookup_socket = \"{sock}\"\nmetrics = \"\"\n",
                dns = addr::DNS,
                db = db.display(),
                sock = dns_sock.display(),
            ),
        )
        .expect("write dns-cache config");
        let mut host_cfgs = Vec::new();
        for (i, extra) in host_configs.iter().enumerate() {
            let cfg = world.path(&format!("host-server-{i}.toml"));
            std::fs::write(
                &cfg,
                format!(
                    "socket = \"{sock}\"\ndns_socket = \"{dns}\"\ndatabase = \"{db}\"\n\
                     connect_timeout_ms = 5000\ndrain_timeout_secs = 3\n{extra}\n",
                    sock = world.path(&format!("host-{i}.sock")).display(),
                    dns = dns_sock.display(),
                    db = db.display(),
                ),
            )
            .expect("write host-server config");
            host_cfgs.push(cfg);
        }
        let mut rig = Rig {
            world,
            dns: None,
            hosts: host_cfgs.iter().map(|_| None).collect(),
            host_cfgs,
            dns_cfg,
            dns_bin,
            db,
            dns_sock,
        };
        rig.launch_dns();
        for i in 0..rig.hosts.len() {
            rig.launch_host(i);
        }
        Some(rig)
    }

    fn sock(&self, i: usize) -> PathBuf {
        self.world.path(&format!("host-{i}.sock"))
    }

    fn wait_for(path: &Path, d: &mut Daemon, what: &str) {
        d.wait_until(Duration::from_secs(20), || path.exists())
            .unwrap_or_else(|e| panic!("{what}: {e:#}"));
    }

    fn launch_dns(&mut self) {
        let _ = std::fs::remove_file(&self.dns_sock);
        let mut cmd = Command::new(&self.dns_bin);
        cmd.arg("--config")
            .arg(&self.dns_cfg)
            .env("RUST_LOG", "warn");
        let mut d = self
            .world
            .host()
            .spawn("outsock-dns-cache", cmd)
            .expect("spawn dns-cache");
        Self::wait_for(&self.dns_sock.clone(), &mut d, "outsock-dns-cache");
        self.dns = Some(d);
    }

    fn stop_dns(&mut self) {
        if let Some(mut d) = self.dns.take() {
            let st = d.stop(Duration::from_secs(5));
            assert!(
                st.is_some_and(|s| s.success()),
                "dns-cache did not stop cleanly: {st:?}"
            );
        }
    }

    fn launch_host(&mut self, i: usize) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_outsock-host-server"));
        cmd.arg("--config")
            .arg(&self.host_cfgs[i])
            .env("RUST_LOG", "warn");
        let mut d = self
            .world
            .host()
            .spawn("outsock-host-server", cmd)
            .expect("spawn host-server");
        Self::wait_for(&self.sock(i), &mut d, "outsock-host-server");
        self.hosts[i] = Some(d);
    }

    /// SIGTERM; returns whether it exited successfully, and checks the socket file is gone.
    fn stop_host(&mut self, i: usize) -> bool {
        let Some(mut d) = self.hosts[i].take() else {
            return false;
        };
        let st = d.stop(Duration::from_secs(10));
        let ok = st.is_some_and(|s| s.success());
        ok && !self.sock(i).exists()
    }

    /// The dummy A dns-cache gives `name` (asked over DNS in `host`, as a guest would).
    fn dummy(&self, name: &str) -> Ipv4Addr {
        let out = self.world.dig("::1", &["+short", name, "A"]).expect("dig");
        out.lines()
            .filter_map(|l| l.trim().parse().ok())
            .next()
            .unwrap_or_else(|| panic!("no A for {name}: {out:?}"))
    }

    fn lookup(&self, op: LookupOp) -> LookupReply {
        let mut s = UnixStream::connect(&self.dns_sock).expect("connect dns.sock");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(&frame::to_vec(&LookupRequest { id: 1, op }).unwrap())
            .unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 65536];
        loop {
            if let Some((r, _)) = frame::decode::<LookupResponse>(&buf).unwrap() {
                return r.reply;
            }
            let n = s.read(&mut chunk).unwrap();
            assert!(n > 0, "dns.sock closed");
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// A source-pool dummy standing for `v6` (how tests get dummies for addresses no name has).
    fn peer_dummy(&self, v6: Ipv6Addr) -> Ipv4Addr {
        match self.lookup(LookupOp::PeerDummy { v6 }) {
            LookupReply::Dummy { dummy } => dummy,
            other => panic!("PeerDummy({v6}): {other:?}"),
        }
    }

    fn resolve(&self, dummy: Ipv4Addr) -> Option<Ipv6Addr> {
        match self.lookup(LookupOp::Resolve { dummy }) {
            LookupReply::Resolved(m) => Some(m.v6),
            LookupReply::NotFound => None,
            other => panic!("Resolve({dummy}): {other:?}"),
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        for h in &mut self.hosts {
            h.take();
        }
        self.dns.take();
    }
}

// ---- the test client: shared-proto over host.sock -------------------------------------------

fn send(s: &mut UnixStream, m: &ToHost) {
    s.write_all(&frame::to_vec(m).unwrap()).unwrap();
}

/// Reads exactly one frame (never a byte more: relayed data may follow).
fn read_frame(s: &mut UnixStream) -> Option<ToGuest> {
    let mut head = [0u8; frame::HEADER_LEN];
    s.read_exact(&mut head).ok()?;
    let total = frame::frame_len(&head).unwrap().unwrap();
    let mut whole = head.to_vec();
    whole.resize(total, 0);
    s.read_exact(&mut whole[frame::HEADER_LEN..]).ok()?;
    Some(frame::decode_exact(&whole).unwrap())
}

/// Reads one frame whose first bytes carry a descriptor (see host-server's fdpass docs).
fn read_frame_with_fd(s: &mut UnixStream) -> (ToGuest, Option<std::os::fd::OwnedFd>) {
    let mut head = [0u8; frame::HEADER_LEN];
    let (n, fd) = recv_with_fd(s.as_raw_fd(), &mut head).unwrap();
    s.read_exact(&mut head[n..]).unwrap();
    let total = frame::frame_len(&head).unwrap().unwrap();
    let mut whole = head.to_vec();
    whole.resize(total, 0);
    s.read_exact(&mut whole[frame::HEADER_LEN..]).unwrap();
    (frame::decode_exact(&whole).unwrap(), fd)
}

fn connect_req(dest: SocketAddrV4, pass_fd: bool, nonblocking: bool) -> ToHost {
    ToHost::Connect(ConnectRequest {
        dest,
        pass_fd,
        nonblocking,
    })
}

/// Opens a stream, sends `frames`, returns the stream and the answer.
fn ask(sock: &Path, frames: &[ToHost]) -> (UnixStream, ToGuest) {
    let mut s = UnixStream::connect(sock).expect("connect host.sock");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    for f in frames {
        send(&mut s, f);
    }
    let answer = read_frame(&mut s).expect("an answer frame");
    (s, answer)
}

/// [`ask`] for an answer that may carry a descriptor (a process listener's packet channel).
fn ask_fd(sock: &Path, frames: &[ToHost]) -> (UnixStream, ToGuest, Option<std::os::fd::OwnedFd>) {
    let mut s = UnixStream::connect(sock).expect("connect host.sock");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    for f in frames {
        send(&mut s, f);
    }
    let (answer, fd) = read_frame_with_fd(&mut s);
    (s, answer, fd)
}

/// Reads one packet from a process listener's packet channel: one whole `Inbound` frame and the
/// accepted socket, in one `recvmsg`.
fn read_packet(ch: &std::os::fd::OwnedFd) -> (ToGuest, Option<std::os::fd::OwnedFd>) {
    let mut buf = [0u8; 512];
    let (n, fd) = recv_with_fd(ch.as_raw_fd(), &mut buf).unwrap();
    (frame::decode_exact(&buf[..n]).unwrap(), fd)
}

fn connect_errno(sock: &Path, dest: SocketAddrV4) -> Errno {
    match ask(sock, &[connect_req(dest, false, false)]).1 {
        ToGuest::Failed(e) => e,
        other => panic!("connect to {dest}: expected a failure, got {other:?}"),
    }
}

/// Runs `f` in the legacy namespace (a guest's view: only `lo`, Unix sockets reach host-server).
fn in_legacy<T: Send + 'static>(rig: &Rig, f: impl FnOnce() -> T + Send + 'static) -> T {
    rig.world.legacy().run(f).expect("enter legacy namespace")
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(7) ^ (i >> 11)) as u8)
        .collect()
}

/// Writes `data` on one thread while reading the echo on this one; returns what came back.
fn echo_through(s: UnixStream, data: Vec<u8>) -> Vec<u8> {
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        w.write_all(&data).unwrap();
        w.shutdown(Shutdown::Write).unwrap();
    });
    let mut r = s;
    let mut back = Vec::new();
    r.read_to_end(&mut back).unwrap();
    writer.join().unwrap();
    back
}

fn dns_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::new();
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(u8::try_from(label.len()).unwrap());
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// The A records' addresses in a DNS answer to a query made by [`dns_query`] (simple parser:
/// enough for the answers dns-cache gives, with name compression).
fn a_records(packet: &[u8]) -> Vec<Ipv4Addr> {
    let an = usize::from(u16::from_be_bytes([packet[6], packet[7]]));
    let mut i = 12;
    // Skip the question.
    while packet[i] != 0 {
        i += 1 + usize::from(packet[i]);
    }
    i += 5;
    let mut out = Vec::new();
    for _ in 0..an {
        // Name: a pointer or labels.
        loop {
            let b = packet[i];
            if b & 0xc0 == 0xc0 {
                i += 2;
                break;
            }
            i += 1 + usize::from(b);
            if b == 0 {
                break;
            }
        }
        let ty = u16::from_be_bytes([packet[i], packet[i + 1]]);
        let len = usize::from(u16::from_be_bytes([packet[i + 8], packet[i + 9]]));
        i += 10;
        if ty == 1 && len == 4 {
            out.push(Ipv4Addr::new(
                packet[i],
                packet[i + 1],
                packet[i + 2],
                packet[i + 3],
            ));
        }
        i += len;
    }
    out
}

/// The Prometheus text of a host-server's metrics endpoint (in `host`).
fn metrics(rig: &Rig, at: &'static str) -> String {
    rig.world
        .host()
        .run(move || {
            let mut s = TcpStream::connect(at).unwrap();
            s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
            let mut t = String::new();
            s.read_to_string(&mut t).unwrap();
            t
        })
        .unwrap()
}

// ---- tests -------------------------------------------------------------------------------------

#[test]
fn outbound_tcp_relay_fd_passing_and_errnos() {
    let Some(rig) = Rig::start("hs-outbound", &["metrics_listen = \"[::1]:9641\""]) else {
        return;
    };
    let sock = rig.sock(0);
    let echo = rig.dummy(zone::ECHO);
    let dest = SocketAddrV4::new(echo, addr::ECHO_PORT);

    // 10 MB, byte-exact, relayed; the first bytes ride in the same write as the request.
    let data = pattern(10 * 1024 * 1024);
    let (back, answer) = in_legacy(&rig, {
        let sock = sock.clone();
        let data = data.clone();
        move || {
            let (s, answer) = ask(&sock, &[connect_req(dest, false, false)]);
            (echo_through(s, data), answer)
        }
    });
    match answer {
        ToGuest::Connected {
            peer,
            fd_passed,
            in_progress,
            ..
        } => {
            assert_eq!(peer, dest);
            assert!(!fd_passed && !in_progress);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(back.len(), data.len());
    assert!(back == data, "echo differs from what was sent");

    // fd passing, blocking and non-blocking: the program's fd is the host's IPv6 socket.
    for nonblocking in [false, true] {
        let (answer, got) = in_legacy(&rig, {
            let sock = sock.clone();
            move || {
                let mut s = UnixStream::connect(&sock).unwrap();
                send(&mut s, &connect_req(dest, true, nonblocking));
                let (answer, fd) = read_frame_with_fd(&mut s);
                let tcp = TcpStream::from(fd.expect("a passed descriptor"));
                tcp.set_nonblocking(false).unwrap();
                let mut w = tcp.try_clone().unwrap();
                w.write_all(b"passed fd").unwrap();
                w.shutdown(Shutdown::Write).unwrap();
                let mut got = Vec::new();
                (&tcp).read_to_end(&mut got).unwrap();
                let local = tcp.local_addr().unwrap();
                assert!(local.is_ipv6(), "{local}");
                (answer, got)
            }
        });
        assert!(
            matches!(
                answer,
                ToGuest::Connected {
                    fd_passed: true,
                    ..
                }
            ),
            "{answer:?}"
        );
        assert_eq!(got, b"passed fd");
    }

    // Failures, each the errno a native connect gives.
    let no_host = rig.peer_dummy(addr::NO_HOST);
    let unrouted = rig.peer_dummy(addr::UNROUTED);
    let blackhole = rig.peer_dummy(BLACKHOLE);
    let sock2 = sock.clone();
    let results = in_legacy(&rig, move || {
        let t = Instant::now();
        let refused = connect_errno(&sock2, SocketAddrV4::new(echo, addr::CLOSED_PORT));
        let unknown = connect_errno(&sock2, "10.170.175.250:80".parse().unwrap());
        let unrouted = connect_errno(&sock2, SocketAddrV4::new(unrouted, 80));
        let real_v4 = connect_errno(&sock2, "203.0.113.10:80".parse().unwrap());
        let fast = t.elapsed();
        let no_host = connect_errno(&sock2, SocketAddrV4::new(no_host, 80));
        let t = Instant::now();
        let timeout = connect_errno(&sock2, SocketAddrV4::new(blackhole, 80));
        (
            refused,
            unknown,
            unrouted,
            real_v4,
            fast,
            no_host,
            timeout,
            t.elapsed(),
        )
    });
    let (refused, unknown, unrouted, real_v4, fast, no_host, timeout, waited) = results;
    assert_eq!(refused, Errno::ECONNREFUSED);
    assert_eq!(unknown, Errno::EHOSTUNREACH);
    assert_eq!(unrouted, Errno::ENETUNREACH);
    assert_eq!(real_v4, Errno::ENETUNREACH);
    assert!(
        fast < Duration::from_secs(3),
        "immediate failures took {fast:?}"
    );
    assert_eq!(no_host, Errno::EHOSTUNREACH);
    assert_eq!(timeout, Errno::ETIMEDOUT);
    assert!(
        waited >= Duration::from_millis(4500),
        "timed out after {waited:?}"
    );

    // The metrics endpoint counted all of it.
    let text = metrics(&rig, "[::1]:9641");
    assert!(
        text.contains("outsock_host_connects_total{result=\"ECONNREFUSED\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("outsock_host_connects_total{result=\"ETIMEDOUT\"} 1"),
        "{text}"
    );
    assert!(text.contains("outsock_host_fds_passed_total 2"), "{text}");
}

/// A process's stream that brought a socket passed while connecting carries the next request
/// (many connects on one stream, each socket working); any other answer ends the stream, and
/// so does an idle kept stream after the request timeout — without an answer, since its client
/// asked nothing.
#[test]
fn a_kept_stream_carries_connects_until_idle() {
    let Some(rig) = Rig::start("hs-kept", &["request_timeout_ms = 1500"]) else {
        return;
    };
    let sock = rig.sock(0);
    let dest = SocketAddrV4::new(rig.dummy(zone::ECHO), addr::ECHO_PORT);
    let closed = SocketAddrV4::new(rig.dummy(zone::ECHO), addr::CLOSED_PORT);
    let (echoes, after_blocking, after_idle, idle_for) = in_legacy(&rig, move || {
        let echo_on = |fd: Option<std::os::fd::OwnedFd>, line: &[u8]| {
            let tcp = TcpStream::from(fd.expect("a passed descriptor"));
            tcp.set_nonblocking(false).unwrap();
            (&tcp).write_all(line).unwrap();
            tcp.shutdown(Shutdown::Write).unwrap();
            let mut got = Vec::new();
            (&tcp).read_to_end(&mut got).unwrap();
            got
        };
        // Five connects on one stream, each answered with its socket.
        let mut s = UnixStream::connect(&sock).unwrap();
        let mut echoes = Vec::new();
        for i in 0..5u8 {
            send(&mut s, &connect_req(dest, true, true));
            let (answer, fd) = read_frame_with_fd(&mut s);
            assert!(
                matches!(
                    answer,
                    ToGuest::Connected {
                        fd_passed: true,
                        ..
                    }
                ),
                "connect {i} on the kept stream: {answer:?}"
            );
            echoes.push(echo_on(fd, &[b'0' + i]));
        }
        // A blocking pass (answered once connected) ends the stream after its answer.
        send(&mut s, &connect_req(dest, true, false));
        let (answer, fd) = read_frame_with_fd(&mut s);
        assert!(matches!(answer, ToGuest::Connected { .. }), "{answer:?}");
        echoes.push(echo_on(fd, b"b"));
        let mut rest = Vec::new();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let after_blocking = s.read_to_end(&mut rest).map(|_| rest);
        // A refusal ends its stream too: the stream that carried a connect before
        // gets ECONNREFUSED, then its end.
        let mut s = UnixStream::connect(&sock).unwrap();
        send(&mut s, &connect_req(dest, true, true));
        let (_, fd) = read_frame_with_fd(&mut s);
        echoes.push(echo_on(fd, b"r"));
        send(&mut s, &connect_req(closed, true, false));
        assert_eq!(
            read_frame(&mut s),
            Some(ToGuest::Failed(Errno::ECONNREFUSED))
        );
        assert_eq!(
            read_frame(&mut s),
            None,
            "the stream goes on after a refusal"
        );
        // An idle kept stream ends quietly after the request timeout.
        let mut s = UnixStream::connect(&sock).unwrap();
        send(&mut s, &connect_req(dest, true, true));
        let (_, fd) = read_frame_with_fd(&mut s);
        echoes.push(echo_on(fd, b"i"));
        let t = Instant::now();
        let mut rest = Vec::new();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let after_idle = s.read_to_end(&mut rest).map(|_| rest);
        (echoes, after_blocking, after_idle, t.elapsed())
    });
    let want: Vec<Vec<u8>> = [b"0", b"1", b"2", b"3", b"4", b"b", b"r", b"i"]
        .iter()
        .map(|l| l.to_vec())
        .collect();
    assert_eq!(echoes, want);
    assert_eq!(
        after_blocking.unwrap(),
        b"",
        "bytes after the blocking pass"
    );
    assert_eq!(after_idle.unwrap(), b"", "an answer on an idle kept stream");
    assert!(
        idle_for >= Duration::from_millis(1000) && idle_for < Duration::from_secs(8),
        "the idle kept stream ended after {idle_for:?}"
    );
}

#[test]
fn udp_echo_and_guest_dns() {
    let Some(rig) = Rig::start("hs-udp", &[""]) else {
        return;
    };
    let sock = rig.sock(0);
    let echo = rig.dummy(zone::ECHO);
    let v6only = rig.dummy(zone::V6ONLY);
    let (udp_back, dns_udp, dns_tcp) = in_legacy(&rig, move || {
        // A process's association is a packet channel passed with the answer: one frame
        // each way per packet.
        let (_request, answer, ch) = ask_fd(
            &sock,
            &[ToHost::Udp(UdpRequest {
                bind: "0.0.0.0:0".parse().unwrap(),
                channel: false,
            })],
        );
        assert!(matches!(answer, ToGuest::Associated { .. }), "{answer:?}");
        let ch = ch.expect("the association's packet channel");
        let mut s = UnixStream::from(ch.try_clone().unwrap());
        // Echo: the reply comes from the dummy address the guest sent to.
        let dest = SocketAddrV4::new(echo, addr::ECHO_PORT);
        send(
            &mut s,
            &ToHost::Datagram(Datagram {
                addr: dest,
                payload: b"udp round trip".to_vec(),
            }),
        );
        let udp_back = Some(read_packet(&ch).0);
        // DNS through the guest DNS address, over UDP on the same association...
        let dns = SocketAddrV4::new(GUEST_DNS, 53);
        send(
            &mut s,
            &ToHost::Datagram(Datagram {
                addr: dns,
                payload: dns_query(0x1234, zone::V6ONLY),
            }),
        );
        let dns_udp = Some(read_packet(&ch).0);
        // ...and over TCP.
        let (mut t, answer) = ask(&sock, &[connect_req(dns, false, false)]);
        assert!(matches!(answer, ToGuest::Connected { .. }), "{answer:?}");
        let q = dns_query(0x4321, zone::V6ONLY);
        let mut msg = u16::try_from(q.len()).unwrap().to_be_bytes().to_vec();
        msg.extend_from_slice(&q);
        t.write_all(&msg).unwrap();
        let mut len = [0u8; 2];
        t.read_exact(&mut len).unwrap();
        let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
        t.read_exact(&mut reply).unwrap();
        (udp_back, dns_udp, reply)
    });
    assert_eq!(
        udp_back,
        Some(ToGuest::Datagram(Datagram {
            addr: SocketAddrV4::new(echo, addr::ECHO_PORT),
            payload: b"udp round trip".to_vec()
        }))
    );
    let Some(ToGuest::Datagram(d)) = dns_udp else {
        panic!("no DNS answer over UDP: {dns_udp:?}");
    };
    assert_eq!(d.addr, SocketAddrV4::new(GUEST_DNS, 53));
    assert_eq!(&d.payload[..2], &0x1234u16.to_be_bytes());
    assert_eq!(a_records(&d.payload), [v6only]);
    assert_eq!(&dns_tcp[..2], &0x4321u16.to_be_bytes());
    assert_eq!(a_records(&dns_tcp), [v6only]);
}

#[test]
fn inbound_process_and_vm_modes_and_hello_rules() {
    let vm_sock_path = "VM_SOCKET";
    let vm_cfg = format!(
        "[listen]\ndefault_address = \"{}\"\nallowed_ports = [{LISTEN_PORT}]\n\
         [vms.web]\nsocket = \"{vm_sock_path}\"\naddress = \"{}\"\nvmm_uid = 0\n",
        addr::HOST,
        addr::HOST_VMS[0]
    );
    let proc_cfg = format!(
        "[listen]\ndefault_address = \"{}\"\nallowed_ports = [{LISTEN_PORT}]\n",
        addr::HOST
    );
    // The VM socket path is only known once the world exists: patch it in after start.
    let Some(mut rig) = Rig::start("hs-inbound", &[&proc_cfg, "metrics_listen = \"\""]) else {
        return;
    };
    let vm_socket = rig.world.path("vm-web.vsock");
    std::fs::write(
        &rig.host_cfgs[1],
        std::fs::read_to_string(&rig.host_cfgs[1]).unwrap()
            + &vm_cfg.replace(vm_sock_path, &vm_socket.to_string_lossy()),
    )
    .unwrap();
    assert!(rig.stop_host(1));
    rig.launch_host(1);

    // -- process mode: the accepted socket arrives with the Inbound frame.
    let psock = rig.sock(0);
    let (stream, answer, listen) = in_legacy(&rig, {
        let psock = psock.clone();
        move || {
            ask_fd(
                &psock,
                &[ToHost::Listen(ListenRequest {
                    addr: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, LISTEN_PORT),
                    backlog: 16,
                    pass_fd: true,
                    vsock_port: 0,
                    channel: false,
                })],
            )
        }
    });
    assert_eq!(
        answer,
        ToGuest::Listening {
            local: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, LISTEN_PORT)
        }
    );
    let client = rig
        .world
        .world()
        .run(|| {
            let s =
                socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None).unwrap();
            s.bind(&SocketAddr::new(addr::CLIENT.into(), 0).into())
                .unwrap();
            s.connect_timeout(
                &SocketAddr::new(addr::HOST.into(), LISTEN_PORT).into(),
                Duration::from_secs(5),
            )
            .unwrap();
            let mut t = TcpStream::from(s);
            t.write_all(b"hello guest server").unwrap();
            t
        })
        .unwrap();
    let client_port = client.local_addr().unwrap().port();
    // The answer carried the packet channel; the request's stream has no more to say.
    drop(stream);
    let listen = listen.expect("packet channel attached to Listening");
    let (inbound, fd) = read_packet(&listen);
    let ToGuest::Inbound { peer, local } = inbound else {
        panic!("{inbound:?}");
    };
    assert_eq!(local.port(), LISTEN_PORT);
    assert_eq!(peer.port(), client_port);
    assert!(
        u32::from(*peer.ip()) >> 12 == u32::from(Ipv4Addr::new(172, 21, 112, 0)) >> 12,
        "peer {peer} not in the source pool"
    );
    // The dummy traces back to the client's IPv6 address in the database.
    assert_eq!(rig.resolve(*peer.ip()), Some(addr::CLIENT));
    let mut accepted = TcpStream::from(fd.expect("accepted socket attached"));
    let mut got = [0u8; 18];
    accepted.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello guest server");
    drop((accepted, client));
    // Closing the packet channel closes the IPv6 listener.
    drop(listen);
    let refused = rig
        .world
        .world()
        .run(|| {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let r = TcpStream::connect_timeout(
                    &SocketAddr::new(addr::HOST.into(), LISTEN_PORT),
                    Duration::from_secs(2),
                );
                if r.is_err() || Instant::now() > deadline {
                    return r.is_err();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
        .unwrap();
    assert!(refused, "the listener outlived its packet channel");

    // A process may not send a hello.
    let hello = ToHost::Hello(VmHello {
        vm: "web".into(),
        cid: 3,
        port: 1024,
        takes_sockets: false,
    });
    let refusal = in_legacy(&rig, {
        let psock = psock.clone();
        let hello = hello.clone();
        move || ask(&psock, &[hello]).1
    });
    assert_eq!(refusal, ToGuest::Failed(Errno::EPERM));

    // -- VM mode (instance 1 treats uid 0 as a VMM): a second hello is refused, a request
    // without a hello too; with one hello the listener delivers through the VM's socket.
    let vsock = rig.sock(1);
    let (second, none) = in_legacy(&rig, {
        let vsock = vsock.clone();
        let hello = hello.clone();
        move || {
            let a = ask(&vsock, &[hello.clone(), hello]).1;
            let b = ask(
                &vsock,
                &[connect_req(
                    "10.170.160.9:80".parse().unwrap(),
                    false,
                    false,
                )],
            )
            .1;
            (a, b)
        }
    });
    assert_eq!(second, ToGuest::Failed(Errno::EPROTO));
    assert_eq!(none, ToGuest::Failed(Errno::EPERM));

    let vm_listener = std::os::unix::net::UnixListener::bind(&vm_socket).unwrap();
    let (_vlisten, answer) = in_legacy(&rig, {
        let vsock = vsock.clone();
        move || {
            ask(
                &vsock,
                &[
                    hello,
                    ToHost::Listen(ListenRequest {
                        addr: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, LISTEN_PORT),
                        backlog: 16,
                        pass_fd: false,
                        vsock_port: 5000,
                        channel: false,
                    }),
                ],
            )
        }
    });
    assert!(matches!(answer, ToGuest::Listening { .. }), "{answer:?}");
    // The fake VMM side: accept host-server's stream, check the handshake, echo.
    let vmm = std::thread::spawn(move || {
        let (mut s, _) = vm_listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while line.last() != Some(&b'\n') {
            s.read_exact(&mut b).unwrap();
            line.push(b[0]);
        }
        assert_eq!(line, b"CONNECT 5000\n");
        s.write_all(b"OK 1073741824\n").unwrap();
        let inbound = read_frame(&mut s).unwrap();
        let mut data = [0u8; 7];
        s.read_exact(&mut data).unwrap();
        s.write_all(&data).unwrap();
        inbound
    });
    let echoed = rig
        .world
        .world()
        .run(|| {
            let mut t = TcpStream::connect_timeout(
                &SocketAddr::new(addr::HOST_VMS[0].into(), LISTEN_PORT),
                Duration::from_secs(5),
            )
            .unwrap();
            t.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            t.write_all(b"to a vm").unwrap();
            let mut back = [0u8; 7];
            t.read_exact(&mut back).unwrap();
            back
        })
        .unwrap();
    assert_eq!(&echoed, b"to a vm");
    let inbound = vmm.join().unwrap();
    assert!(
        matches!(inbound, ToGuest::Inbound { local, .. } if local.port() == LISTEN_PORT),
        "{inbound:?}"
    );
}

#[test]
fn restarts_and_sqlite_fallback() {
    let Some(mut rig) = Rig::start("hs-restart", &[""]) else {
        return;
    };
    let sock = rig.sock(0);
    let echo = rig.dummy(zone::ECHO);
    let dest = SocketAddrV4::new(echo, addr::ECHO_PORT);
    let round_trip = |rig: &Rig, what: &'static str| {
        let sock = sock.clone();
        let back = in_legacy(rig, move || {
            let (s, answer) = ask(&sock, &[connect_req(dest, false, false)]);
            assert!(
                matches!(answer, ToGuest::Connected { .. }),
                "{what}: {answer:?}"
            );
            echo_through(s, what.as_bytes().to_vec())
        });
        assert_eq!(back, what.as_bytes(), "{what}");
    };
    round_trip(&rig, "before any restart");

    // SIGTERM drains: the socket goes at once, an open connection keeps working until it
    // closes, and then host-server exits 0. A kept stream (a process's, whose socket was
    // passed while connecting) takes no new request once the drain began: it is closed
    // unanswered, and its client would open a new stream.
    let (open, answer) = in_legacy(&rig, {
        let sock = sock.clone();
        move || ask(&sock, &[connect_req(dest, false, false)])
    });
    assert!(matches!(answer, ToGuest::Connected { .. }), "{answer:?}");
    let (mut kept, answer, passed) = in_legacy(&rig, {
        let sock = sock.clone();
        move || ask_fd(&sock, &[connect_req(dest, true, true)])
    });
    assert!(
        matches!(
            answer,
            ToGuest::Connected {
                fd_passed: true,
                ..
            }
        ) && passed.is_some(),
        "{answer:?}"
    );
    rig.hosts[0].as_ref().unwrap().signal(libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(5);
    while sock.exists() {
        assert!(
            Instant::now() < deadline,
            "host.sock still there after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The request may meet a stream already closed (EPIPE): either way, no answer.
    let _ = kept.write_all(&frame::to_vec(&connect_req(dest, true, true)).unwrap());
    assert_eq!(
        read_frame(&mut kept),
        None,
        "a kept stream took a new connect while host-server drained"
    );
    assert_eq!(
        echo_through(open, b"while draining".to_vec()),
        b"while draining"
    );
    let status = rig.hosts[0]
        .as_mut()
        .unwrap()
        .wait_timeout(Duration::from_secs(2))
        .expect("host-server exits once its last connection closed");
    assert!(status.success(), "{status}");
    rig.hosts[0] = None;
    rig.launch_host(0);
    round_trip(&rig, "after a host-server restart");

    // dns-cache restarts while host-server runs.
    rig.stop_dns();
    rig.launch_dns();
    round_trip(&rig, "after a dns-cache restart");

    // dns-cache down, host-server restarted (empty cache): the SQLite file answers.
    rig.stop_dns();
    assert!(rig.stop_host(0));
    rig.launch_host(0);
    round_trip(&rig, "with dns-cache stopped");
    // An unknown dummy is still unknown.
    let e = in_legacy(&rig, {
        let sock = sock.clone();
        move || connect_errno(&sock, "10.170.175.251:7".parse().unwrap())
    });
    assert_eq!(e, Errno::EHOSTUNREACH);
    // The connection above really was resolved from the SQLite file.
    let text = metrics(&rig, "127.0.0.1:9641");
    assert!(
        text.contains("outsock_host_lookup_fallbacks_total 2"),
        "{text}"
    );
    assert!(rig.db.is_file());
}

#[test]
fn thousand_concurrent_connections_and_a_malformed_client() {
    let Some(rig) = Rig::start("hs-many", &[""]) else {
        return;
    };
    let sock = rig.sock(0);
    let echo = rig.dummy(zone::ECHO);
    let dest = SocketAddrV4::new(echo, addr::ECHO_PORT);
    let (outcomes, bad) = in_legacy(&rig, move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut tasks = Vec::new();
            for i in 0..1000u32 {
                let sock = sock.clone();
                // The request goes out right after the connect, as liboutsock sends it: a
                // stream that stays silent for long counts among its uid's streams awaiting a
                // request (limits.max_awaiting_request), and 1,000 tasks building 32 KiB each
                // between connect and write would be that on a loaded machine.
                let payload: Vec<u8> = (0..32 * 1024u32).map(|j| (j ^ i) as u8).collect();
                let mut req = frame::to_vec(&connect_req(dest, false, false)).unwrap();
                req.extend_from_slice(&payload);
                tasks.push(tokio::spawn(async move {
                    let mut s = tokio::net::UnixStream::connect(&sock).await.unwrap();
                    if let Err(e) = s.write_all(&req).await {
                        return format!("write: {e}");
                    }
                    s.shutdown().await.unwrap();
                    let mut back = Vec::new();
                    if let Err(e) = s.read_to_end(&mut back).await {
                        return format!("read: {e}");
                    }
                    match frame::decode::<ToGuest>(&back) {
                        Ok(Some((ToGuest::Connected { .. }, used)))
                            if back[used..] == payload[..] =>
                        {
                            "ok".to_owned()
                        }
                        Ok(Some((ToGuest::Connected { .. }, used))) => {
                            format!("echo of {} bytes differs", back.len() - used)
                        }
                        other => format!("answer {other:?}"),
                    }
                }));
            }
            // One client sends garbage in the middle of it all.
            let mut bad = tokio::net::UnixStream::connect(&sock).await.unwrap();
            bad.write_all(b"this is not a frame at all").await.unwrap();
            let mut answer = Vec::new();
            bad.read_to_end(&mut answer).await.unwrap();
            let bad = frame::decode_exact::<ToGuest>(&answer).ok();
            let mut outcomes = std::collections::BTreeMap::<String, u32>::new();
            for t in tasks {
                *outcomes.entry(t.await.unwrap()).or_default() += 1;
            }
            (outcomes, bad)
        })
    });
    assert_eq!(bad, Some(ToGuest::Failed(Errno::EPROTO)));
    assert_eq!(
        outcomes.get("ok"),
        Some(&1000),
        "outcomes of 1,000 connects: {outcomes:?}"
    );
}

#[test]
fn limits_refuse_with_an_errno() {
    let cfg = format!(
        "[listen]\ndefault_address = \"{}\"\nallowed_ports = [{LISTEN_PORT}, 8081]\n\
         [limits]\nmax_sockets = 3\nmax_listeners = 1\nmax_pending_connects = 1\n",
        addr::HOST
    );
    let Some(rig) = Rig::start("hs-limits", &[&cfg]) else {
        return;
    };
    let sock = rig.sock(0);
    let blackhole = rig.peer_dummy(BLACKHOLE);
    let (pending_refused, listener_refused, port_refused, socket_refused) =
        in_legacy(&rig, move || {
            let listen = |port: u16| {
                ask_fd(
                    &sock,
                    &[ToHost::Listen(ListenRequest {
                        addr: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port),
                        backlog: 4,
                        pass_fd: true,
                        vsock_port: 0,
                        channel: false,
                    })],
                )
            };
            // One connect hangs in the blackhole; a second one at the same time is refused.
            let mut hanging = UnixStream::connect(&sock).unwrap();
            send(
                &mut hanging,
                &connect_req(SocketAddrV4::new(blackhole, 80), false, false),
            );
            std::thread::sleep(Duration::from_millis(300));
            let pending_refused = connect_errno(&sock, SocketAddrV4::new(blackhole, 81));
            // Listeners: one allowed.
            let (_l1, a1, _c1) = listen(LISTEN_PORT);
            assert!(matches!(a1, ToGuest::Listening { .. }), "{a1:?}");
            let (_l2, a2, _c2) = listen(8081);
            // A port off the allow-list.
            let (_l3, a3, _c3) = listen(22);
            // Sockets: the hanging connect and the listener hold two of three. An association
            // lives as long as its packet channel (passed with the answer), so the channel is
            // held: read and dropped, it would end the association and give its slot back.
            let udp = || {
                ask_fd(
                    &sock,
                    &[ToHost::Udp(UdpRequest {
                        bind: "0.0.0.0:0".parse().unwrap(),
                        channel: false,
                    })],
                )
            };
            let (_third, a4, ch4) = udp();
            assert!(matches!(a4, ToGuest::Associated { .. }), "{a4:?}");
            assert!(
                ch4.is_some(),
                "an association comes with its packet channel"
            );
            let (_fourth, a5, _ch5) = udp();
            drop(hanging);
            (pending_refused, a2, a3, a5)
        });
    assert_eq!(pending_refused, Errno::EAGAIN);
    assert_eq!(listener_refused, ToGuest::Failed(Errno::ENOBUFS));
    assert_eq!(port_refused, ToGuest::Failed(Errno::EACCES));
    assert_eq!(socket_refused, ToGuest::Failed(Errno::EMFILE));
}

/// A rig whose host-server has VM `web` (its VMM is root, its own address, one socket at
/// most), with host.sock's path and the echo server's dummy address.
fn one_socket_vm(name: &str) -> Option<(Rig, PathBuf, SocketAddrV4)> {
    let mut rig = Rig::start(name, &[""])?;
    let vm_socket = rig.world.path("vm-web.vsock");
    std::fs::write(
        &rig.host_cfgs[0],
        std::fs::read_to_string(&rig.host_cfgs[0]).unwrap()
            + &format!(
                "[listen]\ndefault_address = \"{}\"\n\
                 [vms.web]\nsocket = \"{}\"\naddress = \"{}\"\nvmm_uid = 0\n\
                 [vms.web.limits]\nmax_sockets = 1\n",
                addr::HOST,
                vm_socket.display(),
                addr::HOST_VMS[0]
            ),
    )
    .unwrap();
    assert!(rig.stop_host(0));
    rig.launch_host(0);
    let sock = rig.sock(0);
    let dest = SocketAddrV4::new(rig.dummy(zone::ECHO), addr::ECHO_PORT);
    Some((rig, sock, dest))
}

/// VM `web`'s hello, as its VMM writes it.
fn web_hello(takes_sockets: bool) -> ToHost {
    ToHost::Hello(VmHello {
        vm: "web".into(),
        cid: 3,
        port: 1024,
        takes_sockets,
    })
}

/// A VMM whose hello says it takes sockets gets its guest's connected IPv6 socket with the
/// answer (which still says `fd_passed: false`: the guest sees a relayed stream), leaving from
/// the VM's own address; the connection's socket permit is held until the VMM closes the
/// stream (its control stream), not when the socket went over. A VMM without the flag is
/// relayed as before.
#[test]
fn a_vmm_that_takes_sockets_gets_the_socket_and_holds_the_permit_until_the_control_closes() {
    let Some((rig, sock, dest)) = one_socket_vm("hs-vmpass") else {
        return;
    };
    let hello = web_hello;
    let (answer, local, echoed, second_while_held, second_after, relayed) = in_legacy(&rig, {
        let sock = sock.clone();
        move || {
            let mut control = UnixStream::connect(&sock).unwrap();
            control
                .set_read_timeout(Some(Duration::from_secs(20)))
                .unwrap();
            send(&mut control, &hello(true));
            send(&mut control, &connect_req(dest, false, false));
            let (answer, fd) = read_frame_with_fd(&mut control);
            let tcp = TcpStream::from(fd.expect("the socket came with the answer"));
            tcp.set_nonblocking(false).unwrap();
            let local = tcp.local_addr().unwrap();
            (&tcp).write_all(b"bridged by the vmm").unwrap();
            let mut echoed = [0u8; 18];
            (&tcp).read_exact(&mut echoed).unwrap();
            // The socket may end while the control stream is open: the permit stays taken.
            drop(tcp);
            let ask_again = || ask(&sock, &[hello(true), connect_req(dest, false, false)]).1;
            let second_while_held = ask_again();
            // The VMM closes the control stream: the permit comes back.
            drop(control);
            let deadline = Instant::now() + Duration::from_secs(5);
            let second_after = loop {
                let a = ask_again();
                if !matches!(a, ToGuest::Failed(Errno::EMFILE)) || Instant::now() > deadline {
                    break a;
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            // A VMM without the flag: no descriptor, the bytes are relayed (once the last
            // connection's control stream, closed above, has given its permit back).
            let deadline = Instant::now() + Duration::from_secs(5);
            let (old, relayed_answer, relayed_fd) = loop {
                let mut old = UnixStream::connect(&sock).unwrap();
                old.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                send(&mut old, &hello(false));
                send(&mut old, &connect_req(dest, false, false));
                let (a, fd) = read_frame_with_fd(&mut old);
                if a != ToGuest::Failed(Errno::EMFILE) || Instant::now() > deadline {
                    break (old, a, fd);
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            assert!(
                relayed_fd.is_none(),
                "a socket passed to a VMM without the flag"
            );
            assert!(
                matches!(relayed_answer, ToGuest::Connected { .. }),
                "{relayed_answer:?}"
            );
            let relayed = echo_through(old, b"through the relay".to_vec());
            (
                answer,
                local,
                echoed,
                second_while_held,
                second_after,
                relayed,
            )
        }
    });
    match answer {
        ToGuest::Connected {
            peer,
            fd_passed,
            in_progress,
            ..
        } => {
            assert_eq!(peer, dest);
            assert!(
                !fd_passed && !in_progress,
                "the guest must see a relayed stream"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        local.ip(),
        std::net::IpAddr::V6(addr::HOST_VMS[0]),
        "leaves from the VM's own address"
    );
    assert_eq!(&echoed, b"bridged by the vmm");
    assert_eq!(
        second_while_held,
        ToGuest::Failed(Errno::EMFILE),
        "the permit was given back before the control stream closed"
    );
    assert!(
        matches!(second_after, ToGuest::Connected { .. }),
        "the permit never came back: {second_after:?}"
    );
    assert_eq!(relayed, b"through the relay");
}

/// A VMM's control stream that says `Ended` (instead of closing) gives the connection's permit
/// back, is answered `Released`, and carries the VM's next connect under its first hello: the
/// VM's limit of one socket admits it, its socket comes the same way, and the stream can end
/// and be used again any number of times. A second hello on it is refused, as on any stream,
/// and a control stream that sends anything but `Ended` is closed (its permit back too).
#[test]
fn a_vmm_control_stream_that_says_ended_carries_the_vms_next_connect() {
    let Some((rig, sock, dest)) = one_socket_vm("hs-vmkeep") else {
        return;
    };
    let hello = web_hello(true);
    let (rounds, second_hello, after_garbage) = in_legacy(&rig, move || {
        let mut control = UnixStream::connect(&sock).unwrap();
        control
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        send(&mut control, &hello);
        let mut rounds = Vec::new();
        for round in 0..3u8 {
            // The first connect after the hello, then each one after the last `Released`:
            // with max_sockets = 1, each is admitted only if `Ended` gave the permit back.
            send(&mut control, &connect_req(dest, false, false));
            let (answer, fd) = read_frame_with_fd(&mut control);
            let tcp = TcpStream::from(fd.expect("the socket came with the answer"));
            tcp.set_nonblocking(false).unwrap();
            let text = [b'k', b'e', b'p', b't', b'0' + round];
            (&tcp).write_all(&text).unwrap();
            let mut echoed = [0u8; 5];
            (&tcp).read_exact(&mut echoed).unwrap();
            drop(tcp);
            send(&mut control, &ToHost::Ended);
            let released = read_frame(&mut control);
            rounds.push((answer, echoed == text, released));
        }
        // A hello again on the kept stream: refused, and the stream closes.
        send(&mut control, &hello);
        let second_hello = read_frame(&mut control);
        // A control stream that sends something other than `Ended`: closed, permit back.
        let mut other = UnixStream::connect(&sock).unwrap();
        other
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        send(&mut other, &hello);
        send(&mut other, &connect_req(dest, false, false));
        let (_, fd) = read_frame_with_fd(&mut other);
        drop(fd.expect("the socket came with the answer"));
        send(&mut other, &connect_req(dest, false, false));
        let mut rest = Vec::new();
        other.read_to_end(&mut rest).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let after_garbage = loop {
            let a = ask(&sock, &[hello.clone(), connect_req(dest, false, false)]).1;
            if !matches!(a, ToGuest::Failed(Errno::EMFILE)) || Instant::now() > deadline {
                break (rest, a);
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        (rounds, second_hello, after_garbage)
    });
    assert_eq!(rounds.len(), 3);
    for (i, (answer, echoed, released)) in rounds.into_iter().enumerate() {
        assert!(
            matches!(
                answer,
                ToGuest::Connected {
                    fd_passed: false,
                    ..
                }
            ),
            "round {i}: {answer:?}"
        );
        assert!(echoed, "round {i}: the passed socket did not echo");
        assert_eq!(released, Some(ToGuest::Released), "round {i}");
    }
    assert_eq!(
        second_hello,
        Some(ToGuest::Failed(Errno::EPROTO)),
        "a second hello on a kept stream"
    );
    let (rest, after) = after_garbage;
    assert!(
        rest.is_empty(),
        "a control stream that sent a request instead of Ended got an answer: {rest:?}"
    );
    assert!(
        matches!(after, ToGuest::Connected { .. }),
        "the closed control stream's permit never came back: {after:?}"
    );
}

/// A VM listener whose listen stream said its VMM takes sockets: each accepted IPv6 connection
/// reaches the VM's socket as the `Inbound` frame with the accepted socket attached, and holds
/// its socket permit until the VMM closes that stream (its control stream).
#[test]
fn a_vm_listener_hands_accepted_sockets_to_a_vmm_that_takes_them() {
    let Some(mut rig) = Rig::start("hs-vmpass-in", &[""]) else {
        return;
    };
    let vm_socket = rig.world.path("vm-web.vsock");
    std::fs::write(
        &rig.host_cfgs[0],
        std::fs::read_to_string(&rig.host_cfgs[0]).unwrap()
            + &format!(
                "[listen]\ndefault_address = \"{}\"\nallowed_ports = [{LISTEN_PORT}]\n\
                 [vms.web]\nsocket = \"{}\"\naddress = \"{}\"\nvmm_uid = 0\n\
                 [vms.web.limits]\nmax_sockets = 2\n",
                addr::HOST,
                vm_socket.display(),
                addr::HOST_VMS[0]
            ),
    )
    .unwrap();
    assert!(rig.stop_host(0));
    rig.launch_host(0);
    let sock = rig.sock(0);
    let vm_listener = std::os::unix::net::UnixListener::bind(&vm_socket).unwrap();
    // The listener holds one of the VM's two socket permits.
    let (_listen, answer) = in_legacy(&rig, move || {
        ask(
            &sock,
            &[
                ToHost::Hello(VmHello {
                    vm: "web".into(),
                    cid: 3,
                    port: 1024,
                    takes_sockets: true,
                }),
                ToHost::Listen(ListenRequest {
                    addr: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, LISTEN_PORT),
                    backlog: 16,
                    pass_fd: false,
                    vsock_port: 5000,
                    channel: false,
                }),
            ],
        )
    });
    assert!(matches!(answer, ToGuest::Listening { .. }), "{answer:?}");
    let dial = |rig: &Rig, text: &'static [u8]| {
        rig.world
            .world()
            .run(move || {
                let mut t = TcpStream::connect_timeout(
                    &SocketAddr::new(addr::HOST_VMS[0].into(), LISTEN_PORT),
                    Duration::from_secs(5),
                )
                .unwrap();
                t.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                t.write_all(text).unwrap();
                t
            })
            .unwrap()
    };
    // The fake VMM: the hybrid handshake, then the frame with the socket.
    let take = |l: &std::os::unix::net::UnixListener| {
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while line.last() != Some(&b'\n') {
            s.read_exact(&mut b).unwrap();
            line.push(b[0]);
        }
        assert_eq!(line, b"CONNECT 5000\n");
        s.write_all(b"OK 1073741824\n").unwrap();
        let (frame, fd) = read_frame_with_fd(&mut s);
        (s, frame, fd)
    };
    let mut client = dial(&rig, b"to a vmm");
    let (control, inbound, fd) = take(&vm_listener);
    assert!(
        matches!(inbound, ToGuest::Inbound { local, .. } if local.port() == LISTEN_PORT),
        "{inbound:?}"
    );
    let mut accepted = TcpStream::from(fd.expect("the accepted socket came with the frame"));
    accepted.set_nonblocking(false).unwrap();
    accepted
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = [0u8; 8];
    accepted.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"to a vmm");
    accepted.write_all(b"answered").unwrap();
    let mut back = [0u8; 8];
    client.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"answered");
    drop((accepted, client));
    // Both permits are taken while the control stream is open: the next connection is dropped
    // without reaching the VM's socket.
    vm_listener.set_nonblocking(true).unwrap();
    let mut refused = dial(&rig, b"x");
    let mut rest = Vec::new();
    let _ = refused.read_to_end(&mut rest);
    assert!(rest.is_empty());
    assert!(
        vm_listener.accept().is_err(),
        "delivered although the permit was held"
    );
    vm_listener.set_nonblocking(false).unwrap();
    // The VMM closes the control stream: the permit comes back.
    drop(control);
    std::thread::sleep(Duration::from_millis(300));
    let _again = dial(&rig, b"again");
    let (_c2, inbound, fd) = take(&vm_listener);
    assert!(matches!(inbound, ToGuest::Inbound { .. }), "{inbound:?}");
    assert!(fd.is_some());
}

/// Sends `msg`, a request whose requester made the channel, with `fd` attached to the frame
/// (SCM_RIGHTS); returns the stream and the answer (which carries no descriptor).
fn with_channel(
    sock: &Path,
    msg: &ToHost,
    fd: Option<std::os::fd::RawFd>,
) -> (UnixStream, ToGuest) {
    let mut s = UnixStream::connect(sock).expect("connect host.sock");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let bytes = frame::to_vec(msg).unwrap();
    match fd {
        Some(fd) => {
            let n = outsock_fdpass::sendmsg_fd::<outsock_fdpass::Libc>(
                s.as_raw_fd(),
                &bytes,
                fd,
                libc::MSG_NOSIGNAL,
            )
            .unwrap();
            s.write_all(&bytes[n..]).unwrap();
        }
        None => s.write_all(&bytes).unwrap(),
    }
    let (answer, passed) = read_frame_with_fd(&mut s);
    assert!(passed.is_none(), "a descriptor came with {answer:?}");
    (s, answer)
}

/// A process-mode `Listen` on [`LISTEN_PORT`] with the requester's channel; see
/// [`with_channel`].
fn listen_with_channel(sock: &Path, fd: Option<std::os::fd::RawFd>) -> (UnixStream, ToGuest) {
    let req = ToHost::Listen(ListenRequest {
        addr: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, LISTEN_PORT),
        backlog: 16,
        pass_fd: true,
        vsock_port: 0,
        channel: true,
    });
    with_channel(sock, &req, fd)
}

/// Whether `s` reads its end (EOF) within `limit`.
fn ends_within(s: &mut UnixStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut b = [0u8; 1];
    matches!(s.read(&mut b), Ok(0))
}

/// The requester's own channel (`ListenRequest::channel`): host-server takes the attached end
/// instead of making a pair and keeps the request's stream open while the listener lives; the
/// same channel again is answered `Listening` with nothing new opened (its stream held too);
/// anything but a packet channel, or none, is EINVAL; when the program's end closes, the
/// listener ends and every held stream ends with it, and the same port listens again for a new
/// channel.
#[test]
fn a_requesters_channel_is_taken_registered_again_and_held_while_the_listener_lives() {
    let cfg = format!(
        "[listen]\ndefault_address = \"{}\"\nallowed_ports = [{LISTEN_PORT}]\n",
        addr::HOST
    );
    let Some(rig) = Rig::start("hs-channel", &[&cfg, "metrics_listen = \"\""]) else {
        return;
    };
    let psock = rig.sock(0);
    let (mut first, again, mut second, refused, none, a, b) = in_legacy(&rig, {
        let psock = psock.clone();
        move || {
            let (a, b) =
                socket2::Socket::pair(socket2::Domain::UNIX, socket2::Type::SEQPACKET, None)
                    .unwrap();
            let (first, answer) = listen_with_channel(&psock, Some(b.as_raw_fd()));
            assert_eq!(
                answer,
                ToGuest::Listening {
                    local: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, LISTEN_PORT)
                }
            );
            let (second, again) = listen_with_channel(&psock, Some(b.as_raw_fd()));
            let (s, _t) = UnixStream::pair().unwrap();
            let refused = listen_with_channel(&psock, Some(s.as_raw_fd())).1;
            let none = listen_with_channel(&psock, None).1;
            (first, again, second, refused, none, a, b)
        }
    });
    assert_eq!(
        again,
        ToGuest::Listening {
            local: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, LISTEN_PORT)
        }
    );
    assert_eq!(refused, ToGuest::Failed(Errno::EINVAL));
    assert_eq!(none, ToGuest::Failed(Errno::EINVAL));
    // Both requests' streams stay open while the listener lives.
    assert!(!ends_within(&mut first, Duration::from_millis(300)));
    assert!(!ends_within(&mut second, Duration::from_millis(10)));
    // One listener, delivering on the requester's channel.
    let connect = || {
        rig.world
            .world()
            .run(|| {
                TcpStream::connect_timeout(
                    &SocketAddr::new(addr::HOST.into(), LISTEN_PORT),
                    Duration::from_secs(5),
                )
                .map(|mut t| {
                    t.write_all(b"over the channel").unwrap();
                    t
                })
            })
            .unwrap()
    };
    let client = connect().unwrap();
    let a = std::os::fd::OwnedFd::from(a);
    let (inbound, fd) = read_packet(&a);
    assert!(
        matches!(inbound, ToGuest::Inbound { local, .. } if local.port() == LISTEN_PORT),
        "{inbound:?}"
    );
    let mut accepted = TcpStream::from(fd.expect("accepted socket attached"));
    let mut got = [0u8; 16];
    accepted.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"over the channel");
    drop((accepted, client));
    // The program's end closes (our copy of host-server's end does not keep it alive): the
    // listener ends, and both held streams end with it.
    drop(a);
    assert!(ends_within(&mut first, Duration::from_secs(5)));
    assert!(ends_within(&mut second, Duration::from_secs(5)));
    drop(b);
    let deadline = Instant::now() + Duration::from_secs(5);
    while connect().is_ok() {
        assert!(
            Instant::now() < deadline,
            "the listener outlived its channel"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The port is free for a new channel.
    let answer = in_legacy(&rig, move || {
        let (_a, b) =
            socket2::Socket::pair(socket2::Domain::UNIX, socket2::Type::SEQPACKET, None).unwrap();
        listen_with_channel(&psock, Some(b.as_raw_fd())).1
    });
    assert!(matches!(answer, ToGuest::Listening { .. }), "{answer:?}");
}

/// A UDP server's own channel (`UdpRequest::channel`), as for a listener: host-server takes
/// the attached end, answers `Associated` without a descriptor and holds the request's stream
/// while the association lives; the same channel again is answered `Associated` with nothing
/// new opened; a channel for port 0, another kind of socket, a listener's channel or none is
/// EINVAL; datagrams go both ways on the requester's channel; when the program's end closes,
/// the association ends and every held stream with it.
#[test]
fn a_udp_servers_channel_is_taken_registered_again_and_held_while_the_association_lives() {
    const PORT: u16 = 5399;
    let cfg = format!(
        "[listen]\ndefault_address = \"{}\"\nallowed_ports = [{PORT}, {LISTEN_PORT}]\n",
        addr::HOST
    );
    let Some(rig) = Rig::start("hs-udpchan", &[&cfg, "metrics_listen = \"\""]) else {
        return;
    };
    let psock = rig.sock(0);
    let udp = |port: u16| {
        ToHost::Udp(UdpRequest {
            bind: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port),
            channel: true,
        })
    };
    let (mut first, again, mut second, refused, a) = in_legacy(&rig, {
        let psock = psock.clone();
        move || {
            let (a, b) =
                socket2::Socket::pair(socket2::Domain::UNIX, socket2::Type::SEQPACKET, None)
                    .unwrap();
            let (first, answer) = with_channel(&psock, &udp(PORT), Some(b.as_raw_fd()));
            assert_eq!(
                answer,
                ToGuest::Associated {
                    local: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, PORT)
                }
            );
            let (second, again) = with_channel(&psock, &udp(PORT), Some(b.as_raw_fd()));
            let (s, _t) = UnixStream::pair().unwrap();
            let (l, _m) =
                socket2::Socket::pair(socket2::Domain::UNIX, socket2::Type::SEQPACKET, None)
                    .unwrap();
            let (_listening, answer) = listen_with_channel(&psock, Some(l.as_raw_fd()));
            assert!(matches!(answer, ToGuest::Listening { .. }), "{answer:?}");
            let refused = [
                with_channel(&psock, &udp(0), Some(b.as_raw_fd())).1,
                with_channel(&psock, &udp(PORT), Some(s.as_raw_fd())).1,
                with_channel(&psock, &udp(PORT), Some(l.as_raw_fd())).1,
                with_channel(&psock, &udp(PORT), None).1,
            ];
            drop(b);
            (first, again, second, refused, a)
        }
    });
    assert_eq!(
        again,
        ToGuest::Associated {
            local: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, PORT)
        }
    );
    assert_eq!(refused, [const { ToGuest::Failed(Errno::EINVAL) }; 4]);
    // Both requests' streams stay open while the association lives.
    assert!(!ends_within(&mut first, Duration::from_millis(300)));
    assert!(!ends_within(&mut second, Duration::from_millis(10)));
    // A world client's datagram arrives on the requester's channel, and the answer sent there
    // reaches the client.
    let a = std::os::fd::OwnedFd::from(a);
    let client = rig
        .world
        .world()
        .run(|| {
            let c = std::net::UdpSocket::bind(SocketAddr::new(addr::CLIENT.into(), 0)).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            c.send_to(b"to the server", SocketAddr::new(addr::HOST.into(), PORT))
                .unwrap();
            c
        })
        .unwrap();
    let (got, _) = read_packet(&a);
    let ToGuest::Datagram(d) = got else {
        panic!("{got:?}");
    };
    assert_eq!(d.payload, b"to the server");
    let reply = frame::to_vec(&ToHost::Datagram(Datagram {
        addr: d.addr,
        payload: b"from the server".to_vec(),
    }))
    .unwrap();
    // SAFETY: one packet from a valid buffer on our own socket.
    let n = unsafe { libc::send(a.as_raw_fd(), reply.as_ptr().cast(), reply.len(), 0) };
    assert_eq!(usize::try_from(n).unwrap(), reply.len());
    let answer = rig
        .world
        .world()
        .run(move || {
            let mut buf = [0u8; 64];
            let (n, _) = client.recv_from(&mut buf).unwrap();
            buf[..n].to_vec()
        })
        .unwrap();
    assert_eq!(answer, b"from the server");
    // The program's end closes: the association ends, and both held streams with it.
    drop(a);
    assert!(ends_within(&mut first, Duration::from_secs(5)));
    assert!(ends_within(&mut second, Duration::from_secs(5)));
}
