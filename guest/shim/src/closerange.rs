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
/// that lies outside the range (one inside it closes with the range). Returns the hidden host
/// ends of the listeners closed (see `listen`), to close once the range is closed if nothing
/// else holds the listener, and the hidden host ends inside the range whose listener lies
/// outside it: those must survive the range (the program keeps that listener).
fn forget(first: c_uint, last: c_uint) -> (Vec<c_int>, Vec<c_uint>) {
    let inside = |fd: c_int| c_uint::try_from(fd).is_ok_and(|c| (first..=last).contains(&c));
    let mut orphaned = Vec::new();
    let mut keep = Vec::new();
    for fd in table::tracked_range(0, c_uint::MAX) {
        let Some(host_end) = table::kept(fd) else {
            continue;
        };
        if inside(fd) {
            let _ = table::take_kept(fd);
            if !inside(host_end) {
                orphaned.push(host_end);
            }
        } else if let Ok(h) = c_uint::try_from(host_end) {
            if inside(host_end) {
                keep.push(h);
            }
        }
    }
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
    keep.sort_unstable();
    (orphaned, keep)
}

/// Closes `first..=last` but the numbers in `keep` (sorted), in pieces.
fn close_around(first: c_uint, last: c_uint, keep: &[c_uint], flags: c_int) -> c_int {
    let mut from = first;
    let mut rc = 0;
    for &k in keep {
        if k > from {
            // SAFETY: the program's own range, less the numbers that stay ours.
            rc = unsafe { real::close_range(from, k - 1, flags) };
        }
        from = k.saturating_add(1);
        if k == c_uint::MAX {
            return rc;
        }
    }
    if from <= last {
        // SAFETY: as above.
        rc = unsafe { real::close_range(from, last, flags) };
    }
    rc
}

/// Closes the hidden host ends of listeners closed with a range whose every copy is now gone
/// (POLLHUP); one still held elsewhere (a child's copy) stays open, unnamed.
fn close_orphans(orphaned: &[c_int]) {
    for &h in orphaned {
        crate::listen::close_hidden_if_done(h);
    }
}

/// `close_range(2)`.
///
/// # Safety
/// Called by C with close_range(2)'s contract.
#[no_mangle]
pub unsafe extern "C" fn close_range(first: c_uint, last: c_uint, flags: c_int) -> c_int {
    if closes_now(first, last, c_uint::try_from(flags).unwrap_or(c_uint::MAX)) {
        let (orphaned, keep) = forget(first, last);
        if !keep.is_empty() {
            let rc = close_around(first, last, &keep, flags);
            close_orphans(&orphaned);
            return rc;
        }
        // SAFETY: forwarded arguments.
        let rc = unsafe { real::close_range(first, last, flags) };
        close_orphans(&orphaned);
        return rc;
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
    let first = c_uint::try_from(low).unwrap_or(0);
    let (orphaned, keep) = forget(first, c_uint::MAX);
    if keep.is_empty() {
        // SAFETY: forwarded argument.
        unsafe { real::closefrom(low) };
    } else {
        close_around(first, c_uint::MAX, &keep, 0);
    }
    close_orphans(&orphaned);
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
