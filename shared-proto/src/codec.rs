//! Byte-level reading and writing of message bodies.
//!
//! Every multi-byte integer is big-endian. Variable-length fields carry a length prefix that the
//! reader checks against the bytes actually left *before* allocating, so a hostile length can
//! never make the decoder allocate more than the frame it was given.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4};

use crate::error::ProtoError;

/// Longest string field (a DNS name is at most 253 characters; VM names are shorter still).
pub const MAX_STRING: usize = 1024;

/// Appends fields to a message body.
#[derive(Debug, Default)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// An empty body.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The encoded body.
    #[must_use]
    pub fn into_inner(self) -> Vec<u8> {
        self.buf
    }

    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    pub fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    pub fn bool(&mut self, v: bool) {
        self.u8(u8::from(v));
    }

    pub fn ipv4(&mut self, v: Ipv4Addr) {
        self.buf.extend_from_slice(&v.octets());
    }

    pub fn ipv6(&mut self, v: Ipv6Addr) {
        self.buf.extend_from_slice(&v.octets());
    }

    pub fn sockv4(&mut self, v: SocketAddrV4) {
        self.ipv4(*v.ip());
        self.u16(v.port());
    }

    /// A string with a 16-bit length. Callers keep strings under [`MAX_STRING`]; longer ones are
    /// cut at a character boundary so the writer never produces a field the reader rejects.
    pub fn string(&mut self, s: &str) {
        let mut end = s.len().min(MAX_STRING);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        let s = &s[..end];
        self.u16(u16::try_from(s.len()).expect("MAX_STRING fits in u16"));
        self.buf.extend_from_slice(s.as_bytes());
    }

    /// A byte string with a 32-bit length; the frame's size limit bounds it.
    pub fn bytes(&mut self, b: &[u8]) {
        // A body longer than u32::MAX cannot be framed anyway; the frame encoder rejects it.
        self.u32(u32::try_from(b.len()).unwrap_or(u32::MAX));
        self.buf.extend_from_slice(b);
    }

    /// A collection count; the frame's size limit bounds it.
    pub fn count(&mut self, n: usize) {
        self.u32(u32::try_from(n).unwrap_or(u32::MAX));
    }
}

/// Reads fields from a message body, failing with [`ProtoError::Truncated`] at its end.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    #[must_use]
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtoError> {
        if self.buf.len() < n {
            return Err(ProtoError::Truncated);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], ProtoError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub fn u8(&mut self) -> Result<u8, ProtoError> {
        Ok(self.array::<1>()?[0])
    }

    pub fn u16(&mut self) -> Result<u16, ProtoError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub fn u32(&mut self) -> Result<u32, ProtoError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub fn u64(&mut self) -> Result<u64, ProtoError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    pub fn bool(&mut self) -> Result<bool, ProtoError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(ProtoError::BadValue {
                field: "bool",
                value: u64::from(other),
            }),
        }
    }

    pub fn ipv4(&mut self) -> Result<Ipv4Addr, ProtoError> {
        Ok(Ipv4Addr::from(self.array::<4>()?))
    }

    pub fn ipv6(&mut self) -> Result<Ipv6Addr, ProtoError> {
        Ok(Ipv6Addr::from(self.array::<16>()?))
    }

    pub fn sockv4(&mut self) -> Result<SocketAddrV4, ProtoError> {
        let ip = self.ipv4()?;
        Ok(SocketAddrV4::new(ip, self.u16()?))
    }

    pub fn string(&mut self) -> Result<String, ProtoError> {
        let len = usize::from(self.u16()?);
        if len > MAX_STRING {
            return Err(ProtoError::TooLong {
                field: "string",
                len,
            });
        }
        let raw = self.take(len)?;
        String::from_utf8(raw.to_vec()).map_err(|_| ProtoError::BadUtf8)
    }

    pub fn bytes(&mut self) -> Result<Vec<u8>, ProtoError> {
        let len = self.u32()? as usize;
        Ok(self.take(len)?.to_vec())
    }

    /// A collection count, checked so that `count * min_item_len` bytes are really left: a forged
    /// count cannot make the caller reserve memory the frame does not back.
    pub fn count(&mut self, min_item_len: usize) -> Result<usize, ProtoError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min_item_len.max(1)) > self.buf.len() {
            return Err(ProtoError::Truncated);
        }
        Ok(n)
    }

    /// Fails unless every byte was consumed: trailing garbage is an error, not ignored.
    pub fn finish(self) -> Result<(), ProtoError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(ProtoError::TrailingBytes {
                count: self.buf.len(),
            })
        }
    }
}
