//! Outsourced UDP. The first time a program sends from (or connects) an AF_INET datagram
//! socket to a non-loopback address, the shim opens a UDP association with host-server and
//! puts the association's channel on the program's fd (in process mode a `SOCK_SEQPACKET`
//! socket, one datagram per packet; in a VM the stream). From then on each datagram is one
//! `Datagram` frame with its IPv4 address; `poll`/`epoll` readiness is the channel's own. Any
//! number of threads and processes may receive and send on it at once: each datagram reaches
//! exactly one receiver, whole (`dgram` states the invariant).
//!
//! In process mode a `connect` to a non-loopback address instead asks host-server for a host
//! UDP socket connected to the peer's IPv6 address and puts that on the program's fd
//! ([`Kind::UdpPassed`]): its datagrams are the kernel's, never framed, and errors such as
//! ECONNREFUSED after an ICMP port unreachable reach the program as they would natively. Only
//! addresses are translated: the source of every datagram received is the connected peer, shown
//! as its dummy IPv4. Connecting such a socket again (or to AF_UNSPEC) first gives the host
//! socket back — a placeholder AF_INET socket takes the fd number, freeing the port — and then
//! proceeds as for a fresh socket bound where the program bound it; a send to another address
//! turns it into an association the same way. The guest DNS address (answered by dns-cache)
//! and VM guests (no descriptor can cross into a VM) always use associations, and so does a
//! socket sending to a resolv.conf nameserver on port 53: its datagrams go to the guest DNS
//! address, and the replies show the nameserver as their source (`crate::nameserver`).
//!
//! Ping sockets and raw ICMP sockets use ICMP associations (`dgram` tells how); here their
//! receives differ only in what comes with the message: a raw socket's reads begin with an
//! IPv4 header, an `IP_RECVTTL` socket's `recvmsg` gets an `IP_TTL` control message with the
//! reply's hop limit, and `MSG_ERRQUEUE` finds no queued errors (EAGAIN) on any association.
//! A receive interrupted by a signal before a frame began is EINTR, as natively.
//!
//! This module is the exported calls; their per-call logic is `dgram`'s.

use libc::{c_int, c_void, iovec, msghdr, sockaddr, socklen_t};
use shared_proto::Errno;

use crate::dgram::{passed_send, recv_on, send_on, sending_entry, PassedSend, Received};
use crate::fd::{errno_isize, set_errno};
use crate::sockaddr::{read_v4, write_v4};
use crate::table::{self, Entry, Kind};

/// Writes the peer as the source of a datagram the kernel received on a passed socket, in
/// place of its IPv6 address, into the caller's `addr` of `want` bytes.
///
/// # Safety
/// `addr` is null or valid for `want` bytes; `len` is null or valid.
unsafe fn write_peer(e: Entry, addr: *mut sockaddr, len: *mut socklen_t, want: socklen_t) {
    if let (Some(p), false, false) = (e.peer, addr.is_null(), len.is_null()) {
        // SAFETY: per the function's contract; `want` is what the caller made room for.
        unsafe {
            *len = want;
            write_v4(p, addr, len);
        }
    }
}

/// # Safety
/// Called by C with sendto(2)'s contract.
#[no_mangle]
pub unsafe extern "C" fn sendto(
    fd: c_int,
    buf: *const c_void,
    len: usize,
    flags: c_int,
    addr: *const sockaddr,
    alen: socklen_t,
) -> isize {
    let e = table::get(fd);
    if e.kind == Kind::Outsourced {
        // A connected stream ignores the address on Linux TCP, but a relayed connection's fd is
        // a Unix stream, which would fail with EISCONN: drop the address, as TCP would.
        // SAFETY: forwarded arguments without the address.
        return unsafe { real_sendto(fd, buf, len, flags, std::ptr::null(), 0) };
    }
    // SAFETY: the caller's addr/alen.
    let to = unsafe { read_v4(addr, alen) };
    if e.kind == Kind::UdpPassed {
        return match passed_send(fd, e, to) {
            // SAFETY: forwarded arguments without the (peer's) address.
            Ok(PassedSend::Native) => unsafe {
                real_sendto(fd, buf, len, flags, std::ptr::null(), 0)
            },
            Ok(PassedSend::Associated(a)) => {
                // SAFETY: the caller's buffer of `len` bytes.
                let data = unsafe { slice(buf.cast(), len) };
                send_on(fd, a, data, to)
            }
            Err(err) => errno_isize(err),
        };
    }
    match sending_entry(fd, to) {
        None => {
            // SAFETY: forwarded arguments.
            unsafe { real_sendto(fd, buf, len, flags, addr, alen) }
        }
        Some(Err(e)) => errno_isize(e),
        Some(Ok(e)) => {
            // SAFETY: the caller's buffer of `len` bytes.
            let data = unsafe { slice(buf.cast(), len) };
            send_on(fd, e, data, to)
        }
    }
}

/// # Safety
/// Called by C with send(2)'s contract.
#[no_mangle]
pub unsafe extern "C" fn send(fd: c_int, buf: *const c_void, len: usize, flags: c_int) -> isize {
    // SAFETY: same contract, no address.
    unsafe { sendto(fd, buf, len, flags, std::ptr::null(), 0) }
}

/// # Safety
/// Called by C with recvfrom(2)'s contract.
#[no_mangle]
pub unsafe extern "C" fn recvfrom(
    fd: c_int,
    buf: *mut c_void,
    len: usize,
    flags: c_int,
    addr: *mut sockaddr,
    alen: *mut socklen_t,
) -> isize {
    let e = table::get(fd);
    if e.kind == Kind::UdpPassed {
        // SAFETY: the caller's length slot (or null).
        let want = if alen.is_null() { 0 } else { unsafe { *alen } };
        // SAFETY: forwarded arguments; the kernel writes an IPv6 source, replaced below.
        let n = unsafe { real_recvfrom(fd, buf, len, flags, addr, alen) };
        if n >= 0 {
            // SAFETY: the caller's out pointers, with the room they gave.
            unsafe { write_peer(e, addr, alen, want) };
        }
        return n;
    }
    if e.kind != Kind::Udp {
        // SAFETY: forwarded arguments.
        return unsafe { real_recvfrom(fd, buf, len, flags, addr, alen) };
    }
    match recv_on(fd, e, flags) {
        Ok(Received { payload, from, .. }) => {
            let n = payload.len().min(len);
            // SAFETY: the caller's buffer holds `len` ≥ n bytes; the out address pointers are theirs.
            unsafe {
                std::ptr::copy_nonoverlapping(payload.as_ptr(), buf.cast::<u8>(), n);
                write_v4(from, addr, alen);
            }
            let full = if flags & libc::MSG_TRUNC != 0 {
                payload.len()
            } else {
                n
            };
            isize::try_from(full).unwrap_or(isize::MAX)
        }
        Err(err) => errno_isize(err),
    }
}

/// # Safety
/// Called by C with recv(2)'s contract.
#[no_mangle]
pub unsafe extern "C" fn recv(fd: c_int, buf: *mut c_void, len: usize, flags: c_int) -> isize {
    // SAFETY: same contract, no address.
    unsafe {
        recvfrom(
            fd,
            buf,
            len,
            flags,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    }
}

/// # Safety
/// Called by C with sendmsg(2)'s contract.
#[no_mangle]
pub unsafe extern "C" fn sendmsg(fd: c_int, msg: *const msghdr, flags: c_int) -> isize {
    // SAFETY: msg is valid per the contract.
    let Some(m) = (unsafe { msg.as_ref() }) else {
        return errno_isize(Errno(libc::EFAULT as u16));
    };
    let e = table::get(fd);
    // SAFETY: msg_name/msg_namelen from a valid msghdr.
    let to = unsafe { read_v4(m.msg_name.cast(), m.msg_namelen) };
    let native = match e.kind {
        Kind::Outsourced => true,
        Kind::UdpPassed => match passed_send(fd, e, to) {
            Ok(PassedSend::Native) => true,
            // The socket is an association now: sent below, as on one.
            Ok(PassedSend::Associated(_)) => false,
            Err(err) => return errno_isize(err),
        },
        _ => false,
    };
    if native {
        // As in `sendto`: a connected socket here takes no address.
        let mut copy = *m;
        copy.msg_name = std::ptr::null_mut();
        copy.msg_namelen = 0;
        // SAFETY: the caller's msghdr with the address removed.
        return unsafe { real_sendmsg(fd, &copy, flags) };
    }
    match sending_entry(fd, to) {
        None => {
            // SAFETY: forwarded arguments.
            unsafe { real_sendmsg(fd, msg, flags) }
        }
        Some(Err(e)) => errno_isize(e),
        Some(Ok(e)) => {
            let mut data = Vec::new();
            // SAFETY: the iovecs of a valid msghdr.
            for iov in unsafe { iovs(m.msg_iov, m.msg_iovlen) } {
                // SAFETY: each iovec describes a readable buffer.
                data.extend_from_slice(unsafe { slice(iov.iov_base.cast(), iov.iov_len) });
            }
            send_on(fd, e, &data, to)
        }
    }
}

/// # Safety
/// Called by C with recvmsg(2)'s contract.
#[no_mangle]
pub unsafe extern "C" fn recvmsg(fd: c_int, msg: *mut msghdr, flags: c_int) -> isize {
    let e = table::get(fd);
    if e.kind == Kind::UdpPassed {
        // SAFETY: msg is valid per the contract (or null, for the kernel to refuse).
        let want = unsafe { msg.as_ref() }.map_or(0, |m| m.msg_namelen);
        // SAFETY: forwarded arguments; the kernel writes an IPv6 source, replaced below.
        let n = unsafe { real_recvmsg(fd, msg, flags) };
        // SAFETY: as above.
        if let (true, Some(m)) = (n >= 0, unsafe { msg.as_mut() }) {
            // SAFETY: msg_name holds `want` bytes (or is null).
            unsafe { write_peer(e, m.msg_name.cast(), &mut m.msg_namelen, want) };
        }
        return n;
    }
    if e.kind != Kind::Udp {
        // SAFETY: forwarded arguments.
        return unsafe { real_recvmsg(fd, msg, flags) };
    }
    if flags & libc::MSG_ERRQUEUE != 0 {
        // An association reports no ICMP errors (ping asks after a failed send): none queued.
        return errno_isize(Errno::EAGAIN);
    }
    // SAFETY: msg is valid per the contract.
    let Some(m) = (unsafe { msg.as_mut() }) else {
        return errno_isize(Errno(libc::EFAULT as u16));
    };
    match recv_on(fd, e, flags) {
        Ok(Received { payload, from, ttl }) => {
            let mut off = 0;
            // SAFETY: the iovecs of a valid msghdr describe writable buffers.
            for iov in unsafe { iovs(m.msg_iov, m.msg_iovlen) } {
                let n = (payload.len() - off).min(iov.iov_len);
                // SAFETY: `n` fits both the iovec and the rest of the payload.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        payload[off..].as_ptr(),
                        iov.iov_base.cast::<u8>(),
                        n,
                    );
                };
                off += n;
            }
            let mut nlen = m.msg_namelen;
            // SAFETY: msg_name holds msg_namelen bytes (or is null).
            unsafe { write_v4(from, m.msg_name.cast(), &mut nlen) };
            m.msg_namelen = if m.msg_name.is_null() { 0 } else { nlen };
            let ttl = ttl.filter(|_| e.options & table::RECVTTL != 0);
            // SAFETY: msg_control holds msg_controllen bytes (or is null).
            let ctrunc = unsafe { write_ttl(m, ttl) };
            m.msg_flags = if off < payload.len() {
                libc::MSG_TRUNC
            } else {
                0
            } | ctrunc;
            let full = if flags & libc::MSG_TRUNC != 0 {
                payload.len()
            } else {
                off
            };
            isize::try_from(full).unwrap_or(isize::MAX)
        }
        Err(err) => errno_isize(err),
    }
}

/// Writes an `IP_TTL` control message with `ttl` (an ICMP reply's, when the program asked for
/// `IP_RECVTTL`) into `m`'s control buffer, or none; returns MSG_CTRUNC when it did not fit.
///
/// # Safety
/// `m.msg_control` is null or valid for `m.msg_controllen` bytes.
unsafe fn write_ttl(m: &mut msghdr, ttl: Option<u8>) -> c_int {
    let Some(ttl) = ttl else {
        m.msg_controllen = 0;
        return 0;
    };
    let int = std::mem::size_of::<c_int>() as u32;
    // SAFETY: CMSG_SPACE and CMSG_LEN are arithmetic.
    let (space, clen) = unsafe { (libc::CMSG_SPACE(int) as usize, libc::CMSG_LEN(int) as usize) };
    if m.msg_control.is_null() || m.msg_controllen < space {
        m.msg_controllen = 0;
        return libc::MSG_CTRUNC;
    }
    m.msg_controllen = space;
    // SAFETY: the control buffer holds at least one header and an int (checked above).
    unsafe {
        let c = libc::CMSG_FIRSTHDR(m);
        (*c).cmsg_level = libc::IPPROTO_IP;
        (*c).cmsg_type = libc::IP_TTL;
        (*c).cmsg_len = clen;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<c_int>(), c_int::from(ttl));
    }
    0
}

/// `read(2)`: on a UDP association, one datagram; otherwise the real read.
///
/// # Safety
/// Called by C with read(2)'s contract.
#[no_mangle]
pub unsafe extern "C" fn read(fd: c_int, buf: *mut c_void, len: usize) -> isize {
    if table::get(fd).kind == Kind::Udp {
        // SAFETY: same buffer contract.
        return unsafe { recvfrom(fd, buf, len, 0, std::ptr::null_mut(), std::ptr::null_mut()) };
    }
    // SAFETY: forwarded arguments.
    unsafe { real_read(fd, buf, len) }
}

/// `write(2)`: on a connected UDP association, one datagram; otherwise the real write.
///
/// # Safety
/// Called by C with write(2)'s contract.
#[no_mangle]
pub unsafe extern "C" fn write(fd: c_int, buf: *const c_void, len: usize) -> isize {
    if table::get(fd).kind == Kind::Udp {
        // SAFETY: same buffer contract.
        return unsafe { sendto(fd, buf, len, 0, std::ptr::null(), 0) };
    }
    // SAFETY: forwarded arguments.
    unsafe { real_write(fd, buf, len) }
}

/// # Safety
/// `p` is valid for `len` bytes (or `len` is 0).
unsafe fn slice<'a>(p: *const u8, len: usize) -> &'a [u8] {
    if p.is_null() || len == 0 {
        return &[];
    }
    // SAFETY: per the function's contract.
    unsafe { std::slice::from_raw_parts(p, len) }
}

/// # Safety
/// `p` is valid for `n` iovecs (or `n` is 0).
unsafe fn iovs<'a>(p: *const iovec, n: usize) -> &'a [iovec] {
    if p.is_null() || n == 0 {
        return &[];
    }
    // SAFETY: per the function's contract.
    unsafe { std::slice::from_raw_parts(p, n) }
}

use crate::real::{
    read as real_read, recvfrom as real_recvfrom, recvmsg as real_recvmsg, sendmsg as real_sendmsg,
    sendto as real_sendto, write as real_write,
};

/// `shutdown(2)`: on a UDP association only the program's view changes. A shut-down UDP
/// socket keeps receiving (netcat-traditional half-closes its UDP socket at the end of its
/// input and then waits for the reply); half-closing the association's stream would end the
/// association, replies and all. As in the kernel, an unconnected socket answers ENOTCONN.
/// Unlike the kernel, sends after `SHUT_WR` are not refused with EPIPE (the table keeps no
/// flag for it).
///
/// # Safety
/// Called by C with shutdown(2)'s contract.
#[no_mangle]
pub unsafe extern "C" fn shutdown(fd: c_int, how: c_int) -> c_int {
    let e = table::get(fd);
    if e.kind != Kind::Udp {
        // SAFETY: forwarded arguments.
        return unsafe { crate::real::shutdown(fd, how) };
    }
    if !matches!(how, libc::SHUT_RD | libc::SHUT_WR | libc::SHUT_RDWR) {
        return set_errno(Errno(libc::EINVAL as u16));
    }
    if e.peer.is_none() {
        return set_errno(Errno(libc::ENOTCONN as u16));
    }
    0
}

/// `recvmmsg(2)` (libuv and BIND's dig batch their receives, through `syscall(3)`, see
/// `crate::syscall`): on a UDP association, fills the vector one datagram at a time; the
/// first receive may block as recvmsg would, later ones don't, so it returns what is there
/// once one datagram has arrived. That is the kernel's behaviour for a non-blocking socket or
/// with `MSG_WAITFORONE` (libuv's sockets are non-blocking); on a blocking socket without it
/// the kernel would wait for the whole vector. `timeout` is not looked at (the kernel only
/// checks it after each datagram, and it does not bound the first wait either). As in the
/// kernel, an error after some datagrams returns those; the error itself is not kept for the
/// next call.
///
/// # Safety
/// Called by C with recvmmsg(2)'s contract.
#[no_mangle]
pub unsafe extern "C" fn recvmmsg(
    fd: c_int,
    msgs: *mut libc::mmsghdr,
    n: libc::c_uint,
    flags: c_int,
    timeout: *mut libc::timespec,
) -> c_int {
    let e = table::get(fd);
    if e.kind == Kind::UdpPassed && !msgs.is_null() {
        // SAFETY: msgs holds n entries per the contract.
        let entries = unsafe { std::slice::from_raw_parts_mut(msgs, n as usize) };
        let want: Vec<socklen_t> = entries.iter().map(|m| m.msg_hdr.msg_namelen).collect();
        // SAFETY: forwarded arguments; the kernel writes IPv6 sources, replaced below.
        let got = unsafe { crate::real::recvmmsg(fd, msgs, n, flags, timeout) };
        for (m, w) in entries
            .iter_mut()
            .zip(want)
            .take(usize::try_from(got).unwrap_or(0))
        {
            // SAFETY: each entry's msg_name holds `w` bytes (or is null).
            unsafe { write_peer(e, m.msg_hdr.msg_name.cast(), &mut m.msg_hdr.msg_namelen, w) };
        }
        return got;
    }
    if e.kind != Kind::Udp {
        // SAFETY: forwarded arguments.
        return unsafe { crate::real::recvmmsg(fd, msgs, n, flags, timeout) };
    }
    let mut done: c_int = 0;
    for i in 0..n as usize {
        let more = if done == 0 {
            flags & !libc::MSG_WAITFORONE
        } else {
            flags | libc::MSG_DONTWAIT
        };
        // SAFETY: msgs holds n entries per the contract.
        let m = unsafe { &mut *msgs.add(i) };
        // SAFETY: each entry's msghdr is valid per the contract.
        let got = unsafe { recvmsg(fd, &mut m.msg_hdr, more) };
        if got < 0 {
            return if done > 0 { done } else { -1 };
        }
        m.msg_len = u32::try_from(got).unwrap_or(u32::MAX);
        done += 1;
    }
    done
}

/// `sendmmsg(2)`: on a UDP association, sends each message as its own datagram.
///
/// # Safety
/// Called by C with sendmmsg(2)'s contract.
#[no_mangle]
pub unsafe extern "C" fn sendmmsg(
    fd: c_int,
    msgs: *mut libc::mmsghdr,
    n: libc::c_uint,
    flags: c_int,
) -> c_int {
    let e = table::get(fd);
    if !matches!(e.kind, Kind::Udp | Kind::InetDgram | Kind::UdpPassed) {
        // SAFETY: forwarded arguments.
        return unsafe { crate::real::sendmmsg(fd, msgs, n, flags) };
    }
    let mut done: c_int = 0;
    for i in 0..n as usize {
        // SAFETY: msgs holds n entries per the contract.
        let m = unsafe { &mut *msgs.add(i) };
        // SAFETY: each entry's msghdr is valid per the contract.
        let sent = unsafe { sendmsg(fd, &m.msg_hdr, flags) };
        if sent < 0 {
            return if done > 0 { done } else { -1 };
        }
        m.msg_len = u32::try_from(sent).unwrap_or(u32::MAX);
        done += 1;
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shutdown_keeps_an_association_open() {
        let mut fds = [0; 2];
        // SAFETY: socketpair with a valid out array.
        let rc = unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, fds.as_mut_ptr()) };
        assert_eq!(rc, 0);
        let [mine, host] = fds;
        let mut e = Entry::new(Kind::Udp);
        table::set(mine, e);
        // SAFETY: an fd we own.
        assert_eq!(unsafe { shutdown(mine, libc::SHUT_WR) }, -1, "unconnected");
        e.peer = Some("10.170.160.3:7".parse().expect("address"));
        table::set(mine, e);
        // SAFETY: an fd we own.
        assert_eq!(unsafe { shutdown(mine, libc::SHUT_WR) }, 0);
        // The host side must not see the stream end.
        let mut b = [0u8; 1];
        // SAFETY: a valid one-byte buffer.
        let n = unsafe { libc::recv(host, b.as_mut_ptr().cast(), 1, libc::MSG_DONTWAIT) };
        assert_eq!(n, -1, "the association's stream is still open");
        table::clear(mine);
        // SAFETY: our fds.
        unsafe {
            libc::close(mine);
            libc::close(host);
        }
    }
}
