//! A fake guest driver on plain memory, for the unit tests, the fuzz target and the bench's
//! simulated guest (e2e's `outsock-bench … vm`, where the device runs on another thread): it
//! lays out three split queues, writes descriptor chains and avail entries the way a driver
//! would — or any way at all — and reads the used rings back.
//!
//! [`fuzz_one`] is the `vsock_device` fuzz target's body (fuzz/, cargo-fuzz): the device sits
//! behind its virtio-mmio transport, which the fake driver brings up with register writes as
//! Linux does; then arbitrary bytes become descriptor chains, well-formed and not, host-side
//! traffic, and raw MMIO reads and writes of any register (reset, re-negotiation, queue sizes
//! and addresses anywhere), and the device runs over them; the only property is that nothing
//! panics or hangs. The guest's payloads and host-server's writes are the input's own bytes,
//! so request frames, answers and datagrams cross the device, and the companions they make
//! are reached (the companion seeds show it). [`hybrid_one`] (the `hybrid_lines` target)
//! writes arbitrary bytes to the VM's socket as a host process's hybrid `CONNECT <port>`
//! handshake, read by the muxer. The corpora under fuzz/corpus/{vsock_device,hybrid_lines} are
//! replayed by unit tests.

use std::collections::HashMap;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::connection::Kept;
use super::defs::{QUEUE_SIZE, RX_QUEUE, TX_QUEUE};
use super::device::VsockDevice;
use super::muxer::{Muxer, MuxerConfig};
use super::packet::Header;
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::{status, IrqLine, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::devices::BusDevice;

const MEM_SIZE: usize = 32 << 20;
const QUEUE_BASES: [u64; 3] = [0, 0x1_0000, 0x2_0000];
/// Each queue's rings inside its 64 KiB: the descriptor table (16 bytes × 1024), the avail
/// ring (4 + 2 × 1024 + 2 bytes) and the used ring (4 + 8 × 1024 + 2 bytes), each with room to
/// spare. (virtio-queue's `MockSplitQueue` places the used ring only 2 × 128 bytes after the
/// avail ring's entries start, so that avail slots 128 and above would overwrite it.)
const DESC_OFFSET: u64 = 0;
const AVAIL_OFFSET: u64 = 0x4000;
const USED_OFFSET: u64 = 0x6000;
const _: () = assert!(DESC_OFFSET + 16 * QUEUE_SIZE as u64 <= AVAIL_OFFSET);
const _: () = assert!(AVAIL_OFFSET + 6 + 2 * QUEUE_SIZE as u64 <= USED_OFFSET);
const _: () = assert!(USED_OFFSET + 6 + 8 * QUEUE_SIZE as u64 <= 0x1_0000);
const BUF_START: u64 = 0x10_0000;
const VRING_DESC_F_NEXT: u16 = 1;
const VRING_DESC_F_WRITE: u16 = 2;

#[derive(Debug, Clone, Copy)]
struct Ring {
    desc: u64,
    avail: u64,
    used: u64,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
}

/// See the module documentation.
#[derive(Debug)]
pub struct FakeGuest {
    pub mem: GuestMemoryMmap,
    rings: [Ring; 3],
    next_buf: u64,
    /// RX chain head → (header address, data address).
    rx_bufs: HashMap<u16, (u64, u64)>,
}

impl Default for FakeGuest {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeGuest {
    pub fn new() -> Self {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)])
            .expect("32 MiB of anonymous memory");
        // Fresh anonymous memory is zero: every ring starts empty, its flags clear.
        let rings = QUEUE_BASES.map(|base| Ring {
            desc: base + DESC_OFFSET,
            avail: base + AVAIL_OFFSET,
            used: base + USED_OFFSET,
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
        });
        Self {
            mem,
            rings,
            next_buf: BUF_START,
            rx_bufs: HashMap::new(),
        }
    }

    /// The three queues as the driver configured them (size, ring addresses, ready), as the
    /// transport hands them to the device.
    pub fn queues(&self) -> Vec<Queue> {
        self.rings
            .iter()
            .map(|r| {
                let mut q = Queue::new(QUEUE_SIZE).expect("a power of two");
                q.set_size(QUEUE_SIZE);
                let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
                let (lo, hi) = split(r.desc);
                q.set_desc_table_address(lo, hi);
                let (lo, hi) = split(r.avail);
                q.set_avail_ring_address(lo, hi);
                let (lo, hi) = split(r.used);
                q.set_used_ring_address(lo, hi);
                q.set_ready(true);
                q
            })
            .collect()
    }

    fn alloc(&mut self, len: u64) -> u64 {
        let len = len.max(1).next_multiple_of(64);
        if self.next_buf + len > MEM_SIZE as u64 {
            self.next_buf = BUF_START;
        }
        let a = self.next_buf;
        self.next_buf += len;
        a
    }

    /// Writes one raw descriptor at table index `idx` of queue `q`.
    pub fn write_desc(&self, q: usize, idx: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = GuestAddress(self.rings[q].desc + 16 * u64::from(idx % QUEUE_SIZE));
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        self.mem
            .write_slice(&d, at)
            .expect("descriptor table in memory");
    }

    /// Makes `head` available on queue `q`.
    pub fn publish(&mut self, q: usize, head: u16) {
        let r = &mut self.rings[q];
        let slot = GuestAddress(r.avail + 4 + 2 * u64::from(r.avail_idx % QUEUE_SIZE));
        self.mem
            .write_obj(head, slot)
            .expect("avail ring in memory");
        r.avail_idx = r.avail_idx.wrapping_add(1);
        let idx = r.avail_idx;
        // One atomic store after the slot, as a driver's barrier and write: a device on
        // another thread (the bench's event loop) must never see a torn or early index.
        self.mem
            .store(idx, GuestAddress(r.avail + 2), Ordering::Release)
            .expect("avail ring in memory");
    }

    /// Adds a chain of (address, length, device-writable) buffers to queue `q`; returns its
    /// head index.
    pub fn push_chain(&mut self, q: usize, bufs: &[(u64, u32, bool)]) -> u16 {
        let start = self.rings[q].next_desc;
        for (i, &(addr, len, write)) in bufs.iter().enumerate() {
            let idx = start.wrapping_add(i as u16) % QUEUE_SIZE;
            let last = i + 1 == bufs.len();
            let flags = if write { VRING_DESC_F_WRITE } else { 0 }
                | if last { 0 } else { VRING_DESC_F_NEXT };
            let next = (idx + 1) % QUEUE_SIZE;
            self.write_desc(q, idx, addr, len, flags, next);
        }
        self.rings[q].next_desc = start.wrapping_add(bufs.len() as u16) % QUEUE_SIZE;
        self.publish(q, start);
        start
    }

    /// Queues a well-formed TX packet (header and data in two descriptors).
    pub fn send(&mut self, hdr: &Header, data: &[u8]) {
        let h = self.alloc(44);
        self.mem
            .write_slice(&hdr.to_bytes(), GuestAddress(h))
            .expect("buffer in memory");
        if data.is_empty() {
            self.push_chain(TX_QUEUE, &[(h, 44, false)]);
        } else {
            let d = self.alloc(data.len() as u64);
            self.mem
                .write_slice(data, GuestAddress(d))
                .expect("buffer in memory");
            self.push_chain(TX_QUEUE, &[(h, 44, false), (d, data.len() as u32, false)]);
        }
    }

    /// Posts `n` RX buffers of `data_len` bytes (header and data in two descriptors, as
    /// Linux 6.1 does).
    pub fn post_rx(&mut self, n: usize, data_len: u32) {
        for _ in 0..n {
            let h = self.alloc(44);
            let d = self.alloc(u64::from(data_len));
            let head = self.push_chain(RX_QUEUE, &[(h, 44, true), (d, data_len, true)]);
            self.rx_bufs.insert(head, (h, d));
        }
    }

    /// RX buffers posted and not yet used.
    pub fn rx_outstanding(&self) -> usize {
        self.rx_bufs.len()
    }

    /// New used-ring entries of queue `q`: (head, length).
    pub fn used(&mut self, q: usize) -> Vec<(u32, u32)> {
        let r = &mut self.rings[q];
        // One atomic load (the device may be adding entries on another thread).
        let idx: u16 = self
            .mem
            .load(GuestAddress(r.used + 2), Ordering::Acquire)
            .expect("used ring in memory");
        let mut out = Vec::new();
        if idx.wrapping_sub(r.used_seen) > QUEUE_SIZE {
            // More new entries than the queue has descriptors: the device broke the ring (a
            // fuzz input reset the device, or moved its rings, under a driver that kept
            // going). Linux's driver marks such a ring broken and reads none of it; skip to
            // the device's index rather than walk up to 65,535 stale slots, which made such
            // inputs 50 times slower than the others without reaching any device code.
            r.used_seen = idx;
            return out;
        }
        while r.used_seen != idx {
            let e = GuestAddress(r.used + 4 + 8 * u64::from(r.used_seen % QUEUE_SIZE));
            let id: u32 = self.mem.read_obj(e).expect("used ring in memory");
            let len: u32 = self
                .mem
                .read_obj(GuestAddress(e.0 + 4))
                .expect("used ring in memory");
            out.push((id, len));
            r.used_seen = r.used_seen.wrapping_add(1);
        }
        out
    }

    /// The packets the device put in RX buffers since the last call.
    pub fn recv(&mut self) -> Vec<(Header, Vec<u8>)> {
        let mut out = Vec::new();
        for (id, len) in self.used(RX_QUEUE) {
            let Some((h, d)) = self.rx_bufs.remove(&(id as u16)) else {
                continue;
            };
            if len < 44 {
                continue;
            }
            let mut hb = [0u8; 44];
            self.mem
                .read_slice(&mut hb, GuestAddress(h))
                .expect("buffer in memory");
            let hdr = Header::from_bytes(&hb);
            let mut data = vec![0u8; (len - 44) as usize];
            self.mem
                .read_slice(&mut data, GuestAddress(d))
                .expect("buffer in memory");
            out.push((hdr, data));
        }
        out
    }
}

/// A device on a fresh fake guest, activated, whose guest connections go to `host_socket`.
pub fn activated_device(
    guest: &FakeGuest,
    cid: u64,
    host_socket: &Path,
    listen_socket: Option<&Path>,
) -> VsockDevice {
    activated_device_with(guest, cid, host_socket, listen_socket, false)
}

/// [`activated_device`] whose muxer takes sockets (`MuxerConfig::take_sockets`) when asked.
pub fn activated_device_with(
    guest: &FakeGuest,
    cid: u64,
    host_socket: &Path,
    listen_socket: Option<&Path>,
    take_sockets: bool,
) -> VsockDevice {
    let muxer = Muxer::new(MuxerConfig {
        vm: "vm0".into(),
        cid,
        host_socket: host_socket.to_path_buf(),
        listen_socket: listen_socket.map(Path::to_path_buf),
        // The fuzzer's host side connects as this process.
        peer_uids: vec![rustix::process::getuid().as_raw()],
        take_sockets,
    })
    .expect("muxer");
    let irq = IrqLine::new(EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"));
    let mut dev = VsockDevice::new(cid, guest.mem.clone(), irq, muxer);
    dev.activate(crate::devices::virtio::VIRTIO_F_VERSION_1, guest.queues())
        .expect("activates");
    dev
}

struct Bytes2<'a>(&'a [u8]);

impl Bytes2<'_> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    /// Up to `n` bytes (fewer at the input's end).
    fn take(&mut self, n: usize) -> &[u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes([self.u8()?, self.u8()?]))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes([
            self.u8()?,
            self.u8()?,
            self.u8()?,
            self.u8()?,
        ]))
    }
}

/// A device on `guest`'s memory behind its MMIO transport, not started.
fn device_behind_transport(
    guest: &FakeGuest,
    host_socket: &Path,
    listen_socket: Option<&Path>,
) -> (Arc<Mutex<VsockDevice>>, MmioTransport) {
    let muxer = Muxer::new(MuxerConfig {
        vm: "vm0".into(),
        cid: 3,
        host_socket: host_socket.to_path_buf(),
        listen_socket: listen_socket.map(Path::to_path_buf),
        peer_uids: vec![rustix::process::getuid().as_raw()],
        take_sockets: false,
    })
    .expect("muxer");
    let irq = IrqLine::new(EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"));
    let status = irq.status();
    let dev = Arc::new(Mutex::new(VsockDevice::new(
        3,
        guest.mem.clone(),
        irq,
        muxer,
    )));
    let evts = (0..3)
        .map(|_| EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"))
        .collect();
    let transport = MmioTransport::new(dev.clone(), status, evts);
    (dev, transport)
}

fn mmio_write(t: &mut MmioTransport, offset: u64, v: u32) {
    t.write(offset, &v.to_le_bytes());
}

/// Brings the device up as Linux's virtio-mmio driver does, with `guest`'s rings.
fn driver_init(t: &mut MmioTransport, guest: &FakeGuest) {
    mmio_write(t, 0x70, 0);
    let mut s = status::ACKNOWLEDGE;
    mmio_write(t, 0x70, s);
    s |= status::DRIVER;
    mmio_write(t, 0x70, s);
    mmio_write(t, 0x24, 1);
    mmio_write(t, 0x20, (VIRTIO_F_VERSION_1 >> 32) as u32);
    s |= status::FEATURES_OK;
    mmio_write(t, 0x70, s);
    for (i, r) in guest.rings.iter().enumerate() {
        mmio_write(t, 0x30, i as u32);
        mmio_write(t, 0x38, u32::from(QUEUE_SIZE));
        for (off, a) in [(0x80, r.desc), (0x90, r.avail), (0xa0, r.used)] {
            mmio_write(t, off, a as u32);
            mmio_write(t, off + 4, (a >> 32) as u32);
        }
        mmio_write(t, 0x44, 1);
    }
    s |= status::DRIVER_OK;
    mmio_write(t, 0x70, s);
}

/// This process's directory for the targets' sockets, made once: on tmpfs (`/dev/shm`) where
/// there is one, so that binding and unlinking a socket per input costs no disk file system
/// work (on ext4 a `bind` took 25–200 µs here, and ext4's inode work was a quarter of a
/// `hybrid_lines` input's time).
fn socket_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("outsock-vsock-fuzz-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        dir
    })
}

thread_local! {
    /// `fuzz_one`'s host-server socket (its path, and the listener unless binding failed):
    /// bound once per thread, not per input, and kept for the thread's life. Sound because a
    /// listener holds no state but its queue of connections, and every input starts with that
    /// queue drained ([`host_listener`]), as a fresh listener's is.
    static HOST: &'static (PathBuf, Option<UnixListener>) = Box::leak(Box::new({
        static THREADS: AtomicUsize = AtomicUsize::new(0);
        let n = THREADS.fetch_add(1, Ordering::Relaxed);
        let path = socket_dir().join(format!("host-{n}.sock"));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).ok();
        if let Some(l) = &listener {
            let _ = l.set_nonblocking(true);
        }
        (path, listener)
    }));
}

/// This thread's host-server socket, with every connection an earlier input's muxer queued on
/// it (closed since, with that muxer) accepted and closed.
fn host_listener() -> (&'static Path, Option<&'static UnixListener>) {
    let (path, listener) = HOST.with(|h| *h);
    if let Some(l) = listener {
        while l.accept().is_ok() {}
    }
    (path, listener.as_ref())
}

/// The `vsock_device` target's body: see the module documentation.
pub fn fuzz_one(data: &[u8]) {
    let _ = companions_after(data);
}

/// [`fuzz_one`], returning what the guest's connections kept with host-server were at the end
/// (before the device's reset), and whether the muxer was connecting to host.sock again for
/// any: the seeds' way of showing they reach companions.
pub(crate) fn companions_after(data: &[u8]) -> (Vec<Kept>, bool) {
    let (host, listener) = host_listener();
    let mut guest = FakeGuest::new();
    let (dev, mut transport) = device_behind_transport(&guest, host, None);
    driver_init(&mut transport, &guest);
    let lock = || dev.lock().unwrap_or_else(PoisonError::into_inner);
    let mut accepted: Vec<UnixStream> = Vec::new();
    let mut input = Bytes2(data);
    let mut steps = 0;
    while let Some(kind) = input.u8() {
        steps += 1;
        if steps > 256 {
            break;
        }
        match kind % 8 {
            0 => {
                // A raw chain: any addresses, lengths, flags and links.
                let n = input.u8().unwrap_or(1) % 4 + 1;
                let head = input.u16().unwrap_or(0);
                for i in 0..n {
                    let addr = u64::from(input.u32().unwrap_or(0)) << (input.u8().unwrap_or(0) % 8);
                    let len = input.u32().unwrap_or(44);
                    let flags = input.u16().unwrap_or(0);
                    let next = input.u16().unwrap_or(0);
                    guest.write_desc(
                        TX_QUEUE,
                        head.wrapping_add(u16::from(i)),
                        addr,
                        len,
                        flags,
                        next,
                    );
                }
                guest.publish(TX_QUEUE, head);
                lock().process_tx();
            }
            1 => {
                // A well-formed chain with a header the guest made up.
                let mut h = Header {
                    src_cid: if input.u8().unwrap_or(0) & 1 == 0 {
                        3
                    } else {
                        u64::from(input.u32().unwrap_or(0))
                    },
                    dst_cid: 2,
                    src_port: u32::from(input.u8().unwrap_or(0) % 4) + 1000,
                    dst_port: u32::from(input.u8().unwrap_or(0) % 2) + 1024,
                    len: 0,
                    type_: u16::from(input.u8().unwrap_or(1) % 3),
                    op: u16::from(input.u8().unwrap_or(0) % 9),
                    flags: u32::from(input.u8().unwrap_or(0) % 4),
                    buf_alloc: input.u32().unwrap_or(65536),
                    fwd_cnt: input.u32().unwrap_or(0),
                };
                let dlen = usize::from(input.u16().unwrap_or(0) % 2048);
                // The payload: the input's next bytes (so that it can be a guest request
                // frame — a `Connect`, a `Listen`, a `Udp` that makes a companion — or
                // datagram frames), padded to its length.
                let mut payload = input.take(dlen).to_vec();
                payload.resize(dlen, 0x5a);
                h.len = if input.u8().unwrap_or(0) % 8 == 0 {
                    input.u32().unwrap_or(0)
                } else {
                    dlen as u32
                };
                guest.send(&h, &payload);
                lock().process_tx();
            }
            2 => {
                let n = usize::from(input.u8().unwrap_or(1) % 8);
                let len = u32::from(input.u16().unwrap_or(4096));
                guest.post_rx(n, len);
                lock().process_rx();
            }
            3 => {
                // A raw RX chain.
                let head = input.u16().unwrap_or(0);
                let addr = u64::from(input.u32().unwrap_or(0));
                let len = input.u32().unwrap_or(0);
                let flags = input.u16().unwrap_or(0);
                guest.write_desc(RX_QUEUE, head, addr, len, flags, head.wrapping_add(1));
                guest.publish(RX_QUEUE, head);
                lock().process_rx();
            }
            4 => {
                // host-server side: accept, write, or close.
                if let Some(l) = listener {
                    while let Ok((s, _)) = l.accept() {
                        let _ = s.set_nonblocking(true);
                        accepted.push(s);
                    }
                }
                let pick = usize::from(input.u8().unwrap_or(0));
                if !accepted.is_empty() {
                    let i = pick % accepted.len();
                    if pick & 0x80 != 0 {
                        accepted.swap_remove(i);
                    } else {
                        use std::io::Write;
                        // host-server's bytes: the input's next ones (an answer frame, a
                        // passed-socket answer's header, datagram frames, garbage).
                        let n = usize::from(input.u8().unwrap_or(0)) + 1;
                        let _ = accepted[i].write(input.take(n));
                    }
                }
                lock().process_backend();
            }
            5 => {
                lock().process_backend();
                let _ = guest.recv();
                let _ = guest.used(TX_QUEUE);
            }
            6 => {
                // A register write of any width; offset 0x1ff: the driver starts over.
                let offset = u64::from(input.u16().unwrap_or(0) & 0x1ff);
                if offset == 0x1ff {
                    driver_init(&mut transport, &guest);
                    continue;
                }
                let width = 1usize << (input.u8().unwrap_or(2) % 4);
                let v =
                    u64::from(input.u32().unwrap_or(0)) | u64::from(input.u32().unwrap_or(0)) << 32;
                transport.write(offset, &v.to_le_bytes()[..width]);
            }
            _ => {
                let offset = u64::from(input.u16().unwrap_or(0) & 0x1ff);
                let width = 1usize << (input.u8().unwrap_or(2) % 4);
                let mut buf = [0u8; 8];
                transport.read(offset, &mut buf[..width]);
            }
        }
        // Keep host-server's backlog empty so a connect never waits. Only the device's TX and
        // backend processing (operations 0, 1, 4, 5) connect to it.
        if !matches!(kind % 8, 0 | 1 | 4 | 5) {
            continue;
        }
        if let Some(l) = listener {
            while let Ok((s, _)) = l.accept() {
                let _ = s.set_nonblocking(true);
                accepted.push(s);
                if accepted.len() > 64 {
                    accepted.remove(0);
                }
            }
        }
    }
    let kept = {
        let d = lock();
        let m = d.muxer();
        // The guest ports and host ports the input can name (operation 1).
        let kept = (1024..1026)
            .flat_map(|host| (1000..1004).map(move |guest| (host, guest)))
            .filter_map(|(host, guest)| m.connection(host, guest)?.kept())
            .collect();
        (kept, m.redial_count() > 0)
    };
    mmio_write(&mut transport, 0x70, 0);
    kept
}

/// The `hybrid_lines` target's body: each length-prefixed (u8) piece of `data` is what one host
/// process writes to the VM's socket (its hybrid `CONNECT <port>\n` line and more), with a
/// byte before it saying whether it then closes its end; the muxer reads the handshakes.
/// Besides: the shared parsers take every piece, and a line they accept is the one the port
/// would be written as, up to leading zeros.
pub fn hybrid_one(data: &[u8]) {
    let _ = hybrid_connections(data);
}

/// [`hybrid_one`], returning the most connections the muxer held at once.
pub(crate) fn hybrid_connections(data: &[u8]) -> usize {
    use shared_proto::hybrid;
    use std::io::Write;
    // The muxer binds the VM's socket afresh, replacing the last input's file; nothing listens
    // on the host-server socket (a CONNECT goes to the guest, not to host-server).
    let host = socket_dir().join("hybrid-host.sock");
    let vm = socket_dir().join("vm.sock");
    let guest = FakeGuest::new();
    let (dev, mut transport) = device_behind_transport(&guest, &host, Some(&vm));
    driver_init(&mut transport, &guest);
    let lock = || dev.lock().unwrap_or_else(PoisonError::into_inner);
    let mut clients = Vec::new();
    let mut most = 0;
    let mut rest = data;
    while let [close, len, tail @ ..] = rest {
        let (piece, next) = tail.split_at(usize::from(*len).min(tail.len()));
        rest = next;
        for (parse, verb) in [
            (hybrid::parse_connect as fn(&[u8]) -> _, "CONNECT "),
            (hybrid::parse_ok, "OK "),
        ] {
            if let Ok(port) = parse(piece) {
                let digits = piece
                    .strip_prefix(verb.as_bytes())
                    .and_then(|d| d.strip_suffix(b"\n"))
                    .expect("an accepted line has its verb and newline");
                let trimmed: &[u8] = match digits.iter().position(|&b| b != b'0') {
                    Some(i) => &digits[i..],
                    None => b"0",
                };
                assert_eq!(trimmed, port.to_string().as_bytes());
                assert_eq!(
                    parse(hybrid::connect_line(port).as_bytes()).is_ok(),
                    verb == "CONNECT "
                );
            }
        }
        if clients.len() >= 16 {
            break;
        }
        let Ok(mut c) = UnixStream::connect(&vm) else {
            break;
        };
        let _ = c.write_all(piece);
        if close & 1 != 0 {
            let _ = c.shutdown(std::net::Shutdown::Write);
        }
        clients.push(c);
        lock().process_backend();
        most = most.max(lock().muxer().connection_count());
    }
    lock().process_backend();
    most = most.max(lock().muxer().connection_count());
    drop(clients);
    lock().process_backend();
    mmio_write(&mut transport, 0x70, 0);
    most
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_used_index_more_than_a_queue_ahead_is_skipped_to_not_walked() {
        let mut g = FakeGuest::new();
        let idx_at = GuestAddress(g.rings[RX_QUEUE].used + 2);
        // One entry, as a device adds it: read.
        g.mem
            .write_obj(7u32, GuestAddress(g.rings[RX_QUEUE].used + 4))
            .expect("used ring");
        g.mem.store(1u16, idx_at, Ordering::Release).expect("idx");
        assert_eq!(g.used(RX_QUEUE).len(), 1);
        // A jump of more than QUEUE_SIZE (a broken ring): nothing read, the index taken over.
        g.mem
            .store(1u16.wrapping_sub(5), idx_at, Ordering::Release)
            .expect("idx");
        assert!(g.used(RX_QUEUE).is_empty());
        assert_eq!(g.rings[RX_QUEUE].used_seen, 1u16.wrapping_sub(5));
        // Exactly a queue's worth is still read.
        g.mem
            .store(
                1u16.wrapping_sub(5).wrapping_add(QUEUE_SIZE),
                idx_at,
                Ordering::Release,
            )
            .expect("idx");
        assert_eq!(g.used(RX_QUEUE).len(), usize::from(QUEUE_SIZE));
    }
}
