//! Trust Ping 2.0 (<https://identity.foundation/didcomm-messaging/spec/#trust-ping-protocol-20>).

use serde::Deserialize;
use serde_json::json;

use crate::error::Result;
use crate::message::{new_id, Message};

/// Type of a ping.
pub const PING_TYPE: &str = "https://didcomm.org/trust-ping/2.0/ping";
/// Type of a ping response.
pub const PING_RESPONSE_TYPE: &str = "https://didcomm.org/trust-ping/2.0/ping-response";
const PROTOCOL: &str = "trust ping 2.0";

/// A ping from `from` to `to`.
#[derive(Debug, Clone, PartialEq)]
pub struct Ping {
    /// Message id.
    pub id: String,
    /// Sender DID (a ping must not be anonymous, so it can be answered).
    pub from: String,
    /// Recipient DID.
    pub to: String,
    /// Whether a response is wanted (default true).
    pub response_requested: bool,
}

#[derive(Deserialize)]
struct PingBody {
    #[serde(default = "yes")]
    response_requested: bool,
}

fn yes() -> bool {
    true
}

impl Ping {
    /// A ping asking for a response.
    pub fn new(from: impl Into<String>, to: impl Into<String>) -> Self {
        Self {
            id: new_id(),
            from: from.into(),
            to: to.into(),
            response_requested: true,
        }
    }

    /// As a plaintext message.
    pub fn to_message(&self) -> Message {
        Message::new(
            self.id.clone(),
            PING_TYPE,
            json!({"response_requested": self.response_requested}),
        )
        .from(self.from.clone())
        .to(self.to.clone())
    }

    /// Read a ping.
    ///
    /// # Errors
    /// [`crate::Error::Protocol`] if not a ping, or it has no `from` or `to`.
    pub fn from_message(msg: &Message) -> Result<Self> {
        super::expect_type(msg, PROTOCOL, PING_TYPE)?;
        let body: PingBody = super::body(msg, PROTOCOL)?;
        let missing = |f: &str| crate::Error::Protocol {
            protocol: PROTOCOL,
            reason: format!("ping without {f}"),
        };
        Ok(Self {
            id: msg.id.clone(),
            from: msg.from.clone().ok_or_else(|| missing("from"))?,
            to: msg
                .to
                .as_ref()
                .and_then(|t| t.first().cloned())
                .ok_or_else(|| missing("to"))?,
            response_requested: body.response_requested,
        })
    }

    /// The response to this ping (`thid` = the ping's id), from the ping's recipient.
    pub fn response(&self) -> Message {
        Message::new(new_id(), PING_RESPONSE_TYPE, json!({}))
            .from(self.to.clone())
            .to(self.from.clone())
            .thid(self.id.clone())
    }
}
