//! Rate-limit windows shared by every process on the database (GCRA: a
//! client's bucket is the time by which all it was granted is paid for,
//! one request per `interval`, never more than `cap` ahead of now). A
//! process leases a few requests at a time, so a limit holds across
//! processes without a round trip per request.

use super::Store;
use super::queries::count;
use crate::on;

/// What a lease got: `granted` requests (0 when the bucket is empty), and
/// the window's time after it (µs since the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leased {
    pub granted: i64,
    pub tat: i64,
}

impl Store {
    /// Takes up to `want` requests from window `id` at `now` (every time in
    /// µs): the bucket holds `cap / interval` requests, refilled one per
    /// `interval`. One statement, whatever the window's state.
    pub async fn lease_requests(
        &self,
        id: &str,
        now: i64,
        (interval, cap): (i64, i64),
        want: i64,
    ) -> Result<Leased, sqlx::Error> {
        count();
        let fresh = want.min(cap / interval).max(0);
        let row: (i64, i64) = on!(pool &self.pool, c, d => sqlx::query_as(concat!(
            "INSERT INTO castellan_rate_windows AS w (id, tat, granted) VALUES ($1, $2 + $6 * $3, $6) \
             ON CONFLICT (id) DO UPDATE SET \
             granted = ", d!(greatest), "(0, ", d!(least), "($5, ($4 - (", d!(greatest), "(w.tat, $2) - $2)) / $3)), \
             tat = ", d!(greatest), "(w.tat, $2) + ", d!(greatest), "(0, ", d!(least), "($5, ($4 - (", d!(greatest), "(w.tat, $2) - $2)) / $3)) * $3 \
             RETURNING granted, tat"))
            .bind(id).bind(now).bind(interval).bind(cap).bind(want).bind(fresh)
            .fetch_one(c).await)?;
        Ok(Leased {
            granted: row.0,
            tat: row.1,
        })
    }

    /// Gives back `requests` leased from window `id` and not used.
    pub async fn return_requests(
        &self,
        id: &str,
        requests: i64,
        interval: i64,
    ) -> Result<(), sqlx::Error> {
        count();
        on!(pool &self.pool, c => sqlx::query(
            "UPDATE castellan_rate_windows SET tat = tat - $2 * $3 WHERE id = $1")
            .bind(id).bind(requests).bind(interval).execute(c).await.map(drop))
    }
}
