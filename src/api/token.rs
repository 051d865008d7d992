use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use castellan_core::{ApiError, validate};
use castellan_service::accounts::PasswordGrant;
use serde::Deserialize;
use serde_json::json;
use utoipa::{IntoParams, ToSchema};

use crate::api::{AudienceHeader, TokenResponse, token_response};
use crate::error::{HttpResult, Refusals};
use crate::extract::{AuthLive, QueryParams, RawBody, RequestAud, parse_json};
use crate::server::AppState;

#[derive(Deserialize, IntoParams)]
pub struct GrantQuery {
    /// `password`, `refresh_token`, `pkce`, `id_token` or `web3`.
    #[param(required = true)]
    grant_type: Option<String>,
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(default)]
struct PasswordBody {
    #[schema(format = Email)]
    email: Option<String>,
    phone: Option<String>,
    password: Option<String>,
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(default)]
struct PkceBody {
    auth_code: Option<String>,
    code_verifier: Option<String>,
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(default)]
struct RefreshBody {
    refresh_token: Option<String>,
}

/// An OpenID Connect ID token from an enabled provider.
#[derive(Deserialize, Default, ToSchema)]
#[serde(default)]
struct IdTokenBody {
    id_token: Option<String>,
    /// Accepted and unused, as by GoTrue when the token has no `at_hash`.
    access_token: Option<String>,
    /// The nonce whose SHA-256 the token carries.
    nonce: Option<String>,
    /// `google`, `keycloak`, `kakao`; or `client_id` and `issuer`.
    provider: Option<String>,
    client_id: Option<String>,
    issuer: Option<String>,
    /// Link the token's identity to the user of `Authorization` instead
    /// (`GOTRUE_SECURITY_MANUAL_LINKING_ENABLED`).
    link_identity: bool,
}

/// The body of each grant type, for the OpenAPI document (the handler
/// reads the one its grant type names; `Deserialize` carries `untagged`).
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum GrantBody {
    Password(PasswordBody),
    Pkce(PkceBody),
    Refresh(RefreshBody),
    IdToken(IdTokenBody),
    Web3(Web3Body),
}

/// `POST /token?grant_type=…`. The grant type comes from the query string;
/// the body is JSON. Errors use the standard bodies, not OAuth's.
#[utoipa::path(
    post,
    path = "/token",
    tag = "sessions",
    params(GrantQuery, AudienceHeader),
    request_body = GrantBody,
    responses((status = 200, body = TokenResponse), Refusals)
)]
pub async fn token(
    State(st): State<AppState>,
    QueryParams(q): QueryParams<GrantQuery>,
    RequestAud(aud): RequestAud,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> HttpResult {
    let grant = q.grant_type.unwrap_or_default();
    if grant == "web3" {
        return web3_grant(&st, &body, &aud).await;
    }
    if grant == "id_token" {
        return id_token_grant(&st, &headers, &body, &aud).await;
    }
    if !matches!(grant.as_str(), "password" | "refresh_token" | "pkce") {
        return Err(ApiError::bad_request("invalid_credentials", "unsupported_grant_type").into());
    }
    let resp: Response = match grant.as_str() {
        "password" => {
            let b: PasswordBody = parse_json(&body)?;
            let (g, weak) = st
                .accounts
                .password_grant(PasswordGrant {
                    email: b.email,
                    phone: b.phone,
                    password: b.password.unwrap_or_default(),
                    aud,
                })
                .await?;
            let weak = (!weak.is_empty()).then(|| {
                json!({"message": validate::weak_password_message(&st.config.password, &weak), "reasons": weak})
            });
            // GoTrue's key is there for every password sign-in: null when fine.
            let mut r = token_response(g);
            r.weak_password = Some(weak);
            Json(r).into_response()
        }
        "pkce" => {
            let b: PkceBody = parse_json(&body)?;
            let (g, provider) = st
                .accounts
                .pkce_grant(
                    b.auth_code.as_deref().unwrap_or_default(),
                    b.code_verifier.as_deref().unwrap_or_default(),
                )
                .await?;
            let mut r = token_response(g);
            if let Some((token, refresh)) = provider {
                r.provider_token = Some(token);
                r.provider_refresh_token = Some(refresh).filter(|t| !t.is_empty());
            }
            Json(r).into_response()
        }
        _ => {
            let b: RefreshBody = parse_json(&body)?;
            let token = b.refresh_token.unwrap_or_default();
            let g = st.actors.refresh.refresh(&token).await?;
            Json(token_response(g)).into_response()
        }
    };
    Ok(resp)
}

/// `grant_type=id_token`; its token checks answer in OAuth's error shape,
/// as GoTrue's do.
async fn id_token_grant(st: &AppState, headers: &HeaderMap, body: &[u8], aud: &str) -> HttpResult {
    use castellan_service::external::{IdTokenGrant, IdTokenRefusal};
    let b: IdTokenBody = parse_json(body)?;
    let linking_target = match b.link_identity {
        true => match linking_target(st, headers).await {
            Ok(id) => Some(id),
            Err(refused) => return Ok(refused),
        },
        false => None,
    };
    let g = IdTokenGrant {
        linking_target,
        id_token: b.id_token.unwrap_or_default(),
        nonce: b.nonce.unwrap_or_default(),
        provider: b.provider.unwrap_or_default(),
        client_id: b.client_id.unwrap_or_default(),
        issuer: b.issuer.unwrap_or_default(),
    };
    let _ = b.access_token;
    match st.external.id_token(g, aud).await {
        Ok(grant) => Ok(Json(token_response(grant)).into_response()),
        Err(IdTokenRefusal::Api(e)) => Err(e.into()),
        Err(IdTokenRefusal::OAuth { error, description }) => Ok(oauth_refusal(error, &description)),
    }
}

/// A wallet's signed Sign-In With Solana or Ethereum message.
#[derive(Deserialize, Default, ToSchema)]
#[serde(default)]
struct Web3Body {
    /// `solana` or `ethereum`.
    chain: Option<String>,
    /// The message the wallet signed, as it signed it.
    message: Option<String>,
    /// Solana: 64 bytes in base64; Ethereum: 65 bytes in hex with `0x`.
    signature: Option<String>,
}

async fn web3_grant(st: &AppState, body: &[u8], aud: &str) -> HttpResult {
    use castellan_service::external::IdTokenRefusal;
    if let Some(off) = st.external.web3_off() {
        return Err(off.into());
    }
    let b: Web3Body = parse_json(body)?;
    let g = castellan_service::web3::Web3Grant {
        chain: b.chain.unwrap_or_default(),
        message: b.message.unwrap_or_default(),
        signature: b.signature.unwrap_or_default(),
    };
    match st.external.web3(g, aud).await {
        Ok(grant) => Ok(Json(token_response(grant)).into_response()),
        Err(IdTokenRefusal::Api(e)) => Err(e.into()),
        Err(IdTokenRefusal::OAuth { error, description }) => Ok(oauth_refusal(error, &description)),
    }
}

fn oauth_refusal(error: &str, description: &str) -> Response {
    let mut r = (
        axum::http::StatusCode::BAD_REQUEST,
        Json(json!({"error": error, "error_description": description})),
    )
        .into_response();
    r.extensions_mut().insert(crate::error::OAuthShaped);
    r
}

/// The signed-in user an `id_token` grant links to: GoTrue refuses a
/// request without `Authorization` in OAuth's shape, a bad token as any
/// authenticated route does.
async fn linking_target(st: &AppState, headers: &HeaderMap) -> Result<uuid::Uuid, Response> {
    if !headers.contains_key(axum::http::header::AUTHORIZATION) {
        return Err(oauth_refusal(
            "invalid request",
            "Linking requires a valid user access token in Authorization",
        ));
    }
    match AuthLive::from_headers(headers, st).await {
        Ok(auth) => Ok(auth.live.user.id),
        Err(e) => Err(e.into_response()),
    }
}
