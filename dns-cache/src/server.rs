//! The DNS front ends: [`Frontend`] for raw DNS packets (the UDP listeners in [`crate::udp`]
//! and guest packets that host-server relays over dns.sock), and hickory-server's
//! `RequestHandler` for the TCP listeners.
//!
//! Both build the same reply from [`Resolver::resolve`]. hickory-server answers FORMERR to a
//! message whose header parses but whose body does not, drops anything shorter than a header,
//! and truncates UDP answers to the EDNS size we put in the response; [`answer_packet`] does
//! the same by itself. [`Frontend`] adds the reply cache ([`crate::replies`]) in front of it.
//!
//! UDP does not go through hickory-server: its UDP path spawns a task per query and hands each
//! reply to the socket's task through a channel, which in a profile of the cache-hit bench
//! cost more than answering itself. TCP carries few queries and stays on hickory-server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{
    Edns, Header, HeaderCounts, Message, MessageType, Metadata, OpCode, Query, ResponseCode,
};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use tokio::net::{TcpListener, UdpSocket};

use crate::packet::QueryView;
use crate::replies::{Key, ReplyCache};
use crate::resolve::{Answer, Question, Resolver, Reuse};

/// How long a TCP client may stay idle between queries.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// Why the DNS listeners could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A listening address could not be bound.
    #[error("cannot listen for DNS on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The reply to one DNS request, before encoding.
#[derive(Debug)]
pub struct Reply {
    /// Header fields.
    pub metadata: Metadata,
    /// Records.
    pub answer: Answer,
    /// OPT record, present when the request had one.
    pub edns: Option<Edns>,
}

/// Builds the reply for a request with the given header, questions and EDNS.
pub async fn reply(
    resolver: &Resolver,
    request: &Metadata,
    queries: &[Query],
    request_edns: Option<&Edns>,
    our_payload: u16,
) -> Reply {
    let mut metadata = Metadata::response_from_request(request);
    metadata.recursion_available = true;
    // RFC 6891 §6.2.3: the size a UDP answer may have is the requester's, but never more than
    // what we are willing to send, and never under 512.
    let edns = request_edns.map(|e| {
        let mut r = Edns::new();
        r.set_max_payload(e.max_payload().clamp(512, our_payload.max(512)));
        r.set_dnssec_ok(e.flags().dnssec_ok);
        r
    });
    let fail = |mut metadata: Metadata, rcode| {
        metadata.response_code = rcode;
        Reply {
            metadata,
            answer: Answer {
                rcode,
                answers: Vec::new(),
                authorities: Vec::new(),
                authentic_data: false,
                reuse: None,
            },
            edns: edns.clone(),
        }
    };
    if request.op_code != OpCode::Query {
        return fail(metadata, ResponseCode::NotImp);
    }
    if request_edns.is_some_and(|e| e.version() > 0) {
        return fail(metadata, ResponseCode::BADVERS);
    }
    let [query] = queries else {
        return fail(metadata, ResponseCode::FormErr);
    };
    let question = Question {
        name: query.name().clone(),
        qtype: query.query_type(),
        qclass: query.query_class(),
        dnssec_ok: request_edns.is_some_and(|e| e.flags().dnssec_ok),
        checking_disabled: request.checking_disabled,
    };
    let answer = resolver.resolve(&question).await;
    metadata.response_code = answer.rcode;
    metadata.authentic_data = answer.authentic_data;
    Reply {
        metadata,
        answer,
        edns,
    }
}

/// Answers one raw DNS packet. `tcp` lifts the UDP size limit. Returns `None` for input that
/// gets no answer at all: shorter than a header, or itself a response.
pub async fn answer_packet(
    resolver: &Resolver,
    packet: &[u8],
    tcp: bool,
    our_payload: u16,
) -> Option<Vec<u8>> {
    answer_packet_reuse(resolver, packet, tcp, our_payload)
        .await
        .map(|(reply, _)| reply)
}

/// [`answer_packet`], also saying how long the reply may be replayed.
async fn answer_packet_reuse(
    resolver: &Resolver,
    packet: &[u8],
    tcp: bool,
    our_payload: u16,
) -> Option<(Vec<u8>, Option<Reuse>)> {
    let id = u16::from_be_bytes([*packet.first()?, *packet.get(1)?]);
    if packet.len() < 12 {
        return None;
    }
    let Ok(request) = Message::from_vec(packet) else {
        // The body is malformed: FORMERR with the request's id, nothing else, unless the
        // packet claims to be a response (never answer those: reflection).
        if packet.get(2).is_some_and(|b| b & 0x80 != 0) {
            return None;
        }
        let mut m = Message::new(id, MessageType::Response, OpCode::Query);
        m.metadata.response_code = ResponseCode::FormErr;
        return m.to_vec().ok().map(|r| (r, None));
    };
    if request.metadata.message_type == MessageType::Response {
        return None;
    }
    let r = reply(
        resolver,
        &request.metadata,
        &request.queries,
        request.edns.as_ref(),
        our_payload,
    )
    .await;
    let limit = if tcp {
        u16::MAX
    } else {
        r.edns.as_ref().map_or(512, Edns::max_payload)
    };
    let reuse = r.answer.reuse;
    let mut m = Message::new(id, MessageType::Response, request.metadata.op_code);
    m.metadata = r.metadata;
    m.add_queries(request.queries);
    m.add_answers(r.answer.answers);
    m.add_authorities(r.answer.authorities);
    if let Some(e) = r.edns {
        m.set_edns(e);
    }
    let mut buf = Vec::with_capacity(512);
    let mut enc = BinEncoder::new(&mut buf);
    enc.set_max_size(limit);
    // Records that do not fit are left out and TC is set by the encoder.
    m.emit(&mut enc).ok()?;
    Some((buf, reuse))
}

/// Raw DNS packets in, replies out: the reply cache in front of [`answer_packet`].
#[derive(Debug)]
pub struct Frontend {
    resolver: Arc<Resolver>,
    replies: ReplyCache,
    payload: u16,
}

impl Frontend {
    /// A front end advertising `payload` as its EDNS UDP size, keeping at most `replies`
    /// encoded replies.
    pub fn new(resolver: Arc<Resolver>, payload: u16, replies: usize) -> Self {
        Self {
            resolver,
            replies: ReplyCache::new(replies),
            payload,
        }
    }

    /// The resolver behind it.
    pub fn resolver(&self) -> &Arc<Resolver> {
        &self.resolver
    }

    /// Writes the reply to `packet` into `out` if the reply cache holds one (the hot path: no
    /// await, no allocation once `out` has grown); `false` means "take [`Frontend::answer`]".
    pub fn replay(&self, packet: &[u8], tcp: bool, out: &mut Vec<u8>) -> bool {
        let Some(q) = QueryView::parse(packet) else {
            return false;
        };
        let key = Key::of(&q, tcp, self.payload);
        let now = self.resolver.mappings().now();
        let Some(reuse) = self.replies.replay(&q, &key, now, out) else {
            return false;
        };
        let rcode = ResponseCode::from_low(out.get(3).map_or(0, |b| b & 0x0f));
        self.resolver
            .metrics()
            .replayed(q.qtype.into(), rcode, &reuse);
        true
    }

    /// Answers `packet` in full (see [`answer_packet`]) and keeps a replayable reply.
    pub async fn answer(&self, packet: &[u8], tcp: bool) -> Option<Vec<u8>> {
        let (reply, reuse) = answer_packet_reuse(&self.resolver, packet, tcp, self.payload).await?;
        if let (Some(reuse), Some(q)) = (reuse, QueryView::parse(packet)) {
            let key = Key::of(&q, tcp, self.payload);
            let now = self.resolver.mappings().now();
            self.replies.insert(&q, &key, &reply, reuse, now);
        }
        Some(reply)
    }

    /// Empties the answer cache and the reply cache; returns how many answers the former held.
    pub fn clear_caches(&self) -> usize {
        self.replies.clear();
        self.resolver.clear_cache()
    }
}

/// hickory-server's request handler over the resolver.
#[derive(Debug, Clone)]
pub struct Handler {
    resolver: Arc<Resolver>,
    payload: u16,
}

impl Handler {
    /// A handler that advertises `payload` as its EDNS UDP size.
    pub fn new(resolver: Arc<Resolver>, payload: u16) -> Self {
        Self { resolver, payload }
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let queries: Vec<Query> = request
            .queries
            .queries()
            .iter()
            .map(|q| q.original().clone())
            .collect();
        let r = reply(
            &self.resolver,
            &request.metadata,
            &queries,
            request.edns.as_ref(),
            self.payload,
        )
        .await;
        let mut builder = MessageResponseBuilder::new(&request.queries, None);
        if let Some(e) = r.edns.as_ref() {
            builder.edns(e);
        }
        let response = builder.build(
            r.metadata,
            r.answer.answers.iter(),
            r.answer.authorities.iter(),
            std::iter::empty(),
            std::iter::empty(),
        );
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(error) => {
                tracing::debug!(%error, "cannot send a DNS response");
                let mut metadata = Metadata::response_from_request(&request.metadata);
                metadata.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata,
                    counts: HeaderCounts::default(),
                })
            }
        }
    }
}

/// The running DNS listeners.
pub struct Listeners {
    tcp: hickory_server::Server<Handler>,
    udp: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Listeners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listeners")
            .field("udp", &self.udp.len())
            .finish_non_exhaustive()
    }
}

impl Listeners {
    /// Stops accepting queries; TCP connections get to finish the query in hand.
    pub async fn shutdown(mut self) {
        for t in &self.udp {
            t.abort();
        }
        if let Err(error) = self.tcp.shutdown_gracefully().await {
            tracing::warn!(%error, "DNS TCP listeners did not stop cleanly");
        }
    }
}

/// Binds UDP and TCP on every address and starts serving: UDP through [`crate::udp`], TCP
/// through hickory-server.
pub async fn start(
    addrs: &[SocketAddr],
    frontend: &Arc<Frontend>,
) -> Result<Listeners, ServerError> {
    let handler = Handler::new(Arc::clone(&frontend.resolver), frontend.payload);
    let mut tcp = hickory_server::Server::new(handler);
    let mut udp_tasks = Vec::new();
    for &addr in addrs {
        let udp = UdpSocket::bind(addr)
            .await
            .map_err(|source| ServerError::Bind { addr, source })?;
        // Port 0 in the config means "any": TCP then takes the port UDP got.
        let tcp_addr = udp.local_addr().unwrap_or(addr);
        let listener = TcpListener::bind(tcp_addr)
            .await
            .map_err(|source| ServerError::Bind { addr, source })?;
        tracing::info!(udp = %tcp_addr, tcp = %tcp_addr, "DNS listening");
        udp_tasks.push(tokio::spawn(crate::udp::serve(udp, Arc::clone(frontend))));
        // Requests on one connection are answered in turn, so a few queued responses suffice.
        tcp.register_listener(listener, TCP_IDLE, 32);
    }
    Ok(Listeners {
        tcp,
        udp: udp_tasks,
    })
}
