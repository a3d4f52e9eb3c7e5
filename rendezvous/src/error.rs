//! The API's error type: an HTTP status, a stable code and a message, rendered as JSON.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::api::ErrorBody;
use crate::store::StoreError;

/// An error answered to a client. Messages never contain secrets or other users' data.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// Explanation for people.
    pub message: String,
    /// For 429: when to try again.
    pub retry_after: Option<Duration>,
}

impl ApiError {
    /// An error with this status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 400 Bad Request.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 401: no (valid) client certificate.
    pub fn unauthenticated() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "certificate_required",
            "this route needs a client certificate issued by this rendezvous",
        )
    }

    /// 403.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 404.
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    /// 429 with Retry-After.
    pub fn rate_limited(retry_after: Duration) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many requests; try again later",
            )
        }
    }

    /// 413.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message)
    }

    /// 408: the client did not send its request in time.
    pub fn request_timeout(message: impl Into<String>) -> Self {
        Self::new(StatusCode::REQUEST_TIMEOUT, "request_timeout", message)
    }

    /// 500: the details go to the log, not to the client.
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the server failed; try again later",
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "storage failure");
        Self::internal()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.code.to_owned(),
            message: self.message,
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(after) = self.retry_after {
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        response
    }
}

impl From<crate::service::ServiceError> for ApiError {
    fn from(e: crate::service::ServiceError) -> Self {
        use crate::service::ServiceError as E;
        let message = e.to_string();
        match e {
            E::UsernameTaken => Self::new(StatusCode::CONFLICT, "username_taken", message),
            E::WeakPassword => Self::bad_request("weak_password", message),
            E::BadCredentials => Self::new(StatusCode::UNAUTHORIZED, "bad_credentials", message),
            E::TotpRequired => Self::new(StatusCode::UNAUTHORIZED, "totp_required", message),
            E::TotpInvalid => Self::bad_request("totp_invalid", message),
            E::TotpAlreadyEnabled => Self::new(StatusCode::CONFLICT, "totp_enabled", message),
            E::TotpNotEnrolled => Self::new(StatusCode::CONFLICT, "totp_not_enrolled", message),
            E::RateLimited { retry_after } => Self::rate_limited(retry_after),
            E::NoSuchUser => Self::not_found("no_such_user", message),
            E::NoPrekeys => Self::not_found("no_prekeys", message),
            E::Unauthenticated => Self::unauthenticated(),
            E::CertificateRevoked => {
                Self::new(StatusCode::UNAUTHORIZED, "certificate_revoked", message)
            }
            E::NotYourMailbox => Self::forbidden(message),
            E::EnvelopeTooLarge(_) => Self::too_large(message),
            E::MailboxFull => Self::new(StatusCode::INSUFFICIENT_STORAGE, "mailbox_full", message),
            E::NoSuchEnvelope => Self::not_found("no_such_envelope", message),
            E::BadSignature(_) => Self::bad_request("bad_signature", message),
            E::BadCsr(_) => Self::bad_request("bad_csr", message),
            E::KeyMismatch => Self::bad_request("key_mismatch", message),
            E::TooManyPreKeys(_) => Self::bad_request("too_many_prekeys", message),
            E::BadAddresses { .. } => Self::bad_request("bad_addresses", message),
            E::NoBlobStore => Self::not_found("no_blob_store", message),
            E::BadBlob(_) => Self::bad_request("bad_blob", message),
            E::BlobTooLarge(_) => Self::too_large(message),
            E::BlobExists => Self::new(StatusCode::CONFLICT, "blob_exists", message),
            E::BlobQuota(_) => Self::new(StatusCode::INSUFFICIENT_STORAGE, "blob_quota", message),
            E::NoSuchBlob => Self::not_found("no_such_blob", message),
            E::NotYourBlob => Self::forbidden(message),
            E::Store(e) => e.into(),
            E::Internal => Self::internal(),
        }
    }
}
