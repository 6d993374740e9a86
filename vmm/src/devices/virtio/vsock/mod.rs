//! virtio-vsock (device type 19) with its host side on Unix sockets, in Firecracker's "hybrid"
//! convention (vmm-notes §5):
//!
//! - a guest connection to CID 2 port P becomes a new Unix stream to host-server's socket, on
//!   which the VMM first writes a `VmHello { vm, cid, port: P }` frame — before any guest byte,
//!   so a guest can never speak for another VM;
//! - a host process connects to the VM's own Unix socket and writes `CONNECT <port>\n`; once the
//!   guest accepts on that port the VMM answers `OK <host port>\n` and the stream is bridged.
//!
//! Layers: [`packet`] (the 44-byte header as plain data), [`connection`] (one bridged stream:
//! state, credit, bounded buffers), [`muxer`] (routing, the listener, the RX work queue, the
//! backend epoll), [`device`] (descriptor chains in guest memory ↔ the muxer). Everything but
//! the event glue is unit-tested on plain memory and socket pairs.

pub mod connection;
pub mod device;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz;
pub mod muxer;
pub mod packet;

pub use device::VsockDevice;
pub use muxer::{Muxer, MuxerConfig};

/// virtio device id of vsock.
pub const DEVICE_ID: u32 = 19;
/// The host's CID.
pub const HOST_CID: u64 = 2;
/// Queue order: guest RX (host→guest), guest TX (guest→host), events.
pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
pub const EVT_QUEUE: usize = 2;
pub const QUEUE_SIZE: u16 = 256;
#[cfg(test)]
mod tests;
