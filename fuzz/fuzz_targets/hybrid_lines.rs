//! The hybrid vsock CONNECT/OK lines: shared-proto's parsers and the VMM muxer's handshake on the VM's socket (outsock_vmm::devices::virtio::vsock::fuzz::hybrid_one).
#![forbid(unsafe_code)]
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    outsock_vmm::devices::virtio::vsock::fuzz::hybrid_one(data);
});
