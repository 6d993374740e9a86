//! A graceful stop: on the first stop signal (systemd's `systemctl stop`) the VMM presses
//! Ctrl+Alt+Del on the guest's keyboard ([`crate::devices::legacy::i8042`]), as Firecracker's
//! `SendCtrlAltDel` does. Linux turns that into SIGINT for PID 1 when PID 1 disabled the
//! kernel's own Ctrl-Alt-Del reboot (`/proc/sys/kernel/ctrl-alt-del` = 0; the guest image's
//! /init does, then sends SIGTERM to its programs and powers off), and into an immediate
//! reboot otherwise. Either end of the VM counts as the stop that was asked for
//! ([`ExitSignal::stop_requested`]), so the VMM still ends by the signal. If the guest has
//! not powered off within the stop timeout, or a second stop signal comes, `crate::signals`
//! stops the VM hard, as without a graceful stop.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::devices::legacy::i8042::I8042;
use crate::stop_signal;
use crate::vm_exit::ExitSignal;

/// What the stop-signal thread needs to ask the guest to shut down.
#[derive(Debug)]
pub struct GracefulStop {
    name: String,
    keyboard: Arc<Mutex<I8042>>,
    exit: Arc<ExitSignal>,
    timeout: Duration,
}

impl GracefulStop {
    /// `name` is the VM's, for messages; `timeout` how long the guest gets to power off.
    pub fn new(
        name: String,
        keyboard: Arc<Mutex<I8042>>,
        exit: Arc<ExitSignal>,
        timeout: Duration,
    ) -> Self {
        Self {
            name,
            keyboard,
            exit,
            timeout,
        }
    }

    /// How long the guest gets to power off.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Asks the guest to shut down because of `signal`. Returns false when it cannot be asked
    /// (its keyboard driver has not enabled the keyboard yet: early boot): stop hard now.
    pub fn begin(&self, signal: i32) -> bool {
        self.exit.stop_requested(signal);
        let pressed = self
            .keyboard
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .ctrl_alt_del();
        let sig = stop_signal::name(signal);
        if pressed {
            eprintln!(
                "outsock-vmm[{}]: {sig}: pressed Ctrl+Alt+Del for the guest to shut down; \
                 stopping it in {} s otherwise (or at a second stop signal)",
                self.name,
                self.timeout.as_secs()
            );
        } else {
            eprintln!(
                "outsock-vmm[{}]: {sig}: the guest's keyboard is not enabled yet, so it cannot \
                 be asked to shut down; stopping it now",
                self.name
            );
        }
        pressed
    }

    /// The guest did not power off in time.
    pub fn timed_out(&self) {
        eprintln!(
            "outsock-vmm[{}]: the guest did not power off within {} s; stopping it",
            self.name,
            self.timeout.as_secs()
        );
    }

    /// A second stop signal came before the guest powered off.
    pub fn interrupted(&self, signal: i32) {
        eprintln!(
            "outsock-vmm[{}]: {} again: stopping the guest now",
            self.name,
            stop_signal::name(signal)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::BusDevice;
    use crate::vm_exit::ExitReason;
    use vmm_sys_util::eventfd::EventFd;

    #[test]
    fn begin_presses_the_keys_and_turns_poweroff_into_the_stop() {
        let exit = Arc::new(ExitSignal::new());
        let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let keyboard = Arc::new(Mutex::new(I8042::new(
            irq.try_clone().expect("clone"),
            exit.clone(),
        )));
        let stop = GracefulStop::new(
            "t".into(),
            keyboard.clone(),
            exit.clone(),
            Duration::from_secs(10),
        );
        assert!(stop.begin(libc::SIGTERM));
        assert_eq!(irq.read().expect("an interrupt"), 1);
        let mut b = [0u8];
        keyboard.lock().expect("lock").read(0, &mut b);
        assert_eq!(b[0], 0x14, "left Ctrl, scan code set 2");
        exit.signal(ExitReason::PowerOff);
        assert_eq!(
            exit.wait(),
            ExitReason::Stopped {
                signal: libc::SIGTERM
            }
        );
    }
}
