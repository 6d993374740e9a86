//! Socket options on a stand-in for a program's TCP socket: the one rule by which liboutsock
//! and outsock-supervisor answer `getsockopt`/`setsockopt` there.
//!
//! An outsourced TCP socket is not the socket the program made. In process mode it is
//! host-server's IPv6 socket (a listener: a packet channel, `AF_UNIX` `SOCK_SEQPACKET`);
//! inside a VM it is an `AF_VSOCK` stream that host-server relays (a listener: a vsock
//! listener). So:
//!
//! - `SOL_SOCKET` options that would show the difference answer as for the socket the program
//!   made (`SO_DOMAIN` `AF_INET`, or `AF_INET6` for a dual-stack listener and what it accepts;
//!   `SO_TYPE`, `SO_PROTOCOL`, `SO_ACCEPTCONN`; a listener's `SO_ERROR` is 0), in both
//!   settings; the others are the kernel's on the stand-in. [`may_answer`] says which calls a
//!   filter that cannot see the socket must hand to the front end in each setting.
//! - Inside a VM, where `AF_VSOCK` has no TCP or IP options (ENOPROTOOPT), `IPPROTO_TCP` and
//!   `IPPROTO_IP` options are answered here: setting one is accepted (the host's socket is
//!   host-server's), with the errnos Linux gives a short `int` TCP option and the values it
//!   refuses; reading one answers the value set, as Linux reads it back ([`read_back`]: for
//!   the options in [`REMEMBERED`]; the front end keeps it per stand-in), else as an idle
//!   connection: `TCP_INFO` zeroed, no `IP_OPTIONS`, `TCP_MAXSEG` 1448 and `IP_TTL` 64
//!   (Linux's defaults on Ethernet), the keepalive and SYN retry counts of Linux's default
//!   sysctls, 0 for the rest. Other options set are accepted with no effect and read 0.
//!
//! The answer is the bytes the kernel would write at `optval` and the length at `optlen`,
//! sized as Linux sizes them. Numbers are Linux's generic ABI (x86_64); the front ends' tests
//! compare them with `libc`'s. Pure functions: no I/O, no `unsafe`.

use crate::errno::Errno;
use crate::translate::{AF_INET, AF_INET6};

pub const SOL_SOCKET: i32 = 1;
pub const IPPROTO_IP: i32 = 0;
pub const IPPROTO_TCP: i32 = 6;

pub const SO_TYPE: i32 = 3;
pub const SO_ERROR: i32 = 4;
pub const SO_ACCEPTCONN: i32 = 30;
pub const SO_PROTOCOL: i32 = 38;
pub const SO_DOMAIN: i32 = 39;
pub const SOCK_STREAM: i32 = 1;
/// `SOCK_DGRAM`.
pub const SOCK_DGRAM: i32 = 2;
/// `IPPROTO_UDP`.
pub const IPPROTO_UDP: i32 = 17;

pub const IP_TOS: i32 = 1;
pub const IP_TTL: i32 = 2;
pub const IP_OPTIONS: i32 = 4;

pub const TCP_NODELAY: i32 = 1;
pub const TCP_MAXSEG: i32 = 2;
pub const TCP_KEEPIDLE: i32 = 4;
pub const TCP_KEEPINTVL: i32 = 5;
pub const TCP_KEEPCNT: i32 = 6;
pub const TCP_CORK: i32 = 3;
pub const TCP_SYNCNT: i32 = 7;
pub const TCP_INFO: i32 = 11;
pub const TCP_USER_TIMEOUT: i32 = 18;
pub const TCP_NOTSENT_LOWAT: i32 = 25;

/// `sizeof(struct tcp_info)` of Linux 6.1 (the guest's and this machine's kernels).
pub const TCP_INFO_LEN: usize = 232;
/// `TCP_MAXSEG` of an idle connection over Ethernet (MTU 1500, timestamps on).
pub const DEFAULT_MSS: i32 = 1448;
/// `IP_TTL` of a socket that never set it (`net.ipv4.ip_default_ttl`).
pub const DEFAULT_TTL: i32 = 64;

/// `tcp_keepalive_time`, `tcp_keepalive_intvl`, `tcp_keepalive_probes` and `tcp_syn_retries`
/// of Linux's defaults: what an idle connection reads for `TCP_KEEPIDLE`, `TCP_KEEPINTVL`,
/// `TCP_KEEPCNT` and `TCP_SYNCNT`.
pub const DEFAULT_KEEPIDLE: i32 = 7200;
pub const DEFAULT_KEEPINTVL: i32 = 75;
pub const DEFAULT_KEEPCNT: i32 = 9;
pub const DEFAULT_SYNCNT: i32 = 6;

/// The options whose value set on a vsock stand-in is read back ([`read_back`]); the front
/// ends keep at most this many values per stand-in, one per option.
pub const REMEMBERED: [(i32, i32); 11] = [
    (IPPROTO_TCP, TCP_NODELAY),
    (IPPROTO_TCP, TCP_MAXSEG),
    (IPPROTO_TCP, TCP_CORK),
    (IPPROTO_TCP, TCP_KEEPIDLE),
    (IPPROTO_TCP, TCP_KEEPINTVL),
    (IPPROTO_TCP, TCP_KEEPCNT),
    (IPPROTO_TCP, TCP_SYNCNT),
    (IPPROTO_TCP, TCP_USER_TIMEOUT),
    (IPPROTO_TCP, TCP_NOTSENT_LOWAT),
    (IPPROTO_IP, IP_TOS),
    (IPPROTO_IP, IP_TTL),
];

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

/// What stands in for the program's TCP socket (or, with `udp`, its connected UDP socket).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StandIn {
    /// A listener (else a connection).
    pub listener: bool,
    /// Inside a VM: an `AF_VSOCK` socket (else host-server's IPv6 socket or packet channel).
    pub vsock: bool,
    /// The program made an `AF_INET6` socket: a dual-stack listener (outsourced as the AF_INET
    /// one it stands for) or a connection accepted on one.
    pub v6: bool,
    /// A connected UDP socket: host-server's IPv6 one, passed in process mode (`SOCK_DGRAM`,
    /// `IPPROTO_UDP`; its options are the kernel's own).
    pub udp: bool,
}

/// Whether a `getsockopt` (`get`) or `setsockopt` at (`level`, `name`) may need the rule:
/// what a filter that cannot see the socket must let through to the front end. Inside a VM
/// (`vsock`): every `IPPROTO_TCP` and `IPPROTO_IP` option, and the `SOL_SOCKET` ones a vsock
/// stream or listener answers wrongly (`SO_DOMAIN`, `SO_PROTOCOL`). In process mode: only
/// reading the `SOL_SOCKET` options a packet channel or host-server's IPv6 socket answers
/// wrongly (`SO_DOMAIN`, `SO_TYPE`, `SO_PROTOCOL`, `SO_ACCEPTCONN`); a listener's `SO_ERROR`
/// is the channel's, 0 as the rule's.
#[must_use]
pub fn may_answer(vsock: bool, get: bool, level: i32, name: i32) -> bool {
    match level {
        IPPROTO_TCP | IPPROTO_IP => vsock,
        SOL_SOCKET if vsock => get && (name == SO_DOMAIN || name == SO_PROTOCOL),
        SOL_SOCKET => get && [SO_DOMAIN, SO_TYPE, SO_PROTOCOL, SO_ACCEPTCONN].contains(&name),
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
/// the kernel reads it: an `int`); `set` is the value [`read_back`] gave when the program set
/// this option on the stand-in, if the front end kept one.
#[must_use]
pub fn get(level: i32, name: i32, stand_in: StandIn, optlen: i32, set: Option<i32>) -> Get {
    let value = match (level, name) {
        (SOL_SOCKET, SO_DOMAIN) if stand_in.v6 => i32::from(AF_INET6),
        (SOL_SOCKET, SO_DOMAIN) => i32::from(AF_INET),
        (SOL_SOCKET, SO_TYPE) if stand_in.udp => SOCK_DGRAM,
        (SOL_SOCKET, SO_PROTOCOL) if stand_in.udp => IPPROTO_UDP,
        (SOL_SOCKET, SO_TYPE) => SOCK_STREAM,
        (SOL_SOCKET, SO_PROTOCOL) => IPPROTO_TCP,
        (SOL_SOCKET, SO_ACCEPTCONN) => i32::from(stand_in.listener),
        (SOL_SOCKET, SO_ERROR) if stand_in.listener => 0,
        (IPPROTO_TCP | IPPROTO_IP, _) if stand_in.vsock => {
            return vsock_get(level, name, optlen, set);
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
fn vsock_get(level: i32, name: i32, optlen: i32, set: Option<i32>) -> Get {
    if level == IPPROTO_TCP {
        let idle = match name {
            TCP_MAXSEG => DEFAULT_MSS,
            TCP_KEEPIDLE => DEFAULT_KEEPIDLE,
            TCP_KEEPINTVL => DEFAULT_KEEPINTVL,
            TCP_KEEPCNT => DEFAULT_KEEPCNT,
            TCP_SYNCNT => DEFAULT_SYNCNT,
            _ => 0,
        };
        // do_tcp_getsockopt compares the length as unsigned: a negative one reads as large.
        #[allow(clippy::cast_sign_loss)] // As the kernel does.
        let len = optlen as u32 as usize;
        return Get::Reply(match name {
            TCP_INFO => Reply::zeroed(len),
            _ => Reply::int(set.unwrap_or(idle), len),
        });
    }
    // do_ip_getsockopt: a negative length is EINVAL; a shorter one gets a byte when the value
    // fits in one.
    let Ok(len) = usize::try_from(optlen) else {
        return Get::Fail(Errno::EINVAL);
    };
    let value = match name {
        IP_OPTIONS => return Get::Reply(Reply::zeroed(0)),
        IP_TTL => set.unwrap_or(DEFAULT_TTL),
        _ => set.unwrap_or(0),
    };
    let len = if (1..4).contains(&len) { 1 } else { len };
    Get::Reply(Reply::int(value, len))
}

/// What a `setsockopt` on a stand-in becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Set {
    /// The kernel sets it on the stand-in.
    Kernel,
    /// Accepted: the call returns 0 once `optval`'s `optlen` bytes, at most an int's, could
    /// be read (else EFAULT, as natively) and [`read_back`] takes them.
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

/// The value an option of [`REMEMBERED`] that `setsockopt` accepted ([`Set::Accept`]) on a
/// vsock stand-in reads back, from `value`, the bytes read at `optval` (`optlen` of them, at
/// most an int's): `Ok(Some(v))` to keep, `Ok(None)` when it reads as never set (forget any
/// value kept), or the errno Linux refuses the value with. Options not remembered are
/// `Ok(None)` (accepted, no effect). As Linux: an `IPPROTO_IP` option shorter than an int is
/// one byte; a TCP boolean reads 1; `IP_TOS` on a stream keeps its ECN bits (0); `IP_TTL` -1
/// is the default again; the keepalive, SYN, MSS and timeout options check their range.
///
/// # Errors
/// The errno (EINVAL) Linux fails the call with.
pub fn read_back(level: i32, name: i32, value: &[u8]) -> Result<Option<i32>, Errno> {
    let v = match *value {
        [a, b, c, d, ..] => i32::from_ne_bytes([a, b, c, d]),
        [a, ..] if level == IPPROTO_IP => i32::from(a),
        _ => 0,
    };
    let within = |lo: i32, hi: i32| {
        if (lo..=hi).contains(&v) {
            Ok(Some(v))
        } else {
            Err(Errno::EINVAL)
        }
    };
    match (level, name) {
        (IPPROTO_TCP, TCP_NODELAY | TCP_CORK) => Ok(Some(i32::from(v != 0))),
        // TCP_MIN_MSS .. MAX_TCP_WINDOW; a connection's segment is at most the path's.
        (IPPROTO_TCP, TCP_MAXSEG) if v == 0 => Ok(None),
        (IPPROTO_TCP, TCP_MAXSEG) => within(88, 32767).map(|_| Some(v.min(DEFAULT_MSS))),
        (IPPROTO_TCP, TCP_KEEPIDLE | TCP_KEEPINTVL) => within(1, 32767), // MAX_TCP_KEEP*
        (IPPROTO_TCP, TCP_KEEPCNT | TCP_SYNCNT) => within(1, 127),       // MAX_TCP_*CNT
        (IPPROTO_TCP, TCP_USER_TIMEOUT) => within(0, i32::MAX),
        (IPPROTO_TCP, TCP_NOTSENT_LOWAT) => Ok(Some(v)),
        (IPPROTO_IP, IP_TOS) => Ok(Some(v & 0xfc)),
        (IPPROTO_IP, IP_TTL) if value.is_empty() => Err(Errno::EINVAL),
        (IPPROTO_IP, IP_TTL) if v == -1 => Ok(None),
        (IPPROTO_IP, IP_TTL) => within(1, 255),
        _ => Ok(None),
    }
}

/// The values kept for one stand-in: at most one per option of [`REMEMBERED`], so bounded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Remembered {
    values: [Option<i32>; REMEMBERED.len()],
}

impl Remembered {
    /// The value kept for (`level`, `name`), if any: [`get`]'s `set`.
    #[must_use]
    pub fn value(&self, level: i32, name: i32) -> Option<i32> {
        let i = REMEMBERED.iter().position(|&o| o == (level, name))?;
        self.values[i]
    }

    /// Keeps what [`read_back`] gave for (`level`, `name`): a value, or none (forgotten).
    /// Options not in [`REMEMBERED`] are not kept.
    pub fn keep(&mut self, level: i32, name: i32, value: Option<i32>) {
        if let Some(i) = REMEMBERED.iter().position(|&o| o == (level, name)) {
            self.values[i] = value;
        }
    }

    /// Whether no value is kept.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.values.iter().all(Option::is_none)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONN: StandIn = StandIn {
        listener: false,
        vsock: true,
        v6: false,
        udp: false,
    };
    const LISTENER: StandIn = StandIn {
        listener: true,
        vsock: true,
        v6: false,
        udp: false,
    };
    const PASSED: StandIn = StandIn {
        listener: false,
        vsock: false,
        v6: false,
        udp: false,
    };
    const CHANNEL: StandIn = StandIn {
        listener: true,
        vsock: false,
        v6: false,
        udp: false,
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
            assert_eq!(int(get(SOL_SOCKET, SO_DOMAIN, s, 4, None)), (2, 4));
            assert_eq!(int(get(SOL_SOCKET, SO_TYPE, s, 4, None)), (SOCK_STREAM, 4));
            assert_eq!(
                int(get(SOL_SOCKET, SO_PROTOCOL, s, 8, None)),
                (IPPROTO_TCP, 4)
            );
            assert_eq!(int(get(SOL_SOCKET, SO_ACCEPTCONN, s, 4, None)), (0, 4));
            // A connection's pending error is its own socket's.
            assert_eq!(get(SOL_SOCKET, SO_ERROR, s, 4, None), Get::Kernel);
            assert_eq!(get(SOL_SOCKET, 7, s, 4, None), Get::Kernel); // SO_SNDBUF
        }
        assert_eq!(
            int(get(SOL_SOCKET, SO_ACCEPTCONN, LISTENER, 4, None)),
            (1, 4)
        );
        assert_eq!(int(get(SOL_SOCKET, SO_ERROR, LISTENER, 4, None)), (0, 4));
        assert_eq!(int(get(SOL_SOCKET, SO_DOMAIN, CONN, 2, None)), (2, 2));
        assert_eq!(
            get(SOL_SOCKET, SO_DOMAIN, CONN, -1, None),
            Get::Fail(Errno::EINVAL)
        );
    }

    #[test]
    fn tcp_and_ip_options_are_answered_on_a_vsock_stand_in_only() {
        assert_eq!(get(IPPROTO_TCP, TCP_NODELAY, PASSED, 4, None), Get::Kernel);
        assert_eq!(get(IPPROTO_IP, IP_TOS, PASSED, 4, None), Get::Kernel);
        assert_eq!(set(IPPROTO_TCP, TCP_NODELAY, PASSED, 4), Set::Kernel);
        for s in [CONN, LISTENER] {
            assert_eq!(int(get(IPPROTO_TCP, TCP_NODELAY, s, 4, None)), (0, 4));
            assert_eq!(int(get(IPPROTO_TCP, TCP_MAXSEG, s, 4, None)), (1448, 4));
            assert_eq!(int(get(IPPROTO_IP, IP_TTL, s, 4, None)), (64, 4));
            assert_eq!(int(get(IPPROTO_IP, IP_TOS, s, 4, None)), (0, 4));
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
        assert_eq!(int(get(IPPROTO_TCP, TCP_MAXSEG, CONN, 64, None)), (1448, 4));
        assert_eq!(int(get(IPPROTO_TCP, TCP_MAXSEG, CONN, -1, None)), (1448, 4));
        assert_eq!(int(get(IPPROTO_TCP, TCP_NODELAY, CONN, 0, None)), (0, 0));
        // TCP_INFO: zeroed, at most the struct.
        let Get::Reply(info) = get(IPPROTO_TCP, TCP_INFO, CONN, 1000, None) else {
            panic!("TCP_INFO not answered");
        };
        let mut buf = [0xff; TCP_INFO_LEN];
        assert_eq!(info.bytes(&mut buf), &[0u8; TCP_INFO_LEN][..]);
        let Get::Reply(info) = get(IPPROTO_TCP, TCP_INFO, CONN, 104, None) else {
            panic!("TCP_INFO not answered");
        };
        assert_eq!(info.len(), 104);
        // IP: no options; a short length gets one byte; a negative one is EINVAL.
        let Get::Reply(opts) = get(IPPROTO_IP, IP_OPTIONS, CONN, 40, None) else {
            panic!("IP_OPTIONS not answered");
        };
        assert!(opts.is_empty());
        assert_eq!(int(get(IPPROTO_IP, IP_TTL, CONN, 1, None)), (64, 1));
        assert_eq!(int(get(IPPROTO_IP, IP_TTL, CONN, 3, None)), (64, 1));
        assert_eq!(
            get(IPPROTO_IP, IP_TTL, CONN, -4, None),
            Get::Fail(Errno::EINVAL)
        );
    }

    #[test]
    fn a_channel_and_a_dual_stack_listener_answer_as_the_programs_socket() {
        // Process mode: the packet channel (AF_UNIX, SOCK_SEQPACKET, protocol 0, not listening).
        assert_eq!(int(get(SOL_SOCKET, SO_DOMAIN, CHANNEL, 4, None)), (2, 4));
        assert_eq!(
            int(get(SOL_SOCKET, SO_TYPE, CHANNEL, 4, None)),
            (SOCK_STREAM, 4)
        );
        assert_eq!(int(get(SOL_SOCKET, SO_PROTOCOL, CHANNEL, 4, None)), (6, 4));
        assert_eq!(
            int(get(SOL_SOCKET, SO_ACCEPTCONN, CHANNEL, 4, None)),
            (1, 4)
        );
        // TCP options on a channel are the kernel's (EOPNOTSUPP), not answered in process mode.
        assert_eq!(get(IPPROTO_TCP, TCP_NODELAY, CHANNEL, 4, None), Get::Kernel);
        for s in [CHANNEL, PASSED, LISTENER] {
            let v6 = StandIn { v6: true, ..s };
            assert_eq!(int(get(SOL_SOCKET, SO_DOMAIN, v6, 4, None)), (10, 4));
        }
    }

    #[test]
    fn values_set_read_back_as_linux_reads_them() {
        let int = |v: i32| v.to_ne_bytes();
        assert_eq!(read_back(IPPROTO_TCP, TCP_NODELAY, &int(5)), Ok(Some(1)));
        assert_eq!(read_back(IPPROTO_TCP, TCP_NODELAY, &int(0)), Ok(Some(0)));
        assert_eq!(read_back(IPPROTO_TCP, TCP_KEEPIDLE, &int(33)), Ok(Some(33)));
        assert_eq!(
            read_back(IPPROTO_TCP, TCP_KEEPIDLE, &int(0)),
            Err(Errno::EINVAL)
        );
        assert_eq!(
            read_back(IPPROTO_TCP, TCP_KEEPIDLE, &int(32768)),
            Err(Errno::EINVAL)
        );
        assert_eq!(
            read_back(IPPROTO_TCP, TCP_KEEPCNT, &int(128)),
            Err(Errno::EINVAL)
        );
        assert_eq!(read_back(IPPROTO_TCP, TCP_MAXSEG, &int(0)), Ok(None));
        assert_eq!(
            read_back(IPPROTO_TCP, TCP_MAXSEG, &int(1000)),
            Ok(Some(1000))
        );
        assert_eq!(
            read_back(IPPROTO_TCP, TCP_MAXSEG, &int(9000)),
            Ok(Some(1448))
        );
        assert_eq!(
            read_back(IPPROTO_TCP, TCP_MAXSEG, &int(10)),
            Err(Errno::EINVAL)
        );
        assert_eq!(
            read_back(IPPROTO_TCP, TCP_USER_TIMEOUT, &int(-1)),
            Err(Errno::EINVAL)
        );
        // IP: ECN bits stay the stream's; a byte is a value; TTL -1 is the default again.
        assert_eq!(read_back(IPPROTO_IP, IP_TOS, &int(0x2f)), Ok(Some(0x2c)));
        assert_eq!(read_back(IPPROTO_IP, IP_TOS, &[0x10]), Ok(Some(0x10)));
        assert_eq!(read_back(IPPROTO_IP, IP_TTL, &[7]), Ok(Some(7)));
        assert_eq!(read_back(IPPROTO_IP, IP_TTL, &int(-1)), Ok(None));
        assert_eq!(read_back(IPPROTO_IP, IP_TTL, &int(0)), Err(Errno::EINVAL));
        assert_eq!(read_back(IPPROTO_IP, IP_TTL, &int(256)), Err(Errno::EINVAL));
        assert_eq!(read_back(IPPROTO_IP, IP_TTL, &[]), Err(Errno::EINVAL));
        // Not remembered: accepted, no effect.
        assert_eq!(read_back(IPPROTO_TCP, 9, &int(5)), Ok(None)); // TCP_DEFER_ACCEPT
        assert_eq!(read_back(IPPROTO_IP, IP_OPTIONS, &[1, 2]), Ok(None));
    }

    #[test]
    fn a_kept_value_is_what_get_answers_else_the_idle_default() {
        let mut kept = Remembered::default();
        assert!(kept.is_empty());
        assert_eq!(
            int(get(IPPROTO_TCP, TCP_KEEPIDLE, CONN, 4, None)),
            (7200, 4)
        );
        assert_eq!(int(get(IPPROTO_TCP, TCP_KEEPINTVL, CONN, 4, None)), (75, 4));
        assert_eq!(int(get(IPPROTO_TCP, TCP_KEEPCNT, CONN, 4, None)), (9, 4));
        assert_eq!(int(get(IPPROTO_TCP, TCP_SYNCNT, CONN, 4, None)), (6, 4));
        kept.keep(IPPROTO_TCP, TCP_KEEPIDLE, Some(33));
        kept.keep(IPPROTO_IP, IP_TTL, Some(7));
        kept.keep(IPPROTO_TCP, 9, Some(5)); // not one of REMEMBERED: not kept
        let at =
            |kept: &Remembered, level, name| get(level, name, CONN, 4, kept.value(level, name));
        assert_eq!(int(at(&kept, IPPROTO_TCP, TCP_KEEPIDLE)), (33, 4));
        assert_eq!(int(at(&kept, IPPROTO_IP, IP_TTL)), (7, 4));
        assert_eq!(int(at(&kept, IPPROTO_TCP, 9)), (0, 4));
        assert_eq!(int(at(&kept, IPPROTO_TCP, TCP_NODELAY)), (0, 4));
        // A one-byte read of an IP option gets the kept value's byte.
        assert_eq!(
            int(get(
                IPPROTO_IP,
                IP_TTL,
                CONN,
                1,
                kept.value(IPPROTO_IP, IP_TTL)
            )),
            (7, 1)
        );
        kept.keep(IPPROTO_IP, IP_TTL, None);
        assert_eq!(int(at(&kept, IPPROTO_IP, IP_TTL)), (64, 4));
        kept.keep(IPPROTO_TCP, TCP_KEEPIDLE, None);
        assert!(kept.is_empty());
        // A kept value never shows on a socket the kernel answers for.
        assert_eq!(
            get(IPPROTO_TCP, TCP_KEEPIDLE, PASSED, 4, Some(33)),
            Get::Kernel
        );
    }

    #[test]
    fn process_mode_hands_over_only_the_sol_socket_reads_that_differ() {
        for name in [SO_DOMAIN, SO_TYPE, SO_PROTOCOL, SO_ACCEPTCONN] {
            assert!(may_answer(false, true, SOL_SOCKET, name));
            assert!(!may_answer(false, false, SOL_SOCKET, name));
        }
        for (level, name) in [
            (SOL_SOCKET, SO_ERROR),
            (SOL_SOCKET, 7), // SO_SNDBUF
            (SOL_SOCKET, 2), // SO_REUSEADDR
            (IPPROTO_TCP, TCP_NODELAY),
            (IPPROTO_IP, IP_TOS),
            (41, 26),
        ] {
            assert!(!may_answer(false, true, level, name));
            assert!(!may_answer(false, false, level, name));
        }
        // Whatever the rule answers differently from the kernel in process mode is handed
        // over (a listener's SO_ERROR is the channel's 0 natively too).
        for level in [SOL_SOCKET, IPPROTO_TCP, IPPROTO_IP, 41] {
            for name in 0..70 {
                for s in [CHANNEL, PASSED] {
                    let answered = get(level, name, s, 4, None) != Get::Kernel;
                    if answered && name != SO_ERROR {
                        assert!(may_answer(false, true, level, name), "{level} {name}");
                    }
                }
            }
        }
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
            v6 in proptest::prelude::any::<bool>(),
            set in proptest::option::of(proptest::prelude::any::<i32>()),
            value in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..8),
        ) {
            let s = StandIn {
                listener,
                vsock,
                v6,
                udp: false,
            };
            if let Get::Reply(r) = get(level, name, s, optlen, set) {
                proptest::prop_assert!(r.len() <= TCP_INFO_LEN);
                if let Ok(max) = usize::try_from(optlen) {
                    proptest::prop_assert!(r.len() <= max);
                }
                let mut buf = [0xff; TCP_INFO_LEN];
                proptest::prop_assert_eq!(r.bytes(&mut buf).len(), r.len());
            }
            #[allow(clippy::cast_sign_loss)] // Any u32.
            let _ = self::set(level, name, s, optlen as u32);
            let _ = read_back(level, name, &value);
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
            assert!(may_answer(true, true, level, name));
            assert_ne!(get(level, name, CONN, 4, None), Get::Kernel);
        }
        assert!(may_answer(true, false, IPPROTO_TCP, TCP_NODELAY));
        assert!(!may_answer(true, false, SOL_SOCKET, SO_DOMAIN));
        // What a vsock stream or listener answers rightly itself is not let through.
        for name in [SO_TYPE, SO_ERROR, SO_ACCEPTCONN, 9] {
            assert!(!may_answer(true, true, SOL_SOCKET, name));
        }
        assert!(!may_answer(true, true, 41, 26)); // IPPROTO_IPV6, IPV6_V6ONLY
    }
}
