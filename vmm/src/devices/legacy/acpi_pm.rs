//! The hardware-reduced ACPI sleep control/status and reset register (one I/O port, declared
//! in the FADT). The guest's ACPI code writes `SLP_TYP(5) | SLP_EN` here to power off and the
//! FADT's reset value to reboot; everything else (e.g. clearing WAK_STS) is ignored.

use std::sync::Arc;

use crate::arch::x86_64::acpi::{RESET_VALUE, SLEEP_CONTROL_S5};
use crate::devices::bus::BusDevice;
use crate::vm_exit::{ExitReason, ExitSignal};

#[derive(Debug)]
pub struct AcpiPmDevice {
    exit: Arc<ExitSignal>,
}

impl AcpiPmDevice {
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        Self { exit }
    }
}

impl BusDevice for AcpiPmDevice {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data.first()) {
            (0, Some(&SLEEP_CONTROL_S5)) => self.exit.signal(ExitReason::PowerOff),
            (0, Some(&RESET_VALUE)) => self.exit.signal(ExitReason::Reboot),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s5_powers_off_reset_reboots_rest_ignored() {
        let exit = Arc::new(ExitSignal::new());
        let mut dev = AcpiPmDevice::new(exit.clone());
        dev.write(0, &[0x80]); // WAK_STS clear
        assert!(!exit.is_signalled());
        dev.write(0, &[0x34]);
        assert_eq!(exit.wait(), ExitReason::PowerOff);

        let exit = Arc::new(ExitSignal::new());
        let mut dev = AcpiPmDevice::new(exit.clone());
        dev.write(0, &[1]);
        assert_eq!(exit.wait(), ExitReason::Reboot);
    }
}
