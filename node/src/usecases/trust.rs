//! Key trust: a contact's identity key is pinned on first contact; a different key later is a
//! visible event, messages to the contact are held until the user accepts the new key, and
//! safety numbers let people check the keys they see.

use peerchat_pki::Username;
use rand::rngs::OsRng;

use super::{Node, NodeError};
use crate::domain::{Address, Envelope, IdentityKey, SafetyNumber, Session};
use crate::ports::{
    Batch, Clock, Contact, Directory, Event, IfStored, MessageStatus, Network, Notifier,
    OutboxEntry, Page, Store, StoredMessage,
};

/// Whose key a safety number is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyKind {
    /// The contact's pinned key.
    Pinned,
    /// A new key the contact presents, not accepted yet.
    Pending,
    /// The key the CA certifies for someone who is not a contact yet.
    Certified,
}

/// The safety number to compare now, and what it is of.
#[derive(Debug, Clone)]
pub struct SafetyNumbers {
    /// The number to compare.
    pub shown: SafetyNumber,
    /// Whose key it is made of.
    pub of: KeyKind,
    /// With a pending key: the pinned key's number, for reference.
    pub pinned: Option<SafetyNumber>,
}

impl<S: Store, D: Directory, N: Network, E: Notifier, C: Clock> Node<S, D, N, E, C> {
    /// Records that contact `peer` now presents `new_key` (once), and tells the UI. The contact
    /// is read afresh here, not taken from the caller: a copy read before an await may predate
    /// an accepted key, and writing it back would undo the acceptance.
    pub(super) async fn note_key_change(
        &self,
        peer: &Username,
        new_key: IdentityKey,
    ) -> Result<(), NodeError> {
        let Some(mut contact) = self.store.contact(&Address::from(peer))? else {
            return Ok(());
        };
        if contact.identity_key == new_key || contact.pending_key == Some(new_key) {
            return Ok(());
        }
        tracing::warn!(peer = %contact.username, "a contact's identity key changed");
        contact.pending_key = Some(new_key);
        self.store.save_contact(&contact)?;
        self.store.flush().await?;
        self.notifier.notify(Event::KeyChanged {
            peer: contact.username,
        });
        Ok(())
    }

    /// Accepts `peer`'s new identity key: it becomes the pinned key (unverified), the old
    /// session is abandoned, and the messages held for them are encrypted and sent.
    #[tracing::instrument(name = "usecase.accept_key", skip_all, fields(peer = %peer))]
    pub async fn accept_key(&self, peer: &Username) -> Result<(), NodeError> {
        self.me()?;
        // Until the held envelopes are taken, nothing else from `peer` is (see `inbound_order`).
        let order = self.inbound_order(peer).lock_owned().await;
        let mut contact = self
            .store
            .contact(&Address::from(peer))?
            .ok_or_else(|| NodeError::UnknownContact(peer.clone()))?;
        let Some(new_key) = contact.pending_key.take() else {
            return Err(NodeError::NoKeyChange(peer.clone()));
        };
        contact.identity_key = new_key;
        contact.verified = false;
        self.store.save_contact(&contact)?;
        self.store.flush().await?;
        self.forget_addresses(peer);
        // Their mail first: its initial message makes the session ours then continue.
        self.take_held_inbound(peer).await?;
        drop(order);
        self.release_held(peer).await
    }

    /// Encrypts and sends the messages held for `peer`.
    async fn release_held(&self, peer: &Username) -> Result<(), NodeError> {
        let held: Vec<_> = self
            .store
            .history(&peer.into(), Page::ALL)?
            .into_iter()
            .filter(|m| m.status == MessageStatus::Held)
            .collect();
        self.resend(peer, held).await
    }

    /// Sends a `failed` message again (the user asked to), as a new encryption of the same
    /// message id; the receiver drops it if the first attempt did arrive after all.
    #[tracing::instrument(name = "usecase.retry", skip_all, fields(peer = %peer, id = %id))]
    pub async fn retry(
        &self,
        peer: &Username,
        id: &crate::domain::MessageId,
    ) -> Result<(), NodeError> {
        self.me()?;
        let message = self
            .store
            .message(&peer.into(), id)?
            .filter(|m| m.status == MessageStatus::Failed)
            .ok_or(NodeError::NotRetryable)?;
        self.resend(peer, vec![message]).await
    }

    /// Encrypts `messages` anew and sends them (status back to pending, then onwards).
    async fn resend(
        &self,
        peer: &Username,
        messages: Vec<crate::ports::StoredMessage>,
    ) -> Result<(), NodeError> {
        for message in messages {
            let content = message.direct_content().encode()?;
            let envelope = {
                let _guard = self.peer_lock(peer).lock_owned().await;
                let mut session = self.session_for(peer).await?;
                let encrypted = session.encrypt(&content)?;
                let envelope = Envelope {
                    id: message.id,
                    trace: peerchat_telemetry::traceparent(),
                    payload: encrypted.encode().to_vec(),
                };
                let released = StoredMessage {
                    status: MessageStatus::Pending,
                    ..message
                };
                let queued = OutboxEntry {
                    to: Address::first(peer.clone()),
                    queued_at_ms: self.clock.now_ms(),
                    envelope: envelope.clone(),
                    group: None,
                };
                self.store.commit(&Batch::outgoing(
                    released,
                    IfStored::Replace,
                    session,
                    queued,
                ))?;
                envelope
            };
            self.store.flush().await?;
            self.deliver(peer, envelope, None).await;
        }
        Ok(())
    }

    /// The session with `peer` for sending: the stored one if it was made with the pinned key,
    /// else a new one from a fresh bundle (which must carry the pinned key).
    pub(super) async fn session_for(&self, peer: &Username) -> Result<Session, NodeError> {
        let me = self.me()?;
        let contact = self
            .store
            .contact(&Address::from(peer))?
            .ok_or_else(|| NodeError::UnknownContact(peer.clone()))?;
        if let Some(session) = self.store.session(&Address::first(peer.clone()))?
            && *session.remote_identity() == contact.identity_key
        {
            return Ok(session);
        }
        let bundle = self.directory.bundle(peer).await?;
        if bundle.identity != contact.identity_key {
            self.note_key_change(peer, bundle.identity).await?;
            return Err(NodeError::KeyChanged(peer.clone()));
        }
        Ok(Session::initiate(&me.1, &bundle, &mut OsRng)?)
    }

    /// The safety number to compare with `peer` now: of the new key while one is pending (with
    /// the pinned key's beside it), of the pinned key for a contact, and of the key the CA
    /// certifies for someone who is not a contact yet (a lookup), so it can be compared before
    /// the first message.
    #[tracing::instrument(name = "usecase.safety_number", skip_all, fields(peer = %peer))]
    pub async fn safety_number(&self, peer: &Username) -> Result<SafetyNumbers, NodeError> {
        let me = self.me()?;
        let number =
            |key: &IdentityKey| SafetyNumber::new(me.0.as_str(), me.1.public(), peer.as_str(), key);
        Ok(match self.store.contact(&Address::from(peer))? {
            Some(Contact {
                identity_key,
                pending_key: Some(new_key),
                ..
            }) => SafetyNumbers {
                shown: number(&new_key),
                of: KeyKind::Pending,
                pinned: Some(number(&identity_key)),
            },
            Some(contact) => SafetyNumbers {
                shown: number(&contact.identity_key),
                of: KeyKind::Pinned,
                pinned: None,
            },
            None if peer == &me.0 => return Err(NodeError::OwnAccount(peer.clone())),
            None => SafetyNumbers {
                shown: number(
                    &self
                        .directory
                        .lookup(peer)
                        .await
                        .map_err(|e| e.naming(peer))?
                        .identity_key,
                ),
                of: KeyKind::Certified,
                pinned: None,
            },
        })
    }

    /// Marks `peer` verified when `number` is the safety number both sides see. When `peer`
    /// has a new key pending and `number` is that key's, the key is accepted (held messages both
    /// ways go out) and verified in one step.
    #[tracing::instrument(name = "usecase.verify", skip_all, fields(peer = %peer))]
    pub async fn verify(&self, peer: &Username, number: &str) -> Result<(), NodeError> {
        let numbers = self.safety_number(peer).await?;
        if numbers.of == KeyKind::Certified {
            return Err(NodeError::UnknownContact(peer.clone()));
        }
        if !numbers.shown.matches_digits(number) {
            return Err(NodeError::SafetyNumberMismatch);
        }
        if numbers.of == KeyKind::Pending {
            self.accept_key(peer).await?;
        }
        // A key change noted meanwhile is not written over.
        let _order = self.inbound_order(peer).lock_owned().await;
        let mut contact = self
            .store
            .contact(&Address::from(peer))?
            .ok_or_else(|| NodeError::UnknownContact(peer.clone()))?;
        contact.verified = true;
        self.store.save_contact(&contact)?;
        self.store.flush().await?;
        Ok(())
    }
}
