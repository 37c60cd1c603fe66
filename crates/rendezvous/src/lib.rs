//! Rendezvous for mpc-did: how two parties behind NATs find a path to each
//! other, with no I/O.
//!
//! **Owns**
//! - [`stun`]: the STUN codec (RFC 8489 Binding, XOR-MAPPED-ADDRESS,
//!   SOFTWARE, FINGERPRINT, MESSAGE-INTEGRITY check, ERROR-CODE, RFC 5780
//!   OTHER-ADDRESS / RESPONSE-ORIGIN / CHANGE-REQUEST) with strict validation.
//! - [`binding`]: the STUN server's pure [`binding::answer`] and the client's
//!   Binding transaction with RFC 8489 retransmission timing.
//! - [`nat`]: NAT mapping classification (RFC 5780 §4.3).
//! - [`relay`]: the relay frame codec (DERP / iroh-relay style) and the
//!   DID-key challenge/response transcript.
//! - [`relay_server`]: the relay's client table, per-source connection limits,
//!   bounded queues shared fairly between senders, receivers' allow-lists, rate
//!   limits, timeouts and metrics as a state machine; [`relay_client`]: the
//!   client's side (challenge answer, events).
//! - [`candidate`]: candidates and the JSON candidate exchange format (which
//!   one carries a session is `mpc-did-connect`'s choice, spec/session.md §7.5).
//! - `net` (feature `tokio`, off by default): a UDP+TCP STUN server task (TCP
//!   slots capped in all and per source), a
//!   STUN client (server-reflexive discovery, NAT classification) and the
//!   relay client with per-peer byte streams (`net::relay`); with feature
//!   `quic` also QUIC hole punching on quinn (`net::quic`) and candidate
//!   gathering on the QUIC socket (`net::gather`) — thin shells over the
//!   cores above.
//!
//! **Does not** (outside `net`): open sockets, spawn tasks, read clocks (time is a
//! parameter), resolve DIDs (the caller passes the key), or see session
//! plaintext (relay payloads are opaque Noise frames). The mediator and the
//! transport crate wrap these cores in tokio.
//!
//! ```text
//!  party A                       mediator (STUN + relay)                 party B
//!  BindingTransaction ──STUN──▶ binding::answer ──▶ srflx address
//!  CandidateSet ═══════════ DIDComm (session protocol) ══════════════▶ CandidateSet
//!  (the party checks the candidates and picks the path: mpc-did-connect)
//!  ClientToRelay::SendPacket ──▶ RelayServer ──▶ RelayToClient::RecvPacket ──▶ B
//! ```
//!
//! # Example
//! ```
//! use mpc_did_rendezvous::binding::{answer, BindingTransaction, RetransmitSchedule, TransactionPoll};
//! use std::time::Instant;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let now = Instant::now();
//! let mut tx = BindingTransaction::new(RetransmitSchedule::default(), now)?;
//! assert_eq!(tx.poll(now), TransactionPoll::Transmit);
//! // The mediator answers the datagram it got from 203.0.113.7:40000 ...
//! let reply = answer(tx.request(), "203.0.113.7:40000".parse()?, "198.51.100.1:3478".parse()?, None)?
//!     .ok_or("no reply")?;
//! // ... and the client learns its server-reflexive address.
//! let got = tx.on_response(&reply, now)?.ok_or("not matched")?;
//! assert_eq!(got.mapped.to_string(), "203.0.113.7:40000");
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod binding;
pub mod candidate;
mod error;
pub mod nat;
#[cfg(feature = "tokio")]
pub mod net;
pub mod relay;
pub mod relay_client;
pub mod relay_server;
pub mod source;
pub mod stun;

pub use error::{CandidateError, RelayError, StunError};
