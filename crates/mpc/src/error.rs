//! What can go wrong in an MPC session, grouped by cause.

use std::path::PathBuf;

use mpc_did_lobby::{LobbyError, MpcSessionId, PartyId};
use mpc_did_wallet::{MpcSessionError, WalletError};

/// Why a lobby step or a run failed. Messages say what went wrong and what to do next.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MpcError {
    // --- local state
    /// The wallet failed (locked, no such identity, storage).
    #[error(transparent)]
    Wallet(#[from] WalletError),
    /// An MPC-session record could not be stored or found.
    #[error(transparent)]
    Records(#[from] MpcSessionError),
    /// The wallet has no identity yet.
    #[error("no identity: run `mpc-did id create` first")]
    NoIdentity,
    /// The identity has not registered with a mediator.
    #[error("identity {0:?} has no mediator: run `mpc-did mediator register URL` first")]
    NoMediator(String),
    /// The program file cannot be read.
    #[error("reading {path}: {error}")]
    ProgramFile {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The program file is too large to be an MPyC program.
    #[error("{0} is larger than 16 MiB: not an MPyC program")]
    ProgramTooLarge(PathBuf),
    /// No program file given and none found among the command's arguments.
    #[error("cannot tell which argument is the program file: pass --program FILE")]
    NoProgramFile,

    // --- lobby
    /// The invitation is not to an MPC session, or its offer is unusable.
    #[error("{0}")]
    BadInvitation(String),
    /// Our program's hash is not the one the MPC session pins (spec/lobby.md §4).
    #[error(
        "program mismatch: the MPC session runs {name} with sha256 {expected}, but {path} has \
         sha256 {actual}"
    )]
    ProgramMismatch {
        /// The program's name in the offer or roster.
        name: String,
        /// The pinned hash.
        expected: String,
        /// Our file.
        path: PathBuf,
        /// Its hash.
        actual: String,
    },
    /// `run` refuses a program file whose hash is not the roster's (spec/lobby.md §4).
    #[error(
        "refusing to run {path}: its sha256 is {actual}, but the roster pins {name} with \
         sha256 {expected}"
    )]
    WrongProgram {
        /// The program's name in the roster.
        name: String,
        /// The pinned hash.
        expected: String,
        /// Our file.
        path: PathBuf,
        /// Its hash.
        actual: String,
    },
    /// The MPC session has expired.
    #[error(
        "MPC session {id} expired at {at} (Unix time): create a new one with `mpc-did mpc new`"
    )]
    Expired {
        /// The MPC session.
        id: MpcSessionId,
        /// Its expiry.
        at: u64,
    },
    /// Only the coordinator may do this.
    #[error("you joined MPC session {0} but do not coordinate it: only its coordinator can")]
    NotCoordinator(MpcSessionId),
    /// The roster is not known yet.
    #[error("MPC session {id} has no roster yet: {hint}")]
    NoRoster {
        /// The MPC session.
        id: MpcSessionId,
        /// What to run first.
        hint: &'static str,
    },
    /// The coordinator refused our join (Report Problem 2.0, spec/lobby.md §5).
    #[error("the coordinator refused the join: {code} ({comment})")]
    Refused {
        /// The problem code (`e.p.req.<reason>`).
        code: String,
        /// Its human-readable comment.
        comment: String,
    },
    /// A lobby rule failed (spec/lobby.md §4).
    #[error(transparent)]
    Lobby(#[from] LobbyError),

    // --- network
    /// The control plane (our mediator, a peer's endpoint) failed.
    #[error("{context}: {reason}")]
    ControlPlane {
        /// What we were doing.
        context: String,
        /// Why it failed.
        reason: String,
    },
    /// Waiting took longer than allowed.
    #[error("timed out after {secs} s {what}")]
    Timeout {
        /// What we waited for.
        what: String,
        /// The limit.
        secs: u64,
    },
    /// The secure session with a peer could not be established.
    #[error("secure session with party {party} failed: {reason}")]
    Session {
        /// The peer's party id.
        party: PartyId,
        /// Why.
        reason: String,
    },
    /// The local MPyC proxy or the program could not be started.
    #[error("{0}")]
    Launch(String),
    /// The program's interpreter (the command's first word) cannot be found.
    #[error(
        "cannot start {0:?}: no such program (check the path, or install it); nothing was started"
    )]
    Interpreter(String),
    /// Another party stopped the run (a signed `abort`, spec/lobby.md §8).
    #[error("party {party} ({did}) aborted: {reason}; {next}")]
    PeerAborted {
        /// Its party id.
        party: PartyId,
        /// Its DID.
        did: String,
        /// Its reason code.
        code: String,
        /// Its reason.
        reason: String,
        /// What to do next.
        next: String,
    },
    /// A peer's run carries MPyC over another transport (spec/lobby.md §8 "Same transport").
    #[error(
        "party {party} ({did}) runs with --transport {theirs}, this party with --transport \
         {ours}: every party must choose the same; run `mpc-did run --transport {theirs}` here, \
         or have party {party} run again with --transport {ours}"
    )]
    TransportMismatch {
        /// Its party id.
        party: PartyId,
        /// Its DID.
        did: String,
        /// Its transport.
        theirs: String,
        /// Ours.
        ours: String,
    },
    /// Ctrl-C (before or while the program ran).
    #[error("interrupted (Ctrl-C)")]
    Interrupted,
}

impl MpcError {
    pub(crate) fn control(context: impl Into<String>, e: impl std::fmt::Display) -> Self {
        Self::ControlPlane {
            context: context.into(),
            reason: e.to_string(),
        }
    }
}
