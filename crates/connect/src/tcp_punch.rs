//! TCP hole punching by simultaneous open (spec/rendezvous.md §6.2): the direct-path TCP
//! listener's port doubles as the punching port. At start the connector learns that port's
//! public mapping with a STUN Binding over TCP sent *from* it (SO_REUSEADDR +
//! SO_REUSEPORT, so the listener keeps the port) and announces it as a TCP
//! server-reflexive candidate. A check is a `connect()` from the same port to the peer's
//! TCP server-reflexive candidate while the peer does the same towards ours: each side's
//! SYN opens its own NAT for the other's, and the kernel turns the crossing SYNs into one
//! connection (RFC 793 simultaneous open; RFC 5382 REQ-2 asks NATs to let it through).
//!
//! ```text
//!  start:     listener (reuseport) port P ─STUN/TCP from P─▶ mediator: mapped M = NAT(P)
//!  proposer:  connect P → peer's M' (retry on refusal) ─▶ hello ─▶ attach  (a check, rank 3)
//!  acceptor:  connect P → proposer's M (on its candidates, then every punch_interval while
//!             the session is not direct) ─▶ PathRouter::route_as (waits for the hello)
//! ```

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use mpc_did_driver::{PathInfo, PathRouter, SessionHandle};
use mpc_did_rendezvous::binding::RetransmitSchedule;
use mpc_did_rendezvous::candidate::{gather, Candidate, CandidateKind, Transport};
use mpc_did_rendezvous::net::binding_tcp;
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::keep::RemoteCandidates;

/// How long one simultaneous-open attempt may take: covers the first SYN retransmission
/// (Linux: 1 s), which is what gets through when both sides' first SYNs crossed before
/// either NAT had a mapping for the other.
pub(crate) const PUNCH_TIMEOUT: Duration = Duration::from_millis(2500);
/// Pause after a refused attempt (a NAT or host answered RST) before the next SYN.
const REFUSED_PAUSE: Duration = Duration::from_millis(50);

/// A fresh socket bound to `port` that may share it with the listener and with other
/// punching sockets (each to another peer: distinct 4-tuples).
fn reusable(port: u16, v4: bool) -> std::io::Result<TcpSocket> {
    let (sock, ip) = if v4 {
        (TcpSocket::new_v4()?, Ipv4Addr::UNSPECIFIED.into())
    } else {
        (TcpSocket::new_v6()?, Ipv6Addr::UNSPECIFIED.into())
    };
    sock.set_reuseaddr(true)?;
    #[cfg(unix)]
    sock.set_reuseport(true)?;
    sock.bind(SocketAddr::new(ip, port))?;
    Ok(sock)
}

/// The direct-path listener; with `punch`, bound so that punching sockets can share its
/// port.
pub(crate) fn listener(addr: SocketAddr, punch: bool) -> std::io::Result<TcpListener> {
    if !punch {
        return std::net::TcpListener::bind(addr).and_then(|l| {
            l.set_nonblocking(true)?;
            TcpListener::from_std(l)
        });
    }
    // SO_REUSEPORT would let a second listener (another connector configured with the same
    // port) bind silently and take half of the connections: claim the port first without
    // it, so that a port in use fails as it did before, then re-bind it shareable.
    let port = std::net::TcpListener::bind(addr)?.local_addr()?.port();
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    #[cfg(unix)]
    sock.set_reuseport(true)?;
    sock.bind(SocketAddr::new(addr.ip(), port))?;
    sock.listen(1024)
}

/// Learn the public mapping of our punching port from the STUN server over TCP: the TCP
/// server-reflexive candidate, or `None` (no answer, or no NAT: the mapping is one of our
/// host addresses, already announced).
pub(crate) async fn gather_tcp(
    stun: SocketAddr,
    port: u16,
    hosts: &[SocketAddr],
    schedule: RetransmitSchedule,
) -> Option<Candidate> {
    let local = if stun.is_ipv4() {
        SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port)
    } else {
        SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port)
    };
    let started = std::time::Instant::now();
    let (r, base) = match binding_tcp(stun, Some(local), schedule).await {
        Ok(x) => x,
        Err(e) => {
            tracing::info!("STUN over TCP at {stun} failed ({e}): no TCP punching");
            return None;
        }
    };
    tracing::debug!(
        "TCP mapping of port {port}: {} (STUN/TCP {:?})",
        r.mapped,
        started.elapsed()
    );
    if hosts.contains(&r.mapped) || r.mapped == base {
        return None;
    }
    let server = stun.to_string();
    gather(
        Transport::Tcp,
        &[],
        &[(base, r.mapped, server.as_str())],
        None,
    )
    .into_iter()
    .find(|c| c.kind == CandidateKind::ServerReflexive)
}

/// One simultaneous-open attempt from `port` to `remote`, re-sending the SYN after a
/// refusal, until it connects or `timeout` passes.
///
/// # Errors
/// The last socket error, or `TimedOut`.
pub(crate) async fn punch(
    port: u16,
    remote: SocketAddr,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    let attempt = async {
        loop {
            let sock = reusable(port, remote.is_ipv4())?;
            match sock.connect(remote).await {
                Ok(s) => {
                    s.set_nodelay(true)?;
                    return Ok(s);
                }
                // The peer's NAT (or host) answered RST before it had punched: again.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    tokio::time::sleep(REFUSED_PAUSE).await;
                }
                Err(e) => return Err(e),
            }
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

/// A peer candidate we punch TCP to.
pub(crate) fn is_tcp_punch_target(c: &Candidate) -> bool {
    c.kind == CandidateKind::ServerReflexive && c.transport == Transport::Tcp
}

/// The acceptor's side of one punch: connect to `remote` from `port`; a connection is
/// handed to the router, which waits for the proposer's hello (the proposer nominates).
pub(crate) async fn punch_and_route(port: u16, remote: SocketAddr, router: PathRouter) {
    match punch(port, remote, PUNCH_TIMEOUT).await {
        Ok(tcp) => {
            tracing::debug!(%remote, "TCP simultaneous open succeeded (acceptor)");
            let info = PathInfo::Direct {
                remote: Some(remote),
            };
            if let Err(e) = router.route_as(Box::new(tcp), Some(info)).await {
                tracing::debug!(%remote, "punched TCP path not taken: {e}");
            }
        }
        Err(e) => tracing::debug!(%remote, "TCP punch: {e}"),
    }
}

/// The acceptor's side of TCP punching while its session is not on a direct path: one
/// attempt per TCP server-reflexive candidate of the proposer, again every `interval` after
/// the attempts end, so that the proposer's checks (first connection, or an upgrade from
/// the relay) find a SYN of ours crossing theirs.
pub(crate) async fn punch_while_relayed(
    router: PathRouter,
    port: u16,
    handle: SessionHandle,
    remote: Arc<RemoteCandidates>,
    interval: Duration,
) {
    loop {
        if handle.state().is_over() {
            return;
        }
        let direct = handle
            .path()
            .current
            .is_some_and(|p| matches!(p, PathInfo::Direct { .. } | PathInfo::Quic { .. }));
        if !direct {
            let mut tries = tokio::task::JoinSet::new();
            for c in remote
                .snapshot()
                .into_iter()
                .filter(is_tcp_punch_target)
                .take(8)
            {
                tries.spawn(punch_and_route(port, c.addr, router.clone()));
            }
            // Attempts that connect keep their path while the router waits for the hello.
            while tries.join_next().await.is_some() {}
        }
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    // The punching port is the listener's: a punching socket can bind it, and a second
    // listener on a port in use still fails (no silent sharing through SO_REUSEPORT).
    #[tokio::test]
    async fn listener_shares_its_port_with_punching_sockets_only() {
        let l = listener("127.0.0.1:0".parse().unwrap(), true).unwrap();
        let port = l.local_addr().unwrap().port();
        assert!(reusable(port, true).is_ok());
        assert!(listener(SocketAddr::from(([127, 0, 0, 1], port)), true).is_err());
        assert!(listener(SocketAddr::from(([127, 0, 0, 1], port)), false).is_err());
    }

    // The peer never connects: every SYN is refused, sent again, and the attempt gives up
    // at its timeout rather than failing at the first refusal. (The simultaneous open
    // itself needs NATs that drop rather than refuse early SYNs — on loopback each SYN meets
    // an RST — and is tested behind real NATs in tests/connect_nat.rs.)
    #[tokio::test]
    async fn a_punch_the_peer_never_answers_times_out() {
        let (port, dead) = (free_port(), free_port());
        let t0 = std::time::Instant::now();
        let r = punch(
            port,
            SocketAddr::from(([127, 0, 0, 1], dead)),
            Duration::from_millis(300),
        )
        .await;
        assert_eq!(r.unwrap_err().kind(), std::io::ErrorKind::TimedOut);
        assert!(t0.elapsed() >= Duration::from_millis(300));
    }
}
