//! Sealed records waiting for the path, as one contiguous byte buffer (spec/session.md §5.1).
//!
//! Records are sealed straight into it (no allocation per record), and a driver can write
//! many records with one system call ([`Outbox::bytes`], [`Outbox::consume`]) instead of one
//! write per record. Record boundaries are kept, because a driver that restarts a path on
//! the same byte stream must finish the record it started writing and drop the rest
//! ([`Outbox::keep_started_record`]).

use crate::fifo::Fifo;

/// Records queued for a path, in order. See the module docs.
#[derive(Debug, Default)]
pub struct Outbox {
    buf: Vec<u8>,
    /// Bytes of `buf` already taken (written or popped).
    pos: usize,
    /// Start offset in `buf` of the first record not completely taken.
    first_start: usize,
    /// End offset in `buf` of every record not completely taken, in order.
    ends: Fifo<usize>,
}

impl Outbox {
    /// An empty outbox.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether no byte is waiting.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    /// Bytes waiting, the rest of a partly written record included.
    #[must_use]
    pub fn len(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Records not completely taken yet.
    #[must_use]
    pub fn records(&self) -> usize {
        self.ends.len()
    }

    /// Every waiting byte: records back to back, the first possibly partly written.
    #[must_use]
    pub fn bytes(&self) -> &[u8] {
        self.buf.get(self.pos..).unwrap_or_default()
    }

    /// Marks the first `n` waiting bytes as written (`n` is clamped to [`Outbox::len`]).
    pub fn consume(&mut self, n: usize) {
        self.pos = self.pos.saturating_add(n).min(self.buf.len());
        while let Some(&end) = self.ends.front() {
            if end > self.pos {
                break;
            }
            self.ends.pop_front();
            self.first_start = end;
        }
        if self.pos == self.buf.len() {
            self.clear();
        }
    }

    /// Drops every waiting byte.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.pos = 0;
        self.first_start = 0;
        self.ends.clear();
    }

    /// Keeps only the rest of a record whose first bytes were already written (cutting it
    /// would desynchronise the peer's decoder); drops every other record.
    pub fn keep_started_record(&mut self) {
        match self.ends.front().copied() {
            Some(end) if self.first_start < self.pos => {
                self.buf.truncate(end);
                self.ends.truncate(1);
            }
            _ => self.clear(),
        }
    }

    /// Takes the first waiting record out whole (for callers that handle records one by
    /// one: tests, fuzzers, in-memory benchmarks), without copying. `None` if nothing
    /// waits or the first record was partly consumed.
    pub fn pop_record(&mut self) -> Option<&[u8]> {
        if self.first_start != self.pos {
            return None;
        }
        let end = self.ends.pop_front()?;
        let start = self.pos;
        self.pos = end;
        self.first_start = end;
        // Bytes stay in `buf` until the next `begin_record` finds everything taken.
        self.buf.get(start..end)
    }

    /// Moves every waiting record of `self` to the end of `other`, without copying when
    /// `other` is empty.
    pub fn move_into(&mut self, other: &mut Outbox) {
        if self.is_empty() {
            self.clear();
            return;
        }
        if other.is_empty() {
            other.clear();
            std::mem::swap(self, other);
            return;
        }
        // Offsets of `self` shift to where its waiting bytes land in `other`.
        let base = other.buf.len();
        other.buf.extend_from_slice(self.bytes());
        for e in self.ends.iter() {
            other.ends.push_back(e - self.pos + base);
        }
        self.clear();
    }

    /// The buffer to append the next record to (its header first, then the sealed
    /// ciphertext); finish with [`Outbox::end_record`].
    pub(crate) fn begin_record(&mut self) -> &mut Vec<u8> {
        if self.is_empty() {
            self.clear();
        }
        &mut self.buf
    }

    /// The record appended since [`Outbox::begin_record`] is complete.
    pub(crate) fn end_record(&mut self) {
        self.ends.push_back(self.buf.len());
    }

    /// Drops a record left incomplete by a failed seal (everything after the last end).
    pub(crate) fn abandon_record(&mut self) {
        let end = self.ends.back().copied().unwrap_or(self.pos);
        self.buf.truncate(end.max(self.pos));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::Outbox;

    fn push(o: &mut Outbox, rec: &[u8]) {
        o.begin_record().extend_from_slice(rec);
        o.end_record();
    }

    #[test]
    fn records_come_out_whole_in_order_and_partly_written_ones_are_kept() {
        let mut o = Outbox::new();
        push(&mut o, b"aaa");
        push(&mut o, b"bb");
        push(&mut o, b"cccc");
        assert_eq!(o.bytes(), b"aaabbcccc");
        assert_eq!(o.pop_record().unwrap(), b"aaa");
        o.consume(1);
        assert_eq!(o.records(), 2);
        assert_eq!(
            o.pop_record(),
            None,
            "a partly written record is not popped"
        );
        o.keep_started_record();
        assert_eq!(o.bytes(), b"b", "only the rest of the started record");
        o.consume(1);
        assert!(o.is_empty());
        push(&mut o, b"dd");
        o.keep_started_record();
        assert!(o.is_empty(), "nothing started: everything dropped");
    }

    #[test]
    fn move_into_appends_with_boundaries() {
        let (mut a, mut b) = (Outbox::new(), Outbox::new());
        push(&mut a, b"xy");
        a.move_into(&mut b);
        assert!(a.is_empty());
        push(&mut a, b"zzz");
        push(&mut a, b"w");
        assert_eq!(a.pop_record().unwrap(), b"zzz");
        a.move_into(&mut b);
        assert_eq!(b.bytes(), b"xyw");
        assert_eq!(b.pop_record().unwrap(), b"xy");
        assert_eq!(b.pop_record().unwrap(), b"w");
        assert_eq!(b.pop_record(), None);
    }
}
