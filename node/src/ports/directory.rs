//! The rendezvous port: accounts, certificates, prekeys, lookup, mailbox and presence.

use std::future::Future;

use peerchat_pki::Username;

use crate::domain::{FileId, IdentityKey, MessageId, OneTimePreKey, PreKeyBundle, SignedPreKey};

/// Why the rendezvous could not serve a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirectoryError {
    /// The name is taken by another account.
    #[error("that username is taken")]
    UsernameTaken,
    /// The rendezvous refused a username or password it will not accept, saying why.
    #[error("{0}")]
    Rejected(String),
    /// Wrong username or password.
    #[error("wrong username or password")]
    BadCredentials,
    /// The account has a second factor and the code was missing, wrong or used before.
    #[error("a valid code of the account's second factor is needed (each code works once)")]
    TotpRequired,
    /// The code given to confirm a second factor is not valid now.
    #[error("that code is not valid now")]
    TotpInvalid,
    /// A second factor is enabled already.
    #[error("a second factor is already enabled")]
    TotpAlreadyEnabled,
    /// No second factor enrolment was started.
    #[error("start enabling a second factor first")]
    TotpNotEnrolled,
    /// The rendezvous asks us to slow down.
    #[error("too many requests; try again later")]
    RateLimited,
    /// The rendezvous has no such user (the caller names it with [`DirectoryError::naming`]).
    #[error("no such user")]
    UnknownUser,
    /// Any other refusal, with the server's code and message.
    #[error("{message} ({code})")]
    Refused {
        /// The server's code.
        code: String,
        /// The server's explanation.
        message: String,
    },
    /// No such user.
    #[error("no user named {0}")]
    NoSuchUser(Username),
    /// The server could not be reached or answered nonsense.
    #[error("the rendezvous is unavailable: {0}")]
    Unavailable(String),
    /// The server's CA is not the one pinned.
    #[error("the rendezvous presents another CA than the one pinned ({0})")]
    CaMismatch(String),
}

impl DirectoryError {
    /// This error, naming `user` when the rendezvous said that no such user exists.
    pub fn naming(self, user: &Username) -> Self {
        match self {
            Self::UnknownUser => Self::NoSuchUser(user.clone()),
            other => other,
        }
    }

    /// Whether the same request may succeed later: the rendezvous is unreachable, or it asked
    /// us to slow down.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::RateLimited)
    }

    /// The rendezvous's error body as a typed error: its stable codes become variants here, at
    /// the edge, so nothing past the adapters matches on strings.
    pub fn from_code(code: &str, message: String) -> Self {
        match code {
            "username_taken" => Self::UsernameTaken,
            "weak_password" | "bad_username" => Self::Rejected(message),
            "bad_credentials" => Self::BadCredentials,
            "totp_required" => Self::TotpRequired,
            "totp_invalid" => Self::TotpInvalid,
            "totp_enabled" => Self::TotpAlreadyEnabled,
            "totp_not_enrolled" => Self::TotpNotEnrolled,
            "rate_limited" => Self::RateLimited,
            "no_such_user" => Self::UnknownUser,
            _ => Self::Refused {
                code: code.to_owned(),
                message,
            },
        }
    }
}

/// Certificates issued at registration.
#[derive(Debug, Clone)]
pub struct Issued {
    /// Our certificate, PEM.
    pub certificate_pem: String,
    /// The CA certificate, PEM.
    pub ca_pem: String,
}

/// What a lookup tells about a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// The user.
    pub username: Username,
    /// Their certified identity key.
    pub identity_key: IdentityKey,
    /// Announced addresses.
    pub addresses: Vec<String>,
    /// Whether they announced presence recently.
    pub online: bool,
}

/// One answer of the mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    /// The waiting envelopes.
    pub items: Vec<MailItem>,
    /// The number of the CRL in force at the rendezvous (absent from an older rendezvous).
    pub crl_number: Option<u64>,
    /// Our one-time prekeys are running low at the rendezvous.
    pub prekeys_low: bool,
}

/// An envelope from the mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailItem {
    /// Its id (the message id the sender chose).
    pub id: MessageId,
    /// The depositor, as its certificate named it.
    pub sender: Username,
    /// The envelope bytes.
    pub envelope: Vec<u8>,
    /// The key of the depositor's certificate, as the rendezvous recorded it (absent from an
    /// older rendezvous: then the sender's certified key is looked up).
    pub sender_key: Option<IdentityKey>,
}

/// A second factor being enabled: the shared secret, for an authenticator app.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TotpEnrolment {
    /// The secret, base32.
    pub secret: String,
    /// The same as an `otpauth://` URI (for a QR code).
    pub uri: String,
}

impl std::fmt::Debug for TotpEnrolment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TotpEnrolment(<redacted>)")
    }
}

/// The rendezvous, as the use cases need it.
pub trait Directory: Send + Sync + 'static {
    /// Creates the account; returns the certificate for `csr` and the CA.
    fn register(
        &self,
        username: &Username,
        password: &str,
        csr: &[u8],
    ) -> impl Future<Output = Result<Issued, DirectoryError>> + Send;
    /// Logs in on a new install: a certificate for `csr`'s new key; the account's older
    /// certificates are revoked by the rendezvous.
    fn login(
        &self,
        username: &Username,
        password: &str,
        totp: Option<&str>,
        csr: &[u8],
    ) -> impl Future<Output = Result<Issued, DirectoryError>> + Send;
    /// Starts enabling a second factor (TOTP) on our account.
    fn totp_enrol(&self) -> impl Future<Output = Result<TotpEnrolment, DirectoryError>> + Send;
    /// Enables the second factor with a first valid code.
    fn totp_confirm(&self, code: &str) -> impl Future<Output = Result<(), DirectoryError>> + Send;
    /// A new certificate for our current key (`csr` made with it).
    fn renew(&self, csr: &[u8]) -> impl Future<Output = Result<Issued, DirectoryError>> + Send;
    /// Revokes our current certificate (logout).
    fn logout(&self) -> impl Future<Output = Result<(), DirectoryError>> + Send;
    /// From now on, authenticate with this certificate and key.
    fn authenticate(
        &self,
        certificate_pem: &str,
        key: &ed25519_dalek::SigningKey,
    ) -> Result<(), DirectoryError>;
    /// Publishes our signed prekey and one-time prekeys; returns how many one-time prekeys the
    /// server holds.
    fn upload_prekeys(
        &self,
        signed: Option<SignedPreKey>,
        one_time: Vec<OneTimePreKey>,
    ) -> impl Future<Output = Result<u32, DirectoryError>> + Send;
    /// Exact-name lookup.
    fn lookup(
        &self,
        username: &Username,
    ) -> impl Future<Output = Result<PeerInfo, DirectoryError>> + Send;
    /// A prekey bundle (consumes one of their one-time prekeys).
    fn bundle(
        &self,
        username: &Username,
    ) -> impl Future<Output = Result<PreKeyBundle, DirectoryError>> + Send;
    /// Leaves an envelope in `to`'s mailbox (a second deposit with the same id is accepted and
    /// changes nothing).
    fn deposit(
        &self,
        to: &Username,
        id: &MessageId,
        envelope: &[u8],
    ) -> impl Future<Output = Result<(), DirectoryError>> + Send;
    /// Our waiting envelopes, oldest first; waits up to `wait_secs` for one to arrive or for a
    /// CRL newer than `known_crl` (answered at once when `known_crl` is older already).
    fn fetch_mail(
        &self,
        wait_secs: u64,
        known_crl: Option<u64>,
    ) -> impl Future<Output = Result<Mailbox, DirectoryError>> + Send;
    /// Deletes one of our envelopes (after it has been stored or refused for good).
    fn ack_mail(&self, id: &MessageId) -> impl Future<Output = Result<(), DirectoryError>> + Send;
    /// The CA's current CRL, DER, as served (the caller verifies it against the pinned CA).
    fn crl(&self) -> impl Future<Output = Result<Vec<u8>, DirectoryError>> + Send;
    /// Announces our addresses for `ttl_secs`.
    fn announce(
        &self,
        addresses: Vec<String>,
        ttl_secs: u64,
    ) -> impl Future<Output = Result<(), DirectoryError>> + Send;
    /// Parks a file with the rendezvous for `readers`: `size` bytes of sealed chunks in
    /// `chunks` chunks (uploaded with [`Directory::park_chunk`]).
    fn park(
        &self,
        id: &FileId,
        size: u64,
        chunks: u32,
        readers: &[Username],
    ) -> impl Future<Output = Result<(), DirectoryError>> + Send;
    /// Uploads sealed chunk `index` of a file we parked.
    fn park_chunk(
        &self,
        id: &FileId,
        index: u32,
        sealed: &[u8],
    ) -> impl Future<Output = Result<(), DirectoryError>> + Send;
    /// Sealed chunk `index` of a file parked for us; `None` if it is not there.
    fn parked_chunk(
        &self,
        id: &FileId,
        index: u32,
    ) -> impl Future<Output = Result<Option<Vec<u8>>, DirectoryError>> + Send;
    /// We have a parked file (a reader), or withdraw it (its owner).
    fn unpark(&self, id: &FileId) -> impl Future<Output = Result<(), DirectoryError>> + Send;
}
