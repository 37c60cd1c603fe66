//! `did:key` (W3C CCG "The did:key Method" v0.9): the DID is the multibase public key, so
//! resolution is a pure function.
//!
//! For an Ed25519 key (`did:key:z6Mk…`) the document has the Ed25519 method (authentication,
//! assertionMethod, capabilityInvocation, capabilityDelegation) and an X25519 keyAgreement
//! method derived from it as the spec's "Encryption Method Creation Algorithm" says: the
//! Edwards point is mapped to Montgomery form (u = (1 + y) / (1 − y), RFC 7748 §4.1) and
//! multibase-encoded with the `x25519-pub` multicodec; its id is `did:key:<ed>#<x25519 mb>`.
//! For an X25519 key (`did:key:z6LS…`) the document has only the keyAgreement method.
//! Methods are of type `Multikey` with `publicKeyMultibase`, as in the spec's current
//! examples.

use curve25519_dalek::edwards::CompressedEdwardsY;
use serde_json::json;
use sha2::{Digest as _, Sha512};
use zeroize::Zeroize as _;

use crate::did::Did;
use crate::document::{DidDocument, VerificationMethod, DID_CONTEXT_V1, MULTIKEY_CONTEXT_V1};
use crate::error::{KeyError, ResolveError};
use crate::public_key::PublicKey;

/// Resolves a `did:key` to its DID document (no I/O).
///
/// # Errors
/// [`ResolveError::InvalidDid`] if not a DID, [`ResolveError::UnsupportedMethod`] if not
/// `did:key`, [`ResolveError::Key`] if the key does not decode, is of an unsupported type
/// (e.g. secp256k1 `zQ3s…`), or is not a valid Ed25519 point.
pub fn resolve(did: &str) -> Result<DidDocument, ResolveError> {
    let parsed = Did::parse(did)?;
    if parsed.method() != "key" {
        return Err(ResolveError::UnsupportedMethod(parsed.method().to_owned()));
    }
    let mb = parsed.method_specific_id();
    let key = PublicKey::from_multibase(mb)?;
    // The DID must be the canonical encoding of its key, so one key has one DID.
    if key.to_multibase() != mb {
        return Err(ResolveError::InvalidMethodSpecificId {
            method: "key",
            reason: "not the canonical multibase encoding of its key".to_owned(),
        });
    }
    let mut doc = DidDocument::new(did);
    doc.context = json!([DID_CONTEXT_V1, MULTIKEY_CONTEXT_V1]);
    match key {
        PublicKey::Ed25519(ed) => {
            let x = ed25519_to_x25519_public(&ed).ok_or(KeyError::InvalidPoint("Ed25519"))?;
            let ed_id = format!("{did}#{mb}");
            let x_key = PublicKey::X25519(x);
            let x_id = format!("{did}#{}", x_key.to_multibase());
            doc.verification_method
                .push(VerificationMethod::multikey(&ed_id, did, key));
            doc.verification_method
                .push(VerificationMethod::multikey(&x_id, did, x_key));
            doc.authentication.push(ed_id.clone());
            doc.assertion_method.push(ed_id.clone());
            doc.capability_invocation.push(ed_id.clone());
            doc.capability_delegation.push(ed_id);
            doc.key_agreement.push(x_id);
        }
        PublicKey::X25519(_) => {
            let x_id = format!("{did}#{mb}");
            doc.verification_method
                .push(VerificationMethod::multikey(&x_id, did, key));
            doc.key_agreement.push(x_id);
        }
    }
    Ok(doc)
}

/// `did:key:z6Mk…` for an Ed25519 public key.
pub fn did_from_ed25519(pk: &[u8; 32]) -> String {
    format!("did:key:{}", PublicKey::Ed25519(*pk).to_multibase())
}

/// `did:key:z6LS…` for an X25519 public key.
pub fn did_from_x25519(pk: &[u8; 32]) -> String {
    format!("did:key:{}", PublicKey::X25519(*pk).to_multibase())
}

/// Maps an Ed25519 public key to the X25519 public key of the same secret (the birational
/// map of RFC 7748 §4.1, u = (1 + y) / (1 − y)). `None` if the bytes are not a valid point
/// or the point has small order (such a key has no usable secret).
pub fn ed25519_to_x25519_public(pk: &[u8; 32]) -> Option<[u8; 32]> {
    let point = CompressedEdwardsY(*pk).decompress()?;
    if point.is_small_order() {
        return None;
    }
    Some(point.to_montgomery().to_bytes())
}

/// The X25519 secret scalar that belongs to an Ed25519 seed: the first 32 bytes of
/// SHA-512(seed), clamped (RFC 8032 §5.1.5 steps 1–2; RFC 7748 §5 clamping). Its public key
/// equals [`ed25519_to_x25519_public`] of the seed's Ed25519 public key, which is how the
/// did:key spec's `privateKeyBase58` X25519 vectors are made.
pub fn x25519_secret_from_ed25519_seed(seed: &[u8; 32]) -> [u8; 32] {
    let mut h: [u8; 64] = Sha512::digest(seed).into();
    let mut out = [0u8; 32];
    out.copy_from_slice(&h[..32]);
    h.zeroize();
    out[0] &= 248;
    out[31] &= 127;
    out[31] |= 64;
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ed25519_did_key_document_shape() {
        let did = "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp";
        let d = resolve(did).unwrap();
        assert_eq!(d.id, did);
        assert_eq!(d.verification_method.len(), 2);
        let ka = d.key_agreement_methods();
        assert_eq!(ka.len(), 1);
        assert!(ka[0].id.starts_with(&format!("{did}#z6LS")));
        assert_eq!(
            d.authentication_methods()[0].id,
            format!("{did}#z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp")
        );
    }

    #[test]
    fn rejections_are_typed() {
        assert!(
            matches!(resolve("did:web:example.com"), Err(ResolveError::UnsupportedMethod(m)) if m == "web")
        );
        assert!(matches!(
            resolve("not a did"),
            Err(ResolveError::InvalidDid(_))
        ));
        assert!(matches!(
            resolve("did:key:zQ3shokFTS3brHcDQrn82RUDfCZESWL1ZdCEJwekUDPQiYBme"),
            Err(ResolveError::Key(KeyError::UnsupportedCodec(0xe7)))
        ));
        assert!(matches!(
            resolve("did:key:uAAAA"),
            Err(ResolveError::Key(KeyError::UnsupportedMultibase('u')))
        ));
        // The identity point (small order) is refused.
        let mut ident = [0u8; 32];
        ident[0] = 1;
        assert!(matches!(
            resolve(&did_from_ed25519(&ident)),
            Err(ResolveError::Key(KeyError::InvalidPoint(_)))
        ));
        // Non-canonical base58 (leading '1' = extra zero byte) is refused.
        assert!(resolve("did:key:z16MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp").is_err());
    }
}
