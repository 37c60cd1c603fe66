//! The Noise KK handshake bound to an MPC session and a pair of DIDs (spec/session.md §3–4).

use snow::params::NoiseParams;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::cipher::KEY_LEN;
use crate::error::{Result, SessionError};
use crate::resolver::ZeroizingResolver;
use crate::session::{Session, SessionConfig};

/// The Noise protocol name (spec §3).
pub const NOISE_PARAMS: &str = "Noise_KK_25519_AESGCM_SHA256";
/// First bytes of the prologue: names this protocol and its version (spec §4).
pub const PROLOGUE_LABEL: &[u8] = b"mpc-did-session/1";
/// Length of a handshake message: an ephemeral key and the tag of the empty payload.
pub const HANDSHAKE_MSG_LEN: usize = 32 + 16;
/// Longest DID or MPC session id accepted into a prologue.
pub const MAX_ID_LEN: usize = 2048;

/// Which side of the Noise handshake we are. The *acceptor* of a DIDComm `propose` is the
/// Noise initiator (it can write message 1 as soon as it knows the proposer's static key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Writes Noise message 1; opens even stream ids.
    Initiator,
    /// Writes Noise message 2; opens odd stream ids.
    Responder,
}

/// A fresh per-session X25519 Noise static key pair (spec/security.md §2: never the DID key).
/// Zeroized on drop (derived, so a new field must be zeroizable too). The copy snow keeps in
/// a handshake state is not: see spec/security.md "Claims and their evidence".
#[derive(ZeroizeOnDrop)]
pub struct StaticKeypair {
    secret: [u8; 32],
    public: [u8; 32],
}

impl std::fmt::Debug for StaticKeypair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticKeypair")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl StaticKeypair {
    /// Generates a key pair from the operating system's random source.
    #[must_use]
    pub fn generate() -> Self {
        let secret = x25519_dalek::StaticSecret::random_from_rng(rand_core::OsRng);
        Self::from_secret(secret.to_bytes())
    }

    /// A key pair from a fixed secret (test vectors; a driver restoring a stored session).
    #[must_use]
    pub fn from_secret(mut secret: [u8; 32]) -> Self {
        let s = x25519_dalek::StaticSecret::from(secret);
        secret.zeroize();
        let public = x25519_dalek::PublicKey::from(&s).to_bytes();
        Self {
            secret: s.to_bytes(),
            public,
        }
    }

    /// The public key, announced in the DIDComm `propose` / `accept` body.
    #[must_use]
    pub fn public(&self) -> [u8; 32] {
        self.public
    }
}

/// Everything the handshake is bound to; hashed into the Noise state as the prologue, so a
/// handshake made for one session, pair or roster fails for any other (spec §4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionBinding {
    /// Secure-session id chosen by the proposer (16 random bytes).
    pub session_id: [u8; 16],
    /// The MPC session (lobby) id this secure session serves.
    pub mpc_session_id: String,
    /// DID of the Noise initiator (the acceptor of the `propose`).
    pub initiator_did: String,
    /// DID of the Noise responder (the proposer).
    pub responder_did: String,
    /// SHA-256 of the canonical roster (defined by the lobby protocol).
    pub roster_hash: [u8; 32],
    /// The initiator's announced Noise static public key.
    pub initiator_static: [u8; 32],
    /// The responder's announced Noise static public key.
    pub responder_static: [u8; 32],
}

impl SessionBinding {
    /// The canonical prologue (spec §4):
    /// `label || 0x00 || lp(session_id) || lp(mpc_session_id) || lp(initiator_did) ||
    /// lp(responder_did) || lp(roster_hash) || lp(initiator_static) || lp(responder_static)`
    /// where `lp(x)` is `u16be(len(x)) || x`.
    ///
    /// # Errors
    /// [`SessionError::Limit`] if an id is longer than [`MAX_ID_LEN`] bytes.
    pub fn prologue(&self) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(PROLOGUE_LABEL);
        out.push(0);
        let fields: [&[u8]; 7] = [
            &self.session_id,
            self.mpc_session_id.as_bytes(),
            self.initiator_did.as_bytes(),
            self.responder_did.as_bytes(),
            &self.roster_hash,
            &self.initiator_static,
            &self.responder_static,
        ];
        for f in fields {
            if f.len() > MAX_ID_LEN {
                return Err(SessionError::Limit("prologue field"));
            }
            let n = u16::try_from(f.len()).map_err(|_| SessionError::Limit("prologue field"))?;
            out.extend_from_slice(&n.to_be_bytes());
            out.extend_from_slice(f);
        }
        Ok(out)
    }
}

fn params() -> Result<NoiseParams> {
    NOISE_PARAMS
        .parse()
        .map_err(|_| SessionError::Setup("noise parameters"))
}

fn builder_for<'a>(
    params: NoiseParams,
    prologue: &'a [u8],
    local: &'a StaticKeypair,
    remote: &'a [u8; 32],
    ephemeral: Option<&'a [u8; 32]>,
) -> Result<snow::Builder<'a>> {
    // snow's own X25519 does not zeroize the secrets it holds (src/resolver.rs).
    let mut b = snow::Builder::with_resolver(params, Box::new(ZeroizingResolver))
        .prologue(prologue)
        .and_then(|b| b.local_private_key(&local.secret[..]))
        .and_then(|b| b.remote_public_key(remote))
        .map_err(|_| SessionError::Setup("noise builder"))?;
    if let Some(e) = ephemeral {
        b = b.fixed_ephemeral_key_for_testing_only(e);
    }
    Ok(b)
}

/// The outcome of a finished handshake before it becomes a [`Session`].
pub(crate) struct Split {
    pub(crate) initiator_to_responder: Zeroizing<[u8; KEY_LEN]>,
    pub(crate) responder_to_initiator: Zeroizing<[u8; KEY_LEN]>,
    pub(crate) handshake_hash: [u8; 32],
}

fn split(mut hs: snow::HandshakeState) -> Result<Split> {
    if !hs.is_handshake_finished() {
        return Err(SessionError::State("handshake not finished"));
    }
    let mut handshake_hash = [0u8; 32];
    let h = hs.get_handshake_hash();
    if h.len() != 32 {
        return Err(SessionError::Setup("handshake hash length"));
    }
    handshake_hash.copy_from_slice(h);
    let (a, b) = hs.dangerously_get_raw_split();
    let (a, b) = (Zeroizing::new(a), Zeroizing::new(b));
    Ok(Split {
        initiator_to_responder: a,
        responder_to_initiator: b,
        handshake_hash,
    })
}

/// The initiator between writing Noise message 1 and reading message 2.
pub struct InitiatorHandshake {
    hs: snow::HandshakeState,
}

impl std::fmt::Debug for InitiatorHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InitiatorHandshake").finish_non_exhaustive()
    }
}

impl InitiatorHandshake {
    /// Starts the handshake: returns the state waiting for message 2, and message 1 (48
    /// bytes: `e` and the tag of an empty payload; carried in the DIDComm `accept` body).
    ///
    /// # Errors
    /// [`SessionError::Setup`] if `local` is not the binding's initiator static key or the
    /// Noise state cannot be built; [`SessionError::Limit`] for overlong ids.
    pub fn start(binding: &SessionBinding, local: &StaticKeypair) -> Result<(Self, Vec<u8>)> {
        Self::start_inner(binding, local, None)
    }

    /// [`InitiatorHandshake::start`] with a fixed ephemeral secret. Only for test vectors:
    /// a fixed ephemeral destroys forward secrecy.
    ///
    /// # Errors
    /// As [`InitiatorHandshake::start`].
    #[doc(hidden)]
    pub fn start_with_fixed_ephemeral_for_testing_only(
        binding: &SessionBinding,
        local: &StaticKeypair,
        ephemeral: &[u8; 32],
    ) -> Result<(Self, Vec<u8>)> {
        Self::start_inner(binding, local, Some(ephemeral))
    }

    fn start_inner(
        binding: &SessionBinding,
        local: &StaticKeypair,
        ephemeral: Option<&[u8; 32]>,
    ) -> Result<(Self, Vec<u8>)> {
        if local.public != binding.initiator_static {
            return Err(SessionError::Setup(
                "local key is not the initiator static key",
            ));
        }
        let prologue = binding.prologue()?;
        let mut hs = builder_for(
            params()?,
            &prologue,
            local,
            &binding.responder_static,
            ephemeral,
        )?
        .build_initiator()
        .map_err(|_| SessionError::Setup("noise initiator"))?;
        let mut msg = vec![0u8; HANDSHAKE_MSG_LEN];
        let n = hs
            .write_message(&[], &mut msg)
            .map_err(|_| SessionError::Setup("noise write"))?;
        msg.truncate(n);
        Ok((Self { hs }, msg))
    }

    /// Reads message 2 and returns the established session.
    ///
    /// # Errors
    /// [`SessionError::Decrypt`] if message 2 does not authenticate (wrong keys, another
    /// session's prologue, tampering, wrong length).
    pub fn finish(mut self, msg2: &[u8], config: SessionConfig, now_ms: u64) -> Result<Session> {
        if msg2.len() != HANDSHAKE_MSG_LEN {
            return Err(SessionError::Decrypt);
        }
        let mut payload = [0u8; HANDSHAKE_MSG_LEN];
        let n = self
            .hs
            .read_message(msg2, &mut payload)
            .map_err(|_| SessionError::Decrypt)?;
        if n != 0 {
            return Err(SessionError::Decrypt);
        }
        Session::new(Role::Initiator, split(self.hs)?, config, now_ms)
    }
}

/// The responder's whole part: reads message 1, writes message 2 (carried in the DIDComm
/// `handshake` body) and returns the established session.
///
/// # Errors
/// [`SessionError::Decrypt`] if message 1 does not authenticate; [`SessionError::Setup`] if
/// `local` is not the binding's responder static key.
pub fn respond(
    binding: &SessionBinding,
    local: &StaticKeypair,
    msg1: &[u8],
    config: SessionConfig,
    now_ms: u64,
) -> Result<(Session, Vec<u8>)> {
    respond_inner(binding, local, msg1, None, config, now_ms)
}

/// [`respond`] with a fixed ephemeral secret. Only for test vectors.
///
/// # Errors
/// As [`respond`].
#[doc(hidden)]
pub fn respond_with_fixed_ephemeral_for_testing_only(
    binding: &SessionBinding,
    local: &StaticKeypair,
    msg1: &[u8],
    ephemeral: &[u8; 32],
    config: SessionConfig,
    now_ms: u64,
) -> Result<(Session, Vec<u8>)> {
    respond_inner(binding, local, msg1, Some(ephemeral), config, now_ms)
}

fn respond_inner(
    binding: &SessionBinding,
    local: &StaticKeypair,
    msg1: &[u8],
    ephemeral: Option<&[u8; 32]>,
    config: SessionConfig,
    now_ms: u64,
) -> Result<(Session, Vec<u8>)> {
    if local.public != binding.responder_static {
        return Err(SessionError::Setup(
            "local key is not the responder static key",
        ));
    }
    if msg1.len() != HANDSHAKE_MSG_LEN {
        return Err(SessionError::Decrypt);
    }
    let prologue = binding.prologue()?;
    let mut hs = builder_for(
        params()?,
        &prologue,
        local,
        &binding.initiator_static,
        ephemeral,
    )?
    .build_responder()
    .map_err(|_| SessionError::Setup("noise responder"))?;
    let mut payload = [0u8; HANDSHAKE_MSG_LEN];
    let n = hs
        .read_message(msg1, &mut payload)
        .map_err(|_| SessionError::Decrypt)?;
    if n != 0 {
        return Err(SessionError::Decrypt);
    }
    let mut msg = vec![0u8; HANDSHAKE_MSG_LEN];
    let n = hs
        .write_message(&[], &mut msg)
        .map_err(|_| SessionError::Setup("noise write"))?;
    msg.truncate(n);
    Ok((
        Session::new(Role::Responder, split(hs)?, config, now_ms)?,
        msg,
    ))
}
