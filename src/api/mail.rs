//! The endpoints that send a code or link: `/recover`, `/otp`,
//! `/magiclink` and `/resend`, by email or SMS. They answer alike whether
//! or not the address has an account.

use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use castellan_core::{ApiError, validate};
use castellan_service::links::{MagicLinkRequest, Recipient, Resend, SmsOtpRequest};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::api::{AudienceHeader, Empty};
use crate::error::{HttpResult, Refusals};
use crate::extract::{JsonBody, RedirectQuery, RedirectTo, RequestAud};
use crate::server::AppState;

#[derive(Deserialize, Default, ToSchema)]
#[serde(default)]
pub struct RecoverBody {
    #[schema(format = Email)]
    email: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
}

/// `POST /recover`: a password-recovery link for a known address.
#[utoipa::path(
    post,
    path = "/recover",
    tag = "email",
    params(AudienceHeader, RedirectQuery),
    request_body = RecoverBody,
    responses((status = 200, body = Empty), Refusals)
)]
pub async fn recover(
    State(st): State<AppState>,
    RedirectTo(redirect_to): RedirectTo,
    RequestAud(aud): RequestAud,
    JsonBody(b): JsonBody<RecoverBody>,
) -> HttpResult {
    let pkce = validate::pkce(
        b.code_challenge.as_deref(),
        b.code_challenge_method.as_deref(),
    )?;
    st.links
        .recover(
            b.email.as_deref().unwrap_or_default(),
            &aud,
            redirect_to,
            pkce,
        )
        .await?;
    Ok(Json(Empty {}).into_response())
}

/// What a request that sends an SMS answers: the provider's message id
/// when it gave one (`test-otp` for a test number); `{}` otherwise.
#[derive(Serialize, ToSchema)]
pub struct Sent {
    #[serde(skip_serializing_if = "Option::is_none")]
    message_id: Option<String>,
}

impl From<Option<String>> for Sent {
    fn from(message_id: Option<String>) -> Self {
        Sent { message_id }
    }
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(default)]
pub struct OtpBody {
    #[schema(format = Email)]
    email: Option<String>,
    phone: Option<String>,
    /// Sign an unknown address up first (the default).
    create_user: Option<bool>,
    /// `user_metadata` for a user made here.
    #[schema(value_type = Option<Object>)]
    data: Option<Map<String, Value>>,
    channel: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
}

/// `POST /otp`: a sign-in link and code by email. An unknown or
/// unconfirmed address is signed up first (unless `create_user` is false),
/// so it receives the confirmation email instead.
#[utoipa::path(
    post,
    path = "/otp",
    tag = "email",
    params(AudienceHeader, RedirectQuery),
    request_body = OtpBody,
    responses((status = 200, body = Sent), Refusals)
)]
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
        let sent = st
            .links
            .sms_otp(SmsOtpRequest {
                phone: b.phone.unwrap_or_default(),
                channel: b.channel,
                create_user: b.create_user.unwrap_or(true),
                data: b.data.unwrap_or_default(),
                aud,
            })
            .await?;
        return Ok(Json(Sent::from(sent.message_id)).into_response());
    }
    if empty(&b.email) {
        return Err(ApiError::validation("One of email or phone must be set").into());
    }
    st.links
        .magic_link(MagicLinkRequest {
            email: b.email.unwrap_or_default(),
            create_user: b.create_user.unwrap_or(true),
            data: b.data.unwrap_or_default(),
            pkce,
            redirect_to,
            aud,
        })
        .await?;
    Ok(Json(Empty {}).into_response())
}

/// `POST /magiclink`: GoTrue's older name for `POST /otp` by email.
#[utoipa::path(
    post,
    path = "/magiclink",
    tag = "email",
    params(AudienceHeader, RedirectQuery),
    request_body = OtpBody,
    responses((status = 200, body = Empty), Refusals)
)]
pub async fn magiclink(
    st: State<AppState>,
    redirect_to: RedirectTo,
    aud: RequestAud,
    body: JsonBody<OtpBody>,
) -> HttpResult {
    otp(st, redirect_to, aud, body).await
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(default)]
pub struct ResendBody {
    /// `signup`, `email_change`, `sms` or `phone_change`.
    #[serde(rename = "type")]
    kind: Option<String>,
    #[schema(format = Email)]
    email: Option<String>,
    phone: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
}

/// `POST /resend`: the signup confirmation again. `{}` when there is
/// nothing to resend (unknown user, already confirmed, no pending change).
#[utoipa::path(
    post,
    path = "/resend",
    tag = "email",
    params(AudienceHeader, RedirectQuery),
    request_body = ResendBody,
    responses((status = 200, body = Sent), Refusals)
)]
pub async fn resend(
    State(st): State<AppState>,
    RedirectTo(redirect_to): RedirectTo,
    RequestAud(aud): RequestAud,
    JsonBody(b): JsonBody<ResendBody>,
) -> HttpResult {
    let Some(what) = Resend::parse(b.kind.as_deref().unwrap_or_default()) else {
        return Err(ApiError::validation(
            "Missing one of these types: signup, email_change, sms, phone_change",
        )
        .into());
    };
    let empty = |s: &Option<String>| s.as_deref().is_none_or(str::is_empty);
    let pkce = match what {
        Resend::Signup | Resend::EmailChange => validate::pkce(
            b.code_challenge.as_deref(),
            b.code_challenge_method.as_deref(),
        )?,
        _ => None,
    };
    if what == Resend::Signup && empty(&b.email) {
        return Err(ApiError::validation("Type provided requires an email address").into());
    }
    if what == Resend::Sms && empty(&b.phone) {
        return Err(ApiError::validation("Type provided requires a phone number").into());
    }
    let to = match (
        b.email.filter(|e| !e.is_empty()),
        b.phone.filter(|p| !p.is_empty()),
    ) {
        (Some(_), Some(_)) => {
            return Err(ApiError::validation(
                "Only an email address or phone number should be provided.",
            )
            .into());
        }
        (Some(e), None) => Recipient::Email(e),
        (None, Some(p)) => Recipient::Phone(p),
        (None, None) => {
            return Err(ApiError::validation("Missing email address or phone number").into());
        }
    };
    let message_id = st.links.resend(what, to, &aud, redirect_to, pkce).await?;
    Ok(Json(Sent::from(message_id)).into_response())
}
