//! The node's sled adapter of the [`Store`] port. Each lifecycle step is one sled transaction over
//! the trees it touches; durability comes from [`Store::flush`] (blocking flush on the blocking
//! pool, group-committed).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use peerchat_pki::Username;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use crate::domain::{MessageId, OneTimePreKeyPair, PreKeyId, Session, SignedPreKeyPair};
use crate::ports::{
    Contact, Conversation, HeldInbound, LocalIdentity, MAX_HELD_INBOUND, MessageStatus,
    OutboxEntry, Recorded, Store, StoreError, StoredMessage,
};

/// sled page cache; the node's working set is small.
const CACHE_BYTES: u64 = 16 * 1024 * 1024;

#[derive(Serialize, Deserialize)]
struct IdentityRecord {
    username: Username,
    seed: [u8; 32],
    certificate_pem: String,
    ca_pem: String,
}

impl Drop for IdentityRecord {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.seed);
    }
}

#[derive(Serialize, Deserialize)]
struct Activity {
    order: u64,
    messages: u64,
    last_seq: u64,
}

/// The sled store of a node's data directory.
pub struct SledStore {
    db: sled::Db,
    meta: sled::Tree,
    signed: sled::Tree,
    one_time: sled::Tree,
    contacts: sled::Tree,
    sessions: sled::Tree,
    messages: sled::Tree,
    message_ids: sled::Tree,
    outbox: sled::Tree,
    activity: sled::Tree,
    held_inbound: sled::Tree,
    flushes_started: AtomicU64,
    flushes_done: AtomicU64,
    flushing: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SledStore")
    }
}

fn backend(e: sled::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn enc<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_stdvec(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn dec<T: DeserializeOwned>(b: &[u8]) -> Result<T, StoreError> {
    postcard::from_bytes(b).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn key(peer: &Username, suffix: &[u8]) -> Vec<u8> {
    let mut k = peer.as_str().as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(suffix);
    k
}

fn tx<E: std::fmt::Display>(e: TransactionError<E>) -> StoreError {
    match e {
        TransactionError::Abort(e) => StoreError::Corrupt(e.to_string()),
        TransactionError::Storage(e) => backend(e),
    }
}

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

fn abort(e: StoreError) -> ConflictableTransactionError<StoreError> {
    ConflictableTransactionError::Abort(e)
}

impl SledStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(CACHE_BYTES)
            .open()
            .map_err(backend)?;
        let t = |n: &str| db.open_tree(n).map_err(backend);
        Ok(Self {
            meta: t("meta")?,
            signed: t("signed_prekeys")?,
            one_time: t("one_time_prekeys")?,
            contacts: t("contacts")?,
            sessions: t("sessions")?,
            messages: t("messages")?,
            message_ids: t("message_ids")?,
            outbox: t("outbox")?,
            activity: t("activity")?,
            held_inbound: t("held_inbound")?,
            flushes_started: AtomicU64::new(0),
            flushes_done: AtomicU64::new(0),
            flushing: tokio::sync::Mutex::new(()),
            db,
        })
    }

    fn get<T: DeserializeOwned>(
        tree: &sled::Tree,
        k: impl AsRef<[u8]>,
    ) -> Result<Option<T>, StoreError> {
        tree.get(k).map_err(backend)?.map(|v| dec(&v)).transpose()
    }

    /// Records a message in the transaction: the message under its sequence number, the id index
    /// and the conversation's activity.
    fn put_message(
        messages: &sled::transaction::TransactionalTree,
        ids: &sled::transaction::TransactionalTree,
        activity: &sled::transaction::TransactionalTree,
        message: &StoredMessage,
    ) -> TxResult<()> {
        let seq = messages.generate_id()?;
        messages.insert(
            key(&message.peer, &seq.to_be_bytes()),
            enc(message).map_err(abort)?,
        )?;
        ids.insert(
            key(&message.peer, message.id.as_bytes()),
            &seq.to_be_bytes()[..],
        )?;
        let peer = message.peer.as_str().as_bytes();
        let mut a: Activity = match activity.get(peer)? {
            Some(v) => dec(&v).map_err(abort)?,
            None => Activity {
                order: 0,
                messages: 0,
                last_seq: 0,
            },
        };
        a.order = seq;
        a.messages += 1;
        a.last_seq = seq;
        activity.insert(peer, enc(&a).map_err(abort)?)?;
        Ok(())
    }
}

impl Store for SledStore {
    #[tracing::instrument(name = "store.identity", skip_all)]
    fn identity(&self) -> Result<Option<LocalIdentity>, StoreError> {
        let record: Option<IdentityRecord> = Self::get(&self.meta, "identity")?;
        Ok(record.map(|r| LocalIdentity {
            username: r.username.clone(),
            seed: zeroize::Zeroizing::new(r.seed),
            certificate_pem: r.certificate_pem.clone(),
            ca_pem: r.ca_pem.clone(),
        }))
    }

    #[tracing::instrument(name = "store.save_identity", skip_all)]
    fn save_identity(
        &self,
        identity: &LocalIdentity,
        signed: &SignedPreKeyPair,
        one_time: &[OneTimePreKeyPair],
    ) -> Result<(), StoreError> {
        let record = IdentityRecord {
            username: identity.username.clone(),
            seed: *identity.seed,
            certificate_pem: identity.certificate_pem.clone(),
            ca_pem: identity.ca_pem.clone(),
        };
        let record = zeroize::Zeroizing::new(enc(&record)?);
        let next = one_time
            .iter()
            .map(|k| k.id().0)
            .chain([signed.id().0])
            .max()
            .unwrap_or(0)
            + 1;
        (&self.meta, &self.signed, &self.one_time)
            .transaction(|(meta, signed_tree, one_time_tree)| {
                meta.insert("identity", record.as_slice())?;
                meta.insert("next_prekey_id", &next.to_be_bytes()[..])?;
                signed_tree.insert(&signed.id().0.to_be_bytes(), enc(signed).map_err(abort)?)?;
                for k in one_time {
                    one_time_tree.insert(&k.id().0.to_be_bytes(), enc(k).map_err(abort)?)?;
                }
                Ok(())
            })
            .map_err(tx)
    }

    #[tracing::instrument(name = "store.save_certificate", skip_all)]
    fn save_certificate(&self, certificate_pem: &str) -> Result<(), StoreError> {
        let Some(mut record) = Self::get::<IdentityRecord>(&self.meta, "identity")? else {
            return Err(StoreError::Corrupt("no identity to renew".into()));
        };
        record.certificate_pem = certificate_pem.to_owned();
        let bytes = zeroize::Zeroizing::new(enc(&record)?);
        self.meta
            .insert("identity", bytes.as_slice())
            .map_err(backend)?;
        Ok(())
    }

    #[tracing::instrument(name = "store.signed_prekey", skip_all)]
    fn signed_prekey(&self, id: PreKeyId) -> Result<Option<SignedPreKeyPair>, StoreError> {
        Self::get(&self.signed, id.0.to_be_bytes())
    }

    #[tracing::instrument(name = "store.one_time_prekey", skip_all)]
    fn one_time_prekey(&self, id: PreKeyId) -> Result<Option<OneTimePreKeyPair>, StoreError> {
        Self::get(&self.one_time, id.0.to_be_bytes())
    }

    #[tracing::instrument(name = "store.add_one_time_prekeys", skip_all)]
    fn add_one_time_prekeys(&self, keys: &[OneTimePreKeyPair]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for k in keys {
            batch.insert(&k.id().0.to_be_bytes(), enc(k)?);
        }
        self.one_time.apply_batch(batch).map_err(backend)
    }

    #[tracing::instrument(name = "store.next_prekey_id", skip_all)]
    fn next_prekey_id(&self) -> Result<PreKeyId, StoreError> {
        let next = self
            .meta
            .fetch_and_update("next_prekey_id", |old| {
                let n = old
                    .and_then(|b| <[u8; 4]>::try_from(b).ok())
                    .map(u32::from_be_bytes)
                    .unwrap_or(1);
                Some(n.saturating_add(1).to_be_bytes().to_vec())
            })
            .map_err(backend)?
            .and_then(|b| <[u8; 4]>::try_from(b.as_ref()).ok())
            .map(u32::from_be_bytes)
            .unwrap_or(1);
        Ok(PreKeyId(next))
    }

    #[tracing::instrument(name = "store.signed_prekey_rotated_at", skip_all)]
    fn signed_prekey_rotated_at(&self) -> Result<Option<u64>, StoreError> {
        Ok(self
            .meta
            .get("signed_rotated_at")
            .map_err(backend)?
            .and_then(|b| <[u8; 8]>::try_from(b.as_ref()).ok())
            .map(u64::from_be_bytes))
    }

    #[tracing::instrument(name = "store.set_signed_prekey_rotated_at", skip_all)]
    fn set_signed_prekey_rotated_at(&self, at_ms: u64) -> Result<(), StoreError> {
        self.meta
            .insert("signed_rotated_at", &at_ms.to_be_bytes()[..])
            .map_err(backend)?;
        Ok(())
    }

    #[tracing::instrument(name = "store.add_signed_prekey", skip_all)]
    fn add_signed_prekey(&self, key: &SignedPreKeyPair, at_ms: u64) -> Result<(), StoreError> {
        let record = enc(key)?;
        (&self.meta, &self.signed)
            .transaction(|(meta, signed)| {
                signed.insert(&key.id().0.to_be_bytes(), record.as_slice())?;
                meta.insert("signed_rotated_at", &at_ms.to_be_bytes()[..])?;
                Ok::<_, ConflictableTransactionError<StoreError>>(())
            })
            .map_err(tx)
    }

    #[tracing::instrument(name = "store.contact", skip_all)]
    fn contact(&self, username: &Username) -> Result<Option<Contact>, StoreError> {
        Self::get(&self.contacts, username.as_str())
    }

    #[tracing::instrument(name = "store.save_contact", skip_all)]
    fn save_contact(&self, contact: &Contact) -> Result<(), StoreError> {
        self.contacts
            .insert(contact.username.as_str(), enc(contact)?)
            .map_err(backend)?;
        Ok(())
    }

    #[tracing::instrument(name = "store.contacts", skip_all)]
    fn contacts(&self) -> Result<Vec<Contact>, StoreError> {
        self.contacts
            .iter()
            .values()
            .map(|v| dec(&v.map_err(backend)?))
            .collect()
    }

    #[tracing::instrument(name = "store.session", skip_all)]
    fn session(&self, peer: &Username) -> Result<Option<Session>, StoreError> {
        self.sessions
            .get(peer.as_str())
            .map_err(backend)?
            .map(|v| Session::from_bytes(&v).map_err(|e| StoreError::Corrupt(e.to_string())))
            .transpose()
    }

    #[tracing::instrument(name = "store.message", skip_all)]
    fn message(
        &self,
        peer: &Username,
        id: &MessageId,
    ) -> Result<Option<StoredMessage>, StoreError> {
        let Some(seq) = self
            .message_ids
            .get(key(peer, id.as_bytes()))
            .map_err(backend)?
        else {
            return Ok(None);
        };
        Self::get(&self.messages, key(peer, &seq))
    }

    #[tracing::instrument(name = "store.history", skip_all)]
    fn history(&self, peer: &Username) -> Result<Vec<StoredMessage>, StoreError> {
        self.messages
            .scan_prefix(key(peer, &[]))
            .values()
            .map(|v| dec(&v.map_err(backend)?))
            .collect()
    }

    #[tracing::instrument(name = "store.conversations", skip_all)]
    fn conversations(&self) -> Result<Vec<Conversation>, StoreError> {
        let mut list = Vec::new();
        for item in self.activity.iter() {
            let (peer, v) = item.map_err(backend)?;
            let a: Activity = dec(&v)?;
            let peer = std::str::from_utf8(&peer)
                .ok()
                .and_then(|p| Username::new(p).ok())
                .ok_or_else(|| StoreError::Corrupt("conversation key".into()))?;
            let Some(last) = Self::get(&self.messages, key(&peer, &a.last_seq.to_be_bytes()))?
            else {
                continue;
            };
            list.push((
                a.order,
                Conversation {
                    peer,
                    messages: a.messages,
                    last,
                },
            ));
        }
        list.sort_by_key(|(order, _)| std::cmp::Reverse(*order));
        Ok(list.into_iter().map(|(_, c)| c).collect())
    }

    #[tracing::instrument(name = "store.record_outgoing", skip_all)]
    fn record_outgoing(
        &self,
        message: &StoredMessage,
        session: &Session,
        outbox: &OutboxEntry,
    ) -> Result<(), StoreError> {
        let state = session.to_bytes();
        let entry = enc(outbox)?;
        (
            &self.sessions,
            &self.messages,
            &self.message_ids,
            &self.activity,
            &self.outbox,
        )
            .transaction(|(sessions, messages, ids, activity, out)| {
                sessions.insert(message.peer.as_str(), state.as_slice())?;
                Self::put_message(messages, ids, activity, message)?;
                out.insert(key(&message.peer, message.id.as_bytes()), entry.as_slice())?;
                Ok(())
            })
            .map_err(tx)
    }

    #[tracing::instrument(name = "store.record_incoming", skip_all)]
    fn record_incoming(
        &self,
        message: &StoredMessage,
        session: &Session,
        consumed: Option<PreKeyId>,
    ) -> Result<Recorded, StoreError> {
        let state = session.to_bytes();
        (
            &self.sessions,
            &self.messages,
            &self.message_ids,
            &self.activity,
            &self.one_time,
        )
            .transaction(|(sessions, messages, ids, activity, one_time)| {
                if let Some(seq) = ids.get(key(&message.peer, message.id.as_bytes()))? {
                    // A copy that could not be decrypted is replaced by one that could.
                    let at = key(&message.peer, &seq);
                    let earlier: Option<StoredMessage> = messages
                        .get(&at)?
                        .map(|v| dec(&v))
                        .transpose()
                        .map_err(abort)?;
                    if earlier.is_none_or(|m| m.status != MessageStatus::Undecryptable) {
                        return Ok(Recorded::Duplicate);
                    }
                    messages.insert(at, enc(message).map_err(abort)?)?;
                } else {
                    Self::put_message(messages, ids, activity, message)?;
                }
                sessions.insert(message.peer.as_str(), state.as_slice())?;
                if let Some(id) = consumed {
                    one_time.remove(&id.0.to_be_bytes())?;
                }
                Ok(Recorded::Stored)
            })
            .map_err(tx)
    }

    #[tracing::instrument(name = "store.record_undecryptable", skip_all)]
    fn record_undecryptable(&self, message: &StoredMessage) -> Result<Recorded, StoreError> {
        (&self.messages, &self.message_ids, &self.activity)
            .transaction(|(messages, ids, activity)| {
                if ids
                    .get(key(&message.peer, message.id.as_bytes()))?
                    .is_some()
                {
                    return Ok(Recorded::Duplicate);
                }
                Self::put_message(messages, ids, activity, message)?;
                Ok(Recorded::Stored)
            })
            .map_err(tx)
    }

    #[tracing::instrument(name = "store.hold_inbound", skip_all)]
    fn hold_inbound(&self, held: &HeldInbound) -> Result<bool, StoreError> {
        // Keys: `peer ‖ 0 ‖ 0 ‖ sequence` for the envelopes in arrival order, and
        // `peer ‖ 0 ‖ 1 ‖ id` → sequence for the id index.
        let record = enc(held)?;
        self.held_inbound
            .transaction(|tree| -> TxResult<bool> {
                let index = key(
                    &held.from,
                    &[&[1u8][..], held.envelope.id.as_bytes()].concat(),
                );
                if tree.get(&index)?.is_some() {
                    return Ok(true);
                }
                let count_key = key(&held.from, &[2u8]);
                let count = tree.get(&count_key)?.map_or(0, |v| {
                    u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8]))
                });
                if count as usize >= MAX_HELD_INBOUND {
                    return Ok(false);
                }
                let seq = tree.generate_id()?.to_be_bytes();
                tree.insert(
                    key(&held.from, &[&[0u8][..], &seq].concat()),
                    record.clone(),
                )?;
                tree.insert(index, &seq[..])?;
                tree.insert(count_key, &(count + 1).to_be_bytes()[..])?;
                Ok(true)
            })
            .map_err(tx)
    }

    #[tracing::instrument(name = "store.held_inbound", skip_all)]
    fn held_inbound(&self, peer: &Username) -> Result<Vec<HeldInbound>, StoreError> {
        self.held_inbound
            .scan_prefix(key(peer, &[0u8]))
            .values()
            .map(|v| dec(&v.map_err(backend)?))
            .collect()
    }

    #[tracing::instrument(name = "store.release_inbound", skip_all)]
    fn release_inbound(&self, peer: &Username, id: &MessageId) -> Result<(), StoreError> {
        self.held_inbound
            .transaction(|tree| -> TxResult<()> {
                let index = key(peer, &[&[1u8][..], id.as_bytes()].concat());
                let Some(seq) = tree.remove(index)? else {
                    return Ok(());
                };
                tree.remove(key(peer, &[&[0u8][..], seq.as_ref()].concat()))?;
                let count_key = key(peer, &[2u8]);
                let count = tree.get(&count_key)?.map_or(0, |v| {
                    u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8]))
                });
                tree.insert(count_key, &count.saturating_sub(1).to_be_bytes()[..])?;
                Ok(())
            })
            .map_err(tx)
    }

    #[tracing::instrument(name = "store.record_held", skip_all)]
    fn record_held(&self, message: &StoredMessage) -> Result<(), StoreError> {
        (&self.messages, &self.message_ids, &self.activity)
            .transaction(|(messages, ids, activity)| {
                Self::put_message(messages, ids, activity, message)
            })
            .map_err(tx)
    }

    #[tracing::instrument(name = "store.record_released", skip_all)]
    fn record_released(
        &self,
        message: &StoredMessage,
        session: &Session,
        outbox: &OutboxEntry,
    ) -> Result<(), StoreError> {
        let state = session.to_bytes();
        let entry = enc(outbox)?;
        (
            &self.sessions,
            &self.messages,
            &self.message_ids,
            &self.outbox,
        )
            .transaction(|(sessions, messages, ids, out)| {
                let Some(seq) = ids.get(key(&message.peer, message.id.as_bytes()))? else {
                    return Err(abort(StoreError::Corrupt(
                        "released message not found".into(),
                    )));
                };
                let k = key(&message.peer, &seq);
                let mut stored = message.clone();
                stored.status = MessageStatus::Pending;
                messages.insert(k, enc(&stored).map_err(abort)?)?;
                sessions.insert(message.peer.as_str(), state.as_slice())?;
                out.insert(key(&message.peer, message.id.as_bytes()), entry.as_slice())?;
                Ok(())
            })
            .map_err(tx)
    }

    #[tracing::instrument(name = "store.record_control", skip_all)]
    fn record_control(
        &self,
        peer: &Username,
        session: &Session,
        outbox: &OutboxEntry,
    ) -> Result<(), StoreError> {
        let state = session.to_bytes();
        let entry = enc(outbox)?;
        (&self.sessions, &self.outbox)
            .transaction(|(sessions, out)| {
                sessions.insert(peer.as_str(), state.as_slice())?;
                out.insert(key(peer, outbox.envelope.id.as_bytes()), entry.as_slice())?;
                Ok::<_, ConflictableTransactionError<StoreError>>(())
            })
            .map_err(tx)
    }

    #[tracing::instrument(name = "store.record_receipt", skip_all)]
    fn record_receipt(
        &self,
        peer: &Username,
        session: &Session,
        consumed: Option<PreKeyId>,
        ids: &[MessageId],
        status: MessageStatus,
    ) -> Result<Vec<MessageId>, StoreError> {
        let state = session.to_bytes();
        (
            &self.sessions,
            &self.messages,
            &self.message_ids,
            &self.one_time,
        )
            .transaction(|(sessions, messages, index, one_time)| {
                sessions.insert(peer.as_str(), state.as_slice())?;
                if let Some(id) = consumed {
                    one_time.remove(&id.0.to_be_bytes())?;
                }
                let mut changed = Vec::new();
                for id in ids {
                    let Some(seq) = index.get(key(peer, id.as_bytes()))? else {
                        continue;
                    };
                    let k = key(peer, &seq);
                    let Some(v) = messages.get(&k)? else { continue };
                    let mut m: StoredMessage = dec(&v).map_err(abort)?;
                    if m.direction == crate::ports::Direction::Outgoing
                        && m.status.may_become(status)
                    {
                        m.status = status;
                        messages.insert(k, enc(&m).map_err(abort)?)?;
                        changed.push(*id);
                    }
                }
                Ok(changed)
            })
            .map_err(tx)
    }

    #[tracing::instrument(name = "store.set_status", skip_all)]
    fn set_status(
        &self,
        peer: &Username,
        id: &MessageId,
        status: MessageStatus,
    ) -> Result<bool, StoreError> {
        (&self.messages, &self.message_ids, &self.outbox)
            .transaction(|(messages, ids, out)| {
                if status != MessageStatus::Pending {
                    // Also for outbox entries without a message (receipts).
                    out.remove(key(peer, id.as_bytes()))?;
                }
                let Some(seq) = ids.get(key(peer, id.as_bytes()))? else {
                    return Ok(false);
                };
                let k = key(peer, &seq);
                let Some(v) = messages.get(&k)? else {
                    return Ok(false);
                };
                let mut m: StoredMessage = dec(&v).map_err(abort)?;
                if !m.status.may_become(status) {
                    return Ok(false);
                }
                m.status = status;
                messages.insert(k, enc(&m).map_err(abort)?)?;
                Ok(true)
            })
            .map_err(tx)
    }

    #[tracing::instrument(name = "store.outbox", skip_all)]
    fn outbox(&self) -> Result<Vec<OutboxEntry>, StoreError> {
        self.outbox
            .iter()
            .values()
            .map(|v| dec(&v.map_err(backend)?))
            .collect()
    }

    #[tracing::instrument(name = "store.flush", skip_all)]
    async fn flush(&self) -> Result<(), StoreError> {
        // Group commit: callers arriving during a flush share the next one. Not `flush_async`,
        // which can deadlock when called concurrently in sled 0.34 (spacejam/sled#1308).
        let needed = self.flushes_started.load(Ordering::Acquire) + 1;
        let _running = self.flushing.lock().await;
        if self.flushes_done.load(Ordering::Acquire) >= needed {
            return Ok(());
        }
        let this = self.flushes_started.fetch_add(1, Ordering::AcqRel) + 1;
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|e| StoreError::Backend(e.to_string()))?
            .map_err(backend)?;
        self.flushes_done.store(this, Ordering::Release);
        Ok(())
    }
}
