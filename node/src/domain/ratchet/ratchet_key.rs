use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use x25519_dalek::{PublicKey, SharedSecret, StaticSecret};
use zeroize::Zeroizing;

/// Our current ratchet key pair (DHs). The public key is derived when first needed (a scalar
/// multiplication), unless the session's stored form supplied it ([`RatchetKeyPair::restore_public`]).
pub(crate) struct RatchetKeyPair {
    secret: StaticSecret,
    public: std::sync::OnceLock<PublicKey>,
}

impl RatchetKeyPair {
    pub(crate) fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        Self::from_secret(StaticSecret::random_from_rng(rng))
    }

    pub(crate) fn from_secret(secret: StaticSecret) -> Self {
        Self {
            secret,
            public: std::sync::OnceLock::new(),
        }
    }

    /// Takes the public key as the session stored it beside the secret, saving its derivation.
    pub(crate) fn restore_public(&self, public: [u8; 32]) {
        let _ = self.public.set(PublicKey::from(public));
    }

    pub(crate) fn public(&self) -> RemoteRatchetKey {
        RemoteRatchetKey(self.public_key().to_bytes())
    }

    pub(crate) fn public_key(&self) -> PublicKey {
        *self.public.get_or_init(|| PublicKey::from(&self.secret))
    }

    /// DH with their ratchet key; `None` when the result is all zeros (a low-order key).
    pub(crate) fn dh(&self, theirs: &RemoteRatchetKey) -> Option<SharedSecret> {
        let shared = self.secret.diffie_hellman(&PublicKey::from(theirs.0));
        shared.was_contributory().then_some(shared)
    }
}

impl Serialize for RatchetKeyPair {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Zeroizing::new(self.secret.to_bytes()).serialize(s)
    }
}

impl<'de> Deserialize<'de> for RatchetKeyPair {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes = Zeroizing::new(<[u8; 32]>::deserialize(d)?);
        Ok(Self::from_secret(StaticSecret::from(*bytes)))
    }
}

impl std::fmt::Debug for RatchetKeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RatchetKeyPair({:?})", self.public())
    }
}

/// A ratchet public key of the other side (DHr), or ours as it appears in headers.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RemoteRatchetKey(pub(crate) [u8; 32]);

impl From<&PublicKey> for RemoteRatchetKey {
    fn from(key: &PublicKey) -> Self {
        Self(key.to_bytes())
    }
}

impl std::fmt::Debug for RemoteRatchetKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RemoteRatchetKey({})",
            crate::domain::keys::hex8(&self.0)
        )
    }
}
