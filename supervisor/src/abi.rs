//! A notification's call as the x86_64 call `serve` dispatches on: the i386 ABI (a 32-bit
//! program, `AUDIT_ARCH_I386`) mapped onto it, so every handler serves both.
//!
//! - A direct i386 socket call (Linux >= 4.3) has the x86_64 call's arguments in the same
//!   order; its number is mapped ([`crate::filter::i386::DIRECT`]) and each argument cut to its
//!   32 bits (what the kernel reads of a register: a pointer, a `socklen_t`, an int).
//! - `socketcall(2)` (what glibc's i386 socket functions make on Debian, built for older
//!   kernels, and what old binaries make) carries its call number in args\[0\] and a pointer to
//!   its arguments, an array of 32-bit values, in args\[1\]. The array is read here once, as many
//!   values as the kernel reads for that call (`nargs` in net/socket.c: reading more could fault
//!   where the kernel does not), with `process_vm_readv`; a bad pointer fails the call with
//!   EFAULT, as natively. The call is then the direct call with those arguments. The handlers
//!   read what the arguments point to from the values read here, never the array again; a call
//!   they continue is the kernel's, which reads the array again, as a continued call reads its
//!   address again (continuing acts on nothing read here). `sendto`/`recvfrom` without an
//!   address (which the filter cannot tell apart through `socketcall`) continue at once.
//! - The structures the handlers read and write are the same bytes on i386: `sockaddr_in`,
//!   `sockaddr_in6`, `socklen_t` (a u32). Those whose layout differs (`msghdr`, `mmsghdr`) belong
//!   to calls that are not notified, on either ABI.
//! - Inside a VM the socket options are notified on i386 too (direct ones at the levels a
//!   vsock stand-in cannot answer, every one through `socketcall`): mapped the same way onto
//!   `getsockopt`/`setsockopt`, whose answers (ints, `tcp_info`) are the same bytes on i386;
//!   other levels (`SOL_SOCKET`'s `timeval`s among them) continue, as on x86_64.
//! - Any other architecture continues (the filter notifies none).

use crate::filter::{i386, AUDIT_ARCH_I386, AUDIT_ARCH_X86_64};
use crate::outcome::Outcome;
use crate::sys::{self, Notif};

/// Notification `n`, of a call made under `arch`, as the x86_64 call it is; otherwise what it
/// becomes at once.
pub(crate) fn decode(n: &Notif, arch: u32) -> Result<Notif, Outcome> {
    match arch {
        AUDIT_ARCH_X86_64 => Ok(*n),
        AUDIT_ARCH_I386 => i386_call(n, |addr, buf| {
            sys::read_into(n.pid, addr, buf).map_err(|_| ())
        }),
        _ => Err(Outcome::Continue),
    }
}

/// An i386 notification as the x86_64 call; `read` fills a buffer from the caller's memory.
fn i386_call(
    n: &Notif,
    read: impl FnOnce(u64, &mut [u8]) -> Result<(), ()>,
) -> Result<Notif, Outcome> {
    let args = n.args.map(|a| a & 0xffff_ffff);
    if n.nr != i386::SOCKETCALL {
        let (_, nr) = i386::DIRECT
            .iter()
            .chain(&i386::OPTIONS)
            .find(|(d, _)| *d == n.nr)
            .ok_or(Outcome::Continue)?;
        return Ok(Notif {
            nr: *nr,
            args,
            ..*n
        });
    }
    #[allow(clippy::cast_possible_truncation)] // The kernel reads an int.
    let call = args[0] as u32;
    let (_, nr, count) = i386::SOCKETCALLS
        .iter()
        .chain(&i386::SOCKETCALL_OPTIONS)
        .find(|(c, _, _)| *c == call)
        .ok_or(Outcome::Continue)?;
    let mut buf = [0u8; 24];
    let bytes = &mut buf[..4 * count];
    read(args[1], bytes).map_err(|()| Outcome::Fail(libc::EFAULT))?;
    let mut inner = [0u64; 6];
    for (a, b) in inner.iter_mut().zip(bytes.chunks_exact(4)) {
        *a = u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    }
    let without_address = matches!(*nr, libc::SYS_sendto | libc::SYS_recvfrom) && inner[4] == 0;
    if without_address {
        return Err(Outcome::Continue);
    }
    Ok(Notif {
        nr: *nr,
        args: inner,
        ..*n
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notif(nr: i64, args: [u64; 6]) -> Notif {
        Notif {
            id: 7,
            pid: 1,
            nr,
            args,
        }
    }

    /// `socketcall`'s array: little-endian u32s.
    fn array(values: &[u32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    #[test]
    fn direct_calls_are_the_x86_64_ones_with_32_bit_arguments() {
        let never = |_: u64, _: &mut [u8]| -> Result<(), ()> { panic!("no memory is read") };
        let n = notif(
            i386::CONNECT,
            [0xffff_ffff_0000_0003, 0xffd0_1000, 16, 0, 0, 0],
        );
        let got = i386_call(&n, never).unwrap();
        assert_eq!((got.id, got.pid, got.nr), (7, 1, libc::SYS_connect));
        assert_eq!(got.args, [3, 0xffd0_1000, 16, 0, 0, 0]);
        // An fd of -1 stays -1 as the int the handlers read.
        let n = notif(i386::ACCEPT4, [0xffff_ffff, 0, 0, 0x80000, 0, 0]);
        let got = i386_call(&n, never).unwrap();
        assert_eq!((got.nr, got.args[0] as i32), (libc::SYS_accept4, -1));
        for (d, x) in i386::DIRECT.into_iter().chain(i386::OPTIONS) {
            assert_eq!(i386_call(&notif(d, [0; 6]), never).unwrap().nr, x);
        }
        assert_eq!(i386::OPTIONS[0], (365, libc::SYS_getsockopt));
        // Not a call of ours (the filter does not notify it): continued.
        let got = i386_call(&notif(libc::SYS_connect, [0; 6]), never);
        assert_eq!(got.unwrap_err(), Outcome::Continue);
    }

    #[test]
    fn socketcall_reads_exactly_its_arguments_once() {
        // connect(5, 0x0804_a000, 16): three values read at args[1], nothing more.
        let mem = array(&[5, 0x0804_a000, 16]);
        let n = notif(i386::SOCKETCALL, [3, 0xffff_ffff_ffd0_0000, 0, 0, 0, 0]);
        let mut reads = 0;
        let got = i386_call(&n, |addr, buf| {
            reads += 1;
            assert_eq!((addr, buf.len()), (0xffd0_0000, 12));
            buf.copy_from_slice(&mem);
            Ok(())
        })
        .unwrap();
        assert_eq!(reads, 1);
        assert_eq!(got.nr, libc::SYS_connect);
        assert_eq!(got.args, [5, 0x0804_a000, 16, 0, 0, 0]);
        // accept (5) is accept, listen (4) reads two values, accept4 (18) four.
        for (call, nr, count) in i386::SOCKETCALLS
            .into_iter()
            .chain(i386::SOCKETCALL_OPTIONS)
        {
            let mem = array(&[3, 1, 2, 3, 4, 5][..count]);
            let n = notif(i386::SOCKETCALL, [u64::from(call), 0x1000, 0, 0, 0, 0]);
            let got = i386_call(&n, |_, buf| {
                assert_eq!(buf.len(), 4 * count);
                buf.copy_from_slice(&mem);
                Ok(())
            })
            .unwrap();
            assert_eq!(got.nr, nr, "{call}");
            assert_eq!(got.args[..count], [3u64, 1, 2, 3, 4, 5][..count], "{call}");
        }
        assert_eq!(i386::SOCKETCALLS[3], (5, libc::SYS_accept, 3));
        assert_eq!(i386::SOCKETCALL_OPTIONS[1], (15, libc::SYS_getsockopt, 5));
    }

    #[test]
    fn socketcall_faults_and_address_less_calls_are_as_native() {
        let n = notif(i386::SOCKETCALL, [3, 0, 0, 0, 0, 0]);
        let got = i386_call(&n, |_, _| Err(()));
        assert_eq!(got.unwrap_err(), Outcome::Fail(libc::EFAULT));
        // sendto and recvfrom without an address: the kernel's, as the filter leaves the
        // direct ones.
        for call in [11, 12] {
            let n = notif(i386::SOCKETCALL, [call, 0x1000, 0, 0, 0, 0]);
            let mem = array(&[3, 0x2000, 10, 0, 0, 0]);
            let got = i386_call(&n, |_, buf| {
                buf.copy_from_slice(&mem);
                Ok(())
            });
            assert_eq!(got.unwrap_err(), Outcome::Continue);
            let mem = array(&[3, 0x2000, 10, 0, 0x3000, 16]);
            let got = i386_call(&n, |_, buf| {
                buf.copy_from_slice(&mem);
                Ok(())
            });
            assert_eq!(got.unwrap().args, [3, 0x2000, 10, 0, 0x3000, 16]);
        }
        // A call that is not notified (send, 9), had it come: continued, nothing read.
        let n = notif(i386::SOCKETCALL, [9, 0x1000, 0, 0, 0, 0]);
        let got = i386_call(&n, |_, _| panic!("no memory is read"));
        assert_eq!(got.unwrap_err(), Outcome::Continue);
    }

    #[test]
    fn other_architectures_continue() {
        let n = notif(libc::SYS_connect, [3, 0, 0, 0, 0, 0]);
        assert_eq!(decode(&n, 0xc000_00b7).unwrap_err(), Outcome::Continue);
        assert_eq!(decode(&n, AUDIT_ARCH_X86_64).unwrap().args, n.args);
    }
}
