//! Queries: they read and change nothing.

use peerchat_pki::Username;

use super::{Node, NodeError};
use crate::domain::ConversationId;
use crate::domain::search::Query;
use crate::ports::{
    Clock, Contact, Conversation, Directory, Network, Notifier, Page, Store, StoredMessage,
};

/// Most hits one search returns.
pub const MAX_SEARCH_HITS: usize = 500;

/// What `status` reports.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeStatus {
    /// Our username, once registered.
    pub username: Option<Username>,
    /// Messages waiting for an acknowledgement (receipts not counted).
    pub outbox: usize,
}

impl<S: Store, D: Directory, N: Network, E: Notifier, C: Clock> Node<S, D, N, E, C> {
    /// Messages of every conversation that `text` finds ([`Query`]: each of its words begins a
    /// word of the message, case ignored), newest first, at most `limit` (and at most
    /// [`MAX_SEARCH_HITS`]). The text searched for is not logged.
    #[tracing::instrument(name = "usecase.search", skip_all)]
    pub fn search(&self, text: &str, limit: usize) -> Result<Vec<StoredMessage>, NodeError> {
        self.me()?;
        if text.len() > crate::domain::content::MAX_TEXT_BYTES {
            return Err(NodeError::BadQuery(
                "that is longer than any message".into(),
            ));
        }
        let Some(query) = Query::parse(text) else {
            return Err(NodeError::BadQuery("search for some text".into()));
        };
        Ok(self.store.search(&query, limit.clamp(1, MAX_SEARCH_HITS))?)
    }

    /// The whole conversation with `peer`, oldest first.
    #[tracing::instrument(name = "usecase.history", skip_all, fields(peer = %peer))]
    pub fn history(&self, peer: &Username) -> Result<Vec<StoredMessage>, NodeError> {
        Ok(self.store.history(&peer.into(), Page::ALL)?)
    }

    /// A page of the conversation with `peer`, oldest first; for someone who is neither a
    /// contact nor in any message, the rendezvous is asked whether they exist at all, so a
    /// mistyped name is an error rather than an empty conversation.
    #[tracing::instrument(name = "usecase.conversation", skip_all, fields(peer = %peer))]
    pub async fn conversation(
        &self,
        peer: &Username,
        page: Page,
    ) -> Result<Vec<StoredMessage>, NodeError> {
        let messages = self.store.history(&peer.into(), page)?;
        if messages.is_empty()
            && page.before.is_none()
            && self
                .store
                .contact(&crate::domain::Address::from(peer))?
                .is_none()
        {
            if self.me()?.0 == *peer {
                return Err(NodeError::OwnAccount(peer.clone()));
            }
            self.directory
                .lookup(peer)
                .await
                .map_err(|e| e.naming(peer))?;
        }
        Ok(messages)
    }

    /// How many messages from `peer` were not shown yet (the count the store keeps).
    #[tracing::instrument(name = "usecase.unread", skip_all, fields(peer = %peer))]
    pub fn unread(&self, peer: &Username) -> Result<u64, NodeError> {
        let conversation = ConversationId::from(peer);
        Ok(self
            .store
            .conversations()?
            .into_iter()
            .find(|c| c.id == conversation)
            .map_or(0, |c| c.unread))
    }

    /// Whether `peer` is online, as far as the rendezvous knows (live announced addresses).
    #[tracing::instrument(name = "usecase.presence", skip_all, fields(peer = %peer))]
    pub async fn presence(&self, peer: &Username) -> Result<bool, NodeError> {
        self.me()?;
        Ok(self.directory.lookup(peer).await?.online)
    }

    /// One line per conversation, most recent first.
    #[tracing::instrument(name = "usecase.conversations", skip_all)]
    pub fn conversations(&self) -> Result<Vec<Conversation>, NodeError> {
        Ok(self.store.conversations()?)
    }

    /// The open connection with `peer` (path and remote address), if any.
    pub fn connection(&self, peer: &Username) -> Option<crate::ports::PeerConnection> {
        self.network.connection(peer)
    }

    /// Every contact.
    #[tracing::instrument(name = "usecase.contacts", skip_all)]
    pub fn contacts(&self) -> Result<Vec<Contact>, NodeError> {
        Ok(self.store.contacts()?)
    }

    /// Who we are and what is waiting.
    #[tracing::instrument(name = "usecase.status", skip_all)]
    pub fn status(&self) -> Result<NodeStatus, NodeError> {
        Ok(NodeStatus {
            username: self.store.identity()?.map(|i| i.username),
            // Messages waiting, as `history` shows them `pending`: receipts in the outbox are
            // not messages.
            // A group message counts once, however many members wait for it.
            outbox: self
                .store
                .outbox()?
                .iter()
                .filter_map(|e| {
                    let conversation = match e.group {
                        Some(group) => ConversationId::Group(group),
                        None => (&e.to.user).into(),
                    };
                    matches!(
                        self.store.message(&conversation, &e.envelope.id),
                        Ok(Some(_))
                    )
                    .then_some((conversation, e.envelope.id))
                })
                .collect::<std::collections::BTreeSet<_>>()
                .len(),
        })
    }
}
