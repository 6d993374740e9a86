//! `getsockopt`/`setsockopt` on a socket made here inside a VM, where it is a vsock stream (or
//! vsock listener) standing in for the program's TCP socket: `AF_VSOCK` has no TCP or IP
//! options (ENOPROTOOPT) and reports its own domain, so those options answer by the rule
//! liboutsock answers by (`shared_proto::sockopt`): set ones are accepted with no effect,
//! read ones answer as an idle AF_INET connection, with Linux's lengths and errnos.
//!
//! The filter notifies only those levels, and only inside a VM (`filter`); a call on any other
//! socket continues. The pointers are read once: `*optlen` (and, for a set, the value, only to
//! fail as natively when it cannot be read); nothing the kernel would act on is read again.
//! What is written goes into the program's memory only while the caller still waits.

use shared_proto::sockopt::{self, Get, Reply, Set, StandIn};

use crate::outcome::Outcome;
use crate::sys::{self, Listener, Notif};

/// The answer to `getsockopt`/`setsockopt` notification `n` on `stand_in`, a socket made here.
#[must_use]
pub(crate) fn answer(listener: &Listener, n: &Notif, stand_in: StandIn) -> Outcome {
    let [_, level, name, val, len, _] = n.args;
    // The level and name are ints, as is setsockopt's optlen: the kernel reads 32 bits.
    #[allow(clippy::cast_possible_truncation)]
    let (level, name, optlen) = (level as i32, name as i32, len as u32);
    if n.nr == libc::SYS_setsockopt {
        set(n, level, name, val, optlen, stand_in)
    } else {
        get(listener, n, level, name, (val, len), stand_in)
    }
}

fn get(
    listener: &Listener,
    n: &Notif,
    level: i32,
    name: i32,
    (val, len_ptr): (u64, u64),
    stand_in: StandIn,
) -> Outcome {
    let mut len = [0u8; 4];
    let optlen = (len_ptr != 0 && sys::read_into(n.pid, len_ptr, &mut len).is_ok())
        .then(|| i32::from_ne_bytes(len));
    match (
        sockopt::get(level, name, stand_in, optlen.unwrap_or(0)),
        optlen,
    ) {
        (Get::Kernel, _) => Outcome::Continue,
        (_, None) => Outcome::Fail(libc::EFAULT),
        (Get::Fail(e), _) => Outcome::Fail(i32::from(e.0)),
        (Get::Reply(r), Some(_)) => {
            if !listener.valid(n.id) {
                return Outcome::Gone;
            }
            write_reply(n.pid, val, len_ptr, &r)
        }
    }
}

/// Writes `reply` as the kernel does: its length at `len_ptr`, its bytes at `val`.
fn write_reply(pid: u32, val: u64, len_ptr: u64, reply: &Reply) -> Outcome {
    let mut buf = [0; sockopt::TCP_INFO_LEN];
    let bytes = reply.bytes(&mut buf);
    #[allow(clippy::cast_possible_truncation)] // At most sizeof(struct tcp_info).
    let written = (bytes.len() as u32).to_ne_bytes();
    match sys::write_mem(pid, len_ptr, &written).and_then(|()| sys::write_mem(pid, val, bytes)) {
        Ok(()) => Outcome::Return(0),
        Err(_) => Outcome::Fail(libc::EFAULT),
    }
}

fn set(n: &Notif, level: i32, name: i32, val: u64, optlen: u32, stand_in: StandIn) -> Outcome {
    match sockopt::set(level, name, stand_in, optlen) {
        Set::Kernel => Outcome::Continue,
        Set::Fail(e) => Outcome::Fail(i32::from(e.0)),
        Set::Accept => {
            // Natively the value is copied in (an int's worth for most): EFAULT if it cannot be.
            let mut value = [0u8; 4];
            let want = &mut value[..(optlen as usize).min(4)];
            match sys::read_into(n.pid, val, want) {
                Ok(()) => Outcome::Return(0),
                Err(_) => Outcome::Fail(libc::EFAULT),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::os::unix::net::UnixStream;

    use shared_proto::sockopt::{IPPROTO_IP, IPPROTO_TCP, SOL_SOCKET, TCP_INFO, TCP_NODELAY};

    use super::*;

    const VM: StandIn = StandIn {
        listener: false,
        vsock: true,
    };

    /// A notification of this process's call (its memory is what is read and written), on a
    /// listener that is no seccomp listener: no notification id is valid on it.
    fn call(nr: i64, args: [u64; 6]) -> (Listener, Notif) {
        let (fd, _) = UnixStream::pair().unwrap();
        let n = Notif {
            id: 1,
            pid: std::process::id(),
            nr,
            args,
        };
        (Listener::new(fd.into()), n)
    }

    fn addr<T>(x: &T) -> u64 {
        std::ptr::from_ref(x) as u64
    }

    #[allow(clippy::cast_sign_loss)]
    fn args(level: i32, name: i32, val: u64, len: u64) -> [u64; 6] {
        [3, level as u64, name as u64, val, len, 0]
    }

    #[test]
    fn set_is_accepted_once_the_value_reads_else_fails_as_natively() {
        let one = 1i32;
        let set = libc::SYS_setsockopt;
        let (l, n) = call(set, args(IPPROTO_TCP, TCP_NODELAY, addr(&one), 4));
        assert_eq!(answer(&l, &n, VM), Outcome::Return(0));
        let (l, n) = call(set, args(IPPROTO_TCP, TCP_NODELAY, 8, 4));
        assert_eq!(answer(&l, &n, VM), Outcome::Fail(libc::EFAULT));
        let (l, n) = call(set, args(IPPROTO_TCP, TCP_NODELAY, addr(&one), 2));
        assert_eq!(answer(&l, &n, VM), Outcome::Fail(libc::EINVAL));
        let (l, n) = call(set, args(IPPROTO_IP, libc::IP_TOS, addr(&one), 4));
        assert_eq!(answer(&l, &n, VM), Outcome::Return(0));
        // The kernel's own: SOL_SOCKET options, and anything in process mode.
        let (l, n) = call(set, args(SOL_SOCKET, libc::SO_KEEPALIVE, addr(&one), 4));
        assert_eq!(answer(&l, &n, VM), Outcome::Continue);
        let passed = StandIn { vsock: false, ..VM };
        let (l, n) = call(set, args(IPPROTO_TCP, TCP_NODELAY, addr(&one), 4));
        assert_eq!(answer(&l, &n, passed), Outcome::Continue);
    }

    #[test]
    fn get_reads_the_length_once_and_answers_only_a_waiting_caller() {
        let get = libc::SYS_getsockopt;
        let v = [0xffu8; 8];
        let len = 8u32;
        let (l, n) = call(get, args(IPPROTO_TCP, TCP_NODELAY, addr(&v), addr(&len)));
        // Answered by the rule, but the caller (this fake id) no longer waits: nothing written.
        assert_eq!(answer(&l, &n, VM), Outcome::Gone);
        assert_eq!((v, len), ([0xff; 8], 8));
        let (l, n) = call(get, args(IPPROTO_TCP, TCP_NODELAY, addr(&v), 0));
        assert_eq!(answer(&l, &n, VM), Outcome::Fail(libc::EFAULT));
        let bad = -1i32;
        let (l, n) = call(get, args(IPPROTO_IP, libc::IP_TTL, addr(&v), addr(&bad)));
        assert_eq!(answer(&l, &n, VM), Outcome::Fail(libc::EINVAL));
        let (l, n) = call(get, args(SOL_SOCKET, libc::SO_SNDBUF, addr(&v), addr(&len)));
        assert_eq!(answer(&l, &n, VM), Outcome::Continue);
        // A null length on an option the kernel answers is the kernel's EFAULT to give.
        let (l, n) = call(get, args(SOL_SOCKET, libc::SO_SNDBUF, addr(&v), 0));
        assert_eq!(answer(&l, &n, VM), Outcome::Continue);
    }

    #[test]
    fn a_reply_is_written_as_the_kernel_writes_it() {
        let pid = std::process::id();
        let mut info = [0xffu8; 300];
        let mut len = 300u32;
        let Get::Reply(r) = sockopt::get(IPPROTO_TCP, TCP_INFO, VM, 300) else {
            panic!("TCP_INFO is answered");
        };
        let (val, len_ptr) = (
            info.as_mut_ptr() as u64,
            std::ptr::from_mut(&mut len) as u64,
        );
        assert_eq!(write_reply(pid, val, len_ptr, &r), Outcome::Return(0));
        assert_eq!(len, 232);
        assert!(info[..232].iter().all(|&b| b == 0));
        assert!(info[232..].iter().all(|&b| b == 0xff));
        let Get::Reply(r) = sockopt::get(SOL_SOCKET, libc::SO_DOMAIN, VM, 4) else {
            panic!("SO_DOMAIN is answered");
        };
        let mut domain = 0i32;
        let val = std::ptr::from_mut(&mut domain) as u64;
        assert_eq!(write_reply(pid, val, len_ptr, &r), Outcome::Return(0));
        assert_eq!((domain, len), (libc::AF_INET, 4));
        assert_eq!(
            write_reply(pid, 8, len_ptr, &r),
            Outcome::Fail(libc::EFAULT)
        );
    }
}
