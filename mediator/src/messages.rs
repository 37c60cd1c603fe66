//! The plaintext DIDComm v2 messages the mediator speaks, with no I/O.
//!
//! The mediator builds [`Message`]s (the crate `mpc-did-didcomm` plaintext type); the
//! constructors below build the protocol messages of
//! Coordinate Mediation 2.0, Routing 2.0, Message Pickup 3.0, Trust Ping 2.0, Discover
//! Features 2.0 and Report Problem 2.0 with the field names of those specs.

use serde_json::{json, Value};

/// Protocol message type URIs (PIURI + message name).
pub mod types {
    /// Coordinate Mediation 2.0.
    pub const MEDIATE_REQUEST: &str =
        "https://didcomm.org/coordinate-mediation/2.0/mediate-request";
    /// Coordinate Mediation 2.0.
    pub const MEDIATE_GRANT: &str = "https://didcomm.org/coordinate-mediation/2.0/mediate-grant";
    /// Coordinate Mediation 2.0.
    pub const MEDIATE_DENY: &str = "https://didcomm.org/coordinate-mediation/2.0/mediate-deny";
    /// Coordinate Mediation 2.0.
    pub const RECIPIENT_UPDATE: &str =
        "https://didcomm.org/coordinate-mediation/2.0/recipient-update";
    /// Coordinate Mediation 2.0.
    pub const RECIPIENT_UPDATE_RESPONSE: &str =
        "https://didcomm.org/coordinate-mediation/2.0/recipient-update-response";
    /// Coordinate Mediation 2.0.
    pub const RECIPIENT_QUERY: &str =
        "https://didcomm.org/coordinate-mediation/2.0/recipient-query";
    /// Coordinate Mediation 2.0.
    pub const RECIPIENT: &str = "https://didcomm.org/coordinate-mediation/2.0/recipient";
    /// Routing 2.0.
    pub const FORWARD: &str = "https://didcomm.org/routing/2.0/forward";
    /// Message Pickup 3.0.
    pub const STATUS_REQUEST: &str = "https://didcomm.org/messagepickup/3.0/status-request";
    /// Message Pickup 3.0.
    pub const STATUS: &str = "https://didcomm.org/messagepickup/3.0/status";
    /// Message Pickup 3.0.
    pub const DELIVERY_REQUEST: &str = "https://didcomm.org/messagepickup/3.0/delivery-request";
    /// Message Pickup 3.0.
    pub const DELIVERY: &str = "https://didcomm.org/messagepickup/3.0/delivery";
    /// Message Pickup 3.0.
    pub const MESSAGES_RECEIVED: &str = "https://didcomm.org/messagepickup/3.0/messages-received";
    /// Message Pickup 3.0.
    pub const LIVE_DELIVERY_CHANGE: &str =
        "https://didcomm.org/messagepickup/3.0/live-delivery-change";
    /// Trust Ping 2.0.
    pub const PING: &str = "https://didcomm.org/trust-ping/2.0/ping";
    /// Trust Ping 2.0.
    pub const PING_RESPONSE: &str = "https://didcomm.org/trust-ping/2.0/ping-response";
    /// Discover Features 2.0.
    pub const QUERIES: &str = "https://didcomm.org/discover-features/2.0/queries";
    /// Discover Features 2.0.
    pub const DISCLOSE: &str = "https://didcomm.org/discover-features/2.0/disclose";
    /// Report Problem 2.0.
    pub const PROBLEM_REPORT: &str = "https://didcomm.org/report-problem/2.0/problem-report";
    /// Out-of-Band 2.0.
    pub const OOB_INVITATION: &str = "https://didcomm.org/out-of-band/2.0/invitation";
    /// DIDComm Messaging v2 empty message: a message with nothing but headers, here the
    /// `ack` of a stored forward (spec/mediator.md §2).
    pub const EMPTY: &str = "https://didcomm.org/empty/1.0/empty";
}

/// Whether `msg` asks for an acknowledgement of itself: DIDComm Messaging v2 §ACKs,
/// `please_ack` is an array of message ids where `""` (or the message's own id) means
/// this message.
#[must_use]
pub fn wants_ack(msg: &Message) -> bool {
    msg.extra
        .get("please_ack")
        .and_then(Value::as_array)
        .is_some_and(|ids| {
            ids.iter()
                .filter_map(Value::as_str)
                .any(|id| id.is_empty() || id == msg.id)
        })
}

/// The `ack` of `msg`: an empty message whose `ack` header names `msg.id`, in its thread.
#[must_use]
pub fn ack_of(msg: &Message) -> Message {
    let mut m = reply(types::EMPTY, Value::Object(serde_json::Map::new()), msg);
    m.extra.insert(
        "ack".into(),
        Value::Array(vec![Value::String(msg.id.clone())]),
    );
    m
}

/// The message ids an `ack` header names.
#[must_use]
pub fn acked_ids(msg: &Message) -> Vec<String> {
    msg.extra
        .get("ack")
        .and_then(Value::as_array)
        .map(|ids| {
            ids.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Protocols disclosed by Discover Features 2.0, with the role the mediator plays.
pub const PROTOCOLS: &[(&str, &str)] = &[
    ("https://didcomm.org/coordinate-mediation/2.0", "mediator"),
    ("https://didcomm.org/routing/2.0", "mediator"),
    ("https://didcomm.org/messagepickup/3.0", "mediator"),
    ("https://didcomm.org/trust-ping/2.0", "receiver"),
    ("https://didcomm.org/discover-features/2.0", "responder"),
    ("https://didcomm.org/report-problem/2.0", "notifier"),
];

pub use mpc_did_didcomm::{Attachment, AttachmentData, Message};

/// A new message of type `typ` with `body`, a fresh id and `created_time` now.
#[must_use]
pub fn message(typ: &str, body: Value) -> Message {
    Message::new(mpc_did_didcomm::message::new_id(), typ, body)
        .created_time(mpc_did_didcomm::message::now())
}

/// A reply in the thread of `to_msg`.
#[must_use]
pub fn reply(typ: &str, body: Value, to_msg: &Message) -> Message {
    message(typ, body).thid(to_msg.thread_id())
}

/// Report Problem 2.0 `problem-report`; `pthid` is the thread of the offending message.
#[must_use]
pub fn problem_report(code: &str, comment: &str, offending: Option<&Message>) -> Message {
    let mut m = message(
        types::PROBLEM_REPORT,
        json!({ "code": code, "comment": comment }),
    );
    m.pthid = offending.map(|o| o.thread_id().to_owned());
    m
}

/// An attachment carrying a queued DIDComm message (Pickup 3.0 `delivery`): inline JSON
/// when the bytes are a JSON object (every encrypted DIDComm message is), else base64url.
#[must_use]
pub fn message_attachment(id: &str, bytes: &[u8]) -> Attachment {
    use base64::Engine as _;
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
    use base64::Engine as _;
    if let Some(v) = &a.data.json {
        return serde_json::to_vec(v).ok();
    }
    let b = a.data.base64.as_deref()?.trim_end_matches('=');
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(b)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(b))
        .ok()
}

/// Body field of `live-delivery-change` (request) and of the `status` answering it
/// (acknowledgement) for raw live mode, an mpc-did extension of Pickup 3.0
/// (spec/mediator.md §3.1). Other mediators ignore the unknown field and answer without
/// it, so a client only trusts raw mode when the status says `true`.
pub const RAW_LIVE_FIELD: &str = "mpc_did_raw";

/// Largest queue id a raw push frame can carry (its length is one byte).
pub const RAW_PUSH_MAX_ID: usize = u8::MAX as usize;

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

/// Problem codes (Report Problem 2.0 `code`), spec/mediator.md §4.
pub mod codes {
    /// Not a DIDComm message the mediator can unpack or parse.
    pub const MALFORMED: &str = "e.p.msg.malformed";
    /// Larger than `max_message_bytes`.
    pub const TOO_BIG: &str = "e.p.msg.too-big";
    /// A message type the mediator does not speak.
    pub const UNSUPPORTED: &str = "e.p.msg.unsupported";
    /// Needs authcrypt from the DID named in `from`, and (for pickup and key changes) a grant.
    pub const UNAUTHORIZED: &str = "e.p.req.not-authorized";
    /// The request id was seen before, or the message expired / is too old.
    pub const REPLAY: &str = "e.p.msg.replay";
    /// `forward.next` names no registered key.
    pub const UNKNOWN_RECIPIENT: &str = "e.p.xfer.unknown-recipient";
    /// The recipient's queue is full.
    pub const QUEUE_FULL: &str = "e.p.me.res.storage.queue-full";
    /// Storage failed.
    pub const STORAGE: &str = "e.p.me.res.storage";
    /// Message rate per connection exceeded.
    pub const RATE_LIMITED: &str = "e.p.req.rate-limited";
    /// Live mode requested over a transport that cannot push (Pickup 3.0).
    pub const LIVE_MODE_NOT_SUPPORTED: &str = "e.m.live-mode-not-supported";
    /// A request body field is missing or of the wrong type.
    pub const BAD_REQUEST: &str = "e.p.msg.bad-request";
    /// The sending address already has `max_queued_per_source` messages waiting for this
    /// recipient (spec/mediator.md §6.1).
    pub const SOURCE_QUOTA: &str = "e.p.req.source-quota";
    /// The request body did not arrive in time (`body_timeout_secs`).
    pub const TIMEOUT: &str = "e.p.req.timeout";
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// DIDComm Messaging v2 §ACKs: `""` or the message's own id requests an ack of it;
    /// other ids, a non-array or no header do not.
    #[test]
    fn please_ack_of_this_message() {
        let mut m = message(types::FORWARD, serde_json::json!({}));
        assert!(!wants_ack(&m));
        for (v, want) in [
            (serde_json::json!([""]), true),
            (serde_json::json!([m.id.clone()]), true),
            (serde_json::json!(["some-other-id"]), false),
            (serde_json::json!([]), false),
            (serde_json::json!(""), false),
        ] {
            m.extra.insert("please_ack".into(), v.clone());
            assert_eq!(wants_ack(&m), want, "{v}");
        }
        let ack = ack_of(&m);
        assert_eq!(ack.type_, types::EMPTY);
        assert_eq!(acked_ids(&ack), vec![m.id.clone()]);
        assert_eq!(ack.thid.as_deref(), Some(m.id.as_str()));
    }

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

    #[test]
    fn replies_thread() {
        let req = message(types::PING, json!({}));
        let resp = reply(types::PING_RESPONSE, json!({}), &req);
        assert_eq!(resp.thid.as_deref(), Some(req.id.as_str()));
        let pr = problem_report(codes::REPLAY, "seen", Some(&req));
        assert_eq!(pr.pthid.as_deref(), Some(req.id.as_str()));
        assert_eq!(pr.body["code"], codes::REPLAY);
    }
}
