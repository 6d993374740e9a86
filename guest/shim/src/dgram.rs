//! The per-call logic of outsourced UDP, under the exported calls of `udp` (and
//! `interpose::connect`): opening an association and putting it on the program's fd, one
//! `Datagram` frame per send and per receive, and in process mode the passed, connected host
//! socket — asking for it, giving it back, and turning it into an association when the program
//! sends elsewhere. `udp`'s module documentation tells the whole story. A process's UDP server
//! (a port of its own) makes its association's channel itself and hands the host's end to the
//! supervisor's keeper (`open_server`, `keeper`), so its port outlives a host-server restart as
//! a listener does.
//!
//! A ping socket (`socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP)`, [`table::ICMP`]) takes the same
//! path with an `Icmp` association instead of a `Udp` one: its datagrams are ICMPv4 echo
//! messages, which host-server translates to ICMPv6 echo. An ICMP association belongs to one
//! destination (host-server checks the destination policy when it opens, so a refused one is
//! the send's EACCES); a send to another destination opens a new association on the fd. As
//! from the kernel's ping socket, anything but an echo request (type 8, code 0, a whole 8-byte
//! header) is EINVAL, and a ping socket is never passed connected. Where the program's
//! namespace forbids ping sockets (`net.ipv4.ping_group_range`), `socket` makes a UDP socket
//! stand in until the first send; host-server's namespace is the one whose sysctl counts. A
//! raw ICMP socket (`SOCK_RAW`, root's ping, busybox's) is the same association, its reads
//! given the IPv4 header a raw reader expects (source the dummy, TTL the reply's hop limit).
//! The association's channel keeps the program's SO_RCVTIMEO/SO_SNDTIMEO (ping times its waits
//! with them).
//!
//! Invariant: **each datagram reaches exactly one receiver, whole, and sends never
//! interleave**, however many threads and processes share the program's fd. In process mode
//! the association's channel is an `AF_UNIX` `SOCK_SEQPACKET` socket passed with the
//! `Associated` answer: one frame is one packet, sent with one `send` and taken with one `recv`
//! (whole or not at all, so a non-blocking EAGAIN never splits one). In a VM (vsock carries only
//! streams) the association stays a stream of frames, and a thread reads or writes a frame only
//! while it holds the fd's claim for that direction (`claim`), taken once a frame is there to
//! read, never while waiting for one.

use std::net::{Ipv4Addr, SocketAddrV4};

use libc::{c_int, sockaddr, socklen_t};
use shared_proto::frame::{frame_len, HEADER_LEN};
use shared_proto::icmp::{is_echo_request, with_ipv4_header};
use shared_proto::outsource::{Datagram, IcmpRequest, UdpConnectRequest, UdpRequest};
use shared_proto::{decode_exact, to_vec, Errno, ToGuest, ToHost};

use crate::claim::{claim, Way};
use crate::fd::{errno_isize, flags_of, replace_fd, set_errno, unexpected};
use crate::keeper::{self, seqpacket_pair, Owned};
use crate::nameserver;
use crate::real;
use crate::sockaddr::{is_local, read_v4};
use crate::sockopt::{copy_options, option_bit};
use crate::table::{self, Entry, Kind};
use crate::transport::{self, recv_datagram_frame, recv_packet, Stream};

/// Opens the association for `fd` and installs it; returns the new entry.
pub(crate) fn associate(fd: c_int, entry: Entry) -> Result<Entry, Errno> {
    associate_to(fd, entry, entry.peer)
}

/// Whether `e` is a ping socket's.
fn is_icmp(e: Entry) -> bool {
    e.options & table::ICMP != 0
}

/// As [`associate`]; a ping socket's association is opened for `dest`, which becomes the
/// entry's peer (port 0, as the kernel reports a ping reply's source).
fn associate_to(fd: c_int, entry: Entry, dest: Option<SocketAddrV4>) -> Result<Entry, Errno> {
    let flags = flags_of(fd);
    let bind = entry
        .local
        .unwrap_or(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
    let (request, peer) = if is_icmp(entry) {
        let dest = dest.ok_or(Errno(libc::EDESTADDRREQ as u16))?;
        let peer = SocketAddrV4::new(*dest.ip(), 0);
        (ToHost::Icmp(IcmpRequest { bind, dest: peer }), Some(peer))
    } else {
        (
            ToHost::Udp(UdpRequest {
                bind,
                channel: false,
            }),
            entry.peer,
        )
    };
    let stream = Stream::open()?;
    // A process's UDP server brings a channel of its own, which the keeper holds.
    let server = matches!(request, ToHost::Udp(_)) && bind.port() != 0 && is_packets();
    let (local, packets, hidden) = if server {
        let (local, ours, hidden) = open_server(&stream, bind)?;
        (local, Some(ours.into_raw()), hidden)
    } else {
        stream.send(&request)?;
        match stream.recv()? {
            // A process's association: the packet channel comes with the answer.
            (ToGuest::Associated { local }, packets) => (local, packets, None),
            (ToGuest::Failed(e), None) => return Err(e),
            (_, passed) => {
                if let Some(p) = passed {
                    // SAFETY: an fd we were passed and do not use.
                    unsafe { real::close(p) };
                }
                return Err(Errno::EPROTO);
            }
        }
    };
    // The packet channel, else (a VM) the stream itself; the request's stream is done with.
    let channel = match packets {
        Some(p) => p,
        None => {
            transport::clear_answer_timeout(stream.fd());
            stream.into_raw()
        }
    };
    // The program's receive and send timeouts hold on the channel too (ping times its waits
    // with SO_RCVTIMEO).
    let timeouts = [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO]
        .iter()
        .filter_map(|&n| option_bit(libc::SOL_SOCKET, n))
        .fold(0, |a, b| a | b);
    copy_options(fd, channel, timeouts);
    replace_fd(channel, fd, &flags)?;
    if let Some(h) = hidden {
        table::set_kept(fd, h.into_raw());
    }
    let e = Entry {
        kind: Kind::Udp,
        local: Some(local),
        peer,
        ..entry
    };
    table::set(fd, e);
    Ok(e)
}

/// A process's UDP server association (a port of its own): its packet channel made here, the
/// host's end brought with the request (`UdpRequest::channel`) and then given to the keeper,
/// which opens the association again on the same channel whenever host-server comes back, as
/// for a listener (see `keeper`). Returns the local address, the program's end and, where no
/// keeper took it, the host's end to keep hidden in this process: the program's end then never
/// reads EOF (a receive loop would spin on it), though the association is not opened again.
fn open_server(
    stream: &Stream,
    bind: SocketAddrV4,
) -> Result<(SocketAddrV4, Owned, Option<Owned>), Errno> {
    let bytes = to_vec(&ToHost::Udp(UdpRequest {
        bind,
        channel: true,
    }))
    .map_err(|_| Errno::EINVAL)?;
    let (ours, host_end) = seqpacket_pair()?;
    stream.send_with_fd(&bytes, host_end.0)?;
    match stream.recv()? {
        (ToGuest::Associated { local }, None) => {
            // The request's stream closes here; host-server holds it while the association
            // lives.
            let hidden = (!keeper::give(&bytes, &host_end)).then_some(host_end);
            Ok((local, ours, hidden))
        }
        (ToGuest::Failed(e), None) => Err(e),
        (_, passed) => {
            if let Some(p) = passed {
                // SAFETY: an fd we were passed and do not use.
                unsafe { real::close(p) };
            }
            Err(Errno::EPROTO)
        }
    }
}

/// `bind(2)` of a datagram socket to a port of its own (`e` records it): a UDP server, which may
/// only ever receive, so its association (and host-server's socket on that port) opens now
/// instead of at the first send. Returns what bind(2) returns: the association's errno when
/// host-server refuses (EACCES for a port outside `allowed_ports`), with the socket left as it
/// was.
pub(crate) fn bind_server(fd: c_int, e: Entry) -> c_int {
    match associate(fd, e) {
        Ok(_) => 0,
        Err(err) => {
            table::set(
                fd,
                Entry {
                    local: None,
                    options: e.options & !table::BOUND,
                    ..e
                },
            );
            set_errno(err)
        }
    }
}

/// Whether associations are packet channels (process mode), not streams (a VM):
/// host-server gives a process a packet channel and a VM a stream, so the transport says,
/// with no system call (a `getsockopt(SO_TYPE)` here, once per datagram, would be a round
/// trip to the supervisor, which answers that read for the sockets it made).
fn is_packets() -> bool {
    transport::vsock_port().is_none()
}

/// Sends one frame on the association `fd`: on a packet channel one packet (atomic), on a
/// stream under the fd's send claim.
fn send_frame(fd: c_int, bytes: &[u8]) -> Result<(), Errno> {
    if is_packets() {
        return write_frame(fd, bytes);
    }
    let _claim = claim(fd, Way::Send);
    write_frame(fd, bytes)
}

/// Writes one whole frame, waiting for room even on a non-blocking fd: a half-written frame
/// would corrupt the stream, and a datagram is small. On a packet channel the one send takes
/// the whole frame or nothing.
fn write_frame(fd: c_int, bytes: &[u8]) -> Result<(), Errno> {
    let mut off = 0;
    while off < bytes.len() {
        let rest = &bytes[off..];
        // SAFETY: `rest` is valid for its length.
        let n = unsafe {
            real::sendto(
                fd,
                rest.as_ptr().cast(),
                rest.len(),
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
                std::ptr::null(),
                0,
            )
        };
        if n >= 0 {
            off += usize::try_from(n).unwrap_or(0);
            continue;
        }
        let e = std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO);
        match e {
            libc::EINTR => {}
            libc::EAGAIN => {
                let mut p = libc::pollfd {
                    fd,
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(&mut p, 1, 1000) };
            }
            e => return Err(Errno(u16::try_from(e).unwrap_or(5))),
        }
    }
    Ok(())
}

/// Sends `data` on the associated `fd` to `to` (or the connected peer).
pub(crate) fn send_on(fd: c_int, e: Entry, data: &[u8], to: Option<SocketAddrV4>) -> isize {
    let Some(dest) = to.or(e.peer) else {
        return errno_isize(Errno(libc::EDESTADDRREQ as u16));
    };
    if is_local(dest) {
        // The fd is now host-server's stream; loopback from it would need a second socket.
        return errno_isize(Errno::ENETUNREACH);
    }
    if !is_icmp(e) && data.len() > shared_proto::translate::MAX_UDP_PAYLOAD {
        return errno_isize(Errno::EMSGSIZE);
    }
    if is_icmp(e) {
        if !is_echo_request(data) {
            return errno_isize(Errno(libc::EINVAL as u16));
        }
        // A ping socket's association is its destination's: another opens a new one on `fd`.
        if let Err(err) = icmp_for(fd, e, dest) {
            return errno_isize(err);
        }
    }
    // A resolv.conf nameserver's DNS goes to the guest DNS address; the socket remembers
    // which nameserver it asked, so that the replies seem to come from it.
    let asked = if is_icmp(e) {
        None
    } else {
        nameserver::index(dest)
    };
    let wire = asked.map_or(dest, |_| nameserver::guest_dns());
    remember_nameserver(fd, asked);
    let Ok(frame) = to_vec(&ToHost::Datagram(Datagram {
        addr: wire,
        payload: data.to_vec(),
    })) else {
        return errno_isize(Errno::EMSGSIZE);
    };
    match send_frame(fd, &frame) {
        Ok(()) => isize::try_from(data.len()).unwrap_or(isize::MAX),
        Err(e) => errno_isize(e),
    }
}

/// Records on `fd` which resolv.conf nameserver (index) it last sent to, if any: replies from
/// the guest DNS address are shown as coming from it (see `crate::nameserver`).
fn remember_nameserver(fd: c_int, asked: Option<u8>) {
    let e = table::get(fd);
    let n = asked.map_or(0, |i| i.saturating_add(1).min(table::MAX_NAMESERVER));
    if e.nameserver != n && e.kind != Kind::Untracked {
        table::set(fd, Entry { nameserver: n, ..e });
    }
}

/// The ping socket's association for `dest`: `e` itself when it is `dest`'s, else a new one on
/// `fd` (the old stream closes with dup3).
fn icmp_for(fd: c_int, e: Entry, dest: SocketAddrV4) -> Result<Entry, Errno> {
    if e.peer.is_some_and(|p| p.ip() == dest.ip()) {
        return Ok(e);
    }
    let fresh = Entry {
        kind: Kind::InetDgram,
        peer: None,
        ..e
    };
    associate_to(fd, fresh, Some(dest))
}

/// One datagram received on an association.
pub(crate) struct Received {
    pub payload: Vec<u8>,
    pub from: SocketAddrV4,
    /// An ICMP echo reply's TTL (the hop limit it arrived with at the host).
    pub ttl: Option<u8>,
}

/// Receives one datagram on the associated `fd`: its payload and source (a raw ICMP socket's
/// payload with the IPv4 header a raw reader expects in front).
pub(crate) fn recv_on(fd: c_int, e: Entry, flags: c_int) -> Result<Received, Errno> {
    let (payload, from, ttl) = recv_message(fd, e, flags)?;
    let payload = if e.options & table::RAW != 0 {
        let to = e.local.map_or(Ipv4Addr::UNSPECIFIED, |a| *a.ip());
        with_ipv4_header(&payload, *from.ip(), to, ttl.unwrap_or(64))
    } else {
        payload
    };
    Ok(Received { payload, from, ttl })
}

fn recv_message(
    fd: c_int,
    e: Entry,
    flags: c_int,
) -> Result<(Vec<u8>, SocketAddrV4, Option<u8>), Errno> {
    // SAFETY: F_GETFL query on the program's fd.
    let status = unsafe { real::fcntl(fd, libc::F_GETFL, 0) };
    let rflags = if flags & libc::MSG_DONTWAIT != 0 || status & libc::O_NONBLOCK != 0 {
        libc::MSG_DONTWAIT
    } else {
        0
    };
    let packets = is_packets();
    loop {
        if flags & libc::MSG_PEEK != 0 {
            let (mut d, ttl) = if packets {
                datagram_of(recv_packet(fd, rflags | libc::MSG_PEEK)?)?
            } else {
                peek_datagram(fd, rflags)?
            };
            d.addr = nameserver::shown_source(d.addr, table::get(fd).nameserver);
            if e.peer.is_some_and(|p| p != d.addr) {
                // Not for a connected socket: consume it, as the kernel never queues it.
                let _ = take_frame(fd, rflags, packets)?;
                continue;
            }
            return Ok((d.payload, d.addr, ttl));
        }
        let (mut d, ttl) = match take_frame(fd, rflags, packets)? {
            (ToGuest::Datagram(d), None) => (d, None),
            (ToGuest::EchoReply { datagram, ttl }, None) => (datagram, Some(ttl)),
            (ToGuest::Failed(err), None) => return Err(err),
            (_, passed) => {
                if let Some(p) = passed {
                    // SAFETY: an fd we were passed and do not use.
                    unsafe { real::close(p) };
                }
                return Err(Errno::EPROTO);
            }
        };
        // A reply to a nameserver's redirected query comes from that nameserver.
        d.addr = nameserver::shown_source(d.addr, table::get(fd).nameserver);
        // A connected UDP socket only hears from its peer, as in the kernel.
        if e.peer.is_some_and(|p| p != d.addr) {
            continue;
        }
        return Ok((d.payload, d.addr, ttl));
    }
}

/// Takes the next frame off the association `fd`: one packet, or on a stream one whole frame
/// read under the fd's receive claim. `rflags` holds `MSG_DONTWAIT` for a non-blocking receive.
fn take_frame(fd: c_int, rflags: c_int, packets: bool) -> Result<(ToGuest, Option<c_int>), Errno> {
    if packets {
        return recv_packet(fd, rflags).map(|m| (m, None));
    }
    loop {
        {
            // Claimed only while a frame is there to read: a thread waiting for one holds
            // nothing.
            let _claim = claim(fd, Way::Recv);
            match recv_datagram_frame(fd, libc::MSG_DONTWAIT) {
                Err(Errno::EAGAIN) => {}
                r => return r,
            }
        }
        if rflags & libc::MSG_DONTWAIT != 0 {
            return Err(Errno::EAGAIN);
        }
        // Wait, unclaimed, until something is there (the program's SO_RCVTIMEO and signals
        // behave as on a native receive); another thread may take it first, then wait again.
        let mut byte = 0u8;
        // SAFETY: one byte of room in `byte`.
        let n = unsafe {
            real::recvfrom(
                fd,
                std::ptr::from_mut(&mut byte).cast(),
                1,
                libc::MSG_PEEK,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(transport::last_errno());
        }
    }
}

/// The datagram in a frame peeked off a packet channel (an ICMP reply with its TTL).
fn datagram_of(m: ToGuest) -> Result<(Datagram, Option<u8>), Errno> {
    match m {
        ToGuest::Datagram(d) => Ok((d, None)),
        ToGuest::EchoReply { datagram, ttl } => Ok((datagram, Some(ttl))),
        ToGuest::Failed(err) => Err(err),
        _ => Err(Errno::EPROTO),
    }
}

/// The next datagram on the associated `fd`, left in place (`MSG_PEEK`): its frame is peeked
/// whole off the stream, so the next receive reads the same datagram. netcat's UDP server
/// peeks the first datagram to learn whom to connect to.
fn peek_datagram(fd: c_int, rflags: c_int) -> Result<(Datagram, Option<u8>), Errno> {
    let mut want = HEADER_LEN;
    let mut buf = vec![0u8; want];
    loop {
        buf.resize(want, 0);
        // SAFETY: `buf` is valid for its length.
        let n = unsafe {
            real::recvfrom(
                fd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                rflags | libc::MSG_PEEK,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
        match usize::try_from(n) {
            Ok(0) => return Err(Errno::EPROTO),
            Ok(n) if n < want => {
                // The rest of the frame is on its way (host-server writes frames whole, so this
                // is rare): peeking again at once would only spin.
                std::thread::sleep(std::time::Duration::from_millis(1));
                continue;
            }
            Ok(_) => {}
            Err(_) => match transport::last_errno() {
                Errno::EINTR => continue,
                e => return Err(e),
            },
        }
        match frame_len(&buf) {
            Ok(Some(total)) if total > want => want = total,
            Ok(Some(total)) => {
                return match decode_exact::<ToGuest>(&buf[..total]) {
                    Ok(ToGuest::Datagram(d)) => Ok((d, None)),
                    Ok(ToGuest::EchoReply { datagram, ttl }) => Ok((datagram, Some(ttl))),
                    Ok(ToGuest::Failed(err)) => Err(err),
                    _ => Err(Errno::EPROTO),
                };
            }
            _ => return Err(Errno::EPROTO),
        }
    }
}

/// The entry to send with, associating first if the socket is still a plain AF_INET one that
/// sends off loopback. `None`: not ours, use the real call.
pub(crate) fn sending_entry(fd: c_int, to: Option<SocketAddrV4>) -> Option<Result<Entry, Errno>> {
    let e = table::get(fd);
    match e.kind {
        Kind::Udp => Some(Ok(e)),
        Kind::InetDgram if !e.local_only && to.is_some_and(|a| !is_local(a)) => {
            // Threads racing to the first send on one socket: one of them makes the
            // association while the others wait, then find it. Two associations made at once
            // would each replace the fd, and the replies to the first one's datagrams would
            // arrive on a channel nobody reads any more.
            let _first = claim(fd, Way::Send);
            let e = table::get(fd);
            match e.kind {
                Kind::InetDgram => Some(associate_to(fd, e, to)),
                Kind::Udp => Some(Ok(e)),
                _ => None,
            }
        }
        _ => None,
    }
}

/// `connect(2)` on a datagram socket: in process mode a passed, connected host socket (see
/// `udp`'s module docs); otherwise associate (if off loopback) and remember the peer. `None`: not ours,
/// use the real call.
///
/// # Safety
/// `addr` is null or valid for `len` bytes.
pub(crate) unsafe fn connect(
    fd: c_int,
    e: Entry,
    addr: *const sockaddr,
    len: socklen_t,
) -> Option<c_int> {
    if e.kind == Kind::UdpPassed {
        let fresh = match release(fd, e) {
            Ok(f) => f,
            Err(err) => return Some(set_errno(err)),
        };
        // SAFETY: the caller's addr/len, passed on.
        return unsafe { connect(fd, fresh, addr, len) };
    }
    // SAFETY: the caller's addr/len.
    let to = unsafe { read_v4(addr, len) };
    let e = match (e.kind, to) {
        (Kind::Udp, Some(a)) if is_icmp(e) && !is_local(a) => match icmp_for(fd, e, a) {
            Ok(e) => e,
            Err(err) => return Some(set_errno(err)),
        },
        // A UDP server connecting to one client (iperf3 -u -s): in process mode the same
        // port, connected, on a passed host socket, so the kernel hands it that client's
        // datagrams even while another socket of the program listens on the port. Not while
        // a datagram waits on the association (netcat peeks the client's first one, connects,
        // then reads it): it would be lost with the association, so that socket stays one.
        (Kind::Udp, Some(a)) if server_connects_passed(e, a) && nothing_pending(fd) => {
            let fresh = match release(fd, e) {
                Ok(f) => f,
                Err(err) => return Some(set_errno(err)),
            };
            if let Some(rc) = connect_passed(fd, fresh, a) {
                return Some(rc);
            }
            match associate_to(fd, fresh, Some(a)) {
                Ok(e) => e,
                Err(err) => return Some(set_errno(err)),
            }
        }
        (Kind::Udp, _) => e,
        (Kind::InetDgram, Some(a)) if !e.local_only && !is_local(a) => {
            // A resolv.conf nameserver is the guest DNS address, which needs an association.
            let dns = !is_icmp(e) && nameserver::index(a).is_some();
            if transport::vsock_port().is_none() && !is_icmp(e) && !dns {
                if let Some(rc) = connect_passed(fd, e, a) {
                    return Some(rc);
                }
            }
            match associate_to(fd, e, Some(a)) {
                Ok(e) => e,
                Err(err) => return Some(set_errno(err)),
            }
        }
        _ => return None,
    };
    // AF_UNSPEC (or anything not AF_INET) dissolves the association's default peer. A ping
    // socket's peer has port 0, the source its replies arrive from.
    let peer = to.map(|a| {
        if is_icmp(e) {
            SocketAddrV4::new(*a.ip(), 0)
        } else {
            a
        }
    });
    let asked = match to {
        Some(a) if !is_icmp(e) => nameserver::index(a).map_or(0, |i| i.saturating_add(1)),
        _ => e.nameserver,
    };
    table::set(
        fd,
        Entry {
            peer,
            nameserver: asked.min(table::MAX_NAMESERVER),
            ..e
        },
    );
    Some(0)
}

/// Whether `connect(dest)` on the association `e` becomes a passed, connected host socket: in
/// process mode, for a UDP (not ping) socket the program bound to a port of its own, to anything
/// but a resolv.conf nameserver (whose DNS goes to the guest DNS address, on an association).
fn server_connects_passed(e: Entry, dest: SocketAddrV4) -> bool {
    transport::vsock_port().is_none()
        && !is_icmp(e)
        && !is_local(dest)
        && nameserver::index(dest).is_none()
        && e.options & table::BOUND != 0
        && e.local.is_some_and(|l| l.port() != 0)
}

/// Whether nothing waits to be read on the associated `fd` (no datagram, no end of stream).
fn nothing_pending(fd: c_int) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no wait.
    unsafe { libc::poll(&mut p, 1, 0) == 0 }
}

/// Asks host-server for a UDP socket connected to `dest` and installs it on `fd`. `None`: the
/// destination needs an association (host-server answered EOPNOTSUPP: the guest DNS address).
fn connect_passed(fd: c_int, e: Entry, dest: SocketAddrV4) -> Option<c_int> {
    let flags = flags_of(fd);
    let stream = match Stream::open() {
        Ok(s) => s,
        Err(err) => return Some(set_errno(err)),
    };
    let bind = e
        .local
        .unwrap_or(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
    let answer = stream
        .send(&ToHost::UdpConnect(UdpConnectRequest { bind, dest }))
        .and_then(|()| stream.recv());
    match answer {
        Ok((ToGuest::Connected { local, .. }, Some(host_fd))) => {
            copy_options(fd, host_fd, e.options);
            if let Err(err) = replace_fd(host_fd, fd, &flags) {
                return Some(set_errno(err));
            }
            table::set(
                fd,
                Entry {
                    kind: Kind::UdpPassed,
                    local: Some(local),
                    peer: Some(dest),
                    ..e
                },
            );
            Some(0)
        }
        Ok((ToGuest::Failed(Errno::EOPNOTSUPP), None)) => None,
        other => Some(unexpected(&other)),
    }
}

/// Gives a passed UDP socket back: a fresh AF_INET datagram socket takes `fd`'s number (dup3
/// closes the host socket, freeing its port), recorded as bound where the program bound it.
fn release(fd: c_int, e: Entry) -> Result<Entry, Errno> {
    let flags = flags_of(fd);
    // SAFETY: plain socket(2) call.
    let placeholder =
        unsafe { real::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if placeholder < 0 {
        return Err(transport::last_errno());
    }
    table::clear(placeholder);
    replace_fd(placeholder, fd, &flags)?;
    let fresh = Entry {
        kind: Kind::InetDgram,
        // An ephemeral port was host-server's choice: the next socket gets its own.
        local: e.local.filter(|_| e.options & table::BOUND != 0),
        peer: None,
        local_only: false,
        options: e.options,
        nameserver: 0,
    };
    table::set(fd, fresh);
    Ok(fresh)
}

/// A send to another address than the peer on a passed UDP socket: it becomes an association
/// (as if unconnected) that keeps the peer as its default destination.
fn demote(fd: c_int, e: Entry) -> Result<Entry, Errno> {
    let fresh = release(fd, e)?;
    let assoc = associate(fd, fresh)?;
    let assoc = Entry {
        peer: e.peer,
        ..assoc
    };
    table::set(fd, assoc);
    Ok(assoc)
}

/// What a send on a passed UDP socket does with its address.
pub(crate) enum PassedSend {
    /// The real call without an address (none given, or the peer itself).
    Native,
    /// Another destination: through the association the socket became.
    Associated(Entry),
}

pub(crate) fn passed_send(
    fd: c_int,
    e: Entry,
    to: Option<SocketAddrV4>,
) -> Result<PassedSend, Errno> {
    match to {
        Some(a) if Some(a) != e.peer => demote(fd, e).map(PassedSend::Associated),
        _ => Ok(PassedSend::Native),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_bound_udp_server_connecting_off_loopback_is_passed() {
        let client: SocketAddrV4 = "172.21.112.1:4000".parse().unwrap();
        let server = Entry {
            local: Some("0.0.0.0:5201".parse().unwrap()),
            options: table::BOUND,
            ..Entry::new(Kind::Udp)
        };
        assert!(server_connects_passed(server, client));
        assert!(!server_connects_passed(
            server,
            "127.0.0.1:4000".parse().unwrap()
        ));
        // Bound to any port (a client's association), or a ping socket: as before.
        let ephemeral = Entry {
            local: Some("0.0.0.0:0".parse().unwrap()),
            options: 0,
            ..server
        };
        assert!(!server_connects_passed(ephemeral, client));
        let ping = Entry {
            options: table::BOUND | table::ICMP,
            ..server
        };
        assert!(!server_connects_passed(ping, client));
    }

    #[test]
    fn pending_data_is_seen_without_waiting() {
        let mut fds = [0; 2];
        // SAFETY: a plain socketpair into a valid array.
        let rc = unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, fds.as_mut_ptr()) };
        assert_eq!(rc, 0);
        assert!(nothing_pending(fds[0]));
        // SAFETY: one byte from a valid buffer.
        assert_eq!(unsafe { libc::write(fds[1], b"x".as_ptr().cast(), 1) }, 1);
        assert!(!nothing_pending(fds[0]));
        // SAFETY: our own descriptors.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
    }
}
