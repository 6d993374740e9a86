//! The real libc functions behind the ones we interpose, found with `dlsym(RTLD_NEXT, …)` on
//! first use and cached in atomics (no locks: these are called after fork and from any thread).

use std::sync::atomic::{AtomicUsize, Ordering};

use libc::{c_char, c_int, c_long, c_void, sockaddr, socklen_t};

/// Resolves `name` (NUL-terminated) once and caches it in `slot`.
fn lookup(slot: &AtomicUsize, name: &'static [u8]) -> usize {
    let cached = slot.load(Ordering::Relaxed);
    if cached != 0 {
        return cached;
    }
    // SAFETY: `name` is a NUL-terminated static string; RTLD_NEXT asks for the next definition
    // after this library, which for these symbols is libc's.
    let found = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr().cast::<c_char>()) } as usize;
    if found == 0 {
        // Without the real function nothing can work; say so instead of jumping to address 0.
        let msg = b"liboutsock: a libc symbol is missing; cannot continue\n";
        // SAFETY: write(2) of a static buffer to stderr, then _exit; both async-signal-safe.
        unsafe {
            libc::write(2, msg.as_ptr().cast::<c_void>(), msg.len());
            libc::_exit(127);
        }
    }
    slot.store(found, Ordering::Relaxed);
    found
}

macro_rules! real_fns {
    ($( $name:ident : fn($($arg:ident : $ty:ty),*) -> $ret:ty ;)*) => {
        $(
            /// Calls libc's own implementation.
            ///
            /// # Safety
            /// The caller upholds the C function's contract for its arguments.
            #[allow(clippy::too_many_arguments)] // The C signatures are what they are.
            pub unsafe fn $name($($arg: $ty),*) -> $ret {
                static SLOT: AtomicUsize = AtomicUsize::new(0);
                let f = lookup(&SLOT, concat!(stringify!($name), "\0").as_bytes());
                // SAFETY: `f` is libc's symbol of this name, whose C signature is the one
                // declared here.
                let f: unsafe extern "C" fn($($ty),*) -> $ret = unsafe { std::mem::transmute(f) };
                // SAFETY: forwarded from our caller.
                unsafe { f($($arg),*) }
            }
        )*
    };
}

real_fns! {
    socket: fn(domain: c_int, ty: c_int, protocol: c_int) -> c_int;
    connect: fn(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int;
    bind: fn(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int;
    listen: fn(fd: c_int, backlog: c_int) -> c_int;
    accept4: fn(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t, flags: c_int) -> c_int;
    getsockname: fn(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int;
    getpeername: fn(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int;
    getsockopt: fn(fd: c_int, level: c_int, name: c_int, val: *mut c_void, len: *mut socklen_t) -> c_int;
    setsockopt: fn(fd: c_int, level: c_int, name: c_int, val: *const c_void, len: socklen_t) -> c_int;
    close: fn(fd: c_int) -> c_int;
    shutdown: fn(fd: c_int, how: c_int) -> c_int;
    dup: fn(fd: c_int) -> c_int;
    dup2: fn(fd: c_int, to: c_int) -> c_int;
    dup3: fn(fd: c_int, to: c_int, flags: c_int) -> c_int;
    fcntl: fn(fd: c_int, cmd: c_int, arg: usize) -> c_int;
    sendto: fn(fd: c_int, buf: *const c_void, len: usize, flags: c_int, addr: *const sockaddr, alen: socklen_t) -> isize;
    recvfrom: fn(fd: c_int, buf: *mut c_void, len: usize, flags: c_int, addr: *mut sockaddr, alen: *mut socklen_t) -> isize;
    sendmsg: fn(fd: c_int, msg: *const libc::msghdr, flags: c_int) -> isize;
    recvmsg: fn(fd: c_int, msg: *mut libc::msghdr, flags: c_int) -> isize;
    recvmmsg: fn(fd: c_int, msgs: *mut libc::mmsghdr, n: libc::c_uint, flags: c_int, timeout: *mut libc::timespec) -> c_int;
    sendmmsg: fn(fd: c_int, msgs: *mut libc::mmsghdr, n: libc::c_uint, flags: c_int) -> c_int;
    read: fn(fd: c_int, buf: *mut c_void, len: usize) -> isize;
    write: fn(fd: c_int, buf: *const c_void, len: usize) -> isize;
    gethostbyname: fn(name: *const c_char) -> *mut libc::hostent;
    gethostbyname2: fn(name: *const c_char, af: c_int) -> *mut libc::hostent;
    gethostbyname_r: fn(name: *const c_char, ret: *mut libc::hostent, buf: *mut c_char, buflen: usize, result: *mut *mut libc::hostent, h_errnop: *mut c_int) -> c_int;
    gethostbyname2_r: fn(name: *const c_char, af: c_int, ret: *mut libc::hostent, buf: *mut c_char, buflen: usize, result: *mut *mut libc::hostent, h_errnop: *mut c_int) -> c_int;
    gethostbyaddr: fn(addr: *const c_void, len: socklen_t, ty: c_int) -> *mut libc::hostent;
    gethostbyaddr_r: fn(addr: *const c_void, len: socklen_t, ty: c_int, ret: *mut libc::hostent, buf: *mut c_char, buflen: usize, result: *mut *mut libc::hostent, h_errnop: *mut c_int) -> c_int;
    getnameinfo: fn(sa: *const sockaddr, salen: socklen_t, host: *mut c_char, hostlen: socklen_t, serv: *mut c_char, servlen: socklen_t, flags: c_int) -> c_int;
    res_query: fn(dname: *const c_char, class: c_int, ty: c_int, answer: *mut u8, anslen: c_int) -> c_int;
    res_search: fn(dname: *const c_char, class: c_int, ty: c_int, answer: *mut u8, anslen: c_int) -> c_int;
    getaddrinfo: fn(node: *const c_char, service: *const c_char, hints: *const libc::addrinfo, res: *mut *mut libc::addrinfo) -> c_int;
}

/// libc's `syscall`, once looked up.
#[cfg(target_arch = "x86_64")]
static SYSCALL: AtomicUsize = AtomicUsize::new(0);

/// Looks libc's `syscall` up now (when the library is loaded): programs call syscall(3) from
/// signal handlers (`gettid`, `tgkill`), where a first `dlsym` could deadlock on the dynamic
/// linker's lock.
#[cfg(target_arch = "x86_64")]
pub fn resolve_syscall() {
    lookup(&SYSCALL, b"syscall\0");
}

/// libc's own `syscall(3)` with six arguments (the kernel's most), found with
/// `dlsym(RTLD_NEXT)`: the symbol `syscall` itself is the shim's (`crate::syscall`).
///
/// It is declared with seven fixed `long` parameters although C declares it
/// `long syscall(long, ...)`: on x86-64 (System V) integer and pointer arguments take rdi, rsi,
/// rdx, rcx, r8 and r9 in order whether variadic or not, and a variadic callee only
/// additionally reads al (the count of vector registers, which no system-call argument uses);
/// glibc's syscall moves exactly those six registers (and the number) into the kernel's. Elsewhere the shim does not
/// interpose `syscall` and this is libc's variadic function called directly.
///
/// # Safety
/// The caller upholds the system call's contract for its arguments.
#[cfg(target_arch = "x86_64")]
pub unsafe fn syscall(
    n: c_long,
    a1: c_long,
    a2: c_long,
    a3: c_long,
    a4: c_long,
    a5: c_long,
    a6: c_long,
) -> c_long {
    let f = lookup(&SYSCALL, b"syscall\0");
    // SAFETY: `f` is libc's `syscall`; with integer arguments only, calling it through this
    // fixed signature passes them exactly as a variadic call would (see above).
    let f: unsafe extern "C" fn(c_long, c_long, c_long, c_long, c_long, c_long, c_long) -> c_long =
        unsafe { std::mem::transmute(f) };
    // SAFETY: forwarded from our caller.
    unsafe { f(n, a1, a2, a3, a4, a5, a6) }
}

/// libc's own `syscall(3)`, where the shim does not interpose it (see the x86-64 version).
///
/// # Safety
/// The caller upholds the system call's contract for its arguments.
#[cfg(not(target_arch = "x86_64"))]
pub unsafe fn syscall(
    n: c_long,
    a1: c_long,
    a2: c_long,
    a3: c_long,
    a4: c_long,
    a5: c_long,
    a6: c_long,
) -> c_long {
    // SAFETY: forwarded from our caller.
    unsafe { libc::syscall(n, a1, a2, a3, a4, a5, a6) }
}

/// connect(2) of `fd` to `addr` (`len` bytes), made with
/// `shared_proto::translate::DECIDED_MARK` in its fourth argument, which the kernel ignores and
/// `outsock run`'s seccomp filter lets through without notifying the supervisor: for a connect
/// liboutsock has already decided is the kernel's (loopback, another family, a lent socket).
/// Unlike libc's connect it is no pthread cancellation point.
///
/// # Safety
/// `addr` points to `len` readable bytes.
pub unsafe fn decided_connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    #[allow(clippy::cast_possible_wrap)] // The mark's bits, as the register holds them.
    // SAFETY: the caller's arguments; the fourth is ignored by the kernel.
    let rc = unsafe {
        syscall(
            libc::SYS_connect,
            c_long::from(fd),
            addr as c_long,
            c_long::from(len),
            shared_proto::translate::DECIDED_MARK as c_long,
            0,
            0,
        )
    };
    c_int::try_from(rc).unwrap_or(-1)
}

/// [`decided_connect`] to an IPv6 address.
pub fn decided_connect_v6(fd: c_int, to: std::net::SocketAddrV6) -> c_int {
    let sa = sockaddr_in6(to);
    #[allow(clippy::cast_possible_truncation)] // 28 bytes.
    let len = std::mem::size_of::<libc::sockaddr_in6>() as socklen_t;
    // SAFETY: a valid sockaddr_in6 of `len` bytes.
    unsafe { decided_connect(fd, std::ptr::from_ref(&sa).cast(), len) }
}

/// The local port of socket `fd` (0 if unknown), read with a getsockname(2) marked as
/// [`decided_connect`]'s connect is.
pub fn decided_local_port(fd: c_int) -> u16 {
    // SAFETY: sockaddr_storage is plain data; all-zero is valid.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    #[allow(clippy::cast_possible_truncation)] // 128 bytes.
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as socklen_t;
    #[allow(clippy::cast_possible_wrap)] // The mark's bits, as the register holds them.
    // SAFETY: a valid buffer of `len` bytes and its length.
    let rc = unsafe {
        syscall(
            libc::SYS_getsockname,
            c_long::from(fd),
            std::ptr::from_mut(&mut ss) as c_long,
            std::ptr::from_mut(&mut len) as c_long,
            shared_proto::translate::DECIDED_MARK as c_long,
            0,
            0,
        )
    };
    if rc != 0 {
        return 0;
    }
    let p = std::ptr::from_ref(&ss);
    match c_int::from(ss.ss_family) {
        // SAFETY: the kernel wrote a sockaddr_in6 (storage is large and aligned enough).
        libc::AF_INET6 => u16::from_be(unsafe { (*p.cast::<libc::sockaddr_in6>()).sin6_port }),
        // SAFETY: the kernel wrote a sockaddr_in.
        libc::AF_INET => u16::from_be(unsafe { (*p.cast::<libc::sockaddr_in>()).sin_port }),
        _ => 0,
    }
}

fn sockaddr_in6(a: std::net::SocketAddrV6) -> libc::sockaddr_in6 {
    // SAFETY: sockaddr_in6 is plain data; all-zero is valid.
    let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
    sa.sin6_port = a.port().to_be();
    sa.sin6_addr.s6_addr = a.ip().octets();
    sa
}

/// Like [`lookup`], for a symbol older C libraries lack (close_range and closefrom came with
/// glibc 2.34): 0 when there is none, so the caller falls back to the system call.
fn lookup_optional(slot: &AtomicUsize, name: &'static [u8]) -> usize {
    const MISSING: usize = usize::MAX;
    match slot.load(Ordering::Relaxed) {
        0 => {}
        MISSING => return 0,
        f => return f,
    }
    // SAFETY: as in `lookup`.
    let found = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr().cast::<c_char>()) } as usize;
    slot.store(if found == 0 { MISSING } else { found }, Ordering::Relaxed);
    found
}

/// libc's own `close_range`, or the system call where libc has none.
///
/// # Safety
/// The caller upholds close_range(2)'s contract (the fds in the range may be closed).
pub unsafe fn close_range(first: libc::c_uint, last: libc::c_uint, flags: c_int) -> c_int {
    static SLOT: AtomicUsize = AtomicUsize::new(0);
    match lookup_optional(&SLOT, b"close_range\0") {
        0 => {
            // SAFETY: the raw system call with the caller's arguments (libc's syscall: the
            // symbol `syscall` is ours once this library is preloaded).
            let rc = unsafe {
                syscall(
                    libc::SYS_close_range,
                    c_long::from(first),
                    c_long::from(last),
                    c_long::from(flags),
                    0,
                    0,
                    0,
                )
            };
            c_int::try_from(rc).unwrap_or(-1)
        }
        f => {
            // SAFETY: libc's close_range, whose C signature this is.
            let f: unsafe extern "C" fn(libc::c_uint, libc::c_uint, c_int) -> c_int =
                unsafe { std::mem::transmute(f) };
            // SAFETY: forwarded from our caller.
            unsafe { f(first, last, flags) }
        }
    }
}

/// libc's own `closefrom`, or close_range over the rest where libc has none.
///
/// # Safety
/// The caller upholds closefrom(3)'s contract (every fd from `low` on may be closed).
pub unsafe fn closefrom(low: c_int) {
    static SLOT: AtomicUsize = AtomicUsize::new(0);
    match lookup_optional(&SLOT, b"closefrom\0") {
        0 => {
            // SAFETY: as our caller's closefrom.
            unsafe {
                close_range(
                    libc::c_uint::try_from(low).unwrap_or(0),
                    libc::c_uint::MAX,
                    0,
                )
            };
        }
        f => {
            // SAFETY: libc's closefrom, whose C signature this is.
            let f: unsafe extern "C" fn(c_int) = unsafe { std::mem::transmute(f) };
            // SAFETY: forwarded from our caller.
            unsafe { f(low) }
        }
    }
}

/// libc's own `sendmsg`, `recvmsg` and `close` for `outsock-fdpass`, which would otherwise call
/// the symbols of those names — ours, once this library is preloaded.
#[derive(Debug, Clone, Copy)]
pub struct Real;

// SAFETY: each method is libc's function of the same name, found with dlsym(RTLD_NEXT).
unsafe impl outsock_fdpass::Sys for Real {
    unsafe fn sendmsg(fd: c_int, msg: *const libc::msghdr, flags: c_int) -> isize {
        // SAFETY: forwarded from our caller, who upholds sendmsg(2)'s contract.
        unsafe { sendmsg(fd, msg, flags) }
    }

    unsafe fn recvmsg(fd: c_int, msg: *mut libc::msghdr, flags: c_int) -> isize {
        // SAFETY: forwarded from our caller, who upholds recvmsg(2)'s contract.
        unsafe { recvmsg(fd, msg, flags) }
    }

    unsafe fn close(fd: c_int) -> c_int {
        // SAFETY: forwarded from our caller, who owns `fd`.
        unsafe { close(fd) }
    }
}
