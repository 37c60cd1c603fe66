//! Keeping paths (spec/session.md §7.4, §7.5): the proposer re-connects a broken path and
//! upgrades from the relay; the acceptor serves relay paths; trickled candidates wake it.

use super::*;

/// A session's view of the peer's candidates (spec/session.md §2: each `candidates`
/// message adds to the previous ones).
#[derive(Debug, Default)]
pub(crate) struct RemoteCandidates {
    list: Mutex<Vec<Candidate>>,
    /// Signalled (one stored permit) when candidates were added.
    added: Notify,
}

impl RemoteCandidates {
    pub(crate) fn new(list: Vec<Candidate>) -> Arc<Self> {
        let r = Arc::new(Self::default());
        // The first list is not news: only later additions wake the upgrade.
        r.insert(list);
        r
    }

    /// Add candidates not known yet and wake the upgrade if any was new.
    pub(crate) fn add(&self, more: Vec<Candidate>) -> bool {
        let added = self.insert(more);
        if added {
            self.added.notify_one();
        }
        added
    }

    /// Add candidates not known yet (at most 64 in all, spec/session.md §2); returns
    /// whether any was new.
    pub(crate) fn insert(&self, more: Vec<Candidate>) -> bool {
        let Ok(mut list) = self.list.lock() else {
            return false;
        };
        let mut added = false;
        for c in more {
            if list.len() < 64
                && !list
                    .iter()
                    .any(|o| o.addr == c.addr && o.kind == c.kind && o.transport == c.transport)
            {
                list.push(c);
                added = true;
            }
        }
        list.sort_by_key(|c| std::cmp::Reverse(c.priority));
        added
    }

    pub(crate) fn snapshot(&self) -> Vec<Candidate> {
        self.list.lock().map(|l| l.clone()).unwrap_or_default()
    }
}
impl Connector {
    /// Switch an established session to a new path now (the proposer's side; the
    /// session resumes without losing a byte). `relay` picks the relay even when a direct
    /// candidate works.
    ///
    /// # Errors
    /// [`ConnectError::NoPath`] when nothing can be reached, or when we are not the side
    /// that owns the path.
    pub async fn reconnect(
        &self,
        est: &Established,
        relay: bool,
    ) -> Result<PathInfo, ConnectError> {
        if !est.proposer {
            return Err(ConnectError::NoPath {
                peer: est.peer.clone(),
                reason: PathError::NotProposer,
            });
        }
        let deadline = tokio::time::Instant::now() + self.inner.config.handshake_timeout;
        let remote = self
            .remote_of(&est.session_id)
            .map_or_else(|| est.remote.clone(), |r| r.snapshot());
        self.connect_path(
            &est.handle,
            &est.peer,
            &remote,
            relay,
            deadline,
            RELAY_HEAD_START,
        )
        .await
    }

    pub(crate) fn remote_of(&self, sid: &str) -> Option<Arc<RemoteCandidates>> {
        self.inner.remotes.lock().ok()?.get(sid).cloned()
    }
}

/// The proposer owns the path (spec/session.md §7.4, §7.5): when it breaks, connect again
/// (direct first, then relay) until the session is over; while it is on the relay, retry
/// direct paths with backoff (`UpgradeConfig`), at once when the peer announces new
/// candidates, and switch when one works (the session resumes without loss, §7).
pub(crate) async fn keep_path(
    connector: Connector,
    handle: SessionHandle,
    peer: String,
    remote: Arc<RemoteCandidates>,
) {
    let cfg = connector.inner.config.upgrade.clone();
    let mut state = handle.watch_state();
    let mut backoff = cfg.first;
    let mut next_try = tokio::time::Instant::now() + backoff;
    // Set when restoring through the relay alone failed: the next attempt tries everything.
    let mut relay_restore_failed = false;
    // Failed restores in a row: the pause before the next grows (with jitter), so that the
    // parties of a restarted relay do not hammer it in step (spec/rendezvous.md §7.3).
    let mut failures = 0u32;
    let restore_backoff = mpc_did_rendezvous::net::Backoff {
        first: Duration::from_millis(200),
        max: Duration::from_secs(3),
    };
    loop {
        if handle.state().is_over() {
            return;
        }
        let on_relay = matches!(handle.path().current, Some(PathInfo::Relayed { .. }));
        let upgrade = cfg.enabled
            && on_relay
            && !connector.inner.config.force_relay
            && remote.snapshot().iter().any(|c| select::rank(c).is_some());
        tokio::select! {
            r = async { state.wait_for(|s| *s == SessionState::NoPath || s.is_over()).await.map(|_| ()) } => {
                if r.is_err() || handle.state().is_over() {
                    return;
                }
                let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
                let cands = remote.snapshot();
                // Direct first, then the relay; only the relay with `force_relay`, and
                // first when the path lost was the relay (spec/session.md §7.4): the direct
                // candidates did not work a moment ago, and checking them again would leave
                // the session without a path for a whole round of checks (up to 6 s). The
                // upgrade below keeps trying them.
                let lost_relay = matches!(handle.path().last, Some(PathInfo::Relayed { .. }));
                let relay_only = connector.inner.config.force_relay
                    || (lost_relay && !relay_restore_failed);
                match connector
                    .connect_path(&handle, &peer, &cands, relay_only, deadline, RELAY_HEAD_START)
                    .await
                {
                    Ok(p) => {
                        relay_restore_failed = false;
                        failures = 0;
                        tracing::info!("secure session path restored: {p}");
                    }
                    Err(e) => {
                        relay_restore_failed = relay_only;
                        failures = failures.saturating_add(1);
                        tracing::warn!("cannot restore the path ({e}); retrying");
                    }
                }
                backoff = cfg.first;
                next_try = tokio::time::Instant::now() + backoff;
                let pause = if failures == 0 {
                    Duration::from_millis(100)
                } else {
                    restore_backoff.delay(failures - 1)
                };
                tokio::time::sleep(pause).await;
            }
            () = tokio::time::sleep_until(next_try), if upgrade => {
                let deadline = tokio::time::Instant::now() + DIRECT_BUDGET;
                match connector.direct_path(&handle, &remote.snapshot(), deadline, None).await {
                    Ok(p) => {
                        tracing::info!("secure session with {peer} upgraded from the relay to {p}");
                        backoff = cfg.first;
                    }
                    Err(e) => {
                        tracing::debug!("no direct path to {peer} yet ({e}); next try in {:?}", backoff * 2);
                        backoff = (backoff * 2).min(cfg.max);
                    }
                }
                next_try = tokio::time::Instant::now() + backoff;
            }
            () = remote.added.notified() => {
                // New candidates: try them now.
                backoff = cfg.first;
                next_try = tokio::time::Instant::now();
            }
        }
    }
}

/// The acceptor's side of relay paths: keep a relay stream to the peer open and hand it to
/// the session when the proposer's hello arrives on it; again after each path change, and
/// on the link's next connection after the relay was lost (spec/rendezvous.md §7.3).
pub(crate) async fn serve_relay_paths(
    link: Arc<RelayLink>,
    handle: SessionHandle,
    peer: PeerAddr,
    url: String,
) {
    let ended = handle.ended();
    tokio::pin!(ended);
    loop {
        if handle.state().is_over() {
            return;
        }
        // Waits while the link re-dials a restarted relay.
        let conn = tokio::select! {
            c = link.connection(Duration::from_secs(3600)) => c,
            _ = &mut ended => return,
        };
        let Some(conn) = conn else { continue };
        let mut stream = match conn.open_stream(peer.clone()) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!("relay stream to {peer:?}: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        drop(conn);
        let expected = path::encode_hello(&handle.path_id());
        let found = tokio::select! {
            f = find_hello(&mut stream, &expected) => f,
            _ = &mut ended => return,
        };
        match found {
            Ok(rest) => {
                let (notify, dropped) = tokio::sync::oneshot::channel();
                let wrapped = DropNotify {
                    inner: stream,
                    prefix: rest,
                    _notify: notify,
                };
                let info = PathInfo::Relayed { relay: url.clone() };
                if handle
                    .attach_path_as(Box::new(wrapped), Some(info))
                    .await
                    .is_err()
                {
                    return;
                }
                // Wait until the session lets go of this stream, then offer a fresh one.
                let _ = dropped.await;
            }
            Err(e) => {
                tracing::debug!("relay stream from {peer:?} ended before a hello: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Read until the exact hello of our session, skipping what comes before it: records the
/// peer sent on its previous relay stream (before it switched away and back) can still be
/// in flight ahead of the new hello on the same relay connection. Returns the bytes read
/// after the hello.
pub(crate) async fn find_hello(
    stream: &mut RelayStream,
    expected: &[u8; path::HELLO_LEN],
) -> std::io::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt as _;
    let mut seen: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        seen.extend_from_slice(buf.get(..n).unwrap_or_default());
        if let Some(at) = seen.windows(path::HELLO_LEN).position(|w| w == expected) {
            return Ok(seen.split_off(at + path::HELLO_LEN));
        }
        // Keep only a possible partial hello at the end.
        let keep = seen.len().saturating_sub(path::HELLO_LEN - 1);
        seen.drain(..keep);
    }
}

/// Discard what a fresh relay stream delivers before we have spoken (bounded: 50 ms of
/// quiet ends it, 1 s at most).
pub(crate) async fn drain_stale(stream: &mut RelayStream) {
    use tokio::io::AsyncReadExt as _;
    let mut buf = vec![0u8; 64 * 1024];
    let mut dropped = 0usize;
    let until = tokio::time::Instant::now() + Duration::from_secs(1);
    while tokio::time::Instant::now() < until {
        match tokio::time::timeout(Duration::from_millis(50), stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => dropped += n,
            _ => break,
        }
    }
    if dropped > 0 {
        tracing::debug!("dropped {dropped} stale bytes from an earlier relay path");
    }
}

/// A stream that tells, by dropping a oneshot sender, when it is dropped.
struct DropNotify {
    inner: RelayStream,
    /// Bytes read past the hello, returned first.
    prefix: Vec<u8>,
    _notify: tokio::sync::oneshot::Sender<()>,
}

impl tokio::io::AsyncRead for DropNotify {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let rest = self.prefix.split_off(n);
            buf.put_slice(&self.prefix);
            self.prefix = rest;
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for DropNotify {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
