//! Start-up and shutdown of the whole service: checks, database, tables, listeners, dns.sock,
//! metrics, and a clean stop on SIGTERM or SIGINT (pending mapping changes are written first).
//!
//! Under systemd ([`outsock_notify`]): `READY=1` once everything listens, `WATCHDOG=1` from the
//! main loop every half watchdog period (withheld if the database writer has died, so systemd
//! restarts a service that can no longer commit mappings), `STOPPING=1` when a stop begins.

use std::sync::Arc;

use tokio::signal::unix::{signal, SignalKind};

use crate::cache::AnswerCache;
use crate::clock::SystemClock;
use crate::config::{Settings, StaticMapping};
use crate::frontend::Frontend;
use crate::lookup::{self, LookupService};
use crate::mapping::{Direction, MappingTable};
use crate::metrics::{self, Metrics};
use crate::persist::{Mappings, PersistError};
use crate::pool::{self, PoolError};
use crate::quota::DummyQuota;
use crate::resolve::{Resolver, ResolverConfig};
use crate::server;
use crate::store::{Store, StoreError};
use crate::upstream::UdpTcpUpstream;
use outsock_notify::Notifier;

/// Encoded replies kept by the reply cache. Each lives a second at most, so this bounds the
/// distinct questions answered from bytes per second, not the answer cache.
const REPLY_CACHE_ENTRIES: usize = 16_384;

/// Why the service could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The pools are unusable.
    #[error("address pools")]
    Pools(#[from] PoolError),
    /// The database directory could not be created.
    #[error("cannot create the database directory {0}")]
    DatabaseDir(String, #[source] std::io::Error),
    /// The database could not be opened.
    #[error("cannot open the mapping database")]
    Store(#[from] StoreError),
    /// The mapping tables could not be loaded.
    #[error("cannot load the mappings")]
    Persist(#[from] PersistError),
    /// A static mapping of `[static]` could not be set (it conflicts with a live mapping).
    #[error("cannot set the static mappings of [static]")]
    Static(#[source] PersistError),
    /// DNS listeners.
    #[error(transparent)]
    Server(#[from] server::ServerError),
    /// dns.sock.
    #[error(transparent)]
    Lookup(#[from] lookup::LookupError),
    /// Metrics listener.
    #[error(transparent)]
    Metrics(#[from] metrics::MetricsError),
    /// Signal handling could not be installed.
    #[error("cannot install signal handlers")]
    Signals(#[source] std::io::Error),
    /// The host's addresses (for the destination policy) could not be read.
    #[error("cannot start the destination policy")]
    Policy(#[source] outsock_policy::HostError),
}

/// Checks the pools against each other and the routes and interface addresses of this network
/// namespace.
pub fn check_pools(s: &Settings) -> Result<(), PoolError> {
    let routes = pool::read_routes(&s.route_table)?;
    let addrs = pool::read_addresses()?;
    pool::check_pools(&s.destination_pool, &s.source_pool, &routes, &addrs)
}

/// Sets the static mappings of `[static]`; the first that cannot be set (a conflict with a
/// live mapping) is the error, the ones before it stay set.
async fn apply_statics(mappings: &Mappings, statics: &[StaticMapping]) -> Result<(), DaemonError> {
    let mut changed = 0usize;
    for m in statics {
        if mappings
            .set_static(m.v4, m.v6, &m.names)
            .await
            .map_err(DaemonError::Static)?
        {
            changed += 1;
        }
    }
    if !statics.is_empty() {
        tracing::info!(
            statics = statics.len(),
            changed,
            "static mappings of [static] in place"
        );
    }
    Ok(())
}

/// SIGHUP: reads the settings file again and applies its `[static]` (new entries and new
/// names; a conflict is logged and changes nothing more); every other setting needs a
/// restart, and a changed one is said so once.
async fn reload(s: &Settings, mappings: &Mappings, service: &LookupService) {
    let Some((file, required)) = &s.source else {
        tracing::warn!("SIGHUP: the settings were not read from a file; nothing to reload");
        return;
    };
    let new = match Settings::load(Some(file), *required) {
        Ok(n) => n,
        Err(e) => {
            tracing::error!(file = %file.display(), error = %e, "SIGHUP: the settings file is invalid; nothing changed");
            return;
        }
    };
    if let Err(e) = apply_statics(mappings, &new.statics).await {
        let msg = anyhow::Error::from(e)
            .chain()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(": ");
        tracing::error!("SIGHUP: {msg}");
    }
    service.set_configured_statics(new.statics.iter().map(|m| m.v4).collect());
    tracing::info!(file = %file.display(), "SIGHUP: [static] reloaded (other settings take effect at the next start)");
}

/// Runs the service until SIGTERM or SIGINT; SIGHUP reloads `[static]`.
pub async fn run(s: Settings) -> Result<(), DaemonError> {
    let notifier = Notifier::from_env().unwrap_or_else(|error| {
        tracing::warn!(%error, "not sending systemd notifications");
        Notifier::disabled()
    });
    // Before anything can take long: a stop asked for during start-up is not lost.
    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    let mut hup = signal(SignalKind::hangup()).map_err(DaemonError::Signals)?;
    check_pools(&s)?;
    if let Some(dir) = s.database.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| DaemonError::DatabaseDir(dir.display().to_string(), e))?;
    }
    let store = Store::open(&s.database, s.durability)?;
    let mappings = Mappings::start(
        store,
        MappingTable::new(s.destination_pool, Direction::Synthesised, s.grace),
        MappingTable::new(s.source_pool, Direction::InboundPeer, s.grace)
            .with_prefix_cap(s.source_dummies_per_64),
        Arc::new(SystemClock),
    )?;
    apply_statics(&mappings, &s.statics).await?;
    let metrics = Arc::new(Metrics::default());
    let policy = outsock_policy::Policy::new(
        s.destinations.clone(),
        s.pools(),
        outsock_policy::HostAddresses::watch().map_err(DaemonError::Policy)?,
    );
    let resolver = Arc::new(
        Resolver::new(
            ResolverConfig {
                ipv4_egress: s.ipv4_egress,
                max_ttl: s.max_ttl,
                pass_through: s.pass_through.clone(),
                never_synthesise: s.never_synthesise.clone(),
                ipv6_literal_suffix: s.ipv6_literal_suffix.clone(),
                policy,
            },
            Arc::new(UdpTcpUpstream::new(s.upstreams.clone(), s.upstream_timeout)),
            AnswerCache::new(s.cache_entries, s.cache_max_ttl, s.negative_ttl_max),
            Arc::clone(&mappings),
            Arc::clone(&metrics),
        )
        .with_quota(DummyQuota::new(s.dummy_quota_per_minute)),
    );

    let frontend = Arc::new(Frontend::new(resolver, s.edns_payload, REPLY_CACHE_ENTRIES));
    // Loopback-only listeners reach only this host: no client check on their hot path.
    let allow = s
        .listen
        .iter()
        .any(|a| !a.ip().is_loopback())
        .then(|| Arc::new(s.allow_clients.clone()));
    let dns = server::start(&s.listen, &frontend, allow).await?;
    let lookup_listener = lookup::bind(&s.lookup_socket, s.lookup_socket_mode)?;
    let service = Arc::new(
        LookupService::new(Arc::clone(&frontend), s.grace)
            .with_configured_statics(s.statics.iter().map(|m| m.v4).collect())
            .with_access(s.access.clone())
            .with_in_flight_per_tenant(s.lookup_in_flight_per_tenant),
    );
    let lookup_task = tokio::spawn(lookup::serve(lookup_listener, Arc::clone(&service)));
    let metrics_task = match s.metrics {
        Some(addr) => {
            let l = metrics::bind(addr).await?;
            tracing::info!(%addr, "metrics listening");
            Some(tokio::spawn(metrics::serve(
                l,
                metrics,
                Arc::clone(&mappings),
            )))
        }
        None => None,
    };
    tracing::info!(
        dns_address = ?mappings.dns_address(),
        socket = %s.lookup_socket.display(),
        database = %s.database.display(),
        "outsock-dns-cache ready"
    );
    if let Err(error) = notifier.ready() {
        tracing::warn!(%error, "cannot tell systemd that start-up is complete");
    }
    let mut watchdog = notifier
        .enabled()
        .then(outsock_notify::watchdog_interval)
        .flatten()
        .map(|every| {
            tracing::info!(?every, "sending systemd watchdog keep-alives");
            let mut t = tokio::time::interval(every);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            t
        });
    let mut warned = false;
    loop {
        let tick = async {
            match watchdog.as_mut() {
                Some(t) => {
                    t.tick().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => reload(&s, &mappings, &service).await,
            () = tick => {
                // This runs on the thread that answers DNS: a stuck loop stops the pings.
                if !mappings.writer_alive() {
                    if !warned {
                        tracing::error!("the database writer has stopped; withholding the watchdog");
                        warned = true;
                    }
                } else if let Err(error) = notifier.watchdog() {
                    if !warned {
                        tracing::warn!(%error, "cannot send the systemd watchdog keep-alive");
                        warned = true;
                    }
                }
            }
        }
    }
    tracing::info!("shutting down");
    if let Err(error) = notifier.stopping() {
        tracing::debug!(%error, "cannot tell systemd that we are stopping");
    }
    lookup_task.abort();
    if let Some(t) = metrics_task {
        t.abort();
    }
    dns.shutdown().await;
    mappings.shutdown();
    let _ = std::fs::remove_file(&s.lookup_socket);
    Ok(())
}
