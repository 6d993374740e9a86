//! A value behind a try-lock, for the process-wide tables kept without locks that could block
//! (kept streams, lent sockets, routes): a thread that finds a slot taken (another thread is
//! using it, or a child was forked while one was) passes it by instead of waiting, so no caller
//! ever blocks on one, signal handlers and forked children included.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, Ordering};

pub(crate) struct TrySlot<T> {
    busy: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: `value` is only read or written by the thread that set `busy`.
unsafe impl<T: Send> Sync for TrySlot<T> {}

impl<T> TrySlot<T> {
    pub(crate) const fn new(value: T) -> Self {
        Self {
            busy: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    /// Runs `f` on the value if no other thread holds the slot; `None` if one does.
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> Option<R> {
        if self.busy.swap(true, Ordering::Acquire) {
            return None;
        }
        // SAFETY: `busy` is ours until the store below.
        let r = f(unsafe { &mut *self.value.get() });
        self.busy.store(false, Ordering::Release);
        Some(r)
    }
}
