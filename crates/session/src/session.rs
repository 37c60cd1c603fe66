//! The transport state machine (spec/session.md §5–8). No I/O: records in, records and events
//! out; time is a caller-supplied millisecond clock.

use std::collections::{BTreeMap, VecDeque};

use crate::cipher::{epoch_of, RecvCipher, SendCipher, EPOCH_BITS};
use crate::error::{Result, SessionError};
use crate::fifo::Fifo;
use crate::frame::{
    data_capacity, encode_varint, varint_len, Frame, FrameType, RecordHeader, StreamState,
    MAX_FRAME_LEN, MAX_REASON_LEN, MAX_RECORD_LEN, STREAM_STATE_LEN,
};
use crate::handshake::{Role, Split};
use crate::outbox::Outbox;

/// Most streams each side may open (`max_streams` is clamped to it): the streams both sides
/// opened fit in one RESUME frame (spec §6.1, §7).
pub const MAX_STREAMS_LIMIT: usize = (MAX_FRAME_LEN - 3) / STREAM_STATE_LEN / 2;

/// Tunables of a session. The defaults are those of spec/session.md §8.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    /// Stream bytes written but not yet acknowledged, over all streams; `send` accepts no
    /// more (backpressure) until ACKs free space.
    pub max_unacked_bytes: usize,
    /// Streams each side may open in the session's life: we open at most this many, and a
    /// peer frame naming one more of the peer's streams fails the session (at most
    /// [`MAX_STREAMS_LIMIT`]). Counted per opener, so peers with the same setting never
    /// exceed each other's limit, however their opens interleave.
    pub max_streams: usize,
    /// Send a PING after this long without sending anything.
    pub keepalive_ms: u64,
    /// Report [`Event::PathIdle`] after this long without receiving anything.
    pub idle_timeout_ms: u64,
    /// Longest delay before acknowledging received bytes.
    pub ack_delay_ms: u64,
    /// Acknowledge at once when this many received bytes are unacknowledged.
    pub ack_threshold_bytes: u64,
    /// Start a new key epoch after sealing this many record bytes in the current one.
    pub rekey_bytes: u64,
    /// Start a new key epoch after this long in the current one.
    pub rekey_interval_ms: u64,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            max_unacked_bytes: 8 << 20,
            max_streams: 1024,
            keepalive_ms: 10_000,
            idle_timeout_ms: 30_000,
            ack_delay_ms: 20,
            ack_threshold_bytes: 64 << 10,
            rekey_bytes: 1 << 30,
            rekey_interval_ms: 600_000,
        }
    }
}

/// What the session tells its driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// New in-order bytes of a stream (never a byte twice, never a gap).
    Data {
        /// Stream id.
        stream: u32,
        /// The bytes.
        data: Vec<u8>,
    },
    /// The peer finished its sending direction of `stream`; every byte has been delivered.
    StreamFinished {
        /// Stream id.
        stream: u32,
    },
    /// Acknowledgements freed send capacity after `send` accepted less than it was given.
    Writable,
    /// The peer moved to a new key epoch.
    Rekeyed {
        /// The new receive epoch.
        epoch: u64,
    },
    /// The peer's RESUME arrived: unacknowledged bytes have been queued again on this path.
    Resumed,
    /// Nothing was received for `idle_timeout_ms`: the driver should open another path and
    /// call [`Session::resume`].
    PathIdle,
    /// The peer closed the session.
    Closed {
        /// The peer's close code.
        code: u16,
        /// The peer's reason text.
        reason: String,
    },
}

/// Receive-buffer capacity kept once every queued event has been polled.
const RECV_DATA_KEEP: usize = 1 << 20;

/// An [`Event`] as [`Session::poll_event_ref`] returns it: stream bytes are borrowed from
/// the session's receive buffer instead of allocated.
#[derive(Debug, PartialEq, Eq)]
pub enum EventRef<'a> {
    /// New in-order bytes of a stream, as [`Event::Data`].
    Data {
        /// Stream id.
        stream: u32,
        /// The bytes, valid until the session is used again.
        data: &'a [u8],
    },
    /// Any other event (never [`Event::Data`]).
    Other(Event),
}

/// A queued event; stream bytes stay where their record was decrypted.
#[derive(Debug)]
enum Queued {
    Event(Event),
    /// `recv_data[start..end]` of `stream`.
    Data {
        stream: u32,
        start: usize,
        end: usize,
    },
}

/// Counters for tests, logs and benchmarks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Records sealed.
    pub records_sent: u64,
    /// Records opened.
    pub records_received: u64,
    /// Current sending key epoch.
    pub send_epoch: u64,
    /// Current receiving key epoch.
    pub recv_epoch: u64,
    /// Stream bytes held for retransmission.
    pub unacked_bytes: usize,
    /// Authenticated records ignored while waiting for the peer's RESUME.
    pub ignored_records: u64,
    /// Stream bytes sent again after a path switch.
    pub retransmitted_bytes: u64,
    /// Records sent with an explicit counter (the first on a path, or after an epoch skip).
    pub explicit_counters_sent: u64,
    /// Receive keys derived to try records of later epochs (spec §5.5), whether or not the
    /// record then authenticated: the work forged records caused, at most
    /// [`crate::MAX_EPOCH_SKIP`] per record.
    pub trial_keys_derived: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PathState {
    /// Sending and receiving normally on the current path.
    Active,
    /// [`Session::resume`] was called: our RESUME is queued; the peer's has not arrived.
    AwaitingResume,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lifecycle {
    Open,
    Closed,
    Failed,
}

#[derive(Debug, Default)]
struct SendStream {
    /// Offset acknowledged by the peer; `buf` holds bytes from here.
    acked: u64,
    /// Unacknowledged bytes `[acked, acked + buf.len())`.
    buf: VecDeque<u8>,
    /// Next offset to transmit on the current path.
    sent: u64,
    /// Highest offset ever transmitted (on any path); ACKs may not exceed it.
    max_sent: u64,
    /// The application finished the stream.
    fin: bool,
    fin_sent: bool,
    fin_ever_sent: bool,
    fin_acked: bool,
}

impl SendStream {
    fn write_end(&self) -> u64 {
        self.acked + self.buf.len() as u64
    }
}

#[derive(Debug, Default)]
struct RecvStream {
    /// Bytes delivered in order.
    offset: u64,
    /// Offset last acknowledged to the peer.
    acked: u64,
    fin: bool,
    fin_acked: bool,
}

/// An established secure session (spec/session.md §5): see the crate docs for the call
/// order. Created by [`crate::InitiatorHandshake::finish`] or [`crate::respond`].
pub struct Session {
    role: Role,
    config: SessionConfig,
    sealer: Sealer,
    recv_cipher: RecvCipher,
    handshake_hash: [u8; 32],
    lifecycle: Lifecycle,
    path: PathState,
    last_recv_counter: Option<u64>,
    send_streams: BTreeMap<u32, SendStream>,
    recv_streams: BTreeMap<u32, RecvStream>,
    next_local_stream: u64,
    /// Streams the peer opened (named first in one of its frames).
    peer_streams: usize,
    unacked_total: usize,
    blocked: bool,
    events: Fifo<Queued>,
    /// Received records, decrypted in place, back to back; queued [`Queued::Data`] events
    /// point into it. Emptied when no event is queued (spec §11 "Performance note").
    recv_data: Vec<u8>,
    last_recv_ms: u64,
    idle_reported: bool,
    ack_deadline: Option<u64>,
    ack_pending_bytes: u64,
    stats: SessionStats,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("role", &self.role)
            .field("lifecycle", &self.lifecycle)
            .field("path", &self.path)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Session {
    pub(crate) fn new(
        role: Role,
        split: Split,
        mut config: SessionConfig,
        now_ms: u64,
    ) -> Result<Self> {
        let (send_key, recv_key) = match role {
            Role::Initiator => (split.initiator_to_responder, split.responder_to_initiator),
            Role::Responder => (split.responder_to_initiator, split.initiator_to_responder),
        };
        config.max_streams = config.max_streams.clamp(1, MAX_STREAMS_LIMIT);
        let rekey_bytes = config.rekey_bytes;
        Ok(Self {
            role,
            config,
            sealer: Sealer {
                cipher: SendCipher::new(send_key)?,
                outbox: Outbox::new(),
                next_counter: 0,
                prev_sent_counter: None,
                epoch_started_ms: now_ms,
                epoch_bytes: 0,
                rekey_pending: false,
                rekey_bytes,
                last_send_ms: now_ms,
                records_sent: 0,
                explicit_counters_sent: 0,
            },
            recv_cipher: RecvCipher::new(recv_key)?,
            handshake_hash: split.handshake_hash,
            lifecycle: Lifecycle::Open,
            path: PathState::Active,
            last_recv_counter: None,
            send_streams: BTreeMap::new(),
            recv_streams: BTreeMap::new(),
            next_local_stream: match role {
                Role::Initiator => 0,
                Role::Responder => 1,
            },
            peer_streams: 0,
            unacked_total: 0,
            blocked: false,
            events: Fifo::default(),
            recv_data: Vec::with_capacity(MAX_RECORD_LEN),
            last_recv_ms: now_ms,
            idle_reported: false,
            ack_deadline: None,
            ack_pending_bytes: 0,
            stats: SessionStats::default(),
        })
    }

    /// Our Noise role.
    #[must_use]
    pub fn role(&self) -> Role {
        self.role
    }

    /// The Noise handshake hash `h`: identical on both sides, unique per handshake; usable as
    /// a channel binding.
    #[must_use]
    pub fn handshake_hash(&self) -> &[u8; 32] {
        &self.handshake_hash
    }

    /// Counters.
    #[must_use]
    pub fn stats(&self) -> SessionStats {
        SessionStats {
            send_epoch: self.sealer.cipher.epoch(),
            records_sent: self.sealer.records_sent,
            explicit_counters_sent: self.sealer.explicit_counters_sent,
            recv_epoch: self.recv_cipher.epoch(),
            unacked_bytes: self.unacked_total,
            trial_keys_derived: self.recv_cipher.trial_keys_derived(),
            ..self.stats.clone()
        }
    }

    /// Whether the session is closed (by either side) or failed.
    #[must_use]
    pub fn is_closed(&self) -> bool {
        self.lifecycle != Lifecycle::Open
    }

    /// Free send capacity in bytes.
    #[must_use]
    pub fn send_capacity(&self) -> usize {
        self.config
            .max_unacked_bytes
            .saturating_sub(self.unacked_total)
    }

    /// Opens a new stream (initiator: even ids, responder: odd ids; spec §6.1).
    ///
    /// # Errors
    /// [`SessionError::Limit`] when this side has opened `max_streams` streams (finished ones
    /// included: ids are never reused) or ids are exhausted; [`SessionError::State`] after
    /// close.
    pub fn open_stream(&mut self) -> Result<u32> {
        self.check_open()?;
        // Ids go up by 2 from 0 (initiator) or 1 (responder): this many were opened.
        let opened = self.next_local_stream / 2;
        if opened >= self.config.max_streams as u64 {
            return Err(SessionError::Limit("streams"));
        }
        let id =
            u32::try_from(self.next_local_stream).map_err(|_| SessionError::Limit("stream ids"))?;
        self.next_local_stream += 2;
        self.send_streams.insert(id, SendStream::default());
        Ok(id)
    }

    /// Writes bytes on a stream; returns how many were accepted (fewer than given, possibly
    /// 0, when the unacknowledged-bytes bound is reached: wait for [`Event::Writable`]).
    /// Records go to the outbox ([`Session::poll_transmit`]); while a resume is pending the
    /// bytes are only buffered.
    ///
    /// # Errors
    /// [`SessionError::State`] for a stream that is neither opened locally nor by the peer,
    /// a finished stream, or a closed session; [`SessionError::Exhausted`] at the end of the
    /// counter space.
    pub fn send(&mut self, now_ms: u64, stream: u32, data: &[u8]) -> Result<usize> {
        self.check_open()?;
        let cap = self
            .config
            .max_unacked_bytes
            .saturating_sub(self.unacked_total);
        // One map lookup per write: the records are sealed from `s` directly.
        let s = self
            .send_streams
            .get_mut(&stream)
            .ok_or(SessionError::State("unknown stream"))?;
        if s.fin {
            return Err(SessionError::State("stream finished"));
        }
        let n = data.len().min(cap);
        if n < data.len() {
            self.blocked = true;
        }
        let accepted = data.get(..n).unwrap_or_default();
        if accepted.is_empty() {
            return Ok(0);
        }
        s.buf.extend(accepted);
        self.unacked_total += n;
        if self.path == PathState::Active {
            transmit(&mut self.sealer, now_ms, stream, s)?;
        }
        Ok(n)
    }

    /// Finishes our sending direction of `stream` (a FIN follows the buffered bytes).
    ///
    /// # Errors
    /// As [`Session::send`].
    pub fn finish(&mut self, now_ms: u64, stream: u32) -> Result<()> {
        self.check_open()?;
        let s = self
            .send_streams
            .get_mut(&stream)
            .ok_or(SessionError::State("unknown stream"))?;
        if s.fin {
            return Err(SessionError::State("stream finished"));
        }
        s.fin = true;
        if self.path == PathState::Active {
            self.transmit_stream(now_ms, stream)?;
        }
        Ok(())
    }

    /// Closes the session: a CLOSE record is queued, nothing more is sent or accepted.
    ///
    /// # Errors
    /// [`SessionError::State`] if already closed; [`SessionError::Limit`] for a reason over
    /// 256 bytes.
    pub fn close(&mut self, now_ms: u64, code: u16, reason: &str) -> Result<()> {
        self.check_open()?;
        if reason.len() > MAX_REASON_LEN {
            return Err(SessionError::Limit("close reason"));
        }
        self.seal(now_ms, &Frame::Close { code, reason })?;
        self.lifecycle = Lifecycle::Closed;
        Ok(())
    }

    /// The path broke or was replaced: drop unsent records, queue a RESUME carrying our
    /// received offsets as the first record of the new path, and hold stream data until the
    /// peer's RESUME says where to restart (spec §7). Call it once the new path is up and
    /// before feeding any record read from it; never feed records from the old path again.
    ///
    /// # Errors
    /// [`SessionError::State`] after close.
    pub fn resume(&mut self, now_ms: u64) -> Result<()> {
        self.check_open()?;
        self.sealer.outbox.clear();
        // The RESUME is the first record on the new path: its counter goes explicitly.
        self.sealer.prev_sent_counter = None;
        self.path = PathState::AwaitingResume;
        for s in self.send_streams.values_mut() {
            s.sent = s.acked;
            s.fin_sent = s.fin_acked;
        }
        let states = self.recv_states(true);
        self.ack_deadline = None;
        self.ack_pending_bytes = 0;
        self.last_recv_ms = now_ms;
        self.idle_reported = false;
        self.seal(now_ms, &Frame::Resume(states))
    }

    /// Processes one complete record (length field included), e.g. from
    /// [`crate::RecordDecoder::next_record`]. Events are queued for [`Session::poll_event`],
    /// answers for [`Session::poll_transmit`].
    ///
    /// # Errors
    /// - [`SessionError::Decrypt`]: the record did not authenticate, or was replayed,
    ///   reordered or truncated. The session is unchanged; the path is untrustworthy — drop
    ///   it and [`Session::resume`] on another.
    /// - [`SessionError::Malformed`] / [`SessionError::Protocol`] / [`SessionError::Limit`]
    ///   after decryption: the authenticated peer broke the protocol; the session has failed.
    /// - [`SessionError::State`]: the session is closed or failed.
    pub fn handle_record(&mut self, now_ms: u64, record: &[u8]) -> Result<()> {
        self.check_open()?;
        // A short, long or truncated record is reported like any other forgery (spec §5.3).
        let header = RecordHeader::parse(record).map_err(|_| SessionError::Decrypt)?;
        let counter = match header.counter {
            Some(c) => c,
            None => {
                if self.path == PathState::AwaitingResume {
                    // Every RESUME carries its counter explicitly, so this is one of the
                    // peer's records from before it learnt of the switch, ignored anyway
                    // (spec §7.1 step 4); its counter is unknowable (records may have been
                    // lost with the old path), so it is dropped unopened.
                    self.stats.ignored_records += 1;
                    return Ok(());
                }
                // An implicit counter is the next one after `last` (spec §5.3).
                let Some(last) = self.last_recv_counter else {
                    return Err(SessionError::Decrypt);
                };
                last.checked_add(1).ok_or(SessionError::Decrypt)?
            }
        };
        // Counters only increase: a replayed or older record is rejected before decryption.
        if self.last_recv_counter.is_some_and(|last| counter <= last) || counter == u64::MAX {
            return Err(SessionError::Decrypt);
        }
        // On one path records arrive in order: the next counter, or the first counter of the
        // next epoch when the peer rekeyed early (spec §5.5). Only a RESUME may skip ahead.
        let in_order = match self.last_recv_counter {
            Some(last) => counter == last + 1 || counter == next_epoch_start(last),
            None => counter == 0,
        };
        let (ad, ct) = record.split_at(header.encoded_len());
        // Copied once, decrypted where it lies; DATA stays there until polled.
        if self.events.is_empty() {
            self.recv_data.clear();
            // A burst polled late may have grown it: do not keep that much for good.
            if self.recv_data.capacity() > RECV_DATA_KEEP {
                self.recv_data.shrink_to(RECV_DATA_KEEP);
            }
        }
        let mut buf = std::mem::take(&mut self.recv_data);
        let start = buf.len();
        buf.extend_from_slice(ct);
        let result = self.open_and_dispatch(now_ms, counter, in_order, ad, &mut buf, start);
        // Keep the record only if a queued DATA event points into it.
        let kept = matches!(self.events.back(), Some(Queued::Data { end, .. }) if *end > start);
        if !kept {
            buf.truncate(start);
        }
        self.recv_data = buf;
        result
    }

    fn open_and_dispatch(
        &mut self,
        now_ms: u64,
        counter: u64,
        in_order: bool,
        ad: &[u8],
        buf: &mut Vec<u8>,
        start: usize,
    ) -> Result<()> {
        let in_out = buf.get_mut(start..).ok_or(SessionError::Decrypt)?;
        let (n, pending) = self.recv_cipher.open_in_place(counter, ad, in_out)?;
        let pt_end = start + n;
        buf.truncate(pt_end);
        let pt = buf.get(start..).unwrap_or_default();
        let is_resume = pt.first() == Some(&(FrameType::Resume as u8));
        if self.path == PathState::AwaitingResume && !is_resume {
            // The peer's records from before it learnt of the switch (e.g. we reconnected to
            // the relay, it did not): their DATA is retransmitted after the RESUMEs, so they
            // are ignored without changing any state (spec §7.1).
            self.stats.ignored_records += 1;
            return Ok(());
        }
        if !in_order && !is_resume {
            // A skipped counter within a path: a dropped or reordered record.
            return Err(SessionError::Decrypt);
        }
        // Accepted: commit.
        if let Some(p) = pending {
            self.recv_cipher.commit(p);
            self.events.push_back(Queued::Event(Event::Rekeyed {
                epoch: self.recv_cipher.epoch(),
            }));
        }
        self.last_recv_counter = Some(counter);
        self.last_recv_ms = now_ms;
        self.idle_reported = false;
        self.stats.records_received += 1;
        let r = decode_frame(pt).and_then(|f| {
            if is_resume && self.path == PathState::Active {
                // The peer switched paths and we did not notice (spec §7.1 step 5).
                self.resume(now_ms)?;
            }
            self.dispatch(now_ms, f, pt_end)
        });
        if r.is_err() {
            self.lifecycle = Lifecycle::Failed;
        }
        r
    }

    /// The next record to write to the current path, in order.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.sealer.outbox.pop_record().map(<[u8]>::to_vec)
    }

    /// As [`Session::poll_transmit`], borrowing the record instead of allocating it (valid
    /// until the session is used again).
    pub fn poll_transmit_ref(&mut self) -> Option<&[u8]> {
        self.sealer.outbox.pop_record()
    }

    /// Moves every queued record, in order, to the end of `out` (without copying when `out`
    /// is empty): a driver writes them with as few system calls as the path allows.
    pub fn transmit_into(&mut self, out: &mut Outbox) {
        self.sealer.outbox.move_into(out);
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<Event> {
        let e = match self.events.pop_front()? {
            Queued::Event(e) => e,
            Queued::Data { stream, start, end } => Event::Data {
                stream,
                data: self.recv_data.get(start..end).unwrap_or_default().to_vec(),
            },
        };
        if self.events.is_empty() {
            self.recv_data.clear();
        }
        Some(e)
    }

    /// If the next event is [`Event::Data`]: its stream, and the bytes of that stream in the
    /// run of DATA events of the same stream at the front of the queue (what a driver may
    /// gather into one chunk for the application).
    #[must_use]
    pub fn queued_data(&self) -> Option<(u32, usize)> {
        let mut run = None;
        for q in self.events.iter() {
            match (q, run) {
                (Queued::Data { stream, start, end }, None) => run = Some((*stream, end - start)),
                (Queued::Data { stream, start, end }, Some((s, n))) if *stream == s => {
                    run = Some((s, n + (end - start)));
                }
                _ => break,
            }
        }
        run
    }

    /// As [`Session::poll_event`], borrowing stream bytes from the session (valid until the
    /// session is used again) instead of allocating them: no allocation per record.
    pub fn poll_event_ref(&mut self) -> Option<EventRef<'_>> {
        Some(match self.events.pop_front()? {
            Queued::Event(e) => EventRef::Other(e),
            Queued::Data { stream, start, end } => EventRef::Data {
                stream,
                data: self.recv_data.get(start..end).unwrap_or_default(),
            },
        })
    }

    /// The earliest time [`Session::handle_timeout`] has work to do, if any.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<u64> {
        if self.lifecycle != Lifecycle::Open {
            return None;
        }
        let mut t = self
            .sealer
            .last_send_ms
            .saturating_add(self.config.keepalive_ms);
        if !self.idle_reported {
            t = t.min(
                self.last_recv_ms
                    .saturating_add(self.config.idle_timeout_ms),
            );
        }
        if let Some(a) = self.ack_deadline {
            t = t.min(a);
        }
        if !self.sealer.rekey_pending {
            t = t.min(
                self.sealer
                    .epoch_started_ms
                    .saturating_add(self.config.rekey_interval_ms),
            );
        }
        Some(t)
    }

    /// Runs timers: delayed ACKs, keepalive PINGs, idle detection, rekey by time.
    ///
    /// # Errors
    /// [`SessionError::Exhausted`] at the end of the counter space.
    pub fn handle_timeout(&mut self, now_ms: u64) -> Result<()> {
        if self.lifecycle != Lifecycle::Open {
            return Ok(());
        }
        if self.ack_deadline.is_some_and(|d| now_ms >= d) {
            self.send_acks(now_ms)?;
        }
        if !self.sealer.rekey_pending
            && now_ms
                >= self
                    .sealer
                    .epoch_started_ms
                    .saturating_add(self.config.rekey_interval_ms)
        {
            // A PING makes the new epoch take effect now rather than at the next write, so
            // the old key does not linger in memory on an idle session.
            self.sealer.rekey_pending = true;
            self.seal(now_ms, &Frame::Ping(self.sealer.next_counter))?;
        }
        if now_ms
            >= self
                .sealer
                .last_send_ms
                .saturating_add(self.config.keepalive_ms)
        {
            self.seal(now_ms, &Frame::Ping(self.sealer.next_counter))?;
        }
        if !self.idle_reported
            && now_ms
                >= self
                    .last_recv_ms
                    .saturating_add(self.config.idle_timeout_ms)
        {
            self.idle_reported = true;
            self.events.push_back(Queued::Event(Event::PathIdle));
        }
        Ok(())
    }

    /// Seals arbitrary bytes as a frame plaintext into the outbox, bypassing the frame
    /// encoder: lets fuzzers and tests reach the peer's post-decryption parser and state
    /// machine with frames this implementation would never produce.
    ///
    /// # Errors
    /// [`SessionError::Limit`] for more than a record's worth of bytes; as [`Session::send`].
    #[doc(hidden)]
    pub fn seal_raw_frame_for_testing(&mut self, now_ms: u64, plaintext: &[u8]) -> Result<()> {
        self.check_open()?;
        if plaintext.len() > MAX_FRAME_LEN {
            return Err(SessionError::Limit("frame larger than a record"));
        }
        self.sealer.seal_with(now_ms, plaintext.len(), |record| {
            record.extend_from_slice(plaintext);
            Ok(())
        })
    }

    /// Starts a new key epoch with the next record (spec §5.5). Normally driven by the
    /// schedule; public for drivers and tests.
    pub fn request_rekey(&mut self) {
        self.sealer.rekey_pending = true;
    }

    fn check_open(&self) -> Result<()> {
        match self.lifecycle {
            Lifecycle::Open => Ok(()),
            Lifecycle::Closed => Err(SessionError::State("session closed")),
            Lifecycle::Failed => Err(SessionError::State("session failed")),
        }
    }

    fn recv_states(&mut self, mark_acked: bool) -> Vec<StreamState> {
        let mut v = Vec::new();
        for (&stream, r) in &mut self.recv_streams {
            v.push(StreamState {
                stream,
                offset: r.offset,
                fin: r.fin,
            });
            if mark_acked {
                r.acked = r.offset;
                r.fin_acked = r.fin;
            }
        }
        v
    }

    fn send_acks(&mut self, now_ms: u64) -> Result<()> {
        self.ack_deadline = None;
        self.ack_pending_bytes = 0;
        let mut v = Vec::new();
        for (&stream, r) in &mut self.recv_streams {
            if r.offset > r.acked || r.fin != r.fin_acked {
                v.push(StreamState {
                    stream,
                    offset: r.offset,
                    fin: r.fin,
                });
                r.acked = r.offset;
                r.fin_acked = r.fin;
            }
        }
        if v.is_empty() {
            return Ok(());
        }
        self.seal(now_ms, &Frame::Ack(v))
    }

    fn schedule_ack(&mut self, now_ms: u64, bytes: u64, urgent: bool) -> Result<()> {
        self.ack_pending_bytes += bytes;
        if urgent || self.ack_pending_bytes >= self.config.ack_threshold_bytes {
            return self.send_acks(now_ms);
        }
        if self.ack_deadline.is_none() {
            self.ack_deadline = Some(now_ms.saturating_add(self.config.ack_delay_ms));
        }
        Ok(())
    }

    /// Seals one frame into a record and queues it.
    fn seal(&mut self, now_ms: u64, frame: &Frame<'_>) -> Result<()> {
        self.sealer.seal(now_ms, frame)
    }

    /// Sends every untransmitted byte (and a due FIN) of one stream.
    fn transmit_stream(&mut self, now_ms: u64, stream: u32) -> Result<()> {
        match self.send_streams.get_mut(&stream) {
            Some(s) => transmit(&mut self.sealer, now_ms, stream, s),
            None => Ok(()),
        }
    }

    /// Applies the peer's received offset for one of our send streams (ACK or RESUME).
    fn apply_ack(&mut self, st: StreamState) -> Result<()> {
        let Some(s) = self.send_streams.get_mut(&st.stream) else {
            if st.offset == 0 && !st.fin {
                return Ok(());
            }
            return Err(SessionError::Protocol("ack for unknown stream"));
        };
        if st.offset > s.max_sent || (st.fin && !(s.fin_ever_sent && st.offset == s.write_end())) {
            return Err(SessionError::Protocol("ack beyond what was sent"));
        }
        if st.offset > s.acked {
            let n = st.offset - s.acked;
            let n_usize = usize::try_from(n).map_err(|_| SessionError::Protocol("ack size"))?;
            s.buf.drain(..n_usize.min(s.buf.len()));
            s.acked = st.offset;
            self.unacked_total = self.unacked_total.saturating_sub(n_usize);
        }
        // After a path switch `sent` was rewound to the old acknowledged offset.
        s.sent = s.sent.max(s.acked);
        if st.fin {
            s.fin_acked = true;
            s.fin_sent = true;
        }
        Ok(())
    }

    fn maybe_writable(&mut self) {
        if self.blocked && self.unacked_total < self.config.max_unacked_bytes {
            self.blocked = false;
            self.events.push_back(Queued::Event(Event::Writable));
        }
    }

    fn recv_stream(&mut self, stream: u32) -> Result<&mut RecvStream> {
        if !self.recv_streams.contains_key(&stream) {
            let ours = stream.is_multiple_of(2) == (self.role == Role::Initiator);
            if ours && !self.send_streams.contains_key(&stream) {
                return Err(SessionError::Protocol(
                    "peer used a stream id of our parity",
                ));
            }
            if !ours {
                // A new peer-opened stream, counted against the peer's limit; ours are
                // bounded by `open_stream`.
                if self.peer_streams >= self.config.max_streams {
                    return Err(SessionError::Limit("streams"));
                }
                self.peer_streams += 1;
                // A peer-opened stream is bidirectional: we may answer on it.
                self.send_streams.entry(stream).or_default();
            }
        }
        Ok(self.recv_streams.entry(stream).or_default())
    }

    /// Applies one decoded frame; `pt_end` is where its plaintext ends in `recv_data`.
    fn dispatch(&mut self, now_ms: u64, frame: Frame<'_>, pt_end: usize) -> Result<()> {
        match frame {
            Frame::Data { stream, data } => {
                // The bytes are the next ones of the stream: §7 makes that exact (no DATA
                // between a RESUME and the peer's, retransmission from exactly the offset
                // the peer listed), so every byte is delivered once, in order (spec §6.2).
                // One lookup for a known stream (nearly every record).
                let r = match self.recv_streams.get_mut(&stream) {
                    Some(r) => r,
                    None => self.recv_stream(stream)?,
                };
                if data.is_empty() {
                    return Ok(());
                }
                if r.fin {
                    return Err(SessionError::Protocol("data after FIN"));
                }
                let n = data.len() as u64;
                r.offset = r
                    .offset
                    .checked_add(n)
                    .ok_or(SessionError::Protocol("stream offset overflow"))?;
                // `data` is the tail of the plaintext that ends at `pt_end` in `recv_data`.
                self.events.push_back(Queued::Data {
                    stream,
                    start: pt_end - data.len(),
                    end: pt_end,
                });
                self.schedule_ack(now_ms, n, false)
            }
            Frame::Fin { stream, final_size } => {
                let r = self.recv_stream(stream)?;
                if r.fin {
                    if final_size != r.offset {
                        return Err(SessionError::Protocol("FIN size changed"));
                    }
                    return Ok(());
                }
                if final_size != r.offset {
                    return Err(SessionError::Protocol("FIN size does not match data"));
                }
                r.fin = true;
                self.events
                    .push_back(Queued::Event(Event::StreamFinished { stream }));
                self.schedule_ack(now_ms, 0, false)
            }
            Frame::Ack(states) => {
                for st in states {
                    self.apply_ack(st)?;
                }
                self.maybe_writable();
                Ok(())
            }
            Frame::Ping(token) => self.seal(now_ms, &Frame::Pong(token)),
            Frame::Pong(_) => Ok(()),
            Frame::Resume(states) => {
                if self.path != PathState::AwaitingResume {
                    return Err(SessionError::Protocol("RESUME without a path switch"));
                }
                let mut listed = std::collections::BTreeSet::new();
                for st in states {
                    if !listed.insert(st.stream) {
                        return Err(SessionError::Protocol("stream listed twice in RESUME"));
                    }
                    if let Some(s) = self.send_streams.get(&st.stream) {
                        if st.offset < s.acked {
                            return Err(SessionError::Protocol("RESUME below acknowledged offset"));
                        }
                        // The peer had acknowledged our FIN: it cannot have lost it (spec
                        // §7.1 step 3, like an offset below the acknowledged one).
                        if s.fin_acked && !st.fin {
                            return Err(SessionError::Protocol("RESUME below acknowledged FIN"));
                        }
                    }
                    self.apply_ack(st)?;
                }
                for (id, s) in &self.send_streams {
                    if !listed.contains(id) && (s.acked > 0 || s.fin_acked) {
                        return Err(SessionError::Protocol("RESUME forgot a stream"));
                    }
                }
                self.path = PathState::Active;
                let ids: Vec<u32> = self.send_streams.keys().copied().collect();
                for id in ids {
                    let before = self.sealer.records_sent;
                    let pending = self
                        .send_streams
                        .get(&id)
                        .map_or(0, |s| s.write_end() - s.sent);
                    self.transmit_stream(now_ms, id)?;
                    if self.sealer.records_sent > before {
                        self.stats.retransmitted_bytes += pending;
                    }
                }
                self.events.push_back(Queued::Event(Event::Resumed));
                self.maybe_writable();
                Ok(())
            }
            Frame::Close { code, reason } => {
                self.lifecycle = Lifecycle::Closed;
                self.events.push_back(Queued::Event(Event::Closed {
                    code,
                    reason: reason.to_owned(),
                }));
                Ok(())
            }
        }
    }
}

/// The sending half of the record layer (spec §5.1, §5.2, §5.5): the send key, counters,
/// the epoch schedule and the outbox. Kept apart from the streams so that a DATA record is
/// sealed straight from its stream's send buffer after one stream lookup per write
/// (spec §11 "Performance note").
struct Sealer {
    cipher: SendCipher,
    outbox: Outbox,
    next_counter: u64,
    /// Counter of the previous record sealed for the current path; `None` at the start and
    /// after [`Session::resume`], so the next record carries its counter explicitly.
    prev_sent_counter: Option<u64>,
    epoch_started_ms: u64,
    epoch_bytes: u64,
    rekey_pending: bool,
    /// [`SessionConfig::rekey_bytes`].
    rekey_bytes: u64,
    last_send_ms: u64,
    records_sent: u64,
    explicit_counters_sent: u64,
}

impl Sealer {
    /// Seals one frame into a record and queues it.
    fn seal(&mut self, now_ms: u64, frame: &Frame<'_>) -> Result<()> {
        let len = frame.encoded_len();
        if len > MAX_FRAME_LEN {
            return Err(SessionError::Limit("frame larger than a record"));
        }
        self.seal_with(now_ms, len, |record| frame.encode(record))
    }

    /// Seals one record whose plaintext, `pt_len` bytes, `encode` appends to the record
    /// buffer; it is encrypted there, in the outbox (no scratch copy, no allocation).
    fn seal_with(
        &mut self,
        now_ms: u64,
        pt_len: usize,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<()>,
    ) -> Result<()> {
        let rekey = self.rekey_pending || self.epoch_bytes >= self.rekey_bytes;
        self.rekey_pending = false;
        if rekey && self.next_counter & epoch_mask() != 0 {
            self.next_counter = next_epoch_start(self.next_counter);
        }
        let counter = self.next_counter;
        if counter == u64::MAX {
            return Err(SessionError::Exhausted);
        }
        // A due rekey at an unused epoch start needs no skip, but restarts the schedule (else
        // the time trigger would fire again at once).
        if rekey || epoch_of(counter) != self.cipher.epoch() {
            self.epoch_started_ms = now_ms;
            self.epoch_bytes = 0;
        }
        // The counter goes explicitly on the first record of a path and after a skip
        // (spec §5.1); otherwise the receiver knows it is the previous one + 1.
        let explicit = self.prev_sent_counter.and_then(|p| p.checked_add(1)) != Some(counter);
        let header = RecordHeader {
            ciphertext_len: pt_len + crate::cipher::TAG_LEN,
            counter: explicit.then_some(counter),
        };
        let hdr_len = header.encoded_len();
        let record = self.outbox.begin_record();
        let ad_start = record.len();
        // Written straight into the record: a header array copied in afterwards cost a
        // store-forwarding stall per record (spec §11).
        let sealed = header
            .write(record)
            .and_then(|()| {
                let pt_start = record.len();
                encode(record)?;
                Ok(pt_start)
            })
            .and_then(|pt_start| {
                if record.len() - pt_start != pt_len {
                    return Err(SessionError::State("frame length"));
                }
                self.cipher
                    .seal_in_place(counter, record, ad_start, pt_start)
            });
        if let Err(e) = sealed {
            self.outbox.abandon_record();
            return Err(e);
        }
        self.outbox.end_record();
        if explicit {
            self.explicit_counters_sent += 1;
        }
        self.prev_sent_counter = Some(counter);
        self.next_counter = counter + 1;
        self.epoch_bytes += (hdr_len + header.ciphertext_len) as u64;
        self.last_send_ms = now_ms;
        self.records_sent += 1;
        Ok(())
    }
}

/// Seals every untransmitted byte (and a due FIN) of stream `stream`, whose state is `s`,
/// as DATA records encoded straight from its send buffer (no intermediate copy).
fn transmit(sealer: &mut Sealer, now_ms: u64, stream: u32, s: &mut SendStream) -> Result<()> {
    let end = s.write_end();
    if s.sent < end {
        let id_len = varint_len(u64::from(stream)).ok_or(SessionError::Limit("varint"))?;
        let max = data_capacity(stream) as u64;
        while s.sent < end {
            let offset = s.sent;
            let n = (end - offset).min(max);
            let n_usize = usize::try_from(n).map_err(|_| SessionError::Limit("record"))?;
            let buf = &s.buf;
            let from = offset - s.acked;
            // The same encoding as `Frame::Data` (spec §5.4); the offset is implicit.
            sealer.seal_with(now_ms, 1 + id_len + n_usize, |record| {
                match u8::try_from(stream) {
                    // A stream id below 64 is one varint byte (nearly every stream).
                    Ok(id) if id_len == 1 => {
                        record.extend_from_slice(&[FrameType::Data as u8, id]);
                    }
                    _ => {
                        record.push(FrameType::Data as u8);
                        encode_varint(u64::from(stream), record)?;
                    }
                }
                copy_range(buf, from, n, record);
                Ok(())
            })?;
            s.sent = offset + n;
            s.max_sent = s.max_sent.max(s.sent);
        }
    }
    if s.fin && !s.fin_sent {
        sealer.seal(
            now_ms,
            &Frame::Fin {
                stream,
                final_size: end,
            },
        )?;
        s.fin_sent = true;
        s.fin_ever_sent = true;
    }
    Ok(())
}

/// [`Frame::decode`], with the DATA frame of a stream below 64 — nearly every record —
/// decoded inline: type 0x01, a one-byte varint (always minimal), the data.
#[inline]
fn decode_frame(pt: &[u8]) -> Result<Frame<'_>> {
    match pt {
        [0x01, id, data @ ..] if *id < 0x40 => Ok(Frame::Data {
            stream: u32::from(*id),
            data,
        }),
        _ => Frame::decode(pt),
    }
}

fn epoch_mask() -> u64 {
    (1u64 << EPOCH_BITS) - 1
}

/// First counter of the epoch after the one `counter` is in.
fn next_epoch_start(counter: u64) -> u64 {
    (counter | epoch_mask()).saturating_add(1)
}

/// Appends `n` bytes of `buf` starting at `start` to `out`, slice-wise.
fn copy_range(buf: &VecDeque<u8>, start: u64, n: u64, out: &mut Vec<u8>) {
    let (a, b) = buf.as_slices();
    let start = usize::try_from(start).unwrap_or(usize::MAX);
    let end = start.saturating_add(usize::try_from(n).unwrap_or(usize::MAX));
    let a_len = a.len();
    if start < a_len {
        out.extend_from_slice(a.get(start..end.min(a_len)).unwrap_or_default());
    }
    if end > a_len {
        let bs = start.saturating_sub(a_len);
        out.extend_from_slice(b.get(bs..end - a_len).unwrap_or_default());
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::decode_frame;
    use crate::frame::Frame;

    #[test]
    fn the_inline_data_decoder_agrees_with_the_frame_codec() {
        // spec/session.md §5.4: the hot-path DATA decoding must accept and reject exactly
        // what `Frame::decode` does, with the same result.
        let cases: [&[u8]; 10] = [
            b"\x01\x00",
            b"\x01\x00hello",
            b"\x01\x3fx",
            b"\x01\x40\x40x",
            b"\x01\x40\x05x",
            b"\x01",
            b"\x02\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x05",
            b"\x04\x00\x00\x00\x00\x00\x00\x00\x07",
            b"\x09\x00",
            b"",
        ];
        for pt in cases {
            assert_eq!(decode_frame(pt), Frame::decode(pt), "{pt:?}");
        }
    }
}
