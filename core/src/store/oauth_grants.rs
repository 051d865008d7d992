//! What castellan's OAuth 2.1 server remembers between a client's requests:
//! GoTrue's `oauth_authorizations` (a request from `/oauth/authorize` until
//! its code is exchanged; the code kept as its SHA-256, and the session its
//! exchange started) and `oauth_consents` (what a user let a client see).

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::queries::count;
use super::{Store, Tx};
use crate::on;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Authorization {
    pub id: Uuid,
    /// The opaque id the consent page is given.
    pub authorization_id: String,
    pub client_id: Uuid,
    /// The user who first opened the request (none before).
    pub user_id: Option<Uuid>,
    pub redirect_uri: String,
    pub scope: String,
    pub state: Option<String>,
    pub resource: Option<String>,
    pub code_challenge: Option<String>,
    /// `s256` or `plain`.
    pub code_challenge_method: Option<String>,
    /// `pending`, `approved`, `denied` or `expired`.
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub nonce: Option<String>,
    /// When the approving user last proved who they are (the ID token's `auth_time`).
    pub castellan_auth_time: Option<DateTime<Utc>>,
    /// The session the code's exchange started: set once, so a second
    /// exchange is known for a replay.
    pub castellan_session_id: Option<Uuid>,
}

/// An active consent with the client it was given to.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Grant {
    pub client_id: Uuid,
    pub scopes: String,
    pub granted_at: DateTime<Utc>,
    pub client_name: Option<String>,
    pub client_uri: Option<String>,
    pub logo_uri: Option<String>,
}

macro_rules! cols {
    ($d:ident) => {
        concat!(
            "id, authorization_id, client_id, user_id, redirect_uri, scope, state, resource, code_challenge, \
             code_challenge_method", $d!(cast "text"), " AS code_challenge_method, status",
            $d!(cast "text"), " AS status, created_at, expires_at, nonce, castellan_auth_time, castellan_session_id"
        )
    };
}

impl Store {
    /// The request an authorization code (its hash) was issued for.
    pub async fn oauth_authorization_by_code(
        &self,
        code_hash: &str,
    ) -> Result<Option<Authorization>, sqlx::Error> {
        count();
        on!(pool &self.pool, p, d => sqlx::query_as(concat!("SELECT ", cols!(d),
            " FROM oauth_authorizations WHERE authorization_code = $1"))
            .bind(code_hash).fetch_optional(p).await)
    }

    /// The user's active consents to clients that still exist, newest first.
    pub async fn oauth_grants(&self, user: Uuid) -> Result<Vec<Grant>, sqlx::Error> {
        count();
        on!(pool &self.pool, p => sqlx::query_as(
            "SELECT c.client_id, c.scopes, c.granted_at, o.client_name, o.client_uri, o.logo_uri \
             FROM oauth_consents c JOIN oauth_clients o ON o.id = c.client_id \
             WHERE c.user_id = $1 AND c.revoked_at IS NULL AND o.deleted_at IS NULL \
             ORDER BY c.granted_at DESC")
            .bind(user).fetch_all(p).await)
    }

    /// When a session's user last proved who they are (its latest method).
    pub async fn session_auth_time(
        &self,
        session: Uuid,
    ) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        count();
        on!(pool &self.pool, p => sqlx::query_scalar(
            "SELECT max(updated_at) FROM mfa_amr_claims WHERE session_id = $1")
            .bind(session).fetch_one(p).await)
    }
}

impl Tx {
    pub async fn insert_oauth_authorization(
        &mut self,
        a: &Authorization,
    ) -> Result<(), sqlx::Error> {
        count();
        on!(tx self, c, d => sqlx::query(concat!(
            "INSERT INTO oauth_authorizations (id, authorization_id, client_id, redirect_uri, scope, state, resource, \
             code_challenge, code_challenge_method, status, created_at, expires_at, nonce) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9", d!(cast "auth.code_challenge_method"),
            ", 'pending', $10, $11, $12)"))
            .bind(a.id).bind(&a.authorization_id).bind(a.client_id).bind(&a.redirect_uri).bind(&a.scope)
            .bind(&a.state).bind(&a.resource).bind(&a.code_challenge).bind(&a.code_challenge_method)
            .bind(a.created_at).bind(a.expires_at).bind(&a.nonce)
            .execute(&mut *c).await.map(drop))
    }

    /// A request by the id the consent page holds, locked for the rest of
    /// the transaction: two answers to one request take turns.
    pub async fn oauth_authorization_for_update(
        &mut self,
        authorization_id: &str,
    ) -> Result<Option<Authorization>, sqlx::Error> {
        count();
        on!(tx self, c, d => sqlx::query_as(concat!("SELECT ", cols!(d),
            " FROM oauth_authorizations WHERE authorization_id = $1", d!(for_update)))
            .bind(authorization_id).fetch_optional(&mut *c).await)
    }

    pub async fn set_oauth_authorization_user(
        &mut self,
        id: Uuid,
        user: Uuid,
    ) -> Result<(), sqlx::Error> {
        count();
        on!(tx self, c => sqlx::query("UPDATE oauth_authorizations SET user_id = $2 WHERE id = $1")
            .bind(id).bind(user).execute(&mut *c).await.map(drop))
    }

    /// Approves a request: its code (hash) and the user's authentication time.
    pub async fn approve_oauth_authorization(
        &mut self,
        id: Uuid,
        code_hash: &str,
        auth_time: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        count();
        on!(tx self, c => sqlx::query(
            "UPDATE oauth_authorizations SET status = 'approved', authorization_code = $2, \
             castellan_auth_time = $3, approved_at = $4 WHERE id = $1")
            .bind(id).bind(code_hash).bind(auth_time).bind(now).execute(&mut *c).await.map(drop))
    }

    /// Ends a request without a code: the user said no.
    pub async fn deny_oauth_authorization(&mut self, id: Uuid) -> Result<(), sqlx::Error> {
        count();
        on!(tx self, c => sqlx::query("UPDATE oauth_authorizations SET status = 'denied' WHERE id = $1")
            .bind(id).execute(&mut *c).await.map(drop))
    }

    /// Binds an approved code to the session its exchange starts, if no
    /// exchange did before (false: someone else's exchange won).
    pub async fn claim_oauth_code(&mut self, id: Uuid, session: Uuid) -> Result<bool, sqlx::Error> {
        count();
        on!(tx self, c => sqlx::query(
            "UPDATE oauth_authorizations SET castellan_session_id = $2 \
             WHERE id = $1 AND status = 'approved' AND castellan_session_id IS NULL")
            .bind(id).bind(session).execute(&mut *c).await.map(|r| r.rows_affected() == 1))
    }

    /// The scopes of the user's active consent to the client.
    pub async fn active_oauth_consent(
        &mut self,
        user: Uuid,
        client: Uuid,
    ) -> Result<Option<String>, sqlx::Error> {
        count();
        on!(tx self, c => sqlx::query_scalar(
            "SELECT scopes FROM oauth_consents WHERE user_id = $1 AND client_id = $2 AND revoked_at IS NULL")
            .bind(user).bind(client).fetch_optional(&mut *c).await)
    }

    /// Records the user's consent to `scopes` (a revoked one is given again).
    pub async fn upsert_oauth_consent(
        &mut self,
        user: Uuid,
        client: Uuid,
        scopes: &str,
        now: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        count();
        on!(tx self, c => sqlx::query(
            "INSERT INTO oauth_consents (id, user_id, client_id, scopes, granted_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (user_id, client_id) DO UPDATE SET scopes = excluded.scopes, \
             granted_at = excluded.granted_at, revoked_at = NULL")
            .bind(Uuid::new_v4()).bind(user).bind(client).bind(scopes).bind(now)
            .execute(&mut *c).await.map(drop))
    }

    /// Revokes the user's consent to the client; false when none was active.
    pub async fn revoke_oauth_consent(
        &mut self,
        user: Uuid,
        client: Uuid,
        now: DateTime<Utc>,
    ) -> Result<bool, sqlx::Error> {
        count();
        on!(tx self, c => sqlx::query(
            "UPDATE oauth_consents SET revoked_at = $3 WHERE user_id = $1 AND client_id = $2 AND revoked_at IS NULL")
            .bind(user).bind(client).bind(now).execute(&mut *c).await.map(|r| r.rows_affected() == 1))
    }

    /// Drops the requests whose codes were not exchanged: the user's for the
    /// client, or (`None`) everyone's. A request an exchange is claiming is
    /// locked by it, so this waits for that exchange and leaves its row.
    pub async fn drop_open_oauth_authorizations(
        &mut self,
        user: Option<Uuid>,
        client: Uuid,
    ) -> Result<(), sqlx::Error> {
        count();
        on!(tx self, c, d => sqlx::query(concat!(
            "DELETE FROM oauth_authorizations WHERE client_id = $1 AND castellan_session_id IS NULL \
             AND ($2", d!(cast "uuid"), " IS NULL OR user_id = $2)"))
            .bind(client).bind(user).execute(&mut *c).await.map(drop))
    }

    /// A deleted client's grants: its open requests are dropped (first, so
    /// an exchange under way finishes and its session is seen), every
    /// session it started ends (each user's cache hears of it at commit),
    /// every consent is revoked. How many sessions ended.
    pub async fn end_oauth_client_grants(
        &mut self,
        client: Uuid,
        now: DateTime<Utc>,
    ) -> Result<u64, sqlx::Error> {
        self.drop_open_oauth_authorizations(None, client).await?;
        count();
        let users: Vec<Uuid> = on!(tx self, c => sqlx::query_scalar(
            "DELETE FROM sessions WHERE oauth_client_id = $1 RETURNING user_id")
            .bind(client).fetch_all(&mut *c).await)?;
        for u in &users {
            self.touch(*u);
        }
        count();
        on!(tx self, c => sqlx::query(
            "UPDATE oauth_consents SET revoked_at = $2 WHERE client_id = $1 AND revoked_at IS NULL")
            .bind(client).bind(now).execute(&mut *c).await.map(drop))?;
        Ok(users.len() as u64)
    }
}
