//! Settings: read through the `config` crate from a TOML file and `OUTSOCK_HOST_...` environment
//! variables, then checked as a whole so that start-up stops with a message naming the bad key.
//!
//! Environment variables use `_` after the prefix and `__` between nesting levels, because key
//! names contain single underscores: `OUTSOCK_HOST_CONNECT_TIMEOUT_MS=3000`,
//! `OUTSOCK_HOST_LIMITS__MAX_SOCKETS=64`, `OUTSOCK_HOST_LISTEN__ALLOWED_PORTS=80,8080`.
//! deploy/host-server.example.toml documents every key.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

use crate::accounts::{Account, Accounts};
use crate::dest::Ipv4Net;
use outsock_policy::{DestinationSettings, Rules};

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

/// One VM: where its host→guest streams go, which IPv6 address is its own, which uid its VMM
/// runs as, and what may override the global listen ports and limits for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSettings {
    /// The VM's Unix socket (hybrid vsock), e.g. /run/outsock/vm-NAME.vsock.
    pub socket: PathBuf,
    /// The host IPv6 address that is this VM's: its listeners bind it, and its outbound
    /// connections and datagrams leave from it.
    pub address: Ipv6Addr,
    /// The uid its VMM runs as: only a peer with this uid may name this VM in a hello.
    pub vmm_uid: u32,
    /// Guest ports this VM may listen on, instead of `listen.allowed_ports`.
    pub allowed_ports: Option<Vec<u16>>,
    /// This VM's limits (`[vms.NAME.limits]`, unset keys taken from `[limits]`).
    pub limits: Option<LimitSettings>,
}

impl VmSettings {
    /// A VM with its socket, address and VMM uid, and the global ports and limits.
    #[must_use]
    pub fn new(socket: impl Into<PathBuf>, address: Ipv6Addr, vmm_uid: u32) -> Self {
        Self {
            socket: socket.into(),
            address,
            vmm_uid,
            allowed_ports: None,
            limits: None,
        }
    }
}

/// `[vms.NAME]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVm {
    socket: PathBuf,
    address: Ipv6Addr,
    vmm_uid: Option<u32>,
    vmm_user: Option<String>,
    allowed_ports: Option<Vec<u16>>,
    limits: Option<RawVmLimits>,
}

/// `[vms.NAME.limits]` as written: each key unset falls back to `[limits]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawVmLimits {
    max_sockets: Option<u32>,
    max_listeners: Option<u32>,
    max_pending_connects: Option<u32>,
}

/// The raw shape of the settings, as deserialised.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Raw {
    socket: PathBuf,
    socket_mode: String,
    dns_socket: PathBuf,
    database: PathBuf,
    /// Replaced by `[vms.NAME] vmm_uid`/`vmm_user`: present means start-up stops and says so.
    vmm_uids: Option<serde::de::IgnoredAny>,
    process_uids: Vec<Account>,
    process_gids: Vec<Account>,
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
    lend_sockets: bool,
    destination_pool: String,
    source_pool: String,
    guest_dns: Ipv4Addr,
    metrics_listen: String,
    metrics_public: bool,
    listen: ListenSettings,
    limits: LimitSettings,
    vms: BTreeMap<String, RawVm>,
    destinations: DestinationSettings,
}

impl Default for Raw {
    fn default() -> Self {
        Self {
            socket: "/run/outsock/host.sock".into(),
            socket_mode: "0660".into(),
            dns_socket: "/run/outsock/dns.sock".into(),
            database: "/var/lib/outsock/mappings.sqlite3".into(),
            vmm_uids: None,
            process_uids: Vec::new(),
            process_gids: Vec::new(),
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
            relay_buffer: 64 * 1024,
            ipv4_egress: false,
            lend_sockets: true,
            destination_pool: "10.170.160.0/20".into(),
            source_pool: "172.21.112.0/20".into(),
            guest_dns: Ipv4Addr::new(10, 170, 160, 1),
            metrics_listen: "127.0.0.1:9641".into(),
            metrics_public: false,
            listen: ListenSettings::default(),
            limits: LimitSettings::default(),
            vms: BTreeMap::new(),
            destinations: DestinationSettings::default(),
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
    /// Process-mode users: peers with these SO_PEERCRED uids (named ones resolved, and the
    /// members of `process_gids` as /etc/passwd and /etc/group list them at start-up) may use
    /// host.sock without a hello. Root always may.
    pub process_uids: BTreeSet<u32>,
    /// Peers whose SO_PEERCRED gid is one of these are process-mode users too.
    pub process_gids: BTreeSet<u32>,
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
    /// Process mode: a program's TCP connect is made by the program itself, on a socket
    /// host-server lends once it has routed the destination and checked the policy
    /// (`ToHost::Lend`); `false`: host-server connects every one itself.
    pub lend_sockets: bool,
    pub destination_pool: Ipv4Net,
    pub source_pool: Ipv4Net,
    pub guest_dns: Ipv4Addr,
    pub metrics_listen: Option<SocketAddr>,
    pub listen_default_address: Ipv6Addr,
    pub allowed_ports: Vec<u16>,
    pub port_map: BTreeMap<u16, u16>,
    pub limits: LimitSettings,
    pub vms: BTreeMap<String, VmSettings>,
    /// `[destinations]`: the operator's deny/allow prefixes of the destination policy.
    pub destinations: Rules,
}

impl Default for Settings {
    fn default() -> Self {
        Raw::default()
            .check(&Accounts::default())
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
                .with_list_parse_key("process_uids")
                .with_list_parse_key("process_gids")
                .with_list_parse_key("listen.allowed_ports")
                .with_list_parse_key("destinations.deny")
                .with_list_parse_key("destinations.allow")
                .source(env),
        );
        let raw: Raw = b.build()?.try_deserialize()?;
        raw.check(&Accounts::system())
    }

    /// The VMs whose VMM runs as `uid` (a peer with this uid must open with a hello naming one).
    pub fn vms_of_vmm(&self, uid: u32) -> impl Iterator<Item = &str> {
        self.vms
            .iter()
            .filter(move |(_, v)| v.vmm_uid == uid)
            .map(|(n, _)| n.as_str())
    }

    /// Whether a peer with `uid` is a VMM of some configured VM.
    #[must_use]
    pub fn is_vmm(&self, uid: u32) -> bool {
        self.vms_of_vmm(uid).next().is_some()
    }

    /// Whether a peer with these credentials may open a stream on host.sock at all: a VMM, root,
    /// or a process-mode user.
    #[must_use]
    pub fn may_use_host_socket(&self, uid: u32, gid: u32) -> bool {
        uid == 0
            || self.is_vmm(uid)
            || self.process_uids.contains(&uid)
            || self.process_gids.contains(&gid)
    }

    /// The guest ports a VM (`Some(name)`) or a process (`None`) may listen on: the VM's own
    /// list, or `listen.allowed_ports`.
    #[must_use]
    pub fn allowed_ports_for(&self, vm: Option<&str>) -> &[u16] {
        vm.and_then(|name| self.vms.get(name))
            .and_then(|v| v.allowed_ports.as_deref())
            .unwrap_or(&self.allowed_ports)
    }

    /// The host port for guest port `port`.
    #[must_use]
    pub fn host_port(&self, port: u16) -> u16 {
        self.port_map.get(&port).copied().unwrap_or(port)
    }
}

impl Raw {
    fn check(self, accounts: &Accounts) -> Result<Settings, ConfigError> {
        if self.vmm_uids.is_some() {
            return Err(invalid(
                "vmm_uids",
                "was removed: it let any VMM claim any VM; give each VM its VMM's user as \
                 `[vms.NAME] vmm_user = \"outsock-vmm-NAME\"` (or `vmm_uid = N`) instead",
            ));
        }
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
        let destinations = self
            .destinations
            .check(&[destination_pool, source_pool])
            .map_err(|e| invalid(e.key, e.message))?;
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
        let default_address = self.listen.default_address.unwrap_or(Ipv6Addr::UNSPECIFIED);
        let mut vms = BTreeMap::new();
        for (name, vm) in self.vms {
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
            if vm.address == default_address {
                return Err(invalid(
                    "listen.default_address",
                    format!("is VM {name}'s address; process-mode listeners never bind a VM's"),
                ));
            }
            let vmm_uid = match (vm.vmm_uid, &vm.vmm_user) {
                (Some(uid), None) => uid,
                (None, Some(user)) => {
                    accounts.uid(&Account::Name(user.clone())).ok_or_else(|| {
                        invalid(
                            &format!("vms.{name}.vmm_user"),
                            format!("no user {user:?} in /etc/passwd"),
                        )
                    })?
                }
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        &format!("vms.{name}.vmm_user"),
                        "give vmm_uid or vmm_user, not both",
                    ))
                }
                (None, None) => {
                    return Err(invalid(
                        &format!("vms.{name}.vmm_user"),
                        "every VM needs the user its VMM runs as (vmm_user, or vmm_uid): only \
                         that user may name the VM in a hello",
                    ))
                }
            };
            let limits = vm.limits.map(|l| LimitSettings {
                max_sockets: l.max_sockets.unwrap_or(self.limits.max_sockets),
                max_listeners: l.max_listeners.unwrap_or(self.limits.max_listeners),
                max_pending_connects: l
                    .max_pending_connects
                    .unwrap_or(self.limits.max_pending_connects),
                // Counted per peer uid before any hello names a VM: global only.
                max_awaiting_request: self.limits.max_awaiting_request,
            });
            if let Some(l) = &limits {
                for (key, v) in [
                    ("max_sockets", l.max_sockets),
                    ("max_listeners", l.max_listeners),
                    ("max_pending_connects", l.max_pending_connects),
                ] {
                    if v == 0 {
                        return Err(invalid(
                            &format!("vms.{name}.limits.{key}"),
                            "must be above zero",
                        ));
                    }
                }
            }
            vms.insert(
                name,
                VmSettings {
                    socket: vm.socket,
                    address: vm.address,
                    vmm_uid,
                    allowed_ports: vm.allowed_ports,
                    limits,
                },
            );
        }
        if default_address.is_unspecified() {
            if let Some(name) = vms.keys().next() {
                return Err(invalid(
                    "listen.default_address",
                    format!(
                        "VMs are configured ([vms.{name}]): set the host's own IPv6 address for \
                         process-mode listeners, since `::` would take their ports on the VMs' \
                         addresses too"
                    ),
                ));
            }
        }
        let mut process_uids = BTreeSet::new();
        for a in &self.process_uids {
            process_uids.insert(
                accounts.uid(a).ok_or_else(|| {
                    invalid("process_uids", format!("no user {a} in /etc/passwd"))
                })?,
            );
        }
        let mut process_gids = BTreeSet::new();
        for a in &self.process_gids {
            let gid = accounts
                .gid(a)
                .ok_or_else(|| invalid("process_gids", format!("no group {a} in /etc/group")))?;
            process_gids.insert(gid);
            process_uids.extend(accounts.members(gid));
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
            process_uids,
            process_gids,
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
            lend_sockets: self.lend_sockets,
            destination_pool,
            source_pool,
            guest_dns: self.guest_dns,
            metrics_listen,
            listen_default_address: default_address,
            allowed_ports: self.listen.allowed_ports,
            port_map,
            limits: self.limits,
            vms,
            destinations,
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
            "connect_timeout_ms = 500\n[listen]\ndefault_address = \"fd00:64::1\"\nallowed_ports = [80]\n[listen.port_map]\n80 = 8080\n\
             [vms.web]\nsocket = \"/run/outsock/vm-web.vsock\"\naddress = \"fd00:64::101\"\n\
             vmm_uid = 107\nallowed_ports = [8080]\n[vms.web.limits]\nmax_sockets = 9\n",
        )
        .unwrap();
        let s = Settings::load_with_env(
            Some(&f),
            env(&[
                ("OUTSOCK_HOST_LIMITS__MAX_SOCKETS", "7"),
                ("OUTSOCK_HOST_PROCESS_UIDS", "1000,1001"),
            ]),
        )
        .unwrap();
        assert_eq!(s.connect_timeout, Duration::from_millis(500));
        assert_eq!(s.limits.max_sockets, 7);
        assert_eq!(s.process_uids, BTreeSet::from([1000, 1001]));
        assert!(s.is_vmm(107));
        assert!(!s.is_vmm(1000));
        assert!(s.may_use_host_socket(1000, 5) && s.may_use_host_socket(107, 5));
        assert!(s.may_use_host_socket(0, 0) && !s.may_use_host_socket(1002, 1002));
        assert_eq!(s.allowed_ports_for(Some("web")), [8080]);
        assert_eq!(s.allowed_ports_for(None), [80]);
        let l = s.vms["web"].limits.clone().unwrap();
        assert_eq!((l.max_sockets, l.max_listeners), (9, 64));
        assert_eq!(s.host_port(80), 8080);
        assert_eq!(s.host_port(81), 81);
        assert_eq!(
            s.vms["web"].address,
            "fd00:64::101".parse::<Ipv6Addr>().unwrap()
        );
    }

    #[test]
    fn destinations_from_file_and_environment() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("h.toml");
        std::fs::write(
            &f,
            "[destinations]\ndeny = [\"::/0\"]\nallow = [\"2001:db8:1::/48\"]\n",
        )
        .unwrap();
        let s = Settings::load_with_env(Some(&f), env(&[])).unwrap();
        assert!(s.destinations.denies_v6("2001:db8:2::1".parse().unwrap()));
        assert!(!s.destinations.denies_v6("2001:db8:1::1".parse().unwrap()));
        let s = Settings::load_with_env(
            None,
            env(&[(
                "OUTSOCK_HOST_DESTINATIONS__DENY",
                "fd00:bad::/32,198.51.100.0/24",
            )]),
        )
        .unwrap();
        assert!(s.destinations.denies_v6("fd00:bad::1".parse().unwrap()));
        assert!(s.destinations.denies_v4("198.51.100.9".parse().unwrap()));
        // An allow over a pool is nonsense.
        std::fs::write(
            &f,
            "[destinations]\ndeny = [\"10.0.0.0/8\"]\nallow = [\"10.170.0.0/16\"]\n",
        )
        .unwrap();
        let err = Settings::load_with_env(Some(&f), env(&[])).unwrap_err();
        assert!(err.to_string().contains("destinations.allow"), "{err}");
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
            (
                "OUTSOCK_HOST_DESTINATIONS__DENY",
                "2001:db8::1/64",
                "destinations.deny",
            ),
            (
                "OUTSOCK_HOST_DESTINATIONS__ALLOW",
                "fe80::/64",
                "destinations.allow",
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

    fn from_text(text: &str, accounts: &Accounts) -> Result<Settings, ConfigError> {
        let raw: Raw = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build()?
            .try_deserialize()?;
        raw.check(accounts)
    }

    #[test]
    fn access_keys() {
        let accounts = Accounts::from_text(
            "vmweb:x:990:990::/:/sbin/nologin\nalice:x:1000:1000::/:/bin/sh\n\
             bob:x:1001:1001::/:/bin/sh\n",
            "vmweb:x:990:\nusers:x:100:bob\n",
        );
        let vm = "[listen]\ndefault_address = \"fd00:64::1\"\n[vms.web]\nsocket = \"/run/outsock/vm-web.vsock\"\naddress = \"fd00:64::101\"\n";
        // The old global list stops start-up, pointing at the new key.
        let e = from_text("vmm_uids = [107]\n", &accounts)
            .unwrap_err()
            .to_string();
        assert!(e.contains("vmm_uids") && e.contains("vmm_user"), "{e}");
        // Every VM names its VMM's user.
        let e = from_text(vm, &accounts).unwrap_err().to_string();
        assert!(e.contains("vms.web.vmm_user"), "{e}");
        let e = from_text(&format!("{vm}vmm_user = \"ghost\"\n"), &accounts)
            .unwrap_err()
            .to_string();
        assert!(e.contains("ghost"), "{e}");
        let s = from_text(
            &format!("process_uids = [\"alice\", 4000]\nprocess_gids = [\"users\"]\n{vm}vmm_user = \"vmweb\"\n"),
            &accounts,
        )
        .unwrap();
        assert_eq!(s.vms["web"].vmm_uid, 990);
        assert_eq!(s.vms_of_vmm(990).collect::<Vec<_>>(), ["web"]);
        // alice by name, 4000 by number, bob as a member of `users`.
        assert_eq!(s.process_uids, BTreeSet::from([1000, 1001, 4000]));
        assert_eq!(s.process_gids, BTreeSet::from([100]));
        assert!(s.may_use_host_socket(5000, 100));
        assert!(!s.may_use_host_socket(5000, 5000));
        // A process-mode listener never binds a VM's address.
        let web = "[vms.web]\nsocket = \"/run/outsock/vm-web.vsock\"\naddress = \"fd00:64::101\"\n";
        let e = from_text(
            &format!("[listen]\ndefault_address = \"fd00:64::101\"\n{web}vmm_uid = 1\n"),
            &accounts,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("listen.default_address"), "{e}");
        // Nor `::`, which would take a port on the VMs' addresses too.
        let e = from_text(&format!("{web}vmm_uid = 1\n"), &accounts)
            .unwrap_err()
            .to_string();
        assert!(e.contains("listen.default_address"), "{e}");
        let e = from_text(
            &format!("{vm}vmm_uid = 1\n[vms.web.limits]\nmax_listeners = 0\n"),
            &accounts,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("vms.web.limits.max_listeners"), "{e}");
    }
}
