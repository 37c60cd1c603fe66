//! The lobby of an MPC session: who runs which program with whom, as party number what.
//!
//! This crate owns the lobby protocol of `spec/lobby.md` as plain data and checks: the offer
//! a coordinator attaches to its Out-of-Band invitation, the join a party sends back, the
//! roster the coordinator signs and sends to everyone, the roster hash that binds the
//! pairwise secure sessions to it, and every check of spec/lobby.md §4. It does no I/O and
//! no cryptography of its own: the DIDComm layer (authcrypt, JWS) carries the messages and
//! tells this crate who authenticated as sender and who signed.
//!
//! ```text
//!  coordinator: Offer::new ─> invitation ··· Join ─> Coordinator::handle_join ─> roster()
//!  party:       Roster::accept(offer joined, signer, my DID, now) ─> my party id
//!               Roster::check_program(file bytes) before running MPyC
//! ```
//!
//! ```
//! use mpc_did_lobby::{Coordinator, Join, Offer, Program};
//! let program = Program::from_bytes("santa.py", b"print('hi')");
//! let offer = Offer::new("did:key:z6MkA".into(), 2, program.clone(), vec![], 2_000_000_000)?;
//! let mut lobby = Coordinator::new(offer.clone());
//! let join = Join { mpc_session_id: offer.mpc_session_id.clone(), program_sha256: program.sha256.clone(), services: vec![] };
//! lobby.handle_join("did:key:z6MkB", &join, 1_900_000_000)?;
//! let roster = lobby.roster().expect("two of two parties");
//! assert_eq!(roster.accept(&offer, Some("did:key:z6MkA"), "did:key:z6MkB", 1_900_000_000)?, 1);
//! # Ok::<(), mpc_did_lobby::LobbyError>(())
//! ```
#![forbid(unsafe_code)]

pub mod attempt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Protocol URI (spec/lobby.md §2).
pub const PROTOCOL: &str = "https://mpc-did.org/lobby/1.0";
/// DIDComm message type of a join.
pub const JOIN_TYPE: &str = "https://mpc-did.org/lobby/1.0/join";
/// DIDComm message type of a roster.
pub const ROSTER_TYPE: &str = "https://mpc-did.org/lobby/1.0/roster";
/// Goal code of the Out-of-Band invitation to an MPC session.
pub const GOAL_CODE: &str = "mpc-did.mpc.join";
/// Attachment id of the offer inside the invitation.
pub const OFFER_ATTACHMENT_ID: &str = "mpc-offer";
/// The most parties an MPC session may have (spec/lobby.md §2).
pub const MAX_PARTIES: u16 = 64;

/// A party's number in the roster (MPyC's `-I`).
pub type PartyId = u16;

const ROSTER_DOMAIN: &[u8] = b"mpc-did/lobby/1.0/roster";
/// MPyC's (0.11, `mpyc._get_arg_parser`) networking options, which the run sets; a program
/// argument may not set them (spec/lobby.md §2, spec/security.md §10).
const RESERVED_SHORT: [char; 5] = ['M', 'I', 'P', 'C', 'B'];
const RESERVED_LONG: [&str; 4] = ["--config", "--index", "--base-port", "--ssl"];
/// MPyC's other short options that take a value: argparse reads the rest of an argument
/// after one of them as that value (`-L64`), never as more options.
const VALUE_SHORT: [char; 5] = ['T', 'W', 'L', 'K', 'f'];

/// Why a lobby step was refused; [`LobbyError::reason`] is the wire name of spec §5.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum LobbyError {
    #[error("unknown MPC session {0}")]
    UnknownSession(MpcSessionId),
    #[error("the MPC session expired at {0} (Unix time)")]
    Expired(u64),
    #[error("program hash mismatch: the session runs {expected}, this program is {actual}")]
    ProgramMismatch { expected: String, actual: String },
    #[error("the MPC session already has all its parties")]
    Full,
    #[error("{0} is not in the roster")]
    NotInRoster(String),
    #[error("the roster is not signed by the coordinator {expected} (signed by: {actual})")]
    BadSignature { expected: String, actual: String },
    #[error("the roster comes from {actual}, but the invitation was from {expected}")]
    WrongCoordinator { expected: String, actual: String },
    #[error("malformed lobby message: {0}")]
    Malformed(String),
}

impl LobbyError {
    /// The refusal reason's wire name (spec/lobby.md §5), also the Report Problem code suffix.
    #[must_use]
    pub fn reason(&self) -> &'static str {
        match self {
            Self::UnknownSession(_) => "unknown-session",
            Self::Expired(_) => "expired",
            Self::ProgramMismatch { .. } => "program-mismatch",
            Self::Full => "full",
            Self::NotInRoster(_) => "not-in-roster",
            Self::BadSignature { .. } => "bad-signature",
            Self::WrongCoordinator { .. } => "wrong-coordinator",
            Self::Malformed(_) => "malformed",
        }
    }
}

/// The program every party runs, named and pinned by its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Program {
    /// File name, informational (the hash is what counts).
    pub name: String,
    /// Lowercase hex SHA-256 of the file's bytes.
    pub sha256: String,
}

impl Program {
    /// Name and hash of a program file's contents.
    #[must_use]
    pub fn from_bytes(name: &str, bytes: &[u8]) -> Self {
        Self {
            name: name.to_owned(),
            sha256: hex::encode(Sha256::digest(bytes)),
        }
    }

    fn raw_hash(&self) -> Result<[u8; 32], LobbyError> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(&self.sha256, &mut out)
            .map_err(|_| LobbyError::Malformed(format!("program sha256 {:?}", self.sha256)))?;
        Ok(out)
    }
}

/// What an invitation offers (spec/lobby.md §2, "Offer").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    /// The MPC session's id (wire name `session_id`, spec/lobby.md §2).
    #[serde(rename = "session_id")]
    pub mpc_session_id: MpcSessionId,
    /// Number of parties N, coordinator included.
    pub parties: u16,
    pub program: Program,
    /// Arguments for the program after MPyC's own.
    #[serde(default)]
    pub mpyc_args: Vec<String>,
    /// Unix seconds after which joins and rosters are refused.
    pub expires_time: u64,
    /// The coordinator's DID (party 0).
    pub coordinator: String,
    /// The coordinator's DIDComm v2 service endpoints, for joiners to reach it.
    #[serde(default)]
    pub coordinator_services: Vec<serde_json::Value>,
}

impl Offer {
    /// A new MPC session with a fresh random id.
    ///
    /// # Errors
    /// [`LobbyError::Malformed`] for fewer than 2 or more than [`MAX_PARTIES`] parties,
    /// or program arguments that try to set MPyC's networking options.
    pub fn new(
        coordinator: String,
        parties: u16,
        program: Program,
        mpyc_args: Vec<String>,
        expires_time: u64,
    ) -> Result<Self, LobbyError> {
        let offer = Self {
            mpc_session_id: MpcSessionId::random(),
            parties,
            program,
            mpyc_args,
            expires_time,
            coordinator,
            coordinator_services: Vec::new(),
        };
        offer.validate()?;
        Ok(offer)
    }

    /// Check an offer received in an invitation.
    ///
    /// # Errors
    /// [`LobbyError::Malformed`] naming the first bad field.
    pub fn validate(&self) -> Result<(), LobbyError> {
        self.program.raw_hash()?;
        if !(2..=MAX_PARTIES).contains(&self.parties) {
            return Err(LobbyError::Malformed(format!(
                "{} parties (2 to {MAX_PARTIES} allowed)",
                self.parties
            )));
        }
        if let Some(bad) = self.mpyc_args.iter().find(|a| is_reserved(a)) {
            return Err(LobbyError::Malformed(format!(
                "program argument {bad:?} would change MPyC's networking, which mpc-did sets"
            )));
        }
        if !self.coordinator.starts_with("did:") {
            return Err(LobbyError::Malformed(format!(
                "coordinator {:?} is not a DID",
                self.coordinator
            )));
        }
        Ok(())
    }
}

/// Whether MPyC's argparse parser could read `arg` as one of its networking options, or
/// stop reading the launcher's own options after it. Conservative, in argparse's terms:
/// - `--name[=value]` where `name` is a prefix of a reserved long option (`allow_abbrev`:
///   `--base=7000` is `--base-port 7000`), and `--` itself, after which argparse reads the
///   launcher's `-M`/`-I`/`-P` as plain words;
/// - `-xyz…` whose option letters, read left to right up to the first letter of a
///   value-taking option (`-L`, `-T`, …), hold a reserved one: argparse chains flags and
///   takes `=` after a flag, so `-hB7000`, `-h=B7000`, `-VhI1` all set a reserved option.
///   Letters MPyC does not know are treated as flags too (`-vB7000`): refused rather than
///   depend on the version of argparse or MPyC.
fn is_reserved(arg: &str) -> bool {
    if arg.starts_with("--") {
        let name = arg.split('=').next().unwrap_or(arg);
        return RESERVED_LONG.iter().any(|r| r.starts_with(name));
    }
    let Some(letters) = arg.strip_prefix('-') else {
        return false;
    };
    for c in letters.chars() {
        if RESERVED_SHORT.contains(&c) {
            return true;
        }
        if VALUE_SHORT.contains(&c) {
            return false;
        }
    }
    false
}

/// The id of an MPC session (the lobby's, not a pairwise secure session's): 16 random
/// bytes, written as 32 lowercase hex digits. Parsed at the edge ([`str::parse`], serde), so
/// a value of this type is always well formed.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MpcSessionId([u8; 16]);

impl MpcSessionId {
    /// A fresh random id.
    #[must_use]
    pub fn random() -> Self {
        let mut id = [0u8; 16];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut id);
        Self(id)
    }

    /// The 16 bytes (hashed into the roster hash, spec/lobby.md §3).
    #[must_use]
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Whether the hex form starts with `prefix` (ids are chosen on the command line by a
    /// unique prefix).
    #[must_use]
    pub fn starts_with(&self, prefix: &str) -> bool {
        self.to_string().starts_with(prefix)
    }
}

impl std::fmt::Display for MpcSessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl std::fmt::Debug for MpcSessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MpcSessionId({self})")
    }
}

impl std::str::FromStr for MpcSessionId {
    type Err = LobbyError;

    fn from_str(id: &str) -> Result<Self, LobbyError> {
        let mut out = [0u8; 16];
        if id.len() != 32 || id.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(LobbyError::Malformed(format!("MPC session id {id:?}")));
        }
        hex::decode_to_slice(id, &mut out)
            .map_err(|_| LobbyError::Malformed(format!("MPC session id {id:?}")))?;
        Ok(Self(out))
    }
}

impl TryFrom<String> for MpcSessionId {
    type Error = LobbyError;

    fn try_from(s: String) -> Result<Self, LobbyError> {
        s.parse()
    }
}

impl From<MpcSessionId> for String {
    fn from(id: MpcSessionId) -> Self {
        id.to_string()
    }
}

/// A party's request to join (spec/lobby.md §2, `join`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Join {
    /// The MPC session joined (wire name `session_id`).
    #[serde(rename = "session_id")]
    pub mpc_session_id: MpcSessionId,
    /// SHA-256 (hex) of the program the joiner will run.
    pub program_sha256: String,
    /// The joiner's DIDComm v2 service endpoints (`{"uri":…,"routingKeys":[…]}`), so that
    /// parties whose DID document names none (did:key) can be reached.
    #[serde(default)]
    pub services: Vec<serde_json::Value>,
}

/// One party in the roster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RosterEntry {
    pub id: PartyId,
    pub did: String,
    /// DIDComm v2 service endpoints (`{"uri":…,"routingKeys":[…]}`); not hashed.
    #[serde(default)]
    pub services: Vec<serde_json::Value>,
}

/// Who is party what (spec/lobby.md §2, "Roster").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Roster {
    /// The MPC session (wire name `session_id`).
    #[serde(rename = "session_id")]
    pub mpc_session_id: MpcSessionId,
    pub program: Program,
    #[serde(default)]
    pub mpyc_args: Vec<String>,
    pub parties: Vec<RosterEntry>,
    pub expires_time: u64,
    /// Hex of [`Roster::compute_hash`]; receivers recompute and compare.
    pub roster_hash: String,
}

impl Roster {
    fn build(offer: &Offer, parties: Vec<RosterEntry>) -> Result<Self, LobbyError> {
        let mut roster = Self {
            mpc_session_id: offer.mpc_session_id,
            program: offer.program.clone(),
            mpyc_args: offer.mpyc_args.clone(),
            parties,
            expires_time: offer.expires_time,
            roster_hash: String::new(),
        };
        roster.roster_hash = hex::encode(roster.compute_hash()?);
        Ok(roster)
    }

    /// The roster hash of spec/lobby.md §3 (bound into every secure session's prologue).
    ///
    /// # Errors
    /// [`LobbyError::Malformed`] if the session id or program hash is not valid hex, or a
    /// field is too long to encode.
    pub fn compute_hash(&self) -> Result<[u8; 32], LobbyError> {
        let too_long = |what: &str| LobbyError::Malformed(format!("{what} too long"));
        let mut h = Sha256::new();
        h.update(ROSTER_DOMAIN);
        h.update(self.mpc_session_id.as_bytes());
        let n = u16::try_from(self.parties.len()).map_err(|_| too_long("party list"))?;
        h.update(n.to_be_bytes());
        for p in &self.parties {
            h.update(p.id.to_be_bytes());
            lp(&mut h, &p.did).map_err(|()| too_long("DID"))?;
        }
        h.update(self.program.raw_hash()?);
        h.update(self.expires_time.to_be_bytes());
        let nargs = u16::try_from(self.mpyc_args.len()).map_err(|_| too_long("argument list"))?;
        h.update(nargs.to_be_bytes());
        for a in &self.mpyc_args {
            lp(&mut h, a).map_err(|()| too_long("argument"))?;
        }
        Ok(h.finalize().into())
    }

    /// The checks a party makes on a roster it received (spec/lobby.md §4, party side);
    /// returns its own party id.
    ///
    /// `joined` is the offer the party accepted; `signed_by` is the DID whose signature
    /// the DIDComm layer verified on the roster (`None` if it was not signed).
    ///
    /// # Errors
    /// The first failing check, as the [`LobbyError`] variant of its refusal reason.
    pub fn accept(
        &self,
        joined: &Offer,
        signed_by: Option<&str>,
        my_did: &str,
        now: u64,
    ) -> Result<PartyId, LobbyError> {
        match signed_by {
            Some(s) if s == joined.coordinator => {}
            other => {
                return Err(LobbyError::BadSignature {
                    expected: joined.coordinator.clone(),
                    actual: other.unwrap_or("nobody").to_owned(),
                })
            }
        }
        if self.mpc_session_id != joined.mpc_session_id {
            return Err(LobbyError::UnknownSession(self.mpc_session_id));
        }
        if now > self.expires_time {
            return Err(LobbyError::Expired(self.expires_time));
        }
        if hex::encode(self.compute_hash()?) != self.roster_hash {
            return Err(LobbyError::Malformed("roster hash does not match".into()));
        }
        if self.program != joined.program || self.mpyc_args != joined.mpyc_args {
            return Err(LobbyError::Malformed(
                "the roster's program or arguments differ from the invitation's".into(),
            ));
        }
        let ids_ok = self
            .parties
            .iter()
            .enumerate()
            .all(|(i, p)| usize::from(p.id) == i);
        let mut dids: Vec<&str> = self.parties.iter().map(|p| p.did.as_str()).collect();
        dids.sort_unstable();
        dids.dedup();
        if !ids_ok
            || dids.len() != self.parties.len()
            || self.parties.len() != usize::from(joined.parties)
        {
            return Err(LobbyError::Malformed(
                "party ids must be 0..N-1 with distinct DIDs".into(),
            ));
        }
        match self.parties.first() {
            Some(p0) if p0.did == joined.coordinator => {}
            _ => {
                return Err(LobbyError::WrongCoordinator {
                    expected: joined.coordinator.clone(),
                    actual: self
                        .parties
                        .first()
                        .map(|p| p.did.clone())
                        .unwrap_or_default(),
                })
            }
        }
        self.parties
            .iter()
            .find(|p| p.did == my_did)
            .map(|p| p.id)
            .ok_or_else(|| LobbyError::NotInRoster(my_did.to_owned()))
    }

    /// Refuse to run a program whose bytes do not hash to the roster's (spec §4, step 5).
    ///
    /// # Errors
    /// [`LobbyError::ProgramMismatch`] with both hashes.
    pub fn check_program(&self, bytes: &[u8]) -> Result<(), LobbyError> {
        let actual = hex::encode(Sha256::digest(bytes));
        if actual == self.program.sha256 {
            Ok(())
        } else {
            Err(LobbyError::ProgramMismatch {
                expected: self.program.sha256.clone(),
                actual,
            })
        }
    }

    /// The entry of party `id`.
    #[must_use]
    pub fn party(&self, id: PartyId) -> Option<&RosterEntry> {
        self.parties.get(usize::from(id))
    }
}

fn lp(h: &mut Sha256, s: &str) -> Result<(), ()> {
    let len = u32::try_from(s.len()).map_err(|_| ())?;
    h.update(len.to_be_bytes());
    h.update(s.as_bytes());
    Ok(())
}

/// What a valid join led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinOutcome {
    /// A new party got this id.
    Accepted(PartyId),
    /// The DID had joined before (at-least-once delivery); same id as then.
    Repeated(PartyId),
}

impl JoinOutcome {
    /// The party id either way.
    #[must_use]
    pub fn party(self) -> PartyId {
        match self {
            Self::Accepted(p) | Self::Repeated(p) => p,
        }
    }
}

/// The coordinator's side of the lobby: admits joins, then produces the roster.
#[derive(Debug, Clone)]
pub struct Coordinator {
    offer: Offer,
    members: Vec<RosterEntry>,
}

impl Coordinator {
    /// Open the lobby; the coordinator is party 0.
    #[must_use]
    pub fn new(offer: Offer) -> Self {
        let me = RosterEntry {
            id: 0,
            did: offer.coordinator.clone(),
            services: offer.coordinator_services.clone(),
        };
        Self {
            offer,
            members: vec![me],
        }
    }

    /// The offer this lobby was opened with.
    #[must_use]
    pub fn offer(&self) -> &Offer {
        &self.offer
    }

    /// Admit (or refuse) a join whose DIDComm sender authenticated as `sender_did`
    /// (spec/lobby.md §4, coordinator side).
    ///
    /// # Errors
    /// The first failing check, as the [`LobbyError`] of its refusal reason.
    pub fn handle_join(
        &mut self,
        sender_did: &str,
        join: &Join,
        now: u64,
    ) -> Result<JoinOutcome, LobbyError> {
        if join.mpc_session_id != self.offer.mpc_session_id {
            return Err(LobbyError::UnknownSession(join.mpc_session_id));
        }
        if now > self.offer.expires_time {
            return Err(LobbyError::Expired(self.offer.expires_time));
        }
        if join.program_sha256 != self.offer.program.sha256 {
            return Err(LobbyError::ProgramMismatch {
                expected: self.offer.program.sha256.clone(),
                actual: join.program_sha256.clone(),
            });
        }
        if let Some(m) = self.members.iter().find(|m| m.did == sender_did) {
            return Ok(JoinOutcome::Repeated(m.id));
        }
        if self.is_full() {
            return Err(LobbyError::Full);
        }
        let id = PartyId::try_from(self.members.len()).map_err(|_| LobbyError::Full)?;
        self.members.push(RosterEntry {
            id,
            did: sender_did.to_owned(),
            services: join.services.clone(),
        });
        Ok(JoinOutcome::Accepted(id))
    }

    /// How many parties are in so far, coordinator included.
    #[must_use]
    pub fn members(&self) -> usize {
        self.members.len()
    }

    /// Whether all N parties are in.
    #[must_use]
    pub fn is_full(&self) -> bool {
        self.members.len() >= usize::from(self.offer.parties)
    }

    /// The roster, once all parties are in.
    #[must_use]
    pub fn roster(&self) -> Option<Roster> {
        if self.is_full() {
            Roster::build(&self.offer, self.members.clone()).ok()
        } else {
            None
        }
    }
}
