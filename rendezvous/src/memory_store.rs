//! An in-memory [`Store`], for tests and for trying the server without a disk. Same contract as
//! the sled adapter; nothing survives the process.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use peerchat_pki::{RevokedEntry, Serial, Username};

use crate::store::{
    Account, Deposit, OneTimePreKeyRecord, Presence, Quota, SignedPreKeyRecord, Store, StoreError,
    StoredEnvelope,
};

#[derive(Debug, Default)]
struct Inner {
    accounts: HashMap<Username, Account>,
    certificates: HashMap<Username, Vec<Serial>>,
    revoked: BTreeMap<Serial, u64>,
    crl_number: u64,
    crl: Option<(u64, Vec<u8>)>,
    signed_prekeys: HashMap<Username, SignedPreKeyRecord>,
    one_time_prekeys: HashMap<Username, BTreeMap<u32, [u8; 32]>>,
    presence: HashMap<Username, Presence>,
    mail: HashMap<Username, Vec<StoredEnvelope>>,
}

/// The in-memory store.
#[derive(Debug, Default)]
pub struct MemoryStore(Mutex<Inner>);

impl MemoryStore {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Store for MemoryStore {
    async fn create_account(&self, account: &Account) -> Result<bool, StoreError> {
        let mut inner = self.inner();
        if inner.accounts.contains_key(&account.username) {
            return Ok(false);
        }
        inner
            .accounts
            .insert(account.username.clone(), account.clone());
        Ok(true)
    }

    async fn account(&self, username: &Username) -> Result<Option<Account>, StoreError> {
        Ok(self.inner().accounts.get(username).cloned())
    }

    async fn update_account(&self, account: &Account) -> Result<(), StoreError> {
        self.inner()
            .accounts
            .insert(account.username.clone(), account.clone());
        Ok(())
    }

    async fn count_accounts(&self) -> Result<u64, StoreError> {
        Ok(self.inner().accounts.len() as u64)
    }

    async fn record_certificate(
        &self,
        username: &Username,
        serial: &Serial,
    ) -> Result<(), StoreError> {
        self.inner()
            .certificates
            .entry(username.clone())
            .or_default()
            .push(serial.clone());
        Ok(())
    }

    async fn certificates_of(&self, username: &Username) -> Result<Vec<Serial>, StoreError> {
        Ok(self
            .inner()
            .certificates
            .get(username)
            .cloned()
            .unwrap_or_default())
    }

    async fn revoke(&self, serial: &Serial, at: u64) -> Result<(), StoreError> {
        self.inner().revoked.entry(serial.clone()).or_insert(at);
        Ok(())
    }

    async fn is_revoked(&self, serial: &Serial) -> Result<bool, StoreError> {
        Ok(self.inner().revoked.contains_key(serial))
    }

    async fn revoked(&self) -> Result<Vec<RevokedEntry>, StoreError> {
        Ok(self
            .inner()
            .revoked
            .iter()
            .map(|(serial, at)| RevokedEntry {
                serial: serial.clone(),
                revoked_at: std::time::UNIX_EPOCH + std::time::Duration::from_secs(*at),
            })
            .collect())
    }

    async fn next_crl_number(&self) -> Result<u64, StoreError> {
        let mut inner = self.inner();
        inner.crl_number += 1;
        Ok(inner.crl_number)
    }

    async fn set_signed_prekey(
        &self,
        username: &Username,
        key: &SignedPreKeyRecord,
    ) -> Result<(), StoreError> {
        self.inner()
            .signed_prekeys
            .insert(username.clone(), key.clone());
        Ok(())
    }

    async fn signed_prekey(
        &self,
        username: &Username,
    ) -> Result<Option<SignedPreKeyRecord>, StoreError> {
        Ok(self.inner().signed_prekeys.get(username).cloned())
    }

    async fn add_one_time_prekeys(
        &self,
        username: &Username,
        keys: &[OneTimePreKeyRecord],
        max: u32,
    ) -> Result<u32, StoreError> {
        let mut inner = self.inner();
        let stored = inner.one_time_prekeys.entry(username.clone()).or_default();
        for k in keys {
            if !stored.contains_key(&k.id) && stored.len() as u32 >= max {
                break;
            }
            stored.insert(k.id, k.public_key);
        }
        Ok(stored.len() as u32)
    }

    async fn take_one_time_prekey(
        &self,
        username: &Username,
    ) -> Result<Option<OneTimePreKeyRecord>, StoreError> {
        Ok(self
            .inner()
            .one_time_prekeys
            .get_mut(username)
            .and_then(|keys| keys.pop_first())
            .map(|(id, public_key)| OneTimePreKeyRecord { id, public_key }))
    }

    async fn count_one_time_prekeys(&self, username: &Username) -> Result<u32, StoreError> {
        Ok(self
            .inner()
            .one_time_prekeys
            .get(username)
            .map_or(0, |k| k.len() as u32))
    }

    async fn clear_prekeys(&self, username: &Username) -> Result<(), StoreError> {
        let mut inner = self.inner();
        inner.signed_prekeys.remove(username);
        inner.one_time_prekeys.remove(username);
        Ok(())
    }

    async fn set_presence(
        &self,
        username: &Username,
        presence: &Presence,
    ) -> Result<(), StoreError> {
        self.inner()
            .presence
            .insert(username.clone(), presence.clone());
        Ok(())
    }

    async fn presence(&self, username: &Username) -> Result<Option<Presence>, StoreError> {
        Ok(self.inner().presence.get(username).cloned())
    }

    async fn deposit(
        &self,
        recipient: &Username,
        envelope: &StoredEnvelope,
        quota: Quota,
    ) -> Result<Deposit, StoreError> {
        let mut inner = self.inner();
        let mailbox = inner.mail.entry(recipient.clone()).or_default();
        if mailbox.iter().any(|e| e.id == envelope.id) {
            return Ok(Deposit::Duplicate);
        }
        let size = envelope.envelope.len() as u64;
        let bytes: u64 = mailbox.iter().map(|e| e.envelope.len() as u64).sum();
        let from_sender = || mailbox.iter().filter(|e| e.sender == envelope.sender);
        let sender_bytes: u64 = from_sender().map(|e| e.envelope.len() as u64).sum();
        if mailbox.len() as u32 >= quota.max_envelopes
            || bytes + size > quota.max_bytes
            || from_sender().count() as u32 >= quota.max_envelopes_per_sender
            || sender_bytes + size > quota.max_bytes_per_sender
        {
            return Ok(Deposit::QuotaExceeded);
        }
        mailbox.push(envelope.clone());
        Ok(Deposit::Stored)
    }

    async fn mailbox(
        &self,
        recipient: &Username,
        now: u64,
        limit: usize,
    ) -> Result<Vec<StoredEnvelope>, StoreError> {
        Ok(self
            .inner()
            .mail
            .get(recipient)
            .map(|m| {
                m.iter()
                    .filter(|e| e.expires_at > now)
                    .take(limit)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn ack(&self, recipient: &Username, id: &[u8; 16]) -> Result<bool, StoreError> {
        let mut inner = self.inner();
        let Some(mailbox) = inner.mail.get_mut(recipient) else {
            return Ok(false);
        };
        let before = mailbox.len();
        mailbox.retain(|e| &e.id != id);
        Ok(mailbox.len() != before)
    }

    async fn purge_expired(&self, now: u64) -> Result<u64, StoreError> {
        let mut purged = 0;
        for mailbox in self.inner().mail.values_mut() {
            let before = mailbox.len();
            mailbox.retain(|e| e.expires_at > now);
            purged += (before - mailbox.len()) as u64;
        }
        Ok(purged)
    }

    async fn count_envelopes(&self) -> Result<u64, StoreError> {
        Ok(self.inner().mail.values().map(|m| m.len() as u64).sum())
    }

    async fn latest_crl(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        Ok(self.inner().crl.clone())
    }

    async fn save_crl(&self, number: u64, der: &[u8]) -> Result<(), StoreError> {
        let mut inner = self.inner();
        if inner.crl.as_ref().is_none_or(|(saved, _)| *saved <= number) {
            inner.crl = Some((number, der.to_vec()));
        }
        Ok(())
    }

    async fn update_account_if_step(
        &self,
        account: &Account,
        prior_step: u64,
    ) -> Result<bool, StoreError> {
        let mut inner = self.inner();
        let Some(stored) = inner.accounts.get_mut(&account.username) else {
            return Ok(false);
        };
        if stored.totp.as_ref().map_or(0, |t| t.last_step) != prior_step {
            return Ok(false);
        }
        *stored = account.clone();
        Ok(true)
    }

    async fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
