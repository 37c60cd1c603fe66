//! Our mediator against Affinidi's (`affinidi-messaging-mediator` 0.49.0 on Redis, driven
//! by `affinidi-messaging-sdk` 0.44.0): forward + live pickup at 1, 10 and 100 clients, and
//! RSS per idle live WebSocket.
//!
//! Both mediators run in their own child process, started once and measured alternately:
//! ours from this executable (`--child-ours`, the `mpc-did-mediator` library's
//! `Mediator::builder`, sled store, system allocator — as its binary), Affinidi's from
//! `affinidi-mediator` (its `MediatorBuilder`, Redis store in a Redis-compatible server
//! this program starts — a `redis-server` 7.1–8.x or Debian 12's backported
//! `valkey-server`, as Affinidi's mediator refuses Redis 7.0 — jemalloc, as its binary). Limits that would cap a benchmark from one loopback
//! address are raised on both (rate limits per IP/connection, queue sizes).
//!
//! Equal work per level: `clients` senders, each on its own connection sending one message
//! at a time (HTTP POST, waiting for the 202), `min(clients, 100)` recipients holding a live
//! WebSocket; every message is an authcrypt DIDComm message from its sender to its
//! recipient wrapped in an anoncrypt Routing 2.0 forward to the mediator, packed before the
//! clock starts (ours by `mpc-did-didcomm`, Affinidi's by its SDK). Each sender sends one
//! warm-up message before the clock (our HTTP keep-alive connection; the SDK's JWT login).
//! Recipients take each push without decrypting it and acknowledge: ours with batched
//! `messages-received` (200 ids or 50 ms idle, raw live mode, spec/mediator.md §3.1), the
//! SDK with its own background deletion (`live_stream_next_packed(auto_delete = true)`).
//! Latency: from just before the POST to the push's arrival.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use affinidi_messaging_didcomm::Message as AffMessage;
use affinidi_messaging_sdk::config::ATMConfig;
use affinidi_messaging_sdk::profiles::ATMProfile;
use affinidi_messaging_sdk::ATM;
use affinidi_secrets_resolver::SecretsResolver as _;
use affinidi_tdk::common::config::TDKConfig;
use affinidi_tdk::common::TDKSharedState;
use affinidi_tdk::did_resolver::config::DIDCacheConfigBuilder;
use affinidi_tdk::dids::{KeyType, PeerKeyRole, DID};
use anyhow::{anyhow, Context as _};
use mpc_did_agent::client::{MediatorClient, MediatorInfo};
use mpc_did_didcomm::message::message;
use mpc_did_didcomm::{pack_encrypted, wrap_in_forward, PackOptions};
use mpc_did_mediator::store::message_id;
use mpc_did_mediator::{Config, Limits, Mediator};
use mpc_did_resolver::UniversalResolver;
use mpc_did_testkit::mediator::ephemeral_identity;
use sha2::{Digest as _, Sha256};

use crate::stats::{cpu_secs, fmt, pct, rss_kib, summary};

/// Our mediator in this (child) process until stdin closes; prints its URL.
pub async fn child_ours(dir: &str) -> anyhow::Result<()> {
    let config = Config {
        listen: "127.0.0.1:0".parse()?,
        data: dir.into(),
        limits: Limits {
            rate_per_connection: 1_000_000,
            rate_burst: 1_000_000,
            max_connections: 30_000,
            max_queue_messages: 10_000_000,
            max_queue_bytes: 10_000_000_000,
            idle_timeout_secs: 600,
            max_connections_per_ip: 0,
            max_queued_per_source: 0,
            rate_per_ip: 0,
            rate_per_did: 0,
            ..Limits::default()
        },
        ..Config::default()
    };
    let h = Mediator::builder(config).start().await?;
    println!("{}", h.public_url);
    std::io::stdout().flush()?;
    tokio::task::spawn_blocking(|| {
        let mut s = String::new();
        while std::io::stdin()
            .read_line(&mut s)
            .map(|n| n > 0)
            .unwrap_or(false)
        {}
    })
    .await?;
    h.shutdown().await;
    Ok(())
}

/// A child process killed on drop (its stdin closes first, so it can shut down cleanly).
struct Proc {
    child: Child,
    name: &'static str,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("{}: did not stop within 5 s; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn first_line(child: &mut Child, name: &str) -> anyhow::Result<String> {
    let out = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("{name}: no stdout"))?;
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line)?;
    if line.trim().is_empty() {
        return Err(anyhow!(
            "{name} exited before it was ready (see its log above)"
        ));
    }
    Ok(line.trim().to_owned())
}

/// How to get a Redis-compatible server Affinidi's mediator accepts on Debian 12.
const REDIS_HINT: &str = "Affinidi's mediator 0.49.0 needs Redis >= 7.1, < 9.0 and Debian 12's \
redis-server is 7.0.15; install valkey-server (reports redis_version 7.2.4) from Debian's \
bookworm-backports suite: add a deb822 entry like the bookworm one under \
/etc/apt/sources.list.d/ with `Suites: bookworm-backports` (e.g. backports.sources), then \
`apt-get update && apt-get install -t bookworm-backports valkey-server`; or set \
PEERS_REDIS_SERVER to a redis-server 7.1-8.x";

/// `NAME --version` as (whole line, major, minor), if `name` runs.
fn server_version(name: &str) -> Option<(String, u32, u32)> {
    let out = Command::new(name).arg("--version").output().ok()?;
    let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let v = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("v="))?
        .to_owned();
    let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
    let (major, minor) = (parts.next()??, parts.next()??);
    Some((line, major, minor))
}

/// The Redis-compatible server for Affinidi's mediator: `PEERS_REDIS_SERVER` if set, else
/// a `redis-server` 7.1–8.x on `PATH`, else `valkey-server` (every Valkey reports a
/// `redis_version` of at least 7.2.4), else an error saying what to install.
fn redis_server() -> anyhow::Result<String> {
    if let Ok(p) = std::env::var("PEERS_REDIS_SERVER") {
        return match server_version(&p) {
            Some(_) => Ok(p),
            None => Err(anyhow!(
                "PEERS_REDIS_SERVER={p} does not run (`{p} --version` failed)"
            )),
        };
    }
    let redis = server_version("redis-server");
    if let Some((_, major, minor)) = redis {
        if (7, 1) <= (major, minor) && major < 9 {
            return Ok("redis-server".into());
        }
    }
    if server_version("valkey-server").is_some() {
        return Ok("valkey-server".into());
    }
    Err(match redis {
        Some((line, ..)) => anyhow!("no usable Redis: found {line}. {REDIS_HINT}"),
        None => anyhow!("no Redis-compatible server on PATH. {REDIS_HINT}"),
    })
}

/// `redis_version` from a running server's `INFO server` (RESP over loopback TCP).
fn redis_info_version(port: u16) -> anyhow::Result<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n")?;
    let mut r = BufReader::new(s);
    let mut head = String::new();
    r.read_line(&mut head)?;
    let len: usize = head
        .trim()
        .strip_prefix('$')
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| anyhow!("INFO server: unexpected reply {head:?}"))?;
    let mut body = vec![0u8; len];
    std::io::Read::read_exact(&mut r, &mut body)?;
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| {
            l.strip_prefix("redis_version:")
                .map(|v| v.trim().to_owned())
        })
        .ok_or_else(|| anyhow!("INFO server: no redis_version"))
}

/// The Redis-compatible server on a free loopback port with a scratch directory, and a
/// label naming it and the `redis_version` it reports.
fn start_redis(dir: &std::path::Path) -> anyhow::Result<(Proc, String, String)> {
    let bin = redis_server()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = Command::new(&bin)
        .arg("--port")
        .arg(port.to_string())
        .arg("--bind")
        .arg("127.0.0.1")
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("{bin}: {REDIS_HINT}"))?;
    let p = Proc {
        child,
        name: "redis-server",
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err(anyhow!("{bin} did not listen within 10 s"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let version = server_version(&bin)
        .map(|(line, ..)| line)
        .unwrap_or_default();
    let label = format!(
        "`{bin}` ({}; redis_version {})",
        version
            .split_whitespace()
            .find(|w| w.starts_with("v="))
            .unwrap_or("v=?"),
        redis_info_version(port)?
    );
    Ok((p, format!("redis://127.0.0.1:{port}/"), label))
}

/// The Lua functions file Affinidi's mediator loads into Redis (`conf/atm-functions.lua` of
/// the crate, which cargo has unpacked into its registry to build it).
fn affinidi_lua() -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("AFFINIDI_LUA") {
        return Ok(p.into());
    }
    let home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|_| std::env::var("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    let src = home.join("registry").join("src");
    for index in std::fs::read_dir(&src).with_context(|| format!("{}", src.display()))? {
        let p = index?
            .path()
            .join("affinidi-messaging-mediator-0.49.0/conf/atm-functions.lua");
        if p.exists() {
            return Ok(p);
        }
    }
    Err(anyhow!(
        "atm-functions.lua of affinidi-messaging-mediator 0.49.0 not found under {}; set AFFINIDI_LUA",
        src.display()
    ))
}

/// One level's figures.
#[derive(Clone, Copy)]
struct Level {
    per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu_us: f64,
}

/// Latencies (ms) of the timed messages, from the two maps.
fn latencies(
    sent: &HashMap<String, Instant>,
    received: &HashMap<String, Instant>,
) -> anyhow::Result<Vec<f64>> {
    let mut lat = Vec::with_capacity(sent.len());
    for (id, s) in sent {
        let r = received
            .get(id)
            .ok_or_else(|| anyhow!("a message was never delivered"))?;
        lat.push(r.saturating_duration_since(*s).as_secs_f64() * 1000.0);
    }
    lat.sort_by(f64::total_cmp);
    Ok(lat)
}

// ───────────────────────────── ours ─────────────────────────────

struct Ours {
    _proc: Proc,
    pid: u32,
    info: MediatorInfo,
    url: String,
}

async fn ours_start(dir: &std::path::Path) -> anyhow::Result<Ours> {
    let mut child = Command::new(std::env::current_exe()?)
        .arg("--child-ours")
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let url = first_line(&mut child, "our mediator")?;
    let pid = child.id();
    let proc = Proc {
        child,
        name: "our mediator",
    };
    let info = MediatorInfo::discover(&url).await?;
    Ok(Ours {
        _proc: proc,
        pid,
        info,
        url,
    })
}

struct Prepared {
    sender: usize,
    body: String,
    key: String,
}

async fn ours_pack(
    info: &MediatorInfo,
    resolver: &UniversalResolver,
    senders: &[(String, mpc_did_didcomm::SecretStore)],
    to: &str,
    s: usize,
    i: usize,
) -> anyhow::Result<Prepared> {
    let (from, secrets) = &senders[s];
    let msg = message(
        "https://example.org/bench/1.0/m",
        serde_json::json!({ "i": i }),
    )
    .from(from.clone())
    .to(to.to_owned());
    let opts = PackOptions {
        forward: false,
        ..PackOptions::default()
    };
    let inner = pack_encrypted(&msg, to, Some(from), None, resolver, secrets, &opts)
        .await?
        .message;
    let canonical = serde_json::from_str::<serde_json::Value>(&inner)?.to_string();
    let body = wrap_in_forward(
        &inner,
        to,
        std::slice::from_ref(&info.routing_key),
        resolver,
        opts.anon_enc,
    )
    .await?;
    Ok(Prepared {
        sender: s,
        body,
        key: message_id(canonical.as_bytes()),
    })
}

async fn ours_level(o: &Ours, clients: usize, messages: usize) -> anyhow::Result<Level> {
    let info = &o.info;
    let nr = clients.min(100);
    let resolver = UniversalResolver::new()?;
    resolver.insert(info.document()?);
    let mut recipients = Vec::new();
    for _ in 0..nr {
        let (did, secrets) = ephemeral_identity();
        let c = MediatorClient::new(info.clone(), &did, secrets, resolver.clone())?;
        c.register().await?;
        recipients.push(c);
    }
    let senders: Vec<_> = (0..clients).map(|_| ephemeral_identity()).collect();
    let rdids: Vec<String> = recipients.iter().map(|r| r.did.clone()).collect();
    let mut warm = Vec::new();
    for s in 0..clients {
        warm.push(ours_pack(info, &resolver, &senders, &rdids[s % nr], s, usize::MAX - s).await?);
    }
    let mut prepared = Vec::new();
    for i in 0..messages {
        let s = i % clients;
        prepared.push(ours_pack(info, &resolver, &senders, &rdids[s % nr], s, i).await?);
    }
    let warm_keys: Arc<HashSet<String>> = Arc::new(warm.iter().map(|p| p.key.clone()).collect());
    let timed_keys: Arc<HashSet<String>> =
        Arc::new(prepared.iter().map(|p| p.key.clone()).collect());

    let received: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let warm_sem = Arc::new(tokio::sync::Semaphore::new(0));
    let remaining = Arc::new(tokio::sync::Semaphore::new(0));
    let mut lives = Vec::new();
    for r in &recipients {
        let mut live = r.live_raw(Duration::from_secs(30)).await?;
        let (received, remaining, warm_sem) =
            (received.clone(), remaining.clone(), warm_sem.clone());
        let (warm_keys, timed_keys) = (warm_keys.clone(), timed_keys.clone());
        lives.push(tokio::spawn(async move {
            let mut unacked: Vec<String> = Vec::new();
            loop {
                let wait = if unacked.is_empty() {
                    Duration::from_secs(60)
                } else {
                    Duration::from_millis(50)
                };
                let batch = match live.next_batch(wait).await {
                    Ok(b) => b,
                    Err(mpc_did_agent::client::ClientError::Timeout) if !unacked.is_empty() => {
                        if live.ack(&std::mem::take(&mut unacked)).await.is_err() {
                            break;
                        }
                        continue;
                    }
                    Err(_) => break,
                };
                let now = Instant::now();
                let (mut fresh, mut fresh_warm) = (0, 0);
                {
                    let mut rec = received.lock().unwrap_or_else(|p| p.into_inner());
                    for d in &batch {
                        if rec.insert(d.id.clone(), now).is_none() {
                            if timed_keys.contains(&d.id) {
                                fresh += 1;
                            } else if warm_keys.contains(&d.id) {
                                fresh_warm += 1;
                            }
                        }
                    }
                }
                unacked.extend(batch.into_iter().map(|d| d.id));
                if unacked.len() >= 200 && live.ack(&std::mem::take(&mut unacked)).await.is_err() {
                    break;
                }
                remaining.add_permits(fresh);
                warm_sem.add_permits(fresh_warm);
            }
        }));
    }
    // One HTTP/1.1 keep-alive connection per sender, warmed by one message.
    let mut http = Vec::new();
    for _ in 0..clients {
        http.push(
            reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()?,
        );
    }
    for p in warm {
        let r = http[p.sender]
            .post(&info.http)
            .header("content-type", "application/didcomm-encrypted+json")
            .body(p.body)
            .send()
            .await?;
        if r.status().as_u16() != 202 {
            return Err(anyhow!("our mediator answered {} to a forward", r.status()));
        }
    }
    tokio::time::timeout(
        Duration::from_secs(60),
        warm_sem.acquire_many(u32::try_from(clients)?),
    )
    .await
    .context("our mediator: warm-up messages not delivered within 60 s")??
    .forget();

    let mut by_sender: Vec<Vec<Prepared>> = (0..clients).map(|_| Vec::new()).collect();
    for p in prepared {
        by_sender[p.sender].push(p);
    }
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let start = Instant::now();
    let cpu0 = cpu_secs(o.pid);
    let mut tasks = Vec::new();
    for (batch, http) in by_sender.into_iter().zip(http) {
        let sent = sent.clone();
        let endpoint = info.http.clone();
        tasks.push(tokio::spawn(async move {
            for p in batch {
                sent.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(p.key, Instant::now());
                let r = http
                    .post(&endpoint)
                    .header("content-type", "application/didcomm-encrypted+json")
                    .body(p.body)
                    .send()
                    .await?;
                if r.status().as_u16() != 202 {
                    return Err(anyhow!("our mediator answered {} to a forward", r.status()));
                }
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    tokio::time::timeout(
        Duration::from_secs(300),
        remaining.acquire_many(u32::try_from(messages)?),
    )
    .await
    .context("our mediator: not every message delivered within 300 s")??
    .forget();
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = cpu_secs(o.pid) - cpu0;
    for l in lives {
        l.abort();
    }
    let lat = {
        let sent = sent.lock().unwrap_or_else(|p| p.into_inner());
        let rec = received.lock().unwrap_or_else(|p| p.into_inner());
        latencies(&sent, &rec)?
    };
    Ok(Level {
        per_sec: messages as f64 / elapsed,
        p50_ms: pct(&lat, 0.5),
        p99_ms: pct(&lat, 0.99),
        cpu_us: cpu * 1e6 / messages as f64,
    })
}

/// RSS added per idle live WebSocket (KiB): `n` registered clients in raw live mode.
async fn ours_idle(o: &Ours, n: usize) -> anyhow::Result<f64> {
    let resolver = UniversalResolver::new()?;
    resolver.insert(o.info.document()?);
    let mut clients = Vec::new();
    for _ in 0..n {
        let (did, secrets) = ephemeral_identity();
        let c = MediatorClient::new(o.info.clone(), &did, secrets, resolver.clone())?;
        c.register().await?;
        clients.push(c);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(o.pid);
    let mut lives = Vec::new();
    for c in &clients {
        lives.push(c.live_raw(Duration::from_secs(30)).await?);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(o.pid);
    let health = reqwest::get(format!("{}/healthz", o.url)).await?;
    if !health.status().is_success() {
        return Err(anyhow!("our mediator unhealthy with {n} live sockets"));
    }
    drop(lives);
    Ok(after.saturating_sub(before) as f64 / n as f64)
}

// ───────────────────────────── Affinidi ─────────────────────────────

struct Aff {
    _redis: Proc,
    redis_pid: u32,
    /// Which Redis-compatible server, and the version it reports.
    redis_label: String,
    _proc: Proc,
    pid: u32,
    did: String,
    tdk: Arc<TDKSharedState>,
    atm: ATM,
    users: usize,
}

async fn aff_start(dir: &std::path::Path) -> anyhow::Result<Aff> {
    let lua = affinidi_lua()?;
    let (redis, redis_url, redis_label) = start_redis(dir)?;
    eprintln!("Redis for Affinidi's mediator: {redis_label}");
    let redis_pid = redis.pid();
    let exe = std::env::current_exe()?
        .parent()
        .ok_or_else(|| anyhow!("no executable directory"))?
        .join("affinidi-mediator");
    let mut child = Command::new(&exe)
        .arg(&redis_url)
        .arg(&lua)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("{}", exe.display()))?;
    let line = first_line(&mut child, "Affinidi's mediator")?;
    let pid = child.id();
    let proc = Proc {
        child,
        name: "Affinidi's mediator",
    };
    let did = line
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| anyhow!("Affinidi's mediator printed no DID"))?
        .to_owned();
    let tdk = Arc::new(
        TDKSharedState::new(
            // Headless, with a DID cache that holds every DID of the run (its default of 100
            // entries is smaller than the 100-client level's 200 users).
            TDKConfig::builder()
                .with_load_environment(false)
                .with_use_atm(false)
                .with_did_resolver_config(
                    DIDCacheConfigBuilder::default()
                        .with_cache_capacity(10_000)
                        .build(),
                )
                .build()
                .map_err(|e| anyhow!("TDK config: {e}"))?,
        )
        .await
        .map_err(|e| anyhow!("TDK: {e}"))?,
    );
    let atm = ATM::new(
        ATMConfig::builder()
            .build()
            .map_err(|e| anyhow!("ATM config: {e}"))?,
        tdk.clone(),
    )
    .await
    .map_err(|e| anyhow!("ATM: {e}"))?;
    Ok(Aff {
        _redis: redis,
        redis_pid,
        redis_label,
        _proc: proc,
        pid,
        did,
        tdk,
        atm,
        users: 0,
    })
}

impl Aff {
    /// A fresh did:peer user whose DIDComm service is the mediator, as an SDK profile.
    async fn user(&mut self) -> anyhow::Result<(String, Arc<ATMProfile>)> {
        let (did, secrets) = DID::generate_did_peer(
            vec![
                (PeerKeyRole::Verification, KeyType::Ed25519),
                (PeerKeyRole::Encryption, KeyType::X25519),
            ],
            Some(self.did.clone()),
        )
        .map_err(|e| anyhow!("did:peer: {e}"))?;
        self.tdk.secrets_resolver().insert_vec(&secrets).await;
        self.users += 1;
        let p = ATMProfile::new(
            &self.atm,
            Some(format!("u{}", self.users)),
            did.clone(),
            Some(self.did.clone()),
        )
        .await
        .map_err(|e| anyhow!("profile: {e}"))?;
        let p = self
            .atm
            .profile_add(&p, false)
            .await
            .map_err(|e| anyhow!("profile: {e}"))?;
        Ok((did, p))
    }

    /// (forward id, forward) of an authcrypt message `from` → `to` wrapped for the mediator.
    async fn pack(
        &self,
        from: &(String, Arc<ATMProfile>),
        to: &str,
        i: usize,
    ) -> anyhow::Result<(String, String, String)> {
        let msg = AffMessage::build(
            format!("peers-{}-{i}", std::process::id()),
            "https://example.org/bench/1.0/m",
            serde_json::json!({ "i": i }),
        )
        .from(from.0.clone())
        .to(to.to_owned())
        .finalize();
        let (inner, _) = self
            .atm
            .pack_encrypted(&msg, to, Some(&from.0), None)
            .await
            .map_err(|e| anyhow!("pack: {e}"))?;
        let key = format!("{:x}", Sha256::digest(inner.as_bytes()));
        let (id, fwd) = self
            .atm
            .routing()
            .forward_message(&from.1, true, &inner, &self.did, to, None, None)
            .await
            .map_err(|e| anyhow!("forward: {e}"))?;
        Ok((id, fwd, key))
    }
}

/// Sha-256 (hex) of a delivered packed message: Affinidi's message id, and our key.
fn aff_key(packed: &str) -> String {
    format!("{:x}", Sha256::digest(packed.as_bytes()))
}

async fn aff_level(a: &mut Aff, clients: usize, messages: usize) -> anyhow::Result<Level> {
    let nr = clients.min(100);
    let mut recipients = Vec::new();
    for _ in 0..nr {
        let u = a.user().await?;
        a.atm
            .profile_start_live_streaming(&u.1, false, true)
            .await
            .map_err(|e| anyhow!("live streaming: {e}"))?;
        recipients.push(u);
    }
    let mut senders = Vec::new();
    for _ in 0..clients {
        senders.push(a.user().await?);
    }
    let mut warm = Vec::new();
    for (s, sender) in senders.iter().enumerate() {
        warm.push((
            s,
            a.pack(sender, &recipients[s % nr].0, usize::MAX - s)
                .await?,
        ));
    }
    let mut prepared = Vec::new();
    for i in 0..messages {
        let s = i % clients;
        prepared.push((s, a.pack(&senders[s], &recipients[s % nr].0, i).await?));
    }
    let warm_keys: Arc<HashSet<String>> = Arc::new(warm.iter().map(|(_, p)| p.2.clone()).collect());
    let timed_keys: Arc<HashSet<String>> =
        Arc::new(prepared.iter().map(|(_, p)| p.2.clone()).collect());
    let received: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let warm_sem = Arc::new(tokio::sync::Semaphore::new(0));
    let remaining = Arc::new(tokio::sync::Semaphore::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut lives = Vec::new();
    for (_, profile) in &recipients {
        let (atm, profile) = (a.atm.clone(), profile.clone());
        let (received, remaining, warm_sem, stop) = (
            received.clone(),
            remaining.clone(),
            warm_sem.clone(),
            stop.clone(),
        );
        let (warm_keys, timed_keys) = (warm_keys.clone(), timed_keys.clone());
        lives.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let next = atm
                    .message_pickup()
                    .live_stream_next_packed(&profile, Some(Duration::from_millis(500)), true)
                    .await;
                let packed = match next {
                    Ok(Some(p)) => p,
                    Ok(None) => continue,
                    Err(e) => {
                        eprintln!("Affinidi SDK live stream: {e}");
                        break;
                    }
                };
                let now = Instant::now();
                let key = aff_key(&packed);
                let fresh = received
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key.clone(), now)
                    .is_none();
                if fresh && timed_keys.contains(&key) {
                    remaining.add_permits(1);
                } else if fresh && warm_keys.contains(&key) {
                    warm_sem.add_permits(1);
                }
            }
        }));
    }
    for (s, (id, fwd, _)) in &warm {
        a.atm
            .send_message(&senders[*s].1, fwd, id, false, false)
            .await
            .map_err(|e| anyhow!("Affinidi SDK send (warm-up): {e}"))?;
    }
    let warm_ok = tokio::time::timeout(
        Duration::from_secs(60),
        warm_sem.acquire_many(u32::try_from(clients)?),
    )
    .await;
    match warm_ok {
        Ok(Ok(p)) => p.forget(),
        _ => {
            let got = received.lock().unwrap_or_else(|p| p.into_inner()).len();
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            return Err(anyhow!(
                "Affinidi's mediator: warm-up messages not delivered within 60 s ({got} of {clients} pushes arrived{})",
                if got > 0 { "; their sha-256 did not match the packed message sent" } else { "" }
            ));
        }
    }

    let mut by_sender: Vec<Vec<(String, String, String)>> =
        (0..clients).map(|_| Vec::new()).collect();
    for (s, p) in prepared {
        by_sender[s].push(p);
    }
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let start = Instant::now();
    let cpu0 = cpu_secs(a.pid) + cpu_secs(a.redis_pid);
    let mut tasks = Vec::new();
    for (s, batch) in by_sender.into_iter().enumerate() {
        let (sent, atm, profile) = (sent.clone(), a.atm.clone(), senders[s].1.clone());
        tasks.push(tokio::spawn(async move {
            for (id, fwd, key) in batch {
                sent.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key, Instant::now());
                atm.send_message(&profile, &fwd, &id, false, false)
                    .await
                    .map_err(|e| anyhow!("Affinidi SDK send: {e}"))?;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let done = tokio::time::timeout(
        Duration::from_secs(300),
        remaining.acquire_many(u32::try_from(messages)?),
    )
    .await;
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = cpu_secs(a.pid) + cpu_secs(a.redis_pid) - cpu0;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    match done {
        Ok(Ok(p)) => p.forget(),
        _ => {
            return Err(anyhow!(
                "Affinidi's mediator: {} of {messages} messages delivered within 300 s",
                remaining.available_permits()
            ))
        }
    }
    for l in lives {
        let _ = tokio::time::timeout(Duration::from_secs(2), l).await;
    }
    for (_, p) in recipients.iter().chain(senders.iter()) {
        let _ = a.atm.profile_remove(&p.inner.alias).await;
    }
    let lat = {
        let sent = sent.lock().unwrap_or_else(|p| p.into_inner());
        let rec = received.lock().unwrap_or_else(|p| p.into_inner());
        latencies(&sent, &rec)?
    };
    Ok(Level {
        per_sec: messages as f64 / elapsed,
        p50_ms: pct(&lat, 0.5),
        p99_ms: pct(&lat, 0.99),
        cpu_us: cpu * 1e6 / messages as f64,
    })
}

/// RSS added per idle live WebSocket (KiB): `n` SDK profiles with live streaming on.
async fn aff_idle(a: &mut Aff, n: usize) -> anyhow::Result<(f64, f64)> {
    let mut users = Vec::new();
    for _ in 0..n {
        users.push(a.user().await?);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (before, rbefore) = (rss_kib(a.pid), rss_kib(a.redis_pid));
    for u in &users {
        a.atm
            .profile_start_live_streaming(&u.1, false, true)
            .await
            .map_err(|e| anyhow!("live streaming: {e}"))?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (after, rafter) = (rss_kib(a.pid), rss_kib(a.redis_pid));
    Ok((
        after.saturating_sub(before) as f64 / n as f64,
        rafter.saturating_sub(rbefore) as f64 / n as f64,
    ))
}

pub async fn run(reps: usize, quick: bool) -> anyhow::Result<()> {
    let levels: &[(usize, usize)] = if quick {
        &[(1, 20), (10, 50), (100, 200)]
    } else {
        &[(1, 500), (10, 1000), (100, 2000)]
    };
    let idle_n = if quick { 20 } else { 200 };
    let dir = tempfile::tempdir()?;
    let ours_dir = dir.path().join("ours");
    let redis_dir = dir.path().join("redis");
    std::fs::create_dir_all(&redis_dir)?;
    let ours = ours_start(&ours_dir).await?;
    eprintln!("our mediator at {} (pid {})", ours.url, ours.pid);
    let mut aff = aff_start(&redis_dir).await?;
    eprintln!("Affinidi's mediator {} (pid {})", aff.did, aff.pid);

    // rows[level][side] per repetition
    let mut rows: Vec<[Vec<Level>; 2]> = levels.iter().map(|_| [Vec::new(), Vec::new()]).collect();
    // A level Affinidi's side failed at: its error, reported in the table; not retried.
    let mut aff_failed: Vec<Option<String>> = levels.iter().map(|_| None).collect();
    for rep in 0..reps {
        for (li, &(clients, messages)) in levels.iter().enumerate() {
            // Alternate which side goes first.
            for side in if rep % 2 == 0 { [0, 1] } else { [1, 0] } {
                let l = if side == 0 {
                    ours_level(&ours, clients, messages).await?
                } else if aff_failed[li].is_some() {
                    continue;
                } else {
                    match aff_level(&mut aff, clients, messages).await {
                        Ok(l) => l,
                        Err(e) => {
                            eprintln!("mediator rep {rep}, {clients} clients, Affinidi: {e:#}");
                            aff_failed[li] = Some(format!("{e:#}"));
                            continue;
                        }
                    }
                };
                eprintln!(
                    "mediator rep {rep}, {clients} clients, {}: {:.0} msg/s, p50 {:.1} ms, p99 {:.1} ms, {:.0} µs CPU/msg",
                    ["ours", "Affinidi"][side],
                    l.per_sec,
                    l.p50_ms,
                    l.p99_ms,
                    l.cpu_us
                );
                rows[li][side].push(l);
            }
        }
    }
    let ours_kib = ours_idle(&ours, idle_n).await?;
    // Reported, not fatal: the tables above it are measured already.
    let aff_rss = match aff_idle(&mut aff, idle_n).await {
        Ok((aff_kib, redis_kib)) => {
            format!("Affinidi's mediator {aff_kib:.1} KiB (+ its Redis server {redis_kib:.1} KiB)")
        }
        Err(e) => format!("Affinidi's mediator not measured: {e:#}"),
    };

    println!(
        "## Mediator: ours vs Affinidi's (affinidi-messaging-mediator 0.49.0 + {}, SDK affinidi-messaging-sdk 0.44.0)\n\nForward + live pickup; each sender one HTTP connection, one message at a time; {reps} alternating repetitions, median (min–max); × = ratio of medians, Affinidi / ours. Mediator CPU per message: the mediator process (Affinidi: plus its Redis server).\n",
        aff.redis_label
    );
    println!("| clients | messages | mediator | messages/s | p50 latency ms | p99 latency ms | CPU µs/message |");
    println!("|---:|---:|---|---:|---:|---:|---:|");
    for (li, &(clients, messages)) in levels.iter().enumerate() {
        let med = |side: usize, f: fn(&Level) -> f64| -> crate::stats::Summary {
            summary(&rows[li][side].iter().map(f).collect::<Vec<_>>())
        };
        for side in 0..2 {
            if side == 1 {
                if let Some(e) = &aff_failed[li] {
                    println!(
                        "| {clients} | {messages} | Affinidi | not measured: {} | | | |",
                        e.replace('|', "/")
                    );
                    continue;
                }
            }
            let tp = med(side, |l| l.per_sec);
            let ratio = |f: fn(&Level) -> f64| {
                if side == 1 {
                    format!(" ({:.2}×)", med(1, f).median / med(0, f).median)
                } else {
                    String::new()
                }
            };
            println!(
                "| {clients} | {messages} | {} | {}{} | {}{} | {}{} | {}{} |",
                ["ours", "Affinidi"][side],
                fmt(tp, 0),
                ratio(|l| l.per_sec),
                fmt(med(side, |l| l.p50_ms), 1),
                ratio(|l| l.p50_ms),
                fmt(med(side, |l| l.p99_ms), 1),
                ratio(|l| l.p99_ms),
                fmt(med(side, |l| l.cpu_us), 0),
                ratio(|l| l.cpu_us),
            );
        }
    }
    println!(
        "\nRSS per idle live WebSocket ({idle_n} authenticated clients, measured once): ours {ours_kib:.1} KiB; {aff_rss}.\n"
    );
    Ok(())
}
