//! Listening sockets in process mode, called by `interpose::listen` and `interpose::accept4`:
//! host-server listens on the host's IPv6 address and the program's listening fd number becomes
//! one end of an `AF_UNIX` `SOCK_SEQPACKET` pair (readable when a connection is waiting); the
//! request's stream is closed. The pair is made here and its host's end goes with the request;
//! under `outsock run` (a keeper named in `OUTSOCK_KEEPER`) it then goes to the supervisor's
//! keeper, which registers it again whenever host-server comes back: the listener outlives
//! host-server and never reads EOF meanwhile. Without a keeper a hidden copy stays here (see
//! [`listen`]). Inside a VM, `vmlisten` does this instead.
//!
//! Invariant: **one accepted connection is one packet** — an `Inbound` frame with the
//! connection's socket attached, sent by host-server in one `sendmsg`. Each accept is one
//! `recvmsg`, which takes exactly one whole packet and its descriptor, atomically, or nothing.
//! So the fd may be shared by any number of processes (inherited across fork) and threads,
//! accepting concurrently, blocking or through poll/epoll, as with a kernel listener: each
//! connection reaches exactly one of them, with its own peer address, and no reader ever sees
//! a part of another's frame. A second `listen(2)` sends a `Listen` packet the other way, and
//! host-server applies its backlog.

use std::net::SocketAddrV4;

use libc::{c_int, sockaddr, socklen_t};
use shared_proto::outsource::ListenRequest;
use shared_proto::{Errno, ToGuest, ToHost};

use outsock_fdpass::recvmsg_fd;
use shared_proto::{decode_exact, to_vec};

use crate::fd::{close_opt, install_accepted, replace_fd, set_errno, unexpected, Flags};
use crate::keeper::{self, seqpacket_pair};
use crate::real;
use crate::table::{self, Entry, Kind};
use crate::transport::{last_errno, Stream};

/// Room for one packet from host-server; an `Inbound` frame is a few dozen bytes, and a larger
/// packet is truncated by the kernel and then fails to decode (EPROTO), never split.
const MAX_PACKET: usize = 512;

/// `listen(2)` in process mode: the program's `fd` becomes the listener's packet channel, made
/// here; its host's end goes with the request, then to the keeper (`OUTSOCK_KEEPER`, set by
/// `outsock run`'s supervisor), which registers it again whenever host-server comes back (see
/// the supervisor's `keeper`). Where there is no keeper (`--shim-only`, a preload by hand) a
/// hidden copy of the host's end stays in this process instead (close-on-exec, closed with
/// the listener's last copy, spared by the program's close_range/closefrom): the listener is
/// not taken back after a restart, but it never reads EOF and spins either.
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
        channel: true,
    };
    let Ok(bytes) = to_vec(&ToHost::Listen(req)) else {
        return set_errno(Errno::EINVAL);
    };
    let (ours, host_end) = match seqpacket_pair() {
        Ok(p) => p,
        Err(e) => return set_errno(e),
    };
    let answer = stream
        .send_with_fd(&bytes, host_end.0)
        .and_then(|()| stream.recv());
    match answer {
        Ok((ToGuest::Listening { local }, None)) => {
            // The request's stream closes here; host-server holds it until the listener ends.
            let handed = keeper::give(&bytes, &host_end);
            let rc = installed(fd, ours.into_raw(), entry, local, flags);
            if rc == 0 && !handed {
                table::set_kept(fd, host_end.into_raw());
            }
            rc
        }
        other => unexpected(&other),
    }
}

/// Closes `host_end`, a closed listener's hidden host end, if no copy of the listener is left
/// anywhere (POLLHUP: every copy of the program's end is closed); one a child still holds
/// stays open, unnamed, until this process exits or execs.
pub(crate) fn close_hidden_if_done(host_end: c_int) {
    let mut p = libc::pollfd {
        fd: host_end,
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid pollfd; poll does not block with a zero timeout.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    if n > 0 && p.revents & libc::POLLHUP != 0 {
        // SAFETY: the hidden fd is ours.
        unsafe { real::close(host_end) };
    }
}

/// Puts the packet channel `packets` in place of the program's listening `fd`.
fn installed(fd: c_int, packets: c_int, entry: Entry, local: SocketAddrV4, flags: &Flags) -> c_int {
    if let Err(e) = replace_fd(packets, fd, flags) {
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

/// `listen(2)` again on a process-mode listener: natively this changes the backlog, so ask
/// host-server to (one `Listen` packet on the channel) and succeed.
pub(crate) fn relisten(fd: c_int, addr: SocketAddrV4, backlog: c_int) -> c_int {
    let req = ListenRequest {
        addr,
        backlog: u32::try_from(backlog.max(0)).unwrap_or(0),
        pass_fd: true,
        vsock_port: 0,
        channel: false,
    };
    let Ok(bytes) = to_vec(&ToHost::Listen(req)) else {
        return set_errno(Errno::EINVAL);
    };
    // SAFETY: one whole packet from a valid buffer; never blocks, never raises SIGPIPE.
    let n = unsafe {
        real::sendto(
            fd,
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            std::ptr::null(),
            0,
        )
    };
    // A full channel only means connections are waiting; the backlog is a hint either way.
    if n < 0 && last_errno() != Errno::EAGAIN {
        return set_errno(last_errno());
    }
    0
}

/// `accept4(2)` on a process-mode listener: the next packet, its `Inbound` frame and socket.
///
/// # Safety
/// `addr`/`len` follow accept4(2)'s contract.
pub(crate) unsafe fn accept4(
    fd: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
    flags: c_int,
) -> c_int {
    let mut buf = [0u8; MAX_PACKET];
    let mut passed = None;
    // One recvmsg: one whole packet or none (see the module docs). A connection waiting is
    // taken without asking whether the listener blocks; only when none is does its mode
    // decide between EAGAIN and waiting.
    let mut received = recvmsg_fd::<real::Real>(
        fd,
        &mut buf,
        libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT,
        &mut passed,
    );
    let empty = matches!(&received, Err(e) if e.raw_os_error() == Some(libc::EAGAIN));
    // SAFETY: F_GETFL query.
    if empty && unsafe { real::fcntl(fd, libc::F_GETFL, 0) } & libc::O_NONBLOCK == 0 {
        received = recvmsg_fd::<real::Real>(fd, &mut buf, libc::MSG_CMSG_CLOEXEC, &mut passed);
    }
    let got = match received {
        // host-server closed its end: the listener is gone.
        Ok(0) => Err(Errno::ECONNABORTED),
        Ok(n) => decode_exact::<ToGuest>(&buf[..n])
            .map(|msg| (msg, passed))
            .map_err(|_| Errno::EPROTO),
        Err(e) => Err(Errno(
            u16::try_from(e.raw_os_error().unwrap_or(libc::EIO)).unwrap_or(5),
        )),
    };
    match got {
        Ok((ToGuest::Inbound { peer, local }, Some(conn))) => {
            // SAFETY: the fd just received is ours; the caller's out pointers.
            unsafe { install_accepted(conn, flags, peer, local, addr, len) }
        }
        Err(e) => {
            close_opt(passed);
            set_errno(e)
        }
        other => unexpected(&other),
    }
}
