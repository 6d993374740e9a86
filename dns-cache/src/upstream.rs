//! A small DNS client for the upstream resolvers: UDP first, TCP when the answer is truncated,
//! the next server when one times out or fails.
//!
//! Each UDP query uses a fresh connected socket on a kernel-chosen port with a random ID, and an
//! answer counts only if its ID, QR bit and question match, so a spoofed or stray datagram is
//! ignored rather than trusted.

use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// The EDNS payload size we advertise upstream (the DNS flag day 2020 value).
const UPSTREAM_PAYLOAD: u16 = 1232;

/// Why an upstream query failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No upstream server is configured.
    #[error("no upstream server is configured")]
    NoServers,
    /// The query could not be encoded.
    #[error("cannot encode the upstream query")]
    Encode(#[source] hickory_proto::ProtoError),
    /// Every server timed out or failed; the last failure is kept.
    #[error("upstream {server} failed: {reason}")]
    Failed {
        /// The last server tried.
        server: SocketAddr,
        /// What happened there.
        reason: String,
    },
}

/// What to ask upstream.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UpstreamQuery {
    /// Name to look up.
    pub name: Name,
    /// Record type.
    pub qtype: RecordType,
    /// Class.
    pub qclass: DNSClass,
    /// Set the DO bit (the client asked for DNSSEC records).
    pub dnssec_ok: bool,
    /// Set the CD bit (the client validates itself).
    pub checking_disabled: bool,
}

/// Something that answers DNS queries; the real client or a fake in tests.
#[async_trait::async_trait]
pub trait Upstream: Send + Sync + fmt::Debug {
    /// Sends the query and returns the upstream's response message.
    async fn query(&self, q: &UpstreamQuery) -> Result<Message, UpstreamError>;
}

/// The client for the configured upstream resolvers.
#[derive(Debug, Clone)]
pub struct UdpTcpUpstream {
    servers: Vec<SocketAddr>,
    timeout: Duration,
}

impl UdpTcpUpstream {
    /// A client for `servers`, tried in order, each with `timeout`.
    pub fn new(servers: Vec<SocketAddr>, timeout: Duration) -> Self {
        Self { servers, timeout }
    }

    async fn one(&self, server: SocketAddr, q: &UpstreamQuery) -> Result<Message, String> {
        let id: u16 = rand::random();
        let bytes = encode_query(id, q).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + self.timeout;
        let udp = tokio::time::timeout_at(deadline.into(), udp_exchange(server, &bytes, id, q))
            .await
            .map_err(|_| format!("no answer within {:?}", self.timeout))?
            .map_err(|e| e.to_string())?;
        if !udp.metadata.truncation {
            return Ok(udp);
        }
        // RFC 7766: a truncated UDP answer is retried over TCP.
        let tcp_deadline = Instant::now() + self.timeout;
        tokio::time::timeout_at(tcp_deadline.into(), tcp_exchange(server, &bytes, id, q))
            .await
            .map_err(|_| format!("no TCP answer within {:?}", self.timeout))?
            .map_err(|e| e.to_string())
    }
}

#[async_trait::async_trait]
impl Upstream for UdpTcpUpstream {
    async fn query(&self, q: &UpstreamQuery) -> Result<Message, UpstreamError> {
        let mut last: Option<UpstreamError> = None;
        let mut last_answer: Option<Message> = None;
        for &server in &self.servers {
            match self.one(server, q).await {
                // A server that cannot answer (SERVFAIL, REFUSED) is not the last word while
                // others remain.
                Ok(m)
                    if matches!(
                        m.metadata.response_code,
                        ResponseCode::ServFail | ResponseCode::Refused
                    ) =>
                {
                    last_answer = Some(m);
                }
                Ok(m) => return Ok(m),
                Err(reason) => {
                    tracing::debug!(%server, %reason, name = %q.name, "upstream query failed");
                    last = Some(UpstreamError::Failed { server, reason });
                }
            }
        }
        match (last_answer, last) {
            (Some(m), _) => Ok(m),
            (None, Some(e)) => Err(e),
            (None, None) => Err(UpstreamError::NoServers),
        }
    }
}

fn encode_query(id: u16, q: &UpstreamQuery) -> Result<Vec<u8>, UpstreamError> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.metadata.checking_disabled = q.checking_disabled;
    let mut query = Query::query(q.name.clone(), q.qtype);
    query.set_query_class(q.qclass);
    m.add_query(query);
    let mut edns = Edns::new();
    edns.set_max_payload(UPSTREAM_PAYLOAD);
    edns.set_dnssec_ok(q.dnssec_ok);
    m.set_edns(edns);
    m.to_vec().map_err(UpstreamError::Encode)
}

/// Whether `m` answers query `id` for `q`: a response to a standard query. Any other opcode's
/// message is someone else's (an UPDATE's records are read by UPDATE's rules, with empty RDATA
/// allowed, and would make a reply to the guest that does not parse; found by the
/// `dns_resolve` fuzz target).
pub(crate) fn matches(m: &Message, id: u16, q: &UpstreamQuery) -> bool {
    m.metadata.id == id
        && m.metadata.message_type == MessageType::Response
        && m.metadata.op_code == OpCode::Query
        && m.queries.len() == 1
        && m.queries[0].query_type() == q.qtype
        && m.queries[0].query_class() == q.qclass
        && m.queries[0].name().eq_ignore_root(&q.name)
}

async fn udp_exchange(
    server: SocketAddr,
    bytes: &[u8],
    id: u16,
    q: &UpstreamQuery,
) -> std::io::Result<Message> {
    let local: SocketAddr = if server.is_ipv6() {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(local).await?;
    sock.connect(server).await?;
    sock.send(bytes).await?;
    let mut buf = vec![0u8; 65_535];
    loop {
        let n = sock.recv(&mut buf).await?;
        let Some(data) = buf.get(..n) else { continue };
        // Anything that does not parse or does not match is someone else's datagram.
        if let Ok(m) = Message::from_vec(data) {
            if matches(&m, id, q) {
                return Ok(m);
            }
        }
    }
}

async fn tcp_exchange(
    server: SocketAddr,
    bytes: &[u8],
    id: u16,
    q: &UpstreamQuery,
) -> std::io::Result<Message> {
    let mut stream = TcpStream::connect(server).await?;
    let len = u16::try_from(bytes.len())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "query too long"))?;
    let mut framed = Vec::with_capacity(bytes.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(bytes);
    stream.write_all(&framed).await?;
    loop {
        let len = stream.read_u16().await?;
        let mut buf = vec![0u8; usize::from(len)];
        stream.read_exact(&mut buf).await?;
        if let Ok(m) = Message::from_vec(&buf) {
            if matches(&m, id, q) {
                return Ok(m);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::rdata::AAAA;
    use hickory_proto::rr::{RData, Record};

    fn q() -> UpstreamQuery {
        UpstreamQuery {
            name: Name::from_ascii("v6only.outsock.test.").unwrap(),
            qtype: RecordType::AAAA,
            qclass: DNSClass::IN,
            dnssec_ok: false,
            checking_disabled: false,
        }
    }

    /// Only a response to a standard query with our id and question matches: an UPDATE (or
    /// any other opcode) carrying the same id and question is someone else's.
    #[test]
    fn only_a_query_response_with_our_id_and_question_matches() {
        let mut m = Message::new(7, MessageType::Response, OpCode::Query);
        m.add_query(Query::query(q().name, RecordType::AAAA));
        assert!(matches(&m, 7, &q()));
        assert!(!matches(&m, 8, &q()));
        for op in [OpCode::Update, OpCode::Notify, OpCode::Status] {
            m.metadata.op_code = op;
            assert!(!matches(&m, 7, &q()), "{op:?}");
        }
        m.metadata.op_code = OpCode::Query;
        m.metadata.message_type = MessageType::Query;
        assert!(!matches(&m, 7, &q()));
    }

    /// A one-shot UDP server on loopback that answers after sending a stray datagram first.
    async fn fake_server(truncate_udp: bool) -> SocketAddr {
        let sock = UdpSocket::bind("[::1]:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        let tcp = tokio::net::TcpListener::bind(addr).await.unwrap();
        let answer = |query: &Message, tc: bool| {
            let mut m = Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
            m.add_query(query.queries[0].clone());
            m.metadata.truncation = tc;
            if !tc {
                m.add_answer(Record::from_rdata(
                    query.queries[0].name().clone(),
                    60,
                    RData::AAAA(AAAA("2001:db8::1".parse().unwrap())),
                ));
            }
            m.to_vec().unwrap()
        };
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let (n, peer) = sock.recv_from(&mut buf).await.unwrap();
            let query = Message::from_vec(&buf[..n]).unwrap();
            sock.send_to(b"garbage", peer).await.unwrap();
            let mut wrong = query.clone();
            wrong.metadata.id = query.metadata.id.wrapping_add(1);
            wrong.metadata.message_type = MessageType::Response;
            sock.send_to(&wrong.to_vec().unwrap(), peer).await.unwrap();
            sock.send_to(&answer(&query, truncate_udp), peer)
                .await
                .unwrap();
            if truncate_udp {
                let (mut s, _) = tcp.accept().await.unwrap();
                let len = s.read_u16().await.unwrap();
                let mut b = vec![0u8; usize::from(len)];
                s.read_exact(&mut b).await.unwrap();
                let query = Message::from_vec(&b).unwrap();
                let a = answer(&query, false);
                s.write_all(&u16::try_from(a.len()).unwrap().to_be_bytes())
                    .await
                    .unwrap();
                s.write_all(&a).await.unwrap();
            }
        });
        addr
    }

    #[tokio::test]
    async fn ignores_strays_and_retries_truncated_answers_over_tcp() {
        for truncate in [false, true] {
            let addr = fake_server(truncate).await;
            let up = UdpTcpUpstream::new(vec![addr], Duration::from_secs(2));
            let m = up.query(&q()).await.unwrap();
            assert!(!m.metadata.truncation);
            assert_eq!(m.answers.len(), 1, "truncate={truncate}");
        }
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        // Bound but never read: the query goes unanswered.
        let silent = UdpSocket::bind("[::1]:0").await.unwrap();
        let up = UdpTcpUpstream::new(
            vec![silent.local_addr().unwrap()],
            Duration::from_millis(100),
        );
        assert!(matches!(
            up.query(&q()).await,
            Err(UpstreamError::Failed { .. })
        ));
    }
}
