//! Second factors (TOTP, phone codes by SMS, WebAuthn authenticators):
//! enrollment, challenges,
//! verification that raises a session to aal2, unenrollment, and the
//! admin's view of them, with GoTrue's rules and errors. Beyond GoTrue: a code is accepted once per
//! factor (its time step is remembered), and a factor locks for a while
//! after repeated wrong codes, counted in the database so every process
//! sees it. The database orders what must be ordered (the factor's row
//! and its guard are locked), so no mailbox stands in front of this.

use castellan_core::hooks::Hook;
use std::sync::Arc;

use castellan_core::crypto::{jwt, otp, random_base32, secure_eq, totp};
use castellan_core::models::{AuditAction, AuditActor, User, audit_payload};
use castellan_core::store::{Budget, Challenge, Factor, FactorRow, Guard, Tx};
use castellan_core::{ApiError, ApiResult, validate};
use castellan_jobs::sms::SmsKind;
use chrono::{DateTime, Utc};
use serde_json::json;
use uuid::Uuid;

use crate::actors::rate_limiter::RateLimits;
use crate::budget::{Budgets, Draws};
use crate::context::Ctx;
use crate::refresh::reissue;
use crate::sessions::{TokenGrant, commit_and_grant, not_found};
use crate::sms_out::{self, FirstTry};

mod webauthn;
pub use webauthn::{Ceremony, WebAuthnAnswer};

/// What an enrollment answers.
pub struct Enrolled {
    pub id: Uuid,
    pub friendly_name: String,
    pub kind: EnrolledKind,
}

pub enum EnrolledKind {
    /// What an authenticator app needs.
    Totp {
        secret: String,
        uri: String,
        qr_code: String,
    },
    /// The number as the request gave it (GoTrue's answer).
    Phone { phone: String },
    /// Registered by its first challenge.
    WebAuthn,
}

/// A new factor's request.
pub struct Enroll {
    pub factor_type: String,
    pub friendly_name: String,
    pub issuer: Option<String>,
    /// For a phone factor.
    pub phone: Option<String>,
}

/// A challenge made: its id, expiry (unix seconds) and factor type, and a
/// WebAuthn factor's ceremony.
pub struct Challenged {
    pub id: Uuid,
    pub expires_at: i64,
    pub factor_type: &'static str,
    pub webauthn: Option<Ceremony>,
}

#[derive(Clone)]
pub struct Factors {
    ctx: Arc<Ctx>,
    /// The limits in force, for the SMS budget a phone challenge draws on.
    limits: RateLimits,
    budgets: Budgets,
}

fn factor_not_found() -> ApiError {
    ApiError::not_found("mfa_factor_not_found", "Factor not found")
}

fn record(op: &'static str, outcome: &'static str) {
    metrics::counter!("castellan_mfa_total", "op" => op, "outcome" => outcome).increment(1);
}

/// Counts an operation by its outcome: `ok`, or the refusal's code.
fn counted<T>(op: &'static str, r: ApiResult<T>) -> ApiResult<T> {
    record(op, r.as_ref().map_or_else(|e| e.code, |_| "ok"));
    r
}

impl Factors {
    pub fn new(ctx: Arc<Ctx>, limits: RateLimits, budgets: Budgets) -> Self {
        Self {
            ctx,
            limits,
            budgets,
        }
    }

    /// `POST /factors`.
    pub async fn enroll(&self, user: &User, session: Uuid, req: Enroll) -> ApiResult<Enrolled> {
        counted("enroll", self.enroll_once(user, session, req).await)
    }

    async fn enroll_once(&self, user: &User, session: Uuid, req: Enroll) -> ApiResult<Enrolled> {
        let cfg = &self.ctx.config.mfa;
        match req.factor_type.as_str() {
            "totp" if !cfg.totp_enroll_enabled => Err(ApiError::unprocessable(
                "mfa_totp_enroll_not_enabled",
                "MFA enroll is disabled for TOTP",
            )),
            "totp" => self.enroll_totp(user, session, req).await,
            "phone" if !cfg.phone_enroll_enabled => Err(ApiError::unprocessable(
                "mfa_phone_enroll_not_enabled",
                "MFA enroll is disabled for Phone",
            )),
            "phone" => self.enroll_phone(user, session, req).await,
            "webauthn" if !cfg.webauthn_enroll_enabled => Err(ApiError::unprocessable(
                "mfa_webauthn_enroll_not_enabled",
                "MFA enroll is disabled for WebAuthn",
            )),
            "webauthn" => self.enroll_webauthn(user, session, req).await,
            _ => Err(ApiError::validation(
                "factor_type needs to be totp, phone, or webauthn",
            )),
        }
    }

    /// A TOTP factor: a new secret, sealed at rest, and its QR code.
    async fn enroll_totp(&self, user: &User, session: Uuid, req: Enroll) -> ApiResult<Enrolled> {
        let account = user.email_str();
        if account.is_empty() {
            // GoTrue's TOTP label is the email; a user without one cannot enroll.
            return Err(ApiError::unprocessable(
                "validation_failed",
                "A TOTP factor needs the user's email address",
            ));
        }
        let issuer = match req.issuer.filter(|i| !i.is_empty()) {
            Some(i) => i,
            None => site_host(&self.ctx.config.site_url),
        };
        castellan_core::validate::short_text("issuer", &issuer, 255)?;
        // Made before any transaction: a label too long for a QR code is the
        // caller's to shorten (a long address escapes to three times its size).
        let secret = totp::new_secret();
        let uri = totp::uri(&issuer, account, &secret);
        let qr_code = totp::qr_svg(&uri).ok_or_else(|| {
            ApiError::validation("The issuer and email address are too long for a QR code")
        })?;
        let (tx, mut f) = self
            .begin_enroll(user, session, &req.friendly_name, "totp", None)
            .await?;
        let sealed = self
            .ctx
            .config
            .db_encryption
            .seal(&f.id.to_string(), &secret);
        f.secret = Some(sealed);
        self.finish_enroll(tx, user, &f, json!({"factor_id": f.id}))
            .await?;
        let kind = EnrolledKind::Totp {
            secret,
            uri,
            qr_code,
        };
        Ok(enrolled(f, kind))
    }

    /// A phone factor: GoTrue's rules (one verified factor per number; an
    /// unverified one for the same number is replaced).
    async fn enroll_phone(&self, user: &User, session: Uuid, req: Enroll) -> ApiResult<Enrolled> {
        let given =
            req.phone.clone().filter(|p| !p.is_empty()).ok_or_else(|| {
                ApiError::validation("Phone number required to enroll Phone factor")
            })?;
        let phone = validate::phone(&given)?;
        let (tx, mut f) = self
            .begin_enroll(user, session, &req.friendly_name, "phone", Some(&phone))
            .await?;
        f.phone = Some(phone);
        let traits = json!({"factor_id": f.id, "factor_type": "phone"});
        self.finish_enroll(tx, user, &f, traits).await?;
        Ok(enrolled(f, EnrolledKind::Phone { phone: given }))
    }

    /// A WebAuthn factor: nothing is registered until its first challenge
    /// is answered.
    async fn enroll_webauthn(
        &self,
        user: &User,
        session: Uuid,
        req: Enroll,
    ) -> ApiResult<Enrolled> {
        let (tx, f) = self
            .begin_enroll(user, session, &req.friendly_name, "webauthn", None)
            .await?;
        let traits = json!({"factor_id": f.id, "factor_type": "webauthn"});
        self.finish_enroll(tx, user, &f, traits).await?;
        Ok(enrolled(f, EnrolledKind::WebAuthn))
    }

    /// An enrollment's transaction, past GoTrue's checks (stale factors
    /// purged first; for a phone factor, an unverified one of the number
    /// replaced, a verified one refused), and the new unverified factor.
    async fn begin_enroll(
        &self,
        user: &User,
        session: Uuid,
        name: &str,
        factor_type: &str,
        phone: Option<&str>,
    ) -> ApiResult<(Tx, Factor)> {
        let now = self.ctx.config.clock.now();
        let mut tx = self.ctx.store.begin().await?;
        let expiry =
            chrono::Duration::from_std(self.ctx.config.mfa.factor_expiry).unwrap_or_default();
        tx.purge_stale_factors(now - expiry).await?;
        let mut factors = tx.user_factors(user.id).await?;
        if let Some(phone) = phone {
            for f in factors.iter().filter(|f| f.phone.as_deref() == Some(phone)) {
                if f.verified() {
                    return Err(ApiError::unprocessable(
                        "mfa_verified_factor_exists",
                        "A verified phone factor already exists, unenroll the existing factor to continue",
                    ));
                }
                tx.delete_factor(f).await?;
            }
            factors.retain(|f| f.phone.as_deref() != Some(phone));
        }
        self.may_enroll(&mut tx, &factors, name, session).await?;
        let f = Factor {
            id: Uuid::new_v4(),
            user_id: user.id,
            friendly_name: Some(name.to_string()),
            factor_type: factor_type.into(),
            status: "unverified".into(),
            created_at: now,
            updated_at: now,
            secret: None,
            phone: None,
            last_challenged_at: None,
            web_authn_credential: None,
        };
        Ok((tx, f))
    }

    async fn finish_enroll(
        &self,
        mut tx: Tx,
        user: &User,
        f: &Factor,
        traits: serde_json::Value,
    ) -> ApiResult<()> {
        tx.insert_factor(f).await?;
        let audit = audit_payload(user, AuditAction::FactorInProgress, Some(traits));
        tx.insert_audits(&[audit], f.created_at).await?;
        tx.commit().await?;
        Ok(())
    }

    /// GoTrue's checks before a new factor, in its order.
    async fn may_enroll(
        &self,
        tx: &mut Tx,
        factors: &[Factor],
        name: &str,
        session: Uuid,
    ) -> ApiResult<()> {
        // Indexed with the user (a long name fails PostgreSQL's index).
        castellan_core::validate::short_text("friendly_name", name, 255)?;
        let cfg = &self.ctx.config.mfa;
        if factors
            .iter()
            .any(|f| f.friendly_name.as_deref().unwrap_or_default() == name)
        {
            return Err(ApiError::unprocessable(
                "mfa_factor_name_conflict",
                format!("A factor with the friendly name {name:?} for this user already exists"),
            ));
        }
        let verified = factors.iter().filter(|f| f.verified()).count();
        if factors.len() >= cfg.max_enrolled_factors || verified >= cfg.max_verified_factors {
            return Err(ApiError::unprocessable(
                "too_many_enrolled_mfa_factors",
                "Maximum number of verified factors reached, unenroll to continue",
            ));
        }
        if verified > 0 && tx.session_aal(session).await? != "aal2" {
            return Err(ApiError::forbidden(
                "insufficient_aal",
                "AAL2 required to enroll a new factor",
            ));
        }
        Ok(())
    }

    async fn factor(&self, tx: &mut Tx, user: Uuid, factor: Uuid) -> ApiResult<Factor> {
        tx.user_factor(user, factor)
            .await?
            .ok_or_else(factor_not_found)
    }

    fn verify_enabled(&self, f: &Factor) -> ApiResult<()> {
        let cfg = &self.ctx.config.mfa;
        match f.factor_type.as_str() {
            "totp" if cfg.totp_verify_enabled => Ok(()),
            "phone" if cfg.phone_verify_enabled => Ok(()),
            "phone" => Err(ApiError::unprocessable(
                "mfa_phone_verify_not_enabled",
                "MFA verification is disabled for Phone",
            )),
            "webauthn" if cfg.webauthn_verify_enabled => Ok(()),
            "webauthn" => Err(ApiError::unprocessable(
                "mfa_webauthn_verify_not_enabled",
                "MFA verification is disabled for WebAuthn",
            )),
            _ => Err(ApiError::unprocessable(
                "mfa_totp_verify_not_enabled",
                "MFA verification is disabled for TOTP",
            )),
        }
    }

    /// `POST /factors/{id}/challenge`; a phone factor's code goes by SMS
    /// (or WhatsApp, `channel`).
    pub async fn challenge(
        &self,
        user: &User,
        factor: Uuid,
        ip: &str,
        channel: Option<&str>,
    ) -> ApiResult<Challenged> {
        counted(
            "challenge",
            self.challenge_once(user, factor, ip, channel).await,
        )
    }

    async fn challenge_once(
        &self,
        user: &User,
        factor: Uuid,
        ip: &str,
        channel: Option<&str>,
    ) -> ApiResult<Challenged> {
        let now = self.ctx.config.clock.now();
        let mut tx = self.ctx.store.begin().await?;
        let f = self.factor(&mut tx, user.id, factor).await?;
        self.verify_enabled(&f)?;
        let id = Uuid::new_v4();
        let budget = self.limits.settings().await.sms_sent;
        let mut draws = Draws::new(&self.budgets, Budget::Sms, budget);
        let sms = match f.factor_type.as_str() {
            "phone" => Some(
                self.phone_code(&mut tx, &mut draws, (user, &f), (id, channel), now)
                    .await?,
            ),
            _ => None,
        };
        let (webauthn, state) = match f.factor_type.as_str() {
            "webauthn" => {
                let (ceremony, state) = self.webauthn_ceremony(&mut tx, user, &f).await?;
                (Some(ceremony), Some(state))
            }
            _ => (None, None),
        };
        let sealed = sms.as_ref().map(|(_, sealed)| sealed.as_str());
        tx.insert_challenge(&f, id, ip, (sealed, state.as_deref()), now)
            .await?;
        let audit = audit_payload(
            user,
            AuditAction::ChallengeCreated,
            Some(json!({"factor_id": f.id, "factor_status": f.status})),
        );
        tx.insert_audits(&[audit], now).await?;
        tx.commit().await?;
        draws.committed();
        if let Some((job, _)) = sms
            && let FirstTry::Refused(refusal) = sms_out::send_first(&self.ctx, &job).await?
        {
            // As if never made: the challenge goes, and with it the window.
            let mut tx = self.ctx.store.begin().await?;
            tx.delete_challenge(id).await?;
            tx.set_last_challenged(f.id, f.last_challenged_at).await?;
            tx.commit().await?;
            return Err(refusal);
        }
        let expiry =
            chrono::Duration::from_std(self.ctx.config.mfa.challenge_expiry).unwrap_or_default();
        Ok(Challenged {
            id,
            expires_at: (now + expiry).timestamp(),
            factor_type: match f.factor_type.as_str() {
                "phone" => "phone",
                "webauthn" => "webauthn",
                _ => "totp",
            },
            webauthn,
        })
    }

    /// A phone challenge's code: the factor's window checked and a message
    /// drawn from the SMS budget, then the job (held, in `tx`) and the code
    /// sealed for the challenge row.
    async fn phone_code(
        &self,
        tx: &mut Tx,
        draws: &mut Draws<'_>,
        (user, f): (&User, &Factor),
        (challenge, channel): (Uuid, Option<&str>),
        now: DateTime<Utc>,
    ) -> ApiResult<(castellan_jobs::sms::SmsJob, String)> {
        let cfg = &self.ctx.config;
        let channel = crate::accounts::channel(cfg, channel)?;
        if let Some(last) = f.last_challenged_at {
            let window = cfg.rate_limits.mfa_phone_window;
            crate::budget::window_open(window, "over_sms_send_rate_limit", last, now)?;
        }
        // Beyond GoTrue: factor codes count against the deployment's SMS
        // budget, so enrolling numbers is no way to send SMS at will.
        sms_out::provider_ready(&self.ctx)?;
        draws.spend(tx, now).await?;
        // A provider that checks codes itself is sent none of ours.
        let code = match self.ctx.sms.checks_codes() {
            true => random_base32(32),
            false => otp(cfg.mfa.phone_otp_length),
        };
        let phone = f.phone.as_deref().unwrap_or_default();
        let job = sms_out::job(
            &self.ctx,
            (SmsKind::Mfa, user),
            phone,
            &cfg.mfa.phone_template,
            &code,
            &channel,
        );
        sms_out::hold(&self.ctx, tx, &job).await?;
        let sealed = cfg.db_encryption.seal(&challenge.to_string(), &code);
        Ok((job, sealed))
    }

    /// `POST /factors/{id}/verify`: on success the session is aal2 and
    /// gets fresh tokens; the user's other aal1 sessions end.
    pub async fn verify(&self, v: Verify<'_>) -> ApiResult<TokenGrant> {
        counted("verify", self.verify_once(v).await)
    }

    async fn verify_once(&self, v: Verify<'_>) -> ApiResult<TokenGrant> {
        // A WebAuthn factor is answered by a ceremony, not a code (the
        // factor is looked up only when the body says so).
        if (v.code.is_empty() || v.webauthn.is_some()) && self.is_webauthn(&v).await? {
            return self.verify_webauthn(&v).await;
        }
        if v.code.is_empty() {
            return Err(ApiError::validation("Code needs to be non-empty"));
        }
        let approved = self.provider_check(&v).await?;
        if crate::hooks::on(&self.ctx, Hook::MfaVerificationAttempt) {
            self.attempt_hook(&v, approved).await?;
        }
        let now = self.ctx.config.clock.now();
        let mut tx = self.ctx.store.begin().await?;
        let (f, checked) = self.check(&mut tx, &v, approved, now).await?;
        let step = match checked {
            Ok(step) => step,
            Err(refused) => {
                // What the refusal changed (an expired challenge deleted,
                // a wrong code counted) is kept though the request fails.
                tx.commit().await?;
                return Err(refused);
            }
        };
        let last_step = match step {
            Some(step) => Some(step),
            None => tx.factor_guard(f.id).await?.last_step,
        };
        tx.set_factor_guard(
            f.id,
            &Guard {
                last_step,
                failures: 0,
                locked_until: None,
            },
        )
        .await?;
        // GoTrue's AMR methods: `totp`, `mfa/phone`.
        let method = if f.factor_type == "phone" {
            "mfa/phone"
        } else {
            "totp"
        };
        self.raise(tx, &v, &f, method, now).await
    }

    async fn is_webauthn(&self, v: &Verify<'_>) -> ApiResult<bool> {
        let factors = self.ctx.store.factors_of(v.user.id).await?;
        Ok(factors
            .iter()
            .any(|f| f.id == v.factor && f.factor_type == "webauthn"))
    }

    /// A WebAuthn factor's verification: the challenge's ceremony answered
    /// (a challenge is answered once, right or wrong).
    async fn verify_webauthn(&self, v: &Verify<'_>) -> ApiResult<TokenGrant> {
        let answer = webauthn::well_formed(v.webauthn)?;
        let now = self.ctx.config.clock.now();
        let mut tx = self.ctx.store.begin().await?;
        let f = self.factor(&mut tx, v.user.id, v.factor).await?;
        self.verify_enabled(&f)?;
        let c = match self
            .check_challenge(&mut tx, &f, v.challenge, v.ip, now)
            .await?
        {
            Ok(c) => c,
            Err(refused) => {
                tx.commit().await?;
                return Err(refused);
            }
        };
        let mut guard = tx.factor_guard(f.id).await?;
        let accepted = match self.webauthn_answer(&c, answer, &f, guard.last_step) {
            Ok(a) => a,
            Err(refused) => {
                tx.delete_challenge(c.id).await?;
                tx.commit().await?;
                return Err(refused);
            }
        };
        guard.last_step = Some(accepted.counter);
        tx.set_factor_guard(f.id, &guard).await?;
        tx.set_webauthn_credential(&f, &accepted.credential, accepted.aaguid, now)
            .await?;
        self.raise(tx, v, &f, "mfa/webauthn", now).await
    }

    /// A verification's success: the challenge spent, the factor verified,
    /// the session aal2 with the method in its `amr` and fresh tokens; the
    /// user's other aal1 sessions and unverified factors of the type go.
    async fn raise(
        &self,
        mut tx: Tx,
        v: &Verify<'_>,
        f: &Factor,
        method: &'static str,
        now: DateTime<Utc>,
    ) -> ApiResult<TokenGrant> {
        tx.verified(f, v.challenge, now).await?;
        tx.add_amr(v.session, method, now).await?;
        tx.raise_session(v.user.id, v.session, f.id).await?;
        let audit = audit_payload(
            v.user,
            AuditAction::VerificationAttempted,
            Some(
                json!({"factor_id": f.id, "challenge_id": v.challenge, "factor_type": f.factor_type}),
            ),
        );
        tx.insert_audits(&[audit], now).await?;
        // Read after the factor is verified and before the other unverified
        // ones go: the user JSON lists what GoTrue's does.
        let c = tx.session_context(v.session).await?.ok_or_else(not_found)?;
        let token = reissue(&self.ctx, &mut tx, &c, now).await?;
        tx.drop_unverified_factors(v.user.id, &f.factor_type)
            .await?;
        let grant = commit_and_grant(&self.ctx, tx, c, token, method, now).await?;
        metrics::counter!("castellan_signins_total", "method" => method, "outcome" => "ok")
            .increment(1);
        Ok(grant)
    }

    /// With the MFA verification attempt hook on, the code is checked
    /// first on its own (a wrong one counted and answered here) and the hook
    /// told, outside any transaction; it may refuse even a right code. A
    /// right code is then checked again, and spent, by the verification.
    async fn attempt_hook(&self, v: &Verify<'_>, approved: Option<bool>) -> ApiResult<()> {
        let now = self.ctx.config.clock.now();
        let mut tx = self.ctx.store.begin().await?;
        let (f, checked) = self.check(&mut tx, v, approved, now).await?;
        tx.commit().await?;
        // A refused challenge or a locked-out factor had no code checked:
        // nothing to tell.
        if let Err(e) = &checked
            && e.code != "mfa_verification_failed"
        {
            return Err(e.clone());
        }
        let factor = (f.id, f.factor_type.as_str());
        crate::hooks::mfa_attempt(&self.ctx, v.user.id, factor, checked.is_ok()).await?;
        checked.map(|_| ())
    }

    /// The factor, and its challenge and code checked in `tx`: the matched
    /// step, or the refusal (what it changed is in `tx`, to be kept).
    async fn check(
        &self,
        tx: &mut Tx,
        v: &Verify<'_>,
        approved: Option<bool>,
        now: DateTime<Utc>,
    ) -> ApiResult<(Factor, Result<Option<i64>, ApiError>)> {
        let f = self.factor(tx, v.user.id, v.factor).await?;
        self.verify_enabled(&f)?;
        let checked = match self.check_challenge(tx, &f, v.challenge, v.ip, now).await? {
            Ok(c) => self.check_code(tx, &f, &c, v.code, approved, now).await?,
            Err(refused) => Err(refused),
        };
        Ok((f, checked))
    }

    /// GoTrue's challenge rules: this factor's, from the same address, not
    /// yet used, not expired (an expired one is deleted in `tx`).
    async fn check_challenge(
        &self,
        tx: &mut Tx,
        f: &Factor,
        challenge: Uuid,
        ip: &str,
        now: DateTime<Utc>,
    ) -> ApiResult<Result<Challenge, ApiError>> {
        let Some(c) = tx.challenge_of(f.id, challenge).await? else {
            return Ok(Err(ApiError::unprocessable(
                "mfa_factor_not_found",
                "MFA factor with the provided challenge ID not found",
            )));
        };
        if c.verified_at.is_some() || c.ip_address != ip {
            return Ok(Err(ApiError::unprocessable(
                "mfa_ip_address_mismatch",
                "Challenge and verify IP addresses mismatch.",
            )));
        }
        let expiry =
            chrono::Duration::from_std(self.ctx.config.mfa.challenge_expiry).unwrap_or_default();
        if now > c.created_at + expiry {
            tx.delete_challenge(c.id).await?;
            return Ok(Err(ApiError::unprocessable(
                "mfa_challenge_expired",
                format!(
                    "MFA challenge {} has expired, verify against another challenge or create a new challenge.",
                    c.id
                ),
            )));
        }
        Ok(Ok(c))
    }

    /// With a provider that checks codes itself (Twilio Verify), a phone
    /// factor's code is asked about there, before any transaction opens.
    async fn provider_check(&self, v: &Verify<'_>) -> ApiResult<Option<bool>> {
        if !self.ctx.sms.checks_codes() {
            return Ok(None);
        }
        let factors = self.ctx.store.factors_of(v.user.id).await?;
        let Some(phone) = factors
            .iter()
            .find(|f| f.id == v.factor && f.factor_type == "phone")
            .and_then(|f| f.phone.clone())
        else {
            return Ok(None);
        };
        match self.ctx.sms.check_code(&phone, v.code).await {
            Ok(approved) => Ok(Some(approved)),
            Err(e) => Err(ApiError::unavailable("sms provider", e)),
        }
    }

    /// The code against the factor (its TOTP secret, or the code its phone
    /// challenge sent) and guard: the matched TOTP step (none for a phone
    /// code), or the refusal (a wrong, replayed or locked-out code) with
    /// the guard already updated in `tx`.
    async fn check_code(
        &self,
        tx: &mut Tx,
        f: &Factor,
        challenge: &Challenge,
        code: &str,
        approved: Option<bool>,
        now: DateTime<Utc>,
    ) -> ApiResult<Result<Option<i64>, ApiError>> {
        let mut guard = tx.factor_guard(f.id).await?;
        if guard.locked_until.is_some_and(|t| now < t) {
            let left = (guard.locked_until.unwrap_or(now) - now)
                .num_seconds()
                .max(1) as u64;
            return Ok(Err(ApiError::too_many_requests(
                "mfa_verification_rejected",
                "Too many wrong codes for this factor; try again later",
                left,
            )));
        }
        let (good, wrong) = if f.factor_type == "phone" {
            let sent = self
                .ctx
                .config
                .db_encryption
                .open(
                    &challenge.id.to_string(),
                    challenge.otp_code.as_deref().unwrap_or_default(),
                )
                .map_err(|e| ApiError::internal("phone challenge code", e))?;
            let good = approved
                .unwrap_or_else(|| !sent.is_empty() && secure_eq(sent.as_bytes(), code.as_bytes()));
            (good.then_some(None), "Invalid MFA Phone code entered")
        } else {
            let secret = self
                .ctx
                .config
                .db_encryption
                .open(&f.id.to_string(), f.secret.as_deref().unwrap_or_default())
                .map_err(|e| ApiError::internal("totp secret", e))?;
            let step = totp::matching_step(&secret, code, now.timestamp().max(0) as u64)
                .map(|s| s as i64)
                // A code is good once: its step, or an earlier one, was used.
                .filter(|s| guard.last_step.is_none_or(|last| *s > last));
            (step.map(Some), "Invalid TOTP code entered")
        };
        if let Some(step) = good {
            return Ok(Ok(step));
        }
        guard.failures += 1;
        let lock = self.ctx.config.rate_limits.mfa_lockout;
        if guard.failures >= i64::from(lock.failures) {
            let lockout = chrono::Duration::from_std(lock.lasts).unwrap_or_default();
            guard.locked_until = Some(now + lockout);
            guard.failures = 0;
            record("lockout", "locked");
        }
        tx.set_factor_guard(f.id, &guard).await?;
        Ok(Err(ApiError::unprocessable(
            "mfa_verification_failed",
            wrong,
        )))
    }

    /// `DELETE /factors/{id}`: a verified factor only from an aal2 session.
    pub async fn unenroll(&self, user: &User, session: Uuid, factor: Uuid) -> ApiResult<Uuid> {
        counted("unenroll", self.unenroll_once(user, session, factor).await)
    }

    async fn unenroll_once(&self, user: &User, session: Uuid, factor: Uuid) -> ApiResult<Uuid> {
        let now = self.ctx.config.clock.now();
        let mut tx = self.ctx.store.begin().await?;
        let f = self.factor(&mut tx, user.id, factor).await?;
        let c = tx.session_context(session).await?.ok_or_else(not_found)?;
        let level = jwt::aal(c.amr.iter().map(|(m, _)| m.as_str()));
        if f.verified() && level != "aal2" {
            return Err(ApiError::unprocessable(
                "insufficient_aal",
                "AAL2 required to unenroll verified factor",
            ));
        }
        tx.delete_factor(&f).await?;
        let audit = audit_payload(
            user,
            AuditAction::FactorUnenrolled,
            Some(json!({"factor_id": f.id, "factor_status": f.status, "session_id": session})),
        );
        tx.insert_audits(&[audit], now).await?;
        tx.commit().await?;
        Ok(f.id)
    }

    /// `PUT /admin/users/{id}/factors/{factor_id}`: a new friendly name.
    pub async fn rename(
        &self,
        admin: &AuditActor,
        user: Uuid,
        factor: Uuid,
        name: Option<String>,
    ) -> ApiResult<FactorRow> {
        let now = self.ctx.config.clock.now();
        let mut tx = self.ctx.store.begin().await?;
        let mut f = self.factor(&mut tx, user, factor).await?;
        if let Some(name) = name.filter(|n| !n.is_empty()) {
            let taken = tx
                .user_factors(user)
                .await?
                .iter()
                .any(|o| o.id != f.id && o.friendly_name.as_deref() == Some(name.as_str()));
            if taken {
                return Err(ApiError::unprocessable(
                    "mfa_factor_name_conflict",
                    format!(
                        "A factor with the friendly name {name:?} for this user already exists"
                    ),
                ));
            }
            tx.rename_factor(&f, &name, now).await?;
            f.friendly_name = Some(name);
            f.updated_at = now;
        }
        let audit = audit_payload(
            admin.clone(),
            AuditAction::FactorUpdated,
            Some(json!({"user_id": user, "factor_id": f.id, "factor_type": f.factor_type})),
        );
        tx.insert_audits(&[audit], now).await?;
        tx.commit().await?;
        Ok(f.row())
    }

    /// `DELETE /admin/users/{id}/factors/{factor_id}`: no level needed; the
    /// sessions it raised go back to aal1. Answers the deleted factor.
    pub async fn delete(
        &self,
        admin: &AuditActor,
        user: Uuid,
        factor: Uuid,
    ) -> ApiResult<FactorRow> {
        let now = self.ctx.config.clock.now();
        let mut tx = self.ctx.store.begin().await?;
        let f = self.factor(&mut tx, user, factor).await?;
        tx.delete_factor(&f).await?;
        let audit = audit_payload(
            admin.clone(),
            AuditAction::FactorDeleted,
            Some(json!({"user_id": user, "factor_id": f.id})),
        );
        tx.insert_audits(&[audit], now).await?;
        tx.commit().await?;
        Ok(f.row())
    }
}

/// A verification's inputs.
pub struct Verify<'a> {
    pub user: &'a User,
    pub session: Uuid,
    pub factor: Uuid,
    pub challenge: Uuid,
    pub code: &'a str,
    pub ip: &'a str,
    /// A WebAuthn factor's answer.
    pub webauthn: Option<&'a WebAuthnAnswer>,
}

fn enrolled(f: Factor, kind: EnrolledKind) -> Enrolled {
    Enrolled {
        id: f.id,
        friendly_name: f.friendly_name.unwrap_or_default(),
        kind,
    }
}

/// GoTrue's default issuer: the site URL's host (with its port).
fn site_host(site_url: &str) -> String {
    let rest = site_url.split_once("://").map_or(site_url, |(_, r)| r);
    rest.split(['/', '?', '#'])
        .next()
        .unwrap_or_default()
        .to_string()
}
