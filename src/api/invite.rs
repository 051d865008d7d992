//! `POST /invite` (admin): an invitation email to a new or unconfirmed address.

use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::HttpResult;
use crate::extract::{AdminAuth, JsonBody, RedirectTo, RequestAud};
use crate::server::AppState;

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct InviteBody {
    email: Option<String>,
    data: Option<Map<String, Value>>,
}

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
    Ok(Json(user.to_json(&ids)).into_response())
}
