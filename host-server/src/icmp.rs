//! ICMP echo associations: a program's ping socket (`socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP)`)
//! translated to ICMPv6 echo (RFC 7915 §4.2 and §5.2). The stream carries `Datagram` frames as a
//! UDP association's does (`udp`), but each payload is an ICMPv4 message as a Linux ping socket
//! reads and writes it (the ICMP header and data, no IP header), and the association belongs to
//! the one destination of its `Icmp` request.
//!
//! host-server sends on its own ping socket, `socket(AF_INET6, SOCK_DGRAM, IPPROTO_ICMPV6)`
//! (an `AF_INET` one for a real IPv4 destination with IPv4 egress), which needs
//! `net.ipv4.ping_group_range` to include host-server's group (the sysctl covers IPv6 ping
//! sockets too); without it the request fails with the kernel's EACCES and a warning naming the
//! sysctl. The kernel's ping socket computes the checksums and owns the identifier, so an echo
//! request (type 8) goes out as type 128 with the guest's sequence number and data, and an echo
//! reply (129) comes back as type 0 with the guest's identifier, the same sequence and data, and
//! a fresh ICMPv4 checksum, from the destination's dummy address, in an `EchoReply` frame with
//! the hop limit it arrived with (IPV6_RECVHOPLIMIT), the TTL the program's `IP_RECVTTL` (or a
//! raw socket's IPv4 header) reports. Nothing waits or batches: a
//! reply is written to the stream the moment it is read, so the round-trip time a program
//! measures is the network's plus one local relay.
//!
//! The destination policy is asked once, before the socket exists: a refused destination fails
//! the request with EACCES, so the program's first send reports it and nothing leaves. Replies
//! from any other address than the destination are dropped. liboutsock refuses any other ICMP
//! type with EINVAL before it reaches the stream, as the kernel's ping socket does; a frame that
//! is not an echo request anyway is dropped here.

use std::io::IoSliceMut;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;

use nix::sys::socket::{
    recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, SockaddrStorage,
};
use tokio::io::Interest;

use shared_proto::outsource::{Datagram, IcmpRequest};
use shared_proto::{Errno, ToGuest};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::net::UdpSocket;

use crate::assoc::Channel;
use crate::context::{admit, Request, Shared, Use};
use crate::identity::Identity;
use crate::metrics::Event;
use crate::ratelimit::LogLimit;
use crate::udp::udp_target;

/// ICMPv4 echo request and reply (RFC 792).
const ECHO_REQUEST_V4: u8 = 8;
const ECHO_REPLY_V4: u8 = 0;
/// ICMPv6 echo request and reply (RFC 4443).
const ECHO_REQUEST_V6: u8 = 128;
const ECHO_REPLY_V6: u8 = 129;
/// The ICMP echo header: type, code, checksum, identifier, sequence number.
const HEADER: usize = 8;
/// Largest message read from the host socket.
const MAX_MESSAGE: usize = 65_535;

/// The Internet checksum (RFC 1071) of `data`.
#[must_use]
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    #[allow(clippy::cast_possible_truncation)] // Folded to 16 bits above.
    let folded = sum as u16;
    !folded
}

/// Whether `msg` is an ICMPv4 echo request a ping socket accepts (type 8, code 0, a whole
/// header): anything else is EINVAL, as from the kernel's ping socket.
#[must_use]
pub fn is_echo_request(msg: &[u8]) -> bool {
    msg.len() >= HEADER && msg[0] == ECHO_REQUEST_V4 && msg[1] == 0
}

/// The guest's echo request as the host socket sends it: ICMPv6 type 128 (`v6`) or ICMPv4 type
/// 8 otherwise, checksum left to the kernel; with the guest's identifier (returned).
#[must_use]
pub fn request_out(msg: &[u8], v6: bool) -> Option<(Vec<u8>, u16)> {
    if !is_echo_request(msg) {
        return None;
    }
    let mut out = msg.to_vec();
    out[0] = if v6 { ECHO_REQUEST_V6 } else { ECHO_REQUEST_V4 };
    out[2] = 0;
    out[3] = 0;
    Some((out, u16::from_be_bytes([msg[4], msg[5]])))
}

/// A reply read from the host socket as the guest's ping socket would read it: ICMPv4 type 0
/// with the guest's identifier `id` and a correct checksum; `None` for anything but an echo
/// reply.
#[must_use]
pub fn reply_in(msg: &[u8], v6: bool, id: u16) -> Option<Vec<u8>> {
    let want = if v6 { ECHO_REPLY_V6 } else { ECHO_REPLY_V4 };
    if msg.len() < HEADER || msg[0] != want || msg[1] != 0 {
        return None;
    }
    let mut out = msg.to_vec();
    out[0] = ECHO_REPLY_V4;
    out[2] = 0;
    out[3] = 0;
    out[4..6].copy_from_slice(&id.to_be_bytes());
    let sum = checksum(&out);
    out[2..4].copy_from_slice(&sum.to_be_bytes());
    Some(out)
}

/// host-server's ping socket for `target`'s family, bound where a UDP client's socket would be:
/// the VM's address, else `listen.default_address`.
fn open_socket(
    shared: &Shared,
    identity: &Identity,
    target: SocketAddr,
) -> Result<UdpSocket, Errno> {
    let s = &shared.settings;
    let local = match identity {
        Identity::Vm(name) => s.vms.get(name).map(|v| v.address).ok_or(Errno::EPERM)?,
        Identity::Process { .. } => s.listen_default_address,
    };
    let made = || -> std::io::Result<UdpSocket> {
        let sock = if target.is_ipv6() {
            let sock = Socket::new(
                Domain::IPV6,
                Type::DGRAM.nonblocking(),
                Some(Protocol::ICMPV6),
            )?;
            sock.bind(&SockAddr::from(SocketAddrV6::new(local, 0, 0, 0)))?;
            sock
        } else {
            Socket::new(
                Domain::IPV4,
                Type::DGRAM.nonblocking(),
                Some(Protocol::ICMPV4),
            )?
        };
        // A datagram socket as far as tokio is concerned: sendto/recvmsg are all it uses.
        let sock = UdpSocket::from_std(sock.into())?;
        if target.is_ipv6() {
            setsockopt(&sock, sockopt::Ipv6RecvHopLimit, &true)?;
        } else {
            setsockopt(&sock, sockopt::Ipv4RecvTtl, &true)?;
        }
        Ok(sock)
    };
    made().map_err(|e| {
        if e.raw_os_error() == Some(libc::EACCES) {
            static LOG: LogLimit = LogLimit::new();
            if LOG.allow() {
                tracing::warn!(
                    %identity,
                    "cannot open a ping socket: net.ipv4.ping_group_range must include \
                     host-server's group"
                );
            }
        }
        crate::errno::bind_errno(&e)
    })
}

/// Runs one ICMP echo association to its end.
pub(crate) async fn associate(req: Request, i: &IcmpRequest, shared: &Shared) {
    let target = match udp_target(i.dest, shared).await {
        Ok(Some(t)) => t,
        // The guest DNS address answers no pings.
        Ok(None) => return req.refuse(Errno::EHOSTUNREACH).await,
        Err(errno) => return req.refuse(errno).await,
    };
    if let Err(errno) = admit(shared, &req.identity, target.ip(), Use::Send) {
        return req.refuse(errno).await;
    }
    let sock = match open_socket(shared, &req.identity, target) {
        Ok(s) => s,
        Err(errno) => return req.refuse(errno).await,
    };
    let target = match target {
        SocketAddr::V6(a) => SocketAddr::V6(SocketAddrV6::new(*a.ip(), 0, 0, 0)),
        SocketAddr::V4(a) => SocketAddr::V4(SocketAddrV4::new(*a.ip(), 0)),
    };
    let v6 = target.is_ipv6();
    let Request {
        stream,
        identity,
        leftover,
        permit,
        ..
    } = req;
    // A ping socket's "port" is its identifier.
    let ident = sock.local_addr().map_or(0, |a| a.port());
    let local = SocketAddrV4::new(*i.bind.ip(), ident);
    // A process gets its datagrams one packet each (see `assoc`).
    let packets = matches!(identity, Identity::Process { .. });
    let answer = ToGuest::Associated { local };
    let Some(mut channel) = Channel::open(stream, leftover, &answer, packets, shared).await else {
        return;
    };
    let source = SocketAddrV4::new(*i.dest.ip(), 0);
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut guest_id = ident;
    let idle = shared.settings.udp_idle_timeout;
    loop {
        let deadline = tokio::time::Instant::now() + idle;
        tokio::select! {
            f = channel.next_datagram() => {
                let Some(d) = f else { break };
                // The association is its destination's (the shim opens another for another).
                if d.addr.ip() != i.dest.ip() {
                    continue;
                }
                let Some((out, id)) = request_out(&d.payload, v6) else { continue };
                guest_id = id;
                shared.metrics.record(Event::IcmpEchoOut);
                if let Err(e) = sock.send_to(&out, target).await {
                    tracing::debug!(%target, error = %e, "ICMP echo send failed");
                }
            }
            r = sock.async_io(Interest::READABLE, || recv_with_ttl(&sock, &mut buf)) => {
                let Ok((n, from, ttl)) = r else { continue };
                if from.map(|a| a.ip()) != Some(target.ip()) {
                    continue;
                }
                let Some(reply) = reply_in(&buf[..n], v6, guest_id) else { continue };
                shared.metrics.record(Event::IcmpEchoIn);
                let datagram = Datagram { addr: source, payload: reply };
                let frame = ToGuest::EchoReply { datagram, ttl };
                if channel.write(&frame).await.is_err() {
                    break;
                }
            }
            () = tokio::time::sleep_until(deadline) => {
                tracing::debug!(%identity, "ICMP echo association idle; closing");
                break;
            }
        }
    }
    drop(permit);
}

/// recvmsg with the hop limit (or TTL) control message: the message's length, its source and
/// the hop limit it arrived with (64 if the kernel gave none).
fn recv_with_ttl(
    sock: &UdpSocket,
    buf: &mut [u8],
) -> std::io::Result<(usize, Option<SocketAddr>, u8)> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut control = nix::cmsg_space!(libc::c_int);
    let msg = recvmsg::<SockaddrStorage>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut control),
        MsgFlags::empty(),
    )?;
    let ttl = msg
        .cmsgs()?
        .find_map(|c| match c {
            ControlMessageOwned::Ipv6HopLimit(h) => u8::try_from(h).ok(),
            ControlMessageOwned::Ipv4Ttl(t) => u8::try_from(t).ok(),
            _ => None,
        })
        .unwrap_or(64);
    let from = msg.address.and_then(|a| {
        a.as_sockaddr_in6()
            .map(|a6| SocketAddr::V6(SocketAddrV6::from(*a6)))
            .or_else(|| {
                a.as_sockaddr_in()
                    .map(|a4| SocketAddr::V4(SocketAddrV4::from(*a4)))
            })
    });
    Ok((msg.bytes, from, ttl))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(id: u16, seq: u16, data: &[u8]) -> Vec<u8> {
        let mut m = vec![8, 0, 0, 0];
        m.extend_from_slice(&id.to_be_bytes());
        m.extend_from_slice(&seq.to_be_bytes());
        m.extend_from_slice(data);
        let c = checksum(&m);
        m[2..4].copy_from_slice(&c.to_be_bytes());
        m
    }

    #[test]
    fn echo_requests_become_icmpv6_and_replies_come_back_as_icmpv4() {
        let req = request(0x1234, 7, b"hello, world");
        let (out, id) = request_out(&req, true).unwrap();
        assert_eq!((out[0], out[1], id), (128, 0, 0x1234));
        assert_eq!(&out[6..], &req[6..], "sequence and data kept");
        // The network answers with type 129 and the host socket's own identifier.
        let mut reply = out.clone();
        reply[0] = 129;
        reply[4..6].copy_from_slice(&0x9999u16.to_be_bytes());
        let back = reply_in(&reply, true, id).unwrap();
        assert_eq!(back[0], 0);
        assert_eq!(
            &back[4..6],
            &0x1234u16.to_be_bytes(),
            "the guest's identifier"
        );
        assert_eq!(&back[6..], &req[6..]);
        assert_eq!(checksum(&back), 0, "a valid ICMPv4 checksum");
    }

    #[test]
    fn only_echo_passes() {
        assert!(
            request_out(&[13, 0, 0, 0, 0, 0, 0, 0], true).is_none(),
            "timestamp"
        );
        assert!(
            request_out(&[8, 1, 0, 0, 0, 0, 0, 0], true).is_none(),
            "code 1"
        );
        assert!(request_out(&[8, 0, 0], true).is_none(), "short");
        assert!(reply_in(&[1, 0, 0, 0, 0, 0, 0, 0], true, 1).is_none());
        assert!(reply_in(&[0, 0, 0, 0, 0, 0, 0, 0], false, 1).is_some());
        // Odd length checksums pad with a zero byte.
        assert_eq!(checksum(&[0xff]), !0xff00);
    }
}
