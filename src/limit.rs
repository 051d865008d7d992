//! The rate-limit layer: looks the matched route up in `api::RATE_LIMITS`
//! and takes one token from the client's bucket before the handler runs.

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
}

/// One row of the route table.
#[derive(Debug, Clone)]
pub struct RouteLimit {
    pub path: &'static str,
    pub method: Method,
    pub pick: Pick,
}

impl RouteLimit {
    pub const fn new(path: &'static str, method: Method, pick: Pick) -> Self {
        Self { path, method, pick }
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

/// Reads the body (bounded) to tell an anonymous sign-in from a sign-up;
/// the handler gets the same bytes back.
async fn signup_bucket(req: Request) -> Result<(Bucket, Request), HttpError> {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, BODY_LIMIT).await.map_err(|_| {
        ApiError::new(
            413,
            "request_entity_too_large",
            "Request body too large (max 1048576 bytes)",
        )
    })?;
    let peek: SignUpPeek = serde_json::from_slice(&bytes).unwrap_or_default();
    let empty = |s: &Option<String>| s.as_deref().is_none_or(str::is_empty);
    let bucket = if empty(&peek.email) && empty(&peek.phone) {
        Bucket::AnonymousUsers
    } else {
        Bucket::SignUps
    };
    Ok((bucket, Request::from_parts(parts, Body::from(bytes))))
}

pub async fn limit(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let Some(row) = req
        .extensions()
        .get::<MatchedPath>()
        .and_then(|p| lookup(p.as_str(), req.method()))
    else {
        return next.run(req).await;
    };
    let (bucket, req) = match row.pick {
        Pick::Fixed(b) => (b, req),
        Pick::SignUp => match signup_bucket(req).await {
            Ok(x) => x,
            Err(e) => return e.into_response(),
        },
    };
    let (mut parts, body) = req.into_parts();
    let client = match ClientKey::from_request_parts(&mut parts, &st).await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    // One bucket per client: an IPv6 host's whole /64 (it may pick any
    // address in it), as its connections are counted.
    let key = match client.key.parse() {
        Ok(ip) => crate::listener::client_of(ip).to_string(),
        Err(_) => client.key.clone(),
    };
    if let Err(e) = st
        .actors
        .rate_limits
        .check(bucket, &key, client.source)
        .await
    {
        return HttpError(e).into_response();
    }
    next.run(Request::from_parts(parts, body)).await
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
