//! Address candidates and their exchange format (RFC 8445 ideas, simplified:
//! no ICE credentials, since checks run inside the already-authenticated
//! Noise session set-up; see `spec/rendezvous.md` §5). Which candidate
//! carries a session is chosen by the party (`mpc-did-connect`'s `select`,
//! spec/session.md §7.5).
//!
//! ```text
//!  gather: host (local sockets) + server-reflexive (STUN) + relay (home mediator)
//!  exchange: CandidateSet as JSON inside a DIDComm message
//! ```

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::nat::NatMapping;
use crate::CandidateError;

/// How the candidate address was learnt (RFC 8445 §5.1.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CandidateKind {
    /// A local interface address.
    Host,
    /// The public address a STUN server saw (srflx).
    ServerReflexive,
    /// Reachable through a mediator relay (`relay_url`).
    Relay,
}

impl CandidateKind {
    /// RFC 8445 §5.1.2.2 recommended type preferences.
    pub fn type_preference(self) -> u32 {
        match self {
            CandidateKind::Host => 126,
            CandidateKind::ServerReflexive => 100,
            CandidateKind::Relay => 0,
        }
    }
}

/// Transport of a candidate. `Quic` is QUIC (quinn) on that UDP address;
/// `Udp` a raw UDP socket (STUN only); `Tcp` a TCP listener / simultaneous open.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// UDP.
    Udp,
    /// TCP.
    Tcp,
    /// QUIC over UDP.
    Quic,
}

impl Transport {
    fn preference(self) -> u32 {
        // QUIC first: it survives NATs best and carries reliable streams
        // over a punched UDP mapping; TCP needs simultaneous open.
        match self {
            Transport::Quic => 3,
            Transport::Udp => 2,
            Transport::Tcp => 1,
        }
    }
}

/// One address a peer may be reached at.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Candidate {
    /// How it was learnt.
    pub kind: CandidateKind,
    /// Transport.
    pub transport: Transport,
    /// Socket address (for `relay`: the relay server's address).
    pub addr: SocketAddr,
    /// RFC 8445 §5.1.2.1 priority, see [`priority`].
    pub priority: u32,
    /// Candidates with the same foundation share a base and server (RFC 8445 §5.1.1.3).
    pub foundation: String,
    /// For `relay` candidates: the relay endpoint (wss:// or tcp:// URL of the mediator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_url: Option<String>,
}

/// RFC 8445 §5.1.2.1: `2^24 × type pref + 2^8 × local pref + (256 − component)`,
/// with component 1 and local preference `transport pref << 13 | ip pref << 12 | index`
/// (spec/rendezvous.md §5.2). `index` (0..4096) orders candidates of one kind
/// (for example interfaces).
pub fn priority(kind: CandidateKind, transport: Transport, addr: &SocketAddr, index: u16) -> u32 {
    // IPv6 is preferred when both work (RFC 8421 spirit): no NAT usually.
    let ip_pref = u32::from(addr.is_ipv6());
    let local = (transport.preference() << 13) | (ip_pref << 12) | (u32::from(index) & 0x0FFF);
    (kind.type_preference() << 24) | (local << 8) | (256 - 1)
}

impl Candidate {
    /// A candidate with its priority and foundation computed. `base` is the
    /// local socket the candidate derives from and `server` the STUN server
    /// or relay that produced it (both feed the foundation).
    pub fn new(
        kind: CandidateKind,
        transport: Transport,
        addr: SocketAddr,
        index: u16,
        server: Option<&str>,
    ) -> Self {
        let k = match kind {
            CandidateKind::Host => 'h',
            CandidateKind::ServerReflexive => 's',
            CandidateKind::Relay => 'r',
        };
        let t = match transport {
            Transport::Udp => 'u',
            Transport::Tcp => 't',
            Transport::Quic => 'q',
        };
        let mut basis = addr.ip().to_string().into_bytes();
        basis.push(0);
        basis.extend_from_slice(server.unwrap_or_default().as_bytes());
        let foundation = format!("{k}{t}{:08x}", crate::stun::crc32(&basis));
        Candidate {
            kind,
            transport,
            addr,
            priority: priority(kind, transport, &addr, index),
            foundation,
            relay_url: None,
        }
    }

    /// A relay candidate for the relay at `url` (address `addr`).
    pub fn relay(transport: Transport, addr: SocketAddr, url: &str) -> Self {
        let mut c = Candidate::new(CandidateKind::Relay, transport, addr, 0, Some(url));
        c.relay_url = Some(url.to_owned());
        c
    }

    fn validate(&self) -> Result<(), CandidateError> {
        let f = &self.foundation;
        if f.is_empty()
            || f.len() > MAX_FOUNDATION_LEN
            || !f
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
        {
            return Err(CandidateError::Invalid("foundation"));
        }
        if self.addr.port() == 0 || self.addr.ip().is_unspecified() || self.addr.ip().is_multicast()
        {
            return Err(CandidateError::Invalid("address"));
        }
        match (&self.kind, &self.relay_url) {
            (CandidateKind::Relay, Some(u)) if !u.is_empty() && u.len() <= MAX_URL_LEN => Ok(()),
            (CandidateKind::Relay, _) => Err(CandidateError::Invalid("relay_url")),
            (_, None) => Ok(()),
            (_, Some(_)) => Err(CandidateError::Invalid(
                "relay_url on a non-relay candidate",
            )),
        }
    }
}

/// Builds a candidate list from what the shell gathered (RFC 8445 §5.1.1):
/// host sockets, the server-reflexive addresses STUN reported for them
/// (`(base, mapped, server)`), and the home relay (`(relay address, url)`).
/// A server-reflexive address equal to a host address is redundant and
/// dropped (§5.1.3: no NAT on that path); duplicates are removed; the
/// result is sorted by priority and capped at [`MAX_CANDIDATES`].
pub fn gather(
    transport: Transport,
    hosts: &[SocketAddr],
    reflexive: &[(SocketAddr, SocketAddr, &str)],
    relay: Option<(SocketAddr, &str)>,
) -> Vec<Candidate> {
    let mut out: Vec<Candidate> = Vec::new();
    let push = |c: Candidate, out: &mut Vec<Candidate>| {
        if c.validate().is_ok()
            && !out
                .iter()
                .any(|o| o.addr == c.addr && o.kind == c.kind && o.transport == c.transport)
        {
            out.push(c);
        }
    };
    for (i, h) in hosts.iter().enumerate() {
        let index = u16::try_from(i).unwrap_or(u16::MAX);
        push(
            Candidate::new(CandidateKind::Host, transport, *h, index, None),
            &mut out,
        );
    }
    for (i, (_base, mapped, server)) in reflexive.iter().enumerate() {
        if hosts.contains(mapped) {
            continue;
        }
        let index = u16::try_from(i).unwrap_or(u16::MAX);
        let c = Candidate::new(
            CandidateKind::ServerReflexive,
            transport,
            *mapped,
            index,
            Some(server),
        );
        push(c, &mut out);
    }
    if let Some((addr, url)) = relay {
        push(Candidate::relay(Transport::Tcp, addr, url), &mut out);
    }
    out.sort_by_key(|c| std::cmp::Reverse(c.priority));
    out.truncate(MAX_CANDIDATES);
    out
}

/// Most candidates in one set (spec/session.md's `candidates` message allows 64).
pub const MAX_CANDIDATES: usize = 64;
/// Longest foundation (RFC 8445 §5.1.1.3 allows 32 ice-chars).
pub const MAX_FOUNDATION_LEN: usize = 32;
/// Longest relay URL.
pub const MAX_URL_LEN: usize = 512;
/// Longest JSON accepted by [`CandidateSet::from_json`].
pub const MAX_JSON_LEN: usize = 32 * 1024;

/// The candidate exchange message body (carried inside the session
/// protocol's DIDComm message; spec/rendezvous.md §5.1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CandidateSet {
    /// Format version, 1.
    pub version: u32,
    /// The sender's candidates.
    pub candidates: Vec<Candidate>,
    /// The sender's NAT mapping behaviour, if it classified it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat_mapping: Option<NatMapping>,
}

impl CandidateSet {
    /// A version-1 set.
    pub fn new(candidates: Vec<Candidate>, nat_mapping: Option<NatMapping>) -> Self {
        CandidateSet {
            version: 1,
            candidates,
            nat_mapping,
        }
    }

    /// Serialises to JSON.
    ///
    /// # Errors
    /// [`CandidateError::Invalid`] if the set breaks a limit (so we never
    /// send what a peer must refuse).
    pub fn to_json(&self) -> Result<String, CandidateError> {
        self.validate()?;
        serde_json::to_string(self).map_err(|e| CandidateError::Json(e.to_string()))
    }

    /// Parses and validates JSON from a peer.
    ///
    /// # Errors
    /// [`CandidateError::Json`] for bad JSON, [`CandidateError::Invalid`] for
    /// a size limit, unknown version, bad foundation, port 0 / unspecified /
    /// multicast address, or a misplaced `relay_url`.
    pub fn from_json(s: &str) -> Result<Self, CandidateError> {
        if s.len() > MAX_JSON_LEN {
            return Err(CandidateError::Invalid("too long"));
        }
        let set: CandidateSet =
            serde_json::from_str(s).map_err(|e| CandidateError::Json(e.to_string()))?;
        set.validate()?;
        Ok(set)
    }

    fn validate(&self) -> Result<(), CandidateError> {
        if self.version != 1 {
            return Err(CandidateError::Invalid("version"));
        }
        validate_candidates(&self.candidates)
    }
}

/// Checks a candidate list received in the session protocol's `candidates`
/// message (a JSON array of [`Candidate`]): count, foundations, addresses,
/// `relay_url` placement.
///
/// # Errors
/// [`CandidateError::Invalid`] naming the first rule broken.
pub fn validate_candidates(candidates: &[Candidate]) -> Result<(), CandidateError> {
    if candidates.len() > MAX_CANDIDATES {
        return Err(CandidateError::Invalid("too many candidates"));
    }
    candidates.iter().try_for_each(Candidate::validate)
}
