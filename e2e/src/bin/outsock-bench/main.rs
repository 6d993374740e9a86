//! `outsock-bench`: process mode against native IPv6, in one run, inside a throwaway test world
//! (DESIGN.md §10). Not a test: it prints figures.
//!
//! - throughput: `iperf3 -4` through outsock (from `legacy`) vs `iperf3 -6` natively (from
//!   `host`), to the same iperf3 server in `world`, rounds alternating; outsock both as
//!   `outsock run` runs it by default (liboutsock under the supervisor), `--shim-only` and
//!   `--supervisor-only` (the supervisor translating the dynamic program, no preload);
//! - latency: connect + first byte of an echo, p50/p99, through outsock (the same three ways)
//!   vs native, alternating batches; the client is this same binary
//!   (`outsock-bench probe …`, dynamic: liboutsock's in-process path does the work);
//! - static: a Go client built here with CGO_ENABLED=0 (static, raw system calls, so only the
//!   supervisor can translate it; skipped, saying why, without `go`): connect + first byte
//!   p50/p99 to the echo server by name (resolved once, through the supervisor's DNS) and a
//!   bulk transfer of [`BULK_BYTES`] over one TCP connection to a sink in `world` that reads
//!   everything and answers once, under `outsock run` vs the same program natively over IPv6
//!   from `host`, alternating;
//!
//! - notify: what one notified call that only continues costs — the supervisor's fast path, which
//!   a dynamic program pays once per connect (liboutsock's connect to host.sock): p50 of a
//!   connect of an AF_UNIX socket to a path that does not exist, under `outsock run
//!   --supervisor-only` vs `--shim-only` (no filter), in `legacy`;
//!
//! - connrate: one connection per request at 1, 8 and 32 concurrent clients, outbound and
//!   inbound, native vs outsock (see `connrate`);
//!
//! - memory: host-server's resident memory per idle relayed TCP connection, with
//!   [`IDLE_CONNECTIONS`] open at once (goal ≤ 16 KiB each).
//!
//! - vm: the VM data path without KVM — the real vsock device and the VMM's event loop in this
//!   process, driven by a simulated guest, through host-server to IPv6 servers in `world` — vs
//!   native IPv6, both directions, connect + first byte, and CPU per GB (see `vm`; its own test
//!   world, since host-server must take this process for a VMM there).
//!
//! Run it on a quiet machine, and never beside a process that keeps descriptors in flight on
//! Unix sockets (sent with SCM_RIGHTS, not yet received), such as the `host_session` fuzz
//! target: while any are in flight, every close of a Unix socket queues the kernel's Unix
//! garbage collector's work. Measured in stop 28 (`vm` part, 1 client): 19 % of the VMM event
//! thread's time in `queue_work_on`, VMM CPU per connection 218 → 160 µs and the VM's connect +
//! first byte p50 +425 → +303 µs once that fuzzer had exited.
//!
//! Usage: `outsock-bench [ROUNDS] [SECONDS] [PARTS]` (defaults 5, 5 and
//! `throughput,latency,static,notify,connrate,memory,vm`), as root; PARTS picks which measurements run (also
//! `latency-blocking`: the same probe with a blocking connect).

#![forbid(unsafe_code)]

mod connrate;
mod vm;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use outsock_e2e::quantile;
use testworld::stack::Stack;
use testworld::{addr, record, zone};

const PROBES_PER_BATCH: usize = 500;
/// Idle relayed connections wanted for the memory measurement (DESIGN.md §10), fewer when the
/// descriptor limit cannot hold them (host-server needs two per connection).
const IDLE_CONNECTIONS: usize = 10_000;
/// The port of the sink in `world` that accepts and holds those connections.
const SINK_PORT: u16 = 9000;
/// The port of the drain in `world` that the static bulk transfer writes to.
const DRAIN_PORT: u16 = 9001;
/// Bytes per static bulk transfer (one TCP connection).
const BULK_BYTES: u64 = 1 << 30;
/// What the dynamic client runs under, besides native: `outsock run`'s flags.
const OUTSOCK_MODES: [(&str, &[&str]); 3] = [
    ("outsock (supervisor + shim, the default)", &[]),
    ("outsock (--shim-only)", &["--shim-only"]),
    ("outsock (--supervisor-only)", &["--supervisor-only"]),
];

/// The static client (`go build` with CGO_ENABLED=0): `probe NETWORK HOST:PORT N` prints N
/// connect + first byte times in µs; `bulk NETWORK HOST:PORT BYTES` writes BYTES, half-closes,
/// waits for the sink's 8-byte answer and prints Gbit/s. The address is resolved once.
const GO_CLIENT: &str = r#"package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"time"
)

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func main() {
	mode, network, target := os.Args[1], os.Args[2], os.Args[3]
	n, err := strconv.ParseInt(os.Args[4], 10, 64)
	check(err)
	addr, err := net.ResolveTCPAddr(network, target)
	check(err)
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	switch mode {
	case "probe":
		b := []byte{'x'}
		for i := int64(0); i < n; i++ {
			t := time.Now()
			c, err := net.DialTCP(network, nil, addr)
			check(err)
			_, err = c.Write(b)
			check(err)
			_, err = io.ReadFull(c, b)
			check(err)
			fmt.Fprintf(out, "%.1f\n", float64(time.Since(t).Nanoseconds())/1e3)
			c.Close()
		}
	case "bulk":
		c, err := net.DialTCP(network, nil, addr)
		check(err)
		buf := make([]byte, 256*1024)
		t := time.Now()
		var sent int64
		for sent < n {
			w, err := c.Write(buf)
			check(err)
			sent += int64(w)
		}
		check(c.CloseWrite())
		ack := make([]byte, 8)
		_, err = io.ReadFull(c, ack)
		check(err)
		fmt.Fprintf(out, "%.3f\n", float64(sent)*8/time.Since(t).Seconds()/1e9)
	}
}
"#;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("sink") {
        return sink(args.get(2).context("sink needs ADDR")?);
    }
    if args.get(1).map(String::as_str) == Some("unix-connect") {
        return unix_connect(PROBES_PER_BATCH * 10);
    }
    if args.get(1).map(String::as_str) == Some("rr-server") {
        return connrate::rr_server(args.get(2).context("rr-server needs ADDR")?);
    }
    if args.get(1).map(String::as_str) == Some("rr-client") {
        let arg = |i: usize| {
            args.get(i)
                .context("rr-client needs HOST:PORT CONCURRENCY MILLIS")
        };
        return connrate::rr_client(arg(2)?, arg(3)?.parse()?, arg(4)?.parse()?);
    }
    if args.get(1).map(String::as_str) == Some("source") {
        return vm::source(args.get(2).context("source needs ADDR")?);
    }
    if args.get(1).map(String::as_str) == Some("vm-native") {
        let arg = |i: usize| args.get(i).context("vm-native needs up|down ADDR SECONDS");
        return vm::native(arg(2)?, arg(3)?, arg(4)?.parse()?);
    }
    if args.get(1).map(String::as_str) == Some("drain") {
        return drain(args.get(2).context("drain needs ADDR")?);
    }
    if let Some(mode @ ("probe" | "probe-blocking")) = args.get(1).map(String::as_str) {
        return probe(
            args.get(2).context("probe needs HOST:PORT")?,
            PROBES_PER_BATCH,
            mode == "probe-blocking",
        );
    }
    let idle = raise_nofile()?;
    let rounds: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(5);
    let secs: u32 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(5);
    let parts = args.get(3).map_or(
        "throughput,latency,static,notify,connrate,memory,vm",
        String::as_str,
    );
    let wanted = |part: &str| parts.split(',').any(|p| p == part);
    for p in parts.split(',') {
        if ![
            "throughput",
            "latency",
            "latency-blocking",
            "static",
            "notify",
            "connrate",
            "memory",
            "vm",
        ]
        .contains(&p)
        {
            bail!("unknown part {p:?}: PARTS is a comma-separated list of throughput, latency, latency-blocking, static, notify, connrate, memory, vm");
        }
    }
    if wanted("vm") {
        vm::vm(rounds, secs)?;
    }
    if parts.split(',').all(|p| p == "vm") {
        return Ok(());
    }
    // One identity (this bench, by uid) holds every idle connection: lift its socket limit.
    let mut s = Stack::start(
        "bench",
        &format!(
            "[listen]\nallowed_ports = [{}]\n[limits]\nmax_sockets = 20000\nmax_pending_connects = 20000\n",
            connrate::INBOUND_PORT
        ),
    )
    .context("starting the test world")?;
    let mut server = s.world.world().command("iperf3");
    server
        .args(["-s", "-p", "5201"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let server = s.world.world().spawn("iperf3 -s", server)?;
    s.world.adopt(server);
    std::thread::sleep(Duration::from_millis(500));

    if wanted("throughput") {
        throughput(&s, rounds, secs)?;
    }
    if wanted("latency") {
        latency(&s, rounds, false)?;
    }
    if wanted("latency-blocking") {
        latency(&s, rounds, true)?;
    }
    if wanted("static") {
        static_client(&s, rounds)?;
    }
    if wanted("notify") {
        notify_cost(&s, rounds)?;
    }
    if wanted("connrate") {
        connrate::connrate(&s, rounds, secs)?;
    }
    if wanted("memory") {
        println!("\nmemory: host-server RSS with {idle} idle relayed TCP connections");
        idle_memory(&s, idle)?;
    }
    s.stop_host();
    Ok(())
}

/// iperf3 -4 through outsock (each of [`OUTSOCK_MODES`]) vs iperf3 -6 native, rounds
/// alternating.
fn throughput(s: &Stack, rounds: usize, secs: u32) -> Result<()> {
    println!("throughput: iperf3 -4 through outsock vs iperf3 -6 native, {rounds} rounds of {secs} s, alternating");
    let mut runs: Vec<(&str, Vec<f64>)> = vec![("native", Vec::new())];
    runs.extend(OUTSOCK_MODES.iter().map(|(name, _)| (*name, Vec::new())));
    for _ in 0..rounds {
        let mut n = s.world.host().command("iperf3");
        n.args([
            "-6",
            "-c",
            &addr::ECHO.to_string(),
            "-p",
            "5201",
            "-t",
            &secs.to_string(),
            "-J",
        ]);
        runs[0].1.push(iperf_gbps(&mut n)?);
        for (i, (_, flags)) in OUTSOCK_MODES.iter().enumerate() {
            let mut o = s.legacy_with(flags, "iperf3")?;
            o.args([
                "-4",
                "-c",
                zone::ECHO,
                "-p",
                "5201",
                "-t",
                &secs.to_string(),
                "-J",
            ]);
            runs[i + 1].1.push(iperf_gbps(&mut o)?);
        }
    }
    report("throughput", "Gbit/s", &mut runs, true);
    Ok(())
}

/// Connect + first byte through outsock vs native, batches alternating; the connect is
/// non-blocking with a poll (as `connect_timeout`, curl, python with a timeout do), or with
/// `blocking` a plain blocking connect (netcat, python without a timeout).
fn latency(s: &Stack, rounds: usize, blocking: bool) -> Result<()> {
    let (how, mode) = if blocking {
        ("blocking connect", "probe-blocking")
    } else {
        ("non-blocking connect", "probe")
    };
    println!("\nlatency ({how}): connect + first byte to the echo server, {rounds} batches of {PROBES_PER_BATCH}, alternating");
    let me = std::env::current_exe()?;
    let mut runs: Vec<(&str, Vec<f64>)> = vec![("native", Vec::new())];
    runs.extend(OUTSOCK_MODES.iter().map(|(name, _)| (*name, Vec::new())));
    for _ in 0..rounds {
        let mut n = s.world.host().command(&me);
        n.args([mode, &format!("[{}]:{}", addr::ECHO, addr::ECHO_PORT)]);
        runs[0].1.extend(probe_output(&mut n)?);
        for (i, (_, flags)) in OUTSOCK_MODES.iter().enumerate() {
            let mut o = s.legacy_with(flags, &me.display().to_string())?;
            o.args([mode, &format!("{}:{}", zone::ECHO, addr::ECHO_PORT)]);
            runs[i + 1].1.extend(probe_output(&mut o)?);
        }
    }
    latency_report(
        if blocking {
            "latency-blocking"
        } else {
            "latency"
        },
        &mut runs,
    );
    Ok(())
}

/// p50 and p99 of each run, and each one's difference to the first (native); every sample is
/// recorded (`testworld::record`) as `bench`'s.
fn latency_report(bench: &str, runs: &mut [(&str, Vec<f64>)]) {
    for (name, v) in runs.iter_mut() {
        v.sort_by(f64::total_cmp);
        record::samples(bench, name, "µs", v);
    }
    for (label, q) in [("p50", 0.50), ("p99", 0.99)] {
        let base = quantile(&runs[0].1, q);
        println!("  {label}: {} {base:.1} µs", runs[0].0);
        for (name, v) in &runs[1..] {
            let o = quantile(v, q);
            println!("       {name} {o:.1} µs, difference {:+.1} µs", o - base);
        }
    }
}

/// One notified call that only continues (the supervisor's fast path) vs the same call with no
/// filter, batches alternating.
fn notify_cost(s: &Stack, rounds: usize) -> Result<()> {
    let calls = PROBES_PER_BATCH * 10;
    println!(
        "\nnotify: connect(AF_UNIX) to a missing path, {rounds} batches of {calls}, alternating"
    );
    if !outsock_supervisor::available() {
        println!("  skipped: seccomp user notification is unavailable on this kernel");
        return Ok(());
    }
    let me = std::env::current_exe()?.display().to_string();
    let mut runs: Vec<(&str, Vec<f64>)> = vec![
        ("no filter (--shim-only)", Vec::new()),
        ("notified (--supervisor-only)", Vec::new()),
    ];
    for _ in 0..rounds {
        for (i, flags) in [["--shim-only"], ["--supervisor-only"]].iter().enumerate() {
            let mut c = s.legacy_with(flags, &me)?;
            c.arg("unix-connect");
            runs[i].1.extend(probe_output(&mut c)?);
        }
    }
    latency_report("notify", &mut runs);
    Ok(())
}

/// Connects an AF_UNIX socket to a path that does not exist `n` times; prints each call's µs.
fn unix_connect(n: usize) -> Result<()> {
    let path = std::path::Path::new("/nonexistent/outsock-bench.sock");
    let mut out = String::new();
    for _ in 0..n {
        let t = Instant::now();
        let r = std::os::unix::net::UnixStream::connect(path);
        let us = t.elapsed().as_secs_f64() * 1e6;
        if r.is_ok() {
            bail!("{} exists", path.display());
        }
        out.push_str(&format!("{us:.2}\n"));
    }
    print!("{out}");
    Ok(())
}

/// The Go client: connect + first byte and bulk throughput under `outsock run` (the supervisor
/// translates it; liboutsock cannot load into a static binary) vs natively over IPv6.
fn static_client(s: &Stack, rounds: usize) -> Result<()> {
    println!("\nstatic: a CGO_ENABLED=0 Go client under `outsock run` vs the same client native over IPv6");
    if !outsock_supervisor::available() {
        println!("  skipped: seccomp user notification is unavailable on this kernel");
        return Ok(());
    }
    let dir = std::env::temp_dir().join(format!("outsock-bench-go-{}", std::process::id()));
    let built = testworld::programs::build_go(&dir, "client", GO_CLIENT);
    let bin = match built {
        Ok(Some(bin)) => bin,
        Ok(None) => {
            println!("  skipped: go is not installed (golang-go, scripts/install-deps)");
            let _ = std::fs::remove_dir_all(&dir);
            return Ok(());
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
    };
    let result = static_runs(s, rounds, &bin);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn static_runs(s: &Stack, rounds: usize, bin: &std::path::Path) -> Result<()> {
    let prog = bin.display().to_string();
    let count = PROBES_PER_BATCH.to_string();
    println!("  latency: connect + first byte to the echo server, {rounds} batches of {PROBES_PER_BATCH}, alternating");
    let mut runs: Vec<(&str, Vec<f64>)> = vec![
        ("native (tcp6)", Vec::new()),
        ("outsock (tcp4 by name)", Vec::new()),
    ];
    let native_echo = format!("[{}]:{}", addr::ECHO, addr::ECHO_PORT);
    let by_name_echo = format!("{}:{}", zone::ECHO, addr::ECHO_PORT);
    for _ in 0..rounds {
        let mut n = s.world.host().command(bin);
        n.args(["probe", "tcp6", &native_echo, &count]);
        runs[0].1.extend(probe_output(&mut n)?);
        let mut o = s.legacy(&prog)?;
        o.args(["probe", "tcp4", &by_name_echo, &count]);
        runs[1].1.extend(probe_output(&mut o)?);
    }
    latency_report("static-latency", &mut runs);

    let mut drain = s.world.world().command(std::env::current_exe()?);
    drain
        .arg("drain")
        .arg(SocketAddr::new(addr::ECHO.into(), DRAIN_PORT).to_string());
    drain.stdout(Stdio::piped());
    let mut drain = s.world.world().spawn("drain", drain)?;
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(drain.take_stdout().context("drain stdout")?),
        &mut line,
    )?;
    if line.trim() != "ready" {
        bail!("the drain did not start");
    }
    let mib = BULK_BYTES >> 20;
    println!("  throughput: {mib} MiB over one TCP connection to a drain in world, {rounds} rounds, alternating");
    let bytes = BULK_BYTES.to_string();
    let mut runs: Vec<(&str, Vec<f64>)> = vec![("native", Vec::new()), ("outsock", Vec::new())];
    let native_drain = format!("[{}]:{DRAIN_PORT}", addr::ECHO);
    let by_name_drain = format!("{}:{DRAIN_PORT}", zone::ECHO);
    for _ in 0..rounds {
        let mut n = s.world.host().command(bin);
        n.args(["bulk", "tcp6", &native_drain, &bytes]);
        runs[0].1.extend(probe_output(&mut n)?);
        let mut o = s.legacy(&prog)?;
        o.args(["bulk", "tcp4", &by_name_drain, &bytes]);
        runs[1].1.extend(probe_output(&mut o)?);
    }
    report("static-throughput", "Gbit/s", &mut runs, true);
    drop(drain);
    Ok(())
}

/// The drain (run inside `world`): reads each connection to its end, then answers with the
/// byte count (8 bytes, big endian); prints "ready".
fn drain(at: &str) -> Result<()> {
    let l = std::net::TcpListener::bind(at)?;
    println!("ready");
    std::io::stdout().flush()?;
    for c in l.incoming().flatten() {
        std::thread::spawn(move || {
            let mut c = c;
            let mut buf = vec![0u8; 256 * 1024];
            let mut total: u64 = 0;
            loop {
                match c.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => total += n as u64,
                }
            }
            let _ = c.write_all(&total.to_be_bytes());
        });
    }
    Ok(())
}

/// Raises the soft descriptor limit to the hard one (children inherit it) and says how many
/// idle connections fit: host-server holds two descriptors per relayed connection.
fn raise_nofile() -> Result<usize> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let lim = getrlimit(Resource::Nofile);
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: lim.maximum,
            maximum: lim.maximum,
        },
    )
    .map_err(|e| anyhow::anyhow!("setrlimit: {}", std::io::Error::from(e)))?;
    // `None` is RLIM_INFINITY.
    let max = lim.maximum.unwrap_or(u64::MAX);
    let fit = usize::try_from(max)
        .unwrap_or(usize::MAX)
        .saturating_sub(1024)
        / 2;
    Ok(IDLE_CONNECTIONS.min(fit))
}

/// The sink (run inside `world`): accepts and holds every connection; prints "ready".
fn sink(at: &str) -> Result<()> {
    let l = std::net::TcpListener::bind(at)?;
    println!("ready");
    std::io::stdout().flush()?;
    let mut held = Vec::new();
    for c in l.incoming().flatten() {
        held.push(c);
    }
    Ok(())
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("VmRSS value")?
        .parse()?)
}

/// Opens `count` relayed connections (no fd passing, so host-server holds both ends) to a sink
/// in `world` that accepts and keeps them, then reads host-server's RSS.
fn idle_memory(s: &Stack, count: usize) -> Result<()> {
    use shared_proto::outsource::ConnectRequest;
    use shared_proto::{decode, to_vec, ToGuest, ToHost};
    use std::io::BufRead;
    use std::os::unix::net::UnixStream;

    let mut sink = s.world.world().command(std::env::current_exe()?);
    sink.arg("sink")
        .arg(SocketAddr::new(addr::ECHO.into(), SINK_PORT).to_string());
    sink.stdout(Stdio::piped());
    let mut sink = s.world.world().spawn("sink", sink)?;
    let mut line = String::new();
    std::io::BufReader::new(sink.take_stdout().context("sink stdout")?).read_line(&mut line)?;
    if line.trim() != "ready" {
        bail!("the sink did not start");
    }

    let dummy = vm::peer_dummy(s, addr::ECHO)?;

    let pid = s.host_pid();
    std::thread::sleep(Duration::from_millis(300));
    let before = rss_kib(pid)?;
    let req = to_vec(&ToHost::Connect(ConnectRequest {
        dest: std::net::SocketAddrV4::new(dummy, SINK_PORT),
        pass_fd: false,
        nonblocking: false,
    }))?;
    let mut streams = Vec::with_capacity(count);
    for i in 0..count {
        let mut st = UnixStream::connect(s.host_sock())?;
        st.write_all(&req)?;
        let mut ans = vec![0u8; 64];
        let n = st.read(&mut ans)?;
        match decode::<ToGuest>(&ans[..n])? {
            Some((ToGuest::Connected { .. }, _)) => streams.push(st),
            other => bail!("connection {i}: {other:?}"),
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    let after = rss_kib(pid)?;
    #[allow(clippy::cast_precision_loss)]
    let per = (after.saturating_sub(before)) as f64 / count as f64;
    println!(
        "  host-server RSS: {before} KiB before, {after} KiB with {} open",
        streams.len()
    );
    println!("  per idle relayed connection: {per:.2} KiB  (goal ≤ 16 KiB; 10,000 open ≤ 160 MiB)");
    record::figure("memory", "per idle relayed connection", "KiB", per);
    drop(streams);
    drop(sink);
    Ok(())
}

/// Connects `n` times to `target`, each time writing one byte and waiting for its echo; prints
/// the microseconds from connect() to the first byte back, one per line.
fn probe(target: &str, n: usize, blocking: bool) -> Result<()> {
    let addr: SocketAddr = target.to_socket_addrs()?.next().context("no address")?;
    let mut out = String::new();
    for _ in 0..n {
        let t = Instant::now();
        let mut c = if blocking {
            TcpStream::connect(addr)?
        } else {
            TcpStream::connect_timeout(&addr, Duration::from_secs(5))?
        };
        c.set_nodelay(true)?;
        c.write_all(b"x")?;
        let mut b = [0u8; 1];
        c.read_exact(&mut b)?;
        out.push_str(&format!("{:.1}\n", t.elapsed().as_secs_f64() * 1e6));
    }
    print!("{out}");
    Ok(())
}

fn probe_output(cmd: &mut Command) -> Result<Vec<f64>> {
    let out = cmd.output()?;
    if !out.status.success() {
        bail!("probe failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect())
}

fn iperf_gbps(cmd: &mut Command) -> Result<f64> {
    let out = cmd.output()?;
    let json = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "iperf3 failed: {json} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // end.sum_received.bits_per_second: what the server actually got.
    let at = json.find("\"sum_received\"").context("no sum_received")?;
    let rest = &json[at..];
    let k = rest
        .find("\"bits_per_second\"")
        .context("no bits_per_second")?;
    let num: String = rest[k + 17..]
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == 'e' || *c == '+')
        .collect();
    Ok(num.parse::<f64>()? / 1e9)
}

/// min/median/max of each run, and each one's ratio of medians to the first (native); the
/// medians and ratios are recorded (`testworld::record`) as `bench`'s.
fn report(bench: &str, unit: &str, runs: &mut [(&str, Vec<f64>)], higher_is_better: bool) {
    for (name, v) in runs.iter_mut() {
        v.sort_by(f64::total_cmp);
        record::figure(bench, &format!("median: {name}"), unit, quantile(v, 0.5));
    }
    for (name, v) in runs.iter() {
        println!(
            "  {name:42} min {:.2}  median {:.2}  max {:.2} {unit}",
            v[0],
            quantile(v, 0.5),
            v[v.len() - 1]
        );
    }
    let base = quantile(&runs[0].1, 0.5);
    for (name, v) in &runs[1..] {
        let ratio = quantile(v, 0.5) / base;
        record::figure(bench, &format!("ratio: {name}"), "×", ratio);
        println!(
            "  ratio of medians ({name} / {}): {ratio:.3}{}",
            runs[0].0,
            if higher_is_better {
                "  (goal ≥ 0.95)"
            } else {
                ""
            }
        );
    }
}
