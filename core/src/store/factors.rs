//! Multi-factor authentication rows: GoTrue's `mfa_factors` and
//! `mfa_challenges`, the session's assurance level, and castellan's guard
//! of each factor (the last time step accepted, wrong codes in a row).

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::queries::count;
use super::{FactorRow, Tx};
use crate::on;

/// A factor with its secret (as stored: plain base32 or sealed).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Factor {
    pub id: Uuid,
    pub user_id: Uuid,
    pub friendly_name: Option<String>,
    pub factor_type: String,
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub secret: Option<String>,
    pub phone: Option<String>,
    pub last_challenged_at: Option<DateTime<Utc>>,
    /// A WebAuthn factor's credential, as the verifier keeps it (JSON).
    pub web_authn_credential: Option<String>,
}

impl Factor {
    pub fn verified(&self) -> bool {
        self.status == "verified"
    }

    /// The factor as GoTrue shows it (never the secret).
    pub fn row(&self) -> FactorRow {
        FactorRow {
            id: self.id,
            created_at: self.created_at,
            updated_at: self.updated_at,
            status: self.status.clone(),
            friendly_name: self.friendly_name.clone(),
            factor_type: self.factor_type.clone(),
            phone: self.phone.clone(),
            last_challenged_at: self.last_challenged_at,
        }
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Challenge {
    pub id: Uuid,
    pub factor_id: Uuid,
    pub created_at: DateTime<Utc>,
    pub verified_at: Option<DateTime<Utc>>,
    pub ip_address: String,
    /// A phone factor's code (as stored: plain or sealed).
    pub otp_code: Option<String>,
    /// A WebAuthn factor's ceremony state (JSON).
    pub web_authn_session_data: Option<String>,
}

/// castellan's per-factor state: the last step a code was accepted for,
/// and the wrong codes since, with the lockout they caused.
#[derive(Debug, Clone, Default, sqlx::FromRow)]
pub struct Guard {
    pub last_step: Option<i64>,
    pub failures: i64,
    pub locked_until: Option<DateTime<Utc>>,
}

macro_rules! cols {
    ($d:ident) => {
        concat!(
            "id, user_id, friendly_name, factor_type",
            $d!(cast "text"),
            " AS factor_type, status",
            $d!(cast "text"),
            " AS status, created_at, updated_at, secret, phone, last_challenged_at, web_authn_credential",
            $d!(cast "text"),
            " AS web_authn_credential"
        )
    };
}

impl Tx {
    /// GoTrue's purge before an enrollment: unverified factors never
    /// challenged and older than `cutoff`, of every user.
    pub async fn purge_stale_factors(&mut self, cutoff: DateTime<Utc>) -> Result<u64, sqlx::Error> {
        count();
        on!(tx self, c => sqlx::query(
            "DELETE FROM mfa_factors WHERE status <> 'verified' AND created_at < $1 \
             AND NOT EXISTS (SELECT 1 FROM mfa_challenges ch WHERE ch.factor_id = mfa_factors.id)")
            .bind(cutoff).execute(&mut *c).await.map(|r| r.rows_affected()))
    }

    /// Every factor of a user, oldest first.
    pub async fn user_factors(&mut self, user_id: Uuid) -> Result<Vec<Factor>, sqlx::Error> {
        count();
        on!(tx self, c, d => sqlx::query_as(concat!("SELECT ", cols!(d),
            " FROM mfa_factors WHERE user_id = $1 ORDER BY created_at, id"))
            .bind(user_id).fetch_all(&mut *c).await)
    }

    /// One factor of a user, locked for the rest of the transaction.
    pub async fn user_factor(
        &mut self,
        user_id: Uuid,
        factor_id: Uuid,
    ) -> Result<Option<Factor>, sqlx::Error> {
        count();
        on!(tx self, c, d => sqlx::query_as(concat!("SELECT ", cols!(d),
            " FROM mfa_factors WHERE user_id = $1 AND id = $2", d!(for_update)))
            .bind(user_id).bind(factor_id).fetch_optional(&mut *c).await)
    }

    pub async fn insert_factor(&mut self, f: &Factor) -> Result<(), sqlx::Error> {
        self.touch(f.user_id);
        count();
        on!(tx self, c, d => sqlx::query(concat!(
            "INSERT INTO mfa_factors (id, user_id, friendly_name, factor_type, status, created_at, updated_at, secret, phone) \
             VALUES ($1, $2, $3, $4", d!(cast "auth.factor_type"), ", $5", d!(cast "auth.factor_status"), ", $6, $6, $7, $8)"))
            .bind(f.id).bind(f.user_id).bind(&f.friendly_name).bind(&f.factor_type).bind(&f.status)
            .bind(f.created_at).bind(&f.secret).bind(&f.phone)
            .execute(&mut *c).await.map(drop))
    }

    /// A new challenge of a factor from `ip` (with the code a phone factor
    /// was sent, or a WebAuthn factor's ceremony state), and the factor's
    /// last challenge time.
    pub async fn insert_challenge(
        &mut self,
        factor: &Factor,
        id: Uuid,
        ip: &str,
        (otp_code, session_data): (Option<&str>, Option<&str>),
        now: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        self.touch(factor.user_id);
        count();
        on!(tx self, c, d => sqlx::query(concat!(
            "INSERT INTO mfa_challenges (id, factor_id, created_at, ip_address, otp_code, web_authn_session_data) VALUES ($1, $2, $3, $4",
            d!(cast "inet"), ", $5, $6", d!(cast "jsonb"), ")")).bind(id).bind(factor.id).bind(now).bind(ip).bind(otp_code).bind(session_data)
            .execute(&mut *c).await.map(drop))?;
        on!(tx self, c => sqlx::query("UPDATE mfa_factors SET last_challenged_at = $2 WHERE id = $1")
            .bind(factor.id).bind(now).execute(&mut *c).await.map(drop))
    }

    /// Puts a factor's last challenge time back (a challenge taken back).
    pub async fn set_last_challenged(
        &mut self,
        factor_id: Uuid,
        at: Option<DateTime<Utc>>,
    ) -> Result<(), sqlx::Error> {
        count();
        on!(tx self, c => sqlx::query("UPDATE mfa_factors SET last_challenged_at = $2 WHERE id = $1")
            .bind(factor_id).bind(at).execute(&mut *c).await.map(drop))
    }

    pub async fn challenge_of(
        &mut self,
        factor_id: Uuid,
        id: Uuid,
    ) -> Result<Option<Challenge>, sqlx::Error> {
        count();
        on!(tx self, c, d => sqlx::query_as(concat!(
            "SELECT id, factor_id, created_at, verified_at, ", d!(pg "host(ip_address) AS "),
            "ip_address, otp_code, web_authn_session_data", d!(cast "text"),
            " AS web_authn_session_data FROM mfa_challenges WHERE id = $1 AND factor_id = $2", d!(for_update))).bind(id).bind(factor_id).fetch_optional(&mut *c).await)
    }

    pub async fn delete_challenge(&mut self, id: Uuid) -> Result<(), sqlx::Error> {
        count();
        on!(tx self, c => sqlx::query("DELETE FROM mfa_challenges WHERE id = $1").bind(id).execute(&mut *c).await.map(drop))
    }

    /// A successful verification: the challenge is spent and the factor verified.
    pub async fn verified(
        &mut self,
        factor: &Factor,
        challenge: Uuid,
        now: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        self.touch(factor.user_id);
        count();
        on!(tx self, c => sqlx::query("UPDATE mfa_challenges SET verified_at = $2 WHERE id = $1")
            .bind(challenge).bind(now).execute(&mut *c).await.map(drop))?;
        if !factor.verified() {
            on!(tx self, c => sqlx::query("UPDATE mfa_factors SET status = 'verified', updated_at = $2 WHERE id = $1")
                .bind(factor.id).bind(now).execute(&mut *c).await.map(drop))?;
        }
        Ok(())
    }

    /// The user's other unverified factors of a type (GoTrue drops them once one verifies).
    pub async fn drop_unverified_factors(
        &mut self,
        user_id: Uuid,
        factor_type: &str,
    ) -> Result<u64, sqlx::Error> {
        self.touch(user_id);
        count();
        on!(tx self, c, d => sqlx::query(concat!(
            "DELETE FROM mfa_factors WHERE user_id = $1 AND status = 'unverified' AND factor_type = $2",
            d!(cast "auth.factor_type"))).bind(user_id).bind(factor_type).execute(&mut *c).await.map(|r| r.rows_affected()))
    }

    /// Deletes a factor; the sessions it raised go back to aal1.
    pub async fn delete_factor(&mut self, factor: &Factor) -> Result<(), sqlx::Error> {
        self.touch(factor.user_id);
        count();
        let method = match factor.factor_type.as_str() {
            "phone" => "mfa/phone",
            "webauthn" => "mfa/webauthn",
            other => other,
        };
        on!(tx self, c => sqlx::query("DELETE FROM mfa_amr_claims WHERE authentication_method = $2 \
             AND session_id IN (SELECT id FROM sessions WHERE factor_id = $1)")
            .bind(factor.id).bind(method).execute(&mut *c).await.map(drop))?;
        on!(tx self, c => sqlx::query("UPDATE sessions SET aal = 'aal1', factor_id = NULL WHERE user_id = $1 AND factor_id = $2")
            .bind(factor.user_id).bind(factor.id).execute(&mut *c).await.map(drop))?;
        on!(tx self, c => sqlx::query("DELETE FROM mfa_factors WHERE id = $1")
            .bind(factor.id).execute(&mut *c).await.map(drop))
    }

    /// A WebAuthn factor's credential (and its authenticator's AAGUID),
    /// after its registration or a sign-in that moved its counter.
    pub async fn set_webauthn_credential(
        &mut self,
        factor: &Factor,
        credential: &str,
        aaguid: Option<Uuid>,
        now: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        self.touch(factor.user_id);
        count();
        on!(tx self, c, d => sqlx::query(concat!(
            "UPDATE mfa_factors SET web_authn_credential = $2", d!(cast "jsonb"),
            ", web_authn_aaguid = coalesce($3, web_authn_aaguid), updated_at = $4 WHERE id = $1"))
            .bind(factor.id).bind(credential).bind(aaguid).bind(now).execute(&mut *c).await.map(drop))
    }

    pub async fn rename_factor(
        &mut self,
        factor: &Factor,
        name: &str,
        now: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        self.touch(factor.user_id);
        count();
        on!(tx self, c => sqlx::query("UPDATE mfa_factors SET friendly_name = $2, updated_at = $3 WHERE id = $1")
            .bind(factor.id).bind(name).bind(now).execute(&mut *c).await.map(drop))
    }

    /// The session's assurance level column (`aal1` when never set).
    pub async fn session_aal(&mut self, session_id: Uuid) -> Result<String, sqlx::Error> {
        count();
        let aal: Option<Option<String>> = on!(tx self, c, d => sqlx::query_scalar(concat!(
            "SELECT aal", d!(cast "text"), " FROM sessions WHERE id = $1")).bind(session_id).fetch_optional(&mut *c).await)?;
        Ok(aal.flatten().unwrap_or_else(|| "aal1".into()))
    }

    /// The session passed a second factor: aal2, bound to that factor; every
    /// other aal1 session of the user ends (GoTrue's rule).
    pub async fn raise_session(
        &mut self,
        user_id: Uuid,
        session_id: Uuid,
        factor_id: Uuid,
    ) -> Result<u64, sqlx::Error> {
        self.touch(user_id);
        count();
        on!(tx self, c => sqlx::query("UPDATE sessions SET aal = 'aal2', factor_id = $2 WHERE id = $1")
            .bind(session_id).bind(factor_id).execute(&mut *c).await.map(drop))?;
        on!(tx self, c => sqlx::query("DELETE FROM sessions WHERE user_id = $1 AND id <> $2 AND aal = 'aal1'")
            .bind(user_id).bind(session_id).execute(&mut *c).await.map(|r| r.rows_affected()))
    }

    /// A factor's guard, locked for the rest of the transaction (created on first use).
    pub async fn factor_guard(&mut self, factor_id: Uuid) -> Result<Guard, sqlx::Error> {
        count();
        on!(tx self, c => sqlx::query("INSERT INTO castellan_factor_guard (factor_id) VALUES ($1) ON CONFLICT (factor_id) DO NOTHING")
            .bind(factor_id).execute(&mut *c).await.map(drop))?;
        on!(tx self, c, d => sqlx::query_as(concat!(
            "SELECT last_step, failures", d!(cast "bigint"),
            " AS failures, locked_until FROM castellan_factor_guard WHERE factor_id = $1", d!(for_update))).bind(factor_id).fetch_one(&mut *c).await)
    }

    pub async fn set_factor_guard(
        &mut self,
        factor_id: Uuid,
        g: &Guard,
    ) -> Result<(), sqlx::Error> {
        count();
        on!(tx self, c => sqlx::query("UPDATE castellan_factor_guard SET last_step = $2, failures = $3, locked_until = $4 WHERE factor_id = $1")
            .bind(factor_id).bind(g.last_step).bind(g.failures as i32).bind(g.locked_until)
            .execute(&mut *c).await.map(drop))
    }
}
