//! The lobby checks of spec/lobby.md §4 and the roster hash of §3.
#![allow(clippy::unwrap_used)]

use mpc_did_lobby::{Coordinator, Join, JoinOutcome, LobbyError, Offer, Program, Roster};
use proptest::prelude::*;
use sha2::{Digest as _, Sha256};

const A: &str = "did:key:z6MkAlice";
const B: &str = "did:key:z6MkBob";
const C: &str = "did:key:z6MkCarol";
const NOW: u64 = 1_900_000_000;

fn program() -> Program {
    Program::from_bytes("santa.py", b"from mpyc.runtime import mpc\n")
}

fn offer(n: u16) -> Offer {
    Offer::new(
        A.into(),
        n,
        program(),
        vec!["--people".into(), "5".into()],
        NOW + 600,
    )
    .unwrap()
}

fn join(o: &Offer) -> Join {
    Join {
        mpc_session_id: o.mpc_session_id,
        program_sha256: o.program.sha256.clone(),
        services: vec![serde_json::json!({"uri": "http://127.0.0.1:1/didcomm", "routingKeys": []})],
    }
}

fn full_lobby() -> (Offer, Roster) {
    let o = offer(3);
    let mut lobby = Coordinator::new(o.clone());
    assert_eq!(
        lobby.handle_join(B, &join(&o), NOW),
        Ok(JoinOutcome::Accepted(1))
    );
    assert!(
        lobby.roster().is_none(),
        "no roster before all parties are in"
    );
    assert_eq!(
        lobby.handle_join(C, &join(&o), NOW),
        Ok(JoinOutcome::Accepted(2))
    );
    (o, lobby.roster().unwrap())
}

#[test]
fn ids_in_join_order_and_everyone_agrees() {
    let (o, roster) = full_lobby();
    assert_eq!(roster.accept(&o, Some(A), A, NOW), Ok(0));
    assert_eq!(roster.accept(&o, Some(A), B, NOW), Ok(1));
    assert_eq!(roster.accept(&o, Some(A), C, NOW), Ok(2));
    // What travels is JSON: the hash survives the trip.
    let wire = serde_json::to_string(&roster).unwrap();
    let back: Roster = serde_json::from_str(&wire).unwrap();
    assert_eq!(back.accept(&o, Some(A), C, NOW), Ok(2));
}

#[test]
fn coordinator_refusals_in_spec_order() {
    let o = offer(2);
    let mut lobby = Coordinator::new(o.clone());
    let mut j = join(&o);
    j.mpc_session_id = "00".repeat(16).parse().unwrap();
    assert_eq!(
        lobby.handle_join(B, &j, NOW).unwrap_err().reason(),
        "unknown-session"
    );
    assert_eq!(
        lobby
            .handle_join(B, &join(&o), NOW + 601)
            .unwrap_err()
            .reason(),
        "expired"
    );
    let mut j = join(&o);
    j.program_sha256 = "11".repeat(32);
    assert_eq!(
        lobby.handle_join(B, &j, NOW).unwrap_err().reason(),
        "program-mismatch"
    );
    assert_eq!(
        lobby.handle_join(B, &join(&o), NOW),
        Ok(JoinOutcome::Accepted(1))
    );
    // At-least-once delivery: the same join again is the same seat, not a new one.
    assert_eq!(
        lobby.handle_join(B, &join(&o), NOW),
        Ok(JoinOutcome::Repeated(1))
    );
    assert_eq!(lobby.handle_join(C, &join(&o), NOW), Err(LobbyError::Full));
}

#[test]
fn party_refuses_bad_rosters() {
    let (o, roster) = full_lobby();
    let reason = |r: &Roster, signer: Option<&str>, me: &str, now: u64| {
        r.accept(&o, signer, me, now).unwrap_err().reason()
    };
    assert_eq!(reason(&roster, None, B, NOW), "bad-signature");
    assert_eq!(reason(&roster, Some(C), B, NOW), "bad-signature");
    assert_eq!(
        reason(&roster, Some(A), "did:key:z6MkMallory", NOW),
        "not-in-roster"
    );
    assert_eq!(reason(&roster, Some(A), B, NOW + 601), "expired");

    // Any edit after signing breaks the hash.
    let mut swapped = roster.clone();
    swapped.parties.swap(1, 2);
    assert_eq!(reason(&swapped, Some(A), B, NOW), "malformed");
    let mut args = roster.clone();
    args.mpyc_args.push("--people=9".into());
    assert_eq!(reason(&args, Some(A), B, NOW), "malformed");

    // A well-hashed roster that renumbers parties or drops the coordinator is refused too.
    let mut renumbered = roster.clone();
    renumbered.parties[2].id = 7;
    renumbered.roster_hash = hex::encode(renumbered.compute_hash().unwrap());
    assert_eq!(reason(&renumbered, Some(A), B, NOW), "malformed");
    let mut other = roster.clone();
    other.parties[0].did = "did:key:z6MkEve".into();
    other.roster_hash = hex::encode(other.compute_hash().unwrap());
    assert_eq!(reason(&other, Some(A), B, NOW), "wrong-coordinator");
}

#[test]
fn program_hash_is_checked_before_running() {
    let (_, roster) = full_lobby();
    assert_eq!(
        roster.check_program(b"from mpyc.runtime import mpc\n"),
        Ok(())
    );
    let err = roster
        .check_program(b"print('something else')\n")
        .unwrap_err();
    assert_eq!(err.reason(), "program-mismatch");
    assert!(err.to_string().contains(&roster.program.sha256));
}

#[test]
fn offers_that_touch_mpyc_networking_are_refused() {
    for bad in [
        "-P",
        "-M4",
        "-I1",
        "--index=2",
        "--ind",
        "-C",
        "--config",
        "--ssl",
        "-B11000",
    ] {
        let err = Offer::new(A.into(), 3, program(), vec![bad.into()], NOW).unwrap_err();
        assert_eq!(err.reason(), "malformed", "{bad}");
    }
    for ok in ["--people", "5", "--length=10", "-L64", "--no-log"] {
        Offer::new(A.into(), 3, program(), vec![ok.into()], NOW).unwrap();
    }
    assert!(Offer::new(A.into(), 1, program(), vec![], NOW).is_err());
    assert!(Offer::new(A.into(), 65, program(), vec![], NOW).is_err());
    assert!(Offer::new("alice".into(), 3, program(), vec![], NOW).is_err());
}

/// spec/lobby.md §2 `mpyc_args`, spec/security.md §10: every way Python's argparse (MPyC
/// 0.11's parser) reads an argument as a networking option is refused, not only the
/// spelled-out option: flags chained in front (`-hB7000` is `-h -B 7000`, which made MPyC
/// listen on TCP port 7000+i), `=` after a flag, abbreviated long options with a value,
/// and `--`, after which MPyC would not read the launcher's `-M`/`-I`/`-P` at all.
#[test]
fn offers_that_reach_mpyc_networking_through_argparse_are_refused() {
    for bad in [
        "-hB7000",
        "-HB7000",
        "-VB7000",
        "-vB7000",
        "-hhB7000",
        "-h=B7000",
        "-h=hB7000",
        "-B=7000",
        "-B7000",
        "-hI3",
        "-hM9",
        "-hPevil.example:1",
        "-hCparties.ini",
        "--base=7000",
        "--base",
        "--base-port=7000",
        "--in=1",
        "--conf=x.ini",
        "--ss",
        "--",
        "--=1",
    ] {
        let err = Offer::new(
            A.into(),
            3,
            program(),
            vec!["--people".into(), bad.into()],
            NOW,
        )
        .unwrap_err();
        assert_eq!(err.reason(), "malformed", "{bad}");
        assert!(err.to_string().contains(bad), "{bad}: {err}");
    }
    // The rest of an argument after a value-taking option is its value, and what MPyC
    // does not know goes to the program.
    for ok in [
        "-L64",
        "-fB7000",
        "-T1",
        "-5",
        "-",
        "--no-prss",
        "--no-p",
        "--bit-length=64",
    ] {
        Offer::new(A.into(), 3, program(), vec![ok.into()], NOW).unwrap();
    }
}

/// spec/lobby.md §3, pinned: an independent implementation must produce this hash.
#[test]
fn roster_hash_vector() {
    let roster = Roster {
        mpc_session_id: "000102030405060708090a0b0c0d0e0f".parse().unwrap(),
        program: Program {
            name: "p.py".into(),
            sha256: "ab".repeat(32),
        },
        mpyc_args: vec!["--x".into()],
        parties: vec![
            mpc_did_lobby::RosterEntry {
                id: 0,
                did: "did:key:a".into(),
                services: vec![],
            },
            mpc_did_lobby::RosterEntry {
                id: 1,
                did: "did:key:b".into(),
                services: vec![serde_json::json!({"uri": "ignored"})],
            },
        ],
        expires_time: 1,
        roster_hash: String::new(),
    };
    // Recomputed independently with Python's hashlib and struct.pack (see spec/lobby.md §3).
    let expected = include_str!("vectors/roster_hash.txt").trim();
    assert_eq!(hex::encode(roster.compute_hash().unwrap()), expected);
}

proptest! {
    /// Any change of party DID, order, arguments or expiry changes the roster hash.
    #[test]
    fn roster_hash_binds_every_field(dids in proptest::collection::vec("[a-z]{1,12}", 2..6), arg in "[a-z-]{0,8}", exp in any::<u64>()) {
        let parties: Vec<_> = dids.iter().enumerate().map(|(i, d)| mpc_did_lobby::RosterEntry {
            id: u16::try_from(i).unwrap(), did: format!("did:key:{d}"), services: vec![] }).collect();
        let base = Roster { mpc_session_id: "11".repeat(16).parse().unwrap(), program: program(), mpyc_args: vec![arg.clone()],
            parties, expires_time: exp, roster_hash: String::new() };
        let h = base.compute_hash().unwrap();
        let mut e = base.clone(); e.expires_time = exp.wrapping_add(1);
        prop_assert_ne!(h, e.compute_hash().unwrap());
        let mut a = base.clone(); a.mpyc_args = vec![format!("{arg}x")];
        prop_assert_ne!(h, a.compute_hash().unwrap());
        let mut d = base.clone(); d.parties[1].did.push('x');
        prop_assert_ne!(h, d.compute_hash().unwrap());
        // Length prefixes: moving a character between adjacent fields changes the hash.
        let mut s = base.clone(); s.mpyc_args = vec![arg.clone(), String::new()];
        prop_assert_ne!(h, s.compute_hash().unwrap());
    }
}

/// spec/lobby.md §3: the roster hash's input byte string, written out
/// byte by byte from the spec text, for the inputs of `roster_hash_vector`. Program hash,
/// expiry and arguments come once, after the per-party loop.
#[test]
fn roster_hash_input_is_the_documented_byte_string() {
    let mut input = Vec::new();
    input.extend_from_slice(b"mpc-did/lobby/1.0/roster");
    input.extend_from_slice(&(0u8..16).collect::<Vec<_>>()); // sid 000102…0f
    input.extend_from_slice(&2u16.to_be_bytes()); // N
    for (id, did) in [(0u16, "did:key:a"), (1, "did:key:b")] {
        input.extend_from_slice(&id.to_be_bytes());
        input.extend_from_slice(&(did.len() as u32).to_be_bytes());
        input.extend_from_slice(did.as_bytes());
    }
    input.extend_from_slice(&[0xab; 32]); // program_sha256, raw
    input.extend_from_slice(&1u64.to_be_bytes()); // expires_time
    input.extend_from_slice(&1u16.to_be_bytes()); // one argument
    input.extend_from_slice(&3u32.to_be_bytes());
    input.extend_from_slice(b"--x");
    assert_eq!(
        hex::encode(&input),
        "6d70632d6469642f6c6f6262792f312e302f726f737465720001020304050607\
         08090a0b0c0d0e0f00020000000000096469643a6b65793a6100010000000964\
         69643a6b65793a62abababababababababababababababababababababababab\
         abababababababab00000000000000010001000000032d2d78"
    );
    let expected = include_str!("vectors/roster_hash.txt").trim();
    assert_eq!(hex::encode(Sha256::digest(&input)), expected);
}
