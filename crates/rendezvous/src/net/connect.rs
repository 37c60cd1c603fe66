//! Candidate gathering and connectivity checks (spec/rendezvous.md §5, §6):
//! the tokio shell around [`gather`] and [`CheckPlanner`].
//!
//! ```text
//!  gather_quic: UdpSocket ─STUN test I-III─▶ host + srflx (+ relay) candidates, NatMapping
//!  establish (controlling): CheckPlanner ─StartCheck─▶ QUIC connect / relay up ─▶ on_result
//!                           Decided ─▶ nominate: first byte 0x01 on the winning path
//!  establish (controlled):  punch remote candidates; accept QUIC + watch the relay stream;
//!                           the first path whose first byte is the nomination wins
//! ```
//! The winning path is returned as a byte stream (QUIC bidirectional stream
//! or relay stream) positioned after the nomination byte; the session
//! driver writes its path hello next.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UdpSocket;
use tokio::task::JoinSet;

use super::quic::{QuicEndpoint, QuicPath};
use super::relay::RelayConnection;
use super::{binding_tcp, classify_nat_udp, NetError};
use crate::binding::RetransmitSchedule;
use crate::candidate::{
    gather, Candidate, CandidateKind, CheckPlanner, PairState, PathChoice, PathKind, PlannerAction,
    PlannerConfig, Transport,
};
use crate::nat::NatMapping;
use crate::relay::PeerAddr;

/// First byte the controlling side writes on the path it chose.
pub const NOMINATION: u8 = 0x01;

/// A path as an object: any reliable ordered byte stream.
pub trait PathIo: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> PathIo for T {}

/// A boxed path (the driver's `BoxPath` accepts it as is).
pub type Path = Box<dyn PathIo>;

/// What gathering found.
#[derive(Debug, Clone)]
pub struct Gathered {
    /// Candidates, highest priority first (spec §5.1).
    pub candidates: Vec<Candidate>,
    /// The UDP socket's NAT mapping behaviour (RFC 5780 §4.3).
    pub nat_mapping: NatMapping,
}

/// Gathers QUIC candidates for `socket` (spec §5.1): one host candidate per
/// `hosts` entry (the socket's local addresses), the server-reflexive
/// address from STUN test I against `stun` (tests II/III classify the
/// mapping when the server has an alternate address), optionally TCP
/// server-reflexive candidates from `stun_tcp`, and the home relay.
///
/// # Errors
/// Socket errors; a STUN timeout only leaves the srflx candidate out.
pub async fn gather_quic(
    socket: &UdpSocket,
    hosts: &[SocketAddr],
    stun: SocketAddr,
    stun_tcp: Option<SocketAddr>,
    relay: Option<(SocketAddr, &str)>,
    schedule: RetransmitSchedule,
) -> Result<Gathered, NetError> {
    let base = socket.local_addr()?;
    let (nat_mapping, obs) = classify_nat_udp(socket, stun, schedule).await?;
    let server = stun.to_string();
    let reflexive: Vec<(SocketAddr, SocketAddr, &str)> = obs
        .test1
        .map(|m| (base, m, server.as_str()))
        .into_iter()
        .collect();
    let mut candidates = gather(Transport::Quic, hosts, &reflexive, relay);
    if let Some(tcp) = stun_tcp {
        if let Ok((r, local)) = binding_tcp(tcp, None, schedule).await {
            let more = gather(
                Transport::Tcp,
                &[],
                &[(local, r.mapped, server.as_str())],
                None,
            );
            candidates.extend(more);
        }
    }
    candidates.sort_by_key(|c| std::cmp::Reverse(c.priority));
    Ok(Gathered {
        candidates,
        nat_mapping,
    })
}

/// Everything [`establish`] needs.
pub struct Establish<'a> {
    /// The QUIC endpoint on the socket the candidates were gathered on.
    pub quic: Option<QuicEndpoint>,
    /// Our relay connection (to the peer's relay; spec §1), if any.
    pub relay: Option<&'a RelayConnection>,
    /// The peer's address on the relay (its key or DID).
    pub peer: PeerAddr,
    /// Our candidates.
    pub local: Vec<Candidate>,
    /// The peer's candidates.
    pub remote: Vec<Candidate>,
    /// Whether we are the Noise initiator (spec §5.3).
    pub controlling: bool,
    /// Planner timing; see [`default_planner`].
    pub planner: PlannerConfig,
    /// Give up after this long.
    pub deadline: Duration,
}

/// Planner settings for [`establish`]: the defaults with a longer settle
/// time, so that a punched path whose first QUIC Initial was lost (the peer
/// had not punched yet) still beats an already-open relay.
pub fn default_planner() -> PlannerConfig {
    PlannerConfig {
        settle: Duration::from_millis(1500),
        ..PlannerConfig::default()
    }
}

enum Checked {
    Quic(quinn::Connection),
    Relay,
}

/// Runs the connectivity checks and returns the chosen path (spec §5.3-5.4,
/// §6). Both sides call it with their own view; the controlling side
/// decides and nominates, the controlled side follows.
///
/// # Errors
/// [`NetError::TimedOut`] when no path works within `deadline`.
pub async fn establish(e: Establish<'_>) -> Result<(PathChoice, Path), NetError> {
    let deadline = e.deadline;
    tokio::time::timeout(deadline, async move {
        if e.controlling {
            controlling(e).await
        } else {
            controlled(e).await
        }
    })
    .await
    .map_err(|_| NetError::TimedOut)?
}

async fn controlling(e: Establish<'_>) -> Result<(PathChoice, Path), NetError> {
    let mut planner = CheckPlanner::new(&e.local, &e.remote, true, e.planner);
    let mut checks: JoinSet<(usize, Duration, Result<Checked, NetError>)> = JoinSet::new();
    let mut results: Vec<(usize, Checked)> = Vec::new();
    let own = e.quic.as_ref().map(QuicEndpoint::local_addr);
    let choice = loop {
        let now = Instant::now();
        match planner.poll(now) {
            PlannerAction::StartCheck(id) => {
                let Some(pair) = planner.pair(id).cloned() else {
                    continue;
                };
                let quic = e.quic.clone();
                let relay_up = e.relay.is_some_and(RelayConnection::is_open);
                let timeout = e.planner.check_timeout;
                checks.spawn(async move {
                    let t0 = Instant::now();
                    let r = match (pair.kind, quic) {
                        (PathKind::Relayed, _) if relay_up => Ok(Checked::Relay),
                        (PathKind::Direct | PathKind::Punched, Some(q))
                            if pair.remote.transport == Transport::Quic
                                && Some(pair.remote.addr) != own =>
                        {
                            let _ = q.punch(pair.remote.addr).await;
                            match tokio::time::timeout(timeout, q.connect(pair.remote.addr)).await {
                                Ok(r) => r.map(Checked::Quic),
                                Err(_) => Err(NetError::TimedOut),
                            }
                        }
                        // TCP simultaneous open is not implemented (spec §6.2).
                        _ => Err(NetError::TimedOut),
                    };
                    let rtt = match &r {
                        Ok(Checked::Quic(c)) => c.rtt(),
                        _ => t0.elapsed(),
                    };
                    (id.0, rtt, r)
                });
            }
            PlannerAction::WaitUntil(t) => {
                tokio::select! {
                    () = tokio::time::sleep_until(t.into()) => {}
                    Some(done) = checks.join_next() => {
                        if let Ok((i, rtt, r)) = done {
                            let ok = r.is_ok();
                            if let Ok(c) = r {
                                results.push((i, c));
                            }
                            planner.on_result(crate::candidate::PairId(i), ok.then_some(rtt), Instant::now());
                        }
                    }
                }
            }
            PlannerAction::Decided(choice) => break choice,
            PlannerAction::NoPath => return Err(NetError::TimedOut),
        }
    };
    checks.abort_all();
    // The decided pair is the succeeded one with these addresses and kind.
    let winner = planner
        .pairs()
        .iter()
        .enumerate()
        .find(|(_, p)| {
            matches!(p.state, PairState::Succeeded(_))
                && p.kind == choice.kind
                && p.local.addr == choice.local.addr
                && p.remote.addr == choice.remote.addr
        })
        .map(|(i, _)| i);
    let mut chosen = None;
    for (i, c) in results {
        if Some(i) == winner && chosen.is_none() {
            chosen = Some(c);
        } else if let Checked::Quic(conn) = c {
            conn.close(0u32.into(), b"not nominated");
        }
    }
    let path: Path = match chosen {
        Some(Checked::Quic(conn)) => {
            let (mut send, recv) = conn
                .open_bi()
                .await
                .map_err(|e| NetError::Quic(e.to_string()))?;
            send.write_all(&[NOMINATION])
                .await
                .map_err(|e| NetError::Quic(e.to_string()))?;
            Box::new(QuicPath::new(conn, send, recv))
        }
        Some(Checked::Relay) => {
            let relay = e.relay.ok_or(NetError::TimedOut)?;
            let mut s = relay.open_stream(e.peer.clone())?;
            s.write_all(&[NOMINATION]).await?;
            Box::new(s)
        }
        None => return Err(NetError::TimedOut),
    };
    Ok((choice, path))
}

async fn controlled(e: Establish<'_>) -> Result<(PathChoice, Path), NetError> {
    let mut tasks: JoinSet<()> = JoinSet::new();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<QuicPath>(4);
    if let Some(q) = e.quic.clone() {
        // Punch: open our NAT mapping towards every remote QUIC candidate so
        // the controlling side's Initial gets in (spec §6.1).
        let targets: Vec<SocketAddr> = e
            .remote
            .iter()
            .filter(|c| c.transport == Transport::Quic && c.kind != CandidateKind::Relay)
            .map(|c| c.addr)
            .filter(|a| *a != q.local_addr())
            .collect();
        let pq = q.clone();
        tasks.spawn(async move {
            for _ in 0..100 {
                for t in &targets {
                    let _ = pq.punch(*t).await;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        tasks.spawn(async move {
            let mut conns: JoinSet<()> = JoinSet::new();
            while let Ok(conn) = q.accept().await {
                let tx = tx.clone();
                conns.spawn(async move {
                    if let Ok((send, mut recv)) = conn.accept_bi().await {
                        let mut b = [0u8; 1];
                        if recv.read_exact(&mut b).await.is_ok() && b[0] == NOMINATION {
                            let _ = tx.send(QuicPath::new(conn, send, recv)).await;
                        }
                    }
                });
            }
        });
    }
    let relay_stream = match e.relay {
        Some(r) => Some(r.open_stream(e.peer.clone())?),
        None => None,
    };
    let relay_nominated = async move {
        match relay_stream {
            Some(mut s) => {
                let mut b = [0u8; 1];
                match s.read_exact(&mut b).await {
                    Ok(_) if b[0] == NOMINATION => Ok(s),
                    Ok(_) => Err(io::Error::new(io::ErrorKind::InvalidData, "bad nomination")),
                    Err(e) => Err(e),
                }
            }
            None => std::future::pending().await,
        }
    };
    let local_quic = e
        .local
        .iter()
        .find(|c| c.kind == CandidateKind::Host && c.transport == Transport::Quic)
        .cloned();
    tokio::select! {
        Some(p) = rx.recv() => {
            tasks.abort_all();
            let remote_addr = p.remote_address();
            let remote = e
                .remote
                .iter()
                .find(|c| c.addr == remote_addr && c.kind != CandidateKind::Relay)
                .cloned()
                // Not advertised: a peer-reflexive address (RFC 8445 §7.2.5.3.1).
                .unwrap_or_else(|| Candidate::new(CandidateKind::ServerReflexive, Transport::Quic, remote_addr, 0, None));
            let local = local_quic.ok_or(NetError::TimedOut)?;
            let kind = if remote.kind == CandidateKind::Host { PathKind::Direct } else { PathKind::Punched };
            let choice = PathChoice { kind, local, remote, rtt: p.rtt() };
            Ok((choice, Box::new(p) as Path))
        }
        r = relay_nominated => {
            let s = r?;
            tasks.abort_all();
            let local = e.local.iter().find(|c| c.kind == CandidateKind::Relay).cloned();
            let remote = e.remote.iter().find(|c| c.kind == CandidateKind::Relay).cloned();
            let (Some(local), Some(remote)) = (local, remote) else {
                return Err(NetError::TimedOut);
            };
            let choice = PathChoice { kind: PathKind::Relayed, local, remote, rtt: Duration::ZERO };
            Ok((choice, Box::new(s) as Path))
        }
    }
}
