//! Notifications for the user interface, and the time.

use peerchat_pki::Username;

use crate::domain::{FileId, GroupId, MessageId, MessageStatus};

/// Something the UI should learn of at once.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// This node has an account now (registered or logged in): its network can start.
    Registered {
        /// Our username.
        user: Username,
    },
    /// Our addresses, as announced to the rendezvous just now (at start, and whenever they
    /// change: a relay reservation, an address confirmed from outside).
    Announced {
        /// Multiaddrs, direct and relayed.
        addresses: Vec<String>,
    },
    /// A stored message was edited, deleted or reacted to (by us or by someone else).
    MessageChanged {
        /// The other person, for a direct conversation.
        peer: Option<Username>,
        /// The group, for a group's conversation.
        group: Option<GroupId>,
        /// The message.
        id: MessageId,
    },
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
    /// A group was created, changed, or learnt of (we were added).
    GroupChanged {
        /// Which.
        group: GroupId,
    },
    /// A message arrived in a group.
    GroupMessageReceived {
        /// The group.
        group: GroupId,
        /// Who wrote it.
        author: Username,
        /// Its id.
        id: MessageId,
    },
    /// A member's copy of our group message changed status.
    GroupStatusChanged {
        /// The group.
        group: GroupId,
        /// The message.
        id: MessageId,
        /// The member.
        member: Username,
        /// The member's new status.
        status: MessageStatus,
        /// The message's status over all members (see [`crate::domain::group_status`]).
        overall: MessageStatus,
    },
    /// A file was offered to us.
    FileOffered {
        /// By whom.
        peer: Username,
        /// Which.
        id: FileId,
        /// Its size in bytes.
        size: u64,
        /// Whether it is being fetched already (else it waits for `file accept`).
        downloading: bool,
    },
    /// A file's fetch went on.
    FileProgress {
        /// Which.
        id: FileId,
        /// Bytes stored so far.
        bytes_done: u64,
        /// Its size.
        total: u64,
    },
    /// A file was fetched whole, its digest matched, and it is in the download directory.
    FileCompleted {
        /// Which.
        id: FileId,
    },
    /// A fetched file did not match its digest and was discarded.
    FileFailed {
        /// Which.
        id: FileId,
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
    /// Someone's profile changed, or the user accepted their request, blocked or unblocked
    /// them.
    PersonChanged {
        /// Who.
        peer: Username,
    },
    /// Someone is typing (or stopped) in a conversation with us; shown for a few seconds,
    /// never stored.
    Typing {
        /// Who.
        peer: Username,
        /// In this group, or to us directly.
        group: Option<GroupId>,
        /// Typing, or stopped.
        typing: bool,
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
