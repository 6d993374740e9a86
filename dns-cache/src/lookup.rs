//! dns.sock: the look-up service host-server uses (shared-proto's `lookup` messages in
//! `shared_proto::frame` frames over a Unix stream socket).
//!
//! Requests on one connection are handled concurrently (a guest DNS query may wait on upstream
//! while a Resolve for a connect is answered at once) and answered with their ids.
//!
//! Fair across tenants: host-server sends every tenant's guest DNS on its one connection, each
//! `DnsQueryAs` naming its tenant. Each tenant of a connection gets its own slots:
//! `lookup_in_flight_per_tenant` look-ups under way at once, and up to [`TENANT_QUEUE_FACTOR`]
//! times as many admitted (running or waiting for a slot); requests without a tenant (host-server's
//! own Resolve, Pin, PeerDummy, and the older `DnsQuery`) share one bucket with
//! [`OWN_BUCKET_FACTOR`] times the slots. The reader never waits for a slot, so one tenant's slow
//! names cannot hold up another tenant's requests behind them on the stream; a request beyond
//! its tenant's admitted bound (or beyond [`MAX_QUEUED_PER_CONNECTION`]) is answered at once
//! with `Error { Busy }` and counted (`outsock_dns_lookup_busy_total`).
//!
//! Accepting backs off when descriptors run out (EMFILE, ENFILE): 5 ms doubling up to 1 s,
//! counted in `outsock_dns_accept_errors_total`, logged at most once a second.
//!
//! Who may ask what is decided by the kernel's SO_PEERCRED uid of the connection, never by the
//! socket file's group ([`Access`]): look-ups (Resolve, PeerDummy, Pin, Unpin, DnsQuery) for
//! host-server's uid (`lookup_uids`), List and Stats for operators (`operator_uids`, and the
//! admins), Flush for `admin_uids`; root and dns-cache's own uid (the shipped units run both
//! daemons as `outsock`) may do everything. A refused request gets an `Error` reply with
//! [`LookupErrorCode::Forbidden`] naming the operation and the setting, and is counted.
//!
//! `Pin`/`Unpin` are leases of the connection that sends them ([`crate::pins`]): a connection
//! can only give back pins it took, and when it ends (EOF, an error, host-server killed) every
//! pin it still holds is given back. A client that reconnects pins again what it still uses.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use shared_proto::lookup::{
    Counter, Direction as WireDirection, ListQuery, LookupErrorCode, LookupOp, LookupReply,
    LookupRequest, LookupResponse, MappingInfo, Tenant,
};
use shared_proto::reader::{Fill, FrameReader, ReadError, ReadSome};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::OwnedReadHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, Semaphore};

use crate::frontend::Frontend;
use crate::mapping::{Allocation, Direction, Mapping, MappingError};
use crate::metrics::Metrics;
use crate::persist::PersistError;
use crate::pins::{PinError, PinLeases};
use crate::resolve::Resolver;

/// Replies one connection may have waiting for its writer.
const IN_FLIGHT_PER_CONNECTION: usize = 64;
/// Requests one connection may have admitted (running or waiting for their tenant's slot).
pub const MAX_QUEUED_PER_CONNECTION: usize = 4096;
/// A tenant may have this many times its in-flight slots admitted on a connection.
pub const TENANT_QUEUE_FACTOR: usize = 4;
/// The requests without a tenant (host-server's own) get this many times a tenant's slots.
pub const OWN_BUCKET_FACTOR: usize = 4;
/// Default look-ups of one tenant under way at once (`lookup_in_flight_per_tenant`).
pub const DEFAULT_IN_FLIGHT_PER_TENANT: usize = 64;
/// Connections served at once.
const MAX_CONNECTIONS: usize = 256;
/// The first pause after a failed accept on dns.sock.
const ACCEPT_BACKOFF_FIRST: Duration = Duration::from_millis(5);
/// The longest pause.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Most entries in one `List` page, so a page always fits in a frame (names are bounded).
const MAX_PAGE: usize = 100;
/// The most one read of a connection takes in (pipelined requests are buffered).
const READ_CHUNK: usize = 64 * 1024;

/// A connection's read half as shared-proto's frame reader reads it.
struct TokioRead<'r>(&'r mut OwnedReadHalf);

impl ReadSome for TokioRead<'_> {
    async fn read_some(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf).await
    }
}

/// Why dns.sock could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// Binding, preparing or setting permissions of the socket failed.
    #[error("cannot set up the look-up socket {path}")]
    Socket {
        /// The socket path.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Who may do what on dns.sock, by the peer's SO_PEERCRED uid.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    /// May Resolve, PeerDummy, Pin, Unpin and DnsQuery (host-server's uid).
    pub lookup_uids: Vec<u32>,
    /// May List and Stats.
    pub operator_uids: Vec<u32>,
    /// May Flush (and List and Stats).
    pub admin_uids: Vec<u32>,
    /// dns-cache's own uid, which (with root) may do everything.
    pub own_uid: u32,
}

/// Which list an operation needs its caller in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpClass {
    Lookup,
    Operator,
    Admin,
}

impl OpClass {
    /// The class of `op`.
    #[must_use]
    pub fn of(op: &LookupOp) -> Self {
        match op {
            LookupOp::Resolve { .. }
            | LookupOp::PeerDummy { .. }
            | LookupOp::Pin { .. }
            | LookupOp::Unpin { .. }
            | LookupOp::DnsQuery { .. }
            | LookupOp::DnsQueryAs { .. } => Self::Lookup,
            LookupOp::List(_) | LookupOp::Stats | LookupOp::Show { .. } => Self::Operator,
            LookupOp::Flush | LookupOp::StaticSet { .. } | LookupOp::StaticRemove { .. } => {
                Self::Admin
            }
        }
    }

    fn index(self) -> usize {
        match self {
            Self::Lookup => 0,
            Self::Operator => 1,
            Self::Admin => 2,
        }
    }

    fn setting(self) -> &'static str {
        match self {
            Self::Lookup => "lookup_uids",
            Self::Operator => "operator_uids or admin_uids",
            Self::Admin => "admin_uids",
        }
    }
}

impl Access {
    /// Whether a peer with `uid` may make requests of `class`.
    #[must_use]
    pub fn allows(&self, uid: u32, class: OpClass) -> bool {
        uid == 0
            || uid == self.own_uid
            || match class {
                OpClass::Lookup => self.lookup_uids.contains(&uid),
                OpClass::Operator => {
                    self.operator_uids.contains(&uid) || self.admin_uids.contains(&uid)
                }
                OpClass::Admin => self.admin_uids.contains(&uid),
            }
    }
}

/// The uid this process runs as (the owner of `/proc/self`), or root's when it cannot be read.
#[must_use]
pub fn own_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map_or(0, |m| m.uid())
}

fn op_name(op: &LookupOp) -> &'static str {
    match op {
        LookupOp::Resolve { .. } => "Resolve",
        LookupOp::PeerDummy { .. } => "PeerDummy",
        LookupOp::Pin { .. } => "Pin",
        LookupOp::Unpin { .. } => "Unpin",
        LookupOp::List(_) => "List",
        LookupOp::Flush => "Flush",
        LookupOp::Stats => "Stats",
        LookupOp::DnsQuery { .. } => "DnsQuery",
        LookupOp::DnsQueryAs { .. } => "DnsQueryAs",
        LookupOp::StaticSet { .. } => "StaticSet",
        LookupOp::StaticRemove { .. } => "StaticRemove",
        LookupOp::Show { .. } => "Show",
    }
}

/// The look-up operations over the resolver's mapping tables.
#[derive(Debug)]
pub struct LookupService {
    frontend: Arc<Frontend>,
    resolver: Arc<Resolver>,
    grace: Duration,
    access: Access,
    in_flight_per_tenant: usize,
    /// The dummies `[static]` of the settings sets: changed only there (a live change would
    /// be undone, or collide, at the next start). Replaced by a reload.
    configured_statics: std::sync::RwLock<Vec<Ipv4Addr>>,
}

fn wire_direction(d: Direction) -> WireDirection {
    match d {
        Direction::Synthesised => WireDirection::Synthesised,
        Direction::InboundPeer => WireDirection::InboundPeer,
    }
}

fn error(code: LookupErrorCode, message: &(impl ToString + ?Sized)) -> LookupReply {
    LookupReply::Error {
        code,
        message: message.to_string(),
    }
}

impl LookupService {
    /// A service over the mappings of `frontend`'s resolver, answering guest DNS packets
    /// through `frontend`; `grace` is used to report when a mapping may be recycled.
    pub fn new(frontend: Arc<Frontend>, grace: Duration) -> Self {
        Self {
            resolver: Arc::clone(frontend.resolver()),
            frontend,
            grace,
            in_flight_per_tenant: DEFAULT_IN_FLIGHT_PER_TENANT,
            access: Access {
                own_uid: own_uid(),
                ..Access::default()
            },
            configured_statics: std::sync::RwLock::default(),
        }
    }

    /// The same service, with the dummies of the settings' `[static]`, which `StaticSet` and
    /// `StaticRemove` leave alone.
    #[must_use]
    pub fn with_configured_statics(self, dummies: Vec<Ipv4Addr>) -> Self {
        self.set_configured_statics(dummies);
        self
    }

    /// Replaces the dummies of `[static]` (after a reload).
    pub fn set_configured_statics(&self, dummies: Vec<Ipv4Addr>) {
        *self
            .configured_statics
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = dummies;
    }

    fn is_configured(&self, dummy: Ipv4Addr) -> bool {
        self.configured_statics
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(&dummy)
    }

    /// A refusal for a live change of a dummy that `[static]` in the settings sets.
    fn configured(dummy: Ipv4Addr) -> LookupReply {
        error(
            LookupErrorCode::Invalid,
            &format!(
                "{dummy} is set by [static] in dns-cache's settings: change it there (a live change would be undone at the next start)"
            ),
        )
    }

    /// The same service, admitting peers by `access`.
    #[must_use]
    pub fn with_access(mut self, access: Access) -> Self {
        self.access = access;
        self
    }

    /// `op` from a peer with `uid`: performed, or refused with `Forbidden` when the peer's uid
    /// may not make it (counted in `outsock_dns_lookup_refused_total`).
    pub async fn handle_from(
        &self,
        uid: Option<u32>,
        op: LookupOp,
        pins: &PinLeases,
    ) -> LookupReply {
        let class = OpClass::of(&op);
        match uid {
            Some(uid) if self.access.allows(uid, class) => self.handle(op, pins).await,
            _ => {
                use std::sync::atomic::Ordering::Relaxed;
                self.resolver.metrics().lookup_refused[class.index()].fetch_add(1, Relaxed);
                let who = uid.map_or_else(
                    || "a peer without credentials".to_owned(),
                    |u| format!("uid {u}"),
                );
                tracing::debug!(%who, op = op_name(&op), "dns.sock request refused");
                error(
                    LookupErrorCode::Forbidden,
                    &format!(
                        "{who} may not {} on dns.sock (dns-cache setting {})",
                        op_name(&op),
                        class.setting()
                    ),
                )
            }
        }
    }

    /// The same service with `n` look-ups per tenant under way at once on a connection.
    #[must_use]
    pub fn with_in_flight_per_tenant(mut self, n: usize) -> Self {
        self.in_flight_per_tenant = n.max(1);
        self
    }

    fn info(&self, m: &Mapping) -> MappingInfo {
        let recyclable = m.expires.max(m.last_used.plus(self.grace));
        MappingInfo {
            dummy: m.v4,
            v6: m.v6,
            names: m.names.clone(),
            direction: if m.fixed {
                WireDirection::Static
            } else {
                wire_direction(m.direction)
            },
            created: m.created.0 / 1000,
            last_used: m.last_used.0 / 1000,
            expires: recyclable.0 / 1000,
            pins: m.pins,
        }
    }

    /// A new lease set for a connection: the pins it takes end with it.
    pub fn leases(&self) -> PinLeases {
        PinLeases::new(Arc::clone(self.resolver.mappings()))
    }

    /// Performs one operation for the connection that owns `pins`.
    pub async fn handle(&self, op: LookupOp, pins: &PinLeases) -> LookupReply {
        let mappings = self.resolver.mappings();
        let now = mappings.now();
        match op {
            LookupOp::Resolve { dummy } => {
                let Some(d) = mappings.owner(dummy) else {
                    return LookupReply::NotFound;
                };
                let found = mappings.with_table(d, |t| {
                    t.touch(dummy, now).ok()?;
                    t.get(dummy).cloned()
                });
                found.map_or(LookupReply::NotFound, |m| {
                    LookupReply::Resolved(self.info(&m))
                })
            }
            LookupOp::PeerDummy { v6 } => {
                match mappings
                    .map_durable(Direction::InboundPeer, &[(v6, None)], Duration::ZERO)
                    .await
                {
                    Ok(r) => r.first().map_or_else(
                        || error(LookupErrorCode::Internal, "no mapping returned"),
                        |r| {
                            let metrics = self.resolver.metrics();
                            match r.allocation {
                                Allocation::Fresh => Metrics::inc(&metrics.allocations),
                                Allocation::Recycled { previous }
                                    if u128::from(previous) >> 64 == u128::from(v6) >> 64 =>
                                {
                                    Metrics::inc(&metrics.prefix_reused);
                                }
                                Allocation::Recycled { .. } => Metrics::inc(&metrics.recycles),
                                Allocation::Existing => {}
                            }
                            LookupReply::Dummy { dummy: r.v4 }
                        },
                    ),
                    Err(PersistError::Mapping(MappingError::Exhausted(_))) => error(
                        LookupErrorCode::PoolExhausted,
                        "the source pool is exhausted",
                    ),
                    Err(PersistError::Mapping(e @ MappingError::PrefixFull(_))) => {
                        Metrics::inc(&self.resolver.metrics().prefix_full);
                        error(LookupErrorCode::PoolExhausted, &e)
                    }
                    Err(e) => error(LookupErrorCode::Internal, &e),
                }
            }
            LookupOp::Pin { dummy } | LookupOp::Unpin { dummy } => {
                let r = if matches!(op, LookupOp::Pin { .. }) {
                    pins.pin(dummy)
                } else {
                    pins.unpin(dummy)
                };
                match r {
                    Ok(pins) => LookupReply::Pinned { pins },
                    Err(PinError::NotMapped(_)) => LookupReply::NotFound,
                    Err(e @ (PinError::NotPinnedHere(_) | PinError::Closed)) => {
                        error(LookupErrorCode::Invalid, &e)
                    }
                }
            }
            LookupOp::List(q) => self.list(&q),
            LookupOp::Flush => LookupReply::Flushed {
                entries: u64::try_from(self.frontend.clear_caches()).unwrap_or(u64::MAX),
            },
            LookupOp::Stats => LookupReply::Stats(self.stats()),
            LookupOp::DnsQuery { tcp, packet } => self.dns_query(&packet, tcp).await,
            LookupOp::DnsQueryAs {
                tenant,
                tcp,
                packet,
            } => {
                crate::quota::scope(Arc::from(tenant.to_string()), self.dns_query(&packet, tcp))
                    .await
            }
            LookupOp::StaticSet { dummy, .. } | LookupOp::StaticRemove { dummy, .. }
                if self.is_configured(dummy) =>
            {
                Self::configured(dummy)
            }
            LookupOp::StaticSet { dummy, v6, names } => self.static_set(dummy, v6, &names).await,
            LookupOp::StaticRemove { dummy, force } => {
                let r = mappings.with_table(Direction::Synthesised, |t| {
                    t.remove_static(dummy, force).map(|pins| (pins, t.seq()))
                });
                match r {
                    Ok((pins, seq)) => {
                        if let Err(e) = mappings.wait_durable(Direction::Synthesised, seq).await {
                            return error(LookupErrorCode::Internal, &e);
                        }
                        tracing::info!(%dummy, pins, "static mapping removed over dns.sock");
                        LookupReply::Pinned { pins }
                    }
                    Err(e) => error(LookupErrorCode::Invalid, &e),
                }
            }
            LookupOp::Show { v6, allocate } => {
                if let Some(d) = mappings.with_table(Direction::Synthesised, |t| t.lookup_v6(v6)) {
                    return LookupReply::Dummy { dummy: d };
                }
                if !allocate {
                    return LookupReply::NotFound;
                }
                if let Some(reason) = self.resolver.refuses(v6) {
                    return error(
                        LookupErrorCode::Invalid,
                        &format!("the destination policy refuses {v6} ({reason})"),
                    );
                }
                match mappings
                    .map_durable(Direction::Synthesised, &[(v6, None)], Duration::ZERO)
                    .await
                {
                    Ok(r) => r.first().map_or_else(
                        || error(LookupErrorCode::Internal, "no mapping returned"),
                        |r| LookupReply::Dummy { dummy: r.v4 },
                    ),
                    Err(PersistError::Mapping(e @ MappingError::Exhausted(_))) => {
                        error(LookupErrorCode::PoolExhausted, &e)
                    }
                    Err(e) => error(LookupErrorCode::Internal, &e),
                }
            }
        }
    }

    async fn dns_query(&self, packet: &[u8], tcp: bool) -> LookupReply {
        let mut reply = Vec::new();
        if !self.frontend.replay(packet, tcp, &mut reply) {
            // An empty packet means "no answer" (input that is dropped, as on UDP).
            reply = self.frontend.answer(packet, tcp).await.unwrap_or_default();
        }
        LookupReply::DnsAnswer { packet: reply }
    }

    /// `StaticSet`: the destination policy first, then the table's own checks (pool,
    /// conflicts with live mappings); persisted before the answer.
    async fn static_set(&self, dummy: Ipv4Addr, v6: Ipv6Addr, names: &[String]) -> LookupReply {
        if let Some(reason) = self.resolver.refuses(v6) {
            return error(
                LookupErrorCode::Invalid,
                &format!("the destination policy refuses {v6} ({reason})"),
            );
        }
        let mut checked = Vec::with_capacity(names.len());
        for n in names {
            match hickory_proto::rr::Name::from_ascii(n.trim()) {
                Ok(mut name) => {
                    name.set_fqdn(true);
                    checked.push(name.to_lowercase().to_ascii());
                }
                Err(e) => {
                    return error(
                        LookupErrorCode::Invalid,
                        &format!("`{n}` is not a domain name: {e}"),
                    )
                }
            }
        }
        let mappings = self.resolver.mappings();
        match mappings.set_static(dummy, v6, &checked).await {
            Ok(_) => {
                tracing::info!(%dummy, %v6, "static mapping set over dns.sock");
                mappings
                    .with_table(Direction::Synthesised, |t| t.get(dummy).cloned())
                    .map_or(LookupReply::NotFound, |m| {
                        LookupReply::Resolved(self.info(&m))
                    })
            }
            Err(PersistError::Mapping(e)) => error(LookupErrorCode::Invalid, &e),
            Err(e) => error(LookupErrorCode::Internal, &e),
        }
    }

    fn list(&self, q: &ListQuery) -> LookupReply {
        let mappings = self.resolver.mappings();
        let mut all = Vec::new();
        for d in [Direction::Synthesised, Direction::InboundPeer] {
            let rows = mappings.with_table(d, |t| t.list());
            all.extend(rows.into_iter().filter(|m| {
                let shown = if m.fixed {
                    WireDirection::Static
                } else {
                    wire_direction(m.direction)
                };
                q.direction.is_none_or(|w| w == shown)
            }));
        }
        let total = u32::try_from(all.len()).unwrap_or(u32::MAX);
        let limit = usize::try_from(q.limit).unwrap_or(MAX_PAGE).min(MAX_PAGE);
        let entries = all
            .iter()
            .skip(usize::try_from(q.offset).unwrap_or(usize::MAX))
            .take(limit)
            .map(|m| self.info(m))
            .collect();
        LookupReply::Mappings { total, entries }
    }

    fn stats(&self) -> Vec<Counter> {
        use std::sync::atomic::Ordering::Relaxed;
        let m = self.resolver.metrics();
        let mappings = self.resolver.mappings();
        let mut out: Vec<Counter> = [
            ("queries_a", &m.queries[0]),
            ("queries_aaaa", &m.queries[1]),
            ("queries_ptr", &m.queries[2]),
            ("queries_other", &m.queries[3]),
            ("synthesised", &m.synthesised),
            ("passed_through", &m.passed_through),
            ("cache_hits", &m.cache_hits),
            ("cache_misses", &m.cache_misses),
            ("allocations", &m.allocations),
            ("recycles", &m.recycles),
            ("pool_exhausted", &m.exhausted),
            ("upstream_errors", &m.upstream_errors),
            ("refused_clients", &m.refused_clients),
            ("quota_refused", &m.quota_refused),
            ("prefix_reused", &m.prefix_reused),
            ("prefix_full", &m.prefix_full),
            ("lookup_busy", &m.lookup_busy),
        ]
        .into_iter()
        .map(|(name, c)| Counter {
            name: name.to_owned(),
            value: c.load(Relaxed),
        })
        .collect();
        for (d, label) in [
            (Direction::Synthesised, "destination"),
            (Direction::InboundPeer, "source"),
        ] {
            let (used, size) = mappings.with_table(d, |t| (t.len(), t.capacity()));
            out.push(Counter {
                name: format!("pool_used_{label}"),
                value: u64::try_from(used).unwrap_or(u64::MAX),
            });
            out.push(Counter {
                name: format!("pool_size_{label}"),
                value: u64::try_from(size).unwrap_or(u64::MAX),
            });
        }
        out
    }
}

/// Binds dns.sock at `path` with permission bits `mode`, replacing a stale socket file left by
/// a previous run (but never any other kind of file).
pub fn bind(path: &Path, mode: u32) -> Result<UnixListener, LookupError> {
    let err = |source| LookupError::Socket {
        path: path.display().to_string(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path).map_err(err)?,
        Ok(_) => {
            return Err(err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "exists and is not a socket",
            )));
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(err)?;
    Ok(listener)
}

/// Accepts connections on dns.sock until the task is dropped.
pub async fn serve(listener: UnixListener, service: Arc<LookupService>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut backoff = ACCEPT_BACKOFF_FIRST;
    let mut last_log: Option<std::time::Instant> = None;
    loop {
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((s, _)) => {
                backoff = ACCEPT_BACKOFF_FIRST;
                s
            }
            Err(error) => {
                Metrics::inc(&service.resolver.metrics().accept_errors);
                if last_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                    last_log = Some(std::time::Instant::now());
                    tracing::warn!(%error, pause = ?backoff, "dns.sock accept failed");
                }
                // Out of descriptors the connection stays queued and accept fails again at
                // once: pause, longer each time, instead of spinning.
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        let service = Arc::clone(&service);
        tokio::spawn(async move {
            connection(stream, service).await;
            drop(permit);
        });
    }
}

async fn connection(stream: UnixStream, service: Arc<LookupService>) {
    // The kernel recorded the peer's credentials at connect time; no peer can forge them.
    let uid = stream.peer_cred().ok().map(|c| c.uid());
    let leases = Arc::new(service.leases());
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(IN_FLIGHT_PER_CONNECTION);
    let writer = tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if wr.write_all(&frame).await.is_err() {
                return;
            }
        }
    });
    let queued = Arc::new(Semaphore::new(MAX_QUEUED_PER_CONNECTION));
    let mut tenants = TenantSlots::new(service.in_flight_per_tenant);
    let mut reader = FrameReader::new(Fill::Greedy { chunk: READ_CHUNK });
    loop {
        let req = match reader
            .read::<LookupRequest, _>(&mut TokioRead(&mut rd))
            .await
        {
            Ok(req) => req,
            Err(ReadError::Proto(error)) => {
                // The stream is out of sync; nothing after this can be trusted.
                tracing::debug!(%error, "closing dns.sock connection after a bad frame");
                break;
            }
            // The end of the stream (between frames or inside one) or a failed read.
            Err(ReadError::Closed | ReadError::ClosedMidFrame | ReadError::Io(_)) => break,
        };
        let tenant = match &req.op {
            LookupOp::DnsQueryAs { tenant, .. } => Some(tenant),
            _ => None,
        };
        let (running, admitted) = tenants.of(tenant);
        let admitted = Arc::clone(&queued)
            .try_acquire_owned()
            .ok()
            .zip(admitted.try_acquire_owned().ok());
        let Some(admitted) = admitted else {
            Metrics::inc(&service.resolver.metrics().lookup_busy);
            let resp = LookupResponse {
                id: req.id,
                reply: error(
                    LookupErrorCode::Busy,
                    "too many look-ups of this tenant in flight",
                ),
            };
            if let Ok(frame) = shared_proto::frame::to_vec(&resp) {
                if tx.send(frame).await.is_err() {
                    break;
                }
            }
            continue;
        };
        let service = Arc::clone(&service);
        let leases = Arc::clone(&leases);
        let tx = tx.clone();
        tokio::spawn(async move {
            // Waits for its tenant's slot here, never in the reader.
            let Ok(permit) = running.acquire_owned().await else {
                return;
            };
            let reply = service.handle_from(uid, req.op, &leases).await;
            let resp = LookupResponse { id: req.id, reply };
            match shared_proto::frame::to_vec(&resp) {
                Ok(frame) => {
                    let _ = tx.send(frame).await;
                }
                Err(error) => tracing::error!(%error, "cannot encode a dns.sock reply"),
            }
            drop(permit);
            drop(admitted);
        });
    }
    // The client has gone (or broke the framing): its pins end here, not when the last reply
    // is written. A Pin still in flight is refused after this (`PinError::Closed`).
    let released = leases.release();
    if released > 0 {
        tracing::info!(
            released,
            "dns.sock connection closed; gave back the pins it held"
        );
    }
    drop(tx);
    // Replies still being computed are delivered before the connection closes.
    let _ = writer.await;
}

/// One connection's slots per tenant: (running, admitted) semaphores.
struct TenantSlots {
    per_tenant: usize,
    own: (Arc<Semaphore>, Arc<Semaphore>),
    by_tenant: HashMap<Tenant, (Arc<Semaphore>, Arc<Semaphore>)>,
}

/// Past this many tenants on one connection, idle tenants' slots are forgotten.
const FORGET_TENANTS_ABOVE: usize = 1024;

impl TenantSlots {
    fn new(per_tenant: usize) -> Self {
        let own = per_tenant * OWN_BUCKET_FACTOR;
        Self {
            per_tenant,
            own: (
                Arc::new(Semaphore::new(own)),
                Arc::new(Semaphore::new(own * TENANT_QUEUE_FACTOR)),
            ),
            by_tenant: HashMap::new(),
        }
    }

    /// The (running, admitted) semaphores of `tenant` (`None`: host-server's own requests).
    fn of(&mut self, tenant: Option<&Tenant>) -> (Arc<Semaphore>, Arc<Semaphore>) {
        let Some(tenant) = tenant else {
            return (Arc::clone(&self.own.0), Arc::clone(&self.own.1));
        };
        if !self.by_tenant.contains_key(tenant) && self.by_tenant.len() >= FORGET_TENANTS_ABOVE {
            let full = self.per_tenant * TENANT_QUEUE_FACTOR;
            self.by_tenant
                .retain(|_, (_, admitted)| admitted.available_permits() < full);
        }
        let per_tenant = self.per_tenant;
        let (running, admitted) = self.by_tenant.entry(tenant.clone()).or_insert_with(|| {
            (
                Arc::new(Semaphore::new(per_tenant)),
                Arc::new(Semaphore::new(per_tenant * TENANT_QUEUE_FACTOR)),
            )
        });
        (Arc::clone(running), Arc::clone(admitted))
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use hickory_proto::op::Message;
    use shared_proto::frame::{decode, to_vec};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::cache::AnswerCache;
    use crate::clock::SystemClock;
    use crate::mapping::MappingTable;
    use crate::metrics::Metrics;
    use crate::persist::Mappings;
    use crate::resolve::ResolverConfig;
    use crate::store::Store;
    use crate::upstream::{Upstream, UpstreamError, UpstreamQuery};

    const LIMIT: Duration = Duration::from_secs(5);

    /// No upstream at all: these tests never resolve a name.
    #[derive(Debug)]
    struct NoUpstream;

    #[async_trait::async_trait]
    impl Upstream for NoUpstream {
        async fn query(&self, _: &UpstreamQuery) -> Result<Message, UpstreamError> {
            Err(UpstreamError::NoServers)
        }
    }

    /// Names under `slow.` take two seconds to fail; every other name fails at once.
    #[derive(Debug)]
    struct SlowZone;

    #[async_trait::async_trait]
    impl Upstream for SlowZone {
        async fn query(&self, q: &UpstreamQuery) -> Result<Message, UpstreamError> {
            if q.name.to_ascii().contains("slow.") {
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(UpstreamError::NoServers)
        }
    }

    fn service() -> Arc<LookupService> {
        service_with(Arc::new(NoUpstream))
    }

    fn service_with(upstream: Arc<dyn Upstream>) -> Arc<LookupService> {
        let grace = Duration::from_secs(60);
        let mappings = Mappings::start(
            Store::open_in_memory().unwrap(),
            MappingTable::new(
                "10.170.160.0/20".parse().unwrap(),
                Direction::Synthesised,
                grace,
            ),
            MappingTable::new(
                "172.21.112.0/20".parse().unwrap(),
                Direction::InboundPeer,
                grace,
            ),
            Arc::new(SystemClock),
        )
        .unwrap();
        let resolver = Arc::new(Resolver::new(
            ResolverConfig {
                ipv4_egress: false,
                max_ttl: 600,
                pass_through: Vec::new(),
                never_synthesise: Vec::new(),
                ipv6_literal_suffix: None,
                policy: outsock_policy::Policy::new(
                    outsock_policy::Rules::default(),
                    Vec::new(),
                    outsock_policy::HostAddresses::fixed([]),
                ),
            },
            upstream,
            AnswerCache::new(100, 600, 60),
            mappings,
            Arc::new(Metrics::default()),
        ));
        Arc::new(LookupService::new(
            Arc::new(Frontend::new(resolver, 1232, 100)),
            grace,
        ))
    }

    fn pins(service: &LookupService, dummy: Ipv4Addr) -> Option<u32> {
        service
            .resolver
            .mappings()
            .with_table(Direction::InboundPeer, |t| t.get(dummy).map(|m| m.pins))
    }

    fn request(id: u32, op: LookupOp) -> Vec<u8> {
        to_vec(&LookupRequest { id, op }).unwrap()
    }

    /// The next response, or `None` once the server has closed the connection.
    async fn response(s: &mut UnixStream, buf: &mut Vec<u8>) -> Option<LookupResponse> {
        loop {
            if let Some((r, used)) = decode::<LookupResponse>(buf).unwrap() {
                buf.drain(..used);
                return Some(r);
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(LIMIT, s.read(&mut chunk))
                .await
                .unwrap()
                .unwrap();
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Takes a dummy for an inbound peer and pins it on a new connection.
    async fn pinned(
        service: &Arc<LookupService>,
    ) -> (UnixStream, tokio::task::JoinHandle<()>, Ipv4Addr) {
        let (mut client, server) = UnixStream::pair().unwrap();
        let task = tokio::spawn(connection(server, Arc::clone(service)));
        let mut buf = Vec::new();
        // A request that arrives in pieces, cut inside the header and inside the body.
        let v6 = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7);
        let peer = request(1, LookupOp::PeerDummy { v6 });
        for piece in [&peer[..3], &peer[3..10], &peer[10..]] {
            client.write_all(piece).await.unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let r = response(&mut client, &mut buf).await.unwrap();
        let LookupReply::Dummy { dummy } = r.reply else {
            panic!("{r:?}");
        };
        assert_eq!(r.id, 1);
        // Two requests in one write: both are answered.
        let mut both = request(2, LookupOp::Pin { dummy });
        both.extend_from_slice(&request(3, LookupOp::Stats));
        client.write_all(&both).await.unwrap();
        let mut ids = Vec::new();
        for _ in 0..2 {
            let r = response(&mut client, &mut buf).await.unwrap();
            if r.id == 2 {
                assert_eq!(r.reply, LookupReply::Pinned { pins: 1 });
            } else {
                assert!(matches!(r.reply, LookupReply::Stats(_)), "{r:?}");
            }
            ids.push(r.id);
        }
        ids.sort_unstable();
        assert_eq!(ids, [2, 3]);
        assert_eq!(pins(service, dummy), Some(1));
        (client, task, dummy)
    }

    fn guest_query(id: u16, name: &str) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = id;
        m.add_query(hickory_proto::op::Query::query(
            hickory_proto::rr::Name::from_ascii(name).unwrap(),
            hickory_proto::rr::RecordType::A,
        ));
        m.to_vec().unwrap()
    }

    /// Tenant A floods the connection with names that take seconds; tenant B's look-up behind
    /// them on the same stream is answered at once, and A's excess is answered Busy.
    #[tokio::test]
    async fn a_slow_tenant_does_not_hold_up_another() {
        let service = service_with(Arc::new(SlowZone));
        let (mut client, server) = UnixStream::pair().unwrap();
        let _task = tokio::spawn(connection(server, Arc::clone(&service)));
        let a = Tenant::Vm("a".into());
        let b = Tenant::Uid(1000);
        let flood = DEFAULT_IN_FLIGHT_PER_TENANT * TENANT_QUEUE_FACTOR + 10;
        let mut bytes = Vec::new();
        for i in 0..flood {
            let id = u16::try_from(i).unwrap();
            bytes.extend(request(
                u32::from(id),
                LookupOp::DnsQueryAs {
                    tenant: a.clone(),
                    tcp: false,
                    packet: guest_query(id, &format!("n{i}.slow.test.")),
                },
            ));
        }
        client.write_all(&bytes).await.unwrap();
        let start = std::time::Instant::now();
        client
            .write_all(&request(
                99_999,
                LookupOp::DnsQueryAs {
                    tenant: b,
                    tcp: false,
                    packet: guest_query(7, "fast.test."),
                },
            ))
            .await
            .unwrap();
        let mut buf = Vec::new();
        let mut busy = 0;
        loop {
            let r = response(&mut client, &mut buf).await.unwrap();
            if r.id == 99_999 {
                assert!(matches!(r.reply, LookupReply::DnsAnswer { .. }), "{r:?}");
                break;
            }
            assert!(
                matches!(
                    r.reply,
                    LookupReply::Error {
                        code: LookupErrorCode::Busy,
                        ..
                    }
                ),
                "{r:?}"
            );
            busy += 1;
        }
        assert!(
            start.elapsed() < Duration::from_millis(500),
            "tenant B waited {:?}",
            start.elapsed()
        );
        assert_eq!(busy, 10);
    }

    #[tokio::test]
    async fn split_and_pipelined_requests_are_answered_and_eof_gives_pins_back() {
        let service = service();
        let (mut client, task, dummy) = pinned(&service).await;
        // The client goes away in the middle of a frame.
        client
            .write_all(&request(4, LookupOp::Flush)[..5])
            .await
            .unwrap();
        drop(client);
        tokio::time::timeout(LIMIT, task).await.unwrap().unwrap();
        assert_eq!(pins(&service, dummy), Some(0));
    }

    #[tokio::test]
    async fn operations_are_refused_by_uid() {
        let svc = service();
        let s = LookupService::new(Arc::clone(&svc.frontend), svc.grace).with_access(Access {
            lookup_uids: vec![990],
            operator_uids: vec![1000],
            admin_uids: vec![1001],
            own_uid: 991,
        });
        let leases = s.leases();
        let forbidden = |r: &LookupReply| {
            matches!(
                r,
                LookupReply::Error {
                    code: LookupErrorCode::Forbidden,
                    ..
                }
            )
        };
        let list = || LookupOp::List(ListQuery::default());
        let pin = || LookupOp::Pin {
            dummy: Ipv4Addr::new(172, 21, 112, 9),
        };
        // host-server's uid: look-ups, not List or Flush.
        assert!(!forbidden(&s.handle_from(Some(990), pin(), &leases).await));
        assert!(forbidden(&s.handle_from(Some(990), list(), &leases).await));
        assert!(forbidden(
            &s.handle_from(Some(990), LookupOp::Flush, &leases).await
        ));
        // An operator: List and Stats, not Pin or Flush.
        assert!(!forbidden(
            &s.handle_from(Some(1000), list(), &leases).await
        ));
        assert!(!forbidden(
            &s.handle_from(Some(1000), LookupOp::Stats, &leases).await
        ));
        assert!(forbidden(&s.handle_from(Some(1000), pin(), &leases).await));
        let r = s.handle_from(Some(1000), LookupOp::Flush, &leases).await;
        let LookupReply::Error { message, .. } = &r else {
            panic!("{r:?}")
        };
        assert!(
            message.contains("uid 1000") && message.contains("admin_uids"),
            "{message}"
        );
        // Static mappings are an admin's; showing a dummy is an operator's.
        let set = || LookupOp::StaticSet {
            dummy: "10.170.160.9".parse().unwrap(),
            v6: "2001:db8::99".parse().unwrap(),
            names: vec![],
        };
        let remove = || LookupOp::StaticRemove {
            dummy: "10.170.160.9".parse().unwrap(),
            force: false,
        };
        let show = LookupOp::Show {
            v6: "2001:db8::99".parse().unwrap(),
            allocate: false,
        };
        assert!(forbidden(&s.handle_from(Some(1000), set(), &leases).await));
        assert!(forbidden(
            &s.handle_from(Some(1000), remove(), &leases).await
        ));
        assert!(!forbidden(
            &s.handle_from(Some(1000), show.clone(), &leases).await
        ));
        assert!(forbidden(&s.handle_from(Some(990), show, &leases).await));
        // An admin: Flush and List.
        assert!(!forbidden(
            &s.handle_from(Some(1001), LookupOp::Flush, &leases).await
        ));
        assert!(!forbidden(
            &s.handle_from(Some(1001), list(), &leases).await
        ));
        // Root and dns-cache's own uid: everything; an outsider or no credentials: nothing.
        for uid in [0, 991] {
            assert!(!forbidden(
                &s.handle_from(Some(uid), LookupOp::Flush, &leases).await
            ));
        }
        for uid in [Some(4242), None] {
            assert!(forbidden(
                &s.handle_from(uid, LookupOp::Stats, &leases).await
            ));
            assert!(forbidden(&s.handle_from(uid, pin(), &leases).await));
        }
        let m = s.resolver.metrics();
        // Flush by the host-server uid and by an operator, StaticSet and StaticRemove by an
        // operator.
        assert_eq!(
            m.lookup_refused[2].load(std::sync::atomic::Ordering::Relaxed),
            4
        );
    }

    #[tokio::test]
    async fn a_bad_frame_closes_the_connection_and_gives_pins_back() {
        let service = service();
        let (mut client, task, dummy) = pinned(&service).await;
        // A header whose magic is not "OS": the stream is out of sync and must be closed.
        let not_a_frame = [b'X'; shared_proto::frame::HEADER_LEN + 4];
        client.write_all(&not_a_frame).await.unwrap();
        tokio::time::timeout(LIMIT, task).await.unwrap().unwrap();
        assert_eq!(pins(&service, dummy), Some(0));
        assert!(response(&mut client, &mut Vec::new()).await.is_none());
    }
}
