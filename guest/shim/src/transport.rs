//! The shim's side of a stream to host-server: open it, send one request frame, read answer
//! frames together with any descriptor passed alongside (SCM_RIGHTS).
//!
//! The transport is a Unix stream to host-server (process mode) or, inside a VM, an AF_VSOCK
//! stream to the host (CID 2), which the VMM bridges to host-server after writing the VM's
//! hello. Which one is chosen once per process ([`vsock_port`]): `OUTSOCK_TRANSPORT` in the
//! environment, else `transport=` in the guest image's settings file (so daemons started
//! without our environment, through /etc/ld.so.preload, find it too), else Unix. The value is
//! `unix` or `vsock:<port>`; the rule is `shared_proto::translate::choose_transport`, which the
//! supervisor uses too.
//!
//! Everything here uses the real libc calls (never our interposed ones); descriptors passed
//! with an answer are received by the shared `outsock-fdpass` crate, given [`real::Real`] (libc's
//! own recvmsg and close).
//!
//! In process mode the stream of a connect whose socket host-server passed while connecting is
//! kept for the process's next connect (host-server keeps its end; see its `session`): up to
//! [`KEPT_STREAMS`] per process, one for each thread connecting at the same moment (a program
//! that connects from one thread at a time keeps one), each reused within [`KEEP_FOR_MS`] of its
//! last answer (host-server closes an idle one only after its request timeout, seconds), so a
//! connect in a busy program — threaded ones included — costs no stream set-up, accept or
//! credentials check. Kept descriptors are the program's too: they sit at the highest numbers
//! the descriptor limit allows (slot `i` at the limit − 1 − `i`, so the program's own
//! descriptors are numbered as natively), and before reuse each is checked to be still ours —
//! the same socket (device and inode) in the same process (a forked child closes its inherited
//! copy and opens its own) — and still quiet (host-server restarted: its end is readable); one
//! the program closed or reused is forgotten, never touched. Keeping a stream closes the other
//! slots' streams that are too old to be reused, so a burst of threads leaves none behind for
//! long.

use std::ffi::CStr;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, AtomicU64, Ordering};

use libc::{c_int, c_void};
use outsock_fdpass::recvmsg_fds;
use shared_proto::frame::{frame_len, HEADER_LEN};
use shared_proto::translate::{choose_transport, GUEST_CONFIG_FILE, HOST_CID};
use shared_proto::{decode_exact, to_vec, Errno, ToGuest, ToHost};

use crate::real;
use crate::slot::TrySlot;

/// Where host-server listens when `OUTSOCK_SOCKET` is not set.
pub const DEFAULT_SOCKET: &str = "/run/outsock/host.sock";

/// How long an answer may take before the call fails with ETIMEDOUT; host-server's own connect
/// timeout is shorter, so this only fires when host-server hangs.
const ANSWER_TIMEOUT_SECS: libc::time_t = 60;

static WARNED: AtomicBool = AtomicBool::new(false);

/// 0: not read yet; 1: Unix; `2 << 32 | port`: vsock.
static TRANSPORT: AtomicU64 = AtomicU64::new(0);

/// The vsock port host-server is reached on, or `None` in process mode (Unix socket).
#[must_use]
pub fn vsock_port() -> Option<u32> {
    let mut v = TRANSPORT.load(Ordering::Relaxed);
    if v == 0 {
        let env = std::env::var("OUTSOCK_TRANSPORT").ok();
        let config = std::fs::read_to_string(GUEST_CONFIG_FILE).ok();
        let chosen = choose_transport(env.as_deref(), config.as_deref());
        v = chosen.map_or(1, |port| 2 << 32 | u64::from(port));
        TRANSPORT.store(v, Ordering::Relaxed);
    }
    #[allow(clippy::cast_possible_truncation)] // The low 32 bits are the port.
    (v >> 32 == 2).then_some(v as u32)
}

/// An open stream to host-server, closed on drop unless handed over with [`Stream::into_raw`].
#[derive(Debug)]
pub struct Stream(c_int);

/// How long after its last answer a kept stream is used again; an older one is closed instead.
pub const KEEP_FOR_MS: u64 = 1_000;

/// How many streams a process keeps at most: as many threads may connect at once without
/// opening a stream.
pub const KEPT_STREAMS: usize = 32;

/// A kept stream (`fd` < 0: none) and what proves it is still ours.
#[derive(Clone, Copy)]
struct Kept {
    fd: c_int,
    pid: libc::pid_t,
    dev: u64,
    ino: u64,
    at_ms: u64,
}

impl Kept {
    const NONE: Kept = Kept {
        fd: -1,
        pid: 0,
        dev: 0,
        ino: 0,
        at_ms: 0,
    };
}

/// One [`Kept`] (see [`TrySlot`]).
type KeptSlot = TrySlot<Kept>;

/// Empties `slot`, returning what it held (`None`: held by another thread, or empty).
fn take_kept(slot: &KeptSlot) -> Option<Kept> {
    slot.with(|k| std::mem::replace(k, Kept::NONE))
        .filter(|k| k.fd >= 0)
}

static KEPT: [KeptSlot; KEPT_STREAMS] = [const { TrySlot::new(Kept::NONE) }; KEPT_STREAMS];

/// The device and inode of `fd`'s open file.
pub(crate) fn identity(fd: c_int) -> Option<(u64, u64)> {
    // SAFETY: stat is plain data; fstat fills it or fails.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid stat buffer.
    (unsafe { libc::fstat(fd, &mut st) } == 0).then_some((st.st_dev, st.st_ino))
}

/// The page [`own_pid`] keeps the process id in (null until first used).
static PID_PAGE: AtomicPtr<AtomicI32> = AtomicPtr::new(std::ptr::null_mut());

/// This process's id without a system call once read: kept in a page of its own that the
/// kernel empties in a forked child (MADV_WIPEONFORK), however the child was made (fork,
/// `_Fork`, a raw clone), so a child reads 0 and asks again. Where the kernel cannot do that
/// (before 4.14), every call is a getpid(2). A child that shares its parent's memory (vfork,
/// CLONE_VM) reads its parent's id, as it may only exec or exit.
pub(crate) fn own_pid() -> libc::pid_t {
    let mut page = PID_PAGE.load(Ordering::Acquire);
    if page.is_null() {
        page = pid_page();
    }
    // SAFETY: a page of ours that is never unmapped once published (or the fallback static).
    let pid = unsafe { &*page };
    match pid.load(Ordering::Relaxed) {
        0 => {
            // SAFETY: getpid has no arguments.
            let now = unsafe { libc::getpid() };
            if page != std::ptr::addr_of!(NO_WIPE).cast_mut() {
                pid.store(now, Ordering::Relaxed);
            }
            now
        }
        known => known,
    }
}

/// Where [`own_pid`] reads when the kernel has no MADV_WIPEONFORK: always 0 (never written).
static NO_WIPE: AtomicI32 = AtomicI32::new(0);

/// Maps and publishes [`PID_PAGE`] (or [`NO_WIPE`]); a thread that loses the race unmaps its
/// own page and uses the winner's.
fn pid_page() -> *mut AtomicI32 {
    const PAGE: usize = 4096;
    let fallback = std::ptr::addr_of!(NO_WIPE).cast_mut();
    // SAFETY: a fresh private anonymous mapping; no existing memory is touched.
    let mem = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    let mine = if mem == libc::MAP_FAILED {
        fallback
    // SAFETY: advice on the mapping just made.
    } else if unsafe { libc::madvise(mem, PAGE, libc::MADV_WIPEONFORK) } != 0 {
        // SAFETY: the mapping just made, not published.
        unsafe { libc::munmap(mem, PAGE) };
        fallback
    } else {
        mem.cast::<AtomicI32>()
    };
    match PID_PAGE.compare_exchange(
        std::ptr::null_mut(),
        mine,
        Ordering::AcqRel,
        Ordering::Acquire,
    ) {
        Ok(_) => mine,
        Err(theirs) => {
            if mine != fallback {
                // SAFETY: our page, never published.
                unsafe { libc::munmap(mine.cast(), PAGE) };
            }
            theirs
        }
    }
}

/// The highest descriptor number the process may have (its RLIMIT_NOFILE less one), or -1
/// when that cannot be read: where kept streams and lent sockets sit, from the top down.
pub(crate) fn top_fd() -> c_int {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid rlimit buffer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return -1;
    }
    c_int::try_from(lim.rlim_cur.saturating_sub(1)).unwrap_or(-1)
}

/// CLOCK_MONOTONIC_COARSE in milliseconds (a vDSO read).
pub(crate) fn now_ms() -> u64 {
    // SAFETY: timespec is plain data.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1000
        + u64::try_from(ts.tv_nsec).unwrap_or(0) / 1_000_000
}

impl Drop for Stream {
    fn drop(&mut self) {
        // SAFETY: we own this fd.
        unsafe { real::close(self.0) };
    }
}

fn errno() -> c_int {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// The calling thread's errno, as the protocol's [`Errno`].
#[must_use]
pub fn last_errno() -> Errno {
    Errno(u16::try_from(errno()).unwrap_or(5))
}

fn socket_path() -> Vec<u8> {
    // SAFETY: getenv with a NUL-terminated literal; the result is copied at once.
    let p = unsafe { libc::getenv(c"OUTSOCK_SOCKET".as_ptr()) };
    if p.is_null() {
        DEFAULT_SOCKET.as_bytes().to_vec()
    } else {
        // SAFETY: getenv returned a valid NUL-terminated string.
        unsafe { CStr::from_ptr(p) }.to_bytes().to_vec()
    }
}

/// Says once per process, on stderr, that host-server cannot be reached and why.
fn warn_unreachable(path: &[u8], err: c_int) {
    if WARNED.swap(true, Ordering::Relaxed) {
        return;
    }
    let msg = format!(
        "liboutsock: cannot reach host-server at {}: {}; IPv4 sockets fail with ENETUNREACH\n",
        String::from_utf8_lossy(path),
        std::io::Error::from_raw_os_error(err)
    );
    // SAFETY: write(2) of a valid buffer to stderr.
    unsafe { real::write(2, msg.as_ptr().cast::<c_void>(), msg.len()) };
}

impl Stream {
    /// The kept stream for a connect (process mode), if there is one still ours and fresh
    /// (see the module docs), else a new one. `true` with a kept one: its request may meet a
    /// stream host-server has just closed, and is then asked again on a new one.
    ///
    /// # Errors
    /// As [`Stream::open`].
    pub fn open_for_connect() -> Result<(Self, bool), Errno> {
        if vsock_port().is_none() {
            if let Some(s) = Self::take_kept() {
                return Ok((s, true));
            }
        }
        Self::open().map(|s| (s, false))
    }

    fn take_kept() -> Option<Self> {
        KEPT.iter()
            .filter_map(take_kept)
            .find_map(|k| Self::still_ours(k, now_ms()))
    }

    /// The stream in `k`, if it is still ours, this process's and fresh; otherwise it is
    /// closed (ours) or forgotten (the program's now).
    fn still_ours(k: Kept, now: u64) -> Option<Self> {
        // The program closed it, or put another file on its number: not ours, not touched.
        if identity(k.fd) != Some((k.dev, k.ino)) {
            return None;
        }
        let stream = Self(k.fd);
        let same_process = own_pid() == k.pid;
        // A forked child's copy of its parent's stream (closed here, on drop), an old one, or
        // one host-server has closed (readable: its end).
        if !same_process || now.saturating_sub(k.at_ms) > KEEP_FOR_MS || readable(k.fd) {
            return None;
        }
        Some(stream)
    }

    /// Keeps this stream for the process's next connect (one that brought a socket passed while
    /// connecting, its answer read to the end); closed if every slot is full.
    pub fn keep(self) {
        // Moved to a slot's number among the highest descriptors the process may have, so that
        // the program's next socket or file gets the number it would get natively; where that
        // number is taken, not kept.
        let top = top_fd();
        if top < 0 {
            return;
        }
        let now = now_ms();
        // Already on a slot's number (a kept stream used again): back into that slot.
        let own = usize::try_from(top - self.0)
            .ok()
            .filter(|&i| i < KEPT_STREAMS);
        let stream = match own {
            Some(i) => KEPT[i].with(|k| self.fill(k, now)).flatten(),
            None => self.into_free_slot(top, now),
        };
        if stream.is_none() {
            Self::close_old(now);
        }
    }

    /// Puts this stream (already on its slot's number) into `k` if `k` is empty; returns it
    /// otherwise, or when its identity cannot be read.
    fn fill(self, k: &mut Kept, now: u64) -> Option<Self> {
        if k.fd >= 0 {
            return Some(self);
        }
        let Some((dev, ino)) = identity(self.0) else {
            return Some(self);
        };
        *k = Kept {
            fd: self.into_raw(),
            pid: own_pid(),
            dev,
            ino,
            at_ms: now,
        };
        None
    }

    /// Moves this stream into the first empty slot, onto that slot's number; returns it when
    /// none is empty or the empty one's number is the program's.
    fn into_free_slot(self, top: c_int, now: u64) -> Option<Self> {
        for (i, slot) in KEPT.iter().enumerate() {
            #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)] // i < 32.
            let number = top - i as c_int;
            if number <= self.0 {
                // Below our own number: the program has every number above; keep none.
                return Some(self);
            }
            // The slot stays held across the fcntl, so that no other thread fills it
            // meanwhile; the try-lock makes them pass it by, never wait.
            let done = slot.with(|k| {
                if k.fd >= 0 {
                    return None;
                }
                // SAFETY: fcntl on our own descriptor; the result is a new one or -1.
                let high = unsafe { libc::fcntl(self.0, libc::F_DUPFD_CLOEXEC, number) };
                if high != number {
                    if high >= 0 {
                        // SAFETY: the duplicate just made, ours.
                        unsafe { real::close(high) };
                    }
                    return Some(false);
                }
                crate::table::clear(high);
                // The old number closes as `self` drops; a failed fill closes the new one.
                Some(Self(high).fill(k, now).is_none())
            });
            // Otherwise taken, or full: the next slot.
            if let Some(Some(kept)) = done {
                return (!kept).then_some(self);
            }
        }
        Some(self)
    }

    /// Closes the kept streams too old to be used again (after a burst of threads, the slots
    /// nobody takes any more), checking that each is still ours first.
    fn close_old(now: u64) {
        for slot in &KEPT {
            let old = slot
                .with(|k| {
                    if k.fd >= 0 && now.saturating_sub(k.at_ms) > KEEP_FOR_MS {
                        Some(std::mem::replace(k, Kept::NONE))
                    } else {
                        None
                    }
                })
                .flatten();
            if let Some(k) = old {
                if identity(k.fd) == Some((k.dev, k.ino)) {
                    // SAFETY: still our stream (same device and inode).
                    unsafe { real::close(k.fd) };
                }
            }
        }
    }

    /// Connects to host-server. When it is unreachable the caller gets ENETUNREACH: to the
    /// program, outsourcing being down is the network being down.
    ///
    /// # Errors
    /// `ENETUNREACH` when host-server cannot be reached.
    pub fn open() -> Result<Self, Errno> {
        if let Some(port) = vsock_port() {
            return Self::open_vsock(port);
        }
        let path = socket_path();
        // SAFETY: plain socket(2) call.
        let fd = unsafe { real::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(last_errno());
        }
        // A stale entry for this fd number (closed behind our back, e.g. by close_range)
        // must not make our own calls on it look like a program's socket.
        crate::table::clear(fd);
        let stream = Self(fd);
        // SAFETY: sockaddr_un is plain data; zeroed is a valid value.
        let mut sun: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
        if path.len() >= sun.sun_path.len() {
            warn_unreachable(&path, libc::ENAMETOOLONG);
            return Err(Errno::ENETUNREACH);
        }
        for (d, s) in sun.sun_path.iter_mut().zip(&path) {
            *d = *s as libc::c_char;
        }
        let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
        // SAFETY: `sun` is a valid sockaddr_un of `len` bytes.
        let rc = unsafe { real::connect(fd, std::ptr::from_ref(&sun).cast(), len) };
        if rc != 0 {
            warn_unreachable(&path, errno());
            return Err(Errno::ENETUNREACH);
        }
        Ok(stream.with_answer_timeout())
    }

    /// Connects to the host (CID 2) on vsock `port`; the VMM bridges it to host-server.
    fn open_vsock(port: u32) -> Result<Self, Errno> {
        // SAFETY: plain socket(2) call.
        let fd = unsafe { real::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            let e = errno();
            warn_unreachable(format!("vsock port {port}").as_bytes(), e);
            return Err(Errno::ENETUNREACH);
        }
        crate::table::clear(fd);
        let stream = Self(fd);
        size_vsock_buffer(fd);
        let addr = vsock_addr(HOST_CID, port);
        let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
        // SAFETY: `addr` is a valid sockaddr_vm of `len` bytes.
        let rc = unsafe { real::connect(fd, std::ptr::from_ref(&addr).cast(), len) };
        if rc != 0 {
            warn_unreachable(format!("vsock port {port}").as_bytes(), errno());
            return Err(Errno::ENETUNREACH);
        }
        Ok(stream.with_answer_timeout())
    }

    fn with_answer_timeout(self) -> Self {
        set_receive_timeout(self.0, ANSWER_TIMEOUT_SECS);
        self
    }

    #[must_use]
    pub fn fd(&self) -> c_int {
        self.0
    }

    /// Takes ownership of `fd` (a packet channel passed by host-server).
    #[must_use]
    pub fn from_raw(fd: c_int) -> Self {
        Self(fd)
    }

    /// Gives up ownership of the fd (it becomes the program's).
    #[must_use]
    pub fn into_raw(self) -> c_int {
        let fd = self.0;
        std::mem::forget(self);
        fd
    }

    /// Sends one frame.
    ///
    /// # Errors
    /// The write's errno (EPIPE when host-server went away).
    pub fn send(&self, msg: &ToHost) -> Result<(), Errno> {
        let bytes = to_vec(msg).map_err(|_| Errno::EMSGSIZE)?;
        write_all(self.0, &bytes)
    }

    /// Sends one frame with `fd` attached to its first byte (SCM_RIGHTS): a listen request's
    /// packet channel.
    ///
    /// # Errors
    /// The send's errno.
    pub fn send_with_fd(&self, bytes: &[u8], fd: c_int) -> Result<(), Errno> {
        let n = outsock_fdpass::sendmsg_fd::<real::Real>(self.0, bytes, fd, libc::MSG_NOSIGNAL)
            .map_err(|e| {
                Errno(u16::try_from(e.raw_os_error().unwrap_or(libc::EIO)).unwrap_or(5))
            })?;
        write_all(self.0, &bytes[n..])
    }

    /// Reads one whole answer frame, and the descriptor passed with it, if any. The descriptor
    /// arrives close-on-exec (`MSG_CMSG_CLOEXEC`), so a thread that execs while it is still
    /// ours leaks nothing into the new program; `fd::replace_fd` then gives the program's fd
    /// the program's own choice.
    ///
    /// # Errors
    /// EPROTO for a malformed frame or a peer that closed early, ETIMEDOUT when none came.
    pub fn recv(&self) -> Result<(ToGuest, Option<c_int>), Errno> {
        wait_answer(self.0)?;
        recv_frame(self.0, libc::MSG_CMSG_CLOEXEC)
    }

    /// [`Stream::recv`] keeping up to `room.len()` descriptors attached to the answer (a
    /// `Lent` answer's sockets); returns the answer and how many came.
    ///
    /// # Errors
    /// As [`Stream::recv`]; every descriptor received is closed then.
    pub fn recv_fds(&self, room: &mut [c_int]) -> Result<(ToGuest, usize), Errno> {
        wait_answer(self.0)?;
        let mut count = 0;
        let msg = recv_frame_fds(self.0, libc::MSG_CMSG_CLOEXEC, false, room, &mut count)?;
        Ok((msg, count))
    }
}

/// Waits in poll(2) until `fd` has something to read (or its end), at most the answer timeout
/// (ETIMEDOUT). Not in recvmsg: a thread asleep in a Unix stream's recvmsg is woken whenever its
/// peer reads what this side sent (the socket's write-space wake-up shares the wait queue), so
/// host-server reading the request would wake it once for nothing before the answer; poll only
/// wakes for POLLIN, sparing a wake-up (two context switches) per request.
fn wait_answer(fd: c_int) -> Result<(), Errno> {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    #[allow(clippy::cast_possible_truncation)] // 60,000 ms.
    let ms = (ANSWER_TIMEOUT_SECS * 1000) as c_int;
    loop {
        // SAFETY: one valid pollfd.
        match unsafe { libc::poll(&mut p, 1, ms) } {
            0 => return Err(Errno::ETIMEDOUT),
            n if n > 0 => return Ok(()),
            _ if errno() == libc::EINTR => {}
            _ => return Err(last_errno()),
        }
    }
}

/// Whether `fd` has something to read (or its end) right now.
fn readable(fd: c_int) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut p, 1, 0) > 0 }
}

/// Gives vsock socket `fd` the receive buffer of `shared_proto::translate::VSOCK_BUFFER_SIZE`
/// (the credit the VMM may use sending to this guest). Best effort: a kernel that refuses
/// keeps its default, which only costs speed.
pub fn size_vsock_buffer(fd: c_int) {
    let size = shared_proto::translate::VSOCK_BUFFER_SIZE;
    for (level, name) in shared_proto::translate::VSOCK_BUFFER_OPTIONS {
        #[allow(clippy::cast_possible_truncation)] // 8 bytes.
        let len = std::mem::size_of_val(&size) as libc::socklen_t;
        // SAFETY: `size` is `len` readable bytes; the kernel copies them.
        let _ = unsafe { real::setsockopt(fd, level, name, std::ptr::from_ref(&size).cast(), len) };
    }
}

/// A `sockaddr_vm` for `cid:port`.
#[must_use]
pub fn vsock_addr(cid: u32, port: u32) -> libc::sockaddr_vm {
    // SAFETY: sockaddr_vm is plain data; zeroed is a valid value.
    let mut a: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    a.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    a.svm_cid = cid;
    a.svm_port = port;
    a
}

/// Clears the answer timeout on a stream that becomes a program's socket: its reads must
/// block as long as the program asks.
pub fn clear_answer_timeout(fd: c_int) {
    set_receive_timeout(fd, 0);
}

/// SO_RCVTIMEO of `secs` seconds on `fd` (0: none): how long a read for an answer (or a VM
/// listener's Inbound frame) may wait.
pub(crate) fn set_receive_timeout(fd: c_int, secs: libc::time_t) {
    let tv = libc::timeval {
        tv_sec: secs,
        tv_usec: 0,
    };
    // SAFETY: setsockopt with a valid timeval of the right size.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            std::ptr::from_ref(&tv).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
    }
}

/// Writes all of `buf` to `fd`, retrying on EINTR.
fn write_all(fd: c_int, mut buf: &[u8]) -> Result<(), Errno> {
    while !buf.is_empty() {
        // SAFETY: `buf` is valid for its length; MSG_NOSIGNAL avoids SIGPIPE in the program.
        // The real call, never our interposed one: this fd may be a program's UDP association.
        let n = unsafe {
            real::sendto(
                fd,
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_NOSIGNAL,
                std::ptr::null(),
                0,
            )
        };
        if n < 0 {
            let e = errno();
            if e == libc::EINTR {
                continue;
            }
            return Err(Errno(u16::try_from(e).unwrap_or(5)));
        }
        buf = &buf[usize::try_from(n).unwrap_or(0)..];
    }
    Ok(())
}

/// Reads one frame from `fd` with any SCM_RIGHTS descriptor (received by `outsock-fdpass`,
/// through libc's own `recvmsg` and `close`). `flags` may hold `MSG_CMSG_CLOEXEC`, and
/// `MSG_DONTWAIT` for the first read only (a non-blocking accept): once a frame has begun, the
/// rest is read to the end. A second descriptor is closed.
///
/// # Errors
/// EAGAIN when non-blocking and nothing is there; EPROTO on garbage or early close.
pub fn recv_frame(fd: c_int, flags: c_int) -> Result<(ToGuest, Option<c_int>), Errno> {
    recv_frame_with(fd, flags, false)
}

/// [`recv_frame`] for a program's own receive on an association: a signal that interrupts the
/// wait before any byte of the frame arrived is EINTR, as a native recv would report it (ping's
/// `-w` deadline is a SIGALRM without SA_RESTART). Once a frame has begun it is read whole.
///
/// # Errors
/// As [`recv_frame`], and EINTR.
pub fn recv_datagram_frame(fd: c_int, flags: c_int) -> Result<(ToGuest, Option<c_int>), Errno> {
    recv_frame_with(fd, flags, true)
}

fn recv_frame_with(
    fd: c_int,
    flags: c_int,
    interruptible: bool,
) -> Result<(ToGuest, Option<c_int>), Errno> {
    let mut room = [-1; 1];
    let mut count = 0;
    let msg = recv_frame_fds(fd, flags, interruptible, &mut room, &mut count)?;
    Ok((msg, (count == 1).then_some(room[0])))
}

/// Reads one whole frame from `fd` and up to `room.len()` descriptors attached to it (more are
/// closed), counted in `count`. On an error every descriptor received is closed.
fn recv_frame_fds(
    fd: c_int,
    flags: c_int,
    interruptible: bool,
    room: &mut [c_int],
    count: &mut usize,
) -> Result<ToGuest, Errno> {
    let mut buf = Vec::with_capacity(64);
    let mut first = true;
    let fail = |room: &[c_int], e: Errno| {
        for fd in room {
            // SAFETY: descriptors passed to us, ours to close.
            unsafe { real::close(*fd) };
        }
        e
    };
    loop {
        let want = match frame_len(&buf) {
            Ok(Some(total)) => total,
            Ok(None) => HEADER_LEN,
            Err(_) => return Err(fail(&room[..*count], Errno::EPROTO)),
        };
        if buf.len() >= want {
            return decode_exact::<ToGuest>(&buf[..want])
                .map_err(|_| fail(&room[..*count], Errno::EPROTO));
        }
        let rflags = if first {
            flags
        } else {
            flags & !libc::MSG_DONTWAIT
        };
        // Read straight into the frame's missing bytes; the length goes back to what arrived.
        let have = buf.len();
        buf.resize(want, 0);
        let got = recvmsg_fds::<real::Real>(fd, &mut buf[have..], rflags, room, count);
        buf.truncate(have + got.as_ref().map_or(0, |&n| n));
        let n = match got {
            Ok(n) => n,
            Err(err) => {
                let e = err.raw_os_error().unwrap_or(libc::EIO);
                if e == libc::EINTR {
                    if interruptible && buf.is_empty() {
                        return Err(Errno::EINTR);
                    }
                    continue;
                }
                let e = if e == libc::EAGAIN && !first {
                    libc::ETIMEDOUT
                } else {
                    e
                };
                return Err(fail(&room[..*count], Errno(u16::try_from(e).unwrap_or(5))));
            }
        };
        if n == 0 {
            return Err(fail(&room[..*count], Errno::EPROTO));
        }
        first = false;
    }
}

/// Room for one packet from host-server: a datagram of the IPv6 maximum with its frame. A larger
/// packet would be truncated by the kernel and fails to decode (EPROTO), never split.
const MAX_PACKET: usize = 65_535 + 1024;

/// Receives one packet from a packet channel and decodes its frame. A signal before it came
/// is EINTR, as natively; the end of the channel (host-server closed it) is EPROTO.
pub fn recv_packet(fd: c_int, rflags: c_int) -> Result<ToGuest, Errno> {
    let mut buf = vec![0u8; MAX_PACKET];
    // SAFETY: `buf` is valid for its length.
    let n = unsafe {
        real::recvfrom(
            fd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            rflags | libc::MSG_TRUNC,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    };
    let n = usize::try_from(n).map_err(|_| last_errno())?;
    decode_packet(&buf, n)
}

/// The frame in a packet of `n` bytes (its real length, from `MSG_TRUNC`) read into `buf`.
pub fn decode_packet(buf: &[u8], n: usize) -> Result<ToGuest, Errno> {
    if n == 0 || n > buf.len() {
        return Err(Errno::EPROTO);
    }
    decode_exact::<ToGuest>(&buf[..n]).map_err(|_| Errno::EPROTO)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_pid_is_the_childs_in_a_child_made_by_a_raw_fork() {
        // SAFETY: getpid has no arguments.
        assert_eq!(own_pid(), unsafe { libc::getpid() });
        // A fork no C library hears of (no atfork handlers run): only the kernel knows.
        // SAFETY: the child calls async-signal-safe functions only, then _exit.
        let child = unsafe { libc::syscall(libc::SYS_fork) };
        if child == 0 {
            // SAFETY: getpid has no arguments; _exit ends the child.
            let right = own_pid() == unsafe { libc::getpid() } && own_pid() != 0;
            // SAFETY: ends the child without running the test harness's code.
            unsafe { libc::_exit(if right { 0 } else { 1 }) };
        }
        assert!(child > 0, "fork failed");
        let mut status = 0;
        // SAFETY: waits for our own child.
        let pid = unsafe { libc::waitpid(child as libc::pid_t, &mut status, 0) };
        assert_eq!(pid, child as libc::pid_t);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "the child read its parent's id: {status:#x}"
        );
        // SAFETY: getpid has no arguments.
        assert_eq!(own_pid(), unsafe { libc::getpid() }, "the parent's is kept");
    }

    #[test]
    fn answers_bring_their_descriptor_close_on_exec() {
        let mut pair = [0; 2];
        // SAFETY: socketpair into a two-element array.
        let rc =
            unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, pair.as_mut_ptr()) };
        assert_eq!(rc, 0);
        let answer = to_vec(&ToGuest::Failed(Errno::EPERM)).unwrap();
        // Any descriptor will do: pass our own end's duplicate, not close-on-exec.
        // SAFETY: dup of an open fd.
        let spare = unsafe { libc::dup(pair[1]) };
        outsock_fdpass::sendmsg_fd::<outsock_fdpass::Libc>(pair[1], &answer, spare, 0).unwrap();
        let stream = Stream(pair[0]);
        let (msg, passed) = stream.recv().unwrap();
        assert_eq!(msg, ToGuest::Failed(Errno::EPERM));
        let passed = passed.unwrap();
        // SAFETY: F_GETFD on the fd just received.
        let fd_flags = unsafe { libc::fcntl(passed, libc::F_GETFD) };
        assert_eq!(fd_flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
        // SAFETY: closing fds this test opened.
        unsafe {
            libc::close(passed);
            libc::close(spare);
            libc::close(pair[1]);
        }
        drop(stream);
    }
}
