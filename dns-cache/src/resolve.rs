//! The rules of DESIGN.md §5 (RFC 6535 ENR and RFC 6147 where it applies): what to answer for
//! one question, given the upstream resolvers, the answer cache and the mapping tables.
//!
//! Independent of the transport: [`crate::answer`] (behind the UDP listeners, the dns.sock
//! `DnsQuery` request and the hickory-server glue for TCP) turns a query into a [`Question`] and
//! the returned [`Answer`] into a message.
//!
//! An answer also says how long the very same answer may be replayed ([`Reuse`], defined in
//! [`crate::reuse`]): until the end of the current second of age of the upstream data it was
//! built from, so a replay has exactly the TTLs a fresh resolve would give. [`crate::replies`] keeps the encoded message for
//! that long; a synthesised answer's mapping is protected for that extra time as well, so an
//! address in a replayed answer is never one that was recycled in between.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, PTR};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use outsock_policy::{LogLimit, Policy};

use crate::cache::{aged, AnswerCache, CacheKey, Cached};
use crate::clock::UnixMillis;
use crate::mapping::{Allocation, Direction, MappingError};
use crate::metrics::{Metrics, QueryKind};
use crate::persist::{Mappings, PersistError};
use crate::quota::DummyQuota;
use crate::reuse::Reuse;
use crate::upstream::{Upstream, UpstreamError, UpstreamQuery};

/// The settings the rules depend on.
#[derive(Debug, Clone)]
pub struct ResolverConfig {
    /// The host has IPv4 egress: real A records are passed through (RFC 6535 §2.3).
    pub ipv4_egress: bool,
    /// Upper bound of a synthesised record's TTL, seconds.
    pub max_ttl: u32,
    /// Names (and their subdomains) whose A queries always go upstream unchanged.
    pub pass_through: Vec<Name>,
    /// Names (and their subdomains) for which no dummy is ever synthesised.
    pub never_synthesise: Vec<Name>,
    /// The zone of IPv6 literal names ([`literal_v6`]); `None`: none.
    pub ipv6_literal_suffix: Option<Name>,
    /// Which addresses may be handed to a guest: no dummy is synthesised for a refused AAAA,
    /// and a refused A is dropped from a pass-through answer.
    pub policy: Policy,
}

/// One question from a client.
#[derive(Debug, Clone)]
pub struct Question {
    /// Query name.
    pub name: Name,
    /// Query type.
    pub qtype: RecordType,
    /// Query class.
    pub qclass: DNSClass,
    /// The client set DO in EDNS.
    pub dnssec_ok: bool,
    /// The client set CD.
    pub checking_disabled: bool,
}

/// What to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Response code.
    pub rcode: ResponseCode,
    /// Answer section.
    pub answers: Vec<Record>,
    /// Authority section.
    pub authorities: Vec<Record>,
    /// AD bit: only ever copied from upstream for data passed through unchanged.
    pub authentic_data: bool,
    /// Whether, and until when, the same question may get this same answer again without
    /// resolving it (`None`: resolve every time).
    pub reuse: Option<Reuse>,
}

impl Answer {
    fn rcode(rcode: ResponseCode) -> Self {
        Self {
            rcode,
            answers: Vec::new(),
            authorities: Vec::new(),
            authentic_data: false,
            reuse: None,
        }
    }
}

/// What one resolve depended on, collected on the way.
#[derive(Debug)]
struct Trace {
    until: Option<UnixMillis>,
    replayable: bool,
    lookups: u8,
    synthesised: bool,
    passed_through: bool,
}

impl Trace {
    fn new() -> Self {
        Self {
            until: None,
            replayable: true,
            lookups: 0,
            synthesised: false,
            passed_through: false,
        }
    }

    /// The answer is valid no longer than `until`.
    fn valid_until(&mut self, until: UnixMillis) {
        self.until = Some(self.until.map_or(until, |u| u.min(until)));
    }

    /// The answer is built from `c` (an entry of the answer cache, or an uncached response).
    fn depends_on(&mut self, c: &Cached, now: UnixMillis) {
        self.lookups = self.lookups.saturating_add(1);
        match c.same_age_until(now) {
            Some(until) => self.valid_until(until),
            None => self.replayable = false,
        }
    }

    /// Time left, as of `now`, during which the answer may be replayed.
    fn horizon(&self, now: UnixMillis) -> Duration {
        match self.until {
            Some(u) if self.replayable => u.since(now),
            _ => Duration::ZERO,
        }
    }

    fn finish(&self) -> Option<Reuse> {
        let until = self.until.filter(|_| self.replayable)?;
        Some(Reuse {
            until,
            cache_lookups: self.lookups,
            synthesised: self.synthesised,
            passed_through: self.passed_through,
        })
    }
}

/// Why a question could not be answered from upstream data (each becomes SERVFAIL).
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// Upstream did not answer.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// Upstream answered with a failure code.
    #[error("upstream answered {0}")]
    UpstreamRcode(ResponseCode),
    /// No mapping could be made or committed.
    #[error(transparent)]
    Mapping(#[from] PersistError),
    /// The tenant spent its quota of new dummies (REFUSED, for that tenant only).
    #[error("{0} spent its quota of new dummies")]
    Quota(Arc<str>),
}

/// The resolver: rules + cache + upstream + mappings.
#[derive(Debug)]
pub struct Resolver {
    cfg: ResolverConfig,
    upstream: Arc<dyn Upstream>,
    cache: Mutex<AnswerCache>,
    mappings: Arc<Mappings>,
    metrics: Arc<Metrics>,
    /// New destination dummies per tenant ([`crate::quota`]); `None`: unlimited.
    quota: Option<DummyQuota>,
}

impl Resolver {
    /// Builds a resolver.
    pub fn new(
        cfg: ResolverConfig,
        upstream: Arc<dyn Upstream>,
        cache: AnswerCache,
        mappings: Arc<Mappings>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            cfg,
            upstream,
            cache: Mutex::new(cache),
            mappings,
            metrics,
            quota: None,
        }
    }

    /// The same resolver, charging new destination dummies to the tenant of the answering
    /// task ([`crate::quota::scope`]).
    #[must_use]
    pub fn with_quota(mut self, quota: DummyQuota) -> Self {
        self.quota = Some(quota);
        self
    }

    /// Charges the new addresses among `addrs` to the current tenant's quota.
    fn charge_new(&self, addrs: &[(Ipv6Addr, Option<&str>)]) -> Result<(), ResolveError> {
        let (Some(quota), Some(tenant)) = (&self.quota, crate::quota::current()) else {
            return Ok(());
        };
        let mut new: Vec<Ipv6Addr> = self.mappings.with_table(Direction::Synthesised, |t| {
            addrs
                .iter()
                .map(|(v6, _)| *v6)
                .filter(|v6| t.lookup_v6(*v6).is_none())
                .collect()
        });
        new.sort_unstable();
        new.dedup();
        let n = u64::try_from(new.len()).unwrap_or(u64::MAX);
        if n == 0 || quota.take(&tenant, n, self.mappings.now()) {
            return Ok(());
        }
        Metrics::inc(&self.metrics.quota_refused);
        Err(ResolveError::Quota(tenant))
    }

    /// The mapping tables.
    pub fn mappings(&self) -> &Arc<Mappings> {
        &self.mappings
    }

    /// The counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Empties the answer cache; returns how many entries it held.
    pub fn clear_cache(&self) -> usize {
        let mut cache = self.lock_cache();
        let n = cache.len();
        cache.clear();
        n
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, AnswerCache> {
        // The cache holds no invariant a panic could break halfway.
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Answers one question.
    pub async fn resolve(&self, q: &Question) -> Answer {
        Metrics::inc(&self.metrics.queries[QueryKind::of(q.qtype) as usize]);
        let mut trace = Trace::new();
        let result = if q.qclass != DNSClass::IN {
            self.forward(q, &mut trace).await
        } else {
            match q.qtype {
                RecordType::A => self.resolve_a(q, &mut trace).await,
                // The guest is IPv4-only: an AAAA answer would only mislead it. It depends on
                // nothing, so it may be replayed; for a second, like the others.
                RecordType::AAAA => {
                    trace.valid_until(self.mappings.now().plus(Duration::from_secs(1)));
                    Ok(Answer::rcode(ResponseCode::NoError))
                }
                RecordType::PTR => self.resolve_ptr(q, &mut trace).await,
                _ => self.forward(q, &mut trace).await,
            }
        };
        let answer = result
            .map(|mut a| {
                a.reuse = trace.finish();
                a
            })
            .unwrap_or_else(|error| {
                if let ResolveError::Mapping(PersistError::Mapping(MappingError::Exhausted(_))) =
                    error
                {
                    Metrics::inc(&self.metrics.exhausted);
                }
                if let ResolveError::Quota(tenant) = &error {
                    tracing::debug!(%tenant, name = %q.name, "quota of new dummies spent; REFUSED");
                    return Answer::rcode(ResponseCode::Refused);
                }
                tracing::debug!(%error, name = %q.name, qtype = %q.qtype, "answering SERVFAIL");
                Answer::rcode(ResponseCode::ServFail)
            });
        self.metrics.response(answer.rcode);
        answer
    }

    /// Why the destination policy refuses `v6` as a destination, if it does (for an
    /// operator's static mapping or allocation; not counted as an upstream refusal).
    #[must_use]
    pub fn refuses(&self, v6: Ipv6Addr) -> Option<&'static str> {
        self.cfg
            .policy
            .check(IpAddr::V6(v6))
            .err()
            .map(outsock_policy::Reason::as_str)
    }

    /// Whether the destination policy lets `addr` (from an upstream answer for `name`) reach a
    /// guest; a refusal is counted and logged (rate-limited).
    fn admits(&self, name: &Name, addr: IpAddr) -> bool {
        let Err(reason) = self.cfg.policy.check(addr) else {
            return true;
        };
        if let Some(c) = self.metrics.refused.get(reason.index()) {
            Metrics::inc(c);
        }
        static LOG: LogLimit = LogLimit::new();
        if LOG.allow() {
            tracing::warn!(
                %name,
                address = %addr,
                reason = reason.as_str(),
                "refused address in an upstream answer (destination policy)"
            );
        }
        false
    }

    /// Drops the A records the policy refuses from a passed-through answer (which is then no
    /// longer upstream's data, so loses AD); whether any A record is left.
    fn admit_a(&self, name: &Name, answer: &mut Answer) -> bool {
        let before = answer.answers.len();
        answer.answers.retain(|r| match &r.data {
            RData::A(a) => self.admits(name, IpAddr::V4(a.0)),
            _ => true,
        });
        if answer.answers.len() != before {
            answer.authentic_data = false;
        }
        answer
            .answers
            .iter()
            .any(|r| r.record_type() == RecordType::A)
    }

    fn matches(list: &[Name], name: &Name) -> bool {
        list.iter().any(|zone| zone.zone_of(name))
    }

    /// A cached or fresh upstream answer.
    async fn fetch(
        &self,
        uq: UpstreamQuery,
        trace: &mut Trace,
    ) -> Result<Arc<Cached>, ResolveError> {
        let key = CacheKey {
            name: uq.name.to_lowercase(),
            qtype: uq.qtype,
            qclass: uq.qclass,
            dnssec_ok: uq.dnssec_ok,
            checking_disabled: uq.checking_disabled,
        };
        let now = self.mappings.now();
        let hit = self.lock_cache().get(&key, now);
        if let Some(hit) = hit {
            Metrics::inc(&self.metrics.cache_hits);
            trace.depends_on(&hit, now);
            return Ok(hit);
        }
        Metrics::inc(&self.metrics.cache_misses);
        let started = Instant::now();
        let result = self.upstream.query(&uq).await;
        self.metrics.observe_upstream(started.elapsed());
        let message = result.inspect_err(|_| Metrics::inc(&self.metrics.upstream_errors))?;
        let now = self.mappings.now();
        let (entry, _) = self.lock_cache().insert(key, &message, now);
        trace.depends_on(&entry, now);
        Ok(entry)
    }

    /// Passes the question upstream and the answer back unchanged (TTLs counted down).
    async fn forward(&self, q: &Question, trace: &mut Trace) -> Result<Answer, ResolveError> {
        let c = self
            .fetch(
                UpstreamQuery {
                    name: q.name.clone(),
                    qtype: q.qtype,
                    qclass: q.qclass,
                    dnssec_ok: q.dnssec_ok,
                    checking_disabled: q.checking_disabled,
                },
                trace,
            )
            .await?;
        Metrics::inc(&self.metrics.passed_through);
        trace.passed_through = true;
        Ok(self.pass(&c, u32::MAX))
    }

    fn pass(&self, c: &Cached, cap: u32) -> Answer {
        let age = c.age(self.mappings.now());
        Answer {
            rcode: c.rcode,
            answers: c.answers.iter().map(|r| aged(r, age, cap)).collect(),
            authorities: c.authorities.iter().map(|r| aged(r, age, cap)).collect(),
            authentic_data: c.authentic_data,
            reuse: None,
        }
    }

    async fn resolve_a(&self, q: &Question, trace: &mut Trace) -> Result<Answer, ResolveError> {
        if let Some(zone) = &self.cfg.ipv6_literal_suffix {
            if zone.zone_of(&q.name) {
                return self.resolve_literal(q, zone, trace).await;
            }
        }
        // RFC 6147 §5.5: a validating client (CD and DO) gets the real answer, never ours.
        // A validating client gets upstream's data untouched (host-server still refuses the
        // addresses); a pass-through name loses the A records the policy refuses.
        if q.dnssec_ok && q.checking_disabled {
            return self.forward(q, trace).await;
        }
        if Self::matches(&self.cfg.pass_through, &q.name) {
            let mut answer = self.forward(q, trace).await?;
            self.admit_a(&q.name, &mut answer);
            return Ok(answer);
        }
        if self.cfg.ipv4_egress {
            let a = self
                .fetch(
                    UpstreamQuery {
                        name: q.name.clone(),
                        qtype: RecordType::A,
                        qclass: DNSClass::IN,
                        dnssec_ok: q.dnssec_ok,
                        checking_disabled: q.checking_disabled,
                    },
                    trace,
                )
                .await?;
            match a.rcode {
                ResponseCode::NoError if a.answers_of(RecordType::A).next().is_some() => {
                    let mut answer = self.pass(&a, u32::MAX);
                    if self.admit_a(&q.name, &mut answer) {
                        Metrics::inc(&self.metrics.passed_through);
                        trace.passed_through = true;
                        return Ok(answer);
                    }
                    // Every A record refused: as if the name had none; synthesise from AAAA.
                }
                ResponseCode::NXDomain => return Ok(self.pass(&a, u32::MAX)),
                ResponseCode::NoError => {}
                other => return Err(ResolveError::UpstreamRcode(other)),
            }
        }
        // RFC 6535 §2.3 / RFC 6147 §5.1: the AAAA look-up comes before any allocation.
        let aaaa = self
            .fetch(
                UpstreamQuery {
                    name: q.name.clone(),
                    qtype: RecordType::AAAA,
                    qclass: DNSClass::IN,
                    dnssec_ok: false,
                    checking_disabled: false,
                },
                trace,
            )
            .await?;
        let max = self.cfg.max_ttl;
        let age = aaaa.age(self.mappings.now());
        let chain = || -> Vec<Record> {
            aaaa.answers_of(RecordType::CNAME)
                .map(|r| aged(r, age, max))
                .collect()
        };
        let negative = |rcode| Answer {
            rcode,
            answers: chain(),
            authorities: aaaa
                .authorities
                .iter()
                .filter(|r| r.record_type() == RecordType::SOA)
                .map(|r| aged(r, age, u32::MAX))
                .collect(),
            authentic_data: false,
            reuse: None,
        };
        match aaaa.rcode {
            ResponseCode::NXDomain => return Ok(negative(ResponseCode::NXDomain)),
            ResponseCode::NoError => {}
            other => return Err(ResolveError::UpstreamRcode(other)),
        }
        let records: Vec<(Name, Ipv6Addr, u32)> = aaaa
            .answers_of(RecordType::AAAA)
            .filter_map(|r| match &r.data {
                RData::AAAA(v6) => Some((r.name.clone(), v6.0, r.ttl.saturating_sub(age).min(max))),
                _ => None,
            })
            .collect();
        if records.is_empty() || Self::matches(&self.cfg.never_synthesise, &q.name) {
            return Ok(negative(ResponseCode::NoError));
        }
        // RFC 6147 §5.1.4: no dummy for an excluded address; all excluded is NODATA.
        let mut records = records;
        records.retain(|(_, v6, _)| self.admits(&q.name, IpAddr::V6(*v6)));
        if records.is_empty() {
            return Ok(negative(ResponseCode::NoError));
        }
        let qname = q.name.to_lowercase().to_ascii();
        let owners: Vec<String> = records
            .iter()
            .map(|(owner, _, _)| owner.to_lowercase().to_ascii())
            .collect();
        let mut addrs: Vec<(Ipv6Addr, Option<&str>)> = records
            .iter()
            .zip(&owners)
            .map(|((_, v6, _), owner)| (*v6, Some(owner.as_str())))
            .collect();
        // The name asked for is remembered too when it reached the address through a CNAME.
        for ((_, v6, _), owner) in records.iter().zip(&owners) {
            if *owner != qname {
                addrs.push((*v6, Some(qname.as_str())));
            }
        }
        let ttl = records.iter().map(|r| r.2).min().unwrap_or(0);
        // A replay of this answer, up to the end of the horizon, hands out the same TTL: the
        // mapping must outlive the last one too.
        let horizon = trace.horizon(self.mappings.now());
        self.charge_new(&addrs)?;
        let results = self
            .mappings
            .map_durable(
                Direction::Synthesised,
                &addrs,
                Duration::from_secs(u64::from(ttl)) + horizon,
            )
            .await?;
        let mut answers = chain();
        for ((owner, _, ttl), r) in records.iter().zip(&results) {
            match r.allocation {
                Allocation::Fresh => Metrics::inc(&self.metrics.allocations),
                Allocation::Recycled { .. } => Metrics::inc(&self.metrics.recycles),
                Allocation::Existing => {}
            }
            answers.push(Record::from_rdata(owner.clone(), *ttl, RData::A(A(r.v4))));
        }
        Metrics::inc(&self.metrics.synthesised);
        trace.synthesised = true;
        // RFC 6147 §5.5: synthesised data is never marked authentic.
        Ok(Answer {
            rcode: ResponseCode::NoError,
            answers,
            authorities: Vec::new(),
            authentic_data: false,
            reuse: None,
        })
    }

    /// An A question for a name in the IPv6 literal zone: the dummy for the address the name
    /// spells ([`literal_v6`]), mapped as any synthesised address (the name remembered for
    /// PTR, the TTL `max_ttl`), never asked upstream. A name that spells no address is
    /// NXDOMAIN; an address the destination policy refuses gets no record (NODATA), as a refused
    /// AAAA does.
    async fn resolve_literal(
        &self,
        q: &Question,
        zone: &Name,
        trace: &mut Trace,
    ) -> Result<Answer, ResolveError> {
        // The answer allocates: resolve it every time, as names are remembered on the way.
        trace.replayable = false;
        let Some(v6) = literal_v6(&q.name, zone) else {
            return Ok(Answer::rcode(ResponseCode::NXDomain));
        };
        if !self.admits(&q.name, IpAddr::V6(v6)) {
            return Ok(Answer::rcode(ResponseCode::NoError));
        }
        let name = q.name.to_lowercase().to_ascii();
        let addrs = [(v6, Some(name.as_str()))];
        self.charge_new(&addrs)?;
        let ttl = self.cfg.max_ttl;
        let results = self
            .mappings
            .map_durable(
                Direction::Synthesised,
                &addrs,
                Duration::from_secs(u64::from(ttl)),
            )
            .await?;
        let Some(r) = results.first() else {
            return Err(ResolveError::UpstreamRcode(ResponseCode::ServFail));
        };
        match r.allocation {
            Allocation::Fresh => Metrics::inc(&self.metrics.allocations),
            Allocation::Recycled { .. } => Metrics::inc(&self.metrics.recycles),
            Allocation::Existing => {}
        }
        Metrics::inc(&self.metrics.synthesised);
        trace.synthesised = true;
        Ok(Answer {
            rcode: ResponseCode::NoError,
            answers: vec![Record::from_rdata(q.name.clone(), ttl, RData::A(A(r.v4)))],
            authorities: Vec::new(),
            authentic_data: false,
            reuse: None,
        })
    }

    async fn resolve_ptr(&self, q: &Question, trace: &mut Trace) -> Result<Answer, ResolveError> {
        let Some(v4) = in_addr_arpa(&q.name) else {
            return self.forward(q, trace).await;
        };
        let direction = [Direction::Synthesised, Direction::InboundPeer]
            .into_iter()
            .find(|d| self.mappings.with_table(*d, |t| t.prefix().contains(v4)));
        let Some(direction) = direction else {
            return self.forward(q, trace).await;
        };
        Metrics::inc(&self.metrics.ptr_local);
        // Names are added to a mapping as they are asked for: resolve these every time.
        trace.replayable = false;
        // Our own address space: never ask upstream about it, and never invent a name.
        let Some(m) = self.mappings.with_table(direction, |t| t.get(v4).cloned()) else {
            return Ok(Answer::rcode(ResponseCode::NXDomain));
        };
        // A static mapping without names: its IPv6 literal name, where there is one.
        let literal = match (&self.cfg.ipv6_literal_suffix, m.fixed && m.names.is_empty()) {
            (Some(zone), true) => literal_name(m.v6, zone),
            _ => None,
        };
        if !m.names.is_empty() || literal.is_some() {
            let answers = m
                .names
                .iter()
                .cloned()
                .chain(literal)
                .filter_map(|n| Name::from_ascii(n).ok())
                .map(|n| Record::from_rdata(q.name.clone(), self.cfg.max_ttl, RData::PTR(PTR(n))))
                .collect();
            return Ok(Answer {
                rcode: ResponseCode::NoError,
                answers,
                authorities: Vec::new(),
                authentic_data: false,
                reuse: None,
            });
        }
        // No name known (an inbound peer): the reverse look-up of the real address
        // (RFC 6535 §2.3.3), answered under the name that was asked.
        let c = self
            .fetch(
                UpstreamQuery {
                    name: Name::from(m.v6),
                    qtype: RecordType::PTR,
                    qclass: DNSClass::IN,
                    dnssec_ok: false,
                    checking_disabled: false,
                },
                trace,
            )
            .await?;
        let mut answer = self.pass(&c, self.cfg.max_ttl);
        answer.authentic_data = false;
        for r in &mut answer.answers {
            if r.record_type() == RecordType::PTR {
                r.name = q.name.clone();
            }
        }
        answer
            .answers
            .retain(|r| r.record_type() == RecordType::PTR);
        Ok(answer)
    }
}

/// The IPv6 address a literal name spells: one label right under `zone`, the address with a
/// dash for each colon (`2001-db8--10.ipv6.outsock.` is 2001:db8::10, as ipv6-literal.net
/// writes them); case does not matter. `None` for the zone itself, deeper names, zone indexes
/// (`s` suffixes) and anything that is not an address.
#[must_use]
pub fn literal_v6(name: &Name, zone: &Name) -> Option<Ipv6Addr> {
    if !zone.zone_of(name) || name.num_labels() != zone.num_labels() + 1 {
        return None;
    }
    let label = name.iter().next()?;
    let text = std::str::from_utf8(label).ok()?;
    // Only hex digits and dashes: nothing else may reach the address parser (a dotted IPv4
    // tail, a zone index).
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
        return None;
    }
    text.replace('-', ":").parse().ok()
}

/// The literal name of `v6` under `zone` (the inverse of [`literal_v6`]).
fn literal_name(v6: Ipv6Addr, zone: &Name) -> Option<String> {
    Some(format!(
        "{}.{}",
        v6.to_string().replace(':', "-"),
        zone.to_lowercase().to_ascii()
    ))
}

/// The IPv4 address of a full `d.c.b.a.in-addr.arpa.` name.
fn in_addr_arpa(name: &Name) -> Option<Ipv4Addr> {
    let net = name.parse_arpa_name().ok()?;
    match net.addr() {
        IpAddr::V4(v4) if net.prefix_len() == 32 => Some(v4),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{ManualClock, UnixMillis};
    use crate::mapping::MappingTable;
    use crate::store::Store;
    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    use hickory_proto::rr::rdata::{AAAA, CNAME, SOA};
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Canned upstream answers keyed by (name, type); anything else is NXDOMAIN with an SOA.
    #[derive(Debug, Default)]
    struct Fake {
        records: HashMap<(String, RecordType), Vec<Record>>,
        fail: bool,
        ad: bool,
        calls: AtomicUsize,
    }

    fn n(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    impl Fake {
        fn add(&mut self, name: &str, ttl: u32, data: RData) {
            let rt = data.record_type();
            self.records
                .entry((name.to_owned(), rt))
                .or_default()
                .push(Record::from_rdata(n(name), ttl, data));
        }
        fn exists(&self, name: &str) -> bool {
            self.records.keys().any(|(k, _)| k == name)
        }
    }

    #[async_trait::async_trait]
    impl Upstream for Fake {
        async fn query(&self, q: &UpstreamQuery) -> Result<Message, UpstreamError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.fail {
                return Err(UpstreamError::NoServers);
            }
            let mut m = Message::new(1, MessageType::Response, OpCode::Query);
            m.metadata.authentic_data = self.ad;
            m.add_query(Query::query(q.name.clone(), q.qtype));
            let mut name = q.name.to_ascii();
            // Follow CNAMEs like a recursive resolver would.
            while let Some(c) = self.records.get(&(name.clone(), RecordType::CNAME)) {
                m.add_answers(c.clone());
                let RData::CNAME(t) = &c[0].data else {
                    unreachable!()
                };
                name = t.0.to_ascii();
            }
            match self.records.get(&(name.clone(), q.qtype)) {
                Some(rs) => {
                    m.add_answers(rs.clone());
                }
                None => {
                    if !self.exists(&name) {
                        m.metadata.response_code = ResponseCode::NXDomain;
                    }
                    m.add_authority(Record::from_rdata(
                        n("test."),
                        300,
                        RData::SOA(SOA::new(n("ns.test."), n("h.test."), 1, 2, 3, 4, 60)),
                    ));
                }
            }
            Ok(m)
        }
    }

    fn world() -> Fake {
        let mut f = Fake::default();
        f.add(
            "v6only.test.",
            300,
            RData::AAAA(AAAA("2001:db8::1".parse().unwrap())),
        );
        for i in 1..=3 {
            f.add(
                "multi.test.",
                300,
                RData::AAAA(AAAA(format!("2001:db8::10{i}").parse().unwrap())),
            );
        }
        f.add("alias.test.", 300, RData::CNAME(CNAME(n("v6only.test."))));
        f.add(
            "dual.test.",
            300,
            RData::A(A("203.0.113.10".parse().unwrap())),
        );
        f.add(
            "dual.test.",
            300,
            RData::AAAA(AAAA("2001:db8::2".parse().unwrap())),
        );
        f.add(
            "v4only.test.",
            300,
            RData::A(A("203.0.113.20".parse().unwrap())),
        );
        f.add(
            "long.test.",
            86_400,
            RData::AAAA(AAAA("2001:db8::3".parse().unwrap())),
        );
        f
    }

    fn resolver_with(fake: Fake, egress: bool, pool: &str) -> (Resolver, Arc<Fake>) {
        let (r, fake, _) = resolver_with_clock(fake, egress, pool);
        (r, fake)
    }

    fn resolver_with_clock(
        fake: Fake,
        egress: bool,
        pool: &str,
    ) -> (Resolver, Arc<Fake>, Arc<ManualClock>) {
        let fake = Arc::new(fake);
        let clock = Arc::new(ManualClock::new(UnixMillis(1_700_000_000_000)));
        let mappings = Mappings::start(
            Store::open_in_memory().unwrap(),
            MappingTable::new(
                pool.parse().unwrap(),
                Direction::Synthesised,
                Duration::from_secs(60),
            ),
            MappingTable::new(
                "172.21.112.0/20".parse().unwrap(),
                Direction::InboundPeer,
                Duration::from_secs(60),
            ),
            Arc::clone(&clock) as Arc<dyn crate::clock::Clock>,
        )
        .unwrap();
        let r = Resolver::new(
            ResolverConfig {
                ipv4_egress: egress,
                max_ttl: 600,
                pass_through: vec![n("pass.test.")],
                never_synthesise: vec![n("never.test.")],
                ipv6_literal_suffix: Some(n("ipv6.outsock.")),
                policy: test_policy(),
            },
            fake.clone(),
            AnswerCache::new(1000, 86_400, 300),
            mappings,
            Arc::new(Metrics::default()),
        );
        (r, fake, clock)
    }

    /// The default policy, with `2001:db8::abcd` standing for the host's own address and
    /// `2001:db8:dead::/48` (and 198.51.100.0/24) denied by the operator.
    fn test_policy() -> Policy {
        let pools = vec![
            "10.170.160.0/20".parse().unwrap(),
            "172.21.112.0/20".parse().unwrap(),
        ];
        let rules = outsock_policy::DestinationSettings {
            deny: vec!["2001:db8:dead::/48".into(), "198.51.100.0/24".into()],
            allow: Vec::new(),
        }
        .check(&pools)
        .unwrap();
        let host = outsock_policy::HostAddresses::fixed(["2001:db8::abcd".parse().unwrap()]);
        Policy::new(rules, pools, host)
    }

    fn resolver() -> (Resolver, Arc<Fake>) {
        resolver_with(world(), false, "10.170.160.0/20")
    }

    fn q(name: &str, qtype: RecordType) -> Question {
        Question {
            name: n(name),
            qtype,
            qclass: DNSClass::IN,
            dnssec_ok: false,
            checking_disabled: false,
        }
    }

    fn ptr_names(a: &Answer) -> Vec<String> {
        a.answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::PTR(p) => Some(p.0.to_ascii()),
                _ => None,
            })
            .collect()
    }

    fn a_records(a: &Answer) -> Vec<Ipv4Addr> {
        a.answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn synthesises_stable_dummies_without_ad() {
        let mut f = world();
        f.ad = true;
        let (r, fake) = resolver_with(f, false, "10.170.160.0/20");
        let a = r.resolve(&q("v6only.test.", RecordType::A)).await;
        assert_eq!(a.rcode, ResponseCode::NoError);
        assert!(!a.authentic_data);
        assert_eq!(a_records(&a), vec![Ipv4Addr::new(10, 170, 160, 2)]);
        let again = r.resolve(&q("v6only.test.", RecordType::A)).await;
        assert_eq!(a_records(&again), a_records(&a));
        // The second answer came from the cache.
        assert_eq!(fake.calls.load(Ordering::SeqCst), 1);
    }

    /// IPv6 literal names: the dummy for the address the name spells, never asked upstream,
    /// the name given back for PTR; malformed names NXDOMAIN, refused addresses NODATA.
    #[tokio::test]
    async fn ipv6_literal_names() {
        let (r, fake) = resolver_with(world(), false, "10.170.160.0/20");
        let a = r
            .resolve(&q("2001-DB8--10.ipv6.outsock.", RecordType::A))
            .await;
        assert_eq!(a.rcode, ResponseCode::NoError);
        let dummy = a_records(&a);
        assert_eq!(dummy.len(), 1);
        assert_eq!(a.answers[0].ttl, 600);
        let m = r
            .mappings()
            .with_table(Direction::Synthesised, |t| t.get(dummy[0]).cloned())
            .unwrap();
        assert_eq!(m.v6, "2001:db8::10".parse::<Ipv6Addr>().unwrap());
        // The same address by another spelling: the same dummy.
        let again = r
            .resolve(&q("2001-0db8-0-0-0-0-0-10.ipv6.outsock.", RecordType::A))
            .await;
        assert_eq!(a_records(&again), dummy);
        let ptr = r.resolve(&q(&arpa(dummy[0]), RecordType::PTR)).await;
        let names = ptr_names(&ptr);
        assert!(
            names.contains(&"2001-db8--10.ipv6.outsock.".to_owned()),
            "{names:?}"
        );
        // Names as they come off the wire: labels may start with a dash (`--1` is ::1), which
        // Name::from_ascii would refuse.
        let wire = |name: &str| {
            let mut n =
                Name::from_labels(name.split('.').filter(|l| !l.is_empty()).map(str::as_bytes))
                    .unwrap();
            n.set_fqdn(true);
            Question {
                name: n,
                ..q("x.", RecordType::A)
            }
        };
        for bad in [
            "ipv6.outsock.",
            "zz--1.ipv6.outsock.",
            "1-2-3.ipv6.outsock.",
            "a.2001-db8--10.ipv6.outsock.",
            "fe80--1s1.ipv6.outsock.",
            "--ffff-192.0.2.1.ipv6.outsock.",
        ] {
            let a = r.resolve(&wire(bad)).await;
            assert_eq!(a.rcode, ResponseCode::NXDomain, "{bad}");
        }
        // Loopback and a denied prefix: the policy holds, no record.
        for refused in ["--1.ipv6.outsock.", "2001-db8-dead--1.ipv6.outsock."] {
            let a = r.resolve(&wire(refused)).await;
            assert_eq!(a.rcode, ResponseCode::NoError, "{refused}");
            assert!(a_records(&a).is_empty(), "{refused}");
        }
        assert_eq!(
            fake.calls.load(Ordering::SeqCst),
            0,
            "nothing went upstream"
        );
        // A static mapping: its configured names for PTR, or without any its literal name.
        let named: Ipv4Addr = "10.170.175.10".parse().unwrap();
        let bare: Ipv4Addr = "10.170.175.11".parse().unwrap();
        let v6 = |s: &str| s.parse::<Ipv6Addr>().unwrap();
        r.mappings()
            .set_static(named, v6("2001:db8::20"), &["db.example.".into()])
            .await
            .unwrap();
        r.mappings()
            .set_static(bare, v6("2001:db8::21"), &[])
            .await
            .unwrap();
        for (dummy, want) in [(named, "db.example."), (bare, "2001-db8--21.ipv6.outsock.")] {
            let ptr = r.resolve(&q(&arpa(dummy), RecordType::PTR)).await;
            let names = ptr_names(&ptr);
            assert_eq!(names, [want], "{dummy}");
        }
    }

    /// New dummies are charged to the answering task's tenant: beyond its quota it gets
    /// REFUSED, another tenant and answers without new addresses are untouched.
    #[tokio::test]
    async fn quota_of_new_dummies_per_tenant() {
        let (r, _, clock) = resolver_with_clock(world(), false, "10.170.160.0/20");
        let r = r.with_quota(crate::quota::DummyQuota::new(3));
        let a: Arc<str> = Arc::from("vm:a");
        let b: Arc<str> = Arc::from("uid:1000");
        let ask = |t: &Arc<str>, name: &'static str| {
            let t = Arc::clone(t);
            let r = &r;
            async move { crate::quota::scope(t, r.resolve(&q(name, RecordType::A))).await }
        };
        // Three new addresses: the whole minute's quota.
        assert_eq!(ask(&a, "multi.test.").await.rcode, ResponseCode::NoError);
        let refused = ask(&a, "v6only.test.").await;
        assert_eq!(refused.rcode, ResponseCode::Refused);
        assert!(refused.reuse.is_none(), "a refusal must never be replayed");
        assert_eq!(r.metrics().quota_refused.load(Ordering::SeqCst), 1);
        // Known addresses cost nothing.
        assert_eq!(ask(&a, "multi.test.").await.rcode, ResponseCode::NoError);
        // Another tenant has its own quota; once it made the mapping, A may use it.
        assert_eq!(ask(&b, "v6only.test.").await.rcode, ResponseCode::NoError);
        assert_eq!(ask(&a, "v6only.test.").await.rcode, ResponseCode::NoError);
        // Twenty seconds later A has one again.
        clock.advance(Duration::from_secs(20));
        assert_eq!(ask(&a, "long.test.").await.rcode, ResponseCode::NoError);
        // Outside any tenant's scope nothing is charged.
        assert_eq!(
            r.resolve(&q("dual.test.", RecordType::A)).await.rcode,
            ResponseCode::NoError
        );
    }

    #[tokio::test]
    async fn n_aaaa_give_n_distinct_a() {
        let (r, _) = resolver();
        let a = r.resolve(&q("multi.test.", RecordType::A)).await;
        let mut v4 = a_records(&a);
        v4.dedup();
        assert_eq!(v4.len(), 3);
    }

    #[tokio::test]
    async fn cname_chain_is_returned_and_names_remembered() {
        let (r, _) = resolver();
        let a = r.resolve(&q("alias.test.", RecordType::A)).await;
        assert_eq!(a.answers[0].record_type(), RecordType::CNAME);
        assert_eq!(a.answers[1].name, n("v6only.test."));
        let v4 = a_records(&a)[0];
        let ptr = r.resolve(&q(&arpa(v4), RecordType::PTR)).await;
        let names = ptr_names(&ptr);
        assert_eq!(names, vec!["v6only.test.", "alias.test."]);
    }

    fn arpa(v4: Ipv4Addr) -> String {
        let o = v4.octets();
        format!("{}.{}.{}.{}.in-addr.arpa.", o[3], o[2], o[1], o[0])
    }

    #[tokio::test]
    async fn negative_answers_stay_negative() {
        let (r, _) = resolver();
        let nx = r.resolve(&q("missing.test.", RecordType::A)).await;
        assert_eq!(nx.rcode, ResponseCode::NXDomain);
        assert_eq!(nx.authorities[0].record_type(), RecordType::SOA);
        let nodata = r.resolve(&q("v4only.test.", RecordType::A)).await;
        assert_eq!(nodata.rcode, ResponseCode::NoError);
        assert!(nodata.answers.is_empty());
        let aaaa = r.resolve(&q("v6only.test.", RecordType::AAAA)).await;
        assert_eq!(
            (aaaa.rcode, aaaa.answers.len(), aaaa.authorities.len()),
            (ResponseCode::NoError, 0, 0)
        );
        let ptr = r
            .resolve(&q("77.160.170.10.in-addr.arpa.", RecordType::PTR))
            .await;
        assert_eq!(ptr.rcode, ResponseCode::NXDomain);
    }

    #[tokio::test]
    async fn ipv4_egress_passes_real_a_through() {
        let (off, _) = resolver();
        let a = off.resolve(&q("dual.test.", RecordType::A)).await;
        assert!(off.mappings().with_table(Direction::Synthesised, |t| t
            .prefix()
            .contains(a_records(&a)[0])));
        let (on, _) = resolver_with(world(), true, "10.170.160.0/20");
        let a = on.resolve(&q("dual.test.", RecordType::A)).await;
        assert_eq!(a_records(&a), vec![Ipv4Addr::new(203, 0, 113, 10)]);
        let a = on.resolve(&q("v6only.test.", RecordType::A)).await;
        assert_eq!(a_records(&a), vec![Ipv4Addr::new(10, 170, 160, 2)]);
    }

    #[tokio::test]
    async fn excluded_aaaa_get_no_dummy_and_all_excluded_is_nodata() {
        let mut f = world();
        let excluded = [
            ("loop.test.", "::1", "loopback"),
            ("unspec.test.", "::", "unspecified"),
            ("ll.test.", "fe80::1", "link_local"),
            ("mcast.test.", "ff02::1", "multicast"),
            ("mapped.test.", "::ffff:203.0.113.5", "ipv4_mapped"),
            ("compat.test.", "::203.0.113.5", "ipv4_mapped"),
            ("self.test.", "2001:db8::abcd", "host_address"),
            ("denied.test.", "2001:db8:dead::1", "denied"),
        ];
        for (name, v6, _) in excluded {
            f.add(name, 300, RData::AAAA(AAAA(v6.parse().unwrap())));
        }
        f.add(
            "mixed.test.",
            300,
            RData::AAAA(AAAA("::1".parse().unwrap())),
        );
        f.add(
            "mixed.test.",
            300,
            RData::AAAA(AAAA("fd00:64::80".parse().unwrap())),
        );
        let (r, _) = resolver_with(f, false, "10.170.160.0/20");
        for (name, v6, reason) in excluded {
            let a = r.resolve(&q(name, RecordType::A)).await;
            assert_eq!(
                (a.rcode, a_records(&a)),
                (ResponseCode::NoError, vec![]),
                "{name} {v6}"
            );
            let page = r.metrics().render(r.mappings());
            assert!(
                !page.contains(&format!(
                    "outsock_dns_refused_addresses_total{{reason=\"{reason}\"}} 0\n"
                )),
                "{reason}: {page}"
            );
        }
        // No mapping was made for any of them.
        assert_eq!(
            r.mappings().with_table(Direction::Synthesised, |t| t.len()),
            0
        );
        // A name with one excluded and one allowed address gets one dummy.
        let a = r.resolve(&q("mixed.test.", RecordType::A)).await;
        assert_eq!(a_records(&a).len(), 1);
        let a = r.resolve(&q("v6only.test.", RecordType::A)).await;
        assert_eq!(a_records(&a).len(), 1);
    }

    #[tokio::test]
    async fn ipv4_egress_drops_excluded_a_records() {
        let mut f = world();
        f.add("lo4.test.", 300, RData::A(A("127.0.0.1".parse().unwrap())));
        f.add(
            "ll4.test.",
            300,
            RData::A(A("169.254.1.1".parse().unwrap())),
        );
        f.add(
            "pool4.test.",
            300,
            RData::A(A("10.170.160.9".parse().unwrap())),
        );
        f.add(
            "deny4.test.",
            300,
            RData::A(A("198.51.100.7".parse().unwrap())),
        );
        f.add(
            "both4.test.",
            300,
            RData::A(A("127.0.0.1".parse().unwrap())),
        );
        f.add(
            "both4.test.",
            300,
            RData::A(A("203.0.113.9".parse().unwrap())),
        );
        // Every A refused, but an AAAA: synthesised as if there were no A.
        f.add(
            "fallback.test.",
            300,
            RData::A(A("127.0.0.1".parse().unwrap())),
        );
        f.add(
            "fallback.test.",
            300,
            RData::AAAA(AAAA("2001:db8::7".parse().unwrap())),
        );
        f.add("pass.test.", 300, RData::A(A("127.0.0.1".parse().unwrap())));
        let (r, _) = resolver_with(f, true, "10.170.160.0/20");
        for name in ["lo4.test.", "ll4.test.", "pool4.test.", "deny4.test."] {
            let a = r.resolve(&q(name, RecordType::A)).await;
            assert_eq!(
                (a.rcode, a_records(&a)),
                (ResponseCode::NoError, vec![]),
                "{name}"
            );
        }
        let a = r.resolve(&q("both4.test.", RecordType::A)).await;
        assert_eq!(a_records(&a), vec![Ipv4Addr::new(203, 0, 113, 9)]);
        let a = r.resolve(&q("fallback.test.", RecordType::A)).await;
        assert_eq!(a_records(&a), vec![Ipv4Addr::new(10, 170, 160, 2)]);
        // A pass-through name loses the refused A records too.
        let a = r.resolve(&q("pass.test.", RecordType::A)).await;
        assert!(a_records(&a).is_empty());
        let page = r.metrics().render(r.mappings());
        assert!(
            page.contains("outsock_dns_refused_addresses_total{reason=\"loopback\"} 4\n"),
            "{page}"
        );
        assert!(
            page.contains("outsock_dns_refused_addresses_total{reason=\"pool\"} 1\n"),
            "{page}"
        );
    }

    #[tokio::test]
    async fn ttl_is_clamped() {
        let (r, _) = resolver();
        let a = r.resolve(&q("long.test.", RecordType::A)).await;
        assert_eq!(a.answers[0].ttl, 600);
    }

    #[tokio::test]
    async fn cd_and_do_get_no_synthesis() {
        let (r, _) = resolver();
        let mut question = q("v6only.test.", RecordType::A);
        question.dnssec_ok = true;
        question.checking_disabled = true;
        let a = r.resolve(&question).await;
        assert!(a_records(&a).is_empty());
    }

    #[tokio::test]
    async fn filters_apply() {
        let mut f = world();
        f.add(
            "x.never.test.",
            300,
            RData::AAAA(AAAA("2001:db8::9".parse().unwrap())),
        );
        f.add(
            "pass.test.",
            300,
            RData::AAAA(AAAA("2001:db8::8".parse().unwrap())),
        );
        let (r, _) = resolver_with(f, false, "10.170.160.0/20");
        let a = r.resolve(&q("x.never.test.", RecordType::A)).await;
        assert_eq!((a.rcode, a.answers.len()), (ResponseCode::NoError, 0));
        let a = r.resolve(&q("pass.test.", RecordType::A)).await;
        assert_eq!((a.rcode, a.answers.len()), (ResponseCode::NoError, 0));
    }

    #[tokio::test]
    async fn answers_too_big_for_udp_are_truncated_and_whole_over_tcp() {
        let mut f = world();
        for i in 0..60 {
            f.add(
                "big.test.",
                300,
                RData::AAAA(AAAA(format!("2001:db8::b:{i:x}").parse().unwrap())),
            );
        }
        let (r, _) = resolver_with(f, false, "10.170.160.0/20");
        let mut query = Message::new(0x1234, MessageType::Query, OpCode::Query);
        query.add_query(Query::query(n("big.test."), RecordType::A));
        let bytes = query.to_vec().unwrap();
        let udp = crate::answer::answer_packet(&r, &bytes, false, 1232)
            .await
            .unwrap();
        assert!(udp.len() <= 512);
        let udp = Message::from_vec(&udp).unwrap();
        assert!(udp.metadata.truncation);
        let tcp = crate::answer::answer_packet(&r, &bytes, true, 1232)
            .await
            .unwrap();
        let tcp = Message::from_vec(&tcp).unwrap();
        assert!(!tcp.metadata.truncation);
        assert_eq!(tcp.answers.len(), 60);
        // Garbage after a valid header gets FORMERR with the same id.
        let mut bad = bytes[..12].to_vec();
        bad.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        let formerr = crate::answer::answer_packet(&r, &bad, false, 1232)
            .await
            .unwrap();
        let formerr = Message::from_vec(&formerr).unwrap();
        assert_eq!(formerr.metadata.id, 0x1234);
        assert_eq!(formerr.metadata.response_code, ResponseCode::FormErr);
        assert!(crate::answer::answer_packet(&r, &bytes[..5], false, 1232)
            .await
            .is_none());
    }

    #[tokio::test]
    async fn upstream_failure_and_exhaustion_are_servfail() {
        let mut f = world();
        f.fail = true;
        let (r, _) = resolver_with(f, false, "10.170.160.0/20");
        let a = r.resolve(&q("v6only.test.", RecordType::A)).await;
        assert_eq!(a.rcode, ResponseCode::ServFail);
        // A /29 has 5 addresses after the DNS address; 6 live names do not fit.
        let mut f = world();
        for i in 0..6 {
            f.add(
                &format!("h{i}.test."),
                300,
                RData::AAAA(AAAA(format!("2001:db8::f{i}").parse().unwrap())),
            );
        }
        let (r, _) = resolver_with(f, false, "10.170.160.0/29");
        for i in 0..5 {
            let a = r.resolve(&q(&format!("h{i}.test."), RecordType::A)).await;
            assert_eq!(a.rcode, ResponseCode::NoError);
        }
        let a = r.resolve(&q("h5.test.", RecordType::A)).await;
        assert_eq!(a.rcode, ResponseCode::ServFail);
    }

    fn packet(id: u16, name: &str, qtype: RecordType) -> Vec<u8> {
        let mut m = Message::new(id, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = id % 2 == 0;
        m.add_query(Query::query(n(name), qtype));
        let mut e = hickory_proto::op::Edns::new();
        e.set_max_payload(1232);
        m.set_edns(e);
        m.to_vec().unwrap()
    }

    #[tokio::test]
    async fn replays_are_the_answers_a_resolve_gives_for_the_rest_of_the_second() {
        use crate::answer::answer_packet;
        use crate::frontend::Frontend;
        use std::sync::atomic::Ordering::Relaxed;
        let (r, fake, clock) = resolver_with_clock(world(), false, "10.170.160.0/20");
        let r = Arc::new(r);
        let front = Frontend::new(Arc::clone(&r), 1232, 100);
        let cases = [
            ("v6only.test.", RecordType::A),
            ("multi.test.", RecordType::A),
            ("alias.test.", RecordType::A),
            ("missing.test.", RecordType::A),
            ("v4only.test.", RecordType::A),
            ("v6only.test.", RecordType::AAAA),
            ("dual.test.", RecordType::MX),
        ];
        for (name, qtype) in cases {
            front.answer(&packet(1, name, qtype), false).await.unwrap();
        }
        let calls = fake.calls.load(Ordering::SeqCst);
        clock.advance(Duration::from_millis(600));
        for (name, qtype) in cases {
            let ask = packet(2, name, qtype);
            let mut out = Vec::new();
            let replayed_before = r.metrics().replayed.load(Relaxed);
            assert!(front.replay(&ask, false, &mut out), "{name} {qtype}");
            assert_eq!(r.metrics().replayed.load(Relaxed), replayed_before + 1);
            // Byte for byte what the full path answers now, id and RD included.
            let fresh = answer_packet(&r, &ask, false, 1232).await.unwrap();
            assert_eq!(out, fresh, "{name} {qtype}");
            // Another spelling of the name gets its own spelling back, same records.
            let shouted = packet(3, &name.to_uppercase(), qtype);
            assert!(front.replay(&shouted, false, &mut out));
            let fresh = answer_packet(&r, &shouted, false, 1232).await.unwrap();
            let (a, b) = (
                Message::from_vec(&out).unwrap(),
                Message::from_vec(&fresh).unwrap(),
            );
            assert_eq!(a.metadata, b.metadata);
            assert_eq!(a.queries[0].name().to_ascii(), name.to_uppercase());
            assert_eq!((a.answers, a.authorities), (b.answers, b.authorities));
        }
        assert_eq!(
            fake.calls.load(Ordering::SeqCst),
            calls,
            "no upstream query"
        );
        // The mapping is protected for the TTL plus the time the answer may be replayed.
        let v6: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let m = r.mappings().with_table(Direction::Synthesised, |t| {
            t.get(t.lookup_v6(v6).unwrap()).cloned().unwrap()
        });
        assert_eq!(m.expires, UnixMillis(1_700_000_000_000 + 301_000));
        // A second of age later every reply must be built again.
        clock.advance(Duration::from_millis(400));
        let mut out = Vec::new();
        for (name, qtype) in cases {
            assert!(!front.replay(&packet(2, name, qtype), false, &mut out));
        }
        // TCP has its own entries (no truncation); PTR of a dummy is never replayed.
        assert!(!front.replay(&packet(2, "v6only.test.", RecordType::A), true, &mut out));
        let ptr = packet(2, "2.160.170.10.in-addr.arpa.", RecordType::PTR);
        front.answer(&ptr, false).await.unwrap();
        assert!(!front.replay(&ptr, false, &mut out));
        // Flush empties both caches.
        front
            .answer(&packet(2, "v6only.test.", RecordType::A), false)
            .await;
        assert!(front.replay(&packet(2, "v6only.test.", RecordType::A), false, &mut out));
        front.clear_caches();
        assert!(!front.replay(&packet(2, "v6only.test.", RecordType::A), false, &mut out));
    }

    #[tokio::test]
    async fn failures_are_never_replayed() {
        let mut f = world();
        f.fail = true;
        let (r, _) = resolver_with(f, false, "10.170.160.0/20");
        let a = r.resolve(&q("v6only.test.", RecordType::A)).await;
        assert_eq!((a.rcode, a.reuse), (ResponseCode::ServFail, None));
    }
}
