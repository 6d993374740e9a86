//! outsock-policy: which addresses a guest may reach (DESIGN.md §11, "Destinations"), decided in
//! one place for both daemons: dns-cache never synthesises a dummy for (nor passes through an A
//! record of) a refused address, and host-server never connects or sends to one.
//!
//! Modules, bottom up (imports point down the list): [`prefix`] (IPv4/IPv6 prefixes),
//! [`builtin`] (the built-in exclusions and [`Reason`]), [`rules`] (the `[destinations]`
//! settings, `deny` and `allow`, checked at start-up), [`host`] (the host's own addresses, read
//! with getifaddrs and followed over netlink), [`decide`] ([`Policy`], the check itself);
//! [`ratelimit`] stands alone.
//!
//! The check is cheap enough for host-server's connect path: no lock, no allocation.

#![forbid(unsafe_code)]

pub mod builtin;
pub mod decide;
pub mod host;
pub mod prefix;
pub mod ratelimit;
pub mod rules;

pub use builtin::Reason;
pub use decide::Policy;
pub use host::{HostAddresses, HostError};
pub use prefix::{IpNet, Ipv4Net, Ipv6Net, PrefixError};
pub use ratelimit::LogLimit;
pub use rules::{DestinationSettings, RuleError, Rules};
