//! Keeping the rendezvous supplied with one-time prekeys, and announcing where we listen.

use rand::rngs::OsRng;

use super::{Node, NodeError, PREKEY_BATCH};
use crate::domain::OneTimePreKeyPair;
use crate::ports::{Clock, Directory, Network, Notifier, Store};

/// Below this many one-time prekeys on the server, a refill is uploaded.
pub const LOW_PREKEYS: u32 = 20;

impl<S: Store, D: Directory, N: Network, E: Notifier, C: Clock> Node<S, D, N, E, C> {
    /// Uploads a new batch of one-time prekeys when the server holds fewer than [`LOW_PREKEYS`].
    #[tracing::instrument(name = "usecase.refresh_prekeys", skip_all)]
    pub async fn refresh_prekeys(&self) -> Result<(), NodeError> {
        self.me()?;
        let held = self.directory.upload_prekeys(None, Vec::new()).await?;
        if held >= LOW_PREKEYS {
            return Ok(());
        }
        let mut keys = Vec::with_capacity(PREKEY_BATCH as usize);
        for _ in 0..PREKEY_BATCH {
            keys.push(OneTimePreKeyPair::generate(
                self.store.next_prekey_id()?,
                &mut OsRng,
            ));
        }
        // Stored (and flushed) before they are published, so every published key can be used.
        self.store.add_one_time_prekeys(&keys)?;
        self.store.flush().await?;
        self.directory
            .upload_prekeys(None, keys.iter().map(OneTimePreKeyPair::public).collect())
            .await?;
        Ok(())
    }

    /// Announces `addresses` at the rendezvous for `ttl_secs`.
    #[tracing::instrument(name = "usecase.announce_presence", skip_all)]
    pub async fn announce_presence(
        &self,
        addresses: Vec<String>,
        ttl_secs: u64,
    ) -> Result<(), NodeError> {
        self.me()?;
        Ok(self.directory.announce(addresses, ttl_secs).await?)
    }
}
