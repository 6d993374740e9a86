//! DNS query bytes into dns-cache's UDP fast path: the allocation-free reader, REFUSED, the reply cache (outsock_dns_cache::fuzz::fast_one).
#![forbid(unsafe_code)]
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    outsock_dns_cache::fuzz::fast_one(data);
});
