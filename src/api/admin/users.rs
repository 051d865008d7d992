use axum::Json;
use axum::extract::OriginalUri;
use axum::extract::State;
use axum::response::IntoResponse;
use castellan_core::ApiError;
use castellan_core::models::UserView;
use castellan_core::store::FactorRow;
use castellan_service::admin::UserAttributes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::paging::{PagingParams, Query};
use crate::api::{AudienceHeader, Empty};
use crate::error::{HttpResult, Refusals};
use crate::extract::{AdminAuth, JsonBody, PathParams, RawBody, RequestAud, parse_json};
use crate::server::AppState;

/// `{user_id}` must be a UUID: 404 `validation_failed` otherwise, as GoTrue.
pub(super) fn user_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw)
        .map_err(|_| ApiError::not_found("validation_failed", "user_id must be an UUID"))
}

/// `sort=created_at [asc|desc]` (the only field GoTrue sorts by); newest first by default.
fn newest_first(sort: Option<&str>) -> Result<bool, ApiError> {
    let Some(sort) = sort else { return Ok(true) };
    let mut words = sort.split_whitespace();
    let bad = |why: &str| ApiError::validation(format!("Bad Sort Parameters: {why}"));
    match words.next() {
        Some("created_at") => {}
        Some(f) => return Err(bad(&format!("unknown sort field {f:?}"))),
        None => return Ok(true),
    }
    let desc = match words.next().map(str::to_ascii_lowercase).as_deref() {
        None | Some("desc") => true,
        Some("asc") => false,
        Some(d) => return Err(bad(&format!("unknown sort direction {d:?}"))),
    };
    if words.next().is_some() {
        return Err(bad("expected `created_at [asc|desc]`"));
    }
    Ok(desc)
}

/// The list's parameters, for the OpenAPI document (read through [`Query`]).
#[derive(IntoParams)]
#[allow(dead_code)]
pub struct ListParams {
    /// Part of an email address or name.
    filter: Option<String>,
    /// `created_at [asc|desc]`.
    sort: Option<String>,
}

/// A page of users (`identities` not loaded: null).
#[derive(Serialize, ToSchema)]
pub struct UserPage {
    users: Vec<UserView>,
    aud: String,
}

/// The `{user_id}` path parameter.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct UserPath {
    /// A UUID (anything else is 404).
    pub(super) user_id: String,
}

#[utoipa::path(
    get,
    path = "/admin/users",
    operation_id = "admin_list_users",
    tag = "admin",
    params(PagingParams, ListParams, AudienceHeader),
    security(("bearer" = [])),
    responses((status = 200, body = UserPage, headers(("x-total-count" = u64), ("link" = String))), Refusals)
)]
pub async fn list(
    State(st): State<AppState>,
    _admin: AdminAuth,
    RequestAud(aud): RequestAud,
    OriginalUri(uri): OriginalUri,
) -> HttpResult {
    let q = Query::parse(uri.query())?;
    let newest = newest_first(q.get("sort"))?;
    let paging = q.paging()?;
    let (users, total) = st
        .admin
        .list_users(&aud, q.get("filter"), newest, paging.page())
        .await?;
    let body = UserPage {
        users: users.iter().map(|u| u.view(None)).collect(),
        aud,
    };
    Ok((paging.headers(uri.path(), &q, total), Json(body)).into_response())
}

/// A user's attributes as an admin sets them (`id`, `aud` and
/// `password_hash` on creation only).
#[derive(Deserialize, Default, ToSchema)]
#[serde(default)]
pub struct AttributesBody {
    id: Option<String>,
    aud: Option<String>,
    role: Option<String>,
    #[schema(format = Email)]
    email: Option<String>,
    phone: Option<String>,
    password: Option<String>,
    password_hash: Option<String>,
    email_confirm: Option<bool>,
    phone_confirm: Option<bool>,
    #[schema(value_type = Option<Object>)]
    user_metadata: Option<Map<String, Value>>,
    #[schema(value_type = Option<Object>)]
    app_metadata: Option<Map<String, Value>>,
    /// A Go duration (`24h`, `1h30m`) or `none` to lift a ban.
    ban_duration: Option<String>,
}

impl From<AttributesBody> for UserAttributes {
    fn from(b: AttributesBody) -> Self {
        UserAttributes {
            id: b.id,
            aud: b.aud,
            role: b.role,
            email: b.email,
            phone: b.phone,
            password: b.password,
            password_hash: b.password_hash,
            email_confirm: b.email_confirm.unwrap_or(false),
            phone_confirm: b.phone_confirm.unwrap_or(false),
            user_metadata: b.user_metadata,
            app_metadata: b.app_metadata,
            ban_duration: b.ban_duration,
        }
    }
}

#[utoipa::path(
    post,
    path = "/admin/users",
    operation_id = "admin_create_user",
    tag = "admin",
    params(AudienceHeader),
    security(("bearer" = [])),
    request_body = AttributesBody,
    responses((status = 200, body = UserView), Refusals)
)]
pub async fn create(
    State(st): State<AppState>,
    admin: AdminAuth,
    RequestAud(aud): RequestAud,
    JsonBody(b): JsonBody<AttributesBody>,
) -> HttpResult {
    let (user, ids) = st.admin.create_user(&admin.actor, b.into(), &aud).await?;
    // GoTrue answers with the user it just made: no computed `confirmed_at`.
    let mut view = user.view(Some(&ids));
    view.confirmed_at = None;
    Ok(Json(view).into_response())
}

#[utoipa::path(
    get,
    path = "/admin/users/{user_id}",
    operation_id = "admin_get_user",
    tag = "admin",
    params(UserPath),
    security(("bearer" = [])),
    responses((status = 200, body = UserView), Refusals)
)]
pub async fn get(
    State(st): State<AppState>,
    _admin: AdminAuth,
    PathParams(UserPath { user_id: id }): PathParams<UserPath>,
) -> HttpResult {
    let (user, ids) = st.admin.get_user(user_id(&id)?).await?;
    Ok(Json(user.view(Some(&ids))).into_response())
}

#[utoipa::path(
    put,
    path = "/admin/users/{user_id}",
    operation_id = "admin_update_user",
    tag = "admin",
    params(UserPath),
    security(("bearer" = [])),
    request_body = AttributesBody,
    responses((status = 200, body = UserView), Refusals)
)]
pub async fn update(
    State(st): State<AppState>,
    admin: AdminAuth,
    PathParams(UserPath { user_id: id }): PathParams<UserPath>,
    JsonBody(b): JsonBody<AttributesBody>,
) -> HttpResult {
    let id = user_id(&id)?;
    // `id`, `aud` and `password_hash` are not editable.
    let attrs = UserAttributes {
        id: None,
        aud: None,
        password_hash: None,
        ..b.into()
    };
    let (user, ids) = st.admin.update_user(&admin.actor, id, attrs).await?;
    Ok(Json(user.view(Some(&ids))).into_response())
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(default)]
pub struct DeleteBody {
    should_soft_delete: bool,
}

/// Deletes a user (or marks it deleted, `should_soft_delete`); the body
/// is optional.
#[utoipa::path(
    delete,
    path = "/admin/users/{user_id}",
    operation_id = "admin_delete_user",
    tag = "admin",
    params(UserPath),
    security(("bearer" = [])),
    request_body(content = Option<DeleteBody>),
    responses((status = 200, body = Empty), Refusals)
)]
pub async fn delete(
    State(st): State<AppState>,
    admin: AdminAuth,
    PathParams(UserPath { user_id: id }): PathParams<UserPath>,
    RawBody(body): RawBody,
) -> HttpResult {
    let id = user_id(&id)?;
    // The body is optional (the official client sends one, curl often does not).
    let b: DeleteBody = if body.iter().all(u8::is_ascii_whitespace) {
        DeleteBody::default()
    } else {
        parse_json(&body)?
    };
    st.admin
        .delete_user(&admin.actor, id, b.should_soft_delete)
        .await?;
    Ok(Json(Empty {}).into_response())
}

#[utoipa::path(
    get,
    path = "/admin/users/{user_id}/factors",
    operation_id = "admin_list_factors",
    tag = "admin",
    params(UserPath),
    security(("bearer" = [])),
    responses((status = 200, body = Vec<FactorRow>), Refusals)
)]
pub async fn factors(
    State(st): State<AppState>,
    _admin: AdminAuth,
    PathParams(UserPath { user_id: id }): PathParams<UserPath>,
) -> HttpResult {
    let rows = st.admin.factors(user_id(&id)?).await?;
    Ok(Json(rows).into_response())
}

/// The `{user_id}` and `{factor_id}` path parameters.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct UserFactorPath {
    /// A UUID (anything else is 404).
    user_id: String,
    /// A UUID (anything else is 404).
    factor_id: String,
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(default)]
pub struct FactorUpdate {
    /// A new friendly name (an empty one changes nothing).
    friendly_name: Option<String>,
}

#[utoipa::path(
    put,
    path = "/admin/users/{user_id}/factors/{factor_id}",
    operation_id = "admin_update_factor",
    tag = "admin",
    params(UserFactorPath),
    request_body = FactorUpdate,
    security(("bearer" = [])),
    responses((status = 200, body = FactorRow), Refusals)
)]
pub async fn update_factor(
    State(st): State<AppState>,
    admin: AdminAuth,
    PathParams(p): PathParams<UserFactorPath>,
    JsonBody(b): JsonBody<FactorUpdate>,
) -> HttpResult {
    let (user, factor) = (
        user_id(&p.user_id)?,
        crate::api::factors::factor_id(&p.factor_id)?,
    );
    let row = st
        .factors
        .rename(&admin.actor, user, factor, b.friendly_name)
        .await?;
    Ok(Json(row).into_response())
}

#[utoipa::path(
    delete,
    path = "/admin/users/{user_id}/factors/{factor_id}",
    operation_id = "admin_delete_factor",
    tag = "admin",
    params(UserFactorPath),
    security(("bearer" = [])),
    responses((status = 200, body = FactorRow), Refusals)
)]
pub async fn delete_factor(
    State(st): State<AppState>,
    admin: AdminAuth,
    PathParams(p): PathParams<UserFactorPath>,
) -> HttpResult {
    let (user, factor) = (
        user_id(&p.user_id)?,
        crate::api::factors::factor_id(&p.factor_id)?,
    );
    let row = st.factors.delete(&admin.actor, user, factor).await?;
    Ok(Json(row).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sort_parameters() {
        assert!(newest_first(None).unwrap());
        assert!(newest_first(Some("created_at")).unwrap());
        assert!(!newest_first(Some("created_at asc")).unwrap());
        assert!(newest_first(Some("created_at DESC")).unwrap());
        assert!(newest_first(Some("email")).is_err());
        assert!(newest_first(Some("created_at sideways")).is_err());
    }
}
