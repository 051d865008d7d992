use axum::Json;
use axum::extract::OriginalUri;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use castellan_actors::admin::UserAttributes;
use castellan_core::ApiError;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::paging::Query;
use crate::error::HttpResult;
use crate::extract::{AdminAuth, JsonBody, RawBody, RequestAud, parse_json};
use crate::server::AppState;

/// `{user_id}` must be a UUID: 404 `validation_failed` otherwise, as GoTrue.
fn user_id(raw: &str) -> Result<Uuid, ApiError> {
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
    let body = json!({"users": users.iter().map(|u| u.to_json_with(None)).collect::<Vec<_>>(), "aud": aud});
    Ok((paging.headers(uri.path(), &q, total), Json(body)).into_response())
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct AttributesBody {
    id: Option<String>,
    aud: Option<String>,
    role: Option<String>,
    email: Option<String>,
    phone: Option<String>,
    password: Option<String>,
    password_hash: Option<String>,
    email_confirm: Option<bool>,
    phone_confirm: Option<bool>,
    user_metadata: Option<Map<String, Value>>,
    app_metadata: Option<Map<String, Value>>,
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

pub async fn create(
    State(st): State<AppState>,
    admin: AdminAuth,
    RequestAud(aud): RequestAud,
    JsonBody(b): JsonBody<AttributesBody>,
) -> HttpResult {
    let (user, ids) = st.admin.create_user(&admin.actor, b.into(), &aud).await?;
    Ok(Json(user.to_json(&ids)).into_response())
}

pub async fn get(
    State(st): State<AppState>,
    _admin: AdminAuth,
    Path(id): Path<String>,
) -> HttpResult {
    let (user, ids) = st.admin.get_user(user_id(&id)?).await?;
    Ok(Json(user.to_json(&ids)).into_response())
}

pub async fn update(
    State(st): State<AppState>,
    admin: AdminAuth,
    Path(id): Path<String>,
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
    Ok(Json(user.to_json(&ids)).into_response())
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct DeleteBody {
    should_soft_delete: bool,
}

pub async fn delete(
    State(st): State<AppState>,
    admin: AdminAuth,
    Path(id): Path<String>,
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
    let resp: Response = Json(json!({})).into_response();
    Ok(resp)
}

pub async fn factors(
    State(st): State<AppState>,
    _admin: AdminAuth,
    Path(id): Path<String>,
) -> HttpResult {
    let rows = st.admin.factors(user_id(&id)?).await?;
    let body: Vec<Value> = rows
        .iter()
        .map(|f| {
            json!({"id": f.id, "created_at": f.created_at, "updated_at": f.updated_at, "status": f.status,
                   "friendly_name": f.friendly_name, "factor_type": f.factor_type, "phone": f.phone.clone().unwrap_or_default(),
                   "last_challenged_at": f.last_challenged_at})
        })
        .collect();
    Ok(Json(body).into_response())
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
