//! The constants of the virtio-vsock device that its layers share (device id, the host's CID,
//! queue order and size). Its own leaf module so that [`super::connection`], [`super::muxer`],
//! [`super::device`] and [`super::handler`] import them from here rather than from their parent,
//! which re-exports them: imports inside `vsock` point one way, down to this file.

/// virtio device id of vsock.
pub const DEVICE_ID: u32 = 19;
/// The host's CID.
pub const HOST_CID: u64 = 2;
/// Queue order: guest RX (host→guest), guest TX (guest→host), events.
pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
pub const EVT_QUEUE: usize = 2;
pub const QUEUE_SIZE: u16 = 256;
