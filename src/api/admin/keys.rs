//! The signing keys kept in the database (a castellan extension; as
//! `castellan keys`): listed without their private parts, a new one added
//! verify-only, one promoted to signing, one retired.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use castellan_core::ApiError;
use castellan_core::crypto::jwk::KeyKind;
use castellan_core::store::KeyState;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};

use crate::error::{HttpResult, Refusals};
use crate::extract::{AdminAuth, JsonBody, PathParams};
use crate::server::AppState;

/// A stored key, without its private part.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)] // a description for the OpenAPI document
pub struct KeyInfo {
    kid: String,
    /// `ES256`, `RS256` or `EdDSA`.
    alg: String,
    /// `verify` (published), `sign` (signing, and published) or `retired`.
    state: String,
    created_at: String,
    updated_at: String,
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(default)]
pub struct NewKey {
    /// `ES256` (the default), `RS256` or `EdDSA`.
    alg: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct KidPath {
    kid: String,
}

#[utoipa::path(
    get,
    path = "/admin/keys",
    operation_id = "admin_list_keys",
    tag = "admin",
    security(("bearer" = [])),
    responses((status = 200, body = Vec<KeyInfo>), Refusals)
)]
pub async fn list(State(st): State<AppState>, _admin: AdminAuth) -> HttpResult {
    Ok(Json(st.admin.keys().await?).into_response())
}

/// Adds a new key, verify-only: published at once, signing only once
/// promoted (wait for caches of the JWKS first).
#[utoipa::path(
    post,
    path = "/admin/keys",
    operation_id = "admin_add_key",
    tag = "admin",
    request_body = NewKey,
    security(("bearer" = [])),
    responses((status = 201, description = "Added: `{\"kid\"}`"), Refusals)
)]
pub async fn add(
    State(st): State<AppState>,
    admin: AdminAuth,
    JsonBody(b): JsonBody<NewKey>,
) -> HttpResult {
    let kind = match b.alg.as_deref().unwrap_or("ES256") {
        "ES256" => KeyKind::Es256,
        "RS256" => KeyKind::Rs256,
        "EdDSA" => KeyKind::EdDsa,
        other => {
            let m = format!("Unknown algorithm {other:?} (ES256, RS256 or EdDSA)");
            return Err(ApiError::validation(m).into());
        }
    };
    let kid = st.admin.add_key(&admin.actor, kind).await?;
    Ok((StatusCode::CREATED, Json(json!({ "kid": kid }))).into_response())
}

/// Makes a `verify` key the signing key; the one signing until now keeps
/// verifying. 404 `key_not_found` for any other key.
#[utoipa::path(
    post,
    path = "/admin/keys/{kid}/promote",
    operation_id = "admin_promote_key",
    tag = "admin",
    params(KidPath),
    security(("bearer" = [])),
    responses((status = 204, description = "Signing"), Refusals)
)]
pub async fn promote(
    State(st): State<AppState>,
    admin: AdminAuth,
    PathParams(p): PathParams<KidPath>,
) -> HttpResult {
    st.admin
        .set_key_state(&admin.actor, &p.kid, KeyState::Sign)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Stops publishing and accepting a `verify` key (its tokens are refused).
/// 404 `key_not_found` for any other key (the signing key cannot be retired).
#[utoipa::path(
    post,
    path = "/admin/keys/{kid}/retire",
    operation_id = "admin_retire_key",
    tag = "admin",
    params(KidPath),
    security(("bearer" = [])),
    responses((status = 204, description = "Retired"), Refusals)
)]
pub async fn retire(
    State(st): State<AppState>,
    admin: AdminAuth,
    PathParams(p): PathParams<KidPath>,
) -> HttpResult {
    st.admin
        .set_key_state(&admin.actor, &p.kid, KeyState::Retired)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
