//! What the service refuses, as a typed error. The HTTP adapter alone turns it into a status
//! code and a stable error code.

use std::time::Duration;

use crate::store::StoreError;

/// Why the service refused or failed. Messages never contain secrets or other users' data.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The name belongs to another account.
    #[error("this username is taken")]
    UsernameTaken,
    /// The password is too short or too long.
    #[error("a password has 8 to 1024 characters")]
    WeakPassword,
    /// Wrong username or password (the same answer for both).
    #[error("wrong username or password")]
    BadCredentials,
    /// The account has a second factor and the code was missing, wrong or used before.
    #[error("a valid TOTP code is required (each code works once)")]
    TotpRequired,
    /// The code given to confirm a second factor is not valid now.
    #[error("the code is not valid now")]
    TotpInvalid,
    /// A second factor is enabled already.
    #[error("a second factor is already enabled")]
    TotpAlreadyEnabled,
    /// No enrolment was started.
    #[error("start enrolment first")]
    TotpNotEnrolled,
    /// Too many requests; the caller may try again after `retry_after`.
    #[error("too many requests; try again later")]
    RateLimited {
        /// When to try again.
        retry_after: Duration,
    },
    /// No account has that name.
    #[error("no user has that name")]
    NoSuchUser,
    /// The user has not published prekeys.
    #[error("this user has not published prekeys yet")]
    NoPrekeys,
    /// The caller presented no certificate of this rendezvous.
    #[error("this route needs a client certificate issued by this rendezvous")]
    Unauthenticated,
    /// The caller's certificate was revoked.
    #[error("this certificate has been revoked")]
    CertificateRevoked,
    /// Someone else's mailbox.
    #[error("only the owner may read or acknowledge a mailbox")]
    NotYourMailbox,
    /// An envelope over the size limit.
    #[error("an envelope is at most {0} bytes")]
    EnvelopeTooLarge(usize),
    /// The recipient's mailbox (or the sender's share of it) is full.
    #[error("the recipient's mailbox is full; try again later")]
    MailboxFull,
    /// No such envelope waits.
    #[error("no envelope with that id is waiting")]
    NoSuchEnvelope,
    /// A signature that is malformed or not made with the caller's key.
    #[error("{0}")]
    BadSignature(&'static str),
    /// A certificate request that cannot be certified.
    #[error("{0}")]
    BadCsr(String),
    /// A renewal for another key than the certificate's.
    #[error("renewal keeps the key; log in to change it")]
    KeyMismatch,
    /// Too many one-time prekeys in one upload.
    #[error("at most {0} one-time prekeys per upload")]
    TooManyPreKeys(usize),
    /// Addresses that are too many, too long or not multiaddrs.
    #[error("at most {max} multiaddrs of at most {max_len} characters")]
    BadAddresses {
        /// Most addresses.
        max: usize,
        /// Longest address.
        max_len: usize,
    },
    /// This rendezvous keeps no parked files.
    #[error("this rendezvous does not keep parked files")]
    NoBlobStore,
    /// A parked file or chunk that does not fit its description.
    #[error("{0}")]
    BadBlob(&'static str),
    /// A parked file or chunk over the limit.
    #[error("a parked file is at most {0} bytes")]
    BlobTooLarge(u64),
    /// Another file is parked under that id.
    #[error("another file is parked under that id")]
    BlobExists,
    /// The caller's parked files would exceed its quota.
    #[error("your parked files would exceed {0} bytes; try again when some are fetched")]
    BlobQuota(u64),
    /// No file is parked under that id (or it expired).
    #[error("no file is parked under that id")]
    NoSuchBlob,
    /// Someone else's parked file.
    #[error("only a parked file's owner and readers may use it")]
    NotYourBlob,
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Something else failed (logged where it happened).
    #[error("the server failed; try again later")]
    Internal,
}

/// Logs `e` as the failure of `what` and answers [`ServiceError::Internal`].
pub(crate) fn internal(what: &str, e: impl std::fmt::Display) -> ServiceError {
    tracing::error!(error = %e, "{what} failed");
    ServiceError::Internal
}
