//! The virtio-vsock device: moves packets between the guest's descriptor chains and the
//! [`Muxer`]. The event thread drives it through [`super::handler::VsockHandler`].
//!
//! TX (guest→host) chains are always consumed: a packet is parsed with virtio-vsock's
//! `VsockPacket`; its payload — with those of the same connection's RW packets next in the
//! ring, up to [`TX_RUN`], in one write — is written by the muxer straight from guest memory to
//! the connection's stream when it can go at once (`Muxer::send_direct`), otherwise copied out
//! and handed to the muxer; a chain that does not parse is returned unused (the guest driver never
//! builds one; a hostile guest only loses its own packet). RX chains are filled only while the
//! muxer has something to say, the payload read from the stream straight into the chains' data
//! buffers, up to [`RX_BATCH`] chains with one receive; chains it cannot use now are put back.
//!
//! What a TX packet gives the guest to hear (a credit update above all: the guest's sender
//! may be waiting for it) goes into RX chains, with an interrupt, before the next TX chain is
//! taken, not after the whole batch: the guest fills its next packets while this thread
//! writes the rest of the batch.
//!
//! The end of a stream (the guest's RST, or its SHUTDOWN of both directions: its close, which
//! returns at once) is handled after the rest of the batch, once the guest has heard what
//! that brought: a guest that closes one connection and opens the next at once gets its
//! RESPONSE before the old socket's shutdown and close run (measured: the bench's vsock open
//! 105–109 µs → 37–50 µs). A later packet of the same stream never passes its end.
//!
//! Each call handles at most [`CHAINS_PER_EVENT`] chains of a queue, so a guest that refills a
//! queue as fast as it is served cannot keep the event thread (and the console, and other
//! devices) to itself; [`VsockDevice::take_leftover`] tells the handler to come back.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use virtio_vsock::packet::{VsockPacket, PKT_HEADER_SIZE};
use vm_memory::{Bytes, GuestMemoryMmap, VolatileSlice};

use super::defs::{DEVICE_ID, QUEUE_SIZE, RX_QUEUE, TX_QUEUE};
use super::muxer::Muxer;
use super::packet::{op, Header, MAX_PKT_DATA, SHUTDOWN_RCV, SHUTDOWN_SEND};
use crate::devices::virtio::{ActivateError, IrqLine, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::metrics::METRICS;

/// Chains of one queue handled per call; the rest wait for the handler's next round (a
/// quarter of the queue: the console and the other queue wait no longer than they did).
pub const CHAINS_PER_EVENT: usize = QUEUE_SIZE as usize / 4;

/// RX chains one read of a connection may fill: sixteen of Linux's 4 KiB RX buffers hold the
/// largest packet, [`MAX_PKT_DATA`].
pub const RX_BATCH: usize = 16;

/// A connection's TX packets next in the ring written with one `writev` at most: with Linux's
/// 64 KiB packets, 1 MiB (the bulk window).
pub const TX_RUN: usize = 16;

/// Whether `a` and `b` are packets of the same stream (addresses, ports, type).
fn same_stream(a: &Header, b: &Header) -> bool {
    (a.src_cid, a.dst_cid, a.src_port, a.dst_port, a.type_)
        == (b.src_cid, b.dst_cid, b.src_port, b.dst_port, b.type_)
}

/// Whether `h` ends its stream: RST, or SHUTDOWN of both directions (a guest's close).
fn is_end(h: &Header) -> bool {
    h.op == op::RST
        || (h.op == op::SHUTDOWN
            && h.flags & (SHUTDOWN_RCV | SHUTDOWN_SEND) == SHUTDOWN_RCV | SHUTDOWN_SEND)
}

/// A TX packet copied out of guest memory (into `buf`) and handed to the muxer.
fn copy_out<B: vm_memory::bitmap::BitmapSlice>(
    muxer: &mut Muxer,
    buf: &mut Vec<u8>,
    hdr: &Header,
    data: Option<&VolatileSlice<'_, B>>,
) {
    buf.clear();
    if let Some(data) = data {
        buf.resize(data.len(), 0);
        if data.read_slice(buf, 0).is_err() {
            buf.clear();
        }
    }
    muxer.send_pkt(hdr, buf);
}

/// See the module documentation.
#[derive(Debug)]
pub struct VsockDevice {
    cid: u64,
    mem: GuestMemoryMmap,
    /// Empty until the driver activates the device.
    queues: Vec<Queue>,
    irq: IrqLine,
    muxer: Muxer,
    tx_buf: Vec<u8>,
    /// A call stopped at [`CHAINS_PER_EVENT`] with chains left: (TX, RX).
    leftover: (bool, bool),
}

impl VsockDevice {
    pub fn new(cid: u64, mem: GuestMemoryMmap, irq: IrqLine, muxer: Muxer) -> Self {
        Self {
            cid,
            mem,
            queues: Vec::new(),
            irq,
            muxer,
            tx_buf: Vec::with_capacity(MAX_PKT_DATA as usize),
            leftover: (false, false),
        }
    }

    pub fn muxer(&self) -> &Muxer {
        &self.muxer
    }

    pub fn is_active(&self) -> bool {
        !self.queues.is_empty()
    }

    /// Whether TX and RX work was left for later by the per-call budget (and forgets it).
    pub fn take_leftover(&mut self) -> (bool, bool) {
        std::mem::take(&mut self.leftover)
    }

    /// Consumes every TX chain; true if the used ring changed.
    ///
    /// A stream's end (RST, or SHUTDOWN of both directions) waits until the chains after it
    /// are handled and the guest has heard what they brought (see the module documentation);
    /// a packet of the same stream never passes it.
    pub fn process_tx(&mut self) -> bool {
        if self.queues.get(TX_QUEUE).is_none() {
            return false;
        }
        let mut used = false;
        let mut budget = CHAINS_PER_EVENT;
        // Ends of streams held back, in ring order, and whether a packet came after them.
        let mut ends: Vec<Header> = Vec::new();
        let mut after_ends = false;
        loop {
            if used
                && self.muxer.has_pending_rx()
                && self.queues[TX_QUEUE]
                    .avail_idx(&self.mem, Ordering::Acquire)
                    .is_ok_and(|a| a.0 != self.queues[TX_QUEUE].next_avail())
                && self.process_rx()
            {
                // Early, with the TX chains used so far, since more follow (see the module
                // docs).
                self.signal_used();
                used = false;
            }
            let q = &mut self.queues[TX_QUEUE];
            let Some(mut chain) = q.pop_descriptor_chain(&self.mem) else {
                break;
            };
            if budget == 0 {
                q.go_to_previous_position();
                self.leftover.0 = true;
                break;
            }
            budget -= 1;
            let head = chain.head_index();
            let Ok(pkt) = VsockPacket::from_tx_virtq_chain(&self.mem, &mut chain, MAX_PKT_DATA)
            else {
                // A failure here means the rings themselves are bad; the guest's problem.
                let _ = q.add_used(&self.mem, head, 0);
                used = true;
                continue;
            };
            let hdr = Header::from_packet(&pkt);
            if ends.iter().any(|e| same_stream(e, &hdr)) {
                for e in ends.drain(..) {
                    self.muxer.send_pkt(&e, &[]);
                }
            }
            if is_end(&hdr) && pkt.data_slice().is_none() {
                ends.push(hdr);
                let _ = q.add_used(&self.mem, head, 0);
                used = true;
                continue;
            }
            after_ends |= !ends.is_empty();
            let Some(data) = pkt.data_slice().copied().filter(|_| hdr.op == op::RW) else {
                copy_out(&mut self.muxer, &mut self.tx_buf, &hdr, pkt.data_slice());
                let _ = q.add_used(&self.mem, head, 0);
                used = true;
                continue;
            };
            // This connection's RW packets next in the ring join this one, to go with one
            // write (see `iov::send_from`); a packet alone allocates nothing.
            let mut run = Vec::new();
            while run.len() + 1 < TX_RUN && budget > 0 {
                let Some(mut next) = q.pop_descriptor_chain(&self.mem) else {
                    break;
                };
                let head = next.head_index();
                let same = VsockPacket::from_tx_virtq_chain(&self.mem, &mut next, MAX_PKT_DATA)
                    .ok()
                    .and_then(|p| {
                        let h = Header::from_packet(&p);
                        let d = p.data_slice().copied()?;
                        (h.op == op::RW && same_stream(&h, &hdr)).then_some((head, h, d))
                    });
                let Some(joins) = same else {
                    q.go_to_previous_position();
                    break;
                };
                budget -= 1;
                run.push(joins);
            }
            // Straight from guest memory to the stream where they can go at once, else one by
            // one, copied out.
            if run.is_empty() {
                if !self.muxer.send_direct(&hdr, std::slice::from_ref(&data)) {
                    copy_out(&mut self.muxer, &mut self.tx_buf, &hdr, Some(&data));
                }
                let _ = q.add_used(&self.mem, head, 0);
                used = true;
                continue;
            }
            run.insert(0, (head, hdr, data));
            let payloads: Vec<VolatileSlice<'_, _>> = run.iter().map(|r| r.2).collect();
            if !self.muxer.send_direct(&run[run.len() - 1].1, &payloads) {
                for (_, hdr, data) in &run {
                    if !self.muxer.send_direct(hdr, std::slice::from_ref(data)) {
                        copy_out(&mut self.muxer, &mut self.tx_buf, hdr, Some(data));
                    }
                }
            }
            for (head, ..) in run {
                let _ = q.add_used(&self.mem, head, 0);
            }
            used = true;
        }
        if !ends.is_empty() {
            // What came after the ends reaches the guest first (a guest that closes one
            // connection and opens the next at once hears its RESPONSE before the old one's
            // socket is shut and closed).
            if after_ends {
                self.process_rx();
                self.signal_used();
                used = false;
            }
            for e in ends {
                self.muxer.send_pkt(&e, &[]);
            }
        }
        used
    }

    /// Fills RX chains while the muxer has packets; true if the used ring changed.
    ///
    /// Up to [`RX_BATCH`] chains are taken at a time and a connection's bytes are read into
    /// all their data buffers with one receive (`RxBuf` over several slices): a packet that
    /// fills more than the first chain is cut at the chains' bounds into several RW packets
    /// with the same header but their lengths, in ring order, as if the connection had been
    /// read once per chain. Chains taken and not filled go back to the ring at the end.
    pub fn process_rx(&mut self) -> bool {
        let Self {
            queues,
            mem,
            muxer,
            leftover,
            ..
        } = self;
        let Some(q) = queues.get_mut(RX_QUEUE) else {
            return false;
        };
        let mut used = false;
        let mut budget = CHAINS_PER_EVENT;
        // Chains taken, not yet filled, in ring order: the head and the packet (`None`: the
        // chain does not parse and is returned unused).
        let mut taken = VecDeque::with_capacity(RX_BATCH);
        while muxer.has_pending_rx() {
            if budget == 0 {
                leftover.1 = true;
                break;
            }
            while taken.len() < RX_BATCH.min(budget) {
                let Some(mut chain) = q.pop_descriptor_chain(&*mem) else {
                    break;
                };
                let head = chain.head_index();
                let pkt = VsockPacket::from_rx_virtq_chain(&*mem, &mut chain, MAX_PKT_DATA).ok();
                taken.push_back((head, pkt));
            }
            let Some((head, first)) = taken.front() else {
                break;
            };
            if first.is_none() {
                let _ = q.add_used(&*mem, *head, 0);
                taken.pop_front();
                budget -= 1;
                used = true;
                continue;
            }
            // The data buffers of the parsed chains in front, in ring order (none when the
            // first chain has no data buffer: it can carry a header alone).
            let mut bufs: Vec<_> = taken
                .iter()
                .map_while(|(_, p)| p.as_ref()?.data_slice())
                .map_while(|d| d.subslice(0, d.len().min(MAX_PKT_DATA as usize)).ok())
                .take_while(|d| !d.is_empty())
                .collect();
            let Some(h) = muxer.recv_pkt(&mut bufs[..]) else {
                break;
            };
            // The payload's bytes, chain by chain; a header alone goes in the first chain.
            let mut left = if h.op == op::RW { h.len as usize } else { 0 };
            let mut i = 0;
            loop {
                let room = bufs.get(i).map_or(0, VolatileSlice::len);
                let len = room.min(left);
                let Some((head, Some(mut pkt))) = taken.pop_front() else {
                    break;
                };
                let mut part = h;
                if h.op == op::RW {
                    #[allow(clippy::cast_possible_truncation)] // At most MAX_PKT_DATA.
                    {
                        part.len = len as u32;
                    }
                }
                part.write_to(&mut pkt);
                let _ = q.add_used(&*mem, head, PKT_HEADER_SIZE as u32 + part.len);
                budget = budget.saturating_sub(1);
                used = true;
                left -= len;
                i += 1;
                if left == 0 {
                    break;
                }
            }
        }
        // Chains taken for a batch and not filled: back to the ring, for later.
        for _ in 0..taken.len() {
            q.go_to_previous_position();
        }
        used
    }

    /// Handles backend readiness, then fills RX.
    pub fn process_backend(&mut self) -> bool {
        self.muxer.process_events();
        self.process_rx()
    }

    /// Interrupts the guest if it wants to hear about the used rings.
    pub fn signal_used(&mut self) {
        let mut needed = false;
        for q in &mut self.queues {
            needed |= q.needs_notification(&self.mem).unwrap_or(true);
        }
        if needed {
            self.irq.trigger_used();
        }
    }
}

impl VirtioDevice for VsockDevice {
    fn device_type(&self) -> u32 {
        DEVICE_ID
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 3]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_vsock_config { le64 guest_cid; }
        let cfg = self.cid.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset)
                .ok()
                .and_then(|o| cfg.get(o + i))
                .copied()
                .unwrap_or(0);
        }
    }

    fn activate(&mut self, _acked: u64, queues: Vec<Queue>) -> Result<(), ActivateError> {
        if queues.len() != 3 {
            return Err(ActivateError::QueueCount {
                got: queues.len(),
                want: 3,
            });
        }
        // The event queue is never used (it only reports transport resets on migration).
        for (i, q) in queues.iter().enumerate().take(2) {
            if !q.is_valid(&self.mem) {
                return Err(ActivateError::BadQueue(i));
            }
        }
        METRICS
            .vsock_rx_queue_size
            .store(u64::from(queues[RX_QUEUE].size()), Ordering::Relaxed);
        self.queues = queues;
        Ok(())
    }

    fn reset(&mut self) {
        self.queues.clear();
        self.muxer.reset();
    }
}
