//! Error types, one per operation, grouped by cause.
//!
//! Each `Display` is one complete line including the inner cause, so the inner errors are
//! fields, not `source()`s: a chain printer (the CLI's) would otherwise repeat them.

/// A string is not a syntactically valid DID or DID URL (DID Core §3.1, §3.2).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DidError {
    /// Longer than [`crate::MAX_DID_LEN`].
    #[error("DID is {len} bytes long, more than the {max} accepted")]
    TooLong {
        /// Input length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Does not start with `did:`.
    #[error("not a DID: it must start with \"did:\"")]
    MissingScheme,
    /// Method name empty or not lowercase letters and digits.
    #[error("invalid DID method name {0:?}: only lowercase letters and digits are allowed")]
    InvalidMethodName(String),
    /// Nothing after `did:<method>:`.
    #[error("DID has no method-specific id after \"did:<method>:\"")]
    MissingMethodSpecificId,
    /// A character outside the DID syntax, or bad percent-encoding.
    #[error("invalid DID method-specific id: {0}")]
    InvalidMethodSpecificId(String),
    /// A DID was expected but the input has a path, query or fragment.
    #[error("expected a bare DID but found a DID URL part starting with {part:?}")]
    UnexpectedDidUrlPart {
        /// The character that starts the path, query or fragment.
        part: char,
    },
    /// The DID URL's path, query or fragment is invalid.
    #[error("invalid DID URL: {0}")]
    InvalidDidUrl(String),
}

/// A public key encoding (multibase/multicodec, JWK, base58) could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Multibase string does not start with `z` (base58btc), the only base we accept.
    #[error("unsupported multibase prefix {0:?}: only base58btc ('z') is supported")]
    UnsupportedMultibase(char),
    /// Empty input.
    #[error("empty key encoding")]
    Empty,
    /// Input longer than any key we support could be.
    #[error("key encoding too long ({0} bytes)")]
    TooLong(usize),
    /// Not valid base58btc / base64url.
    #[error("invalid {encoding} encoding")]
    InvalidEncoding {
        /// `base58btc` or `base64url`.
        encoding: &'static str,
    },
    /// The multicodec prefix names a key type we do not support.
    #[error("unsupported key type: multicodec 0x{0:x} (supported: Ed25519 0xed, X25519 0xec)")]
    UnsupportedCodec(u64),
    /// The multicodec varint is truncated or overlong.
    #[error("invalid multicodec varint prefix")]
    InvalidCodec,
    /// Key bytes have the wrong length for the key type.
    #[error("{kind} public key must be 32 bytes, found {len}")]
    InvalidLength {
        /// `Ed25519` or `X25519`.
        kind: &'static str,
        /// Length found.
        len: usize,
    },
    /// The key is not a usable point on the curve (e.g. does not decompress, small order).
    #[error("{0} public key is not a valid curve point")]
    InvalidPoint(&'static str),
    /// JWK is not an OKP key on a curve we support.
    #[error("unsupported JWK: {0}")]
    UnsupportedJwk(String),
    /// JWK is malformed.
    #[error("invalid JWK: {0}")]
    InvalidJwk(String),
    /// A public JWK in a DID document contains private key material (`d`).
    #[error("JWK contains private key material (\"d\"), refusing it")]
    PrivateKeyInJwk,
}

/// A DID document could not be parsed into our typed model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DocumentError {
    /// Larger than [`crate::document::MAX_DOCUMENT_BYTES`].
    #[error("DID document is {len} bytes, more than the {max} accepted")]
    TooLarge {
        /// Size in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Not JSON at all.
    #[error("DID document is not valid JSON: {0}")]
    NotJson(String),
    /// JSON, but the wrong shape (e.g. not an object, `id` missing, a list is a string).
    #[error("invalid DID document: {0}")]
    Invalid(String),
    /// The document `id` is not a DID.
    #[error("DID document id is not a valid DID: {0}")]
    InvalidId(DidError),
    /// A verification method's key could not be decoded.
    #[error("verification method {id:?}: {error}")]
    InvalidKey {
        /// The method id.
        id: String,
        /// Why.
        error: KeyError,
    },
    /// Two verification methods share an id.
    #[error("duplicate verification method id {0:?}")]
    DuplicateId(String),
    /// A relationship references a method of this document that does not exist.
    #[error(
        "{relationship} references {id:?}, which is not a verification method of the document"
    )]
    DanglingReference {
        /// e.g. `keyAgreement`.
        relationship: &'static str,
        /// The reference.
        id: String,
    },
}

/// A `did:peer` could not be resolved (DIF Peer DID Method Specification).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    /// Nothing after `did:peer:`.
    #[error("did:peer has no numalgo digit")]
    Empty,
    /// A numalgo other than 0, 2 or 4.
    #[error("did:peer numalgo {0:?} is not supported (supported: 0, 2, 4)")]
    UnsupportedNumalgo(char),
    /// A did:peer:2 element with nothing after its `.`.
    #[error("did:peer:2 element {index} is empty")]
    EmptyElement {
        /// Position of the element (0-based).
        index: usize,
    },
    /// A did:peer:2 element whose purpose code is not one of `A E V I D S`.
    #[error(
        "did:peer:2 element {index} has unknown purpose code {code:?} (known: A, E, V, I, D, S)"
    )]
    UnknownPurpose {
        /// Position of the element (0-based).
        index: usize,
        /// The code found.
        code: char,
    },
    /// A did:peer:2 key element whose multibase key does not decode.
    #[error("did:peer:2 element {index}: {error}")]
    Key {
        /// Position of the element (0-based).
        index: usize,
        /// Why the key does not decode.
        error: KeyError,
    },
    /// A did:peer:2 service element that is not base64url.
    #[error("did:peer:2 service element {index} is not base64url")]
    ServiceNotBase64 {
        /// Position of the element (0-based).
        index: usize,
    },
    /// A did:peer:2 service element that is not JSON.
    #[error("did:peer:2 service element {index} is not JSON: {reason}")]
    ServiceNotJson {
        /// Position of the element (0-based).
        index: usize,
        /// The JSON parser's complaint.
        reason: String,
    },
    /// A did:peer:2 service element whose JSON is not an object.
    #[error("did:peer:2 service element {index} is not a JSON object")]
    ServiceNotObject {
        /// Position of the element (0-based).
        index: usize,
    },
    /// More elements than we accept.
    #[error("did:peer:2 has more than {0} elements")]
    TooManyElements(usize),
    /// A did:peer:4 whose hash is not the hash of its encoded document.
    #[error("did:peer:4 hash does not match its long-form document")]
    HashMismatch,
    /// A did:peer:4 encoded document that is not JSON.
    #[error("did:peer:4 document is not JSON: {0}")]
    DocumentNotJson(String),
    /// A did:peer:4 encoded document that is not a JSON object.
    #[error("did:peer:4 document is not a JSON object")]
    DocumentNotObject,
    /// A short-form did:peer:4 whose long form has not been seen.
    #[error("{0} is a short-form did:peer:4 whose long form has not been seen; resolve the long form first")]
    ShortFormUnknown(String),
    /// A long form given for a short-form did:peer:4 that does not belong to it.
    #[error("the long form given is not the long form of {0}")]
    LongFormMismatch(String),
    /// Other malformation (bad multibase, hash format, layout).
    #[error("malformed did:peer: {0}")]
    Malformed(String),
    /// The document the DID encodes is not a valid DID document.
    #[error("did:peer document: {0}")]
    Document(DocumentError),
}

/// Resolution of a DID to its document failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    // --- the DID itself
    /// Not a valid DID.
    #[error("invalid DID: {0}")]
    InvalidDid(DidError),
    /// The DID method is not one we resolve.
    #[error("unsupported DID method {0:?} (supported: key, peer, web)")]
    UnsupportedMethod(String),
    /// The did:key/did:web method-specific id is invalid for that method.
    #[error("invalid {method} DID: {reason}")]
    InvalidMethodSpecificId {
        /// `key` or `web`.
        method: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// did:key: the key could not be decoded or is of an unsupported type.
    #[error("did:key: {0}")]
    Key(KeyError),
    /// did:peer: the DID does not decode to a document.
    #[error("{0}")]
    Peer(PeerError),
    /// No document for this DID in a [`crate::StaticResolver`].
    #[error("DID not found: {0}")]
    NotFound(String),

    // --- did:web transport
    /// Refused to fetch over plain HTTP (only allowed with `allow_http`).
    #[error("refusing plain-HTTP URL {0} (plain HTTP is only allowed in local test mode)")]
    InsecureUrl(String),
    /// The request timed out.
    #[error("timed out fetching {url} after {secs:.1} s")]
    Timeout {
        /// URL fetched.
        url: String,
        /// Timeout in seconds.
        secs: f64,
    },
    /// A redirect to another host or scheme was refused.
    #[error("refused redirect from {url}: redirects must stay on the same https host")]
    RedirectRefused {
        /// URL fetched.
        url: String,
    },
    /// Non-success HTTP status.
    #[error("{url} answered HTTP {status}")]
    HttpStatus {
        /// URL fetched.
        url: String,
        /// Status code.
        status: u16,
    },
    /// Response body larger than the configured limit.
    #[error("response from {url} exceeds {max} bytes")]
    TooLarge {
        /// URL fetched.
        url: String,
        /// The limit.
        max: usize,
    },
    /// Connection, TLS or protocol failure.
    #[error("fetching {url} failed: {reason}")]
    Http {
        /// URL fetched.
        url: String,
        /// Cause, flattened to text (the reqwest error chain).
        reason: String,
    },
    /// The host is (or resolves only to) a loopback, private, link-local or other
    /// non-public address, and `allow_private_hosts` is off: nothing was sent.
    #[error("refusing to fetch {url}: {reason}")]
    ForbiddenAddress {
        /// URL that would have been fetched.
        url: String,
        /// Which address, and why it is refused.
        reason: String,
    },
    /// Too many did:web fetches are in flight; this one was not started.
    #[error("too many did:web resolutions in flight (limit {limit}); try again later")]
    Busy {
        /// The configured limit.
        limit: usize,
    },
    /// Resolving this DID failed moments ago; it is not fetched again until the failure
    /// expires (`failure_ttl`).
    #[error("{did} failed to resolve recently: {reason}")]
    RecentlyFailed {
        /// DID being resolved.
        did: String,
        /// The earlier failure.
        reason: String,
    },
    /// The client could not be built (e.g. a bad extra root certificate).
    #[error("cannot configure HTTPS client: {0}")]
    Config(String),
    /// Resolving this DID needs a fetch, and the caller asked for local answers only
    /// (see [`crate::UniversalResolver::resolves_without_fetch`]): nothing was sent.
    #[error("{0} needs a did:web fetch (not done: local answers only)")]
    NeedsFetch(String),

    // --- the document
    /// The fetched document is not a valid DID document.
    #[error("invalid DID document for {did}: {error}")]
    Document {
        /// DID being resolved.
        did: String,
        /// Why.
        error: DocumentError,
    },
    /// The document's `id` is not the DID that was resolved.
    #[error("DID document id {found:?} does not match the resolved DID {expected:?}")]
    IdMismatch {
        /// The DID resolved.
        expected: String,
        /// The document's id.
        found: String,
    },
}

impl From<DidError> for ResolveError {
    fn from(e: DidError) -> Self {
        Self::InvalidDid(e)
    }
}

impl From<PeerError> for ResolveError {
    fn from(e: PeerError) -> Self {
        Self::Peer(e)
    }
}

impl From<KeyError> for ResolveError {
    fn from(e: KeyError) -> Self {
        Self::Key(e)
    }
}
