//! The look-up protocol between host-server (client) and dns-cache (server) on `dns.sock`.
//!
//! dns-cache owns the mapping database and is its only writer; host-server asks it to map a dummy
//! IPv4 address back to IPv6, to give an inbound IPv6 peer a dummy from the source pool, to pin a
//! mapping while a connection uses it, and to answer guest DNS packets. Every request carries an
//! id that its response repeats, so a client may pipeline requests on one stream.
//!
//! A guest's DNS packet travels as [`LookupOp::DnsQueryAs`], naming the [`Tenant`] (VM or
//! uid) it came from, so that dns-cache can charge new dummies to that tenant's quota and keep
//! look-ups fair across tenants; the older [`LookupOp::DnsQuery`] counts as one shared tenant.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::codec::{Reader, Writer};
use crate::error::ProtoError;
use crate::frame::Message;

/// Which way a mapping was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// A dummy from the destination pool, handed out in a synthesised A record.
    Synthesised,
    /// A dummy from the source pool, standing for an IPv6 peer that connected in.
    InboundPeer,
    /// A static mapping of the destination pool: an operator's fixed pair (`[static]`).
    Static,
}

impl Direction {
    fn to_wire(self) -> u8 {
        match self {
            Self::Synthesised => 1,
            Self::InboundPeer => 2,
            Self::Static => 3,
        }
    }

    fn from_wire(v: u8) -> Result<Self, ProtoError> {
        match v {
            1 => Ok(Self::Synthesised),
            2 => Ok(Self::InboundPeer),
            3 => Ok(Self::Static),
            other => Err(ProtoError::BadValue {
                field: "direction",
                value: u64::from(other),
            }),
        }
    }
}

/// One mapping as dns-cache reports it. Times are seconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappingInfo {
    pub dummy: Ipv4Addr,
    pub v6: Ipv6Addr,
    /// The names this address was synthesised for (empty for inbound peers).
    pub names: Vec<String>,
    pub direction: Direction,
    pub created: u64,
    pub last_used: u64,
    /// When the mapping may be recycled, unless it is used or pinned before then.
    pub expires: u64,
    pub pins: u32,
}

/// Selects mappings for [`LookupOp::List`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListQuery {
    pub direction: Option<Direction>,
    pub offset: u32,
    /// At most this many entries come back; dns-cache may return fewer to fit a frame.
    pub limit: u32,
}

/// One named counter or gauge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counter {
    pub name: String,
    pub value: u64,
}

/// On whose behalf host-server asks: the identity host-server established for the stream (a
/// VMM's hello, or SO_PEERCRED), never anything the guest said.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Tenant {
    /// The guests of one VM, by its configured name.
    Vm(String),
    /// The processes of one user on the host (process mode).
    Uid(u32),
}

impl std::fmt::Display for Tenant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Vm(name) => write!(f, "vm:{name}"),
            Self::Uid(uid) => write!(f, "uid:{uid}"),
        }
    }
}

fn write_tenant(w: &mut Writer, t: &Tenant) {
    match t {
        Tenant::Vm(name) => {
            w.u8(1);
            w.string(name);
        }
        Tenant::Uid(uid) => {
            w.u8(2);
            w.u32(*uid);
        }
    }
}

fn read_tenant(r: &mut Reader<'_>) -> Result<Tenant, ProtoError> {
    match r.u8()? {
        1 => Ok(Tenant::Vm(r.string()?)),
        2 => Ok(Tenant::Uid(r.u32()?)),
        other => Err(ProtoError::BadValue {
            field: "tenant",
            value: u64::from(other),
        }),
    }
}

/// What host-server asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupOp {
    /// Dummy IPv4 → IPv6 and names. Counts as a use of the mapping.
    Resolve {
        dummy: Ipv4Addr,
    },
    /// IPv6 peer → its dummy from the source pool, allocated if new.
    PeerDummy {
        v6: Ipv6Addr,
    },
    /// Keep the mapping alive while a connection uses it.
    Pin {
        dummy: Ipv4Addr,
    },
    Unpin {
        dummy: Ipv4Addr,
    },
    List(ListQuery),
    /// Drop cached upstream answers (mappings are kept).
    Flush,
    Stats,
    /// A raw DNS message from a guest; `tcp` says it came over TCP (no truncation to 512 bytes).
    DnsQuery {
        tcp: bool,
        packet: Vec<u8>,
    },
    /// [`LookupOp::DnsQuery`] on behalf of `tenant`: new dummies count against its quota, and
    /// its look-ups queue apart from other tenants'.
    DnsQueryAs {
        tenant: Tenant,
        tcp: bool,
        packet: Vec<u8>,
    },
    /// Sets the static mapping `dummy` = `v6` (with `names` for PTR), persisted before the
    /// answer ([`LookupReply::Resolved`]). Admins only.
    StaticSet {
        dummy: Ipv4Addr,
        v6: Ipv6Addr,
        names: Vec<String>,
    },
    /// Removes the static mapping of `dummy`; one in use by open connections (pinned) only
    /// with `force`. Answered [`LookupReply::Pinned`] with the pins it had. Admins only.
    StaticRemove {
        dummy: Ipv4Addr,
        force: bool,
    },
    /// The destination dummy of `v6` ([`LookupReply::Dummy`], or `NotFound`); with `allocate`,
    /// one is made if there is none, as a DNS answer would. Operators.
    Show {
        v6: Ipv6Addr,
        allocate: bool,
    },
}

/// A request: an id chosen by the client and an operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookupRequest {
    pub id: u32,
    pub op: LookupOp,
}

/// Why dns-cache could not do what was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupErrorCode {
    /// No free address in the pool: every mapping is live or pinned.
    PoolExhausted,
    /// The request made no sense (e.g. an address outside every pool).
    Invalid,
    /// dns-cache failed internally (e.g. the database); the message says how.
    Internal,
    /// The peer's SO_PEERCRED uid may not perform this operation (dns-cache's `lookup_uids`,
    /// `operator_uids`, `admin_uids`); the message names the operation and the setting.
    Forbidden,
    /// The tenant has too many look-ups queued on this connection; try again later.
    Busy,
}

impl LookupErrorCode {
    fn to_wire(self) -> u8 {
        match self {
            Self::PoolExhausted => 1,
            Self::Invalid => 2,
            Self::Internal => 3,
            Self::Forbidden => 4,
            Self::Busy => 5,
        }
    }

    fn from_wire(v: u8) -> Result<Self, ProtoError> {
        match v {
            1 => Ok(Self::PoolExhausted),
            2 => Ok(Self::Invalid),
            3 => Ok(Self::Internal),
            4 => Ok(Self::Forbidden),
            5 => Ok(Self::Busy),
            other => Err(ProtoError::BadValue {
                field: "error code",
                value: u64::from(other),
            }),
        }
    }
}

/// What dns-cache answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupReply {
    /// For `Resolve`.
    Resolved(MappingInfo),
    /// For `Resolve`, `Pin`, `Unpin`: no live mapping has that address.
    NotFound,
    /// For `PeerDummy`.
    Dummy {
        dummy: Ipv4Addr,
    },
    /// For `Pin` and `Unpin`: the pin count afterwards.
    Pinned {
        pins: u32,
    },
    /// For `List`: one page, and how many matched in all.
    Mappings {
        total: u32,
        entries: Vec<MappingInfo>,
    },
    /// For `Flush`: how many cached answers were dropped.
    Flushed {
        entries: u64,
    },
    Stats(Vec<Counter>),
    /// For `DnsQuery`: the raw DNS answer.
    DnsAnswer {
        packet: Vec<u8>,
    },
    Error {
        code: LookupErrorCode,
        message: String,
    },
}

/// A response: the request's id and the reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookupResponse {
    pub id: u32,
    pub reply: LookupReply,
}

mod kind {
    pub const RESOLVE: u8 = 1;
    pub const PEER_DUMMY: u8 = 2;
    pub const PIN: u8 = 3;
    pub const UNPIN: u8 = 4;
    pub const LIST: u8 = 5;
    pub const FLUSH: u8 = 6;
    pub const STATS: u8 = 7;
    pub const DNS_QUERY: u8 = 8;
    pub const DNS_QUERY_AS: u8 = 9;
    pub const STATIC_SET: u8 = 10;
    pub const STATIC_REMOVE: u8 = 11;
    pub const SHOW: u8 = 12;

    pub const RESOLVED: u8 = 32;
    pub const NOT_FOUND: u8 = 33;
    pub const DUMMY: u8 = 34;
    pub const PINNED: u8 = 35;
    pub const MAPPINGS: u8 = 36;
    pub const FLUSHED: u8 = 37;
    pub const STATS_REPLY: u8 = 38;
    pub const DNS_ANSWER: u8 = 39;
    pub const ERROR: u8 = 40;
}

/// Smallest encoding of a [`MappingInfo`], used to bound forged counts.
const MIN_MAPPING_LEN: usize = 4 + 16 + 4 + 1 + 8 * 3 + 4;

fn write_mapping(w: &mut Writer, m: &MappingInfo) {
    w.ipv4(m.dummy);
    w.ipv6(m.v6);
    w.count(m.names.len());
    for name in &m.names {
        w.string(name);
    }
    w.u8(m.direction.to_wire());
    w.u64(m.created);
    w.u64(m.last_used);
    w.u64(m.expires);
    w.u32(m.pins);
}

fn read_mapping(r: &mut Reader<'_>) -> Result<MappingInfo, ProtoError> {
    let dummy = r.ipv4()?;
    let v6 = r.ipv6()?;
    let n = r.count(2)?;
    let mut names = Vec::with_capacity(n);
    for _ in 0..n {
        names.push(r.string()?);
    }
    Ok(MappingInfo {
        dummy,
        v6,
        names,
        direction: Direction::from_wire(r.u8()?)?,
        created: r.u64()?,
        last_used: r.u64()?,
        expires: r.u64()?,
        pins: r.u32()?,
    })
}

fn write_direction_filter(w: &mut Writer, d: Option<Direction>) {
    w.u8(d.map_or(0, Direction::to_wire));
}

fn read_direction_filter(r: &mut Reader<'_>) -> Result<Option<Direction>, ProtoError> {
    match r.u8()? {
        0 => Ok(None),
        v => Direction::from_wire(v).map(Some),
    }
}

impl Message for LookupRequest {
    const FAMILY: &'static str = "lookup request";

    fn kind(&self) -> u8 {
        match self.op {
            LookupOp::Resolve { .. } => kind::RESOLVE,
            LookupOp::PeerDummy { .. } => kind::PEER_DUMMY,
            LookupOp::Pin { .. } => kind::PIN,
            LookupOp::Unpin { .. } => kind::UNPIN,
            LookupOp::List(_) => kind::LIST,
            LookupOp::Flush => kind::FLUSH,
            LookupOp::Stats => kind::STATS,
            LookupOp::DnsQuery { .. } => kind::DNS_QUERY,
            LookupOp::DnsQueryAs { .. } => kind::DNS_QUERY_AS,
            LookupOp::StaticSet { .. } => kind::STATIC_SET,
            LookupOp::StaticRemove { .. } => kind::STATIC_REMOVE,
            LookupOp::Show { .. } => kind::SHOW,
        }
    }

    fn encode_body(&self, w: &mut Writer) {
        w.u32(self.id);
        match &self.op {
            LookupOp::Resolve { dummy } | LookupOp::Pin { dummy } | LookupOp::Unpin { dummy } => {
                w.ipv4(*dummy);
            }
            LookupOp::PeerDummy { v6 } => w.ipv6(*v6),
            LookupOp::List(q) => {
                write_direction_filter(w, q.direction);
                w.u32(q.offset);
                w.u32(q.limit);
            }
            LookupOp::Flush | LookupOp::Stats => {}
            LookupOp::DnsQuery { tcp, packet } => {
                w.bool(*tcp);
                w.bytes(packet);
            }
            LookupOp::DnsQueryAs {
                tenant,
                tcp,
                packet,
            } => {
                write_tenant(w, tenant);
                w.bool(*tcp);
                w.bytes(packet);
            }
            LookupOp::StaticSet { dummy, v6, names } => {
                w.ipv4(*dummy);
                w.ipv6(*v6);
                w.count(names.len());
                for n in names {
                    w.string(n);
                }
            }
            LookupOp::StaticRemove { dummy, force } => {
                w.ipv4(*dummy);
                w.bool(*force);
            }
            LookupOp::Show { v6, allocate } => {
                w.ipv6(*v6);
                w.bool(*allocate);
            }
        }
    }

    fn decode_body(kind: u8, r: &mut Reader<'_>) -> Result<Self, ProtoError> {
        let id = r.u32()?;
        let op = match kind {
            kind::RESOLVE => LookupOp::Resolve { dummy: r.ipv4()? },
            kind::PEER_DUMMY => LookupOp::PeerDummy { v6: r.ipv6()? },
            kind::PIN => LookupOp::Pin { dummy: r.ipv4()? },
            kind::UNPIN => LookupOp::Unpin { dummy: r.ipv4()? },
            kind::LIST => LookupOp::List(ListQuery {
                direction: read_direction_filter(r)?,
                offset: r.u32()?,
                limit: r.u32()?,
            }),
            kind::FLUSH => LookupOp::Flush,
            kind::STATS => LookupOp::Stats,
            kind::DNS_QUERY => LookupOp::DnsQuery {
                tcp: r.bool()?,
                packet: r.bytes()?,
            },
            kind::DNS_QUERY_AS => LookupOp::DnsQueryAs {
                tenant: read_tenant(r)?,
                tcp: r.bool()?,
                packet: r.bytes()?,
            },
            kind::STATIC_SET => {
                let dummy = r.ipv4()?;
                let v6 = r.ipv6()?;
                let n = r.count(2)?;
                let mut names = Vec::with_capacity(n);
                for _ in 0..n {
                    names.push(r.string()?);
                }
                LookupOp::StaticSet { dummy, v6, names }
            }
            kind::STATIC_REMOVE => LookupOp::StaticRemove {
                dummy: r.ipv4()?,
                force: r.bool()?,
            },
            kind::SHOW => LookupOp::Show {
                v6: r.ipv6()?,
                allocate: r.bool()?,
            },
            other => {
                return Err(ProtoError::UnknownKind {
                    family: Self::FAMILY,
                    kind: other,
                })
            }
        };
        Ok(Self { id, op })
    }
}

impl Message for LookupResponse {
    const FAMILY: &'static str = "lookup response";

    fn kind(&self) -> u8 {
        match self.reply {
            LookupReply::Resolved(_) => kind::RESOLVED,
            LookupReply::NotFound => kind::NOT_FOUND,
            LookupReply::Dummy { .. } => kind::DUMMY,
            LookupReply::Pinned { .. } => kind::PINNED,
            LookupReply::Mappings { .. } => kind::MAPPINGS,
            LookupReply::Flushed { .. } => kind::FLUSHED,
            LookupReply::Stats(_) => kind::STATS_REPLY,
            LookupReply::DnsAnswer { .. } => kind::DNS_ANSWER,
            LookupReply::Error { .. } => kind::ERROR,
        }
    }

    fn encode_body(&self, w: &mut Writer) {
        w.u32(self.id);
        match &self.reply {
            LookupReply::Resolved(m) => write_mapping(w, m),
            LookupReply::NotFound => {}
            LookupReply::Dummy { dummy } => w.ipv4(*dummy),
            LookupReply::Pinned { pins } => w.u32(*pins),
            LookupReply::Mappings { total, entries } => {
                w.u32(*total);
                w.count(entries.len());
                for m in entries {
                    write_mapping(w, m);
                }
            }
            LookupReply::Flushed { entries } => w.u64(*entries),
            LookupReply::Stats(counters) => {
                w.count(counters.len());
                for c in counters {
                    w.string(&c.name);
                    w.u64(c.value);
                }
            }
            LookupReply::DnsAnswer { packet } => w.bytes(packet),
            LookupReply::Error { code, message } => {
                w.u8(code.to_wire());
                w.string(message);
            }
        }
    }

    fn decode_body(kind: u8, r: &mut Reader<'_>) -> Result<Self, ProtoError> {
        let id = r.u32()?;
        let reply = match kind {
            kind::RESOLVED => LookupReply::Resolved(read_mapping(r)?),
            kind::NOT_FOUND => LookupReply::NotFound,
            kind::DUMMY => LookupReply::Dummy { dummy: r.ipv4()? },
            kind::PINNED => LookupReply::Pinned { pins: r.u32()? },
            kind::MAPPINGS => {
                let total = r.u32()?;
                let n = r.count(MIN_MAPPING_LEN)?;
                let mut entries = Vec::with_capacity(n);
                for _ in 0..n {
                    entries.push(read_mapping(r)?);
                }
                LookupReply::Mappings { total, entries }
            }
            kind::FLUSHED => LookupReply::Flushed { entries: r.u64()? },
            kind::STATS_REPLY => {
                let n = r.count(2 + 8)?;
                let mut counters = Vec::with_capacity(n);
                for _ in 0..n {
                    counters.push(Counter {
                        name: r.string()?,
                        value: r.u64()?,
                    });
                }
                LookupReply::Stats(counters)
            }
            kind::DNS_ANSWER => LookupReply::DnsAnswer { packet: r.bytes()? },
            kind::ERROR => LookupReply::Error {
                code: LookupErrorCode::from_wire(r.u8()?)?,
                message: r.string()?,
            },
            other => {
                return Err(ProtoError::UnknownKind {
                    family: Self::FAMILY,
                    kind: other,
                })
            }
        };
        Ok(Self { id, reply })
    }
}
