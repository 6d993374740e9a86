//! A host.sock client's frames, with descriptors it attaches, into host-server's stream opening and association channels (outsock_host_server::fuzz::session_one).
#![forbid(unsafe_code)]
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    outsock_host_server::fuzz::session_one(data);
});
