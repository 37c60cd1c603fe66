//! What counts as one *source* of connections for per-source limits, a counter of open
//! connections per source and token buckets per key ([`KeyedRate`]) (spec/rendezvous.md §4.1,
//! §7.1, spec/mediator.md §6.1). No I/O and no clock (callers pass `now`): the
//! relay and STUN servers, the mediator and a party's path listener all count with these.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

/// One source: an IPv4 address, or the /64 prefix of an IPv6 address (one subscriber
/// usually holds a whole /64, so per-address limits would not bind there). IPv4-mapped
/// IPv6 addresses count as their IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SourceAddr(IpAddr);

impl SourceAddr {
    /// The source `ip` belongs to.
    #[must_use]
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Self(ip),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self(IpAddr::V4(v4)),
                None => {
                    let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                    Self(IpAddr::V6(prefix.into()))
                }
            },
        }
    }

    /// The IPv4 address, or the IPv6 /64 prefix with its host bits zero.
    #[must_use]
    pub fn ip(self) -> IpAddr {
        self.0
    }
}

impl std::fmt::Display for SourceAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V4(a) => write!(f, "{a}"),
            IpAddr::V6(a) => write!(f, "{a}/64"),
        }
    }
}

/// Open connections per source; a source with none is forgotten, so the table holds only
/// sources with something open.
#[derive(Debug, Default, Clone)]
pub struct SourceCounts(HashMap<SourceAddr, usize>);

impl SourceCounts {
    /// Counts one more connection from `source`, unless it has `max` open already.
    pub fn try_add(&mut self, source: SourceAddr, max: usize) -> bool {
        let n = self.0.entry(source).or_insert(0);
        if *n >= max {
            if *n == 0 {
                self.0.remove(&source);
            }
            return false;
        }
        *n += 1;
        true
    }

    /// Counts one more connection from `source` whatever it has open (the caller checked
    /// [`SourceCounts::count`] itself).
    pub fn add(&mut self, source: SourceAddr) {
        *self.0.entry(source).or_insert(0) += 1;
    }

    /// Counts one connection from `source` as closed.
    pub fn remove(&mut self, source: SourceAddr) {
        if let Some(n) = self.0.get_mut(&source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.0.remove(&source);
            }
        }
    }

    /// Connections open from `source`.
    #[must_use]
    pub fn count(&self, source: SourceAddr) -> usize {
        self.0.get(&source).copied().unwrap_or(0)
    }

    /// Sources with at least one connection open.
    #[must_use]
    pub fn sources(&self) -> usize {
        self.0.len()
    }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ipv6_is_grouped_by_64_and_mapped_ipv4_is_ipv4() {
        let a = SourceAddr::of("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = SourceAddr::of("2001:db8:1:2:bbbb::2".parse().unwrap());
        let c = SourceAddr::of("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.to_string(), "2001:db8:1:2::/64");
        let m = SourceAddr::of("::ffff:198.51.100.7".parse().unwrap());
        assert_eq!(m, SourceAddr::of("198.51.100.7".parse().unwrap()));
    }

    #[test]
    fn counts_cap_per_source_and_forget_empty_sources() {
        let (x, y) = (
            SourceAddr::of("198.51.100.1".parse().unwrap()),
            SourceAddr::of("198.51.100.2".parse().unwrap()),
        );
        let mut c = SourceCounts::default();
        assert!(c.try_add(x, 2) && c.try_add(x, 2));
        assert!(!c.try_add(x, 2), "third from one source refused");
        assert!(c.try_add(y, 2), "another source unaffected");
        c.remove(x);
        assert!(c.try_add(x, 2));
        assert!(!c.try_add(y, 0), "max 0 refuses");
        for _ in 0..3 {
            c.remove(x);
        }
        c.remove(y);
        assert_eq!((c.count(x), c.sources()), (0, 0));
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
        let later = t0 + std::time::Duration::from_secs(5);
        assert!(r.allow(&"c", later), "refilled buckets are forgotten");
        assert!(r.allow(&"a", later));
        let mut off = KeyedRate::new(0, 0, 1);
        for _ in 0..10 {
            assert!(off.allow(&"x", t0));
        }
    }
}
