//! The local wallet: identities (name → DID + private keys), contacts and settings, stored
//! in sled under one directory (`$MPC_DID_HOME`).
//!
//! **Owns:** key generation for new identities, their DID documents (did:key derived,
//! did:web built for publishing), on-disk layout, permissions and the single-writer lock.
//!
//! **Does not:** resolve other parties' DIDs (`mpc-did-resolver`), sign or encrypt messages
//! (`mpc-did-didcomm`), or print anything: secrets leave this crate only as typed keys
//! inside [`Identity`], whose `Debug` redacts them.
//!
//! ```text
//!  $MPC_DID_HOME/ (0700)
//!   ├── wallet.lock   (0600) exclusive File::try_lock for the Wallet's lifetime
//!   └── db/           (0700) sled: trees "identities", "contacts", "settings"; files 0600
//!
//!  create_identity(name, Method::Key)  ─▶ Ed25519 seed (OS RNG)
//!        ├─ X25519 secret = clamp(SHA-512(seed)[..32])   (did:key spec derivation)
//!        └─ did:key:z6Mk…  ─▶ document = mpc_did_resolver::key::resolve(did)
//!  create_identity(name, Method::Web{domain}) ─▶ Ed25519 seed + independent X25519 secret
//!        └─ did:web:domain…  ─▶ document built here (JsonWebKey2020 + DIDCommMessaging)
//!  create_identity(name, Method::Peer{services}) ─▶ Ed25519 seed + independent X25519
//!        └─ did:peer:2.V….E….S…  ─▶ document = mpc_did_resolver::peer::resolve(did)
//!  export_identity / import_identity (identities.rs) ─▶ JWK set or seed files, 0600
//! ```
//!
//! Storage decision (spec/identity.md §4): private keys are stored unencrypted inside the
//! 0700 directory in 0600 files, like an SSH key without passphrase.
//!
//! ```
//! use mpc_did_wallet::{Method, Wallet};
//!
//! let home = tempfile::tempdir()?;
//! let wallet = Wallet::open(home.path())?;
//! let alice = wallet.create_identity("alice", Method::Key)?;
//! assert!(alice.did.starts_with("did:key:z6Mk"));
//! // The X25519 secret belongs to the keyAgreement key the resolver derives for the DID.
//! let ka = mpc_did_resolver::key::resolve(&alice.did)?;
//! assert_eq!(
//!     ka.key_agreement_methods()[0].key.as_bytes(),
//!     x25519_dalek::PublicKey::from(&alice.agreement_secret).as_bytes(),
//! );
//! assert!(!format!("{alice:?}").contains(&hex::encode(alice.signing_key.to_bytes())));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

mod identities;
pub use identities::{write_private_file, ExportFormat, MAX_KEY_FILE_BYTES};

use std::fmt;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ed25519_dalek::SigningKey;
use mpc_did_resolver::{
    key, peer, web, DidCommService, DidDocument, PublicKey, ResolveError, VerificationMethod,
    DID_CONTEXT_V1, JWS2020_CONTEXT_V1,
};
use serde::{Deserialize, Serialize};
use x25519_dalek::StaticSecret;
use zeroize::Zeroizing;

/// How long [`Wallet::open`] waits for another process to release the wallet.
pub const DEFAULT_LOCK_WAIT: Duration = Duration::from_secs(2);

/// Setting naming the default identity.
pub const SETTING_DEFAULT_IDENTITY: &str = "default_identity";

mod mpc_sessions;
pub use mpc_sessions::{AttemptRecord, HostLock, MpcSessionError, MpcSessionRecord, MpcSessions};

const LOCK_FILE: &str = "wallet.lock";
const DB_DIR: &str = "db";
const RECORD_VERSION: u32 = 1;

/// Wallet errors, grouped by cause.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WalletError {
    // --- access
    /// Another process holds the wallet.
    #[error("wallet in use: {path} is locked by another mpc-did process; wait for it to finish or use another --home")]
    InUse {
        /// The lock file.
        path: PathBuf,
    },
    /// A file-system operation failed.
    #[error("{action} {path}: {error}")]
    Io {
        /// What we were doing.
        action: &'static str,
        /// On which path.
        path: PathBuf,
        /// Why (a field, not a `source()`: the message already includes it).
        error: std::io::Error,
    },
    /// The sled store failed.
    #[error("wallet storage error: {0}")]
    Storage(String),
    /// A stored record does not decode.
    #[error("wallet record {0} is corrupt")]
    Corrupt(String),

    // --- identities
    /// No identity with this name.
    #[error("no identity named {0:?}")]
    NoSuchIdentity(String),
    /// The wallet has no identity at all.
    #[error("the wallet has no identity yet")]
    NoIdentities,
    /// An identity with this name exists.
    #[error("an identity named {0:?} already exists")]
    IdentityExists(String),
    /// Names are 1–64 characters of `A–Z a–z 0–9 . _ -`, not starting with `-`.
    #[error("invalid identity name {0:?}: use 1-64 letters, digits, '.', '_' or '-' (not starting with '-')")]
    InvalidName(String),
    /// The did:web domain is invalid.
    #[error("invalid did:web domain: {0}")]
    InvalidDomain(ResolveError),
    /// A key file given to [`Wallet::import_identity`] cannot be imported.
    #[error("cannot import the key file: {0}")]
    InvalidKeyFile(String),
    /// The operation needs a did:web identity.
    #[error("identity {0:?} is not a did:web identity")]
    NotWeb(String),
}

impl From<sled::Error> for WalletError {
    fn from(e: sled::Error) -> Self {
        Self::Storage(e.to_string())
    }
}

/// How a new identity's DID is made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Method {
    /// `did:key` from an Ed25519 key; X25519 keyAgreement derived from it.
    Key,
    /// `did:web` for `domain[:port][/path]`; the document must be published at the
    /// did:web URL (see [`Wallet::web_document`]).
    Web {
        /// e.g. `example.com`, `localhost:8443`, `example.com/users/alice`.
        domain: String,
    },
    /// `did:peer:2` (did:peer spec, numalgo 2): an Ed25519 `V` key, an X25519 `E` key and
    /// these DIDComm services (typically the mediator), all encoded in the DID itself.
    Peer {
        /// Services written into the DID (ids are made relative, `#didcomm-N`).
        services: Vec<DidCommService>,
    },
}

/// An identity with its private keys. `Debug` redacts the secrets.
#[derive(Clone)]
pub struct Identity {
    /// Local name.
    pub name: String,
    /// The DID.
    pub did: String,
    /// Its DID document (for did:web: the document to publish, with services).
    pub document: DidDocument,
    /// Ed25519 signing key (authentication).
    pub signing_key: SigningKey,
    /// X25519 key-agreement secret.
    pub agreement_secret: StaticSecret,
    /// Absolute id of the authentication method.
    pub auth_kid: String,
    /// Absolute id of the keyAgreement method.
    pub agreement_kid: String,
    /// DIDComm services (mediators). For did:web also in `document`; a did:key document
    /// cannot carry services, so for did:key they live only here; a did:peer:2 carries
    /// the services it was created with in the DID (these start as a copy of them).
    pub services: Vec<DidCommService>,
    /// Creation time, seconds since the Unix epoch.
    pub created_at: u64,
}

impl Identity {
    /// `key`, `peer` or `web`.
    pub fn method(&self) -> &str {
        self.did
            .strip_prefix("did:")
            .and_then(|r| r.split(':').next())
            .unwrap_or_default()
    }

    /// The Ed25519 public key.
    pub fn ed25519_public(&self) -> [u8; 32] {
        self.signing_key.verifying_key().to_bytes()
    }

    /// The X25519 public key of [`agreement_secret`](Self::agreement_secret).
    pub fn x25519_public(&self) -> [u8; 32] {
        x25519_dalek::PublicKey::from(&self.agreement_secret).to_bytes()
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("name", &self.name)
            .field("did", &self.did)
            .field("auth_kid", &self.auth_kid)
            .field("agreement_kid", &self.agreement_kid)
            .field("services", &self.services)
            .field("signing_key", &"<redacted>")
            .field("agreement_secret", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// Someone we know by DID.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    /// Their DID (the key of the contact).
    pub did: String,
    /// Our name for them.
    pub name: String,
    /// Their mediator (a DID or URL), if known.
    #[serde(default)]
    pub mediator: Option<String>,
    /// Their DID document as last seen (e.g. from an invitation), if kept.
    #[serde(default)]
    pub document: Option<DidDocument>,
}

/// The stored form of an identity (JSON in the "identities" tree).
#[derive(Serialize, Deserialize)]
struct IdentityRecord {
    v: u32,
    name: String,
    did: String,
    seq: u64,
    created_at: u64,
    ed25519_seed: String,
    x25519_secret: String,
    #[serde(default)]
    services: Vec<DidCommService>,
}

impl Drop for IdentityRecord {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.ed25519_seed);
        zeroize::Zeroize::zeroize(&mut self.x25519_secret);
    }
}

/// An open wallet. Holds an exclusive lock on the directory until dropped.
pub struct Wallet {
    home: PathBuf,
    db: sled::Db,
    identities: sled::Tree,
    contacts: sled::Tree,
    settings: sled::Tree,
    // Dropped last: the lock outlives the database handle.
    _lock: File,
}

impl fmt::Debug for Wallet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wallet")
            .field("home", &self.home)
            .finish_non_exhaustive()
    }
}

/// Opens the sled database, once we hold the wallet's own lock.
///
/// sled keeps a lock of its own on its files and lets go of it a moment after the last
/// handle is dropped (its background threads finish first). With the wallet lock held nobody
/// else can hold sled's, so a refusal means our own previous open in this process has not
/// quite let go: wait for it (at least [`SLED_LOCK_GRACE`]) instead of failing.
fn open_db(path: &Path, wait: Duration) -> Result<sled::Db, WalletError> {
    let started = Instant::now();
    loop {
        match sled::Config::new().path(path).open() {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && started.elapsed() < wait.max(SLED_LOCK_GRACE) =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return Ok(other?),
        }
    }
}

/// How long [`open_db`] waits for sled's own lock at least (see there).
const SLED_LOCK_GRACE: Duration = Duration::from_secs(5);

impl Wallet {
    /// Opens (creating if needed) the wallet in `home`, waiting up to
    /// [`DEFAULT_LOCK_WAIT`] for another process to release it.
    ///
    /// # Errors
    /// [`WalletError::InUse`] if still locked after the wait; [`WalletError::Io`] if the
    /// directory cannot be created or secured; [`WalletError::Storage`] if sled fails.
    pub fn open(home: &Path) -> Result<Self, WalletError> {
        Self::open_with_wait(home, DEFAULT_LOCK_WAIT)
    }

    /// As [`open`](Self::open) with an explicit lock wait (`Duration::ZERO`: fail at once).
    ///
    /// # Errors
    /// As [`open`](Self::open).
    pub fn open_with_wait(home: &Path, wait: Duration) -> Result<Self, WalletError> {
        create_private_dir(home)?;
        let lock_path = home.join(LOCK_FILE);
        let lock = open_private_file(&lock_path)?;
        let started = Instant::now();
        loop {
            match lock.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) => {
                    if started.elapsed() >= wait {
                        return Err(WalletError::InUse { path: lock_path });
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(std::fs::TryLockError::Error(error)) => {
                    return Err(WalletError::Io {
                        action: "cannot lock",
                        path: lock_path,
                        error,
                    })
                }
            }
        }
        let db_path = home.join(DB_DIR);
        create_private_dir(&db_path)?;
        let db = open_db(&db_path, wait.saturating_sub(started.elapsed()))?;
        let wallet = Self {
            home: home.to_owned(),
            identities: db.open_tree("identities")?,
            contacts: db.open_tree("contacts")?,
            settings: db.open_tree("settings")?,
            db,
            _lock: lock,
        };
        wallet.secure_files()?;
        Ok(wallet)
    }

    /// The wallet directory.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// Creates an identity with fresh keys from the OS random generator.
    ///
    /// # Errors
    /// [`WalletError::InvalidName`], [`WalletError::IdentityExists`],
    /// [`WalletError::InvalidDomain`] for a bad did:web domain, storage errors.
    pub fn create_identity(&self, name: &str, method: Method) -> Result<Identity, WalletError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, seed.as_mut());
        let mut x = Zeroizing::new([0u8; 32]);
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, x.as_mut());
        self.create_identity_from_secrets(name, method, &seed, &x)
    }

    /// Creates an identity from a given Ed25519 seed (deterministic: tests, restores).
    /// For did:key the X25519 secret is derived from the seed; for did:web it is derived
    /// the same way (a restore needs only the seed).
    ///
    /// # Errors
    /// As [`create_identity`](Self::create_identity).
    pub fn create_identity_from_seed(
        &self,
        name: &str,
        method: Method,
        seed: &[u8; 32],
    ) -> Result<Identity, WalletError> {
        let x = Zeroizing::new(key::x25519_secret_from_ed25519_seed(seed));
        self.create_identity_from_secrets(name, method, seed, &x)
    }

    fn create_identity_from_secrets(
        &self,
        name: &str,
        method: Method,
        seed: &[u8; 32],
        web_x25519: &[u8; 32],
    ) -> Result<Identity, WalletError> {
        validate_name(name)?;
        let signing_key = SigningKey::from_bytes(seed);
        let (did, x_secret) = match &method {
            Method::Key => (
                key::did_from_ed25519(&signing_key.verifying_key().to_bytes()),
                // did:key spec: the keyAgreement key is derived from the Ed25519 key, so the
                // secret must be derived from the seed the same way.
                Zeroizing::new(key::x25519_secret_from_ed25519_seed(seed)),
            ),
            Method::Web { domain } => {
                let did = web::did_from_domain(domain).map_err(WalletError::InvalidDomain)?;
                // did:web lists its keys, so the X25519 key can be independent of the
                // signing key (key separation).
                (did.to_string(), Zeroizing::new(clamp(*web_x25519)))
            }
            Method::Peer { services } => {
                // Like did:web, a did:peer:2 lists both keys: independent X25519 key.
                let x = Zeroizing::new(clamp(*web_x25519));
                let x_pub = x25519_dalek::PublicKey::from(&StaticSecret::from(*x)).to_bytes();
                let did = identities::did_peer_2(
                    &signing_key.verifying_key().to_bytes(),
                    &x_pub,
                    services,
                )?;
                (did, x)
            }
        };
        let services = match &method {
            Method::Peer { .. } => peer::resolve(&did)
                .map_err(|e| WalletError::Corrupt(format!("new did:peer: {e}")))?
                .didcomm_services(),
            _ => Vec::new(),
        };
        let record = IdentityRecord {
            v: RECORD_VERSION,
            name: name.to_owned(),
            did,
            seq: self.db.generate_id()?,
            created_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            ed25519_seed: hex::encode(seed),
            x25519_secret: hex::encode(x_secret.as_ref()),
            services,
        };
        let bytes = Zeroizing::new(
            serde_json::to_vec(&record).map_err(|e| WalletError::Storage(e.to_string()))?,
        );
        // Insert only if absent, atomically.
        let swapped = self.identities.compare_and_swap(
            name.as_bytes(),
            None::<&[u8]>,
            Some(bytes.as_slice()),
        )?;
        if swapped.is_err() {
            return Err(WalletError::IdentityExists(name.to_owned()));
        }
        self.flush()?;
        identity_from_record(&record)
    }

    /// All identities, oldest first.
    ///
    /// # Errors
    /// Storage errors, [`WalletError::Corrupt`].
    pub fn identities(&self) -> Result<Vec<Identity>, WalletError> {
        let mut records = Vec::new();
        for item in self.identities.iter() {
            let (k, v) = item?;
            records.push(decode_record(&k, &v)?);
        }
        records.sort_by_key(|r| r.seq);
        records.iter().map(identity_from_record).collect()
    }

    /// The identity named `name`.
    ///
    /// # Errors
    /// [`WalletError::NoSuchIdentity`], storage errors.
    pub fn identity(&self, name: &str) -> Result<Identity, WalletError> {
        identity_from_record(&self.record(name)?)
    }

    /// The identity set with [`set_default_identity`](Self::set_default_identity), else the
    /// first one created.
    ///
    /// # Errors
    /// [`WalletError::NoIdentities`] if there is none; storage errors.
    pub fn default_identity(&self) -> Result<Identity, WalletError> {
        if let Some(name) = self.setting(SETTING_DEFAULT_IDENTITY)? {
            if let Ok(rec) = self.record(&name) {
                return identity_from_record(&rec);
            }
        }
        self.identities()?
            .into_iter()
            .next()
            .ok_or(WalletError::NoIdentities)
    }

    /// Makes `name` the default identity.
    ///
    /// # Errors
    /// [`WalletError::NoSuchIdentity`], storage errors.
    pub fn set_default_identity(&self, name: &str) -> Result<(), WalletError> {
        self.record(name)?;
        self.set_setting(SETTING_DEFAULT_IDENTITY, name)
    }

    /// Replaces the DIDComm services (mediators) of an identity. For did:web this changes
    /// the document to publish; for did:key it is recorded in the wallet only.
    ///
    /// # Errors
    /// [`WalletError::NoSuchIdentity`], storage errors.
    pub fn set_identity_services(
        &self,
        name: &str,
        services: Vec<DidCommService>,
    ) -> Result<Identity, WalletError> {
        let mut record = self.record(name)?;
        record.services = services;
        let bytes = Zeroizing::new(
            serde_json::to_vec(&record).map_err(|e| WalletError::Storage(e.to_string()))?,
        );
        self.identities.insert(name.as_bytes(), bytes.as_slice())?;
        self.flush()?;
        identity_from_record(&record)
    }

    /// The DID document to publish for a did:web identity at its did:web URL.
    ///
    /// # Errors
    /// [`WalletError::NotWeb`] for a did:key identity; [`WalletError::NoSuchIdentity`].
    pub fn web_document(&self, name: &str) -> Result<DidDocument, WalletError> {
        let id = self.identity(name)?;
        if id.method() != "web" {
            return Err(WalletError::NotWeb(name.to_owned()));
        }
        Ok(id.document)
    }

    /// Adds or replaces a contact (keyed by DID).
    ///
    /// # Errors
    /// Storage errors.
    pub fn add_contact(&self, contact: &Contact) -> Result<(), WalletError> {
        let bytes = serde_json::to_vec(contact).map_err(|e| WalletError::Storage(e.to_string()))?;
        self.contacts.insert(contact.did.as_bytes(), bytes)?;
        self.flush()
    }

    /// All contacts, ordered by DID.
    ///
    /// # Errors
    /// Storage errors, [`WalletError::Corrupt`].
    pub fn contacts(&self) -> Result<Vec<Contact>, WalletError> {
        self.contacts
            .iter()
            .map(|item| {
                let (k, v) = item?;
                serde_json::from_slice(&v).map_err(|_| {
                    WalletError::Corrupt(format!("contact {}", String::from_utf8_lossy(&k)))
                })
            })
            .collect()
    }

    /// The contact with this DID, if any.
    ///
    /// # Errors
    /// Storage errors, [`WalletError::Corrupt`].
    pub fn contact(&self, did: &str) -> Result<Option<Contact>, WalletError> {
        match self.contacts.get(did.as_bytes())? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|_| WalletError::Corrupt(format!("contact {did}"))),
        }
    }

    /// Removes a contact; whether it existed.
    ///
    /// # Errors
    /// Storage errors.
    pub fn remove_contact(&self, did: &str) -> Result<bool, WalletError> {
        let existed = self.contacts.remove(did.as_bytes())?.is_some();
        self.flush()?;
        Ok(existed)
    }

    /// A setting's value.
    ///
    /// # Errors
    /// Storage errors, [`WalletError::Corrupt`] if not UTF-8.
    pub fn setting(&self, key: &str) -> Result<Option<String>, WalletError> {
        match self.settings.get(key.as_bytes())? {
            None => Ok(None),
            Some(v) => String::from_utf8(v.to_vec())
                .map(Some)
                .map_err(|_| WalletError::Corrupt(format!("setting {key}"))),
        }
    }

    /// Sets a setting.
    ///
    /// # Errors
    /// Storage errors.
    pub fn set_setting(&self, key: &str, value: &str) -> Result<(), WalletError> {
        self.settings.insert(key.as_bytes(), value.as_bytes())?;
        self.flush()
    }

    /// Removes a setting; whether it existed.
    ///
    /// # Errors
    /// Storage errors.
    pub fn remove_setting(&self, key: &str) -> Result<bool, WalletError> {
        let existed = self.settings.remove(key.as_bytes())?.is_some();
        self.flush()?;
        Ok(existed)
    }

    fn record(&self, name: &str) -> Result<IdentityRecord, WalletError> {
        let v = self
            .identities
            .get(name.as_bytes())?
            .ok_or_else(|| WalletError::NoSuchIdentity(name.to_owned()))?;
        decode_record(name.as_bytes(), &v)
    }

    /// Writes through to disk (each CLI call is a short process) and re-secures any file
    /// sled created since.
    fn flush(&self) -> Result<(), WalletError> {
        self.db.flush()?;
        self.secure_files()
    }

    /// The home directory 0700, the lock file 0600, and below `db/` directories 0700 and
    /// files 0600 (sled creates files with the umask). Other files other components keep
    /// under the home directory are theirs to manage.
    fn secure_files(&self) -> Result<(), WalletError> {
        set_mode(&self.home, 0o700)?;
        set_mode(&self.home.join(LOCK_FILE), 0o600)?;
        secure_tree(&self.home.join(DB_DIR))
    }
}

fn decode_record(key: &[u8], v: &[u8]) -> Result<IdentityRecord, WalletError> {
    let corrupt = || WalletError::Corrupt(format!("identity {}", String::from_utf8_lossy(key)));
    let rec: IdentityRecord = serde_json::from_slice(v).map_err(|_| corrupt())?;
    if rec.v != RECORD_VERSION {
        return Err(corrupt());
    }
    Ok(rec)
}

fn hex32(s: &str) -> Option<Zeroizing<[u8; 32]>> {
    let mut out = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(s, out.as_mut()).ok()?;
    Some(out)
}

fn identity_from_record(rec: &IdentityRecord) -> Result<Identity, WalletError> {
    let corrupt = || WalletError::Corrupt(format!("identity {}", rec.name));
    let seed = hex32(&rec.ed25519_seed).ok_or_else(corrupt)?;
    let x = hex32(&rec.x25519_secret).ok_or_else(corrupt)?;
    let signing_key = SigningKey::from_bytes(&seed);
    let agreement_secret = StaticSecret::from(*x);
    let ed_pub = signing_key.verifying_key().to_bytes();
    let x_pub = x25519_dalek::PublicKey::from(&agreement_secret).to_bytes();
    let document = if rec.did.starts_with("did:key:") {
        if key::did_from_ed25519(&ed_pub) != rec.did {
            return Err(corrupt());
        }
        key::resolve(&rec.did).map_err(|_| corrupt())?
    } else if rec.did.starts_with("did:peer:") {
        let doc = peer::resolve(&rec.did).map_err(|_| corrupt())?;
        // The stored seed must be the DID's authentication key.
        let auth = doc.authentication_methods();
        if auth.first().map(|vm| vm.key) != Some(PublicKey::Ed25519(ed_pub)) {
            return Err(corrupt());
        }
        doc
    } else {
        web_document(&rec.did, &ed_pub, &x_pub, &rec.services)
    };
    let auth_kid = document
        .authentication
        .first()
        .cloned()
        .ok_or_else(corrupt)?;
    let agreement_kid = document
        .key_agreement
        .first()
        .cloned()
        .ok_or_else(corrupt)?;
    // The stored secret must belong to the document's keyAgreement key.
    let ka = document
        .verification_method(&agreement_kid)
        .ok_or_else(corrupt)?;
    if ka.key != PublicKey::X25519(x_pub) {
        return Err(corrupt());
    }
    Ok(Identity {
        name: rec.name.clone(),
        did: rec.did.clone(),
        document,
        signing_key,
        agreement_secret,
        auth_kid,
        agreement_kid,
        services: rec.services.clone(),
        created_at: rec.created_at,
    })
}

/// The did:web document: `#key-1` Ed25519 (authentication, assertionMethod), `#key-2`
/// X25519 (keyAgreement), both `JsonWebKey2020` for the widest DIDComm interop, plus the
/// `DIDCommMessaging` services.
fn web_document(
    did: &str,
    ed_pub: &[u8; 32],
    x_pub: &[u8; 32],
    services: &[DidCommService],
) -> DidDocument {
    let mut doc = DidDocument::new(did);
    doc.context = serde_json::json!([DID_CONTEXT_V1, JWS2020_CONTEXT_V1]);
    let auth = format!("{did}#key-1");
    let ka = format!("{did}#key-2");
    doc.verification_method
        .push(VerificationMethod::json_web_key(
            &auth,
            did,
            PublicKey::Ed25519(*ed_pub),
        ));
    doc.verification_method
        .push(VerificationMethod::json_web_key(
            &ka,
            did,
            PublicKey::X25519(*x_pub),
        ));
    doc.authentication.push(auth.clone());
    doc.assertion_method.push(auth);
    doc.key_agreement.push(ka);
    doc.service = services.iter().map(DidCommService::to_service).collect();
    doc
}

fn clamp(mut k: [u8; 32]) -> [u8; 32] {
    k[0] &= 248;
    k[31] &= 127;
    k[31] |= 64;
    k
}

fn validate_name(name: &str) -> Result<(), WalletError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(WalletError::InvalidName(name.to_owned()))
    }
}

fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> WalletError + 'a {
    move |error| WalletError::Io {
        action,
        path: path.to_owned(),
        error,
    }
}

fn create_private_dir(path: &Path) -> Result<(), WalletError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(path)
        .map_err(io_err("cannot create directory", path))?;
    set_mode(path, 0o700)
}

fn open_private_file(path: &Path) -> Result<File, WalletError> {
    let mut opts = OpenOptions::new();
    opts.create(true).truncate(false).read(true).write(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let f = opts.open(path).map_err(io_err("cannot open", path))?;
    set_mode(path, 0o600)?;
    Ok(f)
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> Result<(), WalletError> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = std::fs::symlink_metadata(path).map_err(io_err("cannot stat", path))?;
    if meta.permissions().mode() & 0o777 != mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(io_err("cannot set permissions of", path))?;
    }
    Ok(())
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _mode: u32) -> Result<(), WalletError> {
    Ok(())
}

/// Directories 0700 and regular files 0600 below `dir` (not following symlinks).
fn secure_tree(dir: &Path) -> Result<(), WalletError> {
    set_mode(dir, 0o700)?;
    let entries = std::fs::read_dir(dir).map_err(io_err("cannot list", dir))?;
    for entry in entries {
        let entry = entry.map_err(io_err("cannot list", dir))?;
        let path = entry.path();
        let ft = entry.file_type().map_err(io_err("cannot stat", &path))?;
        if ft.is_dir() {
            secure_tree(&path)?;
        } else if ft.is_file() {
            set_mode(&path, 0o600)?;
        }
    }
    Ok(())
}
