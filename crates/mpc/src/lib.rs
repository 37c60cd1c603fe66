//! The MPC-session shell: a party's side of an MPC session, with I/O.
//!
//! **Owns**: the lobby carried over DIDComm — [`lobby::new_session`], [`lobby::invitation`],
//! [`lobby::join`] and [`lobby::host`] with the spec/lobby.md §4 checks and Report Problem
//! refusals — the run of a party ([`run::run_party`]: the program checked against the
//! roster, a secure session with every other party via [`run::establish_all`], the local
//! MPyC proxy and the program via [`run::run_over_sessions`]), and the proxy's stream
//! sources: [`PartyTransport`] over a party's sessions, and
//! [`didcomm_transport::DidcommTransport`], per-message DIDComm (each MPyC message one
//! authcrypt message, directly or through the mediators: `run --transport didcomm`, the
//! e3 matrix's `didcomm-*` modes). Every run is a fresh attempt
//! (spec/lobby.md §8): the parties agree on each other's attempt (`ready`) before
//! negotiating, each secure session is bound to both attempts, and a party that cannot go
//! on sends every peer a signed `abort` (the rules are `mpc_did_lobby::attempt`, no I/O).
//! Results are stored as the wallet's MPC-session records
//! ([`mpc_did_wallet::MpcSessions`]). Errors are one typed enum, [`MpcError`].
//!
//! **Does not**: define the lobby's rules (party ids, roster hash, the checks themselves:
//! `mpc-did-lobby`, no I/O), negotiate or carry secure sessions (`mpc-did-connect`,
//! `mpc-did-driver`), touch MPyC's sockets (`mpc-did-proxy`), talk to a mediator other than
//! through `mpc-did-agent`, parse command lines or print (`wallet-cli`: `progress`
//! callbacks get one line per step).
//!
//! ```text
//!   wallet-cli (parse, print)        benches, demo
//!        │                              │
//!        ▼                              ▼
//!   mpc ── lobby::{new_session, join, host} ── agent (DIDComm via the mediator)
//!     │        └── mpc_did_lobby (rules, no I/O)
//!     ├── run::run_party ── ready/abort (attempts) ── agent
//!     │         ├── establish_all ── connect ── driver (secure sessions)
//!     │         ├── run_over_sessions ── PartyTransport ── proxy ── MPyC
//!     │         └── (--transport didcomm) didcomm_transport ── agent ── proxy ── MPyC
//!     └── records ── wallet (MpcSessions, registered mediator)
//! ```
//!
//! ```no_run
//! # async fn demo(home: &std::path::Path) -> Result<(), mpc_did_mpc::MpcError> {
//! use std::time::Duration;
//! let progress = |s: String| eprintln!("{s}");
//! let rec = mpc_did_mpc::lobby::host(home, None, Duration::from_secs(600), &progress).await?;
//! println!("roster of {} parties", rec.roster.map_or(0, |r| r.parties.len()));
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod didcomm_transport;
mod error;
pub mod lobby;
pub mod party;
pub mod run;
mod transport;

use std::path::Path;

pub use error::MpcError;
pub use mpc_did_lobby::MpcSessionId;
pub use mpc_did_wallet::{MpcSessionRecord, MpcSessions};
pub use party::PathPolicy;
pub use transport::PartyTransport;

/// Where long operations report their steps, one line each (the CLI prints them).
pub type Progress<'a> = &'a (dyn Fn(String) + Sync);

/// The largest program file we hash (MPyC programs are small scripts).
const MAX_PROGRAM_BYTES: u64 = 16 << 20;

/// Read a program file (bounded) for hashing.
///
/// # Errors
/// The file cannot be read or is too large.
pub fn read_program(path: &Path) -> Result<Vec<u8>, MpcError> {
    let err = |error| MpcError::ProgramFile {
        path: path.to_path_buf(),
        error,
    };
    let meta = std::fs::metadata(path).map_err(err)?;
    if meta.len() > MAX_PROGRAM_BYTES {
        return Err(MpcError::ProgramTooLarge(path.to_path_buf()));
    }
    std::fs::read(path).map_err(err)
}
