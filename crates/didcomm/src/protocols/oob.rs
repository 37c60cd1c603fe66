//! Out-of-Band 2.0 invitations (<https://identity.foundation/didcomm-messaging/spec/#out-of-band-messages>)
//! and their URL form `https://host/path?_oob=<base64url(JSON)>`.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::jose::b64;
use crate::message::{new_id, Attachment, Message};

/// Type of an invitation.
pub const INVITATION_TYPE: &str = "https://didcomm.org/out-of-band/2.0/invitation";
const PROTOCOL: &str = "out-of-band 2.0";
/// Largest invitation (JSON or URL) we decode: invitations travel in QR codes and links.
pub const MAX_INVITATION_SIZE: usize = 64 * 1024;

/// An Out-of-Band 2.0 invitation.
#[derive(Debug, Clone, PartialEq)]
pub struct Invitation {
    /// Invitation id; replies carry it as `pthid`.
    pub id: String,
    /// The inviter's DID (required: the invitee replies to it).
    pub from: String,
    /// Machine-readable goal, e.g. `mpc-did.session.join`.
    pub goal_code: Option<String>,
    /// Human-readable goal.
    pub goal: Option<String>,
    /// Media types / profiles the inviter accepts; we put `didcomm/v2`.
    pub accept: Vec<String>,
    /// Attached messages (e.g. a lobby description).
    pub attachments: Vec<Attachment>,
    /// Creation time.
    pub created_time: Option<u64>,
    /// Expiry time.
    pub expires_time: Option<u64>,
}

#[derive(Serialize, Deserialize, Default)]
struct Body {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    goal_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    goal: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    accept: Vec<String>,
}

fn bad(reason: impl Into<String>) -> Error {
    Error::Protocol {
        protocol: PROTOCOL,
        reason: reason.into(),
    }
}

impl Invitation {
    /// An invitation from `from`, accepting DIDComm v2.
    pub fn new(from: impl Into<String>) -> Self {
        Self {
            id: new_id(),
            from: from.into(),
            goal_code: None,
            goal: None,
            accept: vec!["didcomm/v2".to_owned()],
            attachments: Vec::new(),
            created_time: None,
            expires_time: None,
        }
    }

    /// As a plaintext message (an invitation is sent unpacked: it is public by design).
    pub fn to_message(&self) -> Message {
        let body = Body {
            goal_code: self.goal_code.clone(),
            goal: self.goal.clone(),
            accept: self.accept.clone(),
        };
        let mut m = Message::new(
            self.id.clone(),
            INVITATION_TYPE,
            serde_json::to_value(body).unwrap_or_else(|_| Value::Object(serde_json::Map::new())),
        )
        .from(self.from.clone());
        m.typ = None;
        m.created_time = self.created_time;
        m.expires_time = self.expires_time;
        if !self.attachments.is_empty() {
            m.attachments = Some(self.attachments.clone());
        }
        m
    }

    /// Read an invitation from a plaintext message.
    ///
    /// # Errors
    /// [`Error::Protocol`] for another type, no `from`, a malformed body.
    pub fn from_message(msg: &Message) -> Result<Self> {
        super::expect_type(msg, PROTOCOL, INVITATION_TYPE)?;
        let body: Body = super::body(msg, PROTOCOL)?;
        let from = msg
            .from
            .clone()
            .ok_or_else(|| bad("invitation without from"))?;
        if !from.starts_with("did:") {
            return Err(bad(format!("from {from:?} is not a DID")));
        }
        Ok(Self {
            id: msg.id.clone(),
            from,
            goal_code: body.goal_code,
            goal: body.goal,
            accept: body.accept,
            attachments: msg.attachments.clone().unwrap_or_default(),
            created_time: msg.created_time,
            expires_time: msg.expires_time,
        })
    }

    /// The invitation as compact JSON.
    ///
    /// # Errors
    /// Never in practice (serialisation of a [`Message`]).
    pub fn to_json(&self) -> Result<String> {
        self.to_message().to_json()
    }

    /// The URL form: `base` (e.g. `https://example.org/oob`) with `_oob=<base64url(JSON)>`
    /// appended as a query parameter.
    ///
    /// # Errors
    /// As [`Self::to_json`].
    pub fn to_url(&self, base: &str) -> Result<String> {
        let sep = if base.contains('?') { '&' } else { '?' };
        Ok(format!(
            "{base}{sep}_oob={}",
            b64(self.to_json()?.as_bytes())
        ))
    }

    /// Decode an invitation from a URL carrying `_oob=`, or from its JSON.
    ///
    /// # Errors
    /// [`Error::TooLarge`], [`Error::Protocol`] (no `_oob` parameter, `_oobid` short
    /// links which need a fetch, bad base64), [`Error::Malformed`] (not JSON), and the
    /// errors of [`Self::from_message`].
    pub fn decode(input: &str) -> Result<Self> {
        let input = input.trim();
        if input.len() > MAX_INVITATION_SIZE {
            return Err(Error::TooLarge {
                size: input.len(),
                limit: MAX_INVITATION_SIZE,
            });
        }
        let json: Vec<u8> = if input.starts_with('{') {
            input.as_bytes().to_vec()
        } else {
            let query = input
                .split_once('?')
                .map(|(_, q)| q)
                .ok_or_else(|| bad("URL has no query string"))?;
            let query = query.split('#').next().unwrap_or("");
            let mut found = None;
            for pair in query.split('&') {
                match pair.split_once('=') {
                    Some(("_oob", v)) => found = Some(v),
                    Some(("_oobid", _)) => {
                        // No I/O here: `mpc_did_agent::client::resolve_short_link` fetches it.
                        return Err(bad("a short link (_oobid) must be fetched first"));
                    }
                    _ => {}
                }
            }
            let v = found.ok_or_else(|| bad("URL has no _oob parameter"))?;
            // Accept padded or percent-encoded padding, and standard base64, as senders vary.
            let v = v.replace("%3D", "").replace("%3d", "").replace('=', "");
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(&v)
                .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(&v))
                .map_err(|_| bad("_oob is not base64url"))?
        };
        let msg = Message::from_json(&json)?;
        Self::from_message(&msg)
    }
}
