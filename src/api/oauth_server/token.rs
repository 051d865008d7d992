//! The endpoints an OAuth client calls itself: `POST /oauth/token` (the
//! code with its PKCE verifier, or a refresh token), `POST /oauth/revoke`
//! (RFC 7009) and OpenID Connect's `/oauth/userinfo`. Client errors are in
//! OAuth's shape (RFC 6749 §5.2), as the clients' libraries read them.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use castellan_core::ApiError;
use castellan_core::store::OAuthClient;
use castellan_service::oauth_server::{ClientCredentials, TokenRequest};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::On;
use crate::error::{HttpResult, OAuthRefusals, Refusals};
use crate::extract::{AuthLive, RawBody};
use crate::server::AppState;

/// A token or revocation request, as a form (RFC 6749) or JSON (GoTrue).
#[derive(Deserialize, ToSchema, Default)]
#[serde(default)]
pub struct TokenForm {
    /// `authorization_code` or `refresh_token`.
    grant_type: String,
    code: String,
    refresh_token: String,
    redirect_uri: String,
    client_id: String,
    client_secret: String,
    code_verifier: String,
    resource: String,
    /// `/oauth/revoke`: the token to revoke.
    token: String,
    /// `/oauth/revoke`: `refresh_token` or `access_token` (a hint only).
    token_type_hint: String,
}

fn parse_form(headers: &HeaderMap, body: &[u8]) -> Result<TokenForm, ApiError> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.contains("application/json"));
    let form: TokenForm = match json {
        true => serde_json::from_slice(body).map_err(|_| invalid("Invalid JSON body"))?,
        false => {
            serde_urlencoded::from_bytes(body).map_err(|_| invalid("Failed to parse form data"))?
        }
    };
    let fields = [
        &form.code,
        &form.refresh_token,
        &form.client_secret,
        &form.token,
    ];
    if fields.iter().any(|f| f.contains('\0')) {
        return Err(invalid("parameters cannot contain NUL"));
    }
    Ok(form)
}

fn invalid(m: &str) -> ApiError {
    ApiError::oauth(400, "invalid_request", m.to_string())
}

/// RFC 6749 §2.3.1: HTTP Basic (each part form-encoded), else the body.
fn credentials(headers: &HeaderMap, form: &TokenForm) -> Result<ClientCredentials, ApiError> {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_at_checked(6))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic "));
    if let Some((_, encoded)) = basic {
        return castellan_service::oauth_server::basic_credentials(encoded);
    }
    Ok(ClientCredentials {
        client_id: form.client_id.clone(),
        client_secret: form.client_secret.clone(),
        method: match form.client_secret.is_empty() {
            true => "none",
            false => "client_secret_post",
        },
    })
}

/// The request's form and its authenticated client.
async fn authenticated(
    st: &AppState,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(TokenForm, OAuthClient), ApiError> {
    let form = parse_form(headers, body)?;
    let creds = credentials(headers, &form)?;
    let client = st.oauth_server.client(&creds).await?;
    Ok((form, client))
}

/// RFC 6749 §5.1's answer (GoTrue's fields, with `scope`).
#[derive(Serialize, ToSchema)]
pub struct TokenAnswer {
    access_token: String,
    /// `bearer`.
    token_type: &'static str,
    expires_in: i64,
    refresh_token: String,
    scope: String,
    /// With the `openid` scope.
    #[serde(skip_serializing_if = "Option::is_none")]
    id_token: Option<String>,
}

fn no_store(body: impl IntoResponse) -> Response {
    let headers = [
        (header::CACHE_CONTROL, "no-store"),
        (header::PRAGMA, "no-cache"),
    ];
    (headers, body).into_response()
}

#[utoipa::path(
    post,
    path = "/oauth/token",
    tag = "oauth-server",
    operation_id = "oauth_token",
    request_body(content = TokenForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, body = TokenAnswer), OAuthRefusals)
)]
pub async fn token(
    _: On,
    State(st): State<AppState>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> HttpResult {
    let (form, client) = authenticated(&st, &headers, &body).await?;
    let request = TokenRequest {
        grant_type: form.grant_type,
        code: form.code,
        refresh_token: form.refresh_token,
        redirect_uri: form.redirect_uri,
        code_verifier: form.code_verifier,
        resource: form.resource,
    };
    let t = st.oauth_server.token(&client, request).await?;
    Ok(no_store(Json(TokenAnswer {
        access_token: t.grant.access_token,
        token_type: "bearer",
        expires_in: t.grant.expires_in,
        refresh_token: t.grant.refresh_token,
        scope: t.scope,
        id_token: t.id_token,
    })))
}

#[utoipa::path(
    post,
    path = "/oauth/revoke",
    tag = "oauth-server",
    operation_id = "oauth_revoke",
    request_body(content = TokenForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "Revoked, or nothing of the client's to revoke (RFC 7009 §2.2)"),
        OAuthRefusals
    )
)]
pub async fn revoke(
    _: On,
    State(st): State<AppState>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> HttpResult {
    let (form, client) = authenticated(&st, &headers, &body).await?;
    st.oauth_server.revoke(&client, &form.token).await?;
    Ok(no_store(StatusCode::OK))
}

#[utoipa::path(
    get,
    path = "/oauth/userinfo",
    tag = "oauth-server",
    operation_id = "oauth_userinfo",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "`sub` and the claims the session's scopes allow", body = Object),
        Refusals
    )
)]
pub async fn userinfo(_: On, State(st): State<AppState>, auth: AuthLive) -> HttpResult {
    let live = &auth.live;
    let claims: Value = st.oauth_server.userinfo(&live.user, live.session.as_ref());
    Ok(no_store(Json(claims)))
}

/// OpenID Connect Core §5.3.1: userinfo answers POST as GET.
#[utoipa::path(
    post,
    path = "/oauth/userinfo",
    tag = "oauth-server",
    operation_id = "oauth_userinfo_post",
    security(("bearer" = [])),
    responses((status = 200, body = Object), Refusals)
)]
pub async fn userinfo_post(on: On, st: State<AppState>, auth: AuthLive) -> HttpResult {
    userinfo(on, st, auth).await
}
