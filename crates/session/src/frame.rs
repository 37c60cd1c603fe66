//! Wire codec: records on a byte stream and the frames inside them (spec/session.md §5).
//!
//! ```text
//! record     = length:u16be  [counter:u64be]  ciphertext
//!              length bit 15 (E): the counter follows explicitly; bits 0-14: len(ciphertext)
//!              without E the counter is implicit: the previous record's counter + 1
//! ciphertext = AES-256-GCM(k_epoch(counter), nonce = counter, ad = header as sent, frame)
//! frame      = type:u8  fields...                                (types in `FrameType`)
//! DATA       = 0x01  stream:varint  data:rest                    (QUIC varint, minimal)
//! ```
//! The record header is the only cleartext; stream ids and frame types are encrypted. A
//! small DATA record costs 20 bytes (2 length + 16 tag + type + 1-byte stream id), TLS 1.3's
//! 22 or less. The same records travel over TCP, a QUIC stream or a relay frame.

use crate::cipher::TAG_LEN;
use crate::error::{Result, SessionError};

/// Bytes of the length field.
pub const LENGTH_LEN: usize = 2;
/// Bytes of an explicit counter.
pub const COUNTER_LEN: usize = 8;
/// Bit 15 of the length field: an explicit counter follows (spec §5.1).
pub const EXPLICIT_COUNTER: u16 = 0x8000;
/// Largest record header: length and explicit counter.
pub const HEADER_LEN: usize = LENGTH_LEN + COUNTER_LEN;
/// Largest ciphertext (frame + tag): the 15 low bits of the length field.
pub const MAX_CIPHERTEXT_LEN: usize = 0x7fff;
/// Smallest ciphertext: a one-byte frame and the tag.
pub const MIN_CIPHERTEXT_LEN: usize = 1 + TAG_LEN;
/// Largest record on the wire, including the length field and an explicit counter.
pub const MAX_RECORD_LEN: usize = HEADER_LEN + MAX_CIPHERTEXT_LEN;
/// Smallest record: a length field without counter, a one-byte frame and the tag.
pub const MIN_RECORD_LEN: usize = LENGTH_LEN + MIN_CIPHERTEXT_LEN;
/// Largest frame (plaintext) inside one record: 32,751 bytes.
pub const MAX_FRAME_LEN: usize = MAX_CIPHERTEXT_LEN - TAG_LEN;
/// Largest stream id varint: ids up to 2^32 - 1 need the 8-byte form (RFC 9000 §16).
pub const MAX_VARINT_LEN: usize = 8;
/// Largest encoded DATA frame overhead: the type byte and the longest stream id.
pub const DATA_OVERHEAD: usize = 1 + MAX_VARINT_LEN;
/// Largest payload in one DATA frame on any stream (streams below 64 fit 7 bytes more,
/// see [`data_capacity`]).
pub const MAX_DATA_PER_FRAME: usize = MAX_FRAME_LEN - DATA_OVERHEAD;
/// Bytes of one entry in an ACK or RESUME frame.
pub const STREAM_STATE_LEN: usize = 4 + 8 + 1;
/// Longest reason text in a CLOSE frame.
pub const MAX_REASON_LEN: usize = 256;

/// Largest value a QUIC variable-length integer holds (2^62 - 1).
pub const MAX_VARINT: u64 = (1 << 62) - 1;

/// The encoded length of `v` as a minimal QUIC variable-length integer (RFC 9000 §16), or
/// `None` above [`MAX_VARINT`].
#[must_use]
pub fn varint_len(v: u64) -> Option<usize> {
    match v {
        0..=0x3f => Some(1),
        0x40..=0x3fff => Some(2),
        0x4000..=0x3fff_ffff => Some(4),
        0x4000_0000..=MAX_VARINT => Some(8),
        _ => None,
    }
}

/// Appends `v` as a minimal QUIC variable-length integer (RFC 9000 §16).
///
/// # Errors
/// [`SessionError::Limit`] above [`MAX_VARINT`].
pub fn encode_varint(v: u64, out: &mut Vec<u8>) -> Result<()> {
    match varint_len(v) {
        Some(1) => out.push(v as u8),
        Some(2) => out.extend_from_slice(&((v as u16) | 0x4000).to_be_bytes()),
        Some(4) => out.extend_from_slice(&((v as u32) | 0x8000_0000).to_be_bytes()),
        Some(_) => out.extend_from_slice(&(v | 0xc000_0000_0000_0000).to_be_bytes()),
        None => return Err(SessionError::Limit("varint")),
    }
    Ok(())
}

/// Decodes one QUIC variable-length integer from the front of `buf`, returning it and the
/// bytes after it.
///
/// # Errors
/// [`SessionError::Malformed`] if `buf` is too short or the encoding is not minimal (spec
/// §5.4 requires the shortest form, so that every value has exactly one encoding).
pub fn decode_varint(buf: &[u8]) -> Result<(u64, &[u8])> {
    let mut r = Reader(buf);
    let v = r.varint()?;
    Ok((v, r.0))
}

/// The most stream bytes one DATA frame on `stream` carries.
#[must_use]
pub fn data_capacity(stream: u32) -> usize {
    MAX_FRAME_LEN - 1 - varint_len(u64::from(stream)).unwrap_or(MAX_VARINT_LEN)
}

/// Frame type codes (spec §5.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameType {
    /// The next bytes of a stream.
    Data = 0x01,
    /// End of a stream's sending direction, with its final size.
    Fin = 0x02,
    /// Cumulative per-stream received offsets.
    Ack = 0x03,
    /// Keepalive request.
    Ping = 0x04,
    /// Keepalive answer.
    Pong = 0x05,
    /// First frame on a new path: per-stream received offsets (spec §7).
    Resume = 0x06,
    /// End of the session.
    Close = 0x07,
}

/// A receiver's state of one stream, as carried in ACK and RESUME frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamState {
    /// Stream id.
    pub stream: u32,
    /// Bytes of the stream received and delivered, in order, from offset 0.
    pub offset: u64,
    /// Whether the FIN at `offset` was received.
    pub fin: bool,
}

/// One decoded frame; payloads borrow from the decrypted record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame<'a> {
    /// `DATA`: the next bytes of `stream` at the receiver (no offset on the wire: spec §6.2).
    Data {
        /// Stream id.
        stream: u32,
        /// The bytes (may be empty).
        data: &'a [u8],
    },
    /// `FIN`: the sender will write no byte at or beyond `final_size` on `stream`.
    Fin {
        /// Stream id.
        stream: u32,
        /// Total bytes the sender wrote on the stream.
        final_size: u64,
    },
    /// `ACK`: cumulative received offsets.
    Ack(Vec<StreamState>),
    /// `PING` with an opaque token.
    Ping(u64),
    /// `PONG` echoing a ping's token.
    Pong(u64),
    /// `RESUME`: the receiver's state of every stream it knows.
    Resume(Vec<StreamState>),
    /// `CLOSE` the session.
    Close {
        /// Application close code (0 = normal).
        code: u16,
        /// Human-readable reason, at most [`MAX_REASON_LEN`] bytes.
        reason: &'a str,
    },
}

impl Frame<'_> {
    /// The encoded length of this frame.
    #[must_use]
    pub fn encoded_len(&self) -> usize {
        match self {
            Frame::Data { stream, data } => {
                1 + varint_len(u64::from(*stream)).unwrap_or(MAX_VARINT_LEN) + data.len()
            }
            Frame::Fin { .. } => 1 + 4 + 8,
            Frame::Ack(v) | Frame::Resume(v) => 1 + 2 + v.len() * STREAM_STATE_LEN,
            Frame::Ping(_) | Frame::Pong(_) => 1 + 8,
            Frame::Close { reason, .. } => 1 + 2 + reason.len(),
        }
    }

    /// Appends the encoding of this frame to `out`.
    ///
    /// # Errors
    /// [`SessionError::Limit`] if the frame would not fit one record (too much data, too many
    /// stream entries, too long a reason).
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        if self.encoded_len() > MAX_FRAME_LEN {
            return Err(SessionError::Limit("frame larger than a record"));
        }
        match self {
            Frame::Data { stream, data } => {
                out.push(FrameType::Data as u8);
                encode_varint(u64::from(*stream), out)?;
                out.extend_from_slice(data);
            }
            Frame::Fin { stream, final_size } => {
                out.push(FrameType::Fin as u8);
                out.extend_from_slice(&stream.to_be_bytes());
                out.extend_from_slice(&final_size.to_be_bytes());
            }
            Frame::Ack(v) | Frame::Resume(v) => {
                let ty = if matches!(self, Frame::Ack(_)) {
                    FrameType::Ack
                } else {
                    FrameType::Resume
                };
                out.push(ty as u8);
                let n =
                    u16::try_from(v.len()).map_err(|_| SessionError::Limit("stream entries"))?;
                out.extend_from_slice(&n.to_be_bytes());
                for s in v {
                    out.extend_from_slice(&s.stream.to_be_bytes());
                    out.extend_from_slice(&s.offset.to_be_bytes());
                    out.push(u8::from(s.fin));
                }
            }
            Frame::Ping(t) | Frame::Pong(t) => {
                let ty = if matches!(self, Frame::Ping(_)) {
                    FrameType::Ping
                } else {
                    FrameType::Pong
                };
                out.push(ty as u8);
                out.extend_from_slice(&t.to_be_bytes());
            }
            Frame::Close { code, reason } => {
                if reason.len() > MAX_REASON_LEN {
                    return Err(SessionError::Limit("close reason"));
                }
                out.push(FrameType::Close as u8);
                out.extend_from_slice(&code.to_be_bytes());
                out.extend_from_slice(reason.as_bytes());
            }
        }
        Ok(())
    }

    /// Decodes one frame occupying all of `buf`.
    ///
    /// # Errors
    /// [`SessionError::Malformed`] for an unknown type, a short or overlong frame, a bad flag
    /// byte, a non-minimal varint or a stream id of 2^32 or more, or a reason that is not
    /// UTF-8.
    pub fn decode(buf: &[u8]) -> Result<Frame<'_>> {
        let (&ty, rest) = buf
            .split_first()
            .ok_or(SessionError::Malformed("empty frame"))?;
        let mut r = Reader(rest);
        let frame = match ty {
            0x01 => {
                let stream = u32::try_from(r.varint()?)
                    .map_err(|_| SessionError::Malformed("stream id of 2^32 or more"))?;
                Frame::Data {
                    stream,
                    data: r.rest(),
                }
            }
            0x02 => Frame::Fin {
                stream: r.u32()?,
                final_size: r.u64()?,
            },
            0x03 | 0x06 => {
                let n = usize::from(r.u16()?);
                if r.0.len() != n * STREAM_STATE_LEN {
                    return Err(SessionError::Malformed("stream entries length"));
                }
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    let stream = r.u32()?;
                    let offset = r.u64()?;
                    let fin = match r.u8()? {
                        0 => false,
                        1 => true,
                        _ => return Err(SessionError::Malformed("stream entry flags")),
                    };
                    v.push(StreamState {
                        stream,
                        offset,
                        fin,
                    });
                }
                if ty == 0x03 {
                    Frame::Ack(v)
                } else {
                    Frame::Resume(v)
                }
            }
            0x04 => Frame::Ping(r.u64()?),
            0x05 => Frame::Pong(r.u64()?),
            0x07 => {
                let code = r.u16()?;
                let reason = r.rest();
                if reason.len() > MAX_REASON_LEN {
                    return Err(SessionError::Malformed("close reason too long"));
                }
                let reason = std::str::from_utf8(reason)
                    .map_err(|_| SessionError::Malformed("close reason"))?;
                Frame::Close { code, reason }
            }
            _ => return Err(SessionError::Malformed("unknown frame type")),
        };
        if !r.0.is_empty() {
            return Err(SessionError::Malformed("trailing bytes in frame"));
        }
        Ok(frame)
    }
}

/// A bounds-checked big-endian reader.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N]> {
        let (head, tail) = self
            .0
            .split_first_chunk::<N>()
            .ok_or(SessionError::Malformed("truncated frame"))?;
        self.0 = tail;
        Ok(*head)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_be_bytes(self.take()?))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(self.take()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_be_bytes(self.take()?))
    }
    /// A QUIC variable-length integer (RFC 9000 §16), minimal encoding required.
    fn varint(&mut self) -> Result<u64> {
        let first = *self
            .0
            .first()
            .ok_or(SessionError::Malformed("truncated frame"))?;
        let v = match first >> 6 {
            0 => u64::from(self.u8()?),
            1 => u64::from(self.u16()? & 0x3fff),
            2 => u64::from(self.u32()? & 0x3fff_ffff),
            _ => self.u64()? & MAX_VARINT,
        };
        // The 2-bit prefix must be the shortest that holds the value.
        if varint_len(v) != Some(1usize << (first >> 6)) {
            return Err(SessionError::Malformed("non-minimal varint"));
        }
        Ok(v)
    }
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
}

/// The cleartext header of a record (spec §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    /// Bytes of ciphertext (frame and tag) after the header: 17 to 32,767.
    pub ciphertext_len: usize,
    /// The explicit counter (E bit set), or `None`: the counter is the receiver's last + 1.
    pub counter: Option<u64>,
}

impl RecordHeader {
    /// Bytes of this header on the wire: 2, or 10 with an explicit counter.
    #[must_use]
    pub fn encoded_len(&self) -> usize {
        if self.counter.is_some() {
            HEADER_LEN
        } else {
            LENGTH_LEN
        }
    }

    /// The header bytes (the first [`RecordHeader::encoded_len`] of the array); they are
    /// also the record's associated data (spec §5.2).
    ///
    /// # Errors
    /// [`SessionError::Limit`] for a ciphertext length outside 17..=32,767.
    pub fn to_bytes(&self) -> Result<([u8; HEADER_LEN], usize)> {
        if !(MIN_CIPHERTEXT_LEN..=MAX_CIPHERTEXT_LEN).contains(&self.ciphertext_len) {
            return Err(SessionError::Limit("record"));
        }
        let mut length =
            u16::try_from(self.ciphertext_len).map_err(|_| SessionError::Limit("record"))?;
        let mut out = [0u8; HEADER_LEN];
        if let Some(c) = self.counter {
            length |= EXPLICIT_COUNTER;
            out[LENGTH_LEN..].copy_from_slice(&c.to_be_bytes());
        }
        out[..LENGTH_LEN].copy_from_slice(&length.to_be_bytes());
        Ok((out, self.encoded_len()))
    }

    /// Appends the header bytes (those of [`RecordHeader::to_bytes`]) to `out`.
    ///
    /// # Errors
    /// [`SessionError::Limit`] for a ciphertext length outside 17..=32,767; nothing is
    /// appended then.
    #[inline]
    pub fn write(&self, out: &mut Vec<u8>) -> Result<()> {
        if !(MIN_CIPHERTEXT_LEN..=MAX_CIPHERTEXT_LEN).contains(&self.ciphertext_len) {
            return Err(SessionError::Limit("record"));
        }
        let length =
            u16::try_from(self.ciphertext_len).map_err(|_| SessionError::Limit("record"))?;
        match self.counter {
            Some(c) => {
                out.extend_from_slice(&(length | EXPLICIT_COUNTER).to_be_bytes());
                out.extend_from_slice(&c.to_be_bytes());
            }
            None => out.extend_from_slice(&length.to_be_bytes()),
        }
        Ok(())
    }

    /// Parses the header at the front of `buf`, which may hold more than one record.
    /// Returns `Ok(None)` while the header itself is incomplete.
    ///
    /// # Errors
    /// [`SessionError::Malformed`] if the ciphertext length is below 17: the byte stream
    /// cannot be resynchronised.
    pub fn peek(buf: &[u8]) -> Result<Option<Self>> {
        let Some(len) = buf.first_chunk::<2>() else {
            return Ok(None);
        };
        let length = u16::from_be_bytes(*len);
        let ciphertext_len = usize::from(length & !EXPLICIT_COUNTER);
        if ciphertext_len < MIN_CIPHERTEXT_LEN {
            return Err(SessionError::Malformed("record length field"));
        }
        let counter = if length & EXPLICIT_COUNTER != 0 {
            let Some(c) = buf.get(LENGTH_LEN..).and_then(<[u8]>::first_chunk::<8>) else {
                return Ok(None);
            };
            Some(u64::from_be_bytes(*c))
        } else {
            None
        };
        Ok(Some(Self {
            ciphertext_len,
            counter,
        }))
    }

    /// Parses and checks the header of a complete record (`record` includes the length
    /// field and nothing after the record).
    ///
    /// # Errors
    /// [`SessionError::Malformed`] if the record is incomplete, or its length field does not
    /// match its size.
    pub fn parse(record: &[u8]) -> Result<Self> {
        let header =
            Self::peek(record)?.ok_or(SessionError::Malformed("record shorter than header"))?;
        if header.encoded_len() + header.ciphertext_len != record.len() {
            return Err(SessionError::Malformed("record length field"));
        }
        Ok(header)
    }
}

/// Splits a byte stream (TCP, a QUIC stream, concatenated relay payloads) into records.
///
/// Feed bytes with [`RecordDecoder::push`], or read them straight into the decoder's buffer
/// with [`RecordDecoder::spare`] and [`RecordDecoder::filled`] (no copy); take complete
/// records with [`RecordDecoder::next_record`], which returns `Ok(None)` while a record is
/// incomplete. Memory is bounded by one record plus the largest chunk pushed or read.
#[derive(Debug, Default)]
pub struct RecordDecoder {
    /// Initialised storage; bytes `pos..end` are buffered, `end..` is free space.
    buf: Vec<u8>,
    pos: usize,
    end: usize,
}

impl RecordDecoder {
    /// A decoder with an empty buffer.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves the buffered bytes to the front when the consumed ones dominate, so the buffer
    /// never holds consumed bytes for long.
    fn compact(&mut self) {
        if self.pos == self.end {
            self.pos = 0;
            self.end = 0;
        } else if self.pos > 0 && (self.pos >= self.end / 2 || self.end > MAX_RECORD_LEN) {
            self.buf.copy_within(self.pos..self.end, 0);
            self.end -= self.pos;
            self.pos = 0;
        }
    }

    /// Appends bytes read from the path.
    pub fn push(&mut self, bytes: &[u8]) {
        self.spare(bytes.len())
            .get_mut(..bytes.len())
            .unwrap_or_default()
            .copy_from_slice(bytes);
        self.filled(bytes.len());
    }

    /// Free space at the end of the buffer, at least `min` bytes, to read path bytes into
    /// directly; then call [`RecordDecoder::filled`] with the number of bytes read.
    pub fn spare(&mut self, min: usize) -> &mut [u8] {
        self.compact();
        let want = self.end.saturating_add(min);
        if self.buf.len() < want {
            self.buf.resize(want, 0);
        }
        self.buf.get_mut(self.end..).unwrap_or_default()
    }

    /// The first `n` bytes of [`RecordDecoder::spare`] now hold bytes read from the path
    /// (clamped to the free space).
    pub fn filled(&mut self, n: usize) {
        self.end = self.end.saturating_add(n).min(self.buf.len());
    }

    /// Bytes buffered but not yet returned as records.
    #[must_use]
    pub fn buffered(&self) -> usize {
        self.end - self.pos
    }

    /// Consumes `prefix` if the buffered bytes start with it (at a record boundary):
    /// `Some(true)` consumed, `Some(false)` they do not start with it, `None` the buffered
    /// bytes are a strict prefix of it (read more before deciding). The driver uses it to
    /// find a path hello on a byte stream that already carries records (spec §7.3: a relay
    /// stream on which the peer opened a new path).
    pub fn take_prefix(&mut self, prefix: &[u8]) -> Option<bool> {
        let avail = self.buf.get(self.pos..self.end).unwrap_or_default();
        if avail.len() < prefix.len() {
            return if prefix.starts_with(avail) && !avail.is_empty() {
                None
            } else {
                Some(false)
            };
        }
        if !avail.starts_with(prefix) {
            return Some(false);
        }
        self.pos += prefix.len();
        if self.pos == self.end {
            self.pos = 0;
            self.end = 0;
        }
        Some(true)
    }

    /// The next complete record (length field included), or `None` if more bytes are needed.
    ///
    /// # Errors
    /// [`SessionError::Malformed`] if the ciphertext length is below the minimum (17); the
    /// path is then unusable (the stream cannot be resynchronised) and must be dropped.
    pub fn next_record(&mut self) -> Result<Option<Vec<u8>>> {
        Ok(self.next_record_ref()?.map(<[u8]>::to_vec))
    }

    /// As [`RecordDecoder::next_record`], borrowing the record from the decoder's buffer
    /// instead of allocating it (valid until the decoder is used again).
    ///
    /// # Errors
    /// As [`RecordDecoder::next_record`].
    pub fn next_record_ref(&mut self) -> Result<Option<&[u8]>> {
        let avail = self.buf.get(self.pos..self.end).unwrap_or_default();
        // The E bit (spec §5.1) decides whether 8 counter bytes sit between length and
        // ciphertext.
        let Some(header) = RecordHeader::peek(avail)? else {
            return Ok(None);
        };
        let total = header.encoded_len() + header.ciphertext_len;
        if avail.len() < total {
            return Ok(None);
        }
        let start = self.pos;
        self.pos += total;
        // The consumed bytes stay until the next `push` or `spare` compacts the buffer.
        Ok(self.buf.get(start..self.pos))
    }
}
