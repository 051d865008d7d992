//! The OAuth server's clients as GoTrue shows them, and RFC 7591 dynamic
//! registration (`POST /oauth/clients/register`).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use castellan_core::store::OAuthClient;
use castellan_service::oauth_clients::Registration;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::DynamicOn;
use crate::error::{HttpResult, Refusals};
use crate::extract::JsonBody;
use crate::server::AppState;

/// A client as GoTrue shows it; its secret only when just made.
#[derive(Serialize, ToSchema)]
pub struct ClientView {
    client_id: Uuid,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_secret: Option<String>,
    /// `public` or `confidential`.
    client_type: String,
    redirect_uris: Vec<String>,
    /// `none`, `client_secret_basic` or `client_secret_post`.
    token_endpoint_auth_method: String,
    grant_types: Vec<String>,
    /// Always `["code"]` (OAuth 2.1).
    response_types: Vec<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_uri: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    logo_uri: Option<String>,
    /// `manual` (an admin's) or `dynamic`.
    registration_type: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

pub fn view(c: OAuthClient, secret: Option<String>) -> ClientView {
    ClientView {
        client_id: c.id,
        client_secret: secret,
        redirect_uris: c.redirect_uris(),
        grant_types: c.grant_types(),
        client_type: c.client_type,
        token_endpoint_auth_method: c.token_endpoint_auth_method,
        response_types: vec!["code"],
        client_name: c.client_name,
        client_uri: c.client_uri,
        logo_uri: c.logo_uri,
        registration_type: c.registration_type,
        created_at: c.created_at,
        updated_at: c.updated_at,
    }
}

/// A registration (RFC 7591's metadata GoTrue reads). A `null` field is
/// an absent one, as Go reads it (supabase-py sends every field).
#[derive(Deserialize, Serialize, Default, ToSchema)]
#[serde(default)]
pub struct RegisterBody {
    redirect_uris: Option<Vec<String>>,
    /// `public` or `confidential`; follows `token_endpoint_auth_method` when absent.
    client_type: Option<String>,
    token_endpoint_auth_method: Option<String>,
    grant_types: Option<Vec<String>>,
    client_name: Option<String>,
    client_uri: Option<String>,
    logo_uri: Option<String>,
}

impl From<RegisterBody> for Registration {
    fn from(b: RegisterBody) -> Self {
        Registration {
            redirect_uris: b.redirect_uris.unwrap_or_default(),
            client_type: b.client_type.unwrap_or_default(),
            token_endpoint_auth_method: b.token_endpoint_auth_method.unwrap_or_default(),
            grant_types: b.grant_types.unwrap_or_default(),
            client_name: b.client_name.unwrap_or_default(),
            client_uri: b.client_uri.unwrap_or_default(),
            logo_uri: b.logo_uri.unwrap_or_default(),
        }
    }
}

/// Registers a client and answers 201 with it (GoTrue's shape).
pub async fn registered(st: &AppState, b: RegisterBody, kind: &'static str) -> HttpResult {
    let (client, secret) = st.oauth_clients.register(b.into(), kind).await?;
    Ok(with_secret(StatusCode::CREATED, view(client, secret)))
}

/// An answer that may carry a client's secret: never kept by a cache.
pub fn with_secret(status: StatusCode, view: ClientView) -> axum::response::Response {
    let no_store = [(axum::http::header::CACHE_CONTROL, "no-store")];
    (status, no_store, Json(view)).into_response()
}

#[utoipa::path(
    post,
    path = "/oauth/clients/register",
    tag = "oauth-server",
    operation_id = "oauth_dynamic_client_register",
    request_body = RegisterBody,
    responses((status = 201, body = ClientView), Refusals)
)]
pub async fn register(
    _: crate::extract::On<DynamicOn>,
    State(st): State<AppState>,
    JsonBody(b): JsonBody<RegisterBody>,
) -> HttpResult {
    registered(&st, b, "dynamic").await
}
