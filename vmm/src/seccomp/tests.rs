//! The filters as policy (each role's program run by a small classic-BPF interpreter on
//! `seccomp_data`, the kernel's view of a call) and as behaviour (a helper process — this test
//! binary run again for one test — installs a real filter and makes a forbidden or an allowed
//! call).

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Output};
use std::time::Duration;

use vmm_sys_util::terminal::Terminal;

use seccompiler::sock_filter;

use super::*;

const PID: u32 = 4242;
const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
const RET_ALLOW: u32 = 0x7fff_0000;
const RET_TRAP: u32 = 0x0003_0000;
const RET_KILL_PROCESS: u32 = 0x8000_0000;

/// A call as the filter sees it (`struct seccomp_data`).
struct Call {
    nr: libc::c_long,
    arch: u32,
    args: [u64; 6],
}

fn call(nr: libc::c_long, args: &[u64]) -> Call {
    let mut a = [0u64; 6];
    a[..args.len()].copy_from_slice(args);
    Call {
        nr,
        arch: AUDIT_ARCH_X86_64,
        args: a,
    }
}

impl Call {
    /// The 32-bit word at byte `offset` of `struct seccomp_data` (little-endian).
    fn word(&self, offset: u32) -> u32 {
        let mut data = Vec::with_capacity(64);
        data.extend_from_slice(&(self.nr as i32).to_le_bytes());
        data.extend_from_slice(&self.arch.to_le_bytes());
        data.extend_from_slice(&0u64.to_le_bytes());
        for a in self.args {
            data.extend_from_slice(&a.to_le_bytes());
        }
        let o = offset as usize;
        u32::from_le_bytes(data[o..o + 4].try_into().expect("4 bytes"))
    }
}

/// Runs a seccomp program on `c`: the instructions seccompiler emits (load word, AND,
/// jumps, return), as the kernel would.
fn verdict(prog: &[sock_filter], c: &Call) -> u32 {
    const LD_W_ABS: u16 = 0x20;
    const ALU_AND_K: u16 = 0x54;
    const JA: u16 = 0x05;
    const JEQ_K: u16 = 0x15;
    const JGT_K: u16 = 0x25;
    const JGE_K: u16 = 0x35;
    const RET_K: u16 = 0x06;
    let (mut acc, mut pc) = (0u32, 0usize);
    loop {
        let ins = &prog[pc];
        pc += 1;
        let cond = |hit: bool| usize::from(if hit { ins.jt } else { ins.jf });
        match ins.code {
            LD_W_ABS => acc = c.word(ins.k),
            ALU_AND_K => acc &= ins.k,
            JA => pc += ins.k as usize,
            JEQ_K => pc += cond(acc == ins.k),
            JGT_K => pc += cond(acc > ins.k),
            JGE_K => pc += cond(acc >= ins.k),
            RET_K => return ins.k,
            other => panic!("instruction {other:#x} not interpreted here"),
        }
    }
}

fn program(role: Role) -> BpfProgram {
    allow_list(role, PID)
        .compile(TargetArch::x86_64)
        .expect("compiles")
}

fn allowed(role: Role, nr: libc::c_long, args: &[u64]) -> bool {
    match verdict(&program(role), &call(nr, args)) {
        RET_ALLOW => true,
        RET_TRAP => false,
        other => panic!("{}: unexpected action {other:#x}", role.name()),
    }
}

const AF_INET: u64 = libc::AF_INET as u64;
const AF_INET6: u64 = libc::AF_INET6 as u64;
const CLOEXEC: u64 = libc::SOCK_CLOEXEC as u64;
const STREAM: u64 = libc::SOCK_STREAM as u64;
const DGRAM: u64 = libc::SOCK_DGRAM as u64;
const SEQPACKET: u64 = libc::SOCK_SEQPACKET as u64;
const RW: u64 = (libc::PROT_READ | libc::PROT_WRITE) as u64;
/// `KVM_CREATE_VM`: setup, never after.
const KVM_CREATE_VM: u64 = 0xAE01;

#[test]
fn every_role_compiles_for_x86_64() {
    let programs = compile_all(TargetArch::x86_64, PID).expect("every list compiles");
    for (role, prog) in Role::ALL.iter().zip(&programs) {
        // The kernel takes at most 4096 instructions.
        assert!(
            (10..4096).contains(&prog.len()),
            "{}: {} instructions",
            role.name(),
            prog.len()
        );
    }
    assert_eq!(KVM_RUN, 0xAE80, "_IO(0xAE, 0x80)");
}

#[test]
fn a_foreign_architecture_kills_the_process() {
    let mut c = call(libc::SYS_write, &[2]);
    c.arch = 0x4000_0003; // i386
    for role in Role::ALL {
        assert_eq!(
            verdict(&program(role), &c),
            RET_KILL_PROCESS,
            "{}",
            role.name()
        );
    }
}

#[test]
fn every_role_writes_waits_allocates_and_ends_but_never_execs_or_opens() {
    for role in Role::ALL {
        let name = role.name();
        for (nr, args) in [
            (libc::SYS_write, &[2u64][..]),
            (libc::SYS_futex, &[]),
            (libc::SYS_close, &[]),
            (libc::SYS_fcntl, &[3, libc::F_GETFD as u64]),
            (libc::SYS_mmap, &[0, 4096, RW]),
            (libc::SYS_mprotect, &[0, 4096, RW]),
            (libc::SYS_munmap, &[]),
            (libc::SYS_exit, &[]),
            (libc::SYS_exit_group, &[6]),
            (libc::SYS_rt_sigreturn, &[]),
            (libc::SYS_tgkill, &[u64::from(PID), 7, libc::SIGABRT as u64]),
        ] {
            assert!(allowed(role, nr, args), "{name}: {nr} {args:?} is refused");
        }
        for (nr, args) in [
            (libc::SYS_execve, &[][..]),
            (libc::SYS_execveat, &[]),
            (libc::SYS_openat, &[]),
            (libc::SYS_open, &[]),
            (libc::SYS_clone, &[]),
            (libc::SYS_clone3, &[]),
            (libc::SYS_fork, &[]),
            (libc::SYS_ptrace, &[]),
            (libc::SYS_socket, &[AF_INET, STREAM]),
            (libc::SYS_socket, &[AF_INET6, DGRAM]),
            (libc::SYS_mmap, &[0, 4096, RW | PROT_EXEC]),
            (libc::SYS_mprotect, &[0, 4096, PROT_EXEC]),
            (libc::SYS_ioctl, &[3, KVM_CREATE_VM]),
            (
                libc::SYS_fcntl,
                &[3, libc::F_SETFL as u64, libc::O_APPEND as u64],
            ),
            (
                libc::SYS_tgkill,
                &[u64::from(PID) + 1, 7, libc::SIGABRT as u64],
            ),
            (libc::SYS_tgkill, &[u64::from(PID), 7, libc::SIGKILL as u64]),
            (libc::SYS_kill, &[u64::from(PID) + 1, libc::SIGTERM as u64]),
        ] {
            assert!(!allowed(role, nr, args), "{name}: {nr} {args:?} is allowed");
        }
    }
}

#[test]
fn vcpus_run_kvm_and_nothing_of_sockets() {
    let r = Role::Vcpu;
    assert!(allowed(r, libc::SYS_ioctl, &[9, KVM_RUN]));
    assert!(allowed(r, libc::SYS_epoll_ctl, &[]));
    assert!(!allowed(r, libc::SYS_ioctl, &[9, libc::FIONBIO]));
    assert!(!allowed(r, libc::SYS_socket, &[AF_UNIX, STREAM]));
    assert!(!allowed(r, libc::SYS_connect, &[]));
    assert!(!allowed(r, libc::SYS_read, &[]));
}

#[test]
fn the_event_loop_speaks_unix_sockets_only() {
    let r = Role::EventLoop;
    assert!(allowed(r, libc::SYS_socket, &[AF_UNIX, STREAM | CLOEXEC]));
    assert!(allowed(r, libc::SYS_socket, &[AF_UNIX, DGRAM | CLOEXEC]));
    assert!(!allowed(
        r,
        libc::SYS_socket,
        &[AF_UNIX, SEQPACKET | CLOEXEC]
    ));
    assert!(!allowed(r, libc::SYS_socket, &[AF_INET6, STREAM | CLOEXEC]));
    for nr in [
        libc::SYS_epoll_wait,
        libc::SYS_epoll_ctl,
        libc::SYS_read,
        libc::SYS_recvfrom,
        libc::SYS_accept4,
        libc::SYS_connect,
        libc::SYS_sendto,
        libc::SYS_writev,
        libc::SYS_shutdown,
        libc::SYS_timerfd_settime,
    ] {
        assert!(allowed(r, nr, &[]), "{nr}");
    }
    assert!(allowed(r, libc::SYS_ioctl, &[5, libc::FIONBIO]));
    assert!(!allowed(r, libc::SYS_ioctl, &[5, KVM_RUN]));
    assert!(!allowed(r, libc::SYS_bind, &[]));
    assert!(!allowed(r, libc::SYS_listen, &[]));
}

/// The sockets host-server passes (vsock connections bridged to them): received and checked
/// (recvmsg, SO_TYPE), used (the data calls above), never made or reconfigured here.
#[test]
fn the_event_loop_takes_passed_sockets_but_never_makes_one() {
    let r = Role::EventLoop;
    let sol_socket = libc::SOL_SOCKET as u64;
    assert!(allowed(r, libc::SYS_recvmsg, &[]));
    assert!(allowed(
        r,
        libc::SYS_getsockopt,
        &[5, sol_socket, libc::SO_TYPE as u64]
    ));
    assert!(allowed(
        r,
        libc::SYS_getsockopt,
        &[5, sol_socket, libc::SO_PEERCRED as u64]
    ));
    for (level, name) in [
        (sol_socket, libc::SO_RCVBUF as u64),
        (sol_socket, libc::SO_ERROR as u64),
        (libc::IPPROTO_TCP as u64, libc::TCP_INFO as u64),
    ] {
        assert!(!allowed(r, libc::SYS_getsockopt, &[5, level, name]));
    }
    for family in [AF_INET, AF_INET6] {
        for ty in [STREAM, DGRAM, STREAM | CLOEXEC] {
            assert!(
                !allowed(r, libc::SYS_socket, &[family, ty]),
                "{family} {ty}"
            );
        }
    }
    for nr in [
        libc::SYS_setsockopt,
        libc::SYS_sendmsg,
        libc::SYS_bind,
        libc::SYS_socketpair,
    ] {
        assert!(!allowed(r, nr, &[]), "{nr}");
    }
    // No other thread receives sockets.
    for other in [Role::Vcpu, Role::Console, Role::StopSignals, Role::Main] {
        assert!(!allowed(other, libc::SYS_recvmsg, &[]), "{}", other.name());
    }
}

#[test]
fn the_console_and_the_signal_waiter_only_write_and_read() {
    assert!(!allowed(Role::Console, libc::SYS_read, &[]));
    assert!(!allowed(Role::Console, libc::SYS_ioctl, &[1, libc::TCGETS]));
    assert!(allowed(Role::StopSignals, libc::SYS_read, &[]));
    assert!(!allowed(
        Role::StopSignals,
        libc::SYS_socket,
        &[AF_UNIX, DGRAM]
    ));
}

#[test]
fn main_tells_systemd_restores_the_terminal_and_ends_by_its_stop_signal() {
    let r = Role::Main;
    let pid = u64::from(PID);
    assert!(allowed(r, libc::SYS_socket, &[AF_UNIX, DGRAM | CLOEXEC]));
    assert!(!allowed(r, libc::SYS_socket, &[AF_UNIX, STREAM | CLOEXEC]));
    assert!(allowed(r, libc::SYS_sendto, &[]));
    assert!(allowed(r, libc::SYS_ioctl, &[0, libc::TCGETS]));
    assert!(allowed(r, libc::SYS_ioctl, &[0, libc::TCSETS]));
    assert!(!allowed(r, libc::SYS_ioctl, &[0, libc::TIOCSTI]));
    for sig in STOP_SIGNALS {
        let sig = sig as u64;
        assert!(allowed(r, libc::SYS_rt_sigaction, &[sig]));
        assert!(allowed(r, libc::SYS_kill, &[pid, sig]));
    }
    assert!(!allowed(r, libc::SYS_rt_sigaction, &[libc::SIGSYS as u64]));
    assert!(!allowed(r, libc::SYS_kill, &[pid, libc::SIGKILL as u64]));
    assert!(!allowed(r, libc::SYS_kill, &[1, libc::SIGTERM as u64]));
    assert!(!allowed(r, libc::SYS_read, &[]));
}

#[test]
fn the_violation_line_names_the_call_and_the_thread() {
    let mut buf = [0u8; 128];
    let n = violation_line(&mut buf, Some(59), Some(Role::Vcpu));
    assert_eq!(
        &buf[..n],
        b"outsock-vmm: seccomp: blocked syscall 59 in the vcpu thread (see vmm/README.md)\n"
    );
    let n = violation_line(&mut buf, Some(0), None);
    assert_eq!(
        &buf[..n],
        b"outsock-vmm: seccomp: blocked syscall 0 (see vmm/README.md)\n"
    );
    let n = violation_line(&mut buf, None, Some(Role::Main));
    assert!(buf[..n].starts_with(b"outsock-vmm: seccomp: SIGSYS not raised by the filter"));
    let n = violation_line(&mut buf, Some(libc::c_int::MIN), Some(Role::StopSignals));
    assert!(n <= 128);
    assert!(String::from_utf8_lossy(&buf[..n]).contains("-2147483648 in the stop-signals"));
}

#[test]
fn disabled_filters_only_spawn() {
    let (tx, rx) = mpsc::channel();
    let filters = Filters::disabled();
    assert!(!filters.is_enabled());
    filters.apply(Role::Main).expect("a no-op");
    filters
        .spawn(Role::Console, "t".into(), move || {
            tx.send(std::thread::current().name().map(str::to_owned))
                .expect("send");
        })
        .expect("spawn")
        .join()
        .expect("join");
    assert_eq!(rx.recv().expect("body ran"), Some("t".to_owned()));
}

// --- Real filters, in a helper process -------------------------------------------------

const HELPER_ENV: &str = "OUTSOCK_VMM_SECCOMP_HELPER";
const HELPER_OK: &str = "seccomp-helper: all allowed calls worked";

/// This test binary again, running only `test` as helper `case`.
fn run_helper(test: &str, case: &str, env: &[(&str, &str)]) -> Output {
    let module = module_path!()
        .split_once("::")
        .map_or(module_path!(), |(_, m)| m);
    Command::new(std::env::current_exe().expect("the test binary"))
        .args([&format!("{module}::{test}"), "--exact", "--nocapture"])
        .env(HELPER_ENV, case)
        .envs(env.iter().copied())
        .output()
        .expect("run the helper")
}

/// In a helper process: does what `case` says and ends the process; never returns.
fn helper(case: &str) -> ! {
    let filters = Filters::new().expect("filters for this process");
    match case {
        "execve" => {
            filters.apply(Role::Vcpu).expect("install");
            let path = c"/bin/true";
            let argv = [path.as_ptr(), std::ptr::null()];
            let envp = [std::ptr::null()];
            // SAFETY: valid NUL-terminated path and NULL-terminated argv/envp arrays.
            unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
        }
        "socket-inet" => {
            filters.apply(Role::EventLoop).expect("install");
            // SAFETY: socket(2) with plain integer arguments.
            unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        }
        "spawned" => {
            // A thread spawned with a role is filtered before its body runs.
            let h = filters
                .spawn(Role::StopSignals, "stop-signals".into(), || {
                    let _ = UnixDatagram::unbound();
                })
                .expect("spawn");
            let _ = h.join();
        }
        "event-loop-allowed" => event_loop_calls(&filters),
        "console-allowed" => console_calls(&filters),
        "main-allowed" => main_calls(&filters),
        other => panic!("unknown helper case {other}"),
    }
    // Reached only when nothing trapped.
    say("seccomp-helper: not trapped\n");
    // SAFETY: _exit(2) ends the process without running the test harness further.
    unsafe { libc::_exit(0) }
}

/// The event loop's calls after setup, with real std and crate code, under its filter.
fn event_loop_calls(filters: &Filters) {
    let dir = std::env::var("HELPER_DIR").expect("HELPER_DIR");
    let dir = std::path::Path::new(&dir);
    // Setup, before the filter (as in the builder): the VM's listener.
    let listener = UnixListener::bind(dir.join("vm.sock")).expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let mut timer = vmm_sys_util::timerfd::TimerFd::new().expect("timerfd");
    let irq = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
    let (answers, host_server) = UnixStream::pair().expect("socketpair");
    let (passed, mut passed_peer) = UnixStream::pair().expect("socketpair");
    {
        use std::os::fd::AsFd;
        let sent = outsock_fdpass::sendmsg_fd::<outsock_fdpass::Libc>(
            host_server.as_raw_fd(),
            b"answer",
            passed.as_fd().as_raw_fd(),
            0,
        )
        .expect("sendmsg");
        assert_eq!(sent, 6);
    }
    drop(passed);

    filters.apply(Role::EventLoop).expect("install");
    use std::io::{Read, Write};
    // A guest connection to host-server: socket + connect, non-blocking, the hello.
    let mut out = UnixStream::connect(dir.join("vm.sock")).expect("connect");
    out.set_nonblocking(true).expect("FIONBIO");
    out.write_all(b"hello").expect("write");
    // The host side, accepted on the VM's socket.
    let (mut inbound, _) = listener.accept().expect("accept4");
    inbound.set_nonblocking(true).expect("FIONBIO");
    let mut buf = [0u8; 5];
    inbound.read_exact(&mut buf).expect("read");
    assert_eq!(&buf, b"hello");
    out.shutdown(std::net::Shutdown::Write).expect("shutdown");
    drop((out, inbound));
    // A socket passed as host-server passes it (made before the filter, as host-server makes
    // it in its own process): received with the answer, checked, then data both ways.
    let mut got = [0u8; 6];
    let (n, fd) = outsock_fdpass::recv_with_fd(answers.as_raw_fd(), &mut got).expect("recvmsg");
    assert_eq!(&got[..n], b"answer");
    let fd = fd.expect("a socket came with the answer");
    assert_eq!(
        rustix::net::sockopt::socket_type(&fd).expect("SO_TYPE"),
        rustix::net::SocketType::STREAM
    );
    let mut bridged = UnixStream::from(fd);
    bridged.set_nonblocking(true).expect("FIONBIO");
    bridged.write_all(b"to the world").expect("write");
    let mut there = [0u8; 12];
    passed_peer.read_exact(&mut there).expect("read");
    assert_eq!(&there, b"to the world");
    passed_peer.write_all(b"back").expect("write");
    let mut back = [0u8; 4];
    bridged.set_nonblocking(false).expect("FIONBIO");
    bridged.read_exact(&mut back).expect("read");
    assert_eq!(&back, b"back");
    bridged
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown");
    drop((bridged, answers, host_server, passed_peer));
    // Timers, eventfds, the watchdog's datagram, growing memory.
    timer
        .reset(std::time::Duration::from_millis(500), None)
        .expect("timerfd_settime");
    irq.write(1).expect("eventfd write");
    assert_eq!(irq.read().expect("eventfd read"), 1);
    let notify = dir.join("notify");
    outsock_notify::notify_to(notify.to_str().expect("utf-8"), "WATCHDOG=1").expect("sendto");
    let big = vec![7u8; 8 << 20];
    assert_eq!(
        big.iter().map(|b| usize::from(*b)).sum::<usize>(),
        7 * (8 << 20)
    );
    drop(big);
    let _ = std::time::Instant::now();
    say(&format!("{HELPER_OK}\n"));
    // SAFETY: _exit(2) ends the process without running the test harness further.
    unsafe { libc::_exit(0) }
}

/// The console drain under its filter, from spawn to the end of its thread.
fn console_calls(filters: &Filters) -> ! {
    let (console, mut writer) =
        crate::devices::console::Console::spawn(vec![Box::new(std::io::stdout())], 1024, filters)
            .expect("spawn");
    writer.write_all(b"through-the-console\n").expect("queue");
    // Joins the drain thread: its writes and its exit ran under the filter.
    assert_eq!(console.flush_and_stop(Duration::from_secs(5)), 0);
    say(&format!("{HELPER_OK}\n"));
    // SAFETY: _exit(2) ends the process without running the test harness further.
    unsafe { libc::_exit(0) }
}

/// The main thread's calls after the VM started, under its filter: STOPPING=1 to systemd,
/// the terminal back from raw mode, the end by the stop signal.
fn main_calls(filters: &Filters) -> ! {
    let dir = std::env::var("HELPER_DIR").expect("HELPER_DIR");
    // Setup, as `main` does before its filter: stop signals blocked, a terminal on stdin in
    // raw mode.
    crate::signals::block_in_this_thread().expect("block the stop signals");
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty(3) fills two fds; a null name, termios and winsize are allowed.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty");
    // SAFETY: dup2(2) of an open fd onto this helper's stdin.
    assert_eq!(unsafe { libc::dup2(slave, libc::STDIN_FILENO) }, 0);
    std::io::stdin().lock().set_raw_mode().expect("raw mode");

    filters.apply(Role::Main).expect("install");
    outsock_notify::notify_to(&format!("{dir}/notify"), "STOPPING=1").expect("sendto");
    std::io::stdin()
        .lock()
        .set_canon_mode()
        .expect("tcgetattr, tcsetattr");
    say(&format!("{HELPER_OK}\n"));
    crate::signals::die_by(libc::SIGTERM)
}

/// A line to stderr, bypassing the test harness's capture.
fn say(text: &str) {
    // SAFETY: write(2) of a valid buffer.
    unsafe { libc::write(libc::STDERR_FILENO, text.as_ptr().cast(), text.len()) };
}

fn helper_case() -> Option<String> {
    std::env::var(HELPER_ENV).ok()
}

#[test]
fn a_forbidden_call_ends_the_process_with_status_6_and_names_it() {
    if let Some(case) = helper_case() {
        helper(&case);
    }
    let test = "a_forbidden_call_ends_the_process_with_status_6_and_names_it";
    for (case, line) in [
        (
            "execve",
            "outsock-vmm: seccomp: blocked syscall 59 in the vcpu thread (see vmm/README.md)\n",
        ),
        (
            "socket-inet",
            "outsock-vmm: seccomp: blocked syscall 41 in the event-loop thread (see vmm/README.md)\n",
        ),
        (
            "spawned",
            "outsock-vmm: seccomp: blocked syscall 41 in the stop-signals thread (see vmm/README.md)\n",
        ),
    ] {
        let out = run_helper(test, case, &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(code::SECCOMP_VIOLATION),
            "{case}: {:?}\n{err}",
            out.status
        );
        assert!(err.contains(line), "{case}: stderr lacks {line:?}:\n{err}");
        assert!(!err.contains("not trapped"), "{case}:\n{err}");
    }
    assert_eq!(libc::SYS_execve, 59);
    assert_eq!(libc::SYS_socket, 41);
}

/// The helper exited 0 after its checks, with no seccomp line.
fn assert_helper_ok(out: &std::process::Output) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{:?}\n{err}", out.status);
    assert!(err.contains(HELPER_OK), "{err}");
    assert!(!err.contains("seccomp:"), "{err}");
}

#[test]
fn the_event_loop_calls_work_under_its_filter() {
    if let Some(case) = helper_case() {
        helper(&case);
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let notify = UnixDatagram::bind(dir.path().join("notify")).expect("bind");
    notify.set_nonblocking(true).expect("nonblocking");
    let out = run_helper(
        "the_event_loop_calls_work_under_its_filter",
        "event-loop-allowed",
        &[("HELPER_DIR", dir.path().to_str().expect("utf-8"))],
    );
    assert_helper_ok(&out);
    let mut buf = [0u8; 32];
    let n = notify
        .recv(&mut buf)
        .expect("the watchdog datagram arrived");
    assert_eq!(&buf[..n], b"WATCHDOG=1");
}

#[test]
fn the_console_drain_works_under_its_filter() {
    if let Some(case) = helper_case() {
        helper(&case);
    }
    let out = run_helper(
        "the_console_drain_works_under_its_filter",
        "console-allowed",
        &[],
    );
    assert_helper_ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("through-the-console\n"));
}

#[test]
fn the_main_thread_notifies_restores_the_terminal_and_ends_by_sigterm_under_its_filter() {
    if let Some(case) = helper_case() {
        helper(&case);
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let notify = UnixDatagram::bind(dir.path().join("notify")).expect("bind");
    notify.set_nonblocking(true).expect("nonblocking");
    let out = run_helper(
        "the_main_thread_notifies_restores_the_terminal_and_ends_by_sigterm_under_its_filter",
        "main-allowed",
        &[("HELPER_DIR", dir.path().to_str().expect("utf-8"))],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGTERM),
        "{:?}\n{err}",
        out.status
    );
    assert!(err.contains(HELPER_OK), "{err}");
    assert!(!err.contains("seccomp:"), "{err}");
    let mut buf = [0u8; 32];
    let n = notify.recv(&mut buf).expect("STOPPING=1 arrived");
    assert_eq!(&buf[..n], b"STOPPING=1");
}
