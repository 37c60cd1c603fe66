//! The crate's error type, grouped by cause (STYLE.md §3).

/// Everything that can go wrong in the session core.
///
/// Every authentication failure — a tampered, truncated, replayed, reordered or foreign
/// record, a wrong key, a wrong prologue — is the single opaque [`SessionError::Decrypt`]:
/// the cause is deliberately not reported (spec/session.md §5.3).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionError {
    /// A record or handshake message did not authenticate (opaque by design).
    #[error("decryption failed")]
    Decrypt,

    /// A record or frame was malformed after it authenticated, or a record header was
    /// malformed before decryption (length out of range).
    #[error("malformed {0}")]
    Malformed(&'static str),

    /// The peer broke a rule of the transport protocol (spec/session.md §6): a gap in a
    /// stream, data after FIN, a stream id of the wrong parity, a missing RESUME, ...
    #[error("protocol violation: {0}")]
    Protocol(&'static str),

    /// A configured limit was exceeded (too many streams, a too large DIDComm body field).
    #[error("limit exceeded: {0}")]
    Limit(&'static str),

    /// The operation is not valid in the current state (sending on a finished stream,
    /// anything after close, a handshake message out of turn).
    #[error("invalid state: {0}")]
    State(&'static str),

    /// The handshake could not be set up: bad key length, bad parameters, a DIDComm body that
    /// does not match the session it claims to belong to.
    #[error("handshake setup: {0}")]
    Setup(&'static str),

    /// The frame counter space is exhausted (2^64 - 1 records); the session must be replaced.
    #[error("frame counter exhausted")]
    Exhausted,
}

/// Shorthand used throughout the crate.
pub type Result<T> = std::result::Result<T, SessionError>;
