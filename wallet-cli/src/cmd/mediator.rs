//! `mpc-did mediator ...`: register an identity with a DIDComm mediator (Coordinate
//! Mediation 2.0) and ask it about the queue (Pickup 3.0 status).
//!
//! After `register`, the identity's DIDComm service names the mediator (its endpoint, with
//! the mediator's key as routing key), so DID documents and invitations made from the
//! wallet route messages through it; `inbox` picks them up.

use anyhow::Context as _;
use mpc_did_agent::client::{MediatorClient, MediatorInfo};
use mpc_did_resolver::UniversalResolver;
use mpc_did_wallet::{Identity, Wallet};

use crate::ctx::Ctx;

#[derive(clap::Subcommand, Debug)]
pub enum MediatorCommand {
    /// Register with a mediator: mediate-request, then recipient-update adding the DID.
    ///
    /// URL is the mediator's invitation URL (`https://host/oob?_oob=…`) or its base URL.
    ///
    /// Example: mpc-did mediator register https://mediator.example.org/oob?_oob=eyJ…
    Register {
        /// Invitation URL or base URL of the mediator.
        url: String,
        /// Identity to register [default: the default identity].
        #[arg(long = "id", value_name = "NAME")]
        identity: Option<String>,
    },
    /// Show the registered mediator and the number of messages waiting.
    Status {
        /// Identity [default: the default identity].
        #[arg(long = "id", value_name = "NAME")]
        identity: Option<String>,
    },
}

/// The identity's private keys, as the DIDComm crate wants them.
pub use mpc_did_mpc::party::secrets;

/// Loads the identity (named or default).
pub fn load_identity(wallet: &Wallet, name: Option<&str>) -> anyhow::Result<Identity> {
    Ok(mpc_did_mpc::party::identity(wallet, name)?)
}

/// The identity and a client for its registered mediator. The wallet is closed again
/// before returning (long-running commands must not hold its lock).
pub fn registered_client(
    ctx: &Ctx,
    name: Option<&str>,
) -> anyhow::Result<(Identity, MediatorClient)> {
    Ok(mpc_did_mpc::party::registered_client(&ctx.home, name)?)
}

pub async fn run(ctx: &Ctx, cmd: MediatorCommand) -> anyhow::Result<()> {
    match cmd {
        MediatorCommand::Register { url, identity } => {
            register(ctx, &url, identity.as_deref()).await
        }
        MediatorCommand::Status { identity } => status(ctx, identity.as_deref()).await,
    }
}

async fn register(ctx: &Ctx, url: &str, name: Option<&str>) -> anyhow::Result<()> {
    let id = {
        let wallet = Wallet::open(&ctx.home)?;
        load_identity(&wallet, name)?
    };
    let info = MediatorInfo::discover(url)
        .await
        .with_context(|| format!("cannot reach the mediator at {url}"))?;
    let client = MediatorClient::new(
        info.clone(),
        &id.did,
        secrets(&id),
        UniversalResolver::new()?,
    )?;
    client
        .register()
        .await
        .with_context(|| format!("registration with {} failed", info.http))?;
    let service = info.service_for(&id.did);
    let wallet = Wallet::open(&ctx.home)?;
    wallet.set_identity_services(&id.name, vec![service.clone()])?;
    wallet.set_mediator(&id.name, &info)?;
    if ctx.json {
        println!(
            "{}",
            serde_json::json!({
                "identity": id.name,
                "did": id.did,
                "mediator": info,
                "service": service,
            })
        );
    } else {
        println!(
            "registered {} ({}) with mediator {}",
            id.name, id.did, info.did
        );
        println!("  endpoint:    {}", info.http);
        println!("  routing key: {}", info.routing_key);
        println!(
            "messages to this DID now route through the mediator; read them with `mpc-did inbox`"
        );
    }
    Ok(())
}

async fn status(ctx: &Ctx, name: Option<&str>) -> anyhow::Result<()> {
    let (id, client) = registered_client(ctx, name)?;
    let st = client.status().await?;
    if ctx.json {
        println!(
            "{}",
            serde_json::json!({ "did": id.did, "mediator": client.info, "status": st })
        );
    } else {
        println!(
            "{} at mediator {} ({})",
            id.did, client.info.did, client.info.http
        );
        println!(
            "  waiting: {} message(s), {} bytes",
            st["message_count"], st["total_bytes"]
        );
    }
    Ok(())
}
