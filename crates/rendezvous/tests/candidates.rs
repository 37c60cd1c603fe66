//! Candidates, the exchange format and the check planner
//! (spec/rendezvous.md §5).
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use mpc_did_rendezvous::candidate::{
    pair_priority, priority, validate_candidates, Candidate, CandidateKind, CandidateSet,
    CheckPlanner, PairId, PairState, PathKind, PlannerAction, PlannerConfig, Transport,
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
fn relay(a: &str, url: &str) -> Candidate {
    Candidate::relay(Transport::Tcp, a.parse().unwrap(), url)
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
    // §6.1.2.3 pair priority, with the worked property that it is symmetric
    // up to the tie-break bit.
    assert_eq!(pair_priority(10, 20), (10u64 << 32) + 40);
    assert_eq!(pair_priority(20, 10), (10u64 << 32) + 41);
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

fn fast() -> PlannerConfig {
    PlannerConfig {
        pacing: Duration::from_millis(50),
        check_timeout: Duration::from_secs(1),
        settle: Duration::from_millis(200),
        max_pairs: 48,
        max_in_flight: 4,
    }
}

fn locals() -> Vec<Candidate> {
    vec![
        host("192.0.2.2:40000", Transport::Quic),
        srflx("198.51.100.10:62000", Transport::Quic),
        host("192.0.2.2:40001", Transport::Tcp),
        relay("198.51.100.1:443", "wss://home-a.example/relay"),
    ]
}

fn remotes() -> Vec<Candidate> {
    vec![
        host("10.0.0.5:40000", Transport::Quic),
        srflx("203.0.113.20:51000", Transport::Quic),
        host("[2001:db8::5]:40000", Transport::Quic), // other family: no pair
        relay("203.0.113.1:443", "wss://home-b.example/relay"),
    ]
}

#[test]
fn pairs_are_formed_and_sorted() {
    let p = CheckPlanner::new(&locals(), &remotes(), true, fast());
    let kinds: Vec<PathKind> = p.pairs().iter().map(|x| x.kind).collect();
    assert_eq!(
        kinds,
        vec![PathKind::Direct, PathKind::Punched, PathKind::Relayed]
    );
    assert!(p.pairs().windows(2).all(|w| w[0].priority >= w[1].priority));
    // Local srflx candidates never pair (their base, the host, does); TCP
    // host has no TCP remote; IPv4 and IPv6 do not mix.
    assert!(p
        .pairs()
        .iter()
        .all(|x| x.local.kind != CandidateKind::ServerReflexive));
    assert!(p
        .pairs()
        .iter()
        .all(|x| x.local.transport == x.remote.transport || x.kind == PathKind::Relayed));
    // Both sides compute the same priority for the same pair (G/D swap
    // with the role); punched pairs differ by design (each side punches
    // towards the other's srflx from its own host base).
    let q = CheckPlanner::new(&remotes(), &locals(), false, fast());
    for kind in [PathKind::Direct, PathKind::Relayed] {
        let mine = p.pairs().iter().find(|x| x.kind == kind).unwrap();
        let theirs = q.pairs().iter().find(|x| x.kind == kind).unwrap();
        assert_eq!(mine.priority, theirs.priority, "{kind:?}");
        assert_eq!(mine.local, theirs.remote);
    }
}

#[test]
fn paced_parallel_checks_and_best_success_wins() {
    let t = Instant::now();
    let mut p = CheckPlanner::new(&locals(), &remotes(), true, fast());
    assert_eq!(p.poll(t), PlannerAction::StartCheck(PairId(0)));
    // Pacing: the next check waits 50 ms.
    assert_eq!(
        p.poll(t),
        PlannerAction::WaitUntil(t + Duration::from_millis(50))
    );
    let t1 = t + Duration::from_millis(50);
    assert_eq!(p.poll(t1), PlannerAction::StartCheck(PairId(1)));
    let t2 = t1 + Duration::from_millis(50);
    assert_eq!(p.poll(t2), PlannerAction::StartCheck(PairId(2)));
    // Relay answers first, then the punched pair; the direct one is still
    // running, so the planner waits (settle) rather than taking the relay.
    p.on_result(
        PairId(2),
        Some(Duration::from_millis(80)),
        t2 + Duration::from_millis(1),
    );
    p.on_result(
        PairId(1),
        Some(Duration::from_millis(30)),
        t2 + Duration::from_millis(2),
    );
    let t3 = t2 + Duration::from_millis(3);
    assert_eq!(
        p.poll(t3),
        PlannerAction::WaitUntil(t2 + Duration::from_millis(201))
    );
    // The direct pair fails: the punched pair is now the best possible.
    p.on_result(PairId(0), None, t3);
    let PlannerAction::Decided(choice) = p.poll(t3) else {
        panic!()
    };
    assert_eq!(choice.kind, PathKind::Punched);
    assert_eq!(choice.remote.addr, "203.0.113.20:51000".parse().unwrap());
    assert_eq!(choice.rtt, Duration::from_millis(30));
    // The decision is sticky; late results are ignored.
    p.on_result(PairId(0), Some(Duration::from_millis(1)), t3);
    assert_eq!(
        p.poll(t3 + Duration::from_secs(5)),
        PlannerAction::Decided(choice)
    );
}

#[test]
fn settle_timeout_takes_relay_when_direct_hangs() {
    let t = Instant::now();
    let mut cfg = fast();
    cfg.check_timeout = Duration::from_secs(10);
    let mut p = CheckPlanner::new(&locals(), &remotes(), true, cfg);
    let mut now = t;
    let mut started = vec![];
    while started.len() < 3 {
        match p.poll(now) {
            PlannerAction::StartCheck(id) => started.push(id),
            PlannerAction::WaitUntil(d) => now = d,
            other => panic!("{other:?}"),
        }
    }
    p.on_result(PairId(2), Some(Duration::from_millis(90)), now);
    assert!(matches!(p.poll(now), PlannerAction::WaitUntil(_)));
    let PlannerAction::Decided(c) = p.poll(now + Duration::from_millis(200)) else {
        panic!()
    };
    assert_eq!(c.kind, PathKind::Relayed);
    assert_eq!(
        c.remote.relay_url.as_deref(),
        Some("wss://home-b.example/relay")
    );
}

#[test]
fn timeouts_fail_pairs_and_no_path_is_reported() {
    let t = Instant::now();
    let mut p = CheckPlanner::new(&locals(), &remotes(), true, fast());
    let mut now = t;
    for _ in 0..100 {
        match p.poll(now) {
            PlannerAction::StartCheck(_) => {}
            PlannerAction::WaitUntil(d) => {
                assert!(d > now, "deadline must advance");
                now = d;
            }
            PlannerAction::NoPath => break,
            PlannerAction::Decided(c) => panic!("{c:?}"),
        }
    }
    assert_eq!(p.poll(now), PlannerAction::NoPath);
    // Last check started at 100 ms and times out 1 s later.
    assert_eq!(now, t + Duration::from_millis(1100));
    assert_eq!(
        CheckPlanner::new(&[], &remotes(), true, fast()).poll(t),
        PlannerAction::NoPath
    );
}

#[test]
fn in_flight_limit_is_respected() {
    let t = Instant::now();
    let l: Vec<Candidate> = (0..6)
        .map(|i| host(&format!("192.0.2.{}:1", i + 1), Transport::Quic))
        .collect();
    let r: Vec<Candidate> = (0..6)
        .map(|i| host(&format!("198.51.100.{}:1", i + 1), Transport::Quic))
        .collect();
    let mut cfg = fast();
    cfg.max_in_flight = 2;
    cfg.pacing = Duration::ZERO;
    cfg.max_pairs = 10;
    let mut p = CheckPlanner::new(&l, &r, true, cfg);
    assert_eq!(p.pairs().len(), 10);
    assert!(matches!(p.poll(t), PlannerAction::StartCheck(_)));
    assert!(matches!(p.poll(t), PlannerAction::StartCheck(_)));
    assert_eq!(
        p.poll(t),
        PlannerAction::WaitUntil(t + Duration::from_secs(1))
    );
    p.on_result(PairId(0), None, t);
    assert_eq!(p.poll(t), PlannerAction::StartCheck(PairId(2)));
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

fn arb_cands(kind_bias: u8) -> impl Strategy<Value = Vec<Candidate>> {
    // Mostly QUIC host / server-reflexive candidates so that most cases have
    // several pairs checked concurrently; some TCP and relay ones too.
    proptest::collection::vec((0u8..8, 1u16..4, 0u8..10, 0u8..4), 1..6).prop_map(move |v| {
        v.into_iter()
            .map(|(host, port, k, tr)| {
                let addr = std::net::SocketAddr::from(([192, 0, 2 + kind_bias, host + 1], port));
                let t = if tr == 0 {
                    Transport::Tcp
                } else {
                    Transport::Quic
                };
                match k {
                    0..=4 => Candidate::new(CandidateKind::Host, t, addr, 0, None),
                    5..=7 => Candidate::new(CandidateKind::ServerReflexive, t, addr, 0, Some("s")),
                    _ => Candidate::relay(t, addr, "wss://r/relay"),
                }
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    // The planner always ends (Decided or NoPath) with deadlines that move
    // forward, and the decision is a pair that succeeded, never beaten by a
    // higher-priority pair that succeeded before the decision (§5.4).
    #[test]
    fn planner_terminates_and_picks_a_success(
        local in arb_cands(0),
        remote in arb_cands(1),
        outcomes in proptest::collection::vec((any::<bool>(), 1u64..4000), 64),
        controlling in any::<bool>(),
    ) {
        let t0 = Instant::now();
        let mut p = CheckPlanner::new(&local, &remote, controlling, fast());
        let mut now = t0;
        let mut pending: Vec<(Instant, PairId, bool, u64)> = vec![];
        let mut k = 0;
        let mut decided = None;
        let mut first_success: Option<Instant> = None;
        for _ in 0..10_000 {
            // Deliver results that are due.
            pending.sort_by_key(|x| x.0);
            while let Some(&(due, id, ok, rtt)) = pending.first() {
                if due > now { break; }
                pending.remove(0);
                if ok && first_success.is_none() {
                    first_success = Some(now);
                }
                p.on_result(id, ok.then(|| Duration::from_millis(rtt)), now);
            }
            match p.poll(now) {
                PlannerAction::StartCheck(id) => {
                    let (ok, ms) = outcomes[k % outcomes.len()];
                    k += 1;
                    pending.push((now + Duration::from_millis(ms), id, ok, ms));
                }
                PlannerAction::WaitUntil(d) => {
                    prop_assert!(d > now);
                    let next_result = pending.iter().map(|x| x.0).min();
                    now = next_result.map_or(d, |r| r.min(d)).max(now + Duration::from_micros(1));
                }
                PlannerAction::Decided(c) => { decided = Some(Some(c)); break; }
                PlannerAction::NoPath => { decided = Some(None); break; }
            }
        }
        let decided = decided.expect("planner ended");
        prop_assert!(now <= t0 + Duration::from_secs(60));
        if let Some(c) = decided {
            let pair = p.pairs().iter().find(|x| x.local == c.local && x.remote == c.remote && x.kind == c.kind).unwrap();
            prop_assert!(matches!(pair.state, PairState::Succeeded(_)));
            prop_assert!(p.pairs().iter().all(|x| !matches!(x.state, PairState::Succeeded(_)) || x.priority <= pair.priority));
            // Either nothing better could still succeed, or the settle time passed.
            let better_open = p.pairs().iter().any(|x| x.priority > pair.priority && x.state != PairState::Failed);
            prop_assert!(!better_open || now >= first_success.unwrap() + fast().settle);
        } else {
            prop_assert!(p.pairs().iter().all(|x| x.state == PairState::Failed));
        }
    }
}
