//! The actix actors: thin shells that own one resource each and drive the plain logic in the
//! crate's other modules. Nothing outside this crate sees an `Addr<_>`; `crate::handle` wraps
//! them in handle types with async methods.
//!
//! - [`acceptor::Acceptor`]: one per worker arbiter, each accepting on host.sock and starting a
//!   [`stream::StreamActor`] on its own arbiter for every stream it accepts; drains on SIGTERM.
//! - [`stream::StreamActor`]: one per outsourced socket (connect relay, UDP association).
//! - [`listener::ListenerActor`]: one per guest listener (owns the IPv6 listening socket).
//! - [`mapping::MappingActor`]: writes the dummy ↔ IPv6 cache (sessions read it directly),
//!   owns the pins and the dns.sock client.
//! - [`metrics::MetricsActor`]: renders the shared counters for the Prometheus endpoint.

pub mod acceptor;
pub mod listener;
pub mod mapping;
pub mod metrics;
pub mod stream;
