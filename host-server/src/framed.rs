//! Reading and writing shared-proto frames on a host.sock stream.
//!
//! The reader buffers at most one frame (the protocol's hard limit bounds it) and keeps whatever
//! follows the frame: a client may pipeline its request and its first data bytes, and those bytes
//! belong to the TCP connection, so [`FrameReader::into_leftover`] hands them on.

use std::io;

use shared_proto::frame::{self, Message};
use shared_proto::{ProtoError, ToGuest};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

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

/// Buffered frame reader over any byte stream.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: Vec<u8>,
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
        loop {
            if let Some((msg, used)) = frame::decode::<M>(&self.buf)? {
                self.buf.drain(..used);
                return Ok(msg);
            }
            // Read no further than the frame in progress needs (or its header): never more
            // than one frame's worth is buffered, whatever the peer sends.
            let want = match frame::frame_len(&self.buf)? {
                Some(total) => total - self.buf.len(),
                None => frame::HEADER_LEN - self.buf.len(),
            }
            .max(1);
            // A separate chunk keeps this cancel-safe: nothing enters `buf` until it was read.
            let mut chunk = vec![0u8; want.min(16 * 1024)];
            let n = rd.read(&mut chunk).await?;
            self.buf.extend_from_slice(&chunk[..n]);
            if n == 0 {
                return Err(if self.buf.is_empty() {
                    FrameError::Closed
                } else {
                    FrameError::Proto(ProtoError::Truncated)
                });
            }
        }
    }

    /// Bytes received after the last frame.
    #[must_use]
    pub fn into_leftover(self) -> Vec<u8> {
        self.buf
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
