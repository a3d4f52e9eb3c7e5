//! Edits, deletes for everyone and reactions: checked against the rules, applied to our copy
//! and sent through the ratchet to the other side (or every member of a group), in one commit.

use peerchat_pki::Username;
use rand::rngs::OsRng;

use super::{Node, NodeError};
use crate::domain::{Address, Amendment, Content, ConversationId, Envelope, GroupRef, MessageId};
use crate::ports::{Batch, Clock, Directory, Event, Network, Notifier, OutboxEntry, Store, Write};

impl<S: Store, D: Directory, N: Network, E: Notifier, C: Clock> Node<S, D, N, E, C> {
    /// Edits, deletes or reacts to the message `target` of `conversation`. Edits and deletes are
    /// for our own messages within 24 hours; a reaction replaces ours (`None` removes it).
    /// Returns once our copy is changed and the amendment is queued for the others, durably.
    #[tracing::instrument(name = "usecase.amend", skip_all, fields(id = %target))]
    pub async fn amend(
        &self,
        conversation: &ConversationId,
        target: MessageId,
        amendment: Amendment,
    ) -> Result<(), NodeError> {
        let me = self.me()?.0.clone();
        let message = self
            .store
            .message(conversation, &target)?
            .ok_or(NodeError::NoSuchMessage(target))?;
        let at_ms = self.clock.now_ms();
        message.may_amend(&me, &me, &amendment, at_ms)?;
        let ours = Write::Amend {
            conversation: conversation.clone(),
            id: target,
            by: me.clone(),
            at_ms,
            amendment: amendment.clone(),
        };
        match conversation {
            ConversationId::Direct(peer) => {
                let content = Content::Amend {
                    group: None,
                    target,
                    at_ms,
                    amendment,
                };
                self.queue_with(peer, content, vec![ours]).await?;
            }
            ConversationId::Group(group) => {
                let state = self.group(group)?;
                if !state.members.contains(&me) {
                    return Err(NodeError::NotMember(*group));
                }
                let plaintext = Content::Amend {
                    group: Some(GroupRef {
                        group: *group,
                        version: state.version,
                    }),
                    target,
                    at_ms,
                    amendment,
                }
                .encode()?;
                let recipients = state
                    .members
                    .iter()
                    .filter(|m| **m != me)
                    .map(|m| (m.clone(), plaintext.clone()))
                    .collect();
                self.fan_out(*group, recipients, None, None, vec![ours])
                    .await?;
            }
        }
        self.notifier.notify(Event::MessageChanged {
            peer: conversation.peer().cloned(),
            group: conversation.group(),
            id: target,
        });
        Ok(())
    }

    /// Encrypts `content` for `peer` and queues it in the outbox with `writes`, in one commit,
    /// flushed (the next outbox run, which this wakes, delivers it). Without a session with
    /// `peer` there is no one to tell: only `writes` are made.
    pub(super) async fn queue_with(
        &self,
        peer: &Username,
        content: Content,
        writes: Vec<Write>,
    ) -> Result<(), NodeError> {
        let plaintext = content.encode()?;
        {
            let _guard = self.peer_lock(peer).lock_owned().await;
            let device = Address::first(peer.clone());
            let mut batch = Batch(writes);
            if let Some(mut session) = self.store.session(&device)? {
                let message = session.encrypt(&plaintext)?;
                let envelope = Envelope {
                    id: MessageId::random(&mut OsRng),
                    trace: peerchat_telemetry::traceparent(),
                    payload: message.encode().to_vec(),
                };
                batch.push(Write::Session(device.clone(), Box::new(session)));
                batch.push(Write::Enqueue(OutboxEntry {
                    to: device,
                    queued_at_ms: self.clock.now_ms(),
                    envelope,
                    group: None,
                }));
            }
            self.store.commit(&batch)?;
        }
        self.store.flush().await?;
        self.outbox_signal.notify_one();
        Ok(())
    }
}
