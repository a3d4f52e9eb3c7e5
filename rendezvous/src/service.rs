//! The rendezvous's use cases, over the [`Store`] port and the CA. HTTP lives in `http`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use axum::http::StatusCode;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota as GovQuota, RateLimiter};
use peerchat_pki::{
    CertificateAuthority, Crl, IssueError, IssuedCertificate, Serial, TrustStore, Username,
    VerifiedPeer,
};
use rand::rngs::OsRng;
use tokio::sync::Notify;

use crate::api;
use crate::connections::SourcePrefix;
use crate::error::ApiError;
use crate::limits::{Limits, Rate};
use crate::store::{
    Account, Deposit, OneTimePreKeyRecord, Presence, Quota, SignedPreKeyRecord, Store,
    StoredEnvelope, TotpSecret, TotpState,
};
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
) -> Result<(), ApiError> {
    limiter.check_key(key).map_err(|not_until| {
        ApiError::rate_limited(not_until.wait_time_from(DefaultClock::default().now()))
    })
}

/// The libp2p `PeerId` (base58) of an Ed25519 identity key.
pub fn peer_id_of(key: &VerifyingKey) -> Result<String, ApiError> {
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
}

impl<S: Store> std::fmt::Debug for Rendezvous<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rendezvous")
            .field("ca", &self.ca)
            .finish_non_exhaustive()
    }
}

impl<S: Store> Rendezvous<S> {
    /// Wires the service and signs a first CRL from the stored revocations.
    pub fn new(
        store: S,
        ca: CertificateAuthority,
        limits: Limits,
        now: SystemTime,
    ) -> Result<Self, ApiError> {
        let trust = Arc::new(TrustStore::new(ca.certificate().clone()));
        let dummy_hash = hash_password(&limits, "no such account")?;
        let revoked = store.revoked()?;
        let number = store.next_crl_number()?;
        let crl = ca
            .sign_crl(&revoked, number, now, now + limits.crl_validity)
            .map_err(|e| internal("signing the CRL", e))?;
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
        })
    }

    /// Uses `key` to seal TOTP secrets (the binary loads it from beside `ca.key`; without this, a
    /// random key lives as long as the service).
    pub fn with_totp_key(mut self, key: TotpKey) -> Self {
        self.totp_key = key;
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

    /// The caller of a protected route: a verified certificate that has not been revoked since.
    pub fn authenticate(&self, peer: Option<&VerifiedPeer>) -> Result<Caller, ApiError> {
        let peer = peer.ok_or_else(ApiError::unauthenticated)?;
        if self.store.is_revoked(&peer.serial)? {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "certificate_revoked",
                "this certificate has been revoked",
            ));
        }
        Ok(Caller {
            username: peer.username.clone(),
            serial: peer.serial.clone(),
            identity_key: peer.identity_key,
        })
    }

    /// The current CRL, re-signed when a day of its validity has passed.
    #[tracing::instrument(name = "service.crl", skip_all)]
    pub fn crl(&self, now: SystemTime) -> Result<Arc<Crl>, ApiError> {
        let current = self.crl.read().unwrap_or_else(|p| p.into_inner()).clone();
        if current.next_update() < now + self.limits.crl_validity - Duration::from_secs(24 * 3600) {
            return self.refresh_crl(now);
        }
        Ok(current)
    }

    /// The number of the CRL in force.
    fn current_crl_number(&self) -> u64 {
        self.crl.read().unwrap_or_else(|p| p.into_inner()).number()
    }

    fn refresh_crl(&self, now: SystemTime) -> Result<Arc<Crl>, ApiError> {
        let revoked = self.store.revoked()?;
        let number = self.store.next_crl_number()?;
        let crl = self
            .ca
            .sign_crl(&revoked, number, now, now + self.limits.crl_validity)
            .map_err(|e| internal("signing the CRL", e))?;
        let mut slot = self.crl.write().unwrap_or_else(|p| p.into_inner());
        // Concurrent refreshes may finish out of order: keep the newest.
        if crl.number() > slot.number() {
            self.trust
                .set_crl(crl.clone())
                .map_err(|e| internal("installing the CRL", e))?;
            *slot = Arc::new(crl);
            self.new_crl.notify_waiters();
        }
        Ok(slot.clone())
    }

    /// Creates an account and issues its first certificate.
    #[tracing::instrument(name = "service.register", skip_all)]
    pub async fn register(
        &self,
        client: IpAddr,
        request: api::RegisterRequest,
        now: SystemTime,
    ) -> Result<api::CertificateResponse, ApiError> {
        check(&self.limiters.auth_per_prefix, &SourcePrefix::of(client))?;
        validate_password(&request.password)?;
        check(&self.limiters.registrations, &())?;
        let csr = decode_b64("csr", &request.csr)?;
        if self.store.account(&request.username)?.is_some() {
            return Err(taken());
        }
        let issued = self.issue(&csr, &request.username, now)?;
        let password_hash = self.hash(request.password).await?;
        let account = Account {
            username: request.username.clone(),
            password_hash,
            identity_key: issued.public_key.to_bytes(),
            peer_id: peer_id_of(&issued.public_key)?,
            certificate: issued.der.to_vec(),
            serial: issued.serial.clone(),
            totp: None,
            created_at: unix(now),
        };
        if !self.store.create_account(&account)? {
            return Err(taken());
        }
        self.store
            .record_certificate(&request.username, &issued.serial)?;
        self.store.flush().await?;
        tracing::info!(user = %request.username, serial = %issued.serial, "account registered");
        Ok(self.certificate_response(&issued))
    }

    /// Logs in with password (and TOTP): issues a certificate for the CSR's key and revokes every
    /// older certificate of the account. A new key voids the stored prekeys.
    #[tracing::instrument(name = "service.login", skip_all)]
    pub async fn login(
        &self,
        client: IpAddr,
        request: api::LoginRequest,
        now: SystemTime,
    ) -> Result<api::CertificateResponse, ApiError> {
        let prefix = SourcePrefix::of(client);
        check(&self.limiters.auth_per_prefix, &prefix)?;
        check(
            &self.limiters.login_per_account_prefix,
            &(request.username.clone(), prefix),
        )?;
        check(&self.limiters.login_per_account, &request.username)?;
        let csr = decode_b64("csr", &request.csr)?;
        let account = self.store.account(&request.username)?;
        let hash = account
            .as_ref()
            .map_or(self.dummy_hash.clone(), |a| a.password_hash.clone());
        let password_ok = self.verify_password(request.password, hash).await?;
        let Some(mut account) = account.filter(|_| password_ok) else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "bad_credentials",
                "wrong username or password",
            ));
        };
        if account.totp.as_ref().is_some_and(|t| t.confirmed) {
            let _one_at_a_time = self.totp_lock.lock().await;
            // Read again under the lock: the last accepted step may have moved.
            let mut fresh = self
                .store
                .account(&account.username)?
                .ok_or_else(no_such_user)?;
            let code = request.totp.as_deref().unwrap_or_default();
            let accepted = match fresh.totp.as_mut() {
                Some(state) => self.accept_totp_code(state, &fresh.username, code, now)?,
                None => false,
            };
            if !accepted {
                return Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "totp_required",
                    "a valid TOTP code is required (each code works once)",
                ));
            }
            self.store.update_account(&fresh)?;
            self.store.flush().await?;
            account = fresh;
        }
        let issued = self.issue(&csr, &account.username, now)?;
        for serial in self.store.certificates_of(&account.username)? {
            self.store.revoke(&serial, unix(now))?;
        }
        if account.identity_key != issued.public_key.to_bytes() {
            self.store.clear_prekeys(&account.username)?;
        }
        account.identity_key = issued.public_key.to_bytes();
        account.peer_id = peer_id_of(&issued.public_key)?;
        account.certificate = issued.der.to_vec();
        account.serial = issued.serial.clone();
        self.store.update_account(&account)?;
        self.store
            .record_certificate(&account.username, &issued.serial)?;
        self.store.flush().await?;
        self.refresh_crl(now)?;
        tracing::info!(user = %account.username, serial = %issued.serial, "logged in, older certificates revoked");
        Ok(self.certificate_response(&issued))
    }

    /// A new certificate for the caller's current key.
    #[tracing::instrument(name = "service.renew", skip_all)]
    pub async fn renew(
        &self,
        caller: &Caller,
        request: api::RenewRequest,
        now: SystemTime,
    ) -> Result<api::CertificateResponse, ApiError> {
        let csr = decode_b64("csr", &request.csr)?;
        let issued = self.issue(&csr, &caller.username, now)?;
        if issued.public_key != caller.identity_key {
            return Err(ApiError::bad_request(
                "key_mismatch",
                "renewal keeps the key; log in to change it",
            ));
        }
        let mut account = self.account_of(caller)?;
        account.certificate = issued.der.to_vec();
        account.serial = issued.serial.clone();
        self.store.update_account(&account)?;
        self.store
            .record_certificate(&caller.username, &issued.serial)?;
        self.store.flush().await?;
        Ok(self.certificate_response(&issued))
    }

    /// Revokes the caller's certificate; it appears in the next CRL, returned here.
    #[tracing::instrument(name = "service.revoke", skip_all)]
    pub async fn revoke(&self, caller: &Caller, now: SystemTime) -> Result<(), ApiError> {
        self.store.revoke(&caller.serial, unix(now))?;
        self.store.flush().await?;
        self.refresh_crl(now)?;
        tracing::info!(user = %caller.username, serial = %caller.serial, "certificate revoked");
        Ok(())
    }

    /// Starts TOTP enrolment: a fresh secret, not required until confirmed.
    #[tracing::instrument(name = "service.totp_enrol", skip_all)]
    pub async fn totp_enrol(&self, caller: &Caller) -> Result<api::TotpEnrolment, ApiError> {
        let mut account = self.account_of(caller)?;
        if account.totp.as_ref().is_some_and(|t| t.confirmed) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "totp_enabled",
                "a second factor is already enabled",
            ));
        }
        let secret = totp_rs::Secret::generate_secret()
            .to_bytes()
            .map_err(|e| internal("TOTP secret", e))?;
        let totp = totp(&secret, &caller.username)?;
        let enrolment = api::TotpEnrolment {
            secret: totp.get_secret_base32(),
            uri: totp.get_url(),
        };
        account.totp = Some(TotpState {
            secret: TotpSecret::Sealed(self.totp_key.seal(&secret, caller.username.as_str())?),
            confirmed: false,
            last_step: 0,
        });
        self.store.update_account(&account)?;
        self.store.flush().await?;
        Ok(enrolment)
    }

    /// Confirms TOTP enrolment with a valid code.
    #[tracing::instrument(name = "service.totp_confirm", skip_all)]
    pub async fn totp_confirm(
        &self,
        caller: &Caller,
        request: api::TotpConfirm,
        now: SystemTime,
    ) -> Result<(), ApiError> {
        let _one_at_a_time = self.totp_lock.lock().await;
        let mut account = self.account_of(caller)?;
        let Some(state) = account.totp.as_mut() else {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "totp_not_enrolled",
                "start enrolment first",
            ));
        };
        if !self.accept_totp_code(state, &caller.username, &request.code, now)? {
            return Err(ApiError::bad_request(
                "totp_invalid",
                "the code is not valid now",
            ));
        }
        state.confirmed = true;
        self.store.update_account(&account)?;
        self.store.flush().await?;
        Ok(())
    }

    /// Stores the caller's signed prekey after checking its signature with the caller's key.
    #[tracing::instrument(name = "service.upload_signed_prekey", skip_all)]
    pub async fn upload_signed_prekey(
        &self,
        caller: &Caller,
        request: api::SignedPreKeyWire,
    ) -> Result<api::PreKeyStatus, ApiError> {
        let record = parse_signed_prekey(&request)?;
        let signature = Signature::from_slice(&record.signature)
            .map_err(|_| ApiError::bad_request("bad_signature", "the signature is not 64 bytes"))?;
        caller
            .identity_key
            .verify(
                &api::signed_prekey_message(record.id, &record.public_key),
                &signature,
            )
            .map_err(|_| {
                ApiError::bad_request(
                    "bad_signature",
                    "the signed prekey is not signed by your identity key",
                )
            })?;
        self.store.set_signed_prekey(&caller.username, &record)?;
        self.store.flush().await?;
        self.prekey_status(caller)
    }

    /// Adds one-time prekeys (up to the stored maximum).
    #[tracing::instrument(name = "service.upload_one_time_prekeys", skip_all)]
    pub async fn upload_one_time_prekeys(
        &self,
        caller: &Caller,
        request: api::OneTimePreKeysUpload,
    ) -> Result<api::PreKeyStatus, ApiError> {
        if request.keys.len() > self.limits.max_prekey_batch {
            return Err(ApiError::bad_request(
                "too_many_prekeys",
                format!(
                    "at most {} one-time prekeys per upload",
                    self.limits.max_prekey_batch
                ),
            ));
        }
        let keys = request
            .keys
            .iter()
            .map(|k| {
                Ok(OneTimePreKeyRecord {
                    id: k.id,
                    public_key: decode_key("public_key", &k.public_key)?,
                })
            })
            .collect::<Result<Vec<_>, ApiError>>()?;
        self.store.add_one_time_prekeys(
            &caller.username,
            &keys,
            self.limits.max_one_time_prekeys,
        )?;
        self.store.flush().await?;
        self.prekey_status(caller)
    }

    /// The caller's prekey supply.
    #[tracing::instrument(name = "service.prekey_status", skip_all)]
    pub fn prekey_status(&self, caller: &Caller) -> Result<api::PreKeyStatus, ApiError> {
        let count = self.store.count_one_time_prekeys(&caller.username)?;
        Ok(api::PreKeyStatus {
            one_time_prekeys: count,
            signed_prekey: self.store.signed_prekey(&caller.username)?.is_some(),
            low: count < self.limits.low_prekey_threshold,
        })
    }

    /// A user's prekey bundle, consuming one one-time prekey (durably, before answering).
    #[tracing::instrument(name = "service.bundle", skip_all)]
    pub async fn bundle(
        &self,
        caller: &Caller,
        target: &Username,
    ) -> Result<api::BundleResponse, ApiError> {
        check(&self.limiters.lookups_per_user, &caller.username)?;
        let account = self.store.account(target)?.ok_or_else(no_such_user)?;
        let signed = self.store.signed_prekey(target)?.ok_or_else(|| {
            ApiError::not_found("no_prekeys", "this user has not published prekeys yet")
        })?;
        // One session needs one one-time prekey: past a few per (caller, target), the bundle
        // carries the signed prekey only, so no one can drain another's supply.
        let may_take = self
            .limiters
            .one_time_per_pair
            .check_key(&(caller.username.clone(), target.clone()))
            .is_ok();
        let one_time = if may_take {
            self.store.take_one_time_prekey(target)?
        } else {
            None
        };
        if one_time.is_some() {
            self.store.flush().await?;
        }
        let left = self.store.count_one_time_prekeys(target)?;
        if one_time.is_some() && left < self.limits.low_prekey_threshold {
            // Tell the owner now, through the long poll it holds, not at its next refresh.
            self.wake(target);
        }
        Ok(api::BundleResponse {
            username: target.clone(),
            identity_key: B64.encode(account.identity_key),
            signed_prekey: api::SignedPreKeyWire {
                id: signed.id,
                public_key: B64.encode(signed.public_key),
                signature: B64.encode(&signed.signature),
            },
            one_time_prekey: one_time.map(|k| api::OneTimePreKeyWire {
                id: k.id,
                public_key: B64.encode(k.public_key),
            }),
            low_prekeys: left < self.limits.low_prekey_threshold,
        })
    }

    /// Exact-name lookup.
    #[tracing::instrument(name = "service.lookup", skip_all)]
    pub fn lookup(
        &self,
        caller: &Caller,
        target: &Username,
        now: SystemTime,
    ) -> Result<api::LookupResponse, ApiError> {
        check(&self.limiters.lookups_per_user, &caller.username)?;
        let account = self.store.account(target)?.ok_or_else(no_such_user)?;
        let presence = self
            .store
            .presence(target)?
            .filter(|p| p.expires_at > unix(now));
        Ok(api::LookupResponse {
            username: target.clone(),
            certificate: pem("CERTIFICATE", &account.certificate),
            peer_id: account.peer_id,
            identity_key: B64.encode(account.identity_key),
            online: presence.is_some(),
            addresses: presence.map(|p| p.addresses).unwrap_or_default(),
        })
    }

    /// Announces the caller's addresses for a while.
    #[tracing::instrument(name = "service.announce", skip_all)]
    pub async fn announce(
        &self,
        caller: &Caller,
        request: api::PresenceRequest,
        now: SystemTime,
    ) -> Result<(), ApiError> {
        if request.addresses.len() > self.limits.max_addresses
            || request.addresses.iter().any(|a| {
                a.is_empty() || a.len() > self.limits.max_address_len || !a.starts_with('/')
            })
        {
            return Err(ApiError::bad_request(
                "bad_addresses",
                format!(
                    "at most {} multiaddrs of at most {} characters",
                    self.limits.max_addresses, self.limits.max_address_len
                ),
            ));
        }
        let ttl = Duration::from_secs(request.ttl_secs).min(self.limits.max_presence_ttl);
        self.store.set_presence(
            &caller.username,
            &Presence {
                addresses: request.addresses,
                expires_at: unix(now + ttl),
            },
        )?;
        self.store.flush().await?;
        Ok(())
    }

    /// Leaves an envelope for `recipient`.
    #[tracing::instrument(name = "service.deposit", skip_all)]
    pub async fn deposit(
        &self,
        caller: &Caller,
        recipient: &Username,
        request: api::DepositRequest,
        now: SystemTime,
    ) -> Result<api::DepositResponse, ApiError> {
        check(&self.limiters.deposits_per_user, &caller.username)?;
        let id = parse_id(&request.id)?;
        let envelope = decode_b64("envelope", &request.envelope)?;
        if envelope.len() > self.limits.max_envelope_bytes {
            return Err(ApiError::too_large(format!(
                "an envelope is at most {} bytes",
                self.limits.max_envelope_bytes
            )));
        }
        if self.store.account(recipient)?.is_none() {
            return Err(no_such_user());
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
        let status = match self.store.deposit(recipient, &stored, quota)? {
            Deposit::Stored => api::DepositStatus::Stored,
            Deposit::Duplicate => api::DepositStatus::Duplicate,
            Deposit::QuotaExceeded => {
                return Err(ApiError::new(
                    StatusCode::INSUFFICIENT_STORAGE,
                    "mailbox_full",
                    "the recipient's mailbox is full; try again later",
                ));
            }
        };
        self.store.flush().await?;
        if status == api::DepositStatus::Stored {
            self.wake(recipient);
        }
        Ok(api::DepositResponse { status })
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
    ) -> Result<api::MailboxResponse, ApiError> {
        own_mailbox(caller, owner)?;
        let wait = wait.min(self.limits.max_mailbox_wait);
        let deadline = tokio::time::Instant::now() + wait;
        // Woken once already: if the owner's prekeys are low, that is news worth answering.
        let mut woken = false;
        loop {
            let low_news = woken && self.prekeys_low(owner)?;
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
                match self.store.mailbox(owner, unix(SystemTime::now()), 100) {
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
            if self.store.is_revoked(&caller.serial)? {
                return Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "certificate_revoked",
                    "this certificate has been revoked",
                ));
            }
            // `None`: woken by a deposit, or by a bundle fetch that left the owner's prekeys
            // low: look again (and answer the latter, so the owner tops up at once).
            let Some(envelopes) = outcome? else {
                woken = true;
                continue;
            };
            return Ok(api::MailboxResponse {
                envelopes: envelopes
                    .into_iter()
                    .map(|e| api::MailboxEnvelope {
                        id: hex(&e.id),
                        sender: e.sender,
                        envelope: B64.encode(&e.envelope),
                        deposited_at: e.deposited_at,
                        sender_key: e.sender_key.map(|k| B64.encode(k)),
                    })
                    .collect(),
                crl_number: Some(self.current_crl_number()),
                prekeys_low: self.prekeys_low(owner)?,
            });
        }
    }

    /// Deletes one of the caller's envelopes.
    #[tracing::instrument(name = "service.ack", skip_all)]
    pub async fn ack(&self, caller: &Caller, owner: &Username, id: &str) -> Result<(), ApiError> {
        own_mailbox(caller, owner)?;
        let id = parse_id(id)?;
        if !self.store.ack(owner, &id)? {
            return Err(ApiError::not_found(
                "no_such_envelope",
                "no envelope with that id is waiting",
            ));
        }
        self.store.flush().await?;
        Ok(())
    }

    /// Periodic housekeeping: expired envelopes, idle rate-limiter entries, CRL freshness.
    #[tracing::instrument(name = "service.housekeeping", skip_all)]
    pub async fn housekeeping(&self, now: SystemTime) -> Result<(), ApiError> {
        let purged = self.store.purge_expired(unix(now))?;
        if purged > 0 {
            self.store.flush().await?;
            tracing::info!(purged, "expired envelopes dropped");
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
        self.crl(now)?;
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
    pub async fn flush(&self) -> Result<(), ApiError> {
        self.store.flush().await?;
        Ok(())
    }

    /// Whether `owner` holds fewer one-time prekeys than the low threshold.
    fn prekeys_low(&self, owner: &Username) -> Result<bool, ApiError> {
        Ok(self.store.count_one_time_prekeys(owner)? < self.limits.low_prekey_threshold)
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

    /// Whether `code` is a valid code of `state` not used before; if so, its step is recorded
    /// (and a secret still in the clear is sealed). The caller holds `totp_lock` and stores the
    /// account.
    fn accept_totp_code(
        &self,
        state: &mut TotpState,
        username: &Username,
        code: &str,
        now: SystemTime,
    ) -> Result<bool, ApiError> {
        let secret = match &state.secret {
            TotpSecret::Sealed(sealed) => self.totp_key.open(sealed, username.as_str())?,
            TotpSecret::Plain(secret) => zeroize::Zeroizing::new(secret.clone()),
        };
        let Some(step) = totp_step(&secret, username, code, now)? else {
            return Ok(false);
        };
        if step <= state.last_step {
            return Ok(false);
        }
        state.last_step = step;
        if matches!(state.secret, TotpSecret::Plain(_)) {
            state.secret = TotpSecret::Sealed(self.totp_key.seal(&secret, username.as_str())?);
        }
        Ok(true)
    }

    fn account_of(&self, caller: &Caller) -> Result<Account, ApiError> {
        self.store
            .account(&caller.username)?
            .ok_or_else(no_such_user)
    }

    fn issue(
        &self,
        csr: &[u8],
        username: &Username,
        now: SystemTime,
    ) -> Result<IssuedCertificate, ApiError> {
        self.ca
            .issue_peer(
                csr,
                username,
                now,
                self.limits.certificate_validity,
                &mut OsRng,
            )
            .map_err(|e| match e {
                IssueError::Rcgen(e) => internal("issuing a certificate", e),
                other => ApiError::bad_request("bad_csr", other.to_string()),
            })
    }

    fn certificate_response(&self, issued: &IssuedCertificate) -> api::CertificateResponse {
        api::CertificateResponse {
            certificate: issued.to_pem(),
            ca: self.ca.certificate().to_pem(),
            serial: issued.serial.to_hex(),
            not_after: unix(issued.not_after),
        }
    }

    async fn hash(&self, password: String) -> Result<String, ApiError> {
        let limits = self.limits.clone();
        tokio::task::spawn_blocking(move || hash_password(&limits, &password))
            .await
            .map_err(|e| internal("password hashing task", e))?
    }

    async fn verify_password(&self, password: String, hash: String) -> Result<bool, ApiError> {
        let limits = self.limits.clone();
        tokio::task::spawn_blocking(move || {
            let parsed =
                PasswordHash::new(&hash).map_err(|e| internal("stored password hash", e))?;
            Ok(argon2(&limits)?
                .verify_password(password.as_bytes(), &parsed)
                .is_ok())
        })
        .await
        .map_err(|e| internal("password hashing task", e))?
    }
}

fn argon2(limits: &Limits) -> Result<Argon2<'static>, ApiError> {
    let params = Params::new(limits.argon2_memory_kib, 2, 1, None)
        .map_err(|e| internal("argon2 parameters", e))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

fn hash_password(limits: &Limits, password: &str) -> Result<String, ApiError> {
    let salt = SaltString::generate(&mut OsRng);
    Ok(argon2(limits)?
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| internal("password hashing", e))?
        .to_string())
}

fn validate_password(password: &str) -> Result<(), ApiError> {
    let chars = password.chars().count();
    if !(8..=1024).contains(&chars) {
        return Err(ApiError::bad_request(
            "weak_password",
            "a password has 8 to 1024 characters",
        ));
    }
    Ok(())
}

fn totp(secret: &[u8], username: &Username) -> Result<totp_rs::TOTP, ApiError> {
    totp_rs::TOTP::new(
        totp_rs::Algorithm::SHA1,
        6,
        1,
        30,
        secret.to_vec(),
        Some("peerchat".into()),
        username.to_string(),
    )
    .map_err(|e| internal("TOTP", e))
}

/// The time step (30 s) among now's, the one before and the one after whose code is `code`.
fn totp_step(
    secret: &[u8],
    username: &Username,
    code: &str,
    now: SystemTime,
) -> Result<Option<u64>, ApiError> {
    use subtle::ConstantTimeEq;
    let totp = totp(secret, username)?;
    let code = code.trim();
    let step = unix(now) / TOTP_STEP_SECS;
    Ok([step.saturating_sub(1), step, step + 1]
        .into_iter()
        .find(|s| {
            let expected = totp.generate(s * TOTP_STEP_SECS);
            expected.len() == code.len() && bool::from(expected.as_bytes().ct_eq(code.as_bytes()))
        }))
}

/// Length of a TOTP time step.
const TOTP_STEP_SECS: u64 = 30;

fn own_mailbox(caller: &Caller, owner: &Username) -> Result<(), ApiError> {
    if caller.username != *owner {
        return Err(ApiError::forbidden(
            "only the owner may read or acknowledge a mailbox",
        ));
    }
    Ok(())
}

fn taken() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "username_taken",
        "this username is taken",
    )
}

fn no_such_user() -> ApiError {
    ApiError::not_found("no_such_user", "no user has that name")
}

fn internal(what: &str, e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "{what} failed");
    ApiError::internal()
}

fn decode_b64(field: &'static str, value: &str) -> Result<Vec<u8>, ApiError> {
    B64.decode(value.trim())
        .map_err(|_| ApiError::bad_request("bad_base64", format!("`{field}` is not valid base64")))
}

fn decode_key(field: &'static str, value: &str) -> Result<[u8; 32], ApiError> {
    <[u8; 32]>::try_from(decode_b64(field, value)?)
        .map_err(|_| ApiError::bad_request("bad_key", format!("`{field}` is not a 32-byte key")))
}

fn parse_signed_prekey(wire: &api::SignedPreKeyWire) -> Result<SignedPreKeyRecord, ApiError> {
    Ok(SignedPreKeyRecord {
        id: wire.id,
        public_key: decode_key("public_key", &wire.public_key)?,
        signature: decode_b64("signature", &wire.signature)?,
    })
}

fn parse_id(id: &str) -> Result<[u8; 16], ApiError> {
    let bad = || ApiError::bad_request("bad_id", "an envelope id is 32 hexadecimal digits");
    if id.len() != 32 || !id.is_ascii() {
        return Err(bad());
    }
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&id[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = B64.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
