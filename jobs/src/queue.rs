//! Putting jobs on the queues, inside the caller's transaction.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use apalis::prelude::TaskBuilder;
use apalis::prelude::TaskId;
use castellan_core::crypto::at_rest::JobSeal;
use castellan_core::store::{Conn, Pool, Store, Tx};
use castellan_core::{ApiError, on};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::email::EmailJob;
use crate::sms::SmsJob;

/// A queue: its name in the database is pinned, so moving the Rust type
/// never orphans queued jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queue {
    Email,
    Sms,
}

impl Queue {
    pub const ALL: [Queue; 2] = [Queue::Email, Queue::Sms];

    pub fn table_name(self) -> &'static str {
        match self {
            Queue::Email => "castellan_email",
            Queue::Sms => "castellan_sms",
        }
    }

    /// The queue named `name` (its metrics label).
    pub fn from_label(name: &str) -> Option<Queue> {
        Queue::ALL.into_iter().find(|q| q.label() == name)
    }

    /// The `queue` label of its metrics.
    pub fn label(self) -> &'static str {
        match self {
            Queue::Email => "email",
            Queue::Sms => "sms",
        }
    }
}

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

/// How many jobs of a queue wait to run (pending, or failed with attempts left).
pub async fn pending(store: &Store, queue: Queue) -> Result<i64, sqlx::Error> {
    on!(pool store.pool(), p, d => sqlx::query_scalar(concat!("SELECT count(*) FROM ", d!(jobs),
        " WHERE job_type = $1 AND (status = 'Pending' OR (status = 'Failed' AND attempts < max_attempts))"))
        .bind(queue.table_name()).fetch_one(p).await)
}

/// Puts back the jobs a stopped worker (every run of the worker named
/// `worker`, `worker-<n>`) still held: fetched, or cut off mid-retry by the
/// shutdown. Without this they would wait out the heartbeat timeout of
/// another worker before anyone delivered them.
pub async fn release(store: &Store, queue: Queue, worker: &str) -> Result<u64, sqlx::Error> {
    let held = format!("{worker}-%");
    on!(write store, p, d => sqlx::query(concat!("UPDATE ", d!(jobs),
        " SET status = 'Pending', lock_by = NULL, lock_at = NULL, done_at = NULL \
         WHERE job_type = $1 AND status IN ('Running', 'Queued') AND lock_by LIKE $2"))
        .bind(queue.table_name()).bind(&held).execute(p).await.map(|r| r.rows_affected()))
}

/// The queue's id of the job whose own id is `id` (a ULID of the same bits).
fn task_id(id: Uuid) -> ulid::Ulid {
    ulid::Ulid::from_bytes(id.into_bytes())
}

/// A job as it rests in the queue's table: sealed (see [`JobSeal`]), so no
/// code, link or message is there in the clear. Jobs queued by versions
/// before sealing are read as they are.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Queued<J> {
    Sealed { sealed: String },
    Plain(J),
}

impl<J: Serialize + DeserializeOwned> Queued<J> {
    pub fn seal(job: &J, seal: &JobSeal) -> Result<Self, ApiError> {
        let bytes = serde_json::to_vec(job).map_err(|e| ApiError::internal("job", e))?;
        Ok(Queued::Sealed {
            sealed: seal.seal(&bytes),
        })
    }

    /// The job; `Err` when it was sealed under another secret.
    pub fn open(self, seal: &JobSeal) -> Result<J, String> {
        match self {
            Queued::Plain(job) => Ok(job),
            Queued::Sealed { sealed } => {
                let bytes = seal.open(&sealed)?;
                serde_json::from_slice(&bytes).map_err(|e| format!("a sealed job: {e}"))
            }
        }
    }
}

/// Pushes one job in `tx`, to run no earlier than `hold` from now.
async fn push(
    tx: &mut Tx,
    queue: Queue,
    id: Uuid,
    bytes: Vec<u8>,
    max_attempts: usize,
    hold: Duration,
) -> Result<(), ApiError> {
    let run_at = (SystemTime::now() + hold)
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let task = TaskBuilder::new(bytes)
        .task_id(TaskId::from(task_id(id)))
        .max_attempts(max_attempts)
        .run_at_timestamp(run_at)
        .build();
    let name = queue.table_name();
    let r = match &mut tx.conn {
        Conn::Pg(t) => apalis_postgres::queries::push_tasks(&mut **t, name, vec![task])
            .await
            .map_err(|e| e.to_string()),
        Conn::Lite(t, _) => apalis_sqlite::queries::push_tasks(&mut **t, name, &[task])
            .await
            .map_err(|e| e.to_string()),
    };
    r.map_err(|e| ApiError::internal("job queue", e))
}

/// Queues an email in `tx`: it is delivered only if `tx` commits.
pub async fn enqueue_email(
    tx: &mut Tx,
    job: &EmailJob,
    seal: &JobSeal,
    max_attempts: usize,
) -> Result<(), ApiError> {
    let bytes = serde_json::to_vec(&Queued::seal(job, seal)?)
        .map_err(|e| ApiError::internal("email job", e))?;
    push(
        tx,
        Queue::Email,
        job.id,
        bytes,
        max_attempts,
        Duration::ZERO,
    )
    .await?;
    metrics::counter!("castellan_queue_enqueued_total", "queue" => "email", "kind" => job.kind.name()).increment(1);
    Ok(())
}

/// Queues an SMS in `tx`, held back for `hold` while the request sends it
/// itself: it is the retry if that send fails or the process dies, and is
/// withdrawn ([`withdraw`]) once the message is out or refused.
pub async fn enqueue_sms(
    tx: &mut Tx,
    job: &SmsJob,
    seal: &JobSeal,
    max_attempts: usize,
    hold: Duration,
) -> Result<(), ApiError> {
    let bytes = serde_json::to_vec(&Queued::seal(job, seal)?)
        .map_err(|e| ApiError::internal("sms job", e))?;
    push(tx, Queue::Sms, job.id, bytes, max_attempts, hold).await?;
    metrics::counter!("castellan_queue_enqueued_total", "queue" => "sms", "kind" => job.kind.as_str()).increment(1);
    Ok(())
}

/// Removes a job no worker has taken yet; false when one already has.
pub async fn withdraw(store: &Store, queue: Queue, id: Uuid) -> Result<bool, sqlx::Error> {
    let id = task_id(id).to_string();
    let n = on!(write store, p, d => sqlx::query(concat!("DELETE FROM ", d!(jobs),
        " WHERE id = $1 AND job_type = $2 AND status = 'Pending'"))
        .bind(&id).bind(queue.table_name()).execute(p).await.map(|r| r.rows_affected()))?;
    Ok(n == 1)
}

/// Deletes up to `batch` finished jobs (delivered, or dead: failed every
/// attempt or refused) whose end is older than `retention`, by the
/// database's own clock; how many. Pending and retrying jobs are kept.
pub async fn purge_finished(
    store: &Store,
    retention: Duration,
    batch: i64,
) -> Result<u64, sqlx::Error> {
    let secs = retention.as_secs() as i64;
    let names = [Queue::Email.table_name(), Queue::Sms.table_name()];
    let n = match store.pool() {
        Pool::Pg(p) => sqlx::query(
            "DELETE FROM apalis.jobs WHERE id IN (SELECT id FROM apalis.jobs \
             WHERE job_type IN ($1, $2) AND done_at < now() - make_interval(secs => $3) \
             AND (status IN ('Done', 'Killed') OR (status = 'Failed' AND attempts >= max_attempts)) \
             LIMIT $4 FOR UPDATE SKIP LOCKED)",
        )
        .bind(names[0]).bind(names[1]).bind(secs as f64).bind(batch)
        .execute(p).await?.rows_affected(),
        Pool::Lite(_) => {
            // In the writer's turn, as every SQLite write (see `on!(write …)`).
            let mut tx = store.begin().await?;
            let Conn::Lite(c, _) = &mut tx.conn else {
                unreachable!("a SQLite store begins SQLite transactions")
            };
            let n = sqlx::query(
            "DELETE FROM Jobs WHERE rowid IN (SELECT rowid FROM Jobs \
             WHERE job_type IN ($1, $2) AND done_at < CAST(strftime('%s', 'now') AS INTEGER) - $3 \
             AND (status IN ('Done', 'Killed') OR (status = 'Failed' AND attempts >= max_attempts)) \
             LIMIT $4)",
        )
        .bind(names[0]).bind(names[1]).bind(secs).bind(batch)
        .execute(&mut **c).await?.rows_affected();
            tx.commit().await?;
            n
        }
    };
    Ok(n)
}

/// Lets a held job run now (its sender could not reach the provider).
pub async fn release_now(store: &Store, queue: Queue, id: Uuid) -> Result<(), sqlx::Error> {
    let id = task_id(id).to_string();
    on!(write store, p, d => sqlx::query(concat!("UPDATE ", d!(jobs), " SET run_at = ", d!(now),
        " WHERE id = $1 AND job_type = $2 AND status = 'Pending'"))
        .bind(&id).bind(queue.table_name()).execute(p).await.map(drop))
}
