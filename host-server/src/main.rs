//! The `outsock-host-server` binary: parse the command line, load settings, run the server.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// outsock's host server module: executes outsourced sockets over IPv6.
///
/// Accepts one Unix stream per outsourced socket on host.sock (from outsock-vmm, or from
/// liboutsock in process mode), maps dummy IPv4 addresses to IPv6 through outsock-dns-cache
/// (dns.sock, with the SQLite database as a read-only fallback), and connects, listens and
/// relays on the guest's behalf. Settings come from the TOML file and from OUTSOCK_HOST_...
/// environment variables (nested keys joined with "__", e.g. OUTSOCK_HOST_LIMITS__MAX_SOCKETS);
/// see deploy/host-server.example.toml. SIGTERM drains and exits; under systemd
/// (Type=notify) readiness is reported through NOTIFY_SOCKET.
#[derive(Debug, Parser)]
#[command(name = "outsock-host-server", version)]
struct Cli {
    /// Settings file (TOML). Without it, built-in defaults and the environment apply.
    #[arg(short, long, value_name = "FILE", env = "OUTSOCK_HOST_CONFIG")]
    config: Option<PathBuf>,

    /// Check the settings, print them, and exit.
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: a journal or a log file gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let settings = match outsock_host_server::Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("outsock-host-server: {}", chain(&e.into()));
            return ExitCode::from(2);
        }
    };
    raise_fd_limit();
    if cli.check {
        println!("{settings:#?}");
        return ExitCode::SUCCESS;
    }
    match outsock_host_server::run(settings) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("outsock-host-server: {}", chain(&e.into()));
            ExitCode::FAILURE
        }
    }
}

/// One line: the error and its causes, without a backtrace (these are operator errors).
fn chain(e: &anyhow::Error) -> String {
    e.chain()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}

/// Every relayed connection holds two descriptors, so the default soft limit (often 1,024) would
/// cap host-server near 500 connections: raise the soft limit to the hard one. systemd's
/// LimitNOFILE= sets the hard limit.
fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let lim = getrlimit(Resource::Nofile);
    // `None` is RLIM_INFINITY, the largest limit of all.
    let soft = lim.current.unwrap_or(u64::MAX);
    let hard = lim.maximum.unwrap_or(u64::MAX);
    if soft < hard {
        let raised = Rlimit {
            current: lim.maximum,
            maximum: lim.maximum,
        };
        // Raising the soft limit up to the hard limit needs no privilege.
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::warn!(error = %std::io::Error::from(e), "cannot raise the descriptor limit");
        }
    }
}
