//! The local HTTP API: loopback only. The CLI authenticates with the bearer token kept in the
//! data directory; the chat window ([`super::ui`]) with a session cookie from a one-time link.

use std::future::Future;
use std::sync::Arc;

use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use peerchat_pki::Username;
use rand::rngs::OsRng;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use super::ui;

mod backup;
mod people;
use crate::domain::{Change, GroupId, GroupState, MessageId};
use crate::ports::{Direction, DirectoryError, MessageStatus, Page};
use crate::usecases::{KeyKind, NodeError, NodeOf, NodeStatus, Ports};
pub use backup::BackupBody;
pub use people::{ProfileBody, RequestView, TypingAnswer, TypingBody};

/// Largest request body.
const MAX_BODY: usize = 64 * 1024;

/// `POST /api/v1/register`.
#[derive(Debug, Serialize, Deserialize)]
pub struct RegisterBody {
    /// The account name.
    pub username: Username,
    /// The password.
    pub password: String,
}

/// `POST /api/v1/login`.
#[derive(Debug, Serialize, Deserialize)]
pub struct LoginBody {
    /// The account name.
    pub username: Username,
    /// The password.
    pub password: String,
    /// The current code of the account's second factor, if it has one.
    #[serde(default)]
    pub totp: Option<String>,
}

/// `POST /api/v1/totp/confirm`.
#[derive(Debug, Serialize, Deserialize)]
pub struct TotpCodeBody {
    /// A current code from the authenticator app.
    pub code: String,
}

/// `GET /api/v1/contacts/{peer}/presence`.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PresenceView {
    /// Whether the rendezvous has live addresses for them.
    pub online: bool,
}

/// `POST /api/v1/contacts`.
#[derive(Debug, Serialize, Deserialize)]
pub struct AddContactBody {
    /// Who.
    pub username: Username,
}

/// `POST /api/v1/messages`.
#[derive(Debug, Serialize, Deserialize)]
pub struct SendBody {
    /// The recipient.
    pub to: Username,
    /// The text.
    pub text: String,
    /// The client's id for the message (retrying with it never sends twice); chosen by the node
    /// when absent.
    #[serde(default)]
    pub id: Option<MessageId>,
    /// The message of the conversation this one replies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<MessageId>,
}

/// `POST …/messages/{id}/amend`: edit or delete our message, or react to any.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum AmendBody {
    /// Replace the text of our message (within 24 hours of sending it).
    Edit {
        /// The new text.
        text: String,
    },
    /// Delete our message for everyone (within 24 hours of sending it).
    Delete,
    /// React with one emoji, replacing our reaction; `null` removes it.
    React {
        /// The emoji.
        emoji: Option<String>,
    },
}

impl From<AmendBody> for crate::domain::Amendment {
    fn from(body: AmendBody) -> Self {
        match body {
            AmendBody::Edit { text } => Self::Edit { body: text },
            AmendBody::Delete => Self::Delete,
            AmendBody::React { emoji } => Self::React { emoji },
        }
    }
}

/// Answer to a send.
#[derive(Debug, Serialize, Deserialize)]
pub struct SendAnswer {
    /// The message id.
    pub id: MessageId,
    /// Its status after the first delivery attempt.
    pub status: MessageStatus,
}

/// A contact as the API shows it.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ContactView {
    /// Their username.
    pub username: Username,
    /// Their pinned identity key, hex.
    pub identity_key: String,
    /// Whether the safety number was confirmed.
    pub verified: bool,
    /// The contact presents a new key not yet accepted; messages to them are held.
    pub key_changed: bool,
    /// A connection with them is open.
    #[serde(default)]
    pub online: bool,
    /// Its path: `direct`, `relayed`, or `null` without one.
    #[serde(default)]
    pub path: Option<crate::ports::Path>,
    /// Their address on it (a multiaddr), or `null`.
    #[serde(default)]
    pub remote_address: Option<String>,
    /// The name they gave themselves, if they shared a profile.
    #[serde(default)]
    pub display_name: Option<String>,
    /// They shared an avatar (`GET /api/v1/contacts/{name}/avatar`).
    #[serde(default)]
    pub avatar: bool,
    /// They wrote first and the user has not taken the conversation up.
    #[serde(default)]
    pub request: bool,
    /// The user blocked them.
    #[serde(default)]
    pub blocked: bool,
}

/// `GET /api/v1/contacts/{peer}/safety-number`.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SafetyNumberView {
    /// The 60 digits in 12 groups of 5.
    pub number: String,
    /// The scannable form, hex (for a QR code).
    pub scannable: String,
    /// Whose key it is made of: `pinned`, `pending` (a new key not accepted yet: compare this
    /// one before accepting) or `certified` (not a contact yet).
    pub key: KeyKind,
    /// With a pending key: the pinned (old) key's number, for reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
}

/// `POST /api/v1/contacts/{peer}/verify`.
#[derive(Debug, Serialize, Deserialize)]
pub struct VerifyBody {
    /// The safety number as read from the other person's screen.
    pub number: String,
}

/// A message as the API shows it.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq, Clone)]
pub struct MessageView {
    /// Its id.
    pub id: MessageId,
    /// Who wrote it.
    pub author: Username,
    /// `outgoing` or `incoming`.
    pub direction: Direction,
    /// The text.
    pub text: String,
    /// The sender's clock, ms since the epoch.
    pub sent_at_ms: u64,
    /// Its status (for our group message: the least advanced member's).
    pub status: MessageStatus,
    /// The group, for a group message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<GroupId>,
    /// For our group message: each recipient's status, and how far it got over all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipts: Option<ReceiptsView>,
    /// The message of the conversation it replies to.
    #[serde(default)]
    pub reply_to: Option<MessageId>,
    /// Edited by its author since it was sent.
    #[serde(default)]
    pub edited: bool,
    /// Deleted for everyone by its author (the text is gone).
    #[serde(default)]
    pub deleted: bool,
    /// One emoji per person who reacted.
    #[serde(default)]
    pub reactions: std::collections::BTreeMap<Username, String>,
}

/// Who has our group message: per member, and counted.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq, Clone)]
pub struct ReceiptsView {
    /// Members it was sent to.
    pub recipients: usize,
    /// Members that stored it (delivered or read).
    pub delivered: usize,
    /// Members that showed it.
    pub read: usize,
    /// Each member's status.
    pub members: std::collections::BTreeMap<Username, MessageStatus>,
}

/// A group as the API shows it.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq, Clone)]
pub struct GroupView {
    /// Its id.
    pub id: GroupId,
    /// Its name.
    pub name: String,
    /// Its members, by name.
    pub members: Vec<Username>,
    /// Who may change it, the creator first.
    pub admins: Vec<Username>,
    /// How many changes made it.
    pub version: u64,
    /// Whether we are a member (false once we left or were removed).
    pub member: bool,
}

impl GroupView {
    fn of(state: GroupState, me: &Username) -> Self {
        Self {
            id: state.id,
            member: state.members.contains(me),
            name: state.name,
            members: state.members.into_iter().collect(),
            admins: state.admins,
            version: state.version,
        }
    }
}

/// `POST /api/v1/groups`.
#[derive(Debug, Serialize, Deserialize)]
pub struct CreateGroupBody {
    /// The name.
    pub name: String,
    /// The other members.
    pub members: Vec<Username>,
}

/// `POST /api/v1/groups/{id}/changes`: one change.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum GroupChangeBody {
    /// Members join.
    Add {
        /// Who.
        members: Vec<Username>,
    },
    /// Members are removed.
    Remove {
        /// Who.
        members: Vec<Username>,
    },
    /// We leave.
    Leave,
    /// A new name.
    Rename {
        /// The name.
        name: String,
    },
    /// A member becomes an admin.
    Promote {
        /// Who.
        member: Username,
    },
}

/// `POST /api/v1/groups/{id}/messages`.
#[derive(Debug, Serialize, Deserialize)]
pub struct GroupSendBody {
    /// The text.
    pub text: String,
    /// The client's id for the message, as for [`SendBody::id`].
    #[serde(default)]
    pub id: Option<MessageId>,
    /// The group's message this one replies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<MessageId>,
}

/// A file as the API shows it (never its key).
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq, Clone)]
pub struct FileView {
    /// Its id.
    pub id: crate::domain::FileId,
    /// Its name.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its media type.
    pub media_type: String,
    /// Who offered it, or to whom we offered it.
    pub peer: Username,
    /// `outgoing` or `incoming`.
    pub direction: Direction,
    /// `offered`, `downloading`, `complete`, `failed` or `cancelled`.
    pub state: crate::ports::FileState,
    /// Bytes stored so far.
    pub bytes_done: u64,
    /// Where a complete download is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saved_as: Option<String>,
    /// The group it was offered to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<crate::domain::GroupId>,
    /// When it was offered, ms since the epoch.
    #[serde(default)]
    pub at_ms: u64,
}

impl From<crate::ports::FileRecord> for FileView {
    fn from(f: crate::ports::FileRecord) -> Self {
        Self {
            bytes_done: f.bytes_done(),
            id: f.offer.id,
            name: f.offer.name,
            size: f.offer.size,
            media_type: f.offer.media_type,
            peer: f.peer,
            direction: f.direction,
            state: f.state,
            saved_as: f.saved_as,
            group: f.group,
            at_ms: f.at_ms,
        }
    }
}

/// `POST /api/v1/files`: offer a file on this machine to a peer or a group (one of the two).
#[derive(Debug, Serialize, Deserialize)]
pub struct SendFileBody {
    /// The recipient.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Username>,
    /// The group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<crate::domain::GroupId>,
    /// Whether a file to one person is also parked with the rendezvous (`never`,
    /// `if_offline`, the default, or `always`).
    #[serde(default)]
    pub park: crate::usecases::Parking,
    /// The file's path, as the daemon sees it.
    pub path: std::path::PathBuf,
}

/// `POST /api/v1/files/{id}/save`: copy a complete download.
#[derive(Debug, Serialize, Deserialize)]
pub struct SaveFileBody {
    /// Where to (a file that must not exist yet).
    pub dest: std::path::PathBuf,
}

/// A conversation as the API shows it.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConversationView {
    /// The other person, for a direct conversation.
    pub peer: Option<Username>,
    /// The group, for a group's conversation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<GroupView>,
    /// How many messages.
    pub messages: u64,
    /// Messages from them not yet shown.
    pub unread: u64,
    /// The latest message.
    pub last: MessageView,
    /// A direct conversation the other person started and the user has not taken up.
    #[serde(default)]
    pub request: bool,
    /// The other person's display name, if they shared one.
    #[serde(default)]
    pub display_name: Option<String>,
}

/// An API error: `{ "error": code, "message": text }`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorView {
    /// Stable code.
    pub error: String,
    /// For people.
    pub message: String,
}

struct ApiError(StatusCode, &'static str, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.0,
            Json(ErrorView {
                error: self.1.into(),
                message: self.2,
            }),
        )
            .into_response()
    }
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> Self {
        let message = e.to_string();
        match &e {
            NodeError::NotRegistered => ApiError(StatusCode::CONFLICT, "not_registered", message),
            NodeError::AlreadyRegistered(_) => {
                ApiError(StatusCode::CONFLICT, "already_registered", message)
            }
            NodeError::KeyChanged(_) => ApiError(StatusCode::CONFLICT, "key_changed", message),
            NodeError::NotRetryable => ApiError(StatusCode::CONFLICT, "not_retryable", message),
            NodeError::OwnAccount(_) => ApiError(StatusCode::BAD_REQUEST, "own_account", message),
            NodeError::UnknownContact(_) => {
                ApiError(StatusCode::NOT_FOUND, "unknown_contact", message)
            }
            NodeError::NoKeyChange(_) => ApiError(StatusCode::CONFLICT, "no_key_change", message),
            NodeError::SafetyNumberMismatch => {
                ApiError(StatusCode::BAD_REQUEST, "safety_number_mismatch", message)
            }
            NodeError::Content(_) => ApiError(StatusCode::BAD_REQUEST, "bad_message", message),
            NodeError::File(_) => ApiError(StatusCode::BAD_REQUEST, "bad_file", message),
            NodeError::BadQuery(_) => ApiError(StatusCode::BAD_REQUEST, "bad_query", message),
            NodeError::NoSuchMessage(_) => {
                ApiError(StatusCode::NOT_FOUND, "no_such_message", message)
            }
            NodeError::Blocked(_) => ApiError(StatusCode::FORBIDDEN, "blocked", message),
            NodeError::AlreadyBlocked(_) => {
                ApiError(StatusCode::CONFLICT, "already_blocked", message)
            }
            NodeError::NotBlocked(_) => ApiError(StatusCode::CONFLICT, "not_blocked", message),
            NodeError::NoRequest(_) => ApiError(StatusCode::NOT_FOUND, "no_request", message),
            NodeError::Profile(_) => ApiError(StatusCode::BAD_REQUEST, "bad_profile", message),
            NodeError::Backup(crate::usecases::BackupFailure::OtherAccount(..)) => {
                ApiError(StatusCode::CONFLICT, "other_account", message)
            }
            NodeError::Backup(_) => ApiError(StatusCode::BAD_REQUEST, "bad_backup", message),
            NodeError::Amend(refused) => {
                use crate::domain::AmendRefused;
                let (status, code) = match refused {
                    AmendRefused::NotAuthor => (StatusCode::FORBIDDEN, "not_author"),
                    AmendRefused::TooLate => (StatusCode::CONFLICT, "too_late"),
                    AmendRefused::Deleted => (StatusCode::CONFLICT, "deleted"),
                    AmendRefused::NotAnEmoji | AmendRefused::TextTooLong => {
                        (StatusCode::BAD_REQUEST, "bad_amendment")
                    }
                };
                ApiError(status, code, message)
            }
            NodeError::UnknownGroup(_) => ApiError(StatusCode::NOT_FOUND, "unknown_group", message),
            NodeError::NotMember(_) => ApiError(StatusCode::FORBIDDEN, "not_member", message),
            NodeError::Group(crate::domain::GroupError::NotAllowed(_)) => {
                ApiError(StatusCode::FORBIDDEN, "not_allowed", message)
            }
            NodeError::Group(_) => ApiError(StatusCode::BAD_REQUEST, "bad_group_change", message),
            NodeError::MemberUnreachable { .. } => {
                ApiError(StatusCode::BAD_GATEWAY, "member_unreachable", message)
            }
            NodeError::Directory(d) => {
                let (status, code) = match d {
                    DirectoryError::NoSuchUser(_) | DirectoryError::UnknownUser => {
                        (StatusCode::NOT_FOUND, "no_such_user")
                    }
                    DirectoryError::UsernameTaken => (StatusCode::CONFLICT, "username_taken"),
                    DirectoryError::Rejected(_) => (StatusCode::BAD_REQUEST, "rejected"),
                    DirectoryError::BadCredentials => (StatusCode::UNAUTHORIZED, "bad_credentials"),
                    DirectoryError::TotpRequired => (StatusCode::UNAUTHORIZED, "totp_required"),
                    DirectoryError::TotpInvalid => (StatusCode::BAD_REQUEST, "totp_invalid"),
                    DirectoryError::TotpAlreadyEnabled => (StatusCode::CONFLICT, "totp_enabled"),
                    DirectoryError::TotpNotEnrolled => (StatusCode::CONFLICT, "totp_not_enrolled"),
                    DirectoryError::RateLimited => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
                    DirectoryError::Refused { .. } => {
                        (StatusCode::BAD_GATEWAY, "rendezvous_refused")
                    }
                    DirectoryError::Unavailable(_) | DirectoryError::CaMismatch(_) => {
                        (StatusCode::BAD_GATEWAY, "rendezvous_unavailable")
                    }
                };
                ApiError(status, code, message)
            }
            NodeError::Store(crate::ports::StoreError::Full) => {
                tracing::error!("the disk is full: a request stored nothing");
                ApiError(StatusCode::INSUFFICIENT_STORAGE, "disk_full", message)
            }
            _ => {
                tracing::error!(error = %e, "request failed");
                ApiError(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
            }
        }
    }
}

/// A JSON body within the size limit (`LIMIT` bytes); failures are JSON errors.
struct Body<T, const LIMIT: usize = MAX_BODY>(T);

impl<S: Send + Sync, T: DeserializeOwned, const LIMIT: usize> FromRequest<S> for Body<T, LIMIT> {
    type Rejection = ApiError;

    async fn from_request(request: Request, _: &S) -> Result<Self, ApiError> {
        let bytes = axum::body::to_bytes(request.into_body(), LIMIT)
            .await
            .map_err(|_| {
                ApiError(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    format!("a request is at most {LIMIT} bytes"),
                )
            })?;
        serde_json::from_slice(&bytes).map(Body).map_err(|e| {
            ApiError(
                StatusCode::BAD_REQUEST,
                "malformed_request",
                format!("the request is not valid: {}", without_position(&e)),
            )
        })
    }
}

/// A JSON error without serde's "at line 1 column 20", which means nothing to a person.
fn without_position(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

fn view(m: crate::ports::StoredMessage, me: &Username) -> MessageView {
    let receipts =
        (m.group.is_some() && m.direction == Direction::Outgoing).then(|| ReceiptsView {
            recipients: m.receipts.len(),
            delivered: m.receipts_at_least(MessageStatus::Delivered),
            read: m.receipts_at_least(MessageStatus::Read),
            members: m.receipts.clone(),
        });
    MessageView {
        id: m.id,
        author: if m.direction == Direction::Outgoing {
            me.clone()
        } else {
            m.peer.clone()
        },
        direction: m.direction,
        text: m.body,
        sent_at_ms: m.sent_at_ms,
        status: m.status,
        group: m.group,
        receipts,
        reply_to: m.reply_to,
        edited: m.edited_at_ms.is_some(),
        deleted: m.deleted,
        reactions: m.reactions,
    }
}

fn group_id(raw: &str) -> Result<GroupId, ApiError> {
    raw.parse().map_err(|_| {
        ApiError(
            StatusCode::BAD_REQUEST,
            "bad_group",
            "a group id is 32 hexadecimal digits".into(),
        )
    })
}

fn peer(raw: &str) -> Result<Username, ApiError> {
    Username::new(raw).map_err(|e| ApiError(StatusCode::BAD_REQUEST, "bad_username", e.to_string()))
}

/// What the API needs around the node: the token, events, window sessions and shutdown.
pub struct ApiState<P: Ports> {
    /// The node.
    pub node: Arc<NodeOf<P>>,
    /// The bearer token.
    pub token: String,
    /// A new subscription to the node's real-time events.
    pub subscribe:
        Box<dyn Fn() -> tokio::sync::broadcast::Receiver<crate::ports::Event> + Send + Sync>,
    /// The chat window's one-time links and sessions.
    pub ui: ui::Sessions,
    /// Cancelled when the daemon stops: event streams end, so shutdown need not wait for open
    /// windows.
    pub closing: tokio_util::sync::CancellationToken,
    /// Where files uploaded by the window wait while they are offered (each in a directory of
    /// its own, removed once the node has its copy).
    pub uploads: std::path::PathBuf,
}

/// The API router.
pub fn router<P: Ports>(state: ApiState<P>) -> Router {
    let state = Arc::new(state);
    Router::new()
        .route("/", get(ui::index))
        .route("/ui/app.js", get(ui::script))
        .route("/ui/app.css", get(ui::style))
        .route("/favicon.ico", get(ui::favicon))
        .route("/ui/open", get(open_ui::<P>))
        .route("/api/v1/ui/link", post(ui_link::<P>))
        .route("/api/v1/ui/sign-out", post(sign_out::<P>))
        .route("/api/v1/totp", post(enable_totp::<P>))
        .route("/api/v1/totp/confirm", post(confirm_totp::<P>))
        .route("/api/v1/contacts/{peer}/presence", get(presence::<P>))
        .route(
            "/api/v1/contacts/{peer}/safety-number/qr.svg",
            get(safety_number_qr::<P>),
        )
        .route("/api/v1/status", get(status::<P>))
        .route("/api/v1/register", post(register::<P>))
        .route("/api/v1/login", post(login::<P>))
        .route(
            "/api/v1/contacts",
            get(contacts::<P>).post(add_contact::<P>),
        )
        .route("/api/v1/messages", post(send::<P>))
        .route("/api/v1/files", get(files::<P>).post(send_file::<P>))
        .route("/api/v1/files/upload", post(upload_file::<P>))
        .route("/api/v1/files/{id}", get(file::<P>))
        .route("/api/v1/files/{id}/content", get(file_content::<P>))
        .route("/api/v1/files/{id}/accept", post(accept_file::<P>))
        .route("/api/v1/files/{id}/cancel", post(cancel_file::<P>))
        .route("/api/v1/files/{id}/save", post(save_file::<P>))
        .route("/api/v1/groups", get(groups::<P>).post(create_group::<P>))
        .route("/api/v1/groups/{id}", get(group::<P>))
        .route("/api/v1/groups/{id}/changes", post(change_group::<P>))
        .route(
            "/api/v1/groups/{id}/messages",
            get(group_history::<P>).post(send_group::<P>),
        )
        .route("/api/v1/groups/{id}/read", post(mark_group_read::<P>))
        .route("/api/v1/conversations", get(conversations::<P>))
        .route("/api/v1/search", get(search::<P>))
        .route("/api/v1/conversations/{peer}", get(history::<P>))
        .route("/api/v1/events", get(events::<P>))
        .route("/api/v1/logout", post(logout::<P>))
        .route(
            "/api/v1/conversations/{peer}/messages/{id}/retry",
            post(retry::<P>),
        )
        .route("/api/v1/conversations/{peer}/read", post(mark_read::<P>))
        .route(
            "/api/v1/conversations/{peer}/messages/{id}/amend",
            post(amend::<P>),
        )
        .route(
            "/api/v1/groups/{id}/messages/{message}/amend",
            post(amend_group::<P>),
        )
        .route("/api/v1/contacts/{peer}/accept-key", post(accept_key::<P>))
        .route(
            "/api/v1/contacts/{peer}/safety-number",
            get(safety_number::<P>),
        )
        .route("/api/v1/contacts/{peer}/verify", post(verify::<P>))
        .merge(people::routes::<P>())
        .merge(backup::routes::<P>())
        .fallback(|| async {
            ApiError(
                StatusCode::NOT_FOUND,
                "no_such_route",
                "no such route".into(),
            )
        })
        .layer(middleware::from_fn_with_state(state.clone(), guard::<P>))
        .with_state(state)
}

type Shared<P> = State<Arc<ApiState<P>>>;

/// Loopback `Host` only (no DNS rebinding); then the bearer token, or a browser session whose
/// writes carry the CSRF header from this origin. Every answer gets the security headers.
async fn guard<P: Ports>(
    State(state): Shared<P>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    let mut response = check_and_run(&state, &headers, request, next).await;
    ui::harden(&mut response);
    response
}

async fn check_and_run<P: Ports>(
    state: &ApiState<P>,
    headers: &HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let hostname = host.rsplit_once(':').map_or(host, |(name, _)| name);
    if !matches!(hostname, "127.0.0.1" | "localhost" | "[::1]") {
        return ApiError(
            StatusCode::FORBIDDEN,
            "bad_host",
            "the API answers on loopback names only".into(),
        )
        .into_response();
    }
    let path = request.uri().path().to_owned();
    if !ui::is_public(&path) {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        let bearer = bool::from(presented.as_bytes().ct_eq(state.token.as_bytes()));
        if !bearer {
            // Only the token holder (the CLI) mints links into the window.
            if !state.ui.authenticated(headers) || path == "/api/v1/ui/link" {
                return ApiError(
                    StatusCode::UNAUTHORIZED,
                    "bad_token",
                    "missing or wrong API token (open the window with `peerchat ui`)".into(),
                )
                .into_response();
            }
            let reads = matches!(*request.method(), Method::GET | Method::HEAD);
            if !reads && !ui::same_origin_write(headers) {
                return ApiError(
                    StatusCode::FORBIDDEN,
                    "cross_site",
                    "a browser request that changes something must come from this window".into(),
                )
                .into_response();
            }
        }
    }
    let span = tracing::info_span!("api", method = %request.method(), path = %path);
    tracing::Instrument::instrument(next.run(request), span).await
}

async fn open_ui<P: Ports>(
    State(state): Shared<P>,
    headers: HeaderMap,
    query: axum::extract::Query<ui::OpenQuery>,
) -> Response {
    ui::open(&state.ui, &headers, query)
}

async fn sign_out<P: Ports>(State(state): Shared<P>, headers: HeaderMap) -> Response {
    ui::sign_out(&state.ui, &headers)
}

async fn ui_link<P: Ports>(State(state): Shared<P>) -> Json<ui::UiLink> {
    Json(state.ui.link())
}

async fn enable_totp<P: Ports>(
    State(state): Shared<P>,
) -> Result<Json<crate::ports::TotpEnrolment>, ApiError> {
    Ok(Json(state.node.enable_totp().await?))
}

async fn confirm_totp<P: Ports>(
    State(state): Shared<P>,
    Body(body): Body<TotpCodeBody>,
) -> Result<StatusCode, ApiError> {
    state.node.confirm_totp(&body.code).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn presence<P: Ports>(
    State(state): Shared<P>,
    Path(raw): Path<String>,
) -> Result<Json<PresenceView>, ApiError> {
    let online = state.node.presence(&peer(&raw)?).await?;
    Ok(Json(PresenceView { online }))
}

async fn safety_number_qr<P: Ports>(
    State(state): Shared<P>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let number = state.node.safety_number(&peer(&raw)?).await?.shown;
    let svg = ui::qr_svg(&number.scannable()).ok_or_else(|| {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the QR code could not be drawn".into(),
        )
    })?;
    Ok(([(header::CONTENT_TYPE, "image/svg+xml")], svg).into_response())
}

async fn status<P: Ports>(State(state): Shared<P>) -> Result<Json<NodeStatus>, ApiError> {
    Ok(Json(state.node.status()?))
}

async fn register<P: Ports>(
    State(state): Shared<P>,
    Body(body): Body<RegisterBody>,
) -> Result<StatusCode, ApiError> {
    state.node.register(&body.username, &body.password).await?;
    Ok(StatusCode::CREATED)
}

async fn login<P: Ports>(
    State(state): Shared<P>,
    Body(body): Body<LoginBody>,
) -> Result<StatusCode, ApiError> {
    state
        .node
        .login(&body.username, &body.password, body.totp.as_deref())
        .await?;
    Ok(StatusCode::OK)
}

async fn contacts<P: Ports>(State(state): Shared<P>) -> Result<Json<Vec<ContactView>>, ApiError> {
    Ok(Json(
        state
            .node
            .contacts()?
            .into_iter()
            .map(|c| {
                let connection = state.node.connection(&c.username);
                let person = state.node.person(&c.username).ok().flatten();
                let profile = person.as_ref().and_then(|p| p.profile.as_ref());
                let standing = state.node.standing(&c.username).ok();
                ContactView {
                    display_name: profile.map(|p| p.display_name.clone()),
                    avatar: profile.is_some_and(|p| p.avatar.is_some()),
                    request: standing == Some(crate::domain::Standing::Request),
                    blocked: standing == Some(crate::domain::Standing::Blocked),
                    online: connection.is_some(),
                    path: connection.as_ref().map(|c| c.path),
                    remote_address: connection.map(|c| c.remote_address),
                    username: c.username,
                    identity_key: c
                        .identity_key
                        .to_bytes()
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect(),
                    // Verification was of the old key: not shown beside the warning.
                    verified: c.verified && c.pending_key.is_none(),
                    key_changed: c.pending_key.is_some(),
                }
            })
            .collect(),
    ))
}

async fn add_contact<P: Ports>(
    State(state): Shared<P>,
    Body(body): Body<AddContactBody>,
) -> Result<StatusCode, ApiError> {
    state.node.add_contact(&body.username).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn send<P: Ports>(
    State(state): Shared<P>,
    Body(body): Body<SendBody>,
) -> Result<(StatusCode, Json<SendAnswer>), ApiError> {
    let id = body.id.unwrap_or_else(|| MessageId::random(&mut OsRng));
    let status = match body.reply_to {
        None => state.node.send(&body.to, id, body.text).await?,
        Some(quoted) => state.node.reply(&body.to, id, body.text, quoted).await?,
    };
    Ok((StatusCode::ACCEPTED, Json(SendAnswer { id, status })))
}

async fn conversations<P: Ports>(
    State(state): Shared<P>,
) -> Result<Json<Vec<ConversationView>>, ApiError> {
    let me = state
        .node
        .status()?
        .username
        .ok_or(NodeError::NotRegistered)?;
    Ok(Json(
        state
            .node
            .conversations()?
            .into_iter()
            .map(|c| {
                let group =
                    c.id.group()
                        .and_then(|g| state.node.group(&g).ok())
                        .map(|g| GroupView::of(g, &me));
                let person =
                    c.id.peer()
                        .and_then(|p| state.node.person(p).ok().flatten());
                ConversationView {
                    request: person
                        .as_ref()
                        .is_some_and(crate::domain::Person::is_request),
                    display_name: person.and_then(|p| p.profile).map(|p| p.display_name),
                    peer: c.id.peer().cloned(),
                    group,
                    messages: c.messages,
                    unread: c.unread,
                    last: view(c.last, &me),
                }
            })
            .collect(),
    ))
}

fn file_id(raw: &str) -> Result<crate::domain::FileId, ApiError> {
    raw.parse().map_err(|_| {
        ApiError(
            StatusCode::BAD_REQUEST,
            "bad_file_id",
            "a file id is 32 hexadecimal digits".into(),
        )
    })
}

async fn files<P: Ports>(State(state): Shared<P>) -> Result<Json<Vec<FileView>>, ApiError> {
    Ok(Json(
        state
            .node
            .files()?
            .into_iter()
            .map(FileView::from)
            .collect(),
    ))
}

async fn send_file<P: Ports>(
    State(state): Shared<P>,
    Body(body): Body<SendFileBody>,
) -> Result<(StatusCode, Json<FileView>), ApiError> {
    let id = match (&body.to, &body.group) {
        (Some(to), None) => {
            state
                .node
                .send_file_parking(to, &body.path, body.park)
                .await?
        }
        (None, Some(group)) => state.node.send_group_file(group, &body.path).await?,
        _ => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "name either a recipient (to) or a group, not both".into(),
            ));
        }
    };
    Ok((StatusCode::CREATED, Json(state.node.file(&id)?.into())))
}

/// `POST /api/v1/files/upload?name=N&to=PEER` (or `&group=ID`): the body is the file itself,
/// streamed to disk (never held in memory), then offered like `POST /api/v1/files`.
#[derive(Debug, Deserialize)]
pub struct UploadQuery {
    /// The file's name.
    pub name: String,
    /// The recipient.
    #[serde(default)]
    pub to: Option<String>,
    /// Or the group.
    #[serde(default)]
    pub group: Option<String>,
}

async fn upload_file<P: Ports>(
    State(state): Shared<P>,
    axum::extract::Query(query): axum::extract::Query<UploadQuery>,
    request: Request,
) -> Result<(StatusCode, Json<FileView>), ApiError> {
    use futures::StreamExt;
    use tokio::io::AsyncWriteExt;
    let bad = |message: &str| ApiError(StatusCode::BAD_REQUEST, "bad_file", message.into());
    let target = match (&query.to, &query.group) {
        (Some(to), None) => Ok(peer(to)?),
        (None, Some(group)) => Err(group
            .parse::<crate::domain::GroupId>()
            .map_err(|_| bad("a group id is 32 hexadecimal digits"))?),
        _ => return Err(bad("name either a recipient (to) or a group, not both")),
    };
    let name = crate::domain::file::clean_name(&query.name)
        .ok_or_else(|| bad("that name names no file"))?;
    let max = state.node.file_limits().max_bytes;
    let dir = state.uploads.join(super::token::new_token());
    let internal = |e: std::io::Error| {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            e.kind().to_string(),
        )
    };
    tokio::fs::create_dir_all(&dir).await.map_err(internal)?;
    // Removed on every way out, the node having taken its copy (or not).
    struct Upload(std::path::PathBuf);
    impl Drop for Upload {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let upload = Upload(dir);
    let path = upload.0.join(&name);
    let mut file = tokio::fs::File::create(&path).await.map_err(internal)?;
    let mut body = request.into_body().into_data_stream();
    let mut size = 0u64;
    while let Some(piece) = body.next().await {
        let piece = piece.map_err(|_| bad("the upload broke off"))?;
        size += piece.len() as u64;
        if size > max {
            return Err(ApiError(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("a file is at most {max} bytes"),
            ));
        }
        file.write_all(&piece).await.map_err(internal)?;
    }
    file.flush().await.map_err(internal)?;
    drop(file);
    let id = match target {
        Ok(to) => state.node.send_file(&to, &path).await?,
        Err(group) => state.node.send_group_file(&group, &path).await?,
    };
    drop(upload);
    Ok((StatusCode::CREATED, Json(state.node.file(&id)?.into())))
}

/// Media types the window shows inline; everything else is served as a download.
const INLINE_TYPES: [&str; 4] = ["image/png", "image/jpeg", "image/gif", "image/webp"];

/// `GET /api/v1/files/{id}/content[?download=1]`: the file's bytes, streamed. Raster images are
/// shown inline; anything else, and everything with `download=1`, is an attachment. The
/// response is sandboxed and never sniffed, so a file cannot act as a page of this origin.
async fn file_content<P: Ports>(
    State(state): Shared<P>,
    Path(raw): Path<String>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Result<Response, ApiError> {
    let (record, path) = state.node.file_content(&file_id(&raw)?)?;
    let file = tokio::fs::File::open(&path).await.map_err(|_| {
        ApiError(
            StatusCode::NOT_FOUND,
            "gone",
            "the file is no longer where it was saved".into(),
        )
    })?;
    let length = file.metadata().await.map(|m| m.len()).unwrap_or_default();
    let download = query.as_deref() == Some("download=1");
    let inline = !download && INLINE_TYPES.contains(&record.offer.media_type.as_str());
    let content_type = match inline {
        true => record.offer.media_type.clone(),
        false => "application/octet-stream".to_owned(),
    };
    let encoded: String = record
        .offer
        .name
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect();
    let disposition = format!(
        "{}; filename*=UTF-8''{encoded}",
        if inline { "inline" } else { "attachment" }
    );
    let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(file));
    let mut response = body.into_response();
    let headers = response.headers_mut();
    let value = |v: &str| {
        axum::http::HeaderValue::from_str(v)
            .unwrap_or_else(|_| axum::http::HeaderValue::from_static("application/octet-stream"))
    };
    headers.insert(header::CONTENT_TYPE, value(&content_type));
    headers.insert(header::CONTENT_LENGTH, value(&length.to_string()));
    headers.insert(header::CONTENT_DISPOSITION, value(&disposition));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        axum::http::HeaderValue::from_static(ui::FILE_CSP),
    );
    Ok(response)
}

async fn file<P: Ports>(
    State(state): Shared<P>,
    Path(raw): Path<String>,
) -> Result<Json<FileView>, ApiError> {
    Ok(Json(state.node.file(&file_id(&raw)?)?.into()))
}

async fn accept_file<P: Ports>(
    State(state): Shared<P>,
    Path(raw): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.node.accept_file(&file_id(&raw)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn cancel_file<P: Ports>(
    State(state): Shared<P>,
    Path(raw): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.node.cancel_file(&file_id(&raw)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Copies a complete download to `dest`, which must not exist yet.
async fn save_file<P: Ports>(
    State(state): Shared<P>,
    Path(raw): Path<String>,
    Body(body): Body<SaveFileBody>,
) -> Result<Json<FileView>, ApiError> {
    let record = state.node.file(&file_id(&raw)?)?;
    let Some(from) = record
        .saved_as
        .clone()
        .filter(|_| record.state == crate::ports::FileState::Complete)
    else {
        return Err(ApiError(
            StatusCode::CONFLICT,
            "not_complete",
            "the file has not been fetched yet".into(),
        ));
    };
    let dest = body.dest.clone();
    tokio::task::spawn_blocking(move || {
        let mut input = std::fs::File::open(&from)?;
        let mut output = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&dest)?;
        std::io::copy(&mut input, &mut output)?;
        output.sync_all()
    })
    .await
    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
    .map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            "cannot_save",
            format!("could not write {}: {}", body.dest.display(), e.kind()),
        )
    })?;
    Ok(Json(record.into()))
}

fn me<P: Ports>(state: &ApiState<P>) -> Result<Username, ApiError> {
    Ok(state
        .node
        .status()?
        .username
        .ok_or(NodeError::NotRegistered)?)
}

async fn groups<P: Ports>(State(state): Shared<P>) -> Result<Json<Vec<GroupView>>, ApiError> {
    let me = me(&state)?;
    Ok(Json(
        state
            .node
            .groups()?
            .into_iter()
            .map(|g| GroupView::of(g, &me))
            .collect(),
    ))
}

async fn create_group<P: Ports>(
    State(state): Shared<P>,
    Body(body): Body<CreateGroupBody>,
) -> Result<(StatusCode, Json<GroupView>), ApiError> {
    let me = me(&state)?;
    let id = state.node.create_group(&body.name, &body.members).await?;
    Ok((
        StatusCode::CREATED,
        Json(GroupView::of(state.node.group(&id)?, &me)),
    ))
}

async fn group<P: Ports>(
    State(state): Shared<P>,
    Path(raw): Path<String>,
) -> Result<Json<GroupView>, ApiError> {
    let me = me(&state)?;
    Ok(Json(GroupView::of(
        state.node.group(&group_id(&raw)?)?,
        &me,
    )))
}

async fn change_group<P: Ports>(
    State(state): Shared<P>,
    Path(raw): Path<String>,
    Body(body): Body<GroupChangeBody>,
) -> Result<Json<GroupView>, ApiError> {
    let me = me(&state)?;
    let change = match body {
        GroupChangeBody::Add { members } => Change::Add(members),
        GroupChangeBody::Remove { members } => Change::Remove(members),
        GroupChangeBody::Leave => Change::Leave,
        GroupChangeBody::Rename { name } => Change::Rename(name),
        GroupChangeBody::Promote { member } => Change::Promote(member),
    };
    let after = state.node.change_group(&group_id(&raw)?, change).await?;
    Ok(Json(GroupView::of(after, &me)))
}

async fn send_group<P: Ports>(
    State(state): Shared<P>,
    Path(raw): Path<String>,
    Body(body): Body<GroupSendBody>,
) -> Result<(StatusCode, Json<SendAnswer>), ApiError> {
    let id = body.id.unwrap_or_else(|| MessageId::random(&mut OsRng));
    let group = group_id(&raw)?;
    let status = match body.reply_to {
        None => state.node.send_group(&group, id, body.text).await?,
        Some(quoted) => {
            state
                .node
                .reply_group(&group, id, body.text, quoted)
                .await?
        }
    };
    Ok((StatusCode::ACCEPTED, Json(SendAnswer { id, status })))
}

async fn group_history<P: Ports>(
    State(state): Shared<P>,
    Path(raw): Path<String>,
    query: Result<axum::extract::Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<MessageView>>, ApiError> {
    let page = page(query)?;
    let me = me(&state)?;
    Ok(Json(
        state
            .node
            .group_history(&group_id(&raw)?, page)?
            .into_iter()
            .map(|m| view(m, &me))
            .collect(),
    ))
}

async fn mark_group_read<P: Ports>(
    State(state): Shared<P>,
    Path(raw): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.node.mark_group_read(&group_id(&raw)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The page a history query asks for.
fn page(
    query: Result<axum::extract::Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Page, ApiError> {
    let axum::extract::Query(query) = query.map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            "bad_page",
            format!("before is a message id and limit a number: {e}"),
        )
    })?;
    Ok(Page {
        before: query.before,
        limit: query.limit.unwrap_or(MAX_PAGE).clamp(1, MAX_PAGE),
    })
}

/// `GET /api/v1/conversations/{peer}?before=ID&limit=N`: the page of the conversation before
/// message `ID` (or the latest), at most `N` messages (default and most [`MAX_PAGE`]), oldest
/// first.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct PageQuery {
    /// The message the page ends before.
    #[serde(default)]
    pub before: Option<MessageId>,
    /// Most messages.
    #[serde(default)]
    pub limit: Option<usize>,
}

/// The most messages one page of history holds.
pub const MAX_PAGE: usize = 500;

/// `GET /api/v1/search?q=TEXT&limit=N`: messages of every conversation containing `TEXT`
/// (ignoring case), newest first.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct SearchQuery {
    /// The text to find.
    pub q: String,
    /// Most hits (default and most [`crate::usecases::MAX_SEARCH_HITS`]).
    #[serde(default)]
    pub limit: Option<usize>,
}

/// One message search found, with its conversation.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq, Clone)]
pub struct SearchHit {
    /// The other person, for a direct conversation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<Username>,
    /// The group, for a group's conversation (also in `message`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<GroupId>,
    /// The message.
    pub message: MessageView,
}

async fn search<P: Ports>(
    State(state): Shared<P>,
    query: Result<axum::extract::Query<SearchQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<SearchHit>>, ApiError> {
    let axum::extract::Query(query) = query.map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            "bad_query",
            format!("q is the text to find and limit a number: {e}"),
        )
    })?;
    let me = me(&state)?;
    let limit = query.limit.unwrap_or(crate::usecases::MAX_SEARCH_HITS);
    Ok(Json(
        state
            .node
            .search(&query.q, limit)?
            .into_iter()
            .map(|m| {
                let conversation = m.conversation();
                SearchHit {
                    peer: conversation.peer().cloned(),
                    group: conversation.group(),
                    message: view(m, &me),
                }
            })
            .collect(),
    ))
}

async fn history<P: Ports>(
    State(state): Shared<P>,
    Path(raw): Path<String>,
    query: Result<axum::extract::Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<MessageView>>, ApiError> {
    let page = page(query)?;
    let me = me(&state)?;
    let peer = peer(&raw)?;
    Ok(Json(
        state
            .node
            .conversation(&peer, page)
            .await?
            .into_iter()
            .map(|m| view(m, &me))
            .collect(),
    ))
}

fn message_id(raw: &str) -> Result<MessageId, ApiError> {
    raw.parse().map_err(|_| {
        ApiError(
            StatusCode::BAD_REQUEST,
            "bad_id",
            "a message id is 32 hexadecimal digits".into(),
        )
    })
}

async fn retry<P: Ports>(
    State(state): Shared<P>,
    Path((raw, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    state.node.retry(&peer(&raw)?, &message_id(&id)?).await?;
    Ok(StatusCode::ACCEPTED)
}

async fn amend<P: Ports>(
    State(state): Shared<P>,
    Path((raw, id)): Path<(String, String)>,
    Body(body): Body<AmendBody>,
) -> Result<StatusCode, ApiError> {
    let conversation = crate::domain::ConversationId::Direct(peer(&raw)?);
    state
        .node
        .amend(&conversation, message_id(&id)?, body.into())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn amend_group<P: Ports>(
    State(state): Shared<P>,
    Path((raw, id)): Path<(String, String)>,
    Body(body): Body<AmendBody>,
) -> Result<StatusCode, ApiError> {
    let conversation = crate::domain::ConversationId::Group(group_id(&raw)?);
    state
        .node
        .amend(&conversation, message_id(&id)?, body.into())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn logout<P: Ports>(State(state): Shared<P>) -> Result<StatusCode, ApiError> {
    state.node.logout().await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn mark_read<P: Ports>(
    State(state): Shared<P>,
    Path(raw): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.node.mark_read(&peer(&raw)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn accept_key<P: Ports>(
    State(state): Shared<P>,
    Path(raw): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.node.accept_key(&peer(&raw)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn safety_number<P: Ports>(
    State(state): Shared<P>,
    Path(raw): Path<String>,
) -> Result<Json<SafetyNumberView>, ApiError> {
    let numbers = state.node.safety_number(&peer(&raw)?).await?;
    Ok(Json(SafetyNumberView {
        number: numbers.shown.grouped(),
        scannable: numbers
            .shown
            .scannable()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
        key: numbers.of,
        previous: numbers.pinned.map(|n| n.grouped()),
    }))
}

async fn verify<P: Ports>(
    State(state): Shared<P>,
    Path(raw): Path<String>,
    Body(body): Body<VerifyBody>,
) -> Result<StatusCode, ApiError> {
    state.node.verify(&peer(&raw)?, &body.number).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Real-time events as server-sent events: `event: <type>`, `data: <JSON>`. A subscriber that
/// falls far behind misses the oldest events rather than slowing the node down.
async fn events<P: Ports>(
    State(state): Shared<P>,
) -> axum::response::sse::Sse<
    impl futures::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>,
> {
    use tokio::sync::broadcast::error::RecvError;
    let receiver = (state.subscribe)();
    let closing = state.closing.clone();
    let stream =
        futures::stream::unfold((receiver, closing), |(mut receiver, closing)| async move {
            loop {
                let received = tokio::select! {
                    () = closing.cancelled() => return None,
                    received = receiver.recv() => received,
                };
                match received {
                    Ok(event) => {
                        let kind = match &event {
                            crate::ports::Event::MessageReceived { .. } => "message_received",
                            crate::ports::Event::MessageChanged { .. } => "message_changed",
                            crate::ports::Event::StatusChanged { .. } => "status_changed",
                            crate::ports::Event::KeyChanged { .. } => "key_changed",
                            crate::ports::Event::PeerOnline { .. } => "peer_online",
                            crate::ports::Event::PeerOffline { .. } => "peer_offline",
                            crate::ports::Event::PersonChanged { .. } => "person_changed",
                            crate::ports::Event::Typing { .. } => "typing",
                            crate::ports::Event::Registered { .. } => "registered",
                            crate::ports::Event::Announced { .. } => "announced",
                            crate::ports::Event::GroupChanged { .. } => "group_changed",
                            crate::ports::Event::FileOffered { .. } => "file_offered",
                            crate::ports::Event::FileProgress { .. } => "file_progress",
                            crate::ports::Event::FileCompleted { .. } => "file_completed",
                            crate::ports::Event::FileFailed { .. } => "file_failed",
                            crate::ports::Event::GroupMessageReceived { .. } => {
                                "group_message_received"
                            }
                            crate::ports::Event::GroupStatusChanged { .. } => {
                                "group_status_changed"
                            }
                        };
                        let sse = axum::response::sse::Event::default()
                            .event(kind)
                            .json_data(&event)
                            .unwrap_or_default();
                        return Some((Ok(sse), (receiver, closing)));
                    }
                    Err(RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "an event subscriber fell behind")
                    }
                    Err(RecvError::Closed) => return None,
                }
            }
        });
    axum::response::sse::Sse::new(stream).keep_alive(axum::response::sse::KeepAlive::default())
}

/// Serves `app` on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// What the API answers while the node is stopped because its disk is full (the daemon starts
/// it again when there is space): every request, `507 disk_full`. It tells nothing else, so it
/// asks for no token.
pub fn disk_full_router() -> Router {
    Router::new().fallback(|| async {
        ApiError(
            StatusCode::INSUFFICIENT_STORAGE,
            "disk_full",
            "the node's disk is full: the node stopped, and starts again when there is space"
                .into(),
        )
    })
}

impl<P: Ports> std::fmt::Debug for ApiState<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("ApiState").finish_non_exhaustive()
    }
}
