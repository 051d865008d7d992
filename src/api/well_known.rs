//! `/.well-known/jwks.json` and `/.well-known/openid-configuration`: what
//! another service needs to verify castellan's access tokens by itself.

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::server::AppState;

/// ID tokens are signed by asymmetric keys only: the ring's, RS256 when
/// there is none (OpenID Connect's default; `openid` is refused then).
fn id_token_algorithms(st: &AppState) -> Vec<String> {
    let algs: Vec<String> = st
        .accounts
        .keys()
        .algorithms()
        .into_iter()
        .filter(|a| !a.starts_with("HS"))
        .collect();
    match algs.is_empty() {
        true => vec!["RS256".into()],
        false => algs,
    }
}

/// Caches (and `supabase.auth.getClaims()`) may keep these ten minutes,
/// which is why a new key is published before it signs.
const CACHE: (header::HeaderName, &str) = (header::CACHE_CONTROL, "public, max-age=600");

/// The public JWKs of the asymmetric keys (never a symmetric one).
#[derive(Serialize, ToSchema)]
pub struct Jwks {
    #[schema(value_type = Vec<Object>)]
    keys: Value,
}

#[utoipa::path(
    get,
    path = "/.well-known/jwks.json",
    tag = "keys",
    responses((status = 200, body = Jwks, headers(("cache-control" = String))))
)]
pub async fn jwks(State(st): State<AppState>) -> impl IntoResponse {
    let keys = st.accounts.keys().jwks()["keys"].take();
    ([CACHE], Json(Jwks { keys }))
}

/// OpenID Connect discovery (and OAuth 2.0 metadata), as GoTrue gives it;
/// the signing algorithms are the ones this server accepts.
#[derive(Serialize, ToSchema)]
pub struct OpenIdConfiguration {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
    userinfo_endpoint: String,
    scopes_supported: [&'static str; 5],
    response_types_supported: [&'static str; 1],
    response_modes_supported: [&'static str; 1],
    grant_types_supported: [&'static str; 2],
    subject_types_supported: [&'static str; 1],
    id_token_signing_alg_values_supported: Vec<String>,
    token_endpoint_auth_methods_supported: [&'static str; 3],
    claims_supported: [&'static str; 15],
    code_challenge_methods_supported: [&'static str; 2],
    /// RFC 7009 (castellan's; GoTrue has none).
    revocation_endpoint: String,
    revocation_endpoint_auth_methods_supported: [&'static str; 3],
    /// RFC 7591, when dynamic registration is allowed.
    #[serde(skip_serializing_if = "Option::is_none")]
    registration_endpoint: Option<String>,
    /// RFC 9207: the authorization response names the issuer.
    authorization_response_iss_parameter_supported: bool,
}

#[utoipa::path(
    get,
    path = "/.well-known/openid-configuration",
    tag = "keys",
    responses((status = 200, body = OpenIdConfiguration, headers(("cache-control" = String))))
)]
pub async fn openid_configuration(State(st): State<AppState>) -> impl IntoResponse {
    ([CACHE], Json(discovery(&st)))
}

/// RFC 8414's metadata: the same document, served when the OAuth server is on.
#[utoipa::path(
    get,
    path = "/.well-known/oauth-authorization-server",
    tag = "keys",
    responses(
        (status = 200, body = OpenIdConfiguration, headers(("cache-control" = String))),
        (status = 404, description = "The OAuth server is off (`feature_disabled`)")
    )
)]
pub async fn oauth_authorization_server(
    _: crate::api::oauth_server::On,
    State(st): State<AppState>,
) -> impl IntoResponse {
    ([CACHE], Json(discovery(&st)))
}

fn discovery(st: &AppState) -> OpenIdConfiguration {
    let dynamic = st
        .config
        .oauth_server
        .as_ref()
        .is_some_and(|c| c.allow_dynamic_registration);
    let issuer = st.config.jwt.issuer.clone().unwrap_or_default();
    let base = issuer.trim_end_matches('/').to_string();
    OpenIdConfiguration {
        authorization_endpoint: format!("{base}/oauth/authorize"),
        token_endpoint: format!("{base}/oauth/token"),
        jwks_uri: format!("{base}/.well-known/jwks.json"),
        userinfo_endpoint: format!("{base}/oauth/userinfo"),
        issuer,
        scopes_supported: ["openid", "profile", "email", "phone", "offline_access"],
        response_types_supported: ["code"],
        response_modes_supported: ["query"],
        grant_types_supported: ["authorization_code", "refresh_token"],
        subject_types_supported: ["public"],
        id_token_signing_alg_values_supported: id_token_algorithms(st),
        token_endpoint_auth_methods_supported: [
            "client_secret_basic",
            "client_secret_post",
            "none",
        ],
        claims_supported: [
            "sub",
            "aud",
            "iss",
            "exp",
            "iat",
            "auth_time",
            "nonce",
            "email",
            "email_verified",
            "phone_number",
            "phone_number_verified",
            "name",
            "picture",
            "preferred_username",
            "updated_at",
        ],
        code_challenge_methods_supported: ["S256", "plain"],
        revocation_endpoint: format!("{base}/oauth/revoke"),
        revocation_endpoint_auth_methods_supported: [
            "client_secret_basic",
            "client_secret_post",
            "none",
        ],
        registration_endpoint: dynamic.then(|| format!("{base}/oauth/clients/register")),
        authorization_response_iss_parameter_supported: true,
    }
}
