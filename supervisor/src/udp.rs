//! UDP (and ICMP echo) for programs the preload cannot see into (process mode), translated as
//! liboutsock does (`guest/shim/src/udp.rs` tells the whole story; only the front end differs).
//!
//! - **Connected** (`connect` to a non-loopback address): host-server's connected host UDP
//!   socket (`UdpConnect`) replaces the program's descriptor, so send/write/recv/read are the
//!   kernel's, ICMP errors included; only a notified `recvfrom` with an address is carried
//!   out here (on our copy of the socket), reporting the peer's dummy IPv4.
//! - **Unconnected** (`bind` to a non-loopback address, port 0 included, or the first
//!   `sendto` to a non-loopback address): a host-server association (`Udp`). The program must
//!   keep every call on its descriptor without seeing frames, so its descriptor becomes the
//!   association's *program's end*: where the supervisor's private network can be had
//!   (`pnet`: a helper in a user + network namespace of its own, a TUN device), a real
//!   `AF_INET` socket of the program's kind made there and bound to a pool address of its own
//!   (and host-server's port), so `recvmsg`/`recvmmsg`/`sendmsg`/`sendmmsg`, `IP_PKTINFO`,
//!   `SO_DOMAIN`, `MSG_TRUNC`, poll and epoll are the kernel's own, nothing notified. A
//!   relay thread per association reads host-server's frames and writes each datagram into
//!   the TUN device as an IPv4 packet from its source (the peer's dummy, or the nameserver
//!   asked) to the end's address; what the program sends comes out of the TUN device, where
//!   one reader thread (`read_private`) frames it on the association its source address
//!   names; before the supervisor ends, that reader carries whatever is still in the device
//!   ([`Assocs::settle`]: a program that sends and exits loses nothing). A notified `sendto`
//!   is framed here at once, its errors the call's (an ICMP one is the kernel's send on our
//!   copy of the end, whose identifier the kernel sets; a loopback destination is
//!   ENETUNREACH: the association is host-server's); `recvfrom` continues. A full end drops a datagram, as natively. An end's relay ends when host-server
//!   closes the channel or no process holds the end any more (its inode gone from /proc,
//!   looked at once a second while idle). *Without the private network* (no
//!   `/dev/net/tun`, namespaces refused, or `OUTSOCK_PRIVATE_NET=off`), the program's end is
//!   an `AF_UNIX` `SOCK_DGRAM` socket bound to an abstract name of ours (said once on
//!   stderr): the relay reads host-server's `Datagram`
//!   frames and sends each payload to the program's end *from a per-peer socket whose abstract
//!   name ends in the IPv4 source* (`…/203.0.113.7:53`; a bounded cache of them, emptied when
//!   full): a notified `recvfrom` with an address receives on our copy and reports the
//!   sender's name as the AF_INET source; a plain `recv` gets the payload alone. A `sendto`
//!   with an AF_INET address is framed and written to the association's channel here.
//!   Delivery blocks while the program's end is full (backpressure up to host-server, as on
//!   liboutsock's channel). A local process could send to the program's end under a made-up
//!   name: no worse than spoofing a native UDP source. The relay ends when host-server
//!   closes the channel or when no process holds the program's end any more (its name is
//!   gone: probed each second while idle), and closes the association with it.
//! - A UDP server's association (bound to a port of its own, process mode) outlives
//!   host-server: when its channel ends while the program still holds its end, the relay asks
//!   host-server again for the same address and port, with backoff, and puts the new channel
//!   over the old one's number ([`reopen`]); the program's end stays quiet meanwhile and what
//!   it sends is dropped. A client's association (any port) closes idle by design and is not
//!   opened again.
//! - A bind happens at `bind` even for port 0 (liboutsock waits for the first send): a Go
//!   program registers its descriptor with epoll right after bind, and a descriptor replaced
//!   later would leave epoll watching the old socket.
//! - **A connected end** (`connect_end`): an association whose program's end is connected to
//!   a peer: in the private network by the kernel's own connect (its sends leave through the
//!   TUN device and it hears that peer alone, natively); an `AF_UNIX` end is connected to
//!   the per-peer socket standing for the peer, so the program's plain write/send go to that
//!   socket, where a writer thread frames them to the peer, and the end hears from that peer
//!   alone (the kernel refuses the others' sends: EPERM, dropped), as a connected UDP socket.
//!   It serves what host-server's connected socket cannot: DNS (below), and a connected socket
//!   that sent elsewhere (natively allowed; liboutsock makes it an association too).
//! - DNS, liboutsock's rule in one relay: a datagram to a resolv.conf nameserver on port 53
//!   goes to the guest DNS address, whose replies are shown as coming from the nameserver
//!   asked last. A socket connected to a nameserver (glibc's, Go's resolver), or to the guest
//!   DNS address itself (host-server answers `UdpConnect` to it with EOPNOTSUPP), is a
//!   connected end; an unconnected one sending to a nameserver (musl's) an association.
//!
//! - **ICMP echo** ([`Carries::Icmp`]): a ping socket (`SOCK_DGRAM, IPPROTO_ICMP`) or a raw
//!   ICMP socket (`SOCK_RAW`, root's busybox `ping`) of the program's sending off loopback
//!   (`sendto`, or `connect`: then a connected end) becomes the end of an `Icmp` association
//!   for that one destination, as liboutsock's (`guest/shim/src/dgram.rs`); a send to
//!   another destination opens a new association over the descriptor (the old one closes).
//!   Only echo requests are sent (`shared_proto::icmp::is_echo_request`; EINVAL otherwise, a
//!   raw socket's too, liboutsock's rule); host-server translates them to ICMPv6 echo, and its
//!   `EchoReply` frames reach the end from the destination's dummy (TTL the reply's hop
//!   limit): into the TUN device as an IPv4 packet (a private ping end's identifier is the
//!   kernel's, set as the request leaves, and comes back in the reply; a raw end reads the
//!   kernel's header), or on an `AF_UNIX` end from port 0, a raw socket's behind the IPv4
//!   header a raw reader expects (`shared_proto::icmp::with_ipv4_header`), put in front by
//!   the relay. The identifier is host-server's to keep: replies carry the program's own.
//!
//! Gaps (documented, not translated). With the private network: a datagram a program sends
//! with `sendmsg`/`sendmmsg` (not notified) to an address nothing outsources (loopback is
//! the private network's own) is dropped rather than refused, and its errors (host-server's
//! channel gone) are lost as a datagram would be; a raw ICMP end hears only replies to its
//! destination; an ICMP end sending elsewhere with `sendmsg` is not heard (its association is
//! for one destination; `sendto` opens another). Without it: `sendmsg`/`recvmsg`/
//! `sendmmsg`/`recvmmsg` are not notified (BPF cannot see `msg_name`; notifying them would
//! cost every caller), so on an association they fail as on an unconnected `AF_UNIX` socket
//! (`sendmsg` with an AF_INET name: EINVAL) and `recvmsg` reports an `AF_UNIX` name (BIND
//! `dig`, which receives with `recvmmsg`, aborts under `--supervisor-only`; with the preload
//! it works); `send`/`write` without an address on an unconnected association fail with
//! ENOTCONN (natively EDESTADDRREQ); `getsockopt(SO_DOMAIN)` is `AF_UNIX` on an association.
//! Either way: a connected socket
//! given back by `connect(AF_UNSPEC)` does not keep a port the program bound. ICMP: where the
//! program's namespace forbids ping sockets (`net.ipv4.ping_group_range`; a new namespace
//! forbids every group), `socket` (notified for AF_INET ICMP only) gets a ping socket made in
//! the private network ([`ping_stand_in`]; without it, the kernel's EACCES); a raw socket hears
//! only its destination's echo replies (natively every ICMP message the host gets); a
//! non-echo message written on a connected ICMP end (plain `write`/`send`) is dropped, not
//! EINVAL; on an `AF_UNIX` end `IP_RECVTTL`'s control message needs `recvmsg` (not notified).
//! Options set before the socket became an end: carried to a private end ([`CARRIED`]: the
//! `int` ones a UDP or ICMP program sets, and the timeouts); on an `AF_UNIX` end only the
//! timeouts, the others stay with the replaced socket. A `bind` of an ICMP socket is the
//! kernel's; an epoll
//! registration stays with the end it was made on, so after a send to another destination
//! (a new end over the descriptor) epoll no longer reports it (poll does), as with liboutsock.
//!
//! Inside a VM no descriptor crosses into the guest: an association's channel is its request's
//! vsock stream, frames one after another (written whole under a lock, read whole by the
//! relay), and a connect makes an association whose end is connected to the peer (there is no
//! host socket to pass), as liboutsock does there.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use shared_proto::icmp::{is_echo_request, with_ipv4_header};
use shared_proto::outsource::{Datagram, IcmpRequest, UdpConnectRequest, UdpRequest};
use shared_proto::translate::{encode_sockaddr_in, is_outsourced};
use shared_proto::{decode_exact, to_vec, Errno, ToGuest, ToHost};

use crate::host::HostServer;
use crate::pnet::{self, Private, Sent};
use crate::sys;

/// The largest UDP payload over IPv4: natively a larger send is EMSGSIZE.
pub use shared_proto::translate::MAX_UDP_PAYLOAD as MAX_PAYLOAD;
/// Room for one frame from host-server (a datagram, its header and address).
const MAX_FRAME: usize = 70 * 1024;
/// The most per-peer sockets a relay keeps.
const MAX_PEERS: usize = 256;
/// How often an idle relay checks that the program still holds its end.
const PROBE_MS: i32 = 1000;
/// Every abstract name of ours starts with this.
const NAME_PREFIX: &str = "outsock-udp/";
/// The largest ICMP message a ping or raw socket sends (an IPv4 packet's 65535 bytes less the
/// 20-byte header); natively a larger send is EMSGSIZE.
pub const MAX_ICMP: usize = 65_515;

/// What an association carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carries {
    Udp,
    /// ICMP echo to the one destination `dest` (a ping socket's, or with `raw` a raw ICMP
    /// socket's, whose reads begin with an IPv4 header).
    Icmp {
        dest: Ipv4Addr,
        raw: bool,
    },
}

/// The program's end of an association, and what delivers to it.
#[derive(Debug)]
enum End {
    /// A real `AF_INET` socket in the private network (`pnet`), bound to `addr` there (its
    /// `port`: a UDP port, a ping socket's identifier, 0 for a raw socket): datagrams from
    /// host-server go into the TUN device as IPv4 packets to it.
    Private {
        pnet: Arc<Private>,
        addr: Ipv4Addr,
        port: u16,
    },
    /// An `AF_UNIX` datagram socket bound to the abstract `name` (without the leading NUL),
    /// fed from per-peer sockets named under `prefix`.
    Named {
        name: Vec<u8>,
        prefix: String,
        peers: Mutex<Peers>,
    },
}

/// One association: host-server's channel and what the relay needs.
#[derive(Debug)]
pub struct Assoc {
    /// A packet channel (process mode: one frame a packet), or inside a VM the request's vsock
    /// stream carrying frames one after another (`framed`).
    channel: OwnedFd,
    framed: bool,
    /// Held while a frame is written on a framed channel, so that frames never interleave.
    writing: Mutex<()>,
    /// The program's end.
    end: End,
    guest_dns: SocketAddrV4,
    /// The resolv.conf nameserver the program asked last: the guest DNS's replies show it.
    asked: Mutex<Option<SocketAddrV4>>,
    /// Set when the association has closed (the writers' sockets are shut down then).
    closed: AtomicBool,
    /// Whether the program bound a port of its own (a server): a connect keeps that port.
    pub bound: Option<SocketAddrV4>,
    /// UDP, or ICMP echo to one destination.
    pub carries: Carries,
    /// host-server's view of the association's local address (a raw reader's destination).
    local: SocketAddrV4,
    /// Process mode, a UDP server's (a port of its own): host-server, to open the association
    /// again (same port) when its channel ends while the program still holds its end (see
    /// [`reopen`]).
    host: Option<HostServer>,
}

impl Assoc {
    /// An association over `channel` (`framed`: a stream of frames), its program's end bound
    /// to `name`, its per-peer sockets named under `prefix`; nothing asked, no peer yet.
    #[cfg(test)]
    #[allow(clippy::too_many_arguments)]
    fn new(
        channel: OwnedFd,
        framed: bool,
        name: Vec<u8>,
        prefix: String,
        guest_dns: SocketAddrV4,
        bound: Option<SocketAddrV4>,
        carries: Carries,
        local: SocketAddrV4,
    ) -> Self {
        let end = End::Named {
            name,
            prefix,
            peers: Mutex::new(Peers::default()),
        };
        Self::with_end(channel, framed, end, guest_dns, bound, carries, local)
    }

    /// An association over `channel` whose program's end is `end`.
    fn with_end(
        channel: OwnedFd,
        framed: bool,
        end: End,
        guest_dns: SocketAddrV4,
        bound: Option<SocketAddrV4>,
        carries: Carries,
        local: SocketAddrV4,
    ) -> Self {
        Self {
            channel,
            framed,
            writing: Mutex::new(()),
            end,
            guest_dns,
            asked: Mutex::new(None),
            closed: AtomicBool::new(false),
            bound,
            carries,
            local,
            host: None,
        }
    }
}

/// The per-peer sockets of an association; those the program's end is (or was) connected to
/// have a writer thread and stay.
#[derive(Debug, Default)]
struct Peers {
    map: HashMap<SocketAddrV4, Arc<OwnedFd>>,
    written: HashSet<SocketAddrV4>,
}

impl Assoc {
    /// The per-peer socket standing for `from`, made now if needed (the cache emptied of all
    /// but the connected ones when full).
    fn peer_socket(&self, from: SocketAddrV4) -> std::io::Result<Arc<OwnedFd>> {
        let End::Named { prefix, peers, .. } = &self.end else {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        };
        let mut p = peers.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(s) = p.map.get(&from) {
            return Ok(Arc::clone(s));
        }
        if p.map.len() >= MAX_PEERS {
            let Peers { map, written } = &mut *p;
            map.retain(|a, _| written.contains(a));
        }
        let sock = Arc::new(sys::unix_dgram_bound(format!("{prefix}{from}").as_bytes())?);
        p.map.insert(from, Arc::clone(&sock));
        Ok(sock)
    }

    /// Marks the association closed and shuts down its channel and every per-peer socket, so
    /// that the relay and the writers end.
    fn shut(&self) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        sys::shutdown(self.channel.as_raw_fd());
        match &self.end {
            End::Named { peers, .. } => {
                let p = peers.lock().unwrap_or_else(PoisonError::into_inner);
                for s in p.map.values() {
                    sys::shutdown(s.as_raw_fd());
                }
            }
            End::Private { pnet, addr, .. } => pnet.give_back(*addr),
        }
    }

    /// Whether this association's end is a real socket in the private network (every call
    /// on it is the kernel's).
    #[must_use]
    pub fn is_private(&self) -> bool {
        matches!(self.end, End::Private { .. })
    }

    /// Whether a process still holds the program's end (`id`, its identity).
    fn end_held(&self, id: (u64, u64)) -> bool {
        match &self.end {
            End::Named { name, .. } => sys::name_bound(name),
            End::Private { .. } => live_sockets().contains(&id.1),
        }
    }
}

/// The associations made here, by the identity of the program's end.
#[derive(Debug, Default)]
pub struct Assocs {
    map: Mutex<HashMap<(u64, u64), Arc<Assoc>>>,
    /// Those whose end is in the private network, by the end's address there.
    by_addr: Mutex<HashMap<Ipv4Addr, Arc<Assoc>>>,
    /// The private network, once asked for (`None`: not to be had here).
    private: OnceLock<Option<Arc<Private>>>,
    /// The resolv.conf nameservers (process mode): DNS to them goes to the guest DNS.
    nameservers: Vec<Ipv4Addr>,
    /// Written by [`Assocs::settle`]: the private network's reader ends once nothing more is
    /// there to read, and says so on `drained`.
    closing: OnceLock<OwnedFd>,
    drained: (Mutex<bool>, std::sync::Condvar),
}

impl Assocs {
    /// No association yet; DNS to `nameservers` (port 53) goes to the guest DNS.
    #[must_use]
    pub fn new(nameservers: Vec<Ipv4Addr>) -> Self {
        Self {
            nameservers,
            ..Self::default()
        }
    }

    /// The private network, started (with its reader) at the first call; `None` where it
    /// cannot be had (said once on stderr) or is turned off (`OUTSOCK_PRIVATE_NET=off`, for
    /// debugging): ends are then `AF_UNIX` ones.
    fn private(self: &Arc<Self>) -> Option<Arc<Private>> {
        self.private
            .get_or_init(|| {
                if std::env::var_os("OUTSOCK_PRIVATE_NET").is_some_and(|v| v == "off") {
                    return None;
                }
                let pnet = match Private::start() {
                    Ok(p) => Arc::new(p),
                    Err(e) => {
                        eprintln!(
                            "outsock: no private network for UDP and ICMP ({e}): sendmsg and \
                             recvmsg addresses on them are not translated"
                        );
                        return None;
                    }
                };
                let Ok(wake) = sys::eventfd() else {
                    return None;
                };
                let closing = wake.as_raw_fd();
                let _ = self.closing.set(wake);
                let (all, p) = (Arc::clone(self), Arc::clone(&pnet));
                std::thread::Builder::new()
                    .name("outsock-pnet".into())
                    .spawn(move || {
                        read_private(&all, &p, closing);
                        let (done, cv) = &all.drained;
                        *done.lock().unwrap_or_else(PoisonError::into_inner) = true;
                        cv.notify_all();
                    })
                    .ok()
                    .map(|_| pnet)
            })
            .clone()
    }

    fn is_nameserver(&self, a: SocketAddrV4) -> bool {
        a.port() == 53 && self.nameservers.contains(a.ip())
    }

    /// Waits (a second at the most) until the private network's reader has carried every
    /// packet the program's sockets sent there: before the supervisor ends, so that a program
    /// that sends and exits (a `sendmsg`, never notified) loses nothing.
    pub fn settle(&self) {
        let Some(Some(_)) = self.private.get() else {
            return;
        };
        let Some(wake) = self.closing.get() else {
            return;
        };
        let _ = sys::write_fd(wake.as_raw_fd(), &1u64.to_ne_bytes());
        let (done, cv) = &self.drained;
        let done = done.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = cv
            .wait_timeout_while(done, std::time::Duration::from_secs(1), |d| !*d)
            .unwrap_or_else(PoisonError::into_inner);
    }

    /// The association whose program's end has identity `id`.
    pub fn get(&self, id: (u64, u64)) -> Option<Arc<Assoc>> {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            .cloned()
    }

    /// Forgets the association of `id` and closes it at host-server (its relay ends).
    pub fn close(&self, id: (u64, u64)) {
        let a = self
            .map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
        if let Some(a) = a {
            if let End::Private { addr, .. } = &a.end {
                let mut by = self.by_addr.lock().unwrap_or_else(PoisonError::into_inner);
                if by.get(addr).is_some_and(|b| Arc::ptr_eq(b, &a)) {
                    by.remove(addr);
                }
            }
            a.shut();
        }
    }
}

/// The inodes of the sockets some process holds, read from /proc at most once a second (the
/// relays of idle private ends ask each second).
fn live_sockets() -> Arc<std::collections::HashSet<u64>> {
    static LIVE: Mutex<Option<(std::time::Instant, Arc<std::collections::HashSet<u64>>)>> =
        Mutex::new(None);
    let mut l = LIVE.lock().unwrap_or_else(PoisonError::into_inner);
    match &*l {
        Some((at, set)) if at.elapsed() < std::time::Duration::from_millis(900) => Arc::clone(set),
        _ => {
            let set = Arc::new(sys::socket_inodes(false));
            *l = Some((std::time::Instant::now(), Arc::clone(&set)));
            set
        }
    }
}

/// The private network's reader: each packet a program's end sent, framed to host-server on
/// the association the packet's source address names (a UDP datagram to a nameserver going to
/// the guest DNS, an echo request on an ICMP association to its destination); anything else is
/// dropped, as a datagram lost (the supervisor's `sendto` path has answered the errors a
/// program can be told synchronously). It ends once `closing` is readable and the device has
/// stayed empty for 20 ms ([`Assocs::settle`]).
fn read_private(assocs: &Assocs, pnet: &Private, closing: std::os::fd::RawFd) {
    let mut buf = vec![0u8; 65_536];
    let tun = pnet.tun.as_raw_fd();
    let mut ending = false;
    loop {
        // Once asked to end: whatever is still there, then (nothing for 20 ms) the end.
        let (ready, asked) = sys::wait_readable_either(tun, closing, if ending { 20 } else { -1 });
        ending |= asked;
        if !ready {
            if ending {
                return;
            }
            continue;
        }
        let n = match sys::read_fd(tun, &mut buf) {
            Ok(n) => n,
            Err(libc::EINTR | libc::EAGAIN) => continue,
            Err(_) => return,
        };
        let Some(sent) = pnet::parse(&buf[..n]) else {
            continue;
        };
        let source = match sent {
            Sent::Udp { from, .. } => *from.ip(),
            Sent::Icmp { from, .. } => from,
        };
        let assoc = assocs
            .by_addr
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&source)
            .cloned();
        let Some(assoc) = assoc else {
            continue;
        };
        match (sent, assoc.carries) {
            (Sent::Udp { to, payload, .. }, Carries::Udp) => {
                let _ = send(&assoc, to, assocs.is_nameserver(to), payload);
            }
            (Sent::Icmp { to, message, .. }, Carries::Icmp { dest, .. }) if to == dest => {
                let _ = send(&assoc, SocketAddrV4::new(to, 0), false, message);
            }
            _ => {}
        }
    }
}

/// An association just opened: the program's end (to install), and host-server's view of it.
#[derive(Debug)]
pub struct Opened {
    pub end: OwnedFd,
    pub local: SocketAddrV4,
    pub assoc: Arc<Assoc>,
}

/// Opens an association bound to `bind` (`bound`: the program chose the port) that carries
/// `carries` (UDP, or ICMP echo to one destination: an `Icmp` request) and starts its relay;
/// the program's end is known to `assocs` from here on.
///
/// # Errors
/// What the program's call fails with: host-server's answer, or EAGAIN/EMFILE here.
pub fn open(
    host: &HostServer,
    assocs: &Arc<Assocs>,
    guest_dns: SocketAddrV4,
    bind: SocketAddrV4,
    bound: bool,
    carries: Carries,
) -> Result<Opened, Errno> {
    let request = match carries {
        Carries::Udp => ToHost::Udp(UdpRequest {
            bind,
            channel: false,
        }),
        Carries::Icmp { dest, .. } => ToHost::Icmp(IcmpRequest {
            bind,
            dest: SocketAddrV4::new(dest, 0),
        }),
    };
    let answer = host.request(&request)?;
    let local = match answer.msg {
        ToGuest::Associated { local } => local,
        ToGuest::Failed(e) => return Err(e),
        _ => return Err(Errno::EPROTO),
    };
    // Process mode: the packet channel passed with the answer; inside a VM (nothing passed)
    // the request's stream itself carries the frames.
    let (channel, framed) = match answer.passed {
        Some(c) => (c, false),
        None if !host.passes_fds() => (OwnedFd::from(answer.stream), true),
        None => return Err(Errno::EPROTO),
    };
    let (fd, end) = match assocs.private() {
        Some(pnet) => private_end(pnet, carries, local)?,
        None => named_end()?,
    };
    let id = sys::identity(fd.as_raw_fd()).map_err(|e| io_errno(&e))?;
    let private = match &end {
        End::Private { addr, .. } => Some(*addr),
        End::Named { .. } => None,
    };
    let mut assoc = Assoc::with_end(
        channel,
        framed,
        end,
        guest_dns,
        bound.then_some(bind),
        carries,
        local,
    );
    // A server's (a port of its own): host-server never closes it idle, so its channel's end
    // means host-server went away. A client's closes idle by design.
    if !framed && matches!(carries, Carries::Udp) && bound && bind.port() != 0 {
        assoc.host = Some(host.clone());
    }
    let assoc = Arc::new(assoc);
    assocs
        .map
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(id, Arc::clone(&assoc));
    if let Some(addr) = private {
        assocs
            .by_addr
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(addr, Arc::clone(&assoc));
    }
    let (a, all) = (Arc::clone(&assoc), Arc::clone(assocs));
    let started = std::thread::Builder::new()
        .name("outsock-udp".into())
        .spawn(move || relay(&a, &all, id));
    if let Err(e) = started {
        assocs.close(id);
        return Err(io_errno(&e));
    }
    Ok(Opened {
        end: fd,
        local,
        assoc,
    })
}

/// A program's end in the private network for an association carrying `carries` whose
/// host-server side is `local`: a UDP socket bound to a pool address and host-server's port,
/// or a ping (raw) ICMP socket bound to a pool address.
fn private_end(
    pnet: Arc<Private>,
    carries: Carries,
    local: SocketAddrV4,
) -> Result<(OwnedFd, End), Errno> {
    let (ty, proto, port) = match carries {
        Carries::Udp => (libc::SOCK_DGRAM, libc::IPPROTO_UDP, local.port()),
        Carries::Icmp { raw: false, .. } => (libc::SOCK_DGRAM, libc::IPPROTO_ICMP, 0),
        Carries::Icmp { raw: true, .. } => (libc::SOCK_RAW, libc::IPPROTO_ICMP, 0),
    };
    let addr = pnet
        .take()
        .map_err(|e| Errno(u16::try_from(e).unwrap_or(5)))?;
    let made = pnet.socket(ty, proto).and_then(|fd| {
        match sys::bind_raw(
            fd.as_raw_fd(),
            &encode_sockaddr_in(SocketAddrV4::new(addr, port)),
        ) {
            0 => Ok(fd),
            e => Err(std::io::Error::from_raw_os_error(e)),
        }
    });
    let fd = match made {
        Ok(fd) => fd,
        Err(e) => {
            pnet.give_back(addr);
            return Err(io_errno(&e));
        }
    };
    // A ping socket's identifier is the kernel's choice.
    let port = sys::local_port(fd.as_raw_fd()).unwrap_or(port);
    Ok((fd, End::Private { pnet, addr, port }))
}

/// An `AF_UNIX` program's end bound to a name of its own.
fn named_end() -> Result<(OwnedFd, End), Errno> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let prefix = format!(
        "{NAME_PREFIX}{}.{}/",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let name = format!("{prefix}p").into_bytes();
    let fd = sys::unix_dgram_bound(&name).map_err(|e| io_errno(&e))?;
    let end = End::Named {
        name,
        prefix,
        peers: Mutex::new(Peers::default()),
    };
    Ok((fd, end))
}

fn io_errno(e: &std::io::Error) -> Errno {
    Errno(
        e.raw_os_error()
            .and_then(|v| u16::try_from(v).ok())
            .unwrap_or(Errno::EPROTO.0),
    )
}

/// The relay of `assoc`: each datagram from host-server to the program's end, from its
/// source's per-peer socket, until either side is gone.
fn relay(assoc: &Assoc, assocs: &Assocs, id: (u64, u64)) {
    let fd = assoc.channel.as_raw_fd();
    let mut buf = vec![0u8; MAX_FRAME];
    loop {
        if !sys::wait_readable(fd, PROBE_MS) {
            if assoc.end_held(id) {
                continue;
            }
            break;
        }
        let frame = if assoc.framed {
            // A frame begun is read to its end.
            match crate::host::read_frame_fd(fd) {
                Ok((f, _)) => f,
                Err(_) => break,
            }
        } else {
            let n = match sys::recv_packet(fd, &mut buf) {
                Ok((n, _)) if n > 0 => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                // host-server closed the channel: the association again if it went away.
                _ if reopen(assoc, id) => continue,
                _ => break,
            };
            match decode_exact::<ToGuest>(&buf[..n]) {
                Ok(f) => f,
                Err(_) => continue,
            }
        };
        let (d, ttl) = match frame {
            ToGuest::Datagram(d) => (d, None),
            ToGuest::EchoReply { datagram, ttl } => (datagram, Some(ttl)),
            _ => continue,
        };
        let from = if d.addr == assoc.guest_dns {
            assoc
                .asked
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .unwrap_or(d.addr)
        } else {
            d.addr
        };
        if let End::Private { pnet, addr, port } = &assoc.end {
            // Into the TUN device: the kernel delivers it to the end (or drops it, as a full
            // socket's datagram).
            let to = SocketAddrV4::new(*addr, *port);
            let packet = match assoc.carries {
                Carries::Udp => pnet::udp_packet(from, to, &d.payload),
                Carries::Icmp { .. } => {
                    pnet::icmp_packet(*from.ip(), *addr, ttl.unwrap_or(64), &d.payload)
                }
            };
            pnet.deliver(&packet);
            continue;
        }
        let Ok(sock) = assoc.peer_socket(from) else {
            continue;
        };
        let End::Named { name, .. } = &assoc.end else {
            continue;
        };
        // A raw ICMP socket reads the IPv4 header too (the program's end is ours: it is put
        // in front here, by the rule liboutsock's reads follow).
        let payload = match assoc.carries {
            Carries::Icmp { raw: true, .. } => {
                with_ipv4_header(&d.payload, *from.ip(), *assoc.local.ip(), ttl.unwrap_or(64))
            }
            _ => d.payload,
        };
        // Blocking: a full program's end holds the relay (and host-server's channel) back.
        // EPERM: the end is connected to another peer, which alone it hears from (as a
        // connected UDP socket); the datagram is dropped.
        let sent = sys::send_to_name(sock.as_raw_fd(), &payload, 0, name);
        // ECONNREFUSED: the program's end is gone.
        if let Err(libc::ECONNREFUSED | libc::ENOENT) = sent {
            break;
        }
    }
    assocs.close(id);
    assoc.shut();
}

/// The first wait before asking host-server again for an association it closed.
const REOPEN_FIRST: std::time::Duration = std::time::Duration::from_millis(20);
/// The longest wait between two tries.
const REOPEN_LAST: std::time::Duration = std::time::Duration::from_secs(1);

/// A UDP server's association (a port of its own, process mode) whose channel host-server
/// closed while the program still holds its end: host-server went away, or restarted. Asks it
/// again — the same address and port, with backoff ([`REOPEN_FIRST`] doubling to
/// [`REOPEN_LAST`]) for as long as the end is held — and puts the new channel in place of the
/// old one (`dup3` onto its number, so the relay and every sender use it from then on).
/// Meanwhile the program's end stays quiet (nothing to read) and what it sends is dropped, as
/// UDP may. Whether the association is open again; a refusal (the port taken meanwhile) is one
/// line on stderr and the association's end.
fn reopen(assoc: &Assoc, id: (u64, u64)) -> bool {
    let (Some(host), Some(bind)) = (&assoc.host, assoc.bound) else {
        return false;
    };
    let mut wait = REOPEN_FIRST;
    loop {
        if assoc.closed.load(Ordering::SeqCst) || !assoc.end_held(id) {
            return false;
        }
        // Unreachable (host-server away), or no answer: later.
        if let Ok(a) = host.request(&ToHost::Udp(UdpRequest {
            bind,
            channel: false,
        })) {
            match (a.msg, a.passed) {
                (ToGuest::Associated { .. }, Some(channel)) => {
                    return sys::dup_onto(channel.as_raw_fd(), assoc.channel.as_raw_fd()).is_ok();
                }
                (ToGuest::Failed(e), _) if !crate::host::passing(e) => {
                    eprintln!("outsock: host-server refused UDP association {bind} again ({e})");
                    return false;
                }
                _ => {}
            }
        }
        std::thread::sleep(wait);
        wait = (wait * 2).min(REOPEN_LAST);
    }
}

/// Connects the association's program's end (`end`, our copy) to `peer`: its write/send go
/// to the per-peer socket standing for `peer`, whose writer frames them to `peer`
/// (`nameserver`: a resolv.conf nameserver, so to the guest DNS address), and it hears from
/// `peer` alone, as a connected UDP socket.
///
/// # Errors
/// The per-peer socket's, the writer thread's or the connect's error.
pub fn connect_end(
    assoc: &Arc<Assoc>,
    end: &OwnedFd,
    peer: SocketAddrV4,
    nameserver: bool,
) -> Result<(), i32> {
    let (prefix, peers) = match &assoc.end {
        // A real socket: the kernel's connect (its sends leave through the TUN device).
        End::Private { .. } => {
            return match sys::connect_raw(end.as_raw_fd(), &encode_sockaddr_in(peer)) {
                0 => Ok(()),
                e => Err(e),
            };
        }
        End::Named { prefix, peers, .. } => (prefix, peers),
    };
    let sock = assoc.peer_socket(peer).map_err(|e| raw(&e))?;
    let first = peers
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .written
        .insert(peer);
    if first {
        let (a, w) = (Arc::clone(assoc), Arc::clone(&sock));
        let started = std::thread::Builder::new()
            .name("outsock-udp-w".into())
            .spawn(move || writer(&a, &w, peer, nameserver));
        if let Err(e) = started {
            peers
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .written
                .remove(&peer);
            return Err(raw(&e));
        }
    }
    match sys::connect_name(end.as_raw_fd(), format!("{prefix}{peer}").as_bytes()) {
        0 => Ok(()),
        e => Err(e),
    }
}

fn raw(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

/// What the program's connected end writes to `sock`, each datagram sent to `peer`, until the
/// association closes.
fn writer(assoc: &Assoc, sock: &OwnedFd, peer: SocketAddrV4, nameserver: bool) {
    loop {
        match sys::recv(sock.as_raw_fd(), MAX_ICMP + 1, 0) {
            Ok(_) if assoc.closed.load(Ordering::SeqCst) => break,
            // A write error belongs to no call of the program's any more: as a datagram lost.
            Ok((data, _)) => {
                let _ = send(assoc, peer, nameserver, &data);
            }
            Err(libc::EINTR) => {}
            Err(_) => break,
        }
    }
}

/// Sends `data` to `dest` on `assoc` (`nameserver`: `dest` is a resolv.conf nameserver on
/// port 53, so it goes to the guest DNS address); the bytes sent or the errno.
///
/// On an ICMP association `data` is an echo request to its destination (EINVAL otherwise,
/// as from the kernel's ping socket; liboutsock's rule for a raw socket too).
///
/// # Errors
/// EMSGSIZE for more than a UDP datagram (an ICMP message) holds, EINVAL for anything but an
/// echo request on ICMP, ENETUNREACH for loopback (the association is host-server's), the
/// channel's error.
pub fn send(
    assoc: &Assoc,
    dest: SocketAddrV4,
    nameserver: bool,
    data: &[u8],
) -> Result<usize, i32> {
    let (max, nameserver) = match assoc.carries {
        Carries::Udp => (MAX_PAYLOAD, nameserver),
        Carries::Icmp { .. } if !is_echo_request(data) => return Err(libc::EINVAL),
        Carries::Icmp { .. } => (MAX_ICMP, false),
    };
    if data.len() > max {
        return Err(libc::EMSGSIZE);
    }
    if !is_outsourced(dest) && !nameserver {
        return Err(libc::ENETUNREACH);
    }
    let wire = if nameserver {
        *assoc.asked.lock().unwrap_or_else(PoisonError::into_inner) = Some(dest);
        assoc.guest_dns
    } else {
        dest
    };
    let frame = to_vec(&ToHost::Datagram(Datagram {
        addr: wire,
        payload: data.to_vec(),
    }))
    .map_err(|_| libc::EMSGSIZE)?;
    if assoc.framed {
        // The whole frame under the lock, however many writes the stream takes.
        let _one = assoc.writing.lock().unwrap_or_else(PoisonError::into_inner);
        let mut rest = &frame[..];
        while !rest.is_empty() {
            match sys::send_to(assoc.channel.as_raw_fd(), rest, libc::MSG_NOSIGNAL, &[]) {
                Ok(n) => rest = &rest[n..],
                Err(libc::EINTR) => {}
                Err(e) => return Err(e),
            }
        }
        return Ok(data.len());
    }
    // One packet, whole or not at all; a full channel is waited for (a datagram is small).
    loop {
        match sys::send_to(
            assoc.channel.as_raw_fd(),
            &frame,
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            &[],
        ) {
            Ok(_) => return Ok(data.len()),
            Err(libc::EAGAIN) => sys::wait_writable(assoc.channel.as_raw_fd(), 1000),
            Err(libc::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
}

/// The `int` options a program may have set on its UDP or ICMP socket before it became an
/// association's end (a bind, the first send), carried to an end in the private network —
/// a real socket of the same kind, which takes them as the program's would (the timeouts are
/// `sys::copy_timeouts`'): iputils `ping`'s `IP_RECVTTL` and `ICMP_FILTER`, a DNS server's
/// `IP_PKTINFO`, buffer sizes, timestamps.
const CARRIED: [(i32, i32); 20] = [
    (libc::SOL_SOCKET, libc::SO_BROADCAST),
    (libc::SOL_SOCKET, libc::SO_RCVBUF),
    (libc::SOL_SOCKET, libc::SO_SNDBUF),
    (libc::SOL_SOCKET, libc::SO_RCVLOWAT),
    (libc::SOL_SOCKET, libc::SO_PRIORITY),
    (libc::SOL_SOCKET, libc::SO_TIMESTAMP),
    (libc::SOL_SOCKET, libc::SO_TIMESTAMPNS),
    (libc::SOL_SOCKET, libc::SO_RXQ_OVFL),
    (libc::SOL_SOCKET, libc::SO_REUSEADDR),
    (libc::SOL_SOCKET, libc::SO_REUSEPORT),
    (libc::IPPROTO_IP, libc::IP_TOS),
    (libc::IPPROTO_IP, libc::IP_TTL),
    (libc::IPPROTO_IP, libc::IP_RECVTTL),
    (libc::IPPROTO_IP, libc::IP_RECVTOS),
    (libc::IPPROTO_IP, libc::IP_PKTINFO),
    (libc::IPPROTO_IP, libc::IP_RECVERR),
    (libc::IPPROTO_IP, libc::IP_MTU_DISCOVER),
    (libc::IPPROTO_IP, libc::IP_RECVORIGDSTADDR),
    (libc::IPPROTO_IP, libc::IP_MULTICAST_TTL),
    // SOL_RAW's ICMP_FILTER (a raw ICMP socket's; a 32-bit mask).
    (255, 1),
];

/// Carries the options of [`CARRIED`] the program set on `from` (its socket) to `to` (an end in
/// the private network), each where it differs; one that cannot be read or set is left.
pub fn carry_options(from: &OwnedFd, to: &OwnedFd) {
    for (level, name) in CARRIED {
        let Ok(v) = sys::sockopt_int(from.as_raw_fd(), level, name) else {
            continue;
        };
        if sys::sockopt_int(to.as_raw_fd(), level, name).is_ok_and(|w| w == v) {
            continue;
        }
        // The kernel doubles a buffer size set (and reports the doubled one).
        let set = if level == libc::SOL_SOCKET && matches!(name, libc::SO_RCVBUF | libc::SO_SNDBUF)
        {
            v / 2
        } else {
            v
        };
        let _ = sys::set_sockopt_bytes(to.as_raw_fd(), level, name, &set.to_ne_bytes());
    }
}

/// A ping socket (`SOCK_DGRAM`, `IPPROTO_ICMP`) for process `pid`, made in the private network,
/// where its namespace's `net.ipv4.ping_group_range` forbids the program's groups one (a new
/// namespace forbids every group, root's too): `None` where the kernel would make it (or no
/// private network can be had: the kernel's EACCES then).
///
/// The socket stands in until its first send off loopback (then it becomes an association's
/// end, as the program's own would); to loopback it pings the private network's own `lo`,
/// which answers as the program's would.
pub fn ping_stand_in(assocs: &Arc<Assocs>, pid: u32) -> Option<std::io::Result<OwnedFd>> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ping_group_range").ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    if ping_allowed(&range, &status) {
        return None;
    }
    let pnet = assocs.private()?;
    Some(pnet.socket(libc::SOCK_DGRAM, libc::IPPROTO_ICMP))
}

/// Whether a process whose /proc status is `status` may open a ping socket where
/// `ping_group_range` reads `range`: its effective group or a supplementary one in the range,
/// as the kernel checks.
fn ping_allowed(range: &str, status: &str) -> bool {
    let mut r = range
        .split_whitespace()
        .filter_map(|v| v.parse::<u32>().ok());
    let (Some(low), Some(high)) = (r.next(), r.next()) else {
        return false;
    };
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or("")
            .split_whitespace()
            .filter_map(|v| v.parse::<u32>().ok())
            .collect::<Vec<u32>>()
    };
    let egid = field("Gid:").get(1).copied();
    egid.into_iter()
        .chain(field("Groups:"))
        .any(|g| low <= g && g <= high)
}

/// The AF_INET source a sender's abstract `name` stands for (0.0.0.0:0 for a sender not ours).
#[must_use]
pub fn source_of(name: &[u8]) -> SocketAddrV4 {
    std::str::from_utf8(name)
        .ok()
        .filter(|n| n.starts_with(NAME_PREFIX))
        .and_then(|n| n.rsplit('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))
}

/// Asks host-server for a UDP socket bound to `bind` and connected to `dest`: the socket and
/// the local address to report; `None` when `dest` needs an association (the guest DNS
/// address).
///
/// # Errors
/// host-server's answer.
pub fn connect(
    host: &HostServer,
    bind: SocketAddrV4,
    dest: SocketAddrV4,
) -> Result<Option<(OwnedFd, SocketAddrV4)>, Errno> {
    let answer = host.request(&ToHost::UdpConnect(UdpConnectRequest { bind, dest }))?;
    match (answer.msg, answer.passed) {
        (ToGuest::Connected { local, .. }, Some(fd)) => Ok(Some((fd, local))),
        (ToGuest::Failed(e), _) if e == Errno::EOPNOTSUPP => Ok(None),
        (ToGuest::Failed(e), _) => Err(e),
        _ => Err(Errno::EPROTO),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn ping_sockets_are_allowed_by_the_effective_or_a_supplementary_group() {
        let status = "Name:\tping\nUid:\t65534\t65534\t65534\t65534\nGid:\t100\t65534\t100\t65534\nGroups:\t27 44 \n";
        // A new namespace's range allows nobody, root included.
        assert!(!ping_allowed("1\t0\n", status));
        assert!(ping_allowed("0\t2147483647\n", status));
        // The effective group (second field), not the real one.
        assert!(ping_allowed("65534 65534", status));
        assert!(!ping_allowed("100 100", status));
        // A supplementary group.
        assert!(ping_allowed("40 50", status));
        assert!(!ping_allowed("garbage", status));
        assert!(!ping_allowed("0 10", "Gid:\t0\n"));
    }

    #[test]
    fn a_peer_sockets_name_is_its_source() {
        let a: SocketAddrV4 = "172.21.112.9:5353".parse().unwrap();
        let name = format!("{NAME_PREFIX}12.3/{a}");
        assert_eq!(source_of(name.as_bytes()), a);
        let nobody = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0);
        assert_eq!(source_of(b"someone/1.2.3.4:5"), nobody);
        assert_eq!(source_of(b""), nobody);
        assert_eq!(source_of(format!("{NAME_PREFIX}12.3/p").as_bytes()), nobody);
    }

    #[test]
    fn the_relay_delivers_each_datagram_from_its_sources_name_and_ends_with_the_program() {
        relay_case(false);
    }

    /// The same over a stream of frames, as an association's channel is inside a VM.
    #[test]
    fn a_framed_relay_over_a_stream_does_the_same() {
        relay_case(true);
    }

    /// A channel (host-server's side, ours: packets, or with `framed` a stream), the table, and
    /// a program's end bound to a name of `label`'s, with its identity.
    #[allow(clippy::type_complexity)]
    fn test_parts(
        framed: bool,
        label: &str,
    ) -> (OwnedFd, OwnedFd, Arc<Assocs>, Vec<u8>, OwnedFd, (u64, u64)) {
        let (chan_host, channel) = if framed {
            let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
            (OwnedFd::from(a), OwnedFd::from(b))
        } else {
            sys::seqpacket_pair().unwrap()
        };
        let name = format!("outsock-udp/test.{label}{framed}/p").into_bytes();
        let end = sys::unix_dgram_bound(&name).unwrap();
        let id = sys::identity(end.as_raw_fd()).unwrap();
        (
            chan_host,
            channel,
            Arc::new(Assocs::default()),
            name,
            end,
            id,
        )
    }

    fn relay_case(framed: bool) {
        let (chan_host, channel, assocs, name, end, id) = test_parts(framed, "relay");
        let dns: SocketAddrV4 = "10.170.160.1:53".parse().unwrap();
        let assoc = Arc::new(Assoc::new(
            channel,
            framed,
            name,
            format!("outsock-udp/test.relay{framed}/"),
            dns,
            None,
            Carries::Udp,
            SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
        ));
        assocs.map.lock().unwrap().insert(id, Arc::clone(&assoc));
        let (a, all) = (Arc::clone(&assoc), Arc::clone(&assocs));
        let t = std::thread::spawn(move || relay(&a, &all, id));

        let from: SocketAddrV4 = "172.21.112.1:4000".parse().unwrap();
        let ns: SocketAddrV4 = "192.168.1.1:53".parse().unwrap();
        // A send to a nameserver goes to the guest DNS; its reply comes from the nameserver.
        assert_eq!(send(&assoc, ns, true, b"q").unwrap(), 1);
        let (frame, _, _) = sys::recv_from_name(chan_host.as_raw_fd(), MAX_FRAME, 0).unwrap();
        assert_eq!(
            decode_exact::<ToHost>(&frame).unwrap(),
            ToHost::Datagram(Datagram {
                addr: dns,
                payload: b"q".to_vec()
            })
        );
        assert_eq!(
            send(&assoc, "127.0.0.1:7".parse().unwrap(), false, b"x"),
            Err(libc::ENETUNREACH)
        );
        for (addr, payload) in [(from, &b"one"[..]), (dns, b"two")] {
            let f = to_vec(&ToGuest::Datagram(Datagram {
                addr,
                payload: payload.to_vec(),
            }))
            .unwrap();
            sys::send_to(chan_host.as_raw_fd(), &f, 0, &[]).unwrap();
        }
        let (p, full, sender) = sys::recv_from_name(end.as_raw_fd(), 2, libc::MSG_TRUNC).unwrap();
        assert_eq!(
            (p.as_slice(), full, source_of(&sender)),
            (&b"on"[..], 3, from)
        );
        let (p, _, sender) = sys::recv_from_name(end.as_raw_fd(), 64, 0).unwrap();
        assert_eq!((p.as_slice(), source_of(&sender)), (&b"two"[..], ns));

        // The program closes its end: the relay ends within a probe and closes the association.
        drop(end);
        t.join().unwrap();
        assert!(assocs.get(id).is_none());
        assert_eq!(sys::recv(chan_host.as_raw_fd(), 8, 0).map(|r| r.1), Ok(0));
    }

    /// An ICMP association: only echo requests go out; a raw socket's end reads each echo
    /// reply behind the IPv4 header (source the dummy, TTL the reply's), from the dummy, port 0.
    #[test]
    fn an_icmp_relay_gives_a_raw_reader_the_ipv4_header() {
        icmp_case(false);
    }

    /// The same over a stream of frames, as inside a VM.
    #[test]
    fn a_framed_icmp_relay_does_the_same() {
        icmp_case(true);
    }

    fn icmp_case(framed: bool) {
        let (chan_host, channel, assocs, name, end, id) = test_parts(framed, "icmp");
        let dummy = Ipv4Addr::new(10, 170, 160, 7);
        let local = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 4242);
        let assoc = Arc::new(Assoc::new(
            channel,
            framed,
            name,
            format!("outsock-udp/test.icmp{framed}/"),
            "10.170.160.1:53".parse().unwrap(),
            None,
            Carries::Icmp {
                dest: dummy,
                raw: true,
            },
            local,
        ));
        assocs.map.lock().unwrap().insert(id, Arc::clone(&assoc));
        let (a, all) = (Arc::clone(&assoc), Arc::clone(&assocs));
        let relay = std::thread::spawn(move || relay(&a, &all, id));

        let to = SocketAddrV4::new(dummy, 0);
        let request = [8u8, 0, 0, 0, 0x12, 0x34, 0, 1, b'p'];
        assert_eq!(send(&assoc, to, false, &request), Ok(9));
        let (frame, _, _) = sys::recv_from_name(chan_host.as_raw_fd(), MAX_FRAME, 0).unwrap();
        assert_eq!(
            decode_exact::<ToHost>(&frame).unwrap(),
            ToHost::Datagram(Datagram {
                addr: to,
                payload: request.to_vec()
            })
        );
        // A reply, a timestamp request: not a ping socket's to send.
        assert_eq!(
            send(&assoc, to, false, &[0, 0, 0, 0, 0, 1, 0, 1]),
            Err(libc::EINVAL)
        );
        assert_eq!(send(&assoc, to, false, &[13, 0, 0, 0]), Err(libc::EINVAL));
        let mut big = vec![0u8; MAX_ICMP + 1];
        big[0] = 8;
        assert_eq!(send(&assoc, to, false, &big), Err(libc::EMSGSIZE));

        let reply = vec![0u8, 0, 0xab, 0xcd, 0x12, 0x34, 0, 1, b'p'];
        let f = to_vec(&ToGuest::EchoReply {
            datagram: Datagram {
                addr: to,
                payload: reply.clone(),
            },
            ttl: 61,
        })
        .unwrap();
        sys::send_to(chan_host.as_raw_fd(), &f, 0, &[]).unwrap();
        let (p, _, sender) = sys::recv_from_name(end.as_raw_fd(), 128, 0).unwrap();
        assert_eq!(source_of(&sender), to);
        assert_eq!(p, with_ipv4_header(&reply, dummy, *local.ip(), 61));
        assert_eq!(
            (p[8], &p[12..16], &p[20..]),
            (61, &dummy.octets()[..], &reply[..])
        );

        drop(chan_host);
        relay.join().unwrap();
        assert!(assocs.get(id).is_none());
    }

    #[test]
    fn a_connected_end_writes_to_its_peer_and_hears_it_alone() {
        let (chan_host, channel) = sys::seqpacket_pair().unwrap();
        let assocs = Arc::new(Assocs::default());
        let name = b"outsock-udp/test.connected/p".to_vec();
        let end = sys::unix_dgram_bound(&name).unwrap();
        let id = sys::identity(end.as_raw_fd()).unwrap();
        let dns: SocketAddrV4 = "10.170.160.1:53".parse().unwrap();
        let assoc = Arc::new(Assoc::new(
            channel,
            false,
            name,
            "outsock-udp/test.connected/".into(),
            dns,
            None,
            Carries::Udp,
            SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
        ));
        assocs.map.lock().unwrap().insert(id, Arc::clone(&assoc));
        let (a, all) = (Arc::clone(&assoc), Arc::clone(&assocs));
        let relay = std::thread::spawn(move || relay(&a, &all, id));

        // Connected to a nameserver: a plain write is a query to the guest DNS.
        let ns: SocketAddrV4 = "192.168.1.1:53".parse().unwrap();
        connect_end(&assoc, &end, ns, true).unwrap();
        assert_eq!(sys::send_to(end.as_raw_fd(), b"query", 0, &[]), Ok(5));
        let (frame, _, _) = sys::recv_from_name(chan_host.as_raw_fd(), MAX_FRAME, 0).unwrap();
        assert_eq!(
            decode_exact::<ToHost>(&frame).unwrap(),
            ToHost::Datagram(Datagram {
                addr: dns,
                payload: b"query".to_vec()
            })
        );
        // Another source's datagram is dropped; the guest DNS's answer comes from `ns`.
        for (addr, payload) in [
            ("172.21.112.1:53".parse().unwrap(), &b"stray"[..]),
            (dns, b"answer"),
        ] {
            let f = to_vec(&ToGuest::Datagram(Datagram {
                addr,
                payload: payload.to_vec(),
            }))
            .unwrap();
            sys::send_to(chan_host.as_raw_fd(), &f, 0, &[]).unwrap();
        }
        let (p, _, sender) = sys::recv_from_name(end.as_raw_fd(), 64, 0).unwrap();
        assert_eq!((p.as_slice(), source_of(&sender)), (&b"answer"[..], ns));

        // host-server closes the association: the relay and the writer end.
        drop(chan_host);
        relay.join().unwrap();
        assert!(assocs.get(id).is_none());
        assert!(assoc.closed.load(Ordering::SeqCst));
    }
}
