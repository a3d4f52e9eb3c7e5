//! What the node keeps about people and messages: contacts with their pinned keys, and messages
//! as stored.

use std::collections::BTreeMap;

use peerchat_pki::Username;

use super::{Address, ConversationId, GroupId, IdentityKey, MessageId, MessageStatus};

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
    /// The other person; in a group, the author (ourselves for an outgoing message).
    pub peer: Username,
    /// Who wrote it.
    pub direction: Direction,
    /// The text.
    pub body: String,
    /// The sender's clock, ms since the epoch.
    pub sent_at_ms: u64,
    /// Its status; for an outgoing group message, the least advanced of its members' (see
    /// [`group_status`]).
    pub status: MessageStatus,
    /// The group, for a message in a group's conversation.
    pub group: Option<GroupId>,
    /// For an outgoing group message: each recipient's status.
    pub receipts: BTreeMap<Username, MessageStatus>,
    /// The message of the same conversation this one replies to.
    pub reply_to: Option<MessageId>,
    /// When its author last edited it (the author's clock, ms since the epoch), if ever.
    pub edited_at_ms: Option<u64>,
    /// Deleted for everyone by its author: the text is gone from the store.
    pub deleted: bool,
    /// One emoji per person who reacted to it.
    pub reactions: BTreeMap<Username, String>,
}

impl StoredMessage {
    /// The conversation it belongs to.
    pub fn conversation(&self) -> ConversationId {
        match self.group {
            Some(group) => ConversationId::Group(group),
            None => ConversationId::Direct(self.peer.clone()),
        }
    }

    /// A message of a direct conversation with `peer`.
    pub fn direct(
        id: MessageId,
        peer: Username,
        direction: Direction,
        body: String,
        sent_at_ms: u64,
        status: MessageStatus,
    ) -> Self {
        Self {
            id,
            peer,
            direction,
            body,
            sent_at_ms,
            status,
            group: None,
            receipts: BTreeMap::new(),
            reply_to: None,
            edited_at_ms: None,
            deleted: false,
            reactions: BTreeMap::new(),
        }
    }

    /// A message `from` just received (in a direct conversation until `group` is set).
    pub fn received(id: MessageId, from: Username, body: String, sent_at_ms: u64) -> Self {
        Self::direct(
            id,
            from,
            Direction::Incoming,
            body,
            sent_at_ms,
            MessageStatus::Received,
        )
    }

    /// What a direct message of ours says on the wire: a text, or a reply.
    pub fn direct_content(&self) -> super::Content {
        match self.reply_to {
            None => super::Content::Text {
                id: self.id,
                sent_at_ms: self.sent_at_ms,
                body: self.body.clone(),
            },
            Some(reply_to) => super::Content::Reply {
                group: None,
                id: self.id,
                sent_at_ms: self.sent_at_ms,
                body: self.body.clone(),
                reply_to,
            },
        }
    }

    /// Moves one member's status of our group message where [`MessageStatus::may_become`]
    /// allows it, and the message's status with it ([`group_status`]); whether it moved.
    pub fn move_member(&mut self, member: &Username, status: MessageStatus) -> bool {
        if self.direction != Direction::Outgoing {
            return false;
        }
        let Some(current) = self.receipts.get_mut(member) else {
            return false;
        };
        if !current.may_become(status) {
            return false;
        }
        *current = status;
        self.status = group_status(self.receipts.values());
        true
    }

    /// How many recipients of an outgoing group message have it at `status` or beyond
    /// (`delivered` counts those that stored it, `read` those that showed it).
    pub fn receipts_at_least(&self, status: MessageStatus) -> usize {
        self.receipts
            .values()
            .filter(|s| **s == status || status.may_become(**s) && s.is_acknowledged())
            .count()
    }
}

/// The status an outgoing group message shows, from its members' statuses: pending while any
/// member's copy waits, else held or failed if any is, else the least of sent, delivered, read
/// (so `read` means read by everyone). With no recipients, `sent`.
pub fn group_status<'a>(members: impl IntoIterator<Item = &'a MessageStatus>) -> MessageStatus {
    let statuses: Vec<MessageStatus> = members.into_iter().copied().collect();
    for waiting in [
        MessageStatus::Pending,
        MessageStatus::Held,
        MessageStatus::Failed,
    ] {
        if statuses.contains(&waiting) {
            return waiting;
        }
    }
    statuses
        .into_iter()
        .filter(|s| s.is_acknowledged())
        .min()
        .unwrap_or(MessageStatus::Sent)
}

impl Contact {
    /// The device whose key this record pins.
    pub fn address(&self) -> Address {
        Address::first(self.username.clone())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use MessageStatus::{Delivered, Failed, Held, Pending, Read, Sent};

    #[test]
    fn a_group_message_shows_its_least_advanced_member() {
        assert_eq!(group_status(&[Read, Delivered, Read]), Delivered);
        assert_eq!(group_status(&[Read, Read]), Read);
        assert_eq!(group_status(&[Read, Sent, Pending]), Pending);
        assert_eq!(group_status(&[Read, Held, Failed]), Held);
        assert_eq!(group_status(&[Read, Failed]), Failed);
        assert_eq!(group_status(&[]), Sent);
    }

    #[test]
    fn receipts_count_members_at_or_beyond_a_status() {
        let user = |n: &str| Username::new(n).unwrap();
        let mut m = StoredMessage::direct(
            MessageId::from_bytes([1; 16]),
            user("meg"),
            Direction::Outgoing,
            "hi".into(),
            0,
            Pending,
        );
        m.receipts = [
            (user("ann"), Read),
            (user("bob"), Delivered),
            (user("cat"), Sent),
            (user("dan"), Pending),
        ]
        .into();
        assert_eq!(m.receipts_at_least(Delivered), 2);
        assert_eq!(m.receipts_at_least(Read), 1);
        assert_eq!(m.receipts_at_least(Sent), 3);
    }
}
