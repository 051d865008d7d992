//! The `Store`: one API over two backends.
//!
//! PostgreSQL runs in GoTrue's `auth` schema (the connection's `search_path`
//! starts with `auth`, so the SQL names tables unqualified); SQLite is the
//! embedded default. The SQL text is shared: both accept `$n` placeholders,
//! and the `on!` macro compiles each statement once per backend, so every
//! value is bound with the backend's own types. Where the dialects differ
//! (row locks, enum casts) a method spells out both.

// Column lists shared by the statements of both query modules.
macro_rules! user_cols {
    () => {
        "id, aud, role, email, encrypted_password, email_confirmed_at, invited_at, \
         confirmation_sent_at, recovery_sent_at, email_change, email_change_sent_at, \
         last_sign_in_at, raw_app_meta_data, raw_user_meta_data, created_at, updated_at, \
         phone, phone_confirmed_at, phone_change, phone_change_sent_at, \
         reauthentication_sent_at, banned_until, deleted_at, is_sso_user, is_anonymous"
    };
}
macro_rules! identity_cols {
    () => {
        "id, provider_id, user_id, identity_data, provider, last_sign_in_at, created_at, updated_at"
    };
}
macro_rules! token_cols {
    () => {
        "id, token, user_id, revoked, created_at, updated_at, parent, session_id"
    };
}

pub use opening::explain as explain_open_error;
pub use opening::{sqlite_dir_missing, sqlite_unusable};

mod admin;
mod changes;
mod dialect;
mod factors;
mod group;
mod hooks;
mod oauth;
mod oauth_clients;
mod oauth_grants;
mod opening;
mod operator;
mod otp;
mod passkeys;
mod queries;
mod rate_windows;
mod sweep;

use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use uuid::Uuid;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, Postgres, Sqlite, SqlitePool, Transaction};

use crate::config::DatabaseUrl;

pub use admin::*;
pub use changes::*;
pub use factors::*;
pub use oauth::*;
pub use oauth_clients::*;
pub use oauth_grants::*;
pub use operator::*;
pub use otp::*;
pub use passkeys::*;
pub use queries::*;
pub use rate_windows::*;
pub use sweep::*;

#[derive(Clone, Debug)]
pub enum Pool {
    Pg(PgPool),
    Lite(SqlitePool),
}

/// A handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    /// SQLite has one writer at a time. Writers queue here, in FIFO order,
    /// instead of spinning in SQLite's busy handler (whose sleeps make the
    /// tail latency of contended writes explode). The turn holds the
    /// connection the batched writes use (`group`; opened on first use, dropped
    /// after a failure): one connection whose page cache no other write in
    /// this process invalidates, and no pool hand-off per write.
    writer: std::sync::Arc<tokio::sync::Mutex<Option<sqlx::SqliteConnection>>>,
    /// How to open that connection (SQLite only).
    lite_options: Option<SqliteConnectOptions>,
    /// SQLite's refresh writes (v2 counter moves, legacy rotations),
    /// batched on that connection (`group`).
    advances: Arc<group::WriteGroup<queries::AdvanceArgs>>,
    rotations: Arc<group::WriteGroup<queries::RotateArgs>>,
    listener: Arc<OnceLock<ChangeListener>>,
}

/// The writer's connection, opened when the turn holds none.
async fn writer_connection<'t>(
    turn: &'t mut Option<sqlx::SqliteConnection>,
    opts: Option<&SqliteConnectOptions>,
) -> Result<&'t mut sqlx::SqliteConnection, sqlx::Error> {
    use sqlx::ConnectOptions;
    if turn.is_none() {
        *turn = Some(opts.ok_or(sqlx::Error::PoolClosed)?.connect().await?);
    }
    turn.as_mut().ok_or(sqlx::Error::PoolClosed)
}

/// Closes the writer's connection after a failed write, which rolls back
/// whatever the write left open; the next write opens another.
async fn discard_writer(turn: &mut Option<sqlx::SqliteConnection>) {
    use sqlx::Connection;
    if let Some(c) = turn.take() {
        let _ = c.close().await;
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("pool", &self.pool).finish()
    }
}

/// The write turn a SQLite transaction holds until it ends.
pub type WriteTurn = tokio::sync::OwnedMutexGuard<Option<sqlx::SqliteConnection>>;

/// The connection of a transaction. On SQLite it is `BEGIN IMMEDIATE`: the
/// write lock is taken up front, so two writers queue instead of failing on
/// upgrade.
pub enum Conn {
    Pg(Transaction<'static, Postgres>),
    Lite(Transaction<'static, Sqlite>, WriteTurn),
}

/// Told, right after a commit, which users the transaction changed (their
/// rows, identities or sessions), so caches in this process drop them before
/// the response goes out. Other processes learn it from the database.
pub type ChangeListener = Box<dyn Fn(&[Uuid]) + Send + Sync>;

/// One transaction, and the users its writes touched.
pub struct Tx {
    pub conn: Conn,
    touched: Vec<Uuid>,
    listener: Arc<OnceLock<ChangeListener>>,
}

/// Runs `$body` with `$c` bound to the backend's connection (or pool); the
/// body is compiled once per backend.
#[macro_export]
#[doc(hidden)]
macro_rules! on {
    // With `$d`: `$d!(…)` in the body spells a dialect difference (see `dialect`).
    (tx $tx:expr, $c:ident, $d:ident => $body:expr) => {
        $crate::on!(@dialect [$] tx $tx, $c, $d, $body)
    };
    (pool $pool:expr, $c:ident, $d:ident => $body:expr) => {
        $crate::on!(@dialect [$] pool $pool, $c, $d, $body)
    };
    (@dialect [$dol:tt] tx $tx:expr, $c:ident, $d:ident, $body:expr) => {
        match &mut $tx.conn {
            $crate::store::Conn::Pg(t) => {
                let $c: &mut sqlx::PgConnection = &mut *t;
                #[allow(unused_macros)]
                macro_rules! $d { ($dol($dol a:tt)*) => { $crate::pg_sql!($dol($dol a)*) } }
                $body
            }
            $crate::store::Conn::Lite(t, _) => {
                let $c: &mut sqlx::SqliteConnection = &mut *t;
                #[allow(unused_macros)]
                macro_rules! $d { ($dol($dol a:tt)*) => { $crate::lite_sql!($dol($dol a)*) } }
                $body
            }
        }
    };
    (@dialect [$dol:tt] pool $pool:expr, $c:ident, $d:ident, $body:expr) => {
        match $pool {
            $crate::store::Pool::Pg(p) => {
                let $c = p;
                #[allow(unused_macros)]
                macro_rules! $d { ($dol($dol a:tt)*) => { $crate::pg_sql!($dol($dol a)*) } }
                $body
            }
            $crate::store::Pool::Lite(p) => {
                let $c = p;
                #[allow(unused_macros)]
                macro_rules! $d { ($dol($dol a:tt)*) => { $crate::lite_sql!($dol($dol a)*) } }
                $body
            }
        }
    };
    // One write outside a transaction: on PostgreSQL the pool's, on SQLite in
    // a transaction of its own so it takes the writer's turn (a write to the
    // pool would wait in SQLite's busy handler, which the turns starve).
    // `$body` is a `Result<_, sqlx::Error>`, and so is the whole.
    (write $store:expr, $c:ident, $d:ident => $body:expr) => {
        $crate::on!(@dialect [$] write $store, $c, $d, $body)
    };
    (@dialect [$dol:tt] write $store:expr, $c:ident, $d:ident, $body:expr) => {
        match $store.pool() {
            $crate::store::Pool::Pg(p) => {
                let $c = p;
                #[allow(unused_macros)]
                macro_rules! $d { ($dol($dol a:tt)*) => { $crate::pg_sql!($dol($dol a)*) } }
                $body
            }
            $crate::store::Pool::Lite(_) => match $store.begin().await {
                Err(e) => Err(e),
                Ok(mut tx) => {
                    let done = {
                        let $crate::store::Conn::Lite(t, _) = &mut tx.conn else {
                            unreachable!("a SQLite store begins SQLite transactions")
                        };
                        let $c: &mut sqlx::SqliteConnection = &mut *t;
                        #[allow(unused_macros)]
                        macro_rules! $d { ($dol($dol a:tt)*) => { $crate::lite_sql!($dol($dol a)*) } }
                        $body
                    };
                    match done {
                        Ok(v) => tx.commit().await.map(|()| v),
                        Err(e) => Err(e),
                    }
                }
            },
        }
    };
    // Without `$d`: the same, the body spelling no difference.
    (write $store:expr, $c:ident => $body:expr) => {
        $crate::on!(write $store, $c, _unused_dialect => $body)
    };
    (tx $tx:expr, $c:ident => $body:expr) => {
        $crate::on!(tx $tx, $c, _unused_dialect => $body)
    };
    (pool $pool:expr, $c:ident => $body:expr) => {
        $crate::on!(pool $pool, $c, _unused_dialect => $body)
    };
}

/// How long a PostgreSQL connection may sit idle before it is pinged again.
const IDLE_PING: Duration = Duration::from_secs(1);

/// The advisory lock key that serializes migrations ("castella" in ASCII).
const MIGRATION_LOCK: i64 = 0x6361_7374_656c_6c61;

impl Store {
    /// Connects and applies pending migrations.
    pub async fn open(url: &DatabaseUrl, max_connections: u32) -> Result<Store, sqlx::Error> {
        let store = Self::connect(url, max_connections).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Connects without migrating.
    pub async fn connect(url: &DatabaseUrl, max_connections: u32) -> Result<Store, sqlx::Error> {
        let mut lite_options = None;
        let pool = match url {
            DatabaseUrl::Postgres(u) => {
                let opts = PgConnectOptions::from_str(u)?.options([("search_path", "auth,public")]);
                // One connection first: the pool would report any failure
                // as a time-out, and the real cause is what a person needs.
                use sqlx::Connection;
                let probe = sqlx::PgConnection::connect_with(&opts);
                match tokio::time::timeout(Duration::from_secs(5), probe).await {
                    Ok(c) => c?.close().await?,
                    Err(_) => return Err(sqlx::Error::PoolTimedOut),
                }
                Pool::Pg(
                    PgPoolOptions::new()
                        .max_connections(max_connections)
                        // sqlx pings every connection as it comes back; one
                        // idle since is pinged again before use only when it
                        // sat long enough for the server to have gone away
                        // (a round trip saved on every statement under load).
                        .test_before_acquire(false)
                        .before_acquire(|conn, meta| {
                            Box::pin(async move {
                                if meta.idle_for >= IDLE_PING {
                                    use sqlx::Connection;
                                    conn.ping().await?;
                                }
                                Ok(true)
                            })
                        })
                        .acquire_timeout(Duration::from_secs(5))
                        .connect_with(opts)
                        .await?,
                )
            }
            DatabaseUrl::Sqlite(path) => {
                let opts = SqliteConnectOptions::new()
                    .filename(path)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .foreign_keys(true)
                    .busy_timeout(Duration::from_secs(10));
                lite_options = Some(opts.clone());
                Pool::Lite(
                    SqlitePoolOptions::new()
                        .max_connections(max_connections)
                        // A file has no far end to lose; a connection is
                        // checked when it comes back (sqlx pings it, and
                        // `discard_if_stuck`), not again on every acquire.
                        .test_before_acquire(false)
                        .acquire_timeout(Duration::from_secs(10))
                        .after_release(|conn, _| Box::pin(discard_if_stuck(conn)))
                        .connect_with(opts)
                        .await?,
                )
            }
        };
        Ok(Store {
            pool,
            writer: Default::default(),
            lite_options,
            advances: Arc::new(queries::advance_group()),
            rotations: Arc::new(queries::rotate_group()),
            listener: Default::default(),
        })
    }

    /// Applies the migrations of this backend. On PostgreSQL the `auth`
    /// schema is created first so the migration history lives in it.
    pub async fn migrate(&self) -> Result<(), sqlx::Error> {
        match &self.pool {
            Pool::Pg(p) => {
                // Several processes may start at once on a fresh database:
                // one migrates while the others wait on this lock.
                let mut conn = p.acquire().await?;
                sqlx::query("SELECT pg_advisory_lock($1)")
                    .bind(MIGRATION_LOCK)
                    .execute(&mut *conn)
                    .await?;
                let result = async {
                    sqlx::query("CREATE SCHEMA IF NOT EXISTS auth")
                        .execute(&mut *conn)
                        .await?;
                    sqlx::migrate!("../migrations/postgres")
                        .run(&mut *conn)
                        .await?;
                    Ok::<_, sqlx::Error>(())
                }
                .await;
                sqlx::query("SELECT pg_advisory_unlock($1)")
                    .bind(MIGRATION_LOCK)
                    .execute(&mut *conn)
                    .await?;
                result?;
            }
            Pool::Lite(p) => {
                // apalis's migrations share this file's history table.
                let mut m = sqlx::migrate!("../migrations/sqlite");
                m.set_ignore_missing(true);
                m.run(p).await?
            }
        }
        Ok(())
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    pub fn backend_name(&self) -> &'static str {
        match self.pool {
            Pool::Pg(_) => "postgres",
            Pool::Lite(_) => "sqlite",
        }
    }

    /// The pool's connections: (open, idle, most allowed), for `/metrics`.
    pub fn pool_stats(&self) -> (u32, usize, u32) {
        match &self.pool {
            Pool::Pg(p) => (p.size(), p.num_idle(), p.options().get_max_connections()),
            Pool::Lite(p) => (p.size(), p.num_idle(), p.options().get_max_connections()),
        }
    }

    pub async fn begin(&self) -> Result<Tx, sqlx::Error> {
        metrics::counter!("castellan_db_transactions_total").increment(1);
        // The wait for a connection (and, on SQLite, for the writer's turn).
        let asked = std::time::Instant::now();
        let conn = match &self.pool {
            Pool::Pg(p) => Conn::Pg(p.begin().await?),
            Pool::Lite(p) => {
                let turn = self.writer.clone().lock_owned().await;
                Conn::Lite(p.begin_with("BEGIN IMMEDIATE").await?, turn)
            }
        };
        metrics::histogram!("castellan_db_acquire_seconds").record(asked.elapsed().as_secs_f64());
        Ok(Tx {
            conn,
            touched: Vec::new(),
            listener: self.listener.clone(),
        })
    }

    /// Sets the one listener told of every committed change (the session
    /// cache). Later calls are ignored.
    pub fn on_change(&self, listener: ChangeListener) {
        let _ = self.listener.set(listener);
    }

    pub async fn close(&self) {
        match &self.pool {
            Pool::Pg(p) => p.close().await,
            Pool::Lite(p) => p.close().await,
        }
    }
}

impl Tx {
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        match self.conn {
            Conn::Pg(t) => t.commit().await?,
            Conn::Lite(t, _turn) => t.commit().await?,
        }
        if !self.touched.is_empty()
            && let Some(listener) = self.listener.get()
        {
            listener(&self.touched);
        }
        Ok(())
    }

    /// Notes that this transaction changes what a cache holds for `user`.
    pub fn touch(&mut self, user: Uuid) {
        if !self.touched.contains(&user) {
            self.touched.push(user);
        }
    }
}

pub use sqlx::Error as DbError;
/// sqlx's value wrappers (`Json`), re-exported so callers need no sqlx dependency.
pub use sqlx::types as sqlx_types;

/// Whether a released SQLite connection may go back to the pool. On a full
/// disk (or an I/O error) SQLite rolls the transaction back by itself; the
/// ROLLBACK sqlx then sends fails, and sqlx still counts the transaction as
/// open, so every later `BEGIN` on that connection would fail. The ping
/// waits until that queued ROLLBACK has run; a connection still counting a
/// transaction is closed rather than reused. A connection counting no
/// transaction has nothing queued to wait for, and goes back at once (the
/// common case: a round trip to SQLite's thread saved on every release).
async fn discard_if_stuck(conn: &mut sqlx::SqliteConnection) -> Result<bool, sqlx::Error> {
    use sqlx::Connection;
    if !conn.is_in_transaction() {
        return Ok(true);
    }
    let reusable = conn.ping().await.is_ok() && !conn.is_in_transaction();
    if !reusable {
        metrics::counter!("castellan_db_connections_discarded_total").increment(1);
    }
    Ok(reusable)
}
