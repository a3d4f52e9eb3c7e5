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

    /// Replaces the signed prekey once it is `max_age_ms` old (the previous ones stay, for initial
    /// messages still on their way). Returns whether it rotated.
    #[tracing::instrument(name = "usecase.rotate_signed_prekey", skip_all)]
    pub async fn rotate_signed_prekey(&self, max_age_ms: u64) -> Result<bool, NodeError> {
        let me = self.me()?;
        let now = self.clock.now_ms();
        let Some(rotated_at) = self.store.signed_prekey_rotated_at()? else {
            // First look after registration: the current key counts from now.
            self.store.set_signed_prekey_rotated_at(now)?;
            self.store.flush().await?;
            return Ok(false);
        };
        if now.saturating_sub(rotated_at) < max_age_ms {
            return Ok(false);
        }
        let key = crate::domain::SignedPreKeyPair::generate(
            self.store.next_prekey_id()?,
            &me.1,
            &mut OsRng,
        );
        self.store.add_signed_prekey(&key, now)?;
        self.store.flush().await?;
        self.directory
            .upload_prekeys(Some(key.public()), Vec::new())
            .await?;
        tracing::info!(id = %key.id(), "signed prekey rotated");
        Ok(true)
    }

    /// Announces `addresses` at the rendezvous for `ttl_secs`.
    #[tracing::instrument(name = "usecase.announce_presence", skip_all)]
    pub async fn announce_presence(
        &self,
        addresses: Vec<String>,
        ttl_secs: u64,
    ) -> Result<(), NodeError> {
        self.me()?;
        self.directory.announce(addresses.clone(), ttl_secs).await?;
        self.notifier
            .notify(crate::ports::Event::Announced { addresses });
        Ok(())
    }
}
