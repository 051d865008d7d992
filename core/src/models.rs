//! Domain types, as stored (GoTrue's columns) and as shown (GoTrue's JSON).

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value, json};
use uuid::Uuid;

/// Every GoTrue row carries the nil instance id; GoTrue's queries filter on it.
pub const INSTANCE_ID: Uuid = Uuid::nil();

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct User {
    pub id: Uuid,
    pub aud: Option<String>,
    pub role: Option<String>,
    pub email: Option<String>,
    pub encrypted_password: Option<String>,
    pub email_confirmed_at: Option<DateTime<Utc>>,
    pub invited_at: Option<DateTime<Utc>>,
    pub confirmation_sent_at: Option<DateTime<Utc>>,
    pub recovery_sent_at: Option<DateTime<Utc>>,
    pub email_change: Option<String>,
    pub email_change_sent_at: Option<DateTime<Utc>>,
    pub last_sign_in_at: Option<DateTime<Utc>>,
    pub raw_app_meta_data: Option<sqlx::types::Json<Value>>,
    pub raw_user_meta_data: Option<sqlx::types::Json<Value>>,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
    pub phone: Option<String>,
    pub phone_confirmed_at: Option<DateTime<Utc>>,
    pub phone_change: Option<String>,
    pub phone_change_sent_at: Option<DateTime<Utc>>,
    pub reauthentication_sent_at: Option<DateTime<Utc>>,
    pub banned_until: Option<DateTime<Utc>>,
    pub deleted_at: Option<DateTime<Utc>>,
    pub is_sso_user: bool,
    pub is_anonymous: bool,
    /// The user's factors, where the loader read them (GoTrue lists them,
    /// verified or not, in the user JSON).
    #[sqlx(skip)]
    pub factors: Vec<crate::store::FactorRow>,
}

/// About how many bytes a JSON value costs held in memory and rendered
/// once as text: what a cache that keeps users weighs them by. An estimate
/// that errs high (every node, key and string, and their text).
pub fn json_weight(v: &Value) -> usize {
    const NODE: usize = std::mem::size_of::<Value>();
    match v {
        Value::Null | Value::Bool(_) => NODE + 5,
        Value::Number(_) => NODE + 24,
        Value::String(s) => NODE + 2 * s.len() + 2,
        Value::Array(a) => NODE + a.iter().map(|x| json_weight(x) + 1).sum::<usize>(),
        // An ordered map keeps each key, its hash slot and the entry.
        Value::Object(m) => {
            NODE + m
                .iter()
                .map(|(k, x)| 48 + 2 * k.len() + 4 + json_weight(x))
                .sum::<usize>()
        }
    }
}

impl User {
    /// [`json_weight`] of everything the user holds, for caches.
    pub fn weight(&self) -> usize {
        let meta =
            |m: &Option<sqlx::types::Json<Value>>| m.as_ref().map_or(0, |j| json_weight(&j.0));
        let strings = [
            &self.aud,
            &self.role,
            &self.email,
            &self.phone,
            &self.email_change,
        ]
        .iter()
        .map(|s| s.as_ref().map_or(0, |s| 2 * s.len()))
        .sum::<usize>();
        std::mem::size_of::<User>()
            + meta(&self.raw_app_meta_data)
            + meta(&self.raw_user_meta_data)
            + strings
            + self.factors.len() * 256
    }
}

impl Identity {
    /// [`json_weight`] of the identity, for caches.
    pub fn weight(&self) -> usize {
        std::mem::size_of::<Identity>()
            + 2 * (self.provider_id.len() + self.provider.len())
            + json_weight(&self.identity_data.0)
    }
}

fn object(v: &Option<sqlx::types::Json<Value>>) -> Value {
    match v {
        Some(sqlx::types::Json(v @ Value::Object(_))) => v.clone(),
        _ => Value::Object(Map::new()),
    }
}

impl User {
    pub fn email_str(&self) -> &str {
        self.email.as_deref().unwrap_or("")
    }
    pub fn phone_str(&self) -> &str {
        self.phone.as_deref().unwrap_or("")
    }
    pub fn app_metadata(&self) -> Value {
        object(&self.raw_app_meta_data)
    }
    pub fn user_metadata(&self) -> Value {
        object(&self.raw_user_meta_data)
    }
    pub fn has_password(&self) -> bool {
        self.encrypted_password
            .as_deref()
            .is_some_and(|p| !p.is_empty())
    }
    pub fn is_banned(&self, now: DateTime<Utc>) -> bool {
        self.banned_until.is_some_and(|b| b > now)
    }
    pub fn confirmed_at(&self) -> Option<DateTime<Utc>> {
        match (self.email_confirmed_at, self.phone_confirmed_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// GoTrue's user JSON (see [`UserView`]).
    pub fn to_json(&self, identities: &[Identity]) -> Value {
        self.to_json_with(Some(identities))
    }

    /// As `to_json`; `None` renders `"identities": null` (not loaded, as in
    /// GoTrue's admin list).
    pub fn to_json_with(&self, identities: Option<&[Identity]>) -> Value {
        serde_json::to_value(self.view(identities)).unwrap_or_default()
    }

    pub fn view(&self, identities: Option<&[Identity]>) -> UserView {
        let non_empty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
        UserView {
            id: self.id,
            aud: self.aud.clone().unwrap_or_default(),
            role: self.role.clone().unwrap_or_default(),
            email: self.email_str().to_string(),
            email_confirmed_at: self.email_confirmed_at,
            invited_at: self.invited_at,
            phone: self.phone_str().to_string(),
            phone_confirmed_at: self.phone_confirmed_at,
            confirmation_sent_at: self.confirmation_sent_at,
            confirmed_at: self.confirmed_at(),
            recovery_sent_at: self.recovery_sent_at,
            new_email: non_empty(&self.email_change),
            email_change_sent_at: self.email_change_sent_at,
            new_phone: non_empty(&self.phone_change),
            phone_change_sent_at: self.phone_change_sent_at,
            reauthentication_sent_at: self.reauthentication_sent_at,
            last_sign_in_at: self.last_sign_in_at,
            app_metadata: self.app_metadata(),
            user_metadata: self.user_metadata(),
            identities: identities.map(|ids| ids.iter().map(Identity::view).collect()),
            factors: self.factors.clone(),
            created_at: self.created_at,
            updated_at: self.updated_at,
            banned_until: self.banned_until,
            deleted_at: self.deleted_at,
            is_anonymous: self.is_anonymous,
        }
    }
}

/// GoTrue's user JSON: nullable timestamps omitted, `email` and `phone`
/// always present, `identities` null when not loaded (the admin list).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = User)]
pub struct UserView {
    pub id: Uuid,
    pub aud: String,
    pub role: String,
    pub email: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email_confirmed_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invited_at: Option<DateTime<Utc>>,
    pub phone: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phone_confirmed_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confirmation_sent_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confirmed_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovery_sent_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email_change_sent_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_phone: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phone_change_sent_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reauthentication_sent_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_sign_in_at: Option<DateTime<Utc>>,
    #[schema(value_type = Object)]
    pub app_metadata: Value,
    #[schema(value_type = Object)]
    pub user_metadata: Value,
    #[schema(required = true)]
    pub identities: Option<Vec<IdentityView>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub factors: Vec<crate::store::FactorRow>,
    #[schema(required = true)]
    pub created_at: Option<DateTime<Utc>>,
    #[schema(required = true)]
    pub updated_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub banned_until: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<DateTime<Utc>>,
    pub is_anonymous: bool,
}

#[derive(Debug, Clone, sqlx::FromRow, serde::Deserialize)]
pub struct Identity {
    pub id: Uuid,
    pub provider_id: String,
    pub user_id: Uuid,
    pub identity_data: sqlx::types::Json<Value>,
    pub provider: String,
    pub last_sign_in_at: Option<DateTime<Utc>>,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
}

impl Identity {
    pub fn view(&self) -> IdentityView {
        let data = &self.identity_data.0;
        IdentityView {
            identity_id: self.id,
            id: self.provider_id.clone(),
            user_id: self.user_id,
            identity_data: data
                .as_object()
                .filter(|o| !o.is_empty())
                .map(|_| data.clone()),
            provider: self.provider.clone(),
            last_sign_in_at: self.last_sign_in_at,
            created_at: self.created_at,
            updated_at: self.updated_at,
            email: data
                .get("email")
                .and_then(Value::as_str)
                .map(str::to_lowercase),
        }
    }
}

/// GoTrue's identity JSON: `id` is the provider's id for the user.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = Identity)]
pub struct IdentityView {
    pub identity_id: Uuid,
    pub id: String,
    pub user_id: Uuid,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub identity_data: Option<Value>,
    pub provider: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_sign_in_at: Option<DateTime<Utc>>,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Session {
    pub id: Uuid,
    pub user_id: Uuid,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
    pub refreshed_at: Option<NaiveDateTime>,
    pub not_after: Option<DateTime<Utc>>,
    /// The v2 refresh tokens' HMAC key (base64url) and last counter issued;
    /// `None` for a session on legacy tokens.
    pub refresh_token_hmac_key: Option<String>,
    pub refresh_token_counter: Option<i64>,
    /// The OAuth client whose authorization code started the session, and
    /// the scopes the user granted it (`None` for a first-party session).
    pub oauth_client_id: Option<Uuid>,
    pub scopes: Option<String>,
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct RefreshToken {
    pub id: i64,
    pub token: Option<String>,
    pub user_id: Option<String>,
    pub revoked: Option<bool>,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
    pub parent: Option<String>,
    pub session_id: Option<Uuid>,
}

/// The kinds of audit entries (GoTrue's `action` and `log_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum AuditAction {
    Login,
    Logout,
    UserSignedUp,
    UserRepeatedSignup,
    UserModified,
    UserUpdatedPassword,
    TokenRefreshed,
    TokenRevoked,
    UserDeleted,
    UserConfirmationRequested,
    UserRecoveryRequested,
    UserInvited,
    InviteAccepted,
    UserReauthenticateRequested,
    /// castellan's own: `castellan keys add|promote|retire` (traits: `kid`).
    SigningKeyAdded,
    SigningKeyPromoted,
    SigningKeyRetired,
    /// castellan's own: `PUT /admin/rate_limits` (traits: the changes).
    RateLimitsChanged,
    /// castellan's own: a dead job sent again, or discarded, by an admin
    /// (traits: `queue`, `job_id`).
    JobRetried,
    JobDiscarded,
    FactorInProgress,
    ChallengeCreated,
    VerificationAttempted,
    FactorUnenrolled,
    FactorDeleted,
    FactorUpdated,
    /// An external identity joined an existing user.
    IdentityLinked,
    IdentityUnlinked,
    PasskeyCreated,
    PasskeyUpdated,
    PasskeyDeleted,
}

impl AuditAction {
    pub fn action(self) -> &'static str {
        match self {
            Self::Login => "login",
            Self::Logout => "logout",
            Self::UserSignedUp => "user_signedup",
            Self::UserRepeatedSignup => "user_repeated_signup",
            Self::UserModified => "user_modified",
            Self::UserUpdatedPassword => "user_updated_password",
            Self::TokenRefreshed => "token_refreshed",
            Self::TokenRevoked => "token_revoked",
            Self::UserDeleted => "user_deleted",
            Self::UserConfirmationRequested => "user_confirmation_requested",
            Self::UserRecoveryRequested => "user_recovery_requested",
            Self::UserInvited => "user_invited",
            Self::InviteAccepted => "invite_accepted",
            Self::UserReauthenticateRequested => "user_reauthenticate_requested",
            Self::SigningKeyAdded => "signing_key_added",
            Self::SigningKeyPromoted => "signing_key_promoted",
            Self::SigningKeyRetired => "signing_key_retired",
            Self::RateLimitsChanged => "rate_limits_changed",
            Self::JobRetried => "job_retried",
            Self::JobDiscarded => "job_discarded",
            Self::FactorInProgress => "factor_in_progress",
            Self::ChallengeCreated => "challenge_created",
            Self::VerificationAttempted => "verification_attempted",
            Self::FactorUnenrolled => "factor_unenrolled",
            Self::FactorDeleted => "factor_deleted",
            Self::FactorUpdated => "factor_updated",
            Self::IdentityLinked => "identity_linked",
            Self::IdentityUnlinked => "identity_unlinked",
            Self::PasskeyCreated => "passkey_created",
            Self::PasskeyUpdated => "passkey_updated",
            Self::PasskeyDeleted => "passkey_deleted",
        }
    }
    pub fn log_type(self) -> &'static str {
        match self {
            Self::Login | Self::Logout | Self::InviteAccepted => "account",
            Self::UserSignedUp | Self::UserDeleted | Self::UserInvited => "team",
            Self::UserConfirmationRequested
            | Self::UserRecoveryRequested
            | Self::UserReauthenticateRequested => "user",
            Self::UserRepeatedSignup | Self::UserModified | Self::UserUpdatedPassword => "user",
            Self::TokenRefreshed | Self::TokenRevoked => "token",
            Self::SigningKeyAdded | Self::SigningKeyPromoted | Self::SigningKeyRetired => "keys",
            Self::RateLimitsChanged => "limits",
            Self::JobRetried | Self::JobDiscarded => "queue",
            Self::FactorInProgress
            | Self::ChallengeCreated
            | Self::VerificationAttempted
            | Self::FactorUnenrolled
            | Self::FactorDeleted
            | Self::FactorUpdated => "factor",
            Self::IdentityLinked | Self::IdentityUnlinked => "user",
            Self::PasskeyCreated | Self::PasskeyUpdated | Self::PasskeyDeleted => "user",
        }
    }
}

/// Who did something, as the audit log names them.
#[derive(Debug, Clone)]
pub struct AuditActor {
    pub id: Uuid,
    pub username: String,
    pub name: Option<String>,
    pub via_sso: bool,
}

impl AuditActor {
    /// An admin token: GoTrue's pseudo-user with the nil id, named by its role.
    pub fn admin(role: &str) -> Self {
        Self {
            id: Uuid::nil(),
            username: role.to_string(),
            name: None,
            via_sso: false,
        }
    }
}

impl From<&User> for AuditActor {
    fn from(u: &User) -> Self {
        let username = if u.phone_str().is_empty() {
            u.email_str()
        } else {
            u.phone_str()
        };
        Self {
            id: u.id,
            username: username.to_string(),
            name: u
                .user_metadata()
                .get("full_name")
                .and_then(Value::as_str)
                .map(str::to_string),
            via_sso: u.is_sso_user,
        }
    }
}

/// An audit entry's payload.
pub fn audit_payload(
    actor: impl Into<AuditActor>,
    action: AuditAction,
    traits: Option<Value>,
) -> Value {
    let actor = actor.into();
    let mut p = json!({
        "actor_id": actor.id,
        "actor_via_sso": actor.via_sso,
        "actor_username": actor.username,
        "action": action.action(),
        "log_type": action.log_type(),
    });
    if let Some(name) = actor.name {
        p["actor_name"] = json!(name);
    }
    if let Some(t) = traits {
        p["traits"] = t;
    }
    p
}

/// Merges `patch` into `target`: `null` deletes a key, anything else sets it.
pub fn merge_metadata(target: &mut Value, patch: &Map<String, Value>) {
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let obj = target.as_object_mut().expect("made an object above");
    for (k, v) in patch {
        if v.is_null() {
            obj.remove(k);
        } else {
            obj.insert(k.clone(), v.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_deletes_nulls() {
        let mut t = json!({"a": 1, "b": 2});
        let patch = json!({"b": null, "c": 3});
        merge_metadata(&mut t, patch.as_object().unwrap());
        assert_eq!(t, json!({"a": 1, "c": 3}));
    }
}

/// A PKCE challenge (`s256` or `plain`, lower-cased).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pkce {
    pub challenge: String,
    pub method: String,
}
