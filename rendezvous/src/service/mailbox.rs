//! The mailbox: envelopes for offline recipients, bounded per recipient and per sender, with a
//! long poll that answers on new mail, on a revocation (a new CRL) and on low prekeys.

use std::time::Duration;

use peerchat_pki::Username;

use super::{Caller, Rendezvous, ServiceError, check, unix};
use crate::store::{Deposit, Quota, Store, StoredEnvelope};

/// Whether a deposit was new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// Kept, and the recipient woken.
    New,
    /// An envelope with that id from that sender was there already; nothing changed.
    Duplicate,
}

/// One answer of the mailbox.
#[derive(Debug, Clone)]
pub struct Mailbox {
    /// The waiting envelopes, oldest first.
    pub envelopes: Vec<StoredEnvelope>,
    /// The number of the CRL in force.
    pub crl_number: u64,
    /// The owner's one-time prekeys are running low.
    pub prekeys_low: bool,
}

impl<S: Store> Rendezvous<S> {
    /// Leaves an envelope for `recipient`.
    #[tracing::instrument(name = "service.deposit", skip_all)]
    pub async fn deposit(
        &self,
        caller: &Caller,
        recipient: &Username,
        id: [u8; 16],
        envelope: Vec<u8>,
    ) -> Result<Stored, ServiceError> {
        let now = self.now();
        check(&self.limiters.deposits_per_user, &caller.username)?;
        if envelope.len() > self.limits.max_envelope_bytes {
            return Err(ServiceError::EnvelopeTooLarge(
                self.limits.max_envelope_bytes,
            ));
        }
        if self.store.account(recipient).await?.is_none() {
            return Err(ServiceError::NoSuchUser);
        }
        let stored = StoredEnvelope {
            id,
            sender: caller.username.clone(),
            envelope,
            deposited_at: unix(now),
            expires_at: unix(now + self.limits.mailbox_expiry),
            sender_key: Some(caller.identity_key.to_bytes()),
        };
        let quota = Quota {
            max_envelopes: self.limits.mailbox_max_envelopes,
            max_bytes: self.limits.mailbox_max_bytes,
            max_envelopes_per_sender: self.limits.mailbox_max_envelopes_per_sender,
            max_bytes_per_sender: self.limits.mailbox_max_bytes_per_sender,
        };
        let status = match self.store.deposit(recipient, &stored, quota).await? {
            Deposit::Stored => Stored::New,
            Deposit::Duplicate => Stored::Duplicate,
            Deposit::QuotaExceeded => return Err(ServiceError::MailboxFull),
        };
        self.store.flush().await?;
        if status == Stored::New {
            self.wake_everywhere(recipient).await?;
        }
        Ok(status)
    }

    /// The caller's waiting envelopes; with `wait`, holds the request until mail arrives, a new
    /// CRL is in force, or the wait (capped) is over. A caller whose `known_crl` is older than
    /// the CRL in force is answered at once, so no revocation falls between two long polls.
    #[tracing::instrument(name = "service.fetch", skip_all)]
    pub async fn fetch(
        &self,
        caller: &Caller,
        owner: &Username,
        wait: Duration,
        known_crl: Option<u64>,
    ) -> Result<Mailbox, ServiceError> {
        own_mailbox(caller, owner)?;
        let wait = wait.min(self.limits.max_mailbox_wait);
        let deadline = tokio::time::Instant::now() + wait;
        // Woken once already: if the owner's prekeys are low, that is news worth answering.
        let mut woken = false;
        loop {
            let low_news = woken && self.prekeys_low(owner).await?;
            let notify = self.waiter(owner);
            let outcome = {
                let notified = notify.notified();
                tokio::pin!(notified);
                // Register before looking, so a deposit between the look and the wait is not missed.
                notified.as_mut().enable();
                let new_crl = self.new_crl.notified();
                tokio::pin!(new_crl);
                new_crl.as_mut().enable();
                let behind = known_crl.is_some_and(|known| known < self.current_crl_number());
                match self.store.mailbox(owner, unix(self.now()), 100).await {
                    Err(e) => Err(e),
                    Ok(envelopes)
                        if !envelopes.is_empty() || wait.is_zero() || behind || low_news =>
                    {
                        Ok(Some(envelopes))
                    }
                    Ok(_) => {
                        let closing = self.closing.notified();
                        tokio::pin!(closing);
                        closing.as_mut().enable();
                        if self.closed.load(std::sync::atomic::Ordering::Acquire) {
                            Ok(Some(Vec::new()))
                        } else {
                            tokio::select! {
                                () = notified => Ok(None),
                                // A revocation: tell the caller now (with no mail).
                                () = new_crl => Ok(Some(Vec::new())),
                                () = tokio::time::sleep_until(deadline) => Ok(Some(Vec::new())),
                                // Shutting down: answer now, so the server can stop promptly.
                                () = closing => Ok(Some(Vec::new())),
                            }
                        }
                    }
                }
            };
            self.release_waiter(owner, notify);
            // A long poll authenticated before its certificate was revoked must not hand out
            // mail after: check again before answering.
            if self.store.is_revoked(&caller.serial).await? {
                return Err(ServiceError::CertificateRevoked);
            }
            // `None`: woken by a deposit, or by a bundle fetch that left the owner's prekeys
            // low: look again (and answer the latter, so the owner tops up at once).
            let Some(envelopes) = outcome? else {
                woken = true;
                continue;
            };
            return Ok(Mailbox {
                envelopes,
                crl_number: self.current_crl_number(),
                prekeys_low: self.prekeys_low(owner).await?,
            });
        }
    }

    /// Deletes one of the caller's envelopes.
    #[tracing::instrument(name = "service.ack", skip_all)]
    pub async fn ack(
        &self,
        caller: &Caller,
        owner: &Username,
        id: &[u8; 16],
    ) -> Result<(), ServiceError> {
        own_mailbox(caller, owner)?;
        if !self.store.ack(owner, id).await? {
            return Err(ServiceError::NoSuchEnvelope);
        }
        self.store.flush().await?;
        Ok(())
    }
}

fn own_mailbox(caller: &Caller, owner: &Username) -> Result<(), ServiceError> {
    if caller.username != *owner {
        return Err(ServiceError::NotYourMailbox);
    }
    Ok(())
}
