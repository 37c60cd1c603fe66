//! Which direct path the proposer takes (spec/session.md §7.5), with no I/O: the peer's
//! candidates are ranked, every one is checked at once, and the best success wins as soon
//! as no better check is pending, or `settle` after the first success.

use std::time::{Duration, Instant};

use mpc_did_rendezvous::candidate::{Candidate, CandidateKind, Transport};

/// Rank of a peer candidate for a direct path; lower is better. `None`: not a direct-path
/// candidate (relay candidates are the fallback; a TCP server-reflexive candidate would
/// need TCP simultaneous open, which is not implemented, spec/rendezvous.md §6.2).
///
/// Order (spec/rendezvous.md §5.4, §6): direct TCP to a host address, QUIC to a host
/// address, QUIC to a server-reflexive address (hole punched).
#[must_use]
pub(crate) fn rank(c: &Candidate) -> Option<u8> {
    match (c.kind, c.transport) {
        (CandidateKind::Host, Transport::Tcp) => Some(0),
        (CandidateKind::Host, Transport::Quic) => Some(1),
        (CandidateKind::ServerReflexive, Transport::Quic) => Some(2),
        (CandidateKind::ServerReflexive, Transport::Tcp) => Some(3),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    Pending,
    Succeeded,
    Failed,
}

/// What to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Wait for a result, or until the instant given (the settle time), then ask again.
    Wait(Option<Instant>),
    /// Try these checks' paths (indices into the ranks given to [`Selection::new`]), best
    /// first: attach the first; if the session does not connect on it, the next.
    Take(Vec<usize>),
    /// Every check failed.
    NothingWorked,
}

/// The selection state over a fixed list of checks.
#[derive(Debug)]
pub(crate) struct Selection {
    ranks: Vec<u8>,
    state: Vec<Check>,
    settle: Duration,
    first_success: Option<Instant>,
}

impl Selection {
    /// One check per entry of `ranks` (all started at once by the shell).
    #[must_use]
    pub(crate) fn new(ranks: Vec<u8>, settle: Duration) -> Self {
        let state = vec![Check::Pending; ranks.len()];
        Self {
            ranks,
            state,
            settle,
            first_success: None,
        }
    }

    /// Record the outcome of check `i` (repeats and unknown indices are ignored).
    pub(crate) fn on_result(&mut self, i: usize, ok: bool, now: Instant) {
        let Some(s) = self.state.get_mut(i) else {
            return;
        };
        if *s != Check::Pending {
            return;
        }
        *s = if ok {
            self.first_success.get_or_insert(now);
            Check::Succeeded
        } else {
            Check::Failed
        };
    }

    /// Decide at `now`.
    #[must_use]
    pub(crate) fn decide(&self, now: Instant) -> Decision {
        let mut ok: Vec<usize> = (0..self.ranks.len())
            .filter(|&i| self.state.get(i) == Some(&Check::Succeeded))
            .collect();
        ok.sort_by_key(|&i| (self.ranks.get(i).copied().unwrap_or(u8::MAX), i));
        let pending = |better_than: u8| {
            self.ranks
                .iter()
                .zip(&self.state)
                .any(|(r, s)| *s == Check::Pending && *r < better_than)
        };
        match ok.first() {
            None if pending(u8::MAX) => Decision::Wait(None),
            None => Decision::NothingWorked,
            Some(&best) => {
                let best_rank = self.ranks.get(best).copied().unwrap_or(u8::MAX);
                let settle_at = self.first_success.map(|t| t + self.settle);
                if !pending(best_rank) || settle_at.is_some_and(|t| now >= t) {
                    Decision::Take(ok)
                } else {
                    Decision::Wait(settle_at)
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn cand(kind: CandidateKind, t: Transport) -> Candidate {
        Candidate::new(kind, t, "192.0.2.7:4000".parse().unwrap(), 0, None)
    }

    // spec/session.md §7.5, spec/rendezvous.md §6.2: direct TCP host > QUIC host > QUIC
    // srflx > TCP srflx (simultaneous open); relay is not direct.
    #[test]
    fn ranks_follow_the_preference_order() {
        assert_eq!(rank(&cand(CandidateKind::Host, Transport::Tcp)), Some(0));
        assert_eq!(rank(&cand(CandidateKind::Host, Transport::Quic)), Some(1));
        assert_eq!(
            rank(&cand(CandidateKind::ServerReflexive, Transport::Quic)),
            Some(2)
        );
        assert_eq!(
            rank(&cand(CandidateKind::ServerReflexive, Transport::Tcp)),
            Some(3)
        );
        let relay = Candidate::relay(
            Transport::Tcp,
            "198.51.100.1:443".parse().unwrap(),
            "wss://m/relay",
        );
        assert_eq!(rank(&relay), None);
    }

    #[test]
    fn best_success_wins_at_once_when_nothing_better_is_pending() {
        let t0 = Instant::now();
        let mut s = Selection::new(vec![0, 1, 2], Duration::from_millis(1500));
        assert_eq!(s.decide(t0), Decision::Wait(None));
        s.on_result(0, true, t0);
        assert_eq!(s.decide(t0), Decision::Take(vec![0]));
    }

    #[test]
    fn a_worse_success_waits_for_better_checks_until_settled() {
        let t0 = Instant::now();
        let settle = Duration::from_millis(1500);
        let mut s = Selection::new(vec![0, 2, 1], settle);
        s.on_result(1, true, t0); // punched QUIC first
        assert_eq!(s.decide(t0), Decision::Wait(Some(t0 + settle)));
        // The better ones fail: take the punched path without waiting for the settle time.
        s.on_result(0, false, t0);
        assert_eq!(s.decide(t0), Decision::Wait(Some(t0 + settle)));
        s.on_result(2, false, t0);
        assert_eq!(s.decide(t0), Decision::Take(vec![1]));
    }

    #[test]
    fn settle_time_ends_the_wait_and_successes_come_best_first() {
        let t0 = Instant::now();
        let settle = Duration::from_millis(1500);
        let mut s = Selection::new(vec![2, 1, 0, 1], settle);
        s.on_result(0, true, t0);
        s.on_result(3, true, t0);
        // Still waiting for the TCP check (rank 0) ...
        assert!(matches!(s.decide(t0), Decision::Wait(Some(_))));
        // ... until the settle time: successes in rank order, ties by index.
        assert_eq!(s.decide(t0 + settle), Decision::Take(vec![3, 0]));
        // A late result for a decided check changes nothing it should not.
        s.on_result(3, false, t0);
        assert_eq!(s.decide(t0 + settle), Decision::Take(vec![3, 0]));
    }

    proptest::proptest! {
        /// Whatever the order results come in: a decision never prefers a worse success
        /// while a better check is pending (unless settled), and once every result is in,
        /// the successes come best rank first (ties in candidate order) or nothing worked.
        #[test]
        fn decisions_respect_rank_order(
            ranks in proptest::collection::vec(0u8..4, 0..12),
            outcomes in proptest::collection::vec(proptest::bool::ANY, 12),
            order in proptest::collection::vec(0usize..12, 0..24),
        ) {
            let t0 = Instant::now();
            let settle = Duration::from_secs(10);
            let n = ranks.len();
            let mut s = Selection::new(ranks.clone(), settle);
            let mut done = vec![false; n];
            let mut feed: Vec<usize> = order.into_iter().filter(|i| *i < n).collect();
            feed.extend(0..n);
            for i in feed {
                s.on_result(i, outcomes[i], t0);
                done[i] = true;
                if let Decision::Take(list) = s.decide(t0) {
                    let best = ranks[list[0]];
                    let better_pending = (0..n).any(|j| !done[j] && ranks[j] < best);
                    proptest::prop_assert!(!better_pending);
                    proptest::prop_assert!(list.iter().all(|&j| done[j] && outcomes[j]));
                }
            }
            let mut want: Vec<usize> = (0..n).filter(|&i| outcomes[i]).collect();
            want.sort_by_key(|&i| (ranks[i], i));
            let expected = if want.is_empty() { Decision::NothingWorked } else { Decision::Take(want) };
            proptest::prop_assert_eq!(s.decide(t0), expected);
        }
    }

    #[test]
    fn all_failed_is_reported_and_empty_is_nothing() {
        let t0 = Instant::now();
        let mut s = Selection::new(vec![0, 2], Duration::ZERO);
        s.on_result(0, false, t0);
        s.on_result(1, false, t0);
        s.on_result(9, true, t0); // unknown index: ignored
        assert_eq!(s.decide(t0), Decision::NothingWorked);
        assert_eq!(
            Selection::new(vec![], Duration::ZERO).decide(t0),
            Decision::NothingWorked
        );
    }
}
