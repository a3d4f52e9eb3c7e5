//! Safety numbers: Signal's numeric fingerprint, so two people can check they see the same keys.
//!
//! Each side's half is SHA-512 iterated 5200 times: `H(version ‖ key ‖ id ‖ key)` once, then
//! `H(previous ‖ key)`. The first 30 bytes give six 5-digit chunks (each 5 bytes, big-endian,
//! mod 100000). The two 30-digit halves are ordered so that both sides display the same 60 digits.

use std::fmt;

use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;

use super::keys::IdentityKey;

/// Iterations of SHA-512 per half.
pub const ITERATIONS: u32 = 5200;
/// Version of the scannable form.
pub const SCANNABLE_VERSION: u8 = 1;
/// The version prefix hashed into each half.
const FINGERPRINT_VERSION: [u8; 2] = [0, 0];

/// The safety number of a conversation, seen from one side.
#[derive(Clone, PartialEq, Eq)]
pub struct SafetyNumber {
    digits: String,
    local: [u8; 32],
    remote: [u8; 32],
}

impl SafetyNumber {
    /// From raw key bytes and identifiers (the construction itself, as in libsignal).
    pub fn from_raw(
        local_id: &[u8],
        local_key: &[u8],
        remote_id: &[u8],
        remote_key: &[u8],
    ) -> Self {
        let local = half(local_id, local_key);
        let remote = half(remote_id, remote_key);
        let (l, r) = (digits(&local), digits(&remote));
        let digits = if l < r { l + &r } else { r + &l };
        let mut local32 = [0u8; 32];
        let mut remote32 = [0u8; 32];
        local32.copy_from_slice(&local[..32]);
        remote32.copy_from_slice(&remote[..32]);
        Self {
            digits,
            local: local32,
            remote: remote32,
        }
    }

    /// For two peerchat users: each identified by username and Ed25519 identity key.
    pub fn new(
        local_user: &str,
        local_key: &IdentityKey,
        remote_user: &str,
        remote_key: &IdentityKey,
    ) -> Self {
        Self::from_raw(
            local_user.as_bytes(),
            &local_key.to_bytes(),
            remote_user.as_bytes(),
            &remote_key.to_bytes(),
        )
    }

    /// The 60 digits.
    pub fn digits(&self) -> &str {
        &self.digits
    }

    /// The 60 digits as 12 groups of 5, separated by spaces.
    pub fn grouped(&self) -> String {
        self.digits
            .as_bytes()
            .chunks(5)
            .map(|c| std::str::from_utf8(c).unwrap_or_default())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Whether `typed` is this number, ignoring spaces and other separators.
    pub fn matches_digits(&self, typed: &str) -> bool {
        let only: String = typed.chars().filter(char::is_ascii_digit).collect();
        typed
            .chars()
            .all(|c| c.is_ascii_digit() || c.is_whitespace() || c == '-')
            && bool::from(only.as_bytes().ct_eq(self.digits.as_bytes()))
    }

    /// The scannable form (for a QR code): libsignal's `CombinedFingerprints` protobuf, version 1,
    /// with this side's half first.
    pub fn scannable(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 + 2 * 36);
        out.extend_from_slice(&[0x08, SCANNABLE_VERSION]);
        out.extend_from_slice(&[0x12, 0x22, 0x0a, 0x20]);
        out.extend_from_slice(&self.local);
        out.extend_from_slice(&[0x1a, 0x22, 0x0a, 0x20]);
        out.extend_from_slice(&self.remote);
        out
    }

    /// Whether the other side's scanned code shows the same keys (its halves are ours swapped).
    pub fn matches_scanned(&self, theirs: &[u8]) -> bool {
        let mut expected = Vec::with_capacity(76);
        expected.extend_from_slice(&[0x08, SCANNABLE_VERSION, 0x12, 0x22, 0x0a, 0x20]);
        expected.extend_from_slice(&self.remote);
        expected.extend_from_slice(&[0x1a, 0x22, 0x0a, 0x20]);
        expected.extend_from_slice(&self.local);
        theirs.len() == expected.len() && bool::from(theirs.ct_eq(&expected))
    }
}

impl fmt::Display for SafetyNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.grouped())
    }
}

impl fmt::Debug for SafetyNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SafetyNumber({})", self.grouped())
    }
}

fn half(id: &[u8], key: &[u8]) -> [u8; 64] {
    let mut hash = Sha512::new()
        .chain_update(FINGERPRINT_VERSION)
        .chain_update(key)
        .chain_update(id)
        .chain_update(key)
        .finalize();
    for _ in 1..ITERATIONS {
        hash = Sha512::new()
            .chain_update(hash)
            .chain_update(key)
            .finalize();
    }
    hash.into()
}

fn digits(hash: &[u8; 64]) -> String {
    hash[..30]
        .chunks_exact(5)
        .map(|c| {
            let n = c.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)) % 100_000;
            format!("{n:05}")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // libsignal `rust/protocol/src/fingerprint.rs`, `fingerprint_test_v1`: the serialized
    // identity keys (0x05-prefixed Curve25519) and phone-number identifiers, used as raw input.
    const ALICE_IDENTITY: &str =
        "0506863bc66d02b40d27b8d49ca7c09e9239236f9d7d25d6fcca5ce13c7064d868";
    const BOB_IDENTITY: &str = "05f781b6fb32fed9ba1cf2de978d4d5da28dc34046ae814402b5c0dbd96fda907b";
    const ALICE_ID: &str = "+14152222222";
    const BOB_ID: &str = "+14153333333";
    const DISPLAYABLE_V1: &str = "300354477692869396892869876765458257569162576843440918079131";
    const ALICE_SCANNABLE_V1: &str = "080112220a201e301a0353dce3dbe7684cb8336e85136cdc0ee96219494ada305d62a7bd61df1a220a20d62cbf73a11592015b6b9f1682ac306fea3aaf3885b84d12bca631e9d4fb3a4d";
    const BOB_SCANNABLE_V1: &str = "080112220a20d62cbf73a11592015b6b9f1682ac306fea3aaf3885b84d12bca631e9d4fb3a4d1a220a201e301a0353dce3dbe7684cb8336e85136cdc0ee96219494ada305d62a7bd61df";

    #[test]
    fn reproduces_libsignals_version_1_vector() {
        let a_key = hex::decode(ALICE_IDENTITY).unwrap();
        let b_key = hex::decode(BOB_IDENTITY).unwrap();
        let alice = SafetyNumber::from_raw(ALICE_ID.as_bytes(), &a_key, BOB_ID.as_bytes(), &b_key);
        let bob = SafetyNumber::from_raw(BOB_ID.as_bytes(), &b_key, ALICE_ID.as_bytes(), &a_key);

        assert_eq!(alice.digits(), DISPLAYABLE_V1);
        assert_eq!(bob.digits(), DISPLAYABLE_V1);
        assert_eq!(hex::encode(alice.scannable()), ALICE_SCANNABLE_V1);
        assert_eq!(hex::encode(bob.scannable()), BOB_SCANNABLE_V1);
        assert!(alice.matches_scanned(&bob.scannable()));
        assert!(!alice.matches_scanned(&alice.scannable()));
        assert_eq!(alice.grouped().split(' ').count(), 12);
        assert!(alice.matches_digits(&alice.grouped()));
        assert!(!alice.matches_digits(&DISPLAYABLE_V1.replace('3', "4")));
        assert!(!alice.matches_digits("30035"));
    }
}
