//! Acknowledgements (DIDComm Messaging v2 §ACKs): a message asks for one with
//! `please_ack`; the answer is an empty message (`…/empty/1.0/empty`) whose `ack` header
//! names the acknowledged ids. The mediator acknowledges a stored forward this way
//! (spec/mediator.md §2).

use serde_json::Value;

use crate::message::{reply, Message};

/// DIDComm Messaging v2 empty message: a message with nothing but headers.
pub const EMPTY_TYPE: &str = "https://didcomm.org/empty/1.0/empty";

/// Whether `msg` asks for an acknowledgement of itself: `please_ack` is an array of
/// message ids where `""` (or the message's own id) means this message.
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
    let mut m = reply(EMPTY_TYPE, Value::Object(serde_json::Map::new()), msg);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::message;

    /// `""` or the message's own id requests an ack of it; other ids, a non-array or no
    /// header do not.
    #[test]
    fn please_ack_of_this_message() {
        let mut m = message(
            crate::protocols::routing::FORWARD_TYPE,
            serde_json::json!({}),
        );
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
        assert_eq!(ack.type_, EMPTY_TYPE);
        assert_eq!(acked_ids(&ack), vec![m.id.clone()]);
        assert_eq!(ack.thid.as_deref(), Some(m.id.as_str()));
    }
}
