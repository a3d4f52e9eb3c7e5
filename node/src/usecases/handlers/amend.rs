//! An edit, delete or reaction from the other side: checked against the rules (the message is
//! in the conversation; edits and deletes are its author's, within 24 hours; a reaction is one
//! emoji), applied with the advanced session in one commit, or refused and nothing changes.

use super::Decrypted;
use crate::domain::amend::CLOCK_SKEW_MS;
use crate::domain::{Ack, Amendment, ConversationId, GroupRef, MessageId, RejectReason};
use crate::ports::{Clock, Directory, Event, Network, Notifier, Store, Write};
use crate::usecases::{Node, NodeError};

impl<S: Store, D: Directory, N: Network, E: Notifier, C: Clock> Node<S, D, N, E, C> {
    /// Amends the message `target` of the conversation with the sender (or of `group`).
    pub(super) async fn handle_amend(
        &self,
        decrypted: Decrypted<'_>,
        group: Option<GroupRef>,
        target: MessageId,
        at_ms: u64,
        amendment: Amendment,
    ) -> Result<Ack, NodeError> {
        let me = self.me()?.0.clone();
        let from = decrypted.from.clone();
        let (decrypted, conversation) = match group {
            None => (decrypted, ConversationId::Direct(from.clone())),
            Some(group) => match self.group_gate(decrypted, group).await? {
                Ok(decrypted) => (decrypted, ConversationId::Group(group.group)),
                Err(answer) => return Ok(answer),
            },
        };
        let refused = match self.store.message(&conversation, &target)? {
            None => Some("no such message".to_owned()),
            Some(_) if at_ms > self.clock.now_ms().saturating_add(CLOCK_SKEW_MS) => {
                Some("dated in the future".to_owned())
            }
            Some(message) => message
                .may_amend(&me, &from, &amendment, at_ms)
                .err()
                .map(|e| e.to_string()),
        };
        if let Some(why) = refused {
            tracing::warn!(peer = %from, id = %target, why, "an amendment was refused");
            self.record(decrypted, Vec::new(), false).await?;
            return Ok(Ack::Rejected(RejectReason::Refused));
        }
        let write = Write::Amend {
            conversation: conversation.clone(),
            id: target,
            by: from,
            at_ms,
            amendment,
        };
        let committed = self.record(decrypted, vec![write], true).await?;
        if !committed.amended.is_empty() {
            self.notifier.notify(Event::MessageChanged {
                peer: conversation.peer().cloned(),
                group: conversation.group(),
                id: target,
            });
        }
        Ok(Ack::Stored)
    }
}
