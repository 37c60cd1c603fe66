//! Directional AEAD with epoch keys (spec/session.md §5.2, §5.5).
//!
//! The two split keys of the handshake are used with ring's AES-256-GCM (the implementation
//! snow itself uses with `ring-accelerated`), held in key objects we own, so that the key of
//! a later epoch can be derived into a *second* object and tried without destroying the
//! current one: a forged record that claims a later epoch fails to authenticate and leaves
//! the receiver exactly as it was. Records are sealed and opened **in place** (the frame is
//! encoded straight into the outbox and encrypted there; a received record is copied once
//! and decrypted where it lies): no scratch buffer, no zero-filling, no second copy
//! (spec/session.md §11 "Performance note"). Raw key bytes exist only transiently, in
//! zeroizing buffers.

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use zeroize::Zeroizing;

use crate::error::{Result, SessionError};

/// AES-256-GCM key length.
pub(crate) const KEY_LEN: usize = 32;
/// AES-GCM tag length.
pub(crate) const TAG_LEN: usize = 16;
/// Records per key epoch: the epoch of counter `c` is `c >> EPOCH_BITS` (spec §5.5).
pub const EPOCH_BITS: u32 = 20;
/// How many epochs a receiver derives forward at most for one record (spec §5.5). Records
/// lost with a dead path may span many epochs (a sender rekeys every 1 GiB / 10 min / 2^20
/// records, also into a dead path); 4,096 epochs is beyond any real outage, and the bound
/// caps the work a forged record can cause (one AES key setup and block per epoch, a few ms).
pub const MAX_EPOCH_SKIP: u64 = 4096;

/// The epoch that counter `counter` belongs to.
#[must_use]
pub fn epoch_of(counter: u64) -> u64 {
    counter >> EPOCH_BITS
}

/// The Noise AESGCM nonce (Noise spec §12.4): 32 zero bits, then the counter big-endian.
fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; aead::NONCE_LEN];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

/// An AEAD key object: the seam that lets the tests watch which keys are installed.
pub(crate) trait AeadKey {
    /// Replaces the key (and its schedule) in place.
    fn set(&mut self, key: &[u8; KEY_LEN]);
    /// Encrypts `in_out[..len - TAG_LEN]` in place and writes the tag into the last
    /// [`TAG_LEN`] bytes (written there directly: no tag copy through the stack, spec §11).
    /// `in_out` is at least [`TAG_LEN`] bytes.
    fn seal_in_place(&self, counter: u64, ad: &[u8], in_out: &mut [u8]);
    /// Decrypts `in_out` (ciphertext and tag) in place; returns the plaintext length.
    fn open_in_place(&self, counter: u64, ad: &[u8], in_out: &mut [u8]) -> Option<usize>;
}

/// ring's AES-256-GCM.
struct RingAesGcm(LessSafeKey);

impl RingAesGcm {
    fn new(key: &[u8; KEY_LEN]) -> Result<Self> {
        let k = UnboundKey::new(&AES_256_GCM, key)
            .map_err(|_| SessionError::Setup("AES-GCM cipher unavailable"))?;
        Ok(Self(LessSafeKey::new(k)))
    }
}

impl AeadKey for RingAesGcm {
    fn set(&mut self, key: &[u8; KEY_LEN]) {
        // A 32-byte key is always accepted by ring for AES-256-GCM.
        if let Ok(k) = UnboundKey::new(&AES_256_GCM, key) {
            self.0 = LessSafeKey::new(k);
        }
    }

    fn seal_in_place(&self, counter: u64, ad: &[u8], in_out: &mut [u8]) {
        let Some(pt_len) = in_out.len().checked_sub(TAG_LEN) else {
            return;
        };
        let (pt, tag_out) = in_out.split_at_mut(pt_len);
        // ring fails only for inputs beyond GCM's 64 GiB limit; records are ≤ 32 KiB.
        if let Ok(t) = self
            .0
            .seal_in_place_separate_tag(nonce(counter), Aad::from(ad), pt)
        {
            tag_out.copy_from_slice(t.as_ref());
        }
    }

    fn open_in_place(&self, counter: u64, ad: &[u8], in_out: &mut [u8]) -> Option<usize> {
        self.0
            .open_in_place(nonce(counter), Aad::from(ad), in_out)
            .ok()
            .map(|pt| pt.len())
    }
}

/// One key, held only inside its key object.
struct Keyed {
    cipher: Box<dyn AeadKey + Send + Sync>,
}

impl Keyed {
    fn new(key: Zeroizing<[u8; KEY_LEN]>) -> Result<Self> {
        Ok(Self {
            cipher: Box::new(RingAesGcm::new(&key)?),
        })
    }

    #[cfg(test)]
    fn with_cipher(mut cipher: Box<dyn AeadKey + Send + Sync>, key: &[u8; KEY_LEN]) -> Self {
        cipher.set(key);
        Self { cipher }
    }

    /// Noise REKEY (Noise spec §4.2): the first 32 bytes of
    /// `ENCRYPT(k, maxnonce, zerolen, zeros)`.
    fn next(&self) -> Result<Self> {
        // 32 zero bytes and room for the tag, which is discarded.
        let mut buf = Zeroizing::new([0u8; KEY_LEN + TAG_LEN]);
        self.cipher.seal_in_place(u64::MAX, &[], &mut buf[..]);
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        key.copy_from_slice(buf.get(..KEY_LEN).unwrap_or_default());
        Self::new(key)
    }
}

/// ring does not zeroize a key object on drop, and the key schedule inside is out of our
/// reach (no `unsafe`). Setting an all-zero key overwrites that schedule in place (`set`
/// assigns a new ring key to the same field), so a dropped epoch key does not linger in
/// freed memory. Best effort: the compiler could in principle elide the store before the
/// free, but it cannot see through the `dyn AeadKey` call to do so.
impl Drop for Keyed {
    fn drop(&mut self) {
        self.cipher.set(&[0u8; KEY_LEN]);
    }
}

/// The sending half: seals records with the key of the counter's epoch.
pub(crate) struct SendCipher {
    current: Keyed,
    epoch: u64,
}

impl SendCipher {
    pub(crate) fn new(key: Zeroizing<[u8; KEY_LEN]>) -> Result<Self> {
        Ok(Self {
            current: Keyed::new(key)?,
            epoch: 0,
        })
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Seals, in place, the record that fills `record[ad_start..]`: the header
    /// `record[ad_start..pt_start]` is the associated data, the plaintext after it is
    /// encrypted with nonce `counter`, and the tag is appended, so that
    /// `record[pt_start..]` becomes the ciphertext. Counters must never decrease (the caller
    /// guarantees it).
    pub(crate) fn seal_in_place(
        &mut self,
        counter: u64,
        record: &mut Vec<u8>,
        ad_start: usize,
        pt_start: usize,
    ) -> Result<()> {
        // The old key is dropped (and zeroized) as soon as the next epoch starts.
        while self.epoch < epoch_of(counter) {
            self.current = self.current.next()?;
            self.epoch += 1;
        }
        record.extend_from_slice(&[0; TAG_LEN]);
        let (ad, in_out) = record
            .get_mut(ad_start..)
            .and_then(|r| r.split_at_mut_checked(pt_start.checked_sub(ad_start)?))
            .ok_or(SessionError::State("seal buffer"))?;
        self.current.cipher.seal_in_place(counter, ad, in_out);
        Ok(())
    }
}

/// A later epoch's key that authenticated a record, not yet installed.
pub(crate) struct PendingEpoch {
    keyed: Keyed,
    epoch: u64,
}

/// The receiving half: opens records, deriving later epoch keys on trial.
pub(crate) struct RecvCipher {
    current: Keyed,
    epoch: u64,
    /// Keys derived to try records of later epochs, authenticated or not: the work that
    /// forged records can cause (spec/security.md §8).
    trial_keys_derived: u64,
}

impl RecvCipher {
    pub(crate) fn new(key: Zeroizing<[u8; KEY_LEN]>) -> Result<Self> {
        Ok(Self {
            current: Keyed::new(key)?,
            epoch: 0,
            trial_keys_derived: 0,
        })
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.epoch
    }

    pub(crate) fn trial_keys_derived(&self) -> u64 {
        self.trial_keys_derived
    }

    /// Opens, in place, the ciphertext and tag in `in_out` without changing any key state
    /// (only the count of trial derivations); returns the plaintext length (the plaintext
    /// is then `in_out[..len]`) and the later epoch's key if the record belongs to one; the
    /// caller installs it with [`RecvCipher::commit`] once it has decided to accept the
    /// record.
    ///
    /// # Errors
    /// [`SessionError::Decrypt`] if the record does not authenticate under the key of its
    /// counter's epoch, or claims an epoch that is older or too far ahead.
    pub(crate) fn open_in_place(
        &mut self,
        counter: u64,
        ad: &[u8],
        in_out: &mut [u8],
    ) -> Result<(usize, Option<PendingEpoch>)> {
        let epoch = epoch_of(counter);
        if epoch < self.epoch || epoch - self.epoch > MAX_EPOCH_SKIP {
            return Err(SessionError::Decrypt);
        }
        if in_out.len() < TAG_LEN {
            return Err(SessionError::Decrypt);
        }
        if epoch == self.epoch {
            let n = self
                .current
                .cipher
                .open_in_place(counter, ad, in_out)
                .ok_or(SessionError::Decrypt)?;
            return Ok((n, None));
        }
        // Derive forward without touching `self.current`.
        let mut candidate = self.current.next()?;
        self.trial_keys_derived += 1;
        for _ in self.epoch + 1..epoch {
            candidate = candidate.next()?;
            self.trial_keys_derived += 1;
        }
        let n = candidate
            .cipher
            .open_in_place(counter, ad, in_out)
            .ok_or(SessionError::Decrypt)?;
        Ok((
            n,
            Some(PendingEpoch {
                keyed: candidate,
                epoch,
            }),
        ))
    }

    /// Moves to a later epoch proven by an authenticated record; the old key is dropped.
    pub(crate) fn commit(&mut self, pending: PendingEpoch) {
        self.current = pending.keyed;
        self.epoch = pending.epoch;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::{Arc, Mutex};

    use super::{AeadKey, Keyed, KEY_LEN, TAG_LEN};

    /// A key object that only records the keys installed in it.
    struct Spy(Arc<Mutex<Vec<[u8; KEY_LEN]>>>);

    impl AeadKey for Spy {
        fn set(&mut self, key: &[u8; KEY_LEN]) {
            self.0.lock().unwrap().push(*key);
        }
        fn seal_in_place(&self, _: u64, _: &[u8], _: &mut [u8]) {}
        fn open_in_place(&self, _: u64, _: &[u8], _: &mut [u8]) -> Option<usize> {
            None
        }
    }

    #[test]
    fn a_dropped_epoch_key_is_overwritten_inside_its_cipher_object() {
        // spec/session.md §5.5 ("each side erases a key as soon as it has moved past its
        // epoch"): ring does not zeroize on drop, so `Keyed` overwrites the key.
        let keys = Arc::new(Mutex::new(Vec::new()));
        let keyed = Keyed::with_cipher(Box::new(Spy(Arc::clone(&keys))), &[7; KEY_LEN]);
        assert_eq!(*keys.lock().unwrap(), [[7; KEY_LEN]]);
        drop(keyed);
        assert_eq!(*keys.lock().unwrap(), [[7; KEY_LEN], [0; KEY_LEN]]);
    }

    #[test]
    fn in_place_seal_matches_snow_aes_gcm_and_opens() {
        // The in-place path must produce exactly what snow's AESGCM cipher (Noise nonce
        // encoding, spec §5.2) produces, so the wire is unchanged.
        use snow::params::CipherChoice;
        use snow::resolvers::{CryptoResolver, RingResolver};
        let key = [9u8; KEY_LEN];
        let mut snow_c = RingResolver.resolve_cipher(&CipherChoice::AESGCM).unwrap();
        snow_c.set(&key);
        let ours = Keyed::new(zeroize::Zeroizing::new(key)).unwrap();
        let pt = b"\x01\x00hello record";
        let mut expect = vec![0u8; pt.len() + TAG_LEN];
        snow_c.encrypt(0x0102_0304_0506, b"ad", pt, &mut expect);
        let mut buf = pt.to_vec();
        buf.extend_from_slice(&[0; TAG_LEN]);
        ours.cipher.seal_in_place(0x0102_0304_0506, b"ad", &mut buf);
        assert_eq!(buf, expect);
        let n = ours
            .cipher
            .open_in_place(0x0102_0304_0506, b"ad", &mut buf)
            .unwrap();
        assert_eq!(&buf[..n], pt);
        assert!(ours.cipher.open_in_place(7, b"ad", &mut expect).is_none());
    }
}
