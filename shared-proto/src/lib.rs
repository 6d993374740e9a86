//! shared-proto: the wire protocol that outsock's processes speak over Unix (and vsock) streams.
//!
//! - [`frame`]: length-prefixed, versioned frames with a hard size limit; decoding never panics
//!   and rejects garbage with a typed [`ProtoError`].
//! - [`outsource`]: one outsourced socket per stream — the VMM's hello, TCP connect, TCP listen
//!   with inbound connections, UDP associations with per-datagram addresses, errno failures.
//! - [`lookup`]: host-server ↔ dns-cache look-ups on `dns.sock`.
//! - [`hybrid`]: the `CONNECT <port>` / `OK <port>` handshake of hybrid vsock on a VM's socket.
//!
//! The crate does no I/O and has no unsafe code: transports (Unix sockets, vsock, SCM_RIGHTS)
//! live in the daemons and the shim, which feed bytes in and take bytes out.

#![forbid(unsafe_code)]

pub mod codec;
pub mod errno;
pub mod frame;
pub mod hybrid;
pub mod lookup;
pub mod outsource;

pub use errno::Errno;
pub use frame::{decode, decode_exact, encode, frame_len, to_vec, Message, ProtoError, MAX_BODY};
pub use lookup::{LookupOp, LookupReply, LookupRequest, LookupResponse};
pub use outsource::{ToGuest, ToHost};
