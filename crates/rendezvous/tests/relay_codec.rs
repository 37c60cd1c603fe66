//! Relay frame codec: pinned encodings (tests/vectors/relay_frames.json,
//! spec/rendezvous.md §4), the auth transcript and signature, negative cases
//! and property round trips.
#![allow(clippy::unwrap_used)]

use ed25519_dalek::{SigningKey, VerifyingKey};
use mpc_did_rendezvous::relay::{
    self, auth_transcript, sign_client_auth, verify_client_auth, ClientAuth, ClientToRelay,
    ErrorCode, OverloadReason, PeerAddr, RelayToClient, MAX_FRAME_LEN, MAX_PAYLOAD,
};
use mpc_did_rendezvous::RelayError;
use proptest::prelude::*;
use serde_json::Value;

fn vectors() -> Value {
    let t = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/vectors/relay_frames.json"
    ))
    .unwrap();
    serde_json::from_str(&t).unwrap()
}

fn h(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().unwrap()).unwrap()
}

fn arr<const N: usize>(v: &Value) -> [u8; N] {
    h(v).try_into().unwrap()
}

#[test]
fn auth_vector_transcript_and_signature() {
    // spec/rendezvous.md §4.3; signature made with Python's `cryptography`.
    let v = vectors();
    let a = &v["auth"];
    let sk = SigningKey::from_bytes(&arr(&a["seed"]));
    assert_eq!(sk.verifying_key().to_bytes(), arr::<32>(&a["public_key"]));
    let nonce: [u8; 32] = arr(&a["nonce"]);
    let (rid, did, kid) = (
        a["relay_id"].as_str().unwrap(),
        a["did"].as_str().unwrap(),
        a["key_id"].as_str().unwrap(),
    );
    let ts = a["timestamp"].as_u64().unwrap();
    assert_eq!(
        auth_transcript(rid, &nonce, did, kid, ts),
        h(&a["transcript"])
    );
    let auth = sign_client_auth(&sk, did, kid, rid, &nonce, ts);
    // Ed25519 is deterministic: same signature as the independent implementation.
    assert_eq!(auth.signature, arr::<64>(&a["signature"]));
    let vk = sk.verifying_key();
    verify_client_auth(&auth, rid, &nonce, &vk, ts + 30, 60).unwrap();
    // Everything bound into the transcript matters.
    let fail = Err(RelayError::AuthenticationFailed);
    assert_eq!(
        verify_client_auth(&auth, "did:web:other.example", &nonce, &vk, ts, 60),
        fail
    );
    assert_eq!(
        verify_client_auth(&auth, rid, &[0xAB; 32], &vk, ts, 60),
        fail
    );
    let mut other_did = auth.clone();
    other_did.did = "did:key:z6MkMallory".into();
    assert_eq!(
        verify_client_auth(&other_did, rid, &nonce, &vk, ts, 60),
        fail
    );
    let mut other_kid = auth.clone();
    other_kid.key_id.push('x');
    assert_eq!(
        verify_client_auth(&other_kid, rid, &nonce, &vk, ts, 60),
        fail
    );
    let mut other_ts = auth.clone();
    other_ts.timestamp += 1;
    assert_eq!(
        verify_client_auth(&other_ts, rid, &nonce, &vk, ts, 60),
        fail
    );
    // Stale or future timestamps.
    assert_eq!(
        verify_client_auth(&auth, rid, &nonce, &vk, ts + 61, 60),
        fail
    );
    assert_eq!(
        verify_client_auth(&auth, rid, &nonce, &vk, ts - 61, 60),
        fail
    );
    // Another key (spoofed client).
    let mallory = SigningKey::from_bytes(&[9; 32]).verifying_key();
    assert_eq!(
        verify_client_auth(&auth, rid, &nonce, &mallory, ts, 60),
        fail
    );
}

#[test]
fn frame_vectors_encode_and_decode() {
    let v = vectors();
    let a = &v["auth"];
    let sk = SigningKey::from_bytes(&arr(&a["seed"]));
    let auth = sign_client_auth(
        &sk,
        a["did"].as_str().unwrap(),
        a["key_id"].as_str().unwrap(),
        a["relay_id"].as_str().unwrap(),
        &arr(&a["nonce"]),
        a["timestamp"].as_u64().unwrap(),
    );
    let c2r = [
        ClientToRelay::ClientAuth(auth),
        ClientToRelay::SendPacket {
            dst: PeerAddr::Key([0x11; 32]),
            payload: b"hello".to_vec(),
        },
        ClientToRelay::SendPacket {
            dst: PeerAddr::Did("did:key:z6MkPeer".into()),
            payload: vec![],
        },
        ClientToRelay::Ping([1, 2, 3, 4, 5, 6, 7, 8]),
        ClientToRelay::Pong([1, 2, 3, 4, 5, 6, 7, 8]),
    ];
    let vs = v["client_to_relay"].as_array().unwrap();
    assert_eq!(vs.len(), c2r.len());
    for (m, e) in c2r.iter().zip(vs) {
        let want = h(&e["hex"]);
        assert_eq!(m.to_bytes().unwrap(), want, "{}", e["name"]);
        assert_eq!(m.encoded_len(), want.len());
        assert_eq!(
            ClientToRelay::decode(&want).unwrap(),
            Some((m.clone(), want.len()))
        );
    }
    let r2c = [
        RelayToClient::ServerChallenge {
            relay_id: a["relay_id"].as_str().unwrap().into(),
            nonce: arr(&a["nonce"]),
        },
        RelayToClient::AuthOk,
        RelayToClient::AuthFailed,
        RelayToClient::RecvPacket {
            src_key: sk.verifying_key().to_bytes(),
            src_did: a["did"].as_str().unwrap().into(),
            payload: b"world".to_vec(),
        },
        RelayToClient::PeerGone(PeerAddr::Key([0x11; 32])),
        RelayToClient::Ping([1, 2, 3, 4, 5, 6, 7, 8]),
        RelayToClient::Pong([1, 2, 3, 4, 5, 6, 7, 8]),
        RelayToClient::Overloaded(OverloadReason::PeerQueueFull),
        RelayToClient::Error(ErrorCode::IdleTimeout),
    ];
    let vs = v["relay_to_client"].as_array().unwrap();
    assert_eq!(vs.len(), r2c.len());
    for (m, e) in r2c.iter().zip(vs) {
        let want = h(&e["hex"]);
        assert_eq!(m.to_bytes().unwrap(), want, "{}", e["name"]);
        assert_eq!(
            RelayToClient::decode(&want).unwrap(),
            Some((m.clone(), want.len()))
        );
    }
}

#[test]
fn incomplete_is_none_and_oversize_is_rejected_early() {
    assert_eq!(MAX_FRAME_LEN, 66_595, "spec/rendezvous.md §4.2");
    let f = ClientToRelay::Ping([0; 8]).to_bytes().unwrap();
    for n in 0..f.len() {
        assert_eq!(ClientToRelay::decode(&f[..n]), Ok(None));
    }
    // A header announcing more than the limit fails before the body arrives.
    let mut big = vec![0x02];
    big.extend_from_slice(&((MAX_FRAME_LEN + 1) as u32).to_be_bytes());
    assert_eq!(ClientToRelay::decode(&big), Err(RelayError::FrameTooLarge));
    assert_eq!(RelayToClient::decode(&big), Err(RelayError::FrameTooLarge));
    let mut huge = vec![0x02];
    huge.extend_from_slice(&u32::MAX.to_be_bytes());
    assert_eq!(ClientToRelay::decode(&huge), Err(RelayError::FrameTooLarge));
    // The encoder refuses oversize payloads and leaves the buffer unchanged.
    let mut buf = vec![1, 2, 3];
    let m = ClientToRelay::SendPacket {
        dst: PeerAddr::Key([0; 32]),
        payload: vec![0; MAX_PAYLOAD + 1],
    };
    assert!(matches!(m.write_to(&mut buf), Err(RelayError::Encode(_))));
    assert_eq!(buf, vec![1, 2, 3]);
    let ok = ClientToRelay::SendPacket {
        dst: PeerAddr::Did("d".repeat(relay::MAX_DID_LEN)),
        payload: vec![0; MAX_PAYLOAD],
    };
    let b = ok.to_bytes().unwrap();
    assert_eq!(ClientToRelay::decode(&b).unwrap(), Some((ok, b.len())));
}

#[test]
fn malformed_bodies_are_typed_errors() {
    let frame = |t: u8, body: &[u8]| {
        let mut v = vec![t];
        v.extend_from_slice(&(body.len() as u32).to_be_bytes());
        v.extend_from_slice(body);
        v
    };
    // Unknown types per direction (a relay frame type sent by a client, too).
    assert_eq!(
        ClientToRelay::decode(&frame(0x41, &[])),
        Err(RelayError::UnknownFrameType(0x41))
    );
    assert_eq!(
        RelayToClient::decode(&frame(0x01, &[])),
        Err(RelayError::UnknownFrameType(0x01))
    );
    // Ping with 7 or 9 bytes.
    assert_eq!(
        ClientToRelay::decode(&frame(0x03, &[0; 7])),
        Err(RelayError::Malformed)
    );
    assert_eq!(
        ClientToRelay::decode(&frame(0x03, &[0; 9])),
        Err(RelayError::Malformed)
    );
    // Bad peer tag, short key.
    assert_eq!(
        ClientToRelay::decode(&frame(0x02, &[2, 0])),
        Err(RelayError::Malformed)
    );
    assert_eq!(
        ClientToRelay::decode(&frame(0x02, &[0; 20])),
        Err(RelayError::Malformed)
    );
    // DID string: length past the body, non-UTF-8, over the limit.
    assert_eq!(
        ClientToRelay::decode(&frame(0x02, &[1, 0, 9, b'a'])),
        Err(RelayError::Malformed)
    );
    assert_eq!(
        ClientToRelay::decode(&frame(0x02, &[1, 0, 1, 0xFF])),
        Err(RelayError::Malformed)
    );
    let mut long = vec![1u8];
    long.extend_from_slice(&1025u16.to_be_bytes());
    long.extend(std::iter::repeat_n(b'a', 1025));
    assert_eq!(
        ClientToRelay::decode(&frame(0x02, &long)),
        Err(RelayError::Malformed)
    );
    // ClientAuth missing its signature; AuthOk with a body; Error short.
    assert_eq!(
        ClientToRelay::decode(&frame(0x01, &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])),
        Err(RelayError::Malformed)
    );
    assert_eq!(
        RelayToClient::decode(&frame(0x42, &[0])),
        Err(RelayError::Malformed)
    );
    assert_eq!(
        RelayToClient::decode(&frame(0x49, &[0])),
        Err(RelayError::Malformed)
    );
    // Unknown overload/error codes from a newer peer still parse.
    assert_eq!(
        RelayToClient::decode(&frame(0x48, &[77]))
            .unwrap()
            .unwrap()
            .0,
        RelayToClient::Overloaded(OverloadReason::Other(77))
    );
    assert_eq!(
        RelayToClient::decode(&frame(0x49, &[1, 0]))
            .unwrap()
            .unwrap()
            .0,
        RelayToClient::Error(ErrorCode::Other(256))
    );
}

// spec/rendezvous.md §4.2: AllowPeers = enabled u8 | count u16 BE | peers; at most
// MAX_ALLOW_PEERS peers (64 DIDs of the longest length still fit a frame).
#[test]
fn allow_peers_layout_and_limits() {
    use mpc_did_rendezvous::relay::{MAX_ALLOW_PEERS, MAX_DID_LEN, MAX_FRAME_LEN};
    let f = ClientToRelay::AllowPeers(Some(vec![
        PeerAddr::Key([7; 32]),
        PeerAddr::Did("did:x".into()),
    ]))
    .to_bytes()
    .unwrap();
    let mut want = vec![0x05, 0, 0, 0, 44, 1, 0, 2, 0];
    want.extend_from_slice(&[7; 32]);
    want.extend_from_slice(&[1, 0, 5]);
    want.extend_from_slice(b"did:x");
    assert_eq!(f, want);
    assert_eq!(
        ClientToRelay::AllowPeers(None).to_bytes().unwrap(),
        vec![0x05, 0, 0, 0, 1, 0]
    );
    let longest = PeerAddr::Did("d".repeat(MAX_DID_LEN));
    let full = ClientToRelay::AllowPeers(Some(vec![longest.clone(); MAX_ALLOW_PEERS]));
    assert!(full.encoded_len() - 5 <= MAX_FRAME_LEN);
    let b = full.to_bytes().unwrap();
    assert_eq!(ClientToRelay::decode(&b).unwrap(), Some((full, b.len())));
    let over = ClientToRelay::AllowPeers(Some(vec![PeerAddr::Key([0; 32]); MAX_ALLOW_PEERS + 1]));
    assert!(matches!(over.to_bytes(), Err(RelayError::Encode(_))));
    // A count over the limit, or a bad mode byte, is Malformed.
    let mut body = vec![1u8];
    body.extend_from_slice(&((MAX_ALLOW_PEERS + 1) as u16).to_be_bytes());
    let mut raw = vec![0x05];
    raw.extend_from_slice(&(body.len() as u32).to_be_bytes());
    raw.extend_from_slice(&body);
    assert_eq!(ClientToRelay::decode(&raw), Err(RelayError::Malformed));
    assert_eq!(
        ClientToRelay::decode(&[0x05, 0, 0, 0, 1, 2]),
        Err(RelayError::Malformed)
    );
}

// ---------------------------------------------------------------- properties

fn arb_peer() -> impl Strategy<Value = PeerAddr> {
    prop_oneof![
        any::<[u8; 32]>().prop_map(PeerAddr::Key),
        "did:[a-z]{1,8}:[A-Za-z0-9.%:]{0,60}".prop_map(PeerAddr::Did)
    ]
}

fn arb_payload() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..300)
}

fn arb_c2r() -> impl Strategy<Value = ClientToRelay> {
    prop_oneof![
        (
            "\\PC{0,50}",
            "\\PC{0,60}",
            any::<u64>(),
            any::<[u8; 32]>(),
            any::<[u8; 32]>()
        )
            .prop_map(|(did, key_id, timestamp, s1, s2)| {
                let mut signature = [0u8; 64];
                signature[..32].copy_from_slice(&s1);
                signature[32..].copy_from_slice(&s2);
                ClientToRelay::ClientAuth(ClientAuth {
                    did,
                    key_id,
                    timestamp,
                    signature,
                })
            }),
        (arb_peer(), arb_payload())
            .prop_map(|(dst, payload)| ClientToRelay::SendPacket { dst, payload }),
        any::<[u8; 8]>().prop_map(ClientToRelay::Ping),
        any::<[u8; 8]>().prop_map(ClientToRelay::Pong),
        proptest::option::of(proptest::collection::vec(arb_peer(), 0..6))
            .prop_map(ClientToRelay::AllowPeers),
    ]
}

fn arb_r2c() -> impl Strategy<Value = RelayToClient> {
    prop_oneof![
        ("\\PC{0,50}", any::<[u8; 32]>())
            .prop_map(|(relay_id, nonce)| RelayToClient::ServerChallenge { relay_id, nonce }),
        Just(RelayToClient::AuthOk),
        Just(RelayToClient::AuthFailed),
        (any::<[u8; 32]>(), "\\PC{0,50}", arb_payload()).prop_map(|(src_key, src_did, payload)| {
            RelayToClient::RecvPacket {
                src_key,
                src_did,
                payload,
            }
        }),
        arb_peer().prop_map(RelayToClient::PeerGone),
        any::<[u8; 8]>().prop_map(RelayToClient::Ping),
        any::<[u8; 8]>().prop_map(RelayToClient::Pong),
        (1u8..=3).prop_map(|c| RelayToClient::Overloaded(match c {
            1 => OverloadReason::RateLimited,
            2 => OverloadReason::PeerQueueFull,
            _ => OverloadReason::TooManyClients,
        })),
        (1u16..=5).prop_map(|c| RelayToClient::Error(match c {
            1 => ErrorCode::Malformed,
            2 => ErrorCode::FrameTooLarge,
            3 => ErrorCode::NotAuthenticated,
            4 => ErrorCode::IdleTimeout,
            _ => ErrorCode::Replaced,
        })),
    ]
}

proptest! {
    #[test]
    fn c2r_stream_roundtrip(msgs in proptest::collection::vec(arb_c2r(), 1..8), chunk in 1usize..64) {
        // Frames concatenated on a stream and fed in arbitrary chunks decode
        // back in order (mini-redis style: Ok(None) = need more).
        let mut wire = Vec::new();
        for m in &msgs {
            let before = wire.len();
            m.write_to(&mut wire).unwrap();
            prop_assert_eq!(wire.len() - before, m.encoded_len());
        }
        let mut buf = Vec::new();
        let mut out = Vec::new();
        for piece in wire.chunks(chunk) {
            buf.extend_from_slice(piece);
            while let Some((m, used)) = ClientToRelay::decode(&buf).unwrap() {
                out.push(m);
                buf.drain(..used);
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(out, msgs);
    }

    #[test]
    fn r2c_head_then_payload_is_the_frame(m in arb_r2c(), prefix in proptest::collection::vec(any::<u8>(), 0..8)) {
        // A gathering writer (the relay's TCP writer, spec/rendezvous.md §7.3) writes the
        // head and then the payload it returns: the same bytes as the whole frame, appended
        // after what the buffer held.
        let mut buf = prefix.clone();
        let payload = m.write_head_to(&mut buf).unwrap().to_vec();
        if !matches!(m, RelayToClient::RecvPacket { .. }) {
            prop_assert!(payload.is_empty());
        }
        prop_assert_eq!(&buf[..prefix.len()], &prefix[..]);
        buf.extend_from_slice(&payload);
        prop_assert_eq!(&buf[prefix.len()..], &m.to_bytes().unwrap()[..]);
    }

    #[test]
    fn r2c_roundtrip(m in arb_r2c()) {
        let b = m.to_bytes().unwrap();
        prop_assert_eq!(b.len(), m.encoded_len());
        prop_assert_eq!(RelayToClient::decode(&b).unwrap(), Some((m, b.len())));
    }

    #[test]
    fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = ClientToRelay::decode(&b);
        let _ = RelayToClient::decode(&b);
    }

    #[test]
    fn signatures_verify_only_for_their_key(seed in any::<[u8; 32]>(), nonce in any::<[u8; 32]>(), ts in any::<u64>()) {
        let sk = SigningKey::from_bytes(&seed);
        let a = sign_client_auth(&sk, "did:key:z6Mk", "did:key:z6Mk#k", "did:web:relay", &nonce, ts);
        let vk: VerifyingKey = sk.verifying_key();
        prop_assert!(verify_client_auth(&a, "did:web:relay", &nonce, &vk, ts, 0).is_ok());
        let mut bad = a.clone();
        bad.signature[0] ^= 1;
        prop_assert!(verify_client_auth(&bad, "did:web:relay", &nonce, &vk, ts, 0).is_err());
    }
}

// Fast paths of the relay client (spec/rendezvous.md §4.4 "Coalescing", §7.3): they must
// produce and read exactly the bytes of the general codec.
proptest! {
    #[test]
    fn encode_send_packet_matches_write_to(dst in arb_peer(), payload in arb_payload()) {
        let general = ClientToRelay::SendPacket { dst: dst.clone(), payload: payload.clone() }
            .to_bytes()
            .unwrap();
        prop_assert_eq!(relay::encode_send_packet(&dst, &payload).unwrap(), general);
    }

    #[test]
    fn coalesced_packets_carry_both_payloads_in_order(
        dst in arb_peer(), other in arb_peer(), a in arb_payload(), b in arb_payload()
    ) {
        let mut frame = relay::encode_send_packet(&dst, &a).unwrap();
        let next = relay::encode_send_packet(&dst, &b).unwrap();
        prop_assert!(relay::coalesce_send_packets(&mut frame, &next));
        let joined: Vec<u8> = a.iter().chain(&b).copied().collect();
        prop_assert_eq!(
            ClientToRelay::decode(&frame).unwrap(),
            Some((ClientToRelay::SendPacket { dst: dst.clone(), payload: joined }, frame.len()))
        );
        // Another destination is never merged.
        let mut frame = relay::encode_send_packet(&dst, &a).unwrap();
        let before = frame.clone();
        let to_other = relay::encode_send_packet(&other, &b).unwrap();
        prop_assert_eq!(relay::coalesce_send_packets(&mut frame, &to_other), dst == other);
        if dst != other {
            prop_assert_eq!(frame, before);
        }
    }

    #[test]
    fn recv_packet_ref_matches_decode(m in arb_r2c()) {
        let b = m.to_bytes().unwrap();
        match (relay::recv_packet_ref(&b).unwrap(), &m) {
            (Some(r), RelayToClient::RecvPacket { src_key, src_did, payload }) => {
                prop_assert_eq!(&r.src_key, src_key);
                prop_assert_eq!(r.src_did, src_did.as_str());
                prop_assert_eq!(&b[r.payload], payload.as_slice());
            }
            (None, RelayToClient::RecvPacket { .. }) => prop_assert!(false, "packet not read"),
            (Some(_), _) => prop_assert!(false, "another frame read as a packet"),
            (None, _) => {}
        }
    }

    #[test]
    fn recv_packet_ref_never_panics(b in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = relay::recv_packet_ref(&b);
    }
}

#[test]
fn coalescing_stops_at_the_largest_payload_and_at_other_frames() {
    let dst = PeerAddr::Key([7; 32]);
    let mut frame = relay::encode_send_packet(&dst, &vec![1; MAX_PAYLOAD - 10]).unwrap();
    let small = relay::encode_send_packet(&dst, &[2; 10]).unwrap();
    let one_more = relay::encode_send_packet(&dst, &[3; 1]).unwrap();
    assert!(relay::coalesce_send_packets(&mut frame, &small));
    assert!(!relay::coalesce_send_packets(&mut frame, &one_more));
    let ping = ClientToRelay::Ping([0; 8]).to_bytes().unwrap();
    let mut p = ping.clone();
    assert!(!relay::coalesce_send_packets(&mut p, &small));
    assert!(!relay::coalesce_send_packets(&mut small.clone(), &ping));
    // A truncated frame is not a frame.
    let mut cut = small[..small.len() - 1].to_vec();
    assert!(!relay::coalesce_send_packets(&mut cut, &small));
    // Two frames in one buffer are not one RecvPacket.
    let r = RelayToClient::RecvPacket {
        src_key: [1; 32],
        src_did: "did:key:z".into(),
        payload: vec![5; 3],
    }
    .to_bytes()
    .unwrap();
    let two: Vec<u8> = r.iter().chain(&r).copied().collect();
    assert_eq!(relay::recv_packet_ref(&two), Err(RelayError::Malformed));
}

#[test]
fn frame_len_is_the_whole_frame_once_complete() {
    let f = RelayToClient::Pong([1; 8]).to_bytes().unwrap();
    assert_eq!(relay::frame_len(&f[..4]), Ok(None));
    assert_eq!(relay::frame_len(&f[..f.len() - 1]), Ok(None));
    let two: Vec<u8> = f.iter().chain(&f).copied().collect();
    assert_eq!(relay::frame_len(&two), Ok(Some(f.len())));
    let huge = [0x44, 0xff, 0xff, 0xff, 0xff];
    assert_eq!(relay::frame_len(&huge), Err(RelayError::FrameTooLarge));
}

#[test]
fn write_head_to_refuses_oversize_and_leaves_the_buffer() {
    let m = RelayToClient::RecvPacket {
        src_key: [1; 32],
        src_did: "did:key:z6Mk".into(),
        payload: vec![0; MAX_PAYLOAD + 1],
    };
    let mut buf = vec![9u8; 3];
    assert!(matches!(
        m.write_head_to(&mut buf),
        Err(RelayError::Encode(_))
    ));
    assert_eq!(buf, vec![9u8; 3]);
    let long_did = RelayToClient::RecvPacket {
        src_key: [1; 32],
        src_did: "d".repeat(relay::MAX_DID_LEN + 1),
        payload: vec![0; 10],
    };
    assert!(long_did.write_head_to(&mut buf).is_err());
    assert_eq!(buf, vec![9u8; 3]);
}
