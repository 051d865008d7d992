//! `GET|PUT /admin/rate_limits` (a castellan extension): the limits in
//! force, and changing them while castellan runs, in every process sharing
//! the database.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use castellan_service::limit_settings;
use serde_json::{Map, Value};

use crate::error::{HttpResult, Refusals};
use crate::extract::{AdminAuth, JsonBody};
use crate::server::AppState;

/// Each limit by GoTrue's variable name without `GOTRUE_RATE_LIMIT_`, and
/// the number it allows per its window (`token_refresh`, `web3`, `passkey`, `verify`,
/// `otp`: per 5 minutes; `anonymous_users`: per hour; `email_sent` and `sms_sent`:
/// per the window of `GOTRUE_RATE_LIMIT_EMAIL_SENT` or `_SMS_SENT`, an hour
/// unless it says otherwise).
#[derive(utoipa::ToSchema)]
#[schema(as = RateLimits)]
#[allow(dead_code)] // a description for the OpenAPI document
pub struct RateLimitsView {
    email_sent: u32,
    sms_sent: u32,
    token_refresh: u32,
    web3: u32,
    passkey: u32,
    verify: u32,
    otp: u32,
    anonymous_users: u32,
}

#[utoipa::path(
    get,
    path = "/admin/rate_limits",
    tag = "admin",
    operation_id = "admin_get_rate_limits",
    security(("bearer" = [])),
    responses((status = 200, body = RateLimitsView), Refusals)
)]
pub async fn get(
    State(st): State<AppState>,
    _admin: AdminAuth,
) -> Json<BTreeMap<&'static str, u32>> {
    Json(limit_settings::current(
        &st.actors.rate_limits.settings().await,
    ))
}

/// Changes some limits (a partial object); an unknown name or a value that
/// is not a whole number is a 400 naming it, and nothing changes.
#[utoipa::path(
    put,
    path = "/admin/rate_limits",
    tag = "admin",
    operation_id = "admin_set_rate_limits",
    security(("bearer" = [])),
    request_body(content = Object, description = "Some of the limits, e.g. `{\"token_refresh\": 300}`"),
    responses((status = 200, body = RateLimitsView), Refusals)
)]
pub async fn set(
    State(st): State<AppState>,
    admin: AdminAuth,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> HttpResult {
    let changes = limit_settings::parse(&body)?;
    let now = st
        .admin
        .set_rate_limits(&st.actors, &admin.actor, &changes)
        .await?;
    Ok(Json(now).into_response())
}

/// castellan's own: how many clients each bucket holds in the answering
/// process (by bucket: several buckets may share one limit), a client's
/// bucket living until it is full again. On PostgreSQL the shared windows
/// hold the cluster's counts; this is what this process holds of them.
#[utoipa::path(
    get,
    path = "/admin/rate_limits/usage",
    tag = "admin",
    operation_id = "admin_rate_limit_usage",
    security(("bearer" = [])),
    responses((status = 200, description = "`{\"<bucket>\": clients}`"), Refusals)
)]
pub async fn usage(State(st): State<AppState>, _admin: AdminAuth) -> HttpResult {
    let usage = st
        .actors
        .rate_limits
        .usage()
        .await
        .ok_or_else(|| castellan_core::ApiError::unavailable("rate limiter", "restarting"))?;
    let map: BTreeMap<&str, usize> = usage.into_iter().collect();
    Ok(Json(map).into_response())
}
