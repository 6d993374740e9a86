//! Stopping on SIGTERM, SIGINT and SIGHUP (systemd's stop, Ctrl-C with `--no-stdin`, a closed
//! terminal). Every thread blocks these signals except one waiter thread, whose handler only
//! writes an eventfd (async-signal-safe); the waiter then reports [`ExitReason::Stopped`]
//! like any other end of the VM, so the main thread flushes the console and tells systemd
//! `STOPPING=1` before [`die_by`] ends the process by the same signal: the parent (systemd, a
//! shell) sees the stop it asked for, which systemd counts as a clean exit.
//!
//! With a [`GracefulStop`] the first signal asks the guest to shut down instead, and only the
//! stop timeout or a second signal ends the VM here; the guest's own power-off usually comes
//! first and is reported as the same stop.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, OnceLock};

use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{
    block_signal, register_signal_handler, unblock_signal, Error as SignalError,
};

use crate::graceful_stop::GracefulStop;
use crate::seccomp::{Filters, Role};
use crate::stop_signal::STOP_SIGNALS;
use crate::vm_exit::{ExitReason, ExitSignal};

static WAKE: OnceLock<EventFd> = OnceLock::new();
static RECEIVED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_stop_signal(num: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Only async-signal-safe work here: an atomic store and an eventfd write(2).
    RECEIVED.store(num, Ordering::SeqCst);
    if let Some(wake) = WAKE.get() {
        let _ = wake.write(1);
    }
}

fn errno_to_io(e: vmm_sys_util::errno::Error) -> io::Error {
    io::Error::from_raw_os_error(e.errno())
}

/// Blocks the stop signals in the calling thread, so every thread started after this call
/// inherits the mask. Call first thing in `main`. After a restart in place (`exec`) they are
/// blocked already: the mask survives exec, and a stop signal sent meanwhile stays pending.
///
/// # Errors
/// When the signal mask cannot be changed.
pub fn block_in_this_thread() -> io::Result<()> {
    for sig in STOP_SIGNALS {
        match block_signal(sig) {
            Ok(()) | Err(SignalError::SignalAlreadyBlocked(_)) => {}
            Err(e) => return Err(io::Error::other(format!("{e:?}"))),
        }
    }
    Ok(())
}

/// Starts the waiter thread, confined by `filters`' stop-signals list: the first stop signal
/// reports [`ExitReason::Stopped`] to `exit`.
///
/// # Errors
/// When the eventfd, the handlers or the thread cannot be set up.
pub fn stop_on_signals(exit: Arc<ExitSignal>, filters: &Filters) -> io::Result<()> {
    stop_on_signals_gracefully(exit, None, filters)
}

/// Like [`stop_on_signals`], but with `graceful` the first stop signal asks the guest to shut
/// down; the stop timeout or a second signal reports [`ExitReason::Stopped`].
///
/// # Errors
/// When the eventfd, the handlers or the thread cannot be set up.
pub fn stop_on_signals_gracefully(
    exit: Arc<ExitSignal>,
    graceful: Option<GracefulStop>,
    filters: &Filters,
) -> io::Result<()> {
    let wake = EventFd::new(0)?;
    let waiter_end = wake.try_clone()?;
    WAKE.set(wake)
        .map_err(|_| io::Error::other("stop signals are already handled"))?;
    for sig in STOP_SIGNALS {
        register_signal_handler(sig, on_stop_signal).map_err(errno_to_io)?;
    }
    filters.spawn(Role::StopSignals, "stop-signals".into(), move || {
        // The only thread that takes these signals.
        for sig in STOP_SIGNALS {
            let _ = unblock_signal(sig);
        }
        if wait_for_wake(&waiter_end, None) != Some(true) {
            return;
        }
        let signal = RECEIVED.load(Ordering::SeqCst);
        if let Some(stop) = graceful {
            if stop.begin(signal) {
                match wait_for_wake(&waiter_end, Some(stop.timeout())) {
                    Some(true) => stop.interrupted(RECEIVED.load(Ordering::SeqCst)),
                    Some(false) => stop.timed_out(),
                    None => return,
                }
            }
        }
        exit.signal(ExitReason::Stopped { signal });
    })?;
    Ok(())
}

/// Waits until the handler writes `wake` (then consumes it: `Some(true)`) or `timeout` passes
/// (`Some(false)`); `None` when the eventfd is broken.
fn wait_for_wake(wake: &EventFd, timeout: Option<std::time::Duration>) -> Option<bool> {
    let deadline = timeout.map(|t| std::time::Instant::now() + t);
    loop {
        let ms = match deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    return Some(false);
                }
                i32::try_from(left.as_millis().max(1)).unwrap_or(i32::MAX)
            }
        };
        let mut pfd = libc::pollfd {
            fd: wake.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll(2) on one valid pollfd that lives across the call.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return None;
        }
        if n > 0 {
            return match wake.read() {
                Ok(_) => Some(true),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => None,
            };
        }
    }
}

/// Ends the process by `signal` with its default action (termination). Call from a thread
/// that blocks it (`main`): the signal waits pending until this thread unblocks it.
pub fn die_by(signal: libc::c_int) -> ! {
    // SAFETY: setting a signal's disposition to SIG_DFL and sending it to this process are
    // plain syscalls with valid arguments; nothing is left half-done (the caller flushed).
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
        libc::kill(libc::getpid(), signal);
    }
    let _ = unblock_signal(signal);
    // Not reached unless the signal could not be delivered: end the shell's way.
    std::process::exit(128 + signal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_waiter_wakes_on_a_write_or_at_its_timeout() {
        let wake = EventFd::new(0).expect("eventfd");
        let started = std::time::Instant::now();
        assert_eq!(
            wait_for_wake(&wake, Some(Duration::from_millis(50))),
            Some(false)
        );
        assert!(started.elapsed() >= Duration::from_millis(50));
        wake.write(1).expect("write");
        assert_eq!(
            wait_for_wake(&wake, Some(Duration::from_secs(5))),
            Some(true)
        );
        wake.write(1).expect("write");
        assert_eq!(wait_for_wake(&wake, None), Some(true), "consumed each time");
        assert_eq!(
            wait_for_wake(&wake, Some(Duration::from_millis(1))),
            Some(false)
        );
    }

    #[test]
    fn a_stop_signal_ends_the_vm() {
        let exit = Arc::new(ExitSignal::new());
        stop_on_signals(Arc::clone(&exit), &Filters::disabled()).expect("handlers");
        // The handler is process-wide now, so the signal cannot kill the test process; the
        // waiter thread turns it into an exit reason.
        // SAFETY: kill(2) to this process with a signal that now has our handler.
        unsafe { libc::kill(libc::getpid(), libc::SIGHUP) };
        assert_eq!(
            exit.wait_timeout(Duration::from_secs(5)),
            Some(ExitReason::Stopped {
                signal: libc::SIGHUP
            })
        );
        assert!(
            stop_on_signals(exit, &Filters::disabled()).is_err(),
            "one waiter per process"
        );
    }
}
