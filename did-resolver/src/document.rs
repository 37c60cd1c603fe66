//! The typed DID document (W3C DID Core 1.0 §5) restricted to what mpc-did uses:
//! Ed25519/X25519 verification methods, verification relationships and services, with
//! DIDComm v2 `DIDCommMessaging` services decoded.

use serde_json::{json, Map, Value};

use crate::did::{Did, DidUrl};
use crate::error::{DocumentError, KeyError};
use crate::public_key::PublicKey;

/// Largest DID document accepted (bytes of JSON). Also the did:web response limit.
pub const MAX_DOCUMENT_BYTES: usize = 64 * 1024;

/// Most verification methods / services / relationship entries accepted per list; a bound
/// on work for hostile documents far above real use.
const MAX_ENTRIES: usize = 256;

/// The DID Core v1 JSON-LD context.
pub const DID_CONTEXT_V1: &str = "https://www.w3.org/ns/did/v1";
/// The Multikey context (did:key spec examples use `Multikey` verification methods).
pub const MULTIKEY_CONTEXT_V1: &str = "https://w3id.org/security/multikey/v1";
/// The JsonWebKey2020 context.
pub const JWS2020_CONTEXT_V1: &str = "https://w3id.org/security/suites/jws-2020/v1";

/// Accessor for one verification-relationship list.
type RelationshipField = fn(&mut DidDocument) -> &mut Vec<String>;

/// The DIDComm v2 service type.
pub const DIDCOMM_SERVICE_TYPE: &str = "DIDCommMessaging";

/// Most `routingKeys` a DIDComm service may list; [`DidDocument::didcomm_services`] skips
/// a service that lists more. Each routing key is one more anoncrypt `forward` layer, and
/// each layer base64-encodes the one inside (about ×4/3), so the packed size grows
/// exponentially with the count (audit H1: 64 keys would need about 10¹¹ bytes). Routing 2.0
/// uses one or two mediators in practice; four is ample (spec/didcomm.md §"Routing").
pub const MAX_ROUTING_KEYS: usize = 4;

/// How a verification method expresses its key, kept so that a parsed document
/// re-serialises in the form it came in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeyFormat {
    /// `publicKeyMultibase` (multicodec + base58btc).
    Multibase,
    /// `publicKeyJwk` (OKP JWK).
    Jwk,
    /// Legacy `publicKeyBase58` (raw key bytes).
    Base58,
}

/// A verification method with a key we can use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerificationMethod {
    /// Absolute DID URL, `did:…#fragment`.
    pub id: String,
    /// The controlling DID.
    pub controller: String,
    /// The public key.
    pub key: PublicKey,
    /// The `type` as written, e.g. `Multikey`, `JsonWebKey2020`,
    /// `Ed25519VerificationKey2018`, `X25519KeyAgreementKey2019`.
    pub method_type: String,
    /// How the key is encoded.
    pub format: KeyFormat,
}

impl VerificationMethod {
    /// A `Multikey` method with `publicKeyMultibase` (the did:key spec's current form).
    pub fn multikey(id: impl Into<String>, controller: impl Into<String>, key: PublicKey) -> Self {
        Self {
            id: id.into(),
            controller: controller.into(),
            key,
            method_type: "Multikey".to_owned(),
            format: KeyFormat::Multibase,
        }
    }

    /// A `JsonWebKey2020` method with `publicKeyJwk` (widest DIDComm interop).
    pub fn json_web_key(
        id: impl Into<String>,
        controller: impl Into<String>,
        key: PublicKey,
    ) -> Self {
        Self {
            id: id.into(),
            controller: controller.into(),
            key,
            method_type: "JsonWebKey2020".to_owned(),
            format: KeyFormat::Jwk,
        }
    }

    /// The fragment of the id (after `#`), if any.
    pub fn fragment(&self) -> Option<&str> {
        self.id.split_once('#').map(|(_, f)| f)
    }

    /// W3C DID Core JSON of this method.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("id".into(), Value::String(self.id.clone()));
        m.insert("type".into(), Value::String(self.method_type.clone()));
        m.insert("controller".into(), Value::String(self.controller.clone()));
        match self.format {
            KeyFormat::Multibase => {
                m.insert("publicKeyMultibase".into(), self.key.to_multibase().into());
            }
            KeyFormat::Jwk => {
                m.insert("publicKeyJwk".into(), self.key.to_jwk());
            }
            KeyFormat::Base58 => {
                m.insert("publicKeyBase58".into(), self.key.to_base58().into());
            }
        }
        Value::Object(m)
    }
}

/// A service entry (DID Core §5.4). `serviceEndpoint` is kept as JSON.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    /// Absolute id (`did:…#frag`).
    pub id: String,
    /// The `type` (one or more).
    pub types: Vec<String>,
    /// `serviceEndpoint`: a URI string, an object, or an array of them.
    pub service_endpoint: Value,
    /// Other members (e.g. the DIDComm v2.0 `accept` / `routingKeys` beside a string
    /// endpoint).
    pub extra: Map<String, Value>,
}

impl Service {
    /// W3C DID Core JSON of this service.
    pub fn to_json(&self) -> Value {
        let mut m = self.extra.clone();
        m.insert("id".into(), Value::String(self.id.clone()));
        let t = match self.types.as_slice() {
            [one] => Value::String(one.clone()),
            many => Value::Array(many.iter().cloned().map(Value::String).collect()),
        };
        m.insert("type".into(), t);
        m.insert("serviceEndpoint".into(), self.service_endpoint.clone());
        Value::Object(m)
    }

    /// Whether this is a DIDComm v2 `DIDCommMessaging` service.
    pub fn is_didcomm(&self) -> bool {
        self.types.iter().any(|t| t == DIDCOMM_SERVICE_TYPE)
    }
}

/// A DIDComm v2 messaging endpoint (DIDComm Messaging v2.1 §"Service Endpoint"):
/// `{"type":"DIDCommMessaging","serviceEndpoint":{"uri":…,"accept":[…],"routingKeys":[…]}}`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DidCommService {
    /// Service id (absolute DID URL).
    pub id: String,
    /// Where to send: an https/wss URI, or a DID (of a mediator).
    pub uri: String,
    /// Accepted media-type profiles, e.g. `didcomm/v2`.
    #[serde(default)]
    pub accept: Vec<String>,
    /// Key ids (DID URLs) of the mediators to wrap `forward` messages for, outermost last.
    #[serde(default, rename = "routingKeys")]
    pub routing_keys: Vec<String>,
}

impl DidCommService {
    /// The service entry in the v2.1 object form.
    pub fn to_service(&self) -> Service {
        Service {
            id: self.id.clone(),
            types: vec![DIDCOMM_SERVICE_TYPE.to_owned()],
            service_endpoint: json!({
                "uri": self.uri,
                "accept": self.accept,
                "routingKeys": self.routing_keys,
            }),
            extra: Map::new(),
        }
    }
}

/// A DID document restricted to the parts mpc-did uses.
///
/// Parsing normalises: methods embedded in a relationship (`authentication`,
/// `keyAgreement`, …) are moved into [`verification_method`](Self::verification_method)
/// and replaced by a reference; relative ids (`#key-1`) are made absolute
/// (`did:…#key-1`). Methods whose key type we do not support (P-256, secp256k1, …) are kept
/// verbatim in [`unsupported_methods`](Self::unsupported_methods) and are never returned by
/// the key look-ups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DidDocument {
    /// `@context` as written (default: the DID v1 context).
    pub context: Value,
    /// The DID.
    pub id: String,
    /// `alsoKnownAs`.
    pub also_known_as: Vec<String>,
    /// `controller` (empty when absent).
    pub controller: Vec<String>,
    /// Verification methods with supported (Ed25519/X25519) keys.
    pub verification_method: Vec<VerificationMethod>,
    /// `authentication` references (absolute DID URLs).
    pub authentication: Vec<String>,
    /// `assertionMethod` references.
    pub assertion_method: Vec<String>,
    /// `keyAgreement` references.
    pub key_agreement: Vec<String>,
    /// `capabilityInvocation` references.
    pub capability_invocation: Vec<String>,
    /// `capabilityDelegation` references.
    pub capability_delegation: Vec<String>,
    /// Services.
    pub service: Vec<Service>,
    /// Verification methods of key types we do not support, as JSON with absolute ids.
    pub unsupported_methods: Vec<Value>,
}

impl DidDocument {
    /// An empty document for `id` with the DID v1 context.
    pub fn new(id: impl Into<String>) -> Self {
        Self {
            context: Value::String(DID_CONTEXT_V1.to_owned()),
            id: id.into(),
            also_known_as: Vec::new(),
            controller: Vec::new(),
            verification_method: Vec::new(),
            authentication: Vec::new(),
            assertion_method: Vec::new(),
            key_agreement: Vec::new(),
            capability_invocation: Vec::new(),
            capability_delegation: Vec::new(),
            service: Vec::new(),
            unsupported_methods: Vec::new(),
        }
    }

    /// Parses a DID document from JSON bytes (at most [`MAX_DOCUMENT_BYTES`]).
    ///
    /// # Errors
    /// [`DocumentError`]: too large, not JSON, wrong shape, invalid `id`, a malformed key,
    /// duplicate method ids, or a reference to a method of this document that does not
    /// exist.
    pub fn from_json_slice(bytes: &[u8]) -> Result<Self, DocumentError> {
        if bytes.len() > MAX_DOCUMENT_BYTES {
            return Err(DocumentError::TooLarge {
                len: bytes.len(),
                max: MAX_DOCUMENT_BYTES,
            });
        }
        let v: Value =
            serde_json::from_slice(bytes).map_err(|e| DocumentError::NotJson(e.to_string()))?;
        Self::from_json_value(&v)
    }

    /// Parses a DID document from a JSON value (see [`from_json_slice`](Self::from_json_slice)).
    ///
    /// # Errors
    /// As [`from_json_slice`](Self::from_json_slice), except size and JSON syntax.
    pub fn from_json_value(v: &Value) -> Result<Self, DocumentError> {
        let obj = v
            .as_object()
            .ok_or_else(|| DocumentError::Invalid("document is not a JSON object".to_owned()))?;
        let id = obj
            .get("id")
            .and_then(Value::as_str)
            .ok_or_else(|| DocumentError::Invalid("missing string \"id\"".to_owned()))?;
        Did::parse(id).map_err(DocumentError::InvalidId)?;
        let mut doc = Self::new(id);
        if let Some(c) = obj.get("@context") {
            doc.context = c.clone();
        }
        doc.also_known_as = string_list(obj, "alsoKnownAs")?;
        doc.controller = string_list(obj, "controller")?;

        if let Some(vms) = obj.get("verificationMethod") {
            for vm in list(vms, "verificationMethod")? {
                doc.add_parsed_method(vm)?;
            }
        }
        let rels: [(&'static str, RelationshipField); 5] = [
            ("authentication", |d| &mut d.authentication),
            ("assertionMethod", |d| &mut d.assertion_method),
            ("keyAgreement", |d| &mut d.key_agreement),
            ("capabilityInvocation", |d| &mut d.capability_invocation),
            ("capabilityDelegation", |d| &mut d.capability_delegation),
        ];
        for (name, field) in rels {
            let Some(entries) = obj.get(name) else {
                continue;
            };
            for entry in list(entries, name)? {
                let reference = match entry {
                    Value::String(s) => doc.absolute(s, name)?,
                    Value::Object(_) => doc.add_parsed_method(entry)?,
                    _ => {
                        return Err(DocumentError::Invalid(format!(
                            "{name} entries must be strings or objects"
                        )))
                    }
                };
                field(&mut doc).push(reference);
            }
        }
        if let Some(services) = obj.get("service") {
            for s in list(services, "service")? {
                let s = doc.parse_service(s)?;
                doc.service.push(s);
            }
        }
        doc.check_references()?;
        Ok(doc)
    }

    /// W3C DID Core JSON (`application/did+json`).
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("@context".into(), self.context.clone());
        m.insert("id".into(), Value::String(self.id.clone()));
        if !self.also_known_as.is_empty() {
            m.insert("alsoKnownAs".into(), json!(self.also_known_as));
        }
        match self.controller.as_slice() {
            [] => {}
            [one] => {
                m.insert("controller".into(), Value::String(one.clone()));
            }
            many => {
                m.insert("controller".into(), json!(many));
            }
        }
        let vms: Vec<Value> = self
            .verification_method
            .iter()
            .map(VerificationMethod::to_json)
            .chain(self.unsupported_methods.iter().cloned())
            .collect();
        if !vms.is_empty() {
            m.insert("verificationMethod".into(), Value::Array(vms));
        }
        for (name, refs) in [
            ("authentication", &self.authentication),
            ("assertionMethod", &self.assertion_method),
            ("keyAgreement", &self.key_agreement),
            ("capabilityInvocation", &self.capability_invocation),
            ("capabilityDelegation", &self.capability_delegation),
        ] {
            if !refs.is_empty() {
                m.insert(name.into(), json!(refs));
            }
        }
        if !self.service.is_empty() {
            m.insert(
                "service".into(),
                Value::Array(self.service.iter().map(Service::to_json).collect()),
            );
        }
        Value::Object(m)
    }

    /// The verification method with this id, absolute (`did:…#frag`) or relative (`#frag`).
    pub fn verification_method(&self, kid: &str) -> Option<&VerificationMethod> {
        let absolute;
        let kid = if kid.starts_with('#') {
            absolute = format!("{}{kid}", self.id);
            absolute.as_str()
        } else {
            kid
        };
        self.verification_method.iter().find(|vm| vm.id == kid)
    }

    /// The `keyAgreement` methods of this document with supported keys, in document order.
    pub fn key_agreement_methods(&self) -> Vec<&VerificationMethod> {
        self.resolve_refs(&self.key_agreement)
    }

    /// The `authentication` methods of this document with supported keys, in document order.
    pub fn authentication_methods(&self) -> Vec<&VerificationMethod> {
        self.resolve_refs(&self.authentication)
    }

    /// The `assertionMethod` methods with supported keys, in document order.
    pub fn assertion_methods(&self) -> Vec<&VerificationMethod> {
        self.resolve_refs(&self.assertion_method)
    }

    /// The DIDComm v2 endpoints: every `DIDCommMessaging` service, in both the v2.1 object
    /// form (`serviceEndpoint: {uri, accept, routingKeys}` or an array of such objects) and
    /// the v2.0 form (`serviceEndpoint: "uri"` with `accept`/`routingKeys` beside it).
    /// Entries without a usable `uri` are skipped, and so are entries listing more than
    /// [`MAX_ROUTING_KEYS`] routing keys (spec/identity.md: the document is still accepted,
    /// that endpoint is not usable).
    pub fn didcomm_services(&self) -> Vec<DidCommService> {
        let mut out = Vec::new();
        for s in self.service.iter().filter(|s| s.is_didcomm()) {
            let endpoints: Vec<&Value> = match &s.service_endpoint {
                Value::Array(a) => a.iter().collect(),
                other => vec![other],
            };
            for ep in endpoints {
                let found = match ep {
                    Value::String(uri) => Some((uri.clone(), &s.extra)),
                    Value::Object(o) => o
                        .get("uri")
                        .and_then(Value::as_str)
                        .map(|u| (u.to_owned(), o)),
                    _ => None,
                };
                let Some((uri, fields)) = found else {
                    continue;
                };
                let routing = fields.get("routingKeys");
                if routing.and_then(Value::as_array).map_or(0, Vec::len) > MAX_ROUTING_KEYS {
                    continue;
                }
                out.push(DidCommService {
                    id: s.id.clone(),
                    uri,
                    accept: strings_lenient(fields.get("accept")),
                    routing_keys: strings_lenient(routing),
                });
            }
        }
        out
    }

    fn resolve_refs<'a>(&'a self, refs: &[String]) -> Vec<&'a VerificationMethod> {
        refs.iter()
            .filter_map(|r| self.verification_method.iter().find(|vm| &vm.id == r))
            .collect()
    }

    /// Makes `reference` absolute against this document's id.
    fn absolute(&self, reference: &str, what: &str) -> Result<String, DocumentError> {
        if reference.starts_with('#') {
            if reference.len() == 1 {
                return Err(DocumentError::Invalid(format!(
                    "{what}: empty fragment \"#\""
                )));
            }
            // Validate the absolute form too, so that a parsed document's own JSON (which
            // carries absolute ids) always parses back (found by fuzz/did_document).
            let absolute = format!("{}{reference}", self.id);
            DidUrl::parse(&absolute).map_err(|e| {
                DocumentError::Invalid(format!("{what}: {reference:?} is not a DID URL: {e}"))
            })?;
            return Ok(absolute);
        }
        DidUrl::parse(reference).map_err(|e| {
            DocumentError::Invalid(format!("{what}: {reference:?} is not a DID URL: {e}"))
        })?;
        Ok(reference.to_owned())
    }

    /// Parses one verification method, stores it, and returns its absolute id.
    fn add_parsed_method(&mut self, v: &Value) -> Result<String, DocumentError> {
        let obj = v.as_object().ok_or_else(|| {
            DocumentError::Invalid("verification method is not an object".to_owned())
        })?;
        let raw_id = obj.get("id").and_then(Value::as_str).ok_or_else(|| {
            DocumentError::Invalid("verification method without string id".to_owned())
        })?;
        let id = self.absolute(raw_id, "verification method id")?;
        let exists = self.verification_method.iter().any(|vm| vm.id == id)
            || self
                .unsupported_methods
                .iter()
                .any(|u| u.get("id").and_then(Value::as_str) == Some(id.as_str()));
        if exists {
            return Err(DocumentError::DuplicateId(id));
        }
        let method_type = obj
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                DocumentError::Invalid(format!("verification method {id:?} has no string type"))
            })?
            .to_owned();
        let controller = match obj.get("controller") {
            None => self.id.clone(),
            // DID Core §5.1.2: the controller value "MUST be a string that conforms to the
            // rules in 3.1 DID Syntax"; DIDComm v2.1's examples follow it. The DIDComm v2.0
            // appendix documents name a key id (a DID URL) instead, so a DID URL is
            // tolerated; anything else is refused.
            Some(Value::String(c)) => {
                DidUrl::parse(c).map_err(|e| {
                    DocumentError::Invalid(format!(
                        "verification method {id:?}: controller {c:?} is not a DID ({e})"
                    ))
                })?;
                c.clone()
            }
            Some(_) => {
                return Err(DocumentError::Invalid(format!(
                    "verification method {id:?}: controller is not a string"
                )))
            }
        };
        let bad_key = |error: KeyError| DocumentError::InvalidKey {
            id: id.clone(),
            error,
        };
        let parsed: Option<(PublicKey, KeyFormat)> = if let Some(mb) = obj.get("publicKeyMultibase")
        {
            let s = mb.as_str().ok_or_else(|| bad_key(KeyError::Empty))?;
            match PublicKey::from_multibase(s) {
                Ok(k) => Some((k, KeyFormat::Multibase)),
                Err(KeyError::UnsupportedCodec(_)) => None,
                Err(e) => return Err(bad_key(e)),
            }
        } else if let Some(jwk) = obj.get("publicKeyJwk") {
            match PublicKey::from_jwk(jwk) {
                Ok(k) => Some((k, KeyFormat::Jwk)),
                Err(KeyError::UnsupportedJwk(_)) => None,
                Err(e) => return Err(bad_key(e)),
            }
        } else if let Some(b58) = obj.get("publicKeyBase58") {
            let s = b58.as_str().ok_or_else(|| bad_key(KeyError::Empty))?;
            let x25519 = match method_type.as_str() {
                "Ed25519VerificationKey2018" | "Ed25519VerificationKey2020" => Some(false),
                "X25519KeyAgreementKey2019" | "X25519KeyAgreementKey2020" => Some(true),
                _ => None,
            };
            match x25519 {
                Some(x) => Some((
                    PublicKey::from_base58(s, x).map_err(bad_key)?,
                    KeyFormat::Base58,
                )),
                None => None,
            }
        } else {
            None
        };
        match parsed {
            Some((key, format)) => self.verification_method.push(VerificationMethod {
                id: id.clone(),
                controller,
                key,
                method_type,
                format,
            }),
            None => {
                let mut kept = obj.clone();
                kept.insert("id".into(), Value::String(id.clone()));
                self.unsupported_methods.push(Value::Object(kept));
            }
        }
        if self.verification_method.len() + self.unsupported_methods.len() > MAX_ENTRIES {
            return Err(DocumentError::Invalid(format!(
                "more than {MAX_ENTRIES} verification methods"
            )));
        }
        Ok(id)
    }

    fn parse_service(&self, v: &Value) -> Result<Service, DocumentError> {
        let obj = v
            .as_object()
            .ok_or_else(|| DocumentError::Invalid("service is not an object".to_owned()))?;
        let raw_id = obj
            .get("id")
            .and_then(Value::as_str)
            .ok_or_else(|| DocumentError::Invalid("service without string id".to_owned()))?;
        let id = if raw_id.starts_with('#') {
            self.absolute(raw_id, "service id")?
        } else {
            // DID Core allows any URI as a service id; keep it as written.
            raw_id.to_owned()
        };
        let types = match obj.get("type") {
            Some(Value::String(t)) => vec![t.clone()],
            Some(Value::Array(a)) if !a.is_empty() => a
                .iter()
                .map(|t| t.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    DocumentError::Invalid(format!("service {id:?}: type must be strings"))
                })?,
            _ => {
                return Err(DocumentError::Invalid(format!(
                    "service {id:?}: missing type"
                )))
            }
        };
        let service_endpoint = obj.get("serviceEndpoint").cloned().ok_or_else(|| {
            DocumentError::Invalid(format!("service {id:?}: missing serviceEndpoint"))
        })?;
        let mut extra = obj.clone();
        for k in ["id", "type", "serviceEndpoint"] {
            extra.remove(k);
        }
        Ok(Service {
            id,
            types,
            service_endpoint,
            extra,
        })
    }

    fn check_references(&self) -> Result<(), DocumentError> {
        let known = |r: &str| {
            self.verification_method.iter().any(|vm| vm.id == r)
                || self
                    .unsupported_methods
                    .iter()
                    .any(|u| u.get("id").and_then(Value::as_str) == Some(r))
        };
        for (name, refs) in [
            ("authentication", &self.authentication),
            ("assertionMethod", &self.assertion_method),
            ("keyAgreement", &self.key_agreement),
            ("capabilityInvocation", &self.capability_invocation),
            ("capabilityDelegation", &self.capability_delegation),
        ] {
            if refs.len() > MAX_ENTRIES {
                return Err(DocumentError::Invalid(format!(
                    "{name}: more than {MAX_ENTRIES} entries"
                )));
            }
            for r in refs {
                // References into other DIDs' documents are legal and resolved elsewhere.
                let ours = r.split_once('#').map_or(r.as_str(), |(d, _)| d) == self.id;
                if ours && !known(r) {
                    return Err(DocumentError::DanglingReference {
                        relationship: name,
                        id: r.clone(),
                    });
                }
            }
        }
        if self.service.len() > MAX_ENTRIES {
            return Err(DocumentError::Invalid(format!(
                "more than {MAX_ENTRIES} services"
            )));
        }
        Ok(())
    }
}

fn list<'a>(v: &'a Value, name: &str) -> Result<&'a Vec<Value>, DocumentError> {
    let a = v
        .as_array()
        .ok_or_else(|| DocumentError::Invalid(format!("{name} is not an array")))?;
    if a.len() > MAX_ENTRIES {
        return Err(DocumentError::Invalid(format!(
            "{name}: more than {MAX_ENTRIES} entries"
        )));
    }
    Ok(a)
}

/// A member that is a string or an array of strings (DID Core `controller`, `alsoKnownAs`).
fn string_list(obj: &Map<String, Value>, name: &str) -> Result<Vec<String>, DocumentError> {
    match obj.get(name) {
        None => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(a)) => a
            .iter()
            .take(MAX_ENTRIES + 1)
            .map(|x| x.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .filter(|v| v.len() <= MAX_ENTRIES)
            .ok_or_else(|| DocumentError::Invalid(format!("{name} must be strings"))),
        Some(_) => Err(DocumentError::Invalid(format!(
            "{name} must be a string or array"
        ))),
    }
}

fn strings_lenient(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_owned))
            .collect(),
        Some(Value::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    }
}

impl serde::Serialize for DidDocument {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for DidDocument {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        Self::from_json_value(&v).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const ALICE: &str = "did:example:alice";

    #[test]
    fn normalises_embedded_and_relative_methods() {
        // DID Core §5.3.1 example shape: an embedded method in keyAgreement, a relative ref.
        let doc = json!({
            "@context": DID_CONTEXT_V1,
            "id": ALICE,
            "verificationMethod": [{
                "id": "#key-1", "type": "JsonWebKey2020", "controller": ALICE,
                "publicKeyJwk": PublicKey::Ed25519([1; 32]).to_jwk()
            }],
            "authentication": ["#key-1"],
            "keyAgreement": [{
                "id": "did:example:alice#x-1", "type": "X25519KeyAgreementKey2020",
                "controller": ALICE,
                "publicKeyMultibase": PublicKey::X25519([2; 32]).to_multibase()
            }]
        });
        let d = DidDocument::from_json_slice(doc.to_string().as_bytes()).unwrap();
        assert_eq!(d.verification_method.len(), 2);
        assert_eq!(d.authentication, vec!["did:example:alice#key-1"]);
        assert_eq!(d.key_agreement, vec!["did:example:alice#x-1"]);
        assert_eq!(d.key_agreement_methods()[0].key, PublicKey::X25519([2; 32]));
        assert_eq!(
            d.authentication_methods()[0].key,
            PublicKey::Ed25519([1; 32])
        );
        assert!(d.verification_method("#x-1").is_some());
        assert!(d.verification_method("did:example:alice#key-1").is_some());
        assert!(d.verification_method("#nope").is_none());
        // Round trip through our own JSON is stable.
        let again = DidDocument::from_json_value(&d.to_json()).unwrap();
        assert_eq!(again, d);
    }

    #[test]
    fn keeps_unsupported_methods_aside() {
        let doc = json!({
            "id": ALICE,
            "verificationMethod": [{
                "id": "#p256", "type": "JsonWebKey2020", "controller": ALICE,
                "publicKeyJwk": {"kty":"EC","crv":"P-256","x":"AA","y":"AA"}
            }],
            "keyAgreement": ["#p256"]
        });
        let d = DidDocument::from_json_value(&doc).unwrap();
        assert!(d.verification_method.is_empty());
        assert_eq!(d.unsupported_methods.len(), 1);
        assert!(d.key_agreement_methods().is_empty());
    }

    #[test]
    fn typed_errors_for_bad_documents() {
        let big = vec![b' '; MAX_DOCUMENT_BYTES + 1];
        assert!(matches!(
            DidDocument::from_json_slice(&big),
            Err(DocumentError::TooLarge { .. })
        ));
        assert!(matches!(
            DidDocument::from_json_slice(b"<html>"),
            Err(DocumentError::NotJson(_))
        ));
        assert!(matches!(
            DidDocument::from_json_slice(b"[]"),
            Err(DocumentError::Invalid(_))
        ));
        assert!(matches!(
            DidDocument::from_json_slice(br#"{"id":"nope"}"#),
            Err(DocumentError::InvalidId(_))
        ));
        let dangling = json!({"id": ALICE, "keyAgreement": ["#missing"]});
        assert!(matches!(
            DidDocument::from_json_value(&dangling),
            Err(DocumentError::DanglingReference {
                relationship: "keyAgreement",
                ..
            })
        ));
        let dup = json!({"id": ALICE, "verificationMethod": [
            {"id":"#k","type":"Multikey","publicKeyMultibase": PublicKey::Ed25519([1;32]).to_multibase()},
            {"id":"#k","type":"Multikey","publicKeyMultibase": PublicKey::Ed25519([2;32]).to_multibase()}
        ]});
        assert!(matches!(
            DidDocument::from_json_value(&dup),
            Err(DocumentError::DuplicateId(_))
        ));
        // An Ed25519 multicodec with only 3 key bytes.
        let short = format!("z{}", bs58::encode([0xed, 0x01, 1, 2, 3]).into_string());
        let bad_key = json!({"id": ALICE, "verificationMethod": [
            {"id":"#k","type":"Multikey","publicKeyMultibase": short}
        ]});
        assert!(matches!(
            DidDocument::from_json_value(&bad_key),
            Err(DocumentError::InvalidKey { .. })
        ));
        // DID Core §5.1.2: a verification method's controller "MUST be a string that
        // conforms to the rules in 3.1 DID Syntax" (a DID URL is tolerated, see the parser).
        let bad_controller = json!({"id": ALICE, "verificationMethod": [
            {"id":"#k","type":"Multikey","controller":"https://not.a.did/",
             "publicKeyMultibase": PublicKey::Ed25519([1;32]).to_multibase()}
        ]});
        assert!(matches!(
            DidDocument::from_json_value(&bad_controller),
            Err(DocumentError::Invalid(m)) if m.contains("controller")
        ));
        let other_controller = json!({"id": ALICE, "verificationMethod": [
            {"id":"#k","type":"Multikey","controller":"did:example:bob",
             "publicKeyMultibase": PublicKey::Ed25519([1;32]).to_multibase()}
        ]});
        let d = DidDocument::from_json_value(&other_controller).unwrap();
        assert_eq!(d.verification_method[0].controller, "did:example:bob");
        // Other DIDs' keys may be referenced.
        let foreign = json!({"id": ALICE, "authentication": ["did:example:bob#k"]});
        assert!(DidDocument::from_json_value(&foreign).is_ok());
    }

    #[test]
    fn didcomm_services_in_all_forms() {
        // DIDComm Messaging v2.1 §"DID Document Service Endpoint" (object and array forms)
        // and the v2.0 string form.
        let doc = json!({
            "id": ALICE,
            "service": [
                {"id": "#didcomm-1", "type": "DIDCommMessaging",
                 "serviceEndpoint": {"uri": "https://m.example/d", "accept": ["didcomm/v2"],
                                     "routingKeys": ["did:example:m#key-x25519-1"]}},
                {"id": "#didcomm-2", "type": "DIDCommMessaging",
                 "serviceEndpoint": [{"uri": "wss://m.example/ws"}, {"uri": "did:example:mediator"}]},
                {"id": "#didcomm-3", "type": "DIDCommMessaging",
                 "serviceEndpoint": "https://old.example", "accept": ["didcomm/v2"], "routingKeys": []},
                {"id": "#web", "type": "LinkedDomains", "serviceEndpoint": "https://alice.example"}
            ]
        });
        let d = DidDocument::from_json_value(&doc).unwrap();
        let s = d.didcomm_services();
        assert_eq!(s.len(), 4);
        assert_eq!(s[0].id, "did:example:alice#didcomm-1");
        assert_eq!(s[0].uri, "https://m.example/d");
        assert_eq!(s[0].accept, vec!["didcomm/v2"]);
        assert_eq!(s[0].routing_keys, vec!["did:example:m#key-x25519-1"]);
        assert_eq!(s[1].uri, "wss://m.example/ws");
        assert_eq!(s[2].uri, "did:example:mediator");
        assert_eq!(s[3].uri, "https://old.example");
        assert_eq!(s[3].accept, vec!["didcomm/v2"]);
        // A service built from DidCommService reads back the same.
        let mut d2 = DidDocument::new(ALICE);
        d2.service.push(s[0].to_service());
        assert_eq!(d2.didcomm_services(), vec![s[0].clone()]);
        let back: DidDocument = serde_json::from_value(serde_json::to_value(&d2).unwrap()).unwrap();
        assert_eq!(back, d2);
    }

    /// Audit H1: a service listing more than [`MAX_ROUTING_KEYS`] routing keys is skipped
    /// (each key is one more forward layer, ×4/3 in size); the document itself, its keys
    /// and its other services are kept.
    #[test]
    fn service_with_too_many_routing_keys_is_skipped() {
        let key = "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp#z6LShs9GGnqk85isEBzzshkuVWrVKsRp24GnDuHk8QWkARMW";
        let many = vec![key; 64];
        let ok = vec![key; MAX_ROUTING_KEYS];
        let doc = json!({
            "id": ALICE,
            "verificationMethod": [{
                "id": "#key-1", "type": "Multikey", "controller": ALICE,
                "publicKeyMultibase": PublicKey::X25519([2; 32]).to_multibase()
            }],
            "keyAgreement": ["#key-1"],
            "service": [
                {"id": "#many", "type": "DIDCommMessaging",
                 "serviceEndpoint": {"uri": "https://many.example", "routingKeys": many}},
                {"id": "#old-many", "type": "DIDCommMessaging",
                 "serviceEndpoint": "https://old-many.example", "routingKeys": many},
                {"id": "#ok", "type": "DIDCommMessaging",
                 "serviceEndpoint": {"uri": "https://ok.example", "routingKeys": ok}}
            ]
        });
        let d = DidDocument::from_json_value(&doc).unwrap();
        assert_eq!(d.service.len(), 3, "the document is accepted whole");
        assert_eq!(d.key_agreement_methods().len(), 1);
        let s = d.didcomm_services();
        assert_eq!(s.len(), 1, "{s:?}");
        assert_eq!(s[0].uri, "https://ok.example");
        assert_eq!(s[0].routing_keys.len(), MAX_ROUTING_KEYS);
    }
}
