//! The directory: exact-name lookup and presence (the addresses a user announced, for a
//! while).

use std::time::Duration;

use peerchat_pki::Username;

use super::{Caller, Rendezvous, ServiceError, check, unix};
use crate::store::{Presence, Store};

/// What a lookup tells about a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRecord {
    /// The user.
    pub username: Username,
    /// Their current certificate, DER.
    pub certificate_der: Vec<u8>,
    /// Their libp2p `PeerId`.
    pub peer_id: String,
    /// Their identity key.
    pub identity_key: [u8; 32],
    /// Whether they announced addresses that have not expired.
    pub online: bool,
    /// Those addresses.
    pub addresses: Vec<String>,
}

impl<S: Store> Rendezvous<S> {
    /// Exact-name lookup.
    #[tracing::instrument(name = "service.lookup", skip_all)]
    pub async fn lookup(
        &self,
        caller: &Caller,
        target: &Username,
    ) -> Result<PeerRecord, ServiceError> {
        check(&self.limiters.lookups_per_user, &caller.username)?;
        let account = self
            .store
            .account(target)
            .await?
            .ok_or(ServiceError::NoSuchUser)?;
        let presence = self
            .store
            .presence(target)
            .await?
            .filter(|p| p.expires_at > unix(self.now()));
        Ok(PeerRecord {
            username: target.clone(),
            certificate_der: account.certificate,
            peer_id: account.peer_id,
            identity_key: account.identity_key,
            online: presence.is_some(),
            addresses: presence.map(|p| p.addresses).unwrap_or_default(),
        })
    }

    /// Announces the caller's addresses for a while.
    #[tracing::instrument(name = "service.announce", skip_all)]
    pub async fn announce(
        &self,
        caller: &Caller,
        addresses: Vec<String>,
        ttl: Duration,
    ) -> Result<(), ServiceError> {
        if addresses.len() > self.limits.max_addresses
            || addresses.iter().any(|a| {
                a.is_empty() || a.len() > self.limits.max_address_len || !a.starts_with('/')
            })
        {
            return Err(ServiceError::BadAddresses {
                max: self.limits.max_addresses,
                max_len: self.limits.max_address_len,
            });
        }
        let ttl = ttl.min(self.limits.max_presence_ttl);
        self.store
            .set_presence(
                &caller.username,
                &Presence {
                    addresses,
                    expires_at: unix(self.now() + ttl),
                },
            )
            .await?;
        self.store.flush().await?;
        Ok(())
    }
}
