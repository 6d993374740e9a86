//! Counters and gauges in Prometheus text format, served by a tiny HTTP responder on a local
//! TCP address.
//!
//! Hand-written rather than a metrics crate: a dozen atomics and one format function are all
//! the design asks for, and the responder only ever answers `GET` with the same page.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

use crate::mapping::Direction;
use crate::persist::Mappings;
use crate::reuse::Reuse;
use crate::store::Fault;

/// Upper bounds (seconds) of the upstream latency histogram buckets.
const LATENCY_BUCKETS: [f64; 8] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0];

/// Why the metrics endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The address could not be bound.
    #[error("cannot listen for metrics on {addr}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Every counter dns-cache keeps.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Queries by type: A, AAAA, PTR, other.
    pub queries: [AtomicU64; 4],
    /// Responses by code: NOERROR, NXDOMAIN, SERVFAIL, FORMERR/other.
    pub responses: [AtomicU64; 4],
    /// A answers synthesised from AAAA.
    pub synthesised: AtomicU64,
    /// Answers passed through from upstream unchanged.
    pub passed_through: AtomicU64,
    /// PTR answers for dummy addresses.
    pub ptr_local: AtomicU64,
    /// Answer cache hits.
    pub cache_hits: AtomicU64,
    /// Answer cache misses (upstream queries).
    pub cache_misses: AtomicU64,
    /// New mappings (fresh addresses).
    pub allocations: AtomicU64,
    /// Mappings recycled (LRU past grace).
    pub recycles: AtomicU64,
    /// Allocations refused because the pool was full.
    pub exhausted: AtomicU64,
    /// Upstream queries that failed.
    pub upstream_errors: AtomicU64,
    /// Replies sent from the reply cache (also counted as queries and responses).
    pub replayed: AtomicU64,
    /// UDP queries dropped because too many were already waiting on upstream or the database.
    pub udp_dropped: AtomicU64,
    /// Upstream addresses (AAAA, or A passed through) the destination policy refused, by
    /// `outsock_policy::Reason::index`.
    pub refused: [AtomicU64; outsock_policy::Reason::ALL.len()],
    /// dns.sock requests refused by the peer's SO_PEERCRED uid: look-ups, operators' (List,
    /// Stats), admins' (Flush).
    pub lookup_refused: [AtomicU64; 3],
    /// Queries REFUSED because the client is neither loopback nor in `allow_clients`.
    pub refused_clients: AtomicU64,
    /// Answers REFUSED because the tenant spent its quota of new dummies.
    pub quota_refused: AtomicU64,
    /// Source dummies taken over inside a /64 at its `source_dummies_per_64` cap.
    pub prefix_reused: AtomicU64,
    /// Source dummies refused because every dummy of the /64 at its cap was pinned.
    pub prefix_full: AtomicU64,
    /// dns.sock requests answered Busy: the tenant had too many queued on the connection.
    pub lookup_busy: AtomicU64,
    /// Accepts on dns.sock that failed (the listener backs off on EMFILE/ENFILE).
    pub accept_errors: AtomicU64,
    /// Upstream latency histogram: counts per bucket (cumulative at render time), plus +Inf.
    upstream_buckets: [AtomicU64; 9],
    upstream_sum_us: AtomicU64,
    upstream_count: AtomicU64,
}

/// Index into [`Metrics::queries`].
#[derive(Debug, Clone, Copy)]
pub enum QueryKind {
    /// A.
    A = 0,
    /// AAAA.
    Aaaa = 1,
    /// PTR.
    Ptr = 2,
    /// Anything else.
    Other = 3,
}

impl QueryKind {
    /// The kind of a query type.
    pub fn of(qtype: RecordType) -> Self {
        match qtype {
            RecordType::A => QueryKind::A,
            RecordType::AAAA => QueryKind::Aaaa,
            RecordType::PTR => QueryKind::Ptr,
            _ => QueryKind::Other,
        }
    }
}

impl Metrics {
    /// Adds one to a counter.
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a response by its code.
    pub fn response(&self, rcode: ResponseCode) {
        let slot = match rcode {
            ResponseCode::NoError => 0,
            ResponseCode::NXDomain => 1,
            ResponseCode::ServFail => 2,
            _ => 3,
        };
        Self::inc(&self.responses[slot]);
    }

    /// Counts a reply replayed from the reply cache as the resolve it stands for would have.
    pub fn replayed(&self, qtype: RecordType, rcode: ResponseCode, reuse: &Reuse) {
        Self::inc(&self.replayed);
        Self::inc(&self.queries[QueryKind::of(qtype) as usize]);
        self.cache_hits
            .fetch_add(u64::from(reuse.cache_lookups), Ordering::Relaxed);
        if reuse.synthesised {
            Self::inc(&self.synthesised);
        }
        if reuse.passed_through {
            Self::inc(&self.passed_through);
        }
        self.response(rcode);
    }

    /// Records one upstream round trip.
    pub fn observe_upstream(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        if let Some(b) = self.upstream_buckets.get(i) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        self.upstream_sum_us.fetch_add(
            u64::try_from(d.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.upstream_count.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self, mappings: &Mappings) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut s = String::with_capacity(4096);
        let mut counter = |name: &str, help: &str, series: &[(&str, u64)]| {
            let _ = writeln!(s, "# HELP outsock_dns_{name} {help}");
            let _ = writeln!(s, "# TYPE outsock_dns_{name} counter");
            for (labels, v) in series {
                let _ = writeln!(s, "outsock_dns_{name}{labels} {v}");
            }
        };
        counter(
            "queries_total",
            "DNS queries received, by type.",
            &[
                ("{type=\"A\"}", get(&self.queries[0])),
                ("{type=\"AAAA\"}", get(&self.queries[1])),
                ("{type=\"PTR\"}", get(&self.queries[2])),
                ("{type=\"other\"}", get(&self.queries[3])),
            ],
        );
        counter(
            "responses_total",
            "DNS responses sent, by response code.",
            &[
                ("{rcode=\"NOERROR\"}", get(&self.responses[0])),
                ("{rcode=\"NXDOMAIN\"}", get(&self.responses[1])),
                ("{rcode=\"SERVFAIL\"}", get(&self.responses[2])),
                ("{rcode=\"other\"}", get(&self.responses[3])),
            ],
        );
        counter(
            "synthesised_total",
            "Answers with A records synthesised from AAAA.",
            &[("", get(&self.synthesised))],
        );
        counter(
            "passed_through_total",
            "Answers passed through from upstream.",
            &[("", get(&self.passed_through))],
        );
        counter(
            "ptr_local_total",
            "PTR answers for dummy addresses.",
            &[("", get(&self.ptr_local))],
        );
        counter(
            "cache_hits_total",
            "Answer cache hits.",
            &[("", get(&self.cache_hits))],
        );
        counter(
            "cache_misses_total",
            "Answer cache misses.",
            &[("", get(&self.cache_misses))],
        );
        counter(
            "allocations_total",
            "Dummy addresses newly allocated.",
            &[("", get(&self.allocations))],
        );
        counter(
            "recycles_total",
            "Mappings recycled (least recently used, past grace).",
            &[("", get(&self.recycles))],
        );
        counter(
            "pool_exhausted_total",
            "Allocations refused because every address was live.",
            &[("", get(&self.exhausted))],
        );
        counter(
            "upstream_errors_total",
            "Upstream queries that failed.",
            &[("", get(&self.upstream_errors))],
        );
        counter(
            "replayed_total",
            "Replies copied from the reply cache (also counted above as queries and responses).",
            &[("", get(&self.replayed))],
        );
        counter(
            "udp_dropped_total",
            "UDP queries dropped because too many were already waiting.",
            &[("", get(&self.udp_dropped))],
        );
        let labels: Vec<(String, u64)> = outsock_policy::Reason::ALL
            .iter()
            .map(|r| {
                (
                    format!("{{reason=\"{}\"}}", r.as_str()),
                    self.refused.get(r.index()).map_or(0, get),
                )
            })
            .collect();
        let series: Vec<(&str, u64)> = labels.iter().map(|(l, v)| (l.as_str(), *v)).collect();
        counter(
            "refused_addresses_total",
            "Upstream addresses never handed to a guest (destination policy), by reason.",
            &series,
        );
        counter(
            "lookup_refused_total",
            "dns.sock requests refused because the peer's uid may not make them, by class.",
            &[
                ("{class=\"lookup\"}", get(&self.lookup_refused[0])),
                ("{class=\"operator\"}", get(&self.lookup_refused[1])),
                ("{class=\"admin\"}", get(&self.lookup_refused[2])),
            ],
        );
        counter(
            "refused_clients_total",
            "Queries refused: the client is not loopback and not in allow_clients.",
            &[("", get(&self.refused_clients))],
        );
        counter(
            "quota_refused_total",
            "Answers refused: the tenant spent its dummy_quota_per_minute.",
            &[("", get(&self.quota_refused))],
        );
        counter(
            "prefix_reused_total",
            "Source dummies taken over inside a /64 at its source_dummies_per_64 cap.",
            &[("", get(&self.prefix_reused))],
        );
        counter(
            "prefix_full_total",
            "Source dummies refused: every dummy of the /64 at its cap is pinned.",
            &[("", get(&self.prefix_full))],
        );
        counter(
            "lookup_busy_total",
            "dns.sock requests answered Busy: the tenant had too many queued.",
            &[("", get(&self.lookup_busy))],
        );
        counter(
            "accept_errors_total",
            "Accepts on dns.sock that failed.",
            &[("", get(&self.accept_errors))],
        );

        let h = mappings.health();
        let failures: Vec<(String, u64)> = Fault::ALL
            .iter()
            .map(|f| {
                (
                    format!("{{fault=\"{}\"}}", f.as_str()),
                    get(&h.failures[f.index()]),
                )
            })
            .collect();
        let failures: Vec<(&str, u64)> = failures.iter().map(|(l, v)| (l.as_str(), *v)).collect();
        counter(
            "db_write_failures_total",
            "Mapping database writes that failed (and were retried), by kind of fault.",
            &failures,
        );
        counter(
            "db_uncommitted_refused_total",
            "Answers refused (SERVFAIL) because their new mapping could not be committed in time.",
            &[("", get(&h.uncommitted_refused))],
        );
        counter(
            "db_reopens_total",
            "Fresh connections to the mapping database opened after faults.",
            &[("", get(&h.reopens))],
        );
        let failing = h.failing.load(Ordering::Relaxed);
        let _ = writeln!(
            s,
            "# HELP outsock_dns_db_writes_failing 1 while writes to the mapping database fail, with the kind of fault."
        );
        let _ = writeln!(s, "# TYPE outsock_dns_db_writes_failing gauge");
        for f in Fault::ALL {
            let on = failing && h.fault.load(Ordering::Relaxed) == f.index();
            let _ = writeln!(
                s,
                "outsock_dns_db_writes_failing{{fault=\"{}\"}} {}",
                f.as_str(),
                u8::from(on)
            );
        }

        let _ = writeln!(s, "# HELP outsock_dns_pool_used Mappings in each pool.");
        let _ = writeln!(s, "# TYPE outsock_dns_pool_used gauge");
        let _ = writeln!(
            s,
            "# HELP outsock_dns_pool_size Addresses each pool can hand out."
        );
        let _ = writeln!(s, "# TYPE outsock_dns_pool_size gauge");
        for (dir, label) in [
            (Direction::Synthesised, "destination"),
            (Direction::InboundPeer, "source"),
        ] {
            let (used, size) = mappings.with_table(dir, |t| (t.len(), t.capacity()));
            let _ = writeln!(s, "outsock_dns_pool_used{{pool=\"{label}\"}} {used}");
            let _ = writeln!(s, "outsock_dns_pool_size{{pool=\"{label}\"}} {size}");
        }

        let _ = writeln!(
            s,
            "# HELP outsock_dns_upstream_seconds Upstream query latency."
        );
        let _ = writeln!(s, "# TYPE outsock_dns_upstream_seconds histogram");
        let mut cumulative = 0;
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            cumulative += self.upstream_buckets.get(i).map_or(0, get);
            let _ = writeln!(
                s,
                "outsock_dns_upstream_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
            );
        }
        cumulative += self
            .upstream_buckets
            .get(LATENCY_BUCKETS.len())
            .map_or(0, get);
        let _ = writeln!(
            s,
            "outsock_dns_upstream_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
        );
        #[allow(clippy::cast_precision_loss)]
        // microsecond sums fit f64's 52-bit mantissa for centuries
        let sum = get(&self.upstream_sum_us) as f64 / 1e6;
        let _ = writeln!(s, "outsock_dns_upstream_seconds_sum {sum}");
        let _ = writeln!(
            s,
            "outsock_dns_upstream_seconds_count {}",
            get(&self.upstream_count)
        );
        s
    }
}

/// Binds the metrics address.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, MetricsError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })
}

/// Serves the metrics page on `listener` until the task is dropped. Every connection gets one
/// response and is closed; a slow or silent client is cut off after a few seconds.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, mappings: Arc<Mappings>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let body = metrics.render(&mappings);
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let mut seen = Vec::new();
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                // Read until the end of the request head (or the buffer limit): the request is
                // not otherwise interpreted.
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") && seen.len() < 8192 {
                    let n = stream.read(&mut buf).await?;
                    if n == 0 {
                        break;
                    }
                    seen.extend_from_slice(buf.get(..n).unwrap_or_default());
                }
                Ok::<_, std::io::Error>(())
            })
            .await;
            if !matches!(read, Ok(Ok(()))) {
                return;
            }
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(body.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}
