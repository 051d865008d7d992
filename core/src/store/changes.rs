//! Following changes made by any process sharing the database, so caches of
//! users and sessions can drop what another process changed.
//!
//! Database triggers (migration 0003) record every change of a user, an
//! identity or a session, inside the writing transaction: on PostgreSQL as a
//! `NOTIFY castellan_cache` (delivered exactly when the change commits), on
//! SQLite as a row in `castellan_cache_changes`, which followers poll.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::PgListener;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::queries::count;
use super::{Pool, Store};

/// The PostgreSQL channel the triggers notify.
pub const CHANNEL: &str = "castellan_cache";

/// What a follower reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeEvent {
    /// Following from now on: anything cached before may be stale.
    Following,
    /// These users changed (committed).
    Changed(Vec<Uuid>),
    /// The feed is lost (connection dropped, query failed); changes may be
    /// missed until `Following` comes again.
    Lost(String),
}

impl Store {
    /// Follows committed changes until `events` closes. Reconnects on its
    /// own; every gap is bracketed by `Lost` and `Following`.
    pub async fn follow_changes(&self, poll: Duration, events: mpsc::Sender<ChangeEvent>) {
        match &self.pool {
            Pool::Pg(p) => follow_pg(p, events).await,
            Pool::Lite(_) => self.follow_lite(poll, events).await,
        }
    }

    /// The newest change sequence number (SQLite).
    async fn last_change(&self) -> Result<i64, sqlx::Error> {
        count();
        match &self.pool {
            Pool::Lite(p) => {
                sqlx::query_scalar("SELECT coalesce(max(seq), 0) FROM castellan_cache_changes")
                    .fetch_one(p)
                    .await
            }
            Pool::Pg(_) => Ok(0),
        }
    }

    /// Changes after `after` (SQLite), oldest first.
    async fn changes_after(&self, after: i64) -> Result<Vec<(i64, Uuid)>, sqlx::Error> {
        match &self.pool {
            Pool::Lite(p) => {
                sqlx::query_as(
                    "SELECT seq, user_id FROM castellan_cache_changes WHERE seq > $1 ORDER BY seq LIMIT 1000",
                )
                .bind(after)
                .fetch_all(p)
                .await
            }
            Pool::Pg(_) => Ok(vec![]),
        }
    }

    /// Forgets change records older than `before` (SQLite; a follower that
    /// was away that long starts afresh anyway).
    pub async fn prune_changes(&self, before: DateTime<Utc>) -> Result<u64, sqlx::Error> {
        let Pool::Lite(_) = &self.pool else {
            return Ok(0);
        };
        let mut tx = self.begin().await?;
        count();
        let n = crate::on!(tx tx, c => sqlx::query("DELETE FROM castellan_cache_changes WHERE changed_at < $1")
            .bind(before).execute(&mut *c).await?.rows_affected());
        tx.commit().await?;
        Ok(n)
    }

    async fn follow_lite(&self, poll: Duration, events: mpsc::Sender<ChangeEvent>) {
        let mut last: Option<i64> = None;
        loop {
            let step = match last {
                None => self.last_change().await.map(|seq| {
                    last = Some(seq);
                    ChangeEvent::Following
                }),
                Some(after) => self.changes_after(after).await.map(|rows| {
                    if let Some((seq, _)) = rows.last() {
                        last = Some(*seq);
                    }
                    ChangeEvent::Changed(rows.into_iter().map(|(_, u)| u).collect())
                }),
            };
            let event = match step {
                Ok(ChangeEvent::Changed(users)) if users.is_empty() => None,
                Ok(e) => Some(e),
                Err(e) => {
                    last = None;
                    Some(ChangeEvent::Lost(e.to_string()))
                }
            };
            if let Some(e) = event
                && events.send(e).await.is_err()
            {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(poll) => {}
                _ = events.closed() => return,
            }
        }
    }
}

async fn listen(pool: &sqlx::PgPool) -> Result<PgListener, sqlx::Error> {
    let mut l = PgListener::connect_with(pool).await?;
    l.listen(CHANNEL).await?;
    Ok(l)
}

async fn follow_pg(pool: &sqlx::PgPool, events: mpsc::Sender<ChangeEvent>) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let lost = match listen(pool).await {
            Ok(mut l) => {
                backoff = Duration::from_millis(50);
                if events.send(ChangeEvent::Following).await.is_err() {
                    return;
                }
                loop {
                    // `try_recv` answers `None` when the connection dropped,
                    // instead of reconnecting behind our back.
                    let next = tokio::select! {
                        n = l.try_recv() => n,
                        _ = events.closed() => return,
                    };
                    match next {
                        Ok(Some(n)) => {
                            let users: Vec<Uuid> = n
                                .payload()
                                .split(',')
                                .filter_map(|s| Uuid::parse_str(s.trim()).ok())
                                .collect();
                            if !users.is_empty()
                                && events.send(ChangeEvent::Changed(users)).await.is_err()
                            {
                                return;
                            }
                        }
                        Ok(None) => break "notification connection closed".to_string(),
                        Err(e) => break e.to_string(),
                    }
                }
            }
            Err(e) => e.to_string(),
        };
        if events.send(ChangeEvent::Lost(lost)).await.is_err() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = events.closed() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}
