//! The key that seals TOTP secrets in the database. It is kept beside `ca.key` (mode 0600), not
//! in the database, so a copy of the database alone does not give anyone the second factors.

use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::RngCore;
use rand::rngs::OsRng;
use zeroize::Zeroizing;

use crate::service::ServiceError;

/// The file (in the data directory) holding the key.
pub const TOTP_KEY_FILE: &str = "totp.key";

const NONCE_LEN: usize = 12;

/// AES-256-GCM over TOTP secrets; the username is the associated data, so a sealed secret
/// moved to another account does not open.
pub struct TotpKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for TotpKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TotpKey(..)")
    }
}

/// Why the key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TotpKeyError {
    /// Reading or writing failed.
    #[error("{path}: {reason}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The file is readable by others.
    #[error("the TOTP key file {0} is readable by other users; run `chmod 600` on it")]
    Exposed(String),
    /// The file is not 32 bytes.
    #[error("the TOTP key file {0} is damaged (not 32 bytes)")]
    Damaged(String),
}

impl TotpKey {
    /// A fresh random key (kept in memory only).
    pub fn generate() -> Self {
        let mut key = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(key.as_mut());
        Self(key)
    }

    /// Loads `dir/totp.key`, creating it (mode 0600, written atomically) on first start.
    pub fn load_or_create(dir: &Path) -> Result<Self, TotpKeyError> {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(TOTP_KEY_FILE);
        let shown = path.display().to_string();
        let io = |e: &dyn std::fmt::Display| TotpKeyError::Io {
            path: shown.clone(),
            reason: e.to_string(),
        };
        match std::fs::metadata(&path) {
            Ok(meta) => {
                if meta.permissions().mode() & 0o077 != 0 {
                    return Err(TotpKeyError::Exposed(shown));
                }
                let bytes = Zeroizing::new(std::fs::read(&path).map_err(|e| io(&e))?);
                let key: [u8; 32] = bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| TotpKeyError::Damaged(shown.clone()))?;
                Ok(Self(Zeroizing::new(key)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Self::generate();
                peerchat_pki::write_atomically(&path, key.0.as_ref(), 0o600).map_err(|e| io(&e))?;
                Ok(key)
            }
            Err(e) => Err(io(&e)),
        }
    }

    /// `secret` sealed for `username`: nonce ‖ ciphertext.
    pub fn seal(&self, secret: &[u8], username: &str) -> Result<Vec<u8>, ServiceError> {
        let mut nonce = [0u8; NONCE_LEN];
        OsRng.fill_bytes(&mut nonce);
        let sealed = self
            .cipher()
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: secret,
                    aad: username.as_bytes(),
                },
            )
            .map_err(|_| ServiceError::Internal)?;
        Ok([nonce.as_slice(), &sealed].concat())
    }

    /// The secret in `sealed`, if it was sealed with this key for `username`.
    pub fn open(&self, sealed: &[u8], username: &str) -> Result<Zeroizing<Vec<u8>>, ServiceError> {
        if sealed.len() < NONCE_LEN {
            return Err(ServiceError::Internal);
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        self.cipher()
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: username.as_bytes(),
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| {
                tracing::error!("a TOTP secret does not open with the TOTP key");
                ServiceError::Internal
            })
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(self.0.as_ref().into())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_sealed_secret_opens_only_with_its_key_and_username_and_the_file_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let key = TotpKey::load_or_create(dir.path()).unwrap();
        let sealed = key.seal(b"12345678901234567890", "alice").unwrap();
        assert!(!sealed.windows(20).any(|w| w == b"12345678901234567890"));
        assert_eq!(
            key.open(&sealed, "alice").unwrap().as_slice(),
            b"12345678901234567890"
        );
        assert!(key.open(&sealed, "bob").is_err());
        assert!(TotpKey::generate().open(&sealed, "alice").is_err());

        use std::os::unix::fs::PermissionsExt;
        let path = dir.path().join(TOTP_KEY_FILE);
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let again = TotpKey::load_or_create(dir.path()).unwrap();
        assert_eq!(again.open(&sealed, "alice").unwrap().len(), 20);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            TotpKey::load_or_create(dir.path()),
            Err(TotpKeyError::Exposed(_))
        ));
        assert_eq!(format!("{key:?}"), "TotpKey(..)");
    }
}
