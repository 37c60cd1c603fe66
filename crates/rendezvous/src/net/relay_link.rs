//! A relay connection that comes back (spec/rendezvous.md §7.3 "Re-attaching"): when the
//! relay restarts or the network drops, [`RelayLink`] re-dials with exponential backoff and
//! jitter, carries the allow-list over to the new connection, and tells its subscribers
//! once per transition (down, back up).
//!
//! ```text
//!  RelayLink ──current()──▶ Arc<RelayConnection> ──open_stream──▶ RelayStream (a path)
//!      │ supervisor task: closed() ─▶ Down ─▶ sleep(backoff ± jitter) ─▶ dial ─▶ Up
//!      └─ subscribe() ─▶ RelayLinkEvent::{Down, Up}
//! ```
//! Streams of a lost connection fail (never EOF); the session driver resumes on a stream of
//! the next connection (spec/session.md §7). The link does not re-open streams itself.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand_core::RngCore as _;
use tokio::sync::{broadcast, watch};

use super::relay::REPLACED;
use super::{NetError, RelayConnection, RelayIdentity};
use crate::relay::{PeerAddr, MAX_ALLOW_PEERS};

/// How to reach a relay over WebSocket and who to be there: what a [`RelayLink`] re-dials.
#[derive(Clone, Debug)]
pub struct RelayDial {
    /// `ws://host:port/relay` or `wss://…`.
    pub url: String,
    /// Our DID and the key that answers the relay's challenge.
    pub identity: RelayIdentity,
    /// The relay's DID; a relay with another identity is refused.
    pub expected_relay: Option<String>,
    /// Extra trusted roots (DER) for a `wss://` relay behind a private CA.
    pub extra_roots: Vec<Vec<u8>>,
}

/// Re-dial schedule: the n-th wait is `min(first · 2ⁿ, max)` scaled by a random factor in
/// [0.5, 1.5), so that every client of a restarted relay does not come back at once.
#[derive(Clone, Debug)]
pub struct Backoff {
    /// The first wait (before jitter).
    pub first: Duration,
    /// The longest wait (before jitter).
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            first: Duration::from_millis(250),
            max: Duration::from_secs(4),
        }
    }
}

impl Backoff {
    /// The wait before attempt `n` (0-based), jitter included.
    #[must_use]
    pub fn delay(&self, n: u32) -> Duration {
        let base = self
            .first
            .saturating_mul(1u32.checked_shl(n.min(16)).unwrap_or(u32::MAX))
            .min(self.max);
        jitter(base)
    }
}

/// `d` scaled by a random factor in [0.5, 1.5).
#[must_use]
pub fn jitter(d: Duration) -> Duration {
    let r = f64::from(rand_core::OsRng.next_u32()) / (f64::from(u32::MAX) + 1.0);
    d.mul_f64(0.5 + r)
}

/// A transition of a [`RelayLink`], sent once per change.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RelayLinkEvent {
    /// The connection was lost; the link is re-dialling.
    Down {
        /// The relay URL.
        url: String,
        /// Why the connection ended.
        why: String,
    },
    /// A new connection is up after a loss.
    Up {
        /// The relay URL.
        url: String,
        /// How long the link was down.
        after: Duration,
        /// Dial attempts it took.
        attempts: u32,
    },
}

struct LinkShared {
    dial: RelayDial,
    /// Allow-list mode (spec/rendezvous.md §4.4) on every connection of the link.
    restricted: bool,
    /// Peers allowed through the link, also while it is down.
    allow: Mutex<Vec<PeerAddr>>,
    current: watch::Sender<Option<Arc<RelayConnection>>>,
    events: broadcast::Sender<RelayLinkEvent>,
    backoff: Backoff,
    /// Bumped by every [`RelayLink::connection`] call that finds the link down: a link
    /// whose connection was replaced re-dials only when asked (see `supervise`).
    wanted: watch::Sender<u64>,
}

/// A relay connection that re-dials after a loss (see the module docs). Dropping it stops
/// re-dialling; connections already handed out stay usable until dropped.
pub struct RelayLink {
    shared: Arc<LinkShared>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for RelayLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayLink")
            .field("url", &self.shared.dial.url)
            .field("up", &self.is_up())
            .finish_non_exhaustive()
    }
}

impl Drop for RelayLink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RelayLink {
    /// Dials the relay once (an error here is reported, not retried: the relay was never
    /// reachable), then keeps a connection up for as long as the link lives. With
    /// `restricted`, every connection runs in allow-list mode with the peers named so far.
    ///
    /// # Errors
    /// As [`RelayConnection::connect_ws`].
    pub async fn connect(
        dial: RelayDial,
        restricted: bool,
        backoff: Backoff,
    ) -> Result<Self, NetError> {
        let first = dial_once(&dial, restricted.then(Vec::new)).await?;
        let (current, _) = watch::channel(Some(Arc::new(first)));
        let (events, _) = broadcast::channel(16);
        let shared = Arc::new(LinkShared {
            dial,
            restricted,
            allow: Mutex::new(Vec::new()),
            current,
            events,
            backoff,
            wanted: watch::channel(0).0,
        });
        let task = tokio::spawn(supervise(Arc::clone(&shared)));
        Ok(Self { shared, task })
    }

    /// The relay URL.
    #[must_use]
    pub fn url(&self) -> &str {
        &self.shared.dial.url
    }

    /// The open connection, if the link is up now.
    #[must_use]
    pub fn current(&self) -> Option<Arc<RelayConnection>> {
        self.shared
            .current
            .borrow()
            .as_ref()
            .filter(|c| c.is_open())
            .cloned()
    }

    /// Whether a connection is open now.
    #[must_use]
    pub fn is_up(&self) -> bool {
        self.current().is_some()
    }

    /// The open connection, waiting up to `wait` for the link to come back.
    pub async fn connection(&self, wait: Duration) -> Option<Arc<RelayConnection>> {
        let mut rx = self.shared.current.subscribe();
        if rx.borrow().as_ref().is_none_or(|c| !c.is_open()) {
            self.shared.wanted.send_modify(|n| *n = n.wrapping_add(1));
        }
        let found = tokio::time::timeout(wait, async {
            loop {
                if let Some(c) = rx.borrow_and_update().as_ref().filter(|c| c.is_open()) {
                    return Some(Arc::clone(c));
                }
                if rx.changed().await.is_err() {
                    return None;
                }
            }
        })
        .await;
        found.ok().flatten()
    }

    /// Lets `peer` reach us through this link, on the connection open now and on every
    /// later one (allow-list mode; a no-op otherwise).
    pub fn allow_peer(&self, peer: &PeerAddr) {
        if !self.shared.restricted {
            return;
        }
        if let Ok(mut l) = self.shared.allow.lock() {
            if !l.contains(peer) {
                if l.len() >= MAX_ALLOW_PEERS {
                    l.remove(0);
                }
                l.push(peer.clone());
            }
        }
        if let Some(c) = self.current() {
            c.allow_peer(peer);
        }
    }

    /// Transitions from now on.
    #[must_use]
    pub fn subscribe(&self) -> broadcast::Receiver<RelayLinkEvent> {
        self.shared.events.subscribe()
    }
}

async fn dial_once(
    dial: &RelayDial,
    allow: Option<Vec<PeerAddr>>,
) -> Result<RelayConnection, NetError> {
    RelayConnection::connect_ws_allowing(
        &dial.url,
        dial.identity.clone(),
        dial.expected_relay.clone(),
        &dial.extra_roots,
        allow,
    )
    .await
}

/// Waits for the current connection to close, then re-dials until one is up; forever.
async fn supervise(shared: Arc<LinkShared>) {
    loop {
        let Some(conn) = shared.current.borrow().clone() else {
            return;
        };
        conn.closed().await;
        let why = conn.close_reason().unwrap_or("relay connection lost");
        // What this connection let through goes over to the next one.
        let mut allow = conn.allowed_peers().unwrap_or_default();
        drop(conn);
        let mut wanted = shared.wanted.subscribe();
        wanted.borrow_and_update();
        shared.current.send_replace(None);
        if why == REPLACED {
            // Another connection with our identity took our slot at this relay (the same
            // relay reached under two URLs: our home and a peer's). Re-dialling at once
            // would take the slot back and break that connection's streams, and both links
            // would keep replacing each other: come back only when someone needs us.
            tracing::info!(url = %shared.dial.url, "relay connection replaced by another of ours; re-connecting when needed");
            if wanted.changed().await.is_err() {
                return;
            }
        }
        let down_at = tokio::time::Instant::now();
        // A replaced connection is no outage: no Down, and no Up for the re-dial.
        let announce = why != REPLACED;
        if announce {
            tracing::warn!(url = %shared.dial.url, "relay connection lost ({why}); re-connecting");
            let _ = shared.events.send(RelayLinkEvent::Down {
                url: shared.dial.url.clone(),
                why: why.to_owned(),
            });
        }
        let mut attempts = 0u32;
        let next = loop {
            tokio::time::sleep(shared.backoff.delay(attempts)).await;
            attempts += 1;
            let list = shared.restricted.then(|| {
                if let Ok(extra) = shared.allow.lock() {
                    for p in extra.iter() {
                        if !allow.contains(p) {
                            allow.push(p.clone());
                        }
                    }
                }
                allow.clone()
            });
            match dial_once(&shared.dial, list).await {
                Ok(c) => break c,
                Err(e) => {
                    tracing::debug!(url = %shared.dial.url, attempt = attempts, "relay re-dial failed: {e}");
                }
            }
        };
        let after = down_at.elapsed();
        tracing::info!(url = %shared.dial.url, "relay connection back after {:.1} s ({attempts} attempts)", after.as_secs_f64());
        shared.current.send_replace(Some(Arc::new(next)));
        if announce {
            let _ = shared.events.send(RelayLinkEvent::Up {
                url: shared.dial.url.clone(),
                after,
                attempts,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter_in_range() {
        let b = Backoff {
            first: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        for n in 0..40 {
            let base = Duration::from_millis(100 * (1u64 << n.min(10))).min(Duration::from_secs(1));
            let d = b.delay(n);
            assert!(
                d >= base / 2 && d < base * 3 / 2,
                "attempt {n}: {d:?} vs {base:?}"
            );
        }
        // Jitter: not every client waits the same.
        let spread: std::collections::HashSet<_> = (0..20).map(|_| b.delay(3)).collect();
        assert!(spread.len() > 1);
    }
}
