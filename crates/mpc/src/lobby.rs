//! The lobby of an MPC session over DIDComm (spec/lobby.md): create an offer, make its
//! invitation, join from an invitation, host until all parties are in. The rules themselves
//! (party ids, roster hash, every check of §4) are `mpc_did_lobby`'s; this module moves its
//! messages and stores the result in the wallet's MPC-session records.

use std::path::Path;
use std::time::Duration;

use mpc_did_agent::client::MediatorInfo;
use mpc_did_agent::{Agent, Inbound};
use mpc_did_didcomm::protocols::report_problem::{ProblemReport, PROBLEM_REPORT_TYPE};
use mpc_did_didcomm::{Attachment, Invitation, Message};
use mpc_did_lobby::{
    Coordinator, Join, JoinOutcome, Offer, PartyId, Program, Roster, GOAL_CODE, JOIN_TYPE,
    OFFER_ATTACHMENT_ID, ROSTER_TYPE,
};
use mpc_did_resolver::{DidCommService, MAX_ROUTING_KEYS};
use mpc_did_wallet::{MpcSessionRecord, MpcSessions, Wallet};
use serde_json::json;

use crate::party::{identity, registered_client};
use crate::{read_program, MpcError, Progress};

/// Message types of the lobby protocol share this prefix.
pub(crate) const LOBBY_PREFIX: &str = "https://mpc-did.org/lobby/1.0/";
const PROBLEM_PREFIX: &str = "https://didcomm.org/report-problem/2.0/";
/// Refusals being sent at once by `host`; beyond, refused joiners get no report.
const MAX_PENDING_REFUSALS: usize = 8;
/// How often waiting is reported.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// How many parties are in the lobby so far, coordinator included.
fn members(lobby: &Coordinator) -> usize {
    lobby.members()
}

fn now() -> u64 {
    mpc_did_didcomm::message::now()
}

fn program_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

fn service_json(s: &DidCommService) -> serde_json::Value {
    json!({"uri": s.uri, "accept": s.accept, "routingKeys": s.routing_keys})
}

/// Services from a join, an invitation or a roster that list more routing keys than
/// [`MAX_ROUTING_KEYS`] make the whole message malformed: each key is one more forward
/// layer, about ×4/3 in size, so sending to such a service would exhaust our memory
/// (audit H1, spec/lobby.md §7).
///
/// # Errors
/// Says which count was too many.
fn check_services(services: &[serde_json::Value]) -> Result<(), String> {
    for v in services {
        let n = v
            .get("routingKeys")
            .and_then(serde_json::Value::as_array)
            .map_or(0, Vec::len);
        if n > MAX_ROUTING_KEYS {
            return Err(format!(
                "a service lists {n} routing keys (at most {MAX_ROUTING_KEYS})"
            ));
        }
    }
    Ok(())
}

/// A lobby service object (`{"uri", "accept", "routingKeys"}`) as a [`DidCommService`];
/// `None` without a `uri` or with more than [`MAX_ROUTING_KEYS`] routing keys.
fn service_from_json(did: &str, v: &serde_json::Value) -> Option<DidCommService> {
    let strings = |k: &str| -> Vec<String> {
        v.get(k)
            .and_then(serde_json::Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    check_services(std::slice::from_ref(v)).ok()?;
    Some(DidCommService {
        id: format!("{did}#didcomm-1"),
        uri: v.get("uri")?.as_str()?.to_owned(),
        accept: strings("accept"),
        routing_keys: strings("routingKeys"),
    })
}

/// Tell the agent where `did` receives DIDComm: the DIDComm service of its own DID
/// document if it names one (did:web), else the first usable lobby service (did:key
/// documents name none; the lobby message carrying it was authcrypt from `did`).
///
/// # Errors
/// The DID cannot be resolved or its endpoint cannot be used, or `services` lists one with
/// more than [`MAX_ROUTING_KEYS`] routing keys.
pub(crate) async fn learn(
    agent: &Agent,
    did: &str,
    services: &[serde_json::Value],
) -> Result<(), MpcError> {
    check_services(services)
        .map_err(|e| MpcError::control(format!("cannot use the endpoint of {did}"), e))?;
    let doc = mpc_did_resolver::DidResolver::resolve(agent.client().resolver(), did)
        .await
        .map_err(|e| MpcError::control(format!("cannot resolve {did}"), e))?;
    if !doc.didcomm_services().is_empty() {
        return Ok(());
    }
    if let Some(s) = services.iter().find_map(|v| service_from_json(did, v)) {
        agent
            .learn_service(did, s)
            .await
            .map_err(|e| MpcError::control(format!("cannot use the endpoint of {did}"), e))?;
    }
    Ok(())
}

/// Create an MPC session as its coordinator (party 0): the offer, stored in the wallet.
///
/// # Errors
/// No identity or mediator, unreadable program, invalid parameters.
pub fn new_session(
    home: &Path,
    identity_name: Option<&str>,
    parties: u16,
    program: &Path,
    args: Vec<String>,
    expires: Duration,
) -> Result<MpcSessionRecord, MpcError> {
    let bytes = read_program(program)?;
    let wallet = Wallet::open(home)?;
    let id = identity(&wallet, identity_name)?;
    let info: MediatorInfo = wallet
        .mediator(&id.name)?
        .ok_or_else(|| MpcError::NoMediator(id.name.clone()))?;
    drop(wallet);
    let expires_time = now().saturating_add(expires.as_secs());
    let mut offer = Offer::new(
        id.did.clone(),
        parties,
        Program::from_bytes(&program_name(program), &bytes),
        args,
        expires_time,
    )?;
    offer.coordinator_services = vec![service_json(&info.service_for(&id.did))];
    let rec = MpcSessionRecord {
        offer,
        identity: id.name,
        coordinator: true,
        roster: None,
        party: None,
        last_attempt: None,
    };
    MpcSessions::at(home).save(&rec)?;
    Ok(rec)
}

/// The invitation to an offer (goal code `mpc-did.mpc.join`, offer attached).
#[must_use]
pub fn invitation(offer: &Offer) -> Invitation {
    let mut inv = Invitation::new(offer.coordinator.clone());
    inv.goal_code = Some(GOAL_CODE.to_owned());
    inv.goal = Some(format!(
        "Run {} with {} parties",
        offer.program.name, offer.parties
    ));
    inv.created_time = Some(now());
    inv.expires_time = Some(offer.expires_time);
    inv.attachments.push(
        Attachment::json(serde_json::to_value(offer).unwrap_or_default())
            .with_id(OFFER_ATTACHMENT_ID)
            .with_media_type("application/json"),
    );
    inv
}

/// The invitation to the stored MPC session `mpc` (an id or unique prefix; `None`: the
/// newest).
///
/// # Errors
/// No such MPC session, or we do not coordinate it.
pub fn invitation_for(home: &Path, mpc: Option<&str>) -> Result<Invitation, MpcError> {
    let rec = MpcSessions::at(home).load(mpc)?;
    if !rec.coordinator {
        return Err(MpcError::NotCoordinator(rec.id()));
    }
    Ok(invitation(&rec.offer))
}

/// The offer attached to an invitation, checked (spec/lobby.md §2).
///
/// # Errors
/// Not an MPC invitation, or an invalid offer.
pub fn offer_of(inv: &Invitation) -> Result<Offer, MpcError> {
    let bad = |s: String| MpcError::BadInvitation(s);
    if inv.goal_code.as_deref() != Some(GOAL_CODE) {
        return Err(bad(format!(
            "this invitation is not to an MPC session (goal code {}, expected {GOAL_CODE})",
            inv.goal_code.as_deref().unwrap_or("none")
        )));
    }
    let att = inv
        .attachments
        .iter()
        .find(|a| a.id.as_deref() == Some(OFFER_ATTACHMENT_ID))
        .ok_or_else(|| bad("the invitation carries no MPC offer".into()))?;
    let v = att
        .data
        .json
        .clone()
        .ok_or_else(|| bad("the MPC offer is not inline JSON".into()))?;
    let offer: Offer =
        serde_json::from_value(v).map_err(|e| bad(format!("the MPC offer is malformed: {e}")))?;
    offer.validate()?;
    if offer.coordinator != mpc_did_didcomm::did_of(&inv.from) {
        return Err(bad(format!(
            "the offer's coordinator {} is not the invitation's sender {}",
            offer.coordinator, inv.from
        )));
    }
    Ok(offer)
}

/// `join`: check our program against the offer, send the join, wait for the roster (or a
/// refusal), check it (spec/lobby.md §4, party side) and store it.
///
/// # Errors
/// Program mismatch, refusal, a bad roster, timeout.
pub async fn join(
    home: &Path,
    inv: &Invitation,
    program: &Path,
    identity_name: Option<&str>,
    timeout: Duration,
    progress: Progress<'_>,
) -> Result<MpcSessionRecord, MpcError> {
    let offer = offer_of(inv)?;
    if now() > offer.expires_time {
        return Err(MpcError::Expired {
            id: offer.mpc_session_id,
            at: offer.expires_time,
        });
    }
    let bytes = read_program(program)?;
    let mine = Program::from_bytes(&program_name(program), &bytes);
    if mine.sha256 != offer.program.sha256 {
        return Err(MpcError::ProgramMismatch {
            name: offer.program.name.clone(),
            expected: offer.program.sha256.clone(),
            path: program.to_path_buf(),
            actual: mine.sha256,
        });
    }
    let (id, client) = registered_client(home, identity_name)?;
    let agent = Agent::start(client)
        .await
        .map_err(|e| MpcError::control("cannot connect to your mediator", e))?;
    let result = join_with(&agent, inv, &offer, &id.did, &mine, timeout, progress).await;
    agent.stop();
    let (roster, party) = result?;
    let rec = MpcSessionRecord {
        offer,
        identity: id.name,
        coordinator: false,
        roster: Some(roster),
        party: Some(party),
        last_attempt: None,
    };
    MpcSessions::at(home).save(&rec)?;
    Ok(rec)
}

async fn join_with(
    agent: &Agent,
    inv: &Invitation,
    offer: &Offer,
    my_did: &str,
    mine: &Program,
    timeout: Duration,
    progress: Progress<'_>,
) -> Result<(Roster, PartyId), MpcError> {
    let mut lobby = agent.subscribe(LOBBY_PREFIX);
    let mut problems = agent.subscribe(PROBLEM_PREFIX);
    learn(agent, &offer.coordinator, &offer.coordinator_services).await?;
    let body = Join {
        mpc_session_id: offer.mpc_session_id,
        program_sha256: mine.sha256.clone(),
        services: vec![service_json(&agent.own_service())],
    };
    let body =
        serde_json::to_value(&body).map_err(|e| MpcError::control("encoding the join", e))?;
    let mut msg = Message::new(mpc_did_didcomm::message::new_id(), JOIN_TYPE, body)
        .from(my_did.to_owned())
        .to(offer.coordinator.clone());
    msg.pthid = Some(inv.id.clone());
    let join_id = msg.id.clone();
    agent.send(&offer.coordinator, msg).await.map_err(|e| {
        MpcError::control(
            format!("cannot reach the coordinator {}", offer.coordinator),
            e,
        )
    })?;
    progress(format!(
        "joined MPC session {} at {}; waiting for the other parties",
        offer.mpc_session_id, offer.coordinator
    ));
    let deadline = tokio::time::Instant::now() + timeout;
    let stopped = || MpcError::control("the control plane stopped", "the agent ended");
    let mut ticker = tokio::time::interval(PROGRESS_EVERY);
    ticker.tick().await;
    loop {
        let got: Inbound = tokio::select! {
            m = lobby.recv() => m.ok_or_else(stopped)?,
            m = problems.recv() => m.ok_or_else(stopped)?,
            _ = ticker.tick() => {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                progress(format!(
                    "waiting for the roster from the coordinator ({}): {} s left",
                    offer.coordinator,
                    left.as_secs()
                ));
                continue;
            }
            () = tokio::time::sleep_until(deadline) => return Err(MpcError::Timeout {
                what: "waiting for the roster".into(),
                secs: timeout.as_secs(),
            }),
        };
        // Not from the coordinator we joined: not ours to act on (spec/lobby.md §4, party 1).
        if got.sender.as_deref() != Some(offer.coordinator.as_str()) {
            continue;
        }
        if got.message.type_ == PROBLEM_REPORT_TYPE {
            let about_us = got.message.thid.as_deref() == Some(join_id.as_str())
                || got.message.pthid.as_deref() == Some(join_id.as_str());
            if !about_us {
                continue;
            }
            let report = ProblemReport::from_message(&got.message)
                .map_err(|e| MpcError::control("a malformed refusal", e))?;
            return Err(MpcError::Refused {
                code: report.code,
                comment: report.comment.unwrap_or_default(),
            });
        }
        if got.message.type_ != ROSTER_TYPE {
            continue;
        }
        match check_roster(agent, &got, offer, my_did).await {
            Ok(r) => return Ok(r),
            Err(e) => progress(format!("ignored a roster: {e}")),
        }
    }
}

/// The signed roster inside an authcrypt message: verify the JWS, then the lobby checks.
async fn check_roster(
    agent: &Agent,
    got: &Inbound,
    offer: &Offer,
    my_did: &str,
) -> Result<(Roster, PartyId), MpcError> {
    let bad = |s: &str| MpcError::control("a roster", s);
    if !(got.meta.encrypted && got.meta.authenticated) {
        return Err(bad("not authcrypt"));
    }
    let signed = got
        .message
        .body
        .get("signed")
        .ok_or_else(|| bad("without a signed body (bad-signature)"))?;
    let jws = serde_json::to_vec(signed).map_err(|e| bad(&e.to_string()))?;
    let (inner, meta) = agent
        .client()
        .unpack(&jws)
        .await
        .map_err(|_| bad("whose signature does not verify (bad-signature)"))?;
    if !meta.non_repudiation || meta.encrypted {
        return Err(bad("that is not a signed message (bad-signature)"));
    }
    let signer = meta.sign_from.as_deref().map(mpc_did_didcomm::did_of);
    if inner.type_ != ROSTER_TYPE {
        return Err(bad("whose signed payload is not a roster"));
    }
    let roster: Roster =
        serde_json::from_value(inner.body.clone()).map_err(|e| bad(&e.to_string()))?;
    for p in &roster.parties {
        check_services(&p.services).map_err(|e| bad(&format!("whose party {}: {e}", p.id)))?;
    }
    let party = roster.accept(offer, signer, my_did, now())?;
    Ok((roster, party))
}

/// `host`: admit joins (spec/lobby.md §4, coordinator side), refusing with Report Problem;
/// when all N are in, store the roster, sign it and send it to everyone (a send that fails
/// for now is tried again, spec/lobby.md §1 "Roster delivery"). With a stored roster: send
/// it to everyone again.
///
/// # Errors
/// Not the coordinator, timeout, mediator failures; a party the roster did not reach
/// (the roster is stored then, and the error says how to send it again).
pub async fn host(
    home: &Path,
    mpc: Option<&str>,
    timeout: Duration,
    progress: Progress<'_>,
) -> Result<MpcSessionRecord, MpcError> {
    let store = MpcSessions::at(home);
    let mut rec = store.load(mpc)?;
    if !rec.coordinator {
        return Err(MpcError::NotCoordinator(rec.id()));
    }
    // One lobby per MPC session: a second `host` says so instead of competing for joins.
    let _lock = store.lock_host(&rec.id())?;
    let (id, client) = registered_client(home, Some(&rec.identity))?;
    let agent = Agent::start(client)
        .await
        .map_err(|e| MpcError::control("cannot connect to your mediator", e))?;
    let missed = if let Some(roster) = rec.roster.clone() {
        // spec/lobby.md §1 "Roster delivery": hosting again sends the stored roster again.
        progress(format!(
            "MPC session {} already has all its parties; sending its roster to them again \
             (late joins are refused while `mpc-did run` runs here)",
            rec.id()
        ));
        send_roster(&agent, &id.did, &roster, progress).await
    } else {
        match host_with(&agent, &rec.offer, timeout, progress).await {
            Ok(roster) => {
                // Stored before it is sent: a party that does not get it now can be sent
                // it again (host again), and `run` works for those that did.
                rec.roster = Some(roster.clone());
                rec.party = Some(0);
                store.save(&rec)?;
                send_roster(&agent, &id.did, &roster, progress).await
            }
            Err(e) => Err(e),
        }
    };
    agent.stop();
    let missed = missed?;
    if !missed.is_empty() {
        return Err(MpcError::control(
            format!(
                "the roster is stored, but {} did not get it",
                missed.join("; ")
            ),
            format!(
                "run `mpc-did mpc host --mpc {}` again (it sends the stored roster to every \
                 party) while they wait in `mpc-did join`",
                rec.id()
            ),
        ));
    }
    Ok(rec)
}

/// How long the roster is tried per party while its sending fails for now.
const ROSTER_SEND_LIMIT: Duration = Duration::from_secs(30);
/// The pause before a roster refused for now is sent again.
const ROSTER_RETRY_PAUSE: Duration = Duration::from_secs(1);

/// Send the signed roster to every other party at once, each tried again every
/// [`ROSTER_RETRY_PAUSE`] within [`ROSTER_SEND_LIMIT`] while the failure is transient (the
/// party's mediator busy or restarting). Returns the parties it did not reach, with why.
async fn send_roster(
    agent: &Agent,
    my_did: &str,
    roster: &Roster,
    progress: Progress<'_>,
) -> Result<Vec<String>, MpcError> {
    let signed = sign_roster(agent, my_did, roster).await?;
    let (said, mut heard) = tokio::sync::mpsc::unbounded_channel::<String>();
    let mut sends = tokio::task::JoinSet::new();
    for p in roster.parties.iter().filter(|p| p.did != my_did) {
        let msg = Message::new(
            mpc_did_didcomm::message::new_id(),
            ROSTER_TYPE,
            json!({"session_id": roster.mpc_session_id, "signed": signed}),
        )
        .from(my_did.to_owned())
        .to(p.did.clone());
        let (agent, pid, did, said) = (agent.clone(), p.id, p.did.clone(), said.clone());
        sends.spawn(async move {
            let first = match agent.send(&did, msg.clone()).await {
                Ok(()) => return (pid, did, 1, Ok(())),
                Err(e) if e.is_transient() => e,
                Err(e) => return (pid, did, 1, Err(e)),
            };
            let _ = said.send(format!(
                "cannot send the roster to party {pid} ({did}) yet: {first}; trying again every \
                 {} s for up to {} s",
                ROSTER_RETRY_PAUSE.as_secs(),
                ROSTER_SEND_LIMIT.as_secs()
            ));
            tokio::time::sleep(ROSTER_RETRY_PAUSE).await;
            let (tries, r) = agent
                .send_within(
                    &did,
                    msg,
                    ROSTER_SEND_LIMIT.saturating_sub(ROSTER_RETRY_PAUSE),
                    ROSTER_RETRY_PAUSE,
                )
                .await;
            (pid, did, tries + 1, r)
        });
    }
    drop(said);
    let mut missed = Vec::new();
    loop {
        tokio::select! {
            Some(line) = heard.recv() => progress(line),
            joined = sends.join_next() => {
                let Some(joined) = joined else { break };
                let (pid, did, tries, r) =
                    joined.map_err(|e| MpcError::control("roster send task", e))?;
                match r {
                    Ok(()) if tries > 1 => progress(format!(
                        "the roster reached party {pid} ({did}) after {tries} tries"
                    )),
                    Ok(()) => {}
                    Err(e) => {
                        progress(format!(
                            "cannot send the roster to party {pid} ({did}): {e} (after {tries} tries)"
                        ));
                        missed.push(format!("party {pid} ({did})"));
                    }
                }
            }
        }
    }
    while let Ok(line) = heard.try_recv() {
        progress(line);
    }
    if missed.is_empty() {
        progress(format!(
            "all {} parties in; roster sent (hash {})",
            roster.parties.len(),
            roster.roster_hash
        ));
    }
    Ok(missed)
}

async fn host_with(
    agent: &Agent,
    offer: &Offer,
    timeout: Duration,
    progress: Progress<'_>,
) -> Result<Roster, MpcError> {
    let mut inbox = agent.subscribe(LOBBY_PREFIX);
    let mut lobby = Coordinator::new(offer.clone());
    progress(format!(
        "MPC session {}: waiting for {} more part{}",
        offer.mpc_session_id,
        offer.parties - 1,
        if offer.parties == 2 { "y" } else { "ies" }
    ));
    let deadline = tokio::time::Instant::now() + timeout;
    // Refusals go out in the background, a few at a time: a joiner's endpoint is a URL it
    // chose, and a slow one must not hold the lobby (spec/lobby.md §7).
    let mut refusals = tokio::task::JoinSet::new();
    let mut ticker = tokio::time::interval(PROGRESS_EVERY);
    ticker.tick().await;
    while !lobby.is_full() {
        while refusals.try_join_next().is_some() {}
        let got = tokio::select! {
            m = inbox.recv() => m.ok_or_else(|| MpcError::control("the control plane stopped", "the agent ended"))?,
            _ = ticker.tick() => {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                let joined = lobby.roster().map_or_else(|| members(&lobby), |r| r.parties.len());
                progress(format!(
                    "waiting for {} more part{}: {} s left",
                    usize::from(offer.parties).saturating_sub(joined),
                    if usize::from(offer.parties).saturating_sub(joined) == 1 { "y" } else { "ies" },
                    left.as_secs()
                ));
                continue;
            }
            () = tokio::time::sleep_until(deadline) => return Err(MpcError::Timeout {
                what: format!("waiting for the parties: only {} of {} joined",
                    members(&lobby), offer.parties),
                secs: timeout.as_secs(),
            }),
        };
        if got.message.type_ != JOIN_TYPE {
            continue;
        }
        // spec/lobby.md §4 coordinator 1: authcrypt, and the authenticated sender is `from`.
        let Some(sender) = got.sender.clone() else {
            continue;
        };
        if !got.meta.authenticated
            || !got.meta.encrypted
            || got.message.from.as_deref() != Some(sender.as_str())
        {
            continue;
        }
        // Whoever does not name this MPC session does not hold its invitation: a stranger
        // who knows our DID. Nothing is sent on its behalf (spec/lobby.md §7).
        let join: Join = match serde_json::from_value::<Join>(got.message.body.clone()) {
            Ok(j) if j.mpc_session_id == offer.mpc_session_id => j,
            Ok(_) | Err(_) => {
                progress(format!(
                    "ignored a join from {sender} that does not name this MPC session"
                ));
                continue;
            }
        };
        // A service no message could be packed for (audit H1): malformed, so ignored, and
        // nothing is sent on its behalf (spec/lobby.md §7).
        if let Err(e) = check_services(&join.services) {
            progress(format!("ignored a join from {sender}: {e}"));
            continue;
        }
        // Where the joiner receives DIDComm: recorded, not contacted.
        if let Err(e) = learn(agent, &sender, &join.services).await {
            progress(format!("cannot reach {sender}: {e}"));
            continue;
        }
        match lobby.handle_join(&sender, &join, now()) {
            Ok(JoinOutcome::Accepted(p)) => progress(format!("party {p} joined: {sender}")),
            Ok(JoinOutcome::Repeated(_)) => {}
            Err(e) => {
                progress(format!("refused {sender}: {e}"));
                if refusals.len() >= MAX_PENDING_REFUSALS {
                    progress(format!("no refusal sent to {sender}: too many in flight"));
                    continue;
                }
                let agent = agent.clone();
                let join_id = got.message.id.clone();
                refusals.spawn(async move {
                    refuse(&agent, &sender, &join_id, e.reason(), &e.to_string()).await;
                });
            }
        }
    }
    let roster = lobby
        .roster()
        .ok_or_else(|| MpcError::control("the lobby", "full but no roster"))?;
    // Refusals still in flight get a moment (bounded by the send timeout) to go out.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while refusals.join_next().await.is_some() {}
    })
    .await;
    Ok(roster)
}

/// The roster as a DIDComm signed message (JWS, EdDSA, our authentication key).
async fn sign_roster(
    agent: &Agent,
    did: &str,
    roster: &Roster,
) -> Result<serde_json::Value, MpcError> {
    let body =
        serde_json::to_value(roster).map_err(|e| MpcError::control("signing the roster", e))?;
    let msg =
        Message::new(mpc_did_didcomm::message::new_id(), ROSTER_TYPE, body).from(did.to_owned());
    let client = agent.client();
    let (jws, _) = mpc_did_didcomm::pack_signed(&msg, did, client.resolver(), client.secrets())
        .await
        .map_err(|e| MpcError::control("signing the roster", e))?;
    serde_json::from_str(&jws).map_err(|e| MpcError::control("signing the roster", e))
}

/// Report Problem 2.0 with code `e.p.req.<reason>` (spec/lobby.md §5); best effort.
async fn refuse(agent: &Agent, to: &str, join_id: &str, reason: &str, comment: &str) {
    let Ok(report) = ProblemReport::new(format!("e.p.req.{reason}"), Some(comment.to_owned()))
    else {
        return;
    };
    let Ok(mut msg) = report.to_message(join_id) else {
        return;
    };
    msg.thid = Some(join_id.to_owned());
    msg.from = Some(agent.did().to_owned());
    msg.to = Some(vec![to.to_owned()]);
    let _ = agent.send(to, msg).await;
}

/// While the coordinator runs the MPC session: refuse every join to it (it is full and has
/// started) with Report Problem `e.p.req.full` (spec/lobby.md §5), so a late joiner hears
/// why instead of waiting out its timeout. Only joins naming this MPC session are taken:
/// the rest stay unacknowledged for the `host` of another MPC session of the same identity
/// (spec/lobby.md §7). Runs until the agent stops.
pub(crate) async fn refuse_late_joins(agent: Agent, roster: Roster, progress: impl Fn(String)) {
    let ours = roster.mpc_session_id;
    let mut inbox = agent.subscribe_where(LOBBY_PREFIX, move |got| {
        got.message.type_ == JOIN_TYPE
            && serde_json::from_value::<Join>(got.message.body.clone())
                .is_ok_and(|j| j.mpc_session_id == ours)
    });
    let mut refusals = tokio::task::JoinSet::new();
    while let Some(got) = inbox.recv().await {
        while refusals.try_join_next().is_some() {}
        if got.message.type_ != JOIN_TYPE {
            continue;
        }
        let Some(sender) = got.sender.clone() else {
            continue;
        };
        // spec/lobby.md §4 check 1: authcrypt (a signed-only join is not answered).
        if !(got.meta.encrypted && got.meta.authenticated)
            || got.message.from.as_deref() != Some(sender.as_str())
        {
            continue;
        }
        let join = match serde_json::from_value::<Join>(got.message.body.clone()) {
            Ok(j) if j.mpc_session_id == roster.mpc_session_id => j,
            _ => continue,
        };
        if roster.parties.iter().any(|p| p.did == sender) {
            // A member's join again (at-least-once delivery): it has the roster.
            continue;
        }
        if let Err(e) = check_services(&join.services) {
            progress(format!("ignored a late join from {sender}: {e}"));
            continue;
        }
        if refusals.len() >= MAX_PENDING_REFUSALS {
            continue;
        }
        progress(format!(
            "refused a late join from {sender}: the MPC session is full and running"
        ));
        let (agent, join_id) = (agent.clone(), got.message.id.clone());
        let comment = format!(
            "MPC session {} already has all its {} parties and has started",
            join.mpc_session_id,
            roster.parties.len()
        );
        let services = join.services.clone();
        refusals.spawn(async move {
            if learn(&agent, &sender, &services).await.is_ok() {
                refuse(&agent, &sender, &join_id, "full", &comment).await;
            }
        });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod late_join_tests {
    use super::*;
    use mpc_did_agent::{expect, AgentConfig, Hold};
    use mpc_did_lobby::{MpcSessionId, RosterEntry};
    use mpc_did_testkit::mediator::{
        loopback_mediator, registered_agent, registered_client, Identity,
    };

    /// spec/lobby.md §7, "Messages a subscriber does not take": a running coordinator
    /// refuses a late join to its own MPC session and keeps — holds, unacknowledged — a
    /// join for another MPC session of the same identity, for that session's `host`.
    /// Before the fix it took that join and dropped it (acknowledged: lost).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_running_coordinator_keeps_joins_for_another_mpc_session() {
        let dir = tempfile::tempdir().unwrap();
        let m = loopback_mediator(dir.path()).await;
        let (joiner, _) = registered_agent(&m.public_url).await;
        let client = registered_client(&m.public_url, Identity::generate()).await;
        // As `run` starts its agent (run.rs): lobby messages are held.
        let config = AgentConfig {
            hold: vec![Hold::any_sender(LOBBY_PREFIX)],
            ..AgentConfig::default()
        };
        let coordinator = Agent::start_with(client, config).await.unwrap();
        let roster = Roster {
            mpc_session_id: MpcSessionId::random(),
            program: Program {
                name: "p.py".into(),
                sha256: "00".repeat(32),
            },
            mpyc_args: Vec::new(),
            parties: vec![RosterEntry {
                id: 0,
                did: coordinator.did().to_owned(),
                services: Vec::new(),
            }],
            expires_time: u64::MAX,
            roster_hash: String::new(),
        };
        tokio::spawn(refuse_late_joins(
            coordinator.clone(),
            roster.clone(),
            |_| {},
        ));
        joiner
            .learn_service(coordinator.did(), coordinator.own_service())
            .await
            .unwrap();
        let mut problems = joiner.subscribe(PROBLEM_PREFIX);
        let join = |mpc_session_id| {
            let body = Join {
                mpc_session_id,
                program_sha256: "00".repeat(32),
                services: vec![service_json(&joiner.own_service())],
            };
            Message::new(
                mpc_did_didcomm::message::new_id(),
                JOIN_TYPE,
                serde_json::to_value(&body).unwrap(),
            )
            .from(joiner.did().to_owned())
            .to(coordinator.did().to_owned())
        };
        let other = join(MpcSessionId::random());
        joiner.send(coordinator.did(), other).await.unwrap();
        let ours = join(roster.mpc_session_id);
        joiner.send(coordinator.did(), ours).await.unwrap();
        // The inbox routes in arrival order: once our join is refused, the other one was
        // routed before it.
        expect(
            &mut problems,
            Duration::from_secs(10),
            "the refusal",
            |_| Some(()),
        )
        .await
        .unwrap();
        assert_eq!(
            coordinator.held(),
            1,
            "the other MPC session's join is held"
        );
        m.shutdown().await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod oversized_service_tests {
    use super::*;
    use mpc_did_testkit::mediator::{loopback_mediator, registered_agent};
    use std::sync::{Arc, Mutex};

    fn join(
        from: &Agent,
        offer: &Offer,
        sha256: &str,
        services: Vec<serde_json::Value>,
    ) -> Message {
        let body = Join {
            mpc_session_id: offer.mpc_session_id,
            program_sha256: sha256.to_owned(),
            services,
        };
        let to = offer.coordinator.clone();
        Message::new(
            mpc_did_didcomm::message::new_id(),
            JOIN_TYPE,
            serde_json::to_value(&body).unwrap(),
        )
        .from(from.did().to_owned())
        .to(to)
    }

    /// Audit H1 (spec/lobby.md §7): an invitation holder's join with a wrong program and a
    /// service listing 64 routing keys (a valid key, 64 times). The host used to record
    /// that service and pack its refusal through 64 forward layers (about 10¹¹ bytes). Now
    /// the join is ignored with a progress line, nothing is sent to it, and a correct joiner
    /// is still admitted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_join_with_64_routing_keys_is_ignored_and_the_lobby_still_forms() {
        let dir = tempfile::tempdir().unwrap();
        let m = loopback_mediator(dir.path()).await;
        let (coordinator, _) = registered_agent(&m.public_url).await;
        let (mallory, _) = registered_agent(&m.public_url).await;
        let (alice, _) = registered_agent(&m.public_url).await;
        let program = Program::from_bytes("p.py", b"print(1)");
        let mut offer = Offer::new(
            coordinator.did().to_owned(),
            2,
            program.clone(),
            Vec::new(),
            now() + 600,
        )
        .unwrap();
        offer.coordinator_services = vec![service_json(&coordinator.own_service())];
        for a in [&mallory, &alice] {
            a.learn_service(coordinator.did(), coordinator.own_service())
                .await
                .unwrap();
        }
        let mut problems = mallory.subscribe(PROBLEM_PREFIX);
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let record = {
            let lines = lines.clone();
            move |l: String| lines.lock().unwrap().push(l)
        };
        let mut bad = service_json(&mallory.own_service());
        bad["routingKeys"] = json!(vec![mallory.own_service().routing_keys[0].clone(); 64]);
        let ignored = format!("ignored a join from {}", mallory.did());
        let joins = async {
            let msg = join(&mallory, &offer, &"00".repeat(32), vec![bad]);
            mallory.send(coordinator.did(), msg).await.unwrap();
            // Alice joins once Mallory's join was handled, so the lobby is not full before.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while !lines
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.starts_with(&ignored))
            {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "Mallory's join was not ignored: {:?}",
                    lines.lock().unwrap()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let msg = join(
                &alice,
                &offer,
                &program.sha256,
                vec![service_json(&alice.own_service())],
            );
            alice.send(coordinator.did(), msg).await.unwrap();
        };
        let (hosted, ()) = tokio::join!(
            tokio::time::timeout(
                Duration::from_secs(90),
                host_with(&coordinator, &offer, Duration::from_secs(60), &record),
            ),
            joins
        );
        let roster = hosted.expect("the host stalled").unwrap();
        assert_eq!(roster.parties.len(), 2);
        assert_eq!(roster.parties[1].did, alice.did());
        let seen = lines.lock().unwrap().clone();
        assert!(
            seen.iter()
                .any(|l| l.starts_with(&ignored) && l.contains("64 routing keys")),
            "{seen:?}"
        );
        // Nothing was sent on Mallory's behalf: no refusal reaches it.
        assert!(
            tokio::time::timeout(Duration::from_secs(2), problems.recv())
                .await
                .is_err(),
            "Mallory was sent a refusal"
        );
        m.shutdown().await;
    }
}
