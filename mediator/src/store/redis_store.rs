//! The scale-out backend: queues in one Redis server shared by several mediator instances.
//!
//! Keys (all under a configurable prefix, default `mpcdid:`): `meta:K`, `grant:DID`,
//! `key:KEY` (→ owner), `keys:DID` (set), `q:DID` (sorted set of ids by arrival sequence),
//! `m:DID` (hash id → record), `b:DID` (bytes waiting), `seq`, `totals` (hash). Each queue
//! mutation is one Lua script, so it is atomic; `enqueue` also publishes the owner on the
//! `arrivals` channel, which every instance subscribes to for live delivery.
//!
//! Durability requirement (spec/mediator.md §5): Redis must run with `appendonly yes` and
//! `appendfsync always`, so that a reply to a write means the write is on disk.

use std::collections::HashSet;
use std::time::Duration;

use futures_util::StreamExt as _;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands as _, Script};
use tokio::sync::broadcast;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{
    decode_record, encode_record, message_id, now_ms, Arrival, Enqueued, KeyUpdate, QueueLimits,
    QueueStatus, Store, StoreError, StoreTotals, StoredMessage, Unsent, ARRIVAL_ALL,
};

const ENQUEUE: &str = r"
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return 0 end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return -1 end
local b = tonumber(redis.call('GET', KEYS[3]) or '0')
if b + tonumber(ARGV[5]) > tonumber(ARGV[4]) then return -2 end
local s = redis.call('INCR', KEYS[4])
redis.call('ZADD', KEYS[1], s, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('INCRBY', KEYS[3], ARGV[5])
redis.call('HINCRBY', KEYS[5], 'messages', 1)
redis.call('HINCRBY', KEYS[5], 'bytes', ARGV[5])
redis.call('PUBLISH', ARGV[6], ARGV[7])
return 1
";

const REMOVE: &str = r"
local n, bytes = 0, 0
for _, id in ipairs(ARGV) do
  local rec = redis.call('HGET', KEYS[2], id)
  if rec then
    redis.call('HDEL', KEYS[2], id)
    redis.call('ZREM', KEYS[1], id)
    local kl = string.byte(rec, 9) * 256 + string.byte(rec, 10)
    n = n + 1
    bytes = bytes + (#rec - 10 - kl)
  end
end
if n > 0 then
  redis.call('DECRBY', KEYS[3], bytes)
  redis.call('HINCRBY', KEYS[4], 'messages', -n)
  redis.call('HINCRBY', KEYS[4], 'bytes', -bytes)
end
return n
";

const ADD_KEY: &str = r"
local o = redis.call('GET', KEYS[1])
if o == ARGV[1] then return 0 elseif o then return 2 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[2])
return 1
";

const REMOVE_KEY: &str = r"
local o = redis.call('GET', KEYS[1])
if not o then return 0 elseif o ~= ARGV[1] then return 2 end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[2])
return 1
";

/// Redis-backed [`Store`].
pub struct RedisStore {
    /// Reconnects by itself after the server goes away (a restart, a failover): the
    /// command that meets the broken connection fails (`e.p.me.res.storage`, retry
    /// later) and the next ones use a new connection.
    con: ConnectionManager,
    prefix: String,
    enqueue: Script,
    remove: Script,
    add_key: Script,
    remove_key: Script,
    arrivals: broadcast::Sender<Arrival>,
    _stop: DropGuard,
}

impl RedisStore {
    /// Connects to `url` (`redis://host:port[/db]`) and starts the arrival subscriber.
    /// `prefix` namespaces every key (instances that share queues use the same prefix).
    ///
    /// # Errors
    /// The URL is invalid or the server is unreachable.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, StoreError> {
        let client = redis::Client::open(url)?;
        // Reconnection: exponential backoff from 100 ms, capped at 2 s per wait, and
        // tried again on every later command if one round of retries is not enough.
        let config = ConnectionManagerConfig::new()
            .set_factor(100)
            .set_exponent_base(2)
            .set_max_delay(2000)
            .set_number_of_retries(5)
            .set_connection_timeout(Duration::from_secs(2))
            .set_response_timeout(Duration::from_secs(10));
        let con = ConnectionManager::new_with_config(client.clone(), config).await?;
        let arrivals = broadcast::channel(4096).0;
        let stop = CancellationToken::new();
        let channel = format!("{prefix}arrivals");
        tokio::spawn(subscriber(client, channel, arrivals.clone(), stop.clone()));
        Ok(Self {
            con,
            prefix: prefix.to_owned(),
            enqueue: Script::new(ENQUEUE),
            remove: Script::new(REMOVE),
            add_key: Script::new(ADD_KEY),
            remove_key: Script::new(REMOVE_KEY),
            arrivals,
            _stop: stop.drop_guard(),
        })
    }

    fn k(&self, kind: &str, name: &str) -> String {
        format!("{}{kind}:{name}", self.prefix)
    }

    async fn records(
        &self,
        owner: &str,
        ids: Vec<String>,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut con = self.con.clone();
        let raws: Vec<Option<Vec<u8>>> = redis::cmd("HMGET")
            .arg(self.k("m", owner))
            .arg(&ids)
            .query_async(&mut con)
            .await?;
        let mut out = Vec::with_capacity(ids.len());
        for (id, raw) in ids.into_iter().zip(raws) {
            if let Some(raw) = raw {
                out.push(decode_record(id, &raw)?);
            }
        }
        Ok(out)
    }
}

/// Forwards the shared `arrivals` channel into this instance's broadcast; after every
/// (re)connect it announces [`ARRIVAL_ALL`] because notices may have been missed.
async fn subscriber(
    client: redis::Client,
    channel: String,
    out: broadcast::Sender<Arrival>,
    stop: CancellationToken,
) {
    loop {
        let session = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            let _ = out.send(ARRIVAL_ALL.to_owned());
            let mut stream = pubsub.on_message();
            while let Some(msg) = stream.next().await {
                if let Ok(owner) = msg.get_payload::<String>() {
                    let _ = out.send(owner);
                }
            }
            Ok::<(), redis::RedisError>(())
        };
        tokio::select! {
            () = stop.cancelled() => return,
            res = session => {
                if let Err(e) = res {
                    tracing::warn!(error = %e, "redis arrivals subscription lost; retrying");
                }
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

fn key_update(code: i64) -> KeyUpdate {
    match code {
        1 => KeyUpdate::Success,
        0 => KeyUpdate::NoChange,
        _ => KeyUpdate::Conflict,
    }
}

impl Store for RedisStore {
    fn backend(&self) -> &'static str {
        "redis"
    }

    async fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let mut con = self.con.clone();
        Ok(con.get(self.k("meta", key)).await?)
    }

    async fn meta_init(&self, key: &str, value: &[u8]) -> Result<Vec<u8>, StoreError> {
        let mut con = self.con.clone();
        let k = self.k("meta", key);
        let _: bool = con.set_nx(&k, value).await?;
        let v: Option<Vec<u8>> = con.get(&k).await?;
        v.ok_or(StoreError::Corrupt("meta key vanished"))
    }

    async fn grant(&self, did: &str) -> Result<(), StoreError> {
        let mut con = self.con.clone();
        let _: () = con.set(self.k("grant", did), now_ms()).await?;
        Ok(())
    }

    async fn has_grant(&self, did: &str) -> Result<bool, StoreError> {
        let mut con = self.con.clone();
        Ok(con.exists(self.k("grant", did)).await?)
    }

    async fn add_key(&self, did: &str, key: &str) -> Result<KeyUpdate, StoreError> {
        let mut con = self.con.clone();
        let code: i64 = self
            .add_key
            .key(self.k("key", key))
            .key(self.k("keys", did))
            .arg(did)
            .arg(key)
            .invoke_async(&mut con)
            .await?;
        Ok(key_update(code))
    }

    async fn remove_key(&self, did: &str, key: &str) -> Result<KeyUpdate, StoreError> {
        let mut con = self.con.clone();
        let code: i64 = self
            .remove_key
            .key(self.k("key", key))
            .key(self.k("keys", did))
            .arg(did)
            .arg(key)
            .invoke_async(&mut con)
            .await?;
        Ok(key_update(code))
    }

    async fn keys(&self, did: &str) -> Result<Vec<String>, StoreError> {
        let mut con = self.con.clone();
        let mut keys: Vec<String> = con.smembers(self.k("keys", did)).await?;
        keys.sort();
        Ok(keys)
    }

    async fn key_owner(&self, key: &str) -> Result<Option<String>, StoreError> {
        let mut con = self.con.clone();
        Ok(con.get(self.k("key", key)).await?)
    }

    async fn enqueue(
        &self,
        owner: &str,
        recipient_key: &str,
        data: &[u8],
        limits: QueueLimits,
    ) -> Result<Enqueued, StoreError> {
        let id = message_id(data);
        let record = encode_record(now_ms(), recipient_key, data);
        let mut con = self.con.clone();
        let code: i64 = self
            .enqueue
            .key(self.k("q", owner))
            .key(self.k("m", owner))
            .key(self.k("b", owner))
            .key(format!("{}seq", self.prefix))
            .key(format!("{}totals", self.prefix))
            .arg(&id)
            .arg(record)
            .arg(limits.max_messages)
            .arg(limits.max_bytes)
            .arg(data.len() as u64)
            .arg(format!("{}arrivals", self.prefix))
            .arg(owner)
            .invoke_async(&mut con)
            .await?;
        match code {
            -1 => Err(StoreError::QueueFull("max_messages")),
            -2 => Err(StoreError::QueueFull("max_bytes")),
            c => Ok(Enqueued {
                id,
                duplicate: c == 0,
            }),
        }
    }

    async fn status(
        &self,
        owner: &str,
        recipient_key: Option<&str>,
    ) -> Result<QueueStatus, StoreError> {
        if recipient_key.is_some() {
            let all = self.fetch(owner, recipient_key, usize::MAX).await?;
            return Ok(QueueStatus {
                message_count: all.len() as u64,
                total_bytes: all.iter().map(|m| m.data.len() as u64).sum(),
                oldest_ms: all.first().map(|m| m.received_ms),
                newest_ms: all.last().map(|m| m.received_ms),
            });
        }
        let mut con = self.con.clone();
        let q = self.k("q", owner);
        let (count, bytes, first, last): (u64, Option<u64>, Vec<String>, Vec<String>) =
            redis::pipe()
                .zcard(&q)
                .get(self.k("b", owner))
                .zrange(&q, 0, 0)
                .zrange(&q, -1, -1)
                .query_async(&mut con)
                .await?;
        let mut ends = first;
        ends.extend(last);
        let recs = self.records(owner, ends).await?;
        Ok(QueueStatus {
            message_count: count,
            total_bytes: bytes.unwrap_or(0),
            oldest_ms: recs.first().map(|m| m.received_ms),
            newest_ms: recs.last().map(|m| m.received_ms),
        })
    }

    async fn fetch(
        &self,
        owner: &str,
        recipient_key: Option<&str>,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut con = self.con.clone();
        let stop = if recipient_key.is_some() {
            -1
        } else {
            isize::try_from(limit)
                .unwrap_or(isize::MAX)
                .saturating_sub(1)
        };
        let ids: Vec<String> = con.zrange(self.k("q", owner), 0, stop).await?;
        let mut recs = self.records(owner, ids).await?;
        if let Some(k) = recipient_key {
            recs.retain(|m| m.recipient_key == k);
        }
        recs.truncate(limit);
        Ok(recs)
    }

    async fn fetch_unsent(
        &self,
        owner: &str,
        except: &HashSet<String>,
        limit: usize,
    ) -> Result<Unsent, StoreError> {
        // The ids first (one ZRANGE), then only the bodies that will be sent (one HMGET).
        // The oldest `except + limit` ids hold at least `limit` unsent ones if the queue
        // has them; fewer ids than that means the whole queue was seen.
        let want = except.len().saturating_add(limit);
        if want == 0 {
            return Ok(Unsent::default());
        }
        let stop = isize::try_from(want)
            .unwrap_or(isize::MAX)
            .saturating_sub(1);
        let mut con = self.con.clone();
        let ids: Vec<String> = con.zrange(self.k("q", owner), 0, stop).await?;
        let complete = ids.len() < want;
        let mut still = HashSet::new();
        let mut fresh = Vec::new();
        for id in ids {
            if except.contains(&id) {
                still.insert(id);
            } else if fresh.len() < limit {
                fresh.push(id);
            }
        }
        Ok(Unsent {
            messages: self.records(owner, fresh).await?,
            still_queued: complete.then_some(still),
        })
    }

    async fn remove(&self, owner: &str, ids: &[String]) -> Result<u64, StoreError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let mut con = self.con.clone();
        let n: u64 = self
            .remove
            .key(self.k("q", owner))
            .key(self.k("m", owner))
            .key(self.k("b", owner))
            .key(format!("{}totals", self.prefix))
            .arg(ids)
            .invoke_async(&mut con)
            .await?;
        Ok(n)
    }

    async fn still_queued(
        &self,
        owner: &str,
        ids: &[String],
    ) -> Result<HashSet<String>, StoreError> {
        if ids.is_empty() {
            return Ok(HashSet::new());
        }
        let mut con = self.con.clone();
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("HEXISTS").arg(self.k("m", owner)).arg(id);
        }
        let flags: Vec<bool> = pipe.query_async(&mut con).await?;
        Ok(ids
            .iter()
            .zip(flags)
            .filter(|(_, queued)| *queued)
            .map(|(id, _)| id.clone())
            .collect())
    }

    async fn totals(&self) -> Result<StoreTotals, StoreError> {
        let mut con = self.con.clone();
        let (m, b): (Option<i64>, Option<i64>) = redis::cmd("HMGET")
            .arg(format!("{}totals", self.prefix))
            .arg("messages")
            .arg("bytes")
            .query_async(&mut con)
            .await?;
        Ok(StoreTotals {
            messages: u64::try_from(m.unwrap_or(0)).unwrap_or(0),
            bytes: u64::try_from(b.unwrap_or(0)).unwrap_or(0),
        })
    }

    fn arrivals(&self) -> broadcast::Receiver<Arrival> {
        self.arrivals.subscribe()
    }

    async fn flush(&self) -> Result<(), StoreError> {
        // Every write is already fsynced by the server (appendfsync always).
        Ok(())
    }
}

impl RedisStore {
    /// Readiness probe (`/readyz`, crate `health`): one `SET` of the probe key.
    ///
    /// # Errors
    /// Redis unreachable or refusing writes (e.g. `MISCONF`, out of memory).
    pub async fn probe(&self) -> Result<(), StoreError> {
        let mut con = self.con.clone();
        redis::cmd("SET")
            .arg(format!("{}readiness-probe", self.prefix))
            .arg(super::now_ms())
            .query_async::<()>(&mut con)
            .await?;
        Ok(())
    }

    /// DIDs holding a mediation grant under this prefix, with the grant time; for
    /// `mpc-did-mediator admin list` (a `SCAN`, fine for an operator's command).
    ///
    /// # Errors
    /// Redis failure.
    pub async fn grant_list(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let mut con = self.con.clone();
        let pattern = format!("{}grant:*", self.prefix);
        let head = format!("{}grant:", self.prefix);
        let mut cursor: u64 = 0;
        let mut keys = Vec::new();
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut con)
                .await?;
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            let ms: Option<u64> = redis::cmd("GET").arg(&k).query_async(&mut con).await?;
            if let Some(did) = k.strip_prefix(&head) {
                out.push((did.to_owned(), ms.unwrap_or(0)));
            }
        }
        Ok(out)
    }

    /// Withdraws `did`'s grant; whether it had one.
    ///
    /// # Errors
    /// Redis failure.
    pub async fn revoke_grant(&self, did: &str) -> Result<bool, StoreError> {
        let mut con = self.con.clone();
        let n: u64 = redis::cmd("DEL")
            .arg(self.k("grant", did))
            .query_async(&mut con)
            .await?;
        Ok(n > 0)
    }
}
