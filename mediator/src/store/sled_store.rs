//! The embedded backend: one sled database in the mediator's data directory.
//!
//! Trees: `meta`, `grants` (did), `keys` (key → owner), `owner_keys` (owner 0 key),
//! `queue` (owner 0 seq → id, arrival order), `msgs` (owner 0 id → seq | record),
//! `counts` (owner → messages u64 | bytes u64). Every mutation of a queue is one sled
//! transaction over `msgs`, `queue` and `counts`, so a crash never leaves them disagreeing.
//!
//! Durability: `enqueue` waits for a group commit: one flusher task calls `flush` for
//! every batch of waiting writers, so concurrent senders share one fsync.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use sled::transaction::TransactionError;
use sled::Transactional as _;
use tokio::sync::{broadcast, mpsc, oneshot};

use super::{
    decode_record, encode_record, message_id, now_ms, record_data_len, Arrival, Enqueued,
    KeyUpdate, QueueLimits, QueueStatus, Store, StoreError, StoreTotals, StoredMessage, Unsent,
};

type FlushRequest = oneshot::Sender<Result<(), String>>;

/// Writers one group commit gathers at most before it flushes.
const FLUSH_GATHER_MAX: usize = 1024;

/// sled-backed [`Store`].
pub struct SledStore {
    db: sled::Db,
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
        repair(&db.open_tree("msgs")?, &db.open_tree("queue")?, &counts)?;
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
                // Let the tasks that are ready to run right now (other requests about to
                // finish their sled transaction) reach the queue before this flush: under
                // load one flush then covers many writers instead of one each, which is
                // most of the mediator's CPU otherwise (each flush is a pwrite and a
                // sync_file_range, twice). With nothing else runnable the yield returns at
                // once, so a lone writer waits no longer than before.
                loop {
                    let before = batch.len();
                    tokio::task::yield_now().await;
                    while let Ok(more) = flush_rx.try_recv() {
                        batch.push(more);
                    }
                    if batch.len() == before || batch.len() >= FLUSH_GATHER_MAX {
                        break;
                    }
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
            db: db.clone(),
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

    /// Takes `messages` and `bytes` off the totals (saturating: a gauge, never a wrap).
    fn untotal(&self, messages: u64, bytes: u64) {
        let _ = self
            .total_messages
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(messages))
            });
        let _ = self
            .total_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(bytes))
            });
    }

    /// Next message sequence number (monotonic across restarts).
    fn msgs_db_id(&self) -> Result<u64, StoreError> {
        Ok(self.db.generate_id()?)
    }

    /// Adds one message of `size` bytes to `owner`'s counts if the limits allow it.
    fn reserve_count(&self, owner: &str, size: u64, limits: QueueLimits) -> Result<(), StoreError> {
        loop {
            let old = self.counts.get(owner.as_bytes())?;
            let (n, b) = old.as_ref().map_or((0, 0), |v| decode_counts(v));
            if n >= limits.max_messages {
                return Err(StoreError::QueueFull("max_messages"));
            }
            if b.saturating_add(size) > limits.max_bytes {
                return Err(StoreError::QueueFull("max_bytes"));
            }
            let new = encode_counts(n + 1, b.saturating_add(size));
            if self
                .counts
                .compare_and_swap(owner.as_bytes(), old, Some(&new[..]))?
                .is_ok()
            {
                return Ok(());
            }
        }
    }

    /// Adjusts `owner`'s counts by (`dn`, `db`), removing the entry at zero messages.
    fn add_counts(&self, owner: &str, dn: i64, db: i64) -> Result<(), StoreError> {
        loop {
            let old = self.counts.get(owner.as_bytes())?;
            let (n, b) = old.as_ref().map_or((0, 0), |v| decode_counts(v));
            let n = n.saturating_add_signed(dn);
            let b = b.saturating_add_signed(db);
            let new = (n > 0).then(|| encode_counts(n, b));
            if self
                .counts
                .compare_and_swap(owner.as_bytes(), old, new.as_ref().map(|v| &v[..]))?
                .is_ok()
            {
                return Ok(());
            }
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

/// Makes `queue` and `counts` agree with `msgs` after a crash (spec/mediator.md §5):
/// every message gets its queue entry back, queue entries without their message go, and
/// the counts are recomputed. `msgs` is the truth: a message is written there before it
/// is indexed or acknowledged, and removed there first. O(queued messages), at open.
fn repair(msgs: &sled::Tree, queue: &sled::Tree, counts: &sled::Tree) -> Result<(), StoreError> {
    let mut want: std::collections::BTreeMap<Vec<u8>, (u64, u64)> = Default::default();
    for item in msgs.iter() {
        let (k, v) = item?;
        let Some(split) = k.iter().position(|&c| c == 0) else {
            continue;
        };
        let (owner, id) = (k.get(..split).unwrap_or_default(), k.get(split + 1..));
        let (Some(id), Some(seq)) = (id, v.get(..8)) else {
            continue;
        };
        let mut qkey = owner.to_vec();
        qkey.push(0);
        qkey.extend_from_slice(seq);
        if queue.get(&qkey)?.as_deref() != Some(id) {
            queue.insert(qkey, id)?;
        }
        let e = want.entry(owner.to_vec()).or_default();
        e.0 += 1;
        e.1 += record_data_len(v.get(8..).unwrap_or_default());
    }
    for item in queue.iter() {
        let (k, id) = item?;
        let Some(split) = k.iter().position(|&c| c == 0) else {
            continue;
        };
        let mut mkey = k.get(..=split).unwrap_or_default().to_vec();
        mkey.extend_from_slice(&id);
        let seq = k.get(split + 1..).unwrap_or_default();
        let ok = msgs.get(&mkey)?.is_some_and(|v| v.get(..8) == Some(seq));
        if !ok {
            queue.remove(&k)?;
        }
    }
    for item in counts.iter() {
        let (owner, _) = item?;
        if !want.contains_key(owner.as_ref()) {
            counts.remove(&owner)?;
        }
    }
    for (owner, (n, b)) in want {
        if counts
            .get(&owner)?
            .is_none_or(|v| decode_counts(&v) != (n, b))
        {
            counts.insert(owner, &encode_counts(n, b)[..])?;
        }
    }
    Ok(())
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
        // No multi-tree sled transaction here: sled 0.34 writes (and syncs) its log buffer
        // twice for every transaction or batch, whatever group commit does afterwards, and
        // holds a global write lock meanwhile; that was most of the mediator's CPU per
        // message. Single-key operations in a crash-safe order instead (spec/mediator.md
        // §5): reserve the count (compare-and-swap, limits exact under concurrency), claim
        // the id in `msgs` (compare-and-swap: exactly one of two identical concurrent
        // forwards wins), then index it in `queue`. sled recovers a prefix of its log, so
        // a crash can only leave a count too high or a message without its queue entry;
        // `repair` fixes both when the database is opened.
        let inserted = if self.msgs.contains_key(&mkey)? {
            false
        } else {
            self.reserve_count(owner, size, limits)?;
            // The totals count the message before anyone can see it: a live recipient may
            // have it pushed and acknowledged (and `remove` subtract it) before this call
            // returns, and a subtraction ahead of its addition would saturate at zero and
            // leave the gauge one too high for good.
            self.total_messages.fetch_add(1, Ordering::Relaxed);
            self.total_bytes.fetch_add(size, Ordering::Relaxed);
            let give_back = || {
                self.untotal(1, size);
                self.add_counts(owner, -1, -i64::try_from(size).unwrap_or(i64::MAX))
            };
            let claimed = self.msgs_db_id().and_then(|seq| {
                let seq = seq.to_be_bytes();
                let mut value = Vec::with_capacity(8 + record.len());
                value.extend_from_slice(&seq);
                value.extend_from_slice(&record);
                let won = self
                    .msgs
                    .compare_and_swap(&mkey, None as Option<&[u8]>, Some(value))?
                    .is_ok();
                Ok((won, seq))
            });
            match claimed {
                Ok((true, seq)) => {
                    if let Err(e) = self.queue.insert(join(owner, &seq), id.as_bytes()) {
                        // Undo, so that the sender's retry is stored again rather than
                        // taken for a duplicate of a message no queue entry points to.
                        let _ = self.msgs.remove(&mkey);
                        let _ = give_back();
                        return Err(e.into());
                    }
                    true
                }
                Ok((false, _)) => {
                    // The same envelope won a race with us: give the count back.
                    give_back()?;
                    false
                }
                Err(e) => {
                    let _ = give_back();
                    return Err(e);
                }
            }
        };
        self.durable().await?;
        if inserted {
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

    async fn fetch_unsent(
        &self,
        owner: &str,
        except: &HashSet<String>,
        limit: usize,
    ) -> Result<Unsent, StoreError> {
        // The queue index holds only ids: skipping what was sent costs a key comparison,
        // not a read and copy of the message body.
        let mut messages = Vec::new();
        let mut still = HashSet::new();
        for item in self.queue.scan_prefix(prefix(owner)) {
            let (_, id) = item?;
            let id = std::str::from_utf8(&id)
                .map_err(|_| StoreError::Corrupt("message id not UTF-8"))?;
            if except.contains(id) {
                still.insert(id.to_owned());
                continue;
            }
            if messages.len() >= limit {
                return Ok(Unsent {
                    messages,
                    still_queued: None,
                });
            }
            let Some(raw) = self.msgs.get(join(owner, id.as_bytes()))? else {
                continue;
            };
            messages.push(decode_record(
                id.to_owned(),
                raw.get(8..).unwrap_or_default(),
            )?);
        }
        Ok(Unsent {
            messages,
            still_queued: Some(still),
        })
    }

    async fn still_queued(
        &self,
        owner: &str,
        ids: &[String],
    ) -> Result<HashSet<String>, StoreError> {
        let mut still = HashSet::new();
        for id in ids {
            if self.msgs.contains_key(join(owner, id.as_bytes()))? {
                still.insert(id.clone());
            }
        }
        Ok(still)
    }

    async fn remove(&self, owner: &str, ids: &[String]) -> Result<u64, StoreError> {
        // Single-key removals (see `enqueue` for why no transaction): the message first,
        // so that of two concurrent acknowledgments only one counts it; then its queue
        // entry and the count. A crash in between leaves a stale count or a dangling
        // queue entry, which `scan` skips and `repair` removes on the next open.
        let (mut removed, mut bytes) = (0u64, 0u64);
        for id in ids {
            let Some(raw) = self.msgs.remove(join(owner, id.as_bytes()))? else {
                continue;
            };
            if let Some(seq) = raw.get(..8) {
                self.queue.remove(join(owner, seq))?;
            }
            removed += 1;
            bytes += record_data_len(raw.get(8..).unwrap_or_default());
        }
        if removed > 0 {
            self.add_counts(
                owner,
                -i64::try_from(removed).unwrap_or(i64::MAX),
                -i64::try_from(bytes).unwrap_or(i64::MAX),
            )?;
        }
        self.untotal(removed, bytes);
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

impl SledStore {
    /// Readiness probe (`/readyz`, crate `health`): a write to the database and a flush to
    /// disk, so a full disk or a failed sled shows here before a sender meets it.
    ///
    /// # Errors
    /// The write or the flush failed.
    pub async fn probe(&self) -> Result<(), StoreError> {
        self.meta
            .insert(b"readiness-probe", &now_ms().to_be_bytes())?;
        self.db.flush_async().await?;
        Ok(())
    }

    /// DIDs holding a mediation grant, with the grant time (ms since the epoch); for
    /// `mpc-did-mediator admin list`.
    ///
    /// # Errors
    /// Backend failure.
    pub async fn grant_list(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let mut out = Vec::new();
        for item in self.grants.iter() {
            let (k, v) = item?;
            let did = String::from_utf8(k.to_vec()).map_err(|_| StoreError::Corrupt("grant"))?;
            let ms = <[u8; 8]>::try_from(v.as_ref()).map_or(0, u64::from_be_bytes);
            out.push((did, ms));
        }
        Ok(out)
    }

    /// Withdraws `did`'s grant (its keys are removed by the caller first); whether it had one.
    ///
    /// # Errors
    /// Backend failure.
    pub async fn revoke_grant(&self, did: &str) -> Result<bool, StoreError> {
        let had = self.grants.remove(did)?.is_some();
        self.durable().await?;
        Ok(had)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const LIMITS: QueueLimits = QueueLimits {
        max_messages: 1000,
        max_bytes: 1_000_000,
    };

    // spec/mediator.md §5: a crash can leave a message without its queue entry, a queue
    // entry without its message, or stale counts; opening the store repairs all three.
    #[tokio::test]
    async fn repair_restores_queue_and_counts_from_msgs() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        for body in [&b"one"[..], b"two", b"three"] {
            s.enqueue("did:ex:a", "did:ex:a", body, LIMITS)
                .await
                .unwrap();
        }
        // Simulate what a crash between single-key writes can leave behind.
        let first = s
            .queue
            .scan_prefix(prefix("did:ex:a"))
            .next()
            .unwrap()
            .unwrap();
        s.queue.remove(&first.0).unwrap();
        let mut dangling = prefix("did:ex:a");
        dangling.extend_from_slice(&u64::MAX.to_be_bytes());
        s.queue.insert(dangling, &b"0123456789abcdef"[..]).unwrap();
        s.counts
            .insert("did:ex:a", &encode_counts(9, 999)[..])
            .unwrap();
        s.counts
            .insert("did:ex:b", &encode_counts(1, 5)[..])
            .unwrap();

        repair(&s.msgs, &s.queue, &s.counts).unwrap();

        let got: Vec<Vec<u8>> = s
            .fetch("did:ex:a", None, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.data)
            .collect();
        assert_eq!(
            got,
            vec![b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]
        );
        let st = s.status("did:ex:a", None).await.unwrap();
        assert_eq!((st.message_count, st.total_bytes), (3, 11));
        assert_eq!(s.status("did:ex:b", None).await.unwrap().message_count, 0);
        assert_eq!(s.queue.len(), 3);
    }

    // Without a transaction, limits and de-duplication must still hold under concurrency.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_enqueues_respect_limits_and_dedup() {
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(SledStore::open(dir.path()).unwrap());
        let limits = QueueLimits {
            max_messages: 25,
            max_bytes: 1_000_000,
        };
        let mut tasks = Vec::new();
        for i in 0..100u32 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                // Every body twice: 50 distinct messages, 100 attempts.
                let body = format!("message {}", i / 2);
                s.enqueue("did:ex:a", "did:ex:a", body.as_bytes(), limits)
                    .await
            }));
        }
        let mut stored = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(e) if !e.duplicate => stored += 1,
                Ok(_) | Err(StoreError::QueueFull(_)) => {}
                Err(e) => panic!("unexpected {e}"),
            }
        }
        assert_eq!(stored, 25);
        let st = s.status("did:ex:a", None).await.unwrap();
        assert_eq!(st.message_count, 25);
        let all = s.fetch("did:ex:a", None, 100).await.unwrap();
        assert_eq!(all.len(), 25);
        assert_eq!(
            st.total_bytes,
            all.iter().map(|m| m.data.len() as u64).sum::<u64>()
        );
        let ids: Vec<String> = all.iter().map(|m| m.id.clone()).collect();
        // Two concurrent acknowledgments of the same ids remove (and count) each once.
        let (a, b) = tokio::join!(s.remove("did:ex:a", &ids), s.remove("did:ex:a", &ids));
        assert_eq!(a.unwrap() + b.unwrap(), 25);
        assert_eq!(s.status("did:ex:a", None).await.unwrap().message_count, 0);
        assert_eq!(s.totals().await.unwrap().messages, 0);
    }
}
