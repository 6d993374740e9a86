//! The reply cache: encoded answers kept for the rest of the second in which they were built, so
//! that a repeated question is answered by copying bytes instead of parsing, resolving and
//! encoding again.
//!
//! This is what makes a cache hit cheap: the full path (hickory's parser, the rules in
//! [`crate::resolve`], the mapping table, hickory's encoder) runs about once per second per
//! distinct question, and every other copy of that question costs a hash look-up, a copy and
//! three patches (id, RD bit, the question's letter case).
//!
//! Why a replay is the answer a full resolve would give (see [`crate::reuse::Reuse`]):
//! - it is kept only until the end of the current second of age of the upstream data it came
//!   from, so its TTLs are the ones a resolve would compute, and it never outlives that data;
//! - the key holds everything of the request that the answer depends on: the question (case
//!   folded), the CD and DO bits, the EDNS size we would grant, and whether the reply may be
//!   truncated (UDP) or not (TCP, dns.sock);
//! - a synthesised answer's mapping was protected, when it was made, for its TTL plus the time
//!   the answer may still be replayed, so no address in a replay has been recycled;
//! - clearing the answer cache (dns.sock `Flush`) clears this one too.
//!
//! The cost: while answers are replayed the mapping's last use is not recorded; the next full
//! resolve, within a second, records it. Grace periods are counted in seconds to hours.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use crate::clock::UnixMillis;
use crate::packet::{QueryView, MAX_NAME, QUESTION_AT, RD_BIT};
use crate::reuse::Reuse;

/// Largest key: the name, type, class, flags and the EDNS size.
const MAX_KEY: usize = MAX_NAME + 7;

/// What a request's answer depends on, as bytes: the question name in lower case, QTYPE,
/// QCLASS, a flag byte (CD, DO, EDNS present, TCP) and the EDNS size we would grant.
#[derive(Debug, Clone)]
pub struct Key {
    buf: [u8; MAX_KEY],
    len: usize,
}

impl Key {
    /// The key of `q`; `tcp` says whether the reply may be truncated, `our_payload` is the
    /// largest UDP size we send.
    pub fn of(q: &QueryView<'_>, tcp: bool, our_payload: u16) -> Self {
        let mut buf = [0u8; MAX_KEY];
        let n = q.qname.len();
        // QueryView never holds a longer name.
        let name = buf
            .get_mut(..n)
            .expect("a parsed question name is at most MAX_NAME bytes");
        name.copy_from_slice(q.qname);
        name.make_ascii_lowercase();
        let payload = q
            .edns
            .map_or(0, |e| e.payload.clamp(512, our_payload.max(512)));
        let flags = u8::from(q.checking_disabled)
            | u8::from(q.edns.is_some_and(|e| e.dnssec_ok)) << 1
            | u8::from(q.edns.is_some()) << 2
            | u8::from(tcp) << 3;
        let [t0, t1] = q.qtype.to_be_bytes();
        let [c0, c1] = q.qclass.to_be_bytes();
        let [p0, p1] = payload.to_be_bytes();
        let tail = [t0, t1, c0, c1, flags, p0, p1];
        let len = n + tail.len();
        buf.get_mut(n..len)
            .expect("MAX_KEY leaves room for the tail")
            .copy_from_slice(&tail);
        Self { buf, len }
    }

    fn bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or_default()
    }
}

#[derive(Debug)]
struct Entry {
    until: UnixMillis,
    reply: Box<[u8]>,
    reuse: Reuse,
}

/// Encoded replies by [`Key`], bounded in number.
#[derive(Debug)]
pub struct ReplyCache {
    entries: Mutex<HashMap<Box<[u8]>, Entry>>,
    max_entries: usize,
}

impl ReplyCache {
    /// A cache of at most `max_entries` replies.
    pub fn new(max_entries: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            max_entries: max_entries.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Box<[u8]>, Entry>> {
        // Every method leaves the map consistent before anything that could panic.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Writes the reply to `q` into `out` (cleared first) if one is still valid at `now`, with
    /// `q`'s id, RD bit and name spelling; returns what the replay counts.
    pub fn replay(
        &self,
        q: &QueryView<'_>,
        key: &Key,
        now: UnixMillis,
        out: &mut Vec<u8>,
    ) -> Option<Reuse> {
        let reuse = {
            let entries = self.lock();
            let e = entries.get(key.bytes())?;
            if now >= e.until {
                return None;
            }
            out.clear();
            out.extend_from_slice(&e.reply);
            e.reuse
        };
        let end = QUESTION_AT + q.qname.len();
        // `insert` only keeps replies that hold the whole question, so this always matches.
        let (header, rest) = out.split_at_mut_checked(QUESTION_AT)?;
        let name = rest.get_mut(..end - QUESTION_AT)?;
        header.get_mut(..2)?.copy_from_slice(&q.id.to_be_bytes());
        let flags = header.get_mut(2)?;
        *flags = (*flags & !RD_BIT) | if q.recursion_desired { RD_BIT } else { 0 };
        name.copy_from_slice(q.qname);
        Some(reuse)
    }

    /// Keeps `reply` to the request `q` (whose key is `key`) until `reuse.until`. Replies that
    /// are truncated or do not echo the question at the usual place are not kept.
    pub fn insert(
        &self,
        q: &QueryView<'_>,
        key: &Key,
        reply: &[u8],
        reuse: Reuse,
        now: UnixMillis,
    ) {
        let echoes_question = reply.get(4..6) == Some(&[0, 1][..])
            && reply
                .get(QUESTION_AT..QUESTION_AT + q.qname.len())
                .is_some_and(|n| n.eq_ignore_ascii_case(q.qname));
        let truncated = reply.get(2).is_some_and(|b| b & 0x02 != 0);
        if !echoes_question || truncated || now >= reuse.until {
            return;
        }
        let mut entries = self.lock();
        if entries.len() >= self.max_entries && !entries.contains_key(key.bytes()) {
            // Entries live a second at most: most of a full map is usually dead.
            entries.retain(|_, e| now < e.until);
            if entries.len() >= self.max_entries {
                let drop_n = (self.max_entries / 8).max(1);
                let victims: Vec<Box<[u8]>> = entries.keys().take(drop_n).cloned().collect();
                for k in victims {
                    entries.remove(&k);
                }
            }
        }
        entries.insert(
            key.bytes().into(),
            Entry {
                until: reuse.until,
                reply: reply.into(),
                reuse,
            },
        );
    }

    /// Drops every reply; returns how many there were.
    pub fn clear(&self) -> usize {
        let mut entries = self.lock();
        let n = entries.len();
        entries.clear();
        n
    }

    /// Number of replies held (live or not yet swept).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no reply is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::EdnsView;

    fn reuse(until: u64) -> Reuse {
        Reuse {
            until: UnixMillis(until),
            cache_lookups: 1,
            synthesised: true,
            passed_through: false,
        }
    }

    fn view<'a>(id: u16, qname: &'a [u8], rd: bool) -> QueryView<'a> {
        QueryView {
            id,
            recursion_desired: rd,
            checking_disabled: false,
            qname,
            qtype: 1,
            qclass: 1,
            edns: None,
        }
    }

    /// A reply to `qname` with the header of `id` and RD set, and one fake byte after it.
    fn reply(id: u16, qname: &[u8]) -> Vec<u8> {
        let mut r = id.to_be_bytes().to_vec();
        r.extend_from_slice(&[0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0]);
        r.extend_from_slice(qname);
        r.extend_from_slice(&[0, 1, 0, 1, 0xaa]);
        r
    }

    #[test]
    fn replays_with_the_askers_id_rd_and_spelling_until_the_deadline() {
        let c = ReplyCache::new(10);
        let first = view(1, b"\x01A\x04test\x00", true);
        let key = Key::of(&first, false, 1232);
        c.insert(
            &first,
            &key,
            &reply(1, b"\x01A\x04test\x00"),
            reuse(1_000),
            UnixMillis(0),
        );
        let second = view(0x4242, b"\x01a\x04TEST\x00", false);
        let key2 = Key::of(&second, false, 1232);
        assert_eq!(key.bytes(), key2.bytes(), "the key folds case");
        let mut out = Vec::new();
        assert_eq!(
            c.replay(&second, &key2, UnixMillis(999), &mut out),
            Some(reuse(1_000))
        );
        let mut want = reply(0x4242, b"\x01a\x04TEST\x00");
        want[2] &= !RD_BIT;
        assert_eq!(out, want);
        assert_eq!(c.replay(&second, &key2, UnixMillis(1_000), &mut out), None);
    }

    #[test]
    fn the_key_separates_what_changes_the_answer() {
        let base = view(1, b"\x01a\x04test\x00", true);
        let k = |q: &QueryView<'_>, tcp| Key::of(q, tcp, 1232).bytes().to_vec();
        let plain = k(&base, false);
        assert_ne!(plain, k(&base, true));
        let cd = QueryView {
            checking_disabled: true,
            ..base
        };
        assert_ne!(plain, k(&cd, false));
        let aaaa = QueryView { qtype: 28, ..base };
        assert_ne!(plain, k(&aaaa, false));
        let edns = |payload, dnssec_ok| QueryView {
            edns: Some(EdnsView { payload, dnssec_ok }),
            ..base
        };
        assert_ne!(plain, k(&edns(1232, false), false));
        assert_ne!(k(&edns(1232, false), false), k(&edns(1232, true), false));
        // Sizes are compared after clamping to what we would grant.
        assert_eq!(k(&edns(4096, false), false), k(&edns(1400, false), false));
        assert_ne!(k(&edns(600, false), false), k(&edns(1000, false), false));
        assert_eq!(k(&edns(100, false), false), k(&edns(512, false), false));
    }

    #[test]
    fn keeps_only_whole_replies_that_echo_the_question_and_stays_bounded() {
        let c = ReplyCache::new(4);
        let q = view(1, b"\x01a\x04test\x00", true);
        let key = Key::of(&q, false, 1232);
        let mut truncated = reply(1, q.qname);
        truncated[2] |= 0x02;
        c.insert(&q, &key, &truncated, reuse(1_000), UnixMillis(0));
        c.insert(
            &q,
            &key,
            &reply(1, b"\x01b\x04test\x00"),
            reuse(1_000),
            UnixMillis(0),
        );
        c.insert(
            &q,
            &key,
            &reply(1, q.qname),
            reuse(1_000),
            UnixMillis(1_000),
        );
        assert!(c.is_empty());
        let names: Vec<Vec<u8>> = (0..20u8)
            .map(|i| vec![1, b'a' + i, 4, b't', b'e', b's', b't', 0])
            .collect();
        for n in &names {
            let q = view(1, n, true);
            c.insert(
                &q,
                &Key::of(&q, false, 1232),
                &reply(1, n),
                reuse(1_000),
                UnixMillis(0),
            );
            assert!(c.len() <= 4);
        }
        let n = c.len();
        assert!(n > 0);
        assert_eq!(c.clear(), n);
        assert!(c.is_empty());
    }
}
