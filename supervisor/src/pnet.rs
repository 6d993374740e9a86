//! The private network: where the program's end of a UDP or ICMP association is a real
//! `AF_INET` socket, so that every call on it is the kernel's own — `recvmsg`/`recvmmsg` (BIND
//! `dig`'s), `sendmsg`/`sendmmsg`, `IP_PKTINFO`, `SO_DOMAIN`, poll and epoll — with nothing
//! notified or translated on the way.
//!
//! A helper process of the supervisor's (`sys::pnet_start`) lives in a network namespace of its
//! own (inside a user namespace of its own, so no privilege is needed): there `198.18.0.0/16`
//! is local on `lo`, and every other IPv4 destination is routed to the TUN device `outsock0`,
//! whose other side the supervisor holds. Each association gets one address of that pool
//! ([`Private::take`]); its end, made by the helper (a UDP, ping or raw ICMP socket, as the
//! program's), is bound there (to host-server's port for UDP) and installed over the program's
//! descriptor. What the program sends leaves through the TUN device, where `udp`'s reader finds
//! the association by the packet's source address and frames the payload to host-server;
//! what host-server delivers is written into the TUN device as an IPv4 packet from the peer's
//! dummy (or the nameserver asked) to the end's address, and the kernel delivers it to the end
//! — checksums, queues and a full socket's drops as natively.
//!
//! This module makes and reads the packets ([`parse`], [`udp_packet`], [`icmp_packet`]) and
//! hands out addresses; `sys` starts the helper and makes its sockets. Without the private
//! network (no `/dev/net/tun`, namespaces refused) an association's end is the `AF_UNIX` one
//! `udp` describes.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Mutex, PoisonError};

use shared_proto::icmp::{inet_checksum, ipv4_header};

use crate::sys;

const PROTO_ICMP: u8 = 1;
const PROTO_UDP: u8 = 17;

/// The private network, started.
#[derive(Debug)]
pub struct Private {
    /// The helper's request channel, one request at a time.
    chan: Mutex<OwnedFd>,
    /// The TUN device.
    pub tun: OwnedFd,
    /// The pool's addresses in use, and the next one to try.
    addrs: Mutex<(HashSet<Ipv4Addr>, u32)>,
}

impl Private {
    /// Starts the helper (see the module docs).
    ///
    /// # Errors
    /// Why the private network cannot be had here.
    pub fn start() -> std::io::Result<Self> {
        let p = sys::pnet_start()?;
        Ok(Self {
            chan: Mutex::new(p.chan),
            tun: p.tun,
            addrs: Mutex::new((HashSet::new(), 1)),
        })
    }

    /// A socket (`ty`, `proto` of `AF_INET`) made in the private network.
    ///
    /// # Errors
    /// The helper's socket(2) error, or EPIPE when it is gone.
    pub fn socket(&self, ty: i32, proto: i32) -> std::io::Result<OwnedFd> {
        let chan = self.chan.lock().unwrap_or_else(PoisonError::into_inner);
        sys::pnet_socket(&chan, libc::AF_INET, ty, proto)
    }

    /// An address of the pool no association uses, taken until [`Private::give_back`]; the
    /// next one after the last taken, so that an address comes round again only after all the
    /// others (a socket the program kept past its association's end is long gone by then).
    ///
    /// # Errors
    /// EMFILE when every address is taken.
    pub fn take(&self) -> Result<Ipv4Addr, i32> {
        let (base, len) = sys::PNET_POOL;
        let size = 1u32 << (32 - u32::from(len));
        let base = u32::from(Ipv4Addr::from(base));
        let mut a = self.addrs.lock().unwrap_or_else(PoisonError::into_inner);
        for _ in 0..size {
            let i = a.1;
            a.1 = if i + 2 >= size { 1 } else { i + 1 };
            let addr = Ipv4Addr::from(base + i);
            if a.0.insert(addr) {
                return Ok(addr);
            }
        }
        Err(libc::EMFILE)
    }

    /// Gives `addr` back to the pool.
    pub fn give_back(&self, addr: Ipv4Addr) {
        self.addrs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .remove(&addr);
    }

    /// Writes one IPv4 `packet` into the TUN device (the kernel delivers it, or drops it as a
    /// full socket's datagram).
    pub fn deliver(&self, packet: &[u8]) {
        let _ = sys::write_fd(self.tun.as_raw_fd(), packet);
    }
}

/// What a packet from the private network carries.
#[derive(Debug, PartialEq, Eq)]
pub enum Sent<'a> {
    /// A UDP datagram from `from` (an end's address and port) to `to`.
    Udp {
        from: SocketAddrV4,
        to: SocketAddrV4,
        payload: &'a [u8],
    },
    /// An ICMP message from `from` to `to` (the whole message, its header included).
    Icmp {
        from: Ipv4Addr,
        to: Ipv4Addr,
        message: &'a [u8],
    },
}

/// The UDP datagram or ICMP message in the IPv4 `packet` read from the TUN device; `None` for
/// anything else (another protocol, a fragment, a malformed or truncated packet).
#[must_use]
pub fn parse(packet: &[u8]) -> Option<Sent<'_>> {
    let first = *packet.first()?;
    let ihl = usize::from(first & 0x0f) * 4;
    if first >> 4 != 4 || ihl < 20 || packet.len() < ihl {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    if total < ihl || total > packet.len() {
        return None;
    }
    // More fragments, or an offset: a fragment (the MTU makes none; anything else is dropped).
    if u16::from_be_bytes([packet[6], packet[7]]) & 0x3fff != 0 {
        return None;
    }
    let src = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
    let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
    let body = &packet[ihl..total];
    match packet[9] {
        PROTO_UDP => {
            let h = body.get(..8)?;
            let len = usize::from(u16::from_be_bytes([h[4], h[5]]));
            if len < 8 || len > body.len() {
                return None;
            }
            Some(Sent::Udp {
                from: SocketAddrV4::new(src, u16::from_be_bytes([h[0], h[1]])),
                to: SocketAddrV4::new(dst, u16::from_be_bytes([h[2], h[3]])),
                payload: &body[8..len],
            })
        }
        PROTO_ICMP if body.len() >= 4 => Some(Sent::Icmp {
            from: src,
            to: dst,
            message: body,
        }),
        _ => None,
    }
}

/// The IPv4 packet carrying the UDP datagram `payload` from `from` to `to` (checksummed, as a
/// receiver may insist).
#[must_use]
pub fn udp_packet(from: SocketAddrV4, to: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let len = u16::try_from(8 + payload.len()).unwrap_or(u16::MAX);
    let mut p = ipv4_header(PROTO_UDP, *from.ip(), *to.ip(), 64, usize::from(len));
    let mut udp = Vec::with_capacity(usize::from(len));
    udp.extend_from_slice(&from.port().to_be_bytes());
    udp.extend_from_slice(&to.port().to_be_bytes());
    udp.extend_from_slice(&len.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    // The pseudo-header, then the datagram.
    let mut pseudo = Vec::with_capacity(12 + udp.len());
    pseudo.extend_from_slice(&from.ip().octets());
    pseudo.extend_from_slice(&to.ip().octets());
    pseudo.extend_from_slice(&[0, PROTO_UDP]);
    pseudo.extend_from_slice(&len.to_be_bytes());
    pseudo.extend_from_slice(&udp);
    let sum = match inet_checksum(&pseudo) {
        // Zero means "no checksum" over IPv4: all ones stands for it.
        0 => 0xffff,
        s => s,
    };
    udp[6..8].copy_from_slice(&sum.to_be_bytes());
    p.extend_from_slice(&udp);
    p
}

/// The IPv4 packet carrying the ICMP `message` from `from` to `to` with `ttl`, its ICMP
/// checksum made anew.
#[must_use]
pub fn icmp_packet(from: Ipv4Addr, to: Ipv4Addr, ttl: u8, message: &[u8]) -> Vec<u8> {
    let mut p = ipv4_header(PROTO_ICMP, from, to, ttl, message.len());
    let at = p.len();
    p.extend_from_slice(message);
    if message.len() >= 4 {
        p[at + 2..at + 4].copy_from_slice(&[0, 0]);
        let sum = inet_checksum(&p[at..]);
        p[at + 2..at + 4].copy_from_slice(&sum.to_be_bytes());
    }
    p
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_udp_packet_made_here_parses_back_and_checks() {
        let from: SocketAddrV4 = "10.170.160.1:53".parse().unwrap();
        let to: SocketAddrV4 = "198.18.0.7:40000".parse().unwrap();
        let p = udp_packet(from, to, b"hello");
        assert_eq!(p.len(), 20 + 8 + 5);
        assert_eq!(inet_checksum(&p[..20]), 0, "IPv4 header checksum");
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&from.ip().octets());
        pseudo.extend_from_slice(&to.ip().octets());
        pseudo.extend_from_slice(&[0, 17, 0, 13]);
        pseudo.extend_from_slice(&p[20..]);
        assert_eq!(inet_checksum(&pseudo), 0, "UDP checksum");
        assert_eq!(
            parse(&p),
            Some(Sent::Udp {
                from,
                to,
                payload: b"hello"
            })
        );
    }

    #[test]
    fn an_icmp_packet_gets_its_checksum_made_anew() {
        let msg = [0u8, 0, 0xde, 0xad, 0, 7, 0, 1, 1, 2, 3];
        let p = icmp_packet(
            Ipv4Addr::new(10, 170, 0, 9),
            Ipv4Addr::new(198, 18, 0, 1),
            57,
            &msg,
        );
        assert_eq!(p[8], 57, "TTL");
        assert_eq!(inet_checksum(&p[20..]), 0);
        assert_eq!(&p[24..], &msg[4..]);
        assert!(matches!(parse(&p), Some(Sent::Icmp { message, .. }) if message.len() == 11));
    }

    /// The next packet from the TUN device that parses, within 5 s.
    fn next_sent(pnet: &Private, buf: &mut [u8]) -> usize {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            assert!(std::time::Instant::now() < deadline, "nothing came out");
            if !sys::wait_readable(pnet.tun.as_raw_fd(), 500) {
                continue;
            }
            let n = sys::read_fd(pnet.tun.as_raw_fd(), buf).unwrap();
            if parse(&buf[..n]).is_some() {
                return n;
            }
        }
    }

    /// The real thing: a helper in namespaces of its own, its TUN device, a UDP socket and a
    /// ping socket made there, what they send read from the device and what is written into
    /// it received by them (`recvfrom`, the kernel's), from the source the packet names.
    #[test]
    fn a_private_networks_sockets_send_through_the_tun_device_and_hear_what_is_written() {
        // Started on a thread that ends at once, as a worker thread may: the helper lives on.
        let pnet = match std::thread::spawn(Private::start).join().unwrap() {
            Ok(p) => p,
            Err(e) => {
                let why = format!("no private network here ({e}): /dev/net/tun and namespaces");
                assert!(std::env::var_os("CI").is_none(), "{why}");
                eprintln!("skipped: {why}");
                return;
            }
        };
        let mut buf = vec![0u8; 65_536];
        let a = pnet.take().unwrap();
        let b = pnet.take().unwrap();
        assert_ne!(a, b);
        let peer: SocketAddrV4 = "10.170.0.9:53".parse().unwrap();

        let udp = pnet.socket(libc::SOCK_DGRAM, libc::IPPROTO_UDP).unwrap();
        let me = SocketAddrV4::new(a, 40_000);
        assert_eq!(
            sys::bind_raw(
                udp.as_raw_fd(),
                &shared_proto::translate::encode_sockaddr_in(me)
            ),
            0
        );
        let to = shared_proto::translate::encode_sockaddr_in(peer);
        assert_eq!(sys::send_to(udp.as_raw_fd(), b"query", 0, &to), Ok(5));
        let n = next_sent(&pnet, &mut buf);
        assert_eq!(
            parse(&buf[..n]),
            Some(Sent::Udp {
                from: me,
                to: peer,
                payload: b"query"
            })
        );
        pnet.deliver(&udp_packet(peer, me, b"answer"));
        assert!(sys::wait_readable(udp.as_raw_fd(), 5000));
        let mut got = [0u8; 64];
        let sock = std::net::UdpSocket::from(udp);
        let (len, from) = sock.recv_from(&mut got).unwrap();
        assert_eq!(&got[..len], b"answer");
        assert_eq!(from, std::net::SocketAddr::V4(peer));

        // A ping socket: the kernel sets its identifier; a reply carrying it reaches it.
        let ping = pnet.socket(libc::SOCK_DGRAM, libc::IPPROTO_ICMP).unwrap();
        let me = SocketAddrV4::new(b, 0);
        assert_eq!(
            sys::bind_raw(
                ping.as_raw_fd(),
                &shared_proto::translate::encode_sockaddr_in(me)
            ),
            0
        );
        let ident = sys::local_port(ping.as_raw_fd()).unwrap();
        let echo = [8u8, 0, 0, 0, 0, 0, 0, 1, b'p', b'i', b'n', b'g'];
        let dest = shared_proto::translate::encode_sockaddr_in(SocketAddrV4::new(*peer.ip(), 0));
        assert_eq!(sys::send_to(ping.as_raw_fd(), &echo, 0, &dest), Ok(12));
        let n = next_sent(&pnet, &mut buf);
        let Some(Sent::Icmp { from, to, message }) = parse(&buf[..n]) else {
            panic!("not ICMP: {:?}", &buf[..n]);
        };
        assert_eq!((from, to), (b, *peer.ip()));
        assert_eq!(
            &message[4..6],
            &ident.to_be_bytes(),
            "the kernel's identifier"
        );
        let mut reply = message.to_vec();
        reply[0] = 0;
        pnet.deliver(&icmp_packet(*peer.ip(), b, 61, &reply));
        assert!(sys::wait_readable(ping.as_raw_fd(), 5000));
        let sock = std::net::UdpSocket::from(ping);
        let (len, from) = sock.recv_from(&mut got).unwrap();
        assert_eq!(&got[..len][8..], b"ping");
        assert_eq!(from.ip(), std::net::IpAddr::V4(*peer.ip()));
        pnet.give_back(a);
        assert_eq!(pnet.take().map(|c| c == a), Ok(false), "not at once again");
    }

    #[test]
    fn fragments_truncations_and_other_protocols_are_not_read() {
        let from: SocketAddrV4 = "198.18.0.2:1000".parse().unwrap();
        let to: SocketAddrV4 = "10.170.0.1:53".parse().unwrap();
        let p = udp_packet(from, to, b"abc");
        for cut in 0..p.len() {
            assert_eq!(parse(&p[..cut]), None, "cut at {cut}");
        }
        let mut frag = p.clone();
        frag[6] = 0x20; // more fragments
        assert_eq!(parse(&frag), None);
        let mut tcp = p.clone();
        tcp[9] = 6;
        assert_eq!(parse(&tcp), None);
        let mut v6 = p.clone();
        v6[0] = 0x65;
        assert_eq!(parse(&v6), None);
        let mut long_udp = p;
        long_udp[24..26].copy_from_slice(&100u16.to_be_bytes());
        assert_eq!(parse(&long_udp), None);
    }
}
