//! The endpoints that send an email: `/recover`, `/otp` and `/magiclink`.
//! They answer `{}` whether or not the address has an account.

use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use castellan_actors::accounts::{SignupOutcome, SignupRequest};
use castellan_actors::otp_issuer::SendRequest;
use castellan_core::{ApiError, validate};
use castellan_jobs::EmailKind;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::error::HttpResult;
use crate::extract::{JsonBody, RedirectTo, RequestAud};
use crate::server::AppState;

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct RecoverBody {
    email: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
}

/// `POST /recover`: a password-recovery link for a known address.
pub async fn recover(
    State(st): State<AppState>,
    RedirectTo(redirect_to): RedirectTo,
    RequestAud(aud): RequestAud,
    JsonBody(b): JsonBody<RecoverBody>,
) -> HttpResult {
    if !st.ctx.config.external_email_enabled {
        return Err(
            ApiError::bad_request("email_provider_disabled", "Email logins are disabled").into(),
        );
    }
    let raw = b.email.unwrap_or_default();
    if raw.trim().is_empty() {
        return Err(ApiError::validation("Password recovery requires an email").into());
    }
    let email = validate::email(&raw)?;
    let pkce = validate::pkce(
        b.code_challenge.as_deref(),
        b.code_challenge_method.as_deref(),
    )?;
    if let Some(user) = st
        .ctx
        .store
        .user_by_email(&email, &aud)
        .await
        .map_err(ApiError::from)?
    {
        st.actors
            .otp
            .send(SendRequest::new(
                user.id,
                EmailKind::Recovery,
                redirect_to,
                pkce,
            ))
            .await?;
    }
    Ok(Json(json!({})).into_response())
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct OtpBody {
    email: Option<String>,
    phone: Option<String>,
    create_user: Option<bool>,
    data: Option<Map<String, Value>>,
    channel: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
}

/// `POST /otp` (and `/magiclink`): a sign-in link and code by email. An
/// unknown or unconfirmed address is signed up first (unless `create_user`
/// is false), so it receives the confirmation email instead.
pub async fn otp(
    State(st): State<AppState>,
    RedirectTo(redirect_to): RedirectTo,
    RequestAud(aud): RequestAud,
    JsonBody(b): JsonBody<OtpBody>,
) -> HttpResult {
    let empty = |s: &Option<String>| s.as_deref().is_none_or(str::is_empty);
    if !empty(&b.email) && !empty(&b.phone) {
        return Err(ApiError::validation(
            "Only an email address or phone number should be provided",
        )
        .into());
    }
    if !empty(&b.email) && !empty(&b.channel) {
        return Err(ApiError::validation("Channel should only be specified with Phone OTP").into());
    }
    let pkce = validate::pkce(
        b.code_challenge.as_deref(),
        b.code_challenge_method.as_deref(),
    )?;
    if !empty(&b.phone) {
        return Err(
            ApiError::bad_request("phone_provider_disabled", "Unsupported phone provider").into(),
        );
    }
    if empty(&b.email) {
        return Err(ApiError::validation("One of email or phone must be set").into());
    }
    let cfg = &st.ctx.config;
    if !cfg.external_email_enabled {
        return Err(ApiError::unprocessable(
            "email_provider_disabled",
            "Email logins are disabled",
        )
        .into());
    }
    if !cfg.mailer.magic_link_enabled {
        return Err(ApiError::unprocessable(
            "email_provider_disabled",
            "Login with magic link is disabled",
        )
        .into());
    }
    let create_user = b.create_user.unwrap_or(true);
    let email = match validate::email(b.email.as_deref().unwrap_or_default()) {
        Ok(e) => e,
        // GoTrue answers a bad address with `otp_disabled` when it may not create users.
        Err(_) if !create_user => {
            return Err(
                ApiError::unprocessable("otp_disabled", "Signups not allowed for otp").into(),
            );
        }
        Err(e) => return Err(e.into()),
    };
    let user = st
        .ctx
        .store
        .user_by_email(&email, &aud)
        .await
        .map_err(ApiError::from)?;
    match user {
        Some(u) if u.email_confirmed_at.is_some() => {
            st.actors
                .otp
                .send(SendRequest::new(
                    u.id,
                    EmailKind::MagicLink,
                    redirect_to,
                    pkce,
                ))
                .await?;
        }
        None if !create_user => {
            return Err(
                ApiError::unprocessable("otp_disabled", "Signups not allowed for otp").into(),
            );
        }
        _ => {
            // Sign up (or re-send the confirmation) with a password nobody knows.
            let password = validate::random_password(&cfg.password);
            let req = SignupRequest {
                email: Some(email),
                password: Some(password),
                data: b.data.unwrap_or_default(),
                pkce: pkce.clone(),
                redirect_to: redirect_to.clone(),
                aud,
                ..Default::default()
            };
            if let SignupOutcome::Session(g) = st.accounts.signup(req).await? {
                // Autoconfirm made a confirmed user: it gets the magic link.
                st.actors
                    .otp
                    .send(SendRequest::new(
                        g.user.id,
                        EmailKind::MagicLink,
                        redirect_to,
                        pkce,
                    ))
                    .await?;
            }
        }
    }
    Ok(Json(json!({})).into_response())
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct ResendBody {
    #[serde(rename = "type")]
    kind: Option<String>,
    email: Option<String>,
    phone: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
}

/// `POST /resend`: the signup confirmation again. `{}` when there is
/// nothing to resend (unknown user, already confirmed, no pending change).
pub async fn resend(
    State(st): State<AppState>,
    RedirectTo(redirect_to): RedirectTo,
    RequestAud(aud): RequestAud,
    JsonBody(b): JsonBody<ResendBody>,
) -> HttpResult {
    let kind = b.kind.as_deref().unwrap_or_default();
    if !matches!(kind, "signup" | "email_change" | "sms" | "phone_change") {
        return Err(ApiError::validation(
            "Missing one of these types: signup, email_change, sms, phone_change",
        )
        .into());
    }
    let empty = |s: &Option<String>| s.as_deref().is_none_or(str::is_empty);
    let pkce = match kind {
        "signup" | "email_change" => validate::pkce(
            b.code_challenge.as_deref(),
            b.code_challenge_method.as_deref(),
        )?,
        _ => None,
    };
    if kind == "signup" && empty(&b.email) {
        return Err(ApiError::validation("Type provided requires an email address").into());
    }
    if kind == "sms" && empty(&b.phone) {
        return Err(ApiError::validation("Type provided requires a phone number").into());
    }
    if !empty(&b.email) && !empty(&b.phone) {
        return Err(ApiError::validation(
            "Only an email address or phone number should be provided.",
        )
        .into());
    }
    let cfg = &st.ctx.config;
    let user = if !empty(&b.email) {
        if !cfg.external_email_enabled {
            return Err(ApiError::bad_request(
                "email_provider_disabled",
                "Email logins are disabled",
            )
            .into());
        }
        let email = validate::email(b.email.as_deref().unwrap_or_default())?;
        st.ctx
            .store
            .user_by_email(&email, &aud)
            .await
            .map_err(ApiError::from)?
    } else if !empty(&b.phone) {
        if !cfg.external_phone_enabled {
            return Err(ApiError::bad_request(
                "phone_provider_disabled",
                "Phone logins are disabled",
            )
            .into());
        }
        let phone = validate::phone(b.phone.as_deref().unwrap_or_default())?;
        st.ctx
            .store
            .user_by_phone(&phone, &aud)
            .await
            .map_err(ApiError::from)?
    } else {
        return Err(ApiError::validation("Missing email address or phone number").into());
    };
    match (kind, user) {
        ("signup", Some(u)) if u.email_confirmed_at.is_none() => {
            st.actors
                .otp
                .send(SendRequest::new(
                    u.id,
                    EmailKind::Confirmation,
                    redirect_to,
                    pkce,
                ))
                .await?;
        }
        // A pending email change: both confirmations again, from the start.
        ("email_change", Some(u)) if u.email_change.as_deref().is_some_and(|e| !e.is_empty()) => {
            let new_email = u.email_change.clone();
            st.actors
                .otp
                .send(SendRequest {
                    user_id: u.id,
                    kind: EmailKind::EmailChange,
                    redirect_to,
                    pkce,
                    actor: None,
                    generate_only: false,
                    new_email,
                })
                .await?;
        }
        ("sms", Some(u)) if u.phone_confirmed_at.is_none() => {
            return Err(ApiError::unprocessable(
                "sms_send_failed",
                "SMS delivery is not available on this server yet",
            )
            .into());
        }
        // Unknown user, already confirmed, or no change pending (phone
        // changes are not available yet, so none ever is).
        _ => {}
    }
    Ok(Json(json!({})).into_response())
}
