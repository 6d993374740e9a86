//! Inbound TCP for guest servers: a listen request opens an IPv6 listener on the identity's
//! address, and every accepted IPv6 peer is delivered to the guest under a dummy IPv4 address
//! from the source pool.
//!
//! Delivery: to a process, through a **packet channel** (see below); to a VM, a new stream on the
//! VM's own Unix socket: `CONNECT <vsock_port>\n`, the VMM's `OK ...\n`, then the `Inbound` frame
//! and the relayed bytes. Closing the listen stream (VM) or every copy of the guest's end of the
//! packet channel (process) closes the listener; accepted connections live on.
//!
//! A VM whose listen stream opened with a hello that says its VMM takes sockets
//! (`VmHello::takes_sockets`) gets the accepted socket itself: the `Inbound` frame goes with the
//! socket attached (SCM_RIGHTS, on the frame's first byte), the VMM bridges the guest's
//! connection to it, and the stream to the VM's socket stays open as the connection's control
//! stream: its socket permit and its dummy's pin are held until the VMM closes it.
//!
//! The packet channel (process mode): the `Listening` answer carries, attached (SCM_RIGHTS), one
//! end of a fresh `AF_UNIX` `SOCK_SEQPACKET` socket pair; the shim makes it the program's
//! listening fd and closes the request's stream. Invariant: **one accepted connection is one
//! packet** — one `sendmsg` whose data is the whole `Inbound` frame and whose control message is
//! the accepted socket. A seqpacket `recvmsg` returns exactly one whole packet, with its
//! descriptor, to exactly one reader, so any number of processes (after fork) and threads may
//! accept on the same fd, blocking or through epoll, and each connection reaches exactly one of
//! them with its own peer address; no reader can ever see part of another's frame. The guest may
//! send one kind of packet back: a `Listen` frame, whose backlog replaces the listener's (a
//! second `listen(2)` on a listening socket); anything else closes the listener.
//!
//! A requester may make the channel itself (`ListenRequest::channel`): its host's end comes
//! attached to the request (anything but an `AF_UNIX` `SOCK_SEQPACKET` socket, or none, is
//! EINVAL), the answer carries no descriptor, and the request's stream stays open until the
//! listener ends (the requester's sign that host-server is still there). A request bringing a
//! live listener's channel is answered again without opening anything (see `channels`): this
//! is how the supervisor's keeper takes a listener back after host-server restarted.

use std::net::{SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::Duration;

use shared_proto::outsource::ListenRequest;
use shared_proto::{frame, hybrid, Errno, ToGuest, ToHost};
use socket2::{Domain, Protocol, SockAddr, SockRef, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{TcpListener, TcpStream, UnixStream};

use crate::channels::{self, Found, Registration, Use};
use crate::config::Settings;
use crate::context::{Request, Shared};
use crate::errno::bind_errno;
use crate::identity::Identity;
use crate::limits::{Permit, Resource};
use crate::metrics::Event;
use crate::ratelimit::LogLimit;

/// Where a listen request binds, decided from the settings alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenPlan {
    /// The host address and port to bind (port 0: any).
    pub bind: SocketAddrV6,
    /// How accepted connections reach the guest.
    pub delivery: Delivery,
}

/// How accepted connections reach the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// One packet per accepted connection on the packet channel: the `Inbound` frame with the
    /// socket attached.
    PassFd,
    /// Open a stream to the VM's socket and connect to this guest vsock port.
    Vm {
        socket: std::path::PathBuf,
        vsock_port: u32,
    },
}

/// Applies the listen rules: allow-listed ports only (EACCES; a VM's own `allowed_ports` replace
/// the global list for it), the identity's address (a process binds `listen.default_address`,
/// never a VM's: the settings refuse a default address that is a VM's), the port map; a process
/// must ask for descriptor passing and a VM must name a vsock port (EINVAL).
///
/// # Errors
/// The errno the guest's `listen` (or `bind`) reports.
pub fn plan(s: &Settings, identity: &Identity, req: &ListenRequest) -> Result<ListenPlan, Errno> {
    let port = req.addr.port();
    if !s.allowed_ports_for(identity.vm_name()).contains(&port) {
        return Err(Errno::EACCES);
    }
    let (address, delivery) = match identity {
        Identity::Process { .. } => {
            if !req.pass_fd {
                return Err(Errno::EINVAL);
            }
            (s.listen_default_address, Delivery::PassFd)
        }
        Identity::Vm(name) => {
            let vm = s.vms.get(name).ok_or(Errno::EPERM)?;
            if req.vsock_port == 0 || req.pass_fd {
                return Err(Errno::EINVAL);
            }
            (
                vm.address,
                Delivery::Vm {
                    socket: vm.socket.clone(),
                    vsock_port: req.vsock_port,
                },
            )
        }
    };
    Ok(ListenPlan {
        bind: SocketAddrV6::new(address, s.host_port(port), 0, 0),
        delivery,
    })
}

/// Where the listener's life and its deliveries go: the listen stream (VM: deliveries go
/// elsewhere, the stream only says when the guest closed the listener), or the host's end of the
/// packet channel (process; see the module docs).
#[derive(Debug)]
pub(crate) enum Control {
    Stream(UnixStream),
    /// The seqpacket socket, registered with tokio through `UnixStream` (the registration does
    /// not care about the socket type); used only through `async_io` with whole-packet
    /// `sendmsg`/`recvmsg`, never through the stream's byte reads and writes.
    Packets(UnixStream),
}

/// The largest packet the guest may send on the packet channel (a `Listen` frame is far less).
const MAX_GUEST_PACKET: usize = 256;

/// A listener ready to run: what the listener actor owns.
#[derive(Debug)]
pub(crate) struct ListenerParts {
    pub control: Control,
    pub listener: TcpListener,
    pub identity: Identity,
    pub delivery: Delivery,
    /// The guest-visible local address (what the guest bound).
    pub local: SocketAddrV4,
    pub shared: Shared,
    pub permits: (Permit, Permit),
    /// A VM's VMM takes the accepted sockets (its hello said so).
    pub takes_sockets: bool,
    /// When the requester made the channel: the request's stream, held open while the
    /// listener lives, and the listener's entry among the channels (see `channels`).
    pub kept: (Option<UnixStream>, Option<Registration>),
}

fn backlog_of(backlog: u32) -> i32 {
    i32::try_from(backlog.clamp(1, 4096)).unwrap_or(128)
}

/// A `SOCK_SEQPACKET` pair: (host's end, non-blocking and registered with tokio; guest's end).
fn packet_channel() -> std::io::Result<(UnixStream, Socket)> {
    let (ours, theirs) = Socket::pair(Domain::UNIX, Type::SEQPACKET.cloexec(), None)?;
    ours.set_nonblocking(true)?;
    let ours = UnixStream::from_std(std::os::unix::net::UnixStream::from(ours))?;
    Ok((ours, theirs))
}

fn bind(addr: SocketAddrV6, backlog: u32) -> std::io::Result<TcpListener> {
    let sock = Socket::new(
        Domain::IPV6,
        Type::STREAM.nonblocking(),
        Some(Protocol::TCP),
    )?;
    sock.set_only_v6(true)?;
    sock.set_reuse_address(true)?;
    sock.bind(&SockAddr::from(addr))?;
    sock.listen(backlog_of(backlog))?;
    TcpListener::from_std(sock.into())
}

/// How a listen request's listener was opened (or not), decided without waiting.
enum Opened {
    /// The request's channel is a live listener's: answered again (see `channels`).
    Again {
        local: SocketAddrV4,
        ended: tokio::sync::watch::Receiver<()>,
    },
    Refused(Errno),
    Bound {
        listener: TcpListener,
        permit: Permit,
        local: SocketAddrV4,
        registration: Option<Registration>,
    },
}

/// The listener for `l` (with its channel's `key` when the requester made the channel),
/// looked up, bound and entered under one lock of the channels' map (see `channels`).
fn open_now(
    shared: &Shared,
    identity: &Identity,
    l: &ListenRequest,
    plan: &ListenPlan,
    key: Option<channels::Key>,
) -> Opened {
    let mut locked = key.map(|k| (k, shared.channels.locked()));
    if let Some((k, map)) = &locked {
        match map.find(*k, Use::Listener) {
            Found::Live { local, ended } => return Opened::Again { local, ended },
            Found::Other => return Opened::Refused(Errno::EINVAL),
            Found::None => {}
        }
    }
    let permit = match shared.limits.acquire(identity, Resource::Listener) {
        Ok(p) => p,
        Err(errno) => return Opened::Refused(errno),
    };
    let listener = match bind(plan.bind, l.backlog) {
        Ok(x) => x,
        Err(e) => {
            static LOG: LogLimit = LogLimit::new();
            if LOG.allow() {
                tracing::info!(bind = %plan.bind, error = %e, "cannot listen for a guest");
            }
            return Opened::Refused(bind_errno(&e));
        }
    };
    let port = listener.local_addr().map_or(0, |a| a.port());
    let guest_port = if l.addr.port() == 0 {
        port
    } else {
        l.addr.port()
    };
    let local = SocketAddrV4::new(*l.addr.ip(), guest_port);
    let registration = locked
        .as_mut()
        .map(|(k, map)| map.register(*k, Use::Listener, local));
    Opened::Bound {
        listener,
        permit,
        local,
        registration,
    }
}

/// Opens the listener for a listen request and answers it; `None` when refused (or when the
/// request registers a live listener's channel again: answered, its stream held, see
/// `channels`).
pub(crate) async fn open(
    mut req: Request,
    l: &ListenRequest,
    vmm_takes: bool,
    shared: &Shared,
) -> Option<ListenerParts> {
    let plan = match plan(&shared.settings, &req.identity, l) {
        Ok(p) => p,
        Err(errno) => {
            req.refuse(errno).await;
            return None;
        }
    };
    // The requester's own channel: the host's end of an AF_UNIX SOCK_SEQPACKET pair, in
    // process mode only (anything else is EINVAL, and the descriptor is closed).
    let passed = req.passed.take();
    let channel = if l.channel {
        let fd = passed.filter(|_| plan.delivery == Delivery::PassFd);
        match fd.and_then(|fd| channels::channel_key(fd.as_fd()).map(|k| (k, fd))) {
            Some(c) => Some(c),
            None => {
                req.refuse(Errno::EINVAL).await;
                return None;
            }
        }
    } else {
        None
    };
    let (listener, listener_permit, local, registration) = match open_now(
        shared,
        &req.identity,
        l,
        &plan,
        channel.as_ref().map(|c| c.0),
    ) {
        Opened::Bound {
            listener,
            permit,
            local,
            registration,
        } => (listener, permit, local, registration),
        Opened::Refused(errno) => {
            req.refuse(errno).await;
            return None;
        }
        Opened::Again { local, ended } => {
            let Request { stream, permit, .. } = req;
            drop(permit);
            channels::answer_again(stream, &ToGuest::Listening { local }, ended).await;
            return None;
        }
    };
    let answer = ToGuest::Listening { local };
    let (control, kept) = match (plan.delivery == Delivery::PassFd, channel) {
        (true, Some((_, fd))) => {
            // The requester's channel: ours now; the answer goes without a descriptor, and
            // the stream stays open while the listener lives (the requester's sign).
            let ours = std::os::unix::net::UnixStream::from(fd);
            let ours = match ours
                .set_nonblocking(true)
                .and_then(|()| UnixStream::from_std(ours))
            {
                Ok(o) => o,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot take a listener's packet channel");
                    req.refuse(Errno::ENOBUFS).await;
                    return None;
                }
            };
            if crate::framed::write_frame(&mut req.stream, &answer)
                .await
                .is_err()
            {
                return None;
            }
            (Control::Packets(ours), Some(req.stream))
        }
        (true, None) => {
            let (ours, theirs) = match packet_channel() {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot open a listener's packet channel");
                    req.refuse(Errno::ENOBUFS).await;
                    return None;
                }
            };
            let bytes = frame::to_vec(&answer).ok()?;
            // The guest's end travels with the answer; ours is the only other copy.
            crate::fdpass::send_with_fd(&req.stream, &bytes, theirs.as_fd())
                .await
                .ok()?;
            (Control::Packets(ours), None)
        }
        (false, _) => {
            if crate::framed::write_frame(&mut req.stream, &answer)
                .await
                .is_err()
            {
                return None;
            }
            (Control::Stream(req.stream), None)
        }
    };
    shared.metrics.record(Event::ListenerOpened);
    tracing::info!(identity = %req.identity, bind = %plan.bind, "listening for a guest");
    let takes_sockets = vmm_takes && matches!(req.identity, Identity::Vm(_));
    Some(ListenerParts {
        control,
        listener,
        identity: req.identity,
        delivery: plan.delivery,
        local,
        shared: shared.clone(),
        permits: (req.permit, listener_permit),
        takes_sockets,
        kept: (kept, registration),
    })
}

/// Why the guest side of a listener spoke.
enum GuestSaid {
    /// Nothing yet (a spurious wake-up).
    Nothing,
    /// A new backlog (a second `listen(2)`).
    Backlog(u32),
    /// The listener is closed (EOF, an error, or anything the protocol does not allow).
    Closed,
}

/// Waits until the guest's side of the listener says something.
async fn guest_said(control: &Control) -> GuestSaid {
    match control {
        Control::Stream(stream) => {
            let r = stream.readable().await;
            let mut probe = [0u8; 1];
            match stream.try_read(&mut probe) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && r.is_ok() => {
                    GuestSaid::Nothing
                }
                // EOF, error, or stray bytes: the listen stream is over.
                _ => GuestSaid::Closed,
            }
        }
        Control::Packets(afd) => {
            let mut buf = [0u8; MAX_GUEST_PACKET];
            let got = afd
                .async_io(Interest::READABLE, || {
                    outsock_fdpass::recv_with_fd(afd.as_raw_fd(), &mut buf)
                })
                .await;
            match got {
                // A descriptor from the guest is dropped (closed) with the packet.
                Ok((n, _fd)) if n > 0 => match shared_proto::decode_exact::<ToHost>(&buf[..n]) {
                    Ok(ToHost::Listen(l)) => GuestSaid::Backlog(l.backlog),
                    _ => GuestSaid::Closed,
                },
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => GuestSaid::Nothing,
                _ => GuestSaid::Closed,
            }
        }
    }
}

/// The most connections taken from the listener's queue at one wake-up before the guest's side
/// and the drain are looked at again.
const ACCEPT_BATCH: usize = 64;

/// Accepts until the guest closes its side of the listener (or says anything the protocol does
/// not allow there) or the server drains. Each wake-up takes every connection waiting (up to
/// [`ACCEPT_BATCH`]) until the queue is empty: under a burst of connects one wake-up delivers
/// several. The listener is registered for readability only, and its connections are accepted
/// straight from the kernel in blocking mode (what a process is handed) without a tokio
/// registration of their own, which a passed socket would only have to undo.
pub(crate) async fn run(parts: ListenerParts) {
    let ListenerParts {
        control,
        listener,
        identity,
        delivery,
        local,
        shared,
        permits,
        takes_sockets,
        kept,
    } = parts;
    // Registered for readiness through a `UnixStream`, as the packet channel is (the
    // registration does not care about the socket type); only `readable` and `try_io` are used.
    let listener = match listener
        .into_std()
        .and_then(|l| UnixStream::from_std(std::os::unix::net::UnixStream::from(OwnedFd::from(l))))
    {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "cannot register a guest listener");
            drop(permits);
            return;
        }
    };
    let mut draining = shared.draining.clone();
    loop {
        tokio::select! {
            said = guest_said(&control) => match said {
                GuestSaid::Nothing => {}
                GuestSaid::Backlog(b) => {
                    // Linux lets listen(2) on a listening socket change its backlog.
                    if let Err(e) = SockRef::from(&listener).listen(backlog_of(b)) {
                        tracing::debug!(error = %e, "cannot change a listener's backlog");
                    }
                }
                GuestSaid::Closed => break,
            },
            ready = listener.readable() => {
                if ready.is_err() {
                    break;
                }
                for _ in 0..ACCEPT_BATCH {
                    // accept4 with SOCK_CLOEXEC: a blocking socket, whatever the listener's mode.
                    let accepted = listener
                        .try_io(Interest::READABLE, || SockRef::from(&listener).accept());
                    match accepted {
                        Ok((tcp, peer)) => {
                            if let Some(peer) = peer.as_socket_ipv6() {
                                let tcp = std::net::TcpStream::from(tcp);
                                deliver(
                                    &control,
                                    tcp,
                                    peer,
                                    local,
                                    &identity,
                                    &delivery,
                                    takes_sockets,
                                    &shared,
                                )
                                    .await;
                            }
                        }
                        // The queue is empty; `try_io` cleared the readiness.
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => {
                            tracing::debug!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            break;
                        }
                    }
                }
            },
            _ = draining.changed() => break,
        }
    }
    tracing::info!(%identity, "guest listener closed");
    // The requester's stream closes after the entry is gone: a registration it then sends
    // opens a new listener.
    let (stream, registration) = kept;
    drop(registration);
    drop(stream);
    drop(permits);
}

/// Sends one packet: `data` with `fd` attached, in one `sendmsg` (see the module docs).
async fn send_packet(afd: &UnixStream, data: &[u8], fd: &impl AsRawFd) -> std::io::Result<()> {
    let raw = fd.as_raw_fd();
    let sent = afd
        .async_io(Interest::WRITABLE, || {
            outsock_fdpass::sendmsg_fd::<outsock_fdpass::Libc>(
                afd.as_raw_fd(),
                data,
                raw,
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        })
        .await?;
    if sent == data.len() {
        Ok(())
    } else {
        Err(std::io::Error::other("short packet"))
    }
}

/// Delivers one accepted connection (`tcp`, in blocking mode) to the guest; to a VM whose VMM
/// `takes_sockets`, the socket itself.
#[allow(clippy::too_many_arguments)]
async fn deliver(
    control: &Control,
    tcp: std::net::TcpStream,
    peer: SocketAddrV6,
    local: SocketAddrV4,
    identity: &Identity,
    delivery: &Delivery,
    takes_sockets: bool,
    shared: &Shared,
) {
    let dummy = match shared.mapping.peer_dummy(*peer.ip()).await {
        Ok(d) => d,
        Err(e) => {
            // Without a dummy the guest cannot be shown the peer; refuse the connection rather
            // than invent an address an operator could not trace.
            static LOG: LogLimit = LogLimit::new();
            if LOG.allow() {
                tracing::warn!(peer = %peer, error = %e, "no dummy for inbound peer; closing");
            }
            shared.metrics.record(Event::InboundDropped);
            return;
        }
    };
    let inbound = ToGuest::Inbound {
        peer: SocketAddrV4::new(dummy, peer.port()),
        local,
    };
    match delivery {
        Delivery::PassFd => {
            let Ok(bytes) = frame::to_vec(&inbound) else {
                return;
            };
            let sent = match control {
                Control::Packets(afd) => send_packet(afd, &bytes, &tcp).await,
                Control::Stream(_) => Err(std::io::Error::other("no packet channel")),
            };
            match sent {
                Ok(()) => shared.metrics.record(Event::InboundDelivered),
                Err(e) => {
                    tracing::debug!(error = %e, "cannot pass inbound socket");
                    shared.metrics.record(Event::InboundDropped);
                }
            }
        }
        Delivery::Vm { socket, vsock_port } => {
            let Ok(permit) = shared.limits.acquire(identity, Resource::Socket) else {
                shared.metrics.record(Event::InboundDropped);
                return;
            };
            let Ok(tcp) = tcp
                .set_nonblocking(true)
                .and_then(|()| TcpStream::from_std(tcp))
            else {
                shared.metrics.record(Event::InboundDropped);
                return;
            };
            let shared = shared.clone();
            let socket = socket.clone();
            let port = *vsock_port;
            // Each connection runs on its own task: it outlives the listener, as an accepted
            // socket outlives a closed listening socket.
            actix_rt::spawn(async move {
                let delivered = to_vm(
                    &socket,
                    port,
                    &inbound,
                    takes_sockets.then_some(&tcp),
                    &shared,
                );
                match delivered.await {
                    Ok((vm, true)) => {
                        // The VMM has the socket; ours closes. The connection ends when the
                        // VMM closes the control stream.
                        shared.metrics.record(Event::InboundDelivered);
                        shared.metrics.record(Event::FdPassed);
                        let _pin = shared.mapping.pin(dummy);
                        drop(tcp);
                        crate::outbound::control_closed(&vm).await;
                    }
                    Ok((vm, false)) => {
                        shared.metrics.record(Event::InboundDelivered);
                        let _pin = shared.mapping.pin(dummy);
                        let s = &shared.settings;
                        if let Ok(m) =
                            crate::relay::relay(&vm, &tcp, &[], s.relay_buffer, s.tcp_idle_timeout)
                                .await
                        {
                            shared.metrics.record(Event::Relayed {
                                up: m.up,
                                down: m.down,
                            });
                        }
                    }
                    Err(e) => {
                        static LOG: LogLimit = LogLimit::new();
                        if LOG.allow() {
                            tracing::warn!(socket = %socket.display(), error = %e, "cannot reach the VM");
                        }
                        shared.metrics.record(Event::InboundDropped);
                    }
                }
                drop(permit);
            });
        }
    }
}

/// Opens a host→guest stream on the VM's socket (hybrid vsock) and sends the `Inbound` frame,
/// with `pass` attached when given. Returns the stream and whether the socket went with it.
async fn to_vm(
    socket: &std::path::Path,
    port: u32,
    inbound: &ToGuest,
    pass: Option<&TcpStream>,
    shared: &Shared,
) -> std::io::Result<(UnixStream, bool)> {
    let t = shared.settings.vm_connect_timeout;
    let work = async {
        let mut s = UnixStream::connect(socket).await?;
        s.write_all(hybrid::connect_line(port).as_bytes()).await?;
        // Read the answer line byte by byte: what follows it is guest data, not ours to eat.
        let mut line = Vec::with_capacity(hybrid::MAX_LINE);
        loop {
            let b = s.read_u8().await?;
            line.push(b);
            if b == b'\n' || line.len() >= hybrid::MAX_LINE {
                break;
            }
        }
        hybrid::parse_ok(&line).map_err(std::io::Error::other)?;
        let bytes = frame::to_vec(inbound).map_err(std::io::Error::other)?;
        if let Some(tcp) = pass {
            crate::fdpass::send_with_fd(&s, &bytes, tcp.as_fd()).await?;
            return Ok((s, true));
        }
        s.write_all(&bytes).await?;
        Ok((s, false))
    };
    tokio::time::timeout(t, work)
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::VmSettings;
    use std::net::Ipv4Addr;

    fn settings() -> Settings {
        let mut s = Settings {
            allowed_ports: vec![80, 8080],
            listen_default_address: "fd00:64::1".parse().unwrap(),
            ..Settings::default()
        };
        s.port_map.insert(80, 8081);
        s.vms.insert(
            "web".into(),
            VmSettings::new(
                "/run/outsock/vm-web.vsock",
                "fd00:64::101".parse().unwrap(),
                107,
            ),
        );
        let mut own = VmSettings::new(
            "/run/outsock/vm-db.vsock",
            "fd00:64::102".parse().unwrap(),
            108,
        );
        own.allowed_ports = Some(vec![5432]);
        s.vms.insert("db".into(), own);
        s
    }

    fn req(port: u16, pass_fd: bool, vsock_port: u32) -> ListenRequest {
        ListenRequest {
            addr: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port),
            backlog: 16,
            pass_fd,
            vsock_port,
            channel: false,
        }
    }

    #[test]
    fn plans() {
        let s = settings();
        let proc_ = Identity::Process { uid: 1000 };
        let vm = Identity::Vm("web".into());
        let p = plan(&s, &proc_, &req(8080, true, 0)).unwrap();
        assert_eq!(p.bind, "[fd00:64::1]:8080".parse().unwrap());
        assert_eq!(p.delivery, Delivery::PassFd);
        let p = plan(&s, &vm, &req(80, false, 5000)).unwrap();
        assert_eq!(p.bind, "[fd00:64::101]:8081".parse().unwrap());
        assert_eq!(
            p.delivery,
            Delivery::Vm {
                socket: "/run/outsock/vm-web.vsock".into(),
                vsock_port: 5000
            }
        );
        assert_eq!(plan(&s, &proc_, &req(22, true, 0)), Err(Errno::EACCES));
        assert_eq!(plan(&s, &proc_, &req(0, true, 0)), Err(Errno::EACCES));
        assert_eq!(plan(&s, &proc_, &req(80, false, 0)), Err(Errno::EINVAL));
        assert_eq!(plan(&s, &vm, &req(80, false, 0)), Err(Errno::EINVAL));
        assert_eq!(
            plan(&s, &Identity::Vm("gone".into()), &req(80, false, 1)),
            Err(Errno::EPERM)
        );
    }

    /// Packets on the channel are whole and one per reader, however many readers share the
    /// guest's end; a `Listen` packet is a new backlog, EOF the end of the listener.
    #[tokio::test]
    async fn packet_channel_gives_each_reader_whole_packets() {
        const N: u16 = 400;
        let (ours, theirs) = packet_channel().unwrap();
        let theirs = std::sync::Arc::new(theirs);
        let readers: Vec<_> = (0..4)
            .map(|_| {
                let theirs = std::sync::Arc::clone(&theirs);
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    loop {
                        let mut buf = [0u8; 512];
                        let (n, fd) =
                            outsock_fdpass::recv_with_fd(theirs.as_raw_fd(), &mut buf).unwrap();
                        let Ok(ToGuest::Inbound { peer, .. }) =
                            frame::decode_exact::<ToGuest>(&buf[..n])
                        else {
                            panic!("not one whole Inbound frame: {:?}", &buf[..n]);
                        };
                        assert!(fd.is_some(), "packet {peer} without its socket");
                        if peer.port() == 0 {
                            return got;
                        }
                        got.push(peer.port());
                    }
                })
            })
            .collect();
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let inbound = |port: u16| {
            frame::to_vec(&ToGuest::Inbound {
                peer: SocketAddrV4::new(Ipv4Addr::new(172, 21, 112, 1), port),
                local: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 8080),
            })
            .unwrap()
        };
        for port in 1..=N {
            send_packet(&ours, &inbound(port), &a).await.unwrap();
        }
        for _ in &readers {
            send_packet(&ours, &inbound(0), &a).await.unwrap();
        }
        let mut all: Vec<u16> = readers
            .into_iter()
            .flat_map(|r| r.join().unwrap())
            .collect();
        all.sort_unstable();
        assert_eq!(all, (1..=N).collect::<Vec<_>>());

        let listen = frame::to_vec(&ToHost::Listen(req(8080, true, 0))).unwrap();
        socket2::SockRef::from(&*theirs).send(&listen).unwrap();
        let control = Control::Packets(ours);
        assert!(matches!(guest_said(&control).await, GuestSaid::Backlog(16)));
        drop(theirs);
        assert!(matches!(guest_said(&control).await, GuestSaid::Closed));
    }

    #[test]
    fn a_vms_own_ports_replace_the_global_list() {
        let s = settings();
        let db = Identity::Vm("db".into());
        let p = plan(&s, &db, &req(5432, false, 5432)).unwrap();
        assert_eq!(p.bind, "[fd00:64::102]:5432".parse().unwrap());
        assert_eq!(plan(&s, &db, &req(8080, false, 1)), Err(Errno::EACCES));
        // Others keep the global list.
        let proc_ = Identity::Process { uid: 1000 };
        assert_eq!(plan(&s, &proc_, &req(5432, true, 0)), Err(Errno::EACCES));
    }
}
