//! `mpc-did mpc ...`: the lobby of an MPC session (spec/lobby.md) carried over DIDComm,
//! and `mpc-did mpc run` (alias `mpc-did run`), which runs an unmodified MPyC program over
//! secure sessions with every other party.
//!
//! ```text
//!  coordinator: mpc new ─> mpc invite (OOB URL/QR) ·····> joiner: mpc join URL
//!               mpc host <── join (authcrypt) ──────────────────────┘
//!               (when N parties) ── roster (JWS inside authcrypt) ──> every party
//!  every party: mpc run -- python prog.py   (hash check, secure sessions, proxy, MPyC)
//! ```
//!
//! What a party knows about an MPC session lives in `<home>/mpc/<session id>.json`
//! (mode 0600): the offer, its role, and the roster once received. The lobby logic itself
//! (checks, party ids, roster hash) is `mpc_did_lobby`; this module only moves its messages.

pub mod run;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use mpc_did_agent::client::MediatorInfo;
use mpc_did_agent::{Agent, Inbound};
use mpc_did_didcomm::protocols::report_problem::{ProblemReport, PROBLEM_REPORT_TYPE};
use mpc_did_didcomm::{Attachment, Invitation, Message};
use mpc_did_lobby::{
    Coordinator, Join, JoinOutcome, Offer, Program, Roster, GOAL_CODE, JOIN_TYPE,
    OFFER_ATTACHMENT_ID, ROSTER_TYPE,
};
use mpc_did_resolver::DidCommService;
use mpc_did_wallet::Wallet;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::cmd::mediator::{load_identity, registered_client, setting_key};
use crate::ctx::Ctx;

/// Message types of the lobby protocol share this prefix.
const LOBBY_PREFIX: &str = "https://mpc-did.org/lobby/1.0/";
const PROBLEM_PREFIX: &str = "https://didcomm.org/report-problem/2.0/";
/// Refusals being sent at once by `mpc host`; beyond, refused joiners get no report.
const MAX_PENDING_REFUSALS: usize = 8;
/// The largest program file we hash (MPyC programs are small scripts).
const MAX_PROGRAM_BYTES: u64 = 16 << 20;

#[derive(clap::Subcommand, Debug)]
pub enum MpcCommand {
    /// Create an MPC session as its coordinator (party 0); prints its id.
    ///
    /// Example: mpc-did mpc new --parties 3 --program secretsanta.py -- --people 3 4
    New(NewArgs),
    /// Make the Out-of-Band invitation to an MPC session (URL, JSON, QR code); also
    /// `mpc-did invite --session ID`.
    Invite(InviteArgs),
    /// Join an MPC session from its invitation; waits for the roster. Also `mpc-did join`.
    Join(JoinArgs),
    /// As coordinator: admit joins until all parties are in, then send everyone the roster.
    Host(HostArgs),
    /// Run the MPyC program of an MPC session over secure sessions with every party.
    Run(run::RunArgs),
    /// List the MPC sessions this wallet knows.
    List,
}

#[derive(clap::Args, Debug)]
pub struct NewArgs {
    /// Number of parties, coordinator included (2 to 64).
    #[arg(long, short = 'n')]
    pub parties: u16,
    /// The MPyC program every party must run (its SHA-256 is pinned in the offer).
    #[arg(long, value_name = "FILE")]
    pub program: PathBuf,
    /// How long joins are accepted and the roster is valid: e.g. 90s, 30m, 1h, 2d.
    #[arg(long, default_value = "1h")]
    pub expires: String,
    /// Coordinating identity [default: the default identity].
    #[arg(long = "id", value_name = "NAME")]
    pub identity: Option<String>,
    /// Program arguments every party passes after MPyC's own (after `--`).
    #[arg(last = true)]
    pub args: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub struct InviteArgs {
    /// MPC session id (or a unique prefix) [default: the newest one].
    #[arg(long)]
    pub session: Option<String>,
    /// Base of the link [default: https://didcomm.invalid/oob, a carrier only].
    #[arg(long, value_name = "URL")]
    pub base_url: Option<String>,
    /// Also write the QR code as a PNG image.
    #[arg(long, value_name = "FILE")]
    pub qr_png: Option<PathBuf>,
    /// Do not print the QR code in the terminal.
    #[arg(long)]
    pub no_qr: bool,
}

#[derive(clap::Args, Debug)]
pub struct JoinArgs {
    /// The invitation URL (or its JSON, or a file holding either).
    pub invitation: String,
    /// The program you will run; refused before joining if its hash differs from the offer's.
    #[arg(long, value_name = "FILE")]
    pub program: PathBuf,
    /// Joining identity [default: the default identity].
    #[arg(long = "id", value_name = "NAME")]
    pub identity: Option<String>,
    /// How long to wait for the roster (seconds).
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
}

#[derive(clap::Args, Debug)]
pub struct HostArgs {
    /// MPC session id (or a unique prefix) [default: the newest one].
    #[arg(long)]
    pub session: Option<String>,
    /// How long to wait for all parties (seconds).
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
}

/// What this wallet knows about one MPC session (`<home>/mpc/<id>.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub offer: Offer,
    /// Wallet name of the identity taking part.
    pub identity: String,
    /// Whether we coordinate (party 0).
    pub coordinator: bool,
    /// The roster, once all parties are in (checked with `Roster::accept`).
    #[serde(default)]
    pub roster: Option<Roster>,
    /// Our party id, once the roster is known.
    #[serde(default)]
    pub party: Option<u16>,
}

pub async fn run(ctx: &Ctx, cmd: MpcCommand) -> anyhow::Result<()> {
    match cmd {
        MpcCommand::New(a) => {
            let rec = new_session(
                ctx,
                a.identity.as_deref(),
                a.parties,
                &a.program,
                a.args,
                parse_duration(&a.expires)?,
            )?;
            if ctx.json {
                println!(
                    "{}",
                    json!({"session_id": rec.offer.session_id, "offer": rec.offer})
                );
            } else {
                println!("{}", rec.offer.session_id);
                eprintln!(
                    "MPC session for {} parties running {} (sha256 {}); next: `mpc-did invite --session {}`",
                    rec.offer.parties, rec.offer.program.name, rec.offer.program.sha256,
                    rec.offer.session_id
                );
            }
            Ok(())
        }
        MpcCommand::Invite(a) => invite(ctx, &a),
        MpcCommand::Join(a) => {
            let rec = join(
                ctx,
                &a.invitation,
                &a.program,
                a.identity.as_deref(),
                Duration::from_secs(a.timeout),
                &|s| eprintln!("{s}"),
            )
            .await?;
            print_roster(ctx, &rec)
        }
        MpcCommand::Host(a) => {
            let rec = host(
                ctx,
                a.session.as_deref(),
                Duration::from_secs(a.timeout),
                &|s| eprintln!("{s}"),
            )
            .await?;
            print_roster(ctx, &rec)
        }
        MpcCommand::Run(a) => run::run_cli(ctx, a).await,
        MpcCommand::List => list(ctx),
    }
}

fn print_roster(ctx: &Ctx, rec: &Record) -> anyhow::Result<()> {
    let roster = rec.roster.as_ref().context("no roster")?;
    if ctx.json {
        println!(
            "{}",
            json!({"session_id": roster.session_id, "party": rec.party, "roster": roster})
        );
        return Ok(());
    }
    println!(
        "MPC session {}: you are party {} of {}; program {} (sha256 {})",
        roster.session_id,
        rec.party.unwrap_or_default(),
        roster.parties.len(),
        roster.program.name,
        roster.program.sha256
    );
    for p in &roster.parties {
        println!("  party {}: {}", p.id, p.did);
    }
    println!("next: mpc-did mpc run -- python {}", roster.program.name);
    Ok(())
}

/// `90s`, `30m`, `1h`, `2d`, or plain seconds.
///
/// # Errors
/// Anything else.
pub fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .with_context(|| format!("bad duration {s:?}: use e.g. 90s, 30m, 1h, 2d"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => anyhow::bail!("bad duration unit in {s:?}: use s, m, h or d"),
    };
    Ok(Duration::from_secs(n.saturating_mul(mult)))
}

/// Read a program file (bounded) for hashing.
///
/// # Errors
/// The file cannot be read or is too large.
pub fn read_program(path: &Path) -> anyhow::Result<Vec<u8>> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    anyhow::ensure!(
        meta.len() <= MAX_PROGRAM_BYTES,
        "{} is larger than {} bytes: not an MPyC program",
        path.display(),
        MAX_PROGRAM_BYTES
    );
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

fn program_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// The directory holding MPC session records.
fn dir(home: &Path) -> PathBuf {
    home.join("mpc")
}

/// Store a record (0600, written to a temporary file then renamed).
///
/// # Errors
/// The file cannot be written.
pub fn save(home: &Path, rec: &Record) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    let d = dir(home);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&d)
        .with_context(|| format!("creating {}", d.display()))?;
    let path = d.join(format!("{}.json", rec.offer.session_id));
    let tmp = d.join(format!(".{}.tmp", rec.offer.session_id));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(serde_json::to_string_pretty(rec)?.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Load the record of `session` (an id or unique prefix), or the newest one.
///
/// # Errors
/// No such session, an ambiguous prefix, or a corrupt record.
pub fn load(home: &Path, session: Option<&str>) -> anyhow::Result<Record> {
    let d = dir(home);
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&d) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(id) = name.strip_suffix(".json") else {
                continue;
            };
            if session.is_some_and(|s| !id.starts_with(s)) {
                continue;
            }
            let modified = e
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH);
            found.push((modified, e.path()));
        }
    }
    if let Some(s) = session {
        anyhow::ensure!(
            found.len() <= 1,
            "MPC session prefix {s:?} is ambiguous: give more of the id"
        );
    }
    found.sort();
    let (_, path) = found.pop().with_context(|| match session {
        Some(s) => format!("no MPC session {s:?} in this wallet (see `mpc-did mpc list`)"),
        None => "no MPC session in this wallet: `mpc-did mpc new` or `mpc-did mpc join` first"
            .to_owned(),
    })?;
    anyhow::ensure!(
        std::fs::metadata(&path)?.len() <= 1 << 20,
        "{} is too large",
        path.display()
    );
    let text = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&text).with_context(|| format!("{} is corrupt", path.display()))
}

fn list(ctx: &Ctx) -> anyhow::Result<()> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir(&ctx.home)) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(id) = name.strip_suffix(".json") {
                if let Ok(rec) = load(&ctx.home, Some(id)) {
                    out.push(rec);
                }
            }
        }
    }
    if ctx.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    if out.is_empty() {
        println!("no MPC sessions");
    }
    for r in out {
        println!(
            "{}  {} parties  {}  {}  {}",
            r.offer.session_id,
            r.offer.parties,
            r.offer.program.name,
            if r.coordinator {
                "coordinator"
            } else {
                "joined"
            },
            match r.party {
                Some(p) => format!("party {p}"),
                None => "waiting for roster".to_owned(),
            }
        );
    }
    Ok(())
}

/// The identity's service at its registered mediator, as the lobby carries it.
fn own_service_json(wallet: &Wallet, name: &str, did: &str) -> anyhow::Result<serde_json::Value> {
    let info = wallet.setting(&setting_key(name))?.with_context(|| {
        format!("identity {name:?} has no mediator: run `mpc-did mediator register URL` first")
    })?;
    let info: MediatorInfo =
        serde_json::from_str(&info).context("stored mediator record is corrupt")?;
    Ok(service_json(&info.service_for(did)))
}

fn service_json(s: &DidCommService) -> serde_json::Value {
    json!({"uri": s.uri, "accept": s.accept, "routingKeys": s.routing_keys})
}

/// A lobby service object (`{"uri", "accept", "routingKeys"}`) as a [`DidCommService`].
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
async fn learn(agent: &Agent, did: &str, services: &[serde_json::Value]) -> anyhow::Result<()> {
    let doc = mpc_did_resolver::DidResolver::resolve(agent.client().resolver(), did)
        .await
        .with_context(|| format!("cannot resolve {did}"))?;
    if !doc.didcomm_services().is_empty() {
        return Ok(());
    }
    if let Some(s) = services.iter().find_map(|v| service_from_json(did, v)) {
        agent
            .learn_service(did, s)
            .await
            .with_context(|| format!("cannot use the endpoint of {did}"))?;
    }
    Ok(())
}

/// `mpc new`: create the offer and store it.
///
/// # Errors
/// No identity or mediator, unreadable program, invalid parameters.
pub fn new_session(
    ctx: &Ctx,
    identity: Option<&str>,
    parties: u16,
    program: &Path,
    args: Vec<String>,
    expires: Duration,
) -> anyhow::Result<Record> {
    let bytes = read_program(program)?;
    let wallet = Wallet::open(&ctx.home)?;
    let id = load_identity(&wallet, identity)?;
    let service = own_service_json(&wallet, &id.name, &id.did)?;
    drop(wallet);
    let expires_time = mpc_did_didcomm::message::now().saturating_add(expires.as_secs());
    let mut offer = Offer::new(
        id.did.clone(),
        parties,
        Program::from_bytes(&program_name(program), &bytes),
        args,
        expires_time,
    )?;
    offer.coordinator_services = vec![service];
    let rec = Record {
        offer,
        identity: id.name,
        coordinator: true,
        roster: None,
        party: None,
    };
    save(&ctx.home, &rec)?;
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
    inv.created_time = Some(mpc_did_didcomm::message::now());
    inv.expires_time = Some(offer.expires_time);
    inv.attachments.push(
        Attachment::json(serde_json::to_value(offer).unwrap_or_default())
            .with_id(OFFER_ATTACHMENT_ID)
            .with_media_type("application/json"),
    );
    inv
}

/// The invitation's URL for `session` (see [`invitation`]).
///
/// # Errors
/// No such session or not its coordinator.
pub fn invitation_url(
    ctx: &Ctx,
    session: Option<&str>,
    base: Option<&str>,
) -> anyhow::Result<(Invitation, String)> {
    let rec = load(&ctx.home, session)?;
    anyhow::ensure!(
        rec.coordinator,
        "you joined MPC session {} but do not coordinate it: only its coordinator invites",
        rec.offer.session_id
    );
    let inv = invitation(&rec.offer);
    let url = inv.to_url(base.unwrap_or(crate::cmd::invite::FALLBACK_BASE_URL))?;
    Ok((inv, url))
}

/// `mpc-did mpc invite` (and `mpc-did invite --session`).
///
/// # Errors
/// No such MPC session, the QR PNG cannot be written.
pub fn invite(ctx: &Ctx, a: &InviteArgs) -> anyhow::Result<()> {
    use mpc_did_didcomm::protocols::qr::QrMatrix;
    let (inv, url) = invitation_url(ctx, a.session.as_deref(), a.base_url.as_deref())?;
    let qr = QrMatrix::encode(url.as_bytes()).ok();
    if let Some(path) = &a.qr_png {
        let qr = qr
            .as_ref()
            .context("the invitation link is too long for a QR code")?;
        std::fs::write(path, qr.to_png(8)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if ctx.json {
        println!("{}", json!({"url": url, "invitation": inv.to_message()}));
        return Ok(());
    }
    println!("{url}");
    if !a.no_qr {
        if let Some(qr) = &qr {
            eprintln!();
            eprint!("{}", qr.to_terminal(false));
        }
    }
    eprintln!("\nGive this link to the other parties; they run `mpc-did join URL --program FILE`.");
    Ok(())
}

/// The offer attached to an invitation.
///
/// # Errors
/// Not an MPC invitation, or an invalid offer.
pub fn offer_of(inv: &Invitation) -> anyhow::Result<Offer> {
    anyhow::ensure!(
        inv.goal_code.as_deref() == Some(GOAL_CODE),
        "this invitation is not to an MPC session (goal code {:?}, expected {GOAL_CODE})",
        inv.goal_code
    );
    let att = inv
        .attachments
        .iter()
        .find(|a| a.id.as_deref() == Some(OFFER_ATTACHMENT_ID))
        .context("the invitation carries no MPC offer")?;
    let v = att
        .data
        .json
        .clone()
        .context("the MPC offer is not inline JSON")?;
    let offer: Offer = serde_json::from_value(v).context("the MPC offer is malformed")?;
    offer.validate()?;
    anyhow::ensure!(
        offer.coordinator == mpc_did_didcomm::did_of(&inv.from),
        "the offer's coordinator {} is not the invitation's sender {}",
        offer.coordinator,
        inv.from
    );
    Ok(offer)
}

fn read_invitation(input: &str) -> anyhow::Result<Invitation> {
    let path = PathBuf::from(input);
    let text = if !input.contains("_oob") && !input.trim_start().starts_with('{') && path.is_file()
    {
        anyhow::ensure!(
            std::fs::metadata(&path)?.len() <= 1 << 20,
            "invitation file too large"
        );
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?
    } else {
        input.to_owned()
    };
    Invitation::decode(text.trim()).context("decoding the invitation")
}

fn now() -> u64 {
    mpc_did_didcomm::message::now()
}

/// `mpc join`: check our program against the offer, send the join, wait for the roster
/// (or a refusal), check it (spec/lobby.md §4, party side) and store it.
///
/// # Errors
/// Program mismatch, refusal, a bad roster, timeout.
pub async fn join(
    ctx: &Ctx,
    invitation_text: &str,
    program: &Path,
    identity: Option<&str>,
    timeout: Duration,
    progress: &(dyn Fn(String) + Sync),
) -> anyhow::Result<Record> {
    let inv = read_invitation(invitation_text)?;
    let offer = offer_of(&inv)?;
    anyhow::ensure!(
        now() <= offer.expires_time,
        "the MPC session expired at {} (Unix time)",
        offer.expires_time
    );
    let bytes = read_program(program)?;
    let mine = Program::from_bytes(&program_name(program), &bytes);
    if mine.sha256 != offer.program.sha256 {
        anyhow::bail!(
            "program mismatch: the session runs {} with sha256 {}, but {} has sha256 {}",
            offer.program.name,
            offer.program.sha256,
            program.display(),
            mine.sha256
        );
    }
    let (id, client) = registered_client(ctx, identity)?;
    let agent = Agent::start(client)
        .await
        .context("cannot connect to your mediator")?;
    let mut lobby = agent.subscribe(LOBBY_PREFIX);
    let mut problems = agent.subscribe(PROBLEM_PREFIX);
    learn(&agent, &offer.coordinator, &offer.coordinator_services).await?;
    let body = Join {
        session_id: offer.session_id.clone(),
        program_sha256: mine.sha256.clone(),
        services: vec![service_json(&agent.own_service())],
    };
    let mut msg = Message::new(
        mpc_did_didcomm::message::new_id(),
        JOIN_TYPE,
        serde_json::to_value(&body)?,
    )
    .from(id.did.clone())
    .to(offer.coordinator.clone());
    msg.pthid = Some(inv.id.clone());
    let join_id = msg.id.clone();
    agent
        .send(&offer.coordinator, msg)
        .await
        .with_context(|| format!("cannot reach the coordinator {}", offer.coordinator))?;
    progress(format!(
        "joined MPC session {} at {}; waiting for the other parties",
        offer.session_id, offer.coordinator
    ));
    let deadline = tokio::time::Instant::now() + timeout;
    let (roster, party) = loop {
        let got: Inbound = tokio::select! {
            m = lobby.recv() => m.context("the control plane stopped")?,
            m = problems.recv() => m.context("the control plane stopped")?,
            () = tokio::time::sleep_until(deadline) => anyhow::bail!("timed out after {timeout:?} waiting for the roster"),
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
            let report = ProblemReport::from_message(&got.message)?;
            anyhow::bail!(
                "the coordinator refused the join: {} ({})",
                report.code,
                report.comment.unwrap_or_default()
            );
        }
        if got.message.type_ != ROSTER_TYPE {
            continue;
        }
        match check_roster(&agent, &got, &offer, &id.did).await {
            Ok(r) => break r,
            Err(e) => {
                progress(format!("ignored a roster: {e:#}"));
            }
        }
    };
    agent.stop();
    let rec = Record {
        offer,
        identity: id.name,
        coordinator: false,
        roster: Some(roster),
        party: Some(party),
    };
    save(&ctx.home, &rec)?;
    Ok(rec)
}

/// The signed roster inside an authcrypt message: verify the JWS, then the lobby checks.
async fn check_roster(
    agent: &Agent,
    got: &Inbound,
    offer: &Offer,
    my_did: &str,
) -> anyhow::Result<(Roster, u16)> {
    anyhow::ensure!(
        got.meta.encrypted && got.meta.authenticated,
        "not authcrypt"
    );
    let signed = got
        .message
        .body
        .get("signed")
        .context("roster without a signed body (bad-signature)")?;
    let jws = serde_json::to_vec(signed)?;
    let (inner, meta) = agent
        .client()
        .unpack(&jws)
        .await
        .context("the roster's signature does not verify (bad-signature)")?;
    anyhow::ensure!(
        meta.non_repudiation && !meta.encrypted,
        "the roster is not a signed message (bad-signature)"
    );
    let signer = meta.sign_from.as_deref().map(mpc_did_didcomm::did_of);
    anyhow::ensure!(inner.type_ == ROSTER_TYPE, "signed payload is not a roster");
    let roster: Roster =
        serde_json::from_value(inner.body.clone()).context("the roster is malformed")?;
    let party = roster.accept(offer, signer, my_did, now())?;
    Ok((roster, party))
}

/// `mpc host`: admit joins (spec/lobby.md §4, coordinator side), refusing with Report
/// Problem; when all N are in, sign the roster and send it to everyone.
///
/// # Errors
/// Not the coordinator, timeout, mediator failures.
pub async fn host(
    ctx: &Ctx,
    session: Option<&str>,
    timeout: Duration,
    progress: &(dyn Fn(String) + Sync),
) -> anyhow::Result<Record> {
    let mut rec = load(&ctx.home, session)?;
    anyhow::ensure!(
        rec.coordinator,
        "you joined MPC session {} but do not coordinate it",
        rec.offer.session_id
    );
    if rec.roster.is_some() {
        return Ok(rec);
    }
    let (id, client) = registered_client(ctx, Some(&rec.identity))?;
    let agent = Agent::start(client)
        .await
        .context("cannot connect to your mediator")?;
    let mut inbox = agent.subscribe(LOBBY_PREFIX);
    let mut lobby = Coordinator::new(rec.offer.clone());
    progress(format!(
        "MPC session {}: waiting for {} more part{}",
        rec.offer.session_id,
        rec.offer.parties - 1,
        if rec.offer.parties == 2 { "y" } else { "ies" }
    ));
    let deadline = tokio::time::Instant::now() + timeout;
    // Refusals go out in the background, a few at a time: a joiner's endpoint is a URL it
    // chose, and a slow one must not hold the lobby (spec/lobby.md §7).
    let mut refusals = tokio::task::JoinSet::new();
    while !lobby.is_full() {
        while refusals.try_join_next().is_some() {}
        let got = tokio::select! {
            m = inbox.recv() => m.context("the control plane stopped")?,
            () = tokio::time::sleep_until(deadline) => anyhow::bail!(
                "timed out after {timeout:?}: only {} of {} parties joined",
                lobby.roster().map_or(0, |r| r.parties.len()), rec.offer.parties),
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
            Ok(j) if j.session_id == rec.offer.session_id => j,
            Ok(_) | Err(_) => {
                progress(format!(
                    "ignored a join from {sender} that does not name this MPC session"
                ));
                continue;
            }
        };
        // Where the joiner receives DIDComm: recorded, not contacted.
        if let Err(e) = learn(&agent, &sender, &join.services).await {
            progress(format!("cannot reach {sender}: {e:#}"));
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
    let roster = lobby.roster().context("lobby full but no roster")?;
    let signed = sign_roster(&agent, &id.did, &roster).await?;
    // To every party at once: each send is bounded by the agent's send timeout.
    let mut sends = tokio::task::JoinSet::new();
    for p in roster.parties.iter().filter(|p| p.did != id.did) {
        let msg = Message::new(
            mpc_did_didcomm::message::new_id(),
            ROSTER_TYPE,
            json!({"session_id": roster.session_id, "signed": signed}),
        )
        .from(id.did.clone())
        .to(p.did.clone());
        let (agent, pid, did) = (agent.clone(), p.id, p.did.clone());
        sends.spawn(async move {
            agent
                .send(&did, msg)
                .await
                .with_context(|| format!("sending the roster to party {pid} ({did})"))
        });
    }
    while let Some(sent) = sends.join_next().await {
        sent.context("roster send task failed")??;
    }
    progress(format!(
        "all {} parties in; roster sent (hash {})",
        roster.parties.len(),
        roster.roster_hash
    ));
    // Refusals still in flight get a moment (bounded by the send timeout) to go out.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while refusals.join_next().await.is_some() {}
    })
    .await;
    agent.stop();
    rec.roster = Some(roster);
    rec.party = Some(0);
    save(&ctx.home, &rec)?;
    Ok(rec)
}

/// The roster as a DIDComm signed message (JWS, EdDSA, our authentication key).
async fn sign_roster(
    agent: &Agent,
    did: &str,
    roster: &Roster,
) -> anyhow::Result<serde_json::Value> {
    let msg = Message::new(
        mpc_did_didcomm::message::new_id(),
        ROSTER_TYPE,
        serde_json::to_value(roster)?,
    )
    .from(did.to_owned());
    let client = agent.client();
    let (jws, _) =
        mpc_did_didcomm::pack_signed(&msg, did, client.resolver(), client.secrets()).await?;
    Ok(serde_json::from_str(&jws)?)
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
