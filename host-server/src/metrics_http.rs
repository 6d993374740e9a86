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
    // IPV6_V6ONLY like every IPv6 socket of host-server: `[::]:PORT` means IPv6 only.
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM.nonblocking(),
        Some(socket2::Protocol::TCP),
    )?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_reuse_address(true)?;
    sock.bind(&addr.into())?;
    sock.listen(128)?;
    let listener = TcpListener::from_std(sock.into())?;
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
