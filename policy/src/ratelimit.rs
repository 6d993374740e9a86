//! A per-call-site budget for log lines that a guest, a remote peer or an upstream zone can
//! trigger at will, such as a refused destination: a few lines per second, the rest dropped (the
//! counters still count every one). Used by dns-cache and host-server (its `ratelimit` module).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Lines per second and call site.
pub const PER_SECOND: u32 = 10;

/// One call site's budget (a `static`).
#[derive(Debug)]
pub struct LogLimit {
    second: AtomicU64,
    count: AtomicU32,
}

impl LogLimit {
    #[must_use]
    pub const fn new() -> Self {
        Self {
            second: AtomicU64::new(0),
            count: AtomicU32::new(0),
        }
    }

    /// Whether a line may be logged now.
    pub fn allow(&self) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.allow_at(now)
    }

    fn allow_at(&self, second: u64) -> bool {
        // A race at the second's edge may let a line or two more through; that is harmless.
        if self.second.swap(second, Ordering::Relaxed) != second {
            self.count.store(0, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed) < PER_SECOND
    }
}

impl Default for LogLimit {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_lines_per_second() {
        let l = LogLimit::new();
        let allowed = (0..100).filter(|_| l.allow_at(5)).count();
        assert_eq!(allowed, PER_SECOND as usize);
        assert!(l.allow_at(6));
    }
}
