//! A vCPU: boot configuration (CPUID → MSRs → registers → LAPIC LINT pins, in Firecracker's
//! order) and the run loop that dispatches port I/O and MMIO exits to the buses and turns
//! fatal exits into an [`ExitReason`].

use kvm_bindings::{kvm_cpuid_entry2, CpuId, Msrs};
use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::arch::x86_64::{cpuid, msr, regs};
use crate::devices::Bus;
use crate::metrics::{Exit, METRICS};
use crate::vm_exit::{ExitReason, ExitSignal};

#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("vCPU {index}: {what} failed")]
    Ioctl {
        index: u8,
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("vCPU {index}: the CPUID list does not fit KVM's limit")]
    CpuidTooLarge { index: u8 },
    #[error("vCPU {index}: KVM set {set} of {wanted} boot MSRs")]
    Msrs {
        index: u8,
        set: usize,
        wanted: usize,
    },
}

/// See the module documentation.
#[derive(Debug)]
pub struct Vcpu {
    index: u8,
    fd: VcpuFd,
}

impl Vcpu {
    pub(super) fn new(index: u8, fd: VcpuFd) -> Self {
        Self { index, fd }
    }

    pub fn index(&self) -> u8 {
        self.index
    }

    fn ioctl_err(&self, what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VcpuError {
        let index = self.index;
        move |source| VcpuError::Ioctl {
            index,
            what,
            source,
        }
    }

    /// Loads the normalised CPUID, the boot MSRs, the FPU state, the LAPIC LINT pins and,
    /// for the boot vCPU (`entry` given), the 64-bit entry registers. Application processors
    /// keep KVM's reset state and wait for INIT/SIPI from the guest.
    pub fn configure(
        &self,
        leaves: &[kvm_cpuid_entry2],
        entry: Option<u64>,
    ) -> Result<(), VcpuError> {
        let index = self.index;
        let cpuid = CpuId::from_entries(leaves).map_err(|_| VcpuError::CpuidTooLarge { index })?;
        self.fd
            .set_cpuid2(&cpuid)
            .map_err(self.ioctl_err("KVM_SET_CPUID2"))?;
        if let Some(xcr0) = cpuid::boot_xcr0(leaves) {
            let mut xcrs = self.fd.get_xcrs().map_err(self.ioctl_err("KVM_GET_XCRS"))?;
            xcrs.nr_xcrs = 1;
            xcrs.xcrs[0].xcr = 0;
            xcrs.xcrs[0].value = xcr0;
            self.fd
                .set_xcrs(&xcrs)
                .map_err(self.ioctl_err("KVM_SET_XCRS"))?;
        }

        let entries = msr::boot_msr_entries();
        let msrs = Msrs::from_entries(&entries).map_err(|_| VcpuError::Msrs {
            index,
            set: 0,
            wanted: entries.len(),
        })?;
        let set = self
            .fd
            .set_msrs(&msrs)
            .map_err(self.ioctl_err("KVM_SET_MSRS"))?;
        if set != entries.len() {
            return Err(VcpuError::Msrs {
                index,
                set,
                wanted: entries.len(),
            });
        }

        self.fd
            .set_fpu(&regs::boot_fpu())
            .map_err(self.ioctl_err("KVM_SET_FPU"))?;
        if let Some(entry) = entry {
            self.fd
                .set_regs(&regs::boot_regs(entry))
                .map_err(self.ioctl_err("KVM_SET_REGS"))?;
            let sregs = self
                .fd
                .get_sregs()
                .map_err(self.ioctl_err("KVM_GET_SREGS"))?;
            self.fd
                .set_sregs(&regs::boot_sregs(sregs))
                .map_err(self.ioctl_err("KVM_SET_SREGS"))?;
        }

        let mut lapic = self
            .fd
            .get_lapic()
            .map_err(self.ioctl_err("KVM_GET_LAPIC"))?;
        regs::set_lint(&mut lapic.regs);
        self.fd
            .set_lapic(&lapic)
            .map_err(self.ioctl_err("KVM_SET_LAPIC"))?;
        Ok(())
    }

    /// Runs the vCPU until the VM ends; reports fatal exits to `exit`. With `trace_io`, writes
    /// to ports and addresses that no device claims are logged (a debug aid: the guest
    /// controls how many there are).
    pub fn run(mut self, pio: &Bus, mmio: &Bus, exit: &ExitSignal, trace_io: bool) {
        let vcpu = self.index;
        loop {
            if exit.is_signalled() {
                return;
            }
            let reason = match self.fd.run() {
                Ok(VcpuExit::IoIn(port, data)) => {
                    METRICS.exit(Exit::IoIn);
                    if !pio.read(u64::from(port), data) {
                        data.fill(0);
                    }
                    continue;
                }
                Ok(VcpuExit::IoOut(port, data)) => {
                    METRICS.exit(Exit::IoOut);
                    if !pio.write(u64::from(port), data) && trace_io {
                        eprintln!(
                            "outsock-vmm: vCPU {vcpu}: unhandled OUT port {port:#x} <- {data:x?}"
                        );
                    }
                    continue;
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    METRICS.exit(Exit::MmioRead);
                    if !mmio.read(addr, data) {
                        data.fill(0);
                    }
                    continue;
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    METRICS.exit(Exit::MmioWrite);
                    if !mmio.write(addr, data) && trace_io {
                        eprintln!(
                            "outsock-vmm: vCPU {vcpu}: unhandled MMIO write {addr:#x} <- {data:x?}"
                        );
                    }
                    continue;
                }
                Ok(VcpuExit::Intr) => {
                    METRICS.exit(Exit::Intr);
                    continue;
                }
                Ok(VcpuExit::Shutdown) => ExitReason::TripleFault { vcpu },
                Ok(VcpuExit::FailEntry(reason, _cpu)) => ExitReason::FailEntry { vcpu, reason },
                Ok(VcpuExit::InternalError) => {
                    let run = self.fd.get_kvm_run();
                    // SAFETY: on KVM_EXIT_INTERNAL_ERROR the kernel filled the `internal`
                    // member of the exit union; every bit pattern is a valid u32.
                    let suberror = unsafe { run.__bindgen_anon_1.internal.suberror };
                    ExitReason::InternalError { vcpu, suberror }
                }
                Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                    kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => ExitReason::PowerOff,
                    kvm_bindings::KVM_SYSTEM_EVENT_RESET => ExitReason::Reboot,
                    kvm_bindings::KVM_SYSTEM_EVENT_CRASH => ExitReason::GuestPanic,
                    other => ExitReason::UnexpectedExit {
                        vcpu,
                        what: format!("system event {other}"),
                    },
                },
                Ok(other) => ExitReason::UnexpectedExit {
                    vcpu,
                    what: format!("{other:?}"),
                },
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
                Err(e) => ExitReason::VcpuError {
                    vcpu,
                    error: e.to_string(),
                },
            };
            METRICS.exit(Exit::Other);
            exit.signal(reason);
            return;
        }
    }
}
