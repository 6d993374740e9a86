//! Passing a socket to the peer with SCM_RIGHTS, together with the frame that describes it: the
//! async side over tokio's `UnixStream`. The control messages themselves are `outsock-fdpass`'s,
//! the code liboutsock receives them with.
//!
//! Exactly how (the contract the shim relies on): host-server makes **one `sendmsg`** on the
//! host.sock stream whose data is the whole answer frame (`Connected` or `Inbound`) and whose
//! control message is one `SCM_RIGHTS` carrying exactly one descriptor (a `Lent` answer: the
//! sockets it counts, all in that one control message). On a stream socket the
//! kernel attaches the descriptor to the first byte of that data, so a receiver that reads the
//! frame header with `recvmsg` (and a control buffer of at least `CMSG_SPACE(sizeof(int))`) gets
//! the descriptor with the header, before any later frame. Should `sendmsg` take only part of the
//! frame, the rest follows with ordinary writes (the descriptor has already travelled with the
//! first part). Host-server closes its own copy once the message is sent.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use outsock_fdpass::Libc;
use tokio::io::Interest;
use tokio::net::UnixStream;

/// Receives up to `buf.len()` bytes and at most one attached descriptor (blocking, for clients
/// such as the tests and the benchmark). Extra descriptors are closed.
pub use outsock_fdpass::recv_with_fd;

/// Sends `data` with `fd` attached (see the module docs), then the rest of `data` if needed.
///
/// # Errors
/// When the stream fails; the descriptor may then not have arrived.
pub async fn send_with_fd(stream: &UnixStream, data: &[u8], fd: BorrowedFd<'_>) -> io::Result<()> {
    send_with_fds(stream, data, &[fd]).await
}

/// [`send_with_fd`] with every descriptor of `fds` (1 to `outsock_fdpass::MAX_FDS`) attached.
///
/// # Errors
/// As [`send_with_fd`]; EINVAL for no descriptor or too many.
pub async fn send_with_fds(
    stream: &UnixStream,
    data: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    let mut raw = [0; outsock_fdpass::MAX_FDS];
    if fds.is_empty() || fds.len() > raw.len() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    for (r, fd) in raw.iter_mut().zip(fds) {
        *r = fd.as_raw_fd();
    }
    let raw = &raw[..fds.len()];
    let sent = stream
        .async_io(Interest::WRITABLE, || {
            outsock_fdpass::sendmsg_fds::<Libc>(
                stream.as_raw_fd(),
                data,
                raw,
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        })
        .await?;
    if sent < data.len() {
        crate::relay::write_all(stream, &data[sent..]).await?;
    }
    Ok(())
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
