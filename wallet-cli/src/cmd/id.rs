//! `mpc-did id ...`: create, list, show, export and import identities (spec/identity.md).
//!
//! Private keys are never printed by `show` and `list` (DIDs, key ids and public keys
//! only); `export --private` writes them, with a warning on stderr, and only then.

use std::path::PathBuf;

use anyhow::Context as _;
use mpc_did_agent::client::MediatorInfo;
use mpc_did_resolver::{web, Did, DidCommService, PublicKey};
use mpc_did_wallet::{ExportFormat, Identity, Method, Wallet, WalletError};
use serde_json::{json, Value};

use crate::ctx::Ctx;

#[derive(clap::Subcommand, Debug)]
pub enum IdCommand {
    /// Create a new identity (did:key by default, did:peer:2, or did:web for a domain you
    /// control).
    #[command(after_help = "\
Examples:
  mpc-did id create --name alice
  mpc-did id create --name carol --method peer --mediator https://mediator.example.org
  mpc-did id create --name shop --method web --domain example.com
  mpc-did id create --name bob --method web --domain example.com:8443/users/bob

A did:peer:2 carries its keys and its DIDComm service (the mediator's endpoint and
routing key, asked from the mediator at --mediator) in the DID itself: nothing to publish.
A did:web identity needs its document published at its did:web URL:
see `mpc-did id export-web`.")]
    Create(CreateArgs),
    /// List the identities in the wallet (the default one is marked `*`).
    #[command(after_help = "Example:\n  mpc-did id list --json")]
    List,
    /// Show one identity: DID, key ids, public keys, services, DID document.
    /// Private keys are never shown.
    #[command(after_help = "\
Examples:
  mpc-did id show            # the default identity
  mpc-did id show alice --json")]
    Show(ShowArgs),
    /// Write the DID document to publish for a did:web identity.
    #[command(after_help = "\
Example:
  mpc-did id export-web shop --out did.json
Then serve did.json at the URL printed (for did:web:example.com that is
https://example.com/.well-known/did.json).")]
    ExportWeb(ExportWebArgs),
    /// Make an identity the default one.
    #[command(after_help = "Example:\n  mpc-did id default bob")]
    Default(DefaultArgs),
    /// Export an identity's keys: public keys by default, private keys only with
    /// --private (to move the identity or use it with another tool).
    #[command(after_help = "\
Examples:
  mpc-did id export alice --format jwk
  mpc-did id export alice --private --format multibase --out alice-keys.json

Files are written readable by you only (mode 0600). Anyone with a --private export can
act as the identity: keep it like an SSH private key.")]
    Export(ExportArgs),
    /// Import an identity from a key file: an `id export --private` file, a JWK Set with
    /// an Ed25519 private key, or a 64-hex-digit Ed25519 seed (a did:key).
    #[command(after_help = "\
Examples:
  mpc-did id import alice-keys.json
  mpc-did id import seed.hex --name restored")]
    Import(ImportArgs),
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum MethodArg {
    /// did:key (Ed25519, X25519 keyAgreement derived from it): nothing to publish.
    Key,
    /// did:web: a document you publish on your web server.
    Web,
    /// did:peer:2: Ed25519 + X25519 keys and the mediator service in the DID itself.
    Peer,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FormatArg {
    /// A JWK Set (RFC 7517) of OKP keys; private keys as `d`.
    Jwk,
    /// `publicKeyMultibase` / `secretKeyMultibase` (multicodec, base58btc).
    Multibase,
}

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// Identity name.
    name: String,
    /// Include the private keys (a warning is printed on stderr).
    #[arg(long)]
    private: bool,
    /// Key encoding.
    #[arg(long, value_enum, default_value_t = FormatArg::Jwk)]
    format: FormatArg,
    /// Write to this file (mode 0600) instead of standard output.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    /// The key file (`-` for standard input).
    file: PathBuf,
    /// Local name [default: the name in the file, else "imported"].
    #[arg(long)]
    name: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    /// Local name of the identity.
    #[arg(long, default_value = "default")]
    name: String,
    /// DID method.
    #[arg(long, value_enum, default_value_t = MethodArg::Key)]
    method: MethodArg,
    /// For --method web: the domain, optional port and path, e.g. example.com:8443/users/bob.
    #[arg(long, value_name = "D[:PORT][/PATH]", required_if_eq("method", "web"))]
    domain: Option<String>,
    /// For --method peer: the mediator (its base URL or invitation URL) whose endpoint and
    /// routing key go into the DID's DIDCommMessaging service.
    #[arg(long, value_name = "URL")]
    mediator: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct ShowArgs {
    /// Identity name [default: the default identity].
    name: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct ExportWebArgs {
    /// Identity name (a did:web identity).
    name: String,
    /// Output file (`-` for standard output).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct DefaultArgs {
    /// Identity name.
    name: String,
}

pub async fn run(ctx: &Ctx, cmd: IdCommand) -> anyhow::Result<()> {
    let wallet = open_wallet(ctx)?;
    match cmd {
        IdCommand::Create(a) => create(ctx, &wallet, a).await,
        IdCommand::Export(a) => export(ctx, &wallet, a),
        IdCommand::Import(a) => import(ctx, &wallet, a),
        IdCommand::List => list(ctx, &wallet),
        IdCommand::Show(a) => show(ctx, &wallet, a),
        IdCommand::ExportWeb(a) => export_web(ctx, &wallet, a),
        IdCommand::Default(a) => {
            wallet.set_default_identity(&a.name).map_err(explain)?;
            if ctx.json {
                println!("{}", json!({ "default": a.name }));
            } else {
                println!("Default identity is now '{}'.", a.name);
            }
            Ok(())
        }
    }
}

/// Opens the wallet at `ctx.home`, with errors that say what to do.
pub fn open_wallet(ctx: &Ctx) -> anyhow::Result<Wallet> {
    Wallet::open(&ctx.home).map_err(explain)
}

/// One line: the cause and, where there is one, what to do.
pub fn explain(e: WalletError) -> anyhow::Error {
    match e {
        WalletError::NoSuchIdentity(n) => anyhow::anyhow!(
            "no identity named '{n}': create one with `mpc-did id create --name {n}` (see `mpc-did id list`)"
        ),
        WalletError::NoIdentities => {
            anyhow::anyhow!("the wallet has no identity yet: create one with `mpc-did id create`")
        }
        WalletError::IdentityExists(n) => anyhow::anyhow!(
            "an identity named '{n}' already exists: choose another with --name (see `mpc-did id list`)"
        ),
        WalletError::InvalidKeyFile(reason) => anyhow::anyhow!(
            "cannot import the key file: {reason} (see `mpc-did id import --help` for the formats)"
        ),
        WalletError::NotWeb(n) => anyhow::anyhow!(
            "identity '{n}' is not a did:web identity, so there is nothing to publish; \
             create one with `mpc-did id create --method web --domain D`"
        ),
        other => anyhow::Error::new(other),
    }
}

async fn create(ctx: &Ctx, wallet: &Wallet, a: CreateArgs) -> anyhow::Result<()> {
    if a.mediator.is_some() && a.method != MethodArg::Peer {
        anyhow::bail!(
            "--mediator is only for did:peer (its service is in the DID): add `--method peer`, \
             or register a did:key/did:web identity with `mpc-did mediator register URL`"
        );
    }
    let method = match (a.method, a.domain) {
        (MethodArg::Key, None) => Method::Key,
        (MethodArg::Key | MethodArg::Peer, Some(_)) => {
            anyhow::bail!("--domain is only for did:web: add `--method web` or drop --domain")
        }
        (MethodArg::Web, Some(domain)) => Method::Web { domain },
        (MethodArg::Web, None) => {
            anyhow::bail!("--method web needs --domain D[:PORT][/PATH]")
        }
        (MethodArg::Peer, None) => {
            let services = match &a.mediator {
                None => Vec::new(),
                Some(url) => {
                    let info = MediatorInfo::discover(url).await.with_context(|| {
                        format!(
                            "cannot reach the mediator at {url} to learn its endpoint and \
                             routing key; check the URL, or create the did:peer without --mediator"
                        )
                    })?;
                    vec![DidCommService {
                        id: String::new(),
                        uri: info.http,
                        accept: vec!["didcomm/v2".into()],
                        routing_keys: vec![info.routing_key],
                    }]
                }
            };
            Method::Peer { services }
        }
    };
    let id = wallet.create_identity(&a.name, method).map_err(explain)?;
    let is_default = is_default(wallet, &id.name);
    if ctx.json {
        println!("{}", summary(&id, is_default, true));
        return Ok(());
    }
    println!("Created identity '{}'", id.name);
    println!("  DID:            {}", id.did);
    println!("  authentication: {}", id.auth_kid);
    println!("  keyAgreement:   {}", id.agreement_kid);
    for svc in &id.services {
        println!(
            "  service:        {} (routing keys: {})",
            svc.uri,
            svc.routing_keys.join(", ")
        );
    }
    if id.method() == "peer" && !id.services.is_empty() {
        println!();
        println!(
            "Register it with the mediator so that it accepts messages for it:\n  mpc-did mediator register {} --id {}",
            a.mediator.as_deref().unwrap_or("URL"),
            id.name
        );
    }
    if id.method() == "web" {
        let url = publish_url(&id.did)?;
        println!();
        println!("Publish its DID document at {url}:");
        println!("  mpc-did id export-web {} --out did.json", id.name);
    }
    Ok(())
}

fn list(ctx: &Ctx, wallet: &Wallet) -> anyhow::Result<()> {
    let ids = wallet.identities().map_err(explain)?;
    let default = wallet.default_identity().ok().map(|i| i.name);
    if ctx.json {
        let v: Vec<Value> = ids
            .iter()
            .map(|i| summary(i, Some(&i.name) == default.as_ref(), false))
            .collect();
        println!("{}", Value::Array(v));
        return Ok(());
    }
    if ids.is_empty() {
        println!("No identities yet: create one with `mpc-did id create`.");
        return Ok(());
    }
    let width = ids.iter().map(|i| i.name.len()).max().unwrap_or(4).max(4);
    for i in &ids {
        let mark = if Some(&i.name) == default.as_ref() {
            '*'
        } else {
            ' '
        };
        println!("{mark} {:<width$}  {}", i.name, i.did);
    }
    Ok(())
}

fn show(ctx: &Ctx, wallet: &Wallet, a: ShowArgs) -> anyhow::Result<()> {
    let id = match &a.name {
        Some(n) => wallet.identity(n),
        None => wallet.default_identity(),
    }
    .map_err(explain)?;
    let is_default = is_default(wallet, &id.name);
    if ctx.json {
        println!("{}", summary(&id, is_default, true));
        return Ok(());
    }
    println!(
        "Identity '{}'{}",
        id.name,
        if is_default { " (default)" } else { "" }
    );
    println!("  DID:            {}", id.did);
    println!("  authentication: {}", id.auth_kid);
    println!(
        "    Ed25519 key:  {}",
        PublicKey::Ed25519(id.ed25519_public()).to_multibase()
    );
    println!("  keyAgreement:   {}", id.agreement_kid);
    println!(
        "    X25519 key:   {}",
        PublicKey::X25519(id.x25519_public()).to_multibase()
    );
    if id.services.is_empty() {
        println!("  mediator:       (none)");
    }
    for s in &id.services {
        println!(
            "  mediator:       {} (routing keys: {})",
            s.uri,
            s.routing_keys.join(", ")
        );
    }
    if id.method() == "web" {
        println!("  publish at:     {}", publish_url(&id.did)?);
    }
    println!("DID document:");
    println!("{}", serde_json::to_string_pretty(&id.document.to_json())?);
    Ok(())
}

fn export_web(ctx: &Ctx, wallet: &Wallet, a: ExportWebArgs) -> anyhow::Result<()> {
    let doc = wallet.web_document(&a.name).map_err(explain)?;
    let url = publish_url(&doc.id)?;
    let mut text = serde_json::to_string_pretty(&doc.to_json())?;
    text.push('\n');
    let to_stdout = a.out.as_os_str() == "-";
    if to_stdout {
        print!("{text}");
    } else {
        std::fs::write(&a.out, &text)
            .with_context(|| format!("cannot write {}", a.out.display()))?;
    }
    if ctx.json && !to_stdout {
        println!(
            "{}",
            json!({ "name": a.name, "did": doc.id, "out": a.out, "url": url.as_str() })
        );
    } else if !ctx.json {
        let msg = format!(
            "Publish this document at {url} (did:web serves it over HTTPS; the document's id is {}).",
            doc.id
        );
        if to_stdout {
            eprintln!("{msg}");
        } else {
            println!("Wrote {}. {msg}", a.out.display());
        }
    }
    Ok(())
}

fn export(ctx: &Ctx, wallet: &Wallet, a: ExportArgs) -> anyhow::Result<()> {
    let format = match a.format {
        FormatArg::Jwk => ExportFormat::Jwk,
        FormatArg::Multibase => ExportFormat::Multibase,
    };
    let text = wallet
        .export_identity(&a.name, format, a.private)
        .map_err(explain)?;
    if a.private {
        eprintln!(
            "warning: this export contains the PRIVATE keys of '{}': anyone who reads it can \
             act as this identity. Keep it like an SSH private key.",
            a.name
        );
    }
    match &a.out {
        None => print!("{}", text.as_str()),
        Some(path) => {
            mpc_did_wallet::write_private_file(path, text.as_bytes()).map_err(explain)?;
            if ctx.json {
                println!(
                    "{}",
                    json!({"name": a.name, "out": path, "private": a.private})
                );
            } else {
                println!(
                    "Wrote the {} keys of '{}' to {} (mode 0600).",
                    if a.private {
                        "private and public"
                    } else {
                        "public"
                    },
                    a.name,
                    path.display()
                );
            }
        }
    }
    Ok(())
}

fn import(ctx: &Ctx, wallet: &Wallet, a: ImportArgs) -> anyhow::Result<()> {
    let max = mpc_did_wallet::MAX_KEY_FILE_BYTES;
    let text = if a.file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(
            &mut std::io::Read::take(std::io::stdin(), max as u64 + 1),
            &mut s,
        )
        .context("cannot read the key file from standard input")?;
        s
    } else {
        let meta = std::fs::metadata(&a.file)
            .with_context(|| format!("cannot read {}", a.file.display()))?;
        if meta.len() > max as u64 {
            anyhow::bail!(
                "{} is {} bytes: a key file is at most {max} bytes",
                a.file.display(),
                meta.len()
            );
        }
        std::fs::read_to_string(&a.file)
            .with_context(|| format!("cannot read {}", a.file.display()))?
    };
    let id = wallet
        .import_identity(a.name.as_deref(), &text)
        .map_err(explain)?;
    let is_default = is_default(wallet, &id.name);
    if ctx.json {
        println!("{}", summary(&id, is_default, false));
    } else {
        println!("Imported identity '{}'", id.name);
        println!("  DID:            {}", id.did);
        println!("  authentication: {}", id.auth_kid);
        println!("  keyAgreement:   {}", id.agreement_kid);
    }
    Ok(())
}

fn is_default(wallet: &Wallet, name: &str) -> bool {
    wallet.default_identity().is_ok_and(|d| d.name == name)
}

fn publish_url(did: &str) -> anyhow::Result<web::Url> {
    let did = Did::parse(did)?;
    Ok(web::did_web_url(&did)?)
}

/// The JSON view of an identity: public data only.
fn summary(id: &Identity, is_default: bool, with_document: bool) -> Value {
    let mut v = json!({
        "name": id.name,
        "did": id.did,
        "method": id.method(),
        "default": is_default,
        "created_at": id.created_at,
        "authentication": {
            "kid": id.auth_kid,
            "publicKeyMultibase": PublicKey::Ed25519(id.ed25519_public()).to_multibase(),
        },
        // Computed from the wallet's secret, not from the document: scripts (and our
        // tests) can compare it with what a resolver derives from the DID.
        "keyAgreement": {
            "kid": id.agreement_kid,
            "publicKeyMultibase": PublicKey::X25519(id.x25519_public()).to_multibase(),
        },
        "services": id.services,
    });
    if with_document {
        if let Some(obj) = v.as_object_mut() {
            obj.insert("document".into(), id.document.to_json());
        }
    }
    v
}
