//! The notification loop and what each notified call becomes.
//!
//! - `connect` of an AF_INET socket to a non-loopback address: TCP goes to host-server
//!   (`Connect` with `pass_fd`, as liboutsock asks) and the socket it passes back replaces the
//!   program's descriptor (ADDFD with SETFD), with the descriptor's close-on-exec flag, the
//!   program's blocking mode and the options of the shared rule that the program set (those
//!   that differ from a fresh socket's: it sees no setsockopt); in process mode on the loop's
//!   thread (see [`On`]). UDP gets host-server's connected UDP socket the
//!   same way (`udp::connect`), except to a resolv.conf nameserver on port 53 or the guest DNS
//!   address, where it becomes an association whose end is connected to that peer
//!   (`udp::connect_end`: DNS goes to the guest DNS address); TCP to a nameserver becomes a
//!   stream relayed to the guest DNS address. UDP made here connecting again is made afresh
//!   (an association closed first, a port the program bound kept); `connect(AF_UNSPEC)` on
//!   it disconnects (a connected socket of host-server's is given back for a fresh UDP
//!   socket, as liboutsock does).
//!   Loopback, a socket that is not AF_INET any more (liboutsock's outsourced one: its later
//!   connects are the kernel's to answer), and every other AF_INET connect is carried out
//!   here, on our copy of the program's socket with the address bytes already read, so the
//!   kernel never reads the program's memory again; other families continue untouched.
//! - `getsockname`/`getpeername` of a socket made here answer its AF_INET view; others continue.
//! - `recvfrom` with an address on UDP made here is carried out here, on our copy (a
//!   non-blocking one on the loop's thread; a blocking one on a worker that gives up when the
//!   caller has left and after SO_RCVTIMEO), and reports the AF_INET source: the sender's name
//!   on an association, the peer on a connected socket.
//! - `getsockopt`/`setsockopt` (notified only for the options a stand-in may answer wrongly:
//!   in process mode reading a channel's or an IPv6 socket's domain, type, protocol and
//!   listening state; inside a VM also TCP and IP options, whose values set are kept) on a
//!   connection or listener made here answer by the shared rule (`sockopt`); others continue.
//! - `sendto` with an AF_INET address on a ping or raw ICMP socket (or its association's end)
//!   off loopback: an echo request (else EINVAL) on the ICMP association for that destination,
//!   opened now if the socket has none for it (`udp` tells ICMP's story); `connect` of one
//!   opens the association with its end connected to the destination (port 0).
//! - `sendto` with an AF_INET address: on an association it is framed onto the association; on
//!   a connected socket of host-server's, to its peer it is the kernel's, elsewhere the socket
//!   becomes an association whose end stays connected to the peer; the first off loopback (or
//!   to a nameserver) of an unbound UDP socket opens an association; otherwise it is made here
//!   with the bytes already read.
//! - `bind` of an AF_INET UDP socket to a non-loopback address (port 0 too) opens an
//!   association bound there (host-server receives on that port at once).
//! - `bind` of an AF_INET TCP socket to a non-loopback address is recorded; `listen` on it (or
//!   on one never bound) asks host-server to listen and installs the packet channel over the
//!   program's descriptor; `accept`/`accept4` on that take one connection per packet and add
//!   it as the call's result (ADDFD with SEND). Other binds are made here with the bytes
//!   already read (AF_INET) or continue; other listens and accepts continue.
//! - A dual-stack listener (a TCP AF_INET6 socket with IPV6_V6ONLY off, as busybox's `nc -l`
//!   and `httpd -p PORT` make) is outsourced as the AF_INET listener it stands for
//!   (`translate::dual_stack_listener`): `[::]:PORT` (bound by the kernel, or never bound) is
//!   0.0.0.0:PORT, decided at `listen` from our copy of the socket; a bind to a v4-mapped
//!   `::ffff:a.b.c.d` is recorded as a.b.c.d (`translate::dual_stack_bind`). The program sees
//!   AF_INET6 throughout: the listener named `[::]:PORT`, accepted peers and names v4-mapped
//!   (`sockaddr_in6`, 28 bytes). V6ONLY sockets and `::1` stay the kernel's.
//!
//! Sockets are known by identity (device and inode of the open file), never by descriptor
//! number, so dup, fork and descriptor reuse cannot confuse them; sockets nobody holds any more
//! are swept from the table as it grows. Calls that may wait (connect, bind, listen, a
//! blocking accept, a blocking UDP recvfrom, sendto) run on a worker thread (`workers`: an
//! idle one when there is one); the loop never waits for host-server.
//! The loop runs until no task uses the filter: the program's exit only reaps it. Each
//! notification is first decoded by `abi` (an i386 call as the x86_64 one), so all of the
//! above serves the i386 ABI alike.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::process::{Child, ExitStatus};
use std::sync::{Arc, Mutex, PoisonError};

use shared_proto::icmp::is_echo_request;
use shared_proto::outsource::ListenRequest;
use shared_proto::sockopt::StandIn;
use shared_proto::translate::{
    carried_value, connect_answer, connect_request, decode_sockaddr_in, decode_sockaddr_in6,
    dual_stack_bind, dual_stack_listener, dual_stack_name, encode_sockaddr_in, encode_sockaddr_in6,
    is_outsourced, sockaddr_family, v4_mapped, CarriedOption, AF_INET, CARRIED_OPTIONS,
};
use shared_proto::{decode_exact, to_vec, Errno, ToGuest, ToHost};

use crate::abi;
use crate::host::HostServer;
use crate::outcome::Outcome;
use crate::sockopt;
use crate::sys::{self, Listener, Notif, Ready};
use crate::udp::{self, Carries};
use crate::vmlisten;
use crate::workers::Workers;

/// The largest address a program may pass (`sizeof(struct sockaddr_storage)`).
const MAX_ADDR: u64 = 128;
/// The most a UDP recvfrom reads (a UDP datagram).
const MAX_DGRAM: usize = 65_536;
/// `sa_family` of a disconnecting connect.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // 0.
const AF_UNSPEC: u16 = libc::AF_UNSPEC as u16;

fn errno(e: Errno) -> Outcome {
    Outcome::Fail(i32::from(e.0))
}

fn io_fail(e: &io::Error) -> Outcome {
    Outcome::Fail(e.raw_os_error().unwrap_or(libc::EIO))
}

/// What a socket in the table is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A TCP socket made here: an outsourced connect's, or an accepted connection.
    Stream,
    /// The program's own TCP socket, bound (recorded only) to a non-loopback `local`; host-server
    /// binds on listen.
    Bound,
    /// A listener's packet channel, installed over the program's listening socket.
    Listener,
    /// A connected UDP socket of host-server's: recvfrom is answered with `peer`.
    UdpConnected,
    /// The program's end of a UDP association (`udp`): recvfrom reports the sender's name,
    /// sendto is framed here.
    Udp,
}

/// How a socket looks to the program.
#[derive(Debug, Clone, Copy)]
struct View {
    local: SocketAddrV4,
    peer: SocketAddrV4,
    kind: Kind,
}

/// An accepted connection taken from a listener's packet channel.
#[derive(Debug)]
struct Accepted {
    conn: OwnedFd,
    peer: SocketAddrV4,
    local: SocketAddrV4,
}

/// What every handler needs.
#[derive(Debug)]
pub struct Shared {
    listener: Listener,
    host: HostServer,
    guest_dns: SocketAddrV4,
    nameservers: Vec<Ipv4Addr>,
    views: Mutex<Views>,
    /// The threads the calls that may wait run on.
    workers: Arc<Workers>,
    /// Connections taken from a listener (by its identity) for an accept whose caller left
    /// before it got them (a signal): the next accept on that listener gets them first.
    held: Mutex<HashMap<(u64, u64), Vec<Accepted>>>,
    /// Inside a VM: the companion streams of the listeners made here.
    companions: vmlisten::Companions,
    /// The UDP associations made here.
    assocs: Arc<udp::Assocs>,
    /// Inside a VM: the TCP and IP option values set on the stand-ins made here.
    options: sockopt::Memory,
    /// Process mode: the keeper, which registers listeners again when host-server comes back.
    keeper: Option<crate::keeper::Keeper>,
}

/// The sockets made here, by identity. The table is swept of sockets no process holds any
/// more (so that it stays small, and a recycled inode number cannot inherit a stale view)
/// whenever it has doubled since the last sweep.
#[derive(Debug)]
struct Views {
    map: HashMap<(u64, u64), View>,
    /// Those of `map` the program sees as AF_INET6: a dual-stack listener (named as
    /// [`dual_stack_name`] says) and its accepted connections (v4-mapped).
    v6: std::collections::HashSet<(u64, u64)>,
    sweep_at: usize,
}

/// The smallest table that is swept.
const SWEEP_MIN: usize = 1024;

impl Views {
    fn insert(&mut self, id: (u64, u64), view: View) {
        self.insert_as(id, view, false);
    }

    /// Inserts `view`, seen as AF_INET6 by the program if `v6`.
    fn insert_as(&mut self, id: (u64, u64), view: View, v6: bool) {
        self.map.insert(id, view);
        if v6 {
            self.v6.insert(id);
        } else {
            self.v6.remove(&id);
        }
        if self.map.len() >= self.sweep_at {
            let live = sys::socket_inodes(false);
            self.map.retain(|(_, ino), _| live.contains(ino));
            self.v6.retain(|(_, ino)| live.contains(ino));
            self.sweep_at = (self.map.len() * 2).max(SWEEP_MIN);
        }
    }
}

impl Shared {
    #[must_use]
    pub fn new(
        listener: Listener,
        host: HostServer,
        guest_dns: SocketAddrV4,
        nameservers: Vec<Ipv4Addr>,
    ) -> Self {
        Self {
            assocs: Arc::new(udp::Assocs::new(nameservers.clone())),
            listener,
            host,
            guest_dns,
            nameservers,
            views: Mutex::new(Views {
                map: HashMap::new(),
                v6: std::collections::HashSet::new(),
                sweep_at: SWEEP_MIN,
            }),
            held: Mutex::new(HashMap::new()),
            workers: Arc::new(Workers::default()),
            companions: vmlisten::Companions::default(),
            options: sockopt::Memory::default(),
            keeper: None,
        }
    }

    /// The same, with `keeper` holding the listeners made here.
    #[must_use]
    pub fn with_keeper(self, keeper: Option<crate::keeper::Keeper>) -> Self {
        Self { keeper, ..self }
    }

    fn record(&self, fd: RawFd, view: View) {
        if let Ok(id) = sys::identity(fd) {
            self.options.forget(id);
            self.views
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(id, view);
        }
    }

    /// Records `view` for `fd`, a socket the program sees as AF_INET6 if `v6`.
    fn record_as(&self, fd: RawFd, view: View, v6: bool) {
        if let Ok(id) = sys::identity(fd) {
            self.options.forget(id);
            self.views
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert_as(id, view, v6);
        }
    }

    /// Whether the socket whose identity is `id` is one the program sees as AF_INET6.
    fn is_v6(&self, id: (u64, u64)) -> bool {
        self.views
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .v6
            .contains(&id)
    }

    fn view(&self, fd: RawFd) -> Option<View> {
        self.view_by_id(sys::identity(fd).ok()?)
    }

    fn view_by_id(&self, id: (u64, u64)) -> Option<View> {
        self.views
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .map
            .get(&id)
            .copied()
    }

    fn views_empty(&self) -> bool {
        self.views
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .map
            .is_empty()
    }

    fn is_nameserver(&self, a: SocketAddrV4) -> bool {
        a.port() == 53 && self.nameservers.contains(a.ip())
    }

    fn finish(&self, n: &Notif, outcome: Outcome) {
        // ENOENT: the caller went away meanwhile; nothing to do.
        let _ = match outcome {
            Outcome::Return(v) => self.listener.answer(n.id, v),
            Outcome::Fail(e) => self.listener.fail(n.id, e),
            Outcome::Continue => self.listener.allow(n.id),
            Outcome::Gone | Outcome::Answered => Ok(()),
            // Never left for the loop to answer; should it be, the caller is not left waiting.
            Outcome::Defer => self.listener.fail(n.id, libc::EAGAIN),
        };
    }
}

/// Serves notifications until no task uses the filter any more (the program and every
/// descendant have exited and been reaped); returns the program's (`child`'s) status, taken
/// when it exited.
///
/// # Errors
/// When waiting for the child fails.
pub fn serve(shared: Shared, child: &mut Child) -> io::Result<ExitStatus> {
    let shared = Arc::new(shared);
    // The child is not reaped before it has exited, so its pid still names it.
    let exited = sys::pidfd(child.id())?;
    let mut status = None;
    loop {
        // Once the program is reaped its pidfd stays readable: no longer watched.
        let watch = if status.is_none() {
            Some(&exited)
        } else {
            None
        };
        match shared.listener.wait(watch) {
            Ok(Ready::Notif) => {}
            Ok(Ready::None) => continue,
            // Reaped now: a zombie would keep the filter in use (no POLLHUP) for ever.
            Ok(Ready::Exited) => {
                status = Some(child.wait()?);
                continue;
            }
            Err(_) => break,
        }
        let Ok((n, arch)) = shared.listener.recv_arch() else {
            continue;
        };
        // The i386 ABI's calls as the x86_64 ones (`abi`).
        match abi::decode(&n, arch) {
            Ok(call) => dispatch(&shared, call),
            Err(outcome) => shared.finish(&n, outcome),
        }
    }
    // What the program's last sends left in the private network reaches host-server before
    // the supervisor (and its reader) ends.
    shared.assocs.settle();
    match status {
        Some(s) => Ok(s),
        None => child.wait(),
    }
}

fn dispatch(shared: &Arc<Shared>, n: Notif) {
    match n.nr {
        libc::SYS_connect => match read_connect_addr(shared, &n, true) {
            // An AF_INET address, validated: made here on the loop unless a step may wait.
            Ok(bytes) => match connect(shared, &n, &bytes, On::Loop) {
                Outcome::Defer => {
                    let s = Arc::clone(shared);
                    on_thread(shared, n, move || connect(&s, &n, &bytes, On::Worker));
                }
                outcome => shared.finish(&n, outcome),
            },
            Err(outcome) => shared.finish(&n, outcome),
        },
        libc::SYS_getsockname | libc::SYS_getpeername => {
            let outcome = name(shared, &n);
            shared.finish(&n, outcome);
        }
        libc::SYS_recvfrom => recvfrom(shared, n),
        // Notified for AF_INET ICMP sockets only.
        libc::SYS_socket => {
            let outcome = ping_socket(shared, &n);
            shared.finish(&n, outcome);
        }
        libc::SYS_sendto => sendto(shared, n),
        libc::SYS_bind => match read_bind_addr(shared, &n) {
            // A UDP bind may ask host-server for an association: on a thread.
            Ok(bytes) => {
                let s = Arc::clone(shared);
                on_thread(shared, n, move || bind(&s, &n, &bytes));
            }
            Err(outcome) => shared.finish(&n, outcome),
        },
        libc::SYS_listen => listen(shared, n),
        libc::SYS_accept | libc::SYS_accept4 => accept(shared, n),
        // Only the options a stand-in may answer wrongly (`sockopt::may_answer`).
        libc::SYS_getsockopt | libc::SYS_setsockopt => {
            let outcome = match stand_in(shared, &n) {
                Some((id, s)) => sockopt::answer(&shared.listener, &n, s, &shared.options, id),
                None => Outcome::Continue,
            };
            shared.finish(&n, outcome);
        }
        _ => shared.finish(&n, Outcome::Continue),
    }
}

/// What stands in for the program's TCP socket that notification `n` names, and its identity,
/// when it is one made here (a connection or a listener); `None` for any other socket. Its
/// identity only, in one stat, and nothing at all while nothing was made here.
fn stand_in(s: &Shared, n: &Notif) -> Option<((u64, u64), StandIn)> {
    if s.views_empty() {
        return None;
    }
    let id = sys::identity_of(n.pid, fd_arg(n)).ok()?;
    let view = s.view_by_id(id)?;
    let (listener, udp) = match view.kind {
        Kind::Stream => (false, false),
        Kind::Listener => (true, false),
        // host-server's IPv6 UDP socket (an association's end is a real AF_INET socket in the
        // private network, or an AF_UNIX one: the kernel's answer either way).
        Kind::UdpConnected => (false, true),
        Kind::Bound | Kind::Udp => return None,
    };
    let stand_in = StandIn {
        listener,
        vsock: !s.host.passes_fds(),
        v6: s.is_v6(id),
        udp,
    };
    Some((id, stand_in))
}

#[allow(clippy::cast_possible_truncation)] // Descriptors are ints in the syscall ABI.
fn fd_arg(n: &Notif) -> RawFd {
    n.args[0] as RawFd
}

/// The address of a connect or bind, read from the caller's memory and validated (the caller still
/// waits, so the bytes were its own) when it is AF_INET; otherwise what the call becomes at
/// once (other families continue, a bad pointer fails).
///
/// The fast path — every connect and bind of another family (a dynamic program's connect to
/// host.sock under liboutsock) — reads into the stack and continues: one process_vm_readv and
/// the answer, no allocation and no validity check (continuing acts on nothing we read).
/// A connect's AF_UNSPEC (`unspec`: a disconnect) is read too: UDP made here answers it.
fn read_connect_addr(s: &Shared, n: &Notif, unspec: bool) -> Result<Vec<u8>, Outcome> {
    read_addr(s, n, |b| match sockaddr_family(b) {
        Some(AF_INET) => true,
        Some(AF_UNSPEC) => unspec,
        _ => false,
    })
}

/// The address of a bind, as [`read_connect_addr`] reads a connect's: an AF_INET one, or an
/// AF_INET6 one that may be recorded ([`dual_stack_bind`]); other binds continue.
fn read_bind_addr(s: &Shared, n: &Notif) -> Result<Vec<u8>, Outcome> {
    read_addr(s, n, |b| {
        sockaddr_family(b) == Some(AF_INET)
            || decode_sockaddr_in6(b).and_then(dual_stack_bind).is_some()
    })
}

/// The address of a connect or bind, read into the stack; validated and copied where `take`
/// wants it, otherwise the call continues.
fn read_addr(s: &Shared, n: &Notif, take: impl Fn(&[u8]) -> bool) -> Result<Vec<u8>, Outcome> {
    let (ptr, len) = (n.args[1], n.args[2] & 0xffff_ffff);
    if ptr == 0 || len > MAX_ADDR {
        // Nothing to read: the kernel gives the error a native call gets.
        return Err(Outcome::Continue);
    }
    let mut buf = [0u8; MAX_ADDR as usize];
    #[allow(clippy::cast_possible_truncation)] // At most 128.
    let bytes = &mut buf[..len as usize];
    if sys::read_into(n.pid, ptr, bytes).is_err() {
        return Err(Outcome::Fail(libc::EFAULT));
    }
    if !take(bytes) {
        return Err(Outcome::Continue);
    }
    if !s.listener.valid(n.id) {
        return Err(Outcome::Gone);
    }
    Ok(bytes.to_vec())
}

/// Where a call is being worked out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum On {
    /// The notification loop: nothing here may wait (for host-server beyond [`INLINE_WAIT_MS`],
    /// for the network, for a peer); such a step is [`Outcome::Defer`]red before it starts, or
    /// handed to a worker once under way.
    Loop,
    /// A worker thread: anything may wait.
    Worker,
}

/// How long the loop waits for host-server's answer to a connect before it hands the rest to
/// a worker. In process mode host-server answers without waiting for the network (the socket
/// comes back while its connect is under way), so the answer is normally there in well under
/// this, and the connect costs no hop to another thread.
const INLINE_WAIT_MS: i32 = 2;

/// An AF_INET (or AF_UNSPEC) connect whose address `bytes` [`read_connect_addr`] read.
fn connect(s: &Arc<Shared>, n: &Notif, bytes: &[u8], on: On) -> Outcome {
    if sockaddr_family(bytes) == Some(AF_UNSPEC) {
        // A disconnect may give a socket back to host-server: on a worker.
        if on == On::Loop {
            return Outcome::Defer;
        }
        return disconnect(s, n, bytes);
    }
    let Some(dest) = decode_sockaddr_in(bytes) else {
        return Outcome::Fail(libc::EINVAL);
    };
    let copy = match sys::take_fd(n.pid, fd_arg(n)) {
        Ok(c) => c,
        Err(e) => return io_fail(&e),
    };
    // A blocking native connect may wait (a full backlog): not on the loop.
    let native = || {
        if on == On::Loop && !nonblocking(&copy) {
            return Outcome::Defer;
        }
        match sys::connect_raw(copy.as_raw_fd(), bytes) {
            0 => Outcome::Return(0),
            e => Outcome::Fail(e),
        }
    };
    if let Some(view) = s.view(copy.as_raw_fd()).filter(|v| v.kind != Kind::Bound) {
        // An ICMP association connecting off loopback: a new one for that destination.
        if view.kind == Kind::Udp && is_outsourced(dest) {
            if let Some(Carries::Icmp { raw, .. }) = assoc_of(s, &copy).map(|a| a.carries) {
                if on == On::Loop {
                    return Outcome::Defer;
                }
                return icmp_connect(s, n, &copy, raw, dest);
            }
        }
        // UDP made here connecting (again) off loopback: as for a fresh socket, its association
        // closed first.
        if matches!(view.kind, Kind::Udp | Kind::UdpConnected) && is_outsourced(dest) {
            // host-server is asked, and an association may close first: on a worker.
            if on == On::Loop {
                return Outcome::Defer;
            }
            return udp_connect(s, n, &copy, dest, view.kind);
        }
        // A TCP socket made here is already connected or connecting: another connect gets
        // what the kernel says about it (0 once, then EISCONN; EALREADY), as natively.
        return native();
    }
    // Loopback stays local; so does a socket that is not AF_INET (any more): liboutsock's,
    // already outsourced and replaced by its IPv6 socket, whose later connects it leaves to
    // the kernel (EALREADY, EISCONN) — translating them again would start a second connect.
    if !is_outsourced(dest) || !domain_is_inet(&copy) {
        return native();
    }
    let ty = match sys::sockopt_int(copy.as_raw_fd(), libc::SOL_SOCKET, libc::SO_TYPE) {
        Ok(t) => t,
        Err(e) => return io_fail(&e),
    };
    let dns = s.is_nameserver(dest);
    match ty {
        libc::SOCK_STREAM => tcp(s, n, copy, dest, dns, on),
        // UDP's requests are asked and answered in one go, and may wait: on a worker.
        libc::SOCK_DGRAM if on == On::Loop => Outcome::Defer,
        libc::SOCK_DGRAM if dns => udp_dns(s, n, &copy, dest),
        libc::SOCK_DGRAM if is_udp(&copy) => udp_connect(s, n, &copy, dest, Kind::Bound),
        // A ping or raw ICMP socket: an ICMP association for `dest`, its end connected.
        libc::SOCK_DGRAM | libc::SOCK_RAW if on == On::Loop && icmp_socket(&copy).is_some() => {
            Outcome::Defer
        }
        libc::SOCK_DGRAM | libc::SOCK_RAW => match icmp_socket(&copy) {
            Some(raw) => icmp_connect(s, n, &copy, raw, dest),
            None => native(),
        },
        // Not outsourced: the native call (ENETUNREACH on an IPv6-only host).
        _ => native(),
    }
}

/// Whether `copy` is an AF_INET ICMP socket: `Some(false)` a ping socket
/// (`SOCK_DGRAM, IPPROTO_ICMP`), `Some(true)` a raw one (`SOCK_RAW, IPPROTO_ICMP`).
fn icmp_socket(copy: &OwnedFd) -> Option<bool> {
    let fd = copy.as_raw_fd();
    if !domain_is_inet(copy)
        || sys::sockopt_int(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL).ok()? != libc::IPPROTO_ICMP
    {
        return None;
    }
    match sys::sockopt_int(fd, libc::SOL_SOCKET, libc::SO_TYPE).ok()? {
        libc::SOCK_DGRAM => Some(false),
        libc::SOCK_RAW => Some(true),
        _ => None,
    }
}

/// The association whose program's end `end` (our copy) is, while its relay runs.
fn assoc_of(s: &Shared, end: &OwnedFd) -> Option<Arc<udp::Assoc>> {
    sys::identity(end.as_raw_fd())
        .ok()
        .and_then(|id| s.assocs.get(id))
}

/// Makes the program's ICMP socket (`copy`: a ping or, `raw`, a raw ICMP socket, or the end
/// of an ICMP association of ours, which closes once replaced) the end of a new ICMP
/// association for `dest`; returns our copy of the installed end.
fn icmp_associate(
    s: &Shared,
    n: &Notif,
    copy: &OwnedFd,
    raw: bool,
    dest: SocketAddrV4,
) -> Result<(OwnedFd, Arc<udp::Assoc>), Outcome> {
    let old = s
        .view(copy.as_raw_fd())
        .filter(|v| v.kind == Kind::Udp)
        .and_then(|_| sys::identity(copy.as_raw_fd()).ok());
    let unbound = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0);
    let carries = Carries::Icmp {
        dest: *dest.ip(),
        raw,
    };
    let opened = associate(s, n, copy, unbound, false, carries)?;
    if let Some(id) = old {
        s.assocs.close(id);
    }
    Ok(opened)
}

/// `connect` of an ICMP socket (or association end) to the non-loopback `dest`: an ICMP
/// association for `dest` whose end is connected to it (plain send/write/recv/read there, as
/// on a connected ping socket; replies come from `dest`, port 0).
fn icmp_connect(s: &Shared, n: &Notif, copy: &OwnedFd, raw: bool, dest: SocketAddrV4) -> Outcome {
    let (end, assoc) = match icmp_associate(s, n, copy, raw, dest) {
        Ok(a) => a,
        Err(o) => return o,
    };
    let peer = SocketAddrV4::new(*dest.ip(), 0);
    if let Err(e) = udp::connect_end(&assoc, &end, peer, false) {
        return Outcome::Fail(e);
    }
    if let Some(v) = s.view(end.as_raw_fd()) {
        s.record(end.as_raw_fd(), View { peer, ..v });
    }
    Outcome::Return(0)
}

/// A sendto to `dest` on an ICMP socket (`raw`: a raw one) or on the end of its ICMP
/// association (`assoc`): loopback from a socket of the program's own is the kernel's (with
/// the bytes already read); otherwise an echo request (anything else is EINVAL, liboutsock's
/// rule) goes on the association for `dest`, opened now when the socket has none for it (a
/// send to another destination opens a new one, as liboutsock does).
#[allow(clippy::too_many_arguments)]
fn icmp_send(
    s: &Shared,
    n: &Notif,
    copy: &OwnedFd,
    raw: bool,
    assoc: Option<Arc<udp::Assoc>>,
    dest: SocketAddrV4,
    data: &[u8],
    flags: i32,
    native: impl FnOnce() -> Outcome,
) -> Outcome {
    if !is_outsourced(dest) {
        return if assoc.is_some() {
            Outcome::Fail(libc::ENETUNREACH)
        } else {
            native()
        };
    }
    if !is_echo_request(data) {
        return Outcome::Fail(libc::EINVAL);
    }
    let theirs = Carries::Icmp {
        dest: *dest.ip(),
        raw,
    };
    if let Some(a) = assoc.filter(|a| a.carries == theirs) {
        return send_on(s, &a, copy, dest, data, flags);
    }
    match icmp_associate(s, n, copy, raw, dest) {
        Ok((end, a)) => send_on(s, &a, &end, dest, data, flags),
        Err(o) => o,
    }
}

/// `socket(AF_INET, type, IPPROTO_ICMP)`: a ping socket the program's groups may not open in
/// its namespace (`ping_group_range`) is made in the private network instead
/// (`udp::ping_stand_in`) and becomes the call's result, with the program's `SOCK_NONBLOCK`
/// and `SOCK_CLOEXEC`; anything else (a raw socket, one the kernel allows) is the kernel's.
fn ping_socket(s: &Shared, n: &Notif) -> Outcome {
    #[allow(clippy::cast_possible_truncation)] // An int in the syscall ABI.
    let ty = n.args[1] as i32;
    if ty & 0xf != libc::SOCK_DGRAM {
        return Outcome::Continue;
    }
    let sock = match udp::ping_stand_in(&s.assocs, n.pid) {
        None => return Outcome::Continue,
        Some(Ok(sock)) => sock,
        Some(Err(e)) => return io_fail(&e),
    };
    if let Err(e) = sys::set_nonblocking(sock.as_raw_fd(), ty & libc::SOCK_NONBLOCK != 0) {
        return io_fail(&e);
    }
    match s
        .listener
        .add_fd_answer(n.id, sock.as_raw_fd(), ty & libc::SOCK_CLOEXEC != 0)
    {
        Ok(_) => Outcome::Answered,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Outcome::Gone,
        Err(e) => io_fail(&e),
    }
}

/// `connect(AF_UNSPEC)`, carried out here with the bytes read: a connected UDP socket of
/// host-server's is given back as liboutsock does (a fresh, unbound AF_INET UDP socket takes
/// the descriptor, so the next datagram off loopback opens an association); an association's
/// end is disconnected from its peer; anything else is the kernel's.
fn disconnect(s: &Shared, n: &Notif, bytes: &[u8]) -> Outcome {
    let copy = match sys::take_fd(n.pid, fd_arg(n)) {
        Ok(c) => c,
        Err(e) => return io_fail(&e),
    };
    let view = s.view(copy.as_raw_fd());
    if view.is_some_and(|v| v.kind == Kind::UdpConnected) {
        let fresh = match sys::udp_socket() {
            Ok(f) => f,
            Err(e) => return io_fail(&e),
        };
        sys::copy_timeouts(copy.as_raw_fd(), fresh.as_raw_fd());
        return match install(s, n, &fresh, nonblocking(&copy)) {
            Ok(()) => Outcome::Return(0),
            Err(o) => o,
        };
    }
    let rc = sys::connect_raw(copy.as_raw_fd(), bytes);
    if rc != 0 {
        return Outcome::Fail(rc);
    }
    if let Some(v) = view.filter(|v| v.kind == Kind::Udp) {
        let nobody = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0);
        s.record(copy.as_raw_fd(), View { peer: nobody, ..v });
    }
    Outcome::Return(0)
}

fn nonblocking(copy: &OwnedFd) -> bool {
    sys::status_flags(copy.as_raw_fd()).is_ok_and(|f| f & libc::O_NONBLOCK != 0)
}

/// Whether the program's descriptor `fd` is close-on-exec (`/proc/PID/fdinfo`).
fn cloexec(pid: u32, fd: RawFd) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("flags:"))
                .and_then(|v| i64::from_str_radix(v.trim(), 8).ok())
        })
        .is_some_and(|f| f & i64::from(libc::O_CLOEXEC) != 0)
}

/// Makes `new` the program's descriptor `fd`, with the program's blocking mode and
/// close-on-exec flag, if the caller still waits.
fn install(s: &Shared, n: &Notif, new: &OwnedFd, nonblocking: bool) -> Result<(), Outcome> {
    install_with(s, n, new, nonblocking, cloexec(n.pid, fd_arg(n)))
}

/// [`install`] with the close-on-exec flag already read (`/proc/PID/fdinfo`, read while
/// host-server works on the request).
fn install_with(
    s: &Shared,
    n: &Notif,
    new: &OwnedFd,
    nonblocking: bool,
    cloexec: bool,
) -> Result<(), Outcome> {
    let fd = fd_arg(n);
    sys::set_nonblocking(new.as_raw_fd(), nonblocking).map_err(|e| io_fail(&e))?;
    if !s.listener.valid(n.id) {
        return Err(Outcome::Gone);
    }
    s.listener
        .install(n.id, new.as_raw_fd(), fd, cloexec)
        .map_err(|e| io_fail(&e))
}

fn tcp(
    s: &Arc<Shared>,
    n: &Notif,
    copy: OwnedFd,
    dest: SocketAddrV4,
    dns: bool,
    on: On,
) -> Outcome {
    // As liboutsock: in process mode the socket comes back while its connect is under way;
    // inside a VM host-server relays on the request's stream, answering a blocking connect
    // once it is made (so there it is asked from a worker).
    let pass_fd = s.host.passes_fds();
    if on == On::Loop && !pass_fd {
        return Outcome::Defer;
    }
    let nonblocking = nonblocking(&copy);
    let target = if dns { s.guest_dns } else { dest };
    let req = connect_request(target, pass_fd, nonblocking || pass_fd);
    let pending = match s.host.send(&req) {
        Ok(p) => p,
        Err(e) => return errno(e),
    };
    // While host-server works: what the program's socket carries over.
    let carried = Carried {
        cloexec: cloexec(n.pid, fd_arg(n)),
        options: set_options(&copy),
    };
    if on == On::Loop && !pending.ready_within(INLINE_WAIT_MS) {
        // host-server is slow today: the rest on a worker, the loop goes on.
        let (s2, n2) = (Arc::clone(s), *n);
        let later = move || tcp_answer(&s2, &n2, &copy, pending, dest, dns, &carried, On::Worker);
        on_thread(s, *n, later);
        return Outcome::Answered;
    }
    tcp_answer(s, n, &copy, pending, dest, dns, &carried, on)
}

/// What an outsourced socket takes over from the program's: its descriptor's close-on-exec
/// flag and the options the program set.
#[derive(Debug)]
struct Carried {
    cloexec: bool,
    options: Vec<(CarriedOption, Vec<u8>)>,
}

/// The options of the shared rule ([`CARRIED_OPTIONS`]) that the program set on `copy`: those
/// whose value differs from a fresh socket's (the supervisor sees no `setsockopt`), with the
/// value to set on the host's socket. A value set equal to the default is not told apart, and
/// need not be (SO_RCVBUF/SO_SNDBUF read back doubled, so those always are).
fn set_options(copy: &OwnedFd) -> Vec<(CarriedOption, Vec<u8>)> {
    static DEFAULTS: std::sync::OnceLock<Vec<Option<Vec<u8>>>> = std::sync::OnceLock::new();
    let defaults = DEFAULTS.get_or_init(|| {
        let fresh = sys::tcp_socket(libc::AF_INET).ok();
        CARRIED_OPTIONS
            .iter()
            .map(|o| {
                let fd = fresh.as_ref()?.as_raw_fd();
                sys::sockopt_bytes(fd, o.level, o.name, o.size).ok()
            })
            .collect()
    });
    CARRIED_OPTIONS
        .iter()
        .zip(defaults)
        .filter_map(|(o, default)| {
            let now = sys::sockopt_bytes(copy.as_raw_fd(), o.level, o.name, o.size).ok()?;
            (default.as_ref() != Some(&now)).then(|| (*o, carried_value(*o, &now)))
        })
        .collect()
}

/// The rest of [`tcp`]: host-server's answer, the socket installed, the outcome.
#[allow(clippy::too_many_arguments)]
fn tcp_answer(
    s: &Arc<Shared>,
    n: &Notif,
    copy: &OwnedFd,
    pending: crate::host::Pending,
    dest: SocketAddrV4,
    dns: bool,
    carried: &Carried,
    on: On,
) -> Outcome {
    let nonblocking = nonblocking(copy);
    let answer = match pending.answer(&s.host) {
        Ok(a) => a,
        Err(e) => return errno(e),
    };
    let c = match connect_answer(&answer.msg) {
        Ok(c) => c,
        Err(e) => return errno(e),
    };
    // Without a passed socket (the guest DNS address) host-server relays on the stream itself.
    let new: OwnedFd = match answer.passed {
        // host-server keeps the stream that brought a socket, for the next connect.
        Some(passed) => {
            s.host.keep(answer.stream);
            passed
        }
        None => answer.stream.into(),
    };
    // As liboutsock: an option the host's socket refuses is left at its default.
    for (o, v) in &carried.options {
        let _ = sys::set_sockopt_bytes(new.as_raw_fd(), o.level, o.name, v);
    }
    if let Err(o) = install_with(s, n, &new, nonblocking, carried.cloexec) {
        return o;
    }
    let peer = if dns { dest } else { c.peer };
    s.record(
        new.as_raw_fd(),
        View {
            local: c.local,
            peer,
            kind: Kind::Stream,
        },
    );
    let wait = move || match sys::wait_connected(new.as_raw_fd()) {
        0 => Outcome::Return(0),
        e => Outcome::Fail(e),
    };
    match (c.in_progress, nonblocking, on) {
        (false, _, _) => Outcome::Return(0),
        (true, true, _) => Outcome::Fail(libc::EINPROGRESS),
        (true, false, On::Worker) => wait(),
        // A blocking connect answers once the network has: on a worker.
        (true, false, On::Loop) => {
            on_thread(s, *n, wait);
            Outcome::Answered
        }
    }
}

/// Whether `copy` is an AF_INET UDP socket (not a ping socket).
fn is_udp(copy: &OwnedFd) -> bool {
    let fd = copy.as_raw_fd();
    domain_is_inet(copy)
        && sys::sockopt_int(fd, libc::SOL_SOCKET, libc::SO_TYPE)
            .is_ok_and(|t| t == libc::SOCK_DGRAM)
        && sys::sockopt_int(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL)
            .is_ok_and(|p| p == libc::IPPROTO_UDP)
}

/// `connect` of a UDP socket (`was`: what it is here, `Kind::Bound` for the program's own)
/// to the non-loopback `dest`: host-server's connected UDP socket replaces the program's
/// descriptor (`udp::connect`); an association of ours closes first, and a port the program
/// bound for it is kept (asked for again while host-server is still closing it). To a
/// nameserver on port 53, or a destination host-server only reaches by association (the guest
/// DNS address), it is an association whose end is connected to it (`dns_pair`).
fn udp_connect(s: &Shared, n: &Notif, copy: &OwnedFd, dest: SocketAddrV4, was: Kind) -> Outcome {
    let mut bind = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0);
    // An association connecting to a nameserver stays one (its DNS goes to the guest DNS).
    if was == Kind::Udp && s.is_nameserver(dest) {
        let assoc = sys::identity(copy.as_raw_fd())
            .ok()
            .and_then(|id| s.assocs.get(id));
        if let Some(assoc) = assoc {
            return match udp::connect_end(&assoc, copy, dest, true) {
                Ok(()) => {
                    if let Some(v) = s.view(copy.as_raw_fd()) {
                        s.record(copy.as_raw_fd(), View { peer: dest, ..v });
                    }
                    Outcome::Return(0)
                }
                Err(e) => Outcome::Fail(e),
            };
        }
    }
    // The association this socket is: closed before host-server is asked for the port the
    // program bound, else once the socket has been replaced (a failed connect leaves it be).
    let old = (was == Kind::Udp)
        .then(|| sys::identity(copy.as_raw_fd()).ok())
        .flatten();
    if let Some(id) = old {
        bind = s.assocs.get(id).and_then(|a| a.bound).unwrap_or(bind);
        if bind.port() != 0 {
            s.assocs.close(id);
        }
    }
    let outcome = udp_connect_afresh(s, n, copy, dest, bind);
    if let (Some(id), Outcome::Return(_)) = (old, outcome) {
        s.assocs.close(id);
    }
    outcome
}

/// [`udp_connect`] once any association of the socket is dealt with: bound to `bind`.
fn udp_connect_afresh(
    s: &Shared,
    n: &Notif,
    copy: &OwnedFd,
    dest: SocketAddrV4,
    bind: SocketAddrV4,
) -> Outcome {
    // Inside a VM there is no host socket to pass: an association connected to `dest`.
    if s.is_nameserver(dest) || !s.host.passes_fds() {
        return udp_dns(s, n, copy, dest);
    }
    let nonblocking = nonblocking(copy);
    let mut tries = if bind.port() == 0 { 1 } else { 10 };
    let got = loop {
        tries -= 1;
        match udp::connect(&s.host, bind, dest) {
            Err(e) if e == Errno::EADDRINUSE && tries > 0 => {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            r => break r,
        }
    };
    let (new, local) = match got {
        Ok(Some(c)) => c,
        Ok(None) => return udp_dns(s, n, copy, dest),
        Err(e) => return errno(e),
    };
    sys::copy_timeouts(copy.as_raw_fd(), new.as_raw_fd());
    if let Err(o) = install(s, n, &new, nonblocking) {
        return o;
    }
    s.record(
        new.as_raw_fd(),
        View {
            local,
            peer: dest,
            kind: Kind::UdpConnected,
        },
    );
    Outcome::Return(0)
}

/// Makes the program's UDP (or ICMP: `carries`) socket `copy` the program's end of a new
/// association bound to `bind` (`bound`: by the program); returns our copy of it, installed
/// and recorded.
fn associate(
    s: &Shared,
    n: &Notif,
    copy: &OwnedFd,
    bind: SocketAddrV4,
    bound: bool,
    carries: Carries,
) -> Result<(OwnedFd, Arc<udp::Assoc>), Outcome> {
    let nonblocking = nonblocking(copy);
    let o = udp::open(&s.host, &s.assocs, s.guest_dns, bind, bound, carries).map_err(errno)?;
    // The program's timeouts hold on its new socket (a resolver times its waits with them),
    // and on a real socket in the private network its other options too.
    sys::copy_timeouts(copy.as_raw_fd(), o.end.as_raw_fd());
    if o.assoc.is_private() {
        udp::carry_options(copy, &o.end);
    }
    // Should the install fail, the relay finds the end gone and closes the association.
    install(s, n, &o.end, nonblocking)?;
    s.record(
        o.end.as_raw_fd(),
        View {
            local: o.local,
            peer: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
            kind: Kind::Udp,
        },
    );
    Ok((o.end, o.assoc))
}

/// `data` sent to `dest` on the association whose program's end is `end`.
fn assoc_send(s: &Shared, end: &OwnedFd, dest: SocketAddrV4, data: &[u8], flags: i32) -> Outcome {
    let assoc = sys::identity(end.as_raw_fd())
        .ok()
        .and_then(|id| s.assocs.get(id));
    let Some(assoc) = assoc else {
        // Its relay has ended (host-server closed it).
        return Outcome::Fail(libc::ENETUNREACH);
    };
    send_on(s, &assoc, end, dest, data, flags)
}

/// `data` sent to `dest` on `assoc`, whose program's end is `end` (our copy): framed here, at
/// once (its errors the call's, and nothing left in flight should the program exit next);
/// on an ICMP end in the private network by the kernel's send on it with `flags` instead (a
/// ping socket's identifier is the kernel's to set), loopback excepted (the association is
/// host-server's).
fn send_on(
    s: &Shared,
    assoc: &udp::Assoc,
    end: &OwnedFd,
    dest: SocketAddrV4,
    data: &[u8],
    flags: i32,
) -> Outcome {
    // ICMP: the kernel's send on the end (a ping socket's identifier is the kernel's).
    if assoc.is_private() && assoc.carries != Carries::Udp {
        if !is_outsourced(dest) {
            return Outcome::Fail(libc::ENETUNREACH);
        }
        return match sys::send_to(end.as_raw_fd(), data, flags, &encode_sockaddr_in(dest)) {
            Ok(m) => Outcome::Return(i64::try_from(m).unwrap_or(i64::MAX)),
            Err(e) => Outcome::Fail(e),
        };
    }
    match udp::send(assoc, dest, s.is_nameserver(dest), data) {
        Ok(m) => Outcome::Return(i64::try_from(m).unwrap_or(i64::MAX)),
        Err(e) => Outcome::Fail(e),
    }
}

fn udp_dns(s: &Shared, n: &Notif, copy: &OwnedFd, dest: SocketAddrV4) -> Outcome {
    match dns_pair(s, n, copy, dest) {
        Ok(_) => Outcome::Return(0),
        Err(o) => o,
    }
}

/// Makes the program's UDP socket (`copy`) an association whose end is connected to `dest`
/// (a nameserver, or the guest DNS address itself: DNS, which goes to the guest DNS address);
/// returns our copy of the program's (installed) end.
fn dns_pair(s: &Shared, n: &Notif, copy: &OwnedFd, dest: SocketAddrV4) -> Result<OwnedFd, Outcome> {
    let unbound = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0);
    let (end, assoc) = associate(s, n, copy, unbound, false, Carries::Udp)?;
    udp::connect_end(&assoc, &end, dest, s.is_nameserver(dest)).map_err(Outcome::Fail)?;
    if let Some(v) = s.view(end.as_raw_fd()) {
        s.record(end.as_raw_fd(), View { peer: dest, ..v });
    }
    Ok(end)
}

/// `sendto` with an address (`send` has none and never comes here): an AF_INET address is
/// [`send_datagram`]'s, on a thread of its own (it may open an association); other families
/// continue.
fn sendto(shared: &Arc<Shared>, n: Notif) {
    let (ptr, len) = (n.args[4], n.args[5] & 0xffff_ffff);
    if len > MAX_ADDR {
        shared.finish(&n, Outcome::Continue);
        return;
    }
    #[allow(clippy::cast_possible_truncation)] // At most 128.
    let Ok(addr) = sys::read_mem(n.pid, ptr, len as usize) else {
        shared.finish(&n, Outcome::Fail(libc::EFAULT));
        return;
    };
    if !shared.listener.valid(n.id) {
        return;
    }
    if sockaddr_family(&addr) != Some(AF_INET) {
        shared.finish(&n, Outcome::Continue);
        return;
    }
    // A datagram to a nameserver may need host-server: on a thread of its own.
    let s = Arc::clone(shared);
    on_thread(shared, n, move || send_datagram(&s, &n, &addr));
}

/// A sendto to the AF_INET `addr`: on UDP made here as the module docs say (an unconnected
/// UDP socket sending to a nameserver on port 53, musl's resolver for one, opens an
/// association whose DNS goes to the guest DNS address); otherwise made here with the bytes
/// already read.
fn send_datagram(s: &Shared, n: &Notif, addr: &[u8]) -> Outcome {
    let Some(dest) = decode_sockaddr_in(addr) else {
        return Outcome::Fail(libc::EINVAL);
    };
    let [fd, buf, len, flags, _, _] = n.args;
    let oversize = len > udp::MAX_PAYLOAD as u64;
    #[allow(clippy::cast_possible_truncation)] // Capped; flags are an int.
    let (fd, len, flags) = (
        fd as RawFd,
        len.min(MAX_DGRAM as u64) as usize,
        flags as i32,
    );
    let Ok(data) = sys::read_mem(n.pid, buf, len) else {
        return Outcome::Fail(libc::EFAULT);
    };
    if !s.listener.valid(n.id) {
        return Outcome::Gone;
    }
    let copy = match sys::take_fd(n.pid, fd) {
        Ok(c) => c,
        Err(e) => return io_fail(&e),
    };
    let sent =
        |target: &OwnedFd, to: &[u8]| match sys::send_to(target.as_raw_fd(), &data, flags, to) {
            Ok(m) => Outcome::Return(i64::try_from(m).unwrap_or(i64::MAX)),
            Err(e) => Outcome::Fail(e),
        };
    // A ping or raw ICMP socket, or the end of its association: ICMP echo.
    let view = s.view(copy.as_raw_fd());
    let icmp = match view {
        Some(v) if v.kind == Kind::Udp => assoc_of(s, &copy).and_then(|a| match a.carries {
            Carries::Icmp { raw, .. } => Some((raw, Some(a))),
            Carries::Udp => None,
        }),
        Some(_) => None,
        None => icmp_socket(&copy).map(|raw| (raw, None)),
    };
    if let Some((raw, assoc)) = icmp {
        return icmp_send(s, n, &copy, raw, assoc, dest, &data, flags, || {
            sent(&copy, addr)
        });
    }
    let nameserver = s.is_nameserver(dest);
    match view {
        Some(v) if v.kind == Kind::Udp && oversize => return Outcome::Fail(libc::EMSGSIZE),
        Some(v) if v.kind == Kind::Udp => return assoc_send(s, &copy, dest, &data, flags),
        // To its peer: the kernel's, on the connected socket (IPv6 would carry a few bytes more
        // than an IPv4 datagram may).
        Some(v) if v.kind == Kind::UdpConnected && oversize => {
            return Outcome::Fail(libc::EMSGSIZE)
        }
        Some(v) if v.kind == Kind::UdpConnected && dest == v.peer => return sent(&copy, &[]),
        // Elsewhere (allowed natively): as liboutsock, it becomes an association, its end
        // still connected to the peer (write goes there; only the peer is heard, as natively).
        Some(v) if v.kind == Kind::UdpConnected && is_outsourced(dest) && !oversize => {
            let unbound = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0);
            let (end, assoc) = match associate(s, n, &copy, unbound, false, Carries::Udp) {
                Ok(a) => a,
                Err(o) => return o,
            };
            if let Err(e) = udp::connect_end(&assoc, &end, v.peer, false) {
                return Outcome::Fail(e);
            }
            if let Some(now) = s.view(end.as_raw_fd()) {
                s.record(
                    end.as_raw_fd(),
                    View {
                        peer: v.peer,
                        ..now
                    },
                );
            }
            return send_on(s, &assoc, &end, dest, &data, flags);
        }
        _ => {}
    }
    let unconnected_udp = sys::sockopt_int(copy.as_raw_fd(), libc::SOL_SOCKET, libc::SO_TYPE)
        .is_ok_and(|t| t == libc::SOCK_DGRAM)
        && domain_is_inet(&copy)
        && sys::peer_unset(copy.as_raw_fd());
    // The first datagram off loopback (or to a nameserver, whose DNS goes to the guest DNS
    // address) of a UDP socket that is not bound (its own bind made an association already, or
    // was to loopback): an association.
    if unconnected_udp
        && !oversize
        && (is_outsourced(dest) || nameserver)
        && is_udp(&copy)
        && sys::local_port(copy.as_raw_fd()).is_ok_and(|p| p == 0)
    {
        let unbound = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0);
        return match associate(s, n, &copy, unbound, false, Carries::Udp) {
            Ok((end, assoc)) => send_on(s, &assoc, &end, dest, &data, flags),
            Err(o) => o,
        };
    }
    // Not outsourced (loopback stays local; elsewhere ENETUNREACH on an IPv6-only host),
    // made with the bytes already read.
    sent(&copy, addr)
}

/// Writes `a` at the program's `addr`/`len` pointers as the kernel does (truncated to `*len`,
/// `*len` set to the full size).
fn write_sockaddr(s: &Shared, n: &Notif, addr: u64, len_ptr: u64, a: SocketAddrV4) -> Outcome {
    write_addr(s, n, addr, len_ptr, &encode_sockaddr_in(a))
}

/// Writes `a` as [`write_sockaddr`] does, or, on a socket the program sees as AF_INET6 (`v6`),
/// as the v4-mapped `sockaddr_in6` of a dual-stack socket.
fn write_view(
    s: &Shared,
    n: &Notif,
    addr: u64,
    len_ptr: u64,
    a: SocketAddrV4,
    v6: bool,
) -> Outcome {
    if v6 {
        write_sockaddr_in6(s, n, addr, len_ptr, v4_mapped(a))
    } else {
        write_sockaddr(s, n, addr, len_ptr, a)
    }
}

fn write_sockaddr_in6(s: &Shared, n: &Notif, addr: u64, len_ptr: u64, a: SocketAddrV6) -> Outcome {
    write_addr(s, n, addr, len_ptr, &encode_sockaddr_in6(a))
}

/// Writes the address `bytes` at the program's `addr`/`len` pointers as the kernel does
/// (truncated to `*len`, `*len` set to the full size).
fn write_addr(s: &Shared, n: &Notif, addr: u64, len_ptr: u64, bytes: &[u8]) -> Outcome {
    if addr == 0 || len_ptr == 0 {
        return Outcome::Fail(libc::EFAULT);
    }
    let Ok(len) = sys::read_mem(n.pid, len_ptr, 4) else {
        return Outcome::Fail(libc::EFAULT);
    };
    let len = i32::from_ne_bytes([len[0], len[1], len[2], len[3]]);
    let Ok(len) = usize::try_from(len) else {
        return Outcome::Fail(libc::EINVAL);
    };
    if !s.listener.valid(n.id) {
        return Outcome::Gone;
    }
    #[allow(clippy::cast_possible_truncation)] // 16 or 28.
    let full = (bytes.len() as u32).to_ne_bytes();
    let wrote = sys::write_mem(n.pid, addr, &bytes[..len.min(bytes.len())])
        .and_then(|()| sys::write_mem(n.pid, len_ptr, &full));
    match wrote {
        Ok(()) => Outcome::Return(0),
        Err(_) => Outcome::Fail(libc::EFAULT),
    }
}

fn name(s: &Shared, n: &Notif) -> Outcome {
    // The fast path: nothing made here yet (a dynamic program under liboutsock, whose
    // outsourced sockets the preload answers for), nothing to look up.
    if s.views_empty() {
        return Outcome::Continue;
    }
    // Its identity only, in one stat: no descriptor copied.
    let Ok(id) = sys::identity_of(n.pid, fd_arg(n)) else {
        return Outcome::Continue;
    };
    let Some(view) = s.view_by_id(id) else {
        return Outcome::Continue;
    };
    let a = match (n.nr == libc::SYS_getpeername, view.kind) {
        (false, _) => view.local,
        // Not connected: the kernel says so for the program's own bound socket.
        (true, Kind::Bound) => return Outcome::Continue,
        (true, Kind::Listener) => return Outcome::Fail(libc::ENOTCONN),
        // (A connected ICMP end's peer has port 0.)
        (true, Kind::Udp) if view.peer.ip().is_unspecified() => {
            return Outcome::Fail(libc::ENOTCONN)
        }
        (true, _) => view.peer,
    };
    match (s.is_v6(id), view.kind) {
        // A dual-stack listener is named by what it was bound to (`[::]:PORT`).
        (true, Kind::Listener) => {
            write_sockaddr_in6(s, n, n.args[1], n.args[2], dual_stack_name(a))
        }
        (v6, _) => write_view(s, n, n.args[1], n.args[2], a, v6),
    }
}

fn recvfrom(shared: &Arc<Shared>, n: Notif) {
    // Looked up by identity (one stat, no descriptor copied): most recvfroms continue — on
    // the program's own sockets, and on an end in the private network, a real AF_INET socket.
    let view = (!shared.views_empty())
        .then(|| sys::identity_of(n.pid, fd_arg(&n)).ok())
        .flatten()
        .and_then(|id| Some((id, shared.view_by_id(id)?)));
    let ours = view.filter(|&(id, v)| match v.kind {
        Kind::UdpConnected => true,
        Kind::Udp => !shared.assocs.get(id).is_some_and(|a| a.is_private()),
        _ => false,
    });
    let copy = ours.and_then(|_| sys::take_fd(n.pid, fd_arg(&n)).ok());
    let (Some((_, view)), Some(copy)) = (ours, copy) else {
        shared.finish(&n, Outcome::Continue);
        return;
    };
    #[allow(clippy::cast_possible_truncation)] // An int in the syscall ABI.
    let flags = n.args[3] as i32;
    if flags & libc::MSG_DONTWAIT != 0 || nonblocking(&copy) {
        let outcome = receive(shared, &n, &copy, view, flags | libc::MSG_DONTWAIT);
        shared.finish(&n, outcome);
        return;
    }
    // A blocking read waits on a thread of its own, giving up when the caller has left (a
    // signal), and after the socket's SO_RCVTIMEO (EAGAIN) as natively.
    let s = Arc::clone(shared);
    on_thread(shared, n, move || {
        let deadline =
            sys::receive_timeout(copy.as_raw_fd()).map(|t| std::time::Instant::now() + t);
        loop {
            if !s.listener.valid(n.id) {
                return Outcome::Gone;
            }
            match receive(&s, &n, &copy, view, flags | libc::MSG_DONTWAIT) {
                Outcome::Fail(libc::EAGAIN) => {}
                other => return other,
            }
            if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                return Outcome::Fail(libc::EAGAIN);
            }
            let _ = sys::wait_readable(copy.as_raw_fd(), ACCEPT_RECHECK_MS);
        }
    });
}

/// Works out notification `n`'s outcome with `work` on a thread of its own and answers it
/// there; where no thread can start, the call fails with EAGAIN.
fn on_thread(shared: &Arc<Shared>, n: Notif, work: impl FnOnce() -> Outcome + Send + 'static) {
    let s = Arc::clone(shared);
    let job = Box::new(move || {
        let outcome = work();
        s.finish(&n, outcome);
    });
    if shared.workers.run(job).is_err() {
        shared.finish(&n, Outcome::Fail(libc::EAGAIN));
    }
}

/// One recvfrom with an address carried out here on our `copy` of the program's socket (an
/// association's end, connected or not; a connected UDP socket of host-server's) with `flags`:
/// the payload and the AF_INET source (the sender's name on an association, else the peer)
/// written into the program's memory, as the kernel would have.
fn receive(s: &Shared, n: &Notif, copy: &OwnedFd, view: View, flags: i32) -> Outcome {
    let [_, buf, len, _, addr, len_ptr] = n.args;
    #[allow(clippy::cast_possible_truncation)] // Capped.
    let len = len.min(MAX_DGRAM as u64) as usize;
    let got = if view.kind == Kind::Udp {
        sys::recv_from_name(copy.as_raw_fd(), len, flags)
            .map(|(d, full, name)| (d, full, udp::source_of(&name)))
    } else {
        sys::recv(copy.as_raw_fd(), len, flags).map(|(d, full)| (d, full, view.peer))
    };
    let (data, full, from) = match got {
        Ok(r) => r,
        Err(e) => return Outcome::Fail(e),
    };
    // A caller gone now loses this answer, as a thread killed inside recvfrom would.
    if !s.listener.valid(n.id) {
        return Outcome::Gone;
    }
    if sys::write_mem(n.pid, buf, &data).is_err() {
        return Outcome::Fail(libc::EFAULT);
    }
    match write_sockaddr(s, n, addr, len_ptr, from) {
        Outcome::Return(_) => Outcome::Return(i64::try_from(full).unwrap_or(i64::MAX)),
        other => other,
    }
}

/// `bind` with an AF_INET address (`bytes`, read and validated): a TCP socket's non-loopback
/// address is only recorded, as liboutsock does, and host-server binds for real on listen; a
/// loopback bind, and any other socket's, is made here with the bytes already read. The same
/// for a v4-mapped AF_INET6 address ([`dual_stack_bind`]) on a dual-stack TCP socket, recorded
/// as its IPv4 address and shown v4-mapped.
fn bind(s: &Shared, n: &Notif, bytes: &[u8]) -> Outcome {
    let copy = match sys::take_fd(n.pid, fd_arg(n)) {
        Ok(c) => c,
        Err(e) => return io_fail(&e),
    };
    let native = || match sys::bind_raw(copy.as_raw_fd(), bytes) {
        0 => Outcome::Return(0),
        e => Outcome::Fail(e),
    };
    // An AF_INET6 address that read_bind_addr took: v4-mapped, recorded on a dual-stack TCP
    // socket (a V6ONLY one, or another kind, gets the kernel's answer).
    let (addr, v6) = if sockaddr_family(bytes) == Some(AF_INET) {
        let Some(addr) = decode_sockaddr_in(bytes) else {
            return Outcome::Fail(libc::EINVAL);
        };
        if is_outsourced(addr) && is_udp(&copy) && s.view(copy.as_raw_fd()).is_none() {
            // Natively a second bind fails.
            if sys::local_port(copy.as_raw_fd()).map_or(true, |p| p != 0) {
                return Outcome::Fail(libc::EINVAL);
            }
            // A UDP socket: host-server's association, bound now (`udp` says why even port 0).
            return match associate(s, n, &copy, addr, addr.port() != 0, Carries::Udp) {
                Ok(_) => Outcome::Return(0),
                Err(o) => o,
            };
        }
        if !is_outsourced(addr) || !inet_stream(&copy) {
            return native();
        }
        (addr, false)
    } else {
        match decode_sockaddr_in6(bytes).and_then(dual_stack_bind) {
            Some(addr) if dual_stack_socket(&copy) => (addr, true),
            _ => return native(),
        }
    };
    match s.view(copy.as_raw_fd()) {
        // Bound (here) or made here already: natively a second bind fails.
        Some(_) => Outcome::Fail(libc::EINVAL),
        None if sys::local_port(copy.as_raw_fd()).is_ok_and(|p| p != 0) => {
            Outcome::Fail(libc::EINVAL)
        }
        None => {
            s.record_as(
                copy.as_raw_fd(),
                View {
                    local: addr,
                    peer: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
                    kind: Kind::Bound,
                },
                v6,
            );
            Outcome::Return(0)
        }
    }
}

/// Whether `copy` is an AF_INET TCP socket.
fn domain_is_inet(copy: &OwnedFd) -> bool {
    sys::sockopt_int(copy.as_raw_fd(), libc::SOL_SOCKET, libc::SO_DOMAIN)
        .is_ok_and(|d| d == libc::AF_INET)
}

fn inet_stream(copy: &OwnedFd) -> bool {
    let fd = copy.as_raw_fd();
    sys::sockopt_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN).is_ok_and(|d| d == libc::AF_INET)
        && sys::sockopt_int(fd, libc::SOL_SOCKET, libc::SO_TYPE)
            .is_ok_and(|t| t == libc::SOCK_STREAM)
}

/// `listen`: an AF_INET TCP socket bound here (or not bound at all) becomes a listener of
/// host-server's on the host's IPv6 address, as liboutsock's in process mode: `Listen` with
/// `pass_fd`, and the packet channel of the answer installed over the program's descriptor
/// (readable when a connection waits, so poll/epoll/select are the kernel's). On a listener
/// already, a `Listen` packet on its channel changes host-server's backlog, as natively. A
/// loopback-bound socket's listen, and every other, continues.
fn listen(shared: &Arc<Shared>, n: Notif) {
    let Ok(copy) = sys::take_fd(n.pid, fd_arg(&n)) else {
        shared.finish(&n, Outcome::Continue);
        return;
    };
    #[allow(clippy::cast_possible_truncation)] // An int in the syscall ABI.
    let backlog = u32::try_from((n.args[1] as i32).max(0)).unwrap_or(0);
    let (addr, v6) = match shared.view(copy.as_raw_fd()) {
        // Inside a VM the listener is a vsock listener: the kernel's listen sets its backlog.
        Some(v) if v.kind == Kind::Listener && !shared.host.passes_fds() => {
            shared.finish(&n, Outcome::Continue);
            return;
        }
        Some(v) if v.kind == Kind::Listener => {
            let outcome = relisten(&copy, v.local, backlog);
            shared.finish(&n, outcome);
            return;
        }
        Some(v) if v.kind == Kind::Bound => (
            v.local,
            sys::identity(copy.as_raw_fd()).is_ok_and(|id| shared.is_v6(id)),
        ),
        // Not bound at all: as liboutsock, host-server picks (port 0).
        None if inet_stream(&copy) && sys::local_port(copy.as_raw_fd()).is_ok_and(|p| p == 0) => {
            (SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0), false)
        }
        // A dual-stack AF_INET6 listener: the IPv4 one it stands for, shown as AF_INET6.
        None => match dual_stack(&copy) {
            Some(a) => (a, true),
            None => {
                shared.finish(&n, Outcome::Continue);
                return;
            }
        },
        // Made here otherwise, bound natively (loopback), another family: the kernel's.
        Some(_) => {
            shared.finish(&n, Outcome::Continue);
            return;
        }
    };
    let s = Arc::clone(shared);
    on_thread(shared, n, move || {
        outsource_listen(&s, &n, &copy, addr, backlog, v6)
    });
}

/// The IPv4 listener that a `listen` on `copy` is outsourced as when `copy` is a dual-stack
/// TCP AF_INET6 socket that does not listen yet ([`dual_stack_listener`] decides from its
/// IPV6_V6ONLY and the address the kernel bound it to, `[::]:0` if never bound).
fn dual_stack(copy: &OwnedFd) -> Option<SocketAddrV4> {
    let fd = copy.as_raw_fd();
    if !dual_stack_socket(copy)
        || sys::sockopt_int(fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN).ok()? != 0
    {
        return None;
    }
    let bound = decode_sockaddr_in6(&sys::local_addr(fd).ok()?)?;
    dual_stack_listener(bound, false)
}

/// Whether `copy` is a TCP AF_INET6 socket with IPV6_V6ONLY off.
fn dual_stack_socket(copy: &OwnedFd) -> bool {
    let fd = copy.as_raw_fd();
    let is = |level, name, want| sys::sockopt_int(fd, level, name).is_ok_and(|v| v == want);
    is(libc::SOL_SOCKET, libc::SO_DOMAIN, libc::AF_INET6)
        && is(libc::SOL_SOCKET, libc::SO_TYPE, libc::SOCK_STREAM)
        && is(libc::SOL_SOCKET, libc::SO_PROTOCOL, libc::IPPROTO_TCP)
        && is(libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 0)
}

fn listen_request(addr: SocketAddrV4, backlog: u32) -> ToHost {
    ToHost::Listen(listen_req(addr, backlog, false))
}

fn listen_req(addr: SocketAddrV4, backlog: u32, channel: bool) -> ListenRequest {
    ListenRequest {
        addr,
        backlog,
        pass_fd: true,
        vsock_port: 0,
        channel,
    }
}

/// Asks host-server to listen; the program's end of the packet channel and the local address.
/// With a keeper, the channel is made here and its host's end brought with the request, and
/// the keeper gets a copy of that end, the request and its stream (see `keeper`); without
/// one, host-server makes the channel.
fn ask_listen(
    s: &Shared,
    addr: SocketAddrV4,
    backlog: u32,
) -> Result<(OwnedFd, SocketAddrV4), Outcome> {
    let answered = |answer: Result<crate::host::Answer, Errno>| match answer {
        Ok(a) => match a.msg {
            ToGuest::Listening { local } => Ok((local, a.stream, a.passed)),
            ToGuest::Failed(e) => Err(errno(e)),
            _ => Err(Outcome::Fail(libc::EPROTO)),
        },
        Err(e) => Err(errno(e)),
    };
    let Some(keeper) = &s.keeper else {
        // The packet channel comes with the answer; the request's stream is done.
        let (local, _stream, passed) = answered(s.host.request(&listen_request(addr, backlog)))?;
        return passed
            .map(|p| (p, local))
            .ok_or(Outcome::Fail(libc::EPROTO));
    };
    let (ours, host_end) = sys::seqpacket_pair().map_err(|e| io_fail(&e))?;
    let req = listen_req(addr, backlog, true);
    let (local, stream, _) = answered(
        s.host
            .request_with_fd(&ToHost::Listen(req.clone()), host_end.as_raw_fd()),
    )?;
    keeper.keep(host_end, req, stream);
    Ok((ours, local))
}

fn outsource_listen(
    s: &Shared,
    n: &Notif,
    copy: &OwnedFd,
    addr: SocketAddrV4,
    backlog: u32,
    v6: bool,
) -> Outcome {
    let nonblocking = nonblocking(copy);
    if !s.host.passes_fds() {
        return vm_listen(s, n, nonblocking, addr, backlog, v6);
    }
    let (channel, local) = match ask_listen(s, addr, backlog) {
        Ok(x) => x,
        Err(o) => return o,
    };
    if let Err(o) = install(s, n, &channel, nonblocking) {
        return o;
    }
    s.record_as(
        channel.as_raw_fd(),
        View {
            local,
            peer: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
            kind: Kind::Listener,
        },
        v6,
    );
    Outcome::Return(0)
}

/// `listen` inside a VM (`vmlisten`): a vsock listener of our own installed over the program's
/// descriptor, its companion kept.
fn vm_listen(
    s: &Shared,
    n: &Notif,
    nonblocking: bool,
    addr: SocketAddrV4,
    backlog: u32,
    v6: bool,
) -> Outcome {
    // Listeners closed since the last listen close host-server's listeners first (their ports
    // may be what this one wants); host-server closes them on its own time, so a port still
    // in use then is asked for again, for up to a second.
    let mark = s.companions.mark();
    let swept = s.companions.sweep(mark, &vmlisten::held_by_others());
    let mut tries = if swept > 0 { 10 } else { 1 };
    let l = loop {
        tries -= 1;
        match vmlisten::listen(&s.host, addr, backlog) {
            Ok(l) => break l,
            Err(e) if e.0 == Errno::EADDRINUSE.0 && tries > 0 => {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Err(e) => return errno(e),
        }
    };
    if let Err(o) = install(s, n, &l.listener, nonblocking) {
        return o;
    }
    s.record_as(
        l.listener.as_raw_fd(),
        View {
            local: l.local,
            peer: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
            kind: Kind::Listener,
        },
        v6,
    );
    if let Ok(id) = sys::identity(l.listener.as_raw_fd()) {
        s.companions.keep(id, l);
    }
    Outcome::Return(0)
}

/// A second `listen` on a listener: one `Listen` packet on its channel (host-server applies the
/// backlog). A full channel only means connections wait; the backlog is a hint either way.
fn relisten(channel: &OwnedFd, local: SocketAddrV4, backlog: u32) -> Outcome {
    let Ok(bytes) = to_vec(&listen_request(local, backlog)) else {
        return Outcome::Fail(libc::EINVAL);
    };
    match sys::send_to(
        channel.as_raw_fd(),
        &bytes,
        libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        &[],
    ) {
        Ok(_) | Err(libc::EAGAIN) => Outcome::Return(0),
        Err(e) => Outcome::Fail(e),
    }
}

/// Room for one packet from host-server (an `Inbound` frame is a few dozen bytes).
const MAX_PACKET: usize = 512;
/// How often a blocking accept checks that its caller still waits (a signal ends the wait).
const ACCEPT_RECHECK_MS: i32 = 100;

/// `accept`/`accept4` on a listener made here: the next connection of its packet channel
/// (one packet, one connection: with any number of processes accepting on one inherited
/// listener each connection reaches exactly one), added to the program as a new descriptor
/// that is the call's result, its peer (the client's source-pool dummy) written at `addr`.
/// A non-blocking listener answers EAGAIN when none waits; a blocking accept waits on a thread
/// of its own. Other sockets' accepts continue.
fn accept(shared: &Arc<Shared>, n: Notif) {
    let copy = sys::take_fd(n.pid, fd_arg(&n)).ok();
    let listener = copy.and_then(|c| {
        let v = shared.view(c.as_raw_fd())?;
        (v.kind == Kind::Listener).then_some(c)
    });
    let Some(copy) = listener else {
        shared.finish(&n, Outcome::Continue);
        return;
    };
    let v6 = sys::identity(copy.as_raw_fd()).is_ok_and(|id| shared.is_v6(id));
    #[allow(clippy::cast_possible_truncation)] // An int in the syscall ABI.
    let flags = if n.nr == libc::SYS_accept4 {
        n.args[3] as i32
    } else {
        0
    };
    if flags & !(libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK) != 0 {
        shared.finish(&n, Outcome::Fail(libc::EINVAL));
        return;
    }
    if nonblocking(&copy) {
        let outcome = match take_connection(shared, &copy) {
            Ok(Some(a)) => deliver(shared, &n, &copy, a, flags, v6),
            Ok(None) => Outcome::Fail(libc::EAGAIN),
            Err(e) => Outcome::Fail(e),
        };
        shared.finish(&n, outcome);
        return;
    }
    let s = Arc::clone(shared);
    on_thread(shared, n, move || loop {
        // A caller interrupted by a signal (or gone) takes no connection.
        if !s.listener.valid(n.id) {
            return Outcome::Gone;
        }
        match take_connection(&s, &copy) {
            Ok(Some(a)) => return deliver(&s, &n, &copy, a, flags, v6),
            Ok(None) => {
                let _ = sys::wait_readable(copy.as_raw_fd(), ACCEPT_RECHECK_MS);
            }
            Err(e) => return Outcome::Fail(e),
        }
    });
}

/// The next connection of listener `channel`: one held back for it first, else one packet
/// (`None`: none waits; an errno: the listener is gone or the packet is not a connection).
fn take_connection(s: &Shared, channel: &OwnedFd) -> Result<Option<Accepted>, i32> {
    if let Ok(id) = sys::identity(channel.as_raw_fd()) {
        let mut held = s.held.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(a) = held.get_mut(&id).and_then(Vec::pop) {
            return Ok(Some(a));
        }
    }
    if !s.host.passes_fds() {
        let a = vmlisten::take(channel)?;
        return Ok(a.map(|(conn, peer, local)| Accepted { conn, peer, local }));
    }
    let mut buf = [0u8; MAX_PACKET];
    let (len, passed) = match sys::recv_packet(channel.as_raw_fd(), &mut buf) {
        Ok(r) => r,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
        Err(e) => return Err(e.raw_os_error().unwrap_or(libc::EIO)),
    };
    // host-server closed its end: the listener is gone.
    if len == 0 {
        return Err(libc::ECONNABORTED);
    }
    match (decode_exact::<ToGuest>(&buf[..len]), passed) {
        (Ok(ToGuest::Inbound { peer, local }), Some(conn)) => {
            Ok(Some(Accepted { conn, peer, local }))
        }
        // The keeper's word that host-server refused the listener again (see `keeper`).
        (Ok(ToGuest::Failed(e)), None) => Err(i32::from(e.0)),
        _ => Err(libc::EPROTO),
    }
}

/// Hands connection `a` to the accept `n` (flags `flags`): its peer written at `addr`/`addrlen`
/// (v4-mapped AF_INET6 from a dual-stack listener, `v6`) and the socket added as the call's
/// result, each only while the caller still waits; a connection the caller left before getting
/// is held back for the next accept on `channel`.
fn deliver(s: &Shared, n: &Notif, channel: &OwnedFd, a: Accepted, flags: i32, v6: bool) -> Outcome {
    let hold = |a: Accepted| {
        if let Ok(id) = sys::identity(channel.as_raw_fd()) {
            s.held
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(id)
                .or_default()
                .push(a);
        }
        Outcome::Gone
    };
    if let Err(e) = sys::set_nonblocking(a.conn.as_raw_fd(), flags & libc::SOCK_NONBLOCK != 0) {
        return io_fail(&e);
    }
    let (addr, len_ptr) = (n.args[1], n.args[2]);
    if addr != 0 {
        match write_view(s, n, addr, len_ptr, a.peer, v6) {
            Outcome::Return(_) => {}
            Outcome::Gone => return hold(a),
            // Natively the connection is lost with the EFAULT too.
            other => return other,
        }
    }
    // Known before the program can ask: getsockname/getpeername answer its AF_INET view.
    s.record_as(
        a.conn.as_raw_fd(),
        View {
            local: a.local,
            peer: a.peer,
            kind: Kind::Stream,
        },
        v6,
    );
    if !s.listener.valid(n.id) {
        return hold(a);
    }
    match s
        .listener
        .add_fd_answer(n.id, a.conn.as_raw_fd(), flags & libc::SOCK_CLOEXEC != 0)
    {
        Ok(_) => Outcome::Answered,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => hold(a),
        Err(e) => io_fail(&e),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::os::unix::net::UnixStream;

    use shared_proto::translate::DEFAULT_GUEST_DNS;

    use super::*;

    #[test]
    fn each_packet_is_one_connection_and_a_held_one_comes_first() {
        let (listener_fd, _keep) = UnixStream::pair().unwrap();
        let s = Shared::new(
            Listener::new(listener_fd.into()),
            HostServer::new("/nonexistent".into()),
            DEFAULT_GUEST_DNS,
            Vec::new(),
        );
        let (guest, host) = sys::seqpacket_pair().unwrap();
        assert_eq!(take_connection(&s, &guest).unwrap().map(|a| a.peer), None);
        let peer: SocketAddrV4 = "172.21.112.1:4000".parse().unwrap();
        let local: SocketAddrV4 = "0.0.0.0:8080".parse().unwrap();
        let frame = to_vec(&ToGuest::Inbound { peer, local }).unwrap();
        let (conn, _other) = UnixStream::pair().unwrap();
        for _ in 0..2 {
            outsock_fdpass::sendmsg_fd::<outsock_fdpass::Libc>(
                host.as_raw_fd(),
                &frame,
                conn.as_raw_fd(),
                0,
            )
            .unwrap();
        }
        let first = take_connection(&s, &guest).unwrap().unwrap();
        assert_eq!((first.peer, first.local), (peer, local));
        assert_eq!(
            sys::identity(first.conn.as_raw_fd()).unwrap(),
            sys::identity(conn.as_raw_fd()).unwrap()
        );
        // A connection held back for the listener is given before the next packet.
        let held_peer: SocketAddrV4 = "172.21.112.9:9".parse().unwrap();
        s.held
            .lock()
            .unwrap()
            .entry(sys::identity(guest.as_raw_fd()).unwrap())
            .or_default()
            .push(Accepted {
                peer: held_peer,
                ..first
            });
        assert_eq!(
            take_connection(&s, &guest).unwrap().unwrap().peer,
            held_peer
        );
        assert_eq!(take_connection(&s, &guest).unwrap().unwrap().peer, peer);
        assert_eq!(take_connection(&s, &guest).unwrap().map(|a| a.peer), None);
        // A frame without a socket is no connection; host-server gone ends the listener.
        sys::send_to(host.as_raw_fd(), &frame, 0, &[]).unwrap();
        assert_eq!(take_connection(&s, &guest).err(), Some(libc::EPROTO));
        drop(host);
        assert_eq!(take_connection(&s, &guest).err(), Some(libc::ECONNABORTED));
    }

    #[test]
    fn the_table_keeps_only_sockets_someone_holds() {
        let a: SocketAddrV4 = "10.0.0.1:1".parse().unwrap();
        let view = View {
            local: a,
            peer: a,
            kind: Kind::Stream,
        };
        let (held, _other) = UnixStream::pair().unwrap();
        let held_id = sys::identity(held.as_raw_fd()).unwrap();
        let mut views = Views {
            map: HashMap::new(),
            v6: std::collections::HashSet::new(),
            sweep_at: SWEEP_MIN,
        };
        views.insert_as(held_id, view, true);
        // Inode numbers no socket has: gone at the sweep the 1,024th entry starts.
        for i in 1..SWEEP_MIN as u64 {
            views.insert_as((held_id.0, u64::MAX - i), view, i % 2 == 0);
        }
        assert_eq!(views.map.len(), 1);
        assert!(views.map.contains_key(&held_id));
        assert_eq!(views.v6.iter().collect::<Vec<_>>(), [&held_id]);
        // Recorded again as an AF_INET socket, it is one.
        views.insert(held_id, view);
        assert!(views.v6.is_empty());
        assert_eq!(views.sweep_at, SWEEP_MIN);
    }

    #[test]
    fn a_descriptor_is_known_by_its_proc_link_as_by_a_copy() {
        // What name() looks up (one stat of /proc/PID/fd/FD) is what record() stored (fstat
        // of a copy): the same open file.
        let (held, _other) = UnixStream::pair().unwrap();
        let fd = held.as_raw_fd();
        let copy = sys::take_fd(std::process::id(), fd).unwrap();
        let want = sys::identity(copy.as_raw_fd()).unwrap();
        assert_eq!(sys::identity_of(std::process::id(), fd).unwrap(), want);
        assert!(sys::identity_of(std::process::id(), 1_000_000).is_err());
    }
}
