//! The mapping policy: which dummy IPv4 address stands for which IPv6 address, for how long, and
//! which mapping may be recycled when the pool runs out (DESIGN.md §5).
//!
//! Pure and synchronous: time comes in as an argument, persistence happens elsewhere. The table
//! remembers which entries changed (`dirty`: created, removed, renamed) and which were only
//! used (`touched`: last use, expiry, pins; written with a one-column-set UPDATE), and numbers
//! every change that hands out an address (`seq`), so the writer can make them durable in
//! batches and the DNS side can wait until the address it is about to answer with has been
//! committed.
//!
//! Rules kept here:
//! - one IPv6 address has at most one dummy per table while its mapping lives, and one dummy
//!   stands for at most one IPv6 address;
//! - a mapping is protected until `max(expires, last_used + grace)` and while pinned;
//! - only when no address was never used or freed does allocation recycle, taking the least
//!   recently used unprotected mapping; if there is none, allocation fails (SERVFAIL upstream of
//!   here), it never takes a live mapping;
//! - with a per-/64 cap ([`MappingTable::with_prefix_cap`], the source pool's
//!   `source_dummies_per_64`), one remote /64 never holds more than the cap: a new address of a
//!   /64 at its cap takes over the least recently used dummy *of that same /64* (grace or not,
//!   since the /64 is one network spending its own share), never a pinned one and never another
//!   /64's; when all of them are pinned, allocation fails ([`MappingError::PrefixFull`]).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use crate::clock::UnixMillis;
use crate::pool::Ipv4Prefix;

/// How many names one mapping remembers for PTR answers. A guest can point any number of CNAMEs
/// at one address; the list must stay bounded.
pub const MAX_NAMES: usize = 8;

/// Why a mapping operation failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MappingError {
    /// Every address of the pool is live (pinned, or within TTL or grace).
    #[error("the {0} pool is exhausted: every address is pinned or within its grace period")]
    Exhausted(Direction),
    /// The address is not a mapped address of this pool.
    #[error("no mapping for {0}")]
    NotMapped(Ipv4Addr),
    /// Unpin without a matching pin.
    #[error("{0} is not pinned")]
    NotPinned(Ipv4Addr),
    /// The remote /64 holds its cap of dummies and every one of them is pinned.
    #[error("the {0}::/64 holds its cap of source dummies and all of them are pinned")]
    PrefixFull(Ipv6Addr),
    /// Not a static mapping (for a removal).
    #[error("{0} is not a static mapping")]
    NotStatic(Ipv4Addr),
    /// A static mapping in use by open connections, removed only when forced.
    #[error("{v4} is in use by {pins} open connection(s); force the removal to take it anyway")]
    StaticInUse { v4: Ipv4Addr, pins: u32 },
    /// A static mapping cannot be set: the address is not one this pool hands out.
    #[error("static mapping {v4} = {v6}: {v4} is not an address of the destination pool (or it is the guest DNS address)")]
    StaticOutsidePool { v4: Ipv4Addr, v6: Ipv6Addr },
    /// A static mapping cannot be set: a live mapping holds the dummy or the IPv6 address.
    #[error("static mapping {v4} = {v6} conflicts with the live mapping {held_v4} = {held_v6}{}; nothing was remapped", if *held_static { " (static)" } else { "" })]
    StaticConflict {
        v4: Ipv4Addr,
        v6: Ipv6Addr,
        held_v4: Ipv4Addr,
        held_v6: Ipv6Addr,
        held_static: bool,
    },
}

/// Which pool a mapping belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// A dummy destination synthesised from an AAAA record.
    Synthesised,
    /// A dummy source shown to guest servers for an inbound IPv6 peer.
    InboundPeer,
}

impl Direction {
    /// The text stored in the database and shown in `mappings_view`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Synthesised => "synthesised",
            Direction::InboundPeer => "inbound-peer",
        }
    }

    /// Parses [`Direction::as_str`]'s text.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "synthesised" => Some(Direction::Synthesised),
            "inbound-peer" => Some(Direction::InboundPeer),
            _ => None,
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Synthesised => "destination",
            Direction::InboundPeer => "source",
        })
    }
}

/// One mapping, as stored and as reported over dns.sock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// The dummy IPv4 address.
    pub v4: Ipv4Addr,
    /// The real IPv6 address it stands for.
    pub v6: Ipv6Addr,
    /// Which pool.
    pub direction: Direction,
    /// Names the address was synthesised for (empty for inbound peers).
    pub names: Vec<String>,
    /// When the mapping was made.
    pub created: UnixMillis,
    /// Last answer or use.
    pub last_used: UnixMillis,
    /// When the last answer's TTL runs out.
    pub expires: UnixMillis,
    /// Pins held by live dns.sock connections (host-server pins a dummy while a connection
    /// through it is open). Leases, not a stored fact: reset to 0 at start (see [`crate::pins`]).
    pub pins: u32,
    /// A static mapping (`[static]` in the settings): an operator's fixed pair, never
    /// recycled, expired or flushed.
    pub fixed: bool,
}

/// How an address was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocation {
    /// The IPv6 address already had a mapping.
    Existing,
    /// A never-used (or flushed) address was taken.
    Fresh,
    /// The least recently used unprotected mapping was taken over; it stood for `previous`.
    Recycled {
        /// The IPv6 address the dummy stood for before.
        previous: Ipv6Addr,
    },
}

/// The result of [`MappingTable::map`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapResult {
    /// The dummy address.
    pub v4: Ipv4Addr,
    /// How it was obtained.
    pub allocation: Allocation,
    /// The change number that must be committed before `v4` may be handed out.
    pub durable_after: u64,
}

#[derive(Debug, Clone)]
struct Entry {
    mapping: Mapping,
    /// Change number of the allocation that created this entry.
    must_commit: u64,
}

/// A use of a mapping, as written to the database: only these columns changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Touch {
    /// The dummy address.
    pub v4: Ipv4Addr,
    /// Last answer or use.
    pub last_used: UnixMillis,
    /// End of the last answer's TTL.
    pub expires: UnixMillis,
    /// Live pin count.
    pub pins: u32,
}

/// Changes to write, drained by the persistence writer.
#[derive(Debug, Default)]
pub struct Dirty {
    /// Mappings to insert or update.
    pub upserts: Vec<Mapping>,
    /// Mappings that were only used (not in `upserts`).
    pub touches: Vec<Touch>,
    /// Addresses whose mappings were removed.
    pub deletes: Vec<Ipv4Addr>,
    /// Highest change number included.
    pub seq: u64,
}

/// The mappings of one pool.
#[derive(Debug)]
pub struct MappingTable {
    direction: Direction,
    prefix: Ipv4Prefix,
    reserved: Option<Ipv4Addr>,
    first: u32,
    last: u32,
    next_fresh: u32,
    free: Vec<u32>,
    grace: Duration,
    by_v6: HashMap<Ipv6Addr, u32>,
    by_v4: HashMap<u32, Entry>,
    lru: BTreeSet<(UnixMillis, u32)>,
    dirty: HashSet<u32>,
    touched: HashSet<u32>,
    seq: u64,
    /// Most mappings one remote /64 may hold (`None`: no cap).
    per_64_cap: Option<usize>,
    /// With a cap: each /64's mappings by last use, like `lru`.
    by_64: HashMap<u64, BTreeSet<(UnixMillis, u32)>>,
}

/// The /64 an address lies in (its upper 64 bits).
fn net64(v6: Ipv6Addr) -> u64 {
    // The shift leaves exactly 64 bits.
    #[allow(clippy::cast_possible_truncation)]
    let net = (u128::from(v6) >> 64) as u64;
    net
}

impl MappingTable {
    /// A table over `prefix`. The destination pool reserves its first usable address as the
    /// guest DNS address; the source pool reserves nothing.
    pub fn new(prefix: Ipv4Prefix, direction: Direction, grace: Duration) -> Self {
        let first_usable = u32::from(prefix.first_usable());
        let (reserved, first) = match direction {
            Direction::Synthesised => (Some(prefix.first_usable()), first_usable + 1),
            Direction::InboundPeer => (None, first_usable),
        };
        Self {
            direction,
            prefix,
            reserved,
            first,
            last: u32::from(prefix.last_usable()),
            next_fresh: first,
            free: Vec::new(),
            grace,
            by_v6: HashMap::new(),
            by_v4: HashMap::new(),
            lru: BTreeSet::new(),
            dirty: HashSet::new(),
            touched: HashSet::new(),
            seq: 0,
            per_64_cap: None,
            by_64: HashMap::new(),
        }
    }

    /// Caps how many mappings one remote /64 may hold at `cap` (at least 1); see the module
    /// documentation for what happens at the cap.
    #[must_use]
    pub fn with_prefix_cap(mut self, cap: usize) -> Self {
        self.per_64_cap = Some(cap.max(1));
        self.by_64.clear();
        for (n, e) in &self.by_v4 {
            self.by_64
                .entry(net64(e.mapping.v6))
                .or_default()
                .insert((e.mapping.last_used, *n));
        }
        self
    }

    /// How many mappings the /64 of `v6` holds.
    pub fn prefix_len(&self, v6: Ipv6Addr) -> usize {
        match self.per_64_cap {
            Some(_) => self.by_64.get(&net64(v6)).map_or(0, BTreeSet::len),
            None => self
                .by_v6
                .keys()
                .filter(|a| net64(**a) == net64(v6))
                .count(),
        }
    }

    fn index_64(&mut self, v6: Ipv6Addr, key: (UnixMillis, u32), insert: bool) {
        if self.per_64_cap.is_none() {
            return;
        }
        let net = net64(v6);
        if insert {
            self.by_64.entry(net).or_default().insert(key);
        } else if let Some(set) = self.by_64.get_mut(&net) {
            set.remove(&key);
            if set.is_empty() {
                self.by_64.remove(&net);
            }
        }
    }

    /// The pool's prefix.
    pub fn prefix(&self) -> Ipv4Prefix {
        self.prefix
    }

    /// The reserved address (the guest DNS address in the destination pool).
    pub fn reserved(&self) -> Option<Ipv4Addr> {
        self.reserved
    }

    /// How many addresses can be handed out.
    pub fn capacity(&self) -> usize {
        usize::try_from(self.last - self.first + 1).unwrap_or(usize::MAX)
    }

    /// How many mappings exist.
    pub fn len(&self) -> usize {
        self.by_v4.len()
    }

    /// Whether the table has no mappings.
    pub fn is_empty(&self) -> bool {
        self.by_v4.is_empty()
    }

    /// Whether `v4` is an address this table hands out.
    pub fn owns(&self, v4: Ipv4Addr) -> bool {
        let n = u32::from(v4);
        (self.first..=self.last).contains(&n)
    }

    /// Loads mappings read back from the store. Returns the ones that do not fit this pool (the
    /// pool was reconfigured, or a duplicate IPv6 address); they are queued for deletion so that
    /// the database keeps matching what is served.
    ///
    /// Pin counts are not loaded: a pin is a lease of a dns.sock connection (see
    /// [`crate::pins`]) and no connection survives a restart, so a stored count above 0 is set
    /// back to 0 (and the row rewritten).
    pub fn load(&mut self, rows: Vec<Mapping>) -> Vec<Mapping> {
        let mut rejected = Vec::new();
        for mut m in rows {
            let n = u32::from(m.v4);
            if m.direction != self.direction
                || !self.owns(m.v4)
                || self.by_v4.contains_key(&n)
                || self.by_v6.contains_key(&m.v6)
            {
                if m.direction == self.direction && !self.by_v4.contains_key(&n) {
                    self.dirty.insert(n);
                }
                rejected.push(m);
                continue;
            }
            if m.pins != 0 {
                m.pins = 0;
                self.dirty.insert(n);
            }
            self.by_v6.insert(m.v6, n);
            if !m.fixed {
                self.lru.insert((m.last_used, n));
                self.index_64(m.v6, (m.last_used, n), true);
            }
            self.by_v4.insert(
                n,
                Entry {
                    mapping: m,
                    must_commit: 0,
                },
            );
        }
        let highest = self.by_v4.keys().copied().max();
        self.next_fresh = highest.map_or(self.first, |h| h + 1);
        self.free = (self.first..self.next_fresh)
            .rev()
            .filter(|n| !self.by_v4.contains_key(n))
            .collect();
        rejected
    }

    /// The mapping for a dummy address.
    pub fn get(&self, v4: Ipv4Addr) -> Option<&Mapping> {
        self.by_v4.get(&u32::from(v4)).map(|e| &e.mapping)
    }

    /// The dummy address of an IPv6 address, if mapped.
    pub fn lookup_v6(&self, v6: Ipv6Addr) -> Option<Ipv4Addr> {
        self.by_v6.get(&v6).map(|n| Ipv4Addr::from(*n))
    }

    /// The change number that must be committed before `v4` may be handed out.
    pub fn durable_after(&self, v4: Ipv4Addr) -> u64 {
        self.by_v4.get(&u32::from(v4)).map_or(0, |e| e.must_commit)
    }

    /// Every mapping, in address order.
    pub fn list(&self) -> Vec<Mapping> {
        let mut all: Vec<Mapping> = self.by_v4.values().map(|e| e.mapping.clone()).collect();
        all.sort_by_key(|m| m.v4);
        all
    }

    /// Returns the dummy address for `v6`, allocating one if needed, and records an answer (or
    /// use) at `now` valid for `ttl`. `name` is remembered for PTR answers.
    pub fn map(
        &mut self,
        v6: Ipv6Addr,
        name: Option<&str>,
        ttl: Duration,
        now: UnixMillis,
    ) -> Result<MapResult, MappingError> {
        if let Some(&n) = self.by_v6.get(&v6) {
            self.touch_n(n, now, Some(now.plus(ttl)));
            let entry = self
                .by_v4
                .get_mut(&n)
                .expect("by_v6 and by_v4 always hold the same mappings");
            if let Some(name) = name {
                if remember_name(&mut entry.mapping.names, name) {
                    self.dirty.insert(n);
                }
            }
            return Ok(MapResult {
                v4: Ipv4Addr::from(n),
                allocation: Allocation::Existing,
                durable_after: entry.must_commit,
            });
        }
        let (n, allocation) = match self.prefix_victim(v6)? {
            Some(victim) => {
                let old = self
                    .remove_n(victim)
                    .expect("the victim came from the /64 index, which mirrors by_v4");
                (victim, Allocation::Recycled { previous: old.v6 })
            }
            None => self.take_address(now)?,
        };
        self.seq += 1;
        let mut names = Vec::new();
        if let Some(name) = name {
            remember_name(&mut names, name);
        }
        let mapping = Mapping {
            v4: Ipv4Addr::from(n),
            v6,
            direction: self.direction,
            names,
            created: now,
            last_used: now,
            expires: now.plus(ttl),
            pins: 0,
            fixed: false,
        };
        self.by_v6.insert(v6, n);
        self.lru.insert((now, n));
        self.index_64(v6, (now, n), true);
        self.by_v4.insert(
            n,
            Entry {
                mapping,
                must_commit: self.seq,
            },
        );
        self.dirty.insert(n);
        Ok(MapResult {
            v4: Ipv4Addr::from(n),
            allocation,
            durable_after: self.seq,
        })
    }

    /// With a cap, and the /64 of the new address `v6` at it: the least recently used unpinned
    /// mapping of that /64, to be taken over. `Ok(None)`: below the cap (or no cap).
    fn prefix_victim(&self, v6: Ipv6Addr) -> Result<Option<u32>, MappingError> {
        let Some(cap) = self.per_64_cap else {
            return Ok(None);
        };
        let Some(set) = self.by_64.get(&net64(v6)).filter(|s| s.len() >= cap) else {
            return Ok(None);
        };
        set.iter()
            .map(|&(_, n)| n)
            .find(|n| self.by_v4.get(n).is_some_and(|e| e.mapping.pins == 0))
            .map(Some)
            .ok_or_else(|| MappingError::PrefixFull(Ipv6Addr::from(u128::from(v6) >> 64 << 64)))
    }

    fn take_address(&mut self, now: UnixMillis) -> Result<(u32, Allocation), MappingError> {
        while let Some(n) = self.free.pop() {
            // A static mapping may have taken a freed address since.
            if !self.by_v4.contains_key(&n) {
                return Ok((n, Allocation::Fresh));
            }
        }
        while self.next_fresh <= self.last {
            let n = self.next_fresh;
            self.next_fresh += 1;
            // Static mappings sit anywhere in the pool: never handed out again.
            if !self.by_v4.contains_key(&n) {
                return Ok((n, Allocation::Fresh));
            }
        }
        let victim = self
            .lru
            .iter()
            // Ordered by last use: once one is within grace, all later ones are too.
            .take_while(|(last_used, _)| last_used.plus(self.grace) <= now)
            .map(|&(_, n)| n)
            .find(|n| {
                self.by_v4
                    .get(n)
                    .is_some_and(|e| e.mapping.pins == 0 && e.mapping.expires <= now)
            })
            .ok_or(MappingError::Exhausted(self.direction))?;
        let old = self
            .remove_n(victim)
            .expect("the victim came from the LRU index, which mirrors by_v4");
        Ok((victim, Allocation::Recycled { previous: old.v6 }))
    }

    fn remove_n(&mut self, n: u32) -> Option<Mapping> {
        let entry = self.by_v4.remove(&n)?;
        self.by_v6.remove(&entry.mapping.v6);
        self.lru.remove(&(entry.mapping.last_used, n));
        self.index_64(entry.mapping.v6, (entry.mapping.last_used, n), false);
        self.dirty.insert(n);
        Some(entry.mapping)
    }

    fn touch_n(&mut self, n: u32, now: UnixMillis, expires: Option<UnixMillis>) {
        if let Some(entry) = self.by_v4.get_mut(&n) {
            let m = &mut entry.mapping;
            if now > m.last_used && m.fixed {
                m.last_used = now;
            } else if now > m.last_used {
                self.lru.remove(&(m.last_used, n));
                if self.per_64_cap.is_some() {
                    if let Some(set) = self.by_64.get_mut(&net64(m.v6)) {
                        set.remove(&(m.last_used, n));
                        set.insert((now, n));
                    }
                }
                m.last_used = now;
                self.lru.insert((now, n));
            }
            if let Some(e) = expires {
                m.expires = m.expires.max(e);
            }
            self.touched.insert(n);
        }
    }

    /// Records a use of `v4` (host-server resolved it) at `now`, restarting its grace period.
    pub fn touch(&mut self, v4: Ipv4Addr, now: UnixMillis) -> Result<(), MappingError> {
        let n = u32::from(v4);
        if !self.by_v4.contains_key(&n) {
            return Err(MappingError::NotMapped(v4));
        }
        self.touch_n(n, now, None);
        Ok(())
    }

    /// Whether the mapping of `n` is protected now: pinned, or within its TTL or grace.
    fn live(&self, e: &Entry, now: UnixMillis) -> bool {
        e.mapping.fixed
            || e.mapping.pins > 0
            || e.mapping.expires > now
            || e.mapping.last_used.plus(self.grace) > now
    }

    /// Sets the static mapping `v4` = `v6` (names remembered for PTR). Already set: only its
    /// names are brought up to date. A dynamic mapping of the same pair becomes static; one
    /// that holds `v4` or `v6` otherwise is taken over only when it is no longer protected
    /// (unpinned, past its TTL and grace), else [`MappingError::StaticConflict`] names it and
    /// nothing changes. Returns whether anything changed.
    pub fn set_static(
        &mut self,
        v4: Ipv4Addr,
        v6: Ipv6Addr,
        names: &[String],
        now: UnixMillis,
    ) -> Result<bool, MappingError> {
        let n = u32::from(v4);
        if !self.owns(v4) || Some(v4) == self.reserved {
            return Err(MappingError::StaticOutsidePool { v4, v6 });
        }
        let conflict = |e: &Entry| MappingError::StaticConflict {
            v4,
            v6,
            held_v4: e.mapping.v4,
            held_v6: e.mapping.v6,
            held_static: e.mapping.fixed,
        };
        let mut victims = Vec::new();
        if let Some(e) = self.by_v4.get(&n) {
            if e.mapping.v6 != v6 {
                if self.live(e, now) {
                    return Err(conflict(e));
                }
                victims.push(n);
            }
        }
        if let Some(&m) = self.by_v6.get(&v6) {
            if m != n {
                let e = &self.by_v4[&m];
                if self.live(e, now) {
                    return Err(conflict(e));
                }
                victims.push(m);
            }
        }
        for m in victims {
            self.remove_n(m);
            if m != n {
                self.free.push(m);
            }
        }
        if let Some(e) = self.by_v4.get_mut(&n) {
            // The same pair, already mapped.
            let m = &mut e.mapping;
            let mut changed = false;
            if !m.fixed {
                m.fixed = true;
                self.lru.remove(&(m.last_used, n));
                if self.per_64_cap.is_some() {
                    if let Some(set) = self.by_64.get_mut(&net64(v6)) {
                        set.remove(&(m.last_used, n));
                    }
                }
                changed = true;
            }
            for name in names {
                changed |= remember_name(&mut m.names, name);
            }
            if changed {
                self.dirty.insert(n);
            }
            return Ok(changed);
        }
        self.seq += 1;
        let mut kept = Vec::new();
        for name in names {
            remember_name(&mut kept, name);
        }
        self.by_v6.insert(v6, n);
        self.by_v4.insert(
            n,
            Entry {
                mapping: Mapping {
                    v4,
                    v6,
                    direction: self.direction,
                    names: kept,
                    created: now,
                    last_used: now,
                    expires: now,
                    pins: 0,
                    fixed: true,
                },
                must_commit: self.seq,
            },
        );
        self.dirty.insert(n);
        Ok(true)
    }

    /// The number of the latest change that hands out or takes back an address.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Removes the static mapping of `v4`; one with pins (open connections) only with
    /// `force`. Returns the pins it had; the address becomes free for allocation.
    pub fn remove_static(&mut self, v4: Ipv4Addr, force: bool) -> Result<u32, MappingError> {
        let n = u32::from(v4);
        let pins = match self.by_v4.get(&n) {
            Some(e) if e.mapping.fixed => e.mapping.pins,
            _ => return Err(MappingError::NotStatic(v4)),
        };
        if pins > 0 && !force {
            return Err(MappingError::StaticInUse { v4, pins });
        }
        self.seq += 1;
        self.remove_n(n);
        self.free.push(n);
        Ok(pins)
    }

    /// Adds a pin (an open connection) to `v4`; returns the new pin count. Callers go through
    /// [`crate::pins::PinLeases`], which remembers whose pin it is.
    pub fn pin(&mut self, v4: Ipv4Addr, now: UnixMillis) -> Result<u32, MappingError> {
        self.touch(v4, now)?;
        let entry = self
            .by_v4
            .get_mut(&u32::from(v4))
            .ok_or(MappingError::NotMapped(v4))?;
        entry.mapping.pins = entry.mapping.pins.saturating_add(1);
        Ok(entry.mapping.pins)
    }

    /// Removes a pin from `v4`; the grace period restarts from `now`. Returns the new count.
    pub fn unpin(&mut self, v4: Ipv4Addr, now: UnixMillis) -> Result<u32, MappingError> {
        let n = u32::from(v4);
        let pins = self
            .by_v4
            .get(&n)
            .ok_or(MappingError::NotMapped(v4))?
            .mapping
            .pins;
        if pins == 0 {
            return Err(MappingError::NotPinned(v4));
        }
        self.touch_n(n, now, None);
        let entry = self.by_v4.get_mut(&n).ok_or(MappingError::NotMapped(v4))?;
        entry.mapping.pins -= 1;
        Ok(entry.mapping.pins)
    }

    /// Removes mappings that are not pinned. With `only_idle`, mappings still within TTL or
    /// grace are kept too. Returns how many were removed.
    pub fn flush(&mut self, now: UnixMillis, only_idle: bool) -> usize {
        let victims: Vec<u32> = self
            .by_v4
            .iter()
            .filter(|(_, e)| {
                e.mapping.pins == 0
                    && !e.mapping.fixed
                    && (!only_idle
                        || (e.mapping.expires <= now
                            && e.mapping.last_used.plus(self.grace) <= now))
            })
            .map(|(n, _)| *n)
            .collect();
        for &n in &victims {
            self.remove_n(n);
            self.free.push(n);
        }
        victims.len()
    }

    /// Takes the set of changed entries for the writer.
    pub fn drain_dirty(&mut self) -> Dirty {
        let mut out = Dirty {
            seq: self.seq,
            ..Dirty::default()
        };
        for n in self.touched.drain() {
            if self.dirty.contains(&n) {
                continue;
            }
            if let Some(e) = self.by_v4.get(&n) {
                out.touches.push(Touch {
                    v4: e.mapping.v4,
                    last_used: e.mapping.last_used,
                    expires: e.mapping.expires,
                    pins: e.mapping.pins,
                });
            }
        }
        for n in self.dirty.drain() {
            match self.by_v4.get(&n) {
                Some(e) => out.upserts.push(e.mapping.clone()),
                None => out.deletes.push(Ipv4Addr::from(n)),
            }
        }
        out
    }

    /// Puts entries back into the dirty set after a failed write.
    pub fn mark_dirty(&mut self, addrs: impl IntoIterator<Item = Ipv4Addr>) {
        self.dirty.extend(addrs.into_iter().map(u32::from));
    }

    /// Marks every entry dirty: the next batch writes the whole table again (after the
    /// database was reopened following a fault).
    pub fn mark_all_dirty(&mut self) {
        self.dirty.extend(self.by_v4.keys().copied());
    }

    /// Puts entries back into the touched set after a failed write.
    pub fn mark_touched(&mut self, addrs: impl IntoIterator<Item = Ipv4Addr>) {
        self.touched.extend(addrs.into_iter().map(u32::from));
    }

    /// Checks the internal indexes against each other; for tests.
    #[cfg(test)]
    fn check_invariants(&self) {
        assert_eq!(self.by_v4.len(), self.by_v6.len());
        let dynamic = self.by_v4.values().filter(|e| !e.mapping.fixed).count();
        assert_eq!(dynamic, self.lru.len());
        for (n, e) in &self.by_v4 {
            assert_eq!(self.by_v6.get(&e.mapping.v6), Some(n));
            assert_eq!(
                self.lru.contains(&(e.mapping.last_used, *n)),
                !e.mapping.fixed
            );
            assert!(self.owns(e.mapping.v4));
            assert_ne!(Some(e.mapping.v4), self.reserved);
        }
        for n in &self.free {
            assert!(!self.by_v4.contains_key(n));
        }
        if let Some(cap) = self.per_64_cap {
            let indexed: usize = self.by_64.values().map(BTreeSet::len).sum();
            assert_eq!(indexed, self.by_v4.len());
            for (net, set) in &self.by_64 {
                assert!(set.len() <= cap, "a /64 holds more than its cap");
                for (last_used, n) in set {
                    let m = &self.by_v4[n].mapping;
                    assert_eq!(net64(m.v6), *net);
                    assert_eq!(m.last_used, *last_used);
                }
            }
        }
    }
}

/// Adds `name` unless it is known or the list is full; returns whether it was added.
fn remember_name(names: &mut Vec<String>, name: &str) -> bool {
    if names.len() < MAX_NAMES && !names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
        names.push(name.to_owned());
        return true;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GRACE: Duration = Duration::from_secs(100);

    fn v6(i: u16) -> Ipv6Addr {
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, i)
    }

    fn small_table() -> MappingTable {
        // A /29 has 6 usable addresses; one is the reserved DNS address.
        MappingTable::new(
            "10.170.160.0/29".parse().unwrap(),
            Direction::Synthesised,
            GRACE,
        )
    }

    /// Static mappings: set anywhere in the pool, skipped by fresh allocation, never recycled
    /// (a full pool fails rather than take one), never flushed, kept by a reload; a live
    /// mapping in the way is a conflict that changes nothing, a dead one is taken over.
    #[test]
    fn static_mappings_are_never_recycled_and_conflicts_change_nothing() {
        let a = |last: u8| Ipv4Addr::new(10, 170, 160, last);
        let mut t = small_table();
        let now = UnixMillis(1_000_000);
        // Outside the pool, or the guest DNS address: refused.
        for bad in [a(1), a(7), Ipv4Addr::new(10, 0, 0, 5)] {
            assert!(matches!(
                t.set_static(bad, v6(1), &[], now),
                Err(MappingError::StaticOutsidePool { .. })
            ));
        }
        assert_eq!(
            t.set_static(a(3), v6(100), &["db.example.".into()], now),
            Ok(true)
        );
        // Again: nothing changes.
        assert_eq!(
            t.set_static(a(3), v6(100), &["db.example.".into()], now),
            Ok(false)
        );
        t.check_invariants();
        // Fresh allocation skips .3: the four other addresses, then the pool is full.
        let got: Vec<Ipv4Addr> = (1..=4)
            .map(|i| t.map(v6(i), None, Duration::ZERO, now).unwrap().v4)
            .collect();
        assert_eq!(got, [a(2), a(4), a(5), a(6)]);
        // Long after every TTL and grace: recycling takes dynamic ones, never the static.
        let later = now.plus(GRACE * 10);
        for i in 5..=8 {
            let r = t.map(v6(i), None, Duration::ZERO, later).unwrap();
            assert_ne!(r.v4, a(3), "a static mapping was recycled");
        }
        assert_eq!(t.get(a(3)).unwrap().v6, v6(100));
        // A live dynamic mapping in the way: a conflict naming it, nothing remapped.
        let live = t.lookup_v6(v6(8)).unwrap();
        let e = t.set_static(live, v6(200), &[], later).unwrap_err();
        assert!(e.to_string().contains(&live.to_string()), "{e}");
        assert_eq!(t.get(live).unwrap().v6, v6(8));
        let e = t.set_static(a(3), v6(8), &[], later).unwrap_err();
        assert!(
            matches!(
                e,
                MappingError::StaticConflict {
                    held_static: true,
                    ..
                }
            ),
            "{e:?}"
        );
        let e = t.set_static(a(3), v6(100), &[], later);
        assert_eq!(e, Ok(false));
        // The same pair as a live dynamic mapping: it becomes static.
        assert_eq!(t.set_static(live, v6(8), &[], later), Ok(true));
        assert!(t.get(live).unwrap().fixed);
        // A dynamic mapping past its TTL and grace is taken over.
        let much_later = later.plus(GRACE * 10);
        let dead = t.lookup_v6(v6(7)).unwrap();
        assert_eq!(t.set_static(dead, v6(300), &[], much_later), Ok(true));
        assert_eq!(t.lookup_v6(v6(7)), None);
        t.check_invariants();
        // In use (pinned): removed only when forced; not static: never.
        assert_eq!(t.pin(dead, much_later), Ok(1));
        assert_eq!(
            t.remove_static(dead, false),
            Err(MappingError::StaticInUse { v4: dead, pins: 1 })
        );
        assert_eq!(
            t.remove_static(a(9), true),
            Err(MappingError::NotStatic(a(9)))
        );
        assert_eq!(t.remove_static(dead, true), Ok(1));
        assert_eq!(t.get(dead), None);
        assert_eq!(t.set_static(dead, v6(300), &[], much_later), Ok(true));
        // Flush keeps statics.
        t.flush(much_later, false);
        assert_eq!(t.get(a(3)).unwrap().v6, v6(100));
        assert_eq!(t.get(dead).unwrap().v6, v6(300));
        assert_eq!(t.len(), 3);
        // Stored and loaded again: still static, still outside the LRU.
        let rows = t.list();
        let mut again = small_table();
        assert!(again.load(rows).is_empty());
        again.check_invariants();
        assert!(again.get(a(3)).unwrap().fixed);
        assert!(again.map(v6(400), None, Duration::ZERO, much_later).is_ok());
        assert_ne!(again.lookup_v6(v6(400)), Some(a(3)));
    }

    #[test]
    fn reserves_the_first_usable_address_for_dns() {
        let mut t = MappingTable::new(
            "10.170.160.0/20".parse().unwrap(),
            Direction::Synthesised,
            GRACE,
        );
        assert_eq!(t.reserved(), Some(Ipv4Addr::new(10, 170, 160, 1)));
        assert_eq!(t.capacity(), 4093);
        let r = t.map(
            v6(1),
            Some("a.test."),
            Duration::from_secs(60),
            UnixMillis(0),
        );
        assert_eq!(r.unwrap().v4, Ipv4Addr::new(10, 170, 160, 2));
        let src = MappingTable::new(
            "172.21.112.0/20".parse().unwrap(),
            Direction::InboundPeer,
            GRACE,
        );
        assert_eq!(src.reserved(), None);
        assert_eq!(src.capacity(), 4094);
    }

    #[test]
    fn same_ipv6_gets_same_dummy_and_names_accumulate() {
        let mut t = small_table();
        let a = t
            .map(
                v6(1),
                Some("a.test."),
                Duration::from_secs(60),
                UnixMillis(0),
            )
            .unwrap();
        let b = t
            .map(
                v6(1),
                Some("b.test."),
                Duration::from_secs(60),
                UnixMillis(5),
            )
            .unwrap();
        assert_eq!(a.v4, b.v4);
        assert_eq!(b.allocation, Allocation::Existing);
        assert_eq!(t.get(a.v4).unwrap().names, vec!["a.test.", "b.test."]);
        assert_eq!(t.get(a.v4).unwrap().last_used, UnixMillis(5));
    }

    #[test]
    fn full_pool_recycles_only_idle_unpinned_mappings() {
        let mut t = small_table();
        let ttl = Duration::from_secs(10);
        let mut addrs = Vec::new();
        for i in 0..5 {
            addrs.push(t.map(v6(i), None, ttl, UnixMillis(0)).unwrap().v4);
        }
        // Within grace: exhausted.
        assert_eq!(
            t.map(v6(10), None, ttl, UnixMillis(50_000)),
            Err(MappingError::Exhausted(Direction::Synthesised))
        );
        // Past grace, but the oldest is pinned: the next oldest is taken.
        t.pin(addrs[0], UnixMillis(0)).unwrap();
        let r = t.map(v6(10), None, ttl, UnixMillis(101_000)).unwrap();
        assert_eq!(r.v4, addrs[1]);
        assert_eq!(r.allocation, Allocation::Recycled { previous: v6(1) });
        assert_eq!(t.lookup_v6(v6(1)), None);
        t.check_invariants();
    }

    #[test]
    fn unpin_restarts_grace() {
        let mut t = small_table();
        let ttl = Duration::from_secs(1);
        let a = t.map(v6(1), None, ttl, UnixMillis(0)).unwrap().v4;
        t.pin(a, UnixMillis(0)).unwrap();
        assert_eq!(t.unpin(a, UnixMillis(500_000)), Ok(0));
        assert_eq!(
            t.unpin(a, UnixMillis(500_000)),
            Err(MappingError::NotPinned(a))
        );
        assert_eq!(t.get(a).unwrap().last_used, UnixMillis(500_000));
    }

    #[test]
    fn load_restores_and_rejects_foreign_rows() {
        let mut t = small_table();
        let m = |v4: [u8; 4], i| Mapping {
            v4: Ipv4Addr::from(v4),
            v6: v6(i),
            direction: Direction::Synthesised,
            names: vec![],
            created: UnixMillis(0),
            last_used: UnixMillis(0),
            expires: UnixMillis(0),
            pins: 0,
            fixed: false,
        };
        let pinned = Mapping {
            pins: 3,
            ..m([10, 170, 160, 4], 1)
        };
        let rejected = t.load(vec![
            pinned,
            m([10, 170, 161, 4], 2),
            m([10, 170, 160, 5], 1),
        ]);
        assert_eq!(rejected.len(), 2);
        assert_eq!(t.lookup_v6(v6(1)), Some(Ipv4Addr::new(10, 170, 160, 4)));
        // Pins were leases of the previous run's connections: none is loaded.
        assert_eq!(t.get(Ipv4Addr::new(10, 170, 160, 4)).unwrap().pins, 0);
        // Addresses below the highest loaded one are reused first.
        let next = t.map(v6(3), None, Duration::ZERO, UnixMillis(1)).unwrap();
        assert_eq!(next.v4, Ipv4Addr::new(10, 170, 160, 2));
        t.check_invariants();
        let dirty = t.drain_dirty();
        assert!(dirty.deletes.contains(&Ipv4Addr::new(10, 170, 160, 5)));
        assert!(dirty
            .upserts
            .iter()
            .any(|m| m.v4 == Ipv4Addr::new(10, 170, 160, 4) && m.pins == 0));
    }

    #[test]
    fn flush_keeps_pinned_and_optionally_live() {
        let mut t = small_table();
        let a = t
            .map(v6(1), None, Duration::from_secs(1), UnixMillis(0))
            .unwrap()
            .v4;
        let b = t
            .map(v6(2), None, Duration::from_secs(1), UnixMillis(0))
            .unwrap()
            .v4;
        t.pin(a, UnixMillis(0)).unwrap();
        assert_eq!(t.flush(UnixMillis(1), true), 0);
        assert_eq!(t.flush(UnixMillis(1), false), 1);
        assert!(t.get(a).is_some() && t.get(b).is_none());
        t.check_invariants();
    }

    fn in64(net: u16, host: u16) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, 0x65, 0, net, 0, 0, 0, host)
    }

    fn source_table(cap: usize) -> MappingTable {
        MappingTable::new(
            "172.21.112.0/24".parse().unwrap(),
            Direction::InboundPeer,
            GRACE,
        )
        .with_prefix_cap(cap)
    }

    #[test]
    fn a_64_at_its_cap_reuses_its_own_least_recently_used_unpinned_dummy() {
        let mut t = source_table(3);
        let a: Vec<Ipv4Addr> = (1..=3)
            .map(|i| {
                t.map(in64(1, i), None, Duration::ZERO, UnixMillis(u64::from(i)))
                    .unwrap()
                    .v4
            })
            .collect();
        // Another /64 has its own share.
        let other = t
            .map(in64(2, 1), None, Duration::ZERO, UnixMillis(0))
            .unwrap();
        // The oldest of /64 #1 is pinned by a live connection: the next oldest is reused,
        // within its grace period, and the other /64's older dummy is left alone.
        t.pin(a[0], UnixMillis(0)).unwrap();
        let r = t
            .map(in64(1, 9), None, Duration::ZERO, UnixMillis(10))
            .unwrap();
        assert_eq!(r.v4, a[1]);
        assert_eq!(
            r.allocation,
            Allocation::Recycled {
                previous: in64(1, 2)
            }
        );
        assert_eq!(t.prefix_len(in64(1, 0)), 3);
        assert_eq!(t.get(a[0]).unwrap().v6, in64(1, 1));
        assert_eq!(t.get(other.v4).unwrap().v6, in64(2, 1));
        // A known address is not a new one: no reuse.
        assert_eq!(
            t.map(in64(1, 3), None, Duration::ZERO, UnixMillis(11))
                .unwrap()
                .allocation,
            Allocation::Existing
        );
        t.check_invariants();
        // All pinned: refused, nothing taken.
        for v4 in [a[1], a[2]] {
            t.pin(v4, UnixMillis(12)).unwrap();
        }
        assert_eq!(
            t.map(in64(1, 10), None, Duration::ZERO, UnixMillis(13)),
            Err(MappingError::PrefixFull(in64(1, 0)))
        );
        assert_eq!(t.len(), 4);
        t.check_invariants();
    }

    #[test]
    fn the_cap_applies_to_loaded_rows_too() {
        let mut t = source_table(2);
        for i in 1..=2 {
            t.map(in64(1, i), None, Duration::ZERO, UnixMillis(u64::from(i)))
                .unwrap();
        }
        let rows = t.list();
        let mut again = source_table(2);
        assert!(again.load(rows).is_empty());
        let r = again
            .map(in64(1, 5), None, Duration::ZERO, UnixMillis(3))
            .unwrap();
        assert_eq!(
            r.allocation,
            Allocation::Recycled {
                previous: in64(1, 1)
            }
        );
        again.check_invariants();
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Under any mix of new sources, pins and time, no /64 exceeds the cap, a reused dummy
        /// was unpinned and of the same /64, and the table stays consistent.
        #[test]
        fn prefix_cap_properties(ops in proptest::collection::vec(
            (0u16..3, 0u16..40, any::<bool>(), 0u32..5_000), 1..300)
        ) {
            let mut t = source_table(4);
            let mut now = UnixMillis(1_000);
            for (net, host, pin, advance) in ops {
                now = now.plus(Duration::from_millis(u64::from(advance)));
                let v6 = in64(net, host);
                let before = t.list();
                match t.map(v6, None, Duration::ZERO, now) {
                    Ok(r) => {
                        if let Allocation::Recycled { previous } = r.allocation {
                            let victim = before.iter().find(|m| m.v6 == previous).unwrap();
                            prop_assert_eq!(victim.pins, 0);
                            prop_assert_eq!(net64(previous), net64(v6));
                        }
                        if pin {
                            t.pin(r.v4, now).unwrap();
                        }
                    }
                    Err(MappingError::PrefixFull(_)) => {
                        prop_assert!(before.iter().filter(|m| net64(m.v6) == net64(v6)).all(|m| m.pins > 0));
                    }
                    Err(e) => prop_assert!(false, "{e}"),
                }
                t.check_invariants();
            }
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Map(u16, u16),
        Pin(u8),
        Unpin(u8),
        Advance(u32),
        Flush,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0u16..20, 0u16..200).prop_map(|(a, t)| Op::Map(a, t)),
            2 => (0u8..8).prop_map(Op::Pin),
            2 => (0u8..8).prop_map(Op::Unpin),
            3 => (0u32..150_000).prop_map(Op::Advance),
            1 => Just(Op::Flush),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// No two live IPv6 addresses share a dummy; recycling never takes a pinned or protected
        /// mapping; exhaustion happens only when every mapping is protected.
        #[test]
        fn allocator_properties(ops in proptest::collection::vec(op(), 1..200)) {
            let mut t = small_table();
            let mut now = UnixMillis(1_000_000);
            for op in ops {
                match op {
                    Op::Map(a, ttl) => {
                        let before: Vec<Mapping> = t.list();
                        match t.map(v6(a), None, Duration::from_secs(u64::from(ttl)), now) {
                            Ok(r) => {
                                if let Allocation::Recycled { previous } = r.allocation {
                                    let victim = before.iter().find(|m| m.v6 == previous).unwrap();
                                    prop_assert_eq!(victim.v4, r.v4);
                                    prop_assert_eq!(victim.pins, 0);
                                    prop_assert!(victim.expires <= now);
                                    prop_assert!(victim.last_used.plus(GRACE) <= now);
                                    // It was the least recently used of the candidates.
                                    for m in &before {
                                        if m.pins == 0 && m.expires <= now {
                                            prop_assert!(m.last_used >= victim.last_used);
                                        }
                                    }
                                }
                                prop_assert_eq!(t.get(r.v4).map(|m| m.v6), Some(v6(a)));
                            }
                            Err(e) => {
                                prop_assert_eq!(e, MappingError::Exhausted(Direction::Synthesised));
                                prop_assert_eq!(before.len(), t.capacity());
                                for m in &before {
                                    prop_assert!(
                                        m.pins > 0
                                            || m.expires > now
                                            || m.last_used.plus(GRACE) > now
                                    );
                                }
                            }
                        }
                    }
                    Op::Pin(i) => {
                        let list = t.list();
                        if let Some(m) = list.get(usize::from(i)) {
                            t.pin(m.v4, now).unwrap();
                        }
                    }
                    Op::Unpin(i) => {
                        let list = t.list();
                        if let Some(m) = list.get(usize::from(i)) {
                            let _ = t.unpin(m.v4, now);
                        }
                    }
                    Op::Advance(ms) => now = now.plus(Duration::from_millis(u64::from(ms))),
                    Op::Flush => {
                        t.flush(now, true);
                    }
                }
                t.check_invariants();
                let list = t.list();
                let mut seen = HashSet::new();
                for m in &list {
                    prop_assert!(seen.insert(m.v6), "an IPv6 address has two dummies");
                }
            }
        }
    }
}
