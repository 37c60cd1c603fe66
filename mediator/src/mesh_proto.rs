//! The relay mesh's wire format (spec/rendezvous.md §4.7), without I/O: the
//! instance-to-instance handshake (both sides prove the shared mesh key) and the frames
//! one instance hands another.
//!
//! ```text
//!  dialer                                   listener
//!    │ ◀──────────── nonce_s (32) ────────────│
//!    │ ── nonce_c (32) ‖ HMAC(k, "client"…) ─▶│ check
//!    │ ◀──────── HMAC(k, "server"…) ──────────│ check
//!    │ ── Forward{dst, RecvPacket} / Notice ─▶│ deliver_from_mesh / mesh_notice
//!    │ ── Moved{who, auth_ms} ───────────────▶│ replaced_elsewhere (if still that one)
//! ```
//!
//! Frames are `type: u8 | body_len: u32 BE | body`, as relay frames are; the body of a
//! `Forward` is the destination (relay peer address encoding) followed by the encoded
//! `RecvPacket` relay frame the destination's client will receive, and a `Notice` is the
//! sender's key followed by an encoded `PeerGone` or `Overloaded` frame. Reusing the relay
//! codec keeps one definition of those frames.

use hmac::{Hmac, Mac};
use mpc_did_rendezvous::relay::{PeerAddr, RelayToClient, MAX_DID_LEN, MAX_FRAME_LEN};
use sha2::Sha256;

/// Domain separator of the handshake MACs.
const DOMAIN: &[u8] = b"mpc-did/relay-mesh/v1\0";
/// Largest mesh frame body: a destination plus one whole relay frame.
pub(crate) const MAX_MESH_BODY: usize = 3 + MAX_DID_LEN + 5 + MAX_FRAME_LEN;
/// The shortest mesh key accepted (256 bits, as derper's mesh key).
pub(crate) const MIN_KEY_LEN: usize = 32;

const T_FORWARD: u8 = 0x01;
const T_NOTICE: u8 = 0x02;
const T_MOVED: u8 = 0x03;

/// Why a mesh frame or handshake was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum MeshProtoError {
    /// Bytes that are not a mesh frame.
    #[error("malformed mesh frame")]
    Malformed,
    /// A frame larger than any legitimate one (checked from the header alone).
    #[error("mesh frame too large")]
    TooLarge,
    /// The peer does not hold the mesh key (one opaque error).
    #[error("mesh authentication failed")]
    AuthFailed,
}

/// What one instance hands another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MeshFrame {
    /// A packet for `dst`, connected to the receiving instance; `packet` is a
    /// [`RelayToClient::RecvPacket`].
    Forward {
        /// The destination as the sender named it.
        dst: PeerAddr,
        /// The frame to queue to it.
        packet: RelayToClient,
    },
    /// A `PeerGone` or `Overloaded` for the sender with key `to_key` on the receiving
    /// instance.
    Notice {
        /// The sender's key.
        to_key: [u8; 32],
        /// The notice.
        frame: RelayToClient,
    },
    /// The client holding `who` authenticated again at the sending instance, which took
    /// the presence entry naming the receiving instance and this `auth_ms`: the receiver
    /// fails its own connection for `who` as `Replaced` if it is still the one that
    /// authenticated at `auth_ms` (spec/rendezvous.md §4.7, presence ownership).
    Moved {
        /// The key or DID that moved.
        who: PeerAddr,
        /// The displaced entry's authentication time (Unix ms): its generation.
        auth_ms: u64,
    },
}

impl MeshFrame {
    /// Appends the encoded frame to `buf`.
    pub(crate) fn write_to(&self, buf: &mut Vec<u8>) -> Result<(), MeshProtoError> {
        let start = buf.len();
        let typ = match self {
            MeshFrame::Forward { .. } => T_FORWARD,
            MeshFrame::Notice { .. } => T_NOTICE,
            MeshFrame::Moved { .. } => T_MOVED,
        };
        buf.push(typ);
        buf.extend_from_slice(&[0; 4]);
        let inner = match self {
            MeshFrame::Forward { dst, packet } => {
                put_peer(buf, dst)?;
                Some(packet)
            }
            MeshFrame::Notice { to_key, frame } => {
                buf.extend_from_slice(to_key);
                Some(frame)
            }
            MeshFrame::Moved { who, auth_ms } => {
                put_peer(buf, who)?;
                buf.extend_from_slice(&auth_ms.to_be_bytes());
                None
            }
        };
        if let Some(inner) = inner {
            inner.write_to(buf).map_err(|_| MeshProtoError::Malformed)?;
        }
        let body = buf.len() - start - 5;
        if body > MAX_MESH_BODY {
            buf.truncate(start);
            return Err(MeshProtoError::TooLarge);
        }
        let l = u32::try_from(body).map_err(|_| MeshProtoError::TooLarge)?;
        buf[start + 1..start + 5].copy_from_slice(&l.to_be_bytes());
        Ok(())
    }

    /// Decodes one frame from the front of `buf`: `Ok(None)` means "need more bytes".
    pub(crate) fn decode(buf: &[u8]) -> Result<Option<(MeshFrame, usize)>, MeshProtoError> {
        let Some(head) = buf.get(..5) else {
            return Ok(None);
        };
        let mut l = [0u8; 4];
        l.copy_from_slice(&head[1..5]);
        let len = usize::try_from(u32::from_be_bytes(l)).map_err(|_| MeshProtoError::TooLarge)?;
        if len > MAX_MESH_BODY {
            return Err(MeshProtoError::TooLarge);
        }
        let Some(body) = buf.get(5..5 + len) else {
            return Ok(None);
        };
        let frame = match head[0] {
            T_FORWARD => {
                let (dst, used) = get_peer(body)?;
                let packet = whole_frame(&body[used..])?;
                if !matches!(packet, RelayToClient::RecvPacket { .. }) {
                    return Err(MeshProtoError::Malformed);
                }
                MeshFrame::Forward { dst, packet }
            }
            T_NOTICE => {
                let key = body.get(..32).ok_or(MeshProtoError::Malformed)?;
                let mut to_key = [0u8; 32];
                to_key.copy_from_slice(key);
                let frame = whole_frame(&body[32..])?;
                if !matches!(
                    frame,
                    RelayToClient::PeerGone(_) | RelayToClient::Overloaded(_)
                ) {
                    return Err(MeshProtoError::Malformed);
                }
                MeshFrame::Notice { to_key, frame }
            }
            T_MOVED => {
                let (who, used) = get_peer(body)?;
                let t: [u8; 8] = body[used..]
                    .try_into()
                    .map_err(|_| MeshProtoError::Malformed)?;
                MeshFrame::Moved {
                    who,
                    auth_ms: u64::from_be_bytes(t),
                }
            }
            _ => return Err(MeshProtoError::Malformed),
        };
        Ok(Some((frame, 5 + len)))
    }
}

fn whole_frame(b: &[u8]) -> Result<RelayToClient, MeshProtoError> {
    match RelayToClient::decode(b) {
        Ok(Some((f, used))) if used == b.len() => Ok(f),
        _ => Err(MeshProtoError::Malformed),
    }
}

fn put_peer(buf: &mut Vec<u8>, p: &PeerAddr) -> Result<(), MeshProtoError> {
    match p {
        PeerAddr::Key(k) => {
            buf.push(0);
            buf.extend_from_slice(k);
        }
        PeerAddr::Did(d) => {
            if d.len() > MAX_DID_LEN {
                return Err(MeshProtoError::Malformed);
            }
            buf.push(1);
            let l = u16::try_from(d.len()).map_err(|_| MeshProtoError::Malformed)?;
            buf.extend_from_slice(&l.to_be_bytes());
            buf.extend_from_slice(d.as_bytes());
        }
    }
    Ok(())
}

fn get_peer(b: &[u8]) -> Result<(PeerAddr, usize), MeshProtoError> {
    match b.first() {
        Some(0) => {
            let k = b.get(1..33).ok_or(MeshProtoError::Malformed)?;
            let mut key = [0u8; 32];
            key.copy_from_slice(k);
            Ok((PeerAddr::Key(key), 33))
        }
        Some(1) => {
            let l = b.get(1..3).ok_or(MeshProtoError::Malformed)?;
            let n = usize::from(u16::from_be_bytes([l[0], l[1]]));
            if n > MAX_DID_LEN {
                return Err(MeshProtoError::Malformed);
            }
            let d = b.get(3..3 + n).ok_or(MeshProtoError::Malformed)?;
            let did = String::from_utf8(d.to_vec()).map_err(|_| MeshProtoError::Malformed)?;
            Ok((PeerAddr::Did(did), 3 + n))
        }
        _ => Err(MeshProtoError::Malformed),
    }
}

fn mac(
    key: &[u8],
    role: &[u8],
    nonce_s: &[u8; 32],
    nonce_c: &[u8; 32],
) -> Result<Hmac<Sha256>, MeshProtoError> {
    // HMAC takes keys of any length, so this never fails in practice.
    let mut m =
        <Hmac<Sha256> as Mac>::new_from_slice(key).map_err(|_| MeshProtoError::AuthFailed)?;
    m.update(DOMAIN);
    m.update(role);
    m.update(nonce_s);
    m.update(nonce_c);
    Ok(m)
}

/// The dialer's proof: `HMAC-SHA256(key, domain ‖ "client\0" ‖ nonce_s ‖ nonce_c)`.
pub(crate) fn client_proof(
    key: &[u8],
    nonce_s: &[u8; 32],
    nonce_c: &[u8; 32],
) -> Result<[u8; 32], MeshProtoError> {
    Ok(mac(key, b"client\0", nonce_s, nonce_c)?
        .finalize()
        .into_bytes()
        .into())
}

/// The listener's proof: `HMAC-SHA256(key, domain ‖ "server\0" ‖ nonce_s ‖ nonce_c)`.
pub(crate) fn server_proof(
    key: &[u8],
    nonce_s: &[u8; 32],
    nonce_c: &[u8; 32],
) -> Result<[u8; 32], MeshProtoError> {
    Ok(mac(key, b"server\0", nonce_s, nonce_c)?
        .finalize()
        .into_bytes()
        .into())
}

/// Checks a proof in constant time.
pub(crate) fn check_proof(
    key: &[u8],
    server: bool,
    nonce_s: &[u8; 32],
    nonce_c: &[u8; 32],
    proof: &[u8; 32],
) -> Result<(), MeshProtoError> {
    let role: &[u8] = if server { b"server\0" } else { b"client\0" };
    mac(key, role, nonce_s, nonce_c)?
        .verify_slice(proof)
        .map_err(|_| MeshProtoError::AuthFailed)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use mpc_did_rendezvous::relay::OverloadReason;

    fn round_trip(f: &MeshFrame) {
        let mut buf = Vec::new();
        f.write_to(&mut buf).unwrap();
        // Every strict prefix needs more bytes; the whole frame decodes to itself.
        for cut in [0, 1, 4, 5, buf.len() - 1] {
            assert_eq!(MeshFrame::decode(&buf[..cut]).unwrap(), None);
        }
        let (g, used) = MeshFrame::decode(&buf).unwrap().unwrap();
        assert_eq!((&g, used), (f, buf.len()));
    }

    #[test]
    fn frames_round_trip() {
        round_trip(&MeshFrame::Forward {
            dst: PeerAddr::Key([7; 32]),
            packet: RelayToClient::RecvPacket {
                src_key: [1; 32],
                src_did: "did:key:z6Mk".into(),
                payload: vec![9; 65_535],
            },
        });
        round_trip(&MeshFrame::Forward {
            dst: PeerAddr::Did("d".repeat(MAX_DID_LEN)),
            packet: RelayToClient::RecvPacket {
                src_key: [1; 32],
                src_did: "e".repeat(MAX_DID_LEN),
                payload: vec![],
            },
        });
        round_trip(&MeshFrame::Notice {
            to_key: [2; 32],
            frame: RelayToClient::PeerGone(PeerAddr::Did("did:web:x".into())),
        });
        round_trip(&MeshFrame::Notice {
            to_key: [2; 32],
            frame: RelayToClient::Overloaded(OverloadReason::PeerQueueFull),
        });
        round_trip(&MeshFrame::Moved {
            who: PeerAddr::Key([3; 32]),
            auth_ms: 1_765_000_000_123,
        });
        round_trip(&MeshFrame::Moved {
            who: PeerAddr::Did("did:web:example.org".into()),
            auth_ms: u64::MAX,
        });
    }

    #[test]
    fn bad_frames_are_typed_errors() {
        // Oversize from the header alone.
        let mut h = vec![T_FORWARD];
        h.extend_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(MeshFrame::decode(&h), Err(MeshProtoError::TooLarge));
        // Unknown type, a notice carrying a data frame, trailing bytes.
        assert_eq!(
            MeshFrame::decode(&[9, 0, 0, 0, 0]),
            Err(MeshProtoError::Malformed)
        );
        let mut buf = Vec::new();
        MeshFrame::Notice {
            to_key: [0; 32],
            frame: RelayToClient::AuthOk,
        }
        .write_to(&mut buf)
        .unwrap();
        assert_eq!(MeshFrame::decode(&buf), Err(MeshProtoError::Malformed));
        let mut buf = Vec::new();
        MeshFrame::Notice {
            to_key: [0; 32],
            frame: RelayToClient::Overloaded(OverloadReason::RateLimited),
        }
        .write_to(&mut buf)
        .unwrap();
        buf.push(0);
        buf[4] += 1;
        assert_eq!(MeshFrame::decode(&buf), Err(MeshProtoError::Malformed));
        // A Moved with a short or long generation.
        for extra in [7usize, 9] {
            let mut b = vec![T_MOVED, 0, 0, 0, (33 + extra) as u8, 0];
            b.extend_from_slice(&[1; 32]);
            b.extend(std::iter::repeat_n(0, extra));
            assert_eq!(MeshFrame::decode(&b), Err(MeshProtoError::Malformed));
        }
    }

    #[test]
    fn proofs_bind_key_role_and_both_nonces() {
        let (k, s, c) = ([1u8; 32], [2u8; 32], [3u8; 32]);
        let p = client_proof(&k, &s, &c).unwrap();
        assert!(check_proof(&k, false, &s, &c, &p).is_ok());
        assert!(check_proof(&k, true, &s, &c, &p).is_err());
        assert!(check_proof(&[9; 32], false, &s, &c, &p).is_err());
        assert!(check_proof(&k, false, &c, &s, &p).is_err());
        let q = server_proof(&k, &s, &c).unwrap();
        assert!(check_proof(&k, true, &s, &c, &q).is_ok());
        assert_ne!(p, q);
    }
}
