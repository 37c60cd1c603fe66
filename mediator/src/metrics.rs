//! Counters and gauges, rendered in the Prometheus text exposition format (version 0.0.4).
//!
//! Plain atomics: the mediator needs a dozen series, not a metrics stack. Names are listed
//! in spec/mediator.md §7.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::store::StoreTotals;

/// Why a request or connection was refused (label `reason` of
/// `mpcdid_mediator_rejections_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rejection {
    /// Not a DIDComm message we can unpack.
    Malformed,
    /// Larger than `limits.max_message_bytes`.
    TooLarge,
    /// Missing authcrypt, no grant, or `from` mismatch.
    Unauthorized,
    /// A request id seen before.
    Replay,
    /// A forward to a key nobody registered.
    UnknownRecipient,
    /// The recipient's queue is full.
    QueueFull,
    /// The connection exceeded its message rate.
    RateLimited,
    /// `limits.max_connections` reached.
    Connections,
    /// A message type we do not speak.
    Unsupported,
    /// Storage failed.
    Storage,
    /// One source address has `limits.max_queued_per_source` messages waiting for the
    /// recipient.
    SourceQuota,
    /// A request body did not arrive within `limits.body_timeout_secs`, or a WebSocket did
    /// not authenticate within `limits.ws_auth_timeout_secs`.
    Timeout,
}

impl Rejection {
    const ALL: [Rejection; 12] = [
        Rejection::Malformed,
        Rejection::TooLarge,
        Rejection::Unauthorized,
        Rejection::Replay,
        Rejection::UnknownRecipient,
        Rejection::QueueFull,
        Rejection::RateLimited,
        Rejection::Connections,
        Rejection::Unsupported,
        Rejection::Storage,
        Rejection::SourceQuota,
        Rejection::Timeout,
    ];

    /// The label value.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Rejection::Malformed => "malformed",
            Rejection::TooLarge => "too_large",
            Rejection::Unauthorized => "unauthorized",
            Rejection::Replay => "replay",
            Rejection::UnknownRecipient => "unknown_recipient",
            Rejection::QueueFull => "queue_full",
            Rejection::RateLimited => "rate_limited",
            Rejection::Connections => "connections",
            Rejection::Unsupported => "unsupported",
            Rejection::Storage => "storage",
            Rejection::SourceQuota => "source_quota",
            Rejection::Timeout => "timeout",
        }
    }
}

/// All series of one mediator instance.
#[derive(Debug, Default)]
pub struct Metrics {
    /// DIDComm messages received (HTTP and WebSocket), before any check.
    pub messages_in: AtomicU64,
    /// Forwarded messages stored durably (duplicates not counted).
    pub messages_stored: AtomicU64,
    /// Messages handed to recipients in `delivery` messages (repeats counted).
    pub messages_delivered: AtomicU64,
    /// Messages removed after `messages-received`.
    pub messages_acked: AtomicU64,
    /// Replies and pushes sent (every DIDComm message the mediator emits).
    pub messages_out: AtomicU64,
    /// Open HTTP connections (including those upgraded to WebSocket).
    pub connections_open: AtomicU64,
    /// Connections accepted since start.
    pub connections_total: AtomicU64,
    /// Open WebSocket sessions.
    pub websockets_open: AtomicU64,
    /// WebSocket sessions in live-delivery mode.
    pub live_sessions: AtomicU64,
    /// Mediation grants issued.
    pub grants: AtomicU64,
    rejections: [AtomicU64; 12],
}

impl Metrics {
    /// Counts one refusal.
    pub fn reject(&self, why: Rejection) {
        let i = Rejection::ALL.iter().position(|r| *r == why).unwrap_or(0);
        if let Some(c) = self.rejections.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Refusals so far for `why`.
    #[must_use]
    pub fn rejections(&self, why: Rejection) -> u64 {
        let i = Rejection::ALL.iter().position(|r| *r == why).unwrap_or(0);
        self.rejections
            .get(i)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Renders every series, with the store totals and configured limits as gauges.
    #[must_use]
    pub fn render(&self, totals: Option<StoreTotals>, limits: &[(&str, u64)]) -> String {
        let mut out = String::with_capacity(4096);
        let counter = |out: &mut String, name: &str, help: &str, v: &AtomicU64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", v.load(Ordering::Relaxed));
        };
        let gauge = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            let _ = writeln!(out, "{name} {v}");
        };
        counter(
            &mut out,
            "mpcdid_mediator_messages_in_total",
            "DIDComm messages received.",
            &self.messages_in,
        );
        counter(
            &mut out,
            "mpcdid_mediator_messages_out_total",
            "DIDComm messages sent (replies and live pushes).",
            &self.messages_out,
        );
        counter(
            &mut out,
            "mpcdid_mediator_messages_stored_total",
            "Forwarded messages stored durably.",
            &self.messages_stored,
        );
        counter(
            &mut out,
            "mpcdid_mediator_messages_delivered_total",
            "Queued messages handed out in delivery messages (repeats counted).",
            &self.messages_delivered,
        );
        counter(
            &mut out,
            "mpcdid_mediator_messages_acked_total",
            "Queued messages removed after messages-received.",
            &self.messages_acked,
        );
        counter(
            &mut out,
            "mpcdid_mediator_connections_total",
            "Connections accepted.",
            &self.connections_total,
        );
        counter(
            &mut out,
            "mpcdid_mediator_grants_total",
            "Mediation grants issued.",
            &self.grants,
        );
        gauge(
            &mut out,
            "mpcdid_mediator_connections_open",
            "Open connections.",
            self.connections_open.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "mpcdid_mediator_websockets_open",
            "Open WebSocket sessions.",
            self.websockets_open.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "mpcdid_mediator_live_sessions",
            "WebSocket sessions in live-delivery mode.",
            self.live_sessions.load(Ordering::Relaxed),
        );
        if let Some(t) = totals {
            gauge(
                &mut out,
                "mpcdid_mediator_queued_messages",
                "Messages waiting in all queues.",
                t.messages,
            );
            gauge(
                &mut out,
                "mpcdid_mediator_queued_bytes",
                "Bytes waiting in all queues.",
                t.bytes,
            );
        }
        let _ = writeln!(
            out,
            "# HELP mpcdid_mediator_rejections_total Refused requests and connections by reason.\n# TYPE mpcdid_mediator_rejections_total counter"
        );
        for (r, c) in Rejection::ALL.iter().zip(&self.rejections) {
            let _ = writeln!(
                out,
                "mpcdid_mediator_rejections_total{{reason=\"{}\"}} {}",
                r.label(),
                c.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP mpcdid_mediator_limit Configured limits.\n# TYPE mpcdid_mediator_limit gauge"
        );
        for (name, v) in limits {
            let _ = writeln!(out, "mpcdid_mediator_limit{{name=\"{name}\"}} {v}");
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.messages_in.fetch_add(3, Ordering::Relaxed);
        m.reject(Rejection::QueueFull);
        let text = m.render(
            Some(StoreTotals {
                messages: 5,
                bytes: 9,
            }),
            &[("max_message_bytes", 1024)],
        );
        assert!(text.contains("mpcdid_mediator_messages_in_total 3\n"));
        assert!(text.contains("mpcdid_mediator_rejections_total{reason=\"queue_full\"} 1\n"));
        assert!(text.contains("mpcdid_mediator_queued_messages 5\n"));
        assert!(text.contains("mpcdid_mediator_limit{name=\"max_message_bytes\"} 1024\n"));
        assert_eq!(m.rejections(Rejection::QueueFull), 1);
        // Every sample line is `name{labels} value` or a comment.
        for line in text.lines() {
            assert!(
                line.starts_with('#') || line.rsplit_once(' ').unwrap().1.parse::<u64>().is_ok()
            );
        }
    }
}
