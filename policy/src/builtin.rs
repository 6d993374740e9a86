//! The built-in exclusions, which no setting can lift, and [`Reason`], why an address was
//! refused (also the `reason` label of the daemons' refusal counters).
//!
//! IPv6: unspecified, loopback, link-local, multicast, IPv4-mapped and IPv4-compatible
//! (RFC 6147 §5.1.4: never synthesise for these). IPv4 (the IPv4-egress data path): this
//! network 0/8, loopback 127/8, link-local 169.254/16, multicast 224/4, reserved 240/4 and the
//! limited broadcast address.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::prefix::{Ipv4Net, Ipv6Net};

/// Why a destination was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// `::` or `0.0.0.0`.
    Unspecified,
    /// `::1`, `127.0.0.0/8`.
    Loopback,
    /// `fe80::/10`, `169.254.0.0/16`.
    LinkLocal,
    /// `ff00::/8`, `224.0.0.0/4`.
    Multicast,
    /// `::ffff:0:0/96` and `::/96`: an IPv4 address in IPv6 clothing.
    Ipv4Mapped,
    /// `0.0.0.0/8` (other than `0.0.0.0`).
    ThisNetwork,
    /// `240.0.0.0/4` (other than the broadcast address).
    Reserved,
    /// `255.255.255.255`.
    Broadcast,
    /// One of the host's own addresses.
    HostAddress,
    /// Inside one of outsock's own dummy pools.
    Pool,
    /// Inside a `destinations.deny` prefix and no `destinations.allow` prefix.
    Denied,
}

impl Reason {
    /// Every reason, in [`Reason::index`] order.
    pub const ALL: [Reason; 11] = [
        Reason::Unspecified,
        Reason::Loopback,
        Reason::LinkLocal,
        Reason::Multicast,
        Reason::Ipv4Mapped,
        Reason::ThisNetwork,
        Reason::Reserved,
        Reason::Broadcast,
        Reason::HostAddress,
        Reason::Pool,
        Reason::Denied,
    ];

    /// The metrics label and log field.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::Unspecified => "unspecified",
            Reason::Loopback => "loopback",
            Reason::LinkLocal => "link_local",
            Reason::Multicast => "multicast",
            Reason::Ipv4Mapped => "ipv4_mapped",
            Reason::ThisNetwork => "this_network",
            Reason::Reserved => "reserved",
            Reason::Broadcast => "broadcast",
            Reason::HostAddress => "host_address",
            Reason::Pool => "pool",
            Reason::Denied => "denied",
        }
    }

    /// A dense index (for arrays of counters).
    #[must_use]
    pub const fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The built-in IPv6 exclusions as prefixes, with their reasons (for checking settings; the
/// per-address test is [`builtin_v6`]).
pub const BUILTIN_V6: [(Ipv6Net, Reason); 6] = [
    (Ipv6Net::from_bits(0, 128), Reason::Unspecified),
    (Ipv6Net::from_bits(1, 128), Reason::Loopback),
    (Ipv6Net::from_bits(0xfe80 << 112, 10), Reason::LinkLocal),
    (Ipv6Net::from_bits(0xff00 << 112, 8), Reason::Multicast),
    (Ipv6Net::from_bits(0xffff << 32, 96), Reason::Ipv4Mapped),
    (Ipv6Net::from_bits(0, 96), Reason::Ipv4Mapped),
];

/// The built-in IPv4 exclusions as prefixes, with their reasons.
pub const BUILTIN_V4: [(Ipv4Net, Reason); 6] = [
    (Ipv4Net::from_octets([0, 0, 0, 0], 8), Reason::ThisNetwork),
    (Ipv4Net::from_octets([127, 0, 0, 0], 8), Reason::Loopback),
    (
        Ipv4Net::from_octets([169, 254, 0, 0], 16),
        Reason::LinkLocal,
    ),
    (Ipv4Net::from_octets([224, 0, 0, 0], 4), Reason::Multicast),
    (Ipv4Net::from_octets([240, 0, 0, 0], 4), Reason::Reserved),
    (
        Ipv4Net::from_octets([255, 255, 255, 255], 32),
        Reason::Broadcast,
    ),
];

/// The built-in verdict for an IPv6 address: `Some(reason)` when it is never a destination.
#[must_use]
pub fn builtin_v6(a: Ipv6Addr) -> Option<Reason> {
    let bits = u128::from(a);
    if bits == 0 {
        Some(Reason::Unspecified)
    } else if bits == 1 {
        Some(Reason::Loopback)
    } else if bits >> 118 == 0xfe80 >> 6 {
        Some(Reason::LinkLocal)
    } else if bits >> 120 == 0xff {
        Some(Reason::Multicast)
    } else if bits >> 32 == 0xffff || bits >> 32 == 0 {
        Some(Reason::Ipv4Mapped)
    } else {
        None
    }
}

/// The built-in verdict for an IPv4 address.
#[must_use]
pub fn builtin_v4(a: Ipv4Addr) -> Option<Reason> {
    let [o0, o1, ..] = a.octets();
    if a.is_unspecified() {
        Some(Reason::Unspecified)
    } else if a.is_broadcast() {
        Some(Reason::Broadcast)
    } else if o0 == 0 {
        Some(Reason::ThisNetwork)
    } else if o0 == 127 {
        Some(Reason::Loopback)
    } else if o0 == 169 && o1 == 254 {
        Some(Reason::LinkLocal)
    } else if o0 & 0xf0 == 224 {
        Some(Reason::Multicast)
    } else if o0 & 0xf0 == 240 {
        Some(Reason::Reserved)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v6(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    fn v4(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn every_ipv6_class() {
        assert_eq!(builtin_v6(v6("::")), Some(Reason::Unspecified));
        assert_eq!(builtin_v6(v6("::1")), Some(Reason::Loopback));
        assert_eq!(builtin_v6(v6("fe80::1")), Some(Reason::LinkLocal));
        assert_eq!(builtin_v6(v6("febf:ffff::1")), Some(Reason::LinkLocal));
        assert_eq!(builtin_v6(v6("fec0::1")), None);
        assert_eq!(builtin_v6(v6("ff02::1")), Some(Reason::Multicast));
        assert_eq!(builtin_v6(v6("ff05::1:3")), Some(Reason::Multicast));
        assert_eq!(
            builtin_v6(v6("::ffff:203.0.113.5")),
            Some(Reason::Ipv4Mapped)
        );
        assert_eq!(builtin_v6(v6("::203.0.113.5")), Some(Reason::Ipv4Mapped));
        assert_eq!(builtin_v6(v6("::ffff:127.0.0.1")), Some(Reason::Ipv4Mapped));
        // ULA and global are destinations; so is NAT64's well-known prefix.
        assert_eq!(builtin_v6(v6("fd00:64::80")), None);
        assert_eq!(builtin_v6(v6("2001:db8::1")), None);
        assert_eq!(builtin_v6(v6("64:ff9b::203.0.113.5")), None);
        assert_eq!(builtin_v6(v6("::1:0:0:0")), None);
    }

    #[test]
    fn every_ipv4_class() {
        assert_eq!(builtin_v4(v4("0.0.0.0")), Some(Reason::Unspecified));
        assert_eq!(builtin_v4(v4("0.1.2.3")), Some(Reason::ThisNetwork));
        assert_eq!(builtin_v4(v4("127.0.0.1")), Some(Reason::Loopback));
        assert_eq!(builtin_v4(v4("127.255.0.9")), Some(Reason::Loopback));
        assert_eq!(builtin_v4(v4("169.254.1.1")), Some(Reason::LinkLocal));
        assert_eq!(builtin_v4(v4("224.0.0.1")), Some(Reason::Multicast));
        assert_eq!(builtin_v4(v4("239.255.255.250")), Some(Reason::Multicast));
        assert_eq!(builtin_v4(v4("240.0.0.1")), Some(Reason::Reserved));
        assert_eq!(builtin_v4(v4("255.255.255.255")), Some(Reason::Broadcast));
        assert_eq!(builtin_v4(v4("203.0.113.10")), None);
        assert_eq!(builtin_v4(v4("10.1.2.3")), None);
        assert_eq!(builtin_v4(v4("169.253.1.1")), None);
    }

    #[test]
    fn the_prefix_tables_agree_with_the_address_tests() {
        for (net, reason) in BUILTIN_V6 {
            let probe = net.network();
            let got = builtin_v6(probe).unwrap();
            // `::/96` starts with `::`, which has its own reason.
            assert!(got == reason || probe.is_unspecified(), "{net}: {got}");
        }
        for (net, reason) in BUILTIN_V4 {
            let host_bits = u32::MAX
                .checked_shr(u32::from(net.prefix_len()))
                .unwrap_or(0);
            let last = Ipv4Addr::from(u32::from(net.network()) | host_bits);
            assert!(builtin_v4(net.network()).is_some(), "{net}");
            assert!(builtin_v4(last).is_some(), "{net} {last} {reason}");
        }
        let labels: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
        assert_eq!(labels.len(), 11);
    }
}
