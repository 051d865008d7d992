//! `/admin/oauth/clients`: the OAuth server's clients, registered, listed
//! (paged, as `/admin/users`), changed, deleted and given new secrets.

use axum::Json;
use axum::extract::{OriginalUri, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use castellan_core::ApiError;
use castellan_service::oauth_clients::Changes;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::paging::{PagingParams, Query};
use crate::api::oauth_server::{ClientView, On, RegisterBody, registered, view, with_secret};
use crate::error::{HttpResult, Refusals};
use crate::extract::{AdminAuth, JsonBody, PathParams};
use crate::server::AppState;

/// The `{client_id}` path parameter.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ClientPath {
    /// A UUID (anything else is 400).
    client_id: String,
}

fn client_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::validation("invalid client_id format"))
}

#[derive(Serialize, ToSchema)]
pub struct ClientList {
    clients: Vec<ClientView>,
}

#[utoipa::path(
    post,
    path = "/admin/oauth/clients",
    operation_id = "admin_register_oauth_client",
    tag = "admin",
    request_body = RegisterBody,
    security(("bearer" = [])),
    responses((status = 201, body = ClientView), Refusals)
)]
pub async fn create(
    _admin: AdminAuth,
    _: On,
    State(st): State<AppState>,
    JsonBody(b): JsonBody<RegisterBody>,
) -> HttpResult {
    registered(&st, b, "manual").await
}

#[utoipa::path(
    get,
    path = "/admin/oauth/clients",
    operation_id = "admin_list_oauth_clients",
    tag = "admin",
    params(PagingParams),
    security(("bearer" = [])),
    responses((status = 200, body = ClientList, headers(("x-total-count" = u64), ("link" = String))), Refusals)
)]
pub async fn list(
    _admin: AdminAuth,
    _: On,
    State(st): State<AppState>,
    OriginalUri(uri): OriginalUri,
) -> HttpResult {
    let q = Query::parse(uri.query())?;
    let paging = q.paging()?;
    let (clients, total) = st.oauth_clients.list(paging.page()).await?;
    let body = ClientList {
        clients: clients.into_iter().map(|c| view(c, None)).collect(),
    };
    Ok((paging.headers(uri.path(), &q, total), Json(body)).into_response())
}

#[utoipa::path(
    get,
    path = "/admin/oauth/clients/{client_id}",
    operation_id = "admin_get_oauth_client",
    tag = "admin",
    params(ClientPath),
    security(("bearer" = [])),
    responses((status = 200, body = ClientView), Refusals)
)]
pub async fn get(
    _admin: AdminAuth,
    _: On,
    State(st): State<AppState>,
    PathParams(p): PathParams<ClientPath>,
) -> HttpResult {
    let client = st.oauth_clients.get(client_id(&p.client_id)?).await?;
    Ok(Json(view(client, None)).into_response())
}

/// The fields to change; each absent one is kept.
#[derive(Deserialize, Serialize, Default, ToSchema)]
#[serde(default)]
pub struct UpdateBody {
    redirect_uris: Option<Vec<String>>,
    grant_types: Option<Vec<String>>,
    client_name: Option<String>,
    client_uri: Option<String>,
    logo_uri: Option<String>,
    token_endpoint_auth_method: Option<String>,
}

#[utoipa::path(
    put,
    path = "/admin/oauth/clients/{client_id}",
    operation_id = "admin_update_oauth_client",
    tag = "admin",
    params(ClientPath),
    request_body = UpdateBody,
    security(("bearer" = [])),
    responses((status = 200, body = ClientView), Refusals)
)]
pub async fn update(
    _admin: AdminAuth,
    _: On,
    State(st): State<AppState>,
    PathParams(p): PathParams<ClientPath>,
    JsonBody(b): JsonBody<UpdateBody>,
) -> HttpResult {
    let id = client_id(&p.client_id)?;
    let changes = Changes {
        redirect_uris: b.redirect_uris,
        grant_types: b.grant_types,
        client_name: b.client_name,
        client_uri: b.client_uri,
        logo_uri: b.logo_uri,
        token_endpoint_auth_method: b.token_endpoint_auth_method,
    };
    let client = st.oauth_clients.update(id, changes).await?;
    Ok(Json(view(client, None)).into_response())
}

#[utoipa::path(
    delete,
    path = "/admin/oauth/clients/{client_id}",
    operation_id = "admin_delete_oauth_client",
    tag = "admin",
    params(ClientPath),
    security(("bearer" = [])),
    responses((status = 204), Refusals)
)]
pub async fn delete(
    _admin: AdminAuth,
    _: On,
    State(st): State<AppState>,
    PathParams(p): PathParams<ClientPath>,
) -> HttpResult {
    st.oauth_clients.delete(client_id(&p.client_id)?).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(
    post,
    path = "/admin/oauth/clients/{client_id}/regenerate_secret",
    operation_id = "admin_regenerate_oauth_client_secret",
    tag = "admin",
    params(ClientPath),
    security(("bearer" = [])),
    responses((status = 200, body = ClientView), Refusals)
)]
pub async fn regenerate_secret(
    _admin: AdminAuth,
    _: On,
    State(st): State<AppState>,
    PathParams(p): PathParams<ClientPath>,
) -> HttpResult {
    let id = client_id(&p.client_id)?;
    let (client, secret) = st.oauth_clients.regenerate_secret(id).await?;
    Ok(with_secret(StatusCode::OK, view(client, Some(secret))))
}
