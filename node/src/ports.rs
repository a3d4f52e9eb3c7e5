//! The driven ports: what the use cases need from the outside world. Each states its contract.

use std::future::Future;

use peerchat_pki::Username;

use crate::domain::{
    Ack, Envelope, IdentityKey, MessageId, OneTimePreKey, OneTimePreKeyPair, PreKeyBundle,
    PreKeyId, Session, SignedPreKey, SignedPreKeyPair,
};
pub use crate::domain::{Contact, Direction, MessageStatus, StoredMessage};

/// A peer to deliver to: who it is (username and the identity key the lookup or the pinned
/// contact gave) and where it may listen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    /// The contact's username.
    pub username: Username,
    /// The contact's identity key; the connection must authenticate with exactly this key.
    pub identity_key: IdentityKey,
    /// Multiaddrs to try (already-open connections are used first).
    pub addresses: Vec<String>,
}

/// Why an envelope was not acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// No address worked (nothing listens, the network failed, or no address was given).
    #[error("the peer is unreachable: {0}")]
    Unreachable(String),
    /// Someone answered, but not the expected peer (another key or another username).
    #[error("the peer at that address is not the expected contact")]
    WrongPeer,
    /// The peer refused the connection (for example our certificate) or closed it.
    #[error("the peer refused the connection: {0}")]
    Refused(String),
    /// No acknowledgement in time.
    #[error("the peer did not acknowledge in time")]
    Timeout,
    /// The envelope is larger than peers accept.
    #[error("the envelope is too large")]
    TooLarge,
}

/// The peer-to-peer network, outbound.
pub trait Network: Send + Sync + 'static {
    /// Delivers `envelope` to `to` and returns its acknowledgement. MUST only return an [`Ack`]
    /// that came from a connection authenticated as `to` (its identity key and username, verified
    /// by the CA); an established connection alone is never taken as acceptance.
    fn deliver(
        &self,
        to: &Recipient,
        envelope: Envelope,
    ) -> impl Future<Output = Result<Ack, DeliveryError>> + Send;
}

/// An envelope that arrived from an authenticated peer. Answer through `reply` once it has been
/// handled (stored, or refused); dropping `reply` answers `Rejected(Internal)`.
#[derive(Debug)]
pub struct Inbound {
    /// The sender, as its certificate names it.
    pub from: Username,
    /// The sender's certified identity key.
    pub identity_key: IdentityKey,
    /// The envelope.
    pub envelope: Envelope,
    /// Where the acknowledgement goes.
    pub reply: tokio::sync::oneshot::Sender<Ack>,
}

// ---------------------------------------------------------------------------------------------
// Storage

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

// ---------------------------------------------------------------------------------------------
// The rendezvous

/// Why the rendezvous could not serve a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirectoryError {
    /// The name is taken by another account.
    #[error("that username is taken")]
    UsernameTaken,
    /// The rendezvous refused a username or password it will not accept, saying why.
    #[error("{0}")]
    Rejected(String),
    /// Wrong username or password.
    #[error("wrong username or password")]
    BadCredentials,
    /// The account has a second factor and the code was missing, wrong or used before.
    #[error("a valid code of the account's second factor is needed (each code works once)")]
    TotpRequired,
    /// The code given to confirm a second factor is not valid now.
    #[error("that code is not valid now")]
    TotpInvalid,
    /// A second factor is enabled already.
    #[error("a second factor is already enabled")]
    TotpAlreadyEnabled,
    /// No second factor enrolment was started.
    #[error("start enabling a second factor first")]
    TotpNotEnrolled,
    /// The rendezvous asks us to slow down.
    #[error("too many requests; try again later")]
    RateLimited,
    /// The rendezvous has no such user (the caller names it with [`DirectoryError::naming`]).
    #[error("no such user")]
    UnknownUser,
    /// Any other refusal, with the server's code and message.
    #[error("{message} ({code})")]
    Refused {
        /// The server's code.
        code: String,
        /// The server's explanation.
        message: String,
    },
    /// No such user.
    #[error("no user named {0}")]
    NoSuchUser(Username),
    /// The server could not be reached or answered nonsense.
    #[error("the rendezvous is unavailable: {0}")]
    Unavailable(String),
    /// The server's CA is not the one pinned.
    #[error("the rendezvous presents another CA than the one pinned ({0})")]
    CaMismatch(String),
}

impl DirectoryError {
    /// This error, naming `user` when the rendezvous said that no such user exists.
    pub fn naming(self, user: &Username) -> Self {
        match self {
            Self::UnknownUser => Self::NoSuchUser(user.clone()),
            other => other,
        }
    }

    /// Whether the same request may succeed later: the rendezvous is unreachable, or it asked
    /// us to slow down.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::RateLimited)
    }

    /// The rendezvous's error body as a typed error: its stable codes become variants here, at
    /// the edge, so nothing past the adapters matches on strings.
    pub fn from_code(code: &str, message: String) -> Self {
        match code {
            "username_taken" => Self::UsernameTaken,
            "weak_password" | "bad_username" => Self::Rejected(message),
            "bad_credentials" => Self::BadCredentials,
            "totp_required" => Self::TotpRequired,
            "totp_invalid" => Self::TotpInvalid,
            "totp_enabled" => Self::TotpAlreadyEnabled,
            "totp_not_enrolled" => Self::TotpNotEnrolled,
            "rate_limited" => Self::RateLimited,
            "no_such_user" => Self::UnknownUser,
            _ => Self::Refused {
                code: code.to_owned(),
                message,
            },
        }
    }
}

/// Certificates issued at registration.
#[derive(Debug, Clone)]
pub struct Issued {
    /// Our certificate, PEM.
    pub certificate_pem: String,
    /// The CA certificate, PEM.
    pub ca_pem: String,
}

/// What a lookup tells about a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// The user.
    pub username: Username,
    /// Their certified identity key.
    pub identity_key: IdentityKey,
    /// Announced addresses.
    pub addresses: Vec<String>,
    /// Whether they announced presence recently.
    pub online: bool,
}

/// One answer of the mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    /// The waiting envelopes.
    pub items: Vec<MailItem>,
    /// The number of the CRL in force at the rendezvous (absent from an older rendezvous).
    pub crl_number: Option<u64>,
    /// Our one-time prekeys are running low at the rendezvous.
    pub prekeys_low: bool,
}

/// An envelope from the mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailItem {
    /// Its id (the message id the sender chose).
    pub id: MessageId,
    /// The depositor, as its certificate named it.
    pub sender: Username,
    /// The envelope bytes.
    pub envelope: Vec<u8>,
    /// The key of the depositor's certificate, as the rendezvous recorded it (absent from an
    /// older rendezvous: then the sender's certified key is looked up).
    pub sender_key: Option<IdentityKey>,
}

/// A second factor being enabled: the shared secret, for an authenticator app.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TotpEnrolment {
    /// The secret, base32.
    pub secret: String,
    /// The same as an `otpauth://` URI (for a QR code).
    pub uri: String,
}

impl std::fmt::Debug for TotpEnrolment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TotpEnrolment(<redacted>)")
    }
}

/// The rendezvous, as the use cases need it.
pub trait Directory: Send + Sync + 'static {
    /// Creates the account; returns the certificate for `csr` and the CA.
    fn register(
        &self,
        username: &Username,
        password: &str,
        csr: &[u8],
    ) -> impl Future<Output = Result<Issued, DirectoryError>> + Send;
    /// Logs in on a new install: a certificate for `csr`'s new key; the account's older
    /// certificates are revoked by the rendezvous.
    fn login(
        &self,
        username: &Username,
        password: &str,
        totp: Option<&str>,
        csr: &[u8],
    ) -> impl Future<Output = Result<Issued, DirectoryError>> + Send;
    /// Starts enabling a second factor (TOTP) on our account.
    fn totp_enrol(&self) -> impl Future<Output = Result<TotpEnrolment, DirectoryError>> + Send;
    /// Enables the second factor with a first valid code.
    fn totp_confirm(&self, code: &str) -> impl Future<Output = Result<(), DirectoryError>> + Send;
    /// A new certificate for our current key (`csr` made with it).
    fn renew(&self, csr: &[u8]) -> impl Future<Output = Result<Issued, DirectoryError>> + Send;
    /// Revokes our current certificate (logout).
    fn logout(&self) -> impl Future<Output = Result<(), DirectoryError>> + Send;
    /// From now on, authenticate with this certificate and key.
    fn authenticate(
        &self,
        certificate_pem: &str,
        key: &ed25519_dalek::SigningKey,
    ) -> Result<(), DirectoryError>;
    /// Publishes our signed prekey and one-time prekeys; returns how many one-time prekeys the
    /// server holds.
    fn upload_prekeys(
        &self,
        signed: Option<SignedPreKey>,
        one_time: Vec<OneTimePreKey>,
    ) -> impl Future<Output = Result<u32, DirectoryError>> + Send;
    /// Exact-name lookup.
    fn lookup(
        &self,
        username: &Username,
    ) -> impl Future<Output = Result<PeerInfo, DirectoryError>> + Send;
    /// A prekey bundle (consumes one of their one-time prekeys).
    fn bundle(
        &self,
        username: &Username,
    ) -> impl Future<Output = Result<PreKeyBundle, DirectoryError>> + Send;
    /// Leaves an envelope in `to`'s mailbox (a second deposit with the same id is accepted and
    /// changes nothing).
    fn deposit(
        &self,
        to: &Username,
        id: &MessageId,
        envelope: &[u8],
    ) -> impl Future<Output = Result<(), DirectoryError>> + Send;
    /// Our waiting envelopes, oldest first; waits up to `wait_secs` for one to arrive or for a
    /// CRL newer than `known_crl` (answered at once when `known_crl` is older already).
    fn fetch_mail(
        &self,
        wait_secs: u64,
        known_crl: Option<u64>,
    ) -> impl Future<Output = Result<Mailbox, DirectoryError>> + Send;
    /// Deletes one of our envelopes (after it has been stored or refused for good).
    fn ack_mail(&self, id: &MessageId) -> impl Future<Output = Result<(), DirectoryError>> + Send;
    /// Announces our addresses for `ttl_secs`.
    fn announce(
        &self,
        addresses: Vec<String>,
        ttl_secs: u64,
    ) -> impl Future<Output = Result<(), DirectoryError>> + Send;
}

// ---------------------------------------------------------------------------------------------
// Notifications and time

/// Something the UI should learn of at once.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A message arrived.
    MessageReceived {
        /// From whom.
        peer: Username,
        /// Its id.
        id: MessageId,
    },
    /// A message of ours changed status.
    StatusChanged {
        /// To whom.
        peer: Username,
        /// Its id.
        id: MessageId,
        /// The new status.
        status: MessageStatus,
    },
    /// A contact's identity key changed; sending to them is held until the user accepts it.
    KeyChanged {
        /// Whose.
        peer: Username,
    },
    /// A peer connected to us directly (or we to them).
    PeerOnline {
        /// Who.
        peer: Username,
    },
    /// The last direct connection with a peer closed.
    PeerOffline {
        /// Who.
        peer: Username,
    },
}

/// Real-time events for the UI. MUST NOT block.
pub trait Notifier: Send + Sync + 'static {
    /// Publishes an event.
    fn notify(&self, event: Event);
}

/// The time, as a port so tests can set it.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}
