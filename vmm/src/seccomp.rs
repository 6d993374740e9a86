//! A seccomp filter for each of the VMM's threads (DESIGN.md §8). Once a thread has done its
//! setup it may make only the system calls on its role's allow-list; any other call traps
//! (SIGSYS), and the handler here writes one line naming the call and the thread to stderr and
//! ends the process with status [`code::SECCOMP_VIOLATION`] (6). `seccomp = false`
//! (`--no-seccomp`) turns the filters off for debugging.
//!
//! **One filter per thread role, installed by the thread itself**, not one filter synchronised
//! to every thread with `SECCOMP_FILTER_FLAG_TSYNC`:
//! - The roles need different things: a vCPU thread needs `KVM_RUN` and no socket, the event
//!   loop needs Unix sockets and no KVM, the console drain only writes and waits. One shared
//!   list would be their union.
//! - Each thread is filtered before it touches anything the guest controls:
//!   [`Filters::spawn`] installs the role's filter first thing in the new thread, and the
//!   spawner waits for that to succeed, so when `builder::build_and_boot` returns every vCPU,
//!   the event loop and the console drain are filtered, and no vCPU entered the guest before.
//!   TSYNC from the main thread would come either after the vCPUs started (a window) or
//!   before the threads were spawned (then every list would need thread creation).
//! - The main thread restarts the VM in place by re-executing itself (`on_reboot =
//!   "restart"`), and a seccomp filter survives execve: the successor would die at its first
//!   `openat`. So with `on_reboot = "restart"` the main thread — which only waits for the exit
//!   reason, flushes the console, restores the terminal and tells systemd — stays unfiltered;
//!   with the default `"exit"` it installs the main list right after the VM started
//!   ([`Filters::apply`]). Every thread is spawned from the unfiltered main thread, so each has
//!   exactly its own list (a filter is inherited by threads its thread creates).
//!
//! **The lists** ([`allow_list`]) are what the code paths make after setup, checked under
//! `strace -f` in the lab (vmm/README.md): every thread allocates (never executable memory),
//! waits on futexes, writes (stderr, eventfds, the console), closes what it drops (a debug
//! build's std checks the fd first: `fcntl(F_GETFD)`), reads the clock where the vDSO cannot, ends (a thread's exit blocks signals and drops its alternate
//! signal stack), and may abort (SIGABRT to itself). Beyond that: vCPU — `ioctl(KVM_RUN)` and
//! `epoll_ctl` (a driver reset of the vsock device, an MMIO write, drops its connections);
//! event loop — `epoll_wait`/`epoll_ctl`, `read` (stdin, eventfds, timers), the vsock
//! muxer's Unix sockets (`accept4` on the VM's socket, `socket`+`connect` to host-server, data
//! by std's `recvfrom`/`sendto` and a run of guest packets by `writev`, `shutdown`, std's
//! `ioctl(FIONBIO)`), the sockets host-server
//! passes (`recvmsg` with SCM_RIGHTS, `getsockopt(SO_TYPE)` to check them, then the same data
//! calls; never created here), `timerfd_settime`, and
//! systemd's watchdog datagram (`socket`+`sendto`); stop-signal waiter — `poll` and `read`
//! of its eventfd (the graceful stop's timeout); main — the `STOPPING=1` datagram, `ioctl(TCGETS/TCSETS)` to restore the terminal,
//! and `rt_sigaction`+`kill` to end by the stop signal. Arguments are checked where that is
//! cheap and exact: `socket` only `AF_UNIX` stream (event loop) or datagram (watchdog,
//! sd_notify); `ioctl` only the request numbers above; `mmap`/`mprotect` never with
//! `PROT_EXEC`; `kill`, `tgkill` only to this process and only with the stop signals or
//! SIGABRT; `rt_sigaction` only for the stop signals.
//!
//! A violation means the VMM made a call its list lacks: a code path not seen yet (add the
//! call to that role's list, with a comment naming the path) or a compromised thread.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use seccompiler::{
    BackendError, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};
use vmm_sys_util::ioctl::{ioctl_expr, _IOC_NONE};
use vmm_sys_util::signal::register_signal_handler;

use crate::stop_signal::STOP_SIGNALS;
use crate::vm_exit::code;

/// `KVM_RUN`: `_IO(KVMIO, 0x80)`, as kvm-ioctls issues it.
pub const KVM_RUN: u64 = ioctl_expr(_IOC_NONE, kvm_bindings::KVMIO, 0x80, 0) as u64;

/// The VMM's threads, each with its own allow-list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// One per vCPU: `KVM_RUN` and the device emulation of port I/O and MMIO exits.
    Vcpu,
    /// The device event thread: stdin, the vsock device and its Unix sockets, the watchdog.
    EventLoop,
    /// The console drain: queued guest output to stdout and the log file.
    Console,
    /// The stop-signal waiter (`crate::signals`).
    StopSignals,
    /// The main thread after the VM started: waits, flushes, tells systemd, exits.
    Main,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Vcpu,
        Role::EventLoop,
        Role::Console,
        Role::StopSignals,
        Role::Main,
    ];

    /// The name in messages (the thread names, without a vCPU's index).
    pub fn name(self) -> &'static str {
        match self {
            Role::Vcpu => "vcpu",
            Role::EventLoop => "event-loop",
            Role::Console => "console",
            Role::StopSignals => "stop-signals",
            Role::Main => "main",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("cannot build the seccomp filter of the {role} thread")]
    Build {
        role: &'static str,
        #[source]
        source: BackendError,
    },
    #[error("cannot install the SIGSYS handler")]
    Handler(#[source] io::Error),
    #[error("cannot install the seccomp filter of the {role} thread")]
    Install {
        role: &'static str,
        #[source]
        source: seccompiler::Error,
    },
}

/// The compiled filters of one VMM process, or none (`seccomp = false`, tests).
#[derive(Clone, Default)]
pub struct Filters {
    programs: Option<Arc<[BpfProgram; Role::ALL.len()]>>,
}

impl fmt::Debug for Filters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.programs {
            Some(p) => f
                .debug_map()
                .entries(Role::ALL.iter().map(|r| (r.name(), p[*r as usize].len())))
                .finish(),
            None => f.write_str("Filters(disabled)"),
        }
    }
}

impl Filters {
    /// No filtering: [`Filters::apply`] does nothing and [`Filters::spawn`] only spawns.
    pub fn disabled() -> Self {
        Self::default()
    }

    /// Compiles every role's filter for this process and installs the SIGSYS handler.
    ///
    /// # Errors
    /// When a filter cannot be compiled for this architecture or the handler not installed.
    pub fn new() -> Result<Self, SeccompError> {
        let arch =
            TargetArch::try_from(std::env::consts::ARCH).map_err(|source| SeccompError::Build {
                role: "any",
                source,
            })?;
        let programs = compile_all(arch, std::process::id())?;
        register_signal_handler(libc::SIGSYS, on_sigsys)
            .map_err(|e| SeccompError::Handler(io::Error::from_raw_os_error(e.errno())))?;
        Ok(Self {
            programs: Some(Arc::new(programs)),
        })
    }

    pub fn is_enabled(&self) -> bool {
        self.programs.is_some()
    }

    /// Installs `role`'s filter in the calling thread (for good: filters cannot be removed).
    ///
    /// # Errors
    /// When the kernel refuses it (no seccomp support).
    pub fn apply(&self, role: Role) -> Result<(), SeccompError> {
        let Some(programs) = &self.programs else {
            return Ok(());
        };
        ROLE.set(Some(role));
        seccompiler::apply_filter(&programs[role as usize]).map_err(|source| {
            SeccompError::Install {
                role: role.name(),
                source,
            }
        })
    }

    /// Spawns a thread named `name` that installs `role`'s filter before it runs `body`, and
    /// returns once the filter is in place.
    ///
    /// # Errors
    /// When the thread cannot be spawned or its filter not installed (then `body` never runs).
    pub fn spawn<F>(&self, role: Role, name: String, body: F) -> io::Result<JoinHandle<()>>
    where
        F: FnOnce() + Send + 'static,
    {
        let filters = self.clone();
        let (tx, rx) = mpsc::sync_channel(1);
        let handle = std::thread::Builder::new().name(name).spawn(move || {
            let installed = filters.apply(role);
            let ok = installed.is_ok();
            let _ = tx.send(installed);
            if ok {
                body();
            }
        })?;
        match rx.recv() {
            Ok(Ok(())) => Ok(handle),
            Ok(Err(e)) => Err(io::Error::other(e)),
            Err(_) => Err(io::Error::other(
                "a thread ended before it installed its seccomp filter",
            )),
        }
    }
}

/// Every role's program, in [`Role::ALL`] order, for process `pid` on `arch`.
///
/// # Errors
/// When a list does not compile (it never should: a unit test compiles them all).
pub fn compile_all(
    arch: TargetArch,
    pid: u32,
) -> Result<[BpfProgram; Role::ALL.len()], SeccompError> {
    let compile = |role: Role| {
        allow_list(role, pid)
            .compile(arch)
            .map_err(|source| SeccompError::Build {
                role: role.name(),
                source,
            })
    };
    Ok([
        compile(Role::Vcpu)?,
        compile(Role::EventLoop)?,
        compile(Role::Console)?,
        compile(Role::StopSignals)?,
        compile(Role::Main)?,
    ])
}

/// One condition on a system call argument. Only the low 32 bits are compared: every
/// argument checked here is an `int` or `unsigned int` to the kernel (fd-less flags, request
/// numbers, families, signals, pids), or flags whose bits of interest are low.
#[derive(Debug, Clone, Copy)]
enum Arg {
    /// Argument `index` equals `value`.
    Eq(u8, u64),
    /// Argument `index` AND `mask` equals `value`.
    Masked(u8, u64, u64),
}

impl Arg {
    fn condition(self) -> Result<SeccompCondition, BackendError> {
        match self {
            Arg::Eq(index, value) => {
                SeccompCondition::new(index, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
            }
            Arg::Masked(index, mask, value) => SeccompCondition::new(
                index,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::MaskedEq(mask),
                value,
            ),
        }
    }
}

/// System calls a role may make: unconditionally (`None`) or when any one of the argument
/// lists matches (every condition of that list).
#[derive(Debug, Default)]
pub struct AllowList(BTreeMap<i64, Option<Vec<Vec<Arg>>>>);

impl AllowList {
    /// Allows each of `nrs` whatever its arguments.
    fn any(&mut self, nrs: &[libc::c_long]) {
        for nr in nrs {
            self.0.insert(*nr, None);
        }
    }

    /// Allows `nr` when all of `args` hold (one more alternative if called again).
    fn when(&mut self, nr: libc::c_long, args: &[Arg]) {
        if let Some(alternatives) = self.0.entry(nr).or_insert_with(|| Some(Vec::new())) {
            alternatives.push(args.to_vec());
        }
    }

    /// The BPF program: allow what is listed, trap (SIGSYS) the rest; a foreign architecture
    /// kills the process (seccompiler's check).
    ///
    /// # Errors
    /// When seccompiler rejects it (too long, bad argument index).
    pub fn compile(self, arch: TargetArch) -> Result<BpfProgram, BackendError> {
        let mut rules = BTreeMap::new();
        for (nr, alternatives) in self.0 {
            let chain = match alternatives {
                None => Vec::new(),
                Some(alternatives) => alternatives
                    .into_iter()
                    .map(|args| {
                        let conditions = args
                            .into_iter()
                            .map(Arg::condition)
                            .collect::<Result<Vec<_>, _>>()?;
                        SeccompRule::new(conditions)
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            };
            rules.insert(nr, chain);
        }
        SeccompFilter::new(rules, SeccompAction::Trap, SeccompAction::Allow, arch)?.try_into()
    }
}

const PROT_EXEC: u64 = libc::PROT_EXEC as u64;
/// `SOCK_STREAM`/`SOCK_DGRAM` without `SOCK_CLOEXEC`/`SOCK_NONBLOCK` (the kernel's mask).
const SOCK_TYPE_MASK: u64 = 0xf;
const AF_UNIX: u64 = libc::AF_UNIX as u64;

/// The allow-list of `role` in process `pid`. See the module documentation for the why;
/// each entry's comment names the code path that makes the call.
pub fn allow_list(role: Role, pid: u32) -> AllowList {
    let pid = u64::from(pid);
    let mut l = AllowList::default();

    // Every thread.
    // Mutexes, condition variables, channels, thread joins.
    l.any(&[libc::SYS_futex]);
    // stderr messages (and this module's SIGSYS line), eventfd signals, console output.
    l.any(&[libc::SYS_write]);
    // Dropping a File, socket, eventfd or vCPU fd; in a debug build std first checks that
    // the fd is open (fcntl F_GETFD).
    l.any(&[libc::SYS_close]);
    l.when(libc::SYS_fcntl, &[Arg::Eq(1, libc::F_GETFD as u64)]);
    // The allocator (heap, per-thread arenas, large blocks), a vCPU's kvm_run mapping given
    // back when its thread ends. No new executable memory.
    l.any(&[
        libc::SYS_brk,
        libc::SYS_munmap,
        libc::SYS_mremap,
        libc::SYS_madvise,
    ]);
    l.when(libc::SYS_mmap, &[Arg::Masked(2, PROT_EXEC, 0)]);
    l.when(libc::SYS_mprotect, &[Arg::Masked(2, PROT_EXEC, 0)]);
    // Instant::now and timed waits: a system call where the clocksource has no vDSO path
    // (the lab's emulated machine).
    l.any(&[libc::SYS_clock_gettime]);
    // A thread's end (glibc blocks signals, Rust drops the alternate signal stack), the
    // process's end (exit_group: also the SIGSYS handler's, in whichever thread trapped),
    // returning from a signal handler.
    l.any(&[
        libc::SYS_exit,
        libc::SYS_exit_group,
        libc::SYS_rt_sigprocmask,
        libc::SYS_sigaltstack,
        libc::SYS_rt_sigreturn,
    ]);
    // abort(3) (a panic during a panic): SIGABRT to this process's own thread.
    l.any(&[libc::SYS_getpid, libc::SYS_gettid]);
    l.when(
        libc::SYS_tgkill,
        &[Arg::Eq(0, pid), Arg::Eq(2, libc::SIGABRT as u64)],
    );

    match role {
        Role::Vcpu => {
            // The run loop; everything else of KVM was configured before the thread started.
            l.when(libc::SYS_ioctl, &[Arg::Eq(1, KVM_RUN)]);
            // A guest driver resetting the vsock device (an MMIO write, handled here) drops
            // its connections: the muxer takes their streams out of its epoll.
            l.any(&[libc::SYS_epoll_ctl]);
        }
        Role::EventLoop => {
            // event-manager's loop and the vsock muxer's nested epoll (glibc's epoll_wait is
            // the epoll_wait system call on x86_64).
            l.any(&[libc::SYS_epoll_wait, libc::SYS_epoll_ctl]);
            // stdin, eventfds (queue kicks, the UART's FIFO-empty event), timerfds.
            l.any(&[libc::SYS_read]);
            // vsock stream data: std reads a UnixStream with recv(2) and writes it with
            // send(2, MSG_NOSIGNAL), i.e. recvfrom and sendto; a run of a guest connection's
            // TX packets goes with one writev (no control data: no descriptor leaves).
            l.any(&[libc::SYS_recvfrom, libc::SYS_sendto, libc::SYS_writev]);
            // vsock: host connections on the VM's socket, guest connections to host-server
            // (a non-blocking connect: EAGAIN on a full backlog is retried later), half-closes.
            l.any(&[libc::SYS_accept4, libc::SYS_connect, libc::SYS_shutdown]);
            // SO_PEERCRED of each peer on the VM's socket: who may CONNECT (muxer).
            l.when(
                libc::SYS_getsockopt,
                &[
                    Arg::Eq(1, libc::SOL_SOCKET as u64),
                    Arg::Eq(2, libc::SO_PEERCRED as u64),
                ],
            );
            // Sockets host-server passes with an answer (vsock connection): received with
            // recvmsg (SCM_RIGHTS), checked to be SOCK_STREAM (SO_TYPE), then read, written
            // and shut down like the Unix streams above (recvfrom, sendto, shutdown, FIONBIO).
            // The VMM never creates such a socket: `socket` stays AF_UNIX only.
            l.any(&[libc::SYS_recvmsg]);
            l.when(
                libc::SYS_getsockopt,
                &[
                    Arg::Eq(1, libc::SOL_SOCKET as u64),
                    Arg::Eq(2, libc::SO_TYPE as u64),
                ],
            );
            l.when(
                libc::SYS_socket,
                &[
                    Arg::Eq(0, AF_UNIX),
                    Arg::Masked(1, SOCK_TYPE_MASK, libc::SOCK_STREAM as u64),
                ],
            );
            l.when(libc::SYS_ioctl, &[Arg::Eq(1, libc::FIONBIO)]);
            // The muxer's deadline timer.
            l.any(&[libc::SYS_timerfd_settime]);
            // systemd's watchdog: WATCHDOG=1 from a fresh unbound datagram socket (sendto).
            l.when(
                libc::SYS_socket,
                &[
                    Arg::Eq(0, AF_UNIX),
                    Arg::Masked(1, SOCK_TYPE_MASK, libc::SOCK_DGRAM as u64),
                ],
            );
        }
        Role::Console => {
            // Writes and waits only (every thread's list).
        }
        Role::StopSignals => {
            // Its eventfd, written by the signal handler, waited for with poll (with the
            // graceful stop's timeout after the first signal). Pressing Ctrl+Alt+Del writes
            // the keyboard's irqfd and a line to stderr (write, allowed to every thread).
            l.any(&[libc::SYS_read, libc::SYS_poll]);
        }
        Role::Main => {
            // STOPPING=1 to systemd.
            l.when(
                libc::SYS_socket,
                &[
                    Arg::Eq(0, AF_UNIX),
                    Arg::Masked(1, SOCK_TYPE_MASK, libc::SOCK_DGRAM as u64),
                ],
            );
            l.any(&[libc::SYS_sendto]);
            // Restoring stdin's terminal from raw mode: tcgetattr, tcsetattr(TCSANOW).
            l.when(libc::SYS_ioctl, &[Arg::Eq(1, libc::TCGETS)]);
            l.when(libc::SYS_ioctl, &[Arg::Eq(1, libc::TCSETS)]);
            // signals::die_by: the stop signal's default action, then the signal to itself.
            for sig in STOP_SIGNALS {
                let sig = sig as u64;
                l.when(libc::SYS_rt_sigaction, &[Arg::Eq(0, sig)]);
                l.when(libc::SYS_kill, &[Arg::Eq(0, pid), Arg::Eq(1, sig)]);
            }
        }
    }
    l
}

thread_local! {
    /// The calling thread's role, for the SIGSYS line (const-initialised, no destructor: a
    /// plain TLS read, safe in a signal handler).
    static ROLE: Cell<Option<Role>> = const { Cell::new(None) };
}

/// `si_code` of a SIGSYS raised by `SECCOMP_RET_TRAP`.
const SYS_SECCOMP: libc::c_int = 1;
/// Byte offset of `_sigsys._syscall` in `siginfo_t` on 64-bit Linux: `si_signo`, `si_errno`,
/// `si_code`, padding to 16, then `void *_call_addr`.
const SIGSYS_SYSCALL_OFFSET: usize = 24;

extern "C" fn on_sigsys(_num: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Only async-signal-safe work: reads, a stack buffer, write(2), _exit(2).
    let syscall = if info.is_null() {
        None
    } else {
        // SAFETY: the kernel hands an SA_SIGINFO handler a valid siginfo_t; for si_code
        // SYS_SECCOMP its union holds `_sigsys`, whose `int _syscall` is at byte 24.
        unsafe {
            ((*info).si_code == SYS_SECCOMP).then(|| {
                info.cast::<u8>()
                    .add(SIGSYS_SYSCALL_OFFSET)
                    .cast::<libc::c_int>()
                    .read()
            })
        }
    };
    let mut buf = [0u8; 128];
    let len = violation_line(&mut buf, syscall, ROLE.get());
    // SAFETY: write(2) of an initialised stack buffer and _exit(2) are async-signal-safe;
    // nothing is left to clean up that the kernel does not.
    unsafe {
        libc::write(libc::STDERR_FILENO, buf.as_ptr().cast(), len);
        libc::_exit(code::SECCOMP_VIOLATION);
    }
}

/// Formats the SIGSYS line into `buf` without allocating; returns its length.
fn violation_line(buf: &mut [u8; 128], syscall: Option<libc::c_int>, role: Option<Role>) -> usize {
    let mut w = LineWriter { buf, len: 0 };
    w.push(b"outsock-vmm: seccomp: ");
    match syscall {
        Some(nr) => {
            w.push(b"blocked syscall ");
            w.push_number(nr);
        }
        None => w.push(b"SIGSYS not raised by the filter"),
    }
    if let Some(role) = role {
        w.push(b" in the ");
        w.push(role.name().as_bytes());
        w.push(b" thread");
    }
    w.push(b" (see vmm/README.md)\n");
    w.len
}

/// Appends to a fixed buffer, cutting what does not fit.
struct LineWriter<'a> {
    buf: &'a mut [u8; 128],
    len: usize,
}

impl LineWriter<'_> {
    fn push(&mut self, bytes: &[u8]) {
        for b in bytes {
            if self.len < self.buf.len() {
                self.buf[self.len] = *b;
                self.len += 1;
            }
        }
    }

    fn push_number(&mut self, n: libc::c_int) {
        if n < 0 {
            self.push(b"-");
        }
        let mut digits = [0u8; 10];
        let mut i = digits.len();
        let mut v = n.unsigned_abs();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }
}

#[cfg(test)]
mod tests;
