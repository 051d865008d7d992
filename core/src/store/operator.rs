//! Operator settings kept in the database: signing keys (`castellan keys
//! add|promote|retire`) and rate limits changed while running. Signing keys:
//! each is a private JWK in a state. A change takes effect in every process
//! sharing the database at its next poll, and is audited.

use chrono::{DateTime, Utc};

use super::{Store, Tx};
use crate::on;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredKey {
    pub kid: String,
    /// The private JWK, sealed when database encryption is on.
    pub jwk: String,
    pub state: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    /// Published and checked, not used to sign.
    Verify,
    /// The one key new tokens are signed with.
    Sign,
    /// Neither published nor accepted.
    Retired,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Verify => "verify",
            KeyState::Sign => "sign",
            KeyState::Retired => "retired",
        }
    }
}

/// Free bytes below which the SQLite file's disk counts as full.
pub const MIN_FREE_DISK: u64 = 256 * 1024;

impl Store {
    /// Whether the SQLite file's disk is too full to take a write: below
    /// [`MIN_FREE_DISK`] free (SQLite needs room for WAL frames and pages;
    /// reads still answer then, so a ping alone would say ready). False on
    /// PostgreSQL, whose disk is its own server's.
    pub fn disk_full(&self) -> bool {
        let Some(opts) = &self.lite_options else {
            return false;
        };
        let file = opts.get_filename();
        let dir = match file.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => std::path::Path::new("."),
        };
        match rustix::fs::statvfs(dir) {
            Ok(st) => st.f_bavail.saturating_mul(st.f_frsize) < MIN_FREE_DISK,
            Err(_) => false,
        }
    }

    /// One round trip: whether the database answers (`GET /ready`).
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        on!(pool &self.pool, p => sqlx::query("SELECT 1").execute(p).await.map(drop))
    }

    pub async fn signing_keys(&self) -> Result<Vec<StoredKey>, sqlx::Error> {
        on!(pool &self.pool, p => sqlx::query_as(
            "SELECT kid, jwk, state, created_at, updated_at FROM castellan_signing_keys ORDER BY created_at, kid")
            .fetch_all(p).await)
    }
}

impl Tx {
    pub async fn add_signing_key(
        &mut self,
        kid: &str,
        jwk: &str,
        now: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        on!(tx self, c => sqlx::query(
            "INSERT INTO castellan_signing_keys (kid, jwk, state, created_at, updated_at) VALUES ($1, $2, 'verify', $3, $3)")
            .bind(kid).bind(jwk).bind(now).execute(&mut *c).await.map(drop))
    }

    /// Moves a key to `to`: to `sign` from `verify` (the current signer
    /// steps down to `verify`), to `retired` from `verify` (never the
    /// signer), to `verify` from `retired`. False when `kid` is not in a
    /// state it can move from.
    pub async fn set_signing_key_state(
        &mut self,
        kid: &str,
        to: KeyState,
        now: DateTime<Utc>,
    ) -> Result<bool, sqlx::Error> {
        let from = match to {
            KeyState::Sign | KeyState::Retired => "verify",
            KeyState::Verify => "retired",
        };
        if to == KeyState::Sign {
            on!(tx self, c => sqlx::query(
                "UPDATE castellan_signing_keys SET state = 'verify', updated_at = $1 WHERE state = 'sign'")
                .bind(now).execute(&mut *c).await.map(drop))?;
        }
        on!(tx self, c => sqlx::query(
            "UPDATE castellan_signing_keys SET state = $2, updated_at = $3 WHERE kid = $1 AND state = $4")
            .bind(kid).bind(to.as_str()).bind(now).bind(from).execute(&mut *c).await.map(|r| r.rows_affected() == 1))
    }
}

/// A rate limit changed while running: its name and events per window.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct LimitOverride {
    pub name: String,
    pub events: i64,
}

impl Store {
    pub async fn rate_limit_overrides(&self) -> Result<Vec<LimitOverride>, sqlx::Error> {
        on!(pool &self.pool, p => sqlx::query_as(
            "SELECT name, events FROM castellan_rate_limits ORDER BY name").fetch_all(p).await)
    }
}

impl Tx {
    pub async fn set_rate_limit(
        &mut self,
        name: &str,
        events: i64,
        now: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        on!(tx self, c => sqlx::query(
            "INSERT INTO castellan_rate_limits (name, events, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET events = excluded.events, updated_at = excluded.updated_at")
            .bind(name).bind(events).bind(now).execute(&mut *c).await.map(drop))
    }
}
