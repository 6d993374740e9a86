//! The `outsock-dns-cache` binary: parses the command line, reads the settings and runs the
//! service from the library.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use outsock_dns_cache::config::Settings;
use outsock_dns_cache::daemon;

const DEFAULT_CONFIG: &str = "/etc/outsock/dns-cache.toml";

/// outsock's DNS cache: answers guests' A queries with dummy IPv4 addresses that stand for the
/// names' IPv6 addresses, keeps the mapping in SQLite, and serves look-ups to host-server on
/// dns.sock.
///
/// Every setting can be overridden from the environment as OUTSOCK_DNS_<KEY> (lists
/// comma-separated), e.g. OUTSOCK_DNS_UPSTREAMS='[2001:db8::53]:53'. See
/// deploy/dns-cache.example.toml for every key.
#[derive(Debug, Parser)]
#[command(name = "outsock-dns-cache", version)]
struct Args {
    /// Settings file (TOML). The default path may be absent; a path given here must exist.
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Check the settings and the address pools, print the result and exit.
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: a journal or a log file gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let (path, required) = match &args.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(DEFAULT_CONFIG), false),
    };
    let settings = match Settings::load(Some(&path), required) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("outsock-dns-cache: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check {
        return match daemon::check_pools(&settings) {
            Ok(()) => {
                println!("settings are valid");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!(
                    "outsock-dns-cache: {}",
                    anyhow::Error::from(e)
                        .chain()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(": ")
                );
                ExitCode::from(2)
            }
        };
    }
    // One thread answers DNS, dns.sock and metrics; the database writer has its own. The UDP
    // hot path is a tight loop that never waits on another thread, and a multi-threaded runtime
    // only added wake-ups and cross-thread hand-offs to it (see dns-cache/bench/run.sh).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("outsock-dns-cache: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(daemon::run(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let msg = anyhow::Error::from(e)
                .chain()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(": ");
            eprintln!("outsock-dns-cache: {msg}");
            ExitCode::FAILURE
        }
    }
}
