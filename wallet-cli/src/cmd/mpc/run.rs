//! `mpc-did mpc run [--mpc ID] -- python prog.py [args]` (alias `mpc-did run`): arguments
//! and printing; the run itself is `mpc_did_mpc::run::run_party`.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use mpc_did_mpc::run::{exit_code, run_party, RunSpec, RunTransport};
use mpc_did_mpc::MpcError;
use mpc_did_proxy::launch::Output;

use crate::cmd::agent_ctx::PathArgs;
use crate::cmd::session;
use crate::ctx::Ctx;

#[derive(clap::Args, Debug)]
#[command(after_help = "\
Examples:
  mpc-did mpc run -- python secretsanta.py
  mpc-did run --transport didcomm -- python secretsanta.py

--transport session (the default) carries MPyC's bytes in a secure (Noise) session per
pair of parties, on the best path (direct TCP, punched QUIC, or the mediator's relay).
--transport didcomm sends every MPyC message as one authcrypt DIDComm message through
the peer's mediator instead: no session, much slower (each message pays the public-key
operations and a trip through the mediator); for comparison. All parties must use the
same transport.

The roster's program arguments are appended after yours, then MPyC's -M/-I/-P.
Every run is a fresh attempt: after any failure, every party simply runs again.

Exit status:
  0    the program succeeded here
  1    mpc-did failed here (no roster, wrong program, missing interpreter, a peer
       unreachable); the other parties are told
  2    wrong usage
  3    another party aborted or failed; this run was stopped (the message names the
       party, the reason, and what to do next)
  77   the program was stopped before MPyC could listen on or dial a TCP port: its
       networking options were changed (spec/security.md §10)
  130  interrupted (Ctrl-C); the other parties are told
  N    otherwise the program's own non-zero status (128 + signal if it was killed)")]
pub struct RunArgs {
    /// MPC session id (or a unique prefix) [default: the newest one].
    #[arg(long = "mpc", alias = "session", value_name = "ID")]
    pub mpc: Option<String>,
    /// The program file whose hash must match the roster's [default: the first `*.py`
    /// argument that is a file].
    #[arg(long, value_name = "FILE")]
    pub program: Option<PathBuf>,
    /// Local address of the direct-path listener for secure sessions.
    #[arg(long, default_value = "0.0.0.0:0")]
    pub listen: SocketAddr,
    /// How long to wait for each peer to start its run and set up its secure session,
    /// together (seconds; a negotiation under way then gets at most 10 s more).
    #[arg(long, default_value_t = 120)]
    pub connect_timeout: u64,
    /// How long a secure session may be without a working path before the run fails (a
    /// killed or unplugged peer is noticed after this; shorter path breaks are survived).
    /// With `--transport didcomm`: how long a peer may send nothing, not even its
    /// keep-alive (every 5 s), while we wait.
    #[arg(long, default_value_t = 30)]
    pub resume_timeout: u64,
    #[command(flatten)]
    pub paths: PathArgs,
    /// What carries MPyC's bytes: `session` (secure sessions) or `didcomm` (per-message
    /// DIDComm through the mediators); every party must use the same.
    #[arg(long, value_enum, default_value_t = TransportArg::Session)]
    pub transport: TransportArg,
    /// The command to run: `python prog.py [args]` (after `--`).
    #[arg(last = true, required = true)]
    pub command: Vec<OsString>,
}

/// `--transport`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportArg {
    /// A secure (Noise) session per pair of parties.
    Session,
    /// Every MPyC message one authcrypt DIDComm message through the peer's mediator.
    Didcomm,
}

/// Exit status when another party aborted or failed.
const EXIT_PEER: i32 = 3;
/// Exit status after Ctrl-C (128 + SIGINT, as shells report it).
pub(crate) const EXIT_INTERRUPTED: i32 = 130;

pub async fn run_cli(ctx: &Ctx, a: RunArgs) -> anyhow::Result<()> {
    let quiet = ctx.json;
    let progress = move |s: String| {
        if !quiet {
            eprintln!("{s}");
        }
    };
    // Ctrl-C before the program starts aborts the setup; after that, it is forwarded to the
    // program; either way the peers are told. Registered now, so that a Ctrl-C during the
    // setup is never the default (killing) action.
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let run = run_party(
        &ctx.home,
        RunSpec {
            mpc: a.mpc,
            program: a.program,
            listen: a.listen,
            connect_timeout: Duration::from_secs(a.connect_timeout),
            resume_timeout: Duration::from_secs(a.resume_timeout),
            paths: a.paths.policy(),
            command: a.command,
            output: Output::Inherit,
            transport: match a.transport {
                TransportArg::Session => RunTransport::Session,
                TransportArg::Didcomm => RunTransport::Didcomm,
            },
        },
        async move {
            let _ = interrupt.recv().await;
        },
        &progress,
    )
    .await;
    let run = match run {
        Ok(r) => r,
        Err(e) => {
            let code = match &e {
                MpcError::PeerAborted { .. } => EXIT_PEER,
                MpcError::Interrupted => EXIT_INTERRUPTED,
                _ => 1,
            };
            eprintln!("mpc-did: error: {e}");
            std::process::exit(code);
        }
    };
    if let Some(a) = &run.aborted_by {
        eprintln!("mpc-did: error: {a}");
    } else if let Some(f) = &run.outcome.peer_failure {
        eprintln!(
            "mpc-did: error: party {} failed ({}); the program was stopped",
            f.peer, f.reason
        );
    }
    if let Err(e) = &run.outcome.proxy {
        eprintln!("mpc-did: proxy: {e}");
    }
    let mut code = exit_code(run.outcome.status);
    if run.interrupted {
        code = EXIT_INTERRUPTED;
    } else if run.aborted_by.is_some() || run.outcome.peer_failure.is_some() {
        // Stopped because of another party, whatever status the program had then.
        code = EXIT_PEER;
    }
    log_sessions(ctx, &run, code);
    if ctx.json {
        println!(
            "{}",
            serde_json::json!({
                "party": run.me,
                "exit_code": code,
                "sessions_setup_ms": run.sessions_setup.as_millis(),
                "wall_ms": run.wall.as_millis(),
                "sessions": run.sessions.iter().map(|s| serde_json::json!({
                    "party": s.peer_id, "did": s.peer.as_str(), "path": s.path.to_string(),
                    "session_id": s.session_id.to_string(),
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

/// Records the run's secure sessions in the wallet's session log (`mpc-did session list`),
/// each with the path it was on and how the run ended.
fn log_sessions(ctx: &Ctx, run: &mpc_did_mpc::run::PartyRun, code: i32) {
    let now = session::now();
    let took = (run.sessions_setup + run.wall).as_secs();
    let entries: Vec<session::LogEntry> = run
        .sessions
        .iter()
        .map(|s| session::LogEntry {
            session_id: s.session_id.to_string(),
            me: run.my_did.clone(),
            peer: s.peer.as_str().to_owned(),
            command: "run".into(),
            role: "party".into(),
            path: session::path_text(&s.path),
            setup_ms: session::ms(s.setup),
            state: if code == 0 { "closed" } else { "failed" }.into(),
            pid: std::process::id(),
            started: now.saturating_sub(took),
            ended: Some(now),
            rtt_ms: None,
            sent: None,
            received: None,
            handle: None,
        })
        .collect();
    session::log_sessions(ctx, &entries);
}
