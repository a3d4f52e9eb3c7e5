//! The storage port.

use std::future::Future;

use peerchat_pki::Username;

use crate::domain::{
    Contact, Envelope, IdentityKey, MessageId, MessageStatus, OneTimePreKeyPair, PreKeyId, Session,
    SignedPreKeyPair, StoredMessage,
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
    /// The recipient.
    pub to: Username,
    /// When it was queued, ms since the epoch.
    #[serde(default)]
    pub queued_at_ms: u64,
    /// The envelope, as sealed when the message was sent.
    pub envelope: Envelope,
}

/// A conversation in the list.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Conversation {
    /// The other person.
    pub peer: Username,
    /// Messages in it.
    pub messages: u64,
    /// The latest one.
    pub last: StoredMessage,
}

/// Result of recording a received message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Stored.
    Stored,
    /// A message with that id from that peer was already stored; nothing changed.
    Duplicate,
}

/// The node's storage port. Each method is atomic on its own; writes become durable at
/// [`Store::flush`], which use cases await before acknowledging anything.
pub trait Store: Send + Sync + 'static {
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

    /// A contact by name.
    fn contact(&self, username: &Username) -> Result<Option<Contact>, StoreError>;
    /// Adds or replaces a contact.
    fn save_contact(&self, contact: &Contact) -> Result<(), StoreError>;
    /// All contacts, by name.
    fn contacts(&self) -> Result<Vec<Contact>, StoreError>;

    /// The session with `peer`, if any.
    fn session(&self, peer: &Username) -> Result<Option<Session>, StoreError>;

    /// A message by peer and id.
    fn message(&self, peer: &Username, id: &MessageId)
    -> Result<Option<StoredMessage>, StoreError>;
    /// The conversation with `peer`, in the order the messages were stored.
    fn history(&self, peer: &Username) -> Result<Vec<StoredMessage>, StoreError>;
    /// One summary per peer, most recent first.
    fn conversations(&self) -> Result<Vec<Conversation>, StoreError>;

    /// The send step: the message (pending), the advanced session and the outbox entry, in one
    /// atomic write.
    fn record_outgoing(
        &self,
        message: &StoredMessage,
        session: &Session,
        outbox: &OutboxEntry,
    ) -> Result<(), StoreError>;
    /// The receive step: the message, the advanced session and the removal of the one-time prekey
    /// it consumed, in one atomic write. MUST return [`Recorded::Duplicate`] and change nothing
    /// when a message with that id from that peer is already stored, unless that one is
    /// `Undecryptable`: then it is replaced in place.
    fn record_incoming(
        &self,
        message: &StoredMessage,
        session: &Session,
        consumed: Option<PreKeyId>,
    ) -> Result<Recorded, StoreError>;
    /// The send step of a control message (a receipt): the advanced session and the outbox
    /// entry, in one atomic write; no chat message is stored.
    fn record_control(
        &self,
        peer: &Username,
        session: &Session,
        outbox: &OutboxEntry,
    ) -> Result<(), StoreError>;
    /// The receive step of a receipt: the advanced session (and consumed one-time prekey), and
    /// the status of our messages `ids` to `peer` raised to `status` where that is an upgrade
    /// (see [`upgrades`]), in one atomic write. Returns the ids whose status changed.
    fn record_receipt(
        &self,
        peer: &Username,
        session: &Session,
        consumed: Option<PreKeyId>,
        ids: &[MessageId],
        status: MessageStatus,
    ) -> Result<Vec<MessageId>, StoreError>;
    /// Stores a message held back (status `Held`) without encrypting it.
    fn record_held(&self, message: &StoredMessage) -> Result<(), StoreError>;
    /// Releases a held message: its status becomes `Pending`, and the session and outbox entry are
    /// recorded, in one atomic write.
    fn record_released(
        &self,
        message: &StoredMessage,
        session: &Session,
        outbox: &OutboxEntry,
    ) -> Result<(), StoreError>;
    /// Moves a message to `status` if [`MessageStatus::may_become`] allows it, and returns
    /// whether it moved; reaching `Sent` (or beyond) also removes its outbox entry (also for
    /// an outbox entry that is no message, such as a receipt).
    fn set_status(
        &self,
        peer: &Username,
        id: &MessageId,
        status: MessageStatus,
    ) -> Result<bool, StoreError>;
    /// Envelopes not yet acknowledged, oldest first.
    fn outbox(&self) -> Result<Vec<OutboxEntry>, StoreError>;

    /// Records a received message that could not be decrypted (status `Undecryptable`, empty
    /// text), so that it is seen; MUST return `Duplicate` and change nothing when a message with
    /// its id from its peer is stored already. A later copy that decrypts replaces it
    /// ([`Store::record_incoming`]).
    fn record_undecryptable(&self, message: &StoredMessage) -> Result<Recorded, StoreError>;

    /// Keeps an envelope from a contact's new, not yet accepted key until the user decides.
    /// MUST return `false` (and keep nothing) when `held.from` already has [`MAX_HELD_INBOUND`]
    /// envelopes waiting, and `true` without a second copy when one with its id waits already.
    fn hold_inbound(&self, held: &HeldInbound) -> Result<bool, StoreError>;
    /// The envelopes held from `peer`, in the order they arrived.
    fn held_inbound(&self, peer: &Username) -> Result<Vec<HeldInbound>, StoreError>;
    /// Forgets a held envelope (it was taken, or refused for good).
    fn release_inbound(&self, peer: &Username, id: &MessageId) -> Result<(), StoreError>;

    /// Makes every write so far durable.
    fn flush(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
}
