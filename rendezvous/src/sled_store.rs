//! The embedded sled adapter of the [`Store`] port.

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use peerchat_pki::{RevokedEntry, Serial, Username};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};

use crate::store::{
    Account, Deposit, OneTimePreKeyRecord, Presence, Quota, SignedPreKeyRecord, Store, StoreError,
    StoredEnvelope,
};

/// sled trees, one per kind of record. Composite keys are `username ‖ 0x00 ‖ suffix`; `0x00`
/// cannot occur in a username, so one user's prefix never matches another's.
#[derive(Debug)]
pub struct SledStore {
    db: sled::Db,
    accounts: sled::Tree,
    user_certs: sled::Tree,
    revoked: sled::Tree,
    meta: sled::Tree,
    signed_prekeys: sled::Tree,
    one_time_prekeys: sled::Tree,
    presence: sled::Tree,
    mail: sled::Tree,
    mail_ids: sled::Tree,
    mail_meta: sled::Tree,
    account_count: AtomicU64,
    envelope_count: AtomicU64,
    prekey_writer: Mutex<()>,
    commit: GroupCommit,
}

/// Group commit: callers that ask for a flush while one is running share the next one, so a burst
/// of concurrent writers costs two flushes, not one each.
#[derive(Debug, Default)]
struct GroupCommit {
    /// Flushes started so far.
    started: AtomicU64,
    /// Flushes completed so far.
    completed: AtomicU64,
    /// Held while a flush runs.
    running: tokio::sync::Mutex<()>,
}

/// Default size of sled's page cache. sled's own default (1 GiB) would let the server's memory
/// grow with the database; the working set of the rendezvous is small.
pub const DEFAULT_CACHE_BYTES: u64 = 32 * 1024 * 1024;

fn backend(e: sled::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// Records are postcard: compact, so that the database and its cache stay small (a certificate
/// as a JSON array of numbers would take three times its size).
fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_stdvec(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// An account record, in today's form or the one before TOTP secrets were sealed.
fn decode_account(bytes: &[u8]) -> Result<Account, StoreError> {
    decode::<Account>(bytes).or_else(|e| {
        postcard::from_bytes::<crate::store::LegacyAccount>(bytes)
            .map(Account::from)
            .map_err(|_| e)
    })
}

/// A mailbox record, in today's form or the one before the depositor's key was recorded.
fn decode_envelope(bytes: &[u8]) -> Result<StoredEnvelope, StoreError> {
    decode::<StoredEnvelope>(bytes).or_else(|e| {
        postcard::from_bytes::<crate::store::LegacyStoredEnvelope>(bytes)
            .map(StoredEnvelope::from)
            .map_err(|_| e)
    })
}

fn key(username: &Username, suffix: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(username.as_str().len() + 1 + suffix.len());
    k.extend_from_slice(username.as_str().as_bytes());
    k.push(0);
    k.extend_from_slice(suffix);
    k
}

fn prefix(username: &Username) -> Vec<u8> {
    key(username, &[])
}

/// The key of one sender's totals in a recipient's mailbox: `recipient ‖ 0 ‖ sender` (the
/// recipient's own totals are under `recipient ‖ 0`).
fn sender_meta_key(recipient: &Username, sender: &Username) -> Vec<u8> {
    key(recipient, sender.as_str().as_bytes())
}

fn mail_meta_decode(bytes: Option<&[u8]>) -> (u32, u64) {
    match bytes {
        Some(b) if b.len() == 12 => (
            u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            u64::from_be_bytes([b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11]]),
        ),
        _ => (0, 0),
    }
}

fn mail_meta_encode(count: u32, bytes: u64) -> Vec<u8> {
    let mut out = count.to_be_bytes().to_vec();
    out.extend_from_slice(&bytes.to_be_bytes());
    out
}

fn tx_err<E: std::fmt::Display>(e: TransactionError<E>) -> StoreError {
    match e {
        TransactionError::Abort(e) => StoreError::Corrupt(e.to_string()),
        TransactionError::Storage(e) => backend(e),
    }
}

impl SledStore {
    /// Opens (or creates) the store in `dir` with a [`DEFAULT_CACHE_BYTES`] page cache.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with_cache(dir, DEFAULT_CACHE_BYTES)
    }

    /// Opens (or creates) the store in `dir` with a page cache of `cache_bytes`.
    pub fn open_with_cache(dir: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .open()
            .map_err(backend)?;
        let tree = |name: &str| db.open_tree(name).map_err(backend);
        let store = Self {
            accounts: tree("accounts")?,
            user_certs: tree("user_certs")?,
            revoked: tree("revoked")?,
            meta: tree("meta")?,
            signed_prekeys: tree("signed_prekeys")?,
            one_time_prekeys: tree("one_time_prekeys")?,
            presence: tree("presence")?,
            mail: tree("mail")?,
            mail_ids: tree("mail_ids")?,
            mail_meta: tree("mail_meta")?,
            account_count: AtomicU64::new(0),
            envelope_count: AtomicU64::new(0),
            prekey_writer: Mutex::new(()),
            commit: GroupCommit::default(),
            db,
        };
        store
            .account_count
            .store(store.accounts.len() as u64, Ordering::Relaxed);
        store
            .envelope_count
            .store(store.mail.len() as u64, Ordering::Relaxed);
        Ok(store)
    }

    /// Removes one envelope and its index entries, keeping the per-mailbox totals right.
    fn remove_envelope(&self, recipient: &Username, id: &[u8; 16]) -> Result<bool, StoreError> {
        let id_key = key(recipient, id);
        let meta_key = prefix(recipient);
        let removed = (&self.mail, &self.mail_ids, &self.mail_meta)
            .transaction(|(mail, ids, meta)| {
                let Some(seq) = ids.remove(id_key.as_slice())? else {
                    return Ok(false);
                };
                let Some(value) = mail.remove(key(recipient, &seq))? else {
                    return Ok(false);
                };
                let (count, bytes) = mail_meta_decode(meta.get(&meta_key)?.as_deref());
                let envelope = decode_envelope(&value).ok();
                let len = envelope.as_ref().map_or(0, |e| e.envelope.len() as u64);
                meta.insert(
                    meta_key.as_slice(),
                    mail_meta_encode(count.saturating_sub(1), bytes.saturating_sub(len)),
                )?;
                if let Some(envelope) = envelope {
                    let sender_key = sender_meta_key(recipient, &envelope.sender);
                    let (from_sender, sender_bytes) =
                        mail_meta_decode(meta.get(&sender_key)?.as_deref());
                    if from_sender <= 1 {
                        meta.remove(sender_key.as_slice())?;
                    } else {
                        meta.insert(
                            sender_key.as_slice(),
                            mail_meta_encode(from_sender - 1, sender_bytes.saturating_sub(len)),
                        )?;
                    }
                }
                Ok::<_, ConflictableTransactionError<StoreError>>(true)
            })
            .map_err(tx_err)?;
        if removed {
            self.envelope_count.fetch_sub(1, Ordering::Relaxed);
        }
        Ok(removed)
    }
}

impl Store for SledStore {
    #[tracing::instrument(name = "store.create_account", skip_all)]
    async fn create_account(&self, account: &Account) -> Result<bool, StoreError> {
        let created = self
            .accounts
            .compare_and_swap(
                account.username.as_str(),
                None as Option<&[u8]>,
                Some(encode(account)?),
            )
            .map_err(backend)?
            .is_ok();
        if created {
            self.account_count.fetch_add(1, Ordering::Relaxed);
        }
        Ok(created)
    }

    async fn account(&self, username: &Username) -> Result<Option<Account>, StoreError> {
        self.accounts
            .get(username.as_str())
            .map_err(backend)?
            .map(|v| decode_account(&v))
            .transpose()
    }

    async fn update_account(&self, account: &Account) -> Result<(), StoreError> {
        self.accounts
            .insert(account.username.as_str(), encode(account)?)
            .map_err(backend)?;
        Ok(())
    }

    async fn count_accounts(&self) -> Result<u64, StoreError> {
        Ok(self.account_count.load(Ordering::Relaxed))
    }

    async fn record_certificate(
        &self,
        username: &Username,
        serial: &Serial,
    ) -> Result<(), StoreError> {
        self.user_certs
            .insert(key(username, serial.as_bytes()), &[])
            .map_err(backend)?;
        Ok(())
    }

    async fn certificates_of(&self, username: &Username) -> Result<Vec<Serial>, StoreError> {
        let p = prefix(username);
        self.user_certs
            .scan_prefix(&p)
            .keys()
            .map(|k| {
                k.map(|k| Serial::from_be_bytes(&k[p.len()..]))
                    .map_err(backend)
            })
            .collect()
    }

    async fn revoke(&self, serial: &Serial, at: u64) -> Result<(), StoreError> {
        let _ = self
            .revoked
            .compare_and_swap(
                serial.as_bytes(),
                None as Option<&[u8]>,
                Some(&at.to_be_bytes()[..]),
            )
            .map_err(backend)?;
        Ok(())
    }

    async fn is_revoked(&self, serial: &Serial) -> Result<bool, StoreError> {
        self.revoked
            .contains_key(serial.as_bytes())
            .map_err(backend)
    }

    async fn revoked(&self) -> Result<Vec<RevokedEntry>, StoreError> {
        self.revoked
            .iter()
            .map(|item| {
                let (k, v) = item.map_err(backend)?;
                let secs = <[u8; 8]>::try_from(v.as_ref())
                    .map(u64::from_be_bytes)
                    .map_err(|_| StoreError::Corrupt("revocation time".into()))?;
                Ok(RevokedEntry {
                    serial: Serial::from_be_bytes(&k),
                    revoked_at: std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs),
                })
            })
            .collect()
    }

    async fn next_crl_number(&self) -> Result<u64, StoreError> {
        let next = self
            .meta
            .update_and_fetch("crl_number", |old| {
                let n = old
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map(u64::from_be_bytes)
                    .unwrap_or(0);
                Some((n + 1).to_be_bytes().to_vec())
            })
            .map_err(backend)?
            .and_then(|b| <[u8; 8]>::try_from(b.as_ref()).ok())
            .map(u64::from_be_bytes)
            .ok_or_else(|| StoreError::Corrupt("crl number".into()))?;
        Ok(next)
    }

    async fn set_signed_prekey(
        &self,
        username: &Username,
        key: &SignedPreKeyRecord,
    ) -> Result<(), StoreError> {
        self.signed_prekeys
            .insert(username.as_str(), encode(key)?)
            .map_err(backend)?;
        Ok(())
    }

    async fn signed_prekey(
        &self,
        username: &Username,
    ) -> Result<Option<SignedPreKeyRecord>, StoreError> {
        self.signed_prekeys
            .get(username.as_str())
            .map_err(backend)?
            .map(|v| decode(&v))
            .transpose()
    }

    #[tracing::instrument(name = "store.add_one_time_prekeys", skip_all)]
    async fn add_one_time_prekeys(
        &self,
        username: &Username,
        keys: &[OneTimePreKeyRecord],
        max: u32,
    ) -> Result<u32, StoreError> {
        // One writer at a time, so concurrent uploads cannot together exceed `max`.
        let _guard = self.prekey_writer.lock().unwrap_or_else(|p| p.into_inner());
        let mut count = self.one_time_prekeys.scan_prefix(prefix(username)).count() as u32;
        for k in keys {
            let entry = key(username, &k.id.to_be_bytes());
            let exists = self
                .one_time_prekeys
                .contains_key(&entry)
                .map_err(backend)?;
            if !exists && count >= max {
                break;
            }
            self.one_time_prekeys
                .insert(entry, &k.public_key[..])
                .map_err(backend)?;
            if !exists {
                count += 1;
            }
        }
        Ok(count)
    }

    #[tracing::instrument(name = "store.take_one_time_prekey", skip_all)]
    async fn take_one_time_prekey(
        &self,
        username: &Username,
    ) -> Result<Option<OneTimePreKeyRecord>, StoreError> {
        let p = prefix(username);
        loop {
            let Some(item) = self.one_time_prekeys.scan_prefix(&p).next() else {
                return Ok(None);
            };
            let (k, v) = item.map_err(backend)?;
            // Compare-and-swap: of all concurrent callers that saw this key, exactly one removes it.
            let won = self
                .one_time_prekeys
                .compare_and_swap(&k, Some(&v), None as Option<&[u8]>)
                .map_err(backend)?
                .is_ok();
            if won {
                let id = <[u8; 4]>::try_from(&k[p.len()..])
                    .map(u32::from_be_bytes)
                    .map_err(|_| StoreError::Corrupt("prekey id".into()))?;
                let public_key = <[u8; 32]>::try_from(v.as_ref())
                    .map_err(|_| StoreError::Corrupt("prekey".into()))?;
                return Ok(Some(OneTimePreKeyRecord { id, public_key }));
            }
        }
    }

    async fn count_one_time_prekeys(&self, username: &Username) -> Result<u32, StoreError> {
        Ok(self.one_time_prekeys.scan_prefix(prefix(username)).count() as u32)
    }

    async fn clear_prekeys(&self, username: &Username) -> Result<(), StoreError> {
        self.signed_prekeys
            .remove(username.as_str())
            .map_err(backend)?;
        for k in self.one_time_prekeys.scan_prefix(prefix(username)).keys() {
            self.one_time_prekeys
                .remove(k.map_err(backend)?)
                .map_err(backend)?;
        }
        Ok(())
    }

    #[tracing::instrument(name = "store.set_presence", skip_all)]
    async fn set_presence(
        &self,
        username: &Username,
        presence: &Presence,
    ) -> Result<(), StoreError> {
        self.presence
            .insert(username.as_str(), encode(presence)?)
            .map_err(backend)?;
        Ok(())
    }

    async fn presence(&self, username: &Username) -> Result<Option<Presence>, StoreError> {
        self.presence
            .get(username.as_str())
            .map_err(backend)?
            .map(|v| decode(&v))
            .transpose()
    }

    #[tracing::instrument(name = "store.deposit", skip_all)]
    async fn deposit(
        &self,
        recipient: &Username,
        envelope: &StoredEnvelope,
        quota: Quota,
    ) -> Result<Deposit, StoreError> {
        let id_key = key(recipient, &envelope.id);
        let meta_key = prefix(recipient);
        let sender_key = sender_meta_key(recipient, &envelope.sender);
        let value = encode(envelope)?;
        let size = envelope.envelope.len() as u64;
        let outcome = (&self.mail, &self.mail_ids, &self.mail_meta)
            .transaction(|(mail, ids, meta)| {
                if ids.get(id_key.as_slice())?.is_some() {
                    return Ok(Deposit::Duplicate);
                }
                let (count, bytes) = mail_meta_decode(meta.get(&meta_key)?.as_deref());
                let (from_sender, sender_bytes) =
                    mail_meta_decode(meta.get(&sender_key)?.as_deref());
                if count >= quota.max_envelopes
                    || bytes + size > quota.max_bytes
                    || from_sender >= quota.max_envelopes_per_sender
                    || sender_bytes + size > quota.max_bytes_per_sender
                {
                    return Ok(Deposit::QuotaExceeded);
                }
                let seq = mail.generate_id()?.to_be_bytes();
                mail.insert(key(recipient, &seq), value.as_slice())?;
                ids.insert(id_key.as_slice(), &seq[..])?;
                meta.insert(
                    meta_key.as_slice(),
                    mail_meta_encode(count + 1, bytes + size),
                )?;
                meta.insert(
                    sender_key.as_slice(),
                    mail_meta_encode(from_sender + 1, sender_bytes + size),
                )?;
                Ok::<_, ConflictableTransactionError<StoreError>>(Deposit::Stored)
            })
            .map_err(tx_err)?;
        if outcome == Deposit::Stored {
            self.envelope_count.fetch_add(1, Ordering::Relaxed);
        }
        Ok(outcome)
    }

    #[tracing::instrument(name = "store.mailbox", skip_all)]
    async fn mailbox(
        &self,
        recipient: &Username,
        now: u64,
        limit: usize,
    ) -> Result<Vec<StoredEnvelope>, StoreError> {
        let mut out = Vec::new();
        for item in self.mail.scan_prefix(prefix(recipient)).values() {
            let envelope = decode_envelope(&item.map_err(backend)?)?;
            if envelope.expires_at > now {
                out.push(envelope);
                if out.len() == limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    #[tracing::instrument(name = "store.ack", skip_all)]
    async fn ack(&self, recipient: &Username, id: &[u8; 16]) -> Result<bool, StoreError> {
        self.remove_envelope(recipient, id)
    }

    async fn purge_expired(&self, now: u64) -> Result<u64, StoreError> {
        let mut expired = Vec::new();
        for item in self.mail.iter() {
            let (k, v) = item.map_err(backend)?;
            let envelope = decode_envelope(&v)?;
            if envelope.expires_at > now {
                continue;
            }
            // Mail keys are `recipient ‖ 0x00 ‖ sequence`.
            let split = k.iter().position(|b| *b == 0).unwrap_or(k.len());
            let recipient = std::str::from_utf8(&k[..split])
                .ok()
                .and_then(|name| Username::new(name).ok())
                .ok_or_else(|| StoreError::Corrupt("mailbox key".into()))?;
            expired.push((recipient, envelope.id));
        }
        let mut purged = 0;
        for (recipient, id) in expired {
            if self.remove_envelope(&recipient, &id)? {
                purged += 1;
            }
        }
        Ok(purged)
    }

    async fn count_envelopes(&self) -> Result<u64, StoreError> {
        Ok(self.envelope_count.load(Ordering::Relaxed))
    }

    async fn latest_crl(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let Some(bytes) = self.meta.get("crl").map_err(backend)? else {
            return Ok(None);
        };
        let number = bytes
            .get(..8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_be_bytes)
            .ok_or_else(|| StoreError::Corrupt("saved CRL".into()))?;
        Ok(Some((number, bytes[8..].to_vec())))
    }

    async fn save_crl(&self, number: u64, der: &[u8]) -> Result<(), StoreError> {
        let mut record = number.to_be_bytes().to_vec();
        record.extend_from_slice(der);
        self.meta
            .fetch_and_update("crl", |old| {
                let newer = old
                    .and_then(|b| b.get(..8))
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map(u64::from_be_bytes)
                    .is_some_and(|saved| saved > number);
                match (newer, old) {
                    (true, Some(old)) => Some(old.to_vec()),
                    _ => Some(record.clone()),
                }
            })
            .map_err(backend)?;
        Ok(())
    }

    async fn update_account_if_step(
        &self,
        account: &Account,
        prior_step: u64,
    ) -> Result<bool, StoreError> {
        let name = account.username.as_str();
        let new = encode(account)?;
        loop {
            let Some(old) = self.accounts.get(name).map_err(backend)? else {
                return Ok(false);
            };
            let step = decode_account(&old)?.totp.map_or(0, |t| t.last_step);
            if step != prior_step {
                return Ok(false);
            }
            // Compare-and-swap: a concurrent change of the record makes us look again.
            if self
                .accounts
                .compare_and_swap(name, Some(&old), Some(new.as_slice()))
                .map_err(backend)?
                .is_ok()
            {
                return Ok(true);
            }
        }
    }

    #[tracing::instrument(name = "store.flush", skip_all)]
    async fn flush(&self) -> Result<(), StoreError> {
        // Our writes are covered by any flush that starts after this point.
        let needed = self.commit.started.load(Ordering::Acquire) + 1;
        let _running = self.commit.running.lock().await;
        if self.commit.completed.load(Ordering::Acquire) >= needed {
            return Ok(());
        }
        let this = self.commit.started.fetch_add(1, Ordering::AcqRel) + 1;
        // Not `flush_async`: in sled 0.34 concurrent `flush_async` calls can wait forever
        // (spacejam/sled#1308). The blocking flush runs on the blocking pool.
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|e| StoreError::Backend(e.to_string()))?
            .map_err(backend)?;
        self.commit.completed.store(this, Ordering::Release);
        Ok(())
    }
}
