//! The pvpanic register (ACPI `QEMU0001`, Linux `pvpanic-mmio`): reading it returns the events
//! supported (PANICKED), and the guest kernel writes PANICKED from its panic notifier. That
//! lets the VMM tell a kernel panic from a reboot, since `panic=-1` reboots right after.

use std::sync::Arc;

use crate::devices::bus::BusDevice;
use crate::vm_exit::{ExitReason, ExitSignal};

const PVPANIC_PANICKED: u8 = 1 << 0;

#[derive(Debug)]
pub struct PvPanic {
    exit: Arc<ExitSignal>,
}

impl PvPanic {
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        Self { exit }
    }
}

impl BusDevice for PvPanic {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset == 0 {
            if let Some(b) = data.first_mut() {
                *b = PVPANIC_PANICKED;
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 0 && data.first().is_some_and(|v| v & PVPANIC_PANICKED != 0) {
            self.exit.signal(ExitReason::GuestPanic);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertises_and_reports_panic() {
        let exit = Arc::new(ExitSignal::new());
        let mut dev = PvPanic::new(exit.clone());
        let mut cap = [0u8];
        dev.read(0, &mut cap);
        assert_eq!(cap[0], PVPANIC_PANICKED);
        dev.write(0, &[2]); // CRASH_LOADED only
        assert!(!exit.is_signalled());
        dev.write(0, &[1]);
        assert_eq!(exit.wait(), ExitReason::GuestPanic);
    }
}
