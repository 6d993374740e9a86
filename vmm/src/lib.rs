//! outsock-vmm: a minimal KVM virtual machine monitor that boots an unmodified Debian kernel
//! (bzImage + initramfs) with a serial console, described to the guest through ACPI, and in
//! VM mode a virtio-vsock device whose host side is Unix sockets to outsock-host-server.
//!
//! Code map (after Firecracker, see shared/STYLE.md), from the bottom layer up; a module
//! imports only modules of its own layer or below, and never in a cycle
//! (`scripts/check-structure`):
//! - [`arch::x86_64`]: memory layout, zero page and e820, CPUID normalisation, MSRs, boot
//!   registers, ACPI tables. Pure, unit-tested without KVM.
//! - [`stop_signal`]: which signals stop the VM, and their names. [`vm_exit`]: why the VM
//!   ended, the channel that reports it, and the process exit status for it. [`metrics`]: the
//!   VMM's counters and the subscriber that serves them on the VM's metrics socket.
//! - [`seccomp`]: one system-call allow-list per thread role, installed by each thread before
//!   it runs guest-facing code; a violation ends the process with status 6.
//! - [`devices`]: port I/O and MMIO buses and the serial console's output queue; the legacy
//!   platform devices ([`devices::legacy`]: the 8250 UART, the i8042 keyboard controller with
//!   its reset line and Ctrl+Alt+Del, the ACPI sleep/reset register, pvpanic); virtio-mmio
//!   with the virtio-vsock device ([`devices::virtio::vsock`]). They never call KVM.
//! - [`vstate`]: the VM and vCPUs; the only KVM callers.
//! - [`event_loop`]: the device event thread (console input, vsock, systemd's watchdog).
//! - [`graceful_stop`]: asks the guest to shut down (Ctrl+Alt+Del) within a timeout;
//!   [`signals`]: SIGTERM/SIGINT/SIGHUP end the VM like a guest power-off would.
//! - [`config`], [`host_check`]: settings, and whether this host can run a VM at all.
//! - [`builder`]: the boot sequence, the one module that wires all of the above together.
//!
//! `unsafe` is denied in the whole crate but four modules, allowed on their `mod` lines:
//! [`vstate`] (KVM's memory slots and the `kvm_run` union), [`signals`] (`poll` of the waiter's
//! eventfd, ending the process by a stop signal), [`seccomp`] (the SIGSYS handler) and
//! `devices::virtio::vsock::iov` (one vectored receive into guest memory).

#![deny(unsafe_code)]

pub mod arch;
pub mod builder;
pub mod config;
pub mod devices;
pub mod event_loop;
pub mod graceful_stop;
pub mod host_check;
pub mod metrics;
#[allow(unsafe_code)]
pub mod seccomp;
#[allow(unsafe_code)]
pub mod signals;
pub mod stop_signal;
pub mod vm_exit;
#[allow(unsafe_code)]
pub mod vstate;
