//! Socket options on a stand-in for a program's TCP socket: the one rule by which liboutsock
//! and outsock-supervisor answer `getsockopt`/`setsockopt` there.
//!
//! An outsourced TCP socket is not the socket the program made. In process mode it is
//! host-server's IPv6 socket (a listener: a packet channel); inside a VM it is an `AF_VSOCK`
//! stream that host-server relays (a listener: a vsock listener). So:
//!
//! - `SOL_SOCKET` options that would show the difference answer as for the AF_INET TCP socket
//!   (`SO_DOMAIN`, `SO_TYPE`, `SO_PROTOCOL`, `SO_ACCEPTCONN`; a listener's `SO_ERROR` is 0),
//!   in both settings; the others are the kernel's on the stand-in.
//! - Inside a VM, where `AF_VSOCK` has no TCP or IP options (ENOPROTOOPT), `IPPROTO_TCP` and
//!   `IPPROTO_IP` options are answered here: setting one is accepted and has no effect (the
//!   host's socket is host-server's), with the errno Linux gives an `int` TCP option shorter
//!   than an `int`; reading one answers as an idle connection: `TCP_INFO` zeroed, no
//!   `IP_OPTIONS`, `TCP_MAXSEG` 1448 and `IP_TTL` 64 (Linux's defaults on Ethernet), 0 for the
//!   rest. Values set are not remembered: `TCP_NODELAY` reads 0 after it was set.
//!
//! The answer is the bytes the kernel would write at `optval` and the length at `optlen`,
//! sized as Linux sizes them. Numbers are Linux's generic ABI (x86_64); the front ends' tests
//! compare them with `libc`'s. Pure functions: no I/O, no `unsafe`.

use crate::errno::Errno;
use crate::translate::AF_INET;

pub const SOL_SOCKET: i32 = 1;
pub const IPPROTO_IP: i32 = 0;
pub const IPPROTO_TCP: i32 = 6;

pub const SO_TYPE: i32 = 3;
pub const SO_ERROR: i32 = 4;
pub const SO_ACCEPTCONN: i32 = 30;
pub const SO_PROTOCOL: i32 = 38;
pub const SO_DOMAIN: i32 = 39;
pub const SOCK_STREAM: i32 = 1;

pub const IP_TOS: i32 = 1;
pub const IP_TTL: i32 = 2;
pub const IP_OPTIONS: i32 = 4;

pub const TCP_NODELAY: i32 = 1;
pub const TCP_MAXSEG: i32 = 2;
pub const TCP_KEEPIDLE: i32 = 4;
pub const TCP_KEEPINTVL: i32 = 5;
pub const TCP_KEEPCNT: i32 = 6;
pub const TCP_INFO: i32 = 11;

/// `sizeof(struct tcp_info)` of Linux 6.1 (the guest's and this machine's kernels).
pub const TCP_INFO_LEN: usize = 232;
/// `TCP_MAXSEG` of an idle connection over Ethernet (MTU 1500, timestamps on).
pub const DEFAULT_MSS: i32 = 1448;
/// `IP_TTL` of a socket that never set it (`net.ipv4.ip_default_ttl`).
pub const DEFAULT_TTL: i32 = 64;

/// The `IPPROTO_TCP` options whose value is an `int`: Linux fails a shorter `optlen` with
/// EINVAL (the others are strings and structs).
const TCP_INT_OPTIONS: [i32; 14] = [
    TCP_NODELAY,
    TCP_MAXSEG,
    3, // TCP_CORK
    TCP_KEEPIDLE,
    TCP_KEEPINTVL,
    TCP_KEEPCNT,
    7,  // TCP_SYNCNT
    8,  // TCP_LINGER2
    9,  // TCP_DEFER_ACCEPT
    10, // TCP_WINDOW_CLAMP
    12, // TCP_QUICKACK
    18, // TCP_USER_TIMEOUT
    23, // TCP_FASTOPEN
    25, // TCP_NOTSENT_LOWAT
];

/// What stands in for the program's TCP socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StandIn {
    /// A listener (else a connection).
    pub listener: bool,
    /// Inside a VM: an `AF_VSOCK` socket (else host-server's IPv6 socket or packet channel).
    pub vsock: bool,
}

/// Whether an option at (`level`, `name`) may need the rule inside a VM: what a filter that
/// cannot see the socket must let through to the front end (every `IPPROTO_TCP` and
/// `IPPROTO_IP` option; the `SOL_SOCKET` ones a vsock stand-in answers wrongly). `get`: for
/// `getsockopt` (else `setsockopt`).
#[must_use]
pub fn vsock_may_answer(get: bool, level: i32, name: i32) -> bool {
    match level {
        IPPROTO_TCP | IPPROTO_IP => true,
        SOL_SOCKET => get && (name == SO_DOMAIN || name == SO_PROTOCOL),
        _ => false,
    }
}

/// What a `getsockopt` answered by the rule writes at `optval` ([`Reply::bytes`]); their
/// length is what it writes at `optlen`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    /// The value as an int; every byte past the int's is 0.
    value: i32,
    len: usize,
}

impl Reply {
    fn int(value: i32, len: usize) -> Self {
        Self {
            value,
            len: len.min(4),
        }
    }

    fn zeroed(len: usize) -> Self {
        Self {
            value: 0,
            len: len.min(TCP_INFO_LEN),
        }
    }

    /// How many bytes are written at `optval`: what is written at `optlen`.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is written at `optval`.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes written at `optval`, laid out in `buf`.
    #[must_use]
    pub fn bytes<'a>(&self, buf: &'a mut [u8; TCP_INFO_LEN]) -> &'a [u8] {
        buf.fill(0);
        buf[..4].copy_from_slice(&self.value.to_ne_bytes());
        &buf[..self.len]
    }
}

/// What a `getsockopt` on a stand-in becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Get {
    /// The kernel's answer on the stand-in is the right one.
    Kernel,
    /// Answered: write [`Reply::bytes`] at `optval` and their length at `optlen`.
    Reply(Reply),
    /// The call fails with this errno.
    Fail(Errno),
}

/// `getsockopt(level, name)` on `stand_in`, the caller's `*optlen` being `optlen` (read as
/// the kernel reads it: an `int`).
#[must_use]
pub fn get(level: i32, name: i32, stand_in: StandIn, optlen: i32) -> Get {
    let value = match (level, name) {
        (SOL_SOCKET, SO_DOMAIN) => i32::from(AF_INET),
        (SOL_SOCKET, SO_TYPE) => SOCK_STREAM,
        (SOL_SOCKET, SO_PROTOCOL) => IPPROTO_TCP,
        (SOL_SOCKET, SO_ACCEPTCONN) => i32::from(stand_in.listener),
        (SOL_SOCKET, SO_ERROR) if stand_in.listener => 0,
        (IPPROTO_TCP | IPPROTO_IP, _) if stand_in.vsock => {
            return vsock_get(level, name, optlen);
        }
        _ => return Get::Kernel,
    };
    // sock_getsockopt: a negative length is EINVAL, a longer one is cut to an int.
    match usize::try_from(optlen) {
        Ok(len) => Get::Reply(Reply::int(value, len)),
        Err(_) => Get::Fail(Errno::EINVAL),
    }
}

/// An `IPPROTO_TCP` or `IPPROTO_IP` option read on a vsock stand-in.
fn vsock_get(level: i32, name: i32, optlen: i32) -> Get {
    if level == IPPROTO_TCP {
        // do_tcp_getsockopt compares the length as unsigned: a negative one reads as large.
        #[allow(clippy::cast_sign_loss)] // As the kernel does.
        let len = optlen as u32 as usize;
        return Get::Reply(match name {
            TCP_INFO => Reply::zeroed(len),
            TCP_MAXSEG => Reply::int(DEFAULT_MSS, len),
            _ => Reply::int(0, len),
        });
    }
    // do_ip_getsockopt: a negative length is EINVAL; a shorter one gets a byte when the value
    // fits in one.
    let Ok(len) = usize::try_from(optlen) else {
        return Get::Fail(Errno::EINVAL);
    };
    let value = match name {
        IP_OPTIONS => return Get::Reply(Reply::zeroed(0)),
        IP_TTL => DEFAULT_TTL,
        _ => 0,
    };
    let len = if (1..4).contains(&len) { 1 } else { len };
    Get::Reply(Reply::int(value, len))
}

/// What a `setsockopt` on a stand-in becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Set {
    /// The kernel sets it on the stand-in.
    Kernel,
    /// Accepted with no effect: the call returns 0 (once `optval`'s `optlen` bytes, at most
    /// an int's, could be read; else EFAULT, as natively).
    Accept,
    /// The call fails with this errno.
    Fail(Errno),
}

/// `setsockopt(level, name, optval, optlen)` on `stand_in`.
#[must_use]
pub fn set(level: i32, name: i32, stand_in: StandIn, optlen: u32) -> Set {
    if !stand_in.vsock || (level != IPPROTO_TCP && level != IPPROTO_IP) {
        return Set::Kernel;
    }
    if level == IPPROTO_TCP && TCP_INT_OPTIONS.contains(&name) && optlen < 4 {
        return Set::Fail(Errno::EINVAL);
    }
    Set::Accept
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONN: StandIn = StandIn {
        listener: false,
        vsock: true,
    };
    const LISTENER: StandIn = StandIn {
        listener: true,
        vsock: true,
    };
    const PASSED: StandIn = StandIn {
        listener: false,
        vsock: false,
    };

    fn int(r: Get) -> (i32, usize) {
        let Get::Reply(r) = r else {
            panic!("no reply: {r:?}");
        };
        let mut buf = [0; TCP_INFO_LEN];
        let b = r.bytes(&mut buf);
        let mut four = [0u8; 4];
        four[..b.len().min(4)].copy_from_slice(&b[..b.len().min(4)]);
        (i32::from_ne_bytes(four), b.len())
    }

    #[test]
    fn sol_socket_looks_like_af_inet_tcp_in_both_settings() {
        for s in [CONN, PASSED] {
            assert_eq!(int(get(SOL_SOCKET, SO_DOMAIN, s, 4)), (2, 4));
            assert_eq!(int(get(SOL_SOCKET, SO_TYPE, s, 4)), (SOCK_STREAM, 4));
            assert_eq!(int(get(SOL_SOCKET, SO_PROTOCOL, s, 8)), (IPPROTO_TCP, 4));
            assert_eq!(int(get(SOL_SOCKET, SO_ACCEPTCONN, s, 4)), (0, 4));
            // A connection's pending error is its own socket's.
            assert_eq!(get(SOL_SOCKET, SO_ERROR, s, 4), Get::Kernel);
            assert_eq!(get(SOL_SOCKET, 7, s, 4), Get::Kernel); // SO_SNDBUF
        }
        assert_eq!(int(get(SOL_SOCKET, SO_ACCEPTCONN, LISTENER, 4)), (1, 4));
        assert_eq!(int(get(SOL_SOCKET, SO_ERROR, LISTENER, 4)), (0, 4));
        assert_eq!(int(get(SOL_SOCKET, SO_DOMAIN, CONN, 2)), (2, 2));
        assert_eq!(
            get(SOL_SOCKET, SO_DOMAIN, CONN, -1),
            Get::Fail(Errno::EINVAL)
        );
    }

    #[test]
    fn tcp_and_ip_options_are_answered_on_a_vsock_stand_in_only() {
        assert_eq!(get(IPPROTO_TCP, TCP_NODELAY, PASSED, 4), Get::Kernel);
        assert_eq!(get(IPPROTO_IP, IP_TOS, PASSED, 4), Get::Kernel);
        assert_eq!(set(IPPROTO_TCP, TCP_NODELAY, PASSED, 4), Set::Kernel);
        for s in [CONN, LISTENER] {
            assert_eq!(int(get(IPPROTO_TCP, TCP_NODELAY, s, 4)), (0, 4));
            assert_eq!(int(get(IPPROTO_TCP, TCP_MAXSEG, s, 4)), (1448, 4));
            assert_eq!(int(get(IPPROTO_IP, IP_TTL, s, 4)), (64, 4));
            assert_eq!(int(get(IPPROTO_IP, IP_TOS, s, 4)), (0, 4));
            assert_eq!(set(IPPROTO_TCP, TCP_NODELAY, s, 4), Set::Accept);
            assert_eq!(set(IPPROTO_TCP, TCP_KEEPIDLE, s, 4), Set::Accept);
            assert_eq!(set(IPPROTO_IP, IP_TOS, s, 1), Set::Accept);
            assert_eq!(set(SOL_SOCKET, 9, s, 4), Set::Kernel); // SO_KEEPALIVE
        }
    }

    #[test]
    fn lengths_and_errnos_are_linuxs() {
        // TCP: a short int option fails to set; a long read is cut to an int, a negative
        // length reads as a large one.
        assert_eq!(
            set(IPPROTO_TCP, TCP_NODELAY, CONN, 2),
            Set::Fail(Errno::EINVAL)
        );
        assert_eq!(set(IPPROTO_TCP, 13, CONN, 2), Set::Accept); // TCP_CONGESTION: a string
        assert_eq!(int(get(IPPROTO_TCP, TCP_MAXSEG, CONN, 64)), (1448, 4));
        assert_eq!(int(get(IPPROTO_TCP, TCP_MAXSEG, CONN, -1)), (1448, 4));
        assert_eq!(int(get(IPPROTO_TCP, TCP_NODELAY, CONN, 0)), (0, 0));
        // TCP_INFO: zeroed, at most the struct.
        let Get::Reply(info) = get(IPPROTO_TCP, TCP_INFO, CONN, 1000) else {
            panic!("TCP_INFO not answered");
        };
        let mut buf = [0xff; TCP_INFO_LEN];
        assert_eq!(info.bytes(&mut buf), &[0u8; TCP_INFO_LEN][..]);
        let Get::Reply(info) = get(IPPROTO_TCP, TCP_INFO, CONN, 104) else {
            panic!("TCP_INFO not answered");
        };
        assert_eq!(info.len(), 104);
        // IP: no options; a short length gets one byte; a negative one is EINVAL.
        let Get::Reply(opts) = get(IPPROTO_IP, IP_OPTIONS, CONN, 40) else {
            panic!("IP_OPTIONS not answered");
        };
        assert!(opts.is_empty());
        assert_eq!(int(get(IPPROTO_IP, IP_TTL, CONN, 1)), (64, 1));
        assert_eq!(int(get(IPPROTO_IP, IP_TTL, CONN, 3)), (64, 1));
        assert_eq!(get(IPPROTO_IP, IP_TTL, CONN, -4), Get::Fail(Errno::EINVAL));
    }

    proptest::proptest! {
        /// Whatever a program passes, the rule never writes past the caller's buffer (a
        /// non-negative `optlen`), nor more than the largest option, and never panics.
        #[test]
        fn a_reply_fits_the_callers_buffer(
            level in proptest::prop_oneof![0..8i32, proptest::prelude::any::<i32>()],
            name in proptest::prop_oneof![0..64i32, proptest::prelude::any::<i32>()],
            optlen in proptest::prelude::any::<i32>(),
            listener in proptest::prelude::any::<bool>(),
            vsock in proptest::prelude::any::<bool>(),
        ) {
            let s = StandIn { listener, vsock };
            if let Get::Reply(r) = get(level, name, s, optlen) {
                proptest::prop_assert!(r.len() <= TCP_INFO_LEN);
                if let Ok(max) = usize::try_from(optlen) {
                    proptest::prop_assert!(r.len() <= max);
                }
                let mut buf = [0xff; TCP_INFO_LEN];
                proptest::prop_assert_eq!(r.bytes(&mut buf).len(), r.len());
            }
            #[allow(clippy::cast_sign_loss)] // Any u32.
            let _ = set(level, name, s, optlen as u32);
        }
    }

    #[test]
    fn the_filter_lets_through_what_the_rule_may_answer() {
        for (level, name) in [
            (IPPROTO_TCP, TCP_NODELAY),
            (IPPROTO_TCP, TCP_INFO),
            (IPPROTO_IP, IP_TOS),
            (SOL_SOCKET, SO_DOMAIN),
            (SOL_SOCKET, SO_PROTOCOL),
        ] {
            assert!(vsock_may_answer(true, level, name));
            assert_ne!(get(level, name, CONN, 4), Get::Kernel);
        }
        assert!(vsock_may_answer(false, IPPROTO_TCP, TCP_NODELAY));
        assert!(!vsock_may_answer(false, SOL_SOCKET, SO_DOMAIN));
        // What a vsock stream or listener answers rightly itself is not let through.
        for name in [SO_TYPE, SO_ERROR, SO_ACCEPTCONN, 9] {
            assert!(!vsock_may_answer(true, SOL_SOCKET, name));
        }
        assert!(!vsock_may_answer(true, 41, 26)); // IPPROTO_IPV6, IPV6_V6ONLY
    }
}
