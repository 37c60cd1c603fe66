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
pub const KEY_LEN: usize = 32;
/// AES-GCM tag length.
pub const TAG_LEN: usize = 16;
/// Records per key epoch: the epoch of counter `c` is `c >> EPOCH_BITS` (spec §5.5).
pub const EPOCH_BITS: u32 = 20;
/// How many epochs a receiver derives forward at most for one record (spec §5.5).
pub const MAX_EPOCH_SKIP: u64 = 4;

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
        let mut cipher = RingResolver
            .resolve_cipher(&CipherChoice::AESGCM)
            .ok_or(SessionError::Setup("AES-GCM cipher unavailable"))?;
        cipher.set(&key);
        Ok(Self { cipher })
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

/// The receiving half: opens records, deriving later epoch keys on trial.
pub(crate) struct RecvCipher {
    current: Keyed,
    epoch: u64,
}

impl RecvCipher {
    pub(crate) fn new(key: Zeroizing<[u8; KEY_LEN]>) -> Result<Self> {
        Ok(Self {
            current: Keyed::new(key)?,
            epoch: 0,
        })
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Opens `ciphertext` into `out` (cleared first). On any failure the state is unchanged.
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
    ) -> Result<()> {
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
            return Ok(());
        }
        // Derive forward without touching `self.current`; commit only if it authenticates.
        let mut candidate = self.current.next()?;
        for _ in self.epoch + 1..epoch {
            candidate = candidate.next()?;
        }
        let n = candidate
            .cipher
            .decrypt(counter, ad, ciphertext, out)
            .map_err(|_| SessionError::Decrypt)?;
        out.truncate(n.min(pt_len));
        self.current = candidate;
        self.epoch = epoch;
        Ok(())
    }
}
