//! `mpc-did mpc run [--session ID] -- python prog.py [args]` (alias `mpc-did run`): check
//! the program against the roster, establish a secure session with every other party
//! (the lower party id proposes, spec/lobby.md §1), bind the local MPyC proxy, and run the
//! unmodified program with the proxy's `-M/-I/-P` arguments.
//!
//! Nothing outlives the command: the program runs in its own process group and is stopped
//! with it (Ctrl-C is forwarded, then SIGKILL after a grace period), and even a SIGKILL of
//! mpc-did takes the program with it (`setpriv --pdeathsig KILL`, see
//! `mpc_did_proxy::launch`); the proxy and the session listener are in-process sockets;
//! nothing is written to disk.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use mpc_did_agent::{Agent, AgentConfig, Hold, SESSION_PREFIX};
use mpc_did_connect::{Binding, Connector, ConnectorConfig, PathInfo};
use mpc_did_driver::{PartyTransport, SessionHandle, CLOSE_DONE};
use mpc_did_lobby::Roster;
use mpc_did_proxy::launch::{run_program, Output, Program, RunOutcome};
use mpc_did_proxy::{Proxy, ProxyConfig};

use super::{learn, load, read_program};
use crate::cmd::agent_ctx::{start_connector, PathArgs};
use crate::cmd::mediator::registered_client;
use crate::ctx::Ctx;

#[derive(clap::Args, Debug)]
#[command(after_help = "\
Example:
  mpc-did mpc run -- python secretsanta.py

The roster's program arguments are appended after yours, then MPyC's -M/-I/-P.
Exit status: the program's (1 if mpc-did itself failed or a peer failed).")]
pub struct RunArgs {
    /// MPC session id (or a unique prefix) [default: the newest one].
    #[arg(long)]
    pub session: Option<String>,
    /// The program file whose hash must match the roster's [default: the first `*.py`
    /// argument that is a file].
    #[arg(long, value_name = "FILE")]
    pub program: Option<PathBuf>,
    /// Local address of the direct-path listener for secure sessions.
    #[arg(long, default_value = "0.0.0.0:0")]
    pub listen: SocketAddr,
    /// How long to wait for each peer's secure session (seconds).
    #[arg(long, default_value_t = 120)]
    pub connect_timeout: u64,
    /// How long a secure session may be without a working path before the run fails (a
    /// killed or unplugged peer is noticed after this; shorter path breaks are survived).
    #[arg(long, default_value_t = 30)]
    pub resume_timeout: u64,
    #[command(flatten)]
    pub paths: PathArgs,
    /// The command to run: `python prog.py [args]` (after `--`).
    #[arg(last = true, required = true)]
    pub command: Vec<OsString>,
}

/// One secure session as it came up.
#[derive(Debug, Clone)]
pub struct SessionUp {
    pub peer_id: u16,
    pub peer: String,
    pub path: PathInfo,
    pub setup: Duration,
}

/// What to run, and how (see [`run_party`]).
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// MPC session id or prefix; `None`: the newest.
    pub session: Option<String>,
    /// The program file to check against the roster; `None`: found in `command`.
    pub program: Option<PathBuf>,
    /// Direct-path listener address.
    pub listen: SocketAddr,
    /// Limit for each secure session to come up.
    pub connect_timeout: Duration,
    /// How long a session may be without a path before it (and the run) fails.
    pub resume_timeout: Duration,
    /// Which paths the secure sessions may use.
    pub paths: PathArgs,
    /// `python prog.py [args]`; the roster's arguments and MPyC's are appended.
    pub command: Vec<OsString>,
    /// Where the program's output goes.
    pub output: Output,
}

/// How a party's run went.
#[derive(Debug)]
pub struct PartyRun {
    pub me: u16,
    pub sessions: Vec<SessionUp>,
    /// Time from starting the control plane to all sessions up.
    pub sessions_setup: Duration,
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

/// Everything `mpc run` does, reusable by `demo`; `progress` gets one line per step.
///
/// # Errors
/// No roster yet, program mismatch (both hashes named), a peer unreachable, the program
/// cannot be started, interrupted.
pub async fn run_party(
    ctx: &Ctx,
    spec: RunSpec,
    progress: &(dyn Fn(String) + Sync),
) -> anyhow::Result<PartyRun> {
    let RunSpec {
        session,
        program,
        listen,
        connect_timeout,
        resume_timeout,
        paths,
        command,
        output,
    } = spec;
    let (session, program) = (session.as_deref(), program.as_deref());
    let rec = load(&ctx.home, session)?;
    let roster = rec.roster.clone().with_context(|| {
        if rec.coordinator {
            format!(
                "MPC session {} has no roster yet: run `mpc-did mpc host` first",
                rec.offer.session_id
            )
        } else {
            format!(
                "MPC session {} has no roster yet: `mpc-did mpc join` did not finish",
                rec.offer.session_id
            )
        }
    })?;
    let me = rec.party.context("no party id in the stored roster")?;
    // spec/lobby.md §4 party 5: never run a program whose hash differs from the roster's.
    let file = match program {
        Some(p) => p.to_path_buf(),
        None => find_program(&command)
            .context("cannot tell which argument is the program file: pass --program FILE")?,
    };
    let bytes = read_program(&file)?;
    roster.check_program(&bytes).map_err(|e| {
        anyhow::anyhow!(
            "refusing to run {}: {e} (the roster pins {} of {})",
            file.display(),
            roster.program.name,
            roster.program.sha256
        )
    })?;
    anyhow::ensure!(
        mpc_did_didcomm::message::now() <= roster.expires_time,
        "MPC session {} expired at {} (Unix time)",
        roster.session_id,
        roster.expires_time
    );

    let started = Instant::now();
    let (_, client) = registered_client(ctx, Some(&rec.identity))?;
    // Session messages may arrive before the connector subscribes; hold only those from
    // the roster (spec/lobby.md §7): a stranger's cannot crowd them out.
    let config = AgentConfig {
        hold: vec![Hold::from_senders(
            SESSION_PREFIX,
            roster
                .parties
                .iter()
                .filter(|p| p.id != me)
                .map(|p| p.did.clone()),
        )],
    };
    let agent = Agent::start_with(client, config)
        .await
        .context("cannot connect to your mediator")?;
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
    let connector = start_connector(ctx, Some(&rec.identity), &agent, &paths, base).await?;
    let handles = tokio::select! {
        h = establish_all(&connector, &roster, me, progress) => h?,
        _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted before the program started"),
    };
    let sessions_setup = started.elapsed();
    let mut map: BTreeMap<u16, SessionHandle> = BTreeMap::new();
    let mut sessions = Vec::new();
    for (id, e) in handles {
        sessions.push(SessionUp {
            peer_id: id,
            peer: e.peer.clone(),
            path: e.path.clone(),
            setup: e.setup,
        });
        map.insert(id, e.handle);
    }
    let parties = u16::try_from(roster.parties.len()).context("too many parties")?;
    let transport = Arc::new(PartyTransport::new(me, map));
    let proxy = Proxy::bind(ProxyConfig::new(parties, me))
        .await
        .context("cannot bind the local MPyC proxy")?;
    let mut argv = command;
    argv.extend(roster.mpyc_args.iter().map(OsString::from));
    progress(format!(
        "party {me}: all {} secure sessions up in {:.2} s; starting {}",
        sessions.len(),
        sessions_setup.as_secs_f64(),
        roster.program.name
    ));
    let t0 = Instant::now();
    let outcome = run_program(
        proxy,
        Arc::clone(&transport),
        Program {
            argv,
            output,
            grace: Duration::from_secs(3),
        },
        async {
            let _ = tokio::signal::ctrl_c().await;
        },
    )
    .await;
    let wall = t0.elapsed();
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => {
            transport.close_all(1, &e.to_string()).await;
            agent.stop();
            return Err(e.into());
        }
    };
    if outcome.status.success() {
        transport.close_all(CLOSE_DONE, "done").await;
    }
    agent.stop();
    Ok(PartyRun {
        me,
        sessions,
        sessions_setup,
        outcome,
        wall,
    })
}

/// One secure session per peer, all at once; the lower party id proposes.
async fn establish_all(
    connector: &Connector,
    roster: &Roster,
    me: u16,
    progress: &(dyn Fn(String) + Sync),
) -> anyhow::Result<Vec<(u16, mpc_did_connect::Established)>> {
    let binding = Binding {
        mpc_session_id: roster.session_id.clone(),
        roster_hash: roster.compute_hash()?,
    };
    let mut tasks = tokio::task::JoinSet::new();
    for p in roster.parties.iter().filter(|p| p.id != me) {
        let (c, b, did, id) = (connector.clone(), binding.clone(), p.did.clone(), p.id);
        tasks.spawn(async move { (id, c.establish(&did, &b, me < id).await) });
    }
    let mut out = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (id, result) = joined.context("a session task failed")?;
        let e = result.with_context(|| format!("secure session with party {id} failed"))?;
        progress(format!(
            "party {me}: secure session with party {id} up ({}, {:.0} ms)",
            e.path,
            e.setup.as_secs_f64() * 1000.0
        ));
        out.push((id, e));
    }
    out.sort_by_key(|(id, _)| *id);
    Ok(out)
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

pub async fn run_cli(ctx: &Ctx, a: RunArgs) -> anyhow::Result<()> {
    let quiet = ctx.json;
    let progress = move |s: String| {
        if !quiet {
            eprintln!("{s}");
        }
    };
    // Ctrl-C before the program starts aborts the setup (inside `run_party`); after that,
    // `run_program` forwards it to the program and tells the peers.
    let run = run_party(
        ctx,
        RunSpec {
            session: a.session,
            program: a.program,
            listen: a.listen,
            connect_timeout: Duration::from_secs(a.connect_timeout),
            resume_timeout: Duration::from_secs(a.resume_timeout),
            paths: a.paths,
            command: a.command,
            output: Output::Inherit,
        },
        &progress,
    )
    .await?;
    if let Some(f) = &run.outcome.peer_failure {
        eprintln!(
            "mpc-did: error: party {} failed ({}); the program was stopped",
            f.peer, f.reason
        );
    }
    if let Err(e) = &run.outcome.proxy {
        eprintln!("mpc-did: proxy: {e}");
    }
    let mut code = exit_code(run.outcome.status);
    if code == 0 && run.outcome.peer_failure.is_some() {
        code = 1;
    }
    if ctx.json {
        println!(
            "{}",
            serde_json::json!({
                "party": run.me,
                "exit_code": code,
                "sessions_setup_ms": run.sessions_setup.as_millis(),
                "wall_ms": run.wall.as_millis(),
                "sessions": run.sessions.iter().map(|s| serde_json::json!({
                    "party": s.peer_id, "did": s.peer, "path": s.path.to_string(),
                    "setup_ms": s.setup.as_millis(),
                })).collect::<Vec<_>>(),
            })
        );
    }
    drop(run);
    if code != 0 {
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        // Everything is stopped and reaped above; pass the program's status on.
        std::process::exit(code);
    }
    Ok(())
}
