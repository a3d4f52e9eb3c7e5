//! The node's sled adapter of the [`Store`] port. Each lifecycle step is one sled transaction over
//! the trees it touches; durability comes from [`Store::flush`] (blocking flush on the blocking
//! pool, group-committed).
//!
//! Encryption at rest: every record that holds something of the user's (message bodies,
//! sessions, prekeys, the identity seed, contacts, people, groups, file offers, the outbox and
//! held mail) is sealed under the store key (AES-256-GCM, a random nonce per record, the tree's
//! name as associated data). The search index keeps keyed hashes of word prefixes, never words.
//! What stays readable: the keys (usernames, conversation and message ids), counters and times.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use peerchat_pki::Username;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hmac::{Hmac, Mac};
use rand::RngCore;
use zeroize::Zeroizing;

use super::store_key::StoreKey;
use crate::domain::search::{self, Query};
use crate::domain::{
    Address, ConversationId, GroupId, MessageId, OneTimePreKeyPair, PreKeyId, Session,
    SignedPreKeyPair,
};
use crate::ports::{
    Batch, BlobError, Committed, Contact, ContactStore, Conversation, Direction, FileRecord,
    FileStore, GroupStore, HeldInbound, IdentityStore, IfStored, LocalIdentity, MAX_HELD_INBOUND,
    MemberMoved, MessageStatus, MessageStore, OutboxEntry, OutboxStore, Page, PreKeyStore,
    SessionStore, Store, StoreError, StoredMessage, Write,
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

/// Seals records under the store key, and names word prefixes for the search index.
struct Sealer {
    cipher: Aes256Gcm,
    index: Zeroizing<[u8; 32]>,
}

/// Bytes of a nonce, first in a sealed record.
const NONCE_BYTES: usize = 12;
/// Bytes of a search token (a keyed hash of a word prefix).
const TOKEN_BYTES: usize = 16;

impl Sealer {
    fn new(key: &StoreKey) -> Self {
        let records: Zeroizing<[u8; 32]> =
            crate::domain::kdf::hkdf_sha256(None, key.as_bytes(), b"peerchat store records v1");
        let index =
            crate::domain::kdf::hkdf_sha256(None, key.as_bytes(), b"peerchat store index v1");
        Self {
            cipher: Aes256Gcm::new(records.as_ref().into()),
            index,
        }
    }

    /// `nonce ‖ AES-256-GCM(plain)`, bound to `tree`.
    fn seal(&self, tree: &[u8], plain: &[u8]) -> Result<Vec<u8>, StoreError> {
        let mut nonce = [0u8; NONCE_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let sealed = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: tree,
                },
            )
            .map_err(|_| StoreError::Corrupt("a record could not be sealed".into()))?;
        Ok([&nonce[..], &sealed].concat())
    }

    /// The plaintext of a record [`Sealer::seal`] sealed for `tree`.
    fn open(&self, tree: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        let (nonce, body) = sealed
            .split_at_checked(NONCE_BYTES)
            .ok_or_else(|| StoreError::Corrupt("a sealed record is too short".into()))?;
        self.cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: body,
                    aad: tree,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| {
                StoreError::Corrupt(
                    "a record does not open under the store key (a wrong key, or a changed record)"
                        .into(),
                )
            })
    }

    /// The index's name for a word prefix: HMAC-SHA-256 under the index key, cut to 16 bytes.
    fn token(&self, prefix: &str) -> [u8; TOKEN_BYTES] {
        let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(self.index.as_ref())
            .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
        mac.update(prefix.as_bytes());
        let full = mac.finalize().into_bytes();
        let mut token = [0u8; TOKEN_BYTES];
        token.copy_from_slice(&full[..TOKEN_BYTES]);
        token
    }
}

/// The names of the trees whose records are sealed, as opened (and bound into each record).
mod trees {
    pub const META: &[u8] = b"meta";
    pub const SIGNED: &[u8] = b"signed_prekeys";
    pub const ONE_TIME: &[u8] = b"one_time_prekeys";
    pub const CONTACTS: &[u8] = b"contacts";
    pub const SESSIONS: &[u8] = b"sessions";
    pub const MESSAGES: &[u8] = b"messages";
    pub const PEOPLE: &[u8] = b"people";
    pub const OUTBOX: &[u8] = b"outbox";
    pub const KNOWN_ADDRESSES: &[u8] = b"known_addresses";
    pub const HELD_INBOUND: &[u8] = b"held_inbound";
    pub const GROUPS: &[u8] = b"groups";
    pub const FILES: &[u8] = b"files";
}

/// The records of `meta` that are sealed (the rest are counters, times and flags).
const SEALED_META: [&str; 3] = ["identity", "own_profile", "settings"];

/// The sled store of a node's data directory.
pub struct SledStore {
    sealer: Sealer,
    db: sled::Db,
    meta: sled::Tree,
    signed: sled::Tree,
    one_time: sled::Tree,
    contacts: sled::Tree,
    sessions: sled::Tree,
    messages: sled::Tree,
    message_ids: sled::Tree,
    people: sled::Tree,
    /// The search index: `token(word prefix) ‖ message key` → the message's sending time.
    words: sled::Tree,
    outbox: sled::Tree,
    activity: sled::Tree,
    unread: sled::Tree,
    known_addresses: sled::Tree,
    held_inbound: sled::Tree,
    groups: sled::Tree,
    file_records: sled::Tree,
    file_bytes: super::file_dir::FileDir,
    flushes_started: AtomicU64,
    flushes_done: AtomicU64,
    flushing: tokio::sync::Mutex<()>,
    /// Cancelled once a write found the disk full (see [`SledStore::disk_full`]).
    disk_full: tokio_util::sync::CancellationToken,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SledStore")
    }
}

fn backend(e: sled::Error) -> StoreError {
    match &e {
        sled::Error::Io(io) if io.kind() == std::io::ErrorKind::StorageFull => StoreError::Full,
        _ => StoreError::Backend(e.to_string()),
    }
}

fn enc<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_stdvec(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn dec<T: DeserializeOwned>(b: &[u8]) -> Result<T, StoreError> {
    postcard::from_bytes(b).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// A message as stored before groups (no group, no receipts).
#[derive(Deserialize)]
struct MessageBeforeGroups {
    id: MessageId,
    peer: Username,
    direction: Direction,
    body: String,
    sent_at_ms: u64,
    status: MessageStatus,
}

/// A message as stored before replies, edits, deletes and reactions.
#[derive(Deserialize)]
struct MessageBeforeAmends {
    id: MessageId,
    peer: Username,
    direction: Direction,
    body: String,
    sent_at_ms: u64,
    status: MessageStatus,
    group: Option<crate::domain::GroupId>,
    receipts: std::collections::BTreeMap<Username, MessageStatus>,
}

/// A message record, also one written by an earlier version (postcard has no optional trailing
/// fields: such a record ends early). One from before groups reads as a direct message; one
/// from before amendments as neither a reply nor amended.
fn dec_message(b: &[u8]) -> Result<StoredMessage, StoreError> {
    dec(b)
        .or_else(|e| match postcard::from_bytes::<MessageBeforeAmends>(b) {
            Ok(m) => Ok(StoredMessage {
                group: m.group,
                receipts: m.receipts,
                ..StoredMessage::direct(m.id, m.peer, m.direction, m.body, m.sent_at_ms, m.status)
            }),
            Err(_) => Err(e),
        })
        .or_else(|e| match postcard::from_bytes::<MessageBeforeGroups>(b) {
            Ok(m) => Ok(StoredMessage::direct(
                m.id,
                m.peer,
                m.direction,
                m.body,
                m.sent_at_ms,
                m.status,
            )),
            Err(_) => Err(e),
        })
}

/// An outbox entry as stored before groups.
#[derive(Deserialize)]
struct EntryBeforeGroups {
    to: Address,
    queued_at_ms: u64,
    envelope: crate::domain::Envelope,
}

/// An outbox record, also one written before groups (for a direct message).
fn dec_entry(b: &[u8]) -> Result<OutboxEntry, StoreError> {
    dec(b).or_else(|e| match postcard::from_bytes::<EntryBeforeGroups>(b) {
        Ok(old) => Ok(OutboxEntry {
            to: old.to,
            queued_at_ms: old.queued_at_ms,
            envelope: old.envelope,
            group: None,
        }),
        Err(_) => Err(e),
    })
}

/// A file offer as recorded before offers carried chunk digests.
#[derive(Deserialize)]
struct OfferBeforeDigests {
    id: crate::domain::FileId,
    name: String,
    size: u64,
    media_type: String,
    chunk_size: u32,
    key: [u8; 32],
    nonce: [u8; 7],
    sha256: [u8; 32],
}

/// A file record as stored before group files and chunk digests.
#[derive(Deserialize)]
struct FileBeforeGroups {
    offer: OfferBeforeDigests,
    peer: Username,
    direction: Direction,
    state: crate::ports::FileState,
    chunks_done: u32,
    at_ms: u64,
    saved_as: Option<String>,
}

/// A file record, also one written before group files (a direct file whose chunks are checked
/// by their authentication alone).
fn dec_file(b: &[u8]) -> Result<FileRecord, StoreError> {
    dec(b).or_else(|e| match postcard::from_bytes::<FileBeforeGroups>(b) {
        Ok(old) => Ok(FileRecord {
            offer: crate::domain::FileOffer {
                id: old.offer.id,
                name: old.offer.name,
                size: old.offer.size,
                media_type: old.offer.media_type,
                chunk_size: old.offer.chunk_size,
                key: old.offer.key,
                nonce: old.offer.nonce,
                sha256: old.offer.sha256,
                chunk_digests: Vec::new(),
            },
            peer: old.peer,
            direction: old.direction,
            state: old.state,
            chunks_done: old.chunks_done,
            at_ms: old.at_ms,
            saved_as: old.saved_as,
            group: None,
        }),
        Err(_) => Err(e),
    })
}

/// `name ‖ 0 ‖ suffix`: a record of a conversation, device or user (whose text forms contain no
/// 0 byte), so each one's records are one prefix.
fn key(name: &impl std::fmt::Display, suffix: &[u8]) -> Vec<u8> {
    let mut k = name.to_string().into_bytes();
    k.push(0);
    k.extend_from_slice(suffix);
    k
}

/// How long opening waits for sled's lock on a database this process just let go of.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Opens the sled database in `dir`. sled lets go of its file lock from background threads a
/// little after the last handle drops, so a database opened again at once (the daemon after a
/// full disk, a test reopening a store) can find it still held: that is waited out, for a
/// while. (A second daemon on the same directory is stopped before, by `daemon.lock`.)
fn open_sled(dir: &Path) -> sled::Result<sled::Db> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match sled::Config::new()
            .path(dir)
            .cache_capacity(CACHE_BYTES)
            .open()
        {
            Err(sled::Error::Io(e))
                if e.to_string().starts_with("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            opened => return opened,
        }
    }
}

fn tx<E: std::fmt::Display>(e: TransactionError<E>) -> StoreError {
    match e {
        TransactionError::Abort(e) => StoreError::Corrupt(e.to_string()),
        TransactionError::Storage(e) => backend(e),
    }
}

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

impl SledStore {
    /// File bytes go under `root` (its `.peerchat/` directory) and complete downloads into
    /// `downloads` (by default both are `dir` with the extension `files`).
    pub fn with_files(mut self, root: &Path, downloads: &Path) -> Self {
        self.file_bytes = super::file_dir::FileDir::new(root, downloads);
        self
    }

    /// Opens (or creates) the store in `dir`, its records sealed under `key`. A store written
    /// before records were sealed has them sealed here, once.
    pub fn open(dir: &Path, key: &StoreKey) -> Result<Self, StoreError> {
        let db = open_sled(dir).map_err(backend)?;
        let t = |n: &str| db.open_tree(n).map_err(backend);
        let store = Self {
            sealer: Sealer::new(key),
            meta: t("meta")?,
            signed: t("signed_prekeys")?,
            one_time: t("one_time_prekeys")?,
            contacts: t("contacts")?,
            sessions: t("sessions")?,
            messages: t("messages")?,
            message_ids: t("message_ids")?,
            words: t("search_words")?,
            people: t("people")?,
            outbox: t("outbox")?,
            activity: t("activity")?,
            unread: t("unread")?,
            known_addresses: t("known_addresses")?,
            held_inbound: t("held_inbound")?,
            groups: t("groups")?,
            file_records: t("files")?,
            file_bytes: super::file_dir::FileDir::new(
                &dir.with_extension("files"),
                &dir.with_extension("files"),
            ),
            flushes_started: AtomicU64::new(0),
            flushes_done: AtomicU64::new(0),
            flushing: tokio::sync::Mutex::new(()),
            disk_full: tokio_util::sync::CancellationToken::new(),
            db,
        };
        store.seal_once()?;
        store.count_unread_once()?;
        store.index_words_once()?;
        Ok(store)
    }

    /// Cancelled once a commit or a flush found the disk full. sled then refuses every write
    /// until the database is opened again (its I/O error is kept until then), and writes it
    /// took in memory but had not flushed are lost with it: whoever runs the store drops
    /// everything that used it (so no one waiting on a flush of this database is told it
    /// succeeded) and opens it again when there is space ([`SledStore::probe`]).
    pub fn disk_full(&self) -> tokio_util::sync::CancellationToken {
        self.disk_full.clone()
    }

    /// Whether the store can write now: writes a record and flushes it.
    pub async fn probe(&self) -> Result<(), StoreError> {
        self.meta
            .insert("probe", &[1u8][..])
            .map_err(|e| self.sled_error(e))?;
        self.flush().await
    }

    /// A sled error as the store's, noted when it says the disk is full.
    fn sled_error(&self, e: sled::Error) -> StoreError {
        self.failed(backend(e))
    }

    /// A transaction's error as the store's, noted when it says the disk is full.
    fn tx_error<E: std::fmt::Display>(&self, e: TransactionError<E>) -> StoreError {
        self.failed(tx(e))
    }

    /// Notes a disk-full error (see [`SledStore::disk_full`]) and passes it on.
    fn failed(&self, e: StoreError) -> StoreError {
        if matches!(e, StoreError::Full) {
            self.disk_full.cancel();
        }
        e
    }

    /// Seals, tree by tree, the records of a store written before they were sealed. Each
    /// tree's records and its flag change in one transaction, so a crash midway seals nothing
    /// twice. The old index (of plain words) is dropped, to be rebuilt of tokens.
    fn seal_once(&self) -> Result<(), StoreError> {
        if self
            .meta
            .contains_key("sealed")
            .map_err(|e| self.sled_error(e))?
        {
            return Ok(());
        }
        let sealed_trees: [(&sled::Tree, &[u8]); 11] = [
            (&self.signed, trees::SIGNED),
            (&self.one_time, trees::ONE_TIME),
            (&self.contacts, trees::CONTACTS),
            (&self.sessions, trees::SESSIONS),
            (&self.messages, trees::MESSAGES),
            (&self.people, trees::PEOPLE),
            (&self.outbox, trees::OUTBOX),
            (&self.known_addresses, trees::KNOWN_ADDRESSES),
            (&self.held_inbound, trees::HELD_INBOUND),
            (&self.groups, trees::GROUPS),
            (&self.file_records, trees::FILES),
        ];
        for (tree, name) in sealed_trees {
            let flag = [b"sealed:", name].concat();
            if self
                .meta
                .contains_key(&flag)
                .map_err(|e| self.sled_error(e))?
            {
                continue;
            }
            let mut records = Vec::new();
            for item in tree.iter() {
                let (k, v) = item.map_err(|e| self.sled_error(e))?;
                if name != trees::HELD_INBOUND || is_held_record(&k) {
                    records.push((k, self.sealer.seal(name, &v)?));
                }
            }
            (tree, &self.meta)
                .transaction(|(t, meta)| {
                    for (k, v) in &records {
                        t.insert(k, v.as_slice())?;
                    }
                    meta.insert(flag.as_slice(), &[1u8][..])?;
                    Ok::<_, ConflictableTransactionError<StoreError>>(())
                })
                .map_err(|e| self.tx_error(e))?;
        }
        let mut records = Vec::new();
        for name in SEALED_META {
            if let Some(v) = self.meta.get(name).map_err(|e| self.sled_error(e))? {
                records.push((name, self.sealer.seal(trees::META, &v)?));
            }
        }
        self.meta
            .transaction(|meta| {
                for (k, v) in &records {
                    meta.insert(*k, v.as_slice())?;
                }
                // The index of plain words goes; `index_words_once` rebuilds it of tokens.
                meta.remove("words_indexed")?;
                meta.insert("sealed", &[1u8][..])?;
                Ok::<_, ConflictableTransactionError<StoreError>>(())
            })
            .map_err(|e| self.tx_error(e))?;
        Ok(())
    }

    /// A record sealed for `tree`.
    fn seal<T: Serialize>(&self, tree: &[u8], value: &T) -> Result<Vec<u8>, StoreError> {
        let plain = Zeroizing::new(enc(value)?);
        self.sealer.seal(tree, &plain)
    }

    /// A record of `tree`, opened and decoded.
    fn unseal<T: DeserializeOwned>(&self, tree: &[u8], sealed: &[u8]) -> Result<T, StoreError> {
        dec(&self.sealer.open(tree, sealed)?)
    }

    /// A message record, opened and decoded (also one of an earlier layout).
    fn unseal_message(&self, sealed: &[u8]) -> Result<StoredMessage, StoreError> {
        dec_message(&self.sealer.open(trees::MESSAGES, sealed)?)
    }

    /// The index keys of the message at `at`: one per kept prefix of each of its words.
    fn index_keys(&self, message: Option<&StoredMessage>, at: &[u8]) -> BTreeSet<Vec<u8>> {
        index_words(message)
            .iter()
            .flat_map(|word| search::index_prefixes(word))
            .map(|prefix| [&self.sealer.token(prefix)[..], at].concat())
            .collect()
    }

    /// Unread counts are kept as messages arrive and are read; a store from before they were
    /// kept has them counted once, here.
    fn count_unread_once(&self) -> Result<(), StoreError> {
        if self
            .meta
            .contains_key("unread_counted")
            .map_err(|e| self.sled_error(e))?
        {
            return Ok(());
        }
        let mut counts: std::collections::BTreeMap<String, u64> = Default::default();
        for value in self.messages.iter().values() {
            let message = self.unseal_message(&value.map_err(|e| self.sled_error(e))?)?;
            if is_unread(&message) {
                *counts
                    .entry(message.conversation().to_string())
                    .or_default() += 1;
            }
        }
        for (conversation, count) in counts {
            self.unread
                .insert(conversation.as_bytes(), &count.to_be_bytes()[..])
                .map_err(|e| self.sled_error(e))?;
        }
        self.meta
            .insert("unread_counted", &[1u8][..])
            .map_err(|e| self.sled_error(e))?;
        Ok(())
    }

    /// The search index is kept as messages are written; a store from before it was kept has
    /// it built once, here.
    fn index_words_once(&self) -> Result<(), StoreError> {
        if self
            .meta
            .contains_key("words_indexed")
            .map_err(|e| self.sled_error(e))?
        {
            return Ok(());
        }
        self.words.clear().map_err(|e| self.sled_error(e))?;
        let mut batch = sled::Batch::default();
        for item in self.messages.iter() {
            let (at, value) = item.map_err(|e| self.sled_error(e))?;
            let message = self.unseal_message(&value)?;
            for k in self.index_keys(Some(&message), &at) {
                batch.insert(k, &message.sent_at_ms.to_be_bytes()[..]);
            }
        }
        self.words
            .apply_batch(batch)
            .map_err(|e| self.sled_error(e))?;
        self.meta
            .insert("words_indexed", &[1u8][..])
            .map_err(|e| self.sled_error(e))?;
        Ok(())
    }

    /// The sealed record `k` of `tree`, opened and decoded.
    fn get<T: DeserializeOwned>(
        &self,
        tree: &sled::Tree,
        k: impl AsRef<[u8]>,
    ) -> Result<Option<T>, StoreError> {
        let name = tree.name();
        tree.get(k)
            .map_err(|e| self.sled_error(e))?
            .map(|v| self.unseal(&name, &v))
            .transpose()
    }

    /// Every sealed record of `tree`, opened and decoded.
    fn all<T: DeserializeOwned>(&self, tree: &sled::Tree) -> Result<Vec<T>, StoreError> {
        let name = tree.name();
        tree.iter()
            .values()
            .map(|v| self.unseal(&name, &v.map_err(|e| self.sled_error(e))?))
            .collect()
    }

    /// Records a message (`encoded`) in the transaction: the message under its sequence
    /// number, the id index and the conversation's activity.
    fn put_message(
        messages: &sled::transaction::TransactionalTree,
        ids: &sled::transaction::TransactionalTree,
        activity: &sled::transaction::TransactionalTree,
        message: &StoredMessage,
        encoded: &[u8],
    ) -> Result<Vec<u8>, ConflictableTransactionError<Stop>> {
        let conversation = message.conversation();
        let seq = messages.generate_id()?;
        let at = key(&conversation, &seq.to_be_bytes());
        messages.insert(at.clone(), encoded)?;
        ids.insert(
            key(&conversation, message.id.as_bytes()),
            &seq.to_be_bytes()[..],
        )?;
        let name = conversation.to_string();
        let mut a: Activity = match activity.get(name.as_bytes())? {
            Some(v) => dec(&v)?,
            None => Activity {
                order: 0,
                messages: 0,
                last_seq: 0,
            },
        };
        a.order = seq;
        a.messages += 1;
        a.last_seq = seq;
        activity.insert(name.as_bytes(), enc(&a)?)?;
        Ok(at)
    }
}

impl IdentityStore for SledStore {
    #[tracing::instrument(name = "store.identity", skip_all)]
    fn identity(&self) -> Result<Option<LocalIdentity>, StoreError> {
        let record: Option<IdentityRecord> = self.get(&self.meta, "identity")?;
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
        let record = self.seal(trees::META, &record)?;
        let next = one_time
            .iter()
            .map(|k| k.id().0)
            .chain([signed.id().0])
            .max()
            .unwrap_or(0)
            + 1;
        let signed_record = self.seal(trees::SIGNED, signed)?;
        let one_time_records = one_time
            .iter()
            .map(|k| self.seal(trees::ONE_TIME, k))
            .collect::<Result<Vec<_>, _>>()?;
        (&self.meta, &self.signed, &self.one_time)
            .transaction(|(meta, signed_tree, one_time_tree)| {
                meta.insert("identity", record.as_slice())?;
                meta.insert("next_prekey_id", &next.to_be_bytes()[..])?;
                signed_tree.insert(&signed.id().0.to_be_bytes(), signed_record.as_slice())?;
                for (k, record) in one_time.iter().zip(&one_time_records) {
                    one_time_tree.insert(&k.id().0.to_be_bytes(), record.as_slice())?;
                }
                Ok::<_, ConflictableTransactionError<StoreError>>(())
            })
            .map_err(|e| self.tx_error(e))
    }

    #[tracing::instrument(name = "store.save_certificate", skip_all)]
    fn save_certificate(&self, certificate_pem: &str) -> Result<(), StoreError> {
        let Some(mut record) = self.get::<IdentityRecord>(&self.meta, "identity")? else {
            return Err(StoreError::Corrupt("no identity to renew".into()));
        };
        record.certificate_pem = certificate_pem.to_owned();
        let bytes = self.seal(trees::META, &record)?;
        self.meta
            .insert("identity", bytes.as_slice())
            .map_err(|e| self.sled_error(e))?;
        Ok(())
    }
}

impl PreKeyStore for SledStore {
    #[tracing::instrument(name = "store.signed_prekey", skip_all)]
    fn signed_prekey(&self, id: PreKeyId) -> Result<Option<SignedPreKeyPair>, StoreError> {
        self.get(&self.signed, id.0.to_be_bytes())
    }

    #[tracing::instrument(name = "store.one_time_prekey", skip_all)]
    fn one_time_prekey(&self, id: PreKeyId) -> Result<Option<OneTimePreKeyPair>, StoreError> {
        self.get(&self.one_time, id.0.to_be_bytes())
    }

    #[tracing::instrument(name = "store.add_one_time_prekeys", skip_all)]
    fn add_one_time_prekeys(&self, keys: &[OneTimePreKeyPair]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for k in keys {
            batch.insert(&k.id().0.to_be_bytes(), self.seal(trees::ONE_TIME, k)?);
        }
        self.one_time
            .apply_batch(batch)
            .map_err(|e| self.sled_error(e))
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
            .map_err(|e| self.sled_error(e))?
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
            .map_err(|e| self.sled_error(e))?
            .and_then(|b| <[u8; 8]>::try_from(b.as_ref()).ok())
            .map(u64::from_be_bytes))
    }

    #[tracing::instrument(name = "store.set_signed_prekey_rotated_at", skip_all)]
    fn set_signed_prekey_rotated_at(&self, at_ms: u64) -> Result<(), StoreError> {
        self.meta
            .insert("signed_rotated_at", &at_ms.to_be_bytes()[..])
            .map_err(|e| self.sled_error(e))?;
        Ok(())
    }

    #[tracing::instrument(name = "store.add_signed_prekey", skip_all)]
    fn add_signed_prekey(&self, key: &SignedPreKeyPair, at_ms: u64) -> Result<(), StoreError> {
        let record = self.seal(trees::SIGNED, key)?;
        (&self.meta, &self.signed)
            .transaction(|(meta, signed)| {
                signed.insert(&key.id().0.to_be_bytes(), record.as_slice())?;
                meta.insert("signed_rotated_at", &at_ms.to_be_bytes()[..])?;
                Ok::<_, ConflictableTransactionError<StoreError>>(())
            })
            .map_err(|e| self.tx_error(e))
    }
}

impl ContactStore for SledStore {
    #[tracing::instrument(name = "store.contact", skip_all)]
    fn contact(&self, device: &Address) -> Result<Option<Contact>, StoreError> {
        self.get(&self.contacts, device.to_string())
    }

    #[tracing::instrument(name = "store.save_contact", skip_all)]
    fn save_contact(&self, contact: &Contact) -> Result<(), StoreError> {
        self.contacts
            .insert(
                contact.address().to_string(),
                self.seal(trees::CONTACTS, contact)?,
            )
            .map_err(|e| self.sled_error(e))?;
        Ok(())
    }

    #[tracing::instrument(name = "store.contacts", skip_all)]
    fn contacts(&self) -> Result<Vec<Contact>, StoreError> {
        self.all(&self.contacts)
    }

    #[tracing::instrument(name = "store.known_addresses", skip_all)]
    fn known_addresses(&self, device: &Address) -> Result<Vec<String>, StoreError> {
        Ok(self
            .get(&self.known_addresses, device.to_string())?
            .unwrap_or_default())
    }

    #[tracing::instrument(name = "store.save_known_addresses", skip_all)]
    fn save_known_addresses(
        &self,
        device: &Address,
        addresses: &[String],
    ) -> Result<(), StoreError> {
        self.known_addresses
            .insert(
                device.to_string(),
                self.seal(trees::KNOWN_ADDRESSES, &addresses)?,
            )
            .map_err(|e| self.sled_error(e))?;
        Ok(())
    }
}

impl SessionStore for SledStore {
    #[tracing::instrument(name = "store.session", skip_all)]
    fn session(&self, device: &Address) -> Result<Option<Session>, StoreError> {
        self.sessions
            .get(device.to_string())
            .map_err(|e| self.sled_error(e))?
            .map(|v| {
                let plain = self.sealer.open(trees::SESSIONS, &v)?;
                Session::from_bytes(&plain).map_err(|e| StoreError::Corrupt(e.to_string()))
            })
            .transpose()
    }
}

impl MessageStore for SledStore {
    #[tracing::instrument(name = "store.message", skip_all)]
    fn message(
        &self,
        conversation: &ConversationId,
        id: &MessageId,
    ) -> Result<Option<StoredMessage>, StoreError> {
        let Some(seq) = self
            .message_ids
            .get(key(conversation, id.as_bytes()))
            .map_err(|e| self.sled_error(e))?
        else {
            return Ok(None);
        };
        self.messages
            .get(key(conversation, &seq))
            .map_err(|e| self.sled_error(e))?
            .map(|v| self.unseal_message(&v))
            .transpose()
    }

    #[tracing::instrument(name = "store.history", skip_all)]
    fn history(
        &self,
        conversation: &ConversationId,
        page: Page,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let start = key(conversation, &[]);
        let end = match page.before {
            None => key(conversation, &[0xff; 9]),
            Some(before) => {
                match self
                    .message_ids
                    .get(key(conversation, before.as_bytes()))
                    .map_err(|e| self.sled_error(e))?
                {
                    Some(seq) => key(conversation, &seq),
                    None => return Ok(Vec::new()),
                }
            }
        };
        let mut page_items = self
            .messages
            .range(start..end)
            .rev()
            .take(page.limit)
            .map(|item| self.unseal_message(&item.map_err(|e| self.sled_error(e))?.1))
            .collect::<Result<Vec<StoredMessage>, StoreError>>()?;
        page_items.reverse();
        Ok(page_items)
    }

    #[tracing::instrument(name = "store.search", skip_all)]
    fn search(&self, query: &Query, limit: usize) -> Result<Vec<StoredMessage>, StoreError> {
        // The messages holding a word with the kept prefix of the query's longest word,
        // newest first by the sending time the index keeps; each is then checked against the whole
        // query, until `limit` are found and the rest are older.
        let token = self
            .sealer
            .token(search::lookup_prefix(search::indexed(query.key_word())));
        let mut candidates = Vec::new();
        for item in self.words.scan_prefix(token) {
            let (k, v) = item.map_err(|e| self.sled_error(e))?;
            candidates.push((counter(Some(&v)), k[TOKEN_BYTES..].to_vec()));
        }
        candidates.sort_unstable_by(|a, b| b.cmp(a));
        candidates.dedup();
        let mut hits: Vec<StoredMessage> = Vec::new();
        for (sent_at_ms, at) in candidates {
            if hits.len() >= limit && hits.last().is_some_and(|m| m.sent_at_ms > sent_at_ms) {
                break;
            }
            let Some(v) = self.messages.get(&at).map_err(|e| self.sled_error(e))? else {
                continue;
            };
            let message = self.unseal_message(&v)?;
            if query.matches(&message) {
                hits.push(message);
            }
        }
        Ok(search::newest_first(hits, limit))
    }

    #[tracing::instrument(name = "store.conversations", skip_all)]
    fn conversations(&self) -> Result<Vec<Conversation>, StoreError> {
        let mut list = Vec::new();
        for item in self.activity.iter() {
            let (conversation, v) = item.map_err(|e| self.sled_error(e))?;
            let a: Activity = dec(&v)?;
            let id: ConversationId = std::str::from_utf8(&conversation)
                .ok()
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| StoreError::Corrupt("conversation key".into()))?;
            let Some(last) = self
                .messages
                .get(key(&id, &a.last_seq.to_be_bytes()))
                .map_err(|e| self.sled_error(e))?
                .map(|v| self.unseal_message(&v))
                .transpose()?
            else {
                continue;
            };
            let unread = counter(
                self.unread
                    .get(&conversation)
                    .map_err(|e| self.sled_error(e))?
                    .as_deref(),
            );
            list.push((
                a.order,
                Conversation {
                    id,
                    messages: a.messages,
                    unread,
                    last,
                },
            ));
        }
        list.sort_by_key(|(order, _)| std::cmp::Reverse(*order));
        Ok(list.into_iter().map(|(_, c)| c).collect())
    }

    #[tracing::instrument(name = "store.message_count", skip_all)]
    fn message_count(&self, conversation: &ConversationId) -> Result<u64, StoreError> {
        let Some(v) = self
            .activity
            .get(conversation.to_string().as_bytes())
            .map_err(|e| self.sled_error(e))?
        else {
            return Ok(0);
        };
        Ok(dec::<Activity>(&v)?.messages)
    }

    #[tracing::instrument(name = "store.hold_inbound", skip_all)]
    fn hold_inbound(&self, held: &HeldInbound) -> Result<bool, StoreError> {
        // Keys: `peer ‖ 0 ‖ 0 ‖ sequence` for the envelopes in arrival order, and
        // `peer ‖ 0 ‖ 1 ‖ id` → sequence for the id index.
        let record = self.seal(trees::HELD_INBOUND, held)?;
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
            .map_err(|e| self.tx_error(e))
    }

    #[tracing::instrument(name = "store.held_inbound", skip_all)]
    fn held_inbound(&self, peer: &Username) -> Result<Vec<HeldInbound>, StoreError> {
        self.held_inbound
            .scan_prefix(key(peer, &[0u8]))
            .values()
            .map(|v| self.unseal(trees::HELD_INBOUND, &v.map_err(|e| self.sled_error(e))?))
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
            .map_err(|e| self.tx_error(e))
    }
}

impl OutboxStore for SledStore {
    #[tracing::instrument(name = "store.outbox", skip_all)]
    fn outbox(&self) -> Result<Vec<OutboxEntry>, StoreError> {
        self.outbox
            .iter()
            .values()
            .map(|v| {
                dec_entry(
                    &self
                        .sealer
                        .open(trees::OUTBOX, &v.map_err(|e| self.sled_error(e))?)?,
                )
            })
            .collect()
    }
}

impl FileStore for SledStore {
    #[tracing::instrument(name = "store.file", skip_all)]
    fn file(&self, id: &crate::domain::FileId) -> Result<Option<FileRecord>, StoreError> {
        self.file_records
            .get(id.as_bytes())
            .map_err(|e| self.sled_error(e))?
            .map(|v| dec_file(&self.sealer.open(trees::FILES, &v)?))
            .transpose()
    }

    #[tracing::instrument(name = "store.files", skip_all)]
    fn files(&self) -> Result<Vec<FileRecord>, StoreError> {
        let mut files = self
            .file_records
            .iter()
            .values()
            .map(|v| {
                dec_file(
                    &self
                        .sealer
                        .open(trees::FILES, &v.map_err(|e| self.sled_error(e))?)?,
                )
            })
            .collect::<Result<Vec<FileRecord>, StoreError>>()?;
        files.sort_by_key(|f| f.at_ms);
        Ok(files)
    }

    fn file_path(&self, id: &crate::domain::FileId) -> Option<std::path::PathBuf> {
        self.file_bytes.path(id)
    }

    async fn keep_file(
        &self,
        id: &crate::domain::FileId,
        source: &Path,
        max: u64,
    ) -> Result<(u64, [u8; 32]), BlobError> {
        self.file_bytes.keep(id, source, max).await
    }

    async fn read_file(
        &self,
        id: &crate::domain::FileId,
        offset: u64,
        len: usize,
    ) -> Result<Vec<u8>, BlobError> {
        self.file_bytes.read(id, offset, len).await
    }

    async fn write_file(
        &self,
        id: &crate::domain::FileId,
        offset: u64,
        bytes: &[u8],
    ) -> Result<(), BlobError> {
        self.file_bytes.write(id, offset, bytes).await
    }

    async fn digest_file(
        &self,
        id: &crate::domain::FileId,
        size: u64,
    ) -> Result<[u8; 32], BlobError> {
        self.file_bytes.digest(id, size).await
    }

    async fn publish_file(
        &self,
        id: &crate::domain::FileId,
        name: &str,
        keep: bool,
    ) -> Result<std::path::PathBuf, BlobError> {
        self.file_bytes.publish(id, name, keep).await
    }

    async fn discard_file(&self, id: &crate::domain::FileId) -> Result<(), BlobError> {
        self.file_bytes.discard(id).await
    }
}

impl GroupStore for SledStore {
    #[tracing::instrument(name = "store.group", skip_all)]
    fn group(&self, id: &GroupId) -> Result<Option<crate::domain::Group>, StoreError> {
        self.get(&self.groups, id.as_bytes())
    }

    #[tracing::instrument(name = "store.groups", skip_all)]
    fn groups(&self) -> Result<Vec<crate::domain::Group>, StoreError> {
        self.all(&self.groups)
    }
}

/// Why a commit's transaction stopped.
enum Stop {
    /// A message was stored already: nothing is written.
    Duplicate,
    /// A record could not be encoded or decoded.
    Store(StoreError),
}

impl From<StoreError> for ConflictableTransactionError<Stop> {
    fn from(e: StoreError) -> Self {
        ConflictableTransactionError::Abort(Stop::Store(e))
    }
}

/// A counter as stored (8 bytes, big-endian); absent or malformed is 0.
fn counter(value: Option<&[u8]>) -> u64 {
    value
        .and_then(|v| <[u8; 8]>::try_from(v).ok())
        .map_or(0, u64::from_be_bytes)
}

/// Adds `delta` to the unread count of `conversation` in the transaction.
fn add_unread(
    unread: &sled::transaction::TransactionalTree,
    conversation: &ConversationId,
    delta: i64,
) -> Result<(), ConflictableTransactionError<Stop>> {
    if delta == 0 {
        return Ok(());
    }
    let k = conversation.to_string();
    let now = counter(unread.get(k.as_bytes())?.as_deref());
    let next = now.saturating_add_signed(delta);
    unread.insert(k.as_bytes(), &next.to_be_bytes()[..])?;
    Ok(())
}

impl crate::ports::PeopleStore for SledStore {
    fn person(&self, username: &Username) -> Result<Option<crate::domain::Person>, StoreError> {
        self.get(&self.people, username.as_str())
    }

    fn people(&self) -> Result<Vec<crate::domain::Person>, StoreError> {
        self.all(&self.people)
    }

    fn own_profile(&self) -> Result<Option<crate::domain::Profile>, StoreError> {
        self.get(&self.meta, "own_profile")
    }

    fn save_own_profile(&self, profile: &crate::domain::Profile) -> Result<(), StoreError> {
        self.meta
            .insert("own_profile", self.seal(trees::META, profile)?)
            .map_err(|e| self.sled_error(e))?;
        Ok(())
    }

    fn settings(&self) -> Result<Option<crate::ports::Settings>, StoreError> {
        self.get(&self.meta, "settings")
    }

    fn save_settings(&self, settings: &crate::ports::Settings) -> Result<(), StoreError> {
        self.meta
            .insert("settings", self.seal(trees::META, settings)?)
            .map_err(|e| self.sled_error(e))?;
        Ok(())
    }
}

/// Whether a key of `held_inbound` is a held envelope (`peer ‖ 0 ‖ 0 ‖ sequence`), not its id
/// index or count.
fn is_held_record(k: &[u8]) -> bool {
    k.iter()
        .position(|b| *b == 0)
        .is_some_and(|split| k.get(split + 1) == Some(&0))
}

/// The index words of a message's searchable text.
fn index_words(message: Option<&StoredMessage>) -> std::collections::BTreeSet<String> {
    message
        .and_then(search::searchable)
        .map(|text| {
            search::words(text)
                .iter()
                .map(|w| search::indexed(w).to_owned())
                .collect()
        })
        .unwrap_or_default()
}

impl SledStore {
    /// Keeps the search index of the message at `at` in step with its text, from `before`
    /// (absent for a new message) to `after`.
    fn reindex(
        &self,
        words: &sled::transaction::TransactionalTree,
        at: &[u8],
        before: Option<&StoredMessage>,
        after: &StoredMessage,
    ) -> Result<(), ConflictableTransactionError<Stop>> {
        let old = self.index_keys(before, at);
        let new = self.index_keys(Some(after), at);
        for k in old.difference(&new) {
            words.remove(k.as_slice())?;
        }
        let moved = before.is_none_or(|b| b.sent_at_ms != after.sent_at_ms);
        for k in new.iter().filter(|k| moved || !old.contains(*k)) {
            words.insert(k.as_slice(), &after.sent_at_ms.to_be_bytes()[..])?;
        }
        Ok(())
    }
}

/// Whether a message in this state counts as unread.
fn is_unread(message: &StoredMessage) -> bool {
    message.direction == Direction::Incoming && message.status == MessageStatus::Received
}

impl Store for SledStore {
    #[tracing::instrument(name = "store.commit", skip_all, fields(writes = batch.0.len()))]
    fn commit(&self, batch: &Batch) -> Result<Committed, StoreError> {
        // Encoded once, outside the transaction (which may run more than once).
        let mut encoded = Vec::with_capacity(batch.0.len());
        for write in &batch.0 {
            encoded.push(match write {
                Write::Session(_, session) => {
                    Some(self.sealer.seal(trees::SESSIONS, &session.to_bytes())?)
                }
                Write::Message(message, _) => Some(self.seal(trees::MESSAGES, message)?),
                Write::Enqueue(entry) => Some(self.seal(trees::OUTBOX, entry)?),
                Write::Group(record) => Some(self.seal(trees::GROUPS, record)?),
                Write::File(record) => Some(self.seal(trees::FILES, record)?),
                Write::Person(person) => Some(self.seal(trees::PEOPLE, person)?),
                _ => None,
            });
        }
        let result = (
            &self.sessions,
            &self.messages,
            &self.message_ids,
            &self.activity,
            &self.unread,
            &self.outbox,
            &self.one_time,
            &self.groups,
            &self.file_records,
            &self.words,
            &self.people,
        )
            .transaction(
                |(
                    sessions,
                    messages,
                    ids,
                    activity,
                    unread,
                    out,
                    one_time,
                    groups,
                    files,
                    words,
                    people,
                )| {
                    let mut committed = Committed::default();
                    for (write, bytes) in batch.0.iter().zip(&encoded) {
                        let bytes = bytes.as_deref().unwrap_or_default();
                        match write {
                            Write::Session(device, _) => {
                                sessions.insert(device.to_string().as_bytes(), bytes)?;
                            }
                            Write::ConsumePreKey(id) => {
                                one_time.remove(&id.0.to_be_bytes())?;
                            }
                            Write::Message(message, if_stored) => {
                                let conversation = message.conversation();
                                let Some(seq) =
                                    ids.get(key(&conversation, message.id.as_bytes()))?
                                else {
                                    let at =
                                        Self::put_message(messages, ids, activity, message, bytes)?;
                                    self.reindex(words, &at, None, message)?;
                                    add_unread(
                                        unread,
                                        &conversation,
                                        i64::from(is_unread(message)),
                                    )?;
                                    continue;
                                };
                                let at = key(&conversation, &seq);
                                let earlier = messages
                                    .get(&at)?
                                    .map(|v| self.unseal_message(&v))
                                    .transpose()?;
                                let replace = match if_stored {
                                    IfStored::Skip => false,
                                    IfStored::ReplaceUndecryptable => earlier
                                        .as_ref()
                                        .is_some_and(|m| m.status == MessageStatus::Undecryptable),
                                    IfStored::Replace => true,
                                };
                                if !replace {
                                    return Err(ConflictableTransactionError::Abort(
                                        Stop::Duplicate,
                                    ));
                                }
                                messages.insert(at.clone(), bytes)?;
                                self.reindex(words, &at, earlier.as_ref(), message)?;
                                let was = earlier.as_ref().is_some_and(is_unread);
                                add_unread(
                                    unread,
                                    &conversation,
                                    i64::from(is_unread(message)) - i64::from(was),
                                )?;
                            }
                            Write::Status {
                                conversation,
                                id,
                                status,
                                only,
                            } => {
                                let Some(seq) = ids.get(key(conversation, id.as_bytes()))? else {
                                    continue;
                                };
                                let at = key(conversation, &seq);
                                let Some(v) = messages.get(&at)? else {
                                    continue;
                                };
                                let mut m = self.unseal_message(&v)?;
                                if only.is_some_and(|d| d != m.direction)
                                    || !m.status.may_become(*status)
                                {
                                    continue;
                                }
                                let was = is_unread(&m);
                                m.status = *status;
                                messages.insert(at, self.seal(trees::MESSAGES, &m)?)?;
                                add_unread(
                                    unread,
                                    conversation,
                                    i64::from(is_unread(&m)) - i64::from(was),
                                )?;
                                committed.advanced.push(*id);
                            }
                            Write::Amend {
                                conversation,
                                id,
                                by,
                                at_ms,
                                amendment,
                            } => {
                                let Some(seq) = ids.get(key(conversation, id.as_bytes()))? else {
                                    continue;
                                };
                                let at = key(conversation, &seq);
                                let Some(v) = messages.get(&at)? else {
                                    continue;
                                };
                                let before = self.unseal_message(&v)?;
                                let mut m = before.clone();
                                if m.amend(by, amendment, *at_ms) {
                                    self.reindex(words, &at, Some(&before), &m)?;
                                    messages.insert(at, self.seal(trees::MESSAGES, &m)?)?;
                                    committed.amended.push(*id);
                                }
                            }
                            Write::Enqueue(entry) => {
                                out.insert(key(&entry.to, entry.envelope.id.as_bytes()), bytes)?;
                            }
                            Write::Dequeue(device, id) => {
                                out.remove(key(device, id.as_bytes()))?;
                            }
                            Write::Group(record) => {
                                groups.insert(&record.state().id.as_bytes()[..], bytes)?;
                            }
                            Write::File(record) => {
                                files.insert(&record.offer.id.as_bytes()[..], bytes)?;
                            }
                            Write::Person(person) => {
                                people.insert(person.username.as_str().as_bytes(), bytes)?;
                            }
                            Write::MemberStatus {
                                group,
                                id,
                                member,
                                status,
                            } => {
                                let conversation = ConversationId::Group(*group);
                                let Some(seq) = ids.get(key(&conversation, id.as_bytes()))? else {
                                    continue;
                                };
                                let at = key(&conversation, &seq);
                                let Some(v) = messages.get(&at)? else {
                                    continue;
                                };
                                let mut m = self.unseal_message(&v)?;
                                if !m.move_member(member, *status) {
                                    continue;
                                }
                                messages.insert(at, self.seal(trees::MESSAGES, &m)?)?;
                                committed.members.push(MemberMoved {
                                    group: *group,
                                    id: *id,
                                    member: member.clone(),
                                    status: *status,
                                    overall: m.status,
                                });
                            }
                        }
                    }
                    Ok(committed)
                },
            );
        match result {
            Ok(committed) => Ok(committed),
            Err(TransactionError::Abort(Stop::Duplicate)) => Ok(Committed {
                duplicate: true,
                ..Committed::default()
            }),
            Err(TransactionError::Abort(Stop::Store(e))) => Err(self.failed(e)),
            Err(TransactionError::Storage(e)) => Err(self.sled_error(e)),
        }
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
            .map_err(|e| self.sled_error(e))?;
        self.flushes_done.store(this, Ordering::Release);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::key as key_of;
    use super::*;
    use crate::domain::Envelope;

    /// The records' shapes before groups, as they were written.
    #[derive(Serialize)]
    struct OldMessage {
        id: MessageId,
        peer: Username,
        direction: Direction,
        body: String,
        sent_at_ms: u64,
        status: MessageStatus,
    }

    #[derive(Serialize)]
    struct OldEntry {
        to: Address,
        queued_at_ms: u64,
        envelope: Envelope,
    }

    #[test]
    fn records_written_before_groups_still_read() {
        let bob = Username::new("bob").unwrap();
        let old = OldMessage {
            id: MessageId::from_bytes([1; 16]),
            peer: bob.clone(),
            direction: Direction::Outgoing,
            body: "from before".into(),
            sent_at_ms: 7,
            status: MessageStatus::Delivered,
        };
        let read = dec_message(&enc(&old).unwrap()).unwrap();
        assert_eq!(
            read,
            StoredMessage::direct(
                old.id,
                bob.clone(),
                Direction::Outgoing,
                "from before".into(),
                7,
                MessageStatus::Delivered
            )
        );
        // And today's form reads as itself.
        let mut grouped = read.clone();
        grouped.group = Some(crate::domain::GroupId::from_bytes([2; 16]));
        grouped.receipts.insert(bob.clone(), MessageStatus::Read);
        assert_eq!(dec_message(&enc(&grouped).unwrap()).unwrap(), grouped);

        let envelope = Envelope {
            id: MessageId::from_bytes([3; 16]),
            trace: None,
            payload: vec![1, 2, 3],
        };
        let old = OldEntry {
            to: Address::first(bob.clone()),
            queued_at_ms: 9,
            envelope: envelope.clone(),
        };
        let entry = dec_entry(&enc(&old).unwrap()).unwrap();
        assert_eq!(
            (entry.to, entry.queued_at_ms, entry.envelope, entry.group),
            (Address::first(bob), 9, envelope, None)
        );
        assert!(dec_message(b"\x01\x02").is_err());
    }

    #[derive(Serialize)]
    struct MessageWithGroups {
        id: MessageId,
        peer: Username,
        direction: Direction,
        body: String,
        sent_at_ms: u64,
        status: MessageStatus,
        group: Option<crate::domain::GroupId>,
        receipts: std::collections::BTreeMap<Username, MessageStatus>,
    }

    #[test]
    fn messages_written_before_replies_and_amendments_still_read() {
        let carol = Username::new("carol").unwrap();
        let group = crate::domain::GroupId::from_bytes([4; 16]);
        let old = MessageWithGroups {
            id: MessageId::from_bytes([5; 16]),
            peer: carol.clone(),
            direction: Direction::Outgoing,
            body: "to the group".into(),
            sent_at_ms: 11,
            status: MessageStatus::Sent,
            group: Some(group),
            receipts: [(carol.clone(), MessageStatus::Sent)].into(),
        };
        let read = dec_message(&enc(&old).unwrap()).unwrap();
        assert_eq!((read.group, read.receipts.len()), (Some(group), 1));
        assert_eq!(read.body, "to the group");
        assert!(read.reply_to.is_none() && read.edited_at_ms.is_none() && !read.deleted);
        assert!(read.reactions.is_empty());
        // And today's form, with every new field set, reads as itself.
        let mut amended = read;
        amended.reply_to = Some(MessageId::from_bytes([6; 16]));
        amended.edited_at_ms = Some(12);
        amended.reactions.insert(carol, "👍".into());
        assert_eq!(dec_message(&enc(&amended).unwrap()).unwrap(), amended);
        amended.deleted = true;
        assert_eq!(dec_message(&enc(&amended).unwrap()).unwrap(), amended);
    }

    #[derive(Serialize)]
    struct OldOffer {
        id: crate::domain::FileId,
        name: String,
        size: u64,
        media_type: String,
        chunk_size: u32,
        key: [u8; 32],
        nonce: [u8; 7],
        sha256: [u8; 32],
    }

    #[derive(Serialize)]
    struct OldFile {
        offer: OldOffer,
        peer: Username,
        direction: Direction,
        state: crate::ports::FileState,
        chunks_done: u32,
        at_ms: u64,
        saved_as: Option<String>,
    }

    #[test]
    fn file_records_written_before_group_files_still_read() {
        let old = OldFile {
            offer: OldOffer {
                id: crate::domain::FileId::from_bytes([4; 16]),
                name: "a.txt".into(),
                size: 5,
                media_type: "text/plain".into(),
                chunk_size: crate::domain::file::CHUNK_BYTES,
                key: [1; 32],
                nonce: [2; 7],
                sha256: [3; 32],
            },
            peer: Username::new("bob").unwrap(),
            direction: Direction::Incoming,
            state: crate::ports::FileState::Downloading,
            chunks_done: 0,
            at_ms: 11,
            saved_as: None,
        };
        let read = dec_file(&enc(&old).unwrap()).unwrap();
        assert_eq!(
            (
                read.offer.name.as_str(),
                read.offer.key,
                read.chunks_done,
                read.at_ms
            ),
            ("a.txt", [1; 32], 0, 11)
        );
        assert!(read.offer.chunk_digests.is_empty() && read.group.is_none());
        let mut today = read.clone();
        today.group = Some(GroupId::from_bytes([5; 16]));
        today.offer.chunk_digests = vec![[6; 32]];
        assert_eq!(dec_file(&enc(&today).unwrap()).unwrap(), today);
    }

    #[test]
    fn a_store_from_before_the_search_index_has_it_built_when_opened() {
        let dir = tempfile::tempdir().unwrap();
        let dora = Username::new("dora").unwrap();
        let query = Query::parse("quarterly").unwrap();
        {
            let store = SledStore::open(dir.path(), &StoreKey::from_bytes([7; 32])).unwrap();
            let m = StoredMessage::direct(
                MessageId::from_bytes([4; 16]),
                dora.clone(),
                Direction::Incoming,
                "the Quarterly numbers".into(),
                5,
                MessageStatus::Received,
            );
            store
                .commit(&Batch::new().with(Write::Message(m, IfStored::Skip)))
                .unwrap();
            assert_eq!(store.search(&query, 10).unwrap().len(), 1);
            // As a store written before the index was kept.
            store.words.clear().unwrap();
            store.meta.remove("words_indexed").unwrap();
            assert!(store.search(&query, 10).unwrap().is_empty());
            store.db.flush().unwrap();
        }
        let store = SledStore::open(dir.path(), &StoreKey::from_bytes([7; 32])).unwrap();
        let hits = store.search(&query, 10).unwrap();
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].body, "the Quarterly numbers");
    }

    fn key(byte: u8) -> StoreKey {
        StoreKey::from_bytes([byte; 32])
    }

    /// sled lets go of its file lock from background threads a little after the last handle
    /// drops: a store opened again at once (as the daemon does after a full disk, and as
    /// these tests do) still opens, and holds what was flushed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_store_opened_again_as_soon_as_it_is_dropped_opens() {
        let dir = tempfile::tempdir().unwrap();
        for round in 0..50u64 {
            let store = SledStore::open(dir.path(), &key(1)).unwrap();
            assert_eq!(
                store.signed_prekey_rotated_at().unwrap(),
                round.checked_sub(1)
            );
            let held = store.history(&text("x").conversation(), Page::ALL).unwrap();
            assert_eq!(held.len() as u64, round);
            let mut message = text("a message that rounds");
            message.id = MessageId::from_bytes([round as u8; 16]);
            store
                .commit(&Batch::new().with(Write::Message(message, IfStored::Skip)))
                .unwrap();
            store.set_signed_prekey_rotated_at(round).unwrap();
            store.flush().await.unwrap();
        }
    }

    fn files_hold(dir: &Path, needle: &[u8]) -> bool {
        std::fs::read_dir(dir).unwrap().any(|entry| {
            let path = entry.unwrap().path();
            if path.is_dir() {
                files_hold(&path, needle)
            } else {
                std::fs::read(&path)
                    .unwrap()
                    .windows(needle.len())
                    .any(|w| w == needle)
            }
        })
    }

    fn identity(seed: [u8; 32]) -> LocalIdentity {
        LocalIdentity {
            username: Username::new("erin").unwrap(),
            seed: zeroize::Zeroizing::new(seed),
            certificate_pem: "certificate".into(),
            ca_pem: "ca".into(),
        }
    }

    fn prekeys() -> (SignedPreKeyPair, Vec<OneTimePreKeyPair>) {
        let mut rng = rand::rngs::OsRng;
        let id = crate::domain::IdentityKeyPair::generate(&mut rng);
        (
            SignedPreKeyPair::generate(crate::domain::PreKeyId(1), &id, &mut rng),
            vec![OneTimePreKeyPair::generate(
                crate::domain::PreKeyId(2),
                &mut rng,
            )],
        )
    }

    fn text(body: &str) -> StoredMessage {
        StoredMessage::direct(
            MessageId::from_bytes([8; 16]),
            Username::new("frank").unwrap(),
            Direction::Incoming,
            body.into(),
            9,
            MessageStatus::Received,
        )
    }

    #[test]
    fn the_files_of_a_sealed_store_hold_no_text_no_word_and_no_seed() {
        let dir = tempfile::tempdir().unwrap();
        let seed = [0x5e; 32];
        {
            let store = SledStore::open(dir.path(), &key(1)).unwrap();
            let (signed, one_time) = prekeys();
            store
                .save_identity(&identity(seed), &signed, &one_time)
                .unwrap();
            store
                .commit(&Batch::new().with(Write::Message(
                    text("meet me at the Zanzibar lighthouse"),
                    IfStored::Skip,
                )))
                .unwrap();
            let hits = store.search(&Query::parse("zanz").unwrap(), 10).unwrap();
            assert_eq!(hits.len(), 1, "the sealed index still finds by prefix");
            assert!(
                store
                    .search(&Query::parse("anzibar").unwrap(), 10)
                    .unwrap()
                    .is_empty()
            );
            store.db.flush().unwrap();
        }
        assert!(!files_hold(dir.path(), b"Zanzibar lighthouse"));
        assert!(!files_hold(dir.path(), b"zanzibar"));
        assert!(!files_hold(dir.path(), b"lighthouse"));
        assert!(!files_hold(dir.path(), &seed));

        // Another key opens the database but no record of it: a clear error, nothing changed.
        let wrong = SledStore::open(dir.path(), &key(2)).unwrap();
        let err = wrong.identity().unwrap_err();
        assert!(err.to_string().contains("store key"), "{err}");
        drop(wrong);
        let store = SledStore::open(dir.path(), &key(1)).unwrap();
        assert_eq!(*store.identity().unwrap().unwrap().seed, seed);
    }

    #[test]
    fn a_store_written_before_records_were_sealed_is_sealed_when_opened() {
        let dir = tempfile::tempdir().unwrap();
        let seed = [0x3c; 32];
        let message = text("the old plain lighthouse");
        {
            let store = SledStore::open(dir.path(), &key(1)).unwrap();
            // As the store of an earlier version wrote it: plain records, an index of words.
            let (signed, one_time) = prekeys();
            let record = IdentityRecord {
                username: Username::new("erin").unwrap(),
                seed,
                certificate_pem: "certificate".into(),
                ca_pem: "ca".into(),
            };
            store
                .meta
                .insert("identity", enc(&record).unwrap())
                .unwrap();
            store
                .signed
                .insert(signed.id().0.to_be_bytes(), enc(&signed).unwrap())
                .unwrap();
            store
                .one_time
                .insert(one_time[0].id().0.to_be_bytes(), enc(&one_time[0]).unwrap())
                .unwrap();
            let conversation = message.conversation();
            let at = key_of(&conversation, &1u64.to_be_bytes());
            store.messages.insert(&at, enc(&message).unwrap()).unwrap();
            store
                .message_ids
                .insert(
                    key_of(&conversation, message.id.as_bytes()),
                    &1u64.to_be_bytes()[..],
                )
                .unwrap();
            store.words.clear().unwrap();
            store
                .words
                .insert(key_of(&"lighthouse", &at), &9u64.to_be_bytes()[..])
                .unwrap();
            for flag in store.meta.scan_prefix(b"sealed").keys() {
                store.meta.remove(flag.unwrap()).unwrap();
            }
            store.db.flush().unwrap();
        }
        let store = SledStore::open(dir.path(), &key(1)).unwrap();
        assert_eq!(*store.identity().unwrap().unwrap().seed, seed);
        assert!(
            store
                .signed_prekey(crate::domain::PreKeyId(1))
                .unwrap()
                .is_some()
        );
        let conversation = message.conversation();
        assert_eq!(
            store.message(&conversation, &message.id).unwrap(),
            Some(message.clone())
        );
        let hits = store.search(&Query::parse("light").unwrap(), 10).unwrap();
        assert_eq!(hits, vec![message.clone()]);
        // The records themselves are sealed now, and the index holds no word.
        let raw = store.meta.get("identity").unwrap().unwrap();
        assert!(!raw.windows(32).any(|w| w == seed));
        assert!(
            store
                .words
                .iter()
                .keys()
                .all(|k| !k.unwrap().windows(10).any(|w| w == b"lighthouse"))
        );
        drop(store);
        // Opening again seals nothing twice.
        let store = SledStore::open(dir.path(), &key(1)).unwrap();
        assert_eq!(
            store.message(&conversation, &message.id).unwrap(),
            Some(message)
        );
    }
}
