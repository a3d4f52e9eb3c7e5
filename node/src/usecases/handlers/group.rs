//! Group contents: a change (checked against its author's key and rights, then applied), a
//! message (from a member only) and receipts for our group messages. Each is recorded with the
//! advanced session in one commit, flushed before the acknowledgement.
//!
//! What cannot be judged yet (a change after changes still missing, a message of a group or
//! version we have not reached) is answered [`RejectReason::Busy`] without recording anything:
//! the sender keeps it and sends it again. What its sender may not say is
//! [`RejectReason::Refused`], recorded with the session, and final.

use peerchat_pki::Username;

use super::Decrypted;
use crate::domain::{
    Ack, Change, Group, GroupError, GroupId, GroupRef, GroupState, MessageId, RejectReason,
    SignedChange,
};
use crate::ports::{
    Clock, Directory, Event, IfStored, MessageStatus, Network, Notifier, Store, StoredMessage,
    Write,
};
use crate::usecases::{Node, NodeError};

/// What a group change does to what we hold.
enum Outcome {
    /// The group is now this.
    Changed(Box<Group>),
    /// Nothing changes (applied before, or lost to a concurrent change), and that is fine.
    Unchanged,
    /// Changes before it are missing: the sender sends it again later.
    NotYet,
    /// Its author may not make it, or it is invalid.
    Refused(GroupError),
}

impl<S: Store, D: Directory, N: Network, E: Notifier, C: Clock> Node<S, D, N, E, C> {
    /// A change of a group from its author.
    pub(super) async fn handle_group_change(
        &self,
        decrypted: Decrypted<'_>,
        base: Option<GroupState>,
        change: SignedChange,
    ) -> Result<Ack, NodeError> {
        let me = self.me()?;
        let from = decrypted.from.clone();
        let outcome = if change.author != from {
            // Only the author sends its change: the connection authenticated their key.
            Outcome::Refused(GroupError::NotAllowed(from.clone()))
        } else {
            self.judge_change(&me.0, decrypted.identity_key, base, &change)?
        };
        let group = change.group;
        match outcome {
            Outcome::Changed(state) => {
                self.record(decrypted, vec![Write::Group(state)], true)
                    .await?;
                self.notifier.notify(Event::GroupChanged { group });
                Ok(Ack::Stored)
            }
            Outcome::Unchanged => {
                self.record(decrypted, Vec::new(), true).await?;
                Ok(Ack::Stored)
            }
            Outcome::NotYet => Ok(Ack::Rejected(RejectReason::Busy)),
            Outcome::Refused(e) => {
                tracing::warn!(peer = %from, group = %group, error = %e, "a group change was refused");
                self.record(decrypted, Vec::new(), false).await?;
                Ok(Ack::Rejected(RejectReason::Refused))
            }
        }
    }

    /// What `change` (its signature by `key`) does to what we hold of its group.
    fn judge_change(
        &self,
        me: &Username,
        key: &crate::domain::IdentityKey,
        base: Option<GroupState>,
        change: &SignedChange,
    ) -> Result<Outcome, NodeError> {
        // A change that adds us, with the state it was made on: how we join (or rejoin).
        let joining = base.filter(|b| {
            b.id == change.group
                && b.digest() == change.parent
                && matches!(&change.change, Change::Add(users) if users.contains(me))
        });
        let held = self.store.group(&change.group)?;
        let result = match (held, joining) {
            (Some(held), Some(base))
                if base.version >= held.state().version || !held.state().members.contains(me) =>
            {
                join(base, change, key)
            }
            (Some(mut held), _) => held.apply(change, key).map(|()| held),
            (None, Some(base)) => join(base, change, key),
            (None, None) => match &change.change {
                Change::Create { .. } => {
                    Group::create(change, key).and_then(|g| match g.state().members.contains(me) {
                        true => Ok(g),
                        false => Err(GroupError::Invalid("a group we are not in")),
                    })
                }
                // Its creation (or the change adding us) has not arrived yet.
                _ => return Ok(Outcome::NotYet),
            },
        };
        Ok(match result {
            Ok(group) => Outcome::Changed(Box::new(group)),
            Err(GroupError::Duplicate | GroupError::Lost) => Outcome::Unchanged,
            Err(GroupError::Gap { .. }) => Outcome::NotYet,
            Err(e) => Outcome::Refused(e),
        })
    }

    /// Whether `from` may write in `group` now: `None` when a member (and so are we), else
    /// the answer to give. A sender ahead of our version waits for the changes we miss; a
    /// non-member's envelope is recorded (its session advanced) and refused.
    pub(super) async fn group_gate<'a>(
        &self,
        decrypted: Decrypted<'a>,
        group: GroupRef,
    ) -> Result<Result<Decrypted<'a>, Ack>, NodeError> {
        let me = self.me()?;
        let from = decrypted.from;
        let Some(held) = self.store.group(&group.group)? else {
            // Its creation, or the change adding us, is still on its way.
            return Ok(Err(Ack::Rejected(RejectReason::Busy)));
        };
        let state = held.state();
        if group.version > state.version {
            // The author knows changes we do not have yet (perhaps the one adding them).
            return Ok(Err(Ack::Rejected(RejectReason::Busy)));
        }
        if !state.members.contains(from) || !state.members.contains(&me.0) {
            tracing::warn!(peer = %from, group = %group.group, "a group message from a non-member was refused");
            self.record(decrypted, Vec::new(), false).await?;
            return Ok(Err(Ack::Rejected(RejectReason::Refused)));
        }
        Ok(Ok(decrypted))
    }

    /// A message in a group (or a reply), from one of its members.
    pub(super) async fn handle_group_text(
        &self,
        decrypted: Decrypted<'_>,
        group: GroupRef,
        id: MessageId,
        sent_at_ms: u64,
        body: String,
        reply_to: Option<MessageId>,
    ) -> Result<Ack, NodeError> {
        if id != decrypted.envelope_id {
            return Ok(Ack::Rejected(RejectReason::Malformed));
        }
        let from = decrypted.from.clone();
        let decrypted = match self.group_gate(decrypted, group).await? {
            Ok(decrypted) => decrypted,
            Err(answer) => return Ok(answer),
        };
        let group = group.group;
        let stored = StoredMessage {
            group: Some(group),
            reply_to,
            ..StoredMessage::received(id, from.clone(), body, sent_at_ms)
        };
        let committed = self
            .record(
                decrypted,
                vec![Write::Message(stored, IfStored::ReplaceUndecryptable)],
                true,
            )
            .await?;
        if committed.duplicate {
            return Ok(Ack::Duplicate);
        }
        self.notifier.notify(Event::GroupMessageReceived {
            group,
            author: from.clone(),
            id,
        });
        if let Err(e) = self
            .queue_receipt(
                &from,
                crate::domain::Content::GroupReceipt {
                    group,
                    ids: vec![id],
                    read: false,
                },
            )
            .await
        {
            tracing::warn!(error = %e, "could not queue a group delivery receipt");
        }
        Ok(Ack::Stored)
    }

    /// A member stored (or showed) our group messages `ids`.
    pub(super) async fn handle_group_receipt(
        &self,
        decrypted: Decrypted<'_>,
        group: GroupId,
        ids: Vec<MessageId>,
        read: bool,
    ) -> Result<Ack, NodeError> {
        let status = match read {
            true => MessageStatus::Read,
            false => MessageStatus::Delivered,
        };
        let member = decrypted.from.clone();
        let writes = ids
            .into_iter()
            .map(|id| Write::MemberStatus {
                group,
                id,
                member: member.clone(),
                status,
            })
            .collect();
        let committed = self.record(decrypted, writes, false).await?;
        self.notify_members(committed.members);
        Ok(Ack::Stored)
    }
}

/// Joins at `base` and applies the change that adds us.
fn join(
    base: GroupState,
    change: &SignedChange,
    key: &crate::domain::IdentityKey,
) -> Result<Group, GroupError> {
    let mut group = Group::joined(base)?;
    group.apply(change, key)?;
    Ok(group)
}
