//! The exported libc replacements. Each one looks the fd up in [`crate::table`], outsources
//! AF_INET work to host-server, and otherwise calls the real function unchanged.
//!
//! How an outsourced socket keeps working with the program's own `read`, `write`, `poll`,
//! `epoll` and `fcntl`: the descriptor host-server passes back (a connected IPv6 socket, or the
//! listen stream) is `dup3`'d onto the program's own fd number, so the kernel object behind the
//! fd changes but the number does not. Only the calls that would reveal the change
//! (getsockname, getpeername, getsockopt's SO_DOMAIN…) are answered from the table.

use std::net::{Ipv4Addr, SocketAddrV4};

use libc::{c_int, c_void, sockaddr, socklen_t};
use shared_proto::outsource::{ConnectRequest, ListenRequest};
use shared_proto::{Errno, ToGuest, ToHost};

use crate::real;
use crate::sockaddr::{is_local, read_v4, write_v4};
use crate::table::{self, Entry, Kind};
use crate::transport::{self, recv_frame, Stream};

pub(crate) fn set_errno(e: Errno) -> c_int {
    // SAFETY: __errno_location returns this thread's errno slot.
    unsafe { *libc::__errno_location() = c_int::from(e.0) };
    -1
}

/// The program's view of `fd`'s status flags and close-on-exec bit, to carry over a dup3.
pub(crate) struct Flags {
    status: c_int,
    cloexec: bool,
}

pub(crate) fn flags_of(fd: c_int) -> Flags {
    // SAFETY: fcntl queries on an fd the program gave us.
    let (status, fd_flags) = unsafe {
        (
            real::fcntl(fd, libc::F_GETFL, 0),
            real::fcntl(fd, libc::F_GETFD, 0),
        )
    };
    Flags {
        status: status.max(0),
        cloexec: fd_flags > 0 && fd_flags & libc::FD_CLOEXEC != 0,
    }
}

/// Puts `new` in place of the program's `fd`, keeping the program's flags; closes `new`.
pub(crate) fn replace_fd(new: c_int, fd: c_int, flags: &Flags) -> Result<(), Errno> {
    // SAFETY: both fds are open; dup3 atomically replaces `fd` (the program's number).
    let rc = unsafe { real::dup3(new, fd, if flags.cloexec { libc::O_CLOEXEC } else { 0 }) };
    let err = std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EBADF);
    // SAFETY: `new` was passed to us (or opened by us) and is ours to close.
    unsafe { real::close(new) };
    if rc < 0 {
        return Err(Errno(u16::try_from(err).unwrap_or(9)));
    }
    // SAFETY: F_SETFL on the fd we just installed, with the program's own flags.
    unsafe {
        real::fcntl(
            fd,
            libc::F_SETFL,
            usize::try_from(flags.status).unwrap_or(0),
        )
    };
    Ok(())
}

/// The socket options carried from the program's socket to the host's socket after an
/// outsourced connect, when the program set them (its `setsockopt` marks the bit): an option it
/// never touched keeps the host socket's default, so the connect costs no extra calls and, e.g.,
/// buffer auto-tuning stays on. (level, name, value size, halve): the kernel reports SO_RCVBUF
/// and SO_SNDBUF doubled, so the value read is halved before it is set again.
const COPIED_OPTIONS: [(c_int, c_int, usize, bool); 10] = [
    (libc::IPPROTO_TCP, libc::TCP_NODELAY, INT, false),
    (libc::SOL_SOCKET, libc::SO_KEEPALIVE, INT, false),
    (libc::SOL_SOCKET, libc::SO_RCVTIMEO, TIMEVAL, false),
    (libc::SOL_SOCKET, libc::SO_SNDTIMEO, TIMEVAL, false),
    (libc::SOL_SOCKET, libc::SO_RCVBUF, INT, true),
    (libc::SOL_SOCKET, libc::SO_SNDBUF, INT, true),
    (libc::SOL_SOCKET, libc::SO_LINGER, LINGER, false),
    (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, INT, false),
    (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, INT, false),
    (libc::IPPROTO_TCP, libc::TCP_KEEPCNT, INT, false),
];
const INT: usize = std::mem::size_of::<c_int>();
const TIMEVAL: usize = std::mem::size_of::<libc::timeval>();
const LINGER: usize = std::mem::size_of::<libc::linger>();

/// The bit of `(level, name)` in [`Entry::options`], if it is a copied option.
fn option_bit(level: c_int, name: c_int) -> Option<u16> {
    COPIED_OPTIONS
        .iter()
        .position(|&(l, n, _, _)| l == level && n == name)
        .map(|i| 1 << i)
}

/// Copies the options in `set` (bits of [`COPIED_OPTIONS`]) from `from` to `to`.
pub(crate) fn copy_options(from: c_int, to: c_int, set: u16) {
    for (i, &(level, name, size, halve)) in COPIED_OPTIONS.iter().enumerate() {
        if set & (1 << i) == 0 {
            continue;
        }
        let mut buf = [0u8; 32];
        let mut len = size as socklen_t;
        // SAFETY: buf is larger than any option read here; len says how much.
        unsafe {
            if real::getsockopt(from, level, name, buf.as_mut_ptr().cast(), &mut len) != 0 {
                continue;
            }
            if halve && len as usize == INT {
                let v = c_int::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) / 2;
                buf[..INT].copy_from_slice(&v.to_ne_bytes());
            }
            libc::setsockopt(to, level, name, buf.as_ptr().cast(), len);
        }
    }
}

fn outsource_connect(fd: c_int, entry: Entry, dest: SocketAddrV4) -> c_int {
    let flags = flags_of(fd);
    let nonblocking = flags.status & libc::O_NONBLOCK != 0;
    let stream = match Stream::open() {
        Ok(s) => s,
        Err(e) => return set_errno(e),
    };
    // In a VM there is no descriptor to pass: host-server relays over the vsock stream. In
    // process mode the socket always comes back while its connect is under way, and a blocking
    // connect waits for it here, on the program's own socket: the handshake overlaps the
    // hand-over, and its end wakes the program directly instead of host-server first.
    let pass_fd = transport::vsock_port().is_none();
    let req = ToHost::Connect(ConnectRequest {
        dest,
        pass_fd,
        nonblocking: nonblocking || pass_fd,
    });
    let answer = stream.send(&req).and_then(|()| stream.recv());
    match answer {
        Ok((
            ToGuest::Connected {
                local,
                peer,
                in_progress,
                ..
            },
            passed,
        )) => {
            // With a passed fd the program's fd becomes the host's IPv6 socket. Without one
            // (the guest DNS address, served by dns-cache) host-server relays: the stream itself
            // becomes the program's socket and carries the connection's bytes.
            let installed = match passed {
                Some(host_fd) => {
                    copy_options(fd, host_fd, entry.options);
                    replace_fd(host_fd, fd, &flags)
                }
                None => {
                    transport::clear_answer_timeout(stream.fd());
                    replace_fd(stream.into_raw(), fd, &flags)
                }
            };
            if let Err(e) = installed {
                return set_errno(e);
            }
            table::set(
                fd,
                Entry {
                    kind: Kind::Outsourced,
                    local: Some(local),
                    peer: Some(peer),
                    ..entry
                },
            );
            match (in_progress, nonblocking) {
                (false, _) => 0,
                (true, true) => set_errno(Errno::EINPROGRESS),
                (true, false) => finish_blocking_connect(fd),
            }
        }
        other => unexpected(&other),
    }
}

/// A blocking connect whose socket came back under way: waits until it is writable, as the
/// kernel's own blocking connect would, and reports its outcome (SO_ERROR). SO_SNDTIMEO bounds
/// the wait as it bounds a native connect (then EINPROGRESS); signals do not end it.
fn finish_blocking_connect(fd: c_int) -> c_int {
    let zero = libc::timeval {
        tv_sec: 0,
        tv_usec: 0,
    };
    let limit_ms = match socket_option(fd, libc::SO_SNDTIMEO, zero) {
        Some(tv) if tv.tv_sec > 0 || tv.tv_usec > 0 => tv.tv_sec * 1000 + tv.tv_usec / 1000,
        _ => -1,
    };
    let start = std::time::Instant::now();
    loop {
        let timeout = if limit_ms < 0 {
            -1
        } else {
            let spent = i64::try_from(start.elapsed().as_millis()).unwrap_or(i64::MAX);
            if spent >= limit_ms {
                return set_errno(Errno::EINPROGRESS);
            }
            c_int::try_from(limit_ms - spent).unwrap_or(c_int::MAX)
        };
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut p, 1, timeout) };
        if n > 0 {
            break;
        }
        // 0: the time ran out (checked above); EINTR: a signal, which a connect waits through.
        if n < 0 && transport::last_errno() != Errno::EINTR {
            return set_errno(transport::last_errno());
        }
    }
    match socket_option(fd, libc::SO_ERROR, 0 as c_int) {
        Some(0) => 0,
        Some(e) => set_errno(Errno(u16::try_from(e).unwrap_or(5))),
        None => set_errno(transport::last_errno()),
    }
}

/// A SOL_SOCKET option of `fd` read into a value shaped like `init`; `None` if getsockopt failed.
fn socket_option<T: Copy>(fd: c_int, name: c_int, init: T) -> Option<T> {
    let mut v = init;
    let mut len = std::mem::size_of::<T>() as socklen_t;
    // SAFETY: getsockopt into a `T` of the size given.
    let rc = unsafe {
        real::getsockopt(
            fd,
            libc::SOL_SOCKET,
            name,
            std::ptr::from_mut(&mut v).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(v)
}

/// Any answer but the one the call waited for: a refusal's errno, EPROTO for the wrong kind of
/// frame (a descriptor passed with it is closed), or the transport's error.
pub(crate) fn unexpected(answer: &Result<(ToGuest, Option<c_int>), Errno>) -> c_int {
    match answer {
        Ok((ToGuest::Failed(e), passed)) => {
            close_opt(*passed);
            set_errno(*e)
        }
        Ok((_, passed)) => {
            close_opt(*passed);
            set_errno(Errno::EPROTO)
        }
        Err(e) => set_errno(*e),
    }
}

/// Makes `conn`, an accepted connection, the program's: close-on-exec and non-blocking as
/// accept4's `flags` ask, the peer written to the caller's `addr`, the AF_INET view recorded.
///
/// # Safety
/// `conn` is ours; `addr`/`len` follow accept4(2)'s contract.
pub(crate) unsafe fn install_accepted(
    conn: c_int,
    flags: c_int,
    peer: SocketAddrV4,
    local: SocketAddrV4,
    addr: *mut sockaddr,
    len: *mut socklen_t,
) -> c_int {
    // SAFETY: fcntl on our own fd; the caller's out pointers.
    unsafe {
        if flags & libc::SOCK_CLOEXEC == 0 {
            real::fcntl(conn, libc::F_SETFD, 0);
        }
        let fl = real::fcntl(conn, libc::F_GETFL, 0).max(0);
        let fl = if flags & libc::SOCK_NONBLOCK != 0 {
            fl | libc::O_NONBLOCK
        } else {
            fl & !libc::O_NONBLOCK
        };
        real::fcntl(conn, libc::F_SETFL, usize::try_from(fl).unwrap_or(0));
        write_v4(peer, addr, len);
    }
    table::set(
        conn,
        Entry {
            kind: Kind::Outsourced,
            local: Some(local),
            peer: Some(peer),
            local_only: false,
            options: 0,
        },
    );
    conn
}

fn close_opt(fd: Option<c_int>) {
    if let Some(fd) = fd {
        // SAFETY: a passed fd we do not use.
        unsafe { real::close(fd) };
    }
}

/// `socket(2)`: AF_INET stream and datagram sockets are remembered; everything is created for real,
/// so the program always holds a genuine fd for fcntl, setsockopt and the like.
///
/// # Safety
/// Called by C with socket(2)'s contract.
#[no_mangle]
pub unsafe extern "C" fn socket(domain: c_int, ty: c_int, protocol: c_int) -> c_int {
    // SAFETY: forwarded arguments.
    let fd = unsafe { real::socket(domain, ty, protocol) };
    if fd >= 0 {
        let base = ty & !(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC);
        let kind = match (domain, base) {
            (libc::AF_INET, libc::SOCK_STREAM) => Kind::InetStream,
            (libc::AF_INET, libc::SOCK_DGRAM) => Kind::InetDgram,
            _ => Kind::Untracked,
        };
        table::set(fd, Entry::new(kind));
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
        if let Some(rc) = unsafe { crate::udp::connect(fd, entry, addr, len) } {
            return rc;
        }
    }
    if entry.kind == Kind::InetStream && !entry.local_only {
        // SAFETY: the caller's addr/len.
        if let Some(dest) = unsafe { read_v4(addr, len) } {
            if !is_local(dest) {
                return outsource_connect(fd, entry, dest);
            }
        }
    }
    // SAFETY: forwarded arguments.
    unsafe { real::connect(fd, addr, len) }
}

/// `bind(2)`: a loopback bind is real and keeps the socket local; any other IPv4 bind is only
/// recorded, and host-server binds for real on listen.
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
                table::set(
                    fd,
                    Entry {
                        local: Some(a),
                        options: entry.options | bound,
                        ..entry
                    },
                );
                return 0;
            }
            None => {}
        }
    }
    // SAFETY: forwarded arguments.
    unsafe { real::bind(fd, addr, len) }
}

/// `listen(2)`: host-server listens on the host's IPv6 address for us; the program's fd becomes
/// the listen stream, readable when a connection is waiting.
///
/// # Safety
/// Called by C with listen(2)'s contract.
#[no_mangle]
pub unsafe extern "C" fn listen(fd: c_int, backlog: c_int) -> c_int {
    let entry = table::get(fd);
    if entry.kind != Kind::InetStream || entry.local_only {
        // SAFETY: forwarded arguments.
        return unsafe { real::listen(fd, backlog) };
    }
    let addr = entry
        .local
        .unwrap_or(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
    let flags = flags_of(fd);
    if transport::vsock_port().is_some() {
        return crate::vmlisten::listen(fd, entry, addr, backlog, &flags);
    }
    let stream = match Stream::open() {
        Ok(s) => s,
        Err(e) => return set_errno(e),
    };
    let req = ListenRequest {
        addr,
        backlog: u32::try_from(backlog.max(0)).unwrap_or(0),
        pass_fd: true,
        vsock_port: 0,
    };
    let answer = stream
        .send(&ToHost::Listen(req))
        .and_then(|()| stream.recv());
    match answer {
        Ok((ToGuest::Listening { local }, passed)) => {
            close_opt(passed);
            // The listen stream blocks on reads by default; the program's flags decide now.
            if let Err(e) = replace_fd(stream.into_raw(), fd, &flags) {
                return set_errno(e);
            }
            table::set(
                fd,
                Entry {
                    kind: Kind::Listener,
                    local: Some(local),
                    ..entry
                },
            );
            0
        }
        other => unexpected(&other),
    }
}

/// `accept4(2)`: on an outsourced listener, reads the next Inbound frame and its socket.
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
        return unsafe { crate::vmlisten::accept4(fd, addr, len, flags) };
    }
    let mut rflags = libc::MSG_CMSG_CLOEXEC;
    // SAFETY: F_GETFL query.
    if unsafe { real::fcntl(fd, libc::F_GETFL, 0) } & libc::O_NONBLOCK != 0 {
        rflags |= libc::MSG_DONTWAIT;
    }
    match recv_frame(fd, rflags) {
        Ok((ToGuest::Inbound { peer, local }, Some(conn))) => {
            // SAFETY: the fd just received is ours; the caller's out pointers.
            unsafe { install_accepted(conn, flags, peer, local, addr, len) }
        }
        // host-server closed the listen stream: the listener is gone.
        Err(Errno::EPROTO) => set_errno(Errno::ECONNABORTED),
        other => unexpected(&other),
    }
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
        Kind::Outsourced | Kind::Listener | Kind::Udp | Kind::UdpPassed => Some(
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

/// `getsockopt(2)`: the options that would show an outsourced socket is not what the program
/// made (its domain, type, listening state) answer as for the AF_INET socket.
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
    let kind = table::get(fd).kind;
    if is_vm_stand_in(kind, level) {
        // The fd is a vsock stream standing in for a TCP socket: answer as TCP would.
        return match name {
            // No IP options on the connection (netcat -v prints any it is given).
            libc::IP_OPTIONS if level == libc::IPPROTO_IP => {
                if len.is_null() {
                    return set_errno(Errno(libc::EFAULT as u16));
                }
                // SAFETY: the caller's length slot.
                unsafe { *len = 0 };
                0
            }
            libc::TCP_MAXSEG => put_int(val, len, 1448),
            libc::TCP_INFO if level == libc::IPPROTO_TCP => {
                if val.is_null() || len.is_null() {
                    return set_errno(Errno(libc::EFAULT as u16));
                }
                // SAFETY: the caller's buffer of *len bytes; zeroed, as for an idle socket.
                unsafe { std::ptr::write_bytes(val.cast::<u8>(), 0, *len as usize) };
                0
            }
            _ => put_int(val, len, 0),
        };
    }
    if level == libc::SOL_SOCKET
        && matches!(
            kind,
            Kind::Outsourced | Kind::Listener | Kind::Udp | Kind::UdpPassed
        )
    {
        let dgram = matches!(kind, Kind::Udp | Kind::UdpPassed);
        // The host's own socket (connected TCP, connected UDP) has the real pending error.
        let own_socket = matches!(kind, Kind::Outsourced | Kind::UdpPassed);
        match name {
            libc::SO_DOMAIN => return put_int(val, len, libc::AF_INET),
            libc::SO_TYPE if dgram => return put_int(val, len, libc::SOCK_DGRAM),
            libc::SO_TYPE => return put_int(val, len, libc::SOCK_STREAM),
            libc::SO_PROTOCOL if dgram => return put_int(val, len, libc::IPPROTO_UDP),
            libc::SO_PROTOCOL => return put_int(val, len, libc::IPPROTO_TCP),
            libc::SO_ACCEPTCONN => return put_int(val, len, c_int::from(kind == Kind::Listener)),
            libc::SO_ERROR if !own_socket => return put_int(val, len, 0),
            _ => {}
        }
    }
    // SAFETY: forwarded arguments.
    unsafe { real::getsockopt(fd, level, name, val, len) }
}

/// Whether `level` options on a socket of `kind` must be answered by the shim: in a VM an
/// outsourced socket is a vsock stream, which has no TCP or IP options.
fn is_vm_stand_in(kind: Kind, level: c_int) -> bool {
    matches!(kind, Kind::Outsourced | Kind::Listener)
        && (level == libc::IPPROTO_TCP || level == libc::IPPROTO_IP)
        && transport::vsock_port().is_some()
}

/// `setsockopt(2)`: in a VM, TCP and IP options on an outsourced socket are accepted and have
/// no effect (the host's socket is host-server's); everything else is real.
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
    if is_vm_stand_in(entry.kind, level) {
        return 0;
    }
    // SAFETY: forwarded arguments.
    let rc = unsafe { real::setsockopt(fd, level, name, val, len) };
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
    table::clear(fd);
    // SAFETY: forwarded argument.
    unsafe { real::close(fd) }
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
