//! Socket options at the hand-over of an outsourced socket: the options of the shared rule
//! (`shared_proto::translate::CARRIED_OPTIONS`) that the program set before connect (its
//! `setsockopt` marks one bit each in [`crate::table::Entry`]) are carried to the host's socket;
//! an option never touched costs the connect no call. What a stand-in answers for the options it
//! cannot (its domain; in a VM its TCP and IP options) is the shared rule, `shared_proto::sockopt`.
//!
//! In a VM the values a program sets on an outsourced socket's TCP and IP options are kept
//! here ([`keep`], [`kept`]; which options and what reads back are the rule's
//! `REMEMBERED` and `read_back`), per descriptor, lock-free: [`KEPT_SLOTS`] atomics for the
//! whole process, each one descriptor's option and value; a value that finds no free slot is
//! not kept (it reads the idle default). A descriptor's values are forgotten when the table
//! forgets it (close, close_range) and copied to a duplicate.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use libc::{c_int, socklen_t};

use shared_proto::sockopt::REMEMBERED;
use shared_proto::translate::{carried_value, CARRIED_OPTIONS};

use crate::real;

/// The descriptors a slot can name: its 20 descriptor bits (as many as `crate::table` covers;
/// its tests check the two agree). Not imported from there: the table forgets a closed
/// descriptor's values here, so this module must not depend on it.
pub(crate) const MAX_FDS: usize = 1 << 20;

/// How many option values liboutsock keeps, over all descriptors.
pub(crate) const KEPT_SLOTS: usize = 256;

/// A slot: 0 when free, else [`USED`], the option's index in `REMEMBERED` (bits 52-55), the
/// descriptor (bits 32-51: below [`MAX_FDS`]) and the value (bits 0-31).
static KEPT: [AtomicU64; KEPT_SLOTS] = [const { AtomicU64::new(0) }; KEPT_SLOTS];
/// How many slots are in use: no scan while none is.
static IN_USE: AtomicUsize = AtomicUsize::new(0);
const USED: u64 = 1 << 63;
const KEY: u64 = 0xffff_ffff_0000_0000;

/// The key bits of `fd`'s option `index`, if `fd` is one the table covers.
fn key(fd: c_int, index: usize) -> Option<u64> {
    let fd = usize::try_from(fd).ok().filter(|&f| f < MAX_FDS)?;
    Some(USED | (index as u64) << 52 | (fd as u64) << 32)
}

fn index(level: c_int, name: c_int) -> Option<usize> {
    REMEMBERED.iter().position(|&o| o == (level, name))
}

/// The value kept for `fd`'s option (`level`, `name`): the rule's `set` argument.
pub(crate) fn kept(fd: c_int, level: c_int, name: c_int) -> Option<i32> {
    if IN_USE.load(Ordering::Acquire) == 0 {
        return None;
    }
    let key = key(fd, index(level, name)?)?;
    KEPT.iter().find_map(|s| {
        let v = s.load(Ordering::Acquire);
        #[allow(clippy::cast_possible_truncation)] // The value's bits.
        (v & KEY == key).then_some(v as u32 as i32)
    })
}

/// Keeps `value` for `fd`'s option (`level`, `name`), or forgets it (`None`); options the
/// rule does not remember are not kept.
pub(crate) fn keep(fd: c_int, level: c_int, name: c_int, value: Option<i32>) {
    let Some(key) = index(level, name).and_then(|i| key(fd, i)) else {
        return;
    };
    #[allow(clippy::cast_sign_loss)] // The value's bits.
    let new = value.map(|v| key | u64::from(v as u32));
    if IN_USE.load(Ordering::Acquire) != 0 {
        for s in &KEPT {
            let old = s.load(Ordering::Acquire);
            if old & KEY == key
                && s.compare_exchange(old, new.unwrap_or(0), Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                if new.is_none() {
                    IN_USE.fetch_sub(1, Ordering::AcqRel);
                }
                return;
            }
        }
    }
    let Some(new) = new else {
        return;
    };
    for s in &KEPT {
        if s.compare_exchange(0, new, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            IN_USE.fetch_add(1, Ordering::AcqRel);
            return;
        }
    }
}

/// Forgets every value kept for `fd`.
pub(crate) fn forget(fd: c_int) {
    if IN_USE.load(Ordering::Acquire) == 0 {
        return;
    }
    let Some(fd_key) = key(fd, 0) else {
        return;
    };
    for s in &KEPT {
        let old = s.load(Ordering::Acquire);
        if old != 0
            && old & FD_BITS == fd_key & FD_BITS
            && s.compare_exchange(old, 0, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            IN_USE.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// The descriptor's bits of a slot.
const FD_BITS: u64 = 0x000f_ffff_0000_0000;

/// Makes `to`'s kept values a copy of `from`'s (a duplicate descriptor).
pub(crate) fn copy_kept(from: c_int, to: c_int) {
    forget(to);
    if IN_USE.load(Ordering::Acquire) == 0 {
        return;
    }
    for (level, name) in REMEMBERED {
        if let Some(v) = kept(from, level, name) {
            keep(to, level, name, Some(v));
        }
    }
}

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

    use super::*;

    #[test]
    fn values_are_kept_per_descriptor_copied_forgotten_and_bounded() {
        // Descriptors of their own (the table is the process's).
        let (a, b, c) = (900_001, 900_002, 900_003);
        let (tcp, ip) = (libc::IPPROTO_TCP, libc::IPPROTO_IP);
        assert_eq!(kept(a, tcp, libc::TCP_KEEPIDLE), None);
        keep(a, tcp, libc::TCP_KEEPIDLE, Some(33));
        keep(a, ip, libc::IP_TTL, Some(7));
        keep(a, tcp, libc::TCP_DEFER_ACCEPT, Some(5)); // not one the rule remembers
        keep(b, tcp, libc::TCP_KEEPIDLE, Some(-5));
        assert_eq!(kept(a, tcp, libc::TCP_KEEPIDLE), Some(33));
        assert_eq!(kept(a, ip, libc::IP_TTL), Some(7));
        assert_eq!(kept(a, tcp, libc::TCP_DEFER_ACCEPT), None);
        assert_eq!(kept(b, tcp, libc::TCP_KEEPIDLE), Some(-5));
        keep(a, tcp, libc::TCP_KEEPIDLE, Some(34));
        assert_eq!(kept(a, tcp, libc::TCP_KEEPIDLE), Some(34));
        copy_kept(a, c);
        assert_eq!(kept(c, ip, libc::IP_TTL), Some(7));
        keep(a, ip, libc::IP_TTL, None);
        assert_eq!(kept(a, ip, libc::IP_TTL), None);
        assert_eq!(kept(c, ip, libc::IP_TTL), Some(7));
        forget(a);
        forget(c);
        assert_eq!(kept(a, tcp, libc::TCP_KEEPIDLE), None);
        assert_eq!(kept(c, tcp, libc::TCP_KEEPIDLE), None);
        assert_eq!(kept(b, tcp, libc::TCP_KEEPIDLE), Some(-5));
        forget(b);
        // Bounded: past KEPT_SLOTS values, a new one is not kept; none is lost.
        let first = 910_000;
        for fd in first..first + KEPT_SLOTS as c_int + 8 {
            keep(fd, tcp, libc::TCP_NODELAY, Some(1));
        }
        let held = (first..first + KEPT_SLOTS as c_int + 8)
            .filter(|&fd| kept(fd, tcp, libc::TCP_NODELAY) == Some(1))
            .count();
        assert_eq!(held, KEPT_SLOTS);
        for fd in first..first + KEPT_SLOTS as c_int + 8 {
            forget(fd);
        }
        assert_eq!(IN_USE.load(Ordering::Acquire), 0);
        // A descriptor the table does not cover keeps nothing.
        keep(-1, tcp, libc::TCP_NODELAY, Some(1));
        assert_eq!(kept(-1, tcp, libc::TCP_NODELAY), None);
    }

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
