//! A party's identity and control plane as the wallet stores them: the identity, its
//! registered mediator, and the secure-session endpoint with the paths a run may use.

use std::net::SocketAddr;
use std::path::Path;

use mpc_did_agent::client::{MediatorClient, MediatorInfo};
use mpc_did_agent::Agent;
use mpc_did_connect::{mediator_stun, Connector, ConnectorConfig, QuicSetup};
use mpc_did_didcomm::{Secret, SecretStore};
use mpc_did_resolver::UniversalResolver;
use mpc_did_wallet::{Identity, Wallet};

use crate::MpcError;

/// The identity's private keys, as the DIDComm crate wants them.
#[must_use]
pub fn secrets(id: &Identity) -> SecretStore {
    let mut s = SecretStore::new();
    s.insert(
        id.agreement_kid.clone(),
        Secret::X25519(id.agreement_secret.clone()),
    );
    s.insert(id.auth_kid.clone(), Secret::Ed25519(id.signing_key.clone()));
    s
}

/// The named identity, else the wallet's default one.
///
/// # Errors
/// No such identity, or no identity at all.
pub fn identity(wallet: &Wallet, name: Option<&str>) -> Result<Identity, MpcError> {
    Ok(match name {
        Some(n) => wallet.identity(n)?,
        None => wallet.default_identity().map_err(|e| match e {
            mpc_did_wallet::WalletError::NoIdentities => MpcError::NoIdentity,
            e => e.into(),
        })?,
    })
}

/// The identity and a client for its registered mediator. The wallet is closed again
/// before returning (long-running commands must not hold its lock).
///
/// # Errors
/// The wallet cannot be opened, no such identity, or it has no registered mediator.
pub fn registered_client(
    home: &Path,
    name: Option<&str>,
) -> Result<(Identity, MediatorClient), MpcError> {
    let wallet = Wallet::open(home)?;
    let id = identity(&wallet, name)?;
    let info: MediatorInfo = wallet
        .mediator(&id.name)?
        .ok_or_else(|| MpcError::NoMediator(id.name.clone()))?;
    drop(wallet);
    let resolver = UniversalResolver::new()
        .map_err(|e| MpcError::control("cannot start the DID resolver", e))?;
    let client = MediatorClient::new(info, &id.did, secrets(&id), resolver)
        .map_err(|e| MpcError::control("cannot use the registered mediator", e))?;
    Ok((id, client))
}

/// Which paths a secure session may use (spec/session.md §7.5).
#[derive(Debug, Clone, Default)]
pub struct PathPolicy {
    /// Carry sessions only through a mediator relay.
    pub relay_only: bool,
    /// The STUN server for the NAT-traversed (QUIC) path [default: our mediator's].
    pub stun: Option<SocketAddr>,
    /// No NAT-traversed QUIC path: direct TCP and the relay only.
    pub no_quic: bool,
    /// No TCP hole punching (spec/rendezvous.md §6.2): behind NATs, punched QUIC or the
    /// relay only.
    pub no_tcp_punch: bool,
}

/// The relay of our mediator (`…/relay` beside its WebSocket endpoint), answered with the
/// identity's own Ed25519 key, and pinned to the mediator's DID.
#[must_use]
pub fn relay_setup(id: &Identity, agent: &Agent) -> mpc_did_connect::RelaySetup {
    let info = &agent.client().info;
    let base = info.ws.strip_suffix("/ws").unwrap_or(&info.ws);
    mpc_did_connect::RelaySetup {
        url: format!("{base}/relay"),
        identity: mpc_did_connect::RelayIdentity {
            key: id.signing_key.clone(),
            did: id.did.clone(),
            key_id: id.auth_kid.clone(),
        },
        expected_relay: Some(info.did.clone()),
    }
}

/// Starts the secure-session endpoint with the paths `paths` allows: direct TCP, QUIC on a
/// UDP socket whose public address the STUN server tells, and our mediator's relay. A
/// mediator without a relay leaves direct paths only (said through `note`), unless
/// `relay_only` demanded it.
///
/// # Errors
/// The listener cannot be bound; `relay_only` and no relay at our mediator.
pub async fn start_connector(
    id: &Identity,
    agent: &Agent,
    paths: &PathPolicy,
    base: ConnectorConfig,
    note: &(dyn Fn(String) + Sync),
) -> Result<Connector, MpcError> {
    let quic = (!paths.no_quic && !paths.relay_only).then(|| QuicSetup {
        stun: paths.stun.or_else(|| mediator_stun(agent)),
        tcp_punch: !paths.no_tcp_punch,
        ..QuicSetup::default()
    });
    let config = ConnectorConfig {
        relay: Some(relay_setup(id, agent)),
        force_relay: paths.relay_only,
        quic,
        ..base
    };
    let started = match Connector::start(agent.clone(), config.clone()).await {
        Ok(c) => Ok(c),
        Err(e) if !paths.relay_only => {
            note(format!(
                "note: no relay at our mediator ({e}); direct paths only"
            ));
            Connector::start(
                agent.clone(),
                ConnectorConfig {
                    relay: None,
                    ..config
                },
            )
            .await
            .map_err(|e| MpcError::control("cannot start the secure-session endpoint", e))
        }
        Err(e) => Err(MpcError::control(
            "--relay-only: cannot use our mediator's relay",
            e,
        )),
    }?;
    report_path_events(&started);
    Ok(started)
}

/// Prints each path transition of `connector`'s sessions and relays, and of its agent's live
/// connection to the mediator, to stderr, once per change (down, back): a party is never
/// silent while it waits for a path (spec/session.md §7.4).
fn report_path_events(connector: &Connector) {
    let mut live = connector.agent().live_events();
    tokio::spawn(async move {
        loop {
            match live.recv().await {
                Ok(ev) => eprintln!("mpc-did: {ev}"),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    let mut rx = connector.path_events();
    tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Ok(ev) => eprintln!("mpc-did: {ev}"),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    eprintln!("mpc-did: ({n} path notices skipped)");
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });
}
