//! `mpc-did didcomm pack|unpack`: DIDComm v2 messages from the command line, for debugging
//! and interop with other implementations (spec/didcomm.md §"CLI").
//!
//! Keys come from the wallet: every identity's Ed25519 and X25519 secrets are offered to
//! the unpacker (so whichever of our DIDs a message is for, it opens), and `--from NAME`
//! picks the sending identity. DIDs are resolved with did:key locally and did:web over
//! HTTPS; our own identities' documents (including unpublished did:web ones) come from the
//! wallet first.

use std::io::{Read as _, Write as _};
use std::path::PathBuf;

use anyhow::{bail, Context as _};
use mpc_did_didcomm::{
    message, pack_encrypted, pack_plaintext, pack_signed, unpack, ContentAlg, Message, PackOptions,
    Secret, SecretStore, UnpackOptions,
};
use mpc_did_resolver::UniversalResolver;
use mpc_did_wallet::{Identity, Wallet};
use serde_json::{json, Value};

use crate::ctx::Ctx;

/// Largest input file we read (the unpacker has its own, equal limit).
const MAX_INPUT: u64 = mpc_did_didcomm::DEFAULT_MAX_MESSAGE_SIZE as u64;
/// Message type used when the input is a bare body rather than a whole message.
const NOTE_TYPE: &str = "https://mpc-did.dev/protocols/note/1.0/note";

#[derive(clap::Subcommand, Debug)]
pub enum DidcommCommand {
    /// Pack a message for a DID: authcrypt (default), anoncrypt, signed or plain.
    #[command(after_help = "\
The input is a DIDComm plaintext message (JSON with `id` and `type`), or any other JSON
object, which becomes the body of a `note` message, or other text, which becomes
{\"text\": ...}. Missing `id`, `from`, `to` and `created_time` are filled in.

Examples:
  echo '{\"hello\": 1}' | mpc-did didcomm pack --to did:key:z6Mk... > msg.json
  mpc-did didcomm pack --to did:web:example.com --mode anoncrypt --enc XC20P note.json
  mpc-did didcomm pack --to did:key:z6Mk... --from alice --sign --protect-sender -")]
    Pack(PackArgs),
    /// Unpack a message with the wallet's keys; prints the plaintext and how it was
    /// protected (`--json` for both as one JSON object).
    #[command(after_help = "\
Examples:
  mpc-did didcomm unpack msg.json
  mpc-did --json didcomm unpack - < msg.json | jq .metadata")]
    Unpack(UnpackArgs),
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Encrypted and sender-authenticated (ECDH-1PU+A256KW, A256CBC-HS512).
    Authcrypt,
    /// Encrypted, sender anonymous (ECDH-ES+A256KW).
    Anoncrypt,
    /// Signed, not encrypted (JWS EdDSA): anyone can read it, nobody can forge it.
    Signed,
    /// Neither (plaintext JSON).
    Plain,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncArg {
    #[value(name = "A256CBC-HS512")]
    A256CbcHs512,
    #[value(name = "A256GCM")]
    A256Gcm,
    #[value(name = "XC20P")]
    Xc20p,
}

#[derive(clap::Args, Debug)]
pub struct PackArgs {
    /// Recipient: a DID (all its X25519 keyAgreement keys) or one key id (DID URL).
    #[arg(long, value_name = "DID")]
    to: String,
    /// Sending identity (wallet name) [default: the default identity].
    #[arg(long, value_name = "NAME")]
    from: Option<String>,
    /// Protection.
    #[arg(long, value_enum, default_value_t = Mode::Authcrypt)]
    mode: Mode,
    /// Also sign (authcrypt/anoncrypt): sign-then-encrypt, for non-repudiation.
    #[arg(long)]
    sign: bool,
    /// Authcrypt only: wrap in anoncrypt too, hiding who sends from mediators.
    #[arg(long)]
    protect_sender: bool,
    /// Content encryption for anoncrypt (authcrypt always uses A256CBC-HS512).
    #[arg(long, value_enum, default_value_t = EncArg::A256CbcHs512)]
    enc: EncArg,
    /// Wrap in Routing 2.0 forward messages for the recipient's mediator(s), as it would
    /// be sent; the outer message is then for the first routing key.
    #[arg(long)]
    forward: bool,
    /// Input file, `-` for standard input.
    #[arg(default_value = "-")]
    input: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct UnpackArgs {
    /// Input file, `-` for standard input.
    #[arg(default_value = "-")]
    input: PathBuf,
}

pub async fn run(ctx: &Ctx, cmd: DidcommCommand) -> anyhow::Result<()> {
    match cmd {
        DidcommCommand::Pack(a) => pack(ctx, a).await,
        DidcommCommand::Unpack(a) => unpack_cmd(ctx, a).await,
    }
}

/// Read a file or standard input, at most [`MAX_INPUT`] bytes.
pub(crate) fn read_input(path: &PathBuf) -> anyhow::Result<Vec<u8>> {
    let mut buf = Vec::new();
    if path.as_os_str() == "-" {
        std::io::stdin()
            .take(MAX_INPUT + 1)
            .read_to_end(&mut buf)
            .context("reading standard input")?;
    } else {
        std::fs::File::open(path)
            .with_context(|| format!("opening {}", path.display()))?
            .take(MAX_INPUT + 1)
            .read_to_end(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
    }
    if buf.len() as u64 > MAX_INPUT {
        bail!("input is larger than {MAX_INPUT} bytes");
    }
    Ok(buf)
}

/// The wallet's keys and documents: a secrets store with every identity's keys, and a
/// resolver whose overlay holds our own documents.
pub(crate) struct Keys {
    pub secrets: SecretStore,
    pub resolver: UniversalResolver,
    pub identities: Vec<Identity>,
    pub default: Option<String>,
}

pub(crate) fn wallet_keys(ctx: &Ctx) -> anyhow::Result<Keys> {
    let wallet = Wallet::open(&ctx.home)
        .with_context(|| format!("opening the wallet in {}", ctx.home.display()))?;
    let identities = wallet.identities().context("reading identities")?;
    let default = wallet.default_identity().ok().map(|i| i.name);
    let resolver = UniversalResolver::new().context("setting up the DID resolver")?;
    let mut secrets = SecretStore::new();
    for id in &identities {
        secrets.insert(id.auth_kid.clone(), Secret::Ed25519(id.signing_key.clone()));
        secrets.insert(
            id.agreement_kid.clone(),
            Secret::X25519(id.agreement_secret.clone()),
        );
        resolver.insert(id.document.clone());
    }
    Ok(Keys {
        secrets,
        resolver,
        identities,
        default,
    })
}

pub(crate) fn pick_identity<'a>(
    keys: &'a Keys,
    name: Option<&str>,
) -> anyhow::Result<&'a Identity> {
    match name {
        Some(n) => keys
            .identities
            .iter()
            .find(|i| i.name == n)
            .with_context(|| format!("no identity named {n:?} (see `mpc-did id list`)")),
        None => keys
            .identities
            .iter()
            .find(|i| Some(&i.name) == keys.default.as_ref())
            .or(keys.identities.first())
            .context("the wallet has no identity: run `mpc-did id create` first"),
    }
}

/// Turn the input into a message: a whole plaintext message, a JSON body, or text.
fn input_message(bytes: &[u8]) -> anyhow::Result<Message> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(v) if v.get("id").is_some() && v.get("type").is_some() => {
            Message::from_json(bytes).context("input looks like a message but is not valid")
        }
        Ok(v @ Value::Object(_)) => Ok(Message::new(message::new_id(), NOTE_TYPE, v)),
        _ => {
            let text =
                String::from_utf8(bytes.to_vec()).context("input is neither JSON nor text")?;
            Ok(Message::new(
                message::new_id(),
                NOTE_TYPE,
                json!({"text": text.trim_end_matches('\n')}),
            ))
        }
    }
}

async fn pack(ctx: &Ctx, a: PackArgs) -> anyhow::Result<()> {
    let keys = wallet_keys(ctx)?;
    let me = pick_identity(&keys, a.from.as_deref())?;
    let mut msg = input_message(&read_input(&a.input)?)?;
    let to_did = mpc_did_didcomm::did_of(&a.to).to_owned();
    if msg.to.is_none() {
        msg.to = Some(vec![to_did.clone()]);
    }
    if msg.created_time.is_none() {
        msg.created_time = Some(message::now());
    }
    let anonymous = a.mode == Mode::Anoncrypt && !a.sign;
    if let Some(name) = a.from.as_deref() {
        if anonymous || a.mode == Mode::Plain {
            eprintln!(
                "warning: --from {name} is ignored: a {} message without --sign names no \
                 sender; use --mode authcrypt, --mode signed or --sign to send as {name}",
                if a.mode == Mode::Plain {
                    "plain"
                } else {
                    "anoncrypt"
                }
            );
        }
    }
    if msg.from.is_none() && !anonymous && a.mode != Mode::Plain {
        msg.from = Some(me.did.clone());
    }
    let enc = match a.enc {
        EncArg::A256CbcHs512 => ContentAlg::A256CbcHs512,
        EncArg::A256Gcm => ContentAlg::A256Gcm,
        EncArg::Xc20p => ContentAlg::Xc20p,
    };
    let opts = PackOptions {
        anon_enc: enc,
        protect_sender: a.protect_sender,
        forward: a.forward,
    };
    let sign_by = a.sign.then_some(me.did.as_str());
    let (packed, meta) = match a.mode {
        Mode::Plain => (pack_plaintext(&msg)?, json!({"mode": "plain"})),
        Mode::Signed => {
            let (jws, kid) = pack_signed(&msg, &me.did, &keys.resolver, &keys.secrets).await?;
            (jws, json!({"mode": "signed", "sign_by_kid": kid}))
        }
        Mode::Authcrypt | Mode::Anoncrypt => {
            let from = (a.mode == Mode::Authcrypt).then_some(me.did.as_str());
            if a.protect_sender && from.is_none() {
                bail!("--protect-sender only applies to --mode authcrypt");
            }
            let p = pack_encrypted(
                &msg,
                &a.to,
                from,
                sign_by,
                &keys.resolver,
                &keys.secrets,
                &opts,
            )
            .await
            .with_context(|| format!("packing for {}", a.to))?;
            let meta = json!({
                "mode": if from.is_some() { "authcrypt" } else { "anoncrypt" },
                "to_kids": p.to_kids,
                "from_kid": p.from_kid,
                "sign_by_kid": p.sign_by_kid,
                "service": p.service.as_ref().map(|s| s.uri.clone()),
                "forwarded": a.forward && p.service.as_ref().is_some_and(|s| !s.routing_keys.is_empty()),
            });
            (p.message, meta)
        }
    };
    let mut out = crate::out::stdout();
    if ctx.json {
        let packed_v: Value = serde_json::from_str(&packed)?;
        let mut v = meta;
        v["packed"] = packed_v;
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
    } else {
        writeln!(out, "{packed}")?;
    }
    Ok(())
}

/// One line saying how the message was protected, from the layers `unpack` found
/// (authcrypt is told by its ECDH-1PU layer, not by "encrypted and authenticated", which a
/// signed anoncrypt message is too).
fn protection_label(meta: &mpc_did_didcomm::UnpackMetadata) -> &'static str {
    let authcrypt = meta.enc_alg_auth.is_some();
    match (meta.encrypted, authcrypt, meta.non_repudiation) {
        (true, true, true) => "signed and authcrypt (encrypted, sender authenticated)",
        (true, true, false) => "authcrypt (encrypted, sender authenticated)",
        (true, false, true) => {
            "signed and anoncrypt (encrypted, sender authenticated by the signature)"
        }
        (true, false, false) => "anoncrypt (encrypted, sender NOT authenticated)",
        (false, _, true) => "signed (not encrypted)",
        (false, _, false) => "plaintext (neither encrypted nor authenticated)",
    }
}

async fn unpack_cmd(ctx: &Ctx, a: UnpackArgs) -> anyhow::Result<()> {
    let keys = wallet_keys(ctx)?;
    let bytes = read_input(&a.input)?;
    let (msg, meta) = unpack(
        &bytes,
        &keys.resolver,
        &keys.secrets,
        &UnpackOptions::default(),
    )
    .await
    .context("unpacking")?;
    let mut out = crate::out::stdout();
    if ctx.json {
        let mut m = serde_json::to_value(&meta)?;
        if let Some(o) = m.as_object_mut() {
            // The signed form can be long; it is in --json only on request of the full
            // object, so keep it: scripts may want it for non-repudiation.
            o.retain(|_, v| !v.is_null());
        }
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&json!({"message": msg, "metadata": m}))?
        )?;
        return Ok(());
    }
    writeln!(out, "{}", serde_json::to_string_pretty(&msg)?)?;
    writeln!(out, "-- {}", protection_label(&meta))?;
    if let Some(k) = &meta.encrypted_from_kid {
        writeln!(out, "-- authenticated sender key: {k}")?;
    }
    if meta.anonymous_sender {
        writeln!(out, "-- sender hidden from intermediaries (protect-sender)")?;
    }
    if let Some(k) = &meta.sign_from {
        writeln!(out, "-- signed by: {k}")?;
    }
    if let Some(k) = &meta.decrypted_with_kid {
        writeln!(out, "-- decrypted with: {k}")?;
    }
    for alg in [&meta.enc_alg_auth, &meta.enc_alg_anon]
        .into_iter()
        .flatten()
    {
        writeln!(out, "-- algorithm: {alg}")?;
    }
    Ok(())
}
