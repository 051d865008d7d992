//! Putting jobs on the queue, inside the caller's transaction.

use apalis::prelude::TaskBuilder;
use castellan_core::ApiError;
use castellan_core::store::{Conn, Pool, Store, Tx};

use crate::email::EmailJob;

/// The queue's name in the database (pinned, so moving the Rust type never
/// orphans queued jobs).
pub const EMAIL_QUEUE: &str = "castellan_email";

/// Creates the queue's tables: apalis's own migrations, in the `apalis`
/// schema on PostgreSQL and beside the users' tables on SQLite.
pub async fn setup(store: &Store) -> Result<(), String> {
    match store.pool() {
        Pool::Pg(p) => apalis_postgres::PostgresStorage::setup(p)
            .await
            .map_err(|e| format!("job queue setup: {e}")),
        // Not `SqliteStorage::setup`: that would switch the shared file's
        // connections to `synchronous=OFF`. The migrations alone, sharing the
        // history table with castellan's (each ignores the other's rows).
        Pool::Lite(p) => {
            let mut m = apalis_sqlite::SqliteStorage::migrations();
            m.set_ignore_missing(true);
            m.run(p).await.map_err(|e| format!("job queue setup: {e}"))
        }
    }
}

/// How many email jobs wait to run (pending, or failed with attempts left).
pub async fn pending(store: &Store) -> Result<i64, sqlx::Error> {
    match store.pool() {
        Pool::Pg(p) => sqlx::query_scalar("SELECT count(*) FROM apalis.jobs WHERE job_type = $1 AND (status = 'Pending' OR (status = 'Failed' AND attempts < max_attempts))")
            .bind(EMAIL_QUEUE).fetch_one(p).await,
        Pool::Lite(p) => sqlx::query_scalar("SELECT count(*) FROM Jobs WHERE job_type = $1 AND (status = 'Pending' OR (status = 'Failed' AND attempts < max_attempts))")
            .bind(EMAIL_QUEUE).fetch_one(p).await,
    }
}

/// Puts back the jobs a stopped worker (every run of the worker named
/// `worker`, `worker-<n>`) still held: fetched, or cut off mid-retry by the
/// shutdown. Without this they would wait out the heartbeat timeout of
/// another worker before anyone delivered them.
pub async fn release(store: &Store, worker: &str) -> Result<u64, sqlx::Error> {
    let held = format!("{worker}-%");
    let r = match store.pool() {
        Pool::Pg(p) => sqlx::query("UPDATE apalis.jobs SET status = 'Pending', lock_by = NULL, lock_at = NULL, done_at = NULL WHERE job_type = $1 AND status IN ('Running', 'Queued') AND lock_by LIKE $2")
            .bind(EMAIL_QUEUE).bind(&held).execute(p).await?.rows_affected(),
        Pool::Lite(p) => sqlx::query("UPDATE Jobs SET status = 'Pending', lock_by = NULL, lock_at = NULL, done_at = NULL WHERE job_type = $1 AND status IN ('Running', 'Queued') AND lock_by LIKE $2")
            .bind(EMAIL_QUEUE).bind(&held).execute(p).await?.rows_affected(),
    };
    Ok(r)
}

/// Queues an email in `tx`: it is delivered only if `tx` commits.
pub async fn enqueue_email(
    tx: &mut Tx,
    job: &EmailJob,
    max_attempts: usize,
) -> Result<(), ApiError> {
    let bytes = serde_json::to_vec(job).map_err(|e| ApiError::internal("email job", e))?;
    // apalis gives the task its own ULID id; the job's id travels in the payload.
    let task = TaskBuilder::new(bytes).max_attempts(max_attempts).build();
    let r = match &mut tx.conn {
        Conn::Pg(t) => apalis_postgres::queries::push_tasks(&mut **t, EMAIL_QUEUE, vec![task])
            .await
            .map_err(|e| e.to_string()),
        Conn::Lite(t, _) => apalis_sqlite::queries::push_tasks(&mut **t, EMAIL_QUEUE, &[task])
            .await
            .map_err(|e| e.to_string()),
    };
    r.map_err(|e| ApiError::internal("email queue", e))?;
    metrics::counter!("castellan_queue_enqueued_total", "queue" => "email", "kind" => job.kind.name()).increment(1);
    Ok(())
}
