//! `POST /admin/generate_link`: a token and its link, made and returned,
//! never sent; no window, no budget.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use castellan_actors::admin::{GeneratedLink, LinkRequest};
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
    let req = LinkRequest {
        link_type: b.link_type.unwrap_or_default(),
        email: b.email.unwrap_or_default(),
        password: b.password,
        new_email: b.new_email,
        data: b.data.unwrap_or_default(),
        redirect_to: redirect_to.clone(),
    };
    let GeneratedLink {
        user,
        identities: ids,
        issued,
        verification_type,
    } = st.admin.generate_link(admin.actor, req, &aud).await?;
    let mut body = user.to_json(&ids);
    body["action_link"] = json!(issued.action_link);
    body["email_otp"] = json!(issued.otp);
    body["hashed_token"] = json!(issued.hashed_token);
    body["verification_type"] = json!(verification_type);
    body["redirect_to"] = json!(redirect_to);
    Ok(Json(body).into_response())
}
