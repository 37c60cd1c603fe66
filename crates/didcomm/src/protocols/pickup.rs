//! Message Pickup 3.0 (<https://didcomm.org/messagepickup/3.0/>): a party fetches what its
//! mediator queued for it, in batches or live over a WebSocket, and acknowledges what it
//! took — plus the raw live push, an mpc-did extension of live mode (spec/mediator.md §3.1).
//!
//! The party side is `mpc-did-agent`'s mediator client, the mediator side is
//! `mpc-did-mediator`; both use these constants and codecs.

use base64::Engine as _;
use serde_json::Value;

use crate::message::{Attachment, AttachmentData};

/// Protocol identifier (PIURI).
pub const PIURI: &str = "https://didcomm.org/messagepickup/3.0";
/// Party → mediator: how many messages wait for me?
pub const STATUS_REQUEST_TYPE: &str = "https://didcomm.org/messagepickup/3.0/status-request";
/// Mediator → party: the queue's status (also the answer to a live-mode change).
pub const STATUS_TYPE: &str = "https://didcomm.org/messagepickup/3.0/status";
/// Party → mediator: deliver up to `limit` messages.
pub const DELIVERY_REQUEST_TYPE: &str = "https://didcomm.org/messagepickup/3.0/delivery-request";
/// Mediator → party: queued messages as attachments.
pub const DELIVERY_TYPE: &str = "https://didcomm.org/messagepickup/3.0/delivery";
/// Party → mediator: these ids were taken; the mediator may now delete them.
pub const MESSAGES_RECEIVED_TYPE: &str = "https://didcomm.org/messagepickup/3.0/messages-received";
/// Party → mediator: switch live delivery on or off.
pub const LIVE_DELIVERY_CHANGE_TYPE: &str =
    "https://didcomm.org/messagepickup/3.0/live-delivery-change";

/// The message types of one Message Pickup version (3.0 or 4.0), so that both sides can
/// speak whichever version is in use without matching on strings twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PickupTypes {
    /// Protocol identifier (PIURI).
    pub piuri: &'static str,
    /// `status-request`.
    pub status_request: &'static str,
    /// `status`.
    pub status: &'static str,
    /// `delivery-request`.
    pub delivery_request: &'static str,
    /// `delivery`.
    pub delivery: &'static str,
    /// `messages-received`.
    pub messages_received: &'static str,
    /// `live-delivery-change`.
    pub live_delivery_change: &'static str,
}

/// Message Pickup 3.0's message types.
pub const TYPES: PickupTypes = PickupTypes {
    piuri: PIURI,
    status_request: STATUS_REQUEST_TYPE,
    status: STATUS_TYPE,
    delivery_request: DELIVERY_REQUEST_TYPE,
    delivery: DELIVERY_TYPE,
    messages_received: MESSAGES_RECEIVED_TYPE,
    live_delivery_change: LIVE_DELIVERY_CHANGE_TYPE,
};

/// A Message Pickup version we speak (spec/mediator.md §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub enum PickupVersion {
    /// Message Pickup 3.0 (what every mpc-did mediator speaks).
    #[default]
    V3,
    /// Message Pickup 4.0.
    V4,
}

impl PickupVersion {
    /// Every version we speak, oldest first.
    pub const ALL: [Self; 2] = [Self::V3, Self::V4];

    /// This version's message types.
    #[must_use]
    pub fn types(self) -> &'static PickupTypes {
        match self {
            Self::V3 => &TYPES,
            Self::V4 => &super::pickup_v4::TYPES,
        }
    }

    /// The version a message type belongs to, and the message's name (`status-request`,
    /// …); `None` for another protocol.
    #[must_use]
    pub fn of_type(type_: &str) -> Option<(Self, &str)> {
        Self::ALL.into_iter().find_map(|v| {
            let name = type_.strip_prefix(v.types().piuri)?.strip_prefix('/')?;
            Some((v, name))
        })
    }

    /// Whether `type_` is the `delivery` of any version we speak.
    #[must_use]
    pub fn is_delivery(type_: &str) -> bool {
        Self::ALL.into_iter().any(|v| v.types().delivery == type_)
    }
}

/// Body field of `live-delivery-change` (request) and of the `status` answering it
/// (acknowledgement) for raw live mode, an mpc-did extension of Pickup 3.0
/// (spec/mediator.md §3.1). Other mediators ignore the unknown field and answer without
/// it, so a client only trusts raw mode when the status says `true`.
pub const RAW_LIVE_FIELD: &str = "mpc_did_raw";

/// Largest queue id a raw push frame can carry (its length is one byte).
pub const RAW_PUSH_MAX_ID: usize = u8::MAX as usize;

/// An attachment carrying a queued DIDComm message (Pickup 3.0 and 4.0 `delivery`): inline JSON
/// when the bytes are a JSON object (every encrypted DIDComm message is), else base64url.
#[must_use]
pub fn message_attachment(id: &str, bytes: &[u8]) -> Attachment {
    let mut a = match serde_json::from_slice::<Value>(bytes) {
        Ok(v) if v.is_object() => Attachment::json(v),
        _ => {
            let mut a = Attachment::json(Value::Null);
            a.data = AttachmentData {
                base64: Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)),
                ..AttachmentData::default()
            };
            a
        }
    };
    a.id = Some(id.to_owned());
    a
}

/// The bytes an attachment carries (inline JSON serialized, or base64/base64url decoded).
#[must_use]
pub fn attachment_bytes(a: &Attachment) -> Option<Vec<u8>> {
    if let Some(v) = &a.data.json {
        return serde_json::to_vec(v).ok();
    }
    let b = a.data.base64.as_deref()?.trim_end_matches('=');
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(b)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(b))
        .ok()
}

/// Why a raw live push frame (spec/mediator.md §3.1) cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RawPushError {
    /// The frame is empty or ends inside the id.
    #[error("raw push frame truncated")]
    Truncated,
    /// The id is empty or not printable ASCII.
    #[error("raw push frame has a bad message id")]
    BadId,
    /// No message bytes after the id.
    #[error("raw push frame carries no message")]
    Empty,
}

/// Encodes one raw live push: `id_len:u8 || id (ASCII) || message bytes`
/// (spec/mediator.md §3.1). `None` if `id` is empty, longer than [`RAW_PUSH_MAX_ID`] or
/// not printable ASCII (the mediator then pushes that message wrapped).
#[must_use]
pub fn encode_raw_push(id: &str, bytes: &[u8]) -> Option<Vec<u8>> {
    let len = u8::try_from(id.len()).ok()?;
    if !valid_id(id.as_bytes()) {
        return None;
    }
    let mut out = Vec::with_capacity(1 + id.len() + bytes.len());
    out.push(len);
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(bytes);
    Some(out)
}

/// Decodes a raw live push into (queue id, message bytes).
///
/// # Errors
/// [`RawPushError`] for a frame that is truncated, has an empty or non-ASCII id, or
/// carries no message.
pub fn decode_raw_push(frame: &[u8]) -> Result<(String, &[u8]), RawPushError> {
    let (&len, rest) = frame.split_first().ok_or(RawPushError::Truncated)?;
    let len = usize::from(len);
    if rest.len() < len {
        return Err(RawPushError::Truncated);
    }
    let (id, bytes) = rest.split_at(len);
    if !valid_id(id) {
        return Err(RawPushError::BadId);
    }
    if bytes.is_empty() {
        return Err(RawPushError::Empty);
    }
    let id = std::str::from_utf8(id).map_err(|_| RawPushError::BadId)?;
    Ok((id.to_owned(), bytes))
}

/// Queue ids in raw frames: non-empty printable ASCII (store ids are hex).
fn valid_id(id: &[u8]) -> bool {
    !id.is_empty() && id.iter().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn attachments_carry_json_and_binary() {
        let jwe = br#"{"protected":"x","ciphertext":"y"}"#;
        let a = message_attachment("m1", jwe);
        assert_eq!(a.id.as_deref(), Some("m1"));
        assert!(a.data.json.is_some());
        let back: Value = serde_json::from_slice(&attachment_bytes(&a).unwrap()).unwrap();
        assert_eq!(back, serde_json::from_slice::<Value>(jwe).unwrap());
        let a = message_attachment("m2", b"eyJhbGciOi.x.y");
        assert_eq!(attachment_bytes(&a).unwrap(), b"eyJhbGciOi.x.y");
    }

    // spec/mediator.md §3.1: the raw push frame layout.
    #[test]
    fn raw_push_frames() {
        let f = encode_raw_push("ab12", b"{\"ciphertext\":1}").unwrap();
        assert_eq!(f[0], 4);
        assert_eq!(&f[1..5], b"ab12");
        let (id, bytes) = decode_raw_push(&f).unwrap();
        assert_eq!(id, "ab12");
        assert_eq!(bytes, b"{\"ciphertext\":1}");
        assert_eq!(decode_raw_push(b""), Err(RawPushError::Truncated));
        assert_eq!(decode_raw_push(b"\x05abc"), Err(RawPushError::Truncated));
        assert_eq!(decode_raw_push(b"\x00xyz"), Err(RawPushError::BadId));
        assert_eq!(decode_raw_push(b"\x02a\xffxyz"), Err(RawPushError::BadId));
        assert_eq!(decode_raw_push(b"\x02a b"), Err(RawPushError::BadId));
        assert_eq!(decode_raw_push(b"\x03abc"), Err(RawPushError::Empty));
        assert!(encode_raw_push("", b"x").is_none());
        assert!(encode_raw_push(&"a".repeat(256), b"x").is_none());
        assert!(encode_raw_push("é", b"x").is_none());
        assert!(encode_raw_push(&"a".repeat(255), b"x").is_some());
    }

    proptest::proptest! {
        // spec/mediator.md §3.1: encode/decode round trip; decode never panics.
        #[test]
        fn raw_push_round_trip(id in "[!-~]{1,255}", bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 1..512)) {
            let f = encode_raw_push(&id, &bytes).unwrap();
            let (i, b) = decode_raw_push(&f).unwrap();
            proptest::prop_assert_eq!(i, id);
            proptest::prop_assert_eq!(b, &bytes[..]);
        }

        #[test]
        fn raw_push_decode_total(frame in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            let _ = decode_raw_push(&frame);
        }
    }
}
