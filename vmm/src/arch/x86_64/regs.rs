//! Boot-time vCPU state for the bzImage 64-bit entry (Firecracker `arch/x86_64/regs.rs`):
//! a flat GDT, identity-mapping page tables for the first GiB, long mode enabled, and the
//! general registers the boot protocol expects (`rsi` = zero page).
//!
//! Everything here is pure: the values are computed here and written by `vstate`.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};

use super::layout;

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// The boot GDT: null, 64-bit code, data, TSS (Firecracker's values).
pub const BOOT_GDT: [u64; 4] = [
    gdt_entry(0, 0, 0),
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];
/// Selectors: index × 8.
const CODE_INDEX: u8 = 1;
const DATA_INDEX: u8 = 2;
const TSS_INDEX: u8 = 3;

/// Encodes a GDT descriptor from its flags (access byte in bits 0–7, flags in 12–15), base and
/// limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let base = base as u64;
    let limit = limit as u64;
    let flags = flags as u64;
    ((base & 0xff00_0000) << (56 - 24))
        | ((flags & 0x0000_f0ff) << 40)
        | ((limit & 0x000f_0000) << (48 - 16))
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
}

/// The `kvm_segment` that loading selector `index` from a GDT holding `entry` would produce.
pub fn segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let base = ((entry >> 16) & 0xff_ffff) | ((entry >> 32) & 0xff00_0000);
    let mut limit = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    if g == 1 {
        // 4 KiB granularity: the limit counts pages.
        limit = (limit << 12) | 0xfff;
    }
    let present = ((entry >> 47) & 1) as u8;
    kvm_segment {
        base,
        limit,
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 0x3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        padding: 0,
        unusable: u8::from(present == 0),
    }
}

/// The GDT as bytes, to be written at [`layout::BOOT_GDT_START`].
pub fn gdt_bytes() -> Vec<u8> {
    BOOT_GDT.iter().flat_map(|e| e.to_le_bytes()).collect()
}

/// Identity-mapping page tables for [0, 1 GiB) with 2 MiB pages: (guest address, bytes) to
/// write. The kernel, zero page and command line all lie in that range.
pub fn page_tables() -> Vec<(u64, Vec<u8>)> {
    let pml4 = (layout::PDPTE_START | 0x03).to_le_bytes().to_vec();
    let pdpte = (layout::PDE_START | 0x03).to_le_bytes().to_vec();
    let pde: Vec<u8> = (0..512u64)
        .flat_map(|i| ((i << 21) | 0x83).to_le_bytes())
        .collect();
    vec![
        (layout::PML4_START, pml4),
        (layout::PDPTE_START, pdpte),
        (layout::PDE_START, pde),
    ]
}

/// General registers at the 64-bit entry point.
pub fn boot_regs(entry: u64) -> kvm_regs {
    kvm_regs {
        rflags: 0x2,
        rip: entry,
        rsp: layout::BOOT_STACK_POINTER,
        rbp: layout::BOOT_STACK_POINTER,
        rsi: layout::ZERO_PAGE_START,
        ..Default::default()
    }
}

/// Special registers for long mode with the boot GDT and page tables, starting from the
/// vCPU's current `sregs` (which carry KVM's APIC base and other defaults).
pub fn boot_sregs(mut sregs: kvm_sregs) -> kvm_sregs {
    let code = segment_from_gdt(BOOT_GDT[usize::from(CODE_INDEX)], CODE_INDEX);
    let data = segment_from_gdt(BOOT_GDT[usize::from(DATA_INDEX)], DATA_INDEX);
    let tss = segment_from_gdt(BOOT_GDT[usize::from(TSS_INDEX)], TSS_INDEX);
    sregs.gdt.base = layout::BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&BOOT_GDT) - 1) as u16;
    sregs.idt.base = layout::BOOT_IDT_START;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    sregs.cr3 = layout::PML4_START;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.cr0 |= X86_CR0_PE | X86_CR0_PG | X86_CR0_ET;
    sregs.efer |= EFER_LME | EFER_LMA;
    sregs
}

/// FPU state: x87 control word and MXCSR at their reset values.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn lapic_reg(regs: &[std::os::raw::c_char], off: usize) -> u32 {
    u32::from_le_bytes([
        regs[off] as u8,
        regs[off + 1] as u8,
        regs[off + 2] as u8,
        regs[off + 3] as u8,
    ])
}

fn set_lapic_reg(regs: &mut [std::os::raw::c_char], off: usize, v: u32) {
    for (i, b) in v.to_le_bytes().into_iter().enumerate() {
        regs[off + i] = b as std::os::raw::c_char;
    }
}

/// Sets the local APIC's LINT0 to ExtINT and LINT1 to NMI (Firecracker
/// `arch/x86_64/interrupts.rs::set_lint`), in the register page KVM_GET_LAPIC returned.
pub fn set_lint(regs: &mut [std::os::raw::c_char]) {
    let lvt0 = lapic_reg(regs, APIC_LVT0);
    set_lapic_reg(regs, APIC_LVT0, (lvt0 & !0x700) | (APIC_MODE_EXTINT << 8));
    let lvt1 = lapic_reg(regs, APIC_LVT1);
    set_lapic_reg(regs, APIC_LVT1, (lvt1 & !0x700) | (APIC_MODE_NMI << 8));
}

#[cfg(test)]
mod tests {
    #[test]
    fn lint_pins() {
        let mut page = [0 as std::os::raw::c_char; 1024];
        set_lapic_reg(&mut page, APIC_LVT0, 0x0001_0700);
        set_lint(&mut page);
        assert_eq!(lapic_reg(&page, APIC_LVT0), 0x0001_0700);
        assert_eq!(lapic_reg(&page, APIC_LVT1), 0x400);
    }

    use super::*;

    #[test]
    fn gdt_matches_firecracker() {
        assert_eq!(BOOT_GDT[1], 0x00af_9b00_0000_ffff);
        assert_eq!(BOOT_GDT[2], 0x00cf_9300_0000_ffff);
        assert_eq!(BOOT_GDT[3], 0x008f_8b00_0000_ffff);
        assert_eq!(gdt_bytes().len(), 32);
    }

    #[test]
    fn segments_decode() {
        let cs = segment_from_gdt(BOOT_GDT[1], 1);
        assert_eq!(
            (cs.selector, cs.l, cs.db, cs.present, cs.type_),
            (8, 1, 0, 1, 0xb)
        );
        assert_eq!(cs.limit, 0xffff_ffff);
        let ds = segment_from_gdt(BOOT_GDT[2], 2);
        assert_eq!((ds.selector, ds.l, ds.db, ds.type_, ds.s), (16, 0, 1, 3, 1));
        let null = segment_from_gdt(BOOT_GDT[0], 0);
        assert_eq!(null.unusable, 1);
    }

    #[test]
    fn page_tables_identity_map_first_gib() {
        let pt = page_tables();
        assert_eq!(pt[0].0, layout::PML4_START);
        let pde = &pt[2].1;
        assert_eq!(pde.len(), 4096);
        let last = u64::from_le_bytes(pde[4088..4096].try_into().expect("8 bytes"));
        assert_eq!(last, (511 << 21) | 0x83);
    }

    #[test]
    fn long_mode_sregs() {
        let s = boot_sregs(kvm_sregs::default());
        assert_eq!(s.cr3, 0x9000);
        assert_ne!(s.cr0 & X86_CR0_PG, 0);
        assert_ne!(s.efer & EFER_LMA, 0);
        assert_eq!(s.cs.selector, 8);
        let r = boot_regs(0x100200);
        assert_eq!((r.rip, r.rsi, r.rflags), (0x100200, 0x7000, 2));
    }
}
