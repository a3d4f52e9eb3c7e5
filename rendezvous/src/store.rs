//! The storage port of the rendezvous, and the records it keeps.
//!
//! Implementations must make each method atomic on its own; the service never needs two methods to
//! happen together. Writes become durable only at [`Store::flush`], which the service awaits before
//! acknowledging anything to a client.

use std::future::Future;

use peerchat_pki::{RevokedEntry, Serial, Username};
use serde::{Deserialize, Serialize};

/// A storage failure. Adapters translate their own errors into this.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend failed (IO, corruption).
    #[error("storage backend: {0}")]
    Backend(String),
    /// A stored record could not be decoded.
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
}

/// An account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// The name.
    pub username: Username,
    /// PHC string of the Argon2id password hash.
    pub password_hash: String,
    /// The current identity key (Ed25519, 32 bytes).
    pub identity_key: [u8; 32],
    /// The libp2p `PeerId` of that key, computed once when the key is set.
    pub peer_id: String,
    /// The current certificate, DER.
    pub certificate: Vec<u8>,
    /// Its serial.
    pub serial: Serial,
    /// The second factor, if enrolled.
    pub totp: Option<TotpState>,
    /// Creation time, Unix seconds.
    pub created_at: u64,
}

/// A TOTP secret and whether it was confirmed (only a confirmed one is required at login).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TotpState {
    /// The shared secret.
    pub secret: TotpSecret,
    /// Confirmed with a valid code.
    pub confirmed: bool,
    /// The last 30-second time step whose code was accepted (0: none). A code of this step or an
    /// earlier one is refused, so each code works once.
    pub last_step: u64,
}

/// How a TOTP secret is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TotpSecret {
    /// Sealed with the key kept beside `ca.key` (see [`crate::totp_key`]).
    Sealed(Vec<u8>),
    /// In the clear: only accounts enrolled before secrets were sealed; sealed at their next use.
    Plain(Vec<u8>),
}

/// An account as stored before TOTP secrets were sealed and their codes made single use.
#[derive(Deserialize)]
pub(crate) struct LegacyAccount {
    username: Username,
    password_hash: String,
    identity_key: [u8; 32],
    peer_id: String,
    certificate: Vec<u8>,
    serial: Serial,
    totp: Option<LegacyTotpState>,
    created_at: u64,
}

#[derive(Deserialize)]
struct LegacyTotpState {
    secret: Vec<u8>,
    confirmed: bool,
}

impl From<LegacyAccount> for Account {
    fn from(a: LegacyAccount) -> Self {
        Self {
            username: a.username,
            password_hash: a.password_hash,
            identity_key: a.identity_key,
            peer_id: a.peer_id,
            certificate: a.certificate,
            serial: a.serial,
            totp: a.totp.map(|t| TotpState {
                secret: TotpSecret::Plain(t.secret),
                confirmed: t.confirmed,
                last_step: 0,
            }),
            created_at: a.created_at,
        }
    }
}

/// A stored signed prekey.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedPreKeyRecord {
    /// Its id.
    pub id: u32,
    /// X25519 public key.
    pub public_key: [u8; 32],
    /// Ed25519 signature (64 bytes).
    pub signature: Vec<u8>,
}

/// A stored one-time prekey.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OneTimePreKeyRecord {
    /// Its id.
    pub id: u32,
    /// X25519 public key.
    pub public_key: [u8; 32],
}

/// Announced addresses and until when they hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    /// Multiaddrs.
    pub addresses: Vec<String>,
    /// Expiry, Unix seconds.
    pub expires_at: u64,
}

/// An envelope waiting in a mailbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEnvelope {
    /// The sender's id for it.
    pub id: [u8; 16],
    /// Who deposited it.
    pub sender: Username,
    /// The opaque bytes.
    pub envelope: Vec<u8>,
    /// Deposit time, Unix seconds.
    pub deposited_at: u64,
    /// When it is dropped unread, Unix seconds.
    pub expires_at: u64,
    /// The Ed25519 key of the depositor's certificate, so the recipient knows which key sent it
    /// without a lookup (`None` for envelopes stored before it was recorded).
    pub sender_key: Option<[u8; 32]>,
}

/// A mailbox record as stored before the depositor's key was recorded.
#[derive(Deserialize)]
pub(crate) struct LegacyStoredEnvelope {
    id: [u8; 16],
    sender: Username,
    envelope: Vec<u8>,
    deposited_at: u64,
    expires_at: u64,
}

impl From<LegacyStoredEnvelope> for StoredEnvelope {
    fn from(e: LegacyStoredEnvelope) -> Self {
        Self {
            id: e.id,
            sender: e.sender,
            envelope: e.envelope,
            deposited_at: e.deposited_at,
            expires_at: e.expires_at,
            sender_key: None,
        }
    }
}

/// Result of a deposit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deposit {
    /// Stored.
    Stored,
    /// One with the same id was already waiting; nothing changed.
    Duplicate,
    /// The recipient's quota (count or bytes) is full; nothing changed.
    QuotaExceeded,
}

/// Per-mailbox quota, passed to [`Store::deposit`].
#[derive(Debug, Clone, Copy)]
pub struct Quota {
    /// Most envelopes.
    pub max_envelopes: u32,
    /// Most bytes.
    pub max_bytes: u64,
    /// Most envelopes from one sender: junk from one account cannot fill the mailbox.
    pub max_envelopes_per_sender: u32,
    /// Most bytes from one sender.
    pub max_bytes_per_sender: u64,
}

/// A change the other instances sharing a store must hear of (see [`Store::publish`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Mail (or a prekey shortage) for this user: a long poll of theirs answers.
    Mailbox(Username),
    /// A CRL with this number was saved ([`Store::save_crl`]): it is the one to serve.
    Crl(u64),
    /// Changes may have been missed (the store lost its way of hearing them for a while):
    /// every long poll looks again, and the newest CRL is loaded.
    Missed,
}

/// The storage port.
///
/// Several rendezvous instances may share one store (a database server); what they must agree
/// on — one-time prekeys handed out once, CRL numbers, TOTP steps, mailbox quotas — is decided
/// by the store, never by one instance's memory.
pub trait Store: Send + Sync + 'static {
    /// Creates `account`. MUST return `Ok(false)` and change nothing when the name is taken.
    fn create_account(
        &self,
        account: &Account,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// The account named `username`, if any.
    fn account(
        &self,
        username: &Username,
    ) -> impl Future<Output = Result<Option<Account>, StoreError>> + Send;
    /// Replaces an existing account record.
    fn update_account(
        &self,
        account: &Account,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Number of accounts.
    fn count_accounts(&self) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Remembers that `serial` was issued to `username` (so it can be revoked with the account).
    fn record_certificate(
        &self,
        username: &Username,
        serial: &Serial,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Serials ever issued to `username`.
    fn certificates_of(
        &self,
        username: &Username,
    ) -> impl Future<Output = Result<Vec<Serial>, StoreError>> + Send;
    /// Marks `serial` revoked at `at` (Unix seconds). Revoking twice keeps the first time.
    fn revoke(
        &self,
        serial: &Serial,
        at: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Whether `serial` is revoked.
    fn is_revoked(&self, serial: &Serial) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Every revoked serial.
    fn revoked(&self) -> impl Future<Output = Result<Vec<RevokedEntry>, StoreError>> + Send;
    /// A CRL number larger than every one returned before, across restarts.
    fn next_crl_number(&self) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Sets the signed prekey of `username`.
    fn set_signed_prekey(
        &self,
        username: &Username,
        key: &SignedPreKeyRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// The signed prekey of `username`.
    fn signed_prekey(
        &self,
        username: &Username,
    ) -> impl Future<Output = Result<Option<SignedPreKeyRecord>, StoreError>> + Send;
    /// Adds one-time prekeys, keeping at most `max` in total (extra ones are dropped; a known id
    /// is overwritten). Returns how many are stored afterwards.
    fn add_one_time_prekeys(
        &self,
        username: &Username,
        keys: &[OneTimePreKeyRecord],
        max: u32,
    ) -> impl Future<Output = Result<u32, StoreError>> + Send;
    /// Removes and returns one one-time prekey. MUST hand each key to at most one caller, however
    /// many call at once.
    fn take_one_time_prekey(
        &self,
        username: &Username,
    ) -> impl Future<Output = Result<Option<OneTimePreKeyRecord>, StoreError>> + Send;
    /// How many one-time prekeys `username` has.
    fn count_one_time_prekeys(
        &self,
        username: &Username,
    ) -> impl Future<Output = Result<u32, StoreError>> + Send;
    /// Forgets all prekeys of `username` (its identity key changed, so they are void).
    fn clear_prekeys(
        &self,
        username: &Username,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Sets the presence of `username`.
    fn set_presence(
        &self,
        username: &Username,
        presence: &Presence,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// The presence of `username` (possibly expired: the caller compares with its clock).
    fn presence(
        &self,
        username: &Username,
    ) -> impl Future<Output = Result<Option<Presence>, StoreError>> + Send;

    /// Adds an envelope to `recipient`'s mailbox unless one with its id waits already or the
    /// quota is full.
    fn deposit(
        &self,
        recipient: &Username,
        envelope: &StoredEnvelope,
        quota: Quota,
    ) -> impl Future<Output = Result<Deposit, StoreError>> + Send;
    /// Up to `limit` envelopes of `recipient`, oldest first, skipping those expired at `now`.
    fn mailbox(
        &self,
        recipient: &Username,
        now: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<StoredEnvelope>, StoreError>> + Send;
    /// Deletes `recipient`'s envelope `id`. Returns whether it was there.
    fn ack(
        &self,
        recipient: &Username,
        id: &[u8; 16],
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Deletes every envelope expired at `now`; returns how many.
    fn purge_expired(&self, now: u64) -> impl Future<Output = Result<u64, StoreError>> + Send;
    /// Envelopes waiting in all mailboxes.
    fn count_envelopes(&self) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// The newest CRL saved: its number and DER.
    fn latest_crl(&self)
    -> impl Future<Output = Result<Option<(u64, Vec<u8>)>, StoreError>> + Send;
    /// Saves a CRL signed with `number` (from [`Store::next_crl_number`]); a number lower than
    /// the newest saved changes nothing.
    fn save_crl(
        &self,
        number: u64,
        der: &[u8],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Replaces an existing account record only if the TOTP step it holds is still
    /// `prior_step`, atomically; returns whether it did. Of two logins with one code, on any
    /// instances, one wins.
    fn update_account_if_step(
        &self,
        account: &Account,
        prior_step: u64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Tells every instance sharing this store (this one included) of `change`. A store that
    /// one instance has to itself does nothing: that instance acts on its changes directly.
    fn publish(&self, change: Change) -> impl Future<Output = Result<(), StoreError>> + Send {
        let _ = change;
        std::future::ready(Ok(()))
    }
    /// Changes published by the instances sharing this store, if it is shared.
    fn changes(&self) -> Option<tokio::sync::broadcast::Receiver<Change>> {
        None
    }

    /// Makes every write so far durable.
    fn flush(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
}
