//! The virtio-vsock device's event-loop subscriber: the guest's queue notifications
//! (ioeventfds on QueueNotify) and the muxer's backend readiness (its epoll fd) become calls
//! into [`VsockDevice`] on the event thread, followed by an interrupt when a used ring changed.
//! Work the device left for later (its per-call budget) is picked up by kicking the queue's
//! own eventfd again, so the event loop serves its other subscribers (the console) first.
//! Kept apart from the device so that the device's packet processing reads without the
//! event-manager glue (and is unit-tested without it).

use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, PoisonError};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::eventfd::EventFd;

use super::defs::{RX_QUEUE, TX_QUEUE};
use super::device::VsockDevice;

/// The event-loop subscriber: queue notifications (ioeventfds) and backend readiness.
#[derive(Debug)]
pub struct VsockHandler {
    device: Arc<Mutex<VsockDevice>>,
    queue_evts: Vec<EventFd>,
    backend: RawFd,
}

impl VsockHandler {
    /// `queue_evts` are the RX, TX and event queue notifiers, in order.
    pub fn new(device: Arc<Mutex<VsockDevice>>, queue_evts: Vec<EventFd>) -> Self {
        let backend = device
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .muxer()
            .epoll_fd();
        Self {
            device,
            queue_evts,
            backend,
        }
    }
}

impl MutEventSubscriber for VsockHandler {
    fn init(&mut self, ops: &mut EventOps) {
        for evt in &self.queue_evts {
            let _ = ops.add(Events::new(evt, EventSet::IN));
        }
        let _ = ops.add(Events::new_raw(self.backend, EventSet::IN));
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let fd = events.fd();
        let mut dev = self.device.lock().unwrap_or_else(PoisonError::into_inner);
        let used = if fd == self.backend {
            dev.process_backend()
        } else if let Some(i) = self.queue_evts.iter().position(|e| e.as_raw_fd() == fd) {
            let _ = self.queue_evts[i].read();
            if !dev.is_active() {
                return;
            }
            match i {
                RX_QUEUE => dev.process_rx(),
                TX_QUEUE => {
                    let tx = dev.process_tx();
                    dev.process_rx() | tx
                }
                _ => false,
            }
        } else {
            false
        };
        if used {
            dev.signal_used();
        }
        let (tx, rx) = dev.take_leftover();
        for (left, q) in [(tx, TX_QUEUE), (rx, RX_QUEUE)] {
            if left {
                let _ = self.queue_evts[q].write(1);
            }
        }
    }
}
