use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use castellan_core::ApiError;
use castellan_service::sessions::LogoutScope;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::error::{HttpResult, Refusals};
use crate::extract::{AuthUser, QueryParams};
use crate::server::AppState;

#[derive(Deserialize, IntoParams)]
pub struct ScopeQuery {
    /// `global` (every session, the default), `local` (this one) or
    /// `others` (all but this one).
    scope: Option<String>,
}

/// `POST /logout?scope=global|local|others` → 204.
#[utoipa::path(
    post,
    path = "/logout",
    tag = "sessions",
    params(ScopeQuery),
    security(("bearer" = [])),
    responses((status = 204, description = "Signed out"), Refusals)
)]
pub async fn logout(
    State(st): State<AppState>,
    QueryParams(q): QueryParams<ScopeQuery>,
    auth: AuthUser,
) -> HttpResult {
    let scope = match q.scope.as_deref().unwrap_or("") {
        "" | "global" => LogoutScope::Global,
        "local" => LogoutScope::Local,
        "others" => LogoutScope::Others,
        other => {
            return Err(ApiError::validation(format!("Unsupported logout scope {other:?}")).into());
        }
    };
    st.actors
        .sessions
        .logout(&auth.user, auth.session_id, scope)
        .await?;
    let resp: Response = StatusCode::NO_CONTENT.into_response();
    Ok(resp)
}
