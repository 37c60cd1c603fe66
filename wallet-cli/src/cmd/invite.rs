//! `mpc-did invite`: make a DIDComm Out-of-Band 2.0 invitation (URL, JSON, QR code) and
//! `mpc-did invite decode`: show what one contains (spec/didcomm.md §"Invitations").
//! `mpc-did invite --mpc ID` is `mpc-did mpc invite --mpc ID`: the invitation to an MPC
//! session (spec/lobby.md §1).

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use mpc_did_didcomm::protocols::qr::QrMatrix;
use mpc_did_didcomm::Invitation;
use serde_json::json;

use crate::cmd::didcomm::{pick_identity, wallet_keys};
use crate::ctx::Ctx;

/// Base of the link when the identity has no HTTP(S) mediator endpoint. `.invalid` can
/// never resolve (RFC 6761): the link is a carrier for `_oob`, decoded locally by
/// `mpc-did invite decode` / `join`, never fetched.
pub const FALLBACK_BASE_URL: &str = "https://didcomm.invalid/oob";

#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
#[command(after_help = "\
Examples:
  mpc-did invite
  mpc-did invite --from alice --goal-code mpc-did.session.join --goal \"Secret Santa\"
  mpc-did invite --qr-png invite.png --no-qr
  mpc-did invite decode 'https://didcomm.invalid/oob?_oob=eyJ...'
  mpc-did invite --mpc 3f2a                (same as `mpc-did mpc invite --mpc 3f2a`)

The link is <base>?_oob=<base64url(invitation JSON)>. <base> is --base-url, else the
identity's HTTP(S) mediator endpoint, else https://didcomm.invalid/oob (a name that never
resolves: the link only carries the invitation).")]
pub struct InviteArgs {
    #[command(subcommand)]
    decode: Option<InviteCommand>,
    /// Invite to this MPC session (id or unique prefix) instead: the same as
    /// `mpc-did mpc invite --mpc ID` (the offer with the program's hash; joiners run
    /// `mpc-did join URL --program FILE`).
    #[arg(long = "mpc", alias = "session", value_name = "ID", conflicts_with_all = ["from", "goal_code", "goal", "light"])]
    mpc: Option<String>,
    /// Inviting identity (wallet name) [default: the default identity].
    #[arg(long, value_name = "NAME")]
    from: Option<String>,
    /// Machine-readable goal, e.g. `mpc-did.session.join`.
    #[arg(long, value_name = "CODE")]
    goal_code: Option<String>,
    /// Human-readable goal.
    #[arg(long, value_name = "TEXT")]
    goal: Option<String>,
    /// Base of the link (scheme, host, path).
    #[arg(long, value_name = "URL")]
    base_url: Option<String>,
    /// Also write the QR code as a PNG image.
    #[arg(long, value_name = "FILE")]
    qr_png: Option<PathBuf>,
    /// Do not print the QR code in the terminal.
    #[arg(long)]
    no_qr: bool,
    /// Draw the terminal QR code for a light-background terminal.
    #[arg(long)]
    light: bool,
}

#[derive(clap::Subcommand, Debug)]
pub enum InviteCommand {
    /// Show what an invitation (URL, JSON, or a file holding either) contains.
    Decode(DecodeArgs),
}

#[derive(clap::Args, Debug)]
pub struct DecodeArgs {
    /// The invitation URL (also a short link, `…?_oobid=…`, which is fetched) or JSON, a
    /// file containing it, or `-` for standard input.
    input: String,
}

pub async fn run(ctx: &Ctx, args: InviteArgs) -> anyhow::Result<()> {
    if let Some(InviteCommand::Decode(d)) = args.decode {
        return decode(ctx, &d.input).await;
    }
    if let Some(mpc) = args.mpc {
        return crate::cmd::mpc::invite(
            ctx,
            &crate::cmd::mpc::InviteArgs {
                mpc: Some(mpc),
                base_url: args.base_url,
                qr_png: args.qr_png,
                no_qr: args.no_qr,
            },
        );
    }
    let keys = wallet_keys(ctx)?;
    let me = pick_identity(&keys, args.from.as_deref())?;
    let mut inv = Invitation::new(me.did.clone());
    inv.goal_code = args.goal_code;
    inv.goal = args.goal;
    inv.created_time = Some(mpc_did_didcomm::message::now());
    let base = match args.base_url {
        Some(b) => b,
        None => me
            .services
            .iter()
            .map(|s| s.uri.clone())
            .find(|u| u.starts_with("https://") || u.starts_with("http://"))
            .unwrap_or_else(|| FALLBACK_BASE_URL.to_owned()),
    };
    let url = inv.to_url(&base)?;
    let message = inv.to_message();
    let qr = QrMatrix::encode(url.as_bytes())
        .context("the invitation link is too long for a QR code")?;
    if let Some(path) = &args.qr_png {
        std::fs::write(path, qr.to_png(8)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let mut out = crate::out::stdout();
    if ctx.json {
        let v = json!({
            "url": url,
            "invitation": message,
            "qr_png": args.qr_png.as_ref().map(|p| p.display().to_string()),
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        return Ok(());
    }
    writeln!(out, "Invitation from {} ({})", me.did, me.name)?;
    writeln!(out, "\nURL:\n{url}")?;
    writeln!(out, "\nJSON:\n{}", serde_json::to_string_pretty(&message)?)?;
    if !args.no_qr {
        writeln!(out, "\nQR code ({} modules):\n", qr.width())?;
        write!(out, "{}", qr.to_terminal(args.light))?;
    }
    if let Some(p) = &args.qr_png {
        writeln!(out, "\nQR code written to {}", p.display())?;
    }
    Ok(())
}

async fn decode(ctx: &Ctx, input: &str) -> anyhow::Result<()> {
    let inv = crate::cmd::mpc::read_invitation(input).await?;
    let mut out = crate::out::stdout();
    if ctx.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&inv.to_message())?)?;
        return Ok(());
    }
    writeln!(out, "Out-of-Band 2.0 invitation {}", inv.id)?;
    writeln!(out, "  from:       {}", inv.from)?;
    if let Some(g) = &inv.goal_code {
        writeln!(out, "  goal code:  {g}")?;
    }
    if let Some(g) = &inv.goal {
        writeln!(out, "  goal:       {g}")?;
    }
    writeln!(out, "  accepts:    {}", inv.accept.join(", "))?;
    if let Some(t) = inv.created_time {
        writeln!(out, "  created:    {t} (unix time)")?;
    }
    if let Some(t) = inv.expires_time {
        writeln!(out, "  expires:    {t} (unix time)")?;
    }
    for a in &inv.attachments {
        let kind = if a.data.json.is_some() {
            "json"
        } else if a.data.base64.is_some() {
            "base64"
        } else {
            "links"
        };
        writeln!(
            out,
            "  attachment: {} ({kind}{})",
            a.id.as_deref().unwrap_or("-"),
            a.media_type
                .as_deref()
                .map(|m| format!(", {m}"))
                .unwrap_or_default()
        )?;
    }
    Ok(())
}
