//! The storage port, in small traits the way libsignal splits its stores: identity, prekeys,
//! sessions, contacts, messages (per conversation) and the outbox, read one by one; every write
//! of a lifecycle step goes through one atomic [`Store::commit`] of a [`Batch`].

use std::future::Future;

use peerchat_pki::Username;

use crate::domain::search::Query;
use crate::domain::{
    Address, Amendment, Contact, ConversationId, Direction, Envelope, FileId, FileOffer, Group,
    GroupId, IdentityKey, MessageId, MessageStatus, OneTimePreKeyPair, Person, PreKeyId, Profile,
    Session, SignedPreKeyPair, StoredMessage,
};

/// A storage failure; adapters translate their own errors into it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend failed.
    #[error("storage backend: {0}")]
    Backend(String),
    /// A stored record could not be decoded.
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
    /// The disk is full: nothing was stored.
    #[error("the node's disk is full: nothing was stored (free some space)")]
    Full,
}

/// This node's account, once registered.
#[derive(Clone)]
pub struct LocalIdentity {
    /// Our username.
    pub username: Username,
    /// The Ed25519 identity key's seed.
    pub seed: zeroize::Zeroizing<[u8; 32]>,
    /// Our certificate, PEM.
    pub certificate_pem: String,
    /// The CA certificate pinned at registration, PEM.
    pub ca_pem: String,
}

impl std::fmt::Debug for LocalIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalIdentity")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Most envelopes held from one contact's unaccepted new key; past it, the sender (or the
/// mailbox) keeps them.
pub const MAX_HELD_INBOUND: usize = 1000;

/// An envelope from a key the user has not accepted yet, kept as it arrived.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HeldInbound {
    /// The sender, as its certificate named it.
    pub from: Username,
    /// The key the sender's certificate carried.
    pub identity_key: IdentityKey,
    /// The envelope, still encrypted.
    pub envelope: Envelope,
}

/// An envelope waiting to be acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OutboxEntry {
    /// The recipient's device.
    pub to: Address,
    /// When it was queued, ms since the epoch.
    #[serde(default)]
    pub queued_at_ms: u64,
    /// The envelope, as sealed when the message was sent.
    pub envelope: Envelope,
    /// The group whose message (or change) it carries: its acknowledgement moves the member's
    /// status of that group message.
    pub group: Option<GroupId>,
}

/// Where a file transfer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileState {
    /// Offered; an incoming one waits for the user to accept it.
    Offered,
    /// Being fetched (also after a restart, from the first missing chunk).
    Downloading,
    /// All chunks fetched and the digest matched: the file is in the download directory.
    Complete,
    /// The digest did not match (the bytes were discarded), or it could not be stored.
    Failed,
    /// The user gave up on it.
    Cancelled,
}

/// A file this node offered or was offered.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileRecord {
    /// The offer (with its key).
    pub offer: FileOffer,
    /// The other side: who offered it to us, or whom we offered it to.
    pub peer: Username,
    /// Offered by us (`outgoing`) or to us (`incoming`).
    pub direction: Direction,
    /// Where it is.
    pub state: FileState,
    /// Incoming: how many chunks, from the first, are stored durably. Outgoing: how far the
    /// peer has fetched (recorded when it fetched the last chunk; the node knows more while
    /// serving).
    pub chunks_done: u32,
    /// When it was offered, ms since the epoch.
    pub at_ms: u64,
    /// Incoming and complete: the file's path in the download directory.
    pub saved_as: Option<String>,
    /// The group it was offered to (then `peer` is who offered it; for ours, ourselves).
    pub group: Option<GroupId>,
}

impl FileRecord {
    /// Bytes fetched so far (by us, or from us).
    pub fn bytes_done(&self) -> u64 {
        self.offer.offset(self.chunks_done).min(self.offer.size)
    }
}

/// Why file bytes could not be kept, read or written.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The file is larger than allowed.
    #[error("the file is larger than {0} bytes")]
    TooLarge(u64),
    /// No such file (or not a regular file).
    #[error("{0}")]
    NotFound(String),
    /// The disk failed or is full.
    #[error("file storage: {0}")]
    Io(String),
}

/// A conversation in the list.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Conversation {
    /// Which.
    pub id: ConversationId,
    /// Messages in it.
    pub messages: u64,
    /// Messages received and not read yet (kept as they change, not counted per request).
    pub unread: u64,
    /// The latest one.
    pub last: StoredMessage,
}

/// A page of a conversation: up to `limit` messages stored before the message `before` (or
/// the latest ones), oldest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// The message the page ends before (exclusive); `None` for the latest messages.
    pub before: Option<MessageId>,
    /// Most messages in the page.
    pub limit: usize,
}

impl Page {
    /// The whole conversation.
    pub const ALL: Page = Page {
        before: None,
        limit: usize::MAX,
    };

    /// The latest `limit` messages.
    pub fn latest(limit: usize) -> Self {
        Self {
            before: None,
            limit,
        }
    }
}

/// What to do when a message added by a [`Batch`] is stored already (same conversation, same id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfStored {
    /// Nothing in the batch is written; [`Committed::duplicate`] says so.
    Skip,
    /// As [`IfStored::Skip`], unless the stored one is `Undecryptable`: then it is replaced in
    /// place (a later copy that decrypts).
    ReplaceUndecryptable,
    /// The stored one is replaced in place (a held message released).
    Replace,
}

/// One write of a [`Batch`].
#[derive(Debug)]
pub enum Write {
    /// Stores the session with a device.
    Session(Address, Box<Session>),
    /// Removes one of our one-time prekeys (a message consumed it).
    ConsumePreKey(PreKeyId),
    /// Adds a message to its conversation (last in its order); a received one counts as unread.
    Message(StoredMessage, IfStored),
    /// Moves a stored message to `status` where [`MessageStatus::may_become`] allows it (and,
    /// with `only`, only a message of that direction); the ids that moved are returned in
    /// [`Committed::advanced`]. A missing message is skipped.
    Status {
        /// The conversation.
        conversation: ConversationId,
        /// The message.
        id: MessageId,
        /// The new status.
        status: MessageStatus,
        /// Only a message in this direction moves.
        only: Option<Direction>,
    },
    /// Queues an envelope for delivery.
    Enqueue(OutboxEntry),
    /// Removes an outbox entry (acknowledged, or given up).
    Dequeue(Address, MessageId),
    /// Stores (or replaces) a group.
    Group(Box<Group>),
    /// Stores (or replaces) a file's record.
    File(Box<FileRecord>),
    /// Moves one member's status of our group message `id` where [`MessageStatus::may_become`]
    /// allows it, and the message's status with it ([`crate::domain::group_status`]); moves are
    /// returned in [`Committed::members`]. A missing message or member is skipped.
    MemberStatus {
        /// The group.
        group: GroupId,
        /// The message.
        id: MessageId,
        /// The member.
        member: Username,
        /// Their new status.
        status: MessageStatus,
    },
    /// Stores (or replaces) what the user decided about someone, and their profile.
    Person(Box<Person>),
    /// Applies an amendment (checked by the caller with [`StoredMessage::may_amend`]) to a
    /// stored message, read and written in the commit so that concurrent reactions of
    /// different people all count ([`StoredMessage::amend`]); the ids that changed are returned
    /// in [`Committed::amended`]. A missing message is skipped.
    Amend {
        /// The conversation.
        conversation: ConversationId,
        /// The message.
        id: MessageId,
        /// Who amends it.
        by: Username,
        /// When, on their clock.
        at_ms: u64,
        /// What is done to it.
        amendment: Amendment,
    },
}

/// The writes of one lifecycle step, applied by [`Store::commit`] all together or not at all.
#[derive(Debug, Default)]
pub struct Batch(pub Vec<Write>);

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a write.
    pub fn with(mut self, write: Write) -> Self {
        self.0.push(write);
        self
    }

    /// Adds a write.
    pub fn push(&mut self, write: Write) {
        self.0.push(write);
    }

    /// The send step: the message (`pending`, written as `if_stored` says), the session that
    /// encrypted it, and its envelope queued for the device, all together.
    pub fn outgoing(
        message: StoredMessage,
        if_stored: IfStored,
        session: Session,
        queued: OutboxEntry,
    ) -> Self {
        Self::new()
            .with(Write::Session(queued.to.clone(), Box::new(session)))
            .with(Write::Message(message, if_stored))
            .with(Write::Enqueue(queued))
    }
}

/// What a commit did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Committed {
    /// A message of the batch was stored already and [`IfStored::Skip`] applied: nothing was
    /// written.
    pub duplicate: bool,
    /// The messages whose status a [`Write::Status`] moved, in the batch's order.
    pub advanced: Vec<MessageId>,
    /// The member statuses a [`Write::MemberStatus`] moved, in the batch's order.
    pub members: Vec<MemberMoved>,
    /// The messages a [`Write::Amend`] changed, in the batch's order.
    pub amended: Vec<MessageId>,
}

/// One member's status of a group message, moved by a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberMoved {
    /// The group.
    pub group: GroupId,
    /// The message.
    pub id: MessageId,
    /// The member.
    pub member: Username,
    /// Their new status.
    pub status: MessageStatus,
    /// The message's status over all members, after the move.
    pub overall: MessageStatus,
}

/// Our identity and certificate.
pub trait IdentityStore {
    /// Our identity, if registered.
    fn identity(&self) -> Result<Option<LocalIdentity>, StoreError>;
    /// Saves our identity with its first signed prekey and one-time prekeys, in one write.
    fn save_identity(
        &self,
        identity: &LocalIdentity,
        signed_prekey: &SignedPreKeyPair,
        one_time_prekeys: &[OneTimePreKeyPair],
    ) -> Result<(), StoreError>;
    /// Replaces our certificate (after renewal).
    fn save_certificate(&self, certificate_pem: &str) -> Result<(), StoreError>;
}

/// Our prekeys.
pub trait PreKeyStore {
    /// A signed prekey of ours by id.
    fn signed_prekey(&self, id: PreKeyId) -> Result<Option<SignedPreKeyPair>, StoreError>;
    /// A one-time prekey of ours by id (absent once used).
    fn one_time_prekey(&self, id: PreKeyId) -> Result<Option<OneTimePreKeyPair>, StoreError>;
    /// Adds one-time prekeys.
    fn add_one_time_prekeys(&self, keys: &[OneTimePreKeyPair]) -> Result<(), StoreError>;
    /// A prekey id never returned before.
    fn next_prekey_id(&self) -> Result<PreKeyId, StoreError>;
    /// When the signed prekey was last rotated (ms since the epoch), if recorded.
    fn signed_prekey_rotated_at(&self) -> Result<Option<u64>, StoreError>;
    /// Records the rotation time without a new key (first start after registration).
    fn set_signed_prekey_rotated_at(&self, at_ms: u64) -> Result<(), StoreError>;
    /// Adds a new signed prekey, rotated at `at_ms`. Older ones are kept, so initial messages
    /// made with them (which may arrive late, from the mailbox) still decrypt.
    fn add_signed_prekey(&self, key: &SignedPreKeyPair, at_ms: u64) -> Result<(), StoreError>;
}

/// Sessions, one per device we talk to (written through [`Write::Session`]).
pub trait SessionStore {
    /// The session with `device`, if any.
    fn session(&self, device: &Address) -> Result<Option<Session>, StoreError>;
}

/// Contacts: the identity key pinned for each device we talk to (with its verification and any
/// new key waiting to be accepted).
pub trait ContactStore {
    /// The contact record of a device.
    fn contact(&self, device: &Address) -> Result<Option<Contact>, StoreError>;
    /// Adds or replaces the record of the contact's device ([`Contact::address`]).
    fn save_contact(&self, contact: &Contact) -> Result<(), StoreError>;
    /// All contacts, by name.
    fn contacts(&self) -> Result<Vec<Contact>, StoreError>;
    /// The addresses at which a delivery to `device` last succeeded (empty if none yet): tried
    /// before asking the rendezvous, so known contacts reach each other without it.
    fn known_addresses(&self, device: &Address) -> Result<Vec<String>, StoreError>;
    /// Records the addresses at which a delivery to `device` succeeded.
    fn save_known_addresses(
        &self,
        device: &Address,
        addresses: &[String],
    ) -> Result<(), StoreError>;
}

/// Conversations and their messages (written through [`Write::Message`] and
/// [`Write::Status`]), and envelopes held from keys not accepted yet.
pub trait MessageStore {
    /// A message by conversation and id.
    fn message(
        &self,
        conversation: &ConversationId,
        id: &MessageId,
    ) -> Result<Option<StoredMessage>, StoreError>;
    /// A page of the conversation, oldest first, in the order the messages were stored.
    fn history(
        &self,
        conversation: &ConversationId,
        page: Page,
    ) -> Result<Vec<StoredMessage>, StoreError>;
    /// One summary per conversation, most recent first.
    fn conversations(&self) -> Result<Vec<Conversation>, StoreError>;
    /// How many messages `conversation` holds (0 for one never written in).
    fn message_count(&self, conversation: &ConversationId) -> Result<u64, StoreError>;
    /// Messages of every conversation that `query` matches ([`Query::matches`]), newest first
    /// (by sending time), at most `limit`.
    fn search(&self, query: &Query, limit: usize) -> Result<Vec<StoredMessage>, StoreError>;

    /// Keeps an envelope from a contact's new, not yet accepted key until the user decides.
    /// MUST return `false` (and keep nothing) when `held.from` already has [`MAX_HELD_INBOUND`]
    /// envelopes waiting, and `true` without a second copy when one with its id waits already.
    fn hold_inbound(&self, held: &HeldInbound) -> Result<bool, StoreError>;
    /// The envelopes held from `peer`, in the order they arrived.
    fn held_inbound(&self, peer: &Username) -> Result<Vec<HeldInbound>, StoreError>;
    /// Forgets a held envelope (it was taken, or refused for good).
    fn release_inbound(&self, peer: &Username, id: &MessageId) -> Result<(), StoreError>;
}

/// The groups we are (or were) in (written through [`Write::Group`]).
pub trait GroupStore {
    /// A group by id.
    fn group(&self, id: &GroupId) -> Result<Option<Group>, StoreError>;
    /// Every group we know of (also those we left or were removed from).
    fn groups(&self) -> Result<Vec<Group>, StoreError>;
}

/// The node's own settings, changed at run time (the window's settings panel).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Settings {
    /// Read receipts are sent (and so is typing, only while this is on too).
    pub read_receipts: bool,
    /// The typing indicator is sent.
    pub typing: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            read_receipts: true,
            typing: true,
        }
    }
}

/// People (written through [`Write::Person`]), our own profile and settings.
pub trait PeopleStore {
    /// What the user decided about someone, if anything.
    fn person(&self, username: &Username) -> Result<Option<Person>, StoreError>;
    /// Everyone with a record, by name.
    fn people(&self) -> Result<Vec<Person>, StoreError>;
    /// Our own profile, once set.
    fn own_profile(&self) -> Result<Option<Profile>, StoreError>;
    /// Replaces our own profile.
    fn save_own_profile(&self, profile: &Profile) -> Result<(), StoreError>;
    /// The settings, once saved.
    fn settings(&self) -> Result<Option<Settings>, StoreError>;
    /// Replaces the settings.
    fn save_settings(&self, settings: &Settings) -> Result<(), StoreError>;
}

/// Files offered and received (written through [`Write::File`]), and their bytes: a copy of
/// each file we offer (so that it can be served while the original moves), and the chunks of
/// each file we fetch, written where they belong as they arrive.
pub trait FileStore {
    /// A file's record.
    fn file(&self, id: &FileId) -> Result<Option<FileRecord>, StoreError>;
    /// Every file's record, oldest first.
    fn files(&self) -> Result<Vec<FileRecord>, StoreError>;

    /// Copies the file at `source` (at most `max` bytes) into the node's keeping as `id`,
    /// streaming; returns its size and SHA-256.
    fn keep_file(
        &self,
        id: &FileId,
        source: &std::path::Path,
        max: u64,
    ) -> impl Future<Output = Result<(u64, [u8; 32]), BlobError>> + Send;
    /// Reads `len` bytes at `offset` of a kept file, or of one fetched so far.
    fn read_file(
        &self,
        id: &FileId,
        offset: u64,
        len: usize,
    ) -> impl Future<Output = Result<Vec<u8>, BlobError>> + Send;
    /// Writes `bytes` at `offset` of a file being fetched, durably.
    fn write_file(
        &self,
        id: &FileId,
        offset: u64,
        bytes: &[u8],
    ) -> impl Future<Output = Result<(), BlobError>> + Send;
    /// The SHA-256 of the first `size` bytes of a file being fetched, streaming.
    fn digest_file(
        &self,
        id: &FileId,
        size: u64,
    ) -> impl Future<Output = Result<[u8; 32], BlobError>> + Send;
    /// Moves a fetched file into the download directory as `name` (`name (2)` and so on when
    /// taken: nothing is overwritten); returns where it went. With `keep`, the node keeps its
    /// copy too (a group file it serves to other members; a hard link where the disk allows).
    fn publish_file(
        &self,
        id: &FileId,
        name: &str,
        keep: bool,
    ) -> impl Future<Output = Result<std::path::PathBuf, BlobError>> + Send;
    /// Where the node's own copy of a file is on disk (one we offered, or a download in
    /// progress or kept for a group), if it has one there.
    fn file_path(&self, id: &FileId) -> Option<std::path::PathBuf>;
    /// Forgets a file's bytes (a failed or cancelled download, a withdrawn offer).
    fn discard_file(&self, id: &FileId) -> impl Future<Output = Result<(), BlobError>> + Send;
}

/// Envelopes waiting for an acknowledgement (written through [`Write::Enqueue`] and
/// [`Write::Dequeue`]).
pub trait OutboxStore {
    /// Envelopes not yet acknowledged, oldest first.
    fn outbox(&self) -> Result<Vec<OutboxEntry>, StoreError>;
}

/// The node's storage: the small stores, one atomic write per lifecycle step, and durability.
/// Reads and single-record writes are atomic on their own; writes become durable at
/// [`Store::flush`], which use cases await before acknowledging anything.
pub trait Store:
    IdentityStore
    + PreKeyStore
    + SessionStore
    + ContactStore
    + MessageStore
    + OutboxStore
    + GroupStore
    + FileStore
    + PeopleStore
    + Send
    + Sync
    + 'static
{
    /// Applies every write of `batch`, all or none (see [`IfStored`] for when none).
    fn commit(&self, batch: &Batch) -> Result<Committed, StoreError>;

    /// Makes every write so far durable.
    fn flush(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
}
