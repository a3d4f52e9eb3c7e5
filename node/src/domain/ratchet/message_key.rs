use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::domain::kdf::{MESSAGE_KEY_INFO, hkdf_sha256};

/// The key of one message, used once. It expands to an AES-256-GCM key and nonce; since the key
/// is never reused, a derived nonce is safe.
#[derive(Clone, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub(crate) struct MessageKey {
    key: [u8; 32],
    index: u32,
}

/// AES-GCM refused the operation: on decryption, the message is not authentic.
#[derive(Debug)]
pub(crate) struct AeadFailure;

impl MessageKey {
    pub(crate) fn new(key: [u8; 32], index: u32) -> Self {
        Self { key, index }
    }

    pub(crate) fn index(&self) -> u32 {
        self.index
    }

    fn cipher(&self) -> (Aes256Gcm, [u8; 12]) {
        let okm = hkdf_sha256::<44>(None, &self.key, MESSAGE_KEY_INFO);
        let cipher = Aes256Gcm::new(okm[..32].into());
        let mut nonce = [0u8; 12];
        nonce.copy_from_slice(&okm[32..]);
        (cipher, nonce)
    }

    pub(crate) fn encrypt(&self, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, AeadFailure> {
        let (cipher, nonce) = self.cipher();
        cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| AeadFailure)
    }

    pub(crate) fn decrypt(&self, ciphertext: &[u8], aad: &[u8]) -> Result<Vec<u8>, AeadFailure> {
        let (cipher, nonce) = self.cipher();
        cipher
            .decrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .map_err(|_| AeadFailure)
    }
}

impl std::fmt::Debug for MessageKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MessageKey(index {}, <redacted>)", self.index)
    }
}
