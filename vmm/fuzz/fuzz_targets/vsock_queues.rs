//! Fuzz target: arbitrary descriptor chains and packets through the vsock device and muxer.
#![no_main]
#![forbid(unsafe_code)]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    outsock_vmm::devices::virtio::vsock::fuzz::fuzz_one(data);
});
