//! Error types, one enum per protocol, grouped by cause.

use thiserror::Error;

/// Errors of the STUN codec and Binding transactions.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StunError {
    // --- framing (RFC 8489 §5, §6) ---
    /// Fewer bytes than the header or an attribute needs.
    #[error("STUN message truncated")]
    Truncated,
    /// Longer than [`crate::stun::MAX_MESSAGE_LEN`].
    #[error("STUN message too long")]
    TooLong,
    /// The two most significant bits are not zero (§5).
    #[error("not a STUN message (top bits set)")]
    NotStun,
    /// Bytes 4..8 are not 0x2112A442 (§5).
    #[error("bad STUN magic cookie")]
    BadMagicCookie,
    /// The header length is not a multiple of 4 (§5).
    #[error("STUN length not a multiple of 4")]
    BadLength,
    /// The header length disagrees with the bytes received.
    #[error("STUN length does not match the message")]
    LengthMismatch,

    // --- attributes (§14) ---
    /// An attribute (with its padding) runs past the end of the message.
    #[error("STUN attribute overruns the message")]
    AttributeOverrun,
    /// A known attribute with a malformed value (type given).
    #[error("malformed STUN attribute {0:#06x}")]
    BadAttribute(u16),
    /// More than [`crate::stun::MAX_ATTRIBUTES`] attributes.
    #[error("too many STUN attributes")]
    TooManyAttributes,
    /// Something follows FINGERPRINT (§14.7: it MUST be last).
    #[error("STUN FINGERPRINT is not the last attribute")]
    FingerprintNotLast,
    /// FINGERPRINT present but wrong.
    #[error("bad STUN FINGERPRINT")]
    BadFingerprint,

    // --- authentication ---
    /// MESSAGE-INTEGRITY missing or wrong (deliberately one opaque variant).
    #[error("STUN authentication failed")]
    AuthenticationFailed,

    // --- transactions ---
    /// The server answered with an error response (ERROR-CODE, 0 if absent).
    #[error("STUN error response {0}")]
    ErrorResponse(u16),
    /// A response we cannot use (no mapped address, unknown
    /// comprehension-required attribute).
    #[error("unusable STUN response")]
    UnexpectedMessage,

    // --- local misuse ---
    /// A message we were asked to build cannot be encoded.
    #[error("cannot encode STUN message: {0}")]
    Encode(&'static str),
}

/// Errors of the relay protocol and the relay server core.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RelayError {
    // --- framing ---
    /// A frame announces a body longer than [`crate::relay::MAX_FRAME_LEN`].
    #[error("relay frame too large")]
    FrameTooLarge,
    /// Unknown frame type for this direction.
    #[error("unknown relay frame type {0:#04x}")]
    UnknownFrameType(u8),
    /// The body does not parse as the frame type says.
    #[error("malformed relay frame")]
    Malformed,
    /// A value cannot be encoded (string too long, payload too large).
    #[error("cannot encode relay frame: {0}")]
    Encode(&'static str),

    // --- authentication ---
    /// Bad signature, stale timestamp, wrong challenge or unknown key:
    /// deliberately one opaque variant.
    #[error("relay authentication failed")]
    AuthenticationFailed,

    // --- protocol state ---
    /// A frame other than ClientAuth before authentication.
    #[error("relay client not authenticated")]
    NotAuthenticated,
    /// The connection id is not (or no longer) in the client table.
    #[error("unknown relay connection")]
    UnknownConnection,
    /// The server is at its client limit.
    #[error("relay server full")]
    TooManyClients,
    /// The connection's source (IP address, IPv6 /64) is at its connection limit.
    #[error("too many relay connections from this address")]
    TooManyFromSource,
    /// The relay closed the connection with this error code.
    #[error("relay closed the connection ({0:?})")]
    Closed(crate::relay::ErrorCode),
    /// A frame the client did not expect in its state (client side).
    #[error("unexpected relay frame")]
    UnexpectedFrame,
    /// The challenge names another relay than the one we meant to reach.
    #[error("relay identity mismatch")]
    WrongRelay,
}

/// Errors of the candidate exchange format and the check planner.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CandidateError {
    /// JSON that does not parse as a candidate set.
    #[error("malformed candidate set: {0}")]
    Json(String),
    /// A parsed value outside its limits (count, lengths, version).
    #[error("invalid candidate set: {0}")]
    Invalid(&'static str),
}
