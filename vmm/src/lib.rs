//! outsock-vmm: a minimal KVM virtual machine monitor that boots an unmodified Debian kernel
//! (bzImage + initramfs) with a serial console, described to the guest through ACPI, and in
//! VM mode a virtio-vsock device whose host side is Unix sockets to outsock-host-server.
//!
//! Code map (after Firecracker, see shared/STYLE.md):
//! - [`arch::x86_64`]: memory layout, zero page and e820, CPUID normalisation, MSRs, boot
//!   registers, ACPI tables. Pure, unit-tested without KVM.
//! - [`vstate`]: the VM and vCPUs; the only KVM callers and, with [`signals`] and
//!   [`seccomp`], the only `unsafe` code.
//! - [`devices`]: port I/O and MMIO buses, the 8250 UART with its non-blocking console, the
//!   i8042 keyboard controller (reset line, Ctrl+Alt+Del), the ACPI sleep/reset register,
//!   pvpanic, and virtio-mmio with the virtio-vsock device (`devices::virtio::vsock`).
//! - [`event_loop`]: the device event thread (console input, vsock, systemd's watchdog).
//! - [`signals`]: SIGTERM/SIGINT/SIGHUP end the VM like a guest power-off would;
//!   [`graceful_stop`] first asks the guest to shut down (Ctrl+Alt+Del) within a timeout.
//! - [`seccomp`]: one system-call allow-list per thread role, installed by each thread before
//!   it runs guest-facing code; a violation ends the process with status 6.
//! - [`builder`]: the boot sequence.
//! - [`vm_exit`]: why the VM ended, and the process exit status for it.
//! - [`config`], [`host_check`]: settings, and whether this host can run a VM at all.

pub mod arch;
pub mod builder;
pub mod config;
pub mod devices;
pub mod event_loop;
pub mod graceful_stop;
pub mod host_check;
pub mod seccomp;
pub mod signals;
pub mod vm_exit;
pub mod vstate;
