//! The operator listener (`admin_listen`, default loopback; spec/mediator.md §7): metrics,
//! liveness and readiness, never on the public port. Also the access log line every
//! request writes (request kind, a hash of the DID, status, bytes — no message content,
//! no keys, no addresses).
//!
//! | path | answer |
//! |---|---|
//! | `GET /metrics` | Prometheus text: the mediator's series, `build_info`, `process_*` |
//! | `GET /metrics/relay`, `/metrics/stun` | the services' series |
//! | `GET /healthz` | `200 ok` while the process serves (liveness; also on the public port) |
//! | `GET /readyz` | `200` when the store takes writes and every service runs, else `503`; JSON body |

use std::fmt::Write as _;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use sha2::{Digest as _, Sha256};

use crate::server::AppState;
use crate::store::Store as _;

/// Paths served only on the operator listener.
#[must_use]
pub fn is_operator_path(path: &str) -> bool {
    path == "/metrics" || path.starts_with("/metrics/") || path == "/readyz"
}

/// The operator router: `/metrics`, `/healthz`, `/readyz` and the services' `/metrics/*`
/// routes taken from `extra` (their other routes answer 404 here).
pub(crate) fn router(state: AppState, extra: Vec<Router>) -> Router {
    let mut services = Router::new();
    for e in extra {
        services = services.merge(e);
    }
    let services = services.layer(axum::middleware::from_fn(only_operator_paths));
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
        .merge(services)
}

async fn only_operator_paths(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if is_operator_path(req.uri().path()) {
        next.run(req).await
    } else {
        StatusCode::NOT_FOUND.into_response()
    }
}

/// Liveness: the process answers.
pub(crate) async fn healthz() -> Response {
    (StatusCode::OK, "ok\n").into_response()
}

async fn readyz(State(st): State<AppState>) -> Response {
    let r = st.health.readiness();
    let status = if r.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(r)).into_response()
}

async fn metrics(State(st): State<AppState>) -> Response {
    let totals = st.core.store.totals().await.ok();
    let mut text = st
        .core
        .metrics
        .render(totals, &st.core.config.limit_gauges());
    let ready = st.health.readiness().ready;
    let _ = writeln!(
        text,
        "# HELP mpcdid_mediator_build_info Version of the running binary.\n\
         # TYPE mpcdid_mediator_build_info gauge\n\
         mpcdid_mediator_build_info{{version=\"{}\",backend=\"{}\"}} 1\n\
         # HELP mpcdid_mediator_ready Whether /readyz reports ready (1) or not (0).\n\
         # TYPE mpcdid_mediator_ready gauge\n\
         mpcdid_mediator_ready {}",
        env!("CARGO_PKG_VERSION"),
        st.core.store.backend(),
        u8::from(ready)
    );
    process_metrics(&mut text);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// The standard `process_*` series, from `/proc/self` (Linux; nothing elsewhere).
fn process_metrics(out: &mut String) {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return;
    };
    // Fields after the parenthesised command name (which may hold spaces).
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .map(|(_, rest)| rest.split(' ').collect())
        .unwrap_or_default();
    // man 5 proc: utime (14), stime (15), starttime (22), rss pages (24); the list here
    // starts at field 3 (state).
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok());
    const TICKS: f64 = 100.0; // USER_HZ on Linux
    const PAGE: f64 = 4096.0;
    if let (Some(u), Some(s)) = (field(14), field(15)) {
        let _ = writeln!(
            out,
            "# HELP process_cpu_seconds_total User and system CPU time spent.\n# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total {}",
            (u + s) / TICKS
        );
    }
    if let Some(rss) = field(24) {
        let _ = writeln!(
            out,
            "# HELP process_resident_memory_bytes Resident memory size.\n# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {}",
            rss * PAGE
        );
    }
    let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<f64>().ok())
    });
    if let (Some(start), Some(boot)) = (field(22), boot) {
        let _ = writeln!(
            out,
            "# HELP process_start_time_seconds Start time since the Unix epoch.\n# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds {}",
            boot + start / TICKS
        );
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        let _ = writeln!(
            out,
            "# HELP process_open_fds Open file descriptors.\n# TYPE process_open_fds gauge\nprocess_open_fds {}",
            fds.count()
        );
    }
    let max_fds = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3)?.parse::<u64>().ok())
        });
    if let Some(m) = max_fds {
        let _ = writeln!(
            out,
            "# HELP process_max_fds Limit of open file descriptors.\n# TYPE process_max_fds gauge\nprocess_max_fds {m}"
        );
    }
}

/// A DID as it appears in logs: the first 16 hex digits of its SHA-256 (the same DID
/// always gives the same value, so an operator can follow one client without the log
/// naming it).
#[must_use]
pub fn did_hash(did: &str) -> String {
    hex::encode(Sha256::digest(did.as_bytes()).get(..8).unwrap_or_default())
}

/// A WebSocket's access summary, written when it closes (spec/mediator.md §6, "Logs"):
/// one info line, target `access`, instead of one per accepted frame.
#[derive(Debug, Default)]
pub(crate) struct WsAccess {
    /// The DID hash of the last authenticated frame.
    did: Option<String>,
    frames: u64,
    refused: u64,
    bytes_in: usize,
    bytes_out: usize,
}

impl WsAccess {
    /// One frame: accepted ones at debug level, refused ones at info (as HTTP requests).
    pub(crate) fn frame(
        &mut self,
        h: &crate::core::Handled,
        status: u16,
        bytes_in: usize,
        bytes_out: usize,
    ) {
        self.frames += 1;
        self.bytes_in += bytes_in;
        self.bytes_out += bytes_out;
        if let Some(d) = h.did.as_deref() {
            self.did = Some(did_hash(d));
        }
        if status == 200 {
            if tracing::enabled!(target: "access", tracing::Level::DEBUG) {
                let (kind, did) = kind_and_did(h);
                tracing::debug!(target: "access", transport = "ws", kind, did = did.as_deref().unwrap_or("-"), status, bytes_in, bytes_out, "request");
            }
        } else {
            self.refused += 1;
            access_log("ws", h, status, bytes_in, bytes_out);
        }
    }

    /// Pushed deliveries count as bytes out.
    pub(crate) fn pushed(&mut self, bytes: usize) {
        self.bytes_out += bytes;
    }

    /// The summary line.
    pub(crate) fn close(&self, secs: f64) {
        tracing::info!(
            target: "access",
            transport = "ws",
            did = self.did.as_deref().unwrap_or("-"),
            frames = self.frames,
            refused = self.refused,
            bytes_in = self.bytes_in,
            bytes_out = self.bytes_out,
            secs,
            "websocket closed"
        );
    }
}

/// A request's message type without `https://didcomm.org/`, and its DID hash.
fn kind_and_did(h: &crate::core::Handled) -> (&str, Option<String>) {
    // `https://didcomm.org/messagepickup/3.0/status-request` → `messagepickup/3.0/status-request`
    let kind = h
        .kind
        .as_deref()
        .map(|k| k.strip_prefix("https://didcomm.org/").unwrap_or(k))
        .unwrap_or("unreadable");
    (kind, h.did.as_deref().map(did_hash))
}

/// One access-log line at info level, target `access`.
pub(crate) fn access_log(
    transport: &str,
    h: &crate::core::Handled,
    status: u16,
    bytes_in: usize,
    bytes_out: usize,
) {
    let (kind, did) = kind_and_did(h);
    tracing::info!(
        target: "access",
        transport,
        kind,
        did = did.as_deref().unwrap_or("-"),
        status,
        bytes_in,
        bytes_out,
        "request"
    );
}

/// Early refusals (before the message could be read: rate limits, body limits) written
/// since the last such line, and the second that line was written in.
static EARLY_SUPPRESSED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static EARLY_LAST_SEC: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The access line of a request refused before its message was read (no kind, no DID:
/// `kind` is `unreadable`, `did` `-`). A flood of such refusals costs the flooder nothing,
/// so at most one line per second is written; it counts the refusals left out since the
/// previous one (`suppressed`). The refusal metrics count every one.
pub(crate) fn access_log_early(transport: &str, status: u16, why: &str) {
    use std::sync::atomic::Ordering;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if EARLY_LAST_SEC.swap(now, Ordering::Relaxed) == now {
        EARLY_SUPPRESSED.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let suppressed = EARLY_SUPPRESSED.swap(0, Ordering::Relaxed);
    tracing::info!(
        target: "access",
        transport,
        kind = "unreadable",
        did = "-",
        status,
        why,
        suppressed,
        "request"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operator_paths() {
        for p in ["/metrics", "/metrics/relay", "/metrics/stun", "/readyz"] {
            assert!(is_operator_path(p), "{p}");
        }
        for p in ["/healthz", "/didcomm", "/ws", "/relay", "/metricsx", "/oob"] {
            assert!(!is_operator_path(p), "{p}");
        }
        assert_eq!(did_hash("did:key:z6Mk").len(), 16);
        assert_eq!(did_hash("did:key:z6Mk"), did_hash("did:key:z6Mk"));
    }
}

/// One mediated DID as `mpc-did-mediator admin list` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GrantEntry {
    /// The DID.
    pub did: String,
    /// When the grant was issued (ms since the Unix epoch; 0 if unknown).
    pub granted_ms: u64,
    /// Recipient keys registered.
    pub keys: usize,
    /// Messages waiting.
    pub queued_messages: u64,
    /// Bytes waiting.
    pub queued_bytes: u64,
}

/// Every DID with a grant, and its queue (`admin list`).
///
/// # Errors
/// Store failure.
pub async fn list(
    store: &crate::store::AnyStore,
) -> Result<Vec<GrantEntry>, crate::store::StoreError> {
    let mut out = Vec::new();
    for (did, granted_ms) in store.grant_list().await? {
        let keys = store.keys(&did).await?.len();
        let st = store.status(&did, None).await?;
        out.push(GrantEntry {
            did,
            granted_ms,
            keys,
            queued_messages: st.message_count,
            queued_bytes: st.total_bytes,
        });
    }
    out.sort_by(|a, b| a.did.cmp(&b.did));
    Ok(out)
}

/// Deletes every message waiting for `did` (`admin purge`); how many.
///
/// # Errors
/// Store failure.
pub async fn purge(
    store: &crate::store::AnyStore,
    did: &str,
) -> Result<u64, crate::store::StoreError> {
    let mut removed = 0;
    loop {
        let batch = store.fetch(did, None, 1000).await?;
        if batch.is_empty() {
            return Ok(removed);
        }
        let ids: Vec<String> = batch.into_iter().map(|m| m.id).collect();
        let n = store.remove(did, &ids).await?;
        removed += n;
        if n == 0 {
            // Nothing removable although listed: do not spin.
            return Ok(removed);
        }
    }
}

/// Withdraws `did`'s mediation (`admin revoke`): its recipient keys (forwards to them are
/// refused from now on), its grant, and its waiting messages. Returns whether it had a
/// grant and how many messages were deleted. The DID may request mediation again unless
/// `mediation.deny` lists it.
///
/// # Errors
/// Store failure.
pub async fn revoke(
    store: &crate::store::AnyStore,
    did: &str,
) -> Result<(bool, u64), crate::store::StoreError> {
    for key in store.keys(did).await? {
        store.remove_key(did, &key).await?;
    }
    let had = store.revoke_grant(did).await?;
    let purged = purge(store, did).await?;
    store.flush().await?;
    Ok((had, purged))
}
