//! External sign-in rows: the flow state an OAuth round trip carries as
//! its `state`, the code verifier of a provider that wants PKCE, and the
//! identity lookups the linking decision makes.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;
use uuid::Uuid;

use super::Tx;
use super::queries::count;
use crate::models::{Identity, User};
use crate::on;

/// A flow state of an OAuth round trip, as the callback reads it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OAuthFlow {
    pub id: Uuid,
    pub provider_type: String,
    pub user_id: Option<Uuid>,
    pub code_challenge: Option<String>,
    pub referrer: Option<String>,
    pub linking_target_id: Option<Uuid>,
    /// An invitation accepted through the provider (the link's token hash).
    pub invite_token: Option<String>,
    pub email_optional: bool,
    pub oauth_client_state_id: Option<Uuid>,
    pub created_at: Option<DateTime<Utc>>,
}

impl OAuthFlow {
    /// The client asked for a code to exchange (PKCE), not tokens in the URL.
    pub fn pkce(&self) -> bool {
        self.code_challenge
            .as_deref()
            .is_some_and(|c| !c.is_empty())
    }
}

/// A new OAuth round trip.
pub struct NewOAuthFlow<'a> {
    pub id: Uuid,
    pub provider: &'a str,
    /// The client's PKCE challenge and method, for a PKCE flow.
    pub pkce: Option<(&'a str, &'a str)>,
    pub referrer: &'a str,
    pub linking_target: Option<Uuid>,
    pub invite_token: Option<&'a str>,
    pub email_optional: bool,
    pub client_state: Option<Uuid>,
    pub now: DateTime<Utc>,
}

macro_rules! flow_cols {
    () => {
        "id, provider_type, user_id, code_challenge, referrer, linking_target_id, invite_token, email_optional, oauth_client_state_id, created_at"
    };
}

impl Tx {
    pub async fn insert_oauth_flow(&mut self, f: &NewOAuthFlow<'_>) -> Result<(), sqlx::Error> {
        count();
        let (challenge, method) = f.pkce.unzip();
        on!(tx self, c, d => sqlx::query(concat!(
            "INSERT INTO flow_state (id, provider_type, code_challenge, code_challenge_method, authentication_method, \
             referrer, linking_target_id, email_optional, oauth_client_state_id, created_at, updated_at, invite_token) \
             VALUES ($1, $2, $3, $4", d!(cast "auth.code_challenge_method"), ", 'oauth', $5, $6, $7, $8, $9, $9, $10)"))
            .bind(f.id).bind(f.provider).bind(challenge).bind(method).bind(f.referrer)
            .bind(f.linking_target).bind(f.email_optional).bind(f.client_state).bind(f.now).bind(f.invite_token)
            .execute(&mut *c).await.map(drop))
    }

    /// The OAuth flow state `id`, locked for the rest of the transaction.
    pub async fn oauth_flow(&mut self, id: Uuid) -> Result<Option<OAuthFlow>, sqlx::Error> {
        count();
        on!(tx self, c, d => sqlx::query_as(concat!("SELECT ", flow_cols!(),
            " FROM flow_state WHERE id = $1 AND authentication_method = 'oauth'", d!(for_update)))
            .bind(id).fetch_optional(&mut *c).await)
    }

    /// Ends a PKCE round trip: the user and the provider's tokens recorded,
    /// and a code issued for `/token?grant_type=pkce`. None when another
    /// callback already used this state.
    pub async fn finish_oauth_flow(
        &mut self,
        id: Uuid,
        user_id: Uuid,
        provider_tokens: (&str, &str),
        now: DateTime<Utc>,
    ) -> Result<Option<String>, sqlx::Error> {
        count();
        let code = Uuid::new_v4().to_string();
        on!(tx self, c => sqlx::query_scalar::<_, Option<String>>(
            "UPDATE flow_state SET user_id = $2, auth_code = $3, provider_access_token = $4, provider_refresh_token = $5, \
             auth_code_issued_at = $6, updated_at = $6 WHERE id = $1 AND user_id IS NULL RETURNING auth_code")
            .bind(id).bind(user_id).bind(&code).bind(provider_tokens.0).bind(provider_tokens.1).bind(now)
            .fetch_optional(&mut *c).await.map(Option::flatten))
    }

    /// Records a signed Web3 message (by its hash) as used until
    /// `expires_at`; false when it was used before.
    pub async fn spend_signed_message(
        &mut self,
        hash: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<bool, sqlx::Error> {
        count();
        on!(tx self, c => sqlx::query(
            "INSERT INTO castellan_web3_messages (id, expires_at) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING")
            .bind(hash).bind(expires_at).execute(&mut *c).await.map(|r| r.rows_affected() == 1))
    }

    pub async fn delete_flow_state(&mut self, id: Uuid) -> Result<bool, sqlx::Error> {
        count();
        on!(tx self, c => sqlx::query("DELETE FROM flow_state WHERE id = $1")
            .bind(id).execute(&mut *c).await.map(|r| r.rows_affected() == 1))
    }

    /// The code verifier kept for a provider that wants PKCE.
    pub async fn insert_client_state(
        &mut self,
        id: Uuid,
        provider: &str,
        verifier: &str,
        now: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        count();
        on!(tx self, c => sqlx::query(
            "INSERT INTO oauth_client_states (id, provider_type, code_verifier, created_at) VALUES ($1, $2, $3, $4)")
            .bind(id).bind(provider).bind(verifier).bind(now).execute(&mut *c).await.map(drop))
    }

    /// Takes (deletes) a kept code verifier: it serves one exchange.
    pub async fn take_client_state(&mut self, id: Uuid) -> Result<Option<String>, sqlx::Error> {
        count();
        on!(tx self, c => sqlx::query_scalar::<_, Option<String>>(
            "DELETE FROM oauth_client_states WHERE id = $1 RETURNING code_verifier")
            .bind(id).fetch_optional(&mut *c).await.map(Option::flatten))
    }

    /// The identity a provider knows by `provider_id`, if any.
    pub async fn identity_of(
        &mut self,
        provider: &str,
        provider_id: &str,
    ) -> Result<Option<Identity>, sqlx::Error> {
        count();
        on!(tx self, c => sqlx::query_as(concat!("SELECT ", identity_cols!(),
            " FROM identities WHERE provider = $1 AND provider_id = $2"))
            .bind(provider).bind(provider_id).fetch_optional(&mut *c).await)
    }

    /// Identities (any provider) whose verified email this is, and non-SSO
    /// users with it:
    /// what an external sign-in with a verified email may link to.
    pub async fn holders_of_email(
        &mut self,
        email: &str,
    ) -> Result<(Vec<Identity>, Vec<User>), sqlx::Error> {
        count();
        // Only identities whose provider verified the address.
        let ids: Vec<Identity> = on!(tx self, c, d => sqlx::query_as(concat!("SELECT ", identity_cols!(),
            " FROM identities WHERE email = $1 AND ", d!(json_is_true "identity_data", "email_verified")))
            .bind(email).fetch_all(&mut *c).await)?;
        count();
        let users: Vec<User> = on!(tx self, c => sqlx::query_as(concat!("SELECT ", user_cols!(),
            " FROM users WHERE lower(email) = $1 AND is_sso_user = false"))
            .bind(email).fetch_all(&mut *c).await)?;
        Ok((ids, users))
    }

    /// A returning identity's fresh profile.
    pub async fn refresh_identity(
        &mut self,
        identity: &Identity,
        data: &Value,
        now: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        self.touch(identity.user_id);
        count();
        on!(tx self, c => sqlx::query(
            "UPDATE identities SET identity_data = $2, last_sign_in_at = $3, updated_at = $3 WHERE id = $1")
            .bind(identity.id).bind(Json(data)).bind(now).execute(&mut *c).await.map(drop))
    }

    /// GoTrue's defence of an unconfirmed account claimed by a verified
    /// provider: its other identities go, and its password unless `keep`
    /// is an email or phone identity.
    pub async fn drop_other_identities(
        &mut self,
        user_id: Uuid,
        keep: Uuid,
        drop_password: bool,
    ) -> Result<(), sqlx::Error> {
        self.touch(user_id);
        count();
        on!(tx self, c => sqlx::query("DELETE FROM identities WHERE user_id = $1 AND id <> $2")
            .bind(user_id).bind(keep).execute(&mut *c).await.map(drop))?;
        if drop_password {
            count();
            on!(tx self, c => sqlx::query("UPDATE users SET encrypted_password = NULL WHERE id = $1")
                .bind(user_id).execute(&mut *c).await.map(drop))?;
        }
        Ok(())
    }

    /// A user's identities, oldest first.
    pub async fn identities_of_user(
        &mut self,
        user_id: Uuid,
    ) -> Result<Vec<Identity>, sqlx::Error> {
        count();
        on!(tx self, c => sqlx::query_as(concat!("SELECT ", identity_cols!(),
            " FROM identities WHERE user_id = $1 ORDER BY created_at, id"))
            .bind(user_id).fetch_all(&mut *c).await)
    }

    /// Removes one identity of a user; false when the user has no such identity.
    pub async fn delete_identity(&mut self, user_id: Uuid, id: Uuid) -> Result<bool, sqlx::Error> {
        self.touch(user_id);
        count();
        on!(tx self, c => sqlx::query("DELETE FROM identities WHERE id = $1 AND user_id = $2")
            .bind(id).bind(user_id).execute(&mut *c).await.map(|r| r.rows_affected() == 1))
    }

    /// A user's email as unlinking leaves it: `None` clears it; a confirmed
    /// address is confirmed now.
    pub async fn set_email_from_identity(
        &mut self,
        user_id: Uuid,
        email: Option<&str>,
        confirmed: bool,
        now: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        self.touch(user_id);
        count();
        let at = confirmed.then_some(now);
        on!(tx self, c => sqlx::query("UPDATE users SET email = $2, email_confirmed_at = $3, updated_at = $4 WHERE id = $1")
            .bind(user_id).bind(email).bind(at).bind(now).execute(&mut *c).await.map(drop))
    }

    /// Unlinking the phone identity: the number goes with it.
    pub async fn clear_phone(
        &mut self,
        user_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        self.touch(user_id);
        count();
        on!(tx self, c => sqlx::query("UPDATE users SET phone = NULL, phone_confirmed_at = NULL, updated_at = $2 WHERE id = $1")
            .bind(user_id).bind(now).execute(&mut *c).await.map(drop))
    }

    /// GoTrue's `UpdateAppMetaDataProviders`: `providers` is the user's
    /// identities' providers (oldest first), `provider` the oldest's.
    pub async fn sync_app_providers(&mut self, user_id: Uuid) -> Result<(), sqlx::Error> {
        self.touch(user_id);
        count();
        let providers: Vec<String> = on!(tx self, c => sqlx::query_scalar(
            "SELECT provider FROM identities WHERE user_id = $1 ORDER BY created_at, id")
            .bind(user_id).fetch_all(&mut *c).await)?;
        let mut distinct: Vec<String> = Vec::new();
        for p in providers {
            if !distinct.contains(&p) {
                distinct.push(p);
            }
        }
        let Some(user) = self.user_by_id(user_id).await? else {
            return Ok(());
        };
        let mut app = user.app_metadata();
        if let Some(first) = distinct.first() {
            app["provider"] = Value::String(first.clone());
        }
        app["providers"] = Value::from(distinct);
        count();
        on!(tx self, c => sqlx::query("UPDATE users SET raw_app_meta_data = $2 WHERE id = $1")
            .bind(user_id).bind(Json(&app)).execute(&mut *c).await.map(drop))
    }
}
