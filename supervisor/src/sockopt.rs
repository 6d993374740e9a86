//! `getsockopt`/`setsockopt` on a socket made here, by the rule liboutsock answers by
//! (`shared_proto::sockopt`):
//!
//! - In process mode the stand-in is host-server's IPv6 TCP socket (a connection made or
//!   accepted here) or a listener's `AF_UNIX` `SOCK_SEQPACKET` packet channel: reading
//!   `SO_DOMAIN`, `SO_TYPE`, `SO_PROTOCOL` or `SO_ACCEPTCONN` answers as for the program's
//!   AF_INET (or dual-stack AF_INET6) TCP socket; on host-server's connected IPv6 UDP socket,
//!   as for an AF_INET UDP one (an association's end in the private network is a real AF_INET
//!   socket: the kernel answers). Nothing else is notified there.
//! - Inside a VM it is a vsock stream (or vsock listener): `AF_VSOCK` has no TCP or IP
//!   options (ENOPROTOOPT) and reports its own domain, so those options answer by the rule:
//!   a value set is checked as Linux checks it and kept ([`Memory`], for the options of
//!   `sockopt::REMEMBERED`), and read back as Linux reads it; one never set reads as an idle
//!   AF_INET connection's, with Linux's lengths and errnos.
//!
//! The filter notifies only those calls (`filter`); a call on any other socket continues. The
//! pointers are read once: `*optlen`, and for a set the value (at most an int's worth, as
//! Linux reads most); nothing the kernel would act on is read again. What is written into the
//! program's memory, or kept, is written or kept only while the caller still waits.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use shared_proto::sockopt::{self, Get, Remembered, Reply, Set, StandIn};

use crate::outcome::Outcome;
use crate::sys::{self, Listener, Notif};

/// A socket's identity: the device and inode of its open file (as `serve` knows sockets).
pub(crate) type Id = (u64, u64);

/// The smallest table that is swept.
const SWEEP_MIN: usize = 1024;

/// The option values set on the vsock stand-ins made here, by identity: at most one value per
/// option of `sockopt::REMEMBERED` each, only for sockets that set one. Swept, as `serve`'s
/// view table is, of sockets no process holds any more whenever it has doubled since the last
/// sweep; a socket installed here anew under an identity starts with nothing kept
/// ([`Memory::forget`]).
#[derive(Debug)]
pub(crate) struct Memory {
    table: Mutex<Table>,
}

#[derive(Debug)]
struct Table {
    map: HashMap<Id, Remembered>,
    sweep_at: usize,
}

impl Default for Memory {
    fn default() -> Self {
        Self {
            table: Mutex::new(Table {
                map: HashMap::new(),
                sweep_at: SWEEP_MIN,
            }),
        }
    }
}

impl Memory {
    fn with<T>(&self, f: impl FnOnce(&mut Table) -> T) -> T {
        f(&mut self.table.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The value kept for (`level`, `name`) on `id`.
    pub(crate) fn value(&self, id: Id, level: i32, name: i32) -> Option<i32> {
        self.with(|t| t.map.get(&id).and_then(|r| r.value(level, name)))
    }

    /// Keeps `value` (none: forgets it) for (`level`, `name`) on `id`.
    pub(crate) fn keep(&self, id: Id, level: i32, name: i32, value: Option<i32>) {
        self.keep_live(id, level, name, value, || sys::socket_inodes(false));
    }

    /// [`Memory::keep`], `live` giving the inodes of the sockets some process holds.
    fn keep_live(
        &self,
        id: Id,
        level: i32,
        name: i32,
        value: Option<i32>,
        live: impl FnOnce() -> std::collections::HashSet<u64>,
    ) {
        self.with(|t| {
            let mut kept = t.map.get(&id).copied().unwrap_or_default();
            kept.keep(level, name, value);
            if kept.is_empty() {
                t.map.remove(&id);
                return;
            }
            t.map.insert(id, kept);
            if t.map.len() >= t.sweep_at {
                let live = live();
                t.map.retain(|(_, ino), _| live.contains(ino));
                t.sweep_at = (t.map.len() * 2).max(SWEEP_MIN);
            }
        });
    }

    /// Forgets every value kept for `id`: a socket made here now has that identity.
    pub(crate) fn forget(&self, id: Id) {
        self.with(|t| t.map.remove(&id));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.with(|t| t.map.len())
    }
}

/// The answer to `getsockopt`/`setsockopt` notification `n` on `stand_in`, the socket made
/// here whose identity is `id`; `memory` keeps what a VM's stand-in was set to.
#[must_use]
pub(crate) fn answer(
    listener: &Listener,
    n: &Notif,
    stand_in: StandIn,
    memory: &Memory,
    id: Id,
) -> Outcome {
    let [_, level, name, val, len, _] = n.args;
    // The level and name are ints, as is setsockopt's optlen: the kernel reads 32 bits.
    #[allow(clippy::cast_possible_truncation)]
    let (level, name, optlen) = (level as i32, name as i32, len as u32);
    if n.nr == libc::SYS_setsockopt {
        let kept = |v| memory.keep(id, level, name, v);
        set(listener, n, (level, name), (val, optlen), stand_in, kept)
    } else {
        let set = memory.value(id, level, name);
        get(listener, n, (level, name), (val, len), stand_in, set)
    }
}

fn get(
    listener: &Listener,
    n: &Notif,
    (level, name): (i32, i32),
    (val, len_ptr): (u64, u64),
    stand_in: StandIn,
    set: Option<i32>,
) -> Outcome {
    let mut len = [0u8; 4];
    let optlen = (len_ptr != 0 && sys::read_into(n.pid, len_ptr, &mut len).is_ok())
        .then(|| i32::from_ne_bytes(len));
    match (
        sockopt::get(level, name, stand_in, optlen.unwrap_or(0), set),
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

/// A `setsockopt`: accepted values are handed to `keep` (what reads back) once the caller is
/// known to still wait.
fn set(
    listener: &Listener,
    n: &Notif,
    (level, name): (i32, i32),
    (val, optlen): (u64, u32),
    stand_in: StandIn,
    keep: impl FnOnce(Option<i32>),
) -> Outcome {
    match sockopt::set(level, name, stand_in, optlen) {
        Set::Kernel => Outcome::Continue,
        Set::Fail(e) => Outcome::Fail(i32::from(e.0)),
        Set::Accept => {
            // Natively the value is copied in (an int's worth for most): EFAULT if it cannot be.
            let mut value = [0u8; 4];
            let value = &mut value[..(optlen as usize).min(4)];
            if sys::read_into(n.pid, val, value).is_err() {
                return Outcome::Fail(libc::EFAULT);
            }
            match sockopt::read_back(level, name, value) {
                Err(e) => Outcome::Fail(i32::from(e.0)),
                Ok(_) if !sockopt::REMEMBERED.contains(&(level, name)) => Outcome::Return(0),
                Ok(v) => {
                    if !listener.valid(n.id) {
                        return Outcome::Gone;
                    }
                    keep(v);
                    Outcome::Return(0)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::os::unix::net::UnixStream;

    use shared_proto::sockopt::{
        IPPROTO_IP, IPPROTO_TCP, SOL_SOCKET, TCP_INFO, TCP_KEEPIDLE, TCP_NODELAY,
    };

    use super::*;

    const VM: StandIn = StandIn {
        listener: false,
        vsock: true,
        v6: false,
        udp: false,
    };
    const CHANNEL: StandIn = StandIn {
        listener: true,
        vsock: false,
        v6: false,
        udp: false,
    };
    const ID: Id = (1, u64::MAX);

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
    fn a_set_is_checked_as_linux_checks_it_and_kept_only_for_a_waiting_caller() {
        let m = Memory::default();
        let (one, zero) = (1i32, 0i32);
        let set = libc::SYS_setsockopt;
        let answer_set = |args| {
            let (l, n) = call(set, args);
            answer(&l, &n, VM, &m, ID)
        };
        // Accepted and worth keeping, but this fake caller no longer waits: nothing kept.
        let nodelay = args(IPPROTO_TCP, TCP_NODELAY, addr(&one), 4);
        assert_eq!(answer_set(nodelay), Outcome::Gone);
        assert_eq!(m.len(), 0);
        // Accepted, nothing to keep (TCP_DEFER_ACCEPT): answered at once.
        assert_eq!(
            answer_set(args(IPPROTO_TCP, 9, addr(&one), 4)),
            Outcome::Return(0)
        );
        // Linux's refusals: a value out of range, a short int, an unreadable value.
        let idle0 = args(IPPROTO_TCP, TCP_KEEPIDLE, addr(&zero), 4);
        assert_eq!(answer_set(idle0), Outcome::Fail(libc::EINVAL));
        let short = args(IPPROTO_TCP, TCP_NODELAY, addr(&one), 2);
        assert_eq!(answer_set(short), Outcome::Fail(libc::EINVAL));
        let bad = args(IPPROTO_TCP, TCP_NODELAY, 8, 4);
        assert_eq!(answer_set(bad), Outcome::Fail(libc::EFAULT));
        let ttl0 = args(IPPROTO_IP, libc::IP_TTL, addr(&zero), 4);
        assert_eq!(answer_set(ttl0), Outcome::Fail(libc::EINVAL));
        // The kernel's own: SOL_SOCKET options, and TCP options in process mode.
        let keepalive = args(SOL_SOCKET, libc::SO_KEEPALIVE, addr(&one), 4);
        assert_eq!(answer_set(keepalive), Outcome::Continue);
        let (l, n) = call(set, nodelay);
        assert_eq!(answer(&l, &n, CHANNEL, &m, ID), Outcome::Continue);
        assert_eq!(m.len(), 0);
    }

    #[test]
    fn the_memory_answers_reads_per_socket_and_forgets() {
        let m = Memory::default();
        let other = (1, u64::MAX - 1);
        m.keep(ID, IPPROTO_TCP, TCP_KEEPIDLE, Some(33));
        m.keep(ID, IPPROTO_TCP, TCP_NODELAY, Some(1));
        m.keep(ID, IPPROTO_TCP, 9, Some(5)); // not remembered
        assert_eq!(m.value(ID, IPPROTO_TCP, TCP_KEEPIDLE), Some(33));
        assert_eq!(m.value(ID, IPPROTO_TCP, TCP_NODELAY), Some(1));
        assert_eq!(m.value(ID, IPPROTO_TCP, 9), None);
        assert_eq!(m.value(other, IPPROTO_TCP, TCP_KEEPIDLE), None);
        // What get answers with it: the value, else the idle default.
        let answered = |id, name| {
            let Get::Reply(r) =
                sockopt::get(IPPROTO_TCP, name, VM, 4, m.value(id, IPPROTO_TCP, name))
            else {
                panic!("answered by the rule");
            };
            let mut buf = [0; sockopt::TCP_INFO_LEN];
            i32::from_ne_bytes(r.bytes(&mut buf).try_into().unwrap())
        };
        assert_eq!(answered(ID, TCP_KEEPIDLE), 33);
        assert_eq!(answered(other, TCP_KEEPIDLE), 7200);
        // A value read as never set (TTL -1) is forgotten; an empty socket leaves the table.
        m.keep(ID, IPPROTO_TCP, TCP_NODELAY, None);
        assert_eq!(m.value(ID, IPPROTO_TCP, TCP_NODELAY), None);
        m.keep(ID, IPPROTO_TCP, TCP_KEEPIDLE, None);
        assert_eq!(m.len(), 0);
        // A new socket under the identity starts afresh.
        m.keep(ID, IPPROTO_IP, libc::IP_TTL, Some(7));
        m.forget(ID);
        assert_eq!(m.value(ID, IPPROTO_IP, libc::IP_TTL), None);
        assert_eq!(m.len(), 0);
    }

    #[test]
    fn the_memory_is_swept_of_sockets_nobody_holds() {
        let m = Memory::default();
        let held = (1, 42);
        let live = || std::iter::once(42).collect::<std::collections::HashSet<u64>>();
        m.keep_live(held, IPPROTO_TCP, TCP_NODELAY, Some(1), live);
        for i in 0..SWEEP_MIN as u64 {
            m.keep_live((1, 1000 + i), IPPROTO_TCP, TCP_NODELAY, Some(1), live);
        }
        // Swept when it reached SWEEP_MIN: only the held socket's values are left.
        assert!(m.len() < 10, "{}", m.len());
        assert_eq!(m.value(held, IPPROTO_TCP, TCP_NODELAY), Some(1));
        // With many sockets held, the table grows (sweeping each time it doubles).
        let all = || (0..5000u64).collect::<std::collections::HashSet<u64>>();
        for i in 0..3000u64 {
            m.keep_live((1, i), IPPROTO_TCP, TCP_NODELAY, Some(1), all);
        }
        assert!(m.len() >= 3000);
    }

    #[test]
    fn get_reads_the_length_once_and_answers_only_a_waiting_caller() {
        let m = Memory::default();
        let get = libc::SYS_getsockopt;
        let v = [0xffu8; 8];
        let len = 8u32;
        let ask = |args, s| {
            let (l, n) = call(get, args);
            answer(&l, &n, s, &m, ID)
        };
        // Answered by the rule, but the caller (this fake id) no longer waits: nothing written.
        let nodelay = args(IPPROTO_TCP, TCP_NODELAY, addr(&v), addr(&len));
        assert_eq!(ask(nodelay, VM), Outcome::Gone);
        assert_eq!((v, len), ([0xff; 8], 8));
        let domain = args(SOL_SOCKET, libc::SO_DOMAIN, addr(&v), addr(&len));
        assert_eq!(ask(domain, CHANNEL), Outcome::Gone);
        let null_len = args(IPPROTO_TCP, TCP_NODELAY, addr(&v), 0);
        assert_eq!(ask(null_len, VM), Outcome::Fail(libc::EFAULT));
        let bad = -1i32;
        let ttl = args(IPPROTO_IP, libc::IP_TTL, addr(&v), addr(&bad));
        assert_eq!(ask(ttl, VM), Outcome::Fail(libc::EINVAL));
        let sndbuf = args(SOL_SOCKET, libc::SO_SNDBUF, addr(&v), addr(&len));
        assert_eq!(ask(sndbuf, VM), Outcome::Continue);
        // A null length on an option the kernel answers is the kernel's EFAULT to give.
        let sndbuf_null = args(SOL_SOCKET, libc::SO_SNDBUF, addr(&v), 0);
        assert_eq!(ask(sndbuf_null, VM), Outcome::Continue);
        // In process mode TCP options are the kernel's (a channel's EOPNOTSUPP included).
        assert_eq!(ask(nodelay, CHANNEL), Outcome::Continue);
    }

    #[test]
    fn a_reply_is_written_as_the_kernel_writes_it() {
        let pid = std::process::id();
        let mut info = [0xffu8; 300];
        let mut len = 300u32;
        let Get::Reply(r) = sockopt::get(IPPROTO_TCP, TCP_INFO, VM, 300, None) else {
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
        let Get::Reply(r) = sockopt::get(SOL_SOCKET, libc::SO_DOMAIN, VM, 4, None) else {
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
