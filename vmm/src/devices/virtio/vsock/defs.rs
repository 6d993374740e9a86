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
/// The size of each queue the device offers. Linux's driver takes it and posts as many RX
/// buffers as the queue holds: with its two descriptors per buffer (6.1: header and 4 KiB of
/// data), 512 buffers, 2 MiB the VMM can fill before the guest has refilled any. With 256
/// (128 buffers, 512 KiB) the VMM ran out of buffers on most of its RX rounds and waited for
/// the guest's refill (`outsock-bench … vm`, IPv6→guest).
pub const QUEUE_SIZE: u16 = 1024;
