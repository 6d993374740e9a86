//! Emulated devices and the buses that route port I/O and MMIO exits to them: the generic
//! pieces here ([`bus`], the serial console's output queue [`console`]), the platform devices
//! in [`legacy`] (COM1, i8042, ACPI sleep/reset, pvpanic) and the virtio-mmio transport with
//! virtio-vsock in [`virtio`].
//!
//! Devices never call KVM: they see reads and writes at offsets, raise interrupts through
//! `EventFd`s that `vstate` registered as irqfds, and report the end of the VM through
//! [`crate::vm_exit::ExitSignal`]. Nothing under `devices` imports `kvm-ioctls`, `vstate` or
//! the VMM's control modules (`builder`, `event_loop`, `signals`, `graceful_stop`); the only
//! crate modules they use are `arch` (ACPI constants), `vm_exit` (the exit channel) and
//! `seccomp` (the console drain thread's filter), none of which imports a device. [`fuzz`] (tests
//! and the `fuzzing` feature) drives the port bus with a guest's arbitrary port I/O.

pub mod bus;
pub mod console;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz;
pub mod legacy;
pub mod virtio;

pub use bus::{Bus, BusDevice};
