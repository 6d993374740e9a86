//! The supervisor's keeper, seen from the program: process-mode listeners and UDP servers get
//! a packet channel made here (an `AF_UNIX` `SOCK_SEQPACKET` pair) whose host's end goes with
//! the request to host-server (`ListenRequest::channel`, `UdpRequest::channel`) and then, under
//! `outsock run`, to the keeper named in `OUTSOCK_KEEPER` ([`give`]), which registers it again
//! whenever host-server comes back (the supervisor's `keeper`). So the program's end outlives
//! host-server and never reads EOF meanwhile. Where there is no keeper, `listen` and `dgram`
//! keep a hidden copy of the host's end in the process instead (`table::set_kept`).

use libc::{c_int, socklen_t};
use shared_proto::outsource::KEEPER_ENV;
use shared_proto::Errno;

use crate::real;
use crate::table;
use crate::transport::last_errno;

/// Hands the channel whose host's end is `host_end` to the keeper named in `OUTSOCK_KEEPER`,
/// with its request frame `bytes`. Whether the keeper took it (then this process keeps no
/// copy of its own).
pub(crate) fn give(bytes: &[u8], host_end: &Owned) -> bool {
    let keeper = std::env::var_os(KEEPER_ENV).filter(|k| !k.is_empty());
    keeper.is_some_and(|k| hand_over(k.as_encoded_bytes(), bytes, host_end.0))
}

/// A descriptor of ours, closed when dropped.
pub(crate) struct Owned(pub(crate) c_int);

impl Owned {
    pub(crate) fn into_raw(self) -> c_int {
        let fd = self.0;
        std::mem::forget(self);
        fd
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        // SAFETY: ours to close.
        unsafe { real::close(self.0) };
    }
}

/// A close-on-exec `AF_UNIX` `SOCK_SEQPACKET` pair: (the program's end, the host's end).
pub(crate) fn seqpacket_pair() -> Result<(Owned, Owned), Errno> {
    let mut fds = [0 as c_int; 2];
    // SAFETY: socketpair writes two descriptors into a valid array.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(last_errno());
    }
    // Stale entries for these numbers (closed behind our back) must not make them look like a
    // program's sockets.
    table::clear(fds[0]);
    table::clear(fds[1]);
    Ok((Owned(fds[0]), Owned(fds[1])))
}

/// Hands a channel over to the keeper at abstract socket `name`: one packet, the request frame
/// `bytes` (`Listen` or `Udp`) with the host's end `host_end` attached. Whether it went.
fn hand_over(name: &[u8], bytes: &[u8], host_end: c_int) -> bool {
    // SAFETY: plain socket(2) call.
    let fd = unsafe { real::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return false;
    }
    table::clear(fd);
    let conn = Owned(fd);
    // SAFETY: sockaddr_un is plain data; zeroed is a valid value.
    let mut sun: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
    // An abstract name: a NUL, then the name (not NUL-terminated).
    if name.len() + 1 > sun.sun_path.len() {
        return false;
    }
    for (d, s) in sun.sun_path[1..].iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    #[allow(clippy::cast_possible_truncation)] // At most 110 bytes.
    let len = (std::mem::size_of::<libc::sa_family_t>() + 1 + name.len()) as socklen_t;
    // SAFETY: `sun` is a valid sockaddr_un of at least `len` bytes.
    if unsafe { real::connect(conn.0, std::ptr::from_ref(&sun).cast(), len) } != 0 {
        return false;
    }
    // Only a keeper of our own uid (or root's) gets the channel: whoever holds its host's end
    // could deliver connections or datagrams to the program.
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    #[allow(clippy::cast_possible_truncation)] // 12 bytes.
    let mut clen = std::mem::size_of::<libc::ucred>() as socklen_t;
    // SAFETY: `cred` is writable for `clen` bytes.
    let rc = unsafe {
        real::getsockopt(
            conn.0,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            std::ptr::addr_of_mut!(cred).cast(),
            &mut clen,
        )
    };
    // SAFETY: geteuid(2) cannot fail.
    if rc != 0 || (cred.uid != 0 && cred.uid != unsafe { libc::geteuid() }) {
        return false;
    }
    if !outsock_fdpass::sendmsg_fd::<real::Real>(conn.0, bytes, host_end, libc::MSG_NOSIGNAL)
        .is_ok_and(|n| n == bytes.len())
    {
        return false;
    }
    // The keeper's one-byte acknowledgement: it took the channel (it may refuse silently, e.g.
    // a program that changed its uid before listening).
    crate::transport::set_receive_timeout(conn.0, KEEPER_ACK_SECS);
    let mut ack = 0u8;
    // SAFETY: one byte into a valid buffer.
    let n = unsafe { real::read(conn.0, std::ptr::from_mut(&mut ack).cast(), 1) };
    n == 1 && ack == 1
}

/// How long the keeper may take to acknowledge a channel.
const KEEPER_ACK_SECS: libc::time_t = 2;
