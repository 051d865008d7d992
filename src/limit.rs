//! The route guard: looks the matched route up in `api::RATE_LIMITS`,
//! takes one token from the client's bucket, then checks the CAPTCHA the
//! route asks for, before the handler runs.

use axum::body::Body;
use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use castellan_core::ApiError;
use castellan_service::actors::rate_limiter::Bucket;
use serde::Deserialize;

use crate::error::HttpError;
use crate::extract::ClientKey;
use crate::server::{AppState, BODY_LIMIT};

/// Which bucket a request of a limited route takes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    Fixed(Bucket),
    /// `/signup`: anonymous sign-ins (no email and no phone) count against
    /// their own bucket, every other sign-up against the sign-up bucket.
    SignUp,
    /// `/token`: Web3 sign-ins against their own bucket (GoTrue's
    /// `GOTRUE_RATE_LIMIT_WEB3`), every other grant against token refresh.
    Token,
}

/// Whether a route asks for a CAPTCHA when CAPTCHA protection is on
/// (GoTrue's `verifyCaptcha`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Captcha {
    No,
    Yes,
    /// `/token`: every grant but those that already prove something (an
    /// authorization code, a refresh token, an ID token).
    Grants,
}

/// One row of the route table.
#[derive(Debug, Clone)]
pub struct RouteLimit {
    pub path: &'static str,
    pub method: Method,
    pub pick: Pick,
    pub captcha: Captcha,
}

impl RouteLimit {
    pub const fn new(path: &'static str, method: Method, pick: Pick) -> Self {
        Self {
            path,
            method,
            pick,
            captcha: Captcha::No,
        }
    }

    /// A route that also asks for a CAPTCHA.
    pub const fn with_captcha(
        path: &'static str,
        method: Method,
        pick: Pick,
        captcha: Captcha,
    ) -> Self {
        Self {
            path,
            method,
            pick,
            captcha,
        }
    }
}

/// The route-table row for a matched path (served at `/` and `/auth/v1`).
pub fn lookup(path: &str, method: &Method) -> Option<&'static RouteLimit> {
    let path = path.strip_prefix("/auth/v1").unwrap_or(path);
    crate::api::RATE_LIMITS
        .iter()
        .find(|r| r.path == path && r.method == method)
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct SignUpPeek {
    email: Option<String>,
    phone: Option<String>,
}

/// The whole body (bounded), read once by the guard; the handler gets the
/// same bytes back.
async fn buffered(body: Body) -> Result<axum::body::Bytes, HttpError> {
    axum::body::to_bytes(body, BODY_LIMIT).await.map_err(|_| {
        HttpError(ApiError::new(
            413,
            "request_entity_too_large",
            "Request body too large (max 1048576 bytes)",
        ))
    })
}

/// An anonymous sign-in (neither email nor phone) or a sign-up.
fn signup_bucket(body: &[u8]) -> Bucket {
    let peek: SignUpPeek = serde_json::from_slice(body).unwrap_or_default();
    let empty = |s: &Option<String>| s.as_deref().is_none_or(str::is_empty);
    if empty(&peek.email) && empty(&peek.phone) {
        Bucket::AnonymousUsers
    } else {
        Bucket::SignUps
    }
}

pub async fn limit(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let Some(row) = req
        .extensions()
        .get::<MatchedPath>()
        .and_then(|p| lookup(p.as_str(), req.method()))
    else {
        return next.run(req).await;
    };
    match guard(&st, row, req).await {
        Ok(req) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// The route's rate limit, then its CAPTCHA: the request to hand on, or
/// the refusal.
async fn guard(st: &AppState, row: &RouteLimit, req: Request) -> Result<Request, HttpError> {
    let (mut parts, body) = req.into_parts();
    let client = ClientKey::from_request_parts(&mut parts, st).await?;
    let captcha = st.captcha.as_ref().filter(|_| row.captcha != Captcha::No);
    // The token is taken before a body is read, unless the bucket depends
    // on the body: a refused client costs no read.
    if row.pick != Pick::SignUp {
        take_token(st, row.pick, None, &parts, &client).await?;
    }
    if row.pick != Pick::SignUp && captcha.is_none() {
        return Ok(Request::from_parts(parts, body));
    }
    let bytes = buffered(body).await?;
    if row.pick == Pick::SignUp {
        take_token(st, row.pick, Some(&bytes), &parts, &client).await?;
    }
    if let Some(captcha) = captcha {
        check_captcha(st, captcha, row.captcha, &parts, &bytes, &client).await?;
    }
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

/// One token from the client's bucket for this route.
async fn take_token(
    st: &AppState,
    pick: Pick,
    body: Option<&[u8]>,
    parts: &axum::http::request::Parts,
    client: &ClientKey,
) -> Result<(), HttpError> {
    let bucket = match pick {
        Pick::Fixed(b) => b,
        Pick::SignUp => signup_bucket(body.unwrap_or_default()),
        // (The query is parsed only when it may name web3: refreshes go by.)
        Pick::Token
            if parts.uri.query().is_some_and(|q| q.contains("web3"))
                && grant(parts.uri.query()).as_deref() == Some("web3") =>
        {
            Bucket::Web3
        }
        Pick::Token => Bucket::TokenRefresh,
    };
    // One bucket per client: an IPv6 host's whole /64 (it may pick any
    // address in it), as its connections are counted.
    let key = match client.key.parse() {
        Ok(ip) => crate::listener::client_of(ip).to_string(),
        Err(_) => client.key.clone(),
    };
    st.actors
        .rate_limits
        .check(bucket, &key, client.source)
        .await
        .map_err(HttpError)
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct CaptchaPeek {
    gotrue_meta_security: Option<MetaSecurity>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct MetaSecurity {
    captcha_token: Option<String>,
}

/// GoTrue's order: an admin's token passes; `/token` grants that prove
/// something pass; else the body's `gotrue_meta_security.captcha_token` is
/// checked with the provider.
async fn check_captcha(
    st: &AppState,
    captcha: &castellan_service::captcha::Captcha,
    rule: Captcha,
    parts: &axum::http::request::Parts,
    body: &[u8],
    client: &ClientKey,
) -> Result<(), HttpError> {
    if let Ok(token) = crate::extract::bearer(&parts.headers)
        && st.accounts.admin_role(token).await.is_ok()
    {
        return Ok(());
    }
    if rule == Captcha::Grants && proven_grant(parts.uri.query().unwrap_or_default()) {
        return Ok(());
    }
    let peek: CaptchaPeek = crate::extract::parse_json(body)?;
    let token = peek.gotrue_meta_security.and_then(|m| m.captcha_token);
    captcha
        .verify(token.as_deref(), &client.key)
        .await
        .map_err(HttpError)
}

/// A `/token` request's `grant_type` (from the query string, as GoTrue
/// reads it).
fn grant(query: Option<&str>) -> Option<String> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(query.unwrap_or_default()).unwrap_or_default();
    pairs
        .into_iter()
        .find(|(k, _)| k == "grant_type")
        .map(|(_, v)| v)
}

/// A `/token` grant that needs no CAPTCHA: it carries proof already.
fn proven_grant(query: &str) -> bool {
    matches!(
        grant(Some(query)).as_deref(),
        Some("pkce" | "refresh_token" | "id_token")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_serves_both_prefixes_and_only_listed_methods() {
        let v = lookup("/auth/v1/verify", &Method::GET).expect("listed");
        assert_eq!(v.pick, Pick::Fixed(Bucket::Verify));
        assert!(lookup("/verify", &Method::POST).is_some());
        assert!(lookup("/user", &Method::GET).is_none());
        assert!(lookup("/health", &Method::GET).is_none());
    }

    #[test]
    fn every_route_gotrue_limits_is_in_the_table() {
        for (path, method) in [
            ("/signup", Method::POST),
            ("/token", Method::POST),
            ("/verify", Method::GET),
            ("/verify", Method::POST),
            ("/otp", Method::POST),
            ("/magiclink", Method::POST),
            ("/recover", Method::POST),
            ("/resend", Method::POST),
            ("/user", Method::PUT),
        ] {
            assert!(
                lookup(path, &method).is_some(),
                "{method} {path} has no limit"
            );
        }
    }
}
