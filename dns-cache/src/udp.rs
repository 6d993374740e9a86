//! The UDP listener: one task per socket reads datagrams in a loop and answers replayable ones
//! on the spot; the others (answer-cache misses, new mappings waiting for their commit) get a
//! task of their own, at most [`MAX_WAITING`] at a time.
//!
//! On the hot path nothing is spawned, nothing is sent through a channel and nothing is
//! allocated: `recvfrom`, [`Frontend::replay`], `sendto`. The loop gives the runtime back after
//! [`BATCH`] datagrams so that TCP, dns.sock and the metrics page are served under a flood too.

use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::net::UdpSocket;
use tokio::sync::Semaphore;

use crate::metrics::Metrics;
use crate::server::Frontend;

/// Datagrams handled before the loop yields to other tasks.
const BATCH: usize = 64;

/// Queries that may wait on upstream or the database at once; beyond this, new ones are dropped
/// (the client retries), so a flood of misses cannot grow memory without bound.
pub const MAX_WAITING: usize = 1024;

/// Largest datagram read: anything longer is cut here and then fails to parse (FORMERR).
const MAX_DATAGRAM: usize = 65_535;

/// Whether a reply can go to `peer` at all (hickory-server's rule, kept): not port 0, not an
/// unspecified or broadcast address.
fn answerable(peer: SocketAddr) -> bool {
    peer.port() != 0
        && match peer.ip() {
            IpAddr::V4(a) => !a.is_unspecified() && !a.is_broadcast(),
            IpAddr::V6(a) => !a.is_unspecified(),
        }
}

/// Serves one UDP socket until the task is aborted or the socket fails.
pub async fn serve(socket: UdpSocket, frontend: Arc<Frontend>) {
    let socket = Arc::new(socket);
    let waiting = Arc::new(Semaphore::new(MAX_WAITING));
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut out = Vec::with_capacity(4096);
    loop {
        if let Err(error) = socket.readable().await {
            tracing::error!(%error, "UDP listener failed");
            return;
        }
        let mut drained = false;
        for _ in 0..BATCH {
            let (n, peer) = match socket.try_recv_from(&mut buf) {
                Ok(r) => r,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    drained = true;
                    break;
                }
                Err(error) => {
                    // ICMP errors from earlier replies surface here; they concern one peer.
                    tracing::debug!(%error, "UDP receive error");
                    continue;
                }
            };
            if !answerable(peer) {
                continue;
            }
            let packet = buf.get(..n).unwrap_or_default();
            if frontend.replay(packet, false, &mut out) {
                send(&socket, &out, peer).await;
                continue;
            }
            // Never answered (see `answer_packet`): not worth a task.
            if n < 12 || packet.get(2).is_some_and(|b| b & 0x80 != 0) {
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
                if let Some(reply) = frontend.answer(&packet, false).await {
                    send(&socket, &reply, peer).await;
                }
                drop(permit);
            });
        }
        if !drained {
            tokio::task::yield_now().await;
        }
    }
}

async fn send(socket: &UdpSocket, reply: &[u8], peer: SocketAddr) {
    let sent = match socket.try_send_to(reply, peer) {
        Err(e) if e.kind() == ErrorKind::WouldBlock => socket.send_to(reply, peer).await,
        other => other,
    };
    if let Err(error) = sent {
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
