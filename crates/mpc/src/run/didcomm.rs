//! `mpc-did run --transport didcomm`: the same run protocol (attempts agreed with `ready`,
//! `abort`s, spec/lobby.md §8), but instead of secure sessions every MPyC message goes as
//! one authcrypt DIDComm message through the peer's mediator
//! ([`crate::didcomm_transport::DidcommTransport::mediated`]). Each pair's messages carry
//! the pair's binding id (the MPC session and both attempts), so bytes of an older attempt
//! are ignored. Every party must pick the same transport: a party running sessions waits
//! for a session proposal that never comes and fails at `--connect-timeout`.

use super::{
    run_program, Arc, Control, Did, Future, Identity, Inbound, MpcError, OsString, Output, PartyId,
    PartyRun, Program, Progress, Proxy, ProxyConfig, RunCtx, RunSpec, GRACE,
};
use crate::didcomm_transport::{DidcommTransport, MediatedOptions, DATA_PREFIX};
use std::time::Instant;

/// Which transport carries MPyC's bytes between the parties (`mpc-did run --transport`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RunTransport {
    /// A secure (Noise) session per pair on the best path: direct, punched QUIC or relay.
    #[default]
    Session,
    /// Per-message DIDComm: every MPyC message one authcrypt message through the peer's
    /// mediator (slow; the design sessions replace, kept for comparison).
    Didcomm,
}

impl RunTransport {
    /// The name in `--transport` and in the run's `ready` messages (spec/lobby.md §8).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            RunTransport::Session => "session",
            RunTransport::Didcomm => "didcomm",
        }
    }
}

/// For the DIDComm transport, the data subscription, taken before any peer learns that we
/// are up (so no data message can arrive unsubscribed).
pub(super) fn subscribe(
    ctx: &RunCtx,
    spec: &RunSpec,
) -> Option<tokio::sync::mpsc::Receiver<Inbound>> {
    (spec.transport == RunTransport::Didcomm).then(|| ctx.agent.subscribe_lossless(DATA_PREFIX))
}

/// The rest of an attempt over per-message DIDComm: wait until every peer is up in this
/// attempt, then run the program behind the proxy over the mediated transport.
#[allow(clippy::too_many_arguments)]
pub(super) async fn run_attempt<I>(
    ctx: &RunCtx,
    id: &Identity,
    spec: RunSpec,
    mut state: tokio::sync::watch::Receiver<Control>,
    inbound: tokio::sync::mpsc::Receiver<Inbound>,
    peers: &[(PartyId, Did)],
    interrupt: I,
    progress: Progress<'_>,
) -> Result<PartyRun, MpcError>
where
    I: Future<Output = ()> + Send + 'static,
{
    let started = Instant::now();
    let me = ctx.me;
    let mut interrupt = Box::pin(interrupt);
    let deadline = tokio::time::Instant::now() + spec.connect_timeout;
    let all_up = |s: &Control| s.stops() || peers.iter().all(|(p, _)| s.up.contains_key(p));
    let timed_out = tokio::select! {
        r = tokio::time::timeout_at(deadline, state.wait_for(all_up)) => r.is_err(),
        () = &mut interrupt => return Err(MpcError::Interrupted),
    };
    if timed_out {
        let st = state.borrow().clone();
        let (pid, did) = peers
            .iter()
            .find(|(p, _)| !st.up.contains_key(p))
            .cloned()
            .ok_or_else(|| MpcError::Launch("no peer missing, yet timed out".into()))?;
        return Err(MpcError::Session {
            party: pid,
            reason: format!(
                "{did} did not start its run within {} s (is `mpc-did run --transport didcomm` running there?)",
                spec.connect_timeout.as_secs()
            ),
        });
    }
    let st = state.borrow().clone();
    if let Some(e) = ctx.aborted(&st) {
        return Err(e);
    }
    let links = peers
        .iter()
        .map(|(p, did)| {
            (
                *p,
                did.to_string(),
                st.up.get(p).cloned().unwrap_or_default(),
            )
        })
        .collect();
    // A peer that goes silent (killed, its machine gone) is waited for as long as a lost
    // session is: `--resume-timeout`.
    let options = MediatedOptions {
        silence: spec.resume_timeout,
        ..MediatedOptions::default()
    };
    let transport = Arc::new(DidcommTransport::mediated_with(
        me,
        ctx.agent.clone(),
        links,
        inbound,
        options,
    ));
    let sessions_setup = started.elapsed();
    let mut argv: Vec<OsString> = spec.command;
    argv.extend(ctx.roster.mpyc_args.iter().map(OsString::from));
    progress(format!(
        "party {me}: all {} parties up; starting {} over per-message DIDComm through the mediators",
        peers.len() + 1,
        ctx.roster.program.name
    ));
    let parties =
        u16::try_from(peers.len() + 1).map_err(|_| MpcError::Launch("too many parties".into()))?;
    let proxy = Proxy::bind(ProxyConfig::new(parties, me))
        .await
        .map_err(|e| MpcError::Launch(format!("cannot bind the local MPyC proxy: {e}")))?;
    let t0 = Instant::now();
    let interrupted = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = Arc::clone(&interrupted);
    let mut abort_watch = state.clone();
    let stop = async move {
        let peer_aborted = async {
            if abort_watch.wait_for(Control::stops).await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            () = interrupt => flag.store(true, std::sync::atomic::Ordering::SeqCst),
            () = peer_aborted => {}
        }
    };
    let output: Output = spec.output;
    let outcome = run_program(
        proxy,
        transport,
        Program {
            argv,
            output,
            grace: GRACE,
        },
        stop,
    )
    .await;
    let interrupted = interrupted.load(std::sync::atomic::Ordering::SeqCst);
    let aborted_by = ctx.aborted(&state.borrow());
    let outcome = match outcome {
        Ok(o) => o,
        Err(_) if interrupted => return Err(MpcError::Interrupted),
        Err(e) => return Err(aborted_by.unwrap_or(MpcError::Launch(e.to_string()))),
    };
    Ok(PartyRun {
        me,
        my_did: id.did.clone(),
        sessions: Vec::new(),
        sessions_setup,
        outcome,
        wall: t0.elapsed(),
        aborted_by: aborted_by.map(|e| e.to_string()),
        interrupted,
    })
}
