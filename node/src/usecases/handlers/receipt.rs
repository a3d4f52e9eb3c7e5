//! Delivery and read receipts: our messages' statuses move forward (never back), atomically
//! with the session.

use super::Decrypted;
use crate::domain::{Ack, MessageId};
use crate::ports::{Clock, Directory, Event, MessageStatus, Network, Notifier, Store};
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
        let changed = self
            .store
            .record_receipt(from, &session, consumed, ids, status)?;
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
