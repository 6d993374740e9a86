//! A DNS query through dns-cache's full path (parser, rules, mappings on an in-memory SQLite store, encoder) with an in-process upstream answering from the input (outsock_dns_cache::fuzz::resolve_one).
#![forbid(unsafe_code)]
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    outsock_dns_cache::fuzz::resolve_one(data);
});
