//! The libc calls fd passing makes, behind a trait, so that a library that interposes those very
//! calls (liboutsock) can supply the real ones instead of recursing into its own.

use libc::{c_int, msghdr};

/// `sendmsg(2)`, `recvmsg(2)` and `close(2)` as [`crate::sendmsg_fd`] and [`crate::recvmsg_fd`]
/// make them. The methods take no `self`: an implementation is a choice of functions, made at
/// compile time (`recvmsg_fd::<Libc>(…)`).
///
/// # Safety
/// Each method must behave as the libc function of the same name (the kernel's system call):
/// the buffers in `msg` are read or written only within the lengths it gives, `msg_controllen`
/// is set to what was written, and `close` closes exactly the descriptor named. The code in this
/// crate relies on that to stay inside its buffers.
pub unsafe trait Sys {
    /// `sendmsg(2)`.
    ///
    /// # Safety
    /// `msg` is a valid message header whose buffers are readable for the lengths given.
    unsafe fn sendmsg(fd: c_int, msg: *const msghdr, flags: c_int) -> isize;

    /// `recvmsg(2)`.
    ///
    /// # Safety
    /// `msg` is a valid message header whose buffers are writable for the lengths given.
    unsafe fn recvmsg(fd: c_int, msg: *mut msghdr, flags: c_int) -> isize;

    /// `close(2)`.
    ///
    /// # Safety
    /// `fd` is owned by the caller and not used after this call.
    unsafe fn close(fd: c_int) -> c_int;
}

/// libc's functions, linked as usual: right for every program that does not interpose them.
#[derive(Debug, Clone, Copy)]
pub struct Libc;

// SAFETY: these are libc's own functions of the same names.
unsafe impl Sys for Libc {
    unsafe fn sendmsg(fd: c_int, msg: *const msghdr, flags: c_int) -> isize {
        // SAFETY: forwarded from our caller, who upholds sendmsg(2)'s contract.
        unsafe { libc::sendmsg(fd, msg, flags) }
    }

    unsafe fn recvmsg(fd: c_int, msg: *mut msghdr, flags: c_int) -> isize {
        // SAFETY: forwarded from our caller, who upholds recvmsg(2)'s contract.
        unsafe { libc::recvmsg(fd, msg, flags) }
    }

    unsafe fn close(fd: c_int) -> c_int {
        // SAFETY: forwarded from our caller, who owns `fd`.
        unsafe { libc::close(fd) }
    }
}
