//! Thin tokio shells around the STUN and relay cores (feature `tokio`, off by default).
//!
//! ```text
//!  StunServer: UdpSocket(s) ─recv─▶ binding::answer ─send─▶ same socket
//!              TcpListener ─conn─▶ stun::message_len framing ─▶ answer ─▶ write
//!  client:     BindingTransaction::poll ─Transmit─▶ send_to; recv_from ─▶ on_response
//! ```
//!
//! Each socket is owned by exactly one task; the server stops when its
//! handle is dropped or [`StunServer::shutdown`] is awaited.

mod client;
#[cfg(feature = "quic")]
pub mod gather;
#[cfg(feature = "quic")]
pub mod quic;
pub mod relay;
pub mod relay_link;
mod server;
pub mod ws;

pub use client::{binding_tcp, binding_udp, classify_nat_udp};
pub use relay::{RelayConnection, RelayIdentity, RelayStream};
pub use relay_link::{Backoff, RelayDial, RelayLink, RelayLinkEvent};
pub use server::{StunMetrics, StunServer, StunServerConfig};

use crate::StunError;

/// Errors of the async STUN shell.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// Socket error.
    #[error("STUN I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The server answered with an error or an unusable response.
    #[error(transparent)]
    Stun(#[from] StunError),
    /// No answer within the retransmission schedule (or the relay's
    /// authentication time).
    #[error("timed out")]
    TimedOut,
    /// Relay protocol error (authentication refused, malformed frame, ...).
    #[error(transparent)]
    Relay(#[from] crate::RelayError),
    /// WebSocket handshake or transport error.
    #[error("WebSocket: {0}")]
    WebSocket(String),
    /// QUIC connection or endpoint error.
    #[error("QUIC: {0}")]
    Quic(String),
}
