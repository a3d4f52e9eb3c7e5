//! Groups: create and change a group, and send to it. A change or a message goes pairwise to
//! every member over their Double Ratchet session (X3DH on first contact), so forward and
//! post-compromise secrecy hold in groups as they do between two people. All the envelopes of one
//! step are stored with the new state (or the message) in one commit and one flush; delivery then
//! fans out concurrently, with the mailbox for members who are offline.

use std::collections::BTreeMap;

use futures::{StreamExt, stream};
use peerchat_pki::Username;
use rand::rngs::OsRng;

use super::{Node, NodeError};
use crate::domain::{
    Address, Change, Content, ConversationId, Envelope, Group, GroupId, GroupState, MessageId,
    Session, SignedChange, group_status,
};
use crate::ports::{
    Batch, Clock, Direction, Directory, DirectoryError, IfStored, MessageStatus, Network, Notifier,
    OutboxEntry, Page, Store, StoredMessage, Write,
};

/// How many members' sessions are prepared, and envelopes delivered, at once.
pub const FAN_OUT: usize = 32;

/// How many times a member's preparation waits for the rendezvous's rate limit (half a second
/// each) before it counts as failed.
const RATE_LIMIT_RETRIES: usize = 120;

/// A member's session, ready to encrypt with (or why not).
enum Prepared {
    /// The stored session fits (`None`), or a new one was set up by X3DH.
    Ready(Option<Box<Session>>),
    /// The member's key changed and the user has not accepted the new one.
    Held,
    /// No session could be set up.
    Failed(NodeError),
}

impl<S: Store, D: Directory, N: Network, E: Notifier, C: Clock> Node<S, D, N, E, C> {
    /// Creates a group named `name` with `members` (and us, its first admin); returns its id
    /// once the creation is stored and queued for every member.
    #[tracing::instrument(name = "usecase.create_group", skip_all, fields(members = members.len()))]
    pub async fn create_group(
        &self,
        name: &str,
        members: &[Username],
    ) -> Result<GroupId, NodeError> {
        let me = self.me()?;
        let id = GroupId::random(&mut OsRng);
        let mut others: Vec<Username> = members.iter().filter(|m| **m != me.0).cloned().collect();
        others.sort();
        others.dedup();
        let signed = SignedChange::sign(
            &me.1,
            me.0.clone(),
            id,
            None,
            Change::Create {
                name: name.to_owned(),
                members: others,
            },
        );
        let group = Group::create(&signed, me.1.public())?;
        let plaintext = Content::GroupChange {
            base: None,
            change: Box::new(signed),
        }
        .encode()?;
        let recipients = group
            .state()
            .members
            .iter()
            .filter(|m| **m != me.0)
            .map(|m| (m.clone(), plaintext.clone()))
            .collect();
        self.fan_out(id, recipients, None, Some(group)).await?;
        Ok(id)
    }

    /// Makes `change` to `group` (we must be allowed to), sends it to everyone in the group
    /// before or after it, and returns the new state.
    #[tracing::instrument(name = "usecase.change_group", skip_all, fields(group = %group))]
    pub async fn change_group(
        &self,
        group: &GroupId,
        change: Change,
    ) -> Result<GroupState, NodeError> {
        let me = self.me()?;
        let mut current = self
            .store
            .group(group)?
            .ok_or(NodeError::UnknownGroup(*group))?;
        let before = current.state().clone();
        if !before.members.contains(&me.0) {
            return Err(NodeError::NotMember(*group));
        }
        if let Change::Add(users) | Change::Remove(users) = &change
            && users.contains(&me.0)
        {
            return Err(NodeError::OwnAccount(me.0.clone()));
        }
        let signed = SignedChange::sign(&me.1, me.0.clone(), *group, Some(&before), change);
        current.apply(&signed, me.1.public())?;
        let after = current.state().clone();
        let same = Content::GroupChange {
            base: None,
            change: Box::new(signed.clone()),
        }
        .encode()?;
        // A member it adds has no state to apply it to: it gets the one the change was made on.
        let with_base = Content::GroupChange {
            base: Some(before.clone()),
            change: Box::new(signed),
        }
        .encode()?;
        let recipients = before
            .members
            .union(&after.members)
            .filter(|m| **m != me.0)
            .map(|m| {
                let plaintext = match before.members.contains(m) {
                    true => same.clone(),
                    false => with_base.clone(),
                };
                (m.clone(), plaintext)
            })
            .collect();
        self.fan_out(*group, recipients, None, Some(current))
            .await?;
        Ok(after)
    }

    /// Sends `body` to every other member of `group` as message `id` (chosen by the client, so
    /// a retried command does not send twice). Returns the message's status after the first
    /// delivery attempts.
    #[tracing::instrument(name = "usecase.send_group", skip_all, fields(group = %group, id = %id))]
    pub async fn send_group(
        &self,
        group: &GroupId,
        id: MessageId,
        body: String,
    ) -> Result<MessageStatus, NodeError> {
        let me = self.me()?;
        let conversation = ConversationId::Group(*group);
        if let Some(sent) = self.store.message(&conversation, &id)? {
            return Ok(sent.status);
        }
        let state = self.group(group)?;
        if !state.members.contains(&me.0) {
            return Err(NodeError::NotMember(*group));
        }
        let sent_at_ms = self.clock.now_ms();
        let plaintext = Content::GroupText {
            group: *group,
            version: state.version,
            id,
            sent_at_ms,
            body: body.clone(),
        }
        .encode()?;
        let recipients: Vec<(Username, Vec<u8>)> = state
            .members
            .iter()
            .filter(|m| **m != me.0)
            .map(|m| (m.clone(), plaintext.clone()))
            .collect();
        let message = StoredMessage {
            receipts: recipients
                .iter()
                .map(|(m, _)| (m.clone(), MessageStatus::Pending))
                .collect(),
            group: Some(*group),
            ..StoredMessage::direct(
                id,
                me.0.clone(),
                Direction::Outgoing,
                body,
                sent_at_ms,
                MessageStatus::Pending,
            )
        };
        self.fan_out(*group, recipients, Some(message), None)
            .await?;
        Ok(self
            .store
            .message(&conversation, &id)?
            .map_or(MessageStatus::Pending, |m| m.status))
    }

    /// Encrypts each recipient's plaintext over their session, stores the envelopes with
    /// `message` (a group message, its envelopes carrying its id) or `state` (a change, all or
    /// none: a member who cannot be reached fails the change) in one commit and one flush, then
    /// delivers them concurrently.
    async fn fan_out(
        &self,
        group: GroupId,
        recipients: Vec<(Username, Vec<u8>)>,
        mut message: Option<StoredMessage>,
        state: Option<Group>,
    ) -> Result<(), NodeError> {
        // Contacts and first sessions (lookups, X3DH bundles) without holding any lock.
        let prepared: BTreeMap<Username, (Vec<u8>, Prepared)> = stream::iter(recipients)
            .map(|(to, plaintext)| async move {
                let prepared = self.prepare(&to).await;
                (to, (plaintext, prepared))
            })
            .buffer_unordered(FAN_OUT)
            .collect()
            .await;
        if message.is_none()
            && let Some((who, (_, Prepared::Failed(why)))) = prepared
                .iter()
                .find(|(_, (_, p))| matches!(p, Prepared::Failed(_)))
        {
            return Err(NodeError::MemberUnreachable {
                who: who.clone(),
                why: why.to_string(),
            });
        }
        let envelope_id = message
            .as_ref()
            .map_or_else(|| MessageId::random(&mut OsRng), |m| m.id);
        let now = self.clock.now_ms();
        let mut batch = Batch::new();
        let mut envelopes = Vec::with_capacity(prepared.len());
        let mut statuses = BTreeMap::new();
        let changed = {
            // Every recipient's lock, in name order (no other path holds two at once), so no
            // session moves between reading it and committing it.
            let mut guards = Vec::with_capacity(prepared.len());
            for to in prepared.keys() {
                guards.push(self.peer_lock(to).lock_owned().await);
            }
            for (to, (plaintext, prepared)) in prepared {
                let fresh = match prepared {
                    Prepared::Ready(fresh) => fresh,
                    Prepared::Held => {
                        statuses.insert(to, MessageStatus::Held);
                        continue;
                    }
                    Prepared::Failed(e) => {
                        tracing::warn!(peer = %to, error = %e, "no session with a group member");
                        statuses.insert(to, MessageStatus::Failed);
                        continue;
                    }
                };
                let device = Address::first(to.clone());
                // The stored session, unless a new one was set up for another key.
                let stored = self.store.session(&device)?.filter(|s| {
                    fresh
                        .as_ref()
                        .is_none_or(|f| s.remote_identity() == f.remote_identity())
                });
                let Some(mut session) = stored.or(fresh.map(|s| *s)) else {
                    statuses.insert(to, MessageStatus::Failed);
                    continue;
                };
                let sealed = session.encrypt(&plaintext)?;
                let envelope = Envelope {
                    id: envelope_id,
                    trace: peerchat_telemetry::traceparent(),
                    payload: sealed.encode().to_vec(),
                };
                batch.push(Write::Session(device.clone(), Box::new(session)));
                batch.push(Write::Enqueue(OutboxEntry {
                    to: device,
                    queued_at_ms: now,
                    envelope: envelope.clone(),
                    group: Some(group),
                }));
                envelopes.push((to, envelope));
            }
            if let Some(message) = message.as_mut() {
                message.receipts.extend(statuses);
                message.status = group_status(message.receipts.values());
                batch.push(Write::Message(message.clone(), IfStored::Skip));
            }
            let changed = state.is_some();
            if let Some(state) = state {
                batch.push(Write::Group(Box::new(state)));
            }
            if self.store.commit(&batch)?.duplicate {
                // The same message id was sent meanwhile: that send delivers it.
                return Ok(());
            }
            changed
        };
        // One flush for the whole group, outside the locks (group commit with other sends).
        self.store.flush().await?;
        if changed {
            self.notifier
                .notify(crate::ports::Event::GroupChanged { group });
        }
        stream::iter(envelopes)
            .for_each_concurrent(FAN_OUT, |(to, envelope)| async move {
                self.deliver(&to, envelope, Some(group)).await;
            })
            .await;
        Ok(())
    }

    /// [`Self::prepare_once`], waited for while the rendezvous asks us to slow down (setting up a
    /// large group takes a lookup and a bundle per member).
    async fn prepare(&self, to: &Username) -> Prepared {
        for _ in 0..RATE_LIMIT_RETRIES {
            match self.prepare_once(to).await {
                Prepared::Failed(NodeError::Directory(DirectoryError::RateLimited)) => {
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
                prepared => return prepared,
            }
        }
        self.prepare_once(to).await
    }

    /// The contact and, if no stored session fits their key, a new session (X3DH).
    async fn prepare_once(&self, to: &Username) -> Prepared {
        let contact = match self.contact_for(to).await {
            Ok(contact) => contact,
            Err(e) => return Prepared::Failed(e),
        };
        if contact.pending_key.is_some() {
            return Prepared::Held;
        }
        match self.store.session(&Address::first(to.clone())) {
            Ok(Some(session)) if *session.remote_identity() == contact.identity_key => {
                return Prepared::Ready(None);
            }
            Ok(_) => {}
            Err(e) => return Prepared::Failed(e.into()),
        }
        match self.session_for(to).await {
            Ok(session) => Prepared::Ready(Some(Box::new(session))),
            Err(NodeError::KeyChanged(_)) => Prepared::Held,
            Err(e) => Prepared::Failed(e),
        }
    }

    /// Every group this node knows, by name (also those we left or were removed from).
    #[tracing::instrument(name = "usecase.groups", skip_all)]
    pub fn groups(&self) -> Result<Vec<GroupState>, NodeError> {
        let mut groups: Vec<GroupState> = self
            .store
            .groups()?
            .into_iter()
            .map(|g| g.state().clone())
            .collect();
        groups.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        Ok(groups)
    }

    /// One group's current state.
    #[tracing::instrument(name = "usecase.group", skip_all, fields(group = %group))]
    pub fn group(&self, group: &GroupId) -> Result<GroupState, NodeError> {
        Ok(self
            .store
            .group(group)?
            .ok_or(NodeError::UnknownGroup(*group))?
            .state()
            .clone())
    }

    /// A page of the group's conversation, oldest first.
    #[tracing::instrument(name = "usecase.group_history", skip_all, fields(group = %group))]
    pub fn group_history(
        &self,
        group: &GroupId,
        page: Page,
    ) -> Result<Vec<StoredMessage>, NodeError> {
        self.group(group)?;
        Ok(self.store.history(&ConversationId::Group(*group), page)?)
    }

    /// Marks the group's conversation read and, if read receipts are on, tells each author.
    #[tracing::instrument(name = "usecase.mark_group_read", skip_all, fields(group = %group))]
    pub async fn mark_group_read(&self, group: &GroupId) -> Result<(), NodeError> {
        self.group(group)?;
        let conversation = ConversationId::Group(*group);
        let unread: Vec<StoredMessage> = self
            .store
            .history(&conversation, Page::ALL)?
            .into_iter()
            .filter(|m| m.direction == Direction::Incoming && m.status == MessageStatus::Received)
            .collect();
        if unread.is_empty() {
            return Ok(());
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
        if !self.read_receipts {
            return Ok(());
        }
        let mut by_author: BTreeMap<Username, Vec<MessageId>> = BTreeMap::new();
        for m in unread.into_iter().filter(|m| read.contains(&m.id)) {
            by_author.entry(m.peer).or_default().push(m.id);
        }
        for (author, ids) in by_author {
            for ids in ids.chunks(crate::domain::content::MAX_RECEIPT_IDS) {
                self.queue_receipt(
                    &author,
                    Content::GroupReceipt {
                        group: *group,
                        ids: ids.to_vec(),
                        read: true,
                    },
                )
                .await?;
            }
        }
        Ok(())
    }
}
