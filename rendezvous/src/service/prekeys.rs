//! Prekeys: each user's signed prekey (checked against their identity key) and one-time
//! prekeys, handed out in bundles, one one-time prekey per bundle and only a few per pair of
//! users, so no one can drain another's supply.

use ed25519_dalek::{Signature, Verifier};
use peerchat_pki::Username;

use super::{Caller, Rendezvous, ServiceError, check};
use crate::api::signed_prekey_message;
use crate::store::{OneTimePreKeyRecord, SignedPreKeyRecord, Store};

/// A user's prekey supply, as its owner sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreKeySupply {
    /// One-time prekeys left.
    pub one_time_prekeys: u32,
    /// Whether a signed prekey is published.
    pub signed_prekey: bool,
    /// Fewer one-time prekeys than the owner should hold.
    pub low: bool,
}

/// What starting a session with a user takes.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The user.
    pub username: Username,
    /// Their identity key.
    pub identity_key: [u8; 32],
    /// Their signed prekey.
    pub signed_prekey: SignedPreKeyRecord,
    /// One of their one-time prekeys, when one may be taken.
    pub one_time_prekey: Option<OneTimePreKeyRecord>,
    /// Their supply is low.
    pub low_prekeys: bool,
}

impl<S: Store> Rendezvous<S> {
    /// Stores the caller's signed prekey after checking its signature with the caller's key.
    #[tracing::instrument(name = "service.upload_signed_prekey", skip_all)]
    pub async fn upload_signed_prekey(
        &self,
        caller: &Caller,
        record: SignedPreKeyRecord,
    ) -> Result<PreKeySupply, ServiceError> {
        let signature = Signature::from_slice(&record.signature)
            .map_err(|_| ServiceError::BadSignature("the signature is not 64 bytes"))?;
        caller
            .identity_key
            .verify(
                &signed_prekey_message(record.id, &record.public_key),
                &signature,
            )
            .map_err(|_| {
                ServiceError::BadSignature("the signed prekey is not signed by your identity key")
            })?;
        self.store
            .set_signed_prekey(&caller.username, &record)
            .await?;
        self.store.flush().await?;
        self.prekey_status(caller).await
    }

    /// Adds one-time prekeys (up to the stored maximum).
    #[tracing::instrument(name = "service.upload_one_time_prekeys", skip_all)]
    pub async fn upload_one_time_prekeys(
        &self,
        caller: &Caller,
        keys: Vec<OneTimePreKeyRecord>,
    ) -> Result<PreKeySupply, ServiceError> {
        if keys.len() > self.limits.max_prekey_batch {
            return Err(ServiceError::TooManyPreKeys(self.limits.max_prekey_batch));
        }
        self.store
            .add_one_time_prekeys(&caller.username, &keys, self.limits.max_one_time_prekeys)
            .await?;
        self.store.flush().await?;
        self.prekey_status(caller).await
    }

    /// The caller's prekey supply.
    #[tracing::instrument(name = "service.prekey_status", skip_all)]
    pub async fn prekey_status(&self, caller: &Caller) -> Result<PreKeySupply, ServiceError> {
        let count = self.store.count_one_time_prekeys(&caller.username).await?;
        Ok(PreKeySupply {
            one_time_prekeys: count,
            signed_prekey: self.store.signed_prekey(&caller.username).await?.is_some(),
            low: count < self.limits.low_prekey_threshold,
        })
    }

    /// A user's prekey bundle, consuming one one-time prekey (durably, before answering).
    #[tracing::instrument(name = "service.bundle", skip_all)]
    pub async fn bundle(&self, caller: &Caller, target: &Username) -> Result<Bundle, ServiceError> {
        check(&self.limiters.lookups_per_user, &caller.username)?;
        let account = self
            .store
            .account(target)
            .await?
            .ok_or(ServiceError::NoSuchUser)?;
        let signed = self
            .store
            .signed_prekey(target)
            .await?
            .ok_or(ServiceError::NoPrekeys)?;
        // One session needs one one-time prekey: past a few per (caller, target), the bundle
        // carries the signed prekey only, so no one can drain another's supply.
        let may_take = self
            .limiters
            .one_time_per_pair
            .check_key(&(caller.username.clone(), target.clone()))
            .is_ok();
        let one_time = if may_take {
            self.store.take_one_time_prekey(target).await?
        } else {
            None
        };
        if one_time.is_some() {
            self.store.flush().await?;
        }
        let left = self.store.count_one_time_prekeys(target).await?;
        if one_time.is_some() && left < self.limits.low_prekey_threshold {
            // Tell the owner now, through the long poll it holds, not at its next refresh.
            self.wake_everywhere(target).await?;
        }
        Ok(Bundle {
            username: target.clone(),
            identity_key: account.identity_key,
            signed_prekey: signed,
            one_time_prekey: one_time,
            low_prekeys: left < self.limits.low_prekey_threshold,
        })
    }
}
