//! The node's use cases, one module each, over the domain and the driven ports only.
//!
//! Commands (`register`, `send`, `add_contact`, `refresh_prekeys`, `announce_presence`) change
//! state and return nothing but errors; queries (`history`, `conversations`, `contacts`,
//! `status`) change nothing. `receive` answers the peer with an [`Ack`](crate::domain::Ack).

mod amend;
mod backup;
mod certificates;
mod contacts;
mod files;
mod groups;
mod handlers;
mod maintain;
mod offline;
mod people;
mod prekeys;
mod queries;
mod receive;
mod register;
mod send;
mod trust;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use peerchat_pki::Username;

use crate::domain::{
    ContentError, EncryptError, GroupError, GroupId, IdentityKeyPair, SessionError,
};
use crate::ports::{Clock, Directory, DirectoryError, Network, Notifier, Store, StoreError};

pub use backup::{BackupFailure, BackupSummary};
pub use files::{
    DEFAULT_AUTO_DOWNLOAD_BYTES, DEFAULT_MAX_FILE_BYTES, FILE_PROTOCOL, FileAnswer, FileLimits,
    FileRequest, Parking,
};
pub use maintain::Schedule;
pub use offline::MailFetched;
pub use people::{MAX_REQUEST_MESSAGES, Request};
pub use queries::{MAX_SEARCH_HITS, NodeStatus};
pub use trust::{KeyKind, SafetyNumbers};

/// How many one-time prekeys are uploaded at registration and on each refill.
pub const PREKEY_BATCH: u32 = 100;

/// Why a use case failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// This node has no account yet.
    #[error("this node is not registered yet; run `peerchat register NAME`")]
    NotRegistered,
    /// This node already has an account.
    #[error("this node is already registered as {0}")]
    AlreadyRegistered(Username),
    /// The contact's identity key differs from the pinned one; sending is held until the user
    /// accepts the new key.
    #[error("{0}'s identity key has changed; compare safety numbers and accept the new key first")]
    KeyChanged(Username),
    /// The name is this node's own: there is no conversation with oneself.
    #[error("{0} is you; a conversation needs someone else")]
    OwnAccount(Username),
    /// No contact by that name.
    #[error("{0} is not a contact")]
    UnknownContact(Username),
    /// There is no new key to accept.
    #[error("{0}'s key has not changed")]
    NoKeyChange(Username),
    /// Only a `failed` message can be retried.
    #[error("no failed message with that id")]
    NotRetryable,
    /// The number typed is not the safety number.
    #[error(
        "that is not the safety number of this conversation; the keys may not be the ones you think"
    )]
    SafetyNumberMismatch,
    /// The certificate we were issued does not match our key or name.
    #[error("the rendezvous issued a certificate that does not match this node's key")]
    BadCertificate,
    /// No group by that id on this node.
    #[error("no group {0} on this node")]
    UnknownGroup(GroupId),
    /// We are not (or no longer) a member of the group.
    #[error("you are not a member of group {0}")]
    NotMember(GroupId),
    /// The group change is not allowed or not valid.
    #[error(transparent)]
    Group(#[from] GroupError),
    /// Some members could not be reached to set up a session; a group change reaches every
    /// member or none.
    #[error("could not reach {who} to send the group change: {why}")]
    MemberUnreachable {
        /// Who.
        who: Username,
        /// Why.
        why: String,
    },
    /// A file could not be offered, found or kept.
    #[error("{0}")]
    File(String),
    /// A search that cannot be run (empty, or too long).
    #[error("{0}")]
    BadQuery(String),
    /// No message with that id in the conversation.
    #[error("no message {0} in this conversation")]
    NoSuchMessage(crate::domain::MessageId),
    /// The user blocked them.
    #[error("you blocked {0}; `peerchat unblock {0}` first")]
    Blocked(Username),
    /// Blocked already.
    #[error("{0} is blocked already")]
    AlreadyBlocked(Username),
    /// Not blocked.
    #[error("{0} is not blocked")]
    NotBlocked(Username),
    /// No request from them waits.
    #[error("there is no message request from {0}")]
    NoRequest(Username),
    /// A backup could not be made or restored.
    #[error(transparent)]
    Backup(#[from] BackupFailure),
    /// A profile the rules refuse.
    #[error(transparent)]
    Profile(#[from] crate::domain::ProfileError),
    /// An edit, delete or reaction the rules refuse.
    #[error(transparent)]
    Amend(#[from] crate::domain::AmendRefused),
    /// The message is not acceptable (too long, …).
    #[error(transparent)]
    Content(#[from] ContentError),
    /// Encryption failed.
    #[error(transparent)]
    Encrypt(#[from] EncryptError),
    /// A session could not be created.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The rendezvous failed or refused.
    #[error(transparent)]
    Directory(#[from] DirectoryError),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The port types a node is wired with, as one type: what is generic over a node (the local
/// API) takes one parameter instead of five.
pub trait Ports: Send + Sync + 'static {
    /// Storage.
    type Store: Store;
    /// The rendezvous.
    type Directory: Directory;
    /// The peer-to-peer network.
    type Network: Network;
    /// Real-time events.
    type Notifier: Notifier;
    /// The time.
    type Clock: Clock;
}

impl<S: Store, D: Directory, N: Network, E: Notifier, C: Clock> Ports for (S, D, N, E, C) {
    type Store = S;
    type Directory = D;
    type Network = N;
    type Notifier = E;
    type Clock = C;
}

/// The node wired with `P`'s ports.
pub type NodeOf<P> = Node<
    <P as Ports>::Store,
    <P as Ports>::Directory,
    <P as Ports>::Network,
    <P as Ports>::Notifier,
    <P as Ports>::Clock,
>;

/// The node: its use cases over its ports.
pub struct Node<S, D, N, E, C> {
    store: S,
    directory: D,
    network: N,
    notifier: E,
    clock: C,
    identity: RwLock<Option<Arc<(Username, IdentityKeyPair)>>>,
    /// One lock per peer: a session is read, advanced and written back under it.
    peer_locks: Mutex<HashMap<Username, Arc<tokio::sync::Mutex<()>>>>,
    /// One lock per peer over the order in which their envelopes are taken: a receive decides
    /// whether to hold or decrypt under it, and accepting a new key holds it until the envelopes
    /// held for that key are taken, so that nothing arriving meanwhile overtakes them.
    inbound_order: Mutex<HashMap<Username, Arc<tokio::sync::Mutex<()>>>>,
    /// Recently looked-up addresses per peer, so a burst of messages costs one lookup (and stays
    /// within the rendezvous's rate limits). Dropped after [`ADDRESS_TTL_MS`] or a failed delivery.
    addresses: Mutex<HashMap<Username, (crate::ports::PeerInfo, u64)>>,
    /// Woken when something was queued in the outbox (a receipt), so it goes out at once.
    outbox_signal: tokio::sync::Notify,
    /// Whether read receipts are sent.
    read_receipts: bool,
    /// How many messages a request (someone who wrote first, not taken up) may leave.
    request_limit: u64,
    /// How large files may be.
    file_limits: files::FileLimits,
    /// Woken when a file is marked for download.
    downloads_signal: tokio::sync::Notify,
    /// How far peers have fetched the files we serve (chunks), while they fetch.
    serving: Mutex<HashMap<crate::domain::FileId, u32>>,
    /// How many fetchers each file is being served to now.
    uploads: Mutex<HashMap<crate::domain::FileId, usize>>,
}

/// How long looked-up addresses are reused.
pub const ADDRESS_TTL_MS: u64 = 30_000;

impl<S, D, N, E, C> std::fmt::Debug for Node<S, D, N, E, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").finish_non_exhaustive()
    }
}

impl<S: Store, D: Directory, N: Network, E: Notifier, C: Clock> Node<S, D, N, E, C> {
    /// Wires the node.
    pub fn new(store: S, directory: D, network: N, notifier: E, clock: C) -> Self {
        Self {
            store,
            directory,
            network,
            notifier,
            clock,
            identity: RwLock::new(None),
            peer_locks: Mutex::new(HashMap::new()),
            inbound_order: Mutex::new(HashMap::new()),
            addresses: Mutex::new(HashMap::new()),
            outbox_signal: tokio::sync::Notify::new(),
            read_receipts: true,
            request_limit: MAX_REQUEST_MESSAGES,
            file_limits: files::FileLimits::default(),
            downloads_signal: tokio::sync::Notify::new(),
            serving: Mutex::new(HashMap::new()),
            uploads: Mutex::new(HashMap::new()),
        }
    }

    /// Sets how large files may be.
    pub fn with_file_limits(mut self, limits: files::FileLimits) -> Self {
        self.file_limits = limits;
        self
    }

    /// How large the files this node sends and takes may be.
    pub fn file_limits(&self) -> files::FileLimits {
        self.file_limits
    }

    /// Sets how many messages a request may leave before the rest is refused
    /// ([`MAX_REQUEST_MESSAGES`] unless set).
    pub fn with_request_limit(mut self, messages: u64) -> Self {
        self.request_limit = messages;
        self
    }

    /// Turns read receipts off (or on).
    pub fn with_read_receipts(mut self, on: bool) -> Self {
        self.read_receipts = on;
        self
    }

    /// Makes every write so far durable (at shutdown).
    pub async fn flush(&self) -> Result<(), NodeError> {
        Ok(self.store.flush().await?)
    }

    /// Our username and identity key, loaded once.
    fn me(&self) -> Result<Arc<(Username, IdentityKeyPair)>, NodeError> {
        if let Some(me) = self
            .identity
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Ok(me);
        }
        let stored = self.store.identity()?.ok_or(NodeError::NotRegistered)?;
        let me = Arc::new((stored.username, IdentityKeyPair::from_seed(&stored.seed)));
        *self.identity.write().unwrap_or_else(|p| p.into_inner()) = Some(me.clone());
        Ok(me)
    }

    fn peer_lock(&self, peer: &Username) -> Arc<tokio::sync::Mutex<()>> {
        lock_of(&self.peer_locks, peer)
    }

    /// `peer`'s lock over the order of their inbound envelopes (see `inbound_order`).
    fn inbound_order(&self, peer: &Username) -> Arc<tokio::sync::Mutex<()>> {
        lock_of(&self.inbound_order, peer)
    }
}

/// `peer`'s lock in `locks`, made on first use.
fn lock_of(
    locks: &Mutex<HashMap<Username, Arc<tokio::sync::Mutex<()>>>>,
    peer: &Username,
) -> Arc<tokio::sync::Mutex<()>> {
    locks
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(peer.clone())
        .or_default()
        .clone()
}
