//! Path transitions for the user (spec/session.md §7.4): a session whose path went down, and
//! came back; a relay connection lost, and back. Each transition is sent once, so a CLI can
//! print one line per change instead of staying silent until a timeout.

use mpc_did_driver::{PathInfo, SessionHandle, SessionState};
use mpc_did_rendezvous::net::RelayLinkEvent;
use tokio::sync::broadcast;

/// One transition ([`crate::Connector::path_events`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PathEvent {
    /// The secure session with `peer` lost its path (it was carrying records); the proposer
    /// is re-connecting, the acceptor waits for it (§7.4).
    PathDown {
        /// The peer's DID.
        peer: String,
        /// The path that was lost.
        last: Option<PathInfo>,
    },
    /// The session with `peer` carries records again, on `path`.
    PathBack {
        /// The peer's DID.
        peer: String,
        /// The path it is on now.
        path: Option<PathInfo>,
        /// How long it was without a path.
        after: std::time::Duration,
    },
    /// The connection to the relay at `url` was lost; it is re-dialled with backoff.
    RelayDown {
        /// The relay URL.
        url: String,
        /// Why the connection ended.
        why: String,
    },
    /// The relay connection is back.
    RelayBack {
        /// The relay URL.
        url: String,
        /// How long it was down.
        after: std::time::Duration,
    },
}

impl std::fmt::Display for PathEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::PathDown {
                peer,
                last: Some(p),
            } => {
                write!(f, "path to {peer} is down ({p}); re-connecting")
            }
            Self::PathDown { peer, last: None } => {
                write!(f, "path to {peer} is down; re-connecting")
            }
            Self::PathBack {
                peer,
                path: Some(p),
                after,
            } => write!(
                f,
                "path to {peer} is back after {:.1} s: {p}",
                after.as_secs_f64()
            ),
            Self::PathBack {
                peer,
                path: None,
                after,
            } => write!(
                f,
                "path to {peer} is back after {:.1} s",
                after.as_secs_f64()
            ),
            Self::RelayDown { url, why } => {
                write!(f, "relay {url} is unreachable ({why}); re-connecting")
            }
            Self::RelayBack { url, after } => write!(
                f,
                "relay {url} is reachable again after {:.1} s",
                after.as_secs_f64()
            ),
        }
    }
}

/// Turns a relay link's transitions into [`PathEvent`]s until the link or the connector goes.
pub(crate) async fn forward_relay_events(
    mut rx: broadcast::Receiver<RelayLinkEvent>,
    tx: broadcast::Sender<PathEvent>,
) {
    loop {
        let ev = match rx.recv().await {
            Ok(RelayLinkEvent::Down { url, why }) => PathEvent::RelayDown { url, why },
            Ok(RelayLinkEvent::Up { url, after, .. }) => PathEvent::RelayBack { url, after },
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return,
        };
        // No receiver now is fine: someone may subscribe later.
        let _ = tx.send(ev);
    }
}

/// Follows one session: `PathDown` when a connected session loses its path, `PathBack` when
/// it carries records again; nothing for the short `Connecting` states of a switch.
pub(crate) async fn watch_session(
    handle: SessionHandle,
    peer: String,
    tx: broadcast::Sender<PathEvent>,
) {
    let mut state = handle.watch_state();
    let mut down_since: Option<tokio::time::Instant> = None;
    loop {
        let s = state.borrow_and_update().clone();
        match s {
            SessionState::NoPath if down_since.is_none() => {
                down_since = Some(tokio::time::Instant::now());
                let _ = tx.send(PathEvent::PathDown {
                    peer: peer.clone(),
                    last: handle.path().last,
                });
            }
            SessionState::Connected => {
                if let Some(t) = down_since.take() {
                    let _ = tx.send(PathEvent::PathBack {
                        peer: peer.clone(),
                        path: handle.path().current,
                        after: t.elapsed(),
                    });
                }
            }
            s if s.is_over() => return,
            _ => {}
        }
        if state.changed().await.is_err() {
            return;
        }
    }
}
