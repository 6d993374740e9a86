//! Framing: every message travels as one length-prefixed, versioned frame.
//!
//! ```text
//!  0      2      3      4              8
//!  +------+------+------+--------------+----------------------+
//!  | "OS" | ver  | kind | body length  | body (length bytes)  |
//!  +------+------+------+--------------+----------------------+
//! ```
//!
//! (The header's constants are defined in [`crate::header`].)
//!
//! The length is big-endian and never above [`MAX_BODY`]; a peer that announces more is cut off
//! before its body is read. [`decode`] follows the mini-redis pattern: `Ok(None)` means "not a
//! whole frame yet, read more", and every malformed input is a typed [`ProtoError`].

use crate::codec::{Reader, Writer};
// The header's constants and the error type live below the framer; they are re-exported here so
// that `frame::HEADER_LEN`, `frame::ProtoError` and the like keep working.
pub use crate::error::ProtoError;
pub use crate::header::{HEADER_LEN, MAGIC, MAX_BODY, VERSION};

/// A message family that can be framed: each channel direction has one enum implementing this.
pub trait Message: Sized {
    /// Name of the family, used in error messages.
    const FAMILY: &'static str;

    /// The kind byte of this message in the frame header.
    fn kind(&self) -> u8;

    /// Writes the body (everything after the header).
    fn encode_body(&self, w: &mut Writer);

    /// Reads a body of the given kind. The caller checks that every byte was consumed.
    fn decode_body(kind: u8, r: &mut Reader<'_>) -> Result<Self, ProtoError>;
}

/// Appends `msg` as one frame to `out`.
///
/// # Errors
/// [`ProtoError::TooLarge`] when the body would exceed [`MAX_BODY`]; `out` is left unchanged.
pub fn encode<M: Message>(msg: &M, out: &mut Vec<u8>) -> Result<(), ProtoError> {
    let mut w = Writer::new();
    msg.encode_body(&mut w);
    let body = w.into_inner();
    if body.len() > MAX_BODY {
        return Err(ProtoError::TooLarge { len: body.len() });
    }
    out.reserve(HEADER_LEN + body.len());
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(msg.kind());
    out.extend_from_slice(
        &u32::try_from(body.len())
            .expect("MAX_BODY fits in u32")
            .to_be_bytes(),
    );
    out.extend_from_slice(&body);
    Ok(())
}

/// Convenience: `msg` as a freshly allocated frame.
///
/// # Errors
/// As [`encode`].
pub fn to_vec<M: Message>(msg: &M) -> Result<Vec<u8>, ProtoError> {
    let mut out = Vec::new();
    encode(msg, &mut out)?;
    Ok(out)
}

/// Checks the header at the start of `buf` and returns the whole frame's length, or `None` when
/// fewer than [`HEADER_LEN`] bytes are there. Readers use it to know how much to buffer; it
/// rejects bad magic, versions and sizes as soon as the header is in.
///
/// # Errors
/// [`ProtoError::BadMagic`], [`ProtoError::UnsupportedVersion`], [`ProtoError::TooLarge`].
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, ProtoError> {
    let Some(header) = buf.get(..HEADER_LEN) else {
        // Reject garbage as early as the bytes we have allow.
        if buf.len() >= 2 && buf[..2] != MAGIC {
            return Err(ProtoError::BadMagic(u16::from_be_bytes([buf[0], buf[1]])));
        }
        return Ok(None);
    };
    if header[..2] != MAGIC {
        return Err(ProtoError::BadMagic(u16::from_be_bytes([
            header[0], header[1],
        ])));
    }
    if header[2] != VERSION {
        return Err(ProtoError::UnsupportedVersion(header[2]));
    }
    let len = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
    if len > MAX_BODY {
        return Err(ProtoError::TooLarge { len });
    }
    Ok(Some(HEADER_LEN + len))
}

/// Decodes the first frame in `buf`. Returns the message and the number of bytes it used, or
/// `None` if `buf` does not yet hold a whole frame.
///
/// # Errors
/// Any [`ProtoError`]; after an error the stream is out of sync and must be closed.
pub fn decode<M: Message>(buf: &[u8]) -> Result<Option<(M, usize)>, ProtoError> {
    let Some(total) = frame_len(buf)? else {
        return Ok(None);
    };
    let Some(frame) = buf.get(..total) else {
        return Ok(None);
    };
    let mut r = Reader::new(&frame[HEADER_LEN..]);
    let msg = M::decode_body(frame[3], &mut r)?;
    r.finish()?;
    Ok(Some((msg, total)))
}

/// Decodes a buffer that must hold exactly one whole frame (a datagram, a test vector).
///
/// # Errors
/// [`ProtoError::Truncated`] when the frame is incomplete, [`ProtoError::TrailingBytes`] when
/// bytes follow it, or any other decoding error.
pub fn decode_exact<M: Message>(buf: &[u8]) -> Result<M, ProtoError> {
    match decode(buf)? {
        None => Err(ProtoError::Truncated),
        Some((msg, used)) if used == buf.len() => Ok(msg),
        Some((_, used)) => Err(ProtoError::TrailingBytes {
            count: buf.len() - used,
        }),
    }
}
