//! The Linux x86 boot protocol on the VMM side: reading the bzImage setup header and building
//! the zero page (`struct boot_params`) with the command line, initramfs, RSDP and e820 map.
//!
//! The zero page is assembled as plain bytes at the offsets documented in the kernel's
//! `Documentation/arch/x86/boot.rst` and `zero-page.rst`, so it needs no unsafe byte casting and
//! can be checked field by field in tests.

use super::layout;

/// Size of the zero page.
pub const ZERO_PAGE_SIZE: usize = 4096;

// Offsets inside the zero page (and, from 0x1f1, inside the bzImage file).
const ACPI_RSDP_ADDR: usize = 0x070;
const EXT_RAMDISK_IMAGE: usize = 0x0c0;
const EXT_RAMDISK_SIZE: usize = 0x0c4;
const EXT_CMD_LINE_PTR: usize = 0x0c8;
const E820_ENTRIES: usize = 0x1e8;
const SETUP_HEADER_START: usize = 0x1f1;
const SETUP_SECTS: usize = 0x1f1;
const BOOT_FLAG: usize = 0x1fe;
const JUMP_LEN: usize = 0x201;
const HEADER_MAGIC: usize = 0x202;
const VERSION: usize = 0x206;
const TYPE_OF_LOADER: usize = 0x210;
const LOADFLAGS: usize = 0x211;
const CODE32_START: usize = 0x214;
const RAMDISK_IMAGE: usize = 0x218;
const RAMDISK_SIZE: usize = 0x21c;
const CMD_LINE_PTR: usize = 0x228;
const INITRD_ADDR_MAX: usize = 0x22c;
const KERNEL_ALIGNMENT: usize = 0x230;
const RELOCATABLE_KERNEL: usize = 0x234;
const XLOADFLAGS: usize = 0x236;
const CMDLINE_SIZE: usize = 0x238;
const INIT_SIZE: usize = 0x260;
const E820_TABLE: usize = 0x2d0;
/// The zero page has room for 128 e820 entries of 20 bytes.
pub const E820_MAX_ENTRIES: usize = 128;

const HDRS_MAGIC: u32 = 0x5372_6448; // "HdrS"
const BOOT_FLAG_MAGIC: u16 = 0xaa55;
/// `LOADED_HIGH`: the protected-mode kernel is loaded at 1 MiB.
const LOADFLAGS_LOADED_HIGH: u8 = 0x01;
/// `XLF_KERNEL_64`: the kernel has the 64-bit entry point at load address + 0x200.
const XLF_KERNEL_64: u16 = 0x01;
/// Oldest boot protocol with the fields used here (`init_size`, 64-bit entry): 2.12.
const MIN_BOOT_PROTOCOL: u16 = 0x020c;
/// "Undefined loader": there is no registered id for this VMM.
const LOADER_TYPE_UNDEFINED: u8 = 0xff;

/// e820 entry types.
pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;

/// Errors in the bzImage setup header.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BootParamsError {
    #[error("the kernel image is too small to hold a bzImage setup header")]
    TooSmall,
    #[error("the kernel image has no \"HdrS\" magic: it is not a bzImage")]
    NotBzImage,
    #[error("the kernel's boot protocol {0:#06x} is older than 2.12")]
    ProtocolTooOld(u16),
    #[error("the kernel has no 64-bit entry point (XLF_KERNEL_64 is clear)")]
    No64BitEntry,
    #[error("the kernel is not loaded high (LOADED_HIGH is clear): zImage is not supported")]
    NotLoadedHigh,
    #[error("the command line is {len} bytes with its NUL, the kernel accepts {max}")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("more than {E820_MAX_ENTRIES} e820 entries")]
    TooManyE820Entries,
}

/// The setup header of a bzImage, as the raw bytes from offset 0x1f1 to its end.
#[derive(Debug, Clone)]
pub struct SetupHeader {
    bytes: Vec<u8>,
}

fn read_u16(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

fn read_u32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

impl SetupHeader {
    /// Parses and validates the setup header from the first bytes of a bzImage (at least the
    /// first 1 KiB).
    pub fn parse(image_start: &[u8]) -> Result<Self, BootParamsError> {
        if image_start.len() < INIT_SIZE + 4 {
            return Err(BootParamsError::TooSmall);
        }
        if read_u32(image_start, HEADER_MAGIC) != HDRS_MAGIC {
            return Err(BootParamsError::NotBzImage);
        }
        // The header ends at 0x202 + the byte at 0x201 (the jump's displacement).
        let end = (0x202 + usize::from(image_start[JUMP_LEN])).max(INIT_SIZE + 4);
        if image_start.len() < end {
            return Err(BootParamsError::TooSmall);
        }
        let header = SetupHeader {
            bytes: image_start[SETUP_HEADER_START..end].to_vec(),
        };
        let version = header.version();
        if version < MIN_BOOT_PROTOCOL {
            return Err(BootParamsError::ProtocolTooOld(version));
        }
        if header.xloadflags() & XLF_KERNEL_64 == 0 {
            return Err(BootParamsError::No64BitEntry);
        }
        if header.loadflags() & LOADFLAGS_LOADED_HIGH == 0 {
            return Err(BootParamsError::NotLoadedHigh);
        }
        Ok(header)
    }

    fn u8_at(&self, off: usize) -> u8 {
        self.bytes[off - SETUP_HEADER_START]
    }
    fn u16_at(&self, off: usize) -> u16 {
        read_u16(&self.bytes, off - SETUP_HEADER_START)
    }
    fn u32_at(&self, off: usize) -> u32 {
        read_u32(&self.bytes, off - SETUP_HEADER_START)
    }

    pub fn setup_sects(&self) -> u8 {
        self.u8_at(SETUP_SECTS)
    }
    pub fn version(&self) -> u16 {
        self.u16_at(VERSION)
    }
    pub fn loadflags(&self) -> u8 {
        self.u8_at(LOADFLAGS)
    }
    pub fn xloadflags(&self) -> u16 {
        self.u16_at(XLOADFLAGS)
    }
    pub fn code32_start(&self) -> u32 {
        self.u32_at(CODE32_START)
    }
    pub fn initrd_addr_max(&self) -> u32 {
        self.u32_at(INITRD_ADDR_MAX)
    }
    pub fn kernel_alignment(&self) -> u32 {
        self.u32_at(KERNEL_ALIGNMENT)
    }
    pub fn relocatable(&self) -> bool {
        self.u8_at(RELOCATABLE_KERNEL) != 0
    }
    /// Maximum command line length without the NUL.
    pub fn cmdline_size(&self) -> u32 {
        self.u32_at(CMDLINE_SIZE)
    }
    /// Memory the kernel needs from its load address while it decompresses itself.
    pub fn init_size(&self) -> u32 {
        self.u32_at(INIT_SIZE)
    }
}

/// One e820 map entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// The e820 map for a guest with `mem_size` bytes of RAM laid out by
/// [`super::arch_memory_regions`]: low RAM, the reserved EBDA/ACPI/BIOS area, RAM from 1 MiB
/// to the MMIO hole, and RAM above 4 GiB when there is more than 3 GiB.
pub fn e820_map(mem_size: u64) -> Vec<E820Entry> {
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: layout::EBDA_START,
            kind: E820_RAM,
        },
        E820Entry {
            addr: layout::EBDA_START,
            size: layout::HIMEM_START - layout::EBDA_START,
            kind: E820_RESERVED,
        },
    ];
    let low_end = mem_size.min(layout::MMIO32_START);
    if low_end > layout::HIMEM_START {
        map.push(E820Entry {
            addr: layout::HIMEM_START,
            size: low_end - layout::HIMEM_START,
            kind: E820_RAM,
        });
    }
    if mem_size > layout::MMIO32_START {
        map.push(E820Entry {
            addr: layout::RAM_ABOVE_4G_START,
            size: mem_size - layout::MMIO32_START,
            kind: E820_RAM,
        });
    }
    map
}

/// Where the initramfs goes: page aligned, as high as possible, ending at or below both the
/// top of low RAM and the kernel's `initrd_addr_max`. `None` if it does not fit above the
/// kernel's decompression area.
pub fn initrd_address(mem_size: u64, header: &SetupHeader, initrd_size: u64) -> Option<u64> {
    let low_end = mem_size.min(layout::MMIO32_START);
    let max_end = low_end
        .min(u64::from(header.initrd_addr_max()) + 1)
        .min(layout::INITRD_MAX_END);
    let start = max_end.checked_sub(initrd_size)? & !0xfff;
    let kernel_end = u64::from(header.code32_start()) + u64::from(header.init_size());
    (start >= kernel_end).then_some(start)
}

/// Everything that goes into the zero page besides the setup header.
#[derive(Debug, Clone)]
pub struct BootParamsConfig {
    pub cmdline_addr: u64,
    /// Command line length including its terminating NUL.
    pub cmdline_len: usize,
    pub initrd: Option<(u64, u64)>,
    pub rsdp_addr: u64,
    pub e820: Vec<E820Entry>,
}

/// Builds the zero page: the kernel's setup header copied in at 0x1f1, then the loader fields.
pub fn build_zero_page(
    header: &SetupHeader,
    cfg: &BootParamsConfig,
) -> Result<[u8; ZERO_PAGE_SIZE], BootParamsError> {
    let max = header.cmdline_size() as usize + 1;
    if cfg.cmdline_len > max || cfg.cmdline_len > layout::CMDLINE_MAX_SIZE {
        return Err(BootParamsError::CmdlineTooLong {
            len: cfg.cmdline_len,
            max: max.min(layout::CMDLINE_MAX_SIZE),
        });
    }
    if cfg.e820.len() > E820_MAX_ENTRIES {
        return Err(BootParamsError::TooManyE820Entries);
    }
    let mut zp = [0u8; ZERO_PAGE_SIZE];
    let put = |zp: &mut [u8; ZERO_PAGE_SIZE], off: usize, bytes: &[u8]| {
        zp[off..off + bytes.len()].copy_from_slice(bytes);
    };
    put(&mut zp, SETUP_HEADER_START, &header.bytes);
    put(&mut zp, BOOT_FLAG, &BOOT_FLAG_MAGIC.to_le_bytes());
    put(&mut zp, HEADER_MAGIC, &HDRS_MAGIC.to_le_bytes());
    zp[TYPE_OF_LOADER] = LOADER_TYPE_UNDEFINED;
    // Only LOADED_HIGH stays: no heap (real-mode code is not run), not quiet, keep segments.
    zp[LOADFLAGS] = LOADFLAGS_LOADED_HIGH;

    // 64-bit addresses are split in low halves in the header and high halves in ext_* fields.
    let split = |v: u64| ((v & 0xffff_ffff) as u32, (v >> 32) as u32);
    let (lo, hi) = split(cfg.cmdline_addr);
    put(&mut zp, CMD_LINE_PTR, &lo.to_le_bytes());
    put(&mut zp, EXT_CMD_LINE_PTR, &hi.to_le_bytes());
    if let Some((addr, size)) = cfg.initrd {
        let (lo, hi) = split(addr);
        put(&mut zp, RAMDISK_IMAGE, &lo.to_le_bytes());
        put(&mut zp, EXT_RAMDISK_IMAGE, &hi.to_le_bytes());
        let (lo, hi) = split(size);
        put(&mut zp, RAMDISK_SIZE, &lo.to_le_bytes());
        put(&mut zp, EXT_RAMDISK_SIZE, &hi.to_le_bytes());
    }
    put(&mut zp, ACPI_RSDP_ADDR, &cfg.rsdp_addr.to_le_bytes());
    zp[E820_ENTRIES] = cfg.e820.len() as u8;
    for (i, e) in cfg.e820.iter().enumerate() {
        let off = E820_TABLE + i * 20;
        put(&mut zp, off, &e.addr.to_le_bytes());
        put(&mut zp, off + 8, &e.size.to_le_bytes());
        put(&mut zp, off + 16, &e.kind.to_le_bytes());
    }
    Ok(zp)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal setup header like Debian's 6.1 bzImage (protocol 2.15, xloadflags 0x7f).
    pub(crate) fn fake_bzimage_header() -> Vec<u8> {
        let mut img = vec![0u8; 1024];
        img[SETUP_SECTS] = 27;
        img[JUMP_LEN] = 0x6a; // header ends at 0x26c
        img[HEADER_MAGIC..HEADER_MAGIC + 4].copy_from_slice(b"HdrS");
        img[VERSION..VERSION + 2].copy_from_slice(&0x020fu16.to_le_bytes());
        img[LOADFLAGS] = 0x01;
        img[CODE32_START..CODE32_START + 4].copy_from_slice(&0x10_0000u32.to_le_bytes());
        img[INITRD_ADDR_MAX..INITRD_ADDR_MAX + 4].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
        img[KERNEL_ALIGNMENT..KERNEL_ALIGNMENT + 4].copy_from_slice(&0x20_0000u32.to_le_bytes());
        img[RELOCATABLE_KERNEL] = 1;
        img[XLOADFLAGS..XLOADFLAGS + 2].copy_from_slice(&0x7fu16.to_le_bytes());
        img[CMDLINE_SIZE..CMDLINE_SIZE + 4].copy_from_slice(&2047u32.to_le_bytes());
        img[INIT_SIZE..INIT_SIZE + 4].copy_from_slice(&0x0338_0000u32.to_le_bytes());
        img
    }

    #[test]
    fn parses_debian_like_header() {
        let h = SetupHeader::parse(&fake_bzimage_header()).expect("valid header");
        assert_eq!(h.version(), 0x020f);
        assert_eq!(h.code32_start(), 0x10_0000);
        assert_eq!(h.initrd_addr_max(), 0x7fff_ffff);
        assert_eq!(h.cmdline_size(), 2047);
        assert_eq!(h.init_size(), 0x0338_0000);
        assert_eq!(h.kernel_alignment(), 0x20_0000);
        assert!(h.relocatable());
        assert_eq!(h.setup_sects(), 27);
    }

    #[test]
    fn rejects_bad_headers() {
        let mut img = fake_bzimage_header();
        img[HEADER_MAGIC] = b'X';
        assert_eq!(
            SetupHeader::parse(&img).unwrap_err(),
            BootParamsError::NotBzImage
        );
        let mut img = fake_bzimage_header();
        img[VERSION..VERSION + 2].copy_from_slice(&0x0206u16.to_le_bytes());
        assert_eq!(
            SetupHeader::parse(&img).unwrap_err(),
            BootParamsError::ProtocolTooOld(0x206)
        );
        let mut img = fake_bzimage_header();
        img[XLOADFLAGS] = 0;
        assert_eq!(
            SetupHeader::parse(&img).unwrap_err(),
            BootParamsError::No64BitEntry
        );
        assert_eq!(
            SetupHeader::parse(&[0u8; 100]).unwrap_err(),
            BootParamsError::TooSmall
        );
    }

    #[test]
    fn e820_small_guest() {
        let map = e820_map(256 << 20);
        assert_eq!(
            map,
            vec![
                E820Entry {
                    addr: 0,
                    size: 0x9fc00,
                    kind: E820_RAM
                },
                E820Entry {
                    addr: 0x9fc00,
                    size: 0x100000 - 0x9fc00,
                    kind: E820_RESERVED
                },
                E820Entry {
                    addr: 0x100000,
                    size: (256 << 20) - 0x100000,
                    kind: E820_RAM
                },
            ]
        );
        // The ACPI tables and the RSDP lie in the reserved range.
        let reserved = map[1];
        assert!(layout::ACPI_TABLES_START >= reserved.addr);
        assert!(layout::RSDP_ADDR + 36 <= reserved.addr + reserved.size);
    }

    #[test]
    fn e820_splits_around_mmio_hole() {
        let mem = 4u64 << 30;
        let map = e820_map(mem);
        assert_eq!(map.len(), 4);
        assert_eq!(map[2].addr + map[2].size, layout::MMIO32_START);
        assert_eq!(
            map[3],
            E820Entry {
                addr: 1 << 32,
                size: 1 << 30,
                kind: E820_RAM
            }
        );
        let ram: u64 = map
            .iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum();
        assert_eq!(ram, mem - (layout::HIMEM_START - layout::EBDA_START));
    }

    #[test]
    fn initrd_goes_high_and_respects_limits() {
        let h = SetupHeader::parse(&fake_bzimage_header()).expect("valid header");
        let size = 5 << 20;
        let addr = initrd_address(256 << 20, &h, size).expect("fits");
        assert_eq!(addr % 4096, 0);
        assert!(addr + size <= 256 << 20);
        assert!(
            addr + size > (256 << 20) - 4096,
            "placed as high as possible"
        );
        // With 3 GiB of RAM it still ends below initrd_addr_max (2 GiB).
        let addr = initrd_address(3 << 30, &h, size).expect("fits");
        assert!(addr + size <= 0x8000_0000);
        // Too big to fit above the kernel's decompression area.
        assert_eq!(initrd_address(64 << 20, &h, 40 << 20), None);
    }

    #[test]
    fn zero_page_fields() {
        let h = SetupHeader::parse(&fake_bzimage_header()).expect("valid header");
        let cfg = BootParamsConfig {
            cmdline_addr: layout::CMDLINE_START,
            cmdline_len: 30,
            initrd: Some((0x0f00_0000, 0x12345)),
            rsdp_addr: layout::RSDP_ADDR,
            e820: e820_map(256 << 20),
        };
        let zp = build_zero_page(&h, &cfg).expect("valid config");
        assert_eq!(read_u16(&zp, BOOT_FLAG), 0xaa55);
        assert_eq!(&zp[HEADER_MAGIC..HEADER_MAGIC + 4], b"HdrS");
        assert_eq!(read_u16(&zp, VERSION), 0x020f);
        assert_eq!(zp[TYPE_OF_LOADER], 0xff);
        assert_eq!(zp[LOADFLAGS], 0x01);
        assert_eq!(read_u32(&zp, CMD_LINE_PTR), 0x20000);
        assert_eq!(read_u32(&zp, RAMDISK_IMAGE), 0x0f00_0000);
        assert_eq!(read_u32(&zp, RAMDISK_SIZE), 0x12345);
        assert_eq!(read_u32(&zp, EXT_RAMDISK_IMAGE), 0);
        assert_eq!(
            u64::from_le_bytes(zp[0x70..0x78].try_into().expect("8 bytes")),
            0xe0000
        );
        assert_eq!(zp[E820_ENTRIES], 3);
        let third = E820_TABLE + 2 * 20;
        assert_eq!(
            u64::from_le_bytes(zp[third..third + 8].try_into().expect("8")),
            0x100000
        );
        assert_eq!(read_u32(&zp, third + 16), E820_RAM);
    }

    #[test]
    fn zero_page_rejects_long_cmdline() {
        let h = SetupHeader::parse(&fake_bzimage_header()).expect("valid header");
        let cfg = BootParamsConfig {
            cmdline_addr: layout::CMDLINE_START,
            cmdline_len: 2049,
            initrd: None,
            rsdp_addr: layout::RSDP_ADDR,
            e820: vec![],
        };
        assert!(matches!(
            build_zero_page(&h, &cfg),
            Err(BootParamsError::CmdlineTooLong {
                len: 2049,
                max: 2048
            })
        ));
    }
}
