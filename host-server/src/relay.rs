//! The relay: moves a TCP connection's bytes between the guest's stream and the host socket,
//! both ways, with half-close and bounded buffers.
//!
//! Each direction moves the bytes without copying them through user space where the kernel
//! can: `splice(2)` from the source socket into a pipe of its own and from the pipe into the
//! destination socket. Where splice refuses the pair (EINVAL), the direction falls back to
//! copying through a buffer. Either way it takes at most one buffer's worth (the pipe is sized
//! to the relay buffer with `F_SETPIPE_SZ`) and writes all of it before reading again, so a slow
//! receiver stops the sender through the sockets' own flow control (no queue grows); a burst
//! for which no pipe can be made (descriptors exhausted) is copied too. Pipes and
//! buffers exist only while a direction is moving data: a pipe is made on a direction's first
//! data and closed after [`PIPE_KEEP`] without any, a buffer lives for one burst, so an idle
//! connection holds neither, which keeps idle relayed connections cheap (DESIGN.md §10). End of
//! stream in one direction becomes a `shutdown(SHUT_WR)` of the other side; the relay ends when
//! both directions have ended, when either side fails, or when neither moved a byte for the idle
//! timeout.

use std::cell::Cell;
use std::io;
use std::net::Shutdown;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::pipe::{fcntl_setpipe_size, pipe_with, splice, PipeFlags, SpliceFlags};
use thiserror::Error;
use tokio::io::Interest;
use tokio::net::{TcpStream, UnixStream};

/// How long a direction keeps its pipe without data before closing it.
pub const PIPE_KEEP: Duration = Duration::from_secs(1);

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
    /// Runs `f`, a read (`Interest::READABLE`) or write of this stream's descriptor by other
    /// means (splice), clearing the readiness when it would block.
    fn try_io_with(
        &self,
        interest: Interest,
        f: impl FnOnce() -> io::Result<usize>,
    ) -> io::Result<usize>;
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
            fn try_io_with(
                &self,
                interest: Interest,
                f: impl FnOnce() -> io::Result<usize>,
            ) -> io::Result<usize> {
                <$t>::try_io(self, interest, f)
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

/// One direction's pipe: read end, write end.
struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
}

impl Pipe {
    /// A non-blocking pipe holding up to `size` bytes (at least a page; the default size where
    /// the kernel refuses the change).
    fn new(size: usize) -> io::Result<Self> {
        let (r, w) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
        let _ = fcntl_setpipe_size(&w, size);
        Ok(Self { r, w })
    }
}

/// What one splice burst ended with.
enum Burst {
    /// The source has nothing more for now.
    Drained,
    /// The source ended.
    Eof,
    /// splice cannot move this source's bytes: copy instead from now on.
    Unsupported,
}

fn errno(e: rustix::io::Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

const SPLICE: SpliceFlags = SpliceFlags::NONBLOCK.union(SpliceFlags::MOVE);

impl<R: RelayIo, W: RelayIo> Direction<'_, R, W> {
    async fn run(self) -> Result<u64, RelayError> {
        let mut moved = 0u64;
        let mut pipe: Option<Pipe> = None;
        let mut splicing = true;
        loop {
            self.wait_readable(&mut pipe).await?;
            // Without a pipe (descriptors exhausted, say) this burst is copied.
            let p = match pipe.take() {
                Some(p) => Some(p),
                None if splicing => Pipe::new(self.buf_size).ok(),
                None => None,
            };
            if let Some(p) = p {
                match self.splice_burst(&p, &mut moved).await? {
                    Burst::Drained => {
                        pipe = Some(p);
                        continue;
                    }
                    Burst::Eof => {
                        self.dst.shutdown_write()?;
                        return Ok(moved);
                    }
                    // The pipe is empty: closed here; the copy below takes the burst.
                    Burst::Unsupported => splicing = false,
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

    /// Waits until the source is readable, ending the relay when the connection has been
    /// quiet for the idle timeout, and closing the pipe once it has had no data for
    /// [`PIPE_KEEP`].
    async fn wait_readable(&self, pipe: &mut Option<Pipe>) -> Result<(), RelayError> {
        loop {
            let keep = pipe.as_ref().map(|_| Instant::now() + PIPE_KEEP);
            let idle = self.idle.map(|idle| self.last.get() + idle);
            let deadline = match (keep, idle) {
                (Some(k), Some(i)) => Some(k.min(i)),
                (k, i) => k.or(i),
            };
            let Some(deadline) = deadline else {
                return Ok(self.src.readable().await?);
            };
            match tokio::time::timeout_at(deadline.into(), self.src.readable()).await {
                Ok(r) => return Ok(r?),
                Err(_) => {
                    // The other direction may have moved data meanwhile; only give up when
                    // the whole connection has been quiet.
                    if let Some(idle) = self.idle {
                        if self.last.get().elapsed() >= idle {
                            return Err(RelayError::Idle(idle));
                        }
                    }
                    if keep.is_some_and(|k| Instant::now() >= k) {
                        *pipe = None;
                    }
                }
            }
        }
    }

    /// Splices what the source has, one pipe-full at a time, each written out whole before
    /// the next is read. The pipe is empty whenever this returns.
    async fn splice_burst(&self, p: &Pipe, moved: &mut u64) -> Result<Burst, RelayError> {
        let mut first = true;
        loop {
            let n = match self.src.try_io_with(Interest::READABLE, || {
                splice(self.src, None, &p.w, None, self.buf_size, SPLICE).map_err(errno)
            }) {
                Ok(0) => return Ok(Burst::Eof),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Burst::Drained),
                Err(e) if first && e.raw_os_error() == Some(libc::EINVAL) => {
                    return Ok(Burst::Unsupported)
                }
                Err(e) => return Err(e.into()),
            };
            first = false;
            self.drain(p, n).await?;
            *moved += n as u64;
            self.last.set(Instant::now());
        }
    }

    /// Writes the `n` bytes in the pipe to the destination: spliced, or read out and copied
    /// where the destination refuses splice.
    async fn drain(&self, p: &Pipe, mut n: usize) -> Result<(), RelayError> {
        while n > 0 {
            self.dst.writable().await?;
            match self.dst.try_io_with(Interest::WRITABLE, || {
                splice(&p.r, None, self.dst, None, n, SPLICE).map_err(errno)
            }) {
                Ok(k) => n -= k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    let mut buf = vec![0u8; n];
                    let mut got = 0;
                    while got < n {
                        got += rustix::io::read(&p.r, &mut buf[got..]).map_err(errno)?;
                    }
                    write_all(self.dst, &buf).await?;
                    n = 0;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
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

    /// Relay tests run one at a time: one of them counts this process's pipes.
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    fn pipes() -> usize {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| {
                std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().starts_with("pipe:"))
            })
            .count()
    }

    async fn tcp_pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    #[tokio::test]
    async fn relays_both_ways_with_half_close() {
        let _serial = SERIAL.lock().await;
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
        let _serial = SERIAL.lock().await;
        let (_guest_app, guest) = UnixStream::pair().unwrap();
        let (host, _server) = tcp_pair().await;
        let r = relay(&guest, &host, b"", 1024, Some(Duration::from_millis(100))).await;
        assert!(matches!(r, Err(RelayError::Idle(_))));
    }

    #[tokio::test]
    async fn pipes_only_while_data_moves() {
        let _serial = SERIAL.lock().await;
        let (app, guest) = UnixStream::pair().unwrap();
        let (host, mut server) = tcp_pair().await;
        let (mut app_r, mut app_w) = app.into_split();
        let base = pipes();
        let peers = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert_eq!(pipes(), base, "an idle relayed connection holds no pipe");
            app_w.write_all(b"hello").await.unwrap();
            let mut got = [0u8; 5];
            server.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"hello");
            assert_eq!(
                pipes(),
                base + 2,
                "the direction that moved data keeps its pipe"
            );
            server.write_all(b"back").await.unwrap();
            let mut back = [0u8; 4];
            app_r.read_exact(&mut back).await.unwrap();
            assert_eq!(&back, b"back");
            assert_eq!(pipes(), base + 4, "both directions moved data");
            tokio::time::sleep(PIPE_KEEP + Duration::from_millis(500)).await;
            assert_eq!(pipes(), base, "pipes close after PIPE_KEEP without data");
            // Data again after that: a new pipe, the same bytes.
            app_w.write_all(b"again").await.unwrap();
            let mut again = [0u8; 5];
            server.read_exact(&mut again).await.unwrap();
            assert_eq!(&again, b"again");
            app_w.shutdown().await.unwrap();
            server.shutdown().await.unwrap();
        };
        let (moved, ()) = tokio::join!(relay(&guest, &host, b"", 16 * 1024, None), peers);
        assert_eq!(moved.unwrap(), Moved { up: 10, down: 4 });
        assert_eq!(pipes(), base, "a finished relay holds no pipe");
    }

    #[tokio::test]
    async fn idle_timeout_ends_a_relay_that_holds_a_pipe() {
        let _serial = SERIAL.lock().await;
        let (app, guest) = UnixStream::pair().unwrap();
        let (host, mut server) = tcp_pair().await;
        let (_app_r, mut app_w) = app.into_split();
        let idle = Duration::from_millis(300);
        let peers = async {
            app_w.write_all(b"hi").await.unwrap();
            let mut got = [0u8; 2];
            server.read_exact(&mut got).await.unwrap();
        };
        let t0 = Instant::now();
        let (r, ()) = tokio::join!(relay(&guest, &host, b"", 1024, Some(idle)), peers);
        assert!(matches!(r, Err(RelayError::Idle(_))), "{r:?}");
        // Quiet for the idle timeout after the data, well before PIPE_KEEP.
        assert!(t0.elapsed() < PIPE_KEEP, "{:?}", t0.elapsed());
        assert!(t0.elapsed() >= idle);
    }
}
