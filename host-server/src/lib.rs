//! outsock-host-server: the host server module (DESIGN.md §6). It accepts outsourced sockets on
//! host.sock and performs them on the host with IPv6 sockets.
//!
//! Layers: plain logic tested without actix — [`config`], [`identity`] (who a peer is),
//! [`dest`] (where an IPv4 destination goes), [`limits`], [`mapping`] (cache and pins),
//! [`relay`], [`framed`], [`fdpass`] (SCM_RIGHTS), [`metrics`]; I/O clients —
//! [`lookup`] (dns.sock) and [`fallback`] (the SQLite file, read-only); the per-request work —
//! `session`, `outbound`, `inbound`, `udp`; the thin [`actors`]; and [`handle`], the public
//! `Addr`-free API with [`handle::start`] and [`handle::run`] (which also speaks systemd's
//! readiness and watchdog protocol through the `outsock-notify` crate).

pub mod actors;
pub mod config;
pub mod dest;
pub mod errno;
pub mod fallback;
pub mod fdpass;
pub mod framed;
pub mod handle;
pub mod identity;
pub mod inbound;
pub mod limits;
pub mod lookup;
pub mod mapping;
pub mod metrics;
mod metrics_http;
mod outbound;
pub mod ratelimit;
pub mod relay;
mod session;
pub mod udp;

pub use config::Settings;
pub use handle::{run, start, MappingHandle, MetricsHandle, ServerHandle};
