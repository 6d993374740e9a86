//! The virtio-mmio transport, version 2 (virtio 1.2 §4.2.2): a 4 KiB register window per
//! device. It keeps the registers and the queue configuration the driver writes; on
//! DRIVER_OK it hands copies of the queues to the device and kicks every queue once (a notify
//! may have come before the device started). Queue notifications normally never reach this
//! code: KVM signals the queue's ioeventfd directly. Interrupts are raised by the device
//! through its [`super::IrqLine`]; this window only shows and acknowledges InterruptStatus.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::{status, VirtioDevice};
use crate::devices::BusDevice;

/// Register offsets.
mod reg {
    pub const MAGIC: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_AVAIL_LOW: u64 = 0x090;
    pub const QUEUE_AVAIL_HIGH: u64 = 0x094;
    pub const QUEUE_USED_LOW: u64 = 0x0a0;
    pub const QUEUE_USED_HIGH: u64 = 0x0a4;
    // 0x0fc ConfigGeneration reads 0: the configuration never changes.
    pub const CONFIG: u64 = 0x100;
}

/// "virt", little-endian.
const MAGIC: u32 = 0x7472_6976;
const VERSION: u32 = 2;
/// Not a PCI vendor: the same "unassigned" id Firecracker reports.
const VENDOR_ID: u32 = 0;
/// Offset of QueueNotify, where the ioeventfds are registered.
pub const QUEUE_NOTIFY_OFFSET: u64 = reg::QUEUE_NOTIFY;

/// See the module documentation.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    interrupt_status: Arc<AtomicU32>,
    /// Written once after activation so the device looks at queues notified too early.
    queue_evts: Vec<EventFd>,
    queues: Vec<Queue>,
    device_features_sel: u32,
    driver_features_sel: u32,
    acked_features: u64,
    queue_sel: u32,
    status: u32,
    activated: bool,
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("status", &self.status)
            .field("activated", &self.activated)
            .finish_non_exhaustive()
    }
}

impl MmioTransport {
    /// A transport for `device`, whose InterruptStatus is `interrupt_status` and whose queue
    /// notifications arrive on `queue_evts` (one per queue, in order).
    pub fn new(
        device: Arc<Mutex<dyn VirtioDevice>>,
        interrupt_status: Arc<AtomicU32>,
        queue_evts: Vec<EventFd>,
    ) -> Self {
        let queues = Self::fresh_queues(&device);
        Self {
            device,
            interrupt_status,
            queue_evts,
            queues,
            device_features_sel: 0,
            driver_features_sel: 0,
            acked_features: 0,
            queue_sel: 0,
            status: 0,
            activated: false,
        }
    }

    fn fresh_queues(device: &Arc<Mutex<dyn VirtioDevice>>) -> Vec<Queue> {
        let dev = device.lock().unwrap_or_else(PoisonError::into_inner);
        dev.queue_max_sizes()
            .iter()
            .map(|&max| Queue::new(max).expect("queue sizes are powers of two below 32768"))
            .collect()
    }

    fn device(&self) -> std::sync::MutexGuard<'_, dyn VirtioDevice + 'static> {
        self.device.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The driver status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// Queue registers may change only between FEATURES_OK and DRIVER_OK.
    fn queue_config_allowed(&self) -> bool {
        self.status & status::FEATURES_OK != 0 && self.status & status::DRIVER_OK == 0
    }

    fn read_reg(&mut self, offset: u64) -> u32 {
        match offset {
            reg::MAGIC => MAGIC,
            reg::VERSION => VERSION,
            reg::DEVICE_ID => self.device().device_type(),
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => {
                let features = self.device().features();
                match self.device_features_sel {
                    0 => features as u32,
                    1 => (features >> 32) as u32,
                    _ => 0,
                }
            }
            reg::QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            reg::QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            reg::INTERRUPT_STATUS => self.interrupt_status.load(Ordering::SeqCst),
            reg::STATUS => self.status,
            // CONFIG_GENERATION: the configuration never changes; other offsets read 0.
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        let config_ok = self.queue_config_allowed();
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = v,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            reg::DRIVER_FEATURES
                if self.status & status::DRIVER != 0 && self.status & status::FEATURES_OK == 0 =>
            {
                // Only what the device offers can be acknowledged.
                let offered = self.device().features();
                let v = u64::from(v);
                match self.driver_features_sel {
                    0 => self.acked_features = (self.acked_features & !0xffff_ffff) | v,
                    1 => self.acked_features = (self.acked_features & 0xffff_ffff) | (v << 32),
                    _ => {}
                }
                self.acked_features &= offered;
            }
            reg::QUEUE_SEL => self.queue_sel = v,
            reg::QUEUE_NUM if config_ok => {
                if let Some(q) = self.selected_queue() {
                    q.set_size(v as u16);
                }
            }
            reg::QUEUE_READY if config_ok => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(v == 1);
                }
            }
            reg::QUEUE_DESC_LOW | reg::QUEUE_DESC_HIGH if config_ok => {
                let (lo, hi) = split(offset == reg::QUEUE_DESC_LOW, v);
                if let Some(q) = self.selected_queue() {
                    q.set_desc_table_address(lo, hi);
                }
            }
            reg::QUEUE_AVAIL_LOW | reg::QUEUE_AVAIL_HIGH if config_ok => {
                let (lo, hi) = split(offset == reg::QUEUE_AVAIL_LOW, v);
                if let Some(q) = self.selected_queue() {
                    q.set_avail_ring_address(lo, hi);
                }
            }
            reg::QUEUE_USED_LOW | reg::QUEUE_USED_HIGH if config_ok => {
                let (lo, hi) = split(offset == reg::QUEUE_USED_LOW, v);
                if let Some(q) = self.selected_queue() {
                    q.set_used_ring_address(lo, hi);
                }
            }
            reg::QUEUE_NOTIFY => {
                // Only reached without an ioeventfd (unit tests, or a write of another width).
                if let Some(evt) = self.queue_evts.get(v as usize) {
                    let _ = evt.write(1);
                }
            }
            reg::INTERRUPT_ACK => {
                self.interrupt_status.fetch_and(!v, Ordering::SeqCst);
            }
            reg::STATUS => self.write_status(v),
            _ => {}
        }
    }

    fn write_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        // Bits are only ever added, in the order the spec gives; anything else is ignored.
        if v & self.status != self.status {
            return;
        }
        let added = v & !self.status;
        let allowed = match self.status & !status::FAILED {
            0 => status::ACKNOWLEDGE,
            s if s == status::ACKNOWLEDGE => status::DRIVER,
            s if s == status::ACKNOWLEDGE | status::DRIVER => status::FEATURES_OK,
            s if s == status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK => {
                status::DRIVER_OK
            }
            _ => 0,
        } | status::FAILED;
        if added & !allowed != 0 {
            return;
        }
        self.status = v;
        if added & status::DRIVER_OK != 0 && !self.activated {
            self.activate();
        }
    }

    fn activate(&mut self) {
        let mut queues = Vec::with_capacity(self.queues.len());
        for q in &self.queues {
            match Queue::try_from(q.state()) {
                Ok(copy) => queues.push(copy),
                Err(_) => {
                    self.status |= status::DEVICE_NEEDS_RESET;
                    return;
                }
            }
        }
        let acked = self.acked_features;
        if self.device().activate(acked, queues).is_err() {
            self.status |= status::DEVICE_NEEDS_RESET;
            return;
        }
        self.activated = true;
        for evt in &self.queue_evts {
            let _ = evt.write(1);
        }
    }

    fn reset(&mut self) {
        if self.activated {
            self.device().reset();
        }
        self.activated = false;
        self.status = 0;
        self.acked_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.interrupt_status.store(0, Ordering::SeqCst);
        self.queues = Self::fresh_queues(&self.device);
    }
}

/// (low, high) halves for the queue address setters.
fn split(low: bool, v: u32) -> (Option<u32>, Option<u32>) {
    if low {
        (Some(v), None)
    } else {
        (None, Some(v))
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= reg::CONFIG {
            self.device().read_config(offset - reg::CONFIG, data);
            return;
        }
        if data.len() != 4 {
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        // Device configuration (the guest CID) is read-only; registers are 32-bit.
        if offset >= reg::CONFIG {
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return;
        };
        self.write_reg(offset, u32::from_le_bytes(bytes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::{ActivateError, VIRTIO_F_VERSION_1};

    #[derive(Default)]
    struct Fake {
        activated: Option<(u64, usize)>,
        resets: usize,
    }

    impl VirtioDevice for Fake {
        fn device_type(&self) -> u32 {
            19
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[256, 256, 256]
        }
        fn features(&self) -> u64 {
            VIRTIO_F_VERSION_1
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            let cfg = 3u64.to_le_bytes();
            for (i, b) in data.iter_mut().enumerate() {
                *b = cfg.get(offset as usize + i).copied().unwrap_or(0);
            }
        }
        fn activate(&mut self, acked: u64, queues: Vec<Queue>) -> Result<(), ActivateError> {
            self.activated = Some((acked, queues.iter().filter(|q| q.ready()).count()));
            Ok(())
        }
        fn reset(&mut self) {
            self.resets += 1;
        }
    }

    fn rd(t: &mut MmioTransport, off: u64) -> u32 {
        let mut d = [0u8; 4];
        t.read(off, &mut d);
        u32::from_le_bytes(d)
    }

    fn wr(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    #[test]
    fn linux_driver_sequence_activates_the_device() {
        let dev = Arc::new(Mutex::new(Fake::default()));
        let evts: Vec<EventFd> = (0..3)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"))
            .collect();
        let kicks: Vec<EventFd> = evts.iter().map(|e| e.try_clone().expect("clone")).collect();
        let irq = Arc::new(AtomicU32::new(0));
        let mut t = MmioTransport::new(dev.clone(), irq.clone(), evts);
        assert_eq!(rd(&mut t, reg::MAGIC), MAGIC);
        assert_eq!(rd(&mut t, reg::VERSION), 2);
        assert_eq!(rd(&mut t, reg::DEVICE_ID), 19);
        wr(&mut t, reg::STATUS, status::ACKNOWLEDGE);
        wr(&mut t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        wr(&mut t, reg::DEVICE_FEATURES_SEL, 1);
        assert_eq!(rd(&mut t, reg::DEVICE_FEATURES), 1);
        wr(&mut t, reg::DEVICE_FEATURES_SEL, 0);
        assert_eq!(rd(&mut t, reg::DEVICE_FEATURES), 0);
        wr(&mut t, reg::DRIVER_FEATURES_SEL, 1);
        wr(&mut t, reg::DRIVER_FEATURES, 1 | 2); // bit 33 is not offered: dropped.
        let feat = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        wr(&mut t, reg::STATUS, feat);
        assert_eq!(rd(&mut t, reg::STATUS), feat);
        for q in 0..3u32 {
            wr(&mut t, reg::QUEUE_SEL, q);
            assert_eq!(rd(&mut t, reg::QUEUE_READY), 0);
            assert_eq!(rd(&mut t, reg::QUEUE_NUM_MAX), 256);
            wr(&mut t, reg::QUEUE_NUM, 128);
            let base = 0x10_0000 + q * 0x1_0000;
            wr(&mut t, reg::QUEUE_DESC_LOW, base);
            wr(&mut t, reg::QUEUE_DESC_HIGH, 0);
            wr(&mut t, reg::QUEUE_AVAIL_LOW, base + 0x1000);
            wr(&mut t, reg::QUEUE_AVAIL_HIGH, 0);
            wr(&mut t, reg::QUEUE_USED_LOW, base + 0x2000);
            wr(&mut t, reg::QUEUE_USED_HIGH, 0);
            wr(&mut t, reg::QUEUE_READY, 1);
            assert_eq!(rd(&mut t, reg::QUEUE_READY), 1);
        }
        wr(&mut t, reg::QUEUE_SEL, 7);
        assert_eq!(rd(&mut t, reg::QUEUE_NUM_MAX), 0, "absent queue");
        wr(&mut t, reg::STATUS, feat | status::DRIVER_OK);
        assert_eq!(
            dev.lock().expect("lock").activated,
            Some((VIRTIO_F_VERSION_1, 3))
        );
        for k in &kicks {
            assert_eq!(k.read().expect("kicked after activation"), 1);
        }
        // Config space: the guest CID, readable in pieces.
        let mut cid = [0u8; 8];
        t.read(0x100, &mut cid);
        assert_eq!(u64::from_le_bytes(cid), 3);
        // Interrupt status is shown and acknowledged bit by bit.
        irq.store(3, Ordering::SeqCst);
        assert_eq!(rd(&mut t, reg::INTERRUPT_STATUS), 3);
        wr(&mut t, reg::INTERRUPT_ACK, 1);
        assert_eq!(rd(&mut t, reg::INTERRUPT_STATUS), 2);
        // Reset.
        wr(&mut t, reg::STATUS, 0);
        assert_eq!(rd(&mut t, reg::STATUS), 0);
        assert_eq!(dev.lock().expect("lock").resets, 1);
        wr(&mut t, reg::QUEUE_SEL, 0);
        assert_eq!(rd(&mut t, reg::QUEUE_READY), 0);
    }

    #[test]
    fn out_of_order_status_and_early_queue_writes_are_ignored() {
        let dev = Arc::new(Mutex::new(Fake::default()));
        let mut t = MmioTransport::new(dev.clone(), Arc::new(AtomicU32::new(0)), vec![]);
        wr(&mut t, reg::STATUS, status::DRIVER_OK);
        assert_eq!(rd(&mut t, reg::STATUS), 0);
        wr(&mut t, reg::STATUS, status::ACKNOWLEDGE);
        wr(&mut t, reg::QUEUE_READY, 1); // before FEATURES_OK
        assert_eq!(rd(&mut t, reg::QUEUE_READY), 0);
        wr(
            &mut t,
            reg::STATUS,
            status::ACKNOWLEDGE | status::FEATURES_OK,
        );
        assert_eq!(rd(&mut t, reg::STATUS), status::ACKNOWLEDGE);
        // Odd widths read as zero and write nothing.
        let mut b = [0xffu8; 2];
        t.read(reg::MAGIC, &mut b);
        assert_eq!(b, [0, 0]);
        t.write(reg::STATUS, &[0]);
        assert_eq!(rd(&mut t, reg::STATUS), status::ACKNOWLEDGE);
        assert!(dev.lock().expect("lock").activated.is_none());
    }
}
