//! `mpc-did send DID --body JSON`: send one DIDComm message (authcrypt from our identity)
//! through the recipient's mediator (Routing 2.0 forward).
//!
//! The recipient's DIDComm service comes from, in order: `--via URL` (the recipient's
//! mediator), the wallet contact's stored document or mediator, or its resolved DID
//! document (did:web documents carry services; did:key documents cannot).

use anyhow::Context as _;
use mpc_did_agent::client::{new_http_client, send_message, MediatorInfo};
use mpc_did_didcomm::message::message;
use mpc_did_resolver::{DidResolver as _, UniversalResolver};
use mpc_did_wallet::Wallet;

use crate::cmd::mediator::{load_identity, secrets};
use crate::ctx::Ctx;

/// Send a DIDComm message to a DID.
///
/// Examples:
///   mpc-did send did:key:z6Mk… --body '{"hello":"world"}'
///   mpc-did send did:key:z6Mk… --body @message.json
///   generate-json | mpc-did send did:key:z6Mk… --body -
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct SendArgs {
    /// The recipient's DID.
    pub did: String,
    /// Message body: a JSON object, `@FILE` to read it from FILE, or `-` to read it from
    /// stdin (bodies larger than a command line allows, about 128 KB).
    #[arg(long, value_name = "JSON|@FILE|-")]
    pub body: String,
    /// Message type URI.
    #[arg(
        long = "type",
        default_value = "https://mpc-did.example/message/1.0/text"
    )]
    pub typ: String,
    /// The recipient's mediator (invitation or base URL), if the wallet does not know it.
    #[arg(long, value_name = "URL")]
    pub via: Option<String>,
    /// Sending identity [default: the default identity].
    #[arg(long = "id", value_name = "NAME")]
    pub identity: Option<String>,
}

pub async fn run(ctx: &Ctx, a: SendArgs) -> anyhow::Result<()> {
    let (text, from) = read_body(&a.body)?;
    let body: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{from} is not valid JSON"))?;
    anyhow::ensure!(body.is_object(), "{from} must be a JSON object");
    let (id, contact) = {
        let wallet = Wallet::open(&ctx.home)?;
        (
            load_identity(&wallet, a.identity.as_deref())?,
            wallet.contact(&a.did)?,
        )
    };
    let resolver = UniversalResolver::new()?;
    let mut doc = match contact.as_ref().and_then(|c| c.document.clone()) {
        Some(d) => d,
        None => resolver
            .resolve(mpc_did_didcomm::did_of(&a.did))
            .await
            .with_context(|| format!("cannot resolve {}", a.did))?,
    };
    let via = a
        .via
        .clone()
        .or_else(|| contact.as_ref().and_then(|c| c.mediator.clone()));
    if let Some(url) = via {
        let info = MediatorInfo::discover(&url)
            .await
            .with_context(|| format!("cannot reach the mediator at {url}"))?;
        doc.service.retain(|s| !s.is_didcomm());
        doc.service.push(info.service_for(&doc.id).to_service());
        resolver.insert(info.document()?);
    }
    anyhow::ensure!(
        !doc.didcomm_services().is_empty(),
        "{} has no DIDComm service: pass --via MEDIATOR_URL (the recipient's mediator)",
        a.did
    );
    resolver.insert(doc);
    let msg = message(&a.typ, body);
    let msg_id = msg.id.clone();
    let uri = send_message(
        &new_http_client()?,
        &id.did,
        &secrets(&id),
        &resolver,
        &a.did,
        msg,
    )
    .await
    .with_context(|| format!("sending to {} failed", a.did))?;
    if ctx.json {
        println!(
            "{}",
            serde_json::json!({ "id": msg_id, "from": id.did, "to": a.did, "endpoint": uri })
        );
    } else {
        println!("sent {msg_id} to {} via {uri}", a.did);
    }
    Ok(())
}

/// The body text named by `--body` and how to call its source in errors: the argument
/// itself, `@FILE`, or `-` (stdin).
fn read_body(arg: &str) -> anyhow::Result<(String, String)> {
    if arg == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .context("cannot read the body from stdin")?;
        return Ok((text, "the body read from stdin".into()));
    }
    if let Some(path) = arg.strip_prefix('@') {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the body from {path}"))?;
        return Ok((text, format!("the body in {path}")));
    }
    Ok((arg.to_owned(), "--body".into()))
}
