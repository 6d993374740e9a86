//! Why a VM stopped, and how that reaches the main thread: devices and vCPU threads report an
//! [`ExitReason`] through the shared [`ExitSignal`]; the first report wins and the main thread,
//! waiting on it, turns it into the process exit status.

use std::fmt;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// Process exit statuses of `outsock-vmm`.
pub mod code {
    /// The guest powered off.
    pub const POWEROFF: i32 = 0;
    /// The VMM could not start or run the VM (bad configuration, no usable KVM, I/O error).
    pub const VMM_ERROR: i32 = 1;
    /// Command-line usage error (clap's own status).
    pub const USAGE: i32 = 2;
    /// The guest rebooted and `on_reboot = "exit"`.
    pub const REBOOT: i32 = 3;
    /// The guest crashed the vCPU: triple fault, KVM internal error, failed VM entry.
    pub const GUEST_CRASH: i32 = 4;
    /// The guest kernel panicked (reported through the pvpanic device).
    pub const GUEST_PANIC: i32 = 5;
    /// A VMM thread made a system call its seccomp filter does not allow; the line on stderr
    /// names the call and the thread (`crate::seccomp`). Not an [`super::ExitReason`]: the
    /// SIGSYS handler ends the process at once.
    pub const SECCOMP_VIOLATION: i32 = 6;
}

/// What ended the VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest wrote the ACPI S5 sleep value.
    PowerOff,
    /// The guest wrote the ACPI reset value or pulsed the i8042 reset line.
    Reboot,
    /// The guest's pvpanic driver reported a kernel panic.
    GuestPanic,
    /// `KVM_EXIT_SHUTDOWN`: the vCPU triple-faulted.
    TripleFault { vcpu: u8 },
    /// `KVM_EXIT_INTERNAL_ERROR` with its sub-error.
    InternalError { vcpu: u8, suberror: u32 },
    /// `KVM_EXIT_FAIL_ENTRY` with the hardware reason.
    FailEntry { vcpu: u8, reason: u64 },
    /// A VM exit this VMM does not handle.
    UnexpectedExit { vcpu: u8, what: String },
    /// `KVM_RUN` itself failed.
    VcpuError { vcpu: u8, error: String },
    /// The VMM was asked to stop (SIGTERM, SIGINT, SIGHUP); see `crate::signals`.
    Stopped { signal: i32 },
}

impl ExitReason {
    /// The process exit status for this reason (reboot handled by the caller's policy).
    pub fn exit_code(&self) -> i32 {
        match self {
            ExitReason::PowerOff => code::POWEROFF,
            ExitReason::Reboot => code::REBOOT,
            ExitReason::GuestPanic => code::GUEST_PANIC,
            ExitReason::TripleFault { .. }
            | ExitReason::InternalError { .. }
            | ExitReason::FailEntry { .. }
            | ExitReason::UnexpectedExit { .. } => code::GUEST_CRASH,
            ExitReason::VcpuError { .. } => code::VMM_ERROR,
            // The shell's convention; normally the process ends by the signal itself.
            ExitReason::Stopped { signal } => 128 + signal,
        }
    }

    /// Whether this is an orderly end requested by the guest.
    pub fn is_clean(&self) -> bool {
        matches!(
            self,
            ExitReason::PowerOff | ExitReason::Reboot | ExitReason::Stopped { .. }
        )
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitReason::PowerOff => write!(f, "the guest powered off"),
            ExitReason::Reboot => write!(f, "the guest rebooted"),
            ExitReason::GuestPanic => write!(f, "the guest kernel panicked (pvpanic)"),
            ExitReason::TripleFault { vcpu } => {
                write!(f, "vCPU {vcpu} triple-faulted (KVM_EXIT_SHUTDOWN)")
            }
            ExitReason::InternalError { vcpu, suberror } => {
                write!(f, "vCPU {vcpu}: KVM internal error, suberror {suberror}")
            }
            ExitReason::FailEntry { vcpu, reason } => {
                write!(
                    f,
                    "vCPU {vcpu}: VM entry failed, hardware reason {reason:#x}"
                )
            }
            ExitReason::UnexpectedExit { vcpu, what } => {
                write!(f, "vCPU {vcpu}: unexpected VM exit {what}")
            }
            ExitReason::VcpuError { vcpu, error } => {
                write!(f, "vCPU {vcpu}: KVM_RUN failed: {error}")
            }
            ExitReason::Stopped { signal } => {
                write!(f, "stopped by {}", crate::stop_signal::name(*signal))
            }
        }
    }
}

/// The one-shot, first-report-wins channel from devices and vCPUs to the main thread.
#[derive(Debug, Default)]
pub struct ExitSignal {
    reason: Mutex<Option<ExitReason>>,
    cond: Condvar,
    /// The stop signal the guest was asked to shut down for (0: none); see
    /// [`ExitSignal::stop_requested`].
    stop_signal: AtomicI32,
}

impl ExitSignal {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that the VMM asked the guest to shut down for `signal` (a graceful stop, see
    /// `crate::graceful_stop`): from now on the guest's power-off or reboot is reported as
    /// [`ExitReason::Stopped`] by that signal, the end that was asked for (and a reboot does
    /// not restart the VM). Crashes and panics keep their own reason.
    pub fn stop_requested(&self, signal: i32) {
        self.stop_signal.store(signal, Ordering::SeqCst);
    }

    /// Reports `reason` unless another reason was reported first.
    pub fn signal(&self, reason: ExitReason) {
        let stop = self.stop_signal.load(Ordering::SeqCst);
        let reason = match reason {
            ExitReason::PowerOff | ExitReason::Reboot if stop != 0 => {
                ExitReason::Stopped { signal: stop }
            }
            other => other,
        };
        let mut guard = self
            .reason
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if guard.is_none() {
            *guard = Some(reason);
            self.cond.notify_all();
        }
    }

    /// Whether a reason has been reported (vCPU threads stop running once it is).
    pub fn is_signalled(&self) -> bool {
        self.reason
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some()
    }

    /// Blocks until a reason is reported and returns it.
    pub fn wait(&self) -> ExitReason {
        let mut guard = self
            .reason
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        loop {
            if let Some(r) = guard.as_ref() {
                return r.clone();
            }
            guard = self
                .cond
                .wait(guard)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    /// Like [`ExitSignal::wait`] but gives up after `timeout`.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<ExitReason> {
        let guard = self
            .reason
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (guard, _) = self
            .cond
            .wait_timeout_while(guard, timeout, |r| r.is_none())
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        guard.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn first_reason_wins() {
        let s = Arc::new(ExitSignal::new());
        assert!(!s.is_signalled());
        let s2 = Arc::clone(&s);
        let t = std::thread::spawn(move || s2.signal(ExitReason::PowerOff));
        assert_eq!(s.wait(), ExitReason::PowerOff);
        t.join().expect("thread");
        s.signal(ExitReason::Reboot);
        assert_eq!(
            s.wait_timeout(Duration::from_millis(1)),
            Some(ExitReason::PowerOff)
        );
    }

    #[test]
    fn after_a_stop_request_poweroff_and_reboot_are_the_stop() {
        for end in [ExitReason::PowerOff, ExitReason::Reboot] {
            let s = ExitSignal::new();
            s.stop_requested(libc::SIGTERM);
            s.signal(end);
            assert_eq!(
                s.wait(),
                ExitReason::Stopped {
                    signal: libc::SIGTERM
                }
            );
        }
        let s = ExitSignal::new();
        s.stop_requested(libc::SIGINT);
        s.signal(ExitReason::GuestPanic);
        assert_eq!(s.wait(), ExitReason::GuestPanic, "a panic is not a stop");
    }

    #[test]
    fn exit_codes_are_distinct() {
        assert_eq!(ExitReason::PowerOff.exit_code(), 0);
        assert_eq!(ExitReason::Reboot.exit_code(), 3);
        assert_eq!(ExitReason::GuestPanic.exit_code(), 5);
        assert_eq!(ExitReason::TripleFault { vcpu: 0 }.exit_code(), 4);
        let stopped = ExitReason::Stopped {
            signal: libc::SIGTERM,
        };
        assert_eq!(stopped.exit_code(), 143);
        assert_eq!(stopped.to_string(), "stopped by SIGTERM");
        assert!(ExitReason::TripleFault { vcpu: 1 }
            .to_string()
            .contains("triple"));
        assert_eq!(
            ExitSignal::new().wait_timeout(Duration::from_millis(1)),
            None
        );
    }
}
