//! The local socket proxy between one MPyC party and its peers' secure session streams.
//!
//! MPyC (0.11) networks like this: party `i` listens on the port of its own `-P` entry and
//! dials every party `j > i`; a dialer's first bytes are its party id (2 bytes,
//! little-endian) followed by its PRSS keys; then `<qI`-framed messages; at the end every
//! party closes its links and waits for the others to close theirs. This crate owns the
//! local side of that picture for one party:
//!
//! ```text
//!  MPyC party i ──unix <dir>/party-j.sock──> [listener for peer j > i] ──Transport::open(j)──> peer j
//!  MPyC party i <──unix <dir>/mpyc.sock───── [dialer to MPyC]          <──Transport::accept()── peer k < i
//! ```
//!
//! - **The ends are private** (spec/security.md §10). Every link is a Unix-domain socket
//!   in a fresh directory of mode 0700 (`<dir>`), so no other user — and no other host —
//!   can connect to MPyC or to the proxy; a connection whose peer credentials are not our
//!   user's is refused as well. MPyC itself is unmodified: [`Proxy::program_env`] puts a
//!   start-up hook (`sitecustomize`) first on `PYTHONPATH` that maps MPyC's
//!   `create_server`/`create_connection` for the `-P` entries of [`Proxy::mpyc_args`] onto
//!   those sockets. Those entries name no usable TCP port, so MPyC without the hook fails
//!   instead of listening, and [`launch::run_program`] stops a program that never loads it.
//! - [`Proxy::bind`] makes the directory and binds one socket per higher-id peer;
//!   [`Proxy::mpyc_args`] gives the `-M/-I/-P` arguments.
//! - [`Proxy::run`] carries bytes between MPyC's sockets and the streams a [`Transport`]
//!   provides (in mpc-did: Noise session streams; any reliable, ordered byte stream works).
//! - The 2-byte party id a dialer announces is checked against the peer id the transport
//!   authenticated (spec/lobby.md, "party id check"); a mismatch drops the link.
//! - Bytes stay in order; EOF is propagated in both directions (MPyC's shutdown needs it);
//!   an error on either side closes both, and the launcher stops MPyC, so it exits instead
//!   of hanging. Buffers are bounded (one fixed buffer per direction); what one read
//!   returns is written to the stream in one write, so the session layer can put it in one
//!   frame; towards MPyC every record the stream has ready is gathered into one write
//!   (fewer syscalls and `data_received` calls; spec/proxy-performance.md).
//! - [`launch`] starts an unmodified MPyC program against a bound proxy and supervises
//!   both (own process group, Ctrl-C forwarded, killed with mpc-did); its
//!   [`launch::find_python`] is the one place that picks the Python that runs MPyC.
//!
//! It does not do: authentication or encryption (the transport's job), choosing paths,
//! the MPC session's lobby (crates/lobby), or test policy (what a test does without
//! Python is `mpc-did-testkit`'s). It opens no TCP or UDP socket.
//!
//! ```no_run
//! # async fn demo<T: mpc_did_proxy::Transport>(transport: T) -> Result<(), mpc_did_proxy::ProxyError> {
//! use mpc_did_proxy::{Proxy, ProxyConfig};
//! let proxy = Proxy::bind(ProxyConfig::new(3, 1)).await?;
//! // `launch::run_program` starts the program with these arguments and environment.
//! println!("run: python prog.py {}", proxy.mpyc_args().join(" "));
//! let env = proxy.program_env()?;
//! let report = proxy.run(std::sync::Arc::new(transport)).await?;
//! println!("{} bytes out, {} variables set", report.bytes_out(), env.len());
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod launch;
mod link;

use std::ffi::OsString;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::UnixListener;
use tokio::task::JoinSet;

pub use link::LinkStats;

/// A party's index in the MPC session's roster (MPyC's `-I`).
pub type PartyId = u16;

/// Where the proxy gets authenticated byte streams to and from its peers.
///
/// `open(j)` is called for every peer `j` with a higher id than ours (our MPyC dials them);
/// `accept()` yields the streams that lower-id peers opened to us, each with the peer id the
/// transport *authenticated* (for mpc-did: the roster id of the DID the Noise session is
/// bound to). Streams must be reliable and ordered, and report EOF when the peer closes.
pub trait Transport: Send + Sync + 'static {
    /// A bidirectional byte stream to one peer.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// Open a stream to peer `peer` (which has a higher id than ours).
    fn open(&self, peer: PartyId) -> impl Future<Output = io::Result<Self::Stream>> + Send;
    /// The next stream a lower-id peer opened to us, with its authenticated id.
    fn accept(&self) -> impl Future<Output = io::Result<(PartyId, Self::Stream)>> + Send;

    /// Resolves when a peer reports that its program failed, or its session is lost for
    /// good. MPyC cannot tell a crashed peer from one that closed its link cleanly (both are
    /// an EOF) and would wait forever; the supervisor stops the local program instead.
    fn peer_failure(&self) -> impl Future<Output = PeerFailure> + Send {
        std::future::pending()
    }

    /// Tell every peer that our program failed (best effort).
    fn report_failure(&self, reason: &str) -> impl Future<Output = ()> + Send {
        let _ = reason;
        std::future::ready(())
    }
}

/// A peer's program failed or its session was lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerFailure {
    /// The party whose link failed.
    pub peer: PartyId,
    /// What happened, as the transport or the link reported it.
    pub reason: String,
}

/// What the proxy needs to know about the MPC session.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Number of parties (`-M`).
    pub parties: u16,
    /// Our own party id (`-I`).
    pub me: PartyId,
    /// How long to keep retrying to reach MPyC's own listener before giving up
    /// (MPyC may start after the first peer stream arrives).
    pub mpyc_connect_timeout: Duration,
    /// How long to wait for a peer stream before giving up.
    pub peer_timeout: Duration,
    /// Bytes buffered per direction and link.
    pub buffer_size: usize,
    /// Where the run's private link directory is created (`None`: `$XDG_RUNTIME_DIR` if
    /// set, else the system temporary directory).
    pub link_dir_parent: Option<PathBuf>,
}

impl ProxyConfig {
    /// Defaults for `parties` parties where we are party `me`.
    #[must_use]
    pub fn new(parties: u16, me: PartyId) -> Self {
        Self {
            parties,
            me,
            mpyc_connect_timeout: Duration::from_secs(120),
            peer_timeout: Duration::from_secs(300),
            // One maximal Noise payload (65,535 minus the session header); a read never
            // returns more than fits in one session frame.
            buffer_size: 64 * 1024,
            link_dir_parent: None,
        }
    }
}

/// Why the proxy stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// `me` is not below `parties`, or there are more parties than MPyC supports here.
    #[error("bad party layout: party id {me} with {parties} parties")]
    Config {
        /// Our party id as configured.
        me: PartyId,
        /// The number of parties as configured.
        parties: u16,
    },
    /// The run's private link directory could not be made (or its hook written).
    #[error("cannot create a private link directory in {}: {source}", parent.display())]
    LinkDir {
        /// Where the directory was to be created.
        parent: PathBuf,
        /// Why it could not be.
        #[source]
        source: io::Error,
    },
    /// A link socket could not be bound.
    #[error("cannot bind a link socket: {0}")]
    Bind(#[source] io::Error),
    /// A peer stream announced another party id than the one its session is bound to.
    #[error("party id spoofed: the session with party {authenticated} announced party id {announced}; link dropped")]
    PartyIdMismatch {
        /// The party the stream's session is bound to.
        authenticated: PartyId,
        /// The party id the stream's first two bytes claimed.
        announced: PartyId,
    },
    /// Our own MPyC announced an id other than ours (wrong `-I` or another program).
    #[error("the local MPyC program announced party id {announced}, but this proxy is party {me}")]
    LocalIdMismatch {
        /// Our party id.
        me: PartyId,
        /// The id our MPyC announced.
        announced: PartyId,
    },
    /// A peer stream came from a party that should not dial us (not lower than us, or twice).
    #[error("unexpected stream from party {0}")]
    UnexpectedPeer(PartyId),
    /// MPyC did not start listening in time.
    #[error("MPyC did not accept on {} within {secs} s: is the program running?", socket.display())]
    MpycUnreachable {
        /// The Unix socket MPyC should have listened on.
        socket: PathBuf,
        /// How long we tried, in seconds.
        secs: u64,
    },
    /// A peer did not show up in time.
    #[error("timed out after {secs} s waiting for {what}")]
    Timeout {
        /// What we waited for (e.g. "a stream from party 2").
        what: String,
        /// How long we waited, in seconds.
        secs: u64,
    },
    /// A link failed while carrying data.
    #[error("link with party {peer}: {source}")]
    Link {
        /// The peer of the failed link.
        peer: PartyId,
        /// The I/O error on either side of the link.
        #[source]
        source: io::Error,
    },
}

/// Per-link byte counts after a run.
#[derive(Debug, Clone, Default)]
pub struct ProxyReport {
    /// One entry per peer, in completion order.
    pub links: Vec<(PartyId, LinkStats)>,
}

impl ProxyReport {
    /// Bytes our MPyC sent to all peers.
    #[must_use]
    pub fn bytes_out(&self) -> u64 {
        self.links.iter().map(|(_, s)| s.to_peer).sum()
    }
    /// Bytes all peers sent to our MPyC.
    #[must_use]
    pub fn bytes_in(&self) -> u64 {
        self.links.iter().map(|(_, s)| s.to_mpyc).sum()
    }
}

/// A bound proxy for one party, not yet carrying traffic.
#[derive(Debug)]
pub struct Proxy {
    config: ProxyConfig,
    /// The private directory holding every socket of this run.
    dir: Arc<LinkDir>,
    /// `(peer j, listener)` for every `j > me`, in id order.
    listeners: Vec<(PartyId, UnixListener)>,
}

impl Proxy {
    /// Create the run's private link directory and bind one Unix socket per higher-id peer.
    ///
    /// # Errors
    /// [`ProxyError::Config`] for an impossible layout, [`ProxyError::LinkDir`] if the
    /// directory cannot be made private, [`ProxyError::Bind`] if a socket cannot be bound.
    pub async fn bind(config: ProxyConfig) -> Result<Self, ProxyError> {
        if config.me >= config.parties {
            return Err(ProxyError::Config {
                me: config.me,
                parties: config.parties,
            });
        }
        let parent = config
            .link_dir_parent
            .clone()
            .unwrap_or_else(default_link_parent);
        let dir = LinkDir::create(&parent).map_err(|source| ProxyError::LinkDir {
            parent: parent.clone(),
            source,
        })?;
        let mut listeners = Vec::new();
        for peer in config.me + 1..config.parties {
            let l = UnixListener::bind(dir.link_path(peer)).map_err(ProxyError::Bind)?;
            listeners.push((peer, l));
        }
        Ok(Self {
            config,
            dir: Arc::new(dir),
            listeners,
        })
    }

    /// The run's private link directory (mode 0700; removed when the proxy is dropped).
    #[must_use]
    pub fn link_dir(&self) -> &Path {
        &self.dir.path
    }

    /// The Unix socket our MPyC dials to reach peer `peer` (> us).
    #[must_use]
    pub fn link_path(&self, peer: PartyId) -> PathBuf {
        self.dir.link_path(peer)
    }

    /// The Unix socket our MPyC listens on (for peers with lower ids).
    #[must_use]
    pub fn mpyc_socket(&self) -> PathBuf {
        self.dir.mpyc_socket()
    }

    /// The `-M m -I i -P ...` arguments for the MPyC program, in MPyC's order.
    ///
    /// They name no TCP port: our own entry is `:-1` and a higher peer `j` is
    /// `mpc-did-link.invalid:j`, which the start-up hook of [`Proxy::program_env`] maps to
    /// this run's Unix sockets. Without the hook MPyC fails instead of listening on a TCP
    /// port (port -1 is refused at once). Entries of lower-id parties are never dialed
    /// (they dial us) and name a placeholder.
    #[must_use]
    pub fn mpyc_args(&self) -> Vec<String> {
        let mut args = vec![
            format!("-M{}", self.config.parties),
            format!("-I{}", self.config.me),
        ];
        for party in 0..self.config.parties {
            args.push("-P".into());
            if party < self.config.me {
                args.push(format!("{LINK_HOST}:1"));
            } else if party == self.config.me {
                args.push(":-1".into());
            } else {
                args.push(format!("{LINK_HOST}:{party}"));
            }
        }
        args
    }

    /// Environment for the MPyC program: `PYTHONPATH` led by the link directory's start-up
    /// hook (a `sitecustomize` that maps MPyC's links onto the Unix sockets), the directory
    /// itself, and `MPYC_NOUVLOOP=1` (the hook patches asyncio's own event loop).
    ///
    /// # Errors
    /// [`ProxyError::LinkDir`] if the hook cannot be written.
    pub fn program_env(&self) -> Result<Vec<(OsString, OsString)>, ProxyError> {
        let hook_dir = self
            .dir
            .write_hook()
            .map_err(|source| ProxyError::LinkDir {
                parent: self.dir.path.clone(),
                source,
            })?;
        let mut pythonpath = hook_dir.into_os_string();
        if let Some(old) = std::env::var_os("PYTHONPATH").filter(|p| !p.is_empty()) {
            pythonpath.push(":");
            pythonpath.push(old);
        }
        Ok(vec![
            ("PYTHONPATH".into(), pythonpath),
            (LINK_DIR_ENV.into(), self.dir.path.clone().into_os_string()),
            ("MPYC_NOUVLOOP".into(), "1".into()),
        ])
    }

    /// Whether a process started with [`Proxy::program_env`] has installed the hook.
    #[must_use]
    pub fn hook_loaded(&self) -> bool {
        hook_loaded_in(&self.dir.path)
    }

    /// Carry MPyC's links until every one of them has closed in both directions.
    ///
    /// # Errors
    /// The first link error ([`ProxyError::Link`], [`ProxyError::PartyIdMismatch`], ...);
    /// the other links are then dropped, which MPyC sees as lost connections.
    pub async fn run<T: Transport>(self, transport: Arc<T>) -> Result<ProxyReport, ProxyError> {
        let cfg = Arc::new(self.config);
        let mut tasks: JoinSet<Result<Vec<(PartyId, LinkStats)>, ProxyError>> = JoinSet::new();

        for (peer, listener) in self.listeners {
            let (t, cfg, dir) = (
                Arc::clone(&transport),
                Arc::clone(&cfg),
                Arc::clone(&self.dir),
            );
            tasks.spawn(async move { link::outgoing(&*t, &cfg, peer, listener, &dir).await });
        }
        if cfg.me > 0 {
            let (t, cfg) = (Arc::clone(&transport), Arc::clone(&cfg));
            let socket = self.dir.mpyc_socket();
            tasks.spawn(async move { link::incoming_all(t, cfg, socket).await });
        }

        let mut report = ProxyReport::default();
        while let Some(joined) = tasks.join_next().await {
            let result = joined.unwrap_or_else(|join| {
                Err(ProxyError::Link {
                    peer: cfg.me,
                    source: io::Error::other(join),
                })
            });
            match result {
                Ok(links) => report.links.extend(links),
                Err(e) => {
                    tasks.abort_all();
                    return Err(e);
                }
            }
        }
        // `self.dir` is dropped here, after every link task: the directory goes last.
        Ok(report)
    }
}

/// The host name in MPyC's `-P` entries that the start-up hook maps to a Unix socket
/// (`.invalid` never resolves, RFC 6761, so without the hook nothing is dialed).
pub const LINK_HOST: &str = "mpc-did-link.invalid";
/// The environment variable naming the link directory for the start-up hook.
pub const LINK_DIR_ENV: &str = "MPC_DID_LINK_DIR";
/// The start-up hook (written as `sitecustomize.py` into the link directory).
const HOOK: &str = include_str!("sitecustomize.py");
/// `sun_path` holds 108 bytes with the NUL.
const MAX_SOCKET_PATH: usize = 107;

/// Whether the start-up hook has marked `dir` (it writes `loaded-<pid>` once installed).
pub(crate) fn hook_loaded_in(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.file_name().as_encoded_bytes().starts_with(b"loaded-"))
    })
}

/// `$XDG_RUNTIME_DIR` (per-user, 0700 by the login manager) when it exists, else the
/// system temporary directory; either way the link directory itself is 0700.
fn default_link_parent() -> PathBuf {
    std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute() && p.is_dir())
        .unwrap_or_else(std::env::temp_dir)
}

/// A directory only our user can enter, holding one run's sockets; removed on drop.
#[derive(Debug)]
struct LinkDir {
    path: PathBuf,
}

impl LinkDir {
    /// `mkdir(parent/mpc-did-<pid>-<random>, 0700)`: fails rather than reuse anything that exists
    /// (a stranger's directory or symlink), and checks the result is ours and private.
    fn create(parent: &Path) -> io::Result<Self> {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
        sweep_stale(parent);
        for _ in 0..16 {
            let mut name = [0u8; 8];
            getrandom_name(&mut name)?;
            let path = parent.join(format!("mpc-did-{}-{}", std::process::id(), hex8(&name)));
            if path.as_os_str().len() + "/party-65535.sock".len() > MAX_SOCKET_PATH {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "{} is too long for Unix socket paths (at most {MAX_SOCKET_PATH} bytes): \
                         set TMPDIR to a shorter directory",
                        parent.display()
                    ),
                ));
            }
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
            let dir = Self { path };
            let meta = std::fs::symlink_metadata(&dir.path)?;
            if !meta.is_dir() || meta.uid() != rustix::process::geteuid().as_raw() {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "the new link directory is not ours",
                ));
            }
            if meta.permissions().mode() & 0o077 != 0 {
                std::fs::set_permissions(&dir.path, std::fs::Permissions::from_mode(0o700))?;
            }
            return Ok(dir);
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "no free link directory name after 16 tries",
        ))
    }

    fn link_path(&self, peer: PartyId) -> PathBuf {
        self.path.join(format!("party-{peer}.sock"))
    }

    fn mpyc_socket(&self) -> PathBuf {
        self.path.join("mpyc.sock")
    }

    /// Write the start-up hook into `<dir>/py/sitecustomize.py`; returns `<dir>/py`.
    fn write_hook(&self) -> io::Result<PathBuf> {
        use std::os::unix::fs::DirBuilderExt;
        let py = self.path.join("py");
        match std::fs::DirBuilder::new().mode(0o700).create(&py) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        std::fs::write(py.join("sitecustomize.py"), HOOK)?;
        Ok(py)
    }
}

impl Drop for LinkDir {
    fn drop(&mut self) {
        // A program still starting may write its hook marker while the directory is being
        // removed (then it is not empty): one more pass gets it.
        if std::fs::remove_dir_all(&self.path).is_err() {
            if let Err(e) = std::fs::remove_dir_all(&self.path) {
                tracing::warn!(dir = %self.path.display(), "cannot remove the link directory: {e}");
            }
        }
    }
}

/// Remove link directories in `parent` that a process of ours made and could not remove
/// because it was killed (`mpc-did-<pid>-<random>`, owned by us, `<pid>` no longer runs).
fn sweep_stale(parent: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    let me = rustix::process::geteuid().as_raw();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("mpc-did-"))
            .and_then(|r| r.split_once('-'))
            .and_then(|(pid, rest)| (rest.len() == 16).then_some(pid))
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let path = entry.path();
        let ours = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir() && m.uid() == me);
        if ours && !Path::new(&format!("/proc/{pid}")).exists() {
            tracing::debug!(dir = %path.display(), "removing a link directory left by a killed run");
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

fn getrandom_name(buf: &mut [u8]) -> io::Result<()> {
    use std::io::Read as _;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}

fn hex8(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
