//! The direct-path TCP listener (spec/session.md §7.3): anyone who can reach it may
//! connect, so what a connection may hold before it names a session is bounded.
//!
//! ```text
//!  accept ─▶ per-source slot? ─▶ global slot? (else evict the oldest connection still
//!           │ no: close           │ without a hello; none: close)
//!           ▼
//!  path hello within `hello_timeout` ─no─▶ close
//!           ▼ yes
//!  PathRouter::route_as (waits ≤ REGISTER_WAIT for the session) ─▶ session owns the path,
//!                                                                   slot released
//! ```
//! An idle connection costs a descriptor until its hello deadline; a host can hold at
//! most `max_per_source` of them, and all hosts together `max_pending`, so descriptors
//! are never exhausted by connections that say nothing, and an honest opener (who sends
//! its hello at once) finds room because the oldest silent connection makes way for it.

use std::collections::BTreeMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use mpc_did_driver::path::HELLO_LEN;
use mpc_did_driver::{PathInfo, PathRouter};
use mpc_did_rendezvous::source::{SourceAddr, SourceCounts};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
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
    /// Connections closed at once: every slot held a connection that had sent its hello.
    pub refused_full: u64,
    /// Silent connections closed to make room for a new one.
    pub evicted: u64,
    /// Connections closed for sending no hello in time.
    pub hello_timeouts: u64,
    /// Connections holding a slot now.
    pub pending: u64,
}

struct Slot {
    source: SourceAddr,
    hello_seen: bool,
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

    /// A slot for a connection from `ip`, evicting the oldest silent connection when all
    /// are taken.
    fn admit(
        &mut self,
        ip: IpAddr,
        limits: &ListenerLimits,
    ) -> Option<(u64, oneshot::Receiver<()>)> {
        let source = SourceAddr::of(ip);
        if self.per_source.count(source) >= limits.max_per_source {
            self.stats.refused_per_source += 1;
            return None;
        }
        if self.slots.len() >= limits.max_pending {
            let silent = self
                .slots
                .iter()
                .find(|(_, s)| !s.hello_seen)
                .map(|(id, _)| *id);
            match silent {
                Some(old) => {
                    self.remove(old);
                    self.stats.evicted += 1;
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
                hello_seen: false,
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

/// Releases a connection's slot when its task ends, however it ends.
struct Release {
    table: Arc<Mutex<Table>>,
    id: u64,
}

impl Drop for Release {
    fn drop(&mut self) {
        if let Ok(mut t) = self.table.lock() {
            t.remove(self.id);
        }
    }
}

impl PathListener {
    pub(crate) fn stats(&self) -> ListenerStats {
        self.table
            .lock()
            .map(|t| t.stats.clone())
            .unwrap_or_default()
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
            let admitted = self
                .table
                .lock()
                .ok()
                .and_then(|mut t| t.admit(from.ip(), &limits));
            let Some((id, cancel)) = admitted else {
                tracing::debug!(%from, "path listener: at its limit; connection closed");
                drop(tcp);
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let release = Release {
                table: self.table.clone(),
                id,
            };
            let router = router.clone();
            let hello_timeout = limits.hello_timeout;
            tokio::spawn(async move {
                let _release = release;
                let mut tcp = tcp;
                let mut hello = [0u8; HELLO_LEN];
                let got = tokio::select! {
                    // Evicted (or the listener's table went away): close.
                    _ = cancel => return,
                    r = tokio::time::timeout(hello_timeout, tcp.read_exact(&mut hello)) => r,
                };
                match got {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::debug!(%from, "incoming path closed before its hello: {e}");
                        return;
                    }
                    Err(_) => {
                        if let Ok(mut t) = _release.table.lock() {
                            t.stats.hello_timeouts += 1;
                        }
                        tracing::debug!(%from, "incoming path sent no hello in {hello_timeout:?}; closed");
                        return;
                    }
                }
                if let Ok(mut t) = _release.table.lock() {
                    if let Some(s) = t.slots.get_mut(&_release.id) {
                        s.hello_seen = true;
                    }
                }
                let path = Prefixed {
                    prefix: hello,
                    pos: 0,
                    inner: tcp,
                };
                let info = PathInfo::Direct { remote: None };
                if let Err(e) = router.route_as(Box::new(path), Some(info)).await {
                    tracing::debug!(%from, "incoming path refused: {e}");
                }
            });
        }
    }
}

/// A TCP stream whose first bytes (the hello, already read to check it arrived in time)
/// are given back to the router, which reads the hello itself.
struct Prefixed {
    prefix: [u8; HELLO_LEN],
    pos: usize,
    inner: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(rest) = self.prefix.get(self.pos..) {
            if !rest.is_empty() {
                let n = rest.len().min(buf.remaining());
                buf.put_slice(rest.get(..n).unwrap_or_default());
                self.pos += n;
                return Poll::Ready(Ok(()));
            }
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
