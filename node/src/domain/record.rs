//! What the node keeps about people and messages: contacts with their pinned keys, and messages
//! as stored.

use peerchat_pki::Username;

use super::{Address, ConversationId, IdentityKey, MessageId, MessageStatus};

/// A person we talk to, with the identity key of their device pinned on first contact (one
/// device per user for now: the record of [`Contact::address`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Contact {
    /// Their username.
    pub username: Username,
    /// Their pinned identity key.
    pub identity_key: IdentityKey,
    /// Whether the safety number was compared and confirmed.
    pub verified: bool,
    /// A different key the contact now presents, not yet accepted by the user. While it is set,
    /// messages to the contact are held and messages from the new key are not taken.
    #[serde(default)]
    pub pending_key: Option<IdentityKey>,
}

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// We sent it.
    Outgoing,
    /// They sent it.
    Incoming,
}

/// A message as stored on this node.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoredMessage {
    /// The sender's id.
    pub id: MessageId,
    /// The other person.
    pub peer: Username,
    /// Who wrote it.
    pub direction: Direction,
    /// The text.
    pub body: String,
    /// The sender's clock, ms since the epoch.
    pub sent_at_ms: u64,
    /// Its status.
    pub status: MessageStatus,
}

impl StoredMessage {
    /// The conversation it belongs to.
    pub fn conversation(&self) -> ConversationId {
        ConversationId::Direct(self.peer.clone())
    }
}

impl Contact {
    /// The device whose key this record pins.
    pub fn address(&self) -> Address {
        Address::first(self.username.clone())
    }
}
