//! The bodies of the cargo-fuzz targets over dns-cache's parsers (fuzz/, behind the `fuzzing`
//! feature; the unit tests replay their corpora on stable):
//!
//! - [`fast_one`] (`dns_fast`): a datagram as the UDP front end ([`crate::udp`]) reads it: the
//!   allocation-free reader ([`QueryView`]), the REFUSED answer ([`refused`]), the reply-cache
//!   key and a replay of a reply kept for it ([`ReplyCache`]);
//! - [`resolve_one`] (`dns_resolve`): the full path, [`Frontend::replay`] then
//!   [`Frontend::answer`] (hickory's parser, the rules of [`crate::resolve`], the mapping tables
//!   with their SQLite writer on an in-memory store, the encoder), with an upstream stand-in in
//!   this process that answers each upstream query from the input: a response made of the
//!   input's header flags, record counts and record bytes behind the question it was asked,
//!   read back by hickory and checked by the real client's rule ([`crate::upstream`]).
//!
//! Properties beyond "never panics": every reply is a DNS message hickory reads back, and a
//! replay of the packet just answered is that very reply.

use std::collections::VecDeque;
use std::net::Ipv6Addr;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::Name;
use outsock_policy::Policy;

use crate::cache::AnswerCache;
use crate::clients::refused;
use crate::clock::{Clock, ManualClock, UnixMillis};
use crate::frontend::Frontend;
use crate::mapping::{Direction, MappingTable};
use crate::metrics::Metrics;
use crate::packet::{QueryView, MAX_NAME, QUESTION_AT};
use crate::persist::Mappings;
use crate::replies::{Key, ReplyCache};
use crate::resolve::{Resolver, ResolverConfig};
use crate::reuse::Reuse;
use crate::store::Store;
use crate::upstream::{Upstream, UpstreamError, UpstreamQuery};

/// The EDNS size the front ends advertise (the daemon's default).
const PAYLOAD: u16 = 1232;

/// The `dns_fast` target's body: see the module documentation.
pub fn fast_one(data: &[u8]) {
    let r = refused(data);
    if let Some(r) = &r {
        assert!(
            r.len() <= data.len(),
            "a REFUSED answer is never larger than its query"
        );
    }
    let Some(q) = QueryView::parse(data) else {
        return;
    };
    assert!(q.qname.len() <= MAX_NAME && q.qname.last() == Some(&0));
    assert_eq!(r.map(|r| r.len()), Some(QUESTION_AT + q.qname.len() + 4));
    // A reply that echoes the question, kept and replayed: the replay carries the query's id,
    // RD bit and name spelling, and nothing else of the query.
    let mut reply = data.to_vec();
    reply[2] |= 0x80;
    reply[2] &= !0x02;
    let now = UnixMillis(1_000);
    let reuse = Reuse {
        until: now.plus(Duration::from_millis(500)),
        cache_lookups: 1,
        synthesised: false,
        passed_through: true,
    };
    let cache = ReplyCache::new(4);
    for tcp in [false, true] {
        let key = Key::of(&q, tcp, PAYLOAD);
        cache.insert(&q, &key, &reply, reuse, now);
        let mut out = Vec::new();
        assert_eq!(cache.replay(&q, &key, now, &mut out), Some(reuse));
        assert_eq!(out, reply, "a replay to the same query is the reply kept");
        assert_eq!(cache.replay(&q, &key, reuse.until, &mut out), None);
    }
}

/// The upstream stand-in: answers each query with the next response the input holds.
#[derive(Debug, Default)]
struct Scripted(Mutex<VecDeque<Vec<u8>>>);

/// The id the stand-in's "sent" query carried.
const UPSTREAM_ID: u16 = 0x4f55;

#[async_trait::async_trait]
impl Upstream for Scripted {
    async fn query(&self, q: &UpstreamQuery) -> Result<Message, UpstreamError> {
        let failed = || UpstreamError::Failed {
            server: "[2001:db8::53]:53".parse().expect("an address"),
            reason: "no answer within 2s".into(),
        };
        let chunk = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front()
            .ok_or_else(failed)?;
        // The question as the real client sends it, then the input's records.
        let mut asked = Message::new(UPSTREAM_ID, MessageType::Query, OpCode::Query);
        let mut query = Query::query(q.name.clone(), q.qtype);
        query.set_query_class(q.qclass);
        asked.add_query(query);
        let asked = asked.to_vec().map_err(UpstreamError::Encode)?;
        let mut wire = Vec::with_capacity(asked.len() + chunk.len());
        wire.extend_from_slice(&UPSTREAM_ID.to_be_bytes());
        let (head, records) = chunk.split_at(chunk.len().min(8));
        let mut head = head.to_vec();
        head.resize(8, 0);
        // Flags (2 bytes), QDCOUNT 1, then ANCOUNT, NSCOUNT, ARCOUNT from the input.
        wire.extend_from_slice(&head[..2]);
        wire.extend_from_slice(&[0, 1]);
        wire.extend_from_slice(&head[2..8]);
        wire.extend_from_slice(asked.get(QUESTION_AT..).unwrap_or_default());
        wire.extend_from_slice(records);
        // What the real client does with this datagram: read it, check it answers us (an
        // UPDATE with our id was taken before `matches` checked the opcode:
        // fuzz/corpus/dns_resolve/regress-upstream-opcode-update).
        match Message::from_vec(&wire) {
            Ok(m) if crate::upstream::matches(&m, UPSTREAM_ID, q) => Ok(m),
            _ => Err(failed()),
        }
    }
}

struct World {
    rt: tokio::runtime::Runtime,
    clock: Arc<ManualClock>,
    upstream: Arc<Scripted>,
    /// Without and with IPv4 egress.
    frontends: [Frontend; 2],
    serial: Mutex<()>,
}

fn name(s: &str) -> Name {
    Name::from_ascii(s).expect("a valid name")
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let clock = Arc::new(ManualClock::new(UnixMillis(1_700_000_000_000)));
        let upstream = Arc::new(Scripted::default());
        let pools = vec![
            "10.170.160.0/20".parse().expect("a prefix"),
            "172.21.112.0/20".parse().expect("a prefix"),
        ];
        let rules = outsock_policy::DestinationSettings {
            deny: vec!["2001:db8:dead::/48".into()],
            allow: Vec::new(),
        }
        .check(&pools)
        .expect("valid rules");
        let host = outsock_policy::HostAddresses::fixed([std::net::IpAddr::V6(Ipv6Addr::new(
            0x2001, 0xdb8, 0, 0, 0, 0, 0, 0xabcd,
        ))]);
        let policy = Policy::new(rules, pools, host);
        let frontend = |egress: bool, pool: &str, source: &str| {
            let mappings = Mappings::start(
                Store::open_in_memory().expect("in-memory store"),
                MappingTable::new(
                    pool.parse().expect("a prefix"),
                    Direction::Synthesised,
                    Duration::from_secs(60),
                ),
                MappingTable::new(
                    source.parse().expect("a prefix"),
                    Direction::InboundPeer,
                    Duration::from_secs(60),
                ),
                Arc::clone(&clock) as Arc<dyn Clock>,
            )
            .expect("mappings");
            let resolver = Resolver::new(
                ResolverConfig {
                    ipv4_egress: egress,
                    max_ttl: 600,
                    pass_through: vec![name("pass.test.")],
                    never_synthesise: vec![name("never.test.")],
                    ipv6_literal_suffix: Some(name("ipv6.outsock.")),
                    policy: policy.clone(),
                },
                Arc::clone(&upstream) as Arc<dyn Upstream>,
                AnswerCache::new(1000, 86_400, 300),
                mappings,
                Arc::new(Metrics::default()),
            );
            Frontend::new(Arc::new(resolver), PAYLOAD, 1000)
        };
        World {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime"),
            frontends: [
                frontend(false, "10.170.160.0/24", "172.21.112.0/24"),
                frontend(true, "10.170.161.0/24", "172.21.113.0/24"),
            ],
            clock,
            upstream,
            serial: Mutex::new(()),
        }
    })
}

/// The `dns_resolve` target's body: `data` is a flags byte (bit 0: TCP, bit 1: the resolver
/// with IPv4 egress, bits 2–7: seconds to advance the clock by first), the query as a
/// length-prefixed (u16, little endian) packet, then the upstream's responses, each
/// length-prefixed the same way (see the module documentation).
pub fn resolve_one(data: &[u8]) {
    let _ = resolve_reply(data);
}

/// [`resolve_one`], returning the reply.
fn resolve_reply(data: &[u8]) -> Option<Message> {
    let (&flags, rest) = data.split_first()?;
    let mut chunks = Vec::new();
    let mut rest = rest;
    while let [l0, l1, tail @ ..] = rest {
        let len = usize::from(u16::from_le_bytes([*l0, *l1])).min(tail.len());
        let (chunk, next) = tail.split_at(len);
        chunks.push(chunk.to_vec());
        rest = next;
    }
    if chunks.is_empty() {
        return None;
    }
    let packet = chunks.remove(0);
    let w = world();
    // One input at a time: the stand-in's script and the clock are the world's (tests run in
    // parallel threads).
    let _one = w.serial.lock().unwrap_or_else(PoisonError::into_inner);
    let tcp = flags & 1 != 0;
    let fe = &w.frontends[usize::from(flags >> 1 & 1)];
    w.clock.advance(Duration::from_secs(u64::from(flags >> 2)));
    *w.upstream.0.lock().unwrap_or_else(PoisonError::into_inner) = chunks.into();
    let mut out = Vec::new();
    let replayed = fe.replay(&packet, tcp, &mut out);
    let reply = if replayed {
        Some(out.clone())
    } else {
        // Bounded: the stand-in never waits, and a commit of new mappings takes a moment.
        w.rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), fe.answer(&packet, tcp))
                .await
                .expect("an answer within 10 s")
        })
    };
    w.upstream
        .0
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clear();
    let reply = reply?;
    let m = Message::from_vec(&reply).expect("every reply is a DNS message hickory reads back");
    assert_eq!(m.metadata.message_type, MessageType::Response);
    assert_eq!(
        reply.get(..2),
        packet.get(..2),
        "the reply carries the query's id"
    );
    if !tcp {
        // The size the query allowed (RFC 6891 §6.2.3: its EDNS size, at most ours, at least
        // 512), taken from the query: the harness once took it from the reply's OPT, which a
        // truncated reply then lacked (see `truncated_udp_replies`).
        let query_edns = Message::from_vec(&packet).ok().and_then(|q| q.edns);
        let limit = query_edns
            .as_ref()
            .map_or(512, |e| e.max_payload().clamp(512, PAYLOAD));
        assert!(
            reply.len() <= usize::from(limit),
            "a UDP reply fits the size its query allowed"
        );
        // RFC 6891 §7: a reply to a query with OPT carries OPT, truncated or not.
        if query_edns.is_some() {
            assert!(
                m.edns.is_some(),
                "a reply to a query with OPT has OPT: {m:?}"
            );
        }
    }
    if !replayed && fe.replay(&packet, tcp, &mut out) {
        assert_eq!(
            out, reply,
            "a replay of the query just answered is its reply"
        );
    }
    Some(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// The tests that use the `dns_resolve` world run one at a time, each after a day of its
    /// clock: its caches carry answers from one input to the next (as the daemon's do), so a
    /// seed's reply would otherwise depend on what another test's inputs left there (the
    /// corpus's `seed-synth-one` answers `seed-no-upstream`'s very question).
    fn fresh_world() -> std::sync::MutexGuard<'static, ()> {
        static ONE_TEST: Mutex<()> = Mutex::new(());
        let one = ONE_TEST.lock().unwrap_or_else(PoisonError::into_inner);
        world().clock.advance(Duration::from_secs(86_400));
        one
    }

    fn replay_corpus(target: &str, body: fn(&[u8])) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/corpus")
            .join(target);
        let mut n = 0;
        for f in std::fs::read_dir(&dir).expect("corpus directory") {
            body(&std::fs::read(f.expect("entry").path()).expect("corpus file"));
            n += 1;
        }
        assert!(n >= 3, "only {n} inputs in {}", dir.display());
    }

    /// fuzz/corpus/dns_fast replayed on stable.
    #[test]
    fn dns_fast_corpus_replays_without_panic() {
        replay_corpus("dns_fast", fast_one);
    }

    /// The stand-in's answers reach the rules: a seed's AAAA becomes a dummy A from the pool,
    /// a denied one none, and one without an upstream answer SERVFAIL.
    #[test]
    fn seeds_take_the_paths_they_are_named_for() {
        let _one = fresh_world();
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/dns_resolve");
        let seed = |name: &str| {
            resolve_reply(&std::fs::read(dir.join(name)).expect("seed")).expect("a reply")
        };
        let m = seed("seed-synth-three");
        let a: Vec<_> = m
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                hickory_proto::rr::RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect();
        assert_eq!(a.len(), 3, "{m:?}");
        assert!(a.iter().all(|a| a.octets()[..3] == [10, 170, 160]), "{a:?}");
        let m = seed("seed-denied");
        assert!(m.answers.is_empty(), "{m:?}");
        let m = seed("seed-no-upstream");
        assert_eq!(
            m.metadata.response_code,
            hickory_proto::op::ResponseCode::ServFail
        );
    }

    /// The first crash the fuzzer found (2026-12-06, in the harness's own property): a UDP
    /// answer too big for the size its query allows is truncated to fit, TC set, and when the
    /// last record that fits leaves less than the 11 bytes of an OPT record, hickory's encoder
    /// leaves OPT out; the harness took the limit from the reply's OPT, so 512. The seed: 40
    /// records for a query allowing 591 bytes, where the records that fit leave no room for OPT
    /// (`resolve_reply` asserts that the reply fits the 591).
    #[test]
    fn truncated_udp_replies() {
        let _one = fresh_world();
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/dns_resolve");
        let seed = std::fs::read(dir.join("regress-udp-591-truncated")).expect("seed");
        let m = resolve_reply(&seed).expect("a reply");
        assert!(m.metadata.truncation, "{m:?}");
        // And OPT is kept (RFC 6891 §7): the records that fit left no room for it, so the
        // reply is the minimal one, question and OPT.
        assert!(m.edns.is_some(), "{m:?}");
        assert_eq!((m.queries.len(), m.answers.len()), (1, 0), "{m:?}");
    }

    /// fuzz/corpus/dns_resolve replayed on stable.
    #[test]
    fn dns_resolve_corpus_replays_without_panic() {
        let _one = fresh_world();
        replay_corpus("dns_resolve", resolve_one);
    }
}
