//! What the shim knows about each file descriptor, in a fixed array of atomics indexed by fd.
//!
//! No locks: a lock held by another thread at `fork` would deadlock the child, and the table is
//! consulted on every interposed call. Each fd's state packs into two 64-bit words that are read
//! and written whole; the fd number itself is the program's, so two threads racing on one fd
//! is the program's own race, as it would be with the kernel.
//!
//! The table covers every fd Linux can hand out under its default `fs.nr_open` (2^20), so a
//! program that raises RLIMIT_NOFILE keeps outsourcing on its high fds. It is all zeros until
//! used (an empty slot and "no companion" are both 0), so it lives in `.bss`: untouched pages
//! cost address space, not memory. A high-water mark bounds the scans of `close_range`.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicI32, AtomicU64, AtomicUsize, Ordering};

/// Descriptors at or above this are never outsourced (and never tracked): Linux's default
/// `fs.nr_open`, the most RLIMIT_NOFILE can be raised to without changing the sysctl.
pub const MAX_FDS: usize = 1 << 20;

/// What an fd is, as far as the shim cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Not ours: any non-AF_INET socket, any non-socket, or an untracked fd.
    Untracked = 0,
    /// An AF_INET stream socket the program made, not yet connected or listening.
    InetStream = 1,
    /// An AF_INET datagram socket the program made, not yet used off loopback.
    InetDgram = 2,
    /// Connected through host-server: the fd now *is* the host's IPv6 TCP socket.
    Outsourced = 3,
    /// Listening through host-server: the fd is the packet channel (one Inbound per accept).
    Listener = 4,
    /// A UDP association: the fd is the stream carrying framed datagrams.
    Udp = 5,
    /// A connected UDP socket in process mode: the fd is the host's own UDP socket, connected
    /// to the peer's IPv6 address (passed by host-server); only addresses are translated.
    UdpPassed = 6,
}

impl Kind {
    fn from_bits(v: u8) -> Self {
        match v {
            1 => Self::InetStream,
            2 => Self::InetDgram,
            3 => Self::Outsourced,
            4 => Self::Listener,
            5 => Self::Udp,
            6 => Self::UdpPassed,
            _ => Self::Untracked,
        }
    }
}

/// One fd's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    /// The AF_INET address bound or reported by getsockname, when known.
    pub local: Option<SocketAddrV4>,
    /// The AF_INET peer (getpeername; the default destination of a connected UDP socket).
    pub peer: Option<SocketAddrV4>,
    /// Whether the program bound the socket to a loopback address: then it stays local.
    pub local_only: bool,
    /// Which of the copied socket options the program set before connect (one bit each, see
    /// `crate::sockopt`): only those are carried over to the host's socket.
    pub options: u16,
    /// The resolv.conf nameserver this UDP socket last sent to (or connected to), redirected
    /// to the guest DNS address: its index plus one (0: none); replies from the guest DNS
    /// address show it as their source (`crate::nameserver`). At most [`MAX_NAMESERVER`].
    pub nameserver: u8,
}

impl Entry {
    #[must_use]
    pub fn new(kind: Kind) -> Self {
        Self {
            kind,
            local: None,
            peer: None,
            local_only: false,
            options: 0,
            nameserver: 0,
        }
    }
}

const PRESENT: u64 = 1 << 48;
/// The option bits that fit in word 1.
pub const OPTIONS_MASK: u16 = 0x7fff;
/// In [`Entry::options`]: the program bound the socket to a port of its own choosing (kept
/// when a connected UDP socket is made again for another peer).
pub const BOUND: u16 = 1 << 14;
/// In [`Entry::options`]: an ICMP echo ("ping") socket, `socket(AF_INET, SOCK_DGRAM,
/// IPPROTO_ICMP)`: its association is an ICMP one (`dgram`).
pub const ICMP: u16 = 1 << 13;
/// In [`Entry::options`], with [`ICMP`]: a raw ICMP socket (`SOCK_RAW`), whose reads begin with
/// an IPv4 header.
pub const RAW: u16 = 1 << 12;
/// In [`Entry::options`], on an unconnected TCP socket ([`Kind::InetStream`]): the descriptor is
/// a socket host-server lent (IPv6, of its network), standing in from `socket()` on for the
/// AF_INET one the program asked for (`lend`); it becomes AF_INET again before anything only
/// an AF_INET socket can do (a loopback bind or connect).
pub const LENT: u16 = 1 << 10;
/// In [`Entry::options`]: the program asked for `IP_RECVTTL` (an ICMP socket's replies carry
/// their TTL in an `IP_TTL` control message).
pub const RECVTTL: u16 = 1 << 11;

fn pack_addr(a: Option<SocketAddrV4>) -> u64 {
    a.map_or(0, |a| {
        PRESENT | u64::from(u32::from(*a.ip())) << 16 | u64::from(a.port())
    })
}

fn unpack_addr(v: u64) -> Option<SocketAddrV4> {
    if v & PRESENT == 0 {
        return None;
    }
    #[allow(clippy::cast_possible_truncation)] // Masked to the packed field widths.
    let (ip, port) = ((v >> 16) as u32, (v & 0xffff) as u16);
    Some(SocketAddrV4::new(Ipv4Addr::from(ip), port))
}

/// The largest [`Entry::nameserver`] the table keeps (6 bits).
pub const MAX_NAMESERVER: u8 = 63;

/// word 0: kind (bits 56..64), local-only (bit 55), nameserver (bits 49..55), local address
/// (bits 0..49).
/// word 1: options set (bits 49..64), peer address (bits 0..49).
struct Slot([AtomicU64; 2]);

#[allow(clippy::declare_interior_mutable_const)] // Only used to initialise the static array.
const EMPTY: Slot = Slot([AtomicU64::new(0), AtomicU64::new(0)]);
static TABLE: [Slot; MAX_FDS] = [EMPTY; MAX_FDS];
/// One above the highest fd ever recorded (as tracked, or with a companion).
static HIGH: AtomicUsize = AtomicUsize::new(0);

fn raise_high(fd: i32) {
    if let Ok(i) = usize::try_from(fd) {
        HIGH.fetch_max(i + 1, Ordering::AcqRel);
    }
}

fn slot(fd: i32) -> Option<&'static Slot> {
    usize::try_from(fd).ok().and_then(|i| TABLE.get(i))
}

/// Whether `fd` has a slot in the table (0 ≤ fd < [`MAX_FDS`]).
#[must_use]
pub fn fits(fd: i32) -> bool {
    slot(fd).is_some()
}

/// The state of `fd` (untracked when out of range).
#[must_use]
pub fn get(fd: i32) -> Entry {
    let Some(s) = slot(fd) else {
        return Entry::new(Kind::Untracked);
    };
    let w0 = s.0[0].load(Ordering::Acquire);
    let w1 = s.0[1].load(Ordering::Acquire);
    #[allow(clippy::cast_possible_truncation)] // The top byte is the kind; options are masked.
    let kind = Kind::from_bits((w0 >> 56) as u8);
    Entry {
        kind,
        local: unpack_addr(w0 & ((1 << 49) - 1)),
        peer: unpack_addr(w1 & ((1 << 49) - 1)),
        local_only: w0 & (1 << 55) != 0,
        options: (w1 >> 49) as u16 & OPTIONS_MASK,
        nameserver: (w0 >> 49) as u8 & MAX_NAMESERVER,
    }
}

/// Records `e` for `fd`; fds beyond [`MAX_FDS`] are left untracked (`interpose::socket` makes no
/// AF_INET socket there, so none goes out natively).
pub fn set(fd: i32, e: Entry) {
    let Some(s) = slot(fd) else { return };
    if e.kind != Kind::Untracked {
        raise_high(fd);
    }
    let w0 = (e.kind as u64) << 56
        | u64::from(e.local_only) << 55
        | u64::from(e.nameserver & MAX_NAMESERVER) << 49
        | pack_addr(e.local);
    let w1 = u64::from(e.options & OPTIONS_MASK) << 49 | pack_addr(e.peer);
    s.0[1].store(w1, Ordering::Release);
    s.0[0].store(w0, Ordering::Release);
}

#[allow(clippy::declare_interior_mutable_const)] // Only used to initialise the static array.
const NO_COMPANION: AtomicI32 = AtomicI32::new(0);
/// A VM listener's control stream to host-server, by the listener's fd, stored plus one (0:
/// none), so that the array is all zeros.
static COMPANIONS: [AtomicI32; MAX_FDS] = [NO_COMPANION; MAX_FDS];

fn companion_slot(fd: i32) -> Option<&'static AtomicI32> {
    usize::try_from(fd).ok().and_then(|i| COMPANIONS.get(i))
}

/// Records `control` as `fd`'s companion stream.
pub fn set_companion(fd: i32, control: i32) {
    if let Some(s) = companion_slot(fd) {
        raise_high(fd);
        s.store(control.saturating_add(1), Ordering::Release);
    }
}

/// `fd`'s companion stream, if it has one.
#[must_use]
pub fn companion(fd: i32) -> Option<i32> {
    let c = companion_slot(fd)?.load(Ordering::Acquire);
    (c > 0).then_some(c - 1)
}

/// Removes and returns `fd`'s companion stream.
#[must_use]
pub fn take_companion(fd: i32) -> Option<i32> {
    let c = companion_slot(fd)?.swap(0, Ordering::AcqRel);
    (c > 0).then_some(c - 1)
}

#[allow(clippy::declare_interior_mutable_const)] // Only used to initialise the static array.
const NOT_KEPT: AtomicI32 = AtomicI32::new(0);
/// A process-mode listener's hidden copy of its channel's host end (kept where no keeper
/// holds it: see `listen`), by the listener's fd, stored plus one (0: none).
static KEPT: [AtomicI32; MAX_FDS] = [NOT_KEPT; MAX_FDS];

fn kept_slot(fd: i32) -> Option<&'static AtomicI32> {
    usize::try_from(fd).ok().and_then(|i| KEPT.get(i))
}

/// Records `host_end` as listener `fd`'s hidden copy of its channel's host end.
pub fn set_kept(fd: i32, host_end: i32) {
    if let Some(s) = kept_slot(fd) {
        raise_high(fd);
        s.store(host_end.saturating_add(1), Ordering::Release);
    }
}

/// Listener `fd`'s hidden host end, if it has one.
#[must_use]
pub fn kept(fd: i32) -> Option<i32> {
    let c = kept_slot(fd)?.load(Ordering::Acquire);
    (c > 0).then_some(c - 1)
}

/// Removes and returns listener `fd`'s hidden host end.
#[must_use]
pub fn take_kept(fd: i32) -> Option<i32> {
    let c = kept_slot(fd)?.swap(0, Ordering::AcqRel);
    (c > 0).then_some(c - 1)
}

/// Forgets `fd` (it was closed).
pub fn clear(fd: i32) {
    crate::sockopt::forget(fd);
    set(fd, Entry::new(Kind::Untracked));
}

/// The fds from `first` to `last` (inclusive) that have ever been tracked or had a companion:
/// the part of a `close_range` the table must forget.
#[must_use]
pub fn tracked_range(first: u32, last: u32) -> std::ops::Range<i32> {
    let high = HIGH.load(Ordering::Acquire).min(MAX_FDS);
    let end = usize::try_from(last).map_or(high, |l| l.saturating_add(1).min(high));
    let start = usize::try_from(first).unwrap_or(usize::MAX).min(end);
    // Both are at most MAX_FDS, which fits an i32.
    i32::try_from(start).unwrap_or(0)..i32::try_from(end).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_option_memory_covers_every_descriptor_the_table_does() {
        assert_eq!(crate::sockopt::MAX_FDS, MAX_FDS);
    }

    #[test]
    fn entries_round_trip() {
        let e = Entry {
            kind: Kind::Listener,
            local: Some("0.0.0.0:8080".parse().unwrap()),
            peer: Some("10.170.160.7:80".parse().unwrap()),
            local_only: true,
            options: OPTIONS_MASK,
            nameserver: MAX_NAMESERVER,
        };
        set(100, e);
        assert_eq!(get(100), e);
        let e = Entry {
            kind: Kind::Udp,
            local: Some("255.255.255.255:65535".parse().unwrap()),
            peer: None,
            local_only: false,
            options: 0b101,
            nameserver: 3,
        };
        set(101, e);
        assert_eq!(get(101), e);
        clear(100);
        assert_eq!(get(100), Entry::new(Kind::Untracked));
        assert_eq!(get(-1).kind, Kind::Untracked);
        assert_eq!(get(i32::MAX).kind, Kind::Untracked);
    }

    #[test]
    fn high_fds_are_tracked() {
        let fd = 69_001;
        let e = Entry::new(Kind::InetStream);
        set(fd, e);
        assert_eq!(get(fd), e);
        let last = i32::try_from(MAX_FDS - 1).unwrap();
        set(last, e);
        assert_eq!(get(last), e);
        // Beyond the table: untracked, and never recorded.
        assert!(fits(last) && !fits(last + 1) && !fits(-1));
        set(last + 1, e);
        assert_eq!(get(last + 1).kind, Kind::Untracked);
        clear(fd);
        clear(last);
    }

    #[test]
    fn companions_are_stored_plus_one() {
        assert_eq!(kept(201), None);
        set_kept(201, 0);
        assert_eq!(kept(201), Some(0));
        assert_eq!(take_kept(201), Some(0));
        assert_eq!(kept(201), None);
        assert_eq!(companion(200), None);
        set_companion(200, 0);
        assert_eq!(companion(200), Some(0));
        assert_eq!(take_companion(200), Some(0));
        assert_eq!(companion(200), None);
    }

    #[test]
    fn close_range_scans_only_what_was_tracked() {
        set(300, Entry::new(Kind::Udp));
        let r = tracked_range(0, u32::MAX);
        assert!(
            r.start == 0 && r.end > 300 && r.end as usize <= MAX_FDS,
            "{r:?}"
        );
        assert!(tracked_range(10, 5).is_empty());
        assert_eq!(tracked_range(300, 300), 300..301);
        let big = u32::try_from(MAX_FDS + 5).unwrap();
        assert!(tracked_range(big, u32::MAX).is_empty());
        clear(300);
    }
}
