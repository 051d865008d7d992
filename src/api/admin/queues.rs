//! The job queues (a castellan extension): how many email and SMS jobs
//! wait, retry or are dead, the jobs themselves (never their sealed
//! contents), and a dead job sent again or discarded.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use castellan_core::ApiError;
use castellan_jobs::inspect::JobState;
use castellan_jobs::queue::Queue;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::error::{HttpResult, Refusals};
use crate::extract::{AdminAuth, PathParams, QueryParams};
use crate::server::AppState;

/// A queue's jobs by state.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)] // a description for the OpenAPI document
pub struct QueueView {
    /// `email` or `sms`.
    queue: String,
    /// Waiting for a worker, or being delivered.
    pending: i64,
    /// Failed an attempt; another is due.
    retrying: i64,
    /// Failed every attempt: sent again only by an operator.
    dead: i64,
}

/// One job, without what it carries.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)] // a description for the OpenAPI document
pub struct JobView {
    id: String,
    status: String,
    attempts: i64,
    max_attempts: i64,
    /// Unix seconds.
    run_at: i64,
    /// Unix seconds.
    done_at: Option<i64>,
    /// What the last attempt answered.
    last_result: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct QueuePath {
    /// `email` or `sms` (anything else is 404).
    queue: String,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct JobPath {
    /// `email` or `sms` (anything else is 404).
    queue: String,
    /// The job's id.
    job_id: String,
}

#[derive(Deserialize, IntoParams, Default)]
#[serde(default)]
pub struct StateQuery {
    /// `pending`, `retrying` or `dead` (the default).
    state: Option<String>,
}

fn queue_named(name: &str) -> Result<Queue, ApiError> {
    Queue::from_label(name)
        .ok_or_else(|| ApiError::not_found("queue_not_found", "No such queue (email or sms)"))
}

#[utoipa::path(
    get,
    path = "/admin/queues",
    operation_id = "admin_list_queues",
    tag = "admin",
    security(("bearer" = [])),
    responses((status = 200, body = Vec<QueueView>), Refusals)
)]
pub async fn list(State(st): State<AppState>, _admin: AdminAuth) -> HttpResult {
    Ok(Json(st.admin.queues().await?).into_response())
}

/// Up to 100 jobs of the queue in the state asked, the most recent first.
#[utoipa::path(
    get,
    path = "/admin/queues/{queue}/jobs",
    operation_id = "admin_list_jobs",
    tag = "admin",
    params(QueuePath, StateQuery),
    security(("bearer" = [])),
    responses((status = 200, body = Vec<JobView>), Refusals)
)]
pub async fn jobs(
    State(st): State<AppState>,
    _admin: AdminAuth,
    PathParams(p): PathParams<QueuePath>,
    QueryParams(q): QueryParams<StateQuery>,
) -> HttpResult {
    let queue = queue_named(&p.queue)?;
    let name = q.state.as_deref().unwrap_or("dead");
    let state = JobState::from_name(name).ok_or_else(|| {
        ApiError::validation(format!(
            "Unknown state {name:?} (pending, retrying or dead)"
        ))
    })?;
    Ok(Json(st.admin.queue_jobs(queue, state).await?).into_response())
}

/// Sends a dead job again with all its attempts; a worker takes it at its
/// next poll. 404 `job_not_found` for any job that is not dead.
#[utoipa::path(
    post,
    path = "/admin/queues/{queue}/jobs/{job_id}/retry",
    operation_id = "admin_retry_job",
    tag = "admin",
    params(JobPath),
    security(("bearer" = [])),
    responses((status = 204, description = "Queued again"), Refusals)
)]
pub async fn retry(
    State(st): State<AppState>,
    admin: AdminAuth,
    PathParams(p): PathParams<JobPath>,
) -> HttpResult {
    settle(&st, &admin, &p, true).await
}

/// A dead job sent again (`retry`) or discarded.
async fn settle(st: &AppState, admin: &AdminAuth, p: &JobPath, retry: bool) -> HttpResult {
    let queue = queue_named(&p.queue)?;
    st.admin
        .settle_dead_job(&admin.actor, queue, &p.job_id, retry)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Deletes a dead job. 404 `job_not_found` for any job that is not dead.
#[utoipa::path(
    delete,
    path = "/admin/queues/{queue}/jobs/{job_id}",
    operation_id = "admin_discard_job",
    tag = "admin",
    params(JobPath),
    security(("bearer" = [])),
    responses((status = 204, description = "Discarded"), Refusals)
)]
pub async fn discard(
    State(st): State<AppState>,
    admin: AdminAuth,
    PathParams(p): PathParams<JobPath>,
) -> HttpResult {
    settle(&st, &admin, &p, false).await
}
