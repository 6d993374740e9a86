//! DNS over TCP to the guest DNS address: a connect to it is not relayed anywhere; host-server
//! answers the stream itself, one length-prefixed DNS message at a time, each through dns-cache.

use std::net::{Ipv4Addr, SocketAddrV4};

use shared_proto::ToGuest;
use tokio::io::AsyncReadExt;
use tokio::net::UnixStream;

use crate::context::{Request, Shared};
use crate::metrics::Event;
use crate::relay;

/// TCP to the guest DNS address: DNS messages with two-byte length prefixes (RFC 1035 §4.2.2),
/// each answered by dns-cache.
pub(crate) async fn dns_over_tcp(req: Request, dest: SocketAddrV4, shared: &Shared) {
    let Request {
        mut stream,
        leftover,
        permit,
        identity,
        ..
    } = req;
    shared.metrics.record(Event::Connect("ok"));
    let answer = ToGuest::Connected {
        local: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
        peer: dest,
        fd_passed: false,
        in_progress: false,
    };
    if crate::framed::write_frame(&mut stream, &answer)
        .await
        .is_err()
    {
        return;
    }
    let mut buf = leftover;
    let idle = shared.settings.udp_idle_timeout;
    loop {
        let Some(query) = next_dns_message(&mut stream, &mut buf, idle).await else {
            break;
        };
        let reply = match shared
            .mapping
            .dns_query(&identity, true, query.clone())
            .await
        {
            Ok(r) => r,
            // dns-cache unreachable or busy: SERVFAIL, and the stream stays for the next.
            Err(_) => match crate::servfail::servfail(&query) {
                Some(r) => r,
                None => break,
            },
        };
        let Ok(len) = u16::try_from(reply.len()) else {
            break;
        };
        let mut out = Vec::with_capacity(2 + reply.len());
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&reply);
        if relay::write_all(&stream, &out).await.is_err() {
            break;
        }
    }
    drop(permit);
}

/// The next length-prefixed DNS message, or `None` at end of stream, error, or idleness.
async fn next_dns_message(
    stream: &mut UnixStream,
    buf: &mut Vec<u8>,
    idle: std::time::Duration,
) -> Option<Vec<u8>> {
    loop {
        if buf.len() >= 2 {
            let len = usize::from(u16::from_be_bytes([buf[0], buf[1]]));
            if buf.len() >= 2 + len {
                let msg = buf[2..2 + len].to_vec();
                buf.drain(..2 + len);
                return Some(msg);
            }
        }
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(idle, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    }
}
