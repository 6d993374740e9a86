//! What every request handler takes: [`Shared`], the server-wide state each session gets a
//! clone of, and [`Request`], one host.sock stream whose request is known; with [`refuse`],
//! which answers an errno and closes the stream gracefully. They live below the handlers
//! (`session`, `outbound`, `inbound`, `udp`) so that the handlers never need to import one
//! another for them.

use std::sync::Arc;

use shared_proto::{Errno, ToGuest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::watch;

use crate::actors::mapping::MappingHandle;
use crate::actors::metrics::MetricsHandle;
use crate::config::Settings;
use crate::dest::Router;
use crate::framed::write_frame;
use crate::identity::Identity;
use crate::limits::{Limits, Permit};

/// What every session needs: settings, the plain routing rules, the handles, and the limits.
#[derive(Debug, Clone)]
pub(crate) struct Shared {
    pub settings: Arc<Settings>,
    pub router: Router,
    pub mapping: MappingHandle,
    pub metrics: MetricsHandle,
    pub limits: Limits,
    /// Becomes `true` on SIGTERM: listeners close, the acceptor stops.
    pub draining: watch::Receiver<bool>,
}

/// A stream whose request is known, with everything its handler needs.
#[derive(Debug)]
pub(crate) struct Request {
    pub stream: UnixStream,
    pub identity: Identity,
    /// Bytes that arrived after the request frame.
    pub leftover: Vec<u8>,
    /// This stream's slot in the identity's socket limit.
    pub permit: Permit,
}

impl Request {
    /// Gives the socket slot back, then answers `errno` and closes: once the peer reads the
    /// refusal, the slot is already free for its next request.
    pub(crate) async fn refuse(self, errno: Errno) {
        let Request {
            mut stream, permit, ..
        } = self;
        drop(permit);
        refuse(&mut stream, errno).await;
    }
}

/// Answers `errno` and closes (best effort: the peer may already be gone). The close is
/// graceful: after the answer, host-server shuts its side and discards what the peer still
/// sends (bounded in bytes and time), because closing a Unix stream with unread input makes the
/// peer's next read fail with ECONNRESET instead of delivering the answer and end of stream.
pub(crate) async fn refuse(stream: &mut UnixStream, errno: Errno) {
    if write_frame(stream, &ToGuest::Failed(errno)).await.is_err() {
        return;
    }
    let _ = stream.shutdown().await;
    let drain = async {
        let mut sink = [0u8; 4096];
        let mut left: usize = 256 * 1024;
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), drain).await;
}
