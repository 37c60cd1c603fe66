//! The session task: one task owns one [`Session`] and its current path.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use mpc_did_session::frame::MAX_FRAME_LEN;
use mpc_did_session::{
    Event, EventRef, Outbox, RecordDecoder, Session, SessionError, SessionStats,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, oneshot, watch, Mutex};
use tokio::time::Instant;
use tokio_util::sync::PollSender;

use crate::path::{path_id, BoxPath, PathId, PathInfo};

/// Tunables of the driver (the session's own are in `SessionConfig`).
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// How long the session may be without a working path (one that delivered an
    /// authenticated record from the peer) before it fails.
    pub resume_timeout: Duration,
    /// Chunks buffered per stream for a reader that is not reading (backpressure beyond it:
    /// the driver stops reading the path). A chunk gathers consecutive records of the
    /// stream, up to 64 KiB plus one record.
    pub stream_buffer_chunks: usize,
    /// Writes queued from all streams before writers wait.
    pub write_queue_chunks: usize,
}

impl Default for DriverConfig {
    fn default() -> Self {
        Self {
            resume_timeout: Duration::from_secs(60),
            stream_buffer_chunks: 64,
            write_queue_chunks: 64,
        }
    }
}

/// Where a session stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionState {
    /// A path is attached but nothing from the peer has authenticated on it yet.
    Connecting,
    /// Carrying records on a path: the peer's records authenticate on it.
    Connected,
    /// The path broke or went idle; waiting for [`SessionHandle::attach_path`].
    NoPath,
    /// Closed by us or the peer; `code` 0 is a normal end.
    Closed {
        /// The CLOSE record's code (spec/session.md §9): 0 for a normal end.
        code: u16,
        /// The CLOSE record's reason text.
        reason: String,
        /// Whether the peer sent the CLOSE (else we did).
        by_peer: bool,
    },
    /// The session failed (protocol violation, no path for too long).
    Failed(String),
}

impl SessionState {
    /// Whether the session is over.
    #[must_use]
    pub fn is_over(&self) -> bool {
        matches!(self, Self::Closed { .. } | Self::Failed(_))
    }
    /// Whether it ended in a way the application should treat as an error.
    #[must_use]
    pub fn is_error(&self) -> bool {
        matches!(self, Self::Failed(_) | Self::Closed { code: 1.., .. })
    }
}

/// Which path a session runs on (spec/session.md §7.5): visible to listings and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathStatus {
    /// The path attached now; `None` without a path or when it was attached unlabelled
    /// ([`SessionHandle::attach_path`]).
    pub current: Option<PathInfo>,
    /// The last labelled path, also after it broke.
    pub last: Option<PathInfo>,
    /// Paths attached so far (1 after the first; each switch or reconnection adds one).
    pub attached: u64,
}

enum Command {
    Open(oneshot::Sender<io::Result<SessionStream>>),
    Path(BoxPath, Option<PathInfo>, oneshot::Sender<()>),
    Close {
        code: u16,
        reason: String,
        /// The peer ended the session out of band (a DIDComm `close`): stop without
        /// sending a CLOSE record.
        by_peer: bool,
        done: oneshot::Sender<()>,
    },
    Stats(oneshot::Sender<SessionStats>),
}

enum WriteOp {
    Data(u32, Vec<u8>),
    Finish(u32),
}

enum Chunk {
    Data(Vec<u8>),
    Fin,
}

struct Inner {
    cmd: mpsc::Sender<Command>,
    accept: Mutex<mpsc::UnboundedReceiver<SessionStream>>,
    state: watch::Receiver<SessionState>,
    path: watch::Receiver<PathStatus>,
    path_id: PathId,
    /// The session's counters when the driver stopped, so that [`SessionHandle::stats`]
    /// still answers afterwards (whether the peer acknowledged everything decides whether
    /// a sender may report success).
    last_stats: Arc<std::sync::Mutex<Option<SessionStats>>>,
}

/// A handle to a running session; cheap to clone.
#[derive(Clone)]
pub struct SessionHandle {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SessionHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionHandle")
            .field("state", &*self.inner.state.borrow())
            .finish_non_exhaustive()
    }
}

fn gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "the secure session has ended",
    )
}

impl SessionHandle {
    /// Start driving an established session. It has no path yet: attach one with
    /// [`SessionHandle::attach_path`] (both sides do, on the two ends of one path).
    #[must_use]
    pub fn spawn(session: Session, config: DriverConfig) -> Self {
        let (cmd_tx, cmd_rx) = mpsc::channel(16);
        let (accept_tx, accept_rx) = mpsc::unbounded_channel();
        let (state_tx, state_rx) = watch::channel(SessionState::NoPath);
        let (path_tx, path_rx) = watch::channel(PathStatus::default());
        let (write_tx, write_rx) = mpsc::channel(config.write_queue_chunks.max(1));
        let path_id = path_id(session.handshake_hash());
        let last_stats = Arc::new(std::sync::Mutex::new(None));
        let driver = Driver {
            last_stats: Arc::clone(&last_stats),
            session,
            start: Instant::now(),
            reader: None,
            writer: None,
            decoder: RecordDecoder::new(),
            hello: crate::path::encode_hello(&path_id),
            out: OutQueue::default(),
            streams: HashMap::new(),
            stalled: None,
            accept_tx,
            write_tx,
            write_rx,
            pending_write: None,
            cmd_rx,
            state_tx,
            path_tx,
            no_path_since: Some(Instant::now()),
            config,
        };
        tokio::spawn(driver.run());
        Self {
            inner: Arc::new(Inner {
                cmd: cmd_tx,
                accept: Mutex::new(accept_rx),
                state: state_rx,
                path: path_rx,
                path_id,
                last_stats,
            }),
        }
    }

    /// The id this session's paths carry in their hello.
    #[must_use]
    pub fn path_id(&self) -> PathId {
        self.inner.path_id
    }

    /// Carry the session on `path` from now on (the first path, a reconnection, or an
    /// upgrade from relay to direct); the old path, if any, is dropped and unacknowledged
    /// bytes are resent on the new one.
    ///
    /// # Errors
    /// `ConnectionAborted` if the session has ended.
    pub async fn attach_path(&self, path: BoxPath) -> io::Result<()> {
        self.attach_path_as(path, None).await
    }

    /// As [`SessionHandle::attach_path`], recording what the path is (shown by
    /// [`SessionHandle::path`]; a change of kind, e.g. relay → quic, is logged at info).
    ///
    /// # Errors
    /// `ConnectionAborted` if the session has ended.
    pub async fn attach_path_as(&self, path: BoxPath, info: Option<PathInfo>) -> io::Result<()> {
        let (tx, taken) = oneshot::channel();
        self.inner
            .cmd
            .send(Command::Path(path, info, tx))
            .await
            .map_err(|_| gone())?;
        // Return once the driver has switched (state: Connecting), so that a caller
        // watching the state sees this path's outcome, not the previous state.
        taken.await.map_err(|_| gone())
    }

    /// Open a new stream to the peer.
    ///
    /// # Errors
    /// `ConnectionAborted` if the session has ended; `Other` at the stream limit.
    pub async fn open_stream(&self) -> io::Result<SessionStream> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .cmd
            .send(Command::Open(tx))
            .await
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// The next stream the peer opened; `None` once the session has ended.
    pub async fn accept_stream(&self) -> Option<SessionStream> {
        self.inner.accept.lock().await.recv().await
    }

    /// Close the session with `code` (0: normal end) and wait until the CLOSE record has
    /// been handed to the path (or there is none).
    pub async fn close(&self, code: u16, reason: &str) {
        self.stop(code, reason, false).await;
    }

    /// The peer ended the session out of band — a DIDComm `close` on its negotiation
    /// thread (spec/session.md §2: "`close` ends the secure session (both its control state
    /// and its transport)"): stop as if its CLOSE record had arrived ([`SessionState::Closed`]
    /// with `by_peer`), sending nothing.
    pub async fn closed_by_peer(&self, code: u16, reason: &str) {
        self.stop(code, reason, true).await;
    }

    /// Sends the driver its `Close` command and waits until it is carried out.
    async fn stop(&self, code: u16, reason: &str, by_peer: bool) {
        let (done, wait) = oneshot::channel();
        let cmd = Command::Close {
            code,
            reason: reason.to_owned(),
            by_peer,
            done,
        };
        if self.inner.cmd.send(cmd).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// The session's state now.
    #[must_use]
    pub fn state(&self) -> SessionState {
        self.inner.state.borrow().clone()
    }

    /// A receiver of state changes.
    #[must_use]
    pub fn watch_state(&self) -> watch::Receiver<SessionState> {
        self.inner.state.clone()
    }

    /// The path the session runs on now, the last one, and how many were attached.
    #[must_use]
    pub fn path(&self) -> PathStatus {
        self.inner.path.borrow().clone()
    }

    /// A receiver of path changes.
    #[must_use]
    pub fn watch_path(&self) -> watch::Receiver<PathStatus> {
        self.inner.path.clone()
    }

    /// Resolves with the final state once the session is over.
    pub async fn ended(&self) -> SessionState {
        let mut rx = self.inner.state.clone();
        let result = rx.wait_for(SessionState::is_over).await.map(|s| s.clone());
        result.unwrap_or_else(|_| SessionState::Failed("driver stopped".into()))
    }

    /// The session's counters; after the session ended, those it had when it ended.
    pub async fn stats(&self) -> Option<SessionStats> {
        let (tx, rx) = oneshot::channel();
        if self.inner.cmd.send(Command::Stats(tx)).await.is_ok() {
            if let Ok(s) = rx.await {
                return Some(s);
            }
        }
        self.inner.last_stats.lock().ok().and_then(|s| s.clone())
    }
}

/// One stream of a session: ordered bytes each way, EOF when the peer finishes its side,
/// an error (never an EOF) if the session fails first.
pub struct SessionStream {
    id: u32,
    rx: mpsc::Receiver<Chunk>,
    readable: Option<(Vec<u8>, usize)>,
    eof: bool,
    tx: PollSender<WriteOp>,
    finished: bool,
}

impl std::fmt::Debug for SessionStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionStream")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl SessionStream {
    /// The stream id (spec/session.md §6.1).
    #[must_use]
    pub fn id(&self) -> u32 {
        self.id
    }
}

impl AsyncRead for SessionStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if let Some((data, off)) = &mut self.readable {
                let rest = data.get(*off..).unwrap_or_default();
                let n = rest.len().min(buf.remaining());
                buf.put_slice(rest.get(..n).unwrap_or_default());
                *off += n;
                if *off >= data.len() {
                    self.readable = None;
                }
                return Poll::Ready(Ok(()));
            }
            if self.eof {
                return Poll::Ready(Ok(()));
            }
            match ready!(self.rx.poll_recv(cx)) {
                Some(Chunk::Data(d)) => self.readable = Some((d, 0)),
                Some(Chunk::Fin) => self.eof = true,
                // The driver dropped the stream without a FIN: the session failed or was
                // closed before the peer finished. Never report that as a clean EOF.
                None => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        "secure session ended before the stream was finished",
                    )))
                }
            }
        }
    }
}

impl AsyncWrite for SessionStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.finished {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "stream finished",
            )));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        ready!(self.tx.poll_reserve(cx)).map_err(|_| gone())?;
        let id = self.id;
        // One write, one chunk: what the proxy read in one go becomes one DATA frame.
        self.tx
            .send_item(WriteOp::Data(id, buf.to_vec()))
            .map_err(|_| gone())?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.finished {
            return Poll::Ready(Ok(()));
        }
        ready!(self.tx.poll_reserve(cx)).map_err(|_| gone())?;
        let id = self.id;
        self.tx.send_item(WriteOp::Finish(id)).map_err(|_| gone())?;
        self.finished = true;
        Poll::Ready(Ok(()))
    }
}

/// Bytes read from the path per call.
const READ_CHUNK: usize = 256 << 10;

/// How long a read of what a failed path already received may wait (the bytes are in the
/// socket's buffer already, or never come).
const LEFT_OVER_WAIT: Duration = Duration::from_millis(50);
/// Application writes taken per loop turn beyond the first, sealed before the next write.
const WRITE_BATCH: usize = 16;

/// Most bytes gathered from consecutive records of one stream into one chunk for its reader
/// (a chunk may exceed it by less than one record). Kept under glibc's 128 KiB mmap
/// threshold: larger chunks were mapped and faulted in afresh each time.
const DELIVER_CHUNK: usize = 64 << 10;

/// Batches of records handed to one vectored write at most.
const MAX_IOSLICES: usize = 64;

/// Records waiting for the path: the session's outboxes as they were taken (moved, never
/// copied), written front to back.
#[derive(Default)]
struct OutQueue {
    chunks: VecDeque<Outbox>,
    /// Emptied outboxes, reused so that their buffers are allocated once.
    spare: Vec<Outbox>,
}

impl OutQueue {
    fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Moves every record the session has sealed to the back of the queue.
    fn take_from(&mut self, session: &mut Session) {
        let mut o = self.spare.pop().unwrap_or_default();
        session.transmit_into(&mut o);
        if o.is_empty() {
            self.spare.push(o);
        } else {
            self.chunks.push_back(o);
        }
    }

    /// `n` bytes from the front were written.
    fn consume(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.chunks.front_mut() else {
                return;
            };
            let len = front.len();
            front.consume(n);
            if n < len {
                return;
            }
            n -= len;
            self.recycle_front();
        }
    }

    fn recycle_front(&mut self) {
        if let Some(mut o) = self.chunks.pop_front() {
            o.clear();
            if self.spare.len() < 4 {
                self.spare.push(o);
            }
        }
    }

    fn clear(&mut self) {
        while !self.chunks.is_empty() {
            self.recycle_front();
        }
    }

    /// Keeps only the rest of a record already partly written.
    fn keep_started_record(&mut self) {
        let Some(mut front) = self.chunks.pop_front() else {
            return;
        };
        front.keep_started_record();
        self.clear();
        if front.is_empty() {
            self.spare.push(front);
        } else {
            self.chunks.push_back(front);
        }
    }
}

struct Driver {
    session: Session,
    start: Instant,
    reader: Option<ReadHalf<BoxPath>>,
    writer: Option<WriteHalf<BoxPath>>,
    decoder: RecordDecoder,
    /// Our session's path hello, looked for at record boundaries (spec §7.3).
    hello: [u8; crate::path::HELLO_LEN],
    /// Records waiting for the path, back to back: written with one call for as many as
    /// the path takes (spec/session.md §5.1 lets records share a write).
    out: OutQueue,
    streams: HashMap<u32, mpsc::Sender<Chunk>>,
    /// A chunk for a stream whose reader is behind; no more events are processed (and the
    /// path is not read) until it is delivered.
    stalled: Option<(mpsc::Sender<Chunk>, Chunk)>,
    accept_tx: mpsc::UnboundedSender<SessionStream>,
    write_tx: mpsc::Sender<WriteOp>,
    write_rx: mpsc::Receiver<WriteOp>,
    /// Bytes the session did not accept yet (its unacknowledged-bytes bound).
    pending_write: Option<(u32, Vec<u8>, usize)>,
    cmd_rx: mpsc::Receiver<Command>,
    state_tx: watch::Sender<SessionState>,
    path_tx: watch::Sender<PathStatus>,
    no_path_since: Option<Instant>,
    config: DriverConfig,
    last_stats: Arc<std::sync::Mutex<Option<SessionStats>>>,
}

/// What ended the driver loop.
enum Stop {
    Closed {
        code: u16,
        reason: String,
        by_peer: bool,
    },
    Failed(String),
}

impl Driver {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    async fn run(mut self) {
        let stop = self.run_loop().await;
        let state = match stop {
            Stop::Closed {
                code,
                reason,
                by_peer,
            } => SessionState::Closed {
                code,
                reason,
                by_peer,
            },
            Stop::Failed(why) => {
                tracing::warn!("secure session failed: {why}");
                SessionState::Failed(why)
            }
        };
        if let Ok(mut s) = self.last_stats.lock() {
            *s = Some(self.session.stats());
        }
        // Dropping the stream senders without a FIN makes readers see an error, unless
        // they had already been finished.
        self.streams.clear();
        self.stalled = None;
        let _ = self.state_tx.send(state);
    }

    async fn run_loop(&mut self) -> Stop {
        loop {
            if let Some(stop) = self.pump_events() {
                return stop;
            }
            if let Err(e) = self.pump_writes() {
                return Stop::Failed(e.to_string());
            }
            self.collect_records();
            let timeout = self
                .session
                .poll_timeout()
                .map(|ms| self.start + Duration::from_millis(ms));
            let no_path_deadline = self.no_path_since.map(|t| t + self.config.resume_timeout);
            let can_read = self.reader.is_some() && self.stalled.is_none();
            let can_write = self.writer.is_some() && !self.out.is_empty();
            let can_take_writes = self.pending_write.is_none() && self.session.send_capacity() > 0;

            tokio::select! {
                cmd = self.cmd_rx.recv() => match cmd {
                    Some(cmd) => if let Some(stop) = self.handle_command(cmd).await { return stop },
                    // Every handle is gone: nobody can use the session any more.
                    None => {
                        let _ = self.session.close(self.now_ms(), 0, "closed");
                        self.collect_records();
                        self.flush_out().await;
                        return Stop::Closed { code: 0, reason: "all handles dropped".into(), by_peer: false };
                    }
                },
                // Large reads (a bulk transfer takes several records per system call),
                // straight into the decoder's buffer: no copy between read and open.
                n = read_some(&mut self.reader, self.decoder.spare(READ_CHUNK)), if can_read => match n {
                    Ok(0) | Err(_) => self.lose_path("path closed"),
                    Ok(n) => {
                        self.decoder.filled(n);
                        if let Some(stop) = self.feed_records() { return stop; }
                    }
                },
                w = write_some(&mut self.writer, &self.out), if can_write => match w {
                    Ok(n) => self.out.consume(n),
                    Err(_) => {
                        // The peer may have closed the session and then its socket while we
                        // were still sending: its CLOSE is in our receive buffer, and the
                        // write failed on the reset that followed. Read what arrived before
                        // giving the path up, or we would wait for a resume that never
                        // comes (spec/session.md §9).
                        if let Some(stop) = self.read_what_is_left().await {
                            return stop;
                        }
                        self.lose_path("path write failed");
                    }
                },
                op = self.write_rx.recv(), if can_take_writes => {
                    // `write_tx` lives in self, so the channel never closes here.
                    if let Some(op) = op {
                        if let Err(e) = self.apply_write(op) { return Stop::Failed(e.to_string()); }
                    }
                    // Take what else is queued now, so that its records share a write.
                    for _ in 0..WRITE_BATCH {
                        if self.pending_write.is_some() || self.session.send_capacity() == 0 {
                            break;
                        }
                        let Ok(op) = self.write_rx.try_recv() else { break };
                        if let Err(e) = self.apply_write(op) { return Stop::Failed(e.to_string()); }
                    }
                },
                permit = reserve(&self.stalled), if self.stalled.is_some() => {
                    // If the reader dropped its stream, what was meant for it is discarded.
                    if let (Ok(()), Some((tx, chunk))) = (permit, self.stalled.take()) {
                        let _ = tx.try_send(chunk);
                    }
                },
                () = sleep_until(timeout) => {
                    if let Err(e) = self.session.handle_timeout(self.now_ms()) {
                        return Stop::Failed(e.to_string());
                    }
                },
                () = sleep_until(no_path_deadline), if no_path_deadline.is_some() => {
                    return Stop::Failed(format!("no path for {:?}", self.config.resume_timeout));
                },
            }
        }
    }

    async fn handle_command(&mut self, cmd: Command) -> Option<Stop> {
        match cmd {
            Command::Open(reply) => {
                let r = self
                    .session
                    .open_stream()
                    .map(|id| self.new_stream(id))
                    .map_err(|e| io::Error::other(e.to_string()));
                let _ = reply.send(r);
            }
            Command::Path(path, info, taken) => {
                self.path_tx.send_modify(|p| {
                    if let (Some(old), Some(new)) = (&p.last, &info) {
                        if old.kind() != new.kind() {
                            tracing::info!(
                                "secure session path: {} -> {} ({new})",
                                old.kind(),
                                new.kind()
                            );
                        }
                    }
                    p.attached += 1;
                    p.current.clone_from(&info);
                    if info.is_some() {
                        p.last = info;
                    }
                });
                let (r, w) = tokio::io::split(path);
                self.reader = Some(r);
                self.writer = Some(w);
                self.decoder = RecordDecoder::new();
                self.out.clear();
                // A path counts once it carries an authenticated record (below, in
                // `feed_records`): a relay stream to a vanished peer attaches fine, and
                // re-attaching such paths must not keep a dead session alive (spec §7.4).
                self.no_path_since.get_or_insert_with(Instant::now);
                if let Err(e) = self.session.resume(self.now_ms()) {
                    return Some(Stop::Failed(e.to_string()));
                }
                let _ = self.state_tx.send(SessionState::Connecting);
                let _ = taken.send(());
            }
            Command::Close {
                code,
                reason,
                by_peer: true,
                done,
            } => {
                let _ = done.send(());
                return Some(Stop::Closed {
                    code,
                    reason,
                    by_peer: true,
                });
            }
            Command::Close {
                code,
                reason,
                by_peer: false,
                done,
            } => {
                // Writes and FINs the application issued before closing travel on another
                // channel than this command: seal them first, so the peer never sees CLOSE
                // before a FIN that was sent earlier (it would report the stream as cut).
                self.drain_queued_writes();
                let now = self.now_ms();
                let _ = self.session.close(now, code, &reason);
                self.collect_records();
                self.flush_out().await;
                let _ = done.send(());
                return Some(Stop::Closed {
                    code,
                    reason,
                    by_peer: false,
                });
            }
            Command::Stats(reply) => {
                // Writes the streams already accepted count as sent: apply them first, so
                // that `unacked_bytes == 0` never reports a write still in the channel as
                // acknowledged (a `pipe` sender could exit 0 without the peer having it).
                self.drain_queued_writes();
                let _ = reply.send(self.session.stats());
            }
        }
        None
    }

    /// Applies the writes queued by streams, as far as the send window allows.
    fn drain_queued_writes(&mut self) {
        while self.pending_write.is_none() {
            let Ok(op) = self.write_rx.try_recv() else {
                break;
            };
            if self.apply_write(op).is_err() {
                break;
            }
        }
    }

    fn new_stream(&mut self, id: u32) -> SessionStream {
        let (tx, rx) = mpsc::channel(self.config.stream_buffer_chunks.max(1));
        self.streams.insert(id, tx);
        SessionStream {
            id,
            rx,
            readable: None,
            eof: false,
            tx: PollSender::new(self.write_tx.clone()),
            finished: false,
        }
    }

    /// Reads and handles what the path already received (each read waits at most
    /// [`LEFT_OVER_WAIT`]), until it ends, fails or is quiet; `Some` if a record in it ended
    /// the session (the peer's CLOSE).
    async fn read_what_is_left(&mut self) -> Option<Stop> {
        while self.reader.is_some() {
            let read = read_some(&mut self.reader, self.decoder.spare(READ_CHUNK));
            match tokio::time::timeout(LEFT_OVER_WAIT, read).await {
                Ok(Ok(n)) if n > 0 => {
                    self.decoder.filled(n);
                    if let Some(stop) = self.feed_records() {
                        return Some(stop);
                    }
                }
                _ => break,
            }
        }
        None
    }

    fn lose_path(&mut self, why: &str) {
        tracing::debug!("secure session lost its path: {why}");
        self.reader = None;
        self.writer = None;
        self.out.clear();
        if self.no_path_since.is_none() {
            self.no_path_since = Some(Instant::now());
        }
        self.path_tx
            .send_if_modified(|p| p.current.take().is_some());
        let _ = self.state_tx.send(SessionState::NoPath);
    }

    /// The peer wrote a new path hello on the current byte stream: resume as on a newly
    /// attached path, keeping the stream. A record we started writing is finished first
    /// (cutting it would desynchronise the peer's decoder); the rest of the queue is
    /// replaced by our RESUME.
    fn restart_on_same_stream(&mut self) -> Option<Stop> {
        tracing::debug!("the peer opened a new path on the current stream");
        self.out.keep_started_record();
        self.no_path_since.get_or_insert_with(Instant::now);
        if let Err(e) = self.session.resume(self.now_ms()) {
            return Some(Stop::Failed(e.to_string()));
        }
        let _ = self.state_tx.send(SessionState::Connecting);
        None
    }

    /// Decode and handle every complete record read so far.
    fn feed_records(&mut self) -> Option<Stop> {
        loop {
            // Our session's path hello at a record boundary: the peer opened a new path on
            // the byte stream we already read (a relay stream, where every path to this
            // peer arrives on one connection): resume on it as on a new path (spec §7.3).
            match self.decoder.take_prefix(&self.hello) {
                None => return None,
                Some(true) => {
                    if let Some(stop) = self.restart_on_same_stream() {
                        return Some(stop);
                    }
                    continue;
                }
                Some(false) => {}
            }
            let now = self.now_ms();
            let handled = match self.decoder.next_record_ref() {
                // Borrowed from the decoder: no copy per record.
                Ok(Some(record)) => {
                    let ignored = self.session.stats().ignored_records;
                    Ok(Some(
                        self.session
                            .handle_record(now, record)
                            .map(|()| self.session.stats().ignored_records == ignored),
                    ))
                }
                Ok(None) => Ok(None),
                Err(e) => Err(e),
            };
            match handled {
                Ok(Some(accepted)) => match accepted {
                    // Ignored: a stale record of the peer's old path, no proof of this one.
                    Ok(false) => {}
                    Ok(true) => {
                        // The first accepted record proves the path reaches the peer.
                        self.no_path_since = None;
                        self.state_tx.send_if_modified(|s| {
                            let connecting = *s == SessionState::Connecting;
                            if connecting {
                                *s = SessionState::Connected;
                            }
                            connecting
                        });
                    }
                    // A record that does not authenticate means the path carries forged
                    // or stale data: drop the path, keep the session (spec §5.3).
                    Err(SessionError::Decrypt) => {
                        self.lose_path("a record failed to authenticate");
                        return None;
                    }
                    Err(e) => return Some(Stop::Failed(e.to_string())),
                },
                Ok(None) => return None,
                Err(_) => {
                    self.lose_path("malformed record framing");
                    return None;
                }
            }
        }
    }

    /// Hand session events to streams until one stalls.
    fn pump_events(&mut self) -> Option<Stop> {
        while self.stalled.is_none() {
            if let Some((stream, run)) = self.session.queued_data() {
                // Consecutive records of one stream go to its reader as one chunk: one
                // allocation and one channel hand-off per chunk, not per record.
                let want = run.min(DELIVER_CHUNK);
                let mut chunk = Vec::with_capacity(run.min(DELIVER_CHUNK + MAX_FRAME_LEN));
                while chunk.len() < want {
                    match self.session.poll_event_ref() {
                        Some(EventRef::Data { data, .. }) => chunk.extend_from_slice(data),
                        _ => break,
                    }
                }
                self.deliver(stream, Chunk::Data(chunk));
                continue;
            }
            let event = self.session.poll_event()?;
            match event {
                Event::Data { stream, data } => self.deliver(stream, Chunk::Data(data)),
                Event::StreamFinished { stream } => {
                    self.deliver(stream, Chunk::Fin);
                    self.streams.remove(&stream);
                }
                Event::Writable | Event::Rekeyed { .. } | Event::Resumed => {}
                Event::PathIdle => self.lose_path("nothing received within the idle timeout"),
                Event::Closed { code, reason } => {
                    return Some(Stop::Closed {
                        code,
                        reason,
                        by_peer: true,
                    });
                }
            }
        }
        None
    }

    fn deliver(&mut self, stream: u32, chunk: Chunk) {
        if !self.streams.contains_key(&stream) {
            // First bytes of a stream the peer opened.
            let s = self.new_stream(stream);
            let _ = self.accept_tx.send(s);
        }
        let Some(tx) = self.streams.get(&stream) else {
            return;
        };
        match tx.try_send(chunk) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(chunk)) => self.stalled = Some((tx.clone(), chunk)),
        }
    }

    fn apply_write(&mut self, op: WriteOp) -> Result<(), SessionError> {
        match op {
            WriteOp::Data(id, data) => {
                self.pending_write = Some((id, data, 0));
                self.pump_writes()
            }
            WriteOp::Finish(id) => self.session.finish(self.now_ms(), id),
        }
    }

    /// Offer pending bytes to the session as far as its send window allows.
    fn pump_writes(&mut self) -> Result<(), SessionError> {
        if let Some((id, data, off)) = self.pending_write.take() {
            let rest = data.get(off..).unwrap_or_default();
            let n = self.session.send(self.now_ms(), id, rest)?;
            if off + n < data.len() {
                self.pending_write = Some((id, data, off + n));
            }
        }
        Ok(())
    }

    fn collect_records(&mut self) {
        if self.writer.is_some() {
            self.out.take_from(&mut self.session);
        } else {
            // Without a path, records are dropped: `resume` resends what was not
            // acknowledged on the next path.
            self.session.transmit_into(&mut Outbox::new());
        }
    }

    /// Best effort: write what is queued (at close) and shut the path down, for at most a
    /// second.
    async fn flush_out(&mut self) {
        let Some(w) = self.writer.as_mut() else {
            return;
        };
        let out = &self.out;
        // Shutting the path down waits, on QUIC, until the peer acknowledged what was
        // written: the CLOSE must not be lost when the endpoint goes right after (§9).
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            for o in &out.chunks {
                w.write_all(o.bytes()).await?;
            }
            w.flush().await?;
            w.shutdown().await
        })
        .await;
        self.out.clear();
    }
}

async fn read_some(reader: &mut Option<ReadHalf<BoxPath>>, buf: &mut [u8]) -> io::Result<usize> {
    match reader {
        Some(r) => r.read(buf).await,
        None => std::future::pending().await,
    }
}

async fn write_some(writer: &mut Option<WriteHalf<BoxPath>>, out: &OutQueue) -> io::Result<usize> {
    let Some(w) = writer.as_mut() else {
        return std::future::pending().await;
    };
    if out.is_empty() {
        return std::future::pending().await;
    }
    // Every queued record in one call: TCP takes them with one (vectored) system call; a
    // path without vectored writes takes the first batch of records.
    let slices: Vec<io::IoSlice<'_>> = out
        .chunks
        .iter()
        .take(MAX_IOSLICES)
        .map(|o| io::IoSlice::new(o.bytes()))
        .collect();
    let n = w.write_vectored(&slices).await?;
    if n == 0 {
        return Err(io::ErrorKind::WriteZero.into());
    }
    Ok(n)
}

async fn reserve(stalled: &Option<(mpsc::Sender<Chunk>, Chunk)>) -> Result<(), ()> {
    match stalled {
        Some((tx, _)) => tx.reserve().await.map(drop).map_err(drop),
        None => std::future::pending().await,
    }
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
