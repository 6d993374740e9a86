//! ACPI tables describing the machine to the guest: RSDP → XSDT → {FADT → DSDT, MADT}.
//!
//! Debian's kernels have neither `X86_MPPARSE` nor `VIRTIO_MMIO_CMDLINE_DEVICES`, so ACPI is the
//! only way they learn about CPUs, the IOAPIC and devices (see shared/reference/vmm-notes.md §1):
//! - FADT: hardware-reduced ACPI, no buttons, no VGA, no CMOS RTC; the sleep control/status and
//!   reset registers are one I/O port ([`layout::ACPI_PM_PORT`]) so that guest poweroff and
//!   reboot reach the VMM.
//! - MADT: one IOAPIC and one enabled local APIC per vCPU (APIC id = ACPI uid = vCPU index).
//! - DSDT: COM1 (`PNP0501`, IRQ 4), the i8042 keyboard controller (`PNP0303`, ports 0x60 and
//!   0x64, IRQ 1), the pvpanic register (`QEMU0001`), one `LNRO0005` node per virtio-mmio
//!   device, and `_S5_` (the soft-off sleep type).
//!
//! Building is pure: the result is a list of (guest address, bytes) that `builder` writes.

use acpi_tables::aml;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;

use super::layout;

const OEM_ID: [u8; 6] = *b"OUTSCK";
const OEM_REVISION: u32 = 1;
/// IA-PC boot architecture flags: VGA not present (bit 2), CMOS RTC not present (bit 5).
/// The 8042 bit stays clear: Linux's i8042 driver then probes only because of the `PNP0303`
/// node, and takes its IRQ from there (see `devices::legacy::i8042`).
const IAPC_BOOT_ARCH: u16 = (1 << 2) | (1 << 5);
/// `_S5_` sleep type value and what the guest writes to the sleep control register for it:
/// SLP_TYP in bits 2–4, SLP_EN in bit 5.
pub const S5_SLEEP_TYPE: u8 = 5;
pub const SLEEP_CONTROL_S5: u8 = (S5_SLEEP_TYPE << 2) | (1 << 5);
/// What the guest writes to the reset register to reboot.
pub const RESET_VALUE: u8 = 1;

/// A memory-mapped device described in the DSDT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MmioDeviceDesc {
    /// The ACPI hardware id, e.g. `LNRO0005` for virtio-mmio.
    pub hid: &'static str,
    /// Four-character ACPI name below `\_SB_`, e.g. `V000`.
    pub name: String,
    pub uid: u32,
    pub base: u32,
    pub len: u32,
    /// Edge-triggered, active-high interrupt, if the device has one.
    pub gsi: Option<u32>,
}

impl MmioDeviceDesc {
    /// A virtio-mmio device (ACPI `LNRO0005`) numbered `n`, as Firecracker names them.
    pub fn virtio_mmio(n: u32, base: u32, gsi: u32) -> Self {
        Self {
            hid: "LNRO0005",
            name: format!("V{n:03}"),
            uid: n,
            base,
            len: layout::VIRTIO_MMIO_SIZE,
            gsi: Some(gsi),
        }
    }

    /// The pvpanic register (ACPI `QEMU0001`, Linux `pvpanic-mmio`).
    pub fn pvpanic(base: u32) -> Self {
        Self {
            hid: "QEMU0001",
            name: "PEVT".to_owned(),
            uid: 0,
            base,
            len: layout::PVPANIC_MMIO_SIZE,
            gsi: None,
        }
    }
}

/// What the tables describe.
#[derive(Debug, Clone)]
pub struct AcpiConfig {
    pub vcpus: u8,
    pub mmio_devices: Vec<MmioDeviceDesc>,
}

/// The tables, ready to be written to guest memory.
#[derive(Debug, Clone)]
pub struct AcpiTables {
    /// (guest physical address, table bytes), RSDP last.
    pub tables: Vec<(u64, Vec<u8>)>,
    pub rsdp_addr: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    #[error("the ACPI tables need {needed} bytes but only {available} are reserved for them")]
    TooLarge { needed: u64, available: u64 },
}

fn to_bytes(t: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    t.to_aml_bytes(&mut v);
    v
}

/// The DSDT's AML body (without the table header).
pub fn dsdt_aml(cfg: &AcpiConfig) -> Vec<u8> {
    let mut body = Vec::new();

    let com1_irq = aml::Interrupt::new(true, true, false, false, layout::COM1_GSI);
    let com1_io = aml::IO::new(
        layout::COM1_PORT,
        layout::COM1_PORT,
        1,
        layout::COM1_PORT_LEN as u8,
    );
    let com1_crs = aml::ResourceTemplate::new(vec![&com1_irq, &com1_io]);
    aml::Device::new(
        "_SB_.COM1".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501")),
            &aml::Name::new("_UID".into(), &aml::ZERO),
            &aml::Name::new("_DDN".into(), &"COM1"),
            &aml::Name::new("_CRS".into(), &com1_crs),
        ],
    )
    .to_aml_bytes(&mut body);

    // The keyboard controller: data port, then command port, each one byte, then IRQ 1 (the
    // order i8042_pnp_kbd_probe reads them in). No PS/2 mouse node: the driver skips the aux
    // port.
    let kbd_data = aml::IO::new(layout::I8042_PORT, layout::I8042_PORT, 1, 1);
    let kbd_cmd = aml::IO::new(layout::I8042_COMMAND_PORT, layout::I8042_COMMAND_PORT, 1, 1);
    let kbd_irq = aml::Interrupt::new(true, true, false, false, layout::I8042_GSI);
    let kbd_crs = aml::ResourceTemplate::new(vec![&kbd_data, &kbd_cmd, &kbd_irq]);
    aml::Device::new(
        "_SB_.PS2_".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0303")),
            &aml::Name::new("_CRS".into(), &kbd_crs),
        ],
    )
    .to_aml_bytes(&mut body);

    for dev in &cfg.mmio_devices {
        let mem = aml::Memory32Fixed::new(true, dev.base, dev.len);
        let irq = dev
            .gsi
            .map(|gsi| aml::Interrupt::new(true, true, false, false, gsi));
        let mut resources: Vec<&dyn Aml> = vec![&mem];
        if let Some(irq) = &irq {
            resources.push(irq);
        }
        let crs = aml::ResourceTemplate::new(resources);
        let hid = dev.hid.to_owned();
        let path = format!("_SB_.{}", dev.name);
        aml::Device::new(
            path.as_str().into(),
            vec![
                &aml::Name::new("_HID".into(), &hid),
                &aml::Name::new("_UID".into(), &dev.uid),
                &aml::Name::new("_CCA".into(), &aml::ONE),
                &aml::Name::new("_CRS".into(), &crs),
            ],
        )
        .to_aml_bytes(&mut body);
    }

    // \_S5_: Package { SLP_TYPa, SLP_TYPb, reserved, reserved }.
    let s5 = S5_SLEEP_TYPE;
    aml::Name::new(
        "_S5_".into(),
        &aml::Package::new(vec![&s5, &s5, &aml::ZERO, &aml::ZERO]),
    )
    .to_aml_bytes(&mut body);
    body
}

fn io_register(port: u16) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(port),
    )
}

/// Builds all tables for `cfg`, DSDT first at [`layout::ACPI_TABLES_START`], RSDP at
/// [`layout::RSDP_ADDR`].
pub fn build(cfg: &AcpiConfig) -> Result<AcpiTables, AcpiError> {
    let mut next = layout::ACPI_TABLES_START;
    let mut tables = Vec::new();
    let mut place = |bytes: Vec<u8>, tables: &mut Vec<(u64, Vec<u8>)>| {
        let addr = next;
        next = (next + bytes.len() as u64 + 7) & !7;
        tables.push((addr, bytes));
        addr
    };

    let mut dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, *b"OUTSDSDT", OEM_REVISION);
    dsdt.append_slice(&dsdt_aml(cfg));
    let dsdt_addr = place(dsdt.as_slice().to_vec(), &mut tables);

    let mut fadt = FADTBuilder::new(OEM_ID, *b"OUTSFACP", OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .flag(Flags::ResetRegSup);
    fadt.iapc_boot_arch = IAPC_BOOT_ARCH.into();
    fadt.reset_reg = io_register(layout::ACPI_PM_PORT);
    fadt.reset_value = RESET_VALUE;
    fadt.sleep_control_reg = io_register(layout::ACPI_PM_PORT);
    fadt.sleep_status_reg = io_register(layout::ACPI_PM_PORT);
    fadt.hypervisor_vendor_identity = u64::from_le_bytes(*b"OUTSOCK ").into();
    let fadt_addr = place(to_bytes(&fadt.finalize()), &mut tables);

    let mut madt = MADT::new(
        OEM_ID,
        *b"OUTSAPIC",
        OEM_REVISION,
        LocalInterruptController::Address(layout::APIC_ADDR),
    );
    madt.add_structure(IoApic::new(0, layout::IOAPIC_ADDR, 0));
    for cpu in 0..cfg.vcpus {
        madt.add_structure(ProcessorLocalApic::new(cpu, cpu, EnabledStatus::Enabled));
    }
    let madt_addr = place(to_bytes(&madt), &mut tables);

    let mut xsdt = XSDT::new(OEM_ID, *b"OUTSXSDT", OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let xsdt_addr = place(to_bytes(&xsdt), &mut tables);

    if next > layout::RSDP_ADDR {
        return Err(AcpiError::TooLarge {
            needed: next - layout::ACPI_TABLES_START,
            available: layout::RSDP_ADDR - layout::ACPI_TABLES_START,
        });
    }
    tables.push((layout::RSDP_ADDR, to_bytes(&Rsdp::new(OEM_ID, xsdt_addr))));
    Ok(AcpiTables {
        tables,
        rsdp_addr: layout::RSDP_ADDR,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::process::Command;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    fn config(vcpus: u8) -> AcpiConfig {
        AcpiConfig {
            vcpus,
            mmio_devices: vec![
                MmioDeviceDesc::pvpanic(layout::PVPANIC_MMIO_START as u32),
                MmioDeviceDesc::virtio_mmio(0, layout::VIRTIO_MMIO_START as u32, 5),
            ],
        }
    }

    fn table<'a>(t: &'a AcpiTables, sig: &[u8]) -> (u64, &'a [u8]) {
        t.tables
            .iter()
            .find(|(_, b)| &b[..sig.len()] == sig)
            .map(|(a, b)| (*a, b.as_slice()))
            .expect("table present")
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
    }

    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
    }

    #[test]
    fn checksums_and_lengths() {
        let t = build(&config(2)).expect("tables fit");
        for (addr, bytes) in &t.tables {
            if &bytes[..8] == b"RSD PTR " {
                assert_eq!(sum(&bytes[..20]), 0, "RSDP v1 checksum");
                assert_eq!(sum(bytes), 0, "RSDP extended checksum");
                assert_eq!(*addr, layout::RSDP_ADDR);
                assert_eq!(bytes.len(), 36);
            } else {
                assert_eq!(
                    sum(bytes),
                    0,
                    "checksum of {}",
                    String::from_utf8_lossy(&bytes[..4])
                );
                assert_eq!(u32_at(bytes, 4) as usize, bytes.len(), "header length");
                assert!(
                    *addr >= layout::ACPI_TABLES_START
                        && *addr + bytes.len() as u64 <= layout::RSDP_ADDR
                );
            }
        }
    }

    #[test]
    fn pointers_chain_up() {
        let t = build(&config(1)).expect("tables fit");
        let (_, rsdp) = table(&t, b"RSD PTR ");
        let (xsdt_addr, xsdt) = table(&t, b"XSDT");
        assert_eq!(u64_at(rsdp, 24), xsdt_addr);
        let (fadt_addr, fadt) = table(&t, b"FACP");
        let (madt_addr, _) = table(&t, b"APIC");
        assert_eq!(u64_at(xsdt, 36), fadt_addr);
        assert_eq!(u64_at(xsdt, 44), madt_addr);
        let (dsdt_addr, _) = table(&t, b"DSDT");
        assert_eq!(u64_at(fadt, 140), dsdt_addr, "X_DSDT");
        assert_eq!(fadt.len(), 276);
    }

    #[test]
    fn fadt_is_hardware_reduced_with_sleep_and_reset() {
        let t = build(&config(1)).expect("tables fit");
        let (_, f) = table(&t, b"FACP");
        let flags = u32_at(f, 112);
        assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
        assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
        assert_eq!(u16::from_le_bytes([f[109], f[110]]), IAPC_BOOT_ARCH);
        // RESET_REG (GAS at 116): system I/O, 8 bit, port 0x600; value at 128.
        assert_eq!(f[116], 1);
        assert_eq!(f[117], 8);
        assert_eq!(u64_at(f, 120), 0x600);
        assert_eq!(f[128], RESET_VALUE);
        // SLEEP_CONTROL_REG at 244, SLEEP_STATUS_REG at 256.
        assert_eq!((f[244], u64_at(f, 248)), (1, 0x600));
        assert_eq!((f[256], u64_at(f, 260)), (1, 0x600));
    }

    #[test]
    fn madt_has_ioapic_and_one_lapic_per_vcpu() {
        for vcpus in 1..=4u8 {
            let t = build(&config(vcpus)).expect("tables fit");
            let (_, m) = table(&t, b"APIC");
            assert_eq!(u32_at(m, 36), layout::APIC_ADDR);
            let mut off = 44;
            let (mut lapics, mut ioapics) = (Vec::new(), 0);
            while off < m.len() {
                let (kind, len) = (m[off], usize::from(m[off + 1]));
                match kind {
                    0 => {
                        assert_eq!(m[off + 2], m[off + 3], "uid == apic id");
                        assert_eq!(u32_at(m, off + 4), 1, "enabled");
                        lapics.push(m[off + 3]);
                    }
                    1 => {
                        ioapics += 1;
                        assert_eq!(u32_at(m, off + 4), layout::IOAPIC_ADDR);
                        assert_eq!(u32_at(m, off + 8), 0, "GSI base");
                    }
                    other => panic!("unexpected MADT entry type {other}"),
                }
                off += len;
            }
            assert_eq!(ioapics, 1);
            assert_eq!(lapics, (0..vcpus).collect::<Vec<_>>());
        }
    }

    #[test]
    fn dsdt_names_devices() {
        let aml = dsdt_aml(&config(1));
        let has = |needle: &[u8]| aml.windows(needle.len()).any(|w| w == needle);
        assert!(has(b"COM1"));
        assert!(has(b"PS2_"));
        assert!(has(b"LNRO0005"));
        assert!(has(b"QEMU0001"));
        assert!(has(b"_S5_"));
    }

    /// Disassembles every table with `iasl -d` (Debian package acpica-tools) and fails on any
    /// error or warning it reports.
    #[test]
    fn iasl_disassembles_tables_cleanly() {
        let Some(iasl) = ["/usr/bin/iasl", "/usr/local/bin/iasl"]
            .into_iter()
            .find(|p| Path::new(p).exists())
        else {
            println!("SKIP iasl_disassembles_tables_cleanly: iasl not found (install Debian's acpica-tools)");
            return;
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let t = build(&config(4)).expect("tables fit");
        for (_, bytes) in &t.tables {
            // iasl cannot disassemble a bare RSDP (it is not an SDT); its checksums are
            // checked in `checksums_and_lengths`.
            if &bytes[..8] == b"RSD PTR " {
                continue;
            }
            let name = String::from_utf8_lossy(&bytes[..4]).to_lowercase();
            let bin = dir.path().join(format!("{name}.dat"));
            std::fs::write(&bin, bytes).expect("write table");
            let out = Command::new(iasl)
                .arg("-d")
                .arg(&bin)
                .current_dir(dir.path())
                .output()
                .expect("run iasl");
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(out.status.success(), "iasl -d {name}: {text}");
            let lower = text.to_lowercase();
            assert!(
                !lower.contains("error") || lower.contains("0 errors"),
                "iasl -d {name}: {text}"
            );
            assert!(
                !lower.contains("warning") || lower.contains("0 warnings"),
                "iasl -d {name}: {text}"
            );
            let dsl = std::fs::read_to_string(dir.path().join(format!("{name}.dsl")))
                .expect("iasl wrote .dsl");
            if name == "dsdt" {
                for needle in [
                    "PNP0501",
                    "PNP0303",
                    "0x0064",
                    "LNRO0005",
                    "QEMU0001",
                    "_S5_",
                    "0x03F8",
                    "Memory32Fixed",
                ] {
                    assert!(
                        dsl.contains(needle),
                        "DSDT disassembly lacks {needle}:\n{dsl}"
                    );
                }
            }
        }
    }
}
