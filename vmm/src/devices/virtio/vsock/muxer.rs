//! The vsock muxer: routes guest packets to connections, creates connections in both
//! directions, and decides which connection gets the next guest RX buffer.
//!
//! It owns an epoll instance (nested in the event loop's) that watches the VM's own Unix
//! socket, the host streams of every connection, handshakes in progress and a timer for
//! deadlines. Connections are keyed by (host-side port, guest port). The RX work queue holds
//! keys of connections with something to tell the guest, served round-robin so that one busy
//! stream cannot starve the others; RSTs for packets that match no connection wait in a small
//! bounded queue of their own.
//!
//! With [`MuxerConfig::take_sockets`], each hello tells host-server that this VMM takes the
//! sockets of guest connections: a connection whose answer brings one is bridged straight to it
//! (see [`super::connection`]), and its host.sock stream stays open, unwatched, until the
//! connection ends. Then the stream is not closed but kept: `Ended` goes out on it, and once
//! host-server's `Released` is in (read when the stream is next wanted, never waited for), the
//! next guest connect to the same port goes out on it, with no new stream, accept or hello —
//! the set-up a short connection otherwise pays twice (here and in host-server). At most
//! [`MAX_IDLE_STREAMS`] are kept, each for [`IDLE_STREAM_FOR`] (host-server closes an idle
//! one only after its request timeout); one that host-server closed, or has not released yet,
//! is passed over for a new stream.
//!
//! The muxer never blocks on host-server. Its connect to host.sock is non-blocking: when
//! host-server's listen backlog is full (it is stopped, restarting or overloaded) a Unix
//! stream connect answers EAGAIN, and the guest connection waits in a bounded set of pending
//! connects, retried on a timer of its own with a growing back-off, until the connect succeeds
//! (then RESPONSE, and the hello goes out first as always) or [`CONNECT_TIMEOUT`] passes (RST,
//! as when host-server is down). Every event's work is bounded: at most
//! [`ACCEPTS_PER_EVENT`] accepts on the VM's socket and [`RETRIES_PER_TICK`] connect attempts
//! per wake-up (what is left stays readable or due, and the event loop comes back after its
//! other subscribers: the console, other guests' connections).
//!
//! **Guest listeners and UDP servers outlive host-server.** A *companion* (a guest→host stream
//! whose first frame was a `Listen` that host-server answered `Listening`, or a UDP server's
//! `Udp` bound to a port of its own answered `Associated`; host-server holds the stream while
//! the listener or association lives, see [`super::connection`]) whose host side ends
//! (EOF, ECONNRESET, EPIPE: host-server crashed, restarted, was upgraded) while the guest holds
//! its end is not reset: the guest is told nothing, and this muxer connects to host.sock again
//! with the same non-blocking `dial`, waiting [`REGISTER_FIRST_RETRY`] before the first try and
//! doubling up to [`REGISTER_LAST_RETRY`] after each failed one, for as long as the guest keeps
//! the companion open. The tries come from a one-shot timer of their own, set for the earliest
//! one: while host-server is away the event loop wakes once per try, never on a period, and a
//! try never blocks (a full backlog keeps the socket for the next). Once connected, the VMM's
//! hello and the guest's request frame, byte for byte, go out again, and the connection reads
//! host-server's answer itself (the guest had its answer long ago): `Listening` (`Associated`
//! on the same port) and the companion is live again; `Failed(errno)` (the port taken, no
//! longer allowed) or anything else and a listener's companion is reset as it was before this
//! existed, so the guest's vsock listener stays quiet, while a UDP server's guest is given one
//! `Failed(ENETDOWN)` frame and its stream then stays open and quiet (see
//! [`super::connection`]). Either outcome is counted (metrics
//! `outsock_vmm_reregistrations_total{kind,outcome}`) and logged in one line naming the
//! address, rate limited (the first ten, then every power of two). A guest that closes the
//! companion (RST, SHUTDOWN) while a re-registration is pending cancels it. A host side that
//! ends again soon (within [`REGISTER_LAST_RETRY`] of being registered) keeps the longer wait.
//!
//! Who may `CONNECT` on the VM's socket is decided by the kernel's SO_PEERCRED of each peer,
//! against [`MuxerConfig::peer_uids`] (host-server's uid, root, the VMM's own): any other peer's
//! stream is closed at once, without reading its line and without an `OK` (the hybrid-vsock
//! refusal), and counted ([`Muxer::refused_peers`]). The socket file itself is mode 0660, so
//! only the VMM's user and group can connect to it at all; no process reaches a guest's vsock
//! listeners past host-server's `allowed_ports`.

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use shared_proto::outsource::{ToGuest, ToHost, VmHello};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::timerfd::TimerFd;

use vm_memory::bitmap::BitmapSlice;
use vm_memory::VolatileSlice;

use super::connection::{Connection, Kept, Reregistered, RxBuf, State, TIMEOUT};
pub use super::connection::{REGISTER_FIRST_RETRY, REGISTER_LAST_RETRY};
use super::defs::HOST_CID;
use super::packet::{op, Header, TYPE_STREAM};
use crate::metrics::{Metrics, METRICS};

/// Connections at once (Firecracker's limit); further requests get RST.
pub const MAX_CONNECTIONS: usize = 1023;
/// Connections that may have [`BULK_WINDOW`](super::connection::BULK_WINDOW) at once: what a
/// guest can make this VMM buffer stays within `MAX_CONNECTIONS × TX_BUF_SIZE` + this ×
/// (`BULK_WINDOW` − `TX_BUF_SIZE`), 256 MiB + 48 MiB, against 1 GiB if every connection could
/// have it.
pub const BULK_WINDOWS: usize = 64;
/// Host connections still sending their `CONNECT` line.
pub const MAX_HANDSHAKES: usize = 64;
/// RSTs for unroutable packets waiting for RX buffers; more are dropped.
pub const MAX_ORPHAN_RSTS: usize = 256;
/// Guest connects waiting for room in host-server's listen backlog; more get RST at once.
pub const MAX_CONNECTING: usize = 256;
/// How long a guest connect may wait for host-server's backlog before the guest gets RST (the
/// guest kernel's own connect timeout is 2 s too).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Accepts on the VM's socket per wake-up; more wait for the next (the socket stays readable).
pub const ACCEPTS_PER_EVENT: usize = 64;
/// Connect attempts per retry tick; the rest are tried at the next tick.
pub const RETRIES_PER_TICK: usize = 64;
/// The retry timer's period, and the first and longest wait between two connect attempts.
const RETRY_TICK: Duration = Duration::from_millis(5);
const RETRY_FIRST: Duration = Duration::from_millis(5);
const RETRY_MAX: Duration = Duration::from_millis(160);
/// host.sock streams kept from ended guest connections, at most (as many guest connects may
/// start at once without a new stream each).
pub const MAX_IDLE_STREAMS: usize = 32;
/// How long an ended connection's host.sock stream is kept for the next guest connect: well
/// within host-server's request timeout (seconds), after which it closes an idle kept stream.
pub const IDLE_STREAM_FOR: Duration = Duration::from_secs(1);
/// Kept streams looked at per guest connect: the oldest first; one whose `Released` is not in
/// yet is left for the next connect.
const IDLE_CHECKS: usize = 2;
/// Host-side ports of host-initiated connections: [2^30, 2^31), as Firecracker.
const LOCAL_PORT_FIRST: u32 = 1 << 30;
const LOCAL_PORT_LAST: u32 = (1 << 31) - 1;

/// What the muxer needs to know.
#[derive(Debug, Clone)]
pub struct MuxerConfig {
    /// The VM's name, sent in every hello.
    pub vm: String,
    /// The guest's CID.
    pub cid: u64,
    /// host-server's socket: where guest connections to CID 2 go.
    pub host_socket: PathBuf,
    /// The VM's own socket, where host processes `CONNECT` to guest ports.
    pub listen_socket: Option<PathBuf>,
    /// The uids (SO_PEERCRED) that may connect to `listen_socket`; every other peer is refused.
    pub peer_uids: Vec<u32>,
    /// Tell host-server (in each hello) that this VMM takes the sockets of guest connections,
    /// and bridge a connection to the socket when one comes (see `connection`'s docs).
    pub take_sockets: bool,
}

/// The VM socket's permission bits: the VMM's user and group (host-server's, in the shipped
/// units), nobody else.
pub const LISTEN_SOCKET_MODE: u32 = 0o660;

#[derive(Debug, thiserror::Error)]
pub enum MuxerError {
    #[error("cannot create the vsock backend's epoll or timer")]
    Setup(#[source] std::io::Error),
    #[error("cannot listen on {}", path.display())]
    Listen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

type Key = (u32, u32);

#[derive(Debug)]
struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
    deadline: Instant,
}

/// A guest connect that host-server's full backlog refused (EAGAIN): the socket, tried again
/// from the retry timer.
#[derive(Debug)]
struct Connecting {
    fd: OwnedFd,
    /// The guest's REQUEST (or its latest credit update): answered with RST when it fails.
    request: Header,
    hello: Vec<u8>,
    deadline: Instant,
    next_try: Instant,
    backoff: Duration,
}

/// A guest listener's companion whose host side ended: host.sock is connected again from the
/// redial timer, with back-off, for as long as the guest keeps the companion open.
#[derive(Debug)]
struct Redial {
    /// A connect that found host-server's backlog full, tried again on the same socket.
    fd: Option<OwnedFd>,
    next_try: Instant,
    backoff: Duration,
}

/// The host.sock stream of a guest connection that ended after its socket went to this VMM:
/// `Ended` was sent on it, and once host-server's `Released` is in, it carries the next guest
/// connect to `port` (its hello named that port), with no new stream, accept or hello.
#[derive(Debug)]
struct IdleStream {
    stream: UnixStream,
    port: u32,
    since: Instant,
}

/// Whether a kept stream may carry a request now.
#[derive(Debug, PartialEq, Eq)]
enum IdleState {
    /// `Released` is in (and read), and nothing follows it: host-server waits for a request.
    Ready,
    /// Nothing yet: host-server has not answered `Ended` (or is an older one that never will).
    NotYet,
    /// Closed, broken, or something other than `Released` came: closed.
    Gone,
}

/// Reads host-server's `Released` (exactly `released`, the frame's bytes) from a kept stream
/// without blocking, and checks that the stream has not ended behind it.
fn idle_state(stream: &UnixStream, released: &[u8]) -> IdleState {
    use rustix::io::Errno;
    use rustix::net::RecvFlags;
    let mut buf = [0u8; 64];
    let want = released.len().min(buf.len() - 1);
    // At most one byte past the frame: anything there is not ours to read.
    match rustix::net::recv(stream, &mut buf[..=want], RecvFlags::DONTWAIT) {
        Ok((n, _)) if n == want && buf[..n] == *released => {}
        Err(Errno::AGAIN) => return IdleState::NotYet,
        _ => return IdleState::Gone,
    }
    // host-server may have closed it after answering (its request timeout): EOF follows.
    let mut probe = [0u8; 1];
    match rustix::net::recv(stream, &mut probe, RecvFlags::DONTWAIT | RecvFlags::PEEK) {
        Err(Errno::AGAIN) => IdleState::Ready,
        _ => IdleState::Gone,
    }
}

/// How one connect attempt to host.sock went.
enum Dial {
    Connected(UnixStream),
    /// host-server's backlog is full (EAGAIN), or the connect is in progress.
    Pending(OwnedFd),
    Failed,
}

/// One non-blocking connect of `fd` (a fresh socket when `None`) to `path`.
fn dial(path: &std::path::Path, fd: Option<OwnedFd>) -> Dial {
    use rustix::io::Errno;
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let fd = match fd {
        Some(fd) => fd,
        None => match rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
            None,
        ) {
            Ok(fd) => fd,
            Err(_) => return Dial::Failed,
        },
    };
    let Ok(addr) = SocketAddrUnix::new(path) else {
        return Dial::Failed;
    };
    loop {
        return match rustix::net::connect(&fd, &addr) {
            // EISCONN: an earlier attempt that was in progress completed.
            Ok(()) | Err(Errno::ISCONN) => Dial::Connected(UnixStream::from(fd)),
            Err(Errno::INTR) => continue,
            Err(Errno::AGAIN | Errno::INPROGRESS | Errno::ALREADY) => Dial::Pending(fd),
            Err(_) => Dial::Failed,
        };
    }
}

/// See the module documentation.
#[derive(Debug)]
pub struct Muxer {
    cfg: MuxerConfig,
    epoll: Epoll,
    listener: Option<UnixListener>,
    timer: TimerFd,
    timer_armed: bool,
    conns: HashMap<Key, Connection>,
    by_fd: HashMap<RawFd, Key>,
    handshakes: HashMap<RawFd, Handshake>,
    connecting: HashMap<Key, Connecting>,
    retry_timer: TimerFd,
    retry_armed: bool,
    redials: HashMap<Key, Redial>,
    /// One-shot, at the earliest redial's time.
    redial_timer: TimerFd,
    reregistered: u64,
    refused_again: u64,
    rxq: VecDeque<Key>,
    orphan_rsts: VecDeque<Header>,
    next_port: u32,
    refused_peers: u64,
    passed_sockets: u64,
    refused_sockets: u64,
    /// Streams of ended guest connections, oldest first, for the next guest connects.
    idle: VecDeque<IdleStream>,
    /// `ToHost::Ended` and `ToGuest::Released`, encoded.
    ended: Vec<u8>,
    released: Vec<u8>,
    reused_streams: u64,
}

impl Muxer {
    /// Creates the muxer and, if configured, binds the VM's socket (replacing a stale file).
    ///
    /// # Errors
    /// [`MuxerError`] when the epoll, timer or listener cannot be set up.
    pub fn new(cfg: MuxerConfig) -> Result<Self, MuxerError> {
        let epoll = Epoll::new().map_err(MuxerError::Setup)?;
        let timer = TimerFd::new()
            .map_err(|e| MuxerError::Setup(std::io::Error::from_raw_os_error(e.errno())))?;
        epoll
            .ctl(
                ControlOperation::Add,
                timer.as_raw_fd(),
                EpollEvent::new(EventSet::IN, timer.as_raw_fd() as u64),
            )
            .map_err(MuxerError::Setup)?;
        let retry_timer = TimerFd::new()
            .map_err(|e| MuxerError::Setup(std::io::Error::from_raw_os_error(e.errno())))?;
        epoll
            .ctl(
                ControlOperation::Add,
                retry_timer.as_raw_fd(),
                EpollEvent::new(EventSet::IN, retry_timer.as_raw_fd() as u64),
            )
            .map_err(MuxerError::Setup)?;
        let redial_timer = TimerFd::new()
            .map_err(|e| MuxerError::Setup(std::io::Error::from_raw_os_error(e.errno())))?;
        epoll
            .ctl(
                ControlOperation::Add,
                redial_timer.as_raw_fd(),
                EpollEvent::new(EventSet::IN, redial_timer.as_raw_fd() as u64),
            )
            .map_err(MuxerError::Setup)?;
        let listener = match &cfg.listen_socket {
            Some(path) => {
                let _ = std::fs::remove_file(path);
                let listen_error = |source| MuxerError::Listen {
                    path: path.clone(),
                    source,
                };
                let l = UnixListener::bind(path).map_err(listen_error)?;
                {
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(
                        path,
                        std::fs::Permissions::from_mode(LISTEN_SOCKET_MODE),
                    )
                    .map_err(listen_error)?;
                }
                l.set_nonblocking(true).map_err(MuxerError::Setup)?;
                epoll
                    .ctl(
                        ControlOperation::Add,
                        l.as_raw_fd(),
                        EpollEvent::new(EventSet::IN, l.as_raw_fd() as u64),
                    )
                    .map_err(MuxerError::Setup)?;
                Some(l)
            }
            None => None,
        };
        Ok(Self {
            cfg,
            epoll,
            listener,
            timer,
            timer_armed: false,
            conns: HashMap::new(),
            by_fd: HashMap::new(),
            handshakes: HashMap::new(),
            connecting: HashMap::new(),
            retry_timer,
            retry_armed: false,
            redials: HashMap::new(),
            redial_timer,
            reregistered: 0,
            refused_again: 0,
            rxq: VecDeque::new(),
            orphan_rsts: VecDeque::new(),
            next_port: LOCAL_PORT_FIRST,
            refused_peers: 0,
            passed_sockets: 0,
            refused_sockets: 0,
            idle: VecDeque::new(),
            ended: shared_proto::to_vec(&ToHost::Ended)
                .map_err(|e| MuxerError::Setup(std::io::Error::other(e.to_string())))?,
            released: shared_proto::to_vec(&ToGuest::Released)
                .map_err(|e| MuxerError::Setup(std::io::Error::other(e.to_string())))?,
            reused_streams: 0,
        })
    }

    /// Peers refused on the VM's socket because of their SO_PEERCRED uid.
    pub fn refused_peers(&self) -> u64 {
        self.refused_peers
    }

    /// Guest connections bridged to a socket host-server passed.
    pub fn passed_sockets(&self) -> u64 {
        self.passed_sockets
    }

    /// Guest connects that went to host-server on a kept stream.
    pub fn reused_streams(&self) -> u64 {
        self.reused_streams
    }

    /// host.sock streams kept for the next guest connects now.
    pub fn idle_streams(&self) -> usize {
        self.idle.len()
    }

    /// Descriptors host-server attached that were refused (their connections reset).
    pub fn refused_sockets(&self) -> u64 {
        self.refused_sockets
    }

    /// Guest listeners' companions whose host side is being connected again (waiting for the
    /// redial timer or for host-server's backlog).
    pub fn redial_count(&self) -> usize {
        self.redials.len()
    }

    /// Guest listeners registered with host-server again, and those it refused then.
    pub fn reregistrations(&self) -> (u64, u64) {
        (self.reregistered, self.refused_again)
    }

    /// Whether the peer of `stream` may `CONNECT`: its uid is in `peer_uids`.
    fn admits(&self, stream: &UnixStream) -> Option<u32> {
        let uid = rustix::net::sockopt::socket_peercred(stream)
            .ok()?
            .uid
            .as_raw();
        self.cfg.peer_uids.contains(&uid).then_some(uid)
    }

    /// The epoll fd to watch from the event loop: readable when a backend event is waiting.
    pub fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Guest connects waiting for room in host-server's listen backlog.
    pub fn connecting_count(&self) -> usize {
        self.connecting.len()
    }

    /// The connection between host port `local` and guest port `peer`, if any.
    pub fn connection(&self, local: u32, peer: u32) -> Option<&Connection> {
        self.conns.get(&(local, peer))
    }

    /// Whether a packet for the guest is (probably) waiting.
    pub fn has_pending_rx(&self) -> bool {
        !self.orphan_rsts.is_empty() || !self.rxq.is_empty()
    }

    /// Drops every connection (the driver reset the device).
    pub fn reset(&mut self) {
        for (_, c) in self.conns.drain() {
            if c.registered.is_some() {
                let _ = self.epoll.ctl(
                    ControlOperation::Delete,
                    c.stream().as_raw_fd(),
                    EpollEvent::default(),
                );
            }
        }
        for (fd, _) in self.handshakes.drain() {
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
        }
        // The timers are left as they are: this runs on a vCPU thread (the driver's MMIO write),
        // whose seccomp filter allows no timerfd call (a `timerfd_settime` here ended the VMM
        // with SIGSYS in the lab when a guest powered off). An armed one fires on the event
        // thread, finds nothing due and disarms itself there.
        self.connecting.clear();
        self.redials.clear();
        self.idle.clear();
        self.by_fd.clear();
        self.rxq.clear();
        self.orphan_rsts.clear();
    }

    fn orphan_rst(&mut self, hdr: &Header) {
        if self.orphan_rsts.len() < MAX_ORPHAN_RSTS {
            self.orphan_rsts.push_back(hdr.reply(op::RST));
        }
    }

    /// A packet the guest sent (TX queue).
    pub fn send_pkt(&mut self, hdr: &Header, data: &[u8]) {
        // Packets not from this guest to the host are dropped: a guest cannot speak as
        // another CID, and there is nobody else to talk to.
        if hdr.src_cid != self.cfg.cid || hdr.dst_cid != HOST_CID {
            return;
        }
        if hdr.type_ != TYPE_STREAM {
            if hdr.op != op::RST {
                self.orphan_rst(hdr);
            }
            return;
        }
        let key = (hdr.dst_port, hdr.src_port);
        if let Some(conn) = self.conns.get_mut(&key) {
            conn.send_pkt(hdr, data);
            self.update(key);
            return;
        }
        if let Some(c) = self.connecting.get_mut(&key) {
            match hdr.op {
                // The guest's credit, kept for the connection.
                op::REQUEST | op::CREDIT_UPDATE => c.request = *hdr,
                op::RST => {
                    self.connecting.remove(&key);
                }
                // Nothing else is valid before RESPONSE (Connection resets it too).
                _ => {
                    self.connecting.remove(&key);
                    self.orphan_rst(hdr);
                }
            }
            return;
        }
        match hdr.op {
            op::REQUEST => self.guest_connect(hdr),
            op::RST => {}
            _ => self.orphan_rst(hdr),
        }
    }

    /// Guest RW packets of one connection whose payloads are still in guest memory (a run in
    /// ring order; `hdr`: the last one's header): written straight to the connection's stream
    /// with one write when they can be (see [`Connection::send_direct`]). Returns false, having
    /// done nothing, when the caller must copy them out and use [`Self::send_pkt`].
    pub fn send_direct<B: BitmapSlice>(
        &mut self,
        hdr: &Header,
        data: &[VolatileSlice<'_, B>],
    ) -> bool {
        if hdr.src_cid != self.cfg.cid || hdr.dst_cid != HOST_CID || hdr.type_ != TYPE_STREAM {
            return false;
        }
        let key = (hdr.dst_port, hdr.src_port);
        let Some(conn) = self.conns.get_mut(&key) else {
            return false;
        };
        if !conn.send_direct(hdr, data) {
            return false;
        }
        self.update(key);
        true
    }

    /// The hello that opens every host.sock stream for guest port connections to `port`.
    fn hello(&self, port: u32) -> Option<Vec<u8>> {
        shared_proto::to_vec(&ToHost::Hello(VmHello {
            vm: self.cfg.vm.clone(),
            cid: self.cfg.cid as u32,
            port,
            takes_sockets: self.cfg.take_sockets,
        }))
        .ok()
    }

    /// A guest connection to CID 2 port P: a kept stream to host-server whose hello named P,
    /// or a new stream, the hello first.
    fn guest_connect(&mut self, hdr: &Header) {
        if self.conns.len() + self.connecting.len() >= MAX_CONNECTIONS {
            return self.orphan_rst(hdr);
        }
        let key = (hdr.dst_port, hdr.src_port);
        if let Some(stream) = self.take_idle(hdr.dst_port, Instant::now()) {
            self.reused_streams += 1;
            Metrics::add(&METRICS.kept_streams_reused, 1);
            return self.connected(key, stream, hdr, Vec::new());
        }
        let Some(port_hello) = self.hello(hdr.dst_port) else {
            return self.orphan_rst(hdr);
        };
        // Non-blocking: a full backlog (host-server stopped or slow) must not stop the event
        // loop, which also serves the console and every other connection.
        match dial(&self.cfg.host_socket, None) {
            Dial::Connected(stream) => self.connected(key, stream, hdr, port_hello),
            Dial::Pending(fd) if self.connecting.len() < MAX_CONNECTING => {
                let now = Instant::now();
                self.connecting.insert(
                    key,
                    Connecting {
                        fd,
                        request: *hdr,
                        hello: port_hello,
                        deadline: now + CONNECT_TIMEOUT,
                        next_try: now + RETRY_FIRST,
                        backoff: RETRY_FIRST,
                    },
                );
                self.arm_retry();
            }
            Dial::Pending(_) | Dial::Failed => self.orphan_rst(hdr),
        }
    }

    /// The connect to host.sock for guest connection `key` succeeded: RESPONSE goes out next.
    fn connected(&mut self, key: Key, stream: UnixStream, request: &Header, hello: Vec<u8>) {
        let mut conn = Connection::peer_init(
            stream,
            self.cfg.cid,
            key.0,
            key.1,
            hello,
            self.cfg.take_sockets,
        );
        conn.send_pkt(request, &[]);
        self.by_fd.insert(conn.stream().as_raw_fd(), key);
        self.conns.insert(key, conn);
        Metrics::add(&METRICS.vsock_guest_connections, 1);
        self.update(key);
    }

    /// A kept stream for a guest connect to `port` that host-server has released (the oldest
    /// first, at most [`IDLE_CHECKS`] looked at); stale and dead ones are closed on the way.
    fn take_idle(&mut self, port: u32, now: Instant) -> Option<UnixStream> {
        self.prune_idle(now);
        let mut checks = 0;
        let mut i = 0;
        while i < self.idle.len() && checks < IDLE_CHECKS {
            if self.idle[i].port != port {
                i += 1;
                continue;
            }
            checks += 1;
            match idle_state(&self.idle[i].stream, &self.released) {
                IdleState::Ready => return self.idle.remove(i).map(|s| s.stream),
                IdleState::NotYet => i += 1,
                IdleState::Gone => {
                    self.idle.remove(i);
                }
            }
        }
        None
    }

    /// Closes the kept streams older than [`IDLE_STREAM_FOR`] (host-server sees their end and
    /// lets go of its side).
    fn prune_idle(&mut self, now: Instant) {
        while self
            .idle
            .front()
            .is_some_and(|s| now.duration_since(s.since) > IDLE_STREAM_FOR)
        {
            self.idle.pop_front();
        }
    }

    /// A guest connection bridged to a passed socket ended: its host.sock stream says `Ended`
    /// and is kept for the next guest connect to `port`, or closed when the pool is full or
    /// the stream does not take the frame at once (host-server then sees its end, as before).
    fn keep_idle(&mut self, stream: UnixStream, port: u32) {
        use rustix::net::SendFlags;
        let now = Instant::now();
        self.prune_idle(now);
        if self.idle.len() >= MAX_IDLE_STREAMS {
            return;
        }
        // Nothing else was ever written to it after the request: a few bytes always fit.
        let sent = rustix::net::send(
            &stream,
            &self.ended,
            SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
        );
        if sent != Ok(self.ended.len()) {
            return;
        }
        self.idle.push_back(IdleStream {
            stream,
            port,
            since: now,
        });
        self.arm_timer();
    }

    /// Tries the pending connects that are due (at most [`RETRIES_PER_TICK`]); those past
    /// their deadline get RST.
    pub fn retry_connects(&mut self, now: Instant) {
        let due: Vec<Key> = self
            .connecting
            .iter()
            .filter(|(_, c)| c.next_try <= now || c.deadline <= now)
            .map(|(k, _)| *k)
            .take(RETRIES_PER_TICK)
            .collect();
        for key in due {
            let Some(c) = self.connecting.remove(&key) else {
                continue;
            };
            match dial(&self.cfg.host_socket, Some(c.fd)) {
                Dial::Connected(stream) => self.connected(key, stream, &c.request, c.hello),
                Dial::Pending(fd) if c.deadline > now => {
                    let backoff = (c.backoff * 2).min(RETRY_MAX);
                    self.connecting.insert(
                        key,
                        Connecting {
                            fd,
                            next_try: now + backoff,
                            backoff,
                            ..c
                        },
                    );
                }
                Dial::Pending(_) | Dial::Failed => self.orphan_rst(&c.request),
            }
        }
        if self.connecting.is_empty() {
            self.disarm_retry();
        }
    }

    fn arm_retry(&mut self) {
        if !self.retry_armed {
            self.retry_armed = self.retry_timer.reset(RETRY_TICK, Some(RETRY_TICK)).is_ok();
        }
    }

    fn disarm_retry(&mut self) {
        if self.retry_armed {
            self.retry_armed = self.retry_timer.clear().is_err();
        }
    }

    /// Connects the companions whose wait is over (at most [`RETRIES_PER_TICK`]) to host.sock
    /// again: on success the hello and the guest's `Listen` go out and the connection reads
    /// host-server's answer itself; otherwise the wait doubles, up to [`REGISTER_LAST_RETRY`].
    pub fn redial(&mut self, now: Instant) {
        let due: Vec<Key> = self
            .redials
            .iter()
            .filter(|(_, r)| r.next_try <= now)
            .map(|(k, _)| *k)
            .take(RETRIES_PER_TICK)
            .collect();
        for key in due {
            let Some(r) = self.redials.remove(&key) else {
                continue;
            };
            if !self
                .conns
                .get(&key)
                .is_some_and(Connection::registering_again)
            {
                continue;
            }
            let hello = self.hello(key.0);
            match (dial(&self.cfg.host_socket, r.fd), hello) {
                (Dial::Connected(stream), Some(hello)) => {
                    let Some(conn) = self.conns.get_mut(&key) else {
                        continue;
                    };
                    let (old, new) = (conn.stream().as_raw_fd(), stream.as_raw_fd());
                    if conn.rebind(stream, hello, r.backoff) {
                        self.by_fd.remove(&old);
                        self.by_fd.insert(new, key);
                    }
                    self.update(key);
                }
                (dialed, _) => {
                    let fd = match dialed {
                        Dial::Pending(fd) => Some(fd),
                        _ => None,
                    };
                    let backoff = (r.backoff * 2).min(REGISTER_LAST_RETRY);
                    self.redials.insert(
                        key,
                        Redial {
                            fd,
                            next_try: now + backoff,
                            backoff,
                        },
                    );
                }
            }
        }
        self.arm_redial(now);
    }

    /// Arms the redial timer (one-shot) for the earliest redial, or clears it: the event loop
    /// wakes once per try, never on a period while host-server is away.
    fn arm_redial(&mut self, now: Instant) {
        match self.redials.values().map(|r| r.next_try).min() {
            Some(t) => {
                // A zero timerfd value disarms it: wait at least a millisecond.
                let wait = t
                    .saturating_duration_since(now)
                    .max(Duration::from_millis(1));
                let _ = self.redial_timer.reset(wait, None);
            }
            None => {
                let _ = self.redial_timer.clear();
            }
        }
    }

    /// What a connection's re-registration came to: counted, and told in a log line (rate
    /// limited: the first ten, then every power of two, as a guest can make many).
    fn log_reregistration(&mut self, what: Reregistered) {
        let (kept, refused) = match what {
            Reregistered::Again(kept, _) => (kept, false),
            Reregistered::Refused(kept, _, _) => (kept, true),
        };
        let udp = kept == Kept::UdpServer;
        METRICS.reregistered(udp, refused);
        let n = if refused {
            self.refused_again += 1;
            self.refused_again
        } else {
            self.reregistered += 1;
            self.reregistered
        };
        if n > 10 && !n.is_power_of_two() {
            return;
        }
        let vm = &self.cfg.vm;
        let thing = if udp { "UDP server" } else { "listener" };
        match what {
            Reregistered::Again(_, addr) => eprintln!(
                "outsock-vmm[{vm}]: host-server came back; the guest's {thing} on {addr} is \
                 registered again ({n} so far)"
            ),
            Reregistered::Refused(_, addr, errno) => {
                let then = if udp {
                    "its next receive fails with ENETDOWN, then stays quiet"
                } else {
                    "its companion stream is reset"
                };
                eprintln!(
                    "outsock-vmm[{vm}]: host-server refused to take back the guest's {thing} on \
                     {addr} ({errno}); {then} ({n} refused so far)"
                );
            }
        }
    }

    /// The next packet for the guest, payload in `buf[..len]`.
    pub fn recv_pkt<T: RxBuf + ?Sized>(&mut self, buf: &mut T) -> Option<Header> {
        if let Some(h) = self.orphan_rsts.pop_front() {
            return Some(h);
        }
        // Each queued connection is asked at most twice per call, so a connection that
        // claims work but produces none cannot spin here.
        let mut budget = self.rxq.len() * 2 + 1;
        while budget > 0 {
            budget -= 1;
            let key = self.rxq.pop_front()?;
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            conn.queued = false;
            let pkt = conn.recv_pkt(buf);
            self.update(key);
            if pkt.is_some() {
                return pkt;
            }
        }
        None
    }

    /// After anything happened to a connection: drop it when done, fix its epoll interest,
    /// queue it for RX, and arm the timer if it has a deadline.
    fn update(&mut self, key: Key) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if let Some(what) = conn.take_reregistered() {
            self.log_reregistration(what);
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if let Some(wait) = conn.take_redial() {
            let now = Instant::now();
            self.redials.insert(
                key,
                Redial {
                    fd: None,
                    next_try: now + wait,
                    backoff: wait,
                },
            );
            self.arm_redial(now);
        }
        if self
            .conns
            .get(&key)
            .is_some_and(|c| c.state() == State::Closed)
            && self.redials.remove(&key).is_some()
        {
            // The guest closed its companion (or it was refused): no more tries.
            self.arm_redial(Instant::now());
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if conn.is_done() {
            if conn.refused().is_some() {
                self.refused_sockets += 1;
            }
            let fd = conn.stream().as_raw_fd();
            if conn.registered.is_some() {
                let _ = self
                    .epoll
                    .ctl(ControlOperation::Delete, fd, EpollEvent::default());
            }
            let control = conn.take_control();
            self.by_fd.remove(&fd);
            self.conns.remove(&key);
            if let Some(control) = control {
                self.keep_idle(control, key.0);
            }
            return;
        }
        if conn.take_window_wish() {
            let granted = self.conns.values().filter(|c| c.has_bulk_window()).count();
            if granted < BULK_WINDOWS {
                if let Some(conn) = self.conns.get_mut(&key) {
                    conn.grow_window();
                }
            }
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if let Some(old) = conn.take_swapped_from() {
            // Bridged to a passed socket now: the host.sock stream (kept open as the control
            // stream) is no longer watched; the socket is, from here on.
            if conn.registered.take().is_some() {
                let _ = self
                    .epoll
                    .ctl(ControlOperation::Delete, old, EpollEvent::default());
            }
            self.by_fd.remove(&old);
            self.by_fd.insert(conn.stream().as_raw_fd(), key);
            self.passed_sockets += 1;
            Metrics::add(&METRICS.passed_sockets, 1);
        }
        let fd = conn.stream().as_raw_fd();
        let want = conn.interest();
        let change = match (conn.registered, want.is_empty()) {
            (None, false) => Some(ControlOperation::Add),
            (Some(_), true) => Some(ControlOperation::Delete),
            (Some(old), false) if old != want => Some(ControlOperation::Modify),
            _ => None,
        };
        if let Some(operation) = change {
            let delete = matches!(operation, ControlOperation::Delete);
            let ok = self
                .epoll
                .ctl(operation, fd, EpollEvent::new(want, fd as u64))
                .is_ok();
            if delete {
                conn.registered = None;
            } else if ok {
                conn.registered = Some(want);
            }
        }
        if conn.has_pending_rx() && !conn.queued {
            conn.queued = true;
            self.rxq.push_back(key);
        }
        if conn.expiry().is_some() {
            self.arm_timer();
        }
    }

    fn arm_timer(&mut self) {
        if !self.timer_armed {
            let tick = Duration::from_millis(500);
            self.timer_armed = self.timer.reset(tick, Some(tick)).is_ok();
        }
    }

    /// Handles whatever the backend epoll has ready, without blocking.
    pub fn process_events(&mut self) {
        let mut events = [EpollEvent::default(); 32];
        for _ in 0..64 {
            let n = match self.epoll.wait(0, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            for ev in &events[..n] {
                self.dispatch(ev.fd(), ev.event_set());
            }
            if n < events.len() {
                // Nothing else was ready: no second wait that would find nothing. What became
                // ready since makes this epoll readable to the event loop's again.
                return;
            }
        }
    }

    fn dispatch(&mut self, fd: RawFd, events: EventSet) {
        if fd == self.timer.as_raw_fd() {
            let _ = self.timer.wait();
            self.tick(Instant::now());
        } else if fd == self.retry_timer.as_raw_fd() {
            let _ = self.retry_timer.wait();
            self.retry_connects(Instant::now());
        } else if fd == self.redial_timer.as_raw_fd() {
            // Not read: `redial` always sets the timer again (or clears it), which resets its
            // expiry count. A blocking read could wait here for the next expiry when another
            // event of this batch re-armed it after epoll saw this one.
            self.redial(Instant::now());
        } else if self.listener.as_ref().is_some_and(|l| l.as_raw_fd() == fd) {
            self.accept_all();
        } else if self.handshakes.contains_key(&fd) {
            self.read_handshake(fd);
        } else if let Some(&key) = self.by_fd.get(&fd) {
            if let Some(conn) = self.conns.get_mut(&key) {
                conn.notify(events);
            }
            self.update(key);
        }
    }

    /// Resets connections and drops handshakes past their deadline.
    pub fn tick(&mut self, now: Instant) {
        let late: Vec<RawFd> = self
            .handshakes
            .iter()
            .filter(|(_, h)| h.deadline <= now)
            .map(|(fd, _)| *fd)
            .collect();
        for fd in late {
            self.drop_handshake(fd);
        }
        let keys: Vec<Key> = self
            .conns
            .iter()
            .filter(|(_, c)| c.expiry().is_some_and(|t| t <= now))
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            if let Some(c) = self.conns.get_mut(&key) {
                c.expire(now);
            }
            self.update(key);
        }
        self.prune_idle(now);
        if self.handshakes.is_empty()
            && self.idle.is_empty()
            && self.conns.values().all(|c| c.expiry().is_none())
        {
            self.timer_armed = self.timer.clear().is_err();
        }
    }

    /// Accepts at most [`ACCEPTS_PER_EVENT`] host connections; the socket stays readable for
    /// the rest.
    fn accept_all(&mut self) {
        for _ in 0..ACCEPTS_PER_EVENT {
            let Some(listener) = &self.listener else {
                return;
            };
            let stream = match listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            if self.admits(&stream).is_none() {
                // The hybrid-vsock refusal: the stream closes without an OK line.
                self.refused_peers += 1;
                Metrics::add(&METRICS.refused_peers, 1);
                if self.refused_peers <= 10 || self.refused_peers.is_power_of_two() {
                    let uid = rustix::net::sockopt::socket_peercred(&stream)
                        .map_or_else(|_| "unknown".to_owned(), |c| c.uid.as_raw().to_string());
                    eprintln!(
                        "outsock-vmm: refused a CONNECT on the VM's socket from uid {uid} (not \
                         in vsock_peer_uids, host-server's or root; {} refused so far)",
                        self.refused_peers
                    );
                }
                continue;
            }
            if self.handshakes.len() >= MAX_HANDSHAKES || stream.set_nonblocking(true).is_err() {
                continue; // Dropped: the host process sees the stream close.
            }
            let fd = stream.as_raw_fd();
            if self
                .epoll
                .ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, fd as u64),
                )
                .is_err()
            {
                continue;
            }
            self.handshakes.insert(
                fd,
                Handshake {
                    stream,
                    line: Vec::new(),
                    deadline: Instant::now() + TIMEOUT,
                },
            );
            self.arm_timer();
        }
    }

    fn drop_handshake(&mut self, fd: RawFd) {
        let _ = self
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
        self.handshakes.remove(&fd);
    }

    /// Reads the `CONNECT <port>\n` line one byte at a time, so nothing after it is consumed.
    fn read_handshake(&mut self, fd: RawFd) {
        let Some(h) = self.handshakes.get_mut(&fd) else {
            return;
        };
        let mut b = [0u8; 1];
        let port = loop {
            match h.stream.read(&mut b) {
                Ok(1) => {
                    h.line.push(b[0]);
                    if b[0] == b'\n' {
                        break shared_proto::hybrid::parse_connect(&h.line).ok();
                    }
                    if h.line.len() >= shared_proto::hybrid::MAX_LINE {
                        break None;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                _ => break None, // EOF or error
            }
        };
        let _ = self
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
        let Some(h) = self.handshakes.remove(&fd) else {
            return;
        };
        let Some(port) = port else {
            return; // Garbage: the stream closes.
        };
        if self.conns.len() >= MAX_CONNECTIONS {
            return;
        }
        let Some(local) = self.allocate_port(port) else {
            return;
        };
        let key = (local, port);
        let mut conn = Connection::local_init(h.stream, self.cfg.cid, local, port);
        if self.cfg.take_sockets {
            conn = conn.taking_a_socket();
        }
        self.by_fd.insert(fd, key);
        self.conns.insert(key, conn);
        Metrics::add(&METRICS.vsock_host_connections, 1);
        self.update(key);
    }

    fn allocate_port(&mut self, peer: u32) -> Option<u32> {
        for _ in 0..MAX_CONNECTIONS + 1 {
            let p = self.next_port;
            self.next_port = if p >= LOCAL_PORT_LAST {
                LOCAL_PORT_FIRST
            } else {
                p + 1
            };
            if !self.conns.contains_key(&(p, peer)) {
                return Some(p);
            }
        }
        None
    }
}
