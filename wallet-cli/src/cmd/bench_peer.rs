//! `mpc-did bench peer DID`: per-message DIDComm through the mediators against a secure
//! session's path, between two machines, in the same minutes (spec/bench.md).
//!
//! Both parties run the same command naming each other. The bytewise smaller DID leads
//! (it is also the session's proposer, spec/session.md §2.1); the other follows. After the
//! secure session is up (the same setup as `mpc-did session connect`), the leader drives the
//! phases over one stream it opens, and times:
//!
//! ```text
//!  leader                                           follower
//!  ══ secure session up (propose/accept via DIDComm, path chosen by the connector) ══
//!  stream "mdbnch/1": params ─────────────────────▶ (checks the run id)
//!                     ◀───────────────────────────── ready
//!  DIDComm ping (authcrypt, via follower's mediator) ▶ pong (via leader's mediator)   × 1+N
//!  rtt + 64 B ──────────── session ───────────────▶ echo 64 B                          × 1+N
//!  bulk + B bytes ─────────────────────────────────▶ got
//!  send ───────────────────────────────────────────▶ bulk + B bytes
//!  got ◀────────────────────────────────────────────
//!                     ◀───────────────────────────── timed (the follower's send time)
//!  results ────────────────────────────────────────▶ done
//!  both: wait for ACKs of everything sent, CLOSE 0
//! ```
//!
//! Round trips are timed by the leader and sent to the follower in `results`, so both print
//! the same table; each throughput is timed by its sender (first byte written → `got`).

use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use mpc_did_agent::client::ClientError;
use mpc_did_agent::{Agent, AgentError, Inbound};
use mpc_did_connect::ConnectError;
use mpc_did_didcomm::message::message;
use mpc_did_driver::{SessionHandle, SessionStream, CLOSE_PARTY_FAILED};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;

use crate::cmd::pipe::{describe, finish, short_reason};
use crate::cmd::session::{ms, open, path_json, path_text, Opened, PeerArgs};
use crate::ctx::Ctx;

/// Type prefix of the bench's DIDComm messages (spec/bench.md §3).
pub const BENCH_PREFIX: &str = "https://mpc-did.org/bench/1.0/";
/// The DIDComm ping (leader → follower).
const PING_TYPE: &str = "https://mpc-did.org/bench/1.0/ping";
/// The DIDComm pong (follower → leader).
const PONG_TYPE: &str = "https://mpc-did.org/bench/1.0/pong";
/// Preamble of the bench's session stream (spec/bench.md §4).
pub const TAG_BENCH: &[u8; 8] = b"mdbnch/1";
/// Protocol version in `params`.
const VERSION: u32 = 1;
/// Bytes per session round trip.
const RTT_BYTES: usize = 64;
/// Largest control message on the stream.
const MAX_CONTROL: usize = 64 << 10;
/// Write size of the throughput phases.
const CHUNK: usize = 64 << 10;
/// Largest accepted `--bytes`.
const MAX_BYTES: u64 = 16 << 30;
/// Extra time the whole setup may take over `--timeout` (resolving the peer's mediator,
/// one POST) before we give up on it.
const SETUP_SLACK: Duration = Duration::from_secs(15);

/// Options of `mpc-did bench peer`.
#[derive(clap::Args, Debug)]
pub struct PeerBenchArgs {
    #[command(flatten)]
    pub peer: PeerArgs,
    /// Round trips to time on each path (DIDComm and session; one untimed warm-up each
    /// comes first). The leader's value is used.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub rounds: u32,
    /// Bytes to send each way over the session for the throughput, e.g. 64MiB, 500KiB,
    /// 1000000. The leader's value is used.
    #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = parse_size)]
    pub bytes: u64,
}

/// Why `bench peer` failed, for the cases a user must act on differently.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    /// The argument is not a DID we can talk to.
    #[error("{did:?} is not a valid DID: {reason}")]
    InvalidDid {
        /// What was given.
        did: String,
        /// Why it is not valid.
        reason: String,
    },
    /// The peer did not answer in time.
    #[error(
        "{peer} did not answer {what} within {secs} s: check that it runs `mpc-did bench peer \
         {me}` now, that it is registered at its mediator (`mpc-did mediator register`), and \
         that --peer-mediator names that mediator"
    )]
    NoAnswer {
        /// The peer's DID.
        peer: String,
        /// Our DID (what the peer must name).
        me: String,
        /// What was awaited.
        what: String,
        /// How long we waited.
        secs: u64,
    },
    /// The peer's mediator does not know the peer (it refused our message to it).
    #[error(
        "{peer} is not registered at the mediator we reached for it: check the DID, and that \
         --peer-mediator names the mediator where the peer ran `mpc-did mediator register`"
    )]
    NotRegistered {
        /// The peer's DID.
        peer: String,
    },
    /// The peer sent something the bench protocol does not allow at this point.
    #[error("the peer broke the bench protocol: {0}")]
    Protocol(String),
}

/// Parse `64MiB`, `500KiB`, `1GiB`, `64M`, `1000000` into bytes.
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 64MiB, 500KiB, 1000000)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" | "kb" => 1 << 10,
        "m" | "mib" | "mb" => 1 << 20,
        "g" | "gib" | "gb" => 1 << 30,
        other => return Err(format!("unknown size unit {other:?} (use KiB, MiB or GiB)")),
    };
    let bytes = n
        .checked_mul(mult)
        .filter(|b| (1..=MAX_BYTES).contains(b))
        .ok_or_else(|| format!("{s:?}: the size must be between 1 B and 16 GiB"))?;
    Ok(bytes)
}

/// Check `did` before touching the wallet or the network: DID syntax, and for did:key a
/// key we can use.
fn check_did(did: &str) -> Result<(), BenchError> {
    let invalid = |reason: String| BenchError::InvalidDid {
        did: did.to_owned(),
        reason,
    };
    let parsed = mpc_did_resolver::Did::parse(did).map_err(|e| invalid(e.to_string()))?;
    if parsed.method() == "key" {
        mpc_did_resolver::key::resolve(did).map_err(|e| invalid(e.to_string()))?;
    }
    Ok(())
}

/// Messages on the bench stream (spec/bench.md §4): a u32 big-endian length, then this as
/// JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
enum Control {
    /// Leader → follower: the run's settings.
    Params {
        version: u32,
        run: String,
        rounds: u32,
        bytes: u64,
    },
    /// Follower → leader: answering DIDComm pings of this run.
    Ready,
    /// Leader → follower: `rounds + 1` session round trips of `size` bytes follow.
    Rtt { rounds: u32, size: usize },
    /// Either way: `bytes` raw bytes follow.
    Bulk { bytes: u64 },
    /// Receiver → sender: all `bytes` arrived.
    Got { bytes: u64 },
    /// Leader → follower: send `bytes` to us now.
    Send { bytes: u64 },
    /// Follower → leader: how long its send took (first byte → `got`).
    Timed { seconds: f64 },
    /// Leader → follower: everything measured.
    Results { measured: Measured },
    /// Follower → leader: results received; the end.
    Done,
}

/// Round-trip statistics in milliseconds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stats {
    /// Timed round trips.
    pub samples: usize,
    /// Fastest.
    pub min: f64,
    /// Median (lower middle for an even count).
    pub median: f64,
    /// 90th percentile (nearest rank).
    pub p90: f64,
    /// Slowest.
    pub max: f64,
}

impl Stats {
    fn of(mut d: Vec<Duration>) -> Self {
        d.sort();
        let pick = |q: f64| -> f64 {
            if d.is_empty() {
                return 0.0;
            }
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let rank = ((q * d.len() as f64).ceil() as usize).clamp(1, d.len());
            d.get(rank - 1).copied().map_or(0.0, ms)
        };
        Self {
            samples: d.len(),
            min: d.first().copied().map_or(0.0, ms),
            median: pick(0.5),
            p90: pick(0.9),
            max: d.last().copied().map_or(0.0, ms),
        }
    }
}

/// One direction's throughput, timed by its sender.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Transfer {
    /// Payload bytes.
    pub bytes: u64,
    /// First byte written → the receiver's `got`.
    pub seconds: f64,
    /// MiB per second.
    pub mib_per_s: f64,
}

impl Transfer {
    #[allow(clippy::cast_precision_loss)]
    fn new(bytes: u64, seconds: f64) -> Self {
        Self {
            bytes,
            seconds,
            mib_per_s: bytes as f64 / f64::from(1u32 << 20) / seconds.max(1e-9),
        }
    }
}

/// What the leader measured (sent to the follower in `results`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Measured {
    /// DIDComm ping → pong through both mediators.
    pub didcomm_rtt_ms: Stats,
    /// 64 B out and back over the secure session.
    pub session_rtt_ms: Stats,
    /// Leader → follower.
    pub leader_to_follower: Transfer,
    /// Follower → leader.
    pub follower_to_leader: Transfer,
}

/// The report one side prints (`--json`), from its own point of view.
#[derive(Debug, Serialize)]
struct Report {
    me: String,
    peer: String,
    /// `leader` (the smaller DID) or `follower`.
    role: &'static str,
    session_id: String,
    peer_endpoint_from: crate::cmd::agent_ctx::PeerSource,
    /// The path the session came up on (`kind`: direct, quic, relay).
    path: Value,
    /// The path at the end (it may change, spec/session.md §7.5).
    path_at_end: Option<Value>,
    setup_ms: f64,
    rounds: u32,
    rtt_payload_bytes: usize,
    didcomm_rtt_ms: Stats,
    session_rtt_ms: Stats,
    /// DIDComm median RTT ÷ session median RTT.
    rtt_ratio: f64,
    /// Throughput from us to the peer.
    send: Transfer,
    /// Throughput from the peer to us.
    receive: Transfer,
}

/// Progress on stderr: a rewritten line on a terminal, one line per phase otherwise.
struct Progress {
    tty: bool,
    last: std::sync::Mutex<Instant>,
}

impl Progress {
    fn new() -> Self {
        Self {
            tty: std::io::stderr().is_terminal(),
            last: std::sync::Mutex::new(Instant::now()),
        }
    }

    /// A phase starts (or ends): its own line.
    fn line(&self, text: &str) {
        if self.tty {
            eprint!("\r\x1b[2K");
        }
        eprintln!("mpc-did: {text}");
    }

    /// Bytes moved so far in a phase: on a terminal only, at most 10 times a second.
    #[allow(clippy::cast_precision_loss)]
    fn bytes(&self, what: &str, done: u64, total: u64, since: Instant) {
        if !self.tty {
            return;
        }
        let Ok(mut last) = self.last.lock() else {
            return;
        };
        if done < total && last.elapsed() < Duration::from_millis(100) {
            return;
        }
        *last = Instant::now();
        let mib = |b: u64| b as f64 / f64::from(1u32 << 20);
        let width = 30usize;
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let filled = ((done as f64 / total.max(1) as f64) * width as f64) as usize;
        eprint!(
            "\r\x1b[2K{what} [{}{}] {:.1}/{:.1} MiB {:.1} MiB/s",
            "#".repeat(filled.min(width)),
            " ".repeat(width - filled.min(width)),
            mib(done),
            mib(total),
            mib(done) / since.elapsed().as_secs_f64().max(1e-9)
        );
    }
}

/// `mpc-did bench peer`.
///
/// # Errors
/// [`BenchError`] for an invalid DID, a peer that does not answer, or one that breaks the
/// protocol; wallet, mediator and session errors otherwise.
pub async fn run(ctx: &Ctx, a: PeerBenchArgs) -> anyhow::Result<()> {
    check_did(&a.peer.did)?;
    let limit = Duration::from_secs(a.peer.timeout.max(1));
    let progress = Progress::new();
    progress.line(&format!(
        "setting up a secure session with {} (waiting up to {} s for it)",
        a.peer.did,
        limit.as_secs()
    ));
    let me_did = own_did(ctx, a.peer.identity.as_deref());
    let no_answer = |what: &str| BenchError::NoAnswer {
        peer: a.peer.did.clone(),
        me: me_did.clone(),
        what: what.to_owned(),
        secs: limit.as_secs(),
    };
    let o = match tokio::time::timeout(limit + SETUP_SLACK, open(ctx, &a.peer)).await {
        Err(_) => return Err(no_answer("the secure-session setup").into()),
        Ok(Err(e)) if is_timeout(&e) => {
            tracing::info!("bench: no session with {}: {e:#}", a.peer.did);
            return Err(no_answer("the secure-session setup").into());
        }
        Ok(Err(e)) if is_unknown_recipient(&e) => {
            tracing::info!("bench: no session with {}: {e:#}", a.peer.did);
            return Err(BenchError::NotRegistered {
                peer: a.peer.did.clone(),
            }
            .into());
        }
        Ok(Err(e)) => return Err(e),
        Ok(Ok(o)) => o,
    };
    progress.line(&format!(
        "session {} up: {} (setup {:.1} ms); we {}",
        o.est.session_id,
        path_text(&o.est.path),
        ms(o.est.setup),
        if o.proposer {
            "lead (smaller DID)"
        } else {
            "follow (larger DID)"
        }
    ));
    // Before `ready` can be sent: pings of this run must find a subscriber.
    let inbox = o.connector.agent().subscribe(BENCH_PREFIX);
    let result = if o.proposer {
        lead(&o, inbox, &a, limit, &progress).await
    } else {
        follow(&o, inbox, &a, limit, &progress).await
    };
    let (measured, rounds) = match result {
        Ok(m) => m,
        Err(e) => {
            // Why the session ended, if it did (the peer's CLOSE reason); then tell the
            // peer at once instead of leaving it to time out.
            let state = o.est.handle.state();
            o.est
                .handle
                .close(CLOSE_PARTY_FAILED, &short_reason(&e))
                .await;
            let ended = if state.is_over() {
                format!(" (the session was {})", describe(&state))
            } else {
                String::new()
            };
            return Err(e.context(format!("bench with {} failed{ended}", o.est.peer)));
        }
    };
    finish(&o.est.handle).await?;
    let report = report(&o, measured, rounds);
    if ctx.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    drop(o.connector);
    Ok(())
}

/// Our DID, for messages (the real check is in `open`).
fn own_did(ctx: &Ctx, identity: Option<&str>) -> String {
    crate::cmd::mediator::registered_client(ctx, identity)
        .map(|(id, _)| id.did.clone())
        .unwrap_or_else(|_| "<your DID>".into())
}

/// Whether setting the session up failed because the peer did not answer.
fn is_timeout(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<ConnectError>(),
            Some(ConnectError::Timeout { .. } | ConnectError::Agent(AgentError::Timeout(_)))
        )
    })
}

/// Whether the peer's mediator refused a message to the peer as an unknown recipient.
fn is_unknown_recipient(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<ConnectError>(),
            Some(ConnectError::Agent(AgentError::Client(ClientError::Problem { code, .. })))
                if code.ends_with("unknown-recipient")
        )
    })
}

fn report(o: &Opened, m: Measured, rounds: u32) -> Report {
    let (send, receive) = if o.proposer {
        (m.leader_to_follower, m.follower_to_leader)
    } else {
        (m.follower_to_leader, m.leader_to_follower)
    };
    let p = o.est.handle.path();
    Report {
        me: o.me.did.clone(),
        peer: o.est.peer.clone(),
        role: if o.proposer { "leader" } else { "follower" },
        session_id: o.est.session_id.clone(),
        peer_endpoint_from: o.source.clone(),
        path: path_json(&o.est.path),
        path_at_end: p.current.or(p.last).as_ref().map(path_json),
        setup_ms: ms(o.est.setup),
        rounds,
        rtt_payload_bytes: RTT_BYTES,
        rtt_ratio: m.didcomm_rtt_ms.median / m.session_rtt_ms.median.max(1e-6),
        didcomm_rtt_ms: m.didcomm_rtt_ms,
        session_rtt_ms: m.session_rtt_ms,
        send,
        receive,
    }
}

fn print_table(r: &Report) {
    let kind = r
        .path
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("unknown");
    println!(
        "bench peer with {} (we {}), session {}",
        r.peer,
        if r.role == "leader" {
            "led"
        } else {
            "followed"
        },
        r.session_id
    );
    println!(
        "path: {} (setup {:.1} ms)",
        r.path.get("text").and_then(Value::as_str).unwrap_or(kind),
        r.setup_ms
    );
    if let Some(end) = r.path_at_end.as_ref().filter(|e| **e != r.path) {
        println!(
            "path at the end: {}",
            end.get("text").and_then(Value::as_str).unwrap_or("?")
        );
    }
    println!();
    println!("| round trip | median | p90 | min | max | samples |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, s) in [
        (
            "DIDComm authcrypt ping/pong via both mediators".to_owned(),
            &r.didcomm_rtt_ms,
        ),
        (
            format!("session, {} B, path {kind}", r.rtt_payload_bytes),
            &r.session_rtt_ms,
        ),
    ] {
        println!(
            "| {name} | {} | {} | {} | {} | {} |",
            msec(s.median),
            msec(s.p90),
            msec(s.min),
            msec(s.max),
            s.samples
        );
    }
    println!();
    println!("| throughput over the session (path {kind}) | moved | seconds | MiB/s |");
    println!("|---|---:|---:|---:|");
    for (name, t) in [("us → peer", &r.send), ("peer → us", &r.receive)] {
        #[allow(clippy::cast_precision_loss)]
        let mib = t.bytes as f64 / f64::from(1u32 << 20);
        println!(
            "| {name} | {mib:.1} MiB | {:.3} | {:.1} |",
            t.seconds, t.mib_per_s
        );
    }
    println!();
    println!(
        "ratio: a DIDComm round trip takes {:.1}× a session round trip (medians, {} rounds)",
        r.rtt_ratio, r.rounds
    );
}

fn msec(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0} ms")
    } else if v >= 1.0 {
        format!("{v:.2} ms")
    } else {
        format!("{:.0} µs", v * 1000.0)
    }
}

/// The leader's side (spec/bench.md §4): the bench stream, and the DIDComm round trips
/// between `ready` and `rtt`.
async fn lead(
    o: &Opened,
    inbox: mpsc::Receiver<Inbound>,
    a: &PeerBenchArgs,
    limit: Duration,
    progress: &Progress,
) -> anyhow::Result<(Measured, u32)> {
    let run = o.est.session_id.clone();
    let (rounds, bytes) = (a.rounds, a.bytes);
    let s = o.est.handle.open_stream().await?;
    let (agent, peer, me) = (o.connector.agent(), o.est.peer.as_str(), o.me.did.as_str());
    let didcomm = async {
        let mut inbox = inbox;
        let mut rtts = Vec::new();
        for seq in 0..=rounds {
            let t = Instant::now();
            didcomm_ping(agent, peer, &run, seq, &mut inbox, limit, me).await?;
            if seq > 0 {
                rtts.push(t.elapsed());
            }
        }
        Ok(rtts)
    };
    let measured = lead_on(s, &run, rounds, bytes, limit, progress, didcomm).await?;
    Ok((measured, rounds))
}

/// The leader's protocol on the bench stream `s` (spec/bench.md §4); `didcomm` times the
/// DIDComm round trips once the follower is ready.
async fn lead_on(
    mut s: SessionStream,
    run: &str,
    rounds: u32,
    bytes: u64,
    limit: Duration,
    progress: &Progress,
    didcomm: impl std::future::Future<Output = anyhow::Result<Vec<Duration>>>,
) -> anyhow::Result<Measured> {
    s.write_all(TAG_BENCH).await?;
    send(
        &mut s,
        &Control::Params {
            version: VERSION,
            run: run.to_owned(),
            rounds,
            bytes,
        },
    )
    .await?;
    match recv(&mut s, limit, "its answer to our settings").await? {
        Control::Ready => {}
        other => return Err(unexpected(&other, "ready").into()),
    }

    progress.line(&format!(
        "DIDComm round trips: 1 warm-up + {rounds} through both mediators"
    ));
    let didcomm = didcomm.await?;

    progress.line(&format!(
        "session round trips: 1 warm-up + {rounds} of {RTT_BYTES} B"
    ));
    send(
        &mut s,
        &Control::Rtt {
            rounds,
            size: RTT_BYTES,
        },
    )
    .await?;
    let mut session = Vec::new();
    let mut back = [0u8; RTT_BYTES];
    for seq in 0..=rounds {
        let mut ping = [0u8; RTT_BYTES];
        ping[..4].copy_from_slice(&seq.to_be_bytes());
        let t = Instant::now();
        s.write_all(&ping).await?;
        read_exact(&mut s, &mut back, limit, "a session echo").await?;
        if back != ping {
            return Err(
                BenchError::Protocol("the session echo differs from our ping".into()).into(),
            );
        }
        if seq > 0 {
            session.push(t.elapsed());
        }
    }

    let what = "throughput, us → peer";
    send(&mut s, &Control::Bulk { bytes }).await?;
    let t = Instant::now();
    send_bulk(&mut s, bytes, progress, what).await?;
    match recv(&mut s, limit, "its receipt of our bytes").await? {
        Control::Got { bytes: n } if n == bytes => {}
        other => return Err(unexpected(&other, "got").into()),
    }
    let up = Transfer::new(bytes, t.elapsed().as_secs_f64());
    progress.line(&format!("{what}: {:.1} MiB/s", up.mib_per_s));

    let what = "throughput, peer → us";
    send(&mut s, &Control::Send { bytes }).await?;
    match recv(&mut s, limit, "its bytes").await? {
        Control::Bulk { bytes: n } if n == bytes => {}
        other => return Err(unexpected(&other, "bulk").into()),
    }
    recv_bulk(&mut s, bytes, limit, progress, what).await?;
    send(&mut s, &Control::Got { bytes }).await?;
    let down = match recv(&mut s, limit, "its send time").await? {
        Control::Timed { seconds } if seconds.is_finite() && seconds > 0.0 => {
            Transfer::new(bytes, seconds)
        }
        other => return Err(unexpected(&other, "timed").into()),
    };

    let measured = Measured {
        didcomm_rtt_ms: Stats::of(didcomm),
        session_rtt_ms: Stats::of(session),
        leader_to_follower: up,
        follower_to_leader: down,
    };
    send(
        &mut s,
        &Control::Results {
            measured: measured.clone(),
        },
    )
    .await?;
    match recv(&mut s, limit, "its last answer").await? {
        Control::Done => {}
        other => return Err(unexpected(&other, "done").into()),
    }
    s.shutdown().await?;
    Ok(measured)
}

/// One timed DIDComm round trip: ping `seq` to `peer`, wait for its pong (others are
/// ignored with a log line).
async fn didcomm_ping(
    agent: &Agent,
    peer: &str,
    run: &str,
    seq: u32,
    inbox: &mut mpsc::Receiver<Inbound>,
    limit: Duration,
    me: &str,
) -> anyhow::Result<()> {
    let ping = message(PING_TYPE, json!({ "run": run, "seq": seq }));
    agent.send(peer, ping).await?;
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let m = match tokio::time::timeout_at(deadline, inbox.recv()).await {
            Ok(Some(m)) => m,
            Ok(None) => anyhow::bail!("our control plane stopped"),
            Err(_) => {
                return Err(BenchError::NoAnswer {
                    peer: peer.to_owned(),
                    me: me.to_owned(),
                    what: format!("DIDComm ping {seq} (through its mediator and ours)"),
                    secs: limit.as_secs(),
                }
                .into())
            }
        };
        if m.sender.as_deref() == Some(peer)
            && m.message.type_ == PONG_TYPE
            && m.message.body.get("run").and_then(Value::as_str) == Some(run)
            && m.message.body.get("seq").and_then(Value::as_u64) == Some(u64::from(seq))
        {
            return Ok(());
        }
        tracing::info!(
            r#type = %m.message.type_,
            sender = ?m.sender,
            "bench: ignored a DIDComm message that is not the pong of ping {seq} of run {run}"
        );
    }
}

/// The follower's side (spec/bench.md §4): the bench stream, and pongs for the leader's
/// DIDComm pings from `ready` on.
async fn follow(
    o: &Opened,
    inbox: mpsc::Receiver<Inbound>,
    a: &PeerBenchArgs,
    limit: Duration,
    progress: &Progress,
) -> anyhow::Result<(Measured, u32)> {
    let (agent, peer, run) = (
        o.connector.agent().clone(),
        o.est.peer.clone(),
        o.est.session_id.clone(),
    );
    let pongs =
        move |rounds| AbortOnDrop(tokio::spawn(answer_pings(agent, inbox, peer, run, rounds)));
    let who = Who {
        run: &o.est.session_id,
        peer: &o.est.peer,
        me: &o.me.did,
    };
    follow_on(
        &o.est.handle,
        &who,
        (a.rounds, a.bytes),
        limit,
        progress,
        pongs,
    )
    .await
}

/// The run and the two parties, for [`follow_on`].
struct Who<'a> {
    run: &'a str,
    peer: &'a str,
    me: &'a str,
}

/// The follower's protocol on the leader's bench stream (spec/bench.md §4);
/// `start_pongs(rounds)` starts answering DIDComm pings (until the guard drops). `ours`:
/// our own `--rounds`, `--bytes` (the leader's win).
async fn follow_on(
    handle: &SessionHandle,
    who: &Who<'_>,
    ours: (u32, u64),
    limit: Duration,
    progress: &Progress,
    start_pongs: impl FnOnce(u32) -> AbortOnDrop,
) -> anyhow::Result<(Measured, u32)> {
    let (run, peer) = (who.run.to_owned(), who.peer.to_owned());
    let mut s = tokio::time::timeout(limit, handle.accept_stream())
        .await
        .map_err(|_| BenchError::NoAnswer {
            peer: peer.clone(),
            me: who.me.to_owned(),
            what: "with its bench stream".into(),
            secs: limit.as_secs(),
        })?
        .ok_or_else(|| anyhow::anyhow!("the session ended ({})", describe(&handle.state())))?;
    let mut tag = [0u8; 8];
    read_exact(&mut s, &mut tag, limit, "the stream preamble").await?;
    if &tag != TAG_BENCH {
        let theirs = match &tag {
            t if t == crate::cmd::pipe::TAG_PIPE => "`mpc-did pipe`",
            t if t == crate::cmd::pipe::TAG_PING => "`mpc-did session connect`",
            _ => "an unknown program",
        };
        anyhow::bail!("the peer runs {theirs}; both sides must run `mpc-did bench peer`");
    }
    let (rounds, bytes) = match recv(&mut s, limit, "its settings").await? {
        Control::Params {
            version,
            run: r,
            rounds,
            bytes,
        } => {
            if version != VERSION {
                return Err(BenchError::Protocol(format!(
                    "it speaks bench version {version}, we speak {VERSION}"
                ))
                .into());
            }
            if r != run {
                return Err(BenchError::Protocol(format!(
                    "its run id {r} is not our session id {run}"
                ))
                .into());
            }
            if !(1..=1000).contains(&rounds) || !(1..=MAX_BYTES).contains(&bytes) {
                return Err(BenchError::Protocol(format!(
                    "settings out of range: {rounds} rounds, {bytes} bytes"
                ))
                .into());
            }
            (rounds, bytes)
        }
        other => return Err(unexpected(&other, "params").into()),
    };
    if (rounds, bytes) != ours {
        progress.line(&format!(
            "using the leader's settings: --rounds {rounds} --bytes {bytes}"
        ));
    }
    let _pongs = start_pongs(rounds);
    send(&mut s, &Control::Ready).await?;
    progress.line("answering the leader's DIDComm pings");

    // The leader's DIDComm phase: up to 1 + rounds round trips of at most `limit` each.
    let phase = limit.saturating_mul(rounds.saturating_add(2));
    match recv(&mut s, phase, "the session round trips").await? {
        Control::Rtt { rounds: n, size } if n == rounds && size == RTT_BYTES => {}
        other => return Err(unexpected(&other, "rtt").into()),
    }
    progress.line("echoing the leader's session round trips");
    let mut buf = [0u8; RTT_BYTES];
    for _ in 0..=rounds {
        read_exact(&mut s, &mut buf, limit, "a session ping").await?;
        s.write_all(&buf).await?;
    }

    let what = "throughput, peer → us";
    match recv(&mut s, limit, "its bytes").await? {
        Control::Bulk { bytes: n } if n == bytes => {}
        other => return Err(unexpected(&other, "bulk").into()),
    }
    recv_bulk(&mut s, bytes, limit, progress, what).await?;
    send(&mut s, &Control::Got { bytes }).await?;

    let what = "throughput, us → peer";
    match recv(&mut s, limit, "its request for our bytes").await? {
        Control::Send { bytes: n } if n == bytes => {}
        other => return Err(unexpected(&other, "send").into()),
    }
    send(&mut s, &Control::Bulk { bytes }).await?;
    let t = Instant::now();
    send_bulk(&mut s, bytes, progress, what).await?;
    match recv(&mut s, limit, "its receipt of our bytes").await? {
        Control::Got { bytes: n } if n == bytes => {}
        other => return Err(unexpected(&other, "got").into()),
    }
    let seconds = t.elapsed().as_secs_f64();
    progress.line(&format!(
        "{what}: {:.1} MiB/s",
        Transfer::new(bytes, seconds).mib_per_s
    ));
    send(&mut s, &Control::Timed { seconds }).await?;

    let measured = match recv(&mut s, limit, "the results").await? {
        Control::Results { measured } => measured,
        other => return Err(unexpected(&other, "results").into()),
    };
    send(&mut s, &Control::Done).await?;
    s.shutdown().await?;
    // The leader's FIN: nothing may follow `results`.
    let mut rest = [0u8; 1];
    let n = tokio::time::timeout(limit, s.read(&mut rest))
        .await
        .map_err(|_| BenchError::Protocol("no end of stream after the results".into()))??;
    if n != 0 {
        return Err(BenchError::Protocol("data after the results".into()).into());
    }
    Ok((measured, rounds))
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The follower's DIDComm side: a pong for each ping of this run from the leader, at most
/// `1 + rounds`; anything else is ignored with a log line.
async fn answer_pings(
    agent: Agent,
    mut inbox: mpsc::Receiver<Inbound>,
    peer: String,
    run: String,
    rounds: u32,
) {
    let mut answered = 0u32;
    while let Some(m) = inbox.recv().await {
        let seq = m.message.body.get("seq").and_then(Value::as_u64);
        let ok = m.sender.as_deref() == Some(peer.as_str())
            && m.message.type_ == PING_TYPE
            && m.message.body.get("run").and_then(Value::as_str) == Some(run.as_str())
            && seq.is_some_and(|s| s <= u64::from(rounds))
            && answered <= rounds;
        let Some(seq) = seq.filter(|_| ok) else {
            tracing::info!(
                r#type = %m.message.type_,
                sender = ?m.sender,
                "bench: ignored a DIDComm message that is no ping of run {run} from {peer}"
            );
            continue;
        };
        let pong = message(PONG_TYPE, json!({ "run": run, "seq": seq })).thid(m.message.id);
        if let Err(e) = agent.send(&peer, pong).await {
            // The leader times out on this ping and says so; nothing to add here.
            tracing::warn!("bench: cannot send the pong of ping {seq}: {e}");
        }
        answered += 1;
    }
}

fn unexpected(got: &Control, wanted: &str) -> BenchError {
    let name = serde_json::to_value(got)
        .ok()
        .and_then(|v| v.get("type").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| "?".into());
    BenchError::Protocol(format!(
        "expected `{wanted}`, got `{name}` (or other values)"
    ))
}

async fn send(s: &mut SessionStream, c: &Control) -> anyhow::Result<()> {
    let body = serde_json::to_vec(c)?;
    let len = u32::try_from(body.len())?;
    s.write_all(&len.to_be_bytes()).await?;
    s.write_all(&body).await?;
    Ok(())
}

async fn recv(s: &mut SessionStream, limit: Duration, what: &str) -> anyhow::Result<Control> {
    let mut len = [0u8; 4];
    read_exact(s, &mut len, limit, what).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_CONTROL {
        return Err(BenchError::Protocol(format!("a control message of {len} bytes")).into());
    }
    let mut body = vec![0u8; len];
    read_exact(s, &mut body, limit, what).await?;
    serde_json::from_slice(&body)
        .map_err(|e| BenchError::Protocol(format!("a malformed control message: {e}")).into())
}

/// Read exactly `buf.len()` bytes, waiting at most `limit`.
async fn read_exact(
    s: &mut SessionStream,
    buf: &mut [u8],
    limit: Duration,
    what: &str,
) -> anyhow::Result<()> {
    match tokio::time::timeout(limit, s.read_exact(buf)).await {
        Err(_) => anyhow::bail!(
            "the peer sent nothing for {} s (waiting for {what})",
            limit.as_secs()
        ),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            Err(BenchError::Protocol(format!("the stream ended while waiting for {what}")).into())
        }
        Ok(Err(e)) => Err(anyhow::Error::new(e).context(format!("waiting for {what}"))),
        Ok(Ok(_)) => Ok(()),
    }
}

async fn send_bulk(
    s: &mut SessionStream,
    bytes: u64,
    progress: &Progress,
    what: &str,
) -> anyhow::Result<()> {
    let chunk = vec![0x5a; CHUNK];
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < bytes {
        let n = usize::try_from((bytes - sent).min(CHUNK as u64)).unwrap_or(CHUNK);
        s.write_all(chunk.get(..n).unwrap_or_default()).await?;
        sent += n as u64;
        progress.bytes(what, sent, bytes, start);
    }
    Ok(())
}

async fn recv_bulk(
    s: &mut SessionStream,
    bytes: u64,
    limit: Duration,
    progress: &Progress,
    what: &str,
) -> anyhow::Result<()> {
    let mut buf = vec![0u8; CHUNK];
    let start = Instant::now();
    let mut got = 0u64;
    while got < bytes {
        let want = usize::try_from((bytes - got).min(CHUNK as u64)).unwrap_or(CHUNK);
        let n = match tokio::time::timeout(limit, s.read(buf.get_mut(..want).unwrap_or_default()))
            .await
        {
            Err(_) => anyhow::bail!(
                "{what}: nothing arrived for {} s after {got} of {bytes} bytes",
                limit.as_secs()
            ),
            Ok(r) => r?,
        };
        if n == 0 {
            return Err(BenchError::Protocol(format!(
                "the stream ended after {got} of {bytes} bytes"
            ))
            .into());
        }
        got += n as u64;
        progress.bytes(what, got, bytes, start);
    }
    let t = Transfer::new(bytes, start.elapsed().as_secs_f64());
    progress.line(&format!(
        "{what}: {:.1} MiB/s as received ({bytes} bytes in {:.2} s)",
        t.mib_per_s, t.seconds
    ));
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use mpc_did_driver::DriverConfig;
    use mpc_did_testkit::local::session_pair_with;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    const LIMIT: Duration = Duration::from_secs(10);

    /// A proposer (did:example:a, the leader) and an acceptor over loopback TCP.
    async fn pair() -> (SessionHandle, SessionHandle) {
        session_pair_with(
            "did:example:a",
            "did:example:b",
            DriverConfig::default(),
            |t| Box::new(t),
        )
        .await
        .unwrap()
    }

    fn progress() -> Progress {
        Progress {
            tty: false,
            last: std::sync::Mutex::new(Instant::now()),
        }
    }

    const WHO: Who<'static> = Who {
        run: "run-1",
        peer: "did:example:a",
        me: "did:example:b",
    };

    fn no_pongs(_: u32) -> AbortOnDrop {
        AbortOnDrop(tokio::spawn(async {}))
    }

    /// A control message as spec/bench.md §4 frames it.
    fn frame(json: &str) -> Vec<u8> {
        let mut v = u32::try_from(json.len()).unwrap().to_be_bytes().to_vec();
        v.extend_from_slice(json.as_bytes());
        v
    }

    // spec/bench.md §4: every phase between the real leader and the real follower over a
    // real session; the follower uses the leader's settings, starts its pongs with them, and
    // ends with the leader's measurements.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn leader_and_follower_run_every_phase() {
        let (a, b) = pair().await;
        let p = progress();
        let started = Arc::new(AtomicU32::new(0));
        let st = started.clone();
        let s = a.open_stream().await.unwrap();
        // The DIDComm phase needs mediators (tests/bench_peer.rs); here it reports 3 samples.
        let didcomm = async { Ok(vec![Duration::from_millis(7); 3]) };
        let (l, f) = tokio::join!(
            lead_on(s, "run-1", 3, 300_000, LIMIT, &p, didcomm),
            follow_on(&b, &WHO, (20, 64 << 20), LIMIT, &p, |r| {
                st.store(r, Ordering::SeqCst);
                no_pongs(r)
            })
        );
        let l = l.unwrap();
        let (f, rounds) = f.unwrap();
        assert_eq!(rounds, 3);
        assert_eq!(started.load(Ordering::SeqCst), 3);
        assert_eq!(l.session_rtt_ms.samples, 3);
        assert!(l.session_rtt_ms.min > 0.0);
        assert!((l.didcomm_rtt_ms.median - 7.0).abs() < 1e-9);
        for t in [&l.leader_to_follower, &l.follower_to_leader] {
            assert_eq!(t.bytes, 300_000);
            assert!(t.seconds > 0.0 && t.mib_per_s > 0.0);
        }
        assert_eq!(
            serde_json::to_value(&f).unwrap(),
            serde_json::to_value(&l).unwrap(),
            "the follower reports what the leader measured"
        );
    }

    // spec/bench.md §3, §4: `params` of another run (a stale stream) is refused.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn follower_refuses_another_run() {
        let (a, b) = pair().await;
        let mut s = a.open_stream().await.unwrap();
        s.write_all(TAG_BENCH).await.unwrap();
        s.write_all(&frame(
            r#"{"type":"params","version":1,"run":"run-0","rounds":3,"bytes":10}"#,
        ))
        .await
        .unwrap();
        let err = follow_on(&b, &WHO, (3, 10), LIMIT, &progress(), no_pongs)
            .await
            .unwrap_err();
        assert!(
            matches!(err.downcast_ref(), Some(BenchError::Protocol(m)) if m.contains("run id")),
            "{err:#}"
        );
    }

    // spec/bench.md §4: an oversized or malformed control message is a protocol error at
    // once, not a hang or an allocation of its claimed size.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bad_control_messages_are_protocol_errors() {
        for bad in [
            u32::MAX.to_be_bytes().to_vec(),
            frame(r#"{"type":"params","version":1}"#),
            frame(r#"{"type":"launch-missiles"}"#),
            frame(r#"{"type":"done"}"#),
        ] {
            let (a, b) = pair().await;
            let mut s = a.open_stream().await.unwrap();
            s.write_all(TAG_BENCH).await.unwrap();
            s.write_all(&bad).await.unwrap();
            let err = follow_on(&b, &WHO, (3, 10), LIMIT, &progress(), no_pongs)
                .await
                .unwrap_err();
            assert!(
                matches!(err.downcast_ref(), Some(BenchError::Protocol(_))),
                "{err:#}"
            );
        }
    }

    // spec/bench.md §4: a peer running another command is named.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn follower_names_a_peer_running_session_connect() {
        let (a, b) = pair().await;
        let mut s = a.open_stream().await.unwrap();
        s.write_all(crate::cmd::pipe::TAG_PING).await.unwrap();
        let err = follow_on(&b, &WHO, (3, 10), LIMIT, &progress(), no_pongs)
            .await
            .unwrap_err();
        assert!(
            format!("{err:#}").contains("`mpc-did session connect`"),
            "{err:#}"
        );
    }

    // spec/bench.md §5: a follower that never answers `params` ends the leader's wait
    // after the limit, with what it waited for.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn leader_gives_up_on_a_silent_follower() {
        let (a, _b) = pair().await;
        let s = a.open_stream().await.unwrap();
        let t = Instant::now();
        let err = lead_on(
            s,
            "run-1",
            3,
            10,
            Duration::from_secs(1),
            &progress(),
            async { Ok(Vec::new()) },
        )
        .await
        .unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(5));
        assert!(
            format!("{err:#}").contains("sent nothing for 1 s"),
            "{err:#}"
        );
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("500KiB"), Ok(500 << 10));
        assert_eq!(parse_size("1000000"), Ok(1_000_000));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert!(parse_size("0").is_err());
        assert!(parse_size("17GiB").is_err());
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("").is_err());
    }

    #[test]
    fn stats_nearest_rank() {
        let d: Vec<Duration> = (1..=10).map(Duration::from_millis).collect();
        let s = Stats::of(d);
        assert_eq!(s.samples, 10);
        assert!((s.min - 1.0).abs() < 1e-9 && (s.max - 10.0).abs() < 1e-9);
        assert!((s.median - 5.0).abs() < 1e-9, "{}", s.median);
        assert!((s.p90 - 9.0).abs() < 1e-9, "{}", s.p90);
    }

    #[test]
    fn invalid_dids_are_typed_errors() {
        for bad in ["bob", "did:", "did:key:zNotAKey", "did:Key:z6Mk"] {
            assert!(
                matches!(check_did(bad), Err(BenchError::InvalidDid { .. })),
                "{bad}"
            );
        }
        let good = mpc_did_resolver::key::did_from_ed25519(&[9; 32]);
        check_did(&good).unwrap();
    }
}
