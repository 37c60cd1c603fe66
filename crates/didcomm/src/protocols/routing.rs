//! Routing 2.0 `forward` (<https://identity.foundation/didcomm-messaging/spec/#routing-protocol-20>).

use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::message::{new_id, Attachment, Message};

/// Message type of a forward.
pub const FORWARD_TYPE: &str = "https://didcomm.org/routing/2.0/forward";
const PROTOCOL: &str = "routing 2.0";

/// A mediator's instruction: deliver the attached message to `next`.
#[derive(Debug, Clone, PartialEq)]
pub struct ForwardMessage {
    /// Message id.
    pub id: String,
    /// DID or key id of the next hop (the final recipient or the next mediator).
    pub next: String,
    /// The message to deliver, still encrypted for `next`.
    pub forwarded: Value,
    /// Optional expiry (seconds since the epoch).
    pub expires_time: Option<u64>,
}

#[derive(Deserialize)]
struct Body {
    next: String,
}

impl ForwardMessage {
    /// A forward of `forwarded` to `next`, with a fresh id.
    pub fn new(next: impl Into<String>, forwarded: Value) -> Self {
        Self {
            id: new_id(),
            next: next.into(),
            forwarded,
            expires_time: None,
        }
    }

    /// As a plaintext message (to be anoncrypted to the mediator).
    pub fn to_message(&self) -> Message {
        let mut m = Message::new(self.id.clone(), FORWARD_TYPE, json!({"next": self.next}))
            .attach(Attachment::json(self.forwarded.clone()));
        m.expires_time = self.expires_time;
        m
    }

    /// Read a forward from an unpacked plaintext message.
    ///
    /// # Errors
    /// [`Error::Protocol`] if the type is not forward, `next` is missing, or there is not
    /// exactly one attachment with inline JSON (we never forward links or base64 blobs).
    pub fn from_message(msg: &Message) -> Result<Self> {
        super::expect_type(msg, PROTOCOL, FORWARD_TYPE)?;
        let body: Body = super::body(msg, PROTOCOL)?;
        let bad = |r: &str| Error::Protocol {
            protocol: PROTOCOL,
            reason: r.to_owned(),
        };
        let atts = msg.attachments.as_deref().unwrap_or_default();
        let [att] = atts else {
            return Err(bad("a forward carries exactly one attachment"));
        };
        let forwarded = match (&att.data.json, &att.data.base64) {
            (Some(v), _) => v.clone(),
            (None, Some(b)) => {
                let bytes = crate::jose::unb64(b.trim_end_matches('='), "forward attachment")
                    .or_else(|_| {
                        use base64::Engine as _;
                        base64::engine::general_purpose::STANDARD
                            .decode(b)
                            .map_err(|_| bad("attachment is not base64"))
                    })?;
                serde_json::from_slice(&bytes).map_err(|_| bad("attachment is not JSON"))?
            }
            _ => return Err(bad("attachment has no inline json or base64 data")),
        };
        if !forwarded.is_object() {
            return Err(bad("forwarded message is not a JSON object"));
        }
        Ok(Self {
            id: msg.id.clone(),
            next: body.next,
            forwarded,
            expires_time: msg.expires_time,
        })
    }

    /// The forwarded message as bytes, ready to deliver to `next`.
    pub fn forwarded_bytes(&self) -> Vec<u8> {
        self.forwarded.to_string().into_bytes()
    }
}
