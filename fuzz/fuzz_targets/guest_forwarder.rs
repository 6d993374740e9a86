//! The guest DNS forwarder: query datagrams from guest programs and frames from host-server (outsock_dns_forwarder::fuzz_one).
#![forbid(unsafe_code)]
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    outsock_dns_forwarder::fuzz_one(data);
});
