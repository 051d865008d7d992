//! `/admin/users/{user_id}/passkeys`: a user's passkeys, and deleting one.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use utoipa::IntoParams;

use super::users::{UserPath, user_id};
use crate::api::passkeys::{PasskeyView, passkey_id, views};
use crate::error::{HttpResult, Refusals};
use crate::extract::{AdminAuth, PathParams};
use crate::server::AppState;

#[utoipa::path(
    get,
    path = "/admin/users/{user_id}/passkeys",
    operation_id = "admin_list_passkeys",
    tag = "admin",
    params(UserPath),
    security(("bearer" = [])),
    responses((status = 200, body = Vec<PasskeyView>), Refusals)
)]
pub async fn list(
    State(st): State<AppState>,
    _admin: AdminAuth,
    PathParams(UserPath { user_id: id }): PathParams<UserPath>,
) -> HttpResult {
    let (user, _) = st.admin.get_user(user_id(&id)?).await?;
    let rows = st.passkeys.list(user.id).await?;
    Ok(Json(views(rows)).into_response())
}

/// The `{user_id}` and `{passkey_id}` path parameters.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct UserPasskeyPath {
    /// A UUID (anything else is 404).
    user_id: String,
    /// A UUID (anything else is 404).
    passkey_id: String,
}

#[utoipa::path(
    delete,
    path = "/admin/users/{user_id}/passkeys/{passkey_id}",
    operation_id = "admin_delete_passkey",
    tag = "admin",
    params(UserPasskeyPath),
    security(("bearer" = [])),
    responses((status = 204), Refusals)
)]
pub async fn delete(
    State(st): State<AppState>,
    admin: AdminAuth,
    PathParams(p): PathParams<UserPasskeyPath>,
) -> HttpResult {
    let (user, _) = st.admin.get_user(user_id(&p.user_id)?).await?;
    let id = passkey_id(&p.passkey_id)?;
    st.passkeys.admin_delete(admin.actor, user.id, id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
