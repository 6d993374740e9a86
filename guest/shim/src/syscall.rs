//! `syscall(3)`: libc's generic system-call function, for programs that make a socket call
//! through it instead of through libc's function of that name. libuv (Debian bookworm's
//! libuv1 1.44, under BIND's `dig` among others) sends and receives UDP with
//! `syscall(__NR_sendmmsg, …)` and `syscall(__NR_recvmmsg, …)`: without this its DNS bytes
//! would be written raw onto a UDP association's framed channel. Every number of a call the
//! shim interposes by name (the socket calls, `close`, `close_range`, `dup*`, `fcntl`, `read`,
//! `write`) is dispatched to the shim's own implementation of it, with syscall(3)'s
//! convention for the result (-1 and `errno` on failure, which the shim's functions already
//! follow); every other number goes to libc's `syscall` with all six arguments.
//!
//! ABI: C declares `long syscall(long number, ...)`, and stable Rust cannot define a variadic
//! function. On x86-64 (System V) a caller of a variadic function passes its integer and
//! pointer arguments exactly as for a fixed signature — rdi, rsi, rdx, rcx, r8, r9, then the
//! stack — and only adds al (how many vector registers carry arguments, which a callee with a
//! fixed signature ignores). So a function of seven fixed `long` parameters reads what any
//! `syscall(n, …)` caller passed; arguments a caller did not pass are whatever their registers
//! held, which glibc's own syscall forwards to the kernel just the same. Hence x86-64 only: on
//! aarch64 (AAPCS64 on Linux also passes anonymous integer arguments in x0–x7, so the same
//! definition would likely work, but the system-call numbers differ and it is untested here)
//! `syscall` is left uninterposed, as before.
//!
//! The arguments are narrowed as the kernel narrows them: an `int` or `unsigned int` argument
//! is the low 32 bits of its register, a pointer or `size_t` the whole register.

#![cfg(target_arch = "x86_64")]

use libc::{c_int, c_long, c_uint, c_void, mmsghdr, msghdr, sockaddr, socklen_t, timespec};

use crate::real;
use crate::{closerange, interpose, udp};

/// `syscall(3)`: the shim's own call for the numbers it interposes, libc's otherwise.
///
/// # Safety
/// Called by C with syscall(2)'s contract for the number's system call (see the module's ABI
/// note for the signature).
#[no_mangle]
pub unsafe extern "C" fn syscall(
    n: c_long,
    a1: c_long,
    a2: c_long,
    a3: c_long,
    a4: c_long,
    a5: c_long,
    a6: c_long,
) -> c_long {
    // SAFETY: the caller's arguments for system call `n`.
    match unsafe { dispatch(n, [a1, a2, a3, a4, a5, a6]) } {
        Some(rc) => rc,
        // SAFETY: forwarded unchanged.
        None => unsafe { real::syscall(n, a1, a2, a3, a4, a5, a6) },
    }
}

/// Runs when the library is loaded (before the program's `main`): libc's `syscall` is looked
/// up then, never first inside a signal handler.
extern "C" fn at_load() {
    real::resolve_syscall();
}

#[used]
#[link_section = ".init_array"]
static AT_LOAD: extern "C" fn() = at_load;

/// The low 32 bits of an argument register, as the kernel reads an `int`.
#[allow(clippy::cast_possible_truncation)] // The truncation is the kernel's own.
fn int(a: c_long) -> c_int {
    a as c_int
}

/// The low 32 bits of an argument register, as the kernel reads an `unsigned int`.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // As the kernel reads it.
fn uint(a: c_long) -> c_uint {
    a as c_uint
}

/// A pointer argument.
fn ptr<T>(a: c_long) -> *mut T {
    a as usize as *mut T
}

/// A `size_t` argument.
#[allow(clippy::cast_sign_loss)] // The register's bits, as the kernel reads them.
fn size(a: c_long) -> usize {
    a as usize
}

/// System call `n` by the shim's own implementation, when it has one; `None` otherwise.
///
/// # Safety
/// `a` are the caller's arguments for system call `n`.
#[allow(clippy::too_many_lines)] // One arm per system call.
unsafe fn dispatch(n: c_long, a: [c_long; 6]) -> Option<c_long> {
    let [a1, a2, a3, a4, a5, a6] = a;
    // SAFETY: (every arm) the caller's arguments, narrowed as the kernel narrows them, passed
    // to the shim's function of the same contract.
    let rc = unsafe {
        match n {
            libc::SYS_socket => c_long::from(interpose::socket(int(a1), int(a2), int(a3))),
            libc::SYS_connect => {
                c_long::from(interpose::connect(int(a1), ptr::<sockaddr>(a2), uint(a3)))
            }
            libc::SYS_bind => c_long::from(interpose::bind(int(a1), ptr(a2), uint(a3))),
            libc::SYS_listen => c_long::from(interpose::listen(int(a1), int(a2))),
            libc::SYS_accept => c_long::from(interpose::accept4(
                int(a1),
                ptr::<sockaddr>(a2),
                ptr::<socklen_t>(a3),
                0,
            )),
            libc::SYS_accept4 => {
                c_long::from(interpose::accept4(int(a1), ptr(a2), ptr(a3), int(a4)))
            }
            libc::SYS_getsockname => {
                c_long::from(interpose::getsockname(int(a1), ptr(a2), ptr(a3)))
            }
            libc::SYS_getpeername => {
                c_long::from(interpose::getpeername(int(a1), ptr(a2), ptr(a3)))
            }
            libc::SYS_getsockopt => c_long::from(interpose::getsockopt(
                int(a1),
                int(a2),
                int(a3),
                ptr::<c_void>(a4),
                ptr(a5),
            )),
            libc::SYS_setsockopt => c_long::from(interpose::setsockopt(
                int(a1),
                int(a2),
                int(a3),
                ptr::<c_void>(a4),
                uint(a5),
            )),
            libc::SYS_shutdown => c_long::from(udp::shutdown(int(a1), int(a2))),
            libc::SYS_close => c_long::from(interpose::close(int(a1))),
            libc::SYS_close_range => {
                c_long::from(closerange::close_range(uint(a1), uint(a2), int(a3)))
            }
            libc::SYS_dup => c_long::from(interpose::dup(int(a1))),
            libc::SYS_dup2 => c_long::from(interpose::dup2(int(a1), int(a2))),
            libc::SYS_dup3 => c_long::from(interpose::dup3(int(a1), int(a2), int(a3))),
            libc::SYS_fcntl => c_long::from(interpose::fcntl(int(a1), int(a2), size(a3))),
            libc::SYS_read => udp::read(int(a1), ptr(a2), size(a3)) as c_long,
            libc::SYS_write => udp::write(int(a1), ptr::<c_void>(a2), size(a3)) as c_long,
            libc::SYS_sendto => udp::sendto(
                int(a1),
                ptr::<c_void>(a2),
                size(a3),
                int(a4),
                ptr::<sockaddr>(a5),
                uint(a6),
            ) as c_long,
            libc::SYS_recvfrom => {
                udp::recvfrom(int(a1), ptr(a2), size(a3), int(a4), ptr(a5), ptr(a6)) as c_long
            }
            libc::SYS_sendmsg => udp::sendmsg(int(a1), ptr::<msghdr>(a2), int(a3)) as c_long,
            libc::SYS_recvmsg => udp::recvmsg(int(a1), ptr::<msghdr>(a2), int(a3)) as c_long,
            libc::SYS_sendmmsg => c_long::from(udp::sendmmsg(
                int(a1),
                ptr::<mmsghdr>(a2),
                uint(a3),
                int(a4),
            )),
            libc::SYS_recvmmsg => c_long::from(udp::recvmmsg(
                int(a1),
                ptr::<mmsghdr>(a2),
                uint(a3),
                int(a4),
                ptr::<timespec>(a5),
            )),
            _ => return None,
        }
    };
    Some(rc)
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::fd::AsRawFd;

    use super::*;
    use crate::table::{self, Entry, Kind};

    /// The thread's errno.
    fn errno() -> c_int {
        std::io::Error::last_os_error().raw_os_error().unwrap()
    }

    #[test]
    fn numbers_not_ours_pass_through_with_all_six_arguments() {
        // SAFETY: getpid takes no arguments.
        let pid = unsafe { syscall(libc::SYS_getpid, 0, 0, 0, 0, 0, 0) };
        assert_eq!(pid, c_long::from(std::process::id() as c_int));
        // mmap uses all six: the file's second page, read back, proves the fd (5th) and the
        // offset (6th) arrived.
        let mut f = tempfile_in_tmp();
        let mut data = vec![0u8; 8192];
        data[4096..].fill(0xab);
        f.write_all(&data).unwrap();
        // SAFETY: a fresh private read-only mapping of a page of our own file.
        let p = unsafe {
            syscall(
                libc::SYS_mmap,
                0,
                4096,
                c_long::from(libc::PROT_READ),
                c_long::from(libc::MAP_PRIVATE),
                c_long::from(f.as_raw_fd()),
                4096,
            )
        };
        assert!(p > 0, "mmap failed: {}", errno());
        // SAFETY: the mapping just made, one page long.
        let page = unsafe { std::slice::from_raw_parts(p as usize as *const u8, 4096) };
        assert!(page.iter().all(|&b| b == 0xab));
        // SAFETY: unmapping the mapping made above.
        assert_eq!(unsafe { syscall(libc::SYS_munmap, p, 4096, 0, 0, 0, 0) }, 0);
        // A failure is -1 and errno, as from syscall(3).
        // SAFETY: F_GETFD on an fd that cannot be open.
        let rc = unsafe { syscall(libc::SYS_fcntl, -1, c_long::from(libc::F_GETFD), 0, 0, 0, 0) };
        assert_eq!((rc, errno()), (-1, libc::EBADF));
    }

    #[test]
    fn socket_numbers_reach_the_shim() {
        // socket: the shim records an AF_INET datagram socket.
        // SAFETY: plain socket(2) arguments.
        let fd = unsafe {
            syscall(
                libc::SYS_socket,
                c_long::from(libc::AF_INET),
                c_long::from(libc::SOCK_DGRAM),
                0,
                0,
                0,
                0,
            )
        };
        assert!(fd >= 0, "socket failed: {}", errno());
        let fd = int(fd);
        assert_eq!(table::get(fd).kind, Kind::InetDgram);
        // getsockopt: a Unix socket standing for a UDP association answers as AF_INET, which
        // only the shim's getsockopt does.
        let mut pair = [0; 2];
        // SAFETY: socketpair into a valid array.
        let rc =
            unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET, 0, pair.as_mut_ptr()) };
        assert_eq!(rc, 0);
        table::set(pair[0], Entry::new(Kind::Udp));
        let mut v: c_int = 0;
        let mut len = std::mem::size_of::<c_int>() as socklen_t;
        // SAFETY: an int and its length as the out arguments.
        let rc = unsafe {
            syscall(
                libc::SYS_getsockopt,
                c_long::from(pair[0]),
                c_long::from(libc::SOL_SOCKET),
                c_long::from(libc::SO_DOMAIN),
                std::ptr::from_mut(&mut v) as c_long,
                std::ptr::from_mut(&mut len) as c_long,
                0,
            )
        };
        assert_eq!((rc, v), (0, libc::AF_INET));
        // close: the shim forgets the fd.
        for f in [fd, pair[0], pair[1]] {
            // SAFETY: our own fds.
            let rc = unsafe { syscall(libc::SYS_close, c_long::from(f), 0, 0, 0, 0, 0) };
            assert_eq!(rc, 0);
        }
        assert_eq!(table::get(pair[0]).kind, Kind::Untracked);
        assert_eq!(table::get(fd).kind, Kind::Untracked);
    }

    /// An unlinked temporary file.
    fn tempfile_in_tmp() -> std::fs::File {
        let path = std::env::temp_dir().join(format!(
            "outsock-syscall-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        f
    }
}
