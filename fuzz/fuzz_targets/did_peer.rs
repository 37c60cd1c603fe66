//! did:peer resolution (numalgo 0, 2, 4 long and short form) on arbitrary input: never
//! panics; whatever resolves is a document for that DID whose JSON parses back to the
//! same document, and a did:peer:2 rebuilt from its keys resolves to the same keys.
//! Seeds: fuzz/seeds/did_peer (the did:peer spec's examples, PyPI did-peer-2 output,
//! and one of each bad-input class of did-resolver/tests/did_peer.rs).
//! spec/identity.md §"did:peer".
#![no_main]

use libfuzzer_sys::fuzz_target;
use mpc_did_resolver::peer::{self, Purpose};
use mpc_did_resolver::DidDocument;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    for did in [s.to_owned(), format!("did:peer:{s}"), format!("did:peer:2.{s}")] {
        let Ok(doc) = peer::resolve(&did) else { continue };
        assert_eq!(doc.id, did);
        let again = DidDocument::from_json_value(&doc.to_json()).expect("its JSON re-parses");
        assert_eq!(again, doc);
        if let Some(short) = peer::short_form(&did) {
            let sdoc = peer::resolve_short(short, &did).expect("the short form resolves");
            assert_eq!(sdoc.verification_method.len(), doc.verification_method.len());
        }
        if did.starts_with("did:peer:2") {
            // Keys only (services are re-encoded, not byte-identical): same keys back.
            let keys: Vec<_> = doc
                .verification_method
                .iter()
                .map(|vm| (Purpose::Verification, vm.key))
                .collect();
            if let Ok(rebuilt) = peer::did_peer_2(&keys, &[]) {
                if let Ok(d2) = peer::resolve(&rebuilt) {
                    let a: Vec<_> = d2.verification_method.iter().map(|vm| vm.key).collect();
                    let b: Vec<_> = doc.verification_method.iter().map(|vm| vm.key).collect();
                    assert_eq!(a, b);
                }
            }
        }
    }
});
