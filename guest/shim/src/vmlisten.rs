//! Listening sockets inside a VM. host-server listens on the VM's IPv6 address and delivers
//! each accepted connection as a new host→guest vsock stream (hybrid `CONNECT <port>`) that
//! begins with an `Inbound` frame. So the shim gives each listener a vsock listening socket of
//! its own, on a free port it names in the listen request: that socket *becomes* the program's
//! listening fd (poll, epoll and non-blocking accept work unchanged), and the request's stream
//! is kept aside as the listener's companion — closing it closes the host's listener.
//!
//! Called by `interpose::listen` and `interpose::accept4` in a VM; in process mode `listen`
//! does this instead.

use std::net::SocketAddrV4;

use libc::{c_int, sockaddr, socklen_t};
use shared_proto::outsource::ListenRequest;
use shared_proto::{Errno, ToGuest, ToHost};

use crate::fd::{install_accepted, replace_fd, set_errno, Flags};
use crate::real;
use crate::table::{self, Entry, Kind};
use crate::transport::{self, last_errno, recv_frame, set_receive_timeout, Stream};

/// How long an accepted stream may take to deliver its `Inbound` frame.
const INBOUND_TIMEOUT_SECS: libc::time_t = 10;

/// A vsock listener on a port the kernel picks; returns (fd, port).
fn vsock_listener(backlog: c_int) -> Result<(c_int, u32), Errno> {
    // SAFETY: plain socket(2) call.
    let l = unsafe { real::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if l < 0 {
        return Err(last_errno());
    }
    table::clear(l);
    transport::size_vsock_buffer(l);
    let addr = transport::vsock_addr(libc::VMADDR_CID_ANY, libc::VMADDR_PORT_ANY);
    let mut len = std::mem::size_of::<libc::sockaddr_vm>() as socklen_t;
    let mut bound = addr;
    // SAFETY: valid sockaddr_vm buffers of `len` bytes.
    let ok = unsafe {
        real::bind(l, std::ptr::from_ref(&addr).cast(), len) == 0
            && real::listen(l, backlog.max(16)) == 0
            && real::getsockname(l, std::ptr::from_mut(&mut bound).cast(), &mut len) == 0
    };
    if !ok {
        let e = last_errno();
        // SAFETY: our own fd.
        unsafe { real::close(l) };
        return Err(e);
    }
    Ok((l, bound.svm_port))
}

/// `listen(2)` in a VM; see the module documentation.
pub(crate) fn listen(
    fd: c_int,
    entry: Entry,
    addr: SocketAddrV4,
    backlog: c_int,
    flags: &Flags,
) -> c_int {
    let (l, port) = match vsock_listener(backlog) {
        Ok(x) => x,
        Err(e) => return set_errno(e),
    };
    let close_l = || {
        // SAFETY: our own fd.
        unsafe { real::close(l) };
    };
    let stream = match Stream::open() {
        Ok(s) => s,
        Err(e) => {
            close_l();
            return set_errno(e);
        }
    };
    let req = ListenRequest {
        addr,
        backlog: u32::try_from(backlog.max(0)).unwrap_or(0),
        pass_fd: false,
        vsock_port: port,
        channel: false,
    };
    let answer = stream
        .send(&ToHost::Listen(req))
        .and_then(|()| stream.recv());
    let local = match answer {
        Ok((ToGuest::Listening { local }, None)) => local,
        other => {
            close_l();
            return set_errno(match other {
                Ok((ToGuest::Failed(e), _)) | Err(e) => e,
                Ok(_) => Errno::EPROTO,
            });
        }
    };
    if let Err(e) = replace_fd(l, fd, flags) {
        return set_errno(e);
    }
    let old = table::take_companion(fd);
    if let Some(old) = old {
        // SAFETY: a stale companion of ours.
        unsafe { real::close(old) };
    }
    table::set_companion(fd, stream.into_raw());
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

/// `accept4(2)` on a VM listener: the next inbound stream, after its `Inbound` frame.
///
/// # Safety
/// `addr`/`len` follow accept4(2)'s contract.
pub(crate) unsafe fn accept4(
    fd: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
    flags: c_int,
) -> c_int {
    loop {
        // SAFETY: accept on the program's listening fd; we take no address (it is a vsock one).
        let conn = unsafe {
            real::accept4(
                fd,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if conn < 0 {
            return conn;
        }
        table::clear(conn);
        set_receive_timeout(conn, INBOUND_TIMEOUT_SECS);
        match recv_frame(conn, 0) {
            Ok((ToGuest::Inbound { peer, local }, None)) => {
                transport::clear_answer_timeout(conn);
                // SAFETY: `conn` is ours; the caller's out pointers.
                return unsafe { install_accepted(conn, flags, peer, local, addr, len) };
            }
            other => {
                // Not an inbound stream from host-server: drop it and wait for the next.
                if let Ok((_, Some(p))) = other {
                    // SAFETY: a passed fd we do not use.
                    unsafe { real::close(p) };
                }
                // SAFETY: our own fd.
                unsafe { real::close(conn) };
                // SAFETY: F_GETFL query on the program's fd.
                if unsafe { real::fcntl(fd, libc::F_GETFL, 0) } & libc::O_NONBLOCK != 0 {
                    return set_errno(Errno(libc::EAGAIN as u16));
                }
            }
        }
    }
}
