//! `mpc-did session connect DID`, `mpc-did session list`, and the session setup shared with
//! `mpc-did pipe` (spec/session.md §2).
//!
//! Both sides run a command naming the other. The bytewise smaller DID proposes, the other
//! accepts (spec/session.md §2 "Who proposes"); the session is bound to the pair of DIDs
//! ([`Binding::adhoc`]). A did:key peer's document names no endpoint, so its mediator
//! comes from `--peer-mediator URL` or the wallet contact (see `agent_ctx::learn_peer`).
//!
//! Sessions live as long as the command that made them. `session list` therefore shows
//! the session *log* of this wallet: every `connect`/`pipe` run records its session when
//! it is up (state `open`, with the process id) and again when it ends (final state, bytes
//! moved). An `open` entry whose process is gone is shown as `interrupted`.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use mpc_did_connect::{Binding, Connector, ConnectorConfig, Established, PathInfo};
use mpc_did_driver::{path, CLOSE_PARTY_FAILED};
use mpc_did_wallet::Wallet;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;

use crate::cmd::agent_ctx::{
    learn_peer, open_agent, start_connector, AgentIdentity, PathArgs, PeerSource,
};
use crate::cmd::pipe::{describe, ping_exchange};
use crate::ctx::Ctx;

/// Wallet setting holding the session log (a JSON array, newest last).
const LOG_KEY: &str = "sessions.log";
/// Entries kept in the log.
const LOG_MAX: usize = 100;

#[derive(clap::Subcommand, Debug)]
pub enum SessionCommand {
    /// Open a secure session with DID (run it on both sides), print the path, the setup
    /// time and the round-trip time measured over the session.
    ///
    /// Example: mpc-did session connect did:key:z6Mk… --peer-mediator https://m.example.org
    Connect {
        #[command(flatten)]
        peer: PeerArgs,
        /// Ping-pong round trips to measure.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
        rounds: u32,
    },
    /// Show the sessions recorded by recent `session connect` / `pipe` runs of this wallet.
    List {
        /// Most recent entries to show.
        #[arg(long, default_value_t = 20)]
        last: usize,
    },
}

/// How to reach a peer and how to set the session up; shared by `session connect` and
/// `pipe`.
#[derive(clap::Args, Debug, Clone)]
pub struct PeerArgs {
    /// The peer's DID.
    pub did: String,
    /// The peer's mediator (invitation or base URL), if the wallet does not know it.
    #[arg(long, value_name = "URL")]
    pub peer_mediator: Option<String>,
    /// Our identity [default: the default identity].
    #[arg(long = "id", value_name = "NAME")]
    pub identity: Option<String>,
    /// Direct-path TCP listener.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:0")]
    pub listen: SocketAddr,
    /// Address to announce as our direct-path candidate (repeatable) [default: the
    /// listener's, or loopback and the interface towards our mediator].
    #[arg(long, value_name = "ADDR")]
    pub advertise: Vec<SocketAddr>,
    /// Seconds to wait for the peer at each negotiation step.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub timeout: u64,
    /// Seconds the session may be without a working path (a relay restart, a network
    /// change) before it fails (spec/session.md §7.4).
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub resume_timeout: u64,
    #[command(flatten)]
    pub paths: PathArgs,
}

/// A session that is up, and what the CLI knows about it.
pub struct Opened {
    pub connector: Connector,
    pub est: Established,
    pub me: AgentIdentity,
    pub proposer: bool,
    pub source: PeerSource,
}

/// Start our control plane, learn the peer's endpoint and establish the session.
///
/// # Errors
/// Wallet, mediator or peer problems; the peer did not answer in time; no path.
pub async fn open(ctx: &Ctx, args: &PeerArgs) -> anyhow::Result<Opened> {
    let (agent, me) = open_agent(ctx, args.identity.as_deref()).await?;
    anyhow::ensure!(
        me.did != args.did,
        "cannot open a session with ourselves ({})",
        me.did
    );
    let source = learn_peer(ctx, &agent, &args.did, args.peer_mediator.as_deref()).await?;
    let base = ConnectorConfig {
        listen: args.listen,
        advertise: args.advertise.clone(),
        handshake_timeout: Duration::from_secs(args.timeout.max(1)),
        driver: mpc_did_driver::DriverConfig {
            resume_timeout: Duration::from_secs(args.resume_timeout.max(1)),
            ..mpc_did_driver::DriverConfig::default()
        },
        ..ConnectorConfig::default()
    };
    let connector =
        start_connector(ctx, args.identity.as_deref(), &agent, &args.paths, base).await?;
    // spec/session.md §2: the bytewise smaller DID proposes.
    let proposer = me.did.as_bytes() < args.did.as_bytes();
    let binding = Binding::adhoc(&me.did, &args.did);
    let est = connector
        .establish(&args.did, &binding, proposer)
        .await
        .with_context(|| format!("no session with {}", args.did))?;
    Ok(Opened {
        connector,
        est,
        me,
        proposer,
        source,
    })
}

/// Force a path switch (test/debug): dial the peer's direct-path listener again and move
/// the session onto the new connection (spec/session.md §7 resumption). Only the proposer
/// knows the peer's address.
///
/// # Errors
/// We accepted the session (no peer address), or the new connection failed.
pub async fn switch_path(est: &Established) -> anyhow::Result<()> {
    let remote = match &est.path {
        PathInfo::Direct { remote: Some(a) } => *a,
        other => anyhow::bail!(
            "cannot force a path switch on {other}: only the proposing side of a direct \
             path can (the smaller DID)"
        ),
    };
    let mut tcp = TcpStream::connect(remote)
        .await
        .with_context(|| format!("redialing {remote} failed"))?;
    tcp.set_nodelay(true)?;
    path::send_hello(&mut tcp, &est.handle.path_id()).await?;
    est.handle
        .attach_path_as(
            Box::new(tcp),
            Some(PathInfo::Direct {
                remote: Some(remote),
            }),
        )
        .await
        .context("attaching the new path failed")?;
    Ok(())
}

/// The session's state once it is over (our CLOSE is processed asynchronously); the
/// current state if that takes longer than a second.
pub async fn final_state(handle: &mpc_did_driver::SessionHandle) -> mpc_did_driver::SessionState {
    tokio::time::timeout(Duration::from_secs(1), handle.ended())
        .await
        .unwrap_or_else(|_| handle.state())
}

/// One entry of the session log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogEntry {
    pub session_id: String,
    pub me: String,
    pub peer: String,
    /// `connect`, `pipe` or `run`.
    pub command: String,
    /// `proposer` or `acceptor` (`party` for the sessions of `run`).
    pub role: String,
    pub path: String,
    pub setup_ms: f64,
    /// `open` while the command runs, else the final state.
    pub state: String,
    pub pid: u32,
    /// Unix seconds.
    pub started: u64,
    #[serde(default)]
    pub ended: Option<u64>,
    #[serde(default)]
    pub rtt_ms: Option<f64>,
    #[serde(default)]
    pub sent: Option<u64>,
    #[serde(default)]
    pub received: Option<u64>,
    /// The session, while this process runs it: each write of the entry records the path
    /// the session is on now (it changes on a relay -> direct upgrade, spec/session.md §7.5).
    #[serde(skip)]
    pub handle: Option<mpc_did_driver::SessionHandle>,
}

impl LogEntry {
    #[must_use]
    pub fn new(o: &Opened, command: &str) -> Self {
        Self {
            session_id: o.est.session_id.clone(),
            me: o.me.did.clone(),
            peer: o.est.peer.clone(),
            command: command.to_owned(),
            role: if o.proposer { "proposer" } else { "acceptor" }.to_owned(),
            path: path_text(&o.est.path),
            setup_ms: ms(o.est.setup),
            state: "open".into(),
            pid: std::process::id(),
            started: now(),
            ended: None,
            rtt_ms: None,
            sent: None,
            received: None,
            handle: Some(o.est.handle.clone()),
        }
    }
}

/// How a path is shown in the log and by `session connect`: its kind first.
#[must_use]
pub fn path_text(p: &PathInfo) -> String {
    format!("{}: {p}", p.kind())
}

/// Keeps the wallet's session log up to date with the session's path while the command
/// runs; stops on drop (before the command writes the entry's final state).
pub struct PathTracker(tokio::task::JoinHandle<()>);

impl Drop for PathTracker {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Rewrite `entry` in the log each time its session changes path.
#[must_use]
pub fn track_path(ctx: &Ctx, entry: &LogEntry) -> Option<PathTracker> {
    let handle = entry.handle.clone()?;
    let (ctx, entry) = (ctx.clone(), entry.clone());
    Some(PathTracker(tokio::spawn(async move {
        let mut w = handle.watch_path();
        let mut shown = entry.path.clone();
        while w.changed().await.is_ok() {
            let now = {
                let p = w.borrow_and_update();
                p.current.clone()
            };
            // Only a new working path is news; a break is followed by a reconnection.
            if let Some(p) = now {
                let text = path_text(&p);
                if text != shown {
                    shown.clone_from(&text);
                    let (ctx, entry) = (ctx.clone(), entry.clone());
                    // The wallet is a blocking store.
                    let _ = tokio::task::spawn_blocking(move || log_session(&ctx, &entry)).await;
                }
            }
        }
    })))
}

/// Add or replace (same session id and pid) an entry in the wallet's session log. A log
/// that cannot be written is reported on stderr, never fatal: the session matters more.
pub fn log_session(ctx: &Ctx, entry: &LogEntry) {
    log_sessions(ctx, std::slice::from_ref(entry));
}

/// Records several sessions with one read and write of the log (one wallet open).
pub fn log_sessions(ctx: &Ctx, entries: &[LogEntry]) {
    if let Err(e) = try_log(ctx, entries) {
        eprintln!("mpc-did: warning: cannot record the session in the wallet: {e:#}");
    }
}

fn try_log(ctx: &Ctx, entries: &[LogEntry]) -> anyhow::Result<()> {
    let wallet = Wallet::open_with_wait(&ctx.home, Duration::from_secs(10))?;
    let mut log = read_log(&wallet)?;
    for entry in entries {
        log.retain(|e| !(e.session_id == entry.session_id && e.pid == entry.pid));
        let mut entry = entry.clone();
        if let Some(h) = &entry.handle {
            let p = h.path();
            if let Some(p) = p.current.or(p.last) {
                entry.path = path_text(&p);
            }
        }
        log.push(entry);
    }
    let skip = log.len().saturating_sub(LOG_MAX);
    let log: Vec<_> = log.into_iter().skip(skip).collect();
    wallet.set_setting(LOG_KEY, &serde_json::to_string(&log)?)?;
    Ok(())
}

fn read_log(wallet: &Wallet) -> anyhow::Result<Vec<LogEntry>> {
    Ok(match wallet.setting(LOG_KEY)? {
        Some(s) => serde_json::from_str(&s).context("the session log in the wallet is corrupt")?,
        None => Vec::new(),
    })
}

pub async fn run(ctx: &Ctx, cmd: SessionCommand) -> anyhow::Result<()> {
    match cmd {
        SessionCommand::Connect { peer, rounds } => connect(ctx, &peer, rounds).await,
        SessionCommand::List { last } => list(ctx, last),
    }
}

async fn connect(ctx: &Ctx, args: &PeerArgs, rounds: u32) -> anyhow::Result<()> {
    let o = open(ctx, args).await?;
    let mut entry = LogEntry::new(&o, "connect");
    log_session(ctx, &entry);
    let tracker = track_path(ctx, &entry);
    let result = ping_exchange(&o.est.handle, rounds).await;
    drop(tracker);
    entry.state = describe(&final_state(&o.est.handle).await);
    entry.ended = Some(now());
    let mut rtts = match result {
        Ok(r) => r,
        Err(e) => {
            // Tell the peer at once instead of leaving it to time out.
            o.est
                .handle
                .close(CLOSE_PARTY_FAILED, &crate::cmd::pipe::short_reason(&e))
                .await;
            entry.state = format!("error: {e:#}");
            log_session(ctx, &entry);
            return Err(e.context("measuring the round-trip time failed"));
        }
    };
    rtts.sort();
    let (min, median, max) = (
        rtts.first().copied().unwrap_or_default(),
        rtts.get(rtts.len() / 2).copied().unwrap_or_default(),
        rtts.last().copied().unwrap_or_default(),
    );
    entry.rtt_ms = Some(ms(median));
    log_session(ctx, &entry);
    let role = if o.proposer { "proposer" } else { "acceptor" };
    if ctx.json {
        println!(
            "{}",
            serde_json::json!({
                "session_id": o.est.session_id,
                "me": o.me.did,
                "identity": o.me.name,
                "peer": o.est.peer,
                "role": role,
                "peer_endpoint_from": o.source,
                "path": path_json(&o.est.path),
                "setup_ms": ms(o.est.setup),
                "rtt_ms": { "min": ms(min), "median": ms(median), "max": ms(max), "samples": rtts.len() },
                "state": entry.state,
            })
        );
    } else {
        println!(
            "session {} with {} (we are the {role})",
            o.est.session_id, o.est.peer
        );
        println!("  path:  {}", path_text(&o.est.path));
        println!("  setup: {:.1} ms", ms(o.est.setup));
        println!(
            "  rtt:   median {:.2} ms (min {:.2}, max {:.2}; {} round trips)",
            ms(median),
            ms(min),
            ms(max),
            rtts.len()
        );
    }
    drop(o.connector);
    Ok(())
}

fn list(ctx: &Ctx, last: usize) -> anyhow::Result<()> {
    let log = {
        let wallet = Wallet::open_with_wait(&ctx.home, Duration::from_secs(10))?;
        read_log(&wallet)?
    };
    let skip = log.len().saturating_sub(last);
    let mut shown: Vec<LogEntry> = log.into_iter().skip(skip).collect();
    for e in &mut shown {
        if e.state == "open" && !process_alive(e.pid) {
            e.state = "interrupted".into();
        }
    }
    if ctx.json {
        println!("{}", serde_json::to_string(&shown)?);
        return Ok(());
    }
    if shown.is_empty() {
        println!("no sessions recorded (run `mpc-did session connect DID` or `mpc-did pipe DID`)");
        return Ok(());
    }
    for e in &shown {
        let mut extra = String::new();
        if let Some(r) = e.rtt_ms {
            extra.push_str(&format!(", rtt {r:.2} ms"));
        }
        if let (Some(s), Some(r)) = (e.sent, e.received) {
            extra.push_str(&format!(", sent {s} B, received {r} B"));
        }
        println!(
            "{} {} {} with {} ({}), {}, setup {:.1} ms{extra}: {}",
            e.started,
            e.command,
            short(&e.session_id),
            e.peer,
            e.role,
            e.path,
            e.setup_ms,
            e.state
        );
    }
    Ok(())
}

/// Whether a process still runs (Linux: /proc; elsewhere assume it does, so an entry
/// stays `open` rather than being called interrupted wrongly).
fn process_alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        std::path::Path::new(&format!("/proc/{pid}")).exists()
    } else {
        true
    }
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// The path for `--json`: `kind` is `direct` (TCP), `quic` (QUIC, possibly through NATs)
/// or `relay`.
#[must_use]
pub fn path_json(p: &PathInfo) -> serde_json::Value {
    let text = p.to_string();
    match p {
        PathInfo::Direct { remote } => {
            serde_json::json!({ "kind": p.kind(), "remote": remote.map(|a| a.to_string()), "text": text })
        }
        PathInfo::Quic { remote } => {
            serde_json::json!({ "kind": p.kind(), "remote": remote.to_string(), "text": text })
        }
        PathInfo::Relayed { relay } => {
            serde_json::json!({ "kind": p.kind(), "relay": relay, "text": text })
        }
    }
}

#[must_use]
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}
