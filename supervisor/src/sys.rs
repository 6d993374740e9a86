//! Every system call and ioctl of the supervisor that Rust's standard library does not wrap:
//! installing the filter in the child (`spawn`), the notification ioctls (`Listener`), the
//! target's memory (`process_vm_readv`/`process_vm_writev`) and descriptors (`pidfd_open`,
//! `pidfd_getfd`), and a few socket calls on descriptors the supervisor holds.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};

use libc::c_int;

fn cvt(rc: c_int) -> io::Result<c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Whether this kernel offers `SECCOMP_RET_USER_NOTIF` (Linux 5.0; ADDFD needs 5.9, SETFD 5.14).
#[must_use]
pub fn user_notif_available() -> bool {
    let action: u32 = libc::SECCOMP_RET_USER_NOTIF;
    // SAFETY: SECCOMP_GET_ACTION_AVAIL reads one u32 at the pointer, which is valid.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_GET_ACTION_AVAIL,
            0,
            std::ptr::from_ref(&action),
        )
    };
    rc == 0
}

/// Whether this process may install a filter with a listener: tried on a throwaway thread
/// (a filter installed without TSYNC binds only the thread that installs it, and ends with it),
/// with an allow-everything filter. Fails where a filter we run under already has a listener
/// (EBUSY: a supervised program running `outsock run` again) or forbids `seccomp` (a
/// container's profile).
#[must_use]
pub fn listener_installable() -> bool {
    std::thread::spawn(|| {
        let allow = [libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ALLOW,
        }];
        let prog = libc::sock_fprog {
            len: 1,
            filter: allow.as_ptr().cast_mut(),
        };
        // SAFETY: prctl with integer arguments; no_new_privs binds this thread only.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return false;
        }
        let Ok(fd) = install_with_listener(&prog) else {
            return false;
        };
        // SAFETY: the listener just returned to us, closed once.
        unsafe {
            libc::close(fd);
        }
        true
    })
    .join()
    .unwrap_or(false)
}

/// Installs `prog` on the calling thread with `SECCOMP_FILTER_FLAG_NEW_LISTENER`; the
/// listener's descriptor. Async-signal-safe (one system call): used between fork and exec too.
fn install_with_listener(prog: &libc::sock_fprog) -> io::Result<RawFd> {
    // SAFETY: `prog` points at valid instructions that live for the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::SECCOMP_FILTER_FLAG_NEW_LISTENER,
            std::ptr::from_ref(prog),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::cast_possible_truncation)] // A descriptor.
    Ok(fd as RawFd)
}

/// Spawns `cmd` under `filter`: the child asks for SIGKILL when the spawning thread dies
/// (`PR_SET_PDEATHSIG`), sets `PR_SET_NO_NEW_PRIVS` (unless root), installs
/// the filter with `SECCOMP_FILTER_FLAG_NEW_LISTENER` and passes the listener to us over a
/// socketpair before it execs. Returns the child and the listener.
///
/// # Errors
/// When the socketpair, the spawn (the filter included) or the hand-over fails.
pub fn spawn(cmd: &mut Command, filter: Vec<libc::sock_filter>) -> io::Result<(Child, OwnedFd)> {
    let (ours, theirs) = UnixStream::pair()?;
    let theirs_fd = theirs.as_raw_fd();
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let len =
        u16::try_from(filter.len()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let stops = stop_set();
    let hook = move || -> io::Result<()> {
        // Between fork and exec: only async-signal-safe calls, no allocation. The program
        // starts with the stop signals the supervisor blocks unblocked.
        // SAFETY: a valid set; the old mask is not wanted.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &stops, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        // The program dies with the supervisor (SIGKILL included), as it would with
        // `outsock run` exec'ing it: left alone its notified calls could only fail.
        // SAFETY: prctl with integer arguments.
        cvt(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) })?;
        if !root {
            // SAFETY: prctl with integer arguments.
            cvt(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })?;
        }
        let prog = libc::sock_fprog {
            len,
            filter: filter.as_ptr().cast_mut(),
        };
        let listener = install_with_listener(&prog)?;
        let sent = outsock_fdpass::sendmsg_fd::<outsock_fdpass::Libc>(theirs_fd, b"L", listener, 0);
        // SAFETY: our own descriptor, closed once; the program must not inherit it.
        unsafe { libc::close(listener) };
        sent.map(drop)
    };
    // SAFETY: the hook makes only async-signal-safe calls (pthread_sigmask, prctl, seccomp,
    // sendmsg, close) and allocates nothing.
    unsafe { cmd.pre_exec(hook) };
    let child = cmd.spawn()?;
    drop(theirs);
    let mut buf = [0u8; 1];
    let (_, fd) = outsock_fdpass::recv_with_fd(ours.as_raw_fd(), &mut buf)?;
    let fd = fd.ok_or_else(|| io::Error::other("the child passed no seccomp listener"))?;
    Ok((child, fd))
}

/// One notification: which call, from which thread, with which arguments.
#[derive(Debug, Clone, Copy)]
pub struct Notif {
    pub id: u64,
    /// The calling thread's id (in our pid namespace).
    pub pid: u32,
    pub nr: i64,
    pub args: [u64; 6],
}

/// What [`Listener::wait`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ready {
    Notif,
    Exited,
    None,
}

/// A pidfd of process `pid` (readable once it has exited).
///
/// # Errors
/// pidfd_open's error.
pub fn pidfd(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open with integer arguments; the result is a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::cast_possible_truncation)] // A descriptor.
    // SAFETY: a descriptor just returned to us, owned from here.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP` (not in the libc crate).
const SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP: libc::c_ulong = 1;

/// The listener of the program's filter.
#[derive(Debug)]
pub struct Listener {
    fd: OwnedFd,
}

impl Listener {
    #[must_use]
    pub fn new(fd: OwnedFd) -> Self {
        Self { fd }
    }

    /// Asks for synchronous wake-ups (`SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP`, Linux 6.6): the
    /// supervisor is woken on the notifying thread's CPU and the program on ours when
    /// answered, a direct hand-over instead of a wake-up of another (perhaps idle) CPU. Older
    /// kernels refuse it (EINVAL); the round trip is then the scheduler's.
    pub fn sync_wake_up(&self) -> bool {
        // SAFETY: NOTIF_SET_FLAGS takes the flags as its integer argument.
        let rc = unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_SET_FLAGS,
                SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP,
            )
        };
        rc == 0
    }

    /// Waits for a notification or for `child` (a pidfd, while it is given) to exit,
    /// whichever comes first: `Ok(Ready::Notif)` one is ready, `Ok(Ready::Exited)` the child
    /// exited, `Ok(Ready::None)` interrupted, `Err` the listener is gone (POLLHUP: no task uses
    /// the filter any more, which needs every one of them reaped).
    ///
    /// # Errors
    /// When every task under the filter has exited, or poll fails.
    pub fn wait(&self, child: Option<&OwnedFd>) -> io::Result<Ready> {
        let mut pfds = [
            libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: child.map_or(-1, AsRawFd::as_raw_fd),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfds (a negative fd is ignored by poll).
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(Ready::None)
            } else {
                Err(e)
            };
        }
        if pfds[1].revents != 0 {
            return Ok(Ready::Exited);
        }
        if pfds[0].revents & libc::POLLIN != 0 {
            return Ok(Ready::Notif);
        }
        if pfds[0].revents & (libc::POLLHUP | libc::POLLERR) != 0 {
            return Err(io::Error::from_raw_os_error(libc::EPIPE));
        }
        Ok(Ready::None)
    }

    /// Receives one notification and the architecture (`AUDIT_ARCH_*`) of its call (ENOENT:
    /// its caller died before we took it).
    ///
    /// # Errors
    /// The ioctl's error.
    pub fn recv_arch(&self) -> io::Result<(Notif, u32)> {
        // SAFETY: seccomp_notif is plain data; the kernel wants it zeroed.
        let mut n: libc::seccomp_notif = unsafe { std::mem::zeroed() };
        // SAFETY: NOTIF_RECV writes one seccomp_notif to a valid pointer.
        cvt(unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_RECV,
                std::ptr::from_mut(&mut n),
            )
        })?;
        let notif = Notif {
            id: n.id,
            pid: n.pid,
            nr: i64::from(n.data.nr),
            args: n.data.args,
        };
        Ok((notif, n.data.arch))
    }

    /// Whether the notification is still alive (its caller still waits in the call).
    #[must_use]
    pub fn valid(&self, id: u64) -> bool {
        let mut id = id;
        // SAFETY: NOTIF_ID_VALID reads one u64 at a valid pointer.
        let rc = unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_ID_VALID,
                std::ptr::from_mut(&mut id),
            )
        };
        rc == 0
    }

    fn send(&self, id: u64, val: i64, error: i32, flags: u32) -> io::Result<()> {
        let mut r = libc::seccomp_notif_resp {
            id,
            val,
            error,
            flags,
        };
        // SAFETY: NOTIF_SEND reads one seccomp_notif_resp at a valid pointer.
        cvt(unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_SEND,
                std::ptr::from_mut(&mut r),
            )
        })
        .map(drop)
    }

    /// Lets the call run in the kernel as the program made it.
    ///
    /// # Errors
    /// ENOENT when the caller is gone.
    #[allow(clippy::cast_possible_truncation)] // The flag is 1.
    pub fn allow(&self, id: u64) -> io::Result<()> {
        self.send(id, 0, 0, libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32)
    }

    /// The call returns `val`.
    ///
    /// # Errors
    /// ENOENT when the caller is gone.
    pub fn answer(&self, id: u64, val: i64) -> io::Result<()> {
        self.send(id, val, 0, 0)
    }

    /// The call fails with `errno`.
    ///
    /// # Errors
    /// ENOENT when the caller is gone.
    pub fn fail(&self, id: u64, errno: i32) -> io::Result<()> {
        self.send(id, 0, -errno, 0)
    }

    /// Installs `src` (ours) as the caller's descriptor `target` (replacing what is there, as
    /// dup2 does), close-on-exec if `cloexec`.
    ///
    /// # Errors
    /// The ioctl's error (ENOENT when the caller is gone).
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    pub fn install(&self, id: u64, src: RawFd, target: RawFd, cloexec: bool) -> io::Result<()> {
        let mut a = libc::seccomp_notif_addfd {
            id,
            flags: libc::SECCOMP_ADDFD_FLAG_SETFD as u32,
            srcfd: src as u32,
            newfd: target as u32,
            newfd_flags: if cloexec { libc::O_CLOEXEC as u32 } else { 0 },
        };
        // SAFETY: NOTIF_ADDFD reads one seccomp_notif_addfd at a valid pointer.
        cvt(unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_ADDFD,
                std::ptr::from_mut(&mut a),
            )
        })
        .map(drop)
    }

    /// Adds `src` (ours) to the caller as a new descriptor, close-on-exec if `cloexec`, and
    /// makes its number the call's result, atomically (`SECCOMP_ADDFD_FLAG_SEND`, Linux 5.14):
    /// the call is answered by this. Returns the number.
    ///
    /// # Errors
    /// The ioctl's error (ENOENT when the caller is gone; then nothing was added).
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    pub fn add_fd_answer(&self, id: u64, src: RawFd, cloexec: bool) -> io::Result<RawFd> {
        let mut a = libc::seccomp_notif_addfd {
            id,
            flags: libc::SECCOMP_ADDFD_FLAG_SEND as u32,
            srcfd: src as u32,
            newfd: 0,
            newfd_flags: if cloexec { libc::O_CLOEXEC as u32 } else { 0 },
        };
        // SAFETY: NOTIF_ADDFD reads one seccomp_notif_addfd at a valid pointer.
        cvt(unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_ADDFD,
                std::ptr::from_mut(&mut a),
            )
        })
    }
}

/// Reads `len` bytes at `addr` in thread `pid`'s memory.
///
/// # Errors
/// EFAULT for a short read; process_vm_readv's error otherwise.
pub fn read_mem(pid: u32, addr: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    read_into(pid, addr, &mut buf)?;
    Ok(buf)
}

/// Fills `buf` from `addr` in thread `pid`'s memory (no allocation: the fast path's read).
///
/// # Errors
/// EFAULT for a short read; process_vm_readv's error otherwise.
pub fn read_into(pid: u32, addr: u64, buf: &mut [u8]) -> io::Result<()> {
    let len = buf.len();
    if len == 0 {
        return Ok(());
    }
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: len,
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: len,
    };
    #[allow(clippy::cast_possible_wrap)] // Thread ids fit pid_t.
    // SAFETY: `local` covers `buf`; the remote side is checked by the kernel.
    let n = unsafe { libc::process_vm_readv(pid as libc::pid_t, &local, 1, &remote, 1, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n.unsigned_abs() != len {
        return Err(io::Error::from_raw_os_error(libc::EFAULT));
    }
    Ok(())
}

/// Writes `data` at `addr` in thread `pid`'s memory.
///
/// # Errors
/// EFAULT for a short write; process_vm_writev's error otherwise.
pub fn write_mem(pid: u32, addr: u64, data: &[u8]) -> io::Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    let local = libc::iovec {
        iov_base: data.as_ptr().cast_mut().cast(),
        iov_len: data.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: data.len(),
    };
    #[allow(clippy::cast_possible_wrap)] // Thread ids fit pid_t.
    // SAFETY: `local` covers `data`, only read; the remote side is checked by the kernel.
    let n = unsafe { libc::process_vm_writev(pid as libc::pid_t, &local, 1, &remote, 1, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n.unsigned_abs() != data.len() {
        return Err(io::Error::from_raw_os_error(libc::EFAULT));
    }
    Ok(())
}

/// `PIDFD_THREAD` (Linux 6.9): a pidfd for any thread, not only a thread-group leader.
const PIDFD_THREAD: libc::c_uint = libc::O_EXCL as libc::c_uint;

/// A copy of descriptor `fd` of thread `pid` (the same open file), close-on-exec.
///
/// # Errors
/// pidfd_open's or pidfd_getfd's error (EBADF: no such descriptor).
pub fn take_fd(pid: u32, fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open with integer arguments; the result is a new descriptor or -1.
    let mut pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, PIDFD_THREAD) };
    if pidfd < 0 {
        // Older kernels: the thread-group leader's pidfd (the descriptor table is shared).
        let tgid = thread_group(pid)?;
        // SAFETY: as above.
        pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, tgid, 0) };
        if pidfd < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    #[allow(clippy::cast_possible_truncation)] // A descriptor.
    // SAFETY: a descriptor just returned to us, owned from here.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) };
    // SAFETY: pidfd_getfd with integer arguments.
    let got = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if got < 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::cast_possible_truncation)] // A descriptor.
    // SAFETY: a descriptor just returned to us, owned from here.
    Ok(unsafe { OwnedFd::from_raw_fd(got as RawFd) })
}

fn thread_group(pid: u32) -> io::Result<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| io::Error::from_raw_os_error(libc::ESRCH))
}

/// The identity of the file behind `fd`: (device, inode).
///
/// # Errors
/// fstat's error.
pub fn identity(fd: RawFd) -> io::Result<(u64, u64)> {
    // SAFETY: stat is plain data.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes one stat to a valid pointer.
    cvt(unsafe { libc::fstat(fd, &mut st) })?;
    Ok((st.st_dev, st.st_ino))
}

/// The identity of thread `pid`'s descriptor `fd` (device, inode of the open file), from
/// `/proc/PID/fd/FD` in one `stat`: cheaper than copying the descriptor when only its
/// identity is wanted (getsockname/getpeername).
///
/// # Errors
/// stat's error (ENOENT: no such descriptor or thread).
pub fn identity_of(pid: u32, fd: RawFd) -> io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(format!("/proc/{pid}/fd/{fd}"))?;
    Ok((m.dev(), m.ino()))
}

/// An int socket option of `fd`.
///
/// # Errors
/// getsockopt's error (ENOTSOCK for anything but a socket).
pub fn sockopt_int(fd: RawFd, level: c_int, name: c_int) -> io::Result<c_int> {
    let mut v: c_int = 0;
    #[allow(clippy::cast_possible_truncation)] // 4 bytes.
    let mut len = std::mem::size_of::<c_int>() as libc::socklen_t;
    // SAFETY: an int-sized buffer and its length.
    cvt(unsafe { libc::getsockopt(fd, level, name, std::ptr::from_mut(&mut v).cast(), &mut len) })?;
    Ok(v)
}

/// Socket option `level`/`name` of `fd`, up to `size` bytes (at most 32).
///
/// # Errors
/// getsockopt's error.
pub fn sockopt_bytes(fd: RawFd, level: c_int, name: c_int, size: usize) -> io::Result<Vec<u8>> {
    let mut buf = [0u8; 32];
    #[allow(clippy::cast_possible_truncation)] // At most 32.
    let mut len = size.min(buf.len()) as libc::socklen_t;
    // SAFETY: a 32-byte buffer and a length no larger.
    cvt(unsafe { libc::getsockopt(fd, level, name, buf.as_mut_ptr().cast(), &mut len) })?;
    Ok(buf[..len as usize].to_vec())
}

/// Sets socket option `level`/`name` of `fd` to `value`.
///
/// # Errors
/// setsockopt's error.
pub fn set_sockopt_bytes(fd: RawFd, level: c_int, name: c_int, value: &[u8]) -> io::Result<()> {
    #[allow(clippy::cast_possible_truncation)] // An option value, a few bytes.
    let len = value.len() as libc::socklen_t;
    // SAFETY: `value` is `len` readable bytes; the kernel copies them.
    cvt(unsafe { libc::setsockopt(fd, level, name, value.as_ptr().cast(), len) }).map(drop)
}

/// A new TCP socket of `domain` (close-on-exec), to read defaults from.
///
/// # Errors
/// socket's error.
pub fn tcp_socket(domain: c_int) -> io::Result<OwnedFd> {
    // SAFETY: socket with integer arguments; the result is a new descriptor or -1.
    let fd = cvt(unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: a descriptor just returned to us, owned from here.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The file status flags (`O_NONBLOCK`, …) of `fd`'s open file.
///
/// # Errors
/// fcntl's error.
pub fn status_flags(fd: RawFd) -> io::Result<c_int> {
    // SAFETY: F_GETFL takes no pointer.
    cvt(unsafe { libc::fcntl(fd, libc::F_GETFL) })
}

/// Makes `fd`'s open file non-blocking or blocking.
///
/// # Errors
/// fcntl's error.
pub fn set_nonblocking(fd: RawFd, on: bool) -> io::Result<()> {
    let was = status_flags(fd)?;
    let flags = if on {
        was | libc::O_NONBLOCK
    } else {
        was & !libc::O_NONBLOCK
    };
    if flags == was {
        return Ok(());
    }
    // SAFETY: F_SETFL with an int.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFL, flags) }).map(drop)
}

/// connect(2) on `fd` with the raw address bytes the program gave (already copied out of its
/// memory, so the kernel never reads them again); returns 0 or the errno.
#[must_use]
pub fn connect_raw(fd: RawFd, addr: &[u8]) -> i32 {
    with_raw_addr(addr, |a, len| {
        // SAFETY: `a` points at `len` readable bytes; the kernel copies them.
        unsafe { libc::connect(fd, a, len) }
    })
}

/// Runs `call` (connect or bind) on `addr`'s bytes: 0, or the errno it set (EINVAL for an
/// address longer than a socklen_t).
fn with_raw_addr(
    addr: &[u8],
    call: impl FnOnce(*const libc::sockaddr, libc::socklen_t) -> libc::c_int,
) -> i32 {
    let Ok(len) = libc::socklen_t::try_from(addr.len()) else {
        return libc::EINVAL;
    };
    if call(addr.as_ptr().cast(), len) == 0 {
        0
    } else {
        io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO)
    }
}

/// recv(2) of up to `len` bytes on `fd` with `flags`; the bytes or the errno.
///
/// # Errors
/// The errno.
pub fn recv(fd: RawFd, len: usize, flags: c_int) -> Result<(Vec<u8>, usize), i32> {
    let mut buf = vec![0u8; len];
    // SAFETY: `buf` has `len` writable bytes.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), len, flags) };
    if n < 0 {
        return Err(io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO));
    }
    let n = n.unsigned_abs();
    buf.truncate(n.min(len));
    Ok((buf, n))
}

/// An `AF_UNIX` `SOCK_SEQPACKET` pair, close-on-exec (the private network's helper channel;
/// host-server's side of a channel, in tests).
///
/// # Errors
/// socketpair's error.
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as c_int; 2];
    // SAFETY: socketpair writes two descriptors into a valid array.
    cvt(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    })?;
    // SAFETY: two descriptors just made, each owned once.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Waits until `fd` is writable (a connect under way has finished) and returns its
/// `SO_ERROR` (0: connected).
#[must_use]
pub fn wait_connected(fd: RawFd) -> i32 {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    loop {
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, -1) };
        if n > 0 {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return e.raw_os_error().unwrap_or(libc::EIO);
        }
    }
    sockopt_int(fd, libc::SOL_SOCKET, libc::SO_ERROR)
        .unwrap_or_else(|e| e.raw_os_error().unwrap_or(libc::EIO))
}

/// The signals [`forward_stop_signals`] waits for: SIGTERM and SIGHUP are passed on to the
/// program; SIGINT and SIGQUIT are only kept from stopping the supervisor (a terminal sends
/// them to the program's process group itself, so passing them on would deliver them twice).
const STOP_SIGNALS: [c_int; 4] = [libc::SIGTERM, libc::SIGHUP, libc::SIGINT, libc::SIGQUIT];

fn stop_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: a valid sigset_t and valid signal numbers.
    unsafe {
        libc::sigemptyset(&mut set);
        for s in STOP_SIGNALS {
            libc::sigaddset(&mut set, s);
        }
    }
    set
}

/// Blocks the stop signals in the calling thread (and so in every thread it starts later).
/// Call before starting any thread; [`spawn`] unblocks them in the program.
///
/// # Errors
/// pthread_sigmask's error.
pub fn block_stop_signals() -> io::Result<()> {
    let set = stop_set();
    // SAFETY: a valid set; the old mask is not wanted.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Waits for the stop signals [`block_stop_signals`] blocked, passing SIGTERM and SIGHUP on to
/// the process of `pidfd` (the program). Returns the first of them that arrives once that
/// process is gone (reaped while its descendants are still served); `None` if sigwait fails.
/// Run on a thread of its own.
#[must_use]
pub fn forward_stop_signals(pidfd: &OwnedFd) -> Option<c_int> {
    let set = stop_set();
    loop {
        let mut sig: c_int = 0;
        // SAFETY: a valid set and a valid out pointer.
        if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
            return None;
        }
        if sig == libc::SIGTERM || sig == libc::SIGHUP {
            // SAFETY: pidfd_send_signal with our pidfd (never a recycled pid), a valid signal
            // and no siginfo.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    pidfd.as_raw_fd(),
                    sig,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                )
            };
            if rc != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
                return Some(sig);
            }
        }
    }
}

/// sendto(2) of `data` on `fd` with `flags`, to the raw address bytes `addr` (already copied
/// out of the program's memory) or, when `addr` is empty, to the connected peer; the bytes sent
/// or the errno.
///
/// # Errors
/// The errno.
pub fn send_to(fd: RawFd, data: &[u8], flags: c_int, addr: &[u8]) -> Result<usize, i32> {
    let len = libc::socklen_t::try_from(addr.len()).map_err(|_| libc::EINVAL)?;
    let ptr = if addr.is_empty() {
        std::ptr::null()
    } else {
        addr.as_ptr().cast()
    };
    // SAFETY: `data` and `addr` are valid for reading for their lengths; the kernel copies them.
    let n = unsafe { libc::sendto(fd, data.as_ptr().cast(), data.len(), flags, ptr, len) };
    if n < 0 {
        return Err(io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO));
    }
    Ok(n.unsigned_abs())
}

/// Whether socket `fd` has no peer (getpeername fails with ENOTCONN).
#[must_use]
pub fn peer_unset(fd: RawFd) -> bool {
    // SAFETY: sockaddr_storage is plain data.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    #[allow(clippy::cast_possible_truncation)] // 128 bytes.
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: a buffer of `len` writable bytes and its length.
    let rc = unsafe { libc::getpeername(fd, std::ptr::from_mut(&mut ss).cast(), &mut len) };
    rc != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ENOTCONN)
}

/// bind(2) on `fd` with the raw address bytes the program gave (already copied out of its
/// memory); returns 0 or the errno.
#[must_use]
pub fn bind_raw(fd: RawFd, addr: &[u8]) -> i32 {
    with_raw_addr(addr, |a, len| {
        // SAFETY: `a` points at `len` readable bytes; the kernel copies them.
        unsafe { libc::bind(fd, a, len) }
    })
}

/// The local port of socket `fd` as the kernel has it (0: not bound).
///
/// # Errors
/// getsockname's error.
pub fn local_port(fd: RawFd) -> io::Result<u16> {
    // SAFETY: sockaddr_storage is plain data.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    #[allow(clippy::cast_possible_truncation)] // 128 bytes.
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: a buffer of `len` writable bytes and its length.
    cvt(unsafe { libc::getsockname(fd, std::ptr::from_mut(&mut ss).cast(), &mut len) })?;
    // Both sockaddr_in and sockaddr_in6 keep the port, big endian, at bytes 2..4.
    // SAFETY: sockaddr_storage is at least 4 bytes; any bytes are a valid u8 array.
    let head: [u8; 4] = unsafe { std::ptr::read(std::ptr::from_ref(&ss).cast()) };
    Ok(u16::from_be_bytes([head[2], head[3]]))
}

/// The local address of socket `fd` as the kernel has it: getsockname's bytes.
///
/// # Errors
/// getsockname's error.
pub fn local_addr(fd: RawFd) -> io::Result<Vec<u8>> {
    // SAFETY: sockaddr_storage is plain data.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::sockaddr_storage>();
    #[allow(clippy::cast_possible_truncation)] // 128 bytes.
    let mut len = size as libc::socklen_t;
    // SAFETY: a buffer of `len` writable bytes and its length.
    cvt(unsafe { libc::getsockname(fd, std::ptr::from_mut(&mut ss).cast(), &mut len) })?;
    // SAFETY: sockaddr_storage is `size` bytes of plain data.
    let bytes: [u8; 128] = unsafe { std::ptr::read(std::ptr::from_ref(&ss).cast()) };
    Ok(bytes[..(len as usize).min(size)].to_vec())
}

/// One non-blocking `recvmsg` of a whole packet on `fd` into `buf`, with the descriptor it
/// carries (close-on-exec): the byte count (0: the peer closed) and the descriptor.
///
/// # Errors
/// recvmsg's error (EAGAIN: no packet waits).
pub fn recv_packet(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, Option<OwnedFd>)> {
    let mut passed = None;
    let n = outsock_fdpass::recvmsg_fd::<outsock_fdpass::Libc>(
        fd,
        buf,
        libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT,
        &mut passed,
    )?;
    // SAFETY: a descriptor just received, owned from here (recvmsg_fd closed any other).
    Ok((n, passed.map(|p| unsafe { OwnedFd::from_raw_fd(p) })))
}

/// Waits up to `timeout_ms` for `fd` to be readable (or hung up); whether it is.
#[must_use]
pub fn wait_readable(fd: RawFd, timeout_ms: c_int) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    n > 0
}

/// Waits up to `timeout_ms` (-1: for ever) for `a` or `b` to be readable (or hung up):
/// whether each is.
#[must_use]
pub fn wait_readable_either(a: RawFd, b: RawFd, timeout_ms: c_int) -> (bool, bool) {
    let mut pfd = [a, b].map(|fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    });
    // SAFETY: two valid pollfds.
    let n = unsafe { libc::poll(pfd.as_mut_ptr(), 2, timeout_ms) };
    if n <= 0 {
        return (false, false);
    }
    (pfd[0].revents != 0, pfd[1].revents != 0)
}

/// A close-on-exec eventfd (a wake-up between threads).
///
/// # Errors
/// eventfd's error.
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain eventfd(2).
    let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) })?;
    // SAFETY: a descriptor just made, owned from here.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Gives vsock socket `fd` the receive buffer of `shared_proto::translate::VSOCK_BUFFER_SIZE`.
/// Best effort: a kernel that refuses keeps its default, which only costs speed.
fn size_vsock_buffer(fd: RawFd) {
    let size = shared_proto::translate::VSOCK_BUFFER_SIZE.to_ne_bytes();
    for (level, name) in shared_proto::translate::VSOCK_BUFFER_OPTIONS {
        let _ = set_sockopt_bytes(fd, level, name, &size);
    }
}

/// An `AF_VSOCK` stream connected to `cid:port`, close-on-exec, with the receive buffer of
/// `shared_proto::translate::VSOCK_BUFFER_SIZE` (the transport inside a VM).
///
/// # Errors
/// socket's or connect's error.
pub fn vsock_connect(cid: u32, port: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the result is a new descriptor or -1.
    let fd =
        cvt(unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: a descriptor just made, owned from here.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    size_vsock_buffer(fd.as_raw_fd());
    // SAFETY: sockaddr_vm is plain data; all-zero is a valid value.
    let mut a: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    #[allow(clippy::cast_possible_truncation)] // AF_VSOCK fits sa_family_t.
    {
        a.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    }
    a.svm_cid = cid;
    a.svm_port = port;
    #[allow(clippy::cast_possible_truncation)] // 16 bytes.
    let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    // SAFETY: a valid sockaddr_vm of `len` bytes; the kernel copies it.
    cvt(unsafe { libc::connect(fd.as_raw_fd(), std::ptr::from_ref(&a).cast(), len) })?;
    Ok(fd)
}

/// A vsock listener on a port the kernel picks (any CID), close-on-exec, listening with
/// `backlog` (at least 16); returns it and its port.
///
/// # Errors
/// socket's, bind's, listen's or getsockname's error.
pub fn vsock_listener(backlog: c_int) -> io::Result<(OwnedFd, u32)> {
    // SAFETY: plain socket(2) call; the result is a new descriptor or -1.
    let fd =
        cvt(unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: a descriptor just made, owned from here.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    size_vsock_buffer(fd.as_raw_fd());
    // SAFETY: sockaddr_vm is plain data; all-zero is a valid value.
    let mut a: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    #[allow(clippy::cast_possible_truncation)] // AF_VSOCK fits sa_family_t.
    {
        a.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    }
    a.svm_cid = libc::VMADDR_CID_ANY;
    a.svm_port = libc::VMADDR_PORT_ANY;
    #[allow(clippy::cast_possible_truncation)] // 16 bytes.
    let mut len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    // SAFETY: a valid sockaddr_vm of `len` bytes; the kernel copies it.
    cvt(unsafe { libc::bind(fd.as_raw_fd(), std::ptr::from_ref(&a).cast(), len) })?;
    // SAFETY: listen with integer arguments.
    cvt(unsafe { libc::listen(fd.as_raw_fd(), backlog.max(16)) })?;
    // SAFETY: a buffer of `len` writable bytes and its length.
    cvt(unsafe { libc::getsockname(fd.as_raw_fd(), std::ptr::from_mut(&mut a).cast(), &mut len) })?;
    Ok((fd, a.svm_port))
}

/// accept4(2) on listener `fd`, close-on-exec, if a connection waits now (`None`: none does).
/// The listener is the program's open file, whose blocking mode is the program's: a
/// connection another acceptor takes between the check and the accept makes a blocking
/// listener's accept wait for the next one.
///
/// # Errors
/// accept4's error.
pub fn accept_ready(fd: RawFd) -> io::Result<Option<OwnedFd>> {
    if !wait_readable(fd, 0) {
        return Ok(None);
    }
    // SAFETY: accept4 without an address; the result is a new descriptor or -1.
    let c = unsafe {
        libc::accept4(
            fd,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    };
    if c < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::WouldBlock {
            Ok(None)
        } else {
            Err(e)
        };
    }
    // SAFETY: a descriptor just accepted, owned from here.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(c) }))
}

/// An abstract `AF_UNIX` address (`name` without the leading NUL) and its length.
fn abstract_addr(name: &[u8]) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: sockaddr_un is plain data.
    let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if name.len() + 1 > a.sun_path.len() {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    #[allow(clippy::cast_possible_truncation)] // AF_UNIX is 1.
    {
        a.sun_family = libc::AF_UNIX as libc::sa_family_t;
    }
    for (d, s) in a.sun_path[1..].iter_mut().zip(name) {
        *d = libc::c_char::from_ne_bytes([*s]);
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + 1 + name.len();
    #[allow(clippy::cast_possible_truncation)] // At most 110.
    Ok((a, len as libc::socklen_t))
}

/// A close-on-exec `AF_UNIX` `SOCK_DGRAM` socket bound to the abstract address `name`.
///
/// # Errors
/// socket's or bind's error (EADDRINUSE: the name is taken).
pub fn unix_dgram_bound(name: &[u8]) -> io::Result<OwnedFd> {
    let (a, len) = abstract_addr(name)?;
    // SAFETY: plain socket(2).
    let fd = cvt(unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: a descriptor just made, owned from here.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: `a` is a valid sockaddr_un of `len` bytes.
    cvt(unsafe { libc::bind(fd.as_raw_fd(), std::ptr::from_ref(&a).cast(), len) })?;
    Ok(fd)
}

/// One datagram `data` from `fd` to the abstract address `name`, with `flags`; the bytes
/// sent or the errno (ECONNREFUSED: nobody holds the name any more).
///
/// # Errors
/// The errno.
pub fn send_to_name(fd: RawFd, data: &[u8], flags: c_int, name: &[u8]) -> Result<usize, i32> {
    let (a, len) = abstract_addr(name).map_err(|_| libc::ENAMETOOLONG)?;
    // SAFETY: `a` has `len` bytes of a valid address; the slice is valid for its length.
    let addr =
        unsafe { std::slice::from_raw_parts(std::ptr::from_ref(&a).cast::<u8>(), len as usize) };
    send_to(fd, data, flags, addr)
}

/// Whether some socket is bound to the abstract datagram address `name` (a connect to it
/// succeeds).
#[must_use]
pub fn name_bound(name: &[u8]) -> bool {
    let Ok((a, len)) = abstract_addr(name) else {
        return false;
    };
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        // Cannot tell: assume it is.
        return true;
    }
    // SAFETY: a descriptor just made, owned from here.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: `a` is a valid sockaddr_un of `len` bytes.
    let rc = unsafe { libc::connect(fd.as_raw_fd(), std::ptr::from_ref(&a).cast(), len) };
    rc == 0
        || !matches!(
            io::Error::last_os_error().raw_os_error(),
            Some(libc::ECONNREFUSED | libc::ENOENT)
        )
}

/// recvfrom(2) of up to `len` bytes on the `AF_UNIX` datagram socket `fd` with `flags`: the
/// bytes, the length the call returned (MSG_TRUNC: the datagram's) and the sender's abstract
/// name (without the leading NUL; empty for an unnamed sender); or the errno.
///
/// # Errors
/// The errno.
pub fn recv_from_name(
    fd: RawFd,
    len: usize,
    flags: c_int,
) -> Result<(Vec<u8>, usize, Vec<u8>), i32> {
    let mut buf = vec![0u8; len];
    // SAFETY: sockaddr_un is plain data.
    let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    #[allow(clippy::cast_possible_truncation)] // 110 bytes.
    let mut alen = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: `buf` has `len` writable bytes; `a` has `alen`.
    let n = unsafe {
        libc::recvfrom(
            fd,
            buf.as_mut_ptr().cast(),
            len,
            flags,
            std::ptr::from_mut(&mut a).cast(),
            &mut alen,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO));
    }
    let n = n.unsigned_abs();
    buf.truncate(n.min(len));
    let path_len = (alen as usize)
        .saturating_sub(std::mem::size_of::<libc::sa_family_t>())
        .min(a.sun_path.len());
    let name = if path_len > 1 && a.sun_path[0] == 0 {
        a.sun_path[1..path_len]
            .iter()
            .map(|c| c.to_ne_bytes()[0])
            .collect()
    } else {
        Vec::new()
    };
    Ok((buf, n, name))
}

/// The receive timeout (SO_RCVTIMEO) of socket `fd`; `None` when it has none.
#[must_use]
pub fn receive_timeout(fd: RawFd) -> Option<std::time::Duration> {
    // SAFETY: timeval is plain data.
    let mut tv: libc::timeval = unsafe { std::mem::zeroed() };
    #[allow(clippy::cast_possible_truncation)] // 16 bytes.
    let mut len = std::mem::size_of::<libc::timeval>() as libc::socklen_t;
    // SAFETY: a timeval of `len` writable bytes and its length.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            std::ptr::from_mut(&mut tv).cast(),
            &mut len,
        )
    };
    let (s, us) = (
        u64::try_from(tv.tv_sec).ok()?,
        u32::try_from(tv.tv_usec).ok()?,
    );
    (rc == 0 && (s > 0 || us > 0)).then(|| {
        std::time::Duration::from_secs(s) + std::time::Duration::from_micros(u64::from(us))
    })
}

/// Waits up to `timeout_ms` for `fd` to be writable.
pub fn wait_writable(fd: RawFd, timeout_ms: c_int) {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
}

/// shutdown(2) of both directions of socket `fd` (errors ignored: it may be closed already).
pub fn shutdown(fd: RawFd) {
    // SAFETY: shutdown of a descriptor the caller holds.
    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
}

/// connect(2) of the `AF_UNIX` datagram socket `fd` to the abstract address `name`; 0 or the
/// errno.
#[must_use]
pub fn connect_name(fd: RawFd, name: &[u8]) -> i32 {
    let Ok((a, len)) = abstract_addr(name) else {
        return libc::ENAMETOOLONG;
    };
    // SAFETY: `a` is a valid sockaddr_un of `len` bytes.
    if unsafe { libc::connect(fd, std::ptr::from_ref(&a).cast(), len) } == 0 {
        0
    } else {
        io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO)
    }
}

/// Copies the receive and send timeouts (SO_RCVTIMEO, SO_SNDTIMEO) of socket `from` to socket
/// `to` (errors ignored: a timeout is a hint the program set, not a condition of the call).
pub fn copy_timeouts(from: RawFd, to: RawFd) {
    for opt in [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO] {
        // SAFETY: timeval is plain data.
        let mut tv: libc::timeval = unsafe { std::mem::zeroed() };
        #[allow(clippy::cast_possible_truncation)] // 16 bytes.
        let mut len = std::mem::size_of::<libc::timeval>() as libc::socklen_t;
        // SAFETY: a timeval of `len` writable bytes and its length; then the same to set.
        unsafe {
            if libc::getsockopt(
                from,
                libc::SOL_SOCKET,
                opt,
                std::ptr::from_mut(&mut tv).cast(),
                &mut len,
            ) == 0
                && (tv.tv_sec != 0 || tv.tv_usec != 0)
            {
                libc::setsockopt(
                    to,
                    libc::SOL_SOCKET,
                    opt,
                    std::ptr::from_ref(&tv).cast(),
                    len,
                );
            }
        }
    }
}

/// A fresh AF_INET UDP socket, close-on-exec.
///
/// # Errors
/// socket's error.
pub fn udp_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2).
    let fd = cvt(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: a descriptor just made, owned from here.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The inodes of the sockets processes hold (`socket:[N]` links under `/proc/*/fd` that we may
/// read: the program runs as our user, or we are root), this process's own left out with
/// `skip_self`.
#[must_use]
pub fn socket_inodes(skip_self: bool) -> std::collections::HashSet<u64> {
    let me = std::process::id().to_string();
    let mut live = std::collections::HashSet::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return live;
    };
    for p in procs.filter_map(Result::ok) {
        let name = p.file_name().to_string_lossy().into_owned();
        if (skip_self && name == me) || !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.filter_map(Result::ok) {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            if let Some(ino) = target
                .to_string_lossy()
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

/// The private network's first address and prefix length (`198.18.0.0/16`, the benchmarking
/// range, which no nameserver or destination uses): each association's end is bound to one of
/// its addresses there.
pub const PNET_POOL: ([u8; 4], u8) = ([198, 18, 0, 0], 16);
/// The private network's TUN device.
const PNET_TUN: &[u8] = b"outsock0";

/// The private network (`pnet`): a helper process in a network namespace of its own (and a
/// user namespace, so that no privilege is needed), where `PNET_POOL` is local on `lo`, every
/// other IPv4 destination is routed to the TUN device `outsock0` (MTU 65535: no datagram is
/// fragmented), and ping sockets are allowed to the helper's group. It makes sockets there on
/// request ([`pnet_socket`]); the supervisor reads and writes the TUN device.
#[derive(Debug)]
pub struct Pnet {
    /// The request channel to the helper (one request at a time: held under a lock by the caller).
    pub chan: OwnedFd,
    /// The TUN device (IFF_NO_PI: one IPv4 packet a read or write).
    pub tun: OwnedFd,
}

/// Starts the private network's helper: fork, and in the child a new user + network namespace
/// (a network namespace alone where user namespaces are refused to root), set up as [`Pnet`]
/// says, which answers socket requests until the supervisor is gone (its channel closes; no
/// parent-death signal, which would come when the *thread* that forked ends, a worker's).
/// The child runs only system calls on memory prepared before the fork (no allocation, no
/// lock: the supervisor is multi-threaded).
///
/// # Errors
/// socketpair's or fork's error, or the child's (no TUN device, namespaces refused, …) as
/// its errno.
pub fn pnet_start() -> io::Result<Pnet> {
    let (ours, theirs) = seqpacket_pair()?;
    // Everything the child writes, prepared here.
    // SAFETY: plain getters.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let uid_map = format!("{uid} {uid} 1\n");
    let gid_map = format!("{gid} {gid} 1\n");
    let ping = format!("{gid} {gid}\n");
    // SAFETY: fork(2); the child below calls only async-signal-safe functions and never
    // returns.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        let fd = theirs.as_raw_fd();
        let status = pnet_child_setup(fd, uid_map.as_bytes(), gid_map.as_bytes(), ping.as_bytes());
        pnet_child_serve(fd, status);
    }
    drop(theirs);
    let mut buf = [0u8; 4];
    let got = if wait_readable(ours.as_raw_fd(), 5000) {
        recv_with_fd_blocking(ours.as_raw_fd(), &mut buf)
    } else {
        Err(io::Error::from_raw_os_error(libc::ETIMEDOUT))
    };
    let fail = |e: io::Error| {
        // SAFETY: the child is ours; it ends once its channel closes (or is killed now).
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
        Err(e)
    };
    match got {
        Ok((4, Some(tun))) if buf == [0; 4] => Ok(Pnet { chan: ours, tun }),
        Ok((4, _)) => fail(io::Error::from_raw_os_error(i32::from_ne_bytes(buf))),
        Ok(_) => fail(io::Error::from_raw_os_error(libc::EPROTO)),
        Err(e) => fail(e),
    }
}

/// A socket of `domain`, `ty`, `proto` made in the private network by its helper (`chan`,
/// used by one caller at a time), close-on-exec.
///
/// # Errors
/// The helper's socket(2) error, or EPIPE when it is gone.
pub fn pnet_socket(chan: &OwnedFd, domain: c_int, ty: c_int, proto: c_int) -> io::Result<OwnedFd> {
    let mut req = [0u8; 12];
    req[..4].copy_from_slice(&domain.to_ne_bytes());
    req[4..8].copy_from_slice(&ty.to_ne_bytes());
    req[8..].copy_from_slice(&proto.to_ne_bytes());
    send_to(chan.as_raw_fd(), &req, libc::MSG_NOSIGNAL, &[])
        .map_err(io::Error::from_raw_os_error)?;
    let mut buf = [0u8; 4];
    match recv_with_fd_blocking(chan.as_raw_fd(), &mut buf)? {
        (4, Some(s)) if buf == [0; 4] => Ok(s),
        (4, _) => Err(io::Error::from_raw_os_error(i32::from_ne_bytes(buf))),
        _ => Err(io::Error::from_raw_os_error(libc::EPIPE)),
    }
}

fn recv_with_fd_blocking(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, Option<OwnedFd>)> {
    let mut passed = None;
    let n = outsock_fdpass::recvmsg_fd::<outsock_fdpass::Libc>(
        fd,
        buf,
        libc::MSG_CMSG_CLOEXEC,
        &mut passed,
    )?;
    // SAFETY: a descriptor just received, owned from here.
    Ok((n, passed.map(|p| unsafe { OwnedFd::from_raw_fd(p) })))
}

/// The child's errno.
fn child_errno() -> c_int {
    // SAFETY: the thread's errno location.
    unsafe { *libc::__errno_location() }
}

/// Writes `data` to the file at `path`; the errno on failure.
fn child_write_file(path: &std::ffi::CStr, data: &[u8]) -> Result<(), c_int> {
    // SAFETY: `path` is NUL-terminated; `data` is valid for its length.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(child_errno());
        }
        let n = libc::write(fd, data.as_ptr().cast(), data.len());
        let e = child_errno();
        libc::close(fd);
        if n < 0 {
            return Err(e);
        }
    }
    Ok(())
}

/// An `ifreq` naming `name`.
fn child_ifreq(name: &[u8]) -> libc::ifreq {
    // SAFETY: ifreq is plain data.
    let mut r: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in r
        .ifr_name
        .iter_mut()
        .zip(name.iter().take(libc::IFNAMSIZ - 1))
    {
        *d = libc::c_char::from_ne_bytes([*s]);
    }
    r
}

/// Brings the interface `name` up (with `mtu`, if any) through the control socket `ctl`;
/// its index.
fn child_link_up(ctl: c_int, name: &[u8], mtu: Option<c_int>) -> Result<c_int, c_int> {
    let mut r = child_ifreq(name);
    // SAFETY: `r` is a valid ifreq for each ioctl, which reads or writes its union.
    unsafe {
        if let Some(m) = mtu {
            r.ifr_ifru.ifru_mtu = m;
            if libc::ioctl(ctl, libc::SIOCSIFMTU, &mut r) < 0 {
                return Err(child_errno());
            }
        }
        if libc::ioctl(ctl, libc::SIOCGIFFLAGS, &mut r) < 0 {
            return Err(child_errno());
        }
        #[allow(clippy::cast_possible_truncation)] // IFF_UP fits a short.
        {
            r.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        }
        if libc::ioctl(ctl, libc::SIOCSIFFLAGS, &mut r) < 0 {
            return Err(child_errno());
        }
        if libc::ioctl(ctl, libc::SIOCGIFINDEX, &mut r) < 0 {
            return Err(child_errno());
        }
        Ok(r.ifr_ifru.ifru_ifindex)
    }
}

/// Adds an IPv4 route through rtnetlink socket `nl`: to `dst`/`len` out of interface `oif`,
/// local (`RTN_LOCAL` in the local table) or not (a link route in the main table).
fn child_route(nl: c_int, dst: [u8; 4], len: u8, oif: c_int, local: bool) -> Result<(), c_int> {
    let mut m = [0u8; 44];
    let total: u32 = if len == 0 { 36 } else { 44 };
    m[..4].copy_from_slice(&total.to_ne_bytes());
    m[4..6].copy_from_slice(&libc::RTM_NEWROUTE.to_ne_bytes());
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // Small flags.
    let flags =
        (libc::NLM_F_REQUEST | libc::NLM_F_ACK | libc::NLM_F_CREATE | libc::NLM_F_EXCL) as u16;
    m[6..8].copy_from_slice(&flags.to_ne_bytes());
    m[8..12].copy_from_slice(&1u32.to_ne_bytes());
    // struct rtmsg
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // AF_INET.
    {
        m[16] = libc::AF_INET as u8;
    }
    m[17] = len;
    m[20] = if local {
        libc::RT_TABLE_LOCAL
    } else {
        libc::RT_TABLE_MAIN
    };
    m[21] = libc::RTPROT_BOOT;
    m[22] = if local {
        libc::RT_SCOPE_HOST
    } else {
        libc::RT_SCOPE_LINK
    };
    m[23] = if local {
        libc::RTN_LOCAL
    } else {
        libc::RTN_UNICAST
    };
    // RTA_OIF
    m[28..30].copy_from_slice(&8u16.to_ne_bytes());
    m[30..32].copy_from_slice(&libc::RTA_OIF.to_ne_bytes());
    m[32..36].copy_from_slice(&oif.to_ne_bytes());
    if len != 0 {
        m[36..38].copy_from_slice(&8u16.to_ne_bytes());
        m[38..40].copy_from_slice(&libc::RTA_DST.to_ne_bytes());
        m[40..44].copy_from_slice(&dst);
    }
    let mut ack = [0u8; 256];
    // SAFETY: `m` and `ack` are valid for their lengths.
    unsafe {
        if libc::send(nl, m.as_ptr().cast(), total as usize, 0) < 0 {
            return Err(child_errno());
        }
        let n = libc::recv(nl, ack.as_mut_ptr().cast(), ack.len(), 0);
        if n < 0 {
            return Err(child_errno());
        }
        if n < 20 {
            return Err(libc::EPROTO);
        }
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // NLMSG_ERROR = 2.
    let is_error = u16::from_ne_bytes([ack[4], ack[5]]) == libc::NLMSG_ERROR as u16;
    let code = i32::from_ne_bytes([ack[16], ack[17], ack[18], ack[19]]);
    if is_error && code != 0 {
        return Err(-code);
    }
    Ok(())
}

/// The child's set-up of the private network ([`pnet_start`]): the TUN device, or the errno.
fn pnet_child_setup(
    chan: c_int,
    uid_map: &[u8],
    gid_map: &[u8],
    ping: &[u8],
) -> Result<c_int, c_int> {
    // SAFETY: system calls on the child's own state; no memory but locals and prepared slices.
    unsafe {
        // Nothing of the supervisor's but the channel stays open here.
        #[allow(clippy::cast_sign_loss)] // A descriptor.
        let c = chan as libc::c_uint;
        if c > 0 {
            libc::close_range(0, c - 1, 0);
        }
        libc::close_range(c + 1, libc::c_uint::MAX, 0);
        if libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET) == 0 {
            child_write_file(c"/proc/self/setgroups", b"deny")?;
            child_write_file(c"/proc/self/uid_map", uid_map)?;
            child_write_file(c"/proc/self/gid_map", gid_map)?;
        } else if libc::unshare(libc::CLONE_NEWNET) != 0 {
            return Err(child_errno());
        }
        // Ping sockets for the helper's group (it alone makes sockets here).
        child_write_file(c"/proc/sys/net/ipv4/ping_group_range", ping)?;
        let ctl = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if ctl < 0 {
            return Err(child_errno());
        }
        let lo = child_link_up(ctl, b"lo", None)?;
        let tun = libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        if tun < 0 {
            return Err(child_errno());
        }
        let mut r = child_ifreq(PNET_TUN);
        #[allow(clippy::cast_possible_truncation)] // Both fit a short.
        {
            r.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
        }
        if libc::ioctl(tun, libc::TUNSETIFF, &mut r) < 0 {
            return Err(child_errno());
        }
        let oif = child_link_up(ctl, PNET_TUN, Some(65535))?;
        let nl = libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        );
        if nl < 0 {
            return Err(child_errno());
        }
        child_route(nl, PNET_POOL.0, PNET_POOL.1, lo, true)?;
        child_route(nl, [0; 4], 0, oif, false)?;
        libc::close(nl);
        libc::close(ctl);
        Ok(tun)
    }
}

/// The child's life after set-up: reports `status` (the TUN device passed, or the errno), then
/// makes a socket for each 12-byte request until the channel closes.
fn pnet_child_serve(chan: c_int, status: Result<c_int, c_int>) -> ! {
    type Fdpass = outsock_fdpass::Libc;
    let reply = |r: Result<c_int, c_int>| match r {
        Ok(fd) => {
            let sent = outsock_fdpass::sendmsg_fd::<Fdpass>(chan, &[0; 4], fd, libc::MSG_NOSIGNAL);
            // SAFETY: our descriptor, sent (or not) now.
            unsafe { libc::close(fd) };
            sent.is_ok()
        }
        // SAFETY: four bytes on the channel.
        Err(e) => unsafe {
            libc::send(chan, e.to_ne_bytes().as_ptr().cast(), 4, libc::MSG_NOSIGNAL) == 4
        },
    };
    if !reply(status) || status.is_err() {
        // SAFETY: ends the child.
        unsafe { libc::_exit(1) };
    }
    loop {
        let mut req = [0u8; 12];
        // SAFETY: `req` has 12 writable bytes.
        let n = unsafe { libc::recv(chan, req.as_mut_ptr().cast(), 12, 0) };
        if n < 0 && child_errno() == libc::EINTR {
            continue;
        }
        if n != 12 {
            // SAFETY: ends the child (its supervisor is gone, or spoke nonsense).
            unsafe { libc::_exit(0) };
        }
        let int = |i: usize| c_int::from_ne_bytes([req[i], req[i + 1], req[i + 2], req[i + 3]]);
        // SAFETY: plain socket(2).
        let fd = unsafe { libc::socket(int(0), int(4) | libc::SOCK_CLOEXEC, int(8)) };
        let r = if fd < 0 { Err(child_errno()) } else { Ok(fd) };
        if !reply(r) {
            // SAFETY: ends the child.
            unsafe { libc::_exit(0) };
        }
    }
}

/// write(2) of `data` to `fd`: the bytes written or the errno.
///
/// # Errors
/// The errno.
pub fn write_fd(fd: RawFd, data: &[u8]) -> Result<usize, i32> {
    // SAFETY: `data` is valid for its length.
    let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO));
    }
    Ok(n.unsigned_abs())
}

/// read(2) of one packet into `buf`: its length or the errno.
///
/// # Errors
/// The errno.
pub fn read_fd(fd: RawFd, buf: &mut [u8]) -> Result<usize, i32> {
    // SAFETY: `buf` is writable for its length.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO));
    }
    Ok(n.unsigned_abs())
}

/// poll(2) on `fds` for up to `timeout_ms` (-1: for ever); how many have events (0 when
/// interrupted by a signal).
///
/// # Errors
/// poll's error but EINTR.
pub fn poll(fds: &mut [libc::pollfd], timeout_ms: c_int) -> io::Result<usize> {
    // SAFETY: `fds` is a valid, writable array of its length.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(0)
        } else {
            Err(e)
        };
    }
    Ok(n.unsigned_abs() as usize)
}

/// This process's effective uid.
#[must_use]
pub fn euid() -> u32 {
    // SAFETY: geteuid(2) cannot fail.
    unsafe { libc::geteuid() }
}

/// The uid of the peer of Unix socket `fd` (SO_PEERCRED).
///
/// # Errors
/// getsockopt's error.
pub fn peer_uid(fd: RawFd) -> io::Result<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` is writable for `len` bytes.
    cvt(unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            std::ptr::addr_of_mut!(cred).cast(),
            &mut len,
        )
    })?;
    Ok(cred.uid)
}

/// Puts the socket `from` in place of descriptor `to` (dup3, close-on-exec): every holder of
/// `to`'s number uses `from`'s socket from now on.
///
/// # Errors
/// dup3's error.
pub fn dup_onto(from: RawFd, to: RawFd) -> io::Result<()> {
    // SAFETY: dup3 on two descriptors we own; `to` stays ours, with the new socket.
    cvt(unsafe { libc::dup3(from, to, libc::O_CLOEXEC) })?;
    Ok(())
}
