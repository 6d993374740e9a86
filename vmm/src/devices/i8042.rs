//! The i8042 keyboard controller, reduced to what Linux uses to reboot: `reboot=k` (and the
//! fallback after ACPI reset) polls the status port and writes 0xFE ("pulse reset line") to
//! port 0x64. vm-superio's `I8042Device` decodes that and fires its trigger, which here ends
//! the VM with [`ExitReason::Reboot`]. No keyboard is described in ACPI, so the guest's i8042
//! driver never probes it.

use std::sync::Arc;

use vm_superio::{I8042Device, Trigger};

use super::bus::BusDevice;
use crate::vm_exit::{ExitReason, ExitSignal};

/// Turns the controller's reset request into a reboot report.
#[derive(Debug)]
pub struct ResetTrigger(pub Arc<ExitSignal>);

impl Trigger for ResetTrigger {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.signal(ExitReason::Reboot);
        Ok(())
    }
}

#[derive(Debug)]
pub struct I8042 {
    inner: I8042Device<ResetTrigger>,
}

impl I8042 {
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        Self {
            inner: I8042Device::new(ResetTrigger(exit)),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = u8::try_from(offset)
            .map(|o| self.inner.read(o))
            .unwrap_or(0);
        data.fill(v);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(o), Some(&v)) = (u8::try_from(offset), data.first()) {
            let _ = self.inner.write(o, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_reboots() {
        let exit = Arc::new(ExitSignal::new());
        let mut dev = I8042::new(exit.clone());
        let mut status = [0xffu8];
        dev.read(4, &mut status);
        assert_eq!(status[0] & 0x02, 0, "input buffer empty: kb_wait() returns");
        dev.write(4, &[0xd1]); // some other command
        assert!(!exit.is_signalled());
        dev.write(4, &[0xfe]);
        assert_eq!(exit.wait(), ExitReason::Reboot);
    }
}
