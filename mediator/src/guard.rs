//! Bookkeeping that keeps strangers who know a DID from pinning the mediator's memory or a
//! recipient's queue (spec/mediator.md §6.1). No I/O and no clock of its own: callers pass
//! `now`, so the rules are tested directly.
//!
//! - [`SourceAddr`]: what counts as one source (an IPv4 address, an IPv6 /64; defined
//!   in `mpc_did_rendezvous::source`, shared with the relay and the path listener).
//! - [`ReplayCache`]: `(sender DID, message id)` pairs seen in the replay window, kept as
//!   16-byte hashes in arrival order, a bounded number of them ([`REPLAY_CACHE_MAX`]).
//! - [`SourceQuotas`]: how many messages each source has waiting, unacknowledged, in each
//!   recipient's queue.
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

/// Most `(sender, id)` pairs remembered at once by the mediator. Each costs a 16-byte hash
/// twice and an `Instant` (≈ 50 bytes with the set's overhead), so ≈ 50 MiB at most,
/// whatever the ids; it allows 3,333 recorded requests per second, sustained over the
/// 300 s window (each one an authcrypt unpack, which is the tighter bound on two cores).
pub const REPLAY_CACHE_MAX: usize = 1_000_000;

/// Outcome of [`ReplayCache::check_and_insert`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// First time in the window: recorded.
    Fresh,
    /// Seen in the window: a replay.
    Replay,
    /// The cache holds its maximum of pairs younger than the window: the request cannot be
    /// checked and is refused (retry later) rather than let through unchecked.
    Full,
}

/// Sliding window of `(sender DID, message id)` pairs already processed, stored as hashes
/// so an attacker's long ids cost nothing here.
pub struct ReplayCache {
    window: Duration,
    max: usize,
    seen: HashSet<[u8; 16]>,
    /// Each hash in `seen` once, oldest first.
    order: VecDeque<([u8; 16], Instant)>,
}

impl ReplayCache {
    /// An empty cache remembering at most `max` pairs for `window`.
    #[must_use]
    pub fn new(window: Duration, max: usize) -> Self {
        Self {
            window,
            max,
            seen: HashSet::new(),
            order: VecDeque::new(),
        }
    }

    /// Records the pair unless it was seen within the window.
    pub fn check_and_insert(&mut self, sender: &str, id: &str, now: Instant) -> Seen {
        // Forget what left the window, oldest first: O(1) per insert on average.
        while let Some(&(h, t)) = self.order.front() {
            if now.saturating_duration_since(t) < self.window {
                break;
            }
            self.order.pop_front();
            self.seen.remove(&h);
        }
        let key = pair_hash(sender, id);
        if self.seen.contains(&key) {
            return Seen::Replay;
        }
        if self.seen.len() >= self.max {
            return Seen::Full;
        }
        self.seen.insert(key);
        self.order.push_back((key, now));
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

/// Most queued messages tracked across all recipients (≈ 60 bytes each, ≈ 30 MiB). Past
/// it new messages are stored but not attributed (logged): the queue limits still hold.
pub const SOURCE_TRACKED_MAX: usize = 500_000;

/// Per recipient: how many of its waiting messages each source put there.
#[derive(Default)]
struct Ledger {
    by_source: HashMap<SourceAddr, u64>,
    ids: HashMap<[u8; 16], (SourceAddr, Instant)>,
}

/// Messages each source has waiting, unacknowledged, in each recipient's queue
/// (`limits.max_queued_per_source`). A forward first [`reserves`](Self::reserve) a place
/// (so concurrent forwards cannot overshoot), then [`settles`](Self::settle) it with the
/// stored message's id, or gives it back. Acknowledgements on this instance
/// ([`Self::acked`]) free places; what another instance acknowledged is forgotten after
/// `window`.
pub struct SourceQuotas {
    max: u64,
    window: Duration,
    owners: HashMap<String, Ledger>,
    tracked: usize,
}

impl SourceQuotas {
    /// `max` messages per (source, recipient), 0 for no quota; entries are forgotten after
    /// `window`.
    #[must_use]
    pub fn new(max: u64, window: Duration) -> Self {
        Self {
            max,
            window,
            owners: HashMap::new(),
            tracked: 0,
        }
    }

    /// Takes a place for one message from `src` to `owner`'s queue; `false` if `src`
    /// already has `max` messages waiting there.
    pub fn reserve(&mut self, owner: &str, src: SourceAddr, now: Instant) -> bool {
        if self.max == 0 {
            return true;
        }
        let ledger = self.owners.entry(owner.to_owned()).or_default();
        let n = ledger.by_source.get(&src).copied().unwrap_or(0);
        if n >= self.max {
            self.tracked -= prune(ledger, self.window, now);
            let n = ledger.by_source.get(&src).copied().unwrap_or(0);
            if n >= self.max {
                return false;
            }
        }
        *ledger.by_source.entry(src).or_insert(0) += 1;
        true
    }

    /// Settles a [`reserve`](Self::reserve)d place: `Some(id)` when a new message was
    /// stored (it now holds the place until acknowledged), `None` when nothing new was
    /// stored (refused, failed, or a duplicate of a message already waiting).
    pub fn settle(&mut self, owner: &str, src: SourceAddr, stored: Option<&str>, now: Instant) {
        if self.max == 0 {
            return;
        }
        let Some(ledger) = self.owners.get_mut(owner) else {
            return;
        };
        let key = stored.and_then(id_key);
        let keep = match key {
            Some(k) if !ledger.ids.contains_key(&k) => {
                if self.tracked >= SOURCE_TRACKED_MAX {
                    tracing::warn!(%src, "source quota: too many tracked messages");
                    false
                } else {
                    ledger.ids.insert(k, (src, now));
                    self.tracked += 1;
                    true
                }
            }
            _ => false,
        };
        if !keep {
            release(ledger, src);
        }
        if ledger.by_source.is_empty() {
            self.owners.remove(owner);
        }
    }

    /// `owner` acknowledged `ids` (Pickup 3.0 `messages-received`): their places are free.
    pub fn acked(&mut self, owner: &str, ids: &[String]) {
        let Some(ledger) = self.owners.get_mut(owner) else {
            return;
        };
        for id in ids {
            if let Some((src, _)) = id_key(id).and_then(|k| ledger.ids.remove(&k)) {
                self.tracked -= 1;
                release(ledger, src);
            }
        }
        if ledger.by_source.is_empty() {
            self.owners.remove(owner);
        }
    }

    /// Messages `src` has waiting for `owner`, as far as this instance knows.
    #[must_use]
    pub fn waiting(&self, owner: &str, src: SourceAddr) -> u64 {
        self.owners
            .get(owner)
            .and_then(|l| l.by_source.get(&src))
            .copied()
            .unwrap_or(0)
    }
}

/// Drops entries older than `window`; returns how many.
fn prune(ledger: &mut Ledger, window: Duration, now: Instant) -> usize {
    let old: Vec<([u8; 16], SourceAddr)> = ledger
        .ids
        .iter()
        .filter(|(_, (_, t))| now.saturating_duration_since(*t) >= window)
        .map(|(k, (s, _))| (*k, *s))
        .collect();
    for (k, s) in &old {
        ledger.ids.remove(k);
        release(ledger, *s);
    }
    old.len()
}

fn release(ledger: &mut Ledger, src: SourceAddr) {
    if let Some(n) = ledger.by_source.get_mut(&src) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            ledger.by_source.remove(&src);
        }
    }
}

/// Store ids are 32 hex characters (`store::message_id`).
fn id_key(id: &str) -> Option<[u8; 16]> {
    let mut out = [0u8; 16];
    hex::decode_to_slice(id, &mut out).ok()?;
    Some(out)
}

/// Most keys a [`KeyedRate`] tracks; past it the idle ones are dropped first, and if all
/// are busy a new key is refused (its caller answers "rate limited") rather than growing.
pub const RATE_KEYS_MAX: usize = 200_000;

/// Token buckets, one per key (a client address, a DID): `rate` tokens per second, at most
/// `burst` saved. A key unseen for long enough to refill is forgotten.
pub struct KeyedRate<K> {
    rate: f64,
    burst: f64,
    max_keys: usize,
    buckets: HashMap<K, (f64, Instant)>,
}

impl<K: std::hash::Hash + Eq + Clone> KeyedRate<K> {
    /// `rate` per second (0: unlimited) with a burst of `burst` (at least 1).
    #[must_use]
    pub fn new(rate: u64, burst: u64, max_keys: usize) -> Self {
        Self {
            rate: rate as f64,
            burst: burst.max(1) as f64,
            max_keys,
            buckets: HashMap::new(),
        }
    }

    /// Takes one token for `key`; `false` when it has none left.
    pub fn allow(&mut self, key: &K, now: Instant) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        if !self.buckets.contains_key(key) && self.buckets.len() >= self.max_keys {
            // Forget buckets that are full again: they carry no state.
            let (rate, burst) = (self.rate, self.burst);
            self.buckets.retain(|_, (tokens, last)| {
                *tokens + now.saturating_duration_since(*last).as_secs_f64() * rate < burst
            });
            if self.buckets.len() >= self.max_keys {
                return false;
            }
        }
        let (tokens, last) = self.buckets.entry(key.clone()).or_insert((self.burst, now));
        let elapsed = now.saturating_duration_since(*last).as_secs_f64();
        *last = now;
        *tokens = (*tokens + elapsed * self.rate).min(self.burst);
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Keys tracked now.
    #[must_use]
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether no key is tracked.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
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
    fn keyed_rate_per_key_and_bounded() {
        let t0 = Instant::now();
        let mut r = KeyedRate::new(1, 2, 2);
        assert!(r.allow(&"a", t0));
        assert!(r.allow(&"a", t0));
        assert!(!r.allow(&"a", t0), "burst spent");
        assert!(r.allow(&"b", t0), "another key has its own bucket");
        assert!(!r.allow(&"c", t0), "table full of busy keys");
        let later = t0 + Duration::from_secs(5);
        assert!(r.allow(&"c", later), "refilled buckets are forgotten");
        assert!(r.allow(&"a", later));
        let mut off = KeyedRate::new(0, 0, 1);
        for _ in 0..10 {
            assert!(off.allow(&"x", t0));
        }
    }

    #[test]
    fn replay_cache_window_and_bound() {
        let t0 = Instant::now();
        let w = Duration::from_secs(300);
        let mut c = ReplayCache::new(w, REPLAY_CACHE_MAX);
        assert_eq!(c.check_and_insert("did:a", "1", t0), Seen::Fresh);
        assert_eq!(c.check_and_insert("did:a", "1", t0), Seen::Replay);
        assert_eq!(c.check_and_insert("did:b", "1", t0), Seen::Fresh);
        // Length-prefixed sender: no ambiguity between ("did:a1", "") and ("did:a", "1").
        assert_eq!(c.check_and_insert("did:a1", "", t0), Seen::Fresh);
        // A huge id costs one hash.
        let big = "x".repeat(600_000);
        assert_eq!(c.check_and_insert("did:a", &big, t0), Seen::Fresh);
        assert_eq!(c.check_and_insert("did:a", &big, t0), Seen::Replay);
        // After the window the pair is forgotten.
        let later = t0 + w;
        assert_eq!(c.check_and_insert("did:a", "1", later), Seen::Fresh);
        assert_eq!(c.len(), 1);
        // Bounded: full of fresh pairs, it refuses instead of growing.
        let mut c = ReplayCache::new(w, 1_000);
        for i in 0..1_000 {
            assert_eq!(c.check_and_insert("did:a", &i.to_string(), t0), Seen::Fresh);
        }
        assert_eq!(c.check_and_insert("did:a", "new", t0), Seen::Full);
        assert_eq!(c.check_and_insert("did:a", "new", later), Seen::Fresh);
        assert_eq!(c.len(), 1);
    }

    fn id(n: u8) -> String {
        hex::encode([n; 16])
    }

    #[test]
    fn source_quota_counts_waiting_messages() {
        let t0 = Instant::now();
        let w = Duration::from_secs(600);
        let s1 = SourceAddr::of("192.0.2.1".parse().unwrap());
        let s2 = SourceAddr::of("192.0.2.2".parse().unwrap());
        let mut q = SourceQuotas::new(2, w);
        for n in 0..2 {
            assert!(q.reserve("did:r", s1, t0));
            q.settle("did:r", s1, Some(&id(n)), t0);
        }
        assert!(!q.reserve("did:r", s1, t0), "third message from s1 refused");
        assert!(q.reserve("did:r", s2, t0), "another source is not affected");
        // A duplicate (already stored) does not take a second place.
        q.settle("did:r", s2, Some(&id(0)), t0);
        assert_eq!(q.waiting("did:r", s2), 0);
        assert!(
            q.reserve("did:other", s1, t0),
            "another recipient is not affected"
        );
        q.settle("did:other", s1, None, t0);
        // Acknowledged: the place is free again.
        q.acked("did:r", &[id(0), "not-hex".into()]);
        assert_eq!(q.waiting("did:r", s1), 1);
        assert!(q.reserve("did:r", s1, t0));
        q.settle("did:r", s1, Some(&id(2)), t0);
        assert!(!q.reserve("did:r", s1, t0));
        // Unacknowledged places are forgotten after the window.
        assert!(q.reserve("did:r", s1, t0 + w));
        q.settle("did:r", s1, None, t0 + w);
        q.acked("did:r", &[id(1), id(2)]);
        assert!(q.owners.is_empty());
        assert_eq!(q.tracked, 0);
        // 0: no quota.
        let mut q = SourceQuotas::new(0, w);
        for n in 0..10 {
            assert!(q.reserve("did:r", s1, t0));
            q.settle("did:r", s1, Some(&id(n)), t0);
        }
    }
}
