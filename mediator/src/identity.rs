//! The mediator's own DID: a did:key made from an Ed25519 seed kept in the store (so that
//! instances sharing one Redis are one mediator), with the X25519 keyAgreement key derived
//! as the did:key spec says.

use mpc_did_didcomm::{Secret, SecretStore};
use mpc_did_resolver::{key, DidCommService, DidDocument};
use zeroize::Zeroize as _;

use crate::store::{Store, StoreError};

const META_KEY: &str = "identity.ed25519-seed";

/// What a mediator needs to speak for its DID.
#[derive(Clone)]
pub struct MediatorIdentity {
    /// `did:key:z6Mk…`
    pub did: String,
    /// The keyAgreement key id senders encrypt forwards to (the routing key).
    pub agreement_kid: String,
    /// Private keys by key id.
    pub secrets: SecretStore,
    /// The did:key document (without services).
    pub document: DidDocument,
}

impl std::fmt::Debug for MediatorIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediatorIdentity")
            .field("did", &self.did)
            .finish_non_exhaustive()
    }
}

impl MediatorIdentity {
    /// Loads the identity from `store`, creating it on first start. When two instances
    /// start together on one Redis, both end up with the first writer's seed.
    ///
    /// # Errors
    /// Store failure, or a stored seed that is not 32 bytes.
    pub async fn load_or_create(store: &impl Store) -> Result<Self, StoreError> {
        let mut fresh = [0u8; 32];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut fresh);
        let mut stored = store.meta_init(META_KEY, &fresh).await?;
        fresh.zeroize();
        let seed: [u8; 32] = stored
            .as_slice()
            .try_into()
            .map_err(|_| StoreError::Corrupt("identity seed is not 32 bytes"))?;
        stored.zeroize();
        Self::from_seed(&seed).ok_or(StoreError::Corrupt("identity seed unusable"))
    }

    /// The identity for an Ed25519 seed.
    #[must_use]
    pub fn from_seed(seed: &[u8; 32]) -> Option<Self> {
        let signing = ed25519_dalek::SigningKey::from_bytes(seed);
        let did = key::did_from_ed25519(&signing.verifying_key().to_bytes());
        let document = key::resolve(&did).ok()?;
        let agreement_kid = document.key_agreement_methods().first()?.id.clone();
        let auth_kid = document.authentication_methods().first()?.id.clone();
        let mut secrets = SecretStore::new();
        let x = x25519_dalek::StaticSecret::from(key::x25519_secret_from_ed25519_seed(seed));
        secrets.insert(agreement_kid.clone(), Secret::X25519(x));
        secrets.insert(auth_kid, Secret::Ed25519(signing));
        Some(Self {
            did,
            agreement_kid,
            secrets,
            document,
        })
    }

    /// The DID document published at `/did.json`: the did:key document plus a
    /// `DIDCommMessaging` service naming `endpoint`.
    #[must_use]
    pub fn document_with_service(&self, endpoint: &str) -> DidDocument {
        let mut doc = self.document.clone();
        let svc = DidCommService {
            id: format!("{}#didcomm-1", self.did),
            uri: endpoint.to_owned(),
            accept: vec!["didcomm/v2".to_owned()],
            routing_keys: Vec::new(),
        };
        doc.service.push(svc.to_service());
        doc
    }
}
