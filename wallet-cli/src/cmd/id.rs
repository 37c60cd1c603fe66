//! `mpc-did id ...`: create, list, show and export identities (spec/identity.md).
//!
//! Private keys are never printed: `show` and `list` print DIDs, key ids and public keys.

use std::path::PathBuf;

use anyhow::Context as _;
use mpc_did_resolver::{web, Did, PublicKey};
use mpc_did_wallet::{Identity, Method, Wallet, WalletError};
use serde_json::{json, Value};

use crate::ctx::Ctx;

#[derive(clap::Subcommand, Debug)]
pub enum IdCommand {
    /// Create a new identity (did:key by default, or did:web for a domain you control).
    #[command(after_help = "\
Examples:
  mpc-did id create --name alice
  mpc-did id create --name shop --method web --domain example.com
  mpc-did id create --name bob --method web --domain example.com:8443/users/bob

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
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum MethodArg {
    /// did:key (Ed25519, X25519 keyAgreement derived from it): nothing to publish.
    Key,
    /// did:web: a document you publish on your web server.
    Web,
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
        IdCommand::Create(a) => create(ctx, &wallet, a),
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
        WalletError::NotWeb(n) => anyhow::anyhow!(
            "identity '{n}' is not a did:web identity, so there is nothing to publish; \
             create one with `mpc-did id create --method web --domain D`"
        ),
        other => anyhow::Error::new(other),
    }
}

fn create(ctx: &Ctx, wallet: &Wallet, a: CreateArgs) -> anyhow::Result<()> {
    let method = match (a.method, a.domain) {
        (MethodArg::Key, None) => Method::Key,
        (MethodArg::Key, Some(_)) => {
            anyhow::bail!("--domain is only for did:web: add `--method web` or drop --domain")
        }
        (MethodArg::Web, Some(domain)) => Method::Web { domain },
        (MethodArg::Web, None) => {
            anyhow::bail!("--method web needs --domain D[:PORT][/PATH]")
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
