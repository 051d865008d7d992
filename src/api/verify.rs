//! `GET /verify` (the link in an email: a 303 redirect) and `POST /verify`
//! (a code or token hash: JSON).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use castellan_actors::otp_issuer::{Presented, Verified, VerifyType};
use castellan_core::redirect::with_params;
use castellan_core::{ApiError, validate};
use serde::Deserialize;

use crate::api::{redirect_target, token_response};
use crate::error::HttpResult;
use crate::extract::{JsonBody, QueryParams, RequestAud};
use crate::server::AppState;

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct VerifyQuery {
    token: Option<String>,
    #[serde(rename = "type")]
    vtype: Option<String>,
    redirect_to: Option<String>,
}

fn see_other(location: String) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response()
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

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct VerifyBody {
    #[serde(rename = "type")]
    vtype: Option<String>,
    token: Option<String>,
    token_hash: Option<String>,
    email: Option<String>,
    phone: Option<String>,
}

/// `POST /verify`: a code (with the email it went to) or a token hash; a
/// session in JSON.
pub async fn verify_json(
    State(st): State<AppState>,
    RequestAud(aud): RequestAud,
    JsonBody(b): JsonBody<VerifyBody>,
) -> HttpResult {
    let empty = |s: &Option<String>| s.as_deref().is_none_or(str::is_empty);
    let vtype = b.vtype.as_deref().unwrap_or_default();
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
        if !empty(&b.phone) {
            return Err(ApiError::bad_request(
                "validation_failed",
                "Phone verification is not available on this server yet",
            )
            .into());
        }
        let email = validate::email(b.email.as_deref().unwrap_or_default())
            .map_err(|_| ApiError::unprocessable("validation_failed", "Invalid email format"))?;
        Presented::Code {
            email,
            code: b.token.unwrap_or_default(),
        }
    };
    let Some(vt) = VerifyType::parse(vtype) else {
        return Err(ApiError::validation("Invalid email verification type").into());
    };
    let v = st.actors.otp.verify(vt, presented, &aud).await?;
    if let Some(message) = v.pending {
        // GoTrue's answer to the first half of a secure email change (`code` is a string here).
        return Ok(Json(serde_json::json!({"msg": message, "code": "200"})).into_response());
    }
    let g = st.actors.sessions.issue(v.user, "otp", vec![]).await?;
    Ok(Json(token_response(&g, None)).into_response())
}
