//! The vsock device behind its virtio-mmio transport driven by a guest: descriptor chains, host traffic, MMIO reads and writes (outsock_vmm::devices::virtio::vsock::fuzz::fuzz_one).
#![forbid(unsafe_code)]
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    outsock_vmm::devices::virtio::vsock::fuzz::fuzz_one(data);
});
