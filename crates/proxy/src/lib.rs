//! The local socket proxy between one MPyC party and its peers' secure session streams.
//!
//! MPyC (0.11) networks like this: party `i` listens on the port of its own `-P` entry and
//! dials every party `j > i`; a dialer's first bytes are its party id (2 bytes,
//! little-endian) followed by its PRSS keys; then `<qI`-framed messages; at the end every
//! party closes its links and waits for the others to close theirs. This crate owns the
//! loopback side of that picture for one party:
//!
//! ```text
//!  MPyC party i ──TCP 127.0.0.1:Lj──> [listener for peer j > i] ──Transport::open(j)──> peer j
//!  MPyC party i <──TCP 127.0.0.1:Pm── [dialer to MPyC's port]  <──Transport::accept()── peer k < i
//! ```
//!
//! - [`Proxy::bind`] binds one loopback listener per higher-id peer and picks the port MPyC
//!   will listen on; [`Proxy::mpyc_args`] gives the `-M/-I/-P` arguments that make an
//!   unmodified MPyC program use them.
//! - [`Proxy::run`] carries bytes between MPyC's sockets and the streams a [`Transport`]
//!   provides (in mpc-did: Noise session streams; any reliable, ordered byte stream works).
//! - The 2-byte party id a dialer announces is checked against the peer id the transport
//!   authenticated (spec/lobby.md, "party id check"); a mismatch drops the link.
//! - Bytes stay in order; EOF is propagated in both directions (MPyC's shutdown needs it);
//!   an error on either side closes both, so MPyC sees a lost link and exits instead of
//!   hanging. Buffers are bounded (one fixed buffer per direction); what one read returns is
//!   written to the stream in one write, so the session layer can put it in one frame.
//!
//! It does not do: authentication or encryption (the transport's job), choosing paths,
//! launching MPyC (the CLI's job). It binds loopback only and accepts only loopback peers.
//!
//! ```no_run
//! # async fn demo<T: mpc_did_proxy::Transport>(transport: T) -> Result<(), mpc_did_proxy::ProxyError> {
//! use mpc_did_proxy::{Proxy, ProxyConfig};
//! let proxy = Proxy::bind(ProxyConfig::new(3, 1)).await?;
//! println!("run: python prog.py {}", proxy.mpyc_args().join(" "));
//! let report = proxy.run(std::sync::Arc::new(transport)).await?;
//! println!("{} bytes out", report.bytes_out());
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

pub mod launch;
mod link;

use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
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
    pub peer: PartyId,
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
        }
    }
}

/// Why the proxy stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// `me` is not below `parties`, or there are more parties than MPyC supports here.
    #[error("bad party layout: party id {me} with {parties} parties")]
    Config { me: PartyId, parties: u16 },
    /// A loopback socket could not be bound.
    #[error("cannot bind a loopback port: {0}")]
    Bind(#[source] io::Error),
    /// A peer stream announced another party id than the one its session is bound to.
    #[error("party id spoofed: the session with party {authenticated} announced party id {announced}; link dropped")]
    PartyIdMismatch {
        authenticated: PartyId,
        announced: PartyId,
    },
    /// Our own MPyC announced an id other than ours (wrong `-I` or another program).
    #[error("the local MPyC program announced party id {announced}, but this proxy is party {me}")]
    LocalIdMismatch { me: PartyId, announced: PartyId },
    /// A peer stream came from a party that should not dial us (not lower than us, or twice).
    #[error("unexpected stream from party {0}")]
    UnexpectedPeer(PartyId),
    /// MPyC did not start listening in time.
    #[error("MPyC did not accept on 127.0.0.1:{port} within {secs} s: is the program running?")]
    MpycUnreachable { port: u16, secs: u64 },
    /// A peer did not show up in time.
    #[error("timed out after {secs} s waiting for {what}")]
    Timeout { what: String, secs: u64 },
    /// A link failed while carrying data.
    #[error("link with party {peer}: {source}")]
    Link {
        peer: PartyId,
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
    /// `(peer j, listener)` for every `j > me`, in id order.
    listeners: Vec<(PartyId, TcpListener)>,
    /// The port MPyC itself will listen on (for peers with lower ids).
    mpyc_port: u16,
}

impl Proxy {
    /// Bind the loopback listeners and choose MPyC's own port.
    ///
    /// # Errors
    /// [`ProxyError::Config`] for an impossible layout, [`ProxyError::Bind`] if loopback
    /// ports cannot be bound.
    pub async fn bind(config: ProxyConfig) -> Result<Self, ProxyError> {
        if config.me >= config.parties {
            return Err(ProxyError::Config {
                me: config.me,
                parties: config.parties,
            });
        }
        let mut listeners = Vec::new();
        for peer in config.me + 1..config.parties {
            let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .await
                .map_err(ProxyError::Bind)?;
            listeners.push((peer, l));
        }
        // MPyC binds its own port itself; reserve a free one by binding and releasing it.
        // Party 0 never listens, but MPyC still wants an entry.
        let mpyc_port = free_loopback_port().await.map_err(ProxyError::Bind)?;
        Ok(Self {
            config,
            listeners,
            mpyc_port,
        })
    }

    /// The port MPyC will listen on.
    #[must_use]
    pub fn mpyc_port(&self) -> u16 {
        self.mpyc_port
    }

    /// The `-M m -I i -P ...` arguments for the MPyC program, in MPyC's order.
    ///
    /// Entries of lower-id parties are never dialed by MPyC (they dial us), so they name a
    /// placeholder; our own entry has the empty host MPyC uses for "myself".
    #[must_use]
    pub fn mpyc_args(&self) -> Vec<String> {
        let mut args = vec![
            format!("-M{}", self.config.parties),
            format!("-I{}", self.config.me),
        ];
        for party in 0..self.config.parties {
            args.push("-P".into());
            if party < self.config.me {
                args.push("127.0.0.1:1".into());
            } else if party == self.config.me {
                args.push(format!(":{}", self.mpyc_port));
            } else {
                let port = self
                    .listeners
                    .iter()
                    .find(|(p, _)| *p == party)
                    .and_then(|(_, l)| l.local_addr().ok())
                    .map_or(1, |a| a.port());
                args.push(format!("127.0.0.1:{port}"));
            }
        }
        args
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
            let (t, cfg) = (Arc::clone(&transport), Arc::clone(&cfg));
            tasks.spawn(async move { link::outgoing(&*t, &cfg, peer, listener).await });
        }
        if cfg.me > 0 {
            let (t, cfg) = (Arc::clone(&transport), Arc::clone(&cfg));
            let port = self.mpyc_port;
            tasks.spawn(async move { link::incoming_all(t, cfg, port).await });
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
        Ok(report)
    }
}

async fn free_loopback_port() -> io::Result<u16> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    Ok(l.local_addr()?.port())
}

fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

fn nodelay(s: &TcpStream) {
    // Latency matters more than packet count for MPyC's small messages; failure to set it
    // only costs speed.
    let _ = s.set_nodelay(true);
}
