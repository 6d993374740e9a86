//! Socket options at the hand-over of an outsourced socket: the options of the shared rule
//! (`shared_proto::translate::CARRIED_OPTIONS`) that the program set before connect (its
//! `setsockopt` marks one bit each in [`crate::table::Entry`]) are carried to the host's socket;
//! an option never touched costs the connect no call.

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
