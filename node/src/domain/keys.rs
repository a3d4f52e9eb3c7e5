//! Long-term and prekey material: the Ed25519 identity key (with its X25519 form), signed prekeys,
//! one-time prekeys and the bundle a peer fetches to start a session.
//!
//! Private halves zeroize on drop and their `Debug` shows only the public half.

use std::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

/// Domain separation for signed-prekey signatures, so no other signature by the identity key can
/// pass for one.
const SIGNED_PREKEY_CONTEXT: &[u8] = b"peerchat signed prekey v1";

/// Why bytes are not a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidKey {
    /// Not 32 bytes, or not a valid Ed25519 point.
    #[error("not a valid Ed25519 public key")]
    Ed25519,
    /// Not 32 bytes.
    #[error("not a 32-byte X25519 key")]
    X25519,
    /// A signature that is not 64 bytes.
    #[error("not a 64-byte signature")]
    Signature,
}

/// The identity key pair of a user: Ed25519 for signatures (also the certificate key and the
/// libp2p `PeerId`), and its X25519 form for X3DH (the secret is libsodium's
/// `crypto_sign_ed25519_sk_to_curve25519`, the public key the birational Edwards→Montgomery map).
pub struct IdentityKeyPair {
    signing: SigningKey,
    dh: StaticSecret,
    public: IdentityKey,
}

impl IdentityKeyPair {
    /// A fresh identity from `rng`.
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        Self::from_signing_key(SigningKey::generate(rng))
    }

    /// The identity behind an existing Ed25519 key.
    pub fn from_signing_key(signing: SigningKey) -> Self {
        let scalar = Zeroizing::new(signing.to_scalar_bytes());
        let dh = StaticSecret::from(*scalar);
        let public = IdentityKey::from_verifying_key(signing.verifying_key());
        Self {
            signing,
            dh,
            public,
        }
    }

    /// The 32-byte Ed25519 seed, for storage.
    pub fn to_seed(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.signing.to_bytes())
    }

    /// Rebuilds the identity from its stored seed.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self::from_signing_key(SigningKey::from_bytes(seed))
    }

    /// The public identity key.
    pub fn public(&self) -> &IdentityKey {
        &self.public
    }

    /// The Ed25519 signing key (for certificates and libp2p).
    pub fn signing_key(&self) -> &SigningKey {
        &self.signing
    }

    pub(crate) fn dh(&self, their: &PublicKey) -> x25519_dalek::SharedSecret {
        self.dh.diffie_hellman(their)
    }
}

impl fmt::Debug for IdentityKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityKeyPair")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

/// A user's public identity key: Ed25519, with its X25519 form precomputed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct IdentityKey {
    ed: VerifyingKey,
    x: PublicKey,
}

impl IdentityKey {
    /// From a verified Ed25519 key (e.g. taken from a peer's certificate).
    pub fn from_verifying_key(ed: VerifyingKey) -> Self {
        Self {
            ed,
            x: PublicKey::from(ed.to_montgomery().to_bytes()),
        }
    }

    /// From the 32-byte Ed25519 encoding.
    ///
    /// Decoding a point costs a square root and an inversion, and the same few keys (ours, our
    /// contacts') are decoded from stored sessions and contacts for every message, so valid keys
    /// are remembered (public values only, at most [`DECODED_KEYS`] of them).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, InvalidKey> {
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| InvalidKey::Ed25519)?;
        let cache = decoded_keys();
        if let Some(key) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(&bytes) {
            return Ok(*key);
        }
        let ed = VerifyingKey::from_bytes(&bytes).map_err(|_| InvalidKey::Ed25519)?;
        let key = Self::from_verifying_key(ed);
        let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= DECODED_KEYS {
            cache.clear();
        }
        cache.insert(bytes, key);
        Ok(key)
    }

    /// The 32-byte Ed25519 encoding (what the associated data and safety numbers use).
    pub fn to_bytes(&self) -> [u8; 32] {
        self.ed.to_bytes()
    }

    /// The Ed25519 key.
    pub fn verifying_key(&self) -> &VerifyingKey {
        &self.ed
    }

    pub(crate) fn x25519(&self) -> &PublicKey {
        &self.x
    }
}

/// Most decoded identity keys remembered by [`IdentityKey::from_bytes`].
pub const DECODED_KEYS: usize = 4096;

fn decoded_keys() -> &'static std::sync::Mutex<std::collections::HashMap<[u8; 32], IdentityKey>> {
    static KEYS: std::sync::OnceLock<
        std::sync::Mutex<std::collections::HashMap<[u8; 32], IdentityKey>>,
    > = std::sync::OnceLock::new();
    KEYS.get_or_init(Default::default)
}

impl fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdentityKey({})", hex8(&self.to_bytes()))
    }
}

impl Serialize for IdentityKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_bytes().serialize(s)
    }
}

impl<'de> Deserialize<'de> for IdentityKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes = <[u8; 32]>::deserialize(d)?;
        Self::from_bytes(&bytes).map_err(serde::de::Error::custom)
    }
}

/// Identifier of a prekey, chosen by its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PreKeyId(pub u32);

impl fmt::Display for PreKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A signed prekey with its secret, kept by its owner.
#[derive(Serialize, Deserialize)]
pub struct SignedPreKeyPair {
    id: PreKeyId,
    #[serde(with = "secret_serde")]
    secret: StaticSecret,
    #[serde(with = "public_serde")]
    public: PublicKey,
    #[serde(with = "signature_serde")]
    signature: Signature,
}

impl SignedPreKeyPair {
    /// A fresh signed prekey with id `id`, signed by `identity`.
    pub fn generate<R: RngCore + CryptoRng>(
        id: PreKeyId,
        identity: &IdentityKeyPair,
        rng: &mut R,
    ) -> Self {
        let secret = StaticSecret::random_from_rng(rng);
        let public = PublicKey::from(&secret);
        let signature = identity.signing.sign(&signed_prekey_message(id, &public));
        Self {
            id,
            secret,
            public,
            signature,
        }
    }

    /// Its id.
    pub fn id(&self) -> PreKeyId {
        self.id
    }

    /// The public part, to upload.
    pub fn public(&self) -> SignedPreKey {
        SignedPreKey {
            id: self.id,
            public: self.public,
            signature: self.signature,
        }
    }

    pub(crate) fn secret(&self) -> &StaticSecret {
        &self.secret
    }
}

impl fmt::Debug for SignedPreKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignedPreKeyPair")
            .field("id", &self.id)
            .field("public", &hex8(self.public.as_bytes()))
            .finish_non_exhaustive()
    }
}

/// The public half of a signed prekey, as published in bundles.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedPreKey {
    /// Its id.
    pub id: PreKeyId,
    /// The X25519 public key.
    #[serde(with = "public_serde")]
    pub public: PublicKey,
    /// Ed25519 signature by the identity key over the domain-separated encoding.
    #[serde(with = "signature_serde")]
    pub signature: Signature,
}

impl SignedPreKey {
    /// Builds one from wire bytes (the signature is checked by [`SignedPreKey::verify`]).
    pub fn from_parts(id: PreKeyId, public: &[u8], signature: &[u8]) -> Result<Self, InvalidKey> {
        let public: [u8; 32] = public.try_into().map_err(|_| InvalidKey::X25519)?;
        let signature = Signature::from_slice(signature).map_err(|_| InvalidKey::Signature)?;
        Ok(Self {
            id,
            public: PublicKey::from(public),
            signature,
        })
    }

    /// Checks the signature against `identity`.
    pub fn verify(&self, identity: &IdentityKey) -> Result<(), BadSignature> {
        identity
            .ed
            .verify(
                &signed_prekey_message(self.id, &self.public),
                &self.signature,
            )
            .map_err(|_| BadSignature)
    }
}

/// A signed prekey whose signature does not verify against the identity key it came with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the signed prekey's signature does not verify against the identity key")]
pub struct BadSignature;

impl fmt::Debug for SignedPreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SignedPreKey({}, {})",
            self.id,
            hex8(self.public.as_bytes())
        )
    }
}

fn signed_prekey_message(id: PreKeyId, public: &PublicKey) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNED_PREKEY_CONTEXT.len() + 36);
    m.extend_from_slice(SIGNED_PREKEY_CONTEXT);
    m.extend_from_slice(&id.0.to_be_bytes());
    m.extend_from_slice(public.as_bytes());
    m
}

/// A one-time prekey with its secret, kept by its owner until a peer uses it.
#[derive(Serialize, Deserialize)]
pub struct OneTimePreKeyPair {
    id: PreKeyId,
    #[serde(with = "secret_serde")]
    secret: StaticSecret,
    #[serde(with = "public_serde")]
    public: PublicKey,
}

impl OneTimePreKeyPair {
    /// A fresh one-time prekey with id `id`.
    pub fn generate<R: RngCore + CryptoRng>(id: PreKeyId, rng: &mut R) -> Self {
        let secret = StaticSecret::random_from_rng(rng);
        let public = PublicKey::from(&secret);
        Self { id, secret, public }
    }

    /// Its id.
    pub fn id(&self) -> PreKeyId {
        self.id
    }

    /// The public part, to upload.
    pub fn public(&self) -> OneTimePreKey {
        OneTimePreKey {
            id: self.id,
            public: self.public,
        }
    }

    pub(crate) fn secret(&self) -> &StaticSecret {
        &self.secret
    }
}

impl fmt::Debug for OneTimePreKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OneTimePreKeyPair")
            .field("id", &self.id)
            .field("public", &hex8(self.public.as_bytes()))
            .finish_non_exhaustive()
    }
}

/// The public half of a one-time prekey.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OneTimePreKey {
    /// Its id.
    pub id: PreKeyId,
    /// The X25519 public key.
    #[serde(with = "public_serde")]
    pub public: PublicKey,
}

impl OneTimePreKey {
    /// Builds one from wire bytes.
    pub fn from_parts(id: PreKeyId, public: &[u8]) -> Result<Self, InvalidKey> {
        let public: [u8; 32] = public.try_into().map_err(|_| InvalidKey::X25519)?;
        Ok(Self {
            id,
            public: PublicKey::from(public),
        })
    }
}

impl fmt::Debug for OneTimePreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "OneTimePreKey({}, {})",
            self.id,
            hex8(self.public.as_bytes())
        )
    }
}

/// What an initiator fetches to start a session: the responder's identity key, signed prekey and,
/// while the supply lasts, one one-time prekey.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreKeyBundle {
    /// The responder's identity key.
    pub identity: IdentityKey,
    /// The responder's current signed prekey.
    pub signed_prekey: SignedPreKey,
    /// A one-time prekey, if any was left.
    pub one_time_prekey: Option<OneTimePreKey>,
}

/// First four bytes of a key in hex: enough to tell keys apart in `Debug`, never a secret.
pub(crate) fn hex8(bytes: &[u8]) -> String {
    bytes
        .iter()
        .take(4)
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
        + "…"
}

mod secret_serde {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use x25519_dalek::StaticSecret;
    use zeroize::Zeroizing;

    pub fn serialize<S: Serializer>(secret: &StaticSecret, s: S) -> Result<S::Ok, S::Error> {
        Zeroizing::new(secret.to_bytes()).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<StaticSecret, D::Error> {
        let bytes = Zeroizing::new(<[u8; 32]>::deserialize(d)?);
        Ok(StaticSecret::from(*bytes))
    }
}

pub(crate) mod public_serde {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use x25519_dalek::PublicKey;

    pub fn serialize<S: Serializer>(key: &PublicKey, s: S) -> Result<S::Ok, S::Error> {
        key.as_bytes().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PublicKey, D::Error> {
        Ok(PublicKey::from(<[u8; 32]>::deserialize(d)?))
    }
}

pub(crate) mod signature_serde {
    use ed25519_dalek::Signature;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(sig: &Signature, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&sig.to_bytes())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Signature, D::Error> {
        let bytes: Vec<u8> = serde::Deserialize::deserialize(d)?;
        Signature::from_slice(&bytes).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn the_x25519_form_of_the_identity_matches_on_both_halves() {
        // The secret conversion (SHA-512 of the seed, as libsodium) and the public conversion
        // (Edwards→Montgomery) must describe the same X25519 key pair.
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..16 {
            let id = IdentityKeyPair::generate(&mut rng);
            assert_eq!(
                PublicKey::from(&id.dh).as_bytes(),
                id.public().x25519().as_bytes()
            );
        }
    }

    #[test]
    fn signed_prekeys_verify_only_under_their_identity() {
        let mut rng = StdRng::seed_from_u64(2);
        let alice = IdentityKeyPair::generate(&mut rng);
        let eve = IdentityKeyPair::generate(&mut rng);
        let spk = SignedPreKeyPair::generate(PreKeyId(7), &alice, &mut rng).public();
        assert!(spk.verify(alice.public()).is_ok());
        assert!(spk.verify(eve.public()).is_err());
        let mut renumbered = spk;
        renumbered.id = PreKeyId(8);
        assert!(
            renumbered.verify(alice.public()).is_err(),
            "the id is signed too"
        );
    }

    #[test]
    fn key_pairs_survive_serialization() {
        let mut rng = StdRng::seed_from_u64(3);
        let id = IdentityKeyPair::generate(&mut rng);
        let spk = SignedPreKeyPair::generate(PreKeyId(1), &id, &mut rng);
        let bytes = postcard::to_stdvec(&spk).unwrap();
        let back: SignedPreKeyPair = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back.public(), spk.public());
        assert_eq!(back.secret().to_bytes(), spk.secret().to_bytes());
        let again = IdentityKeyPair::from_seed(&id.to_seed());
        assert_eq!(again.public(), id.public());
    }
}
