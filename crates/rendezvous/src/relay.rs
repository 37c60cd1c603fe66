//! Relay protocol: frame codec and the client authentication transcript.
//!
//! Every frame is `type: u8 | body_len: u32 BE | body`, the same over a
//! WebSocket binary message (one frame per message) and over plain TCP (a
//! stream of frames). Message enums are named by direction, as iroh's relay
//! protocol does. See `spec/rendezvous.md` §4 for the byte layout.
//!
//! ```text
//! client                                relay (mediator)
//!   │ ◀── ServerChallenge{relay_id, nonce} ──│
//!   │ ─── ClientAuth{did, key_id, ts, sig} ─▶│ verify sig with the DID document's key
//!   │ ◀── AuthOk | AuthFailed ───────────────│
//!   │ ─── AllowPeers{peers} (optional) ─────▶│ only these senders reach us
//!   │ ─── SendPacket{dst, payload} ─────────▶│ ── RecvPacket{src, payload} ─▶ peer
//!   │ ◀── PeerGone | Overloaded | Error ─────│
//! ```

use ed25519_dalek::{Signature, Signer};
/// Re-exported so callers use the same ed25519-dalek version as this crate.
pub use ed25519_dalek::{SigningKey, VerifyingKey};

use crate::RelayError;

/// Largest payload of one SendPacket / RecvPacket: the largest Noise
/// message (65,535 bytes), so one session frame always fits in one relay frame.
pub const MAX_PAYLOAD: usize = 65_535;
/// Largest frame body: a payload plus the longest header fields.
pub const MAX_FRAME_LEN: usize = MAX_PAYLOAD + 2 + 32 + 2 + MAX_DID_LEN;
/// Frame header: type byte + u32 length.
pub const FRAME_HEADER_LEN: usize = 5;
/// Longest DID accepted on the wire (did:web with a path stays far below).
pub const MAX_DID_LEN: usize = 1024;
/// Longest key id (DID URL fragment or full DID URL).
pub const MAX_KEY_ID_LEN: usize = 1024 + 128;
/// Longest relay identity string in a challenge.
pub const MAX_RELAY_ID_LEN: usize = 1024;
/// Most peers one [`ClientToRelay::AllowPeers`] frame may list (64 DIDs of the longest
/// length still fit one frame body).
pub const MAX_ALLOW_PEERS: usize = 64;
/// Domain separator of the authentication transcript.
pub const AUTH_DOMAIN: &[u8] = b"mpc-did/relay-auth/v1\0";

/// Who a packet is for: a peer's Ed25519 key or its DID.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PeerAddr {
    /// The raw Ed25519 public key the peer authenticated with.
    Key([u8; 32]),
    /// The peer's DID.
    Did(String),
}

/// Why the relay dropped something (carried by [`RelayToClient::Overloaded`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OverloadReason {
    /// The sender exceeded its byte-rate limit.
    RateLimited,
    /// The destination's queue was full; the packet was dropped.
    PeerQueueFull,
    /// The server is at its client limit (then it closes the connection).
    TooManyClients,
    /// The client's source address is at its connection limit (then it closes).
    TooManyFromSource,
    /// Reason code from a newer peer.
    Other(u8),
}

impl OverloadReason {
    fn code(self) -> u8 {
        match self {
            OverloadReason::RateLimited => 1,
            OverloadReason::PeerQueueFull => 2,
            OverloadReason::TooManyClients => 3,
            OverloadReason::TooManyFromSource => 4,
            OverloadReason::Other(c) => c,
        }
    }
    fn from_code(c: u8) -> Self {
        match c {
            1 => OverloadReason::RateLimited,
            2 => OverloadReason::PeerQueueFull,
            3 => OverloadReason::TooManyClients,
            4 => OverloadReason::TooManyFromSource,
            c => OverloadReason::Other(c),
        }
    }
}

/// Error codes of [`RelayToClient::Error`]; the relay closes the connection after sending one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// A frame did not parse.
    Malformed,
    /// A frame body over the limit.
    FrameTooLarge,
    /// A packet before authentication.
    NotAuthenticated,
    /// No frame within the idle timeout.
    IdleTimeout,
    /// Another connection authenticated with the same key.
    Replaced,
    /// Code from a newer peer.
    Other(u16),
}

impl ErrorCode {
    fn code(self) -> u16 {
        match self {
            ErrorCode::Malformed => 1,
            ErrorCode::FrameTooLarge => 2,
            ErrorCode::NotAuthenticated => 3,
            ErrorCode::IdleTimeout => 4,
            ErrorCode::Replaced => 5,
            ErrorCode::Other(c) => c,
        }
    }
    fn from_code(c: u16) -> Self {
        match c {
            1 => ErrorCode::Malformed,
            2 => ErrorCode::FrameTooLarge,
            3 => ErrorCode::NotAuthenticated,
            4 => ErrorCode::IdleTimeout,
            5 => ErrorCode::Replaced,
            c => ErrorCode::Other(c),
        }
    }
}

/// The client's answer to a challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientAuth {
    /// The client's DID.
    pub did: String,
    /// The verification method (key id) in the DID document that signed.
    pub key_id: String,
    /// Client clock, seconds since the Unix epoch.
    pub timestamp: u64,
    /// Ed25519 signature over [`auth_transcript`].
    pub signature: [u8; 64],
}

/// Frames a client sends to the relay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientToRelay {
    /// 0x01: authentication.
    ClientAuth(ClientAuth),
    /// 0x02: forward `payload` (opaque, Noise-encrypted) to `dst`.
    SendPacket {
        /// Destination peer.
        dst: PeerAddr,
        /// Opaque bytes, at most [`MAX_PAYLOAD`].
        payload: Vec<u8>,
    },
    /// 0x03: liveness probe; the relay answers Pong with the same bytes.
    Ping([u8; 8]),
    /// 0x04: answer to the relay's Ping.
    Pong([u8; 8]),
    /// 0x05: from now on accept packets only from these senders (matched by key or DID);
    /// `None` accepts everyone again (the default). Replaces any earlier list. Packets
    /// from others are dropped at the relay and their sender gets `PeerGone`, as if we were
    /// not connected (spec/rendezvous.md §4.4).
    AllowPeers(Option<Vec<PeerAddr>>),
}

/// Frames the relay sends to a client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RelayToClient {
    /// 0x41: first frame on every connection.
    ServerChallenge {
        /// The relay's identity (its DID), bound into the transcript so a
        /// signature for one relay cannot be replayed to another.
        relay_id: String,
        /// Fresh random nonce.
        nonce: [u8; 32],
    },
    /// 0x42: authentication accepted.
    AuthOk,
    /// 0x43: authentication refused (opaque); the relay closes.
    AuthFailed,
    /// 0x44: a packet from an authenticated peer.
    RecvPacket {
        /// The sender's authenticated Ed25519 key.
        src_key: [u8; 32],
        /// The sender's DID.
        src_did: String,
        /// Opaque bytes.
        payload: Vec<u8>,
    },
    /// 0x45: the destination is not connected to this relay.
    PeerGone(PeerAddr),
    /// 0x46: liveness probe.
    Ping([u8; 8]),
    /// 0x47: answer to the client's Ping.
    Pong([u8; 8]),
    /// 0x48: something was dropped because of a limit.
    Overloaded(OverloadReason),
    /// 0x49: fatal error; the relay closes.
    Error(ErrorCode),
}

/// The bytes a client signs (spec/rendezvous.md §4.3): domain separator,
/// then relay id, nonce, client DID, key id (each string u16-length
/// prefixed), then the timestamp (u64 BE).
pub fn auth_transcript(
    relay_id: &str,
    nonce: &[u8; 32],
    did: &str,
    key_id: &str,
    timestamp: u64,
) -> Vec<u8> {
    let mut t =
        Vec::with_capacity(AUTH_DOMAIN.len() + 48 + relay_id.len() + did.len() + key_id.len());
    t.extend_from_slice(AUTH_DOMAIN);
    // Strings are u16-length prefixed so field boundaries are unambiguous.
    // The codec caps them far below 65,535 bytes; a longer string is clamped
    // here, and the codec would refuse to carry it anyway.
    push_len_prefixed(&mut t, relay_id.as_bytes());
    t.extend_from_slice(nonce);
    push_len_prefixed(&mut t, did.as_bytes());
    push_len_prefixed(&mut t, key_id.as_bytes());
    t.extend_from_slice(&timestamp.to_be_bytes());
    t
}

fn push_len_prefixed(t: &mut Vec<u8>, s: &[u8]) {
    let n = s.len().min(usize::from(u16::MAX));
    t.extend_from_slice(&(n as u16).to_be_bytes());
    t.extend_from_slice(s.get(..n).unwrap_or_default());
}

/// Builds a [`ClientAuth`] answering `relay_id`/`nonce`.
pub fn sign_client_auth(
    key: &SigningKey,
    did: &str,
    key_id: &str,
    relay_id: &str,
    nonce: &[u8; 32],
    timestamp: u64,
) -> ClientAuth {
    let sig = key.sign(&auth_transcript(relay_id, nonce, did, key_id, timestamp));
    ClientAuth {
        did: did.to_owned(),
        key_id: key_id.to_owned(),
        timestamp,
        signature: sig.to_bytes(),
    }
}

/// Checks a [`ClientAuth`] against the challenge this connection got and the
/// key the DID document lists under `auth.key_id` (resolved by the caller).
/// The timestamp must lie within `max_skew_secs` of `now_unix`: the nonce
/// already prevents replay; the timestamp bounds how long a captured
/// signature over a leaked nonce stays useful.
///
/// # Errors
/// [`RelayError::AuthenticationFailed`] for any failure (opaque).
pub fn verify_client_auth(
    auth: &ClientAuth,
    relay_id: &str,
    nonce: &[u8; 32],
    key: &VerifyingKey,
    now_unix: u64,
    max_skew_secs: u64,
) -> Result<(), RelayError> {
    if auth.timestamp.abs_diff(now_unix) > max_skew_secs {
        return Err(RelayError::AuthenticationFailed);
    }
    let msg = auth_transcript(relay_id, nonce, &auth.did, &auth.key_id, auth.timestamp);
    key.verify_strict(&msg, &Signature::from_bytes(&auth.signature))
        .map_err(|_| RelayError::AuthenticationFailed)
}

// ---------------------------------------------------------------- codec

impl ClientToRelay {
    fn frame_type(&self) -> u8 {
        match self {
            ClientToRelay::ClientAuth(_) => 0x01,
            ClientToRelay::SendPacket { .. } => 0x02,
            ClientToRelay::Ping(_) => 0x03,
            ClientToRelay::Pong(_) => 0x04,
            ClientToRelay::AllowPeers(_) => 0x05,
        }
    }

    fn body_len(&self) -> usize {
        match self {
            ClientToRelay::ClientAuth(a) => 2 + a.did.len() + 2 + a.key_id.len() + 8 + 64,
            ClientToRelay::SendPacket { dst, payload } => peer_len(dst) + payload.len(),
            ClientToRelay::Ping(_) | ClientToRelay::Pong(_) => 8,
            ClientToRelay::AllowPeers(None) => 1,
            ClientToRelay::AllowPeers(Some(peers)) => 3 + peers.iter().map(peer_len).sum::<usize>(),
        }
    }

    /// Bytes [`Self::write_to`] appends.
    pub fn encoded_len(&self) -> usize {
        FRAME_HEADER_LEN + self.body_len()
    }

    /// Appends the encoded frame to `buf`.
    ///
    /// # Errors
    /// [`RelayError::Encode`] if a field exceeds its limit (DID, key id,
    /// payload, more than [`MAX_ALLOW_PEERS`] peers); `buf` is left unchanged then.
    pub fn write_to(&self, buf: &mut Vec<u8>) -> Result<(), RelayError> {
        let start = buf.len();
        let r = self.write_inner(buf);
        if r.is_err() {
            buf.truncate(start);
        }
        r
    }

    fn write_inner(&self, buf: &mut Vec<u8>) -> Result<(), RelayError> {
        write_header(buf, self.frame_type(), self.body_len())?;
        match self {
            ClientToRelay::ClientAuth(a) => {
                put_str(buf, &a.did, MAX_DID_LEN)?;
                put_str(buf, &a.key_id, MAX_KEY_ID_LEN)?;
                buf.extend_from_slice(&a.timestamp.to_be_bytes());
                buf.extend_from_slice(&a.signature);
            }
            ClientToRelay::SendPacket { dst, payload } => {
                put_peer(buf, dst)?;
                put_payload(buf, payload)?;
            }
            ClientToRelay::Ping(d) | ClientToRelay::Pong(d) => buf.extend_from_slice(d),
            ClientToRelay::AllowPeers(None) => buf.push(0),
            ClientToRelay::AllowPeers(Some(peers)) => {
                if peers.len() > MAX_ALLOW_PEERS {
                    return Err(RelayError::Encode("too many allowed peers"));
                }
                buf.push(1);
                buf.extend_from_slice(&(peers.len() as u16).to_be_bytes());
                for p in peers {
                    put_peer(buf, p)?;
                }
            }
        }
        Ok(())
    }

    /// The encoded frame as a new vector.
    ///
    /// # Errors
    /// As [`Self::write_to`].
    pub fn to_bytes(&self) -> Result<Vec<u8>, RelayError> {
        let mut v = Vec::with_capacity(self.encoded_len());
        self.write_to(&mut v)?;
        Ok(v)
    }

    /// Decodes one frame from the front of `buf`: `Ok(None)` if more bytes
    /// are needed, else the frame and the bytes it used.
    ///
    /// # Errors
    /// [`RelayError::FrameTooLarge`] as soon as the header announces more
    /// than [`MAX_FRAME_LEN`] (before buffering it), `UnknownFrameType`,
    /// `Malformed` (including trailing bytes inside the body).
    pub fn decode(buf: &[u8]) -> Result<Option<(Self, usize)>, RelayError> {
        let Some((typ, body, used)) = split_frame(buf)? else {
            return Ok(None);
        };
        let mut r = Reader(body);
        let msg = match typ {
            0x01 => ClientToRelay::ClientAuth(ClientAuth {
                did: r.str(MAX_DID_LEN)?,
                key_id: r.str(MAX_KEY_ID_LEN)?,
                timestamp: u64::from_be_bytes(r.array()?),
                signature: r.array()?,
            }),
            0x02 => ClientToRelay::SendPacket {
                dst: r.peer()?,
                payload: r.payload()?,
            },
            0x03 => ClientToRelay::Ping(r.array()?),
            0x04 => ClientToRelay::Pong(r.array()?),
            0x05 => ClientToRelay::AllowPeers(match r.array::<1>()?[0] {
                0 => None,
                1 => {
                    let n = usize::from(u16::from_be_bytes(r.array()?));
                    if n > MAX_ALLOW_PEERS {
                        return Err(RelayError::Malformed);
                    }
                    let mut peers = Vec::with_capacity(n);
                    for _ in 0..n {
                        peers.push(r.peer()?);
                    }
                    Some(peers)
                }
                _ => return Err(RelayError::Malformed),
            }),
            t => return Err(RelayError::UnknownFrameType(t)),
        };
        r.finish()?;
        Ok(Some((msg, used)))
    }
}

impl RelayToClient {
    fn frame_type(&self) -> u8 {
        match self {
            RelayToClient::ServerChallenge { .. } => 0x41,
            RelayToClient::AuthOk => 0x42,
            RelayToClient::AuthFailed => 0x43,
            RelayToClient::RecvPacket { .. } => 0x44,
            RelayToClient::PeerGone(_) => 0x45,
            RelayToClient::Ping(_) => 0x46,
            RelayToClient::Pong(_) => 0x47,
            RelayToClient::Overloaded(_) => 0x48,
            RelayToClient::Error(_) => 0x49,
        }
    }

    fn body_len(&self) -> usize {
        match self {
            RelayToClient::ServerChallenge { relay_id, .. } => 2 + relay_id.len() + 32,
            RelayToClient::AuthOk | RelayToClient::AuthFailed => 0,
            RelayToClient::RecvPacket {
                src_did, payload, ..
            } => 32 + 2 + src_did.len() + payload.len(),
            RelayToClient::PeerGone(p) => peer_len(p),
            RelayToClient::Ping(_) | RelayToClient::Pong(_) => 8,
            RelayToClient::Overloaded(_) => 1,
            RelayToClient::Error(_) => 2,
        }
    }

    /// Bytes [`Self::write_to`] appends.
    pub fn encoded_len(&self) -> usize {
        FRAME_HEADER_LEN + self.body_len()
    }

    /// Appends the encoded frame to `buf`.
    ///
    /// # Errors
    /// [`RelayError::Encode`] if a field exceeds its limit; `buf` is left
    /// unchanged then.
    pub fn write_to(&self, buf: &mut Vec<u8>) -> Result<(), RelayError> {
        let start = buf.len();
        let r = self.write_inner(buf);
        if r.is_err() {
            buf.truncate(start);
        }
        r
    }

    fn write_inner(&self, buf: &mut Vec<u8>) -> Result<(), RelayError> {
        write_header(buf, self.frame_type(), self.body_len())?;
        match self {
            RelayToClient::ServerChallenge { relay_id, nonce } => {
                put_str(buf, relay_id, MAX_RELAY_ID_LEN)?;
                buf.extend_from_slice(nonce);
            }
            RelayToClient::AuthOk | RelayToClient::AuthFailed => {}
            RelayToClient::RecvPacket {
                src_key,
                src_did,
                payload,
            } => {
                buf.extend_from_slice(src_key);
                put_str(buf, src_did, MAX_DID_LEN)?;
                put_payload(buf, payload)?;
            }
            RelayToClient::PeerGone(p) => put_peer(buf, p)?,
            RelayToClient::Ping(d) | RelayToClient::Pong(d) => buf.extend_from_slice(d),
            RelayToClient::Overloaded(r) => buf.push(r.code()),
            RelayToClient::Error(c) => buf.extend_from_slice(&c.code().to_be_bytes()),
        }
        Ok(())
    }

    /// The encoded frame as a new vector.
    ///
    /// # Errors
    /// As [`Self::write_to`].
    pub fn to_bytes(&self) -> Result<Vec<u8>, RelayError> {
        let mut v = Vec::with_capacity(self.encoded_len());
        self.write_to(&mut v)?;
        Ok(v)
    }

    /// Appends the encoded frame to `buf` up to a `RecvPacket`'s payload and returns that
    /// payload (an empty slice for every other frame, which is appended whole): the bytes
    /// appended followed by the returned slice are exactly those of [`Self::write_to`]. A
    /// writer passes the payload to a gathering write instead of copying it.
    ///
    /// # Errors
    /// As [`Self::write_to`]; `buf` is left unchanged then.
    pub fn write_head_to(&self, buf: &mut Vec<u8>) -> Result<&[u8], RelayError> {
        let RelayToClient::RecvPacket {
            src_key,
            src_did,
            payload,
        } = self
        else {
            self.write_to(buf)?;
            return Ok(&[]);
        };
        if payload.len() > MAX_PAYLOAD {
            return Err(RelayError::Encode("payload too large"));
        }
        let start = buf.len();
        let r = write_header(buf, self.frame_type(), self.body_len()).and_then(|()| {
            buf.extend_from_slice(src_key);
            put_str(buf, src_did, MAX_DID_LEN)
        });
        if let Err(e) = r {
            buf.truncate(start);
            return Err(e);
        }
        Ok(payload)
    }

    /// Decodes one frame from the front of `buf` (see [`ClientToRelay::decode`]).
    ///
    /// # Errors
    /// As [`ClientToRelay::decode`].
    pub fn decode(buf: &[u8]) -> Result<Option<(Self, usize)>, RelayError> {
        let Some((typ, body, used)) = split_frame(buf)? else {
            return Ok(None);
        };
        let mut r = Reader(body);
        let msg = match typ {
            0x41 => RelayToClient::ServerChallenge {
                relay_id: r.str(MAX_RELAY_ID_LEN)?,
                nonce: r.array()?,
            },
            0x42 => RelayToClient::AuthOk,
            0x43 => RelayToClient::AuthFailed,
            0x44 => RelayToClient::RecvPacket {
                src_key: r.array()?,
                src_did: r.str(MAX_DID_LEN)?,
                payload: r.payload()?,
            },
            0x45 => RelayToClient::PeerGone(r.peer()?),
            0x46 => RelayToClient::Ping(r.array()?),
            0x47 => RelayToClient::Pong(r.array()?),
            0x48 => RelayToClient::Overloaded(OverloadReason::from_code(r.array::<1>()?[0])),
            0x49 => RelayToClient::Error(ErrorCode::from_code(u16::from_be_bytes(r.array()?))),
            t => return Err(RelayError::UnknownFrameType(t)),
        };
        r.finish()?;
        Ok(Some((msg, used)))
    }
}

/// A `SendPacket` frame encoded straight from a borrowed payload (the same bytes as
/// [`ClientToRelay::write_to`] of `SendPacket{dst, payload}`, without first copying the
/// payload into a frame value). Clients build outgoing packets with it so each payload is
/// copied once on its way to the socket.
///
/// # Errors
/// [`RelayError::Encode`] for a payload over [`MAX_PAYLOAD`] or a DID over [`MAX_DID_LEN`].
pub fn encode_send_packet(dst: &PeerAddr, payload: &[u8]) -> Result<Vec<u8>, RelayError> {
    let body = peer_len(dst) + payload.len();
    let mut buf = Vec::with_capacity(FRAME_HEADER_LEN + body);
    write_header(&mut buf, 0x02, body)?;
    put_peer(&mut buf, dst)?;
    put_payload(&mut buf, payload)?;
    Ok(buf)
}

/// Bytes of the header and destination of an encoded `SendPacket` frame (where its payload
/// starts); `None` if `frame` is not a whole `SendPacket` frame.
fn send_packet_prefix(frame: &[u8]) -> Option<usize> {
    if frame.first() != Some(&0x02) {
        return None;
    }
    let (_, _, used) = split_frame(frame).ok()??;
    if used != frame.len() {
        return None;
    }
    let prefix = match frame.get(FRAME_HEADER_LEN)? {
        0 => FRAME_HEADER_LEN + 1 + 32,
        1 => {
            let l = frame.get(FRAME_HEADER_LEN + 1..FRAME_HEADER_LEN + 3)?;
            FRAME_HEADER_LEN + 3 + usize::from(u16::from_be_bytes([l[0], l[1]]))
        }
        _ => return None,
    };
    (prefix <= frame.len()).then_some(prefix)
}

/// Appends the payload of the encoded `SendPacket` frame `next` to the encoded `SendPacket`
/// frame `frame` when both go to the same destination (same address bytes) and the joined
/// payload still fits [`MAX_PAYLOAD`]; returns whether it did (then `next` is consumed
/// into `frame`). Relay payloads are a byte stream (spec/rendezvous.md §4.4, "Coalescing"),
/// so two packets to one peer may travel as one: fewer frames for the relay to handle.
pub fn coalesce_send_packets(frame: &mut Vec<u8>, next: &[u8]) -> bool {
    let (Some(p), Some(q)) = (send_packet_prefix(frame), send_packet_prefix(next)) else {
        return false;
    };
    if p != q || frame.get(FRAME_HEADER_LEN..p) != next.get(FRAME_HEADER_LEN..q) {
        return false;
    }
    let (Some(tail), payload_len) = (next.get(q..), frame.len() - p) else {
        return false;
    };
    if payload_len + tail.len() > MAX_PAYLOAD {
        return false;
    }
    let Ok(body) = u32::try_from(frame.len() - FRAME_HEADER_LEN + tail.len()) else {
        return false;
    };
    frame.extend_from_slice(tail);
    if let Some(len) = frame.get_mut(1..FRAME_HEADER_LEN) {
        len.copy_from_slice(&body.to_be_bytes());
    }
    true
}

/// Bytes of the whole frame at the front of `buf` (header included) once it is all there;
/// `Ok(None)` while more bytes are needed. Lets a stream reader cut a frame off its buffer
/// before decoding it.
///
/// # Errors
/// [`RelayError::FrameTooLarge`] as [`ClientToRelay::decode`].
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, RelayError> {
    Ok(split_frame(buf)?.map(|(_, _, used)| used))
}

/// A `RecvPacket` frame read in place: the sender and where the payload lies in the frame's
/// bytes, so a client can hand the payload on without copying it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecvPacketRef<'a> {
    /// The sender's authenticated Ed25519 key.
    pub src_key: [u8; 32],
    /// The sender's DID.
    pub src_did: &'a str,
    /// The payload's byte range within the frame.
    pub payload: std::ops::Range<usize>,
}

/// Reads `frame` — exactly one whole encoded frame — as a `RecvPacket` without copying;
/// `Ok(None)` when it is another frame type (decode it with [`RelayToClient::decode`]).
///
/// # Errors
/// As [`RelayToClient::decode`] for a malformed `RecvPacket`, and `Malformed` when
/// `frame` holds more or less than one frame.
pub fn recv_packet_ref(frame: &[u8]) -> Result<Option<RecvPacketRef<'_>>, RelayError> {
    if frame.first() != Some(&0x44) {
        return Ok(None);
    }
    let Some((_, body, used)) = split_frame(frame)? else {
        return Err(RelayError::Malformed);
    };
    if used != frame.len() {
        return Err(RelayError::Malformed);
    }
    let mut r = Reader(body);
    let src_key = r.array()?;
    let n = usize::from(u16::from_be_bytes(r.array()?));
    if n > MAX_DID_LEN {
        return Err(RelayError::Malformed);
    }
    let src_did = std::str::from_utf8(r.take(n)?).map_err(|_| RelayError::Malformed)?;
    let start = frame.len() - r.0.len();
    if r.0.len() > MAX_PAYLOAD {
        return Err(RelayError::Malformed);
    }
    Ok(Some(RecvPacketRef {
        src_key,
        src_did,
        payload: start..frame.len(),
    }))
}

/// A frame cut from a buffer: type, body, bytes used.
type RawFrame<'a> = (u8, &'a [u8], usize);

fn split_frame(buf: &[u8]) -> Result<Option<RawFrame<'_>>, RelayError> {
    let Some(header) = buf.get(..FRAME_HEADER_LEN) else {
        return Ok(None);
    };
    let typ = header[0];
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    let len = usize::try_from(len).map_err(|_| RelayError::FrameTooLarge)?;
    if len > MAX_FRAME_LEN {
        return Err(RelayError::FrameTooLarge);
    }
    let end = FRAME_HEADER_LEN + len;
    match buf.get(FRAME_HEADER_LEN..end) {
        Some(body) => Ok(Some((typ, body, end))),
        None => Ok(None),
    }
}

fn write_header(buf: &mut Vec<u8>, typ: u8, body_len: usize) -> Result<(), RelayError> {
    if body_len > MAX_FRAME_LEN {
        return Err(RelayError::Encode("frame too large"));
    }
    let l = u32::try_from(body_len).map_err(|_| RelayError::Encode("frame too large"))?;
    buf.push(typ);
    buf.extend_from_slice(&l.to_be_bytes());
    Ok(())
}

fn peer_len(p: &PeerAddr) -> usize {
    match p {
        PeerAddr::Key(_) => 1 + 32,
        PeerAddr::Did(d) => 1 + 2 + d.len(),
    }
}

fn put_peer(buf: &mut Vec<u8>, p: &PeerAddr) -> Result<(), RelayError> {
    match p {
        PeerAddr::Key(k) => {
            buf.push(0);
            buf.extend_from_slice(k);
        }
        PeerAddr::Did(d) => {
            buf.push(1);
            put_str(buf, d, MAX_DID_LEN)?;
        }
    }
    Ok(())
}

fn put_str(buf: &mut Vec<u8>, s: &str, max: usize) -> Result<(), RelayError> {
    if s.len() > max {
        return Err(RelayError::Encode("string too long"));
    }
    let l = u16::try_from(s.len()).map_err(|_| RelayError::Encode("string too long"))?;
    buf.extend_from_slice(&l.to_be_bytes());
    buf.extend_from_slice(s.as_bytes());
    Ok(())
}

fn put_payload(buf: &mut Vec<u8>, p: &[u8]) -> Result<(), RelayError> {
    if p.len() > MAX_PAYLOAD {
        return Err(RelayError::Encode("payload too large"));
    }
    buf.extend_from_slice(p);
    Ok(())
}

/// Bounds-checked reader over a frame body.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RelayError> {
        if self.0.len() < n {
            return Err(RelayError::Malformed);
        }
        let (h, t) = self.0.split_at(n);
        self.0 = t;
        Ok(h)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], RelayError> {
        self.take(N)?.try_into().map_err(|_| RelayError::Malformed)
    }
    fn str(&mut self, max: usize) -> Result<String, RelayError> {
        let n = usize::from(u16::from_be_bytes(self.array()?));
        if n > max {
            return Err(RelayError::Malformed);
        }
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| RelayError::Malformed)
    }
    fn peer(&mut self) -> Result<PeerAddr, RelayError> {
        match self.array::<1>()?[0] {
            0 => Ok(PeerAddr::Key(self.array()?)),
            1 => Ok(PeerAddr::Did(self.str(MAX_DID_LEN)?)),
            _ => Err(RelayError::Malformed),
        }
    }
    /// The rest of the body.
    fn payload(&mut self) -> Result<Vec<u8>, RelayError> {
        let rest = std::mem::take(&mut self.0);
        if rest.len() > MAX_PAYLOAD {
            return Err(RelayError::Malformed);
        }
        Ok(rest.to_vec())
    }
    fn finish(self) -> Result<(), RelayError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(RelayError::Malformed)
        }
    }
}
