//! Links: the flows a user starts by asking for an email — password
//! recovery, a magic link or code (`/otp`, `/magiclink`), a resend. Each
//! decides whom to send what, and answers the same whether or not the
//! address has an account, so none of them tells who is registered.

use std::sync::Arc;
use std::time::Instant;

use castellan_core::models::{Pkce, User};
use castellan_core::{ApiError, ApiResult, validate};
use castellan_jobs::EmailKind;
use serde_json::{Map, Value};

use crate::accounts::{Accounts, SignupOutcome, SignupRequest};
use crate::even_timing::{Branch, EvenTiming};
use crate::otp::{OtpIssuer, SendRequest, SmsRequest, SmsSent};
use castellan_jobs::sms::SmsKind;

/// A request for a magic link or code by email (`/otp`, `/magiclink`).
#[derive(Debug, Default)]
pub struct MagicLinkRequest {
    pub email: String,
    pub create_user: bool,
    pub data: Map<String, Value>,
    pub pkce: Option<Pkce>,
    pub redirect_to: String,
    pub aud: String,
}

/// A request for a code by SMS (`/otp` with a phone).
#[derive(Debug, Default)]
pub struct SmsOtpRequest {
    pub phone: String,
    pub channel: Option<String>,
    pub create_user: bool,
    pub data: Map<String, Value>,
    pub aud: String,
}

/// What `/resend` may send again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resend {
    Signup,
    EmailChange,
    Sms,
    PhoneChange,
}

impl Resend {
    pub fn parse(s: &str) -> Option<Resend> {
        Some(match s {
            "signup" => Resend::Signup,
            "email_change" => Resend::EmailChange,
            "sms" => Resend::Sms,
            "phone_change" => Resend::PhoneChange,
            _ => return None,
        })
    }
}

/// Who a resend is for: an email address or a phone number, as given.
#[derive(Debug, Clone)]
pub enum Recipient {
    Email(String),
    Phone(String),
}

#[derive(Clone)]
pub struct Links {
    accounts: Accounts,
    otp: OtpIssuer,
    recover_timing: Arc<EvenTiming>,
    otp_timing: Arc<EvenTiming>,
    resend_timing: Arc<EvenTiming>,
}

impl Links {
    pub fn new(accounts: Accounts, otp: OtpIssuer) -> Self {
        Self {
            accounts,
            otp,
            recover_timing: Arc::default(),
            otp_timing: Arc::default(),
            resend_timing: Arc::default(),
        }
    }

    fn email_enabled(&self, status: u16) -> ApiResult<()> {
        if self.accounts.ctx().config.external_email_enabled {
            Ok(())
        } else {
            Err(ApiError::new(
                status,
                "email_provider_disabled",
                "Email logins are disabled",
            ))
        }
    }

    /// `POST /recover`: a recovery link for a known address; nothing otherwise.
    pub async fn recover(
        &self,
        email: &str,
        aud: &str,
        redirect_to: String,
        pkce: Option<Pkce>,
    ) -> ApiResult<()> {
        self.email_enabled(400)?;
        if email.trim().is_empty() {
            return Err(ApiError::validation("Password recovery requires an email"));
        }
        let email = validate::email(email)?;
        let start = Instant::now();
        let store = &self.accounts.ctx().store;
        let (branch, sent) = match store.user_by_email(&email, aud).await? {
            Some(user) => {
                let send = SendRequest::new(user.id, EmailKind::Recovery, redirect_to, pkce);
                (Branch::Known, self.otp.send(send).await.map(drop))
            }
            None => (Branch::Unknown, Ok(())),
        };
        self.recover_timing.settle(start, branch).await;
        sent
    }

    /// `POST /otp` by email: a confirmed user gets a magic link; an unknown
    /// or unconfirmed address is signed up first (unless `create_user` is
    /// false), so it receives the confirmation instead.
    pub async fn magic_link(&self, req: MagicLinkRequest) -> ApiResult<()> {
        let cfg = &self.accounts.ctx().config;
        self.email_enabled(422)?;
        if !cfg.mailer.magic_link_enabled {
            return Err(ApiError::unprocessable(
                "email_provider_disabled",
                "Login with magic link is disabled",
            ));
        }
        let signups_off = || ApiError::unprocessable("otp_disabled", "Signups not allowed for otp");
        let email = match validate::email(&req.email) {
            Ok(e) => e,
            // GoTrue answers a bad address with `otp_disabled` when it may not create users.
            Err(_) if !req.create_user => return Err(signups_off()),
            Err(e) => return Err(e),
        };
        // A lost race for a new address sees the winner's user the second
        // time; an address still taken then is held in another audience,
        // whose user gets nothing and whose existence the answer hides.
        let start = Instant::now();
        for _ in 0..2 {
            match self.magic_link_once(&req, &email).await {
                Err(e) if e.code == "user_already_exists" => continue,
                Ok(branch) => {
                    self.otp_timing.settle(start, branch).await;
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
        metrics::counter!("castellan_otp_other_audience_total").increment(1);
        self.otp_timing.settle(start, Branch::Known).await;
        Ok(())
    }

    /// Whether the address had a confirmed user (a magic link) or not (a
    /// sign-up and its confirmation).
    async fn magic_link_once(&self, req: &MagicLinkRequest, email: &str) -> ApiResult<Branch> {
        let cfg = &self.accounts.ctx().config;
        let store = &self.accounts.ctx().store;
        let magic = |user_id| {
            SendRequest::new(
                user_id,
                EmailKind::MagicLink,
                req.redirect_to.clone(),
                req.pkce.clone(),
            )
        };
        match store.user_by_email(email, &req.aud).await? {
            Some(u) if u.email_confirmed_at.is_some() => {
                self.otp.send(magic(u.id)).await?;
                Ok(Branch::Known)
            }
            None if !req.create_user => Err(ApiError::unprocessable(
                "otp_disabled",
                "Signups not allowed for otp",
            )),
            _ => {
                // Sign up (or re-send the confirmation) with a password nobody knows.
                let signup = SignupRequest {
                    email: Some(email.to_string()),
                    password: Some(validate::random_password(&cfg.password)),
                    generated_password: true,
                    data: req.data.clone(),
                    pkce: req.pkce.clone(),
                    redirect_to: req.redirect_to.clone(),
                    aud: req.aud.clone(),
                    ..Default::default()
                };
                if let SignupOutcome::Session(g) = self.accounts.signup(signup).await? {
                    // Autoconfirm made a confirmed user: it gets the magic link.
                    self.otp.send(magic(g.user.id)).await?;
                }
                Ok(Branch::Unknown)
            }
        }
    }

    /// `POST /otp` by phone: a confirmed number gets a sign-in code; an
    /// unknown or unconfirmed one is signed up first (unless `create_user`
    /// is false), which sends its confirmation code.
    pub async fn sms_otp(&self, req: SmsOtpRequest) -> ApiResult<SmsSent> {
        let cfg = &self.accounts.ctx().config;
        if !cfg.external_phone_enabled {
            return Err(ApiError::bad_request(
                "phone_provider_disabled",
                "Unsupported phone provider",
            ));
        }
        let signups_off = || ApiError::unprocessable("otp_disabled", "Signups not allowed for otp");
        let phone = match validate::phone(&req.phone) {
            Ok(p) => p,
            Err(_) if !req.create_user => return Err(signups_off()),
            Err(e) => return Err(e),
        };
        let channel = crate::accounts::channel(cfg, req.channel.as_deref())?;
        crate::sms_out::provider_ready(self.accounts.ctx())?;
        let store = &self.accounts.ctx().store;
        let start = Instant::now();
        let (branch, sent) = match store.user_by_phone(&phone, &req.aud).await? {
            Some(u) if u.phone_confirmed_at.is_some() => {
                let sms = SmsRequest {
                    user_id: u.id,
                    kind: SmsKind::Confirmation,
                    new_phone: None,
                    channel,
                };
                (Branch::Known, self.otp.send_sms(sms).await)
            }
            None if !req.create_user => return Err(signups_off()),
            _ => {
                let signup = SignupRequest {
                    phone: Some(phone),
                    password: Some(validate::random_password(&cfg.password)),
                    generated_password: true,
                    data: req.data.clone(),
                    channel: Some(channel.clone()),
                    aud: req.aud.clone(),
                    ..Default::default()
                };
                let sent = match self.accounts.signup(signup).await {
                    // Autoconfirm made a confirmed user: it gets a sign-in code.
                    Ok(SignupOutcome::Session(g)) => {
                        let sms = SmsRequest {
                            user_id: g.user.id,
                            kind: SmsKind::Confirmation,
                            new_phone: None,
                            channel,
                        };
                        self.otp.send_sms(sms).await
                    }
                    // The sign-up sent the confirmation code: its message id,
                    // as a known number's answer carries one.
                    Ok(SignupOutcome::User { message_id, .. }) => Ok(SmsSent { message_id }),
                    Ok(SignupOutcome::Obfuscated(_)) => Ok(SmsSent::default()),
                    // A number held in another audience: its user gets nothing.
                    Err(e) if e.code == "user_already_exists" => Ok(SmsSent::default()),
                    Err(e) => Err(e),
                };
                (Branch::Unknown, sent)
            }
        };
        self.otp_timing.settle(start, branch).await;
        sent
    }

    /// `POST /resend`: the signup confirmation, a pending email change's
    /// confirmations, or a phone code again; nothing when there is nothing
    /// to resend. The answer and its time are the same for a known and an
    /// unknown recipient (`test-otp` only for a configured test number).
    pub async fn resend(
        &self,
        what: Resend,
        to: Recipient,
        aud: &str,
        redirect_to: String,
        pkce: Option<Pkce>,
    ) -> ApiResult<Option<String>> {
        let to = self.resend_recipient(to)?;
        let start = Instant::now();
        let store = &self.accounts.ctx().store;
        let user = match &to {
            Recipient::Email(e) => store.user_by_email(e, aud).await,
            Recipient::Phone(p) => store.user_by_phone(p, aud).await,
        };
        let resent = match user {
            Ok(Some(u)) => self.resend_to(what, u, redirect_to, pkce).await,
            Ok(None) => Ok(Resent::Nothing),
            Err(e) => Err(e.into()),
        };
        let branch = match resent {
            Ok(Resent::Nothing) => Branch::Unknown,
            _ => Branch::Known,
        };
        self.resend_timing.settle(start, branch).await;
        resent.map(|r| match r {
            Resent::Sent(message_id) => message_id,
            Resent::Nothing => None,
        })
    }

    /// The recipient of a resend, validated, if its provider is enabled.
    fn resend_recipient(&self, to: Recipient) -> ApiResult<Recipient> {
        Ok(match to {
            Recipient::Email(e) => {
                self.email_enabled(400)?;
                Recipient::Email(validate::email(&e)?)
            }
            Recipient::Phone(p) => {
                if !self.accounts.ctx().config.external_phone_enabled {
                    return Err(ApiError::bad_request(
                        "phone_provider_disabled",
                        "Phone logins are disabled",
                    ));
                }
                Recipient::Phone(validate::phone(&p)?)
            }
        })
    }

    /// What a known user gets again, if anything is pending.
    async fn resend_to(
        &self,
        what: Resend,
        u: User,
        redirect_to: String,
        pkce: Option<Pkce>,
    ) -> ApiResult<Resent> {
        let sms = |kind, new_phone| SmsRequest {
            user_id: u.id,
            kind,
            new_phone,
            channel: "sms".into(),
        };
        let send = match what {
            Resend::Signup if u.email_confirmed_at.is_none() => {
                SendRequest::new(u.id, EmailKind::Confirmation, redirect_to, pkce)
            }
            // A pending email change: both confirmations again, from the start.
            Resend::EmailChange if u.email_change.as_deref().is_some_and(|e| !e.is_empty()) => {
                SendRequest {
                    new_email: u.email_change.clone(),
                    ..SendRequest::new(u.id, EmailKind::EmailChange, redirect_to, pkce)
                }
            }
            Resend::Sms if u.phone_confirmed_at.is_none() => {
                let sent = self.otp.send_sms(sms(SmsKind::Confirmation, None)).await?;
                return Ok(Resent::Sent(sent.message_id));
            }
            Resend::PhoneChange if u.phone_change.as_deref().is_some_and(|p| !p.is_empty()) => {
                let change = sms(SmsKind::PhoneChange, u.phone_change.clone());
                let sent = self.otp.send_sms(change).await?;
                return Ok(Resent::Sent(sent.message_id));
            }
            // Already confirmed, or no change pending.
            _ => return Ok(Resent::Nothing),
        };
        self.otp.send(send).await?;
        Ok(Resent::Sent(None))
    }
}

/// Whether a resend sent anything (for even timing), and the test number's id.
enum Resent {
    Nothing,
    Sent(Option<String>),
}
