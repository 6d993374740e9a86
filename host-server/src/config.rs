//! Settings: read through the `config` crate from a TOML file and `OUTSOCK_HOST_...` environment
//! variables, then checked as a whole so that start-up stops with a message naming the bad key.
//!
//! Environment variables use `_` after the prefix and `__` between nesting levels, because key
//! names contain single underscores: `OUTSOCK_HOST_CONNECT_TIMEOUT_MS=3000`,
//! `OUTSOCK_HOST_LIMITS__MAX_SOCKETS=64`, `OUTSOCK_HOST_LISTEN__ALLOWED_PORTS=80,8080`.
//! deploy/host-server.example.toml documents every key.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

use crate::dest::Ipv4Net;

/// Why the settings could not be loaded.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read settings")]
    Load(#[from] config::ConfigError),
    #[error("setting `{key}` is invalid: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        message: message.into(),
    }
}

/// Per-identity limits (a VM, or a process identified by its uid).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitSettings {
    /// Outsourced sockets open at once (streams on host.sock): refused with EMFILE.
    pub max_sockets: u32,
    /// Guest listeners open at once: refused with ENOBUFS.
    pub max_listeners: u32,
    /// TCP connects under way at once: refused with EAGAIN.
    pub max_pending_connects: u32,
    /// Streams of one peer uid still without their request 250 ms after accept (counted from
    /// then until the request is read; `request_timeout_ms` bounds how long each waits). Beyond
    /// it such a stream is answered `Failed(EAGAIN)` and closed at once.
    pub max_awaiting_request: u32,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            max_sockets: 4096,
            max_listeners: 64,
            max_pending_connects: 256,
            max_awaiting_request: 128,
        }
    }
}

/// Where guest servers listen.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ListenSettings {
    /// The IPv6 address listeners of processes (not VMs) bind; `::` binds every address.
    pub default_address: Option<Ipv6Addr>,
    /// Guest ports that may be listened on (TCP listen, and UDP bind to a fixed port).
    pub allowed_ports: Vec<u16>,
    /// Guest port → host port, for ports that must differ on the host (keys are port numbers).
    pub port_map: BTreeMap<String, u16>,
}

/// One VM: where its host→guest streams go and which IPv6 address its servers get.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VmSettings {
    /// The VM's Unix socket (hybrid vsock), e.g. /run/outsock/vm-NAME.vsock.
    pub socket: PathBuf,
    /// The host IPv6 address this VM's listeners bind.
    pub address: Ipv6Addr,
}

/// The raw shape of the settings, as deserialised.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Raw {
    socket: PathBuf,
    socket_mode: String,
    dns_socket: PathBuf,
    database: PathBuf,
    vmm_uids: Vec<u32>,
    workers: usize,
    connect_timeout_ms: u64,
    lookup_timeout_ms: u64,
    request_timeout_ms: u64,
    vm_connect_timeout_ms: u64,
    tcp_idle_timeout_secs: u64,
    udp_idle_timeout_secs: u64,
    drain_timeout_secs: u64,
    mapping_cache_secs: u64,
    mapping_cache_entries: usize,
    relay_buffer: usize,
    ipv4_egress: bool,
    destination_pool: String,
    source_pool: String,
    guest_dns: Ipv4Addr,
    metrics_listen: String,
    metrics_public: bool,
    listen: ListenSettings,
    limits: LimitSettings,
    vms: BTreeMap<String, VmSettings>,
}

impl Default for Raw {
    fn default() -> Self {
        Self {
            socket: "/run/outsock/host.sock".into(),
            socket_mode: "0660".into(),
            dns_socket: "/run/outsock/dns.sock".into(),
            database: "/var/lib/outsock/mappings.sqlite3".into(),
            vmm_uids: Vec::new(),
            workers: 2,
            connect_timeout_ms: 10_000,
            lookup_timeout_ms: 1_000,
            request_timeout_ms: 10_000,
            vm_connect_timeout_ms: 5_000,
            tcp_idle_timeout_secs: 7_200,
            udp_idle_timeout_secs: 120,
            drain_timeout_secs: 10,
            mapping_cache_secs: 60,
            mapping_cache_entries: 65_536,
            relay_buffer: 16 * 1024,
            ipv4_egress: false,
            destination_pool: "10.170.160.0/20".into(),
            source_pool: "172.21.112.0/20".into(),
            guest_dns: Ipv4Addr::new(10, 170, 160, 1),
            metrics_listen: "127.0.0.1:9641".into(),
            metrics_public: false,
            listen: ListenSettings::default(),
            limits: LimitSettings::default(),
            vms: BTreeMap::new(),
        }
    }
}

/// The checked settings host-server runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub socket: PathBuf,
    pub socket_mode: u32,
    pub dns_socket: PathBuf,
    pub database: PathBuf,
    /// Peers whose SO_PEERCRED uid is listed here are VMMs: they must open every stream with a
    /// hello naming a configured VM, and only they may send one.
    pub vmm_uids: Vec<u32>,
    pub workers: usize,
    pub connect_timeout: Duration,
    pub lookup_timeout: Duration,
    pub request_timeout: Duration,
    pub vm_connect_timeout: Duration,
    /// `None`: relayed TCP connections never time out for idleness.
    pub tcp_idle_timeout: Option<Duration>,
    pub udp_idle_timeout: Duration,
    pub drain_timeout: Duration,
    pub mapping_cache_ttl: Duration,
    pub mapping_cache_entries: usize,
    pub relay_buffer: usize,
    pub ipv4_egress: bool,
    pub destination_pool: Ipv4Net,
    pub source_pool: Ipv4Net,
    pub guest_dns: Ipv4Addr,
    pub metrics_listen: Option<SocketAddr>,
    pub listen_default_address: Ipv6Addr,
    pub allowed_ports: Vec<u16>,
    pub port_map: BTreeMap<u16, u16>,
    pub limits: LimitSettings,
    pub vms: BTreeMap<String, VmSettings>,
}

impl Default for Settings {
    fn default() -> Self {
        Raw::default()
            .check()
            .expect("the built-in defaults are valid")
    }
}

impl Settings {
    /// Loads `file` (if given) and the `OUTSOCK_HOST_...` environment, in that order.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first bad key.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with_env(file, None)
    }

    /// As [`Self::load`], with the environment given as a map (tests) instead of read.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first bad key.
    pub fn load_with_env(
        file: Option<&Path>,
        env: Option<config::Map<String, String>>,
    ) -> Result<Self, ConfigError> {
        let mut b = config::Config::builder();
        if let Some(f) = file {
            b = b.add_source(config::File::from(f).format(config::FileFormat::Toml));
        }
        b = b.add_source(
            config::Environment::with_prefix("OUTSOCK_HOST")
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true)
                .list_separator(",")
                .with_list_parse_key("vmm_uids")
                .with_list_parse_key("listen.allowed_ports")
                .source(env),
        );
        let raw: Raw = b.build()?.try_deserialize()?;
        raw.check()
    }

    /// The host port for guest port `port`.
    #[must_use]
    pub fn host_port(&self, port: u16) -> u16 {
        self.port_map.get(&port).copied().unwrap_or(port)
    }
}

impl Raw {
    fn check(self) -> Result<Settings, ConfigError> {
        let socket_mode = u32::from_str_radix(self.socket_mode.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| invalid("socket_mode", "expected an octal mode such as \"0660\""))?;
        if socket_mode & 0o002 != 0 {
            return Err(invalid(
                "socket_mode",
                "host.sock must not be world-writable (DESIGN.md §11)",
            ));
        }
        if self.workers == 0 || self.workers > 256 {
            return Err(invalid("workers", "expected 1 to 256"));
        }
        for (key, v) in [
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("lookup_timeout_ms", self.lookup_timeout_ms),
            ("request_timeout_ms", self.request_timeout_ms),
            ("vm_connect_timeout_ms", self.vm_connect_timeout_ms),
            ("udp_idle_timeout_secs", self.udp_idle_timeout_secs),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be above zero"));
            }
        }
        if !(1024..=1024 * 1024).contains(&self.relay_buffer) {
            return Err(invalid("relay_buffer", "expected 1024 to 1048576 bytes"));
        }
        if self.mapping_cache_entries == 0 {
            return Err(invalid("mapping_cache_entries", "must be above zero"));
        }
        let destination_pool: Ipv4Net = self
            .destination_pool
            .parse()
            .map_err(|e| invalid("destination_pool", format!("{e}")))?;
        let source_pool: Ipv4Net = self
            .source_pool
            .parse()
            .map_err(|e| invalid("source_pool", format!("{e}")))?;
        if destination_pool.overlaps(source_pool) {
            return Err(invalid(
                "source_pool",
                "overlaps destination_pool; the pools must be disjoint",
            ));
        }
        if !destination_pool.contains(self.guest_dns) {
            return Err(invalid(
                "guest_dns",
                "must lie inside destination_pool (it is reserved there)",
            ));
        }
        let metrics_listen: Option<SocketAddr> = match self.metrics_listen.trim() {
            "" => None,
            s => Some(s.parse().map_err(|_| {
                invalid(
                    "metrics_listen",
                    "expected ADDRESS:PORT, or \"\" to disable",
                )
            })?),
        };
        if let Some(a) = metrics_listen {
            if !a.ip().is_loopback() && !self.metrics_public {
                return Err(invalid(
                    "metrics_listen",
                    format!(
                        "{a} is not a loopback address; metrics are local unless \
                         `metrics_public = true` says otherwise"
                    ),
                ));
            }
        }
        let mut port_map = BTreeMap::new();
        for (guest, host) in &self.listen.port_map {
            let g: u16 = guest.parse().map_err(|_| {
                invalid(
                    &format!("listen.port_map.{guest}"),
                    "keys must be port numbers",
                )
            })?;
            if *host == 0 || g == 0 {
                return Err(invalid(
                    &format!("listen.port_map.{guest}"),
                    "port 0 cannot be mapped",
                ));
            }
            port_map.insert(g, *host);
        }
        for (name, vm) in &self.vms {
            if name.is_empty() || name.len() > 64 {
                return Err(invalid(
                    &format!("vms.{name}"),
                    "VM names are 1 to 64 bytes",
                ));
            }
            if vm.address.is_unspecified() || vm.address.is_multicast() {
                return Err(invalid(
                    &format!("vms.{name}.address"),
                    "expected one unicast IPv6 address of this host",
                ));
            }
        }
        for (key, v) in [
            ("limits.max_sockets", self.limits.max_sockets),
            ("limits.max_listeners", self.limits.max_listeners),
            (
                "limits.max_pending_connects",
                self.limits.max_pending_connects,
            ),
            (
                "limits.max_awaiting_request",
                self.limits.max_awaiting_request,
            ),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be above zero"));
            }
        }
        Ok(Settings {
            socket: self.socket,
            socket_mode,
            dns_socket: self.dns_socket,
            database: self.database,
            vmm_uids: self.vmm_uids,
            workers: self.workers,
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            lookup_timeout: Duration::from_millis(self.lookup_timeout_ms),
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            vm_connect_timeout: Duration::from_millis(self.vm_connect_timeout_ms),
            tcp_idle_timeout: (self.tcp_idle_timeout_secs > 0)
                .then(|| Duration::from_secs(self.tcp_idle_timeout_secs)),
            udp_idle_timeout: Duration::from_secs(self.udp_idle_timeout_secs),
            drain_timeout: Duration::from_secs(self.drain_timeout_secs),
            mapping_cache_ttl: Duration::from_secs(self.mapping_cache_secs),
            mapping_cache_entries: self.mapping_cache_entries,
            relay_buffer: self.relay_buffer,
            ipv4_egress: self.ipv4_egress,
            destination_pool,
            source_pool,
            guest_dns: self.guest_dns,
            metrics_listen,
            listen_default_address: self.listen.default_address.unwrap_or(Ipv6Addr::UNSPECIFIED),
            allowed_ports: self.listen.allowed_ports,
            port_map,
            limits: self.limits,
            vms: self.vms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Option<config::Map<String, String>> {
        Some(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let s = Settings::load_with_env(None, env(&[])).unwrap();
        assert_eq!(s.socket, Path::new("/run/outsock/host.sock"));
        assert_eq!(s.socket_mode, 0o660);
        assert_eq!(s.guest_dns, Ipv4Addr::new(10, 170, 160, 1));
        assert_eq!(s.destination_pool.to_string(), "10.170.160.0/20");
        assert!(!s.ipv4_egress);
        assert_eq!(s.limits.max_awaiting_request, 128);
        assert_eq!(s, Settings::default());
    }

    #[test]
    fn public_metrics_need_the_flag() {
        let s = Settings::load_with_env(
            None,
            env(&[
                ("OUTSOCK_HOST_METRICS_LISTEN", "[::]:9641"),
                ("OUTSOCK_HOST_METRICS_PUBLIC", "true"),
            ]),
        )
        .unwrap();
        assert_eq!(s.metrics_listen, Some("[::]:9641".parse().unwrap()));
        let s =
            Settings::load_with_env(None, env(&[("OUTSOCK_HOST_METRICS_LISTEN", "[::1]:9641")]))
                .unwrap();
        assert_eq!(s.metrics_listen, Some("[::1]:9641".parse().unwrap()));
    }

    #[test]
    fn file_then_environment() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("h.toml");
        std::fs::write(
            &f,
            "connect_timeout_ms = 500\n[listen]\nallowed_ports = [80]\n[listen.port_map]\n80 = 8080\n\
             [vms.web]\nsocket = \"/run/outsock/vm-web.vsock\"\naddress = \"fd00:64::101\"\n",
        )
        .unwrap();
        let s = Settings::load_with_env(
            Some(&f),
            env(&[
                ("OUTSOCK_HOST_LIMITS__MAX_SOCKETS", "7"),
                ("OUTSOCK_HOST_VMM_UIDS", "0,107"),
            ]),
        )
        .unwrap();
        assert_eq!(s.connect_timeout, Duration::from_millis(500));
        assert_eq!(s.limits.max_sockets, 7);
        assert_eq!(s.vmm_uids, [0, 107]);
        assert_eq!(s.host_port(80), 8080);
        assert_eq!(s.host_port(81), 81);
        assert_eq!(
            s.vms["web"].address,
            "fd00:64::101".parse::<Ipv6Addr>().unwrap()
        );
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases: &[(&str, &str, &str)] = &[
            ("OUTSOCK_HOST_SOCKET_MODE", "0666", "socket_mode"),
            ("OUTSOCK_HOST_WORKERS", "0", "workers"),
            (
                "OUTSOCK_HOST_DESTINATION_POOL",
                "10.0.0.0/33",
                "destination_pool",
            ),
            ("OUTSOCK_HOST_SOURCE_POOL", "10.170.160.0/24", "source_pool"),
            ("OUTSOCK_HOST_GUEST_DNS", "192.0.2.1", "guest_dns"),
            ("OUTSOCK_HOST_METRICS_LISTEN", "nonsense", "metrics_listen"),
            ("OUTSOCK_HOST_METRICS_LISTEN", "[::]:9641", "metrics_public"),
            (
                "OUTSOCK_HOST_LIMITS__MAX_AWAITING_REQUEST",
                "0",
                "limits.max_awaiting_request",
            ),
            (
                "OUTSOCK_HOST_LIMITS__MAX_LISTENERS",
                "0",
                "limits.max_listeners",
            ),
            (
                "OUTSOCK_HOST_CONNECT_TIMEOUT_MS",
                "soon",
                "connect_timeout_ms",
            ),
        ];
        for (k, v, key) in cases {
            let err = Settings::load_with_env(None, env(&[(k, v)])).unwrap_err();
            let text = match std::error::Error::source(&err) {
                Some(cause) => format!("{err}: {cause}"),
                None => err.to_string(),
            };
            assert!(text.contains(key), "{k}={v}: {text}");
        }
    }
}
