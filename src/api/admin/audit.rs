use axum::Json;
use axum::extract::OriginalUri;
use axum::extract::State;
use axum::response::IntoResponse;
use castellan_core::ApiError;
use castellan_core::store::{AuditRow, AuditScope};
use utoipa::IntoParams;

use super::paging::{PagingParams, Query};
use crate::error::{HttpResult, Refusals};
use crate::extract::AdminAuth;
use crate::server::AppState;

/// The search parameter, for the OpenAPI document (read through [`Query`]).
#[derive(IntoParams)]
#[allow(dead_code)]
pub struct AuditParams {
    /// `author:…`, `action:…` or `type:…`.
    query: Option<String>,
}

/// `GET /admin/audit?page&per_page&query=author:…|action:…|type:…`, newest first.
#[utoipa::path(
    get,
    path = "/admin/audit",
    operation_id = "admin_list_audit",
    tag = "admin",
    params(PagingParams, AuditParams),
    security(("bearer" = [])),
    responses((status = 200, body = Vec<AuditRow>, headers(("x-total-count" = u64), ("link" = String))), Refusals)
)]
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
    Ok((paging.headers(uri.path(), &q, total), Json(rows)).into_response())
}
