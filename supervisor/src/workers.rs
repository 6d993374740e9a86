//! A cache of worker threads for the notified calls that may wait (an outsourced connect,
//! listen, a blocking accept, a blocking UDP read): each job runs on an idle worker when there
//! is one, else on a new thread, which then stays for the next job for [`IDLE_FOR`]. The
//! notification loop hands a job over without starting a thread (a channel send), so a connect
//! pays no thread creation; the number of threads still grows with the calls waiting at once (a
//! blocking accept may wait for ever), never limited to a fixed pool that could starve.

use std::io;
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// How long an idle worker waits for a job before it ends.
pub const IDLE_FOR: Duration = Duration::from_secs(10);

/// One job: the call's work and its answer.
pub type Job = Box<dyn FnOnce() + Send>;

/// An idle worker: where to send its next job.
#[derive(Debug)]
struct Idle {
    id: u64,
    jobs: Sender<Job>,
}

/// The idle workers.
#[derive(Debug, Default)]
pub struct Workers {
    idle: Mutex<Vec<Idle>>,
    next_id: Mutex<u64>,
}

impl Workers {
    /// Runs `job` on an idle worker, or on a new thread.
    ///
    /// # Errors
    /// When no thread can be started (the job is dropped unrun).
    pub fn run(self: &Arc<Self>, job: Job) -> io::Result<()> {
        let mut job = job;
        loop {
            let idle = self
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop();
            let Some(worker) = idle else { break };
            // A worker taken from the list keeps its receiver until it has a job or the
            // sender is gone: the send fails only if it died.
            match worker.jobs.send(job) {
                Ok(()) => return Ok(()),
                Err(mpsc::SendError(back)) => job = back,
            }
        }
        let me = Arc::clone(self);
        std::thread::Builder::new()
            .name("outsock-sup".into())
            .spawn(move || me.work(job))
            .map(drop)
    }

    fn work(&self, first: Job) {
        first();
        loop {
            let (tx, rx) = mpsc::channel();
            let id = {
                let mut next = self.next_id.lock().unwrap_or_else(PoisonError::into_inner);
                *next += 1;
                *next
            };
            self.idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(Idle { id, jobs: tx });
            let job = match rx.recv_timeout(IDLE_FOR) {
                Ok(job) => job,
                Err(_) => {
                    let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
                    if let Some(i) = idle.iter().position(|w| w.id == id) {
                        idle.swap_remove(i);
                        return;
                    }
                    drop(idle);
                    // Taken meanwhile: its job is on the way.
                    match rx.recv() {
                        Ok(job) => job,
                        Err(_) => return,
                    }
                }
            };
            job();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;

    #[test]
    fn a_worker_is_reused_and_concurrent_jobs_get_their_own() {
        let w = Arc::new(Workers::default());
        let (done, results) = channel();
        let d = done.clone();
        w.run(Box::new(move || {
            d.send(std::thread::current().id()).unwrap();
        }))
        .unwrap();
        let first = results.recv().unwrap();
        // The worker registers as idle after its job: wait for it.
        while w.idle.lock().unwrap().is_empty() {
            std::thread::yield_now();
        }
        let d = done.clone();
        w.run(Box::new(move || {
            d.send(std::thread::current().id()).unwrap();
        }))
        .unwrap();
        assert_eq!(results.recv().unwrap(), first, "the idle worker ran it");

        // Two jobs that wait for each other need two threads.
        let (a_tx, a_rx) = channel::<()>();
        let (b_tx, b_rx) = channel::<()>();
        let d = done.clone();
        w.run(Box::new(move || {
            b_tx.send(()).unwrap();
            a_rx.recv().unwrap();
            d.send(std::thread::current().id()).unwrap();
        }))
        .unwrap();
        let d = done;
        w.run(Box::new(move || {
            b_rx.recv().unwrap();
            a_tx.send(()).unwrap();
            d.send(std::thread::current().id()).unwrap();
        }))
        .unwrap();
        let (x, y) = (results.recv().unwrap(), results.recv().unwrap());
        assert_ne!(x, y);
    }
}
