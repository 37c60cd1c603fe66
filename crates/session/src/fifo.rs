//! A first-in first-out queue on a `Vec` (spec/session.md §11 "Performance note").
//!
//! `VecDeque::push_back` is not inlined: the caller builds the element on its stack in
//! pieces and the out-of-line push reads it back whole, a store-forwarding stall of ≈ 4 ns
//! per record on the session's hot path (perf annotate). `Vec::push` is inlined and writes
//! the element in place. A queue that is drained completely — the normal case: a driver
//! polls until `None` — is reset to the front, so it never grows past its largest backlog.

/// A FIFO queue; see the module docs.
#[derive(Debug)]
pub(crate) struct Fifo<T> {
    slots: Vec<Option<T>>,
    /// Index of the front element; slots before it are taken (`None`).
    head: usize,
}

impl<T> Default for Fifo<T> {
    fn default() -> Self {
        Self {
            slots: Vec::new(),
            head: 0,
        }
    }
}

/// Taken slots at the front are dropped once there are this many and they are at least
/// half of the queue (a queue that is never drained completely stays bounded).
const COMPACT_AFTER: usize = 256;

impl<T> Fifo<T> {
    /// Whether no element is queued.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.head >= self.slots.len()
    }

    /// Elements queued.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.slots.len() - self.head
    }

    /// Appends `v` at the back.
    #[inline(always)]
    pub(crate) fn push_back(&mut self, v: T) {
        if self.head >= COMPACT_AFTER {
            self.compact();
        }
        self.slots.push(Some(v));
    }

    /// Drops the taken slots at the front once they are at least half of the queue.
    #[cold]
    #[inline(never)]
    fn compact(&mut self) {
        if self.head * 2 >= self.slots.len() {
            self.slots.drain(..self.head);
            self.head = 0;
        }
    }

    /// Takes the front element.
    #[inline]
    pub(crate) fn pop_front(&mut self) -> Option<T> {
        let v = self.slots.get_mut(self.head)?.take();
        self.head += 1;
        if self.head == self.slots.len() {
            self.clear();
        }
        v
    }

    /// The front element.
    #[inline]
    pub(crate) fn front(&self) -> Option<&T> {
        self.slots.get(self.head)?.as_ref()
    }

    /// The back element.
    #[inline]
    pub(crate) fn back(&self) -> Option<&T> {
        if self.is_empty() {
            return None;
        }
        self.slots.last()?.as_ref()
    }

    /// The elements, front to back.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        self.slots
            .get(self.head..)
            .unwrap_or_default()
            .iter()
            .flatten()
    }

    /// Keeps only the first `n` elements.
    pub(crate) fn truncate(&mut self, n: usize) {
        self.slots.truncate(self.head.saturating_add(n));
        if self.is_empty() {
            self.clear();
        }
    }

    /// Drops every element.
    #[inline]
    pub(crate) fn clear(&mut self) {
        self.slots.clear();
        self.head = 0;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::{Fifo, COMPACT_AFTER};

    #[test]
    fn order_is_first_in_first_out_and_a_drained_queue_restarts_at_the_front() {
        let mut q = Fifo::default();
        for i in 0..5 {
            q.push_back(i);
        }
        assert_eq!((q.front(), q.back(), q.len()), (Some(&0), Some(&4), 5));
        assert_eq!(q.pop_front(), Some(0));
        assert_eq!(q.iter().copied().collect::<Vec<_>>(), [1, 2, 3, 4]);
        q.truncate(2);
        assert_eq!(q.iter().copied().collect::<Vec<_>>(), [1, 2]);
        assert_eq!(
            (q.pop_front(), q.pop_front(), q.pop_front()),
            (Some(1), Some(2), None)
        );
        assert!(q.is_empty() && q.back().is_none());
        assert_eq!(q.slots.len(), 0, "drained: back to the front");
    }

    #[test]
    fn a_queue_never_drained_completely_stays_bounded() {
        let mut q = Fifo::default();
        q.push_back(0u32);
        for i in 1..100_000u32 {
            q.push_back(i);
            assert_eq!(q.pop_front(), Some(i - 1));
        }
        assert_eq!(q.len(), 1);
        assert!(q.slots.len() <= 2 * COMPACT_AFTER + 1, "{}", q.slots.len());
    }
}
