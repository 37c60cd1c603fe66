//! The embedded backend: one sled database in the mediator's data directory.
//!
//! Trees: `meta`, `grants` (did), `keys` (key → owner), `owner_keys` (owner 0 key),
//! `queue` (owner 0 seq → id, arrival order), `msgs` (owner 0 id → seq | record),
//! `counts` (owner → messages u64 | bytes u64). Every mutation of a queue is one sled
//! transaction over `msgs`, `queue` and `counts`, so a crash never leaves them disagreeing.
//!
//! Durability: `enqueue` waits for a group commit: one flusher task calls `flush` for
//! every batch of waiting writers, so concurrent senders share one fsync.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::Transactional as _;
use tokio::sync::{broadcast, mpsc, oneshot};

use super::{
    decode_record, encode_record, message_id, now_ms, record_data_len, Arrival, Enqueued,
    KeyUpdate, QueueLimits, QueueStatus, Store, StoreError, StoreTotals, StoredMessage,
};

type FlushRequest = oneshot::Sender<Result<(), String>>;

/// sled-backed [`Store`].
pub struct SledStore {
    meta: sled::Tree,
    grants: sled::Tree,
    keys: sled::Tree,
    owner_keys: sled::Tree,
    queue: sled::Tree,
    msgs: sled::Tree,
    counts: sled::Tree,
    total_messages: Arc<AtomicU64>,
    total_bytes: Arc<AtomicU64>,
    flush_tx: mpsc::UnboundedSender<FlushRequest>,
    arrivals: broadcast::Sender<Arrival>,
}

impl SledStore {
    /// Opens (or creates) the database in `dir`. Must be called inside a tokio runtime
    /// (it starts the group-commit task).
    ///
    /// # Errors
    /// The directory cannot be created or the database cannot be opened (another process
    /// holds it, corruption).
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Config(format!("cannot create {}: {e}", dir.display())))?;
        restrict_dir(dir);
        let db = sled::Config::new()
            .path(dir.join("queues.sled"))
            .flush_every_ms(Some(500))
            .open()?;
        let counts = db.open_tree("counts")?;
        let (mut n, mut b) = (0u64, 0u64);
        for item in counts.iter() {
            let (_, v) = item?;
            let (cn, cb) = decode_counts(&v);
            n = n.saturating_add(cn);
            b = b.saturating_add(cb);
        }
        let (flush_tx, mut flush_rx) = mpsc::unbounded_channel::<FlushRequest>();
        let flush_db = db.clone();
        tokio::spawn(async move {
            while let Some(first) = flush_rx.recv().await {
                let mut batch = vec![first];
                while let Ok(more) = flush_rx.try_recv() {
                    batch.push(more);
                }
                let db = flush_db.clone();
                let res = match tokio::task::spawn_blocking(move || db.flush()).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                for waiter in batch {
                    let _ = waiter.send(res.clone());
                }
            }
        });
        Ok(Self {
            meta: db.open_tree("meta")?,
            grants: db.open_tree("grants")?,
            keys: db.open_tree("keys")?,
            owner_keys: db.open_tree("owner_keys")?,
            queue: db.open_tree("queue")?,
            msgs: db.open_tree("msgs")?,
            counts,
            total_messages: Arc::new(AtomicU64::new(n)),
            total_bytes: Arc::new(AtomicU64::new(b)),
            flush_tx,
            arrivals: broadcast::channel(4096).0,
        })
    }

    async fn durable(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.flush_tx
            .send(tx)
            .map_err(|_| StoreError::Config("flusher stopped".into()))?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StoreError::Config(format!("flush failed: {e}"))),
            Err(_) => Err(StoreError::Config("flusher stopped".into())),
        }
    }

    /// All queued messages of `owner` in arrival order (for scans with a key filter).
    fn scan(
        &self,
        owner: &str,
        recipient_key: Option<&str>,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let mut out = Vec::new();
        for item in self.queue.scan_prefix(prefix(owner)) {
            if out.len() >= limit {
                break;
            }
            let (_, id) = item?;
            let Some(raw) = self.msgs.get(join(owner, &id))? else {
                continue;
            };
            let id = String::from_utf8(id.to_vec())
                .map_err(|_| StoreError::Corrupt("message id not UTF-8"))?;
            let m = decode_record(id, raw.get(8..).unwrap_or_default())?;
            if recipient_key.is_some_and(|k| k != m.recipient_key) {
                continue;
            }
            out.push(m);
        }
        Ok(out)
    }
}

#[cfg(unix)]
fn restrict_dir(dir: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    // The mediator's private key lives in this database: owner-only access.
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
}
#[cfg(not(unix))]
fn restrict_dir(_dir: &Path) {}

fn prefix(owner: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(owner.len() + 1);
    p.extend_from_slice(owner.as_bytes());
    p.push(0);
    p
}

fn join(owner: &str, tail: &[u8]) -> Vec<u8> {
    let mut p = prefix(owner);
    p.extend_from_slice(tail);
    p
}

fn decode_counts(v: &[u8]) -> (u64, u64) {
    let n = v
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_be_bytes);
    let b = v
        .get(8..16)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_be_bytes);
    (n, b)
}

fn encode_counts(n: u64, b: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&n.to_be_bytes());
    out[8..].copy_from_slice(&b.to_be_bytes());
    out
}

fn tx_err(e: TransactionError<StoreError>) -> StoreError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => StoreError::Sled(e),
    }
}

fn update_counts(
    c: &TransactionalTree,
    owner: &str,
    dn: i64,
    db: i64,
) -> Result<(u64, u64), ConflictableTransactionError<StoreError>> {
    let (n, b) = c
        .get(owner.as_bytes())?
        .map_or((0, 0), |v| decode_counts(&v));
    let n = n.saturating_add_signed(dn);
    let b = b.saturating_add_signed(db);
    if n == 0 {
        c.remove(owner.as_bytes())?;
    } else {
        c.insert(owner.as_bytes(), &encode_counts(n, b)[..])?;
    }
    Ok((n, b))
}

impl Store for SledStore {
    fn backend(&self) -> &'static str {
        "sled"
    }

    async fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.meta.get(key)?.map(|v| v.to_vec()))
    }

    async fn meta_init(&self, key: &str, value: &[u8]) -> Result<Vec<u8>, StoreError> {
        let res = self
            .meta
            .compare_and_swap(key, None as Option<&[u8]>, Some(value))?;
        let stored = match res {
            Ok(()) => value.to_vec(),
            Err(cas) => cas.current.map(|v| v.to_vec()).unwrap_or_default(),
        };
        self.durable().await?;
        Ok(stored)
    }

    async fn grant(&self, did: &str) -> Result<(), StoreError> {
        self.grants.insert(did, &now_ms().to_be_bytes()[..])?;
        self.durable().await
    }

    async fn has_grant(&self, did: &str) -> Result<bool, StoreError> {
        Ok(self.grants.contains_key(did)?)
    }

    async fn add_key(&self, did: &str, key: &str) -> Result<KeyUpdate, StoreError> {
        let res = (&self.keys, &self.owner_keys)
            .transaction(|(k, ok)| {
                match k.get(key)? {
                    Some(owner) if owner.as_ref() == did.as_bytes() => {
                        return Ok(KeyUpdate::NoChange)
                    }
                    Some(_) => return Ok(KeyUpdate::Conflict),
                    None => {}
                }
                k.insert(key, did)?;
                ok.insert(join(did, key.as_bytes()), &[][..])?;
                Ok(KeyUpdate::Success)
            })
            .map_err(tx_err)?;
        if res == KeyUpdate::Success {
            self.durable().await?;
        }
        Ok(res)
    }

    async fn remove_key(&self, did: &str, key: &str) -> Result<KeyUpdate, StoreError> {
        let res = (&self.keys, &self.owner_keys)
            .transaction(|(k, ok)| match k.get(key)? {
                Some(owner) if owner.as_ref() == did.as_bytes() => {
                    k.remove(key)?;
                    ok.remove(join(did, key.as_bytes()))?;
                    Ok(KeyUpdate::Success)
                }
                Some(_) => Ok(KeyUpdate::Conflict),
                None => Ok(KeyUpdate::NoChange),
            })
            .map_err(tx_err)?;
        if res == KeyUpdate::Success {
            self.durable().await?;
        }
        Ok(res)
    }

    async fn keys(&self, did: &str) -> Result<Vec<String>, StoreError> {
        let p = prefix(did);
        let mut out = Vec::new();
        for item in self.owner_keys.scan_prefix(&p) {
            let (k, _) = item?;
            let key = k.get(p.len()..).unwrap_or_default();
            out.push(String::from_utf8_lossy(key).into_owned());
        }
        Ok(out)
    }

    async fn key_owner(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .keys
            .get(key)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    async fn enqueue(
        &self,
        owner: &str,
        recipient_key: &str,
        data: &[u8],
        limits: QueueLimits,
    ) -> Result<Enqueued, StoreError> {
        let id = message_id(data);
        let size = data.len() as u64;
        let record = encode_record(now_ms(), recipient_key, data);
        let mkey = join(owner, id.as_bytes());
        let inserted = (&self.msgs, &self.queue, &self.counts)
            .transaction(|(m, q, c)| {
                if m.get(&mkey)?.is_some() {
                    return Ok(false);
                }
                let (n, b) = c
                    .get(owner.as_bytes())?
                    .map_or((0, 0), |v| decode_counts(&v));
                if n >= limits.max_messages {
                    return Err(ConflictableTransactionError::Abort(StoreError::QueueFull(
                        "max_messages",
                    )));
                }
                if b.saturating_add(size) > limits.max_bytes {
                    return Err(ConflictableTransactionError::Abort(StoreError::QueueFull(
                        "max_bytes",
                    )));
                }
                let seq = m.generate_id()?.to_be_bytes();
                let mut value = Vec::with_capacity(8 + record.len());
                value.extend_from_slice(&seq);
                value.extend_from_slice(&record);
                m.insert(mkey.as_slice(), value)?;
                q.insert(join(owner, &seq), id.as_bytes())?;
                update_counts(c, owner, 1, i64::try_from(size).unwrap_or(i64::MAX))?;
                Ok(true)
            })
            .map_err(tx_err)?;
        self.durable().await?;
        if inserted {
            self.total_messages.fetch_add(1, Ordering::Relaxed);
            self.total_bytes.fetch_add(size, Ordering::Relaxed);
            let _ = self.arrivals.send(owner.to_owned());
        }
        Ok(Enqueued {
            id,
            duplicate: !inserted,
        })
    }

    async fn status(
        &self,
        owner: &str,
        recipient_key: Option<&str>,
    ) -> Result<QueueStatus, StoreError> {
        if let Some(key) = recipient_key {
            let all = self.scan(owner, Some(key), usize::MAX)?;
            return Ok(QueueStatus {
                message_count: all.len() as u64,
                total_bytes: all.iter().map(|m| m.data.len() as u64).sum(),
                oldest_ms: all.first().map(|m| m.received_ms),
                newest_ms: all.last().map(|m| m.received_ms),
            });
        }
        let (n, b) = self
            .counts
            .get(owner.as_bytes())?
            .map_or((0, 0), |v| decode_counts(&v));
        let ts = |entry: Option<(sled::IVec, sled::IVec)>| -> Result<Option<u64>, StoreError> {
            let Some((_, id)) = entry else {
                return Ok(None);
            };
            let Some(raw) = self.msgs.get(join(owner, &id))? else {
                return Ok(None);
            };
            Ok(raw
                .get(8..16)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes))
        };
        let mut range = self.queue.scan_prefix(prefix(owner));
        let oldest = ts(range.next().transpose()?)?;
        let newest = ts(range.next_back().transpose()?)?.or(oldest);
        Ok(QueueStatus {
            message_count: n,
            total_bytes: b,
            oldest_ms: oldest,
            newest_ms: newest,
        })
    }

    async fn fetch(
        &self,
        owner: &str,
        recipient_key: Option<&str>,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        self.scan(owner, recipient_key, limit)
    }

    async fn remove(&self, owner: &str, ids: &[String]) -> Result<u64, StoreError> {
        let (removed, bytes) = (&self.msgs, &self.queue, &self.counts)
            .transaction(|(m, q, c)| {
                let (mut removed, mut bytes) = (0u64, 0u64);
                for id in ids {
                    let Some(raw) = m.remove(join(owner, id.as_bytes()))? else {
                        continue;
                    };
                    if let Some(seq) = raw.get(..8) {
                        q.remove(join(owner, seq))?;
                    }
                    removed += 1;
                    bytes += record_data_len(raw.get(8..).unwrap_or_default());
                }
                if removed > 0 {
                    update_counts(
                        c,
                        owner,
                        -i64::try_from(removed).unwrap_or(i64::MAX),
                        -i64::try_from(bytes).unwrap_or(i64::MAX),
                    )?;
                }
                Ok((removed, bytes))
            })
            .map_err(tx_err)?;
        let _ = self
            .total_messages
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(removed))
            });
        let _ = self
            .total_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(bytes))
            });
        // Not flushed here: a removal lost in a crash only means redelivery, which
        // at-least-once delivery allows; sled flushes on its own every 500 ms.
        Ok(removed)
    }

    async fn totals(&self) -> Result<StoreTotals, StoreError> {
        Ok(StoreTotals {
            messages: self.total_messages.load(Ordering::Relaxed),
            bytes: self.total_bytes.load(Ordering::Relaxed),
        })
    }

    fn arrivals(&self) -> broadcast::Receiver<Arrival> {
        self.arrivals.subscribe()
    }

    async fn flush(&self) -> Result<(), StoreError> {
        self.durable().await
    }
}
