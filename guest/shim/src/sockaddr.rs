//! Reading and writing `sockaddr_in` at the C boundary.

use std::net::{Ipv4Addr, SocketAddrV4};

use libc::{sockaddr, sockaddr_in, socklen_t};

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
    let sin: sockaddr_in = unsafe { std::ptr::read_unaligned(addr.cast()) };
    if i32::from(sin.sin_family) != libc::AF_INET {
        return None;
    }
    Some(SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
        u16::from_be(sin.sin_port),
    ))
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
    // SAFETY: zeroed sockaddr_in is valid plain data.
    let mut sin: sockaddr_in = unsafe { std::mem::zeroed() };
    sin.sin_family = libc::AF_INET as libc::sa_family_t;
    sin.sin_port = a.port().to_be();
    sin.sin_addr.s_addr = u32::from(*a.ip()).to_be();
    let full = std::mem::size_of::<sockaddr_in>();
    // SAFETY: the caller gave a valid len pointer and `*len` writable bytes at addr.
    unsafe {
        let n = full.min(*len as usize);
        std::ptr::copy_nonoverlapping(std::ptr::from_ref(&sin).cast::<u8>(), addr.cast::<u8>(), n);
        *len = full as socklen_t;
    }
}

/// Whether traffic to `a` stays on the program's own loopback (never outsourced).
#[must_use]
pub fn is_local(a: SocketAddrV4) -> bool {
    a.ip().is_loopback()
}
