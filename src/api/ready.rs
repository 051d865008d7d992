//! `GET /ready` (a castellan extension; `/health` stays GoTrue's): whether
//! this process can serve, naming what cannot — the database, the SQLite
//! file's disk when it is too full to write, an actor the
//! supervisor is restarting, the job workers when this process runs them.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Serialize;
use utoipa::ToSchema;

use crate::observability::Probe;
use crate::server::AppState;

/// How long the database may take to answer before it counts as down.
const DATABASE_WAIT: Duration = Duration::from_secs(2);

#[derive(Serialize, ToSchema)]
pub struct Readiness {
    /// `ready`, or `unavailable` with what is down in `down`.
    status: &'static str,
    down: Vec<&'static str>,
    /// `up` or `down`.
    database: &'static str,
    /// `up`, or `down` while the SQLite file's disk is too full to write.
    storage: &'static str,
    /// Each supervised actor: `up`, or `down` while it restarts.
    actors: BTreeMap<&'static str, &'static str>,
    /// `up`, `down`, or `elsewhere` (run as `castellan worker` processes).
    workers: &'static str,
}

fn up(ok: bool) -> &'static str {
    if ok { "up" } else { "down" }
}

#[utoipa::path(
    get,
    path = "/ready",
    tag = "health",
    responses(
        (status = 200, body = Readiness, description = "Everything this process needs is up"),
        (status = 503, body = Readiness, description = "Something is down (named in `down`); see Retry-After")
    )
)]
pub async fn ready(State(st): State<AppState>) -> Response {
    let ping = tokio::time::timeout(DATABASE_WAIT, st.admin.ping()).await;
    let database = up(matches!(ping, Ok(Ok(()))));
    let storage = up(!st.admin.disk_full());
    let actors: BTreeMap<_, _> = st
        .actors
        .liveness()
        .into_iter()
        .map(|(name, running)| (name, up(running)))
        .collect();
    let workers = match &st.workers {
        None => "elsewhere",
        Some(task) => up(!task.is_finished()),
    };
    let mut down: Vec<&'static str> = Vec::new();
    if database == "down" {
        down.push("database");
    }
    if storage == "down" {
        down.push("storage");
    }
    down.extend(
        actors
            .iter()
            .filter(|(_, s)| **s == "down")
            .map(|(name, _)| *name),
    );
    if workers == "down" {
        down.push("workers");
    }
    let body = Readiness {
        status: if down.is_empty() {
            "ready"
        } else {
            "unavailable"
        },
        down,
        database,
        storage,
        actors,
        workers,
    };
    if body.down.is_empty() {
        return (Extension(Probe), Json(body)).into_response();
    }
    metrics::counter!("castellan_not_ready_total").increment(1);
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [("retry-after", "1")],
        Extension(Probe),
        Json(body),
    )
        .into_response()
}
