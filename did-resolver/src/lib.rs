//! Resolve `did:key`, `did:peer` and `did:web` identifiers to typed DID documents.
//!
//! **Owns:** DID syntax ([`Did`], [`DidUrl`]), public-key encodings ([`PublicKey`]:
//! multibase/multicodec, OKP JWK), the typed [`DidDocument`] (verification methods,
//! relationships, `DIDCommMessaging` services), `did:key` ([`key`]), `did:peer` numalgo
//! 0/2/4 ([`peer`]), `did:web` ([`web`]) and
//! the method-independent [`DidResolver`] trait with [`StaticResolver`] and
//! [`UniversalResolver`].
//!
//! **Does not:** hold private keys (the wallet does), sign or encrypt (DIDComm does), or
//! implement DID registration/update. did:key and did:peer resolution do no I/O; only the did:web
//! fetch (`web::WebResolver`, default feature `web`: reqwest and tokio) touches the
//! network, and only public addresses unless told otherwise: a did:web is often named by a
//! stranger (spec/identity.md §3.3). Without `web` the crate does no I/O at all, which is
//! how `mpc-did-didcomm` uses it.
//!
//! ```text
//!   "did:…" ──Did::parse──▶ Did ──method?──┬─ key ──▶ key::resolve (pure) ─────────┐
//!                                          ├─ peer ─▶ peer::resolve (pure; 0, 2, 4) ┤
//!                                          ├─ web ──▶ web::did_web_url ─▶ HTTPS GET │
//!                                          │          (public addresses only, 5 s,  │
//!                                          │           64 KiB, same-host redirects, │
//!                                          │           TTL cache, failure cache,    │
//!                                          │           16 in flight)                │
//!                                          │            └▶ DidDocument::from_json_slice
//!                                          │               + id check ──────────────┤
//!                                          └─ (StaticResolver overlay first) ───────┤
//!                                                                                   ▼
//!                                   DidDocument { verification_method, keyAgreement, service… }
//! ```
//!
//! Spec write-up: `spec/identity.md`.
//!
//! ```
//! use mpc_did_resolver::{key, PublicKey};
//!
//! // A did:key from the did:key spec's test vectors (seed 00…00).
//! let did = "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp";
//! let doc = key::resolve(did)?;
//! let ka = doc.key_agreement_methods();
//! // The X25519 keyAgreement key derived as the did:key spec describes.
//! assert_eq!(ka[0].id, format!("{did}#z6LShs9GGnqk85isEBzzshkuVWrVKsRp24GnDuHk8QWkARMW"));
//! assert!(matches!(ka[0].key, PublicKey::X25519(_)));
//! # Ok::<(), mpc_did_resolver::ResolveError>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

mod did;
mod document;
mod error;
pub mod key;
pub mod peer;
mod public_key;
mod resolver;
pub mod trust;
pub mod web;

pub use did::{Did, DidUrl, MAX_DID_LEN};
pub use document::{
    DidCommService, DidDocument, KeyFormat, Service, VerificationMethod, DIDCOMM_SERVICE_TYPE,
    DID_CONTEXT_V1, JWS2020_CONTEXT_V1, MAX_DOCUMENT_BYTES, MAX_ROUTING_KEYS, MULTIKEY_CONTEXT_V1,
};
pub use error::{DidError, DocumentError, KeyError, PeerError, ResolveError};
pub use public_key::{PublicKey, MULTICODEC_ED25519_PUB, MULTICODEC_X25519_PUB};
pub use resolver::{DidResolver, StaticResolver, UniversalResolver};
#[cfg(feature = "web")]
pub use web::WebResolver;
pub use web::WebResolverConfig;
