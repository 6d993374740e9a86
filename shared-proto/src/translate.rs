//! The translation's semantics, shared by both front ends (liboutsock, which sees libc calls,
//! and outsock-supervisor, which sees system calls through seccomp user notification): which
//! IPv4 destinations are outsourced, the `sockaddr_in` bytes a program reads and writes (and the
//! `sockaddr_in6` ones of a dual-stack listener: which AF_INET6 listener is outsourced as an
//! IPv4 one, and its IPv4 view shown v4-mapped), what host-server's answer to a connect means
//! for the program, which stream reaches host-server (the guest image's `transport=`
//! setting), and which socket options an outsourced socket carries over from the program's own.
//!
//! Pure functions over bytes and values: no I/O, no `unsafe`.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};

use crate::errno::Errno;
use crate::outsource::{ConnectRequest, ToGuest, ToHost};

/// The guest DNS address when none is configured: the first address of dns-cache's default
/// destination pool, which host-server answers with dns-cache.
pub const DEFAULT_GUEST_DNS: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 170, 160, 1), 53);

/// `AF_INET` on Linux.
pub const AF_INET: u16 = 2;
/// The size of a `struct sockaddr_in`.
pub const SOCKADDR_IN_LEN: usize = 16;
/// `AF_INET6` on Linux.
pub const AF_INET6: u16 = 10;
/// The size of a `struct sockaddr_in6`.
pub const SOCKADDR_IN6_LEN: usize = 28;
/// The smallest `sockaddr_in6` the kernel takes (RFC 2133's, without `sin6_scope_id`).
const SOCKADDR_IN6_MIN: usize = 24;

/// Whether a program's socket call to `a` is outsourced to host-server: every IPv4 destination
/// except loopback, which stays on the program's own `lo`.
#[must_use]
pub fn is_outsourced(a: SocketAddrV4) -> bool {
    !a.ip().is_loopback()
}

/// The IPv4 address in a `struct sockaddr` of `bytes` (native byte order for the family, as
/// the kernel reads it), if it is a well-formed `AF_INET` one.
#[must_use]
pub fn decode_sockaddr_in(bytes: &[u8]) -> Option<SocketAddrV4> {
    if bytes.len() < SOCKADDR_IN_LEN {
        return None;
    }
    if u16::from_ne_bytes([bytes[0], bytes[1]]) != AF_INET {
        return None;
    }
    let port = u16::from_be_bytes([bytes[2], bytes[3]]);
    let ip = Ipv4Addr::new(bytes[4], bytes[5], bytes[6], bytes[7]);
    Some(SocketAddrV4::new(ip, port))
}

/// The family field of a `struct sockaddr` of `bytes`, if it has one.
#[must_use]
pub fn sockaddr_family(bytes: &[u8]) -> Option<u16> {
    Some(u16::from_ne_bytes([*bytes.first()?, *bytes.get(1)?]))
}

/// `a` as the `struct sockaddr_in` the kernel writes (zero padding).
#[must_use]
pub fn encode_sockaddr_in(a: SocketAddrV4) -> [u8; SOCKADDR_IN_LEN] {
    let mut b = [0u8; SOCKADDR_IN_LEN];
    b[..2].copy_from_slice(&AF_INET.to_ne_bytes());
    b[2..4].copy_from_slice(&a.port().to_be_bytes());
    b[4..8].copy_from_slice(&a.ip().octets());
    b
}

/// The IPv6 address in a `struct sockaddr` of `bytes`, if it is a well-formed `AF_INET6` one
/// (24 bytes at least, as the kernel takes it; the scope id 0 when absent).
#[must_use]
pub fn decode_sockaddr_in6(bytes: &[u8]) -> Option<SocketAddrV6> {
    if bytes.len() < SOCKADDR_IN6_MIN || sockaddr_family(bytes)? != AF_INET6 {
        return None;
    }
    let port = u16::from_be_bytes([bytes[2], bytes[3]]);
    let flow = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    let ip: [u8; 16] = bytes[8..24].try_into().ok()?;
    let scope = match bytes.get(24..28) {
        Some(s) => u32::from_ne_bytes(s.try_into().ok()?),
        None => 0,
    };
    Some(SocketAddrV6::new(Ipv6Addr::from(ip), port, flow, scope))
}

/// `a` as the `struct sockaddr_in6` the kernel writes (flow label big endian, scope id in
/// native order).
#[must_use]
pub fn encode_sockaddr_in6(a: SocketAddrV6) -> [u8; SOCKADDR_IN6_LEN] {
    let mut b = [0u8; SOCKADDR_IN6_LEN];
    b[..2].copy_from_slice(&AF_INET6.to_ne_bytes());
    b[2..4].copy_from_slice(&a.port().to_be_bytes());
    b[4..8].copy_from_slice(&a.flowinfo().to_be_bytes());
    b[8..24].copy_from_slice(&a.ip().octets());
    b[24..].copy_from_slice(&a.scope_id().to_ne_bytes());
    b
}

/// Whether a program's TCP AF_INET6 socket bound to `bound` (`[::]:0` if never bound) that
/// listens is a dual-stack listener outsourced as the IPv4 listener this returns: with
/// IPV6_V6ONLY off, the wildcard `::` is `0.0.0.0`, a v4-mapped `::ffff:a.b.c.d` is
/// `a.b.c.d` where that is outsourced (not loopback); the same port. A V6ONLY socket, `::1`
/// and every other IPv6 address stay native (`None`).
#[must_use]
pub fn dual_stack_listener(bound: SocketAddrV6, v6only: bool) -> Option<SocketAddrV4> {
    if v6only {
        return None;
    }
    let ip = if bound.ip().is_unspecified() {
        Ipv4Addr::UNSPECIFIED
    } else {
        bound.ip().to_ipv4_mapped()?
    };
    let a = SocketAddrV4::new(ip, bound.port());
    is_outsourced(a).then_some(a)
}

/// Whether a TCP AF_INET6 socket's bind to `a` is recorded, as an AF_INET bind to a
/// non-loopback address is (host-server binds at listen), and as which IPv4 address: a
/// v4-mapped `::ffff:a.b.c.d` that is outsourced (not loopback, not `0.0.0.0`: the program's
/// own namespace has no such address, so the kernel would refuse it). Every other address
/// (`::`, the v4-mapped wildcard, loopback, IPv6) is the kernel's to bind; a listen decides
/// later ([`dual_stack_listener`]).
#[must_use]
pub fn dual_stack_bind(a: SocketAddrV6) -> Option<SocketAddrV4> {
    let ip = a.ip().to_ipv4_mapped()?;
    let v4 = SocketAddrV4::new(ip, a.port());
    (is_outsourced(v4) && !ip.is_unspecified()).then_some(v4)
}

/// How IPv4 address `a` looks on a dual-stack socket: v4-mapped, `::ffff:a.b.c.d` (a peer, an
/// accepted connection's local address).
#[must_use]
pub fn v4_mapped(a: SocketAddrV4) -> SocketAddrV6 {
    SocketAddrV6::new(a.ip().to_ipv6_mapped(), a.port(), 0, 0)
}

/// The name of a dual-stack listener whose IPv4 view is `a`: the wildcard `::` for `0.0.0.0`
/// (what it was bound to), else v4-mapped.
#[must_use]
pub fn dual_stack_name(a: SocketAddrV4) -> SocketAddrV6 {
    if a.ip().is_unspecified() {
        SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, a.port(), 0, 0)
    } else {
        v4_mapped(a)
    }
}

/// What liboutsock puts in an argument the kernel ignores (connect's and getsockname's fourth,
/// args\[3\]) of a system call it makes after deciding the call itself, so that `outsock run`'s
/// seccomp filter lets the call through instead of notifying the supervisor, which would only
/// answer "continue" after a round trip: a connect to loopback or of another family, the
/// connect of a socket host-server lent. A program that forges it gets its call untranslated,
/// which it could have by other means too: the supervisor translates, it does not confine.
pub const DECIDED_MARK: u64 = 0x6f75_7473_6f63_6b21;

/// The request an outsourced TCP connect to `dest` sends. `pass_fd`: process mode (the socket
/// comes back with SCM_RIGHTS); `nonblocking`: answer while the connect is under way.
#[must_use]
pub fn connect_request(dest: SocketAddrV4, pass_fd: bool, nonblocking: bool) -> ToHost {
    ToHost::Connect(ConnectRequest {
        dest,
        pass_fd,
        nonblocking,
    })
}

/// What host-server's answer to a connect means for the program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connected {
    /// What getsockname must report.
    pub local: SocketAddrV4,
    /// What getpeername must report (the dummy the program connected to).
    pub peer: SocketAddrV4,
    /// The connect is still under way on the passed socket.
    pub in_progress: bool,
}

/// Interprets host-server's answer to a connect: `Connected`, or the errno the program's
/// connect fails with (`Failed` carries it; anything else is a protocol error, EPROTO).
///
/// # Errors
/// The errno for the program.
pub fn connect_answer(answer: &ToGuest) -> Result<Connected, Errno> {
    match *answer {
        ToGuest::Connected {
            local,
            peer,
            in_progress,
            ..
        } => Ok(Connected {
            local,
            peer,
            in_progress,
        }),
        ToGuest::Failed(e) => Err(e),
        _ => Err(Errno::EPROTO),
    }
}

/// The IPv4 nameservers of a resolv.conf's text (`nameserver A.B.C.D` lines; IPv6 ones and
/// anything malformed are skipped).
#[must_use]
pub fn resolv_conf_nameservers(text: &str) -> Vec<Ipv4Addr> {
    text.lines()
        .filter_map(|l| {
            let mut words = l.split('#').next().unwrap_or("").split_whitespace();
            (words.next()? == "nameserver")
                .then(|| words.next()?.parse().ok())
                .flatten()
        })
        .collect()
}

/// The guest image's settings for liboutsock and the supervisor (`key=value` lines, `#`
/// comments).
pub const GUEST_CONFIG_FILE: &str = "/etc/outsock/shim.conf";

/// The host's vsock CID, which a guest's requests to host-server go to.
pub const HOST_CID: u32 = 2;

/// The receive buffer of every guest vsock stream to the host (and of the vsock listeners
/// whose accepted streams carry inbound connections): its `buf_alloc`, the credit the VMM may
/// use sending to the guest. With Linux's default, 256 KiB, the guest reports what it has
/// read only after 192 KiB, so the VMM stops reading the IPv6 socket every 192 KiB until the
/// guest has caught up; `outsock-bench`'s `vm` part moved about 1.5× as much IPv6→guest with
/// 1 MiB, and with 1 MiB the VMM still ran out of credit every 0.5 MiB or so; with 4 MiB (twice
/// the RX buffers a Linux guest posts on our 1024-entry queue) rarely, and IPv6→guest went
/// from 0.69–0.96× native to 0.87–0.96×. Guest memory only: the guest kernel queues what its
/// program has not read yet, the VMM buffers nothing for it. Set with [`VSOCK_BUFFER_OPTIONS`]
/// before connect or listen, best effort.
pub const VSOCK_BUFFER_SIZE: u64 = 4 * 1024 * 1024;

/// `SO_VM_SOCKETS_BUFFER_MAX_SIZE` then `SO_VM_SOCKETS_BUFFER_SIZE` (`<linux/vm_sockets.h>`,
/// level `AF_VSOCK`, an unsigned 64-bit value; libc does not name them): the maximum first,
/// since the kernel clamps the size to it.
pub const VSOCK_BUFFER_OPTIONS: [(libc::c_int, libc::c_int); 2] =
    [(libc::AF_VSOCK, 2), (libc::AF_VSOCK, 0)];

/// Parses a transport value: `Some(None)` Unix, `Some(Some(port))` vsock, `None` invalid.
#[must_use]
pub fn parse_transport(v: &str) -> Option<Option<u32>> {
    let v = v.trim();
    if v == "unix" {
        return Some(None);
    }
    let port = v.strip_prefix("vsock:")?.parse().ok()?;
    Some(Some(port))
}

/// The value of `key` in a settings file's text ([`GUEST_CONFIG_FILE`]'s format).
#[must_use]
pub fn config_value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim())
}

/// The vsock port host-server is reached on: `env` (`OUTSOCK_TRANSPORT`'s value) first, else
/// `transport=` in `config` ([`GUEST_CONFIG_FILE`]'s text); `None`: a Unix stream (process
/// mode), also for an invalid value.
#[must_use]
pub fn choose_transport(env: Option<&str>, config: Option<&str>) -> Option<u32> {
    env.or_else(|| config.and_then(|t| config_value(t, "transport")))
        .and_then(parse_transport)
        .flatten()
}

/// The largest UDP payload over IPv4 (65,535 less the IPv4 and UDP headers): natively a larger
/// datagram is EMSGSIZE, and so it is when outsourced, whichever front end frames it.
pub const MAX_UDP_PAYLOAD: usize = 65_507;

/// A socket option an outsourced TCP socket carries from the program's socket to the host's
/// when the program set it before the connect: an option it never touched keeps the host
/// socket's default (so, e.g., buffer auto-tuning stays on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CarriedOption {
    /// `SOL_SOCKET`, `IPPROTO_TCP`.
    pub level: i32,
    pub name: i32,
    /// The value's size in bytes.
    pub size: usize,
    /// The kernel reports SO_RCVBUF and SO_SNDBUF doubled: the value read is halved before it
    /// is set again.
    pub halve: bool,
}

const INT: usize = std::mem::size_of::<libc::c_int>();
const TIMEVAL: usize = std::mem::size_of::<libc::timeval>();
const LINGER: usize = std::mem::size_of::<libc::linger>();

const fn carried(level: i32, name: i32, size: usize, halve: bool) -> CarriedOption {
    CarriedOption {
        level,
        name,
        size,
        halve,
    }
}

/// The options carried over (liboutsock marks the ones the program sets; the supervisor, which
/// sees no `setsockopt`, takes those whose value differs from a fresh socket's).
pub const CARRIED_OPTIONS: [CarriedOption; 10] = [
    carried(libc::IPPROTO_TCP, libc::TCP_NODELAY, INT, false),
    carried(libc::SOL_SOCKET, libc::SO_KEEPALIVE, INT, false),
    carried(libc::SOL_SOCKET, libc::SO_RCVTIMEO, TIMEVAL, false),
    carried(libc::SOL_SOCKET, libc::SO_SNDTIMEO, TIMEVAL, false),
    carried(libc::SOL_SOCKET, libc::SO_RCVBUF, INT, true),
    carried(libc::SOL_SOCKET, libc::SO_SNDBUF, INT, true),
    carried(libc::SOL_SOCKET, libc::SO_LINGER, LINGER, false),
    carried(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, INT, false),
    carried(libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, INT, false),
    carried(libc::IPPROTO_TCP, libc::TCP_KEEPCNT, INT, false),
];

/// The value to set on the host's socket for option `o` read as `value` from the program's.
#[must_use]
pub fn carried_value(o: CarriedOption, value: &[u8]) -> Vec<u8> {
    let mut v = value.to_vec();
    if o.halve && v.len() == INT {
        let n = i32::from_ne_bytes([v[0], v[1], v[2], v[3]]) / 2;
        v.copy_from_slice(&n.to_ne_bytes());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockaddr_in_round_trips_and_rejects_other_families() {
        let a = SocketAddrV4::new(Ipv4Addr::new(10, 170, 160, 2), 8080);
        let b = encode_sockaddr_in(a);
        assert_eq!(decode_sockaddr_in(&b), Some(a));
        assert_eq!(decode_sockaddr_in(&b[..15]), None);
        let mut v6 = b;
        v6[..2].copy_from_slice(&10u16.to_ne_bytes());
        assert_eq!(decode_sockaddr_in(&v6), None);
        assert_eq!(sockaddr_family(&v6), Some(10));
        assert_eq!(b[2..4], [0x1f, 0x90]);
    }

    #[test]
    fn sockaddr_in6_round_trips_and_rejects_other_families() {
        let a: SocketAddrV6 = "[::ffff:10.170.160.2]:8080".parse().unwrap();
        let b = encode_sockaddr_in6(a);
        assert_eq!(b.len(), 28);
        assert_eq!(sockaddr_family(&b), Some(AF_INET6));
        assert_eq!(b[2..4], [0x1f, 0x90]);
        assert_eq!(b[8..24], a.ip().octets());
        assert_eq!(decode_sockaddr_in6(&b), Some(a));
        let scoped = SocketAddrV6::new("fe80::1".parse().unwrap(), 1, 0x0001_2345, 3);
        assert_eq!(
            decode_sockaddr_in6(&encode_sockaddr_in6(scoped)),
            Some(scoped)
        );
        // RFC 2133's 24 bytes are taken (no scope id); fewer, or AF_INET, are not.
        let short = decode_sockaddr_in6(&b[..24]).unwrap();
        assert_eq!(
            (short.ip(), short.port(), short.scope_id()),
            (a.ip(), 8080, 0)
        );
        assert_eq!(decode_sockaddr_in6(&b[..23]), None);
        let v4 = encode_sockaddr_in("10.0.0.1:1".parse().unwrap());
        assert_eq!(decode_sockaddr_in6(&[&v4[..], &[0u8; 12]].concat()), None);
    }

    #[test]
    fn dual_stack_listeners_are_ipv4_ones_shown_v4_mapped() {
        let l = |s: &str, v6only| dual_stack_listener(s.parse().unwrap(), v6only);
        assert_eq!(l("[::]:8080", false), Some("0.0.0.0:8080".parse().unwrap()));
        assert_eq!(l("[::]:0", false), Some("0.0.0.0:0".parse().unwrap()));
        assert_eq!(
            l("[::ffff:10.1.2.3]:80", false),
            Some("10.1.2.3:80".parse().unwrap())
        );
        assert_eq!(
            l("[::ffff:0.0.0.0]:80", false),
            Some("0.0.0.0:80".parse().unwrap())
        );
        // V6ONLY, loopback (both kinds) and real IPv6 addresses stay native.
        assert_eq!(l("[::]:8080", true), None);
        assert_eq!(l("[::1]:8080", false), None);
        assert_eq!(l("[::ffff:127.0.0.1]:8080", false), None);
        assert_eq!(l("[2001:db8::1]:8080", false), None);
        assert_eq!(l("[fe80::1]:8080", false), None);

        let b = |s: &str| dual_stack_bind(s.parse().unwrap());
        assert_eq!(
            b("[::ffff:10.1.2.3]:80"),
            Some("10.1.2.3:80".parse().unwrap())
        );
        assert_eq!(b("[::ffff:0.0.0.0]:80"), None);
        assert_eq!(b("[::ffff:127.0.0.1]:80"), None);
        assert_eq!(b("[::]:80"), None);
        assert_eq!(b("[::1]:80"), None);
        assert_eq!(b("[2001:db8::1]:80"), None);

        let dummy: SocketAddrV4 = "10.170.112.1:4000".parse().unwrap();
        assert_eq!(
            v4_mapped(dummy),
            "[::ffff:10.170.112.1]:4000"
                .parse::<SocketAddrV6>()
                .unwrap()
        );
        assert_eq!(
            dual_stack_name("0.0.0.0:8080".parse().unwrap()),
            "[::]:8080".parse::<SocketAddrV6>().unwrap()
        );
        assert_eq!(dual_stack_name(dummy), v4_mapped(dummy));
    }

    #[test]
    fn loopback_stays_local() {
        assert!(!is_outsourced("127.0.0.1:80".parse().unwrap()));
        assert!(!is_outsourced("127.5.0.1:80".parse().unwrap()));
        assert!(is_outsourced("10.170.160.2:80".parse().unwrap()));
    }

    #[test]
    fn answers_become_outcomes() {
        let a: SocketAddrV4 = "10.0.0.1:1".parse().unwrap();
        let ok = ToGuest::Connected {
            local: a,
            peer: a,
            fd_passed: true,
            in_progress: true,
        };
        assert!(connect_answer(&ok).unwrap().in_progress);
        assert_eq!(
            connect_answer(&ToGuest::Failed(Errno::EACCES)),
            Err(Errno::EACCES)
        );
        assert_eq!(
            connect_answer(&ToGuest::Listening { local: a }),
            Err(Errno::EPROTO)
        );
    }

    #[test]
    fn nameservers_are_read() {
        let t = "# x\nsearch a\nnameserver 10.255.255.53\nnameserver ::1\nnameserver 1.2.3.4 # c\n";
        assert_eq!(
            resolv_conf_nameservers(t),
            vec![Ipv4Addr::new(10, 255, 255, 53), Ipv4Addr::new(1, 2, 3, 4)]
        );
    }

    #[test]
    fn transport_is_chosen_from_the_environment_then_the_image_settings() {
        assert_eq!(parse_transport("unix"), Some(None));
        assert_eq!(parse_transport(" vsock:1024 "), Some(Some(1024)));
        assert_eq!(parse_transport("vsock:x"), None);
        assert_eq!(parse_transport("tcp"), None);
        let image = "# guest image\ntransport = vsock:1024  # host-server\ndns=10.170.160.1\n";
        assert_eq!(config_value(image, "dns"), Some("10.170.160.1"));
        assert_eq!(config_value(image, "missing"), None);
        assert_eq!(choose_transport(None, Some(image)), Some(1024));
        assert_eq!(choose_transport(Some("unix"), Some(image)), None);
        assert_eq!(choose_transport(Some("vsock:5"), None), Some(5));
        assert_eq!(choose_transport(None, None), None);
        assert_eq!(choose_transport(None, Some("transport=tcp\n")), None);
    }

    #[test]
    fn carried_buffer_sizes_are_halved_and_others_kept() {
        let rcvbuf = CARRIED_OPTIONS
            .iter()
            .find(|o| o.name == libc::SO_RCVBUF && o.level == libc::SOL_SOCKET)
            .copied()
            .unwrap();
        assert_eq!(
            carried_value(rcvbuf, &49152i32.to_ne_bytes()),
            24576i32.to_ne_bytes()
        );
        let nodelay = CARRIED_OPTIONS[0];
        assert_eq!(
            carried_value(nodelay, &1i32.to_ne_bytes()),
            1i32.to_ne_bytes()
        );
        let linger = [1u8, 0, 0, 0, 5, 0, 0, 0];
        assert_eq!(carried_value(CARRIED_OPTIONS[6], &linger), linger);
    }
}
