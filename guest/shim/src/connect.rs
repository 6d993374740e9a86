//! An outsourced TCP connect, called by `interpose::connect` for a non-loopback IPv4
//! destination that `lend` leaves to host-server (the guest DNS address, IPv4 egress, a VM,
//! lending switched off): host-server connects over IPv6 and either passes the socket back (process mode)
//! or relays over the request's own stream (a VM, or the guest DNS address), which then takes
//! the program's fd number; a blocking connect waits here for the handshake. A connect to a
//! resolv.conf nameserver on port 53 goes to the guest DNS address instead (DNS over TCP,
//! relayed to dns-cache), and getpeername still reports the nameserver (`nameserver`).

use std::net::SocketAddrV4;

use libc::c_int;
use shared_proto::translate::{connect_answer, connect_request, Connected};
use shared_proto::Errno;

use crate::fd::{flags_of, replace_fd, set_errno, unexpected};
use crate::nameserver;
use crate::real;
use crate::sockopt::copy_options;
use crate::table::{self, Entry, Kind};
use crate::transport::{self, Stream};

/// Connects the program's `fd` (in state `entry`) to `dest` through host-server; returns what
/// connect(2) returns.
pub(crate) fn outsource_connect(fd: c_int, entry: Entry, dest: SocketAddrV4) -> c_int {
    let flags = flags_of(fd);
    let nonblocking = flags.status & libc::O_NONBLOCK != 0;
    let (mut stream, kept) = match Stream::open_for_connect() {
        Ok(s) => s,
        Err(e) => return set_errno(e),
    };
    // In a VM there is no descriptor to pass: host-server relays over the vsock stream. In
    // process mode the socket always comes back while its connect is under way, and a blocking
    // connect waits for it here, on the program's own socket: the handshake overlaps the
    // hand-over, and its end wakes the program directly instead of host-server first.
    let pass_fd = transport::vsock_port().is_none();
    let wire = nameserver::redirect(dest);
    let req = connect_request(wire, pass_fd, nonblocking || pass_fd);
    let ask = |s: &Stream| s.send(&req).and_then(|()| s.recv());
    let (msg, passed) = match ask(&stream) {
        Ok(answer) => answer,
        // A kept stream host-server closed as the request went (its request timeout): the
        // request was not read; asked again on a new stream.
        Err(Errno::EPIPE | Errno::EPROTO | Errno::ECONNRESET) if kept => {
            stream = match Stream::open() {
                Ok(s) => s,
                Err(e) => return set_errno(e),
            };
            match ask(&stream) {
                Ok(answer) => answer,
                Err(e) => return set_errno(e),
            }
        }
        Err(e) => return set_errno(e),
    };
    match connect_answer(&msg) {
        Ok(Connected {
            local,
            peer,
            in_progress,
        }) => {
            // With a passed fd the program's fd becomes the host's IPv6 socket. Without one
            // (the guest DNS address, served by dns-cache) host-server relays: the stream itself
            // becomes the program's socket and carries the connection's bytes.
            let installed = match passed {
                Some(host_fd) => {
                    copy_options(fd, host_fd, entry.options);
                    let r = replace_fd(host_fd, fd, &flags);
                    // host-server keeps the stream that brought a socket while connecting.
                    stream.keep();
                    r
                }
                None => {
                    transport::clear_answer_timeout(stream.fd());
                    replace_fd(stream.into_raw(), fd, &flags)
                }
            };
            if let Err(e) = installed {
                return set_errno(e);
            }
            table::set(
                fd,
                Entry {
                    kind: Kind::Outsourced,
                    local: Some(local),
                    // The program connected to the nameserver, not to the guest DNS.
                    peer: Some(if wire == dest { peer } else { dest }),
                    ..entry
                },
            );
            match (in_progress, nonblocking) {
                (false, _) => 0,
                (true, true) => set_errno(Errno::EINPROGRESS),
                (true, false) => finish_blocking_connect(fd),
            }
        }
        Err(_) => unexpected(&Ok((msg, passed))),
    }
}

/// A blocking connect whose socket came back under way: the kernel's own blocking connect
/// finishes it. connect(2) again on the program's (now IPv6, still connecting) socket waits for
/// the handshake exactly as the first one would have: SO_SNDTIMEO bounds it, a signal whose
/// handler has SA_RESTART restarts the wait, and one without it gives EINTR while the connect
/// goes on in the background, so a later connect sees EALREADY (non-blocking), waits again
/// (blocking) or EISCONN, all from the kernel. The address is never looked at while the socket
/// is connecting; an AF_INET6 one keeps clear of AF_UNSPEC, which would disconnect it.
///
/// Most often the handshake is already over when the socket arrives (host-server's connect ran
/// it): a socket that polls writable with no error or hang-up is connected, which the connect
/// would only confirm (EISCONN, answered 0). Only a socket still connecting, or one whose
/// connect failed (its errno is the kernel's connect's), goes on to the connect, made with the
/// mark that keeps `outsock run`'s supervisor from being notified of it.
fn finish_blocking_connect(fd: c_int) -> c_int {
    if connected_now(fd) {
        return 0;
    }
    // SAFETY: sockaddr_in6 is plain data; all-zero is a valid value.
    let mut any: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    any.sin6_family = libc::AF_INET6 as libc::sa_family_t;
    #[allow(clippy::cast_possible_truncation)] // 28 bytes.
    let len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
    // SAFETY: a valid sockaddr_in6 of `len` bytes.
    let rc = unsafe { real::decided_connect(fd, std::ptr::from_ref(&any).cast(), len) };
    if rc == 0 {
        return 0;
    }
    match transport::last_errno() {
        // Done between the hand-over and this call.
        e if e == Errno(libc::EISCONN as u16) => 0,
        // SO_SNDTIMEO ran out: to the program this is still its first connect, which says so.
        Errno::EALREADY => set_errno(Errno::EINPROGRESS),
        e => set_errno(e),
    }
}

/// Whether TCP socket `fd` is connected right now: writable, without error or hang-up (a
/// socket still in its handshake is not writable).
fn connected_now(fd: c_int) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd; no wait.
    let ready = unsafe { libc::poll(&mut p, 1, 0) } == 1;
    ready
        && p.revents & libc::POLLOUT != 0
        && p.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) == 0
}
