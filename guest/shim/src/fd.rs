//! Plain helpers on the program's descriptors and errno, shared by every outsourcing call:
//! failing with an errno, carrying the program's flags over a `dup3`, making an accepted
//! connection the program's, and disposing of answers (and descriptors) a call did not want.

use std::net::SocketAddrV4;

use libc::{c_int, sockaddr, socklen_t};
use shared_proto::{Errno, ToGuest};

use crate::real;
use crate::sockaddr::write_v4;
use crate::table::{self, Entry, Kind};

/// Sets this thread's errno to `e`; returns -1, what a failing call returns to C.
pub(crate) fn set_errno(e: Errno) -> c_int {
    // SAFETY: __errno_location returns this thread's errno slot.
    unsafe { *libc::__errno_location() = c_int::from(e.0) };
    -1
}

/// [`set_errno`] for the calls that return a byte count.
pub(crate) fn errno_isize(e: Errno) -> isize {
    // SAFETY: this thread's errno slot.
    unsafe { *libc::__errno_location() = c_int::from(e.0) };
    -1
}

/// The program's view of `fd`'s status flags and close-on-exec bit, to carry over a dup3.
pub(crate) struct Flags {
    pub(crate) status: c_int,
    cloexec: bool,
}

/// The program's [`Flags`] on `fd`, read before its descriptor is replaced.
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
    put_in_place(new, fd, flags)?;
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

/// [`replace_fd`] for a `new` that already has the program's status flags: only its
/// close-on-exec bit is the program's choice.
pub(crate) fn put_in_place(new: c_int, fd: c_int, flags: &Flags) -> Result<(), Errno> {
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
    Ok(())
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

/// Makes `conn`, an accepted connection (close-on-exec and blocking, as host-server passes
/// them and a VM listener's accept4 makes them), the program's: close-on-exec and non-blocking
/// as accept4's `flags` ask (a system call only for what differs), the peer written to the
/// caller's `addr`, the AF_INET view recorded.
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
        // A socket's status flags are O_RDWR and O_NONBLOCK alone; `conn` came blocking.
        if flags & libc::SOCK_NONBLOCK != 0 {
            #[allow(clippy::cast_sign_loss)] // Two positive flags.
            real::fcntl(
                conn,
                libc::F_SETFL,
                (libc::O_RDWR | libc::O_NONBLOCK) as usize,
            );
        }
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
            nameserver: 0,
        },
    );
    conn
}

/// Closes a descriptor that came with an answer and is not used.
pub(crate) fn close_opt(fd: Option<c_int>) {
    if let Some(fd) = fd {
        // SAFETY: a passed fd we do not use.
        unsafe { real::close(fd) };
    }
}
