//! `/passkeys`: register a passkey while signed in, sign in with one alone,
//! list, rename and delete them (GoTrue's routes, bodies and error codes).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use castellan_core::ApiError;
use castellan_core::store::PasskeyRow;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::api::{TokenResponse, token_response};
use crate::error::{HttpResult, Refusals};
use crate::extract::{AuthLive, Feature, JsonBody, Own, PathParams, RawBody};
use crate::server::AppState;

/// Passkeys are on: GoTrue answers 404 `passkey_disabled` on every
/// `/passkeys` route before anything else when they are not.
pub struct PasskeysOn;

impl Feature for PasskeysOn {
    fn on(st: &AppState) -> Result<(), ApiError> {
        st.passkeys.on().map(drop)
    }
}

type On = crate::extract::On<PasskeysOn>;

/// A ceremony's options: the challenge to quote back, what to hand
/// `navigator.credentials.create` or `.get`, and when it ends (Unix seconds).
#[derive(Serialize, ToSchema)]
pub struct OptionsView {
    challenge_id: Uuid,
    #[schema(value_type = Object)]
    options: Value,
    expires_at: i64,
}

impl From<castellan_service::passkeys::Options> for OptionsView {
    fn from(o: castellan_service::passkeys::Options) -> Self {
        Self {
            challenge_id: o.challenge_id,
            options: o.options,
            expires_at: o.expires_at,
        }
    }
}

/// The browser's answer to a ceremony's options.
#[derive(Deserialize, Default, ToSchema)]
#[serde(default)]
pub struct VerifyBody {
    challenge_id: Option<String>,
    /// The `PublicKeyCredential`, serialized as WebAuthn's JSON.
    #[schema(value_type = Object)]
    credential: Option<Value>,
}

impl VerifyBody {
    /// GoTrue's checks, in its order.
    fn parts(self) -> Result<(Uuid, Value), ApiError> {
        let raw = self.challenge_id.filter(|c| !c.is_empty());
        let raw = raw.ok_or_else(|| ApiError::validation("challenge_id is required"))?;
        let credential = self
            .credential
            .ok_or_else(|| ApiError::validation("credential is required"))?;
        let id = Uuid::parse_str(&raw)
            .map_err(|_| ApiError::validation("challenge_id must be a valid UUID"))?;
        Ok((id, credential))
    }
}

/// A passkey as listed (never its key).
#[derive(Serialize, ToSchema)]
pub struct PasskeyView {
    id: Uuid,
    #[serde(skip_serializing_if = "String::is_empty")]
    friendly_name: String,
    created_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_used_at: Option<DateTime<Utc>>,
}

impl From<PasskeyRow> for PasskeyView {
    fn from(r: PasskeyRow) -> Self {
        Self {
            id: r.id,
            friendly_name: r.friendly_name,
            created_at: r.created_at,
            last_used_at: r.last_used_at,
        }
    }
}

pub fn views(rows: Vec<PasskeyRow>) -> Vec<PasskeyView> {
    rows.into_iter().map(PasskeyView::from).collect()
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(default)]
pub struct RenameBody {
    friendly_name: Option<String>,
}

/// The `{passkey_id}` path parameter.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct PasskeyPath {
    /// A UUID (anything else is 404).
    passkey_id: String,
}

/// GoTrue's 404 for an id that is not a UUID, as for one not found.
pub(crate) fn passkey_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::not_found("validation_failed", "Passkey not found"))
}

/// The session of the token, required to register.
fn registering(auth: &AuthLive) -> Result<Uuid, ApiError> {
    if auth.live.user.is_anonymous {
        return Err(ApiError::forbidden(
            "no_authorization",
            "Anonymous user not allowed to perform these actions",
        ));
    }
    auth.session_id
        .ok_or_else(|| ApiError::unauthorized("no_authorization", "A valid session is required"))
}

#[utoipa::path(
    post,
    path = "/passkeys/registration/options",
    tag = "passkeys",
    operation_id = "passkey_registration_options",
    security(("bearer" = [])),
    responses((status = 200, body = OptionsView), Refusals)
)]
pub async fn registration_options(
    _: On,
    State(st): State<AppState>,
    Own(auth): Own<AuthLive>,
    RawBody(_): RawBody,
) -> HttpResult {
    let session = registering(&auth)?;
    let o = st
        .passkeys
        .registration_options(&auth.live.user, session)
        .await?;
    Ok(Json(OptionsView::from(o)).into_response())
}

#[utoipa::path(
    post,
    path = "/passkeys/registration/verify",
    tag = "passkeys",
    operation_id = "passkey_registration_verify",
    request_body = VerifyBody,
    security(("bearer" = [])),
    responses((status = 200, body = PasskeyView), Refusals)
)]
pub async fn registration_verify(
    _: On,
    State(st): State<AppState>,
    Own(auth): Own<AuthLive>,
    JsonBody(b): JsonBody<VerifyBody>,
) -> HttpResult {
    let session = registering(&auth)?;
    let (challenge, credential) = b.parts()?;
    let row = st
        .passkeys
        .register(&auth.live.user, session, challenge, credential)
        .await?;
    Ok(Json(PasskeyView::from(row)).into_response())
}

#[utoipa::path(
    post,
    path = "/passkeys/authentication/options",
    tag = "passkeys",
    operation_id = "passkey_authentication_options",
    responses((status = 200, body = OptionsView), Refusals)
)]
pub async fn authentication_options(
    _: On,
    State(st): State<AppState>,
    RawBody(_): RawBody,
) -> HttpResult {
    let o = st.passkeys.authentication_options().await?;
    Ok(Json(OptionsView::from(o)).into_response())
}

#[utoipa::path(
    post,
    path = "/passkeys/authentication/verify",
    tag = "passkeys",
    operation_id = "passkey_authentication_verify",
    request_body = VerifyBody,
    responses((status = 200, body = TokenResponse), Refusals)
)]
pub async fn authentication_verify(
    _: On,
    State(st): State<AppState>,
    JsonBody(b): JsonBody<VerifyBody>,
) -> HttpResult {
    let (challenge, credential) = b.parts()?;
    let grant = st.passkeys.sign_in(challenge, credential).await?;
    Ok(Json(token_response(grant)).into_response())
}

#[utoipa::path(
    get,
    path = "/passkeys",
    tag = "passkeys",
    operation_id = "list_passkeys",
    security(("bearer" = [])),
    responses((status = 200, body = Vec<PasskeyView>), Refusals)
)]
pub async fn list(_: On, State(st): State<AppState>, Own(auth): Own<AuthLive>) -> HttpResult {
    let rows = st.passkeys.list(auth.live.user.id).await?;
    Ok(Json(views(rows)).into_response())
}

#[utoipa::path(
    patch,
    path = "/passkeys/{passkey_id}",
    tag = "passkeys",
    operation_id = "rename_passkey",
    params(PasskeyPath),
    request_body = RenameBody,
    security(("bearer" = [])),
    responses((status = 200, body = PasskeyView), Refusals)
)]
pub async fn rename(
    _: On,
    State(st): State<AppState>,
    Own(auth): Own<AuthLive>,
    PathParams(PasskeyPath { passkey_id: raw }): PathParams<PasskeyPath>,
    JsonBody(b): JsonBody<RenameBody>,
) -> HttpResult {
    let id = passkey_id(&raw)?;
    let name = b.friendly_name.unwrap_or_default();
    let row = st.passkeys.rename(&auth.live.user, id, &name).await?;
    Ok(Json(PasskeyView::from(row)).into_response())
}

#[utoipa::path(
    delete,
    path = "/passkeys/{passkey_id}",
    tag = "passkeys",
    operation_id = "delete_passkey",
    params(PasskeyPath),
    security(("bearer" = [])),
    responses((status = 204), Refusals)
)]
pub async fn delete(
    _: On,
    State(st): State<AppState>,
    Own(auth): Own<AuthLive>,
    PathParams(PasskeyPath { passkey_id: raw }): PathParams<PasskeyPath>,
) -> HttpResult {
    let id = passkey_id(&raw)?;
    st.passkeys
        .delete(&auth.live.user, auth.session_id, id)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
