//! Candidate gathering on a UDP socket (spec/rendezvous.md §5.1): the tokio shell around
//! [`gather`] and the STUN client. Which path carries a session is chosen by the
//! party (`mpc-did-connect`, spec/session.md §7.5), not here.
//!
//! ```text
//!  gather_quic: UdpSocket ─STUN test I-III─▶ host + srflx (+ relay) candidates, NatMapping
//! ```

use std::net::SocketAddr;

use tokio::net::UdpSocket;

use super::{binding_tcp, classify_nat_udp, NetError};
use crate::binding::RetransmitSchedule;
use crate::candidate::{gather, Candidate, Transport};
use crate::nat::NatMapping;

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
