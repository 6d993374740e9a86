//! The hybrid vsock CONNECT/OK lines: shared-proto's parsers and the VMM muxer's handshake on the VM's socket (outsock_vmm::devices::virtio::vsock::fuzz::hybrid_one).
#![deny(unsafe_code)]
#![no_main]

libfuzzer_sys::fuzz_target!(
    init: ignore_sigpipe(),
    |data: &[u8]| {
    outsock_vmm::devices::virtio::vsock::fuzz::hybrid_one(data);
});

/// The daemons are Rust programs, whose runtime ignores SIGPIPE before `main`, so a write to a
/// closed socket is EPIPE there; libFuzzer's `main` is C and leaves it fatal (the process would
/// end silently, as the first campaign's vsock_device run did). Ignore it as they do.
#[allow(unsafe_code)]
fn ignore_sigpipe() {
    // SAFETY: setting a signal's disposition to SIG_IGN, before any thread of ours starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}
