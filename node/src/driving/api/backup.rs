//! The backup routes: the daemon writes and reads the backup file itself (it runs as the user,
//! like the CLI that names the path), so a large history never passes through a request body.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiState, Body, Shared};
use crate::domain::backup::Cost;
use crate::usecases::{BackupSummary, Ports};

/// `POST /api/v1/backup` and `POST /api/v1/backup/restore`.
#[derive(Serialize, Deserialize)]
pub struct BackupBody {
    /// The backup file: an absolute path.
    pub path: std::path::PathBuf,
    /// The passphrase it is (to be) sealed with.
    pub passphrase: String,
}

impl std::fmt::Debug for BackupBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupBody")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// The routes.
pub fn routes<P: Ports>() -> Router<Arc<ApiState<P>>> {
    Router::new()
        .route("/api/v1/backup", post(create::<P>))
        .route("/api/v1/backup/restore", post(restore::<P>))
}

fn absolute(path: &std::path::Path) -> Result<(), ApiError> {
    if path.is_absolute() {
        return Ok(());
    }
    Err(ApiError(
        StatusCode::BAD_REQUEST,
        "bad_path",
        "the backup's path must be absolute".into(),
    ))
}

fn io(path: &std::path::Path, e: &std::io::Error) -> ApiError {
    let (status, code) = match e.kind() {
        std::io::ErrorKind::AlreadyExists => (StatusCode::CONFLICT, "exists"),
        std::io::ErrorKind::NotFound => (StatusCode::NOT_FOUND, "no_such_file"),
        _ => (StatusCode::BAD_REQUEST, "bad_path"),
    };
    ApiError(status, code, format!("{}: {e}", path.display()))
}

async fn create<P: Ports>(
    State(state): Shared<P>,
    Body(body): Body<BackupBody>,
) -> Result<(StatusCode, Json<BackupSummary>), ApiError> {
    absolute(&body.path)?;
    let (sealed, summary) = state.node.backup(&body.passphrase, Cost::DEFAULT).await?;
    // Never over an existing file; readable by the user only; on disk before the answer.
    let path = body.path.clone();
    tokio::task::spawn_blocking(move || {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        file.write_all(&sealed)?;
        file.sync_all()
    })
    .await
    .map_err(|_| {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the write stopped".into(),
        )
    })?
    .map_err(|e| io(&body.path, &e))?;
    Ok((StatusCode::CREATED, Json(summary)))
}

async fn restore<P: Ports>(
    State(state): Shared<P>,
    Body(body): Body<BackupBody>,
) -> Result<Json<BackupSummary>, ApiError> {
    absolute(&body.path)?;
    let sealed = tokio::fs::read(&body.path)
        .await
        .map_err(|e| io(&body.path, &e))?;
    Ok(Json(state.node.restore(sealed, &body.passphrase).await?))
}
