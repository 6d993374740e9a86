//! connrate: one connection per request — connect, one byte each way, close — at 1, 8 and 32
//! concurrent clients, native IPv6 vs through outsock (`outsock run`, the default), rounds
//! alternating; outbound (the legacy program is the client, a request/response server in
//! `world`) and inbound (the legacy program is the server, behind host-server's listener;
//! the client in `world`). Reported per concurrency: connections per second (median of the
//! rounds) and their ratio, connect + first byte p50/p99, and CPU per connection from /proc —
//! host-server's (utime + stime over the outsock runs) and the program's: outbound the
//! client's whole process tree (with `outsock run`: the supervisor and the program, where
//! liboutsock's share is spent; the bench's `cutime + cstime` over the run), inbound the
//! server's tree (read live), outsock vs native.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use testworld::stack::Stack;
use testworld::{addr, record, zone};

/// The request/response server in `world` (outbound).
const RR_PORT: u16 = 9002;
/// The legacy server's port behind host-server (inbound; in the bench's `allowed_ports`).
pub const INBOUND_PORT: u16 = 8090;
/// The native server's port in `host` (inbound baseline).
const NATIVE_INBOUND_PORT: u16 = 8091;
/// Concurrent clients.
const CONCURRENCY: [usize; 3] = [1, 8, 32];
/// Accepting threads of the request/response server.
const SERVER_THREADS: usize = 4;

/// `rr-server ADDR`: accepts on ADDR with [`SERVER_THREADS`] threads; per connection reads one
/// byte, writes it back and closes. Prints "ready" once listening; runs until killed.
pub fn rr_server(at: &str) -> Result<()> {
    let l = Arc::new(TcpListener::bind(at).with_context(|| format!("bind {at}"))?);
    println!("ready");
    std::io::stdout().flush()?;
    let threads: Vec<_> = (0..SERVER_THREADS)
        .map(|_| {
            let l = Arc::clone(&l);
            std::thread::spawn(move || {
                for c in l.incoming() {
                    let Ok(mut c) = c else { continue };
                    let mut b = [0u8; 1];
                    if c.read_exact(&mut b).is_ok() {
                        let _ = c.write_all(&b);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

/// `rr-client HOST:PORT CONCURRENCY MILLIS`: CONCURRENCY threads, each connecting, writing one
/// byte, reading it back, waiting for the server's close and closing, again and again for MILLIS ms. Prints one line:
/// `connections seconds`, then each connection's connect + first byte in µs.
pub fn rr_client(target: &str, conc: usize, millis: u64) -> Result<()> {
    let addr: SocketAddr = target.to_socket_addrs()?.next().context("no address")?;
    let start = Instant::now();
    let until = start + Duration::from_millis(millis);
    let failed = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..conc)
        .map(|_| {
            let failed = Arc::clone(&failed);
            std::thread::spawn(move || -> Result<Vec<f64>> {
                let mut times = Vec::new();
                while Instant::now() < until && !failed.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let one = (|| -> std::io::Result<()> {
                        let mut c = TcpStream::connect(addr)?;
                        c.set_nodelay(true)?;
                        c.write_all(b"x")?;
                        let mut b = [0u8; 1];
                        c.read_exact(&mut b)?;
                        // The server closes first, so TIME_WAIT stays on its side: thousands
                        // of connections a second would otherwise use up the client's
                        // ephemeral ports (and host-server's, which connects for outsock).
                        match c.read(&mut b)? {
                            0 => Ok(()),
                            _ => Err(std::io::Error::other("more than one byte back")),
                        }
                    })();
                    if let Err(e) = one {
                        failed.store(true, Ordering::Relaxed);
                        bail!("connection {}: {e}", times.len());
                    }
                    times.push(t.elapsed().as_secs_f64() * 1e6);
                }
                Ok(times)
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in threads {
        all.extend(
            t.join()
                .map_err(|_| anyhow::anyhow!("a client thread panicked"))??,
        );
    }
    let secs = start.elapsed().as_secs_f64();
    let mut out = format!("{} {secs:.3}\n", all.len());
    for t in &all {
        out.push_str(&format!("{t:.1}\n"));
    }
    print!("{out}");
    Ok(())
}

/// Fields of `/proc/PID/stat` after the command name (which may hold spaces): index 0 is
/// field 3 (state), so utime (14) is 11, stime 12, cutime 13, cstime 14.
fn stat_fields(pid: u32) -> Result<Vec<f64>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(')').context("no ')' in stat")?.1;
    Ok(rest
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0.0))
        .collect())
}

/// Clock ticks (10 ms: over runs of seconds and thousands of connections, fine enough) in µs.
const TICK_US: f64 = 10_000.0;

/// Process `pid`'s CPU time (utime + stime, all its threads), µs.
fn cpu_us(pid: u32) -> Result<f64> {
    let f = stat_fields(pid)?;
    Ok((f[11] + f[12]) * TICK_US)
}

/// The CPU time of this process's children that have been waited for (and of theirs), µs.
fn children_cpu_us() -> Result<f64> {
    let f = stat_fields(std::process::id())?;
    Ok((f[13] + f[14]) * TICK_US)
}

/// The CPU time of `pid` and every live descendant, µs.
fn tree_cpu_us(pid: u32) -> f64 {
    let mut total = cpu_us(pid).unwrap_or(0.0);
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return total;
    };
    for t in tasks.filter_map(Result::ok) {
        let children = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        for c in children.split_whitespace().filter_map(|c| c.parse().ok()) {
            total += tree_cpu_us(c);
        }
    }
    total
}

/// Whose CPU a run counts as the program's.
#[derive(Clone, Copy)]
enum Program {
    /// The client run itself (its whole tree, once waited for).
    Client,
    /// A server's live tree.
    Server(u32),
}

/// One client run's figures.
struct Run {
    rate: f64,
    times: Vec<f64>,
    /// The program's CPU per connection, µs (see [`Program`]).
    own_cpu: f64,
    /// host-server's CPU per connection over the run, µs (outsock runs).
    host_cpu: f64,
}

fn client_run(s: &Stack, mut cmd: Command, host_pid: Option<u32>, program: Program) -> Result<Run> {
    let program_cpu = || match program {
        Program::Client => children_cpu_us(),
        Program::Server(pid) => Ok(tree_cpu_us(pid)),
    };
    let h0 = host_pid.map(cpu_us).transpose()?;
    let p0 = program_cpu()?;
    let out = cmd.output()?;
    let p1 = program_cpu()?;
    let h1 = host_pid.map(cpu_us).transpose()?;
    if !out.status.success() {
        bail!(
            "rr-client failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            s.logs()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let head: Vec<f64> = lines
        .next()
        .context("no summary line")?
        .split(' ')
        .filter_map(|v| v.parse().ok())
        .collect();
    let [n, secs] = head[..] else {
        bail!("bad summary line");
    };
    if n < 1.0 {
        bail!("no connection completed");
    }
    let times = lines.filter_map(|l| l.parse().ok()).collect();
    Ok(Run {
        rate: n / secs,
        times,
        own_cpu: (p1 - p0) / n,
        host_cpu: match (h0, h1) {
            (Some(a), Some(b)) => (b - a) / n,
            _ => 0.0,
        },
    })
}

/// Prints one concurrency's figures: native runs vs outsock runs; records them
/// (`testworld::record`) as `bench`'s.
fn print_figures(bench: &str, conc: usize, native: &[Run], outsock: &[Run]) {
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        outsock_e2e::quantile(v, 0.5)
    };
    let rate = |r: &[Run]| med(&mut r.iter().map(|r| r.rate).collect());
    let times = |r: &[Run]| {
        let mut all: Vec<f64> = r.iter().flat_map(|r| r.times.iter().copied()).collect();
        all.sort_by(f64::total_cmp);
        (
            outsock_e2e::quantile(&all, 0.5),
            outsock_e2e::quantile(&all, 0.99),
        )
    };
    let (nr, or) = (rate(native), rate(outsock));
    let ((n50, n99), (o50, o99)) = (times(native), times(outsock));
    let own = |r: &[Run]| med(&mut r.iter().map(|r| r.own_cpu).collect());
    let host = med(&mut outsock.iter().map(|r| r.host_cpu).collect());
    println!(
        "  {conc:>2} clients: native {nr:>8.0} conn/s, outsock {or:>8.0} conn/s, ratio {:.3} (goal ≥ 0.8 at 32)",
        or / nr
    );
    println!(
        "             connect + first byte p50 {n50:.1} → {o50:.1} µs ({:+.1}), p99 {n99:.1} → {o99:.1} µs ({:+.1})",
        o50 - n50,
        o99 - n99
    );
    // The goal is per connect (outbound); inbound, host-server accepts and passes.
    let goal = if bench == "connrate-outbound" {
        " (goal ≤ 15)"
    } else {
        ""
    };
    println!(
        "             CPU per connection: host-server {host:.1} µs{goal}, program {:.1} → {:.1} µs",
        own(native),
        own(outsock)
    );
    #[allow(clippy::cast_precision_loss)] // A client count.
    let clients = conc as f64;
    for (name, value, unit) in [
        ("ratio", or / nr, "×"),
        ("native conn/s", nr, "conn/s"),
        ("outsock conn/s", or, "conn/s"),
        ("p50 native", n50, "µs"),
        ("p50 outsock", o50, "µs"),
        ("host-server CPU per connection", host, "µs"),
    ] {
        record::figure(bench, &format!("{name} @{clients}"), unit, value);
    }
}

/// Starts `rr-server AT` with `cmd` (this binary, in some namespace) and waits for its "ready".
fn start_server(mut cmd: Command, at: &str) -> Result<std::process::Child> {
    cmd.args(["rr-server", at])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = cmd.spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().context("server stdout")?).read_line(&mut line)?;
    if line.trim() != "ready" {
        let _ = child.kill();
        bail!("rr-server at {at} did not start");
    }
    Ok(child)
}

/// The connrate part: outbound, then inbound.
pub fn connrate(s: &Stack, rounds: usize, secs: u32) -> Result<()> {
    let me = std::env::current_exe()?.display().to_string();
    let millis = (u64::from(secs) * 1000 / 2).max(500).to_string();
    let host_pid = Some(s.host_pid());

    println!("\nconnrate outbound: one connection per request to a server in world, native (host, IPv6) vs outsock (legacy, by name), {rounds} rounds of {millis} ms, alternating");
    let world_at = SocketAddr::new(addr::ECHO.into(), RR_PORT).to_string();
    let mut server = start_server(s.world.world().command(&me), &world_at)?;
    let by_name = format!("{}:{RR_PORT}", zone::ECHO);
    let result = (|| -> Result<()> {
        for conc in CONCURRENCY {
            let (mut native, mut outsock) = (Vec::new(), Vec::new());
            for _ in 0..rounds {
                let mut n = s.world.host().command(&me);
                n.args(["rr-client", &world_at, &conc.to_string(), &millis]);
                native.push(client_run(s, n, None, Program::Client)?);
                let mut o = s.legacy(&me)?;
                o.args(["rr-client", &by_name, &conc.to_string(), &millis]);
                outsock.push(client_run(s, o, host_pid, Program::Client)?);
            }
            print_figures("connrate-outbound", conc, &native, &outsock);
        }
        Ok(())
    })();
    let _ = server.kill();
    let _ = server.wait();
    result?;

    println!("\nconnrate inbound: one connection per request from world to a server, native (in host, IPv6) vs outsock (in legacy, behind host-server's listener), {rounds} rounds of {millis} ms, alternating");
    let native_at = SocketAddr::new(addr::HOST.into(), NATIVE_INBOUND_PORT).to_string();
    let outsock_at = SocketAddr::new(addr::HOST.into(), INBOUND_PORT).to_string();
    let mut native_server = start_server(
        s.world.host().command(&me),
        &format!("[::]:{NATIVE_INBOUND_PORT}"),
    )?;
    let legacy_server = s
        .legacy(&me)
        .and_then(|c| start_server(c, &format!("0.0.0.0:{INBOUND_PORT}")));
    let mut legacy_server = match legacy_server {
        Ok(c) => c,
        Err(e) => {
            let _ = native_server.kill();
            return Err(e);
        }
    };
    // The listener is host-server's once `listen` returned; the server printed "ready" after.
    let result = (|| -> Result<()> {
        for conc in CONCURRENCY {
            let (mut native, mut outsock) = (Vec::new(), Vec::new());
            for _ in 0..rounds {
                let mut n = s.world.world().command(&me);
                n.args(["rr-client", &native_at, &conc.to_string(), &millis]);
                native.push(client_run(s, n, None, Program::Server(native_server.id()))?);
                let mut o = s.world.world().command(&me);
                o.args(["rr-client", &outsock_at, &conc.to_string(), &millis]);
                outsock.push(client_run(
                    s,
                    o,
                    host_pid,
                    Program::Server(legacy_server.id()),
                )?);
            }
            print_figures("connrate-inbound", conc, &native, &outsock);
        }
        Ok(())
    })();
    for c in [&mut native_server, &mut legacy_server] {
        let _ = c.kill();
        let _ = c.wait();
    }
    result
}
