//! Socket options at the hand-over of an outsourced socket: which options the program set
//! before connect are carried to the host's socket (one bit each in [`crate::table::Entry`]),
//! and reading one SOL_SOCKET option back. What a stand-in answers for the options it cannot
//! (its domain; in a VM its TCP and IP options) is the shared rule, `shared_proto::sockopt`.

use libc::{c_int, socklen_t};

use crate::real;

/// The socket options carried from the program's socket to the host's socket after an
/// outsourced connect, when the program set them (its `setsockopt` marks the bit): an option it
/// never touched keeps the host socket's default, so the connect costs no extra calls and, e.g.,
/// buffer auto-tuning stays on. (level, name, value size, halve): the kernel reports SO_RCVBUF
/// and SO_SNDBUF doubled, so the value read is halved before it is set again.
const COPIED_OPTIONS: [(c_int, c_int, usize, bool); 10] = [
    (libc::IPPROTO_TCP, libc::TCP_NODELAY, INT, false),
    (libc::SOL_SOCKET, libc::SO_KEEPALIVE, INT, false),
    (libc::SOL_SOCKET, libc::SO_RCVTIMEO, TIMEVAL, false),
    (libc::SOL_SOCKET, libc::SO_SNDTIMEO, TIMEVAL, false),
    (libc::SOL_SOCKET, libc::SO_RCVBUF, INT, true),
    (libc::SOL_SOCKET, libc::SO_SNDBUF, INT, true),
    (libc::SOL_SOCKET, libc::SO_LINGER, LINGER, false),
    (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, INT, false),
    (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, INT, false),
    (libc::IPPROTO_TCP, libc::TCP_KEEPCNT, INT, false),
];
const INT: usize = std::mem::size_of::<c_int>();
const TIMEVAL: usize = std::mem::size_of::<libc::timeval>();
const LINGER: usize = std::mem::size_of::<libc::linger>();

/// The bit of `(level, name)` in [`crate::table::Entry::options`], if it is a copied option.
pub(crate) fn option_bit(level: c_int, name: c_int) -> Option<u16> {
    COPIED_OPTIONS
        .iter()
        .position(|&(l, n, _, _)| l == level && n == name)
        .map(|i| 1 << i)
}

/// Copies the options in `set` (bits of [`COPIED_OPTIONS`]) from `from` to `to`.
pub(crate) fn copy_options(from: c_int, to: c_int, set: u16) {
    for (i, &(level, name, size, halve)) in COPIED_OPTIONS.iter().enumerate() {
        if set & (1 << i) == 0 {
            continue;
        }
        let mut buf = [0u8; 32];
        let mut len = size as socklen_t;
        // SAFETY: buf is larger than any option read here; len says how much.
        unsafe {
            if real::getsockopt(from, level, name, buf.as_mut_ptr().cast(), &mut len) != 0 {
                continue;
            }
            if halve && len as usize == INT {
                let v = c_int::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) / 2;
                buf[..INT].copy_from_slice(&v.to_ne_bytes());
            }
            libc::setsockopt(to, level, name, buf.as_ptr().cast(), len);
        }
    }
}

#[cfg(test)]
mod tests {
    use shared_proto::sockopt as rule;

    /// The shared rule spells Linux's numbers out (shared-proto has no platform bindings):
    /// they are libc's.
    #[test]
    fn the_shared_rule_speaks_libcs_numbers() {
        assert_eq!(
            [rule::SOL_SOCKET, rule::IPPROTO_IP, rule::IPPROTO_TCP],
            [libc::SOL_SOCKET, libc::IPPROTO_IP, libc::IPPROTO_TCP]
        );
        assert_eq!(
            [
                rule::SO_TYPE,
                rule::SO_ERROR,
                rule::SO_ACCEPTCONN,
                rule::SO_PROTOCOL,
                rule::SO_DOMAIN,
                rule::SOCK_STREAM
            ],
            [
                libc::SO_TYPE,
                libc::SO_ERROR,
                libc::SO_ACCEPTCONN,
                libc::SO_PROTOCOL,
                libc::SO_DOMAIN,
                libc::SOCK_STREAM
            ]
        );
        assert_eq!(
            [rule::IP_TOS, rule::IP_TTL, rule::IP_OPTIONS],
            [libc::IP_TOS, libc::IP_TTL, libc::IP_OPTIONS]
        );
        assert_eq!(
            [
                rule::TCP_NODELAY,
                rule::TCP_MAXSEG,
                rule::TCP_KEEPIDLE,
                rule::TCP_KEEPINTVL,
                rule::TCP_KEEPCNT,
                rule::TCP_INFO
            ],
            [
                libc::TCP_NODELAY,
                libc::TCP_MAXSEG,
                libc::TCP_KEEPIDLE,
                libc::TCP_KEEPINTVL,
                libc::TCP_KEEPCNT,
                libc::TCP_INFO
            ]
        );
        assert_eq!(i32::from(shared_proto::translate::AF_INET), libc::AF_INET);
    }
}
