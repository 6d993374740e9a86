//! Reading whole frames from a byte stream: the one frame reader of the daemons (host-server's
//! host.sock streams and its dns.sock client, dns-cache's dns.sock server).
//!
//! [`FrameReader`] owns only the buffering; it does no I/O itself. It reads through [`ReadSome`],
//! which each daemon implements for its own streams in a few lines (over tokio's
//! `AsyncReadExt::read`), so this crate needs no runtime, no I/O library and no cargo feature,
//! and the shim and the fuzz target that link it stay as they are:
//!
//! ```
//! use shared_proto::reader::{Fill, FrameReader, ReadError, ReadSome};
//! use shared_proto::LookupRequest;
//! use tokio::io::{AsyncRead, AsyncReadExt};
//!
//! struct Tokio<'a, R>(&'a mut R);
//!
//! impl<R: AsyncRead + Unpin> ReadSome for Tokio<'_, R> {
//!     async fn read_some(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
//!         self.0.read(buf).await
//!     }
//! }
//!
//! async fn serve(mut stream: tokio::net::UnixStream) -> Result<(), ReadError> {
//!     let mut frames = FrameReader::new(Fill::Greedy { chunk: 4096 });
//!     loop {
//!         let request: LookupRequest = frames.read(&mut Tokio(&mut stream)).await?;
//!         // ...
//!     }
//! }
//! ```
//!
//! How much is read at a time is the caller's choice ([`Fill`]): a stream whose bytes after a
//! frame belong to someone else (a TCP connection's pipelined data) is read no further than the
//! frame in progress; a stream that carries nothing but frames is read in large chunks, and the
//! frames that arrive together are handed out one by one without reading again.
//!
//! Either way the reader is cancel-safe as long as the read operation is (tokio's `read` is):
//! bytes enter the buffer only once a read has completed, and stay there if a later call is
//! cancelled.

use std::future::Future;
use std::io;

use thiserror::Error;

use crate::error::ProtoError;
use crate::frame::{decode, frame_len, Message};
use crate::header::HEADER_LEN;

/// One read from a byte stream: what [`FrameReader`] needs of the caller's stream.
pub trait ReadSome {
    /// Reads at most `buf.len()` bytes into `buf` and returns how many it read: 0 only at the end
    /// of the stream, never because `buf` is empty (the reader never passes an empty one).
    fn read_some(&mut self, buf: &mut [u8]) -> impl Future<Output = io::Result<usize>>;
}

/// Why no frame could be read.
#[derive(Debug, Error)]
pub enum ReadError {
    /// The read operation failed.
    #[error("reading the stream failed")]
    Io(#[from] io::Error),
    /// The stream ended cleanly between two frames.
    #[error("the peer closed the stream")]
    Closed,
    /// The stream ended with part of a frame buffered.
    #[error("the peer closed the stream in the middle of a frame")]
    ClosedMidFrame,
    /// The bytes are not a valid frame; the stream is out of sync and must be closed.
    #[error("malformed frame")]
    Proto(#[from] ProtoError),
}

/// How much one read may ask the stream for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fill {
    /// No further than the frame in progress needs (or its header, while that is incomplete),
    /// and at most `max` bytes per read: whatever follows a frame stays in the stream (or in
    /// [`FrameReader::into_leftover`]), and no more than one frame is ever buffered. Each read
    /// uses a buffer of its own, sized to what it asks for.
    WithinFrame {
        /// The most one read asks for.
        max: usize,
    },
    /// Up to `chunk` bytes per read into a buffer kept for the reader's life: fewer reads on a
    /// stream of many small frames; bytes of the frames that follow stay buffered for the next
    /// calls.
    Greedy {
        /// The size of one read.
        chunk: usize,
    },
}

/// A buffered frame reader over one stream.
#[derive(Debug)]
pub struct FrameReader {
    /// Bytes read and not yet handed out as a frame.
    buf: Vec<u8>,
    /// The read buffer of [`Fill::Greedy`] (empty for [`Fill::WithinFrame`]).
    scratch: Vec<u8>,
    fill: Fill,
}

impl FrameReader {
    /// A reader with an empty buffer that reads as `fill` says.
    #[must_use]
    pub fn new(fill: Fill) -> Self {
        let scratch = match fill {
            Fill::WithinFrame { .. } => Vec::new(),
            Fill::Greedy { chunk } => vec![0; chunk.max(1)],
        };
        Self {
            buf: Vec::new(),
            scratch,
            fill,
        }
    }

    /// The next frame: one already buffered, or else one read from `rd`.
    ///
    /// # Errors
    /// [`ReadError::Closed`] at a clean end of stream between frames; [`ReadError::ClosedMidFrame`]
    /// when the stream ends inside a frame; [`ReadError::Io`] when a read fails;
    /// [`ReadError::Proto`] for a malformed frame, reported as soon as the bytes in show it (a
    /// header that announces too large a body fails before any of the body is read).
    pub async fn read<M: Message, R: ReadSome + ?Sized>(
        &mut self,
        rd: &mut R,
    ) -> Result<M, ReadError> {
        loop {
            if let Some((msg, used)) = decode::<M>(&self.buf)? {
                self.buf.drain(..used);
                return Ok(msg);
            }
            let n = match self.fill {
                Fill::WithinFrame { max } => {
                    let want = match frame_len(&self.buf)? {
                        Some(total) => total - self.buf.len(),
                        None => HEADER_LEN - self.buf.len(),
                    };
                    // A separate buffer keeps this cancel-safe: nothing enters `buf` until it was
                    // read.
                    let mut chunk = vec![0u8; want.min(max).max(1)];
                    let n = rd.read_some(&mut chunk).await?;
                    self.buf.extend_from_slice(&chunk[..n]);
                    n
                }
                Fill::Greedy { .. } => {
                    let n = rd.read_some(&mut self.scratch).await?;
                    self.buf.extend_from_slice(&self.scratch[..n]);
                    n
                }
            };
            if n == 0 {
                return Err(if self.buf.is_empty() {
                    ReadError::Closed
                } else {
                    ReadError::ClosedMidFrame
                });
            }
        }
    }

    /// Bytes received after the last frame handed out.
    #[must_use]
    pub fn into_leftover(self) -> Vec<u8> {
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::*;
    use crate::frame::{to_vec, MAGIC, MAX_BODY, VERSION};
    use crate::lookup::{LookupOp, LookupRequest};
    use crate::outsource::{ConnectRequest, ToHost};

    const LIMIT: Duration = Duration::from_secs(5);

    /// The daemons' adapter: tokio's read.
    struct Tokio<'a>(&'a mut DuplexStream);

    impl ReadSome for Tokio<'_> {
        async fn read_some(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.0.read(buf).await
        }
    }

    /// A stream whose reads fail.
    struct Broken;

    impl ReadSome for Broken {
        async fn read_some(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::other("boom"))
        }
    }

    fn connect(port: u16) -> ToHost {
        ToHost::Connect(ConnectRequest {
            dest: std::net::SocketAddrV4::new(std::net::Ipv4Addr::new(10, 170, 160, 2), port),
            pass_fd: false,
            nonblocking: false,
        })
    }

    fn modes() -> [Fill; 4] {
        [
            Fill::WithinFrame { max: 16 * 1024 },
            Fill::WithinFrame { max: 1 },
            Fill::Greedy { chunk: 4096 },
            Fill::Greedy { chunk: 3 },
        ]
    }

    async fn next<M: Message>(r: &mut FrameReader, rd: &mut DuplexStream) -> Result<M, ReadError> {
        tokio::time::timeout(LIMIT, r.read(&mut Tokio(rd)))
            .await
            .expect("the reader answers without waiting for bytes it does not need")
    }

    #[tokio::test]
    async fn frames_arrive_in_pieces() {
        let frames = [connect(1), connect(2), connect(3)];
        let bytes: Vec<u8> = frames.iter().flat_map(|f| to_vec(f).unwrap()).collect();
        for fill in modes() {
            // A 3-byte pipe: every frame arrives in many short reads.
            let (mut rd, mut wr) = duplex(3);
            let sent = bytes.clone();
            let writer = tokio::spawn(async move { wr.write_all(&sent).await });
            let mut r = FrameReader::new(fill);
            for want in &frames {
                assert_eq!(
                    &next::<ToHost>(&mut r, &mut rd).await.unwrap(),
                    want,
                    "{fill:?}"
                );
            }
            writer.await.unwrap().unwrap();
            assert!(
                matches!(
                    next::<ToHost>(&mut r, &mut rd).await,
                    Err(ReadError::Closed)
                ),
                "{fill:?}"
            );
        }
    }

    #[tokio::test]
    async fn within_frame_leaves_what_follows_in_the_stream() {
        let req = LookupRequest {
            id: 7,
            op: LookupOp::Flush,
        };
        let mut bytes = to_vec(&req).unwrap();
        bytes.extend_from_slice(b"early data");
        let (mut rd, mut wr) = duplex(1024);
        wr.write_all(&bytes).await.unwrap();
        drop(wr);
        let mut r = FrameReader::new(Fill::WithinFrame { max: 16 * 1024 });
        assert_eq!(next::<LookupRequest>(&mut r, &mut rd).await.unwrap(), req);
        assert!(r.into_leftover().is_empty());
        let mut rest = Vec::new();
        rd.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"early data");
    }

    #[tokio::test]
    async fn greedy_keeps_what_follows_buffered() {
        let mut bytes = to_vec(&connect(1)).unwrap();
        bytes.extend_from_slice(&to_vec(&connect(2)).unwrap());
        bytes.extend_from_slice(b"OS");
        let (mut rd, mut wr) = duplex(1024);
        wr.write_all(&bytes).await.unwrap();
        let mut r = FrameReader::new(Fill::Greedy { chunk: 4096 });
        assert_eq!(next::<ToHost>(&mut r, &mut rd).await.unwrap(), connect(1));
        // The second frame is answered from the buffer: the writer is still open, so a read
        // would wait.
        assert_eq!(next::<ToHost>(&mut r, &mut rd).await.unwrap(), connect(2));
        assert_eq!(r.into_leftover(), b"OS");
    }

    #[tokio::test]
    async fn end_of_stream_inside_a_frame() {
        let bytes = to_vec(&connect(1)).unwrap();
        for cut in [1, HEADER_LEN - 1, HEADER_LEN, bytes.len() - 1] {
            for fill in modes() {
                let (mut rd, mut wr) = duplex(1024);
                wr.write_all(&bytes[..cut]).await.unwrap();
                drop(wr);
                let mut r = FrameReader::new(fill);
                let e = next::<ToHost>(&mut r, &mut rd).await;
                assert!(
                    matches!(e, Err(ReadError::ClosedMidFrame)),
                    "{cut} {fill:?}: {e:?}"
                );
            }
        }
    }

    #[tokio::test]
    async fn oversize_header_fails_before_its_body() {
        let mut header = Vec::from(MAGIC);
        header.extend_from_slice(&[VERSION, 1]);
        let len = u32::try_from(MAX_BODY + 1).unwrap();
        header.extend_from_slice(&len.to_be_bytes());
        for fill in modes() {
            // The writer stays open: waiting for the body would time out.
            let (mut rd, mut wr) = duplex(1024);
            wr.write_all(&header).await.unwrap();
            let mut r = FrameReader::new(fill);
            let e = next::<ToHost>(&mut r, &mut rd).await;
            assert!(
                matches!(e, Err(ReadError::Proto(ProtoError::TooLarge { len })) if len == MAX_BODY + 1),
                "{fill:?}: {e:?}"
            );
        }
    }

    #[tokio::test]
    async fn garbage_fails_at_once() {
        for fill in modes() {
            let (mut rd, mut wr) = duplex(1024);
            wr.write_all(b"GET / HTTP/1.0\r\n").await.unwrap();
            let mut r = FrameReader::new(fill);
            let e = next::<ToHost>(&mut r, &mut rd).await;
            assert!(
                matches!(e, Err(ReadError::Proto(ProtoError::BadMagic(_)))),
                "{fill:?}: {e:?}"
            );
        }
    }

    #[tokio::test]
    async fn read_errors_are_passed_on() {
        let mut r = FrameReader::new(Fill::WithinFrame { max: 16 });
        let e = r.read::<ToHost, _>(&mut Broken).await;
        assert!(matches!(e, Err(ReadError::Io(e)) if e.to_string() == "boom"));
    }

    #[tokio::test]
    async fn a_cancelled_read_loses_nothing() {
        let bytes = to_vec(&connect(9)).unwrap();
        let (half, rest) = bytes.split_at(5);
        for fill in modes() {
            let (mut rd, mut wr) = duplex(1024);
            wr.write_all(half).await.unwrap();
            let mut r = FrameReader::new(fill);
            let cancelled = tokio::time::timeout(
                Duration::from_millis(20),
                r.read::<ToHost, _>(&mut Tokio(&mut rd)),
            )
            .await;
            assert!(cancelled.is_err(), "{fill:?}");
            wr.write_all(rest).await.unwrap();
            assert_eq!(next::<ToHost>(&mut r, &mut rd).await.unwrap(), connect(9));
        }
    }
}
