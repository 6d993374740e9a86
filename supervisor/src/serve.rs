//! The notification loop and what each notified call becomes.
//!
//! - `connect` of an AF_INET socket to a non-loopback address: TCP goes to host-server
//!   (`Connect` with `pass_fd`, as liboutsock asks) and the socket it passes back replaces the
//!   program's descriptor (ADDFD with SETFD); UDP to a resolv.conf nameserver on port 53
//!   becomes a relayed pair (`dns`), TCP to one a stream relayed to the guest DNS address.
//!   Loopback and every other AF_INET connect is carried out here, on our copy of the
//!   program's socket with the address bytes already read, so the kernel never reads the
//!   program's memory again; other families continue untouched.
//! - `getsockname`/`getpeername` of a socket made here answer its AF_INET view; others continue.
//! - `recvfrom` with an address on a DNS pair is done here and reports the nameserver.
//! - `sendto` with an AF_INET address: to a nameserver on port 53 from an unconnected UDP
//!   socket it makes a DNS pair first; otherwise it is made here with the bytes already read.
//! - `socket(AF_INET, …)` continues (the hook for what later slices add).
//!
//! Sockets are known by identity (device and inode of the open file), never by descriptor
//! number, so dup, fork and descriptor reuse cannot confuse them; sockets nobody holds any more
//! are swept from the table as it grows. Calls that may wait (connect,
//! a DNS recvfrom) run on a thread of their own; the loop never waits for host-server.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::process::{Child, ExitStatus};
use std::sync::{Arc, Mutex, PoisonError};

use shared_proto::outsource::UdpRequest;
use shared_proto::translate::{
    connect_answer, connect_request, decode_sockaddr_in, encode_sockaddr_in, is_outsourced,
    sockaddr_family, AF_INET, SOCKADDR_IN_LEN,
};
use shared_proto::{Errno, ToGuest, ToHost};

use crate::dns;
use crate::host::HostServer;
use crate::sys::{self, Listener, Notif, Ready};

/// The largest address a program may pass (`sizeof(struct sockaddr_storage)`).
const MAX_ADDR: u64 = 128;
/// The most a DNS recvfrom reads (a UDP datagram).
const MAX_DGRAM: usize = 65_536;

/// What a notified call becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The call returns this value.
    Return(i64),
    /// The call fails with this errno.
    Fail(i32),
    /// The kernel carries the call out as the program made it.
    Continue,
    /// The caller is no longer waiting (a signal, or it died): nothing to answer.
    Gone,
}

fn errno(e: Errno) -> Outcome {
    Outcome::Fail(i32::from(e.0))
}

fn io_fail(e: &io::Error) -> Outcome {
    Outcome::Fail(e.raw_os_error().unwrap_or(libc::EIO))
}

/// How a socket made here looks to the program.
#[derive(Debug, Clone, Copy)]
struct View {
    local: SocketAddrV4,
    peer: SocketAddrV4,
    /// A DNS pair: recvfrom is answered with `peer`.
    dns: bool,
}

/// What every handler needs.
#[derive(Debug)]
pub struct Shared {
    listener: Listener,
    host: HostServer,
    guest_dns: SocketAddrV4,
    nameservers: Vec<Ipv4Addr>,
    views: Mutex<Views>,
}

/// The sockets made here, by identity. The table is swept of sockets no process holds any
/// more (so that it stays small, and a recycled inode number cannot inherit a stale view)
/// whenever it has doubled since the last sweep.
#[derive(Debug)]
struct Views {
    map: HashMap<(u64, u64), View>,
    sweep_at: usize,
}

/// The smallest table that is swept.
const SWEEP_MIN: usize = 1024;

impl Views {
    fn insert(&mut self, id: (u64, u64), view: View) {
        self.map.insert(id, view);
        if self.map.len() >= self.sweep_at {
            let live = live_socket_inodes();
            self.map.retain(|(_, ino), _| live.contains(ino));
            self.sweep_at = (self.map.len() * 2).max(SWEEP_MIN);
        }
    }
}

/// The inodes of every socket some process holds (`socket:[N]` links under `/proc/*/fd` that
/// we may read; the program runs as our user, or we are root).
fn live_socket_inodes() -> std::collections::HashSet<u64> {
    let mut live = std::collections::HashSet::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return live;
    };
    for p in procs.filter_map(Result::ok) {
        if !p
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.filter_map(Result::ok) {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let target = target.to_string_lossy();
            if let Some(ino) = target
                .strip_prefix("socket:[")
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse().ok())
            {
                live.insert(ino);
            }
        }
    }
    live
}

impl Shared {
    #[must_use]
    pub fn new(
        listener: Listener,
        host: HostServer,
        guest_dns: SocketAddrV4,
        nameservers: Vec<Ipv4Addr>,
    ) -> Self {
        Self {
            listener,
            host,
            guest_dns,
            nameservers,
            views: Mutex::new(Views {
                map: HashMap::new(),
                sweep_at: SWEEP_MIN,
            }),
        }
    }

    fn record(&self, fd: RawFd, view: View) {
        if let Ok(id) = sys::identity(fd) {
            self.views
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(id, view);
        }
    }

    fn view(&self, fd: RawFd) -> Option<View> {
        let id = sys::identity(fd).ok()?;
        self.views
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .map
            .get(&id)
            .copied()
    }

    fn is_nameserver(&self, a: SocketAddrV4) -> bool {
        a.port() == 53 && self.nameservers.contains(a.ip())
    }

    fn finish(&self, n: &Notif, outcome: Outcome) {
        // ENOENT: the caller went away meanwhile; nothing to do.
        let _ = match outcome {
            Outcome::Return(v) => self.listener.answer(n.id, v),
            Outcome::Fail(e) => self.listener.fail(n.id, e),
            Outcome::Continue => self.listener.allow(n.id),
            Outcome::Gone => Ok(()),
        };
    }
}

/// Serves notifications until `child` exits (or no task uses the filter any more); returns
/// the child's status.
///
/// # Errors
/// When waiting for the child fails.
pub fn serve(shared: Shared, child: &mut Child) -> io::Result<ExitStatus> {
    let shared = Arc::new(shared);
    // The child is not reaped before this returns, so its pid still names it.
    let exited = sys::pidfd(child.id())?;
    loop {
        match shared.listener.wait(&exited) {
            Ok(Ready::Notif) => {}
            Ok(Ready::None) => continue,
            Ok(Ready::Exited) | Err(_) => return child.wait(),
        }
        let Ok(n) = shared.listener.recv() else {
            continue;
        };
        dispatch(&shared, n);
    }
}

fn dispatch(shared: &Arc<Shared>, n: Notif) {
    match n.nr {
        libc::SYS_connect => match read_connect_addr(shared, &n) {
            // An AF_INET address, validated: the rest may wait for host-server.
            Ok(bytes) => {
                let s = Arc::clone(shared);
                on_thread(shared, n, move || connect(&s, &n, &bytes));
            }
            Err(outcome) => shared.finish(&n, outcome),
        },
        libc::SYS_getsockname | libc::SYS_getpeername => {
            let outcome = name(shared, &n);
            shared.finish(&n, outcome);
        }
        libc::SYS_recvfrom => recvfrom(shared, n),
        libc::SYS_sendto => sendto(shared, n),
        _ => shared.finish(&n, Outcome::Continue),
    }
}

#[allow(clippy::cast_possible_truncation)] // Descriptors are ints in the syscall ABI.
fn fd_arg(n: &Notif) -> RawFd {
    n.args[0] as RawFd
}

/// The address of a connect, read from the caller's memory and validated (the caller still
/// waits, so the bytes were its own) when it is AF_INET; otherwise what the call becomes at
/// once (other families continue, a bad pointer fails).
fn read_connect_addr(s: &Shared, n: &Notif) -> Result<Vec<u8>, Outcome> {
    let (ptr, len) = (n.args[1], n.args[2] & 0xffff_ffff);
    if ptr == 0 || len > MAX_ADDR {
        // Nothing to read: the kernel gives the error a native call gets.
        return Err(Outcome::Continue);
    }
    #[allow(clippy::cast_possible_truncation)] // At most 128.
    let Ok(bytes) = sys::read_mem(n.pid, ptr, len as usize) else {
        return Err(Outcome::Fail(libc::EFAULT));
    };
    if !s.listener.valid(n.id) {
        return Err(Outcome::Gone);
    }
    if sockaddr_family(&bytes) != Some(AF_INET) {
        return Err(Outcome::Continue);
    }
    Ok(bytes)
}

/// An AF_INET connect whose address `bytes` [`read_connect_addr`] read.
fn connect(s: &Shared, n: &Notif, bytes: &[u8]) -> Outcome {
    let Some(dest) = decode_sockaddr_in(bytes) else {
        return Outcome::Fail(libc::EINVAL);
    };
    let copy = match sys::take_fd(n.pid, fd_arg(n)) {
        Ok(c) => c,
        Err(e) => return io_fail(&e),
    };
    let native = || match sys::connect_raw(copy.as_raw_fd(), bytes) {
        0 => Outcome::Return(0),
        e => Outcome::Fail(e),
    };
    if let Some(view) = s.view(copy.as_raw_fd()) {
        // A DNS pair connected again to a nameserver: the relay serves them all alike.
        if view.dns && s.is_nameserver(dest) {
            s.record(copy.as_raw_fd(), View { peer: dest, ..view });
            return Outcome::Return(0);
        }
        // A TCP socket made here is already connected or connecting: another connect gets
        // what the kernel says about it (0 once, then EISCONN; EALREADY), as natively.
        return native();
    }
    // Loopback stays local.
    if !is_outsourced(dest) {
        return native();
    }
    let ty = match sys::sockopt_int(copy.as_raw_fd(), libc::SOL_SOCKET, libc::SO_TYPE) {
        Ok(t) => t,
        Err(e) => return io_fail(&e),
    };
    let dns = s.is_nameserver(dest);
    match ty {
        libc::SOCK_STREAM => tcp(s, n, &copy, dest, dns),
        libc::SOCK_DGRAM if dns => udp_dns(s, n, &copy, dest),
        // Not outsourced in this slice: the native call (ENETUNREACH on an IPv6-only host).
        _ => native(),
    }
}

fn nonblocking(copy: &OwnedFd) -> bool {
    sys::status_flags(copy.as_raw_fd()).is_ok_and(|f| f & libc::O_NONBLOCK != 0)
}

/// Whether the program's descriptor `fd` is close-on-exec (`/proc/PID/fdinfo`).
fn cloexec(pid: u32, fd: RawFd) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("flags:"))
                .and_then(|v| i64::from_str_radix(v.trim(), 8).ok())
        })
        .is_some_and(|f| f & i64::from(libc::O_CLOEXEC) != 0)
}

/// Makes `new` the program's descriptor `fd`, with the program's blocking mode and
/// close-on-exec flag, if the caller still waits.
fn install(s: &Shared, n: &Notif, new: &OwnedFd, nonblocking: bool) -> Result<(), Outcome> {
    let fd = fd_arg(n);
    sys::set_nonblocking(new.as_raw_fd(), nonblocking).map_err(|e| io_fail(&e))?;
    let cloexec = cloexec(n.pid, fd);
    if !s.listener.valid(n.id) {
        return Err(Outcome::Gone);
    }
    s.listener
        .install(n.id, new.as_raw_fd(), fd, cloexec)
        .map_err(|e| io_fail(&e))
}

fn tcp(s: &Shared, n: &Notif, copy: &OwnedFd, dest: SocketAddrV4, dns: bool) -> Outcome {
    let nonblocking = nonblocking(copy);
    let target = if dns { s.guest_dns } else { dest };
    // As liboutsock in process mode: the socket comes back while its connect is under way.
    let answer = match s.host.request(&connect_request(target, true, true)) {
        Ok(a) => a,
        Err(e) => return errno(e),
    };
    let c = match connect_answer(&answer.msg) {
        Ok(c) => c,
        Err(e) => return errno(e),
    };
    // Without a passed socket (the guest DNS address) host-server relays on the stream itself.
    let new: OwnedFd = answer.passed.unwrap_or_else(|| answer.stream.into());
    if let Err(o) = install(s, n, &new, nonblocking) {
        return o;
    }
    let peer = if dns { dest } else { c.peer };
    s.record(
        new.as_raw_fd(),
        View {
            local: c.local,
            peer,
            dns: false,
        },
    );
    match (c.in_progress, nonblocking) {
        (false, _) => Outcome::Return(0),
        (true, true) => Outcome::Fail(libc::EINPROGRESS),
        (true, false) => match sys::wait_connected(new.as_raw_fd()) {
            0 => Outcome::Return(0),
            e => Outcome::Fail(e),
        },
    }
}

fn udp_dns(s: &Shared, n: &Notif, copy: &OwnedFd, dest: SocketAddrV4) -> Outcome {
    match dns_pair(s, n, copy, dest) {
        Ok(_) => Outcome::Return(0),
        Err(o) => o,
    }
}

/// Makes the program's UDP socket (`copy`) a DNS pair relayed to the guest DNS address, its
/// peer `dest` (a nameserver); returns our copy of the program's (installed) end.
fn dns_pair(s: &Shared, n: &Notif, copy: &OwnedFd, dest: SocketAddrV4) -> Result<OwnedFd, Outcome> {
    let nonblocking = nonblocking(copy);
    let bind = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0);
    let answer = s
        .host
        .request(&ToHost::Udp(UdpRequest { bind }))
        .map_err(errno)?;
    let local = match answer.msg {
        ToGuest::Associated { local } => local,
        ToGuest::Failed(e) => return Err(errno(e)),
        _ => return Err(Outcome::Fail(libc::EPROTO)),
    };
    // In process mode the association's channel is a packet channel passed with the answer.
    let Some(channel) = answer.passed else {
        return Err(Outcome::Fail(libc::EPROTO));
    };
    let (theirs, ours) = sys::seqpacket_pair().map_err(|e| io_fail(&e))?;
    // The relay first: should the install fail, it sees the program's end close and ends.
    dns::spawn_relay(ours, channel, s.guest_dns).map_err(|e| io_fail(&e))?;
    install(s, n, &theirs, nonblocking)?;
    s.record(
        theirs.as_raw_fd(),
        View {
            local,
            peer: dest,
            dns: true,
        },
    );
    Ok(theirs)
}

/// `sendto` with an address (`send` has none and never comes here). An AF_INET UDP socket
/// that is not connected sending to a nameserver on port 53 (musl's resolver, for one)
/// becomes a DNS pair, and so does every later datagram it sends to a nameserver; any other
/// AF_INET sendto is made here with the bytes already read; other families continue.
fn sendto(shared: &Arc<Shared>, n: Notif) {
    let (ptr, len) = (n.args[4], n.args[5] & 0xffff_ffff);
    if len > MAX_ADDR {
        shared.finish(&n, Outcome::Continue);
        return;
    }
    #[allow(clippy::cast_possible_truncation)] // At most 128.
    let Ok(addr) = sys::read_mem(n.pid, ptr, len as usize) else {
        shared.finish(&n, Outcome::Fail(libc::EFAULT));
        return;
    };
    if !shared.listener.valid(n.id) {
        return;
    }
    if sockaddr_family(&addr) != Some(AF_INET) {
        shared.finish(&n, Outcome::Continue);
        return;
    }
    // A datagram to a nameserver may need host-server: on a thread of its own.
    let s = Arc::clone(shared);
    on_thread(shared, n, move || send_datagram(&s, &n, &addr));
}

fn send_datagram(s: &Shared, n: &Notif, addr: &[u8]) -> Outcome {
    let Some(dest) = decode_sockaddr_in(addr) else {
        return Outcome::Fail(libc::EINVAL);
    };
    let [fd, buf, len, flags, _, _] = n.args;
    #[allow(clippy::cast_possible_truncation)] // Capped; flags are an int.
    let (fd, len, flags) = (
        fd as RawFd,
        len.min(MAX_DGRAM as u64) as usize,
        flags as i32,
    );
    let Ok(data) = sys::read_mem(n.pid, buf, len) else {
        return Outcome::Fail(libc::EFAULT);
    };
    if !s.listener.valid(n.id) {
        return Outcome::Gone;
    }
    let copy = match sys::take_fd(n.pid, fd) {
        Ok(c) => c,
        Err(e) => return io_fail(&e),
    };
    let sent =
        |target: &OwnedFd, to: &[u8]| match sys::send_to(target.as_raw_fd(), &data, flags, to) {
            Ok(m) => Outcome::Return(i64::try_from(m).unwrap_or(i64::MAX)),
            Err(e) => Outcome::Fail(e),
        };
    let nameserver = s.is_nameserver(dest);
    match s.view(copy.as_raw_fd()) {
        // A DNS pair: its datagrams all go to the guest DNS; elsewhere it cannot send.
        Some(v) if v.dns && nameserver => return sent(&copy, &[]),
        Some(v) if v.dns => return Outcome::Fail(libc::EISCONN),
        _ => {}
    }
    let unconnected_udp = sys::sockopt_int(copy.as_raw_fd(), libc::SOL_SOCKET, libc::SO_TYPE)
        .is_ok_and(|t| t == libc::SOCK_DGRAM)
        && sys::peer_unset(copy.as_raw_fd());
    if nameserver && unconnected_udp {
        return match dns_pair(s, n, &copy, dest) {
            Ok(theirs) => sent(&theirs, &[]),
            Err(o) => o,
        };
    }
    // Not outsourced in this slice (loopback stays local; elsewhere ENETUNREACH on an
    // IPv6-only host), made with the bytes already read.
    sent(&copy, addr)
}

/// Writes `a` at the program's `addr`/`len` pointers as the kernel does (truncated to `*len`,
/// `*len` set to the full size).
fn write_sockaddr(s: &Shared, n: &Notif, addr: u64, len_ptr: u64, a: SocketAddrV4) -> Outcome {
    if addr == 0 || len_ptr == 0 {
        return Outcome::Fail(libc::EFAULT);
    }
    let Ok(len) = sys::read_mem(n.pid, len_ptr, 4) else {
        return Outcome::Fail(libc::EFAULT);
    };
    let len = i32::from_ne_bytes([len[0], len[1], len[2], len[3]]);
    let Ok(len) = usize::try_from(len) else {
        return Outcome::Fail(libc::EINVAL);
    };
    if !s.listener.valid(n.id) {
        return Outcome::Gone;
    }
    let bytes = encode_sockaddr_in(a);
    #[allow(clippy::cast_possible_truncation)] // 16.
    let full = (SOCKADDR_IN_LEN as u32).to_ne_bytes();
    let wrote = sys::write_mem(n.pid, addr, &bytes[..len.min(SOCKADDR_IN_LEN)])
        .and_then(|()| sys::write_mem(n.pid, len_ptr, &full));
    match wrote {
        Ok(()) => Outcome::Return(0),
        Err(_) => Outcome::Fail(libc::EFAULT),
    }
}

fn name(s: &Shared, n: &Notif) -> Outcome {
    let Ok(copy) = sys::take_fd(n.pid, fd_arg(n)) else {
        return Outcome::Continue;
    };
    let Some(view) = s.view(copy.as_raw_fd()) else {
        return Outcome::Continue;
    };
    let a = if n.nr == libc::SYS_getpeername {
        view.peer
    } else {
        view.local
    };
    write_sockaddr(s, n, n.args[1], n.args[2], a)
}

fn recvfrom(shared: &Arc<Shared>, n: Notif) {
    let copy = sys::take_fd(n.pid, fd_arg(&n)).ok();
    let view = copy.as_ref().and_then(|c| shared.view(c.as_raw_fd()));
    let (Some(copy), Some(view)) = (copy, view) else {
        shared.finish(&n, Outcome::Continue);
        return;
    };
    if !view.dns {
        shared.finish(&n, Outcome::Continue);
        return;
    }
    // The read may wait (a blocking socket): on a thread of its own.
    let s = Arc::clone(shared);
    on_thread(shared, n, move || dns_recvfrom(&s, &n, &copy, view.peer));
}

/// Works out notification `n`'s outcome with `work` on a thread of its own and answers it
/// there; where no thread can start, the call fails with EAGAIN.
fn on_thread(shared: &Arc<Shared>, n: Notif, work: impl FnOnce() -> Outcome + Send + 'static) {
    let s = Arc::clone(shared);
    let started = std::thread::Builder::new().spawn(move || {
        let outcome = work();
        s.finish(&n, outcome);
    });
    if started.is_err() {
        shared.finish(&n, Outcome::Fail(libc::EAGAIN));
    }
}

fn dns_recvfrom(s: &Shared, n: &Notif, copy: &OwnedFd, from: SocketAddrV4) -> Outcome {
    let [_, buf, len, flags, addr, len_ptr] = n.args;
    #[allow(clippy::cast_possible_truncation)] // Capped; flags are an int.
    let (len, flags) = (len.min(MAX_DGRAM as u64) as usize, flags as i32);
    let (data, full) = match sys::recv(copy.as_raw_fd(), len, flags) {
        Ok(r) => r,
        Err(e) => return Outcome::Fail(e),
    };
    // A caller gone now loses this answer, as a thread killed inside recvfrom would.
    if !s.listener.valid(n.id) {
        return Outcome::Gone;
    }
    if sys::write_mem(n.pid, buf, &data).is_err() {
        return Outcome::Fail(libc::EFAULT);
    }
    match write_sockaddr(s, n, addr, len_ptr, from) {
        Outcome::Return(_) => Outcome::Return(i64::try_from(full).unwrap_or(i64::MAX)),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::os::unix::net::UnixStream;

    use super::*;

    #[test]
    fn the_table_keeps_only_sockets_someone_holds() {
        let a: SocketAddrV4 = "10.0.0.1:1".parse().unwrap();
        let view = View {
            local: a,
            peer: a,
            dns: false,
        };
        let (held, _other) = UnixStream::pair().unwrap();
        let held_id = sys::identity(held.as_raw_fd()).unwrap();
        let mut views = Views {
            map: HashMap::new(),
            sweep_at: SWEEP_MIN,
        };
        views.insert(held_id, view);
        // Inode numbers no socket has: gone at the sweep the 1,024th entry starts.
        for i in 1..SWEEP_MIN as u64 {
            views.insert((held_id.0, u64::MAX - i), view);
        }
        assert_eq!(views.map.len(), 1);
        assert!(views.map.contains_key(&held_id));
        assert_eq!(views.sweep_at, SWEEP_MIN);
    }
}
