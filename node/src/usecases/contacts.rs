//! Contacts: look a user up and pin their identity key on first contact.

use peerchat_pki::Username;

use super::{Node, NodeError};
use crate::ports::{Batch, Clock, Contact, Directory, Network, Notifier, Store};

impl<S: Store, D: Directory, N: Network, E: Notifier, C: Clock> Node<S, D, N, E, C> {
    /// Looks `username` up and adds them as a contact, pinning the identity key the CA certified
    /// (trust on first use). A known contact whose key changed is not silently re-pinned.
    #[tracing::instrument(name = "usecase.add_contact", skip_all, fields(peer = %username))]
    pub async fn add_contact(&self, username: &Username) -> Result<(), NodeError> {
        if self.me()?.0 == *username {
            return Err(NodeError::OwnAccount(username.clone()));
        }
        let info = self
            .directory
            .lookup(username)
            .await
            .map_err(|e| e.naming(username))?;
        // The first delivery reuses this lookup (a group's creation makes one per member).
        self.addresses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(username.clone(), (info.clone(), self.clock.now_ms()));
        match self
            .store
            .contact(&crate::domain::Address::from(username))?
        {
            Some(known) if known.identity_key != info.identity_key => {
                Err(NodeError::KeyChanged(username.clone()))
            }
            Some(_) => {
                if let Some(write) = self.take_up(username)? {
                    self.store.commit(&Batch::new().with(write))?;
                    self.store.flush().await?;
                }
                Ok(())
            }
            None => {
                self.store.save_contact(&Contact {
                    username: username.clone(),
                    identity_key: info.identity_key,
                    verified: false,
                    pending_key: None,
                })?;
                // Adding someone (or writing to them) takes the conversation up.
                if let Some(write) = self.take_up(username)? {
                    self.store.commit(&Batch::new().with(write))?;
                }
                self.store.flush().await?;
                Ok(())
            }
        }
    }

    /// The contact, looked up and pinned if new.
    pub(super) async fn contact_for(&self, username: &Username) -> Result<Contact, NodeError> {
        if let Some(contact) = self
            .store
            .contact(&crate::domain::Address::from(username))?
        {
            return Ok(contact);
        }
        self.add_contact(username).await?;
        self.store
            .contact(&crate::domain::Address::from(username))?
            .ok_or(NodeError::NotRegistered)
    }
}
