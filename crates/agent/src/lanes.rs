//! Messages waiting for their sender's did:web document (spec/lobby.md §7 "Lanes").
//!
//! Unpacking a message from a did:web sender needs that DID's document; fetching it can
//! take up to the resolver's timeout (5 s) when the host is slow or silent, and anyone
//! can name such a sender. So the inbox never waits for a fetch: a message that needs
//! one is parked in its DID's lane (not acknowledged), the fetch runs on its own, and the
//! lane is unpacked again once the document (or its failure) is remembered. Messages
//! from senders whose documents need no fetch go straight on. Order per sender is kept:
//! a message unpacked while its sender's lane still waits queues behind it.
//!
//! Bounded: at most [`MAX_WAITING_PER_DID`] per DID and [`MAX_WAITING`] in all, which with
//! the held messages ([`crate::MAX_HELD`]) stays below the mediator's 1,000
//! unacknowledged live pushes. A message over a bound is dropped and acknowledged with a
//! log line: waiting for its fetch in line would hold everyone else's messages again.

use std::collections::{HashMap, VecDeque};

use crate::client::Delivered;
use crate::Inbound;

/// Messages parked per DID whose document is being fetched.
pub(crate) const MAX_WAITING_PER_DID: usize = 32;
/// Messages parked in all.
pub(crate) const MAX_WAITING: usize = 256;

/// One parked message.
pub(crate) enum Waiting {
    /// Not unpacked yet: it needs the lane's document.
    Packed(Delivered),
    /// Unpacked (its queue id and the message), queued behind earlier ones of its sender.
    Unpacked(String, Box<Inbound>),
}

/// The lanes, by the DID whose document they wait for.
#[derive(Default)]
pub(crate) struct Lanes {
    waiting: HashMap<String, VecDeque<Waiting>>,
    total: usize,
}

impl Lanes {
    /// Whether `did` has a lane (its document is being fetched, or its lane not yet
    /// unpacked again).
    pub(crate) fn is_waiting(&self, did: &str) -> bool {
        self.waiting.contains_key(did)
    }

    /// Whether `did`'s lane (open or not yet) can take one more message.
    pub(crate) fn has_room(&self, did: &str) -> bool {
        self.total < MAX_WAITING
            && self
                .waiting
                .get(did)
                .is_none_or(|lane| lane.len() < MAX_WAITING_PER_DID)
    }

    /// Parks `item` at the end of `did`'s lane (call [`Self::has_room`] first; over a
    /// bound it is parked all the same). Returns whether that opened the lane (the caller
    /// starts the fetch).
    pub(crate) fn park(&mut self, did: &str, item: Waiting) -> bool {
        self.total += 1;
        if let Some(lane) = self.waiting.get_mut(did) {
            lane.push_back(item);
            return false;
        }
        self.waiting.insert(did.to_owned(), VecDeque::from([item]));
        true
    }

    /// Closes `did`'s lane and returns what waited in it, in arrival order.
    pub(crate) fn take(&mut self, did: &str) -> VecDeque<Waiting> {
        let lane = self.waiting.remove(did).unwrap_or_default();
        self.total -= lane.len();
        lane
    }

    /// Messages parked in all.
    #[cfg(test)]
    fn total(&self) -> usize {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packed(i: usize) -> Waiting {
        Waiting::Packed(Delivered {
            id: format!("q{i}"),
            bytes: Vec::new(),
        })
    }

    fn id(w: &Waiting) -> &str {
        match w {
            Waiting::Packed(d) => &d.id,
            Waiting::Unpacked(id, _) => id,
        }
    }

    #[test]
    fn lanes_keep_order_open_once_and_stay_bounded() {
        let mut lanes = Lanes::default();
        assert!(lanes.park("did:web:a", packed(0)));
        assert!(!lanes.park("did:web:a", packed(1)));
        assert!(lanes.park("did:web:b", packed(2)));
        assert!(lanes.is_waiting("did:web:a") && lanes.is_waiting("did:web:b"));
        let a: Vec<String> = lanes
            .take("did:web:a")
            .iter()
            .map(|w| id(w).to_owned())
            .collect();
        assert_eq!(a, ["q0", "q1"]);
        assert!(!lanes.is_waiting("did:web:a"));
        assert_eq!(lanes.total(), 1);
        assert!(lanes.take("did:web:a").is_empty());

        // One DID's bound.
        for i in 0..MAX_WAITING_PER_DID - 1 {
            assert!(lanes.has_room("did:web:b"));
            lanes.park("did:web:b", packed(10 + i));
        }
        assert!(!lanes.has_room("did:web:b"));
        assert!(lanes.has_room("did:web:other"));
        assert_eq!(lanes.total(), MAX_WAITING_PER_DID);
        // The bound in all.
        let mut n = 0;
        while lanes.has_room(&format!("did:web:c{n}")) {
            lanes.park(&format!("did:web:c{n}"), packed(n));
            n += 1;
        }
        assert_eq!(lanes.total(), MAX_WAITING);
        assert_eq!(n, MAX_WAITING - MAX_WAITING_PER_DID);
        assert!(!lanes.has_room("did:web:new"));
    }
}
