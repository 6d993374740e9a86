//! virtio-vsock (device type 19) with its host side on Unix sockets, in Firecracker's "hybrid"
//! convention (vmm-notes §5):
//!
//! - a guest connection to CID 2 port P becomes a new Unix stream to host-server's socket, on
//!   which the VMM first writes a `VmHello { vm, cid, port: P }` frame — before any guest byte,
//!   so a guest can never speak for another VM; the hello says the VMM takes sockets, and
//!   when host-server answers an outbound connect with the connected IPv6 socket attached
//!   (SCM_RIGHTS), the guest connection is bridged straight to that socket (one copy each
//!   way) while the Unix stream stays open, unread, until the connection ends, so that
//!   host-server knows when to give back its pins and limits (see [`connection`]);
//! - a host process connects to the VM's own Unix socket and writes `CONNECT <port>\n`; once the
//!   guest accepts on that port the VMM answers `OK <host port>\n` and the stream is bridged
//!   (host-server's first frame, `Inbound`, may bring the accepted socket, as above);
//! - a guest listener's companion stream (its `Listen` request's stream, which host-server
//!   holds while the listener lives), and a guest UDP server's (its association's stream),
//!   outlive host-server: when its host side ends, the VMM connects again with back-off and
//!   registers the same request again, unseen by the guest (see [`muxer`]); a UDP server's
//!   frames are counted both ways so its stream is never left mid-frame (see [`frames`]).
//!
//! Layers, each importing only those before it: [`defs`] (the shared constants, re-exported
//! here), [`packet`] (the 44-byte header as plain data), [`iov`] (one vectored receive into
//! several guest buffers: the device's only `unsafe`), [`frames`] (frame boundaries on a UDP
//! server's stream, plain data), [`connection`] (one bridged stream:
//! state, credit, bounded buffers), [`muxer`] (routing, the listener, the RX work queue, the
//! backend epoll), [`device`] (descriptor chains in guest memory ↔ the muxer), [`handler`]
//! (the event-loop subscriber: queue kicks and backend readiness into the device). Everything
//! but the event glue is unit-tested on plain memory and socket pairs (`tests.rs`, with the
//! fake guest driver of `fuzz.rs`).

pub mod connection;
pub mod defs;
pub mod device;
pub mod frames;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz;
pub mod handler;
#[allow(unsafe_code)]
pub mod iov;
pub mod muxer;
pub mod packet;

pub use defs::{DEVICE_ID, EVT_QUEUE, HOST_CID, QUEUE_SIZE, RX_QUEUE, TX_QUEUE};
pub use device::VsockDevice;
pub use handler::VsockHandler;
pub use muxer::{Muxer, MuxerConfig};

#[cfg(test)]
mod tests;
