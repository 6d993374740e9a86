//! CPUID normalisation: turn the host's `KVM_GET_SUPPORTED_CPUID` list into a consistent
//! description of one vCPU of a `count`-vCPU VM (Firecracker `cpu_config/x86_64/cpuid/
//! normalize.rs`, cloud-hypervisor `arch/src/x86_64/mod.rs`).
//!
//! The guest must see: the hypervisor bit (so it finds KVM and uses kvm-clock), TSC-deadline
//! (with hardware-reduced ACPI there is no PIT to calibrate the LAPIC timer), its own APIC id
//! and a topology of `count` single-threaded cores, and XSAVE sizes that agree with the
//! components offered (otherwise Linux prints "XSAVE consistency problem" and disables XSAVE).

use kvm_bindings::kvm_cpuid_entry2;

/// `KVM_CPUID_FLAG_SIGNIFCANT_INDEX`: the entry applies to one sub-leaf.
const FLAG_SIGNIFICANT_INDEX: u32 = 1;

const LEAF1_EBX_CLFLUSH_SHIFT: u32 = 8;
const LEAF1_EBX_CPU_COUNT_SHIFT: u32 = 16;
const LEAF1_EBX_APIC_ID_SHIFT: u32 = 24;
const LEAF1_ECX_PDCM: u32 = 1 << 15;
const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
const LEAF1_EDX_HTT: u32 = 1 << 28;
const LEAF6_EAX_TURBO: u32 = 1 << 1;
const LEAF6_ECX_EPB: u32 = 1 << 3;
/// KVM paravirt feature leaf and `KVM_FEATURE_ASYNC_PF_INT` (cloud-hypervisor #2277: an exit
/// storm on AMD hosts).
const KVM_FEATURES_LEAF: u32 = 0x4000_0001;
const KVM_FEATURE_ASYNC_PF_INT: u32 = 1 << 14;
const AMD_EXT_LEAF1_ECX_CMP_LEGACY: u32 = 1 << 1;
/// Legacy area + XSAVE header: the XSAVE size with only x87 and SSE.
const XSAVE_LEGACY_SIZE: u32 = 512 + 64;

/// The CPU vendor, read from leaf 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vendor {
    Intel,
    Amd,
    Other,
}

fn find(entries: &[kvm_cpuid_entry2], function: u32, index: u32) -> Option<&kvm_cpuid_entry2> {
    entries.iter().find(|e| {
        e.function == function && (e.flags & FLAG_SIGNIFICANT_INDEX == 0 || e.index == index)
    })
}

/// The vendor named by leaf 0's EBX, EDX, ECX.
pub fn vendor(entries: &[kvm_cpuid_entry2]) -> Vendor {
    let Some(e) = find(entries, 0, 0) else {
        return Vendor::Other;
    };
    let mut id = [0u8; 12];
    id[0..4].copy_from_slice(&e.ebx.to_le_bytes());
    id[4..8].copy_from_slice(&e.edx.to_le_bytes());
    id[8..12].copy_from_slice(&e.ecx.to_le_bytes());
    match &id {
        b"GenuineIntel" => Vendor::Intel,
        b"AuthenticAMD" => Vendor::Amd,
        _ => Vendor::Other,
    }
}

/// Bits needed to number `count` ids (ceil(log2(count))).
fn id_bits(count: u8) -> u32 {
    u32::from(count.max(1)).next_power_of_two().trailing_zeros()
}

/// Normalises `entries` (KVM's supported CPUID) for vCPU `index` of `count`.
pub fn normalize(entries: &mut [kvm_cpuid_entry2], index: u8, count: u8) {
    let vendor = vendor(entries);
    let apic_id = u32::from(index);
    let count32 = u32::from(count.max(1));
    let count_pow2 = count32.next_power_of_two();
    for e in entries.iter_mut() {
        match e.function {
            0x1 => {
                e.ebx = (apic_id << LEAF1_EBX_APIC_ID_SHIFT)
                    | (count_pow2 << LEAF1_EBX_CPU_COUNT_SHIFT)
                    | (8 << LEAF1_EBX_CLFLUSH_SHIFT)
                    | (e.ebx & 0xff);
                e.ecx |= LEAF1_ECX_HYPERVISOR | LEAF1_ECX_TSC_DEADLINE;
                e.ecx &= !LEAF1_ECX_PDCM;
                if count > 1 {
                    e.edx |= LEAF1_EDX_HTT;
                } else {
                    e.edx &= !LEAF1_EDX_HTT;
                }
            }
            0x4 if vendor == Vendor::Intel => {
                let cache_type = e.eax & 0x1f;
                if cache_type != 0 {
                    let level = (e.eax >> 5) & 0x7;
                    // One thread per core: L1/L2 are private, L3 is shared by all cores.
                    let sharing = if level >= 3 { count_pow2 - 1 } else { 0 };
                    e.eax &= 0x3fff;
                    e.eax |= (sharing << 14) | ((count_pow2 - 1) << 26);
                }
            }
            0x6 => {
                e.eax &= !LEAF6_EAX_TURBO;
                e.ecx &= !LEAF6_ECX_EPB;
            }
            0xb | 0x1f => {
                // Extended topology: level 0 = SMT (1 thread), level 1 = core (count cores).
                e.edx = apic_id;
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = (1 << 8) | e.index;
                    }
                    1 => {
                        e.eax = id_bits(count);
                        e.ebx = count32;
                        e.ecx = (2 << 8) | e.index;
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index;
                    }
                }
            }
            KVM_FEATURES_LEAF => e.eax &= !KVM_FEATURE_ASYNC_PF_INT,
            0x8000_0001 if vendor == Vendor::Amd => {
                if count > 1 {
                    e.ecx |= AMD_EXT_LEAF1_ECX_CMP_LEGACY;
                } else {
                    e.ecx &= !AMD_EXT_LEAF1_ECX_CMP_LEGACY;
                }
            }
            0x8000_0008 if vendor == Vendor::Amd => {
                e.ecx = (e.ecx & !0xf0ff) | (id_bits(count) << 12) | (count32 - 1);
            }
            0x8000_001e if vendor == Vendor::Amd => {
                e.eax = apic_id;
                e.ebx = apic_id & 0xff; // compute unit id; 1 thread per unit
                e.ecx = 0; // node 0, one node
                e.edx = 0;
            }
            _ => {}
        }
    }
    normalize_xsave(entries);
}

/// Makes leaf 0xD self-consistent: only components whose sub-leaf describes them stay in the
/// supported mask, and the maximum sizes cover exactly those components.
pub fn normalize_xsave(entries: &mut [kvm_cpuid_entry2]) {
    let Some(main) = find(entries, 0xd, 0).copied() else {
        return;
    };
    let mut mask = u64::from(main.eax) | (u64::from(main.edx) << 32);
    let mut max_end = XSAVE_LEGACY_SIZE;
    for bit in 2..64 {
        if mask & (1 << bit) == 0 {
            continue;
        }
        match find(entries, 0xd, bit) {
            Some(sub) if sub.eax != 0 && sub.index == bit => {
                max_end = max_end.max(sub.ebx + sub.eax);
            }
            _ => mask &= !(1 << bit),
        }
    }
    for e in entries.iter_mut() {
        if e.function == 0xd && e.index == 0 {
            e.eax = mask as u32;
            e.edx = (mask >> 32) as u32;
            e.ecx = max_end;
            // EBX is the size for the guest's current XCR0; KVM keeps it up to date, start
            // with the size for x87 + SSE (XCR0's reset value enables only x87).
            e.ebx = XSAVE_LEGACY_SIZE;
        }
    }
}

/// The XCR0 value to start a vCPU with: every user state component leaf 0xD offers (`None`
/// if the CPU has no XSAVE). Linux sets XCR0 itself, normally to this same mask. Starting
/// with it matters where the guest's XSETBV does not exit to KVM (nested under QEMU's
/// emulated SVM): KVM then never recomputes CPUID 0xD's "size for current XCR0" and the
/// guest would read the size for x87+SSE only and report an "XSAVE consistency problem".
pub fn boot_xcr0(entries: &[kvm_cpuid_entry2]) -> Option<u64> {
    const LEAF1_ECX_XSAVE: u32 = 1 << 26;
    let l1 = find(entries, 1, 0)?;
    if l1.ecx & LEAF1_ECX_XSAVE == 0 {
        return None;
    }
    let d0 = find(entries, 0xd, 0)?;
    let mask = u64::from(d0.eax) | (u64::from(d0.edx) << 32);
    // x87 must always be set.
    Some(mask | 1)
}

#[cfg(test)]
mod tests {
    #[test]
    fn boot_xcr0_is_the_offered_user_mask() {
        let mut e = amd_host();
        normalize(&mut e, 0, 1);
        assert_eq!(
            boot_xcr0(&e),
            Some(0x7),
            "x87 | SSE | AVX; the stray bits were dropped"
        );
        for l in e.iter_mut().filter(|l| l.function == 1) {
            l.ecx &= !(1 << 26);
        }
        assert_eq!(boot_xcr0(&e), None, "no XSAVE, no XCR0");
    }

    use super::*;

    fn leaf(function: u32, index: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            flags: if matches!(function, 0x4 | 0xb | 0xd | 0x1f) {
                1
            } else {
                0
            },
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
            ..Default::default()
        }
    }

    fn vendor_leaf(id: &[u8; 12]) -> kvm_cpuid_entry2 {
        let w = |i: usize| u32::from_le_bytes(id[i..i + 4].try_into().expect("4 bytes"));
        leaf(0, 0, [0x1f, w(0), w(8), w(4)])
    }

    fn amd_host() -> Vec<kvm_cpuid_entry2> {
        vec![
            vendor_leaf(b"AuthenticAMD"),
            leaf(1, 0, [0x00a2_0f12, 0x0010_0800, 0x7ed8_320b, 0x178b_fbff]),
            leaf(0xb, 0, [1, 2, 0x100, 7]),
            leaf(0xb, 1, [7, 64, 0x201, 7]),
            // XSAVE: x87|SSE|AVX supported, AVX at offset 576 size 256; a stray MPX bit
            // without a sub-leaf.
            leaf(0xd, 0, [0x1f, 0x340, 0x340, 0]),
            leaf(0xd, 1, [0xf, 0x340, 0, 0]),
            leaf(0xd, 2, [256, 576, 0, 0]),
            leaf(0x4000_0001, 0, [0x0100_7efb, 0, 0, 0]),
            leaf(0x8000_0008, 0, [0x3030, 0, 0x7007, 0]),
            leaf(0x8000_001e, 0, [9, 0x105, 0x300, 0]),
        ]
    }

    #[test]
    fn vendor_detection() {
        assert_eq!(vendor(&amd_host()), Vendor::Amd);
        assert_eq!(vendor(&[vendor_leaf(b"GenuineIntel")]), Vendor::Intel);
        assert_eq!(vendor(&[]), Vendor::Other);
    }

    #[test]
    fn leaf1_identity_and_flags() {
        let mut e = amd_host();
        normalize(&mut e, 1, 2);
        let l1 = find(&e, 1, 0).expect("leaf 1");
        assert_eq!(l1.ebx >> 24, 1, "initial APIC id");
        assert_eq!((l1.ebx >> 16) & 0xff, 2, "logical CPU count");
        assert_eq!((l1.ebx >> 8) & 0xff, 8, "CLFLUSH line size / 8");
        assert_ne!(l1.ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_ne!(l1.ecx & LEAF1_ECX_TSC_DEADLINE, 0);
        assert_eq!(l1.ecx & LEAF1_ECX_PDCM, 0);
        assert_ne!(l1.edx & LEAF1_EDX_HTT, 0);

        let mut e = amd_host();
        normalize(&mut e, 0, 1);
        let l1 = find(&e, 1, 0).expect("leaf 1");
        assert_eq!(l1.edx & LEAF1_EDX_HTT, 0);
        assert_eq!((l1.ebx >> 16) & 0xff, 1);
    }

    #[test]
    fn topology_and_amd_leaves() {
        let mut e = amd_host();
        normalize(&mut e, 3, 4);
        let smt = find(&e, 0xb, 0).expect("0xb.0");
        assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, 0x100, 3));
        let core = find(&e, 0xb, 1).expect("0xb.1");
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (2, 4, 0x201, 3));
        let nc = find(&e, 0x8000_0008, 0).expect("0x80000008");
        assert_eq!(nc.ecx & 0xff, 3);
        assert_eq!((nc.ecx >> 12) & 0xf, 2);
        let ext = find(&e, 0x8000_001e, 0).expect("0x8000001e");
        assert_eq!(ext.eax, 3);
        let kvm = find(&e, 0x4000_0001, 0).expect("kvm features");
        assert_eq!(kvm.eax & KVM_FEATURE_ASYNC_PF_INT, 0);
    }

    #[test]
    fn xsave_sizes_are_consistent() {
        let mut e = amd_host();
        normalize(&mut e, 0, 1);
        let d0 = find(&e, 0xd, 0).expect("0xd.0");
        assert_eq!(d0.eax, 0x7, "components without a sub-leaf are dropped");
        assert_eq!(d0.ecx, 576 + 256, "max size covers AVX exactly");
        assert_eq!(d0.ebx, 576);
    }

    #[test]
    fn intel_cache_topology() {
        let mut e = vec![
            vendor_leaf(b"GenuineIntel"),
            leaf(4, 0, [0x1c00_4121, 0, 0, 0]), // L1d, 8 threads sharing, 8 cores
            leaf(4, 3, [0x1c03_c163, 0, 0, 0]), // L3
            leaf(6, 0, [0x77, 0, 0x9, 0]),
        ];
        normalize(&mut e, 0, 2);
        let l1d = find(&e, 4, 0).expect("L1d");
        assert_eq!((l1d.eax >> 14) & 0xfff, 0);
        assert_eq!(l1d.eax >> 26, 1);
        assert_eq!(l1d.eax & 0x3fff, 0x0121);
        let l3 = find(&e, 4, 3).expect("L3");
        assert_eq!((l3.eax >> 14) & 0xfff, 1);
        let l6 = find(&e, 6, 0).expect("leaf 6");
        assert_eq!((l6.eax & LEAF6_EAX_TURBO, l6.ecx & LEAF6_ECX_EPB), (0, 0));
    }
}
