//! Candidates and the exchange format (spec/rendezvous.md §5). The path
//! selection is `mpc-did-connect`'s (`select`, spec/session.md §7.5).
#![allow(clippy::unwrap_used)]

use mpc_did_rendezvous::candidate::{
    priority, validate_candidates, Candidate, CandidateKind, CandidateSet, Transport,
};
use mpc_did_rendezvous::nat::NatMapping;
use mpc_did_rendezvous::CandidateError;
use proptest::prelude::*;

fn host(a: &str, t: Transport) -> Candidate {
    Candidate::new(CandidateKind::Host, t, a.parse().unwrap(), 0, None)
}
fn srflx(a: &str, t: Transport) -> Candidate {
    Candidate::new(
        CandidateKind::ServerReflexive,
        t,
        a.parse().unwrap(),
        0,
        Some("stun:198.51.100.1:3478"),
    )
}

#[test]
fn priorities_follow_rfc8445() {
    // §5.1.2.1 with type preferences 126 / 100 / 0 and component 1.
    let a = "192.0.2.2:5000".parse().unwrap();
    let p = priority(CandidateKind::Host, Transport::Quic, &a, 0);
    assert_eq!(p >> 24, 126);
    assert_eq!(p & 0xFF, 255);
    assert_eq!((p >> 8) & 0xFFFF, 3 << 13);
    assert!(p > priority(CandidateKind::Host, Transport::Tcp, &a, 0));
    assert!(
        priority(CandidateKind::Host, Transport::Tcp, &a, 0)
            > priority(CandidateKind::ServerReflexive, Transport::Quic, &a, 0)
    );
    assert!(
        priority(CandidateKind::ServerReflexive, Transport::Tcp, &a, 0)
            > priority(CandidateKind::Relay, Transport::Quic, &a, 0)
    );
    // Foundations: same kind, transport, base IP and server -> same foundation.
    assert_eq!(
        srflx("203.0.113.1:1", Transport::Quic).foundation,
        srflx("203.0.113.1:2", Transport::Quic).foundation
    );
    assert_ne!(
        srflx("203.0.113.1:1", Transport::Quic).foundation,
        srflx("203.0.113.2:1", Transport::Quic).foundation
    );
}

#[test]
fn json_format_is_stable() {
    // The documented example of spec/rendezvous.md §5.1 parses and round-trips.
    let doc = r#"{"version":1,"candidates":[
        {"kind":"host","transport":"quic","addr":"192.0.2.2:40000","priority":2120220927,"foundation":"hq1a2b3c4d"},
        {"kind":"server_reflexive","transport":"quic","addr":"198.51.100.10:62000","priority":1684013311,"foundation":"sq5e6f7a8b"},
        {"kind":"relay","transport":"tcp","addr":"198.51.100.1:443","priority":2097407,"foundation":"rt00ff00ff","relay_url":"wss://mediator.example/relay"}
      ],"nat_mapping":"endpoint_independent"}"#;
    let set = CandidateSet::from_json(doc).unwrap();
    assert_eq!(set.candidates.len(), 3);
    assert_eq!(set.nat_mapping, Some(NatMapping::EndpointIndependent));
    assert_eq!(
        set.candidates[2].relay_url.as_deref(),
        Some("wss://mediator.example/relay")
    );
    assert_eq!(
        set.candidates[0].priority,
        priority(
            CandidateKind::Host,
            Transport::Quic,
            &"192.0.2.2:1".parse().unwrap(),
            0
        )
    );
    assert_eq!(
        CandidateSet::from_json(&set.to_json().unwrap()).unwrap(),
        set
    );
    // IPv6 addresses use the bracket form.
    let v6 = CandidateSet::new(vec![host("[2001:db8::1]:4000", Transport::Quic)], None);
    let j = v6.to_json().unwrap();
    assert!(j.contains("\"[2001:db8::1]:4000\""), "{j}");
    assert!(!j.contains("nat_mapping"));
}

#[test]
fn invalid_sets_are_rejected() {
    let ok = host("192.0.2.2:1", Transport::Quic);
    let check = |c: Candidate| CandidateSet {
        version: 1,
        candidates: vec![c],
        nat_mapping: None,
    };
    let inv = |s: CandidateSet| {
        matches!(
            CandidateSet::from_json(&serde_json::to_string(&s).unwrap()),
            Err(CandidateError::Invalid(_))
        )
    };
    assert!(inv(CandidateSet {
        version: 2,
        ..check(ok.clone())
    }));
    assert!(inv(CandidateSet {
        version: 1,
        candidates: vec![ok.clone(); 65],
        nat_mapping: None
    }));
    assert!(inv(check(Candidate {
        foundation: String::new(),
        ..ok.clone()
    })));
    assert!(inv(check(Candidate {
        foundation: "x".repeat(33),
        ..ok.clone()
    })));
    assert!(inv(check(Candidate {
        foundation: "a b".into(),
        ..ok.clone()
    })));
    assert!(inv(check(Candidate {
        addr: "192.0.2.2:0".parse().unwrap(),
        ..ok.clone()
    })));
    assert!(inv(check(Candidate {
        addr: "0.0.0.0:1".parse().unwrap(),
        ..ok.clone()
    })));
    assert!(inv(check(Candidate {
        addr: "224.0.0.1:1".parse().unwrap(),
        ..ok.clone()
    })));
    assert!(inv(check(Candidate {
        relay_url: Some("wss://x".into()),
        ..ok.clone()
    })));
    assert!(inv(check(Candidate {
        kind: CandidateKind::Relay,
        ..ok.clone()
    })));
    assert!(CandidateSet::new(vec![ok.clone(); 65], None)
        .to_json()
        .is_err());
    assert!(CandidateSet::new(vec![ok.clone(); 64], None)
        .to_json()
        .is_ok());
    let bad = Candidate {
        foundation: String::new(),
        ..ok.clone()
    };
    assert!(validate_candidates(&[ok.clone(), bad]).is_err());
    assert!(validate_candidates(std::slice::from_ref(&ok)).is_ok());
    assert!(matches!(
        CandidateSet::from_json("{"),
        Err(CandidateError::Json(_))
    ));
    assert!(matches!(
        CandidateSet::from_json(r#"{"version":1,"candidates":[{"kind":"wormhole"}]}"#),
        Err(CandidateError::Json(_))
    ));
    assert!(matches!(
        CandidateSet::from_json(&" ".repeat(40_000)),
        Err(CandidateError::Invalid(_))
    ));
}

proptest! {
    #[test]
    fn candidate_json_roundtrip(ips in proptest::collection::vec((any::<[u8; 4]>(), 1u16.., 0u8..3, 0u8..3), 0..10)) {
        let cands: Vec<Candidate> = ips.into_iter().filter_map(|(ip, port, k, tr)| {
            let addr = std::net::SocketAddr::from((ip, port));
            if addr.ip().is_unspecified() || addr.ip().is_multicast() { return None; }
            let t = [Transport::Udp, Transport::Tcp, Transport::Quic][usize::from(tr)];
            Some(match k {
                0 => Candidate::new(CandidateKind::Host, t, addr, 1, None),
                1 => Candidate::new(CandidateKind::ServerReflexive, t, addr, 2, Some("stun")),
                _ => Candidate::relay(t, addr, "wss://r.example/relay"),
            })
        }).collect();
        let set = CandidateSet::new(cands, Some(NatMapping::AddressDependent));
        prop_assert_eq!(CandidateSet::from_json(&set.to_json().unwrap()).unwrap(), set);
    }

    #[test]
    fn arbitrary_json_never_panics(s in "\\PC{0,200}") {
        let _ = CandidateSet::from_json(&s);
    }
}

#[test]
fn gather_drops_redundant_and_invalid_candidates() {
    // RFC 8445 §5.1.3: a srflx equal to a host candidate is redundant.
    let h1: std::net::SocketAddr = "192.0.2.2:40000".parse().unwrap();
    let public: std::net::SocketAddr = "198.51.100.10:62000".parse().unwrap();
    let unspecified: std::net::SocketAddr = "0.0.0.0:40001".parse().unwrap();
    let c = mpc_did_rendezvous::candidate::gather(
        Transport::Quic,
        &[h1, h1, unspecified],
        &[
            (h1, public, "stun:m"),
            (h1, public, "stun:m"),
            (h1, h1, "stun:m"),
        ],
        Some(("198.51.100.1:443".parse().unwrap(), "wss://m.example/relay")),
    );
    let kinds: Vec<CandidateKind> = c.iter().map(|x| x.kind).collect();
    assert_eq!(
        kinds,
        vec![
            CandidateKind::Host,
            CandidateKind::ServerReflexive,
            CandidateKind::Relay
        ]
    );
    assert!(validate_candidates(&c).is_ok());
    assert_eq!(c[1].addr, public);
}
