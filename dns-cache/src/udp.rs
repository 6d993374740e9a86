//! The UDP listener: one task per socket reads datagrams in batches and answers replayable ones
//! on the spot; the others (answer-cache misses, new mappings waiting for their commit) get a
//! task of their own, at most [`MAX_WAITING`] at a time.
//!
//! On the hot path nothing is spawned, nothing is sent through a channel and nothing is
//! allocated: one `recvmmsg` for up to [`crate::mmsg::BATCH`] queries, [`Frontend::replay`] for each, one
//! `sendmmsg` for the replies ([`crate::mmsg`]). The loop gives the runtime back after
//! `ROUNDS` batches so that TCP, dns.sock and the metrics page are served under a flood too.
//!
//! A listener on a non-loopback address checks each client against `allow_clients`
//! ([`crate::clients`]) first: others get REFUSED (header and question only, never larger than
//! the query) and are counted. A query that needs resolving is charged, for new dummies, to the
//! tenant `client:ADDRESS` ([`crate::quota`]).

use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::sync::Arc;

use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::Semaphore;

use crate::clients::{refused, AllowList};
use crate::frontend::Frontend;
use crate::metrics::Metrics;
use crate::mmsg::{RecvBatch, SendBatch};

/// Batches read before the loop yields to other tasks.
const ROUNDS: usize = 4;

/// Queries that may wait on upstream or the database at once; beyond this, new ones are dropped
/// (the client retries), so a flood of misses cannot grow memory without bound.
pub const MAX_WAITING: usize = 1024;

/// Whether a reply can go to `peer` at all (hickory-server's rule, kept): not port 0, not an
/// unspecified or broadcast address.
fn answerable(peer: SocketAddr) -> bool {
    peer.port() != 0
        && match peer.ip() {
            IpAddr::V4(a) => !a.is_unspecified() && !a.is_broadcast(),
            IpAddr::V6(a) => !a.is_unspecified(),
        }
}

/// Serves one UDP socket until the task is aborted or the socket fails; with `allow`, only
/// clients it allows are answered (the others REFUSED).
pub async fn serve(socket: UdpSocket, frontend: Arc<Frontend>, allow: Option<Arc<AllowList>>) {
    let socket = Arc::new(socket);
    let waiting = Arc::new(Semaphore::new(MAX_WAITING));
    let mut rx = RecvBatch::new();
    let mut tx = SendBatch::default();
    let mut out = Vec::with_capacity(4096);
    loop {
        if let Err(error) = socket.readable().await {
            tracing::error!(%error, "UDP listener failed");
            return;
        }
        let mut drained = false;
        for _ in 0..ROUNDS {
            let n = match socket.try_io(Interest::READABLE, || rx.recv(socket.as_fd())) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    drained = true;
                    break;
                }
                Err(error) => {
                    // ICMP errors from earlier replies surface here; they concern one peer.
                    tracing::debug!(%error, "UDP receive error");
                    break;
                }
            };
            for i in 0..n {
                let Some((packet, Some(peer))) = rx.get(i) else {
                    continue;
                };
                if !answerable(peer) {
                    continue;
                }
                if allow.as_deref().is_some_and(|a| !a.allows(peer.ip())) {
                    Metrics::inc(&frontend.resolver().metrics().refused_clients);
                    if let Some(r) = refused(packet) {
                        tx.push(&r, peer);
                    }
                    continue;
                }
                if frontend.replay(packet, false, &mut out) {
                    tx.push(&out, peer);
                    continue;
                }
                // Never answered (see `crate::answer::answer_packet`): not worth a task.
                if packet.len() < 12 || packet.get(2).is_some_and(|b| b & 0x80 != 0) {
                    continue;
                }
                let Ok(permit) = Arc::clone(&waiting).try_acquire_owned() else {
                    Metrics::inc(&frontend.resolver().metrics().udp_dropped);
                    continue;
                };
                let packet = packet.to_vec();
                let socket = Arc::clone(&socket);
                let frontend = Arc::clone(&frontend);
                tokio::spawn(async move {
                    let tenant: Arc<str> = Arc::from(format!("client:{}", peer.ip()));
                    let answer = crate::quota::scope(tenant, frontend.answer(&packet, false));
                    if let Some(reply) = answer.await {
                        send(&socket, &reply, peer).await;
                    }
                    drop(permit);
                });
            }
            flush(&socket, &mut tx).await;
        }
        if !drained {
            tokio::task::yield_now().await;
        }
    }
}

/// Sends the queued replies; what the socket cannot take at once is sent one by one, waiting.
async fn flush(socket: &UdpSocket, tx: &mut SendBatch) {
    if tx.is_empty() {
        return;
    }
    if let Err(error) = socket.try_io(Interest::WRITABLE, || tx.send(socket.as_fd())) {
        if error.kind() != ErrorKind::WouldBlock {
            // One bad peer fails the whole call; the one-by-one sends below isolate it.
            tracing::debug!(%error, "cannot send DNS replies in a batch");
        }
    }
    if tx.is_empty() {
        return;
    }
    let rest: Vec<(Vec<u8>, SocketAddr)> = tx.pending().map(|(r, p)| (r.to_vec(), p)).collect();
    tx.clear();
    for (reply, peer) in rest {
        send(socket, &reply, peer).await;
    }
}

async fn send(socket: &UdpSocket, reply: &[u8], peer: SocketAddr) {
    if let Err(error) = socket.send_to(reply, peer).await {
        tracing::debug!(%error, %peer, "cannot send a DNS reply");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_answers_unreachable_peers() {
        assert!(answerable("[::1]:5353".parse().unwrap()));
        assert!(!answerable("[::1]:0".parse().unwrap()));
        assert!(!answerable("[::]:53".parse().unwrap()));
        assert!(!answerable("0.0.0.0:53".parse().unwrap()));
        assert!(!answerable("255.255.255.255:53".parse().unwrap()));
    }
}
