//! STUN decoder and Binding server core on arbitrary bytes: never panics,
//! and whatever decodes re-encodes to something that decodes the same.
//! Seeds: fuzz/seeds/stun (RFC 5769 §2.1-2.3 vectors).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mpc_did_rendezvous::{binding, stun};

fuzz_target!(|data: &[u8]| {
    let _ = stun::message_len(data);
    let _ = stun::verify_integrity(data, b"VOkJxbRl1RmTxUk/WvJxBt");
    if let Ok(d) = stun::decode(data) {
        // Attributes we refuse to encode (e.g. an unknown one whose value
        // is too long) are the only acceptable encode failure.
        if let Ok(again) = d.message.encode(Some(b"k"), true) {
            let d2 = stun::decode(&again).expect("our own encoding decodes");
            assert_eq!(d2.message, d.message);
            stun::verify_integrity(&again, b"k").expect("our own integrity verifies");
        }
    }
    let src = "203.0.113.7:40000".parse().expect("literal");
    let local = "198.51.100.1:3478".parse().expect("literal");
    if let Ok(Some(reply)) = binding::answer(data, src, local, Some(local)) {
        stun::decode(&reply).expect("replies decode");
    }
});
