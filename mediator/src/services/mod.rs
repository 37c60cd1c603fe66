//! Rendezvous services that run beside the mediator (spec/mediator.md §9,
//! spec/rendezvous.md §7): [`stun::StunService`] (STUN Binding over UDP and TCP,
//! default port 3478, optional RFC 5780 alternate address) and
//! [`relay::RelayService`] (the relay over WebSocket `GET /relay` on the
//! mediator's HTTP port and over plain TCP). Both plug in through
//! [`crate::Service`]:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use mpc_did_mediator::services::{relay::{RelayService, RelayServiceConfig}, stun::StunService};
//! use mpc_did_mediator::{Config, Mediator};
//! use mpc_did_rendezvous::net::StunServerConfig;
//! let stun = StunService::bind(StunServerConfig::new("0.0.0.0:3478".parse()?)).await?;
//! let relay = RelayService::bind(RelayServiceConfig {
//!     tcp_listen: Some("0.0.0.0:3479".parse()?),
//!     ..RelayServiceConfig::default()
//! })
//! .await?;
//! let handle = Mediator::builder(Config::default()).service(stun).service(relay).start().await?;
//! # handle.shutdown().await; Ok(()) }
//! ```
//! Metrics: `GET /metrics/stun` and `GET /metrics/relay` (Prometheus text).

pub mod relay;
pub mod stun;
