//! Shared by the commands that talk to peers live (`session`, `pipe`, `mpc`): the wallet's
//! identity and its registered mediator as a running [`Agent`], and where a peer receives
//! DIDComm.
//!
//! The wallet is opened only briefly: long-running commands must not hold its lock (two
//! commands of the same wallet may run at once).

use std::net::SocketAddr;

use anyhow::Context as _;
use mpc_did_agent::client::MediatorInfo;
use mpc_did_agent::Agent;
use mpc_did_connect::{Connector, ConnectorConfig};
use mpc_did_resolver::DidResolver as _;
use mpc_did_wallet::Wallet;

use crate::cmd::mediator::registered_client;
use crate::ctx::Ctx;

/// Who we are in a live command.
#[derive(Debug, Clone)]
pub struct AgentIdentity {
    /// The wallet's name for the identity.
    pub name: String,
    /// Its DID.
    pub did: String,
}

/// Start the control plane of `identity` (default: the wallet's default identity) at its
/// registered mediator (live delivery over WebSocket).
///
/// # Errors
/// No such identity, no registered mediator (`mpc-did mediator register` first), or the
/// mediator cannot be reached.
pub async fn open_agent(
    ctx: &Ctx,
    identity: Option<&str>,
) -> anyhow::Result<(Agent, AgentIdentity)> {
    let (id, client) = registered_client(ctx, identity)?;
    let mediator = client.info.http.clone();
    let agent = Agent::start(client)
        .await
        .with_context(|| format!("cannot connect to the mediator at {mediator}"))?;
    Ok((
        agent,
        AgentIdentity {
            name: id.name.clone(),
            did: id.did.clone(),
        },
    ))
}

/// Where a peer's DIDComm endpoint came from (for messages and `--json`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PeerSource {
    /// `--peer-mediator URL`.
    Flag,
    /// The wallet contact's mediator.
    ContactMediator,
    /// The wallet contact's stored DID document.
    ContactDocument,
    /// The peer's resolved DID document (did:web).
    Resolved,
}

/// Make sure `agent` can send to `peer`: from `peer_mediator` (the peer's mediator
/// invitation or base URL), else the wallet contact (its mediator URL or stored document),
/// else the peer's own DID document.
///
/// # Errors
/// The mediator cannot be reached, or no endpoint is known (a did:key peer without
/// `--peer-mediator` or a contact naming its mediator).
pub async fn learn_peer(
    ctx: &Ctx,
    agent: &Agent,
    peer: &str,
    peer_mediator: Option<&str>,
) -> anyhow::Result<PeerSource> {
    anyhow::ensure!(
        peer.starts_with("did:"),
        "{peer:?} is not a DID (expected did:key:… or did:web:…)"
    );
    let contact = {
        let wallet = Wallet::open(&ctx.home)?;
        wallet.contact(peer)?
    };
    let (url, source) = match (peer_mediator, &contact) {
        (Some(u), _) => (Some(u.to_owned()), PeerSource::Flag),
        (None, Some(c)) if c.mediator.as_deref().is_some_and(is_url) => {
            (c.mediator.clone(), PeerSource::ContactMediator)
        }
        _ => (None, PeerSource::Resolved),
    };
    if let Some(url) = url {
        let info = MediatorInfo::discover(&url)
            .await
            .with_context(|| format!("cannot reach the peer's mediator at {url}"))?;
        agent.client().resolver().insert(info.document()?);
        agent
            .learn_service(peer, info.service_for(peer))
            .await
            .with_context(|| format!("cannot resolve {peer}"))?;
        return Ok(source);
    }
    if let Some(service) = contact
        .as_ref()
        .and_then(|c| c.document.as_ref())
        .and_then(|d| d.didcomm_services().into_iter().next())
    {
        agent.learn_service(peer, service).await?;
        return Ok(PeerSource::ContactDocument);
    }
    let doc = agent
        .client()
        .resolver()
        .resolve(peer)
        .await
        .with_context(|| format!("cannot resolve {peer}"))?;
    anyhow::ensure!(
        !doc.didcomm_services().is_empty(),
        "no DIDComm endpoint known for {peer}: pass --peer-mediator URL (the peer's mediator \
         invitation or base URL), or add the peer as a contact with its mediator"
    );
    Ok(PeerSource::Resolved)
}

fn is_url(s: &str) -> bool {
    s.starts_with("https://") || s.starts_with("http://")
}

/// Which paths a secure session may use (spec/session.md §7.5); shared by `session connect`,
/// `pipe` and `run`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct PathArgs {
    /// Carry sessions only through a mediator relay (testing relays).
    #[arg(long)]
    pub relay_only: bool,
    /// STUN server that tells our public address for the NAT-traversed (QUIC) path
    /// [default: the STUN port our mediator publishes at /oob (`mpc-did-mediator --stun`), on
    /// its host; none if it runs no STUN].
    #[arg(long, value_name = "ADDR")]
    pub stun: Option<SocketAddr>,
    /// No NAT-traversed QUIC path: direct TCP and the relay only.
    #[arg(long, conflicts_with = "stun")]
    pub no_quic: bool,
    /// No TCP hole punching behind NATs (it races punched QUIC; for measuring one path
    /// kind, or if a NAT misbehaves with simultaneous open): punched QUIC or the relay.
    #[arg(long)]
    pub no_tcp_punch: bool,
}

impl PathArgs {
    /// The library's form of these flags.
    #[must_use]
    pub fn policy(&self) -> mpc_did_mpc::PathPolicy {
        mpc_did_mpc::PathPolicy {
            relay_only: self.relay_only,
            stun: self.stun,
            no_quic: self.no_quic,
            no_tcp_punch: self.no_tcp_punch,
        }
    }
}

/// Starts the secure-session endpoint of `identity` with the paths `paths` allows
/// (`mpc_did_mpc::party::start_connector`; a missing relay is noted on stderr).
///
/// # Errors
/// No such identity; the listener cannot be bound; `--relay-only` and no relay at our
/// mediator.
pub async fn start_connector(
    ctx: &Ctx,
    identity: Option<&str>,
    agent: &Agent,
    paths: &PathArgs,
    base: ConnectorConfig,
) -> anyhow::Result<Connector> {
    let (id, _) = registered_client(ctx, identity)?;
    let note = |s: String| eprintln!("mpc-did: {s}");
    Ok(mpc_did_mpc::party::start_connector(&id, agent, &paths.policy(), base, &note).await?)
}
