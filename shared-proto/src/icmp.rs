//! ICMP echo as a program's ping socket or raw ICMP socket sees it, shared by liboutsock and
//! outsock-supervisor (one rule for both front ends): which messages a ping socket may send
//! ([`is_echo_request`]) and the IPv4 header a raw socket's reader expects in front of each
//! echo reply ([`with_ipv4_header`]).

use std::net::Ipv4Addr;

/// `IPPROTO_ICMP`.
const PROTO_ICMP: u8 = 1;
/// The ICMP echo header: type, code, checksum, identifier, sequence number.
pub const ECHO_HEADER: usize = 8;

/// Whether `msg` is what a ping socket sends: an ICMPv4 echo request (type 8, code 0) with its
/// whole 8-byte header. Anything else is EINVAL, as from the kernel's ping socket.
#[must_use]
pub fn is_echo_request(msg: &[u8]) -> bool {
    msg.len() >= ECHO_HEADER && msg[0] == 8 && msg[1] == 0
}

/// `icmp` with the 20-byte IPv4 header (no options, don't-fragment, checksummed) a raw ICMP
/// socket's reader expects: from `from` to `to`, with the reply's `ttl`.
#[must_use]
pub fn with_ipv4_header(icmp: &[u8], from: Ipv4Addr, to: Ipv4Addr, ttl: u8) -> Vec<u8> {
    let mut h = ipv4_header(PROTO_ICMP, from, to, ttl, icmp.len());
    h.extend_from_slice(icmp);
    h
}

/// A 20-byte IPv4 header (no options, don't-fragment, checksummed) for `len` bytes of
/// protocol `proto` from `from` to `to` with `ttl`, in a vector with room for the `len` bytes.
#[must_use]
pub fn ipv4_header(proto: u8, from: Ipv4Addr, to: Ipv4Addr, ttl: u8, len: usize) -> Vec<u8> {
    let total = u16::try_from(len + 20).unwrap_or(u16::MAX);
    let mut h = Vec::with_capacity(20 + len);
    h.extend_from_slice(&[0x45, 0]);
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&[0, 0, 0x40, 0, ttl, proto, 0, 0]);
    h.extend_from_slice(&from.octets());
    h.extend_from_slice(&to.octets());
    let sum = inet_checksum(&h);
    h[10..12].copy_from_slice(&sum.to_be_bytes());
    h
}

/// The Internet checksum (RFC 1071) of `data`.
#[must_use]
pub fn inet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).unwrap_or(u16::MAX)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn only_a_whole_echo_request_is_sent() {
        assert!(is_echo_request(&[8, 0, 0, 0, 0, 1, 0, 1]));
        assert!(is_echo_request(&[8, 0, 0, 0, 0, 1, 0, 1, 0xaa]));
        // A reply, a timestamp request, a bad code, a short header.
        assert!(!is_echo_request(&[0, 0, 0, 0, 0, 1, 0, 1]));
        assert!(!is_echo_request(&[13, 0, 0, 0, 0, 1, 0, 1]));
        assert!(!is_echo_request(&[8, 1, 0, 0, 0, 1, 0, 1]));
        assert!(!is_echo_request(&[8, 0, 0, 0, 0, 1, 0]));
        assert!(!is_echo_request(&[]));
    }

    #[test]
    fn the_ipv4_header_is_what_a_raw_reader_parses() {
        let icmp = [0u8, 0, 0x12, 0x34, 0, 7, 0, 1, b'x', b'y'];
        let from = Ipv4Addr::new(172, 21, 112, 9);
        let to = Ipv4Addr::new(10, 0, 0, 2);
        let p = with_ipv4_header(&icmp, from, to, 57);
        assert_eq!(p.len(), 30);
        assert_eq!(p[0] >> 4, 4);
        assert_eq!(usize::from(p[0] & 0xf) * 4, 20);
        assert_eq!(u16::from_be_bytes([p[2], p[3]]), 30);
        assert_eq!((p[8], p[9]), (57, 1));
        assert_eq!(&p[12..16], &from.octets());
        assert_eq!(&p[16..20], &to.octets());
        assert_eq!(&p[20..], &icmp);
        // A header whose checksum is right sums to zero.
        assert_eq!(inet_checksum(&p[..20]), 0);
    }

    #[test]
    fn the_checksum_is_rfc_1071s() {
        // RFC 1071's example bytes: the sum 0xddf2, so the checksum 0x220d.
        assert_eq!(
            inet_checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            0x220d
        );
        // An odd length is padded with a zero byte.
        assert_eq!(inet_checksum(&[0xff]), 0x00ff);
    }
}
