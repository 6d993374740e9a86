//! The answer cache: upstream responses kept for their TTL, negative answers kept for the SOA's
//! negative TTL (RFC 2308 §5), all bounded in size.
//!
//! It caches what upstream said, not what we synthesised: the synthesised A records are rebuilt
//! from the cached AAAA records on every hit, so a mapping's last use is recorded on every answer
//! and an address that was recycled is never served from a stale cache entry.

use std::collections::HashMap;
use std::sync::Arc;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use crate::clock::UnixMillis;

/// Why a response was not cached (informational; never an error to the client).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CacheError {
    /// Only NOERROR and NXDOMAIN are cached.
    #[error("response code {0} is not cached")]
    Uncacheable(ResponseCode),
    /// Negative answer without an SOA: RFC 2308 §5 says not to cache it.
    #[error("negative answer without SOA")]
    NoSoa,
    /// A TTL of zero means "do not cache".
    #[error("TTL is zero")]
    ZeroTtl,
}

/// What a cache entry is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    /// Lower-cased query name.
    pub name: Name,
    /// Query type.
    pub qtype: RecordType,
    /// Query class.
    pub qclass: DNSClass,
    /// DO bit of the upstream query.
    pub dnssec_ok: bool,
    /// CD bit of the upstream query.
    pub checking_disabled: bool,
}

/// A cached upstream response.
#[derive(Debug, Clone)]
pub struct Cached {
    /// Upstream's response code.
    pub rcode: ResponseCode,
    /// Answer section.
    pub answers: Vec<Record>,
    /// Authority section (SOA for negative answers).
    pub authorities: Vec<Record>,
    /// Upstream's AD bit.
    pub authentic_data: bool,
    stored: UnixMillis,
    ttl: u32,
}

impl Cached {
    /// Builds an entry from an upstream response without caching it (used for answers that are
    /// not cacheable but still have to be served once).
    pub fn from_message(m: &Message, now: UnixMillis) -> Self {
        Self {
            rcode: m.metadata.response_code,
            answers: m.answers.clone(),
            authorities: m.authorities.clone(),
            authentic_data: m.metadata.authentic_data,
            stored: now,
            ttl: 0,
        }
    }

    /// Seconds since the entry was stored, as of `now`.
    pub fn age(&self, now: UnixMillis) -> u32 {
        u32::try_from(now.since(self.stored).as_secs()).unwrap_or(u32::MAX)
    }

    /// The end of the current second of age as of `now`: until then [`Cached::age`] (and so
    /// every TTL served from this entry) stays the same. `None` for a response that is not in
    /// the cache (served once, never again).
    pub fn same_age_until(&self, now: UnixMillis) -> Option<UnixMillis> {
        if self.ttl == 0 {
            return None;
        }
        let next = u64::from(self.age(now)).saturating_add(1);
        Some(self.stored.plus(std::time::Duration::from_secs(
            next.min(u64::from(self.ttl)),
        )))
    }

    /// Records of type `rtype` in the answer section.
    pub fn answers_of(&self, rtype: RecordType) -> impl Iterator<Item = &Record> {
        self.answers
            .iter()
            .filter(move |r| r.record_type() == rtype)
    }

    /// The TTL to use for a negative answer: min(SOA TTL, SOA MINIMUM) (RFC 2308 §5).
    pub fn negative_ttl(&self) -> Option<u32> {
        self.authorities.iter().find_map(|r| match &r.data {
            RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
            _ => None,
        })
    }
}

/// The bounded answer cache.
#[derive(Debug)]
pub struct AnswerCache {
    map: HashMap<CacheKey, Arc<Cached>>,
    max_entries: usize,
    max_ttl: u32,
    max_negative_ttl: u32,
}

impl AnswerCache {
    /// A cache of at most `max_entries` responses, each kept at most `max_ttl` seconds (negative
    /// ones at most `max_negative_ttl`).
    pub fn new(max_entries: usize, max_ttl: u32, max_negative_ttl: u32) -> Self {
        Self {
            map: HashMap::new(),
            max_entries: max_entries.max(1),
            max_ttl,
            max_negative_ttl,
        }
    }

    /// Number of entries (live or not yet swept).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// A live entry for `key`; an expired one is removed.
    pub fn get(&mut self, key: &CacheKey, now: UnixMillis) -> Option<Arc<Cached>> {
        let entry = self.map.get(key)?;
        if entry.age(now) < entry.ttl {
            return Some(Arc::clone(entry));
        }
        self.map.remove(key);
        None
    }

    /// Stores an upstream response. Returns the entry (cached or not) so the caller can serve
    /// it, and why it was not cached if it was not.
    pub fn insert(
        &mut self,
        key: CacheKey,
        m: &Message,
        now: UnixMillis,
    ) -> (Arc<Cached>, Result<(), CacheError>) {
        let mut entry = Cached::from_message(m, now);
        let ttl = match entry.rcode {
            ResponseCode::NoError if entry.answers_of(key.qtype).next().is_some() => Ok(entry
                .answers
                .iter()
                .map(|r| r.ttl)
                .min()
                .unwrap_or(0)
                .min(self.max_ttl)),
            // NODATA (perhaps after a CNAME chain) and NXDOMAIN are negative answers.
            ResponseCode::NoError | ResponseCode::NXDomain => entry
                .negative_ttl()
                .map(|t| t.min(self.max_negative_ttl))
                .ok_or(CacheError::NoSoa),
            other => Err(CacheError::Uncacheable(other)),
        };
        let ttl = match ttl {
            Ok(0) => Err(CacheError::ZeroTtl),
            other => other,
        };
        match ttl {
            Ok(ttl) => {
                entry.ttl = ttl;
                let entry = Arc::new(entry);
                self.make_room(now);
                self.map.insert(key, Arc::clone(&entry));
                (entry, Ok(()))
            }
            Err(e) => (Arc::new(entry), Err(e)),
        }
    }

    /// Frees space for one entry: first every expired entry, then (if still full) an eighth of
    /// the entries in the map's arbitrary order. Crude, but O(1) amortised and bounded, and a
    /// DNS cache only needs to stay within its memory, not to be a perfect LRU.
    fn make_room(&mut self, now: UnixMillis) {
        if self.map.len() < self.max_entries {
            return;
        }
        self.map.retain(|_, e| e.age(now) < e.ttl);
        if self.map.len() >= self.max_entries {
            let drop_n = (self.max_entries / 8).max(1);
            let victims: Vec<CacheKey> = self.map.keys().take(drop_n).cloned().collect();
            for k in victims {
                self.map.remove(&k);
            }
        }
    }

    /// Removes everything.
    pub fn clear(&mut self) {
        self.map.clear();
    }
}

/// A copy of `r` with its TTL reduced by `age` seconds and capped at `cap`.
pub fn aged(r: &Record, age: u32, cap: u32) -> Record {
    let mut r = r.clone();
    r.ttl = r.ttl.saturating_sub(age).min(cap);
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{MessageType, OpCode, Query};
    use hickory_proto::rr::rdata::{AAAA, SOA};

    fn key(qtype: RecordType) -> CacheKey {
        CacheKey {
            name: Name::from_ascii("x.test.").unwrap(),
            qtype,
            qclass: DNSClass::IN,
            dnssec_ok: false,
            checking_disabled: false,
        }
    }

    fn response(rcode: ResponseCode, aaaa_ttl: Option<u32>, soa: Option<(u32, u32)>) -> Message {
        let name = Name::from_ascii("x.test.").unwrap();
        let mut m = Message::new(1, MessageType::Response, OpCode::Query);
        m.metadata.response_code = rcode;
        m.add_query(Query::query(name.clone(), RecordType::AAAA));
        if let Some(ttl) = aaaa_ttl {
            m.add_answer(Record::from_rdata(
                name.clone(),
                ttl,
                RData::AAAA(AAAA("2001:db8::1".parse().unwrap())),
            ));
        }
        if let Some((ttl, minimum)) = soa {
            m.add_authority(Record::from_rdata(
                Name::from_ascii("test.").unwrap(),
                ttl,
                RData::SOA(SOA::new(name.clone(), name, 1, 2, 3, 4, minimum)),
            ));
        }
        m
    }

    #[test]
    fn positive_answers_live_for_their_ttl() {
        let mut c = AnswerCache::new(10, 86_400, 300);
        let (_, r) = c.insert(
            key(RecordType::AAAA),
            &response(ResponseCode::NoError, Some(5), None),
            UnixMillis(0),
        );
        assert_eq!(r, Ok(()));
        let hit = c.get(&key(RecordType::AAAA), UnixMillis(4_999)).unwrap();
        assert_eq!(
            aged(&hit.answers[0], hit.age(UnixMillis(4_999)), 600).ttl,
            1
        );
        assert!(c.get(&key(RecordType::AAAA), UnixMillis(5_000)).is_none());
        assert!(c.is_empty());
    }

    #[test]
    fn negative_answers_use_the_soa_minimum() {
        let mut c = AnswerCache::new(10, 86_400, 300);
        let nx = response(ResponseCode::NXDomain, None, Some((3600, 30)));
        assert_eq!(c.insert(key(RecordType::A), &nx, UnixMillis(0)).1, Ok(()));
        assert!(c.get(&key(RecordType::A), UnixMillis(29_000)).is_some());
        assert!(c.get(&key(RecordType::A), UnixMillis(30_000)).is_none());
        // Capped by the configured maximum.
        let nodata = response(ResponseCode::NoError, None, Some((3600, 3600)));
        let _ = c.insert(key(RecordType::AAAA), &nodata, UnixMillis(0));
        assert!(c.get(&key(RecordType::AAAA), UnixMillis(300_000)).is_none());
        // Without an SOA nothing is cached.
        let bare = response(ResponseCode::NXDomain, None, None);
        assert_eq!(
            c.insert(key(RecordType::MX), &bare, UnixMillis(0)).1,
            Err(CacheError::NoSoa)
        );
        let fail = response(ResponseCode::ServFail, None, None);
        assert_eq!(
            c.insert(key(RecordType::MX), &fail, UnixMillis(0)).1,
            Err(CacheError::Uncacheable(ResponseCode::ServFail))
        );
    }

    #[test]
    fn stays_within_its_size() {
        let mut c = AnswerCache::new(16, 86_400, 300);
        for i in 0..100 {
            let mut k = key(RecordType::AAAA);
            k.name = Name::from_ascii(format!("n{i}.test.")).unwrap();
            let _ = c.insert(
                k,
                &response(ResponseCode::NoError, Some(60), None),
                UnixMillis(0),
            );
            assert!(c.len() <= 16);
        }
    }
}
