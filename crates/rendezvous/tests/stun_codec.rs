//! STUN codec: one negative test per validation rule (spec/rendezvous.md §2.2)
//! and property round trips.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use mpc_did_rendezvous::stun::{self, attr, Attribute, Class, Message, Method, TransactionId};
use mpc_did_rendezvous::StunError;
use proptest::prelude::*;

fn sample() -> Message {
    Message {
        class: Class::SuccessResponse,
        method: Method::BINDING,
        transaction_id: TransactionId([7; 12]),
        attributes: vec![
            Attribute::XorMappedAddress("192.0.2.1:32853".parse().unwrap()),
            Attribute::Software("abcde".into()), // 5 bytes: 3 bytes of padding
        ],
    }
}

/// Rewrites the header length to match a body edit.
fn fix_len(b: &mut [u8]) {
    let l = (b.len() - 20) as u16;
    b[2..4].copy_from_slice(&l.to_be_bytes());
}

#[test]
fn rejects_short_input() {
    let b = sample().encode(None, false).unwrap();
    for n in 0..20 {
        assert_eq!(stun::decode(&b[..n]), Err(StunError::Truncated));
    }
}

#[test]
fn rejects_top_bits() {
    // RFC 8489 §5: the two most significant bits MUST be zero.
    for bits in [0x40u8, 0x80, 0xC0] {
        let mut b = sample().encode(None, false).unwrap();
        b[0] |= bits;
        assert_eq!(stun::decode(&b), Err(StunError::NotStun));
        assert!(!stun::looks_like_stun(&b));
    }
}

#[test]
fn rejects_bad_cookie() {
    let mut b = sample().encode(None, false).unwrap();
    b[4] ^= 1;
    assert_eq!(stun::decode(&b), Err(StunError::BadMagicCookie));
    assert!(stun::looks_like_stun(
        &sample().encode(None, false).unwrap()
    ));
}

#[test]
fn rejects_length_not_multiple_of_four() {
    let mut b = sample().encode(None, false).unwrap();
    let l = u16::from_be_bytes([b[2], b[3]]) + 1;
    b[2..4].copy_from_slice(&l.to_be_bytes());
    b.push(0);
    assert_eq!(stun::decode(&b), Err(StunError::BadLength));
}

#[test]
fn rejects_length_mismatch() {
    let b = sample().encode(None, false).unwrap();
    let mut longer = b.clone();
    longer.extend_from_slice(&[0; 4]);
    assert_eq!(stun::decode(&longer), Err(StunError::LengthMismatch));
    let mut shorter = b[..b.len() - 4].to_vec();
    assert_eq!(stun::decode(&shorter), Err(StunError::LengthMismatch));
    fix_len(&mut shorter); // now the last attribute's padding is cut off
    assert_eq!(stun::decode(&shorter), Err(StunError::AttributeOverrun));
}

#[test]
fn rejects_missing_padding_and_overrun() {
    // SOFTWARE "abcde" needs 3 padding bytes (§14); drop them.
    let b = sample().encode(None, false).unwrap();
    // Cut 4 bytes: the total stays a multiple of 4, but the value (5 bytes,
    // padded to 8) no longer fits.
    let mut unpadded = b[..b.len() - 4].to_vec();
    fix_len(&mut unpadded);
    assert_eq!(stun::decode(&unpadded), Err(StunError::AttributeOverrun));
    // An attribute length pointing past the end.
    let mut over = b.clone();
    let sw = 20 + 12; // after the XOR-MAPPED-ADDRESS
    over[sw + 2..sw + 4].copy_from_slice(&200u16.to_be_bytes());
    assert_eq!(stun::decode(&over), Err(StunError::AttributeOverrun));
    // A zero-length attribute needs no padding.
    let mut empty = b.clone();
    empty.extend_from_slice(&[0x80, 0x22, 0, 0]);
    fix_len(&mut empty);
    assert!(stun::decode(&empty).is_ok(), "empty SOFTWARE is fine");
}

#[test]
fn padding_values_are_ignored() {
    // §14: padding bits may be any value (RFC 5769 uses spaces).
    let mut b = sample().encode(None, false).unwrap();
    let n = b.len();
    b[n - 3..].copy_from_slice(b"   ");
    assert_eq!(stun::decode(&b).unwrap().message, sample());
}

#[test]
fn rejects_bad_fingerprint_and_fingerprint_not_last() {
    let b = sample().encode(None, true).unwrap();
    let mut wrong = b.clone();
    let n = wrong.len();
    wrong[n - 1] ^= 1;
    assert_eq!(stun::decode(&wrong), Err(StunError::BadFingerprint));
    // Flip a body byte: the CRC no longer matches.
    let mut body = b.clone();
    body[36] ^= 1; // a SOFTWARE character
    assert_eq!(stun::decode(&body), Err(StunError::BadFingerprint));
    // Something after FINGERPRINT (length fixed up, so FINGERPRINT is wrong
    // too; the ordering rule is checked before anything else).
    let mut after = b.clone();
    after.extend_from_slice(&[0x80, 0x22, 0, 0]);
    fix_len(&mut after);
    assert!(matches!(
        stun::decode(&after),
        Err(StunError::FingerprintNotLast | StunError::BadFingerprint)
    ));
    // Build a message whose FINGERPRINT is correct for its position but is
    // followed by another attribute: only the ordering rule can catch it.
    let mut m = b[..b.len() - 8].to_vec();
    m.extend_from_slice(&[0x80, 0x28, 0, 4, 0, 0, 0, 0]);
    m.extend_from_slice(&[0x80, 0x22, 0, 0]);
    fix_len(&mut m);
    let fp_at = m.len() - 12;
    let crc = stun::crc32(&m[..fp_at]) ^ 0x5354_554E;
    m[fp_at + 4..fp_at + 8].copy_from_slice(&crc.to_be_bytes());
    assert_eq!(stun::decode(&m), Err(StunError::FingerprintNotLast));
    // Wrong FINGERPRINT length.
    let mut short_fp = b[..b.len() - 8].to_vec();
    short_fp.extend_from_slice(&[0x80, 0x28, 0, 2, 0, 0, 0, 0]);
    fix_len(&mut short_fp);
    assert_eq!(
        stun::decode(&short_fp),
        Err(StunError::BadAttribute(attr::FINGERPRINT))
    );
}

#[test]
fn rejects_malformed_known_attributes() {
    let tid = TransactionId([1; 12]);
    let cases: Vec<(u16, Vec<u8>)> = vec![
        (attr::XOR_MAPPED_ADDRESS, vec![0, 1, 0, 0, 1, 2, 3]), // short IPv4
        (attr::XOR_MAPPED_ADDRESS, vec![0, 3, 0, 0, 1, 2, 3, 4]), // family 3
        (attr::XOR_MAPPED_ADDRESS, vec![0, 2, 0, 0, 1, 2, 3, 4]), // IPv6 family, IPv4 length
        (
            attr::MAPPED_ADDRESS,
            vec![0, 1, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8],
        ),
        (attr::OTHER_ADDRESS, vec![]),
        (attr::SOFTWARE, vec![0xFF, 0xFE]), // not UTF-8
        (attr::SOFTWARE, vec![b'a'; 764]),  // > 763 bytes
        (attr::USERNAME, vec![b'a'; 514]),
        (attr::ERROR_CODE, vec![0, 0, 2, 0]),   // class 2
        (attr::ERROR_CODE, vec![0, 0, 4, 100]), // number 100
        (attr::ERROR_CODE, vec![0, 0, 4]),
        (attr::UNKNOWN_ATTRIBUTES, vec![0, 1, 0]),
        (attr::CHANGE_REQUEST, vec![0, 0, 0]),
        (attr::PRIORITY, vec![0; 8]),
        (attr::USE_CANDIDATE, vec![1]),
        (attr::ICE_CONTROLLED, vec![0; 4]),
        (attr::MESSAGE_INTEGRITY, vec![0; 19]),
    ];
    for (t, v) in cases {
        let m = Message {
            class: Class::Request,
            method: Method::BINDING,
            transaction_id: tid,
            attributes: vec![],
        };
        let mut b = m.encode(None, false).unwrap();
        b.extend_from_slice(&t.to_be_bytes());
        b.extend_from_slice(&(v.len() as u16).to_be_bytes());
        b.extend_from_slice(&v);
        while !b.len().is_multiple_of(4) {
            b.push(0);
        }
        fix_len(&mut b);
        let r = stun::decode(&b);
        assert!(
            matches!(r, Err(StunError::BadAttribute(x)) if x == t)
                || (b.len() > stun::MAX_MESSAGE_LEN && r == Err(StunError::TooLong)),
            "type {t:#06x}: {r:?}"
        );
    }
}

#[test]
fn rejects_oversize_and_too_many_attributes() {
    let mut b = vec![0u8, 1, 0, 0, 0x21, 0x12, 0xA4, 0x42];
    b.extend_from_slice(&[0; 12]);
    b.extend(std::iter::repeat_n([0x80u8, 0x22, 0, 0], 65).flatten());
    fix_len(&mut b);
    assert_eq!(stun::decode(&b), Err(StunError::TooManyAttributes));
    let mut big = vec![0u8, 1, 0, 0, 0x21, 0x12, 0xA4, 0x42];
    big.extend_from_slice(&[0; 12]);
    big.extend(std::iter::repeat_n(0u8, 2048));
    fix_len(&mut big);
    assert_eq!(stun::decode(&big), Err(StunError::TooLong));
    assert_eq!(stun::message_len(&big), Err(StunError::TooLong));
}

#[test]
fn unknown_attributes_are_classified() {
    // RFC 8489 §14: < 0x8000 comprehension-required, else optional.
    let mut m = sample();
    m.attributes.push(Attribute::Unknown {
        typ: 0x0042,
        value: vec![1],
    });
    m.attributes.push(Attribute::Unknown {
        typ: 0x8042,
        value: vec![2, 3],
    });
    let d = stun::decode(&m.encode(None, true).unwrap()).unwrap();
    assert_eq!(d.message, m);
    assert_eq!(d.message.unknown_comprehension_required(), vec![0x0042]);
}

#[test]
fn attributes_after_integrity_are_ignored() {
    // §14.5: only FINGERPRINT (and MI-SHA256) count after MESSAGE-INTEGRITY.
    let b = sample().encode(Some(b"key"), false).unwrap();
    let mut extra = b.clone();
    extra.extend_from_slice(&[0x80, 0x22, 0, 1, b'x', 0, 0, 0]);
    fix_len(&mut extra);
    let d = stun::decode(&extra).unwrap();
    assert_eq!(d.message, sample());
    stun::verify_integrity(&extra, b"key").unwrap();
    assert_eq!(
        stun::verify_integrity(&extra, b"kez"),
        Err(StunError::AuthenticationFailed)
    );
    assert_eq!(
        stun::verify_integrity(&sample().encode(None, true).unwrap(), b"key"),
        Err(StunError::AuthenticationFailed)
    );
}

#[test]
fn message_len_frames_a_stream() {
    let a = sample().encode(None, true).unwrap();
    let b = Message::binding_request().encode(None, true).unwrap();
    let mut stream = a.clone();
    stream.extend_from_slice(&b);
    assert_eq!(stun::message_len(&stream[..19]), Ok(None));
    assert_eq!(stun::message_len(&stream), Ok(Some(a.len())));
    assert_eq!(stun::message_len(&stream[a.len()..]), Ok(Some(b.len())));
}

#[test]
fn encode_refuses_out_of_range_values() {
    let mut m = sample();
    m.attributes = vec![Attribute::ErrorCode {
        code: 200,
        reason: String::new(),
    }];
    assert!(matches!(m.encode(None, false), Err(StunError::Encode(_))));
    m.attributes = vec![Attribute::Software("x".repeat(764))];
    assert!(matches!(m.encode(None, false), Err(StunError::Encode(_))));
    m.attributes = vec![Attribute::Unknown {
        typ: attr::FINGERPRINT,
        value: vec![0; 4],
    }];
    assert!(matches!(m.encode(None, false), Err(StunError::Encode(_))));
    assert!(Method::new(0x1000).is_err());
}

// ---------------------------------------------------------------- properties

fn arb_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(a, p)| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(a)), p)),
        (any::<[u8; 16]>(), any::<u16>())
            .prop_map(|(a, p)| SocketAddr::new(IpAddr::V6(Ipv6Addr::from(a)), p)),
    ]
}

fn arb_attr() -> impl Strategy<Value = Attribute> {
    let known = |t: u16| {
        matches!(
            t,
            attr::MAPPED_ADDRESS
                | attr::CHANGE_REQUEST
                | attr::USERNAME
                | attr::MESSAGE_INTEGRITY
                | attr::ERROR_CODE
                | attr::UNKNOWN_ATTRIBUTES
                | attr::MESSAGE_INTEGRITY_SHA256
                | attr::XOR_MAPPED_ADDRESS
                | attr::PRIORITY
                | attr::USE_CANDIDATE
                | attr::SOFTWARE
                | attr::FINGERPRINT
                | attr::ICE_CONTROLLED
                | attr::ICE_CONTROLLING
                | attr::RESPONSE_ORIGIN
                | attr::OTHER_ADDRESS
        )
    };
    prop_oneof![
        arb_addr().prop_map(Attribute::MappedAddress),
        arb_addr().prop_map(Attribute::XorMappedAddress),
        arb_addr().prop_map(Attribute::ResponseOrigin),
        arb_addr().prop_map(Attribute::OtherAddress),
        "[a-z:0-9]{0,40}".prop_map(Attribute::Username),
        "\\PC{0,30}".prop_map(Attribute::Software),
        (300u16..700, "[ -~]{0,40}")
            .prop_map(|(code, reason)| Attribute::ErrorCode { code, reason }),
        proptest::collection::vec(any::<u16>(), 0..8).prop_map(Attribute::UnknownAttributes),
        (any::<bool>(), any::<bool>()).prop_map(|(a, b)| Attribute::ChangeRequest {
            change_ip: a,
            change_port: b
        }),
        any::<u32>().prop_map(Attribute::Priority),
        Just(Attribute::UseCandidate),
        any::<u64>().prop_map(Attribute::IceControlled),
        any::<u64>().prop_map(Attribute::IceControlling),
        (
            any::<u16>().prop_filter("known", move |t| !known(*t)),
            proptest::collection::vec(any::<u8>(), 0..40)
        )
            .prop_map(|(typ, value)| Attribute::Unknown { typ, value }),
    ]
}

fn arb_message() -> impl Strategy<Value = Message> {
    (
        prop_oneof![
            Just(Class::Request),
            Just(Class::Indication),
            Just(Class::SuccessResponse),
            Just(Class::ErrorResponse)
        ],
        0u16..0x1000,
        any::<[u8; 12]>(),
        proptest::collection::vec(arb_attr(), 0..10),
    )
        .prop_map(|(class, m, tid, attributes)| Message {
            class,
            method: Method::new(m).unwrap(),
            transaction_id: TransactionId(tid),
            attributes,
        })
}

proptest! {
    #[test]
    fn roundtrip(m in arb_message(), key in proptest::option::of(proptest::collection::vec(any::<u8>(), 1..40)), fp in any::<bool>()) {
        let b = m.encode(key.as_deref(), fp).unwrap();
        prop_assert_eq!(b.len() % 4, 0);
        prop_assert!(stun::looks_like_stun(&b));
        prop_assert_eq!(stun::message_len(&b).unwrap(), Some(b.len()));
        let d = stun::decode(&b).unwrap();
        prop_assert_eq!(&d.message, &m);
        prop_assert_eq!(d.has_fingerprint, fp);
        prop_assert_eq!(d.has_integrity, key.is_some());
        if let Some(k) = key {
            prop_assert!(stun::verify_integrity(&b, &k).is_ok());
        }
    }

    #[test]
    fn truncation_is_an_error(m in arb_message(), cut in 1usize..64) {
        let b = m.encode(None, true).unwrap();
        let n = b.len().saturating_sub(cut);
        prop_assert!(stun::decode(&b[..n]).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = stun::decode(&b);
        let _ = stun::verify_integrity(&b, b"k");
        let _ = stun::message_len(&b);
    }

    #[test]
    fn arbitrary_bodies_after_valid_header_never_panic(body in proptest::collection::vec(any::<u8>(), 0..50)) {
        let mut b = vec![0u8, 1, 0, 0, 0x21, 0x12, 0xA4, 0x42];
        b.extend_from_slice(&[9; 12]);
        let mut body = body;
        body.truncate(body.len() / 4 * 4);
        b.extend_from_slice(&body);
        fix_len(&mut b);
        let _ = stun::decode(&b);
        let _ = stun::verify_integrity(&b, b"k");
    }
}
