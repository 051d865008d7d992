//! The expiry sweep: deletes what can no longer be used, in small batches
//! that skip rows another process holds (PostgreSQL), so it never waits on
//! a lock and never holds one long.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::Store;
use super::queries::count;
use crate::on;

/// What one sweep removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub one_time_tokens: u64,
    pub flow_states: u64,
    /// Code verifiers of abandoned PKCE round trips with providers.
    pub oauth_client_states: u64,
    pub refresh_tokens: u64,
    pub sessions: u64,
    pub mfa_challenges: u64,
    pub mfa_factors: u64,
    /// Used Web3 messages whose validity has ended.
    pub web3_messages: u64,
    /// Shared rate-limit windows that have refilled (a full bucket).
    pub rate_windows: u64,
    /// Passkey ceremonies' challenges never answered in time.
    pub webauthn_challenges: u64,
    /// OAuth authorization requests a day past their end (kept that long so
    /// a replayed code is still recognised).
    pub oauth_authorizations: u64,
}

impl Swept {
    /// Each kind with its count, as the metrics name them.
    pub fn kinds(&self) -> [(&'static str, u64); 11] {
        [
            ("one_time_tokens", self.one_time_tokens),
            ("flow_states", self.flow_states),
            ("refresh_tokens", self.refresh_tokens),
            ("sessions", self.sessions),
            ("mfa_challenges", self.mfa_challenges),
            ("mfa_factors", self.mfa_factors),
            ("oauth_client_states", self.oauth_client_states),
            ("web3_messages", self.web3_messages),
            ("rate_windows", self.rate_windows),
            ("webauthn_challenges", self.webauthn_challenges),
            ("oauth_authorizations", self.oauth_authorizations),
        ]
    }

    /// True when some kind filled its batch: more of it may be waiting.
    pub fn filled(&self, batch: u64) -> bool {
        self.kinds().iter().any(|(_, n)| *n >= batch)
    }

    pub fn add(&mut self, other: &Swept) {
        self.one_time_tokens += other.one_time_tokens;
        self.flow_states += other.flow_states;
        self.oauth_client_states += other.oauth_client_states;
        self.refresh_tokens += other.refresh_tokens;
        self.sessions += other.sessions;
        self.mfa_challenges += other.mfa_challenges;
        self.mfa_factors += other.mfa_factors;
        self.web3_messages += other.web3_messages;
        self.rate_windows += other.rate_windows;
        self.webauthn_challenges += other.webauthn_challenges;
        self.oauth_authorizations += other.oauth_authorizations;
    }
}

/// One batched delete, in a transaction of its own: on SQLite it waits for
/// the writer's turn like a request's write and holds it for one batch, so
/// requests' writes take turns with the sweep instead of meeting it in
/// SQLite's busy handler (rows another process is deleting are skipped on
/// PostgreSQL).
macro_rules! batch_delete {
    ($store:expr, $table:literal, $cond:literal, $cutoff:expr, $limit:expr) => {{
        count();
        let mut tx = $store.begin().await?;
        let n = on!(tx tx, c, d => sqlx::query(concat!(
            "DELETE FROM ", $table, " WHERE id IN (SELECT id FROM ", $table, " WHERE ", $cond,
            " LIMIT $2", d!(pg " FOR UPDATE SKIP LOCKED"), ")"
        ))
        .bind($cutoff)
        .bind($limit)
        .execute(&mut *c)
        .await?
        .rows_affected());
        tx.commit().await?;
        n
    }};
}

impl Store {
    /// Deletes one batch of each kind of dead row: one-time tokens past
    /// `otp_exp`, flow states and revoked refresh tokens older than a day,
    /// sessions whose `not_after` passed three days ago, MFA challenges and
    /// unverified factors older than a day (GoTrue's cleanup rules).
    pub async fn sweep_expired(
        &self,
        now: DateTime<Utc>,
        otp_exp: Duration,
        batch: i64,
    ) -> Result<Swept, sqlx::Error> {
        let day = chrono::Duration::hours(24);
        let token_cutoff = (now - chrono::Duration::from_std(otp_exp).unwrap_or(day)).naive_utc();
        Ok(Swept {
            one_time_tokens: batch_delete!(
                self,
                "one_time_tokens",
                "created_at < $1",
                token_cutoff,
                batch
            ),
            flow_states: batch_delete!(self, "flow_state", "created_at < $1", now - day, batch),
            refresh_tokens: batch_delete!(
                self,
                "refresh_tokens",
                "revoked = true AND updated_at < $1",
                now - day,
                batch
            ),
            sessions: batch_delete!(self, "sessions", "not_after < $1", now - day * 3, batch),
            mfa_challenges: batch_delete!(
                self,
                "mfa_challenges",
                "created_at < $1",
                now - day,
                batch
            ),
            mfa_factors: batch_delete!(
                self,
                "mfa_factors",
                "status = 'unverified' AND created_at < $1",
                now - day,
                batch
            ),
            oauth_client_states: batch_delete!(
                self,
                "oauth_client_states",
                "created_at < $1",
                now - day,
                batch
            ),
            web3_messages: batch_delete!(
                self,
                "castellan_web3_messages",
                "expires_at < $1",
                now,
                batch
            ),
            rate_windows: batch_delete!(
                self,
                "castellan_rate_windows",
                "tat < $1",
                // A minute's margin for a sweeper whose clock runs ahead of
                // the database's (the windows' times are the database's).
                (now - chrono::Duration::minutes(1)).timestamp_micros(),
                batch
            ),
            webauthn_challenges: batch_delete!(
                self,
                "webauthn_challenges",
                "expires_at < $1",
                now,
                batch
            ),
            oauth_authorizations: batch_delete!(
                self,
                "oauth_authorizations",
                "expires_at < $1",
                now - day,
                batch
            ),
        })
    }
}
