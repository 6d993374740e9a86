//! The public, `Addr`-free API: the server's start-up (which wires the actors together), drain
//! and shutdown, and [`run`] for the binary. The handle types it gives out ([`MappingHandle`],
//! [`MetricsHandle`]) live next to their actors and are re-exported here.

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use thiserror::Error;
use tokio::sync::watch;

pub use crate::actors::mapping::{MappingHandle, PinGuard};
pub use crate::actors::metrics::MetricsHandle;

use crate::actors::acceptor::{Acceptor, Drain};
use crate::actors::mapping::{shared_pins, MappingActor};
use crate::actors::metrics::MetricsActor;
use crate::config::Settings;
use crate::context::Shared;
use crate::dest::Router;
use crate::limits::Limits;
use crate::lookup::LookupClient;
use crate::mapping::{MappingCache, SharedCache};
use crate::metrics::SharedMetrics;

/// Why the server could not start.
#[derive(Debug, Error)]
pub enum ServerError {
    #[error("cannot listen on {path}")]
    Socket {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot serve metrics on {addr}")]
    Metrics {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("the actor system failed")]
    System(#[source] io::Error),
    #[error("cannot start the destination policy")]
    Policy(#[source] outsock_policy::HostError),
}

/// A running server.
#[derive(Debug)]
pub struct ServerHandle {
    acceptors: Vec<Addr<Acceptor>>,
    drain_tx: watch::Sender<bool>,
    limits: Limits,
    mapping: MappingHandle,
    metrics: MetricsHandle,
    metrics_addr: Option<SocketAddr>,
    arbiters: Vec<Arbiter>,
    drain_timeout: Duration,
}

/// Starts every actor and begins accepting on host.sock. Must run inside an actix `System`.
///
/// # Errors
/// [`ServerError`] when host.sock or the metrics address cannot be bound.
pub async fn start(settings: Settings) -> Result<ServerHandle, ServerError> {
    let settings = Arc::new(settings);
    let socket_error = |source| ServerError::Socket {
        path: settings.socket.display().to_string(),
        source,
    };
    let listener = bind_socket(&settings.socket, settings.socket_mode).map_err(socket_error)?;
    let limits = Limits::with_overrides(
        &settings.limits,
        settings.vms.iter().filter_map(|(name, vm)| {
            vm.limits
                .as_ref()
                .map(|l| (crate::identity::Identity::Vm(name.clone()), l))
        }),
    );
    let control = Arbiter::new();
    let counters = SharedMetrics::default();
    let metrics = MetricsHandle::new(
        MetricsActor::start_in_arbiter(&control.handle(), {
            let limits = limits.clone();
            let counters = counters.clone();
            move |_| MetricsActor::new(counters, limits)
        }),
        counters,
    );
    let cache = SharedCache::new(MappingCache::new(
        settings.mapping_cache_ttl,
        settings.mapping_cache_entries,
    ));
    let pins = shared_pins();
    let mapping = MappingHandle::new(
        MappingActor::start_in_arbiter(&control.handle(), {
            let s = Arc::clone(&settings);
            let metrics = metrics.clone();
            let cache = cache.clone();
            let pins = Arc::clone(&pins);
            // The closure runs on the control arbiter, so the client task lives there too.
            move |_| {
                let client = LookupClient::spawn(s.dns_socket.clone());
                MappingActor::new(&s, cache, pins, client, metrics)
            }
        }),
        cache,
        pins,
    );
    let metrics_addr = match settings.metrics_listen {
        Some(addr) => Some(
            crate::metrics_http::serve(addr, metrics.clone())
                .await
                .map_err(|source| ServerError::Metrics { addr, source })?,
        ),
        None => None,
    };
    let policy = outsock_policy::Policy::new(
        settings.destinations.clone(),
        vec![settings.destination_pool, settings.source_pool],
        outsock_policy::HostAddresses::watch().map_err(ServerError::Policy)?,
    );
    let (drain_tx, draining) = watch::channel(false);
    let shared = Shared {
        policy,
        router: Router {
            destination_pool: settings.destination_pool,
            source_pool: settings.source_pool,
            guest_dns: settings.guest_dns,
            ipv4_egress: settings.ipv4_egress,
        },
        settings: Arc::clone(&settings),
        mapping: mapping.clone(),
        metrics: metrics.clone(),
        limits: limits.clone(),
        draining,
        udp_server_locals: Arc::new(std::sync::Mutex::new(crate::context::LocalTable::new(4096))),
        udp_server_ports: Arc::default(),
        vm_cids: crate::context::Cids::default(),
        channels: crate::channels::Channels::default(),
    };
    let workers: Vec<Arbiter> = (0..settings.workers).map(|_| Arbiter::new()).collect();
    let mut acceptors = Vec::with_capacity(workers.len());
    for worker in &workers {
        let l = listener.try_clone().map_err(socket_error)?;
        let shared = shared.clone();
        acceptors.push(Acceptor::start_in_arbiter(&worker.handle(), move |_| {
            Acceptor::new(l, shared)
        }));
    }
    drop(listener);
    let mut arbiters = workers;
    arbiters.push(control);
    tracing::info!(socket = %settings.socket.display(), "host-server listening");
    Ok(ServerHandle {
        acceptors,
        drain_tx,
        limits,
        mapping,
        metrics,
        metrics_addr,
        arbiters,
        drain_timeout: settings.drain_timeout,
    })
}

/// Binds host.sock with `mode`, replacing a stale socket file left by a previous run.
fn bind_socket(path: &Path, mode: u32) -> io::Result<std::os::unix::net::UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if path.exists() {
        // Only a socket nobody answers on is stale; never remove a live server's socket.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                "another server answers on this socket",
            ));
        }
        std::fs::remove_file(path)?;
    }
    let l = std::os::unix::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    l.set_nonblocking(true)?;
    Ok(l)
}

impl ServerHandle {
    #[must_use]
    pub fn mapping(&self) -> MappingHandle {
        self.mapping.clone()
    }

    #[must_use]
    pub fn metrics(&self) -> MetricsHandle {
        self.metrics.clone()
    }

    /// Where the metrics endpoint listens (its real port when configured with port 0).
    #[must_use]
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Stops accepting, closes guest listeners, waits up to the drain timeout for open
    /// sockets to finish, then stops the worker arbiters. Returns the sockets still open.
    pub async fn shutdown(self) -> u64 {
        let _ = self.drain_tx.send(true);
        for a in &self.acceptors {
            let _ = a.send(Drain).await;
        }
        tracing::info!("stopped accepting on host.sock");
        let deadline = Instant::now() + self.drain_timeout;
        while self.limits.total_sockets() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let left = self.limits.total_sockets();
        if left > 0 {
            tracing::warn!(open = left, "drain timeout: closing what is still open");
        }
        for a in &self.arbiters {
            a.stop();
        }
        left
    }
}

/// Runs the server until SIGTERM or SIGINT, then drains. Tells systemd when ready.
///
/// # Errors
/// [`ServerError`] when start-up fails.
pub fn run(settings: Settings) -> Result<(), ServerError> {
    let sys = actix_rt::System::new();
    sys.block_on(async move {
        // Before host.sock exists: a stop asked for as soon as it appears is not lost (nor does
        // SIGTERM's default action kill the process mid-start).
        let mut term =
            actix_rt::signal::unix::signal(actix_rt::signal::unix::SignalKind::terminate())
                .map_err(ServerError::System)?;
        let mut int =
            actix_rt::signal::unix::signal(actix_rt::signal::unix::SignalKind::interrupt())
                .map_err(ServerError::System)?;
        let server = start(settings).await?;
        match outsock_notify::notify("READY=1") {
            Ok(true) => tracing::info!("told systemd we are ready"),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "cannot notify systemd"),
        }
        // The watchdog ticks from this task, so it stops when the reactor is stuck.
        if let Some(every) = outsock_notify::watchdog_interval() {
            actix_rt::spawn(async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tick.tick().await;
                    if let Err(e) = outsock_notify::notify("WATCHDOG=1") {
                        tracing::warn!(error = %e, "cannot send the systemd watchdog keep-alive");
                    }
                }
            });
        }
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: draining"),
            _ = int.recv() => tracing::info!("SIGINT: draining"),
        }
        let _ = outsock_notify::notify("STOPPING=1");
        server.shutdown().await;
        Ok(())
    })
}
