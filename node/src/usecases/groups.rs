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
    /// The session to encrypt with: the stored one, or a new one set up by X3DH.
    Ready(Box<Session>),
    /// No contact or no session yet: to be set up (first contact).
    Missing,
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
        self.fan_out(id, recipients, None, Some(group), Vec::new())
            .await?;
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
        self.fan_out(*group, recipients, None, Some(current), Vec::new())
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
        self.send_group_text(group, id, body, None).await
    }

    /// [`Self::send_group`] of a reply to the group's message `reply_to`.
    #[tracing::instrument(name = "usecase.reply_group", skip_all, fields(group = %group, id = %id))]
    pub async fn reply_group(
        &self,
        group: &GroupId,
        id: MessageId,
        body: String,
        reply_to: MessageId,
    ) -> Result<MessageStatus, NodeError> {
        self.send_group_text(group, id, body, Some(reply_to)).await
    }

    async fn send_group_text(
        &self,
        group: &GroupId,
        id: MessageId,
        body: String,
        reply_to: Option<MessageId>,
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
        if let Some(quoted) = reply_to
            && self.store.message(&conversation, &quoted)?.is_none()
        {
            return Err(NodeError::NoSuchMessage(quoted));
        }
        let sent_at_ms = self.clock.now_ms();
        let plaintext = match reply_to {
            None => Content::GroupText {
                group: *group,
                version: state.version,
                id,
                sent_at_ms,
                body: body.clone(),
            },
            Some(reply_to) => Content::Reply {
                group: Some(crate::domain::GroupRef {
                    group: *group,
                    version: state.version,
                }),
                id,
                sent_at_ms,
                body: body.clone(),
                reply_to,
            },
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
            reply_to,
            ..StoredMessage::direct(
                id,
                me.0.clone(),
                Direction::Outgoing,
                body,
                sent_at_ms,
                MessageStatus::Pending,
            )
        };
        self.fan_out(*group, recipients, Some(message), None, Vec::new())
            .await?;
        Ok(self
            .store
            .message(&conversation, &id)?
            .map_or(MessageStatus::Pending, |m| m.status))
    }

    /// Encrypts each recipient's plaintext over their session, stores the envelopes with
    /// `message` (a group message, its envelopes carrying its id) or `state` (a change, all or
    /// none: a member who cannot be reached fails the change), and `writes`, in one commit and
    /// one flush, then delivers them concurrently.
    ///
    /// Every recipient's lock is taken (in name order: no other path holds two at once) and each
    /// session read once under it. Members without a session yet (first contact) are set up by
    /// X3DH outside the locks, then the locks are taken again.
    pub(super) async fn fan_out(
        &self,
        group: GroupId,
        recipients: Vec<(Username, Vec<u8>)>,
        mut message: Option<StoredMessage>,
        state: Option<Group>,
        writes: Vec<Write>,
    ) -> Result<(), NodeError> {
        let all_or_none = state.is_some();
        let envelope_id = message
            .as_ref()
            .map_or_else(|| MessageId::random(&mut OsRng), |m| m.id);
        let recipients: BTreeMap<Username, Vec<u8>> = recipients.into_iter().collect();
        let mut set_up: BTreeMap<Username, Prepared> = BTreeMap::new();
        let mut statuses = BTreeMap::new();
        let mut envelopes = Vec::with_capacity(recipients.len());
        let mut batch = Batch(writes);
        // Held from reading the sessions until their advanced states are committed.
        let mut guards = Vec::with_capacity(recipients.len());
        for attempt in 0..2 {
            for to in recipients.keys() {
                guards.push(self.peer_lock(to).lock_owned().await);
            }
            let mut ready = Vec::with_capacity(recipients.len());
            let mut missing = Vec::new();
            for to in recipients.keys() {
                // What the store holds now wins over a session set up outside the locks.
                let now = match self.ready_now(to)? {
                    Prepared::Missing => set_up.remove(to).unwrap_or(Prepared::Missing),
                    known => known,
                };
                match now {
                    Prepared::Missing if attempt == 0 => missing.push(to.clone()),
                    Prepared::Missing => {
                        statuses.insert(to.clone(), MessageStatus::Failed);
                    }
                    Prepared::Failed(why) => {
                        if all_or_none {
                            return Err(NodeError::MemberUnreachable {
                                who: to.clone(),
                                why: why.to_string(),
                            });
                        }
                        tracing::warn!(peer = %to, error = %why, "no session with a group member");
                        statuses.insert(to.clone(), MessageStatus::Failed);
                    }
                    Prepared::Held => {
                        statuses.insert(to.clone(), MessageStatus::Held);
                    }
                    Prepared::Ready(session) => ready.push((to.clone(), session)),
                }
            }
            if !missing.is_empty() {
                // First contact: lookups and X3DH bundles, without holding any lock.
                guards.clear();
                set_up = stream::iter(missing)
                    .map(|to| async move {
                        let prepared = self.set_up(&to).await;
                        (to, prepared)
                    })
                    .buffer_unordered(FAN_OUT)
                    .collect()
                    .await;
                statuses.clear();
                continue;
            }
            let now = self.clock.now_ms();
            for (to, mut session) in ready {
                let sealed = session.encrypt(&recipients[&to])?;
                let envelope = Envelope {
                    id: envelope_id,
                    trace: peerchat_telemetry::traceparent(),
                    payload: sealed.encode().to_vec(),
                };
                let device = Address::first(to.clone());
                batch.push(Write::Session(device.clone(), session));
                batch.push(Write::Enqueue(OutboxEntry {
                    to: device,
                    queued_at_ms: now,
                    envelope: envelope.clone(),
                    group: Some(group),
                }));
                envelopes.push((to, envelope));
            }
            break;
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
        // The sessions read under the locks are written back in this commit, still under them.
        let duplicate = self.store.commit(&batch)?.duplicate;
        drop(guards);
        if duplicate {
            // The same message id was sent meanwhile: that send delivers it.
            return Ok(());
        }
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

    /// A member's state from the store alone (under their lock): their session if it fits
    /// their pinned key, held if their key changed, missing if there is no contact or session.
    fn ready_now(&self, to: &Username) -> Result<Prepared, NodeError> {
        let Some(contact) = self.store.contact(&Address::from(to))? else {
            return Ok(Prepared::Missing);
        };
        if contact.pending_key.is_some() {
            return Ok(Prepared::Held);
        }
        Ok(match self.store.session(&Address::first(to.clone()))? {
            Some(session) if *session.remote_identity() == contact.identity_key => {
                Prepared::Ready(Box::new(session))
            }
            _ => Prepared::Missing,
        })
    }

    /// [`Self::set_up_once`], waited for while the rendezvous asks us to slow down (setting up a
    /// large group takes a lookup and a bundle per member).
    async fn set_up(&self, to: &Username) -> Prepared {
        for _ in 0..RATE_LIMIT_RETRIES {
            match self.set_up_once(to).await {
                Prepared::Failed(NodeError::Directory(DirectoryError::RateLimited)) => {
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
                prepared => return prepared,
            }
        }
        self.set_up_once(to).await
    }

    /// The contact (looked up and pinned if new) and a new session (X3DH), unless their key
    /// changed.
    async fn set_up_once(&self, to: &Username) -> Prepared {
        let contact = match self.contact_for(to).await {
            Ok(contact) => contact,
            Err(e) => return Prepared::Failed(e),
        };
        if contact.pending_key.is_some() {
            return Prepared::Held;
        }
        match self.session_for(to).await {
            Ok(session) => Prepared::Ready(Box::new(session)),
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
        let read = self.read_all(&ConversationId::Group(*group)).await?;
        if !self.settings()?.read_receipts {
            return Ok(());
        }
        let mut by_author: BTreeMap<Username, Vec<MessageId>> = BTreeMap::new();
        for m in read {
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
