use axum::Json;
use axum::extract::OriginalUri;
use axum::extract::State;
use axum::response::IntoResponse;
use castellan_core::ApiError;
use castellan_core::store::AuditScope;
use serde_json::{Value, json};

use super::paging::Query;
use crate::error::HttpResult;
use crate::extract::AdminAuth;
use crate::server::AppState;

/// `GET /admin/audit?page&per_page&query=author:…|action:…|type:…`, newest first.
pub async fn list(
    State(st): State<AppState>,
    _admin: AdminAuth,
    OriginalUri(uri): OriginalUri,
) -> HttpResult {
    let q = Query::parse(uri.query())?;
    let search = match q.get("query") {
        None => None,
        Some(raw) => {
            let (scope, text) = raw
                .split_once(':')
                .ok_or_else(|| ApiError::validation("Invalid query: expected <scope>:<text>"))?;
            let scope = match scope {
                "author" => AuditScope::Author,
                "action" => AuditScope::Action,
                "type" => AuditScope::Type,
                other => {
                    return Err(ApiError::validation(format!(
                        "Invalid query scope: {other:?} (author, action or type)"
                    ))
                    .into());
                }
            };
            Some((scope, text))
        }
    };
    let paging = q.paging()?;
    let (rows, total) = st.admin.audit(search, paging.page()).await?;
    let body: Vec<Value> = rows
        .iter()
        .map(|r| json!({"id": r.id, "payload": r.payload.as_ref().map(|p| p.0.clone()), "created_at": r.created_at, "ip_address": r.ip_address}))
        .collect();
    Ok((paging.headers(uri.path(), &q, total), Json(body)).into_response())
}
