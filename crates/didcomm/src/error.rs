//! The one error type of this crate, grouped by cause.

/// Everything that can go wrong packing or unpacking a DIDComm message.
///
/// Decryption and authentication failures of any kind (bad tag, wrong key, bad signature,
/// key-unwrap failure, bad padding) are one opaque variant, [`Error::Crypto`], so that a
/// peer cannot learn which check failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // --- input shape ---
    /// The input is larger than the configured limit.
    #[error("message too large: {size} bytes, over the limit of {limit} bytes")]
    TooLarge {
        /// Size of the input in bytes.
        size: usize,
        /// The limit that was applied.
        limit: usize,
    },
    /// The input is not JSON, or not the JSON shape of any DIDComm envelope.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The input is a JWS or JWE in the compact serialisation (`xxx.yyy.zzz`), which
    /// DIDComm does not use.
    #[error(
        "compact {0} serialisation is not a DIDComm message: DIDComm uses the JSON \
         serialisation (general or flattened)"
    )]
    CompactSerialization(&'static str),
    /// A DIDComm service lists more routing keys than [`crate::MAX_ROUTING_KEYS`]: each is
    /// one more `forward` layer, and the packed size grows by about 4/3 per layer
    /// (spec/didcomm.md §5).
    #[error("{count} routing keys: at most {limit} are allowed")]
    TooManyRoutingKeys {
        /// How many the service lists.
        count: usize,
        /// [`crate::MAX_ROUTING_KEYS`].
        limit: usize,
    },
    /// Envelopes nested deeper than the spec allows (anoncrypt(authcrypt(signed(plain)))).
    #[error("envelopes nested too deeply")]
    TooDeep,
    /// A header names an algorithm or encryption we do not implement.
    #[error("unsupported algorithm: {0}")]
    Unsupported(String),

    // --- keys and identities ---
    /// A key identifier is not a DID URL (`did:...#fragment`), or names a key of the wrong type.
    #[error("invalid key id: {0}")]
    InvalidKid(String),
    /// None of the message's recipient keys is one of ours.
    #[error("no secret for any recipient of this message")]
    NoRecipientSecret,
    /// A secret needed to pack (sender key, signing key) is not available.
    #[error("no secret for key {0}")]
    MissingSecret(String),
    /// A DID could not be resolved.
    #[error("cannot resolve {did}: {reason}")]
    Resolve {
        /// The DID being resolved.
        did: String,
        /// Why resolution failed.
        reason: String,
    },
    /// A DID document has no key usable for the operation (keyAgreement X25519,
    /// authentication Ed25519), or the key named is not listed for that purpose.
    #[error("no usable key: {0}")]
    NoKey(String),
    /// The same recipient key appears twice in one envelope.
    #[error("duplicate recipient {0}")]
    DuplicateRecipient(String),

    // --- consistency between layers ---
    /// `skid` and `apu` disagree, or `apv` does not match the recipients.
    #[error("inconsistent JWE header: {0}")]
    HeaderMismatch(&'static str),
    /// The message's `from` is not the DID that authenticated or signed it.
    #[error("sender mismatch: {0}")]
    SenderMismatch(String),
    /// An authcrypt or signed message whose plaintext has no `from`. DIDComm v2.1 makes
    /// `from` REQUIRED for authcrypt and requires it to match the signer of a signed
    /// message, so such a message is refused (spec/didcomm.md §3).
    #[error(
        "the message was {how} by {sender} but does not say who sent it (no \"from\"): \
         DIDComm requires \"from\" in authenticated messages; ask the sender to set it"
    )]
    MissingFrom {
        /// `authcrypted` or `signed`.
        how: &'static str,
        /// The DID that authenticated or signed it.
        sender: String,
    },

    // --- cryptography ---
    /// Decryption or authentication failed (deliberately opaque).
    #[error("decryption or signature verification failed")]
    Crypto,

    // --- protocol messages ---
    /// A protocol message (invitation, forward, ...) does not have the expected shape.
    #[error("invalid {protocol} message: {reason}")]
    Protocol {
        /// The protocol (e.g. "out-of-band 2.0").
        protocol: &'static str,
        /// What is wrong.
        reason: String,
    },
}

impl Error {
    pub(crate) fn malformed(what: impl std::fmt::Display) -> Self {
        Self::Malformed(what.to_string())
    }
}

/// Short for `Result<T, mpc_did_didcomm::Error>`.
pub type Result<T> = std::result::Result<T, Error>;
