//! One DNS request in, its reply out: the message-level rules around [`Resolver::resolve`],
//! shared by every front end (the UDP listeners and dns.sock through [`crate::frontend`], TCP
//! through [`crate::tcp`]).
//!
//! [`reply`] builds the reply's header, records and EDNS from a parsed request (NOTIMP for other
//! opcodes, BADVERS for EDNS versions above 0, FORMERR unless there is exactly one question).
//! [`answer_packet`] does the rest for raw packets as hickory-server would: FORMERR to a message
//! whose header parses but whose body does not, nothing for anything shorter than a header or
//! for a response, and UDP answers truncated to the EDNS size we put in the response (keeping
//! OPT, RFC 6891 §7: the minimal reply when the records that fit leave no room for it).

use hickory_proto::op::{Edns, Message, MessageType, Metadata, OpCode, Query, ResponseCode};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};

use crate::resolve::{Answer, Question, Resolver};
use crate::reuse::Reuse;

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
pub(crate) async fn answer_packet_reuse(
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
    let mut buf = encode(&m, limit)?;
    // Records that do not fit are left out and TC is set by the encoder; and when the last
    // record that fits leaves less than an OPT record's 11 bytes, the encoder leaves OPT out
    // too. RFC 6891 §7: a truncated response to a query with OPT carries OPT. Then the reply
    // is the minimal one the RFC names: header (TC), question, OPT. (The only additional
    // record a reply of ours carries is OPT, so ARCOUNT 0 means it was left out.)
    if m.edns.is_some() && buf.get(10..12) == Some(&[0, 0][..]) {
        buf = encode(&m.truncate(), limit)?;
    }
    Some((buf, reuse))
}

/// `m` encoded in at most `limit` bytes (records that do not fit left out, TC set).
fn encode(m: &Message, limit: u16) -> Option<Vec<u8>> {
    let mut buf = Vec::with_capacity(512);
    let mut enc = BinEncoder::new(&mut buf);
    enc.set_max_size(limit);
    m.emit(&mut enc).ok()?;
    Some(buf)
}
