//! Mediator benchmark: forward + live pickup throughput and latency at 1, 10, 100 and
//! 1,000 concurrent sending clients, and memory per idle WebSocket client.
//!
//! Run: `cargo bench -p mpc-did-benches --bench mediator` (prints a markdown table).
//! Without `--bench` (as `cargo test --benches` runs it) it does a small smoke run.
//!
//! What is measured (spec/mediator.md §9): the mediator runs in a child process (this
//! executable re-run with `--child-mediator`, release build, sled store with group
//! commit). Senders POST real DIDComm messages (authcrypt to the recipient, wrapped in an
//! anoncrypt Routing 2.0 forward to the mediator) over HTTP/1.1 keep-alive, one connection
//! per client, each waiting for the 202 before the next — or, in the rows marked HTTP/2,
//! over one HTTP/2 connection per client with up to 64 requests in flight (h2c prior
//! knowledge; the mediator serves HTTP/1.1 and HTTP/2 on one port). Recipients (up to 100) hold
//! WebSockets in **raw** live mode (spec/mediator.md §3.1: the mpc-did extension of
//! Pickup 3.0 where each queued message is pushed as one binary frame instead of an
//! authcrypt `delivery`; `MEDIATOR_BENCH_LIVE=wrapped` measures the standard wrapped
//! mode instead; the mode is printed), take each push and acknowledge with authcrypt
//! `messages-received` in batches. Messages are packed before the clock starts (sender-side crypto is
//! the sender's cost, not the mediator's); recipients do not decrypt the inner message
//! inside the timed window. Latency = 202-to-push: from just before the POST to the
//! arrival of the delivery carrying the message. Both processes share the machine's cores.
//!
//! Printed per level: throughput, latency, and the CPU time per message of the mediator
//! process and of this (load generator) process, both from `/proc/PID/stat`. Changes since
//! the first version (the measured work is unchanged): the load generator's CPU column;
//! `MEDIATOR_BENCH_CLIENTS=1,100` runs only those levels and skips the idle-socket part
//! (for profiling one level); `MEDIATOR_BENCH_COALESCE_MS` sets the mediator's
//! `live_coalesce_ms` (default: the mediator's default). The recipients' client caches the
//! ECDH-1PU static share with the mediator, as every `MediatorClient` now does. The
//! default live mode is raw (spec/mediator.md §3.1, see above), and `MEDIATOR_BENCH_ACK_MS` sets how
//! long a recipient waits for more pushes before acknowledging (default 50 ms since the
//! README reports that setting; it was 5 ms). It also prints the irreducible crypto of a
//! message, timed in this process (thread CPU time): the forward's anoncrypt unwrap, X25519
//! alone, one one-message authcrypt `delivery` (spec/mediator.md §11.2).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use mpc_did_agent::client::{MediatorClient, MediatorInfo};
use mpc_did_didcomm::message::message;
use mpc_did_didcomm::{pack_encrypted, wrap_in_forward, PackOptions};
use mpc_did_mediator::store::message_id;
use mpc_did_mediator::{Config, Limits, Mediator};
use mpc_did_resolver::UniversalResolver;
use mpc_did_testkit::mediator::ephemeral_identity;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    if let Some(i) = args.iter().position(|a| a == "--child-mediator") {
        rt.block_on(child(&args[i + 1]));
        return ExitCode::SUCCESS;
    }
    let full = args.iter().any(|a| a == "--bench");
    rt.block_on(parent(full));
    ExitCode::SUCCESS
}

/// The mediator under test, in its own process so that its RSS can be read.
async fn child(dir: &str) {
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data: dir.into(),
        limits: Limits {
            rate_per_connection: 1_000_000,
            rate_burst: 1_000_000,
            max_connections: 30_000,
            max_queue_messages: 10_000_000,
            max_queue_bytes: 10_000_000_000,
            idle_timeout_secs: 600,
            // Every client of the benchmark is 127.0.0.1 (and 10,000 idle sockets): no
            // per-source limits here (spec/mediator.md §6.1).
            max_connections_per_ip: 0,
            max_queued_per_source: 0,
            rate_per_ip: 0,
            rate_per_did: 0,
            // MEDIATOR_BENCH_COALESCE_MS overrides the live push coalescing window.
            live_coalesce_ms: std::env::var("MEDIATOR_BENCH_COALESCE_MS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(Limits::default().live_coalesce_ms),
            ..Limits::default()
        },
        ..Config::default()
    };
    let h = Mediator::builder(config).start().await.unwrap();
    println!("{}", h.public_url);
    std::io::stdout().flush().unwrap();
    // Until the parent closes our stdin.
    tokio::task::spawn_blocking(|| {
        let mut s = String::new();
        while std::io::stdin()
            .read_line(&mut s)
            .map(|n| n > 0)
            .unwrap_or(false)
        {}
    })
    .await
    .unwrap();
    h.shutdown().await;
}

/// CPU time (user + system) the process has used so far, in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = s.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // /proc reports clock ticks; USER_HZ is 100 on Linux.
    (ticks(11) + ticks(12)) / 100.0
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

struct Row {
    clients: usize,
    window: usize,
    messages: usize,
    per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu_us_per_msg: f64,
    gen_cpu_us_per_msg: f64,
}

async fn parent(full: bool) {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .arg("--child-mediator")
        .arg(dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut url = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut url)
        .unwrap();
    let url = url.trim().to_owned();
    let pid = child.id();
    let info = MediatorInfo::discover(&url).await.unwrap();
    eprintln!("mediator {} at {url} (pid {pid})", info.did);
    let floor = {
        let resolver = UniversalResolver::new().unwrap();
        crypto_floor(&resolver).await
    };
    let raw = raw_mode();
    println!(
        "live delivery mode: {}",
        if raw {
            "raw (binary frame per message, spec/mediator.md §3.1)"
        } else {
            "wrapped (standard: an authcrypt Pickup `delivery` per push, in the version the client picks, 4.0 here)"
        }
    );

    // (clients, messages, requests in flight per client: 1 = HTTP/1.1 one at a time,
    // more = HTTP/2 with that many streams on the client's one connection).
    let levels: &[(usize, usize, usize)] = if full {
        &[
            (1, 2000, 1),
            (1, 5000, H2_WINDOW),
            (10, 4000, 1),
            (100, 5000, 1),
            (1000, 5000, 1),
        ]
    } else {
        &[(1, 20, 1), (1, 50, H2_WINDOW), (10, 50, 1)]
    };
    // MEDIATOR_BENCH_CLIENTS=100 (comma-separated) runs only those levels, e.g. to profile one.
    let only: Option<Vec<usize>> = std::env::var("MEDIATOR_BENCH_CLIENTS")
        .ok()
        .map(|v| v.split(',').filter_map(|c| c.trim().parse().ok()).collect());
    let mut rows = Vec::new();
    for &(clients, messages, window) in levels {
        if only.as_ref().is_some_and(|o| !o.contains(&clients)) {
            continue;
        }
        rows.push(level(&info, pid, clients, messages, window, raw).await);
    }
    let idle_clients = if only.is_some() {
        0
    } else if full {
        10_000
    } else {
        100
    };
    let (idle_rss_before, idle_rss_after) = idle_websockets(&url, pid, idle_clients).await;

    println!("\n| concurrent clients | sender | messages | messages/s | p50 latency | p99 latency | mediator CPU per message | load generator CPU per message |");
    println!("|---:|---|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        let sender = if r.window == 1 {
            "HTTP/1.1, one at a time".to_owned()
        } else {
            format!("HTTP/2, ≤ {} in flight", r.window)
        };
        println!(
            "| {} | {sender} | {} | {:.0} | {:.1} ms | {:.1} ms | {:.0} µs | {:.0} µs |",
            r.clients,
            r.messages,
            r.per_sec,
            r.p50_ms,
            r.p99_ms,
            r.cpu_us_per_msg,
            r.gen_cpu_us_per_msg
        );
    }
    println!(
        "\nirreducible crypto, CPU µs on this machine in this run: forward unwrap (X25519 + KDF + AES-KW + A256CBC-HS512) {:.0}, of which X25519 {:.0}; one-message authcrypt delivery {:.0}",
        floor.0, floor.1, floor.2
    );
    let per = (idle_rss_after.saturating_sub(idle_rss_before)) as f64 / idle_clients.max(1) as f64;
    println!(
        "\nidle WebSocket clients: {idle_clients}; mediator RSS {:.1} MiB before, {:.1} MiB with them open: {:.1} KiB per client",
        idle_rss_before as f64 / 1024.0,
        idle_rss_after as f64 / 1024.0,
        per
    );
    drop(child.stdin.take());
    let _ = child.wait();
}

/// CPU time this thread has run so far (ns), from `/proc/thread-self/schedstat`: time on a
/// core only, so a measurement under contention is not inflated by waiting for one.
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// Median over `rounds` of the thread CPU time per call of `f` (`n` calls a round), in µs.
fn cpu_us_per_call(rounds: usize, n: usize, mut f: impl FnMut()) -> f64 {
    let mut per: Vec<f64> = (0..rounds)
        .map(|_| {
            let t = thread_cpu_ns();
            for _ in 0..n {
                f();
            }
            (thread_cpu_ns() - t) as f64 / 1000.0 / n as f64
        })
        .collect();
    per.sort_by(f64::total_cmp);
    per[per.len() / 2]
}

/// The crypto a forwarded and pushed message cannot avoid, timed in this process at the
/// benchmark's message size (spec/mediator.md §11.2): the forward's anoncrypt unwrap (one
/// X25519 of the sender's fresh ephemeral key with the mediator's key, Concat KDF, AES-KW
/// unwrap, A256CBC-HS512 decryption of the forward), X25519 alone, and one authcrypt
/// `delivery` of that message to its recipient with the static share cached (ephemeral key,
/// one X25519, KDF, wrap, encryption). Returns (unwrap, x25519, push) in µs of CPU.
async fn crypto_floor(resolver: &UniversalResolver) -> (f64, f64, f64) {
    use mpc_did_didcomm::jose::{self, Jwe, RecipientKey, SenderKey};
    use mpc_did_didcomm::secrets::{Secret, SecretsResolver as _};
    use mpc_did_resolver::{DidResolver as _, PublicKey};
    let (mdid, msecrets) = ephemeral_identity();
    let (rdid, _) = ephemeral_identity();
    let (sdid, ssecrets) = ephemeral_identity();
    let ka = |did: String| async move {
        let doc = resolver.resolve(&did).await.unwrap();
        let vm = doc.key_agreement_methods()[0].clone();
        let PublicKey::X25519(k) = vm.key else {
            panic!("X25519 keyAgreement")
        };
        (vm.id, k)
    };
    let (mkid, _) = ka(mdid.clone()).await;
    let (rkid, rpub) = ka(rdid.clone()).await;
    let Some(Secret::X25519(msecret)) = msecrets.secret(&mkid) else {
        panic!("mediator secret")
    };
    // The same message as the benchmark's (level(), below).
    let msg = message(
        "https://example.org/bench/1.0/m",
        serde_json::json!({ "i": 1 }),
    )
    .from(sdid.clone())
    .to(rdid.clone());
    let opts = PackOptions {
        forward: false,
        ..PackOptions::default()
    };
    let inner = pack_encrypted(&msg, &rdid, Some(&sdid), None, resolver, &ssecrets, &opts)
        .await
        .unwrap()
        .message;
    let fwd = wrap_in_forward(
        &inner,
        &rdid,
        std::slice::from_ref(&mkid),
        resolver,
        opts.anon_enc,
    )
    .await
    .unwrap();
    let jwe = Jwe::parse(&serde_json::from_str(&fwd).unwrap()).unwrap();
    let unwrap = cpu_us_per_call(7, 300, || {
        jwe.decrypt_with(&mkid, &msecret, None, None).unwrap();
    });
    let epk = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::random_from_rng(
        rand_core::OsRng,
    ));
    let x25519 = cpu_us_per_call(7, 300, || {
        std::hint::black_box(msecret.diffie_hellman(&epk));
    });
    let delivery = serde_json::json!({
        "id": "0b5b0d3c-3f0a-4a8e-9d0e-000000000001",
        "type": "https://didcomm.org/message-pickup/4.0/delivery",
        "from": mdid, "to": [rdid], "body": {},
        "attachments": [{"id": "0123456789abcdef0123456789abcdef",
                          "data": {"json": serde_json::from_str::<serde_json::Value>(&inner).unwrap()}}],
    })
    .to_string();
    let cache = mpc_did_didcomm::StaticEcdhCache::new(16);
    let rk = [RecipientKey {
        kid: &rkid,
        public: rpub,
    }];
    let sk = SenderKey {
        kid: &mkid,
        secret: &msecret,
    };
    let push = cpu_us_per_call(7, 300, || {
        jose::encrypt_with(
            delivery.as_bytes(),
            &rk,
            Some(&sk),
            mpc_did_didcomm::ContentAlg::A256CbcHs512,
            Some(&cache),
        )
        .unwrap();
    });
    eprintln!(
        "irreducible crypto (CPU µs, this machine now; forward {} B): forward unwrap {unwrap:.1} (X25519 alone {x25519:.1}), one-message authcrypt delivery {push:.1}",
        fwd.len()
    );
    (unwrap, x25519, push)
}

/// One prepared message: who sends, to which recipient, the packed forward, its queue id.
struct Prepared {
    sender: usize,
    body: String,
    queue_id: String,
}

/// `MEDIATOR_BENCH_LIVE=wrapped` selects the wrapped live mode; raw otherwise.
fn raw_mode() -> bool {
    std::env::var("MEDIATOR_BENCH_LIVE").map_or(true, |v| v != "wrapped")
}

/// Requests one HTTP/2 sender keeps in flight.
const H2_WINDOW: usize = 64;

async fn level(
    info: &MediatorInfo,
    pid: u32,
    clients: usize,
    messages: usize,
    window: usize,
    raw: bool,
) -> Row {
    let recipients_n = clients.min(100);
    let resolver = UniversalResolver::new().unwrap();
    resolver.insert(info.document().unwrap());
    let mut recipients = Vec::new();
    for _ in 0..recipients_n {
        let (did, secrets) = ephemeral_identity();
        let c = MediatorClient::new(info.clone(), &did, secrets, resolver.clone()).unwrap();
        c.register().await.unwrap();
        recipients.push(c);
    }
    let senders: Vec<_> = (0..clients).map(|_| ephemeral_identity()).collect();
    let senders = Arc::new(senders);

    // Pack everything before the clock starts, on both cores.
    let t = Instant::now();
    let mut jobs = Vec::new();
    let per_job = messages.div_ceil(8);
    for j in 0..8 {
        let (senders, resolver, info) = (senders.clone(), resolver.clone(), info.clone());
        let rdids: Vec<String> = recipients.iter().map(|r| r.did.clone()).collect();
        jobs.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in (j * per_job)..((j + 1) * per_job).min(messages) {
                let s = i % senders.len();
                let to = &rdids[s % rdids.len()];
                let (from, secrets) = &senders[s];
                let msg = message(
                    "https://example.org/bench/1.0/m",
                    serde_json::json!({ "i": i }),
                )
                .from(from.clone())
                .to(to.clone());
                let opts = PackOptions {
                    forward: false,
                    ..PackOptions::default()
                };
                let inner = pack_encrypted(&msg, to, Some(from), None, &resolver, secrets, &opts)
                    .await
                    .unwrap()
                    .message;
                let canonical = serde_json::from_str::<serde_json::Value>(&inner)
                    .unwrap()
                    .to_string();
                let body = wrap_in_forward(
                    &inner,
                    to,
                    std::slice::from_ref(&info.routing_key),
                    &resolver,
                    opts.anon_enc,
                )
                .await
                .unwrap();
                out.push(Prepared {
                    sender: s,
                    body,
                    queue_id: message_id(canonical.as_bytes()),
                });
            }
            out
        }));
    }
    let mut prepared = Vec::with_capacity(messages);
    for j in jobs {
        prepared.extend(j.await.unwrap());
    }
    eprintln!(
        "{clients} clients: packed {messages} messages in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let received: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let remaining = Arc::new(tokio::sync::Semaphore::new(0));

    // Recipients go live first.
    let mut lives = Vec::new();
    let ack_idle = Duration::from_millis(
        std::env::var("MEDIATOR_BENCH_ACK_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(50),
    );
    for r in &recipients {
        let mut live = if raw {
            r.live_raw(Duration::from_secs(30)).await.unwrap()
        } else {
            r.live().await.unwrap()
        };
        let (received, remaining) = (received.clone(), remaining.clone());
        lives.push(tokio::spawn(async move {
            // Acknowledge in batches: after 200 ids, or when nothing more arrives for 50 ms
            // (MEDIATOR_BENCH_ACK_MS overrides the 50 ms)
            // (one authcrypt messages-received for many pushes).
            let mut unacked: Vec<String> = Vec::new();
            loop {
                let wait = if unacked.is_empty() {
                    Duration::from_secs(60)
                } else {
                    ack_idle
                };
                let batch = match live.next_batch(wait).await {
                    Ok(b) => b,
                    Err(mpc_did_agent::client::ClientError::Timeout) if !unacked.is_empty() => {
                        live.ack(&std::mem::take(&mut unacked)).await.unwrap();
                        continue;
                    }
                    Err(_) => break,
                };
                let now = Instant::now();
                let mut fresh = 0;
                {
                    let mut rec = received.lock().unwrap();
                    for d in &batch {
                        if rec.insert(d.id.clone(), now).is_none() {
                            fresh += 1;
                        }
                    }
                }
                unacked.extend(batch.into_iter().map(|d| d.id));
                if unacked.len() >= 200 {
                    live.ack(&std::mem::take(&mut unacked)).await.unwrap();
                }
                remaining.add_permits(fresh);
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Group by sender; each sender is one connection: HTTP/1.1 sending sequentially, or
    // HTTP/2 (prior knowledge, as the mediator serves h2c beside HTTP/1.1) keeping
    // `window` requests in flight.
    let mut by_sender: Vec<Vec<Prepared>> = (0..clients).map(|_| Vec::new()).collect();
    for p in prepared {
        by_sender[p.sender].push(p);
    }
    let start = Instant::now();
    let cpu_start = cpu_secs(pid);
    let gen_start = cpu_secs(std::process::id());
    let mut tasks = Vec::new();
    for batch in by_sender {
        let sent = sent.clone();
        let endpoint = info.http.clone();
        tasks.push(tokio::spawn(async move {
            let mut http = reqwest::Client::builder().pool_max_idle_per_host(1);
            if window > 1 {
                http = http.http2_prior_knowledge();
            }
            let http = http.build().unwrap();
            let post = |p: Prepared| {
                sent.lock()
                    .unwrap()
                    .insert(p.queue_id.clone(), Instant::now());
                let req = http
                    .post(&endpoint)
                    .header("content-type", "application/didcomm-encrypted+json")
                    .body(p.body)
                    .send();
                async move {
                    let resp = req.await.unwrap();
                    assert_eq!(resp.status().as_u16(), 202);
                    assert_eq!(
                        resp.version(),
                        if window > 1 {
                            reqwest::Version::HTTP_2
                        } else {
                            reqwest::Version::HTTP_11
                        }
                    );
                }
            };
            futures_util::stream::iter(batch.into_iter().map(post))
                .buffer_unordered(window)
                .collect::<Vec<()>>()
                .await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let all = u32::try_from(messages).unwrap();
    tokio::time::timeout(Duration::from_secs(300), remaining.acquire_many(all))
        .await
        .expect("every message delivered")
        .unwrap()
        .forget();
    let elapsed = start.elapsed();
    let cpu = cpu_secs(pid) - cpu_start;
    let gen_cpu = cpu_secs(std::process::id()) - gen_start;
    for l in lives {
        l.abort();
    }
    let sent = sent.lock().unwrap();
    let received = received.lock().unwrap();
    let mut lat: Vec<f64> = sent
        .iter()
        .filter_map(|(id, s)| {
            received
                .get(id)
                .map(|r| r.saturating_duration_since(*s).as_secs_f64() * 1000.0)
        })
        .collect();
    assert_eq!(
        lat.len(),
        messages,
        "every message delivered exactly once after de-duplication"
    );
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    let row = Row {
        clients,
        window,
        messages,
        per_sec: messages as f64 / elapsed.as_secs_f64(),
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        cpu_us_per_msg: cpu * 1e6 / messages as f64,
        gen_cpu_us_per_msg: gen_cpu * 1e6 / messages as f64,
    };
    eprintln!(
        "{clients} clients ({window} in flight each): {:.0} msg/s, p50 {:.1} ms, p99 {:.1} ms",
        row.per_sec, row.p50_ms, row.p99_ms
    );
    row
}

/// Opens `n` WebSockets that stay idle; returns the mediator's RSS (KiB) before and after.
async fn idle_websockets(url: &str, pid: u32, n: usize) -> (u64, u64) {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(pid);
    let ws_url = format!("{}/ws", url.replacen("http://", "ws://", 1));
    let sem = Arc::new(tokio::sync::Semaphore::new(256));
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let (ws_url, sem) = (ws_url.clone(), sem.clone());
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire().await.unwrap();
            tokio_tungstenite::connect_async(ws_url.as_str())
                .await
                .map(|(ws, _)| ws)
        }));
    }
    let mut sockets = Vec::with_capacity(n);
    for t in tasks {
        sockets.push(t.await.unwrap().expect("websocket connect"));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_kib(pid);
    let health = reqwest::get(format!("{url}/healthz")).await.unwrap();
    assert!(health.status().is_success());
    drop(sockets);
    (before, after)
}
