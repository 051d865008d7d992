//! Rate-limit windows shared by every process on the database (GCRA: a
//! client's bucket is the time by which all it was granted is paid for,
//! one request per `interval`, never more than `cap` ahead of now). A
//! process leases a few requests at a time, so a limit holds across
//! processes without a round trip per request. Times are the database's
//! (µs since the epoch), so processes with skewed clocks agree.

use super::Store;
use super::queries::count;
use crate::on;

/// What a lease got: `granted` requests (0 when the bucket is empty), and
/// the window's time after it and the database's time of the lease (µs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leased {
    pub granted: i64,
    pub tat: i64,
    pub now: i64,
}

impl Store {
    /// Takes up to `want` requests from window `id`: the bucket holds
    /// `cap / interval` requests (µs), refilled one per `interval`. One
    /// statement, whatever the window's state.
    pub async fn lease_requests(
        &self,
        id: &str,
        (interval, cap): (i64, i64),
        want: i64,
    ) -> Result<Leased, sqlx::Error> {
        count();
        let fresh = want.min(cap / interval).max(0);
        let row: (i64, i64, i64) = on!(pool &self.pool, c, d => sqlx::query_as(concat!(
            "WITH n AS (SELECT ", d!(now_micros), " AS now) \
             INSERT INTO castellan_rate_windows AS w (id, tat, granted) \
             SELECT $1, n.now + $5 * $2, $5 FROM n WHERE true \
             ON CONFLICT (id) DO UPDATE SET \
             granted = ", d!(greatest), "(0, ", d!(least), "($4, ($3 - (", d!(greatest), "(w.tat, (SELECT now FROM n)) - (SELECT now FROM n))) / $2)), \
             tat = ", d!(greatest), "(w.tat, (SELECT now FROM n)) + ", d!(greatest), "(0, ", d!(least), "($4, ($3 - (", d!(greatest), "(w.tat, (SELECT now FROM n)) - (SELECT now FROM n))) / $2)) * $2 \
             RETURNING granted, tat, (SELECT now FROM n)"))
            .bind(id).bind(interval).bind(cap).bind(want).bind(fresh)
            .fetch_one(c).await)?;
        Ok(Leased {
            granted: row.0,
            tat: row.1,
            now: row.2,
        })
    }

    /// Gives back requests leased and not used: (window id, requests,
    /// interval) each. A window never falls behind now (a full bucket).
    pub async fn return_requests(&self, unused: &[(String, i64, i64)]) -> Result<(), sqlx::Error> {
        count();
        let ids: Vec<&str> = unused.iter().map(|u| u.0.as_str()).collect();
        let times: Vec<i64> = unused.iter().map(|u| u.1.saturating_mul(u.2)).collect();
        match &self.pool {
            super::Pool::Pg(p) => sqlx::query(concat!(
                "UPDATE castellan_rate_windows AS w SET tat = GREATEST(w.tat - r.t, ",
                crate::pg_sql!(now_micros),
                ") FROM unnest($1::text[], $2::bigint[]) AS r(id, t) WHERE w.id = r.id"
            ))
            .bind(&ids)
            .bind(&times)
            .execute(p)
            .await
            .map(drop),
            // Shared windows serve PostgreSQL's processes; SQLite's one
            // process keeps its buckets in memory. Written for completeness.
            super::Pool::Lite(p) => {
                for (id, t) in ids.iter().zip(&times) {
                    sqlx::query(concat!(
                        "UPDATE castellan_rate_windows SET tat = MAX(tat - $2, ",
                        crate::lite_sql!(now_micros),
                        ") WHERE id = $1"
                    ))
                    .bind(id)
                    .bind(t)
                    .execute(p)
                    .await?;
                }
                Ok(())
            }
        }
    }
}
