//! The statements castellan runs. Each method is one round trip.

use chrono::{DateTime, NaiveDateTime, Utc};
use serde_json::Value;
use sqlx::Row;
use sqlx::types::Json;
use uuid::Uuid;

use super::{Store, Tx};
use crate::models::{INSTANCE_ID, Identity, RefreshToken, Session, User};
use crate::on;

/// Counts round trips, so benchmarks can report queries per operation.
pub(super) fn count() {
    metrics::counter!("castellan_db_queries_total").increment(1);
}

/// A new user row; token columns are written as `''` (GoTrue cannot read NULL there).
pub struct NewUser<'a> {
    pub id: Uuid,
    pub aud: &'a str,
    pub role: &'a str,
    pub email: Option<&'a str>,
    pub phone: Option<&'a str>,
    pub encrypted_password: Option<&'a str>,
    pub email_confirmed_at: Option<DateTime<Utc>>,
    pub phone_confirmed_at: Option<DateTime<Utc>>,
    pub app_metadata: Value,
    pub user_metadata: Value,
    pub is_anonymous: bool,
    pub now: DateTime<Utc>,
}

/// Which sessions of a user to delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionScope {
    /// Only this one.
    Only(Uuid),
    /// All but this one.
    AllBut(Uuid),
    All,
}

impl Store {
    pub async fn user_by_id(&self, id: Uuid) -> Result<Option<User>, sqlx::Error> {
        count();
        on!(pool &self.pool, p => sqlx::query_as(concat!("SELECT ", user_cols!(), " FROM users WHERE id = $1"))
            .bind(id).fetch_optional(p).await)
    }

    /// The user behind an access token, and whether its session still exists
    /// (`true` when the token names no session), in one round trip.
    pub async fn user_with_session(
        &self,
        id: Uuid,
        session: Option<Uuid>,
    ) -> Result<Option<(User, bool)>, sqlx::Error> {
        count();
        on!(pool &self.pool, p => {
            let row = sqlx::query(concat!(
                "SELECT ", user_cols!(),
                ", ($2 IS NULL OR EXISTS (SELECT 1 FROM sessions s WHERE s.id = $2 AND s.user_id = users.id)) AS session_ok",
                " FROM users WHERE id = $1"))
                .bind(id).bind(session).fetch_optional(p).await?;
            match row {
                None => Ok(None),
                Some(r) => {
                    let user = <User as sqlx::FromRow<_>>::from_row(&r)?;
                    Ok(Some((user, r.try_get::<bool, _>("session_ok")?)))
                }
            }
        })
    }

    /// Password sign-in lookup: by lower-cased email and audience, SSO users excluded.
    pub async fn user_by_email(&self, email: &str, aud: &str) -> Result<Option<User>, sqlx::Error> {
        count();
        on!(pool &self.pool, p => sqlx::query_as(concat!("SELECT ", user_cols!(),
            " FROM users WHERE lower(email) = $1 AND aud = $2 AND is_sso_user = false"))
            .bind(email).bind(aud).fetch_optional(p).await)
    }

    pub async fn user_by_phone(&self, phone: &str, aud: &str) -> Result<Option<User>, sqlx::Error> {
        count();
        on!(pool &self.pool, p => sqlx::query_as(concat!("SELECT ", user_cols!(),
            " FROM users WHERE phone = $1 AND aud = $2 AND is_sso_user = false"))
            .bind(phone).bind(aud).fetch_optional(p).await)
    }

    pub async fn identities_of(&self, user_id: Uuid) -> Result<Vec<Identity>, sqlx::Error> {
        count();
        on!(pool &self.pool, p => sqlx::query_as(concat!("SELECT ", identity_cols!(),
            " FROM identities WHERE user_id = $1 ORDER BY created_at, id"))
            .bind(user_id).fetch_all(p).await)
    }

    /// The session a refresh token belongs to (for routing refreshes).
    pub async fn refresh_token_session(&self, token: &str) -> Result<Option<Uuid>, sqlx::Error> {
        count();
        on!(pool &self.pool, p => sqlx::query_scalar::<_, Option<Uuid>>("SELECT session_id FROM refresh_tokens WHERE token = $1")
            .bind(token).fetch_optional(p).await.map(Option::flatten))
    }

    /// Replaces a password hash only if it is still the one that was verified
    /// (a concurrent password change wins).
    pub async fn upgrade_password_hash(
        &self,
        user_id: Uuid,
        old: &str,
        new: &str,
    ) -> Result<bool, sqlx::Error> {
        count();
        on!(pool &self.pool, p => sqlx::query("UPDATE users SET encrypted_password = $3 WHERE id = $1 AND encrypted_password = $2")
            .bind(user_id).bind(old).bind(new).execute(p).await.map(|r| r.rows_affected() == 1))
    }
}

impl Tx {
    pub async fn user_by_id(&mut self, id: Uuid) -> Result<Option<User>, sqlx::Error> {
        count();
        on!(tx self, c => sqlx::query_as(concat!("SELECT ", user_cols!(), " FROM users WHERE id = $1"))
            .bind(id).fetch_optional(&mut *c).await)
    }

    pub async fn user_by_email(
        &mut self,
        email: &str,
        aud: &str,
    ) -> Result<Option<User>, sqlx::Error> {
        count();
        on!(tx self, c => sqlx::query_as(concat!("SELECT ", user_cols!(),
            " FROM users WHERE lower(email) = $1 AND aud = $2 AND is_sso_user = false"))
            .bind(email).bind(aud).fetch_optional(&mut *c).await)
    }

    pub async fn user_by_phone(
        &mut self,
        phone: &str,
        aud: &str,
    ) -> Result<Option<User>, sqlx::Error> {
        count();
        on!(tx self, c => sqlx::query_as(concat!("SELECT ", user_cols!(),
            " FROM users WHERE phone = $1 AND aud = $2 AND is_sso_user = false"))
            .bind(phone).bind(aud).fetch_optional(&mut *c).await)
    }

    pub async fn insert_user(&mut self, u: &NewUser<'_>) -> Result<(), sqlx::Error> {
        count();
        on!(tx self, c => sqlx::query(
            "INSERT INTO users (instance_id, id, aud, role, email, phone, encrypted_password, \
             email_confirmed_at, phone_confirmed_at, raw_app_meta_data, raw_user_meta_data, \
             is_anonymous, created_at, updated_at, confirmation_token, recovery_token, \
             email_change_token_new, email_change_token_current, email_change, phone_change, \
             phone_change_token, reauthentication_token, is_super_admin, is_sso_user) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13, '', '', '', '', '', '', '', '', false, false)")
            .bind(INSTANCE_ID).bind(u.id).bind(u.aud).bind(u.role).bind(u.email).bind(u.phone)
            .bind(u.encrypted_password).bind(u.email_confirmed_at).bind(u.phone_confirmed_at)
            .bind(Json(&u.app_metadata)).bind(Json(&u.user_metadata)).bind(u.is_anonymous).bind(u.now)
            .execute(&mut *c).await.map(drop))
    }

    pub async fn insert_identity(&mut self, i: &Identity) -> Result<(), sqlx::Error> {
        count();
        on!(tx self, c => sqlx::query(
            "INSERT INTO identities (id, provider_id, user_id, identity_data, provider, last_sign_in_at, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
            .bind(i.id).bind(&i.provider_id).bind(i.user_id).bind(&i.identity_data).bind(&i.provider)
            .bind(i.last_sign_in_at).bind(i.created_at).bind(i.updated_at)
            .execute(&mut *c).await.map(drop))
    }

    pub async fn insert_audit(
        &mut self,
        payload: &Value,
        ip: &str,
        now: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        count();
        on!(tx self, c => sqlx::query(
            "INSERT INTO audit_log_entries (instance_id, id, payload, created_at, ip_address) VALUES ($1, $2, $3, $4, $5)")
            .bind(INSTANCE_ID).bind(Uuid::now_v7()).bind(Json(payload)).bind(now).bind(ip)
            .execute(&mut *c).await.map(drop))
    }

    /// A new aal1 session with its first authentication method.
    pub async fn insert_session(
        &mut self,
        id: Uuid,
        user_id: Uuid,
        method: &str,
        now: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        count();
        match self {
            Tx::Pg(t) => sqlx::query(
                "INSERT INTO sessions (id, user_id, created_at, updated_at, aal) VALUES ($1, $2, $3, $3, 'aal1'::auth.aal_level)")
                .bind(id).bind(user_id).bind(now).execute(&mut **t).await.map(drop)?,
            Tx::Lite(t) => sqlx::query(
                "INSERT INTO sessions (id, user_id, created_at, updated_at, aal) VALUES ($1, $2, $3, $3, 'aal1')")
                .bind(id).bind(user_id).bind(now).execute(&mut **t).await.map(drop)?,
        };
        self.add_amr(id, method, now).await
    }

    /// Records (or refreshes the time of) an authentication method of a session.
    pub async fn add_amr(
        &mut self,
        session_id: Uuid,
        method: &str,
        now: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        count();
        on!(tx self, c => sqlx::query(
            "INSERT INTO mfa_amr_claims (id, session_id, authentication_method, created_at, updated_at) VALUES ($1, $2, $3, $4, $4) \
             ON CONFLICT (session_id, authentication_method) DO UPDATE SET updated_at = excluded.updated_at")
            .bind(Uuid::now_v7()).bind(session_id).bind(method).bind(now)
            .execute(&mut *c).await.map(drop))
    }

    /// A session's methods with their times, newest first.
    pub async fn amr_of(
        &mut self,
        session_id: Uuid,
    ) -> Result<Vec<(String, DateTime<Utc>)>, sqlx::Error> {
        count();
        on!(tx self, c => sqlx::query_as(
            "SELECT authentication_method, updated_at FROM mfa_amr_claims WHERE session_id = $1 ORDER BY updated_at DESC")
            .bind(session_id).fetch_all(&mut *c).await)
    }

    pub async fn insert_refresh_token(
        &mut self,
        token: &str,
        user_id: Uuid,
        parent: Option<&str>,
        session_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        count();
        on!(tx self, c => sqlx::query(
            "INSERT INTO refresh_tokens (instance_id, token, user_id, revoked, created_at, updated_at, parent, session_id) \
             VALUES ($1, $2, $3, false, $4, $4, $5, $6)")
            .bind(INSTANCE_ID).bind(token).bind(user_id.to_string()).bind(now).bind(parent).bind(session_id)
            .execute(&mut *c).await.map(drop))
    }

    /// Locks the session row for the rest of the transaction (PostgreSQL; on
    /// SQLite the immediate transaction already holds the write lock), so
    /// refreshes of one session are serialized across processes.
    pub async fn lock_session(&mut self, id: Uuid) -> Result<Option<Session>, sqlx::Error> {
        count();
        match self {
            Tx::Pg(t) => sqlx::query_as(
                "SELECT id, user_id, created_at, updated_at, refreshed_at, not_after FROM sessions WHERE id = $1 FOR UPDATE")
                .bind(id).fetch_optional(&mut **t).await,
            Tx::Lite(t) => sqlx::query_as(
                "SELECT id, user_id, created_at, updated_at, refreshed_at, not_after FROM sessions WHERE id = $1")
                .bind(id).fetch_optional(&mut **t).await,
        }
    }

    pub async fn refresh_token(
        &mut self,
        token: &str,
    ) -> Result<Option<RefreshToken>, sqlx::Error> {
        count();
        on!(tx self, c => sqlx::query_as(concat!("SELECT ", token_cols!(), " FROM refresh_tokens WHERE token = $1"))
            .bind(token).fetch_optional(&mut *c).await)
    }

    /// The newest non-revoked token of a session.
    pub async fn active_refresh_token(
        &mut self,
        session_id: Uuid,
    ) -> Result<Option<RefreshToken>, sqlx::Error> {
        count();
        on!(tx self, c => sqlx::query_as(concat!("SELECT ", token_cols!(),
            " FROM refresh_tokens WHERE session_id = $1 AND revoked = false ORDER BY id DESC LIMIT 1"))
            .bind(session_id).fetch_optional(&mut *c).await)
    }

    pub async fn revoke_refresh_token(
        &mut self,
        id: i64,
        now: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        count();
        on!(tx self, c => sqlx::query("UPDATE refresh_tokens SET revoked = true, updated_at = $2 WHERE id = $1")
            .bind(id).bind(now).execute(&mut *c).await.map(drop))
    }

    /// Family revocation: every live token of the session.
    pub async fn revoke_session_tokens(
        &mut self,
        session_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<u64, sqlx::Error> {
        count();
        on!(tx self, c => sqlx::query("UPDATE refresh_tokens SET revoked = true, updated_at = $2 WHERE session_id = $1 AND revoked = false")
            .bind(session_id).bind(now).execute(&mut *c).await.map(|r| r.rows_affected()))
    }

    pub async fn touch_session(&mut self, id: Uuid, now: DateTime<Utc>) -> Result<(), sqlx::Error> {
        count();
        let refreshed: NaiveDateTime = now.naive_utc();
        on!(tx self, c => sqlx::query("UPDATE sessions SET refreshed_at = $2, updated_at = $3 WHERE id = $1")
            .bind(id).bind(refreshed).bind(now).execute(&mut *c).await.map(drop))
    }

    pub async fn set_last_sign_in(
        &mut self,
        user_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        count();
        on!(tx self, c => sqlx::query("UPDATE users SET last_sign_in_at = $2, updated_at = $2 WHERE id = $1")
            .bind(user_id).bind(now).execute(&mut *c).await.map(drop))
    }

    pub async fn delete_sessions(
        &mut self,
        user_id: Uuid,
        scope: SessionScope,
    ) -> Result<u64, sqlx::Error> {
        count();
        let r = match scope {
            SessionScope::Only(s) => {
                on!(tx self, c => sqlx::query("DELETE FROM sessions WHERE user_id = $1 AND id = $2")
                .bind(user_id).bind(s).execute(&mut *c).await.map(|r| r.rows_affected())?)
            }
            SessionScope::AllBut(s) => {
                on!(tx self, c => sqlx::query("DELETE FROM sessions WHERE user_id = $1 AND id <> $2")
                .bind(user_id).bind(s).execute(&mut *c).await.map(|r| r.rows_affected())?)
            }
            SessionScope::All => {
                on!(tx self, c => sqlx::query("DELETE FROM sessions WHERE user_id = $1")
                .bind(user_id).execute(&mut *c).await.map(|r| r.rows_affected())?)
            }
        };
        Ok(r)
    }

    pub async fn update_metadata(
        &mut self,
        user_id: Uuid,
        user_metadata: &Value,
        app_metadata: &Value,
        now: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        count();
        on!(tx self, c => sqlx::query("UPDATE users SET raw_user_meta_data = $2, raw_app_meta_data = $3, updated_at = $4 WHERE id = $1")
            .bind(user_id).bind(Json(user_metadata)).bind(Json(app_metadata)).bind(now)
            .execute(&mut *c).await.map(drop))
    }

    /// Sets a new password and clears every pending one-time token, as a
    /// password change must.
    pub async fn set_password(
        &mut self,
        user_id: Uuid,
        hash: &str,
        now: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        count();
        on!(tx self, c => sqlx::query(
            "UPDATE users SET encrypted_password = $2, updated_at = $3, confirmation_token = '', recovery_token = '', \
             email_change_token_new = '', email_change_token_current = '', phone_change_token = '', \
             reauthentication_token = '' WHERE id = $1")
            .bind(user_id).bind(hash).bind(now).execute(&mut *c).await.map(drop))?;
        count();
        on!(tx self, c => sqlx::query("DELETE FROM one_time_tokens WHERE user_id = $1")
            .bind(user_id).execute(&mut *c).await.map(drop))
    }

    /// Confirms an email (also marking `email_verified` in the metadata, as
    /// GoTrue does) or a phone.
    pub async fn confirm(
        &mut self,
        user_id: Uuid,
        provider: &str,
        now: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        count();
        if provider == "email" {
            let user = self.user_by_id(user_id).await?;
            let mut meta = user
                .map(|u| u.user_metadata())
                .unwrap_or_else(|| serde_json::json!({}));
            meta["email_verified"] = Value::Bool(true);
            on!(tx self, c => sqlx::query("UPDATE users SET email_confirmed_at = $2, raw_user_meta_data = $3, updated_at = $2 WHERE id = $1")
                .bind(user_id).bind(now).bind(Json(&meta)).execute(&mut *c).await.map(drop))
        } else {
            on!(tx self, c => sqlx::query("UPDATE users SET phone_confirmed_at = $2, updated_at = $2 WHERE id = $1")
                .bind(user_id).bind(now).execute(&mut *c).await.map(drop))
        }
    }
}
