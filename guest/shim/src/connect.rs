//! An outsourced TCP connect, called by `interpose::connect` for a non-loopback IPv4
//! destination: host-server connects over IPv6 and either passes the socket back (process mode)
//! or relays over the request's own stream (a VM, or the guest DNS address), which then takes
//! the program's fd number; a blocking connect waits here for the handshake.

use std::net::SocketAddrV4;

use libc::c_int;
use shared_proto::outsource::ConnectRequest;
use shared_proto::{Errno, ToGuest, ToHost};

use crate::fd::{flags_of, replace_fd, set_errno, unexpected};
use crate::sockopt::{copy_options, socket_option};
use crate::table::{self, Entry, Kind};
use crate::transport::{self, Stream};

/// Connects the program's `fd` (in state `entry`) to `dest` through host-server; returns what
/// connect(2) returns.
pub(crate) fn outsource_connect(fd: c_int, entry: Entry, dest: SocketAddrV4) -> c_int {
    let flags = flags_of(fd);
    let nonblocking = flags.status & libc::O_NONBLOCK != 0;
    let stream = match Stream::open() {
        Ok(s) => s,
        Err(e) => return set_errno(e),
    };
    // In a VM there is no descriptor to pass: host-server relays over the vsock stream. In
    // process mode the socket always comes back while its connect is under way, and a blocking
    // connect waits for it here, on the program's own socket: the handshake overlaps the
    // hand-over, and its end wakes the program directly instead of host-server first.
    let pass_fd = transport::vsock_port().is_none();
    let req = ToHost::Connect(ConnectRequest {
        dest,
        pass_fd,
        nonblocking: nonblocking || pass_fd,
    });
    let answer = stream.send(&req).and_then(|()| stream.recv());
    match answer {
        Ok((
            ToGuest::Connected {
                local,
                peer,
                in_progress,
                ..
            },
            passed,
        )) => {
            // With a passed fd the program's fd becomes the host's IPv6 socket. Without one
            // (the guest DNS address, served by dns-cache) host-server relays: the stream itself
            // becomes the program's socket and carries the connection's bytes.
            let installed = match passed {
                Some(host_fd) => {
                    copy_options(fd, host_fd, entry.options);
                    replace_fd(host_fd, fd, &flags)
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
                    peer: Some(peer),
                    ..entry
                },
            );
            match (in_progress, nonblocking) {
                (false, _) => 0,
                (true, true) => set_errno(Errno::EINPROGRESS),
                (true, false) => finish_blocking_connect(fd),
            }
        }
        other => unexpected(&other),
    }
}

/// A blocking connect whose socket came back under way: waits until it is writable, as the
/// kernel's own blocking connect would, and reports its outcome (SO_ERROR). SO_SNDTIMEO bounds
/// the wait as it bounds a native connect (then EINPROGRESS); signals do not end it.
fn finish_blocking_connect(fd: c_int) -> c_int {
    let zero = libc::timeval {
        tv_sec: 0,
        tv_usec: 0,
    };
    let limit_ms = match socket_option(fd, libc::SO_SNDTIMEO, zero) {
        Some(tv) if tv.tv_sec > 0 || tv.tv_usec > 0 => tv.tv_sec * 1000 + tv.tv_usec / 1000,
        _ => -1,
    };
    let start = std::time::Instant::now();
    loop {
        let timeout = if limit_ms < 0 {
            -1
        } else {
            let spent = i64::try_from(start.elapsed().as_millis()).unwrap_or(i64::MAX);
            if spent >= limit_ms {
                return set_errno(Errno::EINPROGRESS);
            }
            c_int::try_from(limit_ms - spent).unwrap_or(c_int::MAX)
        };
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut p, 1, timeout) };
        if n > 0 {
            break;
        }
        // 0: the time ran out (checked above); EINTR: a signal, which a connect waits through.
        if n < 0 && transport::last_errno() != Errno::EINTR {
            return set_errno(transport::last_errno());
        }
    }
    match socket_option(fd, libc::SO_ERROR, 0 as c_int) {
        Some(0) => 0,
        Some(e) => set_errno(Errno(u16::try_from(e).unwrap_or(5))),
        None => set_errno(transport::last_errno()),
    }
}
