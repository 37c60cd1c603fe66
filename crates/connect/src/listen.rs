//! The direct-path TCP listener (spec/session.md §7.3): anyone who can reach it may
//! connect, so what a connection may hold before it names a live session is bounded. The
//! same slots, with limits of their own, bound the QUIC endpoint's incoming connections
//! (`crate::quic`, spec/rendezvous.md §6.1 "Accepting").
//!
//! ```text
//!  accept ─▶ per-source slot? ─▶ global slot? (else evict the oldest connection still
//!           │ no: close           │ silent, then the oldest whose hello names no
//!           ▼                     │ registered session; none: close)
//!  path hello within `hello_timeout` ─no─▶ close      (stage: silent)
//!           ▼ yes, well-formed (else close)
//!  session registered? ─no─▶ wait ≤ REGISTER_WAIT, still evictable (stage: waiting)
//!           ▼ yes
//!  protected (stage: named) ─▶ the session owns the path, slot released
//! ```
//! An idle connection costs a descriptor until its hello deadline; a host can hold at
//! most `max_per_source` of them, and all hosts together `max_pending`, so descriptors
//! are never exhausted by connections that say nothing, and an honest opener (who sends
//! its hello at once) finds room because the oldest unprotected connection makes way for
//! it. A well-formed hello is no protection by itself (anyone can write `MDP1`, four zero
//! bytes and 16 random ones): only a hello naming a registered session is.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mpc_did_driver::path::{decode_hello, PathId, HELLO_LEN, REGISTER_WAIT};
use mpc_did_driver::{PathInfo, PathRouter, SessionHandle};
use mpc_did_rendezvous::source::{SourceAddr, SourceCounts};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// Limits of the direct-path listener.
#[derive(Debug, Clone)]
pub struct ListenerLimits {
    /// Incoming connections not yet handed to a session, from all sources together.
    pub max_pending: usize,
    /// Of those, from one IPv4 address or IPv6 /64.
    pub max_per_source: usize,
    /// An incoming connection must send its path hello within this time.
    pub hello_timeout: Duration,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        Self {
            // A quarter of the usual 1,024 descriptors of a process; a party has one path
            // per peer, dialled once per candidate and (re)connection.
            max_pending: 256,
            // Room for many parties (or one MPC run in one process) behind one address.
            max_per_source: 32,
            // An opener writes the hello right after connecting; seconds are generous.
            hello_timeout: Duration::from_secs(3),
        }
    }
}

/// Counters of the listener.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ListenerStats {
    /// Connections accepted and given a slot.
    pub accepted: u64,
    /// Connections closed at once: their source was at its limit.
    pub refused_per_source: u64,
    /// Connections closed at once: every slot held a connection whose hello named a
    /// registered session.
    pub refused_full: u64,
    /// Connections closed to make room for a new one: silent ones, or ones whose hello
    /// named no registered session.
    pub evicted: u64,
    /// Connections closed for sending no hello in time.
    pub hello_timeouts: u64,
    /// Connections closed for a malformed hello.
    pub bad_hellos: u64,
    /// Connections closed because their hello named no session registered in time.
    pub unknown_sessions: u64,
    /// Connections holding a slot now.
    pub pending: u64,
}

/// How far a connection got; eviction takes the lowest stage first, oldest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Stage {
    /// No complete hello yet.
    Silent,
    /// A well-formed hello naming no registered session (yet): waiting for it.
    Waiting,
    /// Its hello names a registered session: never evicted.
    Named,
}

struct Slot {
    source: SourceAddr,
    stage: Stage,
    /// Dropping it tells the connection's task to close.
    _cancel: oneshot::Sender<()>,
}

#[derive(Default)]
struct Table {
    next: u64,
    slots: BTreeMap<u64, Slot>,
    per_source: SourceCounts,
    stats: ListenerStats,
}

impl Table {
    fn remove(&mut self, id: u64) -> bool {
        let Some(slot) = self.slots.remove(&id) else {
            return false;
        };
        self.per_source.remove(slot.source);
        self.stats.pending = self.slots.len() as u64;
        true
    }

    /// A slot for a connection from `ip`, evicting the oldest silent connection (else the
    /// oldest one waiting for an unregistered session) when all are taken.
    fn admit(
        &mut self,
        ip: IpAddr,
        limits: &ListenerLimits,
        what: &str,
    ) -> Option<(u64, oneshot::Receiver<()>)> {
        let source = SourceAddr::of(ip);
        if self.per_source.count(source) >= limits.max_per_source {
            self.stats.refused_per_source += 1;
            return None;
        }
        if self.slots.len() >= limits.max_pending {
            let victim = [Stage::Silent, Stage::Waiting]
                .into_iter()
                .find_map(|stage| {
                    self.slots
                        .iter()
                        .find(|(_, s)| s.stage == stage)
                        .map(|(id, s)| (*id, s.source, stage))
                });
            match victim {
                Some((old, from, stage)) => {
                    self.remove(old);
                    self.stats.evicted += 1;
                    tracing::debug!(
                        %from,
                        ?stage,
                        "{what}: full; closed the oldest connection without a live session"
                    );
                }
                None => {
                    self.stats.refused_full += 1;
                    return None;
                }
            }
        }
        let (tx, rx) = oneshot::channel();
        self.next += 1;
        let id = self.next;
        self.slots.insert(
            id,
            Slot {
                source,
                stage: Stage::Silent,
                _cancel: tx,
            },
        );
        self.per_source.add(source);
        self.stats.accepted += 1;
        self.stats.pending = self.slots.len() as u64;
        Some((id, rx))
    }
}

/// The listener's shared state (stats for tests and listings).
#[derive(Clone, Default)]
pub(crate) struct PathListener {
    table: Arc<Mutex<Table>>,
}

/// A connection's slot: released when dropped, however its task ends; its `cancel`
/// resolves when the slot is evicted.
pub(crate) struct Admitted {
    table: Arc<Mutex<Table>>,
    id: u64,
    pub(crate) cancel: oneshot::Receiver<()>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Ok(mut t) = self.table.lock() {
            t.remove(self.id);
        }
    }
}

impl Admitted {
    /// Move the connection to `stage` (what eviction looks at).
    pub(crate) fn stage(&self, stage: Stage) {
        if let Ok(mut t) = self.table.lock() {
            if let Some(s) = t.slots.get_mut(&self.id) {
                s.stage = stage;
            }
        }
    }

    /// Count something in the listener's stats.
    pub(crate) fn count(&self, f: impl FnOnce(&mut ListenerStats)) {
        if let Ok(mut t) = self.table.lock() {
            f(&mut t.stats);
        }
    }

    /// After a complete hello: the session it names, waiting (evictable) up to
    /// [`REGISTER_WAIT`] for one not registered yet; the slot is protected once it is
    /// known. `None` (counted, logged) for a malformed hello, an unknown session, or an
    /// eviction.
    pub(crate) async fn session_of(
        &mut self,
        hello: &[u8; HELLO_LEN],
        router: &PathRouter,
        from: std::net::SocketAddr,
    ) -> Option<SessionHandle> {
        let id: PathId = match decode_hello(hello) {
            Ok(id) => id,
            Err(e) => {
                self.count(|s| s.bad_hellos += 1);
                tracing::debug!(%from, "incoming path closed: {e}");
                return None;
            }
        };
        let handle = match router.session(&id) {
            Some(h) => h,
            None => {
                self.stage(Stage::Waiting);
                let found = tokio::select! {
                    _ = &mut self.cancel => return None,
                    r = router.wait_session(&id, REGISTER_WAIT) => r,
                };
                match found {
                    Ok(h) => h,
                    Err(e) => {
                        self.count(|s| s.unknown_sessions += 1);
                        tracing::debug!(%from, "incoming path closed: {e}");
                        return None;
                    }
                }
            }
        };
        self.stage(Stage::Named);
        Some(handle)
    }
}

impl PathListener {
    pub(crate) fn stats(&self) -> ListenerStats {
        self.table
            .lock()
            .map(|t| t.stats.clone())
            .unwrap_or_default()
    }

    /// A slot for a new connection from `ip` (`what` names the listener in log lines), or
    /// `None` (counted) when its source or the listener is at its limit.
    pub(crate) fn admit(
        &self,
        ip: IpAddr,
        limits: &ListenerLimits,
        what: &str,
    ) -> Option<Admitted> {
        let (id, cancel) = self.table.lock().ok()?.admit(ip, limits, what)?;
        Some(Admitted {
            table: self.table.clone(),
            id,
            cancel,
        })
    }

    /// Accept connections forever; each gets a slot, must say hello in time, and is then
    /// routed to its session.
    pub(crate) async fn serve(
        self,
        listener: TcpListener,
        router: PathRouter,
        limits: ListenerLimits,
    ) {
        loop {
            let (tcp, from) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!("path listener: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Some(mut slot) = self.admit(from.ip(), &limits, "path listener") else {
                tracing::debug!(%from, "path listener: at its limit; connection closed");
                drop(tcp);
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let router = router.clone();
            let hello_timeout = limits.hello_timeout;
            tokio::spawn(async move {
                let mut tcp = tcp;
                let mut hello = [0u8; HELLO_LEN];
                let got = tokio::select! {
                    // Evicted (or the listener's table went away): close.
                    _ = &mut slot.cancel => return,
                    r = tokio::time::timeout(hello_timeout, tcp.read_exact(&mut hello)) => r,
                };
                match got {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::debug!(%from, "incoming path closed before its hello: {e}");
                        return;
                    }
                    Err(_) => {
                        slot.count(|s| s.hello_timeouts += 1);
                        tracing::debug!(%from, "incoming path sent no hello in {hello_timeout:?}; closed");
                        return;
                    }
                }
                let Some(handle) = slot.session_of(&hello, &router, from).await else {
                    return;
                };
                let info = PathInfo::Direct { remote: None };
                if let Err(e) = handle.attach_path_as(Box::new(tcp), Some(info)).await {
                    tracing::debug!(%from, "incoming path refused: {e}");
                }
            });
        }
    }
}
