//! Fuzz Out-of-Band 2.0 invitation decoding (URL with `_oob`, or JSON) and the plaintext
//! message parser under it. Must never panic; a decoded invitation must re-encode and
//! decode to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mpc_did_didcomm::{Invitation, Message};

fuzz_target!(|data: &[u8]| {
    let _ = Message::from_json(data);
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(inv) = Invitation::decode(text) {
            let url = inv.to_url("https://didcomm.invalid/oob").expect("encode");
            assert_eq!(Invitation::decode(&url).expect("re-decode"), inv);
        }
    }
});
