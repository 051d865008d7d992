//! Rendering `ApiError` in GoTrue's two JSON dialects.
//!
//! Handlers answer the legacy dialect and leave the error in the response's
//! extensions; `dialect` (a middleware) re-renders it as the 2024-01-01
//! dialect when the request asked for it, and adds `error_id` to 5xx bodies.

use axum::Json;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use castellan_core::ApiError;
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::{IntoResponses, ToSchema};

pub const API_VERSION_HEADER: &str = "x-supabase-api-version";
const API_VERSION_2024: &str = "2024-01-01";

/// An `ApiError` on its way out of a handler.
#[derive(Debug)]
pub struct HttpError(pub ApiError);

impl From<ApiError> for HttpError {
    fn from(e: ApiError) -> Self {
        HttpError(e)
    }
}

pub type HttpResult<T = Response> = Result<T, HttpError>;

fn with_weak_password(mut body: Value, e: &ApiError) -> Value {
    if let Some(reasons) = &e.weak_password {
        body["weak_password"] = json!({ "reasons": reasons });
    }
    body
}

/// An error in GoTrue's legacy dialect (the 2024-01-01 dialect has
/// `code` (the error code) and `message` instead).
#[derive(Serialize, ToSchema)]
pub struct ErrorBody<'a> {
    /// The HTTP status.
    code: u16,
    error_code: &'a str,
    msg: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    weak_password: Option<WeakPassword<'a>>,
    /// The request id, on 5xx answers only.
    #[serde(skip_serializing_if = "Option::is_none")]
    error_id: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct WeakPassword<'a> {
    reasons: &'a [String],
}

fn legacy_body(e: &ApiError) -> Value {
    let body = ErrorBody {
        code: e.status,
        error_code: e.code,
        msg: &e.message,
        weak_password: e
            .weak_password
            .as_deref()
            .map(|reasons| WeakPassword { reasons }),
        error_id: None,
    };
    serde_json::to_value(body).unwrap_or_default()
}

/// The refusals any route may answer, each with an [`ErrorBody`]. One set
/// for every route keeps the document honest about the shared middleware
/// (body limit, time-outs, rate limits, a database outage).
#[derive(IntoResponses)]
#[allow(dead_code)] // a description for the OpenAPI document, never built
pub enum Refusals {
    #[response(status = 400, description = "Malformed or invalid input")]
    BadRequest(ErrorBody<'static>),
    #[response(status = 401, description = "Missing or invalid credentials")]
    Unauthorized(ErrorBody<'static>),
    #[response(
        status = 403,
        description = "Not allowed, or the token or code has expired"
    )]
    Forbidden(ErrorBody<'static>),
    #[response(status = 404, description = "No such user or resource")]
    NotFound(ErrorBody<'static>),
    #[response(status = 413, description = "The body is larger than 1 MiB")]
    TooLarge(ErrorBody<'static>),
    #[response(
        status = 422,
        description = "Well-formed but refused (GoTrue's 422 codes)"
    )]
    Unprocessable(ErrorBody<'static>),
    #[response(
        status = 429,
        description = "A rate limit was reached; see Retry-After"
    )]
    TooMany(ErrorBody<'static>),
    #[response(
        status = 503,
        description = "The database is unavailable; see Retry-After"
    )]
    Unavailable(ErrorBody<'static>),
    #[response(
        status = 504,
        description = "The request did not finish in time (GOTRUE_API_MAX_REQUEST_DURATION)"
    )]
    GatewayTimeout(ErrorBody<'static>),
}

/// An error as RFC 6749 §5.2 shapes it (the token and revocation endpoints).
#[derive(Serialize, ToSchema)]
pub struct OAuthErrorBody<'a> {
    /// `invalid_request`, `invalid_client`, `invalid_grant`, `unauthorized_client`,
    /// `unsupported_grant_type`, …
    error: &'a str,
    error_description: &'a str,
}

/// The refusals of the endpoints an OAuth client calls itself: its own
/// errors in OAuth's shape, the shared middleware's in GoTrue's.
#[derive(IntoResponses)]
#[allow(dead_code)] // a description for the OpenAPI document, never built
pub enum OAuthRefusals {
    #[response(status = 400, description = "RFC 6749 §5.2")]
    BadRequest(OAuthErrorBody<'static>),
    #[response(
        status = 401,
        description = "`invalid_client`, with `WWW-Authenticate`"
    )]
    Unauthorized(OAuthErrorBody<'static>),
    #[response(status = 404, description = "The OAuth server is off")]
    NotFound(ErrorBody<'static>),
    #[response(status = 413, description = "The body is larger than 1 MiB")]
    TooLarge(ErrorBody<'static>),
    #[response(
        status = 429,
        description = "A rate limit was reached; see Retry-After"
    )]
    TooMany(ErrorBody<'static>),
    #[response(
        status = 503,
        description = "The database is unavailable; see Retry-After"
    )]
    Unavailable(ErrorBody<'static>),
    #[response(
        status = 504,
        description = "The request did not finish in time (GOTRUE_API_MAX_REQUEST_DURATION)"
    )]
    GatewayTimeout(ErrorBody<'static>),
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let e = self.0;
        let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if e.oauth {
            return oauth_body(status, &e);
        }
        let mut resp = (status, Json(legacy_body(&e))).into_response();
        let h = resp.headers_mut();
        if let Ok(v) = HeaderValue::from_str(e.code) {
            h.insert("x-sb-error-code", v);
        }
        if let Some(secs) = e.retry_after {
            h.insert("retry-after", HeaderValue::from(secs));
        }
        resp.extensions_mut().insert(e);
        resp
    }
}

/// Marks a refusal in OAuth's shape (`error`, `error_description`).
#[derive(Clone, Copy)]
pub struct OAuthShaped;

/// An error as RFC 6749 §5.2 shapes it; a refused client's credentials are
/// 401 with the scheme to retry with (RFC 6749 §5.2 `invalid_client`).
fn oauth_body(status: StatusCode, e: &ApiError) -> Response {
    let body = json!({"error": e.code, "error_description": e.message});
    let mut r = (status, Json(body)).into_response();
    let h = r.headers_mut();
    h.insert(
        axum::http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    if status == StatusCode::UNAUTHORIZED {
        h.insert(
            axum::http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"castellan\""),
        );
    }
    r.extensions_mut().insert(OAuthShaped);
    r
}

/// True when the request asks for the 2024-01-01 dialect (any valid date on
/// or after it; an unparsable value means the legacy dialect).
pub(crate) fn wants_2024(headers: &HeaderMap) -> bool {
    headers
        .get(API_VERSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| chrono::NaiveDate::parse_from_str(v.trim(), "%Y-%m-%d").ok())
        .is_some_and(|d| d >= chrono::NaiveDate::from_ymd_opt(2024, 1, 1).expect("valid date"))
}

/// Renders an error in the dialect the request asked for (`modern`: the
/// 2024-01-01 one), and logs every 5xx once, here, with the request id its
/// body carries as `error_id`.
pub fn in_dialect(mut resp: Response, modern: bool, request_id: &str) -> Response {
    let Some(e) = resp.extensions_mut().remove::<ApiError>() else {
        // An error in OAuth's shape echoes the version as GoTrue's errors do.
        if modern && resp.extensions_mut().remove::<OAuthShaped>().is_some() {
            let v = HeaderValue::from_static(API_VERSION_2024);
            resp.headers_mut().insert(API_VERSION_HEADER, v);
        }
        return resp;
    };
    if e.status < 500 && !modern {
        return resp;
    }
    if e.status >= 500 {
        tracing::error!(
            error_id = %request_id,
            status = e.status,
            code = e.code,
            detail = e.detail.as_deref().unwrap_or(""),
            "answered with a server error"
        );
    }
    let status = resp.status();
    let mut headers = std::mem::take(resp.headers_mut());
    headers.remove(axum::http::header::CONTENT_LENGTH);
    let mut body = if modern {
        headers.insert(
            API_VERSION_HEADER,
            HeaderValue::from_static(API_VERSION_2024),
        );
        if e.weak_password.is_some() {
            headers.remove("x-sb-error-code");
        }
        with_weak_password(json!({"code": e.code, "message": e.message}), &e)
    } else {
        legacy_body(&e)
    };
    if e.status >= 500 {
        body["error_id"] = json!(request_id);
    }
    let mut out = (status, Json(body)).into_response();
    out.headers_mut().extend(headers);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_header_parsing() {
        let mut h = HeaderMap::new();
        assert!(!wants_2024(&h));
        h.insert(API_VERSION_HEADER, HeaderValue::from_static("2024-01-01"));
        assert!(wants_2024(&h));
        h.insert(API_VERSION_HEADER, HeaderValue::from_static("2025-06-30"));
        assert!(wants_2024(&h));
        h.insert(API_VERSION_HEADER, HeaderValue::from_static("2023-12-31"));
        assert!(!wants_2024(&h));
        h.insert(API_VERSION_HEADER, HeaderValue::from_static("soon"));
        assert!(!wants_2024(&h));
    }
}
