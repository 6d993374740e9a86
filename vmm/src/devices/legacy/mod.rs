//! The legacy platform devices: the PC pieces a Linux guest expects besides virtio, each on the
//! port I/O or MMIO bus at a fixed place that the ACPI tables describe (`arch::x86_64::acpi`).
//! [`serial`] is COM1 (the console), [`i8042`] the keyboard controller (the reset line, and
//! Ctrl+Alt+Del for a graceful stop), [`acpi_pm`] the ACPI sleep/reset register (power-off,
//! reboot), [`pvpanic`] the guest's panic report.
//!
//! Like every device they never call KVM: interrupts go out through irqfd `EventFd`s, and the
//! end of the VM through [`crate::vm_exit::ExitSignal`]. The buses and the console output queue
//! they plug into are generic infrastructure, one level up in [`crate::devices`].

pub mod acpi_pm;
pub mod i8042;
pub mod pvpanic;
pub mod serial;
