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
    /// No user since then, the remote pin kept for [`PinTable::new`]'s linger.
    idle_since: Option<Instant>,
    /// A Pin was sent and its answer has not come: the entry stays (even with no user) until it
    /// does, so that a new first user does not send a second Pin, which dns-cache would count
    /// as a second pin that one Unpin never gives back.
    pending: bool,
}

/// Local pin counts per dummy.
///
/// A remote pin whose last local user has gone is kept for the table's linger before its
/// Unpin is due ([`PinTable::expire`]): a program that connects to one name again and again,
/// one connection at a time, would otherwise cost dns-cache a Pin and an Unpin (and its
/// database a pin count written twice) per connection. Keeping a mapping pinned a few seconds
/// longer only delays its recycling.
#[derive(Debug, Default)]
pub struct PinTable {
    pins: HashMap<Ipv4Addr, PinState>,
    linger: Duration,
}

impl PinTable {
    /// A table whose remote pins outlive their last user by `linger`.
    #[must_use]
    pub fn new(linger: Duration) -> Self {
        Self {
            pins: HashMap::new(),
            linger,
        }
    }

    /// One more connection uses `dummy`.
    pub fn pin(&mut self, dummy: Ipv4Addr) -> PinAction {
        let st = self.pins.entry(dummy).or_default();
        st.users += 1;
        st.idle_since = None;
        if st.users == 1 && !st.remote && !st.pending {
            st.pending = true;
            PinAction::Pin
        } else {
            PinAction::None
        }
    }

    /// dns-cache confirmed (or, `false`, failed) the pin sent for `dummy`, at `now`. If every
    /// user left while the Pin was in flight, the pin lingers from now (Unpin straight away
    /// without a linger).
    pub fn remote_pinned(&mut self, dummy: Ipv4Addr, ok: bool, now: Instant) -> PinAction {
        let linger = self.linger;
        match self.pins.get_mut(&dummy) {
            Some(st) => {
                st.pending = false;
                if st.users > 0 {
                    st.remote = ok;
                    return PinAction::None;
                }
                if ok && !linger.is_zero() {
                    st.remote = true;
                    st.idle_since = Some(now);
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

    /// A connection using `dummy` closed, at `now`.
    pub fn unpin(&mut self, dummy: Ipv4Addr, now: Instant) -> PinAction {
        let linger = self.linger;
        let Some(st) = self.pins.get_mut(&dummy) else {
            return PinAction::None;
        };
        st.users = st.users.saturating_sub(1);
        if st.users > 0 || st.pending {
            // Still used, or the Pin's answer decides (see `remote_pinned`).
            return PinAction::None;
        }
        if st.remote && !linger.is_zero() {
            st.idle_since = Some(now);
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

    /// The dummies whose remote pins have lingered unused for the linger at `now`: each is
    /// forgotten here and is owed one Unpin.
    pub fn expire(&mut self, now: Instant) -> Vec<Ipv4Addr> {
        let linger = self.linger;
        let due: Vec<Ipv4Addr> = self
            .pins
            .iter()
            .filter(|(_, st)| {
                st.users == 0
                    && !st.pending
                    && st
                        .idle_since
                        .is_some_and(|t| now.saturating_duration_since(t) >= linger)
            })
            .map(|(d, _)| *d)
            .collect();
        for d in &due {
            self.pins.remove(d);
        }
        due
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
    /// Tables without a linger take no notice of the time.
    fn now() -> Instant {
        Instant::now()
    }

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
        assert_eq!(t.remote_pinned(D1, true, now()), PinAction::None);
        assert_eq!(t.unpin(D1, now()), PinAction::None);
        assert_eq!(t.users(D1), 1);
        assert_eq!(t.unpin(D1, now()), PinAction::Unpin);
        assert_eq!(t.unpin(D1, now()), PinAction::None);
    }

    #[test]
    fn a_pin_lingers_after_its_last_user_then_is_owed_one_unpin() {
        let linger = Duration::from_secs(10);
        let t0 = Instant::now();
        let mut t = PinTable::new(linger);
        assert_eq!(t.pin(D1), PinAction::Pin);
        assert_eq!(t.remote_pinned(D1, true, t0), PinAction::None);
        // The last user leaves: no Unpin yet.
        assert_eq!(t.unpin(D1, t0), PinAction::None);
        assert!(t.expire(t0 + linger / 2).is_empty());
        // A new user within the linger takes the kept pin: no second Pin.
        assert_eq!(t.pin(D1), PinAction::None);
        assert_eq!(t.unpin(D1, t0 + linger / 2), PinAction::None);
        // Not due until a whole linger after that last user.
        assert!(t.expire(t0 + linger).is_empty());
        assert_eq!(t.expire(t0 + linger / 2 + linger), vec![D1]);
        assert!(t.expire(t0 + 3 * linger).is_empty(), "owed once");
        // Forgotten: the next user pins again.
        assert_eq!(t.pin(D1), PinAction::Pin);
        // A Pin answered after its only user left lingers too; a failed one is simply gone.
        assert_eq!(t.unpin(D1, t0), PinAction::None);
        assert_eq!(t.remote_pinned(D1, true, t0), PinAction::None);
        assert_eq!(t.expire(t0 + linger), vec![D1]);
        assert_eq!(t.pin(D2), PinAction::Pin);
        assert_eq!(t.unpin(D2, t0), PinAction::None);
        assert_eq!(t.remote_pinned(D2, false, t0), PinAction::None);
        assert!(t.expire(t0 + linger).is_empty());
        assert_eq!(t.users(D2), 0);
    }

    #[test]
    fn failed_or_late_pins() {
        let mut t = PinTable::default();
        assert_eq!(t.pin(D1), PinAction::Pin);
        assert_eq!(t.remote_pinned(D1, false, now()), PinAction::None);
        // The remote pin never held, so nothing to undo.
        assert_eq!(t.unpin(D1, now()), PinAction::None);

        assert_eq!(t.pin(D2), PinAction::Pin);
        assert_eq!(t.unpin(D2, now()), PinAction::None);
        // The Pin answer arrives after the last user left: undo it.
        assert_eq!(t.remote_pinned(D2, true, now()), PinAction::Unpin);
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
            t.unpin(D1, now()),
            t.pin(D1),
            t.unpin(D1, now()),
            t.pin(D1),
            t.remote_pinned(D1, true, now()),
        ];
        assert_eq!(t.users(D1), 1);
        let b = [t.unpin(D1, now())];
        assert_eq!(
            net(&a) + net(&b),
            0,
            "Pins granted and Unpins sent must balance"
        );
        assert_eq!(t.users(D1), 0);

        // The same with the last user gone before the answer: the answer undoes it.
        let c = [
            t.pin(D2),
            t.unpin(D2, now()),
            t.pin(D2),
            t.unpin(D2, now()),
            t.remote_pinned(D2, true, now()),
        ];
        assert_eq!(net(&c), 0);
        // A failed Pin with a user left: the next first user tries again.
        t.pin(D1);
        t.remote_pinned(D1, false, now());
        t.unpin(D1, now());
        assert_eq!(t.pin(D1), PinAction::Pin);
    }
}
