//! The metrics endpoint: answers every HTTP request on the configured local address with the
//! Prometheus text. Deliberately minimal (one request per connection, a bounded request read),
//! since only a local scraper talks to it.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::actors::metrics::MetricsHandle;

/// Binds `addr` and serves metrics on the current runtime; returns the bound address.
///
/// # Errors
/// When `addr` cannot be bound.
pub async fn serve(addr: SocketAddr, metrics: MetricsHandle) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    actix_rt::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            let metrics = metrics.clone();
            actix_rt::spawn(async move {
                // Read (and ignore) the request head, bounded in size and time.
                let mut head = [0u8; 2048];
                let _ = tokio::time::timeout(Duration::from_secs(2), s.read(&mut head)).await;
                let body = metrics.render().await;
                let resp = format!(
                    "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n\
                     Content-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    Ok(local)
}
