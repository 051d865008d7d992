//! The admin API's decisions: creating, editing, banning and deleting users,
//! and reading the audit log. Callers have already proven an admin role.

use std::sync::Arc;

use base64::Engine;
use castellan_core::crypto::password::CostCap;
use castellan_core::duration::parse_go_duration;
use castellan_core::models::{
    AuditAction, AuditActor, Identity, User, audit_payload, merge_metadata,
};
use castellan_core::store::{
    AuditFilter, AuditRow, FactorRow, NewUser, Page, SessionRow, SessionScope, TokenType, Tx,
};
use castellan_core::{ApiError, ApiResult, validate};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};
use sha2::Digest;
use uuid::Uuid;

use crate::otp::{Issued, OtpIssuer, SendRequest};

use crate::signing_keys::{self, KeyView};
use castellan_core::crypto::jwk::{self, KeyKind};
use castellan_core::store::KeyState;
use castellan_jobs::EmailKind;
use castellan_jobs::inspect::{self, JobRow, JobState, QueueCounts};
use castellan_jobs::queue::Queue;

use crate::context::Ctx;

/// The attributes of `POST /admin/users` and `PUT /admin/users/{id}`.
#[derive(Debug, Default, Clone)]
pub struct UserAttributes {
    pub id: Option<String>,
    pub aud: Option<String>,
    pub role: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub password: Option<String>,
    pub password_hash: Option<String>,
    pub email_confirm: bool,
    pub phone_confirm: bool,
    pub user_metadata: Option<Map<String, Value>>,
    pub app_metadata: Option<Map<String, Value>>,
    pub ban_duration: Option<String>,
}

#[derive(Clone)]
pub struct Admin {
    ctx: Arc<Ctx>,
    otp: OtpIssuer,
}

/// An `/admin/generate_link` request, as parsed.
#[derive(Debug, Default)]
pub struct LinkRequest {
    pub link_type: String,
    pub email: String,
    pub password: Option<String>,
    pub new_email: Option<String>,
    pub data: Map<String, Value>,
    pub redirect_to: String,
}

/// A link made and returned, never sent.
#[derive(Debug)]
pub struct GeneratedLink {
    pub user: User,
    pub identities: Vec<Identity>,
    pub issued: Issued,
    pub verification_type: &'static str,
}

/// 422 when another user already holds this email or phone.
async fn ensure_free(
    tx: &mut Tx,
    email: Option<&str>,
    phone: Option<&str>,
    id: Uuid,
) -> ApiResult<()> {
    if let Some(e) = email
        && tx.email_taken(e, id).await?
    {
        return Err(ApiError::unprocessable(
            "email_exists",
            "A user with this email address has already been registered",
        ));
    }
    if let Some(p) = phone
        && tx.phone_taken(p, id).await?
    {
        return Err(ApiError::unprocessable(
            "phone_exists",
            "Phone number already registered by another user",
        ));
    }
    Ok(())
}

/// `ban_duration`: a Go duration, or `none` to lift a ban.
fn banned_until(spec: &str, now: DateTime<Utc>) -> ApiResult<Option<DateTime<Utc>>> {
    if spec == "none" {
        return Ok(None);
    }
    let d = parse_go_duration(spec)
        .map_err(|e| ApiError::validation(format!("invalid format for ban duration: time: {e}")))?;
    if d.is_zero() {
        return Ok(None);
    }
    let d = chrono::Duration::from_std(d)
        .map_err(|_| ApiError::validation("invalid format for ban duration: too long"))?;
    now.checked_add_signed(d)
        .map(Some)
        .ok_or_else(|| ApiError::validation("invalid format for ban duration: too long"))
}

/// Accepts what sign-in will verify: bcrypt and argon2i/argon2id PHC
/// strings within the hashing pool's cost cap.
fn check_imported_hash(cap: CostCap, h: &str) -> ApiResult<()> {
    match cap.refuse(h) {
        None => Ok(()),
        Some(why) => Err(ApiError::validation(format!(
            "Invalid password hash: {why}"
        ))),
    }
}

/// GoTrue's obfuscation of a soft-deleted identifier: base64url(SHA-256(id + value)).
fn obfuscated(user_id: Uuid, value: &str) -> String {
    let digest = sha2::Sha256::digest(format!("{user_id}{value}").as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest)
}

fn identity_data(user_id: Uuid, provider: &str, value: &str, verified: bool) -> Value {
    let mut d =
        json!({"sub": user_id.to_string(), "email_verified": false, "phone_verified": false});
    d[provider] = json!(value);
    d[if provider == "email" {
        "email_verified"
    } else {
        "phone_verified"
    }] = json!(verified);
    d
}

impl Admin {
    /// Whether the database answers (`GET /ready`).
    pub async fn ping(&self) -> ApiResult<()> {
        Ok(self.ctx.store.ping().await?)
    }

    /// Whether writes would fail for want of disk (SQLite; `GET /ready`).
    pub fn disk_full(&self) -> bool {
        self.ctx.store.disk_full()
    }

    /// Changes rate limits while running (see `limit_settings`).
    pub async fn set_rate_limits(
        &self,
        actors: &crate::actors::supervisor::Actors,
        actor: &AuditActor,
        changes: &[(String, u32)],
    ) -> ApiResult<std::collections::BTreeMap<&'static str, u32>> {
        crate::limit_settings::set(&self.ctx, actors, actor, changes).await
    }

    /// Without `otp`, sends read every window from the database (tools).
    pub fn new(ctx: Arc<Ctx>) -> Self {
        let otp = OtpIssuer::standalone(ctx.clone());
        Self { ctx, otp }
    }

    pub fn with_otp(ctx: Arc<Ctx>, otp: OtpIssuer) -> Self {
        Self { ctx, otp }
    }

    /// `POST /invite`: an invitation email, to a new or still unconfirmed
    /// address. Invitations are implicit (no PKCE) and have no window.
    pub async fn invite(
        &self,
        actor: AuditActor,
        email: &str,
        data: Map<String, Value>,
        aud: &str,
        redirect_to: String,
    ) -> ApiResult<(User, Vec<Identity>)> {
        let (user, created) = self.invitee(email, data, aud).await?;
        self.otp
            .send(SendRequest {
                actor: Some(actor),
                ..SendRequest::new(user.id, EmailKind::Invite, redirect_to, None)
            })
            .await?;
        // Told once the invitation is on its way, as GoTrue tells it.
        if created {
            crate::hooks::after_user_created(&self.ctx, &user).await?;
        }
        self.get_user(user.id).await
    }

    /// `POST /admin/generate_link`: makes the token and link a request asks
    /// for, creating the user where GoTrue does, and sends nothing.
    pub async fn generate_link(
        &self,
        actor: AuditActor,
        req: LinkRequest,
        aud: &str,
    ) -> ApiResult<GeneratedLink> {
        let (user, verification_type, kind) = self
            .link_user(
                &req.link_type,
                &req.email,
                req.password.as_deref(),
                req.data,
                aud,
            )
            .await?;
        // An email change link needs the new address, checked like PUT /user's.
        let new_email = match kind {
            EmailKind::EmailChange => {
                let e = validate::email(req.new_email.as_deref().unwrap_or_default())?;
                if self
                    .ctx
                    .store
                    .user_by_email(&e, aud)
                    .await?
                    .is_some_and(|o| o.id != user.id)
                {
                    return Err(ApiError::unprocessable(
                        "email_exists",
                        "A user with this email address has already been registered",
                    ));
                }
                Some(e)
            }
            _ => None,
        };
        let send = SendRequest {
            actor: Some(actor),
            generate_only: true,
            new_email,
            ..SendRequest::new(user.id, kind, req.redirect_to, None)
        };
        let tokens = self.otp.send(send).await?;
        // The token the requested link carries (for email changes: the
        // current or the new address's).
        let wanted = if verification_type == "email_change_current" {
            TokenType::EmailChangeTokenCurrent
        } else {
            TokenType::EmailChangeTokenNew
        };
        let issued = tokens
            .iter()
            .find(|i| i.token_type == wanted)
            .or(tokens.first())
            .cloned()
            .ok_or_else(|| ApiError::internal("generate_link", "no token issued"))?;
        let (user, identities) = self.get_user(user.id).await?;
        Ok(GeneratedLink {
            user,
            identities,
            issued,
            verification_type,
        })
    }

    /// The user row, locked for the rest of the transaction (every caller
    /// writes it next: concurrent updates wait instead of overwriting).
    async fn load(&self, tx: &mut Tx, id: Uuid) -> ApiResult<User> {
        tx.lock_user(id)
            .await?
            .ok_or_else(|| ApiError::not_found("user_not_found", "User not found"))
    }

    /// A new unconfirmed email user (with a password hash, or none), with
    /// its email identity.
    async fn create_unconfirmed(
        &self,
        email: &str,
        hash: Option<&str>,
        data: Map<String, Value>,
        aud: &str,
    ) -> ApiResult<User> {
        let now = self.ctx.config.clock.now();
        let id = Uuid::new_v4();
        let new = NewUser {
            id,
            aud,
            role: self.ctx.config.jwt.default_group_name.trim(),
            email: Some(email),
            phone: None,
            encrypted_password: hash,
            email_confirmed_at: None,
            phone_confirmed_at: None,
            app_metadata: json!({"provider": "email", "providers": ["email"]}),
            user_metadata: Value::Object(data),
            is_anonymous: false,
            now,
        };
        // GoTrue asks the user-created hooks for invitations and generated
        // links (not for users an admin creates directly).
        crate::hooks::before_user_created(&self.ctx, &new).await?;
        let mut tx = self.ctx.store.begin().await?;
        tx.insert_user(&new).await?;
        tx.upsert_identity(id, "email", &identity_data(id, "email", email, false), now)
            .await?;
        let user = self.load(&mut tx, id).await?;
        tx.commit().await?;
        Ok(user)
    }

    /// A user just made, told to the after-user-created hook.
    async fn told(&self, user: User) -> ApiResult<User> {
        crate::hooks::after_user_created(&self.ctx, &user).await?;
        Ok(user)
    }

    /// The user an invitation goes to: created (without a password) when
    /// new, reused when still unconfirmed; a confirmed address is taken.
    /// Whether it was created is said beside it.
    async fn invitee(
        &self,
        email: &str,
        data: Map<String, Value>,
        aud: &str,
    ) -> ApiResult<(User, bool)> {
        let email = validate::email(email)?;
        match self.ctx.store.user_by_email(&email, aud).await? {
            Some(u) if u.email_confirmed_at.is_some() => Err(ApiError::unprocessable(
                "email_exists",
                "A user with this email address has already been registered",
            )),
            Some(u) => Ok((u, false)),
            None => Ok((
                self.create_unconfirmed(&email, None, data, aud).await?,
                true,
            )),
        }
    }

    /// The user and the kind of token an `/admin/generate_link` request
    /// makes, creating the user where GoTrue does. Returns the user, the
    /// reported `verification_type` and the token's kind.
    async fn link_user(
        &self,
        link_type: &str,
        email: &str,
        password: Option<&str>,
        data: Map<String, Value>,
        aud: &str,
    ) -> ApiResult<(User, &'static str, EmailKind)> {
        let email = validate::email(email)?;
        let existing = self.ctx.store.user_by_email(&email, aud).await?;
        let cfg = &self.ctx.config;
        match (link_type, existing) {
            ("signup", Some(u)) if u.email_confirmed_at.is_some() => Err(ApiError::unprocessable(
                "email_exists",
                "A user with this email address has already been registered",
            )),
            ("signup", Some(u)) => {
                let mut tx = self.ctx.store.begin().await?;
                let mut meta = u.user_metadata();
                merge_metadata(&mut meta, &data);
                tx.update_metadata(u.id, &meta, &u.app_metadata(), self.ctx.config.clock.now())
                    .await?;
                let u = self.load(&mut tx, u.id).await?;
                tx.commit().await?;
                Ok((u, "signup", EmailKind::Confirmation))
            }
            ("signup", None) => {
                let password = password
                    .filter(|p| !p.is_empty())
                    .ok_or_else(|| ApiError::validation("Signup requires a valid password"))?;
                validate::require_strong_password(&cfg.password, password)?;
                let hash = self.ctx.hasher.hash(password).await?;
                let user = self.create_unconfirmed(&email, Some(&hash), data, aud);
                Ok((
                    self.told(user.await?).await?,
                    "signup",
                    EmailKind::Confirmation,
                ))
            }
            ("invite", _) => {
                let (user, created) = self.invitee(&email, data, aud).await?;
                let user = match created {
                    true => self.told(user).await?,
                    false => user,
                };
                Ok((user, "invite", EmailKind::Invite))
            }
            ("magiclink", Some(u)) => Ok((u, "magiclink", EmailKind::MagicLink)),
            // GoTrue turns a magic link for an unknown address into a signup.
            ("magiclink", None) => {
                let hash = self
                    .ctx
                    .hasher
                    .hash(&castellan_core::crypto::random_base32(64))
                    .await?;
                let user = self.create_unconfirmed(&email, Some(&hash), data, aud);
                Ok((
                    self.told(user.await?).await?,
                    "signup",
                    EmailKind::Confirmation,
                ))
            }
            ("recovery", Some(u)) => Ok((u, "recovery", EmailKind::Recovery)),
            ("recovery" | "email_change_current" | "email_change_new", None) => Err(
                ApiError::not_found("user_not_found", "User with this email not found"),
            ),
            ("email_change_current", Some(_)) if !cfg.mailer.secure_email_change_enabled => {
                Err(ApiError::validation(
                    "Enable secure email change to generate link for current email",
                ))
            }
            ("email_change_current", Some(u)) => {
                Ok((u, "email_change_current", EmailKind::EmailChange))
            }
            ("email_change_new", Some(u)) => Ok((u, "email_change_new", EmailKind::EmailChange)),
            (other, _) => Err(ApiError::validation(format!(
                "Invalid email action link type requested: {other}"
            ))),
        }
    }

    pub async fn get_user(&self, id: Uuid) -> ApiResult<(User, Vec<Identity>)> {
        let user = self
            .ctx
            .store
            .user_by_id(id)
            .await?
            .ok_or_else(|| ApiError::not_found("user_not_found", "User not found"))?;
        let ids = self.ctx.store.identities_of(id).await?;
        Ok((user, ids))
    }

    pub async fn factors(&self, id: Uuid) -> ApiResult<Vec<FactorRow>> {
        self.get_user(id).await?;
        Ok(self.ctx.store.factors_of(id).await?)
    }

    pub async fn list_users(
        &self,
        aud: &str,
        filter: Option<&str>,
        newest_first: bool,
        page: Page,
    ) -> ApiResult<(Vec<User>, i64)> {
        Ok(self
            .ctx
            .store
            .list_users(aud, filter, newest_first, page)
            .await?)
    }

    pub async fn audit(
        &self,
        filter: &AuditFilter<'_>,
        page: Page,
    ) -> ApiResult<(Vec<AuditRow>, i64)> {
        Ok(self.ctx.store.list_audit(filter, page).await?)
    }

    pub async fn create_user(
        &self,
        actor: &AuditActor,
        a: UserAttributes,
        request_aud: &str,
    ) -> ApiResult<(User, Vec<Identity>)> {
        let id = requested_id(a.id.as_deref())?;
        let (email, phone) = contacts(&a)?;
        let hash = self.initial_hash(&a).await?;
        let now = self.ctx.config.clock.now();
        let banned = a
            .ban_duration
            .as_deref()
            .map(|b| banned_until(b, now))
            .transpose()?
            .flatten();
        let (providers, app_metadata, user_metadata) =
            initial_metadata(&a, email.is_some(), phone.is_some());
        let aud = a
            .aud
            .clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| request_aud.to_string());
        let role = a
            .role
            .clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| self.ctx.config.jwt.default_group_name.trim().to_string());

        let mut tx = self.ctx.store.begin().await?;
        ensure_free(&mut tx, email.as_deref(), phone.as_deref(), id).await?;
        if tx.user_by_id(id).await?.is_some() {
            return Err(ApiError::unprocessable(
                "user_already_exists",
                "User already registered",
            ));
        }
        tx.insert_user(&NewUser {
            id,
            aud: &aud,
            role: &role,
            email: email.as_deref(),
            phone: phone.as_deref(),
            encrypted_password: Some(&hash),
            email_confirmed_at: (a.email_confirm && email.is_some()).then_some(now),
            phone_confirmed_at: (a.phone_confirm && phone.is_some()).then_some(now),
            app_metadata,
            user_metadata,
            is_anonymous: false,
            now,
        })
        .await?;
        insert_identities(&mut tx, id, email.as_deref(), phone.as_deref(), now).await?;
        if banned.is_some() {
            tx.set_banned_until(id, banned, now).await?;
        }
        let traits = json!({"user_id": id, "user_email": email.clone().unwrap_or_default(), "user_phone": phone.clone().unwrap_or_default(), "provider": providers[0]});
        tx.insert_audit(
            &audit_payload(actor.clone(), AuditAction::UserSignedUp, Some(traits)),
            now,
        )
        .await?;
        let user = self.load(&mut tx, id).await?;
        tx.commit().await?;
        let ids = self.ctx.store.identities_of(id).await?;
        Ok((user, ids))
    }

    /// The created user's password hash: an imported hash (checked), the
    /// given password's, or (GoTrue's way) a random password nobody knows.
    async fn initial_hash(&self, a: &UserAttributes) -> ApiResult<String> {
        let cfg = &self.ctx.config;
        let password = a.password.as_deref().filter(|s| !s.is_empty());
        let imported = a.password_hash.as_deref().filter(|s| !s.is_empty());
        if password.is_some() && imported.is_some() {
            return Err(ApiError::validation(
                "Only a password or a password hash should be provided",
            ));
        }
        Ok(match (password, imported) {
            (_, Some(h)) => {
                check_imported_hash(self.ctx.hasher.cap(), h)?;
                h.to_string()
            }
            (Some(p), None) => {
                validate::password_strength(&cfg.password, p)?; // only the 72-byte limit is enforced here
                self.ctx.hasher.hash(p).await?
            }
            // GoTrue gives such accounts a random password nobody knows.
            (None, None) => {
                self.ctx
                    .hasher
                    .hash(&castellan_core::crypto::random_base32(64))
                    .await?
            }
        })
    }

    pub async fn update_user(
        &self,
        actor: &AuditActor,
        id: Uuid,
        a: UserAttributes,
    ) -> ApiResult<(User, Vec<Identity>)> {
        let (email, phone) = checked_contacts(&a)?;
        let password = a.password.as_deref().filter(|s| !s.is_empty());
        if let Some(p) = password {
            crate::pwned::require_strong(&self.ctx, p).await?;
        }
        let now = self.ctx.config.clock.now();
        let banned = a
            .ban_duration
            .as_deref()
            .map(|b| banned_until(b, now))
            .transpose()?;
        let hash = match password {
            Some(p) => Some(self.ctx.hasher.hash(p).await?),
            None => None,
        };

        let mut tx = self.ctx.store.begin().await?;
        let user = self.load(&mut tx, id).await?;
        ensure_free(&mut tx, email.as_deref(), phone.as_deref(), id).await?;
        if let Some(role) = a.role.as_deref().filter(|r| !r.is_empty()) {
            tx.set_role(id, role, now).await?;
        }
        write_contacts(
            &mut tx,
            &user,
            &a,
            (email.as_deref(), phone.as_deref()),
            now,
        )
        .await?;
        if let Some(hash) = &hash {
            // An admin password change ends every session of the user.
            tx.set_password(id, hash, now).await?;
            crate::sessions::end(&mut tx, id, SessionScope::All).await?;
        }
        if let Some(b) = banned {
            tx.set_banned_until(id, b, now).await?;
        }
        self.merge_metadata(&mut tx, id, &a, now).await?;
        tx.insert_audit(
            &audit_payload(
                actor.clone(),
                AuditAction::UserModified,
                Some(json!({"user_id": id})),
            ),
            now,
        )
        .await?;
        let updated = self.load(&mut tx, id).await?;
        tx.commit().await?;
        if hash.is_some() {
            self.otp.forget_windows(id);
        }
        let ids = self.ctx.store.identities_of(id).await?;
        Ok((updated, ids))
    }

    /// An admin's metadata changes merged into the user's, as they are now.
    async fn merge_metadata(
        &self,
        tx: &mut Tx,
        id: Uuid,
        a: &UserAttributes,
        now: DateTime<Utc>,
    ) -> ApiResult<()> {
        if a.user_metadata.is_some() || a.app_metadata.is_some() {
            // Re-read: `confirm` may have just touched the metadata.
            let current = self.load(tx, id).await?;
            let (mut um, mut am) = (current.user_metadata(), current.app_metadata());
            if let Some(m) = &a.user_metadata {
                merge_metadata(&mut um, m);
            }
            if let Some(m) = &a.app_metadata {
                merge_metadata(&mut am, m);
            }
            tx.update_metadata(id, &um, &am, now).await?;
        }
        Ok(())
    }

    /// Ends every session of the user with this email (an operator's sign-out).
    pub async fn sign_out(&self, actor: &AuditActor, email: &str, aud: &str) -> ApiResult<u64> {
        let email = castellan_core::validate::email(email)?;
        let user = self
            .ctx
            .store
            .user_by_email(&email, aud)
            .await?
            .ok_or_else(|| ApiError::not_found("user_not_found", "User not found"))?;
        self.end_sessions(actor, user.id, SessionScope::All).await
    }

    /// The signing keys kept in the database.
    pub async fn keys(&self) -> ApiResult<Vec<KeyView>> {
        signing_keys::list(&self.ctx).await
    }

    /// Stores a new key of `kind`, verify-only (published, not signing yet);
    /// its kid. This server's key ring takes it at once, the others within
    /// `CASTELLAN_KEYS_POLL_INTERVAL`.
    pub async fn add_key(&self, actor: &AuditActor, kind: KeyKind) -> ApiResult<String> {
        // An RSA key takes a while to make: not on the request's thread.
        let jwk = tokio::task::spawn_blocking(move || jwk::generate(kind).to_string())
            .await
            .map_err(|e| ApiError::internal("key generation", e))?;
        let kid = signing_keys::add(&self.ctx, actor, &jwk).await?;
        signing_keys::sync(&self.ctx, &mut None).await;
        Ok(kid)
    }

    /// Promotes or retires a stored key (see [`signing_keys::set_state`]).
    pub async fn set_key_state(
        &self,
        actor: &AuditActor,
        kid: &str,
        to: KeyState,
    ) -> ApiResult<()> {
        signing_keys::set_state(&self.ctx, actor, kid, to).await?;
        signing_keys::sync(&self.ctx, &mut None).await;
        Ok(())
    }

    /// Every queue's jobs by state.
    pub async fn queues(&self) -> ApiResult<Vec<QueueCounts>> {
        Ok(inspect::counts(&self.ctx.store).await?)
    }

    /// Up to 100 jobs of a queue in a state, the most recent first.
    pub async fn queue_jobs(&self, queue: Queue, state: JobState) -> ApiResult<Vec<JobRow>> {
        Ok(inspect::jobs(&self.ctx.store, queue, state, 100).await?)
    }

    /// Sends a dead job again (`retry`) or discards it, audited; 404
    /// `job_not_found` when the queue has no dead job of that id.
    pub async fn settle_dead_job(
        &self,
        actor: &AuditActor,
        queue: Queue,
        id: &str,
        retry: bool,
    ) -> ApiResult<()> {
        let mut tx = self.ctx.store.begin().await?;
        let (found, action) = match retry {
            true => (
                inspect::retry_dead(&mut tx, queue, id).await?,
                AuditAction::JobRetried,
            ),
            false => (
                inspect::discard_dead(&mut tx, queue, id).await?,
                AuditAction::JobDiscarded,
            ),
        };
        if !found {
            return Err(ApiError::not_found(
                "job_not_found",
                "No dead job of that id in the queue",
            ));
        }
        let traits = json!({"queue": queue.label(), "job_id": id});
        tx.insert_audit(
            &audit_payload(actor.clone(), action, Some(traits)),
            self.ctx.config.clock.now(),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// A user's newest `SESSIONS_LISTED` sessions, newest first.
    pub async fn sessions(&self, id: Uuid) -> ApiResult<Vec<SessionRow>> {
        self.get_user(id).await?;
        Ok(self.ctx.store.sessions_of(id, SESSIONS_LISTED).await?)
    }

    /// Ends the user's sessions in `scope`, audited as the admin's logout of
    /// them: how many ended (every process's cache learns at once).
    pub async fn end_sessions(
        &self,
        actor: &AuditActor,
        user: Uuid,
        scope: SessionScope,
    ) -> ApiResult<u64> {
        let mut tx = self.ctx.store.begin().await?;
        let ended = crate::sessions::end(&mut tx, user, scope).await?;
        // Audited when something ended: a session the user does not have is
        // a 404, not a logout on record.
        if ended > 0 {
            let traits = match scope {
                SessionScope::Only(s) => json!({"user_id": user, "session_id": s}),
                _ => json!({"user_id": user}),
            };
            tx.insert_audit(
                &audit_payload(actor.clone(), AuditAction::Logout, Some(traits)),
                self.ctx.config.clock.now(),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(ended)
    }

    pub async fn delete_user(&self, actor: &AuditActor, id: Uuid, soft: bool) -> ApiResult<()> {
        let now = self.ctx.config.clock.now();
        let mut tx = self.ctx.store.begin().await?;
        let user = self.load(&mut tx, id).await?;
        let traits =
            json!({"user_id": id, "user_email": user.email_str(), "user_phone": user.phone_str()});
        tx.insert_audit(
            &audit_payload(actor.clone(), AuditAction::UserDeleted, Some(traits)),
            now,
        )
        .await?;
        if soft {
            let email = user.email.as_deref().map(|e| obfuscated(id, e));
            let phone = user
                .phone
                .as_deref()
                .map(|p| obfuscated(id, p).chars().take(15).collect::<String>());
            tx.soft_delete_user(id, email.as_deref(), phone.as_deref(), now)
                .await?;
        } else {
            tx.delete_user(id).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// The most sessions of one user an admin is shown at once.
pub const SESSIONS_LISTED: i64 = 1000;

/// The id an admin asked for, or a new one.
fn requested_id(asked: Option<&str>) -> ApiResult<Uuid> {
    Ok(match asked {
        None | Some("") => Uuid::new_v4(),
        Some(s) => {
            let id = Uuid::parse_str(s)
                .map_err(|_| ApiError::validation("ID must conform to the uuid v4 format"))?;
            if id.is_nil() {
                return Err(ApiError::validation("ID cannot be a nil uuid"));
            }
            id
        }
    })
}

/// The email and phone an admin gave, checked (either may be absent).
fn checked_contacts(a: &UserAttributes) -> ApiResult<(Option<String>, Option<String>)> {
    let checked = |v: &Option<String>, check: fn(&str) -> ApiResult<String>| {
        v.as_deref()
            .filter(|s| !s.is_empty())
            .map(check)
            .transpose()
    };
    Ok((
        checked(&a.email, validate::email)?,
        checked(&a.phone, validate::phone)?,
    ))
}

/// The created user's email and phone, checked; at least one.
fn contacts(a: &UserAttributes) -> ApiResult<(Option<String>, Option<String>)> {
    let (email, phone) = checked_contacts(a)?;
    if email.is_none() && phone.is_none() {
        return Err(ApiError::validation(
            "Cannot create a user without either an email or phone",
        ));
    }
    Ok((email, phone))
}

/// An admin's new email and phone with their identities, and the
/// confirmations asked for.
async fn write_contacts(
    tx: &mut Tx,
    user: &User,
    a: &UserAttributes,
    (email, phone): (Option<&str>, Option<&str>),
    now: DateTime<Utc>,
) -> ApiResult<()> {
    let id = user.id;
    for (provider, value, confirm) in [
        ("email", email, a.email_confirm),
        ("phone", phone, a.phone_confirm),
    ] {
        if let Some(v) = value {
            tx.set_contact(id, provider, v, now).await?;
            tx.upsert_identity(id, provider, &identity_data(id, provider, v, confirm), now)
                .await?;
            if confirm {
                tx.clear_anonymous(id).await?;
            }
        }
    }
    if a.email_confirm
        && user.email_confirmed_at.is_none()
        && (email.is_some() || user.email.is_some())
    {
        tx.confirm(id, "email", now).await?;
    }
    if a.phone_confirm
        && user.phone_confirmed_at.is_none()
        && (phone.is_some() || user.phone.is_some())
    {
        tx.confirm(id, "phone", now).await?;
    }
    Ok(())
}

/// The created user's providers (email first) and metadata.
fn initial_metadata(
    a: &UserAttributes,
    email: bool,
    phone: bool,
) -> (Vec<&'static str>, Value, Value) {
    let providers: Vec<&str> = [email.then_some("email"), phone.then_some("phone")]
        .into_iter()
        .flatten()
        .collect();
    let mut app_metadata = json!({"provider": providers[0], "providers": providers});
    if let Some(m) = &a.app_metadata {
        merge_metadata(&mut app_metadata, m);
    }
    let mut user_metadata = Value::Object(a.user_metadata.clone().unwrap_or_default());
    if a.email_confirm && email {
        user_metadata["email_verified"] = json!(true);
    }
    (providers, app_metadata, user_metadata)
}

/// The created user's email and phone identities, unverified whatever
/// the confirmation (as GoTrue makes them; the user's `email_verified`
/// metadata says what was confirmed).
async fn insert_identities(
    tx: &mut Tx,
    id: Uuid,
    email: Option<&str>,
    phone: Option<&str>,
    now: DateTime<Utc>,
) -> ApiResult<()> {
    if let Some(e) = email {
        tx.upsert_identity(id, "email", &identity_data(id, "email", e, false), now)
            .await?;
    }
    if let Some(p) = phone {
        tx.upsert_identity(id, "phone", &identity_data(id, "phone", p, false), now)
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ban_durations() {
        let now = Utc::now();
        assert_eq!(banned_until("none", now).unwrap(), None);
        assert_eq!(banned_until("0", now).unwrap(), None);
        assert_eq!(
            banned_until("1h30m", now).unwrap(),
            Some(now + chrono::Duration::minutes(90))
        );
        assert_eq!(
            banned_until("24h", now).unwrap(),
            Some(now + chrono::Duration::hours(24))
        );
        assert_eq!(
            banned_until("forever", now).unwrap_err().code,
            "validation_failed"
        );
    }

    #[test]
    fn imported_hashes() {
        let cap = CostCap {
            max_memory_kib: 65_536,
        };
        let check = |h: &str| check_imported_hash(cap, h);
        assert!(check(&bcrypt::hash("x", 4).unwrap()).is_ok());
        assert!(
            check("$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG")
                .is_ok()
        );
        assert!(
            check("$argon2d$v=19$m=19456,t=2,p=1$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG")
                .is_err()
        );
        assert!(check("plain").is_err());
        assert!(check("$2a$10$short").is_err());
    }

    #[test]
    fn obfuscation_is_stable_and_opaque() {
        let id = Uuid::nil();
        assert_eq!(obfuscated(id, "a@b.c"), obfuscated(id, "a@b.c"));
        assert!(!obfuscated(id, "a@b.c").contains('@'));
    }
}
