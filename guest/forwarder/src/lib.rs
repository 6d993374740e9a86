//! What outsock-dns-forwarder reads from others, as plain functions (the binary, `main.rs`, does
//! the I/O): a query datagram from a guest program ([`Pending::query`]), a frame from host-server
//! ([`recv`]) and the reply datagram it carries ([`Pending::reply`]). The fuzz target
//! `guest_forwarder` (fuzz/, feature-free: these are public) drives them with arbitrary bytes;
//! [`tests`] replays its corpus on stable.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::io::{self, Read};
use std::net::{SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use shared_proto::frame::{frame_len, HEADER_LEN};
use shared_proto::outsource::Datagram;
use shared_proto::{decode_exact, ToGuest, ToHost};

/// Queries older than this are forgotten (the client has given up).
pub const QUERY_TTL: Duration = Duration::from_secs(15);
/// Queries remembered at most before the expired ones are dropped.
pub const MAX_PENDING: usize = 4096;
/// The DNS header: anything shorter is no query.
const DNS_HEADER: usize = 12;

/// Reads one frame from host-server.
///
/// # Errors
/// When the stream fails or ends, or the frame is malformed (the association is then closed).
pub fn recv<R: Read>(r: &mut R) -> io::Result<ToGuest> {
    let mut buf = vec![0u8; HEADER_LEN];
    r.read_exact(&mut buf)?;
    let total = frame_len(&buf)
        .map_err(|e| io::Error::other(e.to_string()))?
        .ok_or_else(|| io::Error::other("short frame header"))?;
    buf.resize(total, 0);
    let body = buf
        .get_mut(HEADER_LEN..)
        .ok_or_else(|| io::Error::other("frame shorter than its header"))?;
    r.read_exact(body)?;
    decode_exact(&buf).map_err(|e| io::Error::other(e.to_string()))
}

/// The queries sent upstream and not yet answered: DNS id → (client, when).
#[derive(Debug, Default)]
pub struct Pending(HashMap<u16, (SocketAddr, Instant)>);

impl Pending {
    /// Queries remembered.
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether none is remembered.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A query datagram `packet` from `client`: remembers who asked and returns the frame that
    /// carries it to `dns`; `None` for anything shorter than a DNS header.
    pub fn query(
        &mut self,
        packet: &[u8],
        client: SocketAddr,
        dns: SocketAddrV4,
        now: Instant,
    ) -> Option<ToHost> {
        let id = dns_id(packet.get(..DNS_HEADER)?)?;
        if self.0.len() >= MAX_PENDING {
            self.0
                .retain(|_, (_, t)| now.saturating_duration_since(*t) < QUERY_TTL);
        }
        self.0.insert(id, (client, now));
        Some(ToHost::Datagram(Datagram {
            addr: dns,
            payload: packet.to_vec(),
        }))
    }

    /// A frame from host-server: the reply and the client that asked, when it is a datagram
    /// answering a remembered query (which is then forgotten).
    pub fn reply(&mut self, msg: ToGuest) -> Option<(Vec<u8>, SocketAddr)> {
        let ToGuest::Datagram(d) = msg else {
            return None;
        };
        let (client, _) = self.0.remove(&dns_id(&d.payload)?)?;
        Some((d.payload, client))
    }
}

fn dns_id(packet: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([*packet.first()?, *packet.get(1)?]))
}

/// The fuzz target's body: `data` is a sequence of operations, each a tag byte and a
/// length-prefixed (u16, little endian) body: tag even, a guest program's query datagram;
/// tag odd, bytes from host-server, read frame by frame and answered as the UDP thread does.
/// Nothing may panic; every reply goes to a client that asked with that id.
pub fn fuzz_one(data: &[u8]) {
    let dns = SocketAddrV4::new(std::net::Ipv4Addr::new(10, 170, 160, 1), 53);
    let mut pending = Pending::default();
    let mut asked: HashMap<u16, SocketAddr> = HashMap::new();
    let now = Instant::now();
    let mut rest = data;
    let mut client_port = 40_000u16;
    while let [tag, l0, l1, tail @ ..] = rest {
        let len = usize::from(u16::from_le_bytes([*l0, *l1])).min(tail.len());
        let (body, next) = tail.split_at(len);
        rest = next;
        if tag % 2 == 0 {
            client_port = client_port.wrapping_add(1);
            let client = SocketAddr::from(([127, 0, 0, 1], client_port));
            if let Some(frame) = pending.query(body, client, dns, now) {
                assert!(matches!(&frame, ToHost::Datagram(d) if d.payload == body));
                asked.insert(dns_id(body).expect("a query has an id"), client);
            }
        } else {
            let mut r = body;
            while let Ok(msg) = recv(&mut r) {
                if let Some((payload, client)) = pending.reply(msg) {
                    let id = dns_id(&payload).expect("a reply has an id");
                    assert_eq!(asked.remove(&id), Some(client), "reply to the wrong client");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn frame(msg: &ToGuest) -> Vec<u8> {
        shared_proto::to_vec(msg).expect("encodes")
    }

    #[test]
    fn a_reply_goes_to_the_client_that_asked_once() {
        let mut p = Pending::default();
        let dns = SocketAddrV4::new([10, 170, 160, 1].into(), 53);
        let c: SocketAddr = "127.0.0.1:4000".parse().expect("addr");
        let q = [0xab, 0xcd, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1];
        assert!(p.query(&q[..11], c, dns, Instant::now()).is_none());
        assert!(p.query(&q, c, dns, Instant::now()).is_some());
        let reply = ToGuest::Datagram(Datagram {
            addr: dns,
            payload: q.to_vec(),
        });
        let bytes = frame(&reply);
        let msg = recv(&mut &bytes[..]).expect("a frame");
        assert_eq!(p.reply(msg.clone()), Some((q.to_vec(), c)));
        assert_eq!(p.reply(msg), None, "answered once");
        // Truncated and garbage frames are errors, never panics.
        assert!(recv(&mut &bytes[..bytes.len() - 1]).is_err());
        assert!(recv(&mut &b"GET / HTTP/1.0\r\n"[..]).is_err());
    }

    /// The fuzz target's corpus (fuzz/corpus/guest_forwarder) replayed on stable.
    #[test]
    fn fuzz_corpus_replays_without_panic() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/guest_forwarder");
        let mut n = 0;
        for f in std::fs::read_dir(&dir).expect("corpus directory") {
            fuzz_one(&std::fs::read(f.expect("entry").path()).expect("corpus file"));
            n += 1;
        }
        assert!(n >= 3, "only {n} inputs in {}", dir.display());
    }
}
