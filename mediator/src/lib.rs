//! `mpc-did-mediator`: a DIDComm v2 mediator that receives, queues and delivers messages
//! for parties that are offline or behind NAT.
//!
//! **Owns:** the mediator's HTTP/WebSocket server, its protocol handling (Coordinate
//! Mediation 2.0 and 3.0, Routing 2.0 `forward`, Message Pickup 3.0 and 4.0 with live delivery, Trust Ping
//! 2.0, Discover Features 2.0, Report Problem 2.0), the durable queue [`store`] (sled or
//! Redis), limits and metrics — including what bounds strangers who know a DID
//! ([`guard`]: per-source quotas, the replay cache, per-IP and per-DID rates, the
//! trusted-proxy `X-Forwarded-For` rule) — and the operator's surface: built-in TLS with
//! certificate reload ([`tls`]), the operator listener with `/metrics`, `/readyz` and the
//! access log ([`admin`], [`health`]), JSON logs ([`logging`]), config validation.
//!
//! **Does not:** implement DIDComm envelopes or define the protocol messages (crate
//! `mpc-did-didcomm`, whose `protocols` both sides share; [`messages`] only adds the
//! mediator's problem codes and disclosures), resolve DIDs (crate `mpc-did-resolver`),
//! hold user wallets, or talk to a mediator as a party does (the client is
//! `mpc_did_agent::client`, so parties never depend on this crate). STUN and relay services plug in beside
//! the mediator through [`Service`] (spec/mediator.md §9).
//!
//! ```text
//!  sender ── POST /didcomm (anoncrypt forward) ──▶ core::handle ──▶ Store::enqueue (durable)
//!                                                    │                 │ arrival notice
//!                                                    ▼                 ▼ (local / Redis pub/sub)
//!  recipient ◀── HTTP 200 / WS frame (authcrypt) ── replies      LiveHub ─▶ WS session push
//!  recipient ── messages-received ──▶ Store::remove (only now is a message deleted)
//! ```
//!
//! Embedding (what `mpc-did demo` does):
//! ```no_run
//! # async fn demo() -> Result<(), mpc_did_mediator::MediatorError> {
//! use mpc_did_mediator::{Config, Mediator};
//! let mut config = Config::default();
//! config.listen = "127.0.0.1:0".parse().expect("address");
//! config.data = std::env::temp_dir().join("mediator-demo");
//! let handle = Mediator::builder(config).start().await?;
//! println!("{} at {} ({})", handle.did, handle.addr, handle.invitation_url);
//! handle.shutdown().await;
//! # Ok(()) }
//! ```
//! Protocol and deployment details: `spec/mediator.md`.
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod admin;
pub mod config;
mod core;
pub mod guard;
pub mod health;
pub mod identity;
pub mod live;
pub mod logging;
pub mod mesh;
pub mod mesh_config;
mod mesh_proto;
pub mod messages;
pub mod metrics;
mod server;
pub mod services;
pub mod store;
pub mod tls;
mod versions;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use mpc_did_didcomm::protocols::oob::Invitation;
use mpc_did_resolver::UniversalResolver;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use crate::config::{Config, Limits, MediationPolicy, StoreConfig};
pub use crate::core::Transport;
pub use crate::identity::MediatorIdentity;
pub use crate::metrics::{Metrics, Rejection};
pub use crate::server::{ENCRYPTED_MEDIA_TYPE, PLAIN_MEDIA_TYPE, SIGNED_MEDIA_TYPE};
use crate::store::{AnyStore, RedisStore, SledStore, Store as _, StoreError};

/// Why a mediator could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MediatorError {
    /// The configuration is invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// The store could not be opened.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// A listening socket (public or operator) could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// What an added service (STUN, relay, ...) is given when the mediator starts.
#[derive(Clone)]
pub struct ServiceContext {
    /// Cancelled when the mediator shuts down; the service must then stop.
    pub shutdown: CancellationToken,
    /// The mediator's identity (e.g. to authenticate relay clients by DID).
    pub identity: MediatorIdentity,
    /// The HTTP listener's address.
    pub http_addr: SocketAddr,
    /// Who holds a mediation grant (the relay's `verify_clients`).
    pub grants: GrantCheck,
    /// The mediator's own DID resolver: its did:web settings (`allow_private_did_web`),
    /// cache and per-site fetch slots, for services that authenticate clients by DID.
    pub resolver: UniversalResolver,
}

/// Answers "does this DID hold a mediation grant here?" from the mediator's store.
#[derive(Clone)]
pub struct GrantCheck {
    core: Arc<core::Core>,
}

impl GrantCheck {
    /// Whether `did` was granted mediation.
    ///
    /// # Errors
    /// The store failed.
    pub async fn has_grant(&self, did: &str) -> Result<bool, StoreError> {
        self.core.store.has_grant(did).await
    }
}

/// A service that runs beside the mediator in the same process: its HTTP routes are
/// merged into the mediator's router (e.g. a relay WebSocket path) and [`Service::run`]
/// runs its own listeners (e.g. STUN on UDP 3478) until shutdown.
pub trait Service: Send + 'static {
    /// A short name for logs.
    fn name(&self) -> &'static str;
    /// Extra HTTP routes (default: none).
    fn routes(&self) -> Option<axum::Router> {
        None
    }
    /// What clients should know of the service, published at `GET /oob` under
    /// `services.<name>` (e.g. the STUN port; spec/mediator.md §2). Default: nothing.
    fn advertise(&self) -> Option<serde_json::Value> {
        None
    }
    /// Runs until `ctx.shutdown` is cancelled.
    fn run(self: Box<Self>, ctx: ServiceContext) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

/// Entry point: [`Mediator::builder`].
pub struct Mediator;

impl Mediator {
    /// A builder for a mediator with `config`.
    #[must_use]
    pub fn builder(config: Config) -> MediatorBuilder {
        MediatorBuilder {
            config,
            services: Vec::new(),
            resolver: None,
        }
    }
}

/// Configures and starts a mediator.
pub struct MediatorBuilder {
    config: Config,
    services: Vec<Box<dyn Service>>,
    resolver: Option<UniversalResolver>,
}

impl MediatorBuilder {
    /// Adds a service (STUN, relay, ...).
    #[must_use]
    pub fn service(mut self, s: impl Service) -> Self {
        self.services.push(Box::new(s));
        self
    }

    /// Uses `resolver` to resolve senders' DIDs (default: did:key locally, did:web over
    /// HTTPS).
    #[must_use]
    pub fn resolver(mut self, resolver: UniversalResolver) -> Self {
        self.resolver = Some(resolver);
        self
    }

    /// Opens the store, loads or creates the mediator's DID, binds the listener and starts
    /// serving. Must run inside a tokio runtime.
    ///
    /// # Errors
    /// Invalid configuration, store failure, or the address cannot be bound.
    pub async fn start(self) -> Result<MediatorHandle, MediatorError> {
        let config = self.config;
        config.validate().map_err(MediatorError::Config)?;
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(c), Some(k)) => Some(tls::TlsFiles::load(c, k).map_err(MediatorError::Config)?),
            _ => None,
        };
        let store = match config.store_config().map_err(MediatorError::Config)? {
            StoreConfig::Sled => {
                check_data_dir(&config.data).map_err(MediatorError::Config)?;
                AnyStore::Sled(SledStore::open(&config.data)?)
            }
            StoreConfig::Redis(url) => {
                AnyStore::Redis(RedisStore::connect(&url, &config.redis_prefix).await?)
            }
        };
        let identity = MediatorIdentity::load_or_create(&store).await?;
        let listener =
            bind_listener(config.listen, config.limits.listen_backlog).map_err(|source| {
                MediatorError::Bind {
                    addr: config.listen,
                    source,
                }
            })?;
        let addr = listener
            .local_addr()
            .map_err(|source| MediatorError::Bind {
                addr: config.listen,
                source,
            })?;
        let admin_listener =
            bind_listener(config.admin_listen, 64).map_err(|source| MediatorError::Bind {
                addr: config.admin_listen,
                source,
            })?;
        let admin_addr = admin_listener
            .local_addr()
            .map_err(|source| MediatorError::Bind {
                addr: config.admin_listen,
                source,
            })?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let public_url = config
            .public_url
            .clone()
            .unwrap_or_else(|| format!("{scheme}://{addr}"))
            .trim_end_matches('/')
            .to_owned();
        let endpoint = format!("{public_url}/didcomm");
        let ws_endpoint = format!(
            "{}/ws",
            public_url
                .replacen("https://", "wss://", 1)
                .replacen("http://", "ws://", 1)
        );
        let mut invitation = Invitation::new(identity.did.clone());
        invitation.goal_code = Some("request-mediate".into());
        invitation.goal = Some("Request mediation (Coordinate Mediation 2.0)".into());
        let invitation_url = invitation
            .to_url(&format!("{public_url}/oob"))
            .map_err(|e| MediatorError::Config(e.to_string()))?;
        let did_doc = identity.document_with_service(&endpoint);
        let advertised: serde_json::Map<String, serde_json::Value> = self
            .services
            .iter()
            .filter_map(|s| Some((s.name().to_owned(), s.advertise()?)))
            .collect();
        let oob = serde_json::json!({
            "invitation": invitation.to_message(),
            "invitation_url": invitation_url,
            "did": identity.did,
            "routing_key": identity.agreement_kid,
            "endpoints": { "http": endpoint, "ws": ws_endpoint },
            "services": advertised,
        });
        let resolver = match self.resolver {
            Some(r) => r,
            None => UniversalResolver::with_config(mpc_did_resolver::WebResolverConfig {
                allow_private_hosts: config.allow_private_did_web,
                ..mpc_did_resolver::WebResolverConfig::default()
            })
            .map_err(|e| MediatorError::Config(e.to_string()))?,
        };
        let arrivals = store.arrivals();
        let rate_per_ip = config.limits.rate_per_ip;
        let fatal_after =
            (config.storage_fatal_secs > 0).then(|| Duration::from_secs(config.storage_fatal_secs));
        let core = Arc::new(core::Core::new(
            identity.clone(),
            config,
            store,
            resolver.clone(),
        ));
        let cancel = CancellationToken::new();
        let fatal = CancellationToken::new();
        let tracker = TaskTracker::new();
        let hub = Arc::new(live::LiveHub::default());
        tokio::spawn(hub.clone().dispatch(arrivals, cancel.clone()));
        let health = Arc::new(health::Health::default());
        tokio::spawn(health.clone().probe_loop(
            core.clone(),
            fatal_after,
            cancel.clone(),
            fatal.clone(),
        ));
        let state = server::AppState {
            core: core.clone(),
            hub,
            cancel: cancel.clone(),
            tracker: tracker.clone(),
            oob: Arc::new(oob),
            did_doc: Arc::new(did_doc.to_json()),
            ip_rate: Arc::new(std::sync::Mutex::new(guard::KeyedRate::new(
                rate_per_ip,
                rate_per_ip.saturating_mul(2),
                guard::RATE_KEYS_MAX,
            ))),
            health: health.clone(),
            clients: Arc::default(),
        };
        let ctx = ServiceContext {
            shutdown: cancel.clone(),
            identity: identity.clone(),
            http_addr: addr,
            grants: GrantCheck { core: core.clone() },
            resolver,
        };
        let mut extra = Vec::new();
        for s in self.services {
            if let Some(r) = s.routes() {
                extra.push(r);
            }
            tracing::info!(service = s.name(), "starting service");
            let name = s.name();
            let up = health.service(name);
            let run = s.run(ctx.clone());
            let stopping = cancel.clone();
            tracker.spawn(async move {
                run.await;
                up.store(false, std::sync::atomic::Ordering::Relaxed);
                if !stopping.is_cancelled() {
                    tracing::error!(service = name, "service stopped: /readyz reports not ready");
                }
            });
        }
        let admin_app = admin::router(state.clone(), extra.clone());
        let app = server::router(state.clone(), extra);
        let tls_config = match &tls {
            Some(t) => Some(t.server_config().map_err(MediatorError::Config)?),
            None => None,
        };
        if let Some(t) = &tls {
            tokio::spawn(t.clone().watch(cancel.clone()));
        }
        tracker.spawn(server::serve(listener, state, app, tls_config));
        let admin_stop = cancel.clone();
        tokio::spawn(async move {
            let served = axum::serve(admin_listener, admin_app)
                .with_graceful_shutdown(async move { admin_stop.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "operator listener failed");
            }
        });
        tracing::info!(did = %identity.did, %addr, admin = %admin_addr, tls = tls.is_some(), backend = core.store.backend(), "mediator listening");
        Ok(MediatorHandle {
            admin_addr,
            tls,
            fatal,
            addr,
            did: identity.did.clone(),
            routing_key: identity.agreement_kid.clone(),
            public_url,
            invitation_url,
            core,
            cancel,
            tracker,
        })
    }
}

/// A running mediator. Dropping it stops the server without draining; call
/// [`MediatorHandle::shutdown`] to drain.
pub struct MediatorHandle {
    /// The bound HTTP address.
    pub addr: SocketAddr,
    /// The operator listener (`/metrics`, `/readyz`; config `admin_listen`).
    pub admin_addr: SocketAddr,
    tls: Option<tls::TlsFiles>,
    fatal: CancellationToken,
    /// The mediator's DID.
    pub did: String,
    /// The key id senders wrap forwards for.
    pub routing_key: String,
    /// Base URL (config `public_url`, else `http://addr`).
    pub public_url: String,
    /// The Out-of-Band 2.0 invitation URL (`{public_url}/oob?_oob=…`).
    pub invitation_url: String,
    core: Arc<core::Core>,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl MediatorHandle {
    /// The instance's counters.
    #[must_use]
    pub fn metrics(&self) -> &Metrics {
        &self.core.metrics
    }

    /// Reads the built-in TLS certificate and key again (SIGHUP); `Ok` without TLS.
    ///
    /// # Errors
    /// The files do not load; the previous certificate stays in force.
    pub fn reload_tls(&self) -> Result<(), String> {
        match &self.tls {
            Some(t) => t.reload(),
            None => Ok(()),
        }
    }

    /// Completes when the store has stayed unwritable for `storage_fatal_secs`: the binary
    /// then exits with [`health::EXIT_STORAGE`] for its supervisor to restart it.
    pub async fn storage_failed(&self) {
        self.fatal.cancelled().await;
    }

    /// Stops accepting, lets open requests finish and WebSocket sessions close (at most
    /// `limits.drain_timeout_secs`), then flushes the store.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.tracker.close();
        let drain = Duration::from_secs(self.core.config.limits.drain_timeout_secs);
        if tokio::time::timeout(drain, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("drain timeout: closing remaining connections");
        }
        if let Err(e) = self.core.store.flush().await {
            tracing::error!(error = %e, "final store flush failed");
        }
        tracing::info!("mediator stopped");
    }
}

impl Drop for MediatorHandle {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Creates the data directory if needed and checks that it takes a file, so an
/// unwritable one is reported once, by path, with what to do.
fn check_data_dir(dir: &std::path::Path) -> Result<(), String> {
    let hint = "give the mediator's user write access to it (systemd: StateDirectory=), or set `data` / --data to another directory";
    std::fs::create_dir_all(dir).map_err(|e| {
        format!(
            "data directory {} cannot be created ({e}): {hint}",
            dir.display()
        )
    })?;
    let probe = dir.join(".write-test");
    std::fs::write(&probe, b"").map_err(|e| {
        format!(
            "data directory {} is not writable ({e}): {hint}",
            dir.display()
        )
    })?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Binds the HTTP/WebSocket listener with `backlog` (tokio's `TcpListener::bind` always asks
/// for 1,024). `SO_REUSEADDR` as tokio sets it, so a restarted mediator rebinds at once.
fn bind_listener(addr: SocketAddr, backlog: u64) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(u32::try_from(backlog.max(1)).unwrap_or(u32::MAX))
}
