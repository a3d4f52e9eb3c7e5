use serde::{Deserialize, Serialize};
use x25519_dalek::SharedSecret;
use zeroize::{Zeroize, ZeroizeOnDrop};

use super::chain_key::ChainKey;
use crate::domain::kdf::{ROOT_INFO, hkdf_sha256};

/// The root key: advanced by every DH ratchet step (KDF_RK).
#[derive(Clone, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub(crate) struct RootKey([u8; 32]);

impl RootKey {
    pub(crate) fn new(key: [u8; 32]) -> Self {
        Self(key)
    }

    /// KDF_RK: `(RK', CK) = HKDF(salt = RK, ikm = DH output)`.
    pub(crate) fn advance(&self, dh: &SharedSecret) -> (RootKey, ChainKey) {
        let out = hkdf_sha256::<64>(Some(&self.0), dh.as_bytes(), ROOT_INFO);
        let mut root = [0u8; 32];
        let mut chain = [0u8; 32];
        root.copy_from_slice(&out[..32]);
        chain.copy_from_slice(&out[32..]);
        (RootKey(root), ChainKey::new(chain))
    }
}

impl std::fmt::Debug for RootKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RootKey(<redacted>)")
    }
}
