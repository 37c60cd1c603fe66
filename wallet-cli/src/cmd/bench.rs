//! `mpc-did bench local`: per-message DIDComm against session records, on this machine
//! (`mpc-did bench peer`, between two machines, is `bench_peer`).
//!
//! The design's point in numbers a user can reproduce (issue 15, item 6): every DIDComm
//! message pays public-key operations (ECDH, signatures) on pack and unpack, while a secure
//! session pays them once in its Noise handshake (spec/session.md §2) and then only symmetric
//! AEAD per record (§3). For payloads of 64 B, 1 KiB and 64 KiB the command times pack+unpack
//! in each DIDComm mode (spec/didcomm.md) and seal+open of the same payload through an
//! established session pair, both in memory (no I/O), plus one full session handshake, and
//! prints time per message, messages per second and the ratio to the session.
//!
//! Each case runs for a time budget (`--budget-ms`, default 300) after one warm-up message;
//! figures are medians of five slices of that budget. The keys are two fixed did:key
//! identities resolved locally; nothing touches the wallet or the network.

use std::future::Future;
use std::hint::black_box;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use mpc_did_didcomm::{
    pack_encrypted, pack_plaintext, pack_signed, unpack, ContentAlg, Message, PackOptions,
    SecretStore, UnpackOptions,
};
use mpc_did_resolver::{key, StaticResolver};
use mpc_did_session::{Acceptor, EventRef, Proposer, Session, SessionConfig};
use serde_json::json;

use crate::ctx::Ctx;

/// `mpc-did bench ...`
#[derive(clap::Subcommand, Debug)]
pub enum BenchCommand {
    /// Per-message DIDComm (pack+unpack per mode) vs session records (seal+open) on this
    /// machine, at 64 B, 1 KiB and 64 KiB, plus the session handshake: a table (--json for
    /// scripts).
    #[command(after_help = "\
Examples:
  mpc-did bench local
  mpc-did bench local --json
  mpc-did bench local --budget-ms 1000   # steadier figures, about a minute

Figures depend on the machine and its load; compare ratios taken in one run.")]
    Local(LocalArgs),
    /// Against a peer on another machine (run it on both sides, naming each other): the
    /// DIDComm round trip through both mediators vs the round trip and throughput over the
    /// secure session's path (direct TCP, QUIC or relay), a table and the ratio (--json for
    /// scripts). spec/bench.md.
    #[command(after_help = "\
Examples:
  alice$ mpc-did bench peer did:key:z6MkBob… --peer-mediator https://m.example.org
  bob$   mpc-did bench peer did:key:z6MkAlice… --peer-mediator https://m.example.org
  mpc-did bench peer did:key:z6MkBob… --rounds 50 --bytes 256MiB --json

The smaller DID leads and its --rounds/--bytes are used. A peer that does not answer
within --timeout seconds (default 60) ends the command with an error naming it.")]
    Peer(crate::cmd::bench_peer::PeerBenchArgs),
}

/// Options of `mpc-did bench local`.
#[derive(clap::Args, Debug)]
pub struct LocalArgs {
    /// Time spent measuring each case, in milliseconds (20..=60000).
    #[arg(long, value_name = "MS", default_value_t = 300)]
    budget_ms: u64,
}

/// Payload sizes measured: a small MPyC message, a medium one, the largest Noise payload
/// order of magnitude.
const SIZES: [usize; 3] = [64, 1024, 64 * 1024];
const MPC: &str = "bench-local-0000000000000000000";
const ROSTER: [u8; 32] = [7; 32];

#[derive(Clone, Copy, Debug)]
enum Mode {
    Plain,
    Signed,
    Anoncrypt,
    Authcrypt,
    SignedAuthcrypt,
    Session,
}

impl Mode {
    const ALL: [Mode; 6] = [
        Mode::Plain,
        Mode::Signed,
        Mode::Anoncrypt,
        Mode::Authcrypt,
        Mode::SignedAuthcrypt,
        Mode::Session,
    ];

    fn name(self) -> &'static str {
        match self {
            Mode::Plain => "didcomm plaintext",
            Mode::Signed => "didcomm signed (EdDSA)",
            Mode::Anoncrypt => "didcomm anoncrypt",
            Mode::Authcrypt => "didcomm authcrypt",
            Mode::SignedAuthcrypt => "didcomm signed+authcrypt",
            Mode::Session => "session record",
        }
    }

    fn operation(self) -> &'static str {
        match self {
            Mode::Session => "seal+open",
            _ => "pack+unpack",
        }
    }
}

/// One measured case.
#[derive(Debug, serde::Serialize)]
struct Row {
    payload_bytes: usize,
    mode: &'static str,
    operation: &'static str,
    ns_per_message: f64,
    messages_per_second: f64,
    /// This mode's time per message ÷ the session's at the same size.
    ratio_to_session: f64,
}

/// The whole report (`--json`).
#[derive(Debug, serde::Serialize)]
struct Report {
    budget_ms: u64,
    handshake_ns: f64,
    handshakes_per_second: f64,
    /// After how many session messages the handshake has paid for itself against authcrypt
    /// at 64 B (handshake ÷ (authcrypt − session per message)).
    break_even_messages_64b: f64,
    rows: Vec<Row>,
}

pub async fn run(ctx: &Ctx, c: BenchCommand) -> anyhow::Result<()> {
    match c {
        BenchCommand::Peer(a) => crate::cmd::bench_peer::run(ctx, a).await,
        BenchCommand::Local(a) => {
            if !(20..=60_000).contains(&a.budget_ms) {
                anyhow::bail!("--budget-ms must be between 20 and 60000");
            }
            let budget = Duration::from_millis(a.budget_ms);
            // CPU-bound and synchronous: keep it off the async workers.
            let report = tokio::task::spawn_blocking(move || local(budget))
                .await
                .context("the benchmark thread failed")??;
            if ctx.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_table(&report);
            }
            Ok(())
        }
    }
}

fn print_table(r: &Report) {
    println!(
        "Per-message DIDComm vs session records, in memory on this machine ({} ms per case)",
        r.budget_ms
    );
    println!();
    println!("| payload | mode | operation | time per message | messages/s | × session |");
    println!("|---:|---|---|---:|---:|---:|");
    for row in &r.rows {
        println!(
            "| {} | {} | {} | {} | {} | {:.1}× |",
            bytes(row.payload_bytes),
            row.mode,
            row.operation,
            duration(row.ns_per_message),
            count(row.messages_per_second),
            row.ratio_to_session,
        );
    }
    println!();
    let n = r.break_even_messages_64b.ceil().max(1.0);
    let after = if n.is_finite() {
        format!(
            "it pays for itself against authcrypt after {n:.0} message{} of 64 B",
            if n > 1.0 { "s" } else { "" }
        )
    } else {
        "authcrypt was not slower than a session record in this run".to_owned()
    };
    println!(
        "Session handshake (Noise, both sides, fresh keys): {} ({} per second); {after}.",
        duration(r.handshake_ns),
        count(r.handshakes_per_second),
    );
}

fn bytes(n: usize) -> String {
    if n >= 1024 && n.is_multiple_of(1024) {
        format!("{} KiB", n / 1024)
    } else {
        format!("{n} B")
    }
}

fn duration(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.1} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

fn count(per_s: f64) -> String {
    if per_s >= 1e6 {
        format!("{:.2} M", per_s / 1e6)
    } else if per_s >= 1e3 {
        format!("{:.1} k", per_s / 1e3)
    } else {
        format!("{per_s:.0}")
    }
}

/// Run `op` for about `budget` in five slices; the median of the slices' time per call.
///
/// The clock is read once per batch of calls, never per call, as criterion does: a clock
/// read costs ≈ 22 ns of CPU here (more under load), ≈ 8 % of a 64-byte session record, and
/// reading it per call was one reason this command reported a lower session advantage than
/// the criterion benches (597× against ≈ 820×; spec/session.md §11).
fn measure(budget: Duration, mut op: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    // Warm-up and calibration: double the batch until one takes ≥ 1/100 of a slice.
    let slice = budget / 5;
    let mut batch = 1u64;
    loop {
        let start = Instant::now();
        for _ in 0..batch {
            op()?;
        }
        if start.elapsed() * 100 >= slice || batch >= 1 << 24 {
            break;
        }
        batch *= 2;
    }
    let mut per_call = Vec::with_capacity(5);
    for _ in 0..5 {
        let start = Instant::now();
        let mut n = 0u64;
        while n == 0 || start.elapsed() < slice {
            for _ in 0..batch {
                op()?;
            }
            n += batch;
        }
        per_call.push(start.elapsed().as_nanos() as f64 / n as f64);
    }
    per_call.sort_by(f64::total_cmp);
    Ok(per_call[2])
}

/// The static resolver answers at once: poll to completion without a runtime.
fn ready<F: Future>(f: F) -> anyhow::Result<F::Output> {
    let mut f = std::pin::pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    match f.as_mut().poll(&mut cx) {
        Poll::Ready(v) => Ok(v),
        Poll::Pending => anyhow::bail!("a local DIDComm operation did not complete at once"),
    }
}

/// The handshake of spec/session.md §2 with fresh static keys: propose → accept →
/// handshake.
fn handshake() -> anyhow::Result<(Session, Session)> {
    const ALICE: &str = "did:key:z6MkBenchAlice";
    const BOB: &str = "did:key:z6MkBenchBob";
    let config = SessionConfig {
        // Acknowledge in bulk, as a receiver under load does.
        ack_threshold_bytes: 1 << 20,
        ..SessionConfig::default()
    };
    let (bob, propose) = Proposer::new([1; 16], MPC, ROSTER, BOB, ALICE);
    let (alice, accept) = Acceptor::on_propose(&propose, MPC, ROSTER, ALICE, BOB)
        .map_err(|e| anyhow::anyhow!("session handshake (accept) failed: {e}"))?;
    let (b, hs) = bob
        .on_accept(&accept, config.clone(), 0)
        .map_err(|e| anyhow::anyhow!("session handshake (reply) failed: {e}"))?;
    let a = alice
        .on_handshake(&hs, config, 0)
        .map_err(|e| anyhow::anyhow!("session handshake (finish) failed: {e}"))?;
    Ok((a, b))
}

/// One message A → B through the session: seal into records, open them, deliver the bytes;
/// the ACKs flow back so the send window stays open.
fn session_message(
    a: &mut Session,
    b: &mut Session,
    stream: u32,
    msg: &[u8],
) -> anyhow::Result<()> {
    let sent = a
        .send(0, stream, msg)
        .map_err(|e| anyhow::anyhow!("session send failed: {e}"))?;
    anyhow::ensure!(
        sent == msg.len(),
        "session send window full: ACKs are not flowing"
    );
    while let Some(rec) = a.poll_transmit_ref() {
        b.handle_record(0, rec)
            .map_err(|e| anyhow::anyhow!("session open failed: {e}"))?;
    }
    // Borrowed, as the session driver takes them: no allocation per record.
    let mut got = 0;
    while let Some(ev) = b.poll_event_ref() {
        if let EventRef::Data { data, .. } = ev {
            got += black_box(data).len();
        }
    }
    anyhow::ensure!(
        got == msg.len(),
        "session delivered {got} of {} bytes",
        msg.len()
    );
    while let Some(ack) = b.poll_transmit_ref() {
        a.handle_record(0, ack)
            .map_err(|e| anyhow::anyhow!("session ACK failed: {e}"))?;
    }
    while a.poll_event().is_some() {}
    Ok(())
}

fn local(budget: Duration) -> anyhow::Result<Report> {
    let mut alice_keys = SecretStore::new();
    let alice = alice_keys.insert_did_key(&ed25519_dalek::SigningKey::from_bytes(&[1; 32]));
    let mut bob_keys = SecretStore::new();
    let bob = bob_keys.insert_did_key(&ed25519_dalek::SigningKey::from_bytes(&[2; 32]));
    let resolver = StaticResolver::new();
    for did in [&alice, &bob] {
        resolver.insert(key::resolve(did).context("cannot resolve the bench's own did:key")?);
    }
    let opts = PackOptions {
        anon_enc: ContentAlg::A256CbcHs512,
        protect_sender: false,
        forward: false,
    };
    let uopts = UnpackOptions::default();

    let mut rows = Vec::new();
    for size in SIZES {
        let msg = Message::new(
            "bench",
            "https://mpc-did.example/bench/1.0/payload",
            json!({"d": "a".repeat(size)}),
        )
        .from(alice.clone())
        .to(bob.clone());
        let mut anon = msg.clone();
        anon.from = None;
        let mut timed = Vec::new();
        for mode in Mode::ALL {
            let ns = if let Mode::Session = mode {
                let (mut a, mut b) = handshake()?;
                let stream = a
                    .open_stream()
                    .map_err(|e| anyhow::anyhow!("cannot open a session stream: {e}"))?;
                let payload = vec![0x5a; size];
                measure(budget, || {
                    session_message(&mut a, &mut b, stream, black_box(&payload))
                })?
            } else {
                measure(budget, || {
                    let packed = match mode {
                        Mode::Plain => pack_plaintext(&msg)?,
                        Mode::Signed => {
                            ready(pack_signed(&msg, &alice, &resolver, &alice_keys))??.0
                        }
                        Mode::Anoncrypt => {
                            ready(pack_encrypted(
                                &anon,
                                &bob,
                                None,
                                None,
                                &resolver,
                                &alice_keys,
                                &opts,
                            ))??
                            .message
                        }
                        Mode::Authcrypt => {
                            ready(pack_encrypted(
                                &msg,
                                &bob,
                                Some(&alice),
                                None,
                                &resolver,
                                &alice_keys,
                                &opts,
                            ))??
                            .message
                        }
                        Mode::SignedAuthcrypt | Mode::Session => {
                            ready(pack_encrypted(
                                &msg,
                                &bob,
                                Some(&alice),
                                Some(&alice),
                                &resolver,
                                &alice_keys,
                                &opts,
                            ))??
                            .message
                        }
                    };
                    let (m, _) = ready(unpack(
                        black_box(packed.as_bytes()),
                        &resolver,
                        &bob_keys,
                        &uopts,
                    ))??;
                    black_box(m);
                    Ok(())
                })?
            };
            timed.push((mode, ns));
        }
        let session_ns = timed
            .iter()
            .find(|(m, _)| matches!(m, Mode::Session))
            .map_or(f64::NAN, |(_, ns)| *ns);
        for (mode, ns) in timed {
            rows.push(Row {
                payload_bytes: size,
                mode: mode.name(),
                operation: mode.operation(),
                ns_per_message: ns,
                messages_per_second: 1e9 / ns.max(1e-3),
                ratio_to_session: ns / session_ns.max(1e-3),
            });
        }
    }
    let handshake_ns = measure(budget, || handshake().map(|_| ()))?;
    let at64 = |name: &str| {
        rows.iter()
            .find(|r| r.payload_bytes == 64 && r.mode == name)
            .map_or(f64::NAN, |r| r.ns_per_message)
    };
    let saved = at64(Mode::Authcrypt.name()) - at64(Mode::Session.name());
    Ok(Report {
        budget_ms: u64::try_from(budget.as_millis()).unwrap_or(u64::MAX),
        handshake_ns,
        handshakes_per_second: 1e9 / handshake_ns.max(1e-3),
        break_even_messages_64b: if saved > 0.0 {
            handshake_ns / saved
        } else {
            f64::INFINITY
        },
        rows,
    })
}
