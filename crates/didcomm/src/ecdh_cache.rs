//! An opt-in memo of static-static X25519 results for ECDH-1PU (authcrypt).
//!
//! ECDH-1PU derives its key-wrapping key from `Ze || Zs` (draft-madden-jose-ecdh-1pu-04
//! §2.2): `Ze` uses the fresh ephemeral key and changes with every message, but
//! `Zs = X25519(sender static, recipient static)` is the same for every message between
//! the same two keys. A party that exchanges many authcrypt messages with the same peers
//! (a mediator pushing deliveries and reading acknowledgments) can remember `Zs` and save
//! one of the two or three scalar multiplications per message. The bytes on the wire are
//! identical with and without the cache.
//!
//! Entries are keyed by SHA-256 over a domain label, our secret and the peer's public key,
//! so a cache shared by several identities can never hand one identity's result to
//! another, and the map holds no private key. Values are zeroized when evicted or
//! dropped. Only successful (contributory) results are stored; a low-order peer key is
//! refused every time ([`Error::Crypto`]). The cache is bounded: when full, the oldest
//! half of the entries (by insertion) is dropped.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey as XPublic, StaticSecret};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// Domain label of the cache key hash.
const LABEL: &[u8] = b"mpc-did didcomm static ECDH cache v1";

#[derive(Default)]
struct Inner {
    map: HashMap<[u8; 32], Zeroizing<[u8; 32]>>,
    order: VecDeque<[u8; 32]>,
}

/// Bounded, thread-safe memo of `X25519(our static secret, peer static public)`.
///
/// Pass it to [`crate::pack_encrypted_with`], [`crate::unpack_with`],
/// [`crate::jose::encrypt_with`] or [`crate::jose::Jwe::decrypt_with`].
///
/// ```
/// use mpc_did_didcomm::StaticEcdhCache;
/// use x25519_dalek::{PublicKey, StaticSecret};
///
/// let cache = StaticEcdhCache::new(1000);
/// let ours = StaticSecret::from([7u8; 32]);
/// let theirs = PublicKey::from(&StaticSecret::from([9u8; 32])).to_bytes();
/// let a = cache.shared(&ours, &theirs)?;
/// let b = cache.shared(&ours, &theirs)?; // served from the cache
/// assert_eq!(*a, *b);
/// assert_eq!(*a, ours.diffie_hellman(&PublicKey::from(theirs)).to_bytes());
/// # Ok::<(), mpc_did_didcomm::Error>(())
/// ```
pub struct StaticEcdhCache {
    inner: Mutex<Inner>,
    capacity: usize,
}

impl std::fmt::Debug for StaticEcdhCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the shared secrets.
        f.debug_struct("StaticEcdhCache")
            .field("len", &self.len())
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl StaticEcdhCache {
    /// A cache holding at most `capacity` peer results (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            capacity: capacity.max(1),
        }
    }

    /// Number of entries held.
    pub fn len(&self) -> usize {
        self.inner.lock().map_or(0, |i| i.map.len())
    }

    /// `true` if nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `X25519(secret, public)`, from the cache or computed (and then remembered).
    ///
    /// # Errors
    /// [`Error::Crypto`] if `public` is a low-order point (all-zero shared secret,
    /// RFC 7748 §6.1); such results are never cached.
    pub fn shared(&self, secret: &StaticSecret, public: &[u8; 32]) -> Result<Zeroizing<[u8; 32]>> {
        let key = {
            let ours = Zeroizing::new(secret.to_bytes());
            let mut h = Sha256::new();
            h.update(LABEL);
            h.update(ours.as_slice());
            h.update(public);
            let k: [u8; 32] = h.finalize().into();
            k
        };
        if let Ok(inner) = self.inner.lock() {
            if let Some(z) = inner.map.get(&key) {
                return Ok(z.clone());
            }
        }
        // Computed outside the lock: two threads may race to fill one entry, which only
        // costs a duplicate computation of the same value.
        let z = x25519_checked(secret, public)?;
        if let Ok(mut inner) = self.inner.lock() {
            if !inner.map.contains_key(&key) {
                if inner.map.len() >= self.capacity {
                    let drop_n = (self.capacity / 2).max(1);
                    for _ in 0..drop_n {
                        match inner.order.pop_front() {
                            Some(old) => {
                                inner.map.remove(&old);
                            }
                            None => break,
                        }
                    }
                }
                inner.map.insert(key, z.clone());
                inner.order.push_back(key);
            }
        }
        Ok(z)
    }
}

/// X25519 refusing a non-contributory (low-order) result, as the JOSE layer does.
pub(crate) fn x25519_checked(
    secret: &StaticSecret,
    public: &[u8; 32],
) -> Result<Zeroizing<[u8; 32]>> {
    let shared = secret.diffie_hellman(&XPublic::from(*public));
    if !shared.was_contributory() {
        return Err(Error::Crypto);
    }
    Ok(Zeroizing::new(shared.to_bytes()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn public(seed: u8) -> [u8; 32] {
        XPublic::from(&StaticSecret::from([seed; 32])).to_bytes()
    }

    #[test]
    fn cached_value_equals_direct_ecdh_and_is_per_secret() {
        let cache = StaticEcdhCache::new(16);
        let a = StaticSecret::from([1; 32]);
        let b = StaticSecret::from([2; 32]);
        let p = public(3);
        let za = cache.shared(&a, &p).unwrap();
        assert_eq!(*za, a.diffie_hellman(&XPublic::from(p)).to_bytes());
        // Same peer, other secret: a different entry, never the first one's value.
        let zb = cache.shared(&b, &p).unwrap();
        assert_eq!(*zb, b.diffie_hellman(&XPublic::from(p)).to_bytes());
        assert_ne!(*za, *zb);
        assert_eq!(cache.len(), 2);
        // A hit returns the same bytes and adds nothing.
        assert_eq!(*cache.shared(&a, &p).unwrap(), *za);
        assert_eq!(cache.len(), 2);
    }

    // The cache changes nothing on the wire: a JWE packed with it opens without it and
    // the other way round (ECDH-1PU, draft-madden-jose-ecdh-1pu-04 §2.2).
    #[test]
    fn authcrypt_with_and_without_cache_interoperate() {
        use crate::jose::{encrypt, encrypt_with, ContentAlg, Jwe, RecipientKey, SenderKey};
        let cache = StaticEcdhCache::new(16);
        let alice = StaticSecret::from([5; 32]);
        let bob = StaticSecret::from([6; 32]);
        let (alice_pub, bob_pub) = (public(5), public(6));
        let rk = [RecipientKey {
            kid: "did:ex:bob#x",
            public: bob_pub,
        }];
        let sk = SenderKey {
            kid: "did:ex:alice#x",
            secret: &alice,
        };
        for round in 0..3 {
            let cached = encrypt_with(
                b"hi",
                &rk,
                Some(&sk),
                ContentAlg::A256CbcHs512,
                Some(&cache),
            )
            .unwrap();
            let jwe = Jwe::parse(&serde_json::from_str(&cached).unwrap()).unwrap();
            assert_eq!(
                jwe.decrypt("did:ex:bob#x", &bob, Some(&alice_pub)).unwrap(),
                b"hi",
                "round {round}"
            );
            let plain = encrypt(b"ho", &rk, Some(&sk), ContentAlg::A256CbcHs512).unwrap();
            let jwe = Jwe::parse(&serde_json::from_str(&plain).unwrap()).unwrap();
            assert_eq!(
                jwe.decrypt_with("did:ex:bob#x", &bob, Some(&alice_pub), Some(&cache))
                    .unwrap(),
                b"ho"
            );
            // A wrong sender key still fails, cached or not.
            assert!(jwe
                .decrypt_with("did:ex:bob#x", &bob, Some(&public(7)), Some(&cache))
                .is_err());
        }
        // Alice's side and Bob's side each hold one entry (and the failed third key one).
        assert_eq!(cache.len(), 3);
    }

    #[test]
    fn low_order_point_is_refused_and_not_cached() {
        let cache = StaticEcdhCache::new(16);
        let a = StaticSecret::from([1; 32]);
        // The identity point (u = 0) is of low order: all-zero shared secret.
        assert!(matches!(cache.shared(&a, &[0u8; 32]), Err(Error::Crypto)));
        assert!(matches!(cache.shared(&a, &[0u8; 32]), Err(Error::Crypto)));
        assert!(cache.is_empty());
    }

    #[test]
    fn stays_bounded_and_still_correct_after_eviction() {
        let cache = StaticEcdhCache::new(8);
        let a = StaticSecret::from([1; 32]);
        for seed in 10..40u8 {
            let p = public(seed);
            let z = cache.shared(&a, &p).unwrap();
            assert_eq!(*z, a.diffie_hellman(&XPublic::from(p)).to_bytes());
            assert!(cache.len() <= 8);
        }
        // An evicted early entry is recomputed correctly.
        let p = public(10);
        assert_eq!(
            *cache.shared(&a, &p).unwrap(),
            a.diffie_hellman(&XPublic::from(p)).to_bytes()
        );
    }
}
