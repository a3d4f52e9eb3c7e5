use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop};

use super::message_key::MessageKey;
use crate::domain::kdf::hmac_sha256;

/// A sending or receiving chain key with the number of the next message it yields (KDF_CK).
#[derive(Clone, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub(crate) struct ChainKey {
    key: [u8; 32],
    index: u32,
}

impl ChainKey {
    pub(crate) fn new(key: [u8; 32]) -> Self {
        Self { key, index: 0 }
    }

    /// Number of the next message key.
    pub(crate) fn index(&self) -> u32 {
        self.index
    }

    /// The message key for message `index()`.
    pub(crate) fn message_key(&self) -> MessageKey {
        MessageKey::new(*hmac_sha256(&self.key, &[0x01]), self.index)
    }

    /// The chain key for message `index() + 1`. `None` once the 32-bit counter is used up.
    pub(crate) fn next(&self) -> Option<ChainKey> {
        Some(ChainKey {
            key: *hmac_sha256(&self.key, &[0x02]),
            index: self.index.checked_add(1)?,
        })
    }

    /// Walks the chain to message `n` (≥ `index()`): the keys of the messages skipped on the way,
    /// the key of message `n`, and the chain key after it. Changes nothing in `self`.
    pub(crate) fn advance_to(&self, n: u32) -> Option<(Vec<MessageKey>, MessageKey, ChainKey)> {
        let mut skipped = Vec::with_capacity(n.saturating_sub(self.index) as usize);
        let mut chain = self.clone();
        while chain.index < n {
            skipped.push(chain.message_key());
            chain = chain.next()?;
        }
        let key = chain.message_key();
        Some((skipped, key, chain.next()?))
    }
}

impl std::fmt::Debug for ChainKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChainKey(index {}, <redacted>)", self.index)
    }
}
