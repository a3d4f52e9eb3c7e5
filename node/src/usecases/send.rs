//! Send: encrypt, persist (message + session + outbox, one atomic write, flushed), deliver.

use peerchat_pki::Username;

use super::{Node, NodeError};
use crate::domain::{Ack, Address, Envelope, GroupId, MessageId, RejectReason};
use crate::ports::{
    Batch, Clock, Direction, Directory, Event, IfStored, MessageStatus, Network, Notifier,
    OutboxEntry, Recipient, Store, StoredMessage, Write,
};

impl<S: Store, D: Directory, N: Network, E: Notifier, C: Clock> Node<S, D, N, E, C> {
    /// Sends `body` to `to` as message `id` (chosen by the client, so a retried command does not
    /// send twice). Returns once the message is stored durably as `pending`; it then goes to the
    /// peer directly and becomes `sent` on the peer's acknowledgement. A failed delivery leaves it
    /// pending in the outbox. Returns the message's status after this first attempt.
    #[tracing::instrument(name = "usecase.send", skip_all, fields(peer = %to, id = %id))]
    pub async fn send(
        &self,
        to: &Username,
        id: MessageId,
        body: String,
    ) -> Result<MessageStatus, NodeError> {
        self.send_text(to, id, body, None).await
    }

    /// [`Self::send`] of a reply to the message `reply_to` of the conversation with `to`.
    #[tracing::instrument(name = "usecase.reply", skip_all, fields(peer = %to, id = %id))]
    pub async fn reply(
        &self,
        to: &Username,
        id: MessageId,
        body: String,
        reply_to: MessageId,
    ) -> Result<MessageStatus, NodeError> {
        self.send_text(to, id, body, Some(reply_to)).await
    }

    async fn send_text(
        &self,
        to: &Username,
        id: MessageId,
        body: String,
        reply_to: Option<MessageId>,
    ) -> Result<MessageStatus, NodeError> {
        self.me()?;
        if let Some(sent) = self.store.message(&to.into(), &id)? {
            return Ok(sent.status);
        }
        self.not_blocked(to)?;
        if let Some(quoted) = reply_to
            && self.store.message(&to.into(), &quoted)?.is_none()
        {
            return Err(NodeError::NoSuchMessage(quoted));
        }
        let sent_at_ms = self.clock.now_ms();
        let stored_as = |status| StoredMessage {
            reply_to,
            ..StoredMessage::direct(
                id,
                to.clone(),
                Direction::Outgoing,
                body.clone(),
                sent_at_ms,
                status,
            )
        };
        let plaintext = stored_as(MessageStatus::Pending)
            .direct_content()
            .encode()?;
        let contact = self.contact_for(to).await?;
        let contact = match self.current_key(to, contact.clone()).await {
            Ok(contact) => contact,
            // The rendezvous is unreachable or asks us to slow down: the message is queued for
            // the pinned key (a key change is still caught before delivery, and the receiver
            // refuses a stale key).
            Err(NodeError::Directory(e)) if e.is_transient() => {
                tracing::info!(error = %e, "key check skipped for now");
                contact
            }
            Err(e) => return Err(e),
        };
        if contact.pending_key.is_some() {
            // Held until the user accepts the new key (`accept_key` sends it then).
            let held = stored_as(MessageStatus::Held);
            let mut batch = Batch::new().with(Write::Message(held, IfStored::Skip));
            batch.0.extend(self.take_up(to)?);
            self.store.commit(&batch)?;
            self.store.flush().await?;
            return Ok(MessageStatus::Held);
        }
        let envelope = {
            let _guard = self.peer_lock(to).lock_owned().await;
            let mut session = self.session_for(to).await?;
            let message = session.encrypt(&plaintext)?;
            let envelope = Envelope {
                id,
                trace: peerchat_telemetry::traceparent(),
                payload: message.encode().to_vec(),
            };
            let stored = stored_as(MessageStatus::Pending);
            let queued = OutboxEntry {
                to: Address::first(to.clone()),
                queued_at_ms: sent_at_ms,
                envelope: envelope.clone(),
                group: None,
            };
            // Writing to someone takes the conversation up (a request is accepted by a reply).
            let mut batch = Batch::outgoing(stored, IfStored::Skip, session, queued);
            batch.0.extend(self.take_up(to)?);
            self.store.commit(&batch)?;
            envelope
        };
        // Flushed outside the peer lock, so concurrent sends share one flush (group commit); the
        // next send already sees this session state, and a crash loses both or neither.
        self.store.flush().await?;
        self.deliver(to, envelope, None).await;
        if let Err(e) = self.share_profile(to).await {
            tracing::warn!(error = %e, "could not queue our profile");
        }
        Ok(self
            .store
            .message(&to.into(), &id)?
            .map_or(MessageStatus::Pending, |m| m.status))
    }

    /// Tries to deliver one envelope directly; on the peer's acknowledgement, marks it sent (in
    /// `group`'s conversation, for a group message: that member's copy). The attempt belongs to
    /// the trace the envelope was sent in, even when it is a retry.
    pub(super) async fn deliver(&self, to: &Username, envelope: Envelope, group: Option<GroupId>) {
        let span = tracing::info_span!("usecase.deliver", peer = %to, id = %envelope.id);
        peerchat_telemetry::continue_trace(&span, envelope.trace.as_deref());
        tracing::Instrument::instrument(self.deliver_in_span(to, envelope, group), span).await;
    }

    async fn deliver_in_span(&self, to: &Username, mut envelope: Envelope, group: Option<GroupId>) {
        let id = envelope.id;
        let mut outcome = self.deliver_once(to, envelope.clone(), true).await;
        if matches!(outcome, Ok(Err(_))) {
            // The cached lookup may be stale (the peer restarted elsewhere, or re-keyed).
            self.forget_addresses(to);
            if self.rekeyed(to).await {
                // Encrypted for a key the contact no longer holds: hold it, to be encrypted
                // again for the new key once the user accepts it.
                if let Err(e) = self.mark(to, &id, MessageStatus::Held, group).await {
                    tracing::warn!(error = %e, "could not hold the message");
                }
                return;
            }
            outcome = self.deliver_once(to, envelope.clone(), false).await;
        }
        let acknowledged = match outcome {
            Ok(Ok(Ack::Stored | Ack::Duplicate)) => true,
            Ok(Ok(Ack::Rejected(RejectReason::Refused))) => {
                // Final (we are not a member of the group any more, as far as they know): not
                // sent again.
                tracing::warn!("the peer refused the message for good");
                if let Err(e) = self.mark(to, &id, MessageStatus::Failed, group).await {
                    tracing::warn!(error = %e, "could not record the refusal");
                }
                if let Err(e) = self
                    .store
                    .commit(&Batch::new().with(Write::Dequeue(Address::first(to.clone()), id)))
                {
                    tracing::warn!(error = %e, "could not drop the refused message");
                }
                return;
            }
            Ok(Ok(Ack::Rejected(reason))) => {
                tracing::warn!(%reason, "the peer refused the message");
                false
            }
            Ok(Err(e)) => {
                // Not reachable directly: leave it in the rendezvous mailbox.
                tracing::info!(error = %e, "direct delivery failed; depositing in the mailbox");
                if let Some(trace) = peerchat_telemetry::traceparent() {
                    envelope.trace = Some(trace);
                }
                match self.directory.deposit(to, &id, &envelope.encode()).await {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::info!(error = %e, "the mailbox refused; the message stays pending");
                        false
                    }
                }
            }
            Err(e) => {
                tracing::info!(error = %e, "delivery not attempted; the message stays pending");
                false
            }
        };
        if acknowledged && let Err(e) = self.mark(to, &id, MessageStatus::Sent, group).await {
            tracing::warn!(error = %e, "could not record the acknowledgement");
        }
    }

    async fn deliver_once(
        &self,
        to: &Username,
        envelope: Envelope,
        use_cache: bool,
    ) -> Result<Result<Ack, crate::ports::DeliveryError>, NodeError> {
        let contact = self.contact_for(to).await?;
        let device = Address::first(to.clone());
        let now = self.clock.now_ms();
        // A recent lookup, else the addresses that worked last time (open connections are used
        // first anyway), and only then the rendezvous: known contacts reach each other without it.
        let known = || {
            self.store
                .known_addresses(&device)
                .ok()
                .filter(|a| !a.is_empty())
        };
        let remembered = use_cache
            .then(|| {
                self.cached_lookup(to, now)
                    .map(|info| info.addresses)
                    .or_else(known)
            })
            .flatten();
        let addresses = match remembered {
            Some(addresses) => addresses,
            None => self.fresh_lookup(to, now).await?.addresses,
        };
        let recipient = Recipient {
            username: to.clone(),
            identity_key: contact.identity_key,
            addresses,
        };
        let outcome = self.network.deliver(&recipient, envelope).await;
        if matches!(outcome, Ok(Ack::Stored | Ack::Duplicate))
            && !recipient.addresses.is_empty()
            && self.store.known_addresses(&device)? != recipient.addresses
        {
            // Not flushed on its own: the next flush (or sled's periodic one) keeps it.
            self.store
                .save_known_addresses(&device, &recipient.addresses)?;
        }
        Ok(outcome)
    }

    /// A lookup made less than [`super::ADDRESS_TTL_MS`] ago.
    fn cached_lookup(&self, peer: &Username, now: u64) -> Option<crate::ports::PeerInfo> {
        self.addresses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(peer)
            .filter(|(_, at)| now.saturating_sub(*at) < super::ADDRESS_TTL_MS)
            .map(|(info, _)| info.clone())
    }

    async fn fresh_lookup(
        &self,
        peer: &Username,
        now: u64,
    ) -> Result<crate::ports::PeerInfo, NodeError> {
        let info = self.directory.lookup(peer).await?;
        self.addresses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(peer.clone(), (info.clone(), now));
        Ok(info)
    }

    /// `contact`, with a key change noted if the rendezvous now certifies another key for them.
    pub(super) async fn current_key(
        &self,
        peer: &Username,
        contact: crate::ports::Contact,
    ) -> Result<crate::ports::Contact, NodeError> {
        let now = self.clock.now_ms();
        let info = match self.cached_lookup(peer, now) {
            Some(info) => info,
            None => self.fresh_lookup(peer, now).await?,
        };
        if info.identity_key != contact.identity_key {
            self.note_key_change(peer, info.identity_key).await?;
            return self
                .store
                .contact(&Address::from(peer))?
                .ok_or_else(|| NodeError::UnknownContact(peer.clone()));
        }
        Ok(contact)
    }

    /// Whether a fresh lookup shows `peer` under another key than the pinned one (noting the
    /// change if so).
    async fn rekeyed(&self, peer: &Username) -> bool {
        let Ok(Some(contact)) = self.store.contact(&Address::from(peer)) else {
            return false;
        };
        match self.current_key(peer, contact).await {
            Ok(contact) => contact.pending_key.is_some(),
            Err(_) => false,
        }
    }

    pub(super) fn forget_addresses(&self, peer: &Username) {
        self.addresses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(peer);
    }

    /// Records a status change. Not flushed here: losing it in a crash only leaves the message in
    /// the outbox, and sending it again is answered `Duplicate` by the peer, so nothing is lost
    /// and nobody is told anything that was not durable (the next flush, or sled's periodic one,
    /// makes it stick).
    pub(super) async fn mark(
        &self,
        peer: &Username,
        id: &MessageId,
        status: MessageStatus,
        group: Option<GroupId>,
    ) -> Result<(), NodeError> {
        // Reaching `sent` (or beyond, or `held`) ends the delivery attempts: also for an outbox
        // entry that is no message (a receipt, a group change).
        let mut batch = Batch::new().with(match group {
            None => Write::Status {
                conversation: peer.into(),
                id: *id,
                status,
                only: None,
            },
            Some(group) => Write::MemberStatus {
                group,
                id: *id,
                member: peer.clone(),
                status,
            },
        });
        if status != MessageStatus::Pending {
            batch.push(Write::Dequeue(Address::first(peer.clone()), *id));
        }
        // Only a move is news: receipts travel as envelopes of their own, with ids no history
        // knows, and a late acknowledgement does not undo a receipt that overtook it.
        let committed = self.store.commit(&batch)?;
        if committed.advanced.contains(id) {
            self.notifier.notify(Event::StatusChanged {
                peer: peer.clone(),
                id: *id,
                status,
            });
        }
        self.notify_members(committed.members);
        Ok(())
    }

    /// Tells the UI of moved member statuses.
    pub(super) fn notify_members(&self, moved: Vec<crate::ports::MemberMoved>) {
        for moved in moved {
            self.notifier.notify(Event::GroupStatusChanged {
                group: moved.group,
                id: moved.id,
                member: moved.member,
                status: moved.status,
                overall: moved.overall,
            });
        }
    }
}
