//! The store key: a random 256-bit key under which the node's store seals its records (message
//! bodies, sessions, prekeys, the identity seed, file offers). It is kept in the OS keyring
//! where one answers (Secret Service, Keychain, Credential Manager), else wrapped under a key
//! derived from a passphrase (Argon2id, as backups are), and only on an explicit `--plain-store`
//! written unprotected beside the data.
//!
//! `DIR/store.key` (mode 0600) says which, as JSON:
//! `{"version":1,"protection":"keyring","entry":"<id>"}`,
//! `{"version":1,"protection":"passphrase","sealed":"<base64 PCSK…>"}` or
//! `{"version":1,"protection":"plain","key":"<base64>"}`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rand::RngCore;
use rand::rngs::OsRng;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::domain::backup::{self, BackupError, Cost, STORE_KEY};

/// The file, in the data directory, that says where the store key is.
pub const STORE_KEY_FILE: &str = "store.key";
/// The keyring service the key is filed under.
const KEYRING_SERVICE: &str = "peerchat";

/// The key the store seals its records with.
pub struct StoreKey(Zeroizing<[u8; 32]>);

impl StoreKey {
    /// A key from its bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// Its bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreKey(…)")
    }
}

/// How the store key is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protection {
    /// In the OS keyring.
    Keyring,
    /// Wrapped under a passphrase.
    Passphrase,
    /// Unprotected, beside the data (`--plain-store`).
    Plain,
}

/// What the user asked for, and how a passphrase may be had.
#[derive(Debug, Clone, Default)]
pub struct KeyOptions {
    /// A file holding the passphrase (its first line). For a new store it also chooses
    /// passphrase protection over the keyring.
    pub passphrase_file: Option<PathBuf>,
    /// Keep a new store's key unprotected beside the data.
    pub plain: bool,
    /// Ask on the terminal when a passphrase is needed and no file gives it (only when standard
    /// input is a terminal).
    pub ask: bool,
    /// The data is throwaway (the demo's): a plain store is expected and not warned about.
    pub throwaway: bool,
}

/// A place for secrets: the OS keyring, or a stand-in in tests.
pub trait Vault {
    /// The secret filed under `entry`, if any.
    fn get(&self, entry: &str) -> Result<Option<Vec<u8>>, String>;
    /// Files `secret` under `entry`.
    fn set(&self, entry: &str, secret: &[u8]) -> Result<(), String>;
}

/// The OS keyring: Secret Service on Linux, Keychain on macOS, Credential Manager on Windows.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsKeyring;

impl Vault for OsKeyring {
    fn get(&self, entry: &str) -> Result<Option<Vec<u8>>, String> {
        let entry = keyring::Entry::new(KEYRING_SERVICE, entry).map_err(|e| e.to_string())?;
        match entry.get_secret() {
            Ok(secret) => Ok(Some(secret)),
            Err(keyring::Error::NoEntry) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    fn set(&self, entry: &str, secret: &[u8]) -> Result<(), String> {
        keyring::Entry::new(KEYRING_SERVICE, entry)
            .and_then(|e| e.set_secret(secret))
            .map_err(|e| e.to_string())
    }
}

/// Why the store key could not be had. None of these names the key or the passphrase.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The passphrase does not open the key (or the key file was changed).
    #[error("the passphrase is wrong (or {STORE_KEY_FILE} was changed): the store stays locked")]
    WrongPassphrase,
    /// A passphrase is needed and nothing gives it.
    #[error(
        "this store's key is protected by a passphrase: give --passphrase-file FILE (or \
         PEERCHAT_PASSPHRASE_FILE), or start the daemon in a terminal to be asked"
    )]
    NoPassphrase,
    /// The passphrase is too weak to protect the store.
    #[error("a store passphrase has at least 12 characters")]
    WeakPassphrase,
    /// The two entries of a new passphrase differ.
    #[error("the passphrases differ")]
    Mismatch,
    /// The keyring holding the key did not give it.
    #[error("this store's key is kept in the OS keyring, which did not give it: {0}")]
    Keyring(String),
    /// A new store has no way to protect its key.
    #[error(
        "no OS keyring answered ({0}) and there is no terminal to ask for a passphrase: start \
         the daemon with --passphrase-file FILE, or with --plain-store to keep the store key \
         unprotected beside the data"
    )]
    NoProtection(String),
    /// The key file is not one this node wrote.
    #[error("{STORE_KEY_FILE} is damaged or of a newer version: {0}")]
    Damaged(String),
    /// Reading or writing a file failed.
    #[error("{0}")]
    Io(String),
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "protection", rename_all = "snake_case")]
enum KeyFile {
    Keyring { version: u32, entry: String },
    Passphrase { version: u32, sealed: String },
    Plain { version: u32, key: String },
}

/// The store key of the data directory `dir`: read as its key file says, or, for a store that
/// has none yet, made and protected as `options` and `vault` allow. Nothing is written unless
/// the key is had.
pub fn unlock(
    dir: &Path,
    options: &KeyOptions,
    vault: &dyn Vault,
) -> Result<(StoreKey, Protection), KeyError> {
    let path = dir.join(STORE_KEY_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => open(&bytes, options, vault),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(&path, options, vault),
        Err(e) => Err(KeyError::Io(format!("reading {}: {e}", path.display()))),
    }
}

fn key_bytes(bytes: &[u8]) -> Result<StoreKey, KeyError> {
    <[u8; 32]>::try_from(bytes)
        .map(StoreKey::from_bytes)
        .map_err(|_| KeyError::Damaged("the key is not 32 bytes".into()))
}

fn open(
    file: &[u8],
    options: &KeyOptions,
    vault: &dyn Vault,
) -> Result<(StoreKey, Protection), KeyError> {
    let file: KeyFile =
        serde_json::from_slice(file).map_err(|e| KeyError::Damaged(e.to_string()))?;
    match file {
        KeyFile::Keyring { entry, .. } => {
            let secret = Zeroizing::new(
                vault
                    .get(&entry)
                    .map_err(KeyError::Keyring)?
                    .ok_or_else(|| KeyError::Keyring(format!("no entry {entry}")))?,
            );
            Ok((key_bytes(&secret)?, Protection::Keyring))
        }
        KeyFile::Passphrase { sealed, .. } => {
            let sealed = STANDARD
                .decode(sealed)
                .map_err(|e| KeyError::Damaged(e.to_string()))?;
            let passphrase = passphrase(options, false)?.ok_or(KeyError::NoPassphrase)?;
            let key = backup::open_as(STORE_KEY, &sealed, &passphrase).map_err(|e| match e {
                BackupError::WrongPassphraseOrTampered => KeyError::WrongPassphrase,
                other => KeyError::Damaged(other.to_string()),
            })?;
            Ok((key_bytes(&key)?, Protection::Passphrase))
        }
        KeyFile::Plain { key, .. } => {
            let key = Zeroizing::new(
                STANDARD
                    .decode(key)
                    .map_err(|e| KeyError::Damaged(e.to_string()))?,
            );
            Ok((key_bytes(&key)?, Protection::Plain))
        }
    }
}

fn create(
    path: &Path,
    options: &KeyOptions,
    vault: &dyn Vault,
) -> Result<(StoreKey, Protection), KeyError> {
    let mut bytes = Zeroizing::new([0u8; 32]);
    OsRng.fill_bytes(bytes.as_mut());
    let key = StoreKey(bytes);
    let (file, protection) = if options.plain {
        (
            KeyFile::Plain {
                version: 1,
                key: STANDARD.encode(key.as_bytes()),
            },
            Protection::Plain,
        )
    } else if options.passphrase_file.is_some() {
        (sealed(&key, options)?, Protection::Passphrase)
    } else {
        let mut entry = [0u8; 16];
        OsRng.fill_bytes(&mut entry);
        let entry = entry.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let filed = vault
            .set(&entry, key.as_bytes())
            .and_then(|()| match vault.get(&entry)? {
                Some(back) if back.as_slice() == key.as_bytes() => Ok(()),
                _ => Err("the keyring did not keep the key".to_owned()),
            });
        match filed {
            Ok(()) => (KeyFile::Keyring { version: 1, entry }, Protection::Keyring),
            Err(why) if options.ask && std::io::stdin().is_terminal() => {
                eprintln!(
                    "peerchat: no OS keyring answered ({why}); protect the store with a passphrase instead."
                );
                (sealed(&key, options)?, Protection::Passphrase)
            }
            Err(why) => return Err(KeyError::NoProtection(why)),
        }
    };
    let json =
        Zeroizing::new(serde_json::to_vec(&file).map_err(|e| KeyError::Damaged(e.to_string()))?);
    peerchat_pki::write_atomically(path, &json, 0o600).map_err(|e| KeyError::Io(e.to_string()))?;
    Ok((key, protection))
}

fn sealed(key: &StoreKey, options: &KeyOptions) -> Result<KeyFile, KeyError> {
    let passphrase = passphrase(options, true)?.ok_or(KeyError::NoPassphrase)?;
    let sealed = backup::seal_as(
        STORE_KEY,
        key.as_bytes(),
        &passphrase,
        Cost::DEFAULT,
        &mut OsRng,
    )
    .map_err(|e| match e {
        BackupError::WeakPassphrase => KeyError::WeakPassphrase,
        other => KeyError::Damaged(other.to_string()),
    })?;
    Ok(KeyFile::Passphrase {
        version: 1,
        sealed: STANDARD.encode(sealed),
    })
}

/// The passphrase from the file, else asked on the terminal (twice when `new`), else none.
fn passphrase(options: &KeyOptions, new: bool) -> Result<Option<Zeroizing<String>>, KeyError> {
    if let Some(file) = &options.passphrase_file {
        let text = Zeroizing::new(std::fs::read_to_string(file).map_err(|e| {
            KeyError::Io(format!(
                "reading the passphrase file {}: {e}",
                file.display()
            ))
        })?);
        let line = text.lines().next().unwrap_or_default();
        return Ok(Some(Zeroizing::new(line.to_owned())));
    }
    if !options.ask || !std::io::stdin().is_terminal() {
        return Ok(None);
    }
    let ask = |prompt: &str| {
        rpassword::prompt_password(prompt)
            .map(Zeroizing::new)
            .map_err(|e| KeyError::Io(format!("reading the passphrase: {e}")))
    };
    let first = ask("store passphrase: ")?;
    if new && *ask("again: ")? != *first {
        return Err(KeyError::Mismatch);
    }
    Ok(Some(first))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::cell::RefCell;
    use std::collections::BTreeMap;

    use super::*;

    #[derive(Default)]
    struct MemoryVault(RefCell<BTreeMap<String, Vec<u8>>>);

    impl Vault for MemoryVault {
        fn get(&self, entry: &str) -> Result<Option<Vec<u8>>, String> {
            Ok(self.0.borrow().get(entry).cloned())
        }
        fn set(&self, entry: &str, secret: &[u8]) -> Result<(), String> {
            self.0.borrow_mut().insert(entry.into(), secret.to_vec());
            Ok(())
        }
    }

    struct NoVault;

    impl Vault for NoVault {
        fn get(&self, _: &str) -> Result<Option<Vec<u8>>, String> {
            Err("no Secret Service on the session bus".into())
        }
        fn set(&self, _: &str, _: &[u8]) -> Result<(), String> {
            Err("no Secret Service on the session bus".into())
        }
    }

    fn with_passphrase(dir: &Path, passphrase: &str) -> KeyOptions {
        let file = dir.join(format!("passphrase-{}", passphrase.len()));
        std::fs::write(&file, format!("{passphrase}\n")).unwrap();
        KeyOptions {
            passphrase_file: Some(file),
            ..KeyOptions::default()
        }
    }

    #[test]
    fn a_keyring_that_answers_keeps_the_key_and_nothing_secret_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let vault = MemoryVault::default();
        let (key, protection) = unlock(dir.path(), &KeyOptions::default(), &vault).unwrap();
        assert_eq!(protection, Protection::Keyring);
        let file = std::fs::read(dir.path().join(STORE_KEY_FILE)).unwrap();
        assert!(!file.windows(32).any(|w| w == key.as_bytes()));
        assert!(!String::from_utf8_lossy(&file).contains(&STANDARD.encode(key.as_bytes())));
        let (again, _) = unlock(dir.path(), &KeyOptions::default(), &vault).unwrap();
        assert_eq!(again.as_bytes(), key.as_bytes());
        // The keyring forgot it: a clear error, not a new key.
        let err = unlock(dir.path(), &KeyOptions::default(), &MemoryVault::default());
        assert!(matches!(err, Err(KeyError::Keyring(_))));
    }

    #[test]
    fn without_a_keyring_or_a_passphrase_a_new_store_is_refused_and_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let err = unlock(dir.path(), &KeyOptions::default(), &NoVault).unwrap_err();
        assert!(matches!(err, KeyError::NoProtection(_)), "{err}");
        assert!(err.to_string().contains("--passphrase-file"));
        assert!(!dir.path().join(STORE_KEY_FILE).exists());
    }

    #[test]
    fn a_passphrase_wraps_the_key_and_a_wrong_one_is_refused_changing_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let right = with_passphrase(dir.path(), "correct horse battery staple");
        let (key, protection) = unlock(dir.path(), &right, &MemoryVault::default()).unwrap();
        assert_eq!(protection, Protection::Passphrase);
        let file = std::fs::read(dir.path().join(STORE_KEY_FILE)).unwrap();
        assert!(!file.windows(32).any(|w| w == key.as_bytes()));

        let wrong = with_passphrase(dir.path(), "correct horse battery stapler");
        let err = unlock(dir.path(), &wrong, &MemoryVault::default()).unwrap_err();
        assert!(matches!(err, KeyError::WrongPassphrase), "{err}");
        assert_eq!(
            std::fs::read(dir.path().join(STORE_KEY_FILE)).unwrap(),
            file
        );
        let none = unlock(dir.path(), &KeyOptions::default(), &MemoryVault::default());
        assert!(matches!(none, Err(KeyError::NoPassphrase)));

        let (again, _) = unlock(dir.path(), &right, &MemoryVault::default()).unwrap();
        assert_eq!(again.as_bytes(), key.as_bytes());
    }

    #[test]
    fn a_short_passphrase_is_refused_for_a_new_store() {
        let dir = tempfile::tempdir().unwrap();
        let short = with_passphrase(dir.path(), "hunter2");
        let err = unlock(dir.path(), &short, &MemoryVault::default()).unwrap_err();
        assert!(matches!(err, KeyError::WeakPassphrase));
        assert!(!dir.path().join(STORE_KEY_FILE).exists());
    }

    #[test]
    fn plain_keeps_the_key_beside_the_data_only_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let plain = KeyOptions {
            plain: true,
            ..KeyOptions::default()
        };
        let (key, protection) = unlock(dir.path(), &plain, &NoVault).unwrap();
        assert_eq!(protection, Protection::Plain);
        let (again, protection) = unlock(dir.path(), &KeyOptions::default(), &NoVault).unwrap();
        assert_eq!(
            (again.as_bytes(), protection),
            (key.as_bytes(), Protection::Plain)
        );
        std::fs::write(
            dir.path().join(STORE_KEY_FILE),
            b"{\"protection\":\"rot13\"}",
        )
        .unwrap();
        assert!(matches!(
            unlock(dir.path(), &plain, &NoVault),
            Err(KeyError::Damaged(_))
        ));
    }
}
