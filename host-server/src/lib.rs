//! outsock-host-server: the host server module (DESIGN.md §6). It accepts outsourced sockets on
//! host.sock and performs them on the host with IPv6 sockets.
//!
//! Layers, from the top; imports point down the list (or sideways inside a layer, never round
//! in a circle), which `scripts/check-structure` checks:
//! - entry points: [`handle`], the public `Addr`-free API with [`handle::start`] and
//!   [`handle::run`] (which also speaks systemd's readiness and watchdog protocol through the
//!   `outsock-notify` crate); the acceptor, stream and listener [`actors`]; `metrics_http`;
//! - the per-request work: `session` (one host.sock stream), which dispatches to `outbound`,
//!   [`inbound`], [`udp`] and `vms` (`outsock vm ls`), with `dns_tcp` and `handover` beneath them and `context` (the
//!   state every handler takes) under all of them;
//! - the service actors with their handles: [`actors::mapping`] and [`actors::metrics`];
//! - plain logic tested without actix — [`config`], [`accounts`] (names in the access
//!   settings), [`identity`] (who a peer is), [`dest`] (where an IPv4 destination goes),
//!   [`limits`] (with [`awaiting`]: streams before their request), [`mapping`] (cache and
//!   pins), [`relay`],
//!   [`framed`], [`fdpass`] (SCM_RIGHTS), [`metrics`], [`errno`], [`ratelimit`]; and the I/O
//!   clients [`lookup`] (dns.sock) and [`fallback`] (the SQLite file, read-only).
//!
//! [`fuzz`] (tests and the `fuzzing` feature) drives `session`'s opening and `assoc`'s channels
//! with a client's arbitrary bytes for the `host_session` fuzz target (fuzz/).
//!
//! No `unsafe` in this crate: the SCM_RIGHTS calls behind [`fdpass`] live in `outsock-fdpass`.

#![forbid(unsafe_code)]

pub mod accounts;
pub mod actors;
mod assoc;
pub mod awaiting;
mod channels;
pub mod config;
mod context;
pub mod dest;
mod dns_tcp;
pub mod errno;
pub mod fallback;
pub mod fdpass;
pub mod framed;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz;
pub mod handle;
mod handover;
pub mod icmp;
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
mod servfail;
mod session;
pub mod udp;
mod vms;

pub use config::Settings;
pub use handle::{run, start, MappingHandle, MetricsHandle, ServerHandle};
