//! People: message requests, blocking, profiles, settings and the typing indicator.
//!
//! Someone who writes first is a request until the user accepts it or writes back: their
//! messages are stored and acknowledged (delivery receipts go back), but they get no read
//! receipt, no typing and not our profile. A blocked user's messages are dropped unanswered
//! (the sender sees them sent, never delivered), and nothing of ours goes to them.

use peerchat_pki::Username;
use rand::rngs::OsRng;

use super::{Node, NodeError};
use crate::domain::person::{Standing, standing};
use crate::domain::{
    Address, Content, ConversationId, Envelope, GroupId, MessageId, Person, Profile,
};
use crate::ports::{
    Batch, Clock, Conversation, Directory, Event, Network, Notifier, Settings, Store, Write,
};

/// A conversation someone started that the user has not taken up.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Request {
    /// Who.
    pub peer: Username,
    /// The profile they shared, if any.
    pub profile: Option<Profile>,
    /// Their messages so far, with the latest.
    pub conversation: Option<Conversation>,
}

/// How many messages someone who wrote first may leave before the user accepts or answers;
/// what they send past it is refused (their messages fail), so a stranger cannot fill the disk.
pub const MAX_REQUEST_MESSAGES: u64 = 200;

impl<S: Store, D: Directory, N: Network, E: Notifier, C: Clock> Node<S, D, N, E, C> {
    /// Where `peer` stands with the user.
    pub fn standing(&self, peer: &Username) -> Result<Standing, NodeError> {
        let person = self.store.person(peer)?;
        let contact = self.store.contact(&Address::from(peer))?.is_some();
        Ok(standing(person.as_ref(), contact))
    }

    /// The record of `peer`, or a new one.
    fn person_or_new(&self, peer: &Username) -> Result<Person, NodeError> {
        Ok(self
            .store
            .person(peer)?
            .unwrap_or_else(|| Person::new(peer.clone())))
    }

    /// The user takes up the conversation with `peer` (wrote to them, added them, accepted
    /// their request): a write to make it so, if it is not so already.
    pub(super) fn take_up(&self, peer: &Username) -> Result<Option<Write>, NodeError> {
        let mut person = self.person_or_new(peer)?;
        if person.accepted {
            return Ok(None);
        }
        person.accepted = true;
        Ok(Some(Write::Person(Box::new(person))))
    }

    /// A first message from a stranger makes a request: the write to record it, if so.
    pub(super) fn note_stranger(&self, peer: &Username) -> Result<Option<Write>, NodeError> {
        Ok((self.standing(peer)? == Standing::Stranger)
            .then(|| Write::Person(Box::new(Person::new(peer.clone())))))
    }

    /// Refuses to write to someone the user blocked.
    pub(super) fn not_blocked(&self, peer: &Username) -> Result<(), NodeError> {
        match self.standing(peer)? {
            Standing::Blocked => Err(NodeError::Blocked(peer.clone())),
            _ => Ok(()),
        }
    }

    /// Conversations started by people the user has not taken up, most recent first.
    #[tracing::instrument(name = "usecase.requests", skip_all)]
    pub fn requests(&self) -> Result<Vec<Request>, NodeError> {
        let conversations = self.store.conversations()?;
        let mut requests: Vec<Request> = self
            .store
            .people()?
            .into_iter()
            .filter(Person::is_request)
            .filter_map(|p| {
                // Someone met in a group who never wrote directly has made no request.
                let conversation = conversations
                    .iter()
                    .find(|c| c.id == ConversationId::Direct(p.username.clone()))
                    .cloned()?;
                Some(Request {
                    conversation: Some(conversation),
                    peer: p.username,
                    profile: p.profile,
                })
            })
            .collect();
        requests.sort_by_key(|r| {
            std::cmp::Reverse(r.conversation.as_ref().map_or(0, |c| c.last.sent_at_ms))
        });
        Ok(requests)
    }

    /// Accepts `peer`'s request: from now on theirs is a conversation like any other; they get
    /// our profile, and read receipts for what the user read already.
    #[tracing::instrument(name = "usecase.accept_request", skip_all, fields(peer = %peer))]
    pub async fn accept_request(&self, peer: &Username) -> Result<(), NodeError> {
        self.me()?;
        if self.standing(peer)? != Standing::Request {
            return Err(NodeError::NoRequest(peer.clone()));
        }
        if let Some(write) = self.take_up(peer)? {
            self.store.commit(&Batch::new().with(write))?;
            self.store.flush().await?;
        }
        // What the user read while it was a request is now acknowledged as read, as it would
        // have been.
        if self.settings()?.read_receipts {
            let read: Vec<MessageId> = self
                .store
                .history(&ConversationId::from(peer), crate::ports::Page::ALL)?
                .into_iter()
                .filter(|m| {
                    m.direction == crate::ports::Direction::Incoming
                        && m.status == crate::ports::MessageStatus::Read
                })
                .map(|m| m.id)
                .collect();
            for ids in read.chunks(crate::domain::content::MAX_RECEIPT_IDS) {
                self.queue_receipt(peer, Content::ReadReceipt { ids: ids.to_vec() })
                    .await?;
            }
        }
        self.share_profile(peer).await?;
        self.notifier
            .notify(Event::PersonChanged { peer: peer.clone() });
        Ok(())
    }

    /// Blocks `peer` (or lifts the block), durably.
    #[tracing::instrument(name = "usecase.block", skip_all, fields(peer = %peer, blocked))]
    pub async fn block(&self, peer: &Username, blocked: bool) -> Result<(), NodeError> {
        if self.me()?.0 == *peer {
            return Err(NodeError::OwnAccount(peer.clone()));
        }
        let mut person = self.person_or_new(peer)?;
        if person.blocked == blocked {
            return Err(match blocked {
                true => NodeError::AlreadyBlocked(peer.clone()),
                false => NodeError::NotBlocked(peer.clone()),
            });
        }
        if !blocked && self.store.contact(&Address::from(peer))?.is_some() {
            // Unblocking someone the user knew keeps the conversation as it was before.
            person.accepted |= self.store.person(peer)?.is_none();
        }
        person.blocked = blocked;
        self.store
            .commit(&Batch::new().with(Write::Person(Box::new(person))))?;
        self.store.flush().await?;
        self.notifier
            .notify(Event::PersonChanged { peer: peer.clone() });
        Ok(())
    }

    /// Everyone blocked, by name.
    pub fn blocked(&self) -> Result<Vec<Username>, NodeError> {
        Ok(self
            .store
            .people()?
            .into_iter()
            .filter(|p| p.blocked)
            .map(|p| p.username)
            .collect())
    }

    /// The record of `peer` (their profile, the user's decisions), if any.
    pub fn person(&self, peer: &Username) -> Result<Option<Person>, NodeError> {
        Ok(self.store.person(peer)?)
    }

    /// Our own profile, if set.
    pub fn own_profile(&self) -> Result<Option<Profile>, NodeError> {
        Ok(self.store.own_profile()?)
    }

    /// Sets our profile and shares it with every contact the user took up (not requests, not
    /// the blocked), inside the ratchet.
    #[tracing::instrument(name = "usecase.set_profile", skip_all)]
    pub async fn set_profile(
        &self,
        display_name: &str,
        avatar: Option<Vec<u8>>,
    ) -> Result<Profile, NodeError> {
        self.me()?;
        let profile = Profile::new(display_name, avatar, self.clock.now_ms())?;
        self.store.save_own_profile(&profile)?;
        self.store.flush().await?;
        for contact in self.store.contacts()? {
            self.share_profile(&contact.username).await?;
        }
        Ok(profile)
    }

    /// Queues our profile for `peer` if they are to have it and have not had this version.
    pub(super) async fn share_profile(&self, peer: &Username) -> Result<(), NodeError> {
        let Some(profile) = self.store.own_profile()? else {
            return Ok(());
        };
        if self.standing(peer)? != Standing::Accepted
            || self.store.session(&Address::first(peer.clone()))?.is_none()
        {
            return Ok(());
        }
        let mut person = self.person_or_new(peer)?;
        if person.profile_sent_ms >= profile.updated_at_ms {
            return Ok(());
        }
        person.accepted = true;
        person.profile_sent_ms = profile.updated_at_ms;
        let content = Content::Profile {
            profile: Box::new(profile),
        };
        self.queue_with(peer, content, vec![Write::Person(Box::new(person))])
            .await
    }

    /// The settings in force: as saved, else the node's defaults.
    pub fn settings(&self) -> Result<Settings, NodeError> {
        Ok(self.store.settings()?.unwrap_or(Settings {
            read_receipts: self.read_receipts,
            ..Settings::default()
        }))
    }

    /// Saves the settings.
    #[tracing::instrument(name = "usecase.save_settings", skip_all)]
    pub async fn save_settings(&self, settings: Settings) -> Result<(), NodeError> {
        self.store.save_settings(&settings)?;
        self.store.flush().await?;
        Ok(())
    }

    /// Tells `conversation`'s other side (every member of a group) that we are typing, or
    /// stopped: only to those connected now, never queued or stored, and not at all when the
    /// setting is off, to requests or to the blocked. Returns how many were told.
    #[tracing::instrument(name = "usecase.typing", skip_all, fields(typing))]
    pub async fn typing(
        &self,
        conversation: &ConversationId,
        typing: bool,
    ) -> Result<usize, NodeError> {
        let me = self.me()?.0.clone();
        if !self.settings()?.typing {
            return Ok(0);
        }
        let (to, group): (Vec<Username>, Option<GroupId>) = match conversation {
            ConversationId::Direct(peer) => (vec![peer.clone()], None),
            ConversationId::Group(id) => {
                let state = self.group(id)?;
                if !state.members.contains(&me) {
                    return Err(NodeError::NotMember(*id));
                }
                (
                    state.members.into_iter().filter(|m| *m != me).collect(),
                    Some(*id),
                )
            }
        };
        let plaintext = Content::Typing { group, typing }.encode()?;
        let mut told = 0;
        for peer in to {
            let Some(connection) = self.network.connection(&peer) else {
                continue;
            };
            if self.standing(&peer)? != Standing::Accepted && group.is_none() {
                continue;
            }
            if self.standing(&peer)? == Standing::Blocked {
                continue;
            }
            let Some(contact) = self.store.contact(&Address::from(&peer))? else {
                continue;
            };
            let envelope = {
                let _guard = self.peer_lock(&peer).lock_owned().await;
                let device = Address::first(peer.clone());
                let Some(mut session) = self.store.session(&device)? else {
                    continue;
                };
                let message = session.encrypt(&plaintext)?;
                // The session advanced: recorded before the message leaves, so the next
                // message never reuses its key.
                self.store
                    .commit(&Batch::new().with(Write::Session(device, Box::new(session))))?;
                Envelope {
                    id: MessageId::random(&mut OsRng),
                    trace: None,
                    payload: message.encode().to_vec(),
                }
            };
            self.store.flush().await?;
            let recipient = crate::ports::Recipient {
                username: peer.clone(),
                identity_key: contact.identity_key,
                addresses: vec![connection.remote_address],
            };
            if let Ok(crate::domain::Ack::Stored) = self.network.deliver(&recipient, envelope).await
            {
                told += 1;
            }
        }
        Ok(told)
    }
}
