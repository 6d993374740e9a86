//! The KVM VM: creation, the TSS/identity-map pages, guest memory slots, the in-kernel
//! irqchip (PIC + IOAPIC + LAPICs) and PIT, irqfds, and vCPU creation. The order of these
//! steps matters to KVM and is kept by `builder`.

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES,
    KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{IoEventAddress, Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use super::vcpu::Vcpu;
use crate::arch::x86_64::layout;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("cannot open /dev/kvm")]
    OpenKvm(#[source] kvm_ioctls::Error),
    #[error("KVM API version {0} is not the expected 12")]
    ApiVersion(i32),
    #[error("KVM_CREATE_VM failed")]
    CreateVm(#[source] kvm_ioctls::Error),
    #[error("KVM_SET_TSS_ADDR failed")]
    SetTss(#[source] kvm_ioctls::Error),
    #[error("KVM_SET_IDENTITY_MAP_ADDR failed")]
    SetIdentityMap(#[source] kvm_ioctls::Error),
    #[error("KVM_SET_USER_MEMORY_REGION failed for slot {slot}")]
    SetMemory {
        slot: u32,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("KVM_CREATE_IRQCHIP failed")]
    CreateIrqChip(#[source] kvm_ioctls::Error),
    #[error("KVM_CREATE_PIT2 failed")]
    CreatePit(#[source] kvm_ioctls::Error),
    #[error("KVM_IRQFD failed for GSI {gsi}")]
    Irqfd {
        gsi: u32,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("KVM_IOEVENTFD failed for MMIO address {addr:#x}")]
    Ioeventfd {
        addr: u64,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("KVM_GET_SUPPORTED_CPUID failed")]
    SupportedCpuid(#[source] kvm_ioctls::Error),
    #[error("KVM_CREATE_VCPU failed for vCPU {index}")]
    CreateVcpu {
        index: u8,
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// See the module documentation.
#[derive(Debug)]
pub struct Vm {
    kvm: Kvm,
    fd: VmFd,
}

impl Vm {
    /// Creates the VM and places KVM's TSS and identity-map pages in the MMIO hole (both must
    /// be set before any vCPU exists).
    pub fn new() -> Result<Self, VmError> {
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        let version = kvm.get_api_version();
        if version != 12 {
            return Err(VmError::ApiVersion(version));
        }
        let fd = kvm.create_vm().map_err(VmError::CreateVm)?;
        fd.set_identity_map_address(layout::KVM_IDENTITY_MAP_ADDRESS)
            .map_err(VmError::SetIdentityMap)?;
        fd.set_tss_address(layout::KVM_TSS_ADDRESS as usize)
            .map_err(VmError::SetTss)?;
        Ok(Self { kvm, fd })
    }

    /// Registers every region of `mem` as a KVM memory slot.
    pub fn register_memory(&self, mem: &GuestMemoryMmap) -> Result<(), VmError> {
        for (slot, region) in mem.iter().enumerate() {
            let slot = slot as u32;
            let region_desc = kvm_userspace_memory_region {
                slot,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
            };
            // SAFETY: the host range [userspace_addr, +memory_size) is an anonymous mapping
            // owned by `mem`, which the caller keeps alive for as long as the VM exists (the
            // builder moves it into the `Vmm`, which lives until the process exits). Slots are
            // distinct and the guest ranges do not overlap (arch_memory_regions).
            unsafe { self.fd.set_user_memory_region(region_desc) }
                .map_err(|source| VmError::SetMemory { slot, source })?;
        }
        Ok(())
    }

    /// Creates the in-kernel PIC, IOAPIC and LAPICs, and the PIT with a dummy speaker port.
    pub fn setup_irqchip(&self) -> Result<(), VmError> {
        self.fd.create_irq_chip().map_err(VmError::CreateIrqChip)?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        self.fd.create_pit2(pit).map_err(VmError::CreatePit)
    }

    /// Makes a write to `evt` inject an edge on `gsi`.
    pub fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), VmError> {
        self.fd
            .register_irqfd(evt, gsi)
            .map_err(|source| VmError::Irqfd { gsi, source })
    }

    /// Makes a 4-byte guest write of `datamatch` to MMIO address `addr` signal `evt` inside KVM,
    /// without an exit to user space (virtio-mmio QueueNotify).
    pub fn register_ioevent(
        &self,
        evt: &EventFd,
        addr: u64,
        datamatch: u32,
    ) -> Result<(), VmError> {
        self.fd
            .register_ioevent(evt, &IoEventAddress::Mmio(addr), datamatch)
            .map_err(|source| VmError::Ioeventfd { addr, source })
    }

    /// The CPUID leaves KVM can offer on this host, before normalisation.
    pub fn supported_cpuid(&self) -> Result<Vec<kvm_cpuid_entry2>, VmError> {
        let cpuid = self
            .kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(VmError::SupportedCpuid)?;
        Ok(cpuid.as_slice().to_vec())
    }

    /// Creates vCPU `index` (APIC id = index).
    pub fn create_vcpu(&self, index: u8) -> Result<Vcpu, VmError> {
        let fd = self
            .fd
            .create_vcpu(u64::from(index))
            .map_err(|source| VmError::CreateVcpu { index, source })?;
        Ok(Vcpu::new(index, fd))
    }
}
