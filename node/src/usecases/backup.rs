//! Encrypted backups: contacts, people, groups and every conversation's history, sealed under a
//! passphrase ([`crate::domain::backup`]), and restored into a new install after `login`.
//! Sessions and keys are not in a backup: the new install has its own, and contacts see a key
//! change, as with any new install.

use peerchat_pki::Username;
use rand::rngs::OsRng;

use super::{Node, NodeError};
use crate::domain::backup::{self, Cost};
use crate::domain::{Address, Contact, Group, Person, Profile};
use crate::ports::{
    Batch, Clock, Direction, Directory, IfStored, MessageStatus, Network, Notifier, Page, Settings,
    Store, StoredMessage, Write,
};

/// Version of the snapshot inside a backup.
const SNAPSHOT_VERSION: u32 = 1;
/// Messages written per commit when restoring.
const RESTORE_BATCH: usize = 1000;

/// What a backup holds, before it is sealed.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Snapshot {
    version: u32,
    username: Username,
    made_at_ms: u64,
    contacts: Vec<Contact>,
    people: Vec<Person>,
    groups: Vec<Group>,
    /// Every conversation's messages, oldest conversation (by its latest message) first, each
    /// oldest message first.
    messages: Vec<StoredMessage>,
    own_profile: Option<Profile>,
    settings: Option<Settings>,
}

/// What a backup held, or what a restore brought in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct BackupSummary {
    /// Contacts.
    pub contacts: usize,
    /// Groups.
    pub groups: usize,
    /// Messages.
    pub messages: usize,
}

/// Why a backup could not be made or restored.
#[derive(Debug, thiserror::Error)]
pub enum BackupFailure {
    /// Sealing or opening failed.
    #[error(transparent)]
    Sealed(#[from] backup::BackupError),
    /// Another account's backup.
    #[error("this backup is of {0}'s account; this node is {1}'s")]
    OtherAccount(Username, Username),
    /// The contents could not be read.
    #[error("the backup opened but its contents could not be read")]
    Unreadable,
}

impl<S: Store, D: Directory, N: Network, E: Notifier, C: Clock> Node<S, D, N, E, C> {
    /// A backup of contacts, people, groups and every conversation, sealed under `passphrase`
    /// with `cost` (Argon2id); with what it holds.
    #[tracing::instrument(name = "usecase.backup", skip_all)]
    pub async fn backup(
        &self,
        passphrase: &str,
        cost: Cost,
    ) -> Result<(Vec<u8>, BackupSummary), NodeError> {
        let me = self.me()?.0.clone();
        let mut messages = Vec::new();
        for conversation in self.store.conversations()?.into_iter().rev() {
            messages.extend(self.store.history(&conversation.id, Page::ALL)?);
        }
        let snapshot = Snapshot {
            version: SNAPSHOT_VERSION,
            username: me,
            made_at_ms: self.clock.now_ms(),
            contacts: self.store.contacts()?,
            people: self.store.people()?,
            groups: self.store.groups()?,
            messages,
            own_profile: self.store.own_profile()?,
            settings: self.store.settings()?,
        };
        let summary = BackupSummary {
            contacts: snapshot.contacts.len(),
            groups: snapshot.groups.len(),
            messages: snapshot.messages.len(),
        };
        let plain = zeroize::Zeroizing::new(
            serde_json::to_vec(&snapshot).map_err(|_| BackupFailure::Unreadable)?,
        );
        let passphrase = zeroize::Zeroizing::new(passphrase.to_owned());
        let sealed = tokio::task::spawn_blocking(move || {
            backup::seal(&plain, &passphrase, cost, &mut OsRng)
        })
        .await
        .map_err(|_| BackupFailure::Sealed(backup::BackupError::Kdf))?
        .map_err(BackupFailure::from)?;
        Ok((sealed, summary))
    }

    /// Brings a backup of this account into this install: contacts (with the keys pinned for
    /// them), people, groups and history; what is here already stays as it is. Our messages
    /// that were still on their way are marked not sent (there is no session to send them
    /// with; they can be retried).
    #[tracing::instrument(name = "usecase.restore", skip_all)]
    pub async fn restore(
        &self,
        sealed: Vec<u8>,
        passphrase: &str,
    ) -> Result<BackupSummary, NodeError> {
        let me = self.me()?.0.clone();
        let passphrase = zeroize::Zeroizing::new(passphrase.to_owned());
        let plain = tokio::task::spawn_blocking(move || backup::open(&sealed, &passphrase))
            .await
            .map_err(|_| BackupFailure::Sealed(backup::BackupError::Kdf))?
            .map_err(BackupFailure::from)?;
        let snapshot: Snapshot =
            serde_json::from_slice(&plain).map_err(|_| BackupFailure::Unreadable)?;
        if snapshot.version != SNAPSHOT_VERSION {
            return Err(BackupFailure::Unreadable.into());
        }
        if snapshot.username != me {
            return Err(BackupFailure::OtherAccount(snapshot.username, me).into());
        }
        let mut summary = BackupSummary::default();
        for contact in snapshot.contacts {
            if contact.username != me
                && self
                    .store
                    .contact(&Address::from(&contact.username))?
                    .is_none()
            {
                self.store.save_contact(&contact)?;
                summary.contacts += 1;
            }
        }
        let mut batch = Batch::new();
        for person in snapshot.people {
            if self.store.person(&person.username)?.is_none() {
                batch.push(Write::Person(Box::new(Person {
                    // Our profile goes to them again from this install.
                    profile_sent_ms: 0,
                    ..person
                })));
            }
        }
        for group in snapshot.groups {
            if self.store.group(&group.state().id)?.is_none() {
                batch.push(Write::Group(Box::new(group)));
                summary.groups += 1;
            }
        }
        self.store.commit(&batch)?;
        let mut batch = Batch::new();
        for mut message in snapshot.messages {
            if self
                .store
                .message(&message.conversation(), &message.id)?
                .is_some()
            {
                continue;
            }
            if message.direction == Direction::Outgoing
                && matches!(message.status, MessageStatus::Pending | MessageStatus::Held)
            {
                message.status = MessageStatus::Failed;
            }
            batch.push(Write::Message(message, IfStored::Skip));
            summary.messages += 1;
            if batch.0.len() == RESTORE_BATCH {
                self.store.commit(&std::mem::take(&mut batch))?;
            }
        }
        self.store.commit(&batch)?;
        if self.store.own_profile()?.is_none()
            && let Some(profile) = snapshot.own_profile
        {
            self.store.save_own_profile(&profile)?;
        }
        if self.store.settings()?.is_none()
            && let Some(settings) = snapshot.settings
        {
            self.store.save_settings(&settings)?;
        }
        self.store.flush().await?;
        Ok(summary)
    }
}
