//! The admin console (`/console`), served from the binary when
//! `CASTELLAN_CONSOLE_ENABLED` is on; off, none of it is routed and the
//! admin API takes bearer tokens only.
//!
//! An operator signs in with a password as a user whose `role` is in
//! `GOTRUE_JWT_ADMIN_ROLES`. The console's session is that user's access
//! token, kept in an HttpOnly, SameSite=Strict cookie (Secure unless the
//! console is on loopback) that no script can read. The page is static
//! (HTML, one script, one style sheet; no CDN, a strict CSP) and calls the
//! admin API, which takes the cookie in place of a bearer token on requests
//! from the console's own origin, and a change only with the CSRF token
//! derived from the cookie.

use axum::Json;
use axum::extract::State;
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use castellan_core::ApiError;
use castellan_core::crypto::{hmac_sha256_hex, secure_eq};

use castellan_service::accounts::{PasswordGrant, Principal};
use castellan_service::factors::Verify;
use castellan_service::sessions::LogoutScope;
use castellan_service::sessions::TokenGrant;
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;

use crate::error::{HttpError, HttpResult};
use crate::extract::{RawBody, parse_json};
use crate::server::AppState;

const COOKIE: &str = "castellan_console";
const CSRF_HEADER: &str = "x-csrf-token";

const PAGE: &str = include_str!("index.html");
const SCRIPT: &str = include_str!("app.js");
const STYLE: &str = include_str!("app.css");

/// Nothing but the console's own files, and never in a frame.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// A console file with the headers every console answer carries.
fn asset(kind: &'static str, body: &'static str) -> Response {
    let mut r = body.into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    guarded(r)
}

fn guarded(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// The console's routes, none when it is off (not in the OpenAPI
/// document: they are pages, not API).
pub fn routes(st: &AppState) -> OpenApiRouter<AppState> {
    let router = OpenApiRouter::new();
    if !st.config.console_enabled {
        return router;
    }
    router
        .route("/console", get(page))
        .route("/console/app.js", get(script))
        .route("/console/app.css", get(style))
        .route("/console/session", get(who).post(sign_in).delete(sign_out))
        .route("/console/session/mfa", post(second_factor))
}

pub async fn page() -> Response {
    asset("text/html; charset=utf-8", PAGE)
}

pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

pub async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

/// The CSRF token of a console session: derived from its cookie, which a
/// page of another origin can neither read nor guess.
fn csrf_of(token: &str) -> String {
    hmac_sha256_hex(b"castellan/console-csrf/v1", token.as_bytes())
}

/// The console's cookie, when the request carries exactly one (a second
/// one, set by a sibling site to shadow it, makes the request refused).
fn cookie_value(headers: &HeaderMap) -> Result<Option<&str>, HttpError> {
    let mut found = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v);
    match (found.next(), found.next()) {
        (Some(v), None) if !v.is_empty() => Ok(Some(v)),
        (None, _) => Ok(None),
        _ => Err(refused("The console's cookie is ambiguous")),
    }
}

fn refused(message: &str) -> HttpError {
    HttpError(ApiError::forbidden("console_refused", message.to_string()))
}

/// Whether a browser made this request from the console's own origin:
/// `Sec-Fetch-Site` (when sent) says `same-origin`, and `Origin` (when
/// sent) names the host the request was sent to. Browsers without Fetch
/// Metadata still send `Origin` on every cross-origin fetch.
fn same_origin(headers: &HeaderMap) -> bool {
    let site = headers.get("sec-fetch-site").map(|v| v.as_bytes());
    if site.is_some_and(|s| s != b"same-origin") {
        return false;
    }
    let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) else {
        return !headers.contains_key(header::ORIGIN);
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    // The scheme the browser used: https when a proxy says so, or when the
    // cookie could only have come over TLS (it is Secure off loopback).
    let forwarded = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok());
    let scheme = match forwarded {
        Some(p) => p.to_ascii_lowercase(),
        None if loopback(headers) => "http".into(),
        None => "https".into(),
    };
    origin == format!("{scheme}://{host}")
}

/// A direct request to a loopback name (no proxy in between).
fn loopback(headers: &HeaderMap) -> bool {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let name = host.rsplit_once(':').map_or(host, |(h, port)| {
        if port.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    let proxied = headers.contains_key("x-forwarded-for")
        || headers.contains_key("x-forwarded-proto")
        || headers.contains_key(header::FORWARDED);
    matches!(name, "localhost" | "127.0.0.1" | "[::1]") && !proxied
}

/// The console session a request carries, checked as a browser sends it:
/// `None` when the console is off or there is no cookie. A request from
/// another origin is refused, and a change (any method but GET and HEAD)
/// needs the CSRF token.
pub fn session_token(parts: &Parts, st: &AppState) -> Result<Option<String>, HttpError> {
    if !st.config.console_enabled {
        return Ok(None);
    }
    let Some(token) = cookie_value(&parts.headers)? else {
        return Ok(None);
    };
    if !same_origin(&parts.headers) {
        return Err(refused("The console's session is for its own pages only"));
    }
    if !matches!(parts.method, Method::GET | Method::HEAD) {
        let sent = parts
            .headers
            .get(CSRF_HEADER)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if !secure_eq(sent, csrf_of(token).as_bytes()) {
            return Err(refused("The console's CSRF token is missing or wrong"));
        }
    }
    Ok(Some(token.to_string()))
}

/// `Set-Cookie` for the session (or, with `None`, its removal). Secure,
/// except on a direct loopback request (no proxy in between), where a
/// browser may use the console over plain HTTP.
fn cookie(headers: &HeaderMap, token: Option<(&str, i64)>) -> HeaderValue {
    let secure = if loopback(headers) { "" } else { "; Secure" };
    let (value, age) = token.unwrap_or(("", 0));
    let line =
        format!("{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={age}{secure}");
    HeaderValue::from_str(&line).expect("a token is visible ASCII")
}

#[derive(Deserialize)]
struct SignIn {
    email: String,
    password: String,
}

#[derive(Deserialize)]
struct SecondFactor {
    factor_id: uuid::Uuid,
    code: String,
}

/// A page of another origin may not sign anyone in here (a form posted
/// across sites would otherwise swap the console's session).
fn from_the_console(headers: &HeaderMap) -> Result<(), HttpError> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json || !same_origin(headers) {
        return Err(refused("Sign in from the console's own page"));
    }
    Ok(())
}

/// The answer of a sign-in step: the session's cookie, the CSRF token the
/// page keeps, who it is, and the factors still to verify (if any).
fn session_answer(headers: &HeaderMap, grant: &TokenGrant, factors: Vec<Value>) -> Response {
    let set = cookie(headers, Some((&grant.access_token, grant.expires_in)));
    let body = json!({
        "csrf": csrf_of(&grant.access_token),
        "user": {"id": grant.user.id, "email": grant.user.email, "role": grant.user.role},
        "expires_at": grant.expires_at,
        "mfa": factors,
    });
    let mut r = Json(body).into_response();
    r.headers_mut().insert(header::SET_COOKIE, set);
    guarded(r)
}

/// `POST /console/session`: a password sign-in that only an admin can make
/// (anyone else is answered as a wrong password). An admin with a verified
/// TOTP factor is told to verify it (`mfa`) before the console opens.
pub async fn sign_in(
    State(st): State<AppState>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> HttpResult {
    from_the_console(&headers)?;
    let b: SignIn = parse_json(&body)?;
    let grant = st
        .accounts
        .admin_password_grant(PasswordGrant {
            email: Some(b.email),
            phone: None,
            password: b.password,
            aud: st.config.jwt.aud.clone(),
        })
        .await?;
    let factors = grant
        .user
        .factors
        .iter()
        .filter(|f| f.status == "verified")
        .map(
            |f| json!({"id": f.id, "factor_type": f.factor_type, "friendly_name": f.friendly_name}),
        )
        .collect();
    Ok(session_answer(&headers, &grant, factors))
}

/// `POST /console/session/mfa`: the code of one of the admin's TOTP
/// factors, challenged and verified for the console's session, which then
/// opens (its cookie is replaced by the raised session's).
pub async fn second_factor(
    State(st): State<AppState>,
    parts: Parts,
    RawBody(body): RawBody,
) -> HttpResult {
    from_the_console(&parts.headers)?;
    let token = signed_in(&parts, &st)?;
    let b: SecondFactor = parse_json(&body)?;
    let Principal::User {
        live,
        session_id: Some(session),
        ..
    } = st.accounts.authenticate(&token).await?
    else {
        return Err(ApiError::forbidden("not_admin", "User not allowed").into());
    };
    let ip = crate::api::factors::client_ip();
    let challenge = st
        .factors
        .challenge(&live.user, b.factor_id, &ip, None)
        .await?;
    let grant = st
        .factors
        .verify(Verify {
            user: &live.user,
            session,
            factor: b.factor_id,
            challenge: challenge.id,
            code: &b.code,
            ip: &ip,
            webauthn: None,
        })
        .await?;
    Ok(session_answer(&parts.headers, &grant, Vec::new()))
}

/// `GET /console/session`: who is signed in, and the CSRF token (the page
/// keeps it in memory only).
pub async fn who(State(st): State<AppState>, parts: Parts) -> HttpResult {
    let token = signed_in(&parts, &st)?;
    st.accounts.admin_role(&token).await?;
    let Principal::User { live, .. } = st.accounts.authenticate(&token).await? else {
        return Err(ApiError::forbidden("not_admin", "User not allowed").into());
    };
    let user = json!({"id": live.user.id, "email": live.user.email, "role": live.user.role});
    Ok(guarded(
        Json(json!({"csrf": csrf_of(&token), "user": user})).into_response(),
    ))
}

/// `DELETE /console/session`: ends the console's session (its access token
/// is refused at once) and removes the cookie, which goes even when its
/// session had already ended.
pub async fn sign_out(State(st): State<AppState>, parts: Parts) -> HttpResult {
    let token = signed_in(&parts, &st)?;
    if let Ok(Principal::User {
        live, session_id, ..
    }) = st.accounts.authenticate(&token).await
    {
        st.actors
            .sessions
            .logout(&live.user, session_id, LogoutScope::Local)
            .await?;
    }
    let mut r = StatusCode::NO_CONTENT.into_response();
    r.headers_mut()
        .insert(header::SET_COOKIE, cookie(&parts.headers, None));
    Ok(guarded(r))
}

fn signed_in(parts: &Parts, st: &AppState) -> Result<String, HttpError> {
    session_token(parts, st)?.ok_or_else(|| {
        HttpError(ApiError::unauthorized(
            "no_authorization",
            "Sign in to the console first",
        ))
    })
}
