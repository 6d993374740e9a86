//! Guest RAM: anonymous mmap regions from vm-memory, laid out by
//! [`crate::arch::x86_64::arch_memory_regions`].

use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::arch::x86_64::arch_memory_regions;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot allocate {mib} MiB of guest memory")]
    Allocate {
        mib: u64,
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
}

/// Allocates `mem_size` bytes of guest RAM.
pub fn create_guest_memory(mem_size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let ranges: Vec<(GuestAddress, usize)> = arch_memory_regions(mem_size)
        .into_iter()
        .map(|(start, len)| (GuestAddress(start), len as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).map_err(|source| MemoryError::Allocate {
        mib: mem_size >> 20,
        source,
    })
}
