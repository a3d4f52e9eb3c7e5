//! Adapters that let rcgen and rustls sign with an `ed25519-dalek` key, so the identity key
//! never has to be serialized to reach them.

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

use ed25519_dalek::{Signer as _, SigningKey};
use rustls::{SignatureAlgorithm, SignatureScheme};

/// An Ed25519 key as rcgen's [`rcgen::SigningKey`].
pub(crate) struct RcgenSigner<K: Borrow<SigningKey>> {
    key: K,
    public: [u8; 32],
}

impl<K: Borrow<SigningKey>> RcgenSigner<K> {
    pub(crate) fn new(key: K) -> Self {
        let public = key.borrow().verifying_key().to_bytes();
        Self { key, public }
    }

    pub(crate) fn key(&self) -> &SigningKey {
        self.key.borrow()
    }
}

impl<K: Borrow<SigningKey>> rcgen::PublicKeyData for RcgenSigner<K> {
    fn der_bytes(&self) -> &[u8] {
        &self.public
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ED25519
    }
}

impl<K: Borrow<SigningKey>> rcgen::SigningKey for RcgenSigner<K> {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        Ok(self.key.borrow().sign(msg).to_bytes().to_vec())
    }
}

/// A bare Ed25519 public key as rcgen's [`rcgen::PublicKeyData`].
pub(crate) struct RcgenPublicKey(pub(crate) [u8; 32]);

impl rcgen::PublicKeyData for RcgenPublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ED25519
    }
}

/// An Ed25519 key as a rustls signing key (TLS 1.3 `ed25519` signature scheme only).
#[derive(Clone)]
pub(crate) struct RustlsSigner(pub(crate) Arc<SigningKey>);

impl fmt::Debug for RustlsSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RustlsSigner")
            .field("public", &self.0.verifying_key())
            .finish_non_exhaustive()
    }
}

impl rustls::sign::SigningKey for RustlsSigner {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn rustls::sign::Signer>> {
        offered
            .contains(&SignatureScheme::ED25519)
            .then(|| Box::new(self.clone()) as Box<dyn rustls::sign::Signer>)
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::ED25519
    }
}

impl rustls::sign::Signer for RustlsSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        Ok(self.0.sign(message).to_bytes().to_vec())
    }

    fn scheme(&self) -> SignatureScheme {
        SignatureScheme::ED25519
    }
}
