//! The outsourcing protocol: what flows on one outsourced socket's stream.
//!
//! A stream carries exactly one socket. It opens with an optional [`ToHost::Hello`] (written by
//! the VMM, never by a guest), then one request ([`ToHost::Connect`], [`ToHost::Listen`],
//! [`ToHost::Udp`], [`ToHost::UdpConnect`] or [`ToHost::Icmp`]) and one answer from host-server.
//! What follows depends on the request:
//!
//! - TCP connect, relayed: the raw bytes of the TCP connection, both ways; half-close is a
//!   `shutdown(SHUT_WR)` of the stream.
//! - TCP connect with `pass_fd`: the answer arrives together with the connected IPv6 socket
//!   (SCM_RIGHTS on the Unix stream) and the stream then closes.
//! - TCP connect from a VMM whose hello says [`VmHello::takes_sockets`]: the guest's protocol is
//!   the relayed one (its `pass_fd` is false and the answer says `fd_passed: false`), but
//!   host-server may attach the connected socket to the answer (SCM_RIGHTS on the answer's
//!   first byte, as for `pass_fd`). The VMM then forwards the answer to the guest and bridges
//!   the guest's connection to that socket itself; the stream carries nothing more and stays
//!   open as the connection's *control stream*: the VMM closes it when the guest connection
//!   ends, and host-server holds the connection's pins and limits until then. Such a VMM sends
//!   no guest byte after the request until the answer arrived (so nothing pipelined reaches
//!   host-server once the socket went over). Without the socket attached, the connection is
//!   relayed as above. Instead of closing the control stream, the VMM may send
//!   [`ToHost::Ended`]: host-server lets go of the connection (its pins and limits) as for a
//!   close, answers [`ToGuest::Released`], and the stream then carries the VM's next request,
//!   under the same hello (no second one), read and admitted as a new stream's; an idle one is
//!   closed after host-server's request timeout. The VMM sends that request only once
//!   `Released` is in, so it never goes to a host-server that is not waiting for it (one that
//!   restarted, or an older one that ignores `Ended`).
//! - TCP listen, process mode (`pass_fd`): the [`ToGuest::Listening`] answer carries one end of
//!   an `AF_UNIX` `SOCK_SEQPACKET` pair (SCM_RIGHTS) and the stream then closes. On that pair,
//!   host-server sends one packet per accepted connection: a whole [`ToGuest::Inbound`] frame
//!   with the accepted socket attached, in one `sendmsg`, so that each packet reaches exactly one
//!   of the processes and threads that share the listening fd. The guest may send a
//!   [`ToHost::Listen`] packet back (a second `listen(2)`: its backlog replaces the listener's).
//!   Closing every copy of the guest's end closes the host's listener. A request that says
//!   [`ListenRequest::channel`] brings the host's end of a pair the requester made instead
//!   (attached to the request, SCM_RIGHTS); it is answered without a descriptor and the stream
//!   stays open while the listener lives (host-server closes it when the listener ends: the
//!   requester's sign that host-server went away, to register the same channel again).
//! - TCP listen, VM: host-server sends one [`ToGuest::Inbound`] per accepted connection, as the
//!   first frame of a new host→guest stream to the vsock port named in the request. Closing the
//!   listen stream closes the host's listener.
//! - UDP: [`Datagram`] frames both ways; the address is the destination going out and the source
//!   coming in, always as the guest sees it (dummy IPv4 for IPv6 peers).
//! - Connected UDP in process mode ([`ToHost::UdpConnect`]): the answer is
//!   [`ToGuest::Connected`] with a connected host UDP socket attached (SCM_RIGHTS), as for a TCP
//!   connect with `pass_fd`; the stream then closes.
//! - ICMP echo ([`ToHost::Icmp`], a program's ping socket): answered with
//!   [`ToGuest::Associated`] (or `Failed`: EACCES for a refused destination), then [`Datagram`]
//!   frames both ways as for UDP, whose payloads are ICMPv4 messages without an IP header, as a
//!   Linux ping socket reads and writes them: echo requests (type 8) out, echo replies (type 0)
//!   in, each reply as an [`ToGuest::EchoReply`] that also carries the hop limit (TTL) it
//!   arrived with. host-server translates them to and from ICMPv6 echo (128/129, RFC 7915).
//!   The association belongs to its one destination.
//! - [`ToHost::Lend`] (process mode: a connect the process makes itself): host-server routes the
//!   destination as for a connect (the dummy's mapping, the destination policy) and answers one
//!   [`ToGuest::Lent`] with the IPv6 address to connect to and, attached to its first byte in
//!   one SCM_RIGHTS, as many unconnected IPv6 TCP sockets of host-server's network as it says
//!   (those asked for, or fewer if host-server could not make them all; IPV6_V6ONLY, bound to
//!   the source address where one is set). `Failed` refuses: EACCES, EHOSTUNREACH, ENETUNREACH as a connect
//!   would, and EOPNOTSUPP for a destination only a [`ToHost::Connect`] reaches (the guest DNS
//!   address, IPv4 egress) or a host-server that lends no sockets. The stream then carries the
//!   process's next request, as after a connect whose socket was passed.
//! - [`ToHost::ListVms`] (an operator's `outsock vm ls`, never a guest's): answered with one
//!   [`VmList`] frame, or `Failed(EACCES)` for anyone but root and host-server's own user; the
//!   stream then closes.

use std::net::{Ipv6Addr, SocketAddrV4, SocketAddrV6};

use crate::codec::{Reader, Writer};
use crate::errno::Errno;
use crate::error::ProtoError;
use crate::frame::Message;

/// Written by the VMM before any guest byte: names the VM a bridged stream comes from, so that a
/// guest can never speak for another VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmHello {
    /// The VM's configured name.
    pub vm: String,
    /// The guest's vsock context id.
    pub cid: u32,
    /// The vsock port the guest connected to on the host (CID 2).
    pub port: u32,
    /// The VMM can take a guest connection's host socket (see the module docs). Encoded as a
    /// flags byte after `port` holding bit 0, present only when true: a hello without it (an
    /// older VMM, or one that takes none) means false and is the older hello byte for byte, so
    /// an older host-server reads it. Any other flags byte (0, unknown bits) is refused: one
    /// hello has one encoding.
    pub takes_sockets: bool,
}

/// [`VmHello`]'s flag bits.
mod hello_flags {
    pub const TAKES_SOCKETS: u8 = 1;
}

/// Open a TCP connection to an IPv4 address (a dummy for an IPv6 host, usually).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectRequest {
    pub dest: SocketAddrV4,
    /// Process mode: pass the host's IPv6 socket back with SCM_RIGHTS instead of relaying.
    pub pass_fd: bool,
    /// With `pass_fd`: answer as soon as the connect is under way (the program's socket is
    /// non-blocking and will learn the outcome through poll and `SO_ERROR`).
    pub nonblocking: bool,
}

/// Listen for TCP connections on an IPv4 port on the guest's behalf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenRequest {
    /// The address the program bound (usually 0.0.0.0:port).
    pub addr: SocketAddrV4,
    pub backlog: u32,
    /// Process mode: attach each accepted socket to its [`ToGuest::Inbound`] frame.
    pub pass_fd: bool,
    /// VM mode: the guest vsock port where the shim accepts inbound streams (0 in process mode).
    pub vsock_port: u32,
    /// Process mode: the requester made the packet channel and attaches its host end to this
    /// frame (SCM_RIGHTS, on the frame's first byte); host-server uses it instead of making a
    /// pair, answers `Listening` without a descriptor, and keeps the request's stream open for
    /// as long as the listener lives. A request with the channel of a live listener is
    /// answered `Listening` again (a re-registration). Encoded as a flags byte after
    /// `vsock_port` holding bit 0, present only when true: a request without it is the older
    /// request byte for byte. Any other flags byte is refused.
    pub channel: bool,
}

/// The environment variable in which `outsock run`'s supervisor names its keeper's abstract
/// Unix socket (without the leading NUL) to the programs it serves: liboutsock hands each
/// listener it makes over to it (one packet: the `Listen` frame with the host's end of the
/// channel attached), and the keeper registers the listener again whenever host-server comes
/// back.
pub const KEEPER_ENV: &str = "OUTSOCK_KEEPER";

/// [`ListenRequest`]'s flag bits.
mod listen_flags {
    pub const CHANNEL: u8 = 1;
}

/// Open a UDP association bound to an IPv4 address (port 0: any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpRequest {
    pub bind: SocketAddrV4,
    /// Process mode, a UDP server (a port of its own): the requester made the packet channel
    /// and attaches its host end to this frame, as [`ListenRequest::channel`] does: host-server
    /// uses it instead of making a pair, answers `Associated` without a descriptor, and keeps
    /// the request's stream open for as long as the association lives; a request bringing the
    /// channel of a live association is answered `Associated` again (a re-registration). So
    /// the keeper can open the association again, on the same channel, after host-server
    /// restarted. Encoded as a flags byte after `bind` holding bit 0, present only when true;
    /// any other flags byte is refused.
    pub channel: bool,
}

/// [`UdpRequest`]'s flag bits.
mod udp_flags {
    pub const CHANNEL: u8 = 1;
}

/// An optional flags byte that ends a body: absent (an older sender's body) is false, exactly
/// `bit` is true, anything else is refused as a bad `field`.
fn optional_flag(r: &mut Reader<'_>, field: &'static str, bit: u8) -> Result<bool, ProtoError> {
    match r.u8() {
        Ok(b) if b == bit => Ok(true),
        Ok(other) => Err(ProtoError::BadValue {
            field,
            value: u64::from(other),
        }),
        Err(ProtoError::Truncated) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Process mode: a UDP socket bound to `bind` (port 0: any) and connected to `dest`, handed to
/// the process itself (SCM_RIGHTS), so its datagrams never pass through host-server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpConnectRequest {
    pub bind: SocketAddrV4,
    pub dest: SocketAddrV4,
}

/// Open an ICMP echo association (a ping socket) to one IPv4 destination (a dummy, usually):
/// host-server checks the destination before answering, so a refused one fails the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IcmpRequest {
    /// The address the program bound (0.0.0.0:0 when it did not).
    pub bind: SocketAddrV4,
    /// Where the echo requests go (the port is ignored).
    pub dest: SocketAddrV4,
}

/// Process mode: route `dest` (a TCP destination) for a connect the process makes itself, with
/// `sockets` unconnected host sockets to make it on (at most [`MAX_LENT`]; 0: the route only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LendRequest {
    pub dest: SocketAddrV4,
    pub sockets: u8,
}

/// The most sockets one [`ToHost::Lend`] may ask for (they travel in one SCM_RIGHTS message).
pub const MAX_LENT: u8 = 64;

/// One UDP datagram with the address it goes to (outbound) or came from (inbound).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    pub addr: SocketAddrV4,
    pub payload: Vec<u8>,
}

/// Frames that travel towards host-server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToHost {
    Hello(VmHello),
    Connect(ConnectRequest),
    Listen(ListenRequest),
    Udp(UdpRequest),
    Datagram(Datagram),
    UdpConnect(UdpConnectRequest),
    Icmp(IcmpRequest),
    /// Which VMs host-server is configured for, and which of them run (see [`VmList`]).
    ListVms,
    Lend(LendRequest),
    /// On a control stream (a VMM's, after the connection's socket went over with the answer):
    /// the guest connection has ended; the stream carries the VM's next request once
    /// host-server has answered [`ToGuest::Released`] (see the module docs).
    Ended,
}

/// Frames that travel towards the guest (or the process).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToGuest {
    /// The connection is open (or, with `in_progress`, under way); the addresses are what
    /// getsockname and getpeername must report.
    Connected {
        local: SocketAddrV4,
        peer: SocketAddrV4,
        fd_passed: bool,
        in_progress: bool,
    },
    /// The host listens; `local` is the guest-visible bound address.
    Listening {
        local: SocketAddrV4,
    },
    /// The UDP association is open; `local` is the guest-visible bound address.
    Associated {
        local: SocketAddrV4,
    },
    /// The request failed with what a native call would have set `errno` to.
    Failed(Errno),
    /// An accepted connection: `peer` is the remote side as the guest sees it (a dummy IPv4 from
    /// the source pool for an IPv6 peer), `local` the guest-visible local address.
    Inbound {
        peer: SocketAddrV4,
        local: SocketAddrV4,
    },
    Datagram(Datagram),
    /// An ICMP echo reply on an ICMP association: the message (ICMPv4, header first) from
    /// `datagram.addr`, with the hop limit (IPv6) or TTL (IPv4) it arrived with.
    EchoReply {
        datagram: Datagram,
        ttl: u8,
    },
    /// [`ToHost::Lend`]'s answer: connect to `target`; the route may be used again for
    /// `valid_ms` without asking. `sockets` sockets come attached.
    Lent {
        target: SocketAddrV6,
        valid_ms: u32,
        sockets: u8,
    },
    /// [`ToHost::Ended`]'s answer: the connection's pins and limits are given back, and the
    /// stream awaits the VM's next request.
    Released,
}

mod kind {
    pub const HELLO: u8 = 1;
    pub const CONNECT: u8 = 2;
    pub const LISTEN: u8 = 3;
    pub const UDP: u8 = 4;
    pub const DATAGRAM: u8 = 5;
    pub const UDP_CONNECT: u8 = 6;
    pub const ICMP: u8 = 7;
    pub const LIST_VMS: u8 = 8;
    pub const LEND: u8 = 9;
    pub const ENDED: u8 = 10;
    pub const CONNECTED: u8 = 16;
    pub const LISTENING: u8 = 17;
    pub const ASSOCIATED: u8 = 18;
    pub const FAILED: u8 = 19;
    pub const INBOUND: u8 = 20;
    pub const ECHO_REPLY: u8 = 21;
    pub const LENT: u8 = 22;
    pub const RELEASED: u8 = 23;
}

fn write_datagram(w: &mut Writer, d: &Datagram) {
    w.sockv4(d.addr);
    w.bytes(&d.payload);
}

fn read_datagram(r: &mut Reader<'_>) -> Result<Datagram, ProtoError> {
    Ok(Datagram {
        addr: r.sockv4()?,
        payload: r.bytes()?,
    })
}

impl Message for ToHost {
    const FAMILY: &'static str = "to-host";

    fn kind(&self) -> u8 {
        match self {
            Self::Hello(_) => kind::HELLO,
            Self::Connect(_) => kind::CONNECT,
            Self::Listen(_) => kind::LISTEN,
            Self::Udp(_) => kind::UDP,
            Self::Datagram(_) => kind::DATAGRAM,
            Self::UdpConnect(_) => kind::UDP_CONNECT,
            Self::Icmp(_) => kind::ICMP,
            Self::ListVms => kind::LIST_VMS,
            Self::Lend(_) => kind::LEND,
            Self::Ended => kind::ENDED,
        }
    }

    fn encode_body(&self, w: &mut Writer) {
        match self {
            Self::Hello(h) => {
                w.string(&h.vm);
                w.u32(h.cid);
                w.u32(h.port);
                if h.takes_sockets {
                    w.u8(hello_flags::TAKES_SOCKETS);
                }
            }
            Self::Connect(c) => {
                w.sockv4(c.dest);
                w.bool(c.pass_fd);
                w.bool(c.nonblocking);
            }
            Self::Listen(l) => {
                w.sockv4(l.addr);
                w.u32(l.backlog);
                w.bool(l.pass_fd);
                w.u32(l.vsock_port);
                if l.channel {
                    w.u8(listen_flags::CHANNEL);
                }
            }
            Self::Udp(u) => {
                w.sockv4(u.bind);
                if u.channel {
                    w.u8(udp_flags::CHANNEL);
                }
            }
            Self::Datagram(d) => write_datagram(w, d),
            Self::UdpConnect(u) => {
                w.sockv4(u.bind);
                w.sockv4(u.dest);
            }
            Self::Icmp(i) => {
                w.sockv4(i.bind);
                w.sockv4(i.dest);
            }
            Self::ListVms | Self::Ended => {}
            Self::Lend(l) => {
                w.sockv4(l.dest);
                w.u8(l.sockets);
            }
        }
    }

    fn decode_body(kind: u8, r: &mut Reader<'_>) -> Result<Self, ProtoError> {
        Ok(match kind {
            kind::HELLO => Self::Hello(VmHello {
                vm: r.string()?,
                cid: r.u32()?,
                port: r.u32()?,
                // A hello that takes no sockets (an older VMM's) ends after the port.
                takes_sockets: optional_flag(r, "hello flags", hello_flags::TAKES_SOCKETS)?,
            }),
            kind::CONNECT => Self::Connect(ConnectRequest {
                dest: r.sockv4()?,
                pass_fd: r.bool()?,
                nonblocking: r.bool()?,
            }),
            kind::LISTEN => Self::Listen(ListenRequest {
                addr: r.sockv4()?,
                backlog: r.u32()?,
                pass_fd: r.bool()?,
                vsock_port: r.u32()?,
                // An older request (no channel attached) ends after the vsock port.
                channel: optional_flag(r, "listen flags", listen_flags::CHANNEL)?,
            }),
            kind::UDP => Self::Udp(UdpRequest {
                bind: r.sockv4()?,
                // An older request (no channel attached) ends after the address.
                channel: optional_flag(r, "udp flags", udp_flags::CHANNEL)?,
            }),
            kind::DATAGRAM => Self::Datagram(read_datagram(r)?),
            kind::UDP_CONNECT => Self::UdpConnect(UdpConnectRequest {
                bind: r.sockv4()?,
                dest: r.sockv4()?,
            }),
            kind::ICMP => Self::Icmp(IcmpRequest {
                bind: r.sockv4()?,
                dest: r.sockv4()?,
            }),
            kind::LIST_VMS => Self::ListVms,
            kind::ENDED => Self::Ended,
            kind::LEND => Self::Lend(LendRequest {
                dest: r.sockv4()?,
                sockets: match r.u8()? {
                    n if n <= MAX_LENT => n,
                    n => {
                        return Err(ProtoError::BadValue {
                            field: "sockets to lend",
                            value: u64::from(n),
                        })
                    }
                },
            }),
            other => {
                return Err(ProtoError::UnknownKind {
                    family: Self::FAMILY,
                    kind: other,
                })
            }
        })
    }
}

impl Message for ToGuest {
    const FAMILY: &'static str = "to-guest";

    fn kind(&self) -> u8 {
        match self {
            Self::Connected { .. } => kind::CONNECTED,
            Self::Listening { .. } => kind::LISTENING,
            Self::Associated { .. } => kind::ASSOCIATED,
            Self::Failed(_) => kind::FAILED,
            Self::Inbound { .. } => kind::INBOUND,
            Self::Datagram(_) => kind::DATAGRAM,
            Self::EchoReply { .. } => kind::ECHO_REPLY,
            Self::Lent { .. } => kind::LENT,
            Self::Released => kind::RELEASED,
        }
    }

    fn encode_body(&self, w: &mut Writer) {
        match self {
            Self::Connected {
                local,
                peer,
                fd_passed,
                in_progress,
            } => {
                w.sockv4(*local);
                w.sockv4(*peer);
                w.bool(*fd_passed);
                w.bool(*in_progress);
            }
            Self::Listening { local } | Self::Associated { local } => w.sockv4(*local),
            Self::Failed(errno) => w.u16(errno.0),
            Self::Inbound { peer, local } => {
                w.sockv4(*peer);
                w.sockv4(*local);
            }
            Self::Datagram(d) => write_datagram(w, d),
            Self::EchoReply { datagram, ttl } => {
                w.u8(*ttl);
                write_datagram(w, datagram);
            }
            Self::Lent {
                target,
                valid_ms,
                sockets,
            } => {
                w.ipv6(*target.ip());
                w.u16(target.port());
                w.u32(*valid_ms);
                w.u8(*sockets);
            }
            Self::Released => {}
        }
    }

    fn decode_body(kind: u8, r: &mut Reader<'_>) -> Result<Self, ProtoError> {
        Ok(match kind {
            kind::ECHO_REPLY => Self::EchoReply {
                ttl: r.u8()?,
                datagram: read_datagram(r)?,
            },
            kind::CONNECTED => Self::Connected {
                local: r.sockv4()?,
                peer: r.sockv4()?,
                fd_passed: r.bool()?,
                in_progress: r.bool()?,
            },
            kind::LISTENING => Self::Listening { local: r.sockv4()? },
            kind::ASSOCIATED => Self::Associated { local: r.sockv4()? },
            kind::FAILED => Self::Failed(Errno(r.u16()?)),
            kind::INBOUND => Self::Inbound {
                peer: r.sockv4()?,
                local: r.sockv4()?,
            },
            kind::DATAGRAM => Self::Datagram(read_datagram(r)?),
            kind::RELEASED => Self::Released,
            kind::LENT => Self::Lent {
                target: SocketAddrV6::new(r.ipv6()?, r.u16()?, 0, 0),
                valid_ms: r.u32()?,
                sockets: match r.u8()? {
                    n if n <= MAX_LENT => n,
                    n => {
                        return Err(ProtoError::BadValue {
                            field: "sockets lent",
                            value: u64::from(n),
                        })
                    }
                },
            },
            other => {
                return Err(ProtoError::UnknownKind {
                    family: Self::FAMILY,
                    kind: other,
                })
            }
        })
    }
}

/// One configured VM as host-server sees it (an entry of [`VmList`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmStatus {
    /// The `[vms.NAME]` name.
    pub name: String,
    /// The VM's own IPv6 address (its listeners and outbound traffic).
    pub address: Ipv6Addr,
    /// Its VMM's socket (hybrid vsock).
    pub socket: String,
    /// Whether a VMM accepted a connection on that socket just now.
    pub running: bool,
    /// The VMM's pid (SO_PEERCRED of that connection); 0 when not running or unknown.
    pub vmm_pid: u32,
    /// The guest's vsock CID from the VMM's latest hello; 0 before any.
    pub cid: u32,
    /// The VM's sockets now (host.sock streams that carry a connection, association or
    /// listener; not the idle ones its VMM keeps for its next connects), and its listeners.
    pub sockets: u32,
    pub listeners: u32,
}

/// host-server's answer to [`ToHost::ListVms`]: every configured VM, by name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VmList(pub Vec<VmStatus>);

/// A [`VmStatus`] takes at least this many bytes on the wire (empty strings).
const VM_STATUS_MIN_LEN: usize = 2 + 16 + 2 + 1 + 4 * 4;

impl Message for VmList {
    const FAMILY: &'static str = "vm-list";

    fn kind(&self) -> u8 {
        1
    }

    fn encode_body(&self, w: &mut Writer) {
        w.count(self.0.len());
        for v in &self.0 {
            w.string(&v.name);
            w.ipv6(v.address);
            w.string(&v.socket);
            w.bool(v.running);
            w.u32(v.vmm_pid);
            w.u32(v.cid);
            w.u32(v.sockets);
            w.u32(v.listeners);
        }
    }

    fn decode_body(kind: u8, r: &mut Reader<'_>) -> Result<Self, ProtoError> {
        if kind != 1 {
            return Err(ProtoError::UnknownKind {
                family: Self::FAMILY,
                kind,
            });
        }
        let n = r.count(VM_STATUS_MIN_LEN)?;
        let mut vms = Vec::with_capacity(n);
        for _ in 0..n {
            vms.push(VmStatus {
                name: r.string()?,
                address: r.ipv6()?,
                socket: r.string()?,
                running: r.bool()?,
                vmm_pid: r.u32()?,
                cid: r.u32()?,
                sockets: r.u32()?,
                listeners: r.u32()?,
            });
        }
        Ok(Self(vms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame;

    fn hello(takes_sockets: bool) -> ToHost {
        ToHost::Hello(VmHello {
            vm: "vm0".into(),
            cid: 3,
            port: 1024,
            takes_sockets,
        })
    }

    #[test]
    fn a_hello_round_trips_with_and_without_the_socket_flag() {
        for takes in [false, true] {
            let bytes = frame::to_vec(&hello(takes)).unwrap();
            assert_eq!(frame::decode_exact::<ToHost>(&bytes).unwrap(), hello(takes));
        }
        // Only a hello that takes sockets has the flags byte, as the body's last.
        let with = frame::to_vec(&hello(true)).unwrap();
        let without = frame::to_vec(&hello(false)).unwrap();
        assert_eq!(with.len(), without.len() + 1);
        assert_eq!(with.last(), Some(&1));
    }

    fn listen(channel: bool) -> ToHost {
        ToHost::Listen(ListenRequest {
            addr: "0.0.0.0:8080".parse().unwrap(),
            backlog: 511,
            pass_fd: true,
            vsock_port: 0,
            channel,
        })
    }

    /// A frame of `kind` with `body`, as an older sender writes it.
    fn older_frame(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&frame::MAGIC);
        bytes.push(frame::VERSION);
        bytes.push(kind);
        bytes.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes());
        bytes.extend_from_slice(body);
        bytes
    }

    /// `older` (a request without its optional flags byte) decodes as `plain` and is what
    /// `plain` encodes to; `flagged` is one byte longer, its flags byte 1 last; any other
    /// flags byte is refused as a bad `field`.
    fn check_optional_flag(older: &[u8], plain: &ToHost, flagged: &ToHost, field: &'static str) {
        assert_eq!(&frame::decode_exact::<ToHost>(older).unwrap(), plain);
        assert_eq!(frame::to_vec(plain).unwrap(), older);
        let with = frame::to_vec(flagged).unwrap();
        assert_eq!(&frame::decode_exact::<ToHost>(&with).unwrap(), flagged);
        assert_eq!(with.len(), older.len() + 1);
        assert_eq!(with.last(), Some(&1));
        for flags in [0u8, 2, 0x81, 0xff] {
            let mut other = older.to_vec();
            other[7] += 1;
            other.push(flags);
            assert_eq!(
                frame::decode_exact::<ToHost>(&other),
                Err(ProtoError::BadValue {
                    field,
                    value: u64::from(flags)
                })
            );
        }
    }

    /// A listen without a channel attached is the older request byte for byte; one with the
    /// channel has the flags byte last; any other flags byte is refused.
    #[test]
    fn a_listen_round_trips_and_an_older_one_decodes_as_before() {
        let mut w = Writer::new();
        w.sockv4("0.0.0.0:8080".parse().unwrap());
        w.u32(511);
        w.bool(true);
        w.u32(0);
        let older = older_frame(kind::LISTEN, &w.into_inner());
        check_optional_flag(&older, &listen(false), &listen(true), "listen flags");
    }

    /// A UDP request without a channel is the older request byte for byte; one with the channel
    /// has the flags byte last; any other flags byte is refused.
    #[test]
    fn a_udp_request_round_trips_and_an_older_one_decodes_as_before() {
        let udp = |channel| {
            ToHost::Udp(UdpRequest {
                bind: "0.0.0.0:5300".parse().unwrap(),
                channel,
            })
        };
        let mut w = Writer::new();
        w.sockv4("0.0.0.0:5300".parse().unwrap());
        let older = older_frame(kind::UDP, &w.into_inner());
        check_optional_flag(&older, &udp(false), &udp(true), "udp flags");
    }

    /// An older VMM's hello (no flags byte): read as one that takes no sockets, so host-server
    /// relays its connections.
    #[test]
    fn an_older_vmms_hello_takes_no_sockets() {
        let mut w = Writer::new();
        w.string("vm0");
        w.u32(3);
        w.u32(1024);
        let bytes = older_frame(kind::HELLO, &w.into_inner());
        // It is exactly what a hello that takes no sockets encodes to; any other flags byte
        // is refused (one encoding per hello: decoding and encoding again gives the same
        // bytes); a second byte after the flags is garbage.
        check_optional_flag(&bytes, &hello(false), &hello(true), "hello flags");
        let mut longer = bytes;
        longer[7] += 2;
        longer.extend_from_slice(&[1, 0]);
        assert!(matches!(
            frame::decode_exact::<ToHost>(&longer),
            Err(ProtoError::TrailingBytes { count: 1 })
        ));
    }
}
