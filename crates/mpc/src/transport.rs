//! The proxy's [`Transport`] over a party's secure sessions, one per peer.
//!
//! It lives here, not in the driver or the proxy, because it is what joins them: the
//! driver knows nothing of MPyC party ids, the proxy nothing of sessions.

use std::collections::BTreeMap;
use std::io;

use mpc_did_driver::{SessionHandle, SessionState, SessionStream, CLOSE_PARTY_FAILED};
use mpc_did_proxy::{PartyId, PeerFailure, Transport};
use tokio::sync::{mpsc, Mutex};

/// How long closing one session may take (see [`PartyTransport::close_all`]).
pub(crate) const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// A party's sessions with all its peers, as the proxy's stream source.
#[derive(Debug)]
pub struct PartyTransport {
    me: PartyId,
    sessions: BTreeMap<PartyId, SessionHandle>,
    incoming: Mutex<mpsc::Receiver<(PartyId, SessionStream)>>,
}

impl PartyTransport {
    /// `sessions` maps every peer's party id to the session with it (bound to that peer's
    /// DID and the roster: that is what makes the id "authenticated").
    #[must_use]
    pub fn new(me: PartyId, sessions: BTreeMap<PartyId, SessionHandle>) -> Self {
        let (tx, rx) = mpsc::channel(16);
        for (&peer, handle) in sessions.iter().filter(|(&p, _)| p < me) {
            let (handle, tx) = (handle.clone(), tx.clone());
            tokio::spawn(async move {
                while let Some(stream) = handle.accept_stream().await {
                    if tx.send((peer, stream)).await.is_err() {
                        break;
                    }
                }
            });
        }
        Self {
            me,
            sessions,
            incoming: Mutex::new(rx),
        }
    }

    /// Close every session (code 0 after a successful run), all at once. A session's close
    /// normally takes at most the driver's 1 s flush (spec/session.md §9); one that takes
    /// longer than `CLOSE_TIMEOUT` (3 s) is left with a warning instead of holding up the run's end.
    pub async fn close_all(&self, code: u16, reason: &str) {
        let mut closes = tokio::task::JoinSet::new();
        for (&peer, s) in &self.sessions {
            let (s, reason) = (s.clone(), reason.to_owned());
            closes.spawn(async move {
                if tokio::time::timeout(CLOSE_TIMEOUT, s.close(code, &reason))
                    .await
                    .is_err()
                {
                    tracing::warn!(
                        party = peer,
                        "the secure session did not close within {} s (state {:?}); leaving it",
                        CLOSE_TIMEOUT.as_secs(),
                        s.state()
                    );
                }
            });
        }
        while closes.join_next().await.is_some() {}
    }

    /// The sessions, by peer.
    #[must_use]
    pub fn sessions(&self) -> &BTreeMap<PartyId, SessionHandle> {
        &self.sessions
    }
}

impl Transport for PartyTransport {
    type Stream = SessionStream;

    async fn open(&self, peer: PartyId) -> io::Result<SessionStream> {
        let s = self.sessions.get(&peer).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no session with party {peer}"),
            )
        })?;
        s.open_stream().await
    }

    async fn accept(&self) -> io::Result<(PartyId, SessionStream)> {
        self.incoming.lock().await.recv().await.ok_or_else(|| {
            io::Error::new(io::ErrorKind::ConnectionAborted, "all peer sessions ended")
        })
    }

    async fn peer_failure(&self) -> PeerFailure {
        let waits = self.sessions.iter().map(|(&peer, s)| {
            let s = s.clone();
            Box::pin(async move {
                let state = s.ended().await;
                if state.is_error() {
                    let reason = match state {
                        SessionState::Closed {
                            reason,
                            by_peer: true,
                            ..
                        } => reason,
                        SessionState::Closed { reason, .. } => format!("closed: {reason}"),
                        SessionState::Failed(why) => format!("session lost: {why}"),
                        other => format!("{other:?}"),
                    };
                    PeerFailure { peer, reason }
                } else {
                    std::future::pending().await
                }
            })
        });
        let waits: Vec<_> = waits.collect();
        if waits.is_empty() {
            return std::future::pending().await;
        }
        futures_select_all(waits).await
    }

    async fn report_failure(&self, reason: &str) {
        tracing::info!(party = self.me, "telling peers: {reason}");
        self.close_all(CLOSE_PARTY_FAILED, reason).await;
    }
}

/// The first of several futures to finish (a tiny `select_all` without `futures`).
async fn futures_select_all<F: std::future::Future + Unpin>(mut futs: Vec<F>) -> F::Output {
    std::future::poll_fn(|cx| {
        for f in &mut futs {
            if let std::task::Poll::Ready(v) = std::pin::Pin::new(f).poll(cx) {
                return std::task::Poll::Ready(v);
            }
        }
        std::task::Poll::Pending
    })
    .await
}
