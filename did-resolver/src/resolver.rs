//! Method-independent resolution: the [`DidResolver`] trait and its implementations.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, RwLock};

use crate::did::Did;
use crate::document::DidDocument;
use crate::error::ResolveError;
#[cfg(feature = "web")]
use crate::web::{WebResolver, WebResolverConfig};

/// Resolves a DID to its document. Later crates take `impl DidResolver` so that they work
/// with any method (and with [`StaticResolver`] in tests).
pub trait DidResolver: Send + Sync {
    /// Resolves `did` (a bare DID, not a DID URL).
    ///
    /// # Errors
    /// [`ResolveError`] naming why: invalid DID, unsupported method, transport failure,
    /// invalid document, id mismatch.
    fn resolve(&self, did: &str) -> impl Future<Output = Result<DidDocument, ResolveError>> + Send;
}

impl<T: DidResolver + ?Sized> DidResolver for &T {
    fn resolve(&self, did: &str) -> impl Future<Output = Result<DidDocument, ResolveError>> + Send {
        (**self).resolve(did)
    }
}

impl<T: DidResolver + ?Sized> DidResolver for Arc<T> {
    fn resolve(&self, did: &str) -> impl Future<Output = Result<DidDocument, ResolveError>> + Send {
        (**self).resolve(did)
    }
}

/// An in-memory map DID → document: pre-supplied documents (a mediator's, test fixtures,
/// the DIDComm spec appendix documents). Cloning shares the map.
#[derive(Clone, Debug, Default)]
pub struct StaticResolver {
    docs: Arc<RwLock<HashMap<String, DidDocument>>>,
}

impl StaticResolver {
    /// An empty resolver.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces the document for `doc.id`.
    pub fn insert(&self, doc: DidDocument) {
        let mut map = self
            .docs
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.insert(doc.id.clone(), doc);
    }

    /// The stored document for `did`, if any.
    pub fn get(&self, did: &str) -> Option<DidDocument> {
        let map = self
            .docs
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(did).cloned()
    }

    /// Number of stored documents.
    pub fn len(&self) -> usize {
        self.docs
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    /// Whether no document is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl DidResolver for StaticResolver {
    #[allow(clippy::manual_async_fn)] // spelled out so the returned future is `Send`
    fn resolve(&self, did: &str) -> impl Future<Output = Result<DidDocument, ResolveError>> + Send {
        let found = self
            .get(did)
            .ok_or_else(|| ResolveError::NotFound(did.to_owned()));
        async move { found }
    }
}

/// Most did:peer:4 long forms a [`UniversalResolver`] remembers for their short forms.
const MAX_PEER_LONG_FORMS: usize = 4096;

/// Long forms of did:peer:4 DIDs seen, by short form: a short form resolves only after its
/// long form (did:peer spec, numalgo 4 "Short form"). Bounded; when full, the oldest
/// half is forgotten.
#[derive(Clone, Debug, Default)]
struct PeerLongForms {
    map: Arc<RwLock<LongFormTable>>,
}

/// Short form → long form, and the short forms in insertion order (for eviction).
type LongFormTable = (HashMap<String, String>, std::collections::VecDeque<String>);

impl PeerLongForms {
    fn remember(&self, short: &str, long: &str) {
        let mut guard = self
            .map
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (map, order) = &mut *guard;
        if map.contains_key(short) {
            return;
        }
        if map.len() >= MAX_PEER_LONG_FORMS {
            for _ in 0..MAX_PEER_LONG_FORMS / 2 {
                if let Some(old) = order.pop_front() {
                    map.remove(&old);
                }
            }
        }
        map.insert(short.to_owned(), long.to_owned());
        order.push_back(short.to_owned());
    }

    fn long_form(&self, short: &str) -> Option<String> {
        self.map
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .0
            .get(short)
            .cloned()
    }
}

/// Most did:key documents a [`UniversalResolver`] (and its clones) remembers.
const MAX_KEY_DOCS: usize = 4096;

/// did:key documents already resolved, by DID. A did:key document is a pure function of
/// its DID, so serving it again is exact; what is saved is the work of deriving it (a
/// base58 decode and two encodes, the Edwards point decompression and the conversion to
/// X25519 — ≈ 25 µs, once per pack or authcrypt unpack naming the DID, spec/mediator.md
/// §11.2). Bounded; when full, the oldest half is forgotten. Errors are not remembered.
#[derive(Clone, Debug, Default)]
struct KeyDocs {
    map: Arc<RwLock<KeyDocTable>>,
}

/// DID → document, and the DIDs in insertion order (for eviction).
type KeyDocTable = (
    HashMap<String, DidDocument>,
    std::collections::VecDeque<String>,
);

impl KeyDocs {
    fn resolve(&self, did: &str) -> Result<DidDocument, ResolveError> {
        if let Some(doc) = self
            .map
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .0
            .get(did)
        {
            return Ok(doc.clone());
        }
        let doc = crate::key::resolve(did)?;
        let mut guard = self
            .map
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (map, order) = &mut *guard;
        if !map.contains_key(did) {
            if map.len() >= MAX_KEY_DOCS {
                for _ in 0..MAX_KEY_DOCS / 2 {
                    if let Some(old) = order.pop_front() {
                        map.remove(&old);
                    }
                }
            }
            map.insert(did.to_owned(), doc.clone());
            order.push_back(did.to_owned());
        }
        Ok(doc)
    }
}

/// Resolves any supported method: first the [`StaticResolver`] overlay, then `did:key`
/// (remembered: a did:key document never changes) and
/// `did:peer` (numalgo 0, 2, 4) locally, then `did:web` over HTTPS (feature `web`; without
/// it a did:web not in the overlay is [`ResolveError::UnsupportedMethod`]). A short-form
/// did:peer:4 resolves once this resolver (or a clone) has resolved its long form.
#[derive(Clone, Debug)]
pub struct UniversalResolver {
    overlay: StaticResolver,
    peer_long_forms: PeerLongForms,
    key_docs: KeyDocs,
    #[cfg(feature = "web")]
    web: WebResolver,
}

impl UniversalResolver {
    /// A resolver with the default did:web configuration (HTTPS, 10 s timeout, 64 KiB,
    /// 5 min cache).
    ///
    /// # Errors
    /// [`ResolveError::Config`] if the HTTPS client cannot be built.
    pub fn new() -> Result<Self, ResolveError> {
        Ok(Self {
            overlay: StaticResolver::new(),
            peer_long_forms: PeerLongForms::default(),
            key_docs: KeyDocs::default(),
            #[cfg(feature = "web")]
            web: WebResolver::new(WebResolverConfig::default())?,
        })
    }

    /// A resolver with this did:web configuration.
    ///
    /// # Errors
    /// [`ResolveError::Config`] if the HTTPS client cannot be built (e.g. a bad extra root).
    #[cfg(feature = "web")]
    pub fn with_config(config: WebResolverConfig) -> Result<Self, ResolveError> {
        Ok(Self {
            overlay: StaticResolver::new(),
            peer_long_forms: PeerLongForms::default(),
            key_docs: KeyDocs::default(),
            web: WebResolver::new(config)?,
        })
    }

    /// The overlay consulted before any method (shared: inserting into a clone works).
    pub fn overlay(&self) -> &StaticResolver {
        &self.overlay
    }

    /// Replaces the overlay with `overlay` (e.g. one shared with other components).
    pub fn with_overlay(mut self, overlay: StaticResolver) -> Self {
        self.overlay = overlay;
        self
    }

    /// Adds a pre-supplied document to the overlay.
    pub fn insert(&self, doc: DidDocument) {
        self.overlay.insert(doc);
    }

    /// The did:web resolver used.
    #[cfg(feature = "web")]
    pub fn web(&self) -> &WebResolver {
        &self.web
    }

    /// Whether resolving `did` answers at once, without a network fetch: a document in the
    /// overlay, did:key and did:peer (local), an invalid DID or an unsupported method (an
    /// error at once), or a did:web whose document is cached or whose recent failure is
    /// remembered. A receiver uses it to keep a sender whose did:web host is slow from
    /// holding up everyone else's messages (spec/lobby.md §7 "Lanes").
    #[must_use]
    pub fn resolves_without_fetch(&self, did: &str) -> bool {
        if self.overlay.get(did).is_some() {
            return true;
        }
        let Ok(parsed) = Did::parse(did) else {
            return true;
        };
        match parsed.method() {
            #[cfg(feature = "web")]
            "web" => self.web.is_settled(did),
            _ => true,
        }
    }
}

impl UniversalResolver {
    fn resolve_peer(&self, did: &str) -> Result<DidDocument, ResolveError> {
        if let Some(short) = crate::peer::short_form(did) {
            let doc = crate::peer::resolve(did)?;
            self.peer_long_forms.remember(short, did);
            return Ok(doc);
        }
        if did.starts_with("did:peer:4") {
            return match self.peer_long_forms.long_form(did) {
                Some(long) => crate::peer::resolve_short(did, &long),
                None => Err(crate::PeerError::ShortFormUnknown(did.to_owned()).into()),
            };
        }
        crate::peer::resolve(did)
    }
}

impl DidResolver for UniversalResolver {
    #[allow(clippy::manual_async_fn)]
    fn resolve(&self, did: &str) -> impl Future<Output = Result<DidDocument, ResolveError>> + Send {
        let did = did.to_owned();
        async move {
            if let Some(doc) = self.overlay.get(&did) {
                return Ok(doc);
            }
            let parsed = Did::parse(&did)?;
            match parsed.method() {
                "key" => self.key_docs.resolve(&did),
                "peer" => self.resolve_peer(&did),
                #[cfg(feature = "web")]
                "web" => self.web.resolve_did(&parsed).await,
                other => Err(ResolveError::UnsupportedMethod(other.to_owned())),
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn static_and_universal() {
        let s = StaticResolver::new();
        assert!(matches!(
            block_on(s.resolve("did:example:a")),
            Err(ResolveError::NotFound(_))
        ));
        s.insert(DidDocument::new("did:example:a"));
        assert_eq!(
            block_on(s.resolve("did:example:a")).unwrap().id,
            "did:example:a"
        );
        // Through &T and Arc<T>.
        let arc = Arc::new(s.clone());
        let by_ref: &StaticResolver = &s;
        assert!(block_on(DidResolver::resolve(&by_ref, "did:example:a")).is_ok());
        assert!(block_on(arc.resolve("did:example:a")).is_ok());

        let u = UniversalResolver::new().unwrap().with_overlay(s);
        assert!(block_on(u.resolve("did:example:a")).is_ok());
        assert!(matches!(
            block_on(u.resolve("did:example:b")),
            Err(ResolveError::UnsupportedMethod(m)) if m == "example"
        ));
        let did = "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp";
        assert_eq!(block_on(u.resolve(did)).unwrap().id, did);
        assert!(matches!(
            block_on(u.resolve("did:bad")),
            Err(ResolveError::InvalidDid(_))
        ));
    }

    /// The did:key memo serves the same document as a fresh resolution, is shared by
    /// clones, does not remember errors, and stays bounded.
    #[test]
    fn key_documents_are_remembered_exactly_and_bounded() {
        use curve25519_dalek::{constants::ED25519_BASEPOINT_POINT, Scalar};
        let u = UniversalResolver::new().unwrap();
        let did = "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp";
        let fresh = crate::key::resolve(did).unwrap();
        assert_eq!(block_on(u.resolve(did)).unwrap(), fresh);
        assert_eq!(block_on(u.clone().resolve(did)).unwrap(), fresh);
        assert_eq!(u.key_docs.map.read().unwrap().0.len(), 1);
        // Not a key: refused every time, not stored.
        let bad = "did:key:z6MkiTBz1ymu";
        assert!(block_on(u.resolve(bad)).is_err());
        assert!(block_on(u.resolve(bad)).is_err());
        assert_eq!(u.key_docs.map.read().unwrap().0.len(), 1);
        for i in 1..=(MAX_KEY_DOCS as u64 + 10) {
            let point = ED25519_BASEPOINT_POINT * Scalar::from(i);
            let key = crate::PublicKey::Ed25519(point.compress().to_bytes());
            let d = format!("did:key:{}", key.to_multibase());
            assert_eq!(block_on(u.resolve(&d)).unwrap().id, d);
        }
        let (map, order) = &*u.key_docs.map.read().unwrap();
        assert!(map.len() <= MAX_KEY_DOCS && map.len() == order.len());
    }
}
