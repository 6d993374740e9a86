//! Listeners of supervised programs inside a VM, made as liboutsock makes them there
//! (`guest/shim/src/vmlisten.rs`): host-server listens on the VM's IPv6 address and delivers
//! each accepted connection as a new host→guest vsock stream that begins with an `Inbound`
//! frame. So a listener gets a vsock listening socket of its own, on a port the kernel picks,
//! named in the `Listen` request (no `pass_fd`); that socket is installed over the program's
//! descriptor (poll, epoll and select on it are the kernel's: readable when a connection
//! waits), and the request's stream is kept as the listener's companion here: closing it
//! closes host-server's listener. An accept takes one vsock stream and its `Inbound` frame
//! (the client's source-pool dummy, the local address) and hands the stream to the program.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddrV4;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use shared_proto::outsource::ListenRequest;
use shared_proto::{Errno, ToGuest, ToHost};

use crate::host::{self, HostServer};
use crate::sys;

/// How long an accepted stream may take to deliver its `Inbound` frame (as liboutsock).
const INBOUND_TIMEOUT: Duration = Duration::from_secs(10);

/// The companions of the listeners made here, by the listener's identity, each with the
/// number of its [`Companions::keep`] (in order). A companion is closed (and with it
/// host-server's listener) at the next listen made here after no process holds its listener
/// any more, or when the supervisor ends.
///
/// Whether a process holds a listener is read from `/proc` ([`held_by_others`]), which takes a
/// while, and meanwhile another listen may install its listener in its program and keep its
/// companion: that companion must not be judged by the older reading (its listener was not in
/// the program yet when the scan passed by). So a sweep closes only companions kept before its
/// [`Companions::mark`], taken before the scan. (The lab's guest starts three supervised
/// servers at once; now and then host-server closed the first one's listener a few
/// milliseconds after the next one's listen, while busybox-static httpd waited in accept on a
/// port nothing listened on.)
#[derive(Debug, Default)]
pub struct Companions(Mutex<Kept>);

/// Each companion and its keep's number, by its listener's identity; the next keep's number.
type Kept = (HashMap<(u64, u64), (UnixStream, u64)>, u64);

/// A listener made by [`listen`]: the vsock listening socket, the AF_INET address host-server
/// listens on, and the request's stream.
#[derive(Debug)]
pub struct Listening {
    pub listener: OwnedFd,
    pub local: SocketAddrV4,
    companion: UnixStream,
}

/// Asks host-server to listen on `addr` for a vsock listener of our own.
///
/// # Errors
/// The errno for the program's `listen`.
pub fn listen(host: &HostServer, addr: SocketAddrV4, backlog: u32) -> Result<Listening, Errno> {
    let (listener, port) = sys::vsock_listener(i32::try_from(backlog).unwrap_or(i32::MAX))
        .map_err(|e| Errno(u16::try_from(e.raw_os_error().unwrap_or(libc::EIO)).unwrap_or(5)))?;
    let answer = host.request(&ToHost::Listen(ListenRequest {
        addr,
        backlog,
        pass_fd: false,
        vsock_port: port,
        channel: false,
    }))?;
    match answer.msg {
        ToGuest::Listening { local } => Ok(Listening {
            listener,
            local,
            companion: answer.stream,
        }),
        ToGuest::Failed(e) => Err(e),
        _ => Err(Errno::EPROTO),
    }
}

impl Companions {
    /// Keeps `l`'s companion for the listener whose identity is `id` (already installed in its
    /// program).
    pub fn keep(&self, id: (u64, u64), l: Listening) {
        let mut guard = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let (map, kept) = &mut *guard;
        map.insert(id, (l.companion, *kept));
        *kept += 1;
    }

    /// Where the keeps stand now: a sweep given this mark judges only the companions kept
    /// before it. Taken before reading which sockets are live.
    pub fn mark(&self) -> u64 {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).1
    }

    /// Closes the companions kept before `mark` whose listener's socket inode is not in `live`
    /// (the sockets some process held when read, after `mark`), so that host-server closes
    /// those listeners and their ports can be listened on again. Returns how many it closed.
    pub fn sweep(&self, mark: u64, live: &HashSet<u64>) -> usize {
        let mut guard = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let map = &mut guard.0;
        let before = map.len();
        map.retain(|(_, ino), (_, kept)| *kept >= mark || live.contains(ino));
        before - map.len()
    }
}

/// The inodes of the sockets that processes other than this one hold (`socket:[N]` links
/// under `/proc/*/fd`): a listener only the supervisor still holds (a blocking accept's copy,
/// for up to its recheck interval after the program died) counts as closed.
#[must_use]
pub fn held_by_others() -> HashSet<u64> {
    sys::socket_inodes(true)
}

/// The next connection waiting on vsock listener `listener` (`None`: none waits), after its
/// `Inbound` frame: the stream, the peer (the client's dummy) and the local address. A stream
/// that brings no `Inbound` frame is dropped, and the next one taken.
///
/// # Errors
/// accept's errno.
pub fn take(listener: &OwnedFd) -> Result<Option<(OwnedFd, SocketAddrV4, SocketAddrV4)>, i32> {
    loop {
        let conn = match sys::accept_ready(listener.as_raw_fd()) {
            Ok(Some(c)) => UnixStream::from(c),
            Ok(None) => return Ok(None),
            Err(e) => return Err(e.raw_os_error().unwrap_or(libc::EIO)),
        };
        if conn.set_read_timeout(Some(INBOUND_TIMEOUT)).is_err() {
            continue;
        }
        if let Ok((ToGuest::Inbound { peer, local }, None)) = host::read_frame(&conn) {
            if conn.set_read_timeout(None).is_ok() {
                return Ok(Some((conn.into(), peer, local)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::io::{Read, Write};
    use std::os::unix::net::UnixListener;

    use shared_proto::to_vec;

    use super::*;

    /// A Unix listener stands in for the vsock one: accepting and reading the frame are the
    /// same calls.
    #[test]
    fn each_stream_is_taken_after_its_inbound_frame() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.sock");
        let l = UnixListener::bind(&path).unwrap();
        let listener = OwnedFd::from(l);
        assert!(take(&listener).unwrap().is_none());

        let peer: SocketAddrV4 = "172.21.112.1:4000".parse().unwrap();
        let local: SocketAddrV4 = "0.0.0.0:8082".parse().unwrap();
        // A stream that brings no Inbound frame is dropped; the next one is taken.
        let mut junk = UnixStream::connect(&path).unwrap();
        junk.write_all(&to_vec(&ToGuest::Failed(Errno::EPERM)).unwrap())
            .unwrap();
        let mut good = UnixStream::connect(&path).unwrap();
        let mut frame = to_vec(&ToGuest::Inbound { peer, local }).unwrap();
        frame.extend_from_slice(b"GET /");
        good.write_all(&frame).unwrap();

        let (conn, p, l) = take(&listener).unwrap().unwrap();
        assert_eq!((p, l), (peer, local));
        // The bytes after the frame are the program's.
        let mut conn = UnixStream::from(conn);
        let mut rest = [0u8; 5];
        conn.read_exact(&mut rest).unwrap();
        assert_eq!(&rest, b"GET /");
        let mut buf = [0u8; 1];
        assert_eq!(junk.read(&mut buf).unwrap(), 0);
        assert!(take(&listener).unwrap().is_none());
    }

    #[test]
    fn sockets_only_we_hold_do_not_count() {
        let (a, _b) = UnixStream::pair().unwrap();
        let (_, ino) = sys::identity(a.as_raw_fd()).unwrap();
        assert!(!held_by_others().contains(&ino));
    }

    #[test]
    fn companions_of_listeners_nobody_holds_are_closed() {
        let c = Companions::default();
        let (kept, mut kept_host) = UnixStream::pair().unwrap();
        let (gone, mut gone_host) = UnixStream::pair().unwrap();
        let listening = |companion| Listening {
            listener: OwnedFd::from(UnixStream::pair().unwrap().0),
            local: "0.0.0.0:8082".parse().unwrap(),
            companion,
        };
        c.keep((1, 10), listening(kept));
        c.keep((1, 20), listening(gone));
        // A listen whose scan of /proc began before this companion was kept: its listener was
        // not in its program yet when the scan passed by, so the scan cannot judge it.
        let mark = c.mark();
        let (young, mut young_host) = UnixStream::pair().unwrap();
        c.keep((1, 30), listening(young));
        assert_eq!(c.sweep(mark, &HashSet::from([10])), 1);
        let mut buf = [0u8; 1];
        // host-server sees the swept companion's end, and only that one.
        assert_eq!(gone_host.read(&mut buf).unwrap(), 0);
        kept_host.set_nonblocking(true).unwrap();
        assert!(kept_host.read(&mut buf).is_err());
        young_host.set_nonblocking(true).unwrap();
        assert!(young_host.read(&mut buf).is_err());
        // The next sweep, marked after it, judges it.
        assert_eq!(c.sweep(c.mark(), &HashSet::from([10])), 1);
        assert_eq!(young_host.read(&mut buf).unwrap(), 0);
    }
}
