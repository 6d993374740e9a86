//! Where a program's DNS goes: the guest DNS address (`OUTSOCK_DNS`, else dns-cache's default,
//! `shared_proto::translate::DEFAULT_GUEST_DNS`) and the IPv4 nameservers of /etc/resolv.conf,
//! which are redirected to it. A program that builds its own DNS queries (BIND's dig, kdig,
//! libraries with their own resolver) sends them to a resolv.conf nameserver on port 53;
//! on an IPv6-only network nothing answers there, so the shim sends them to the guest DNS
//! address instead (dns-cache answers), and shows the replies as coming from the nameserver
//! the program asked, which resolvers check. Which nameservers there are is read from
//! resolv.conf with `shared_proto::translate::resolv_conf_nameservers`, the same reading as
//! outsock-supervisor's.
//!
//! Both are read once, lazily, into atomics: no lock, so a fork at any moment leaves the child
//! consistent (two threads racing to the first read both store the same values). A loopback
//! nameserver (a local forwarder, as in the VM image) is never redirected: loopback is never
//! outsourced.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

use shared_proto::translate::{resolv_conf_nameservers, DEFAULT_GUEST_DNS};

/// The resolv.conf the nameservers are read from.
const RESOLV_CONF: &str = "/etc/resolv.conf";
/// How many resolv.conf nameservers are remembered (glibc uses the first three).
pub const MAX_NAMESERVERS: usize = 8;
/// The port DNS is redirected on.
const DNS_PORT: u16 = 53;

/// The guest DNS address, packed as in `pack` (0: not read yet).
static GUEST_DNS: AtomicU64 = AtomicU64::new(0);
#[allow(clippy::declare_interior_mutable_const)] // Only used to initialise the static array.
const NONE: AtomicU32 = AtomicU32::new(0);
static SERVERS: [AtomicU32; MAX_NAMESERVERS] = [NONE; MAX_NAMESERVERS];
/// How many of [`SERVERS`] hold a nameserver, plus one (0: resolv.conf not read yet).
static COUNT: AtomicUsize = AtomicUsize::new(0);

const PRESENT: u64 = 1 << 48;

fn pack(a: SocketAddrV4) -> u64 {
    PRESENT | u64::from(u32::from(*a.ip())) << 16 | u64::from(a.port())
}

fn unpack(v: u64) -> SocketAddrV4 {
    #[allow(clippy::cast_possible_truncation)] // Masked to the packed field widths.
    let (ip, port) = ((v >> 16) as u32, (v & 0xffff) as u16);
    SocketAddrV4::new(Ipv4Addr::from(ip), port)
}

/// The guest DNS address: `OUTSOCK_DNS` (as `outsock run --dns` sets it), else
/// [`DEFAULT_GUEST_DNS`]; read once.
#[must_use]
pub fn guest_dns() -> SocketAddrV4 {
    let v = GUEST_DNS.load(Ordering::Acquire);
    if v != 0 {
        return unpack(v);
    }
    let a = std::env::var("OUTSOCK_DNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_GUEST_DNS);
    GUEST_DNS.store(pack(a), Ordering::Release);
    a
}

/// The IPv4 nameservers of /etc/resolv.conf (at most [`MAX_NAMESERVERS`]); read once.
fn nameservers() -> Vec<Ipv4Addr> {
    let n = COUNT.load(Ordering::Acquire);
    if n != 0 {
        return SERVERS[..n - 1]
            .iter()
            .map(|s| Ipv4Addr::from(s.load(Ordering::Relaxed)))
            .collect();
    }
    let mut found = std::fs::read_to_string(RESOLV_CONF)
        .map(|t| resolv_conf_nameservers(&t))
        .unwrap_or_default();
    found.truncate(MAX_NAMESERVERS);
    for (slot, a) in SERVERS.iter().zip(&found) {
        slot.store(u32::from(*a), Ordering::Relaxed);
    }
    COUNT.store(found.len() + 1, Ordering::Release);
    found
}

/// Which of `servers` a send to `dest` addresses, when it is redirected to `guest`: port 53,
/// not loopback, not the guest DNS address itself.
fn index_in(servers: &[Ipv4Addr], guest: SocketAddrV4, dest: SocketAddrV4) -> Option<u8> {
    if dest.port() != DNS_PORT || dest.ip().is_loopback() || dest == guest {
        return None;
    }
    let i = servers.iter().position(|s| s == dest.ip())?;
    u8::try_from(i).ok()
}

/// Which resolv.conf nameserver `dest` is (its index), when a send or connect to it goes to
/// the guest DNS address instead.
#[must_use]
pub fn index(dest: SocketAddrV4) -> Option<u8> {
    if dest.port() != DNS_PORT {
        // Most sends: decided without reading anything.
        return None;
    }
    index_in(&nameservers(), guest_dns(), dest)
}

/// Where a send or connect to `dest` really goes: the guest DNS address for a resolv.conf
/// nameserver on port 53, else `dest` itself.
#[must_use]
pub fn redirect(dest: SocketAddrV4) -> SocketAddrV4 {
    if index(dest).is_some() {
        guest_dns()
    } else {
        dest
    }
}

/// The address the program sees a datagram from: a reply from the guest DNS address on a
/// socket that last sent to resolv.conf nameserver `asked` (its index plus one, 0: none, as
/// the fd table keeps it) comes from that nameserver; anything else from where it came.
#[must_use]
pub fn shown_source(from: SocketAddrV4, asked: u8) -> SocketAddrV4 {
    if asked == 0 || from != guest_dns() {
        return from;
    }
    nameservers()
        .get(usize::from(asked - 1))
        .map_or(from, |ip| SocketAddrV4::new(*ip, DNS_PORT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_non_loopback_nameserver_on_port_53_is_redirected() {
        let servers: Vec<Ipv4Addr> = ["10.53.0.1", "127.0.0.53", "10.170.160.1", "10.53.0.2"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let guest = DEFAULT_GUEST_DNS;
        let at = |s: &str| -> SocketAddrV4 { s.parse().unwrap() };
        assert_eq!(index_in(&servers, guest, at("10.53.0.1:53")), Some(0));
        assert_eq!(index_in(&servers, guest, at("10.53.0.2:53")), Some(3));
        // Another port, a loopback forwarder, the guest DNS itself, a stranger: as they are.
        assert_eq!(index_in(&servers, guest, at("10.53.0.1:5353")), None);
        assert_eq!(index_in(&servers, guest, at("127.0.0.53:53")), None);
        assert_eq!(index_in(&servers, guest, at("10.170.160.1:53")), None);
        assert_eq!(index_in(&servers, guest, at("192.0.2.1:53")), None);
    }

    #[test]
    fn addresses_pack_whole() {
        let a: SocketAddrV4 = "255.255.255.255:65535".parse().unwrap();
        assert_eq!(unpack(pack(a)), a);
        assert_ne!(pack("0.0.0.0:0".parse().unwrap()), 0);
    }

    #[test]
    fn replies_from_elsewhere_keep_their_source() {
        let other: SocketAddrV4 = "192.0.2.7:53".parse().unwrap();
        assert_eq!(shown_source(other, 1), other);
        assert_eq!(shown_source(guest_dns(), 0), guest_dns());
    }
}
