//! Reading and writing `sockaddr_in` at the C boundary.
//! The bytes and the "is it outsourced" decision are `shared_proto::translate`'s, shared with
//! outsock-supervisor.

use std::net::SocketAddrV4;

use libc::{sockaddr, sockaddr_in, socklen_t};
use shared_proto::translate::{
    decode_sockaddr_in, encode_sockaddr_in, is_outsourced, SOCKADDR_IN_LEN,
};

/// The IPv4 address in `addr`, if it is a well-formed AF_INET sockaddr.
///
/// # Safety
/// `addr` is null or points to at least `len` readable bytes.
#[must_use]
pub unsafe fn read_v4(addr: *const sockaddr, len: socklen_t) -> Option<SocketAddrV4> {
    if addr.is_null() || (len as usize) < std::mem::size_of::<sockaddr_in>() {
        return None;
    }
    // SAFETY: the caller guarantees `len` readable bytes, checked to cover a sockaddr_in;
    // read_unaligned because C callers owe us no alignment.
    let bytes: [u8; SOCKADDR_IN_LEN] = unsafe { std::ptr::read_unaligned(addr.cast()) };
    decode_sockaddr_in(&bytes)
}

/// Writes `a` as a `sockaddr_in` the way the kernel does: truncated to `*len`, with `*len` set
/// to the full size. Null pointers are allowed (accept's addr may be null).
///
/// # Safety
/// `addr`/`len` are null or valid for writing (`*len` bytes at `addr`).
pub unsafe fn write_v4(a: SocketAddrV4, addr: *mut sockaddr, len: *mut socklen_t) {
    if addr.is_null() || len.is_null() {
        return;
    }
    let sin = encode_sockaddr_in(a);
    let full = std::mem::size_of::<sockaddr_in>();
    // SAFETY: the caller gave a valid len pointer and `*len` writable bytes at addr.
    unsafe {
        let n = full.min(*len as usize);
        std::ptr::copy_nonoverlapping(sin.as_ptr(), addr.cast::<u8>(), n);
        *len = full as socklen_t;
    }
}

/// Whether traffic to `a` stays on the program's own loopback (never outsourced).
#[must_use]
pub fn is_local(a: SocketAddrV4) -> bool {
    !is_outsourced(a)
}
