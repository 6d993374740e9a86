//! vm: the VM data path without KVM. The real virtio-vsock device model (outsock-vmm's
//! `VsockDevice`, its muxer and connections, on the VMM's real event loop thread with the real
//! `VsockHandler`) runs in this process against guest memory from vm-memory; a simulated guest
//! — [`Guest`], the driver thread — fills its virtqueues (through the fake driver's ring layout,
//! `outsock_vmm`'s `fuzzing` feature), kicks the queue eventfds as ioeventfds would, and waits for
//! the device's interrupt eventfd. It speaks the guest protocol on each vsock stream exactly as
//! liboutsock does in a VM (a `ToHost::Connect` frame without `pass_fd`, the answer, then the
//! connection's bytes), with Linux's vsock credit rules (the `buf_alloc` liboutsock asks for,
//! `shared_proto::translate::VSOCK_BUFFER_SIZE`; a credit update when the host's view of our
//! free space drops under 64 KiB) and Linux 6.1's RX buffers (a 44-byte header and 4 KiB of
//! data each, as many posted as the device's queue holds, refilled with fresh buffers once half
//! are used; a received packet
//! stays in its buffer, as in its skb, until the program reads it, so a received byte is copied
//! once, into the program's buffer, as in a guest kernel). The
//! muxer's Unix streams go to the real host-server of a test world whose settings name this VMM
//! (`[vms.vm0]`, the bench's uid), which connects over IPv6 to servers in `world`.
//!
//! Against native IPv6 from `host` to the same servers, rounds alternating: guest→IPv6 (a
//! drain that reads to the end) and IPv6→guest (a source that writes until the reader goes)
//! throughput for SECONDS each, connect + first byte p50/p99 to the echo server, the CPU per
//! GB moved of the VMM's event thread (where every device byte is handled: schedstat of that
//! thread), of host-server (utime + stime), of the simulated guest's thread and of the server
//! in `world` (and natively of the client and the server), with the most these costs allow on
//! this machine's CPUs (each party a thread of its own, never waiting: the vm's ceiling, against
//! the native median), this machine's cost of one thread waking another (the unit of the
//! guest's connect latency: it waits for ten such wake-ups in series, native for two), and
//! connrate's measure at 1, 8 and 32 clients
//! (one connection per request to a request/response server, SECONDS / 2 each: connections per
//! second, their p50/p99, CPU per connection), the guest's clients all served by its one driver
//! loop as a guest kernel serves its programs' sockets.
//!
//! The guest is indifferent to what host-server does with the connection (relay it over the
//! stream, or hand the IPv6 socket to the VMM): it only sees its vsock stream.
//!
//! Not measured: the guest kernel's own costs and the VM exits of a kick or an interrupt
//! (here an eventfd write each); the simulated guest's copies into and out of guest memory run
//! on the bench's thread, as a guest's would on its vCPU.

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpStream, ToSocketAddrs};
use std::num::Wrapping;
use std::os::fd::AsRawFd;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use outsock_e2e::quantile;
use outsock_vmm::devices::virtio::vsock::fuzz::FakeGuest;
use outsock_vmm::devices::virtio::vsock::packet::{
    op, Header, MAX_PKT_DATA, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};
use outsock_vmm::devices::virtio::vsock::{
    Muxer, MuxerConfig, VsockDevice, VsockHandler, HOST_CID, RX_QUEUE, TX_QUEUE,
};
use outsock_vmm::devices::virtio::{IrqLine, VirtioDevice, VIRTIO_F_VERSION_1};
use outsock_vmm::event_loop;
use outsock_vmm::seccomp::Filters;
use shared_proto::translate::{connect_answer, connect_request};
use shared_proto::{decode_exact, frame_len, to_vec, ToGuest};
use testworld::stack::Stack;
use testworld::{addr, record};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

/// The guest's CID.
const CID: u64 = 3;
/// The vsock port host-server is reached on (the guest image's `transport = vsock:1024`).
const HOST_PORT: u32 = 1024;
/// The VM's name in host-server's settings.
const VM: &str = "vm0";
/// The drain (guest→IPv6), source (IPv6→guest) and request/response server in `world`.
const DRAIN_PORT: u16 = 9011;
const SOURCE_PORT: u16 = 9012;
const RR_PORT: u16 = 9013;
/// Concurrent request/response clients, as connrate's.
const RR_CLIENTS: [usize; 3] = [1, 8, 32];

/// One concurrency's connection-rate runs: rates and times, native and vm, and the vm runs'
/// CPU per connection (µs).
#[derive(Debug, Default)]
struct Rate {
    native: Vec<f64>,
    vm: Vec<f64>,
    native_times: Vec<f64>,
    vm_times: Vec<f64>,
    vmm_us: Vec<f64>,
    host_us: Vec<f64>,
}
/// Connect + first byte probes per batch.
const PROBES: usize = 300;
/// The receive buffer liboutsock and the supervisor give each guest vsock stream
/// (`SO_VM_SOCKETS_BUFFER_SIZE`): our `buf_alloc`.
#[allow(clippy::cast_possible_truncation)] // 4 MiB.
const GUEST_BUF_ALLOC: u32 = shared_proto::translate::VSOCK_BUFFER_SIZE as u32;
/// Linux sends a credit update once the host's idea of its free space drops below one
/// maximal packet.
const CREDIT_LOW: u32 = 64 * 1024;
/// Linux 6.1's RX buffers: header and 4 KiB of data, two descriptors.
const RX_DATA: u32 = 4096;
/// RX chains posted: Linux fills the queue, two descriptors a buffer.
const RX_CHAINS: u16 = outsock_vmm::devices::virtio::vsock::QUEUE_SIZE / 2;
/// TX chains (two descriptors each): Linux's packets in flight are bounded by the host's
/// credit, at most the VMM's bulk window of 1 MiB, 16 of 64 KiB; 128 leave room to spare.
const TX_CHAINS: u16 = 128;
/// RX data buffers in guest memory: those posted on the ring's chains and those the guest's
/// streams hold until the program reads them (Linux keeps a received packet's buffer, its skb,
/// in the socket's queue and posts a fresh one), up to a stream's whole receive buffer. When
/// all are held, spent chains wait for a read to free one.
#[allow(clippy::cast_possible_truncation)] // 1024.
const RX_SLOTS: u16 = RX_CHAINS + (GUEST_BUF_ALLOC / RX_DATA) as u16;
/// Guest memory layout inside the fake driver's 32 MiB (its rings sit below 1 MiB).
const TX_HDR_BASE: u64 = 0x10_0000;
const RX_HDR_BASE: u64 = 0x10_0000 + 64 * TX_CHAINS as u64;
const TX_DATA_BASE: u64 = 0x20_0000;
const _: () = assert!(RX_HDR_BASE + 64 * RX_CHAINS as u64 <= TX_DATA_BASE);
const RX_DATA_BASE: u64 = TX_DATA_BASE + MAX_PKT_DATA as u64 * TX_CHAINS as u64;
const _: () = assert!(RX_DATA_BASE + RX_DATA as u64 * RX_SLOTS as u64 <= 32 << 20);
const VRING_DESC_F_NEXT: u16 = 1;
const VRING_DESC_F_WRITE: u16 = 2;
/// How long the guest waits for the device before it gives up on an operation.
const STALL: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    Connecting,
    Established,
    Reset,
}

/// A received packet's payload still in its RX buffer (guest memory): `len` bytes from `off`.
#[derive(Debug, Clone, Copy)]
struct Seg {
    slot: u16,
    off: u32,
    len: u32,
}

/// One guest vsock stream, as the guest kernel keeps it.
#[derive(Debug)]
struct Conn {
    st: St,
    tx_cnt: Wrapping<u32>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    /// Bytes the guest program consumed, and what the host was last told of it.
    fwd_cnt: Wrapping<u32>,
    last_fwd_sent: Wrapping<u32>,
    /// Received bytes not yet read, where the device put them, and how many.
    rx: VecDeque<Seg>,
    rx_len: usize,
    peer_shut: u32,
}

impl Conn {
    fn new() -> Self {
        Self {
            st: St::Connecting,
            tx_cnt: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            fwd_cnt: Wrapping(0),
            last_fwd_sent: Wrapping(0),
            rx: VecDeque::new(),
            rx_len: 0,
            peer_shut: 0,
        }
    }

    fn credit(&self) -> u32 {
        self.peer_buf_alloc
            .saturating_sub((self.tx_cnt - self.peer_fwd_cnt).0)
    }
}

/// The simulated guest: its side of the three virtqueues, the kicks, the interrupt, and the
/// vsock streams on top.
struct Guest {
    g: FakeGuest,
    tx_free: Vec<u16>,
    kick_tx: EventFd,
    kick_rx: EventFd,
    /// RX chains read and not yet posted again.
    rx_spent: Vec<u16>,
    /// The RX buffer posted on each chain, and the buffers neither posted nor held.
    chain_slot: Vec<u16>,
    rx_free: Vec<u16>,
    irq: EventFd,
    irq_wait: Epoll,
    conns: HashMap<u32, Conn>,
    next_port: u32,
    tx_unkicked: bool,
    /// The program's buffer that a read copies received bytes into.
    scratch: Vec<u8>,
}

/// The device side: the VMM's event thread running the real handler, found by name for its CPU.
pub struct Vmm {
    guest: Guest,
    event_tid: u32,
}

impl Vmm {
    /// Builds the device on fresh guest memory with its muxer's streams going to
    /// `host_socket`, activates it as the driver would, and starts the VMM's event loop on it.
    fn start(host_socket: &std::path::Path, take_sockets: bool) -> Result<Self> {
        let g = FakeGuest::new();
        let muxer = Muxer::new(MuxerConfig {
            vm: VM.into(),
            cid: CID,
            host_socket: host_socket.to_path_buf(),
            listen_socket: None,
            peer_uids: vec![rustix::process::getuid().as_raw()],
            take_sockets,
        })?;
        let irq = EventFd::new(libc::EFD_NONBLOCK)?;
        let mut dev = VsockDevice::new(CID, g.mem.clone(), IrqLine::new(irq.try_clone()?), muxer);
        dev.activate(VIRTIO_F_VERSION_1, g.queues())
            .map_err(|e| anyhow::anyhow!("activate: {e}"))?;
        let evts: Vec<EventFd> = (0..3)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK))
            .collect::<std::io::Result<_>>()?;
        let kick_rx = evts[RX_QUEUE].try_clone()?;
        let kick_tx = evts[TX_QUEUE].try_clone()?;
        let handler = VsockHandler::new(Arc::new(Mutex::new(dev)), evts);
        // The event thread runs until the process ends, as in the VMM.
        let before = event_threads();
        event_loop::spawn(vec![Box::new(handler)], &Filters::disabled())?;
        let deadline = Instant::now() + Duration::from_secs(5);
        let event_tid = loop {
            if let Some(t) = event_threads().into_iter().find(|t| !before.contains(t)) {
                break t;
            }
            if Instant::now() > deadline {
                bail!("the VMM's event thread did not show up in /proc/self/task");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let irq_wait = Epoll::new()?;
        irq_wait.ctl(
            ControlOperation::Add,
            irq.as_raw_fd(),
            EpollEvent::new(EventSet::IN, 0),
        )?;
        let mut guest = Guest {
            g,
            tx_free: (0..TX_CHAINS).rev().collect(),
            kick_tx,
            kick_rx,
            rx_spent: Vec::new(),
            chain_slot: (0..RX_CHAINS).collect(),
            rx_free: (RX_CHAINS..RX_SLOTS).rev().collect(),
            irq,
            irq_wait,
            conns: HashMap::new(),
            next_port: 50_000,
            tx_unkicked: false,
            scratch: vec![0; RX_DATA as usize],
        };
        // Every RX chain is posted once and re-posted as soon as it is read.
        for c in 0..RX_CHAINS {
            let (h, d) = (rx_hdr(c), rx_data(c));
            guest.g.write_desc(
                RX_QUEUE,
                2 * c,
                h,
                44,
                VRING_DESC_F_WRITE | VRING_DESC_F_NEXT,
                2 * c + 1,
            );
            guest
                .g
                .write_desc(RX_QUEUE, 2 * c + 1, d, RX_DATA, VRING_DESC_F_WRITE, 0);
            guest.g.publish(RX_QUEUE, 2 * c);
        }
        guest.kick_rx.write(1)?;
        Ok(Self { guest, event_tid })
    }

    /// The event thread's CPU time so far, ns.
    fn cpu_ns(&self) -> u64 {
        thread_cpu_ns(self.event_tid)
    }
}

fn rx_hdr(c: u16) -> u64 {
    RX_HDR_BASE + 64 * u64::from(c)
}
/// RX buffer `slot`'s data.
fn rx_data(slot: u16) -> u64 {
    RX_DATA_BASE + u64::from(RX_DATA) * u64::from(slot)
}
fn tx_hdr(c: u16) -> u64 {
    TX_HDR_BASE + 64 * u64::from(c)
}
fn tx_data(c: u16) -> u64 {
    TX_DATA_BASE + u64::from(MAX_PKT_DATA) * u64::from(c)
}

/// This process's threads named like the VMM's event thread.
fn event_threads() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == "event-loop")
        })
        .filter_map(|t| t.file_name().to_str()?.parse().ok())
        .collect()
}

/// A thread's CPU time in ns: schedstat's first field, else utime + stime in 10 ms ticks.
fn thread_cpu_ns(tid: u32) -> u64 {
    let base = format!("/proc/self/task/{tid}");
    if let Some(ns) = std::fs::read_to_string(format!("{base}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
    {
        return ns;
    }
    let stat = std::fs::read_to_string(format!("{base}/stat")).unwrap_or_default();
    let f: Vec<u64> = stat
        .rsplit_once(')')
        .map(|(_, r)| {
            r.split_whitespace()
                .map(|x| x.parse().unwrap_or(0))
                .collect()
        })
        .unwrap_or_default();
    (f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)) * 10_000_000
}

/// A process's CPU time (all threads, utime + stime), ns.
fn process_cpu_ns(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f: Vec<u64> = stat
        .rsplit_once(')')
        .map(|(_, r)| {
            r.split_whitespace()
                .map(|x| x.parse().unwrap_or(0))
                .collect()
        })
        .unwrap_or_default();
    (f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)) * 10_000_000
}

impl Guest {
    fn hdr(&mut self, port: u32, op: u16, len: u32) -> Header {
        let (buf_alloc, fwd_cnt) = match self.conns.get_mut(&port) {
            Some(c) => {
                c.last_fwd_sent = c.fwd_cnt;
                (GUEST_BUF_ALLOC, c.fwd_cnt.0)
            }
            None => (GUEST_BUF_ALLOC, 0),
        };
        Header {
            src_cid: CID,
            dst_cid: HOST_CID,
            src_port: port,
            dst_port: HOST_PORT,
            len,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc,
            fwd_cnt,
        }
    }

    /// Queues one TX packet (waiting for a free chain if need be); kicked by [`Self::kick`].
    fn send(&mut self, hdr: &Header, data: &[u8]) -> Result<()> {
        let deadline = Instant::now() + STALL;
        let slot = loop {
            if let Some(s) = self.tx_free.pop() {
                break s;
            }
            self.kick()?;
            self.pump(deadline)?;
        };
        let (h, d) = (tx_hdr(slot), tx_data(slot));
        self.g.mem.write_slice(&hdr.to_bytes(), GuestAddress(h))?;
        if data.is_empty() {
            self.g.write_desc(TX_QUEUE, 2 * slot, h, 44, 0, 0);
        } else {
            self.g.mem.write_slice(data, GuestAddress(d))?;
            self.g
                .write_desc(TX_QUEUE, 2 * slot, h, 44, VRING_DESC_F_NEXT, 2 * slot + 1);
            self.g
                .write_desc(TX_QUEUE, 2 * slot + 1, d, data.len() as u32, 0, 0);
        }
        self.g.publish(TX_QUEUE, 2 * slot);
        self.tx_unkicked = true;
        Ok(())
    }

    fn control(&mut self, port: u32, op: u16, flags: u32) -> Result<()> {
        let mut h = self.hdr(port, op, 0);
        h.flags = flags;
        self.send(&h, &[])?;
        self.kick()
    }

    /// The TX queue notification (an ioeventfd write in a VM).
    fn kick(&mut self) -> Result<()> {
        if self.tx_unkicked {
            self.tx_unkicked = false;
            self.kick_tx.write(1)?;
        }
        Ok(())
    }

    /// Takes what the device used; without any, waits for its interrupt (until `deadline`).
    fn pump(&mut self, deadline: Instant) -> Result<()> {
        loop {
            let _ = self.irq.read(); // The interrupt is acknowledged before the rings are read.
            let mut progress = false;
            for (id, _) in self.g.used(TX_QUEUE) {
                self.tx_free.push((id / 2) as u16);
                progress = true;
            }
            let used = self.g.used(RX_QUEUE);
            let mut asked = Vec::new();
            for &(id, len) in &used {
                let c = (id / 2) as u16;
                let mut hb = [0u8; 44];
                self.g.mem.read_slice(&mut hb, GuestAddress(rx_hdr(c)))?;
                let h = Header::from_bytes(&hb);
                let n = (len.saturating_sub(44)).min(h.len).min(RX_DATA);
                self.rx_spent.push(c);
                if self.receive(&h, self.chain_slot[usize::from(c)], n) {
                    asked.push(h.dst_port);
                }
            }
            // Credit requests are answered once the batch is in (a reply may wait for a TX
            // chain, which pumps again).
            for port in asked {
                let reply = self.hdr(port, op::CREDIT_UPDATE, 0);
                self.send(&reply, &[])?;
            }
            // Linux refills (and kicks) once fewer than half the buffers are posted, each
            // chain with a fresh buffer (a spent one may be held by its stream).
            if self.rx_spent.len() >= usize::from(RX_CHAINS / 2) {
                let mut posted = false;
                while let Some(&c) = self.rx_spent.last() {
                    let Some(slot) = self.rx_free.pop() else {
                        break; // Every buffer is held: the next read frees one.
                    };
                    self.rx_spent.pop();
                    self.chain_slot[usize::from(c)] = slot;
                    self.g.write_desc(
                        RX_QUEUE,
                        2 * c + 1,
                        rx_data(slot),
                        RX_DATA,
                        VRING_DESC_F_WRITE,
                        0,
                    );
                    self.g.publish(RX_QUEUE, 2 * c);
                    posted = true;
                }
                if posted {
                    self.kick_rx.write(1)?;
                }
            }
            progress |= !used.is_empty();
            self.kick()?;
            if progress {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("the device did not answer within {STALL:?}");
            }
            let mut ev = [EpollEvent::default(); 1];
            let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX).max(1);
            match self.irq_wait.wait(ms, &mut ev) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// One packet from the device, its payload (`n` bytes) in RX buffer `slot`, which the
    /// stream keeps until it is read (or which is free again at once); true when it asks for
    /// our credit.
    fn receive(&mut self, h: &Header, slot: u16, n: u32) -> bool {
        let c = if h.src_cid != HOST_CID || h.dst_cid != CID || h.src_port != HOST_PORT {
            None
        } else {
            // None: a closed stream's late packets (Linux answers with RST; no need).
            self.conns.get_mut(&h.dst_port)
        };
        let Some(c) = c else {
            self.rx_free.push(slot);
            return false;
        };
        c.peer_buf_alloc = h.buf_alloc;
        c.peer_fwd_cnt = Wrapping(h.fwd_cnt);
        if h.op == op::RW && n > 0 {
            c.rx.push_back(Seg {
                slot,
                off: 0,
                len: n,
            });
            c.rx_len += n as usize;
        } else {
            self.rx_free.push(slot);
        }
        match h.op {
            op::RESPONSE if c.st == St::Connecting => c.st = St::Established,
            op::SHUTDOWN => c.peer_shut |= h.flags & (SHUTDOWN_RCV | SHUTDOWN_SEND),
            op::RST => c.st = St::Reset,
            op::CREDIT_REQUEST => return true,
            _ => {}
        }
        false
    }

    fn conn(&mut self, port: u32) -> Result<&mut Conn> {
        self.conns.get_mut(&port).context("no such stream")
    }

    /// connect(2) to the host (CID 2, [`HOST_PORT`]): a new guest port, REQUEST, RESPONSE.
    fn open(&mut self) -> Result<u32> {
        let port = self.start_open()?;
        let deadline = Instant::now() + STALL;
        loop {
            match self.conn(port)?.st {
                St::Established => return Ok(port),
                St::Reset => {
                    self.forget(port);
                    bail!("the device reset the connection request");
                }
                St::Connecting => self.pump(deadline)?,
            }
        }
    }

    /// A non-blocking connect(2): the REQUEST goes out; the stream's state tells the rest.
    fn start_open(&mut self) -> Result<u32> {
        let mut port = self.next_port;
        while self.conns.contains_key(&port) {
            port = if port >= 60_000 { 50_000 } else { port + 1 };
        }
        self.next_port = if port >= 60_000 { 50_000 } else { port + 1 };
        self.conns.insert(port, Conn::new());
        self.control(port, op::REQUEST, 0)?;
        Ok(port)
    }

    /// The whole answer frame, if it is in (it is then consumed).
    fn try_answer(&mut self, port: u32) -> Result<Option<ToGuest>> {
        let c = self.conn(port)?;
        let have = c.rx_len;
        let head = self.peek(port, have.min(shared_proto::frame::HEADER_LEN))?;
        let Some(len) = frame_len(&head)? else {
            return Ok(None);
        };
        if have < len {
            return Ok(None);
        }
        let mut frame = Vec::with_capacity(len);
        self.take_rx(port, len, Some(&mut frame))?;
        Ok(Some(decode_exact(&frame)?))
    }

    /// The first `n` received bytes of `port`, left unread.
    fn peek(&mut self, port: u32, n: usize) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(n);
        let c = self.conns.get(&port).context("no such stream")?;
        for seg in &c.rx {
            if out.len() == n {
                break;
            }
            let take = (n - out.len()).min(seg.len as usize);
            let at = out.len();
            out.resize(at + take, 0);
            self.g.mem.read_slice(
                &mut out[at..],
                GuestAddress(rx_data(seg.slot) + u64::from(seg.off)),
            )?;
        }
        Ok(out)
    }

    /// Reads up to `max` received bytes of `port` out of their RX buffers (the program's copy:
    /// into `out`, or into its buffer `scratch`), freeing each buffer once read, and counts
    /// them consumed. Returns how many.
    fn take_rx(&mut self, port: u32, max: usize, mut out: Option<&mut Vec<u8>>) -> Result<usize> {
        let Self {
            g,
            conns,
            rx_free,
            scratch,
            ..
        } = self;
        let c = conns.get_mut(&port).context("no such stream")?;
        let mut done = 0;
        while done < max {
            let Some(seg) = c.rx.front_mut() else {
                break;
            };
            let take = (max - done).min(seg.len as usize);
            let from = GuestAddress(rx_data(seg.slot) + u64::from(seg.off));
            match out.as_deref_mut() {
                Some(o) => {
                    let at = o.len();
                    o.resize(at + take, 0);
                    g.mem.read_slice(&mut o[at..], from)?;
                }
                None => g.mem.read_slice(&mut scratch[..take], from)?,
            }
            done += take;
            #[allow(clippy::cast_possible_truncation)] // At most RX_DATA.
            {
                seg.off += take as u32;
                seg.len -= take as u32;
            }
            if seg.len == 0 {
                rx_free.push(seg.slot);
                c.rx.pop_front();
            }
        }
        c.rx_len -= done;
        #[allow(clippy::cast_possible_truncation)] // Sequence arithmetic, as Linux's.
        {
            c.fwd_cnt += Wrapping(done as u32);
        }
        Ok(done)
    }

    /// A stream goes: the RX buffers it held are free again.
    fn forget(&mut self, port: u32) {
        if let Some(c) = self.conns.remove(&port) {
            self.rx_free.extend(c.rx.iter().map(|s| s.slot));
        }
    }

    /// write(2) of all of `data`, within the host's credit.
    fn write(&mut self, port: u32, mut data: &[u8]) -> Result<()> {
        let deadline = Instant::now() + STALL;
        while !data.is_empty() {
            let c = self.conn(port)?;
            if c.st != St::Established {
                bail!("the stream was reset while writing");
            }
            let credit = c.credit() as usize;
            if credit == 0 || self.tx_free.is_empty() {
                self.kick()?;
                self.pump(deadline)?;
                continue;
            }
            let n = data.len().min(credit).min(MAX_PKT_DATA as usize);
            let h = self.hdr(port, op::RW, n as u32);
            self.send(&h, &data[..n])?;
            self.conn(port)?.tx_cnt += Wrapping(n as u32);
            data = &data[n..];
        }
        self.kick()
    }

    /// read(2): up to `max` bytes into `out` (None: into the program's buffer, `scratch`); 0 at the end of the
    /// stream.
    fn read(&mut self, port: u32, out: Option<&mut Vec<u8>>, max: usize) -> Result<usize> {
        let deadline = Instant::now() + STALL;
        loop {
            if self.conn(port)?.rx_len > 0 {
                let n = self.take_rx(port, max, out)?;
                let c = self.conn(port)?;
                let unknown = (c.fwd_cnt - c.last_fwd_sent).0;
                if GUEST_BUF_ALLOC.saturating_sub(unknown) < CREDIT_LOW {
                    self.control(port, op::CREDIT_UPDATE, 0)?;
                }
                return Ok(n);
            }
            let c = self.conn(port)?;
            if c.peer_shut & SHUTDOWN_SEND != 0 {
                return Ok(0);
            }
            if c.st == St::Reset {
                bail!("the stream was reset while reading");
            }
            self.pump(deadline)?;
        }
    }

    fn read_exact(&mut self, port: u32, n: usize) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let want = n - out.len();
            if self.read(port, Some(&mut out), want)? == 0 {
                bail!("the stream ended after {} of {n} bytes", out.len());
            }
        }
        Ok(out)
    }

    /// shutdown(SHUT_WR).
    fn shutdown_write(&mut self, port: u32) -> Result<()> {
        self.control(port, op::SHUTDOWN, SHUTDOWN_SEND)
    }

    /// close(2): SHUTDOWN both ways; the host's RST that follows finds no stream.
    fn close(&mut self, port: u32) -> Result<()> {
        if self.conn(port)?.st == St::Established {
            self.control(port, op::SHUTDOWN, SHUTDOWN_RCV | SHUTDOWN_SEND)?;
        }
        self.forget(port);
        Ok(())
    }

    /// An outsourced TCP connect as liboutsock does it in a VM: a vsock stream to host-server,
    /// the connect request (no descriptor passing), its answer; the stream then carries the
    /// connection.
    fn tcp_connect(&mut self, dest: SocketAddrV4) -> Result<u32> {
        let port = self.open()?;
        self.tcp_request(port, dest)?;
        Ok(port)
    }

    /// The connect request on the open stream `port`, and its answer.
    fn tcp_request(&mut self, port: u32, dest: SocketAddrV4) -> Result<()> {
        let req = to_vec(&connect_request(dest, false, false))?;
        self.write(port, &req)?;
        let head = self.read_exact(port, shared_proto::frame::HEADER_LEN)?;
        let len = frame_len(&head)?.context("a whole header")?;
        let mut frame = head;
        let rest = self.read_exact(port, len - frame.len())?;
        frame.extend(rest);
        let answer: ToGuest = decode_exact(&frame)?;
        if let Err(e) = connect_answer(&answer) {
            let _ = self.close(port);
            bail!("connect to {dest} failed: {e:?}");
        }
        Ok(())
    }
}

/// `vm-native up|down|probe ADDR SECS`, natively in `host`: the same work as the guest's.
pub fn native(mode: &str, target: &str, secs: f64) -> Result<()> {
    let addr: SocketAddr = target.to_socket_addrs()?.next().context("no address")?;
    match mode {
        "up" => {
            let mut c = TcpStream::connect(addr)?;
            let buf = vec![0x5au8; 256 * 1024];
            let cpu0 = own_cpu_ns();
            let t = Instant::now();
            while t.elapsed().as_secs_f64() < secs {
                c.write_all(&buf)?;
            }
            c.shutdown(std::net::Shutdown::Write)?;
            let mut ack = [0u8; 8];
            c.read_exact(&mut ack)?;
            let got = u64::from_be_bytes(ack);
            println!("{} {got} {}", gbps(got, t.elapsed()), own_cpu_ns() - cpu0);
        }
        "down" => {
            let mut c = TcpStream::connect(addr)?;
            c.write_all(&u64::MAX.to_be_bytes())?;
            let mut buf = vec![0u8; 256 * 1024];
            let cpu0 = own_cpu_ns();
            let t = Instant::now();
            let mut got = 0u64;
            while t.elapsed().as_secs_f64() < secs {
                match c.read(&mut buf)? {
                    0 => bail!("the source ended"),
                    n => got += n as u64,
                }
            }
            println!("{} {got} {}", gbps(got, t.elapsed()), own_cpu_ns() - cpu0);
        }
        _ => bail!("vm-native: unknown mode {mode}"),
    }
    Ok(())
}

fn gbps(bytes: u64, t: Duration) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let b = bytes as f64;
    b * 8.0 / t.as_secs_f64() / 1e9
}

/// A dummy IPv4 address for `v6` from dns-cache: an inbound-peer dummy stands for any IPv6
/// address.
pub fn peer_dummy(s: &Stack, v6: std::net::Ipv6Addr) -> Result<std::net::Ipv4Addr> {
    use shared_proto::lookup::{LookupOp, LookupReply, LookupRequest, LookupResponse};
    use shared_proto::{decode, to_vec};
    let mut dns = std::os::unix::net::UnixStream::connect(s.dns_sock())?;
    dns.write_all(&to_vec(&LookupRequest {
        id: 1,
        op: LookupOp::PeerDummy { v6 },
    })?)?;
    let mut buf = vec![0u8; 4096];
    let n = dns.read(&mut buf)?;
    match decode::<LookupResponse>(&buf[..n])? {
        Some((
            LookupResponse {
                reply: LookupReply::Dummy { dummy },
                ..
            },
            _,
        )) => Ok(dummy),
        other => bail!("no dummy for {v6}: {other:?}"),
    }
}

/// The source (run inside `world`): per connection, reads an 8-byte big-endian count and writes
/// that many bytes (or until the reader goes); prints "ready".
pub fn source(at: &str) -> Result<()> {
    let l = std::net::TcpListener::bind(at)?;
    println!("ready");
    std::io::stdout().flush()?;
    for c in l.incoming().flatten() {
        std::thread::spawn(move || {
            let mut c = c;
            let mut n = [0u8; 8];
            if c.read_exact(&mut n).is_err() {
                return;
            }
            let mut left = u64::from_be_bytes(n);
            let buf = vec![0xa5u8; 256 * 1024];
            while left > 0 {
                let k = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                if c.write_all(&buf[..k]).is_err() {
                    return;
                }
                left -= k as u64;
            }
        });
    }
    Ok(())
}

/// One direction's run: Gbit/s, bytes, and the CPU each busy party spent over it (ns).
#[derive(Debug, Default, Clone, Copy)]
struct Bulk {
    gbps: f64,
    bytes: u64,
    /// The VMM's event thread (none natively).
    vmm_ns: u64,
    /// host-server (not in a native run).
    host_ns: u64,
    /// The client: the simulated guest's thread (this one: its copies, rings and waits), or
    /// the native client process.
    client_ns: u64,
    /// The server in `world` (the drain or the source: one thread per connection).
    peer_ns: u64,
}

/// The CPU times a bulk run is measured from: the VMM's event thread, host-server, this
/// (the guest's) thread and the world's server.
struct CpuMark {
    vmm: u64,
    host: u64,
    client: u64,
    peer: u64,
    pids: (u32, u32),
}

impl CpuMark {
    fn now(vmm: &Vmm, (host_pid, peer_pid): (u32, u32)) -> Self {
        Self {
            vmm: vmm.cpu_ns(),
            host: process_cpu_ns(host_pid),
            client: own_cpu_ns(),
            peer: process_cpu_ns(peer_pid),
            pids: (host_pid, peer_pid),
        }
    }

    /// The run that moved `bytes` in `elapsed` since this mark.
    fn bulk(&self, vmm: &Vmm, bytes: u64, elapsed: Duration) -> Bulk {
        Bulk {
            gbps: gbps(bytes, elapsed),
            bytes,
            vmm_ns: vmm.cpu_ns() - self.vmm,
            host_ns: process_cpu_ns(self.pids.0) - self.host,
            client_ns: own_cpu_ns() - self.client,
            peer_ns: process_cpu_ns(self.pids.1) - self.peer,
        }
    }
}

/// This thread's CPU time so far, ns (schedstat).
fn own_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn guest_up(vmm: &mut Vmm, pids: (u32, u32), dest: SocketAddrV4, secs: f64) -> Result<Bulk> {
    let mark = CpuMark::now(vmm, pids);
    let g = &mut vmm.guest;
    let port = g.tcp_connect(dest)?;
    let buf = vec![0x5au8; 256 * 1024];
    let t = Instant::now();
    let mut sent = 0u64;
    while t.elapsed().as_secs_f64() < secs {
        g.write(port, &buf)?;
        sent += buf.len() as u64;
    }
    g.shutdown_write(port)?;
    let ack = g.read_exact(port, 8)?;
    let elapsed = t.elapsed();
    g.close(port)?;
    let got = u64::from_be_bytes(ack.try_into().map_err(|_| anyhow::anyhow!("8 bytes"))?);
    if got != sent {
        bail!("the guest sent {sent} bytes, the drain got {got}");
    }
    Ok(mark.bulk(vmm, got, elapsed))
}

fn guest_down(vmm: &mut Vmm, pids: (u32, u32), dest: SocketAddrV4, secs: f64) -> Result<Bulk> {
    let mark = CpuMark::now(vmm, pids);
    let g = &mut vmm.guest;
    let port = g.tcp_connect(dest)?;
    g.write(port, &u64::MAX.to_be_bytes())?;
    let t = Instant::now();
    let mut got = 0u64;
    while t.elapsed().as_secs_f64() < secs {
        match g.read(port, None, 256 * 1024)? {
            0 => bail!("the source ended"),
            n => got += n as u64,
        }
    }
    let elapsed = t.elapsed();
    g.close(port)?;
    Ok(mark.bulk(vmm, got, elapsed))
}

/// Connect + first byte `n` times: each one's total µs, and its phases (the vsock stream
/// open: REQUEST to RESPONSE; the connect request to host-server's answer; the byte's echo).
fn guest_probes(vmm: &mut Vmm, dest: SocketAddrV4, n: usize) -> Result<(Vec<f64>, [Vec<f64>; 3])> {
    let g = &mut vmm.guest;
    let mut out = Vec::with_capacity(n);
    let mut phases: [Vec<f64>; 3] = Default::default();
    let us = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e6;
    for _ in 0..n {
        let t = Instant::now();
        let port = g.open()?;
        let opened = Instant::now();
        g.tcp_request(port, dest)?;
        let answered = Instant::now();
        g.write(port, b"x")?;
        let b = g.read_exact(port, 1)?;
        let done = Instant::now();
        out.push(us(t, done));
        phases[0].push(us(t, opened));
        phases[1].push(us(opened, answered));
        phases[2].push(us(answered, done));
        if b != b"x" {
            bail!("the echo answered {b:?}");
        }
        g.close(port)?;
    }
    Ok((out, phases))
}

/// Where one of [`guest_rr_clients`]' clients stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rr {
    Opening,
    Asking,
    Echo,
    Closing,
}

/// connrate's measure with `clients` connections at once through the one guest: each client
/// connects, sends one byte, reads it back and the server's close, closes, and starts again,
/// for `secs`; the driver serves them all from one loop, as a guest kernel would. Returns
/// (connections, seconds, each one's µs, VMM event thread ns, host-server ns).
fn guest_rr_clients(
    vmm: &mut Vmm,
    host_pid: u32,
    dest: SocketAddrV4,
    clients: usize,
    secs: f64,
) -> Result<(usize, f64, Vec<f64>, u64, u64)> {
    let (c0, h0) = (vmm.cpu_ns(), process_cpu_ns(host_pid));
    let g = &mut vmm.guest;
    let req = to_vec(&connect_request(dest, false, false))?;
    let start = Instant::now();
    let mut times = Vec::new();
    let mut live: Vec<(u32, Rr, Instant)> = Vec::with_capacity(clients);
    for _ in 0..clients {
        live.push((g.start_open()?, Rr::Opening, Instant::now()));
    }
    let mut last_progress = Instant::now();
    while !live.is_empty() {
        g.pump(Instant::now() + STALL)?;
        let mut i = 0;
        'clients: while i < live.len() {
            loop {
                let (port, state, t) = live[i];
                let c = g.conn(port)?;
                if c.st == St::Reset {
                    bail!("a request/response stream was reset ({state:?})");
                }
                let next = match state {
                    Rr::Opening if c.st == St::Established => {
                        g.write(port, &req)?;
                        Some(Rr::Asking)
                    }
                    Rr::Asking => match g.try_answer(port)? {
                        Some(a) => {
                            if let Err(e) = connect_answer(&a) {
                                bail!("connect to {dest} failed: {e:?}");
                            }
                            g.write(port, b"x")?;
                            Some(Rr::Echo)
                        }
                        None => None,
                    },
                    Rr::Echo if c.rx_len > 0 => {
                        if g.read_exact(port, 1)? != b"x" {
                            bail!("the server's byte was not ours");
                        }
                        Some(Rr::Closing)
                    }
                    Rr::Closing if c.peer_shut & SHUTDOWN_SEND != 0 || c.rx_len > 0 => {
                        if g.read(port, None, 1)? != 0 {
                            bail!("more than one byte back");
                        }
                        g.close(port)?;
                        times.push(t.elapsed().as_secs_f64() * 1e6);
                        if start.elapsed().as_secs_f64() < secs {
                            live[i] = (g.start_open()?, Rr::Opening, Instant::now());
                        } else {
                            live.swap_remove(i);
                            last_progress = Instant::now();
                            continue 'clients;
                        }
                        last_progress = Instant::now();
                        // A new connection: nothing more for it until the device answers.
                        break;
                    }
                    _ => None,
                };
                // Several steps may be ready at once (the echo and the close in one batch).
                let Some(n) = next else { break };
                live[i].1 = n;
                last_progress = Instant::now();
            }
            i += 1;
        }
        if last_progress.elapsed() > STALL {
            bail!("request/response clients stalled: {live:?}");
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    Ok((
        times.len(),
        elapsed,
        times,
        vmm.cpu_ns() - c0,
        process_cpu_ns(host_pid) - h0,
    ))
}

/// The host-server settings the vm part's world needs: this VMM (the bench's uid) as `vm0`.
pub fn host_settings(world_dir: &std::path::Path) -> String {
    format!(
        "[listen]\ndefault_address = \"{}\"\n[vms.{VM}]\nsocket = \"{}\"\naddress = \"{}\"\nvmm_uid = {}\n",
        addr::HOST,
        world_dir.join("vm0.vsock").display(),
        addr::HOST_VMS[0],
        rustix::process::getuid().as_raw()
    )
}

fn spawn_server(s: &Stack, what: &str, port: u16) -> Result<testworld::Daemon> {
    let mut cmd = s.world.world().command(std::env::current_exe()?);
    cmd.arg(what)
        .arg(SocketAddr::new(addr::ECHO.into(), port).to_string());
    cmd.stdout(Stdio::piped());
    let mut d = s.world.world().spawn(what, cmd)?;
    let mut line = String::new();
    BufReader::new(d.take_stdout().context("server stdout")?).read_line(&mut line)?;
    if line.trim() != "ready" {
        bail!("the {what} did not start");
    }
    Ok(d)
}

/// A native run from `host` (`vm-native`): its figure, and the CPU of its client and of the
/// server in `world` (pid `peer_pid`).
fn native_bulk(s: &Stack, mode: &str, port: u16, secs: f64, peer_pid: u32) -> Result<Bulk> {
    let p0 = process_cpu_ns(peer_pid);
    let mut c = s.world.host().command(std::env::current_exe()?);
    c.args([
        "vm-native",
        mode,
        &SocketAddr::new(addr::ECHO.into(), port).to_string(),
        &secs.to_string(),
    ]);
    let out = c.output()?;
    let peer_ns = process_cpu_ns(peer_pid) - p0;
    if !out.status.success() {
        bail!("vm-native {mode}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut f = text.split_whitespace();
    let mut next = |what: &str| {
        f.next()
            .with_context(|| format!("vm-native {mode}: no {what}"))
    };
    Ok(Bulk {
        gbps: next("Gbit/s")?.parse().context("Gbit/s")?,
        bytes: next("bytes")?.parse().context("bytes")?,
        client_ns: next("CPU")?.parse().context("CPU")?,
        peer_ns,
        ..Bulk::default()
    })
}

/// The vm part, in its own test world (host-server must take this process for a VMM).
pub fn vm(rounds: usize, secs: u32) -> Result<()> {
    let secs = f64::from(secs);
    println!("\nvm: the VM data path without KVM — the real vsock device, muxer and event loop in this process, a simulated guest, through host-server — vs native IPv6 from host, {rounds} rounds of {secs} s, alternating");
    let dir = std::env::temp_dir();
    let mut s = Stack::start("benchvm", &host_settings(&dir))
        .context("starting the vm part's test world")?;
    // The VMM as shipped (host-server hands it each connection's IPv6 socket), then the same
    // VMM saying it takes none, so host-server relays: the fallback's figures, same run.
    let result = run(&s, rounds, secs, true).and_then(|()| run(&s, rounds, secs, false));
    if result.is_err() {
        eprintln!("{}", s.logs());
    }
    s.stop_host();
    result
}

fn run(s: &Stack, rounds: usize, secs: f64, take_sockets: bool) -> Result<()> {
    // How the recorded figures of this run are told apart.
    let mode = if take_sockets {
        "VMM takes the socket"
    } else {
        "relay"
    };
    println!(
        "  {}:",
        if take_sockets {
            "the VMM takes the sockets (host-server passes each connection's IPv6 socket; the VMM bridges the guest's stream to it)"
        } else {
            "the relay (the VMM takes no sockets: host-server relays between its Unix stream and the IPv6 socket)"
        }
    );
    let drain = spawn_server(s, "drain", DRAIN_PORT)?;
    let source = spawn_server(s, "source", SOURCE_PORT)?;
    let rr = spawn_server(s, "rr-server", RR_PORT)?;
    let dummy = peer_dummy(s, addr::ECHO)?;
    let host_pid = s.host_pid();
    let mut vmm = Vmm::start(&s.host_sock(), take_sockets)?;
    let me = std::env::current_exe()?;
    let counted = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    let metrics = &outsock_vmm::metrics::METRICS;
    let connects_before = counted(&metrics.vsock_guest_connections);
    let reused_before = counted(&metrics.kept_streams_reused);

    let mut up: (Vec<Bulk>, Vec<Bulk>) = (Vec::new(), Vec::new());
    let mut down: (Vec<Bulk>, Vec<Bulk>) = (Vec::new(), Vec::new());
    let mut lat: (Vec<f64>, Vec<f64>) = (Vec::new(), Vec::new());
    let mut phases: [Vec<f64>; 3] = Default::default();
    let mut rates: Vec<Rate> = RR_CLIENTS.iter().map(|_| Rate::default()).collect();
    for _ in 0..rounds {
        up.0.push(native_bulk(s, "up", DRAIN_PORT, secs, drain.pid())?);
        up.1.push(guest_up(
            &mut vmm,
            (host_pid, drain.pid()),
            SocketAddrV4::new(dummy, DRAIN_PORT),
            secs,
        )?);
        down.0
            .push(native_bulk(s, "down", SOURCE_PORT, secs, source.pid())?);
        down.1.push(guest_down(
            &mut vmm,
            (host_pid, source.pid()),
            SocketAddrV4::new(dummy, SOURCE_PORT),
            secs,
        )?);
        let mut n = s.world.host().command(&me);
        n.args([
            "probe-blocking",
            &format!("[{}]:{}", addr::ECHO, addr::ECHO_PORT),
        ]);
        let out = n.output()?;
        if !out.status.success() {
            bail!("probe failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        lat.0.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| l.parse::<f64>().ok()),
        );
        let (all, parts) =
            guest_probes(&mut vmm, SocketAddrV4::new(dummy, addr::ECHO_PORT), PROBES)?;
        lat.1.extend(all);
        for (into, from) in phases.iter_mut().zip(parts) {
            into.extend(from);
        }
        for (k, clients) in RR_CLIENTS.iter().enumerate() {
            let mut n = s.world.host().command(&me);
            n.args([
                "rr-client",
                &SocketAddr::new(addr::ECHO.into(), RR_PORT).to_string(),
                &clients.to_string(),
                &((secs * 500.0) as u64).to_string(),
            ]);
            let out = n.output()?;
            if !out.status.success() {
                bail!("rr-client: {}", String::from_utf8_lossy(&out.stderr));
            }
            let text = String::from_utf8_lossy(&out.stdout);
            let mut lines = text.lines();
            let head: Vec<f64> = lines
                .next()
                .context("no summary line")?
                .split(' ')
                .filter_map(|v| v.parse().ok())
                .collect();
            let [count, took] = head[..] else {
                bail!("bad rr-client summary line");
            };
            let r = &mut rates[k];
            r.native.push(count / took);
            r.native_times
                .extend(lines.filter_map(|l| l.parse::<f64>().ok()));
            let (count, took, times, vmm_ns, host_ns) = guest_rr_clients(
                &mut vmm,
                host_pid,
                SocketAddrV4::new(dummy, RR_PORT),
                *clients,
                secs / 2.0,
            )?;
            #[allow(clippy::cast_precision_loss)]
            let count = count.max(1) as f64;
            r.vm.push(count / took);
            #[allow(clippy::cast_precision_loss)]
            {
                r.vmm_us.push(vmm_ns as f64 / 1e3 / count);
                r.host_us.push(host_ns as f64 / 1e3 / count);
            }
            r.vm_times.extend(times);
        }
    }
    for (what, (native, guest)) in [("guest→IPv6", &mut up), ("IPv6→guest", &mut down)] {
        bulk_report(&format!("{what} ({mode})"), native, guest);
    }
    println!("  connect + first byte to the echo server (native: a blocking connect; the guest's is too):");
    for (name, v) in [("native", &mut lat.0), ("vm (simulated guest)", &mut lat.1)] {
        v.sort_by(f64::total_cmp);
        record::samples("vm-latency", &format!("{name}, {mode} run"), "µs", v);
    }
    for (label, q) in [("p50", 0.50), ("p99", 0.99)] {
        let (n, g) = (quantile(&lat.0, q), quantile(&lat.1, q));
        println!(
            "    {label}: native {n:.1} µs, vm (simulated guest) {g:.1} µs, difference {:+.1} µs{}",
            g - n,
            if q == 0.5 {
                "  (goal ≤ +150 µs)"
            } else {
                ""
            }
        );
    }
    let mut p50 = [0.0; 3];
    for (p, v) in p50.iter_mut().zip(&mut phases) {
        v.sort_by(f64::total_cmp);
        *p = quantile(v, 0.5);
    }
    println!(
        "    the guest's p50 by phase: vsock stream open {:.1} µs, connect request to answer {:.1} µs, first byte's echo {:.1} µs",
        p50[0], p50[1], p50[2]
    );
    // In series, the guest's connect + first byte wakes a sleeping thread 10 times: the open
    // (guest → VMM → guest), the request (guest → VMM → host-server → VMM → guest) and the
    // echo (guest → VMM → server → VMM → guest; through the relay, host-server twice more);
    // native's wakes the server and the client.
    let hops: u32 = if take_sockets { 10 } else { 12 };
    // A wake-up costs far more when the woken thread's CPU is idle (here a vCPU the host must
    // wake) than on the waker's own CPU: both, pinned.
    let (across, same) = (handoff_us(Some((0, 1)))?, handoff_us(Some((0, 0)))?);
    let extra = f64::from(hops - 2);
    println!(
        "    one wake-up of a sleeping thread by another on this machine (eventfd, epoll; p50 of 5,000 round trips / 2): {across:.1} µs onto another CPU, {same:.1} µs on the same one; the guest's connect + first byte waits for {hops} in series, native's for 2: {} × that = {:.0}–{:.0} µs of the difference",
        hops - 2,
        extra * same,
        extra * across
    );
    record::figure("vm-latency", "wake-up onto another CPU p50", "µs", across);
    record::figure("vm-latency", "wake-up on the same CPU p50", "µs", same);
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        quantile(v, 0.5)
    };
    println!("  connection rate (connrate's: connect, one byte each way, the server's close, close, again; a request/response server in world; SECONDS / 2 a run):");
    for (clients, r) in RR_CLIENTS.iter().zip(&mut rates) {
        let (nr, vr) = (med(&mut r.native), med(&mut r.vm));
        for v in [&mut r.native_times, &mut r.vm_times] {
            v.sort_by(f64::total_cmp);
        }
        println!(
            "    {clients:>2} clients: native {nr:.0} conn/s, vm (simulated guest) {vr:.0} conn/s, ratio {:.3}",
            vr / nr
        );
        #[allow(clippy::cast_precision_loss)] // A client count.
        record::figure(
            "vm-connrate",
            &format!("ratio @{}", *clients as f64),
            "×",
            vr / nr,
        );
        println!(
            "                per connection p50 {:.1} → {:.1} µs, p99 {:.1} → {:.1} µs; CPU per connection: VMM event thread {:.1} µs, host-server {:.1} µs",
            quantile(&r.native_times, 0.5),
            quantile(&r.vm_times, 0.5),
            quantile(&r.native_times, 0.99),
            quantile(&r.vm_times, 0.99),
            med(&mut r.vmm_us),
            med(&mut r.host_us)
        );
    }
    println!(
        "  guest connects: {}, of them sent to host-server on a host.sock stream kept from an ended connection: {}",
        counted(&metrics.vsock_guest_connections) - connects_before,
        counted(&metrics.kept_streams_reused) - reused_before
    );
    drop(drain);
    drop(source);
    drop(rr);
    Ok(())
}

/// Seconds of CPU per GB moved of each party of `runs` (summed over the runs), in the order
/// of `of`.
fn per_gb<const N: usize>(runs: &[Bulk], of: [fn(&Bulk) -> u64; N]) -> [f64; N] {
    let bytes: u64 = runs.iter().map(|b| b.bytes).sum();
    #[allow(clippy::cast_precision_loss)]
    of.map(|f| runs.iter().map(f).sum::<u64>() as f64 / 1e9 / (bytes.max(1) as f64 / 1e9))
}

/// The most Gbit/s parties costing `per_gb` (s of CPU per GB each, one thread each) can move
/// on `cpus` CPUs with nothing else running: each party on a CPU of its own as long as there
/// are enough, every CPU busy all the time otherwise.
fn ceiling(per_gb: &[f64], cpus: f64) -> f64 {
    let busiest = per_gb.iter().copied().fold(0.0, f64::max);
    let total: f64 = per_gb.iter().sum();
    8.0 / busiest.max(total / cpus)
}

fn bulk_report(what: &str, native: &[Bulk], guest: &[Bulk]) {
    let mut n: Vec<f64> = native.iter().map(|b| b.gbps).collect();
    n.sort_by(f64::total_cmp);
    let mut g: Vec<f64> = guest.iter().map(|b| b.gbps).collect();
    g.sort_by(f64::total_cmp);
    let (nm, gm) = (quantile(&n, 0.5), quantile(&g, 0.5));
    println!("  {what}:");
    println!(
        "    native               min {:.2}  median {nm:.2}  max {:.2} Gbit/s",
        n[0],
        n[n.len() - 1]
    );
    println!(
        "    vm (simulated guest) min {:.2}  median {gm:.2}  max {:.2} Gbit/s",
        g[0],
        g[g.len() - 1]
    );
    println!(
        "    ratio of medians (vm / native): {:.3}  (goal ≥ 0.9)",
        gm / nm
    );
    record::figure("vm-throughput", &format!("ratio: {what}"), "×", gm / nm);
    record::figure(
        "vm-throughput",
        &format!("median native: {what}"),
        "Gbit/s",
        nm,
    );
    record::figure("vm-throughput", &format!("median vm: {what}"), "Gbit/s", gm);
    let [vmm, host, client, peer] = per_gb(
        guest,
        [|b| b.vmm_ns, |b| b.host_ns, |b| b.client_ns, |b| b.peer_ns],
    );
    let [n_client, n_peer] = per_gb(native, [|b| b.client_ns, |b| b.peer_ns]);
    record::figure(
        "vm-cpu",
        &format!("VMM event thread per GB: {what}"),
        "s",
        vmm,
    );
    println!(
        "    CPU per GB moved: VMM event thread {vmm:.3} s, host-server {host:.3} s, the simulated guest's thread {client:.3} s, the server in world {peer:.3} s (native: client {n_client:.3} s, server {n_peer:.3} s)"
    );
    // What these costs allow on this machine: the vm's parties need more CPU per byte than
    // native's two, and on few CPUs that, not waiting, may be what bounds it.
    #[allow(clippy::cast_precision_loss)]
    let cpus = std::thread::available_parallelism().map_or(1, usize::from) as f64;
    let vm_cap = ceiling(&[vmm, host, client, peer], cpus);
    let native_cap = ceiling(&[n_client, n_peer], cpus);
    println!(
        "    on this machine's {cpus} CPUs, with each party always running and nothing else: at most {vm_cap:.2} Gbit/s (vm), {native_cap:.2} (native); the vm's ceiling is {:.3}× the native median",
        vm_cap / nm
    );
    record::figure(
        "vm-cpu",
        &format!("vm CPU ceiling / native median: {what}"),
        "×",
        vm_cap / nm,
    );
}

/// This machine's cost of one thread waking another that sleeps in epoll_wait on an eventfd
/// (as the VMM's event loop and the guest's interrupt wait do), µs: the p50 of 5,000 round
/// trips between two threads, halved; `cpus`: the CPUs the two threads are pinned to (where
/// the machine has them; this thread's own affinity is put back after).
fn handoff_us(cpus: Option<(usize, usize)>) -> Result<f64> {
    /// Pins the calling thread to `cpu`; returns its old mask (None: not pinned).
    fn pin(cpu: usize) -> Option<CpuSet> {
        use rustix::thread::{sched_getaffinity, sched_setaffinity};
        let old = sched_getaffinity(None).ok()?;
        let mut one = CpuSet::new();
        one.set(cpu);
        sched_setaffinity(None, &one).ok().map(|()| old)
    }
    fn unpin(old: Option<CpuSet>) {
        if let Some(old) = old {
            let _ = rustix::thread::sched_setaffinity(None, &old);
        }
    }
    use rustix::thread::CpuSet;
    let cpus = cpus
        .filter(|&(a, b)| a.max(b) < std::thread::available_parallelism().map_or(1, usize::from));
    fn wait(ep: &Epoll, fd: &EventFd) -> std::io::Result<()> {
        let mut ev = [EpollEvent::default(); 1];
        loop {
            match fd.read() {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    match ep.wait(-1, &mut ev) {
                        Ok(_) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
    fn watching(fd: &EventFd) -> std::io::Result<Epoll> {
        let ep = Epoll::new()?;
        ep.ctl(
            ControlOperation::Add,
            fd.as_raw_fd(),
            EpollEvent::new(EventSet::IN, 0),
        )?;
        Ok(ep)
    }
    const TRIPS: usize = 5_000;
    let ping = EventFd::new(libc::EFD_NONBLOCK)?;
    let pong = EventFd::new(libc::EFD_NONBLOCK)?;
    let (ping2, pong2) = (ping.try_clone()?, pong.try_clone()?);
    let peer = std::thread::spawn(move || -> std::io::Result<()> {
        if let Some((_, b)) = cpus {
            pin(b);
        }
        let ep = watching(&ping2)?;
        for _ in 0..TRIPS + 100 {
            wait(&ep, &ping2)?;
            pong2.write(1)?;
        }
        Ok(())
    });
    let mine = cpus.and_then(|(a, _)| pin(a));
    let ep = watching(&pong)?;
    let mut trips = Vec::with_capacity(TRIPS);
    for i in 0..TRIPS + 100 {
        let t = Instant::now();
        ping.write(1)?;
        wait(&ep, &pong)?;
        // The first 100 warm up.
        if i >= 100 {
            trips.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    unpin(mine);
    peer.join()
        .map_err(|_| anyhow::anyhow!("the hand-off thread panicked"))??;
    trips.sort_by(f64::total_cmp);
    Ok(quantile(&trips, 0.5) / 2.0)
}
