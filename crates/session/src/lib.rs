//! The secure-session protocol of mpc-did: a Noise `KK` handshake carried in DIDComm
//! messages, bound to an MPC session and a pair of DIDs, then a framed, rekeyed, resumable
//! transport of multiplexed byte streams. Specified in `spec/session.md`; the security
//! argument is `spec/security.md`.
//!
//! **Owns**: the DIDComm body types and type URIs of `https://mpc-did.org/session/1.0`
//! ([`messages`]), the handshake ([`InitiatorHandshake`], [`respond`]), the record and frame
//! codec ([`frame`]) and the transport state machine ([`Session`]).
//!
//! **Does not**: open sockets, read clocks, spawn tasks, or build DIDComm envelopes. A driver
//! (the proxy) moves records between [`Session`] and a path (TCP, QUIC, mediator relay),
//! passes the time in milliseconds, and sends the bodies with `mpc-did-didcomm`.
//!
//! ```text
//!  DIDComm (authcrypt, via mediators)           data path (TCP | QUIC | relay)
//!  propose ─▶ ◀─ accept(msg1) ─ handshake(msg2) ─▶        records ⇄ RecordDecoder
//!        │                │                                   │
//!    Proposer ───────── Acceptor ──▶ Session ◀── handle_record(now, record)
//!                                      │  send(now, stream, bytes) / finish / close
//!                                      │  poll_transmit() -> record   (write to the path;
//!                                      │    transmit_into(&mut Outbox): all, to write at once)
//!                                      │  poll_event()    -> Data | StreamFinished | ...
//!                                      │    (poll_event_ref(): the data borrowed, no alloc)
//!                                      │  poll_timeout() / handle_timeout(now)
//!                                      └─ resume(now) after a path switch
//! ```
//!
//! Call order for a driver (as in quinn-proto): after any `send`/`handle_record`/
//! `handle_timeout`/`resume`, drain `poll_transmit` to the path and `poll_event` to the
//! application, then sleep until `poll_timeout` or the next input.
//!
//! ```
//! use mpc_did_session::{Acceptor, Event, Proposer, SessionConfig};
//! # fn main() -> Result<(), mpc_did_session::SessionError> {
//! let roster_hash = [7u8; 32];
//! let (alice, propose) = Proposer::new([1; 16], "mpc-1", roster_hash, "did:key:alice", "did:key:bob");
//! // ... `propose` travels to Bob in an authcrypt DIDComm message ...
//! let (bob, accept) = Acceptor::on_propose(&propose, "mpc-1", roster_hash, "did:key:bob", "did:key:alice")?;
//! let (mut a, handshake) = alice.on_accept(&accept, SessionConfig::default(), 0)?;
//! let mut b = bob.on_handshake(&handshake, SessionConfig::default(), 0)?;
//!
//! let stream = b.open_stream()?;
//! b.send(0, stream, b"hello")?;
//! while let Some(record) = b.poll_transmit() {
//!     a.handle_record(0, &record)?; // in reality: written to and read from a path
//! }
//! assert_eq!(a.poll_event(), Some(Event::Data { stream, data: b"hello".to_vec() }));
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

mod cipher;
mod error;
mod fifo;
pub mod frame;
mod handshake;
pub mod messages;
mod outbox;
mod resolver;
mod session;
mod session_id;

pub use cipher::{epoch_of, EPOCH_BITS, MAX_EPOCH_SKIP};
pub use error::{Result, SessionError};
pub use frame::{Frame, RecordDecoder, StreamState};
pub use handshake::{
    respond, respond_with_fixed_ephemeral_for_testing_only, InitiatorHandshake, Role,
    SessionBinding, StaticKeypair, HANDSHAKE_MSG_LEN, MAX_ID_LEN, NOISE_PARAMS, PROLOGUE_LABEL,
};
pub use messages::{
    AcceptBody, Acceptor, CandidatesBody, CloseBody, HandshakeBody, ProposeBody, Proposer,
};
pub use outbox::Outbox;
pub use session::{Event, EventRef, Session, SessionConfig, SessionStats, MAX_STREAMS_LIMIT};
pub use session_id::SessionId;
