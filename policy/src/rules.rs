//! The operator's part of the policy: the `[destinations]` table both daemons embed in their
//! settings ([`DestinationSettings`], `deny` and `allow` prefix lists), checked at start-up into
//! [`Rules`].
//!
//! Semantics: an address inside a `deny` prefix is refused unless it is also inside an `allow`
//! prefix; `allow` only carves holes in `deny` (so `deny = ["::/0"]` with
//! `allow = ["2001:db8:1::/48"]` is an allow-list). The built-in exclusions stay absolute:
//! an `allow` that overlaps one of them, or one of the dummy pools, is refused at start-up, as
//! is an `allow` that no `deny` contains (it would do nothing).

use serde::Deserialize;
use thiserror::Error;

use crate::builtin::{BUILTIN_V4, BUILTIN_V6};
use crate::prefix::{IpNet, Ipv4Net, Ipv6Net};

/// The settings key of the deny list, as named in errors.
pub const DENY_KEY: &str = "destinations.deny";
/// The settings key of the allow list, as named in errors.
pub const ALLOW_KEY: &str = "destinations.allow";

/// `[destinations]` as written in a daemon's TOML (or `OUTSOCK_..._DESTINATIONS__DENY=a,b`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DestinationSettings {
    /// Prefixes (IPv4 or IPv6) never to synthesise for nor connect or send to.
    pub deny: Vec<String>,
    /// Prefixes inside a `deny` prefix that stay reachable.
    pub allow: Vec<String>,
}

/// A `[destinations]` entry that makes no sense; `key` is the settings key.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("setting `{key}` is invalid: {message}")]
pub struct RuleError {
    pub key: &'static str,
    pub message: String,
}

fn bad(key: &'static str, message: String) -> RuleError {
    RuleError { key, message }
}

/// The checked deny and allow prefixes, by family.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    deny_v4: Vec<Ipv4Net>,
    deny_v6: Vec<Ipv6Net>,
    allow_v4: Vec<Ipv4Net>,
    allow_v6: Vec<Ipv6Net>,
}

impl DestinationSettings {
    /// Checks the lists against each other, the built-in exclusions and the dummy `pools`.
    ///
    /// # Errors
    /// [`RuleError`] naming `destinations.deny` or `destinations.allow` and the entry at fault.
    pub fn check(&self, pools: &[Ipv4Net]) -> Result<Rules, RuleError> {
        let parse = |key: &'static str, list: &[String]| {
            list.iter()
                .map(|s| {
                    s.parse::<IpNet>()
                        .map_err(|e| bad(key, format!("`{}`: {e}", s.trim())))
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let mut rules = Rules::default();
        for n in parse(DENY_KEY, &self.deny)? {
            match n {
                IpNet::V4(n) => rules.deny_v4.push(n),
                IpNet::V6(n) => rules.deny_v6.push(n),
            }
        }
        for n in parse(ALLOW_KEY, &self.allow)? {
            match n {
                IpNet::V4(n) => {
                    if let Some((b, why)) = BUILTIN_V4.iter().find(|(b, _)| b.overlaps(n)) {
                        return Err(bad(
                            ALLOW_KEY,
                            format!("`{n}` overlaps the built-in exclusion {b} ({why}), which no setting can lift"),
                        ));
                    }
                    if let Some(p) = pools.iter().find(|p| p.overlaps(n)) {
                        return Err(bad(
                            ALLOW_KEY,
                            format!(
                                "`{n}` overlaps the dummy pool {p}, which is never a destination"
                            ),
                        ));
                    }
                    if !rules.deny_v4.iter().any(|d| d.covers(n)) {
                        return Err(bad(
                            ALLOW_KEY,
                            format!("`{n}` is not inside any `{DENY_KEY}` prefix; an allow only carves a hole in a deny"),
                        ));
                    }
                    rules.allow_v4.push(n);
                }
                IpNet::V6(n) => {
                    if let Some((b, why)) = BUILTIN_V6.iter().find(|(b, _)| b.overlaps(n)) {
                        return Err(bad(
                            ALLOW_KEY,
                            format!("`{n}` overlaps the built-in exclusion {b} ({why}), which no setting can lift"),
                        ));
                    }
                    if !rules.deny_v6.iter().any(|d| d.covers(n)) {
                        return Err(bad(
                            ALLOW_KEY,
                            format!("`{n}` is not inside any `{DENY_KEY}` prefix; an allow only carves a hole in a deny"),
                        ));
                    }
                    rules.allow_v6.push(n);
                }
            }
        }
        Ok(rules)
    }
}

impl Rules {
    /// Whether the operator's rules refuse `a` (in a deny prefix, in no allow prefix).
    #[must_use]
    pub fn denies_v6(&self, a: std::net::Ipv6Addr) -> bool {
        self.deny_v6.iter().any(|d| d.contains(a)) && !self.allow_v6.iter().any(|p| p.contains(a))
    }

    /// Whether the operator's rules refuse `a`.
    #[must_use]
    pub fn denies_v4(&self, a: std::net::Ipv4Addr) -> bool {
        self.deny_v4.iter().any(|d| d.contains(a)) && !self.allow_v4.iter().any(|p| p.contains(a))
    }

    /// Whether there are no rules at all (the defaults).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.deny_v4.is_empty() && self.deny_v6.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(deny: &[&str], allow: &[&str]) -> DestinationSettings {
        DestinationSettings {
            deny: deny.iter().map(|s| (*s).to_owned()).collect(),
            allow: allow.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    fn pools() -> Vec<Ipv4Net> {
        vec![
            "10.170.160.0/20".parse().unwrap(),
            "172.21.112.0/20".parse().unwrap(),
        ]
    }

    fn err(deny: &[&str], allow: &[&str]) -> RuleError {
        settings(deny, allow).check(&pools()).unwrap_err()
    }

    #[test]
    fn allow_carves_holes_in_deny() {
        let r = settings(
            &["::/0", "198.51.100.0/24"],
            &["2001:db8:1::/48", "198.51.100.128/25"],
        )
        .check(&pools())
        .unwrap();
        assert!(r.denies_v6("2001:db8:2::1".parse().unwrap()));
        assert!(r.denies_v6("fd00:64::80".parse().unwrap()));
        assert!(!r.denies_v6("2001:db8:1:2::1".parse().unwrap()));
        assert!(r.denies_v4("198.51.100.1".parse().unwrap()));
        assert!(!r.denies_v4("198.51.100.200".parse().unwrap()));
        assert!(!r.denies_v4("203.0.113.1".parse().unwrap()));
        assert!(!r.is_empty());
    }

    #[test]
    fn the_defaults_deny_nothing() {
        let r = DestinationSettings::default().check(&pools()).unwrap();
        assert!(r.is_empty());
        assert!(!r.denies_v6("2001:db8::1".parse().unwrap()));
        assert!(!r.denies_v4("203.0.113.1".parse().unwrap()));
    }

    #[test]
    fn nonsense_is_refused_naming_the_key() {
        let e = err(&["2001:db8::/129"], &[]);
        assert_eq!(e.key, DENY_KEY);
        assert!(e.message.contains("2001:db8::/129"), "{e}");
        let e = err(&["2001:db8::1/64"], &[]);
        assert_eq!(e.key, DENY_KEY);
        assert!(e.message.contains("bits set"), "{e}");
        assert_eq!(err(&["nonsense"], &[]).key, DENY_KEY);
        assert_eq!(err(&["::/0"], &["10.0.0.1/8"]).key, ALLOW_KEY);
        // An allow that would lift a built-in exclusion.
        for allow in ["fe80::/64", "::1/128", "::/0", "ff00::/8", "::ffff:0:0/96"] {
            let e = err(&["::/0"], &[allow]);
            assert_eq!(e.key, ALLOW_KEY);
            assert!(e.message.contains("built-in"), "{allow}: {e}");
        }
        for allow in ["127.0.0.0/8", "169.254.1.0/24", "0.0.0.0/0"] {
            let e = err(&["0.0.0.0/0"], &[allow]);
            assert!(e.message.contains("built-in"), "{allow}: {e}");
        }
        // An allow over a pool.
        let e = err(&["10.0.0.0/8"], &["10.170.0.0/16"]);
        assert!(e.message.contains("pool"), "{e}");
        // An allow outside every deny.
        let e = err(&["2001:db8::/32"], &["2001:db9::/32"]);
        assert!(e.message.contains("not inside"), "{e}");
        let e = err(&["2001:db8:1::/48"], &["2001:db8::/32"]);
        assert!(e.message.contains("not inside"), "{e}");
        let e = err(&[], &["203.0.113.0/24"]);
        assert!(e.to_string().contains("`destinations.allow`"), "{e}");
    }
}
