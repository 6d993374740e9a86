//! Vectored I/O between a stream and several buffers of guest memory, one system call each way:
//!
//! - [`recv_into`]: one receive into the data buffers of a batch of RX chains, so that a
//!   connection's bytes for many of the guest's 4 KiB RX buffers cost one call instead of one
//!   each. vm-memory reads into one `VolatileSlice` per call; this is its vectored
//!   counterpart, with the same rule for the dirty bitmap (what was read is marked dirty; on an
//!   error, everything offered, as a partial read cannot be ruled out). It is `recvmsg(2)` with
//!   an iovec per buffer (no control data): a call the event thread's seccomp filter allows for
//!   the descriptors host-server passes.
//! - [`send_from`]: one write of the payloads of a run of a connection's TX packets, in ring
//!   order (`writev(2)`: no control data, so no descriptor can leave this way). The kernel then
//!   sees the guest's bytes in writes as large as a program's, not one per 64 KiB packet: a
//!   TCP peer's receiver wakes and copies per write, and costs far more per byte for small
//!   ones (measured: native writes of 64 KiB instead of 256 KiB cut native IPv6 throughput by
//!   a quarter here, the receiver's CPU per byte up by 40 %).
//!
//! This module holds the only `unsafe` of the vsock device.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use vm_memory::bitmap::BitmapSlice;
use vm_memory::VolatileSlice;

/// The most buffers one receive fills (the kernel's limit is far higher, `UIO_MAXIOV`).
pub const MAX_IOV: usize = 64;

/// Receives once from `fd` into `bufs`, in order, at most `max` bytes in all (and at most
/// [`MAX_IOV`] buffers); returns the bytes received (0: the peer's end of file).
///
/// # Errors
/// The receive's error (`WouldBlock` when nothing is there on a non-blocking socket).
pub fn recv_into<B: BitmapSlice>(
    fd: BorrowedFd<'_>,
    bufs: &[VolatileSlice<'_, B>],
    max: usize,
) -> io::Result<usize> {
    let mut iov = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; MAX_IOV];
    // Each guard keeps its buffer's mapping valid until the receive returns.
    let mut guards = Vec::with_capacity(bufs.len().min(MAX_IOV));
    let mut offered = 0;
    for b in bufs.iter().take(MAX_IOV) {
        let take = b.len().min(max - offered);
        if take == 0 {
            break;
        }
        let g = b.ptr_guard_mut();
        iov[guards.len()] = libc::iovec {
            iov_base: g.as_ptr().cast(),
            iov_len: take,
        };
        guards.push(g);
        offered += take;
    }
    if guards.is_empty() {
        return Ok(0);
    }
    // SAFETY: msghdr is plain data; all-zero is a valid value (no name, no control data).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = guards.len();
    // SAFETY: `fd` is a valid descriptor for the call (I/O safety of BorrowedFd); each of the
    // first `guards.len()` iovecs points into a VolatileSlice of guest memory, valid for writes
    // of its `iov_len` bytes (VolatileSlice's invariant) while its guard lives, i.e. past the
    // call; `msg` names no address and no control buffer.
    let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, 0) };
    let result = usize::try_from(n).map_err(|_| io::Error::last_os_error());
    drop(guards);
    let mut dirty = *result.as_ref().unwrap_or(&offered);
    for b in bufs {
        if dirty == 0 {
            break;
        }
        let d = b.len().min(dirty);
        b.bitmap().mark_dirty(0, d);
        dirty -= d;
    }
    result
}

/// Writes `bufs` to `fd` once, in order (at most [`MAX_IOV`] of them); returns the bytes
/// written, which may be fewer than offered (a full socket).
///
/// # Errors
/// The write's error (`WouldBlock` when a non-blocking socket takes nothing).
pub fn send_from<B: BitmapSlice>(
    fd: BorrowedFd<'_>,
    bufs: &[VolatileSlice<'_, B>],
) -> io::Result<usize> {
    let mut iov = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; MAX_IOV];
    // Each guard keeps its buffer's mapping valid until the write returns.
    let mut guards = Vec::with_capacity(bufs.len().min(MAX_IOV));
    for b in bufs.iter().take(MAX_IOV).filter(|b| !b.is_empty()) {
        let g = b.ptr_guard();
        iov[guards.len()] = libc::iovec {
            iov_base: g.as_ptr().cast_mut().cast(),
            iov_len: b.len(),
        };
        guards.push(g);
    }
    if guards.is_empty() {
        return Ok(0);
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)] // ≤ MAX_IOV.
    let count = guards.len() as libc::c_int;
    // SAFETY: `fd` is a valid descriptor for the call (I/O safety of BorrowedFd); each of the
    // first `count` iovecs points into a VolatileSlice of guest memory, valid for reads of its
    // `iov_len` bytes (VolatileSlice's invariant) while its guard lives, i.e. past the call;
    // writev only reads them.
    let n = unsafe { libc::writev(fd.as_raw_fd(), iov.as_ptr(), count) };
    drop(guards);
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

    use super::*;

    #[test]
    fn one_receive_fills_the_buffers_in_order_up_to_max() {
        let mem: GuestMemoryMmap =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x4000)]).expect("guest memory");
        let slice = |addr: u64, len: usize| {
            mem.get_slice(GuestAddress(addr), len)
                .expect("a slice of guest memory")
        };
        let (mut a, b) = UnixStream::pair().expect("a pair");
        let data: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
        a.write_all(&data).expect("write");
        // Three buffers, out of address order, 4 KiB, 100 and 4 KiB bytes; at most 8,000.
        let bufs = [slice(0x1000, 4096), slice(0x100, 100), slice(0x2000, 4096)];
        let n = recv_into(b.as_fd(), &bufs, 8000).expect("receive");
        assert_eq!(n, 8000);
        let mut got = vec![0u8; 8000];
        mem.read_slice(&mut got[..4096], GuestAddress(0x1000))
            .expect("read back");
        mem.read_slice(&mut got[4096..4196], GuestAddress(0x100))
            .expect("read back");
        mem.read_slice(&mut got[4196..], GuestAddress(0x2000))
            .expect("read back");
        assert_eq!(got, data[..8000]);
        // The rest is still in the stream, and an end of file is 0.
        drop(a);
        let n = recv_into(b.as_fd(), &bufs, 8000).expect("receive");
        assert_eq!(n, 2000);
        assert_eq!(recv_into(b.as_fd(), &bufs, 8000).expect("receive"), 0);
    }

    #[test]
    fn one_write_sends_the_buffers_in_order_and_says_how_much_went() {
        let mem: GuestMemoryMmap =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x4000)]).expect("guest memory");
        let data: Vec<u8> = (0..=255u8).cycle().take(0x4000).collect();
        mem.write_slice(&data, GuestAddress(0)).expect("fill");
        let slice = |addr: u64, len: usize| {
            mem.get_slice(GuestAddress(addr), len)
                .expect("a slice of guest memory")
        };
        let (a, mut b) = UnixStream::pair().expect("a pair");
        // Out of address order, one of them empty.
        let bufs = [
            slice(0x2000, 3000),
            slice(0x100, 0),
            slice(0x10, 700),
            slice(0x3000, 4096),
        ];
        let n = send_from(a.as_fd(), &bufs).expect("write");
        assert_eq!(n, 3000 + 700 + 4096);
        let mut got = vec![0u8; n];
        b.read_exact(&mut got).expect("read back");
        let mut want = data[0x2000..0x2000 + 3000].to_vec();
        want.extend(&data[0x10..0x10 + 700]);
        want.extend(&data[0x3000..]);
        assert_eq!(got, want);
        // A full non-blocking stream takes part of a write, then nothing.
        a.set_nonblocking(true).expect("non-blocking");
        let mut sent = 0;
        let e = loop {
            match send_from(a.as_fd(), &bufs) {
                Ok(n) => sent += n,
                Err(e) => break e,
            }
        };
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        assert!(sent > 0);
        assert_eq!(
            send_from(a.as_fd(), &bufs[1..2]).expect("nothing offered"),
            0
        );
    }

    #[test]
    fn nothing_to_read_on_a_non_blocking_stream_is_would_block() {
        let mem: GuestMemoryMmap =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).expect("guest memory");
        let bufs = [mem.get_slice(GuestAddress(0), 512).expect("a slice")];
        let (_a, b) = UnixStream::pair().expect("a pair");
        b.set_nonblocking(true).expect("non-blocking");
        let e = recv_into(b.as_fd(), &bufs, 512).expect_err("nothing to read");
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        assert_eq!(recv_into(b.as_fd(), &bufs, 0).expect("no room"), 0);
    }
}
