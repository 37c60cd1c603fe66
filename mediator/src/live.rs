//! Live delivery (Pickup 3.0 live mode): which WebSocket sessions wait for which DID.
//!
//! One dispatcher task turns the store's arrival notices (local, or from every instance
//! through Redis pub/sub) into wake-ups of the matching sessions only. A wake-up is a
//! [`Notify`] permit: arrivals coalesce, and one that comes while the session is busy is
//! kept, so a session always rescans after the last arrival. The store stays the source
//! of truth; a session pushes what the store holds and it has not pushed yet.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{broadcast, Notify};
use tokio_util::sync::CancellationToken;

use crate::store::{Arrival, ARRIVAL_ALL};

type Sessions = HashMap<String, Vec<(u64, Arc<Notify>)>>;

/// Registry of live sessions by mediated DID.
#[derive(Default)]
pub struct LiveHub {
    subs: Mutex<Sessions>,
    next: AtomicU64,
}

/// One live session's registration; unregisters on drop.
pub struct LiveSub {
    hub: Arc<LiveHub>,
    did: String,
    id: u64,
    /// Woken on every arrival for `did`.
    pub notify: Arc<Notify>,
}

impl Drop for LiveSub {
    fn drop(&mut self) {
        if let Ok(mut subs) = self.hub.subs.lock() {
            if let Some(v) = subs.get_mut(&self.did) {
                v.retain(|(id, _)| *id != self.id);
                if v.is_empty() {
                    subs.remove(&self.did);
                }
            }
        }
    }
}

impl LiveHub {
    /// Registers a live session for `did`. The returned notify already holds a permit, so
    /// the first wait returns at once and the session pushes what was queued before.
    pub fn register(self: &Arc<Self>, did: &str) -> LiveSub {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let notify = Arc::new(Notify::new());
        notify.notify_one();
        if let Ok(mut subs) = self.subs.lock() {
            subs.entry(did.to_owned())
                .or_default()
                .push((id, notify.clone()));
        }
        LiveSub {
            hub: self.clone(),
            did: did.to_owned(),
            id,
            notify,
        }
    }

    /// Wakes the sessions of `did` (or all, for [`ARRIVAL_ALL`]).
    pub fn wake(&self, did: &str) {
        let Ok(subs) = self.subs.lock() else { return };
        if did == ARRIVAL_ALL {
            for v in subs.values() {
                for (_, n) in v {
                    n.notify_one();
                }
            }
        } else if let Some(v) = subs.get(did) {
            for (_, n) in v {
                n.notify_one();
            }
        }
    }

    /// Number of registered live sessions.
    pub fn sessions(&self) -> usize {
        self.subs
            .lock()
            .map_or(0, |s| s.values().map(Vec::len).sum())
    }

    /// Runs until `stop`: feeds arrival notices to [`Self::wake`]; on lag wakes everyone.
    pub async fn dispatch(
        self: Arc<Self>,
        mut arrivals: broadcast::Receiver<Arrival>,
        stop: CancellationToken,
    ) {
        loop {
            let next = tokio::select! {
                () = stop.cancelled() => return,
                n = arrivals.recv() => n,
            };
            match next {
                Ok(did) => self.wake(&did),
                Err(broadcast::error::RecvError::Lagged(_)) => self.wake(ARRIVAL_ALL),
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn wakes_only_matching_sessions_and_keeps_permits() {
        let hub = Arc::new(LiveHub::default());
        let a = hub.register("did:ex:a");
        let b = hub.register("did:ex:b");
        // The initial permit: queued messages are pushed when live mode starts.
        tokio::time::timeout(Duration::from_secs(1), a.notify.notified())
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(1), b.notify.notified())
            .await
            .unwrap();
        hub.wake("did:ex:a");
        tokio::time::timeout(Duration::from_secs(1), a.notify.notified())
            .await
            .unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(50), b.notify.notified())
                .await
                .is_err()
        );
        hub.wake(ARRIVAL_ALL);
        tokio::time::timeout(Duration::from_secs(1), b.notify.notified())
            .await
            .unwrap();
        assert_eq!(hub.sessions(), 2);
        drop(a);
        assert_eq!(hub.sessions(), 1);
    }
}
