//! Reading and writing shared-proto frames on a host.sock stream.
//!
//! The reader (shared-proto's [`reader`], with this stream's errors) buffers at most one frame
//! (the protocol's hard limit bounds it) and keeps whatever follows the frame: a client may
//! pipeline its request and its first data bytes, and those bytes belong to the TCP connection,
//! so [`FrameReader::into_leftover`] hands them on. [`TokioRead`] (also used by the dns.sock
//! client, [`crate::lookup`]) lets shared-proto's reader read a tokio stream.

use std::io;

use shared_proto::frame::{self, Message};
use shared_proto::reader::{self, Fill, ReadError, ReadSome};
use shared_proto::{ProtoError, ToGuest};
use std::os::fd::{AsRawFd, OwnedFd};
use thiserror::Error;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest};
use tokio::net::UnixStream;

/// The most one read asks the stream for.
const MAX_READ: usize = 16 * 1024;

/// A tokio stream as shared-proto's reader reads it (one `read` per call).
#[derive(Debug)]
pub(crate) struct TokioRead<'r, R: ?Sized>(pub &'r mut R);

impl<R: AsyncRead + Unpin + ?Sized> ReadSome for TokioRead<'_, R> {
    async fn read_some(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf).await
    }
}

/// A host.sock stream read with `recvmsg`, keeping a descriptor that comes with the bytes.
struct RecvFd<'r> {
    stream: &'r UnixStream,
    passed: &'r mut Option<OwnedFd>,
}

impl ReadSome for RecvFd<'_> {
    async fn read_some(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let stream = self.stream;
        let (n, fd) = stream
            .async_io(Interest::READABLE, || {
                outsock_fdpass::recv_with_fd(stream.as_raw_fd(), buf)
            })
            .await?;
        if fd.is_some() {
            *self.passed = fd;
        }
        Ok(n)
    }
}

/// Why a frame could not be read.
#[derive(Debug, Error)]
pub enum FrameError {
    #[error("reading the stream failed")]
    Io(#[from] io::Error),
    #[error("the peer closed the stream")]
    Closed,
    #[error("malformed frame")]
    Proto(#[from] ProtoError),
}

impl From<ReadError> for FrameError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Io(e) => Self::Io(e),
            ReadError::Closed => Self::Closed,
            // A frame cut short by the end of the stream is a malformed one.
            ReadError::ClosedMidFrame => Self::Proto(ProtoError::Truncated),
            ReadError::Proto(e) => Self::Proto(e),
        }
    }
}

/// Buffered frame reader over any byte stream: shared-proto's reader, reading no further than
/// the frame in progress needs (or its header), so that never more than one frame's worth is
/// buffered, whatever the peer sends.
#[derive(Debug)]
pub struct FrameReader(reader::FrameReader);

impl Default for FrameReader {
    fn default() -> Self {
        Self(reader::FrameReader::new(Fill::WithinFrame {
            max: MAX_READ,
        }))
    }
}

impl FrameReader {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The next frame. Cancel-safe: bytes read before a cancellation stay buffered.
    ///
    /// # Errors
    /// [`FrameError::Closed`] at a clean end of stream between frames; any other error means the
    /// stream is out of sync or broken and must be closed.
    pub async fn read<M: Message, R: AsyncRead + Unpin>(
        &mut self,
        rd: &mut R,
    ) -> Result<M, FrameError> {
        Ok(self.0.read(&mut TokioRead(rd)).await?)
    }

    /// [`FrameReader::read`] on a host.sock stream, with `recvmsg`: a descriptor that arrives
    /// with the bytes read (a listen request's packet channel) is kept in `passed` (the latest
    /// one; any other is closed).
    ///
    /// # Errors
    /// As for [`FrameReader::read`].
    pub async fn read_with_fd<M: Message>(
        &mut self,
        stream: &UnixStream,
        passed: &mut Option<OwnedFd>,
    ) -> Result<M, FrameError> {
        Ok(self.0.read(&mut RecvFd { stream, passed }).await?)
    }

    /// Bytes received after the last frame.
    #[must_use]
    pub fn into_leftover(self) -> Vec<u8> {
        self.0.into_leftover()
    }
}

/// Writes one frame.
///
/// # Errors
/// When the frame cannot be encoded or written.
pub async fn write_frame<W: AsyncWrite + Unpin>(wr: &mut W, msg: &ToGuest) -> io::Result<()> {
    let bytes = frame::to_vec(msg).map_err(io::Error::other)?;
    wr.write_all(&bytes).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_proto::outsource::{ConnectRequest, ToHost};

    #[tokio::test]
    async fn frames_and_leftover() {
        let req = ToHost::Connect(ConnectRequest {
            dest: "10.170.160.2:7".parse().unwrap(),
            pass_fd: false,
            nonblocking: false,
        });
        let mut bytes = frame::to_vec(&req).unwrap();
        bytes.extend_from_slice(b"early data");
        let mut rd = &bytes[..];
        let mut r = FrameReader::new();
        assert_eq!(r.read::<ToHost, _>(&mut rd).await.unwrap(), req);
        // Only the frame was read from the stream: the rest is still there or buffered.
        let mut rest = r.into_leftover();
        rest.extend_from_slice(rd);
        assert_eq!(rest, b"early data");
    }

    #[tokio::test]
    async fn garbage_and_truncation() {
        let mut rd = &b"GET / HTTP/1.0\r\n"[..];
        let e = FrameReader::new().read::<ToHost, _>(&mut rd).await;
        assert!(matches!(e, Err(FrameError::Proto(ProtoError::BadMagic(_)))));
        let mut rd = &b"OS"[..];
        let e = FrameReader::new().read::<ToHost, _>(&mut rd).await;
        assert!(matches!(e, Err(FrameError::Proto(ProtoError::Truncated))));
        let mut rd = &b""[..];
        let e = FrameReader::new().read::<ToHost, _>(&mut rd).await;
        assert!(matches!(e, Err(FrameError::Closed)));
    }
}
