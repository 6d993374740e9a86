//! UDP associations: one per outsourced UDP socket. `Datagram` frames go both ways on the
//! stream; host-server sends and receives them on one host UDP socket, translating addresses:
//! outbound, a dummy destination becomes its IPv6 address; inbound, the IPv6 source becomes the
//! dummy the guest used for it (learned from its sends), else the peer's source-pool dummy. The
//! guest DNS address on port 53 is answered by dns-cache. An association with no traffic either
//! way for the idle timeout closes.
//!
//! A process's connected UDP socket (`UdpConnect`) is not an association: host-server makes a
//! host UDP socket connected to the peer's IPv6 address, hands it over with SCM_RIGHTS and keeps
//! nothing (`connect_passed`).

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsFd;

use shared_proto::outsource::{Datagram, ToHost, UdpConnectRequest, UdpRequest};
use shared_proto::{Errno, ToGuest};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::net::UdpSocket;

use crate::context::{Request, Shared};
use crate::dest::Route;
use crate::framed::{write_frame, FrameError, FrameReader};
use crate::handover::send_answer_with_fd;
use crate::identity::{late_frame_error, Identity};
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

fn open_socket(shared: &Shared, identity: &Identity, req: &UdpRequest) -> Result<UdpSocket, Errno> {
    let s = &shared.settings;
    let port = req.bind.port();
    let addr = if port == 0 {
        Ipv6Addr::UNSPECIFIED
    } else {
        // A fixed port is a UDP server: the same allow-list and addresses as TCP listeners.
        if !s.allowed_ports.contains(&port) {
            return Err(Errno::EACCES);
        }
        match identity {
            Identity::Vm(name) => s.vms.get(name).map(|v| v.address).ok_or(Errno::EPERM)?,
            Identity::Process { .. } => s.listen_default_address,
        }
    };
    let host_port = if port == 0 { 0 } else { s.host_port(port) };
    let make = || -> std::io::Result<UdpSocket> {
        let sock = Socket::new(Domain::IPV6, Type::DGRAM.nonblocking(), Some(Protocol::UDP))?;
        // With IPv4 egress the same socket also reaches real IPv4 peers (as ::ffff:a.b.c.d).
        sock.set_only_v6(!s.ipv4_egress)?;
        sock.bind(&SockAddr::from(SocketAddrV6::new(addr, host_port, 0, 0)))?;
        UdpSocket::from_std(sock.into())
    };
    make().map_err(|e| crate::errno::bind_errno(&e))
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
    let sock = match open_socket(shared, &req.identity, &UdpRequest { bind: u.bind }) {
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

/// Where a datagram to the guest-visible `dest` goes on a host socket: the IPv6 address behind
/// a dummy, or (with egress) the IPv4-mapped address; `Ok(None)` for the guest DNS address,
/// which dns-cache answers; the errno a native send would meet otherwise.
async fn udp_target(dest: SocketAddrV4, shared: &Shared) -> Result<Option<SocketAddrV6>, Errno> {
    match shared.router.route(dest) {
        Route::Unreachable => Err(Errno::ENETUNREACH),
        Route::GuestDns => Ok(None),
        Route::Ipv4(sa) => Ok(Some(SocketAddrV6::new(
            sa.ip().to_ipv6_mapped(),
            sa.port(),
            0,
            0,
        ))),
        Route::Dummy(d) => match shared.mapping.resolve(d).await {
            Ok(Some(v6)) => Ok(Some(SocketAddrV6::new(v6, dest.port(), 0, 0))),
            _ => Err(Errno::EHOSTUNREACH),
        },
    }
}

/// Runs one association to its end.
pub(crate) async fn associate(req: Request, u: &UdpRequest, shared: &Shared) {
    let sock = match open_socket(shared, &req.identity, u) {
        Ok(s) => s,
        Err(errno) => return req.refuse(errno).await,
    };
    let Request {
        mut stream,
        identity,
        leftover,
        permit,
    } = req;
    let local = guest_local(&sock, u.bind);
    if write_frame(&mut stream, &ToGuest::Associated { local })
        .await
        .is_err()
    {
        return;
    }
    let (mut rd, mut wr) = stream.split();
    let mut reader = FrameReader::new();
    // Anything pipelined after the request is the start of the frame stream.
    let mut pre = &leftover[..];
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut peers = PeerTable::new(1024);
    let idle = shared.settings.udp_idle_timeout;
    loop {
        let deadline = tokio::time::Instant::now() + idle;
        tokio::select! {
            f = async {
                if pre.is_empty() {
                    reader.read::<ToHost, _>(&mut rd).await
                } else {
                    let mut chained = tokio::io::AsyncReadExt::chain(&mut pre, &mut rd);
                    reader.read::<ToHost, _>(&mut chained).await
                }
            } => {
                let d = match f {
                    Ok(ToHost::Datagram(d)) => d,
                    Ok(other) => {
                        let errno = late_frame_error(&other).map_or(Errno::EPROTO, |e| e.errno());
                        let _ = write_frame(&mut wr, &ToGuest::Failed(errno)).await;
                        break;
                    }
                    Err(FrameError::Proto(_)) => {
                        let _ = write_frame(&mut wr, &ToGuest::Failed(Errno::EPROTO)).await;
                        break;
                    }
                    Err(_) => break,
                };
                shared.metrics.record(Event::UdpOut);
                if let Some(reply) = send_out(&sock, d, &mut peers, &identity, shared).await {
                    if write_frame(&mut wr, &ToGuest::Datagram(reply)).await.is_err() {
                        break;
                    }
                }
            }
            r = sock.recv_from(&mut buf) => {
                let Ok((n, from)) = r else { continue };
                let Some(source) = guest_source(from, &mut peers, shared).await else {
                    continue;
                };
                shared.metrics.record(Event::UdpIn);
                let d = Datagram { addr: source, payload: buf[..n].to_vec() };
                if write_frame(&mut wr, &ToGuest::Datagram(d)).await.is_err() {
                    break;
                }
            }
            () = tokio::time::sleep_until(deadline) => {
                tracing::debug!(%identity, "UDP association idle; closing");
                break;
            }
        }
    }
    drop(permit);
}

/// Sends one guest datagram; returns an immediate reply for the guest (guest DNS).
async fn send_out(
    sock: &UdpSocket,
    d: Datagram,
    peers: &mut PeerTable,
    identity: &Identity,
    shared: &Shared,
) -> Option<Datagram> {
    let target = match udp_target(d.addr, shared).await {
        Ok(Some(t)) => SocketAddr::V6(t),
        Ok(None) => {
            let answer = shared
                .mapping
                .dns_query(identity, false, d.payload)
                .await
                .ok()?;
            return Some(Datagram {
                addr: d.addr,
                payload: answer,
            });
        }
        // A native sendto would fail (ENETUNREACH, EHOSTUNREACH); a datagram socket has no way
        // to report it per packet here, so the datagram is dropped, as the network would.
        Err(_) => return None,
    };
    peers.learn(target, d.addr);
    if let Err(e) = sock.send_to(&d.payload, target).await {
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
