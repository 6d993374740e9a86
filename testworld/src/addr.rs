//! The test world's address plan. Every address is a ULA (fd00:64::/64 on the veth between
//! `host` and `world`) or TEST-NET-3 (203.0.113.0/24, DNS data only): nothing here can reach, or
//! be confused with, a real network.

use std::net::{Ipv4Addr, Ipv6Addr};

const fn ula(last: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x64, 0, 0, 0, 0, 0, last)
}

/// The shared /64 on the veth link, as a prefix length.
pub const PREFIX_LEN: u8 = 64;
/// The `host` namespace's end of the veth (where the daemons run).
pub const HOST: Ipv6Addr = ula(0x1);
/// Extra host addresses for per-VM listeners (one IPv6 address per VM).
pub const HOST_VMS: [Ipv6Addr; 2] = [ula(0x101), ula(0x102)];
/// The `world` namespace's end of the veth.
pub const WORLD: Ipv6Addr = ula(0x2);
/// The upstream DNS server (dnsmasq) in `world`, port 53.
pub const DNS: Ipv6Addr = ula(0x53);
/// TCP and UDP echo servers (port [`ECHO_PORT`]) answer on every world address; this one has a name.
pub const ECHO: Ipv6Addr = ula(0xe);
/// The HTTP server (port 80) answers on every world address; this one is `v6only.outsock.test`.
pub const HTTP: Ipv6Addr = ula(0x80);
/// An address IPv6 clients in `world` use for inbound tests.
pub const CLIENT: Ipv6Addr = ula(0xc1);
/// On the link but owned by nobody: neighbour discovery fails (EHOSTUNREACH after a few seconds).
pub const NO_HOST: Ipv6Addr = ula(0xdead);
/// Outside every route of `host` (ENETUNREACH at once).
pub const UNROUTED: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x65, 0, 0, 0, 0, 0, 1);
/// Echo port (TCP and UDP) in `world`.
pub const ECHO_PORT: u16 = 7;
/// A TCP port in `world` where nothing listens (ECONNREFUSED).
pub const CLOSED_PORT: u16 = 9;
/// HTTP port in `world`.
pub const HTTP_PORT: u16 = 80;
/// An address in `world` inside the prefix the destination-policy tests deny
/// ([`DENIED_PREFIX`]): reachable, but refused by policy.
pub const DENIED: Ipv6Addr = ula(0xde1);
/// The prefix the destination-policy tests put in `[destinations] deny`.
pub const DENIED_PREFIX: &str = "fd00:64::de0/124";
/// IPv4 on the veth, for the IPv4-egress tests only (added by the test that needs it; TEST-NET-3):
/// the `host` end.
pub const HOST_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
/// The `world` end (also `dual.outsock.test`'s A record, [`crate::zone::DUAL_A`]).
pub const WORLD_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
/// Their prefix length.
pub const V4_PREFIX_LEN: u8 = 24;
