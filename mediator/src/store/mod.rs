//! Durable message queues, mediation grants and recipient keys behind one trait.
//!
//! Two backends implement [`Store`]: [`SledStore`] (embedded, the default) and [`RedisStore`]
//! (several mediator instances share one Redis). Both keep the same contract, checked by the
//! shared tests in `store/contract.rs` (spec/mediator.md §5):
//!
//! - [`Store::enqueue`] returns only once the message is durable (sled: flushed to disk;
//!   Redis: written with `appendfsync always`, a documented deployment requirement).
//! - A message is removed only by [`Store::remove`] (Pickup 3.0 `messages-received`).
//! - Message ids are derived from the message bytes, so a sender's retry of the same
//!   envelope is stored once, and clients de-duplicate what at-least-once delivery repeats.
//! - A full queue refuses with [`StoreError::QueueFull`]; nothing is dropped silently.

mod redis_store;
mod sled_store;

#[cfg(test)]
mod contract;

use std::collections::HashSet;
use std::future::Future;

use sha2::{Digest as _, Sha256};
use tokio::sync::broadcast;

pub use redis_store::RedisStore;
pub use sled_store::SledStore;

/// What a store can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The recipient's queue holds its maximum number of messages or bytes.
    #[error("queue full for this recipient ({0})")]
    QueueFull(&'static str),
    /// The embedded database failed (disk full, I/O error, corruption).
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    /// The Redis server failed or is unreachable.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A stored record does not decode (written by an incompatible version, or corrupted).
    #[error("corrupt record: {0}")]
    Corrupt(&'static str),
    /// The store URL or directory is unusable.
    #[error("store configuration: {0}")]
    Config(String),
}

/// Per-recipient queue bounds applied at enqueue time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// Maximum messages waiting for one mediated DID.
    pub max_messages: u64,
    /// Maximum bytes waiting for one mediated DID.
    pub max_bytes: u64,
}

/// One queued message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Stable id used in Pickup 3.0 `delivery` attachments and `messages-received`.
    pub id: String,
    /// The recipient key (DID or DID URL) the forward named in `next`.
    pub recipient_key: String,
    /// Arrival time, milliseconds since the Unix epoch.
    pub received_ms: u64,
    /// The forwarded message, exactly as received.
    pub data: Vec<u8>,
}

/// Outcome of [`Store::fetch_unsent`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unsent {
    /// Messages not in the exclusion set, oldest first.
    pub messages: Vec<StoredMessage>,
    /// Which excluded ids are still queued, when the whole queue was scanned.
    pub still_queued: Option<HashSet<String>>,
}

/// Queue summary for Pickup 3.0 `status`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueStatus {
    /// Messages waiting.
    pub message_count: u64,
    /// Bytes waiting.
    pub total_bytes: u64,
    /// Arrival of the oldest waiting message (ms since epoch).
    pub oldest_ms: Option<u64>,
    /// Arrival of the newest waiting message (ms since epoch).
    pub newest_ms: Option<u64>,
}

/// Outcome of [`Store::enqueue`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enqueued {
    /// The message id.
    pub id: String,
    /// The same bytes were already queued for this recipient (a sender's retry).
    pub duplicate: bool,
}

/// Outcome of adding or removing a recipient key (Coordinate Mediation 2.0 `result`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyUpdate {
    /// The key was added or removed.
    Success,
    /// Nothing to do: already present (add) or absent (remove).
    NoChange,
    /// The key is registered by another DID.
    Conflict,
}

/// Store-wide figures for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreTotals {
    /// Messages waiting in all queues.
    pub messages: u64,
    /// Bytes waiting in all queues.
    pub bytes: u64,
}

/// An arrival notice: `owner` (a mediated DID) has new messages, or [`ARRIVAL_ALL`] when
/// notices may have been lost (reconnect, lag) and every live connection must rescan.
pub type Arrival = String;
/// See [`Arrival`].
pub const ARRIVAL_ALL: &str = "*";

/// Storage contract of the mediator. Every method is cancel-safe in the sense that a
/// dropped future leaves the store consistent (each mutation is one atomic transaction or
/// script).
pub trait Store: Send + Sync + 'static {
    /// Backend name for logs and metrics.
    fn backend(&self) -> &'static str;

    /// Value of a metadata key (the mediator identity lives here).
    ///
    /// # Errors
    /// Backend failure.
    fn meta(&self, key: &str) -> impl Future<Output = Result<Option<Vec<u8>>, StoreError>> + Send;

    /// Sets `key` to `value` unless it exists; returns the value now stored. Two instances
    /// starting together on one Redis agree on one value.
    ///
    /// # Errors
    /// Backend failure.
    fn meta_init(
        &self,
        key: &str,
        value: &[u8],
    ) -> impl Future<Output = Result<Vec<u8>, StoreError>> + Send;

    /// Records a mediation grant for `did` (idempotent).
    ///
    /// # Errors
    /// Backend failure.
    fn grant(&self, did: &str) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Whether `did` holds a mediation grant.
    ///
    /// # Errors
    /// Backend failure.
    fn has_grant(&self, did: &str) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Registers `key` as a recipient key of `did`.
    ///
    /// # Errors
    /// Backend failure.
    fn add_key(
        &self,
        did: &str,
        key: &str,
    ) -> impl Future<Output = Result<KeyUpdate, StoreError>> + Send;

    /// Unregisters `key` from `did`.
    ///
    /// # Errors
    /// Backend failure.
    fn remove_key(
        &self,
        did: &str,
        key: &str,
    ) -> impl Future<Output = Result<KeyUpdate, StoreError>> + Send;

    /// The recipient keys of `did`, sorted.
    ///
    /// # Errors
    /// Backend failure.
    fn keys(&self, did: &str) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;

    /// The DID that registered `key`.
    ///
    /// # Errors
    /// Backend failure.
    fn key_owner(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<Option<String>, StoreError>> + Send;

    /// Queues `data` for `owner` (addressed to `recipient_key`) and returns once it is
    /// durable. Publishes an arrival notice.
    ///
    /// # Errors
    /// [`StoreError::QueueFull`] when a limit is reached; backend failure.
    fn enqueue(
        &self,
        owner: &str,
        recipient_key: &str,
        data: &[u8],
        limits: QueueLimits,
    ) -> impl Future<Output = Result<Enqueued, StoreError>> + Send;

    /// Summary of `owner`'s queue, optionally only messages for `recipient_key`.
    ///
    /// # Errors
    /// Backend failure.
    fn status(
        &self,
        owner: &str,
        recipient_key: Option<&str>,
    ) -> impl Future<Output = Result<QueueStatus, StoreError>> + Send;

    /// Up to `limit` oldest messages of `owner` (optionally only for `recipient_key`),
    /// oldest first. Does not remove them.
    ///
    /// # Errors
    /// Backend failure.
    fn fetch(
        &self,
        owner: &str,
        recipient_key: Option<&str>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<StoredMessage>, StoreError>> + Send;

    /// Up to `limit` oldest messages of `owner` whose ids are not in `except` (the ids a
    /// live session has already pushed and not yet seen acknowledged), oldest first; and
    /// the ids of `except` still queued — `None` when the scan stopped at `limit` before
    /// the end of the queue. A live push reads only the messages it will send, not the
    /// bodies of everything in flight (spec/mediator.md §11.2).
    ///
    /// # Errors
    /// Backend failure.
    fn fetch_unsent(
        &self,
        owner: &str,
        except: &HashSet<String>,
        limit: usize,
    ) -> impl Future<Output = Result<Unsent, StoreError>> + Send;

    /// Removes the listed messages of `owner`; unknown ids are ignored (a replayed
    /// `messages-received` is harmless). Returns how many were removed.
    ///
    /// # Errors
    /// Backend failure.
    fn remove(
        &self,
        owner: &str,
        ids: &[String],
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Which of `ids` are still queued for `owner` (not acknowledged, here or through
    /// another instance): the per-source quotas ask before freeing a place they have held
    /// for `source_quota_secs` (spec/mediator.md §6.1). Reads no message body.
    ///
    /// # Errors
    /// Backend failure.
    fn still_queued(
        &self,
        owner: &str,
        ids: &[String],
    ) -> impl Future<Output = Result<HashSet<String>, StoreError>> + Send;

    /// Store-wide totals.
    ///
    /// # Errors
    /// Backend failure.
    fn totals(&self) -> impl Future<Output = Result<StoreTotals, StoreError>> + Send;

    /// Arrival notices from this instance and (Redis) every other instance.
    fn arrivals(&self) -> broadcast::Receiver<Arrival>;

    /// Makes everything written so far durable (used when draining on shutdown).
    ///
    /// # Errors
    /// Backend failure.
    fn flush(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// The message id: the first 16 bytes of SHA-256 over the message bytes, in hex.
/// Content-derived ids make a sender's retry idempotent; the ciphertext's random content
/// encryption key makes collisions between distinct messages negligible.
#[must_use]
pub fn message_id(data: &[u8]) -> String {
    let digest = Sha256::digest(data);
    hex::encode(digest.get(..16).unwrap_or_default())
}

/// Milliseconds since the Unix epoch (0 if the clock is before 1970).
#[must_use]
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Binary record shared by both backends:
/// `received_ms u64 BE | key_len u16 BE | key | data`. (The id is the storage key.)
fn encode_record(received_ms: u64, recipient_key: &str, data: &[u8]) -> Vec<u8> {
    let key = recipient_key.as_bytes();
    let key_len = u16::try_from(key.len()).unwrap_or(u16::MAX);
    let key = key.get(..usize::from(key_len)).unwrap_or(key);
    let mut out = Vec::with_capacity(10 + key.len() + data.len());
    out.extend_from_slice(&received_ms.to_be_bytes());
    out.extend_from_slice(&key_len.to_be_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(data);
    out
}

fn decode_record(id: String, raw: &[u8]) -> Result<StoredMessage, StoreError> {
    let ts: [u8; 8] = raw
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or(StoreError::Corrupt("short record"))?;
    let kl: [u8; 2] = raw
        .get(8..10)
        .and_then(|b| b.try_into().ok())
        .ok_or(StoreError::Corrupt("short record"))?;
    let kl = usize::from(u16::from_be_bytes(kl));
    let key = raw
        .get(10..10 + kl)
        .ok_or(StoreError::Corrupt("short record"))?;
    let recipient_key = std::str::from_utf8(key)
        .map_err(|_| StoreError::Corrupt("recipient key not UTF-8"))?
        .to_owned();
    let data = raw.get(10 + kl..).unwrap_or_default().to_vec();
    Ok(StoredMessage {
        id,
        recipient_key,
        received_ms: u64::from_be_bytes(ts),
        data,
    })
}

/// Length of the data part of a record, without copying it.
fn record_data_len(raw: &[u8]) -> u64 {
    let kl = raw
        .get(8..10)
        .map_or(0, |b| usize::from(u16::from_be_bytes([b[0], b[1]])));
    raw.len().saturating_sub(10 + kl) as u64
}

/// Either backend, chosen at run time from the `--store` setting.
pub enum AnyStore {
    /// Embedded sled database.
    Sled(SledStore),
    /// Shared Redis server.
    Redis(RedisStore),
}

macro_rules! dispatch {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            AnyStore::Sled($s) => $e,
            AnyStore::Redis($s) => $e,
        }
    };
}

impl Store for AnyStore {
    fn backend(&self) -> &'static str {
        dispatch!(self, s => s.backend())
    }
    async fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        dispatch!(self, s => s.meta(key).await)
    }
    async fn meta_init(&self, key: &str, value: &[u8]) -> Result<Vec<u8>, StoreError> {
        dispatch!(self, s => s.meta_init(key, value).await)
    }
    async fn grant(&self, did: &str) -> Result<(), StoreError> {
        dispatch!(self, s => s.grant(did).await)
    }
    async fn has_grant(&self, did: &str) -> Result<bool, StoreError> {
        dispatch!(self, s => s.has_grant(did).await)
    }
    async fn add_key(&self, did: &str, key: &str) -> Result<KeyUpdate, StoreError> {
        dispatch!(self, s => s.add_key(did, key).await)
    }
    async fn remove_key(&self, did: &str, key: &str) -> Result<KeyUpdate, StoreError> {
        dispatch!(self, s => s.remove_key(did, key).await)
    }
    async fn keys(&self, did: &str) -> Result<Vec<String>, StoreError> {
        dispatch!(self, s => s.keys(did).await)
    }
    async fn key_owner(&self, key: &str) -> Result<Option<String>, StoreError> {
        dispatch!(self, s => s.key_owner(key).await)
    }
    async fn enqueue(
        &self,
        owner: &str,
        recipient_key: &str,
        data: &[u8],
        limits: QueueLimits,
    ) -> Result<Enqueued, StoreError> {
        dispatch!(self, s => s.enqueue(owner, recipient_key, data, limits).await)
    }
    async fn status(
        &self,
        owner: &str,
        recipient_key: Option<&str>,
    ) -> Result<QueueStatus, StoreError> {
        dispatch!(self, s => s.status(owner, recipient_key).await)
    }
    async fn fetch(
        &self,
        owner: &str,
        recipient_key: Option<&str>,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        dispatch!(self, s => s.fetch(owner, recipient_key, limit).await)
    }
    async fn fetch_unsent(
        &self,
        owner: &str,
        except: &HashSet<String>,
        limit: usize,
    ) -> Result<Unsent, StoreError> {
        dispatch!(self, s => s.fetch_unsent(owner, except, limit).await)
    }
    async fn remove(&self, owner: &str, ids: &[String]) -> Result<u64, StoreError> {
        dispatch!(self, s => s.remove(owner, ids).await)
    }
    async fn still_queued(
        &self,
        owner: &str,
        ids: &[String],
    ) -> Result<HashSet<String>, StoreError> {
        dispatch!(self, s => s.still_queued(owner, ids).await)
    }
    async fn totals(&self) -> Result<StoreTotals, StoreError> {
        dispatch!(self, s => s.totals().await)
    }
    fn arrivals(&self) -> broadcast::Receiver<Arrival> {
        dispatch!(self, s => s.arrivals())
    }
    async fn flush(&self) -> Result<(), StoreError> {
        dispatch!(self, s => s.flush().await)
    }
}

impl AnyStore {
    /// Readiness probe: a durable write (sled: insert + flush; Redis: `SET`).
    ///
    /// # Errors
    /// The backend cannot write.
    pub async fn probe(&self) -> Result<(), StoreError> {
        dispatch!(self, s => s.probe().await)
    }

    /// DIDs holding a grant, with its time (ms since the epoch).
    ///
    /// # Errors
    /// Backend failure.
    pub async fn grant_list(&self) -> Result<Vec<(String, u64)>, StoreError> {
        dispatch!(self, s => s.grant_list().await)
    }

    /// Withdraws a grant; whether there was one.
    ///
    /// # Errors
    /// Backend failure.
    pub async fn revoke_grant(&self, did: &str) -> Result<bool, StoreError> {
        dispatch!(self, s => s.revoke_grant(did).await)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trip() {
        let raw = encode_record(42, "did:key:z6Mk#k", b"{\"x\":1}");
        assert_eq!(record_data_len(&raw), 7);
        let m = decode_record("id".into(), &raw).unwrap();
        assert_eq!(m.received_ms, 42);
        assert_eq!(m.recipient_key, "did:key:z6Mk#k");
        assert_eq!(m.data, b"{\"x\":1}");
        assert!(decode_record("id".into(), &raw[..9]).is_err());
        assert!(decode_record("id".into(), &[0, 0, 0, 0, 0, 0, 0, 0, 0, 9]).is_err());
    }

    #[test]
    fn ids_are_content_derived() {
        assert_eq!(message_id(b"a"), message_id(b"a"));
        assert_ne!(message_id(b"a"), message_id(b"b"));
        assert_eq!(message_id(b"a").len(), 32);
    }
}
