//! Bookkeeping that keeps strangers who know a DID from pinning the mediator's memory or a
//! recipient's queue (spec/mediator.md §6.1). No I/O and no clock of its own: callers pass
//! `now`, so the rules are tested directly.
//!
//! - [`SourceAddr`]: what counts as one source (an IPv4 address, an IPv6 /64; defined
//!   in `mpc_did_rendezvous::source`, shared with the relay and the path listener).
//! - [`ReplayCache`]: `(sender DID, message id)` pairs seen in the replay window, kept as
//!   16-byte hashes in arrival order, a bounded number of them ([`REPLAY_CACHE_MAX`]), each
//!   charged to its source so that a few addresses cannot fill it for all ([`REPLAY_SHARES`]).
//! - [`SourceQuotas`]: how many messages and bytes each source has waiting, unacknowledged,
//!   in each recipient's queue.
//! - [`KeyedRate`]: token buckets per client address and per DID (`limits.rate_per_ip`,
//!   `limits.rate_per_did`), bounded in number.
//! - [`client_address`]: who a request comes from behind trusted reverse proxies
//!   (`X-Forwarded-For`, only from `trusted_proxies`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

/// One source of connections and forwards (an IPv4 address, an IPv6 /64): the same rule
/// as the relay's and the path listener's.
pub use mpc_did_rendezvous::source::SourceAddr;

/// Token buckets per key and their bound (defined beside [`SourceAddr`], shared with the
/// STUN service's per-source answer budget).
pub use mpc_did_rendezvous::source::{KeyedRate, RATE_KEYS_MAX};

/// Most `(sender, id)` pairs remembered at once by the mediator. Each costs a 16-byte hash
/// twice, an `Instant` and its source (≈ 80 bytes with the sets' overhead), so ≈ 80 MiB at
/// most, whatever the ids; it allows 3,333 recorded requests per second, sustained over the
/// 300 s window (each one an authcrypt unpack, which is the tighter bound on two cores).
pub const REPLAY_CACHE_MAX: usize = 1_000_000;

/// Out of how many equal shares of the cache one source may hold once the cache is half
/// full: 40, so that filling the other half takes 20 more addresses (as the default
/// connection slots do, spec/mediator.md §6.1).
pub const REPLAY_SHARES: usize = 40;

/// Outcome of [`ReplayCache::check_and_insert`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// First time in the window: recorded.
    Fresh,
    /// Seen in the window: a replay.
    Replay,
    /// The cache holds its maximum of pairs younger than the window, or it is half full
    /// and this request's source holds its share: the request cannot be checked and is
    /// refused (retry later) rather than let through unchecked.
    Full,
}

/// Sliding window of `(sender DID, message id)` pairs already processed, stored as hashes
/// so an attacker's long ids cost nothing here. Each pair is charged to the source address
/// it came from: while the cache is less than half full anyone may add to it; past half,
/// a source that holds `max / REPLAY_SHARES` pairs is refused, so a few busy addresses
/// cannot fill it for everyone (spec/mediator.md §3 rule 5).
pub struct ReplayCache {
    window: Duration,
    max: usize,
    share: usize,
    seen: HashSet<[u8; 16]>,
    /// Each hash in `seen` once, oldest first, with the source it is charged to.
    order: VecDeque<([u8; 16], Instant, SourceAddr)>,
    /// Pairs held per source (sources holding none are absent).
    by_source: HashMap<SourceAddr, usize>,
}

impl ReplayCache {
    /// An empty cache remembering at most `max` pairs for `window`.
    #[must_use]
    pub fn new(window: Duration, max: usize) -> Self {
        Self {
            window,
            max,
            share: (max / REPLAY_SHARES).max(1),
            seen: HashSet::new(),
            order: VecDeque::new(),
            by_source: HashMap::new(),
        }
    }

    /// Records the pair, charged to `src`, unless it was seen within the window.
    pub fn check_and_insert(
        &mut self,
        sender: &str,
        id: &str,
        src: SourceAddr,
        now: Instant,
    ) -> Seen {
        // Forget what left the window, oldest first: O(1) per insert on average.
        while let Some(&(h, t, s)) = self.order.front() {
            if now.saturating_duration_since(t) < self.window {
                break;
            }
            self.order.pop_front();
            self.seen.remove(&h);
            if let Some(n) = self.by_source.get_mut(&s) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.by_source.remove(&s);
                }
            }
        }
        let key = pair_hash(sender, id);
        if self.seen.contains(&key) {
            return Seen::Replay;
        }
        let held = self.by_source.get(&src).copied().unwrap_or(0);
        if self.seen.len() >= self.max || (self.seen.len() >= self.max / 2 && held >= self.share) {
            return Seen::Full;
        }
        self.seen.insert(key);
        self.order.push_back((key, now, src));
        *self.by_source.entry(src).or_insert(0) += 1;
        Seen::Fresh
    }

    /// Pairs remembered now.
    #[must_use]
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether nothing is remembered.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

fn pair_hash(sender: &str, id: &str) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update((sender.len() as u64).to_be_bytes());
    h.update(sender.as_bytes());
    h.update(id.as_bytes());
    let d = h.finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(d.get(..16).unwrap_or(&[0u8; 16]));
    out
}

/// Most queued messages tracked across all recipients (≈ 70 bytes each, ≈ 35 MiB). Past
/// it new messages are stored but not attributed (logged): the queue limits still hold.
pub const SOURCE_TRACKED_MAX: usize = 500_000;

/// What one source has waiting in one recipient's queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Held {
    messages: u64,
    bytes: u64,
}

/// One tracked message: who queued it, since when (or since it was last found still
/// queued), and its size.
#[derive(Debug, Clone, Copy)]
struct Tracked {
    src: SourceAddr,
    since: Instant,
    bytes: u64,
}

/// Per recipient: how many of its waiting messages, and how many bytes, each source put
/// there.
#[derive(Default)]
struct Ledger {
    by_source: HashMap<SourceAddr, Held>,
    ids: HashMap<[u8; 16], Tracked>,
}

/// Messages and bytes each source has waiting, unacknowledged, in each recipient's queue
/// (`limits.max_queued_per_source`, `limits.max_queued_bytes_per_source`). A forward
/// [`reserves`](Self::reserve) a place under the id its message will be stored with
/// (`store::message_id`, known before it is stored), so that concurrent forwards cannot
/// overshoot and an acknowledgement that overtakes the forward's own bookkeeping (the
/// recipient is live, the message is pushed and acknowledged while the forward still
/// waits for the store's group commit) frees the place; then it
/// [`settles`](Self::settle) the reservation, giving the place back if nothing new was
/// stored. Acknowledgements on this instance ([`Self::acked`]) free places. A place held
/// for `window` is not simply forgotten (its message may still be waiting, and a source
/// could then queue its quota again every `window`): when the source is at its quota,
/// [`reserve`](Self::reserve) names those places ([`Quota::Check`]) and the caller asks
/// the store which still wait ([`Self::confirm`]); only the others are freed — what
/// another instance acknowledged, or an operator purged.
pub struct SourceQuotas {
    max: u64,
    max_bytes: u64,
    window: Duration,
    owners: HashMap<String, Ledger>,
    tracked: usize,
}

/// A place [`SourceQuotas::reserve`] took for one forward, to
/// [`settle`](SourceQuotas::settle) once the store answered.
#[derive(Debug)]
#[must_use]
pub struct Reservation {
    /// The id this forward tracks, if it took a place (not with no quota, not for a
    /// message already tracked, not past [`SOURCE_TRACKED_MAX`]).
    key: Option<[u8; 16]>,
}

/// Outcome of [`SourceQuotas::reserve`].
#[derive(Debug)]
#[must_use]
pub enum Quota {
    /// A place is taken.
    Granted(Reservation),
    /// The source is at its quota (messages or bytes) with everything recently seen
    /// waiting: refused.
    Full,
    /// The source is at its quota, but these ids (hex) were tracked for longer than the
    /// window: ask the store which still wait, [`confirm`](SourceQuotas::confirm), and
    /// reserve again.
    Check(Vec<String>),
}

impl SourceQuotas {
    /// `max` messages and `max_bytes` bytes per (source, recipient); `max` 0 for no quota,
    /// `max_bytes` 0 for no byte quota. Places held for `window` are checked against the
    /// store before they are freed.
    #[must_use]
    pub fn new(max: u64, max_bytes: u64, window: Duration) -> Self {
        Self {
            max,
            max_bytes,
            window,
            owners: HashMap::new(),
            tracked: 0,
        }
    }

    /// Takes a place for the message `id` of `bytes` bytes from `src` in `owner`'s queue,
    /// unless `src` already has `max` messages or would have more than `max_bytes` bytes
    /// waiting there (a source with nothing waiting may always queue one message). A
    /// message already tracked (the same envelope again) takes no second place.
    pub fn reserve(
        &mut self,
        owner: &str,
        src: SourceAddr,
        id: &str,
        bytes: u64,
        now: Instant,
    ) -> Quota {
        let Some(key) = id_key(id).filter(|_| self.max > 0) else {
            return Quota::Granted(Reservation { key: None });
        };
        let ledger = self.owners.entry(owner.to_owned()).or_default();
        if ledger.ids.contains_key(&key) {
            return Quota::Granted(Reservation { key: None });
        }
        let held = ledger.by_source.get(&src).copied().unwrap_or_default();
        let over = held.messages >= self.max
            || (self.max_bytes > 0
                && held.messages > 0
                && held.bytes.saturating_add(bytes) > self.max_bytes);
        if over {
            let stale: Vec<String> = ledger
                .ids
                .iter()
                .filter(|(_, t)| {
                    t.src == src && now.saturating_duration_since(t.since) >= self.window
                })
                .map(|(k, _)| hex::encode(k))
                .collect();
            if ledger.by_source.is_empty() {
                self.owners.remove(owner);
            }
            return if stale.is_empty() {
                Quota::Full
            } else {
                Quota::Check(stale)
            };
        }
        if self.tracked >= SOURCE_TRACKED_MAX {
            tracing::warn!(%src, "source quota: too many tracked messages");
            if ledger.by_source.is_empty() {
                self.owners.remove(owner);
            }
            return Quota::Granted(Reservation { key: None });
        }
        let h = ledger.by_source.entry(src).or_default();
        h.messages += 1;
        h.bytes = h.bytes.saturating_add(bytes);
        ledger.ids.insert(
            key,
            Tracked {
                src,
                since: now,
                bytes,
            },
        );
        self.tracked += 1;
        Quota::Granted(Reservation { key: Some(key) })
    }

    /// The store's answer to a [`Quota::Check`]: of `checked`, those in `still` wait in
    /// `owner`'s queue and keep their places for another window; the others were
    /// acknowledged elsewhere or purged, and are freed.
    pub fn confirm(
        &mut self,
        owner: &str,
        checked: &[String],
        still: &HashSet<String>,
        now: Instant,
    ) {
        let Some(ledger) = self.owners.get_mut(owner) else {
            return;
        };
        for id in checked {
            let Some(key) = id_key(id) else {
                continue;
            };
            if still.contains(id) {
                if let Some(t) = ledger.ids.get_mut(&key) {
                    t.since = now;
                }
            } else if let Some(t) = ledger.ids.remove(&key) {
                self.tracked -= 1;
                release(ledger, t);
            }
        }
        if ledger.by_source.is_empty() {
            self.owners.remove(owner);
        }
    }

    /// Settles a [`reserve`](Self::reserve)d place: `stored` when a new message was stored
    /// (it holds the place until acknowledged, unless an acknowledgement came first), else
    /// (refused, failed, or a duplicate of a message already waiting) the place is given
    /// back.
    pub fn settle(&mut self, owner: &str, r: Reservation, stored: bool) {
        let Some(key) = r.key else {
            return;
        };
        if stored {
            return;
        }
        let Some(ledger) = self.owners.get_mut(owner) else {
            return;
        };
        if let Some(t) = ledger.ids.remove(&key) {
            self.tracked -= 1;
            release(ledger, t);
        }
        if ledger.by_source.is_empty() {
            self.owners.remove(owner);
        }
    }

    /// `owner` acknowledged `ids` (Pickup `messages-received`): their places are free.
    pub fn acked(&mut self, owner: &str, ids: &[String]) {
        let Some(ledger) = self.owners.get_mut(owner) else {
            return;
        };
        for id in ids {
            if let Some(t) = id_key(id).and_then(|k| ledger.ids.remove(&k)) {
                self.tracked -= 1;
                release(ledger, t);
            }
        }
        if ledger.by_source.is_empty() {
            self.owners.remove(owner);
        }
    }

    /// Messages `src` has waiting for `owner`, as far as this instance knows.
    #[must_use]
    pub fn waiting(&self, owner: &str, src: SourceAddr) -> u64 {
        self.held(owner, src).messages
    }

    /// Bytes `src` has waiting for `owner`, as far as this instance knows.
    #[must_use]
    pub fn waiting_bytes(&self, owner: &str, src: SourceAddr) -> u64 {
        self.held(owner, src).bytes
    }

    fn held(&self, owner: &str, src: SourceAddr) -> Held {
        self.owners
            .get(owner)
            .and_then(|l| l.by_source.get(&src))
            .copied()
            .unwrap_or_default()
    }
}

fn release(ledger: &mut Ledger, t: Tracked) {
    if let Some(h) = ledger.by_source.get_mut(&t.src) {
        h.messages = h.messages.saturating_sub(1);
        h.bytes = h.bytes.saturating_sub(t.bytes);
        if h.messages == 0 {
            ledger.by_source.remove(&t.src);
        }
    }
}

/// Store ids are 32 hex characters (`store::message_id`).
fn id_key(id: &str) -> Option<[u8; 16]> {
    let mut out = [0u8; 16];
    hex::decode_to_slice(id, &mut out).ok()?;
    Some(out)
}

/// The address a request comes from: `peer` itself, unless `peer` is one of
/// `trusted_proxies`; then the right-most `X-Forwarded-For` entry that is not itself a
/// trusted proxy (entries left of it were written by the client and prove nothing). A
/// missing or unparsable header from a trusted proxy counts as the proxy.
#[must_use]
pub fn client_address(
    peer: std::net::IpAddr,
    forwarded_for: &[&str],
    trusted_proxies: &[std::net::IpAddr],
) -> std::net::IpAddr {
    let trusted = |ip: &std::net::IpAddr| trusted_proxies.contains(&canonical(*ip));
    if !trusted(&peer) {
        return peer;
    }
    let mut client = peer;
    // Several headers are one list in order; walk it from the right.
    for entry in forwarded_for
        .iter()
        .flat_map(|h| h.split(','))
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
    {
        let e = entry.trim();
        let parsed = e
            .parse::<std::net::IpAddr>()
            .ok()
            .or_else(|| e.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()));
        let Some(ip) = parsed else {
            return client;
        };
        client = canonical(ip);
        if !trusted(&client) {
            return client;
        }
    }
    client
}

/// IPv4-mapped IPv6 (`::ffff:a.b.c.d`) as the IPv4 address.
fn canonical(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_only_from_trusted_proxies() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let proxies = [ip("10.0.0.1"), ip("10.0.0.2")];
        // Not a proxy: its header is ignored.
        assert_eq!(
            client_address(ip("192.0.2.9"), &["198.51.100.7"], &proxies),
            ip("192.0.2.9")
        );
        // A proxy: the right-most untrusted entry; a forged left part changes nothing.
        assert_eq!(
            client_address(ip("10.0.0.1"), &["1.2.3.4, 198.51.100.7"], &proxies),
            ip("198.51.100.7")
        );
        // Proxy chain: skip trusted hops.
        assert_eq!(
            client_address(ip("10.0.0.1"), &["198.51.100.7", "10.0.0.2"], &proxies),
            ip("198.51.100.7")
        );
        // Missing or garbage header: the proxy itself.
        assert_eq!(
            client_address(ip("10.0.0.1"), &[], &proxies),
            ip("10.0.0.1")
        );
        assert_eq!(
            client_address(ip("10.0.0.1"), &["unknown"], &proxies),
            ip("10.0.0.1")
        );
        assert_eq!(
            client_address(ip("::ffff:10.0.0.1"), &["[2001:db8::1]:443"], &proxies),
            ip("2001:db8::1")
        );
    }

    #[test]
    fn replay_cache_window_and_bound() {
        let t0 = Instant::now();
        let w = Duration::from_secs(300);
        let s = SourceAddr::of("192.0.2.1".parse().unwrap());
        let mut c = ReplayCache::new(w, REPLAY_CACHE_MAX);
        assert_eq!(c.check_and_insert("did:a", "1", s, t0), Seen::Fresh);
        assert_eq!(c.check_and_insert("did:a", "1", s, t0), Seen::Replay);
        assert_eq!(c.check_and_insert("did:b", "1", s, t0), Seen::Fresh);
        // Length-prefixed sender: no ambiguity between ("did:a1", "") and ("did:a", "1").
        assert_eq!(c.check_and_insert("did:a1", "", s, t0), Seen::Fresh);
        // A huge id costs one hash.
        let big = "x".repeat(600_000);
        assert_eq!(c.check_and_insert("did:a", &big, s, t0), Seen::Fresh);
        assert_eq!(c.check_and_insert("did:a", &big, s, t0), Seen::Replay);
        // After the window the pair is forgotten.
        let later = t0 + w;
        assert_eq!(c.check_and_insert("did:a", "1", s, later), Seen::Fresh);
        assert_eq!(c.len(), 1);
        assert_eq!(c.by_source.get(&s), Some(&1));
        // Bounded: full of fresh pairs (from many sources), it refuses instead of growing.
        let mut c = ReplayCache::new(w, 1_000);
        for i in 0..1_000u32 {
            let src = SourceAddr::of(std::net::Ipv4Addr::from(i).into());
            assert_eq!(
                c.check_and_insert("did:a", &i.to_string(), src, t0),
                Seen::Fresh
            );
        }
        assert_eq!(c.check_and_insert("did:a", "new", s, t0), Seen::Full);
        assert_eq!(c.check_and_insert("did:a", "new", s, later), Seen::Fresh);
        assert_eq!(c.len(), 1);
        assert_eq!(
            c.by_source.len(),
            1,
            "sources holding nothing are forgotten"
        );
    }

    /// spec/mediator.md §3 rule 5: one source fills half the cache on its own, then only
    /// its share; the other half stays open to other sources. Before shares, two
    /// addresses filled the whole cache and every authenticated request was refused.
    #[test]
    fn replay_cache_shares_past_half() {
        let t0 = Instant::now();
        let w = Duration::from_secs(300);
        let flood = SourceAddr::of("192.0.2.66".parse().unwrap());
        let other = SourceAddr::of("198.51.100.7".parse().unwrap());
        let max = 40 * REPLAY_SHARES;
        let mut c = ReplayCache::new(w, max);
        let mut n = 0;
        while c.check_and_insert("did:x", &n.to_string(), flood, t0) == Seen::Fresh {
            n += 1;
        }
        assert_eq!(n, max / 2, "alone, a source fills half the cache");
        for i in 0..40 {
            assert_eq!(
                c.check_and_insert("did:honest", &i.to_string(), other, t0),
                Seen::Fresh,
                "another source refused at {i}"
            );
        }
        assert_eq!(
            c.check_and_insert("did:honest", "41", other, t0),
            Seen::Full,
            "past half, a source holding its share is refused"
        );
        // Replays are still recognised when refused for space.
        assert_eq!(c.check_and_insert("did:x", "0", flood, t0), Seen::Replay);
    }

    fn id(n: u8) -> String {
        hex::encode([n; 16])
    }

    fn granted(q: Quota) -> Reservation {
        match q {
            Quota::Granted(r) => r,
            other => panic!("expected a place, got {other:?}"),
        }
    }

    #[test]
    fn source_quota_counts_waiting_messages() {
        let t0 = Instant::now();
        let w = Duration::from_secs(600);
        let s1 = SourceAddr::of("192.0.2.1".parse().unwrap());
        let s2 = SourceAddr::of("192.0.2.2".parse().unwrap());
        let mut q = SourceQuotas::new(2, 0, w);
        for n in 0..2 {
            let r = granted(q.reserve("did:r", s1, &id(n), 10, t0));
            q.settle("did:r", r, true);
        }
        assert!(
            matches!(q.reserve("did:r", s1, &id(9), 10, t0), Quota::Full),
            "third message from s1 refused"
        );
        // The same envelope again (already waiting) takes no second place.
        let r = granted(q.reserve("did:r", s2, &id(0), 10, t0));
        assert_eq!(q.waiting("did:r", s2), 0);
        q.settle("did:r", r, false);
        assert_eq!(q.waiting("did:r", s1), 2, "the stored copy keeps its place");
        // A new message from another source that turns out not stored gives its place back.
        let r = granted(q.reserve("did:r", s2, &id(5), 10, t0));
        assert_eq!(q.waiting("did:r", s2), 1);
        q.settle("did:r", r, false);
        assert_eq!(q.waiting("did:r", s2), 0);
        let r = granted(q.reserve("did:other", s1, &id(0), 10, t0));
        q.settle("did:other", r, false);
        // Acknowledged: the place is free again.
        q.acked("did:r", &[id(0), "not-hex".into()]);
        assert_eq!(q.waiting("did:r", s1), 1);
        let r = granted(q.reserve("did:r", s1, &id(2), 10, t0));
        q.settle("did:r", r, true);
        assert!(matches!(
            q.reserve("did:r", s1, &id(3), 10, t0),
            Quota::Full
        ));
        q.acked("did:r", &[id(1), id(2)]);
        assert!(q.owners.is_empty());
        assert_eq!(q.tracked, 0);
        // 0: no quota.
        let mut q = SourceQuotas::new(0, 100, w);
        for n in 0..10 {
            let r = granted(q.reserve("did:r", s1, &id(n), 1_000, t0));
            q.settle("did:r", r, true);
        }
        assert!(q.owners.is_empty());
    }

    /// spec/mediator.md §6.1: a source's waiting bytes are bounded too, so a few large
    /// messages from one address cannot fill a recipient's `max_queue_bytes`; a source with
    /// nothing waiting may always queue one message, and other sources are not affected.
    #[test]
    fn source_quota_counts_waiting_bytes() {
        let t0 = Instant::now();
        let w = Duration::from_secs(600);
        let s1 = SourceAddr::of("192.0.2.1".parse().unwrap());
        let s2 = SourceAddr::of("192.0.2.2".parse().unwrap());
        let mut q = SourceQuotas::new(500, 1_000, w);
        for n in 0..2 {
            let r = granted(q.reserve("did:r", s1, &id(n), 400, t0));
            q.settle("did:r", r, true);
        }
        assert_eq!(q.waiting_bytes("did:r", s1), 800);
        assert!(matches!(
            q.reserve("did:r", s1, &id(2), 400, t0),
            Quota::Full
        ));
        let r = granted(q.reserve("did:r", s1, &id(3), 200, t0));
        q.settle("did:r", r, true);
        let r = granted(q.reserve("did:r", s2, &id(4), 5_000, t0));
        q.settle("did:r", r, true);
        assert!(matches!(q.reserve("did:r", s2, &id(5), 1, t0), Quota::Full));
        q.acked("did:r", &[id(0)]);
        assert_eq!(q.waiting_bytes("did:r", s1), 600);
        let r = granted(q.reserve("did:r", s1, &id(2), 400, t0));
        q.settle("did:r", r, true);
    }

    /// spec/mediator.md §6.1: a place is not forgotten while its message waits. After the
    /// window a source at its quota gets the stale ids to check; those the store still
    /// holds keep their places (for another window), the others are freed. Before, every
    /// place was forgotten after `source_quota_secs`, and one address added its quota
    /// again every 10 minutes until the recipient's whole queue was its own.
    #[test]
    fn source_quota_frees_only_what_no_longer_waits() {
        let t0 = Instant::now();
        let w = Duration::from_secs(600);
        let s1 = SourceAddr::of("192.0.2.1".parse().unwrap());
        let mut q = SourceQuotas::new(2, 0, w);
        for n in 0..2 {
            let r = granted(q.reserve("did:r", s1, &id(n), 10, t0));
            q.settle("did:r", r, true);
        }
        let later = t0 + w;
        let Quota::Check(mut stale) = q.reserve("did:r", s1, &id(2), 10, later) else {
            panic!("stale places not offered for checking");
        };
        stale.sort();
        assert_eq!(stale, vec![id(0), id(1)]);
        // Both still wait: the source stays at its quota, with nothing to check.
        let still: HashSet<String> = stale.iter().cloned().collect();
        q.confirm("did:r", &stale, &still, later);
        assert!(matches!(
            q.reserve("did:r", s1, &id(2), 10, later),
            Quota::Full
        ));
        assert_eq!(q.waiting("did:r", s1), 2);
        // One was acknowledged through another instance: its place is freed.
        let Quota::Check(stale) = q.reserve("did:r", s1, &id(2), 10, later + w) else {
            panic!("stale places not offered again after another window");
        };
        let still: HashSet<String> = std::iter::once(id(1)).collect();
        q.confirm("did:r", &stale, &still, later + w);
        assert_eq!(q.waiting("did:r", s1), 1);
        let r = granted(q.reserve("did:r", s1, &id(2), 10, later + w));
        q.settle("did:r", r, true);
        assert_eq!(q.tracked, 2);
    }

    /// A live recipient can acknowledge a message before the forward that stored it
    /// settles its place (the forward still waits for the store's group commit): the
    /// acknowledgement frees the place all the same. Before places were taken under the
    /// message id, such an acknowledgement found nothing to free and the settle then held
    /// the place for the whole window: a busy sender filled its quota with messages long
    /// delivered, and its forwards were refused for 10 minutes.
    #[test]
    fn an_acknowledgement_before_the_settle_frees_the_place() {
        let t0 = Instant::now();
        let s1 = SourceAddr::of("192.0.2.1".parse().unwrap());
        let mut q = SourceQuotas::new(1, 0, Duration::from_secs(600));
        for n in 0..50 {
            let Quota::Granted(r) = q.reserve("did:r", s1, &id(n), 10, t0) else {
                panic!("message {n} refused: a delivered one holds the place");
            };
            q.acked("did:r", &[id(n)]);
            q.settle("did:r", r, true);
        }
        assert_eq!(q.waiting("did:r", s1), 0);
        assert!(q.owners.is_empty());
        assert_eq!(q.tracked, 0);
    }
}
