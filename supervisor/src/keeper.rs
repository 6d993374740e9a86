//! The keeper: process-mode listeners outlive host-server. One thread per supervisor holds, for
//! every listener made here or by liboutsock in the programs it serves, a copy of the host's
//! end of the listener's packet channel, the `Listen` request, and a stream on which that
//! request was answered (host-server keeps such a stream open while the listener lives, see
//! `ListenRequest::channel`).
//!
//! - That stream ends while the channel's other end is still open (no `POLLHUP` on ours: some
//!   process still holds the program's end): host-server went away (a restart, a crash, an
//!   upgrade). The keeper connects again with backoff ([`FIRST_RETRY`] doubling to
//!   [`LAST_RETRY`], for as long as the listener lives) and sends the same request with the
//!   same channel. Meanwhile the program's end never reads EOF — the keeper's copy keeps the
//!   channel open —, so accept blocks or answers EAGAIN and epoll stays quiet: no spin.
//! - host-server refuses the request again (the port no longer allowed, taken): one line on
//!   stderr naming the address and the errno, then one `Failed(EINVAL)` packet into the
//!   channel — the next accept fails with EINVAL, as accept on a socket that is no longer
//!   listening does natively — and the channel is kept open silently, so the listener is never
//!   readable again.
//! - `POLLHUP` on the channel (every copy of the program's end closed): the listener ended;
//!   the keeper forgets it.
//!
//! Listeners made by the supervisor are handed over in process ([`Keeper::keep`]); liboutsock
//! hands its own over the keeper's abstract Unix socket, named to the program in
//! `OUTSOCK_KEEPER` ([`shared_proto::outsource::KEEPER_ENV`]): one packet, the `Listen` frame
//! with the channel attached. Only peers of the supervisor's own uid (or root) are heard; the
//! keeper registers the channel with host-server at once, which answers it as a live
//! listener's (and so gets the keeper its own stream).

use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use shared_proto::outsource::ListenRequest;
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

/// A handle on the keeper's thread.
#[derive(Debug)]
pub struct Keeper {
    tx: mpsc::Sender<Kept>,
    wake: OwnedFd,
    name: String,
}

/// One listener the keeper holds.
#[derive(Debug)]
struct Kept {
    /// The host's end of the packet channel.
    channel: OwnedFd,
    req: ListenRequest,
    /// The stream host-server holds open while it serves the listener; `None` while it is
    /// away.
    stream: Option<UnixStream>,
    /// When to register again (`None`: registered, or refused).
    retry_at: Option<Instant>,
    backoff: Duration,
}

impl Kept {
    fn new(channel: OwnedFd, req: ListenRequest, stream: Option<UnixStream>) -> Self {
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
        if self.tx.send(Kept::new(channel, req, Some(stream))).is_ok() {
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
            // No events asked: POLLHUP (every copy of the program's end closed) comes anyway.
            fds.push(pollfd(k.channel.as_raw_fd(), 0));
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

/// Whether a kept stream has ended (anything readable on it is its end: host-server sends
/// nothing more on it).
fn ended(stream: &UnixStream) -> bool {
    let mut b = [0u8; 1];
    !matches!(
        sys::recv_packet(stream.as_raw_fd(), &mut b),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock
    )
}

/// A listener liboutsock hands over on the keeper's socket: one `Listen` frame that brings
/// its channel, from a peer of our uid or root, acknowledged with one byte; anything else is
/// dropped unanswered (liboutsock then keeps a copy itself).
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
    match decode_exact::<ToHost>(buf.get(..n)?) {
        Ok(ToHost::Listen(req)) if req.channel && req.pass_fd => {
            let ty = sys::sockopt_int(channel.as_raw_fd(), libc::SOL_SOCKET, libc::SO_TYPE).ok()?;
            if ty != libc::SOCK_SEQPACKET {
                return None;
            }
            // Taken: liboutsock keeps no copy of its own then.
            (&*conn).write_all(&[1]).ok()?;
            Some(Kept::new(channel, req, None))
        }
        _ => None,
    }
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
            eprintln!(
                "outsock: host-server refused listener {} again ({errno}): accept on it fails \
                 with {REFUSED_ACCEPT} once, then waits",
                k.req.addr
            );
            if let Ok(bytes) = to_vec(&ToGuest::Failed(REFUSED_ACCEPT)) {
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

fn register_once(host: &std::path::Path, channel: &OwnedFd, req: &ListenRequest) -> Registered {
    let Ok(frame) = to_vec(&ToHost::Listen(req.clone())) else {
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
        Ok((ToGuest::Listening { .. }, _)) => {
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
