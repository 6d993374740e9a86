//! Outsourced UDP. The first time a program sends from (or connects) an AF_INET datagram
//! socket to a non-loopback address, the shim opens a UDP association with host-server and
//! puts the association's stream on the program's fd. From then on each datagram is one
//! `Datagram` frame with its IPv4 address; `poll`/`epoll` readiness is the stream's own.
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
//! and VM guests (no descriptor can cross into a VM) always use associations.

use std::net::{Ipv4Addr, SocketAddrV4};

use libc::{c_int, c_void, iovec, msghdr, sockaddr, socklen_t};
use shared_proto::outsource::{Datagram, UdpConnectRequest, UdpRequest};
use shared_proto::{to_vec, Errno, ToGuest, ToHost};

use crate::sockaddr::{is_local, read_v4, write_v4};
use crate::table::{self, Entry, Kind};
use crate::transport::{self, recv_frame, Stream};
use crate::{interpose, real};

/// Opens the association for `fd` and installs it; returns the new entry.
pub fn associate(fd: c_int, entry: Entry) -> Result<Entry, Errno> {
    let flags = interpose::flags_of(fd);
    let stream = Stream::open()?;
    let bind = entry
        .local
        .unwrap_or(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
    stream.send(&ToHost::Udp(UdpRequest { bind }))?;
    let local = match stream.recv()? {
        (ToGuest::Associated { local }, None) => local,
        (ToGuest::Failed(e), None) => return Err(e),
        (_, passed) => {
            if let Some(p) = passed {
                // SAFETY: an fd we were passed and do not use.
                unsafe { real::close(p) };
            }
            return Err(Errno::EPROTO);
        }
    };
    crate::transport::clear_answer_timeout(stream.fd());
    interpose::replace_fd(stream.into_raw(), fd, &flags)?;
    let e = Entry {
        kind: Kind::Udp,
        local: Some(local),
        ..entry
    };
    table::set(fd, e);
    Ok(e)
}

/// Writes one whole frame, waiting for room even on a non-blocking fd: a half-written frame
/// would corrupt the stream, and a datagram is small.
fn write_frame(fd: c_int, bytes: &[u8]) -> Result<(), Errno> {
    let mut off = 0;
    while off < bytes.len() {
        let rest = &bytes[off..];
        // SAFETY: `rest` is valid for its length.
        let n = unsafe {
            real_sendto(
                fd,
                rest.as_ptr().cast(),
                rest.len(),
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
                std::ptr::null(),
                0,
            )
        };
        if n >= 0 {
            off += usize::try_from(n).unwrap_or(0);
            continue;
        }
        let e = std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO);
        match e {
            libc::EINTR => {}
            libc::EAGAIN => {
                let mut p = libc::pollfd {
                    fd,
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(&mut p, 1, 1000) };
            }
            e => return Err(Errno(u16::try_from(e).unwrap_or(5))),
        }
    }
    Ok(())
}

/// Sends `data` on the associated `fd` to `to` (or the connected peer).
fn send_on(fd: c_int, e: Entry, data: &[u8], to: Option<SocketAddrV4>) -> isize {
    let Some(dest) = to.or(e.peer) else {
        return errno_isize(Errno(libc::EDESTADDRREQ as u16));
    };
    if is_local(dest) {
        // The fd is now host-server's stream; loopback from it would need a second socket.
        return errno_isize(Errno::ENETUNREACH);
    }
    let Ok(frame) = to_vec(&ToHost::Datagram(Datagram {
        addr: dest,
        payload: data.to_vec(),
    })) else {
        return errno_isize(Errno::EMSGSIZE);
    };
    match write_frame(fd, &frame) {
        Ok(()) => isize::try_from(data.len()).unwrap_or(isize::MAX),
        Err(e) => errno_isize(e),
    }
}

fn errno_isize(e: Errno) -> isize {
    // SAFETY: this thread's errno slot.
    unsafe { *libc::__errno_location() = c_int::from(e.0) };
    -1
}

/// Receives one datagram on the associated `fd`: its payload and source.
fn recv_on(fd: c_int, e: Entry, flags: c_int) -> Result<(Vec<u8>, SocketAddrV4), Errno> {
    // SAFETY: F_GETFL query on the program's fd.
    let status = unsafe { real::fcntl(fd, libc::F_GETFL, 0) };
    let rflags = if flags & libc::MSG_DONTWAIT != 0 || status & libc::O_NONBLOCK != 0 {
        libc::MSG_DONTWAIT
    } else {
        0
    };
    loop {
        match recv_frame(fd, rflags)? {
            (ToGuest::Datagram(d), None) => {
                // A connected UDP socket only hears from its peer, as in the kernel.
                if e.peer.is_some_and(|p| p != d.addr) {
                    continue;
                }
                return Ok((d.payload, d.addr));
            }
            (ToGuest::Failed(err), None) => return Err(err),
            (_, passed) => {
                if let Some(p) = passed {
                    // SAFETY: an fd we were passed and do not use.
                    unsafe { real::close(p) };
                }
                return Err(Errno::EPROTO);
            }
        }
    }
}

/// The entry to send with, associating first if the socket is still a plain AF_INET one that
/// sends off loopback. `None`: not ours, use the real call.
fn sending_entry(fd: c_int, to: Option<SocketAddrV4>) -> Option<Result<Entry, Errno>> {
    let e = table::get(fd);
    match e.kind {
        Kind::Udp => Some(Ok(e)),
        Kind::InetDgram if !e.local_only && to.is_some_and(|a| !is_local(a)) => {
            Some(associate(fd, e))
        }
        _ => None,
    }
}

/// `connect(2)` on a datagram socket: in process mode a passed, connected host socket (see the
/// module docs); otherwise associate (if off loopback) and remember the peer. `None`: not ours,
/// use the real call.
///
/// # Safety
/// `addr` is null or valid for `len` bytes.
pub unsafe fn connect(fd: c_int, e: Entry, addr: *const sockaddr, len: socklen_t) -> Option<c_int> {
    if e.kind == Kind::UdpPassed {
        let fresh = match release(fd, e) {
            Ok(f) => f,
            Err(err) => return Some(interpose::set_errno(err)),
        };
        // SAFETY: the caller's addr/len, passed on.
        return unsafe { connect(fd, fresh, addr, len) };
    }
    // SAFETY: the caller's addr/len.
    let to = unsafe { read_v4(addr, len) };
    let e = match (e.kind, to) {
        (Kind::Udp, _) => e,
        (Kind::InetDgram, Some(a)) if !e.local_only && !is_local(a) => {
            if transport::vsock_port().is_none() {
                if let Some(rc) = connect_passed(fd, e, a) {
                    return Some(rc);
                }
            }
            match associate(fd, e) {
                Ok(e) => e,
                Err(err) => return Some(interpose::set_errno(err)),
            }
        }
        _ => return None,
    };
    // AF_UNSPEC (or anything not AF_INET) dissolves the association's default peer.
    table::set(fd, Entry { peer: to, ..e });
    Some(0)
}

/// Asks host-server for a UDP socket connected to `dest` and installs it on `fd`. `None`: the
/// destination needs an association (host-server answered EOPNOTSUPP: the guest DNS address).
fn connect_passed(fd: c_int, e: Entry, dest: SocketAddrV4) -> Option<c_int> {
    let flags = interpose::flags_of(fd);
    let stream = match Stream::open() {
        Ok(s) => s,
        Err(err) => return Some(interpose::set_errno(err)),
    };
    let bind = e
        .local
        .unwrap_or(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
    let answer = stream
        .send(&ToHost::UdpConnect(UdpConnectRequest { bind, dest }))
        .and_then(|()| stream.recv());
    match answer {
        Ok((ToGuest::Connected { local, .. }, Some(host_fd))) => {
            interpose::copy_options(fd, host_fd, e.options);
            if let Err(err) = interpose::replace_fd(host_fd, fd, &flags) {
                return Some(interpose::set_errno(err));
            }
            table::set(
                fd,
                Entry {
                    kind: Kind::UdpPassed,
                    local: Some(local),
                    peer: Some(dest),
                    ..e
                },
            );
            Some(0)
        }
        Ok((ToGuest::Failed(Errno::EOPNOTSUPP), None)) => None,
        other => Some(interpose::unexpected(&other)),
    }
}

/// Gives a passed UDP socket back: a fresh AF_INET datagram socket takes `fd`'s number (dup3
/// closes the host socket, freeing its port), recorded as bound where the program bound it.
fn release(fd: c_int, e: Entry) -> Result<Entry, Errno> {
    let flags = interpose::flags_of(fd);
    // SAFETY: plain socket(2) call.
    let placeholder =
        unsafe { real::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if placeholder < 0 {
        return Err(transport::last_errno());
    }
    table::clear(placeholder);
    interpose::replace_fd(placeholder, fd, &flags)?;
    let fresh = Entry {
        kind: Kind::InetDgram,
        // An ephemeral port was host-server's choice: the next socket gets its own.
        local: e.local.filter(|_| e.options & table::BOUND != 0),
        peer: None,
        local_only: false,
        options: e.options,
    };
    table::set(fd, fresh);
    Ok(fresh)
}

/// A send to another address than the peer on a passed UDP socket: it becomes an association
/// (as if unconnected) that keeps the peer as its default destination.
fn demote(fd: c_int, e: Entry) -> Result<Entry, Errno> {
    let fresh = release(fd, e)?;
    let assoc = associate(fd, fresh)?;
    let assoc = Entry {
        peer: e.peer,
        ..assoc
    };
    table::set(fd, assoc);
    Ok(assoc)
}

/// What a send on a passed UDP socket does with its address.
enum PassedSend {
    /// The real call without an address (none given, or the peer itself).
    Native,
    /// Another destination: through the association the socket became.
    Associated(Entry),
}

fn passed_send(fd: c_int, e: Entry, to: Option<SocketAddrV4>) -> Result<PassedSend, Errno> {
    match to {
        Some(a) if Some(a) != e.peer => demote(fd, e).map(PassedSend::Associated),
        _ => Ok(PassedSend::Native),
    }
}

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
        Ok((payload, from)) => {
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
    // SAFETY: msg is valid per the contract.
    let Some(m) = (unsafe { msg.as_mut() }) else {
        return errno_isize(Errno(libc::EFAULT as u16));
    };
    match recv_on(fd, e, flags) {
        Ok((payload, from)) => {
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
            m.msg_controllen = 0;
            m.msg_flags = if off < payload.len() {
                libc::MSG_TRUNC
            } else {
                0
            };
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
        return interpose::set_errno(Errno(libc::EINVAL as u16));
    }
    if e.peer.is_none() {
        return interpose::set_errno(Errno(libc::ENOTCONN as u16));
    }
    0
}

/// `recvmmsg(2)` (libuv and BIND's dig batch their receives): on a UDP association, fills the
/// vector one datagram at a time; the first call may block as recvmsg would, later ones don't.
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
