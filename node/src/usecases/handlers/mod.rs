//! One handler per content kind. Receive decrypts; the handler of the content's kind records
//! what it means (atomically with the advanced session) and answers the sender. A new kind
//! (group, file) is a new handler module and one line in [`Node::handle`].

mod group;
mod receipt;
mod text;

use peerchat_pki::Username;

use super::{Node, NodeError};
use crate::domain::{Ack, Content, IdentityKey, MessageId, PreKeyId, Session};
use crate::ports::{Clock, Directory, MessageStatus, Network, Notifier, Store};

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
    /// Hands `content` to the handler of its kind.
    pub(super) async fn handle(
        &self,
        decrypted: Decrypted<'_>,
        content: Content,
    ) -> Result<Ack, NodeError> {
        match content {
            Content::Text {
                id,
                sent_at_ms,
                body,
            } => self.handle_text(decrypted, id, sent_at_ms, body).await,
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
                self.handle_group_text(decrypted, group, version, id, sent_at_ms, body)
                    .await
            }
            Content::GroupReceipt { group, ids, read } => {
                self.handle_group_receipt(decrypted, group, ids, read).await
            }
        }
    }
}
