//! outsock-supervisor: runs an unmodified program under a seccomp user-notification filter and
//! outsources its AF_INET socket calls to host-server from outside the program. It is the
//! second front end of the same translation as liboutsock: liboutsock sees the calls a
//! dynamic program makes through glibc's symbols; the supervisor sees system calls, so static
//! binaries (Debian's busybox-static), Go programs (CGO_ENABLED=0) and raw-syscall tools are
//! translated too. What is outsourced, the `sockaddr_in` bytes and what host-server's answers
//! mean are `shared_proto::translate`, shared by both.
//!
//! How it runs (`outsock run`, by default; Linux >= 5.14 for ADDFD with SETFD):
//!
//! 1. [`run`] spawns the program; between fork and exec the child sets `PR_SET_NO_NEW_PRIVS`
//!    (unless root), installs [`filter::program`] with `SECCOMP_FILTER_FLAG_NEW_LISTENER` and
//!    passes the listener back over a socketpair. liboutsock stays preloaded for dynamic
//!    programs: what it handles never reaches the kernel as an AF_INET non-loopback connect
//!    (its sockets are IPv6 or Unix by then), so nothing is handled twice.
//! 2. The filter notifies `connect`, `getsockname`, `getpeername`, `bind`, `listen`, `accept`,
//!    `accept4`, `recvfrom`/`sendto` with an address, and the socket options a stand-in may
//!    answer wrongly (`getsockopt` of `SO_DOMAIN`, `SO_TYPE`, `SO_PROTOCOL` and
//!    `SO_ACCEPTCONN`; inside a VM more, see 6), and `socket` for an AF_INET ICMP socket (a
//!    ping socket the program's namespace forbids is made in the private network, see 5);
//!    everything else runs untouched at full speed. The i386 ABI (a legacy 32-bit program, or
//!    `int $0x80`) is notified for the same calls, by their direct i386 numbers and through
//!    `socketcall(2)` (Debian's i386 glibc makes every socket call that way, as old binaries
//!    do), and `abi` maps each onto the x86_64 call before anything below sees it, so all of it
//!    serves 32-bit programs too (but their `socket`). The filter is inherited: every descendant (fork, exec,
//!    daemons that double-fork) is served too, and [`run`] serves until no task uses the
//!    filter any more (the listener reports POLLHUP once the last one has exited and been
//!    reaped), while returning the program's own exit status, taken when it exited.
//! 3. `serve` answers each notification. A TCP connect to a non-loopback IPv4 address asks
//!    host-server exactly as liboutsock does in process mode (`Connect` with `pass_fd`, the
//!    answer while the connect is under way) and installs the passed IPv6 socket over the
//!    program's descriptor (`SECCOMP_IOCTL_NOTIF_ADDFD` with `SETFD`, keeping its number,
//!    blocking mode and close-on-exec flag). A non-blocking connect answers EINPROGRESS, as
//!    the kernel would; a blocking one waits here for the handshake and answers 0 or its error.
//!    A refusal is host-server's errno. getsockname/getpeername on such a socket answer the
//!    AF_INET view host-server gave (the dummy peer, the local address).
//! 4. Listeners (TCP servers), exactly as liboutsock's in process mode: `bind` of an AF_INET
//!    TCP socket to a non-loopback address is only recorded (a loopback bind is made here with
//!    the bytes already read; a UDP bind is item 5's). `listen` then asks host-server
//!    (`Listen` with `pass_fd`; its `allowed_ports` rule and its errno apply) to listen on the
//!    host's IPv6 address, and installs the `SOCK_SEQPACKET` packet channel (made here, its
//!    host's end brought with the request and then kept by `keeper`) over
//!    the program's descriptor (ADDFD with SETFD): poll, epoll and select on it are the
//!    kernel's (readable when a connection waits). `accept`/`accept4` on it take one packet —
//!    one `Inbound` frame with the accepted IPv6 socket — so any number of processes
//!    accepting on one inherited listener (prefork) each get whole connections, each reaching
//!    exactly one of them. The socket is added to the program as a new descriptor that is the
//!    call's result (ADDFD with `SECCOMP_ADDFD_FLAG_SEND`; `SOCK_CLOEXEC`/`SOCK_NONBLOCK`
//!    honoured), and the peer — the client's source-pool dummy — is written at `addr`, both
//!    only after `SECCOMP_IOCTL_NOTIF_ID_VALID` says the caller still waits. A non-blocking
//!    listener answers EAGAIN when none waits; a blocking accept waits on a thread, checking
//!    every 100 ms that its caller still waits (a signal ends the call; a restarted call is a
//!    new notification), and a connection taken for a caller that left meanwhile is held for
//!    the next accept on that listener. getsockname on the listener answers the AF_INET
//!    address it listens on; getsockname/getpeername on an accepted socket answer AF_INET. A
//!    second `listen` sends host-server a new backlog. `getsockopt` of `SO_DOMAIN`, `SO_TYPE`,
//!    `SO_PROTOCOL` or `SO_ACCEPTCONN` on the listener (the channel would say `AF_UNIX`,
//!    `SOCK_SEQPACKET`, 0, 0) or on a connection made or accepted here (host-server's IPv6
//!    socket would say `AF_INET6`) answers as the program's own socket would
//!    (`shared_proto::sockopt`, as liboutsock; `AF_INET6` on a dual-stack listener), in
//!    `sockopt`; the filter notifies only those four reads (level and name are plain
//!    integers), and on any other socket they continue.
//! 5. UDP (`udp` tells how), as liboutsock in process mode: a `connect` off loopback installs
//!    host-server's connected host UDP socket (`UdpConnect`); a `bind` off loopback, or the
//!    first `sendto` off loopback, opens an association and installs its *program's end*: a
//!    real `AF_INET` socket in the supervisor's private network (`pnet`: a helper process in
//!    a user + network namespace of its own, whose TUN device the supervisor reads and
//!    writes), so `recvmsg`/`recvmmsg`/`sendmsg`/`sendmmsg` and every option are the kernel's
//!    own; where that cannot be had, an `AF_UNIX` datagram socket to which a relay delivers
//!    each datagram from a per-peer socket named after its IPv4 source (`recvfrom` carried out
//!    here, `sendto` framed here). On host-server's connected socket `recvfrom` with an
//!    address is carried out here and reports the dummy peer. DNS: programs with
//!    their own resolver read /etc/resolv.conf and send to its nameservers; datagrams to one of
//!    them on port 53 go to the guest DNS address (dns-cache, which answers with dummy IPv4
//!    addresses) on an association, and its replies show the nameserver asked, which glibc's
//!    and musl's resolvers check; a socket connected to one is an association whose end is
//!    connected to the nameserver. A TCP connect to a nameserver becomes host-server's relayed
//!    stream to the guest DNS address. ICMP echo (static busybox `ping`): a ping socket's or
//!    raw ICMP socket's first `sendto` (or `connect`) off loopback opens an `Icmp` association
//!    for that destination, its end installed the same way; echo requests only (EINVAL
//!    otherwise), and a raw socket reads each reply behind an IPv4 header (`udp` tells how).
//! 6. Inside a VM (the guest image's /init runs the workload under `outsock run --supervise`):
//!    the transport is liboutsock's setting ([`transport`]: `OUTSOCK_TRANSPORT`, else
//!    `transport=vsock:<port>` in /etc/outsock/shim.conf), and each request is an `AF_VSOCK`
//!    stream to the host that the VMM bridges to host-server. A TCP connect sends `Connect`
//!    without `pass_fd` (blocking unless the program's socket is non-blocking, as liboutsock
//!    asks), and the request's vsock stream, which host-server relays, is installed over the
//!    program's descriptor (ADDFD with SETFD); getsockname/getpeername answer its AF_INET view.
//!    The guest's resolv.conf names the loopback DNS forwarder, which resolvers reach natively
//!    (loopback connects are carried out here), so no nameserver is redirected. Listeners are
//!    liboutsock's VM listeners (`vmlisten`): `listen` makes a vsock listener of our own on a
//!    port the kernel picks, names it in `Listen` (no `pass_fd`), installs it over the
//!    program's descriptor and keeps the request's stream (host-server's listener lives as
//!    long as it); each accepted connection is an inbound vsock stream whose `Inbound` frame
//!    (the client's source-pool dummy) is read here before the stream is added as the
//!    accept's result. The filter also notifies `getsockopt`/`setsockopt` at the levels a
//!    vsock stand-in cannot answer (`IPPROTO_TCP`, `IPPROTO_IP`, and `SO_DOMAIN`/`SO_PROTOCOL`;
//!    through i386 `socketcall`, whose level BPF cannot see, every option call):
//!    on a connection or listener made here they answer by liboutsock's rule
//!    (`shared_proto::sockopt`, in `sockopt`: a TCP or IP option set is checked as Linux
//!    checks it, and its value — for the options the rule remembers: TCP_NODELAY, TCP_CORK,
//!    TCP_MAXSEG, the keepalive ones, TCP_SYNCNT, TCP_USER_TIMEOUT, TCP_NOTSENT_LOWAT, IP_TOS,
//!    IP_TTL — kept per stand-in, by identity, and forgotten as the view table forgets a socket
//!    nobody holds; a read answers it as Linux reads it back, else as an idle AF_INET
//!    connection's), on any other socket they continue. A listener's companion stream is
//!    closed at the next listen after no process holds the listener any more (or when the
//!    supervisor ends), not at once.
//!
//! Time-of-check to time-of-use: addresses are read from the program's memory with
//! `process_vm_readv`, then `SECCOMP_IOCTL_NOTIF_ID_VALID` confirms the caller still waits
//! (so the memory read was the caller's) before anything acts on it; an AF_INET call is then
//! carried out here on a `pidfd_getfd` copy of the program's socket with the bytes already
//! read (a loopback connect included), never continued for the kernel to read again. Calls on
//! other families continue untouched: re-reading cannot make them ours. The supervisor
//! translates; it is not a sandbox (io_uring, for one, bypasses seccomp) — host-server's
//! destination policy is what confines.
//!
//! SIGTERM and SIGHUP sent to the supervisor are passed on to the program; once the program has
//! exited (its descendants still served) they end the supervisor itself (128 + the signal), and
//! its descendants' notified calls then fail with ENOSYS. SIGINT and SIGQUIT do not stop it (a
//! terminal sends them to the program's process group itself).
//!
//! Not in this slice (the calls continue natively, which fails on an IPv6-only network):
//! without the private network, `sendmsg`/`sendmmsg` with an address and `recvmsg`/`recvmmsg`
//! addresses on UDP made here (not notified: `udp` lists the consequences and ICMP's own
//! gaps), AF_INET6 sockets other
//! than dual-stack TCP listeners (those are outsourced as AF_INET ones: `serve`). Of the i386
//! ABI, what the x86_64 one leaves out, and a ping socket its namespace forbids. Socket
//! options set before an outsourced listen are not carried over (before a connect they are:
//! `serve`). In process mode, options on a listener other than the four of 4 are the packet
//! channel's: `SOL_SOCKET` ones that any socket has set and read back as natively
//! (`SO_REUSEADDR` after `listen`, `SO_KEEPALIVE`, `SO_ERROR` 0), but `SO_RCVBUF`/`SO_SNDBUF`
//! read the channel's sizes, `SO_REUSEPORT` set fails with EOPNOTSUPP, and so do
//! `IPPROTO_TCP`/`IPPROTO_IP` options (`TCP_DEFER_ACCEPT`, `TCP_FASTOPEN` or `TCP_NODELAY`
//! set after `listen`: answering them would notify every TCP setsockopt, a round trip for
//! each Go dial); UDP sockets made here read their stand-in's `SO_DOMAIN`/`SO_TYPE`/
//! `SO_PROTOCOL` (host-server's IPv6 UDP socket, an association's `AF_UNIX` end), where
//! liboutsock answers AF_INET. An epoll registration made on a
//! socket before its `listen` stays with the replaced socket, as with liboutsock. A
//! connection taken for a blocking accept whose caller left and held for the next accept
//! makes no descriptor readable (a poller sees the next one only).
//!
//! Cost: each notified call is a round trip to the supervisor (every `connect` and `bind` is
//! notified, AF_UNIX ones included: BPF cannot read the address behind the pointer; inside a
//! VM also every TCP- and IP-level socket option, on any socket: a Go dial sets a few; in
//! process mode only the four `getsockopt` reads of 4, on any socket; through i386
//! `socketcall`, every `sendto` and `recvfrom`, with an address or not, and every
//! `getsockopt` (inside a VM every socket option), and one more process_vm_readv, of its
//! arguments). Calls
//! that only continue take the fast path: one process_vm_readv of the address into the stack
//! (or, for getsockname/getpeername and socket options while nothing was made here, nothing)
//! and the CONTINUE answer, on the loop's own thread; a dynamic program under liboutsock pays
//! one such round trip per connect (the preload's connect to host.sock, none when its kept
//! stream serves). A process-mode TCP connect is made on the loop's thread too; a bind, listen,
//! a VM's connect, a blocking accept or a blocking UDP recvfrom runs on a worker thread (an
//! idle one, kept for 10 s, when there is one). The data path is untouched: reads and writes on
//! a passed socket are the kernel's own.
//!
//! Modules: [`filter`] (the BPF program, safe), `abi` (an i386 notification as the x86_64
//! call), `sys` (every syscall and ioctl; the only `unsafe`; the private network's helper),
//! `pnet` (the private network: packets, pool addresses), `host` (the host-server client),
//! `outcome` (what a notified call becomes), `workers` (the threads calls that may wait run
//! on), [`transport`] (Unix or vsock, as liboutsock chooses),
//! `vmlisten` (listeners inside a VM), `udp` (UDP associations and connected UDP), `sockopt`
//! (options on a stand-in, and a VM's option values kept), `keeper` (process-mode listeners,
//! its own and liboutsock's, registered again when host-server comes back), `serve` (the
//! loop).

#![deny(unsafe_code)]

mod abi;
pub mod filter;
mod host;
mod keeper;
mod outcome;
mod pnet;
mod serve;
mod sockopt;
#[allow(unsafe_code)]
mod sys;
pub mod transport;
mod udp;
mod vmlisten;
mod workers;

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

pub use shared_proto::translate::DEFAULT_GUEST_DNS;

/// Why [`run`] failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The kernel lacks seccomp user notification with ADDFD/SETFD, or a filter this process
    /// runs under forbids another listener; nothing was started.
    #[error("seccomp user notification with ADDFD/SETFD (Linux 5.14) is not available")]
    Unavailable,
    #[error("starting the program under the filter failed")]
    Spawn(#[source] io::Error),
    #[error("waiting for the program failed")]
    Wait(#[source] io::Error),
}

/// Where and how the supervisor reaches outsock.
#[derive(Debug, Clone)]
pub struct Options {
    /// host-server's socket.
    pub host_socket: PathBuf,
    /// The guest DNS address (dns-cache through host-server).
    pub guest_dns: SocketAddrV4,
    /// The resolv.conf whose nameservers are redirected to the guest DNS.
    pub resolv_conf: PathBuf,
}

/// Whether this kernel offers what the supervisor needs: seccomp user notification (5.0),
/// checked with `SECCOMP_GET_ACTION_AVAIL`, and `SECCOMP_IOCTL_NOTIF_ADDFD` with
/// `SECCOMP_ADDFD_FLAG_SETFD` (5.14), which nothing can probe without a notification, so the
/// kernel's release says; and that this process may install a filter with a listener (not
/// where a filter it runs under already has one, or forbids `seccomp`), tried on a throwaway
/// thread.
#[must_use]
pub fn available() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    release_at_least(&release, (5, 14))
        && sys::user_notif_available()
        && sys::listener_installable()
}

/// Whether a kernel release string (`6.18.0-1-amd64`) is at least `want` (major, minor).
fn release_at_least(release: &str, want: (u32, u32)) -> bool {
    let mut parts = release.trim().split(['.', '-']);
    let major = parts.next().and_then(|p| p.parse::<u32>().ok());
    let minor = parts.next().and_then(|p| p.parse::<u32>().ok());
    match (major, minor) {
        (Some(major), Some(minor)) => (major, minor) >= want,
        _ => false,
    }
}

/// The IPv4 nameservers of `path` (none when it cannot be read).
#[must_use]
pub fn nameservers(path: &Path) -> Vec<Ipv4Addr> {
    std::fs::read_to_string(path)
        .map(|t| shared_proto::translate::resolv_conf_nameservers(&t))
        .unwrap_or_default()
}

/// Runs `cmd` under the supervisor until no task uses the filter any more (it and every
/// descendant have exited); returns `cmd`'s status.
///
/// # Errors
/// [`RunError::Unavailable`] before anything started; otherwise spawning or waiting failed.
pub fn run(cmd: &mut Command, opts: &Options) -> Result<ExitStatus, RunError> {
    if !available() {
        return Err(RunError::Unavailable);
    }
    sys::block_stop_signals().map_err(RunError::Spawn)?;
    // Inside a VM (liboutsock's transport setting) host-server is reached over vsock, and the
    // guest's resolv.conf names its loopback forwarder, which resolvers reach natively.
    let vsock = transport::vsock_port();
    let filter = filter::program(filter::Transport::of(vsock));
    // Process mode: the keeper holds every listener across host-server restarts; the programs
    // served (and only they: the variable goes to the program, whose descendants are all
    // served here) learn its socket's name, for liboutsock's listeners. A nested `outsock
    // run` names its own.
    let keeper = if vsock.is_none() {
        keeper::Keeper::start(opts.host_socket.clone()).ok()
    } else {
        None
    };
    match &keeper {
        Some(k) => cmd.env(shared_proto::outsource::KEEPER_ENV, k.name()),
        None => cmd.env_remove(shared_proto::outsource::KEEPER_ENV),
    };
    let (mut child, listener) = sys::spawn(cmd, filter).map_err(RunError::Spawn)?;
    // The child is not reaped before this pidfd is open: it names the program for good.
    let pidfd = sys::pidfd(child.id()).map_err(RunError::Spawn)?;
    std::thread::spawn(move || {
        // Only once the program is gone (its descendants still served) does a stop signal
        // end the supervisor, as it would have ended the program.
        if let Some(sig) = sys::forward_stop_signals(&pidfd) {
            std::process::exit(128 + sig);
        }
    });
    let listener = sys::Listener::new(listener);
    // Best effort (Linux >= 6.6): without it the notified round trip is sometimes ten times
    // longer, when the wake-up goes to an idle CPU (ARCHITECTURE.md).
    let _ = listener.sync_wake_up();
    let nameservers = if vsock.is_some() {
        Vec::new()
    } else {
        nameservers(&opts.resolv_conf)
    };
    let shared = serve::Shared::new(
        listener,
        host::HostServer::new(opts.host_socket.clone()).over_vsock(vsock),
        opts.guest_dns,
        nameservers,
    )
    .with_keeper(keeper);
    serve::serve(shared, &mut child).map_err(RunError::Wait)
}

#[cfg(test)]
mod tests {
    use super::release_at_least;

    #[test]
    fn kernel_releases_compare_by_major_and_minor() {
        assert!(release_at_least("6.18.0-1-amd64\n", (5, 14)));
        assert!(release_at_least("5.14.0", (5, 14)));
        assert!(!release_at_least("5.10.0-28-cloud-amd64", (5, 14)));
        assert!(!release_at_least("4.19.0", (5, 14)));
        assert!(!release_at_least("garbage", (5, 14)));
    }
}
