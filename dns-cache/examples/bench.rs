//! The dns-cache benchmark (a command, never a test):
//!
//! ```text
//! cargo build --release -p outsock-dns-cache --bin outsock-dns-cache --example bench
//! sudo /work/target-dns/release/examples/bench [SECONDS_PER_RUN] [ROUNDS]
//! ```
//! (dns-cache/bench/run.sh does both.) Inside a fresh test world it measures, with dnsperf:
//! 1. cache hits: outsock-dns-cache vs Unbound (`num-threads: 1`, forwarding to the same
//!    dnsmasq), same query file, caches warmed, runs alternating;
//! 2. synthesised A answers/s vs pass-through answers/s (TXT, from the cache) of dns-cache;
//! 3. the miss path: every query a new name with a new AAAA (a second dnsmasq synthesises
//!    them), so every answer allocates a mapping and commits it to SQLite first;
//! 4. the allocator and SQLite writer alone, in process (no DNS), as new mappings/s.
//!
//! Beside the cache-hit runs, the physical limit of a UDP server on this machine: a bare echo of
//! this bench's own (`bench udp-echo PORT`: recvmmsg/sendmmsg in batches of 64, the query sent
//! back with its QR bit set, nothing parsed), measured the same way.
//!
//! Prints min/median/max and ratios of medians, and for the cache-hit runs also each server's
//! CPU time per answered query (from /proc/PID/stat), which a busy machine disturbs less than
//! queries/s. Everything runs in the world's namespaces.

// A benchmark is tooling: a failed unwrap is a failed run.
#![allow(clippy::unwrap_used)]

use std::net::Ipv6Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use outsock_dns_cache::clock::SystemClock;
use outsock_dns_cache::mapping::{Direction, MappingTable};
use outsock_dns_cache::persist::Mappings;
use outsock_dns_cache::store::{Durability, Store};
use testworld::{addr, record, zone, Daemon, World};

const CACHE_PORT: u16 = 5300;
const UNBOUND_PORT: u16 = 5301;
const MISS_CACHE_PORT: u16 = 5302;
const BULK_PORT: u16 = 5353;
const BULK_NAMES: u32 = 30_000;
const ECHO_PORT: u16 = 5303;
/// Datagrams per recvmmsg/sendmmsg of the bare echo.
const ECHO_BATCH: usize = 64;

/// `bench udp-echo PORT`: the bare UDP server on [::1]:PORT — batches of up to [`ECHO_BATCH`]
/// datagrams in by recvmmsg(2), each sent back to its sender with the DNS header's QR bit set
/// by one sendmmsg(2). Runs until killed.
#[allow(unsafe_code)]
fn udp_echo(port: u16) -> Result<()> {
    use std::os::fd::AsRawFd;
    let sock = std::net::UdpSocket::bind((Ipv6Addr::LOCALHOST, port))?;
    let fd = sock.as_raw_fd();
    let mut bufs = vec![[0u8; 512]; ECHO_BATCH];
    // SAFETY: plain data, zeroed.
    let mut addrs: Vec<libc::sockaddr_in6> = vec![unsafe { std::mem::zeroed() }; ECHO_BATCH];
    let mut iovs: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        })
        .collect();
    // SAFETY: plain data, zeroed, then pointed at the buffers above (which outlive it).
    let mut msgs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; ECHO_BATCH];
    loop {
        for (i, m) in msgs.iter_mut().enumerate() {
            m.msg_hdr.msg_name = std::ptr::from_mut(&mut addrs[i]).cast();
            #[allow(clippy::cast_possible_truncation)] // 28 bytes.
            {
                m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in6>() as u32;
            }
            m.msg_hdr.msg_iov = std::ptr::from_mut(&mut iovs[i]);
            m.msg_hdr.msg_iovlen = 1;
            m.msg_len = 0;
        }
        #[allow(clippy::cast_possible_truncation)] // 64.
        // SAFETY: every header points at live buffers of the lengths given.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                msgs.as_mut_ptr(),
                ECHO_BATCH as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        let Ok(n) = usize::try_from(n) else { continue };
        for (i, m) in msgs.iter_mut().take(n).enumerate() {
            bufs[i][2] |= 0x80;
            iovs[i].iov_len = m.msg_len as usize;
        }
        #[allow(clippy::cast_possible_truncation)] // ≤ 64.
        // SAFETY: the first n headers as recvmmsg filled them (names and lengths).
        unsafe {
            libc::sendmmsg(fd, msgs.as_mut_ptr(), n as u32, 0)
        };
        for v in &mut iovs {
            v.iov_len = 512;
        }
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("udp-echo") {
        return udp_echo(args.get(2).context("udp-echo PORT")?.parse()?);
    }
    if !testworld::skip_unless_root("dns-cache bench") {
        return Ok(());
    }
    let mut args = args.into_iter().skip(1);
    let secs: u32 = args.next().map_or(Ok(5), |s| s.parse())?;
    let rounds: u32 = args.next().map_or(Ok(3), |s| s.parse())?;
    let bin = std::env::current_exe()?
        .parent()
        .and_then(Path::parent)
        .context("locating the target directory")?
        .join("outsock-dns-cache");
    if !bin.is_file() {
        bail!(
            "{} is missing: build the binary first (see bench/run.sh)",
            bin.display()
        );
    }
    let world = World::start("bench")?;
    println!("# outsock-dns-cache bench: {secs} s per run, {rounds} rounds, alternating");

    // v4only is a pass-through name: its real A is forwarded and cached.
    let pass_filter = format!("pass_through = [\"{}\"]", zone::V4ONLY);
    let cache = start_cache(&world, &bin, "hit", CACHE_PORT, addr::DNS, 53, &pass_filter)?;
    let unbound = start_unbound(&world)?;
    let mut echo_cmd = Command::new(std::env::current_exe()?);
    echo_cmd.args(["udp-echo", &ECHO_PORT.to_string()]);
    let echo = world.host().spawn("udp-echo", echo_cmd)?;
    let _bulk = start_bulk_dnsmasq(&world)?;
    let _miss = start_cache(
        &world,
        &bin,
        "miss",
        MISS_CACHE_PORT,
        addr::DNS,
        BULK_PORT,
        // Every query a new dummy, from one client: its quota (256 a minute by default)
        // would refuse all but the first few hundred.
        "destination_pool = \"10.160.0.0/16\"\ndummy_quota_per_minute = 100000000",
    )?;

    // The dual-stack name is a cache hit for both: Unbound caches its real A, dns-cache its AAAA
    // (and synthesises). Names without A would make Unbound recurse every time (dnsmasq's NODATA
    // carries no SOA, so it is not cached), which would flatter us.
    let hits = world.path("hits.txt");
    std::fs::write(&hits, format!("{} A\n", zone::DUAL))?;
    let synth = world.path("synth.txt");
    std::fs::write(&synth, format!("{} A\n", zone::V6ONLY))?;
    let pass = world.path("pass.txt");
    std::fs::write(&pass, format!("{} A\n", zone::V4ONLY))?;

    // Warm both caches.
    for file in [&hits, &synth, &pass] {
        dnsperf(&world, CACHE_PORT, file, 1, None)?;
    }
    dnsperf(&world, UNBOUND_PORT, &hits, 1, None)?;
    let (mut ours, mut theirs, mut syn, mut pas) = (vec![], vec![], vec![], vec![]);
    let (mut ours_cpu, mut theirs_cpu, mut syn_cpu, mut pas_cpu) = (vec![], vec![], vec![], vec![]);
    let (mut bare, mut bare_cpu) = (vec![], vec![]);
    for _ in 0..rounds {
        let (run, cpu) = measured(&world, CACHE_PORT, &hits, secs, cache.pid())?;
        ours.push(run.qps);
        ours_cpu.push(cpu);
        let (run, cpu) = measured(&world, UNBOUND_PORT, &hits, secs, unbound.pid())?;
        theirs.push(run.qps);
        theirs_cpu.push(cpu);
        let (run, cpu) = measured(&world, CACHE_PORT, &synth, secs, cache.pid())?;
        syn.push(run.qps);
        syn_cpu.push(cpu);
        let (run, cpu) = measured(&world, CACHE_PORT, &pass, secs, cache.pid())?;
        pas.push(run.qps);
        pas_cpu.push(cpu);
        let (run, cpu) = measured(&world, ECHO_PORT, &hits, secs, echo.pid())?;
        bare.push(run.qps);
        bare_cpu.push(cpu);
    }
    for (name, qps, cpu) in [
        ("outsock-dns-cache (cache hits)", &ours, &ours_cpu),
        ("unbound num-threads=1 (cache hits)", &theirs, &theirs_cpu),
        ("outsock-dns-cache (synthesised A)", &syn, &syn_cpu),
        ("outsock-dns-cache (pass-through A)", &pas, &pas_cpu),
        ("bare recvmmsg/sendmmsg echo", &bare, &bare_cpu),
    ] {
        record::figure("dns", &format!("qps: {name}"), "queries/s", median(qps));
        record::figure("dns", &format!("CPU per query: {name}"), "µs", median(cpu));
    }
    report("cache hits, outsock-dns-cache (A, qps)", &ours);
    report("cache hits, unbound num-threads=1 (A, qps)", &theirs);
    println!(
        "ratio dns-cache/unbound (median): {:.2}",
        median(&ours) / median(&theirs)
    );
    report_us("cache hits, outsock-dns-cache (CPU µs/query)", &ours_cpu);
    report_us(
        "cache hits, unbound num-threads=1 (CPU µs/query)",
        &theirs_cpu,
    );
    report("bare recvmmsg/sendmmsg UDP echo (qps)", &bare);
    report_us("bare recvmmsg/sendmmsg UDP echo (CPU µs/query)", &bare_cpu);
    println!(
        "ratio unbound/dns-cache CPU per query (median; above 1 = dns-cache cheaper): {:.2}",
        median(&theirs_cpu) / median(&ours_cpu)
    );
    report("synthesised A (qps)", &syn);
    report("pass-through A (qps)", &pas);
    println!(
        "ratio synthesised/pass-through (median): {:.2}",
        median(&syn) / median(&pas)
    );
    report_us("synthesised A (CPU µs/query)", &syn_cpu);
    report_us("pass-through A (CPU µs/query)", &pas_cpu);
    println!(
        "ratio pass-through/synthesised CPU per query (median; 1 = as cheap): {:.2}",
        median(&pas_cpu) / median(&syn_cpu)
    );

    // Miss path: each name once, each a new AAAA, so each answer is a new committed mapping.
    let bulk = world.path("bulk.txt");
    let text: String = (1..=BULK_NAMES)
        .map(|i| format!("{} A\n", bulk_name(i)))
        .collect();
    std::fs::write(&bulk, text)?;
    let before = count_rows(&world.path("miss.sqlite3"))?;
    let run = dnsperf(&world, MISS_CACHE_PORT, &bulk, 60, Some(1))?;
    // Let the writer's periodic flush land before counting.
    std::thread::sleep(Duration::from_millis(1500));
    let after = count_rows(&world.path("miss.sqlite3"))?;
    println!(
        "miss path over DNS: {} queries, {} NOERROR, {:.0} new mappings/s (rows {} -> {}; includes dnsmasq's time)",
        run.sent, run.noerror, run.qps, before, after
    );
    record::figure(
        "dns",
        "new mappings/s over DNS (miss path)",
        "mappings/s",
        run.qps,
    );

    // The allocator and the SQLite writer alone.
    let per_sec = tokio::runtime::Runtime::new()?
        .block_on(in_process_allocations(&world.path("alloc.sqlite3"), 50_000))?;
    println!(
        "allocator + SQLite commit in process: {per_sec:.0} new mappings/s (64 concurrent askers)"
    );
    record::figure("dns", "new mappings/s in process", "mappings/s", per_sec);
    Ok(())
}

fn bulk_name(i: u32) -> String {
    // dnsmasq's synth-domain names: prefix + the address with ':' written as '-'.
    let v6 = Ipv6Addr::new(
        0xfd00,
        0x66,
        0,
        0,
        0,
        0,
        (i >> 16) as u16,
        (i & 0xffff) as u16,
    );
    format!("h-{}.bulk.test", v6.to_string().replace(':', "-"))
}

fn count_rows(db: &Path) -> Result<String> {
    let out = Command::new("sqlite3")
        .arg(db)
        .arg("select count(*) from mappings")
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

async fn in_process_allocations(db: &Path, n: u32) -> Result<f64> {
    let store = Store::open(db, Durability::ProcessCrash)?;
    let m = Mappings::start(
        store,
        MappingTable::new(
            "10.160.0.0/16".parse()?,
            Direction::Synthesised,
            Duration::from_secs(3600),
        ),
        MappingTable::new(
            "172.21.112.0/20".parse()?,
            Direction::InboundPeer,
            Duration::from_secs(3600),
        ),
        Arc::new(SystemClock),
    )?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..64u32 {
        let m = Arc::clone(&m);
        tasks.push(tokio::spawn(async move {
            let mut i = worker;
            while i < n {
                let v6 = Ipv6Addr::from(0xfd00_0066_u128 << 96 | u128::from(i));
                m.map_durable(
                    Direction::Synthesised,
                    &[(v6, Some("bench."))],
                    Duration::from_secs(60),
                )
                .await
                .unwrap();
                i += 64;
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let elapsed = started.elapsed();
    m.shutdown();
    Ok(f64::from(n) / elapsed.as_secs_f64())
}

struct Run {
    qps: f64,
    sent: u64,
    completed: u64,
    noerror: u64,
}

/// User + system CPU time of a process so far, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at the last ')'.
    let rest = stat
        .rsplit(')')
        .next()
        .context("malformed /proc/PID/stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after ')'.
    Ok(f.get(11).context("utime")?.parse::<u64>()? + f.get(12).context("stime")?.parse::<u64>()?)
}

fn clock_ticks_per_second() -> Result<f64> {
    let out = Command::new("getconf").arg("CLK_TCK").output()?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

/// A dnsperf run and the CPU time `pid` spent per completed query in it, in microseconds.
fn measured(world: &World, port: u16, file: &Path, secs: u32, pid: u32) -> Result<(Run, f64)> {
    let before = cpu_ticks(pid)?;
    let run = dnsperf(world, port, file, secs, None)?;
    let ticks = cpu_ticks(pid)? - before;
    #[allow(clippy::cast_precision_loss)] // tick and query counts are far below 2^52
    let us = ticks as f64 / clock_ticks_per_second()? * 1e6 / run.completed.max(1) as f64;
    Ok((run, us))
}

fn dnsperf(world: &World, port: u16, file: &Path, secs: u32, maxruns: Option<u32>) -> Result<Run> {
    let mut cmd = world.host().command("dnsperf");
    cmd.args(["-s", "::1", "-p", &port.to_string(), "-d"])
        .arg(file)
        .args(["-c", "8", "-q", "200", "-l", &secs.to_string()]);
    if let Some(n) = maxruns {
        cmd.args(["-n", &n.to_string()]);
    }
    let out = cmd.output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let field = |key: &str| -> Option<String> {
        text.lines()
            .find(|l| l.trim_start().starts_with(key))
            .and_then(|l| l.split(':').nth(1))
            .map(|v| v.split_whitespace().next().unwrap_or("").to_owned())
    };
    let qps: f64 = field("Queries per second").context(text.clone())?.parse()?;
    let sent: u64 = field("Queries sent")
        .unwrap_or_default()
        .parse()
        .unwrap_or(0);
    let completed: u64 = field("Queries completed")
        .unwrap_or_default()
        .parse()
        .unwrap_or(0);
    // "Response codes:       NOERROR 30000 (100.00%), ..."
    let noerror = text
        .split("NOERROR ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Ok(Run {
        qps,
        sent,
        completed,
        noerror,
    })
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(s.len() / 2).copied().unwrap_or(f64::NAN)
}

fn report(what: &str, v: &[f64]) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    println!(
        "{what}: min {:.0} / median {:.0} / max {:.0}",
        s.first().copied().unwrap_or(f64::NAN),
        median(v),
        s.last().copied().unwrap_or(f64::NAN)
    );
}

fn report_us(what: &str, v: &[f64]) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    println!(
        "{what}: min {:.2} / median {:.2} / max {:.2}",
        s.first().copied().unwrap_or(f64::NAN),
        median(v),
        s.last().copied().unwrap_or(f64::NAN)
    );
}

fn start_cache(
    world: &World,
    bin: &Path,
    label: &str,
    port: u16,
    upstream: Ipv6Addr,
    upstream_port: u16,
    extra: &str,
) -> Result<Daemon> {
    let sock = world.path(&format!("{label}.sock"));
    let config = world.path(&format!("{label}.toml"));
    std::fs::write(
        &config,
        format!(
            "listen = [\"[::1]:{port}\"]\nupstreams = [\"[{upstream}]:{upstream_port}\"]\n\
             database = \"{}\"\nlookup_socket = \"{}\"\nmetrics = \"off\"\n{extra}\n",
            world.path(&format!("{label}.sqlite3")).display(),
            sock.display()
        ),
    )?;
    let mut cmd = Command::new(bin);
    cmd.arg("--config").arg(&config).env("RUST_LOG", "warn");
    let d = world.host().spawn(&format!("dns-cache {label}"), cmd)?;
    wait_for(&sock)?;
    Ok(d)
}

fn wait_for(p: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !p.exists() {
        if Instant::now() > deadline {
            bail!("{} did not appear", p.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn start_unbound(world: &World) -> Result<Daemon> {
    let conf = world.path("unbound.conf");
    std::fs::write(
        &conf,
        format!(
            "server:\n  interface: ::1@{UNBOUND_PORT}\n  port: {UNBOUND_PORT}\n  do-ip4: no\n\
             \x20 num-threads: 1\n  access-control: ::1/128 allow\n  chroot: \"\"\n  username: \"\"\n\
             \x20 directory: \"{dir}\"\n  pidfile: \"\"\n  use-syslog: no\n  logfile: \"\"\n\
             \x20 module-config: \"iterator\"\n  do-not-query-localhost: no\n  qname-minimisation: no\n\
             \x20 local-zone: \"test.\" nodefault\n  domain-insecure: \"test.\"\n\
             \x20 msg-cache-size: 64m\n  rrset-cache-size: 64m\n\
             forward-zone:\n  name: \".\"\n  forward-addr: {dns}@53\n",
            dir = world.dir().display(),
            dns = addr::DNS
        ),
    )?;
    let mut cmd = world.host().command("unbound");
    cmd.arg("-d")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let d = world.host().spawn("unbound", cmd)?;
    // Ready when it answers.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = world
            .host()
            .command("dig")
            .args([
                "@::1",
                "-p",
                &UNBOUND_PORT.to_string(),
                "+short",
                "+time=1",
                "+tries=1",
                zone::DUAL,
                "A",
            ])
            .output()?;
        if !String::from_utf8_lossy(&out.stdout).trim().is_empty() {
            return Ok(d);
        }
        if Instant::now() > deadline {
            bail!("unbound did not answer");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn start_bulk_dnsmasq(world: &World) -> Result<Daemon> {
    let conf = world.path("bulk-dnsmasq.conf");
    std::fs::write(
        &conf,
        format!(
            "no-resolv\nno-hosts\nno-poll\nbind-interfaces\nlisten-address={dns}\nport={BULK_PORT}\n\
             local=/bulk.test/\nsynth-domain=bulk.test,fd00:66::/96,h-\ncache-size=0\n",
            dns = addr::DNS
        ),
    )?;
    let mut cmd = world.world().command("dnsmasq");
    cmd.arg("--keep-in-foreground")
        .arg(format!("--conf-file={}", conf.display()))
        .arg("--pid-file=")
        .stdout(Stdio::null());
    let d = world.world().spawn("bulk dnsmasq", cmd)?;
    std::thread::sleep(Duration::from_millis(300));
    let out = world
        .host()
        .command("dig")
        .args([
            &format!("@{}", addr::DNS),
            "-p",
            &BULK_PORT.to_string(),
            "+short",
            "AAAA",
            &bulk_name(1),
        ])
        .output()?;
    let got = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if got != "fd00:66::1" {
        bail!("the bulk dnsmasq answered {got:?} for {}", bulk_name(1));
    }
    Ok(d)
}
