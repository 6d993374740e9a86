//! The `SCM_RIGHTS` control messages themselves: one descriptor out with [`sendmsg_fd`] (or up
//! to [`MAX_FDS`] with [`sendmsg_fds`]), at most one kept on the way in with [`recvmsg_fd`] (or
//! as many as the caller has room for with [`recvmsg_fds`]). Buffers live on the stack.

use std::io;
use std::mem;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::ptr;

use libc::{c_int, c_uint};

use crate::sys::{Libc, Sys};

/// The most descriptors one message carries here.
pub const MAX_FDS: usize = 64;

/// Control-message room, in `u64`s so that it is aligned for `cmsghdr`: 320 bytes hold one
/// header with [`MAX_FDS`] descriptors and more.
type Control = [u64; 40];

/// The size of one descriptor in an `SCM_RIGHTS` payload.
const FD_LEN: c_uint = mem::size_of::<c_int>() as c_uint;

// SAFETY: CMSG_SPACE is a pure size computation.
/// `CMSG_SPACE(sizeof(int))`: the control length of a message carrying one descriptor.
const ONE_FD_SPACE: usize = unsafe { libc::CMSG_SPACE(FD_LEN) } as usize;

// SAFETY: CMSG_SPACE is a pure size computation.
const MAX_FDS_SPACE: usize = unsafe { libc::CMSG_SPACE(FD_LEN * MAX_FDS as c_uint) } as usize;

const _: () = assert!(ONE_FD_SPACE <= MAX_FDS_SPACE);
const _: () = assert!(MAX_FDS_SPACE <= mem::size_of::<Control>());

/// One `sendmsg` on `sock` whose data is `data` and whose control message is one `SCM_RIGHTS`
/// carrying `fd`; returns how many bytes of `data` went (the descriptor went with the first).
/// `flags` are sendmsg's (`MSG_NOSIGNAL`, `MSG_DONTWAIT`, …). The caller keeps `fd` open until
/// this returns and closes its own copy when it likes.
///
/// # Errors
/// `sendmsg`'s error; the descriptor has not been sent then.
pub fn sendmsg_fd<S: Sys>(sock: RawFd, data: &[u8], fd: RawFd, flags: c_int) -> io::Result<usize> {
    sendmsg_fds::<S>(sock, data, &[fd], flags)
}

/// [`sendmsg_fd`] with every descriptor of `fds` (1 to [`MAX_FDS`]) in the one `SCM_RIGHTS`.
///
/// # Errors
/// `sendmsg`'s error (no descriptor has been sent then); EINVAL for no descriptor or more than
/// [`MAX_FDS`].
pub fn sendmsg_fds<S: Sys>(
    sock: RawFd,
    data: &[u8],
    fds: &[RawFd],
    flags: c_int,
) -> io::Result<usize> {
    if fds.is_empty() || fds.len() > MAX_FDS {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    #[allow(clippy::cast_possible_truncation)] // At most MAX_FDS descriptors.
    let payload = FD_LEN * fds.len() as c_uint;
    let mut control: Control = [0; 40];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr().cast_mut().cast(),
        iov_len: data.len(),
    };
    // SAFETY: msghdr is plain old data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE is a pure size computation.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(payload) } as usize;
    // SAFETY: msg_control points at msg_controllen (<= MAX_FDS_SPACE) writable, aligned bytes,
    // enough for one cmsghdr with `fds.len()` ints, so CMSG_FIRSTHDR is non-null and the ints
    // written from CMSG_DATA lie inside the buffer.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(payload) as usize;
        let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
        for (i, fd) in fds.iter().enumerate() {
            ptr::write_unaligned(data.add(i), *fd);
        }
    }
    // SAFETY: `msg` points at `iov` (over `data`, only read by the kernel) and `control`, both
    // alive for the call.
    let n = unsafe { S::sendmsg(sock, &msg, flags) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n.unsigned_abs())
}

/// One `recvmsg` on `sock` into `buf`, with `flags` (`MSG_CMSG_CLOEXEC`, `MSG_DONTWAIT`, …);
/// returns the byte count (0: the peer closed). A descriptor that arrives is stored in `passed`
/// if that is empty, and becomes the caller's; every other one is closed at once, so that a
/// peer sending more than one (or one per read of a frame) cannot make the caller leak.
///
/// # Errors
/// `recvmsg`'s error (its errno intact); no descriptor has been received then.
pub fn recvmsg_fd<S: Sys>(
    sock: RawFd,
    buf: &mut [u8],
    flags: c_int,
    passed: &mut Option<RawFd>,
) -> io::Result<usize> {
    let mut room = [-1; 1];
    let mut kept = usize::from(passed.is_some());
    let n = recvmsg_fds::<S>(sock, buf, flags, &mut room, &mut kept)?;
    if passed.is_none() && kept == 1 {
        *passed = Some(room[0]);
    }
    Ok(n)
}

/// [`recvmsg_fd`] keeping up to `passed.len()` descriptors: those that arrive fill `passed`
/// from index `*count` on (and `*count` grows); every one beyond its room is closed at once.
///
/// # Errors
/// `recvmsg`'s error (its errno intact); no descriptor has been received then.
pub fn recvmsg_fds<S: Sys>(
    sock: RawFd,
    buf: &mut [u8],
    flags: c_int,
    passed: &mut [RawFd],
    count: &mut usize,
) -> io::Result<usize> {
    let mut control: Control = [0; 40];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain old data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = mem::size_of::<Control>();
    // SAFETY: `msg` points at `buf` and `control`, writable for the lengths given and alive for
    // the call.
    let n = unsafe { S::recvmsg(sock, &mut msg, flags) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel filled `control` and set msg_controllen; the CMSG_* walk stays inside
    // it, and each SCM_RIGHTS payload holds (cmsg_len - CMSG_LEN(0)) / sizeof(int) descriptors
    // that now belong to this process: each is handed to the caller or closed, exactly once.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let bytes = ((*cmsg).cmsg_len as usize).saturating_sub(libc::CMSG_LEN(0) as usize);
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                for i in 0..bytes / mem::size_of::<RawFd>() {
                    let fd = ptr::read_unaligned(data.add(i));
                    if *count < passed.len() {
                        passed[*count] = fd;
                        *count += 1;
                    } else {
                        S::close(fd);
                    }
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok(n.unsigned_abs())
}

/// [`recvmsg_fd`] for an ordinary program (libc's calls): receives up to `buf.len()` bytes and
/// at most one descriptor, close-on-exec, owned. Blocks unless `sock` is non-blocking.
///
/// # Errors
/// When `recvmsg` fails.
pub fn recv_with_fd(sock: RawFd, buf: &mut [u8]) -> io::Result<(usize, Option<OwnedFd>)> {
    let mut passed = None;
    let n = recvmsg_fd::<Libc>(sock, buf, libc::MSG_CMSG_CLOEXEC, &mut passed)?;
    // SAFETY: a descriptor just received is open, and nothing else owns it.
    let fd = passed.map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
    Ok((n, fd))
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::io::{Read, Write};
    use std::os::fd::{AsRawFd, IntoRawFd};
    use std::os::unix::net::UnixStream;

    use super::*;

    thread_local! {
        static CLOSED: Cell<usize> = const { Cell::new(0) };
    }

    /// libc, counting the descriptors closed for us.
    struct Counting;

    // SAFETY: libc's functions, with a counter beside close.
    unsafe impl Sys for Counting {
        unsafe fn sendmsg(fd: c_int, msg: *const libc::msghdr, flags: c_int) -> isize {
            // SAFETY: forwarded.
            unsafe { Libc::sendmsg(fd, msg, flags) }
        }
        unsafe fn recvmsg(fd: c_int, msg: *mut libc::msghdr, flags: c_int) -> isize {
            // SAFETY: forwarded.
            unsafe { Libc::recvmsg(fd, msg, flags) }
        }
        unsafe fn close(fd: c_int) -> c_int {
            CLOSED.with(|c| c.set(c.get() + 1));
            // SAFETY: forwarded.
            unsafe { Libc::close(fd) }
        }
    }

    #[test]
    fn descriptor_travels_with_the_data() {
        let (a, b) = UnixStream::pair().unwrap();
        let (mut p, q) = UnixStream::pair().unwrap();
        let sent = sendmsg_fd::<Libc>(a.as_raw_fd(), b"frame", q.as_raw_fd(), libc::MSG_NOSIGNAL);
        assert_eq!(sent.unwrap(), 5);
        drop(q);
        let mut buf = [0u8; 16];
        let (n, fd) = recv_with_fd(b.as_raw_fd(), &mut buf).unwrap();
        assert_eq!(&buf[..n], b"frame");
        let fd = fd.expect("a descriptor came with the data");
        // SAFETY: F_GETFD on an open descriptor.
        let fd_flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
        assert_ne!(fd_flags & libc::FD_CLOEXEC, 0, "received close-on-exec");
        let mut got = UnixStream::from(fd);
        p.write_all(b"through it").unwrap();
        let mut r = [0u8; 10];
        got.read_exact(&mut r).unwrap();
        assert_eq!(&r, b"through it");
    }

    #[test]
    fn a_second_descriptor_is_closed_not_leaked() {
        let (a, b) = UnixStream::pair().unwrap();
        let (_p, q) = UnixStream::pair().unwrap();
        sendmsg_fd::<Libc>(a.as_raw_fd(), b"x", q.as_raw_fd(), 0).unwrap();
        let mut buf = [0u8; 4];
        let held = UnixStream::pair().unwrap().0.into_raw_fd();
        let mut passed = Some(held);
        CLOSED.with(|c| c.set(0));
        let n = recvmsg_fd::<Counting>(b.as_raw_fd(), &mut buf, 0, &mut passed).unwrap();
        assert_eq!(n, 1);
        assert_eq!(passed, Some(held), "the slot keeps the first descriptor");
        assert_eq!(CLOSED.with(Cell::get), 1, "the new one was closed");
        // SAFETY: our own descriptor.
        drop(unsafe { OwnedFd::from_raw_fd(held) });
    }

    #[test]
    fn many_descriptors_travel_in_one_message_and_extras_are_closed() {
        let (a, b) = UnixStream::pair().unwrap();
        let pairs: Vec<_> = (0..5).map(|_| UnixStream::pair().unwrap()).collect();
        let fds: Vec<RawFd> = pairs.iter().map(|(_, q)| q.as_raw_fd()).collect();
        assert_eq!(
            sendmsg_fds::<Libc>(a.as_raw_fd(), b"lent", &fds, 0).unwrap(),
            4
        );
        assert_eq!(
            sendmsg_fds::<Libc>(a.as_raw_fd(), b"x", &[], 0)
                .unwrap_err()
                .raw_os_error(),
            Some(libc::EINVAL)
        );
        let mut buf = [0u8; 8];
        let mut room = [-1; 3];
        let mut count = 0;
        CLOSED.with(|c| c.set(0));
        let n = recvmsg_fds::<Counting>(b.as_raw_fd(), &mut buf, 0, &mut room, &mut count).unwrap();
        assert_eq!((&buf[..n], count), (&b"lent"[..], 3));
        assert_eq!(
            CLOSED.with(Cell::get),
            2,
            "the two beyond the room were closed"
        );
        // Each kept one is a working copy of the socket sent in its place.
        for (fd, (p, _)) in room.iter().zip(&pairs) {
            // SAFETY: a descriptor just received, ours.
            let mut got = UnixStream::from(unsafe { OwnedFd::from_raw_fd(*fd) });
            got.write_all(b"k").unwrap();
            let mut r = [0u8; 1];
            (&*p).read_exact(&mut r).unwrap();
        }
    }

    #[test]
    fn no_descriptor_no_slot_change() {
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(b"plain").unwrap();
        let mut buf = [0u8; 8];
        let mut passed = None;
        let n = recvmsg_fd::<Libc>(b.as_raw_fd(), &mut buf, 0, &mut passed).unwrap();
        assert_eq!((&buf[..n], passed), (&b"plain"[..], None));
        b.set_nonblocking(true).unwrap();
        let e = recvmsg_fd::<Libc>(b.as_raw_fd(), &mut buf, 0, &mut passed).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EAGAIN));
    }
}
