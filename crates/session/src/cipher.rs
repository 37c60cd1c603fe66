//! Directional AEAD with epoch keys (spec/session.md §5.2, §5.5).
//!
//! The two split keys of the handshake are used with snow's own ring AES-256-GCM cipher
//! objects, which we own, so that the key of a later epoch can be derived into a *second*
//! cipher object and tried without destroying the current one: a forged record that claims
//! a later epoch fails to authenticate and leaves the receiver exactly as it was. Raw key
//! bytes exist only transiently, in zeroizing buffers.

use snow::params::CipherChoice;
use snow::resolvers::{CryptoResolver, RingResolver};
use snow::types::Cipher;
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

/// One key, held only inside its cipher object.
struct Keyed {
    cipher: Box<dyn Cipher>,
}

impl Keyed {
    fn new(key: Zeroizing<[u8; KEY_LEN]>) -> Result<Self> {
        let cipher = RingResolver
            .resolve_cipher(&CipherChoice::AESGCM)
            .ok_or(SessionError::Setup("AES-GCM cipher unavailable"))?;
        Ok(Self::with_cipher(cipher, &key))
    }

    fn with_cipher(mut cipher: Box<dyn Cipher>, key: &[u8; KEY_LEN]) -> Self {
        cipher.set(key);
        Self { cipher }
    }

    /// Noise REKEY (Noise spec §4.2): the first 32 bytes of
    /// `ENCRYPT(k, maxnonce, zerolen, zeros)`.
    fn next(&self) -> Result<Self> {
        let mut out = Zeroizing::new([0u8; KEY_LEN + TAG_LEN]);
        self.cipher
            .encrypt(u64::MAX, &[], &[0u8; KEY_LEN], &mut out[..]);
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        key.copy_from_slice(&out[..KEY_LEN]);
        Self::new(key)
    }
}

/// Neither snow nor ring zeroizes a cipher object on drop, and the key schedule inside is
/// out of our reach (no `unsafe`). Setting an all-zero key overwrites that schedule in place
/// (snow's `set` assigns a new ring key to the same field), so a dropped epoch key does not
/// linger in freed memory. Best effort: the compiler could in principle elide the store
/// before the free, but it cannot see through the `dyn Cipher` call to do so.
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

    /// Seals `plaintext` with nonce `counter` and associated data `ad`, appending the
    /// ciphertext and tag to `out`. Counters must never decrease (the caller guarantees it).
    pub(crate) fn seal(
        &mut self,
        counter: u64,
        ad: &[u8],
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<()> {
        // The old key is dropped (and zeroized) as soon as the next epoch starts.
        while self.epoch < epoch_of(counter) {
            self.current = self.current.next()?;
            self.epoch += 1;
        }
        let start = out.len();
        out.resize(start + plaintext.len() + TAG_LEN, 0);
        let dst = out
            .get_mut(start..)
            .ok_or(SessionError::State("seal buffer"))?;
        self.current.cipher.encrypt(counter, ad, plaintext, dst);
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

    /// Opens `ciphertext` into `out` (cleared first) without changing any key state (only
    /// the count of trial derivations). Returns the
    /// later epoch's key if the record belongs to one; the caller installs it with
    /// [`RecvCipher::commit`] once it has decided to accept the record.
    ///
    /// # Errors
    /// [`SessionError::Decrypt`] if the record does not authenticate under the key of its
    /// counter's epoch, or claims an epoch that is older or too far ahead.
    pub(crate) fn open(
        &mut self,
        counter: u64,
        ad: &[u8],
        ciphertext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<Option<PendingEpoch>> {
        let epoch = epoch_of(counter);
        if epoch < self.epoch || epoch - self.epoch > MAX_EPOCH_SKIP {
            return Err(SessionError::Decrypt);
        }
        let pt_len = ciphertext
            .len()
            .checked_sub(TAG_LEN)
            .ok_or(SessionError::Decrypt)?;
        out.clear();
        out.resize(ciphertext.len(), 0);
        if epoch == self.epoch {
            let n = self
                .current
                .cipher
                .decrypt(counter, ad, ciphertext, out)
                .map_err(|_| SessionError::Decrypt)?;
            out.truncate(n.min(pt_len));
            return Ok(None);
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
            .decrypt(counter, ad, ciphertext, out)
            .map_err(|_| SessionError::Decrypt)?;
        out.truncate(n.min(pt_len));
        Ok(Some(PendingEpoch {
            keyed: candidate,
            epoch,
        }))
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

    use super::{Cipher, Keyed, KEY_LEN};

    /// A cipher object that only records the keys installed in it.
    struct Spy(Arc<Mutex<Vec<[u8; KEY_LEN]>>>);

    impl Cipher for Spy {
        fn name(&self) -> &'static str {
            "spy"
        }
        fn set(&mut self, key: &[u8; KEY_LEN]) {
            self.0.lock().unwrap().push(*key);
        }
        fn encrypt(&self, _: u64, _: &[u8], _: &[u8], _: &mut [u8]) -> usize {
            0
        }
        fn decrypt(&self, _: u64, _: &[u8], _: &[u8], _: &mut [u8]) -> Result<usize, snow::Error> {
            Err(snow::Error::Decrypt)
        }
    }

    #[test]
    fn a_dropped_epoch_key_is_overwritten_inside_its_cipher_object() {
        // spec/session.md §5.5 ("each side erases a key as soon as it has moved past its
        // epoch"): neither snow nor ring zeroizes on drop, so `Keyed` overwrites the key.
        let keys = Arc::new(Mutex::new(Vec::new()));
        let keyed = Keyed::with_cipher(Box::new(Spy(Arc::clone(&keys))), &[7; KEY_LEN]);
        assert_eq!(*keys.lock().unwrap(), [[7; KEY_LEN]]);
        drop(keyed);
        assert_eq!(*keys.lock().unwrap(), [[7; KEY_LEN], [0; KEY_LEN]]);
    }
}
