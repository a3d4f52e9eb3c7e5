//! The rendezvous's use cases, over the [`Store`] port, the CA and a [`Clock`]. They take and
//! return domain values and fail with a typed [`ServiceError`]; HTTP, JSON and base64 live in
//! the `http` adapter only. One module per concept: [`accounts`] (registration, login, second
//! factor), [`certificates`] (issuance, renewal, revocation and the CRL), [`prekeys`],
//! [`directory`] (lookup and presence) and [`mailbox`].

pub mod accounts;
pub mod blobs;
pub mod certificates;
pub mod directory;
mod error;
pub mod mailbox;
pub mod prekeys;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ed25519_dalek::VerifyingKey;
use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota as GovQuota, RateLimiter};
use peerchat_pki::{CertificateAuthority, Crl, Serial, TrustStore, Username, VerifiedPeer};
use tokio::sync::Notify;

pub use self::accounts::TotpEnrolment;
pub use self::certificates::Issued;
pub use self::directory::PeerRecord;
pub use self::error::ServiceError;
pub(crate) use self::error::internal;
pub use self::mailbox::{Mailbox, Stored};
pub use self::prekeys::{Bundle, PreKeySupply};
use crate::clock::{Clock, SystemClock};
use crate::connections::SourcePrefix;
use crate::limits::{Limits, Rate};
use crate::store::{Account, Change, Store};
use crate::totp_key::TotpKey;

/// The caller of a protected route, as its (unrevoked) certificate names it.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The username from the certificate.
    pub username: Username,
    /// The certificate's serial.
    pub serial: Serial,
    /// The certificate's key.
    pub identity_key: VerifyingKey,
}

struct Limiters {
    auth_per_prefix: DefaultKeyedRateLimiter<SourcePrefix>,
    registrations: DefaultKeyedRateLimiter<()>,
    login_per_account_prefix: DefaultKeyedRateLimiter<(Username, SourcePrefix)>,
    login_per_account: DefaultKeyedRateLimiter<Username>,
    one_time_per_pair: DefaultKeyedRateLimiter<(Username, Username)>,
    lookups_per_user: DefaultKeyedRateLimiter<Username>,
    deposits_per_user: DefaultKeyedRateLimiter<Username>,
}

fn limiter<K: std::hash::Hash + Eq + Clone>(rate: Rate) -> DefaultKeyedRateLimiter<K> {
    let burst = NonZeroU32::new(rate.burst.max(1)).unwrap_or(NonZeroU32::MIN);
    let quota = GovQuota::with_period(rate.period.max(Duration::from_nanos(1)))
        .unwrap_or_else(|| GovQuota::per_second(NonZeroU32::MIN))
        .allow_burst(burst);
    RateLimiter::keyed(quota)
}

fn check<K: std::hash::Hash + Eq + Clone>(
    limiter: &DefaultKeyedRateLimiter<K>,
    key: &K,
) -> Result<(), ServiceError> {
    limiter
        .check_key(key)
        .map_err(|not_until| ServiceError::RateLimited {
            retry_after: not_until.wait_time_from(DefaultClock::default().now()),
        })
}

/// The libp2p `PeerId` (base58) of an Ed25519 identity key.
pub fn peer_id_of(key: &VerifyingKey) -> Result<String, ServiceError> {
    let key = libp2p_identity::ed25519::PublicKey::try_from_bytes(key.as_bytes())
        .map_err(|e| internal("identity key", e))?;
    Ok(libp2p_identity::PublicKey::from(key)
        .to_peer_id()
        .to_string())
}

/// Unix seconds.
pub fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The rendezvous service.
pub struct Rendezvous<S: Store> {
    store: S,
    ca: CertificateAuthority,
    trust: Arc<TrustStore>,
    crl: RwLock<Arc<Crl>>,
    limits: Limits,
    limiters: Limiters,
    waiters: Mutex<HashMap<Username, Arc<Notify>>>,
    /// Signalled when the server shuts down: long polls answer at once.
    closing: Notify,
    /// Signalled when a new CRL is in force: long polls answer at once, with its number.
    new_crl: Notify,
    closed: std::sync::atomic::AtomicBool,
    /// Verified against when an account does not exist, so a login takes as long either way.
    dummy_hash: String,
    /// Seals TOTP secrets in the store.
    totp_key: TotpKey,
    /// Serializes the check-and-record of TOTP codes, so a code is accepted once even when two
    /// requests carry it at the same moment.
    totp_lock: tokio::sync::Mutex<()>,
    /// Where `now` comes from.
    clock: Arc<dyn Clock>,
    /// Where parked files live, if this rendezvous keeps them.
    blobs: Option<std::path::PathBuf>,
    /// Serializes changes to parked files (quota checks see a settled state).
    blob_lock: Mutex<()>,
}

impl<S: Store> std::fmt::Debug for Rendezvous<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rendezvous")
            .field("ca", &self.ca)
            .finish_non_exhaustive()
    }
}

impl<S: Store> Rendezvous<S> {
    /// Wires the service on the system clock and signs a first CRL from the stored
    /// revocations.
    pub async fn new(
        store: S,
        ca: CertificateAuthority,
        limits: Limits,
    ) -> Result<Self, ServiceError> {
        Self::with_clock(store, ca, limits, Arc::new(SystemClock)).await
    }

    /// [`Rendezvous::new`], with `now` from `clock`.
    pub async fn with_clock(
        store: S,
        ca: CertificateAuthority,
        limits: Limits,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ServiceError> {
        let now = clock.now();
        let trust = Arc::new(TrustStore::new(ca.certificate().clone()));
        let dummy_hash = accounts::hash_password(&limits, "no such account")?;
        let revoked = store.revoked().await?;
        let number = store.next_crl_number().await?;
        let crl = ca
            .sign_crl(&revoked, number, now, now + limits.crl_validity)
            .map_err(|e| internal("signing the CRL", e))?;
        store.save_crl(number, crl.der()).await?;
        store.flush().await?;
        store.publish(Change::Crl(number)).await?;
        trust
            .set_crl(crl.clone())
            .map_err(|e| internal("installing the CRL", e))?;
        Ok(Self {
            limiters: Limiters {
                auth_per_prefix: limiter(limits.auth_per_prefix),
                registrations: limiter(limits.registrations),
                login_per_account_prefix: limiter(limits.login_per_account_prefix),
                login_per_account: limiter(limits.login_per_account),
                one_time_per_pair: limiter(limits.one_time_prekeys_per_pair),
                lookups_per_user: limiter(limits.lookups_per_user),
                deposits_per_user: limiter(limits.deposits_per_user),
            },
            store,
            ca,
            trust,
            crl: RwLock::new(Arc::new(crl)),
            limits,
            waiters: Mutex::new(HashMap::new()),
            closing: Notify::new(),
            new_crl: Notify::new(),
            closed: std::sync::atomic::AtomicBool::new(false),
            dummy_hash,
            totp_key: TotpKey::generate(),
            totp_lock: tokio::sync::Mutex::new(()),
            clock,
            blobs: None,
            blob_lock: Mutex::new(()),
        })
    }

    /// Uses `key` to seal TOTP secrets (the binary loads it from beside `ca.key`; without this, a
    /// random key lives as long as the service).
    pub fn with_totp_key(mut self, key: TotpKey) -> Self {
        self.totp_key = key;
        self
    }

    /// Keeps parked files under `dir` (see [`blobs`]).
    pub fn with_blobs(mut self, dir: std::path::PathBuf) -> Self {
        self.blobs = Some(dir);
        self
    }

    /// The CA and current CRL, for the TLS server's client verifier.
    pub fn trust(&self) -> Arc<TrustStore> {
        self.trust.clone()
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The CA.
    pub fn ca(&self) -> &CertificateAuthority {
        &self.ca
    }

    /// The store (for metrics).
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The time now, from the clock port.
    pub fn now(&self) -> SystemTime {
        self.clock.now()
    }

    /// The caller of a protected route: a verified certificate that has not been revoked since.
    pub async fn authenticate(&self, peer: Option<&VerifiedPeer>) -> Result<Caller, ServiceError> {
        let peer = peer.ok_or(ServiceError::Unauthenticated)?;
        if self.store.is_revoked(&peer.serial).await? {
            return Err(ServiceError::CertificateRevoked);
        }
        Ok(Caller {
            username: peer.username.clone(),
            serial: peer.serial.clone(),
            identity_key: peer.identity_key,
        })
    }

    /// Periodic housekeeping: expired envelopes, idle rate-limiter entries, CRL freshness.
    #[tracing::instrument(name = "service.housekeeping", skip_all)]
    pub async fn housekeeping(&self) -> Result<(), ServiceError> {
        let now = self.now();
        let purged = self.store.purge_expired(unix(now)).await?;
        if purged > 0 {
            self.store.flush().await?;
            tracing::info!(purged, "expired envelopes dropped");
        }
        let swept = self.sweep_blobs()?;
        if swept > 0 {
            tracing::info!(swept, "expired parked files dropped");
        }
        for l in [
            &self.limiters.login_per_account,
            &self.limiters.lookups_per_user,
            &self.limiters.deposits_per_user,
        ] {
            l.retain_recent();
            l.shrink_to_fit();
        }
        self.limiters.auth_per_prefix.retain_recent();
        self.limiters.auth_per_prefix.shrink_to_fit();
        self.limiters.one_time_per_pair.retain_recent();
        self.limiters.one_time_per_pair.shrink_to_fit();
        self.limiters.login_per_account_prefix.retain_recent();
        self.limiters.login_per_account_prefix.shrink_to_fit();
        self.crl().await?;
        Ok(())
    }

    /// Ends every mailbox long poll now and any later one at once (the server is stopping).
    pub fn close(&self) {
        self.closed
            .store(true, std::sync::atomic::Ordering::Release);
        self.closing.notify_waiters();
    }

    /// Flushes everything (on shutdown).
    #[tracing::instrument(name = "service.flush", skip_all)]
    pub async fn flush(&self) -> Result<(), ServiceError> {
        self.store.flush().await?;
        Ok(())
    }

    /// Whether `owner` holds fewer one-time prekeys than the low threshold.
    async fn prekeys_low(&self, owner: &Username) -> Result<bool, ServiceError> {
        Ok(self.store.count_one_time_prekeys(owner).await? < self.limits.low_prekey_threshold)
    }

    /// Wakes `owner`'s long poll, if one is held.
    fn wake(&self, owner: &Username) {
        if let Some(waiter) = self
            .waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(owner)
        {
            waiter.notify_waiters();
        }
    }

    /// Wakes `owner`'s long poll here and on every instance sharing the store.
    async fn wake_everywhere(&self, owner: &Username) -> Result<(), ServiceError> {
        self.wake(owner);
        self.store.publish(Change::Mailbox(owner.clone())).await?;
        Ok(())
    }

    /// Acts on what the instances sharing the store publish: their deposits wake the long
    /// polls held here, their CRL is put in force here. Returns at once for a store that is
    /// not shared, else when the store stops publishing.
    pub async fn follow_changes(&self) {
        use tokio::sync::broadcast::error::RecvError;
        let Some(mut changes) = self.store.changes() else {
            return;
        };
        loop {
            let crl = match changes.recv().await {
                Ok(Change::Mailbox(owner)) => {
                    self.wake(&owner);
                    false
                }
                Ok(Change::Crl(number)) => number > self.current_crl_number(),
                Ok(Change::Missed) | Err(RecvError::Lagged(_)) => {
                    // Changes were lost: every long poll looks again, and so does the CRL.
                    tracing::warn!("changes from other instances missed; waking all");
                    let waiters: Vec<_> = self
                        .waiters
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .values()
                        .cloned()
                        .collect();
                    waiters.iter().for_each(|w| w.notify_waiters());
                    true
                }
                Err(RecvError::Closed) => return,
            };
            if crl && let Err(e) = self.load_crl().await {
                tracing::error!(error = %e, "the CRL another instance saved could not be loaded");
            }
        }
    }

    fn waiter(&self, owner: &Username) -> Arc<Notify> {
        self.waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(owner.clone())
            .or_default()
            .clone()
    }

    fn release_waiter(&self, owner: &Username, notify: Arc<Notify>) {
        let mut waiters = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        drop(notify);
        // Only the map holds it: nobody waits any more.
        if waiters
            .get(owner)
            .is_some_and(|n| Arc::strong_count(n) == 1)
        {
            waiters.remove(owner);
        }
    }

    async fn account_of(&self, caller: &Caller) -> Result<Account, ServiceError> {
        self.store
            .account(&caller.username)
            .await?
            .ok_or(ServiceError::NoSuchUser)
    }
}
