//! Attempts of a run (spec/lobby.md §8): every `mpc-did run` of an MPC session is a fresh
//! attempt, and the parties agree pairwise on each other's current attempt before they
//! negotiate secure sessions, so messages of earlier attempts still queued at a mediator are
//! recognised and discarded instead of answered. A party that cannot go on tells the others
//! with a signed `abort` naming itself, its attempt and the reason.
//!
//! This is the no-I/O core: [`Attempts`] is fed the `ready` and `abort` messages the
//! DIDComm layer authenticated (sender DID, whether signed) and says what to send and what
//! happened; `mpc-did-mpc` moves the messages.
//!
//! ```text
//!  A (attempt a)                           B (attempt b)
//!   ready {attempt a, peer_attempt -} ──▶   learns a; ──▶ ready {b, peer_attempt a}
//!   ◀── ready {b, peer_attempt -}            (both at once is fine)
//!   sees peer_attempt = a: B is up at b;
//!   ready {a, peer_attempt b} ──────────▶   sees peer_attempt = b: A is up at a
//! ```
//! A `ready` from an earlier attempt of B is answered once (its `peer_attempt` can never be
//! B's current attempt, so B answers that answer with its current one); sessions are bound
//! to the pair of attempts ([`Attempts::binding_id`]), so a `propose` of an earlier attempt
//! never matches.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{MpcSessionId, PartyId, Roster};

/// Message type prefix of the run protocol.
pub const RUN_PREFIX: &str = "https://mpc-did.org/mpc-run/1.0/";
/// `ready`: I run attempt X (and I know you run attempt Y).
pub const READY_TYPE: &str = "https://mpc-did.org/mpc-run/1.0/ready";
/// `abort`: I stop attempt X, because …
pub const ABORT_TYPE: &str = "https://mpc-did.org/mpc-run/1.0/abort";

/// The id of one attempt (one `mpc-did run`): 16 random bytes, 32 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AttemptId([u8; 16]);

impl AttemptId {
    /// A fresh random attempt id.
    #[must_use]
    pub fn random() -> Self {
        let mut id = [0u8; 16];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut id);
        Self(id)
    }
}

impl std::fmt::Display for AttemptId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl std::fmt::Debug for AttemptId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AttemptId({self})")
    }
}

impl std::str::FromStr for AttemptId {
    type Err = crate::LobbyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 16];
        if s.len() != 32 || s.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(crate::LobbyError::Malformed(format!("attempt id {s:?}")));
        }
        hex::decode_to_slice(s, &mut out)
            .map_err(|_| crate::LobbyError::Malformed(format!("attempt id {s:?}")))?;
        Ok(Self(out))
    }
}

impl TryFrom<String> for AttemptId {
    type Error = crate::LobbyError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<AttemptId> for String {
    fn from(id: AttemptId) -> Self {
        id.to_string()
    }
}

/// Body of `ready` (spec/lobby.md §8).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ready {
    /// The MPC session (wire name `session_id`).
    #[serde(rename = "session_id")]
    pub mpc_session_id: MpcSessionId,
    /// The sender's party id.
    pub party: PartyId,
    /// The sender's current attempt.
    pub attempt: AttemptId,
    /// The recipient's attempt as the sender last heard of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_attempt: Option<AttemptId>,
    /// What the sender's run carries MPyC's messages over: `session` or `didcomm`
    /// (`mpc-did run --transport`). Absent: `session` (a peer from before the field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<String>,
}

impl Ready {
    /// The sender's transport (`session` when the field is absent).
    #[must_use]
    pub fn transport(&self) -> &str {
        self.transport.as_deref().unwrap_or(DEFAULT_TRANSPORT)
    }
}

/// The transport of a `ready` without the field (spec/lobby.md §8).
pub const DEFAULT_TRANSPORT: &str = "session";

/// Body of `abort` (spec/lobby.md §8). Sent signed: only a roster member can stop a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Abort {
    /// The MPC session (wire name `session_id`).
    #[serde(rename = "session_id")]
    pub mpc_session_id: MpcSessionId,
    /// The sender's party id.
    pub party: PartyId,
    /// The attempt that stops.
    pub attempt: AttemptId,
    /// The current attempts of the recipients as the sender knew them: an abort naming the
    /// recipient's attempt is about its run whatever the clocks say. Always sent, empty
    /// when none is known (spec/lobby.md §8 lists it as a member that "may be empty"); read
    /// as empty when missing.
    #[serde(default)]
    pub peer_attempts: Vec<AttemptId>,
    /// When the sender stopped, Unix time in milliseconds (the DIDComm `created_time` has
    /// seconds only, too coarse to tell a re-run from the run before it).
    #[serde(default)]
    pub created_ms: u64,
    /// Machine-readable reason (e.g. `program-mismatch`, `interrupted`).
    pub code: String,
    /// What went wrong, for people.
    pub reason: String,
}

/// What [`Attempts`] asks for or reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Send this `ready` to party `to`.
    Send {
        /// The recipient.
        to: PartyId,
        /// The body.
        ready: Ready,
    },
    /// Both sides know each other's current attempt: negotiate the secure session.
    PeerUp {
        /// The peer.
        party: PartyId,
        /// Its attempt.
        attempt: AttemptId,
    },
    /// A peer stopped this run.
    Aborted {
        /// The peer.
        party: PartyId,
        /// Its code.
        code: String,
        /// Its reason.
        reason: String,
    },
    /// We are stopping ([`Attempts::stop`]) and `to` announced an attempt we had not told
    /// yet: send it this (signed) `abort` naming that attempt (spec/lobby.md §8 "Telling
    /// late starters").
    SendAbort {
        /// The recipient.
        to: PartyId,
        /// The body.
        abort: Abort,
    },
    /// A peer's run carries MPyC over another transport than ours: the run cannot work;
    /// stop it and tell the peers (spec/lobby.md §8 "Same transport").
    TransportMismatch {
        /// The peer.
        party: PartyId,
        /// Its transport.
        theirs: String,
        /// Ours.
        ours: String,
    },
    /// A message was not acted on (stale, forged, another MPC session); log it.
    Ignored(String),
}

#[derive(Debug, Clone)]
struct Peer {
    did: String,
    current: Option<AttemptId>,
    /// The last attempt of the peer our `ready` named.
    answered: Option<AttemptId>,
    up: bool,
    /// The peer's attempts our `abort`s named (once we stop).
    told: Vec<AttemptId>,
}

/// One party's view of the attempts of an MPC run.
#[derive(Debug, Clone)]
pub struct Attempts {
    mpc: MpcSessionId,
    me: PartyId,
    mine: AttemptId,
    started: u64,
    peers: BTreeMap<PartyId, Peer>,
    /// Our own abort's code, reason and time (Unix ms), once we stop.
    stopping: Option<(String, String, u64)>,
    /// What our run carries MPyC over (sent in every `ready`).
    transport: String,
}

impl Attempts {
    /// Party `me` of `roster` starts attempt `mine` at `now_ms` (Unix milliseconds).
    #[must_use]
    pub fn new(roster: &Roster, me: PartyId, mine: AttemptId, now_ms: u64) -> Self {
        let peers = roster
            .parties
            .iter()
            .filter(|p| p.id != me)
            .map(|p| {
                (
                    p.id,
                    Peer {
                        did: p.did.clone(),
                        current: None,
                        answered: None,
                        up: false,
                        told: Vec::new(),
                    },
                )
            })
            .collect();
        Self {
            mpc: roster.mpc_session_id,
            me,
            mine,
            started: now_ms,
            peers,
            stopping: None,
            transport: DEFAULT_TRANSPORT.to_owned(),
        }
    }

    /// Our run carries MPyC over `transport` (`session`, the default, or `didcomm`): said in
    /// every `ready`; a peer's `ready` naming another is [`Event::TransportMismatch`].
    #[must_use]
    pub fn with_transport(mut self, transport: &str) -> Self {
        transport.clone_into(&mut self.transport);
        self
    }

    /// Our attempt.
    #[must_use]
    pub fn mine(&self) -> AttemptId {
        self.mine
    }

    /// The `ready` to send every peer first.
    #[must_use]
    pub fn hello(&self) -> Vec<Event> {
        self.peers
            .keys()
            .map(|&to| Event::Send {
                to,
                ready: self.ready(None),
            })
            .collect()
    }

    /// The current attempts of the peers, as far as we know them.
    #[must_use]
    pub fn known(&self) -> Vec<AttemptId> {
        self.peers.values().filter_map(|p| p.current).collect()
    }

    /// The `abort` of our attempt, created at `now_ms` (Unix milliseconds).
    #[must_use]
    pub fn abort(&self, code: &str, reason: &str, now_ms: u64) -> Abort {
        Abort {
            mpc_session_id: self.mpc,
            party: self.me,
            attempt: self.mine,
            peer_attempts: self.known(),
            created_ms: now_ms,
            code: code.to_owned(),
            reason: reason.to_owned(),
        }
    }

    /// We stop this attempt: the `abort` to send every peer now (naming the attempts we
    /// know). From now on a `ready` of an attempt not named yet is answered with an `abort`
    /// naming it ([`Event::SendAbort`]) instead of a `ready`, so a party that starts after
    /// we stopped is told too, not left waiting (spec/lobby.md §8).
    pub fn stop(&mut self, code: &str, reason: &str, now_ms: u64) -> Abort {
        let abort = self.abort(code, reason, now_ms);
        for p in self.peers.values_mut() {
            if let Some(a) = p.current {
                p.told.push(a);
            }
        }
        self.stopping = Some((code.to_owned(), reason.to_owned(), now_ms));
        abort
    }

    /// Whether every peer's announced attempt has been named in one of our `abort`s
    /// (after [`Attempts::stop`]; a peer never heard of counts as not told).
    #[must_use]
    pub fn all_told(&self) -> bool {
        self.peers.values().all(|p| !p.told.is_empty())
    }

    /// The peers not told of our abort yet (see [`Attempts::all_told`]).
    #[must_use]
    pub fn untold(&self) -> Vec<PartyId> {
        self.peers
            .iter()
            .filter(|(_, p)| p.told.is_empty())
            .map(|(&id, _)| id)
            .collect()
    }

    fn ready(&self, peer_attempt: Option<AttemptId>) -> Ready {
        Ready {
            mpc_session_id: self.mpc,
            party: self.me,
            attempt: self.mine,
            peer_attempt,
            transport: Some(self.transport.clone()),
        }
    }

    /// The party id of `did` in the roster, if it is a peer.
    #[must_use]
    pub fn party_of(&self, did: &str) -> Option<PartyId> {
        self.peers
            .iter()
            .find_map(|(&id, p)| (p.did == did).then_some(id))
    }

    /// The member `party` claims to be, checked against the authenticated sender.
    fn member(&self, sender: &str, party: PartyId, mpc: MpcSessionId) -> Result<(), String> {
        if mpc != self.mpc {
            return Err(format!(
                "a message for another MPC session ({mpc}) from {sender}"
            ));
        }
        match self.peers.get(&party) {
            Some(p) if p.did == sender => Ok(()),
            _ => Err(format!(
                "a message claiming party {party} from {sender}, who is not that roster member"
            )),
        }
    }

    /// A `ready` whose authenticated sender is `sender`.
    pub fn handle_ready(&mut self, sender: &str, r: &Ready) -> Vec<Event> {
        if let Err(e) = self.member(sender, r.party, r.mpc_session_id) {
            return vec![Event::Ignored(format!("ignored {e}"))];
        }
        if let Some((code, reason, stopped_ms)) = self.stopping.clone() {
            let mut abort = self.abort(&code, &reason, stopped_ms);
            let Some(p) = self.peers.get_mut(&r.party) else {
                return Vec::new();
            };
            if p.told.contains(&r.attempt) {
                return vec![Event::Ignored(format!(
                    "ignored a ready of attempt {} from party {}: already told it we stopped",
                    r.attempt, r.party
                ))];
            }
            p.current = Some(r.attempt);
            p.told.push(r.attempt);
            abort.peer_attempts = vec![r.attempt];
            return vec![Event::SendAbort { to: r.party, abort }];
        }
        if r.transport() != self.transport {
            // Its attempt is known: the abort this mismatch leads to names it, so the peer
            // counts as told and the stopping party does not wait for it as for a late
            // starter (spec/lobby.md §8: every party stops within a mediator round trip).
            if let Some(p) = self.peers.get_mut(&r.party) {
                if !p.up {
                    p.current = Some(r.attempt);
                }
            }
            return vec![Event::TransportMismatch {
                party: r.party,
                theirs: r.transport().to_owned(),
                ours: self.transport.clone(),
            }];
        }
        let mine = self.mine;
        let reply = self.ready(Some(r.attempt));
        let Some(p) = self.peers.get_mut(&r.party) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        if p.up {
            if p.current != Some(r.attempt) {
                out.push(Event::Ignored(format!(
                    "ignored a ready of attempt {} from party {}: it is up at attempt {}",
                    r.attempt,
                    r.party,
                    p.current.map(|a| a.to_string()).unwrap_or_default()
                )));
            }
            return out;
        }
        p.current = Some(r.attempt);
        if p.answered != Some(r.attempt) {
            p.answered = Some(r.attempt);
            out.push(Event::Send {
                to: r.party,
                ready: reply,
            });
        }
        if r.peer_attempt == Some(mine) {
            p.up = true;
            out.push(Event::PeerUp {
                party: r.party,
                attempt: r.attempt,
            });
        } else if let Some(old) = r.peer_attempt {
            out.push(Event::Ignored(format!(
                "party {} answered our earlier attempt {old}; told it our current one",
                r.party
            )));
        }
        out
    }

    /// An `abort` whose signer is `signer` (`None`: it was not signed).
    pub fn handle_abort(&mut self, signer: Option<&str>, a: &Abort) -> Event {
        let Some(signer) = signer else {
            return Event::Ignored(format!(
                "ignored an unsigned abort claiming party {}",
                a.party
            ));
        };
        if let Err(e) = self.member(signer, a.party, a.mpc_session_id) {
            return Event::Ignored(format!("ignored an abort: {e}"));
        }
        // An abort naming our attempt is about this run. Otherwise only one created after
        // our start can be (an abort still queued from an earlier run of the peer must not
        // stop this one; with clocks apart, a late abort is ignored, never a wrong one
        // taken); of a peer that is up, only its current attempt can abort.
        let names_us = a.peer_attempts.contains(&self.mine);
        let fresh = a.created_ms >= self.started;
        let p = self.peers.get(&a.party);
        let other_attempt = p.is_some_and(|p| p.up && p.current != Some(a.attempt));
        if names_us || (fresh && !other_attempt) {
            Event::Aborted {
                party: a.party,
                code: a.code.clone(),
                reason: a.reason.clone(),
            }
        } else {
            Event::Ignored(format!(
                "ignored an abort of another attempt {} of party {} ({})",
                a.attempt, a.party, a.reason
            ))
        }
    }

    /// Whether `party` is up (both know each other's attempt).
    #[must_use]
    pub fn is_up(&self, party: PartyId) -> bool {
        self.peers.get(&party).is_some_and(|p| p.up)
    }

    /// What the secure session with `peer` is bound to (the `mpc_session_id` of its
    /// `propose` and Noise prologue, spec/session.md §2): `<MPC session id>/<proposer's
    /// attempt>/<acceptor's attempt>`, the lower party id proposing. `None` until the peer
    /// is up.
    #[must_use]
    pub fn binding_id(&self, peer: PartyId) -> Option<String> {
        let p = self.peers.get(&peer).filter(|p| p.up)?;
        let theirs = p.current?;
        let (first, second) = if self.me < peer {
            (self.mine, theirs)
        } else {
            (theirs, self.mine)
        };
        Some(format!("{}/{first}/{second}", self.mpc))
    }
}
