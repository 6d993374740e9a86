//! Fuzzes every frame decoder of shared-proto: arbitrary bytes must give a message or a typed
//! error, never a panic, and a message that decodes must re-encode to the bytes it came from.
#![forbid(unsafe_code)]
#![no_main]

use libfuzzer_sys::fuzz_target;
use shared_proto::{decode, to_vec, LookupRequest, LookupResponse, Message, ToGuest, ToHost};

fn check<M: Message>(data: &[u8]) {
    if let Ok(Some((msg, used))) = decode::<M>(data) {
        let again = to_vec(&msg).expect("a decoded message is below the size limit");
        assert_eq!(again, &data[..used], "re-encoding changed the frame");
    }
}

fuzz_target!(|data: &[u8]| {
    check::<ToHost>(data);
    check::<ToGuest>(data);
    check::<LookupRequest>(data);
    check::<LookupResponse>(data);
});
