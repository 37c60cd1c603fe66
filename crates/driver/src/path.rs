//! Paths: any reliable ordered byte stream (TCP, a QUIC stream, a relay stream) that starts
//! with a 24-byte path hello naming the session, then carries the session's records.
//!
//! ```text
//! path hello = "MDP1" || 4 zero bytes (reserved) || path id (16 bytes)
//! path id    = first 16 bytes of SHA-256("mpc-did/path/1" || Noise handshake hash)
//! ```
//! The hello lets a listener that serves many sessions hand an incoming connection to the
//! right one; it reveals nothing but a per-session random-looking tag. Whoever opens the
//! path writes the hello; both sides then call `Session::resume`, so the first record each
//! way on every path — the first one included — is a RESUME (spec/session.md §7).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::SessionHandle;

/// What a path is, for logs, `SessionHandle::path` and listings (spec/session.md §7.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathInfo {
    /// A direct TCP connection; `remote` is known to the side that dialed.
    Direct {
        /// The peer's address, known to the side that dialed (`None` on the listener).
        remote: Option<SocketAddr>,
    },
    /// A QUIC stream over UDP, straight to a host candidate or through NATs opened by hole
    /// punching (spec/rendezvous.md §6.1); `remote` is the peer's address on it.
    Quic {
        /// The peer's address on the QUIC connection.
        remote: SocketAddr,
    },
    /// Through a mediator relay.
    Relayed {
        /// The relay's URL.
        relay: String,
    },
}

impl PathInfo {
    /// `"direct"`, `"quic"` or `"relay"`: the kind shown by the CLI and the logs.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Direct { .. } => "direct",
            Self::Quic { .. } => "quic",
            Self::Relayed { .. } => "relay",
        }
    }

    /// Whether the path avoids any relay (direct TCP or QUIC).
    #[must_use]
    pub fn is_direct(&self) -> bool {
        !matches!(self, Self::Relayed { .. })
    }
}

impl std::fmt::Display for PathInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Direct { remote: Some(a) } => write!(f, "direct TCP to {a}"),
            Self::Direct { remote: None } => write!(f, "direct TCP (accepted)"),
            Self::Quic { remote } => write!(f, "QUIC with {remote}"),
            Self::Relayed { relay } => write!(f, "relayed via {relay}"),
        }
    }
}

/// How long a router keeps an incoming path whose session is not registered yet: the
/// opener may dial as soon as it has sent the last handshake message, before the other
/// side has processed it (spec/session.md §7.3).
pub const REGISTER_WAIT: Duration = Duration::from_secs(5);

/// Length of the path hello.
pub const HELLO_LEN: usize = 24;
const MAGIC: &[u8; 4] = b"MDP1";
const PATH_ID_LABEL: &[u8] = b"mpc-did/path/1";

/// Names a session on a path.
pub type PathId = [u8; 16];

/// A path: a reliable, ordered byte stream.
pub trait PathStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> PathStream for T {}

/// A boxed path.
pub type BoxPath = Box<dyn PathStream>;

/// Why a path hello was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// The path hello's magic or reserved bytes are wrong (spec/session.md §7.3).
    #[error("not an mpc-did path (bad magic or reserved bytes)")]
    BadHello,
    /// The hello names no session registered with the router (in time).
    #[error("no session with this path id")]
    UnknownSession,
    /// No complete path hello arrived within the given time.
    #[error("no path hello within {0:?}")]
    Timeout(Duration),
    /// Reading the hello or attaching the path failed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// The path id of the session with this Noise handshake hash.
#[must_use]
pub fn path_id(handshake_hash: &[u8; 32]) -> PathId {
    let digest = Sha256::new()
        .chain_update(PATH_ID_LABEL)
        .chain_update(handshake_hash)
        .finalize();
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    id
}

/// Encode the hello for `id`.
#[must_use]
pub fn encode_hello(id: &PathId) -> [u8; HELLO_LEN] {
    let mut h = [0u8; HELLO_LEN];
    h[..4].copy_from_slice(MAGIC);
    h[8..].copy_from_slice(id);
    h
}

/// Decode a hello.
///
/// # Errors
/// [`PathError::BadHello`] for a wrong magic or non-zero reserved bytes.
pub fn decode_hello(h: &[u8; HELLO_LEN]) -> Result<PathId, PathError> {
    if &h[..4] != MAGIC || h[4..8] != [0; 4] {
        return Err(PathError::BadHello);
    }
    let mut id = [0u8; 16];
    id.copy_from_slice(&h[8..]);
    Ok(id)
}

/// Write the hello on a path we opened.
///
/// # Errors
/// The stream's write error.
pub async fn send_hello<S: AsyncWrite + Unpin>(stream: &mut S, id: &PathId) -> io::Result<()> {
    stream.write_all(&encode_hello(id)).await?;
    stream.flush().await
}

/// Read the hello of a path a peer opened.
///
/// # Errors
/// [`PathError::Timeout`] if it does not arrive in time, [`PathError::BadHello`], or the
/// stream's read error.
pub async fn read_hello<S: AsyncRead + Unpin>(
    stream: &mut S,
    limit: Duration,
) -> Result<PathId, PathError> {
    let mut h = [0u8; HELLO_LEN];
    tokio::time::timeout(limit, stream.read_exact(&mut h))
        .await
        .map_err(|_| PathError::Timeout(limit))??;
    decode_hello(&h)
}

/// Hands incoming paths to the sessions they name. One listener serves every session of a
/// party.
#[derive(Clone, Default)]
pub struct PathRouter {
    routes: Arc<Mutex<HashMap<PathId, SessionHandle>>>,
    registered: Arc<Notify>,
}

impl std::fmt::Debug for PathRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.routes.lock().map(|r| r.len()).unwrap_or(0);
        f.debug_struct("PathRouter").field("sessions", &n).finish()
    }
}

impl PathRouter {
    /// A router with no sessions.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Route paths with `handle`'s path id to it.
    pub fn register(&self, handle: &SessionHandle) {
        if let Ok(mut r) = self.routes.lock() {
            r.insert(handle.path_id(), handle.clone());
        }
        self.registered.notify_waiters();
    }

    /// Stop routing to a session.
    pub fn unregister(&self, id: &PathId) {
        if let Ok(mut r) = self.routes.lock() {
            r.remove(id);
        }
    }

    /// Read the hello of an incoming path and attach it to its session.
    ///
    /// # Errors
    /// [`PathError`] when the hello is bad, late, or names no registered session.
    pub async fn route(&self, path: BoxPath) -> Result<(), PathError> {
        self.route_as(path, None).await
    }

    /// As [`PathRouter::route`], labelling the path with `info`. A hello naming a session
    /// that is not registered yet waits up to [`REGISTER_WAIT`] for it.
    ///
    /// # Errors
    /// [`PathError`] when the hello is bad, late, or names no session registered in time.
    pub async fn route_as(
        &self,
        mut path: BoxPath,
        info: Option<PathInfo>,
    ) -> Result<(), PathError> {
        let id = read_hello(&mut path, Duration::from_secs(10)).await?;
        let handle = self.wait_session(&id, REGISTER_WAIT).await?;
        handle
            .attach_path_as(path, info)
            .await
            .map_err(PathError::Io)
    }

    /// The session registered for `id` now, if any. A listener serving strangers uses it
    /// to tell a path naming a live session (worth keeping) from one naming nothing yet
    /// (spec/session.md §7.3).
    #[must_use]
    pub fn session(&self, id: &PathId) -> Option<SessionHandle> {
        self.routes.lock().ok().and_then(|r| r.get(id).cloned())
    }

    /// The session for `id`, waiting up to `wait` for it to register (an opener may dial
    /// before the other side has processed the last handshake message).
    ///
    /// # Errors
    /// [`PathError::UnknownSession`] when none registers in time.
    pub async fn wait_session(
        &self,
        id: &PathId,
        wait: Duration,
    ) -> Result<SessionHandle, PathError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.registered.notified();
            if let Some(h) = self.session(id) {
                return Ok(h);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(PathError::UnknownSession);
            }
        }
    }

    /// Accept TCP connections forever and route each (in its own task).
    pub async fn serve(self, listener: TcpListener) {
        loop {
            match listener.accept().await {
                Ok((tcp, from)) => {
                    let _ = tcp.set_nodelay(true);
                    let router = self.clone();
                    tokio::spawn(async move {
                        let info = PathInfo::Direct { remote: None };
                        if let Err(e) = router.route_as(Box::new(tcp), Some(info)).await {
                            tracing::debug!(%from, "incoming path refused: {e}");
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_round_trip_and_rejects() {
        let id = path_id(&[9; 32]);
        assert_eq!(decode_hello(&encode_hello(&id)).ok(), Some(id));
        let mut bad = encode_hello(&id);
        bad[0] = b'X';
        assert!(matches!(decode_hello(&bad), Err(PathError::BadHello)));
        let mut reserved = encode_hello(&id);
        reserved[5] = 1;
        assert!(matches!(decode_hello(&reserved), Err(PathError::BadHello)));
        assert_ne!(path_id(&[9; 32]), path_id(&[8; 32]));
    }
}
