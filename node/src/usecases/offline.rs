//! Offline delivery: the outbox is retried until acknowledged (by the peer or the mailbox) or too
//! old, and the mailbox is emptied into the store.

use super::{Node, NodeError};
use crate::domain::{Ack, Envelope, IdentityKey, RejectReason};
use crate::ports::{Clock, Directory, MessageStatus, Network, Notifier, Store};

/// What one mailbox fetch brought.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MailFetched {
    /// Envelopes taken.
    pub count: usize,
    /// The number of the CRL in force at the rendezvous.
    pub crl_number: Option<u64>,
    /// Envelopes left in the mailbox to be taken later (not storable now, or not yet: a group
    /// change whose predecessors are still on their way).
    pub left: usize,
}

/// How many outbox entries one sweep tries.
pub const OUTBOX_SWEEP: usize = 64;

impl<S: Store, D: Directory, N: Network, E: Notifier, C: Clock> Node<S, D, N, E, C> {
    /// Tries every waiting envelope again (directly, else via the mailbox). One older than
    /// `give_up_after_ms` is marked `failed` instead; nothing is dropped silently.
    #[tracing::instrument(name = "usecase.retry_outbox", skip_all)]
    pub async fn retry_outbox(&self, give_up_after_ms: u64) -> Result<(), NodeError> {
        self.me()?;
        let now = self.clock.now_ms();
        for entry in self.store.outbox()?.into_iter().take(OUTBOX_SWEEP) {
            if entry.queued_at_ms > 0 && now.saturating_sub(entry.queued_at_ms) >= give_up_after_ms
            {
                tracing::warn!(peer = %entry.to, id = %entry.envelope.id, "giving up on a message");
                self.mark(
                    &entry.to.user,
                    &entry.envelope.id,
                    MessageStatus::Failed,
                    entry.group,
                )
                .await?;
                continue;
            }
            self.deliver(&entry.to.user, entry.envelope, entry.group)
                .await;
        }
        Ok(())
    }

    /// Takes our envelopes from the mailbox (waiting up to `wait_secs` for one, or for a CRL
    /// newer than `known_crl`), stores each through the receive use case, and acknowledges it to
    /// the mailbox only once it is stored (or refused for good). Returns how many there were and
    /// the number of the CRL in force, for the caller to fetch a newer one at once.
    #[tracing::instrument(name = "usecase.fetch_mail", skip_all)]
    pub async fn fetch_mail(
        &self,
        wait_secs: u64,
        known_crl: Option<u64>,
    ) -> Result<MailFetched, NodeError> {
        self.me()?;
        let mailbox = self.directory.fetch_mail(wait_secs, known_crl).await?;
        let mut fetched = MailFetched {
            count: mailbox.items.len(),
            crl_number: mailbox.crl_number,
            left: 0,
        };
        if mailbox.prekeys_low
            && let Err(e) = self.refresh_prekeys().await
        {
            tracing::warn!(error = %e, "topping up one-time prekeys failed");
        }
        for item in mailbox.items {
            let ack = match Envelope::decode(&item.envelope) {
                Ok(envelope) if envelope.id == item.id => {
                    let span =
                        tracing::info_span!("mailbox.receive", from = %item.sender, id = %item.id);
                    peerchat_telemetry::continue_trace(&span, envelope.trace.as_deref());
                    let received = async {
                        let key = match item.sender_key {
                            Some(key) => key,
                            None => self.certified_key(&item.sender).await?,
                        };
                        Ok::<_, NodeError>(self.receive(&item.sender, &key, envelope).await)
                    };
                    tracing::Instrument::instrument(received, span).await?
                }
                _ => Ack::Rejected(RejectReason::Malformed),
            };
            match ack {
                Ack::Rejected(RejectReason::Busy | RejectReason::Internal) => {
                    tracing::info!(id = %item.id, "a mailbox envelope could not be taken now; it stays in the mailbox");
                    fetched.left += 1;
                }
                _ => self.directory.ack_mail(&item.id).await?,
            }
        }
        Ok(fetched)
    }

    /// The key the depositor's certificate carries today, for mail from a rendezvous that did
    /// not record it. Never the pinned key: mail from a contact's new install must be judged
    /// against the key that sent it, so that it is held as a key change, not taken for garbage.
    async fn certified_key(
        &self,
        sender: &peerchat_pki::Username,
    ) -> Result<IdentityKey, NodeError> {
        Ok(self.directory.lookup(sender).await?.identity_key)
    }
}
