//! PEM files for Ed25519 private keys, in the form OpenSSL reads.

use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, KeypairBytes};
use zeroize::Zeroizing;

/// Why a PEM private key could not be read or written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a PKCS#8 Ed25519 private key")]
pub struct BadKeyFile;

/// PKCS#8 v1 PEM (`-----BEGIN PRIVATE KEY-----`): the private key without the optional public
/// key, which OpenSSL 3.0 does not read for Ed25519.
pub fn private_key_to_pem(key: &SigningKey) -> Result<Zeroizing<String>, BadKeyFile> {
    KeypairBytes {
        secret_key: key.to_bytes(),
        public_key: None,
    }
    .to_pkcs8_pem(LineEnding::LF)
    .map_err(|_| BadKeyFile)
}

/// Reads a PKCS#8 (v1 or v2) PEM Ed25519 private key.
pub fn private_key_from_pem(pem: &str) -> Result<SigningKey, BadKeyFile> {
    SigningKey::from_pkcs8_pem(pem).map_err(|_| BadKeyFile)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_junk() {
        let key = SigningKey::generate(&mut rand::thread_rng());
        let pem = private_key_to_pem(&key).unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert_eq!(
            private_key_from_pem(&pem).unwrap().to_bytes(),
            key.to_bytes()
        );
        assert_eq!(private_key_from_pem("junk"), Err(BadKeyFile));
    }
}
