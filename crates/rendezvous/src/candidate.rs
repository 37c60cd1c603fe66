//! Address candidates, their exchange format, and the connectivity-check
//! planner that picks a path (RFC 8445 ideas, simplified: no ICE
//! credentials, since checks run inside the already-authenticated Noise
//! session set-up; see `spec/rendezvous.md` §5).
//!
//! ```text
//!  gather: host (local sockets) + server-reflexive (STUN) + relay (home mediator)
//!  exchange: CandidateSet as JSON inside a DIDComm message
//!  CheckPlanner::new(local, remote) ─ poll(now) ─▶ StartCheck(pair) | WaitUntil | Decided(PathChoice)
//!            ▲                                         │ shell runs the check (QUIC / TCP / relay ping)
//!            └──────── on_result(pair, Ok(rtt) | Err) ─┘
//! ```

use std::net::SocketAddr;
use std::time::{Duration, Instant};

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

/// How the chosen path reaches the peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PathKind {
    /// Straight to a host candidate of the peer.
    Direct,
    /// To the peer's server-reflexive address: needs both sides sending
    /// (hole punching / TCP simultaneous open).
    Punched,
    /// Through a mediator relay.
    Relayed,
}

/// The winner of the checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathChoice {
    /// Kind of path.
    pub kind: PathKind,
    /// Our candidate (its base socket sends).
    pub local: Candidate,
    /// The peer's candidate.
    pub remote: Candidate,
    /// Round-trip time the check measured.
    pub rtt: Duration,
}

/// Index of a pair in the planner.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PairId(pub usize);

/// State of one candidate pair (RFC 8445 §6.1.2.6, without Frozen).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PairState {
    /// Not started.
    Waiting,
    /// Check running since the instant given.
    InProgress(Instant),
    /// Check succeeded.
    Succeeded(Duration),
    /// Check failed or timed out.
    Failed,
}

/// A local/remote pair to check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CandidatePair {
    /// Our side.
    pub local: Candidate,
    /// The peer's side.
    pub remote: Candidate,
    /// RFC 8445 §6.1.2.3 pair priority.
    pub priority: u64,
    /// Path kind if this pair wins.
    pub kind: PathKind,
    /// State.
    pub state: PairState,
}

/// RFC 8445 §6.1.2.3: `2^32 × min(G, D) + 2 × max(G, D) + (G > D ? 1 : 0)`,
/// G the controlling agent's candidate priority, D the controlled's.
pub fn pair_priority(controlling: u32, controlled: u32) -> u64 {
    let (g, d) = (u64::from(controlling), u64::from(controlled));
    (g.min(d) << 32) + 2 * g.max(d) + u64::from(g > d)
}

/// Planner timing and limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlannerConfig {
    /// Minimum interval between starting two checks (RFC 8445 §14.2 Ta, 50 ms).
    pub pacing: Duration,
    /// A check without result after this long has failed.
    pub check_timeout: Duration,
    /// After the first success, how long to wait for a higher-priority
    /// pair still in progress before settling for the best success.
    pub settle: Duration,
    /// Most pairs checked (RFC 8445 §6.1.2.5 suggests 100; we have few candidates).
    pub max_pairs: usize,
    /// Most checks in flight at once.
    pub max_in_flight: usize,
}

impl Default for PlannerConfig {
    fn default() -> Self {
        PlannerConfig {
            pacing: Duration::from_millis(50),
            check_timeout: Duration::from_secs(3),
            settle: Duration::from_millis(500),
            max_pairs: 48,
            max_in_flight: 8,
        }
    }
}

/// What the shell should do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlannerAction {
    /// Start a check on this pair now (see [`CheckPlanner::pair`]).
    StartCheck(PairId),
    /// Call [`CheckPlanner::poll`] again at this instant (or on a result).
    WaitUntil(Instant),
    /// Done: use this path.
    Decided(PathChoice),
    /// Every pair failed (or there were none).
    NoPath,
}

/// Connectivity-check scheduler: pairs sorted by priority, started in
/// priority order with pacing, several in flight, first-best success wins.
#[derive(Debug)]
pub struct CheckPlanner {
    cfg: PlannerConfig,
    pairs: Vec<CandidatePair>,
    last_start: Option<Instant>,
    first_success: Option<Instant>,
    outcome: Option<PlannerAction>,
}

impl CheckPlanner {
    /// Forms and orders the pairs. `controlling` decides whose priorities
    /// count as G (the Noise initiator controls; spec/rendezvous.md §5.3).
    ///
    /// Pairing: a local host candidate with a remote host or
    /// server-reflexive candidate of the same transport and IP family
    /// (local server-reflexive candidates are represented by their base,
    /// RFC 8445 §6.1.2.4); a local relay candidate with each remote relay
    /// candidate.
    pub fn new(
        local: &[Candidate],
        remote: &[Candidate],
        controlling: bool,
        cfg: PlannerConfig,
    ) -> Self {
        let mut direct = Vec::new();
        let mut relayed = Vec::new();
        for l in local {
            for r in remote {
                let kind = match (l.kind, r.kind) {
                    (CandidateKind::Host, CandidateKind::Host) => PathKind::Direct,
                    (CandidateKind::Host, CandidateKind::ServerReflexive) => PathKind::Punched,
                    (CandidateKind::Relay, CandidateKind::Relay) => PathKind::Relayed,
                    _ => continue,
                };
                if kind != PathKind::Relayed
                    && (l.transport != r.transport || l.addr.is_ipv4() != r.addr.is_ipv4())
                {
                    continue;
                }
                let priority = if controlling {
                    pair_priority(l.priority, r.priority)
                } else {
                    pair_priority(r.priority, l.priority)
                };
                let pair = CandidatePair {
                    local: l.clone(),
                    remote: r.clone(),
                    priority,
                    kind,
                    state: PairState::Waiting,
                };
                if kind == PathKind::Relayed {
                    relayed.push(pair);
                } else {
                    direct.push(pair);
                }
            }
        }
        let order = |v: &mut Vec<CandidatePair>| {
            v.sort_by_key(|p| std::cmp::Reverse(p.priority));
            // Same addresses, transports and kind: one check is enough (the
            // first, highest-priority copy stays; copies need not be adjacent).
            let mut seen = std::collections::HashSet::new();
            v.retain(|p| {
                seen.insert((
                    p.local.addr,
                    p.remote.addr,
                    p.local.transport,
                    p.remote.transport,
                    p.kind,
                ))
            });
        };
        order(&mut direct);
        order(&mut relayed);
        // Relayed pairs are the fallback: keep room for them when truncating.
        relayed.truncate(cfg.max_pairs.min(4));
        direct.truncate(cfg.max_pairs.saturating_sub(relayed.len()));
        direct.extend(relayed);
        direct.sort_by_key(|p| std::cmp::Reverse(p.priority));
        CheckPlanner {
            cfg,
            pairs: direct,
            last_start: None,
            first_success: None,
            outcome: None,
        }
    }

    /// All pairs, highest priority first.
    pub fn pairs(&self) -> &[CandidatePair] {
        &self.pairs
    }

    /// One pair.
    pub fn pair(&self, id: PairId) -> Option<&CandidatePair> {
        self.pairs.get(id.0)
    }

    /// Reports a check result. Late or repeated results are ignored.
    pub fn on_result(&mut self, id: PairId, rtt: Option<Duration>, now: Instant) {
        let Some(p) = self.pairs.get_mut(id.0) else {
            return;
        };
        if !matches!(p.state, PairState::InProgress(_)) {
            return;
        }
        p.state = match rtt {
            Some(rtt) => {
                self.first_success.get_or_insert(now);
                PairState::Succeeded(rtt)
            }
            None => PairState::Failed,
        };
    }

    /// Advances the plan to `now`.
    pub fn poll(&mut self, now: Instant) -> PlannerAction {
        if let Some(o) = &self.outcome {
            return o.clone();
        }
        for p in &mut self.pairs {
            if let PairState::InProgress(t) = p.state {
                if now.saturating_duration_since(t) >= self.cfg.check_timeout {
                    p.state = PairState::Failed;
                }
            }
        }
        // Pairs are sorted, so the first succeeded one is the best success.
        let best = self
            .pairs
            .iter()
            .position(|p| matches!(p.state, PairState::Succeeded(_)));
        if let Some(b) = best {
            let better_pending = self
                .pairs
                .iter()
                .take(b)
                .any(|p| matches!(p.state, PairState::Waiting | PairState::InProgress(_)));
            let settled = self
                .first_success
                .is_some_and(|t| now.saturating_duration_since(t) >= self.cfg.settle);
            if !better_pending || settled {
                if let Some(p) = self.pairs.get(b) {
                    let rtt = match p.state {
                        PairState::Succeeded(r) => r,
                        _ => Duration::ZERO,
                    };
                    let d = PlannerAction::Decided(PathChoice {
                        kind: p.kind,
                        local: p.local.clone(),
                        remote: p.remote.clone(),
                        rtt,
                    });
                    self.outcome = Some(d.clone());
                    return d;
                }
            }
        }
        if self.pairs.iter().all(|p| p.state == PairState::Failed) {
            self.outcome = Some(PlannerAction::NoPath);
            return PlannerAction::NoPath;
        }
        let in_flight = self
            .pairs
            .iter()
            .filter(|p| matches!(p.state, PairState::InProgress(_)))
            .count();
        let next_start = self.last_start.map_or(now, |t| t + self.cfg.pacing);
        let waiting = self
            .pairs
            .iter()
            .position(|p| p.state == PairState::Waiting);
        // Once something succeeded, only pairs that could beat it are worth starting.
        let worth = waiting.filter(|w| best.is_none_or(|b| *w < b));
        if let Some(w) = worth {
            if in_flight < self.cfg.max_in_flight && now >= next_start {
                if let Some(p) = self.pairs.get_mut(w) {
                    p.state = PairState::InProgress(now);
                }
                self.last_start = Some(now);
                return PlannerAction::StartCheck(PairId(w));
            }
        }
        let mut deadlines: Vec<Instant> = self
            .pairs
            .iter()
            .filter_map(|p| match p.state {
                PairState::InProgress(t) => Some(t + self.cfg.check_timeout),
                _ => None,
            })
            .collect();
        if worth.is_some() && in_flight < self.cfg.max_in_flight {
            deadlines.push(next_start);
        }
        if let Some(t) = self.first_success {
            deadlines.push(t + self.cfg.settle);
        }
        // Non-empty: some pair is Waiting or InProgress (not all Failed, no
        // decision); a Waiting pair not worth starting implies a success.
        PlannerAction::WaitUntil(deadlines.into_iter().min().unwrap_or(now + self.cfg.pacing))
    }
}
