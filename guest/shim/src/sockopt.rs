//! Socket options at the hand-over of an outsourced socket: the options of the shared rule
//! (`shared_proto::translate::CARRIED_OPTIONS`) that the program set before connect (its
//! `setsockopt` marks one bit each in [`crate::table::Entry`]) are carried to the host's socket;
//! an option never touched costs the connect no call. What a stand-in answers for the options it
//! cannot (its domain; in a VM its TCP and IP options) is the shared rule, `shared_proto::sockopt`.

use libc::{c_int, socklen_t};

use shared_proto::translate::{carried_value, CARRIED_OPTIONS};

use crate::real;

/// The bit of `(level, name)` in [`crate::table::Entry::options`], if it is a copied option.
pub(crate) fn option_bit(level: c_int, name: c_int) -> Option<u16> {
    CARRIED_OPTIONS
        .iter()
        .position(|o| o.level == level && o.name == name)
        .map(|i| 1 << i)
}

/// Copies the options in `set` (bits of [`CARRIED_OPTIONS`]) from `from` to `to`.
pub(crate) fn copy_options(from: c_int, to: c_int, set: u16) {
    for (i, o) in CARRIED_OPTIONS.iter().enumerate() {
        if set & (1 << i) == 0 {
            continue;
        }
        let mut buf = [0u8; 32];
        let mut len = o.size as socklen_t;
        // SAFETY: buf is larger than any option read here; len says how much.
        unsafe {
            if real::getsockopt(from, o.level, o.name, buf.as_mut_ptr().cast(), &mut len) != 0 {
                continue;
            }
            let v = carried_value(*o, &buf[..len as usize]);
            libc::setsockopt(to, o.level, o.name, v.as_ptr().cast(), v.len() as socklen_t);
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
