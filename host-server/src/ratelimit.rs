//! Rate limits for log lines a guest (or a remote peer) can trigger at will, so that a
//! misbehaving guest cannot flood the host's logs: each call site gets a few lines per second
//! and drops the rest. The limiter is `outsock_policy::LogLimit`, shared with dns-cache; this
//! module keeps host-server's call sites naming it in one place.

pub use outsock_policy::LogLimit;
