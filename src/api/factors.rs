//! `/factors`: enroll, challenge, verify and unenroll second factors (TOTP,
//! phone and WebAuthn).

use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use castellan_core::ApiError;
use castellan_service::factors::{Enroll, EnrolledKind, Verify, WebAuthnAnswer};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::api::{TokenResponse, token_response};
use crate::error::{HttpResult, Refusals};
use crate::extract::{AuthLive, JsonBody, Own, PathParams, RawBody, parse_json};
use crate::server::AppState;

#[derive(Deserialize, Default, ToSchema)]
#[serde(default)]
pub struct EnrollBody {
    /// `totp`, `phone` or `webauthn`.
    factor_type: Option<String>,
    friendly_name: Option<String>,
    /// The name authenticator apps show; the site URL's host by default.
    issuer: Option<String>,
    /// For a phone factor: the number codes go to (E.164).
    phone: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct TotpView {
    /// SVG markup (no `data:` prefix).
    qr_code: String,
    secret: String,
    uri: String,
}

#[derive(Serialize, ToSchema)]
pub struct Enrolled {
    id: Uuid,
    #[serde(rename = "type")]
    factor_type: &'static str,
    friendly_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    totp: Option<TotpView>,
    /// A phone factor's number, as given.
    #[serde(skip_serializing_if = "Option::is_none")]
    phone: Option<String>,
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(default)]
pub struct ChallengeBody {
    /// For a phone factor: `sms` (the default) or `whatsapp`.
    channel: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ChallengeView {
    id: Uuid,
    #[serde(rename = "type")]
    factor_type: &'static str,
    /// Unix seconds.
    expires_at: i64,
    /// A WebAuthn factor's ceremony.
    #[serde(skip_serializing_if = "Option::is_none")]
    webauthn: Option<CeremonyView>,
}

/// What `navigator.credentials` is handed: `create` registers the
/// factor's authenticator, `request` asks it to sign.
#[derive(Serialize, ToSchema)]
pub struct CeremonyView {
    #[serde(rename = "type")]
    kind: &'static str,
    /// `{"publicKey": …}`, WebAuthn's JSON.
    #[schema(value_type = Object)]
    credential_options: serde_json::Value,
}

/// A WebAuthn factor's answer to its challenge.
#[derive(Deserialize, Serialize, Default, ToSchema)]
#[serde(default)]
pub struct WebAuthnBody {
    /// `create` or `request`, as the challenge said.
    #[serde(rename = "type")]
    kind: String,
    /// The `PublicKeyCredential`, WebAuthn's JSON.
    #[schema(value_type = Object)]
    credential_response: Option<serde_json::Value>,
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(default)]
pub struct VerifyBody {
    challenge_id: Option<String>,
    code: Option<String>,
    /// A WebAuthn factor's answer (no code).
    webauthn: Option<WebAuthnBody>,
}

#[derive(Serialize, ToSchema)]
pub struct Unenrolled {
    id: Uuid,
}

/// The `{factor_id}` path parameter.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct FactorPath {
    /// A UUID (anything else is 404).
    factor_id: String,
}

pub(crate) fn factor_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw)
        .map_err(|_| ApiError::not_found("validation_failed", "factor_id must be an UUID"))
}

/// The signed-in, non-anonymous user and the session of the token.
fn holder(auth: &AuthLive) -> Result<(&castellan_core::models::User, Uuid), ApiError> {
    let user = &auth.live.user;
    if user.is_anonymous {
        return Err(ApiError::forbidden(
            "no_authorization",
            "Anonymous user not allowed to perform these actions",
        ));
    }
    let session = auth.session_id.ok_or_else(|| {
        ApiError::unauthorized("no_authorization", "A valid session is required for MFA")
    })?;
    Ok((user, session))
}

/// The address a challenge is bound to.
pub(crate) fn client_ip() -> String {
    castellan_core::client::current()
        .ip
        .map_or_else(|| "0.0.0.0".into(), |ip| ip.to_string())
}

#[utoipa::path(
    post,
    path = "/factors",
    tag = "mfa",
    operation_id = "enroll_factor",
    request_body = EnrollBody,
    security(("bearer" = [])),
    responses((status = 200, body = Enrolled), Refusals)
)]
pub async fn enroll(
    State(st): State<AppState>,
    Own(auth): Own<AuthLive>,
    JsonBody(b): JsonBody<EnrollBody>,
) -> HttpResult {
    let (user, session) = holder(&auth)?;
    let req = Enroll {
        factor_type: b.factor_type.unwrap_or_default(),
        friendly_name: b.friendly_name.unwrap_or_default(),
        issuer: b.issuer,
        phone: b.phone,
    };
    let e = st.factors.enroll(user, session, req).await?;
    let (factor_type, totp, phone) = match e.kind {
        EnrolledKind::Totp {
            secret,
            uri,
            qr_code,
        } => (
            "totp",
            Some(TotpView {
                qr_code,
                secret,
                uri,
            }),
            None,
        ),
        EnrolledKind::Phone { phone } => ("phone", None, Some(phone)),
        EnrolledKind::WebAuthn => ("webauthn", None, None),
    };
    Ok(Json(Enrolled {
        id: e.id,
        factor_type,
        friendly_name: e.friendly_name,
        totp,
        phone,
    })
    .into_response())
}

#[utoipa::path(
    post,
    path = "/factors/{factor_id}/challenge",
    tag = "mfa",
    operation_id = "challenge_factor",
    params(FactorPath),
    request_body = ChallengeBody,
    security(("bearer" = [])),
    responses((status = 200, body = ChallengeView), Refusals)
)]
pub async fn challenge(
    State(st): State<AppState>,
    Own(auth): Own<AuthLive>,
    PathParams(FactorPath { factor_id: raw }): PathParams<FactorPath>,
    RawBody(bytes): RawBody,
) -> HttpResult {
    let (user, _) = holder(&auth)?;
    // A TOTP challenge has nothing to say: no body is an empty one.
    let b: ChallengeBody = match bytes.is_empty() {
        true => ChallengeBody::default(),
        false => parse_json(&bytes)?,
    };
    let c = st
        .factors
        .challenge(user, factor_id(&raw)?, &client_ip(), b.channel.as_deref())
        .await?;
    Ok(Json(ChallengeView {
        id: c.id,
        factor_type: c.factor_type,
        expires_at: c.expires_at,
        webauthn: c.webauthn.map(|w| CeremonyView {
            kind: w.kind,
            credential_options: w.options,
        }),
    })
    .into_response())
}

#[utoipa::path(
    post,
    path = "/factors/{factor_id}/verify",
    tag = "mfa",
    operation_id = "verify_factor",
    params(FactorPath),
    request_body = VerifyBody,
    security(("bearer" = [])),
    responses((status = 200, body = TokenResponse), Refusals)
)]
pub async fn verify(
    State(st): State<AppState>,
    Own(auth): Own<AuthLive>,
    PathParams(FactorPath { factor_id: raw }): PathParams<FactorPath>,
    JsonBody(b): JsonBody<VerifyBody>,
) -> HttpResult {
    let (user, session) = holder(&auth)?;
    let factor = factor_id(&raw)?;
    // Missing is GoTrue's zero UUID (no such challenge, once the factor is
    // found); malformed is a body that does not parse.
    let challenge = match b.challenge_id.as_deref() {
        None => Uuid::nil(),
        Some(c) => Uuid::parse_str(c)
            .map_err(|_| ApiError::bad_request("bad_json", "challenge_id must be an UUID"))?,
    };
    let code = b.code.unwrap_or_default();
    let ip = client_ip();
    let webauthn = b.webauthn.map(|w| WebAuthnAnswer {
        kind: w.kind,
        credential: w.credential_response,
    });
    let grant = st
        .factors
        .verify(Verify {
            user,
            session,
            factor,
            challenge,
            code: &code,
            ip: &ip,
            webauthn: webauthn.as_ref(),
        })
        .await?;
    Ok(Json(token_response(grant)).into_response())
}

#[utoipa::path(
    delete,
    path = "/factors/{factor_id}",
    tag = "mfa",
    operation_id = "unenroll_factor",
    params(FactorPath),
    security(("bearer" = [])),
    responses((status = 200, body = Unenrolled), Refusals)
)]
pub async fn unenroll(
    State(st): State<AppState>,
    Own(auth): Own<AuthLive>,
    PathParams(FactorPath { factor_id: raw }): PathParams<FactorPath>,
) -> HttpResult {
    let (user, session) = holder(&auth)?;
    let id = st.factors.unenroll(user, session, factor_id(&raw)?).await?;
    Ok(Json(Unenrolled { id }).into_response())
}
