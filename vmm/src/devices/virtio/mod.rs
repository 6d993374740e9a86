//! virtio devices and their transport. The guest finds each device through an ACPI `LNRO0005`
//! node (virtio-mmio, version 2: [`mmio`]); today the only device is virtio-vsock ([`vsock`]),
//! whose host side is Unix sockets.
//!
//! The split follows rust-vmm's vmm-reference: the transport only keeps registers and queue
//! configuration, the device owns the activated queues and processes them on the event thread,
//! and the processing itself works on any guest memory, so it is unit-tested on plain memory.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

pub mod mmio;
pub mod vsock;

/// Feature bit 32: the device speaks virtio 1.0+ (Linux refuses a version-2 mmio device
/// without it).
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Device status bits (virtio 1.2 §2.1).
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    pub const FAILED: u32 = 0x80;
}

/// InterruptStatus bit: a used ring changed.
pub const INT_USED_RING: u32 = 1;

/// A device's interrupt line: the InterruptStatus register the transport shows and acks, and
/// the irqfd that injects the edge.
#[derive(Debug)]
pub struct IrqLine {
    status: Arc<AtomicU32>,
    evt: EventFd,
}

impl IrqLine {
    pub fn new(evt: EventFd) -> Self {
        Self {
            status: Arc::new(AtomicU32::new(0)),
            evt,
        }
    }

    /// The InterruptStatus register, shared with the transport.
    pub fn status(&self) -> Arc<AtomicU32> {
        self.status.clone()
    }

    /// Tells the guest a used ring changed: the status bit first, then the edge, so the
    /// guest's handler always finds the bit set.
    pub fn trigger_used(&self) {
        self.status.fetch_or(INT_USED_RING, Ordering::SeqCst);
        // An eventfd write fails only when the counter would overflow, which means the
        // interrupt is pending anyway.
        let _ = self.evt.write(1);
    }
}

/// Why a device refused to start.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ActivateError {
    #[error("the driver configured {got} queues, the device needs {want}")]
    QueueCount { got: usize, want: usize },
    #[error("queue {0} is not ready or its rings lie outside guest memory")]
    BadQueue(usize),
}

/// What the transport needs from a device.
pub trait VirtioDevice: Send {
    /// The virtio device id (19 = vsock).
    fn device_type(&self) -> u32;
    /// The largest size of each queue.
    fn queue_max_sizes(&self) -> &[u16];
    /// The features the device offers.
    fn features(&self) -> u64;
    /// Reads device configuration space at `offset` (from 0x100 of the window).
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// The driver set DRIVER_OK: take the configured queues and start.
    ///
    /// # Errors
    /// [`ActivateError`] when the queues are unusable; the transport then reports
    /// DEVICE_NEEDS_RESET.
    fn activate(&mut self, acked_features: u64, queues: Vec<Queue>) -> Result<(), ActivateError>;
    /// The driver wrote status 0: drop the queues and every connection.
    fn reset(&mut self);
}
