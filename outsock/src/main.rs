//! `outsock`: the operator's and user's command.
//!
//! - `outsock run [--socket PATH] [--dns ADDR] -- CMD ARGS…` runs an unmodified IPv4-only program
//!   (process mode) with liboutsock preloaded and under outsock-supervisor (seccomp user
//!   notification), so the AF_INET sockets of dynamic programs (the preload's in-process fast
//!   path), static binaries, Go programs and raw system calls all go through host-server.
//!   Where the kernel cannot supervise, it says so in one line and runs with the preload only.
//!   `--shim-only` and `--supervisor-only` (no LD_PRELOAD) pick one front end, for debugging.
//!   A 32-bit program (an ELFCLASS32 file) is run by default without the preload, which is
//!   64-bit (ld.so would refuse it with an error line at each start): the supervisor serves
//!   its i386 calls alone. A 32-bit program started by a 64-bit one still gets that line.
//! - `outsock mappings [--json] [--direction …] [--name …] [--address …]` prints dns-cache's
//!   mapping table, asked over `dns.sock`; `outsock mappings add DUMMY IPV6 [--name …]`,
//!   `remove DUMMY [--force]` and `show IPV6 [--allocate]` set, remove and query static
//!   mappings and dummies.
//! - `outsock health [--dns-socket …] [--host-socket …]` checks that the daemons answer.
//! - `outsock vm run [--name …] [--kernel … --initramfs …] -- CMD ARGS…` runs one program in a
//!   fresh VM and exits with its status; `outsock vm ls [--json]` lists host-server's VMs
//!   (see [`vm`]).

#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

mod json;
mod vm;

use clap::{Parser, Subcommand, ValueEnum};
use json::json_str;
use shared_proto::lookup::{Direction, ListQuery, MappingInfo};
use shared_proto::{decode, to_vec, LookupOp, LookupReply, LookupRequest, LookupResponse};

#[derive(Parser, Debug)]
#[command(
    name = "outsock",
    version,
    about = "Run IPv4-only programs on an IPv6-only host, and inspect outsock's mappings"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run a program in process mode: liboutsock preloaded, under the seccomp supervisor.
    ///
    /// The preload translates dynamic programs in-process; the supervisor (seccomp user
    /// notification, Linux >= 5.14) translates static binaries, Go programs and raw system
    /// calls, clients and servers, for the program and its descendants, and returns the
    /// program's status once the last descendant has exited too. Where the supervisor is
    /// unavailable it says so in one line and runs with the preload only.
    Run {
        /// host-server's socket.
        #[arg(long, env = "OUTSOCK_SOCKET", default_value = "/run/outsock/host.sock")]
        socket: PathBuf,
        /// The guest DNS address (answered by dns-cache through host-server).
        #[arg(long, env = "OUTSOCK_DNS")]
        dns: Option<String>,
        /// liboutsock.so to preload (default: next to this executable, else
        /// ../lib/outsock/liboutsock.so from it, where deploy/README.md installs it).
        #[arg(long, env = "OUTSOCK_SHIM")]
        shim: Option<PathBuf>,
        /// Only the preload, no supervisor (debugging): static binaries and Go programs are
        /// not outsourced.
        #[arg(long, conflicts_with = "supervisor_only")]
        shim_only: bool,
        /// Only the supervisor, no LD_PRELOAD (debugging): every call is translated at the
        /// system-call boundary, dynamic programs' too.
        #[arg(long)]
        supervisor_only: bool,
        /// The default (preload and supervisor), kept for older scripts.
        #[arg(long, hide = true, conflicts_with_all = ["shim_only", "supervisor_only"])]
        supervise: bool,
        /// The program and its arguments.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Print the dummy-IPv4 ↔ IPv6 mappings held by dns-cache.
    Mappings {
        /// dns-cache's look-up socket.
        #[arg(
            long,
            env = "OUTSOCK_DNS_SOCKET",
            default_value = "/run/outsock/dns.sock"
        )]
        socket: PathBuf,
        /// Only this direction.
        #[arg(long, value_enum)]
        direction: Option<Dir>,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
        /// Only mappings whose names contain this text.
        #[arg(long)]
        name: Option<String>,
        /// Only the mapping with this dummy IPv4 or IPv6 address.
        #[arg(long)]
        address: Option<std::net::IpAddr>,
        /// Change or query one mapping instead of listing them.
        #[command(subcommand)]
        action: Option<MappingsCmd>,
    },
    /// VM mode: one program in a fresh VM, and the VMs host-server knows.
    Vm {
        #[command(subcommand)]
        command: VmCmd,
    },
    /// Check that the daemons answer (for container health checks and scripts): exit 0 when
    /// every socket given answers.
    Health {
        /// dns-cache's look-up socket: asked for its counters.
        #[arg(long)]
        dns_socket: Option<PathBuf>,
        /// host-server's socket: must accept a connection.
        #[arg(long)]
        host_socket: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum MappingsCmd {
    /// Set a static mapping: DUMMY (in the destination pool) always stands for IPV6, never
    /// recycled; persisted before this returns (dns-cache's admins).
    Add {
        dummy: std::net::Ipv4Addr,
        ipv6: std::net::Ipv6Addr,
        /// A name for PTR answers (repeatable).
        #[arg(long = "name")]
        names: Vec<String>,
    },
    /// Remove a static mapping; one in use by open connections only with --force.
    Remove {
        dummy: std::net::Ipv4Addr,
        #[arg(long)]
        force: bool,
    },
    /// Print the dummy IPv4 that stands for IPV6 (with --allocate, make one if there is none,
    /// as a DNS answer would), for scripts that write configurations.
    Show {
        ipv6: std::net::Ipv6Addr,
        #[arg(long)]
        allocate: bool,
    },
}

#[derive(Subcommand, Debug)]
enum VmCmd {
    /// Run one program in a fresh VM (outsock-vmm against the running daemons): its output on
    /// stdout, this terminal's input to the guest console, and its exit status (125 when the VM
    /// ended without running it).
    Run {
        /// The VM's name: host-server's `[vms.NAME]`.
        #[arg(long, default_value = "vm0")]
        name: String,
        /// host-server's socket.
        #[arg(long, env = "OUTSOCK_SOCKET", default_value = "/run/outsock/host.sock")]
        host_socket: PathBuf,
        /// The VM's own socket (default: host-server's `[vms.NAME] socket` when it tells
        /// this user, else /run/outsock/vm-NAME.vsock).
        #[arg(long)]
        vsock_socket: Option<PathBuf>,
        /// The guest's vsock CID.
        #[arg(long, default_value_t = 3)]
        cid: u32,
        /// Guest memory, MiB.
        #[arg(long, default_value_t = 512)]
        mem_mib: u32,
        /// The guest kernel (with --initramfs; default: guest/image/build.sh builds the image).
        #[arg(long, requires = "initramfs")]
        kernel: Option<PathBuf>,
        /// The guest initramfs (with --kernel).
        #[arg(long, requires = "kernel")]
        initramfs: Option<PathBuf>,
        /// outsock-vmm (default: next to this executable).
        #[arg(long, env = "OUTSOCK_VMM")]
        vmm: Option<PathBuf>,
        /// Serve the VMM's counters (Prometheus text) on this Unix socket while it runs.
        #[arg(long)]
        metrics_socket: Option<PathBuf>,
        /// The program and its arguments, run in the guest.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// List the VMs host-server is configured for: running or not, the VMM's pid, the guest's
    /// CID, the sockets and listeners each holds (root or host-server's user).
    Ls {
        /// host-server's socket.
        #[arg(long, env = "OUTSOCK_SOCKET", default_value = "/run/outsock/host.sock")]
        socket: PathBuf,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum Dir {
    Synthesised,
    InboundPeer,
    Static,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Run {
            socket,
            dns,
            shim,
            shim_only,
            supervisor_only,
            supervise: _,
            command,
        } => {
            let mode = if shim_only {
                Mode::ShimOnly
            } else if supervisor_only {
                Mode::SupervisorOnly
            } else {
                Mode::Both
            };
            run(&socket, dns.as_deref(), shim, mode, &command)
        }
        Cmd::Mappings {
            socket,
            action: Some(action),
            ..
        } => mapping_action(&socket, action),
        Cmd::Mappings {
            socket,
            direction,
            json,
            name,
            address,
            action: None,
        } => mappings(&socket, direction, json, &Filter { name, address }),
        Cmd::Health {
            dns_socket,
            host_socket,
        } => health(dns_socket.as_ref(), host_socket.as_ref()),
        Cmd::Vm {
            command:
                VmCmd::Run {
                    name,
                    host_socket,
                    vsock_socket,
                    cid,
                    mem_mib,
                    kernel,
                    initramfs,
                    vmm,
                    metrics_socket,
                    command,
                },
        } => {
            let status = vm::run(&vm::RunArgs {
                name,
                host_socket,
                vsock_socket,
                cid,
                mem_mib,
                kernel,
                initramfs,
                vmm,
                metrics_socket,
                command,
            })?;
            std::process::exit(status)
        }
        Cmd::Vm {
            command: VmCmd::Ls { socket, json },
        } => vm::ls(&socket, json),
    }
}

/// Which front ends `outsock run` uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// liboutsock preloaded, under the supervisor (the default).
    Both,
    /// liboutsock only.
    ShimOnly,
    /// The supervisor only, no LD_PRELOAD.
    SupervisorOnly,
}

fn run(
    socket: &PathBuf,
    dns: Option<&str>,
    shim: Option<PathBuf>,
    mode: Mode,
    command: &[String],
) -> Result<()> {
    let mut cmd = Command::new(&command[0]);
    cmd.args(&command[1..]).env("OUTSOCK_SOCKET", socket);
    // The preload is 64-bit: a 32-bit program is the supervisor's alone (unless shim-only).
    let preload = match mode {
        Mode::Both => !is_elf32(&command[0]),
        Mode::ShimOnly => true,
        Mode::SupervisorOnly => false,
    };
    if preload {
        let shim = match shim {
            Some(p) => p,
            None => default_shim(&std::env::current_exe()?),
        };
        if !shim.is_file() {
            bail!(
                "{} not found: build it with `cargo build -p outsock-shim`, install it as \
                 deploy/README.md says, or pass --shim",
                shim.display()
            );
        }
        let preload = match std::env::var("LD_PRELOAD") {
            Ok(old) if !old.is_empty() => format!("{}:{old}", shim.display()),
            _ => shim.display().to_string(),
        };
        cmd.env("LD_PRELOAD", preload);
    }
    if let Some(dns) = dns {
        cmd.env("OUTSOCK_DNS", dns);
    }
    if mode != Mode::ShimOnly {
        let guest_dns = match dns {
            Some(d) => d
                .parse()
                .with_context(|| format!("--dns {d}: not an IPv4 address and port"))?,
            None => outsock_supervisor::DEFAULT_GUEST_DNS,
        };
        let opts = outsock_supervisor::Options {
            host_socket: socket.clone(),
            guest_dns,
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
        };
        match outsock_supervisor::run(&mut cmd, &opts) {
            Ok(status) => std::process::exit(
                status
                    .code()
                    .or_else(|| status.signal().map(|s| 128 + s))
                    .unwrap_or(1),
            ),
            Err(outsock_supervisor::RunError::Unavailable) if mode == Mode::SupervisorOnly => {
                bail!("seccomp user notification is unavailable (Linux < 5.14, or a seccomp filter forbids it), and --supervisor-only needs it")
            }
            Err(outsock_supervisor::RunError::Unavailable) => eprintln!(
                "outsock: seccomp user notification is unavailable (Linux < 5.14, or a seccomp filter forbids it); running with the preload only (dynamic programs)"
            ),
            Err(e) => return Err(e).with_context(|| format!("running {}", command[0])),
        }
    }
    let err = cmd.exec();
    Err(err).with_context(|| format!("running {}", command[0]))
}

fn ask(stream: &mut UnixStream, id: u32, op: LookupOp) -> Result<LookupReply> {
    stream.write_all(&to_vec(&LookupRequest { id, op })?)?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some((resp, _)) = decode::<LookupResponse>(&buf)? {
            if resp.id != id {
                bail!("dns-cache answered request {} instead of {id}", resp.id);
            }
            return Ok(resp.reply);
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            bail!("dns-cache closed the look-up stream");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// `outsock mappings add|remove|show`: one request to dns-cache, its answer printed.
fn mapping_action(socket: &PathBuf, action: MappingsCmd) -> Result<()> {
    let mut stream = UnixStream::connect(socket)
        .with_context(|| format!("connecting to dns-cache at {}", socket.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let op = match action {
        MappingsCmd::Add { dummy, ipv6, names } => LookupOp::StaticSet {
            dummy,
            v6: ipv6,
            names,
        },
        MappingsCmd::Remove { dummy, force } => LookupOp::StaticRemove { dummy, force },
        MappingsCmd::Show { ipv6, allocate } => LookupOp::Show { v6: ipv6, allocate },
    };
    match ask(&mut stream, 1, op)? {
        LookupReply::Resolved(m) => {
            println!("{} = {} (static)", m.dummy, m.v6);
            Ok(())
        }
        LookupReply::Pinned { pins } => {
            println!("removed ({pins} open connection(s) used it)");
            Ok(())
        }
        LookupReply::Dummy { dummy } => {
            println!("{dummy}");
            Ok(())
        }
        LookupReply::NotFound => bail!("no mapping (give --allocate to make one)"),
        LookupReply::Error { message, .. } => bail!("dns-cache: {message}"),
        other => bail!("unexpected answer from dns-cache: {other:?}"),
    }
}

/// Client-side filters for `outsock mappings`.
struct Filter {
    name: Option<String>,
    address: Option<std::net::IpAddr>,
}

impl Filter {
    fn keeps(&self, m: &MappingInfo) -> bool {
        let name_ok = self
            .name
            .as_ref()
            .is_none_or(|n| m.names.iter().any(|x| x.contains(n.as_str())));
        let addr_ok = match self.address {
            None => true,
            Some(std::net::IpAddr::V4(a)) => m.dummy == a,
            Some(std::net::IpAddr::V6(a)) => m.v6 == a,
        };
        name_ok && addr_ok
    }
}

fn health(dns: Option<&PathBuf>, host: Option<&PathBuf>) -> Result<()> {
    if dns.is_none() && host.is_none() {
        bail!("give --dns-socket and/or --host-socket");
    }
    if let Some(path) = dns {
        let mut s = UnixStream::connect(path)
            .with_context(|| format!("dns-cache at {}", path.display()))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        match ask(&mut s, 1, LookupOp::Stats)? {
            LookupReply::Stats(_) => println!("dns-cache: answering on {}", path.display()),
            other => bail!("dns-cache answered {other:?}"),
        }
    }
    if let Some(path) = host {
        // Connecting and closing without a request is harmless: host-server drops the stream.
        UnixStream::connect(path).with_context(|| format!("host-server at {}", path.display()))?;
        println!("host-server: accepting on {}", path.display());
    }
    Ok(())
}

fn mappings(socket: &PathBuf, direction: Option<Dir>, json: bool, filter: &Filter) -> Result<()> {
    let mut stream = UnixStream::connect(socket)
        .with_context(|| format!("connecting to dns-cache at {}", socket.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let direction = direction.map(|d| match d {
        Dir::Synthesised => Direction::Synthesised,
        Dir::InboundPeer => Direction::InboundPeer,
        Dir::Static => Direction::Static,
    });
    let mut all = Vec::new();
    let mut id = 0;
    loop {
        id += 1;
        let offset = u32::try_from(all.len())?;
        let op = LookupOp::List(ListQuery {
            direction,
            offset,
            limit: 500,
        });
        match ask(&mut stream, id, op)? {
            LookupReply::Mappings { total, entries } => {
                let done = entries.is_empty() || all.len() + entries.len() >= total as usize;
                all.extend(entries);
                if done {
                    break;
                }
            }
            LookupReply::Error { message, .. } => bail!("dns-cache: {message}"),
            other => bail!("unexpected answer from dns-cache: {other:?}"),
        }
    }
    all.retain(|m| filter.keeps(m));
    let out = std::io::stdout();
    let mut out = out.lock();
    if json {
        for m in &all {
            writeln!(out, "{}", to_json(m))?;
        }
    } else {
        writeln!(
            out,
            "{:<15}  {:<39}  {:<12}  {:>4}  {:<20}  names",
            "dummy", "ipv6", "direction", "pins", "expires"
        )?;
        for m in &all {
            writeln!(
                out,
                "{:<15}  {:<39}  {:<12}  {:>4}  {:<20}  {}",
                m.dummy,
                m.v6,
                dir_name(m.direction),
                m.pins,
                time(m.expires),
                m.names.join(",")
            )?;
        }
    }
    Ok(())
}

fn dir_name(d: Direction) -> &'static str {
    match d {
        Direction::Synthesised => "synthesised",
        Direction::InboundPeer => "inbound-peer",
        Direction::Static => "static",
    }
}

/// Seconds since the epoch as UTC `YYYY-MM-DD hh:mm:ss`.
fn time(secs: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(secs);
    let s = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (s / 86_400, s % 86_400);
    // Civil-from-days (Howard Hinnant's algorithm), valid for every date after 1970.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn to_json(m: &MappingInfo) -> String {
    let names: Vec<String> = m.names.iter().map(|n| json_str(n)).collect();
    format!(
        "{{\"dummy\":\"{}\",\"ipv6\":\"{}\",\"direction\":\"{}\",\"names\":[{}],\"created\":{},\"last_used\":{},\"expires\":{},\"pins\":{}}}",
        m.dummy,
        m.v6,
        dir_name(m.direction),
        names.join(","),
        m.created,
        m.last_used,
        m.expires,
        m.pins
    )
}

/// Where `outsock run` finds liboutsock.so without --shim: next to the executable `exe` (a
/// cargo build), else `../lib/outsock/liboutsock.so` from it (installed: /usr/bin/outsock and
/// /usr/lib/outsock/liboutsock.so). The first that exists; the first if neither does.
fn default_shim(exe: &Path) -> PathBuf {
    let beside = exe.with_file_name("liboutsock.so");
    let installed = exe
        .parent()
        .and_then(Path::parent)
        .map(|prefix| prefix.join("lib/outsock/liboutsock.so"));
    match installed {
        Some(p) if !beside.is_file() && p.is_file() => p,
        _ => beside,
    }
}

/// Whether `program` — a path, or a name looked up on PATH as `Command` does — is a 32-bit
/// ELF file (`ELFCLASS32`). Anything unreadable is not.
fn is_elf32(program: &str) -> bool {
    let elf32 = |p: &std::path::Path| {
        let mut head = [0u8; 5];
        std::fs::File::open(p)
            .and_then(|mut f| f.read_exact(&mut head))
            .is_ok_and(|()| head == *b"\x7fELF\x01")
    };
    if program.contains('/') {
        return elf32(std::path::Path::new(program));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .is_some_and(|p| elf32(&p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn knows_a_32_bit_program() {
        let dir = std::env::temp_dir().join(format!("outsock-elf32-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, bytes: &[u8]| {
            let p = dir.join(name);
            std::fs::write(&p, bytes).unwrap();
            p.display().to_string()
        };
        assert!(is_elf32(&write("old", b"\x7fELF\x01\x01\x01\0")));
        assert!(!is_elf32(&write("new", b"\x7fELF\x02\x01\x01\0")));
        assert!(!is_elf32(&write("script", b"#!/bin/sh\n")));
        assert!(!is_elf32(&write("short", b"\x7fEL")));
        assert!(!is_elf32(&dir.join("none").display().to_string()));
        std::fs::remove_dir_all(&dir).unwrap();
        // A name on PATH: this machine's `sh` is 64-bit.
        assert!(!is_elf32("sh"));
    }

    #[test]
    fn finds_the_shim_beside_or_installed() {
        let dir = std::env::temp_dir().join(format!("outsock-shim-{}", std::process::id()));
        let bin = dir.join("usr/bin");
        let lib = dir.join("usr/lib/outsock");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&lib).unwrap();
        let exe = bin.join("outsock");
        // Neither: the one beside (named in the error).
        assert_eq!(default_shim(&exe), bin.join("liboutsock.so"));
        std::fs::write(lib.join("liboutsock.so"), b"").unwrap();
        assert_eq!(default_shim(&exe), lib.join("liboutsock.so"));
        std::fs::write(bin.join("liboutsock.so"), b"").unwrap();
        assert_eq!(default_shim(&exe), bin.join("liboutsock.so"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn formats_times_and_json() {
        assert_eq!(time(0), "1970-01-01 00:00:00");
        assert_eq!(time(1_795_000_000), "2026-11-18 11:06:40");
        let m = MappingInfo {
            dummy: Ipv4Addr::new(10, 170, 160, 2),
            v6: "fd00:64::80".parse().unwrap(),
            names: vec!["a\"b".into()],
            direction: Direction::Synthesised,
            created: 1,
            last_used: 2,
            expires: 3,
            pins: 0,
        };
        assert_eq!(
            to_json(&m),
            r#"{"dummy":"10.170.160.2","ipv6":"fd00:64::80","direction":"synthesised","names":["a\"b"],"created":1,"last_used":2,"expires":3,"pins":0}"#
        );
    }
}
