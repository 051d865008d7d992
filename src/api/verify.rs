//! `GET /verify` (the link in an email: a 303 redirect) and `POST /verify`
//! (a code or token hash: JSON).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use castellan_core::redirect::with_params;
use castellan_core::{ApiError, validate};
use castellan_service::otp::{Presented, Verified, VerifyType};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::api::{AudienceHeader, TokenResponse, redirect_target, token_response};
use crate::error::{HttpResult, Refusals};
use crate::extract::{JsonBody, QueryParams, RequestAud};
use crate::server::AppState;

#[derive(Deserialize, Default, IntoParams)]
#[serde(default)]
pub struct VerifyQuery {
    /// The token hash from the email's link.
    token: Option<String>,
    /// `signup`, `invite`, `magiclink`, `recovery` or `email_change`.
    #[serde(rename = "type")]
    vtype: Option<String>,
    redirect_to: Option<String>,
}

fn see_other(location: String) -> Response {
    super::redirect(StatusCode::SEE_OTHER, location)
}

/// The `error` GoTrue puts beside `error_code` in redirects.
fn oauth_error(status: u16) -> Option<&'static str> {
    Some(match status {
        400 => "invalid_request",
        401 => "unauthorized_client",
        403 => "access_denied",
        500 => "server_error",
        503 => "temporarily_unavailable",
        _ => return None,
    })
}

fn error_redirect(to: &str, e: &ApiError, pkce: bool) -> Response {
    let mut pairs: Vec<(&str, String)> = vec![
        ("error_code", e.code.to_string()),
        ("error_description", e.message.clone()),
        ("sb", String::new()),
    ];
    if let Some(err) = oauth_error(e.status) {
        pairs.push(("error", err.to_string()));
    }
    let query: Vec<_> = match pkce {
        true => pairs.iter().filter(|(k, _)| *k != "sb").cloned().collect(),
        false => vec![],
    };
    see_other(with_params(to, &query, &pairs))
}

/// `GET /verify?token=<hash>&type=…&redirect_to=…`: 303 to `redirect_to`
/// with the session in the fragment, `?code=` for PKCE, or the error.
#[utoipa::path(
    get,
    path = "/verify",
    tag = "email",
    params(VerifyQuery, AudienceHeader),
    responses(
        (status = 303, description = "To `redirect_to` with the session (or the error) in the fragment, or `?code=` for PKCE",
         headers(("location" = String))),
        Refusals
    )
)]
pub async fn verify_link(
    State(st): State<AppState>,
    headers: HeaderMap,
    RequestAud(aud): RequestAud,
    QueryParams(q): QueryParams<VerifyQuery>,
) -> HttpResult {
    let Some(vtype) = q.vtype.as_deref().filter(|s| !s.is_empty()) else {
        return Err(ApiError::validation("Verify requires a verification type").into());
    };
    let Some(token) = q.token.filter(|s| !s.is_empty()) else {
        return Err(ApiError::validation("Verify requires a token or a token hash").into());
    };
    let to = redirect_target(&st, &headers, q.redirect_to.as_deref());
    let pkce = token.starts_with("pkce_");
    let Some(vt) = VerifyType::parse(vtype) else {
        return Ok(error_redirect(
            &to,
            &ApiError::validation("Invalid email verification type"),
            pkce,
        ));
    };
    let verified = match st.actors.otp.verify(vt, Presented::Hash(token), &aud).await {
        Ok(v) => v,
        Err(e) => return Ok(error_redirect(&to, &e, pkce)),
    };
    if let Some(message) = verified.pending {
        let message = ("message", message.to_string());
        let query = if pkce { vec![message.clone()] } else { vec![] };
        let fragment = [message, ("sb", String::new())];
        return Ok(see_other(with_params(&to, &query, &fragment)));
    }
    if let Some(code) = verified.code {
        return Ok(see_other(with_params(&to, &[("code", code)], &[])));
    }
    let Verified { user, vtype, .. } = verified;
    let g = match st.actors.sessions.issue(user, "otp", vec![]).await {
        Ok(g) => g,
        Err(e) => return Ok(error_redirect(&to, &e, false)),
    };
    let pairs: Vec<(&str, String)> = vec![
        ("access_token", g.access_token),
        ("expires_at", g.expires_at.to_string()),
        ("expires_in", g.expires_in.to_string()),
        ("refresh_token", g.refresh_token),
        ("sb", String::new()),
        ("token_type", "bearer".into()),
        ("type", vtype.to_string()),
    ];
    Ok(see_other(with_params(&to, &[], &pairs)))
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(default)]
pub struct VerifyBody {
    /// `signup`, `invite`, `magiclink`, `recovery`, `email_change`, `email`,
    /// `sms` or `phone_change`.
    #[serde(rename = "type")]
    vtype: Option<String>,
    token: Option<String>,
    token_hash: Option<String>,
    #[schema(format = Email)]
    email: Option<String>,
    phone: Option<String>,
}

/// The first half of a secure email change (GoTrue's `code` is a string here).
#[derive(Serialize, ToSchema)]
pub struct Pending {
    msg: &'static str,
    code: &'static str,
}

/// The answers of `POST /verify`.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum VerifyAnswer {
    Session(Box<TokenResponse>),
    Pending(Pending),
}

/// `POST /verify`: a code (with the email it went to) or a token hash; a
/// session in JSON.
#[utoipa::path(
    post,
    path = "/verify",
    tag = "email",
    params(AudienceHeader),
    request_body = VerifyBody,
    responses((status = 200, body = VerifyAnswer), Refusals)
)]
pub async fn verify_json(
    State(st): State<AppState>,
    RequestAud(aud): RequestAud,
    JsonBody(b): JsonBody<VerifyBody>,
) -> HttpResult {
    let empty = |s: &Option<String>| s.as_deref().is_none_or(str::is_empty);
    let vtype = b.vtype.as_deref().unwrap_or_default();
    if vtype.is_empty() {
        return Err(ApiError::validation("Verify requires a verification type").into());
    }
    if empty(&b.token) == empty(&b.token_hash) {
        return Err(ApiError::validation("Verify requires either a token or a token hash").into());
    }
    let presented = if let Some(hash) = b.token_hash.filter(|s| !s.is_empty()) {
        if !empty(&b.email) || !empty(&b.phone) {
            return Err(
                ApiError::validation("Only the token_hash and type should be provided").into(),
            );
        }
        Presented::Hash(hash)
    } else {
        let address = match (empty(&b.email), empty(&b.phone)) {
            (true, false) => validate::phone(b.phone.as_deref().unwrap_or_default())?,
            (false, true) => {
                validate::email(b.email.as_deref().unwrap_or_default()).map_err(|_| {
                    ApiError::unprocessable("validation_failed", "Invalid email format")
                })?
            }
            _ => {
                return Err(ApiError::validation(
                    "Only an email address or phone number should be provided on verify",
                )
                .into());
            }
        };
        Presented::Code {
            address,
            code: b.token.unwrap_or_default(),
        }
    };
    let Some(vt) = VerifyType::parse(vtype) else {
        // GoTrue looks a code's owner up whatever the type, and finds no
        // token of an unknown one; a token hash's type it checks first.
        return Err(match presented {
            Presented::Code { .. } => {
                ApiError::forbidden("otp_expired", "Token has expired or is invalid")
            }
            _ => ApiError::validation("Invalid email verification type"),
        }
        .into());
    };
    let v = st.actors.otp.verify(vt, presented, &aud).await?;
    if let Some(message) = v.pending {
        let pending = Pending {
            msg: message,
            code: "200",
        };
        return Ok(Json(VerifyAnswer::Pending(pending)).into_response());
    }
    let g = st.actors.sessions.issue(v.user, "otp", vec![]).await?;
    let session = VerifyAnswer::Session(Box::new(token_response(g)));
    Ok(Json(session).into_response())
}
