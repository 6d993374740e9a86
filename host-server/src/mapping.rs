//! The plain state behind the mapping actor: a bounded cache of dummy → IPv6 answers and the
//! local pin counts. Time is passed in, so the rules are tested without clocks or actors.
//!
//! Pins are counted here and only the first and last local users talk to dns-cache: 1,000
//! connections to one name cost one Pin and one Unpin, not 2,000 look-ups.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

/// The cache shared by the mapping actor (its only writer) and every session, which reads it
/// without a message to the actor: a connect to a known dummy costs a read lock, not two
/// thread hand-offs.
#[derive(Debug, Clone)]
pub struct SharedCache(Arc<RwLock<MappingCache>>);

impl SharedCache {
    #[must_use]
    pub fn new(cache: MappingCache) -> Self {
        Self(Arc::new(RwLock::new(cache)))
    }

    /// Runs `f` on the cache under the read lock (a panicked writer leaves valid data).
    pub fn read<T>(&self, f: impl FnOnce(&MappingCache) -> T) -> T {
        f(&self.0.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Runs `f` on the cache under the write lock.
    pub fn write<T>(&self, f: impl FnOnce(&mut MappingCache) -> T) -> T {
        f(&mut self.0.write().unwrap_or_else(PoisonError::into_inner))
    }
}

/// Cached answers, each valid for `ttl` after it was fetched.
#[derive(Debug)]
pub struct MappingCache {
    ttl: Duration,
    capacity: usize,
    forward: HashMap<Ipv4Addr, (Ipv6Addr, Instant)>,
    peers: HashMap<Ipv6Addr, (Ipv4Addr, Instant)>,
}

impl MappingCache {
    #[must_use]
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            ttl,
            capacity: capacity.max(1),
            forward: HashMap::new(),
            peers: HashMap::new(),
        }
    }

    /// The IPv6 address behind `dummy`, if cached and fresh.
    #[must_use]
    pub fn get(&self, dummy: Ipv4Addr, now: Instant) -> Option<Ipv6Addr> {
        self.forward
            .get(&dummy)
            .filter(|(_, at)| now.saturating_duration_since(*at) < self.ttl)
            .map(|(v6, _)| *v6)
    }

    /// The source-pool dummy for inbound peer `v6`, if cached and fresh.
    #[must_use]
    pub fn peer(&self, v6: Ipv6Addr, now: Instant) -> Option<Ipv4Addr> {
        self.peers
            .get(&v6)
            .filter(|(_, at)| now.saturating_duration_since(*at) < self.ttl)
            .map(|(d, _)| *d)
    }

    /// Remembers `dummy` ↔ `v6` (a resolved destination).
    pub fn insert(&mut self, dummy: Ipv4Addr, v6: Ipv6Addr, now: Instant) {
        Self::make_room(&mut self.forward, self.capacity, self.ttl, now);
        self.forward.insert(dummy, (v6, now));
    }

    /// Remembers inbound peer `v6` → `dummy`; the peer's dummy also resolves forwards.
    pub fn insert_peer(&mut self, v6: Ipv6Addr, dummy: Ipv4Addr, now: Instant) {
        Self::make_room(&mut self.peers, self.capacity, self.ttl, now);
        self.peers.insert(v6, (dummy, now));
        self.insert(dummy, v6, now);
    }

    /// Forgets `dummy` (dns-cache said it no longer exists).
    pub fn remove(&mut self, dummy: Ipv4Addr) {
        self.forward.remove(&dummy);
    }

    /// Number of forward entries (for metrics).
    #[must_use]
    pub fn len(&self) -> usize {
        self.forward.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.forward.is_empty()
    }

    /// Keeps a map under `capacity`: first drop stale entries, then (all fresh) the oldest.
    fn make_room<K: Copy + Eq + std::hash::Hash, V>(
        map: &mut HashMap<K, (V, Instant)>,
        capacity: usize,
        ttl: Duration,
        now: Instant,
    ) {
        if map.len() < capacity {
            return;
        }
        map.retain(|_, (_, at)| now.saturating_duration_since(*at) < ttl);
        while map.len() >= capacity {
            let Some(oldest) = map.iter().min_by_key(|(_, (_, at))| *at).map(|(k, _)| *k) else {
                break;
            };
            map.remove(&oldest);
        }
    }
}

/// What the caller must tell dns-cache after a local pin change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinAction {
    /// First local user: send Pin.
    Pin,
    /// Last local user gone and the remote pin was taken: send Unpin.
    Unpin,
    /// Nothing to send.
    None,
}

#[derive(Debug, Default, Clone, Copy)]
struct PinState {
    users: u32,
    remote: bool,
    /// A Pin was sent and its answer has not come: the entry stays (even with no user) until it
    /// does, so that a new first user does not send a second Pin, which dns-cache would count
    /// as a second pin that one Unpin never gives back.
    pending: bool,
}

/// Local pin counts per dummy.
#[derive(Debug, Default)]
pub struct PinTable {
    pins: HashMap<Ipv4Addr, PinState>,
}

impl PinTable {
    /// One more connection uses `dummy`.
    pub fn pin(&mut self, dummy: Ipv4Addr) -> PinAction {
        let st = self.pins.entry(dummy).or_default();
        st.users += 1;
        if st.users == 1 && !st.remote && !st.pending {
            st.pending = true;
            PinAction::Pin
        } else {
            PinAction::None
        }
    }

    /// dns-cache confirmed (or, `false`, failed) the pin sent for `dummy`. If every user left
    /// while the Pin was in flight, the answer is Unpin straight away.
    pub fn remote_pinned(&mut self, dummy: Ipv4Addr, ok: bool) -> PinAction {
        match self.pins.get_mut(&dummy) {
            Some(st) => {
                st.pending = false;
                if st.users > 0 {
                    st.remote = ok;
                    return PinAction::None;
                }
                self.pins.remove(&dummy);
                if ok {
                    PinAction::Unpin
                } else {
                    PinAction::None
                }
            }
            None if ok => PinAction::Unpin,
            None => PinAction::None,
        }
    }

    /// A connection using `dummy` closed.
    pub fn unpin(&mut self, dummy: Ipv4Addr) -> PinAction {
        let Some(st) = self.pins.get_mut(&dummy) else {
            return PinAction::None;
        };
        st.users = st.users.saturating_sub(1);
        if st.users > 0 || st.pending {
            // Still used, or the Pin's answer decides (see `remote_pinned`).
            return PinAction::None;
        }
        let remote = st.remote;
        self.pins.remove(&dummy);
        if remote {
            PinAction::Unpin
        } else {
            PinAction::None
        }
    }

    /// Local users of `dummy`.
    #[must_use]
    pub fn users(&self, dummy: Ipv4Addr) -> u32 {
        self.pins.get(&dummy).map_or(0, |s| s.users)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: Ipv4Addr = Ipv4Addr::new(10, 170, 160, 2);
    const D2: Ipv4Addr = Ipv4Addr::new(10, 170, 160, 3);
    const V1: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x64, 0, 0, 0, 0, 0, 0xe);

    #[test]
    fn cache_expires_and_stays_bounded() {
        let t0 = Instant::now();
        let mut c = MappingCache::new(Duration::from_secs(10), 2);
        c.insert(D1, V1, t0);
        assert_eq!(c.get(D1, t0 + Duration::from_secs(9)), Some(V1));
        assert_eq!(c.get(D1, t0 + Duration::from_secs(10)), None);
        c.insert(D2, V1, t0 + Duration::from_secs(1));
        c.insert(
            Ipv4Addr::new(10, 170, 160, 4),
            V1,
            t0 + Duration::from_secs(2),
        );
        assert_eq!(c.len(), 2);
        // The oldest went.
        assert_eq!(c.get(D1, t0 + Duration::from_secs(2)), None);
        c.remove(D2);
        assert_eq!(c.get(D2, t0 + Duration::from_secs(2)), None);
    }

    #[test]
    fn peers_resolve_both_ways() {
        let t0 = Instant::now();
        let mut c = MappingCache::new(Duration::from_secs(10), 8);
        let p = Ipv4Addr::new(172, 21, 112, 9);
        c.insert_peer(V1, p, t0);
        assert_eq!(c.peer(V1, t0), Some(p));
        assert_eq!(c.get(p, t0), Some(V1));
    }

    #[test]
    fn pins_talk_to_dns_cache_only_at_the_edges() {
        let mut t = PinTable::default();
        assert_eq!(t.pin(D1), PinAction::Pin);
        assert_eq!(t.pin(D1), PinAction::None);
        assert_eq!(t.remote_pinned(D1, true), PinAction::None);
        assert_eq!(t.unpin(D1), PinAction::None);
        assert_eq!(t.users(D1), 1);
        assert_eq!(t.unpin(D1), PinAction::Unpin);
        assert_eq!(t.unpin(D1), PinAction::None);
    }

    #[test]
    fn failed_or_late_pins() {
        let mut t = PinTable::default();
        assert_eq!(t.pin(D1), PinAction::Pin);
        assert_eq!(t.remote_pinned(D1, false), PinAction::None);
        // The remote pin never held, so nothing to undo.
        assert_eq!(t.unpin(D1), PinAction::None);

        assert_eq!(t.pin(D2), PinAction::Pin);
        assert_eq!(t.unpin(D2), PinAction::None);
        // The Pin answer arrives after the last user left: undo it.
        assert_eq!(t.remote_pinned(D2, true), PinAction::Unpin);
        assert_eq!(t.users(D2), 0);
    }

    /// Connections to one dummy that open and close faster than dns-cache answers a Pin (the
    /// chaos test's churn found it: pins left on the echo server's dummy with nothing open): a
    /// new first user while the Pin is in flight sends no second Pin, so every Pin that
    /// dns-cache granted is given back by exactly one Unpin.
    #[test]
    fn a_pin_in_flight_is_never_doubled_by_churn() {
        /// Pins dns-cache granted minus Unpins sent, after each action.
        fn net(actions: &[PinAction]) -> i32 {
            actions
                .iter()
                .map(|a| match a {
                    PinAction::Pin => 1,
                    PinAction::Unpin => -1,
                    PinAction::None => 0,
                })
                .sum()
        }
        let mut t = PinTable::default();
        let a = [
            t.pin(D1),
            t.unpin(D1),
            t.pin(D1),
            t.unpin(D1),
            t.pin(D1),
            t.remote_pinned(D1, true),
        ];
        assert_eq!(t.users(D1), 1);
        let b = [t.unpin(D1)];
        assert_eq!(
            net(&a) + net(&b),
            0,
            "Pins granted and Unpins sent must balance"
        );
        assert_eq!(t.users(D1), 0);

        // The same with the last user gone before the answer: the answer undoes it.
        let c = [
            t.pin(D2),
            t.unpin(D2),
            t.pin(D2),
            t.unpin(D2),
            t.remote_pinned(D2, true),
        ];
        assert_eq!(net(&c), 0);
        // A failed Pin with a user left: the next first user tries again.
        t.pin(D1);
        t.remote_pinned(D1, false);
        t.unpin(D1);
        assert_eq!(t.pin(D1), PinAction::Pin);
    }
}
