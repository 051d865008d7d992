//! The authorization flow: `GET /oauth/authorize` sends the browser to the
//! site's consent page, which reads the request and answers it for the
//! signed-in user (`/oauth/authorizations/{id}` and `…/consent`).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use castellan_core::ApiError;
use castellan_service::oauth_server::{AuthorizeRequest, Authorized, Details};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::On;
use crate::error::{HttpResult, Refusals};
use crate::extract::{AuthUser, JsonBody, Own, PathParams, QueryParams};
use crate::server::AppState;

/// RFC 6749 §4.1.1's parameters with PKCE (RFC 7636), `resource` (RFC
/// 8707) and OpenID Connect's `nonce`.
#[derive(Deserialize, IntoParams, Default)]
#[into_params(parameter_in = Query)]
#[serde(default)]
pub struct AuthorizeQuery {
    client_id: String,
    redirect_uri: String,
    /// `code` (the only one; the default).
    response_type: String,
    /// Space-separated: `openid`, `profile`, `email`, `phone`, `offline_access`.
    scope: String,
    state: String,
    resource: String,
    code_challenge: String,
    /// `S256` (required of public clients) or `plain`.
    code_challenge_method: String,
    nonce: String,
}

impl From<AuthorizeQuery> for AuthorizeRequest {
    fn from(q: AuthorizeQuery) -> Self {
        AuthorizeRequest {
            client_id: q.client_id,
            redirect_uri: q.redirect_uri,
            response_type: q.response_type,
            scope: q.scope,
            state: q.state,
            resource: q.resource,
            code_challenge: q.code_challenge,
            code_challenge_method: q.code_challenge_method,
            nonce: q.nonce,
        }
    }
}

#[utoipa::path(
    get,
    path = "/oauth/authorize",
    tag = "oauth-server",
    operation_id = "oauth_authorize",
    params(AuthorizeQuery),
    responses(
        (status = 302, description = "To the site's consent page with `authorization_id`, or back to the client's redirect URI with `error` (and `state`, `iss`)"),
        Refusals
    )
)]
pub async fn authorize(
    _: On,
    State(st): State<AppState>,
    QueryParams(q): QueryParams<AuthorizeQuery>,
) -> HttpResult {
    let to = match st.oauth_server.authorize(q.into()).await? {
        Authorized::Consent(to) | Authorized::Refused(to) => to,
    };
    Ok(crate::api::redirect(StatusCode::FOUND, to))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct AuthorizationPath {
    authorization_id: String,
}

#[derive(Serialize, ToSchema)]
pub struct ClientDetails {
    id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    uri: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    logo_uri: String,
}

impl ClientDetails {
    pub fn of(
        id: uuid::Uuid,
        name: Option<String>,
        uri: Option<String>,
        logo: Option<String>,
    ) -> Self {
        ClientDetails {
            id: id.to_string(),
            name: name.unwrap_or_default(),
            uri: uri.unwrap_or_default(),
            logo_uri: logo.unwrap_or_default(),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct UserDetails {
    id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    email: String,
}

/// What the consent page shows the user.
#[derive(Serialize, ToSchema)]
pub struct AuthorizationDetails {
    authorization_id: String,
    redirect_uri: String,
    client: ClientDetails,
    user: UserDetails,
    scope: String,
}

/// Where the consent page sends the browser next.
#[derive(Serialize, ToSchema)]
pub struct ConsentRedirect {
    redirect_url: String,
}

/// GoTrue's check: a browser's request comes from an allowed origin (the
/// consent page is the site's); none at all is a server or an app.
fn from_allowed_origin(st: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(origin) = headers.get(axum::http::header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or_default();
    let cfg = &st.config;
    match castellan_core::redirect::is_allowed(origin, &cfg.site_url, &cfg.uri_allow_list) {
        true => Ok(()),
        false => Err(ApiError::validation("unauthorized request origin")),
    }
}

#[utoipa::path(
    get,
    path = "/oauth/authorizations/{authorization_id}",
    tag = "oauth-server",
    operation_id = "oauth_authorization_details",
    params(AuthorizationPath),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The request to ask the user about, or (an earlier consent covering it) where to go", body = AuthorizationDetails),
        Refusals
    )
)]
pub async fn details(
    _: On,
    State(st): State<AppState>,
    headers: HeaderMap,
    Own(auth): Own<AuthUser>,
    PathParams(AuthorizationPath { authorization_id }): PathParams<AuthorizationPath>,
) -> HttpResult {
    from_allowed_origin(&st, &headers)?;
    let user = &auth.user;
    let answer = st
        .oauth_server
        .details(user, auth.session_id, &authorization_id)
        .await?;
    Ok(match answer {
        Details::Approved(redirect_url) => Json(ConsentRedirect { redirect_url }).into_response(),
        Details::Ask {
            authorization: a,
            client: c,
        } => Json(AuthorizationDetails {
            authorization_id: a.authorization_id,
            redirect_uri: a.redirect_uri,
            client: ClientDetails::of(c.id, c.client_name, c.client_uri, c.logo_uri),
            user: UserDetails {
                id: user.id.to_string(),
                email: user.email_str().to_string(),
            },
            scope: a.scope,
        })
        .into_response(),
    })
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(default)]
pub struct ConsentBody {
    /// `approve` or `deny`.
    action: String,
}

#[utoipa::path(
    post,
    path = "/oauth/authorizations/{authorization_id}/consent",
    tag = "oauth-server",
    operation_id = "oauth_consent",
    params(AuthorizationPath),
    request_body = ConsentBody,
    security(("bearer" = [])),
    responses((status = 200, body = ConsentRedirect), Refusals)
)]
pub async fn consent(
    _: On,
    State(st): State<AppState>,
    headers: HeaderMap,
    Own(auth): Own<AuthUser>,
    PathParams(AuthorizationPath { authorization_id }): PathParams<AuthorizationPath>,
    JsonBody(b): JsonBody<ConsentBody>,
) -> Result<Response, crate::error::HttpError> {
    from_allowed_origin(&st, &headers)?;
    let approve = match b.action.as_str() {
        "approve" => true,
        "deny" => false,
        _ => return Err(ApiError::validation("action must be 'approve' or 'deny'").into()),
    };
    let redirect_url = st
        .oauth_server
        .consent(&auth.user, auth.session_id, &authorization_id, approve)
        .await?;
    Ok(Json(ConsentRedirect { redirect_url }).into_response())
}
