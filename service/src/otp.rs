//! One-time tokens: created, sent by email or SMS, and verified (the
//! `OtpIssuer` service; the send windows are the
//! [`crate::actors::otp_issuer`] actor's). A token, its
//! `one_time_tokens` row and the email job that carries it commit in one
//! transaction, or none of them does. Verification consumes a token in one
//! statement, so a link or code used twice at the same moment works once.

use castellan_core::hooks::Hook;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwapOption;
use ractor::ActorRef;

use castellan_core::crypto::{otp, secure_eq};
use castellan_core::models::{AuditAction, AuditActor, Pkce, User, audit_payload};
use castellan_core::store::{Budget, TokenType, Tx};
use castellan_core::{ApiError, ApiResult};
use castellan_jobs::sms::{SmsJob, SmsKind};
use castellan_jobs::{EmailJob, EmailKind};
use chrono::{DateTime, Utc};
use serde_json::json;
use uuid::Uuid;

use crate::actors::mailbox::Mail;
use crate::actors::otp_issuer::OtpMsg;
use crate::actors::rate_limiter::RateLimits;
use crate::budget::{Budgets, Draws};
use crate::context::Ctx;
use crate::sms_out::{self, FirstTry};

#[derive(Debug, Clone)]
pub struct SendRequest {
    pub user_id: Uuid,
    pub kind: EmailKind,
    pub redirect_to: String,
    pub pkce: Option<Pkce>,
    /// Who asked (the user themself unless an admin invited).
    pub actor: Option<AuditActor>,
    /// Only make the token and link (`/admin/generate_link`): no email, no
    /// window, no budget.
    pub generate_only: bool,
    /// For an email change: the address to change to.
    pub new_email: Option<String>,
}

impl SendRequest {
    /// An email the user asked for themself: no PKCE, no generated-only link.
    pub fn new(user_id: Uuid, kind: EmailKind, redirect_to: String, pkce: Option<Pkce>) -> Self {
        Self {
            user_id,
            kind,
            redirect_to,
            pkce,
            actor: None,
            generate_only: false,
            new_email: None,
        }
    }
}

/// A code to send by SMS (or WhatsApp).
#[derive(Debug, Clone)]
pub struct SmsRequest {
    pub user_id: Uuid,
    pub kind: SmsKind,
    /// For a phone change: the number to change to (E.164 digits).
    pub new_phone: Option<String>,
    /// `sms` or `whatsapp`.
    pub channel: String,
}

/// A code sent by SMS: the provider's message id when it gave one
/// (`test-otp` for a test number).
#[derive(Debug, Clone, Default)]
pub struct SmsSent {
    pub message_id: Option<String>,
}

/// A token that was issued: what the email carried.
#[derive(Debug, Clone)]
pub struct Issued {
    /// Which token this is (an email change issues two).
    pub token_type: TokenType,
    pub otp: String,
    pub hashed_token: String,
    pub action_link: String,
}

/// What a verification presents.
#[derive(Debug, Clone)]
pub enum Presented {
    /// The hash from a link (`token_hash`), possibly `pkce_`-prefixed.
    Hash(String),
    /// A typed code, with the address (email, or phone as E.164 digits) it went to.
    Code { address: String, code: String },
    /// A phone code the SMS provider itself approved (Twilio Verify): the
    /// outstanding token of the type is spent without comparing hashes.
    Approved { address: String },
}

/// The `type` of a verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyType {
    Signup,
    Invite,
    Recovery,
    MagicLink,
    Email,
    EmailChange,
    /// A code sent by SMS: sign-in or phone confirmation.
    Sms,
    PhoneChange,
}

impl VerifyType {
    pub fn parse(s: &str) -> Option<VerifyType> {
        Some(match s {
            "signup" => VerifyType::Signup,
            "invite" => VerifyType::Invite,
            "recovery" => VerifyType::Recovery,
            "magiclink" => VerifyType::MagicLink,
            "email" => VerifyType::Email,
            "email_change" => VerifyType::EmailChange,
            "sms" => VerifyType::Sms,
            "phone_change" => VerifyType::PhoneChange,
            _ => return None,
        })
    }
    /// Sent by SMS: typed codes only, with the SMS expiry.
    pub fn by_phone(self) -> bool {
        matches!(self, VerifyType::Sms | VerifyType::PhoneChange)
    }
    fn token_types(self) -> &'static [TokenType] {
        match self {
            VerifyType::Signup | VerifyType::Invite => &[TokenType::ConfirmationToken],
            VerifyType::Recovery | VerifyType::MagicLink => &[TokenType::RecoveryToken],
            VerifyType::Email => &[TokenType::ConfirmationToken, TokenType::RecoveryToken],
            VerifyType::EmailChange => &[
                TokenType::EmailChangeTokenCurrent,
                TokenType::EmailChangeTokenNew,
            ],
            VerifyType::Sms => &[TokenType::ConfirmationToken],
            VerifyType::PhoneChange => &[TokenType::PhoneChangeToken],
        }
    }
    /// The type reported back (for `email`, the kind of token it matched).
    fn resolved(self, tt: TokenType) -> &'static str {
        match (self, tt) {
            (VerifyType::Signup, _) => "signup",
            (VerifyType::Invite, _) => "invite",
            (VerifyType::Recovery, _) => "recovery",
            (VerifyType::MagicLink, _) => "magiclink",
            (VerifyType::Email, TokenType::ConfirmationToken) => "signup",
            (VerifyType::Email, _) => "magiclink",
            (VerifyType::EmailChange, _) => "email_change",
            (VerifyType::Sms, _) => "sms",
            (VerifyType::PhoneChange, _) => "phone_change",
        }
    }
}

/// A successful verification.
#[derive(Debug, Clone)]
pub struct Verified {
    pub user: User,
    /// `signup`, `invite`, `recovery` or `magiclink`.
    pub vtype: &'static str,
    /// For a PKCE token: the code to exchange at `/token?grant_type=pkce`.
    pub code: Option<String>,
    /// The first of an email change's two confirmations: nothing to sign in
    /// with yet, only this message.
    pub pending: Option<&'static str>,
}

/// What GoTrue answers to the first half of a secure email change.
pub const EMAIL_CHANGE_HALF: &str =
    "Confirmation link accepted. Please proceed to confirm link sent to the other email";

/// Per kind: token type, link path key, link `type`, PKCE method, audit.
fn kind_facts(
    kind: EmailKind,
) -> (
    TokenType,
    &'static str,
    &'static str,
    &'static str,
    AuditAction,
) {
    match kind {
        EmailKind::Confirmation => (
            TokenType::ConfirmationToken,
            "confirmation",
            "signup",
            "email/signup",
            AuditAction::UserConfirmationRequested,
        ),
        EmailKind::Invite => (
            TokenType::ConfirmationToken,
            "invite",
            "invite",
            "invite",
            AuditAction::UserInvited,
        ),
        EmailKind::MagicLink => (
            TokenType::RecoveryToken,
            "recovery",
            "magiclink",
            "magiclink",
            AuditAction::UserRecoveryRequested,
        ),
        EmailKind::Recovery => (
            TokenType::RecoveryToken,
            "recovery",
            "recovery",
            "recovery",
            AuditAction::UserRecoveryRequested,
        ),
        EmailKind::EmailChange => (
            TokenType::EmailChangeTokenNew,
            "email_change",
            "email_change",
            "email_change",
            AuditAction::UserModified,
        ),
        EmailKind::Reauthentication => (
            TokenType::ReauthenticationToken,
            "",
            "",
            "",
            AuditAction::UserReauthenticateRequested,
        ),
    }
}

/// `redirect_to` is query-escaped only when it would break the query (GoTrue).
fn link(ctx: &Ctx, path_key: &str, hash: &str, link_type: &str, redirect_to: &str) -> String {
    let path = ctx
        .config
        .mailer
        .url_paths
        .get(path_key)
        .map(String::as_str)
        .unwrap_or("/verify");
    let base = url::Url::parse(&ctx.config.api_external_url)
        .and_then(|u| u.join(path))
        .map(|u| u.to_string())
        .unwrap_or_else(|_| {
            format!(
                "{}{}",
                ctx.config.api_external_url.trim_end_matches('/'),
                path
            )
        });
    let r = if redirect_to.contains(['&', '=', '#']) {
        url::form_urlencoded::byte_serialize(redirect_to.as_bytes()).collect::<String>()
    } else {
        redirect_to.to_string()
    };
    format!("{base}?token={hash}&type={link_type}&redirect_to={r}")
}

fn has_window(req: &SendRequest) -> bool {
    req.kind != EmailKind::Invite && !req.generate_only
}

/// 429 while the window since the last email of this kind is still open.
fn window_open(ctx: &Ctx, sent: DateTime<Utc>, now: DateTime<Utc>) -> ApiResult<()> {
    let window = ctx.config.rate_limits.email_window;
    crate::budget::window_open(window, "over_email_send_rate_limit", sent, now)
}

async fn send(ctx: &Ctx, draws: &mut Draws<'_>, req: &SendRequest) -> ApiResult<Vec<Issued>> {
    let now = ctx.config.clock.now();
    let (tt, path_key, link_type, flow_method, audit) = kind_facts(req.kind);
    let mut tx = ctx.store.begin().await?;
    let user = tx
        .lock_user(req.user_id)
        .await?
        .ok_or_else(|| ApiError::not_found("user_not_found", "User not found"))?;
    // An email change may come from a user with no address yet (anonymous):
    // only the new address is written to then.
    let to = user.email.clone().filter(|e| !e.is_empty());
    let to = match (to, req.kind) {
        (Some(to), _) => to,
        (None, EmailKind::EmailChange) => String::new(),
        (None, _) => return Err(ApiError::validation("The user has no email address")),
    };
    // The per-user window (invites and generated links have none).
    if has_window(req)
        && let Some(sent) = tt.sent_at(&user)
    {
        window_open(ctx, sent, now)?;
    }
    if !req.generate_only && (draws.budget.events == 0 || !ctx.config.mailer_autoconfirm) {
        draws.spend(&mut tx, now).await?;
    }
    let deliveries = deliveries(ctx, &mut tx, req, (tt, &to), draws, now).await?;
    if let (Some(p), true) = (&req.pkce, req.kind != EmailKind::Invite) {
        tx.insert_flow_state(user.id, flow_method, &p.challenge, &p.method, now)
            .await?;
    }
    let letter = Letter {
        req,
        user: &user,
        to: &to,
        path_key,
        link_type,
        now,
    };
    let mut issued = Vec::new();
    let mut jobs = Vec::new();
    for delivery in deliveries {
        let (token, job) = mail_token(ctx, &mut tx, &letter, delivery).await?;
        issued.push(token);
        jobs.push(job);
    }
    if !req.generate_only {
        queue_mail(ctx, &mut tx, user.id, jobs).await?;
    }
    if req.kind == EmailKind::Invite {
        tx.set_invited(user.id, now).await?;
    }
    let actor = req.actor.clone().unwrap_or_else(|| AuditActor::from(&user));
    tx.insert_audit(
        &audit_payload(
            actor,
            audit,
            Some(json!({"user_id": user.id, "user_email": user.email_str()})),
        ),
        now,
    )
    .await?;
    tx.commit().await?;
    Ok(issued)
}

/// Which tokens go to which address: the kind's token to the user's
/// address; for an email change, to the new address and, with secure change
/// on, the current one too (the change drawing a second email's budget).
async fn deliveries(
    ctx: &Ctx,
    tx: &mut Tx,
    req: &SendRequest,
    (tt, to): (TokenType, &str),
    draws: &mut Draws<'_>,
    now: DateTime<Utc>,
) -> ApiResult<Vec<(TokenType, String)>> {
    if req.kind != EmailKind::EmailChange {
        return Ok(vec![(tt, to.to_string())]);
    }
    let new_email = req
        .new_email
        .clone()
        .ok_or_else(|| ApiError::validation("An email change needs the new address"))?;
    tx.set_email_change(req.user_id, &new_email, now).await?;
    let mut deliveries = vec![(TokenType::EmailChangeTokenNew, new_email)];
    if ctx.config.mailer.secure_email_change_enabled && !to.is_empty() {
        deliveries.push((TokenType::EmailChangeTokenCurrent, to.to_string()));
    }
    // The second mail draws a second message.
    if deliveries.len() == 2
        && !req.generate_only
        && draws.budget.events > 0
        && !ctx.config.mailer_autoconfirm
    {
        draws.spend(tx, now).await?;
    }
    Ok(deliveries)
}

/// What every token of one send shares.
struct Letter<'a> {
    req: &'a SendRequest,
    user: &'a User,
    /// The user's address.
    to: &'a str,
    path_key: &'static str,
    link_type: &'static str,
    now: DateTime<Utc>,
}

/// One token stored for `address`, and the email that carries it.
async fn mail_token(
    ctx: &Ctx,
    tx: &mut Tx,
    l: &Letter<'_>,
    (tt, address): (TokenType, String),
) -> ApiResult<(Issued, EmailJob)> {
    let code = otp(ctx.config.mailer.otp_length);
    let plain = ctx.token_hash(&address, &code);
    let stored = match &l.req.pkce {
        Some(_) if l.req.kind != EmailKind::Invite => format!("pkce_{plain}"),
        _ => plain.clone(),
    };
    tx.set_one_time_token(l.user.id, tt, &stored, &address, l.now)
        .await?;
    tx.forget_wrong_guesses(l.user.id, tt).await?;
    let job = EmailJob {
        id: Uuid::new_v4(),
        kind: l.req.kind,
        to: address.clone(),
        token: code,
        token_hash: stored.clone(),
        confirmation_url: if l.path_key.is_empty() {
            String::new()
        } else {
            link(ctx, l.path_key, &stored, l.link_type, &l.req.redirect_to)
        },
        site_url: ctx.config.site_url.clone(),
        redirect_to: l.req.redirect_to.clone(),
        email: l.to.to_string(),
        new_email: l.req.new_email.clone().unwrap_or_default(),
        data: l.user.user_metadata(),
        message: None,
        queued_at: Some(l.now),
        hook: None,
        hook_covered: false,
    };
    let issued = Issued {
        token_type: tt,
        otp: job.token.clone(),
        hashed_token: plain,
        action_link: job.confirmation_url.clone(),
    };
    Ok((issued, job))
}

/// Queues a send's emails in `tx`, each rendered. With the send-email hook
/// on, one job carries GoTrue's payload for them all instead (an email
/// change's two codes in one call, as GoTrue makes it).
async fn queue_mail(ctx: &Ctx, tx: &mut Tx, user: Uuid, mut jobs: Vec<EmailJob>) -> ApiResult<()> {
    if crate::hooks::on(ctx, Hook::SendEmail) {
        // As it is now (an email change's new address pending).
        let user = tx
            .user_by_id(user)
            .await?
            .ok_or_else(|| ApiError::not_found("user_not_found", "User not found"))?;
        let payload = crate::hooks::send_email_payload(ctx, &user, &jobs);
        for (i, job) in jobs.iter_mut().enumerate() {
            match i {
                0 => job.hook = Some(payload.clone()),
                _ => job.hook_covered = true,
            }
        }
    }
    for mut job in jobs {
        job.message = Some(ctx.templates.render(&job));
        let attempts = ctx.config.mailer.max_attempts;
        castellan_jobs::queue::enqueue_email(tx, &job, &ctx.job_seal, attempts).await?;
    }
    Ok(())
}

/// The user's token a code is stored as, and its audit; factor codes are
/// the factor's challenge's, not the user's.
fn sms_token(kind: SmsKind) -> ApiResult<(TokenType, AuditAction)> {
    Ok(match kind {
        SmsKind::Confirmation => (
            TokenType::ConfirmationToken,
            AuditAction::UserConfirmationRequested,
        ),
        SmsKind::PhoneChange => (TokenType::PhoneChangeToken, AuditAction::UserModified),
        SmsKind::Reauthentication => (
            TokenType::ReauthenticationToken,
            AuditAction::UserReauthenticateRequested,
        ),
        SmsKind::Mfa => {
            return Err(ApiError::internal(
                "sms",
                "factor codes are sent by the factor's challenge",
            ));
        }
    })
}

/// An SMS code committed: the job that carries it (none for a test
/// number), and what to undo if the provider refuses it.
struct SmsIssued {
    job: Option<SmsJob>,
    user_id: Uuid,
    tt: TokenType,
    hash: String,
    sent_before: Option<DateTime<Utc>>,
}

/// Issues an SMS code in one transaction: the user's window and the
/// global budget checked, the token stored, and the job queued but held
/// back while the request sends it itself.
async fn issue_sms(ctx: &Ctx, draws: &mut Draws<'_>, req: &SmsRequest) -> ApiResult<SmsIssued> {
    let now = ctx.config.clock.now();
    let (tt, audit) = sms_token(req.kind)?;
    let mut tx = ctx.store.begin().await?;
    let user = tx
        .lock_user(req.user_id)
        .await?
        .ok_or_else(|| ApiError::not_found("user_not_found", "User not found"))?;
    let phone = match req.kind {
        SmsKind::PhoneChange => req.new_phone.clone().unwrap_or_default(),
        _ => user.phone_str().to_string(),
    };
    if phone.is_empty() {
        return Err(ApiError::validation("The user has no phone number"));
    }
    let sent_before = tt.sent_at(&user);
    if let Some(sent) = sent_before {
        let window = ctx.config.rate_limits.sms_window;
        crate::budget::window_open(window, "over_sms_send_rate_limit", sent, now)?;
    }
    // Test numbers get their fixed code, send nothing and spend no budget.
    let test = ctx.config.sms.test_otp(&phone, now).map(str::to_string);
    // Unlike GoTrue, the budget holds with SMS autoconfirm too: every
    // message costs, and a new number's sign-up sends one.
    if test.is_none() {
        draws.spend(&mut tx, now).await?;
    }
    // A provider that makes its own codes (Twilio Verify) is sent none of
    // ours; the token stored then only marks one as outstanding, and is
    // too long to guess.
    let code = match &test {
        Some(code) => code.clone(),
        None if ctx.sms.checks_codes() => castellan_core::crypto::random_base32(32),
        None => otp(ctx.config.sms.otp_length),
    };
    if req.kind == SmsKind::PhoneChange {
        tx.set_phone_change(user.id, &phone, now).await?;
    }
    let hash = ctx.token_hash(&phone, &code);
    tx.set_one_time_token(user.id, tt, &hash, &phone, now)
        .await?;
    tx.forget_wrong_guesses(user.id, tt).await?;
    let job = match test {
        Some(_) => None,
        None => {
            let template = &ctx.config.sms.template;
            let job = sms_out::job(
                ctx,
                (req.kind, &user),
                &phone,
                template,
                &code,
                &req.channel,
            );
            sms_out::hold(ctx, &mut tx, &job).await?;
            Some(job)
        }
    };
    let traits = json!({"channel": req.channel});
    tx.insert_audit(&audit_payload(&user, audit, Some(traits)), now)
        .await?;
    tx.commit().await?;
    Ok(SmsIssued {
        job,
        user_id: user.id,
        tt,
        hash,
        sent_before,
    })
}

/// The request's own attempt at an issued SMS; a refused message's code
/// is taken back (with its window), as if never issued.
async fn deliver_first(ctx: &Ctx, issued: SmsIssued) -> ApiResult<SmsSent> {
    let Some(job) = issued.job else {
        return Ok(SmsSent {
            message_id: Some("test-otp".into()),
        });
    };
    match sms_out::send_first(ctx, &job).await? {
        // GoTrue answers `{}` whoever the number belongs to: the provider's
        // id would tell a registered number (sent now) from an unknown one.
        FirstTry::Sent => Ok(SmsSent::default()),
        FirstTry::Queued => Ok(SmsSent::default()),
        FirstTry::Refused(refusal) => {
            let mut tx = ctx.store.begin().await?;
            tx.unsend(issued.user_id, issued.tt, &issued.hash, issued.sent_before)
                .await?;
            tx.commit().await?;
            Err(refusal)
        }
    }
}

/// One of an email change's confirmations. With secure change, the first
/// of the two only records itself; the second (or the only one) moves the
/// pending address into place.
async fn email_change_verified(
    ctx: &Ctx,
    mut tx: castellan_core::store::Tx,
    user: User,
    tt: TokenType,
    pkce: bool,
    now: chrono::DateTime<Utc>,
) -> ApiResult<Verified> {
    tx.clear_token_column(user.id, tt).await?;
    let other = if tt == TokenType::EmailChangeTokenNew {
        TokenType::EmailChangeTokenCurrent
    } else {
        TokenType::EmailChangeTokenNew
    };
    let other_pending = !tx
        .token_column(user.id, other)
        .await?
        .unwrap_or_default()
        .is_empty();
    let secure = ctx.config.mailer.secure_email_change_enabled && !ctx.config.mailer_autoconfirm;
    if secure
        && other_pending
        && tx.email_change_status(user.id).await? == 0
        && !user.email_str().is_empty()
    {
        tx.set_email_change_status(user.id, 1).await?;
        tx.commit().await?;
        return Ok(Verified {
            user,
            vtype: "email_change",
            code: None,
            pending: Some(EMAIL_CHANGE_HALF),
        });
    }
    let new_email = user.email_change.clone().unwrap_or_default();
    if new_email.is_empty() {
        return Err(expired());
    }
    apply_email(&mut tx, &user, &new_email, now).await?;
    let code = if pkce {
        Some(issue_code(&mut tx, user.id, "email_change", now).await?)
    } else {
        None
    };
    let user = tx.user_by_id(user.id).await?.ok_or_else(expired)?;
    tx.commit().await?;
    Ok(Verified {
        user,
        vtype: "email_change",
        code,
        pending: None,
    })
}

/// A confirmed phone change's identity: made, or rewritten with the number
/// (GoTrue's phone_change verification).
pub(crate) async fn phone_identity(
    tx: &mut castellan_core::store::Tx,
    user_id: Uuid,
    phone: &str,
    now: DateTime<Utc>,
) -> ApiResult<()> {
    let data = json!({"sub": user_id.to_string(), "phone": phone, "email_verified": false, "phone_verified": true});
    tx.upsert_identity(user_id, "phone", &data, now).await?;
    Ok(())
}

/// The pending email change takes effect (GoTrue's `ConfirmEmailChange`):
/// the address, confirmed if it was not (its metadata says so), the email
/// identity, every outstanding token cleared, audited.
async fn apply_email(
    tx: &mut castellan_core::store::Tx,
    user: &User,
    new_email: &str,
    now: chrono::DateTime<Utc>,
) -> ApiResult<()> {
    tx.apply_email_change(user.id, now).await?;
    if user.email_confirmed_at.is_none() {
        tx.confirm(user.id, "email", now).await?;
    }
    let data = json!({"sub": user.id.to_string(), "email": new_email, "email_verified": true, "phone_verified": false});
    tx.upsert_identity(user.id, "email", &data, now).await?;
    tx.clear_one_time_tokens(user.id).await?;
    tx.insert_audit(
        &audit_payload(
            user,
            AuditAction::UserModified,
            Some(json!({"new_email": new_email})),
        ),
        now,
    )
    .await?;
    Ok(())
}

/// A phone code accepted: the number confirmed (`sms`), or the pending
/// change moved into place (`phone_change`), as GoTrue's `smsVerify`.
async fn phone_verified(
    mut tx: castellan_core::store::Tx,
    user: User,
    vtype: VerifyType,
    now: DateTime<Utc>,
) -> ApiResult<Verified> {
    match vtype {
        VerifyType::PhoneChange => {
            let new_phone = user.phone_change.clone().unwrap_or_default();
            // Another user may have taken the number since it was asked for.
            if let Some(other) = tx.holder_of_phone(&new_phone).await?
                && other.id != user.id
            {
                return Err(ApiError::unprocessable(
                    "phone_exists",
                    "A user with this phone number has already been registered",
                ));
            }
            if !tx.apply_phone_change(user.id, now).await? {
                return Err(ApiError::forbidden(
                    "otp_expired",
                    "Token has expired or is invalid",
                ));
            }
            tx.insert_audit(&audit_payload(&user, AuditAction::UserModified, None), now)
                .await?;
            // The phone identity follows the change (a sign-up's is left as
            // it was made, as GoTrue leaves it).
            phone_identity(&mut tx, user.id, &new_phone, now).await?;
        }
        _ => {
            tx.insert_audit(
                &audit_payload(
                    &user,
                    AuditAction::UserSignedUp,
                    Some(json!({"provider": "phone"})),
                ),
                now,
            )
            .await?;
            tx.confirm(user.id, "phone", now).await?;
            tx.clear_anonymous(user.id).await?;
        }
    }
    tx.clear_one_time_tokens(user.id).await?;
    let user = tx.user_by_id(user.id).await?.ok_or_else(expired)?;
    tx.commit().await?;
    Ok(Verified {
        user,
        vtype: vtype.resolved(TokenType::ConfirmationToken),
        code: None,
        pending: None,
    })
}

/// The code of the newest PKCE flow of (user, method), issued now.
async fn issue_code(
    tx: &mut castellan_core::store::Tx,
    user_id: Uuid,
    method: &str,
    now: chrono::DateTime<Utc>,
) -> ApiResult<String> {
    tx.issue_flow_code(user_id, method, now)
        .await?
        .ok_or_else(|| {
            ApiError::bad_request(
                "flow_state_not_found",
                "invalid flow state, no valid flow state found",
            )
        })
}

/// A wrong code: counted against each token the code could have matched;
/// a token guessed at too often is void, so the right code no longer works
/// either. The count is in the database, so it holds across processes.
/// `tx` holds the user's row lock already, so guesses count one by one.
pub(crate) async fn wrong_guess(
    ctx: &Ctx,
    mut tx: castellan_core::store::Tx,
    user_id: Uuid,
    types: &[TokenType],
) -> ApiResult<()> {
    for &tt in types {
        if tx.count_wrong_guess(user_id, tt).await? >= ctx.config.mailer.otp_max_guesses {
            tx.void_token(user_id, tt).await?;
            metrics::counter!("castellan_otp_voided_total", "reason" => "too_many_guesses")
                .increment(1);
        }
    }
    tx.commit().await?;
    Ok(())
}

fn expired() -> ApiError {
    ApiError::forbidden("otp_expired", "Email link is invalid or has expired")
}

async fn verify(
    ctx: &Ctx,
    user_id: Uuid,
    vtype: VerifyType,
    presented: &Presented,
) -> ApiResult<Verified> {
    let now = ctx.config.clock.now();
    let mut tx = ctx.store.begin().await?;
    let Some((tt, pkce)) = take_presented(ctx, &mut tx, user_id, vtype, presented).await? else {
        wrong_guess(ctx, tx, user_id, vtype.token_types()).await?;
        return Err(ApiError::forbidden(
            "otp_expired",
            "Token has expired or is invalid",
        ));
    };
    let user = tx.lock_user(user_id).await?.ok_or_else(expired)?;
    let exp = if vtype.by_phone() {
        ctx.config.sms.otp_exp
    } else {
        ctx.config.mailer.otp_exp
    };
    let exp = chrono::Duration::from_std(exp).unwrap_or_default();
    if tt.sent_at(&user).is_none_or(|sent| now > sent + exp) {
        tx.commit().await?; // the expired token stays consumed
        return Err(match vtype.by_phone() {
            true => ApiError::forbidden("otp_expired", "Token has expired or is invalid"),
            false => expired(),
        });
    }
    if user.is_banned(now) {
        return Err(ApiError::forbidden("user_banned", "User is banned"));
    }
    if vtype.by_phone() {
        return phone_verified(tx, user, vtype, now).await;
    }
    if matches!(
        tt,
        TokenType::EmailChangeTokenCurrent | TokenType::EmailChangeTokenNew
    ) {
        return email_change_verified(ctx, tx, user, tt, pkce, now).await;
    }
    email_verified(ctx, tx, user, vtype, tt, pkce, now).await
}

/// What was presented, taken (single use) if it matches one of `vtype`'s
/// tokens: its type and whether a PKCE link named it; `None` for a wrong
/// code, which the caller counts.
async fn take_presented(
    ctx: &Ctx,
    tx: &mut Tx,
    user_id: Uuid,
    vtype: VerifyType,
    presented: &Presented,
) -> ApiResult<Option<(TokenType, bool)>> {
    Ok(Some(match presented {
        Presented::Hash(hash) => match tx.take_token_hash(hash, vtype.token_types()).await? {
            Some((owner, tt)) if owner == user_id => (tt, hash.starts_with("pkce_")),
            _ => return Err(expired()),
        },
        Presented::Code { address, code } => {
            // One guess at a time per user: the comparison and the count of
            // a wrong guess happen under the user's row lock, so concurrent
            // guesses cannot all read the code before the fifth voids it.
            tx.lock_user(user_id).await?.ok_or_else(expired)?;
            let hash = ctx.token_hash(address, code);
            let mut found = None;
            for &tt in vtype.token_types() {
                let stored = tx.token_column(user_id, tt).await?.unwrap_or_default();
                let pkce_hash = format!("pkce_{hash}");
                // Constant-time, against both spellings.
                let matches = !stored.is_empty()
                    && (secure_eq(stored.as_bytes(), hash.as_bytes())
                        | secure_eq(stored.as_bytes(), pkce_hash.as_bytes()));
                if matches && tx.take_token_column(user_id, tt, &stored).await? {
                    found = Some(tt);
                    break;
                }
            }
            let Some(tt) = found else {
                return Ok(None);
            };
            // A typed code always yields a session, even for a PKCE token.
            (tt, false)
        }
        Presented::Approved { .. } => {
            let tt = vtype.token_types()[0];
            let stored = tx.token_column(user_id, tt).await?.unwrap_or_default();
            if stored.is_empty() || !tx.take_token_column(user_id, tt, &stored).await? {
                return Err(ApiError::forbidden(
                    "otp_expired",
                    "Token has expired or is invalid",
                ));
            }
            (tt, false)
        }
    }))
}

/// An email token verified: the address confirmed (a sign-up, or a first
/// magic link), an invited user's password set, the user's other tokens
/// cleared, audited; a PKCE flow's code.
async fn email_verified(
    ctx: &Ctx,
    mut tx: Tx,
    user: User,
    vtype: VerifyType,
    tt: TokenType,
    pkce: bool,
    now: DateTime<Utc>,
) -> ApiResult<Verified> {
    let resolved = vtype.resolved(tt);
    let email = user.email_str().to_string();
    let audit = match tt {
        TokenType::ConfirmationToken => {
            tx.confirm(user.id, "email", now).await?;
            tx.verify_email_identities(user.id, &email, now).await?;
            AuditAction::UserSignedUp
        }
        _ if user.email_confirmed_at.is_none() => {
            tx.confirm(user.id, "email", now).await?;
            AuditAction::UserSignedUp
        }
        _ => AuditAction::Login,
    };
    if resolved == "invite" && !user.has_password() {
        // GoTrue's invited users get a random password until they set one.
        let hash = ctx
            .hasher
            .hash(&castellan_core::crypto::random_base32(64))
            .await?;
        tx.set_password(user.id, &hash, now).await?;
    }
    tx.clear_one_time_tokens(user.id).await?;
    tx.insert_audit(
        &audit_payload(&user, audit, Some(json!({"provider": "email"}))),
        now,
    )
    .await?;
    let code = if pkce {
        let method = match resolved {
            "signup" => "email/signup",
            other => other,
        };
        Some(issue_code(&mut tx, user.id, method, now).await?)
    } else {
        None
    };
    let user = tx.user_by_id(user.id).await?.ok_or_else(expired)?;
    tx.commit().await?;
    Ok(Verified {
        user,
        vtype: resolved,
        code,
        pending: None,
    })
}

/// What callers hold. Issuing and verifying run in the caller's task: the
/// database serializes what must be (the user's row lock, the single-use
/// consumption of a token), so no mailbox sits in front of them.
#[derive(Clone)]
pub struct OtpIssuer {
    ctx: Arc<Ctx>,
    actor: Arc<ArcSwapOption<ActorRef<Mail<OtpMsg>>>>,
    /// The limits in force, for the email budget an operator may change.
    limits: RateLimits,
    /// This process's draws on the email and SMS budgets.
    budgets: Budgets,
}

impl OtpIssuer {
    pub fn new(
        ctx: Arc<Ctx>,
        actor: Arc<ArcSwapOption<ActorRef<Mail<OtpMsg>>>>,
        limits: RateLimits,
    ) -> Self {
        let budgets = Budgets::new(actor.clone());
        Self {
            ctx,
            actor,
            limits,
            budgets,
        }
    }

    /// A password change reset the user's send times, as GoTrue's does:
    /// this process's windows for them go too (after the commit).
    pub fn forget_windows(&self, user: Uuid) {
        if let Some(actor) = self.actor.load_full() {
            let _ = actor.cast(Mail::new("otp_issuer", OtpMsg::Forget { user }));
        }
    }

    /// This process's draws on the budgets (for the other senders: phone factors).
    pub fn budgets(&self) -> Budgets {
        self.budgets.clone()
    }

    /// When the actor saw this user last sent this kind of token; `None`
    /// without it (restarting, or a tool): the database decides then.
    async fn last_sent(&self, user: Uuid, tt: TokenType) -> Option<DateTime<Utc>> {
        let actor = self.actor.load_full()?;
        let ask = |reply| OtpMsg::LastSent { user, tt, reply };
        crate::actors::mailbox::ask(&actor, "otp_issuer", ask)
            .await
            .flatten()
    }

    /// A handle without the actor (tools): every window is read from the database.
    pub fn standalone(ctx: Arc<Ctx>) -> Self {
        let limits = RateLimits::standalone(ctx.config.rate_limits.clone());
        Self::new(ctx, Arc::new(ArcSwapOption::empty()), limits)
    }

    fn record<T>(kind: &'static str, start: Instant, r: &ApiResult<T>) {
        metrics::counter!("castellan_otp_total", "op" => kind, "outcome" => if r.is_ok() { "ok" } else { "error" })
            .increment(1);
        metrics::histogram!("castellan_otp_seconds", "op" => kind)
            .record(start.elapsed().as_secs_f64());
    }

    pub async fn send(&self, req: SendRequest) -> ApiResult<Vec<Issued>> {
        let start = Instant::now();
        let (tt, ..) = kind_facts(req.kind);
        let now = self.ctx.config.clock.now();
        if has_window(&req)
            && let Some(sent) = self.last_sent(req.user_id, tt).await
        {
            let r = window_open(&self.ctx, sent, now);
            if r.is_err() {
                metrics::counter!("castellan_otp_window_refusals_total", "seen" => "memory")
                    .increment(1);
            }
            r?;
        }
        let budget = self.limits.settings().await.email_sent;
        let mut draws = Draws::new(&self.budgets, Budget::Email, budget);
        let r = send(&self.ctx, &mut draws, &req).await;
        if r.is_ok() {
            draws.committed();
        }
        Self::record("send", start, &r);
        if let (Ok(issued), Some(actor)) = (&r, self.actor.load_full())
            && has_window(&req)
        {
            let kinds = issued.iter().map(|i| i.token_type).collect();
            let _ = actor.cast(Mail::new(
                "otp_issuer",
                OtpMsg::Sent {
                    user: req.user_id,
                    kinds,
                    at: now,
                },
            ));
        }
        r
    }

    /// An anonymous user's new address, taken at once with mail autoconfirm
    /// on, as a sign-up would be (GoTrue's rule; others confirm by mail).
    pub async fn change_email_now(&self, user_id: Uuid, new_email: &str) -> ApiResult<User> {
        let now = self.ctx.config.clock.now();
        let gone = || ApiError::not_found("user_not_found", "User not found");
        let mut tx = self.ctx.store.begin().await?;
        let user = tx.lock_user(user_id).await?.ok_or_else(gone)?;
        tx.set_email_change(user_id, new_email, now).await?;
        apply_email(&mut tx, &user, new_email, now).await?;
        let user = tx.user_by_id(user_id).await?.ok_or_else(gone)?;
        tx.commit().await?;
        Ok(user)
    }

    /// Sends a code by SMS: issued and queued in one transaction, then sent
    /// by this request, with the queue as its retry.
    pub async fn send_sms(&self, req: SmsRequest) -> ApiResult<SmsSent> {
        sms_out::provider_ready(&self.ctx)?;
        let start = Instant::now();
        let budget = self.limits.settings().await.sms_sent;
        let mut draws = Draws::new(&self.budgets, Budget::Sms, budget);
        let r = match issue_sms(&self.ctx, &mut draws, &req).await {
            Ok(issued) => {
                draws.committed();
                deliver_first(&self.ctx, issued).await
            }
            Err(e) => Err(e),
        };
        Self::record("send_sms", start, &r);
        r
    }

    /// Verifies a link's hash or a typed code; `email` finds the user for a code.
    pub async fn verify(
        &self,
        vtype: VerifyType,
        presented: Presented,
        aud: &str,
    ) -> ApiResult<Verified> {
        let user_id = match &presented {
            // Phone codes are typed, never linked (GoTrue's answer).
            Presented::Hash(_) if vtype.by_phone() => {
                return Err(ApiError::validation("Invalid email verification type"));
            }
            Presented::Hash(h) => self.ctx.store.token_owner(h).await?,
            Presented::Code { address, .. } if vtype == VerifyType::Sms => {
                let user = self.ctx.store.user_by_phone(address, aud).await?;
                user.map(|u| u.id)
            }
            // Another user may have asked for the same number: the code's
            // hash says whose change this is (with Twilio Verify, which
            // approves per number, only one fresh asker may be approved).
            Presented::Code { address, .. }
                if vtype == VerifyType::PhoneChange && self.ctx.sms.checks_codes() =>
            {
                self.sole_phone_change_asker(address, aud).await?
            }
            // An email change's code may have gone to the new address, which
            // no user holds yet: find the user by the token instead.
            Presented::Code { address, code }
                if matches!(vtype, VerifyType::PhoneChange | VerifyType::EmailChange) =>
            {
                self.change_token_owner(vtype, address, code).await?
            }
            Presented::Code { address, .. } => self
                .ctx
                .store
                .user_by_email(address, aud)
                .await?
                .map(|u| u.id),
            // Made below, from a code.
            Presented::Approved { .. } => None,
        };
        let Some(user_id) = user_id else {
            return Err(match presented {
                Presented::Hash(_) => expired(),
                _ => ApiError::forbidden("otp_expired", "Token has expired or is invalid"),
            });
        };
        let start = Instant::now();
        let presented = self.provider_check(vtype, presented).await?;
        let r = verify(&self.ctx, user_id, vtype, &presented).await;
        Self::record("verify", start, &r);
        r
    }

    /// Whose change a typed code confirms, found by the code's hash. A code
    /// that matches none is still a wrong guess, counted against every
    /// change outstanding to the address, so guessing is bounded here too.
    async fn change_token_owner(
        &self,
        vtype: VerifyType,
        address: &str,
        code: &str,
    ) -> ApiResult<Option<Uuid>> {
        let hash = self.ctx.token_hash(address, code);
        let store = &self.ctx.store;
        if let Some(id) = store.token_owner(&hash).await? {
            return Ok(Some(id));
        }
        if let Some(id) = store.token_owner(&format!("pkce_{hash}")).await? {
            return Ok(Some(id));
        }
        for holder in store.token_holders(address, vtype.token_types()).await? {
            // Under the holder's row lock, as every guess (one lock order:
            // the user's row, then the count).
            let mut tx = store.begin().await?;
            tx.lock_user(holder).await?;
            wrong_guess(&self.ctx, tx, holder, vtype.token_types()).await?;
        }
        Ok(None)
    }

    /// Twilio Verify approves a code per number, not per user: the change
    /// it confirms must be the only fresh one to that number, else a second
    /// asker (an attacker who asked for the victim's number) could take the
    /// victim's approval. Several askers: none is confirmed until the
    /// others' requests expire.
    async fn sole_phone_change_asker(&self, phone: &str, aud: &str) -> ApiResult<Option<Uuid>> {
        let now = self.ctx.config.clock.now();
        let ttl = chrono::Duration::from_std(self.ctx.config.sms.otp_exp).unwrap_or_default();
        let askers = self
            .ctx
            .store
            .users_by_phone_change(phone, aud, now - ttl)
            .await?;
        let mut fresh = askers.iter();
        Ok(match (fresh.next(), fresh.next()) {
            (Some(only), None) => Some(only.id),
            (Some(_), Some(_)) => {
                metrics::counter!("castellan_otp_refused_total", "reason" => "several_askers")
                    .increment(1);
                None
            }
            _ => None,
        })
    }

    /// With a provider that checks codes itself, a typed phone code is
    /// asked about there (before any transaction, so no lock waits on it).
    /// A code it refuses goes on to fail here, counted as a wrong guess.
    async fn provider_check(
        &self,
        vtype: VerifyType,
        presented: Presented,
    ) -> ApiResult<Presented> {
        let now = self.ctx.config.clock.now();
        match presented {
            Presented::Code { address, code }
                if vtype.by_phone()
                    && self.ctx.sms.checks_codes()
                    && self.ctx.config.sms.test_otp(&address, now).is_none() =>
            {
                match self.ctx.sms.check_code(&address, &code).await {
                    Ok(true) => Ok(Presented::Approved { address }),
                    Ok(false) => Ok(Presented::Code { address, code }),
                    Err(e) => Err(ApiError::unavailable("sms provider", e)),
                }
            }
            other => Ok(other),
        }
    }
}
