//! A contact's profile, and their typing: neither is a message of the conversation.

use super::Decrypted;
use crate::domain::{Ack, GroupId, Profile, Standing};
use crate::ports::{Clock, Directory, Event, Network, Notifier, Store, Write};
use crate::usecases::{Node, NodeError};

impl<S: Store, D: Directory, N: Network, E: Notifier, C: Clock> Node<S, D, N, E, C> {
    /// Keeps a profile if it is newer than the one held. A stranger's (someone who never wrote
    /// and was never written to) is not kept: a profile alone makes no conversation.
    pub(super) async fn handle_profile(
        &self,
        decrypted: Decrypted<'_>,
        profile: Profile,
    ) -> Result<Ack, NodeError> {
        let from = decrypted.from.clone();
        let mut person = match self.store.person(&from)? {
            Some(person) => person,
            None if self.standing(&from)? == Standing::Accepted => crate::domain::Person {
                accepted: true,
                ..crate::domain::Person::new(from.clone())
            },
            None => {
                self.record(decrypted, Vec::new(), false).await?;
                return Ok(Ack::Stored);
            }
        };
        let changed = person.take_profile(profile);
        let writes = match changed {
            true => vec![Write::Person(Box::new(person))],
            false => Vec::new(),
        };
        self.record(decrypted, writes, false).await?;
        if changed {
            self.notifier.notify(Event::PersonChanged { peer: from });
        }
        Ok(Ack::Stored)
    }

    /// Shows that someone is typing: to us (someone we know), or in a group we share with them.
    /// Nothing is stored but the advanced session.
    pub(super) async fn handle_typing(
        &self,
        decrypted: Decrypted<'_>,
        group: Option<GroupId>,
        typing: bool,
    ) -> Result<Ack, NodeError> {
        let from = decrypted.from.clone();
        let shown = match group {
            None => self.standing(&from)? != Standing::Stranger,
            Some(id) => self
                .store
                .group(&id)?
                .is_some_and(|g| g.state().members.contains(&from)),
        };
        self.record(decrypted, Vec::new(), false).await?;
        if shown {
            self.notifier.notify(Event::Typing {
                peer: from,
                group,
                typing,
            });
        }
        Ok(Ack::Stored)
    }
}
