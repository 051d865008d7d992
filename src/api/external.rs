//! External sign-in: `GET /authorize` sends the browser to the provider,
//! `GET|POST /callback` brings it back. Every answer is a redirect: to the
//! provider, to the app with the session (or a PKCE code), or to the app
//! with `error`, `error_code` and `error_description`, never an error page.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use castellan_core::redirect::with_params;
use castellan_core::{ApiError, validate};
use castellan_service::external::{Authorize, Callback, CallbackError, Landing};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::api::redirect_target;
use crate::error::{HttpResult, Refusals};
use crate::extract::{AuthUser, Own, PathParams, RawBody, RequestAud, parse_query};
use crate::server::AppState;
use axum::extract::RawQuery;

/// OAuth's own parameters, never passed on to the provider from a request
/// (GoTrue's list; `nonce` is passed on).
const RESERVED: [&str; 8] = [
    "client_id",
    "client_secret",
    "redirect_uri",
    "response_type",
    "state",
    "code_challenge",
    "code_challenge_method",
    "code_verifier",
];

#[derive(Deserialize, IntoParams, Default)]
#[into_params(parameter_in = Query)]
#[serde(default)]
pub struct AuthorizeQuery {
    /// `github`, `google`, … (an enabled one).
    provider: Option<String>,
    /// More scopes, comma-separated.
    scopes: Option<String>,
    redirect_to: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
    /// `/user/identities/authorize`: `true` answers `{"url": …}` instead of a redirect.
    skip_http_redirect: Option<String>,
    /// An invitation's token hash: the sign-in accepts it.
    invite_token: Option<String>,
}

fn found(location: String) -> Response {
    super::redirect(StatusCode::FOUND, location)
}

/// The request's parameters passed on to the provider, as GoTrue passes them.
fn passed_on(pairs: &BTreeMap<String, String>) -> Vec<(String, String)> {
    pairs
        .iter()
        .filter(|(k, _)| {
            !matches!(
                k.as_str(),
                "provider" | "scopes" | "skip_http_redirect" | "invite_token"
            )
        })
        .filter(|(k, _)| !RESERVED.contains(&k.to_ascii_lowercase().as_str()))
        .map(|(k, v)| match k.as_str() {
            "workos_provider" => ("provider".to_string(), v.clone()),
            _ => (k.clone(), v.clone()),
        })
        .collect()
}

/// `GET /authorize`: 302 to the provider.
#[utoipa::path(
    get,
    path = "/authorize",
    tag = "external",
    params(AuthorizeQuery),
    responses(
        (status = 302, description = "To the provider's authorize page", headers(("location" = String))),
        Refusals
    )
)]
pub async fn authorize(
    State(st): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> HttpResult {
    let (req, _) = authorize_request(&st, &headers, &raw.unwrap_or_default())?;
    let url = st.external.authorize(req).await?;
    Ok(found(url))
}

/// An authorize request's parts, and whether to answer the URL as JSON.
fn authorize_request(
    st: &AppState,
    headers: &HeaderMap,
    raw: &str,
) -> Result<(Authorize, bool), ApiError> {
    let q: AuthorizeQuery = parse_query(raw)?;
    let pairs: BTreeMap<String, String> = parse_query(raw)?;
    let pkce = validate::pkce(
        q.code_challenge.as_deref(),
        q.code_challenge_method.as_deref(),
    )?;
    let req = Authorize {
        provider: q.provider.unwrap_or_default(),
        scopes: q.scopes,
        params: passed_on(&pairs),
        redirect_to: redirect_target(st, headers, q.redirect_to.as_deref()),
        pkce,
        linking_target: None,
        invite_token: q.invite_token.filter(|t| !t.is_empty()),
    };
    Ok((req, q.skip_http_redirect.as_deref() == Some("true")))
}

/// `GET /user/identities/authorize`: the provider's URL for linking an
/// identity to the signed-in user (`GOTRUE_SECURITY_MANUAL_LINKING_ENABLED`).
#[utoipa::path(
    get,
    path = "/user/identities/authorize",
    tag = "external",
    params(AuthorizeQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "`{\"url\": …}` with `skip_http_redirect=true`"),
        (status = 302, description = "To the provider", headers(("location" = String))),
        Refusals
    )
)]
pub async fn link_identity(
    State(st): State<AppState>,
    Own(auth): Own<AuthUser>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> HttpResult {
    let (req, json) = authorize_request(&st, &headers, &raw.unwrap_or_default())?;
    let url = st.external.link(&auth.user, req).await?;
    if json {
        return Ok(axum::Json(serde_json::json!({ "url": url })).into_response());
    }
    Ok(found(url))
}

/// The `{identity_id}` path parameter.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct IdentityPath {
    /// A UUID (anything else is 404).
    identity_id: String,
}

/// `DELETE /user/identities/{identity_id}`: unlinks one of the user's
/// identities (never the last).
#[utoipa::path(
    delete,
    path = "/user/identities/{identity_id}",
    tag = "external",
    params(IdentityPath),
    security(("bearer" = [])),
    responses((status = 200, description = "`{}`"), Refusals)
)]
pub async fn unlink_identity(
    State(st): State<AppState>,
    Own(auth): Own<AuthUser>,
    PathParams(IdentityPath { identity_id }): PathParams<IdentityPath>,
) -> HttpResult {
    let id = uuid::Uuid::parse_str(&identity_id)
        .map_err(|_| ApiError::not_found("validation_failed", "identity_id must be an UUID"))?;
    st.external.unlink(&auth.user, id).await?;
    Ok(axum::Json(serde_json::json!({})).into_response())
}

#[derive(Deserialize, IntoParams, Default)]
#[into_params(parameter_in = Query)]
#[serde(default)]
pub struct CallbackParams {
    state: Option<String>,
    code: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
    /// OAuth 1.0a (Twitter): the request token, and its verifier.
    oauth_token: Option<String>,
    oauth_verifier: Option<String>,
    /// OAuth 1.0a: the user declined (Twitter names the request token).
    denied: Option<String>,
}

/// The landing URL with the outcome: the session in the fragment, the PKCE
/// code in the query, or the error in both (GoTrue's shape).
fn land(outcome: Result<(Landing, String), castellan_service::external::Refused>) -> Response {
    match outcome {
        Ok((Landing::Code(code), to)) => found(with_params(&to, &[("code", code)], &[])),
        Ok((
            Landing::Session {
                grant,
                provider_token,
                provider_refresh_token,
            },
            to,
        )) => {
            let g = *grant;
            let mut pairs: Vec<(&str, String)> = vec![
                ("access_token", g.access_token),
                ("expires_at", g.expires_at.to_string()),
                ("expires_in", g.expires_in.to_string()),
            ];
            if !provider_refresh_token.is_empty() {
                pairs.push(("provider_refresh_token", provider_refresh_token));
            }
            pairs.extend([
                ("provider_token", provider_token),
                ("refresh_token", g.refresh_token),
                ("sb", String::new()),
                ("token_type", "bearer".into()),
            ]);
            found(with_params(&to, &[], &pairs))
        }
        Err(refused) => {
            let mut pairs: Vec<(&str, String)> = Vec::new();
            match refused.error {
                CallbackError::Api(e) => {
                    let error = match e.code {
                        "signup_disabled" | "user_banned" | "provider_email_needs_verification" => {
                            "access_denied"
                        }
                        _ => match e.status {
                            400 => "invalid_request",
                            401 => "unauthorized_client",
                            403 => "access_denied",
                            503 => "temporarily_unavailable",
                            _ => "server_error",
                        },
                    };
                    if e.status >= 500 {
                        tracing::error!(code = e.code, message = %e.message, "external sign-in failed");
                    }
                    pairs.push(("error", error.into()));
                    pairs.push(("error_code", e.code.to_string()));
                    pairs.push(("error_description", e.message));
                }
                CallbackError::Provider { error, description } => {
                    pairs.push(("error", error));
                    if !description.is_empty() {
                        pairs.push(("error_description", description));
                    }
                }
            }
            // GoTrue's state loading answers with the query alone.
            if refused.before_state {
                let to = with_params(&refused.to, &pairs, &[]);
                return super::redirect(StatusCode::SEE_OTHER, to);
            }
            let mut fragment = pairs.clone();
            fragment.push(("sb", String::new()));
            found(with_params(&refused.to, &pairs, &fragment))
        }
    }
}

async fn callback(st: AppState, p: CallbackParams, aud: &str) -> Response {
    let declined = p.denied.filter(|d| !d.is_empty()).map(|_| {
        (
            "access_denied".to_string(),
            "The user denied the request".to_string(),
        )
    });
    let c = Callback {
        state: p.state,
        code: p.code.or(p.oauth_verifier),
        request_token: p.oauth_token,
        error: p
            .error
            .filter(|e| !e.is_empty())
            .map(|e| (e, p.error_description.unwrap_or_default()))
            .or(declined),
    };
    land(st.external.callback(c, aud).await)
}

/// `GET /callback`: where the provider sends the browser back.
#[utoipa::path(
    get,
    path = "/callback",
    tag = "external",
    params(CallbackParams),
    responses(
        (status = 302, description = "To the app: the session in the fragment, `?code=` for PKCE, or the error", headers(("location" = String))),
        (status = 303, description = "To the site, with the error: the state was missing, invalid or used", headers(("location" = String)))
    )
)]
pub async fn callback_get(
    State(st): State<AppState>,
    RequestAud(aud): RequestAud,
    RawQuery(raw): RawQuery,
) -> HttpResult {
    let p: CallbackParams = match parse_query(&raw.unwrap_or_default()) {
        Ok(p) => p,
        Err(e) => return Ok(land_error(&st, e)),
    };
    Ok(callback(st, p, &aud).await)
}

/// `POST /callback`: the same, for providers that post the form back.
#[utoipa::path(
    post,
    path = "/callback",
    tag = "external",
    responses(
        (status = 302, description = "As `GET /callback`", headers(("location" = String))),
        (status = 303, description = "As `GET /callback`", headers(("location" = String)))
    )
)]
pub async fn callback_post(
    State(st): State<AppState>,
    RequestAud(aud): RequestAud,
    RawBody(bytes): RawBody,
) -> HttpResult {
    let p: CallbackParams = match std::str::from_utf8(&bytes)
        .map_err(|_| ApiError::validation("The callback form is not UTF-8"))
        .and_then(parse_query)
    {
        Ok(p) => p,
        Err(e) => return Ok(land_error(&st, e)),
    };
    Ok(callback(st, p, &aud).await)
}

fn land_error(st: &AppState, e: ApiError) -> Response {
    let to = st
        .config
        .external
        .redirect_url
        .clone()
        .unwrap_or_else(|| st.config.site_url.clone());
    land(Err(castellan_service::external::Refused {
        to,
        error: CallbackError::Api(e),
        before_state: true,
    }))
}

/// SAML single sign-on is not offered: GoTrue's answer when it is off.
#[utoipa::path(
    post,
    path = "/sso",
    tag = "external",
    responses((status = 404, description = "`saml_provider_disabled`"))
)]
pub async fn sso() -> HttpResult {
    Err(ApiError::not_found("saml_provider_disabled", "SAML 2.0 is disabled").into())
}

/// As `POST /sso`.
#[utoipa::path(
    get,
    path = "/sso/saml/metadata",
    tag = "external",
    responses((status = 404, description = "`saml_provider_disabled`"))
)]
pub async fn sso_metadata() -> HttpResult {
    sso().await
}

/// As `POST /sso`.
#[utoipa::path(
    post,
    path = "/sso/saml/acs",
    tag = "external",
    responses((status = 404, description = "`saml_provider_disabled`"))
)]
pub async fn sso_acs() -> HttpResult {
    sso().await
}
