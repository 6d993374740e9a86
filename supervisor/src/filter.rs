//! The seccomp filter the supervised program runs under: a classic BPF program, built by hand
//! because seccompiler has no `SECCOMP_RET_USER_NOTIF` action.
//!
//! - The program is assembled from instructions with symbolic jumps (`assemble`), so the
//!   variants share their code and no offset is counted by hand.
//! - The i386 ABI (a 32-bit program, or `int 0x80` in a 64-bit one: `AUDIT_ARCH_I386`) is
//!   notified for the same calls by their i386 numbers ([`i386`]), and for `socketcall(2)`,
//!   whose arguments are in memory, by its call number alone (args\[0\]): every `connect`,
//!   `bind`, ..., `sendto` and `recvfrom` through it notifies, with or without an address; its
//!   `send`, `recv`, `socket` and the rest do not. Its options as x86_64's (direct ones by
//!   level and name; through `socketcall` every `getsockopt`, and inside a VM every
//!   `setsockopt` too). Its `socket` is not notified (a 32-bit ping socket the namespace
//!   forbids gets the kernel's EACCES). Any other architecture is allowed (x32, disabled in
//!   these kernels, is `AUDIT_ARCH_X86_64` with numbers above 2^30, none of them notified):
//!   the supervisor translates, it does not confine (see the crate docs).
//! - `connect`, `getsockname`, `getpeername`, `bind`, `listen`, `accept`, `accept4`, and
//!   `recvfrom`/`sendto` with a non-null address notify the supervisor; everything else is
//!   allowed. A `connect` or `getsockname` whose fourth argument (ignored by the kernel) is
//!   liboutsock's mark (`shared_proto::translate::DECIDED_MARK`: a call the preload already
//!   decided is the kernel's — loopback, another family, a socket host-server lent) is allowed
//!   too, x86_64 only (the preload is 64-bit). `socket` is notified only for an `AF_INET` ICMP socket (a ping socket the
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
use shared_proto::translate::DECIDED_MARK;

/// `AUDIT_ARCH_X86_64`.
pub const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
/// `AUDIT_ARCH_I386`: the i386 ABI (`int 0x80`, a 32-bit program).
pub const AUDIT_ARCH_I386: u32 = 0x4000_0003;

/// The i386 numbers of the calls the supervisor is notified of (arch/x86/entry/syscalls/
/// syscall_32.tbl; direct socket calls since Linux 4.3), and `socketcall(2)`'s call numbers
/// (`SYS_CONNECT`... in linux/net.h). There is no direct `accept` on i386: only through
/// `socketcall`.
pub mod i386 {
    pub const SOCKETCALL: i64 = 102;
    pub const BIND: i64 = 361;
    pub const CONNECT: i64 = 362;
    pub const LISTEN: i64 = 363;
    pub const ACCEPT4: i64 = 364;
    pub const GETSOCKOPT: i64 = 365;
    pub const SETSOCKOPT: i64 = 366;
    pub const GETSOCKNAME: i64 = 367;
    pub const GETPEERNAME: i64 = 368;
    pub const SENDTO: i64 = 369;
    pub const RECVFROM: i64 = 371;

    /// `socketcall`'s call numbers that notify, each with its x86_64 system call and the
    /// number of arguments the kernel reads from the array (`nargs` in net/socket.c).
    pub const SOCKETCALLS: [(u32, i64, usize); 9] = [
        (2, libc::SYS_bind, 3),
        (3, libc::SYS_connect, 3),
        (4, libc::SYS_listen, 2),
        (5, libc::SYS_accept, 3),
        (6, libc::SYS_getsockname, 3),
        (7, libc::SYS_getpeername, 3),
        (11, libc::SYS_sendto, 6),
        (12, libc::SYS_recvfrom, 6),
        (18, libc::SYS_accept4, 4),
    ];

    /// `socketcall`'s option calls (`SYS_SETSOCKOPT`, `SYS_GETSOCKOPT`), which notify whatever
    /// their level (`SYS_SETSOCKOPT` inside a VM only), as [`SOCKETCALLS`] lists calls.
    pub const SOCKETCALL_OPTIONS: [(u32, i64, usize); 2] =
        [(14, libc::SYS_setsockopt, 5), (15, libc::SYS_getsockopt, 5)];

    /// The direct option calls, at the levels the x86_64 ones notify (`setsockopt` inside a VM
    /// only), with their x86_64 system call.
    pub const OPTIONS: [(i64, i64); 2] = [
        (GETSOCKOPT, libc::SYS_getsockopt),
        (SETSOCKOPT, libc::SYS_setsockopt),
    ];

    /// The direct i386 calls that notify, with their x86_64 system call (the same arguments
    /// in the same order). `recvfrom` and `sendto` notify only with an address.
    pub const DIRECT: [(i64, i64); 8] = [
        (CONNECT, libc::SYS_connect),
        (GETSOCKNAME, libc::SYS_getsockname),
        (GETPEERNAME, libc::SYS_getpeername),
        (BIND, libc::SYS_bind),
        (LISTEN, libc::SYS_listen),
        (ACCEPT4, libc::SYS_accept4),
        (RECVFROM, libc::SYS_recvfrom),
        (SENDTO, libc::SYS_sendto),
    ];
}

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
    /// connect/getsockname: liboutsock's mark in args\[3\].
    Marked,
    MarkedNotify,
    MarkedAllow,
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
    /// The i386 ABI's part, and its own returns.
    I386,
    I386Addr,
    I386Socketcall,
    I386Allow,
    I386Notify,
    I386Get,
    I386GetName,
    I386Set,
    I386OptNotify,
    I386OptAllow,
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
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // Syscall numbers < 2^31.
pub fn program(transport: Transport) -> Vec<sock_filter> {
    use Label::{
        Addr, AddrAllow, AddrNotify, Allow, Get, GetName, I386Addr, I386Allow, I386Get,
        I386GetName, I386Notify, I386OptAllow, I386OptNotify, I386Set, I386Socketcall, Marked,
        MarkedAllow, MarkedNotify, Next, Notify, Nr, OptAllow, OptNotify, Set, Sock, SockAllow,
        SockNotify, I386,
    };
    let notify = libc::SECCOMP_RET_USER_NOTIF;
    let allow = libc::SECCOMP_RET_ALLOW;
    let mut ops = vec![
        Op::Ld(ARCH),
        Op::Jeq(AUDIT_ARCH_X86_64, Nr, Next),
        Op::Jeq(AUDIT_ARCH_I386, I386, Allow),
        Op::Here(Nr),
        Op::Ld(NR),
    ];
    // connect and getsockname: liboutsock's own (marked) ones are allowed.
    ops.push(Op::Jeq(libc::SYS_connect as u32, Marked, Next));
    ops.push(Op::Jeq(libc::SYS_getsockname as u32, Marked, Next));
    for nr in &NOTIFIED[2..7] {
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
        // connect, getsockname: allowed when args[3], which the kernel ignores, is liboutsock's
        // mark (`shared_proto::translate::DECIDED_MARK`).
        Op::Here(Marked),
        Op::Ld(arg_lo(3)),
        Op::Jeq(DECIDED_MARK as u32, Next, MarkedNotify),
        Op::Ld(arg_hi(3)),
        Op::Jeq((DECIDED_MARK >> 32) as u32, MarkedAllow, MarkedNotify),
        Op::Here(MarkedNotify),
        Op::Ret(notify),
        Op::Here(MarkedAllow),
        Op::Ret(allow),
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
    ops.extend(options(vsock, [Get, GetName, Set, OptNotify, OptAllow]));
    // The i386 ABI, after everything x86_64 runs. A pointer is 32 bits: the high half of
    // args[4] is not looked at (the kernel does not).
    ops.extend([Op::Here(I386), Op::Ld(NR)]);
    for (nr, _) in &i386::DIRECT[..6] {
        ops.push(Op::Jeq(*nr as u32, I386Notify, Next));
    }
    ops.extend([
        Op::Jeq(i386::RECVFROM as u32, I386Addr, Next),
        Op::Jeq(i386::SENDTO as u32, I386Addr, Next),
        Op::Jeq(i386::GETSOCKOPT as u32, I386Get, Next),
    ]);
    if vsock {
        ops.push(Op::Jeq(i386::SETSOCKOPT as u32, I386Set, Next));
    }
    ops.extend([
        Op::Jeq(i386::SOCKETCALL as u32, I386Socketcall, I386Allow),
        Op::Here(I386Addr),
        Op::Ld(arg_lo(4)),
        Op::Jeq(0, I386Allow, I386Notify),
        Op::Here(I386Socketcall),
        Op::Ld(arg_lo(0)),
    ]);
    for (call, x86, _) in i386::SOCKETCALLS.iter().chain(&i386::SOCKETCALL_OPTIONS) {
        // Through socketcall the level is in memory: every getsockopt notifies (inside a VM
        // every setsockopt too).
        if vsock || *x86 != libc::SYS_setsockopt {
            ops.push(Op::Jeq(*call, I386Notify, Next));
        }
    }
    ops.extend([
        Op::Here(I386Allow),
        Op::Ret(allow),
        Op::Here(I386Notify),
        Op::Ret(notify),
    ]);
    ops.extend(options(
        vsock,
        [I386Get, I386GetName, I386Set, I386OptNotify, I386OptAllow],
    ));
    assemble(&ops)
}

/// `getsockopt` (from the first label) and, inside a VM (`vsock`), `setsockopt` (from the
/// third) notify for the options the shared rule may answer (`shared_proto::sockopt::
/// may_answer`): in process mode `getsockopt` at `SOL_SOCKET` of the four names a channel or an
/// IPv6 socket answers wrongly; inside a VM also every `IPPROTO_TCP` and `IPPROTO_IP` option, as
/// a vsock stand-in has none. The labels are where they start (`get`, `get_name`, `set`) and
/// their own returns (`notify`, `allow`). The level (args\[1\]) and name (args\[2\]) are ints:
/// the kernel reads the low 32 bits, on either ABI.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // Levels, names < 2^31.
fn options(vsock: bool, [get, get_name, set, notify, allow]: [Label; 5]) -> Vec<Op> {
    use shared_proto::sockopt::{
        IPPROTO_IP, IPPROTO_TCP, SOL_SOCKET, SO_ACCEPTCONN, SO_DOMAIN, SO_PROTOCOL, SO_TYPE,
    };
    use Label::Next;
    let mut ops = if vsock {
        vec![
            Op::Here(get),
            Op::Ld(arg_lo(1)),
            Op::Jeq(IPPROTO_TCP as u32, notify, Next),
            Op::Jeq(IPPROTO_IP as u32, notify, Next),
            Op::Jeq(SOL_SOCKET as u32, get_name, allow),
            Op::Here(get_name),
            Op::Ld(arg_lo(2)),
            Op::Jeq(SO_DOMAIN as u32, notify, Next),
            Op::Jeq(SO_PROTOCOL as u32, notify, allow),
            Op::Here(set),
            Op::Ld(arg_lo(1)),
            Op::Jeq(IPPROTO_TCP as u32, notify, Next),
            Op::Jeq(IPPROTO_IP as u32, notify, allow),
        ]
    } else {
        vec![
            Op::Here(get),
            Op::Ld(arg_lo(1)),
            Op::Jeq(SOL_SOCKET as u32, get_name, allow),
            Op::Here(get_name),
            Op::Ld(arg_lo(2)),
            Op::Jeq(SO_DOMAIN as u32, notify, Next),
            Op::Jeq(SO_TYPE as u32, notify, Next),
            Op::Jeq(SO_PROTOCOL as u32, notify, Next),
            Op::Jeq(SO_ACCEPTCONN as u32, notify, allow),
        ]
    };
    ops.extend([
        Op::Here(notify),
        Op::Ret(libc::SECCOMP_RET_USER_NOTIF),
        Op::Here(allow),
        Op::Ret(libc::SECCOMP_RET_ALLOW),
    ]);
    ops
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
        // liboutsock's marked connect and getsockname go through; half a mark, the mark on
        // another call, or on the i386 ABI does not.
        let mark = shared_proto::translate::DECIDED_MARK;
        for nr in [libc::SYS_connect, libc::SYS_getsockname] {
            assert_eq!(run(p, x, nr as u32, [3, 9, 28, mark, 0, 0]), a);
            assert_eq!(
                run(p, x, nr as u32, [3, 9, 28, mark & 0xffff_ffff, 0, 0]),
                n
            );
            assert_eq!(
                run(p, x, nr as u32, [3, 9, 28, mark & !0xffff_ffff, 0, 0]),
                n
            );
            assert_eq!(run(p, x, nr as u32, [3, 9, 28, 0, mark, 0]), n);
        }
        for nr in [libc::SYS_getpeername, libc::SYS_bind, libc::SYS_accept4] {
            assert_eq!(run(p, x, nr as u32, [3, 9, 28, mark, mark, 0]), n);
        }
        assert_eq!(
            run(
                p,
                AUDIT_ARCH_I386,
                i386::CONNECT as u32,
                [3, 9, 28, mark, 0, 0]
            ),
            n
        );
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

    /// The i386 ABI: the direct calls, `socketcall` by its call number, nothing else; no other
    /// architecture. Its options as x86_64's (`vsock`: inside a VM), and through `socketcall`
    /// every `getsockopt` (inside a VM every `setsockopt` too).
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    fn i386_calls(p: &[sock_filter], vsock: bool) {
        let (n, a) = (libc::SECCOMP_RET_USER_NOTIF, libc::SECCOMP_RET_ALLOW);
        let x = AUDIT_ARCH_I386;
        let direct = |nr: i64| i386::DIRECT.iter().any(|(d, _)| *d == nr);
        for nr in 0..460i64 {
            // Level 6 (IPPROTO_TCP) name 1: an option a vsock stand-in cannot answer, which
            // process mode lets through.
            let want = if direct(nr)
                || nr == i386::SOCKETCALL
                || (vsock && i386::OPTIONS.iter().any(|(o, _)| *o == nr))
            {
                n
            } else {
                a
            };
            // args[0] 3 is SYS_CONNECT for socketcall; args[4] an address.
            assert_eq!(run(p, x, nr as u32, [3, 6, 1, 1, 1, 4]), want, "{nr}");
            // Nothing at all for another architecture (aarch64's numbers are others').
            assert_eq!(
                run(p, 0xc000_00b7, nr as u32, [3, 6, 1, 1, 1, 4]),
                a,
                "{nr}"
            );
        }
        for nr in [i386::RECVFROM, i386::SENDTO] {
            let nr = nr as u32;
            assert_eq!(run(p, x, nr, [3, 0x0804_0000, 16, 0, 0, 0]), a);
            assert_eq!(run(p, x, nr, [3, 0x0804_0000, 16, 0, 0xffff_e000, 16]), n);
            // A 32-bit pointer: the high half (which the kernel ignores) is not looked at.
            assert_eq!(run(p, x, nr, [3, 0, 0, 0, 0x1_0000_0000, 16]), a);
        }
        let sc = i386::SOCKETCALL as u32;
        for call in 0..=21u32 {
            let listed = i386::SOCKETCALLS.iter().any(|(c, _, _)| *c == call)
                || i386::SOCKETCALL_OPTIONS
                    .iter()
                    .any(|(c, x86, _)| *c == call && (vsock || *x86 == libc::SYS_getsockopt));
            let want = if listed { n } else { a };
            let args = [u64::from(call), 0xffff_d000, 0, 0, 0, 0];
            assert_eq!(run(p, x, sc, args), want, "socketcall {call}");
        }
        // The x86_64 numbers mean other calls on i386 (42 is pipe there, 49 is umask).
        assert_eq!(run(p, x, libc::SYS_connect as u32, [3, 0, 0, 0, 0, 0]), a);
        assert_eq!(run(p, x, libc::SYS_bind as u32, [3, 0, 0, 0, 0, 0]), a);
        // The direct option calls by the shared rule, level and name read from the arguments.
        for (nr, x86) in i386::OPTIONS {
            let get = x86 == libc::SYS_getsockopt;
            for (level, name) in levels_and_names() {
                let args = [3, level, name, 0xffd0_0000, 0xffd0_0100, 0];
                let want = shared_proto::sockopt::may_answer(vsock, get, level as i32, name as i32);
                let got = run(p, x, nr as u32, args);
                assert_eq!(got, if want { n } else { a }, "{nr} {level} {name}");
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
            i386_calls(&p, vsock);
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
