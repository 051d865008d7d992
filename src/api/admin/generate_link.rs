//! `POST /admin/generate_link`: a token and its link, made and returned,
//! never sent; no window, no budget.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use castellan_core::models::UserView;
use castellan_service::admin::{GeneratedLink, LinkRequest};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::api::{AudienceHeader, redirect_target};
use crate::error::{HttpResult, Refusals};
use crate::extract::{AdminAuth, JsonBody, RedirectQuery, RedirectTo, RequestAud};
use crate::server::AppState;

#[derive(Deserialize, Default, ToSchema)]
#[serde(default)]
pub struct LinkBody {
    /// `signup`, `invite`, `magiclink`, `recovery`, `email_change_current`
    /// or `email_change_new`.
    #[serde(rename = "type")]
    link_type: Option<String>,
    #[schema(format = Email)]
    email: Option<String>,
    password: Option<String>,
    #[schema(format = Email)]
    new_email: Option<String>,
    #[schema(value_type = Option<Object>)]
    data: Option<Map<String, Value>>,
    redirect_to: Option<String>,
}

/// The user with the link and code made for it.
#[derive(Serialize, ToSchema)]
pub struct LinkAnswer {
    #[serde(flatten)]
    user: UserView,
    action_link: String,
    email_otp: String,
    hashed_token: String,
    verification_type: &'static str,
    redirect_to: String,
}

#[utoipa::path(
    post,
    path = "/admin/generate_link",
    tag = "admin",
    params(AudienceHeader, RedirectQuery),
    security(("bearer" = [])),
    request_body = LinkBody,
    responses((status = 200, body = LinkAnswer), Refusals)
)]
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
    Ok(Json(LinkAnswer {
        user: user.view(Some(&ids)),
        action_link: issued.action_link,
        email_otp: issued.otp,
        hashed_token: issued.hashed_token,
        verification_type,
        redirect_to,
    })
    .into_response())
}
