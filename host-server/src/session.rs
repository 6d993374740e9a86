//! One host.sock stream from accept to close: admit the peer by SO_PEERCRED (VMMs, root and the
//! process-mode users; anyone else gets `Failed(EACCES)` before a byte is read), identify it,
//! read the request under the request timeout — a stream still silent after
//! [`AWAITING_GRACE`] counts among its uid's streams awaiting their request
//! (`limits.max_awaiting_request`; beyond it the stream is answered EAGAIN and closed at once) —
//! apply the socket limit, and dispatch to outbound TCP, a guest listener, a UDP association, or
//! a connected UDP socket handed to a process. A VMM's hello that says it takes sockets
//! (`VmHello::takes_sockets`) lets outbound TCP hand the VMM the connected socket, and a guest
//! listener hand it each accepted one (see [`crate::outbound`], [`crate::inbound`]). Refusals are answered with a `Failed(errno)`
//! frame before the stream closes.
//!
//! A process's stream whose connect was answered with the socket passed while connecting
//! (`Connect` with `pass_fd` and `nonblocking`) stays open for the process's next request, read
//! and admitted exactly as a new stream's first one (identity, the awaiting cap, the request
//! timeout, the socket limit), so a client may keep one stream for many connects and skip a
//! stream's set-up per socket. Such a stream that stays idle past the request timeout, or is
//! over the awaiting cap, is closed without an answer (its client has no request waiting; it
//! opens a new stream), and so is every idle kept stream once host-server starts draining (a
//! drain takes no new work). A client that closes its stream after the answer (liboutsock)
//! changes nothing. A VMM's control stream (a guest connection whose socket went to the VMM) that
//! says [`ToHost::Ended`] is kept the same way, and its next request is made under the hello it
//! opened with (a second hello is refused, as on any stream).

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::time::Duration;

use shared_proto::outsource::{ToGuest, ToHost, VmHello};
use shared_proto::Errno;
use tokio::net::UnixStream;

use crate::config::VmSettings;
use crate::context::{refuse, Request, Shared};
use crate::framed::{FrameError, FrameReader};
use crate::identity::{IdentityError, Opened, Opening, PeerCred};
use crate::inbound::ListenerParts;
use crate::limits::Resource;
use crate::metrics::Event;
use crate::ratelimit::LogLimit;

/// What the stream becomes after its request.
#[derive(Debug)]
pub(crate) enum Next {
    /// Done; the stream closes.
    Closed,
    /// A guest listener: the listen actor takes over.
    Listen(Box<ListenerParts>),
}

/// Serves one stream.
pub(crate) async fn serve(mut stream: UnixStream, shared: Shared) -> Next {
    shared.metrics.record(Event::StreamAccepted);
    let cred = match stream.peer_cred() {
        Ok(c) => PeerCred {
            uid: c.uid(),
            gid: c.gid(),
            pid: c.pid(),
        },
        Err(e) => {
            tracing::warn!(error = %e, "no peer credentials; closing");
            return Next::Closed;
        }
    };
    if !shared.settings.may_use_host_socket(cred.uid, cred.gid) {
        static LOG: LogLimit = LogLimit::new();
        if LOG.allow() {
            tracing::info!(
                uid = cred.uid,
                gid = cred.gid,
                pid = ?cred.pid,
                "host.sock peer refused: not a VMM, root or a process-mode user (process_uids, process_gids)"
            );
        }
        shared.metrics.record(Event::StreamRefused("forbidden"));
        refuse(&mut stream, Errno::EACCES).await;
        return Next::Closed;
    }
    // Whether this stream has carried a request before (see the module docs), and the hello
    // it opened with: a kept VMM stream's next request is made under it.
    let mut again = None;
    loop {
        match serve_request(stream, cred, &shared, again).await {
            Served::Next(s, hello) => {
                stream = s;
                again = Some(hello);
            }
            Served::Done(next) => return next,
        }
    }
}

/// How one request on a stream ended.
enum Served {
    /// The stream may carry another request, under the hello it opened with.
    Next(UnixStream, Option<VmHello>),
    /// What the stream became.
    Done(Next),
}

/// Reads, admits and carries out one request on `stream`; `again` when it carried one before,
/// with the hello it opened with.
#[allow(clippy::too_many_lines)]
async fn serve_request(
    mut stream: UnixStream,
    cred: PeerCred,
    shared: &Shared,
    again: Option<Option<VmHello>>,
) -> Served {
    let mut reader = FrameReader::new();
    let mut passed = None;
    let kept_hello = again.clone().flatten();
    let again = again.is_some();
    let opening = read_request(
        &mut stream,
        &mut reader,
        &mut passed,
        cred,
        kept_hello,
        again,
        shared,
    );
    let opened = match opening.await {
        // A kept stream that its client closed, or that stays idle, ends quietly: its client
        // waits for no answer.
        Start::Read(Err(Some(Errno::ECONNRESET))) | Start::TimedOut | Start::OverCap if again => {
            return Served::Done(Next::Closed)
        }
        Start::Read(r) => r,
        Start::TimedOut => Err(None),
        Start::OverCap => {
            shared
                .metrics
                .record(Event::StreamRefused("awaiting_request_limit"));
            static LOG: LogLimit = LogLimit::new();
            if LOG.allow() {
                tracing::info!(
                    uid = cred.uid,
                    pid = ?cred.pid,
                    "too many streams awaiting their request; refusing"
                );
            }
            refuse_now(&stream, Errno::EAGAIN);
            return Served::Done(Next::Closed);
        }
    };
    let Opened {
        identity,
        request,
        hello,
    } = match opened {
        Ok(o) => o,
        Err(Some(errno)) => {
            refuse(&mut stream, errno).await;
            return Served::Done(Next::Closed);
        }
        Err(None) => {
            shared
                .metrics
                .record(Event::StreamRefused("request_timeout"));
            refuse(&mut stream, Errno::ETIMEDOUT).await;
            return Served::Done(Next::Closed);
        }
    };
    if let Some(h) = &hello {
        shared.vm_cids.saw(&h.vm, h.cid);
    }
    let permit = match shared.limits.acquire(&identity, Resource::Socket) {
        Ok(p) => p,
        Err(errno) => {
            tracing::debug!(%identity, %errno, "socket limit reached");
            shared.metrics.record(Event::StreamRefused("socket_limit"));
            refuse(&mut stream, errno).await;
            return Served::Done(Next::Closed);
        }
    };
    // A VMM that takes sockets gets its guest's connected socket with the answer.
    let vmm_takes = hello.as_ref().is_some_and(|h| h.takes_sockets);
    let req = Request {
        stream,
        identity,
        leftover: reader.into_leftover(),
        permit,
        passed,
    };
    let next = match request {
        ToHost::Connect(c) => match crate::outbound::connect(req, c, vmm_takes, shared).await {
            Some(kept) => return Served::Next(kept, hello),
            None => Next::Closed,
        },
        ToHost::Lend(l) => match crate::outbound::lend(req, l, shared).await {
            Some(kept) => return Served::Next(kept, hello),
            None => Next::Closed,
        },
        ToHost::Listen(l) => match crate::inbound::open(req, &l, vmm_takes, shared).await {
            Some(parts) => Next::Listen(Box::new(parts)),
            None => Next::Closed,
        },
        ToHost::Udp(u) => {
            crate::udp::associate(req, &u, shared).await;
            Next::Closed
        }
        ToHost::UdpConnect(u) => {
            crate::udp::connect_passed(req, &u, shared).await;
            Next::Closed
        }
        ToHost::Icmp(i) => {
            crate::icmp::associate(req, &i, shared).await;
            Next::Closed
        }
        ToHost::ListVms => {
            crate::vms::list(req, shared).await;
            Next::Closed
        }
        // The opening only yields requests.
        ToHost::Hello(_) | ToHost::Datagram(_) | ToHost::Ended => Next::Closed,
    };
    Served::Done(next)
}

/// How long a new stream may take to send its request before it counts among its uid's
/// streams awaiting one. A client that sends its request with the connect (liboutsock, a VMM)
/// never counts, so a burst of legitimate connects is never refused; a stream that is still
/// silent after this is counted, or refused when its uid already has the cap.
pub(crate) const AWAITING_GRACE: Duration = Duration::from_millis(250);

/// How reading a stream's opening ended.
enum Start {
    /// The request, or the errno to refuse with.
    Read(Result<Opened, Option<Errno>>),
    /// No request within `request_timeout`.
    TimedOut,
    /// Still no request after [`AWAITING_GRACE`], and the uid has its cap of such streams.
    OverCap,
}

/// Reads the opening under `request_timeout`, counting the stream among its uid's streams
/// awaiting a request from [`AWAITING_GRACE`] on until the request is read (one timer per
/// stream, as before; the count is taken only by streams that are slow to speak). A kept
/// stream (`again`) ends as a timed-out one when host-server starts draining: a drain takes no
/// new work, and its client, waiting for no answer, opens a new stream (which finds host.sock
/// gone) for its next request.
#[allow(clippy::too_many_arguments)]
async fn read_request(
    stream: &mut UnixStream,
    reader: &mut FrameReader,
    passed: &mut Option<OwnedFd>,
    cred: PeerCred,
    hello: Option<VmHello>,
    again: bool,
    shared: &Shared,
) -> Start {
    let timeout = shared.settings.request_timeout;
    let deadline = tokio::time::Instant::now() + timeout;
    let opening = open(stream, reader, passed, cred, hello, shared);
    tokio::pin!(opening);
    let timer = tokio::time::sleep(AWAITING_GRACE.min(timeout));
    tokio::pin!(timer);
    // Held until the request is read: the stream counts as awaiting while this lives.
    let mut awaiting = None;
    let mut draining = shared.draining.clone();
    let drained = draining.wait_for(|d| *d);
    tokio::pin!(drained);
    loop {
        tokio::select! {
            biased;
            r = &mut opening => return Start::Read(r.map_err(Some)),
            _ = &mut drained, if again => return Start::TimedOut,
            () = &mut timer => {
                if awaiting.is_some() || tokio::time::Instant::now() >= deadline {
                    return Start::TimedOut;
                }
                match shared.limits.awaiting_request(cred.uid) {
                    Some(a) => awaiting = Some(a),
                    None => return Start::OverCap,
                }
                timer.as_mut().reset(deadline);
            }
        }
    }
}

/// Answers `errno` if the socket takes it without waiting, then the caller drops the stream: a
/// flood of streams must cost no more than its accept.
fn refuse_now(stream: &UnixStream, errno: Errno) {
    if let Ok(bytes) = shared_proto::frame::to_vec(&ToGuest::Failed(errno)) {
        let _ = stream.try_write(&bytes);
    }
}

/// Reads frames until the request, applying the identity rules; a descriptor that came with
/// them is left in `passed` (the request's handler decides; dropped, closed, by any other).
async fn open(
    stream: &mut UnixStream,
    reader: &mut FrameReader,
    passed: &mut Option<OwnedFd>,
    cred: PeerCred,
    hello: Option<VmHello>,
    shared: &Shared,
) -> Result<Opened, Errno> {
    read_opening(stream, reader, passed, cred, hello, &shared.settings.vms)
        .await
        .map_err(|refusal| {
            match &refusal {
                Refusal::Protocol(e) => {
                    tracing::debug!(uid = cred.uid, pid = ?cred.pid, error = %e, "malformed frame");
                    shared.metrics.record(Event::StreamRefused("protocol"));
                }
                Refusal::Identity(e) => {
                    static LOG: LogLimit = LogLimit::new();
                    if LOG.allow() {
                        tracing::info!(uid = cred.uid, pid = ?cred.pid, error = %e, "stream refused");
                    }
                    shared.metrics.record(Event::StreamRefused("identity"));
                }
                Refusal::Gone => {}
            }
            refusal.errno()
        })
}

/// Why a stream's opening was refused.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// A malformed frame (EPROTO).
    Protocol(shared_proto::ProtoError),
    /// A frame against the identity rules (its errno).
    Identity(IdentityError),
    /// The peer closed the stream, or it failed (ECONNRESET).
    Gone,
}

impl Refusal {
    /// The errno the peer is told.
    pub(crate) fn errno(&self) -> Errno {
        match self {
            Self::Protocol(_) => Errno::EPROTO,
            Self::Identity(e) => e.errno(),
            Self::Gone => Errno::ECONNRESET,
        }
    }
}

/// The frames of a stream's opening, read from `stream` until the request and judged by the
/// identity rules for a peer with `cred` (`vms` from the settings; `hello`, a kept VMM stream's
/// own from its first opening): the parsing core of [`open`], without its metrics, and what
/// the `host_session` fuzz target drives. A descriptor that came with the frames is left in
/// `passed` (the request's handler decides; dropped, closed, by any other).
pub(crate) async fn read_opening(
    stream: &UnixStream,
    reader: &mut FrameReader,
    passed: &mut Option<OwnedFd>,
    cred: PeerCred,
    hello: Option<VmHello>,
    vms: &BTreeMap<String, VmSettings>,
) -> Result<Opened, Refusal> {
    let mut opening = match hello {
        Some(h) => Opening::resumed(cred, vms, h),
        None => Opening::new(cred, vms),
    };
    loop {
        let frame: ToHost = match reader.read_with_fd(stream, passed).await {
            Ok(f) => f,
            Err(FrameError::Proto(e)) => return Err(Refusal::Protocol(e)),
            Err(FrameError::Closed | FrameError::Io(_)) => return Err(Refusal::Gone),
        };
        match opening.feed(frame) {
            Ok(None) => {}
            Ok(Some(o)) => return Ok(o),
            Err(e) => return Err(Refusal::Identity(e)),
        }
    }
}
