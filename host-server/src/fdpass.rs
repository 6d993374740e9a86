//! Passing a socket to the peer with SCM_RIGHTS, together with the frame that describes it.
//!
//! Exactly how (the contract the shim relies on): host-server makes **one `sendmsg`** on the
//! host.sock stream whose data is the whole answer frame (`Connected` or `Inbound`) and whose
//! control message is one `SCM_RIGHTS` carrying exactly one descriptor. On a stream socket the
//! kernel attaches the descriptor to the first byte of that data, so a receiver that reads the
//! frame header with `recvmsg` (and a control buffer of `CMSG_SPACE(sizeof(int))`) gets the
//! descriptor with the header, before any later frame. Should `sendmsg` take only part of the
//! frame, the rest follows with ordinary writes (the descriptor has already travelled with the
//! first part). Host-server closes its own copy once the message is sent.

use std::io;
use std::mem;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use tokio::io::Interest;
use tokio::net::UnixStream;

/// Sends `data` with `fd` attached (see the module docs), then the rest of `data` if needed.
///
/// # Errors
/// When the stream fails; the descriptor may then not have arrived.
pub async fn send_with_fd(stream: &UnixStream, data: &[u8], fd: BorrowedFd<'_>) -> io::Result<()> {
    let raw = fd.as_raw_fd();
    let sent = stream
        .async_io(Interest::WRITABLE, || {
            sendmsg_fd(stream.as_raw_fd(), data, raw)
        })
        .await?;
    if sent < data.len() {
        crate::relay::write_all(stream, &data[sent..]).await?;
    }
    Ok(())
}

/// One non-blocking `sendmsg` with one SCM_RIGHTS descriptor.
fn sendmsg_fd(sock: RawFd, data: &[u8], fd: RawFd) -> io::Result<usize> {
    let fd_len = u32::try_from(mem::size_of::<RawFd>()).expect("an int fits in u32");
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(fd_len) } as usize;
    // u64 elements keep the control buffer aligned for cmsghdr.
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: msghdr is plain old data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space;
    // SAFETY: msg_control points at `space` writable, aligned bytes, enough for one cmsghdr with
    // an int payload, so CMSG_FIRSTHDR is non-null and CMSG_DATA lies inside the buffer.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(fd_len) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd);
    }
    // SAFETY: `msg` points at `iov` (over `data`, read-only use by the kernel) and `control`,
    // both alive for the call; `sock` is an open socket owned by the caller.
    let n = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(n).expect("sendmsg returned a non-negative count"))
}

/// Receives up to `buf.len()` bytes and at most one attached descriptor (blocking, for clients
/// such as the tests and the shim's reference). Extra descriptors are closed.
///
/// # Errors
/// When `recvmsg` fails.
pub fn recv_with_fd(sock: RawFd, buf: &mut [u8]) -> io::Result<(usize, Option<OwnedFd>)> {
    let fd_len = u32::try_from(mem::size_of::<RawFd>() * 4).expect("small");
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(fd_len) } as usize;
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain old data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space;
    // SAFETY: `msg` points at `buf` and `control`, writable and alive for the call; `sock` is an
    // open socket owned by the caller. MSG_CMSG_CLOEXEC keeps received fds out of children.
    let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut first = None;
    // SAFETY: the kernel filled `control` and set msg_controllen; the CMSG_* walk stays inside
    // it, and each SCM_RIGHTS payload holds (cmsg_len - CMSG_LEN(0)) / sizeof(int) open fds that
    // now belong to this process, so wrapping each in an OwnedFd exactly once is sound.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let bytes = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                for i in 0..bytes / mem::size_of::<RawFd>() {
                    let fd = OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i)));
                    if first.is_none() {
                        first = Some(fd);
                    }
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok((usize::try_from(n).expect("non-negative"), first))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    #[tokio::test]
    async fn descriptor_travels_with_the_data() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let a = UnixStream::from_std(a).unwrap();
        let (mut p, q) = std::os::unix::net::UnixStream::pair().unwrap();
        send_with_fd(&a, b"frame bytes", q.as_fd()).await.unwrap();
        drop(q);
        let mut buf = [0u8; 64];
        let (n, fd) = recv_with_fd(b.as_raw_fd(), &mut buf).unwrap();
        assert_eq!(&buf[..n], b"frame bytes");
        let mut got = std::os::unix::net::UnixStream::from(fd.unwrap());
        p.write_all(b"through the passed socket").unwrap();
        let mut r = [0u8; 25];
        got.read_exact(&mut r).unwrap();
        assert_eq!(&r, b"through the passed socket");
    }
}
