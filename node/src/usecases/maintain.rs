//! Maintenance: the node's background work (outbox, mailbox, CRL, presence, prekeys and
//! certificate) and its schedule. The daemon only starts it and cancels it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{Node, NodeError};
use crate::ports::{
    Clock, Directory, Event, Network, Notifier, ReachabilityEvent, Store, TransportTrust,
};

/// When each piece of maintenance runs.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// How long one mailbox request waits for new mail.
    pub mailbox_wait: Duration,
    /// How often undelivered messages are tried again (and at once when something is queued).
    pub outbox_retry: Duration,
    /// After this long an undelivered message is marked failed.
    pub give_up_after: Duration,
    /// How often the CRL is fetched (also at once when the mailbox says a newer one exists).
    pub crl_refresh: Duration,
    /// How long announced addresses stay valid; they are announced again at half of it and
    /// whenever they change.
    pub presence_ttl: Duration,
    /// How often prekeys are topped up, the signed prekey rotated when old and the
    /// certificate renewed when two thirds of its life have passed.
    pub keys_every: Duration,
    /// How long a signed prekey is used before a new one replaces it.
    pub signed_prekey_max_age: Duration,
    /// The lifetime of our certificates.
    pub certificate_lifetime: Duration,
    /// How often unfinished downloads are tried again.
    pub file_retry: Duration,
}

impl Default for Schedule {
    fn default() -> Self {
        Self {
            mailbox_wait: Duration::from_secs(25),
            outbox_retry: Duration::from_secs(3),
            give_up_after: Duration::from_secs(7 * 24 * 3600),
            crl_refresh: Duration::from_secs(300),
            presence_ttl: Duration::from_secs(120),
            keys_every: Duration::from_secs(600),
            signed_prekey_max_age: Duration::from_secs(7 * 24 * 3600),
            certificate_lifetime: peerchat_pki::DEFAULT_PEER_VALIDITY,
            file_retry: Duration::from_secs(10),
        }
    }
}

/// After a failed mailbox request, the next one waits this long.
const MAILBOX_BACKOFF: Duration = Duration::from_secs(2);

impl<S: Store, D: Directory, N: Network, E: Notifier, C: Clock> Node<S, D, N, E, C> {
    /// Runs the background work until `cancel` is cancelled, then waits for every piece of it
    /// to stop. Each runs as its own task in one [`JoinSet`]: one that fails is logged, the
    /// others go on. Call it once the network runs.
    pub async fn maintain<T: TransportTrust>(
        self: Arc<Self>,
        trust: Arc<T>,
        schedule: Schedule,
        cancel: CancellationToken,
    ) {
        let mut tasks = JoinSet::new();
        let mut spawn = |name: &'static str, work: futures::future::BoxFuture<'static, ()>| {
            let cancel = cancel.clone();
            tasks.spawn(async move {
                cancel.run_until_cancelled(work).await;
                name
            });
        };
        spawn(
            "outbox",
            Box::pin(self.clone().outbox_loop(schedule.clone())),
        );
        spawn(
            "mailbox",
            Box::pin(self.clone().mailbox_loop(trust.clone(), schedule.clone())),
        );
        spawn(
            "crl",
            Box::pin(self.clone().crl_loop(trust.clone(), schedule.clone())),
        );
        spawn(
            "presence",
            Box::pin(self.clone().presence_loop(schedule.clone())),
        );
        spawn(
            "downloads",
            Box::pin(self.clone().downloads_loop(schedule.clone())),
        );
        spawn("keys", Box::pin(self.clone().keys_loop(trust, schedule)));
        while let Some(ended) = tasks.join_next().await {
            match ended {
                Ok(name) if !cancel.is_cancelled() => {
                    tracing::error!(task = name, "a maintenance task ended early");
                }
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "a maintenance task failed"),
            }
        }
        if let Err(e) = self.store.flush().await {
            tracing::warn!(error = %e, "flushing the store at shutdown failed");
        }
    }

    /// Fetches the CRL and hands it to the transport. Returns whether a CRL was installed.
    #[tracing::instrument(name = "usecase.refresh_crl", skip_all)]
    pub async fn refresh_crl<T: TransportTrust>(&self, trust: &T) -> bool {
        match self.directory.crl().await {
            Ok(der) => trust.install_crl(der).await,
            Err(e) => {
                tracing::warn!(error = %e, "fetching the CRL failed");
                false
            }
        }
    }

    /// The outbox: retried every `outbox_retry`, and at once when something is queued.
    async fn outbox_loop(self: Arc<Self>, schedule: Schedule) {
        let give_up_after = schedule.give_up_after.as_millis() as u64;
        let mut tick = tokio::time::interval(schedule.outbox_retry);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = self.outbox_signal.notified() => {}
            }
            if let Err(e) = self.retry_outbox(give_up_after).await {
                tracing::warn!(error = %e, "retrying the outbox failed");
            }
        }
    }

    /// The mailbox: emptied at start, then whenever the rendezvous signals new mail (long poll).
    /// The same long poll answers when a certificate is revoked: the new CRL is fetched at once.
    async fn mailbox_loop<T: TransportTrust>(self: Arc<Self>, trust: Arc<T>, schedule: Schedule) {
        loop {
            let known = trust.crl_number();
            match self
                .fetch_mail(schedule.mailbox_wait.as_secs(), known)
                .await
            {
                Ok(fetched) => {
                    if fetched.crl_number.is_some_and(|n| Some(n) > known) {
                        self.refresh_crl(&*trust).await;
                    }
                    if fetched.left > 0 {
                        // They would come straight back: give what they wait for time to arrive.
                        tokio::time::sleep(MAILBOX_BACKOFF).await;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "fetching mail failed");
                    tokio::time::sleep(MAILBOX_BACKOFF).await;
                }
            }
        }
    }

    /// Downloads: files marked for download are fetched at start (resuming), when one is
    /// marked, and every `file_retry` (a sender that was offline may be back).
    async fn downloads_loop(self: Arc<Self>, schedule: Schedule) {
        let mut tick = tokio::time::interval(schedule.file_retry);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = self.downloads_signal.notified() => {}
            }
            if let Err(e) = self.fetch_files().await {
                tracing::warn!(error = %e, "fetching files failed");
            }
        }
    }

    /// The CRL, refreshed every `crl_refresh` (the first right away).
    async fn crl_loop<T: TransportTrust>(self: Arc<Self>, trust: Arc<T>, schedule: Schedule) {
        let mut tick = tokio::time::interval(schedule.crl_refresh);
        tick.tick().await;
        loop {
            tick.tick().await;
            self.refresh_crl(&*trust).await;
        }
    }

    /// Presence: our addresses announced again at half their lifetime and whenever they
    /// change; peers' connections and disconnections told to the user interface.
    async fn presence_loop(self: Arc<Self>, schedule: Schedule) {
        let mut changes = self.network.reachability();
        // The first tick announces at once: the addresses may have changed (a relay
        // reservation) between the daemon's first announcement and this subscription.
        let mut tick = tokio::time::interval(schedule.presence_ttl / 2);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                change = changes.recv() => match change {
                    Ok(ReachabilityEvent::OwnAddresses(_)) | Err(RecvError::Lagged(_)) => {}
                    Ok(ReachabilityEvent::PeerOnline { peer, .. }) => {
                        self.notifier.notify(Event::PeerOnline { peer });
                        continue;
                    }
                    Ok(ReachabilityEvent::PeerOffline { peer }) => {
                        self.notifier.notify(Event::PeerOffline { peer });
                        continue;
                    }
                    Err(RecvError::Closed) => {
                        changes = self.network.reachability();
                        tokio::time::sleep(MAILBOX_BACKOFF).await;
                        continue;
                    }
                },
            }
            let addresses = self.network.own_addresses();
            if let Err(e) = self
                .announce_presence(addresses, schedule.presence_ttl.as_secs())
                .await
            {
                tracing::warn!(error = %e, "announcing presence failed");
            }
        }
    }

    /// Prekeys topped up, the signed prekey rotated and the certificate renewed (the transport
    /// presents the new one at once), every `keys_every`.
    async fn keys_loop<T: TransportTrust>(self: Arc<Self>, trust: Arc<T>, schedule: Schedule) {
        let mut tick = tokio::time::interval(schedule.keys_every);
        loop {
            tick.tick().await;
            if let Err(e) = self.refresh_prekeys().await {
                tracing::warn!(error = %e, "refreshing prekeys failed");
            }
            if let Err(e) = self
                .rotate_signed_prekey(schedule.signed_prekey_max_age.as_millis() as u64)
                .await
            {
                tracing::warn!(error = %e, "rotating the signed prekey failed");
            }
            match self
                .renew_certificate(schedule.certificate_lifetime, false)
                .await
            {
                Ok(true) => match self.store.identity() {
                    Ok(Some(identity)) => trust.present_certificate(&identity.certificate_pem),
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %e, "reading the renewed certificate failed"),
                },
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "renewing the certificate failed"),
            }
        }
    }

    /// Resumes a registered node: the rendezvous client authenticates with our certificate, and
    /// the identity the transport needs is returned.
    pub fn resume(&self) -> Result<crate::ports::LocalIdentity, NodeError> {
        let identity = self.store.identity()?.ok_or(NodeError::NotRegistered)?;
        let key = ed25519_dalek::SigningKey::from_bytes(&identity.seed);
        self.directory
            .authenticate(&identity.certificate_pem, &key)?;
        Ok(identity)
    }

    /// Whether `username` is a contact pinned to exactly `key` (whom the transport admits while
    /// it has no CRL).
    pub fn is_pinned(
        &self,
        username: &peerchat_pki::Username,
        key: &ed25519_dalek::VerifyingKey,
    ) -> bool {
        matches!(
            self.store.contact(&crate::domain::Address::from(username)),
            Ok(Some(contact)) if contact.identity_key.verifying_key() == key
        )
    }
}

impl<S: Store, D: Directory, N: Network, E: Notifier, C: Clock> crate::ports::Inbound
    for Node<S, D, N, E, C>
{
    async fn envelope(
        &self,
        from: crate::ports::AuthenticatedPeer,
        envelope: crate::domain::Envelope,
    ) -> crate::domain::Ack {
        self.receive(&from.username, &from.identity_key, envelope)
            .await
    }

    async fn stream(&self, stream: crate::ports::PeerStream) {
        if stream.protocol == super::FILE_PROTOCOL {
            return self.serve_file(stream).await;
        }
        tracing::debug!(peer = %stream.peer.username, protocol = %stream.protocol, "stream refused");
    }
}
