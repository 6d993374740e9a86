//! Settings: a TOML file plus `OUTSOCK_DNS_<KEY>` environment overrides, read through the
//! `config` crate and then checked, so that a bad value stops start-up with the key's name and
//! the reason instead of surfacing later as odd behaviour.
//!
//! Lists in the environment are comma-separated (`OUTSOCK_DNS_UPSTREAMS=[2001:db8::53]:53,...`).
//! deploy/dns-cache.example.toml documents every key.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hickory_proto::rr::Name;
use outsock_policy::{DestinationSettings, Ipv4Net, Rules};
use serde::Deserialize;

use crate::clients::{AllowList, ClientNet};
use crate::pool::Ipv4Prefix;
use crate::store::Durability;

/// The environment prefix: `OUTSOCK_DNS_MAX_TTL=300` sets `max_ttl`.
pub const ENV_PREFIX: &str = "OUTSOCK_DNS";

/// Keys that hold lists, parsed from comma-separated environment values.
const LIST_KEYS: [&str; 10] = [
    "listen",
    "upstreams",
    "pass_through",
    "never_synthesise",
    "destinations.deny",
    "destinations.allow",
    "lookup_uids",
    "operator_uids",
    "admin_uids",
    "allow_clients",
];

/// Why the settings could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The file or environment could not be read or has a value of the wrong type.
    #[error("cannot read the settings: {0}")]
    Read(#[from] config::ConfigError),
    /// A value was read but is not acceptable.
    #[error("invalid setting `{key}`: {reason}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// Why.
        reason: String,
    },
}

fn invalid(key: &'static str, reason: impl Into<String>) -> SettingsError {
    SettingsError::Invalid {
        key,
        reason: reason.into(),
    }
}

/// The settings as written, before checking.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Raw {
    listen: Vec<String>,
    upstreams: Vec<String>,
    upstream_timeout_ms: u64,
    database: PathBuf,
    durability: Durability,
    lookup_socket: PathBuf,
    lookup_socket_mode: String,
    lookup_uids: Vec<u32>,
    operator_uids: Vec<u32>,
    admin_uids: Vec<u32>,
    metrics: String,
    ipv4_egress: bool,
    max_ttl: u32,
    grace_secs: u64,
    destination_pool: String,
    source_pool: String,
    route_table: String,
    pass_through: Vec<String>,
    never_synthesise: Vec<String>,
    ipv6_literal_suffix: String,
    cache_entries: usize,
    cache_max_ttl: u32,
    negative_ttl_max: u32,
    edns_payload: u16,
    destinations: DestinationSettings,
    allow_clients: Vec<String>,
    metrics_public: bool,
    source_dummies_per_64: usize,
    dummy_quota_per_minute: u32,
    lookup_in_flight_per_tenant: usize,
    /// `[static]`: dummy IPv4 = IPv6, or = { ipv6 = "…", names = ["…"] }.
    #[serde(rename = "static")]
    statics: std::collections::BTreeMap<String, RawStatic>,
}

/// One `[static]` entry as written.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawStatic {
    Address(String),
    Full {
        ipv6: String,
        #[serde(default)]
        names: Vec<String>,
    },
}

/// One static mapping of the settings: an operator's fixed pair (RFC 7757's explicit address
/// mapping), with names for PTR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticMapping {
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    pub names: Vec<String>,
}

impl Default for Raw {
    fn default() -> Self {
        Self {
            listen: vec!["[::1]:53".into()],
            upstreams: Vec::new(),
            upstream_timeout_ms: 2000,
            database: "/var/lib/outsock/mappings.sqlite3".into(),
            durability: Durability::ProcessCrash,
            lookup_socket: "/run/outsock/dns.sock".into(),
            lookup_socket_mode: "0660".into(),
            lookup_uids: Vec::new(),
            operator_uids: Vec::new(),
            admin_uids: Vec::new(),
            metrics: "127.0.0.1:9153".into(),
            ipv4_egress: false,
            max_ttl: 600,
            grace_secs: 3600,
            destination_pool: "10.170.160.0/20".into(),
            source_pool: "172.21.112.0/20".into(),
            route_table: "/proc/net/route".into(),
            pass_through: Vec::new(),
            never_synthesise: Vec::new(),
            ipv6_literal_suffix: "ipv6.outsock.".into(),
            cache_entries: 100_000,
            cache_max_ttl: 86_400,
            negative_ttl_max: 300,
            edns_payload: 1232,
            destinations: DestinationSettings::default(),
            allow_clients: Vec::new(),
            metrics_public: false,
            source_dummies_per_64: 64,
            dummy_quota_per_minute: 256,
            lookup_in_flight_per_tenant: 64,
            statics: std::collections::BTreeMap::new(),
        }
    }
}

/// Checked settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// DNS listening addresses (UDP and TCP each).
    pub listen: Vec<SocketAddr>,
    /// Upstream resolvers, tried in order.
    pub upstreams: Vec<SocketAddr>,
    /// Per-server upstream timeout.
    pub upstream_timeout: Duration,
    /// The SQLite file.
    pub database: PathBuf,
    /// How much of a crash a mapping survives.
    pub durability: Durability,
    /// dns.sock path.
    pub lookup_socket: PathBuf,
    /// dns.sock permission bits.
    pub lookup_socket_mode: u32,
    /// Who may do what on dns.sock, by the peer's SO_PEERCRED uid.
    pub access: crate::lookup::Access,
    /// Metrics address; `None` when switched off.
    pub metrics: Option<SocketAddr>,
    /// The host has IPv4 egress: real A records pass through.
    pub ipv4_egress: bool,
    /// Upper bound of synthesised TTLs, seconds.
    pub max_ttl: u32,
    /// Grace period after last answer or use.
    pub grace: Duration,
    /// Destination pool.
    pub destination_pool: Ipv4Prefix,
    /// Source pool.
    pub source_pool: Ipv4Prefix,
    /// Route table checked for overlap.
    pub route_table: String,
    /// Names whose A queries pass through unchanged.
    pub pass_through: Vec<Name>,
    /// Names never synthesised.
    pub never_synthesise: Vec<Name>,
    /// The zone of IPv6 literal names (`2001-db8--10.<suffix>` answers the dummy for
    /// 2001:db8::10); `None` when switched off (an empty setting).
    pub ipv6_literal_suffix: Option<Name>,
    /// Answer cache size.
    pub cache_entries: usize,
    /// Longest time an upstream answer is cached, seconds.
    pub cache_max_ttl: u32,
    /// Longest time a negative answer is cached, seconds.
    pub negative_ttl_max: u32,
    /// EDNS UDP payload size we advertise.
    pub edns_payload: u16,
    /// `[destinations]`: the operator's deny/allow prefixes of the destination policy.
    pub destinations: Rules,
    /// Who the DNS listeners answer besides loopback (required for a non-loopback `listen`).
    pub allow_clients: AllowList,
    /// Most source-pool dummies one remote /64 holds.
    pub source_dummies_per_64: usize,
    /// New destination dummies per tenant and minute.
    pub dummy_quota_per_minute: u32,
    /// dns.sock look-ups of one tenant under way at once on one connection.
    pub lookup_in_flight_per_tenant: usize,
    /// `[static]`: the static mappings, by dummy address.
    pub statics: Vec<StaticMapping>,
    /// Where these settings were read from (the file, and whether it had to exist), for a
    /// reload on SIGHUP; `None` for settings that were not read from a file.
    pub source: Option<(PathBuf, bool)>,
}

impl Settings {
    /// The two pools as the destination policy's prefixes (never destinations themselves).
    pub fn pools(&self) -> Vec<Ipv4Net> {
        [self.destination_pool, self.source_pool]
            .iter()
            .filter_map(|p| Ipv4Net::new(p.network(), p.prefix_len()).ok())
            .collect()
    }
}

impl Settings {
    /// Reads `file` (optional when `required` is false) and the environment.
    pub fn load(file: Option<&Path>, required: bool) -> Result<Self, SettingsError> {
        let mut b = config::Config::builder();
        if let Some(f) = file {
            b = b.add_source(config::File::from(f).required(required));
        }
        let mut env = config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("_")
            .separator("__")
            .try_parsing(true)
            .list_separator(",");
        for key in LIST_KEYS {
            env = env.with_list_parse_key(key);
        }
        let raw: Raw = b.add_source(env).build()?.try_deserialize()?;
        let mut s = Self::check(raw)?;
        s.source = file.map(|f| (f.to_path_buf(), required));
        Ok(s)
    }

    /// Parses settings from TOML text alone; for tests.
    pub fn from_toml(text: &str) -> Result<Self, SettingsError> {
        let raw: Raw = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build()?
            .try_deserialize()?;
        Self::check(raw)
    }

    fn check(raw: Raw) -> Result<Self, SettingsError> {
        let addrs = |key: &'static str, list: &[String]| {
            list.iter()
                .map(|s| {
                    s.trim()
                        .parse::<SocketAddr>()
                        .map_err(|_| invalid(key, format!("`{s}` is not an address:port")))
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let listen = addrs("listen", &raw.listen)?;
        let allow_clients = raw
            .allow_clients
            .iter()
            .map(|s| s.parse::<ClientNet>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid("allow_clients", e.to_string()))?;
        if allow_clients.is_empty() {
            if let Some(open) = listen.iter().find(|a| !a.ip().is_loopback()) {
                return Err(invalid(
                    "allow_clients",
                    format!(
                        "`listen` has the non-loopback address {open}: name the clients it may \
                         answer (allow_clients = [\"PREFIX\", ...]) so that dns-cache is not an \
                         open resolver"
                    ),
                ));
            }
        }
        let upstreams = addrs("upstreams", &raw.upstreams)?;
        if upstreams.is_empty() {
            return Err(invalid(
                "upstreams",
                "at least one upstream resolver is needed",
            ));
        }
        if raw.upstream_timeout_ms == 0 || raw.upstream_timeout_ms > 60_000 {
            return Err(invalid(
                "upstream_timeout_ms",
                "must be between 1 and 60000",
            ));
        }
        let lookup_socket_mode = u32::from_str_radix(raw.lookup_socket_mode.trim(), 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| {
                invalid(
                    "lookup_socket_mode",
                    "must be octal permission bits such as 0660",
                )
            })?;
        if lookup_socket_mode & 0o002 != 0 {
            return Err(invalid(
                "lookup_socket_mode",
                "dns.sock must not be world-writable",
            ));
        }
        let metrics = match raw.metrics.trim() {
            "" | "off" => None,
            s => {
                let a: SocketAddr = s
                    .parse()
                    .map_err(|_| invalid("metrics", format!("`{s}` is not an address:port")))?;
                if !a.ip().is_loopback() && !raw.metrics_public {
                    return Err(invalid(
                        "metrics",
                        "must be a loopback address (metrics are local) unless \
                         `metrics_public = true` says otherwise",
                    ));
                }
                Some(a)
            }
        };
        if raw.max_ttl == 0 {
            return Err(invalid("max_ttl", "must be at least 1 second"));
        }
        let destination_pool: Ipv4Prefix = raw
            .destination_pool
            .parse()
            .map_err(|e: crate::pool::PoolError| invalid("destination_pool", e.to_string()))?;
        let source_pool: Ipv4Prefix = raw
            .source_pool
            .parse()
            .map_err(|e: crate::pool::PoolError| invalid("source_pool", e.to_string()))?;
        let names = |key: &'static str, list: &[String]| {
            list.iter()
                .map(|s| {
                    let mut n = Name::from_ascii(s.trim())
                        .map_err(|e| invalid(key, format!("`{s}` is not a domain name: {e}")))?;
                    n.set_fqdn(true);
                    Ok::<_, SettingsError>(n)
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let pools: Vec<Ipv4Net> = [destination_pool, source_pool]
            .iter()
            .filter_map(|p| Ipv4Net::new(p.network(), p.prefix_len()).ok())
            .collect();
        let destinations = raw
            .destinations
            .check(&pools)
            .map_err(|e| invalid(e.key, e.message))?;
        if raw.cache_entries == 0 {
            return Err(invalid("cache_entries", "must be at least 1"));
        }
        if raw.edns_payload < 512 {
            return Err(invalid("edns_payload", "must be at least 512"));
        }
        if raw.source_dummies_per_64 == 0 {
            return Err(invalid("source_dummies_per_64", "must be at least 1"));
        }
        if raw.dummy_quota_per_minute == 0 {
            return Err(invalid("dummy_quota_per_minute", "must be at least 1"));
        }
        let statics = check_statics(&raw.statics, &destination_pool, &destinations, &pools)?;
        if !(1..=4096).contains(&raw.lookup_in_flight_per_tenant) {
            return Err(invalid(
                "lookup_in_flight_per_tenant",
                "must be between 1 and 4096",
            ));
        }
        Ok(Self {
            listen,
            upstreams,
            upstream_timeout: Duration::from_millis(raw.upstream_timeout_ms),
            database: raw.database,
            durability: raw.durability,
            lookup_socket: raw.lookup_socket,
            lookup_socket_mode,
            access: crate::lookup::Access {
                lookup_uids: raw.lookup_uids,
                operator_uids: raw.operator_uids,
                admin_uids: raw.admin_uids,
                own_uid: crate::lookup::own_uid(),
            },
            metrics,
            ipv4_egress: raw.ipv4_egress,
            max_ttl: raw.max_ttl,
            grace: Duration::from_secs(raw.grace_secs),
            destination_pool,
            source_pool,
            route_table: raw.route_table,
            pass_through: names("pass_through", &raw.pass_through)?,
            never_synthesise: names("never_synthesise", &raw.never_synthesise)?,
            ipv6_literal_suffix: match raw.ipv6_literal_suffix.trim() {
                "" => None,
                s => {
                    let n = names("ipv6_literal_suffix", &[s.to_owned()])?.remove(0);
                    if n.is_root() {
                        return Err(invalid(
                            "ipv6_literal_suffix",
                            "the root cannot hold literal names: give a zone of its own, e.g. ipv6.outsock.",
                        ));
                    }
                    Some(n)
                }
            },
            cache_entries: raw.cache_entries,
            cache_max_ttl: raw.cache_max_ttl,
            negative_ttl_max: raw.negative_ttl_max,
            edns_payload: raw.edns_payload,
            destinations,
            allow_clients: AllowList::new(allow_clients),
            source_dummies_per_64: raw.source_dummies_per_64,
            dummy_quota_per_minute: raw.dummy_quota_per_minute,
            lookup_in_flight_per_tenant: raw.lookup_in_flight_per_tenant,
            statics,
            source: None,
        })
    }
}

/// Checks `[static]`: each key a dummy of the destination pool (not its guest DNS address),
/// each value an IPv6 address the destination policy admits (its rules and built-in
/// exclusions; the host's own addresses are checked again at every connect), no IPv6 address
/// twice, names that are domain names.
fn check_statics(
    raw: &std::collections::BTreeMap<String, RawStatic>,
    pool: &Ipv4Prefix,
    rules: &Rules,
    pools: &[Ipv4Net],
) -> Result<Vec<StaticMapping>, SettingsError> {
    const KEY: &str = "static";
    let policy = outsock_policy::Policy::new(
        rules.clone(),
        pools.to_vec(),
        outsock_policy::HostAddresses::fixed([]),
    );
    let mut out: Vec<StaticMapping> = Vec::with_capacity(raw.len());
    for (key, value) in raw {
        let v4: Ipv4Addr = key
            .trim()
            .parse()
            .map_err(|_| invalid(KEY, format!("`{key}` is not an IPv4 address")))?;
        if v4 <= pool.first_usable() || v4 > pool.last_usable() {
            return Err(invalid(
                KEY,
                format!(
                    "{v4} is not a dummy of destination_pool {}/{} (nor may it be the guest DNS address {})",
                    pool.network(),
                    pool.prefix_len(),
                    pool.first_usable()
                ),
            ));
        }
        let (v6, names) = match value {
            RawStatic::Address(a) => (a, &[][..]),
            RawStatic::Full { ipv6, names } => (ipv6, &names[..]),
        };
        let v6: Ipv6Addr = v6
            .trim()
            .parse()
            .map_err(|_| invalid(KEY, format!("{v4} = `{v6}`: not an IPv6 address")))?;
        if let Err(reason) = policy.check_v6(v6) {
            return Err(invalid(
                KEY,
                format!(
                    "{v4} = {v6}: the destination policy refuses that address ({})",
                    reason.as_str()
                ),
            ));
        }
        if let Some(other) = out.iter().find(|m| m.v6 == v6) {
            return Err(invalid(
                KEY,
                format!("{v6} is given twice, to {} and to {v4}", other.v4),
            ));
        }
        let mut checked = Vec::with_capacity(names.len());
        for n in names {
            let mut name = Name::from_ascii(n.trim())
                .map_err(|e| invalid(KEY, format!("{v4}: `{n}` is not a domain name: {e}")))?;
            name.set_fqdn(true);
            checked.push(name.to_lowercase().to_ascii());
        }
        out.push(StaticMapping {
            v4,
            v6,
            names: checked,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_need_only_an_upstream() {
        let s = Settings::from_toml("upstreams = [\"[fd00:64::53]:53\"]").unwrap();
        assert_eq!(s.max_ttl, 600);
        assert_eq!(s.destination_pool.to_string(), "10.170.160.0/20");
        assert_eq!(s.lookup_socket_mode, 0o660);
        assert!(!s.ipv4_egress);
        assert_eq!(s.allow_clients, AllowList::default());
        assert_eq!(s.source_dummies_per_64, 64);
        assert_eq!(s.dummy_quota_per_minute, 256);
        assert_eq!(s.lookup_in_flight_per_tenant, 64);
        assert!(s.access.lookup_uids.is_empty() && s.access.admin_uids.is_empty());
        let s = Settings::from_toml(
            "upstreams = [\"[fd00:64::53]:53\"]\nlookup_uids = [990]\noperator_uids = [1000]\n\
             admin_uids = [1001]\n",
        )
        .unwrap();
        assert_eq!(
            (
                s.access.lookup_uids,
                s.access.operator_uids,
                s.access.admin_uids
            ),
            (vec![990], vec![1000], vec![1001])
        );
    }

    #[test]
    fn destinations_deny_and_allow() {
        let s = Settings::from_toml(
            "upstreams = [\"[::1]:53\"]\n[destinations]\ndeny = [\"::/0\", \"198.51.100.0/24\"]\n\
             allow = [\"2001:db8:1::/48\"]",
        )
        .unwrap();
        assert!(s.destinations.denies_v6("2001:db8:2::1".parse().unwrap()));
        assert!(!s.destinations.denies_v6("2001:db8:1::1".parse().unwrap()));
        assert!(s.destinations.denies_v4("198.51.100.1".parse().unwrap()));
        assert_eq!(s.pools().len(), 2);
        let s = Settings::from_toml("upstreams = [\"[::1]:53\"]").unwrap();
        assert!(s.destinations.is_empty());
    }

    #[test]
    fn open_listeners_and_public_metrics_need_saying_so() {
        let up = "upstreams = [\"[::1]:53\"]\n";
        for (toml, key) in [
            ("listen = [\"[::]:53\"]", "allow_clients"),
            (
                "listen = [\"[::1]:53\", \"[fd00:64::1]:53\"]",
                "allow_clients",
            ),
            (
                "listen = [\"[fd00:64::1]:53\"]\nallow_clients = [\"fd00:64::/129\"]",
                "allow_clients",
            ),
            ("metrics = \"[::]:9153\"", "metrics_public"),
            ("source_dummies_per_64 = 0", "source_dummies_per_64"),
            ("dummy_quota_per_minute = 0", "dummy_quota_per_minute"),
        ] {
            let err = Settings::from_toml(&format!("{up}{toml}"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{toml:?} gave {err:?}");
        }
        let s = Settings::from_toml(&format!(
            "{up}listen = [\"[fd00:64::1]:53\"]\nallow_clients = [\"fd00:64::/64\"]\n\
             metrics = \"[::]:9153\"\nmetrics_public = true"
        ))
        .unwrap();
        assert!(s.allow_clients.allows("fd00:64::2".parse().unwrap()));
        assert!(!s.allow_clients.allows("fd00:65::2".parse().unwrap()));
        assert_eq!(s.metrics, Some("[::]:9153".parse().unwrap()));
    }

    #[test]
    fn the_deploy_example_is_valid() {
        let text = include_str!("../../deploy/dns-cache.example.toml");
        let s = Settings::from_toml(text).unwrap();
        assert_eq!(s.grace, Duration::from_secs(3600));
        assert_eq!(s.metrics, Some("127.0.0.1:9153".parse().unwrap()));
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            ("", "upstreams"),
            ("upstreams = [\"nope\"]", "upstreams"),
            (
                "upstreams = [\"[::1]:53\"]\ndestination_pool = \"10.0.0.1/24\"",
                "destination_pool",
            ),
            (
                "upstreams = [\"[::1]:53\"]\nlookup_socket_mode = \"0666\"",
                "lookup_socket_mode",
            ),
            (
                "upstreams = [\"[::1]:53\"]\nmetrics = \"0.0.0.0:9153\"",
                "metrics",
            ),
            ("upstreams = [\"[::1]:53\"]\nmax_ttl = 0", "max_ttl"),
            (
                "upstreams = [\"[::1]:53\"]\npass_through = [\"a..b\"]",
                "pass_through",
            ),
            (
                "upstreams = [\"[::1]:53\"]\n[destinations]\ndeny = [\"fd00::1/8\"]",
                "destinations.deny",
            ),
            (
                "upstreams = [\"[::1]:53\"]\n[destinations]\ndeny = [\"::/0\"]\nallow = [\"::1/128\"]",
                "destinations.allow",
            ),
            (
                "upstreams = [\"[::1]:53\"]\n[destinations]\nallow = [\"2001:db8::/32\"]",
                "destinations.allow",
            ),
        ];
        for (toml, key) in cases {
            let err = Settings::from_toml(toml).unwrap_err().to_string();
            assert!(err.contains(key), "{toml:?} gave {err:?}");
        }
        let err = Settings::from_toml("upstreams = [\"[::1]:53\"]\nmax_tll = 5")
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_tll"), "{err}");
        let err = Settings::from_toml("upstreams = [\"[::1]:53\"]\nmax_ttl = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_ttl"), "{err}");
    }

    #[test]
    fn static_mappings_are_read_and_checked() {
        let up = "upstreams = [\"[::1]:53\"]\n[static]\n";
        let s = Settings::from_toml(&format!(
            "{up}\"10.170.175.10\" = \"2001:db8::10\"\n\
             \"10.170.175.11\" = {{ ipv6 = \"2001:db8::11\", names = [\"DB.example\"] }}\n"
        ))
        .unwrap();
        assert_eq!(
            s.statics,
            [
                StaticMapping {
                    v4: "10.170.175.10".parse().unwrap(),
                    v6: "2001:db8::10".parse().unwrap(),
                    names: vec![],
                },
                StaticMapping {
                    v4: "10.170.175.11".parse().unwrap(),
                    v6: "2001:db8::11".parse().unwrap(),
                    names: vec!["db.example.".into()],
                },
            ]
        );
        for (entry, says) in [
            ("\"10.170.175.10\" = \"not-v6\"", "not an IPv6 address"),
            ("\"x\" = \"2001:db8::10\"", "not an IPv4 address"),
            ("\"10.170.160.1\" = \"2001:db8::10\"", "guest DNS address"),
            (
                "\"10.0.0.5\" = \"2001:db8::10\"",
                "not a dummy of destination_pool",
            ),
            ("\"10.170.175.10\" = \"::1\"", "destination policy refuses"),
            (
                "\"10.170.175.10\" = \"2001:db8::10\"\n\"10.170.175.11\" = \"2001:db8::10\"",
                "given twice",
            ),
        ] {
            let err = Settings::from_toml(&format!("{up}{entry}\n"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("static") && err.contains(says),
                "{entry}: {err}"
            );
        }
    }
}
