//! [`Policy`]: the one decision both daemons ask — may a guest reach this address? Built-in
//! exclusions first (absolute), then the host's own addresses and the dummy pools, then the
//! operator's deny/allow rules. A check is a few integer comparisons over short slices: no lock,
//! no allocation.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use crate::builtin::{builtin_v4, builtin_v6, Reason};
use crate::host::HostAddresses;
use crate::prefix::Ipv4Net;
use crate::rules::Rules;

#[derive(Debug)]
struct Fixed {
    rules: Rules,
    pools: Vec<Ipv4Net>,
}

/// The destination policy of one daemon.
#[derive(Debug, Clone)]
pub struct Policy {
    fixed: Arc<Fixed>,
    host: HostAddresses,
}

impl Policy {
    /// The policy for `rules` (checked settings), the daemon's dummy `pools` and the host's
    /// addresses.
    #[must_use]
    pub fn new(rules: Rules, pools: Vec<Ipv4Net>, host: HostAddresses) -> Self {
        Self {
            fixed: Arc::new(Fixed { rules, pools }),
            host,
        }
    }

    /// The host's addresses this policy refuses.
    #[must_use]
    pub fn host(&self) -> &HostAddresses {
        &self.host
    }

    /// `Err(reason)` when `a` is never a destination.
    ///
    /// # Errors
    /// The [`Reason`] for the refusal.
    pub fn check_v6(&self, a: Ipv6Addr) -> Result<(), Reason> {
        if let Some(r) = builtin_v6(a) {
            return Err(r);
        }
        if self.host.contains_v6(a) {
            return Err(Reason::HostAddress);
        }
        if self.fixed.rules.denies_v6(a) {
            return Err(Reason::Denied);
        }
        Ok(())
    }

    /// `Err(reason)` when the IPv4 address `a` is never a destination (IPv4 egress).
    ///
    /// # Errors
    /// The [`Reason`] for the refusal.
    pub fn check_v4(&self, a: Ipv4Addr) -> Result<(), Reason> {
        if let Some(r) = builtin_v4(a) {
            return Err(r);
        }
        if self.fixed.pools.iter().any(|p| p.contains(a)) {
            return Err(Reason::Pool);
        }
        if self.host.contains_v4(a) {
            return Err(Reason::HostAddress);
        }
        if self.fixed.rules.denies_v4(a) {
            return Err(Reason::Denied);
        }
        Ok(())
    }

    /// Either family.
    ///
    /// # Errors
    /// The [`Reason`] for the refusal.
    pub fn check(&self, a: IpAddr) -> Result<(), Reason> {
        match a {
            IpAddr::V4(v4) => self.check_v4(v4),
            IpAddr::V6(v6) => self.check_v6(v6),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::DestinationSettings;

    fn policy(deny: &[&str], allow: &[&str]) -> Policy {
        let pools: Vec<Ipv4Net> = vec![
            "10.170.160.0/20".parse().unwrap(),
            "172.21.112.0/20".parse().unwrap(),
        ];
        let rules = DestinationSettings {
            deny: deny.iter().map(|s| (*s).to_owned()).collect(),
            allow: allow.iter().map(|s| (*s).to_owned()).collect(),
        }
        .check(&pools)
        .unwrap();
        let host =
            HostAddresses::fixed(["fd00:64::1".parse().unwrap(), "192.0.2.1".parse().unwrap()]);
        Policy::new(rules, pools, host)
    }

    fn v6(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    fn v4(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv6_defaults() {
        let p = policy(&[], &[]);
        assert_eq!(p.check_v6(v6("::1")), Err(Reason::Loopback));
        assert_eq!(p.check_v6(v6("::")), Err(Reason::Unspecified));
        assert_eq!(p.check_v6(v6("fe80::1")), Err(Reason::LinkLocal));
        assert_eq!(p.check_v6(v6("ff02::1")), Err(Reason::Multicast));
        assert_eq!(
            p.check_v6(v6("::ffff:203.0.113.5")),
            Err(Reason::Ipv4Mapped)
        );
        assert_eq!(p.check_v6(v6("::203.0.113.5")), Err(Reason::Ipv4Mapped));
        assert_eq!(p.check_v6(v6("fd00:64::1")), Err(Reason::HostAddress));
        assert_eq!(p.check_v6(v6("fd00:64::80")), Ok(()));
        assert_eq!(p.check_v6(v6("2001:db8::1")), Ok(()));
        assert_eq!(
            p.check(IpAddr::V6(v6("fd00:64::1"))),
            Err(Reason::HostAddress)
        );
    }

    #[test]
    fn ipv4_defaults() {
        let p = policy(&[], &[]);
        assert_eq!(p.check_v4(v4("127.0.0.1")), Err(Reason::Loopback));
        assert_eq!(p.check_v4(v4("169.254.1.1")), Err(Reason::LinkLocal));
        assert_eq!(p.check_v4(v4("0.0.0.0")), Err(Reason::Unspecified));
        assert_eq!(p.check_v4(v4("0.0.0.9")), Err(Reason::ThisNetwork));
        assert_eq!(p.check_v4(v4("224.0.0.251")), Err(Reason::Multicast));
        assert_eq!(p.check_v4(v4("250.0.0.1")), Err(Reason::Reserved));
        assert_eq!(p.check_v4(v4("255.255.255.255")), Err(Reason::Broadcast));
        assert_eq!(p.check_v4(v4("10.170.160.7")), Err(Reason::Pool));
        assert_eq!(p.check_v4(v4("172.21.112.9")), Err(Reason::Pool));
        assert_eq!(p.check_v4(v4("192.0.2.1")), Err(Reason::HostAddress));
        assert_eq!(p.check_v4(v4("203.0.113.10")), Ok(()));
        assert_eq!(p.check(IpAddr::V4(v4("203.0.113.10"))), Ok(()));
    }

    #[test]
    fn deny_and_allow_precedence() {
        let p = policy(
            &["::/0", "fd00:64::bad/128", "203.0.113.0/24"],
            &["fd00:64::/64", "203.0.113.128/25"],
        );
        // The allow-list: only fd00:64::/64 is reachable over IPv6…
        assert_eq!(p.check_v6(v6("fd00:64::80")), Ok(()));
        assert_eq!(p.check_v6(v6("2001:db8::1")), Err(Reason::Denied));
        // …an allow wins over a narrower deny inside it (allow carves holes in every deny)…
        assert_eq!(p.check_v6(v6("fd00:64::bad")), Ok(()));
        // …and built-ins stay absolute whatever the rules say.
        assert_eq!(p.check_v6(v6("fd00:64::1")), Err(Reason::HostAddress));
        assert_eq!(p.check_v6(v6("::1")), Err(Reason::Loopback));
        assert_eq!(p.check_v4(v4("203.0.113.10")), Err(Reason::Denied));
        assert_eq!(p.check_v4(v4("203.0.113.200")), Ok(()));
        assert_eq!(p.check_v4(v4("198.51.100.1")), Ok(()));
        assert_eq!(p.check_v4(v4("127.0.0.1")), Err(Reason::Loopback));
    }
}
