//! Start-up of the DNS listeners: binds UDP and TCP on every configured address and hands each
//! socket to its front end — UDP to [`crate::udp`] (over [`Frontend`]), TCP to hickory-server with
//! [`crate::tcp`]'s handler — and stops them again.
//!
//! UDP does not go through hickory-server: its UDP path spawns a task per query and hands each
//! reply to the socket's task through a channel, which in a profile of the cache-hit bench
//! cost more than answering itself. TCP carries few queries and stays on hickory-server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, UdpSocket};

use crate::clients::AllowList;
use crate::frontend::Frontend;
use crate::tcp::Handler;

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
/// through hickory-server. With `allow`, every listener answers only the clients it allows
/// (loopback always); `None` answers everyone, which only loopback listeners may do (the
/// settings check that).
pub async fn start(
    addrs: &[SocketAddr],
    frontend: &Arc<Frontend>,
    allow: Option<Arc<AllowList>>,
) -> Result<Listeners, ServerError> {
    let handler =
        Handler::new(Arc::clone(frontend.resolver()), frontend.payload()).allowing(allow.clone());
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
        udp_tasks.push(tokio::spawn(crate::udp::serve(
            udp,
            Arc::clone(frontend),
            allow.clone(),
        )));
        // Requests on one connection are answered in turn, so a few queued responses suffice.
        tcp.register_listener(listener, TCP_IDLE, 32);
    }
    Ok(Listeners {
        tcp,
        udp: udp_tasks,
    })
}
