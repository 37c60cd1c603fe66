//! `did:peer` (DIF "Peer DID Method Specification", `spec/core.md` of
//! `decentralized-identity/peer-did-method-spec`): the DID carries its own document, so
//! resolution is a pure function, like did:key.
//!
//! - **numalgo 0**: `did:peer:0z6Mk…`, the same document as `did:key:z6Mk…` with the DID
//!   swapped in.
//! - **numalgo 2**: `did:peer:2.Vz6Mk….Ez6LS….Se30…`: one element per key (purpose code
//!   `A` assertionMethod, `E` keyAgreement, `V` authentication, `I` capabilityInvocation,
//!   `D` capabilityDelegation, then the multibase key) or service (`S` + base64url of the
//!   service JSON with the abbreviations `t`→`type`, `dm`→`DIDCommMessaging`,
//!   `s`→`serviceEndpoint`, `r`→`routingKeys`, `a`→`accept`). Keys become `Multikey`
//!   methods `#key-1`, `#key-2`, … in DID order; services without an id become `#service`,
//!   `#service-1`, ….
//! - **numalgo 4**: long form `did:peer:4<hash>:<encoded document>` where the encoded
//!   document is multibase(base58btc) of the multicodec `json` (0x0200) prefix and the input
//!   document, and the hash is multibase(base58btc) of the sha2-256 multihash of the encoded
//!   document's text. The short form `did:peer:4<hash>` resolves only once its long form has
//!   been seen ([`resolve_short`]; [`crate::UniversalResolver`] remembers long forms).
//!
//! numalgo 1 and 3 need a stored document (or a did:peer:2) and are not resolved.

use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;
use serde_json::{json, Map, Value};
use sha2::{Digest as _, Sha256};

use crate::did::Did;
use crate::document::{DidDocument, DID_CONTEXT_V1, MULTIKEY_CONTEXT_V1};
use crate::error::{PeerError, ResolveError};
use crate::public_key::PublicKey;

/// Multicodec `json` (0x0200) as an unsigned varint: the prefix of a did:peer:4 encoded
/// document.
const MULTICODEC_JSON: [u8; 2] = [0x80, 0x04];
/// Multihash sha2-256 with a 32-byte digest.
const MULTIHASH_SHA256: [u8; 2] = [0x12, 0x20];
/// Most elements (keys + services) one did:peer:2 may carry: far above real use, a bound
/// on work for hostile input.
const MAX_ELEMENTS: usize = 64;

/// The purpose of a key in a `did:peer:2` (its verification relationship).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Purpose {
    /// `A`: assertionMethod.
    Assertion,
    /// `E`: keyAgreement (encryption).
    Encryption,
    /// `V`: authentication (verification).
    Verification,
    /// `I`: capabilityInvocation.
    CapabilityInvocation,
    /// `D`: capabilityDelegation.
    CapabilityDelegation,
}

impl Purpose {
    /// The one-letter purpose code.
    pub fn code(self) -> char {
        match self {
            Self::Assertion => 'A',
            Self::Encryption => 'E',
            Self::Verification => 'V',
            Self::CapabilityInvocation => 'I',
            Self::CapabilityDelegation => 'D',
        }
    }

    fn from_code(c: char) -> Option<Self> {
        Some(match c {
            'A' => Self::Assertion,
            'E' => Self::Encryption,
            'V' => Self::Verification,
            'I' => Self::CapabilityInvocation,
            'D' => Self::CapabilityDelegation,
            _ => return None,
        })
    }

    fn relationship(self) -> &'static str {
        match self {
            Self::Assertion => "assertionMethod",
            Self::Encryption => "keyAgreement",
            Self::Verification => "authentication",
            Self::CapabilityInvocation => "capabilityInvocation",
            Self::CapabilityDelegation => "capabilityDelegation",
        }
    }
}

/// Resolves a `did:peer` of numalgo 0, 2 or 4 (long form) to its DID document (no I/O).
///
/// # Errors
/// [`ResolveError::InvalidDid`] if not a DID, [`ResolveError::UnsupportedMethod`] if not
/// did:peer, [`ResolveError::Peer`] naming what is wrong with the did:peer (unsupported
/// numalgo, unknown purpose code, bad multibase key, service not base64url / JSON / an
/// object, did:peer:4 hash mismatch, a short-form did:peer:4, an invalid embedded document).
pub fn resolve(did: &str) -> Result<DidDocument, ResolveError> {
    let parsed = Did::parse(did)?;
    if parsed.method() != "peer" {
        return Err(ResolveError::UnsupportedMethod(parsed.method().to_owned()));
    }
    let msi = parsed.method_specific_id();
    let mut chars = msi.chars();
    let numalgo = chars.next().ok_or(PeerError::Empty)?;
    let rest = chars.as_str();
    let doc = match numalgo {
        '0' => resolve_0(did, rest)?,
        '2' => resolve_2(did, rest)?,
        '4' => match rest.split_once(':') {
            Some((hash, encoded)) => resolve_4_long(did, hash, encoded)?,
            None => return Err(PeerError::ShortFormUnknown(did.to_owned()).into()),
        },
        other => return Err(PeerError::UnsupportedNumalgo(other).into()),
    };
    Ok(doc)
}

/// Resolves the short form `did:peer:4<hash>` given its long form (seen earlier): the long
/// form's document, contextualised with the short DID (`alsoKnownAs` names the long form).
///
/// # Errors
/// As [`resolve`], plus [`PeerError::LongFormMismatch`] if `long` is not the long form of
/// `short`.
pub fn resolve_short(short: &str, long: &str) -> Result<DidDocument, ResolveError> {
    let (hash, encoded) = long
        .strip_prefix("did:peer:4")
        .and_then(|r| r.split_once(':'))
        .ok_or_else(|| PeerError::LongFormMismatch(short.to_owned()))?;
    if short.strip_prefix("did:peer:4") != Some(hash) {
        return Err(PeerError::LongFormMismatch(short.to_owned()).into());
    }
    Did::parse(short)?;
    let input = decode_4(hash, encoded)?;
    contextualize_4(short, long, input)
}

/// The short form of a long-form `did:peer:4` (`None` for anything else).
pub fn short_form(did: &str) -> Option<&str> {
    let rest = did.strip_prefix("did:peer:4")?;
    let (hash, _) = rest.split_once(':')?;
    did.get(..10 + hash.len())
}

/// Makes a `did:peer:2` from keys (in the order given) and service objects (written with
/// full names; the abbreviations are applied here).
///
/// # Errors
/// [`PeerError::ServiceNotObject`] if a service is not a JSON object.
pub fn did_peer_2(keys: &[(Purpose, PublicKey)], services: &[Value]) -> Result<String, PeerError> {
    let mut did = String::from("did:peer:2");
    for (purpose, key) in keys {
        did.push('.');
        did.push(purpose.code());
        did.push_str(&key.to_multibase());
    }
    for (i, s) in services.iter().enumerate() {
        if !s.is_object() {
            return Err(PeerError::ServiceNotObject { index: i });
        }
        did.push_str(".S");
        did.push_str(&URL_SAFE_NO_PAD.encode(abbreviate(s).to_string()));
    }
    Ok(did)
}

fn resolve_0(did: &str, rest: &str) -> Result<DidDocument, ResolveError> {
    let key_did = format!("did:key:{rest}");
    let doc = crate::key::resolve(&key_did).map_err(|e| match e {
        ResolveError::Key(k) => ResolveError::Peer(PeerError::Key { index: 0, error: k }),
        ResolveError::InvalidMethodSpecificId { reason, .. } => {
            ResolveError::Peer(PeerError::Malformed(reason))
        }
        other => other,
    })?;
    let text = doc.to_json().to_string().replace(&key_did, did);
    let v: Value = serde_json::from_str(&text).map_err(|e| PeerError::Malformed(e.to_string()))?;
    DidDocument::from_json_value(&v).map_err(|e| PeerError::Document(e).into())
}

fn resolve_2(did: &str, rest: &str) -> Result<DidDocument, ResolveError> {
    let body = rest
        .strip_prefix('.')
        .ok_or_else(|| PeerError::Malformed("did:peer:2 elements must start with '.'".into()))?;
    let mut vms = Vec::new();
    let mut rels: Map<String, Value> = Map::new();
    let mut services = Vec::new();
    let mut key_n = 0usize;
    let mut unnamed_services = 0usize;
    for (index, element) in body.split('.').enumerate() {
        if index >= MAX_ELEMENTS {
            return Err(PeerError::TooManyElements(MAX_ELEMENTS).into());
        }
        let mut chars = element.chars();
        let code = chars.next().ok_or(PeerError::EmptyElement { index })?;
        let value = chars.as_str();
        if code == 'S' {
            let mut service = decode_service(index, value)?;
            if !service.contains_key("id") {
                let id = if unnamed_services == 0 {
                    "#service".to_owned()
                } else {
                    format!("#service-{unnamed_services}")
                };
                unnamed_services += 1;
                service.insert("id".into(), Value::String(id));
            }
            services.push(Value::Object(service));
            continue;
        }
        let purpose = Purpose::from_code(code).ok_or(PeerError::UnknownPurpose { index, code })?;
        let key =
            PublicKey::from_multibase(value).map_err(|error| PeerError::Key { index, error })?;
        if key.to_multibase() != value {
            return Err(PeerError::Malformed(format!(
                "element {index}: not the canonical multibase encoding of its key"
            ))
            .into());
        }
        key_n += 1;
        let id = format!("#key-{key_n}");
        vms.push(json!({
            "id": id,
            "type": "Multikey",
            "controller": did,
            "publicKeyMultibase": value,
        }));
        let list = rels
            .entry(purpose.relationship())
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(a) = list {
            a.push(Value::String(id));
        }
    }
    let mut doc = json!({
        "@context": [DID_CONTEXT_V1, MULTIKEY_CONTEXT_V1],
        "id": did,
        "verificationMethod": vms,
    });
    if let Some(obj) = doc.as_object_mut() {
        obj.extend(rels);
        if !services.is_empty() {
            obj.insert("service".into(), Value::Array(services));
        }
    }
    DidDocument::from_json_value(&doc).map_err(|e| PeerError::Document(e).into())
}

/// Base64url (padding tolerated) → JSON object → abbreviations expanded.
fn decode_service(index: usize, b64: &str) -> Result<Map<String, Value>, PeerError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(b64)
        .or_else(|_| URL_SAFE.decode(b64))
        .map_err(|_| PeerError::ServiceNotBase64 { index })?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| PeerError::ServiceNotJson {
        index,
        reason: e.to_string(),
    })?;
    match expand(&v) {
        Value::Object(o) => Ok(o),
        _ => Err(PeerError::ServiceNotObject { index }),
    }
}

/// Replaces the abbreviated key names (recursively, through nested endpoint objects and
/// arrays) and an abbreviated `type` value with the common strings.
fn expand(v: &Value) -> Value {
    match v {
        Value::Object(o) => {
            let mut out = Map::new();
            for (k, val) in o {
                let name = match k.as_str() {
                    "t" => "type",
                    "s" => "serviceEndpoint",
                    "r" => "routingKeys",
                    "a" => "accept",
                    other => other,
                };
                let val = if name == "type" {
                    expand_type(val)
                } else {
                    expand(val)
                };
                out.insert(name.to_owned(), val);
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(expand).collect()),
        other => other.clone(),
    }
}

fn expand_type(v: &Value) -> Value {
    match v {
        Value::String(s) if s == "dm" => Value::String("DIDCommMessaging".into()),
        Value::Array(a) => Value::Array(a.iter().map(expand_type).collect()),
        other => other.clone(),
    }
}

/// The inverse of [`expand`], for encoding.
fn abbreviate(v: &Value) -> Value {
    match v {
        Value::Object(o) => {
            let mut out = Map::new();
            for (k, val) in o {
                let short = match k.as_str() {
                    "type" => "t",
                    "serviceEndpoint" => "s",
                    "routingKeys" => "r",
                    "accept" => "a",
                    other => other,
                };
                let val = if k == "type" {
                    match val {
                        Value::String(s) if s == "DIDCommMessaging" => Value::String("dm".into()),
                        other => other.clone(),
                    }
                } else {
                    abbreviate(val)
                };
                out.insert(short.to_owned(), val);
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(abbreviate).collect()),
        other => other.clone(),
    }
}

fn resolve_4_long(did: &str, hash: &str, encoded: &str) -> Result<DidDocument, ResolveError> {
    let input = decode_4(hash, encoded)?;
    let short = short_form(did).unwrap_or(did);
    contextualize_4(did, short, input)
}

/// Checks the hash over the encoded document and decodes the input document.
fn decode_4(hash: &str, encoded: &str) -> Result<Map<String, Value>, PeerError> {
    let hash_bytes = multibase_z(hash, "hash")?;
    let digest = hash_bytes
        .strip_prefix(&MULTIHASH_SHA256[..])
        .filter(|d| d.len() == 32)
        .ok_or_else(|| {
            PeerError::Malformed("did:peer:4 hash is not a sha2-256 multihash".into())
        })?;
    let actual = Sha256::digest(encoded.as_bytes());
    if digest != actual.as_slice() {
        return Err(PeerError::HashMismatch);
    }
    let doc_bytes = multibase_z(encoded, "encoded document")?;
    let json_bytes = doc_bytes
        .strip_prefix(&MULTICODEC_JSON[..])
        .ok_or_else(|| {
            PeerError::Malformed("did:peer:4 document is not multicodec json (0x0200)".into())
        })?;
    let v: Value = serde_json::from_slice(json_bytes)
        .map_err(|e| PeerError::DocumentNotJson(e.to_string()))?;
    match v {
        Value::Object(o) => Ok(o),
        _ => Err(PeerError::DocumentNotObject),
    }
}

fn multibase_z(s: &str, what: &str) -> Result<Vec<u8>, PeerError> {
    let body = s.strip_prefix('z').ok_or_else(|| {
        PeerError::Malformed(format!(
            "did:peer:4 {what} must be base58btc multibase (start with 'z')"
        ))
    })?;
    bs58::decode(body)
        .into_vec()
        .map_err(|_| PeerError::Malformed(format!("did:peer:4 {what} is not valid base58btc")))
}

fn contextualize_4(
    did: &str,
    other_form: &str,
    mut input: Map<String, Value>,
) -> Result<DidDocument, ResolveError> {
    if input.contains_key("id") {
        return Err(
            PeerError::Malformed("did:peer:4 input document must not have an id".into()).into(),
        );
    }
    input.insert("id".into(), Value::String(did.to_owned()));
    if other_form != did {
        let aka = input
            .entry("alsoKnownAs")
            .or_insert_with(|| Value::Array(Vec::new()));
        match aka {
            Value::Array(a) => a.push(Value::String(other_form.to_owned())),
            _ => {
                return Err(
                    PeerError::Malformed("did:peer:4 alsoKnownAs is not a list".into()).into(),
                )
            }
        }
    }
    DidDocument::from_json_value(&Value::Object(input)).map_err(|e| PeerError::Document(e).into())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn numalgo_0_is_did_key() {
        let key = "z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp";
        let d = resolve(&format!("did:peer:0{key}")).unwrap();
        let k = crate::key::resolve(&format!("did:key:{key}")).unwrap();
        assert_eq!(
            d.key_agreement_methods()[0].key,
            k.key_agreement_methods()[0].key
        );
        assert!(d.key_agreement_methods()[0].id.starts_with("did:peer:0"));
    }

    #[test]
    fn create_then_resolve() {
        let ed = PublicKey::Ed25519(
            crate::key::resolve("did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp")
                .unwrap()
                .authentication_methods()[0]
                .key
                .as_bytes()
                .to_owned(),
        );
        let x = PublicKey::X25519([9; 32]);
        let svc = json!({"type": "DIDCommMessaging", "serviceEndpoint": {
            "uri": "https://m.example/didcomm", "accept": ["didcomm/v2"],
            "routingKeys": ["did:key:z6Mk#z6LS"]}});
        let did = did_peer_2(
            &[(Purpose::Verification, ed), (Purpose::Encryption, x)],
            &[svc],
        )
        .unwrap();
        let d = resolve(&did).unwrap();
        assert_eq!(d.authentication_methods()[0].id, format!("{did}#key-1"));
        assert_eq!(d.key_agreement_methods()[0].key, x);
        let s = d.didcomm_services();
        assert_eq!(s[0].uri, "https://m.example/didcomm");
        assert_eq!(s[0].id, format!("{did}#service"));
        assert_eq!(s[0].routing_keys, vec!["did:key:z6Mk#z6LS"]);
    }

    #[test]
    fn short_form_of_long() {
        assert_eq!(short_form("did:peer:4zQmX:zABC"), Some("did:peer:4zQmX"));
        assert_eq!(short_form("did:peer:4zQmX"), None);
        assert_eq!(short_form("did:peer:2.Vz"), None);
    }
}
