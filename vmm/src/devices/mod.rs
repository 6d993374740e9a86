//! Emulated devices and the buses that route port I/O and MMIO exits to them.
//!
//! Devices never call KVM: they see reads and writes at offsets, raise interrupts through
//! `EventFd`s that `vstate` registered as irqfds, and report the end of the VM through
//! [`crate::vm_exit::ExitSignal`].

pub mod acpi_pm;
pub mod bus;
pub mod console;
pub mod i8042;
pub mod pvpanic;
pub mod serial;
pub mod virtio;

pub use bus::{Bus, BusDevice};
