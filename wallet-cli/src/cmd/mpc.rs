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
//! This module parses arguments and prints; the work is `mpc_did_mpc` (lobby host/join,
//! runs) and the records are the wallet's (`mpc_did_wallet::MpcSessions`).

pub mod run;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use mpc_did_didcomm::Invitation;
use mpc_did_mpc::{lobby, MpcSessionRecord, MpcSessions};
use serde_json::json;

use crate::ctx::Ctx;

#[derive(clap::Subcommand, Debug)]
pub enum MpcCommand {
    /// Create an MPC session as its coordinator (party 0); prints its id.
    ///
    /// Example: mpc-did mpc new --parties 3 --program secretsanta.py -- --people 3 4
    New(NewArgs),
    /// Make the Out-of-Band invitation to an MPC session (URL, JSON, QR code); also
    /// `mpc-did invite --mpc ID`.
    Invite(InviteArgs),
    /// Join an MPC session from its invitation; waits for the roster. Also `mpc-did join`.
    Join(JoinArgs),
    /// As coordinator: admit joins until all parties are in, then send everyone the roster.
    Host(HostArgs),
    /// Run the MPyC program of an MPC session over secure sessions with every party.
    Run(run::RunArgs),
    /// List the MPC sessions this wallet knows.
    List,
    /// Show one MPC session: its lobby (who joined, as which party) and its last run
    /// (attempt, sessions and paths, how it ended).
    ///
    /// Example: mpc-did mpc status 3f2a
    Status {
        /// MPC session id (or a unique prefix) [default: the newest one].
        #[arg(value_name = "ID")]
        mpc: Option<String>,
    },
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
    #[arg(long = "mpc", alias = "session", value_name = "ID")]
    pub mpc: Option<String>,
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
    /// The invitation URL (a short link `…?_oobid=…` is fetched), its JSON, or a file
    /// holding either (`-`: standard input).
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
    #[arg(long = "mpc", alias = "session", value_name = "ID")]
    pub mpc: Option<String>,
    /// How long to wait for all parties (seconds).
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
}

pub async fn run(ctx: &Ctx, cmd: MpcCommand) -> anyhow::Result<()> {
    let progress = |s: String| eprintln!("{s}");
    match cmd {
        MpcCommand::New(a) => {
            let rec = lobby::new_session(
                &ctx.home,
                a.identity.as_deref(),
                a.parties,
                &a.program,
                a.args,
                parse_duration(&a.expires)?,
            )?;
            let id = rec.id();
            if ctx.json {
                println!("{}", json!({"session_id": id, "offer": rec.offer}));
            } else {
                println!("{id}");
                eprintln!(
                    "MPC session for {} parties running {} (sha256 {}); next: `mpc-did invite --mpc {id}`",
                    rec.offer.parties, rec.offer.program.name, rec.offer.program.sha256,
                );
            }
            Ok(())
        }
        MpcCommand::Invite(a) => invite(ctx, &a),
        MpcCommand::Join(a) => {
            let inv = read_invitation(&a.invitation).await?;
            let rec = until_interrupted(
                "run the same `mpc-did join` again to go on",
                lobby::join(
                    &ctx.home,
                    &inv,
                    &a.program,
                    a.identity.as_deref(),
                    Duration::from_secs(a.timeout),
                    &progress,
                ),
            )
            .await?;
            print_roster(ctx, &rec)
        }
        MpcCommand::Host(a) => {
            let rec = until_interrupted(
                "run `mpc-did mpc host` again to go on waiting for the joins",
                lobby::host(
                    &ctx.home,
                    a.mpc.as_deref(),
                    Duration::from_secs(a.timeout),
                    &progress,
                ),
            )
            .await?;
            print_roster(ctx, &rec)
        }
        MpcCommand::Run(a) => run::run_cli(ctx, a).await,
        MpcCommand::List => list(ctx),
        MpcCommand::Status { mpc } => status(ctx, mpc.as_deref()),
    }
}

/// Runs a lobby step until it ends or Ctrl-C comes; on Ctrl-C says what to do next and
/// exits 130 (the host lock is a file lock the kernel releases). The handler is installed
/// explicitly, so Ctrl-C also stops a `host`/`join` started by a shell that ignores SIGINT
/// for its background jobs.
async fn until_interrupted<T, E>(
    next: &str,
    step: impl std::future::Future<Output = Result<T, E>>,
) -> anyhow::Result<T>
where
    anyhow::Error: From<E>,
{
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    tokio::select! {
        r = step => Ok(r?),
        _ = interrupt.recv() => {
            eprintln!("mpc-did: interrupted (Ctrl-C); {next}");
            std::process::exit(run::EXIT_INTERRUPTED)
        }
    }
}

fn status(ctx: &Ctx, mpc: Option<&str>) -> anyhow::Result<()> {
    let rec = MpcSessions::at(&ctx.home).load(mpc)?;
    if ctx.json {
        println!("{}", serde_json::to_string_pretty(&rec)?);
        return Ok(());
    }
    let o = &rec.offer;
    println!(
        "MPC session {}: {} parties, program {} (sha256 {})",
        rec.id(),
        o.parties,
        o.program.name,
        o.program.sha256
    );
    println!(
        "  you: {} ({}), expires at {} (Unix time)",
        rec.identity,
        if rec.coordinator {
            "coordinator"
        } else {
            "joined"
        },
        o.expires_time
    );
    match (&rec.roster, rec.party) {
        (Some(r), Some(me)) => {
            println!("  lobby: complete; you are party {me}");
            for p in &r.parties {
                println!("    party {}: {}", p.id, p.did);
            }
        }
        _ if rec.coordinator => {
            println!(
                "  lobby: open; `mpc-did mpc host --mpc {}` admits joins",
                rec.id()
            )
        }
        _ => println!("  lobby: waiting for the roster (`mpc-did join` did not finish)"),
    }
    match &rec.last_attempt {
        None => println!("  last run: none"),
        Some(a) => {
            println!(
                "  last run: attempt {} started at {} (Unix time)",
                a.attempt, a.started
            );
            for (party, path) in &a.sessions {
                println!("    session with party {party}: up on {path}");
            }
            println!(
                "    outcome: {}",
                a.outcome
                    .as_deref()
                    .unwrap_or("unknown (still running, or killed)")
            );
        }
    }
    Ok(())
}

fn print_roster(ctx: &Ctx, rec: &MpcSessionRecord) -> anyhow::Result<()> {
    let roster = rec.roster.as_ref().context("no roster")?;
    if ctx.json {
        println!(
            "{}",
            json!({"session_id": roster.mpc_session_id, "party": rec.party, "roster": roster})
        );
        return Ok(());
    }
    println!(
        "MPC session {}: you are party {} of {}; program {} (sha256 {})",
        roster.mpc_session_id,
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

fn list(ctx: &Ctx) -> anyhow::Result<()> {
    let out = MpcSessions::at(&ctx.home).list();
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
            r.id(),
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

/// The invitation's URL for the MPC session `mpc` (an id or unique prefix; `None`: the
/// newest).
///
/// # Errors
/// No such session or not its coordinator.
pub fn invitation_url(
    ctx: &Ctx,
    mpc: Option<&str>,
    base: Option<&str>,
) -> anyhow::Result<(Invitation, String)> {
    let inv = lobby::invitation_for(&ctx.home, mpc)?;
    let url = inv.to_url(base.unwrap_or(crate::cmd::invite::FALLBACK_BASE_URL))?;
    Ok((inv, url))
}

/// `mpc-did mpc invite` (and `mpc-did invite --mpc`).
///
/// # Errors
/// No such MPC session, the QR PNG cannot be written.
pub fn invite(ctx: &Ctx, a: &InviteArgs) -> anyhow::Result<()> {
    use mpc_did_didcomm::protocols::qr::QrMatrix;
    let (inv, url) = invitation_url(ctx, a.mpc.as_deref(), a.base_url.as_deref())?;
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

/// An invitation given on the command line: its URL, its JSON, a file holding either, or
/// `-` for standard input. A short link (`…?_oobid=…`) is fetched first (DIDComm v2.1
/// "Short URL Message Retrieval", spec/didcomm.md §5 "Invitations").
pub(crate) async fn read_invitation(input: &str) -> anyhow::Result<Invitation> {
    let path = PathBuf::from(input);
    let text = if input == "-"
        || (!input.contains("_oob") && !input.trim_start().starts_with('{') && path.is_file())
    {
        let bytes = crate::cmd::didcomm::read_input(&path)?;
        String::from_utf8(bytes).context("the invitation is not UTF-8 text")?
    } else {
        input.to_owned()
    };
    let mut text = text.trim().to_owned();
    if !text.starts_with('{') && text.contains("_oobid=") {
        eprintln!("fetching the short link {text} …");
        text = mpc_did_agent::client::resolve_short_link(&text)
            .await
            .with_context(|| format!("fetching the short link {text}"))?;
    }
    Invitation::decode(&text).context("decoding the invitation")
}
