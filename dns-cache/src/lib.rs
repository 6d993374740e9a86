//! outsock-dns-cache: the DNS server that hands guests dummy IPv4 addresses standing for IPv6
//! ones (DESIGN.md §5).
//!
//! Layers, bottom up; a module imports only from layers below its own (and from its own layer
//! as listed, left to right):
//! - base: [`clock`] (time, injectable), [`pool`] (prefixes and their checks), [`mapping`] (the
//!   allocation policy, pure, with time passed in), [`reuse`] (how long an answer may be
//!   replayed), [`packet`] (allocation-free query parsing), [`upstream`] (a small DNS client over
//!   UDP with TCP retry), [`mmsg`] (batched datagram I/O, the only unsafe code), [`clients`]
//!   (who the DNS listeners answer: `allow_clients`), [`quota`] (new dummies per tenant);
//! - storage: [`store`] (SQLite, applying `migrations/`), [`persist`] (the single writer thread
//!   with group commit: all database writes go through it), [`pins`] (pins as leases of a
//!   dns.sock connection);
//! - resolving: [`cache`] (upstream answers with negative caching), [`metrics`] (counters and
//!   the Prometheus page), [`resolve`] (the rules);
//! - answering: [`answer`] (a request's reply, as hickory-server would build it), [`replies`]
//!   (encoded replies replayed), [`frontend`] (raw packets in, replies out, through the reply
//!   cache);
//! - front ends: [`udp`] (the UDP listener loop), [`tcp`] (hickory-server's handler), [`lookup`]
//!   (dns.sock for host-server);
//! - [`fuzz`] (tests and the `fuzzing` feature): the bodies of the fuzz targets over the parsers
//!   above (fuzz/);
//! - start-up: [`server`] (binds the DNS listeners), [`config`] (settings), [`daemon`] (the
//!   whole service); systemd readiness and watchdog come from the shared `outsock-notify` crate.

#![deny(unsafe_code)]

pub mod answer;
pub mod cache;
pub mod clients;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod frontend;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz;
pub mod lookup;
pub mod mapping;
pub mod metrics;
// The only module with unsafe code: the recvmmsg/sendmmsg system calls.
#[allow(unsafe_code)]
pub mod mmsg;
pub mod packet;
pub mod persist;
pub mod pins;
pub mod pool;
pub mod quota;
pub mod replies;
pub mod resolve;
pub mod reuse;
pub mod server;
pub mod store;
pub mod tcp;
pub mod udp;
pub mod upstream;
