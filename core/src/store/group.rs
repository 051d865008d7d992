//! SQLite group commit. SQLite has one writer; each write waits for the
//! turn, then for its task to be scheduled to send the write to SQLite's
//! thread, then again to pass the turn on. Under load those waits, not
//! SQLite, bound the write rate. Writes of one shape (a refresh's guarded
//! counter move, a legacy token's rotation) that queue while the writer is busy run together instead:
//! the first to queue leads, takes the turn, and sends every write queued
//! by then as one batch, `BEGIN IMMEDIATE`, each write's statements, `COMMIT`,
//! in one call to SQLite's thread. Each write keeps its own guard and its
//! own answer; a failure fails the whole batch (nothing of it is written)
//! and every write in it answers the error.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use sqlx::sqlite::{Sqlite, SqliteArguments, SqliteConnectOptions};
use tokio::sync::oneshot;

use super::Store;

pub(crate) type Scalar<'q> = sqlx::query::QueryScalar<'q, Sqlite, i64, SqliteArguments>;

/// The most writes one batch takes (its parameters stay far below SQLite's
/// limit, and the slowest answer in it waits for at most this many).
const MOST: usize = 64;

type Waiting<A> = (A, oneshot::Sender<Result<i64, sqlx::Error>>);

/// One shape of write whose calls may share a transaction.
pub(crate) struct WriteGroup<A> {
    /// Statements without BEGIN or COMMIT over `$1..=$params`, the last one
    /// answering one row.
    body: &'static str,
    params: usize,
    bind: for<'q> fn(Scalar<'q>, A) -> Scalar<'q>,
    queue: Mutex<Vec<Waiting<A>>>,
    /// The batch's SQL by the number of writes in it, each made once.
    sql: [OnceLock<Arc<str>>; MOST],
    /// Batches run.
    batches: AtomicU64,
}

impl<A> WriteGroup<A> {
    pub(crate) fn new(
        body: &'static str,
        params: usize,
        bind: for<'q> fn(Scalar<'q>, A) -> Scalar<'q>,
    ) -> Self {
        WriteGroup {
            body,
            params,
            bind,
            queue: Mutex::default(),
            sql: std::array::from_fn(|_| OnceLock::new()),
            batches: AtomicU64::new(0),
        }
    }

    fn sql(&self, n: usize) -> Arc<str> {
        self.sql[n - 1]
            .get_or_init(|| batch_sql(self.body, self.params, n).into())
            .clone()
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Vec<Waiting<A>>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `BEGIN IMMEDIATE`, `n` copies of `body`, each over parameters of its
/// own (copy k's `$i` is `$(i + k × params)`), `COMMIT`.
fn batch_sql(body: &str, params: usize, n: usize) -> String {
    let mut sql = String::from("BEGIN IMMEDIATE; ");
    for k in 0..n {
        sql.push_str(&renumber(body, k * params));
        sql.push_str("; ");
    }
    sql.push_str("COMMIT");
    sql
}

fn renumber(body: &str, by: usize) -> String {
    let mut out = String::with_capacity(body.len() + 32);
    let mut rest = body;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..=i]);
        rest = &rest[i + 1..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if let Ok(n) = rest[..digits].parse::<usize>() {
            out.push_str(&(n + by).to_string());
            rest = &rest[digits..];
        }
    }
    out.push_str(rest);
    out
}

impl Store {
    /// Runs one write of `group`'s shape, in a batch with the others queued
    /// with it: its last statement's answer.
    pub(crate) async fn lite_grouped<A: Send + 'static>(
        &self,
        group: &Arc<WriteGroup<A>>,
        args: A,
    ) -> Result<i64, sqlx::Error> {
        let (done, answer) = oneshot::channel();
        let lead = {
            let mut queue = group.queue();
            queue.push((args, done));
            queue.len() == 1
        };
        if lead {
            let (opts, turn, group) = (
                self.lite_options.clone(),
                self.writer.clone(),
                group.clone(),
            );
            // A task of its own: the batch runs to its end even if the
            // request that leads it is abandoned.
            tokio::spawn(async move {
                let mut turn = turn.lock_owned().await;
                loop {
                    let batch: Vec<Waiting<A>> = {
                        let mut queue = group.queue();
                        let n = queue.len().min(MOST);
                        queue.drain(..n).collect()
                    };
                    if batch.is_empty() {
                        break;
                    }
                    run(&group, &mut turn, opts.as_ref(), batch).await;
                }
            });
        }
        answer.await.map_err(|_| sqlx::Error::WorkerCrashed)?
    }
}

async fn run<A>(
    group: &WriteGroup<A>,
    turn: &mut Option<sqlx::SqliteConnection>,
    opts: Option<&SqliteConnectOptions>,
    batch: Vec<Waiting<A>>,
) {
    let n = batch.len();
    let mut query = sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(group.sql(n)));
    let mut waiting = Vec::with_capacity(n);
    for (args, done) in batch {
        query = (group.bind)(query, args);
        waiting.push(done);
    }
    let rows = match super::writer_connection(turn, opts).await {
        Ok(conn) => query.fetch_all(conn).await,
        Err(e) => Err(e),
    };
    group.batches.fetch_add(1, Ordering::Relaxed);
    metrics::histogram!("castellan_sqlite_write_batch_size").record(n as f64);
    match rows {
        Ok(rows) if rows.len() == n => {
            for (done, row) in waiting.into_iter().zip(rows) {
                let _ = done.send(Ok(row));
            }
        }
        other => {
            super::discard_writer(turn).await;
            let why = match other {
                Err(e) => e.to_string(),
                Ok(rows) => format!("{} answers to {n} writes", rows.len()),
            };
            for done in waiting {
                let _ = done.send(Err(sqlx::Error::Protocol(format!(
                    "a batched write failed: {why}"
                ))));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DatabaseUrl;
    use crate::store::{Advance, Conn};
    use uuid::Uuid;

    async fn exec(tx: &mut crate::store::Tx, sql: &'static str, ids: &[Uuid]) {
        let Conn::Lite(t, _) = &mut tx.conn else {
            unreachable!()
        };
        let q = ids.iter().fold(sqlx::query(sql), |q, id| q.bind(*id));
        q.execute(&mut **t).await.unwrap();
    }

    /// Writes queued while the turn is held run as one batch when it is
    /// passed on, each decided by its own guard: of two moves of one
    /// session's counter from 0, one wins.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queued_writes_share_a_batch_and_keep_their_own_guards() {
        let dir = std::env::temp_dir().join(format!("castellan-group-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let url = DatabaseUrl::Sqlite(dir.join("t.db").display().to_string());
        let store = Store::connect(&url, 4).await.unwrap();
        store.migrate().await.unwrap();
        let user = Uuid::new_v4();
        let sessions: Vec<Uuid> = (0..8).map(|_| Uuid::new_v4()).collect();
        let mut tx = store.begin().await.unwrap();
        exec(&mut tx, "INSERT INTO users (id) VALUES ($1)", &[user]).await;
        for s in &sessions {
            exec(
                &mut tx,
                "INSERT INTO sessions (id, user_id, refresh_token_counter) VALUES ($1, $2, 0)",
                &[*s, user],
            )
            .await;
        }
        tx.commit().await.unwrap();

        let held = store.begin().await.unwrap();
        let mut writes = Vec::new();
        for s in sessions.iter().chain([&sessions[0]]) {
            let (store, session_id) = (store.clone(), *s);
            writes.push(tokio::spawn(async move {
                let audit = serde_json::json!({"action": "token_refreshed"});
                let advance = Advance {
                    session_id,
                    from: 0,
                    to: 1,
                    audit: &audit,
                    now: chrono::Utc::now(),
                };
                store.advance_refresh_counter(&advance).await.unwrap()
            }));
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while store.advances.queue().len() < 9 {
            assert!(
                std::time::Instant::now() < deadline,
                "the writes never queued"
            );
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        held.commit().await.unwrap();
        let mut won = Vec::new();
        for w in writes {
            won.push(w.await.unwrap());
        }
        assert_eq!(store.advances.batches.load(Ordering::Relaxed), 1);
        assert!(won[1..8].iter().all(|w| *w), "{won:?}");
        assert!(
            won[0] != won[8],
            "one of the two moves of session 0 wins: {won:?}"
        );
        let (moved, audited): (i64, i64) = match store.pool() {
            crate::store::Pool::Lite(p) => (
                sqlx::query_scalar("SELECT count(*) FROM sessions WHERE refresh_token_counter = 1")
                    .fetch_one(p)
                    .await
                    .unwrap(),
                sqlx::query_scalar("SELECT count(*) FROM audit_log_entries")
                    .fetch_one(p)
                    .await
                    .unwrap(),
            ),
            crate::store::Pool::Pg(_) => unreachable!(),
        };
        assert_eq!((moved, audited), (8, 8));
        store.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn each_copy_has_parameters_of_its_own() {
        assert_eq!(
            renumber("a = $1 AND b = $12, $", 10),
            "a = $11 AND b = $22, $"
        );
        assert_eq!(
            batch_sql("UPDATE t SET n = $2 WHERE id = $1; SELECT changes()", 2, 2),
            "BEGIN IMMEDIATE; UPDATE t SET n = $2 WHERE id = $1; SELECT changes(); \
             UPDATE t SET n = $4 WHERE id = $3; SELECT changes(); COMMIT"
        );
    }
}
