use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use castellan_actors::accounts::PasswordGrant;
use castellan_core::{ApiError, validate};
use serde::Deserialize;
use serde_json::json;
use utoipa::{IntoParams, ToSchema};

use crate::api::{AudienceHeader, TokenResponse, token_response};
use crate::error::{HttpResult, Refusals};
use crate::extract::{QueryParams, RawBody, RequestAud, parse_json};
use crate::server::AppState;

#[derive(Deserialize, IntoParams)]
pub struct GrantQuery {
    /// `password`, `refresh_token` or `pkce`.
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

/// The body of each grant type, for the OpenAPI document (the handler
/// reads the one its grant type names; `Deserialize` carries `untagged`).
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum GrantBody {
    Password(PasswordBody),
    Pkce(PkceBody),
    Refresh(RefreshBody),
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
    RawBody(body): RawBody,
) -> HttpResult {
    let grant = q.grant_type.unwrap_or_default();
    if grant == "web3" {
        return Err(
            ApiError::unprocessable("web3_provider_disabled", "Web3 provider is disabled").into(),
        );
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
            Json(token_response(g, weak)).into_response()
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
            let mut r = token_response(g, None);
            if let Some((token, refresh)) = provider {
                r.provider_token = Some(token);
                r.provider_refresh_token = Some(refresh).filter(|t| !t.is_empty());
            }
            Json(r).into_response()
        }
        _ => {
            let b: RefreshBody = parse_json(&body)?;
            let token = b.refresh_token.unwrap_or_default();
            let g = st.actors.sessions.refresh(&token).await?;
            Json(token_response(g, None)).into_response()
        }
    };
    Ok(resp)
}
