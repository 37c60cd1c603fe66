//! DID / DID URL syntax and multibase key decoding on arbitrary input: never panics, and
//! whatever parses prints back to itself and re-parses to the same value.
//! Seeds: fuzz/seeds/did_parse (did:key spec vectors, did:web examples).
//! spec/identity.md §1–2.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mpc_did_resolver::{key, Did, DidUrl, PublicKey};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(did) = Did::parse(s) {
        assert_eq!(did.as_str(), s);
        let again = Did::parse(&did.to_string()).expect("a parsed DID re-parses");
        assert_eq!(again, did);
        assert_eq!(format!("did:{}:{}", did.method(), did.method_specific_id()), s);
        // Method resolvers on a syntactically valid DID: typed errors only.
        let _ = key::resolve(s);
        let _ = mpc_did_resolver::web::did_web_url(&did);
    }
    if let Ok(url) = DidUrl::parse(s) {
        let _ = DidUrl::parse(&url.to_string()).expect("a printed DID URL re-parses");
    }
    if let Ok(k) = PublicKey::from_multibase(s) {
        assert_eq!(PublicKey::from_multibase(&k.to_multibase()), Ok(k));
        assert_eq!(PublicKey::from_jwk(&k.to_jwk()), Ok(k));
    }
    let _ = PublicKey::from_base58(s, false);
});
