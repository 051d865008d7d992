//! The signed-in user's grants to OAuth clients: listed, and revoked (the
//! consent withdrawn and every session the client holds for the user ended).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{ClientDetails, On};
use crate::error::{HttpResult, Refusals};
use crate::extract::{AuthUser, Own, QueryParams};
use crate::server::AppState;

#[derive(Serialize, ToSchema)]
pub struct GrantView {
    client: ClientDetails,
    scopes: Vec<String>,
    granted_at: DateTime<Utc>,
}

#[utoipa::path(
    get,
    path = "/user/oauth/grants",
    tag = "oauth-server",
    operation_id = "list_oauth_grants",
    security(("bearer" = [])),
    responses((status = 200, body = Vec<GrantView>), Refusals)
)]
pub async fn grants_list(
    _: On,
    State(st): State<AppState>,
    Own(auth): Own<AuthUser>,
) -> HttpResult {
    let grants = st.oauth_server.grants(&auth.user).await?;
    let views: Vec<GrantView> = grants
        .into_iter()
        .map(|g| GrantView {
            client: ClientDetails::of(g.client_id, g.client_name, g.client_uri, g.logo_uri),
            scopes: g
                .scopes
                .split(' ')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
            granted_at: g.granted_at,
        })
        .collect();
    Ok(Json(views).into_response())
}

#[derive(Deserialize, IntoParams, Default)]
#[into_params(parameter_in = Query)]
#[serde(default)]
pub struct RevokeQuery {
    client_id: String,
}

#[utoipa::path(
    delete,
    path = "/user/oauth/grants",
    tag = "oauth-server",
    operation_id = "revoke_oauth_grant",
    params(RevokeQuery),
    security(("bearer" = [])),
    responses((status = 204), Refusals)
)]
pub async fn grants_revoke(
    _: On,
    State(st): State<AppState>,
    Own(auth): Own<AuthUser>,
    QueryParams(q): QueryParams<RevokeQuery>,
) -> HttpResult {
    st.oauth_server
        .revoke_grant(&auth.user, &q.client_id)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
