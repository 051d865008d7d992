use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use castellan_actors::accounts::{SignupOutcome, SignupRequest};
use castellan_core::{ApiError, validate};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::api::token_response;
use crate::error::HttpResult;
use crate::extract::{JsonBody, RedirectTo, RequestAud};
use crate::server::AppState;

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct SignupBody {
    email: Option<String>,
    phone: Option<String>,
    password: Option<String>,
    data: Option<Map<String, Value>>,
    channel: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
}

pub async fn signup(
    State(st): State<AppState>,
    RequestAud(aud): RequestAud,
    RedirectTo(redirect_to): RedirectTo,
    JsonBody(b): JsonBody<SignupBody>,
) -> HttpResult {
    let empty = |s: &Option<String>| s.as_deref().is_none_or(str::is_empty);
    let data = b.data.unwrap_or_default();
    if empty(&b.email) && empty(&b.phone) {
        if !st.config.anonymous_users_enabled {
            return Err(ApiError::unprocessable(
                "anonymous_provider_disabled",
                "Anonymous sign-ins are disabled",
            )
            .into());
        }
        let grant = st.accounts.anonymous(data, &aud).await?;
        return Ok(Json(token_response(&grant, None)).into_response());
    }
    let req = SignupRequest {
        email: b.email,
        phone: b.phone,
        password: b.password,
        data,
        channel: b.channel,
        pkce: validate::pkce(
            b.code_challenge.as_deref(),
            b.code_challenge_method.as_deref(),
        )?,
        redirect_to,
        aud,
    };
    let body: Response = match st.accounts.signup(req).await? {
        SignupOutcome::Session(g) => Json(token_response(&g, None)).into_response(),
        SignupOutcome::User(u, ids) => Json(u.to_json(&ids)).into_response(),
        SignupOutcome::Obfuscated(v) => Json(v).into_response(),
    };
    Ok(body)
}
