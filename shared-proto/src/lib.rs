//! shared-proto: the wire protocol that outsock's processes speak over Unix (and vsock) streams.
//!
//! - [`frame`]: length-prefixed, versioned frames with a hard size limit ([`header`]); decoding
//!   never panics and rejects garbage with a typed [`ProtoError`] ([`error`]). [`codec`] reads and
//!   writes the fields of a message body.
//! - [`reader`]: whole frames out of a byte stream, for the daemons' async streams.
//! - [`outsource`]: one outsourced socket per stream — the VMM's hello, TCP connect, TCP listen
//!   with inbound connections, UDP associations with per-datagram addresses, errno failures.
//! - [`lookup`]: host-server ↔ dns-cache look-ups on `dns.sock`.
//! - [`translate`]: the translation's semantics shared by liboutsock and outsock-supervisor
//!   (what is outsourced, `sockaddr_in` bytes, what a connect answer means).
//! - [`sockopt`]: how `getsockopt`/`setsockopt` answer on a stand-in for a program's TCP socket
//!   (host-server's IPv6 socket, or a vsock stream in a VM), shared by both front ends.
//! - [`icmp`]: ICMP echo as a ping or raw ICMP socket sees it (which messages may be sent, the
//!   IPv4 header a raw reader gets), shared by both front ends.
//! - [`hybrid`]: the `CONNECT <port>` / `OK <port>` handshake of hybrid vsock on a VM's socket.
//!
//! The crate does no I/O and has no unsafe code: transports (Unix sockets, vsock, SCM_RIGHTS)
//! live in the daemons and the shim, which feed bytes in and take bytes out. Even [`reader`]
//! only buffers: it reads through [`reader::ReadSome`], which the caller implements over its own
//! stream, so the crate depends on no runtime or I/O library.
//!
//! Imports point one way: [`header`] and [`error`] at the bottom, then [`codec`], [`frame`], the
//! message families ([`outsource`], [`lookup`]) and [`reader`]; [`errno`], [`hybrid`] and
//! [`icmp`] stand alone; [`sockopt`] uses [`errno`] and [`translate`]. The items re-exported below are the
//! crate's paths for users; no module inside the crate names them through the root.

#![forbid(unsafe_code)]

pub mod codec;
pub mod errno;
pub mod error;
pub mod frame;
pub mod header;
pub mod hybrid;
pub mod icmp;
pub mod lookup;
pub mod outsource;
pub mod reader;
pub mod sockopt;
pub mod translate;

pub use errno::Errno;
pub use error::ProtoError;
pub use frame::{decode, decode_exact, encode, frame_len, to_vec, Message};
pub use header::MAX_BODY;
pub use lookup::{LookupOp, LookupReply, LookupRequest, LookupResponse};
pub use outsource::{ToGuest, ToHost};
