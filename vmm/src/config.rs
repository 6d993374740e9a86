//! VM settings: a TOML file, then `OUTSOCK_VMM_*` environment variables, then command-line
//! flags, each overriding the one before (through the `config` crate), validated into a
//! [`VmConfig`].

use std::collections::HashMap;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use serde::Deserialize;

use crate::arch::x86_64::layout;

/// The command line every guest gets before `extra_cmdline`. Serial console on COM1;
/// `reboot=a`: reboot through the FADT reset register (falling back to the i8042), because
/// without it a hardware-reduced-ACPI kernel picks EFI reboot, finds no EFI and jumps to the
/// absent BIOS; reboot on panic (the pvpanic device reports the panic first); no PCI
/// probing; one UART; quiet console (every console byte is a VM exit). Never `nomodule`
/// (modules are loaded from /init).
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=a panic=-1 pci=off 8250.nr_uarts=1 quiet";

/// What a guest reboot does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnReboot {
    /// End the VMM with exit status 3.
    #[default]
    Exit,
    /// Boot the VM again from scratch (the VMM re-executes itself with the same settings).
    Restart,
}

/// Validated VM settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VmConfig {
    /// A name for messages and logs.
    pub name: String,
    /// The bzImage to boot.
    pub kernel: PathBuf,
    /// The initramfs (cpio, optionally compressed as the kernel supports).
    pub initramfs: Option<PathBuf>,
    /// The base kernel command line (defaults to [`DEFAULT_CMDLINE`]).
    pub cmdline: String,
    /// Appended to `cmdline`; e.g. `-- "uname -r"` to give /init a command.
    pub extra_cmdline: String,
    /// Guest RAM in MiB.
    pub mem_mib: u64,
    /// Number of vCPUs, 1 to 4.
    pub vcpus: u8,
    /// Also write the guest console to this file.
    pub serial_log: Option<PathBuf>,
    /// Forward stdin to the guest console.
    pub stdin: bool,
    pub on_reboot: OnReboot,
    /// Debug aid: log guest writes to ports and addresses no device claims (stderr).
    pub trace_io: bool,
    /// host-server's socket. When set, the VM gets a virtio-vsock device whose guest
    /// connections to CID 2 become streams to this socket (VM mode).
    pub host_socket: Option<PathBuf>,
    /// The VM's own hybrid-vsock socket, where host processes `CONNECT <port>` to the guest
    /// (default `/run/outsock/vm-<name>.vsock`).
    pub vsock_socket: Option<PathBuf>,
    /// The guest's vsock context id (3 or more).
    pub cid: u32,
    /// Serve the VMM's counters (Prometheus text, `crate::metrics`) on this Unix socket,
    /// e.g. `/run/outsock/vm-NAME.metrics`; unset: no metrics socket.
    pub metrics_socket: Option<PathBuf>,
    /// Uids (SO_PEERCRED) that may `CONNECT` on the VM's socket, besides root, the VMM's own
    /// uid and the owner of `host_socket` (host-server's uid) at start-up. Others are refused.
    pub vsock_peer_uids: Vec<u32>,
    /// Confine every VMM thread to its system-call allow-list (`crate::seccomp`); off only
    /// to debug.
    pub seccomp: bool,
    /// On a stop signal the guest is asked to shut down (Ctrl+Alt+Del) and gets this long to
    /// power off before it is stopped hard; 0 stops it hard at once.
    pub stop_timeout_secs: u64,
}

impl Default for VmConfig {
    fn default() -> Self {
        Self {
            name: "outsock-vm".into(),
            kernel: PathBuf::new(),
            initramfs: None,
            cmdline: DEFAULT_CMDLINE.into(),
            extra_cmdline: String::new(),
            mem_mib: 256,
            vcpus: 1,
            serial_log: None,
            stdin: true,
            on_reboot: OnReboot::Exit,
            trace_io: false,
            host_socket: None,
            vsock_socket: None,
            cid: 3,
            metrics_socket: None,
            vsock_peer_uids: Vec::new(),
            seccomp: true,
            stop_timeout_secs: 10,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the settings")]
    Load(#[from] config::ConfigError),
    #[error("no kernel given: set --kernel, `kernel` in the config file, or OUTSOCK_VMM_KERNEL")]
    NoKernel,
    #[error("vcpus = {0}: outsock-vmm supports 1 to {max} vCPUs", max = layout::MAX_VCPUS)]
    Vcpus(u8),
    #[error("cid = {0}: a guest vsock CID must be 3 or more (0-2 are reserved)")]
    Cid(u32),
    #[error("mem_mib = {0}: guest memory must be {min} to {max} MiB", min = layout::MIN_MEM_MIB, max = layout::MAX_MEM_MIB)]
    Memory(u64),
}

impl VmConfig {
    /// The full guest command line.
    pub fn full_cmdline(&self) -> String {
        let extra = self.extra_cmdline.trim();
        if extra.is_empty() {
            self.cmdline.trim().to_owned()
        } else {
            format!("{} {extra}", self.cmdline.trim())
        }
    }

    fn validate(self) -> Result<Self, ConfigError> {
        if self.kernel.as_os_str().is_empty() {
            return Err(ConfigError::NoKernel);
        }
        if self.vcpus == 0 || self.vcpus > layout::MAX_VCPUS {
            return Err(ConfigError::Vcpus(self.vcpus));
        }
        if !(layout::MIN_MEM_MIB..=layout::MAX_MEM_MIB).contains(&self.mem_mib) {
            return Err(ConfigError::Memory(self.mem_mib));
        }
        if self.cid < 3 {
            return Err(ConfigError::Cid(self.cid));
        }
        Ok(self)
    }

    /// How long the guest gets to power off after a stop signal.
    pub fn stop_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.stop_timeout_secs)
    }

    /// Who may `CONNECT` on the VM's socket: root, this process's uid, the owner of
    /// `host_socket` (the uid host-server runs as; it made that socket), and `vsock_peer_uids`.
    pub fn vsock_peer_uids_resolved(&self, host_socket: &std::path::Path) -> Vec<u32> {
        use std::os::unix::fs::MetadataExt;
        let mut uids = vec![0, rustix::process::getuid().as_raw()];
        if let Ok(m) = std::fs::metadata(host_socket) {
            uids.push(m.uid());
        }
        uids.extend(&self.vsock_peer_uids);
        uids.sort_unstable();
        uids.dedup();
        uids
    }

    /// The VM's own vsock socket path, when the VM has a vsock device.
    pub fn vsock_socket_path(&self) -> Option<PathBuf> {
        self.host_socket.as_ref()?;
        Some(
            self.vsock_socket
                .clone()
                .unwrap_or_else(|| PathBuf::from(format!("/run/outsock/vm-{}.vsock", self.name))),
        )
    }
}

/// outsock-vmm: boot an unmodified Linux bzImage + initramfs on KVM with a serial console.
///
/// Settings come from a TOML file (--config), then OUTSOCK_VMM_<KEY> environment variables
/// (e.g. OUTSOCK_VMM_MEM_MIB=512), then these flags. Exit status: 0 guest powered off,
/// 1 VMM error (including no usable hardware KVM), 2 usage error, 3 guest rebooted
/// (with --on-reboot exit), 4 guest crashed (triple fault, KVM internal error),
/// 5 guest kernel panicked, 6 the VMM made a system call its seccomp filter forbids.
#[derive(Debug, Parser, Default)]
#[command(name = "outsock-vmm", version)]
pub struct Cli {
    /// TOML file with any of the keys below (kernel, initramfs, cmdline, extra_cmdline,
    /// mem_mib, vcpus, name, serial_log, stdin, on_reboot, trace_io, host_socket,
    /// vsock_socket, cid, seccomp, stop_timeout_secs).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The kernel bzImage.
    #[arg(long, value_name = "FILE")]
    pub kernel: Option<PathBuf>,
    /// The initramfs.
    #[arg(long, value_name = "FILE")]
    pub initramfs: Option<PathBuf>,
    /// Replace the base kernel command line
    /// [default: console=ttyS0 reboot=a panic=-1 pci=off 8250.nr_uarts=1 quiet].
    #[arg(long, value_name = "ARGS")]
    pub cmdline: Option<String>,
    /// Append to the kernel command line, e.g. '-- "uname -r"' to give /init a command.
    #[arg(long, short = 'a', value_name = "ARGS", allow_hyphen_values = true)]
    pub extra_cmdline: Option<String>,
    /// Guest memory in MiB [default: 256].
    #[arg(long, short = 'm', value_name = "MIB")]
    pub mem_mib: Option<u64>,
    /// Number of vCPUs, 1 to 4 [default: 1].
    #[arg(long, short = 'c', value_name = "N")]
    pub vcpus: Option<u8>,
    /// VM name used in messages [default: outsock-vm].
    #[arg(long)]
    pub name: Option<String>,
    /// Also write the guest console to this file.
    #[arg(long, value_name = "FILE")]
    pub serial_log: Option<PathBuf>,
    /// Do not forward stdin to the guest console.
    #[arg(long)]
    pub no_stdin: bool,
    /// What a guest reboot does [default: exit].
    #[arg(long, value_enum)]
    pub on_reboot: Option<OnReboot>,
    /// Debug aid: log guest writes to unclaimed ports and MMIO addresses to stderr.
    #[arg(long)]
    pub trace_io: bool,
    /// host-server's socket; gives the VM a virtio-vsock device (VM mode).
    #[arg(long, value_name = "PATH")]
    pub host_socket: Option<PathBuf>,
    /// The VM's own vsock socket [default: /run/outsock/vm-<name>.vsock].
    #[arg(long, value_name = "PATH")]
    pub vsock_socket: Option<PathBuf>,
    /// The guest's vsock CID [default: 3].
    #[arg(long)]
    pub cid: Option<u32>,
    /// Serve the VMM's counters in Prometheus text on this Unix socket [default: none].
    #[arg(long, value_name = "PATH")]
    pub metrics_socket: Option<PathBuf>,
    /// Debug aid: run without the seccomp filters (every thread may make any system call).
    #[arg(long)]
    pub no_seccomp: bool,
    /// Seconds the guest gets to power off after SIGTERM/SIGINT/SIGHUP before it is stopped
    /// hard; 0: at once [default: 10].
    #[arg(long, value_name = "SECS")]
    pub stop_timeout_secs: Option<u64>,
}

/// Merges the file, the environment (`env`: name → value, normally `std::env::vars()`) and
/// the flags, and validates the result.
pub fn load(cli: &Cli, env: HashMap<String, String>) -> Result<VmConfig, ConfigError> {
    let mut b = config::Config::builder();
    if let Some(path) = &cli.config {
        b = b.add_source(config::File::from(path.as_path()).format(config::FileFormat::Toml));
    }
    b = b.add_source(
        config::Environment::with_prefix("OUTSOCK_VMM")
            .prefix_separator("_")
            .try_parsing(true)
            .list_separator(",")
            .with_list_parse_key("vsock_peer_uids")
            .source(Some(env.into_iter().collect())),
    );
    let path_str = |p: &PathBuf| p.to_string_lossy().into_owned();
    b = b
        .set_override_option("kernel", cli.kernel.as_ref().map(path_str))?
        .set_override_option("initramfs", cli.initramfs.as_ref().map(path_str))?
        .set_override_option("cmdline", cli.cmdline.clone())?
        .set_override_option("extra_cmdline", cli.extra_cmdline.clone())?
        .set_override_option("mem_mib", cli.mem_mib)?
        .set_override_option("vcpus", cli.vcpus.map(u64::from))?
        .set_override_option("name", cli.name.clone())?
        .set_override_option("serial_log", cli.serial_log.as_ref().map(path_str))?
        .set_override_option("host_socket", cli.host_socket.as_ref().map(path_str))?
        .set_override_option("vsock_socket", cli.vsock_socket.as_ref().map(path_str))?
        .set_override_option("cid", cli.cid.map(u64::from))?
        .set_override_option("metrics_socket", cli.metrics_socket.as_ref().map(path_str))?
        .set_override_option("stop_timeout_secs", cli.stop_timeout_secs)?
        .set_override_option(
            "on_reboot",
            cli.on_reboot.map(|r| match r {
                OnReboot::Exit => "exit",
                OnReboot::Restart => "restart",
            }),
        )?;
    if cli.trace_io {
        b = b.set_override("trace_io", true)?;
    }
    if cli.no_stdin {
        b = b.set_override("stdin", false)?;
    }
    if cli.no_seccomp {
        b = b.set_override("seccomp", false)?;
    }
    let cfg: VmConfig = b.build()?.try_deserialize()?;
    cfg.validate()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn flags_override_env_override_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("vm.toml");
        std::fs::write(
            &file,
            "kernel = \"/k\"\nmem_mib = 512\nvcpus = 2\nname = \"from-file\"\non_reboot = \"restart\"\n",
        )
        .expect("write");
        let cli = Cli {
            config: Some(file.clone()),
            vcpus: Some(3),
            ..Default::default()
        };
        let cfg = load(
            &cli,
            env(&[
                ("OUTSOCK_VMM_MEM_MIB", "1024"),
                ("OUTSOCK_VMM_VCPUS", "4"),
                ("HOME", "/root"),
            ]),
        )
        .expect("valid");
        assert_eq!(cfg.kernel, PathBuf::from("/k"));
        assert_eq!(cfg.mem_mib, 1024, "env beats file");
        assert_eq!(cfg.vcpus, 3, "flag beats env");
        assert_eq!(cfg.name, "from-file");
        assert_eq!(cfg.on_reboot, OnReboot::Restart);
        assert!(cfg.stdin);
    }

    #[test]
    fn defaults_and_cmdline() {
        let cli = Cli {
            kernel: Some("/vmlinuz".into()),
            extra_cmdline: Some("-- \"uname -r\"".into()),
            no_stdin: true,
            ..Default::default()
        };
        let cfg = load(&cli, HashMap::new()).expect("valid");
        assert_eq!(
            (cfg.mem_mib, cfg.vcpus, cfg.on_reboot),
            (256, 1, OnReboot::Exit)
        );
        assert!(!cfg.stdin);
        assert!(cfg.seccomp, "the filters are on unless turned off");
        assert_eq!(cfg.stop_timeout(), std::time::Duration::from_secs(10));
        assert_eq!(
            cfg.full_cmdline(),
            format!("{DEFAULT_CMDLINE} -- \"uname -r\"")
        );
    }

    #[test]
    fn the_deploy_example_is_valid() {
        let example =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/vm.example.toml");
        let cli = Cli {
            config: Some(example),
            name: Some("web".into()),
            ..Default::default()
        };
        let cfg = load(&cli, HashMap::new()).expect("deploy/vm.example.toml loads");
        assert_eq!(
            cfg.host_socket,
            Some(PathBuf::from("/run/outsock/host.sock"))
        );
        assert_eq!(
            cfg.vsock_socket_path(),
            Some(PathBuf::from("/run/outsock/vm-web.vsock")),
            "the default follows --name, as host-server's [vms.web] expects"
        );
        assert_eq!(cfg.cid, 3);
        assert!(cfg.seccomp);
        assert_eq!(cfg.stop_timeout_secs, 10);
    }

    #[test]
    fn seccomp_turns_off_by_flag_env_or_file() {
        let kernel = || Cli {
            kernel: Some("/k".into()),
            ..Default::default()
        };
        let flag = Cli {
            no_seccomp: true,
            ..kernel()
        };
        assert!(!load(&flag, HashMap::new()).expect("valid").seccomp);
        let by_env = load(&kernel(), env(&[("OUTSOCK_VMM_SECCOMP", "false")])).expect("valid");
        assert!(!by_env.seccomp);
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("vm.toml");
        std::fs::write(&file, "seccomp = false\n").expect("write");
        let by_file = Cli {
            config: Some(file),
            ..kernel()
        };
        assert!(!load(&by_file, HashMap::new()).expect("valid").seccomp);
        let on = load(&kernel(), env(&[("OUTSOCK_VMM_SECCOMP", "true")])).expect("valid");
        assert!(on.seccomp);
    }

    #[test]
    fn rejects_bad_settings() {
        assert!(matches!(
            load(&Cli::default(), HashMap::new()),
            Err(ConfigError::NoKernel)
        ));
        let cli = Cli {
            kernel: Some("/k".into()),
            vcpus: Some(5),
            ..Default::default()
        };
        assert!(matches!(
            load(&cli, HashMap::new()),
            Err(ConfigError::Vcpus(5))
        ));
        let cli = Cli {
            kernel: Some("/k".into()),
            mem_mib: Some(16),
            ..Default::default()
        };
        assert!(matches!(
            load(&cli, HashMap::new()),
            Err(ConfigError::Memory(16))
        ));
        let cli = Cli {
            kernel: Some("/k".into()),
            ..Default::default()
        };
        assert!(matches!(
            load(&cli, env(&[("OUTSOCK_VMM_BOGUS", "1")])),
            Err(ConfigError::Load(_))
        ));
    }

    #[test]
    fn vsock_peers_are_root_this_uid_host_servers_and_the_listed_ones() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().expect("temp dir");
        let host = dir.path().join("host.sock");
        let _l = std::os::unix::net::UnixListener::bind(&host).expect("bind");
        let owner = std::fs::metadata(&host).expect("stat").uid();
        let cfg = load(
            &Cli {
                kernel: Some("/k".into()),
                ..Default::default()
            },
            env(&[("OUTSOCK_VMM_VSOCK_PEER_UIDS", "4242,4243")]),
        )
        .expect("valid");
        assert_eq!(cfg.vsock_peer_uids, [4242, 4243]);
        let uids = cfg.vsock_peer_uids_resolved(&host);
        let me = rustix::process::getuid().as_raw();
        for uid in [0, me, owner, 4242, 4243] {
            assert!(uids.contains(&uid), "{uid} missing from {uids:?}");
        }
        assert!(!uids.contains(&4244));
    }
}
