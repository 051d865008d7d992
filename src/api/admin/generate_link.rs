//! `POST /admin/generate_link`: a token and its link, made and returned,
//! never sent; no window, no budget.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use castellan_actors::otp_issuer::SendRequest;
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
    let send = SendRequest {
        user_id: user.id,
        kind,
        redirect_to: redirect_to.clone(),
        pkce: None,
        actor: Some(admin.actor),
        generate_only: true,
        new_email: None,
    };
    let issued = st.actors.otp.send(send).await?;
    let (user, ids) = st.admin.get_user(user.id).await?;
    let mut body = user.to_json(&ids);
    body["action_link"] = json!(issued.action_link);
    body["email_otp"] = json!(issued.otp);
    body["hashed_token"] = json!(issued.hashed_token);
    body["verification_type"] = json!(verification_type);
    body["redirect_to"] = json!(redirect_to);
    Ok(Json(body).into_response())
}
