//! Guest physical memory map of an x86_64 VM: where the boot structures, ACPI tables, the
//! kernel, the MMIO hole and the interrupt controllers live. Addresses follow Firecracker's
//! `arch/x86_64/layout.rs` so that its documentation applies to this VMM too.

/// The GDT used for the 64-bit boot entry.
pub const BOOT_GDT_START: u64 = 0x500;
/// An empty IDT: the kernel installs its own before enabling interrupts.
pub const BOOT_IDT_START: u64 = 0x520;
/// Top of the stack the boot vCPU starts with.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// The zero page (`struct boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Identity-mapping page tables for the 64-bit entry: PML4, PDPT and one PD of 2 MiB pages.
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
/// The kernel command line and its maximum size, NUL included (Debian: `cmdline_size` 2047).
pub const CMDLINE_START: u64 = 0x20000;
pub const CMDLINE_MAX_SIZE: usize = 2048;

/// Low RAM ends here; the rest of the first MiB is reserved (EBDA, ACPI tables, BIOS area).
pub const EBDA_START: u64 = 0x9fc00;
/// ACPI tables (DSDT, FADT, MADT, XSDT) are placed from here, below the RSDP.
pub const ACPI_TABLES_START: u64 = 0xa0000;
/// The RSDP: inside the BIOS area Linux scans, and passed in `boot_params.acpi_rsdp_addr`.
pub const RSDP_ADDR: u64 = 0xe0000;
/// RAM restarts here; the kernel is loaded at `code32_start`, normally this address.
pub const HIMEM_START: u64 = 0x10_0000;

/// The 32-bit MMIO hole [3 GiB, 4 GiB): devices, IOAPIC, LAPIC, TSS.
pub const MMIO32_START: u64 = 0xc000_0000;
pub const MMIO32_SIZE: u64 = 0x4000_0000;
/// First RAM address above the MMIO hole (for guests with more than 3 GiB).
pub const RAM_ABOVE_4G_START: u64 = 0x1_0000_0000;

/// The pvpanic MMIO register (ACPI `QEMU0001`): the guest writes 1 here when it panics.
pub const PVPANIC_MMIO_START: u64 = MMIO32_START;
pub const PVPANIC_MMIO_SIZE: u32 = 0x1000;
/// Virtio-mmio windows (ACPI `LNRO0005`, 4 KiB each) are allocated from here by the next issue.
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
pub const VIRTIO_MMIO_SIZE: u32 = 0x1000;

pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
pub const APIC_ADDR: u32 = 0xfee0_0000;
/// Three pages for KVM's TSS (`KVM_SET_TSS_ADDR`), preceded by its identity-map page.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

/// Legacy and ACPI I/O ports.
pub const COM1_PORT: u16 = 0x3f8;
pub const COM1_PORT_LEN: u16 = 8;
pub const COM1_GSI: u32 = 4;
/// i8042 keyboard controller: data port 0x60, status/command port 0x64 (one bus range), IRQ 1.
pub const I8042_PORT: u16 = 0x60;
pub const I8042_PORT_LEN: u16 = 5;
pub const I8042_COMMAND_PORT: u16 = 0x64;
pub const I8042_GSI: u32 = 1;
/// ACPI sleep control/status and reset register (hardware-reduced ACPI), as cloud-hypervisor.
pub const ACPI_PM_PORT: u16 = 0x600;
/// GSIs for virtio-mmio devices start here (0–4 stay legacy), up to the IOAPIC's 23.
pub const GSI_VIRTIO_START: u32 = 5;
pub const GSI_MAX: u32 = 23;

/// The initramfs must end at or below the kernel's `initrd_addr_max`; also keep it below this.
pub const INITRD_MAX_END: u64 = 0x8000_0000;
/// Smallest and largest supported guest RAM.
pub const MIN_MEM_MIB: u64 = 128;
pub const MAX_MEM_MIB: u64 = 64 * 1024;
/// Largest supported number of vCPUs.
pub const MAX_VCPUS: u8 = 4;
