//! Delivery and read receipts: our messages' statuses move forward (never back), atomically
//! with the session.

use super::Decrypted;
use crate::domain::{Ack, Address, ConversationId, MessageId};
use crate::ports::{
    Batch, Clock, Direction, Directory, Event, MessageStatus, Network, Notifier, Store, Write,
};
use crate::usecases::{Node, NodeError};

impl<S: Store, D: Directory, N: Network, E: Notifier, C: Clock> Node<S, D, N, E, C> {
    /// Applies a receipt saying `ids` reached `status` at the sender.
    pub(super) async fn handle_receipt(
        &self,
        decrypted: Decrypted<'_>,
        ids: &[MessageId],
        status: MessageStatus,
    ) -> Result<Ack, NodeError> {
        let Decrypted {
            from,
            session,
            consumed,
            guard,
            ..
        } = decrypted;
        let conversation = ConversationId::from(from);
        let mut batch = Batch::new().with(Write::Session(
            Address::first(from.clone()),
            Box::new(session),
        ));
        if let Some(prekey) = consumed {
            batch.push(Write::ConsumePreKey(prekey));
        }
        // Only our own messages: a receipt cannot mark what the peer sent us.
        for id in ids {
            batch.push(Write::Status {
                conversation: conversation.clone(),
                id: *id,
                status,
                only: Some(Direction::Outgoing),
            });
        }
        let changed = self.store.commit(&batch)?.advanced;
        drop(guard);
        self.store.flush().await?;
        for id in changed {
            self.notifier.notify(Event::StatusChanged {
                peer: from.clone(),
                id,
                status,
            });
        }
        Ok(Ack::Stored)
    }
}
