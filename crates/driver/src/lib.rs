//! The tokio driver of secure sessions: it runs one [`mpc_did_session::Session`] over a
//! path, switches paths without losing or duplicating bytes, and gives the application
//! ordered byte streams.
//!
//! **Owns**: the session task ([`SessionHandle::spawn`]), [`SessionStream`]s
//! (`AsyncRead + AsyncWrite`), the path hello and the [`PathRouter`] that hands incoming
//! connections to their session ([`path`]), which kind of path each session is on
//! ([`PathInfo`], [`PathStatus`]: direct / quic / relay, for listings and logs), and the
//! session close codes applications use ([`CLOSE_DONE`], [`CLOSE_PARTY_FAILED`]).
//!
//! **Does not**: handshake (the session crate, over DIDComm), find paths (rendezvous:
//! direct TCP, NAT-traversed QUIC, mediator relay — any reliable byte stream is a path), or
//! touch MPyC's sockets (the proxy; `mpc-did-mpc` joins the two).
//!
//! ```text
//!  SessionStream ──write──▶ ┌───────────── session task ─────────────┐ ──records──▶ path (TCP | QUIC | relay)
//!  SessionStream ◀──read─── │ Session: send / handle_record / timers │ ◀──records── path
//!  attach_path(new) ──────▶ │ resume(): RESUME first on every path   │
//!                           └────────────────────────────────────────┘
//! ```
//! One task owns the session and its path; it reads the path only while every stream's
//! reader keeps up (bounded buffers: a slow reader slows the sender through TCP), takes
//! writes only while the session's unacknowledged-bytes window has room, and keeps reading
//! while it writes, so two peers writing at each other cannot deadlock.
//!
//! A stream reads EOF only when the peer finished it; if the session fails or is closed
//! first, reads fail with `ConnectionReset` — MPyC must never mistake a failure for a close.
//!
//! ```no_run
//! # async fn demo(session: mpc_did_session::Session, tcp: tokio::net::TcpStream) -> std::io::Result<()> {
//! use mpc_did_driver::{path, DriverConfig, SessionHandle};
//! use tokio::io::AsyncWriteExt;
//! let handle = SessionHandle::spawn(session, DriverConfig::default());
//! let mut tcp = tcp;
//! path::send_hello(&mut tcp, &handle.path_id()).await?; // we opened this path
//! handle.attach_path(Box::new(tcp)).await?;
//! let mut stream = handle.open_stream().await?;
//! stream.write_all(b"shares").await?;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

mod driver;
pub mod path;

pub use driver::{DriverConfig, PathStatus, SessionHandle, SessionState, SessionStream};
pub use path::{PathError, PathInfo, PathRouter};

/// Session close code: normal end of the MPC run.
pub const CLOSE_DONE: u16 = 0;
/// Session close code: our program failed or was interrupted; the peer must stop too.
pub const CLOSE_PARTY_FAILED: u16 = 1;
