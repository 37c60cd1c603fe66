//! The DIDComm v2 plaintext message (DIDComm Messaging v2, §"Plaintext Message Structure").

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};

/// Media type of a plaintext message (`typ` header).
pub const PLAIN_TYP: &str = "application/didcomm-plain+json";
/// Media type of a signed message (JWS `typ`).
pub const SIGNED_TYP: &str = "application/didcomm-signed+json";
/// Media type of an encrypted message (JWE `typ`).
pub const ENCRYPTED_TYP: &str = "application/didcomm-encrypted+json";

/// Whether the `typ` header `typ` names the media type `expected` (an
/// `application/…` constant above). DIDComm Messaging v2.1 §"IANA Media Types": "IANA
/// types for DIDComm messages MAY omit the `application/` prefix; the recipient MUST
/// treat media types not containing `/` as having the `application/` prefix present."
/// The `+json`-less spellings of v2.0 drafts are accepted as well.
pub fn media_type_matches(typ: &str, expected: &str) -> bool {
    let full;
    let typ = if typ.contains('/') {
        typ
    } else {
        full = format!("application/{typ}");
        &full
    };
    typ == expected || expected.strip_suffix("+json") == Some(typ)
}

/// A DIDComm v2 plaintext message.
///
/// Headers the spec names are fields; anything else lands in [`Message::extra`] and is
/// written back unchanged, so a message round-trips even with headers we do not know.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Unique message id (the spec recommends a UUID; any unique string is allowed).
    pub id: String,
    /// Media type, normally [`PLAIN_TYP`]; optional on the wire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub typ: Option<String>,
    /// Message type URI, e.g. `https://didcomm.org/trust-ping/2.0/ping`.
    #[serde(rename = "type")]
    pub type_: String,
    /// Sender DID (no fragment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Recipient DIDs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Vec<String>>,
    /// Thread id: the id of the first message of the thread.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thid: Option<String>,
    /// Parent thread id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pthid: Option<String>,
    /// Creation time, seconds since the UNIX epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_time: Option<u64>,
    /// Expiry time, seconds since the UNIX epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_time: Option<u64>,
    /// DID rotation JWT; carried but not validated by this crate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_prior: Option<String>,
    /// The message body (a JSON object for every protocol we speak).
    #[serde(default = "empty_object")]
    pub body: Value,
    /// Attachments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachments: Option<Vec<Attachment>>,
    /// Headers not named above, kept as they came.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

fn empty_object() -> Value {
    Value::Object(serde_json::Map::new())
}

impl Message {
    /// A new message with the given id, type and body, and `typ` set to [`PLAIN_TYP`].
    pub fn new(id: impl Into<String>, type_: impl Into<String>, body: Value) -> Self {
        Self {
            id: id.into(),
            typ: Some(PLAIN_TYP.to_owned()),
            type_: type_.into(),
            from: None,
            to: None,
            thid: None,
            pthid: None,
            created_time: None,
            expires_time: None,
            from_prior: None,
            body,
            attachments: None,
            extra: BTreeMap::new(),
        }
    }

    /// Builder: set `from`.
    #[must_use]
    pub fn from(mut self, did: impl Into<String>) -> Self {
        self.from = Some(did.into());
        self
    }

    /// Builder: set `to` to one DID.
    #[must_use]
    pub fn to(mut self, did: impl Into<String>) -> Self {
        self.to = Some(vec![did.into()]);
        self
    }

    /// Builder: set `thid`.
    #[must_use]
    pub fn thid(mut self, thid: impl Into<String>) -> Self {
        self.thid = Some(thid.into());
        self
    }

    /// Builder: set `created_time`.
    #[must_use]
    pub fn created_time(mut self, t: u64) -> Self {
        self.created_time = Some(t);
        self
    }

    /// Builder: add an attachment.
    #[must_use]
    pub fn attach(mut self, a: Attachment) -> Self {
        self.attachments.get_or_insert_with(Vec::new).push(a);
        self
    }

    /// The message as compact JSON.
    ///
    /// # Errors
    /// Only if an `extra` value cannot be serialised (it always can: it is a `Value`).
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string(self).map_err(Error::malformed)
    }

    /// Parse a plaintext message from JSON.
    ///
    /// # Errors
    /// [`Error::Malformed`] if it is not JSON or lacks `id`/`type`, or if `body` is not an
    /// object.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        let m: Self = serde_json::from_slice(bytes).map_err(Error::malformed)?;
        if !m.body.is_object() {
            return Err(Error::malformed("body is not a JSON object"));
        }
        if let Some(typ) = &m.typ {
            if !media_type_matches(typ, PLAIN_TYP) {
                return Err(Error::malformed(format!("plaintext with typ {typ:?}")));
            }
        }
        Ok(m)
    }

    /// The thread this message belongs to: `thid`, or its own `id` when it starts a thread.
    pub fn thread_id(&self) -> &str {
        self.thid.as_deref().unwrap_or(&self.id)
    }
}

/// A message attachment (DIDComm Messaging v2, §"Attachments").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attachment {
    /// Identifies the attachment within the message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Human-readable description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// File name hint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
    /// Media type of the content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// Format of the content (a protocol-specific identifier).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// The content.
    pub data: AttachmentData,
    /// Headers not named above.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// The content of an attachment: inline JSON, inline base64, or links.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct AttachmentData {
    /// Inline JSON content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json: Option<Value>,
    /// Inline base64url content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base64: Option<String>,
    /// URLs where the content can be fetched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub links: Option<Vec<String>>,
    /// Hash of the content (multihash, as the spec says).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    /// A JWS over the content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jws: Option<Value>,
}

impl Attachment {
    /// An attachment carrying inline JSON.
    pub fn json(value: Value) -> Self {
        Self {
            id: None,
            description: None,
            filename: None,
            media_type: None,
            format: None,
            data: AttachmentData {
                json: Some(value),
                ..AttachmentData::default()
            },
            extra: BTreeMap::new(),
        }
    }

    /// Builder: set the id.
    #[must_use]
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Builder: set the media type.
    #[must_use]
    pub fn with_media_type(mut self, mt: impl Into<String>) -> Self {
        self.media_type = Some(mt.into());
        self
    }
}

/// A fresh random message id (UUID v4 form, as the spec recommends).
pub fn new_id() -> String {
    let mut b = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// A new message of type `typ` with `body`, a fresh id and `created_time` now.
#[must_use]
pub fn message(typ: &str, body: Value) -> Message {
    Message::new(new_id(), typ, body).created_time(now())
}

/// A new message of type `typ` with `body` in the thread of `to_msg`.
#[must_use]
pub fn reply(typ: &str, body: Value, to_msg: &Message) -> Message {
    message(typ, body).thid(to_msg.thread_id())
}

/// Seconds since the UNIX epoch (0 if the clock is before 1970).
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
