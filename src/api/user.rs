use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use castellan_core::models::UserView;
use castellan_core::{ApiError, validate};
use castellan_service::accounts::UserUpdate;
use serde::Deserialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::api::{AudienceHeader, Empty};
use crate::error::{HttpResult, Refusals};
use crate::extract::{AuthLive, AuthUser, JsonBody, Own, RedirectQuery, RedirectTo, SentAud};
use crate::server::AppState;

/// `GET /user`. The request audience (`X-JWT-AUD`) must match the token's.
/// The body is the live entry's rendering, made once per cache entry.
#[utoipa::path(
    get,
    path = "/user",
    tag = "user",
    params(AudienceHeader),
    security(("bearer" = [])),
    responses((status = 200, body = UserView), Refusals)
)]
pub async fn get_user(auth: AuthLive, SentAud(sent): SentAud) -> HttpResult {
    if let (Some(req_aud), Some(tok_aud)) = (sent, &auth.token_aud)
        && &req_aud != tok_aud
    {
        return Err(ApiError::validation("Token audience doesn't match request audience").into());
    }
    let body = auth.live.rendered();
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response())
}

/// The changes to make; an email or phone change is confirmed by a code
/// or link first, a password change may need `nonce` (reauthentication).
#[derive(Deserialize, Default, ToSchema)]
#[serde(default)]
pub struct UpdateBody {
    #[schema(format = Email)]
    email: Option<String>,
    phone: Option<String>,
    password: Option<String>,
    /// Merged into `user_metadata`.
    #[schema(value_type = Option<Object>)]
    data: Option<Map<String, Value>>,
    #[schema(value_type = Option<Object>)]
    app_metadata: Option<Map<String, Value>>,
    nonce: Option<String>,
    /// For a phone change: `sms` (the default) or `whatsapp`.
    channel: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
}

/// `GET /reauthenticate`: a code by email (or SMS) for a password change.
#[utoipa::path(
    get,
    path = "/reauthenticate",
    tag = "user",
    security(("bearer" = [])),
    responses((status = 200, body = Empty), Refusals)
)]
pub async fn reauthenticate(State(st): State<AppState>, Own(auth): Own<AuthUser>) -> HttpResult {
    st.accounts.reauthenticate(&auth.user).await?;
    Ok(Json(Empty {}).into_response())
}

/// `PUT /user`: changes the signed-in user.
#[utoipa::path(
    put,
    path = "/user",
    tag = "user",
    params(RedirectQuery),
    security(("bearer" = [])),
    request_body = UpdateBody,
    responses((status = 200, body = UserView), Refusals)
)]
pub async fn update_user(
    State(st): State<AppState>,
    Own(auth): Own<AuthUser>,
    RedirectTo(redirect_to): RedirectTo,
    JsonBody(b): JsonBody<UpdateBody>,
) -> HttpResult {
    let up = UserUpdate {
        email: b.email,
        phone: b.phone,
        password: b.password,
        data: b.data,
        app_metadata: b.app_metadata,
        nonce: b.nonce,
        pkce: validate::pkce(
            b.code_challenge.as_deref(),
            b.code_challenge_method.as_deref(),
        )?,
        redirect_to,
        channel: b.channel,
    };
    // GoTrue answers with the user it read at the start, updated in memory:
    // its computed `confirmed_at` is the one from before the change.
    let confirmed_before = auth.user.confirmed_at();
    let (user, ids): (_, _) = st
        .accounts
        .update_user(auth.user, auth.session_id, up)
        .await?;
    let mut view = user.view(Some(&ids));
    view.confirmed_at = confirmed_before;
    Ok(Json(view).into_response())
}
