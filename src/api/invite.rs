//! `POST /invite` (admin): an invitation email to a new or unconfirmed address.

use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use castellan_core::models::UserView;
use serde::Deserialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::api::AudienceHeader;
use crate::error::{HttpResult, Refusals};
use crate::extract::{AdminAuth, JsonBody, RedirectQuery, RedirectTo, RequestAud};
use crate::server::AppState;

#[derive(Deserialize, Default, ToSchema)]
#[serde(default)]
pub struct InviteBody {
    #[schema(format = Email)]
    email: Option<String>,
    /// The invited user's `user_metadata`.
    #[schema(value_type = Option<Object>)]
    data: Option<Map<String, Value>>,
}

#[utoipa::path(
    post,
    path = "/invite",
    tag = "admin",
    params(AudienceHeader, RedirectQuery),
    security(("bearer" = [])),
    request_body = InviteBody,
    responses((status = 200, body = UserView), Refusals)
)]
pub async fn invite(
    State(st): State<AppState>,
    admin: AdminAuth,
    RequestAud(aud): RequestAud,
    RedirectTo(redirect_to): RedirectTo,
    JsonBody(b): JsonBody<InviteBody>,
) -> HttpResult {
    let (user, ids) = st
        .admin
        .invite(
            admin.actor,
            b.email.as_deref().unwrap_or_default(),
            b.data.unwrap_or_default(),
            &aud,
            redirect_to,
        )
        .await?;
    Ok(Json(user.view(Some(&ids))).into_response())
}
