//! The device event thread (Firecracker's "VMM thread"): an event-manager epoll loop. It
//! forwards stdin into the UART's receive FIFO, runs the virtio-vsock device's queue and
//! backend subscriber, and, under systemd with `WatchdogSec=`, sends `WATCHDOG=1` from a
//! timer: the keep-alive comes from this loop, so a wedged device thread stops it and systemd
//! restarts the VM.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex, PoisonError};

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use std::time::Duration;

use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use crate::devices::legacy::serial::SerialDevice;
use crate::seccomp::{Filters, Role};

/// A subscriber of the device event loop.
pub type Subscriber = Box<dyn MutEventSubscriber + Send>;

/// Forwards input bytes to the guest console, at most as many as the FIFO has room for;
/// stops polling the input while the FIFO is full and resumes when the guest drained it.
#[derive(Debug)]
pub struct ConsoleInput {
    input: File,
    serial: Arc<Mutex<SerialDevice>>,
    fifo_empty: EventFd,
    paused: bool,
    closed: bool,
}

impl ConsoleInput {
    /// `input` must be readable without blocking when epoll reports it (a pipe, tty, socket).
    pub fn new(input: File, serial: Arc<Mutex<SerialDevice>>) -> io::Result<Self> {
        let fifo_empty = serial
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .in_buffer_empty_fd()
            .try_clone()?;
        Ok(Self {
            input,
            serial,
            fifo_empty,
            paused: false,
            closed: false,
        })
    }

    /// An unbuffered handle on this process's stdin.
    pub fn stdin() -> io::Result<File> {
        Ok(File::from(io::stdin().as_fd().try_clone_to_owned()?))
    }

    fn forward(&mut self, ops: &mut EventOps) {
        let mut serial = self.serial.lock().unwrap_or_else(PoisonError::into_inner);
        let room = serial.fifo_capacity();
        if room == 0 {
            let _ = ops.remove(Events::new(&self.input, EventSet::IN));
            self.paused = true;
            return;
        }
        let mut buf = [0u8; 64];
        let want = room.min(buf.len());
        match self.input.read(&mut buf[..want]) {
            Ok(0) => {
                let _ = ops.remove(Events::new(&self.input, EventSet::IN));
                self.closed = true;
            }
            Ok(n) => {
                serial.enqueue_input(&buf[..n]);
            }
            Err(e)
                if e.kind() == io::ErrorKind::Interrupted
                    || e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => {
                let _ = ops.remove(Events::new(&self.input, EventSet::IN));
                self.closed = true;
            }
        }
    }
}

impl MutEventSubscriber for ConsoleInput {
    fn init(&mut self, ops: &mut EventOps) {
        // epoll refuses regular files and /dev/null (EPERM): then there is simply no input.
        if ops.add(Events::new(&self.input, EventSet::IN)).is_err() {
            self.closed = true;
        }
        let _ = ops.add(Events::new(&self.fifo_empty, EventSet::IN));
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        use std::os::fd::AsRawFd;
        if events.fd() == self.fifo_empty.as_raw_fd() {
            let _ = self.fifo_empty.read();
            if self.paused && !self.closed {
                self.paused = false;
                let _ = ops.add(Events::new(&self.input, EventSet::IN));
            }
        } else if events.fd() == self.input.as_raw_fd() {
            if events.event_set().contains(EventSet::IN) {
                self.forward(ops);
            } else {
                // HUP or ERR without data: the input is gone.
                let _ = ops.remove(Events::new(&self.input, EventSet::IN));
                self.closed = true;
            }
        }
    }
}

/// Sends `WATCHDOG=1` to systemd's notification socket every `interval` (half of
/// `WATCHDOG_USEC`, see `outsock_notify::watchdog_interval`).
#[derive(Debug)]
pub struct Watchdog {
    timer: TimerFd,
    notify_socket: String,
}

impl Watchdog {
    /// A watchdog that ticks every `interval` to `notify_socket` (the `NOTIFY_SOCKET` value:
    /// a path, or `@name` for an abstract socket). The first keep-alive goes out at once.
    pub fn new(interval: Duration, notify_socket: String) -> io::Result<Self> {
        let mut timer = TimerFd::new().map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
        // A zero duration would disarm the timer: tick at once (1 ns), then every `interval`.
        timer
            .reset(
                Duration::from_nanos(1),
                Some(interval.max(Duration::from_millis(1))),
            )
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
        Ok(Self {
            timer,
            notify_socket,
        })
    }
}

impl MutEventSubscriber for Watchdog {
    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(&self.timer, EventSet::IN));
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        // Readable, so this read does not block; it clears the expiry count.
        let _ = self.timer.wait();
        // A lost keep-alive is systemd's to judge; there is nobody else to tell.
        let _ = outsock_notify::notify_to(&self.notify_socket, "WATCHDOG=1");
    }
}

/// Starts the event thread with `subscribers`, confined by `filters`' event-loop list; it runs
/// until the process exits.
pub fn spawn(
    subscribers: Vec<Subscriber>,
    filters: &Filters,
) -> io::Result<std::thread::JoinHandle<()>> {
    let mut manager: EventManager<Subscriber> =
        EventManager::new().map_err(|e| io::Error::other(format!("epoll: {e:?}")))?;
    for s in subscribers {
        manager.add_subscriber(s);
    }
    filters.spawn(Role::EventLoop, "event-loop".into(), move || loop {
        if manager.run().is_err() {
            // EINTR and similar: go on; a broken epoll fd cannot happen while we own it.
            continue;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::console::Console;
    use crate::devices::BusDevice;
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    use std::time::{Duration, Instant};

    #[test]
    fn watchdog_ticks_from_the_event_loop() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("notify");
        let rx = std::os::unix::net::UnixDatagram::bind(&path).expect("bind");
        rx.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let dog = Watchdog::new(
            Duration::from_millis(50),
            path.to_string_lossy().into_owned(),
        )
        .expect("watchdog");
        let _t = spawn(vec![Box::new(dog)], &Filters::disabled()).expect("spawn");
        let started = Instant::now();
        for _ in 0..3 {
            let mut buf = [0u8; 32];
            let n = rx.recv(&mut buf).expect("a keep-alive within 5 s");
            assert_eq!(&buf[..n], b"WATCHDOG=1");
        }
        // The first at once, then one per interval.
        assert!(started.elapsed() >= Duration::from_millis(90));
    }

    #[test]
    fn input_reaches_the_uart_fifo() {
        let (_console, writer) = Console::spawn(vec![], 64, &Filters::disabled()).expect("console");
        let serial = Arc::new(Mutex::new(SerialDevice::new(
            EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"),
            EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"),
            writer,
        )));
        let (mut tx, rx) = UnixStream::pair().expect("socketpair");
        let input = File::from(std::os::fd::OwnedFd::from(rx));
        let sub = ConsoleInput::new(input, serial.clone()).expect("subscriber");
        let _t = spawn(vec![Box::new(sub)], &Filters::disabled()).expect("spawn");
        tx.write_all(b"hi\n").expect("write");
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut got = Vec::new();
        while got.len() < 3 && Instant::now() < deadline {
            let mut s = serial.lock().expect("lock");
            let mut lsr = [0u8];
            s.read(5, &mut lsr);
            if lsr[0] & 1 != 0 {
                let mut b = [0u8];
                s.read(0, &mut b);
                got.push(b[0]);
            } else {
                drop(s);
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        assert_eq!(got, b"hi\n");
    }

    /// Reads what reached the UART's receive FIFO within `limit`.
    fn uart_input(serial: &Mutex<SerialDevice>, n: usize, limit: Duration) -> Vec<u8> {
        let deadline = Instant::now() + limit;
        let mut got = Vec::new();
        while got.len() < n && Instant::now() < deadline {
            let mut s = serial.lock().expect("lock");
            let mut lsr = [0u8];
            s.read(5, &mut lsr);
            if lsr[0] & 1 != 0 {
                let mut b = [0u8];
                s.read(0, &mut b);
                got.push(b[0]);
            } else {
                drop(s);
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        got
    }

    /// host-server stalled (SIGSTOPped: its listen backlog full, nothing accepts): the guest's
    /// connects to it must not stop the event thread, which also serves the console. A
    /// blocking connect to a full backlog waits until an accept: this test then times out.
    #[test]
    fn a_stalled_host_server_does_not_stop_the_console() {
        use crate::devices::virtio::vsock::fuzz::{activated_device, FakeGuest};
        use crate::devices::virtio::vsock::packet::{op, Header, TYPE_STREAM};
        use crate::devices::virtio::vsock::{VsockHandler, TX_QUEUE};

        let dir = tempfile::tempdir().expect("temp dir");
        let host_sock = dir.path().join("host.sock");
        let host = std::os::unix::net::UnixListener::bind(&host_sock).expect("bind");
        rustix::net::listen(&host, 0).expect("listen(0): one waiting connection");
        let mut guest = FakeGuest::new();
        let dev = Arc::new(Mutex::new(activated_device(&guest, 3, &host_sock, None)));
        let evts: Vec<EventFd> = (0..3)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"))
            .collect();
        let kick_tx = evts[TX_QUEUE].try_clone().expect("clone");
        let vsock = VsockHandler::new(dev.clone(), evts);

        let (_console, writer) = Console::spawn(vec![], 64, &Filters::disabled()).expect("console");
        let serial = Arc::new(Mutex::new(SerialDevice::new(
            EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"),
            EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"),
            writer,
        )));
        let (mut typing, rx) = UnixStream::pair().expect("socketpair");
        let input = ConsoleInput::new(File::from(std::os::fd::OwnedFd::from(rx)), serial.clone())
            .expect("subscriber");
        let _t =
            spawn(vec![Box::new(vsock), Box::new(input)], &Filters::disabled()).expect("spawn");

        // Three guest connects: the first fills the backlog, the others find it full.
        for port in 40_000..40_003 {
            let h = Header {
                src_cid: 3,
                dst_cid: 2,
                src_port: port,
                dst_port: 1024,
                type_: TYPE_STREAM,
                op: op::REQUEST,
                buf_alloc: 64 * 1024,
                ..Header::default()
            };
            // The device lock keeps the event thread off the rings while the guest writes.
            let d = dev.lock().expect("lock");
            guest.send(&h, &[]);
            drop(d);
            kick_tx.write(1).expect("kick");
        }
        typing.write_all(b"typed\n").expect("write");
        assert_eq!(
            uart_input(&serial, 6, Duration::from_secs(5)),
            b"typed\n",
            "the console must answer while host-server does not accept"
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        let pending = loop {
            let n = dev.lock().expect("lock").muxer().connecting_count();
            if n == 2 || Instant::now() > deadline {
                break n;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        assert_eq!(pending, 2, "two connects wait for host-server's backlog");
        // host-server comes back: the waiting connects complete on their own.
        let mut accepted = 0;
        host.set_nonblocking(true).expect("nonblocking");
        let deadline = Instant::now() + Duration::from_secs(5);
        while accepted < 3 && Instant::now() < deadline {
            match host.accept() {
                Ok(_) => accepted += 1,
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        assert_eq!(accepted, 3, "every guest connect reached host-server");
        assert_eq!(dev.lock().expect("lock").muxer().connecting_count(), 0);
    }
}
