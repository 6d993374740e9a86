//! Outbound TCP: the guest connects to an IPv4 address; host-server connects over IPv6 (or, with
//! egress, IPv4) and relays, or hands the socket itself to a process with SCM_RIGHTS (through
//! `handover`). A connect to the guest DNS address is answered by `dns_tcp` instead.
//!
//! A VM's connection through a VMM that takes sockets (its hello's `takes_sockets`) is not
//! relayed: once connected, the socket goes to the VMM with the answer (SCM_RIGHTS; the answer
//! still says `fd_passed: false`, since the guest sees a relayed stream), and the VMM bridges
//! the guest's vsock connection to it. The stream stays open as the connection's control
//! stream: the connection's permit (socket limit) and its mapping pin are held until the VMM
//! closes it, or says [`ToHost::Ended`] on it, when the guest connection ends. After `Ended`
//! the permit and pin are given back, the VMM is answered [`ToGuest::Released`], and the stream
//! carries the VM's next request (a VMM keeps such streams for its next guest connects, as
//! liboutsock keeps a process's). Should the VMM have sent guest bytes after the
//! request (it does not), or the pass fail, the connection is relayed as before.
//!
//! A VM's connection is bound to the VM's own address before it connects, so that the IPv6
//! network sees which VM it was; a process's to `listen.default_address` when that is set to
//! one address.
//!
//! A process (process mode) may instead make its connects itself ([`lend`]): host-server routes
//! the destination exactly as for a connect (the dummy's mapping, the destination policy) and
//! answers with the IPv6 address and unconnected sockets of its own network for the process to
//! connect, so a connection costs the process no round trip to host-server once the route and a
//! socket are at hand.
//!
//! Errors are reported as the errno a native connect would set: the kernel's own error from the
//! IPv6 connect (ECONNREFUSED, ENETUNREACH, EHOSTUNREACH, ...), ETIMEDOUT when the configured
//! connect timeout passes first, EHOSTUNREACH for a dummy that maps to nothing, ENETUNREACH for
//! a real IPv4 address without egress, EACCES for an address the destination policy refuses
//! (checked before any socket exists). Every IPv6 socket made here is IPV6_V6ONLY.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsFd;

use shared_proto::outsource::{ConnectRequest, LendRequest, ToHost};
use shared_proto::{Errno, ToGuest};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::net::{TcpSocket, TcpStream, UnixStream};

use crate::context::{admit, Request, Shared, Use};
use crate::dest::Route;
use crate::dns_tcp::dns_over_tcp;
use crate::errno::connect_errno;
use crate::handover::{send_answer_with_fd, send_answer_with_fds};
use crate::identity::Identity;
use crate::limits::Resource;
use crate::metrics::Event;
use crate::ratelimit::LogLimit;
use crate::relay::{self, RelayError};

fn errno_name(e: Errno) -> &'static str {
    e.name().unwrap_or("other")
}

async fn fail(req: Request, errno: Errno, shared: &Shared) {
    shared.metrics.record(Event::Connect(errno_name(errno)));
    req.refuse(errno).await;
}

/// [`fail`], for [`connect`]: the refusal closes the stream.
async fn fail_closed(req: Request, errno: Errno, shared: &Shared) -> Option<UnixStream> {
    fail(req, errno, shared).await;
    None
}

/// Handles one connect request to the end of its connection. Returns the stream when it may
/// carry the process's next request: after a socket passed while connecting (see
/// [`crate::session`]).
pub(crate) async fn connect(
    req: Request,
    c: ConnectRequest,
    vmm_takes: bool,
    shared: &Shared,
) -> Option<UnixStream> {
    let (target, dummy) = match shared.router.route(c.dest) {
        Route::Unreachable => return fail_closed(req, Errno::ENETUNREACH, shared).await,
        Route::GuestDns => {
            dns_over_tcp(req, c.dest, shared).await;
            return None;
        }
        Route::Ipv4(sa) => (SocketAddr::V4(sa), None),
        Route::Dummy(d) => match dummy_target(d, c.dest.port(), shared).await {
            Ok(v6) => (SocketAddr::V6(v6), Some(d)),
            Err(errno) => return fail_closed(req, errno, shared).await,
        },
    };
    if let Err(errno) = admit(shared, &req.identity, target.ip(), Use::Connect) {
        return fail_closed(req, errno, shared).await;
    }
    let pending = match shared
        .limits
        .acquire(&req.identity, Resource::PendingConnect)
    {
        Ok(p) => p,
        Err(errno) => return fail_closed(req, errno, shared).await,
    };
    // Passing the socket only makes sense to a process on this host: through a VMM the
    // descriptor would land in the VMM, not in the guest.
    let pass_fd = c.pass_fd && matches!(req.identity, Identity::Process { .. });
    if pass_fd && c.nonblocking {
        drop(pending);
        return pass_connecting(req, c.dest, target, shared).await;
    }
    let source = source_address(&req.identity, target, shared);
    let attempt = async {
        let sock = tcp_socket(target)?;
        if let Some(a) = source {
            sock.bind(SocketAddr::V6(SocketAddrV6::new(a, 0, 0, 0)))?;
        }
        sock.connect(target).await
    };
    let result = tokio::select! {
        r = tokio::time::timeout(shared.settings.connect_timeout, attempt) => r,
        () = guest_gone(&req.stream) => {
            // Nobody is left to tell: give the pending slot back now, not at the timeout.
            shared.metrics.record(Event::Connect("abandoned"));
            return None;
        }
    };
    drop(pending);
    let tcp = match result {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => return fail_closed(req, connect_errno(&e), shared).await,
        Err(_) => return fail_closed(req, Errno::ETIMEDOUT, shared).await,
    };
    shared.metrics.record(Event::Connect("ok"));
    let local = guest_local(&tcp);
    let answer = ToGuest::Connected {
        local,
        peer: c.dest,
        fd_passed: pass_fd,
        in_progress: false,
    };
    if pass_fd {
        pass_connected(req, &answer, tcp, shared).await;
        return None;
    }
    let pin = dummy.map(|d| shared.mapping.pin(d));
    let tcp = if vmm_takes && matches!(req.identity, Identity::Vm(_)) && req.leftover.is_empty() {
        match hand_to_vmm(&req.stream, &answer, tcp, shared).await {
            Handed::Passed => {
                let end = control_end(&req.stream).await;
                drop(req.permit);
                drop(pin);
                return match end {
                    ControlEnd::Closed => None,
                    ControlEnd::Ended => released(req.stream).await,
                };
            }
            Handed::Failed => return None,
            Handed::Kept(tcp) => tcp,
        }
    } else {
        tcp
    };
    let mut stream = req.stream;
    if crate::framed::write_frame(&mut stream, &answer)
        .await
        .is_err()
    {
        return None;
    }
    let s = &shared.settings;
    match relay::relay(
        &stream,
        &tcp,
        &req.leftover,
        s.relay_buffer,
        s.tcp_idle_timeout,
    )
    .await
    {
        Ok(moved) => shared.metrics.record(Event::Relayed {
            up: moved.up,
            down: moved.down,
        }),
        Err(RelayError::Idle(t)) => tracing::debug!(dest = %c.dest, ?t, "idle connection closed"),
        Err(RelayError::Io(e)) => tracing::debug!(dest = %c.dest, error = %e, "relay ended"),
    }
    drop(req.permit);
    None
}

/// Where a connect to dummy `d` on `port` goes: its IPv6 address from the mapping, or
/// EHOSTUNREACH for a dummy that maps to nothing (or cannot be resolved now: logged).
async fn dummy_target(
    d: std::net::Ipv4Addr,
    port: u16,
    shared: &Shared,
) -> Result<SocketAddrV6, Errno> {
    match shared.mapping.resolve(d).await {
        Ok(Some(v6)) => Ok(SocketAddrV6::new(v6, port, 0, 0)),
        Ok(None) => Err(Errno::EHOSTUNREACH),
        Err(e) => {
            static LOG: LogLimit = LogLimit::new();
            if LOG.allow() {
                tracing::warn!(dummy = %d, error = %e, "cannot resolve dummy");
            }
            Err(Errno::EHOSTUNREACH)
        }
    }
}

/// A non-blocking TCP socket for `target`; an IPv6 one is IPV6_V6ONLY, so that no address can
/// make it leave over IPv4.
fn tcp_socket(target: SocketAddr) -> std::io::Result<TcpSocket> {
    let sock = Socket::new(
        Domain::for_address(target),
        Type::STREAM.nonblocking(),
        Some(Protocol::TCP),
    )?;
    if target.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    Ok(TcpSocket::from_std_stream(sock.into()))
}

/// The address a connection to `target` leaves from: a VM's own (`[vms.NAME] address`), so
/// that the IPv6 network sees which VM it was; a process's `listen.default_address` when that
/// is one address (so a process never leaves from a VM's address); `None` (the kernel chooses)
/// for a process with the default `::`, and for IPv4 egress.
fn source_address(
    identity: &Identity,
    target: SocketAddr,
    shared: &Shared,
) -> Option<std::net::Ipv6Addr> {
    let SocketAddr::V6(_) = target else {
        return None;
    };
    match identity {
        Identity::Vm(name) => shared.settings.vms.get(name).map(|v| v.address),
        Identity::Process { .. } => {
            Some(shared.settings.listen_default_address).filter(|a| !a.is_unspecified())
        }
    }
}

/// Resolves when the guest closes its stream; pends forever once it has sent data (pipelined
/// bytes for the connection), since those must stay unread until the connection exists.
async fn guest_gone(stream: &UnixStream) {
    loop {
        if stream.readable().await.is_err() {
            return;
        }
        let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        let peeked = stream.try_io(tokio::io::Interest::READABLE, || {
            socket2::SockRef::from(stream).peek(&mut probe)
        });
        match peeked {
            Ok(0) => return,
            Ok(_) => std::future::pending::<()>().await,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

/// The guest-visible local address: the guest has no IPv4 address of its own, so it sees the
/// unspecified address with the host socket's real local port.
fn guest_local(tcp: &TcpStream) -> SocketAddrV4 {
    let port = tcp.local_addr().map_or(0, |a| a.port());
    SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)
}

/// Hands a connected socket to the process (blocking mode restored, as the program expects).
async fn pass_connected(req: Request, answer: &ToGuest, tcp: TcpStream, shared: &Shared) {
    let Ok(std) = tcp.into_std() else {
        return;
    };
    if std.set_nonblocking(false).is_err() {
        return;
    }
    send_answer_with_fd(&req.stream, answer, std.as_fd(), shared).await;
}

/// How handing a connection's socket to its VMM went.
enum Handed {
    /// The answer and the socket went over.
    Passed,
    /// The stream broke: nobody is left to tell.
    Failed,
    /// Nothing went (the socket could not be taken out of the runtime): relay it.
    Kept(TcpStream),
}

/// Sends the answer with the connected socket attached to a VMM that takes sockets.
async fn hand_to_vmm(
    stream: &UnixStream,
    answer: &ToGuest,
    tcp: TcpStream,
    shared: &Shared,
) -> Handed {
    // Deregistered from the runtime, still non-blocking: the VMM polls it itself.
    let std = match tcp.into_std() {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(error = %e, "cannot take the socket out of the runtime");
            return Handed::Failed;
        }
    };
    if send_answer_with_fd(stream, answer, std.as_fd(), shared).await {
        Handed::Passed
    } else {
        match TcpStream::from_std(std) {
            Ok(tcp) => Handed::Kept(tcp),
            Err(_) => Handed::Failed,
        }
    }
}

/// How a VM connection's control stream said that the connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ControlEnd {
    /// The VMM closed it (EOF, an error), or sent something other than [`ToHost::Ended`]: the
    /// stream closes.
    Closed,
    /// [`ToHost::Ended`]: the stream carries the VM's next request once it is answered
    /// [`ToGuest::Released`].
    Ended,
}

/// Resolves when the guest connection of an outbound control stream ends: the VMM closes the
/// stream, or sends [`ToHost::Ended`] on it (and nothing after it: the VMM's next request waits
/// for our [`ToGuest::Released`]). A descriptor sent along is closed.
pub(crate) async fn control_end(stream: &UnixStream) -> ControlEnd {
    let mut reader = crate::framed::FrameReader::new();
    let mut passed = None;
    match reader.read_with_fd::<ToHost>(stream, &mut passed).await {
        Ok(ToHost::Ended) if passed.is_none() && reader.into_leftover().is_empty() => {
            ControlEnd::Ended
        }
        _ => ControlEnd::Closed,
    }
}

/// Answers [`ToHost::Ended`] once the connection's pins and limits are given back: the stream
/// then awaits the VM's next request (see [`crate::session`]).
async fn released(mut stream: UnixStream) -> Option<UnixStream> {
    crate::framed::write_frame(&mut stream, &ToGuest::Released)
        .await
        .ok()
        .map(|()| stream)
}

/// Resolves when the VMM closes a connection's control stream (EOF or an error): the guest
/// connection has ended. Anything the VMM sends on it is read and ignored (an inbound
/// connection's control stream is host-server's own connection to the VMM's socket, which the
/// VMM never keeps).
pub(crate) async fn control_closed(stream: &UnixStream) {
    let mut buf = [0u8; 64];
    loop {
        if stream.readable().await.is_err() {
            return;
        }
        match stream.try_read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

/// Starts a non-blocking connect and hands the socket over while it is still connecting: the
/// program learns the outcome through poll and SO_ERROR, exactly as with its own socket.
/// Returns the stream, once the socket went over on it and nothing followed the request, for
/// the process's next request.
async fn pass_connecting(
    req: Request,
    dest: SocketAddrV4,
    target: SocketAddr,
    shared: &Shared,
) -> Option<UnixStream> {
    let source = source_address(&req.identity, target, shared);
    let started = (|| {
        let sock = Socket::new(
            Domain::for_address(target),
            Type::STREAM.nonblocking(),
            Some(Protocol::TCP),
        )?;
        if target.is_ipv6() {
            sock.set_only_v6(true)?;
        }
        if let Some(a) = source {
            sock.bind(&SockAddr::from(SocketAddrV6::new(a, 0, 0, 0)))?;
        }
        match sock.connect(&SockAddr::from(target)) {
            Ok(()) => Ok((sock, false)),
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok((sock, true)),
            Err(e) => Err(e),
        }
    })();
    let (sock, in_progress) = match started {
        Ok(s) => s,
        Err(e) => {
            return fail_closed(req, connect_errno(&e), shared).await;
        }
    };
    let port = sock
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .map_or(0, |a| a.port());
    let answer = ToGuest::Connected {
        local: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port),
        peer: dest,
        fd_passed: true,
        in_progress,
    };
    shared.metrics.record(Event::Connect(if in_progress {
        "in_progress"
    } else {
        "ok"
    }));
    if !send_answer_with_fd(&req.stream, &answer, sock.as_fd(), shared).await {
        return None;
    }
    next_request(req)
}

/// How long a process may connect to a lent route again without asking (host-server's own
/// mapping cache holds a dummy's address far longer).
pub(crate) const ROUTE_VALID_MS: u32 = 1_000;

/// A process's [`LendRequest`]: routes `dest` as [`connect`] does (mapping, destination policy)
/// and answers one [`ToGuest::Lent`] with the sockets asked for attached (fewer if not all
/// could be made; the answer counts them): unconnected IPv6 TCP sockets (IPV6_V6ONLY, bound to the process's source address where one is set, its
/// port left to the connect). EOPNOTSUPP where the connect must be host-server's: a VM (its
/// sockets stay in its VMM), the guest DNS address, IPv4 egress, or lending switched off. Returns
/// the stream for the process's next request when everything went over and nothing followed.
pub(crate) async fn lend(mut req: Request, l: LendRequest, shared: &Shared) -> Option<UnixStream> {
    // Not a connect's outcome: not counted as one.
    if !shared.settings.lend_sockets || !matches!(req.identity, Identity::Process { .. }) {
        req.refuse(Errno::EOPNOTSUPP).await;
        return None;
    }
    let target = match shared.router.route(l.dest) {
        Route::Unreachable => return fail_closed(req, Errno::ENETUNREACH, shared).await,
        Route::GuestDns | Route::Ipv4(_) => {
            req.refuse(Errno::EOPNOTSUPP).await;
            return None;
        }
        Route::Dummy(d) => match dummy_target(d, l.dest.port(), shared).await {
            Ok(target) => target,
            Err(errno) => return fail_closed(req, errno, shared).await,
        },
    };
    if let Err(errno) = admit(
        shared,
        &req.identity,
        target.ip().to_owned().into(),
        Use::Connect,
    ) {
        return fail_closed(req, errno, shared).await;
    }
    let source = source_address(&req.identity, SocketAddr::V6(target), shared);
    let mut socks = Vec::with_capacity(usize::from(l.sockets));
    for _ in 0..l.sockets {
        match lent_socket(source) {
            Ok(s) => socks.push(s),
            // Fewer than asked: the answer says how many came.
            Err(e) if !socks.is_empty() => {
                tracing::debug!(error = %e, lent = socks.len(), "could not make every socket to lend");
                break;
            }
            Err(e) => return fail_closed(req, connect_errno(&e), shared).await,
        }
    }
    #[allow(clippy::cast_possible_truncation)] // At most MAX_LENT.
    let answer = ToGuest::Lent {
        target,
        valid_ms: ROUTE_VALID_MS,
        sockets: socks.len() as u8,
    };
    let sent = if socks.is_empty() {
        crate::framed::write_frame(&mut req.stream, &answer)
            .await
            .is_ok()
    } else {
        let fds: Vec<_> = socks.iter().map(AsFd::as_fd).collect();
        send_answer_with_fds(&req.stream, &answer, &fds).await
    };
    if !sent {
        return None;
    }
    shared.metrics.record(Event::Lent(socks.len() as u64));
    next_request(req)
}

/// The stream of a request that was answered in full, for the process's next request; its
/// socket slot is given back. Bytes after the request would be a next request read ahead: not
/// taken up; the stream then ends and the client asks again on a new one.
fn next_request(req: Request) -> Option<UnixStream> {
    let Request {
        stream,
        leftover,
        permit,
        ..
    } = req;
    drop(permit);
    leftover.is_empty().then_some(stream)
}

/// An unconnected IPv6 TCP socket to lend: IPV6_V6ONLY, blocking (the process sets its own
/// flags), bound to `source` without a port (IP_BIND_ADDRESS_NO_PORT: the connect picks one,
/// so an unused lent socket holds no port).
fn lent_socket(source: Option<std::net::Ipv6Addr>) -> std::io::Result<Socket> {
    let sock = Socket::new(Domain::IPV6, Type::STREAM, Some(Protocol::TCP))?;
    sock.set_only_v6(true)?;
    if let Some(a) = source {
        nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::IpBindAddressNoPort, &true)?;
        sock.bind(&SockAddr::from(SocketAddrV6::new(a, 0, 0, 0)))?;
    }
    Ok(sock)
}
