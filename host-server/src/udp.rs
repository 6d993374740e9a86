//! UDP associations: one per outsourced UDP socket. `Datagram` frames go both ways on the
//! stream; host-server sends and receives them on one host UDP socket, translating addresses:
//! outbound, a dummy destination becomes its IPv6 address; inbound, the IPv6 source becomes the
//! dummy the guest used for it (learned from its sends), else the peer's source-pool dummy. The
//! guest DNS address on port 53 is answered by dns-cache. An association with no traffic either
//! way for the idle timeout closes, unless the guest bound it to a port of its own (a UDP
//! server, whose `bind` opens the association at once): a server may stay quiet for as long as
//! it likes, and its association lasts until the guest closes the socket. A server's replies
//! leave from its bound port, and each IPv6 client shows as its source-pool dummy. A server
//! socket on the unspecified address (`listen.default_address = "::"`) learns with
//! IPV6_PKTINFO which host address each client wrote to and answers from that address, so a
//! client (a connected socket in particular) hears the reply from where it sent, as from a
//! native server.
//!
//! A process's connected UDP socket (`UdpConnect`) is not an association: host-server makes a
//! host UDP socket connected to the peer's IPv6 address, hands it over with SCM_RIGHTS and keeps
//! nothing (`connect_passed`).
//!
//! A UDP server's sockets (a port of its own) share the port (SO_REUSEADDR), as iperf3's do,
//! but only with its own identity's associations ([`Shared::udp_server_ports`]; another's is
//! EADDRINUSE):
//! `iperf3 -u -s` `connect`s its server socket to the client after the first datagram and binds
//! the port again for the next client. The shim asks for that connect as a passed socket bound
//! to the server's port; the kernel then gives the client's datagrams to it, not to the new
//! listening socket. With `listen.default_address = "::"` it binds the host address the client
//! last wrote to on a server's association ([`Shared::udp_server_locals`], learned with
//! IPV6_PKTINFO), so the client hears the replies from where it sent.
//!
//! The destination policy (`context::admit`) is asked before every send and before a connected
//! socket is made: a refused destination is EACCES for `UdpConnect`, and a dropped datagram
//! (counted and logged, never silently) for an association, whose sends have no answer to carry
//! an errno. A reply whose source the policy refuses is dropped the same way. Every IPv6 socket
//! is IPV6_V6ONLY; with IPv4 egress an association gets a second, IPv4 socket for real IPv4
//! peers, so no IPv4-mapped address is ever used.

use std::collections::HashMap;
use std::io::{IoSlice, IoSliceMut};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::{Arc, PoisonError};
use std::task::Poll;

use nix::sys::socket::{
    recvmsg, sendmsg, setsockopt, sockopt, ControlMessage, ControlMessageOwned, MsgFlags,
    SockaddrIn6,
};
use tokio::io::Interest;

use shared_proto::outsource::{Datagram, UdpConnectRequest, UdpRequest};
use shared_proto::{Errno, ToGuest};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::net::UdpSocket;

use crate::assoc::Channel;
use crate::channels::{self, Found, Registration};
use crate::context::{admit, LocalTable, PortHolders, Request, Shared, Use};
use crate::dest::Route;
use crate::handover::send_answer_with_fd;
use crate::identity::Identity;
use crate::metrics::Event;

/// Largest datagram read from the host socket (the IPv6 maximum without jumbograms).
const MAX_DATAGRAM: usize = 65_535;

/// Remembers which guest-visible address stands for each host-side peer, so replies come back
/// from the address the guest sent to. Bounded: beyond `capacity` the table starts over (the
/// cost is one PeerDummy look-up per peer, never a wrong address).
#[derive(Debug)]
pub struct PeerTable {
    capacity: usize,
    map: HashMap<SocketAddr, SocketAddrV4>,
}

impl PeerTable {
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            map: HashMap::new(),
        }
    }

    /// The guest sent to `guest_addr`, which went out to `host_addr`.
    pub fn learn(&mut self, host_addr: SocketAddr, guest_addr: SocketAddrV4) {
        if self.map.len() >= self.capacity && !self.map.contains_key(&host_addr) {
            self.map.clear();
        }
        self.map.insert(host_addr, guest_addr);
    }

    /// The guest-visible source for a datagram from `host_addr`, when known.
    #[must_use]
    pub fn guest_source(&self, host_addr: SocketAddr) -> Option<SocketAddrV4> {
        self.map.get(&host_addr).copied().or(match host_addr {
            // IPv4 egress: a real IPv4 peer is shown as itself.
            SocketAddr::V4(a) => Some(a),
            SocketAddr::V6(a) => a
                .ip()
                .to_ipv4_mapped()
                .map(|v4| SocketAddrV4::new(v4, a.port())),
        })
    }
}

/// Which family of host socket to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    V6,
    V4,
}

fn open_socket(
    shared: &Shared,
    identity: &Identity,
    req: &UdpRequest,
    family: Family,
    local: Option<Ipv6Addr>,
) -> Result<UdpSocket, Errno> {
    let s = &shared.settings;
    let port = req.bind.port();
    // A VM's datagrams leave from its own address (so the network sees which VM sent them), a
    // process's from `listen.default_address`. IPv4 egress has a socket of its own (Family::V4),
    // so the IPv6 socket binds the identity's address with or without it.
    let vm_address = match identity {
        Identity::Vm(name) => Some(s.vms.get(name).map(|v| v.address).ok_or(Errno::EPERM)?),
        Identity::Process { .. } => None,
    };
    let addr = if port == 0 {
        match vm_address {
            Some(a) => a,
            // A process's datagrams leave from the default address when it is one address.
            None => s.listen_default_address,
        }
    } else {
        // A fixed port is a UDP server: the same allow-list and addresses as TCP listeners.
        if !s.allowed_ports_for(identity.vm_name()).contains(&port) {
            return Err(Errno::EACCES);
        }
        vm_address.or(local).unwrap_or(s.listen_default_address)
    };
    let host_port = if port == 0 { 0 } else { s.host_port(port) };
    let make = || -> std::io::Result<UdpSocket> {
        let sock = match family {
            Family::V6 => {
                let sock =
                    Socket::new(Domain::IPV6, Type::DGRAM.nonblocking(), Some(Protocol::UDP))?;
                // Never IPv4 through an IPv4-mapped address: egress has its own socket.
                sock.set_only_v6(true)?;
                share_fixed_port(&sock, host_port)?;
                sock.bind(&SockAddr::from(SocketAddrV6::new(addr, host_port, 0, 0)))?;
                sock
            }
            Family::V4 => {
                let sock =
                    Socket::new(Domain::IPV4, Type::DGRAM.nonblocking(), Some(Protocol::UDP))?;
                share_fixed_port(&sock, host_port)?;
                sock.bind(&SockAddr::from(SocketAddrV4::new(
                    Ipv4Addr::UNSPECIFIED,
                    host_port,
                )))?;
                sock
            }
        };
        UdpSocket::from_std(sock.into())
    };
    make().map_err(|e| crate::errno::bind_errno(&e))
}

/// A UDP server's sockets share their fixed port (SO_REUSEADDR, as iperf3 sets on its own):
/// a server that `connect`s one socket to a client binds the port again for the next
/// (iperf3 -u -s), and the kernel gives each client's datagrams to the socket connected to it.
/// An ephemeral port (0) is never shared.
fn share_fixed_port(sock: &Socket, host_port: u16) -> std::io::Result<()> {
    if host_port != 0 {
        sock.set_reuse_address(true)?;
    }
    Ok(())
}

/// The guest-visible local address of `sock`, bound for `bind`: the address the guest asked
/// for, and its port, or the host socket's real port when the guest asked for any (port 0).
fn guest_local(sock: &UdpSocket, bind: SocketAddrV4) -> SocketAddrV4 {
    let port = sock.local_addr().map_or(0, |a| a.port());
    let guest_port = if bind.port() == 0 { port } else { bind.port() };
    SocketAddrV4::new(*bind.ip(), guest_port)
}

/// Process mode, a connected UDP socket: bound as an association's would be, connected to the
/// destination's IPv6 address (or, with egress, the real IPv4 one), and handed to the process
/// with the answer. host-server keeps nothing: the program's datagrams, and the kernel's errors
/// for them (ECONNREFUSED after an ICMP port unreachable), are its own socket's.
pub(crate) async fn connect_passed(req: Request, u: &UdpConnectRequest, shared: &Shared) {
    if !matches!(req.identity, Identity::Process { .. }) {
        // Through a VMM the descriptor would land in the VMM: guests use associations.
        return req.refuse(Errno::EOPNOTSUPP).await;
    }
    let target = match udp_target(u.dest, shared).await {
        Ok(Some(t)) => t,
        // dns-cache answers the guest DNS address: only an association carries that.
        Ok(None) => return req.refuse(Errno::EOPNOTSUPP).await,
        Err(errno) => return req.refuse(errno).await,
    };
    if let Err(errno) = admit(shared, &req.identity, target.ip(), Use::Connect) {
        return req.refuse(errno).await;
    }
    let family = if target.is_ipv4() {
        Family::V4
    } else {
        Family::V6
    };
    let local = server_local(
        u.bind.port(),
        shared.settings.listen_default_address,
        target,
        &shared.udp_server_locals,
    );
    // Another identity's server port is not this one's to share.
    if let Some(key) = server_port_key(shared, &req.identity, u.bind.port()) {
        let held = shared
            .udp_server_ports
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .check(key, &req.identity);
        if let Err(errno) = held {
            return req.refuse(errno).await;
        }
    }
    let request = UdpRequest {
        bind: u.bind,
        channel: false,
    };
    let sock = match open_socket(shared, &req.identity, &request, family, local) {
        Ok(s) => s,
        Err(errno) => return req.refuse(errno).await,
    };
    if let Err(e) = sock.connect(target).await {
        return req.refuse(crate::errno::connect_errno(&e)).await;
    }
    let answer = ToGuest::Connected {
        local: guest_local(&sock, u.bind),
        peer: u.dest,
        fd_passed: true,
        in_progress: false,
    };
    let Ok(std) = sock.into_std() else { return };
    // The program's socket blocks unless it says otherwise (the shim applies its flags).
    if std.set_nonblocking(false).is_err() {
        return;
    }
    shared.metrics.record(Event::UdpConnected);
    send_answer_with_fd(&req.stream, &answer, std.as_fd(), shared).await;
}

/// The address a passed UDP socket bound to the server port `port` and connected to `target`
/// binds: where host-server's default address is `::`, the one `target` last wrote to on a
/// server's association (learned in `locals`), so the replies come from where the client sent
/// (a connected client drops others); `None`: the usual address.
fn server_local(
    port: u16,
    default: Ipv6Addr,
    target: SocketAddr,
    locals: &std::sync::Mutex<LocalTable>,
) -> Option<Ipv6Addr> {
    if port == 0 || !default.is_unspecified() {
        return None;
    }
    locals.lock().ok()?.local_for(target)
}

/// Where a datagram to the guest-visible `dest` goes on a host socket: the IPv6 address behind
/// a dummy, or (with egress) the real IPv4 address; `Ok(None)` for the guest DNS address,
/// which dns-cache answers; the errno a native send would meet otherwise.
pub(crate) async fn udp_target(
    dest: SocketAddrV4,
    shared: &Shared,
) -> Result<Option<SocketAddr>, Errno> {
    match shared.router.route(dest) {
        Route::Unreachable => Err(Errno::ENETUNREACH),
        Route::GuestDns => Ok(None),
        Route::Ipv4(sa) => Ok(Some(SocketAddr::V4(sa))),
        Route::Dummy(d) => match shared.mapping.resolve(d).await {
            Ok(Some(v6)) => Ok(Some(SocketAddr::V6(SocketAddrV6::new(
                v6,
                dest.port(),
                0,
                0,
            )))),
            _ => Err(Errno::EHOSTUNREACH),
        },
    }
}

/// The host address and port a UDP server of `identity` on guest port `port` binds, the key
/// of [`Shared::udp_server_ports`]; `None` for port 0 (not a server).
fn server_port_key(shared: &Shared, identity: &Identity, port: u16) -> Option<(Ipv6Addr, u16)> {
    if port == 0 {
        return None;
    }
    let s = &shared.settings;
    let addr = match identity {
        Identity::Vm(name) => s.vms.get(name)?.address,
        Identity::Process { .. } => s.listen_default_address,
    };
    Some((addr, s.host_port(port)))
}

/// An association's hold on its server port, given back when the association ends.
struct HeldPort {
    holders: Arc<std::sync::Mutex<PortHolders>>,
    key: (Ipv6Addr, u16),
}

impl HeldPort {
    fn take(shared: &Shared, identity: &Identity, port: u16) -> Result<Option<Self>, Errno> {
        let Some(key) = server_port_key(shared, identity, port) else {
            return Ok(None);
        };
        let holders = Arc::clone(&shared.udp_server_ports);
        holders
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take(key, identity)?;
        Ok(Some(Self { holders, key }))
    }
}

impl Drop for HeldPort {
    fn drop(&mut self) {
        self.holders
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .give_back(self.key);
    }
}

/// An association's host sockets and hold on its port, opened; or what a request bringing a
/// live association's channel gets instead.
enum Opened {
    Bound {
        sockets: Sockets,
        held: Option<HeldPort>,
        local: SocketAddrV4,
        registration: Option<Registration>,
    },
    /// The channel is a live association's: answered again (see `channels`).
    Again {
        local: SocketAddrV4,
        ended: tokio::sync::watch::Receiver<()>,
    },
    Refused(Errno),
}

/// The association for `u` (with its channel's `key` when the requester made the channel),
/// looked up, opened and entered under one lock of the channels' map (see `channels`).
fn open_now(
    shared: &Shared,
    identity: &Identity,
    u: &UdpRequest,
    key: Option<channels::Key>,
) -> Opened {
    let mut locked = key.map(|k| (k, shared.channels.locked()));
    if let Some((k, map)) = &locked {
        match map.find(*k, channels::Use::Udp) {
            Found::Live { local, ended } => return Opened::Again { local, ended },
            Found::Other => return Opened::Refused(Errno::EINVAL),
            Found::None => {}
        }
    }
    let sock = match open_socket(shared, identity, u, Family::V6, None) {
        Ok(s) => s,
        Err(errno) => return Opened::Refused(errno),
    };
    // Its server port shared with its own identity's sockets only.
    let held = match HeldPort::take(shared, identity, u.bind.port()) {
        Ok(h) => h,
        Err(errno) => return Opened::Refused(errno),
    };
    // With egress, real IPv4 peers get their own socket (the IPv6 one is IPV6_V6ONLY).
    let sock4 = if shared.settings.ipv4_egress {
        match open_socket(shared, identity, u, Family::V4, None) {
            Ok(s) => Some(s),
            Err(errno) => return Opened::Refused(errno),
        }
    } else {
        None
    };
    // A server on `::` answers each client from the address it wrote to.
    let pktinfo = u.bind.port() != 0
        && sock.local_addr().is_ok_and(|a| a.ip().is_unspecified())
        && setsockopt(&sock, sockopt::Ipv6RecvPacketInfo, &true).is_ok();
    let local = guest_local(&sock, u.bind);
    let registration = locked
        .as_mut()
        .map(|(k, map)| map.register(*k, channels::Use::Udp, local));
    Opened::Bound {
        sockets: Sockets {
            v6: sock,
            v4: sock4,
            pktinfo,
        },
        held,
        local,
        registration,
    }
}

/// Runs one association to its end.
pub(crate) async fn associate(mut req: Request, u: &UdpRequest, shared: &Shared) {
    // A process's datagrams come one packet each (see `assoc`).
    let packets = matches!(req.identity, Identity::Process { .. });
    // The requester's own channel (a process's UDP server, `UdpRequest::channel`): the host's
    // end of an AF_UNIX SOCK_SEQPACKET pair; anything else is EINVAL, the descriptor closed.
    let passed = req.passed.take();
    let own = if u.channel {
        let fd = passed.filter(|_| packets && u.bind.port() != 0);
        match fd.and_then(|fd| channels::channel_key(fd.as_fd()).map(|k| (k, fd))) {
            Some(c) => Some(c),
            None => return req.refuse(Errno::EINVAL).await,
        }
    } else {
        None
    };
    let (sockets, _held, local, _registration) =
        match open_now(shared, &req.identity, u, own.as_ref().map(|c| c.0)) {
            Opened::Bound {
                sockets,
                held,
                local,
                registration,
            } => (sockets, held, local, registration),
            Opened::Refused(errno) => return req.refuse(errno).await,
            Opened::Again { local, ended } => {
                let Request { stream, permit, .. } = req;
                drop(permit);
                let answer = ToGuest::Associated { local };
                return channels::answer_again(stream, &answer, ended).await;
            }
        };
    let Request {
        stream,
        identity,
        leftover,
        permit,
        ..
    } = req;
    let answer = ToGuest::Associated { local };
    // With the requester's channel, its stream stays open while the association lives (the
    // requester's sign, when it ends first, that host-server went away).
    let (mut channel, _kept) = match own {
        Some((_, fd)) => match Channel::adopt(stream, &leftover, &answer, fd).await {
            Some((c, kept)) => (c, Some(kept)),
            None => return,
        },
        None => match Channel::open(stream, leftover, &answer, packets, shared).await {
            Some(c) => (c, None),
            None => return,
        },
    };
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut peers = PeerTable::new(1024);
    let mut locals = LocalTable::new(1024);
    let idle = idle_limit(u, shared.settings.udp_idle_timeout);
    loop {
        let deadline = idle.map(|d| tokio::time::Instant::now() + d);
        tokio::select! {
            f = channel.next_datagram() => {
                let Some(d) = f else { break };
                shared.metrics.record(Event::UdpOut);
                let sent = send_out(&sockets, d, &mut peers, &locals, &identity, shared).await;
                if let Some(reply) = sent {
                    if channel.write(&ToGuest::Datagram(reply)).await.is_err() {
                        break;
                    }
                }
            }
            r = sockets.recv_from(&mut buf) => {
                let Ok(Received { n, from, to }) = r else { continue };
                if let Some(to) = to {
                    if locals.local_for(from) != Some(to) {
                        locals.learn(from, to);
                        if let Ok(mut all) = shared.udp_server_locals.lock() {
                            all.learn(from, to);
                        }
                    }
                }
                if admit(shared, &identity, from.ip(), Use::Reply).is_err() {
                    continue;
                }
                let Some(source) = guest_source(from, &mut peers, shared).await else {
                    continue;
                };
                shared.metrics.record(Event::UdpIn);
                let d = Datagram { addr: source, payload: buf[..n].to_vec() };
                if channel.write(&ToGuest::Datagram(d)).await.is_err() {
                    break;
                }
            }
            () = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => {
                tracing::debug!(%identity, "UDP association idle; closing");
                break;
            }
        }
    }
    drop(permit);
}

/// How long an association may stay silent: `timeout` for a client (bound to any port), no
/// limit for a server (bound to a port of its own), which closes with the guest's socket.
fn idle_limit(u: &UdpRequest, timeout: std::time::Duration) -> Option<std::time::Duration> {
    (u.bind.port() == 0).then_some(timeout)
}

/// An association's host sockets: IPv6 always, IPv4 with egress.
#[derive(Debug)]
struct Sockets {
    v6: UdpSocket,
    v4: Option<UdpSocket>,
    /// The IPv6 socket is a server's on `::` and reports each datagram's local address.
    pktinfo: bool,
}

/// One datagram read from a host socket.
#[derive(Debug)]
struct Received {
    n: usize,
    from: SocketAddr,
    /// The host address it was sent to (a server on `::`, from IPV6_PKTINFO).
    to: Option<Ipv6Addr>,
}

impl Sockets {
    /// The next datagram on either socket.
    async fn recv_from(&self, buf: &mut [u8]) -> std::io::Result<Received> {
        std::future::poll_fn(|cx| {
            if self.pktinfo {
                while let Poll::Ready(ready) = self.v6.poll_recv_ready(cx) {
                    if let Err(e) = ready {
                        return Poll::Ready(Err(e));
                    }
                    match self
                        .v6
                        .try_io(Interest::READABLE, || recv_with_pktinfo(&self.v6, buf))
                    {
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        r => return Poll::Ready(r),
                    }
                }
            }
            let plain = (!self.pktinfo).then_some(&self.v6);
            for s in plain.into_iter().chain(self.v4.as_ref()) {
                let mut rb = tokio::io::ReadBuf::new(&mut *buf);
                if let Poll::Ready(r) = s.poll_recv_from(cx, &mut rb) {
                    return Poll::Ready(r.map(|from| Received {
                        n: rb.filled().len(),
                        from,
                        to: None,
                    }));
                }
            }
            Poll::Pending
        })
        .await
    }
}

/// recvmsg with the IPV6_PKTINFO control message: the datagram, its source and the local
/// address it came to.
fn recv_with_pktinfo(sock: &UdpSocket, buf: &mut [u8]) -> std::io::Result<Received> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut control = nix::cmsg_space!(libc::in6_pktinfo);
    let msg = recvmsg::<SockaddrIn6>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut control),
        MsgFlags::empty(),
    )?;
    let to = msg.cmsgs()?.find_map(|c| match c {
        ControlMessageOwned::Ipv6PacketInfo(info) => Some(Ipv6Addr::from(info.ipi6_addr.s6_addr)),
        _ => None,
    });
    let from = msg
        .address
        .map(|a| SocketAddr::V6(SocketAddrV6::from(a)))
        .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::InvalidData))?;
    Ok(Received {
        n: msg.bytes,
        from,
        to,
    })
}

/// Sends `payload` to `target` from the local address `from` (IPV6_PKTINFO).
async fn send_from(
    sock: &UdpSocket,
    payload: &[u8],
    target: SocketAddrV6,
    from: Ipv6Addr,
) -> std::io::Result<usize> {
    let info = libc::in6_pktinfo {
        ipi6_addr: libc::in6_addr {
            s6_addr: from.octets(),
        },
        ipi6_ifindex: 0,
    };
    let dest = SockaddrIn6::from(target);
    sock.async_io(Interest::WRITABLE, || {
        sendmsg(
            sock.as_raw_fd(),
            &[IoSlice::new(payload)],
            &[ControlMessage::Ipv6PacketInfo(&info)],
            MsgFlags::empty(),
            Some(&dest),
        )
        .map_err(std::io::Error::from)
    })
    .await
}

/// Sends one guest datagram; returns an immediate reply for the guest (guest DNS).
async fn send_out(
    sockets: &Sockets,
    d: Datagram,
    peers: &mut PeerTable,
    locals: &LocalTable,
    identity: &Identity,
    shared: &Shared,
) -> Option<Datagram> {
    let target = match udp_target(d.addr, shared).await {
        Ok(Some(t)) => t,
        Ok(None) => {
            // dns-cache unreachable or busy: SERVFAIL now, not a resolver's timeout.
            let answer = match shared
                .mapping
                .dns_query(identity, false, d.payload.clone())
                .await
            {
                Ok(a) => a,
                Err(_) => crate::servfail::servfail(&d.payload)?,
            };
            return Some(Datagram {
                addr: d.addr,
                payload: answer,
            });
        }
        // A native sendto would fail (ENETUNREACH, EHOSTUNREACH); a datagram socket has no way
        // to report it per packet here, so the datagram is dropped, as the network would.
        Err(_) => return None,
    };
    // Refused: counted and logged by `admit`; the datagram goes nowhere.
    admit(shared, identity, target.ip(), Use::Send).ok()?;
    let sock = match target {
        SocketAddr::V6(_) => &sockets.v6,
        SocketAddr::V4(_) => sockets.v4.as_ref()?,
    };
    peers.learn(target, d.addr);
    let sent = match (target, locals.local_for(target)) {
        (SocketAddr::V6(t), Some(from)) if sockets.pktinfo => {
            send_from(sock, &d.payload, t, from).await
        }
        _ => sock.send_to(&d.payload, target).await,
    };
    if let Err(e) = sent {
        tracing::debug!(%target, error = %e, "UDP send failed");
    }
    None
}

async fn guest_source(
    from: SocketAddr,
    peers: &mut PeerTable,
    shared: &Shared,
) -> Option<SocketAddrV4> {
    if let Some(a) = peers.guest_source(from) {
        return Some(a);
    }
    let SocketAddr::V6(v6) = from else {
        return None;
    };
    let dummy: Ipv4Addr = shared.mapping.peer_dummy(*v6.ip()).await.ok()?;
    let a = SocketAddrV4::new(dummy, v6.port());
    peers.learn(from, a);
    Some(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_answer_from_the_address_written_to() {
        let mut t = LocalTable::new(2);
        let a: SocketAddr = "[fd00:64::c1]:4000".parse().unwrap();
        let local: Ipv6Addr = "fd00:64::1".parse().unwrap();
        t.learn(a, local);
        assert_eq!(t.local_for(a), Some(local));
        assert_eq!(t.local_for("[fd00:64::c1]:4001".parse().unwrap()), None);
        t.learn("[fd00:64::c2]:1".parse().unwrap(), local);
        t.learn("[fd00:64::c3]:1".parse().unwrap(), local);
        assert_eq!(t.local_for(a), None);
    }

    #[test]
    fn fixed_ports_are_shared_and_ephemeral_ones_are_not() {
        let udp = || Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP)).unwrap();
        let loopback = |port| SockAddr::from(SocketAddrV6::new(Ipv6Addr::LOCALHOST, port, 0, 0));
        let first = udp();
        share_fixed_port(&first, 1).unwrap();
        first.bind(&loopback(0)).unwrap();
        let port = first.local_addr().unwrap().as_socket().unwrap().port();
        // A server binding its port again (iperf3 -u -s) shares it.
        let second = udp();
        share_fixed_port(&second, port).unwrap();
        second.bind(&loopback(port)).unwrap();
        // A socket without a fixed port of its own does not.
        let third = udp();
        share_fixed_port(&third, 0).unwrap();
        assert!(third.bind(&loopback(port)).is_err());
    }

    #[test]
    fn connected_servers_bind_where_the_client_wrote() {
        let client: SocketAddr = "[fd00:64::c1]:4000".parse().unwrap();
        let host: Ipv6Addr = "fd00:64::1".parse().unwrap();
        let locals = std::sync::Mutex::new(LocalTable::new(4));
        locals.lock().unwrap().learn(client, host);
        let any = Ipv6Addr::UNSPECIFIED;
        assert_eq!(server_local(5201, any, client, &locals), Some(host));
        // A client socket (port 0), a configured default address, an unknown client: as usual.
        assert_eq!(server_local(0, any, client, &locals), None);
        assert_eq!(server_local(5201, host, client, &locals), None);
        let other: SocketAddr = "[fd00:64::c1]:4001".parse().unwrap();
        assert_eq!(server_local(5201, any, other, &locals), None);
    }

    #[test]
    fn one_identity_at_a_time_shares_a_server_port() {
        let key = (Ipv6Addr::UNSPECIFIED, 5201);
        let alice = Identity::Process { uid: 1000 };
        let bob = Identity::Process { uid: 1001 };
        let mut h = PortHolders::default();
        h.take(key, &alice).unwrap();
        // iperf3 -u -s binding its port again: the same identity shares it.
        h.take(key, &alice).unwrap();
        assert_eq!(h.take(key, &bob), Err(Errno::EADDRINUSE));
        assert_eq!(h.check(key, &bob), Err(Errno::EADDRINUSE));
        // Another address, or port, is another key.
        h.take((Ipv6Addr::LOCALHOST, 5201), &bob).unwrap();
        h.take((Ipv6Addr::UNSPECIFIED, 5202), &bob).unwrap();
        h.give_back(key);
        assert_eq!(h.check(key, &bob), Err(Errno::EADDRINUSE));
        h.give_back(key);
        h.check(key, &bob).unwrap();
        h.take(key, &bob).unwrap();
    }

    #[test]
    fn only_clients_close_when_idle() {
        let t = std::time::Duration::from_secs(2);
        let client = UdpRequest {
            bind: "0.0.0.0:0".parse().unwrap(),
            channel: false,
        };
        let server = UdpRequest {
            bind: "0.0.0.0:5353".parse().unwrap(),
            channel: false,
        };
        assert_eq!(idle_limit(&client, t), Some(t));
        assert_eq!(idle_limit(&server, t), None);
    }

    #[test]
    fn replies_come_from_the_address_the_guest_used() {
        let mut t = PeerTable::new(2);
        let host: SocketAddr = "[fd00:64::e]:7".parse().unwrap();
        let guest: SocketAddrV4 = "10.170.160.5:7".parse().unwrap();
        t.learn(host, guest);
        assert_eq!(t.guest_source(host), Some(guest));
        assert_eq!(t.guest_source("[fd00:64::f]:7".parse().unwrap()), None);
        // IPv4 egress peers show as themselves.
        assert_eq!(
            t.guest_source("[::ffff:203.0.113.10]:53".parse().unwrap()),
            Some("203.0.113.10:53".parse().unwrap())
        );
        // Bounded: a third peer starts the table over.
        t.learn("[fd00:64::a]:1".parse().unwrap(), guest);
        t.learn("[fd00:64::b]:1".parse().unwrap(), guest);
        assert_eq!(t.guest_source(host), None);
    }
}
