//! The data plane of `mpc-did pipe DID` and `mpc-did session connect DID`, over an
//! established secure session (spec/session.md §6 streams).
//!
//! Each side opens one stream for what it sends and accepts the one the peer opens. The
//! first 8 bytes of every stream name what it carries (`mdpipe/1` or `mdping/1`), so a
//! `pipe` facing a `session connect` fails with a clear message instead of printing ping
//! bytes.
//!
//! ```text
//!  stdin ─reader thread─▶ chunks ─▶ our stream ══ session ══▶ peer's stdout
//!  stdout ◀───────────── peer's stream ◀══ session ══ peer's stdin
//!  stdin EOF ─▶ FIN on our stream;  exit once both directions have ended
//!  exit only after the peer acknowledged all our bytes (unacked = 0), then CLOSE(0)
//! ```
//!
//! A closed stdout (`mpc-did pipe DID < file | head -c 10`) ends only the receiving
//! direction: we stop reading the peer's stream (the session discards what still arrives
//! on it), go on sending our input, wait for the peer's acknowledgement of every byte and
//! then CLOSE with code 1 ("output closed"), never 0: a code 0 tells the peer we read its
//! whole stream. Exit 0 only if the peer acknowledged all our bytes.
//!
//! Why the reader thread: tokio's stdin reads on the blocking pool, and the runtime waits
//! for a blocked read at shutdown; a plain thread does not keep the process alive.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use mpc_did_driver::{SessionHandle, SessionState, SessionStream, CLOSE_DONE, CLOSE_PARTY_FAILED};
#[cfg(test)]
use tokio::io::AsyncRead;
use tokio::io::{AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::mpsc;

/// Tag of a `pipe` stream.
pub const TAG_PIPE: &[u8; 8] = b"mdpipe/1";
/// Tag of a `session connect` ping stream.
pub const TAG_PING: &[u8; 8] = b"mdping/1";
/// Bytes read from the input at once.
const CHUNK: usize = 64 << 10;
/// How long to wait for the peer's stream to appear.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long to wait for the peer to acknowledge our last bytes before closing anyway.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Input as chunks; `Err` ends the input with an error.
pub type Chunks = mpsc::Receiver<io::Result<Vec<u8>>>;

/// An action run once in the background (e.g. a forced path switch).
pub type Hook =
    Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>> + Send>;

/// Copy stdin to a peer and the peer's input to stdout over a secure session, like netcat.
/// Run it on both sides; each side's stdin EOF finishes its direction, and the command
/// exits when both directions have ended and the peer has all our bytes (`--no-stdin` or
/// `< /dev/null` on a side that only receives).
///
/// Example: mpc-did pipe did:key:z6Mk… --peer-mediator https://m.example.org < file
#[derive(clap::Args, Debug)]
pub struct PipeArgs {
    #[command(flatten)]
    pub peer: crate::cmd::session::PeerArgs,
    /// Send nothing: finish our direction at once (a side that only receives).
    #[arg(long)]
    pub no_stdin: bool,
    /// Print progress and throughput to stderr (and a summary at the end).
    #[arg(long)]
    pub progress: bool,
    /// Test/debug: force a path switch after sending this many bytes (proposing side
    /// only: the smaller DID).
    #[arg(long, value_name = "BYTES")]
    pub switch_path_after: Option<u64>,
}

/// `mpc-did pipe`.
///
/// # Errors
/// Setup failed, or the session failed before both directions were complete.
pub async fn run(ctx: &crate::ctx::Ctx, a: PipeArgs) -> anyhow::Result<()> {
    use crate::cmd::session::{log_session, open, switch_path, track_path, LogEntry};
    let o = open(ctx, &a.peer).await?;
    if a.switch_path_after.is_some() && !o.proposer {
        o.est
            .handle
            .close(mpc_did_driver::CLOSE_PARTY_FAILED, "peer misconfigured")
            .await;
        anyhow::bail!(
            "--switch-path-after works only on the proposing side (the smaller DID: {})",
            o.est.peer
        );
    }
    let mut entry = LogEntry::new(&o, "pipe");
    log_session(ctx, &entry);
    let tracker = track_path(ctx, &entry);
    if a.progress {
        eprintln!(
            "session {} with {}: {} (setup {:.1} ms)",
            o.est.session_id,
            o.est.peer,
            o.est.path,
            crate::cmd::session::ms(o.est.setup)
        );
    }
    let counters = Arc::new(Counters::default());
    let progress = a.progress.then(|| spawn_progress(counters.clone()));
    let switch_after = a.switch_path_after.map(|after| {
        let est = o.est.clone();
        let hook: Hook = Box::new(move || {
            Box::pin(async move {
                switch_path(&est).await?;
                eprintln!("mpc-did: forced a path switch");
                Ok(())
            })
        });
        (after, hook)
    });
    let opts = PipeOptions {
        switch_after,
        counters,
    };
    let input = if a.no_stdin {
        mpsc::channel(1).1
    } else {
        stdin_chunks()
    };
    let result = pipe(&o.est.handle, input, tokio::io::stdout(), opts).await;
    if let Some(p) = progress {
        p.abort();
    }
    drop(tracker);
    entry.ended = Some(crate::cmd::session::now());
    match &result {
        Ok(r) => {
            entry.state = describe(&crate::cmd::session::final_state(&o.est.handle).await);
            entry.sent = Some(r.sent);
            entry.received = Some(r.received);
        }
        Err(e) => {
            // Tell the peer at once instead of leaving it to time out.
            o.est
                .handle
                .close(mpc_did_driver::CLOSE_PARTY_FAILED, &short_reason(e))
                .await;
            entry.state = format!("error: {e:#}");
        }
    }
    log_session(ctx, &entry);
    let report = result?;
    if ctx.json {
        eprintln!("{}", serde_json::to_string(&report)?);
    } else if a.progress {
        let secs = report.seconds.max(1e-9);
        eprintln!(
            "done: sent {} B, received {} B in {:.2} s ({:.1} MiB/s out, {:.1} MiB/s in){}",
            report.sent,
            report.received,
            report.seconds,
            mib(report.sent) / secs,
            mib(report.received) / secs,
            if report.switched {
                ", path switched"
            } else {
                ""
            }
        );
    }
    drop(o.connector);
    Ok(())
}

/// Read stdin on a plain thread (see the module docs) into chunks.
#[must_use]
pub fn stdin_chunks() -> Chunks {
    let (tx, rx) = mpsc::channel(16);
    std::thread::spawn(move || {
        use std::io::Read as _;
        let mut stdin = std::io::stdin().lock();
        loop {
            let mut buf = vec![0u8; CHUNK];
            match stdin.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.blocking_send(Ok(buf)).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    break;
                }
            }
        }
    });
    rx
}

/// Chunks from any async reader (tests).
#[cfg(test)]
pub fn reader_chunks<R: AsyncRead + Unpin + Send + 'static>(mut reader: R) -> Chunks {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let mut buf = vec![0u8; CHUNK];
            match reader.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.send(Ok(buf)).await.is_err() {
                        break;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    break;
                }
            }
        }
    });
    rx
}

/// Open our stream and announce what it carries.
///
/// # Errors
/// The session has ended.
pub async fn open_tagged(handle: &SessionHandle, tag: &[u8; 8]) -> io::Result<SessionStream> {
    let mut s = handle.open_stream().await?;
    s.write_all(tag).await?;
    Ok(s)
}

/// Accept the peer's stream and check what it carries.
///
/// # Errors
/// The session ended first, no stream within [`ACCEPT_TIMEOUT`], or the peer runs the
/// other command.
pub async fn accept_tagged(handle: &SessionHandle, tag: &[u8; 8]) -> anyhow::Result<SessionStream> {
    let mut s = tokio::time::timeout(ACCEPT_TIMEOUT, handle.accept_stream())
        .await
        .context("the peer opened no stream within 60 s")?
        .with_context(|| format!("the session ended ({})", describe(&handle.state())))?;
    let mut got = [0u8; 8];
    s.read_exact(&mut got)
        .await
        .context("the peer's stream ended before its header")?;
    if &got != tag {
        let theirs = match &got {
            t if t == TAG_PIPE => "`mpc-did pipe`",
            t if t == TAG_PING => "`mpc-did session connect`",
            t if t == crate::cmd::bench_peer::TAG_BENCH => "`mpc-did bench peer`",
            _ => "an unknown program",
        };
        anyhow::bail!("the peer runs {theirs}; both sides must run the same command");
    }
    Ok(s)
}

/// Counters shared with a progress printer.
#[derive(Debug, Default)]
pub struct Counters {
    /// Payload bytes written to our stream.
    pub sent: AtomicU64,
    /// Payload bytes read from the peer's stream.
    pub received: AtomicU64,
}

/// What a pipe moved.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PipeReport {
    /// Payload bytes we sent.
    pub sent: u64,
    /// Payload bytes we received.
    pub received: u64,
    /// From the first byte to the last acknowledgement, in seconds.
    pub seconds: f64,
    /// Whether the switch hook ran (and succeeded).
    pub switched: bool,
    /// Whether our output was closed (`| head`) before the peer's stream ended: `received`
    /// counts the bytes written before that, the rest was discarded.
    pub output_closed: bool,
}

/// Options of [`pipe`].
#[derive(Default)]
pub struct PipeOptions {
    /// Run this hook once after sending this many bytes (forced path switch).
    pub switch_after: Option<(u64, Hook)>,
    /// Shared counters (for `--progress`).
    pub counters: Arc<Counters>,
}

/// Copy `input` to our stream and the peer's stream to `output` (see the module docs),
/// then end the session cleanly with [`finish`]. An `output` that fails with
/// `BrokenPipe` (its reader has gone) stops only the receiving direction: sending goes on,
/// and the session ends with code 1 once the peer acknowledged all our bytes.
///
/// # Errors
/// The session failed or the peer did not acknowledge all our bytes (also after our
/// output was closed), or reading the input / writing the output failed.
pub async fn pipe<W>(
    handle: &SessionHandle,
    mut input: Chunks,
    mut output: W,
    opts: PipeOptions,
) -> anyhow::Result<PipeReport>
where
    W: AsyncWrite + Unpin + Send,
{
    let start = Instant::now();
    let counters = opts.counters.clone();
    let mut out = open_tagged(handle, TAG_PIPE)
        .await
        .context("cannot open a stream")?;
    let mut inbound = accept_tagged(handle, TAG_PIPE).await?;

    let send_counters = counters.clone();
    let mut switch = opts.switch_after;
    let send = async move {
        let mut sent = 0u64;
        let mut hook_task = None;
        loop {
            let Some(chunk) = input.recv().await else {
                break;
            };
            let chunk = chunk.context("reading the input failed")?;
            out.write_all(&chunk)
                .await
                .context("sending over the session failed")?;
            sent += chunk.len() as u64;
            send_counters.sent.store(sent, Ordering::Relaxed);
            if switch.as_ref().is_some_and(|(after, _)| sent >= *after) {
                if let Some((_, hook)) = switch.take() {
                    hook_task = Some(tokio::spawn(hook()));
                }
            }
        }
        out.shutdown()
            .await
            .context("finishing our stream failed")?;
        let switched = match hook_task {
            Some(t) => {
                t.await.context("the path switch task failed")??;
                true
            }
            None => false,
        };
        anyhow::Ok((sent, switched))
    };
    let recv_counters = counters.clone();
    let recv = async move {
        let mut received = 0u64;
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = inbound
                .read(&mut buf)
                .await
                .context("receiving over the session failed")?;
            if n == 0 {
                break;
            }
            let data = buf.get(..n).unwrap_or_default();
            match output.write_all(data).await {
                Ok(()) => {}
                // Our reader has gone (`| head`): stop receiving, which drops `inbound` (the
                // session discards the rest of the peer's stream), but do not cancel the
                // send half: the peer must still get, and acknowledge, all our input.
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                    return anyhow::Ok((received, true))
                }
                Err(e) => return Err(anyhow::Error::new(e).context("writing the output failed")),
            }
            received += n as u64;
            recv_counters.received.store(received, Ordering::Relaxed);
        }
        match output.flush().await {
            // The peer's stream has ended: nothing of it is lost by a reader gone now.
            Err(e) if e.kind() != io::ErrorKind::BrokenPipe => {
                Err(anyhow::Error::new(e).context("writing the output failed"))
            }
            _ => anyhow::Ok((received, false)),
        }
    };
    let ((sent, switched), (received, output_closed)) = tokio::try_join!(send, recv)?;
    if output_closed {
        // Code 0 would tell the peer we read its whole stream (see `finish`).
        finish_with(
            handle,
            CLOSE_PARTY_FAILED,
            "the receiver's output was closed",
        )
        .await?;
    } else {
        finish(handle).await?;
    }
    Ok(PipeReport {
        sent,
        received,
        seconds: start.elapsed().as_secs_f64(),
        switched,
        output_closed,
    })
}

/// Ping the peer `rounds` times over our ping stream while echoing the peer's pings, and
/// end the session with [`finish`]. Returns our round-trip times.
///
/// # Errors
/// The session failed, or the peer does not run `session connect`.
pub async fn ping_exchange(handle: &SessionHandle, rounds: u32) -> anyhow::Result<Vec<Duration>> {
    let mut ours = open_tagged(handle, TAG_PING)
        .await
        .context("cannot open a stream")?;
    let mut theirs = accept_tagged(handle, TAG_PING).await?;
    let ping = async move {
        let mut rtts = Vec::new();
        for i in 0..u64::from(rounds) {
            let t = Instant::now();
            ours.write_all(&i.to_be_bytes()).await?;
            let mut back = [0u8; 8];
            ours.read_exact(&mut back).await?;
            anyhow::ensure!(back == i.to_be_bytes(), "the peer echoed the wrong ping");
            rtts.push(t.elapsed());
        }
        ours.shutdown().await?;
        // The peer finishes its echo of our stream after our FIN.
        let mut rest = Vec::new();
        ours.read_to_end(&mut rest).await?;
        anyhow::ensure!(rest.is_empty(), "the peer echoed more than we sent");
        anyhow::Ok(rtts)
    };
    let echo = async move {
        let mut buf = [0u8; 8];
        loop {
            match theirs.read_exact(&mut buf).await {
                Ok(_) => theirs.write_all(&buf).await?,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(e.into()),
            }
        }
        theirs.shutdown().await?;
        anyhow::Ok(())
    };
    let (rtts, ()) = tokio::try_join!(ping, echo)?;
    finish(handle).await?;
    Ok(rtts)
}

/// End the session cleanly: wait until the peer acknowledged every byte we sent (so that
/// exiting cannot lose our tail), then CLOSE with code 0. If the peer closed first, that
/// is the normal end too.
///
/// # Errors
/// The session failed before our bytes were acknowledged.
pub async fn finish(handle: &SessionHandle) -> anyhow::Result<()> {
    finish_with(handle, CLOSE_DONE, "done").await
}

/// [`finish`], closing with `code` and `reason` once our bytes are acknowledged.
///
/// # Errors
/// The session failed before our bytes were acknowledged.
pub async fn finish_with(handle: &SessionHandle, code: u16, reason: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    loop {
        let state = handle.state();
        if state.is_over() {
            // Everything we needed has arrived (both streams ended before we got here);
            // whether our last bytes were acknowledged is what decides.
            // A peer that closed with code 0 read our FIN first, so it has everything.
            // Otherwise only the session's final counters can say; without them we cannot
            // claim the peer has our data (never exit 0 after a loss).
            return match state {
                SessionState::Closed { code: 0, .. } => Ok(()),
                other => match handle.stats().await {
                    Some(s) if s.unacked_bytes == 0 => Ok(()),
                    Some(s) => anyhow::bail!(
                        "session ended before the peer had all our data ({} bytes not acknowledged): {}",
                        s.unacked_bytes,
                        describe(&other)
                    ),
                    None => anyhow::bail!(
                        "session ended before the peer acknowledged our data: {}",
                        describe(&other)
                    ),
                },
            };
        }
        match handle.stats().await {
            Some(s) if s.unacked_bytes == 0 => break,
            // The session is ending: the next turn reads its final state.
            Some(_) | None => {}
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the peer did not acknowledge our last bytes within {} s",
            DRAIN_TIMEOUT.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    handle.close(code, reason).await;
    Ok(())
}

/// A session state for humans.
#[must_use]
pub fn describe(state: &SessionState) -> String {
    // Not a `match`: the driver may grow states; unknown ones print as their debug form.
    if let SessionState::Closed {
        code,
        reason,
        by_peer,
    } = state
    {
        format!(
            "closed by {} (code {code}{})",
            if *by_peer { "the peer" } else { "us" },
            if reason.is_empty() {
                String::new()
            } else {
                format!(": {reason}")
            }
        )
    } else if let SessionState::Failed(why) = state {
        format!("failed: {why}")
    } else if *state == SessionState::Connected {
        "connected".into()
    } else if *state == SessionState::NoPath {
        "no path".into()
    } else {
        format!("{state:?}").to_lowercase()
    }
}

/// Print sent/received bytes and rates to stderr every second until dropped.
pub fn spawn_progress(counters: Arc<Counters>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let start = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        loop {
            tick.tick().await;
            let secs = start.elapsed().as_secs_f64().max(1e-9);
            let (s, r) = (
                counters.sent.load(Ordering::Relaxed),
                counters.received.load(Ordering::Relaxed),
            );
            eprintln!(
                "sent {:.1} MiB ({:.1} MiB/s), received {:.1} MiB ({:.1} MiB/s)",
                mib(s),
                mib(s) / secs,
                mib(r),
                mib(r) / secs
            );
        }
    })
}

#[allow(clippy::cast_precision_loss)]
fn mib(b: u64) -> f64 {
    b as f64 / f64::from(1u32 << 20)
}

/// A close reason that fits the CLOSE record.
#[must_use]
pub fn short_reason(e: &anyhow::Error) -> String {
    format!("{e:#}").chars().take(120).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use mpc_did_driver::DriverConfig;
    use mpc_did_testkit::local::session_pair_with;
    use sha2::{Digest as _, Sha256};

    fn data(seed: u8, len: usize) -> Vec<u8> {
        // Deterministic, not periodic within a chunk: a counter hashed per 32 bytes.
        let mut out = Vec::with_capacity(len + 32);
        let mut i = 0u64;
        while out.len() < len {
            out.extend_from_slice(&Sha256::digest([&[seed][..], &i.to_be_bytes()].concat()));
            i += 1;
        }
        out.truncate(len);
        out
    }

    async fn pair() -> (SessionHandle, SessionHandle) {
        session_pair_with(
            "did:example:a",
            "did:example:b",
            DriverConfig::default(),
            |t| Box::new(t),
        )
        .await
        .unwrap()
    }

    // spec/session.md §6: ordered, complete byte streams in both directions at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pipe_moves_both_directions_and_ends_cleanly() {
        let (a, b) = pair().await;
        let (da, db) = (data(1, 3 << 20), data(2, 1 << 20));
        let (ia, ib) = (
            reader_chunks(io::Cursor::new(da.clone())),
            reader_chunks(io::Cursor::new(db.clone())),
        );
        let (ra, rb) = tokio::join!(
            pipe(&a, ia, Vec::new(), PipeOptions::default()),
            pipe(&b, ib, Vec::new(), PipeOptions::default())
        );
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        assert_eq!((ra.sent, ra.received), (da.len() as u64, db.len() as u64));
        assert_eq!((rb.sent, rb.received), (db.len() as u64, da.len() as u64));
        assert!(a.ended().await.is_over() && !a.state().is_error());
        assert!(!b.ended().await.is_error());
    }

    // spec/session.md §12: `pipe`'s protocol as a peer written from the
    // spec sees it: each side sends on the stream it opened (proposer 1, acceptor 0), the
    // first 8 bytes are `mdpipe/1`, a FIN ends its input, and the side that has the peer's
    // FIN and an acknowledgement of all its bytes closes with code 0.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pipe_protocol_as_a_spec_peer_sees_it() {
        let (a, b) = pair().await; // a: proposer (did:example:a < did:example:b)
        let peer = async {
            let mut ours = b.open_stream().await.unwrap();
            assert_eq!(
                ours.id(),
                0,
                "the acceptor (Noise initiator) sends on stream 0"
            );
            ours.write_all(b"mdpipe/1from b").await.unwrap();
            ours.shutdown().await.unwrap();
            let mut theirs = b.accept_stream().await.unwrap();
            assert_eq!(theirs.id(), 1, "the proposer sends on stream 1");
            let mut got = Vec::new();
            theirs.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"mdpipe/1hello world");
            // The pipe side closes once it has our FIN and we acknowledged its bytes.
            match b.ended().await {
                SessionState::Closed {
                    code: 0, by_peer, ..
                } => assert!(by_peer),
                other => panic!("unexpected end: {other:?}"),
            }
        };
        let ours = pipe(
            &a,
            reader_chunks(io::Cursor::new(b"hello world".to_vec())),
            Vec::new(),
            PipeOptions::default(),
        );
        let (report, ()) = tokio::join!(ours, peer);
        let report = report.unwrap();
        assert_eq!((report.sent, report.received), (11, 6));
    }

    // spec/session.md §12: a peer whose preamble names another command is refused with a
    // message that names it (the CLI then sends CLOSE code 1 with that reason).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pipe_refuses_a_peer_running_session_connect() {
        let (a, b) = pair().await;
        let mut ours = b.open_stream().await.unwrap();
        ours.write_all(TAG_PING).await.unwrap();
        let err = pipe(
            &a,
            reader_chunks(tokio::io::empty()),
            Vec::new(),
            PipeOptions::default(),
        )
        .await
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("`mpc-did session connect`"),
            "{err:#}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pipe_output_is_the_peer_input() {
        let (a, b) = pair().await;
        let da = data(3, 2 << 20);
        let (tx, rx) = tokio::io::duplex(1 << 16);
        let collect = tokio::spawn(async move {
            let mut rx = rx;
            let mut v = Vec::new();
            rx.read_to_end(&mut v).await.unwrap();
            v
        });
        let (ra, rb) = tokio::join!(
            pipe(
                &a,
                reader_chunks(io::Cursor::new(da.clone())),
                Vec::new(),
                PipeOptions::default()
            ),
            pipe(
                &b,
                reader_chunks(tokio::io::empty()),
                tx,
                PipeOptions::default()
            )
        );
        ra.unwrap();
        rb.unwrap();
        let got = collect.await.unwrap();
        assert_eq!(Sha256::digest(&got), Sha256::digest(&da));
    }

    /// An output whose reader has gone (`| head`): every write fails with `BrokenPipe`.
    struct ClosedOutput;
    impl AsyncWrite for ClosedOutput {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            _: &[u8],
        ) -> std::task::Poll<io::Result<usize>> {
            std::task::Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()))
        }
        fn poll_flush(
            self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    // Audit #18 H1: `pipe DID < big | head -c 10` used to drop the send half when stdout
    // closed (and `main` then exited 0 with our data unacknowledged). Now the peer still
    // gets all our input, and we succeed only once it acknowledged every byte.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_closed_output_does_not_cut_off_our_sending() {
        let (a, b) = pair().await;
        let (da, db) = (data(5, 2 << 20), data(6, 300 << 10));
        let (tx, rx) = tokio::io::duplex(1 << 16);
        let collect = tokio::spawn(async move {
            let mut rx = rx;
            let mut v = Vec::new();
            let _ = rx.read_to_end(&mut v).await;
            v
        });
        let (ra, _rb) = tokio::join!(
            pipe(
                &a,
                reader_chunks(io::Cursor::new(da.clone())),
                ClosedOutput,
                PipeOptions::default()
            ),
            pipe(
                &b,
                reader_chunks(io::Cursor::new(db)),
                tx,
                PipeOptions::default()
            )
        );
        let ra = ra.unwrap();
        assert!(ra.output_closed);
        assert_eq!((ra.sent, ra.received), (da.len() as u64, 0));
        assert_eq!(Sha256::digest(collect.await.unwrap()), Sha256::digest(&da));
        // We close with code 1, never 0: the peer must not believe we read its whole
        // stream. (The peer may close first, with 0, once it has our FIN and its bytes
        // were acknowledged.)
        match a.ended().await {
            SessionState::Closed { code, by_peer, .. } => {
                assert!(by_peer || code != CLOSE_DONE, "we closed with code {code}");
            }
            other => panic!("unexpected end: {other:?}"),
        }
    }

    // Audit #18 H1: with our output closed and the peer gone before acknowledging our
    // data, `pipe` fails with an error `main` reports with a non-zero exit (a closed
    // stdout is no excuse).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_closed_output_never_hides_unacknowledged_data() {
        let (a, b) = pair().await; // a: proposer, sends on stream 1
        let peer = async {
            let mut ours = b.open_stream().await.unwrap();
            ours.write_all(b"mdpipe/1some bytes for stdout")
                .await
                .unwrap();
            let mut theirs = b.accept_stream().await.unwrap();
            let mut first = [0u8; 1000];
            theirs.read_exact(&mut first).await.unwrap();
            // Gone without reading the rest.
            drop(theirs);
            b.close(CLOSE_PARTY_FAILED, "gone").await;
        };
        let ours = pipe(
            &a,
            reader_chunks(io::Cursor::new(data(7, 16 << 20))),
            ClosedOutput,
            PipeOptions::default(),
        );
        let (r, ()) =
            tokio::time::timeout(Duration::from_secs(30), async { tokio::join!(ours, peer) })
                .await
                .unwrap();
        let err = r.unwrap_err();
        assert!(!crate::is_broken_pipe(&err), "{err:#}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn switch_hook_runs_once_after_the_threshold() {
        let (a, b) = pair().await;
        let ran = Arc::new(AtomicU64::new(0));
        let r = ran.clone();
        let hook: Hook = Box::new(move || {
            Box::pin(async move {
                r.fetch_add(1, Ordering::SeqCst);
                Ok(())
            })
        });
        let opts = PipeOptions {
            switch_after: Some((1 << 20, hook)),
            ..PipeOptions::default()
        };
        let (ra, rb) = tokio::join!(
            pipe(
                &a,
                reader_chunks(io::Cursor::new(data(4, 4 << 20))),
                Vec::new(),
                opts
            ),
            pipe(
                &b,
                reader_chunks(tokio::io::empty()),
                Vec::new(),
                PipeOptions::default()
            )
        );
        assert!(ra.unwrap().switched);
        assert!(!rb.unwrap().switched);
        assert_eq!(ran.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ping_exchange_measures_both_sides() {
        let (a, b) = pair().await;
        let (ra, rb) = tokio::join!(ping_exchange(&a, 5), ping_exchange(&b, 5));
        assert_eq!(ra.unwrap().len(), 5);
        assert_eq!(rb.unwrap().len(), 5);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mismatched_commands_fail_clearly() {
        let (a, b) = pair().await;
        let (ra, rb) = tokio::join!(
            ping_exchange(&a, 1),
            pipe(
                &b,
                reader_chunks(tokio::io::empty()),
                Vec::new(),
                PipeOptions::default()
            )
        );
        let eb = rb.unwrap_err().to_string();
        assert!(eb.contains("session connect"), "{eb}");
        let ea = format!("{:#}", ra.unwrap_err());
        assert!(ea.contains("`mpc-did pipe`"), "{ea}");
    }
}
