//! x86_64 boot: memory layout, zero page, CPUID, MSRs, registers and ACPI tables. Nothing here
//! calls KVM: these modules compute values that `vstate` hands to KVM and `builder` writes
//! into guest memory, so they are unit-tested without /dev/kvm.

pub mod acpi;
pub mod boot_params;
pub mod cpuid;
pub mod layout;
pub mod msr;
pub mod regs;

/// The guest RAM regions for `mem_size` bytes: one region below the 32-bit MMIO hole and,
/// when RAM does not fit below it, the rest above 4 GiB.
pub fn arch_memory_regions(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= layout::MMIO32_START {
        vec![(0, mem_size)]
    } else {
        vec![
            (0, layout::MMIO32_START),
            (layout::RAM_ABOVE_4G_START, mem_size - layout::MMIO32_START),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_skip_the_mmio_hole() {
        assert_eq!(arch_memory_regions(256 << 20), vec![(0, 256 << 20)]);
        assert_eq!(arch_memory_regions(3 << 30), vec![(0, 3 << 30)]);
        assert_eq!(
            arch_memory_regions(5 << 30),
            vec![(0, 3 << 30), (1 << 32, 2 << 30)]
        );
    }
}
