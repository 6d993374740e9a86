//! The seccomp filter the supervised program runs under: a classic BPF program, built by hand
//! because seccompiler has no `SECCOMP_RET_USER_NOTIF` action.
//!
//! - A foreign architecture (the i386 ABI of an x86_64 program) is allowed: the supervisor
//!   translates, it does not confine (see the crate docs).
//! - `connect`, `getsockname`, `getpeername`, `bind`, `listen`, `accept`, `accept4`, and
//!   `recvfrom`/`sendto` with a non-null address notify the supervisor; everything else is
//!   allowed. `socket` is not notified (nothing is done at creation: what a socket becomes is
//!   decided when it connects, binds or listens), nor are `recv`/`send` (the same calls without
//!   an address), `read` and `write`. What BPF cannot decide — whether a connect's address is
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

/// The system calls the supervisor is notified of (x86_64 numbers), for the docs and tests.
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

/// The filter program. Jumps are relative and forward only; the comments give each
/// instruction's index.
#[must_use]
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // Syscall numbers < 2^32.
pub fn program() -> Vec<sock_filter> {
    let notify = libc::SECCOMP_RET_USER_NOTIF;
    let allow = libc::SECCOMP_RET_ALLOW;
    vec![
        stmt(LD_W_ABS, ARCH),                    // 0
        jeq(AUDIT_ARCH_X86_64, 1, 0),            // 1: -> 3
        stmt(RET_K, allow),                      // 2
        stmt(LD_W_ABS, NR),                      // 3
        jeq(libc::SYS_connect as u32, 9, 0),     // 4: -> 14
        jeq(libc::SYS_getsockname as u32, 8, 0), // 5: -> 14
        jeq(libc::SYS_getpeername as u32, 7, 0), // 6: -> 14
        jeq(libc::SYS_bind as u32, 6, 0),        // 7: -> 14
        jeq(libc::SYS_listen as u32, 5, 0),      // 8: -> 14
        jeq(libc::SYS_accept as u32, 4, 0),      // 9: -> 14
        jeq(libc::SYS_accept4 as u32, 3, 0),     // 10: -> 14
        jeq(libc::SYS_recvfrom as u32, 3, 0),    // 11: -> 15
        jeq(libc::SYS_sendto as u32, 2, 0),      // 12: -> 15
        stmt(RET_K, allow),                      // 13
        stmt(RET_K, notify),                     // 14
        // recvfrom, sendto: notify when the address (args[4]) is not null.
        stmt(LD_W_ABS, arg_lo(4)), // 15
        jeq(0, 0, 2),              // 16: -> 17 / 19
        stmt(LD_W_ABS, arg_hi(4)), // 17
        jeq(0, 1, 0),              // 18: -> 20 / 19
        stmt(RET_K, notify),       // 19
        stmt(RET_K, allow),        // 20
    ]
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

    #[test]
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    fn notifies_exactly_the_calls_it_should() {
        let p = program();
        let n = libc::SECCOMP_RET_USER_NOTIF;
        let a = libc::SECCOMP_RET_ALLOW;
        let x = AUDIT_ARCH_X86_64;
        let inet = libc::AF_INET as u64;
        assert_eq!(
            run(&p, x, libc::SYS_socket as u32, [inet, 1, 0, 0, 0, 0]),
            a
        );
        assert_eq!(run(&p, x, libc::SYS_socket as u32, [10, 1, 0, 0, 0, 0]), a);
        assert_eq!(run(&p, x, libc::SYS_socket as u32, [1, 1, 0, 0, 0, 0]), a);
        for nr in [
            libc::SYS_connect,
            libc::SYS_getsockname,
            libc::SYS_getpeername,
            libc::SYS_bind,
            libc::SYS_listen,
            libc::SYS_accept,
            libc::SYS_accept4,
        ] {
            assert_eq!(run(&p, x, nr as u32, [3, 0, 0, 0, 0, 0]), n);
        }
        let rf = libc::SYS_recvfrom as u32;
        assert_eq!(run(&p, x, rf, [3, 0, 0, 0, 0, 0]), a);
        assert_eq!(run(&p, x, rf, [3, 0, 0, 0, 0x7fff_0000, 0]), n);
        assert_eq!(run(&p, x, rf, [3, 0, 0, 0, 0x7f00_0000_0000, 0]), n);
        assert_eq!(run(&p, x, libc::SYS_read as u32, [3, 0, 0, 0, 0, 0]), a);
        assert_eq!(run(&p, x, libc::SYS_close as u32, [3, 0, 0, 0, 0, 0]), a);
        assert_eq!(run(&p, x, libc::SYS_shutdown as u32, [3, 0, 0, 0, 0, 0]), a);
        let st = libc::SYS_sendto as u32;
        assert_eq!(run(&p, x, st, [3, 0, 0, 0, 0, 0]), a);
        assert_eq!(run(&p, x, st, [3, 0, 0, 0, 0x7fff_0000, 16]), n);
        assert_eq!(run(&p, x, libc::SYS_write as u32, [3, 0, 0, 0, 1, 0]), a);
        assert_eq!(run(&p, 0x4000_0003, libc::SYS_connect as u32, [0; 6]), a);
        assert!(NOTIFIED.contains(&libc::SYS_recvfrom));
        for nr in NOTIFIED {
            assert_eq!(run(&p, x, nr as u32, [3, 0, 0, 0, 1, 0]), n, "{nr}");
        }
    }
}
