//! DIDComm message bodies of the session protocol and the proposer / acceptor steps that
//! produce and consume them (spec/session.md §2). The DIDComm envelope (authcrypt, routing)
//! is `mpc-did-didcomm`'s job; this module only defines `type` URIs and `body` contents.
//!
//! ```text
//! proposer (Noise responder)                     acceptor (Noise initiator)
//!   propose {session_id, mpc_session_id, roster_hash, suite, noise_static}  ──▶
//!   ◀──  accept {session_id, suite, noise_static, handshake: Noise msg 1}
//!   handshake {session_id, handshake: Noise msg 2}                           ──▶
//!   candidates {...} ◀──▶ (any time after propose)     close {...} ◀──▶ (any time)
//! ```

use serde::{Deserialize, Serialize};

use crate::error::{Result, SessionError};
use crate::handshake::{
    respond, respond_with_fixed_ephemeral_for_testing_only, InitiatorHandshake, SessionBinding,
    StaticKeypair, HANDSHAKE_MSG_LEN, NOISE_PARAMS,
};
use crate::session::{Session, SessionConfig};

/// Protocol identifier (DIDComm v2 "protocol URI"); message types append a name.
pub const PROTOCOL_URI: &str = "https://mpc-did.org/session/1.0";
/// `type` of [`ProposeBody`].
pub const PROPOSE_TYPE: &str = "https://mpc-did.org/session/1.0/propose";
/// `type` of [`AcceptBody`].
pub const ACCEPT_TYPE: &str = "https://mpc-did.org/session/1.0/accept";
/// `type` of [`HandshakeBody`].
pub const HANDSHAKE_TYPE: &str = "https://mpc-did.org/session/1.0/handshake";
/// `type` of [`CandidatesBody`].
pub const CANDIDATES_TYPE: &str = "https://mpc-did.org/session/1.0/candidates";
/// `type` of [`CloseBody`].
pub const CLOSE_TYPE: &str = "https://mpc-did.org/session/1.0/close";
/// Most candidates accepted in one `candidates` body.
pub const MAX_CANDIDATES: usize = 64;

/// `propose`: the proposer announces a secure session and its fresh Noise static key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProposeBody {
    /// 16 random bytes, lowercase hex; also the DIDComm `thid` of the thread.
    pub session_id: String,
    /// The MPC session (lobby) id.
    pub mpc_session_id: String,
    /// The roster hash of spec/lobby.md §3, lowercase hex.
    pub roster_hash: String,
    /// Noise protocol name; must be [`NOISE_PARAMS`].
    pub suite: String,
    /// The proposer's fresh X25519 Noise static public key, lowercase hex.
    pub noise_static: String,
}

/// `accept`: the acceptor's fresh Noise static key and Noise message 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcceptBody {
    /// Echoes the proposal's `session_id`.
    pub session_id: String,
    /// Echoes the proposal's `suite`.
    pub suite: String,
    /// The acceptor's fresh X25519 Noise static public key, lowercase hex.
    pub noise_static: String,
    /// Noise message 1 (48 bytes), lowercase hex.
    pub handshake: String,
}

/// `handshake`: Noise message 2 from the proposer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandshakeBody {
    /// The session's id.
    pub session_id: String,
    /// Noise message 2 (48 bytes), lowercase hex.
    pub handshake: String,
}

/// `candidates`: address candidates for the data path (format: spec/rendezvous.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CandidatesBody {
    /// The session's id.
    pub session_id: String,
    /// The candidate list of spec/rendezvous.md, kept opaque here.
    pub candidates: Vec<serde_json::Value>,
    /// No more candidates will follow from this sender.
    #[serde(default)]
    pub end_of_candidates: bool,
}

/// `close`: end the secure session (or decline a proposal).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloseBody {
    /// The session's id.
    pub session_id: String,
    /// 0 normal close, 1 declined, 2 handshake failed, 3 timeout, 4 protocol error.
    pub code: u16,
    /// Human-readable reason (at most 256 bytes).
    #[serde(default)]
    pub reason: String,
}

impl CandidatesBody {
    /// Checks the limits of a received body.
    ///
    /// # Errors
    /// [`SessionError::Limit`] for more than [`MAX_CANDIDATES`] candidates.
    pub fn check(&self) -> Result<()> {
        if self.candidates.len() > MAX_CANDIDATES {
            return Err(SessionError::Limit("candidates"));
        }
        Ok(())
    }
}

/// Encodes bytes as lowercase hex (the encoding of every binary body field, as in
/// spec/lobby.md).
#[must_use]
pub fn to_hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

/// Decodes a lowercase-hex field of exactly `N` bytes.
///
/// # Errors
/// [`SessionError::Setup`] naming `what` if the field is not lowercase hex of `2N` digits.
pub fn decode_fixed<const N: usize>(field: &str, what: &'static str) -> Result<[u8; N]> {
    if field.len() != 2 * N || field.bytes().any(|c| c.is_ascii_uppercase()) {
        return Err(SessionError::Setup(what));
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(field, &mut out).map_err(|_| SessionError::Setup(what))?;
    Ok(out)
}

/// [`SessionError::Setup`] reason of a proposal in another suite.
const UNSUPPORTED_SUITE: &str = "unsupported suite";
/// [`SessionError::Setup`] reason of a proposal for another MPC session or roster.
const OTHER_BINDING: &str = "proposal for another MPC session or roster";

/// Whether `e`, from [`Acceptor::on_propose`], declines a well-formed proposal (another
/// suite, MPC session or roster: `close` code 1, spec/session.md §2) rather than reports a
/// malformed one (a handshake failure: code 2).
#[must_use]
pub fn is_decline(e: &SessionError) -> bool {
    matches!(e, SessionError::Setup(r) if *r == UNSUPPORTED_SUITE || *r == OTHER_BINDING)
}

fn check_suite(suite: &str) -> Result<()> {
    if suite == NOISE_PARAMS {
        Ok(())
    } else {
        Err(SessionError::Setup(UNSUPPORTED_SUITE))
    }
}

/// The proposer's side: it waits for `accept`, then answers with `handshake`.
#[derive(Debug)]
pub struct Proposer {
    keypair: StaticKeypair,
    session_id: [u8; 16],
    mpc_session_id: String,
    roster_hash: [u8; 32],
    own_did: String,
    peer_did: String,
}

impl Proposer {
    /// Creates a proposal with a fresh static key. `session_id` must be 16 random bytes.
    #[must_use]
    pub fn new(
        session_id: [u8; 16],
        mpc_session_id: &str,
        roster_hash: [u8; 32],
        own_did: &str,
        peer_did: &str,
    ) -> (Self, ProposeBody) {
        Self::with_keypair(
            StaticKeypair::generate(),
            session_id,
            mpc_session_id,
            roster_hash,
            own_did,
            peer_did,
        )
    }

    /// [`Proposer::new`] with a given static key pair (test vectors).
    #[must_use]
    pub fn with_keypair(
        keypair: StaticKeypair,
        session_id: [u8; 16],
        mpc_session_id: &str,
        roster_hash: [u8; 32],
        own_did: &str,
        peer_did: &str,
    ) -> (Self, ProposeBody) {
        let body = ProposeBody {
            session_id: to_hex(&session_id),
            mpc_session_id: mpc_session_id.to_owned(),
            roster_hash: to_hex(&roster_hash),
            suite: NOISE_PARAMS.to_owned(),
            noise_static: to_hex(&keypair.public()),
        };
        let p = Self {
            keypair,
            session_id,
            mpc_session_id: mpc_session_id.to_owned(),
            roster_hash,
            own_did: own_did.to_owned(),
            peer_did: peer_did.to_owned(),
        };
        (p, body)
    }

    /// The binding once the acceptor's static key is known.
    fn binding(&self, acceptor_static: [u8; 32]) -> SessionBinding {
        SessionBinding {
            session_id: self.session_id,
            mpc_session_id: self.mpc_session_id.clone(),
            initiator_did: self.peer_did.clone(),
            responder_did: self.own_did.clone(),
            roster_hash: self.roster_hash,
            initiator_static: acceptor_static,
            responder_static: self.keypair.public(),
        }
    }

    /// Consumes the peer's `accept` (which the caller has checked came, authenticated, from
    /// `peer_did` on this thread) and returns the session and the `handshake` body to send.
    ///
    /// # Errors
    /// [`SessionError::Setup`] if the body names another session or suite or has bad fields;
    /// [`SessionError::Decrypt`] if Noise message 1 does not authenticate.
    pub fn on_accept(
        self,
        accept: &AcceptBody,
        config: SessionConfig,
        now_ms: u64,
    ) -> Result<(Session, HandshakeBody)> {
        self.on_accept_with(None, accept, config, now_ms)
    }

    /// [`Proposer::on_accept`] with an optional fixed ephemeral (test vectors only).
    ///
    /// # Errors
    /// As [`Proposer::on_accept`].
    #[doc(hidden)]
    pub fn on_accept_with(
        self,
        fixed_ephemeral: Option<&[u8; 32]>,
        accept: &AcceptBody,
        config: SessionConfig,
        now_ms: u64,
    ) -> Result<(Session, HandshakeBody)> {
        let sid: [u8; 16] = decode_fixed(&accept.session_id, "session_id")?;
        if sid != self.session_id {
            return Err(SessionError::Setup("accept for another session"));
        }
        check_suite(&accept.suite)?;
        let acceptor_static: [u8; 32] = decode_fixed(&accept.noise_static, "noise_static")?;
        let msg1: [u8; HANDSHAKE_MSG_LEN] = decode_fixed(&accept.handshake, "handshake field")?;
        let binding = self.binding(acceptor_static);
        let (session, msg2) = match fixed_ephemeral {
            Some(e) => respond_with_fixed_ephemeral_for_testing_only(
                &binding,
                &self.keypair,
                &msg1,
                e,
                config,
                now_ms,
            )?,
            None => respond(&binding, &self.keypair, &msg1, config, now_ms)?,
        };
        Ok((
            session,
            HandshakeBody {
                session_id: accept.session_id.clone(),
                handshake: to_hex(&msg2),
            },
        ))
    }
}

/// The acceptor's side between sending `accept` and receiving `handshake`.
#[derive(Debug)]
pub struct Acceptor {
    hs: InitiatorHandshake,
    session_id: [u8; 16],
}

impl Acceptor {
    /// Checks a `propose` (which the caller has checked came, authenticated, from `peer_did`)
    /// against the local view of the MPC session and answers with `accept`.
    ///
    /// # Errors
    /// [`SessionError::Setup`] if the proposal names another MPC session or roster, an
    /// unsupported suite, or has malformed fields.
    pub fn on_propose(
        propose: &ProposeBody,
        expected_mpc_session_id: &str,
        expected_roster_hash: [u8; 32],
        own_did: &str,
        peer_did: &str,
    ) -> Result<(Self, AcceptBody)> {
        Self::on_propose_with(
            StaticKeypair::generate(),
            None,
            propose,
            expected_mpc_session_id,
            expected_roster_hash,
            own_did,
            peer_did,
        )
    }

    /// [`Acceptor::on_propose`] with a given static key and optional fixed ephemeral (test
    /// vectors only: a fixed ephemeral destroys forward secrecy).
    ///
    /// # Errors
    /// As [`Acceptor::on_propose`].
    #[doc(hidden)]
    pub fn on_propose_with(
        keypair: StaticKeypair,
        fixed_ephemeral: Option<&[u8; 32]>,
        propose: &ProposeBody,
        expected_mpc_session_id: &str,
        expected_roster_hash: [u8; 32],
        own_did: &str,
        peer_did: &str,
    ) -> Result<(Self, AcceptBody)> {
        check_suite(&propose.suite)?;
        let session_id: [u8; 16] = decode_fixed(&propose.session_id, "session_id")?;
        let roster_hash: [u8; 32] = decode_fixed(&propose.roster_hash, "roster_hash")?;
        let proposer_static: [u8; 32] = decode_fixed(&propose.noise_static, "noise_static")?;
        if propose.mpc_session_id != expected_mpc_session_id || roster_hash != expected_roster_hash
        {
            return Err(SessionError::Setup(OTHER_BINDING));
        }
        let binding = SessionBinding {
            session_id,
            mpc_session_id: propose.mpc_session_id.clone(),
            initiator_did: own_did.to_owned(),
            responder_did: peer_did.to_owned(),
            roster_hash,
            initiator_static: keypair.public(),
            responder_static: proposer_static,
        };
        let (hs, msg1) = match fixed_ephemeral {
            Some(e) => InitiatorHandshake::start_with_fixed_ephemeral_for_testing_only(
                &binding, &keypair, e,
            )?,
            None => InitiatorHandshake::start(&binding, &keypair)?,
        };
        let body = AcceptBody {
            session_id: propose.session_id.clone(),
            suite: NOISE_PARAMS.to_owned(),
            noise_static: to_hex(&keypair.public()),
            handshake: to_hex(&msg1),
        };
        Ok((Self { hs, session_id }, body))
    }

    /// Consumes the proposer's `handshake` body and returns the established session.
    ///
    /// # Errors
    /// [`SessionError::Setup`] for another session id or malformed fields;
    /// [`SessionError::Decrypt`] if Noise message 2 does not authenticate.
    pub fn on_handshake(
        self,
        body: &HandshakeBody,
        config: SessionConfig,
        now_ms: u64,
    ) -> Result<Session> {
        let sid: [u8; 16] = decode_fixed(&body.session_id, "session_id")?;
        if sid != self.session_id {
            return Err(SessionError::Setup("handshake for another session"));
        }
        let msg2: [u8; HANDSHAKE_MSG_LEN] = decode_fixed(&body.handshake, "handshake field")?;
        self.hs.finish(&msg2, config, now_ms)
    }
}
