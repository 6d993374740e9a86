//! One bridged vsock stream: the guest side (ports, credit, the packets it still owes the
//! guest) and the host side (a non-blocking Unix stream, or the socket host-server passed,
//! with a bounded outgoing buffer).
//!
//! Credit (virtio 1.2 §5.10.6.3): every header we send advertises `buf_alloc` = the
//! connection's window and `fwd_cnt` = guest bytes actually written to the Unix stream. A
//! guest that respects it can never have more than the window's bytes unwritten here, so the
//! buffer is bounded by construction and overflowing it means the guest ignored credit: RST.
//! The window starts at [`TX_BUF_SIZE`]; a connection that has moved that much asks for
//! [`BULK_WINDOW`] ([`Connection::take_window_wish`]), which the muxer grants within a budget
//! per VM ([`Connection::grow_window`]); a window never shrinks. A bulk sender needs the bigger
//! one: with 256 KiB in flight the guest stops for a credit update every few packets, and the
//! guest's copies and the VMM's writes take turns instead of overlapping.
//! In the other direction we read from the Unix stream only as much as the guest's advertised
//! credit allows, and stop polling the stream while it is exhausted.
//!
//! **A passed socket** (a guest connection to host-server through a muxer that takes sockets,
//! [`Connection::peer_init`] with `take_sockets`): the hello says so, and the connection
//! forwards only the guest's first frame (the request, its length read from the frame header)
//! and holds every later guest byte (bounded by credit, as always) until host-server's answer
//! has arrived. The answer is read with `recvmsg` and never past its end, so that a socket
//! attached to it (SCM_RIGHTS on its first byte) is seen before anything else; the answer's
//! bytes go to the guest as they are. With a socket attached, once the whole answer is in, the
//! connection swaps its stream: the passed socket becomes the data stream (the held bytes and
//! every later guest byte go to it, what it reads goes to the guest, half-closes apply to it)
//! and the host.sock stream is kept, unread, as the control stream that host-server waits on:
//! when the connection is done, whichever side ended it, the muxer takes it
//! ([`Connection::take_control`]) to say `Ended` on it and keep it for the next guest connect
//! (see [`super::muxer`]); dropped otherwise, it closes. Without one, the
//! connection goes on relaying through host.sock. What may be attached is checked: one socket
//! of type `SOCK_STREAM` with the answer's first bytes; anything else (another type, a
//! descriptor on a later read) is closed and the connection reset. A host connection on the
//! VM's socket may get its socket the same way ([`Connection::taking_a_socket`]: host-server's
//! `Inbound` frame is read as an answer), but holds no guest bytes: a host client that sends
//! no frame is bridged exactly as before.
//!
//! **A guest listener's companion** ([`Connection::is_companion`]): a guest connection's first
//! frame is collected as it passes (at most 256 bytes; it is forwarded as always); when it is a
//! `Listen` request, host-server's answer is read frame-wise as above (also without
//! `take_sockets`) and, when it is `Listening`, the request's bytes are kept. When the host side
//! then ends (EOF or an error on a read, EPIPE on a write, HUP from the muxer's epoll: no guest
//! RX buffer is needed to notice) while the guest has not shut its end, the connection does not
//! tell the guest: it stops watching the dead stream and asks the muxer to connect again
//! ([`Connection::registering_again`]; the muxer's docs have the back-off). On the new stream
//! the hello and the kept request go out first and the answer is read here, never past its
//! end, never given to the guest. Guest bytes that arrive on the companion meanwhile are
//! dropped (a guest sends nothing after its request there, and host-server would close a live
//! listener on any), counted as forwarded so the guest's credit stays right; a guest SHUTDOWN
//! meanwhile ends the companion with RST.
//!
//! **A guest UDP server's companion** ([`Kept::UdpServer`]): the same for a first frame that
//! is a `Udp` request bound to a port of its own (a client's port-0 association closes idle by
//! design and is not kept) answered `Associated`; in a VM the association is the stream, and
//! `Datagram` frames flow on it both ways, so its frames are counted ([`super::frames`]): the
//! guest's as they arrive (its packets take the copying path, not [`Connection::send_direct`]),
//! host-server's staged and given to the guest by whole frames only. When the host side ends
//! (after the whole frames it wrote are staged), an unfinished frame of host-server's is
//! dropped, the guest's buffered bytes are dropped, and after re-registration (`Associated` on
//! the same port) the guest's bytes are relayed again from the next frame boundary. A refusal
//! (or another port) puts one `Failed(ENETDOWN)` frame after the staged ones: liboutsock's next
//! receive on the socket fails with ENETDOWN, as a process's does when the supervisor's keeper
//! is refused; the stream then stays open and quiet (never readable again, no busy loop), the
//! guest's sends dropped, until the guest closes it. Before this, the guest's stream read EOF
//! (or was reset) when host-server went away: every receive failed with EPROTO and the fd stayed
//! readable, so an event loop spun. A UDP association is never a passed socket (host-server
//! answers `Udp` without one), so `take_sockets` only changes when the guest's bytes may go.
//!
//! **One copy each way** (the data path of a passed socket, and of the relay's Unix stream
//! too): guest RW packets whose bytes can go at once ([`Connection::send_direct`]: nothing
//! buffered before them) are written to the stream straight from guest memory — a run of this
//! connection's packets next in the TX ring with one `writev` ([`super::iov::send_from`]) —
//! and only what the stream does not take is copied into the buffer; a packet for the guest is
//! read from the stream straight into the guest's RX buffer ([`RxBuf`] over guest memory).

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddrV4;
use std::num::Wrapping;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use shared_proto::frame::{frame_len, HEADER_LEN};
use shared_proto::{Errno, ToGuest, ToHost};
use vm_memory::bitmap::BitmapSlice;
use vm_memory::{Bytes, ReadVolatile, VolatileMemoryError, VolatileSlice};

use vmm_sys_util::epoll::EventSet;

use super::defs::HOST_CID;
use super::frames::{FrameCursor, HostFrames};
use super::packet::{op, Header, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};
use crate::metrics::{Metrics, METRICS};

/// Guest bytes we accept before they are written to the Unix stream; also our `buf_alloc`:
/// every connection's window to start with.
pub const TX_BUF_SIZE: u32 = 256 * 1024;
/// The window of a connection that has moved [`TX_BUF_SIZE`] bytes, when the muxer's budget
/// allows (see the module docs).
pub const BULK_WINDOW: u32 = 1024 * 1024;
/// Send a CREDIT_UPDATE once this many forwarded bytes (or a quarter of the window, when that
/// is more) are unknown to the guest.
pub const CREDIT_UPDATE_AFTER: u32 = TX_BUF_SIZE / 2;
/// How long a host-initiated connection waits for the guest to accept, and a closing one for
/// its buffer to drain, before it is reset.
pub const TIMEOUT: Duration = Duration::from_secs(2);
/// The first wait before a lost companion's host side is connected again, doubled after each
/// failed try up to [`REGISTER_LAST_RETRY`] (the supervisor's keeper waits the same).
pub const REGISTER_FIRST_RETRY: Duration = Duration::from_millis(20);
pub const REGISTER_LAST_RETRY: Duration = Duration::from_secs(1);
/// The largest first frame kept to tell a listen or UDP server request (a `Listen` or `Udp`
/// frame is a few dozen bytes), and the largest answer read on a re-registration.
const MAX_KEPT_FRAME: usize = 256;

/// Where the connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Host-initiated: REQUEST sent (or pending), waiting for the guest's RESPONSE.
    LocalInit,
    /// Guest-initiated: the host side is connected, RESPONSE pending.
    PeerInit,
    Established,
    /// Being torn down: only an RST (if pending) is left to send.
    Closed,
}

/// Which of the guest's buffered bytes may go to the stream yet (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gate {
    /// All of them.
    Open,
    /// None until the guest's first frame header is in: its length says where the request
    /// ends.
    Header,
    /// This many more (the rest of the request); then none until the answer arrived.
    Request(usize),
}

/// Reading host-server's answer on a connection that may get a socket.
#[derive(Debug, Default)]
struct Answer {
    /// The answer's header as far as it has arrived.
    head: Vec<u8>,
    /// Body bytes still to come, once the header is in.
    left: Option<usize>,
    /// The socket that came with the answer, checked, waiting for the answer's end.
    socket: Option<OwnedFd>,
    /// The answer's body as far as it has arrived (kept up to [`MAX_KEPT_FRAME`] bytes, to tell
    /// a listen request's `Listening`).
    body: Vec<u8>,
}

impl Answer {
    /// How many bytes the next read may take without passing the answer's end.
    fn room(&self) -> usize {
        self.left.unwrap_or(HEADER_LEN - self.head.len())
    }

    fn complete(&self) -> bool {
        self.left == Some(0)
    }
}

/// Where a packet for the guest puts its payload: the guest's RX buffer itself (a
/// [`VolatileSlice`] of guest memory: the read from the stream is the only copy), or plain bytes.
pub trait RxBuf {
    /// Room for payload.
    fn room(&self) -> usize;
    /// One read from `stream` into the first `max` bytes.
    ///
    /// # Errors
    /// The read's error.
    fn read_from(&mut self, stream: &UnixStream, max: usize) -> std::io::Result<usize>;
    /// Copies `bytes` to the start.
    ///
    /// # Errors
    /// When `bytes` does not fit.
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()>;
}

impl RxBuf for [u8] {
    fn room(&self) -> usize {
        self.len()
    }

    fn read_from(&mut self, mut stream: &UnixStream, max: usize) -> std::io::Result<usize> {
        stream.read(&mut self[..max])
    }

    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.get_mut(..bytes.len())
            .ok_or_else(|| std::io::Error::from(ErrorKind::InvalidInput))?
            .copy_from_slice(bytes);
        Ok(())
    }
}

impl<B: BitmapSlice> RxBuf for VolatileSlice<'_, B> {
    fn room(&self) -> usize {
        self.len()
    }

    fn read_from(&mut self, mut stream: &UnixStream, max: usize) -> std::io::Result<usize> {
        let mut part = self.subslice(0, max).map_err(io_error)?;
        stream.read_volatile(&mut part).map_err(io_error)
    }

    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.write_slice(bytes, 0).map_err(io_error)
    }
}

/// Several RX buffers of guest memory in a row (a batch of the guest's RX chains): one
/// vectored receive fills them in order (`iov`), so a connection's bytes for many of the
/// guest's small RX buffers cost one system call; the device cuts the packet at the buffers'
/// bounds, as it does what is put (a connect answer's few bytes).
impl<B: BitmapSlice> RxBuf for [VolatileSlice<'_, B>] {
    fn room(&self) -> usize {
        self.iter().map(VolatileSlice::len).sum()
    }

    fn read_from(&mut self, stream: &UnixStream, max: usize) -> std::io::Result<usize> {
        super::iov::recv_into(stream.as_fd(), self, max)
    }

    fn put(&mut self, mut bytes: &[u8]) -> std::io::Result<()> {
        for b in self.iter_mut() {
            let (now, rest) = bytes.split_at(b.len().min(bytes.len()));
            b.put(now)?;
            bytes = rest;
        }
        if bytes.is_empty() {
            Ok(())
        } else {
            Err(std::io::Error::from(ErrorKind::InvalidInput))
        }
    }
}

/// Reads a UDP server's frames from host-server's `stream` until at least one is whole, and
/// gives the guest up to `max` bytes of whole frames (see [`super::frames`]). `Ok(0)` is
/// host-server's EOF.
fn read_whole_frames<T: RxBuf + ?Sized>(
    u: &mut UdpFrames,
    mut stream: &UnixStream,
    buf: &mut T,
    max: usize,
) -> std::io::Result<usize> {
    while u.host.ready() == 0 {
        if u.host.fill(|room| stream.read(room))? == 0 {
            return Ok(0);
        }
    }
    let n = u.host.ready().min(max);
    buf.put(u.host.peek(n))?;
    u.host.consume(n);
    Ok(n)
}

/// vm-memory's error as the I/O error it carries (or as one).
fn io_error(e: VolatileMemoryError) -> std::io::Error {
    match e {
        VolatileMemoryError::IOError(e) => e,
        other => std::io::Error::other(other),
    }
}

/// Why a descriptor that came with the answer was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Not on the answer's first bytes, or a second one.
    Unexpected,
    /// Not a socket, or not `SOCK_STREAM`.
    NotAStreamSocket,
}

/// What a companion stream keeps registered with host-server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kept {
    /// A guest listener: `Listen`, answered `Listening`.
    Listener,
    /// A guest UDP server: `Udp` bound to a port of its own, answered `Associated`; the
    /// association is the stream, `Datagram` frames flow on it both ways.
    UdpServer,
}

/// A companion stream (see the muxer's docs): the guest's request frame as it sent it, and
/// where its registration with host-server stands.
#[derive(Debug)]
struct Companion {
    request: Vec<u8>,
    addr: SocketAddrV4,
    phase: Phase,
    /// The wait before the next reconnect, should the host side end again soon.
    backoff: Duration,
    /// A UDP server's frame boundaries (`None`: a listener).
    udp: Option<UdpFrames>,
}

impl Companion {
    fn kept(&self) -> Kept {
        if self.udp.is_some() {
            Kept::UdpServer
        } else {
            Kept::Listener
        }
    }
}

/// A UDP server companion's frames (see [`super::frames`]).
#[derive(Debug, Default)]
struct UdpFrames {
    /// Where the guest's stream stands, counted as its bytes arrive.
    guest: FrameCursor,
    /// Guest bytes are dropped up to the next frame boundary (host-server has the association
    /// again, and the guest was in the middle of a frame).
    skip: bool,
    /// host-server's bytes, given to the guest by whole frames.
    host: HostFrames,
    /// The port host-server first answered with: a re-registration must give the same.
    local_port: u16,
}

/// What a guest UDP server's next receive reports once host-server refused its association
/// again: the network it was bound to is gone (as process mode's keeper reports it).
const UDP_REFUSED: Errno = Errno::ENETDOWN;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// The request went to host-server; its first answer is still on its way to the guest.
    Asked,
    /// host-server answered `Listening` (at this time) and holds the stream.
    Live(Instant),
    /// The host side ended: the muxer connects to host.sock again (the stream is dead).
    Lost,
    /// Connected again: the hello and the request go out, the answer is read here (the guest
    /// has had its first answer); the bytes of it so far.
    Answering(Vec<u8>),
    /// A UDP server's association was refused again: the guest was given one `Failed` frame,
    /// and the stream stays open and quiet (its host side dead, guest bytes dropped) until the
    /// guest closes it.
    Refused,
}

/// What became of a re-registration, told once to the muxer (which logs it and counts it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reregistered {
    /// host-server answered `Listening` (`Associated` on the same port) again.
    Again(Kept, SocketAddrV4),
    /// host-server refused it (the port taken, no longer allowed) with this errno, or answered
    /// something else (`EPROTO`): a listener's companion stream is reset, a UDP server's told
    /// [`UDP_REFUSED`] once.
    Refused(Kept, SocketAddrV4, Errno),
}

mod pending {
    pub const RST: u8 = 1;
    pub const REQUEST: u8 = 2;
    pub const RESPONSE: u8 = 4;
    pub const SHUTDOWN: u8 = 8;
    pub const CREDIT_UPDATE: u8 = 16;
    pub const CREDIT_REQUEST: u8 = 32;
}

/// See the module documentation.
#[derive(Debug)]
pub struct Connection {
    stream: UnixStream,
    state: State,
    peer_cid: u64,
    local_port: u32,
    peer_port: u32,
    /// Written to the stream before any guest byte: the VM hello, or the `OK <port>` line.
    prefix: Vec<u8>,
    /// Guest bytes not yet written to the stream (≤ `window`).
    tx_buf: VecDeque<u8>,
    /// Our `buf_alloc`: [`TX_BUF_SIZE`], or [`BULK_WINDOW`] once granted.
    window: u32,
    /// It asks for [`BULK_WINDOW`] now (see [`Self::take_window_wish`]).
    wishes: bool,
    fwd_cnt: Wrapping<u32>,
    last_fwd_cnt_sent: Wrapping<u32>,
    /// The guest's receive buffer and how much of it it has consumed.
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    /// Bytes we sent to the guest.
    rx_cnt: Wrapping<u32>,
    pending: u8,
    /// The stream is readable (or may be) and the guest has not been given its data yet.
    want_rw: bool,
    credit_requested: bool,
    /// `rx_cnt` when we last asked for the guest's credit (see [`Self::asks_early`]).
    asked_at: Wrapping<u32>,
    local_eof: bool,
    write_shut: bool,
    peer_shut: u32,
    expiry: Option<Instant>,
    /// Part of the muxer's RX work queue.
    pub(super) queued: bool,
    /// What the muxer's epoll watches for this stream (None: not registered).
    pub(super) registered: Option<EventSet>,
    /// Which buffered guest bytes may go to the stream.
    gate: Gate,
    /// While host-server's answer is awaited on a connection that may get a socket.
    answer: Option<Answer>,
    /// After a swap to a passed socket: the host.sock stream, open until the connection ends.
    control: Option<UnixStream>,
    /// `control` is a host.sock stream this connection opened (a guest connect), which the
    /// muxer may keep for the VM's next one ([`Self::take_control`]).
    keeps_control: bool,
    /// The stream that was swapped out, until the muxer has moved its epoll registration.
    swapped_from: Option<RawFd>,
    /// A descriptor that came with the answer and was refused (for tests and logs).
    refused: Option<Refused>,
    /// A guest connection's first frame while it arrives, to tell a listen or UDP server
    /// request.
    first: Option<Vec<u8>>,
    /// The connection is a guest listener's or UDP server's companion.
    companion: Option<Companion>,
    /// The host side of a companion ended: the muxer should connect again after this wait.
    redial: Option<Duration>,
    /// The outcome of a re-registration, for the muxer.
    reregistered: Option<Reregistered>,
}

impl Connection {
    /// A guest connection to the host: the host side is connected, RESPONSE goes out next,
    /// and `prefix` (the VM hello) precedes the guest's bytes.
    ///
    /// With `take_sockets` (the hello said so), host-server may answer with the connection's
    /// socket attached; see the module docs.
    pub fn peer_init(
        stream: UnixStream,
        peer_cid: u64,
        local_port: u32,
        peer_port: u32,
        prefix: Vec<u8>,
        take_sockets: bool,
    ) -> Self {
        let mut c = Self::new(stream, State::PeerInit, peer_cid, local_port, peer_port);
        c.prefix = prefix;
        c.pending = pending::RESPONSE;
        c.first = Some(Vec::new());
        if take_sockets {
            c.gate = Gate::Header;
            c.answer = Some(Answer::default());
            c.keeps_control = true;
        }
        c
    }

    /// A host connection to guest port `peer_port`: REQUEST goes out next; the guest has
    /// [`TIMEOUT`] to accept.
    pub fn local_init(stream: UnixStream, peer_cid: u64, local_port: u32, peer_port: u32) -> Self {
        let mut c = Self::new(stream, State::LocalInit, peer_cid, local_port, peer_port);
        c.pending = pending::REQUEST;
        c.expiry = Some(Instant::now() + TIMEOUT);
        c
    }

    /// A host connection whose first frame from the host side (host-server's `Inbound`) may
    /// bring the accepted socket: read as an answer is (see the module docs), without holding
    /// any guest bytes (the guest reads that frame before it says anything, and one that does
    /// not only garbles its own connection).
    #[must_use]
    pub fn taking_a_socket(mut self) -> Self {
        self.answer = Some(Answer::default());
        self
    }

    fn new(
        stream: UnixStream,
        state: State,
        peer_cid: u64,
        local_port: u32,
        peer_port: u32,
    ) -> Self {
        Self {
            stream,
            state,
            peer_cid,
            local_port,
            peer_port,
            prefix: Vec::new(),
            tx_buf: VecDeque::new(),
            window: TX_BUF_SIZE,
            wishes: false,
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            rx_cnt: Wrapping(0),
            pending: 0,
            want_rw: false,
            credit_requested: false,
            asked_at: Wrapping(0),
            local_eof: false,
            write_shut: false,
            peer_shut: 0,
            expiry: None,
            queued: false,
            registered: None,
            gate: Gate::Open,
            answer: None,
            control: None,
            keeps_control: false,
            swapped_from: None,
            refused: None,
            first: None,
            companion: None,
            redial: None,
            reregistered: None,
        }
    }

    /// The data stream: the host.sock stream, or the passed socket once it came.
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Whether the connection is bridged to a socket host-server passed.
    pub fn is_passed(&self) -> bool {
        self.control.is_some()
    }

    /// The host.sock stream kept open beside a passed socket.
    pub fn control(&self) -> Option<&UnixStream> {
        self.control.as_ref()
    }

    /// The host.sock stream of a guest connect that was bridged to a passed socket, once the
    /// connection is done: nothing was read from it past the answer and nothing written after
    /// the request, so the muxer may end the connection on it with `Ended` and keep it. None
    /// for any other connection (a host connection's control stream is host-server's own
    /// connection to the VM's socket, which it only watches for its end).
    pub(super) fn take_control(&mut self) -> Option<UnixStream> {
        if self.keeps_control && self.is_done() {
            self.control.take()
        } else {
            None
        }
    }

    /// Why a descriptor that came with host-server's answer was refused, if one was.
    pub fn refused(&self) -> Option<Refused> {
        self.refused
    }

    /// The fd of the stream this connection swapped out for a passed socket, once: the muxer
    /// takes it out of its epoll and its fd map.
    pub(super) fn take_swapped_from(&mut self) -> Option<RawFd> {
        self.swapped_from.take()
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn expiry(&self) -> Option<Instant> {
        self.expiry
    }

    /// Bytes of guest data buffered here.
    pub fn tx_buffered(&self) -> usize {
        self.tx_buf.len()
    }

    /// Whether the connection is a companion: its first frame was a `Listen` that host-server
    /// answered `Listening`, or a UDP server's `Udp` answered `Associated`.
    pub fn is_companion(&self) -> bool {
        self.companion
            .as_ref()
            .is_some_and(|c| c.phase != Phase::Asked)
    }

    /// What the companion keeps registered, if the connection is one.
    pub fn kept(&self) -> Option<Kept> {
        self.companion
            .as_ref()
            .filter(|c| c.phase != Phase::Asked)
            .map(Companion::kept)
    }

    /// Whether host-server refused a UDP server's association again (the stream is kept
    /// quiet for the guest).
    pub fn refused_for_good(&self) -> bool {
        self.companion
            .as_ref()
            .is_some_and(|c| c.phase == Phase::Refused)
    }

    /// Whether a companion has no live host side: being registered again, or refused for good.
    /// Guest bytes are dropped meanwhile.
    fn host_gone(&self) -> bool {
        self.companion
            .as_ref()
            .is_some_and(|c| matches!(c.phase, Phase::Lost | Phase::Answering(_) | Phase::Refused))
    }

    /// A UDP server companion's frames, once it is one or may become one.
    fn udp(&mut self) -> Option<&mut UdpFrames> {
        self.companion.as_mut().and_then(|c| c.udp.as_mut())
    }

    /// Whether the companion's host side is being registered again (its stream ended; the
    /// muxer connects again, or host-server's answer is awaited).
    pub fn registering_again(&self) -> bool {
        self.companion
            .as_ref()
            .is_some_and(|c| matches!(c.phase, Phase::Lost | Phase::Answering(_)))
    }

    /// Once after a companion's host side ended: how long the muxer waits before it connects
    /// to host.sock again.
    pub(super) fn take_redial(&mut self) -> Option<Duration> {
        self.redial.take()
    }

    /// Once after a re-registration was answered: how it went.
    pub(super) fn take_reregistered(&mut self) -> Option<Reregistered> {
        self.reregistered.take()
    }

    /// Notes guest bytes as they arrive: the first frame is collected to tell a companion's
    /// request, and a UDP server's frames are counted from there. Returns how many leading
    /// bytes are to be dropped (the rest of a frame the guest was in the middle of when its
    /// association was lost), or `None` when the bytes are not frames and the connection was
    /// reset.
    fn note_guest_bytes(&mut self, bytes: &[u8]) -> Option<usize> {
        let rest = self.note_first(bytes);
        let Some(u) = self.udp() else {
            return Some(0);
        };
        let skipped = if u.skip {
            u.guest.to_boundary(rest).ok()
        } else {
            Some(0)
        };
        // (While skipping, `rest` ends before the boundary or right at it.)
        u.skip &= !u.guest.at_boundary();
        let counted = skipped.and_then(|n| u.guest.advance(&rest[n..]).ok().map(|()| n));
        if counted.is_some() {
            return counted;
        }
        // Not frames: host-server would end the association; so does the VMM.
        self.companion = None;
        self.reset();
        None
    }

    /// Collects the first frame of a guest connection's bytes; a `Listen` request, or a `Udp`
    /// one bound to a port of its own, makes the connection a companion candidate, whose answer
    /// is then read frame-wise (as a passed socket's is) to see whether host-server said
    /// `Listening` or `Associated`. Returns the bytes past the first frame.
    fn note_first<'a>(&mut self, mut bytes: &'a [u8]) -> &'a [u8] {
        while let Some(first) = self.first.as_mut() {
            let want = match frame_len(first) {
                Ok(Some(total)) if total <= MAX_KEPT_FRAME => total,
                Ok(None) => HEADER_LEN,
                // Not a frame, or too large for a request kept: nothing to keep.
                _ => {
                    self.first = None;
                    return &[];
                }
            };
            if first.len() == want {
                let request = std::mem::take(first);
                self.first = None;
                let (addr, udp) = match shared_proto::decode_exact::<ToHost>(&request) {
                    Ok(ToHost::Listen(l)) => (l.addr, None),
                    // A client's association (port 0) closes when idle, by design: not kept.
                    Ok(ToHost::Udp(u)) if u.bind.port() != 0 => {
                        (u.bind, Some(UdpFrames::default()))
                    }
                    _ => return &[],
                };
                self.companion = Some(Companion {
                    request,
                    addr,
                    phase: Phase::Asked,
                    backoff: REGISTER_FIRST_RETRY / 2,
                    udp,
                });
                if self.answer.is_none() && self.rx_cnt.0 == 0 {
                    self.answer = Some(Answer::default());
                }
                return bytes;
            }
            if bytes.is_empty() {
                return bytes;
            }
            let n = (want - first.len()).min(bytes.len());
            first.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
        }
        bytes
    }

    /// The host side ended (EOF, an error). A live companion whose guest has not shut it down
    /// is kept, the guest told nothing, and the muxer asked to connect again; returns false for
    /// anything else, which the caller ends as it always did.
    fn host_lost(&mut self) -> bool {
        if self.state != State::Established || self.peer_shut != 0 {
            return false;
        }
        let Some(c) = self.companion.as_mut() else {
            return false;
        };
        // A host side that ends soon after it was registered (host-server dying again, or
        // closing what it just answered) waits longer each time: never a reconnect loop.
        let soon = match &c.phase {
            Phase::Live(since) => since.elapsed() < REGISTER_LAST_RETRY,
            Phase::Answering(_) => true,
            // Its host side is dead already; nothing more to do.
            Phase::Refused => return true,
            Phase::Asked | Phase::Lost => return false,
        };
        c.backoff = if soon {
            (c.backoff * 2).min(REGISTER_LAST_RETRY)
        } else {
            REGISTER_FIRST_RETRY
        };
        c.phase = Phase::Lost;
        if let Some(u) = c.udp.as_mut() {
            // A frame host-server had not finished never reaches the guest.
            u.host.cut();
        }
        self.redial = Some(c.backoff);
        self.want_rw = false;
        self.prefix.clear();
        self.drop_guest_bytes();
        true
    }

    /// Guest bytes on a companion whose host side is down are dropped (a listener's guest sends
    /// nothing after its request; a UDP server's datagrams are lost, as UDP may lose them),
    /// counted as forwarded so that the guest's credit stays right. A UDP server's frame cursor
    /// has seen them all as they arrived, so relaying resumes at a frame boundary.
    fn drop_guest_bytes(&mut self) {
        self.forwarded(self.tx_buf.len());
        self.tx_buf.clear();
    }

    /// `n` guest bytes are done with (written, or dropped): counted for the guest's credit.
    fn forwarded(&mut self, n: usize) {
        let before = self.fwd_cnt.0 / TX_BUF_SIZE;
        self.fwd_cnt += Wrapping(n as u32);
        if (self.fwd_cnt - self.last_fwd_cnt_sent).0 >= (self.window / 4).max(CREDIT_UPDATE_AFTER) {
            self.pending |= pending::CREDIT_UPDATE;
        }
        // Another TX_BUF_SIZE moved (2^32 is a multiple of it, so the wrap counts too).
        if self.window < BULK_WINDOW && self.fwd_cnt.0 / TX_BUF_SIZE != before {
            self.wishes = true;
        }
    }

    /// Whether this connection asks for [`BULK_WINDOW`] now (asked once per [`TX_BUF_SIZE`]
    /// bytes moved while it has the small one).
    pub fn take_window_wish(&mut self) -> bool {
        std::mem::take(&mut self.wishes)
    }

    /// Whether it has [`BULK_WINDOW`].
    pub fn has_bulk_window(&self) -> bool {
        self.window == BULK_WINDOW
    }

    /// Grants [`BULK_WINDOW`]; the guest learns it from a credit update sent at once.
    pub fn grow_window(&mut self) {
        self.window = BULK_WINDOW;
        if self.state == State::Established {
            self.pending |= pending::CREDIT_UPDATE;
        }
    }

    /// The host side failed: a companion is registered again, anything else is reset.
    fn host_failed(&mut self) {
        if !self.host_lost() {
            self.reset();
        }
    }

    /// The muxer connected to host.sock again for a lost companion: the hello (`hello`) and
    /// the guest's request go out first, and host-server's answer is read here. `backoff` is
    /// the wait the muxer had reached, kept for a host side that ends again soon. Returns
    /// false (the stream dropped) when the connection is no longer waiting for one.
    pub(super) fn rebind(&mut self, stream: UnixStream, hello: Vec<u8>, backoff: Duration) -> bool {
        let Some(c) = self.companion.as_mut() else {
            return false;
        };
        if c.phase != Phase::Lost || self.state != State::Established {
            return false;
        }
        c.phase = Phase::Answering(Vec::new());
        c.backoff = backoff;
        self.prefix = hello;
        self.prefix.extend_from_slice(&c.request);
        self.stream = stream;
        self.write_shut = false;
        self.flush();
        true
    }

    /// Reads host-server's answer to a re-registration, never past its end.
    fn read_reregistration(&mut self) {
        let mut b = [0u8; MAX_KEPT_FRAME];
        loop {
            let (addr, kept) = match &self.companion {
                Some(c) => (c.addr, c.kept()),
                None => return,
            };
            let Some(Companion {
                phase: Phase::Answering(got),
                ..
            }) = self.companion.as_mut()
            else {
                return;
            };
            let want = match frame_len(got) {
                Ok(Some(total)) if total <= MAX_KEPT_FRAME => total,
                Ok(None) => HEADER_LEN,
                _ => return self.refused_again(Errno::EPROTO),
            };
            if got.len() == want {
                let answer = shared_proto::decode_exact::<ToGuest>(got);
                let port = self.udp().map(|u| u.local_port);
                return match (answer, port) {
                    (Ok(ToGuest::Listening { .. }), None) => self.registered_again(addr, kept),
                    (Ok(ToGuest::Associated { local }), Some(port)) if local.port() == port => {
                        self.registered_again(addr, kept);
                    }
                    (Ok(ToGuest::Failed(errno)), _) => self.refused_again(errno),
                    _ => self.refused_again(Errno::EPROTO),
                };
            }
            match (&self.stream).read(&mut b[..want - got.len()]) {
                Ok(0) => return self.host_failed(),
                Ok(n) => got.extend_from_slice(&b[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return self.host_failed(),
            }
        }
    }

    /// host-server has the companion's registration again: relaying resumes (a UDP server's
    /// guest bytes at the next frame boundary).
    fn registered_again(&mut self, addr: SocketAddrV4, kept: Kept) {
        let Some(c) = self.companion.as_mut() else {
            return;
        };
        c.phase = Phase::Live(Instant::now());
        if let Some(u) = c.udp.as_mut() {
            u.skip = !u.guest.at_boundary();
        }
        self.reregistered = Some(Reregistered::Again(kept, addr));
        // Whatever host-server sent after its answer is picked up by polling.
        self.flush();
    }

    /// host-server refused the re-registration. A listener's companion is reset, as when its
    /// host side ended before this existed (the guest's vsock listener then stays quiet). A UDP
    /// server's guest is given one `Failed(ENETDOWN)` frame, so its next receive fails as a
    /// process's does (see the muxer's docs), and its stream then stays open and quiet.
    fn refused_again(&mut self, errno: Errno) {
        let Some(c) = self.companion.as_mut() else {
            return;
        };
        self.reregistered = Some(Reregistered::Refused(c.kept(), c.addr, errno));
        let Some(u) = c.udp.as_mut() else {
            self.companion = None;
            return self.reset();
        };
        c.phase = Phase::Refused;
        u.host.cut();
        u.host.push_frame(
            &shared_proto::to_vec(&ToGuest::Failed(UDP_REFUSED))
                .expect("a Failed frame is a few bytes"),
        );
        self.prefix.clear();
        self.drop_guest_bytes();
    }

    /// Tears the connection down with an RST to the guest.
    pub fn reset(&mut self) {
        if self.state != State::Closed || self.pending != 0 {
            self.state = State::Closed;
            self.pending = pending::RST;
        }
        self.expiry = None;
    }

    /// Closed and nothing left to tell the guest: the muxer can drop it.
    pub fn is_done(&self) -> bool {
        self.state == State::Closed && self.pending == 0
    }

    /// The deadline passed: reset.
    pub fn expire(&mut self, now: Instant) {
        if self.expiry.is_some_and(|t| t <= now) {
            self.reset();
        }
    }

    fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Whether the connection has a packet for the guest.
    pub fn has_pending_rx(&self) -> bool {
        self.pending != 0 || self.can_read() || self.staged() > 0
    }

    /// A UDP server's whole frames staged for the guest that its credit lets go now.
    fn staged(&self) -> usize {
        match self.companion.as_ref().and_then(|c| c.udp.as_ref()) {
            Some(u) if self.state == State::Established => {
                u.host.ready().min(self.peer_credit() as usize)
            }
            _ => 0,
        }
    }

    fn can_read(&self) -> bool {
        self.state == State::Established
            && self.want_rw
            && !self.local_eof
            && (self.peer_credit() > 0 || !self.credit_requested)
    }

    /// The events the muxer should watch on the stream.
    pub fn interest(&self) -> EventSet {
        let mut e = EventSet::empty();
        if self.state == State::Closed {
            return e;
        }
        match self.companion.as_ref().map(|c| &c.phase) {
            // The dead stream is not watched while the muxer connects again, nor once refused.
            Some(Phase::Lost | Phase::Refused) => return e,
            Some(Phase::Answering(_)) => {
                e |= EventSet::IN;
                if !self.prefix.is_empty() {
                    e |= EventSet::OUT;
                }
                return e;
            }
            _ => {}
        }
        if self.state == State::Established && !self.want_rw && !self.local_eof {
            e |= EventSet::IN;
        }
        if !self.prefix.is_empty() || !self.tx_buf.is_empty() {
            e |= EventSet::OUT;
        }
        if self.state == State::LocalInit || self.is_companion() {
            // Only to notice the host process (host-server) giving up; HUP is always reported.
            e |= EventSet::READ_HANG_UP;
        }
        e
    }

    /// The stream is ready for `events`.
    pub fn notify(&mut self, events: EventSet) {
        if self.state == State::Closed {
            return;
        }
        if self.state == State::LocalInit {
            if events.intersects(EventSet::HANG_UP | EventSet::READ_HANG_UP | EventSet::ERROR) {
                self.reset();
            }
            return;
        }
        // host-server went away: noticed here, without waiting for a guest RX buffer to read
        // the EOF into (it never writes after `Listening`; what it wrote to a UDP server before
        // it died is staged here first, its whole frames for the guest).
        if self.is_companion()
            && !self.host_gone()
            && events.intersects(EventSet::HANG_UP | EventSet::READ_HANG_UP | EventSet::ERROR)
        {
            let mut stream = &self.stream;
            if let Some(u) = self.companion.as_mut().and_then(|c| c.udp.as_mut()) {
                u.host.drain(|room| stream.read(room));
            }
            if self.host_lost() {
                return;
            }
        }
        match self.companion.as_ref().map(|c| &c.phase) {
            Some(Phase::Lost | Phase::Refused) => return,
            Some(Phase::Answering(_)) => {
                if events.intersects(EventSet::OUT) {
                    self.flush();
                }
                if events.intersects(
                    EventSet::IN | EventSet::HANG_UP | EventSet::READ_HANG_UP | EventSet::ERROR,
                ) {
                    self.read_reregistration();
                }
                return;
            }
            _ => {}
        }
        if events.intersects(EventSet::OUT) {
            self.flush();
        }
        if self.state == State::Established
            && events.intersects(
                EventSet::IN | EventSet::HANG_UP | EventSet::READ_HANG_UP | EventSet::ERROR,
            )
        {
            // The read itself tells data from EOF from an error.
            self.want_rw = true;
        }
    }

    /// A packet from the guest for this connection.
    pub fn send_pkt(&mut self, hdr: &Header, data: &[u8]) {
        if self.state == State::Closed {
            return;
        }
        if hdr.op == op::RST {
            self.state = State::Closed;
            self.pending = 0;
            return;
        }
        self.take_credit(hdr);
        match (self.state, hdr.op) {
            (State::LocalInit, op::RESPONSE) => {
                self.state = State::Established;
                self.expiry = None;
                self.prefix = shared_proto::hybrid::ok_line(self.local_port).into_bytes();
                self.flush();
            }
            (State::Established, op::RW) => self.push_data(data),
            // A guest that closes its companion while it is registered again cancels that.
            (State::Established, op::SHUTDOWN) if self.host_gone() => self.reset(),
            (State::Established, op::SHUTDOWN) => {
                self.peer_shut |= hdr.flags & (SHUTDOWN_RCV | SHUTDOWN_SEND);
                self.flush();
                if self.state != State::Closed
                    && self.peer_shut == SHUTDOWN_RCV | SHUTDOWN_SEND
                    && self.expiry.is_none()
                {
                    self.expiry = Some(Instant::now() + TIMEOUT);
                }
            }
            // The REQUEST that created a guest connection only brings the guest's credit.
            (State::PeerInit, op::REQUEST)
            | (State::Established | State::PeerInit, op::CREDIT_UPDATE) => {}
            (State::Established, op::CREDIT_REQUEST) => self.pending |= pending::CREDIT_UPDATE,
            _ => self.reset(),
        }
    }

    /// The guest's credit, as every header it sends carries it.
    fn take_credit(&mut self, hdr: &Header) {
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
        if self.peer_credit() > 0 {
            self.credit_requested = false;
        }
    }

    /// Guest RW packets whose payloads are still in guest memory (`data`: a run of this
    /// connection's packets in ring order, `hdr` the last one's header): written to the stream
    /// straight from there, with one write, when nothing waits before them (one copy); whatever
    /// the stream does not take now is buffered as usual. Returns false, having done nothing,
    /// when they must go one by one through [`Self::send_pkt`] instead (any other packet or
    /// state; a run while the first frame is still being looked at).
    pub fn send_direct<B: BitmapSlice>(
        &mut self,
        hdr: &Header,
        data: &[VolatileSlice<'_, B>],
    ) -> bool {
        let len: usize = data.iter().map(VolatileSlice::len).sum();
        if self.state != State::Established
            || hdr.op != op::RW
            || data.is_empty()
            || data.len() > super::iov::MAX_IOV
            || !self.tx_buf.is_empty()
            || !self.prefix.is_empty()
            || self.gate != Gate::Open
            || self.peer_shut & SHUTDOWN_SEND != 0
            || len > self.window as usize
            || self.host_gone()
            // A UDP server's frames are counted on the copying path (and a first packet larger
            // than a request kept, which may start a UDP server's first datagram, takes it).
            || self.companion.as_ref().is_some_and(|c| c.udp.is_some())
            || self.first.is_some() && (data.len() > 1 || len > MAX_KEPT_FRAME)
        {
            return false;
        }
        self.take_credit(hdr);
        if self.first.is_some() {
            let mut head = vec![0u8; len];
            if data[0].read_slice(&mut head, 0).is_err() {
                self.first = None;
            } else if self.note_guest_bytes(&head) != Some(0) {
                // Reset (not frames): nothing goes to the stream.
                return true;
            }
        }
        let written = match super::iov::send_from(self.stream.as_fd(), data) {
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => 0,
            Err(_) => {
                self.host_failed();
                return true;
            }
        };
        self.forwarded(written);
        Metrics::add(&METRICS.vsock_tx_bytes, written as u64);
        // The rest, from where the write stopped.
        let mut skip = written;
        for d in data {
            if skip >= d.len() {
                skip -= d.len();
                continue;
            }
            let mut rest = vec![0u8; d.len() - skip];
            if d.read_slice(&mut rest, skip).is_err() {
                self.reset();
                return true;
            }
            self.tx_buf.extend(rest);
            skip = 0;
        }
        self.flush();
        true
    }

    fn push_data(&mut self, data: &[u8]) {
        if self.peer_shut & SHUTDOWN_SEND != 0 {
            // Data after the guest said it would send no more.
            self.reset();
            return;
        }
        if self.tx_buf.len() + data.len() > self.window as usize {
            // More than the credit we gave: the guest ignored it.
            self.reset();
            return;
        }
        let Some(skipped) = self.note_guest_bytes(data) else {
            return;
        };
        self.forwarded(skipped);
        self.tx_buf.extend(&data[skipped..]);
        if self.host_gone() {
            self.drop_guest_bytes();
        }
        self.flush();
    }

    /// Writes the prefix and buffered guest bytes; applies a pending half-close or close once
    /// the buffer is empty; asks for a credit update when the guest's view has gone stale.
    fn flush(&mut self) {
        if self
            .companion
            .as_ref()
            .is_some_and(|c| matches!(c.phase, Phase::Lost | Phase::Refused))
        {
            // Nothing goes to the dead stream; the muxer is connecting again (or gave up).
            return;
        }
        while !self.prefix.is_empty() {
            match self.stream.write(&self.prefix) {
                Ok(n) => {
                    self.prefix.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return self.host_failed(),
            }
        }
        while !self.tx_buf.is_empty() {
            let allowed = self.writable();
            if allowed == 0 {
                break;
            }
            let (front, _) = self.tx_buf.as_slices();
            let front = &front[..front.len().min(allowed)];
            match self.stream.write(front) {
                Ok(n) => {
                    self.tx_buf.drain(..n);
                    self.forwarded(n);
                    Metrics::add(&METRICS.vsock_tx_bytes, n as u64);
                    if let Gate::Request(left) = &mut self.gate {
                        *left -= n;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return self.host_failed(),
            }
        }
        if !self.tx_buf.is_empty() || self.gate != Gate::Open {
            // A half-close waits for the held bytes, and for the stream they go to.
            return;
        }
        if self.peer_shut & SHUTDOWN_SEND != 0 && !self.write_shut {
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
            self.write_shut = true;
        }
        let both = SHUTDOWN_RCV | SHUTDOWN_SEND;
        if self.peer_shut == both || (self.peer_shut & SHUTDOWN_SEND != 0 && self.local_eof) {
            self.reset();
        }
    }

    /// How many of the buffered guest bytes may be written now (see [`Gate`]).
    fn writable(&mut self) -> usize {
        if self.gate == Gate::Header {
            if self.tx_buf.len() < HEADER_LEN {
                return 0;
            }
            let head: Vec<u8> = self.tx_buf.iter().take(HEADER_LEN).copied().collect();
            self.gate = match frame_len(&head) {
                Ok(Some(total)) => Gate::Request(total),
                // Not a frame: host-server will refuse it; nothing is held back.
                _ => Gate::Open,
            };
        }
        match self.gate {
            Gate::Open => self.tx_buf.len(),
            Gate::Header => 0,
            Gate::Request(left) => left.min(self.tx_buf.len()),
        }
    }

    /// Reads up to `max` bytes for the guest into `buf`: from the stream, or while host-server's
    /// answer is awaited, the answer (never past its end) with whatever descriptor comes with
    /// it.
    fn read_for_guest<T: RxBuf + ?Sized>(
        &mut self,
        buf: &mut T,
        max: usize,
    ) -> std::io::Result<usize> {
        let Some(answer) = self.answer.as_mut() else {
            if let Some(u) = self.companion.as_mut().and_then(|c| c.udp.as_mut()) {
                return read_whole_frames(u, &self.stream, buf, max);
            }
            return buf.read_from(&self.stream, max);
        };
        // The answer is a few bytes; it goes through this buffer (recvmsg takes plain memory).
        let mut bytes = [0u8; 256];
        let max = max.min(answer.room()).min(bytes.len());
        let (n, fd) = outsock_fdpass::recv_with_fd(self.stream.as_raw_fd(), &mut bytes[..max])?;
        if let Some(fd) = fd {
            let refusal = if !answer.head.is_empty() || answer.socket.is_some() {
                Some(Refused::Unexpected)
            } else if rustix::net::sockopt::socket_type(&fd).ok()
                != Some(rustix::net::SocketType::STREAM)
            {
                Some(Refused::NotAStreamSocket)
            } else {
                answer.socket = Some(fd);
                None
            };
            if let Some(r) = refusal {
                // The descriptor (if not kept above) closes here.
                self.refused = Some(r);
                return Err(ErrorKind::InvalidData.into());
            }
        }
        let got = &bytes[..n];
        buf.put(got)?;
        match answer.left.as_mut() {
            Some(left) => {
                *left -= n;
                if answer.body.len() + n <= MAX_KEPT_FRAME {
                    answer.body.extend_from_slice(got);
                }
            }
            None => {
                answer.head.extend_from_slice(got);
                if answer.head.len() == HEADER_LEN {
                    match frame_len(&answer.head) {
                        Ok(Some(total)) => answer.left = Some(total - HEADER_LEN),
                        // Not a frame: no socket is taken; the stream is relayed.
                        _ => answer.left = Some(0),
                    }
                }
            }
        }
        if n > 0 && answer.complete() {
            self.answer_done()?;
        }
        Ok(n)
    }

    /// The whole answer is in: swap to the socket that came with it, if one did, and let the
    /// held guest bytes go.
    fn answer_done(&mut self) -> std::io::Result<()> {
        let Some(answer) = self.answer.take() else {
            return Ok(());
        };
        if let Some(c) = self.companion.as_mut() {
            let mut frame = answer.head.clone();
            frame.extend_from_slice(&answer.body);
            let registered = match (shared_proto::decode_exact::<ToGuest>(&frame), &mut c.udp) {
                (Ok(ToGuest::Listening { .. }), None) => true,
                (Ok(ToGuest::Associated { local }), Some(u)) => {
                    u.local_port = local.port();
                    true
                }
                _ => false,
            };
            if registered && answer.socket.is_none() && c.phase == Phase::Asked {
                c.phase = Phase::Live(Instant::now());
            } else {
                self.companion = None;
            }
        }
        if let Some(fd) = answer.socket {
            let socket = UnixStream::from(fd);
            socket.set_nonblocking(true)?;
            let control = std::mem::replace(&mut self.stream, socket);
            self.swapped_from = Some(control.as_raw_fd());
            self.control = Some(control);
            // Whatever the peer sent already is picked up at once.
            self.want_rw = true;
        }
        self.gate = Gate::Open;
        self.flush();
        Ok(())
    }

    fn header(&self, op: u16) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: self.peer_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: self.window,
            fwd_cnt: self.fwd_cnt.0,
        }
    }

    /// The next packet for the guest, its payload (if any) in `buf[..len]`; `None` when there
    /// is nothing to send now.
    pub fn recv_pkt<T: RxBuf + ?Sized>(&mut self, buf: &mut T) -> Option<Header> {
        let h = self.next_pkt(buf)?;
        // Every header carries our credit: the guest's view is fresh again.
        self.last_fwd_cnt_sent = Wrapping(h.fwd_cnt);
        self.pending &= !pending::CREDIT_UPDATE;
        Some(h)
    }

    /// Whether to ask the guest for its credit before it runs out: under half its buffer left
    /// (none left: the request of [`Self::next_pkt`]'s own), and a quarter of it sent since we
    /// last asked. Linux reports what its reader consumed only once less than 64 KiB of its
    /// buffer would be left unreported, so without asking we would read the socket to the last
    /// byte of credit and then wait for the report's round trip; asked, the guest answers at
    /// once with what its reader has taken so far. Never more than one request per quarter
    /// buffer of data: a guest whose reader has stopped is asked no more once the credit is
    /// gone.
    fn asks_early(&self, credit: u32) -> bool {
        let quarter = self.peer_buf_alloc / 4;
        credit > 0 && credit < 2 * quarter && (self.rx_cnt - self.asked_at).0 >= quarter
    }

    /// The header of an RW packet of `n` bytes for the guest, counted as sent.
    fn rw_header(&mut self, n: usize) -> Header {
        self.rx_cnt += Wrapping(n as u32);
        Metrics::add(&METRICS.vsock_rx_bytes, n as u64);
        let mut h = self.header(op::RW);
        h.len = n as u32;
        h
    }

    fn take(&mut self, bit: u8) -> bool {
        let had = self.pending & bit != 0;
        self.pending &= !bit;
        had
    }

    fn next_pkt<T: RxBuf + ?Sized>(&mut self, buf: &mut T) -> Option<Header> {
        if self.take(pending::RST) {
            self.pending = 0;
            return Some(self.header(op::RST));
        }
        if self.take(pending::REQUEST) {
            return Some(self.header(op::REQUEST));
        }
        if self.take(pending::RESPONSE) {
            self.state = State::Established;
            // Anything the host wrote before the guest could read is picked up by polling.
            return Some(self.header(op::RESPONSE));
        }
        if self.take(pending::CREDIT_REQUEST) {
            return Some(self.header(op::CREDIT_REQUEST));
        }
        // A UDP server's whole frames go out whatever became of host-server since they came.
        let staged = self.staged().min(buf.room());
        if staged > 0 {
            if let Some(u) = self.udp() {
                if buf.put(u.host.peek(staged)).is_ok() {
                    u.host.consume(staged);
                    return Some(self.rw_header(staged));
                }
            }
        }
        if self.state == State::Established && self.want_rw && !self.local_eof {
            let credit = self.peer_credit();
            if self.asks_early(credit) {
                self.asked_at = self.rx_cnt;
                return Some(self.header(op::CREDIT_REQUEST));
            }
            if credit == 0 {
                if !self.credit_requested {
                    self.credit_requested = true;
                    self.asked_at = self.rx_cnt;
                    return Some(self.header(op::CREDIT_REQUEST));
                }
            } else {
                let max = buf.room().min(credit as usize);
                if max > 0 {
                    match self.read_for_guest(buf, max) {
                        // A companion's host side that ends is registered again, unseen by
                        // the guest.
                        Ok(0) if self.host_lost() => {}
                        Ok(0) => {
                            self.local_eof = true;
                            self.want_rw = false;
                            self.pending |= pending::SHUTDOWN;
                        }
                        Ok(n) => return Some(self.rw_header(n)),
                        Err(e) if e.kind() == ErrorKind::WouldBlock => self.want_rw = false,
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(_) if self.host_lost() => {}
                        Err(_) => {
                            self.reset();
                            self.pending = 0;
                            return Some(self.header(op::RST));
                        }
                    }
                }
            }
        }
        if self.take(pending::SHUTDOWN) {
            let mut h = self.header(op::SHUTDOWN);
            h.flags = SHUTDOWN_SEND;
            if self.peer_shut & SHUTDOWN_SEND != 0 && self.tx_buf.is_empty() {
                // Both sides are done sending: close after this packet.
                self.reset();
            }
            return Some(h);
        }
        if self.pending & pending::CREDIT_UPDATE != 0 {
            return Some(self.header(op::CREDIT_UPDATE));
        }
        None
    }
}
