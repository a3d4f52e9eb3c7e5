//! Accounts: registration, login on a new install, and the second factor (TOTP).

use std::net::IpAddr;
use std::time::SystemTime;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use peerchat_pki::Username;
use rand::rngs::OsRng;

use super::{Caller, Issued, Rendezvous, ServiceError, check, internal, peer_id_of, unix};
use crate::connections::SourcePrefix;
use crate::limits::Limits;
use crate::store::{Account, Store, TotpSecret, TotpState};

/// A second factor being enabled: the shared secret for an authenticator app.
#[derive(Clone, PartialEq, Eq)]
pub struct TotpEnrolment {
    /// The secret, base32 (as authenticator apps take it).
    pub secret: String,
    /// The same as an `otpauth://` URI.
    pub uri: String,
}

impl std::fmt::Debug for TotpEnrolment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TotpEnrolment(<redacted>)")
    }
}

impl<S: Store> Rendezvous<S> {
    /// Creates an account and issues its first certificate.
    #[tracing::instrument(name = "service.register", skip_all)]
    pub async fn register(
        &self,
        client: IpAddr,
        username: &Username,
        password: String,
        csr: &[u8],
    ) -> Result<Issued, ServiceError> {
        let now = self.now();
        check(&self.limiters.auth_per_prefix, &SourcePrefix::of(client))?;
        validate_password(&password)?;
        check(&self.limiters.registrations, &())?;
        // The relay's certificate carries a reserved name: no user may hold it.
        if username.as_str() == crate::relay::RELAY_USERNAME
            || self.store.account(username).await?.is_some()
        {
            return Err(ServiceError::UsernameTaken);
        }
        let issued = self.issue(csr, username, now)?;
        let password_hash = self.hash(password).await?;
        let account = Account {
            username: username.clone(),
            password_hash,
            identity_key: issued.public_key.to_bytes(),
            peer_id: peer_id_of(&issued.public_key)?,
            certificate: issued.der.to_vec(),
            serial: issued.serial.clone(),
            totp: None,
            created_at: unix(now),
        };
        if !self.store.create_account(&account).await? {
            return Err(ServiceError::UsernameTaken);
        }
        self.store
            .record_certificate(username, &issued.serial)
            .await?;
        self.store.flush().await?;
        tracing::info!(user = %username, serial = %issued.serial, "account registered");
        Ok(self.issued(&issued))
    }

    /// Logs in with password (and TOTP): issues a certificate for the CSR's key and revokes every
    /// older certificate of the account. A new key voids the stored prekeys.
    #[tracing::instrument(name = "service.login", skip_all)]
    pub async fn login(
        &self,
        client: IpAddr,
        username: &Username,
        password: String,
        totp: Option<&str>,
        csr: &[u8],
    ) -> Result<Issued, ServiceError> {
        let now = self.now();
        let prefix = SourcePrefix::of(client);
        check(&self.limiters.auth_per_prefix, &prefix)?;
        check(
            &self.limiters.login_per_account_prefix,
            &(username.clone(), prefix),
        )?;
        check(&self.limiters.login_per_account, username)?;
        let account = self.store.account(username).await?;
        let hash = account
            .as_ref()
            .map_or(self.dummy_hash.clone(), |a| a.password_hash.clone());
        let password_ok = self.verify_password(password, hash).await?;
        let Some(mut account) = account.filter(|_| password_ok) else {
            return Err(ServiceError::BadCredentials);
        };
        if account.totp.as_ref().is_some_and(|t| t.confirmed) {
            let _one_at_a_time = self.totp_lock.lock().await;
            // Read again under the lock: the last accepted step may have moved.
            let mut fresh = self
                .store
                .account(&account.username)
                .await?
                .ok_or(ServiceError::NoSuchUser)?;
            let code = totp.unwrap_or_default();
            let prior_step = fresh.totp.as_ref().map_or(0, |t| t.last_step);
            let accepted = match fresh.totp.as_mut() {
                Some(state) => self.accept_totp_code(state, &fresh.username, code, now)?,
                None => false,
            };
            // Recorded only if no other instance accepted a code meanwhile: the lock above
            // covers this instance, the store's compare-and-set all of them.
            if !accepted
                || !self
                    .store
                    .update_account_if_step(&fresh, prior_step)
                    .await?
            {
                return Err(ServiceError::TotpRequired);
            }
            self.store.flush().await?;
            account = fresh;
        }
        let issued = self.issue(csr, &account.username, now)?;
        for serial in self.store.certificates_of(&account.username).await? {
            self.store.revoke(&serial, unix(now)).await?;
        }
        if account.identity_key != issued.public_key.to_bytes() {
            self.store.clear_prekeys(&account.username).await?;
        }
        account.identity_key = issued.public_key.to_bytes();
        account.peer_id = peer_id_of(&issued.public_key)?;
        account.certificate = issued.der.to_vec();
        account.serial = issued.serial.clone();
        self.store.update_account(&account).await?;
        self.store
            .record_certificate(&account.username, &issued.serial)
            .await?;
        self.store.flush().await?;
        self.refresh_crl(now).await?;
        tracing::info!(user = %account.username, serial = %issued.serial, "logged in, older certificates revoked");
        Ok(self.issued(&issued))
    }

    /// Starts TOTP enrolment: a fresh secret, not required until confirmed.
    #[tracing::instrument(name = "service.totp_enrol", skip_all)]
    pub async fn totp_enrol(&self, caller: &Caller) -> Result<TotpEnrolment, ServiceError> {
        let mut account = self.account_of(caller).await?;
        if account.totp.as_ref().is_some_and(|t| t.confirmed) {
            return Err(ServiceError::TotpAlreadyEnabled);
        }
        let secret = totp_rs::Secret::generate_secret()
            .to_bytes()
            .map_err(|e| internal("TOTP secret", e))?;
        let totp = totp(&secret, &caller.username)?;
        let enrolment = TotpEnrolment {
            secret: totp.get_secret_base32(),
            uri: totp.get_url(),
        };
        account.totp = Some(TotpState {
            secret: TotpSecret::Sealed(self.totp_key.seal(&secret, caller.username.as_str())?),
            confirmed: false,
            last_step: 0,
        });
        self.store.update_account(&account).await?;
        self.store.flush().await?;
        Ok(enrolment)
    }

    /// Confirms TOTP enrolment with a valid code.
    #[tracing::instrument(name = "service.totp_confirm", skip_all)]
    pub async fn totp_confirm(&self, caller: &Caller, code: &str) -> Result<(), ServiceError> {
        let now = self.now();
        let _one_at_a_time = self.totp_lock.lock().await;
        let mut account = self.account_of(caller).await?;
        let Some(state) = account.totp.as_mut() else {
            return Err(ServiceError::TotpNotEnrolled);
        };
        let prior_step = state.last_step;
        if !self.accept_totp_code(state, &caller.username, code, now)? {
            return Err(ServiceError::TotpInvalid);
        }
        state.confirmed = true;
        if !self
            .store
            .update_account_if_step(&account, prior_step)
            .await?
        {
            return Err(ServiceError::TotpInvalid);
        }
        self.store.flush().await?;
        Ok(())
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
    ) -> Result<bool, ServiceError> {
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

    async fn hash(&self, password: String) -> Result<String, ServiceError> {
        let limits = self.limits.clone();
        tokio::task::spawn_blocking(move || hash_password(&limits, &password))
            .await
            .map_err(|e| internal("password hashing task", e))?
    }

    async fn verify_password(&self, password: String, hash: String) -> Result<bool, ServiceError> {
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

fn argon2(limits: &Limits) -> Result<Argon2<'static>, ServiceError> {
    let params = Params::new(limits.argon2_memory_kib, 2, 1, None)
        .map_err(|e| internal("argon2 parameters", e))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

pub(super) fn hash_password(limits: &Limits, password: &str) -> Result<String, ServiceError> {
    let salt = SaltString::generate(&mut OsRng);
    Ok(argon2(limits)?
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| internal("password hashing", e))?
        .to_string())
}

fn validate_password(password: &str) -> Result<(), ServiceError> {
    let chars = password.chars().count();
    if !(8..=1024).contains(&chars) {
        return Err(ServiceError::WeakPassword);
    }
    Ok(())
}

fn totp(secret: &[u8], username: &Username) -> Result<totp_rs::TOTP, ServiceError> {
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
) -> Result<Option<u64>, ServiceError> {
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
