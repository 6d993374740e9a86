//! The `outsock-vmm` binary: parse settings, boot the VM, wait for it to end, and exit with a
//! status that says why (see `outsock_vmm::vm_exit::code`). Under systemd (`Type=notify`) it
//! sends `READY=1` once the guest runs and `STOPPING=1` when it ends; the event loop sends the
//! watchdog keep-alives. Every thread runs under its seccomp filter (`outsock_vmm::seccomp`);
//! this one too once the VM started, unless it must re-execute itself (`on_reboot =
//! "restart"`).

#![deny(unsafe_code)]

use std::io::IsTerminal;
use std::os::unix::process::CommandExt;
use std::process::ExitCode;

use clap::Parser;
use outsock_vmm::config::{self, Cli, OnReboot};
use outsock_vmm::seccomp::{Filters, Role};
use outsock_vmm::vm_exit::{code, ExitReason};
use outsock_vmm::{builder, signals};
use vmm_sys_util::terminal::Terminal;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Before any thread starts, so that all of them inherit the mask (see `signals`).
    if let Err(e) = signals::block_in_this_thread() {
        eprintln!("outsock-vmm: cannot block the stop signals: {e}");
        return ExitCode::from(code::VMM_ERROR as u8);
    }
    let cfg = match config::load(&cli, std::env::vars().collect()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("outsock-vmm: {}", error_chain(&e));
            return ExitCode::from(code::VMM_ERROR as u8);
        }
    };
    let name = cfg.name.clone();

    // A terminal on stdin goes to raw mode so keys reach the guest; restored before exit.
    let raw_tty = cfg.stdin && std::io::stdin().is_terminal();
    if raw_tty {
        let _ = std::io::stdin().lock().set_raw_mode();
    }
    let restore = || {
        if raw_tty {
            let _ = std::io::stdin().lock().set_canon_mode();
        }
    };

    // Compiled (and the SIGSYS handler installed) before any thread starts; each thread
    // installs its own list as it starts.
    let filters = if cfg.seccomp {
        match Filters::new() {
            Ok(f) => f,
            Err(e) => {
                restore();
                eprintln!("outsock-vmm[{name}]: {}", error_chain(&e));
                return ExitCode::from(code::VMM_ERROR as u8);
            }
        }
    } else {
        eprintln!("outsock-vmm[{name}]: seccomp is off: the VMM's threads are not confined");
        Filters::disabled()
    };

    let vm = match builder::build_and_boot(&cfg, &filters) {
        Ok(vm) => vm,
        Err(e) => {
            restore();
            eprintln!("outsock-vmm[{name}]: {}", error_chain(&e));
            sd_notify(&name, "STOPPING=1");
            return ExitCode::from(code::VMM_ERROR as u8);
        }
    };
    // The vCPU threads run and, in VM mode, the VM's vsock socket listens (bound while the
    // device was built): host-server may CONNECT to the guest from now on.
    let graceful = vm.graceful_stop(&name, cfg.stop_timeout());
    if let Err(e) = signals::stop_on_signals_gracefully(vm.exit_signal(), graceful, &filters) {
        eprintln!("outsock-vmm[{name}]: cannot handle stop signals: {e}");
    }
    // This thread last, now that it started every thread. A filter survives execve, so a
    // thread that must re-execute the VMM (restart in place) cannot have one.
    if cfg.on_reboot != OnReboot::Restart {
        if let Err(e) = filters.apply(Role::Main) {
            restore();
            eprintln!("outsock-vmm[{name}]: {}", error_chain(&e));
            sd_notify(&name, "STOPPING=1");
            return ExitCode::from(code::VMM_ERROR as u8);
        }
    }
    sd_notify(&name, "READY=1");
    let (reason, dropped) = vm.wait();
    restore();
    if !(reason == ExitReason::Reboot && cfg.on_reboot == OnReboot::Restart) {
        sd_notify(&name, "STOPPING=1");
    }
    if dropped > 0 {
        eprintln!("outsock-vmm[{name}]: {dropped} console bytes were dropped (stdout too slow)");
    }
    if reason == ExitReason::Reboot && cfg.on_reboot == OnReboot::Restart {
        eprintln!("outsock-vmm[{name}]: the guest rebooted; restarting the VM");
        // A fresh process is the simplest complete reset of guest memory, vCPUs and devices.
        let err = std::process::Command::new("/proc/self/exe")
            .args(std::env::args_os().skip(1))
            .exec();
        eprintln!("outsock-vmm[{name}]: cannot restart: {err}");
        return ExitCode::from(code::VMM_ERROR as u8);
    }
    if let ExitReason::Stopped { signal } = reason {
        eprintln!("outsock-vmm[{name}]: {reason}; ending by the same signal");
        signals::die_by(signal);
    }
    let status = reason.exit_code();
    eprintln!("outsock-vmm[{name}]: {reason}; exit status {status}");
    ExitCode::from(status as u8)
}

/// Tells systemd (`Type=notify`) about a state change; a no-op without `NOTIFY_SOCKET`. A
/// restart in place re-executes this process with the same PID, which then sends `READY=1`
/// again, so it sends no `STOPPING=1`.
fn sd_notify(name: &str, state: &str) {
    if let Err(e) = outsock_notify::notify(state) {
        eprintln!("outsock-vmm[{name}]: cannot notify systemd of {state}: {e}");
    }
}

/// "outer: inner: innermost" for an error and its sources.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        s.push_str(": ");
        s.push_str(&src.to_string());
        cur = src.source();
    }
    s
}
