//! The client side of dns.sock: one Unix stream to dns-cache, requests pipelined by id.
//!
//! A single task owns the stream; callers hand it requests through a bounded channel and wait on
//! a oneshot for the answer. When dns-cache is down the task answers at once with
//! [`LookupError::Unavailable`] and tries to connect again on the next request, so callers can
//! fall back (to the SQLite file, for dummy look-ups) without waiting for a timeout.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use shared_proto::lookup::{LookupOp, LookupReply, LookupRequest, LookupResponse};
use shared_proto::{frame, ProtoError};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

/// Requests waiting for the stream task; callers beyond this wait (backpressure).
const QUEUE: usize = 1024;
/// Answers outstanding on one stream; beyond this new requests are refused.
const MAX_IN_FLIGHT: usize = 4096;

/// Why a look-up got no answer.
#[derive(Debug, Error)]
pub enum LookupError {
    #[error("dns-cache is unavailable")]
    Unavailable(#[source] io::Error),
    #[error("dns-cache did not answer within {0:?}")]
    Timeout(Duration),
    #[error("dns-cache sent a malformed frame")]
    Protocol(#[source] ProtoError),
    #[error("too many look-ups in flight")]
    Busy,
    #[error("the look-up client has stopped")]
    Stopped,
}

struct Pending {
    op: LookupOp,
    reply: oneshot::Sender<Result<LookupReply, LookupError>>,
}

/// A cheap, cloneable handle to the dns.sock client task.
#[derive(Debug, Clone)]
pub struct LookupClient {
    tx: mpsc::Sender<Pending>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").field("op", &self.op).finish()
    }
}

impl LookupClient {
    /// Starts the client task on the current tokio runtime.
    #[must_use]
    pub fn spawn(path: PathBuf) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(path, rx));
        Self { tx }
    }

    /// Sends `op` and waits up to `limit` for its reply.
    ///
    /// # Errors
    /// [`LookupError`] when dns-cache is down, slow, or speaks garbage.
    pub async fn call(&self, op: LookupOp, limit: Duration) -> Result<LookupReply, LookupError> {
        let (reply, rx) = oneshot::channel();
        let sent = tokio::time::timeout(limit, self.tx.send(Pending { op, reply })).await;
        match sent {
            Err(_) => return Err(LookupError::Timeout(limit)),
            Ok(Err(_)) => return Err(LookupError::Stopped),
            Ok(Ok(())) => {}
        }
        match tokio::time::timeout(limit, rx).await {
            Err(_) => Err(LookupError::Timeout(limit)),
            Ok(Err(_)) => Err(LookupError::Stopped),
            Ok(Ok(r)) => r,
        }
    }
}

async fn run(path: PathBuf, mut rx: mpsc::Receiver<Pending>) {
    while let Some(first) = rx.recv().await {
        match UnixStream::connect(&path).await {
            Ok(stream) => {
                tracing::debug!(path = %path.display(), "connected to dns-cache");
                serve(stream, first, &mut rx).await;
            }
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "dns-cache unavailable");
                let kind = e.kind();
                let _ = first.reply.send(Err(LookupError::Unavailable(e)));
                // Everything already queued would meet the same closed door.
                while let Ok(p) = rx.try_recv() {
                    let _ = p
                        .reply
                        .send(Err(LookupError::Unavailable(io::Error::from(kind))));
                }
            }
        }
    }
}

/// Runs one connection until it fails or every handle is gone.
async fn serve(stream: UnixStream, first: Pending, rx: &mut mpsc::Receiver<Pending>) {
    let (mut rd, mut wr) = stream.into_split();
    let mut pending: HashMap<u32, oneshot::Sender<Result<LookupReply, LookupError>>> =
        HashMap::new();
    let mut next_id: u32 = 0;
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut out = Vec::new();
    let mut queued = Some(first);
    let failure: LookupError = loop {
        if let Some(p) = queued.take() {
            if pending.len() >= MAX_IN_FLIGHT {
                let _ = p.reply.send(Err(LookupError::Busy));
                continue;
            }
            next_id = next_id.wrapping_add(1);
            out.clear();
            let req = LookupRequest {
                id: next_id,
                op: p.op,
            };
            if let Err(e) = frame::encode(&req, &mut out) {
                let _ = p.reply.send(Err(LookupError::Protocol(e)));
                continue;
            }
            if let Err(e) = wr.write_all(&out).await {
                let _ = p.reply.send(Err(LookupError::Unavailable(e)));
                break LookupError::Unavailable(io::Error::from(io::ErrorKind::BrokenPipe));
            }
            pending.insert(next_id, p.reply);
            continue;
        }
        tokio::select! {
            p = rx.recv() => match p {
                Some(p) => queued = Some(p),
                None => return,
            },
            r = read_frame(&mut rd, &mut buf) => match r {
                Ok(resp) => {
                    if let Some(tx) = pending.remove(&resp.id) {
                        let _ = tx.send(Ok(resp.reply));
                    }
                }
                Err(e) => break e,
            },
        }
    };
    tracing::warn!(error = %failure, in_flight = pending.len(), "dns.sock connection lost");
    for (_, tx) in pending.drain() {
        let _ = tx.send(Err(LookupError::Unavailable(io::Error::from(
            io::ErrorKind::ConnectionReset,
        ))));
    }
}

/// Reads the next response frame, keeping any extra bytes in `buf`. Cancel-safe: bytes read are
/// kept in `buf` across calls.
async fn read_frame(
    rd: &mut tokio::net::unix::OwnedReadHalf,
    buf: &mut Vec<u8>,
) -> Result<LookupResponse, LookupError> {
    loop {
        match frame::decode::<LookupResponse>(buf) {
            Ok(Some((msg, used))) => {
                buf.drain(..used);
                return Ok(msg);
            }
            Ok(None) => {}
            Err(e) => return Err(LookupError::Protocol(e)),
        }
        let mut chunk = [0u8; 4096];
        let n = rd
            .read(&mut chunk)
            .await
            .map_err(LookupError::Unavailable)?;
        if n == 0 {
            return Err(LookupError::Unavailable(io::Error::from(
                io::ErrorKind::UnexpectedEof,
            )));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use shared_proto::lookup::{Direction, MappingInfo};
    use std::net::{Ipv4Addr, Ipv6Addr};
    use tokio::net::UnixListener;

    /// A tiny dns-cache stand-in: answers Resolve from `table`, PeerDummy with 172.21.112.x,
    /// Pin/Unpin with counts; answers in reverse order of each batch to prove pipelining.
    pub(crate) async fn fake_dns_cache(listener: UnixListener, table: Vec<(Ipv4Addr, Ipv6Addr)>) {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let table = table.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut pins = 0u32;
                loop {
                    let mut batch = Vec::new();
                    while let Ok(Some((req, used))) = frame::decode::<LookupRequest>(&buf) {
                        buf.drain(..used);
                        batch.push(req);
                    }
                    for req in batch.into_iter().rev() {
                        let reply = match req.op {
                            LookupOp::Resolve { dummy } => {
                                match table.iter().find(|(d, _)| *d == dummy) {
                                    Some((d, v6)) => LookupReply::Resolved(MappingInfo {
                                        dummy: *d,
                                        v6: *v6,
                                        names: vec![],
                                        direction: Direction::Synthesised,
                                        created: 0,
                                        last_used: 0,
                                        expires: 0,
                                        pins,
                                    }),
                                    None => LookupReply::NotFound,
                                }
                            }
                            LookupOp::PeerDummy { v6 } => LookupReply::Dummy {
                                dummy: Ipv4Addr::new(172, 21, 112, v6.octets()[15]),
                            },
                            LookupOp::Pin { .. } => {
                                pins += 1;
                                LookupReply::Pinned { pins }
                            }
                            LookupOp::Unpin { .. } => {
                                pins = pins.saturating_sub(1);
                                LookupReply::Pinned { pins }
                            }
                            LookupOp::DnsQuery { packet, .. } => LookupReply::DnsAnswer { packet },
                            _ => LookupReply::NotFound,
                        };
                        let out = frame::to_vec(&LookupResponse { id: req.id, reply }).unwrap();
                        if s.write_all(&out).await.is_err() {
                            return;
                        }
                    }
                    let mut chunk = [0u8; 4096];
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    }

    const D: Ipv4Addr = Ipv4Addr::new(10, 170, 160, 5);
    const V: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x64, 0, 0, 0, 0, 0, 0xe);

    #[tokio::test]
    async fn pipelined_lookups_match_their_answers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dns.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(fake_dns_cache(listener, vec![(D, V)]));
        let c = LookupClient::spawn(path);
        let t = Duration::from_secs(5);
        let mut tasks = Vec::new();
        for i in 0..50u8 {
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                if i % 2 == 0 {
                    c.call(LookupOp::Resolve { dummy: D }, t).await
                } else {
                    c.call(
                        LookupOp::PeerDummy {
                            v6: Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(i)),
                        },
                        t,
                    )
                    .await
                }
            }));
        }
        for (i, task) in tasks.into_iter().enumerate() {
            let r = task.await.unwrap().unwrap();
            if i % 2 == 0 {
                assert!(matches!(r, LookupReply::Resolved(m) if m.v6 == V));
            } else {
                let want = Ipv4Addr::new(172, 21, 112, u8::try_from(i).unwrap());
                assert_eq!(r, LookupReply::Dummy { dummy: want });
            }
        }
        let r = c
            .call(
                LookupOp::Resolve {
                    dummy: Ipv4Addr::new(10, 170, 160, 99),
                },
                t,
            )
            .await
            .unwrap();
        assert_eq!(r, LookupReply::NotFound);
    }

    #[tokio::test]
    async fn down_then_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dns.sock");
        let c = LookupClient::spawn(path.clone());
        let t = Duration::from_secs(5);
        let e = c.call(LookupOp::Resolve { dummy: D }, t).await.unwrap_err();
        assert!(matches!(e, LookupError::Unavailable(_)), "{e}");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(fake_dns_cache(listener, vec![(D, V)]));
        let r = c.call(LookupOp::Resolve { dummy: D }, t).await.unwrap();
        assert!(matches!(r, LookupReply::Resolved(_)));
    }

    #[tokio::test]
    async fn garbage_from_the_server_is_a_protocol_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dns.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut b = [0u8; 64];
            let _ = s.read(&mut b).await;
            s.write_all(b"XXXXXXXXXXXX").await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let c = LookupClient::spawn(path);
        let e = c
            .call(LookupOp::Resolve { dummy: D }, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(e, LookupError::Unavailable(_)), "{e}");
    }
}
