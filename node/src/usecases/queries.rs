//! Queries: they read and change nothing.

use peerchat_pki::Username;

use super::{Node, NodeError};
use crate::ports::{
    Clock, Contact, Conversation, Directory, Network, Notifier, Store, StoredMessage,
};

/// What `status` reports.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeStatus {
    /// Our username, once registered.
    pub username: Option<Username>,
    /// Envelopes waiting for an acknowledgement.
    pub outbox: usize,
}

impl<S: Store, D: Directory, N: Network, E: Notifier, C: Clock> Node<S, D, N, E, C> {
    /// The conversation with `peer`, oldest first.
    pub fn history(&self, peer: &Username) -> Result<Vec<StoredMessage>, NodeError> {
        Ok(self.store.history(peer)?)
    }

    /// One line per conversation, most recent first.
    pub fn conversations(&self) -> Result<Vec<Conversation>, NodeError> {
        Ok(self.store.conversations()?)
    }

    /// Every contact.
    pub fn contacts(&self) -> Result<Vec<Contact>, NodeError> {
        Ok(self.store.contacts()?)
    }

    /// Who we are and what is waiting.
    pub fn status(&self) -> Result<NodeStatus, NodeError> {
        Ok(NodeStatus {
            username: self.store.identity()?.map(|i| i.username),
            outbox: self.store.outbox()?.len(),
        })
    }
}
