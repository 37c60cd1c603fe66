//! The run protocol's attempts (spec/lobby.md §8), deterministically: parties exchange
//! `ready`s through in-memory queues (FIFO, as a mediator delivers), with stale messages of
//! earlier attempts queued first.
#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;

use mpc_did_lobby::attempt::{Abort, AttemptId, Attempts, Event, Ready};
use mpc_did_lobby::{Coordinator, Join, Offer, PartyId, Program, Roster};

const DIDS: [&str; 3] = ["did:key:z6MkA", "did:key:z6MkB", "did:key:z6MkC"];
const T0: u64 = 1_900_000_000;
/// Our start, Unix milliseconds.
const T0_MS: u64 = T0 * 1000;

fn roster() -> Roster {
    let program = Program::from_bytes("p.py", b"x");
    let offer = Offer::new(DIDS[0].into(), 3, program.clone(), vec![], 2_000_000_000).unwrap();
    let mut lobby = Coordinator::new(offer.clone());
    for did in &DIDS[1..] {
        let join = Join {
            mpc_session_id: offer.mpc_session_id,
            program_sha256: program.sha256.clone(),
            services: vec![],
        };
        lobby.handle_join(did, &join, T0).unwrap();
    }
    lobby.roster().unwrap()
}

/// Queued `ready`s: (from, to, body).
type Wire = VecDeque<(PartyId, PartyId, Ready)>;

fn push(wire: &mut Wire, from: PartyId, events: Vec<Event>) -> Vec<Event> {
    let mut rest = Vec::new();
    for e in events {
        match e {
            Event::Send { to, ready } => wire.push_back((from, to, ready)),
            other => rest.push(other),
        }
    }
    rest
}

/// Deliver until quiet; returns the non-send events per party.
fn run(parties: &mut [Attempts], wire: &mut Wire) -> Vec<Vec<Event>> {
    let mut seen = vec![Vec::new(); parties.len()];
    let mut steps = 0;
    while let Some((from, to, ready)) = wire.pop_front() {
        steps += 1;
        assert!(steps < 100, "the exchange does not converge");
        let i = usize::from(to);
        let events = parties[i].handle_ready(DIDS[usize::from(from)], &ready);
        seen[i].extend(push(wire, to, events));
    }
    seen
}

#[test]
fn three_parties_agree_on_each_others_attempts() {
    let r = roster();
    let mut parties: Vec<Attempts> = (0..3)
        .map(|i| Attempts::new(&r, i, AttemptId::random(), T0_MS))
        .collect();
    let mut wire = Wire::new();
    for (i, p) in parties.iter().enumerate() {
        let hello = p.hello();
        push(&mut wire, PartyId::try_from(i).unwrap(), hello);
    }
    let seen = run(&mut parties, &mut wire);
    for (i, events) in seen.iter().enumerate() {
        let ups = events
            .iter()
            .filter(|e| matches!(e, Event::PeerUp { .. }))
            .count();
        assert_eq!(ups, 2, "party {i}: {events:?}");
    }
    // Both ends of each pair bind the session to the same pair of attempts.
    for (a, b) in [(0u16, 1u16), (0, 2), (1, 2)] {
        let x = parties[usize::from(a)].binding_id(b).unwrap();
        let y = parties[usize::from(b)].binding_id(a).unwrap();
        assert_eq!(x, y);
        assert!(x.starts_with(&r.mpc_session_id.to_string()));
        assert!(x.contains(&parties[usize::from(a)].mine().to_string()));
    }
}

/// The bug of the issue: a failed run left its messages queued; the next run must bind to
/// the new attempt, never to the stale one.
#[test]
fn stale_readies_of_an_earlier_attempt_do_not_win() {
    let r = roster();
    let old_b = Attempts::new(&r, 1, AttemptId::random(), T0_MS - 100_000);
    let mut parties = [
        Attempts::new(&r, 0, AttemptId::random(), T0_MS),
        Attempts::new(&r, 1, AttemptId::random(), T0_MS),
    ];
    let mut wire = Wire::new();
    // B's earlier run said hello, and answered A's earlier attempt, before it failed.
    let stale_hello = old_b.hello();
    push(&mut wire, 1, stale_hello.into_iter().take(1).collect());
    wire.push_back((
        1,
        0,
        Ready {
            peer_attempt: Some(AttemptId::random()),
            ..old_stale(&old_b)
        },
    ));
    let (h0, h1) = (parties[0].hello(), parties[1].hello());
    push(&mut wire, 0, h0.into_iter().take(1).collect());
    push(&mut wire, 1, h1.into_iter().take(1).collect());
    // Only A and B here: drop what is addressed to party 2.
    let mut seen = vec![Vec::new(), Vec::new()];
    let mut steps = 0;
    while let Some((from, to, ready)) = wire.pop_front() {
        steps += 1;
        assert!(steps < 100);
        if to == 2 {
            continue;
        }
        let events = parties[usize::from(to)].handle_ready(DIDS[usize::from(from)], &ready);
        seen[usize::from(to)].extend(push(&mut wire, to, events));
    }
    assert!(parties[0].is_up(1) && parties[1].is_up(0), "{seen:?}");
    let id = parties[0].binding_id(1).unwrap();
    assert_eq!(Some(id.clone()), parties[1].binding_id(0));
    assert!(
        !id.contains(&old_b.mine().to_string()),
        "bound to the stale attempt"
    );
    assert!(id.contains(&parties[1].mine().to_string()));
}

fn old_stale(old: &Attempts) -> Ready {
    match old.hello().into_iter().next().unwrap() {
        Event::Send { ready, .. } => ready,
        other => panic!("{other:?}"),
    }
}

/// An abort of `a`'s attempt created `at_ms`.
fn abort_at(a: &Attempts, reason: &str, at_ms: u64) -> Abort {
    a.abort("program-mismatch", reason, at_ms)
}

#[test]
fn only_a_fresh_signed_abort_of_a_roster_member_stops_a_run() {
    let r = roster();
    let mut a = Attempts::new(&r, 0, AttemptId::random(), T0_MS);
    let c = Attempts::new(&r, 2, AttemptId::random(), T0_MS);
    let abort = abort_at(&c, "wrong program hash", T0_MS + 1);
    // Not signed, signed by a stranger, or by another roster member than it claims: ignored.
    assert!(matches!(a.handle_abort(None, &abort), Event::Ignored(_)));
    assert!(matches!(
        a.handle_abort(Some("did:key:z6MkMallory"), &abort),
        Event::Ignored(_)
    ));
    assert!(matches!(
        a.handle_abort(Some(DIDS[1]), &abort),
        Event::Ignored(_)
    ));
    // For another MPC session: ignored.
    let mut other = abort.clone();
    other.mpc_session_id = "00".repeat(16).parse().unwrap();
    assert!(matches!(
        a.handle_abort(Some(DIDS[2]), &other),
        Event::Ignored(_)
    ));
    // Queued from before our start (an earlier run of party 2): ignored, even 1 ms before.
    for before in [60_000, 1] {
        let stale = abort_at(&c, "old", T0_MS - before);
        assert!(matches!(
            a.handle_abort(Some(DIDS[2]), &stale),
            Event::Ignored(_)
        ));
    }
    // ... unless it names our attempt: then party 2 knew this run, whatever the clocks say.
    let mut knows_us = abort_at(&c, "old clock", T0_MS - 60_000);
    knows_us.peer_attempts = vec![a.mine()];
    assert!(matches!(
        a.handle_abort(Some(DIDS[2]), &knows_us),
        Event::Aborted { party: 2, .. }
    ));
    // Signed by party 2 itself, during our run: stops it, naming party and reason.
    assert_eq!(
        a.handle_abort(Some(DIDS[2]), &abort),
        Event::Aborted {
            party: 2,
            code: "program-mismatch".into(),
            reason: "wrong program hash".into()
        }
    );
}

#[test]
fn an_abort_of_another_attempt_of_a_peer_that_is_up_is_ignored() {
    let r = roster();
    let mut parties = [
        Attempts::new(&r, 0, AttemptId::random(), T0_MS),
        Attempts::new(&r, 1, AttemptId::random(), T0_MS),
    ];
    let mut wire = Wire::new();
    let (h0, h1) = (parties[0].hello(), parties[1].hello());
    push(&mut wire, 0, h0.into_iter().take(1).collect());
    push(&mut wire, 1, h1.into_iter().take(1).collect());
    while let Some((from, to, ready)) = wire.pop_front() {
        let events = parties[usize::from(to)].handle_ready(DIDS[usize::from(from)], &ready);
        push(&mut wire, to, events);
    }
    assert!(parties[0].is_up(1));
    let stranger_attempt = Attempts::new(&r, 1, AttemptId::random(), T0_MS);
    let mut stale = abort_at(&stranger_attempt, "old", T0_MS + 5);
    stale.peer_attempts.clear();
    assert!(matches!(
        parties[0].handle_abort(Some(DIDS[1]), &stale),
        Event::Ignored(_)
    ));
    let current = abort_at(&parties[1], "interrupted", T0_MS + 5);
    assert!(matches!(
        parties[0].handle_abort(Some(DIDS[1]), &current),
        Event::Aborted { party: 1, .. }
    ));
}

#[test]
fn readies_from_strangers_or_for_other_sessions_are_ignored() {
    let r = roster();
    let mut a = Attempts::new(&r, 0, AttemptId::random(), T0_MS);
    let b = Attempts::new(&r, 1, AttemptId::random(), T0_MS);
    let ready = old_stale(&b);
    let ev = a.handle_ready("did:key:z6MkMallory", &ready);
    assert!(matches!(ev.as_slice(), [Event::Ignored(_)]), "{ev:?}");
    let mut other = ready.clone();
    other.mpc_session_id = "11".repeat(16).parse().unwrap();
    let ev = a.handle_ready(DIDS[1], &other);
    assert!(matches!(ev.as_slice(), [Event::Ignored(_)]), "{ev:?}");
    // A repeated ready is answered once.
    let first = a.handle_ready(DIDS[1], &ready);
    let second = a.handle_ready(DIDS[1], &ready);
    assert_eq!(first.len(), 1);
    assert!(second.is_empty(), "{second:?}");
    assert!(
        a.binding_id(1).is_none(),
        "not up before B names our attempt"
    );
}

#[test]
fn ids_parse_at_the_edge() {
    assert!("0123".parse::<AttemptId>().is_err());
    assert!("00112233445566778899AABBCCDDEEFF"
        .parse::<AttemptId>()
        .is_err());
    let id = AttemptId::random();
    assert_eq!(id.to_string().parse::<AttemptId>().unwrap(), id);
    let mpc = r#""00112233445566778899aabbccddeeff""#;
    assert!(serde_json::from_str::<mpc_did_lobby::MpcSessionId>(mpc).is_ok());
    assert!(serde_json::from_str::<mpc_did_lobby::MpcSessionId>(r#""zz""#).is_err());
}

/// spec/lobby.md §8 "Telling late starters": party 2 stops (wrong program) before party 0
/// even started; party 0's plain `abort` rule would ignore an abort created before its
/// start, so party 2 answers party 0's first `ready` with an `abort` naming party 0's
/// attempt, which party 0 acts on. Without this, party 0 waited until --connect-timeout.
#[test]
fn a_party_that_stopped_tells_a_peer_that_starts_later() {
    let r = roster();
    let mut c = Attempts::new(&r, 2, AttemptId::random(), T0_MS);
    let first = c.stop("program-mismatch", "wrong program hash", T0_MS + 1);
    assert!(
        first.peer_attempts.is_empty(),
        "nobody announced an attempt yet"
    );
    assert!(!c.all_told());
    assert_eq!(c.untold(), vec![0, 1]);
    // Party 0 starts after the abort was created: the first abort alone does not stop it.
    let mut a = Attempts::new(&r, 0, AttemptId::random(), T0_MS + 500);
    assert!(matches!(
        a.handle_abort(Some(DIDS[2]), &first),
        Event::Ignored(_)
    ));
    // Its hello reaches party 2, which is stopping: answered with an abort naming it.
    let hello = a
        .hello()
        .into_iter()
        .find_map(|e| match e {
            Event::Send { to: 2, ready } => Some(ready),
            _ => None,
        })
        .unwrap();
    let events = c.handle_ready(DIDS[0], &hello);
    let [Event::SendAbort { to: 0, abort }] = events.as_slice() else {
        panic!("expected an abort for party 0, got {events:?}");
    };
    assert_eq!(abort.peer_attempts, vec![a.mine()]);
    assert_eq!(abort.code, "program-mismatch");
    assert_eq!(c.untold(), vec![1]);
    assert_eq!(
        a.handle_abort(Some(DIDS[2]), abort),
        Event::Aborted {
            party: 2,
            code: "program-mismatch".into(),
            reason: "wrong program hash".into()
        }
    );
    // The same ready again is not answered twice; a stranger's ready changes nothing.
    assert!(matches!(
        c.handle_ready(DIDS[0], &hello).as_slice(),
        [Event::Ignored(_)]
    ));
    assert!(matches!(
        c.handle_ready("did:key:z6MkMallory", &hello).as_slice(),
        [Event::Ignored(_)]
    ));
    // Party 1 announces itself: now everyone is told; no ready is ever sent while stopping.
    let b = Attempts::new(&r, 1, AttemptId::random(), T0_MS + 900);
    let hello_b = b
        .hello()
        .into_iter()
        .find_map(|e| match e {
            Event::Send { to: 2, ready } => Some(ready),
            _ => None,
        })
        .unwrap();
    let events = c.handle_ready(DIDS[1], &hello_b);
    assert!(matches!(
        events.as_slice(),
        [Event::SendAbort { to: 1, .. }]
    ));
    assert!(c.all_told());
}

/// A peer whose attempt we knew when we stopped is named in the first abort: told.
#[test]
fn peers_known_at_the_stop_are_told_by_the_first_abort() {
    let r = roster();
    let mut a = Attempts::new(&r, 0, AttemptId::random(), T0_MS);
    let b = Attempts::new(&r, 1, AttemptId::random(), T0_MS);
    let ready = b
        .hello()
        .into_iter()
        .find_map(|e| match e {
            Event::Send { to: 0, ready } => Some(ready),
            _ => None,
        })
        .unwrap();
    a.handle_ready(DIDS[1], &ready);
    let abort = a.stop("interrupted", "Ctrl-C", T0_MS + 10);
    assert_eq!(abort.peer_attempts, vec![b.mine()]);
    assert_eq!(a.untold(), vec![2]);
    assert!(matches!(
        a.handle_ready(DIDS[1], &ready).as_slice(),
        [Event::Ignored(_)]
    ));
}

/// spec/lobby.md §8 "Same transport": parties that chose different `--transport`s find out
/// from each other's first `ready` (instead of each waiting for a session or a DIDComm data
/// message the other never sends); a `ready` without the field is a `session` run's.
#[test]
fn a_peer_on_another_transport_is_a_mismatch_at_its_first_ready() {
    let r = roster();
    let mut parties = vec![
        Attempts::new(&r, 0, AttemptId::random(), T0_MS).with_transport("didcomm"),
        Attempts::new(&r, 1, AttemptId::random(), T0_MS),
    ];
    let mut wire = Wire::new();
    let (h0, h1) = (parties[0].hello(), parties[1].hello());
    push(&mut wire, 0, h0.into_iter().take(1).collect());
    push(&mut wire, 1, h1.into_iter().take(1).collect());
    let seen = run(&mut parties, &mut wire);
    assert!(!parties[0].is_up(1) && !parties[1].is_up(0));
    assert_eq!(
        seen[0],
        vec![Event::TransportMismatch {
            party: 1,
            theirs: "session".into(),
            ours: "didcomm".into()
        }]
    );
    assert_eq!(
        seen[1],
        vec![Event::TransportMismatch {
            party: 0,
            theirs: "didcomm".into(),
            ours: "session".into()
        }]
    );
    // The abort the mismatch leads to names the peer's attempt, so it is not left to tell
    // (before, the stopping party waited 10 s for a "late starter" that had already spoken).
    let mut stopping = parties[0].clone();
    let abort = stopping.stop("transport-mismatch", "another transport", T0_MS + 1);
    assert_eq!(abort.peer_attempts, vec![parties[1].mine()]);
    // (party 2 of this 3-party roster never spoke: it stays to be told)
    assert_eq!(stopping.untold(), vec![2]);
    // A peer from before the field: its ready has no `transport`, i.e. `session`.
    let mut old = parties[1].hello().into_iter().find_map(|e| match e {
        Event::Send { to: 0, ready } => Some(ready),
        _ => None,
    });
    let old = old.as_mut().unwrap();
    old.transport = None;
    let json = serde_json::to_value(&*old).unwrap();
    assert!(json.get("transport").is_none(), "{json}");
    let mut session = Attempts::new(&r, 0, AttemptId::random(), T0_MS);
    assert!(session
        .handle_ready(DIDS[1], old)
        .iter()
        .all(|e| !matches!(e, Event::TransportMismatch { .. })));
    assert!(matches!(
        parties[0].handle_ready(DIDS[1], old).as_slice(),
        [Event::TransportMismatch { .. }]
    ));
}
