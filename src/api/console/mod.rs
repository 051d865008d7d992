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
use axum::routing::get;
use castellan_core::ApiError;
use castellan_core::crypto::{hmac_sha256_hex, secure_eq};
use castellan_service::accounts::{PasswordGrant, Principal};
use castellan_service::sessions::LogoutScope;
use serde::Deserialize;
use serde_json::json;
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

fn cookie_value<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
}

fn refused(message: &str) -> HttpError {
    HttpError(ApiError::forbidden("console_refused", message.to_string()))
}

/// The console session a request carries, checked as a browser sends it:
/// `None` when the console is off or there is no cookie. A request another
/// site's page made (`Sec-Fetch-Site` other than `same-origin`) is refused,
/// and a change (any method but GET and HEAD) needs the CSRF token.
pub fn session_token(parts: &Parts, st: &AppState) -> Result<Option<String>, HttpError> {
    if !st.config.console_enabled {
        return Ok(None);
    }
    let Some(token) = cookie_value(&parts.headers, COOKIE) else {
        return Ok(None);
    };
    let site = parts.headers.get("sec-fetch-site").map(|v| v.as_bytes());
    if site.is_some_and(|s| s != b"same-origin") {
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

/// `Set-Cookie` for the session (or, with `None`, its removal).
fn cookie(headers: &HeaderMap, token: Option<(&str, i64)>) -> HeaderValue {
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
    let loopback = matches!(name, "localhost" | "127.0.0.1" | "[::1]");
    let secure = if loopback { "" } else { "; Secure" };
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

/// `POST /console/session`: a password sign-in that only an admin keeps.
/// Anyone else's session is ended at once and the answer is 403.
pub async fn sign_in(
    State(st): State<AppState>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> HttpResult {
    let b: SignIn = parse_json(&body)?;
    let (grant, _) = st
        .accounts
        .password_grant(PasswordGrant {
            email: Some(b.email),
            phone: None,
            password: b.password,
            aud: st.config.jwt.aud.clone(),
        })
        .await?;
    let role = grant.user.role.clone().unwrap_or_default();
    if !st.config.jwt.admin_roles.contains(&role) {
        st.actors
            .sessions
            .logout(&grant.user, Some(grant.session_id), LogoutScope::Local)
            .await?;
        return Err(ApiError::forbidden("not_admin", "User not allowed").into());
    }
    let set = cookie(&headers, Some((&grant.access_token, grant.expires_in)));
    let body = json!({
        "csrf": csrf_of(&grant.access_token),
        "user": {"id": grant.user.id, "email": grant.user.email, "role": role},
        "expires_at": grant.expires_at,
    });
    let mut r = Json(body).into_response();
    r.headers_mut().insert(header::SET_COOKIE, set);
    Ok(guarded(r))
}

/// `GET /console/session`: who is signed in, and the CSRF token (the page
/// keeps it in memory only).
pub async fn who(State(st): State<AppState>, parts: Parts) -> HttpResult {
    let token = signed_in(&parts, &st)?;
    let role = st.accounts.admin_role(&token).await?;
    let user = match st.accounts.authenticate(&token).await? {
        Principal::User { live, .. } => {
            json!({"id": live.user.id, "email": live.user.email, "role": role})
        }
        Principal::Admin { role } => json!({ "role": role }),
    };
    Ok(guarded(
        Json(json!({"csrf": csrf_of(&token), "user": user})).into_response(),
    ))
}

/// `DELETE /console/session`: ends the console's session (its access token
/// is refused at once) and removes the cookie.
pub async fn sign_out(State(st): State<AppState>, parts: Parts) -> HttpResult {
    let token = signed_in(&parts, &st)?;
    if let Principal::User {
        live, session_id, ..
    } = st.accounts.authenticate(&token).await?
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
