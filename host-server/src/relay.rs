//! The relay: copies a TCP connection's bytes between the guest's stream and the host socket,
//! both ways, with half-close and bounded buffers.
//!
//! Each direction reads at most one buffer and writes all of it before reading again, so a slow
//! receiver stops the sender through the sockets' own flow control (no queue grows). Buffers
//! exist only while a direction is moving data: an idle connection holds no buffer at all, which
//! keeps idle relayed connections cheap (DESIGN.md §10). End of stream in one direction becomes a
//! `shutdown(SHUT_WR)` of the other side; the relay ends when both directions have ended, when
//! either side fails, or when neither moved a byte for the idle timeout.

use std::cell::Cell;
use std::io;
use std::net::Shutdown;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::net::{TcpStream, UnixStream};

/// How a relay ended badly.
#[derive(Debug, Error)]
pub enum RelayError {
    #[error("relay failed")]
    Io(#[from] io::Error),
    #[error("no data moved for {0:?}")]
    Idle(Duration),
}

/// Bytes moved by one relay.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Moved {
    /// Guest → host socket.
    pub up: u64,
    /// Host socket → guest.
    pub down: u64,
}

/// A stream the relay can drive through shared references.
pub trait RelayIo: AsFd + Sized {
    fn readable(&self) -> impl std::future::Future<Output = io::Result<()>>;
    fn writable(&self) -> impl std::future::Future<Output = io::Result<()>>;
    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize>;
    fn try_write(&self, buf: &[u8]) -> io::Result<usize>;
    /// Half-close: no more bytes will be written.
    fn shutdown_write(&self) -> io::Result<()> {
        match socket2::SockRef::from(self).shutdown(Shutdown::Write) {
            // The peer is already gone; nothing left to signal.
            Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => Ok(()),
            r => r,
        }
    }
}

macro_rules! relay_io {
    ($t:ty) => {
        impl RelayIo for $t {
            async fn readable(&self) -> io::Result<()> {
                <$t>::readable(self).await
            }
            async fn writable(&self) -> io::Result<()> {
                <$t>::writable(self).await
            }
            fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
                <$t>::try_read(self, buf)
            }
            fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
                <$t>::try_write(self, buf)
            }
        }
    };
}
relay_io!(TcpStream);
relay_io!(UnixStream);

/// Writes all of `data` to `dst`.
///
/// # Errors
/// When the write fails.
pub async fn write_all<W: RelayIo>(dst: &W, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        dst.writable().await?;
        match dst.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

struct Direction<'a, R, W> {
    src: &'a R,
    dst: &'a W,
    buf_size: usize,
    idle: Option<Duration>,
    last: &'a Cell<Instant>,
}

impl<R: RelayIo, W: RelayIo> Direction<'_, R, W> {
    async fn run(self) -> Result<u64, RelayError> {
        let mut moved = 0u64;
        loop {
            match self.idle {
                None => self.src.readable().await?,
                Some(idle) => {
                    let deadline = self.last.get() + idle;
                    match tokio::time::timeout_at(deadline.into(), self.src.readable()).await {
                        Ok(r) => r?,
                        // The other direction may have moved data meanwhile; only give up
                        // when the whole connection has been quiet.
                        Err(_) if self.last.get().elapsed() >= idle => {
                            return Err(RelayError::Idle(idle))
                        }
                        Err(_) => continue,
                    }
                }
            }
            let mut buf = vec![0u8; self.buf_size];
            loop {
                match self.src.try_read(&mut buf) {
                    Ok(0) => {
                        self.dst.shutdown_write()?;
                        return Ok(moved);
                    }
                    Ok(n) => {
                        write_all(self.dst, &buf[..n]).await?;
                        moved += n as u64;
                        self.last.set(Instant::now());
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
}

/// Relays between the guest's stream and the host socket until both directions end.
/// `leftover` (bytes that arrived with the request frame) goes to the host socket first.
///
/// # Errors
/// [`RelayError`] when a side fails or the connection idles out; the caller closes both.
pub async fn relay<G: RelayIo, H: RelayIo>(
    guest: &G,
    host: &H,
    leftover: &[u8],
    buf_size: usize,
    idle: Option<Duration>,
) -> Result<Moved, RelayError> {
    write_all(host, leftover).await?;
    let last = Cell::new(Instant::now());
    let up = Direction {
        src: guest,
        dst: host,
        buf_size,
        idle,
        last: &last,
    };
    let down = Direction {
        src: host,
        dst: guest,
        buf_size,
        idle,
        last: &last,
    };
    // try_join: the first failure ends both directions (the caller then drops both sockets).
    let (up, down) = tokio::try_join!(up.run(), down.run())?;
    Ok(Moved {
        up: up + leftover.len() as u64,
        down,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn tcp_pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    #[tokio::test]
    async fn relays_both_ways_with_half_close() {
        let (guest_app, guest) = UnixStream::pair().unwrap();
        let (host, mut server) = tcp_pair().await;
        let (mut ga_r, mut ga_w) = guest_app.into_split();
        let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let p2 = payload.clone();
        let writer = tokio::spawn(async move {
            ga_w.write_all(&p2).await.unwrap();
            ga_w.shutdown().await.unwrap();
        });
        let peers = async {
            let mut got = Vec::new();
            server.read_to_end(&mut got).await.unwrap();
            assert_eq!(&got[..6], b"early ");
            assert_eq!(&got[6..], &payload[..]);
            // The other direction still works after the guest's half-close.
            server.write_all(b"reply").await.unwrap();
            server.shutdown().await.unwrap();
            let mut back = Vec::new();
            ga_r.read_to_end(&mut back).await.unwrap();
            assert_eq!(back, b"reply");
        };
        // The relay future is !Send (it lives on one actor's arbiter), so it runs on this task.
        let (moved, ()) = tokio::join!(relay(&guest, &host, b"early ", 1024, None), peers);
        writer.await.unwrap();
        let moved = moved.unwrap();
        assert_eq!(moved.up, payload.len() as u64 + 6);
        assert_eq!(moved.down, 5);
    }

    #[tokio::test]
    async fn idle_connections_end() {
        let (_guest_app, guest) = UnixStream::pair().unwrap();
        let (host, _server) = tcp_pair().await;
        let r = relay(&guest, &host, b"", 1024, Some(Duration::from_millis(100))).await;
        assert!(matches!(r, Err(RelayError::Idle(_))));
    }
}
