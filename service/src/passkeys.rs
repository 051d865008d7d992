//! Passkeys (`/passkeys/*`): a signed-in user registers a discoverable
//! credential, then signs in with it alone, no address typed. Each
//! ceremony is two requests: options (a challenge, its state kept in the
//! database so any process may answer the second) and verification (the
//! challenge taken once, the credential checked by webauthn-rs: origin,
//! relying party, user verification, signature, counter).

use std::sync::Arc;

use castellan_core::config::PasskeyConfig;
use castellan_core::models::{AuditAction, AuditActor, User, audit_payload};
use castellan_core::store::{Ceremony, NewPasskey, PasskeyRow, Tx};
use castellan_core::{ApiError, ApiResult};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;
use webauthn_rs::Webauthn;
use webauthn_rs::prelude::{
    DiscoverableAuthentication, Passkey, PasskeyRegistration, PublicKeyCredential,
    RegisterPublicKeyCredential,
};

use crate::context::Ctx;
use crate::relying_party::AuthenticatorData;
use crate::sessions::{Sessions, TokenGrant};

/// GoTrue's longest friendly name.
const MAX_NAME: usize = 120;

/// A ceremony's first answer: the challenge to quote back, the options for
/// `navigator.credentials`, and when the challenge ends (Unix seconds).
#[derive(Debug, Serialize)]
pub struct Options {
    pub challenge_id: Uuid,
    pub options: Value,
    pub expires_at: i64,
}

#[derive(Clone)]
pub struct Passkeys {
    ctx: Arc<Ctx>,
    sessions: Sessions,
}

fn disabled() -> ApiError {
    ApiError::not_found("passkey_disabled", "Passkeys are disabled")
}

fn not_found() -> ApiError {
    ApiError::not_found("validation_failed", "Passkey not found")
}

fn failed(message: &'static str) -> ApiError {
    ApiError::bad_request("webauthn_verification_failed", message)
}

fn counted<T>(op: &'static str, r: ApiResult<T>) -> ApiResult<T> {
    let outcome = match &r {
        Ok(_) => "ok",
        Err(e) if e.status >= 500 => "error",
        Err(_) => "refused",
    };
    metrics::counter!("castellan_passkeys_total", "op" => op, "outcome" => outcome).increment(1);
    r
}

impl Passkeys {
    pub fn new(ctx: Arc<Ctx>, sessions: Sessions) -> Self {
        Self { ctx, sessions }
    }

    /// The relying party, or GoTrue's 404 when passkeys are off.
    pub fn on(&self) -> ApiResult<(&Webauthn, &PasskeyConfig)> {
        match (&self.ctx.relying_party, &self.ctx.config.passkeys) {
            (Some(rp), Some(cfg)) => Ok((rp, cfg)),
            _ => Err(disabled()),
        }
    }

    pub fn enabled(&self) -> bool {
        self.on().is_ok()
    }

    /// Keeps a ceremony's state until its verification.
    async fn keep(
        &self,
        user: Option<Uuid>,
        ceremony: Ceremony,
        state: &impl Serialize,
        options: Value,
    ) -> ApiResult<Options> {
        self.on()?;
        let now = self.ctx.config.clock.now();
        let expires = now + crate::relying_party::challenge_expiry(&self.ctx);
        let state = serde_json::to_string(state).map_err(|e| ApiError::internal("passkey", e))?;
        let id = Uuid::new_v4();
        let mut tx = self.ctx.store.begin().await?;
        if let Some(user) = user {
            tx.drop_webauthn_challenges(user, ceremony).await?;
        }
        tx.insert_webauthn_challenge(id, user, ceremony, &state, now, expires)
            .await?;
        tx.commit().await?;
        Ok(Options {
            challenge_id: id,
            options,
            expires_at: expires.timestamp(),
        })
    }

    /// Takes a ceremony's state: once, before it ends. It is gone whatever
    /// follows (committed before it is read).
    async fn take<S: serde::de::DeserializeOwned>(
        &self,
        id: Uuid,
        ceremony: Ceremony,
        user: Option<Uuid>,
    ) -> ApiResult<S> {
        let mut tx = self.ctx.store.begin().await?;
        let taken = tx.take_webauthn_challenge(id, ceremony, user).await?;
        tx.commit().await?;
        let (state, expires): (String, DateTime<Utc>) = taken.ok_or_else(|| {
            ApiError::bad_request(
                "webauthn_challenge_not_found",
                "Challenge not found or already used",
            )
        })?;
        if self.ctx.config.clock.now() > expires {
            return Err(ApiError::bad_request(
                "webauthn_challenge_expired",
                "Challenge has expired",
            ));
        }
        // A state castellan did not write (GoTrue's, in an adopted
        // database) is no challenge of ours.
        serde_json::from_str(&state).map_err(|_| failed("Challenge not usable"))
    }

    /// GoTrue's rule: with a verified second factor, only an aal2 session
    /// adds or removes passkeys.
    async fn assured(&self, tx: &mut Tx, user: &User, session: Option<Uuid>) -> ApiResult<()> {
        let factors = tx.user_factors(user.id).await?;
        if !factors.iter().any(|f| f.verified()) {
            return Ok(());
        }
        let aal = match session {
            Some(s) => tx.session_aal(s).await?,
            None => "aal1".into(),
        };
        if aal != "aal2" {
            return Err(ApiError::forbidden(
                "insufficient_aal",
                "AAL2 session is required to manage passkeys when MFA is enabled",
            ));
        }
        Ok(())
    }

    /// Who may register: not an SSO user, aal2 with MFA, under the maximum.
    async fn may_register(&self, user: &User, session: Uuid) -> ApiResult<()> {
        let (_, cfg) = self.on()?;
        not_sso(user)?;
        let mut tx = self.ctx.store.begin().await?;
        self.assured(&mut tx, user, Some(session)).await?;
        full(&mut tx, user.id, cfg.max_per_user).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn registration_options(&self, user: &User, session: Uuid) -> ApiResult<Options> {
        counted(
            "registration_options",
            self.start_registration(user, session).await,
        )
    }

    async fn start_registration(&self, user: &User, session: Uuid) -> ApiResult<Options> {
        let (rp, _) = self.on()?;
        self.may_register(user, session).await?;
        let exclude = self.ctx.store.passkey_credential_ids(user.id).await?;
        let name = user_name(user);
        // webauthn-rs refuses an empty name (a wallet's user has no address).
        let name = if name.is_empty() {
            user.id.to_string()
        } else {
            name
        };
        let (mut ccr, state) = rp
            .start_passkey_registration(user.id, &name, &display_name(user, &name), Some(exclude))
            .map_err(|e| ApiError::internal("passkey", e))?;
        // Discoverable credentials, as GoTrue asks: a sign-in names no user.
        if let Some(sel) = ccr.public_key.authenticator_selection.as_mut() {
            sel.require_resident_key = true;
            sel.resident_key = Some(webauthn_rs_proto::ResidentKeyRequirement::Required);
        }
        let options = to_value(&ccr.public_key)?;
        self.keep(Some(user.id), Ceremony::Registration, &state, options)
            .await
    }

    pub async fn register(
        &self,
        user: &User,
        session: Uuid,
        challenge: Uuid,
        credential: Value,
    ) -> ApiResult<PasskeyRow> {
        counted(
            "register",
            self.finish_registration(user, session, challenge, credential)
                .await,
        )
    }

    async fn finish_registration(
        &self,
        user: &User,
        session: Uuid,
        challenge: Uuid,
        credential: Value,
    ) -> ApiResult<PasskeyRow> {
        let (rp, cfg) = self.on()?;
        not_sso(user)?;
        let mut tx = self.ctx.store.begin().await?;
        self.assured(&mut tx, user, Some(session)).await?;
        tx.commit().await?;
        let state: PasskeyRegistration = self
            .take(challenge, Ceremony::Registration, Some(user.id))
            .await?;
        let reg: RegisterPublicKeyCredential = serde_json::from_value(credential)
            .map_err(|_| failed("Invalid credential response"))?;
        let passkey = rp
            .finish_passkey_registration(&reg, &state)
            .map_err(|_| failed("Credential verification failed"))?;
        if !crate::relying_party::credential_id_fits(passkey.cred_id()) {
            return Err(failed("Credential verification failed"));
        }
        let facts = AuthenticatorData::of_attestation(&reg.response.attestation_object)
            .ok_or_else(|| failed("Invalid credential response"))?;
        let transports = crate::relying_party::transports(&reg);
        let row = NewPasskey {
            id: Uuid::new_v4(),
            user_id: user.id,
            credential_id: passkey.cred_id().as_slice(),
            public_key: &facts.public_key,
            aaguid: facts.aaguid,
            sign_count: i64::from(facts.sign_count),
            transports: &serde_json::to_string(&transports).unwrap_or_else(|_| "[]".into()),
            backup_eligible: facts.backup_eligible,
            backed_up: facts.backed_up,
            friendly_name: "Passkey",
            passkey: &serde_json::to_string(&passkey)
                .map_err(|e| ApiError::internal("passkey", e))?,
        };
        let now = self.ctx.config.clock.now();
        let mut tx = self.ctx.store.begin().await?;
        let gone = || ApiError::not_found("user_not_found", "User not found");
        tx.lock_user(user.id).await?.ok_or_else(gone)?;
        full(&mut tx, user.id, cfg.max_per_user).await?;
        if !tx.insert_passkey(&row, now).await? {
            return Err(ApiError::unprocessable(
                "webauthn_credential_exists",
                "This credential is already registered",
            ));
        }
        let audit = audit_payload(
            user,
            AuditAction::PasskeyCreated,
            Some(json!({"passkey_id": row.id})),
        );
        tx.insert_audits(&[audit], now).await?;
        tx.commit().await?;
        Ok(PasskeyRow {
            id: row.id,
            user_id: user.id,
            friendly_name: row.friendly_name.into(),
            sign_count: row.sign_count,
            created_at: now,
            last_used_at: None,
            castellan_passkey: None,
        })
    }

    pub async fn authentication_options(&self) -> ApiResult<Options> {
        counted("authentication_options", self.start_authentication().await)
    }

    async fn start_authentication(&self) -> ApiResult<Options> {
        let (rp, _) = self.on()?;
        let (rcr, state) = rp
            .start_discoverable_authentication()
            .map_err(|e| ApiError::internal("passkey", e))?;
        let options = to_value(&rcr.public_key)?;
        self.keep(None, Ceremony::Authentication, &state, options)
            .await
    }

    /// A sign-in with a passkey alone: the session's `amr` says `passkey`.
    pub async fn sign_in(&self, challenge: Uuid, credential: Value) -> ApiResult<TokenGrant> {
        let r = self.finish_authentication(challenge, credential).await;
        if r.is_err() {
            metrics::counter!("castellan_signins_total", "method" => "passkey", "outcome" => "refused")
                .increment(1);
        }
        counted("sign_in", r)
    }

    async fn finish_authentication(
        &self,
        challenge: Uuid,
        credential: Value,
    ) -> ApiResult<TokenGrant> {
        let (rp, _) = self.on()?;
        let state: DiscoverableAuthentication =
            self.take(challenge, Ceremony::Authentication, None).await?;
        let assertion: PublicKeyCredential = serde_json::from_value(credential)
            .map_err(|_| failed("Invalid credential response"))?;
        let refused = || failed("Credential verification failed");
        let (user_id, credential_id) = rp
            .identify_discoverable_authentication(&assertion)
            .map_err(|_| refused())?;
        let now = self.ctx.config.clock.now();
        let mut tx = self.ctx.store.begin().await?;
        // An unknown credential, one of another user, or one GoTrue made
        // (no verifier state) are one refusal.
        let row = tx
            .passkey_by_credential(credential_id)
            .await?
            .filter(|r| r.user_id == user_id)
            .ok_or_else(refused)?;
        let mut passkey: Passkey = row
            .castellan_passkey
            .as_deref()
            .and_then(|p| serde_json::from_str(p).ok())
            .ok_or_else(refused)?;
        let result = rp
            .finish_discoverable_authentication_v2(&assertion, state, &passkey)
            .map_err(|_| refused())?;
        passkey.update_credential(&result);
        let state =
            serde_json::to_string(&passkey).map_err(|e| ApiError::internal("passkey", e))?;
        if !tx
            .passkey_used(row.id, i64::from(result.counter()), &state, now)
            .await?
        {
            return Err(refused());
        }
        let user = tx.user_by_id(user_id).await?.ok_or_else(refused)?;
        signable(&user, now)?;
        tx.commit().await?;
        let traits = json!({"passkey_id": row.id});
        self.sessions
            .issue(user, "passkey", vec![(AuditAction::Login, Some(traits))])
            .await
    }

    /// Listed whether or not passkeys are on (the admin's view, as GoTrue's).
    pub async fn list(&self, user_id: Uuid) -> ApiResult<Vec<PasskeyRow>> {
        Ok(self.ctx.store.passkeys_of(user_id).await?)
    }

    pub async fn rename(&self, user: &User, id: Uuid, name: &str) -> ApiResult<PasskeyRow> {
        self.on()?;
        if name.is_empty() {
            return Err(ApiError::validation("friendly_name is required"));
        }
        if name.len() > MAX_NAME {
            return Err(ApiError::validation(
                "friendly_name must be 120 characters or less",
            ));
        }
        if name.contains('\0') {
            return Err(ApiError::validation("friendly_name must not contain NUL"));
        }
        let now = self.ctx.config.clock.now();
        let mut tx = self.ctx.store.begin().await?;
        let row = tx
            .rename_passkey(user.id, id, name, now)
            .await?
            .ok_or_else(not_found)?;
        let audit = audit_payload(
            user,
            AuditAction::PasskeyUpdated,
            Some(json!({"passkey_id": id})),
        );
        tx.insert_audits(&[audit], now).await?;
        tx.commit().await?;
        Ok(row)
    }

    /// The user's own deletion (aal2 with MFA).
    pub async fn delete(&self, user: &User, session: Option<Uuid>, id: Uuid) -> ApiResult<()> {
        self.on()?;
        let mut tx = self.ctx.store.begin().await?;
        self.assured(&mut tx, user, session).await?;
        let traits = json!({"passkey_id": id});
        self.remove(tx, user.into(), user.id, id, traits).await
    }

    /// An admin's deletion, audited as the admin's.
    pub async fn admin_delete(&self, admin: AuditActor, user_id: Uuid, id: Uuid) -> ApiResult<()> {
        let tx = self.ctx.store.begin().await?;
        let traits = json!({"user_id": user_id, "passkey_id": id});
        self.remove(tx, admin, user_id, id, traits).await
    }

    async fn remove(
        &self,
        mut tx: Tx,
        actor: AuditActor,
        user_id: Uuid,
        id: Uuid,
        traits: Value,
    ) -> ApiResult<()> {
        if !tx.delete_passkey(user_id, id).await? {
            return Err(not_found());
        }
        let now = self.ctx.config.clock.now();
        let audit = audit_payload(actor, AuditAction::PasskeyDeleted, Some(traits));
        tx.insert_audits(&[audit], now).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// GoTrue's rule: an SSO user's sign-in is their provider's.
fn not_sso(user: &User) -> ApiResult<()> {
    if user.is_sso_user {
        return Err(ApiError::unprocessable(
            "validation_failed",
            "SSO users cannot register passkeys",
        ));
    }
    Ok(())
}

/// GoTrue's limit per user, counted in the transaction that adds one.
async fn full(tx: &mut Tx, user: Uuid, max: usize) -> ApiResult<()> {
    if tx.count_passkeys(user).await? >= i64::try_from(max).unwrap_or(i64::MAX) {
        return Err(ApiError::unprocessable(
            "too_many_passkeys",
            "Maximum number of passkeys reached",
        ));
    }
    Ok(())
}

/// GoTrue's checks after a passkey proved who signs in.
fn signable(user: &User, now: DateTime<Utc>) -> ApiResult<()> {
    // A soft-deleted user's passkeys are deleted with them; this is the
    // second lock on that door.
    if user.deleted_at.is_some() {
        return Err(failed("Credential verification failed"));
    }
    if !user.email_str().is_empty() && user.email_confirmed_at.is_none() {
        return Err(ApiError::forbidden(
            "email_not_confirmed",
            "Email not confirmed",
        ));
    }
    if !user.phone_str().is_empty() && user.phone_confirmed_at.is_none() {
        return Err(ApiError::forbidden(
            "phone_not_confirmed",
            "Phone not confirmed",
        ));
    }
    if user.is_banned(now) {
        return Err(ApiError::forbidden("user_banned", "User is banned"));
    }
    Ok(())
}

/// The name an authenticator shows for the account: its address.
fn user_name(user: &User) -> String {
    match user.email_str() {
        "" => user.phone_str().to_string(),
        email => email.to_string(),
    }
}

fn display_name(user: &User, name: &str) -> String {
    user.user_metadata()
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .unwrap_or(name)
        .to_string()
}

fn to_value(v: &impl Serialize) -> ApiResult<Value> {
    serde_json::to_value(v).map_err(|e| ApiError::internal("passkey", e))
}
