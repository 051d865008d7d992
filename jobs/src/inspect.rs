//! The queues as an operator sees them (the admin API's `/admin/queues`):
//! how many jobs wait, retry or are dead, the jobs themselves without their
//! sealed contents, and a dead job sent again or discarded.

use castellan_core::on;
use castellan_core::store::{Store, Tx};
use serde::Serialize;

use crate::queue::Queue;

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    /// Waiting for a worker, or being delivered.
    Pending,
    /// Failed an attempt; another is due.
    Retrying,
    /// Failed every attempt (or was killed): nothing sends it again unless
    /// an operator does.
    Dead,
}

impl JobState {
    pub const ALL: [JobState; 3] = [JobState::Pending, JobState::Retrying, JobState::Dead];

    pub fn name(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Retrying => "retrying",
            JobState::Dead => "dead",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }
}

// Each state's condition, written once for every statement below.
macro_rules! pending {
    () => {
        "status IN ('Pending', 'Queued', 'Running')"
    };
}
macro_rules! retrying {
    () => {
        "status = 'Failed' AND attempts < max_attempts"
    };
}
macro_rules! dead {
    () => {
        "((status = 'Failed' AND attempts >= max_attempts) OR status = 'Killed')"
    };
}

/// One job: never what it carries (sealed, and a code or a link besides).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct JobRow {
    pub id: String,
    pub status: String,
    pub attempts: i64,
    pub max_attempts: i64,
    /// When it runs (or ran), Unix seconds.
    pub run_at: i64,
    /// When it ended, Unix seconds.
    pub done_at: Option<i64>,
    /// What the last attempt answered (an error, as the worker reported it).
    pub last_result: Option<String>,
}

/// A queue's jobs by state.
#[derive(Debug, Clone, Serialize)]
pub struct QueueCounts {
    pub queue: &'static str,
    pub pending: i64,
    pub retrying: i64,
    pub dead: i64,
}

/// Every queue's counts.
pub async fn counts(store: &Store) -> Result<Vec<QueueCounts>, sqlx::Error> {
    let mut out = Vec::new();
    for queue in Queue::ALL {
        let (pending, retrying, dead): (i64, i64, i64) = on!(pool store.pool(), p, d => sqlx::query_as(concat!(
            "SELECT ",
            "COALESCE(SUM(CASE WHEN ", pending!(), " THEN 1 ELSE 0 END), 0), ",
            "COALESCE(SUM(CASE WHEN ", retrying!(), " THEN 1 ELSE 0 END), 0), ",
            "COALESCE(SUM(CASE WHEN ", dead!(), " THEN 1 ELSE 0 END), 0) FROM ", d!(jobs),
            " WHERE job_type = $1"))
            .bind(queue.table_name()).fetch_one(p).await)?;
        out.push(QueueCounts {
            queue: queue.label(),
            pending,
            retrying,
            dead,
        });
    }
    Ok(out)
}

/// Up to `limit` jobs of a queue in `state`, the most recent first.
pub async fn jobs(
    store: &Store,
    queue: Queue,
    state: JobState,
    limit: i64,
) -> Result<Vec<JobRow>, sqlx::Error> {
    macro_rules! select {
        ($cond:expr) => {
            on!(pool store.pool(), p, d => sqlx::query_as(concat!(
                "SELECT id, status, CAST(attempts AS BIGINT) AS attempts, CAST(max_attempts AS BIGINT) AS max_attempts, ",
                d!(epoch "run_at"), " AS run_at, ", d!(epoch "done_at"), " AS done_at, ",
                "CAST(last_result AS TEXT) AS last_result FROM ", d!(jobs),
                " WHERE job_type = $1 AND ", $cond, " ORDER BY run_at DESC, id LIMIT $2"))
                .bind(queue.table_name()).bind(limit).fetch_all(p).await)
        };
    }
    match state {
        JobState::Pending => select!(pending!()),
        JobState::Retrying => select!(retrying!()),
        JobState::Dead => select!(dead!()),
    }
}

/// Sends a dead job again, with all its attempts: false when the queue has
/// no dead job of that id. A worker picks it up at its next poll.
pub async fn retry_dead(tx: &mut Tx, queue: Queue, id: &str) -> Result<bool, sqlx::Error> {
    on!(tx tx, c, d => sqlx::query(concat!("UPDATE ", d!(jobs),
        " SET status = 'Pending', attempts = 0, run_at = ", d!(now), ", done_at = NULL, lock_by = NULL, \
         lock_at = NULL, last_result = NULL WHERE id = $1 AND job_type = $2 AND ", dead!()))
        .bind(id).bind(queue.table_name()).execute(&mut *c).await.map(|r| r.rows_affected() == 1))
}

/// Deletes a dead job: false when the queue has no dead job of that id.
pub async fn discard_dead(tx: &mut Tx, queue: Queue, id: &str) -> Result<bool, sqlx::Error> {
    on!(tx tx, c, d => sqlx::query(concat!("DELETE FROM ", d!(jobs),
        " WHERE id = $1 AND job_type = $2 AND ", dead!()))
        .bind(id).bind(queue.table_name()).execute(&mut *c).await.map(|r| r.rows_affected() == 1))
}
