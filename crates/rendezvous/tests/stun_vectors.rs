//! RFC 5769 test vectors (tests/vectors/rfc5769.json): decoding, FINGERPRINT
//! (RFC 8489 §14.7), XOR-MAPPED-ADDRESS (§14.2), MESSAGE-INTEGRITY (§14.5).
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;

use mpc_did_rendezvous::stun::{self, Attribute, Class};
use mpc_did_rendezvous::StunError;
use serde_json::Value;

fn vectors() -> (String, Vec<Value>) {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/vectors/rfc5769.json"
    ))
    .unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    (
        v["password"].as_str().unwrap().to_owned(),
        v["vectors"].as_array().unwrap().clone(),
    )
}

fn bytes(v: &Value) -> Vec<u8> {
    let h: String = v["hex"].as_str().unwrap().split_whitespace().collect();
    hex::decode(h).unwrap()
}

#[test]
fn rfc5769_vectors_decode_and_verify() {
    let (password, vs) = vectors();
    assert_eq!(vs.len(), 3);
    for v in &vs {
        let name = v["name"].as_str().unwrap();
        let raw = bytes(v);
        let d = stun::decode(&raw).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(d.has_fingerprint, "{name}");
        assert!(d.has_integrity, "{name}");
        let m = &d.message;
        let class = match v["class"].as_str().unwrap() {
            "request" => Class::Request,
            _ => Class::SuccessResponse,
        };
        assert_eq!(m.class, class, "{name}");
        assert_eq!(m.method, stun::Method::BINDING);
        assert_eq!(
            hex::encode(m.transaction_id.0),
            v["transaction_id"].as_str().unwrap()
        );
        assert!(m
            .attributes
            .contains(&Attribute::Software(v["software"].as_str().unwrap().into())));
        match v["mapped"].as_str() {
            Some(a) => assert_eq!(
                m.mapped_address(),
                Some(a.parse::<SocketAddr>().unwrap()),
                "{name}"
            ),
            None => assert_eq!(m.mapped_address(), None),
        }
        if let Some(u) = v["username"].as_str() {
            assert!(m.attributes.contains(&Attribute::Username(u.into())));
            assert!(m
                .attributes
                .contains(&Attribute::Priority(v["priority"].as_u64().unwrap() as u32)));
            let tb = u64::from_str_radix(v["ice_controlled"].as_str().unwrap(), 16).unwrap();
            assert!(m.attributes.contains(&Attribute::IceControlled(tb)));
        }
        assert!(m.unknown_comprehension_required().is_empty(), "{name}");
        // Short-term credential: the key is the password (RFC 8489 §9.1.1).
        stun::verify_integrity(&raw, password.as_bytes()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            stun::verify_integrity(&raw, b"VOkJxbRl1RmTxUk/WvJxBu"),
            Err(StunError::AuthenticationFailed)
        );
    }
}

#[test]
fn rfc5769_xor_mapped_address_reencodes_identically() {
    // Re-encoding the decoded attributes reproduces the RFC's XOR-MAPPED-ADDRESS bytes.
    let (password, vs) = vectors();
    for v in vs.iter().skip(1) {
        let raw = bytes(v);
        let m = stun::decode(&raw).unwrap().message;
        let xma: Vec<Attribute> = m
            .attributes
            .iter()
            .filter(|a| matches!(a, Attribute::XorMappedAddress(_)))
            .cloned()
            .collect();
        let only = stun::Message {
            attributes: xma,
            ..m.clone()
        };
        let enc = only.encode(None, false).unwrap();
        let start = 20 + 4 + 12; // header + SOFTWARE (11 bytes padded to 12)
        let attr_in_rfc = &raw[start..start + enc.len() - 20];
        assert_eq!(&enc[20..], attr_in_rfc);
        // Our own encoding of the whole message verifies with the same password.
        let ours = m.encode(Some(password.as_bytes()), true).unwrap();
        stun::verify_integrity(&ours, password.as_bytes()).unwrap();
        assert_eq!(stun::decode(&ours).unwrap().message, m);
    }
}

#[test]
fn rfc5769_any_bit_flip_is_caught() {
    // FINGERPRINT covers every byte before it, so every single-bit flip
    // fails decoding or integrity.
    let (password, vs) = vectors();
    for v in &vs {
        let raw = bytes(v);
        for i in 0..raw.len() {
            for bit in [0x01u8, 0x80] {
                let mut m = raw.clone();
                m[i] ^= bit;
                let accepted = match stun::decode(&m) {
                    Ok(d) if stun::verify_integrity(&m, password.as_bytes()).is_ok() => Some(d),
                    _ => None,
                };
                if let Some(d) = accepted {
                    // Only a flip that turns the FINGERPRINT attribute's own
                    // type into an unknown optional one survives: attributes
                    // after MESSAGE-INTEGRITY are ignored (§14.5), and the
                    // message then simply has no fingerprint.
                    assert!(
                        !d.has_fingerprint && i >= raw.len() - 8 && i < raw.len() - 6,
                        "flip at byte {i} bit {bit:#x} went unnoticed"
                    );
                }
            }
        }
    }
}

#[test]
fn server_answers_the_rfc5769_request() {
    // The §2.1 request (ICE attributes, MESSAGE-INTEGRITY) gets a success
    // response: every attribute in it is understood (RFC 8489 §6.3.1).
    let (_, vs) = vectors();
    let src: SocketAddr = "192.0.2.1:32853".parse().unwrap();
    let local: SocketAddr = "198.51.100.1:3478".parse().unwrap();
    let reply = mpc_did_rendezvous::binding::answer(&bytes(&vs[0]), src, local, None)
        .unwrap()
        .unwrap();
    let m = stun::decode(&reply).unwrap().message;
    assert_eq!(m.class, Class::SuccessResponse);
    assert_eq!(hex::encode(m.transaction_id.0), "b7e7a701bc34d686fa87dfae");
    assert_eq!(m.mapped_address(), Some(src));
}
