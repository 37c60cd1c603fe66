//! The DIDComm protocol document `spec/didcomm-protocol-secure-session.md` cannot drift
//! from the code: every JSON example in it is rebuilt here with the real message types
//! (`mpc-did-session` bodies and steps, `mpc-did-didcomm`'s `Message`, `mpc-did-rendezvous`
//! candidates, `mpc-did-connect`'s ad-hoc binding) and must be equal to it, must parse and
//! round-trip, and the handshake examples must run: the document's `propose` → `accept` →
//! `handshake` complete a real Noise handshake whose hash is the one published in
//! `crates/session/tests/vectors/session.json`. And what a real `Connector` sends through a
//! real mediator has the examples' shape (headers, body members, thread, signature): `live`.
//!
//! An example is a fenced `json` block right after a line `<!-- example: NAME -->`.
//! Rewrite the blocks (only when the protocol changes):
//! `MPC_DID_REGENERATE_VECTORS=1 cargo test -p mpc-did-connect --test protocol_doc examples_are_what_the_code_builds`
//! (the filter keeps the other tests from reading the file while it is rewritten).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;

use mpc_did_connect::{Binding, ConnectorConfig};
use mpc_did_didcomm::Message;
use mpc_did_driver::path;
use mpc_did_rendezvous::candidate::{
    gather, validate_candidates, Candidate, CandidateKind, Transport,
};
use mpc_did_session::messages::{
    AcceptBody, CandidatesBody, CloseBody, HandshakeBody, ProposeBody, ACCEPT_TYPE,
    CANDIDATES_TYPE, CLOSE_TYPE, HANDSHAKE_TYPE, MAX_CANDIDATES, PROPOSE_TYPE, PROTOCOL_URI,
};
use mpc_did_session::{
    Acceptor, Proposer, SessionBinding, SessionConfig, StaticKeypair, HANDSHAKE_MSG_LEN,
    MAX_ID_LEN, NOISE_PARAMS, PROLOGUE_LABEL,
};
use serde_json::Value;
use sha2::Digest;

const DOC: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../spec/didcomm-protocol-secure-session.md"
);
const SESSION_VECTORS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../session/tests/vectors/session.json"
);

// The inputs of crates/session/tests/vectors.rs, so that the document's handshake is the
// published one (spec/session.md §10).
const ACCEPTOR_STATIC: [u8; 32] = [0x11; 32];
const PROPOSER_STATIC: [u8; 32] = [0x22; 32];
const ACCEPTOR_EPH: [u8; 32] = [0x33; 32];
const PROPOSER_EPH: [u8; 32] = [0x44; 32];
const SESSION_ID: [u8; 16] = *b"sess-0123456789a";
const MPC: &str = "3f0c9a1be25d47f08c6e13a5b7d9f201";
/// The acceptor (Noise initiator).
const ACCEPTOR_DID: &str = "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp";
/// The proposer (Noise responder).
const PROPOSER_DID: &str = "did:key:z6MkjchhfUsD6mmvni8mCdXHw216Xrm9bQe2mBH1P5RDjVJG";

/// Message ids other than the proposal's (which is the session id): the implementation
/// draws 16 random bytes; fixed here.
const ACCEPT_ID: &str = "6a1c0e5f3b2d4978a0c1d2e3f4051627";
const HANDSHAKE_ID: &str = "7b2d1f604c3e5a89b1d2e3f405162738";
const CANDIDATES_ID: &str = "8c3e20715d4f6b9ac2e3f40516273849";
const CLOSE_ID: &str = "9d4f31826e507cabd3f405162738495a";
const DECLINE_ID: &str = "ae5042937f618dbce405162738495a6b";

fn roster_hash() -> [u8; 32] {
    std::array::from_fn(|i| u8::try_from(i).unwrap())
}

/// A plaintext message as `mpc-did-connect` builds it (`message()`) and the agent sends it
/// (`from`/`to` set by `Agent::send` / `send_signed`).
fn plaintext<T: serde::Serialize>(
    id: &str,
    type_: &str,
    body: &T,
    thid: Option<&str>,
    from: &str,
    to: &str,
) -> Message {
    let mut m = Message::new(id, type_, serde_json::to_value(body).unwrap())
        .from(from)
        .to(to);
    m.thid = thid.map(str::to_owned);
    m
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// The acceptor's candidates in the order `Connector::send_candidates` announces them:
/// TCP host candidates (the path listener), QUIC host and server-reflexive, the home relay.
fn acceptor_candidates() -> Vec<Candidate> {
    let mut out = vec![Candidate::new(
        CandidateKind::Host,
        Transport::Tcp,
        addr("192.0.2.10:7400"),
        0,
        None,
    )];
    out.extend(gather(
        Transport::Quic,
        &[addr("192.0.2.10:7401")],
        &[(
            addr("192.0.2.10:7401"),
            addr("198.51.100.23:62000"),
            "stun.mediator.example:3478",
        )],
        None,
    ));
    out.push(Candidate::relay(
        Transport::Tcp,
        addr("203.0.113.5:443"),
        "wss://mediator.example/relay",
    ));
    out
}

/// `(proposer, acceptor)` of an ad-hoc session between the two example DIDs: the bytewise
/// smaller DID proposes (`Connector::establish(peer, .., agent.did() < peer)`).
fn adhoc_roles() -> (&'static str, &'static str) {
    if ACCEPTOR_DID.as_bytes() < PROPOSER_DID.as_bytes() {
        (ACCEPTOR_DID, PROPOSER_DID)
    } else {
        (PROPOSER_DID, ACCEPTOR_DID)
    }
}

/// Every example of the document, built with the real code.
fn examples() -> BTreeMap<&'static str, Message> {
    let sid = hex::encode(SESSION_ID);
    let (proposer, propose) = Proposer::with_keypair(
        StaticKeypair::from_secret(PROPOSER_STATIC),
        SESSION_ID,
        MPC,
        roster_hash(),
        PROPOSER_DID,
        ACCEPTOR_DID,
    );
    let (acceptor, accept) = Acceptor::on_propose_with(
        StaticKeypair::from_secret(ACCEPTOR_STATIC),
        Some(&ACCEPTOR_EPH),
        &propose,
        MPC,
        roster_hash(),
        ACCEPTOR_DID,
        PROPOSER_DID,
    )
    .unwrap();
    let (_proposer_session, handshake) = proposer
        .on_accept_with(Some(&PROPOSER_EPH), &accept, SessionConfig::default(), 0)
        .unwrap();
    acceptor
        .on_handshake(&handshake, SessionConfig::default(), 0)
        .unwrap();

    let candidates = CandidatesBody {
        session_id: sid.clone(),
        candidates: acceptor_candidates()
            .iter()
            .map(|c| serde_json::to_value(c).unwrap())
            .collect(),
        end_of_candidates: true,
    };
    let close = CloseBody {
        session_id: sid.clone(),
        code: 0,
        reason: "done".into(),
    };
    // A proposal for another MPC session, declined as `Connector::accept` does: code 1, the
    // error's text as the reason.
    let other_sid: [u8; 16] = *b"sess-other-mpc-0";
    let (_, other_propose) = Proposer::with_keypair(
        StaticKeypair::from_secret(PROPOSER_STATIC),
        other_sid,
        "9e1d7c3a5b2f48e6a0c4d8b1f3e5a7c9",
        roster_hash(),
        PROPOSER_DID,
        ACCEPTOR_DID,
    );
    let refusal = Acceptor::on_propose(
        &other_propose,
        MPC,
        roster_hash(),
        ACCEPTOR_DID,
        PROPOSER_DID,
    )
    .unwrap_err();
    let decline = CloseBody {
        session_id: other_propose.session_id.clone(),
        code: 1,
        reason: refusal.to_string().chars().take(200).collect(),
    };

    // An ad-hoc session (no roster): `mpc-did session connect` / `pipe`. The smaller DID
    // proposes, so here the roles are the other way round.
    let (small, large) = adhoc_roles();
    let adhoc = Binding::adhoc(small, large);
    let adhoc_sid: [u8; 16] = *b"adhoc-0123456789";
    let (_, adhoc_propose) = Proposer::with_keypair(
        StaticKeypair::from_secret(PROPOSER_STATIC),
        adhoc_sid,
        &adhoc.mpc_session_id,
        adhoc.roster_hash,
        small,
        large,
    );

    let mut out = BTreeMap::new();
    out.insert(
        "propose",
        plaintext(
            &sid,
            PROPOSE_TYPE,
            &propose,
            None,
            PROPOSER_DID,
            ACCEPTOR_DID,
        ),
    );
    out.insert(
        "accept",
        plaintext(
            ACCEPT_ID,
            ACCEPT_TYPE,
            &accept,
            Some(&sid),
            ACCEPTOR_DID,
            PROPOSER_DID,
        ),
    );
    out.insert(
        "handshake",
        plaintext(
            HANDSHAKE_ID,
            HANDSHAKE_TYPE,
            &handshake,
            Some(&sid),
            PROPOSER_DID,
            ACCEPTOR_DID,
        ),
    );
    out.insert(
        "candidates",
        plaintext(
            CANDIDATES_ID,
            CANDIDATES_TYPE,
            &candidates,
            Some(&sid),
            ACCEPTOR_DID,
            PROPOSER_DID,
        ),
    );
    out.insert(
        "close",
        plaintext(
            CLOSE_ID,
            CLOSE_TYPE,
            &close,
            Some(&sid),
            PROPOSER_DID,
            ACCEPTOR_DID,
        ),
    );
    out.insert(
        "close-declined",
        plaintext(
            DECLINE_ID,
            CLOSE_TYPE,
            &decline,
            Some(&decline.session_id),
            ACCEPTOR_DID,
            PROPOSER_DID,
        ),
    );
    out.insert(
        "propose-adhoc",
        plaintext(
            &hex::encode(adhoc_sid),
            PROPOSE_TYPE,
            &adhoc_propose,
            None,
            small,
            large,
        ),
    );
    out
}

/// The document's JSON examples: `(name, text)` in document order.
fn doc_examples(doc: &str) -> Vec<(String, String)> {
    doc_blocks(doc, JSON_MARKER, "```json")
}

/// The document's byte strings (hex in a ```text block after `<!-- bytes: NAME -->`).
fn doc_bytes(doc: &str) -> Vec<(String, String)> {
    doc_blocks(doc, BYTES_MARKER, "```text")
}

const JSON_MARKER: &str = "<!-- example: ";
const BYTES_MARKER: &str = "<!-- bytes: ";

fn doc_blocks(doc: &str, prefix: &str, fence: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        let Some(name) = marker(line, prefix) else {
            continue;
        };
        assert_eq!(
            lines.next().map(str::trim_end),
            Some(fence),
            "{name}: a {fence} block must follow its marker"
        );
        let mut text = String::new();
        for l in lines.by_ref() {
            if l.trim_end() == "```" {
                break;
            }
            text.push_str(l);
            text.push('\n');
        }
        out.push((name.to_owned(), text));
    }
    out
}

fn marker<'a>(line: &'a str, prefix: &str) -> Option<&'a str> {
    line.trim()
        .strip_prefix(prefix)?
        .strip_suffix(" -->")
        .map(str::trim)
}

/// The document with every example block replaced by the built value.
fn regenerate(
    doc: &str,
    built: &BTreeMap<&str, Message>,
    bytes: &BTreeMap<&str, Vec<u8>>,
) -> String {
    let mut out = String::new();
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        out.push_str(line);
        out.push('\n');
        let block = if let Some(name) = marker(line, JSON_MARKER) {
            let value = built
                .get(name)
                .unwrap_or_else(|| panic!("no such example: {name}"));
            format!(
                "```json\n{}\n```\n",
                serde_json::to_string_pretty(value).unwrap()
            )
        } else if let Some(name) = marker(line, BYTES_MARKER) {
            let value = bytes
                .get(name)
                .unwrap_or_else(|| panic!("no such byte string: {name}"));
            format!("```text\n{}\n```\n", hex::encode(value))
        } else {
            continue;
        };
        out.push_str(&block);
        let _fence = lines.next();
        for l in lines.by_ref() {
            if l.trim_end() == "```" {
                break;
            }
        }
    }
    out
}

fn vectors_handshake_hash() -> String {
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(SESSION_VECTORS).unwrap()).unwrap();
    v["handshake_hash"].as_str().unwrap().to_owned()
}

/// The byte strings the document spells out, built with the real code.
fn byte_strings() -> BTreeMap<&'static str, Vec<u8>> {
    let (proposer, propose) = Proposer::with_keypair(
        StaticKeypair::from_secret(PROPOSER_STATIC),
        SESSION_ID,
        MPC,
        roster_hash(),
        PROPOSER_DID,
        ACCEPTOR_DID,
    );
    let (_, accept) = Acceptor::on_propose_with(
        StaticKeypair::from_secret(ACCEPTOR_STATIC),
        Some(&ACCEPTOR_EPH),
        &propose,
        MPC,
        roster_hash(),
        ACCEPTOR_DID,
        PROPOSER_DID,
    )
    .unwrap();
    let (session, _) = proposer
        .on_accept_with(Some(&PROPOSER_EPH), &accept, SessionConfig::default(), 0)
        .unwrap();
    let binding = SessionBinding {
        session_id: SESSION_ID,
        mpc_session_id: MPC.to_owned(),
        initiator_did: ACCEPTOR_DID.to_owned(),
        responder_did: PROPOSER_DID.to_owned(),
        roster_hash: roster_hash(),
        initiator_static: StaticKeypair::from_secret(ACCEPTOR_STATIC).public(),
        responder_static: StaticKeypair::from_secret(PROPOSER_STATIC).public(),
    };
    let (x, y) = if ACCEPTOR_DID < PROPOSER_DID {
        (ACCEPTOR_DID, PROPOSER_DID)
    } else {
        (PROPOSER_DID, ACCEPTOR_DID)
    };
    let mut adhoc = b"mpc-did/adhoc/1".to_vec();
    for d in [x, y] {
        adhoc.extend_from_slice(&u32::try_from(d.len()).unwrap().to_be_bytes());
        adhoc.extend_from_slice(d.as_bytes());
    }
    let mut out = BTreeMap::new();
    out.insert("adhoc-hash-input", adhoc);
    out.insert("prologue", binding.prologue().unwrap());
    out.insert(
        "path-hello",
        path::encode_hello(&path::path_id(session.handshake_hash())).to_vec(),
    );
    out
}

#[test]
fn byte_strings_are_what_the_code_computes() {
    let built = byte_strings();
    let doc = read_doc();
    let found = doc_bytes(&doc);
    for name in built.keys() {
        assert_eq!(
            found.iter().filter(|(n, _)| n == name).count(),
            1,
            "byte string {name} must appear exactly once in the document"
        );
    }
    for (name, text) in &found {
        let expected = built.get(name.as_str()).unwrap_or_else(|| {
            panic!("the document has a byte string {name} the test does not build")
        });
        assert_eq!(text.trim(), hex::encode(expected), "{name}");
    }
    // The path hello, recomputed from its definition.
    let hash = hex::decode(vectors_handshake_hash()).unwrap();
    let id = sha2::Sha256::digest([b"mpc-did/path/1".as_slice(), &hash].concat());
    assert_eq!(
        built["path-hello"],
        [b"MDP1".as_slice(), &[0; 4], &id[..16]].concat()
    );
    // The prologue is the published one.
    let vectors: Value =
        serde_json::from_str(&std::fs::read_to_string(SESSION_VECTORS).unwrap()).unwrap();
    assert_eq!(
        hex::encode(&built["prologue"]),
        vectors["prologue"].as_str().unwrap()
    );
}

fn read_doc() -> String {
    std::fs::read_to_string(DOC).unwrap()
}

#[test]
fn examples_are_what_the_code_builds() {
    let built = examples();
    if std::env::var_os("MPC_DID_REGENERATE_VECTORS").is_some() {
        std::fs::write(DOC, regenerate(&read_doc(), &built, &byte_strings())).unwrap();
    }
    let doc = read_doc();
    let found = doc_examples(&doc);
    let names: Vec<&str> = found.iter().map(|(n, _)| n.as_str()).collect();
    for name in built.keys() {
        assert_eq!(
            names.iter().filter(|n| *n == name).count(),
            1,
            "example {name} must appear exactly once in the document"
        );
    }
    for (name, text) in &found {
        let expected = built.get(name.as_str()).unwrap_or_else(|| {
            panic!("the document has an example {name} the test does not build")
        });
        let got: Value = serde_json::from_str(text)
            .unwrap_or_else(|e| panic!("example {name} is not JSON: {e}"));
        assert_eq!(
            got,
            serde_json::to_value(expected).unwrap(),
            "example {name} differs from the code's message"
        );
    }
}

#[test]
fn examples_parse_and_round_trip_as_didcomm_messages() {
    let doc = read_doc();
    let found = doc_examples(&doc);
    assert!(!found.is_empty());
    for (name, text) in &found {
        let m = Message::from_json(text.as_bytes()).unwrap();
        let again: Value = serde_json::from_str(&m.to_json().unwrap()).unwrap();
        let original: Value = serde_json::from_str(text).unwrap();
        assert_eq!(
            again, original,
            "{name}: the DIDComm message does not round-trip"
        );
        assert!(m.extra.is_empty(), "{name}: header unknown to DIDComm v2");
        let kind = m
            .type_
            .strip_prefix(PROTOCOL_URI)
            .and_then(|s| s.strip_prefix('/'))
            .unwrap_or_else(|| panic!("{name}: type outside {PROTOCOL_URI}"));
        let body = m.body.clone();
        // Each body parses as its type and re-serialises to the same JSON.
        let back = match kind {
            "propose" => {
                // The proposal starts the thread: its id is the session id.
                let b: ProposeBody = serde_json::from_value(body.clone()).unwrap();
                assert_eq!(m.id, b.session_id, "{name}: propose id");
                assert_eq!(m.thid, None, "{name}: propose starts the thread");
                assert_eq!(b.suite, NOISE_PARAMS);
                serde_json::to_value(b).unwrap()
            }
            "accept" => {
                serde_json::to_value(serde_json::from_value::<AcceptBody>(body.clone()).unwrap())
                    .unwrap()
            }
            "handshake" => {
                serde_json::to_value(serde_json::from_value::<HandshakeBody>(body.clone()).unwrap())
                    .unwrap()
            }
            "candidates" => {
                let b: CandidatesBody = serde_json::from_value(body.clone()).unwrap();
                b.check().unwrap();
                let list: Vec<Candidate> = b
                    .candidates
                    .iter()
                    .map(|c| serde_json::from_value(c.clone()).unwrap())
                    .collect();
                validate_candidates(&list).unwrap();
                assert!(list.len() <= MAX_CANDIDATES);
                serde_json::to_value(b).unwrap()
            }
            "close" => {
                let b: CloseBody = serde_json::from_value(body.clone()).unwrap();
                assert!(b.code <= 4 && b.reason.len() <= 256, "{name}");
                serde_json::to_value(b).unwrap()
            }
            other => panic!("{name}: unknown message {other}"),
        };
        assert_eq!(back, body, "{name}: body does not round-trip");
        if kind != "propose" {
            // Every other message is in the proposal's thread, named by its session id.
            assert_eq!(m.thid.as_deref(), body["session_id"].as_str(), "{name}");
        }
    }
}

fn example(doc: &str, name: &str) -> Message {
    let (_, text) = doc_examples(doc)
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no example {name}"));
    Message::from_json(text.as_bytes()).unwrap()
}

fn body<T: serde::de::DeserializeOwned>(m: &Message) -> T {
    serde_json::from_value(m.body.clone()).unwrap()
}

/// The document's three handshake messages are a real run: fed to the protocol steps they
/// establish a session pair, with the handshake hash of the published vectors.
#[test]
fn document_handshake_runs_and_matches_the_published_vectors() {
    let doc = read_doc();
    let propose: ProposeBody = body(&example(&doc, "propose"));
    let accept: AcceptBody = body(&example(&doc, "accept"));
    let handshake: HandshakeBody = body(&example(&doc, "handshake"));

    let (acceptor, accept_again) = Acceptor::on_propose_with(
        StaticKeypair::from_secret(ACCEPTOR_STATIC),
        Some(&ACCEPTOR_EPH),
        &propose,
        MPC,
        roster_hash(),
        ACCEPTOR_DID,
        PROPOSER_DID,
    )
    .unwrap();
    assert_eq!(accept_again, accept);
    let (proposer, _) = Proposer::with_keypair(
        StaticKeypair::from_secret(PROPOSER_STATIC),
        SESSION_ID,
        MPC,
        roster_hash(),
        PROPOSER_DID,
        ACCEPTOR_DID,
    );
    let (mut p, handshake_again) = proposer
        .on_accept_with(Some(&PROPOSER_EPH), &accept, SessionConfig::default(), 0)
        .unwrap();
    assert_eq!(handshake_again, handshake);
    let mut a = acceptor
        .on_handshake(&handshake, SessionConfig::default(), 0)
        .unwrap();
    assert_eq!(a.handshake_hash(), p.handshake_hash());

    let vectors: Value =
        serde_json::from_str(&std::fs::read_to_string(SESSION_VECTORS).unwrap()).unwrap();
    assert_eq!(
        hex::encode(a.handshake_hash()),
        vectors["handshake_hash"].as_str().unwrap()
    );
    assert_eq!(
        serde_json::to_value(&propose).unwrap(),
        vectors["propose_body"]
    );
    assert_eq!(
        serde_json::to_value(&accept).unwrap(),
        vectors["accept_body"]
    );
    assert_eq!(
        serde_json::to_value(&handshake).unwrap(),
        vectors["handshake_body"]
    );

    // And the established pair carries data.
    let s = a.open_stream().unwrap();
    a.send(0, s, b"over the secure session").unwrap();
    let mut got = Vec::new();
    while let Some(rec) = a.poll_transmit() {
        p.handle_record(0, &rec).unwrap();
    }
    while let Some(ev) = p.poll_event() {
        if let mpc_did_session::Event::Data { data, .. } = ev {
            got.extend_from_slice(&data);
        }
    }
    assert_eq!(got, b"over the secure session");
}

/// The examples are bound to what they name: a one-bit change to a key, the Noise message,
/// the roster hash or a DID makes the handshake fail (the document's security claims).
#[test]
fn tampered_examples_fail_the_handshake() {
    let doc = read_doc();
    let propose: ProposeBody = body(&example(&doc, "propose"));
    let accept: AcceptBody = body(&example(&doc, "accept"));
    let proposer = || {
        Proposer::with_keypair(
            StaticKeypair::from_secret(PROPOSER_STATIC),
            SESSION_ID,
            MPC,
            roster_hash(),
            PROPOSER_DID,
            ACCEPTOR_DID,
        )
        .0
    };
    let flip = |hex_str: &str| {
        let mut b = hex::decode(hex_str).unwrap();
        b[5] ^= 0x01;
        hex::encode(b)
    };
    // Noise message 1 altered.
    let mut bad = accept.clone();
    bad.handshake = flip(&accept.handshake);
    assert!(proposer()
        .on_accept_with(Some(&PROPOSER_EPH), &bad, SessionConfig::default(), 0)
        .is_err());
    // The acceptor's announced static key altered (prologue and `ss` differ).
    let mut bad = accept.clone();
    bad.noise_static = flip(&accept.noise_static);
    assert!(proposer()
        .on_accept_with(Some(&PROPOSER_EPH), &bad, SessionConfig::default(), 0)
        .is_err());
    // A proposer that believes in another roster or talks to another DID.
    let (other_roster, _) = Proposer::with_keypair(
        StaticKeypair::from_secret(PROPOSER_STATIC),
        SESSION_ID,
        MPC,
        [0xee; 32],
        PROPOSER_DID,
        ACCEPTOR_DID,
    );
    assert!(other_roster
        .on_accept_with(Some(&PROPOSER_EPH), &accept, SessionConfig::default(), 0)
        .is_err());
    let (other_peer, _) = Proposer::with_keypair(
        StaticKeypair::from_secret(PROPOSER_STATIC),
        SESSION_ID,
        MPC,
        roster_hash(),
        PROPOSER_DID,
        "did:key:z6MkpTHR8VNsBxYAAWHut2Geadd9jSwuBV8xRoAnwWsdvktH",
    );
    assert!(other_peer
        .on_accept_with(Some(&PROPOSER_EPH), &accept, SessionConfig::default(), 0)
        .is_err());
    // An acceptor refuses a proposal for another MPC session or roster (close code 1).
    assert!(Acceptor::on_propose(
        &propose,
        "another",
        roster_hash(),
        ACCEPTOR_DID,
        PROPOSER_DID
    )
    .is_err());
    assert!(Acceptor::on_propose(&propose, MPC, [0xee; 32], ACCEPTOR_DID, PROPOSER_DID).is_err());
}

/// The ad-hoc example's binding is the one the document spells out (`"adhoc"`, SHA-256 over
/// the label and the length-prefixed DIDs, smaller first), computed here independently.
#[test]
fn adhoc_example_uses_the_documented_binding() {
    use sha2::Sha256;
    let doc = read_doc();
    let p: ProposeBody = body(&example(&doc, "propose-adhoc"));
    let (x, y) = if ACCEPTOR_DID < PROPOSER_DID {
        (ACCEPTOR_DID, PROPOSER_DID)
    } else {
        (PROPOSER_DID, ACCEPTOR_DID)
    };
    let mut input = b"mpc-did/adhoc/1".to_vec();
    for d in [x, y] {
        input.extend_from_slice(&u32::try_from(d.len()).unwrap().to_be_bytes());
        input.extend_from_slice(d.as_bytes());
    }
    let m = example(&doc, "propose-adhoc");
    let to = m.to.clone().unwrap();
    assert!(
        m.from.as_deref().unwrap().as_bytes() < to[0].as_bytes(),
        "without a roster the smaller DID proposes"
    );
    assert_eq!(p.mpc_session_id, "adhoc");
    assert_eq!(p.roster_hash, hex::encode(Sha256::digest(&input)));
    // The document quotes the hash input.
    assert!(
        doc.contains(&hex::encode(&input)),
        "ad-hoc hash input not in the document"
    );
}

/// Front matter and message type URIs in the document are the code's constants; every
/// body member of an example is described in the document.
#[test]
fn document_names_the_code_constants() {
    let doc = read_doc();
    assert!(doc.starts_with("---\n"), "front matter first");
    assert!(
        doc.contains(&format!("\npiuri: {PROTOCOL_URI}\n")),
        "front matter piuri"
    );
    for t in [
        PROPOSE_TYPE,
        ACCEPT_TYPE,
        HANDSHAKE_TYPE,
        CANDIDATES_TYPE,
        CLOSE_TYPE,
    ] {
        assert!(
            doc.contains(&format!("Message Type URI: `{t}`")),
            "{t} has no message reference"
        );
    }
    assert!(doc.contains(&format!("`{NOISE_PARAMS}`")));
    // Sizes and limits the message reference states.
    let label = std::str::from_utf8(PROLOGUE_LABEL).unwrap();
    assert!(doc.contains(&format!("\"{label}\" || 0x00 || lp(session_id)")));
    assert!(doc.contains(&format!(
        "| {} hex ({HANDSHAKE_MSG_LEN} bytes) | Noise message 1",
        2 * HANDSHAKE_MSG_LEN
    )));
    assert!(doc.contains(&format!(
        "| {} hex ({HANDSHAKE_MSG_LEN} bytes) | Noise message 2",
        2 * HANDSHAKE_MSG_LEN
    )));
    assert_eq!(MAX_ID_LEN, 2048);
    assert!(doc.contains("| string (≤ 2,048 bytes) |") && doc.contains("at most\n2,048 bytes"));
    assert!(doc.contains(&format!(
        "at most {MAX_CANDIDATES} (per message, and in all)"
    )));
    let timeout = ConnectorConfig::default().handshake_timeout.as_secs();
    assert!(doc.contains(&format!("| {timeout} s without `accept` |")));
    assert!(doc.contains(&format!("| {timeout} s without `handshake` |")));
    assert!(doc.contains(&format!(
        "A proposer without `accept` {timeout} s after `propose`"
    )));
    for (name, text) in doc_examples(&doc) {
        let v: Value = serde_json::from_str(&text).unwrap();
        for key in v["body"].as_object().unwrap().keys() {
            assert!(
                doc.contains(&format!("`{key}`")),
                "{name}: `{key}` undocumented"
            );
        }
    }
}

// ---- what the real connector sends has the documented shape ------------------------------

mod live {
    //! A real `Connector` talks to a party played by hand (a bare `Agent` running the
    //! protocol steps of `mpc-did-session`) through a real mediator on loopback. Every
    //! message the connector sends is captured as the peer receives it and compared with the
    //! document's example of its kind: the same headers, the same body members, the thread
    //! rules, and signed exactly when the document says so.
    use std::time::Duration;

    use mpc_did_agent::{Agent, Inbound};
    use mpc_did_connect::{Binding, Connector, ConnectorConfig};
    use mpc_did_didcomm::message::PLAIN_TYP;
    use mpc_did_didcomm::Message;
    use mpc_did_mediator::MediatorHandle;
    use mpc_did_session::messages::{
        AcceptBody, HandshakeBody, ProposeBody, ACCEPT_TYPE, HANDSHAKE_TYPE, PROPOSE_TYPE,
        PROTOCOL_URI,
    };
    use mpc_did_session::{Acceptor, Proposer, SessionConfig};
    use serde_json::Value;

    use super::{example, read_doc};

    const WAIT: Duration = Duration::from_secs(10);

    use mpc_did_testkit::mediator::loopback_mediator as mediator;

    async fn agent(m: &MediatorHandle) -> Agent {
        mpc_did_testkit::mediator::registered_agent(&m.public_url)
            .await
            .0
    }

    async fn introduce(a: &Agent, b: &Agent) {
        a.learn_service(b.did(), b.own_service()).await.unwrap();
        b.learn_service(a.did(), a.own_service()).await.unwrap();
    }

    /// The next message of kind `kind` (others are kept in `seen`).
    async fn next_of(
        rx: &mut tokio::sync::mpsc::Receiver<Inbound>,
        seen: &mut Vec<Inbound>,
        kind: &str,
    ) -> Inbound {
        let want = format!("{PROTOCOL_URI}/{kind}");
        if let Some(i) = seen.iter().position(|m| m.message.type_ == want) {
            return seen.remove(i);
        }
        loop {
            let m = tokio::time::timeout(WAIT, rx.recv())
                .await
                .unwrap_or_else(|_| panic!("no {kind} within {WAIT:?}"))
                .unwrap();
            if m.message.type_ == want {
                return m;
            }
            seen.push(m);
        }
    }

    fn keys(v: &Value) -> Vec<String> {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    }

    /// Whether the document's message reference for `kind` says it is signed.
    fn documented_signed(doc: &str, kind: &str) -> bool {
        let head = format!("Message Type URI: `{PROTOCOL_URI}/{kind}`");
        let start = doc
            .find(&head)
            .unwrap_or_else(|| panic!("no reference for {kind}"));
        let section = &doc[start..];
        let section = &section[..section.find("\n### ").unwrap_or(section.len())];
        section.contains("**signed**")
    }

    /// `got` (sent by the connector as `from` to `to`) has the shape of the document's
    /// example `name`, and is signed exactly when the document's reference says so (and
    /// `signed`, the test's own expectation, agrees).
    fn same_shape(doc: &str, name: &str, got: &Inbound, from: &str, to: &str, signed: bool) {
        let kind = got.message.type_.rsplit('/').next().unwrap();
        assert_eq!(
            documented_signed(doc, kind),
            signed,
            "{name}: document vs test"
        );
        let want = serde_json::to_value(example(doc, name)).unwrap();
        let got_v = serde_json::to_value(&got.message).unwrap();
        assert_eq!(keys(&got_v), keys(&want), "{name}: headers");
        assert_eq!(
            keys(&got_v["body"]),
            keys(&want["body"]),
            "{name}: body members"
        );
        assert_eq!(got.message.type_, want["type"].as_str().unwrap(), "{name}");
        assert_eq!(got.message.typ.as_deref(), Some(PLAIN_TYP), "{name}");
        assert_eq!(got.message.from.as_deref(), Some(from), "{name}: from");
        assert_eq!(got.message.to, Some(vec![to.to_owned()]), "{name}: to");
        assert!(
            got.meta.authenticated && got.meta.encrypted,
            "{name}: authcrypt"
        );
        assert_eq!(got.sender.as_deref(), Some(from), "{name}: sender");
        assert_eq!(
            got.meta.sign_from.as_deref().map(|k| k.split('#').next()),
            signed.then_some(Some(from)),
            "{name}: signed by the sender exactly when the document says so"
        );
        let sid = got.message.body["session_id"].as_str().unwrap();
        if name.starts_with("propose") {
            assert_eq!(
                got.message.id, sid,
                "{name}: the proposal's id is the session id"
            );
            assert_eq!(got.message.thid, None, "{name}");
        } else {
            assert_eq!(got.message.thid.as_deref(), Some(sid), "{name}: thid");
        }
        if name == "candidates" {
            let documented: Vec<Vec<String>> = want["body"]["candidates"]
                .as_array()
                .unwrap()
                .iter()
                .map(keys)
                .collect();
            for c in got.message.body["candidates"].as_array().unwrap() {
                assert!(documented.contains(&keys(c)), "{name}: candidate {c}");
            }
        }
    }

    fn config() -> ConnectorConfig {
        ConnectorConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            handshake_timeout: WAIT,
            ..ConnectorConfig::default()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_connector_sends_the_documented_messages() {
        let doc = read_doc();
        let dir = tempfile::tempdir().unwrap();
        let m = mediator(dir.path()).await;
        let alice_agent = agent(&m).await;
        let bob = agent(&m).await;
        introduce(&alice_agent, &bob).await;
        let mut rx = bob.subscribe(PROTOCOL_URI);
        let alice = Connector::start(alice_agent.clone(), config())
            .await
            .unwrap();
        let (a, b) = (alice_agent.did().to_owned(), bob.did().to_owned());
        let binding = Binding::adhoc(&a, &b);
        let mut seen = Vec::new();

        // Alice proposes; Bob accepts by hand: propose, candidates, handshake.
        let proposing = {
            let (alice, b, binding) = (alice.clone(), b.clone(), binding.clone());
            tokio::spawn(async move { alice.propose(&b, &binding).await })
        };
        let propose = next_of(&mut rx, &mut seen, "propose").await;
        same_shape(&doc, "propose", &propose, &a, &b, true);
        let cands = next_of(&mut rx, &mut seen, "candidates").await;
        same_shape(&doc, "candidates", &cands, &a, &b, false);
        let body: ProposeBody = serde_json::from_value(propose.message.body.clone()).unwrap();
        let (acceptor, accept) =
            Acceptor::on_propose(&body, &binding.mpc_session_id, binding.roster_hash, &b, &a)
                .unwrap();
        let reply = Message::new(
            "6a1c0e5f3b2d4978a0c1d2e3f4051627",
            ACCEPT_TYPE,
            serde_json::to_value(&accept).unwrap(),
        )
        .thid(&propose.message.id);
        bob.send_signed(&a, reply).await.unwrap();
        let handshake = next_of(&mut rx, &mut seen, "handshake").await;
        same_shape(&doc, "handshake", &handshake, &a, &b, false);
        let hs: HandshakeBody = serde_json::from_value(handshake.message.body.clone()).unwrap();
        acceptor
            .on_handshake(&hs, SessionConfig::default(), 0)
            .unwrap();
        proposing.abort();

        // Bob proposes by hand for another roster: Alice declines with close code 1.
        let (_, bad) = Proposer::new([7; 16], &binding.mpc_session_id, [9; 32], &b, &a);
        let send_propose = |body: &ProposeBody| {
            Message::new(
                body.session_id.clone(),
                PROPOSE_TYPE,
                serde_json::to_value(body).unwrap(),
            )
        };
        let accepting = {
            let (alice, b, binding) = (alice.clone(), b.clone(), binding.clone());
            tokio::spawn(async move { alice.accept(&b, &binding).await })
        };
        bob.send_signed(&a, send_propose(&bad)).await.unwrap();
        let close = next_of(&mut rx, &mut seen, "close").await;
        same_shape(&doc, "close-declined", &close, &a, &b, false);
        assert_eq!(close.message.body["code"], 1);
        assert_eq!(close.message.body["session_id"], bad.session_id.as_str());
        assert!(accepting.await.unwrap().is_err());

        // Bob proposes properly: Alice accepts (signed) and sends her candidates.
        let (proposer, good) = Proposer::new(
            [8; 16],
            &binding.mpc_session_id,
            binding.roster_hash,
            &b,
            &a,
        );
        let accepting = {
            let (alice, b, binding) = (alice.clone(), b.clone(), binding.clone());
            tokio::spawn(async move { alice.accept(&b, &binding).await })
        };
        bob.send_signed(&a, send_propose(&good)).await.unwrap();
        let accept = next_of(&mut rx, &mut seen, "accept").await;
        same_shape(&doc, "accept", &accept, &a, &b, true);
        assert_eq!(
            accept.message.thid.as_deref(),
            Some(good.session_id.as_str())
        );
        let cands = next_of(&mut rx, &mut seen, "candidates").await;
        same_shape(&doc, "candidates", &cands, &a, &b, false);
        let body: AcceptBody = serde_json::from_value(accept.message.body.clone()).unwrap();
        let (_session, hs) = proposer
            .on_accept(&body, SessionConfig::default(), 0)
            .unwrap();
        let reply = Message::new(
            "7b2d1f604c3e5a89b1d2e3f405162738",
            HANDSHAKE_TYPE,
            serde_json::to_value(&hs).unwrap(),
        )
        .thid(&good.session_id);
        bob.send(&a, reply).await.unwrap();
        accepting.abort();
        alice_agent.stop();
        bob.stop();
        m.shutdown().await;
    }
}
