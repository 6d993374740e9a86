//! Whole frames on a stream shared by threads: where an association is a byte stream (a VM's,
//! vsock through the VMM), a frame is several reads or writes, and two threads receiving (or
//! sending) on the same fd at once would interleave them. A thread therefore *claims* the fd's
//! direction for the length of one frame — never while it waits for a frame to begin — and
//! gives it back at once.
//!
//! No locks (a lock held by another thread at `fork` would deadlock the child): a claim is an
//! atomic slot holding the claiming process's id, taken with a compare-and-swap and spun on
//! (yielding) while another thread of the process holds it. A slot holding another process's id
//! was inherited across `fork` from a thread that does not exist here, so it is free. Slots are
//! shared by fds with the same number modulo [`SLOTS`]; a claim lasts one frame, so sharing only
//! costs a short wait. Claims are per process: processes sharing a VM association after `fork`
//! are not kept apart (a process's association, a packet channel, needs no claim at all).

use std::sync::atomic::{AtomicU32, Ordering};

/// Claim slots per direction.
pub const SLOTS: usize = 4096;

static RECV: [AtomicU32; SLOTS] = [const { AtomicU32::new(0) }; SLOTS];
static SEND: [AtomicU32; SLOTS] = [const { AtomicU32::new(0) }; SLOTS];

/// Which way a claim is for: receiving and sending are claimed apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    Recv,
    Send,
}

/// A held claim, given back on drop.
#[derive(Debug)]
pub struct Claim(&'static AtomicU32);

impl Drop for Claim {
    fn drop(&mut self) {
        self.0.store(0, Ordering::Release);
    }
}

fn slot(fd: i32, way: Way) -> &'static AtomicU32 {
    let i = usize::try_from(fd).unwrap_or(0) % SLOTS;
    match way {
        Way::Recv => &RECV[i],
        Way::Send => &SEND[i],
    }
}

/// Claims `fd`'s `way` for one frame, waiting while another thread of this process holds it.
#[must_use]
pub fn claim(fd: i32, way: Way) -> Claim {
    let s = slot(fd, way);
    let me = std::process::id();
    loop {
        let held = s.load(Ordering::Acquire);
        // 0: free; another process's id: inherited across fork, its holder is not here.
        if held != me
            && s.compare_exchange(held, me, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        {
            return Claim(s);
        }
        std::thread::yield_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    #[test]
    fn one_thread_at_a_time_per_way() {
        let inside = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let inside = Arc::clone(&inside);
                std::thread::spawn(move || {
                    for _ in 0..2000 {
                        let _c = claim(7, Way::Recv);
                        assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0);
                        std::hint::spin_loop();
                        inside.fetch_sub(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // The other way, and a claim given back, are free.
        let _r = claim(7, Way::Recv);
        let _s = claim(7, Way::Send);
    }

    #[test]
    fn a_claim_inherited_across_fork_is_free() {
        let s = slot(9, Way::Send);
        s.store(std::process::id().wrapping_add(1), Ordering::Release);
        drop(claim(9, Way::Send));
        assert_eq!(s.load(Ordering::Acquire), 0);
    }
}
