//! Shared fixtures: a CA, identities issued by it, and an rcgen signer for hand-made CSRs.

use std::time::{Duration, SystemTime};

use ed25519_dalek::{Signer, SigningKey};
use peerchat_pki::{CertificateAuthority, IssuedCertificate, Username, build_csr};
use rand::SeedableRng;
use rand::rngs::StdRng;

pub fn rng() -> StdRng {
    StdRng::from_entropy()
}

/// A fixed instant, so validity tests do not depend on the clock.
pub fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

pub fn days(n: u64) -> Duration {
    Duration::from_secs(n * 24 * 3600)
}

pub fn user(name: &str) -> Username {
    Username::new(name).unwrap()
}

pub fn new_ca(now: SystemTime) -> CertificateAuthority {
    CertificateAuthority::generate("peerchat test CA", now, &mut rng()).unwrap()
}

/// A fresh identity key and a 30-day peer certificate for `name`.
pub fn identity(
    ca: &CertificateAuthority,
    name: &str,
    now: SystemTime,
) -> (SigningKey, IssuedCertificate) {
    let key = SigningKey::generate(&mut rng());
    let csr = build_csr(&key, &user(name)).unwrap();
    let cert = ca
        .issue_peer(
            &csr,
            &user(name),
            now,
            peerchat_pki::DEFAULT_PEER_VALIDITY,
            &mut rng(),
        )
        .unwrap();
    (key, cert)
}

/// An Ed25519 key as an rcgen signer, to build CSRs and certificates this crate would never make.
pub struct TestSigner(pub SigningKey, [u8; 32]);

impl TestSigner {
    pub fn new(key: SigningKey) -> Self {
        let public = key.verifying_key().to_bytes();
        Self(key, public)
    }
}

impl rcgen::PublicKeyData for TestSigner {
    fn der_bytes(&self) -> &[u8] {
        &self.1
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ED25519
    }
}

impl rcgen::SigningKey for TestSigner {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        Ok(self.0.sign(msg).to_bytes().to_vec())
    }
}
