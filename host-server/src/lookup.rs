//! The client side of dns.sock: one Unix stream to dns-cache, requests pipelined by id.
//!
//! A single task owns the stream; callers hand it requests through a bounded channel and wait on
//! a oneshot for the answer. When dns-cache is down the task answers at once with
//! [`LookupError::Unavailable`] and tries to connect again on the next request, so callers can
//! fall back (to the SQLite file, for dummy look-ups) without waiting for a timeout.
//!
//! Pins are leases of the dns.sock connection that took them: dns-cache gives them back when
//! the connection ends. So the task remembers which dummies it holds pinned, and on every new
//! connection pins them again before anything else — and, while some are held and dns-cache is
//! away, it keeps trying to reconnect every second instead of waiting for the next request.

use std::collections::HashMap;
use std::io;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use shared_proto::lookup::{LookupOp, LookupReply, LookupRequest, LookupResponse};
use shared_proto::reader::{Fill, FrameReader, ReadError};
use shared_proto::{frame, ProtoError};
use thiserror::Error;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

use crate::framed::TokioRead;

/// Requests waiting for the stream task; callers beyond this wait (backpressure).
const QUEUE: usize = 1024;
/// Answers outstanding on one stream; beyond this new requests are refused.
const MAX_IN_FLIGHT: usize = 4096;
/// How often to try to reach dns-cache again while pins wait to be re-established.
const REPIN_RETRY: Duration = Duration::from_secs(1);
/// The most one read of the stream takes in (answers that arrive together are buffered).
const READ_CHUNK: usize = 4096;

/// Remote pins this client holds, per dummy (normally 1: the mapping actor pins once per dummy).
type Held = HashMap<Ipv4Addr, u32>;

/// Who waits for the answer with a given id.
enum Waiter {
    /// A caller; `pin` is the dummy when the request was a Pin.
    Caller {
        reply: oneshot::Sender<Result<LookupReply, LookupError>>,
        pin: Option<Ipv4Addr>,
    },
    /// The task itself, re-pinning `0` on a new connection.
    Repin(Ipv4Addr),
}

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
    let mut held = Held::new();
    loop {
        // Wait for work: a request, or — while pins are owed — the next retry.
        let first = if held.is_empty() {
            match rx.recv().await {
                Some(p) => Some(p),
                None => return,
            }
        } else {
            tokio::select! {
                p = rx.recv() => match p {
                    Some(p) => Some(p),
                    None => return,
                },
                () = tokio::time::sleep(REPIN_RETRY) => None,
            }
        };
        match UnixStream::connect(&path).await {
            Ok(stream) => {
                tracing::debug!(path = %path.display(), repin = held.len(), "connected to dns-cache");
                if !serve(stream, first, &mut rx, &mut held).await {
                    return;
                }
            }
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "dns-cache unavailable");
                let kind = e.kind();
                // Everything already queued would meet the same closed door.
                for p in first
                    .into_iter()
                    .chain(std::iter::from_fn(|| rx.try_recv().ok()))
                {
                    note_unpin(&mut held, &p.op);
                    let _ = p
                        .reply
                        .send(Err(LookupError::Unavailable(io::Error::from(kind))));
                }
            }
        }
    }
}

/// An Unpin gives the remote pin back whatever its fate: if it cannot be delivered, the
/// connection that held the pin is gone and the pin with it.
fn note_unpin(held: &mut Held, op: &LookupOp) {
    if let LookupOp::Unpin { dummy } = op {
        if let Some(n) = held.get_mut(dummy) {
            *n -= 1;
            if *n == 0 {
                held.remove(dummy);
            }
        }
    }
}

/// Runs one connection until it fails (returns `true`: try again later) or every handle is
/// gone (`false`). Re-pins everything in `held` first.
async fn serve(
    stream: UnixStream,
    first: Option<Pending>,
    rx: &mut mpsc::Receiver<Pending>,
    held: &mut Held,
) -> bool {
    let (mut rd, mut wr) = stream.into_split();
    let mut pending: HashMap<u32, Waiter> = HashMap::new();
    let mut next_id: u32 = 0;
    let mut reader = FrameReader::new(Fill::Greedy { chunk: READ_CHUNK });
    let mut out = Vec::new();
    for (&dummy, &count) in held.iter() {
        for _ in 0..count {
            next_id = next_id.wrapping_add(1);
            out.clear();
            let req = LookupRequest {
                id: next_id,
                op: LookupOp::Pin { dummy },
            };
            if frame::encode(&req, &mut out).is_err() || wr.write_all(&out).await.is_err() {
                return true;
            }
            pending.insert(next_id, Waiter::Repin(dummy));
        }
    }
    let mut queued = first;
    let failure: LookupError = loop {
        if let Some(p) = queued.take() {
            note_unpin(held, &p.op);
            if pending.len() >= MAX_IN_FLIGHT {
                let _ = p.reply.send(Err(LookupError::Busy));
                continue;
            }
            next_id = next_id.wrapping_add(1);
            out.clear();
            let pin = match p.op {
                LookupOp::Pin { dummy } => Some(dummy),
                _ => None,
            };
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
            pending.insert(
                next_id,
                Waiter::Caller {
                    reply: p.reply,
                    pin,
                },
            );
            continue;
        }
        tokio::select! {
            p = rx.recv() => match p {
                Some(p) => queued = Some(p),
                None => return false,
            },
            r = read_frame(&mut rd, &mut reader) => match r {
                Ok(resp) => match pending.remove(&resp.id) {
                    Some(Waiter::Caller { reply, pin }) => {
                        if let (Some(dummy), LookupReply::Pinned { .. }) = (pin, &resp.reply) {
                            *held.entry(dummy).or_insert(0) += 1;
                        }
                        let _ = reply.send(Ok(resp.reply));
                    }
                    Some(Waiter::Repin(dummy)) if !matches!(resp.reply, LookupReply::Pinned { .. }) => {
                        // The mapping is gone (or refused): nothing left to hold.
                        tracing::warn!(%dummy, reply = ?resp.reply, "could not pin again after reconnecting");
                        held.remove(&dummy);
                    }
                    Some(Waiter::Repin(_)) | None => {}
                },
                Err(e) => break e,
            },
        }
    };
    tracing::warn!(error = %failure, in_flight = pending.len(), pinned = held.len(), "dns.sock connection lost");
    for (_, w) in pending.drain() {
        if let Waiter::Caller { reply, .. } = w {
            let _ = reply.send(Err(LookupError::Unavailable(io::Error::from(
                io::ErrorKind::ConnectionReset,
            ))));
        }
    }
    true
}

/// Reads the next response frame, keeping any extra bytes in `reader`. Cancel-safe: bytes read
/// are kept in `reader` across calls.
async fn read_frame(
    rd: &mut tokio::net::unix::OwnedReadHalf,
    reader: &mut FrameReader,
) -> Result<LookupResponse, LookupError> {
    reader.read(&mut TokioRead(rd)).await.map_err(|e| match e {
        ReadError::Proto(e) => LookupError::Protocol(e),
        ReadError::Io(e) => LookupError::Unavailable(e),
        ReadError::Closed | ReadError::ClosedMidFrame => {
            LookupError::Unavailable(io::Error::from(io::ErrorKind::UnexpectedEof))
        }
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use shared_proto::lookup::{Direction, MappingInfo};
    use std::net::{Ipv4Addr, Ipv6Addr};
    use tokio::io::AsyncReadExt;
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
                            LookupOp::DnsQuery { packet, .. }
                            | LookupOp::DnsQueryAs { packet, .. } => {
                                LookupReply::DnsAnswer { packet }
                            }
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

    /// Serves one dns.sock connection: records every request, answers Pin/Unpin with
    /// `Pinned`, and hangs up (as a dns-cache restart would) when it gets a Flush.
    async fn one_connection(listener: UnixListener, seen: mpsc::UnboundedSender<LookupOp>) {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        let mut buf = Vec::new();
        loop {
            while let Ok(Some((req, used))) = frame::decode::<LookupRequest>(&buf) {
                buf.drain(..used);
                let _ = seen.send(req.op.clone());
                let reply = match req.op {
                    LookupOp::Pin { .. } => LookupReply::Pinned { pins: 1 },
                    LookupOp::Unpin { .. } => LookupReply::Pinned { pins: 0 },
                    LookupOp::Flush => return,
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
    }

    /// Starts a fresh "dns-cache" at `path` (after the previous one went away).
    fn restart_at(path: &std::path::Path) -> mpsc::UnboundedReceiver<LookupOp> {
        let _ = std::fs::remove_file(path);
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(one_connection(UnixListener::bind(path).unwrap(), tx));
        rx
    }

    async fn next_op(
        rx: &mut mpsc::UnboundedReceiver<LookupOp>,
        within: Duration,
    ) -> Option<LookupOp> {
        tokio::time::timeout(within, rx.recv()).await.ok().flatten()
    }

    #[tokio::test]
    async fn pins_are_taken_again_on_a_new_connection_until_given_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dns.sock");
        let t = Duration::from_secs(5);
        let mut seen = restart_at(&path);
        let c = LookupClient::spawn(path.clone());
        assert_eq!(
            c.call(LookupOp::Pin { dummy: D }, t).await.unwrap(),
            LookupReply::Pinned { pins: 1 }
        );
        assert_eq!(
            next_op(&mut seen, t).await,
            Some(LookupOp::Pin { dummy: D })
        );
        // dns-cache goes away (its pins with it) and comes back: the client re-pins by itself,
        // with no caller asking for anything.
        assert!(c.call(LookupOp::Flush, t).await.is_err());
        let mut seen = restart_at(&path);
        assert_eq!(
            next_op(&mut seen, t).await,
            Some(LookupOp::Pin { dummy: D })
        );
        // Once given back, a later reconnection pins nothing.
        assert_eq!(
            c.call(LookupOp::Unpin { dummy: D }, t).await.unwrap(),
            LookupReply::Pinned { pins: 0 }
        );
        assert_eq!(
            next_op(&mut seen, t).await,
            Some(LookupOp::Unpin { dummy: D })
        );
        assert!(c.call(LookupOp::Flush, t).await.is_err());
        let mut seen = restart_at(&path);
        assert_eq!(
            next_op(&mut seen, Duration::from_millis(2500)).await,
            None,
            "nothing to re-pin"
        );
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
            // A header whose magic is not "OS".
            let not_a_frame = [b'X'; shared_proto::frame::HEADER_LEN + 4];
            s.write_all(&not_a_frame).await.unwrap();
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
