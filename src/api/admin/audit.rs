use axum::Json;
use axum::extract::OriginalUri;
use axum::extract::State;
use axum::response::IntoResponse;
use castellan_core::ApiError;
use castellan_core::store::{AuditFilter, AuditRow, AuditScope};
use chrono::{DateTime, Utc};
use utoipa::IntoParams;
use uuid::Uuid;

use super::paging::{PagingParams, Query};
use crate::error::{HttpResult, Refusals};
use crate::extract::AdminAuth;
use crate::server::AppState;

/// The filters, for the OpenAPI document (read through [`Query`]).
#[derive(IntoParams)]
#[allow(dead_code)]
pub struct AuditParams {
    /// `author:…`, `action:…` or `type:…`.
    query: Option<String>,
    /// castellan's own: entries by or about this user (an id).
    user: Option<String>,
    /// castellan's own: entries whose address contains this.
    ip: Option<String>,
    /// castellan's own: entries at or after this time (RFC 3339).
    since: Option<String>,
    /// castellan's own: entries at or before this time (RFC 3339).
    until: Option<String>,
}

/// `GET /admin/audit?page&per_page&query=author:…|action:…|type:…`, newest
/// first, and castellan's `user`, `ip`, `since` and `until`.
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
    let filter = AuditFilter {
        search: q.get("query").map(search).transpose()?,
        user: q
            .get("user")
            .map(|u| Uuid::parse_str(u).map_err(|_| ApiError::validation("user must be a UUID")))
            .transpose()?,
        ip: q.get("ip"),
        since: q.get("since").map(|t| time("since", t)).transpose()?,
        until: q.get("until").map(|t| time("until", t)).transpose()?,
    };
    let paging = q.paging()?;
    let (rows, total) = st.admin.audit(&filter, paging.page()).await?;
    Ok((paging.headers(uri.path(), &q, total), Json(rows)).into_response())
}

/// GoTrue's `query=<scope>:<text>`.
fn search(raw: &str) -> Result<(AuditScope, &str), ApiError> {
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
            )));
        }
    };
    Ok((scope, text))
}

fn time(name: &str, raw: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(raw)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| ApiError::validation(format!("{name} must be an RFC 3339 time")))
}
