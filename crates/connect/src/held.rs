//! Negotiation messages held until someone asks for them (spec/session.md §2): proposals
//! waiting for `accept`, and `candidates` that overtook their proposal. Anyone who knows our
//! DID can send them, so they are kept **per authenticated sender**, each sender within a
//! small bound of its own, all together within a total bound (spec/security.md §11,
//! principle 3: the stranger pays, not the honest party).
//!
//! ```text
//!  push(sender, m) ─▶ sender at its bound? ─yes─▶ its own oldest goes
//!                     │ no
//!                     ▼
//!                     total bound reached? ─yes─▶ the largest sender's oldest goes; among
//!                     │ no                        equally large ones the latest comer's
//!                     ▼                           (so a full store of one-message
//!                     kept                        strangers refuses the next stranger)
//! ```
//! A sender can therefore evict only its own messages, except when the store is full: then
//! the one holding the most loses, and an earlier sender holding no more than the others
//! (a roster member whose proposal waits for `accept`) keeps its messages.

use std::collections::{HashMap, VecDeque};

/// Messages held per sender, bounded per sender and in total. No I/O.
#[derive(Debug)]
pub(crate) struct HeldBySender<T> {
    per_sender: usize,
    total: usize,
    next: u64,
    len: usize,
    /// Each sender's messages, oldest first, with their arrival number.
    by_sender: HashMap<String, VecDeque<(u64, T)>>,
}

/// What [`HeldBySender::push`] did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// Kept; nothing dropped.
    Kept,
    /// Kept, and the oldest message of this sender (the pusher itself, or the largest
    /// sender when the store was full) was dropped to make room.
    KeptDropping(String),
    /// Not kept: the store is full and the pusher is the latest comer among the largest.
    Refused,
}

impl<T> HeldBySender<T> {
    pub(crate) fn new(per_sender: usize, total: usize) -> Self {
        Self {
            per_sender: per_sender.max(1),
            total: total.max(1),
            next: 0,
            len: 0,
            by_sender: HashMap::new(),
        }
    }

    /// Messages held now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Hold `item` from `sender` (an authenticated DID).
    pub(crate) fn push(&mut self, sender: &str, item: T) -> Pushed {
        self.next += 1;
        let seq = self.next;
        let bucket = self.by_sender.entry(sender.to_owned()).or_default();
        bucket.push_back((seq, item));
        self.len += 1;
        if bucket.len() > self.per_sender {
            bucket.pop_front();
            self.len -= 1;
            return Pushed::KeptDropping(sender.to_owned());
        }
        if self.len <= self.total {
            return Pushed::Kept;
        }
        // The largest sender, and among equals the one whose oldest message is the newest
        // (the latest comer): an early, small sender is never the victim.
        let victim = self
            .by_sender
            .iter()
            .filter_map(|(s, b)| b.front().map(|(first, _)| (b.len(), *first, s)))
            .max()
            .map(|(_, _, s)| s.clone());
        let Some(victim) = victim else {
            return Pushed::Kept;
        };
        if let Some(b) = self.by_sender.get_mut(&victim) {
            b.pop_front();
            self.len -= 1;
            if b.is_empty() {
                self.by_sender.remove(&victim);
            }
        }
        if victim == sender && !self.holds_seq(sender, seq) {
            Pushed::Refused
        } else {
            Pushed::KeptDropping(victim)
        }
    }

    fn holds_seq(&self, sender: &str, seq: u64) -> bool {
        self.by_sender
            .get(sender)
            .is_some_and(|b| b.iter().any(|(s, _)| *s == seq))
    }

    /// Remove and return `sender`'s oldest message that matches.
    pub(crate) fn take_first(&mut self, sender: &str, mut f: impl FnMut(&T) -> bool) -> Option<T> {
        let bucket = self.by_sender.get_mut(sender)?;
        let i = bucket.iter().position(|(_, m)| f(m))?;
        let taken = bucket.remove(i).map(|(_, m)| m);
        if taken.is_some() {
            self.len -= 1;
        }
        if bucket.is_empty() {
            self.by_sender.remove(sender);
        }
        taken
    }

    /// Keep only `sender`'s messages that match.
    pub(crate) fn retain(&mut self, sender: &str, mut f: impl FnMut(&T) -> bool) {
        if let Some(bucket) = self.by_sender.get_mut(sender) {
            let before = bucket.len();
            bucket.retain(|(_, m)| f(m));
            self.len -= before - bucket.len();
            if bucket.is_empty() {
                self.by_sender.remove(sender);
            }
        }
    }

    /// Remove and return every message (of any sender) that matches, oldest first.
    pub(crate) fn take_all(&mut self, mut f: impl FnMut(&T) -> bool) -> Vec<T> {
        let mut out = Vec::new();
        for bucket in self.by_sender.values_mut() {
            let mut keep = VecDeque::with_capacity(bucket.len());
            for (seq, m) in bucket.drain(..) {
                if f(&m) {
                    out.push((seq, m));
                } else {
                    keep.push_back((seq, m));
                }
            }
            *bucket = keep;
        }
        self.by_sender.retain(|_, b| !b.is_empty());
        self.len -= out.len();
        out.sort_by_key(|(seq, _)| *seq);
        out.into_iter().map(|(_, m)| m).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // spec/session.md §2 / security.md §11: one sender evicts only its own messages.
    #[test]
    fn a_flooding_sender_evicts_only_its_own() {
        let mut h = HeldBySender::new(4, 16);
        assert_eq!(h.push("alice", 0), Pushed::Kept);
        for i in 1..=300 {
            let p = h.push("stranger", i);
            assert!(p == Pushed::Kept || p == Pushed::KeptDropping("stranger".into()));
        }
        assert_eq!(h.len(), 5);
        assert_eq!(h.take_first("alice", |_| true), Some(0));
        assert_eq!(h.take_all(|_| true), vec![297, 298, 299, 300]);
        assert_eq!(h.len(), 0);
    }

    // Many throw-away DIDs, one message each, fill the store: the next stranger is refused
    // and the early sender keeps its message; a sender holding more than the others loses
    // its oldest.
    #[test]
    fn when_full_the_largest_and_latest_sender_loses() {
        let mut h = HeldBySender::new(4, 8);
        assert_eq!(h.push("alice", 0), Pushed::Kept);
        for i in 1..8 {
            assert_eq!(h.push(&format!("s{i}"), i), Pushed::Kept);
        }
        for i in 8..100 {
            assert_eq!(h.push(&format!("s{i}"), i), Pushed::Refused);
        }
        assert_eq!(h.len(), 8);
        assert_eq!(h.push("s3", 100), Pushed::KeptDropping("s3".into()));
        assert_eq!(h.take_first("s3", |_| true), Some(100));
        assert_eq!(h.push("s5", 101), Pushed::Kept);
        assert_eq!(h.push("s6", 102), Pushed::KeptDropping("s6".into()));
        assert_eq!(h.take_first("alice", |_| true), Some(0));
    }

    #[test]
    fn take_all_returns_matches_in_arrival_order_and_retain_filters_one_sender() {
        let mut h = HeldBySender::new(4, 16);
        h.push("a", 1);
        h.push("b", 2);
        h.push("a", 3);
        h.push("b", 4);
        assert_eq!(h.take_all(|m| m % 2 == 0), vec![2, 4]);
        h.retain("a", |m| *m == 3);
        assert_eq!(h.len(), 1);
        assert_eq!(h.take_first("a", |_| true), Some(3));
        assert_eq!(h.take_first("a", |_| true), None);
    }
}
