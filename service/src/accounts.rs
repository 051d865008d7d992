//! Accounts: sign-up, password sign-in, bearer authentication and user
//! updates, following GoTrue's order of checks. Stateless and parallel per
//! user; sessions are created and ended through `sessions`.

use crate::hooks;
use castellan_core::hooks::Hook;
use std::sync::Arc;

use castellan_core::crypto::jwt::{self, IncomingClaims};
use castellan_core::models::{
    AuditAction, Identity, User, UserView, audit_payload, merge_metadata,
};
use castellan_core::store::{LiveUser, NewUser, SessionScope, Tx};
use castellan_core::validate;
use castellan_core::{ApiError, ApiResult};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::context::Ctx;
use crate::otp::{OtpIssuer, SendRequest, SmsRequest};
use crate::sessions::{self, Sessions, TokenGrant};
use crate::sms_out;
use castellan_core::models::Pkce;
use castellan_jobs::EmailKind;
use castellan_jobs::sms::SmsKind;

/// The `POST /signup` request, as parsed by the handler.
#[derive(Debug, Default)]
pub struct SignupRequest {
    pub email: Option<String>,
    pub phone: Option<String>,
    pub password: Option<String>,
    pub data: Map<String, Value>,
    pub channel: Option<String>,
    pub pkce: Option<Pkce>,
    /// Where the confirmation link leads (already validated).
    pub redirect_to: String,
    pub aud: String,
    /// The password is the server's own (a sign-up by `/otp`): no outside
    /// lookup for it, as GoTrue checks only what a user chose.
    pub generated_password: bool,
}

#[derive(Debug)]
pub enum SignupOutcome {
    /// Confirmed: a session.
    Session(Box<TokenGrant>),
    /// Needs confirmation: the bare user, no session.
    User {
        user: Box<User>,
        identities: Vec<Identity>,
        /// The SMS provider's id of the confirmation code's message.
        message_id: Option<String>,
    },
    /// The address is taken: a made-up user that reveals nothing.
    Obfuscated(Box<UserView>),
}

/// A verified bearer token.
#[derive(Debug, Clone)]
pub enum Principal {
    /// A user token whose user (and session, when it names one) exists:
    /// the live entry, shared with the session cache.
    User {
        live: Arc<LiveUser>,
        session_id: Option<Uuid>,
        aud: Option<String>,
    },
    /// A token whose role is an admin role (e.g. the `service_role` key).
    Admin { role: String },
}

/// Credentials of a password grant.
#[derive(Debug, Default)]
pub struct PasswordGrant {
    pub email: Option<String>,
    pub phone: Option<String>,
    pub password: String,
    pub aud: String,
}

/// The `PUT /user` request.
#[derive(Debug, Default)]
pub struct UserUpdate {
    pub email: Option<String>,
    pub phone: Option<String>,
    pub password: Option<String>,
    pub data: Option<Map<String, Value>>,
    pub app_metadata: Option<Map<String, Value>>,
    /// The code from `GET /reauthenticate`.
    pub nonce: Option<String>,
    /// For an email change: PKCE and where its links lead.
    pub pkce: Option<Pkce>,
    pub redirect_to: String,
    /// For a phone change: `sms` or `whatsapp`.
    pub channel: Option<String>,
}

#[derive(Clone)]
pub struct Accounts {
    ctx: Arc<Ctx>,
    sessions: Sessions,
    otp: OtpIssuer,
}

fn non_empty(s: &Option<String>) -> Option<&str> {
    s.as_deref().filter(|s| !s.is_empty())
}

impl Accounts {
    /// The signing keys' public halves and algorithms, for `/.well-known`.
    pub fn keys(&self) -> &jwt::JwtKeys {
        &self.ctx.jwt
    }

    pub fn new(ctx: Arc<Ctx>, sessions: Sessions, otp: OtpIssuer) -> Self {
        Self { ctx, sessions, otp }
    }

    /// `GET /reauthenticate`: a code by email (by SMS for a user without
    /// one), to confirm a password change.
    pub async fn reauthenticate(&self, user: &User) -> ApiResult<()> {
        if user.email.as_deref().is_none_or(str::is_empty) {
            if user.phone.as_deref().is_none_or(str::is_empty) {
                return Err(ApiError::validation(
                    "Reauthentication requires the user to have an email or a phone number",
                ));
            }
            if user.phone_confirmed_at.is_none() {
                return Err(ApiError::unprocessable(
                    "phone_not_confirmed",
                    "Please verify your phone first.",
                ));
            }
            let sms = SmsRequest {
                user_id: user.id,
                kind: SmsKind::Reauthentication,
                new_phone: None,
                channel: "sms".into(),
            };
            return self.otp.send_sms(sms).await.map(drop);
        }
        if user.email_confirmed_at.is_none() {
            return Err(ApiError::unprocessable(
                "email_not_confirmed",
                "Please verify your email first.",
            ));
        }
        let send = SendRequest::new(user.id, EmailKind::Reauthentication, String::new(), None);
        self.otp.send(send).await.map(drop)
    }

    /// With `GOTRUE_SECURITY_UPDATE_PASSWORD_REQUIRE_REAUTHENTICATION`, a
    /// password change needs a nonce unless the session is under 24 h old.
    async fn needs_reauthentication(
        &self,
        session_id: Option<Uuid>,
        now: chrono::DateTime<Utc>,
    ) -> ApiResult<bool> {
        if !self.ctx.config.update_password_require_reauthentication {
            return Ok(false);
        }
        let Some(sid) = session_id else {
            return Ok(true);
        };
        let created = self.ctx.store.session_created_at(sid).await?;
        Ok(created.is_none_or(|c| now - c > chrono::Duration::hours(24)))
    }

    /// Checks and spends a reauthentication nonce (once, in constant time).
    async fn consume_nonce(&self, user: &User, nonce: &str) -> ApiResult<()> {
        use castellan_core::store::TokenType;
        let invalid = || {
            ApiError::unprocessable(
                "reauthentication_not_valid",
                "Nonce has expired or is invalid",
            )
        };
        // The code went by email, or by SMS to a user without one.
        let (address, exp) = match user.email_str() {
            "" => (user.phone_str(), self.ctx.config.sms.otp_exp),
            email => (email, self.ctx.config.mailer.otp_exp),
        };
        let hash = self.ctx.token_hash(address, nonce);
        let now = self.ctx.config.clock.now();
        let mut tx = self.ctx.store.begin().await?;
        // Guesses one at a time (see the OTP issuer's `verify`).
        tx.lock_user(user.id).await?.ok_or_else(invalid)?;
        let stored = tx
            .token_column(user.id, TokenType::ReauthenticationToken)
            .await?
            .unwrap_or_default();
        let fresh = user
            .reauthentication_sent_at
            .is_some_and(|t| now <= t + chrono::Duration::from_std(exp).unwrap_or_default());
        let matches = !stored.is_empty()
            && castellan_core::crypto::secure_eq(stored.as_bytes(), hash.as_bytes());
        if !matches && !stored.is_empty() {
            // Counted like any code: guessed at too often, the nonce is void.
            let types = [TokenType::ReauthenticationToken];
            crate::otp::wrong_guess(&self.ctx, tx, user.id, &types).await?;
            return Err(invalid());
        }
        if !(matches
            && fresh
            && tx
                .take_token_column(user.id, TokenType::ReauthenticationToken, &stored)
                .await?)
        {
            return Err(invalid());
        }
        tx.clear_one_time_tokens(user.id).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Sends the confirmation email of an unconfirmed sign-up.
    async fn send_confirmation(&self, user: &User, req: &SignupRequest) -> ApiResult<()> {
        let send = SendRequest::new(
            user.id,
            EmailKind::Confirmation,
            req.redirect_to.clone(),
            req.pkce.clone(),
        );
        self.otp.send(send).await.map(drop)
    }

    /// `grant_type=pkce`: exchanges the code of a verified link (or of an
    /// external sign-in, with the provider's tokens) for a session, once.
    pub async fn pkce_grant(
        &self,
        auth_code: &str,
        verifier: &str,
    ) -> ApiResult<(TokenGrant, Option<(String, String)>)> {
        if auth_code.is_empty() || verifier.is_empty() {
            return Err(ApiError::validation(
                "invalid request: both auth code and code verifier should be non-empty",
            ));
        }
        let not_found = || {
            ApiError::not_found(
                "flow_state_not_found",
                "invalid flow state, no valid flow state found",
            )
        };
        let now = self.ctx.config.clock.now();
        let mut tx = self.ctx.store.begin().await?;
        let flow = tx.take_flow_state(auth_code).await?.ok_or_else(not_found)?;
        tx.commit().await?;
        let user_id = flow.user_id.ok_or_else(not_found)?;
        let since = if flow.authentication_method == "magiclink" {
            flow.auth_code_issued_at
        } else {
            flow.created_at
        };
        let expiry =
            chrono::Duration::from_std(self.ctx.config.flow_state_expiry).unwrap_or_default();
        if since.is_none_or(|t| now > t + expiry) {
            return Err(ApiError::unprocessable(
                "flow_state_expired",
                "invalid flow state, flow state has expired",
            ));
        }
        let challenge = flow.code_challenge.as_deref().unwrap_or_default();
        if !verifier_matches(flow.code_challenge_method.as_deref(), challenge, verifier) {
            return Err(ApiError::bad_request(
                "bad_code_verifier",
                "code challenge does not match previously saved code verifier",
            ));
        }
        let user = self
            .ctx
            .store
            .user_by_id(user_id)
            .await?
            .ok_or_else(not_found)?;
        if user.is_banned(now) {
            return Err(ApiError::bad_request("user_banned", "User is banned"));
        }
        let method = session_method(&flow.authentication_method);
        let provider = flow.provider_type.clone();
        let traits = Some(json!({"provider_type": provider}));
        let grant = self
            .sessions
            .issue(user, method, vec![(AuditAction::Login, traits)])
            .await?;
        let tokens = (method == "oauth").then(|| {
            (
                flow.provider_access_token.unwrap_or_default(),
                flow.provider_refresh_token.unwrap_or_default(),
            )
        });
        Ok((grant, tokens))
    }

    pub fn ctx(&self) -> &Ctx {
        &self.ctx
    }

    pub async fn signup(&self, req: SignupRequest) -> ApiResult<SignupOutcome> {
        // A sign-up that lost a race for its address gets the answer a later
        // one would: the address is taken.
        self.signup_once(req).await.map_err(|e| match e.code {
            "email_exists" | "phone_exists" => {
                ApiError::unprocessable("user_already_exists", "User already registered")
            }
            _ => e,
        })
    }

    async fn signup_once(&self, req: SignupRequest) -> ApiResult<SignupOutcome> {
        let cfg = &self.ctx.config;
        let (addr, password) = check_signup(&self.ctx, &req).await?;
        if addr.provider == "phone" {
            sms_out::provider_ready(&self.ctx)?;
        }
        // Hash before looking the address up, so a taken address answers in
        // the same time as a free one.
        let hash = self.ctx.hasher.hash(password).await?;
        let now = self.ctx.config.clock.now();
        let autoconfirm = if addr.provider == "email" {
            cfg.mailer_autoconfirm
        } else {
            cfg.sms_autoconfirm
        };
        let new = new_signup(
            cfg,
            (&req, &addr),
            &hash,
            autoconfirm,
            (Uuid::new_v4(), now),
        );
        if hooks::on(&self.ctx, Hook::BeforeUserCreated) {
            // Asked outside the transaction, when the address is free now.
            let mut tx = self.ctx.store.begin().await?;
            let free = holder(&mut tx, &addr).await?.is_none();
            tx.commit().await?;
            if free {
                hooks::before_user_created(&self.ctx, &new.0).await?;
            }
        }
        let mut tx = self.ctx.store.begin().await?;
        let existing = holder(&mut tx, &addr).await?;
        let created = existing.is_none();
        let user = match existing {
            Some(u) => match self
                .signup_again(tx, u, &req, &addr, autoconfirm, now)
                .await?
            {
                Again::Answered(outcome) => return Ok(outcome),
                Again::Confirmed(open) => {
                    let (tx_back, user) = *open;
                    tx = tx_back;
                    user
                }
            },
            None => insert_signup(&mut tx, new, addr.provider, autoconfirm).await?,
        };
        tx.commit().await?;
        metrics::counter!("castellan_signups_total", "provider" => addr.provider, "confirmed" => autoconfirm.to_string()).increment(1);
        // Told before a session starts (a refusal leaves none behind), or
        // once the confirmation is on its way.
        let told = (created && hooks::on(&self.ctx, Hook::AfterUserCreated)).then(|| user.clone());
        let outcome = match autoconfirm {
            true => {
                if let Some(user) = &told {
                    hooks::after_user_created(&self.ctx, user).await?;
                }
                let grant = self
                    .sessions
                    .issue(user, "password", vec![(AuditAction::Login, None)])
                    .await?;
                return Ok(SignupOutcome::Session(Box::new(grant)));
            }
            false => {
                let id = user.id;
                let outcome = self.unconfirmed(user, &req, addr.provider).await;
                // GoTrue's sign-up is one transaction with its SMS: one refused
                // (by the provider or the send-SMS hook) takes the user back.
                if created && addr.provider == "phone" && outcome.is_err() {
                    self.forget(id).await;
                }
                outcome
            }
        };
        if let (Some(user), Ok(_)) = (&told, &outcome) {
            hooks::after_user_created(&self.ctx, user).await?;
        }
        outcome
    }

    /// A user this sign-up made whose code the provider refused is taken
    /// back, as GoTrue's sign-up rolls back when its send fails: the number
    /// may sign up again (and `/resend` has no one to send to).
    async fn forget(&self, id: Uuid) {
        let forgotten = async {
            let mut tx = self.ctx.store.begin().await?;
            tx.delete_user(id).await?;
            tx.commit().await?;
            Ok::<_, ApiError>(())
        };
        if let Err(e) = forgotten.await {
            tracing::warn!(user_id = %id, error = %e, "a sign-up whose SMS was refused could not be taken back");
        }
    }

    /// A sign-up of an address that already has a user: a confirmed one
    /// (or one in another audience) gets the stand-in answer; an unconfirmed
    /// one its confirmation again, or, with autoconfirm, is confirmed now.
    async fn signup_again(
        &self,
        mut tx: Tx,
        u: User,
        req: &SignupRequest,
        addr: &SignupAddress,
        autoconfirm: bool,
        now: DateTime<Utc>,
    ) -> ApiResult<Again> {
        let cfg = &self.ctx.config;
        let confirmed = if addr.provider == "email" {
            u.email_confirmed_at.is_some()
        } else {
            u.phone_confirmed_at.is_some()
        };
        // An address held in another audience (`X-JWT-AUD`) is taken here
        // too, and answered like a confirmed one: that user is never
        // touched, and the answer tells nothing about it.
        if confirmed || u.aud.as_deref() != Some(req.aud.as_str()) {
            let repeated = audit_payload(&u, AuditAction::UserRepeatedSignup, None);
            tx.insert_audit(&repeated, now).await?;
            tx.commit().await?;
            if cfg.mailer_autoconfirm || cfg.sms_autoconfirm {
                return Err(ApiError::unprocessable(
                    "user_already_exists",
                    "User already registered",
                ));
            }
            let stand_in = obfuscate(&u, addr.provider, req, now);
            return Ok(Again::Answered(SignupOutcome::Obfuscated(Box::new(
                stand_in,
            ))));
        }
        // An unconfirmed user is not modified by a second sign-up; the
        // confirmation is sent again.
        if !autoconfirm {
            tx.commit().await?;
            let outcome = self.unconfirmed(u, req, addr.provider).await?;
            return Ok(Again::Answered(outcome));
        }
        tx.confirm(u.id, addr.provider, now).await?;
        tx.insert_audit(&audit_payload(&u, AuditAction::UserSignedUp, None), now)
            .await?;
        let user = tx
            .user_by_id(u.id)
            .await?
            .ok_or_else(|| ApiError::internal("signup", "user vanished"))?;
        Ok(Again::Confirmed(Box::new((tx, user))))
    }

    /// The answer for a user who must confirm first: the confirmation is
    /// sent (by email or SMS) and the user returned as stored.
    async fn unconfirmed(
        &self,
        user: User,
        req: &SignupRequest,
        provider: &str,
    ) -> ApiResult<SignupOutcome> {
        let mut message_id = None;
        if provider == "email" {
            self.send_confirmation(&user, req).await?;
        } else {
            let sms = SmsRequest {
                user_id: user.id,
                kind: SmsKind::Confirmation,
                new_phone: None,
                channel: channel(&self.ctx.config, req.channel.as_deref())?,
            };
            message_id = self.otp.send_sms(sms).await?.message_id;
        }
        let user = self.ctx.store.user_by_id(user.id).await?.unwrap_or(user);
        let identities = self.ctx.store.identities_of(user.id).await?;
        Ok(SignupOutcome::User {
            user: Box::new(user),
            identities,
            message_id,
        })
    }

    pub async fn anonymous(&self, data: Map<String, Value>, aud: &str) -> ApiResult<TokenGrant> {
        let cfg = &self.ctx.config;
        if cfg.disable_signup {
            return Err(ApiError::unprocessable(
                "signup_disabled",
                "Signups not allowed for this instance",
            ));
        }
        let now = self.ctx.config.clock.now();
        let id = Uuid::new_v4();
        let new = NewUser {
            id,
            aud,
            role: cfg.jwt.default_group_name.trim(),
            email: None,
            phone: None,
            encrypted_password: None,
            email_confirmed_at: None,
            phone_confirmed_at: None,
            app_metadata: json!({}),
            user_metadata: Value::Object(data),
            is_anonymous: true,
            now,
        };
        hooks::before_user_created(&self.ctx, &new).await?;
        let mut tx = self.ctx.store.begin().await?;
        tx.insert_user(&new).await?;
        let user = tx
            .user_by_id(id)
            .await?
            .ok_or_else(|| ApiError::internal("anonymous", "user vanished"))?;
        tx.commit().await?;
        hooks::after_user_created(&self.ctx, &user).await?;
        metrics::counter!("castellan_signups_total", "provider" => "anonymous", "confirmed" => "true").increment(1);
        self.sessions.issue(user, "anonymous", vec![]).await
    }

    /// `grant_type=password`. Every way of being wrong costs one password
    /// verification and answers `invalid_credentials`.
    pub async fn password_grant(&self, g: PasswordGrant) -> ApiResult<(TokenGrant, Vec<String>)> {
        let found = self.signer(&g).await?;
        self.grant_password(g, found).await
    }

    /// A password sign-in of the account found (`None`: there is none).
    async fn grant_password(
        &self,
        g: PasswordGrant,
        (user, provider): (Option<User>, &'static str),
    ) -> ApiResult<(TokenGrant, Vec<String>)> {
        let stored = user.as_ref().and_then(|u| u.encrypted_password.clone());
        let verified = self
            .ctx
            .hasher
            .verify(&g.password, stored.as_deref())
            .await?;
        let outcome = |o: &'static str| {
            metrics::counter!("castellan_signins_total", "method" => "password", "outcome" => o)
                .increment(1)
        };
        // GoTrue tells the hook of every password tried on an account that
        // has one and is not banned, right or wrong.
        if let (Some(u), Some(_)) = (&user, &stored)
            && !u.is_banned(self.ctx.config.clock.now())
            && let Err(e) = crate::hooks::password_attempt(&self.ctx, u.id, verified.ok).await
        {
            outcome("hook_rejected");
            return Err(e);
        }
        let Some(user) = user.filter(|_| verified.ok) else {
            outcome("invalid_credentials");
            return Err(ApiError::invalid_credentials());
        };
        if user.is_banned(self.ctx.config.clock.now()) {
            outcome("banned");
            return Err(ApiError::bad_request("user_banned", "User is banned"));
        }
        if provider == "email" && user.email_confirmed_at.is_none() {
            outcome("not_confirmed");
            return Err(ApiError::bad_request(
                "email_not_confirmed",
                "Email not confirmed",
            ));
        }
        if provider == "phone" && user.phone_confirmed_at.is_none() {
            outcome("not_confirmed");
            return Err(ApiError::bad_request(
                "phone_not_confirmed",
                "Phone not confirmed",
            ));
        }
        if verified.needs_rehash
            && let Some(old) = &stored
        {
            self.rehash(user.id, old, &g.password).await?;
        }
        // Told, never in the way (GoTrue): a failed check is only logged.
        let weak = crate::pwned::strength(&self.ctx, &g.password)
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e.message, "password strength check on sign-in failed");
                Vec::new()
            });
        let grant = self
            .sessions
            .issue(
                user,
                "password",
                vec![(AuditAction::Login, Some(json!({"provider": provider})))],
            )
            .await?;
        Ok((grant, weak))
    }

    /// The admin console's sign-in: a password sign-in that only a user
    /// whose role is an admin role may make. Anyone else is answered as a
    /// wrong password after the same work, so the console tells nobody
    /// whether a password was right.
    pub async fn admin_password_grant(&self, g: PasswordGrant) -> ApiResult<TokenGrant> {
        let (user, provider) = self.signer(&g).await?;
        // Anyone else is as an address without an account: the same work,
        // statements and counters as a wrong password.
        let user = user.filter(|u| self.is_admin(u));
        Ok(self.grant_password(g, (user, provider)).await?.0)
    }

    /// Whether a user's own role (not a token's claim) is an admin role.
    fn is_admin(&self, user: &User) -> bool {
        let roles = &self.ctx.config.jwt.admin_roles;
        user.role
            .as_deref()
            .is_some_and(|r| roles.iter().any(|a| a == r))
    }

    /// The account a password sign-in names (by email or phone, each only
    /// when enabled) and its provider; `None` when there is none.
    async fn signer(&self, g: &PasswordGrant) -> ApiResult<(Option<User>, &'static str)> {
        let cfg = &self.ctx.config;
        let email = non_empty(&g.email);
        let phone = non_empty(&g.phone);
        Ok(match (email, phone) {
            (Some(_), Some(_)) => {
                return Err(ApiError::validation(
                    "Only an email address or phone number should be provided on login.",
                ));
            }
            (Some(e), None) => {
                if !cfg.external_email_enabled {
                    return Err(ApiError::unprocessable(
                        "email_provider_disabled",
                        "Email logins are disabled",
                    ));
                }
                (
                    self.ctx
                        .store
                        // ASCII rules, as addresses are stored: a KELVIN SIGN
                        // is not a `k`.
                        .user_by_email(&e.trim().to_ascii_lowercase(), &g.aud)
                        .await?,
                    "email",
                )
            }
            (None, Some(p)) => {
                if !cfg.external_phone_enabled {
                    return Err(ApiError::unprocessable(
                        "phone_provider_disabled",
                        "Phone logins are disabled",
                    ));
                }
                (
                    self.ctx
                        .store
                        .user_by_phone(&validate::normalize_phone(p), &g.aud)
                        .await?,
                    "phone",
                )
            }
            (None, None) => return Err(ApiError::validation("missing email or phone")),
        })
    }

    /// A stored hash weaker than today's parameters, replaced by one of the
    /// password just verified (unless it changed meanwhile).
    async fn rehash(&self, user_id: Uuid, old: &str, password: &str) -> ApiResult<()> {
        let new = self.ctx.hasher.hash(password).await?;
        if self
            .ctx
            .store
            .upgrade_password_hash(user_id, old, &new)
            .await?
        {
            metrics::counter!("castellan_password_rehash_total").increment(1);
        }
        Ok(())
    }

    /// The admin role a token carries (GoTrue's `requireAdminCredentials`):
    /// its `role` must be in `GOTRUE_JWT_ADMIN_ROLES`, and a token naming a
    /// session needs that session alive. A user's own token (one with a
    /// `sub`; a role key has none) goes further than GoTrue: the user's
    /// role now, not the claim minted earlier, must be an admin role (a
    /// demoted admin's tokens stop at once), and a user with a verified
    /// second factor must have used it (`aal2`), or a stolen password
    /// alone would be an admin's.
    pub async fn admin_role(&self, token: &str) -> ApiResult<String> {
        let claims: IncomingClaims = self
            .ctx
            .jwt
            .verify(token, self.ctx.config.clock.now().timestamp())?;
        let role = claims.role.clone().unwrap_or_default();
        let refused = || ApiError::forbidden("not_admin", "User not allowed");
        if !self.ctx.config.jwt.admin_roles.contains(&role) {
            return Err(refused());
        }
        let names_session = claims
            .session_id
            .as_deref()
            .is_some_and(|s| !s.is_empty() && s != "00000000-0000-0000-0000-000000000000");
        let names_user = claims.sub.as_deref().is_some_and(|s| !s.is_empty());
        if !(names_session || names_user) {
            return Ok(role);
        }
        if let Principal::User { live, .. } = self.authenticate(token).await? {
            if !self.is_admin(&live.user) {
                return Err(refused());
            }
            let has_factor = live.user.factors.iter().any(|f| f.status == "verified");
            if has_factor && claims.aal.as_deref() != Some("aal2") {
                return Err(ApiError::forbidden(
                    "insufficient_aal",
                    "An admin with a second factor must verify it first",
                ));
            }
        }
        Ok(role)
    }

    /// Verifies a bearer token and finds who it speaks for, as GoTrue's
    /// `requireAuthentication` does, through the live-session cache.
    pub async fn authenticate(&self, token: &str) -> ApiResult<Principal> {
        let claims: IncomingClaims = self
            .ctx
            .jwt
            .verify(token, self.ctx.config.clock.now().timestamp())?;
        let aud = claims
            .aud
            .as_ref()
            .and_then(|a| a.first())
            .map(str::to_string);
        let is_admin = claims
            .role
            .as_deref()
            .is_some_and(|r| self.ctx.config.jwt.admin_roles.iter().any(|a| a == r));
        if is_admin && claims.sub.as_deref().is_none_or(str::is_empty) {
            return Ok(Principal::Admin {
                role: claims.role.unwrap_or_default(),
            });
        }
        // Every access token has a role; an ID token (signed by the same
        // keys, for an OAuth client) has none and is no key to the API.
        if claims.role.as_deref().is_none_or(str::is_empty) {
            return Err(ApiError::forbidden(
                "bad_jwt",
                "invalid claim: missing role claim",
            ));
        }
        let user_id = jwt::parse_sub(claims.sub.as_deref())?;
        let session_id = match claims.session_id.as_deref() {
            None | Some("") | Some("00000000-0000-0000-0000-000000000000") => None,
            Some(s) => Some(Uuid::parse_str(s).map_err(|_| {
                ApiError::forbidden("bad_jwt", "invalid claim: session_id claim must be a UUID")
            })?),
        };
        let Some(live) = self.sessions.live(user_id, session_id).await? else {
            return Err(ApiError::forbidden(
                "user_not_found",
                "User from sub claim in JWT does not exist",
            ));
        };
        if session_id.is_some() && live.session.is_none() {
            return Err(ApiError::forbidden(
                "session_not_found",
                "Session from session_id claim in JWT does not exist",
            ));
        }
        if live.user.is_banned(self.ctx.config.clock.now()) {
            return Err(ApiError::forbidden("user_banned", "User is banned"));
        }
        Ok(Principal::User {
            live,
            session_id,
            aud,
        })
    }

    pub async fn identities(&self, user_id: Uuid) -> ApiResult<Vec<Identity>> {
        Ok(self.ctx.store.identities_of(user_id).await?)
    }

    /// `PUT /user`: metadata and password; an email or phone change is
    /// confirmed by a code sent to the new address.
    pub async fn update_user(
        &self,
        user: User,
        session_id: Option<Uuid>,
        up: UserUpdate,
    ) -> ApiResult<(User, Vec<Identity>)> {
        let (new_email, new_phone) = self.check_update(&user, &up)?;
        if let Some(p) = &up.password {
            crate::pwned::require_strong(&self.ctx, p).await?;
        }
        self.check_unique(&user, new_email.as_deref(), new_phone.as_deref())
            .await?;
        let now = self.ctx.config.clock.now();
        let new_hash = self.new_password_hash(&user, session_id, &up, now).await?;
        let password_changed = new_hash.is_some();
        let updated = self
            .write_update(&user, session_id, new_hash, &up, now)
            .await?;
        if password_changed {
            self.otp.forget_windows(user.id);
        }
        let updated = match new_email {
            Some(new_email) if user.is_anonymous && self.ctx.config.mailer_autoconfirm => {
                self.otp.change_email_now(user.id, &new_email).await?
            }
            // The change is confirmed by mail (to both addresses with secure change).
            Some(new_email) => {
                let send = SendRequest {
                    user_id: user.id,
                    kind: EmailKind::EmailChange,
                    redirect_to: up.redirect_to.clone(),
                    pkce: up.pkce.clone(),
                    actor: None,
                    generate_only: false,
                    new_email: Some(new_email),
                };
                self.otp.send(send).await?;
                self.ctx.store.user_by_id(user.id).await?.unwrap_or(updated)
            }
            None => updated,
        };
        let updated = match new_phone {
            Some(p) => self.change_phone(&user, p, up.channel.as_deref()).await?,
            None => updated,
        };
        let ids = self.ctx.store.identities_of(user.id).await?;
        Ok((updated, ids))
    }

    /// What a user's update asks that is refused outright (bad values, an
    /// `app_metadata` change by a non-admin, a password for an anonymous
    /// user); the new email and phone, when they change.
    fn check_update(
        &self,
        user: &User,
        up: &UserUpdate,
    ) -> ApiResult<(Option<String>, Option<String>)> {
        let cfg = &self.ctx.config;
        let new_email = match non_empty(&up.email) {
            Some(e) => Some(validate::email(e)?).filter(|e| e != user.email_str()),
            None => None,
        };
        let new_phone = match non_empty(&up.phone) {
            Some(p) => Some(validate::phone(p)?).filter(|p| p != user.phone_str()),
            None => None,
        };
        if up.app_metadata.is_some() {
            let legacy_admin = user.aud.as_deref() == Some(cfg.jwt.aud.as_str())
                && user.role.as_deref() == Some(cfg.jwt.admin_group_name.as_str());
            if !legacy_admin {
                return Err(ApiError::forbidden(
                    "not_admin",
                    "Updating app_metadata requires admin privileges",
                ));
            }
        }
        if up.password.is_some()
            && user.is_anonymous
            && user.email.is_none()
            && user.phone.is_none()
        {
            return Err(ApiError::unprocessable(
                "validation_failed",
                "Updating password of an anonymous user without an email or phone is not allowed",
            ));
        }
        Ok((new_email, new_phone))
    }

    /// A new email or phone that another user of the audience has.
    async fn check_unique(
        &self,
        user: &User,
        new_email: Option<&str>,
        new_phone: Option<&str>,
    ) -> ApiResult<()> {
        if let Some(p) = new_phone
            && let Some(other) = self
                .ctx
                .store
                .user_by_phone(p, user.aud.as_deref().unwrap_or_default())
                .await?
            && other.id != user.id
        {
            return Err(ApiError::unprocessable(
                "phone_exists",
                "A user with this phone number has already been registered",
            ));
        }
        if let Some(e) = new_email
            && let Some(other) = self
                .ctx
                .store
                .user_by_email(e, user.aud.as_deref().unwrap_or_default())
                .await?
            && other.id != user.id
        {
            return Err(ApiError::unprocessable(
                "email_exists",
                "A user with this email address has already been registered",
            ));
        }
        Ok(())
    }

    /// A new password's hash, once the session may set it (a nonce, or a
    /// recent sign-in) and it differs from the current one.
    async fn new_password_hash(
        &self,
        user: &User,
        session_id: Option<Uuid>,
        up: &UserUpdate,
        now: DateTime<Utc>,
    ) -> ApiResult<Option<String>> {
        // A nonce is read only when reauthentication is required (GoTrue
        // ignores one sent otherwise).
        if non_empty(&up.password).is_some() && self.needs_reauthentication(session_id, now).await?
        {
            match non_empty(&up.nonce) {
                Some(nonce) => self.consume_nonce(user, nonce).await?,
                None => {
                    return Err(ApiError::bad_request(
                        "reauthentication_needed",
                        "Password update requires reauthentication",
                    ));
                }
            }
        }
        Ok(match non_empty(&up.password) {
            Some(p) => {
                if user.has_password()
                    && self
                        .ctx
                        .hasher
                        .verify(p, user.encrypted_password.as_deref())
                        .await?
                        .ok
                {
                    return Err(ApiError::unprocessable(
                        "same_password",
                        "New password should be different from the old password.",
                    ));
                }
                Some(self.ctx.hasher.hash(p).await?)
            }
            None => None,
        })
    }

    /// The password and metadata written under the user's row lock (the
    /// password ends the other sessions), audited; the user as it is now.
    async fn write_update(
        &self,
        user: &User,
        session_id: Option<Uuid>,
        new_hash: Option<String>,
        up: &UserUpdate,
        now: DateTime<Utc>,
    ) -> ApiResult<User> {
        let mut tx = self.ctx.store.begin().await?;
        // Re-read under the row lock: a merge applies to the latest row, and
        // a concurrent update waits for this one instead of overwriting it.
        let current = tx
            .lock_user(user.id)
            .await?
            .ok_or_else(|| ApiError::not_found("user_not_found", "User not found"))?;
        if let Some(hash) = &new_hash {
            tx.set_password(user.id, hash, now).await?;
            let scope = session_id.map_or(SessionScope::All, SessionScope::AllBut);
            sessions::end(&mut tx, user.id, scope).await?;
            tx.insert_audit(
                &audit_payload(&current, AuditAction::UserUpdatedPassword, None),
                now,
            )
            .await?;
        }
        if up.data.is_some() || up.app_metadata.is_some() {
            let mut um = current.user_metadata();
            let mut am = current.app_metadata();
            if let Some(d) = &up.data {
                merge_metadata(&mut um, d);
            }
            if let Some(a) = &up.app_metadata {
                merge_metadata(&mut am, a);
            }
            tx.update_metadata(user.id, &um, &am, now).await?;
        }
        tx.insert_audit(
            &audit_payload(&current, AuditAction::UserModified, None),
            now,
        )
        .await?;
        let updated = tx
            .user_by_id(user.id)
            .await?
            .ok_or_else(|| ApiError::not_found("user_not_found", "User not found"))?;
        tx.commit().await?;
        Ok(updated)
    }

    /// A phone change: a code to the new number (`phone_change` confirms
    /// it), or, with SMS autoconfirm, the number changed at once.
    async fn change_phone(
        &self,
        user: &User,
        phone: String,
        asked: Option<&str>,
    ) -> ApiResult<User> {
        let cfg = &self.ctx.config;
        let gone = || ApiError::not_found("user_not_found", "User not found");
        if cfg.sms_autoconfirm {
            let now = cfg.clock.now();
            let mut tx = self.ctx.store.begin().await?;
            tx.lock_user(user.id).await?.ok_or_else(gone)?;
            tx.set_phone_change(user.id, &phone, now).await?;
            tx.apply_phone_change(user.id, now).await?;
            crate::otp::phone_identity(&mut tx, user.id, &phone, now).await?;
            tx.insert_audit(&audit_payload(user, AuditAction::UserModified, None), now)
                .await?;
            let updated = tx.user_by_id(user.id).await?.ok_or_else(gone)?;
            tx.commit().await?;
            return Ok(updated);
        }
        let sms = SmsRequest {
            user_id: user.id,
            kind: SmsKind::PhoneChange,
            new_phone: Some(phone),
            channel: channel(cfg, asked)?,
        };
        self.otp.send_sms(sms).await?;
        self.ctx.store.user_by_id(user.id).await?.ok_or_else(gone)
    }
}

/// What a repeated sign-up came to: answered already, or a user just
/// confirmed inside the still open transaction.
enum Again {
    Answered(SignupOutcome),
    Confirmed(Box<(Tx, User)>),
}

/// The address a sign-up is for, checked and normalized.
struct SignupAddress {
    provider: &'static str,
    email: Option<String>,
    phone: Option<String>,
}

/// The user holding a sign-up's address, if any.
async fn holder(tx: &mut Tx, addr: &SignupAddress) -> ApiResult<Option<User>> {
    Ok(match (&addr.email, &addr.phone) {
        (Some(e), _) => tx.holder_of_email(e).await?,
        (_, Some(p)) => tx.holder_of_phone(p).await?,
        _ => None,
    })
}

/// GoTrue's checks of a sign-up, in its order: the address and the
/// password it gives, or the first refusal.
async fn check_signup<'r>(
    ctx: &Ctx,
    req: &'r SignupRequest,
) -> ApiResult<(SignupAddress, &'r str)> {
    let cfg = &ctx.config;
    if cfg.disable_signup {
        return Err(ApiError::unprocessable(
            "signup_disabled",
            "Signups not allowed for this instance",
        ));
    }
    let email = non_empty(&req.email);
    let phone = non_empty(&req.phone);
    let provider = if email.is_some() { "email" } else { "phone" };
    let Some(password) = non_empty(&req.password) else {
        return Err(ApiError::validation("Signup requires a valid password"));
    };
    match req.generated_password {
        true => validate::require_strong_password(&cfg.password, password)?,
        false => crate::pwned::require_strong(ctx, password).await?,
    }
    if email.is_some() && phone.is_some() {
        return Err(ApiError::validation(
            "Only an email address or phone number should be provided on signup.",
        ));
    }
    if provider == "phone" {
        check_phone_signup(cfg, req)?;
    }
    if provider == "email" && !cfg.external_email_enabled {
        return Err(ApiError::bad_request(
            "email_provider_disabled",
            "Email signups are disabled",
        ));
    }
    if provider == "phone" && !cfg.external_phone_enabled {
        return Err(ApiError::bad_request(
            "phone_provider_disabled",
            "Phone signups are disabled",
        ));
    }
    let addr = match provider {
        "email" => SignupAddress {
            provider,
            email: Some(validate::email(email.unwrap_or_default())?),
            phone: None,
        },
        _ => SignupAddress {
            provider,
            email: None,
            phone: Some(validate::phone(phone.unwrap_or_default())?),
        },
    };
    Ok((addr, password))
}

/// The channel a phone code goes by: `sms` unless asked otherwise;
/// WhatsApp only through Twilio (as GoTrue allows).
pub fn channel(cfg: &castellan_core::Config, asked: Option<&str>) -> ApiResult<String> {
    let channel = asked.filter(|c| !c.is_empty()).unwrap_or("sms");
    let whatsapp_ok = matches!(cfg.sms.provider.as_str(), "twilio" | "twilio_verify");
    if !(channel == "sms" || (channel == "whatsapp" && whatsapp_ok)) {
        return Err(ApiError::validation(
            "Invalid channel, supported values are 'sms' or 'whatsapp'. 'whatsapp' is only supported if Twilio or Twilio Verify is used as the provider.",
        ));
    }
    Ok(channel.to_string())
}

fn check_phone_signup(cfg: &castellan_core::Config, req: &SignupRequest) -> ApiResult<()> {
    channel(cfg, req.channel.as_deref())?;
    if req.pkce.is_some() {
        return Err(ApiError::validation("PKCE not supported for phone signups"));
    }
    Ok(())
}

/// A sign-up's new user (`id`), and the data of its address's identity.
fn new_signup<'a>(
    cfg: &'a castellan_core::Config,
    (req, addr): (&'a SignupRequest, &'a SignupAddress),
    hash: &'a str,
    autoconfirm: bool,
    (id, now): (Uuid, DateTime<Utc>),
) -> (NewUser<'a>, Value) {
    let provider = addr.provider;
    // The identity's data, the sign-up's own keys beside it; GoTrue copies
    // it into the user's metadata too (confirmation then sets `email_verified`).
    let mut data = json!({"sub": id.to_string(), "email_verified": false, "phone_verified": false});
    if let Some(e) = &addr.email {
        data["email"] = json!(e);
    }
    for (k, v) in &req.data {
        if data.get(k).is_none() {
            data[k] = v.clone();
        }
    }
    let mut user_metadata = data.clone();
    if autoconfirm && provider == "email" {
        user_metadata["email_verified"] = json!(true);
    }
    let user = NewUser {
        id,
        aud: &req.aud,
        role: cfg.jwt.default_group_name.trim(),
        email: addr.email.as_deref(),
        phone: addr.phone.as_deref(),
        encrypted_password: Some(hash),
        email_confirmed_at: (autoconfirm && provider == "email").then_some(now),
        phone_confirmed_at: (autoconfirm && provider == "phone").then_some(now),
        app_metadata: json!({"provider": provider, "providers": [provider]}),
        user_metadata,
        is_anonymous: false,
        now,
    };
    (user, data)
}

/// A sign-up's new user inserted, with the identity of its address.
async fn insert_signup(
    tx: &mut Tx,
    (new, data): (NewUser<'_>, Value),
    provider: &str,
    autoconfirm: bool,
) -> ApiResult<User> {
    let (id, now) = (new.id, new.now);
    tx.insert_user(&new).await?;
    tx.insert_identity(&Identity {
        id: Uuid::new_v4(),
        provider_id: id.to_string(),
        user_id: id,
        identity_data: sqlx_json(data),
        provider: provider.into(),
        last_sign_in_at: Some(now),
        created_at: Some(now),
        updated_at: Some(now),
    })
    .await?;
    let user = tx
        .user_by_id(id)
        .await?
        .ok_or_else(|| ApiError::internal("signup", "user vanished"))?;
    if autoconfirm {
        tx.insert_audit(&audit_payload(&user, AuditAction::UserSignedUp, None), now)
            .await?;
    }
    Ok(user)
}

fn sqlx_json(v: Value) -> castellan_core::store::sqlx_types::Json<Value> {
    castellan_core::store::sqlx_types::Json(v)
}

/// GoTrue's stand-in for a repeated sign-up: a fresh id, no confirmations, the
/// request's metadata; nothing that tells the caller the address is taken.
fn obfuscate(
    real: &User,
    provider: &str,
    req: &SignupRequest,
    now: chrono::DateTime<Utc>,
) -> UserView {
    let mut u = real.clone();
    u.id = Uuid::new_v4();
    u.role = Some(String::new());
    u.aud = Some(req.aud.clone());
    u.email_change = None;
    u.created_at = Some(now);
    u.updated_at = Some(now);
    // Mirrors a real unconfirmed sign-up, whose confirmation was just sent.
    u.confirmation_sent_at = Some(now);
    u.email_confirmed_at = None;
    u.phone_confirmed_at = None;
    u.last_sign_in_at = None;
    u.email_change_sent_at = None;
    // Beyond GoTrue, which keeps these: each would tell the caller what the
    // real user has been through (an invitation, a recovery, a ban).
    u.invited_at = None;
    u.recovery_sent_at = None;
    u.phone_change = None;
    u.phone_change_sent_at = None;
    u.reauthentication_sent_at = None;
    u.banned_until = None;
    u.is_anonymous = false;
    u.raw_user_meta_data = Some(sqlx_json(Value::Object(req.data.clone())));
    u.raw_app_meta_data = Some(sqlx_json(
        json!({"provider": provider, "providers": [provider]}),
    ));
    if provider == "email" {
        u.phone = None;
    } else {
        u.email = None;
    }
    u.view(Some(&[]))
}

/// Whether a PKCE verifier answers the stored challenge (S256 unless the
/// flow said `plain`), compared in constant time.
pub(crate) fn verifier_matches(method: Option<&str>, challenge: &str, verifier: &str) -> bool {
    let computed = match method {
        Some("plain") => verifier.to_string(),
        _ => {
            use base64::Engine;
            use sha2::Digest;
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(sha2::Sha256::digest(verifier.as_bytes()))
        }
    };
    castellan_core::crypto::secure_eq(computed.as_bytes(), challenge.as_bytes())
}

/// The sign-in method a PKCE flow's session records.
fn session_method(flow_method: &str) -> &'static str {
    match flow_method {
        "email/signup" => "email/signup",
        "recovery" => "recovery",
        "magiclink" => "magiclink",
        "invite" => "invite",
        "email_change" => "email_change",
        "oauth" => "oauth",
        _ => "otp",
    }
}
