//! The keeper: process-mode listeners and UDP servers outlive host-server. One thread per
//! supervisor holds, for every listener made here or by liboutsock in the programs it serves,
//! and for every UDP server association liboutsock opens (a port of its own), a copy of the
//! host's end of its packet channel, its request (`Listen` or `Udp`), and a stream on which
//! that request was answered (host-server keeps such a stream open while the listener or
//! association lives, see `ListenRequest::channel` and `UdpRequest::channel`).
//!
//! - That stream ends while the channel's other end is still open (no `POLLHUP` on ours: some
//!   process still holds the program's end): host-server went away (a restart, a crash, an
//!   upgrade). The keeper connects again with backoff ([`FIRST_RETRY`] doubling to
//!   [`LAST_RETRY`], for as long as the program's end lives) and sends the same request with
//!   the same channel. Meanwhile the program's end never reads EOF — the keeper's copy keeps
//!   the channel open —, so accept and recv block or answer EAGAIN and epoll stays quiet: no
//!   spin. What the program sends meanwhile (a UDP server's datagrams) is read here and
//!   dropped, as UDP may, so its sends never block on a full channel.
//! - host-server refuses the request again (the port no longer allowed, taken): one line on
//!   stderr naming the address and the errno, then one `Failed` packet into the channel — the
//!   next accept fails with EINVAL, as accept on a socket that is no longer listening does
//!   natively; the next receive of a UDP server fails with ENETDOWN, the network it was bound
//!   to gone — and the channel is kept open silently (what the program sends still dropped),
//!   so it is never readable again.
//! - `POLLHUP` on the channel (every copy of the program's end closed): the listener or
//!   association ended; the keeper forgets it.
//!
//! Listeners made by the supervisor are handed over in process ([`Keeper::keep`]); liboutsock
//! hands its own over the keeper's abstract Unix socket, named to the program in
//! `OUTSOCK_KEEPER` ([`shared_proto::outsource::KEEPER_ENV`]): one packet, the `Listen` or
//! `Udp` frame with the channel attached. Only peers of the supervisor's own uid (or root) are
//! heard; the keeper registers the channel with host-server at once, which answers it as a
//! live one's (and so gets the keeper its own stream). A static program's UDP server is the
//! supervisor's own association, opened again by its relay (`udp::reopen`).

use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use std::net::SocketAddrV4;

use shared_proto::outsource::{ListenRequest, UdpRequest};
use shared_proto::{decode_exact, to_vec, Errno, ToGuest, ToHost};

use crate::sys;

/// The first wait before connecting to host-server again.
const FIRST_RETRY: Duration = Duration::from_millis(20);
/// The longest wait between two tries.
const LAST_RETRY: Duration = Duration::from_secs(1);
/// How long host-server may take to answer a registration.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// The errno an accept reports once host-server refused the listener again.
const REFUSED_ACCEPT: Errno = Errno::EINVAL;
/// The errno a UDP server's receive reports once host-server refused its association again.
const REFUSED_RECV: Errno = Errno(libc::ENETDOWN as u16);

/// What a kept channel serves: its request.
#[derive(Debug, Clone)]
enum Held {
    Listen(ListenRequest),
    Udp(UdpRequest),
}

impl Held {
    fn frame(&self) -> ToHost {
        match self {
            Self::Listen(l) => ToHost::Listen(l.clone()),
            Self::Udp(u) => ToHost::Udp(u.clone()),
        }
    }

    fn addr(&self) -> SocketAddrV4 {
        match self {
            Self::Listen(l) => l.addr,
            Self::Udp(u) => u.bind,
        }
    }

    /// Whether `answer` registers it.
    fn answered(&self, answer: &ToGuest) -> bool {
        matches!(
            (self, answer),
            (Self::Listen(_), ToGuest::Listening { .. })
                | (Self::Udp(_), ToGuest::Associated { .. })
        )
    }

    /// What the program's next accept or receive reports once host-server refused it, and
    /// the words for the log line: what it is, and the call that fails.
    fn refused(&self) -> (Errno, &'static str, &'static str) {
        match self {
            Self::Listen(_) => (REFUSED_ACCEPT, "listener", "accept"),
            Self::Udp(_) => (REFUSED_RECV, "UDP server", "a receive"),
        }
    }
}

/// A handle on the keeper's thread.
#[derive(Debug)]
pub struct Keeper {
    tx: mpsc::Sender<Kept>,
    wake: OwnedFd,
    name: String,
}

/// One listener or UDP server the keeper holds.
#[derive(Debug)]
struct Kept {
    /// The host's end of the packet channel.
    channel: OwnedFd,
    req: Held,
    /// The stream host-server holds open while it serves the channel; `None` while it is
    /// away, or once it refused.
    stream: Option<UnixStream>,
    /// When to register again (`None`: registered, or refused).
    retry_at: Option<Instant>,
    backoff: Duration,
}

impl Kept {
    fn new(channel: OwnedFd, req: Held, stream: Option<UnixStream>) -> Self {
        let retry_at = stream.is_none().then(Instant::now);
        Self {
            channel,
            req,
            stream,
            retry_at,
            backoff: FIRST_RETRY,
        }
    }
}

impl Keeper {
    /// Starts the keeper for host-server at `host`: its socket, under a fresh abstract name,
    /// and its thread.
    ///
    /// # Errors
    /// When the socket or the thread cannot be made.
    pub fn start(host: PathBuf) -> io::Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!("outsock-keeper-{}-{nanos:08x}", std::process::id());
        let listener = UnixListener::bind_addr(&SocketAddr::from_abstract_name(&name)?)?;
        listener.set_nonblocking(true)?;
        let wake = sys::eventfd()?;
        let wake_thread = wake.try_clone()?;
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("outsock-keeper".into())
            .spawn(move || run(&host, &listener, &wake_thread, &rx))?;
        Ok(Self { tx, wake, name })
    }

    /// The keeper's abstract socket name (without its leading NUL), for `OUTSOCK_KEEPER`.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Hands over a listener made here: a copy of the host's end of its channel, its request,
    /// and the stream it was answered on.
    pub fn keep(&self, channel: OwnedFd, req: ListenRequest, stream: UnixStream) {
        if self
            .tx
            .send(Kept::new(channel, Held::Listen(req), Some(stream)))
            .is_ok()
        {
            let _ = sys::write_fd(self.wake.as_raw_fd(), &1u64.to_ne_bytes());
        }
    }
}

fn pollfd(fd: RawFd, events: i16) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// The keeper's thread: until the supervisor exits.
fn run(host: &std::path::Path, listener: &UnixListener, wake: &OwnedFd, rx: &mpsc::Receiver<Kept>) {
    let mut kept: Vec<Kept> = Vec::new();
    let mut fds = Vec::new();
    loop {
        kept.extend(rx.try_iter());
        fds.clear();
        fds.push(pollfd(wake.as_raw_fd(), libc::POLLIN));
        fds.push(pollfd(listener.as_raw_fd(), libc::POLLIN));
        for k in &kept {
            // POLLHUP (every copy of the program's end closed) comes unasked; what the program
            // sends is ours to read only while host-server does not serve the channel.
            let events = if k.stream.is_none() { libc::POLLIN } else { 0 };
            fds.push(pollfd(k.channel.as_raw_fd(), events));
            fds.push(pollfd(
                k.stream.as_ref().map_or(-1, AsRawFd::as_raw_fd),
                libc::POLLIN,
            ));
        }
        let now = Instant::now();
        let timeout = kept
            .iter()
            .filter_map(|k| k.retry_at)
            .min()
            .map_or(-1, |at| {
                i32::try_from(at.saturating_duration_since(now).as_millis()).unwrap_or(i32::MAX)
            });
        if sys::poll(&mut fds, timeout).is_err() {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        if fds[0].revents != 0 {
            let mut b = [0u8; 8];
            let _ = sys::read_fd(wake.as_raw_fd(), &mut b);
        }
        if fds[1].revents != 0 {
            while let Ok((conn, _)) = listener.accept() {
                if let Some(k) = handed_over(&conn) {
                    kept.push(k);
                }
            }
        }
        let revents: Vec<(i16, i16)> = fds[2..]
            .chunks(2)
            .map(|p| (p[0].revents, p[1].revents))
            .collect();
        let mut i = 0;
        kept.retain_mut(|k| {
            let (channel, stream) = revents.get(i).copied().unwrap_or((0, 0));
            i += 1;
            if channel & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
                return false;
            }
            if channel & libc::POLLIN != 0 && k.stream.is_none() {
                drain(&k.channel);
            }
            if stream != 0 && k.stream.as_ref().is_some_and(ended) {
                k.stream = None;
                k.backoff = FIRST_RETRY;
                k.retry_at = Some(Instant::now());
            }
            true
        });
        let now = Instant::now();
        for k in &mut kept {
            if k.retry_at.is_some_and(|at| at <= now) {
                register(host, k);
            }
        }
    }
}

/// Drops what the program sent on a channel nobody serves (at most a bounded batch a wake-up:
/// the rest makes the channel readable again).
fn drain(channel: &OwnedFd) {
    let mut buf = [0u8; 64];
    for _ in 0..256 {
        if sys::recv_packet(channel.as_raw_fd(), &mut buf).is_err() {
            return;
        }
    }
}

/// Whether a kept stream has ended (anything readable on it is its end: host-server sends
/// nothing more on it).
fn ended(stream: &UnixStream) -> bool {
    let mut b = [0u8; 1];
    !matches!(
        sys::recv_packet(stream.as_raw_fd(), &mut b),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock
    )
}

/// A listener or UDP server liboutsock hands over on the keeper's socket: one `Listen` or
/// `Udp` frame that brings its channel, from a peer of our uid or root, acknowledged with one
/// byte; anything else is dropped unanswered (liboutsock then keeps a copy itself).
fn handed_over(conn: &UnixStream) -> Option<Kept> {
    let uid = sys::peer_uid(conn.as_raw_fd()).ok()?;
    if uid != 0 && uid != sys::euid() {
        return None;
    }
    conn.set_nonblocking(false).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    let mut buf = [0u8; 256];
    let (n, passed) = outsock_fdpass::recv_with_fd(conn.as_raw_fd(), &mut buf).ok()?;
    let channel = passed?;
    let req = match decode_exact::<ToHost>(buf.get(..n)?) {
        Ok(ToHost::Listen(req)) if req.channel && req.pass_fd => Held::Listen(req),
        Ok(ToHost::Udp(req)) if req.channel && req.bind.port() != 0 => Held::Udp(req),
        _ => return None,
    };
    let ty = sys::sockopt_int(channel.as_raw_fd(), libc::SOL_SOCKET, libc::SO_TYPE).ok()?;
    if ty != libc::SOCK_SEQPACKET {
        return None;
    }
    // Taken: liboutsock keeps no copy of its own then.
    (&*conn).write_all(&[1]).ok()?;
    Some(Kept::new(channel, req, None))
}

/// How one registration went.
enum Registered {
    Yes(UnixStream),
    /// host-server answered with a refusal.
    Refused(Errno),
    /// host-server is away (or did not answer): try again later.
    Later,
}

/// Registers `k`'s channel with host-server once, and notes what follows.
fn register(host: &std::path::Path, k: &mut Kept) {
    match register_once(host, &k.channel, &k.req) {
        Registered::Yes(stream) => {
            k.stream = Some(stream);
            k.retry_at = None;
            k.backoff = FIRST_RETRY;
        }
        Registered::Refused(errno) => {
            let (reported, what, call) = k.req.refused();
            eprintln!(
                "outsock: host-server refused {what} {} again ({errno}): {call} on it fails \
                 with {reported} once, then waits",
                k.req.addr()
            );
            if let Ok(bytes) = to_vec(&ToGuest::Failed(reported)) {
                let _ = sys::send_to(
                    k.channel.as_raw_fd(),
                    &bytes,
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                    &[],
                );
            }
            k.retry_at = None;
        }
        Registered::Later => {
            k.retry_at = Some(Instant::now() + k.backoff);
            k.backoff = (k.backoff * 2).min(LAST_RETRY);
        }
    }
}

fn register_once(host: &std::path::Path, channel: &OwnedFd, req: &Held) -> Registered {
    let Ok(frame) = to_vec(&req.frame()) else {
        return Registered::Refused(Errno::EINVAL);
    };
    let Ok(stream) = UnixStream::connect(host) else {
        return Registered::Later;
    };
    if stream.set_read_timeout(Some(ANSWER_TIMEOUT)).is_err() {
        return Registered::Later;
    }
    let sent = outsock_fdpass::sendmsg_fd::<outsock_fdpass::Libc>(
        stream.as_raw_fd(),
        &frame,
        channel.as_raw_fd(),
        libc::MSG_NOSIGNAL,
    );
    match sent {
        Ok(n) if (&stream).write_all(&frame[n..]).is_ok() => {}
        _ => return Registered::Later,
    }
    match crate::host::read_frame(&stream) {
        Ok((answer, _)) if req.answered(&answer) => {
            if stream.set_nonblocking(true).is_err() {
                return Registered::Later;
            }
            Registered::Yes(stream)
        }
        // Refusals that pass (host-server starting up, a limit of the moment): later.
        Ok((ToGuest::Failed(e), _)) if crate::host::passing(e) => Registered::Later,
        Ok((ToGuest::Failed(e), _)) => Registered::Refused(e),
        _ => Registered::Later,
    }
}
