//! An encrypted backup: the bytes of a snapshot sealed under a key derived from a passphrase.
//! The node's store key is wrapped the same way under the magic `PCSK` ([`seal_as`]).
//!
//! Layout: `"PCBK" ‖ version (1) ‖ m_kib (4, BE) ‖ t (4, BE) ‖ p (4, BE) ‖ salt (16) ‖ nonce (12)
//! ‖ AES-256-GCM(snapshot)`, the key from Argon2id(passphrase, salt, m, t, p) and everything
//! before the ciphertext authenticated as associated data, so a changed parameter is a failed
//! open, never a weaker key.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::{CryptoRng, RngCore};
use zeroize::Zeroizing;

/// The magic of a backup.
pub const BACKUP: &[u8; 4] = b"PCBK";
/// The magic of a node's store key wrapped under its passphrase.
pub const STORE_KEY: &[u8; 4] = b"PCSK";
const VERSION: u8 = 1;
const HEADER: usize = 4 + 1 + 12 + 16 + 12;

/// Argon2id's cost for a backup's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cost {
    /// Memory, KiB.
    pub m_kib: u32,
    /// Passes.
    pub t: u32,
    /// Lanes.
    pub p: u32,
}

impl Cost {
    /// What backups are made with: 64 MiB, three passes (OWASP's Argon2id guidance exceeded).
    pub const DEFAULT: Cost = Cost {
        m_kib: 64 * 1024,
        t: 3,
        p: 1,
    };
    /// The most a backup may ask of the machine opening it.
    const MAX: Cost = Cost {
        m_kib: 1024 * 1024,
        t: 16,
        p: 8,
    };
}

/// Why a backup could not be made or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackupError {
    /// Not a peerchat backup, or of a version this node does not know.
    #[error("this is not a peerchat backup (or one from a newer version)")]
    NotABackup,
    /// The passphrase is wrong, or the file was changed.
    #[error("the passphrase is wrong, or the backup was changed since it was made")]
    WrongPassphraseOrTampered,
    /// The passphrase is too short to protect a backup.
    #[error("a backup passphrase has at least 12 characters")]
    WeakPassphrase,
    /// Argon2 refused the parameters.
    #[error("the backup's key could not be derived")]
    Kdf,
}

fn key(passphrase: &str, salt: &[u8], cost: Cost) -> Result<Zeroizing<[u8; 32]>, BackupError> {
    let params =
        argon2::Params::new(cost.m_kib, cost.t, cost.p, Some(32)).map_err(|_| BackupError::Kdf)?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut key = Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(passphrase.as_bytes(), salt, key.as_mut())
        .map_err(|_| BackupError::Kdf)?;
    Ok(key)
}

/// Seals `snapshot` under `passphrase`, as a backup.
pub fn seal(
    snapshot: &[u8],
    passphrase: &str,
    cost: Cost,
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<Vec<u8>, BackupError> {
    seal_as(BACKUP, snapshot, passphrase, cost, rng)
}

/// Opens a backup made by [`seal`].
pub fn open(backup: &[u8], passphrase: &str) -> Result<Zeroizing<Vec<u8>>, BackupError> {
    open_as(BACKUP, backup, passphrase)
}

/// Seals `snapshot` under `passphrase`, marked `magic` so that one kind is never taken for the
/// other.
pub fn seal_as(
    magic: &[u8; 4],
    snapshot: &[u8],
    passphrase: &str,
    cost: Cost,
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<Vec<u8>, BackupError> {
    if passphrase.chars().count() < 12 {
        return Err(BackupError::WeakPassphrase);
    }
    let mut salt = [0u8; 16];
    let mut nonce = [0u8; 12];
    rng.fill_bytes(&mut salt);
    rng.fill_bytes(&mut nonce);
    let mut out = Vec::with_capacity(HEADER + snapshot.len() + 16);
    out.extend_from_slice(magic);
    out.push(VERSION);
    for n in [cost.m_kib, cost.t, cost.p] {
        out.extend_from_slice(&n.to_be_bytes());
    }
    out.extend_from_slice(&salt);
    out.extend_from_slice(&nonce);
    let key = key(passphrase, &salt, cost)?;
    let cipher = Aes256Gcm::new_from_slice(key.as_ref()).map_err(|_| BackupError::Kdf)?;
    let sealed = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: snapshot,
                aad: &out,
            },
        )
        .map_err(|_| BackupError::Kdf)?;
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// Opens what [`seal_as`] sealed with the same `magic`.
pub fn open_as(
    magic: &[u8; 4],
    backup: &[u8],
    passphrase: &str,
) -> Result<Zeroizing<Vec<u8>>, BackupError> {
    if backup.len() < HEADER + 16 || &backup[..4] != magic || backup[4] != VERSION {
        return Err(BackupError::NotABackup);
    }
    let number = |at: usize| {
        u32::from_be_bytes([backup[at], backup[at + 1], backup[at + 2], backup[at + 3]])
    };
    let cost = Cost {
        m_kib: number(5),
        t: number(9),
        p: number(13),
    };
    if cost.m_kib > Cost::MAX.m_kib || cost.t > Cost::MAX.t || cost.p > Cost::MAX.p {
        return Err(BackupError::NotABackup);
    }
    let (header, sealed) = backup.split_at(HEADER);
    let salt = &header[17..33];
    let nonce = &header[33..45];
    let key = key(passphrase, salt, cost)?;
    let cipher = Aes256Gcm::new_from_slice(key.as_ref()).map_err(|_| BackupError::Kdf)?;
    cipher
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: sealed,
                aad: header,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| BackupError::WrongPassphraseOrTampered)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::OsRng;

    const CHEAP: Cost = Cost {
        m_kib: 64,
        t: 1,
        p: 1,
    };
    const PASSPHRASE: &str = "correct horse battery staple";

    #[test]
    fn a_sealed_backup_opens_with_its_passphrase_only() {
        let sealed = seal(b"the history", PASSPHRASE, CHEAP, &mut OsRng).unwrap();
        assert!(!sealed.windows(11).any(|w| w == b"the history"));
        assert_eq!(&open(&sealed, PASSPHRASE).unwrap()[..], b"the history");
        assert_eq!(
            open(&sealed, "correct horse battery stapler"),
            Err(BackupError::WrongPassphraseOrTampered)
        );
    }

    #[test]
    fn any_changed_byte_is_refused() {
        let sealed = seal(b"the history", PASSPHRASE, CHEAP, &mut OsRng).unwrap();
        for at in [0, 4, 8, 20, 40, HEADER, sealed.len() - 1] {
            let mut changed = sealed.clone();
            changed[at] ^= 1;
            assert!(open(&changed, PASSPHRASE).is_err(), "byte {at}");
        }
        assert_eq!(open(b"PCBK", PASSPHRASE), Err(BackupError::NotABackup));
        assert_eq!(
            open_as(STORE_KEY, &sealed, PASSPHRASE),
            Err(BackupError::NotABackup),
            "a backup is not a store key"
        );
        assert_eq!(
            open(&sealed[..HEADER], PASSPHRASE),
            Err(BackupError::NotABackup)
        );
    }

    #[test]
    fn a_backup_asking_for_absurd_memory_is_refused_before_deriving() {
        let mut sealed = seal(b"x", PASSPHRASE, CHEAP, &mut OsRng).unwrap();
        sealed[5..9].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(open(&sealed, PASSPHRASE), Err(BackupError::NotABackup));
    }

    #[test]
    fn a_short_passphrase_is_refused() {
        assert_eq!(
            seal(b"x", "short", CHEAP, &mut OsRng),
            Err(BackupError::WeakPassphrase)
        );
    }
}
