//! The STUN service (spec/rendezvous.md §2.3, §7): the rendezvous crate's
//! UDP+TCP [`StunServer`] run beside the mediator, with an optional alternate
//! address so clients can classify their NAT mapping (RFC 5780 §4.3).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use mpc_did_rendezvous::net::StunServer;
/// Re-exported so the mediator binary can configure the service without
/// naming the rendezvous crate.
pub use mpc_did_rendezvous::net::{StunMetrics, StunServerConfig};

use crate::{Service, ServiceContext};

/// Default STUN port (RFC 8489 §18.6).
pub const DEFAULT_STUN_PORT: u16 = 3478;

/// A bound STUN server, started with the mediator and stopped at its shutdown.
pub struct StunService {
    server: StunServer,
}

/// Addresses and counters of a STUN service (cheap to clone).
#[derive(Clone, Debug)]
pub struct StunServiceHandle {
    /// Primary UDP address (and TCP, same port, if enabled).
    pub primary: Option<SocketAddr>,
    /// TCP address, if enabled.
    pub tcp: Option<SocketAddr>,
    /// Alternate address A2:P2 announced as OTHER-ADDRESS, if configured.
    pub other: Option<SocketAddr>,
    metrics: Arc<StunMetrics>,
}

impl StunServiceHandle {
    /// The counters.
    #[must_use]
    pub fn metrics(&self) -> &StunMetrics {
        &self.metrics
    }

    /// Prometheus text for the STUN counters (series `mpcdid_stun_*`).
    #[must_use]
    pub fn prometheus(&self) -> String {
        use std::fmt::Write as _;
        let m = &self.metrics;
        let mut out = String::new();
        for (name, help, v) in [
            ("answered_total", "STUN responses sent.", &m.answered),
            (
                "malformed_total",
                "STUN messages dropped as malformed.",
                &m.malformed,
            ),
            (
                "ignored_total",
                "STUN messages needing no answer.",
                &m.ignored,
            ),
            (
                "tcp_accepted_total",
                "STUN TCP connections accepted.",
                &m.tcp_accepted,
            ),
            (
                "tcp_refused_total",
                "STUN TCP connections refused.",
                &m.tcp_refused,
            ),
            (
                "tcp_refused_per_source_total",
                "STUN TCP connections refused at the per-address limit.",
                &m.tcp_refused_per_source,
            ),
            (
                "udp_rate_limited_total",
                "STUN UDP requests left unanswered at the answer rate (per address or in all).",
                &m.udp_rate_limited,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP mpcdid_stun_{name} {help}\n# TYPE mpcdid_stun_{name} counter\nmpcdid_stun_{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
        out
    }
}

impl StunService {
    /// Binds every socket now (so errors surface before the mediator starts).
    ///
    /// # Errors
    /// Binding errors (address in use, address not local, ...).
    pub async fn bind(cfg: StunServerConfig) -> std::io::Result<Self> {
        let server = StunServer::bind(cfg).await?;
        Ok(StunService { server })
    }

    /// Addresses and counters.
    #[must_use]
    pub fn handle(&self) -> StunServiceHandle {
        StunServiceHandle {
            primary: self.server.local_addr(),
            tcp: self.server.tcp_addr(),
            other: self.server.other_addr(),
            metrics: self.server.shared_metrics(),
        }
    }
}

impl Service for StunService {
    fn name(&self) -> &'static str {
        "stun"
    }

    /// The STUN port (UDP, and TCP when on), on the mediator's public host: clients learn
    /// their public address there for the NAT-traversed path (spec/rendezvous.md §5.1).
    fn advertise(&self) -> Option<serde_json::Value> {
        Some(serde_json::json!({
            "port": self.server.local_addr()?.port(),
            "tcp": self.server.tcp_addr().is_some(),
        }))
    }

    fn routes(&self) -> Option<axum::Router> {
        let h = self.handle();
        Some(axum::Router::new().route(
            "/metrics/stun",
            axum::routing::get(move || {
                let h = h.clone();
                async move { h.prometheus() }
            }),
        ))
    }

    fn run(
        self: Box<Self>,
        ctx: ServiceContext,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(async move {
            tracing::info!(
                udp = ?self.server.udp_addrs(),
                tcp = ?self.server.tcp_addr(),
                "STUN listening"
            );
            ctx.shutdown.cancelled().await;
            self.server.shutdown().await;
        })
    }
}
