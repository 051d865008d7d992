//! A user's sessions (a castellan extension to GoTrue's admin API, which
//! can only end them all by email): listed, and ended one at a time or all.

use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use castellan_core::ApiError;
use castellan_core::store::{SessionRow, SessionScope};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::users::{UserPath, user_id};
use crate::error::{HttpResult, Refusals};
use crate::extract::{AdminAuth, PathParams};
use crate::server::AppState;

/// The `{user_id}` and `{session_id}` path parameters.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct UserSessionPath {
    /// A UUID (anything else is 404).
    user_id: String,
    /// A UUID (anything else is 404).
    session_id: String,
}

/// How many sessions ended.
#[derive(Serialize, ToSchema)]
pub struct Ended {
    ended: u64,
}

/// The user's newest 1 000 sessions, newest first.
#[utoipa::path(
    get,
    path = "/admin/users/{user_id}/sessions",
    operation_id = "admin_list_sessions",
    tag = "admin",
    params(UserPath),
    security(("bearer" = [])),
    responses((status = 200, body = Vec<SessionRow>), Refusals)
)]
pub async fn list(
    State(st): State<AppState>,
    _admin: AdminAuth,
    PathParams(UserPath { user_id: id }): PathParams<UserPath>,
) -> HttpResult {
    let rows = st.admin.sessions(user_id(&id)?).await?;
    Ok(Json(rows).into_response())
}

/// Ends every session of the user: their refresh tokens stop working and
/// their access tokens are refused at once, in every process.
#[utoipa::path(
    delete,
    path = "/admin/users/{user_id}/sessions",
    operation_id = "admin_end_sessions",
    tag = "admin",
    params(UserPath),
    security(("bearer" = [])),
    responses((status = 200, body = Ended), Refusals)
)]
pub async fn end_all(
    State(st): State<AppState>,
    admin: AdminAuth,
    PathParams(UserPath { user_id: id }): PathParams<UserPath>,
) -> HttpResult {
    let user = user_id(&id)?;
    st.admin.get_user(user).await?;
    let ended = st
        .admin
        .end_sessions(&admin.actor, user, SessionScope::All)
        .await?;
    Ok(Json(Ended { ended }).into_response())
}

/// Ends one session of the user; 404 `session_not_found` when the user has
/// no such session.
#[utoipa::path(
    delete,
    path = "/admin/users/{user_id}/sessions/{session_id}",
    operation_id = "admin_end_session",
    tag = "admin",
    params(UserSessionPath),
    security(("bearer" = [])),
    responses((status = 200, body = Ended), Refusals)
)]
pub async fn end_one(
    State(st): State<AppState>,
    admin: AdminAuth,
    PathParams(p): PathParams<UserSessionPath>,
) -> HttpResult {
    let user = user_id(&p.user_id)?;
    let session = uuid::Uuid::parse_str(&p.session_id)
        .map_err(|_| ApiError::not_found("validation_failed", "session_id must be an UUID"))?;
    st.admin.get_user(user).await?;
    let ended = st
        .admin
        .end_sessions(&admin.actor, user, SessionScope::Only(session))
        .await?;
    if ended == 0 {
        return Err(ApiError::not_found("session_not_found", "Session not found").into());
    }
    Ok(Json(Ended { ended }).into_response())
}
