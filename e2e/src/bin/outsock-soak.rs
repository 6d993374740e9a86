//! `outsock-soak`: a long run that would show a leak (issue 15, item 4). Not a test: it prints
//! figures and a verdict.
//!
//! In a throwaway test world, for MINUTES (default 30): process-mode clients (this binary as
//! `outsock-soak client`, under `outsock run` in `legacy`, a new process every
//! [`CLIENT_SECS`]) each churning TCP echo connections to the echo server by name, UDP
//! exchanges with it, and DNS look-ups of IPv6 literal names drawn from a fixed set of
//! [`FRESH_NAMES`] (`fd00-64--1-N.ipv6.outsock`: each a mapping of its own, so the mapping
//! table fills to that working set and then recycles nothing new); and relayed traffic from a
//! VMM stand-in (`outsock-soak vmm`, in `host`: the VM hello and a connect request per
//! connection on a fresh host.sock stream, as a VMM that takes no sockets opens them — the
//! connection's bytes relayed over that stream by host-server).
//!
//! Every [`SAMPLE_SECS`] it samples each daemon's VmRSS and open descriptors (`/proc/PID`), the
//! mapping database's size (the file plus its `-wal`) and the table's pins in all, prints each sample, and at the end
//! the least-squares slope per hour of each series over the whole run and over its second half
//! (after the working set is in), with the verdict "flat" when no second-half slope grows
//! beyond its bound in [`BOUNDS`].
//!
//! Usage (as root): `outsock-soak [MINUTES]`; `scripts/soak [MINUTES]` builds it first.

#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpStream, ToSocketAddrs, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use shared_proto::outsource::{ConnectRequest, VmHello};
use shared_proto::{decode, to_vec, ToGuest, ToHost};
use testworld::stack::Stack;
use testworld::{addr, zone};

/// Seconds between samples.
const SAMPLE_SECS: u64 = 10;
/// How long one process-mode client process runs before the next replaces it.
const CLIENT_SECS: u64 = 60;
/// Process-mode clients running at once.
const CLIENTS: usize = 2;
/// The fixed set of fresh names the clients cycle through (below the destination pool's 4096).
const FRESH_NAMES: u32 = 2000;
/// Bytes echoed per TCP connection.
const ECHO_BYTES: usize = 512;
/// The VM's name in host-server's settings.
const VM: &str = "vm0";
/// The largest second-half growth per hour (slope; any decrease is flat) that still counts as flat: RSS KiB/h, fds/h, DB
/// KiB/h. RSS: 2 MiB/h is under 1 % of a daemon's size over a day; descriptors: the count
/// moves by a few tens with the connections in flight at a sample, so ±40/h over 15 minutes
/// is noise (a leak of one descriptor per connection would be thousands an hour); the
/// database: ±256 KiB/h once the working set is in (a leaked row per look-up would be MiBs).
/// Pins: a few are held by the connections open at a sample; ±10/h is noise, a pin left per
/// connection would be hundreds of thousands.
const BOUNDS: [(&str, f64); 4] = [
    ("RSS KiB", 2048.0),
    ("fds", 40.0),
    ("DB KiB", 256.0),
    ("pins", 10.0),
];

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize| args.get(i).map(String::as_str);
    match arg(1) {
        Some("client") => {
            let secs = arg(2).context("client SECS SEED")?.parse()?;
            let seed = arg(3).context("client SECS SEED")?.parse()?;
            client(secs, seed)
        }
        Some("vmm") => {
            let usage = "vmm HOST_SOCK DUMMY:PORT SECS [--first]";
            vmm(
                Path::new(arg(2).context(usage)?),
                arg(3).context(usage)?.parse()?,
                arg(4).context(usage)?.parse()?,
                arg(5) == Some("--first"),
            )
        }
        minutes => soak(minutes.map_or(Ok(30), str::parse)?),
    }
}

/// The literal name of fresh address `n` (`fd00:64::1:N`).
fn fresh_name(n: u32) -> String {
    outsock_e2e::ipv6_literal_name(std::net::Ipv6Addr::new(
        0xfd00,
        0x64,
        0,
        0,
        0,
        0,
        1,
        u16::try_from(n % FRESH_NAMES).unwrap_or(0),
    ))
}

/// The process-mode workload (in `legacy`, under `outsock run`): for `secs`, rounds of one TCP
/// echo connection by name, one UDP exchange, one look-up of a fresh name. Prints its counts.
fn client(secs: u64, seed: u32) -> Result<()> {
    let end = Instant::now() + Duration::from_secs(secs);
    let (mut tcp, mut udp, mut dns, mut errors) = (0u64, 0u64, 0u64, 0u64);
    let mut i = seed.wrapping_mul(7919);
    let payload: Vec<u8> = (0..ECHO_BYTES).map(|b| (b % 251) as u8).collect();
    while Instant::now() < end {
        i = i.wrapping_add(1);
        match tcp_echo(&payload) {
            Ok(()) => tcp += 1,
            Err(e) => {
                errors += 1;
                eprintln!("tcp: {e:#}");
            }
        }
        match udp_echo(i) {
            Ok(()) => udp += 1,
            Err(e) => {
                errors += 1;
                eprintln!("udp: {e:#}");
            }
        }
        match (fresh_name(i).as_str(), 80)
            .to_socket_addrs()
            .map(Iterator::count)
        {
            Ok(n) if n > 0 => dns += 1,
            Ok(_) => {
                errors += 1;
                eprintln!("dns: no address for {}", fresh_name(i));
            }
            Err(e) => {
                errors += 1;
                eprintln!("dns {}: {e}", fresh_name(i));
            }
        }
    }
    println!("tcp {tcp} udp {udp} dns {dns} client_errors {errors}");
    Ok(())
}

fn tcp_echo(payload: &[u8]) -> Result<()> {
    let to = (zone::ECHO, addr::ECHO_PORT)
        .to_socket_addrs()?
        .next()
        .context("no address")?;
    let mut c = TcpStream::connect_timeout(&to, Duration::from_secs(5))?;
    c.set_read_timeout(Some(Duration::from_secs(5)))?;
    c.write_all(payload)?;
    let mut back = vec![0u8; payload.len()];
    c.read_exact(&mut back)?;
    if back != payload {
        bail!("the echo differs");
    }
    Ok(())
}

fn udp_echo(i: u32) -> Result<()> {
    let to = (zone::ECHO, addr::ECHO_PORT)
        .to_socket_addrs()?
        .next()
        .context("no address")?;
    let s = UdpSocket::bind("0.0.0.0:0")?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let msg = format!("soak {i}");
    s.send_to(msg.as_bytes(), to)?;
    let mut buf = [0u8; 256];
    let (n, _) = s.recv_from(&mut buf)?;
    if &buf[..n] != msg.as_bytes() {
        bail!("the UDP answer differs");
    }
    Ok(())
}

/// The VMM stand-in (in `host`): for `secs`, one relayed connection after another to `dest`
/// (a dummy address), each echoing [`ECHO_BYTES`]; after a failure it waits 20 ms, as a
/// guest's retry would. Prints its counts; with `first`, also `first_ok_ms N` (since its start)
/// as soon as its first connection was served (the chaos test's measure of a restart).
fn vmm(host_sock: &Path, dest: SocketAddrV4, secs: u64, first: bool) -> Result<()> {
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let (mut ok, mut errors) = (0u64, 0u64);
    let payload: Vec<u8> = (0..ECHO_BYTES).map(|b| (b % 241) as u8).collect();
    while Instant::now() < end {
        match vm_connection(host_sock, dest, &payload) {
            Ok(()) => {
                if first && ok == 0 {
                    println!("first_ok_ms {}", start.elapsed().as_millis());
                    std::io::stdout().flush()?;
                }
                ok += 1;
            }
            Err(e) => {
                errors += 1;
                eprintln!("vm connection: {e:#}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    println!("vm {ok} vm_errors {errors}");
    Ok(())
}

/// One guest connection as a VMM that takes no sockets opens it: hello, connect request, the
/// answer, then `payload` echoed over the relayed stream.
fn vm_connection(host_sock: &Path, dest: SocketAddrV4, payload: &[u8]) -> Result<()> {
    let hello = ToHost::Hello(VmHello {
        vm: VM.into(),
        cid: 3,
        port: 1024,
        takes_sockets: false,
    });
    let connect = ToHost::Connect(ConnectRequest {
        dest,
        pass_fd: false,
        nonblocking: false,
    });
    let mut bytes = to_vec(&hello)?;
    bytes.extend(to_vec(&connect)?);
    let mut s = std::os::unix::net::UnixStream::connect(host_sock)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(&bytes)?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    let answer = loop {
        if let Some((answer, used)) = decode::<ToGuest>(&buf)? {
            buf.drain(..used);
            break answer;
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            bail!("EOF before the answer");
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    match answer {
        ToGuest::Connected { .. } => {}
        other => bail!("answer {other:?}"),
    }
    s.write_all(payload)?;
    while buf.len() < payload.len() {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            bail!("EOF after {} of {} bytes", buf.len(), payload.len());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    if buf != payload {
        bail!("the relayed echo differs");
    }
    Ok(())
}

/// host-server's settings for the soak's world: the VMM stand-in (user `vmm_uid`: a VMM's
/// user must open every stream with a hello, so the process-mode clients, root, cannot share
/// it) as `vm0`.
fn host_settings(world_dir: &Path, vmm_uid: u32) -> String {
    format!(
        "[listen]\ndefault_address = \"{}\"\n[vms.{VM}]\nsocket = \"{}\"\naddress = \"{}\"\nvmm_uid = {}\n",
        addr::HOST,
        world_dir.join("vm0.vsock").display(),
        addr::HOST_VMS[0],
        vmm_uid
    )
}

/// One sample of the daemons and the database.
#[derive(Debug, Clone, Copy)]
struct Sample {
    t_s: f64,
    rss_kib: [f64; 2],
    fds: [f64; 2],
    db_kib: f64,
    /// The sum of the mapping table's pins (`outsock mappings --json`).
    pins: f64,
}

fn rss_kib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(f64::NAN)
}

fn fd_count(pid: u32) -> f64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(f64::NAN, |d| {
        #[allow(clippy::cast_precision_loss)]
        let n = d.count() as f64;
        n
    })
}

fn file_kib(p: &Path) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    std::fs::metadata(p).map_or(0.0, |m| m.len() as f64 / 1024.0)
}

/// The least-squares slope of `(x, y)` (y per unit of x); NaN with fewer than two points.
#[must_use]
fn slope(points: &[(f64, f64)]) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let n = points.len() as f64;
    if points.len() < 2 {
        return f64::NAN;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    sxy / sxx
}

/// Runs `cmd` again and again until `stop`, adding its printed counts to `totals`.
fn keep_running(
    what: &'static str,
    stop: &AtomicBool,
    totals: &Mutex<Vec<(String, u64)>>,
    mut next: impl FnMut() -> Result<Command>,
) {
    while !stop.load(Ordering::Relaxed) {
        let out = match next().and_then(|mut c| {
            c.stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            Ok(c.output()?)
        }) {
            Ok(o) => o,
            Err(e) => {
                eprintln!("{what}: {e:#}");
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        let stdout = String::from_utf8_lossy(&out.stdout);
        let words: Vec<&str> = stdout.split_whitespace().collect();
        let mut t = totals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for pair in words.chunks(2) {
            if let [k, v] = pair {
                let v: u64 = v.parse().unwrap_or(0);
                match t.iter_mut().find(|(name, _)| name == k) {
                    Some(e) => e.1 += v,
                    None => t.push(((*k).to_owned(), v)),
                }
            }
        }
        if !out.status.success() {
            eprintln!(
                "{what} exited {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // The first few errors of each run say what they were.
        for line in String::from_utf8_lossy(&out.stderr).lines().take(3) {
            eprintln!("{what}: {line}");
        }
    }
}

fn soak(minutes: u64) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir();
    let vmm_user = testworld::users::TestUser::create("soakv")?;
    // Fresh names at the clients' full rate: dns-cache's new-dummy quota (256 a minute per
    // tenant by default, beyond which look-ups of new names get SERVFAIL) lifted.
    let mut s = Stack::start_with(
        "soak",
        "dummy_quota_per_minute = 1000000",
        &host_settings(&dir, vmm_user.uid()),
    )
    .context("starting the test world")?;
    // The stand-in runs as its own user, in group root (host.sock is 0660 root:root).
    std::fs::set_permissions(s.world.dir(), std::fs::Permissions::from_mode(0o755))?;
    let me = std::env::current_exe()?;
    let echo_dummy = s
        .mappings(&["show", "--allocate", &addr::ECHO.to_string()])?
        .trim()
        .to_owned();
    let dest = format!("{echo_dummy}:{}", addr::ECHO_PORT);
    println!(
        "soak: {minutes} min; {CLIENTS} process-mode clients (TCP echo by name, UDP, look-ups of {FRESH_NAMES} cycled fresh names; a new process every {CLIENT_SECS} s), one VMM stand-in (relayed TCP echo to {dest}); a sample every {SAMPLE_SECS} s"
    );
    let stop = Arc::new(AtomicBool::new(false));
    let totals = Arc::new(Mutex::new(Vec::new()));
    let mut load = Vec::new();
    for c in 0..CLIENTS {
        let (stop, totals, me) = (stop.clone(), totals.clone(), me.clone());
        let s = &s;
        let mut seed = u32::try_from(c).unwrap_or(0) * 1_000_003;
        let cmd = move || {
            seed = seed.wrapping_add(1);
            let mut cmd = s.legacy(&me.display().to_string())?;
            cmd.args(["client", &CLIENT_SECS.to_string(), &seed.to_string()]);
            Ok(cmd)
        };
        load.push((stop, totals, cmd));
    }
    let host_sock = s.host_sock();
    let start = Instant::now();
    let end = start + Duration::from_secs(minutes * 60);
    let mut samples = Vec::new();
    std::thread::scope(|scope| -> Result<()> {
        for (stop, totals, cmd) in load {
            scope.spawn(move || keep_running("client", &stop, &totals, cmd));
        }
        {
            let (stop, totals, me, host_sock, dest) = (
                stop.clone(),
                totals.clone(),
                me.clone(),
                host_sock.clone(),
                dest.clone(),
            );
            let (s, vmm_user) = (&s, &vmm_user);
            scope.spawn(move || {
                keep_running("vmm", &stop, &totals, || {
                    let mut c = s.world.host().command("setpriv");
                    c.arg(format!("--reuid={}", vmm_user.uid()))
                        .args(["--regid=0", "--clear-groups"])
                        .arg(&me)
                        .arg("vmm")
                        .arg(&host_sock)
                        .arg(&dest)
                        .arg(CLIENT_SECS.to_string());
                    Ok(c)
                });
            });
        }
        println!("  t(s)  dns RSS KiB  host RSS KiB  dns fds  host fds  DB+WAL KiB  pins");
        while Instant::now() < end {
            std::thread::sleep(Duration::from_secs(SAMPLE_SECS));
            let (d, h) = (s.dns_pid(), s.host_pid());
            let smp = Sample {
                t_s: start.elapsed().as_secs_f64(),
                rss_kib: [rss_kib(d), rss_kib(h)],
                fds: [fd_count(d), fd_count(h)],
                db_kib: file_kib(&s.db()) + file_kib(&s.world.path("mappings.sqlite3-wal")),
                pins: pins(&s),
            };
            println!(
                "  {:5.0} {:12.0} {:13.0} {:8.0} {:9.0} {:11.0} {:5.0}",
                smp.t_s,
                smp.rss_kib[0],
                smp.rss_kib[1],
                smp.fds[0],
                smp.fds[1],
                smp.db_kib,
                smp.pins
            );
            let _ = std::io::stdout().flush();
            samples.push(smp);
        }
        stop.store(true, Ordering::Relaxed);
        Ok(())
    })?;
    let t = totals
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    println!(
        "\nload done: {}",
        t.iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let rows = mapping_rows(&s);
    println!("mappings in the table at the end: {rows}");
    let flat = report(&samples);
    s.stop_host();
    s.stop_dns();
    println!(
        "\nverdict: {}",
        if flat {
            "flat"
        } else {
            "GROWTH (a second-half slope is outside its bound)"
        }
    );
    Ok(())
}

/// The sum of the pins column as `outsock mappings --json` shows it (NaN when unreadable).
fn pins(s: &Stack) -> f64 {
    s.mappings(&["--json"]).map_or(f64::NAN, |j| {
        j.lines()
            .filter_map(|l| {
                l.split("\"pins\":")
                    .nth(1)?
                    .trim_end_matches('}')
                    .parse::<f64>()
                    .ok()
            })
            .sum()
    })
}

fn mapping_rows(s: &Stack) -> usize {
    s.mappings(&["--json"]).map_or(0, |j| j.lines().count())
}

/// Prints each series' slope per hour over the whole run and its second half; whether every
/// second-half slope is within [`BOUNDS`].
fn report(samples: &[Sample]) -> bool {
    type Pick = fn(&Sample) -> f64;
    let series: [(&str, &str, Pick); 6] = [
        ("dns-cache RSS", "RSS KiB", |x| x.rss_kib[0]),
        ("host-server RSS", "RSS KiB", |x| x.rss_kib[1]),
        ("dns-cache fds", "fds", |x| x.fds[0]),
        ("host-server fds", "fds", |x| x.fds[1]),
        ("database + WAL", "DB KiB", |x| x.db_kib),
        ("pins", "pins", |x| x.pins),
    ];
    let half = samples.len() / 2;
    println!("\nslopes per hour (least squares): whole run | second half (bound)");
    let mut flat = true;
    for (name, unit, pick) in series {
        let pts = |from: usize| -> Vec<(f64, f64)> {
            samples[from..]
                .iter()
                .map(|x| (x.t_s / 3600.0, pick(x)))
                .collect()
        };
        let (all, second) = (slope(&pts(0)), slope(&pts(half)));
        let bound = BOUNDS
            .iter()
            .find(|b| b.0 == unit)
            .map_or(f64::INFINITY, |b| b.1);
        // Growth is what counts: memory given back (a negative slope) is flat too.
        let ok = second <= bound;
        flat &= ok;
        let (lo, hi) = samples[half..]
            .iter()
            .map(pick)
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| {
                (l.min(v), h.max(v))
            });
        println!(
            "  {name:16} {all:+10.1} {unit}/h | {second:+10.1} {unit}/h (≤ {bound}) {}  second half {lo:.0}..{hi:.0}",
            if !ok {
                "GROWS"
            } else if second < -bound {
                "flat (shrinks)"
            } else {
                "flat"
            }
        );
    }
    flat
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_of_a_line_and_of_a_constant() {
        let line: Vec<(f64, f64)> = (0..10)
            .map(|i| (f64::from(i), 3.0 * f64::from(i) + 1.0))
            .collect();
        assert!((slope(&line) - 3.0).abs() < 1e-9);
        let flat: Vec<(f64, f64)> = (0..10).map(|i| (f64::from(i), 5.0)).collect();
        assert!(slope(&flat).abs() < 1e-9);
        assert!(slope(&line[..1]).is_nan());
    }

    #[test]
    fn fresh_names_cycle_through_a_fixed_set() {
        assert_eq!(fresh_name(5), "fd00-64--1-5.ipv6.outsock");
        assert_eq!(fresh_name(5 + FRESH_NAMES), fresh_name(5));
    }
}
