//! Passkeys: GoTrue's `webauthn_credentials` (one row per credential, with
//! castellan's verifier state beside GoTrue's columns) and
//! `webauthn_challenges` (a ceremony's state between its two requests).

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::queries::count;
use super::{Store, Tx};
use crate::on;

/// A passkey as listed, and what a sign-in needs of it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PasskeyRow {
    pub id: Uuid,
    pub user_id: Uuid,
    pub friendly_name: String,
    pub sign_count: i64,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    /// The verifier's credential (JSON); `None` in a row GoTrue made.
    pub castellan_passkey: Option<String>,
}

/// A credential a registration proved, as GoTrue's columns hold it.
pub struct NewPasskey<'a> {
    pub id: Uuid,
    pub user_id: Uuid,
    pub credential_id: &'a [u8],
    /// The COSE key, as the authenticator sent it.
    pub public_key: &'a [u8],
    pub aaguid: Option<Uuid>,
    pub sign_count: i64,
    pub transports: &'a str,
    pub backup_eligible: bool,
    pub backed_up: bool,
    pub friendly_name: &'a str,
    pub passkey: &'a str,
}

/// What a ceremony's challenge is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ceremony {
    Registration,
    Authentication,
}

impl Ceremony {
    fn name(self) -> &'static str {
        match self {
            Ceremony::Registration => "registration",
            Ceremony::Authentication => "authentication",
        }
    }
}

macro_rules! cols {
    () => {
        "id, user_id, friendly_name, sign_count, created_at, last_used_at, castellan_passkey"
    };
}

impl Store {
    /// A user's passkeys, oldest first.
    pub async fn passkeys_of(&self, user_id: Uuid) -> Result<Vec<PasskeyRow>, sqlx::Error> {
        count();
        on!(pool &self.pool, p => sqlx::query_as(concat!("SELECT ", cols!(),
            " FROM webauthn_credentials WHERE user_id = $1 ORDER BY created_at, id"))
            .bind(user_id).fetch_all(p).await)
    }

    /// The credential ids of a user's passkeys that castellan can sign in
    /// with (a registration excludes them; one GoTrue made is not, so the
    /// same authenticator can register again).
    pub async fn passkey_credential_ids(&self, user_id: Uuid) -> Result<Vec<Vec<u8>>, sqlx::Error> {
        count();
        on!(pool &self.pool, p => sqlx::query_scalar(
            "SELECT credential_id FROM webauthn_credentials WHERE user_id = $1 AND castellan_passkey IS NOT NULL")
            .bind(user_id).fetch_all(p).await)
    }
}

impl Tx {
    pub async fn count_passkeys(&mut self, user_id: Uuid) -> Result<i64, sqlx::Error> {
        count();
        on!(tx self, c => sqlx::query_scalar("SELECT count(*) FROM webauthn_credentials WHERE user_id = $1")
            .bind(user_id).fetch_one(&mut *c).await)
    }

    /// Adds a passkey; false when its credential is registered already.
    pub async fn insert_passkey(
        &mut self,
        p: &NewPasskey<'_>,
        now: DateTime<Utc>,
    ) -> Result<bool, sqlx::Error> {
        count();
        on!(tx self, c, d => sqlx::query(concat!(
            "INSERT INTO webauthn_credentials (id, user_id, credential_id, public_key, attestation_type, aaguid, \
             sign_count, transports, backup_eligible, backed_up, friendly_name, created_at, updated_at, castellan_passkey) \
             VALUES ($1, $2, $3, $4, 'none', $5, $6, $7", d!(cast "jsonb"), ", $8, $9, $10, $11, $11, $12) \
             ON CONFLICT (credential_id) DO NOTHING"))
            .bind(p.id).bind(p.user_id).bind(p.credential_id).bind(p.public_key).bind(p.aaguid)
            .bind(p.sign_count).bind(p.transports).bind(p.backup_eligible).bind(p.backed_up)
            .bind(p.friendly_name).bind(now).bind(p.passkey)
            .execute(&mut *c).await.map(|r| r.rows_affected() == 1))
    }

    /// The passkey of a credential id, locked for the rest of the transaction.
    pub async fn passkey_by_credential(
        &mut self,
        credential_id: &[u8],
    ) -> Result<Option<PasskeyRow>, sqlx::Error> {
        count();
        on!(tx self, c, d => sqlx::query_as(concat!(
            "SELECT ", cols!(), " FROM webauthn_credentials WHERE credential_id = $1", d!(for_update)))
            .bind(credential_id).fetch_optional(&mut *c).await)
    }

    /// A sign-in's effect: the counter moves forward (or both stay zero, an
    /// authenticator without one) and the verifier's state follows. False
    /// when another sign-in moved it first: a counter that did not grow is
    /// a cloned authenticator's sign.
    pub async fn passkey_used(
        &mut self,
        id: Uuid,
        sign_count: i64,
        passkey: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, sqlx::Error> {
        count();
        on!(tx self, c => sqlx::query(
            "UPDATE webauthn_credentials SET sign_count = $2, castellan_passkey = $3, last_used_at = $4, updated_at = $4 \
             WHERE id = $1 AND (sign_count < $2 OR (sign_count = 0 AND $2 = 0))")
            .bind(id).bind(sign_count).bind(passkey).bind(now)
            .execute(&mut *c).await.map(|r| r.rows_affected() == 1))
    }

    /// Renames one of a user's passkeys; `None` when the user has no such passkey.
    pub async fn rename_passkey(
        &mut self,
        user_id: Uuid,
        id: Uuid,
        name: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<PasskeyRow>, sqlx::Error> {
        count();
        on!(tx self, c => sqlx::query_as(concat!(
            "UPDATE webauthn_credentials SET friendly_name = $3, updated_at = $4 \
             WHERE user_id = $1 AND id = $2 RETURNING ", cols!()))
            .bind(user_id).bind(id).bind(name).bind(now).fetch_optional(&mut *c).await)
    }

    /// Deletes one of a user's passkeys; false when the user has no such passkey.
    pub async fn delete_passkey(&mut self, user_id: Uuid, id: Uuid) -> Result<bool, sqlx::Error> {
        count();
        on!(tx self, c => sqlx::query("DELETE FROM webauthn_credentials WHERE user_id = $1 AND id = $2")
            .bind(user_id).bind(id).execute(&mut *c).await.map(|r| r.rows_affected() == 1))
    }

    /// A user's earlier challenges of a ceremony (a new one replaces them:
    /// one is all a user answers).
    pub async fn drop_webauthn_challenges(
        &mut self,
        user_id: Uuid,
        ceremony: Ceremony,
    ) -> Result<(), sqlx::Error> {
        count();
        on!(tx self, c => sqlx::query("DELETE FROM webauthn_challenges WHERE user_id = $1 AND challenge_type = $2")
            .bind(user_id).bind(ceremony.name()).execute(&mut *c).await.map(drop))
    }

    pub async fn insert_webauthn_challenge(
        &mut self,
        id: Uuid,
        user_id: Option<Uuid>,
        ceremony: Ceremony,
        state: &str,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        count();
        on!(tx self, c, d => sqlx::query(concat!(
            "INSERT INTO webauthn_challenges (id, user_id, challenge_type, session_data, created_at, expires_at) \
             VALUES ($1, $2, $3, $4", d!(cast "jsonb"), ", $5, $6)"))
            .bind(id).bind(user_id).bind(ceremony.name()).bind(state).bind(now).bind(expires_at)
            .execute(&mut *c).await.map(drop))
    }

    /// Takes a challenge of this ceremony (and user, for a registration):
    /// it is gone for whoever asks next, so two verifications of one
    /// challenge let one through. Its state and expiry.
    pub async fn take_webauthn_challenge(
        &mut self,
        id: Uuid,
        ceremony: Ceremony,
        user_id: Option<Uuid>,
    ) -> Result<Option<(String, DateTime<Utc>)>, sqlx::Error> {
        count();
        on!(tx self, c, d => sqlx::query_as(concat!(
            "DELETE FROM webauthn_challenges WHERE id = $1 AND challenge_type = $2 \
             AND (user_id = $3 OR (user_id IS NULL AND $3 IS NULL)) RETURNING session_data", d!(cast "text"), ", expires_at"))
            .bind(id).bind(ceremony.name()).bind(user_id).fetch_optional(&mut *c).await)
    }
}
