//! The serial console's output path. A vCPU writing the UART's THR must never block on a slow
//! reader of stdout, so bytes go into a bounded in-memory queue and a dedicated thread drains
//! it to stdout and to the optional log file. When the queue is full, new bytes are dropped and
//! counted (reported at exit) instead of stalling the guest.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::seccomp::{Filters, Role};

/// Default queue bound: 1 MiB of console output.
pub const DEFAULT_CAPACITY: usize = 1 << 20;

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<u8>,
    dropped: u64,
    closing: bool,
    /// Set by the drain thread while it writes a batch, so `flush_and_stop` knows when all
    /// bytes have left.
    writing: bool,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    cond: Condvar,
    capacity: usize,
}

/// The `Write` end given to the UART. Cloning shares the queue.
#[derive(Debug, Clone)]
pub struct ConsoleWriter {
    shared: Arc<Shared>,
}

impl Write for ConsoleWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut st = self
            .shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let room = self.shared.capacity.saturating_sub(st.queue.len());
        let take = room.min(buf.len());
        st.queue.extend(&buf[..take]);
        st.dropped += (buf.len() - take) as u64;
        drop(st);
        self.shared.cond.notify_all();
        // Report everything as written: dropping is the overflow policy, not an error.
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Owns the drain thread.
#[derive(Debug)]
pub struct Console {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Console {
    /// Starts the drain thread writing to each of `sinks` (stdout, a log file, a test buffer),
    /// confined by `filters`' console list.
    pub fn spawn(
        sinks: Vec<Box<dyn Write + Send>>,
        capacity: usize,
        filters: &Filters,
    ) -> io::Result<(Console, ConsoleWriter)> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            cond: Condvar::new(),
            capacity,
        });
        let drain_shared = Arc::clone(&shared);
        let thread = filters.spawn(Role::Console, "console".into(), move || {
            drain(&drain_shared, sinks);
        })?;
        let writer = ConsoleWriter {
            shared: Arc::clone(&shared),
        };
        Ok((
            Console {
                shared,
                thread: Some(thread),
            },
            writer,
        ))
    }

    /// Bytes dropped so far because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .dropped
    }

    /// Waits (at most `timeout`) until everything queued has been written, then stops the
    /// drain thread. Returns the number of bytes dropped over the console's life.
    pub fn flush_and_stop(mut self, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        {
            let mut st = self
                .shared
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            st.closing = true;
            self.shared.cond.notify_all();
            while !st.queue.is_empty() || st.writing {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                st = self
                    .shared
                    .cond
                    .wait_timeout(st, deadline - now)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
        }
        let done = {
            let st = self
                .shared
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            st.queue.is_empty() && !st.writing
        };
        if done {
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
        self.dropped()
    }
}

fn drain(shared: &Shared, mut sinks: Vec<Box<dyn Write + Send>>) {
    loop {
        let batch: Vec<u8> = {
            let mut st = shared.state.lock().unwrap_or_else(PoisonError::into_inner);
            while st.queue.is_empty() && !st.closing {
                st = shared.cond.wait(st).unwrap_or_else(PoisonError::into_inner);
            }
            if st.queue.is_empty() {
                return;
            }
            st.writing = true;
            st.queue.drain(..).collect()
        };
        // A sink that fails (closed pipe, full disk) is dropped; the others go on.
        sinks.retain_mut(|s| s.write_all(&batch).and_then(|()| s.flush()).is_ok());
        let mut st = shared.state.lock().unwrap_or_else(PoisonError::into_inner);
        st.writing = false;
        shared.cond.notify_all();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A console sink that keeps what it was given (the serial tests use it too).
    #[derive(Clone, Default)]
    pub(crate) struct Buf(pub(crate) Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A sink that blocks until released: a reader that never reads.
    struct Stuck(Arc<(Mutex<bool>, Condvar)>);
    impl Write for Stuck {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            let (m, c) = &*self.0;
            let mut go = m.lock().expect("lock");
            while !*go {
                go = c.wait(go).expect("wait");
            }
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn copies_to_every_sink() {
        let (a, b) = (Buf::default(), Buf::default());
        let (console, mut w) = Console::spawn(
            vec![Box::new(a.clone()), Box::new(b.clone())],
            1024,
            &Filters::disabled(),
        )
        .expect("spawn");
        w.write_all(b"hello ").expect("write");
        w.write_all(b"world").expect("write");
        assert_eq!(console.flush_and_stop(Duration::from_secs(5)), 0);
        assert_eq!(&*a.0.lock().expect("lock"), b"hello world");
        assert_eq!(&*b.0.lock().expect("lock"), b"hello world");
    }

    #[test]
    fn a_stuck_reader_never_blocks_the_writer() {
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let (console, mut w) = Console::spawn(
            vec![Box::new(Stuck(gate.clone()))],
            16,
            &Filters::disabled(),
        )
        .expect("spawn");
        let start = Instant::now();
        for _ in 0..1000 {
            w.write_all(b"0123456789").expect("write never fails");
        }
        assert!(start.elapsed() < Duration::from_secs(2));
        assert!(console.dropped() > 0);
        *gate.0.lock().expect("lock") = true;
        gate.1.notify_all();
        let dropped = console.flush_and_stop(Duration::from_secs(5));
        assert!(dropped >= 10_000 - 2 * 16 - 10);
    }
}
