//! Thin tokio shells around the STUN cores (feature `tokio`, off by default).
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
mod server;

pub use client::{binding_tcp, binding_udp, classify_nat_udp};
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
    /// No answer within the retransmission schedule.
    #[error("STUN transaction timed out")]
    TimedOut,
}
