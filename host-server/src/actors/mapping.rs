//! The mapping actor: the only writer of the dummy ↔ IPv6 cache (which sessions read directly,
//! see [`SharedCache`]), tells dns-cache the pins of the shared pin table, asks it on a miss,
//! and falls back to the SQLite file (on the blocking pool) when dns-cache is down.
//! [`MappingHandle`] is how the rest of the crate asks it: it answers from the cache without a message when it can, and
//! counts pins in the shared [`PinTable`] itself, messaging the actor only when dns-cache must
//! be told (the first local user of a dummy; an Unpin comes from the actor's sweep once the
//! pin has lingered unused): a connection costs the actor's thread no wake-up.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use actix::prelude::*;
use shared_proto::lookup::{LookupOp, LookupReply, Tenant};
use thiserror::Error;

use crate::actors::metrics::MetricsHandle;
use crate::fallback;
use crate::identity::Identity;
use crate::lookup::{LookupClient, LookupError};
use crate::mapping::{MappingCache, PinAction, PinTable, SharedCache};
use crate::metrics::Event;

/// Why a mapping question got no answer.
#[derive(Debug, Error)]
pub enum MapError {
    #[error("dns-cache could not be asked")]
    Lookup(#[from] LookupError),
    #[error("dns-cache refused: {0}")]
    Refused(String),
    #[error("dns-cache is down and the database could not be read")]
    Fallback(#[from] fallback::FallbackError),
    #[error("dns-cache answered {0:?}, which does not fit the question")]
    Unexpected(Box<LookupReply>),
    #[error("the mapping actor has stopped")]
    Stopped,
}

/// Dummy → IPv6 (`None`: no such mapping).
#[derive(Debug, Message)]
#[rtype(result = "Result<Option<Ipv6Addr>, MapError>")]
pub struct Resolve(pub Ipv4Addr);

/// Inbound IPv6 peer → its source-pool dummy.
#[derive(Debug, Message)]
#[rtype(result = "Result<Ipv4Addr, MapError>")]
pub struct PeerDummy(pub Ipv6Addr);

/// A dummy's first local user: pin it with dns-cache.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Pin(pub Ipv4Addr);

/// A dummy's remote pin is no longer wanted: unpin it with dns-cache.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Unpin(pub Ipv4Addr);

/// The local pin counts, shared by the actor and every [`MappingHandle`].
pub type SharedPins = Arc<Mutex<PinTable>>;

/// A new [`SharedPins`] whose pins linger [`PIN_LINGER`].
#[must_use]
pub fn shared_pins() -> SharedPins {
    Arc::new(Mutex::new(PinTable::new(PIN_LINGER)))
}

fn lock(pins: &SharedPins) -> MutexGuard<'_, PinTable> {
    // Every PinTable method leaves it consistent before it could panic.
    pins.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Internal: dns-cache's answer to a Pin.
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct PinAnswered(Ipv4Addr, bool);

/// The actor. The lookup client starts with the actor, on its arbiter.
pub struct MappingActor {
    cache: SharedCache,
    pins: SharedPins,
    client: LookupClient,
    database: Arc<PathBuf>,
    timeout: Duration,
    metrics: MetricsHandle,
}

impl std::fmt::Debug for MappingActor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappingActor")
            .field("cached", &self.cache.read(MappingCache::len))
            .finish_non_exhaustive()
    }
}

impl MappingActor {
    /// Must be called on the arbiter the actor will run on (the client task starts there).
    /// `cache` is shared with the [`MappingHandle`]s, which read it directly.
    #[must_use]
    pub fn new(
        s: &crate::config::Settings,
        cache: SharedCache,
        pins: SharedPins,
        client: LookupClient,
        metrics: MetricsHandle,
    ) -> Self {
        Self {
            cache,
            pins,
            client,
            database: Arc::new(s.database.clone()),
            timeout: s.lookup_timeout,
            metrics,
        }
    }

    fn send_unpin(&self, dummy: Ipv4Addr) {
        let client = self.client.clone();
        let t = self.timeout;
        actix_rt::spawn(async move {
            if let Err(e) = client.call(LookupOp::Unpin { dummy }, t).await {
                tracing::debug!(%dummy, error = %e, "unpin not delivered");
            }
        });
    }
}

/// How long a dummy's remote pin outlives its last connection (see [`PinTable`]), and how often
/// the lingering ones are looked at: an Unpin goes out between one and one and a half lingers
/// after the last connection closed.
pub const PIN_LINGER: Duration = Duration::from_secs(5);
const PIN_SWEEP: Duration = Duration::from_millis(2500);

impl Actor for MappingActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(PIN_SWEEP, |act, _| {
            let due = lock(&act.pins).expire(Instant::now());
            for dummy in due {
                act.send_unpin(dummy);
            }
        });
    }
}

impl Handler<Resolve> for MappingActor {
    type Result = ResponseActFuture<Self, Result<Option<Ipv6Addr>, MapError>>;

    fn handle(&mut self, Resolve(dummy): Resolve, _: &mut Context<Self>) -> Self::Result {
        if let Some(v6) = self.cache.read(|c| c.get(dummy, Instant::now())) {
            return Box::pin(fut::ready(Ok(Some(v6))));
        }
        let client = self.client.clone();
        let t = self.timeout;
        let db = Arc::clone(&self.database);
        let metrics = self.metrics.clone();
        let ask = async move {
            match client.call(LookupOp::Resolve { dummy }, t).await {
                Ok(LookupReply::Resolved(m)) => Ok(Some(m.v6)),
                Ok(LookupReply::NotFound) => Ok(None),
                Ok(LookupReply::Error { message, .. }) => Err(MapError::Refused(message)),
                Ok(other) => Err(MapError::Unexpected(Box::new(other))),
                Err(e) => {
                    // dns-cache is down (or stuck): the database still knows every dummy it
                    // handed out, so connections to them keep working.
                    tracing::debug!(%dummy, error = %e, "resolving from the database");
                    metrics.record(Event::LookupFallback);
                    let found =
                        tokio::task::spawn_blocking(move || fallback::lookup_blocking(&db, dummy))
                            .await
                            .map_err(|_| MapError::Stopped)??;
                    Ok(found)
                }
            }
        };
        Box::pin(ask.into_actor(self).map(move |r, act, _| {
            match &r {
                Ok(Some(v6)) => act.cache.write(|c| c.insert(dummy, *v6, Instant::now())),
                Ok(None) => act.cache.write(|c| c.remove(dummy)),
                Err(_) => {}
            }
            r
        }))
    }
}

impl Handler<PeerDummy> for MappingActor {
    type Result = ResponseActFuture<Self, Result<Ipv4Addr, MapError>>;

    fn handle(&mut self, PeerDummy(v6): PeerDummy, _: &mut Context<Self>) -> Self::Result {
        if let Some(d) = self.cache.read(|c| c.peer(v6, Instant::now())) {
            return Box::pin(fut::ready(Ok(d)));
        }
        let client = self.client.clone();
        let t = self.timeout;
        let ask = async move {
            match client.call(LookupOp::PeerDummy { v6 }, t).await? {
                LookupReply::Dummy { dummy } => Ok(dummy),
                LookupReply::Error { message, .. } => Err(MapError::Refused(message)),
                other => Err(MapError::Unexpected(Box::new(other))),
            }
        };
        Box::pin(ask.into_actor(self).map(move |r, act, _| {
            if let Ok(d) = &r {
                act.cache.write(|c| c.insert_peer(v6, *d, Instant::now()));
            }
            r
        }))
    }
}

impl Handler<Pin> for MappingActor {
    type Result = ();

    fn handle(&mut self, Pin(dummy): Pin, ctx: &mut Context<Self>) {
        let client = self.client.clone();
        let t = self.timeout;
        let me = ctx.address();
        actix_rt::spawn(async move {
            let ok = matches!(
                client.call(LookupOp::Pin { dummy }, t).await,
                Ok(LookupReply::Pinned { .. })
            );
            me.do_send(PinAnswered(dummy, ok));
        });
    }
}

impl Handler<PinAnswered> for MappingActor {
    type Result = ();

    fn handle(&mut self, PinAnswered(dummy, ok): PinAnswered, _: &mut Context<Self>) {
        let action = lock(&self.pins).remote_pinned(dummy, ok, Instant::now());
        if action == PinAction::Unpin {
            self.send_unpin(dummy);
        }
    }
}

impl Handler<Unpin> for MappingActor {
    type Result = ();

    fn handle(&mut self, Unpin(dummy): Unpin, _: &mut Context<Self>) {
        self.send_unpin(dummy);
    }
}

/// A guest's raw DNS message for dns-cache, on behalf of `tenant` (the stream's identity).
#[derive(Debug, Message)]
#[rtype(result = "Result<Vec<u8>, MapError>")]
pub struct DnsQuery {
    pub tenant: Tenant,
    pub tcp: bool,
    pub packet: Vec<u8>,
}

impl Handler<DnsQuery> for MappingActor {
    type Result = ResponseFuture<Result<Vec<u8>, MapError>>;

    fn handle(&mut self, q: DnsQuery, _: &mut Context<Self>) -> Self::Result {
        let client = self.client.clone();
        let t = self.timeout;
        self.metrics.record(Event::DnsQuery);
        Box::pin(async move {
            let op = LookupOp::DnsQueryAs {
                tenant: q.tenant,
                tcp: q.tcp,
                packet: q.packet,
            };
            match client.call(op, t).await? {
                LookupReply::DnsAnswer { packet } => Ok(packet),
                LookupReply::Error { message, .. } => Err(MapError::Refused(message)),
                other => Err(MapError::Unexpected(Box::new(other))),
            }
        })
    }
}

/// Asks the mapping actor (dummy ↔ IPv6, pins, guest DNS).
#[derive(Debug, Clone)]
pub struct MappingHandle {
    addr: Addr<MappingActor>,
    cache: SharedCache,
    pins: SharedPins,
}

impl MappingHandle {
    /// The handle of a started actor; `cache` is the one the actor writes, `pins` the actor's.
    #[must_use]
    pub(crate) fn new(addr: Addr<MappingActor>, cache: SharedCache, pins: SharedPins) -> Self {
        Self { addr, cache, pins }
    }

    /// The IPv6 address behind a dummy, `None` when no mapping has it.
    ///
    /// # Errors
    /// [`MapError`] when neither dns-cache nor the database can answer.
    pub async fn resolve(&self, dummy: Ipv4Addr) -> Result<Option<Ipv6Addr>, MapError> {
        // A fresh cached answer needs no message: the actor is on another thread.
        if let Some(v6) = self.cache.read(|c| c.get(dummy, Instant::now())) {
            return Ok(Some(v6));
        }
        self.addr
            .send(Resolve(dummy))
            .await
            .map_err(|_| MapError::Stopped)?
    }

    /// The source-pool dummy that stands for inbound peer `v6`.
    ///
    /// # Errors
    /// [`MapError`] when dns-cache cannot allocate one (down, or the pool is exhausted).
    pub async fn peer_dummy(&self, v6: Ipv6Addr) -> Result<Ipv4Addr, MapError> {
        if let Some(d) = self.cache.read(|c| c.peer(v6, Instant::now())) {
            return Ok(d);
        }
        self.addr
            .send(PeerDummy(v6))
            .await
            .map_err(|_| MapError::Stopped)?
    }

    /// Pins `dummy` until the returned guard drops.
    #[must_use]
    pub fn pin(&self, dummy: Ipv4Addr) -> PinGuard {
        // do_send: a Pin goes only for a dummy's first local user and an Unpin only for a pin
        // nobody uses, so the mailbox is bounded by the socket limits, and an Unpin must never
        // be lost to a full mailbox.
        if lock(&self.pins).pin(dummy) == PinAction::Pin {
            self.addr.do_send(Pin(dummy));
        }
        PinGuard {
            addr: self.addr.clone(),
            pins: Arc::clone(&self.pins),
            dummy,
        }
    }

    /// Answers a guest's DNS message through dns-cache, on behalf of `identity`: its new
    /// dummies count against that identity's quota and its look-ups queue apart from others'.
    ///
    /// # Errors
    /// [`MapError`] when dns-cache cannot answer.
    pub async fn dns_query(
        &self,
        identity: &Identity,
        tcp: bool,
        packet: Vec<u8>,
    ) -> Result<Vec<u8>, MapError> {
        let tenant = match identity {
            Identity::Vm(name) => Tenant::Vm(name.clone()),
            Identity::Process { uid } => Tenant::Uid(*uid),
        };
        self.addr
            .send(DnsQuery {
                tenant,
                tcp,
                packet,
            })
            .await
            .map_err(|_| MapError::Stopped)?
    }
}

/// Holds a pin on a dummy; dropping it unpins.
#[derive(Debug)]
pub struct PinGuard {
    addr: Addr<MappingActor>,
    pins: SharedPins,
    dummy: Ipv4Addr,
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        // With the linger, the Unpin normally comes from the actor's sweep instead.
        if lock(&self.pins).unpin(self.dummy, Instant::now()) == PinAction::Unpin {
            self.addr.do_send(Unpin(self.dummy));
        }
    }
}
