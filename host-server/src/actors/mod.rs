//! The actix actors: thin shells that own one resource each and drive the plain logic in the
//! crate's other modules. Nothing outside this crate sees an `Addr<_>`: the actors other code
//! talks to come with a handle type with async methods in their own module, and `crate::handle`
//! hands those out.
//!
//! Two layers: the entry points, which start the per-request work —
//! - [`acceptor::Acceptor`]: one per worker arbiter, each accepting on host.sock and starting a
//!   [`stream::StreamActor`] on its own arbiter for every stream it accepts; drains on SIGTERM.
//! - [`stream::StreamActor`]: one per outsourced socket (connect relay, UDP association).
//! - [`listener::ListenerActor`]: one per guest listener (owns the IPv6 listening socket).
//!
//! and the services that the per-request work calls through their handles —
//! - [`mapping::MappingActor`] ([`mapping::MappingHandle`]): writes the dummy ↔ IPv6 cache
//!   (sessions read it directly), owns the pins and the dns.sock client.
//! - [`metrics::MetricsActor`] ([`metrics::MetricsHandle`]): renders the shared counters for
//!   the Prometheus endpoint.

pub mod acceptor;
pub mod listener;
pub mod mapping;
pub mod metrics;
pub mod stream;
