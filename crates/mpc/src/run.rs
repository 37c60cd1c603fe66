//! Running a party of an MPC session: check the program against the roster, establish a
//! secure session with every other party (the lower party id proposes, spec/lobby.md §1),
//! bind the local MPyC proxy, and run the unmodified program with the proxy's `-M/-I/-P`
//! arguments.
//!
//! Nothing outlives a run: the program runs in its own process group and is stopped with
//! it (an interrupt is forwarded, then SIGKILL after a grace period; see
//! `mpc_did_proxy::launch`); the proxy and the session listener are in-process sockets;
//! nothing is written to disk.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mpc_did_agent::{Agent, AgentConfig, Hold, Inbound, LOBBY_PREFIX, SESSION_PREFIX};
use mpc_did_connect::{Binding, Connector, ConnectorConfig, Established, PathInfo};
use mpc_did_didcomm::Message;
use mpc_did_driver::{SessionHandle, CLOSE_DONE, CLOSE_PARTY_FAILED};
use mpc_did_lobby::attempt::{
    Abort, AttemptId, Attempts, Event, Ready, ABORT_TYPE, READY_TYPE, RUN_PREFIX,
};
use mpc_did_lobby::{PartyId, Roster};
use mpc_did_proxy::launch::{run_program, Output, Program, RunOutcome};
use mpc_did_proxy::{Proxy, ProxyConfig};
use mpc_did_resolver::Did;
use mpc_did_session::SessionId;
use mpc_did_wallet::Identity;
use mpc_did_wallet::MpcSessions;

use crate::lobby::learn;
use crate::party::{registered_client, start_connector, PathPolicy};
use crate::{read_program, MpcError, PartyTransport, Progress};

mod didcomm;
pub use didcomm::RunTransport;

/// How long the program gets after an interrupt before it is killed.
const GRACE: Duration = Duration::from_secs(3);

/// One secure session as it came up.
#[derive(Debug, Clone)]
pub struct SessionUp {
    /// The peer's party id.
    pub peer_id: PartyId,
    /// The peer's DID.
    pub peer: Did,
    /// The secure session's id (not the MPC session's).
    pub session_id: SessionId,
    /// The path it came up on.
    pub path: PathInfo,
    /// From the first negotiation message to a connected path.
    pub setup: Duration,
}

/// What to run, and how (see [`run_party`]).
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// MPC session id or unique prefix; `None`: the newest.
    pub mpc: Option<String>,
    /// The program file to check against the roster; `None`: found in `command`.
    pub program: Option<PathBuf>,
    /// Direct-path listener address.
    pub listen: SocketAddr,
    /// Limit for the wait for every peer: its run to start and its secure session,
    /// together (a negotiation under way then gets at most 10 s more).
    pub connect_timeout: Duration,
    /// How long a session may be without a path before it (and the run) fails; with the
    /// DIDComm transport, how long a peer may be silent (spec/didcomm-transport.md §3).
    pub resume_timeout: Duration,
    /// Which paths the secure sessions may use.
    pub paths: PathPolicy,
    /// `python prog.py [args]`; the roster's arguments and MPyC's are appended.
    pub command: Vec<OsString>,
    /// Where the program's output goes.
    pub output: Output,
    /// Sessions (default) or per-message DIDComm through the mediators.
    pub transport: RunTransport,
}

/// How a party's run went.
#[derive(Debug)]
pub struct PartyRun {
    /// Our party id.
    pub me: PartyId,
    /// Our DID (the identity the MPC session was joined with).
    pub my_did: String,
    /// Our sessions, by peer id.
    pub sessions: Vec<SessionUp>,
    /// Time from starting the control plane to all sessions up.
    pub sessions_setup: Duration,
    /// How the program ended.
    pub outcome: RunOutcome,
    /// Wall time of the program.
    pub wall: Duration,
    /// A peer's `abort` that stopped the program (who, why, what next), if any.
    pub aborted_by: Option<String>,
    /// Whether our interrupt (Ctrl-C) stopped the program.
    pub interrupted: bool,
}

/// The program file named in `argv` (the first existing `*.py` argument).
fn find_program(argv: &[OsString]) -> Option<PathBuf> {
    argv.iter()
        .map(PathBuf::from)
        .find(|p| p.extension().is_some_and(|e| e == "py") && p.is_file())
}

/// Everything `mpc-did run` does for the MPC session `spec.mpc` of the wallet at `home`;
/// `progress` gets one line per step. `interrupt` resolving (Ctrl-C) stops the setup, or,
/// once the program runs, is forwarded to it; either way the peers are told.
///
/// Each call is a fresh attempt (spec/lobby.md §8): the program and its interpreter are
/// checked before anything is opened; the parties agree on each other's current attempt
/// (`ready`), bind every secure session to the pair of attempts, and a party that cannot go
/// on sends every peer a signed `abort`.
///
/// # Errors
/// No roster yet, program mismatch (both hashes named), a missing interpreter, a peer
/// unreachable or aborted ([`MpcError::PeerAborted`]), the program cannot be started,
/// interrupted before the program started.
pub async fn run_party<I>(
    home: &Path,
    spec: RunSpec,
    interrupt: I,
    progress: Progress<'_>,
) -> Result<PartyRun, MpcError>
where
    I: Future<Output = ()> + Send + 'static,
{
    let rec = MpcSessions::at(home).load(spec.mpc.as_deref())?;
    let roster = rec.roster.clone().ok_or(MpcError::NoRoster {
        id: rec.id(),
        hint: if rec.coordinator {
            "run `mpc-did mpc host` first"
        } else {
            "`mpc-did mpc join` did not finish"
        },
    })?;
    let me = rec.party.ok_or(MpcError::NoRoster {
        id: rec.id(),
        hint: "the stored roster has no party id: join again",
    })?;
    if now() > roster.expires_time {
        return Err(MpcError::Expired {
            id: roster.mpc_session_id,
            at: roster.expires_time,
        });
    }
    let peers = peers(&roster, me)?;
    // Before any session is opened (issue: a missing interpreter used to be found only
    // after every session was up).
    let preflight = preflight(&roster, spec.program.as_deref(), &spec.command);

    let (id, client) = registered_client(home, Some(&rec.identity))?;
    // Session and run messages may arrive before we subscribe; hold only those from the
    // roster (spec/lobby.md §7): a stranger's cannot crowd them out.
    let senders = || peers.iter().map(|(_, did)| did.to_string());
    // Lobby messages (joins for another MPC session of this identity) are held, not
    // acknowledged, so that the `host` of that session gets them (spec/lobby.md §7);
    // strangers send them, so they are bounded apart from the roster's.
    let config = AgentConfig {
        hold: vec![
            Hold::from_senders(SESSION_PREFIX, senders()),
            Hold::from_senders(RUN_PREFIX, senders()),
            Hold::any_sender(LOBBY_PREFIX),
        ],
        ..AgentConfig::default()
    };
    let agent = Agent::start_with(client, config)
        .await
        .map_err(|e| MpcError::control("cannot connect to your mediator", e))?;
    let control = agent.subscribe(RUN_PREFIX);
    if rec.coordinator {
        // A late join is refused while we run (spec/lobby.md §5 `full`).
        tokio::spawn(crate::lobby::refuse_late_joins(
            agent.clone(),
            roster.clone(),
            |s| tracing::info!("{s}"),
        ));
    }
    let attempts = Attempts::new(&roster, me, AttemptId::random(), now_ms())
        .with_transport(spec.transport.name());
    let started_at = now();
    let (cmd_tx, cmd_rx) = tokio::sync::mpsc::channel(4);
    let (state_tx, state) = tokio::sync::watch::channel(Control::default());
    let ctx = RunCtx {
        agent: agent.clone(),
        roster: roster.clone(),
        me,
        attempt: attempts.mine(),
        commands: cmd_tx,
    };
    // How to reach each peer, before anything is answered (a `ready` answered before its
    // sender's mediator is known would be lost).
    let learnt = async {
        for p in roster.parties.iter().filter(|p| p.id != me) {
            learn(&agent, &p.did, &p.services).await?;
        }
        Ok::<(), MpcError>(())
    }
    .await;
    // The control task lives as long as the run, the telling of late starters included.
    let _stop_control = AbortOnDrop(tokio::spawn(control_loop(
        ctx.clone(),
        attempts,
        control,
        cmd_rx,
        state_tx,
    )));
    record_attempt(home, &ctx, started_at, None);
    let result = async {
        learnt?;
        preflight?;
        run_attempt(&ctx, &id, spec, state.clone(), &peers, interrupt, progress).await
    }
    .await;
    match &result {
        // A peer's abort is not ours to repeat; a run that ended is told by its sessions.
        Ok(_) | Err(MpcError::PeerAborted { .. }) => {}
        Err(e) => {
            ctx.abort_all(code_of(e), &e.to_string(), progress).await;
            let limit = if matches!(e, MpcError::Interrupted) {
                LATE_STARTERS_AFTER_INTERRUPT
            } else {
                LATE_STARTERS
            };
            tell_late_starters(&ctx, state, limit, progress).await;
        }
    }
    agent.stop();
    record_attempt(home, &ctx, started_at, Some(&result));
    result
}

fn now() -> u64 {
    mpc_did_didcomm::message::now()
}

/// Unix time in milliseconds (attempts are told apart to the millisecond, spec/lobby.md §8).
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What `mpc-did mpc status` shows of this attempt (best effort: a run does not fail
/// because its record cannot be written).
fn record_attempt(
    home: &Path,
    ctx: &RunCtx,
    started: u64,
    result: Option<&Result<PartyRun, MpcError>>,
) {
    let store = MpcSessions::at(home);
    let Ok(mut rec) = store.get(&ctx.roster.mpc_session_id) else {
        return;
    };
    let (sessions, outcome) = match result {
        // Under way: `mpc status` shows it while it runs.
        None => (Vec::new(), None),
        Some(Ok(r)) => (
            r.sessions
                .iter()
                .map(|s| (s.peer_id, s.path.to_string()))
                .collect(),
            Some(
                if r.outcome.status.success() && r.outcome.peer_failure.is_none() {
                    "the program succeeded".to_owned()
                } else if let Some(f) = &r.outcome.peer_failure {
                    format!("party {} failed ({})", f.peer, f.reason)
                } else {
                    format!("the program exited with {}", r.outcome.status)
                },
            ),
        ),
        Some(Err(e)) => (Vec::new(), Some(e.to_string())),
    };
    rec.last_attempt = Some(mpc_did_wallet::AttemptRecord {
        attempt: ctx.attempt.to_string(),
        started,
        sessions,
        outcome,
    });
    if let Err(e) = store.save(&rec) {
        tracing::warn!("cannot record the attempt: {e}");
    }
}

/// The `abort` code for one of our own failures (spec/lobby.md §8).
fn code_of(e: &MpcError) -> &'static str {
    match e {
        MpcError::ProgramMismatch { .. } | MpcError::WrongProgram { .. } => "program-mismatch",
        MpcError::Interpreter(_) => "no-interpreter",
        MpcError::Interrupted => "interrupted",
        MpcError::TransportMismatch { .. } => "transport-mismatch",
        MpcError::Session { .. } => "no-session",
        _ => "failed",
    }
}

/// What to tell the user when party `party` aborted with `code`.
fn next_step(party: PartyId, code: &str) -> String {
    match code {
        "program-mismatch" => format!(
            "party {party} must run the roster's program; then every party runs `mpc-did run` again"
        ),
        "transport-mismatch" => {
            "every party must choose the same `mpc-did run --transport`; then every party runs `mpc-did run` again".to_owned()
        }
        "no-interpreter" => format!(
            "party {party} must install or name its Python; then every party runs `mpc-did run` again"
        ),
        _ => "run `mpc-did run` again at every party when all are ready".to_owned(),
    }
}

/// Check the program file against the roster and that the interpreter exists.
fn preflight(
    roster: &Roster,
    program: Option<&Path>,
    command: &[OsString],
) -> Result<(), MpcError> {
    // spec/lobby.md §4 party 5: never run a program whose hash differs from the roster's.
    let file = match program {
        Some(p) => p.to_path_buf(),
        None => find_program(command).ok_or(MpcError::NoProgramFile)?,
    };
    check_program(roster, &file)?;
    let first = command
        .first()
        .ok_or_else(|| MpcError::Launch("no command to run".into()))?;
    if mpc_did_proxy::launch::resolve_program(first).is_none() {
        return Err(MpcError::Interpreter(first.to_string_lossy().into_owned()));
    }
    Ok(())
}

/// What the pieces of one attempt share.
#[derive(Clone)]
struct RunCtx {
    agent: Agent,
    roster: Roster,
    me: PartyId,
    attempt: AttemptId,
    /// To the control task (which owns the attempts' state and sends the `abort`s).
    commands: tokio::sync::mpsc::Sender<Command>,
}

/// What the run asks of its control task.
enum Command {
    /// Send every peer our first `ready` (once the connector listens); `until` is the
    /// run's connect deadline, which bounds the retries of every `ready`.
    Hello { until: tokio::time::Instant },
    /// We stop: send every peer a signed `abort`; `done` says whether all went out.
    Stop {
        code: String,
        reason: String,
        done: tokio::sync::oneshot::Sender<bool>,
    },
}

impl RunCtx {
    /// Tell every peer that our attempt stops (signed, best effort, bounded).
    async fn abort_all(&self, code: &str, reason: &str, progress: Progress<'_>) {
        let (done, sent) = tokio::sync::oneshot::channel();
        let cmd = Command::Stop {
            code: code.to_owned(),
            reason: reason.chars().take(300).collect(),
            done,
        };
        if self.commands.send(cmd).await.is_err() {
            return;
        }
        match tokio::time::timeout(ABORT_SEND_LIMIT + Duration::from_secs(1), sent).await {
            Ok(Ok(true)) => progress(format!(
                "told the other parties that this run stops ({code})"
            )),
            _ => progress("could not tell every party that this run stops".into()),
        }
    }

    /// The roster DID of `party` (empty if it is not in the roster).
    fn did_of(&self, party: PartyId) -> String {
        self.roster
            .party(party)
            .map(|p| p.did.clone())
            .unwrap_or_default()
    }

    /// The error a peer's `abort` (as the control task recorded it) stops this run with.
    fn aborted(&self, state: &Control) -> Option<MpcError> {
        if let Some((party, theirs, ours)) = &state.mismatch {
            return Some(MpcError::TransportMismatch {
                party: *party,
                did: self.did_of(*party),
                theirs: theirs.clone(),
                ours: ours.clone(),
            });
        }
        state
            .aborted
            .as_ref()
            .map(|(party, code, reason)| MpcError::PeerAborted {
                party: *party,
                did: self.did_of(*party),
                code: code.clone(),
                reason: reason.clone(),
                next: next_step(*party, code),
            })
    }

    /// Send a signed `abort` to `to`, bounded by [`ABORT_SEND_LIMIT`].
    async fn send_abort(&self, to: PartyId, abort: &Abort) -> bool {
        let (Some(did), Ok(body)) = (
            self.roster.party(to).map(|p| p.did.clone()),
            serde_json::to_value(abort),
        ) else {
            return false;
        };
        let msg = self.message(ABORT_TYPE, body);
        // A refusal that says "not now" (a busy mediator: 429/5xx, a quota) or a network
        // error is tried again within the limit (spec/lobby.md §8 "Abort").
        let (tries, sent) = self
            .agent
            .send_signed_within(&did, msg, ABORT_SEND_LIMIT, ABORT_RETRY_PAUSE)
            .await;
        match sent {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!("cannot send abort to {did}: {e} (after {tries} tries)");
                false
            }
        }
    }

    fn message(&self, type_: &str, body: serde_json::Value) -> Message {
        let mut m = Message::new(mpc_did_didcomm::message::new_id(), type_, body);
        m.created_time = Some(now());
        // spec/lobby.md §8: nothing of a run outlives its roster.
        m.expires_time = Some(self.roster.expires_time);
        m
    }
}

/// How long the `abort`s of a stopping party may take to go out.
const ABORT_SEND_LIMIT: Duration = Duration::from_secs(5);
/// The pause before an `abort` refused for now is sent again (within the limit).
const ABORT_RETRY_PAUSE: Duration = Duration::from_millis(250);
/// The least time a `ready` is tried for (after the connect deadline too: a peer that
/// restarts its run is answered).
const READY_SEND_MIN: Duration = Duration::from_secs(5);
/// The pause before a `ready` refused for now is sent again.
const READY_RETRY_PAUSE: Duration = Duration::from_secs(1);
/// How long a party that stopped before every peer announced its attempt waits to tell
/// the late starters (spec/lobby.md §8 "Telling late starters").
const LATE_STARTERS: Duration = Duration::from_secs(10);
/// The same after Ctrl-C: the person wants out.
const LATE_STARTERS_AFTER_INTERRUPT: Duration = Duration::from_secs(3);

/// After our `abort`: wait (bounded) until every peer's attempt was named in one, so a
/// party that starts its run just after we stopped is told instead of waiting for us
/// until its `--connect-timeout`.
async fn tell_late_starters(
    ctx: &RunCtx,
    mut state: tokio::sync::watch::Receiver<Control>,
    limit: Duration,
    progress: Progress<'_>,
) {
    let untold = state.borrow().untold.clone();
    if untold.is_empty() {
        return;
    }
    let names: Vec<String> = untold
        .iter()
        .map(|p| {
            let did = ctx.roster.party(*p).map(|x| x.did.as_str()).unwrap_or("?");
            format!("party {p} ({did})")
        })
        .collect();
    progress(format!(
        "waiting up to {} s to tell {} that this run stops when it starts",
        limit.as_secs(),
        names.join(", ")
    ));
    let all = state.wait_for(|s| s.untold.is_empty());
    if tokio::time::timeout(limit, all).await.is_ok() {
        progress("told every party".into());
    } else {
        let left = state.borrow().untold.clone();
        progress(format!(
            "{} did not start within {} s; it will wait for us until its --connect-timeout",
            left.iter()
                .map(|p| format!("party {p}"))
                .collect::<Vec<_>>()
                .join(", "),
            limit.as_secs()
        ));
    }
}
/// How often waiting is reported.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// What the control task learnt: peers up (with the binding id of their session) and a
/// peer's abort.
#[derive(Debug, Clone, Default)]
struct Control {
    up: BTreeMap<PartyId, String>,
    aborted: Option<(PartyId, String, String)>,
    /// Once we stop: the peers whose attempt no `abort` of ours named yet.
    untold: Vec<PartyId>,
    /// A peer on another `--transport`: (party, theirs, ours).
    mismatch: Option<(PartyId, String, String)>,
}

impl Control {
    /// Whether this attempt must stop: a peer aborted, or runs another transport.
    fn stops(&self) -> bool {
        self.aborted.is_some() || self.mismatch.is_some()
    }
}

/// The run protocol (spec/lobby.md §8) for one attempt: answers `ready`s, reports peers up
/// and aborts, sends our `abort`s. Ends when `control` closes (the agent stopped).
async fn control_loop(
    ctx: RunCtx,
    mut attempts: Attempts,
    mut control: tokio::sync::mpsc::Receiver<Inbound>,
    mut commands: tokio::sync::mpsc::Receiver<Command>,
    state: tokio::sync::watch::Sender<Control>,
) {
    // Until our hello names the connect deadline.
    let mut ready_until = tokio::time::Instant::now() + READY_SEND_MIN;
    loop {
        let m = tokio::select! {
            m = control.recv() => match m {
                Some(m) => m,
                None => return,
            },
            cmd = commands.recv() => {
                match cmd {
                    Some(Command::Hello { until }) => {
                        ready_until = until;
                        dispatch(&ctx, &attempts, &state, attempts.hello(), ready_until).await;
                    }
                    Some(Command::Stop { code, reason, done }) => {
                        let abort = attempts.stop(&code, &reason, now_ms());
                        state.send_modify(|s| s.untold = attempts.untold());
                        let mut sends = tokio::task::JoinSet::new();
                        for p in ctx.roster.parties.iter().filter(|p| p.id != ctx.me) {
                            let (ctx, abort, to) = (ctx.clone(), abort.clone(), p.id);
                            sends.spawn(async move { ctx.send_abort(to, &abort).await });
                        }
                        tokio::spawn(async move {
                            let mut all = true;
                            while let Some(r) = sends.join_next().await {
                                all &= r.unwrap_or(false);
                            }
                            let _ = done.send(all);
                        });
                    }
                    None => {}
                }
                continue;
            }
        };
        if m.message.expires_time.is_some_and(|t| t < now()) {
            tracing::info!("dropped an expired {} from {:?}", m.message.type_, m.sender);
            continue;
        }
        let Some(sender) = m.sender.clone().filter(|_| m.meta.authenticated) else {
            tracing::info!("dropped an unauthenticated {}", m.message.type_);
            continue;
        };
        if m.message.type_ == READY_TYPE {
            match serde_json::from_value::<Ready>(m.message.body.clone()) {
                Ok(r) => {
                    let events = attempts.handle_ready(&sender, &r);
                    dispatch(&ctx, &attempts, &state, events, ready_until).await;
                }
                Err(e) => tracing::info!("ignored a malformed ready from {sender}: {e}"),
            }
        } else if m.message.type_ == ABORT_TYPE {
            let signer = m
                .meta
                .sign_from
                .as_deref()
                .map(mpc_did_didcomm::did_of)
                .filter(|s| m.meta.non_repudiation && *s == sender);
            match serde_json::from_value::<Abort>(m.message.body.clone()) {
                Ok(a) => {
                    let ev = attempts.handle_abort(signer, &a);
                    dispatch(&ctx, &attempts, &state, vec![ev], ready_until).await;
                }
                Err(e) => tracing::info!("ignored a malformed abort from {sender}: {e}"),
            }
        } else {
            tracing::info!("ignored {} from {sender}", m.message.type_);
        }
    }
}

/// Carry out what [`Attempts`] asked for; a `ready` is tried until `ready_until` (at least
/// [`READY_SEND_MIN`]).
async fn dispatch(
    ctx: &RunCtx,
    attempts: &Attempts,
    state: &tokio::sync::watch::Sender<Control>,
    events: Vec<Event>,
    ready_until: tokio::time::Instant,
) {
    for ev in events {
        match ev {
            Event::Send { to, ready } => {
                let Some(did) = ctx.roster.party(to).map(|p| p.did.clone()) else {
                    continue;
                };
                let Ok(body) = serde_json::to_value(&ready) else {
                    continue;
                };
                let msg = ctx.message(READY_TYPE, body);
                let agent = ctx.agent.clone();
                let limit = ready_until
                    .saturating_duration_since(tokio::time::Instant::now())
                    .max(READY_SEND_MIN);
                // A lost `ready` is never answered: both parties would wait their whole
                // --connect-timeout. So a failure for now (the peer's mediator busy or
                // restarting, spec/lobby.md §8 "Ready") is tried again until the deadline.
                tokio::spawn(send_ready(agent, did, msg, limit));
            }
            Event::SendAbort { to, abort } => {
                tracing::info!(party = to, "told a party that started after we stopped");
                // Awaited: the run waits for this before it exits.
                ctx.send_abort(to, &abort).await;
                state.send_modify(|s| s.untold = attempts.untold());
            }
            Event::PeerUp { party, attempt } => {
                tracing::info!(party, %attempt, "party is up");
                if let Some(id) = attempts.binding_id(party) {
                    state.send_modify(|s| {
                        s.up.insert(party, id);
                    });
                }
            }
            Event::Aborted {
                party,
                code,
                reason,
            } => state.send_modify(|s| {
                s.aborted.get_or_insert((party, code, reason));
            }),
            Event::TransportMismatch {
                party,
                theirs,
                ours,
            } => {
                tracing::warn!(party, %theirs, %ours, "a party runs another transport");
                state.send_modify(|s| {
                    s.mismatch.get_or_insert((party, theirs, ours));
                });
            }
            Event::Ignored(why) => tracing::info!("{why}"),
        }
    }
}

/// Send one `ready`, trying again every [`READY_RETRY_PAUSE`] within `limit` while the
/// failure is transient; every failed try is logged (the agent's `debug` line after the
/// first), the outcome once.
async fn send_ready(agent: Agent, did: String, msg: Message, limit: Duration) {
    let started = tokio::time::Instant::now();
    let first = match agent.send(&did, msg.clone()).await {
        Ok(()) => return,
        Err(e) => e,
    };
    if !first.is_transient() {
        tracing::warn!("cannot send ready to {did}: {first}");
        return;
    }
    let rest = limit.saturating_sub(started.elapsed());
    tracing::warn!(
        "cannot send ready to {did} yet: {first}; trying again every {} s for up to {} s",
        READY_RETRY_PAUSE.as_secs(),
        rest.as_secs()
    );
    tokio::time::sleep(READY_RETRY_PAUSE.min(rest)).await;
    let (tries, sent) = agent
        .send_within(
            &did,
            msg,
            rest.saturating_sub(READY_RETRY_PAUSE),
            READY_RETRY_PAUSE,
        )
        .await;
    match sent {
        Ok(()) => tracing::warn!("ready reached {did} after {} tries", tries + 1),
        Err(e) => tracing::warn!(
            "cannot send ready to {did}: {e} (after {} tries in {} s); it will not learn of \
             this run until it starts again",
            tries + 1,
            started.elapsed().as_secs()
        ),
    }
}

/// How long a secure session negotiation under way at the connect deadline may still take
/// (a DIDComm round trip or two and the path checks): the whole wait for a peer ends at
/// `--connect-timeout`, or at most this much later for a peer that is up by then
/// (spec/lobby.md §8 "One deadline").
const NEGOTIATION_GRACE: Duration = Duration::from_secs(10);

/// Why the wait for one peer ended without a session.
#[derive(Debug, PartialEq, Eq)]
enum PeerWait {
    /// It was not up (its run had not started, or we never heard of it) by the deadline.
    NotStarted,
    /// It was up, but the negotiation had not finished by the deadline (+ the grace).
    NoSession,
    /// The negotiation failed.
    Failed(String),
}

/// The wait for one peer: until it is `up` (its binding id), then its secure session
/// (`negotiate`). One deadline for both: `up` until `deadline`, the negotiation until
/// `deadline` + [`NEGOTIATION_GRACE`] — not a fresh `--connect-timeout` after a late `up`.
async fn wait_for_peer<T, U, N, F>(
    up: U,
    negotiate: N,
    deadline: tokio::time::Instant,
) -> Result<T, PeerWait>
where
    U: Future<Output = Option<String>>,
    N: FnOnce(String) -> F,
    F: Future<Output = Result<T, String>>,
{
    let binding_id = tokio::time::timeout_at(deadline, up)
        .await
        .ok()
        .flatten()
        .ok_or(PeerWait::NotStarted)?;
    tokio::time::timeout_at(deadline + NEGOTIATION_GRACE, negotiate(binding_id))
        .await
        .map_err(|_| PeerWait::NoSession)?
        .map_err(PeerWait::Failed)
}

#[allow(clippy::too_many_arguments)]
async fn run_attempt<I>(
    ctx: &RunCtx,
    id: &Identity,
    spec: RunSpec,
    state: tokio::sync::watch::Receiver<Control>,
    peers: &[(PartyId, Did)],
    interrupt: I,
    progress: Progress<'_>,
) -> Result<PartyRun, MpcError>
where
    I: Future<Output = ()> + Send + 'static,
{
    let started = Instant::now();
    let me = ctx.me;
    let roster = &ctx.roster;
    let base = ConnectorConfig {
        listen: spec.listen,
        handshake_timeout: spec.connect_timeout,
        driver: mpc_did_driver::DriverConfig {
            resume_timeout: spec.resume_timeout,
            ..mpc_did_driver::DriverConfig::default()
        },
        ..ConnectorConfig::default()
    };
    let connector = start_connector(id, &ctx.agent, &spec.paths, base, progress).await?;
    let roster_hash = roster.compute_hash()?;
    progress(format!(
        "party {me}: attempt {} of MPC session {}; waiting for the other parties",
        ctx.attempt, roster.mpc_session_id
    ));
    // Per-message DIDComm: its data subscription before any peer learns we are up.
    let data = didcomm::subscribe(ctx, &spec);
    // The connector listens: now the peers may learn our attempt and propose.
    let deadline = tokio::time::Instant::now() + spec.connect_timeout;
    ctx.commands
        .send(Command::Hello { until: deadline })
        .await
        .map_err(|e| MpcError::control("the run's control task", e))?;
    if let Some(data) = data {
        let (st, i) = (state.clone(), interrupt);
        return didcomm::run_attempt(ctx, id, spec, st, data, peers, i, progress).await;
    }

    // Each peer: wait until it is up in this attempt, then negotiate the session bound to
    // both attempts.
    let mut tasks = tokio::task::JoinSet::new();
    for (pid, did) in peers {
        let (c, did, pid, mut st) = (connector.clone(), did.clone(), *pid, state.clone());
        let connect_timeout = spec.connect_timeout.as_secs();
        tasks.spawn(async move {
            let up = async move {
                st.wait_for(|s| s.up.contains_key(&pid))
                    .await
                    .ok()
                    .and_then(|s| s.up.get(&pid).cloned())
            };
            let negotiate = |binding_id: String| {
                let (c, did) = (c.clone(), did.clone());
                async move {
                    let binding = Binding {
                        mpc_session_id: binding_id,
                        roster_hash,
                    };
                    c.establish(did.as_str(), &binding, me < pid)
                        .await
                        .map_err(|e| e.to_string())
                }
            };
            let r = wait_for_peer(up, negotiate, deadline).await.map_err(|e| match e {
                PeerWait::NotStarted => format!(
                    "{did} did not start its run within {connect_timeout} s (is `mpc-did run` running there, and registered at its mediator?)"
                ),
                PeerWait::NoSession => format!(
                    "{did} started its run, but no secure session with it came up within {connect_timeout} s (+{} s for a negotiation under way)",
                    NEGOTIATION_GRACE.as_secs()
                ),
                PeerWait::Failed(reason) => reason,
            });
            (pid, did, r)
        });
    }
    let mut interrupt = Box::pin(interrupt);
    let mut ticker = tokio::time::interval(PROGRESS_EVERY);
    ticker.tick().await;
    let mut abort_watch = state.clone();
    let mut handles = Vec::new();
    while handles.len() < peers.len() {
        tokio::select! {
            joined = tasks.join_next() => {
                let Some(joined) = joined else { break };
                let (pid, did, r) = joined.map_err(|e| MpcError::control("a session task", e))?;
                let e = r.map_err(|reason| MpcError::Session { party: pid, reason })?;
                progress(format!(
                    "party {me}: secure session with party {pid} up ({}, {:.0} ms)",
                    e.path,
                    e.setup.as_secs_f64() * 1000.0
                ));
                handles.push((pid, did, e));
            }
            () = &mut interrupt => return Err(MpcError::Interrupted),
            _ = abort_watch.changed() => {
                if let Some(e) = ctx.aborted(&abort_watch.borrow()) {
                    return Err(e);
                }
            }
            _ = ticker.tick() => {
                let now = tokio::time::Instant::now();
                let done: Vec<PartyId> = handles.iter().map(|(p, _, _)| *p).collect();
                let st = state.borrow().clone();
                for (pid, did) in peers.iter().filter(|(p, _)| !done.contains(p)) {
                    // The limits of `wait_for_peer`.
                    let (what, until) = if st.up.contains_key(pid) {
                        ("its secure session", deadline + NEGOTIATION_GRACE)
                    } else {
                        ("its run to start", deadline)
                    };
                    let left = until.saturating_duration_since(now).as_secs();
                    progress(format!("waiting for party {pid} ({did}): {what}, {left} s left"));
                }
            }
        }
    }
    handles.sort_by_key(|(pid, _, _)| *pid);
    let sessions_setup = started.elapsed();
    let mut map = BTreeMap::new();
    let mut sessions = Vec::new();
    for (peer_id, peer, e) in handles {
        let session_id = e.session_id.parse().map_err(|err| MpcError::Session {
            party: peer_id,
            reason: format!("bad secure session id {:?}: {err}", e.session_id),
        })?;
        sessions.push(SessionUp {
            peer_id,
            peer,
            session_id,
            path: e.path.clone(),
            setup: e.setup,
        });
        map.insert(peer_id, e.handle);
    }
    let mut argv = spec.command;
    argv.extend(roster.mpyc_args.iter().map(OsString::from));
    progress(format!(
        "party {me}: all {} secure sessions up in {:.2} s; starting {}",
        sessions.len(),
        sessions_setup.as_secs_f64(),
        roster.program.name
    ));
    let t0 = Instant::now();
    // The program stops on Ctrl-C here or on a peer's abort.
    let interrupted = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = Arc::clone(&interrupted);
    let mut abort_watch = state.clone();
    let stop = async move {
        let peer_aborted = async {
            if abort_watch.wait_for(Control::stops).await.is_err() {
                // The control task ended: no abort can come any more.
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            () = interrupt => flag.store(true, std::sync::atomic::Ordering::SeqCst),
            () = peer_aborted => {}
        }
    };
    let outcome = run_over_sessions(me, map, argv, spec.output, stop).await;
    let interrupted = interrupted.load(std::sync::atomic::Ordering::SeqCst);
    let aborted_by = ctx.aborted(&state.borrow());
    let outcome = match outcome {
        Ok(o) => o,
        // Stopped for our Ctrl-C or a peer's abort: that is the error to report (the
        // caller tells the peers of ours).
        Err(_) if interrupted => return Err(MpcError::Interrupted),
        Err(e) => return Err(aborted_by.unwrap_or(e)),
    };
    if let Some(f) = &outcome.peer_failure {
        if aborted_by.is_none() && f.reason.starts_with("session lost") {
            // Worded so that who failed comes first at every party.
            let why = format!("party {} failed ({})", f.peer, f.reason);
            ctx.abort_all("lost-peer", &why, progress).await;
        }
    }
    Ok(PartyRun {
        me,
        my_did: id.did.clone(),
        sessions,
        sessions_setup,
        outcome,
        wall: t0.elapsed(),
        aborted_by: aborted_by.map(|e| e.to_string()),
        interrupted,
    })
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Refuse a program file whose hash differs from the roster's (spec/lobby.md §4, step 5).
///
/// # Errors
/// The file cannot be read, or its hash differs (both hashes named).
pub fn check_program(roster: &Roster, file: &Path) -> Result<(), MpcError> {
    let bytes = read_program(file)?;
    roster
        .check_program(&bytes)
        .map_err(|_| MpcError::WrongProgram {
            name: roster.program.name.clone(),
            expected: roster.program.sha256.clone(),
            path: file.to_path_buf(),
            actual: mpc_did_lobby::Program::from_bytes("", &bytes).sha256,
        })
}

/// The other parties of the roster, with their DIDs parsed.
///
/// # Errors
/// A roster entry whose DID does not parse.
pub fn peers(roster: &Roster, me: PartyId) -> Result<Vec<(PartyId, Did)>, MpcError> {
    roster
        .parties
        .iter()
        .filter(|p| p.id != me)
        .map(|p| {
            Did::parse(&p.did)
                .map(|d| (p.id, d))
                .map_err(|e| MpcError::BadInvitation(format!("party {} in the roster: {e}", p.id)))
        })
        .collect()
}

/// What every secure session of this MPC session is bound to (spec/lobby.md §3).
///
/// # Errors
/// The roster hash cannot be computed (a malformed roster).
pub fn binding(roster: &Roster) -> Result<Binding, MpcError> {
    Ok(Binding {
        mpc_session_id: roster.mpc_session_id.to_string(),
        roster_hash: roster.compute_hash()?,
    })
}

/// One secure session per peer, all at once; the lower party id proposes. Sorted by peer.
///
/// # Errors
/// The first session that cannot be established.
pub async fn establish_all(
    connector: &Connector,
    binding: &Binding,
    me: PartyId,
    peers: &[(PartyId, Did)],
    progress: Progress<'_>,
) -> Result<Vec<(PartyId, Did, Established)>, MpcError> {
    let mut tasks = tokio::task::JoinSet::new();
    for (id, did) in peers {
        let (c, b, did, id) = (connector.clone(), binding.clone(), did.clone(), *id);
        tasks.spawn(async move {
            let r = c.establish(did.as_str(), &b, me < id).await;
            (id, did, r)
        });
    }
    let mut out = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (id, did, result) = joined.map_err(|e| MpcError::control("a session task", e))?;
        let e = result.map_err(|e| MpcError::Session {
            party: id,
            reason: e.to_string(),
        })?;
        progress(format!(
            "party {me}: secure session with party {id} up ({}, {:.0} ms)",
            e.path,
            e.setup.as_secs_f64() * 1000.0
        ));
        out.push((id, did, e));
    }
    out.sort_by_key(|(id, _, _)| *id);
    Ok(out)
}

/// Party `me`'s program over its established `sessions` (peer id → session): binds the
/// local MPyC proxy, runs `argv` with MPyC's `-M/-I/-P` appended, and closes the sessions
/// when it is done (code 0 after success; a failure is told to the peers). `interrupt` is
/// forwarded to the program.
///
/// # Errors
/// The proxy cannot be bound, or the program cannot be started.
pub async fn run_over_sessions<I>(
    me: PartyId,
    sessions: BTreeMap<PartyId, SessionHandle>,
    argv: Vec<OsString>,
    output: Output,
    interrupt: I,
) -> Result<RunOutcome, MpcError>
where
    I: Future<Output = ()> + Send,
{
    let parties = u16::try_from(sessions.len() + 1)
        .map_err(|_| MpcError::Launch("too many parties".into()))?;
    let transport = Arc::new(PartyTransport::new(me, sessions));
    let proxy = Proxy::bind(ProxyConfig::new(parties, me))
        .await
        .map_err(|e| MpcError::Launch(format!("cannot bind the local MPyC proxy: {e}")))?;
    let outcome = run_program(
        proxy,
        Arc::clone(&transport),
        Program {
            argv,
            output,
            grace: GRACE,
        },
        interrupt,
    )
    .await;
    match outcome {
        Ok(o) => {
            if o.status.success() {
                let t = Instant::now();
                transport.close_all(CLOSE_DONE, "done").await;
                tracing::info!(
                    "{} secure sessions closed in {} ms",
                    transport.sessions().len(),
                    t.elapsed().as_millis()
                );
            }
            Ok(o)
        }
        Err(e) => {
            transport
                .close_all(CLOSE_PARTY_FAILED, &e.to_string())
                .await;
            Err(MpcError::Launch(e.to_string()))
        }
    }
}

/// The program's exit code as ours (128 + signal when it was killed).
#[must_use]
pub fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt as _;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONNECT_TIMEOUT: Duration = Duration::from_secs(120);

    /// A negotiation as `mpc-did-connect` bounds it: its own `handshake_timeout` (here
    /// `--connect-timeout`, as the run sets it) from its start, or never done.
    async fn never_done(_binding: String) -> Result<(), String> {
        tokio::time::sleep(CONNECT_TIMEOUT).await;
        Err("timed out waiting for the peer to accept the proposal".into())
    }

    /// A peer that is up at `at`.
    async fn up_at(at: tokio::time::Instant) -> Option<String> {
        tokio::time::sleep_until(at).await;
        Some("binding".into())
    }

    /// spec/lobby.md §8 "One deadline": a peer up just before the connect deadline whose
    /// session never comes up ends the wait at the deadline plus the grace — not a whole
    /// second `--connect-timeout` later, as when the negotiation had its own deadline.
    #[tokio::test(start_paused = true)]
    async fn a_peer_up_late_gets_the_grace_not_a_second_timeout() {
        let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
        let up = up_at(deadline - Duration::from_secs(1));
        let r = wait_for_peer(up, never_done, deadline).await;
        assert_eq!(r, Err(PeerWait::NoSession));
        assert_eq!(tokio::time::Instant::now(), deadline + NEGOTIATION_GRACE);
    }

    /// Not up by the deadline: the wait ends there; up in time and negotiated within the
    /// grace: the session; a failed negotiation says why.
    #[tokio::test(start_paused = true)]
    async fn the_wait_ends_at_the_deadline_and_keeps_what_finished() {
        let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
        let late = up_at(deadline + Duration::from_secs(1));
        assert_eq!(
            wait_for_peer(late, never_done, deadline).await,
            Err(PeerWait::NotStarted)
        );
        assert_eq!(tokio::time::Instant::now(), deadline);

        let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
        let up = up_at(deadline - Duration::from_secs(1));
        let quick = |b: String| async move {
            tokio::time::sleep(NEGOTIATION_GRACE / 2).await;
            Ok::<String, String>(b)
        };
        assert_eq!(
            wait_for_peer(up, quick, deadline).await,
            Ok("binding".to_owned())
        );

        let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
        let refused = |_b: String| async { Err::<(), String>("declined".into()) };
        assert_eq!(
            wait_for_peer(up_at(deadline), refused, deadline + Duration::from_secs(1)).await,
            Err(PeerWait::Failed("declined".into()))
        );
    }
}
