//! `POST /invite` (admin): an invitation email to a new or unconfirmed address.

use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use castellan_actors::otp_issuer::SendRequest;
use castellan_jobs::EmailKind;
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
    let user = st
        .admin
        .invitee(
            b.email.as_deref().unwrap_or_default(),
            b.data.unwrap_or_default(),
            &aud,
        )
        .await?;
    // Invitations are always implicit (no PKCE) and have no per-user window.
    st.actors
        .otp
        .send(SendRequest {
            user_id: user.id,
            kind: EmailKind::Invite,
            redirect_to,
            pkce: None,
            actor: Some(admin.actor),
            generate_only: false,
            new_email: None,
        })
        .await?;
    let (user, ids) = st.admin.get_user(user.id).await?;
    Ok(Json(user.to_json(&ids)).into_response())
}
