//! The floor: the database's own write-transaction rate, measured in the same
//! run, through the server's pool settings and durability (castellan's own
//! `Store`, so the same WAL/`synchronous` on SQLite and the same writer turn),
//! at the same concurrency. One operation is what a refresh must do at
//! least: one locked read, one update, one insert, commit.

use std::time::Duration;

use castellan_core::Store;
use castellan_core::config::DatabaseUrl;
use castellan_core::on;

use crate::load::{self, Measured};

async fn setup(store: &Store, rows: usize) -> anyhow::Result<()> {
    on!(pool store.pool(), p => {
        sqlx::query("DROP TABLE IF EXISTS castellan_bench_floor_log").execute(p).await?;
        sqlx::query("DROP TABLE IF EXISTS castellan_bench_floor").execute(p).await?;
        sqlx::query("CREATE TABLE castellan_bench_floor (id BIGINT PRIMARY KEY, n BIGINT NOT NULL)").execute(p).await?;
        sqlx::query("CREATE TABLE castellan_bench_floor_log (row_id BIGINT NOT NULL, at TEXT NOT NULL)").execute(p).await?;
        for i in 0..rows as i64 {
            sqlx::query("INSERT INTO castellan_bench_floor (id, n) VALUES ($1, 0)").bind(i).execute(p).await?;
        }
    });
    Ok(())
}

async fn one(store: &Store, row: i64) -> Result<(), sqlx::Error> {
    let mut tx = store.begin().await?;
    match &mut tx.conn {
        castellan_core::store::Conn::Pg(t) => {
            sqlx::query_scalar::<_, i64>(
                "SELECT n FROM castellan_bench_floor WHERE id = $1 FOR UPDATE",
            )
            .bind(row)
            .fetch_one(&mut **t)
            .await?;
        }
        castellan_core::store::Conn::Lite(t, _) => {
            sqlx::query_scalar::<_, i64>("SELECT n FROM castellan_bench_floor WHERE id = $1")
                .bind(row)
                .fetch_one(&mut **t)
                .await?;
        }
    }
    on!(tx tx, c => {
        sqlx::query("UPDATE castellan_bench_floor SET n = n + 1 WHERE id = $1").bind(row).execute(&mut *c).await?;
        sqlx::query("INSERT INTO castellan_bench_floor_log (row_id, at) VALUES ($1, 'now')").bind(row).execute(&mut *c).await?;
    });
    tx.commit().await
}

/// Write transactions per second at `connections` concurrent workers, each
/// on its own row (as each refresh chain has its own session).
pub async fn run(
    url: &DatabaseUrl,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<Measured> {
    // The server opens its store with 16 connections; so does the floor.
    let store = Store::connect(url, 16).await?;
    setup(&store, connections).await?;
    let m = load::run(
        connections,
        duration,
        |i| {
            let store = store.clone();
            async move { (store, i as i64) }
        },
        |(store, row): (Store, i64)| async move {
            let ok = one(&store, row).await.is_ok();
            ((store, row), ok)
        },
    )
    .await;
    on!(pool store.pool(), p => {
        sqlx::query("DROP TABLE IF EXISTS castellan_bench_floor_log").execute(p).await?;
        sqlx::query("DROP TABLE IF EXISTS castellan_bench_floor").execute(p).await?;
    });
    store.close().await;
    Ok(m)
}
