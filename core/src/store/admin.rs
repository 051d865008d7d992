//! The statements of the admin API: listing, direct edits, deletion, the
//! audit log.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;
use uuid::Uuid;

use super::queries::count;
use super::{Store, Tx};
use crate::models::User;
use crate::on;

/// A page request: `limit` rows after `offset`.
#[derive(Debug, Clone, Copy)]
pub struct Page {
    pub limit: i64,
    pub offset: i64,
}

/// One audit log row as the admin API shows it.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
#[schema(as = AuditEntry)]
pub struct AuditRow {
    pub id: Uuid,
    #[schema(value_type = Option<Object>)]
    pub payload: Option<Json<Value>>,
    pub created_at: Option<DateTime<Utc>>,
    pub ip_address: String,
}

/// Which audit field a search matches (GoTrue's `query=<scope>:<text>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditScope {
    Author,
    Action,
    Type,
}

/// What the audit log is narrowed to: GoTrue's search, and castellan's own
/// filters (the user it names, the address, a time window).
#[derive(Debug, Clone, Copy, Default)]
pub struct AuditFilter<'a> {
    pub search: Option<(AuditScope, &'a str)>,
    pub user: Option<Uuid>,
    pub ip: Option<&'a str>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

/// A `LIKE` pattern matching `text` anywhere, with its wildcards escaped.
pub fn contains_pattern(text: &str) -> String {
    let escaped = text
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    format!("%{escaped}%")
}

/// One of a user's sessions, as the admin API lists them.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
#[schema(as = Session)]
pub struct SessionRow {
    pub id: Uuid,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
    /// When its refresh token last turned (GoTrue's column, without a zone).
    pub refreshed_at: Option<chrono::NaiveDateTime>,
    pub not_after: Option<DateTime<Utc>>,
    pub aal: Option<String>,
    pub user_agent: Option<String>,
    pub ip: Option<String>,
    /// The OAuth client whose authorization code started it, if any.
    pub oauth_client_id: Option<Uuid>,
}

/// One factor row, as the admin API shows it.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[schema(as = Factor)]
pub struct FactorRow {
    pub id: Uuid,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub status: String,
    /// Left out when empty, as GoTrue does.
    #[serde(default, skip_serializing_if = "no_name")]
    pub friendly_name: Option<String>,
    pub factor_type: String,
    /// GoTrue shows `""` for a factor without a phone.
    #[serde(default, serialize_with = "empty_if_none")]
    #[schema(value_type = String)]
    pub phone: Option<String>,
    pub last_challenged_at: Option<DateTime<Utc>>,
}

fn no_name(v: &Option<String>) -> bool {
    v.as_deref().is_none_or(str::is_empty)
}

fn empty_if_none<S: serde::Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(v.as_deref().unwrap_or_default())
}

impl Store {
    /// Users of an audience, newest (or oldest) first, optionally filtered by
    /// a substring of the email or of `user_metadata.full_name`; with the total.
    pub async fn list_users(
        &self,
        aud: &str,
        filter: Option<&str>,
        newest_first: bool,
        page: Page,
    ) -> Result<(Vec<User>, i64), sqlx::Error> {
        let pattern = filter.map(contains_pattern);
        // An id is matched as its hex digits, dashes or not.
        let id_pattern = filter.map(|f| contains_pattern(&f.replace('-', "").to_ascii_lowercase()));
        count();
        // The filter: the address or the full name contains the pattern.
        macro_rules! matching {
            ($d:ident) => {
                concat!(
                    " FROM users WHERE aud = $1 AND ($2", $d!(cast "text"), " IS NULL OR email ", $d!(ilike),
                    " $2 ESCAPE '\\' OR ", $d!(json_text "raw_user_meta_data", "full_name"), " ", $d!(ilike),
                    " $2 ESCAPE '\\' OR phone ", $d!(ilike), " $2 ESCAPE '\\' OR ", $d!(uuid_hex "id"),
                    " LIKE $3 ESCAPE '\\')"
                )
            };
        }
        macro_rules! list {
            ($order:literal) => {
                on!(pool &self.pool, p, d => sqlx::query_as(concat!("SELECT ", user_cols!(), matching!(d),
                    " ORDER BY created_at ", $order, ", id ", $order, " LIMIT $4 OFFSET $5"))
                    .bind(aud).bind(&pattern).bind(&id_pattern).bind(page.limit).bind(page.offset).fetch_all(p).await)?
            };
        }
        let users: Vec<User> = if newest_first {
            list!("DESC")
        } else {
            list!("ASC")
        };
        count();
        let total: i64 = on!(pool &self.pool, p, d => sqlx::query_scalar(concat!("SELECT count(*)", matching!(d)))
            .bind(aud).bind(&pattern).bind(&id_pattern).fetch_one(p).await)?;
        Ok((users, total))
    }

    /// A user's newest `limit` sessions, newest first (a user may hold any
    /// number).
    pub async fn sessions_of(
        &self,
        user_id: Uuid,
        limit: i64,
    ) -> Result<Vec<SessionRow>, sqlx::Error> {
        count();
        on!(pool &self.pool, p, d => sqlx::query_as(concat!(
            "SELECT id, created_at, updated_at, refreshed_at, not_after, CAST(aal AS TEXT) AS aal, user_agent, ",
            d!(pg "host(ip) AS "), "ip, oauth_client_id FROM sessions WHERE user_id = $1 \
             ORDER BY created_at DESC NULLS LAST, id LIMIT $2"))
            .bind(user_id).bind(limit).fetch_all(p).await)
    }

    /// The audit log, newest first, filtered.
    pub async fn list_audit(
        &self,
        filter: &AuditFilter<'_>,
        page: Page,
    ) -> Result<(Vec<AuditRow>, i64), sqlx::Error> {
        let scope = filter.search.map(|(s, _)| match s {
            AuditScope::Author => "author",
            AuditScope::Action => "action",
            AuditScope::Type => "type",
        });
        let pattern = filter.search.map(|(_, t)| contains_pattern(t));
        // A user's id appears in the entries they made and in those about them.
        let user = filter.user.map(|u| format!("%{u}%"));
        let ip = filter.ip.map(contains_pattern);
        // `$2` contained in the payload's field `$key`.
        macro_rules! like {
            ($d:ident, $key:literal) => {
                concat!("(", $d!(json_text "payload", $key), ") ", $d!(ilike), " $2 ESCAPE '\\'")
            };
        }
        macro_rules! audit_where {
            ($d:ident) => {
                concat!(
                    " WHERE ($1", $d!(cast "text"), " IS NULL OR ($1 = 'author' AND (",
                    like!($d, "actor_username"), " OR ", like!($d, "actor_name"), ")) OR ($1 = 'action' AND ",
                    like!($d, "action"), ") OR ($1 = 'type' AND ", like!($d, "log_type"), "))",
                    " AND ($3", $d!(cast "text"), " IS NULL OR CAST(payload AS TEXT) LIKE $3)",
                    " AND ($4", $d!(cast "text"), " IS NULL OR ip_address LIKE $4 ESCAPE '\\')",
                    " AND ($5", $d!(cast "timestamptz"), " IS NULL OR created_at >= $5)",
                    " AND ($6", $d!(cast "timestamptz"), " IS NULL OR created_at <= $6)"
                )
            };
        }
        count();
        count();
        on!(pool &self.pool, p, d => Ok((
            sqlx::query_as(concat!(
                "SELECT id, payload, created_at, ip_address FROM audit_log_entries",
                audit_where!(d),
                " ORDER BY created_at DESC, id DESC LIMIT $7 OFFSET $8"
            ))
            .bind(scope)
            .bind(&pattern)
            .bind(&user)
            .bind(&ip)
            .bind(filter.since)
            .bind(filter.until)
            .bind(page.limit)
            .bind(page.offset)
            .fetch_all(p)
            .await?,
            sqlx::query_scalar(concat!("SELECT count(*) FROM audit_log_entries", audit_where!(d)))
                .bind(scope)
                .bind(&pattern)
                .bind(&user)
                .bind(&ip)
                .bind(filter.since)
                .bind(filter.until)
                .fetch_one(p)
                .await?,
        )))
    }

    pub async fn factors_of(&self, user_id: Uuid) -> Result<Vec<FactorRow>, sqlx::Error> {
        count();
        on!(pool &self.pool, p, d => sqlx::query_as(concat!(
            "SELECT id, created_at, updated_at, status", d!(cast "text"), " AS status, friendly_name, factor_type",
            d!(cast "text"), " AS factor_type, phone, last_challenged_at FROM mfa_factors WHERE user_id = $1 ORDER BY created_at"))
            .bind(user_id).fetch_all(p).await)
    }
}

impl Tx {
    /// Whether another user holds this (lower-cased) email.
    pub async fn email_taken(&mut self, email: &str, except: Uuid) -> Result<bool, sqlx::Error> {
        count();
        on!(tx self, c => sqlx::query_scalar::<_, i64>("SELECT count(*) FROM users WHERE lower(email) = $1 AND is_sso_user = false AND id <> $2")
            .bind(email).bind(except).fetch_one(&mut *c).await.map(|n| n > 0))
    }

    pub async fn phone_taken(&mut self, phone: &str, except: Uuid) -> Result<bool, sqlx::Error> {
        count();
        on!(tx self, c => sqlx::query_scalar::<_, i64>("SELECT count(*) FROM users WHERE phone = $1 AND id <> $2")
            .bind(phone).bind(except).fetch_one(&mut *c).await.map(|n| n > 0))
    }

    pub async fn set_banned_until(
        &mut self,
        user_id: Uuid,
        until: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        self.touch(user_id);
        count();
        on!(tx self, c => sqlx::query("UPDATE users SET banned_until = $2, updated_at = $3 WHERE id = $1")
            .bind(user_id).bind(until).bind(now).execute(&mut *c).await.map(drop))
    }

    pub async fn set_role(
        &mut self,
        user_id: Uuid,
        role: &str,
        now: DateTime<Utc>,
    ) -> Result<(), crate::ApiError> {
        crate::validate::short_text("role", role, 255)?;
        self.touch(user_id);
        count();
        on!(tx self, c => sqlx::query("UPDATE users SET role = $2, updated_at = $3 WHERE id = $1")
            .bind(user_id).bind(role).bind(now).execute(&mut *c).await.map(drop))?;
        Ok(())
    }

    /// Sets the email or phone column directly (admin edits; no confirmation flow).
    pub async fn set_contact(
        &mut self,
        user_id: Uuid,
        provider: &str,
        value: &str,
        now: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        self.touch(user_id);
        count();
        if provider == "email" {
            on!(tx self, c => sqlx::query("UPDATE users SET email = $2, updated_at = $3 WHERE id = $1")
                .bind(user_id).bind(value).bind(now).execute(&mut *c).await.map(drop))
        } else {
            on!(tx self, c => sqlx::query("UPDATE users SET phone = $2, updated_at = $3 WHERE id = $1")
                .bind(user_id).bind(value).bind(now).execute(&mut *c).await.map(drop))
        }
    }

    pub async fn clear_anonymous(&mut self, user_id: Uuid) -> Result<(), sqlx::Error> {
        self.touch(user_id);
        count();
        on!(tx self, c => sqlx::query("UPDATE users SET is_anonymous = false WHERE id = $1")
            .bind(user_id).execute(&mut *c).await.map(drop))
    }

    /// Creates or replaces the email/phone identity of a user (provider id = user id).
    pub async fn upsert_identity(
        &mut self,
        user_id: Uuid,
        provider: &str,
        data: &Value,
        now: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        self.touch(user_id);
        count();
        on!(tx self, c => sqlx::query(
            "INSERT INTO identities (id, provider_id, user_id, identity_data, provider, last_sign_in_at, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $6, $6) \
             ON CONFLICT (provider_id, provider) DO UPDATE SET identity_data = excluded.identity_data, updated_at = excluded.updated_at")
            .bind(Uuid::new_v4()).bind(user_id.to_string()).bind(user_id).bind(Json(data)).bind(provider).bind(now)
            .execute(&mut *c).await.map(drop))
    }

    /// Hard delete; identities, sessions, refresh tokens, factors and
    /// one-time tokens go with the row (foreign keys cascade).
    pub async fn delete_user(&mut self, user_id: Uuid) -> Result<(), sqlx::Error> {
        self.touch(user_id);
        count();
        on!(tx self, c => sqlx::query("DELETE FROM users WHERE id = $1").bind(user_id).execute(&mut *c).await.map(drop))
    }

    /// Soft delete: identifying fields replaced by the given obfuscated
    /// values, secrets and metadata cleared, sessions, factors, passkeys
    /// and one-time tokens deleted, identities emptied.
    pub async fn soft_delete_user(
        &mut self,
        user_id: Uuid,
        email: Option<&str>,
        phone: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        self.touch(user_id);
        let empty = serde_json::json!({});
        count();
        on!(tx self, c => sqlx::query(
            "UPDATE users SET email = $2, phone = $3, email_change = '', phone_change = '', encrypted_password = '', \
             confirmation_token = '', recovery_token = '', email_change_token_new = '', email_change_token_current = '', \
             phone_change_token = '', reauthentication_token = '', raw_user_meta_data = $4, raw_app_meta_data = $4, \
             deleted_at = $5, updated_at = $5 WHERE id = $1")
            .bind(user_id).bind(email).bind(phone).bind(Json(&empty)).bind(now).execute(&mut *c).await.map(drop))?;
        count();
        on!(tx self, c => sqlx::query("UPDATE identities SET identity_data = $2, provider_id = $3 || ':' || provider, updated_at = $4 WHERE user_id = $1")
            .bind(user_id).bind(Json(&empty)).bind(format!("deleted:{}", Uuid::new_v4())).bind(now).execute(&mut *c).await.map(drop))?;
        for sql in [
            "DELETE FROM sessions WHERE user_id = $1",
            "DELETE FROM mfa_factors WHERE user_id = $1",
            "DELETE FROM one_time_tokens WHERE user_id = $1",
            "DELETE FROM webauthn_credentials WHERE user_id = $1",
            "DELETE FROM webauthn_challenges WHERE user_id = $1",
        ] {
            count();
            on!(tx self, c => sqlx::query(sql).bind(user_id).execute(&mut *c).await.map(drop))?;
        }
        Ok(())
    }
}
