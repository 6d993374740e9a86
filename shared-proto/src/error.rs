//! [`ProtoError`], the one error type of the protocol: what the field reader ([`crate::codec`]),
//! the framer ([`crate::frame`]) and the message decoders report. It sits below all of them so
//! that each can name it without depending on another.

use thiserror::Error;

use crate::header::{MAX_BODY, VERSION};

/// What went wrong while decoding (or, for size, encoding) a frame.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProtoError {
    #[error("frame does not start with the outsock magic (got {0:#06x})")]
    BadMagic(u16),
    #[error("protocol version {0} is not supported (this build speaks {VERSION})")]
    UnsupportedVersion(u8),
    #[error("frame body of {len} bytes exceeds the limit of {MAX_BODY}")]
    TooLarge { len: usize },
    #[error("unknown {family} message kind {kind}")]
    UnknownKind { family: &'static str, kind: u8 },
    #[error("message body ends early")]
    Truncated,
    #[error("message body has {count} unexpected trailing bytes")]
    TrailingBytes { count: usize },
    #[error("field {field} has invalid value {value}")]
    BadValue { field: &'static str, value: u64 },
    #[error("field {field} is {len} bytes long, over its limit")]
    TooLong { field: &'static str, len: usize },
    #[error("string field is not valid UTF-8")]
    BadUtf8,
}
