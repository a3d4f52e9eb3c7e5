//! Receive: reject duplicates, check the sender's key, decrypt, then hand the content to the
//! handler of its kind ([`super::handlers`]), which persists it with the session atomically and
//! flushed before the acknowledgement.

use peerchat_pki::Username;
use rand::rngs::OsRng;

use super::handlers::Decrypted;
use super::{Node, NodeError};
use crate::domain::{
    Ack, Address, Content, ConversationId, Envelope, IdentityKey, Message, RejectReason, Session,
};
use crate::ports::{
    Batch, Clock, Direction, Directory, Event, HeldInbound, IfStored, MessageStatus, Network,
    Notifier, Page, Store, StoredMessage, Write,
};

impl<S: Store, D: Directory, N: Network, E: Notifier, C: Clock> Node<S, D, N, E, C> {
    /// Handles an envelope from `from`, whose identity key the transport (or the mailbox's record
    /// of the depositor's certificate) authenticated. Returns the acknowledgement for the peer.
    #[tracing::instrument(name = "usecase.receive", skip_all, fields(peer = %from, id = %envelope.id))]
    pub async fn receive(
        &self,
        from: &Username,
        identity_key: &IdentityKey,
        envelope: Envelope,
    ) -> Ack {
        let order = self.inbound_order(from).lock_owned().await;
        self.receive_in_order(from, identity_key, envelope, Some(order))
            .await
    }

    /// [`Self::receive`], its place in `from`'s order taken: with `order`, that lock's guard (let
    /// go once the envelope's place is decided); without, the caller holds it.
    async fn receive_in_order(
        &self,
        from: &Username,
        identity_key: &IdentityKey,
        envelope: Envelope,
        order: Option<tokio::sync::OwnedMutexGuard<()>>,
    ) -> Ack {
        match self.try_receive(from, identity_key, envelope, order).await {
            Ok(ack) => ack,
            Err(e) => {
                tracing::warn!(error = %e, "could not store a received message");
                Ack::Rejected(RejectReason::Internal)
            }
        }
    }

    async fn try_receive(
        &self,
        from: &Username,
        identity_key: &IdentityKey,
        envelope: Envelope,
        order: Option<tokio::sync::OwnedMutexGuard<()>>,
    ) -> Result<Ack, NodeError> {
        let me = self.me()?;
        if self.already_stored(from, &envelope.id)? {
            return Ok(Ack::Duplicate);
        }
        let Ok(message) = Message::decode(&envelope.payload) else {
            return Ok(Ack::Rejected(RejectReason::Malformed));
        };
        // The X3DH identity inside must be the one the connection authenticated.
        if message
            .prekey()
            .is_some_and(|p| p.identity != *identity_key)
        {
            return self.undecryptable(from, &envelope).await;
        }
        let contact = self.store.contact(&Address::from(from))?;
        if contact
            .as_ref()
            .is_some_and(|c| c.identity_key != *identity_key)
        {
            // A new key for a known contact: not decrypted until the user accepts it, but kept
            // here (acknowledged, so the sender and the mailbox are done with it) and taken
            // after `accept-key`. Past the bound it stays with the sender.
            self.note_key_change(from, *identity_key).await?;
            let held = HeldInbound {
                from: from.clone(),
                identity_key: *identity_key,
                envelope,
            };
            if !self.store.hold_inbound(&held)? {
                return Ok(Ack::Rejected(RejectReason::Busy));
            }
            self.store.flush().await?;
            return Ok(Ack::Stored);
        }

        let guard = self.peer_lock(from).lock_owned().await;
        // Its place is taken: what arrives after it from `from` is committed after it.
        drop(order);
        if self.already_stored(from, &envelope.id)? {
            return Ok(Ack::Duplicate);
        }
        let existing = self
            .store
            .session(&Address::first(from.clone()))?
            .filter(|s| s.belongs_to(&message));
        let (session, plaintext, consumed) = match existing {
            Some(mut session) => match session.decrypt(&message, &mut OsRng) {
                Ok(plaintext) => (session, plaintext, None),
                // Already decrypted once (a replayed receipt, say): nothing to do again.
                Err(crate::domain::DecryptError::Duplicate) => return Ok(Ack::Duplicate),
                Err(_) => {
                    drop(guard);
                    return self.undecryptable(from, &envelope).await;
                }
            },
            None => {
                let signed = match message.prekey() {
                    Some(header) => self
                        .store
                        .signed_prekey(header.signed_prekey_id)?
                        .map(|signed| (header, signed)),
                    None => None,
                };
                let Some((header, signed)) = signed else {
                    drop(guard);
                    return self.undecryptable(from, &envelope).await;
                };
                let one_time = match header.one_time_prekey_id {
                    Some(id) => self.store.one_time_prekey(id)?,
                    None => None,
                };
                match Session::respond(&me.1, &signed, one_time.as_ref(), &message, &mut OsRng) {
                    Ok(r) => (r.session, r.plaintext, r.consumed_one_time_prekey),
                    Err(_) => {
                        drop(guard);
                        return self.undecryptable(from, &envelope).await;
                    }
                }
            }
        };
        let Ok(content) = Content::decode(&plaintext) else {
            return Ok(Ack::Rejected(RejectReason::Malformed));
        };
        let decrypted = Decrypted {
            from,
            identity_key,
            envelope_id: envelope.id,
            session,
            consumed,
            new_contact: contact.is_none(),
            guard,
        };
        self.handle(decrypted, content).await
    }

    /// Whether a message with this id from `from` is stored already (one that could not be
    /// decrypted does not count: a later copy may).
    fn already_stored(
        &self,
        from: &Username,
        id: &crate::domain::MessageId,
    ) -> Result<bool, NodeError> {
        Ok(self
            .store
            .message(&from.into(), id)?
            .is_some_and(|m| m.status != MessageStatus::Undecryptable))
    }

    /// Keeps a trace of an envelope that could not be decrypted: it shows in the conversation as
    /// undecryptable (never dropped silently), and the sender is told.
    async fn undecryptable(&self, from: &Username, envelope: &Envelope) -> Result<Ack, NodeError> {
        tracing::warn!(peer = %from, id = %envelope.id, "a message could not be decrypted");
        let stored = StoredMessage::direct(
            envelope.id,
            from.clone(),
            Direction::Incoming,
            String::new(),
            self.clock.now_ms(),
            MessageStatus::Undecryptable,
        );
        let batch = Batch::new().with(Write::Message(stored, IfStored::Skip));
        if !self.store.commit(&batch)?.duplicate {
            self.store.flush().await?;
            self.notifier.notify(Event::MessageReceived {
                peer: from.clone(),
                id: envelope.id,
            });
        }
        Ok(Ack::Rejected(RejectReason::Undecryptable))
    }

    /// Takes the envelopes held from `peer`'s new key now that it is the pinned key, in the
    /// order they arrived; envelopes from any other key stay held. The caller holds `peer`'s
    /// inbound order lock, so nothing arriving meanwhile overtakes them.
    pub(super) async fn take_held_inbound(&self, peer: &Username) -> Result<(), NodeError> {
        let Some(contact) = self.store.contact(&Address::from(peer))? else {
            return Ok(());
        };
        for held in self.store.held_inbound(peer)? {
            if held.identity_key != contact.identity_key {
                continue;
            }
            let id = held.envelope.id;
            match self
                .receive_in_order(&held.from, &held.identity_key, held.envelope, None)
                .await
            {
                // Could not be stored now: it stays held and is tried at the next accept.
                Ack::Rejected(RejectReason::Busy | RejectReason::Internal) => {}
                _ => self.store.release_inbound(peer, &id)?,
            }
        }
        self.store.flush().await?;
        Ok(())
    }

    /// Encrypts a receipt for `peer` and queues it in the outbox (delivered by the next outbox
    /// run, which this wakes).
    pub(super) async fn queue_receipt(
        &self,
        peer: &Username,
        content: Content,
    ) -> Result<(), NodeError> {
        self.queue_with(peer, content, Vec::new()).await
    }

    /// Marks every received message of `conversation` read (durably); returns those that were
    /// not read before.
    pub(super) async fn read_all(
        &self,
        conversation: &ConversationId,
    ) -> Result<Vec<StoredMessage>, NodeError> {
        let unread: Vec<StoredMessage> = self
            .store
            .history(conversation, Page::ALL)?
            .into_iter()
            .filter(|m| m.direction == Direction::Incoming && m.status == MessageStatus::Received)
            .collect();
        if unread.is_empty() {
            return Ok(unread);
        }
        let batch = Batch(
            unread
                .iter()
                .map(|m| Write::Status {
                    conversation: conversation.clone(),
                    id: m.id,
                    status: MessageStatus::Read,
                    only: Some(Direction::Incoming),
                })
                .collect(),
        );
        let read = self.store.commit(&batch)?.advanced;
        self.store.flush().await?;
        Ok(unread
            .into_iter()
            .filter(|m| read.contains(&m.id))
            .collect())
    }

    /// Marks the conversation with `peer` read and, if read receipts are on, tells them.
    #[tracing::instrument(name = "usecase.mark_read", skip_all, fields(peer = %peer))]
    pub async fn mark_read(&self, peer: &Username) -> Result<(), NodeError> {
        self.me()?;
        if self.unread(peer)? == 0 {
            return Ok(());
        }
        let unread: Vec<_> = self
            .read_all(&ConversationId::from(peer))
            .await?
            .into_iter()
            .map(|m| m.id)
            .collect();
        if self.settings()?.read_receipts
            && self.standing(peer)? == crate::domain::Standing::Accepted
        {
            for ids in unread.chunks(crate::domain::content::MAX_RECEIPT_IDS) {
                self.queue_receipt(peer, Content::ReadReceipt { ids: ids.to_vec() })
                    .await?;
            }
        }
        Ok(())
    }
}
