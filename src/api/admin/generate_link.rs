//! `POST /admin/generate_link`: a token and its link, made and returned,
//! never sent; no window, no budget.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use castellan_actors::otp_issuer::SendRequest;
use castellan_core::store::TokenType;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::api::redirect_target;
use crate::error::HttpResult;
use crate::extract::{AdminAuth, JsonBody, RedirectTo, RequestAud};
use crate::server::AppState;

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct LinkBody {
    #[serde(rename = "type")]
    link_type: Option<String>,
    email: Option<String>,
    password: Option<String>,
    new_email: Option<String>,
    data: Option<Map<String, Value>>,
    redirect_to: Option<String>,
}

pub async fn generate_link(
    State(st): State<AppState>,
    admin: AdminAuth,
    RequestAud(aud): RequestAud,
    headers: HeaderMap,
    RedirectTo(fallback): RedirectTo,
    JsonBody(b): JsonBody<LinkBody>,
) -> HttpResult {
    // The body's `redirect_to` when allowed, else the usual resolution.
    let redirect_to = match b.redirect_to.as_deref().filter(|r| !r.is_empty()) {
        Some(r) => {
            let resolved = redirect_target(&st, &headers, Some(r));
            if resolved == r { resolved } else { fallback }
        }
        None => fallback,
    };
    let link_type = b.link_type.as_deref().unwrap_or_default();
    let (user, verification_type, kind) = st
        .admin
        .link_user(
            link_type,
            b.email.as_deref().unwrap_or_default(),
            b.password.as_deref(),
            b.data.unwrap_or_default(),
            &aud,
        )
        .await?;
    // An email change link needs the new address, checked like PUT /user's.
    let new_email = match kind {
        castellan_jobs::EmailKind::EmailChange => {
            let e = castellan_core::validate::email(b.new_email.as_deref().unwrap_or_default())?;
            if st
                .ctx
                .store
                .user_by_email(&e, &aud)
                .await
                .map_err(castellan_core::ApiError::from)?
                .is_some_and(|o| o.id != user.id)
            {
                return Err(castellan_core::ApiError::unprocessable(
                    "email_exists",
                    "A user with this email address has already been registered",
                )
                .into());
            }
            Some(e)
        }
        _ => None,
    };
    let send = SendRequest {
        user_id: user.id,
        kind,
        redirect_to: redirect_to.clone(),
        pkce: None,
        actor: Some(admin.actor),
        generate_only: true,
        new_email,
    };
    let tokens = st.actors.otp.send(send).await?;
    // The token the requested link carries (for email changes: the current or the new address's).
    let wanted = if verification_type == "email_change_current" {
        TokenType::EmailChangeTokenCurrent
    } else {
        TokenType::EmailChangeTokenNew
    };
    let issued = tokens
        .iter()
        .find(|i| i.token_type == wanted)
        .or(tokens.first())
        .cloned()
        .ok_or_else(|| castellan_core::ApiError::internal("generate_link", "no token issued"))?;
    let (user, ids) = st.admin.get_user(user.id).await?;
    let mut body = user.to_json(&ids);
    body["action_link"] = json!(issued.action_link);
    body["email_otp"] = json!(issued.otp);
    body["hashed_token"] = json!(issued.hashed_token);
    body["verification_type"] = json!(verification_type);
    body["redirect_to"] = json!(redirect_to);
    Ok(Json(body).into_response())
}
