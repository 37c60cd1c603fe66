//! The NAT-traversed path (spec/session.md §7.5, spec/rendezvous.md §6.1): one UDP socket per
//! connector, first used for STUN (its server-reflexive address is the NAT mapping peers are
//! told about), then handed to a QUIC endpoint that dials peers' QUIC candidates and accepts
//! their connections. A QUIC path is one bidirectional stream that starts with the path
//! hello, exactly as a TCP path; incoming ones go through the connector's [`PathRouter`].
//!
//! ```text
//!  start:     UdpSocket ─STUN (tests I-III)─▶ host + srflx QUIC candidates ─▶ QuicEndpoint
//!  acceptor:  QuicEndpoint::incoming ─▶ slot (per source, in all) ─▶ handshake ─▶ accept_bi
//!             ─▶ hello naming a registered session ─▶ full windows ─▶ session
//!             punch every punch_interval towards the proposer's QUIC candidates while the
//!             session is not on a direct path (opens our NAT for its Initials)
//!  proposer:  punch + QuicEndpoint::connect(candidate) ─▶ open_bi ─▶ hello ─▶ attach
//! ```

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use mpc_did_driver::path::HELLO_LEN;
use mpc_did_driver::{PathInfo, PathRouter, SessionHandle};
use mpc_did_rendezvous::binding::RetransmitSchedule;
use mpc_did_rendezvous::candidate::{gather, Candidate, CandidateKind, Transport};
use mpc_did_rendezvous::nat::NatMapping;
use mpc_did_rendezvous::net::gather::gather_quic;
use mpc_did_rendezvous::net::quic::{open_windows, QuicEndpoint, QuicPath};
use tokio::net::UdpSocket;

use crate::keep::RemoteCandidates;
use crate::listen::{ListenerLimits, PathListener};

/// How to set up the NAT-traversed (QUIC) path.
#[derive(Debug, Clone)]
pub struct QuicSetup {
    /// The UDP socket for STUN and QUIC; default `0.0.0.0:0`.
    pub listen: SocketAddr,
    /// The STUN server that tells us our server-reflexive address (our mediator's STUN
    /// service, see [`crate::mediator_stun`]); `None`: host QUIC candidates only.
    pub stun: Option<SocketAddr>,
    /// STUN retransmissions; a short schedule, because a mediator without STUN delays
    /// [`crate::Connector::start`] by its whole length.
    pub stun_schedule: RetransmitSchedule,
    /// How often the acceptor sends punch datagrams to the proposer's QUIC candidates while
    /// its session is not on a direct path.
    pub punch_interval: Duration,
    /// How often a STUN request refreshes our NAT mapping (the srflx candidate) while no
    /// session uses it.
    pub mapping_keepalive: Duration,
    /// Also punch TCP (spec/rendezvous.md §6.2): learn the public mapping of the direct-path
    /// listener's port with STUN over TCP (same server, same port number) and try TCP
    /// simultaneous open with peers that announce one too, in parallel with QUIC. For
    /// networks that block UDP. The listener then sets SO_REUSEPORT.
    pub tcp_punch: bool,
}

impl Default for QuicSetup {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 0)),
            stun: None,
            stun_schedule: RetransmitSchedule {
                rto: Duration::from_millis(200),
                rc: 4,
                rm: 4,
            },
            punch_interval: Duration::from_millis(500),
            mapping_keepalive: Duration::from_secs(15),
            tcp_punch: true,
        }
    }
}

/// A connector's QUIC endpoint and what gathering found.
pub(crate) struct QuicState {
    pub endpoint: QuicEndpoint,
    pub candidates: Vec<Candidate>,
    pub nat_mapping: NatMapping,
    pub setup: QuicSetup,
}

/// Bind the socket, gather (STUN when configured) and start the endpoint. `hosts` turns
/// the bound address into the host addresses to announce.
pub(crate) async fn start(
    setup: &QuicSetup,
    hosts: impl FnOnce(SocketAddr) -> Vec<SocketAddr>,
) -> std::io::Result<QuicState> {
    let socket = UdpSocket::bind(setup.listen).await?;
    let local = socket.local_addr()?;
    let hosts = hosts(local);
    let (candidates, nat_mapping) = match setup.stun {
        Some(stun) => {
            match gather_quic(&socket, &hosts, stun, None, None, setup.stun_schedule).await {
                Ok(g) => (g.candidates, g.nat_mapping),
                Err(e) => {
                    tracing::warn!("STUN at {stun} failed ({e}); QUIC host candidates only");
                    (
                        gather(Transport::Quic, &hosts, &[], None),
                        NatMapping::Unknown,
                    )
                }
            }
        }
        None => (
            gather(Transport::Quic, &hosts, &[], None),
            NatMapping::Unknown,
        ),
    };
    if setup.stun.is_some()
        && !candidates
            .iter()
            .any(|c| c.kind == CandidateKind::ServerReflexive)
    {
        tracing::info!("no server-reflexive QUIC candidate (no NAT, or STUN unanswered)");
    }
    let endpoint = QuicEndpoint::new(socket).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(QuicState {
        endpoint,
        candidates,
        nat_mapping,
        setup: setup.clone(),
    })
}

/// Accept QUIC connections and route each by the path hello on its first stream. Ends
/// when the endpoint is closed (the connector is dropped).
///
/// Each handshake completes on its own task: a peer's check that aborts mid-handshake (it
/// lost the race to another candidate and was closed) or goes silent fails that connection
/// only. Awaiting handshakes here, one after the other, made the first aborted one end the
/// loop — the party took no QUIC path from anyone any more, its upgrades from the relay
/// included (10 parties in e3, spec/rendezvous.md §6.1).
///
/// Anyone who can send it a UDP datagram can connect, so connections are bounded as on the
/// TCP listener (spec/rendezvous.md §6.1 "Accepting", `slots` with `limits`): until its
/// hello names a registered session a connection holds a slot, at most `max_per_source`
/// per source and `max_pending` in all (beyond that the attempt is refused, or the oldest
/// connection without a live session closed); handshake, first stream and hello are due
/// within [`crate::open::CHECK_TIMEOUT`] (the proposer's own bound for its handshake) plus
/// `hello_timeout`. A proposer opens a new connection per path, so only the first stream of
/// a connection is read; the peer may open two at a time (the endpoint's transport
/// settings), and its flow-control window stays small until the hello named a session.
pub(crate) async fn serve(
    endpoint: QuicEndpoint,
    router: PathRouter,
    slots: PathListener,
    limits: ListenerLimits,
) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let incoming = match endpoint.incoming().await {
            Ok(i) => i,
            Err(e) => {
                tracing::debug!("QUIC endpoint stopped accepting: {e}");
                break;
            }
        };
        // Reap finished connection tasks so the set stays bounded by live connections.
        while conns.try_join_next().is_some() {}
        let remote = incoming.remote_address();
        let Some(mut slot) = slots.admit(remote.ip(), &limits, "QUIC path endpoint") else {
            tracing::debug!(%remote, "QUIC path endpoint: at its limit; connection refused");
            incoming.refuse();
            continue;
        };
        let router = router.clone();
        let due = crate::open::CHECK_TIMEOUT + limits.hello_timeout;
        conns.spawn(async move {
            let opened = async {
                let conn = incoming
                    .await
                    .map_err(|e| format!("handshake failed: {e}"))?;
                let (send, mut recv) = conn
                    .accept_bi()
                    .await
                    .map_err(|e| format!("no stream: {e}"))?;
                let mut hello = [0u8; HELLO_LEN];
                recv.read_exact(&mut hello)
                    .await
                    .map_err(|e| format!("closed before its hello: {e}"))?;
                Ok::<_, String>((conn, send, recv, hello))
            };
            let got = tokio::select! {
                // Evicted: dropping the attempt closes it.
                _ = &mut slot.cancel => return,
                r = tokio::time::timeout(due, opened) => r,
            };
            let (conn, send, recv, hello) = match got {
                Ok(Ok(x)) => x,
                Ok(Err(e)) => {
                    tracing::debug!(%remote, "incoming QUIC path: {e}");
                    return;
                }
                Err(_) => {
                    slot.count(|s| s.hello_timeouts += 1);
                    tracing::debug!(%remote, "incoming QUIC path sent no hello in {due:?}; closed");
                    return;
                }
            };
            let Some(handle) = slot.session_of(&hello, &router, remote).await else {
                conn.close(0u32.into(), b"no such session");
                return;
            };
            // A path of a live session: the full windows of spec/rendezvous.md §6.1.
            open_windows(&conn);
            let path = QuicPath::new(conn, send, recv);
            let info = PathInfo::Quic { remote };
            if let Err(e) = handle.attach_path_as(Box::new(path), Some(info)).await {
                tracing::debug!(%remote, "incoming QUIC path refused: {e}");
            }
        });
    }
}

/// The acceptor's side of hole punching: while `handle`'s session is not on a direct path,
/// send a punch datagram to each of the proposer's QUIC candidates every `interval`, so
/// that its QUIC Initials (first connection or a later upgrade from the relay) get through
/// our NAT (spec/rendezvous.md §6.1).
pub(crate) async fn punch_while_relayed(
    endpoint: QuicEndpoint,
    handle: SessionHandle,
    remote: Arc<RemoteCandidates>,
    interval: Duration,
) {
    let own = endpoint.local_addr();
    loop {
        if handle.state().is_over() {
            return;
        }
        let direct = handle
            .path()
            .current
            .is_some_and(|p| matches!(p, PathInfo::Direct { .. } | PathInfo::Quic { .. }));
        if !direct {
            for c in remote
                .snapshot()
                .iter()
                .filter(|c| is_quic_target(c, own))
                .take(16)
            {
                let _ = endpoint.punch(c.addr).await;
            }
        }
        tokio::time::sleep(interval).await;
    }
}

/// Keep the NAT mapping of our QUIC socket (the srflx candidate) alive: a STUN request to
/// the server every `every` (its answer is discarded by the QUIC stack). Stops when the
/// connector is gone.
pub(crate) async fn keep_mapping<T: Send + Sync + 'static>(
    owner: Weak<T>,
    endpoint: QuicEndpoint,
    stun: SocketAddr,
    every: Duration,
) {
    loop {
        tokio::time::sleep(every).await;
        if owner.upgrade().is_none() {
            return;
        }
        let _ = endpoint.punch(stun).await;
    }
}

/// A peer candidate we can try QUIC on.
pub(crate) fn is_quic_target(c: &Candidate, own: SocketAddr) -> bool {
    c.transport == Transport::Quic && c.kind != CandidateKind::Relay && c.addr != own
}
