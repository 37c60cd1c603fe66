//! The relay client as a state machine without I/O: answers the challenge
//! with a signed [`ClientAuth`](crate::relay::ClientAuth), then turns relay frames into events.
//!
//! ```text
//!  AwaitChallenge ─ServerChallenge─▶ (send ClientAuth) AwaitAuth ─AuthOk─▶ Ready ─▶ packets
//!        └──────────── AuthFailed / Error ─────────────────┴──────────────────────▶ Closed
//! ```

use ed25519_dalek::SigningKey;

use crate::relay::{
    sign_client_auth, ClientToRelay, ErrorCode, OverloadReason, PeerAddr, RelayToClient,
    MAX_PAYLOAD,
};
use crate::RelayError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    AwaitChallenge,
    AwaitAuth,
    Ready,
    Closed,
}

/// What a received frame means for the client's user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientEvent {
    /// Write this frame to the relay (the auth answer, or a Pong).
    Send(ClientToRelay),
    /// Authentication accepted: packets may be sent.
    Ready,
    /// A packet from an authenticated peer.
    Packet {
        /// The sender's Ed25519 key.
        src_key: [u8; 32],
        /// The sender's DID.
        src_did: String,
        /// Opaque payload (session records).
        payload: Vec<u8>,
    },
    /// A destination is not connected to this relay.
    PeerGone(PeerAddr),
    /// The relay dropped something of ours (spec/rendezvous.md §4.5): the
    /// session over this path must resume.
    Overloaded(OverloadReason),
    /// The relay refused us or closed (AuthFailed is `None`).
    Closed(Option<ErrorCode>),
    /// Nothing to do (a Pong).
    Nothing,
    /// A frame that makes no sense once authenticated (a second challenge or AuthOk):
    /// ignored, not fatal, so nothing a relay passes along can end the connection; worth
    /// a log line.
    Stray(&'static str),
}

/// One relay connection's client state.
#[derive(Debug)]
pub struct RelayClient {
    key: SigningKey,
    did: String,
    key_id: String,
    expected_relay: Option<String>,
    state: State,
}

impl RelayClient {
    /// A client that authenticates as `did` with `key` (listed as `key_id`
    /// in the DID document). With `expected_relay`, a challenge from a relay
    /// with another identity is refused (the URL was not the mediator we meant).
    pub fn new(
        key: SigningKey,
        did: impl Into<String>,
        key_id: impl Into<String>,
        expected_relay: Option<String>,
    ) -> Self {
        RelayClient {
            key,
            did: did.into(),
            key_id: key_id.into(),
            expected_relay,
            state: State::AwaitChallenge,
        }
    }

    /// Whether packets may be sent.
    pub fn is_ready(&self) -> bool {
        self.state == State::Ready
    }

    /// Handles one frame from the relay; `now_unix` stamps the auth answer.
    ///
    /// # Errors
    /// [`RelayError::UnexpectedFrame`] for a frame that does not fit the state before
    /// authentication or after close (the connection should be dropped; once `Ready`, an
    /// out-of-place frame is [`ClientEvent::Stray`] instead), [`RelayError::WrongRelay`]
    /// if the challenge names another relay than expected.
    pub fn on_frame(
        &mut self,
        frame: RelayToClient,
        now_unix: u64,
    ) -> Result<ClientEvent, RelayError> {
        let event = match (self.state, frame) {
            (State::Closed, _) => return Err(RelayError::UnexpectedFrame),
            (_, RelayToClient::AuthFailed) => {
                self.state = State::Closed;
                ClientEvent::Closed(None)
            }
            (_, RelayToClient::Error(code)) => {
                self.state = State::Closed;
                ClientEvent::Closed(Some(code))
            }
            (State::AwaitChallenge, RelayToClient::ServerChallenge { relay_id, nonce }) => {
                if self
                    .expected_relay
                    .as_ref()
                    .is_some_and(|want| *want != relay_id)
                {
                    self.state = State::Closed;
                    return Err(RelayError::WrongRelay);
                }
                self.state = State::AwaitAuth;
                ClientEvent::Send(ClientToRelay::ClientAuth(sign_client_auth(
                    &self.key,
                    &self.did,
                    &self.key_id,
                    &relay_id,
                    &nonce,
                    now_unix,
                )))
            }
            (State::AwaitAuth, RelayToClient::AuthOk) => {
                self.state = State::Ready;
                ClientEvent::Ready
            }
            (
                State::Ready,
                RelayToClient::RecvPacket {
                    src_key,
                    src_did,
                    payload,
                },
            ) => ClientEvent::Packet {
                src_key,
                src_did,
                payload,
            },
            (State::Ready, RelayToClient::PeerGone(p)) => ClientEvent::PeerGone(p),
            (State::Ready, RelayToClient::Overloaded(r)) => ClientEvent::Overloaded(r),
            (
                _,
                RelayToClient::Overloaded(
                    r @ (OverloadReason::TooManyClients | OverloadReason::TooManyFromSource),
                ),
            ) => {
                self.state = State::Closed;
                ClientEvent::Overloaded(r)
            }
            (State::Ready | State::AwaitAuth, RelayToClient::Ping(d)) => {
                ClientEvent::Send(ClientToRelay::Pong(d))
            }
            (State::Ready | State::AwaitAuth, RelayToClient::Pong(_)) => ClientEvent::Nothing,
            (State::Ready, RelayToClient::ServerChallenge { .. }) => {
                ClientEvent::Stray("a second ServerChallenge")
            }
            (State::Ready, RelayToClient::AuthOk) => ClientEvent::Stray("a second AuthOk"),
            _ => {
                self.state = State::Closed;
                return Err(RelayError::UnexpectedFrame);
            }
        };
        Ok(event)
    }

    /// A SendPacket frame for `dst`.
    ///
    /// # Errors
    /// [`RelayError::NotAuthenticated`] before `Ready`;
    /// [`RelayError::Encode`] for a payload over [`MAX_PAYLOAD`].
    pub fn send_packet(
        &self,
        dst: PeerAddr,
        payload: Vec<u8>,
    ) -> Result<ClientToRelay, RelayError> {
        if self.state != State::Ready {
            return Err(RelayError::NotAuthenticated);
        }
        if payload.len() > MAX_PAYLOAD {
            return Err(RelayError::Encode("payload too large"));
        }
        Ok(ClientToRelay::SendPacket { dst, payload })
    }
}
