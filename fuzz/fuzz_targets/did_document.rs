//! DID document parsing on arbitrary bytes: never panics, and a parsed document
//! serialises to JSON that parses back to the same typed document.
//! Seeds: fuzz/seeds/did_document (did:key spec vector documents, a did:web document with
//! a DIDComm service). spec/identity.md §1.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mpc_did_resolver::DidDocument;

fuzz_target!(|data: &[u8]| {
    if let Ok(doc) = DidDocument::from_json_slice(data) {
        let _ = doc.key_agreement_methods();
        let _ = doc.authentication_methods();
        let _ = doc.didcomm_services();
        let json = doc.to_json().to_string().into_bytes();
        if json.len() <= mpc_did_resolver::MAX_DOCUMENT_BYTES {
            let again = DidDocument::from_json_slice(&json).expect("our own JSON parses");
            assert_eq!(again, doc);
        }
    }
});
