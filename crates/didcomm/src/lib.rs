//! DIDComm Messaging v2: envelopes (plaintext, signed, anoncrypt, authcrypt) and the
//! protocol messages mpc-did speaks, with no I/O.
//!
//! **Owns:** the JOSE layer DIDComm needs ([`jose`]: JWE ECDH-ES+A256KW and
//! ECDH-1PU+A256KW over X25519 with A256CBC-HS512 / A256GCM / XC20P, JWS EdDSA), the
//! plaintext [`Message`], the layer rules and sender checks of packing and unpacking
//! ([`envelope`]), and every DIDComm protocol we speak, defined once for both sides
//! ([`protocols`]: Out-of-Band 2.0, Coordinate Mediation 2.0 and 3.0, Routing 2.0 `forward`,
//! Message Pickup 3.0 and 4.0 with the raw live push codec, Trust Ping 2.0, Discover Features 2.0,
//! Report Problem 2.0, ACKs; invitation QR codes behind the feature `qr`, off by default).
//!
//! **Does not:** touch the network or disk, resolve DIDs itself (it asks a
//! [`mpc_did_resolver::DidResolver`]), or store keys (it asks a [`SecretsResolver`]).
//! Transport (HTTP, WebSocket, mediators) is the caller's business.
//!
//! ```text
//!  pack:   Message ──(sign_by?)── JWS ──(from?)── JWE authcrypt ──(protect_sender?)── JWE anoncrypt
//!                                  │                 │ keys: DidResolver (recipient keyAgreement,
//!                                  │                 │       sender's own kid), SecretsResolver
//!                                  └─────────────────┴──(routing keys?)── forward ─▶ JWE to mediator
//!
//!  unpack: bytes ─size limit─▶ Envelope::parse ─┬─ Encrypted(Jwe) ─ our kid's secret (+ skid's key) ─┐
//!                                               ├─ Signed(Jws) ─── signer's authentication key ──────┤
//!                                               └─ Plain(Message) ◀── next layer ◀─────────────────────┘
//!          then: from == skid DID == signer DID, layer order as the spec allows ─▶ (Message, UnpackMetadata)
//! ```
//!
//! The sans-I/O core is [`Envelope::parse`] with [`jose::Jwe::decrypt`] /
//! [`jose::Jws::verify`]: each layer tells which kids it needs and takes raw keys. The
//! async [`pack_encrypted`], [`pack_signed`] and [`unpack`] drive it with the resolvers.
//! Every decryption or signature failure is the one opaque [`Error::Crypto`].
//!
//! ```
//! # tokio_test_block_on(async {
//! use mpc_did_didcomm::{pack_encrypted, unpack, Message, PackOptions, SecretStore, UnpackOptions};
//! use mpc_did_resolver::{key, StaticResolver};
//!
//! // Two did:key identities (their keys would normally come from the wallet).
//! let mut alice_keys = SecretStore::new();
//! let alice = alice_keys.insert_did_key(&ed25519_dalek::SigningKey::from_bytes(&[1; 32]));
//! let mut bob_keys = SecretStore::new();
//! let bob = bob_keys.insert_did_key(&ed25519_dalek::SigningKey::from_bytes(&[2; 32]));
//! // Any DidResolver works; did:key documents need no network.
//! let resolver = StaticResolver::new();
//! resolver.insert(key::resolve(&alice).unwrap());
//! resolver.insert(key::resolve(&bob).unwrap());
//!
//! let msg = Message::new("1", "https://didcomm.org/trust-ping/2.0/ping", serde_json::json!({}))
//!     .from(alice.clone())
//!     .to(bob.clone());
//! // Authcrypt from Alice to Bob.
//! let packed = pack_encrypted(&msg, &bob, Some(&alice), None, &resolver, &alice_keys,
//!                             &PackOptions::default()).await?;
//! let (got, meta) = unpack(packed.message.as_bytes(), &resolver, &bob_keys,
//!                          &UnpackOptions::default()).await?;
//! assert_eq!(got, msg);
//! assert!(meta.encrypted && meta.authenticated);
//! # Ok::<(), mpc_did_didcomm::Error>(())
//! # }).unwrap();
//! # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
//! # }
//! ```
//!
//! Spec write-up (algorithms, reasons, test vectors, what is not supported):
//! `spec/didcomm.md`.
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod ecdh_cache;
pub mod envelope;
pub mod error;
pub mod jose;
pub mod message;
pub mod protocols;
pub mod secrets;

pub use ecdh_cache::StaticEcdhCache;
pub use envelope::{
    did_of, pack_encrypted, pack_encrypted_with, pack_plaintext, pack_signed, unpack, unpack_with,
    wrap_in_forward, wrap_in_forward_with, Envelope, PackOptions, PackedMessage, UnpackMetadata,
    UnpackOptions, WrappedForward, DEFAULT_MAX_MESSAGE_SIZE,
};
pub use error::{Error, Result};
pub use jose::ContentAlg;
pub use message::{Attachment, AttachmentData, Message};
pub use mpc_did_resolver::MAX_ROUTING_KEYS;
pub use protocols::oob::Invitation;
pub use protocols::routing::ForwardMessage;
pub use secrets::{Secret, SecretStore, SecretsResolver};
