//! One handler per content kind. Receive decrypts; the handler of the content's kind records
//! what it means (atomically with the advanced session) and answers the sender. A new kind
//! (group, file) is a new handler module and one line in [`Node::handle`].

mod amend;
mod file;
mod group;
mod person;
mod receipt;
mod text;

use peerchat_pki::Username;

use super::{Node, NodeError};
use crate::domain::Standing;
use crate::domain::{
    Ack, Content, ConversationId, IdentityKey, MessageId, PreKeyId, RejectReason, Session,
};
use crate::ports::{
    Batch, Clock, Committed, Contact, Directory, MessageStatus, Network, Notifier, Store, Write,
};

/// A message that decrypted: the advanced session is not recorded yet, and the peer's lock is
/// held until it is.
pub(super) struct Decrypted<'a> {
    /// The sender, authenticated.
    pub from: &'a Username,
    /// The sender's authenticated identity key.
    pub identity_key: &'a IdentityKey,
    /// The envelope's id.
    pub envelope_id: MessageId,
    /// The session, advanced past this message.
    pub session: Session,
    /// The one-time prekey the message consumed, if it started the session.
    pub consumed: Option<PreKeyId>,
    /// The sender is not a contact yet.
    pub new_contact: bool,
    /// The peer's lock: the session is recorded under it.
    pub guard: tokio::sync::OwnedMutexGuard<()>,
}

impl<S: Store, D: Directory, N: Network, E: Notifier, C: Clock> Node<S, D, N, E, C> {
    /// Records the advanced session (and, with `pin`, a first contact's key) with `writes`, in
    /// one commit, flushed. A refused stranger is not pinned as a contact.
    pub(super) async fn record(
        &self,
        decrypted: Decrypted<'_>,
        writes: Vec<Write>,
        pin: bool,
    ) -> Result<Committed, NodeError> {
        let Decrypted {
            from,
            identity_key,
            session,
            consumed,
            new_contact,
            guard,
            ..
        } = decrypted;
        let mut batch = Batch(writes);
        if new_contact && pin {
            batch.0.extend(self.note_stranger(from)?);
            self.store.save_contact(&Contact {
                username: from.clone(),
                identity_key: *identity_key,
                verified: false,
                pending_key: None,
            })?;
        }
        batch.push(Write::Session(
            crate::domain::Address::first(from.clone()),
            Box::new(session),
        ));
        if let Some(prekey) = consumed {
            batch.push(Write::ConsumePreKey(prekey));
        }
        let committed = self.store.commit(&batch)?;
        drop(guard);
        self.store.flush().await?;
        Ok(committed)
    }

    /// Hands `content` to the handler of its kind.
    pub(super) async fn handle(
        &self,
        decrypted: Decrypted<'_>,
        content: Content,
    ) -> Result<Ack, NodeError> {
        let standing = self.standing(decrypted.from)?;
        if standing == Standing::Blocked && !matches!(content, Content::GroupChange { .. }) {
            // Dropped unanswered: no receipt, nothing stored but the advanced session (so a
            // later unblock finds the conversation in step). The sender sees it sent, as if it
            // waited in the mailbox.
            tracing::info!("dropped a message from a blocked user");
            self.record(decrypted, Vec::new(), false).await?;
            return Ok(Ack::Stored);
        }
        if standing == Standing::Request
            && adds_a_direct_message(&content)
            && self
                .store
                .message_count(&ConversationId::Direct(decrypted.from.clone()))?
                >= self.request_limit
        {
            // Someone the user never answered cannot fill their disk: past the limit, a request
            // takes nothing more until the user accepts it. The session still advances, so the
            // conversation is in step if they do. Final for the sender (their message fails).
            tracing::info!("refused a message: the request holds as many as it may");
            self.record(decrypted, Vec::new(), false).await?;
            return Ok(Ack::Rejected(RejectReason::Refused));
        }
        match content {
            Content::Profile { profile } => self.handle_profile(decrypted, *profile).await,
            Content::Typing { group, typing } => self.handle_typing(decrypted, group, typing).await,
            Content::Text {
                id,
                sent_at_ms,
                body,
            } => {
                self.handle_text(decrypted, id, sent_at_ms, body, None)
                    .await
            }
            Content::Reply {
                group: None,
                id,
                sent_at_ms,
                body,
                reply_to,
            } => {
                self.handle_text(decrypted, id, sent_at_ms, body, Some(reply_to))
                    .await
            }
            Content::Reply {
                group: Some(group),
                id,
                sent_at_ms,
                body,
                reply_to,
            } => {
                self.handle_group_text(decrypted, group, id, sent_at_ms, body, Some(reply_to))
                    .await
            }
            Content::Amend {
                group,
                target,
                at_ms,
                amendment,
            } => {
                self.handle_amend(decrypted, group, target, at_ms, amendment)
                    .await
            }
            Content::DeliveryReceipt { ids } => {
                self.handle_receipt(decrypted, &ids, MessageStatus::Delivered)
                    .await
            }
            Content::ReadReceipt { ids } => {
                self.handle_receipt(decrypted, &ids, MessageStatus::Read)
                    .await
            }
            Content::GroupChange { base, change } => {
                self.handle_group_change(decrypted, base, *change).await
            }
            Content::GroupText {
                group,
                version,
                id,
                sent_at_ms,
                body,
            } => {
                let group = crate::domain::GroupRef { group, version };
                self.handle_group_text(decrypted, group, id, sent_at_ms, body, None)
                    .await
            }
            Content::GroupReceipt { group, ids, read } => {
                self.handle_group_receipt(decrypted, group, ids, read).await
            }
            Content::FileOffer { offer, group } => {
                self.handle_file_offer(decrypted, *offer, group).await
            }
        }
    }
}

/// Whether `content` adds a message to the direct conversation with its sender.
fn adds_a_direct_message(content: &Content) -> bool {
    matches!(
        content,
        Content::Text { .. }
            | Content::Reply { group: None, .. }
            | Content::FileOffer { group: None, .. }
    )
}
