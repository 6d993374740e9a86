//! Streams that have not sent their request yet, counted per peer uid (SO_PEERCRED), so that one
//! user cannot hold the server's descriptors with streams that never say anything: a stream
//! still silent after `session::AWAITING_GRACE` counts until its request is read (or it closes,
//! or `request_timeout` ends it); beyond `limits.max_awaiting_request` for one uid such a
//! stream is refused at once.
//!
//! The cost, paid only by streams slow to send their request, is a read lock of the uid table
//! (one atomic, uncontended), one `fetch_add` and, when the guard drops, one `fetch_sub`: no
//! allocation once a uid has been seen. The table grows by one small entry per uid ever seen and forgets idle uids when it
//! grows past [`FORGET_ABOVE`] entries.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

/// Past this many uids, entries with no stream awaiting are dropped when a new uid arrives.
const FORGET_ABOVE: usize = 4096;

/// The per-uid counts of streams awaiting their request.
#[derive(Debug, Clone)]
pub struct AwaitingRequests {
    max: u32,
    by_uid: Arc<RwLock<HashMap<u32, Arc<AtomicU32>>>>,
}

/// One stream awaiting its request; dropping it (the request was read, or the stream ended)
/// gives the slot back.
#[derive(Debug)]
pub struct Awaiting {
    count: Arc<AtomicU32>,
}

impl AwaitingRequests {
    /// A table allowing `max` streams awaiting their request per uid.
    #[must_use]
    pub fn new(max: u32) -> Self {
        Self {
            max,
            by_uid: Arc::default(),
        }
    }

    /// Counts a new stream of `uid`; `None` when the uid already has `max` awaiting.
    #[must_use]
    pub fn enter(&self, uid: u32) -> Option<Awaiting> {
        let existing = self
            .by_uid
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&uid)
            .map(Arc::clone);
        let count = match existing {
            Some(c) => c,
            None => {
                let mut t = self.by_uid.write().unwrap_or_else(PoisonError::into_inner);
                if t.len() >= FORGET_ABOVE {
                    t.retain(|_, c| c.load(Ordering::Relaxed) > 0);
                }
                Arc::clone(t.entry(uid).or_default())
            }
        };
        // Increment first, then check: concurrent entries can never both slip past the cap.
        if count.fetch_add(1, Ordering::AcqRel) >= self.max {
            count.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Awaiting { count })
    }

    /// How many streams of `uid` await their request now.
    #[must_use]
    pub fn count(&self, uid: u32) -> u32 {
        self.by_uid
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&uid)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

impl Drop for Awaiting {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_each_uid_and_frees_on_drop() {
        let t = AwaitingRequests::new(2);
        let a1 = t.enter(1).unwrap();
        let _a2 = t.enter(1).unwrap();
        assert!(t.enter(1).is_none());
        assert_eq!(t.count(1), 2);
        // Another uid has its own budget.
        let _b = t.enter(2).unwrap();
        drop(a1);
        assert_eq!(t.count(1), 1);
        assert!(t.enter(1).is_some());
    }

    #[test]
    fn idle_uids_are_forgotten_when_the_table_is_large() {
        let t = AwaitingRequests::new(1);
        for uid in 0..u32::try_from(FORGET_ABOVE).unwrap() {
            drop(t.enter(uid).unwrap());
        }
        let held = t.enter(1_000_000).unwrap();
        assert!(t.by_uid.read().unwrap().len() <= 2);
        assert_eq!(t.count(1_000_000), 1);
        drop(held);
    }
}
