//! X3DH key agreement (Signal specification), curve X25519, hash SHA-256.
//!
//! `SK = HKDF(salt = 0^32, F ‖ DH1 ‖ DH2 ‖ DH3 [‖ DH4], info = "peerchat X3DH v1")` with
//! `F = 0xFF × 32`, `DH1 = DH(IK_A, SPK_B)`, `DH2 = DH(EK_A, IK_B)`, `DH3 = DH(EK_A, SPK_B)`,
//! `DH4 = DH(EK_A, OPK_B)`.

use rand_core::{CryptoRng, RngCore};
use x25519_dalek::{PublicKey, SharedSecret, StaticSecret};
use zeroize::Zeroizing;

use super::kdf::{X3DH_INFO, hkdf_sha256};
use super::keys::{
    IdentityKey, IdentityKeyPair, OneTimePreKeyPair, PreKeyBundle, SignedPreKeyPair,
};
use super::message::PreKeyHeader;

/// Why X3DH could not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum X3dhError {
    /// The bundle's signed prekey is not signed by the bundle's identity key.
    #[error("the signed prekey's signature does not verify against the identity key")]
    BadSignedPreKeySignature,
    /// A Diffie-Hellman output was all zeros (a low-order public key): the key is refused.
    #[error("a public key in the exchange is of low order")]
    NonContributory,
    /// The initial message names a signed prekey other than the one supplied.
    #[error("the initial message uses signed prekey {wanted}, not the one supplied")]
    SignedPreKeyMismatch {
        /// Id named by the message.
        wanted: u32,
    },
    /// The initial message names a one-time prekey that was not supplied (already used or
    /// unknown): the message cannot be decrypted.
    #[error("the initial message uses a one-time prekey that is not available")]
    OneTimePreKeyMissing,
}

impl From<super::keys::BadSignature> for X3dhError {
    fn from(_: super::keys::BadSignature) -> Self {
        Self::BadSignedPreKeySignature
    }
}

/// The shared secret both sides derive: the initial root key of the Double Ratchet.
pub(crate) type SecretKey = Zeroizing<[u8; 32]>;

/// The initiator's result: the shared secret, the responder's signed prekey (the first remote
/// ratchet key) and the header to send with the first messages.
pub(crate) struct Initiated {
    pub(crate) secret: SecretKey,
    pub(crate) their_signed_prekey: PublicKey,
    pub(crate) header: PreKeyHeader,
}

/// Alice's side: checks the bundle's signature, then derives the secret with a fresh ephemeral key.
pub(crate) fn initiate<R: RngCore + CryptoRng>(
    identity: &IdentityKeyPair,
    bundle: &PreKeyBundle,
    rng: &mut R,
) -> Result<Initiated, X3dhError> {
    bundle.signed_prekey.verify(&bundle.identity)?;
    // Used for up to three DH computations, then dropped (and zeroized) with this frame.
    let ephemeral = StaticSecret::random_from_rng(rng);
    let ephemeral_public = PublicKey::from(&ephemeral);
    let spk = &bundle.signed_prekey.public;

    let dh1 = identity.dh(spk);
    let dh2 = ephemeral.diffie_hellman(bundle.identity.x25519());
    let dh3 = ephemeral.diffie_hellman(spk);
    let dh4 = bundle
        .one_time_prekey
        .map(|opk| ephemeral.diffie_hellman(&opk.public));

    let secret = derive(&dh1, &dh2, &dh3, dh4.as_ref())?;
    Ok(Initiated {
        secret,
        their_signed_prekey: *spk,
        header: PreKeyHeader {
            identity: *identity.public(),
            ephemeral: ephemeral_public,
            signed_prekey_id: bundle.signed_prekey.id,
            one_time_prekey_id: bundle.one_time_prekey.map(|k| k.id),
        },
    })
}

/// Bob's side: the same secret from his identity, the signed prekey and the one-time prekey the
/// header names.
pub(crate) fn respond(
    identity: &IdentityKeyPair,
    signed_prekey: &SignedPreKeyPair,
    one_time_prekey: Option<&OneTimePreKeyPair>,
    header: &PreKeyHeader,
) -> Result<SecretKey, X3dhError> {
    if header.signed_prekey_id != signed_prekey.id() {
        return Err(X3dhError::SignedPreKeyMismatch {
            wanted: header.signed_prekey_id.0,
        });
    }
    let opk = match (header.one_time_prekey_id, one_time_prekey) {
        (None, _) => None,
        (Some(id), Some(opk)) if opk.id() == id => Some(opk),
        (Some(_), _) => return Err(X3dhError::OneTimePreKeyMissing),
    };
    let dh1 = signed_prekey
        .secret()
        .diffie_hellman(header.identity.x25519());
    let dh2 = identity.dh(&header.ephemeral);
    let dh3 = signed_prekey.secret().diffie_hellman(&header.ephemeral);
    let dh4 = opk.map(|k| k.secret().diffie_hellman(&header.ephemeral));
    derive(&dh1, &dh2, &dh3, dh4.as_ref())
}

fn derive(
    dh1: &SharedSecret,
    dh2: &SharedSecret,
    dh3: &SharedSecret,
    dh4: Option<&SharedSecret>,
) -> Result<SecretKey, X3dhError> {
    let all = [Some(dh1), Some(dh2), Some(dh3), dh4];
    if all.iter().flatten().any(|dh| !dh.was_contributory()) {
        return Err(X3dhError::NonContributory);
    }
    let mut ikm = Zeroizing::new(Vec::with_capacity(32 * 5));
    ikm.extend_from_slice(&[0xFF; 32]);
    for dh in all.iter().flatten() {
        ikm.extend_from_slice(dh.as_bytes());
    }
    Ok(hkdf_sha256::<32>(None, &ikm, X3DH_INFO))
}

/// The identity keys in the order the associated data uses: initiator first.
pub(crate) fn associated_data(initiator: &IdentityKey, responder: &IdentityKey) -> [u8; 64] {
    let mut ad = [0u8; 64];
    ad[..32].copy_from_slice(&initiator.to_bytes());
    ad[32..].copy_from_slice(&responder.to_bytes());
    ad
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;
    use crate::domain::keys::PreKeyId;

    fn parties(
        rng: &mut StdRng,
    ) -> (
        IdentityKeyPair,
        IdentityKeyPair,
        SignedPreKeyPair,
        OneTimePreKeyPair,
    ) {
        let alice = IdentityKeyPair::generate(rng);
        let bob = IdentityKeyPair::generate(rng);
        let spk = SignedPreKeyPair::generate(PreKeyId(1), &bob, rng);
        let opk = OneTimePreKeyPair::generate(PreKeyId(9), rng);
        (alice, bob, spk, opk)
    }

    #[test]
    fn both_sides_derive_the_same_secret_with_and_without_a_one_time_prekey() {
        let mut rng = StdRng::seed_from_u64(1);
        let (alice, bob, spk, opk) = parties(&mut rng);
        for with_opk in [true, false] {
            let bundle = PreKeyBundle {
                identity: *bob.public(),
                signed_prekey: spk.public(),
                one_time_prekey: with_opk.then(|| opk.public()),
            };
            let init = initiate(&alice, &bundle, &mut rng).unwrap();
            let secret = respond(&bob, &spk, Some(&opk), &init.header).unwrap();
            assert_eq!(*init.secret, *secret);
            assert_eq!(init.header.one_time_prekey_id.is_some(), with_opk);
        }
    }

    #[test]
    fn the_one_time_prekey_changes_the_secret() {
        let mut rng = StdRng::seed_from_u64(2);
        let (alice, bob, spk, opk) = parties(&mut rng);
        let bundle = PreKeyBundle {
            identity: *bob.public(),
            signed_prekey: spk.public(),
            one_time_prekey: Some(opk.public()),
        };
        let init = initiate(&alice, &bundle, &mut rng).unwrap();
        let mut without = init.header;
        without.one_time_prekey_id = None;
        let secret = respond(&bob, &spk, None, &without).unwrap();
        assert_ne!(*init.secret, *secret);
    }
}
