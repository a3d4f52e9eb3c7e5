//! The people routes: message requests, blocking, profiles, settings and typing.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use peerchat_pki::Username;
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiState, Body, MessageView, Shared, group_id, me, peer, view};
use crate::domain::ConversationId;
use crate::ports::Settings;
use crate::usecases::Ports;

/// Largest body of `PUT /api/v1/profile`: an avatar in base64 and the name.
const PROFILE_BODY: usize = crate::domain::person::MAX_AVATAR_BYTES * 4 / 3 + 4096;

/// `GET /api/v1/requests`: a conversation someone started that the user has not taken up.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RequestView {
    /// Who.
    pub peer: Username,
    /// The name they gave themselves (unverified: it is theirs to choose).
    pub display_name: Option<String>,
    /// Their messages so far.
    pub messages: u64,
    /// Not yet shown.
    pub unread: u64,
    /// The latest.
    pub last: Option<MessageView>,
}

/// `GET` and `PUT /api/v1/profile`: our profile.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct ProfileBody {
    /// The name to be shown by.
    pub display_name: String,
    /// A PNG, JPEG, GIF or WebP image, base64, or `null`.
    #[serde(default)]
    pub avatar: Option<String>,
}

/// `POST …/typing`.
#[derive(Debug, Serialize, Deserialize)]
pub struct TypingBody {
    /// Typing now, or stopped.
    pub typing: bool,
}

/// The answer to `POST …/typing`: how many were told.
#[derive(Debug, Serialize, Deserialize)]
pub struct TypingAnswer {
    /// Connected people told.
    pub told: usize,
}

/// The routes.
pub fn routes<P: Ports>() -> Router<Arc<ApiState<P>>> {
    Router::new()
        .route("/api/v1/requests", get(requests::<P>))
        .route("/api/v1/requests/{peer}/accept", post(accept::<P>))
        .route("/api/v1/blocked", get(blocked::<P>))
        .route("/api/v1/contacts/{peer}/block", post(block::<P>))
        .route("/api/v1/contacts/{peer}/unblock", post(unblock::<P>))
        .route("/api/v1/contacts/{peer}/avatar", get(avatar::<P>))
        .route("/api/v1/profile", get(profile::<P>).put(set_profile::<P>))
        .route(
            "/api/v1/settings",
            get(settings::<P>).put(save_settings::<P>),
        )
        .route("/api/v1/conversations/{peer}/typing", post(typing::<P>))
        .route("/api/v1/groups/{id}/typing", post(group_typing::<P>))
}

async fn requests<P: Ports>(State(state): Shared<P>) -> Result<Json<Vec<RequestView>>, ApiError> {
    let me = me(&state)?;
    Ok(Json(
        state
            .node
            .requests()?
            .into_iter()
            .map(|r| RequestView {
                peer: r.peer,
                display_name: r.profile.map(|p| p.display_name),
                messages: r.conversation.as_ref().map_or(0, |c| c.messages),
                unread: r.conversation.as_ref().map_or(0, |c| c.unread),
                last: r.conversation.map(|c| view(c.last, &me)),
            })
            .collect(),
    ))
}

async fn accept<P: Ports>(
    State(state): Shared<P>,
    Path(raw): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.node.accept_request(&peer(&raw)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn blocked<P: Ports>(State(state): Shared<P>) -> Result<Json<Vec<Username>>, ApiError> {
    Ok(Json(state.node.blocked()?))
}

async fn block<P: Ports>(
    State(state): Shared<P>,
    Path(raw): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.node.block(&peer(&raw)?, true).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn unblock<P: Ports>(
    State(state): Shared<P>,
    Path(raw): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.node.block(&peer(&raw)?, false).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A contact's avatar, typed by its bytes (only raster images are ever kept).
async fn avatar<P: Ports>(
    State(state): Shared<P>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let avatar = state
        .node
        .person(&peer(&raw)?)?
        .and_then(|p| p.profile)
        .and_then(|p| p.avatar);
    let Some((avatar, media_type)) = avatar.and_then(|a| a.media_type().map(|t| (a.clone(), t)))
    else {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            "no_avatar",
            "they have not shared an avatar".into(),
        ));
    };
    Ok(([(header::CONTENT_TYPE, media_type)], avatar.bytes).into_response())
}

async fn profile<P: Ports>(State(state): Shared<P>) -> Result<Json<ProfileBody>, ApiError> {
    Ok(Json(
        state
            .node
            .own_profile()?
            .map(|p| ProfileBody {
                display_name: p.display_name,
                avatar: p
                    .avatar
                    .map(|a| base64::engine::general_purpose::STANDARD.encode(a.bytes)),
            })
            .unwrap_or_default(),
    ))
}

async fn set_profile<P: Ports>(
    State(state): Shared<P>,
    Body(body): Body<ProfileBody, PROFILE_BODY>,
) -> Result<StatusCode, ApiError> {
    let avatar = body
        .avatar
        .map(|a| base64::engine::general_purpose::STANDARD.decode(a))
        .transpose()
        .map_err(|_| {
            ApiError(
                StatusCode::BAD_REQUEST,
                "bad_profile",
                "the avatar is not base64".into(),
            )
        })?;
    state.node.set_profile(&body.display_name, avatar).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn settings<P: Ports>(State(state): Shared<P>) -> Result<Json<Settings>, ApiError> {
    Ok(Json(state.node.settings()?))
}

async fn save_settings<P: Ports>(
    State(state): Shared<P>,
    Body(body): Body<Settings>,
) -> Result<StatusCode, ApiError> {
    state.node.save_settings(body).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn typing<P: Ports>(
    State(state): Shared<P>,
    Path(raw): Path<String>,
    Body(body): Body<TypingBody>,
) -> Result<Json<TypingAnswer>, ApiError> {
    let conversation = ConversationId::Direct(peer(&raw)?);
    let told = state.node.typing(&conversation, body.typing).await?;
    Ok(Json(TypingAnswer { told }))
}

async fn group_typing<P: Ports>(
    State(state): Shared<P>,
    Path(raw): Path<String>,
    Body(body): Body<TypingBody>,
) -> Result<Json<TypingAnswer>, ApiError> {
    let conversation = ConversationId::Group(group_id(&raw)?);
    let told = state.node.typing(&conversation, body.typing).await?;
    Ok(Json(TypingAnswer { told }))
}
