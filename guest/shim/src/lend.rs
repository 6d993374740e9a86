//! A TCP connect the program makes itself, on a socket host-server lent (process mode): called
//! by `interpose::connect` before `connect`'s round trip to host-server, it makes a short
//! connection cost what it costs natively — one connect(2), plus a dup3 — where asking
//! host-server each time costs two context switches and host-server's work.
//!
//! - **Routes.** `ToHost::Lend` asks host-server to route a destination as for a connect (the
//!   dummy's IPv6 address; the destination policy; EACCES, EHOSTUNREACH, ENETUNREACH as a
//!   connect gets them). The answer (`ToGuest::Lent`) says where to connect and for how long
//!   that holds (a second): kept in [`ROUTES`], one slot per destination by hash. A destination
//!   host-server must connect itself (the guest DNS address, IPv4 egress, lending switched off:
//!   EOPNOTSUPP) is remembered as such for [`CONNECT_ROUTE_MS`], and goes through `connect`.
//! - **Lent sockets.** Each `Lent` frame brings one unconnected IPv6 TCP socket of host-server's
//!   network (IPV6_V6ONLY, bound to the source address host-server uses, if any). The process
//!   asks for two at first and twice as many each time, up to `MAX_LENT`, one thread at a time
//!   (others without a spare meanwhile wait for that batch, yielding, up to 2 ms, and only then
//!   ask for their one: under many concurrent connects a round trip each would cost more than
//!   the wait); once its batches are the largest, a
//!   connect that leaves fewer than half of [`POOL`] spares asks for more after it is under
//!   way. The spares wait in
//!   [`SPARES`], each at the top of the descriptor range below the kept streams (so the
//!   program's own descriptors are numbered as natively), close-on-exec, checked before use to
//!   be still ours (same device and inode, same process: a forked child closes its copies).
//! - **Standing in from `socket()` on.** Once a process has spares, its next
//!   `socket(AF_INET, SOCK_STREAM)` is a spare, moved to the lowest free descriptor (with the
//!   flags asked for) and marked `table::LENT`: its connect is then one connect(2) on the
//!   program's own descriptor — no AF_INET socket made and destroyed, no dup3. Options set
//!   before connect are set on it directly; getsockname and the options a stand-in answers
//!   (SO_DOMAIN) give the AF_INET view. Before anything only an AF_INET socket of the
//!   program's network can do — a loopback bind or connect, a bind or connect of another
//!   family — [`unlend`] puts a fresh AF_INET socket in its place (flags, carried options,
//!   SO_REUSEADDR, SO_REUSEPORT, SO_PRIORITY and IP_TOS kept).
//! - **The connect** (of an AF_INET socket). The program's carried socket options are copied, its status flags set,
//!   and the lent socket connected right where it lies; only once that connect succeeded, or is
//!   under way (EINPROGRESS, EINTR), does it replace the program's descriptor (dup3), so a
//!   refused connect leaves the program's socket as natively. Its local port is read when the
//!   program asks (getsockname). The connect and that getsockname are made with
//!   `shared_proto::translate::DECIDED_MARK`, so `outsock run`'s supervisor is not
//!   notified of them.
//!
//! The destination policy is host-server's, applied when it routes; a program that makes its
//! own system calls could connect a lent socket elsewhere, as it could re-aim a passed one
//! (README, Limitations). host-server's `lend_sockets = false` turns this off.

use std::net::{SocketAddrV4, SocketAddrV6};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};

use libc::c_int;
use shared_proto::outsource::{LendRequest, MAX_LENT};
use shared_proto::{Errno, ToGuest, ToHost};

use crate::fd::{flags_of, put_in_place, set_errno};
use crate::real;
use crate::slot::TrySlot;
use crate::sockopt::copy_options;
use crate::table::{self, Entry, Kind};
use crate::transport::{self, identity, now_ms, own_pid, Stream, KEPT_STREAMS};

/// Spare lent sockets a process keeps at most (twice the most one request asks for: a batch is
/// asked for when half are left).
pub const POOL: usize = 2 * MAX_LENT as usize;

/// How long a destination host-server connects itself is remembered as such.
const CONNECT_ROUTE_MS: u64 = 10_000;

/// Route slots (by hash of the destination).
const ROUTE_SLOTS: usize = 16;

/// A cached route, read without locking (every connecting thread reads the same one):
/// a sequence lock, odd while written; a reader that sees it change reads nothing.
struct Route {
    seq: AtomicU64,
    /// [`key`] of the destination; 0: empty.
    key: AtomicU64,
    /// The IPv6 address's two halves.
    hi: AtomicU64,
    lo: AtomicU64,
    /// Port (bits 48-63; 0: connect through host-server) and the CLOCK_MONOTONIC_COARSE ms the
    /// route holds until (bits 0-47).
    port_until: AtomicU64,
}

static ROUTES: [Route; ROUTE_SLOTS] = [const {
    Route {
        seq: AtomicU64::new(0),
        key: AtomicU64::new(0),
        hi: AtomicU64::new(0),
        lo: AtomicU64::new(0),
        port_until: AtomicU64::new(0),
    }
}; ROUTE_SLOTS];

/// A spare lent socket (`fd` < 0: none) and what proves it is still ours.
#[derive(Clone, Copy)]
struct Spare {
    fd: c_int,
    pid: libc::pid_t,
    dev: u64,
    ino: u64,
}

static SPARES: [TrySlot<Spare>; POOL] = [const {
    TrySlot::new(Spare {
        fd: -1,
        pid: 0,
        dev: 0,
        ino: 0,
    })
}; POOL];

/// Which [`SPARES`] slots hold a socket, as a hint read without locking (set and cleared by
/// the thread holding the slot).
static FULL: [AtomicBool; POOL] = [const { AtomicBool::new(false) }; POOL];

/// How many sockets the next request for a batch asks for (doubling up to [`MAX_LENT`]).
static NEXT_BATCH: AtomicU8 = AtomicU8::new(2);

/// Spare sockets held now (about: slots found stale are counted off when found).
static SPARE_COUNT: AtomicUsize = AtomicUsize::new(0);

/// Where the next search for a spare starts.
static CURSOR: AtomicUsize = AtomicUsize::new(0);

/// A thread is asking host-server for a batch of sockets.
static REFILLING: AtomicBool = AtomicBool::new(false);

fn key(dest: SocketAddrV4) -> u64 {
    1 << 48 | u64::from(u32::from(*dest.ip())) << 16 | u64::from(dest.port())
}

fn route_slot(key: u64) -> &'static Route {
    // A multiplicative hash; the slot count is a power of two.
    #[allow(clippy::cast_possible_truncation)] // The top bits, below ROUTE_SLOTS.
    let i = (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 60) as usize % ROUTE_SLOTS;
    &ROUTES[i]
}

const UNTIL_MASK: u64 = (1 << 48) - 1;

/// The cached route to `dest`: `Some(Some(target))` connect there, `Some(None)` through
/// host-server, `None` not known (or being written).
fn cached(dest: SocketAddrV4, now: u64) -> Option<Option<SocketAddrV6>> {
    let k = key(dest);
    let r = route_slot(k);
    let s1 = r.seq.load(Ordering::Acquire);
    if s1 & 1 == 1 {
        return None;
    }
    let (key, hi, lo, pu) = (
        r.key.load(Ordering::Relaxed),
        r.hi.load(Ordering::Relaxed),
        r.lo.load(Ordering::Relaxed),
        r.port_until.load(Ordering::Relaxed),
    );
    std::sync::atomic::fence(Ordering::Acquire);
    if r.seq.load(Ordering::Relaxed) != s1 || key != k || now >= pu & UNTIL_MASK {
        return None;
    }
    #[allow(clippy::cast_possible_truncation)] // The top 16 bits.
    let port = (pu >> 48) as u16;
    let ip = std::net::Ipv6Addr::from(u128::from(hi) << 64 | u128::from(lo));
    Some((port != 0).then(|| SocketAddrV6::new(ip, port, 0, 0)))
}

fn remember(dest: SocketAddrV4, target: Option<SocketAddrV6>, until_ms: u64) {
    let k = key(dest);
    let r = route_slot(k);
    let s = r.seq.load(Ordering::Relaxed);
    // Another thread writing it: that one wins.
    if s & 1 == 1
        || r.seq
            .compare_exchange(s, s + 1, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
    {
        return;
    }
    let bits = target.map_or(0, |t| u128::from(*t.ip()));
    #[allow(clippy::cast_possible_truncation)] // The halves.
    {
        r.hi.store((bits >> 64) as u64, Ordering::Relaxed);
        r.lo.store(bits as u64, Ordering::Relaxed);
    }
    r.key.store(k, Ordering::Relaxed);
    let port = target.map_or(0, |t| t.port());
    r.port_until.store(
        u64::from(port) << 48 | until_ms & UNTIL_MASK,
        Ordering::Relaxed,
    );
    r.seq.store(s + 2, Ordering::Release);
}

/// A spare lent socket to stand in for a new `socket(AF_INET, SOCK_STREAM)` of type flags `ty`
/// (SOCK_NONBLOCK, SOCK_CLOEXEC), on the lowest free descriptor as socket(2) would give; `None`
/// when there is no spare (the process then makes its AF_INET socket as usual).
pub(crate) fn stand_in_socket(ty: c_int) -> Option<c_int> {
    if SPARE_COUNT.load(Ordering::Relaxed) == 0 || transport::vsock_port().is_some() {
        return None;
    }
    let spare = take_spare()?;
    let cmd = if ty & libc::SOCK_CLOEXEC != 0 {
        libc::F_DUPFD_CLOEXEC
    } else {
        libc::F_DUPFD
    };
    // SAFETY: fcntl on our own socket; the result is a new descriptor or -1.
    let fd = unsafe { real::fcntl(spare, cmd, 0) };
    // SAFETY: the spare's own number, ours (its duplicate, if made, is the program's now).
    unsafe { real::close(spare) };
    if fd < 0 {
        return None;
    }
    if ty & libc::SOCK_NONBLOCK != 0 {
        // SAFETY: F_SETFL on the descriptor just made (a lent socket's flags are O_RDWR).
        unsafe {
            real::fcntl(
                fd,
                libc::F_SETFL,
                (libc::O_RDWR | libc::O_NONBLOCK) as usize,
            )
        };
    }
    Some(fd)
}

/// Makes the program's `fd` (in state `entry`, standing in with a lent socket) the AF_INET TCP
/// socket it asked for, keeping its flags and carried options: for what only an AF_INET
/// socket of the program's own network can do (a loopback bind or connect, a connect
/// host-server makes). Returns the entry now, or the errno of making the socket.
pub(crate) fn unlend(fd: c_int, entry: Entry) -> Result<Entry, Errno> {
    if entry.kind != Kind::InetStream || entry.options & table::LENT == 0 {
        return Ok(entry);
    }
    let flags = flags_of(fd);
    // SAFETY: plain socket(2) call.
    let own = unsafe { real::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if own < 0 {
        return Err(transport::last_errno());
    }
    table::clear(own);
    copy_options(fd, own, entry.options);
    // Options a server sets before its bind, which the carried ones leave out.
    for (level, name) in [
        (libc::SOL_SOCKET, libc::SO_REUSEADDR),
        (libc::SOL_SOCKET, libc::SO_REUSEPORT),
        (libc::SOL_SOCKET, libc::SO_PRIORITY),
        (libc::IPPROTO_IP, libc::IP_TOS),
    ] {
        let mut v: c_int = 0;
        #[allow(clippy::cast_possible_truncation)] // An int's size.
        let mut len = std::mem::size_of::<c_int>() as libc::socklen_t;
        // SAFETY: an int buffer and its length; the lent socket is the program's fd.
        let got = unsafe {
            real::getsockopt(fd, level, name, std::ptr::from_mut(&mut v).cast(), &mut len)
        };
        if got == 0 && v != 0 {
            // SAFETY: an int option on our own new socket.
            unsafe {
                libc::setsockopt(own, level, name, std::ptr::from_ref(&v).cast(), len);
            }
        }
    }
    crate::fd::replace_fd(own, fd, &flags)?;
    let e = Entry {
        options: entry.options & !table::LENT,
        ..entry
    };
    table::set(fd, e);
    Ok(e)
}

/// Connects the program's `fd` (in state `entry`) to `dest` (a non-loopback IPv4 destination)
/// on a lent socket: the one standing in for it already, or a spare. `None`: this connect goes
/// through host-server (`connect`) instead.
pub(crate) fn connect(fd: c_int, entry: Entry, dest: SocketAddrV4) -> Option<c_int> {
    if transport::vsock_port().is_some() || crate::nameserver::redirect(dest) != dest {
        return None;
    }
    if entry.options & table::LENT != 0 {
        return connect_standing_in(fd, entry, dest);
    }
    let got = match cached(dest, now_ms()) {
        Some(None) => return None,
        Some(Some(target)) => take_spare().or_else(spare_from_refill).map(|s| (target, s)),
        None => None,
    };
    let (target, sock) = match got {
        Some(g) => g,
        None => match ask_batch(dest) {
            Ok(Some(g)) => g,
            Ok(None) => return None,
            Err(e) => return Some(set_errno(e)),
        },
    };
    let rc = connect_on(fd, entry, dest, target, sock);
    refill_ahead(dest);
    Some(rc)
}

/// [`connect`] of a program's `fd` that is a lent socket already (from `socket()` on): the
/// route (kept, or asked for with a batch of spares), then the connect on `fd` itself.
fn connect_standing_in(fd: c_int, entry: Entry, dest: SocketAddrV4) -> Option<c_int> {
    let target = match cached(dest, now_ms()) {
        Some(Some(target)) => target,
        Some(None) => return None,
        None => match ask_batch(dest) {
            Ok(Some((target, sock))) => {
                keep_spares(&[sock], transport::top_fd(), own_pid());
                target
            }
            Ok(None) => return None,
            Err(e) => return Some(set_errno(e)),
        },
    };
    let rc = real::decided_connect_v6(fd, target);
    let err = transport::last_errno();
    if rc != 0 && !matches!(err, Errno::EINPROGRESS | Errno::EINTR) {
        // Refused, unreachable, ...: a TCP socket whose connect failed may connect again.
        return Some(set_errno(err));
    }
    connected(fd, entry, dest);
    refill_ahead(dest);
    Some(if rc == 0 { 0 } else { set_errno(err) })
}

/// Records the program's `fd` (in state `entry`) as connected, or connecting, to `dest` on a
/// lent socket; its port is read when the program asks (getsockname), not now.
fn connected(fd: c_int, entry: Entry, dest: SocketAddrV4) {
    table::set(
        fd,
        Entry {
            kind: Kind::Outsourced,
            local: None,
            peer: Some(dest),
            options: entry.options & !table::LENT,
            ..entry
        },
    );
}

/// The longest a connect that found no spare waits for a refill under way.
const REFILL_WAIT_NS: u64 = 2_000_000;

/// A spare from the refill another thread has under way, if one is and it lands within
/// [`REFILL_WAIT_NS`]: the waiting thread yields its CPU (to the refilling thread and
/// host-server, on a busy machine the ones that must run) instead of asking host-server for a
/// socket of its own, which under many concurrent connects would be a round trip for each.
fn spare_from_refill() -> Option<c_int> {
    if !REFILLING.load(Ordering::Acquire) {
        return None;
    }
    let start = monotonic_ns();
    loop {
        // SAFETY: sched_yield has no arguments.
        unsafe { libc::sched_yield() };
        if let Some(s) = take_spare() {
            return Some(s);
        }
        if !REFILLING.load(Ordering::Acquire)
            || monotonic_ns().saturating_sub(start) > REFILL_WAIT_NS
        {
            return take_spare();
        }
    }
}

/// CLOCK_MONOTONIC in nanoseconds (a vDSO read).
fn monotonic_ns() -> u64 {
    // SAFETY: timespec is plain data.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// [`ask`] for a connect that found no spare: the first thread asks for a batch (growing
/// each time), the others meanwhile for their one socket.
fn ask_batch(dest: SocketAddrV4) -> Result<Option<(SocketAddrV6, c_int)>, Errno> {
    let batch = !REFILLING.swap(true, Ordering::Acquire);
    let want = if batch {
        NEXT_BATCH.load(Ordering::Relaxed).clamp(1, MAX_LENT)
    } else {
        1
    };
    let asked = ask(dest, want);
    if batch {
        if asked.is_ok() {
            NEXT_BATCH.store(want.saturating_mul(2).min(MAX_LENT), Ordering::Relaxed);
        }
        REFILLING.store(false, Ordering::Release);
    }
    asked
}

/// A process that connects often (its batches have grown to the largest) gets its spares
/// refilled ahead of need, by one thread at a time, once its connect is under way (the
/// connect's errno kept for the program).
fn refill_ahead(dest: SocketAddrV4) {
    if NEXT_BATCH.load(Ordering::Relaxed) == MAX_LENT
        && SPARE_COUNT.load(Ordering::Relaxed) < POOL / 2
        && !REFILLING.swap(true, Ordering::Acquire)
    {
        let errno = transport::last_errno();
        if let Ok(Some((_, extra))) = ask(dest, MAX_LENT) {
            keep_spares(&[extra], transport::top_fd(), own_pid());
        }
        REFILLING.store(false, Ordering::Release);
        set_errno(errno);
    }
}

/// Connects lent socket `sock` (ours) to `target` as the program's `fd` would connect, and
/// puts it in place of `fd` once the connect succeeded or is under way.
fn connect_on(
    fd: c_int,
    entry: Entry,
    dest: SocketAddrV4,
    target: SocketAddrV6,
    sock: c_int,
) -> c_int {
    let flags = flags_of(fd);
    copy_options(fd, sock, entry.options);
    // SAFETY: F_SETFL on our own socket, with the program's status flags (O_NONBLOCK).
    unsafe {
        real::fcntl(
            sock,
            libc::F_SETFL,
            usize::try_from(flags.status).unwrap_or(0),
        )
    };
    let rc = real::decided_connect_v6(sock, target);
    let err = transport::last_errno();
    if rc != 0 && !matches!(err, Errno::EINPROGRESS | Errno::EINTR) {
        // Refused, unreachable, ...: the program's socket stays as it was, as natively.
        // SAFETY: our own lent socket.
        unsafe { real::close(sock) };
        return set_errno(err);
    }
    // Its status flags are the program's already (set before the connect).
    if let Err(e) = put_in_place(sock, fd, &flags) {
        return set_errno(e);
    }
    connected(fd, entry, dest);
    if rc == 0 {
        0
    } else {
        set_errno(err)
    }
}

/// A spare lent socket that is still ours, if there is one; copies a forked child inherited
/// are closed on the way, and ones the program closed or reused are forgotten.
fn take_spare() -> Option<c_int> {
    if SPARE_COUNT.load(Ordering::Relaxed) == 0 {
        return None;
    }
    let pid = own_pid();
    // Threads start at different slots, so that they seldom meet on one.
    let start = CURSOR.fetch_add(1, Ordering::Relaxed);
    for k in 0..POOL {
        let i = (start + k) % POOL;
        // Only slots that hold one are locked: a scan of empty ones writes nothing.
        if !FULL[i].load(Ordering::Relaxed) {
            continue;
        }
        let taken = SPARES[i].with(|s| {
            let held = *s;
            s.fd = -1;
            FULL[i].store(false, Ordering::Relaxed);
            (held.fd >= 0).then_some(held)
        });
        let Some(s) = taken.flatten() else {
            continue;
        };
        SPARE_COUNT.fetch_sub(1, Ordering::Relaxed);
        if identity(s.fd) != Some((s.dev, s.ino)) {
            continue;
        }
        if s.pid == pid {
            return Some(s.fd);
        }
        // SAFETY: our socket (same device and inode), a copy from before a fork.
        unsafe { real::close(s.fd) };
    }
    None
}

/// Asks host-server to route `dest` and lend sockets: the route and one socket for this
/// connect (the others become spares); `None` when host-server must connect this one itself.
///
/// # Errors
/// The routing's errno (EACCES, EHOSTUNREACH, ENETUNREACH), or the transport's.
fn ask(dest: SocketAddrV4, want: u8) -> Result<Option<(SocketAddrV6, c_int)>, Errno> {
    let req = ToHost::Lend(LendRequest {
        dest,
        sockets: want,
    });
    let (mut stream, kept) = Stream::open_for_connect()?;
    let mut room = [-1; MAX_LENT as usize];
    let ask = |s: &Stream, room: &mut [c_int]| s.send(&req).and_then(|()| s.recv_fds(room));
    let (answer, count) = match ask(&stream, &mut room) {
        // A kept stream host-server closed as the request went: asked again on a new one.
        Err(Errno::EPIPE | Errno::EPROTO | Errno::ECONNRESET) if kept => {
            stream = Stream::open()?;
            ask(&stream, &mut room)?
        }
        other => other?,
    };
    let got = &room[..count];
    let close_all = |fds: &[c_int]| {
        for fd in fds {
            // SAFETY: sockets passed to us, ours.
            unsafe { real::close(*fd) };
        }
    };
    match answer {
        ToGuest::Lent {
            target,
            valid_ms,
            sockets,
        } if usize::from(sockets) == count && count >= 1 => {
            remember(dest, Some(target), now_ms() + u64::from(valid_ms));
            keep_spares(&got[1..], transport::top_fd(), own_pid());
            stream.keep();
            Ok(Some((target, got[0])))
        }
        ToGuest::Failed(Errno::EOPNOTSUPP) if count == 0 => {
            remember(dest, None, now_ms() + CONNECT_ROUTE_MS);
            Ok(None)
        }
        ToGuest::Failed(e) if count == 0 => Err(e),
        _ => {
            close_all(got);
            Err(Errno::EPROTO)
        }
    }
}

/// Puts spare lent sockets `socks` (ours, on the numbers they came on) in free slots, each on
/// its slot's number at the top of the range (below the kept streams; `top` is
/// [`transport::top_fd`]), for process `pid`; then closes the numbers they came on (those not
/// placed are gone with them).
fn keep_spares(socks: &[c_int], top: c_int, pid: libc::pid_t) {
    let mut i = 0;
    for &sock in socks {
        while i < POOL {
            #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)] // < 160.
            let number = top - (KEPT_STREAMS + i) as c_int;
            if number <= sock {
                // The program has every number above: no room for this one or the rest.
                i = POOL;
                break;
            }
            let placed = !FULL[i].load(Ordering::Relaxed)
                && SPARES[i].with(|s| {
                    let placed = s.fd < 0 && place(sock, number, pid, s);
                    if placed {
                        FULL[i].store(true, Ordering::Relaxed);
                        SPARE_COUNT.fetch_add(1, Ordering::Relaxed);
                    }
                    placed
                }) == Some(true);
            i += 1;
            if placed {
                break;
            }
        }
    }
    close_received(socks);
}

/// Duplicates `sock` onto `number` (which must be free) and fills slot `s` with it; false
/// where the number is the program's or the duplicate's identity cannot be read.
fn place(sock: c_int, number: c_int, pid: libc::pid_t, s: &mut Spare) -> bool {
    // SAFETY: fcntl on our own socket; the result is a new descriptor or -1.
    let high = unsafe {
        real::fcntl(
            sock,
            libc::F_DUPFD_CLOEXEC,
            usize::try_from(number).unwrap_or(0),
        )
    };
    if high != number {
        if high >= 0 {
            // SAFETY: the duplicate just made, ours.
            unsafe { real::close(high) };
        }
        return false;
    }
    table::clear(high);
    let Some((dev, ino)) = identity(high) else {
        // SAFETY: ours.
        unsafe { real::close(high) };
        return false;
    };
    *s = Spare {
        fd: high,
        pid,
        dev,
        ino,
    };
    true
}

/// Closes the numbers spares came on (ours): each run of consecutive numbers (a batch
/// received at once is one or a few) with one close_range(2).
fn close_received(socks: &[c_int]) {
    let mut sorted = [-1; MAX_LENT as usize];
    let n = socks.len().min(sorted.len());
    sorted[..n].copy_from_slice(&socks[..n]);
    let sorted = &mut sorted[..n];
    sorted.sort_unstable();
    let mut rest = &*sorted;
    while let Some(&low) = rest.first() {
        let len = rest
            .iter()
            .zip(low..)
            .take_while(|(fd, want)| **fd == *want)
            .count();
        let high = rest[len - 1];
        #[allow(clippy::cast_sign_loss)] // Descriptors are not negative.
        // SAFETY: every number from `low` to `high` is one of ours (all in `socks`).
        let closed = len > 1
            && unsafe { real::close_range(low as libc::c_uint, high as libc::c_uint, 0) } == 0;
        if !closed {
            for &sock in &rest[..len] {
                // SAFETY: ours.
                unsafe { real::close(sock) };
            }
        }
        rest = &rest[len..];
    }
}
