//! The seccomp filter the supervised program runs under: a classic BPF program, built by hand
//! because seccompiler has no `SECCOMP_RET_USER_NOTIF` action.
//!
//! - The program is assembled from instructions with symbolic jumps (`assemble`), so the
//!   variants share their code and no offset is counted by hand.
//! - A foreign architecture (the i386 ABI of an x86_64 program) is allowed: the supervisor
//!   translates, it does not confine (see the crate docs).
//! - `connect`, `getsockname`, `getpeername`, `bind`, `listen`, `accept`, `accept4`, and
//!   `recvfrom`/`sendto` with a non-null address notify the supervisor; everything else is
//!   allowed. `socket` is notified only for an `AF_INET` ICMP socket (a ping socket the
//!   program's namespace forbids it gets a stand-in from the private network; the rest
//!   continue): otherwise nothing is done at creation, what a socket becomes is decided when it
//!   connects, binds or listens. Nor are `recv`/`send` (the same calls without
//!   an address), `read` and `write`. Socket options notify only where a stand-in may answer
//!   wrongly (`shared_proto::sockopt::may_answer`, decided on the level and name arguments,
//!   plain ints): in process mode `getsockopt` at `SOL_SOCKET` of `SO_DOMAIN`, `SO_TYPE`,
//!   `SO_PROTOCOL` and `SO_ACCEPTCONN` only (every other `getsockopt`, and `setsockopt`, runs
//!   untouched); inside a VM ([`Transport::Vsock`]) `getsockopt` and `setsockopt` at
//!   `IPPROTO_TCP` and `IPPROTO_IP`, and `getsockopt`'s `SO_DOMAIN`/`SO_PROTOCOL`. What BPF cannot decide — whether a connect's address is
//!   AF_INET (behind a pointer), or a descriptor is one the supervisor made — the supervisor
//!   decides on its fast path, without allocating or a second ioctl.

use libc::sock_filter;

/// `AUDIT_ARCH_X86_64`.
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;

// Offsets into `struct seccomp_data`.
const NR: u32 = 0;
const ARCH: u32 = 4;
/// The low 32 bits of `args[i]` (little endian).
const fn arg_lo(i: u32) -> u32 {
    16 + 8 * i
}
/// The high 32 bits of `args[i]`.
const fn arg_hi(i: u32) -> u32 {
    arg_lo(i) + 4
}

const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jeq(k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter {
        code: JEQ_K,
        jt,
        jf,
        k,
    }
}

/// The system calls the supervisor is notified of (x86_64 numbers), for the docs and tests;
/// also [`NOTIFIED_OPTIONS`], for some options.
pub const NOTIFIED: [i64; 9] = [
    libc::SYS_connect,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_accept,
    libc::SYS_accept4,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
];

/// `getsockopt` (and, inside a VM, `setsockopt`) for the options a stand-in may answer wrongly
/// (`shared_proto::sockopt::may_answer`): in process mode the four `SOL_SOCKET` reads a packet
/// channel or an IPv6 socket answers differently; inside a VM also the `IPPROTO_TCP` and
/// `IPPROTO_IP` options a vsock stand-in lacks. Nothing else (each costs a round trip).
pub const NOTIFIED_OPTIONS: [i64; 2] = [libc::SYS_getsockopt, libc::SYS_setsockopt];

/// Which stream reaches host-server, as far as the filter cares (see [`crate::transport`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Process mode: host-server passes real sockets.
    Unix,
    /// Inside a VM: outsourced sockets are vsock streams standing in for TCP sockets.
    Vsock,
}

impl Transport {
    /// The transport of a vsock port setting ([`crate::transport::vsock_port`]).
    #[must_use]
    pub fn of(vsock_port: Option<u32>) -> Self {
        if vsock_port.is_some() {
            Self::Vsock
        } else {
            Self::Unix
        }
    }
}

/// A place in the program a jump goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Label {
    /// The next instruction.
    Next,
    Nr,
    Allow,
    Notify,
    /// recvfrom/sendto: the address argument.
    Addr,
    AddrNotify,
    AddrAllow,
    Get,
    GetName,
    Set,
    OptNotify,
    OptAllow,
    /// socket: the domain and protocol.
    Sock,
    SockNotify,
    SockAllow,
}

/// An instruction with symbolic jumps, or where a label is.
#[derive(Debug, Clone, Copy)]
enum Op {
    Ld(u32),
    /// Jump to the first label if the accumulator equals k, else to the second.
    Jeq(u32, Label, Label),
    Ret(u32),
    Here(Label),
}

/// Resolves the labels: each appears once, every jump goes forward by less than 256.
fn assemble(ops: &[Op]) -> Vec<sock_filter> {
    let mut at = Vec::new();
    let mut pc = 0usize;
    for op in ops {
        match op {
            Op::Here(l) => at.push((*l, pc)),
            _ => pc += 1,
        }
    }
    let target = |l: Label, pc: usize| -> u8 {
        if l == Label::Next {
            return 0;
        }
        let to = at
            .iter()
            .find(|(m, _)| *m == l)
            .map(|&(_, t)| t)
            .expect("every label jumped to is placed");
        u8::try_from(to - pc - 1).expect("jumps are forward and short")
    };
    let mut out = Vec::with_capacity(pc);
    for op in ops {
        let pc = out.len();
        match *op {
            Op::Ld(k) => out.push(stmt(LD_W_ABS, k)),
            Op::Jeq(k, t, f) => out.push(jeq(k, target(t, pc), target(f, pc))),
            Op::Ret(k) => out.push(stmt(RET_K, k)),
            Op::Here(_) => {}
        }
    }
    out
}

/// The filter program for `transport`. Jumps are relative and forward only.
#[must_use]
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // Syscall numbers, levels < 2^31.
pub fn program(transport: Transport) -> Vec<sock_filter> {
    use shared_proto::sockopt::{
        IPPROTO_IP, IPPROTO_TCP, SOL_SOCKET, SO_ACCEPTCONN, SO_DOMAIN, SO_PROTOCOL, SO_TYPE,
    };
    use Label::{
        Addr, AddrAllow, AddrNotify, Allow, Get, GetName, Next, Notify, Nr, OptAllow, OptNotify,
        Set, Sock, SockAllow, SockNotify,
    };
    let notify = libc::SECCOMP_RET_USER_NOTIF;
    let allow = libc::SECCOMP_RET_ALLOW;
    let mut ops = vec![
        Op::Ld(ARCH),
        Op::Jeq(AUDIT_ARCH_X86_64, Nr, Next),
        Op::Ret(allow),
        Op::Here(Nr),
        Op::Ld(NR),
    ];
    for nr in &NOTIFIED[..7] {
        ops.push(Op::Jeq(*nr as u32, Notify, Next));
    }
    ops.push(Op::Jeq(libc::SYS_recvfrom as u32, Addr, Next));
    ops.push(Op::Jeq(libc::SYS_sendto as u32, Addr, Next));
    ops.push(Op::Jeq(libc::SYS_socket as u32, Sock, Next));
    let vsock = transport == Transport::Vsock;
    ops.push(Op::Jeq(libc::SYS_getsockopt as u32, Get, Next));
    if vsock {
        ops.push(Op::Jeq(libc::SYS_setsockopt as u32, Set, Next));
    }
    ops.extend([
        Op::Here(Allow),
        Op::Ret(allow),
        Op::Here(Notify),
        Op::Ret(notify),
        // recvfrom, sendto: notify when the address (args[4]) is not null.
        Op::Here(Addr),
        Op::Ld(arg_lo(4)),
        Op::Jeq(0, Next, AddrNotify),
        Op::Ld(arg_hi(4)),
        Op::Jeq(0, AddrAllow, AddrNotify),
        Op::Here(AddrNotify),
        Op::Ret(notify),
        Op::Here(AddrAllow),
        Op::Ret(allow),
        // socket: notify an AF_INET ICMP one (args[0], args[2]: ints).
        Op::Here(Sock),
        Op::Ld(arg_lo(0)),
        Op::Jeq(libc::AF_INET as u32, Next, SockAllow),
        Op::Ld(arg_lo(2)),
        Op::Jeq(libc::IPPROTO_ICMP as u32, SockNotify, SockAllow),
        Op::Here(SockNotify),
        Op::Ret(notify),
        Op::Here(SockAllow),
        Op::Ret(allow),
    ]);
    if vsock {
        // The level (args[1]) and name (args[2]) are ints: the kernel reads the low 32 bits.
        ops.extend([
            Op::Here(Get),
            Op::Ld(arg_lo(1)),
            Op::Jeq(IPPROTO_TCP as u32, OptNotify, Next),
            Op::Jeq(IPPROTO_IP as u32, OptNotify, Next),
            Op::Jeq(SOL_SOCKET as u32, GetName, OptAllow),
            Op::Here(GetName),
            Op::Ld(arg_lo(2)),
            Op::Jeq(SO_DOMAIN as u32, OptNotify, Next),
            Op::Jeq(SO_PROTOCOL as u32, OptNotify, OptAllow),
            Op::Here(Set),
            Op::Ld(arg_lo(1)),
            Op::Jeq(IPPROTO_TCP as u32, OptNotify, Next),
            Op::Jeq(IPPROTO_IP as u32, OptNotify, OptAllow),
        ]);
    } else {
        // Process mode: getsockopt at SOL_SOCKET of the four names a channel answers wrongly.
        ops.extend([
            Op::Here(Get),
            Op::Ld(arg_lo(1)),
            Op::Jeq(SOL_SOCKET as u32, Next, OptAllow),
            Op::Ld(arg_lo(2)),
            Op::Jeq(SO_DOMAIN as u32, OptNotify, Next),
            Op::Jeq(SO_TYPE as u32, OptNotify, Next),
            Op::Jeq(SO_PROTOCOL as u32, OptNotify, Next),
            Op::Jeq(SO_ACCEPTCONN as u32, OptNotify, OptAllow),
        ]);
    }
    ops.extend([
        Op::Here(OptNotify),
        Op::Ret(notify),
        Op::Here(OptAllow),
        Op::Ret(allow),
    ]);
    assemble(&ops)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small interpreter of the instructions used above, to check the jumps.
    fn run(prog: &[sock_filter], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_le_bytes());
        data[4..8].copy_from_slice(&arch.to_le_bytes());
        for (i, a) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
        }
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let ins = prog[pc];
            match ins.code {
                LD_W_ABS => {
                    let k = ins.k as usize;
                    acc = u32::from_le_bytes(data[k..k + 4].try_into().unwrap());
                    pc += 1;
                }
                JEQ_K => {
                    pc += 1 + usize::from(if acc == ins.k { ins.jt } else { ins.jf });
                }
                RET_K => return ins.k,
                other => panic!("unexpected code {other}"),
            }
        }
    }

    /// The calls both variants notify alike, checked on `p`.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    fn common_calls(p: &[sock_filter]) {
        let n = libc::SECCOMP_RET_USER_NOTIF;
        let a = libc::SECCOMP_RET_ALLOW;
        let x = AUDIT_ARCH_X86_64;
        let inet = libc::AF_INET as u64;
        assert_eq!(run(p, x, libc::SYS_socket as u32, [inet, 1, 0, 0, 0, 0]), a);
        assert_eq!(run(p, x, libc::SYS_socket as u32, [10, 1, 0, 0, 0, 0]), a);
        assert_eq!(run(p, x, libc::SYS_socket as u32, [1, 1, 0, 0, 0, 0]), a);
        // An ICMP socket of AF_INET (ping or raw) notifies; nothing else does.
        let sock = libc::SYS_socket as u32;
        assert_eq!(run(p, x, sock, [inet, 2, 1, 0, 0, 0]), n);
        assert_eq!(run(p, x, sock, [inet, 0x80802, 1, 0, 0, 0]), n);
        assert_eq!(run(p, x, sock, [inet, 3, 1, 0, 0, 0]), n);
        assert_eq!(run(p, x, sock, [inet, 2, 17, 0, 0, 0]), a);
        assert_eq!(run(p, x, sock, [10, 2, 58, 0, 0, 0]), a);
        assert_eq!(run(p, x, sock, [10, 2, 1, 0, 0, 0]), a);
        for nr in [
            libc::SYS_connect,
            libc::SYS_getsockname,
            libc::SYS_getpeername,
            libc::SYS_bind,
            libc::SYS_listen,
            libc::SYS_accept,
            libc::SYS_accept4,
        ] {
            assert_eq!(run(p, x, nr as u32, [3, 0, 0, 0, 0, 0]), n);
        }
        let rf = libc::SYS_recvfrom as u32;
        assert_eq!(run(p, x, rf, [3, 0, 0, 0, 0, 0]), a);
        assert_eq!(run(p, x, rf, [3, 0, 0, 0, 0x7fff_0000, 0]), n);
        assert_eq!(run(p, x, rf, [3, 0, 0, 0, 0x7f00_0000_0000, 0]), n);
        assert_eq!(run(p, x, libc::SYS_read as u32, [3, 0, 0, 0, 0, 0]), a);
        assert_eq!(run(p, x, libc::SYS_close as u32, [3, 0, 0, 0, 0, 0]), a);
        assert_eq!(run(p, x, libc::SYS_shutdown as u32, [3, 0, 0, 0, 0, 0]), a);
        let st = libc::SYS_sendto as u32;
        assert_eq!(run(p, x, st, [3, 0, 0, 0, 0, 0]), a);
        assert_eq!(run(p, x, st, [3, 0, 0, 0, 0x7fff_0000, 16]), n);
        assert_eq!(run(p, x, libc::SYS_write as u32, [3, 0, 0, 0, 1, 0]), a);
        assert_eq!(run(p, 0x4000_0003, libc::SYS_connect as u32, [0; 6]), a);
        assert!(NOTIFIED.contains(&libc::SYS_recvfrom));
        for nr in NOTIFIED {
            assert_eq!(run(p, x, nr as u32, [3, 0, 0, 0, 1, 0]), n, "{nr}");
        }
        // Every other system call is allowed.
        for nr in 0..460 {
            if !NOTIFIED.contains(&nr) && !NOTIFIED_OPTIONS.contains(&nr) {
                assert_eq!(run(p, x, nr as u32, [3, 6, 1, 1, 1, 4]), a, "{nr}");
            }
        }
    }

    /// The levels and names tried: every small one, and ints whose high argument bits are set
    /// (the kernel reads an int).
    fn levels_and_names() -> impl Iterator<Item = (u64, u64)> {
        let levels = (0..300u64).chain([0xffff_ffff, 0x1_0000_0006, 0x1_0000_0001]);
        levels.flat_map(|l| (0..70u64).chain([0x1_0000_0027]).map(move |n| (l, n)))
    }

    #[test]
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    fn notifies_exactly_the_calls_it_should() {
        let (n, a) = (libc::SECCOMP_RET_USER_NOTIF, libc::SECCOMP_RET_ALLOW);
        for (transport, vsock) in [(Transport::Unix, false), (Transport::Vsock, true)] {
            let p = program(transport);
            common_calls(&p);
            // The options the shared rule may answer in this setting, and nothing else.
            for nr in NOTIFIED_OPTIONS {
                let get = nr == libc::SYS_getsockopt;
                for (level, name) in levels_and_names() {
                    let args = [3, level, name, 0x7fff_0000, 0x7fff_0100, 0];
                    let want =
                        shared_proto::sockopt::may_answer(vsock, get, level as i32, name as i32);
                    let got = run(&p, AUDIT_ARCH_X86_64, nr as u32, args);
                    assert_eq!(got, if want { n } else { a }, "{vsock} {nr} {level} {name}");
                }
            }
        }
        let (unix, vm) = (program(Transport::Unix), program(Transport::Vsock));
        let get = libc::SYS_getsockopt as u32;
        let set = libc::SYS_setsockopt as u32;
        let x = AUDIT_ARCH_X86_64;
        // Process mode: SO_DOMAIN, SO_TYPE, SO_PROTOCOL, SO_ACCEPTCONN reads only.
        for name in [39, 3, 38, 30] {
            assert_eq!(run(&unix, x, get, [3, 1, name, 0, 0, 0]), n);
            assert_eq!(run(&unix, x, set, [3, 1, name, 0, 0, 0]), a);
        }
        assert_eq!(run(&unix, x, get, [3, 1, 4, 0, 0, 0]), a); // SO_ERROR
        assert_eq!(run(&unix, x, get, [3, 6, 1, 0, 0, 0]), a); // TCP_NODELAY
        assert_eq!(run(&unix, x, get, [3, 0x1_0000_0001, 39, 0, 0, 0]), n);
        assert_eq!(run(&unix, x, get, [3, 0x1_0000_0006, 39, 0, 0, 0]), a);
        // Inside a VM: TCP and IP options both ways, SO_DOMAIN/SO_PROTOCOL reads.
        assert_eq!(run(&vm, x, get, [3, 6, 1, 0, 0, 0]), n);
        assert_eq!(run(&vm, x, set, [3, 6, 1, 0, 0, 0]), n);
        assert_eq!(run(&vm, x, get, [3, 1, 39, 0, 0, 0]), n);
        assert_eq!(run(&vm, x, get, [3, 1, 3, 0, 0, 0]), a); // SO_TYPE: the stream's
        assert_eq!(run(&vm, x, get, [3, 1, 4, 0, 0, 0]), a);
        for p in [&unix, &vm] {
            assert_eq!(run(p, 0x4000_0003, get, [3, 1, 39, 0, 0, 0]), a);
        }
    }
}
