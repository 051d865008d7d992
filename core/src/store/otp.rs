//! One-time tokens (email links and codes), PKCE flow states and the global
//! email budget.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::Tx;
use super::queries::count;
use crate::models::User;
use crate::on;

/// GoTrue's `one_time_token_type`s, each with the users column that holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenType {
    ConfirmationToken,
    RecoveryToken,
    EmailChangeTokenNew,
    EmailChangeTokenCurrent,
    ReauthenticationToken,
    PhoneChangeToken,
}

impl TokenType {
    pub const ALL: [TokenType; 6] = [
        TokenType::ConfirmationToken,
        TokenType::RecoveryToken,
        TokenType::EmailChangeTokenNew,
        TokenType::EmailChangeTokenCurrent,
        TokenType::ReauthenticationToken,
        TokenType::PhoneChangeToken,
    ];

    pub fn name(self) -> &'static str {
        match self {
            TokenType::ConfirmationToken => "confirmation_token",
            TokenType::RecoveryToken => "recovery_token",
            TokenType::EmailChangeTokenNew => "email_change_token_new",
            TokenType::EmailChangeTokenCurrent => "email_change_token_current",
            TokenType::ReauthenticationToken => "reauthentication_token",
            TokenType::PhoneChangeToken => "phone_change_token",
        }
    }

    pub fn from_name(s: &str) -> Option<TokenType> {
        Self::ALL.into_iter().find(|t| t.name() == s)
    }

    /// When the token of this type was sent, per the user row.
    pub fn sent_at(self, u: &User) -> Option<DateTime<Utc>> {
        match self {
            TokenType::ConfirmationToken => u.confirmation_sent_at,
            TokenType::RecoveryToken => u.recovery_sent_at,
            TokenType::EmailChangeTokenNew | TokenType::EmailChangeTokenCurrent => {
                u.email_change_sent_at
            }
            TokenType::ReauthenticationToken => u.reauthentication_sent_at,
            TokenType::PhoneChangeToken => u.phone_change_sent_at,
        }
    }
}

/// One statement per token type, written out: column names cannot be bound.
macro_rules! per_type {
    ($tt:expr, |$col:ident, $sent:ident| $sql:expr) => {
        match $tt {
            TokenType::ConfirmationToken => {
                let ($col, $sent) = ("confirmation_token", "confirmation_sent_at");
                $sql
            }
            TokenType::RecoveryToken => {
                let ($col, $sent) = ("recovery_token", "recovery_sent_at");
                $sql
            }
            TokenType::EmailChangeTokenNew => {
                let ($col, $sent) = ("email_change_token_new", "email_change_sent_at");
                $sql
            }
            TokenType::EmailChangeTokenCurrent => {
                let ($col, $sent) = ("email_change_token_current", "email_change_sent_at");
                $sql
            }
            TokenType::ReauthenticationToken => {
                let ($col, $sent) = ("reauthentication_token", "reauthentication_sent_at");
                $sql
            }
            TokenType::PhoneChangeToken => {
                let ($col, $sent) = ("phone_change_token", "phone_change_sent_at");
                $sql
            }
        }
    };
}

/// Which global sending budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    Email,
    Sms,
}

/// A PKCE flow waiting for its code exchange.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FlowState {
    pub id: Uuid,
    pub user_id: Option<Uuid>,
    pub auth_code: Option<String>,
    pub code_challenge_method: Option<String>,
    pub code_challenge: Option<String>,
    pub authentication_method: String,
    pub created_at: Option<DateTime<Utc>>,
    pub auth_code_issued_at: Option<DateTime<Utc>>,
    pub provider_type: String,
    pub provider_access_token: Option<String>,
    pub provider_refresh_token: Option<String>,
}

impl Tx {
    /// The user row, locked for the rest of the transaction on PostgreSQL
    /// (sends to one user are serialized across processes).
    pub async fn lock_user(&mut self, id: Uuid) -> Result<Option<User>, sqlx::Error> {
        count();
        on!(tx self, c, d => sqlx::query_as(concat!("SELECT ", user_cols!(), " FROM users WHERE id = $1", d!(for_update)))
            .bind(id).fetch_optional(&mut *c).await)
    }

    /// Stores a token: the users column and its `*_sent_at`, and the
    /// `one_time_tokens` row of that type (replacing the previous one).
    pub async fn set_one_time_token(
        &mut self,
        user_id: Uuid,
        tt: TokenType,
        hash: &str,
        relates_to: &str,
        now: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        self.touch(user_id);
        count();
        per_type!(tt, |col, sent| {
            let sql =
                format!("UPDATE users SET {col} = $2, {sent} = $3, updated_at = $3 WHERE id = $1");
            on!(tx self, c => sqlx::query(sqlx::AssertSqlSafe(sql.clone())).bind(user_id).bind(hash).bind(now).execute(&mut *c).await.map(drop))?;
        });
        count();
        self.delete_token_row(user_id, tt).await?;
        count();
        let naive = now.naive_utc();
        on!(tx self, c, d => sqlx::query(concat!(
            "INSERT INTO one_time_tokens (id, user_id, token_type, token_hash, relates_to, created_at, updated_at) \
             VALUES ($1, $2, $3", d!(cast "auth.one_time_token_type"), ", $4, $5, $6, $6)"))
            .bind(Uuid::new_v4()).bind(user_id).bind(tt.name()).bind(hash).bind(relates_to).bind(naive)
            .execute(&mut *c).await.map(drop))
    }

    pub async fn set_invited(
        &mut self,
        user_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        self.touch(user_id);
        count();
        on!(tx self, c => sqlx::query("UPDATE users SET invited_at = $2 WHERE id = $1").bind(user_id).bind(now).execute(&mut *c).await.map(drop))
    }

    /// Takes the one-time token with this hash and one of these types, if
    /// any (email tokens only: a phone code is typed with its number, never
    /// presented as a link's hash, whose hash anyone who knows the number
    /// could compute): the row is deleted in the same statement, so of two concurrent
    /// verifications only one gets it.
    pub async fn take_token_hash(
        &mut self,
        hash: &str,
        types: &[TokenType],
    ) -> Result<Option<(Uuid, TokenType)>, sqlx::Error> {
        count();
        let names: Vec<&str> = types.iter().map(|t| t.name()).collect();
        let names = names.join(",");
        let found: Option<(Uuid, String)> = on!(tx self, c, d => sqlx::query_as(concat!(
            "DELETE FROM one_time_tokens WHERE token_hash = $1 AND ", d!(in_list "token_type", "$2"),
            " AND relates_to LIKE '%@%' RETURNING user_id, token_type", d!(cast "text")))
            .bind(hash).bind(&names).fetch_optional(&mut *c).await)?;
        Ok(found.and_then(|(user, tt)| TokenType::from_name(&tt).map(|t| (user, t))))
    }

    /// Starts an email change to `new_email` (nothing confirmed yet).
    pub async fn set_email_change(
        &mut self,
        user_id: Uuid,
        new_email: &str,
        now: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        self.touch(user_id);
        count();
        on!(tx self, c => sqlx::query("UPDATE users SET email_change = $2, email_change_confirm_status = 0, updated_at = $3 WHERE id = $1")
            .bind(user_id).bind(new_email).bind(now).execute(&mut *c).await.map(drop))
    }

    /// How many of an email change's confirmations arrived (0 or 1).
    pub async fn email_change_status(&mut self, user_id: Uuid) -> Result<i64, sqlx::Error> {
        count();
        on!(tx self, c => sqlx::query_scalar::<_, Option<i16>>("SELECT email_change_confirm_status FROM users WHERE id = $1")
            .bind(user_id).fetch_one(&mut *c).await.map(|v| i64::from(v.unwrap_or(0))))
    }

    pub async fn set_email_change_status(
        &mut self,
        user_id: Uuid,
        status: i16,
    ) -> Result<(), sqlx::Error> {
        self.touch(user_id);
        count();
        on!(tx self, c => sqlx::query("UPDATE users SET email_change_confirm_status = $2 WHERE id = $1")
            .bind(user_id).bind(status).execute(&mut *c).await.map(drop))
    }

    /// Completes an email change: the pending address becomes the email
    /// (confirmed), every trace of the change is cleared.
    pub async fn apply_email_change(
        &mut self,
        user_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        self.touch(user_id);
        count();
        on!(tx self, c => sqlx::query(
            "UPDATE users SET email = email_change, email_change = '', email_change_token_new = '', email_change_token_current = '', \
             email_change_confirm_status = 0, email_confirmed_at = coalesce(email_confirmed_at, $2), is_anonymous = false, updated_at = $2 \
             WHERE id = $1 AND email_change <> ''")
            .bind(user_id).bind(now).execute(&mut *c).await.map(drop))
    }

    /// Empties a token column.
    pub async fn clear_token_column(
        &mut self,
        user_id: Uuid,
        tt: TokenType,
    ) -> Result<(), sqlx::Error> {
        count();
        per_type!(tt, |col, _sent| {
            let sql = format!("UPDATE users SET {col} = '' WHERE id = $1");
            on!(tx self, c => sqlx::query(sqlx::AssertSqlSafe(sql.clone())).bind(user_id).execute(&mut *c).await.map(drop))
        })
    }

    /// Clears a token column if it still holds `expected` (an OTP typed into
    /// a form): one statement, so a code is accepted once.
    pub async fn take_token_column(
        &mut self,
        user_id: Uuid,
        tt: TokenType,
        expected: &str,
    ) -> Result<bool, sqlx::Error> {
        count();
        per_type!(tt, |col, _sent| {
            let sql = format!("UPDATE users SET {col} = '' WHERE id = $1 AND {col} = $2");
            on!(tx self, c => sqlx::query(sqlx::AssertSqlSafe(sql.clone())).bind(user_id).bind(expected).execute(&mut *c).await.map(|r| r.rows_affected() == 1))
        })
    }

    /// The users column value of a token type.
    pub async fn token_column(
        &mut self,
        user_id: Uuid,
        tt: TokenType,
    ) -> Result<Option<String>, sqlx::Error> {
        count();
        per_type!(tt, |col, _sent| {
            let sql = format!("SELECT {col} FROM users WHERE id = $1");
            on!(tx self, c => sqlx::query_scalar::<_, Option<String>>(sqlx::AssertSqlSafe(sql.clone())).bind(user_id).fetch_optional(&mut *c).await.map(Option::flatten))
        })
    }

    /// Counts one wrong code against the user's token of this type and
    /// returns the count so far (one statement, so concurrent guesses all count).
    pub async fn count_wrong_guess(
        &mut self,
        user_id: Uuid,
        tt: TokenType,
    ) -> Result<i64, sqlx::Error> {
        count();
        on!(tx self, c => sqlx::query_scalar::<_, i64>(
            "INSERT INTO castellan_otp_guesses (user_id, token_type, failures) VALUES ($1, $2, 1) \
             ON CONFLICT (user_id, token_type) DO UPDATE SET failures = castellan_otp_guesses.failures + 1 \
             RETURNING CAST(failures AS BIGINT)")
            .bind(user_id).bind(tt.name()).fetch_one(&mut *c).await)
    }

    /// Forgets the wrong guesses against a token type (a new token was issued).
    pub async fn forget_wrong_guesses(
        &mut self,
        user_id: Uuid,
        tt: TokenType,
    ) -> Result<(), sqlx::Error> {
        count();
        on!(tx self, c => sqlx::query("DELETE FROM castellan_otp_guesses WHERE user_id = $1 AND token_type = $2")
            .bind(user_id).bind(tt.name()).execute(&mut *c).await.map(drop))
    }

    /// Voids the user's outstanding token of this type: column and row.
    pub async fn void_token(&mut self, user_id: Uuid, tt: TokenType) -> Result<(), sqlx::Error> {
        self.clear_token_column(user_id, tt).await?;
        self.delete_token_row(user_id, tt).await
    }

    /// Deletes the `one_time_tokens` row of this user and type, if any.
    async fn delete_token_row(&mut self, user_id: Uuid, tt: TokenType) -> Result<(), sqlx::Error> {
        count();
        on!(tx self, c, d => sqlx::query(concat!(
            "DELETE FROM one_time_tokens WHERE user_id = $1 AND token_type = $2", d!(cast "auth.one_time_token_type")))
            .bind(user_id).bind(tt.name()).execute(&mut *c).await.map(drop))
    }

    /// Confirmation side effects clear every pending one-time token of the user.
    pub async fn clear_one_time_tokens(&mut self, user_id: Uuid) -> Result<(), sqlx::Error> {
        count();
        on!(tx self, c => sqlx::query("DELETE FROM one_time_tokens WHERE user_id = $1").bind(user_id).execute(&mut *c).await.map(drop))?;
        count();
        on!(tx self, c => sqlx::query("UPDATE users SET confirmation_token = '', recovery_token = '' WHERE id = $1")
            .bind(user_id).execute(&mut *c).await.map(drop))
    }

    /// Marks the user's email identities verified.
    pub async fn verify_email_identities(
        &mut self,
        user_id: Uuid,
        email: &str,
        now: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        self.touch(user_id);
        count();
        on!(tx self, c, d => sqlx::query(concat!(
            "UPDATE identities SET identity_data = ", d!(json_true "identity_data", "email_verified"),
            ", updated_at = $3 WHERE user_id = $1 AND lower(", d!(json_text "identity_data", "email"), ") = $2"))
            .bind(user_id).bind(email).bind(now).execute(&mut *c).await.map(drop))
    }

    /// Draws up to `want` messages from a global budget (a fixed window of
    /// `events` per `per`, shared by every process on this database): how
    /// many it got (0 when spent) and when the window ends.
    pub async fn take_budget(
        &mut self,
        budget: Budget,
        events: u32,
        per: std::time::Duration,
        now: DateTime<Utc>,
        want: u32,
    ) -> Result<(u32, DateTime<Utc>), sqlx::Error> {
        count();
        macro_rules! read {
            ($table:literal) => {
                on!(tx self, c, d => sqlx::query_as(concat!(
                    "SELECT window_start, sent", d!(cast "bigint"), " FROM ", $table, " WHERE id = 1", d!(for_update)))
                    .fetch_one(&mut *c).await)?
            };
        }
        let row: (DateTime<Utc>, i64) = match budget {
            Budget::Email => read!("castellan_email_budget"),
            Budget::Sms => read!("castellan_sms_budget"),
        };
        let per = chrono::Duration::from_std(per).unwrap_or(chrono::Duration::hours(1));
        let (start, sent) = if now >= row.0 + per {
            (now, 0)
        } else {
            (row.0, row.1)
        };
        let granted = (i64::from(events) - sent).clamp(0, i64::from(want)) as u32;
        if granted == 0 {
            return Ok((0, start + per));
        }
        count();
        let sent = (sent + i64::from(granted)) as i32;
        match budget {
            Budget::Email => {
                on!(tx self, c => sqlx::query("UPDATE castellan_email_budget SET window_start = $1, sent = $2 WHERE id = 1")
                .bind(start).bind(sent).execute(&mut *c).await.map(drop))?
            }
            Budget::Sms => {
                on!(tx self, c => sqlx::query("UPDATE castellan_sms_budget SET window_start = $1, sent = $2 WHERE id = 1")
                .bind(start).bind(sent).execute(&mut *c).await.map(drop))?
            }
        }
        Ok((granted, start + per))
    }

    /// Takes back a token whose message the provider refused, as if it had
    /// never been issued: the column emptied and its send time restored (so
    /// the user may ask again at once), when it still holds `hash`.
    pub async fn unsend(
        &mut self,
        user_id: Uuid,
        tt: TokenType,
        hash: &str,
        sent_before: Option<DateTime<Utc>>,
    ) -> Result<bool, sqlx::Error> {
        self.touch(user_id);
        count();
        let taken = per_type!(tt, |col, sent| {
            let sql =
                format!("UPDATE users SET {col} = '', {sent} = $3 WHERE id = $1 AND {col} = $2");
            on!(tx self, c => sqlx::query(sqlx::AssertSqlSafe(sql.clone())).bind(user_id).bind(hash).bind(sent_before)
                .execute(&mut *c).await.map(|r| r.rows_affected() == 1))?
        });
        if taken {
            self.void_token(user_id, tt).await?;
        }
        Ok(taken)
    }

    /// Records the number a pending phone change goes to.
    pub async fn set_phone_change(
        &mut self,
        user_id: Uuid,
        phone: &str,
        now: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        self.touch(user_id);
        count();
        on!(tx self, c => sqlx::query("UPDATE users SET phone_change = $2, updated_at = $3 WHERE id = $1")
            .bind(user_id).bind(phone).bind(now).execute(&mut *c).await.map(drop))
    }

    /// Moves a confirmed phone change into place; false when none was pending.
    pub async fn apply_phone_change(
        &mut self,
        user_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<bool, sqlx::Error> {
        self.touch(user_id);
        count();
        on!(tx self, c => sqlx::query(
            "UPDATE users SET phone = phone_change, phone_change = '', phone_change_token = '', \
             phone_confirmed_at = $2, is_anonymous = false, updated_at = $2 \
             WHERE id = $1 AND phone_change <> ''")
            .bind(user_id).bind(now).execute(&mut *c).await.map(|r| r.rows_affected() == 1))
    }

    pub async fn insert_flow_state(
        &mut self,
        user_id: Uuid,
        method: &str,
        challenge: &str,
        challenge_method: &str,
        now: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        count();
        let code = Uuid::new_v4().to_string();
        on!(tx self, c, d => sqlx::query(concat!(
            "INSERT INTO flow_state (id, user_id, auth_code, code_challenge_method, code_challenge, provider_type, \
             authentication_method, created_at, updated_at) VALUES ($1, $2, $3, $4", d!(cast "auth.code_challenge_method"),
            ", $5, 'email', $6, $7, $7)"))
            .bind(Uuid::new_v4()).bind(user_id).bind(code).bind(challenge_method).bind(challenge).bind(method).bind(now)
            .execute(&mut *c).await.map(drop))
    }

    /// Issues the code of the newest flow of (user, method): its `auth_code`.
    pub async fn issue_flow_code(
        &mut self,
        user_id: Uuid,
        method: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<String>, sqlx::Error> {
        count();
        on!(tx self, c => sqlx::query_scalar::<_, Option<String>>(
            "UPDATE flow_state SET auth_code_issued_at = $3, updated_at = $3 WHERE id = \
             (SELECT id FROM flow_state WHERE user_id = $1 AND authentication_method = $2 ORDER BY created_at DESC LIMIT 1) RETURNING auth_code")
            .bind(user_id).bind(method).bind(now).fetch_optional(&mut *c).await.map(Option::flatten))
    }

    /// Takes the flow state of an auth code (deleting it, so a code is exchanged once).
    pub async fn take_flow_state(
        &mut self,
        auth_code: &str,
    ) -> Result<Option<FlowState>, sqlx::Error> {
        count();
        on!(tx self, c, d => sqlx::query_as(concat!(
            "DELETE FROM flow_state WHERE auth_code = $1 RETURNING id, user_id, auth_code, code_challenge_method",
            d!(cast "text"), " AS code_challenge_method, code_challenge, authentication_method, created_at, \
             auth_code_issued_at, provider_type, provider_access_token, provider_refresh_token"))
            .bind(auth_code).fetch_optional(&mut *c).await)
    }
}

impl super::Store {
    pub async fn session_created_at(&self, id: Uuid) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        count();
        on!(pool &self.pool, p => sqlx::query_scalar::<_, Option<DateTime<Utc>>>("SELECT created_at FROM sessions WHERE id = $1")
            .bind(id).fetch_optional(p).await.map(Option::flatten))
    }

    /// The users holding a one-time token of these types sent to this
    /// address (64 at most): who a wrong change code counts against.
    pub async fn token_holders(
        &self,
        relates_to: &str,
        types: &[TokenType],
    ) -> Result<Vec<Uuid>, sqlx::Error> {
        count();
        let names: Vec<&str> = types.iter().map(|t| t.name()).collect();
        let names = names.join(",");
        on!(pool &self.pool, p, d => sqlx::query_scalar(concat!(
            "SELECT DISTINCT user_id FROM one_time_tokens WHERE relates_to = $1 AND ",
            d!(in_list "token_type", "$2"), " LIMIT 64"))
            .bind(relates_to).bind(&names).fetch_all(p).await)
    }

    /// Whose one-time token this hash is (for routing a verification).
    pub async fn token_owner(&self, hash: &str) -> Result<Option<Uuid>, sqlx::Error> {
        count();
        on!(pool &self.pool, p => sqlx::query_scalar("SELECT user_id FROM one_time_tokens WHERE token_hash = $1 LIMIT 1")
            .bind(hash).fetch_optional(p).await)
    }
}
