//! outsock-dns-cache: the DNS server that hands guests dummy IPv4 addresses standing for IPv6
//! ones (DESIGN.md §5).
//!
//! Layers, bottom up: [`pool`] (prefixes and their checks), [`mapping`] (the allocation policy,
//! pure, with time passed in), [`store`] (SQLite, applying `migrations/`), [`persist`] (the single
//! writer thread with group commit), [`cache`] (upstream answers with negative caching),
//! [`upstream`] (a small DNS client over UDP with TCP retry), [`resolve`] (the rules), [`packet`]
//! and [`replies`] (plain queries answered from encoded replies), [`server`] (the raw-packet
//! front end and hickory-server glue for TCP), [`udp`] (the UDP listener loop) over [`mmsg`]
//! (batched datagram I/O), [`lookup`]
//! (dns.sock for host-server) with [`pins`] (pins as leases of its connections), [`metrics`],
//! [`config`]; systemd readiness and watchdog come from the shared `outsock-notify` crate.

pub mod cache;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod lookup;
pub mod mapping;
pub mod metrics;
pub mod mmsg;
pub mod packet;
pub mod persist;
pub mod pins;
pub mod pool;
pub mod replies;
pub mod resolve;
pub mod server;
pub mod store;
pub mod udp;
pub mod upstream;
