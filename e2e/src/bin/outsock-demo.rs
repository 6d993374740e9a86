//! `outsock-demo`: the whole system on this machine, step by step, inside a throwaway IPv6-only
//! test world (nothing leaves the namespaces it creates). Run it through `scripts/demo`, which
//! installs the packages and builds first.

#![forbid(unsafe_code)]

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use testworld::stack::{Stack, GUEST_DNS};
use testworld::{addr, zone};

fn step(n: u32, what: &str) {
    println!("\n\x1b[1m[{n}] {what}\x1b[0m");
}

fn show(cmd: &str, out: &Output) {
    println!("  $ {cmd}");
    for line in String::from_utf8_lossy(&out.stdout).lines().take(20) {
        println!("    {line}");
    }
    for line in String::from_utf8_lossy(&out.stderr).lines().take(10) {
        println!("    (stderr) {line}");
    }
}

fn legacy(s: &Stack, shown: &str, program: &str, args: &[&str], stdin: &[u8]) -> Result<Output> {
    let mut cmd = s.legacy("timeout")?;
    cmd.arg("30").arg(program).args(args);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    child.stdin.take().context("stdin")?.write_all(stdin)?;
    let out = child.wait_with_output()?;
    show(&format!("outsock run -- {shown}"), &out);
    if !out.status.success() {
        bail!("{shown} failed: {}", out.status);
    }
    Ok(out)
}

fn wait_listening(s: &Stack, port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let out = s
            .world
            .host()
            .command("ss")
            .args(["-Hltn", &format!("sport = :{port}")])
            .output()?;
        if String::from_utf8_lossy(&out.stdout).contains(&format!(":{port}")) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listens on port {port}")
}

fn main() -> Result<()> {
    println!("outsock demo: unmodified IPv4-only programs on an IPv6-only network.");
    step(
        1,
        "Build an IPv6-only test world (network namespaces, torn down at the end)",
    );
    println!(
        "  world   : IPv6-only 'internet' with DNS [{}]:53 and IPv6-only HTTP/echo servers",
        addr::DNS
    );
    println!(
        "  host    : IPv6 only ({}), no IPv4 route: dns-cache and host-server run here",
        addr::HOST
    );
    println!("  legacy  : nothing but lo, no route at all: the legacy programs run here");
    let ports = "[listen]\nallowed_ports = [8080]\n";
    let s = Stack::start("demo", ports).context("starting the world and the daemons")?;
    step(
        2,
        "Started outsock-dns-cache and outsock-host-server in 'host'",
    );
    println!(
        "  host.sock = {}\n  dns.sock  = {}\n  database  = {}",
        s.host_sock().display(),
        s.dns_sock().display(),
        s.db().display()
    );

    step(
        3,
        "Without outsock, the legacy namespace cannot reach anything",
    );
    let out = s
        .world
        .legacy()
        .command("curl")
        .args(["-4", "-sS", "-m", "5", &format!("http://{}/", zone::V6ONLY)])
        .output()?;
    show(
        &format!("curl -4 http://{}/   (no outsock)", zone::V6ONLY),
        &out,
    );

    step(4, "Outbound: curl -4 by name to an IPv6-only web server");
    legacy(
        &s,
        &format!("curl -4 -sS http://{}/index.html", zone::V6ONLY),
        "curl",
        &["-4", "-sS", &format!("http://{}/index.html", zone::V6ONLY)],
        b"",
    )?;

    step(
        5,
        "Outbound: netcat-traditional to an IPv6-only echo server",
    );
    legacy(
        &s,
        &format!("nc -q 3 {} 7  <<< 'hello over IPv6'", zone::ECHO),
        "nc",
        &["-q", "3", zone::ECHO, "7"],
        b"hello over IPv6\n",
    )?;

    step(
        6,
        "DNS: the guest DNS address answers A queries with dummy IPv4 addresses",
    );
    legacy(
        &s,
        &format!("kdig @{GUEST_DNS} +short A {}", zone::MULTI),
        "kdig",
        &[&format!("@{GUEST_DNS}"), "+short", "A", zone::MULTI],
        b"",
    )?;

    step(
        7,
        "Inbound: an IPv4-only python http.server in 'legacy', an IPv6 client in 'world'",
    );
    let www = s.world.path("demo-www");
    std::fs::create_dir_all(&www)?;
    std::fs::write(www.join("hello.txt"), "served by an IPv4-only program\n")?;
    let mut server = s.legacy("python3")?;
    server
        .args([
            "-m",
            "http.server",
            "8080",
            "--bind",
            "0.0.0.0",
            "--directory",
        ])
        .arg(&www);
    server.stdout(Stdio::null()).stderr(Stdio::piped());
    let mut server = server.spawn()?;
    wait_listening(&s, 8080)?;
    let out = s
        .world
        .world()
        .command("curl")
        .args([
            "-6",
            "-sS",
            "--interface",
            &addr::CLIENT.to_string(),
            &format!("http://[{}]:8080/hello.txt", addr::HOST),
        ])
        .output()?;
    show(
        &format!(
            "(in world, from {}) curl -6 http://[{}]:8080/hello.txt",
            addr::CLIENT,
            addr::HOST
        ),
        &out,
    );
    server.kill()?;
    let log = String::from_utf8_lossy(&server.wait_with_output()?.stderr).into_owned();
    println!("  the server's own log (it saw an IPv4 peer):");
    for line in log.lines() {
        println!("    {line}");
    }

    step(
        8,
        "The mapping table, from dns-cache (outsock mappings) and from SQLite (sqlite3)",
    );
    println!("  $ outsock mappings");
    for line in s.mappings(&[])?.lines() {
        println!("    {line}");
    }
    let out = Command::new("sqlite3")
        .arg("-header")
        .arg("-column")
        .arg(s.db())
        .arg("select ipv4, ipv6, direction, names, pins from mappings_view")
        .output()?;
    show(
        &format!(
            "sqlite3 {} 'select ipv4, ipv6, direction, names, pins from mappings_view'",
            s.db().display()
        ),
        &out,
    );

    step(9, "Clean up: stop the daemons and delete the namespaces");
    drop(s);
    println!("  done.");
    Ok(())
}
