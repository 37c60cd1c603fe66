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

use mpc_did_agent::{Agent, AgentConfig, Hold, SESSION_PREFIX};
use mpc_did_connect::{Binding, Connector, ConnectorConfig, Established, PathInfo};
use mpc_did_driver::{SessionHandle, CLOSE_DONE, CLOSE_PARTY_FAILED};
use mpc_did_lobby::{PartyId, Roster};
use mpc_did_proxy::launch::{run_program, Output, Program, RunOutcome};
use mpc_did_proxy::{Proxy, ProxyConfig};
use mpc_did_resolver::Did;
use mpc_did_wallet::MpcSessions;

use crate::lobby::learn;
use crate::party::{registered_client, start_connector, PathPolicy};
use crate::{read_program, MpcError, PartyTransport, Progress};

/// How long the program gets after an interrupt before it is killed.
const GRACE: Duration = Duration::from_secs(3);

/// One secure session as it came up.
#[derive(Debug, Clone)]
pub struct SessionUp {
    /// The peer's party id.
    pub peer_id: PartyId,
    /// The peer's DID.
    pub peer: Did,
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
    /// Limit for each secure session to come up.
    pub connect_timeout: Duration,
    /// How long a session may be without a path before it (and the run) fails.
    pub resume_timeout: Duration,
    /// Which paths the secure sessions may use.
    pub paths: PathPolicy,
    /// `python prog.py [args]`; the roster's arguments and MPyC's are appended.
    pub command: Vec<OsString>,
    /// Where the program's output goes.
    pub output: Output,
}

/// How a party's run went.
#[derive(Debug)]
pub struct PartyRun {
    /// Our party id.
    pub me: PartyId,
    /// Our sessions, by peer id.
    pub sessions: Vec<SessionUp>,
    /// Time from starting the control plane to all sessions up.
    pub sessions_setup: Duration,
    /// How the program ended.
    pub outcome: RunOutcome,
    /// Wall time of the program.
    pub wall: Duration,
}

/// The program file named in `argv` (the first existing `*.py` argument).
fn find_program(argv: &[OsString]) -> Option<PathBuf> {
    argv.iter()
        .map(PathBuf::from)
        .find(|p| p.extension().is_some_and(|e| e == "py") && p.is_file())
}

/// Everything `mpc-did run` does for the MPC session `spec.mpc` of the wallet at `home`;
/// `progress` gets one line per step. `interrupt` resolving (Ctrl-C) stops the setup, or,
/// once the program runs, is forwarded to it and told to the peers.
///
/// # Errors
/// No roster yet, program mismatch (both hashes named), a peer unreachable, the program
/// cannot be started, interrupted before the program started.
pub async fn run_party<I>(
    home: &Path,
    spec: RunSpec,
    interrupt: I,
    progress: Progress<'_>,
) -> Result<PartyRun, MpcError>
where
    I: Future<Output = ()> + Send + 'static,
{
    let RunSpec {
        mpc,
        program,
        listen,
        connect_timeout,
        resume_timeout,
        paths,
        command,
        output,
    } = spec;
    let rec = MpcSessions::at(home).load(mpc.as_deref())?;
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
    // spec/lobby.md §4 party 5: never run a program whose hash differs from the roster's.
    let file = match program {
        Some(p) => p,
        None => find_program(&command).ok_or(MpcError::NoProgramFile)?,
    };
    check_program(&roster, &file)?;
    if mpc_did_didcomm::message::now() > roster.expires_time {
        return Err(MpcError::Expired {
            id: roster.mpc_session_id,
            at: roster.expires_time,
        });
    }
    let peers = peers(&roster, me)?;

    let started = Instant::now();
    let (id, client) = registered_client(home, Some(&rec.identity))?;
    // Session messages may arrive before the connector subscribes; hold only those from
    // the roster (spec/lobby.md §7): a stranger's cannot crowd them out.
    let config = AgentConfig {
        hold: vec![Hold::from_senders(
            SESSION_PREFIX,
            peers.iter().map(|(_, did)| did.to_string()),
        )],
    };
    let agent = Agent::start_with(client, config)
        .await
        .map_err(|e| MpcError::control("cannot connect to your mediator", e))?;
    let result = async {
        for p in roster.parties.iter().filter(|p| p.id != me) {
            learn(&agent, &p.did, &p.services).await?;
        }
        let base = ConnectorConfig {
            listen,
            handshake_timeout: connect_timeout,
            driver: mpc_did_driver::DriverConfig {
                resume_timeout,
                ..mpc_did_driver::DriverConfig::default()
            },
            ..ConnectorConfig::default()
        };
        let connector = start_connector(&id, &agent, &paths, base, progress).await?;
        let binding = binding(&roster)?;
        let mut interrupt = Box::pin(interrupt);
        let handles = tokio::select! {
            h = establish_all(&connector, &binding, me, &peers, progress) => h?,
            () = &mut interrupt => return Err(MpcError::Interrupted),
        };
        let sessions_setup = started.elapsed();
        let mut map = BTreeMap::new();
        let mut sessions = Vec::new();
        for (peer_id, peer, e) in handles {
            sessions.push(SessionUp {
                peer_id,
                peer,
                path: e.path.clone(),
                setup: e.setup,
            });
            map.insert(peer_id, e.handle);
        }
        let mut argv = command;
        argv.extend(roster.mpyc_args.iter().map(OsString::from));
        progress(format!(
            "party {me}: all {} secure sessions up in {:.2} s; starting {}",
            sessions.len(),
            sessions_setup.as_secs_f64(),
            roster.program.name
        ));
        let t0 = Instant::now();
        let outcome = run_over_sessions(me, map, argv, output, interrupt).await?;
        Ok(PartyRun {
            me,
            sessions,
            sessions_setup,
            outcome,
            wall: t0.elapsed(),
        })
    }
    .await;
    agent.stop();
    result
}

/// Refuse a program file whose hash differs from the roster's (spec/lobby.md §4, step 5).
///
/// # Errors
/// The file cannot be read, or its hash differs (both hashes named).
pub fn check_program(roster: &Roster, file: &Path) -> Result<(), MpcError> {
    let bytes = read_program(file)?;
    roster
        .check_program(&bytes)
        .map_err(|_| MpcError::ProgramMismatch {
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
                transport.close_all(CLOSE_DONE, "done").await;
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
