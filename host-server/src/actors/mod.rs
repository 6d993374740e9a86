//! The actix actors: thin shells that own one resource each and drive the plain logic in the
//! crate's other modules. Nothing outside this crate sees an `Addr<_>`; `crate::handle` wraps
//! them in handle types with async methods.
//!
//! - [`acceptor::Acceptor`]: owns host.sock, hands each stream to a [`stream::StreamActor`] on a
//!   worker arbiter, and drains on SIGTERM.
//! - [`stream::StreamActor`]: one per outsourced socket (connect relay, UDP association).
//! - [`listener::ListenerActor`]: one per guest listener (owns the IPv6 listening socket).
//! - [`mapping::MappingActor`]: the dummy ↔ IPv6 cache, pins, and the dns.sock client.
//! - [`metrics::MetricsActor`]: the counters and the Prometheus endpoint.

pub mod acceptor;
pub mod listener;
pub mod mapping;
pub mod metrics;
pub mod stream;
