//! MPC-session records and the registered mediator, with typed accessors.
//!
//! An MPC-session record is what this wallet knows about one MPC session (spec/lobby.md):
//! the offer it joined or created, whether it coordinates, and the roster once all parties
//! are in. Records are JSON files `<home>/mpc/<mpc session id>.json` (directory 0700, files
//! 0600, written to a temporary file then renamed), outside the sled store so that the
//! long-running `run` of several MPC sessions never holds the wallet's lock. The format is
//! the one earlier versions wrote; it is read unchanged.
//!
//! The registered mediator of an identity is a wallet setting (`mediator.<identity>`) whose
//! value is the mediator's description as JSON; [`Wallet::mediator`] and
//! [`Wallet::set_mediator`] read and write it as the caller's type (the agent's
//! `MediatorInfo`), so the key scheme lives here only.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use mpc_did_lobby::{MpcSessionId, Offer, PartyId, Roster};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{Wallet, WalletError};

/// Largest record file read (a roster of 64 parties is a few tens of kB).
const MAX_RECORD_BYTES: u64 = 1 << 20;
/// Directory of the records under the wallet's home.
const DIR: &str = "mpc";

/// What this wallet knows about one MPC session (`<home>/mpc/<id>.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MpcSessionRecord {
    /// The offer created (coordinator) or joined.
    pub offer: Offer,
    /// Wallet name of the identity taking part.
    pub identity: String,
    /// Whether we coordinate (party 0).
    pub coordinator: bool,
    /// The roster, once all parties are in (checked with `Roster::accept`).
    #[serde(default)]
    pub roster: Option<Roster>,
    /// Our party id, once the roster is known.
    #[serde(default)]
    pub party: Option<PartyId>,
    /// What the last `run` of this MPC session did (`mpc-did mpc status`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempt: Option<AttemptRecord>,
}

/// The last attempt (`run`) of an MPC session, as far as this party saw it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// The attempt id (spec/lobby.md §8).
    pub attempt: String,
    /// Unix seconds when it started.
    pub started: u64,
    /// The secure sessions that came up: (peer party id, path).
    #[serde(default)]
    pub sessions: Vec<(PartyId, String)>,
    /// How it ended; `None` while it runs (or if the process was killed).
    #[serde(default)]
    pub outcome: Option<String>,
}

impl MpcSessionRecord {
    /// The MPC session's id.
    #[must_use]
    pub fn id(&self) -> MpcSessionId {
        self.offer.mpc_session_id
    }
}

/// Why an MPC-session record could not be stored or found.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MpcSessionError {
    /// A file-system operation failed.
    #[error("{action} {path}: {error}")]
    Io {
        /// What we were doing.
        action: &'static str,
        /// On which path.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// No record matches.
    #[error("no MPC session {0:?} in this wallet (see `mpc-did mpc list`)")]
    NotFound(String),
    /// The wallet has no record at all.
    #[error("no MPC session in this wallet: `mpc-did mpc new` or `mpc-did mpc join` first")]
    None,
    /// The prefix names more than one record.
    #[error("MPC session prefix {0:?} is ambiguous: give more of the id")]
    Ambiguous(String),
    /// Another process hosts this MPC session's lobby.
    #[error("MPC session {0} is already being hosted by another `mpc-did mpc host` of this wallet; wait for it, or stop it first")]
    AlreadyHosted(MpcSessionId),
    /// A record file does not decode (or is too large to be one).
    #[error("{0} is corrupt: {1}")]
    Corrupt(PathBuf, String),
}

/// The MPC-session records of one wallet home.
#[derive(Debug, Clone)]
pub struct MpcSessions {
    dir: PathBuf,
}

impl MpcSessions {
    /// The records of the wallet at `home` (no lock taken; see the module docs).
    #[must_use]
    pub fn at(home: &Path) -> Self {
        Self {
            dir: home.join(DIR),
        }
    }

    fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> MpcSessionError {
        let path = path.to_path_buf();
        move |error| MpcSessionError::Io {
            action,
            path,
            error,
        }
    }

    /// Store a record (0600, written to a temporary file then renamed).
    ///
    /// # Errors
    /// The directory or file cannot be written.
    pub fn save(&self, rec: &MpcSessionRecord) -> Result<(), MpcSessionError> {
        let d = &self.dir;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(d)
            .map_err(Self::io("creating", d))?;
        let id = rec.id();
        let path = d.join(format!("{id}.json"));
        let tmp = d.join(format!(".{id}.tmp"));
        let text = serde_json::to_string_pretty(rec)
            .map_err(|e| MpcSessionError::Corrupt(path.clone(), e.to_string()))?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(Self::io("writing", &tmp))?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(Self::io("writing", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(Self::io("writing", &path))
    }

    /// The record of the MPC session whose id starts with `prefix`, or the newest record.
    ///
    /// # Errors
    /// No such session, an ambiguous prefix, or a corrupt record.
    pub fn load(&self, prefix: Option<&str>) -> Result<MpcSessionRecord, MpcSessionError> {
        let mut found = self.files(prefix);
        if let Some(p) = prefix {
            if found.len() > 1 {
                return Err(MpcSessionError::Ambiguous(p.to_owned()));
            }
        }
        found.sort();
        let (_, path) = found.pop().ok_or_else(|| match prefix {
            Some(p) => MpcSessionError::NotFound(p.to_owned()),
            None => MpcSessionError::None,
        })?;
        read_record(&path)
    }

    /// The record of exactly this MPC session.
    ///
    /// # Errors
    /// No such session, or a corrupt record.
    pub fn get(&self, id: &MpcSessionId) -> Result<MpcSessionRecord, MpcSessionError> {
        let path = self.dir.join(format!("{id}.json"));
        if !path.is_file() {
            return Err(MpcSessionError::NotFound(id.to_string()));
        }
        read_record(&path)
    }

    /// Exclusive right to host the lobby of `id` for the life of the returned guard (a
    /// second `mpc host` of the same MPC session says so instead of competing for joins).
    ///
    /// # Errors
    /// [`MpcSessionError::AlreadyHosted`] if another process holds it; file errors.
    pub fn lock_host(&self, id: &MpcSessionId) -> Result<HostLock, MpcSessionError> {
        let d = &self.dir;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(d)
            .map_err(Self::io("creating", d))?;
        let path = d.join(format!(".{id}.host.lock"));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(Self::io("opening", &path))?;
        match file.try_lock() {
            Ok(()) => Ok(HostLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(MpcSessionError::AlreadyHosted(*id)),
            Err(std::fs::TryLockError::Error(e)) => Err(Self::io("locking", &path)(e)),
        }
    }

    /// Every readable record, oldest first (corrupt files are skipped).
    #[must_use]
    pub fn list(&self) -> Vec<MpcSessionRecord> {
        let mut found = self.files(None);
        found.sort();
        found
            .into_iter()
            .filter_map(|(_, p)| read_record(&p).ok())
            .collect()
    }

    /// Record files (modification time, path) whose id starts with `prefix`.
    fn files(&self, prefix: Option<&str>) -> Vec<(SystemTime, PathBuf)> {
        let mut found = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return found;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(id) = name.strip_suffix(".json") else {
                continue;
            };
            if id.starts_with('.') || prefix.is_some_and(|p| !id.starts_with(p)) {
                continue;
            }
            let modified = e
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(UNIX_EPOCH);
            found.push((modified, e.path()));
        }
        found
    }
}

/// Held while a process hosts an MPC session's lobby ([`MpcSessions::lock_host`]); the
/// lock is released when it is dropped (or the process ends).
#[derive(Debug)]
pub struct HostLock {
    _file: std::fs::File,
}

fn read_record(path: &Path) -> Result<MpcSessionRecord, MpcSessionError> {
    let len = std::fs::metadata(path)
        .map_err(MpcSessions::io("reading", path))?
        .len();
    if len > MAX_RECORD_BYTES {
        return Err(MpcSessionError::Corrupt(
            path.to_path_buf(),
            format!("{len} bytes is too large for a record"),
        ));
    }
    let text = std::fs::read(path).map_err(MpcSessions::io("reading", path))?;
    serde_json::from_slice(&text)
        .map_err(|e| MpcSessionError::Corrupt(path.to_path_buf(), e.to_string()))
}

/// The setting that remembers an identity's registered mediator.
fn mediator_key(identity: &str) -> String {
    format!("mediator.{identity}")
}

impl Wallet {
    /// The mediator `identity` registered with (as stored by [`Wallet::set_mediator`]), or
    /// `None` if it has not registered.
    ///
    /// # Errors
    /// Storage errors; [`WalletError::Corrupt`] if the stored value is not a `T`.
    pub fn mediator<T: DeserializeOwned>(&self, identity: &str) -> Result<Option<T>, WalletError> {
        let key = mediator_key(identity);
        match self.setting(&key)? {
            None => Ok(None),
            Some(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|_| WalletError::Corrupt(format!("setting {key}"))),
        }
    }

    /// Remember the mediator `identity` registered with.
    ///
    /// # Errors
    /// Storage errors, or `mediator` does not serialise.
    pub fn set_mediator<T: Serialize>(
        &self,
        identity: &str,
        mediator: &T,
    ) -> Result<(), WalletError> {
        let key = mediator_key(identity);
        let text = serde_json::to_string(mediator)
            .map_err(|_| WalletError::Corrupt(format!("setting {key}")))?;
        self.set_setting(&key, &text)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use mpc_did_lobby::Program;

    fn record() -> MpcSessionRecord {
        let offer = Offer::new(
            "did:key:z6MkA".into(),
            3,
            Program::from_bytes("p.py", b"x"),
            vec![],
            2_000_000_000,
        )
        .unwrap();
        MpcSessionRecord {
            offer,
            identity: "alice".into(),
            coordinator: true,
            roster: None,
            party: None,
            last_attempt: None,
        }
    }

    #[test]
    fn save_load_by_prefix_and_list() {
        let home = tempfile::tempdir().unwrap();
        let store = MpcSessions::at(home.path());
        assert!(matches!(store.load(None), Err(MpcSessionError::None)));
        let rec = record();
        store.save(&rec).unwrap();
        let id = rec.id().to_string();
        assert_eq!(store.load(Some(&id[..6])).unwrap().id(), rec.id());
        assert_eq!(store.get(&rec.id()).unwrap().identity, "alice");
        assert_eq!(store.list().len(), 1);
        assert!(matches!(
            store.load(Some("zz")),
            Err(MpcSessionError::NotFound(_))
        ));
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(home.path().join("mpc").join(format!("{id}.json")))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }

    /// A record written by earlier versions (field `session_id`) still reads.
    #[test]
    fn reads_records_of_earlier_versions() {
        let home = tempfile::tempdir().unwrap();
        let dir = home.path().join("mpc");
        std::fs::create_dir_all(&dir).unwrap();
        let id = "000102030405060708090a0b0c0d0e0f";
        let old = format!(
            r#"{{"offer":{{"session_id":"{id}","parties":2,
            "program":{{"name":"p.py","sha256":"{}"}},"mpyc_args":[],"expires_time":5,
            "coordinator":"did:key:z6MkA","coordinator_services":[]}},
            "identity":"bob","coordinator":false}}"#,
            "ab".repeat(32)
        );
        std::fs::write(dir.join(format!("{id}.json")), old).unwrap();
        let rec = MpcSessions::at(home.path()).load(Some(id)).unwrap();
        assert_eq!(rec.id().to_string(), id);
        assert_eq!(rec.party, None);
    }

    #[test]
    fn two_records_make_a_short_prefix_ambiguous_or_absent() {
        let home = tempfile::tempdir().unwrap();
        let store = MpcSessions::at(home.path());
        store.save(&record()).unwrap();
        store.save(&record()).unwrap();
        assert!(matches!(
            store.load(Some("")),
            Err(MpcSessionError::Ambiguous(_))
        ));
        assert_eq!(store.list().len(), 2);
    }

    #[test]
    fn only_one_host_per_mpc_session() {
        let home = tempfile::tempdir().unwrap();
        let store = MpcSessions::at(home.path());
        let id = record().id();
        let lock = store.lock_host(&id).unwrap();
        assert!(matches!(
            store.lock_host(&id),
            Err(MpcSessionError::AlreadyHosted(_))
        ));
        // Another MPC session is not affected; the lock goes with its guard.
        store.lock_host(&record().id()).unwrap();
        drop(lock);
        store.lock_host(&id).unwrap();
    }

    #[test]
    fn mediator_round_trips_as_the_callers_type() {
        let home = tempfile::tempdir().unwrap();
        let wallet = Wallet::open(home.path()).unwrap();
        assert_eq!(wallet.mediator::<Vec<String>>("alice").unwrap(), None);
        wallet
            .set_mediator("alice", &vec!["https://m.example".to_owned()])
            .unwrap();
        assert_eq!(
            wallet.mediator::<Vec<String>>("alice").unwrap(),
            Some(vec!["https://m.example".to_owned()])
        );
        // The key earlier versions wrote.
        assert!(wallet.setting("mediator.alice").unwrap().is_some());
        assert!(wallet.mediator::<u32>("alice").is_err());
    }
}
