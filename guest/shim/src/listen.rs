//! Listening sockets in process mode, called by `interpose::listen` and `interpose::accept4`:
//! host-server listens on the host's IPv6 address, and the request's stream takes the program's
//! listening fd number (readable when a connection is waiting); each accept reads one `Inbound`
//! frame with the connection's socket attached. Inside a VM, `vmlisten` does this instead.

use std::net::SocketAddrV4;

use libc::{c_int, sockaddr, socklen_t};
use shared_proto::outsource::ListenRequest;
use shared_proto::{Errno, ToGuest, ToHost};

use crate::fd::{close_opt, install_accepted, replace_fd, set_errno, unexpected, Flags};
use crate::real;
use crate::table::{self, Entry, Kind};
use crate::transport::{recv_frame, Stream};

/// `listen(2)` in process mode: the program's `fd` becomes the listen stream.
pub(crate) fn listen(
    fd: c_int,
    entry: Entry,
    addr: SocketAddrV4,
    backlog: c_int,
    flags: &Flags,
) -> c_int {
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
            if let Err(e) = replace_fd(stream.into_raw(), fd, flags) {
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

/// `accept4(2)` on a process-mode listener: the next Inbound frame and its socket.
///
/// # Safety
/// `addr`/`len` follow accept4(2)'s contract.
pub(crate) unsafe fn accept4(
    fd: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
    flags: c_int,
) -> c_int {
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
