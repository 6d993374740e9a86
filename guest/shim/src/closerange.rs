//! `close_range(2)` and `closefrom(3)`: closing many descriptors at once must forget them in
//! the fd table as `close` does, or a later socket that reuses one of their numbers would be
//! taken for the outsourced socket that held it before (a stale association, a wrong
//! getsockname, a listener's companion stream left open). The table forgets first, then libc's
//! own function closes. glibc's closefrom calls close_range inside libc, where no preload sees
//! it, so both are interposed. `CLOSE_RANGE_CLOEXEC` closes nothing now (only at exec, where the
//! table goes too), so the table keeps its entries.

use libc::{c_int, c_uint};

use crate::real;
use crate::table;

/// The flags close_range(2) knows; with any other the kernel refuses and nothing is closed.
const KNOWN_FLAGS: c_uint = libc::CLOSE_RANGE_UNSHARE | libc::CLOSE_RANGE_CLOEXEC;

/// Whether a close_range call with these arguments closes the fds from `first` to `last` now.
#[must_use]
pub fn closes_now(first: c_uint, last: c_uint, flags: c_uint) -> bool {
    first <= last && flags & !KNOWN_FLAGS == 0 && flags & libc::CLOSE_RANGE_CLOEXEC == 0
}

/// Forgets every tracked fd from `first` to `last`; closes a VM listener's companion stream
/// that lies outside the range (one inside it closes with the range).
fn forget(first: c_uint, last: c_uint) {
    for fd in table::tracked_range(first, last) {
        if let Some(control) = table::take_companion(fd) {
            let inside = c_uint::try_from(control).is_ok_and(|c| (first..=last).contains(&c));
            if !inside {
                // SAFETY: the companion fd is ours.
                unsafe { real::close(control) };
            }
        }
        table::clear(fd);
    }
}

/// `close_range(2)`.
///
/// # Safety
/// Called by C with close_range(2)'s contract.
#[no_mangle]
pub unsafe extern "C" fn close_range(first: c_uint, last: c_uint, flags: c_int) -> c_int {
    if closes_now(first, last, c_uint::try_from(flags).unwrap_or(c_uint::MAX)) {
        forget(first, last);
    }
    // SAFETY: forwarded arguments.
    unsafe { real::close_range(first, last, flags) }
}

/// `closefrom(3)`.
///
/// # Safety
/// Called by C with closefrom(3)'s contract.
#[no_mangle]
pub unsafe extern "C" fn closefrom(low: c_int) {
    forget(c_uint::try_from(low).unwrap_or(0), c_uint::MAX);
    // SAFETY: forwarded argument.
    unsafe { real::closefrom(low) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_valid_closing_call_forgets() {
        assert!(closes_now(3, c_uint::MAX, 0));
        assert!(closes_now(5, 5, libc::CLOSE_RANGE_UNSHARE));
        // Marked close-on-exec only: still open.
        assert!(!closes_now(3, 9, libc::CLOSE_RANGE_CLOEXEC));
        assert!(!closes_now(
            3,
            9,
            libc::CLOSE_RANGE_CLOEXEC | libc::CLOSE_RANGE_UNSHARE
        ));
        // EINVAL from the kernel: nothing closed.
        assert!(!closes_now(9, 3, 0));
        assert!(!closes_now(3, 9, 1 << 7));
    }
}
