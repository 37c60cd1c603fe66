//! Packing and unpacking whole DIDComm messages: key selection from DID documents, layer
//! order, and the consistency checks between layers (DIDComm Messaging v2, §"Message
//! Types", §"Key IDs kid and skid headers references in the DID document").
//!
//! The sans-I/O core is [`Envelope::parse`] plus [`jose::Jwe`] / [`jose::Jws`]: parse one
//! layer, learn which keys it needs, supply them. [`unpack`] and the `pack_*` functions
//! are the convenient async drivers that fetch those keys from a [`DidResolver`] and a
//! [`SecretsResolver`].

use mpc_did_resolver::{DidCommService, DidDocument, DidResolver, PublicKey, MAX_ROUTING_KEYS};
use serde::Serialize;
use serde_json::Value;
use x25519_dalek::StaticSecret;

use crate::error::{Error, Result};
use crate::jose::{self, ContentAlg, Jwe, Jws, KeyAlg, RecipientKey, SenderKey, StaticEcdhCache};
use crate::message::Message;
use crate::protocols::routing::ForwardMessage;
use crate::secrets::{Secret, SecretsResolver};

/// Default input size limit for [`unpack`] (1 MiB: control-plane messages are small; bulk
/// data goes through the session layer).
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 1024 * 1024;

/// The DID part of a DID URL (everything before `#`, `?` or `/` after the method-specific id).
pub fn did_of(kid: &str) -> &str {
    let end = kid.find(['#', '?']).unwrap_or(kid.len());
    kid.get(..end).unwrap_or(kid)
}

fn resolve_err(did: &str, e: impl std::fmt::Display) -> Error {
    Error::Resolve {
        did: did.to_owned(),
        reason: e.to_string(),
    }
}

async fn resolve(resolver: &impl DidResolver, did: &str) -> Result<DidDocument> {
    resolver.resolve(did).await.map_err(|e| resolve_err(did, e))
}

/// One layer of a DIDComm message, parsed but not yet decrypted or verified.
#[derive(Debug, Clone)]
pub enum Envelope {
    /// A plaintext message.
    Plain(Box<Message>),
    /// A JWS (signed message).
    Signed(Jws),
    /// A JWE (anoncrypt or authcrypt).
    Encrypted(Box<Jwe>),
}

impl Envelope {
    /// Parse the outermost layer of `bytes`.
    ///
    /// # Errors
    /// [`Error::Malformed`] for non-JSON or an unknown shape, plus the errors of
    /// [`Jwe::parse`] / [`Jws::parse`] / [`Message::from_json`].
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let v: Value = match serde_json::from_slice(bytes) {
            Ok(v) => v,
            Err(e) => {
                if let Some(kind) = compact_kind(bytes) {
                    return Err(Error::CompactSerialization(kind));
                }
                return Err(Error::malformed(e));
            }
        };
        if let Some(kind) = v.as_str().and_then(|s| compact_kind(s.as_bytes())) {
            return Err(Error::CompactSerialization(kind));
        }
        Self::from_value(&v, bytes)
    }

    fn from_value(v: &Value, bytes: &[u8]) -> Result<Self> {
        let obj = v
            .as_object()
            .ok_or_else(|| Error::malformed("message is not a JSON object"))?;
        if obj.contains_key("ciphertext") {
            Ok(Self::Encrypted(Box::new(Jwe::parse(v)?)))
        } else if obj.contains_key("signatures")
            || (obj.contains_key("payload") && obj.contains_key("signature"))
        {
            // General or flattened JSON serialisation (RFC 7515 §7.2.1, §7.2.2).
            Ok(Self::Signed(Jws::parse(v)?))
        } else if obj.contains_key("payload") {
            Err(Error::malformed("JWS without signatures"))
        } else if obj.contains_key("id") && obj.contains_key("type") {
            Ok(Self::Plain(Box::new(Message::from_json(bytes)?)))
        } else {
            Err(Error::malformed(
                "neither a JWE, a JWS nor a plaintext message",
            ))
        }
    }
}

/// `JWS` or `JWE` if `bytes` look like a compact serialisation: base64url segments
/// joined by `.`, three for a JWS (RFC 7515 §7.1), five for a JWE (RFC 7516 §7.1).
fn compact_kind(bytes: &[u8]) -> Option<&'static str> {
    let text = std::str::from_utf8(bytes).ok()?.trim();
    let b64url = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    if text.is_empty() || !text.chars().all(|c| b64url(c) || c == '.') {
        return None;
    }
    match text.split('.').count() {
        3 => Some("JWS"),
        5 => Some("JWE"),
        _ => None,
    }
}

/// What [`unpack`] found out about how a message was protected.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct UnpackMetadata {
    /// Some layer was encrypted.
    pub encrypted: bool,
    /// The sender was authenticated by authcrypt (ECDH-1PU) or a signature.
    pub authenticated: bool,
    /// The message was signed (non-repudiation).
    pub non_repudiation: bool,
    /// The outer layer was anoncrypt hiding an authcrypt sender ("protect sender").
    pub anonymous_sender: bool,
    /// `skid` of the authcrypt layer.
    pub encrypted_from_kid: Option<String>,
    /// The recipient kids of the (innermost) encrypted layer.
    pub encrypted_to_kids: Vec<String>,
    /// The kid we decrypted with.
    pub decrypted_with_kid: Option<String>,
    /// The kid whose signature verified.
    pub sign_from: Option<String>,
    /// `alg`+`enc` of the authcrypt layer, e.g. `ECDH-1PU+A256KW/A256CBC-HS512`.
    pub enc_alg_auth: Option<String>,
    /// `alg`+`enc` of the anoncrypt layer.
    pub enc_alg_anon: Option<String>,
    /// `alg` of the signature.
    pub sign_alg: Option<String>,
    /// The signed message (JWS) as received, kept for non-repudiation.
    pub signed_message: Option<String>,
}

/// Options for [`unpack`].
#[derive(Debug, Clone)]
pub struct UnpackOptions {
    /// Inputs larger than this are rejected before parsing.
    pub max_size: usize,
}

impl Default for UnpackOptions {
    fn default() -> Self {
        Self {
            max_size: DEFAULT_MAX_MESSAGE_SIZE,
        }
    }
}

/// Which layers may still follow (DIDComm v2 allows plain, signed(plain),
/// authcrypt(plain|signed), anoncrypt(plain|signed|authcrypt(...))).
#[derive(Clone, Copy, PartialEq)]
enum Stage {
    Outer,
    AfterAnon,
    AfterAuth,
    AfterSigned,
}

/// Unpack a DIDComm message of any kind: decrypt, verify, and check that every layer
/// agrees on who sent it.
///
/// # Errors
/// [`Error::TooLarge`], [`Error::Malformed`], [`Error::Unsupported`], [`Error::TooDeep`]
/// (layers in an order the spec does not allow), [`Error::NoRecipientSecret`],
/// [`Error::Crypto`] (any decryption/signature failure), [`Error::Resolve`] /
/// [`Error::NoKey`] (sender key not in its DID document), [`Error::SenderMismatch`]
/// (`from` is not the authcrypt sender or the signer), [`Error::HeaderMismatch`].
pub async fn unpack(
    bytes: &[u8],
    resolver: &impl DidResolver,
    secrets: &impl SecretsResolver,
    opts: &UnpackOptions,
) -> Result<(Message, UnpackMetadata)> {
    unpack_with(bytes, resolver, secrets, opts, None).await
}

/// [`unpack`], taking authcrypt's static-static ECDH share from `cache` when given: a
/// receiver that hears from the same senders again and again (a mediator reading
/// acknowledgments) saves one X25519 per message. Same results as [`unpack`].
///
/// # Errors
/// As [`unpack`].
pub async fn unpack_with(
    bytes: &[u8],
    resolver: &impl DidResolver,
    secrets: &impl SecretsResolver,
    opts: &UnpackOptions,
    cache: Option<&StaticEcdhCache>,
) -> Result<(Message, UnpackMetadata)> {
    if bytes.len() > opts.max_size {
        return Err(Error::TooLarge {
            size: bytes.len(),
            limit: opts.max_size,
        });
    }
    let mut meta = UnpackMetadata::default();
    let mut current: Vec<u8> = bytes.to_vec();
    let mut stage = Stage::Outer;
    // At most anoncrypt + authcrypt + signed + plain.
    for _ in 0..4 {
        match Envelope::parse(&current)? {
            Envelope::Plain(msg) => {
                check_plain(&msg, &meta)?;
                return Ok((*msg, meta));
            }
            Envelope::Signed(jws) => {
                if stage == Stage::AfterSigned {
                    return Err(Error::TooDeep);
                }
                let kid = verify_signed(&jws, resolver).await?;
                meta.non_repudiation = true;
                meta.authenticated = true;
                meta.sign_alg = Some("EdDSA".into());
                meta.sign_from = Some(kid);
                meta.signed_message = Some(String::from_utf8_lossy(&current).into_owned());
                current = jws.payload().to_vec();
                stage = Stage::AfterSigned;
            }
            Envelope::Encrypted(jwe) => {
                let auth = jwe.alg == KeyAlg::Ecdh1puA256kw;
                let allowed = match stage {
                    Stage::Outer => true,
                    Stage::AfterAnon => auth,
                    Stage::AfterAuth | Stage::AfterSigned => false,
                };
                if !allowed {
                    return Err(Error::TooDeep);
                }
                let (plain, kid) = decrypt_jwe(&jwe, resolver, secrets, cache).await?;
                meta.encrypted = true;
                meta.encrypted_to_kids = jwe.recipient_kids().map(str::to_owned).collect();
                meta.decrypted_with_kid = Some(kid);
                let name = format!("{}/{}", jwe.alg.name(), jwe.enc.name());
                if auth {
                    meta.authenticated = true;
                    meta.encrypted_from_kid = jwe.sender_kid().map(str::to_owned);
                    meta.enc_alg_auth = Some(name);
                    if stage == Stage::AfterAnon {
                        meta.anonymous_sender = true;
                    }
                    stage = Stage::AfterAuth;
                } else {
                    meta.enc_alg_anon = Some(name);
                    stage = Stage::AfterAnon;
                }
                current = plain;
            }
        }
    }
    Err(Error::TooDeep)
}

/// The consistency checks between the plaintext and the layers around it.
///
/// DIDComm Messaging v2.1 §"Plaintext Message Structure": `from` is "OPTIONAL when the
/// message is to be encrypted via anoncrypt; REQUIRED when the message is encrypted via
/// authcrypt", and "The `from` attribute in the plaintext message MUST match the signer's
/// `kid` in a signed message". So an authcrypt or signed message without `from` is
/// refused ([`Error::MissingFrom`]); a plaintext or anoncrypt one is accepted.
fn check_plain(msg: &Message, meta: &UnpackMetadata) -> Result<()> {
    let from = msg.from.as_deref();
    for (how, kid) in [
        ("authcrypted", &meta.encrypted_from_kid),
        ("signed", &meta.sign_from),
    ] {
        let Some(kid) = kid else { continue };
        let sender = did_of(kid);
        match from {
            None => {
                return Err(Error::MissingFrom {
                    how,
                    sender: sender.to_owned(),
                })
            }
            Some(f) if f != sender => {
                return Err(Error::SenderMismatch(format!(
                    "the message was {how} by {sender} but its \"from\" is {f}"
                )))
            }
            Some(_) => {}
        }
    }
    if let (Some(to), Some(kid)) = (&msg.to, &meta.decrypted_with_kid) {
        if !to.iter().any(|d| d == did_of(kid)) {
            return Err(Error::SenderMismatch(format!(
                "encrypted to {} but the message is addressed to {}",
                did_of(kid),
                to.join(", ")
            )));
        }
    }
    Ok(())
}

async fn verify_signed(jws: &Jws, resolver: &impl DidResolver) -> Result<String> {
    // DIDComm Messaging v2.1: the plaintext's `from` MUST match the signer's `kid`, so the
    // only signature that can be accepted is the one by `from`'s DID, and only one signer
    // is resolved — never one per signature: a resolution may be a did:web fetch of up to
    // 5 s, and a JWS may carry 64 signatures (spec/didcomm.md §3 "Signed messages").
    // `from` is read before the signature is checked, only to choose which one to check
    // (without a signature by it, the first); `check_plain` then compares the verified
    // signer with `from` (`MissingFrom`, `SenderMismatch`).
    let from = serde_json::from_slice::<Value>(jws.payload())
        .ok()
        .and_then(|v| v.get("from").and_then(Value::as_str).map(str::to_owned));
    let kid = from
        .as_deref()
        .and_then(|f| jws.signer_kids().find(|k| did_of(k) == f))
        .or_else(|| jws.signer_kids().next())
        .ok_or(Error::Crypto)?
        .to_owned();
    let doc = resolve(resolver, did_of(&kid)).await?;
    let key = doc
        .authentication_methods()
        .into_iter()
        .find(|vm| vm.id == kid)
        .map(|vm| vm.key)
        .ok_or_else(|| Error::NoKey(format!("{kid} is not an authentication key")))?;
    let PublicKey::Ed25519(pk) = key else {
        return Err(Error::NoKey(format!("{kid} is not Ed25519")));
    };
    let vk = ed25519_dalek::VerifyingKey::from_bytes(&pk).map_err(|_| Error::Crypto)?;
    jws.verify(&kid, &vk).map_err(|_| Error::Crypto)?;
    Ok(kid)
}

async fn decrypt_jwe(
    jwe: &Jwe,
    resolver: &impl DidResolver,
    secrets: &impl SecretsResolver,
    cache: Option<&StaticEcdhCache>,
) -> Result<(Vec<u8>, String)> {
    // Cheap check first: a JWE for none of our keys is refused before the sender's DID is
    // resolved, so a stranger cannot make us fetch a did:web by sending us junk.
    if !jwe
        .recipient_kids()
        .any(|kid| matches!(secrets.secret(kid), Some(Secret::X25519(_))))
    {
        return Err(Error::NoRecipientSecret);
    }
    let sender_public = match jwe.sender_kid() {
        None => None,
        Some(skid) => Some(key_agreement_key(resolver, skid).await?),
    };
    let mut tried = false;
    for kid in jwe.recipient_kids() {
        let Some(Secret::X25519(secret)) = secrets.secret(kid) else {
            continue;
        };
        tried = true;
        if let Ok(plain) = jwe.decrypt_with(kid, &secret, sender_public.as_ref(), cache) {
            return Ok((plain, kid.to_owned()));
        }
    }
    if tried {
        Err(Error::Crypto)
    } else {
        Err(Error::NoRecipientSecret)
    }
}

/// The X25519 keyAgreement key `kid` from its DID's document.
async fn key_agreement_key(resolver: &impl DidResolver, kid: &str) -> Result<[u8; 32]> {
    let doc = resolve(resolver, did_of(kid)).await?;
    doc.key_agreement_methods()
        .into_iter()
        .find(|vm| vm.id == kid)
        .and_then(|vm| match vm.key {
            PublicKey::X25519(k) => Some(k),
            _ => None,
        })
        .ok_or_else(|| Error::NoKey(format!("{kid} is not an X25519 keyAgreement key")))
}

/// The X25519 keyAgreement keys `target` names: one key for a DID URL, all of them for a
/// bare DID.
async fn recipient_keys(
    resolver: &impl DidResolver,
    target: &str,
) -> Result<(Vec<(String, [u8; 32])>, DidDocument)> {
    let doc = resolve(resolver, did_of(target)).await?;
    let keys: Vec<(String, [u8; 32])> = doc
        .key_agreement_methods()
        .into_iter()
        .filter(|vm| target == did_of(target) || vm.id == target)
        .filter_map(|vm| match vm.key {
            PublicKey::X25519(k) => Some((vm.id.clone(), k)),
            _ => None,
        })
        .collect();
    if keys.is_empty() {
        return Err(Error::NoKey(format!(
            "{target} has no X25519 keyAgreement key"
        )));
    }
    Ok((keys, doc))
}

/// Options for [`pack_encrypted`].
#[derive(Debug, Clone)]
pub struct PackOptions {
    /// Content encryption for anoncrypt (authcrypt is always A256CBC-HS512).
    pub anon_enc: ContentAlg,
    /// Wrap an authcrypt message in anoncrypt too, hiding the sender from mediators.
    pub protect_sender: bool,
    /// Wrap the result in Routing 2.0 `forward` messages for the recipient's routing keys
    /// (from its first `DIDCommMessaging` service), as a sender must when it sends.
    pub forward: bool,
}

impl Default for PackOptions {
    fn default() -> Self {
        Self {
            anon_enc: ContentAlg::A256CbcHs512,
            protect_sender: false,
            forward: true,
        }
    }
}

/// What [`pack_encrypted`] produced.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PackedMessage {
    /// The packed message (JSON), to be sent as `application/didcomm-encrypted+json`.
    pub message: String,
    /// The recipient keys the innermost JWE was encrypted to.
    pub to_kids: Vec<String>,
    /// The authcrypt sender key, if any.
    pub from_kid: Option<String>,
    /// The signing key, if signed.
    pub sign_by_kid: Option<String>,
    /// The recipient's service the message should be delivered to (if its document has
    /// one); when forwarded, `message` is addressed to the first routing key.
    pub service: Option<DidCommService>,
}

/// Pack a plaintext message (no protection at all).
///
/// # Errors
/// Only a serialisation failure (never for a valid [`Message`]).
pub fn pack_plaintext(msg: &Message) -> Result<String> {
    msg.to_json()
}

/// Pack a signed message (JWS, EdDSA) by `sign_by` (a DID, or one of its authentication
/// key ids). `msg.from` must be that DID.
///
/// # Errors
/// [`Error::SenderMismatch`], [`Error::Resolve`], [`Error::NoKey`],
/// [`Error::MissingSecret`].
pub async fn pack_signed(
    msg: &Message,
    sign_by: &str,
    resolver: &impl DidResolver,
    secrets: &impl SecretsResolver,
) -> Result<(String, String)> {
    if msg.from.as_deref() != Some(did_of(sign_by)) {
        return Err(Error::SenderMismatch(format!(
            "signer {} is not the message's from",
            did_of(sign_by)
        )));
    }
    let (kid, key) = signing_key(resolver, secrets, sign_by).await?;
    Ok((jose::sign(msg.to_json()?.as_bytes(), &kid, &key), kid))
}

async fn signing_key(
    resolver: &impl DidResolver,
    secrets: &impl SecretsResolver,
    sign_by: &str,
) -> Result<(String, ed25519_dalek::SigningKey)> {
    let doc = resolve(resolver, did_of(sign_by)).await?;
    for vm in doc.authentication_methods() {
        if sign_by != did_of(sign_by) && vm.id != sign_by {
            continue;
        }
        if let Some(Secret::Ed25519(k)) = secrets.secret(&vm.id) {
            return Ok((vm.id.clone(), k));
        }
    }
    Err(Error::MissingSecret(sign_by.to_owned()))
}

async fn sender_key(
    resolver: &impl DidResolver,
    secrets: &impl SecretsResolver,
    from: &str,
) -> Result<(String, StaticSecret)> {
    let doc = resolve(resolver, did_of(from)).await?;
    for vm in doc.key_agreement_methods() {
        if from != did_of(from) && vm.id != from {
            continue;
        }
        if !matches!(vm.key, PublicKey::X25519(_)) {
            continue;
        }
        if let Some(Secret::X25519(k)) = secrets.secret(&vm.id) {
            return Ok((vm.id.clone(), k));
        }
    }
    Err(Error::MissingSecret(from.to_owned()))
}

/// Pack an encrypted message to `to` (a DID: all its X25519 keyAgreement keys; or one key
/// id). With `from` (a DID or key id) it is authcrypt, else anoncrypt; with `sign_by` it
/// is signed first. `msg.from` must match `from` and `sign_by`; `msg.to`, when set, must
/// name `to`'s DID.
///
/// # Errors
/// [`Error::SenderMismatch`], [`Error::Resolve`], [`Error::NoKey`],
/// [`Error::MissingSecret`], [`Error::Unsupported`].
pub async fn pack_encrypted(
    msg: &Message,
    to: &str,
    from: Option<&str>,
    sign_by: Option<&str>,
    resolver: &impl DidResolver,
    secrets: &impl SecretsResolver,
    opts: &PackOptions,
) -> Result<PackedMessage> {
    pack_encrypted_with(msg, to, from, sign_by, resolver, secrets, opts, None).await
}

/// [`pack_encrypted`], taking authcrypt's static-static ECDH share from `cache` when
/// given: a sender that writes to the same recipients again and again (a mediator pushing
/// deliveries) saves one X25519 per message. The output is indistinguishable from
/// [`pack_encrypted`]'s.
///
/// # Errors
/// As [`pack_encrypted`].
#[allow(clippy::too_many_arguments)]
pub async fn pack_encrypted_with(
    msg: &Message,
    to: &str,
    from: Option<&str>,
    sign_by: Option<&str>,
    resolver: &impl DidResolver,
    secrets: &impl SecretsResolver,
    opts: &PackOptions,
    cache: Option<&StaticEcdhCache>,
) -> Result<PackedMessage> {
    if let Some(from) = from {
        if msg.from.as_deref() != Some(did_of(from)) {
            return Err(Error::SenderMismatch(format!(
                "sender {} is not the message's from",
                did_of(from)
            )));
        }
    }
    if let Some(tos) = &msg.to {
        if !tos.iter().any(|d| d == did_of(to)) {
            return Err(Error::SenderMismatch(format!(
                "recipient {} is not in the message's to",
                did_of(to)
            )));
        }
    }
    let (payload, sign_by_kid) = match sign_by {
        Some(s) => {
            let (jws, kid) = pack_signed(msg, s, resolver, secrets).await?;
            (jws, Some(kid))
        }
        None => (msg.to_json()?, None),
    };
    let (keys, doc) = recipient_keys(resolver, to).await?;
    let rks: Vec<RecipientKey<'_>> = keys
        .iter()
        .map(|(kid, public)| RecipientKey {
            kid: kid.as_str(),
            public: *public,
        })
        .collect();
    let (mut out, from_kid) = match from {
        Some(f) => {
            let (skid, secret) = sender_key(resolver, secrets, f).await?;
            let s = SenderKey {
                kid: &skid,
                secret: &secret,
            };
            let auth = jose::encrypt_with(
                payload.as_bytes(),
                &rks,
                Some(&s),
                ContentAlg::A256CbcHs512,
                cache,
            )?;
            let out = if opts.protect_sender {
                jose::encrypt(auth.as_bytes(), &rks, None, opts.anon_enc)?
            } else {
                auth
            };
            (out, Some(skid))
        }
        None => (
            jose::encrypt(payload.as_bytes(), &rks, None, opts.anon_enc)?,
            None,
        ),
    };
    let service = doc.didcomm_services().into_iter().next();
    if opts.forward {
        if let Some(svc) = &service {
            if !svc.routing_keys.is_empty() {
                out = wrap_in_forward(&out, to, &svc.routing_keys, resolver, opts.anon_enc).await?;
            }
        }
    }
    Ok(PackedMessage {
        message: out,
        to_kids: keys.into_iter().map(|(k, _)| k).collect(),
        from_kid,
        sign_by_kid,
        service,
    })
}

/// Wrap `packed` (already encrypted for `next`) in Routing 2.0 `forward` messages, one per
/// routing key, innermost for the last key (Routing 2.0, §"Sender Process"): the result is
/// anoncrypted to `routing_keys[0]`, the mediator the sender talks to.
///
/// At most [`MAX_ROUTING_KEYS`] layers, and no layer wraps a message larger than
/// [`DEFAULT_MAX_MESSAGE_SIZE`] (the next hop, a mediator or a party, refuses larger ones by
/// default): each layer base64-encodes the one inside, about ×4/3, so without these bounds
/// a service listing many keys would make the sender allocate without limit (audit H1).
///
/// # Errors
/// [`Error::TooManyRoutingKeys`] for more than [`MAX_ROUTING_KEYS`] keys, checked before any
/// work; [`Error::TooLarge`] if a layer would wrap more than [`DEFAULT_MAX_MESSAGE_SIZE`]
/// bytes; [`Error::Malformed`] if `packed` is not JSON; key lookup errors as
/// [`pack_encrypted`].
pub async fn wrap_in_forward(
    packed: &str,
    next: &str,
    routing_keys: &[String],
    resolver: &impl DidResolver,
    enc: ContentAlg,
) -> Result<String> {
    Ok(
        wrap_in_forward_with(packed, next, routing_keys, resolver, enc, false)
            .await?
            .message,
    )
}

/// The outermost forward of [`wrap_in_forward_with`] and the id of its plaintext.
#[derive(Debug, Clone)]
pub struct WrappedForward {
    /// The anoncrypted forward for `routing_keys[0]`.
    pub message: String,
    /// The outermost forward's message id (what an `ack` from that mediator names).
    pub id: String,
}

/// As [`wrap_in_forward`]; with `please_ack` the outermost forward (the one the first
/// mediator unpacks) carries the DIDComm v2 header `please_ack: [""]` ("acknowledge this
/// message", DIDComm Messaging v2 §ACKs), so that mediator answers with an `ack` naming
/// [`WrappedForward::id`] once it has stored the message (spec/mediator.md §2).
///
/// # Errors
/// As [`wrap_in_forward`].
pub async fn wrap_in_forward_with(
    packed: &str,
    next: &str,
    routing_keys: &[String],
    resolver: &impl DidResolver,
    enc: ContentAlg,
    please_ack: bool,
) -> Result<WrappedForward> {
    if routing_keys.len() > MAX_ROUTING_KEYS {
        return Err(Error::TooManyRoutingKeys {
            count: routing_keys.len(),
            limit: MAX_ROUTING_KEYS,
        });
    }
    let mut current = packed.to_owned();
    let mut next = next.to_owned();
    let mut id = String::new();
    for (i, key) in routing_keys.iter().enumerate().rev() {
        if current.len() > DEFAULT_MAX_MESSAGE_SIZE {
            return Err(Error::TooLarge {
                size: current.len(),
                limit: DEFAULT_MAX_MESSAGE_SIZE,
            });
        }
        let inner: Value = serde_json::from_str(&current).map_err(Error::malformed)?;
        let mut fwd = ForwardMessage::new(next.clone(), inner).to_message();
        if please_ack && i == 0 {
            fwd.extra.insert(
                "please_ack".into(),
                Value::Array(vec![Value::String(String::new())]),
            );
        }
        id.clone_from(&fwd.id);
        let (keys, _) = recipient_keys(resolver, key).await?;
        let rks: Vec<RecipientKey<'_>> = keys
            .iter()
            .map(|(kid, public)| RecipientKey {
                kid: kid.as_str(),
                public: *public,
            })
            .collect();
        current = jose::encrypt(fwd.to_json()?.as_bytes(), &rks, None, enc)?;
        next.clone_from(key);
    }
    Ok(WrappedForward {
        message: current,
        id,
    })
}
