//! Wire codec: records on a byte stream and the frames inside them (spec/session.md §5).
//!
//! ```text
//! record    = length:u16be  counter:u64be  ciphertext          (length = 8 + |ciphertext|)
//! ciphertext = AES-256-GCM(k_epoch(counter), nonce = counter, ad = length||counter, frame)
//! frame      = type:u8  fields...                                (types in `FrameType`)
//! ```
//! The record header is the only cleartext; stream ids, offsets and frame types are
//! encrypted. Records fit one Noise transport message (at most 65,535 bytes after the
//! length field), so the same records travel over TCP, a QUIC stream or a relay frame.

use crate::cipher::TAG_LEN;
use crate::error::{Result, SessionError};

/// Bytes of the cleartext record header: length (2) + counter (8).
pub const HEADER_LEN: usize = 10;
/// Largest value of the length field: a Noise transport message is at most 65,535 bytes.
pub const MAX_RECORD_BODY: usize = 65_535;
/// Largest record on the wire, including the length field.
pub const MAX_RECORD_LEN: usize = 2 + MAX_RECORD_BODY;
/// Largest frame (plaintext) inside one record.
pub const MAX_FRAME_LEN: usize = MAX_RECORD_BODY - 8 - TAG_LEN;
/// Smallest record: header, a one-byte frame and the tag.
pub const MIN_RECORD_LEN: usize = HEADER_LEN + 1 + TAG_LEN;
/// Bytes of a DATA frame before its payload: type, stream id, offset.
pub const DATA_OVERHEAD: usize = 1 + 4 + 8;
/// Largest payload in one DATA frame.
pub const MAX_DATA_PER_FRAME: usize = MAX_FRAME_LEN - DATA_OVERHEAD;
/// Bytes of one entry in an ACK or RESUME frame.
pub const STREAM_STATE_LEN: usize = 4 + 8 + 1;
/// Longest reason text in a CLOSE frame.
pub const MAX_REASON_LEN: usize = 256;

/// Frame type codes (spec §5.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameType {
    /// Stream bytes at an offset.
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
    /// `DATA`: stream bytes starting at `offset`.
    Data {
        /// Stream id.
        stream: u32,
        /// Offset of the first byte.
        offset: u64,
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
            Frame::Data { data, .. } => DATA_OVERHEAD + data.len(),
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
            Frame::Data {
                stream,
                offset,
                data,
            } => {
                out.push(FrameType::Data as u8);
                out.extend_from_slice(&stream.to_be_bytes());
                out.extend_from_slice(&offset.to_be_bytes());
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
    /// byte or a reason that is not UTF-8.
    pub fn decode(buf: &[u8]) -> Result<Frame<'_>> {
        let (&ty, rest) = buf
            .split_first()
            .ok_or(SessionError::Malformed("empty frame"))?;
        let mut r = Reader(rest);
        let frame = match ty {
            0x01 => {
                let stream = r.u32()?;
                let offset = r.u64()?;
                let data = r.rest();
                offset
                    .checked_add(data.len() as u64)
                    .ok_or(SessionError::Malformed("offset overflow"))?;
                Frame::Data {
                    stream,
                    offset,
                    data,
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
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
}

/// The cleartext header of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    /// Value of the length field: bytes after it (8 + ciphertext).
    pub length: u16,
    /// The frame counter, also the AEAD nonce.
    pub counter: u64,
}

impl RecordHeader {
    /// Parses and checks the header of a complete record (`record` includes the length
    /// field and nothing after the record).
    ///
    /// # Errors
    /// [`SessionError::Malformed`] if the record is shorter than [`MIN_RECORD_LEN`], longer
    /// than [`MAX_RECORD_LEN`], or its length field does not match its size.
    pub fn parse(record: &[u8]) -> Result<Self> {
        if record.len() < MIN_RECORD_LEN || record.len() > MAX_RECORD_LEN {
            return Err(SessionError::Malformed("record size"));
        }
        let mut r = Reader(record);
        let length = r.u16()?;
        let counter = r.u64()?;
        if usize::from(length) + 2 != record.len() {
            return Err(SessionError::Malformed("record length field"));
        }
        Ok(Self { length, counter })
    }
}

/// Splits a byte stream (TCP, a QUIC stream, concatenated relay payloads) into records.
///
/// Feed bytes with [`RecordDecoder::push`]; take complete records with
/// [`RecordDecoder::next_record`], which returns `Ok(None)` while a record is incomplete.
/// Memory is bounded by one record plus the largest chunk pushed.
#[derive(Debug, Default)]
pub struct RecordDecoder {
    buf: Vec<u8>,
    pos: usize,
}

impl RecordDecoder {
    /// A decoder with an empty buffer.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes read from the path.
    pub fn push(&mut self, bytes: &[u8]) {
        // Compact before growing so the buffer never holds consumed bytes for long.
        if self.pos > 0 && (self.pos >= self.buf.len() / 2 || self.buf.len() > MAX_RECORD_LEN) {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes buffered but not yet returned as records.
    #[must_use]
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The next complete record (length field included), or `None` if more bytes are needed.
    ///
    /// # Errors
    /// [`SessionError::Malformed`] if the length field is below the minimum record size; the
    /// path is then unusable (the stream cannot be resynchronised) and must be dropped.
    pub fn next_record(&mut self) -> Result<Option<Vec<u8>>> {
        let avail = self.buf.get(self.pos..).unwrap_or_default();
        let Some(len) = avail.first_chunk::<2>() else {
            return Ok(None);
        };
        let total = usize::from(u16::from_be_bytes(*len)) + 2;
        if total < MIN_RECORD_LEN {
            return Err(SessionError::Malformed("record length field"));
        }
        let Some(record) = avail.get(..total) else {
            return Ok(None);
        };
        let record = record.to_vec();
        self.pos += total;
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        Ok(Some(record))
    }
}
