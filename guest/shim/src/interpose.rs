//! The exported libc replacements. Each one looks the fd up in [`crate::table`], outsources
//! AF_INET work to host-server, and otherwise calls the real function unchanged.
//!
//! How an outsourced socket keeps working with the program's own `read`, `write`, `poll`,
//! `epoll` and `fcntl`: the descriptor host-server passes back (a connected IPv6 socket, or a
//! listener's packet channel) is `dup3`'d onto the program's own fd number, so the kernel object behind the
//! fd changes but the number does not. Only the calls that would reveal the change
//! (getsockname, getpeername, getsockopt's SO_DOMAIN…) are answered from the table.
//!
//! The work of each outsourcing call is elsewhere: `connect` (TCP connect), `listen` and
//! `vmlisten` (listeners), `dgram` (a datagram socket's connect); nothing below points back here.

use std::net::{Ipv4Addr, SocketAddrV4};

use libc::{c_int, c_void, sockaddr, socklen_t};
use shared_proto::sockopt::{self, Get, Set, StandIn};
use shared_proto::Errno;

use crate::fd::{flags_of, set_errno};
use crate::real;
use crate::sockaddr::{is_local, read_v4, write_v4};
use crate::sockopt::option_bit;
use crate::table::{self, Entry, Kind};
use crate::transport;
use crate::{connect, dgram, lend, listen, vmlisten};

/// `socket(2)`: AF_INET stream and datagram sockets are remembered; everything is created for real,
/// so the program always holds a genuine fd for fcntl, setsockopt and the like.
///
/// # Safety
/// Called by C with socket(2)'s contract.
#[no_mangle]
pub unsafe extern "C" fn socket(domain: c_int, ty: c_int, protocol: c_int) -> c_int {
    let base = ty & !(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC);
    let ping =
        domain == libc::AF_INET && base == libc::SOCK_DGRAM && protocol == libc::IPPROTO_ICMP;
    // A raw ICMP socket (root's ping) takes the same path; its reads get an IPv4 header.
    let raw = domain == libc::AF_INET && base == libc::SOCK_RAW && protocol == libc::IPPROTO_ICMP;
    if domain == libc::AF_INET
        && base == libc::SOCK_STREAM
        && matches!(protocol, 0 | libc::IPPROTO_TCP)
    {
        // A spare lent socket stands in from the start: its connect needs no other socket.
        if let Some(fd) = lend::stand_in_socket(ty).filter(|&fd| table::fits(fd)) {
            let mut e = Entry::new(Kind::InetStream);
            e.options |= table::LENT;
            table::set(fd, e);
            return fd;
        }
    }
    // SAFETY: forwarded arguments.
    let mut fd = unsafe { real::socket(domain, ty, protocol) };
    if fd < 0 && ping {
        // A ping socket's echoes go through host-server, whose ping_group_range is the one that
        // counts: where this namespace forbids ping sockets, a UDP socket stands in until the
        // first send opens the ICMP association.
        // SAFETY: plain socket(2) call.
        fd = unsafe { real::socket(domain, ty, 0) };
    }
    if fd >= 0 {
        let kind = match (domain, base) {
            (libc::AF_INET, libc::SOCK_STREAM) => Kind::InetStream,
            (libc::AF_INET, libc::SOCK_DGRAM) => Kind::InetDgram,
            _ if raw => Kind::InetDgram,
            _ => Kind::Untracked,
        };
        if kind != Kind::Untracked && !table::fits(fd) {
            // Beyond the table (fs.nr_open raised past 2^20): an untracked AF_INET socket
            // would go out natively, so there is none, as if the descriptors ran out.
            // SAFETY: the socket we just made.
            unsafe { real::close(fd) };
            return set_errno(Errno::EMFILE);
        }
        let mut e = Entry::new(kind);
        if ping || raw {
            e.options |= table::ICMP;
        }
        if raw {
            e.options |= table::RAW;
        }
        table::set(fd, e);
    }
    fd
}

/// `connect(2)`: a TCP connect to a non-loopback IPv4 address goes through host-server.
///
/// # Safety
/// Called by C with connect(2)'s contract.
#[no_mangle]
pub unsafe extern "C" fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    let entry = table::get(fd);
    if matches!(entry.kind, Kind::InetDgram | Kind::Udp | Kind::UdpPassed) {
        // SAFETY: the caller's addr/len, passed on.
        if let Some(rc) = unsafe { dgram::connect(fd, entry, addr, len) } {
            return rc;
        }
    }
    if entry.kind == Kind::InetStream && !entry.local_only {
        // SAFETY: the caller's addr/len.
        if let Some(dest) = unsafe { read_v4(addr, len) } {
            if !is_local(dest) {
                if let Some(rc) = lend::connect(fd, entry, dest) {
                    return rc;
                }
                return connect::outsource_connect(fd, entry, dest);
            }
        }
    }
    // What the kernel does next needs the AF_INET socket the program asked for.
    if let Err(e) = lend::unlend(fd, entry) {
        return set_errno(e);
    }
    // SAFETY: the caller's addr/len.
    if unsafe { kernel_decides(addr, len) } {
        // SAFETY: forwarded arguments.
        return unsafe { real::decided_connect(fd, addr, len) };
    }
    // SAFETY: forwarded arguments.
    unsafe { real::connect(fd, addr, len) }
}

/// Whether `outsock run`'s supervisor would only let a connect to `addr` through: an address
/// of another family than AF_INET (AF_UNIX, AF_INET6, ...; not AF_UNSPEC, a disconnect it may
/// act on) or a loopback AF_INET one. Such a connect skips its notification
/// (`real::decided_connect`).
///
/// # Safety
/// `addr`/`len` follow connect(2)'s contract.
unsafe fn kernel_decides(addr: *const sockaddr, len: socklen_t) -> bool {
    if addr.is_null() || (len as usize) < std::mem::size_of::<libc::sa_family_t>() {
        return false;
    }
    // SAFETY: at least the family's bytes are readable.
    let family = c_int::from(unsafe { std::ptr::read_unaligned(addr.cast::<libc::sa_family_t>()) });
    match family {
        libc::AF_UNSPEC => false,
        // SAFETY: the caller's addr/len.
        libc::AF_INET => unsafe { read_v4(addr, len) }.is_some_and(is_local),
        _ => true,
    }
}

/// `bind(2)`: a loopback bind is real and keeps the socket local; any other IPv4 bind of a
/// stream socket is only recorded, and host-server binds for real on listen. A datagram socket
/// bound to a port of its own is a UDP server: its association opens at once (`dgram`).
///
/// # Safety
/// Called by C with bind(2)'s contract.
#[no_mangle]
pub unsafe extern "C" fn bind(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    let entry = table::get(fd);
    if matches!(entry.kind, Kind::InetStream | Kind::InetDgram) {
        // SAFETY: the caller's addr/len.
        match unsafe { read_v4(addr, len) } {
            Some(a) if is_local(a) => {
                table::set(
                    fd,
                    Entry {
                        local_only: true,
                        local: Some(a),
                        ..entry
                    },
                );
            }
            Some(a) => {
                let bound = if a.port() == 0 { 0 } else { table::BOUND };
                let e = Entry {
                    local: Some(a),
                    options: entry.options | bound,
                    ..entry
                };
                table::set(fd, e);
                // (A ping socket's port is its identifier, not a server's port.)
                if entry.kind == Kind::InetDgram
                    && a.port() != 0
                    && entry.options & table::ICMP == 0
                {
                    // A UDP server: host-server binds its port now, so it can receive at once.
                    return dgram::bind_server(fd, e);
                }
                return 0;
            }
            None => {}
        }
    }
    // A real bind needs the AF_INET socket the program asked for.
    if let Err(e) = lend::unlend(fd, table::get(fd)) {
        return set_errno(e);
    }
    // SAFETY: forwarded arguments.
    unsafe { real::bind(fd, addr, len) }
}

/// `listen(2)`: host-server listens on the host's IPv6 address for us; the program's fd becomes
/// readable when a connection is waiting (the packet channel in process mode, see `listen`; a
/// vsock listener in a VM, see `vmlisten`). On a listening socket it changes the backlog, as
/// natively: host-server's in process mode, the vsock listener's in a VM.
///
/// # Safety
/// Called by C with listen(2)'s contract.
#[no_mangle]
pub unsafe extern "C" fn listen(fd: c_int, backlog: c_int) -> c_int {
    let entry = table::get(fd);
    if entry.kind == Kind::Listener && table::companion(fd).is_none() {
        // Already listening (process mode): natively, a new backlog.
        let addr = entry
            .local
            .unwrap_or(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
        return listen::relisten(fd, addr, backlog);
    }
    if entry.kind != Kind::InetStream || entry.local_only {
        // SAFETY: forwarded arguments.
        return unsafe { real::listen(fd, backlog) };
    }
    let addr = entry
        .local
        .unwrap_or(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
    let flags = flags_of(fd);
    if transport::vsock_port().is_some() {
        return vmlisten::listen(fd, entry, addr, backlog, &flags);
    }
    listen::listen(fd, entry, addr, backlog, &flags)
}

/// `accept4(2)`: on an outsourced listener, the next inbound connection (`listen` reads an
/// Inbound frame and its socket; `vmlisten` accepts an inbound vsock stream).
///
/// # Safety
/// Called by C with accept4(2)'s contract.
#[no_mangle]
pub unsafe extern "C" fn accept4(
    fd: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
    flags: c_int,
) -> c_int {
    let entry = table::get(fd);
    if entry.kind != Kind::Listener {
        // SAFETY: forwarded arguments.
        return unsafe { real::accept4(fd, addr, len, flags) };
    }
    if table::companion(fd).is_some() {
        // SAFETY: the caller's out pointers, passed on.
        return unsafe { vmlisten::accept4(fd, addr, len, flags) };
    }
    // SAFETY: the caller's out pointers, passed on.
    unsafe { listen::accept4(fd, addr, len, flags) }
}

/// `accept(2)`.
///
/// # Safety
/// Called by C with accept(2)'s contract.
#[no_mangle]
pub unsafe extern "C" fn accept(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    // SAFETY: same contract.
    unsafe { accept4(fd, addr, len, 0) }
}

/// `getsockname(2)`: outsourced sockets report their IPv4 view.
///
/// # Safety
/// Called by C with getsockname(2)'s contract.
#[no_mangle]
pub unsafe extern "C" fn getsockname(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    let e = table::get(fd);
    let view = match e.kind {
        // A connection on a lent socket: its port, read when asked (`lend`).
        Kind::Outsourced if e.local.is_none() => Some(SocketAddrV4::new(
            Ipv4Addr::UNSPECIFIED,
            real::decided_local_port(fd),
        )),
        Kind::Outsourced | Kind::Listener | Kind::Udp | Kind::UdpPassed => Some(
            e.local
                .unwrap_or(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)),
        ),
        // A lent socket standing in has the AF_INET view of an unbound socket.
        Kind::InetStream if !e.local_only && e.options & table::LENT != 0 => Some(
            e.local
                .unwrap_or(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)),
        ),
        Kind::InetStream | Kind::InetDgram if !e.local_only => e.local,
        _ => None,
    };
    match view {
        Some(a) => {
            // SAFETY: the caller's out pointers.
            unsafe { write_v4(a, addr, len) };
            0
        }
        // SAFETY: forwarded arguments.
        None => unsafe { real::getsockname(fd, addr, len) },
    }
}

/// `getpeername(2)`.
///
/// # Safety
/// Called by C with getpeername(2)'s contract.
#[no_mangle]
pub unsafe extern "C" fn getpeername(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    let e = table::get(fd);
    match (e.kind, e.peer) {
        (Kind::Outsourced | Kind::Udp | Kind::UdpPassed, Some(p)) => {
            // SAFETY: the caller's out pointers.
            unsafe { write_v4(p, addr, len) };
            0
        }
        (Kind::Listener | Kind::Udp, None) => set_errno(Errno::ENOTCONN),
        // SAFETY: forwarded arguments.
        _ => unsafe { real::getpeername(fd, addr, len) },
    }
}

fn put_int(val: *mut c_void, len: *mut socklen_t, v: c_int) -> c_int {
    if val.is_null() || len.is_null() {
        return set_errno(Errno(libc::EFAULT as u16));
    }
    // SAFETY: the caller's buffer and length; we write at most *len bytes.
    unsafe {
        let n = (*len as usize).min(std::mem::size_of::<c_int>());
        std::ptr::copy_nonoverlapping(std::ptr::from_ref(&v).cast::<u8>(), val.cast::<u8>(), n);
        *len = n as socklen_t;
    }
    0
}

/// `getsockopt(2)`: on an outsourced TCP socket (or listener) the options that would show it
/// is not what the program made (its domain, type, listening state; in a VM its TCP and IP
/// options) answer as for the AF_INET socket, by the rule both front ends share
/// (`shared_proto::sockopt`); a UDP association's answer as a UDP (or ICMP) socket's.
///
/// # Safety
/// Called by C with getsockopt(2)'s contract.
#[no_mangle]
pub unsafe extern "C" fn getsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    val: *mut c_void,
    len: *mut socklen_t,
) -> c_int {
    let entry = table::get(fd);
    let kind = entry.kind;
    let lent = kind == Kind::InetStream && entry.options & table::LENT != 0;
    if matches!(kind, Kind::Outsourced | Kind::Listener) || lent {
        if len.is_null() {
            return set_errno(Errno(libc::EFAULT as u16));
        }
        // SAFETY: the caller's length slot (not null), read as the kernel reads it: an int.
        let optlen = unsafe { std::ptr::read_unaligned(len.cast::<c_int>()) };
        let set = crate::sockopt::kept(fd, level, name);
        match sockopt::get(level, name, stand_in(kind), optlen, set) {
            Get::Kernel => {}
            Get::Fail(e) => return set_errno(e),
            Get::Reply(r) => {
                let mut buf = [0; sockopt::TCP_INFO_LEN];
                let bytes = r.bytes(&mut buf);
                if val.is_null() && !bytes.is_empty() {
                    return set_errno(Errno(libc::EFAULT as u16));
                }
                // SAFETY: the caller's buffer of *len bytes; the reply is at most that long
                // (or an int's worth, as the kernel writes one).
                unsafe {
                    std::ptr::copy_nonoverlapping(bytes.as_ptr(), val.cast::<u8>(), bytes.len());
                    *len = bytes.len() as socklen_t;
                }
                return 0;
            }
        }
    }
    if level == libc::SOL_SOCKET
        && name == libc::SO_PROTOCOL
        && kind == Kind::InetDgram
        && table::get(fd).options & table::ICMP != 0
    {
        // A ping socket may have a UDP socket standing in for it (see `socket`).
        return put_int(val, len, libc::IPPROTO_ICMP);
    }
    if level == libc::SOL_SOCKET && matches!(kind, Kind::Udp | Kind::UdpPassed) {
        // The host's own socket (connected UDP) has the real pending error.
        let own_socket = kind == Kind::UdpPassed;
        match name {
            libc::SO_DOMAIN => return put_int(val, len, libc::AF_INET),
            libc::SO_TYPE => {
                let raw = table::get(fd).options & table::RAW != 0;
                let t = if raw {
                    libc::SOCK_RAW
                } else {
                    libc::SOCK_DGRAM
                };
                return put_int(val, len, t);
            }
            libc::SO_PROTOCOL => {
                let icmp = table::get(fd).options & table::ICMP != 0;
                let p = if icmp {
                    libc::IPPROTO_ICMP
                } else {
                    libc::IPPROTO_UDP
                };
                return put_int(val, len, p);
            }
            libc::SO_ERROR if !own_socket => return put_int(val, len, 0),
            _ => {}
        }
    }
    // SAFETY: forwarded arguments.
    unsafe { real::getsockopt(fd, level, name, val, len) }
}

/// What stands in for an outsourced TCP socket (`Outsourced`) or listener: host-server's IPv6
/// socket or packet channel in process mode, a vsock stream or listener in a VM.
fn stand_in(kind: Kind) -> StandIn {
    StandIn {
        listener: kind == Kind::Listener,
        vsock: transport::vsock_port().is_some(),
        v6: false,
        udp: false,
    }
}

/// `setsockopt(2)`: in a VM, TCP and IP options on an outsourced socket are checked and
/// accepted by the shared rule (`shared_proto::sockopt`: the host's socket is host-server's),
/// and the values it remembers are kept for `getsockopt` to read back (`crate::sockopt`);
/// everything else is real.
///
/// # Safety
/// Called by C with setsockopt(2)'s contract.
#[no_mangle]
pub unsafe extern "C" fn setsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    val: *const c_void,
    len: socklen_t,
) -> c_int {
    let entry = table::get(fd);
    if matches!(entry.kind, Kind::Outsourced | Kind::Listener) {
        match sockopt::set(level, name, stand_in(entry.kind), len) {
            Set::Kernel => {}
            Set::Accept if val.is_null() && len > 0 => {
                return set_errno(Errno(libc::EFAULT as u16));
            }
            Set::Accept => {
                // As the kernel copies it in: at most an int's worth.
                let mut value = [0u8; 4];
                let n = (len as usize).min(value.len());
                if n > 0 {
                    // SAFETY: the caller's option value of `len` bytes (not null, checked).
                    unsafe {
                        std::ptr::copy_nonoverlapping(val.cast::<u8>(), value.as_mut_ptr(), n);
                    }
                }
                return match sockopt::read_back(level, name, &value[..n]) {
                    Ok(v) => {
                        crate::sockopt::keep(fd, level, name, v);
                        0
                    }
                    Err(e) => set_errno(e),
                };
            }
            Set::Fail(e) => return set_errno(e),
        }
    }
    // SAFETY: forwarded arguments.
    let rc = unsafe { real::setsockopt(fd, level, name, val, len) };
    if matches!(entry.kind, Kind::InetDgram | Kind::Udp)
        && entry.options & table::ICMP != 0
        && level == libc::IPPROTO_IP
        && name == libc::IP_RECVTTL
    {
        // Replies come with their TTL from host-server: the shim writes IP_TTL (see `udp`).
        let on = !val.is_null()
            && len as usize >= std::mem::size_of::<c_int>()
            // SAFETY: the caller's option value holds an int (checked above).
            && unsafe { std::ptr::read_unaligned(val.cast::<c_int>()) } != 0;
        let options = if on {
            entry.options | table::RECVTTL
        } else {
            entry.options & !table::RECVTTL
        };
        table::set(fd, Entry { options, ..entry });
        return 0;
    }
    if rc == 0 && matches!(entry.kind, Kind::InetStream | Kind::InetDgram) {
        if let Some(bit) = option_bit(level, name) {
            table::set(
                fd,
                Entry {
                    options: entry.options | bit,
                    ..entry
                },
            );
        }
    }
    rc
}

/// `close(2)`: forgets the fd (closing a listener's stream closes the host's listener).
///
/// # Safety
/// Called by C with close(2)'s contract.
#[no_mangle]
pub unsafe extern "C" fn close(fd: c_int) -> c_int {
    if let Some(control) = table::take_companion(fd) {
        // A VM listener's control stream: closing it closes the host's listener.
        // SAFETY: the companion fd is ours.
        unsafe { real::close(control) };
    }
    let host_end = table::take_kept(fd);
    table::clear(fd);
    // SAFETY: forwarded argument.
    let rc = unsafe { real::close(fd) };
    if let Some(h) = host_end {
        // A listener's hidden host end goes with its last copy (see `listen`).
        crate::listen::close_hidden_if_done(h);
    }
    rc
}

/// `dup(2)`: the copy shares the original's state.
///
/// # Safety
/// Called by C with dup(2)'s contract.
#[no_mangle]
pub unsafe extern "C" fn dup(fd: c_int) -> c_int {
    // SAFETY: forwarded argument.
    let n = unsafe { real::dup(fd) };
    if n >= 0 {
        table::set(n, table::get(fd));
        crate::sockopt::copy_kept(fd, n);
    }
    n
}

/// `dup2(2)`.
///
/// # Safety
/// Called by C with dup2(2)'s contract.
#[no_mangle]
pub unsafe extern "C" fn dup2(fd: c_int, to: c_int) -> c_int {
    // SAFETY: forwarded arguments.
    let n = unsafe { real::dup2(fd, to) };
    if n >= 0 && fd != to {
        table::set(to, table::get(fd));
        crate::sockopt::copy_kept(fd, to);
    }
    n
}

/// `dup3(2)`.
///
/// # Safety
/// Called by C with dup3(2)'s contract.
#[no_mangle]
pub unsafe extern "C" fn dup3(fd: c_int, to: c_int, flags: c_int) -> c_int {
    // SAFETY: forwarded arguments.
    let n = unsafe { real::dup3(fd, to, flags) };
    if n >= 0 {
        table::set(to, table::get(fd));
        crate::sockopt::copy_kept(fd, to);
    }
    n
}

fn fcntl_common(fd: c_int, cmd: c_int, arg: usize) -> c_int {
    // SAFETY: forwarded arguments. fcntl is variadic in C; on x86-64 the third argument arrives
    // in the same register whether declared variadic or not, and every fcntl argument fits a
    // machine word, so taking it as usize is exact.
    let n = unsafe { real::fcntl(fd, cmd, arg) };
    if n >= 0 && (cmd == libc::F_DUPFD || cmd == libc::F_DUPFD_CLOEXEC) {
        table::set(n, table::get(fd));
        crate::sockopt::copy_kept(fd, n);
    }
    n
}

/// `fcntl(2)`: F_DUPFD copies carry the state.
///
/// # Safety
/// Called by C with fcntl(2)'s contract.
#[no_mangle]
pub unsafe extern "C" fn fcntl(fd: c_int, cmd: c_int, arg: usize) -> c_int {
    fcntl_common(fd, cmd, arg)
}

/// `fcntl64`: what programs built against glibc ≥ 2.28 call.
///
/// # Safety
/// Called by C with fcntl(2)'s contract.
#[no_mangle]
pub unsafe extern "C" fn fcntl64(fd: c_int, cmd: c_int, arg: usize) -> c_int {
    fcntl_common(fd, cmd, arg)
}
