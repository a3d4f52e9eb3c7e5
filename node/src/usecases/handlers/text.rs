//! A text message: stored with the session, acknowledged once durable, then announced and
//! answered with a delivery receipt.

use super::Decrypted;
use crate::domain::{Ack, Address, Content, MessageId, RejectReason};
use crate::ports::{
    Batch, Clock, Contact, Directory, Event, IfStored, Network, Notifier, Store, StoredMessage,
    Write,
};
use crate::usecases::{Node, NodeError};

impl<S: Store, D: Directory, N: Network, E: Notifier, C: Clock> Node<S, D, N, E, C> {
    /// Stores a text message (or a reply). Its id inside the ciphertext must be the envelope's.
    pub(super) async fn handle_text(
        &self,
        decrypted: Decrypted<'_>,
        id: MessageId,
        sent_at_ms: u64,
        body: String,
        reply_to: Option<MessageId>,
    ) -> Result<Ack, NodeError> {
        let Decrypted {
            from,
            identity_key,
            envelope_id,
            session,
            consumed,
            new_contact,
            guard,
        } = decrypted;
        if id != envelope_id {
            return Ok(Ack::Rejected(RejectReason::Malformed));
        }
        // Someone new writing first: a request, until the user takes it up.
        let request = self.note_stranger(from)?;
        if new_contact {
            self.store.save_contact(&Contact {
                username: from.clone(),
                identity_key: *identity_key,
                verified: false,
                pending_key: None,
            })?;
        }
        let stored = StoredMessage {
            reply_to,
            ..StoredMessage::received(id, from.clone(), body, sent_at_ms)
        };
        let device = Address::first(from.clone());
        let mut batch = Batch::new()
            .with(Write::Message(stored, IfStored::ReplaceUndecryptable))
            .with(Write::Session(device, Box::new(session)));
        if let Some(prekey) = consumed {
            batch.push(Write::ConsumePreKey(prekey));
        }
        batch.0.extend(request);
        let duplicate = self.store.commit(&batch)?.duplicate;
        // The session is recorded; later messages may proceed while this one is flushed (group
        // commit). It is acknowledged only after the flush.
        drop(guard);
        self.store.flush().await?;
        Ok(match duplicate {
            true => Ack::Duplicate,
            false => {
                self.notifier.notify(Event::MessageReceived {
                    peer: from.clone(),
                    id,
                });
                // Tell the sender it is stored (encrypted, through the outbox).
                if let Err(e) = self
                    .queue_receipt(from, Content::DeliveryReceipt { ids: vec![id] })
                    .await
                {
                    tracing::warn!(error = %e, "could not queue a delivery receipt");
                }
                Ack::Stored
            }
        })
    }
}
