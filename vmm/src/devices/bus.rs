//! An address bus: non-overlapping ranges, each owned by one device. One instance routes port
//! I/O, another MMIO. The bus is built before the vCPUs start and is read-only afterwards;
//! each device sits behind its own mutex.

use std::sync::{Arc, Mutex};

/// A device on a bus. Offsets are relative to the start of the device's range.
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("the range {base:#x}+{len:#x} overlaps a device already on the bus")]
    Overlap { base: u64, len: u64 },
    #[error("a device range cannot be empty")]
    Empty,
}

struct Range {
    base: u64,
    len: u64,
    device: Arc<Mutex<dyn BusDevice>>,
}

/// See the module documentation.
#[derive(Default)]
pub struct Bus {
    ranges: Vec<Range>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r: Vec<_> = self.ranges.iter().map(|r| (r.base, r.len)).collect();
        f.debug_struct("Bus").field("ranges", &r).finish()
    }
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `device` at [base, base + len).
    pub fn insert(
        &mut self,
        device: Arc<Mutex<dyn BusDevice>>,
        base: u64,
        len: u64,
    ) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::Empty);
        }
        if self
            .ranges
            .iter()
            .any(|r| base < r.base + r.len && r.base < base + len)
        {
            return Err(BusError::Overlap { base, len });
        }
        self.ranges.push(Range { base, len, device });
        self.ranges.sort_by_key(|r| r.base);
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<(&Range, u64)> {
        let idx = self
            .ranges
            .partition_point(|r| r.base <= addr)
            .checked_sub(1)?;
        let r = &self.ranges[idx];
        (addr - r.base < r.len).then_some((r, addr - r.base))
    }

    /// Reads from the device at `addr`; `false` (data left untouched) if there is none.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        let Some((r, off)) = self.find(addr) else {
            return false;
        };
        r.device
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .read(off, data);
        true
    }

    /// Writes to the device at `addr`; `false` if there is none.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        let Some((r, off)) = self.find(addr) else {
            return false;
        };
        r.device
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .write(off, data);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        writes: Vec<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn routes_by_range_and_offset() {
        let a = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = Bus::new();
        bus.insert(a.clone(), 0x3f8, 8).expect("insert");
        bus.insert(Arc::new(Mutex::new(Recorder::default())), 0x60, 5)
            .expect("insert");
        assert_eq!(
            bus.insert(Arc::new(Mutex::new(Recorder::default())), 0x3fc, 8),
            Err(BusError::Overlap {
                base: 0x3fc,
                len: 8
            })
        );
        let mut d = [0u8; 1];
        assert!(bus.read(0x3fd, &mut d));
        assert_eq!(d[0], 5);
        assert!(!bus.read(0x400, &mut d));
        assert!(!bus.read(0x10, &mut d));
        assert!(bus.write(0x3f8, b"x"));
        assert_eq!(a.lock().expect("lock").writes, vec![(0, vec![b'x'])]);
    }
}
