use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use castellan_core::models::UserView;
use castellan_core::{ApiError, validate};
use castellan_service::accounts::{SignupOutcome, SignupRequest};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::api::{AudienceHeader, TokenResponse, token_response};
use crate::error::{HttpResult, Refusals};
use crate::extract::{JsonBody, RedirectQuery, RedirectTo, RequestAud};
use crate::server::AppState;

/// A sign-up by email or phone with a password; neither makes an
/// anonymous user.
#[derive(Deserialize, Default, ToSchema)]
#[serde(default)]
pub struct SignupBody {
    #[schema(format = Email)]
    email: Option<String>,
    phone: Option<String>,
    password: Option<String>,
    /// The new user's `user_metadata`.
    #[schema(value_type = Option<Object>)]
    data: Option<Map<String, Value>>,
    /// `sms` or `whatsapp`, for a phone.
    channel: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
}

/// The answers of `POST /signup`: a session when no confirmation is
/// needed, else the user (or, for a taken address, a stand-in that reveals
/// nothing).
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum SignupAnswer {
    Session(Box<TokenResponse>),
    User(Box<UserView>),
}

/// Creates a user (GoTrue's `POST /signup`).
#[utoipa::path(
    post,
    path = "/signup",
    tag = "sign-up",
    params(AudienceHeader, RedirectQuery),
    request_body = SignupBody,
    responses((status = 200, body = SignupAnswer), Refusals)
)]
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
        return Ok(Json(token_response(grant)).into_response());
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
        generated_password: false,
    };
    let answer = match st.accounts.signup(req).await? {
        SignupOutcome::Session(g) => {
            // GoTrue answers with the user it just made, not one read back:
            // without the computed `confirmed_at` (issue 26).
            let mut r = token_response(*g);
            r.user.confirmed_at = None;
            SignupAnswer::Session(Box::new(r))
        }
        SignupOutcome::User {
            user, identities, ..
        } => SignupAnswer::User(Box::new(user.view(Some(&identities)))),
        SignupOutcome::Obfuscated(stand_in) => SignupAnswer::User(stand_in),
    };
    Ok(Json(answer).into_response())
}
