//! The frame header's fixed fields and the body-length limit it may announce: the constants every
//! layer of the crate agrees on (the error messages name them, the framer writes and checks them).
//!
//! (The layout is drawn in [`crate::frame`].)

/// The two bytes that open every frame ("OS").
pub const MAGIC: [u8; 2] = *b"OS";
/// The protocol version this crate speaks.
pub const VERSION: u8 = 1;
/// Header length in bytes.
pub const HEADER_LEN: usize = 8;
/// Hard limit on a frame body: one maximum-size UDP datagram or DNS message plus its addresses
/// fits with room to spare, and a misbehaving peer can make a reader buffer no more than this.
pub const MAX_BODY: usize = 256 * 1024;
