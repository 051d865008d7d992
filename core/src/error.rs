//! One error type for every failure a client can see, carrying GoTrue's
//! `error_code`. Rendering (the two JSON dialects, headers) lives in the HTTP
//! crate; this type only knows status, code and message.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    /// `weak_password.reasons` for 422 `weak_password`.
    pub weak_password: Option<Vec<String>>,
    /// Seconds for a `Retry-After` header (429).
    pub retry_after: Option<u64>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            weak_password: None,
            retry_after: None,
        }
    }
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(400, code, message)
    }
    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(401, code, message)
    }
    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(403, code, message)
    }
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(404, code, message)
    }
    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(422, code, message)
    }
    pub fn validation(message: impl Into<String>) -> Self {
        Self::bad_request("validation_failed", message)
    }
    pub fn invalid_credentials() -> Self {
        Self::bad_request("invalid_credentials", "Invalid login credentials")
    }
    pub fn too_many_requests(
        code: &'static str,
        message: impl Into<String>,
        retry_after: u64,
    ) -> Self {
        Self {
            retry_after: Some(retry_after.max(1)),
            ..Self::new(429, code, message)
        }
    }
    pub fn weak_password(message: impl Into<String>, reasons: Vec<String>) -> Self {
        Self {
            weak_password: Some(reasons),
            ..Self::unprocessable("weak_password", message)
        }
    }
    /// An internal failure: the details go to the log, never to the client.
    pub fn internal(context: &str, err: impl fmt::Display) -> Self {
        tracing::error!(%err, context, "internal error");
        metrics::counter!("castellan_internal_errors_total", "context" => context.to_string())
            .increment(1);
        Self::new(
            500,
            "unexpected_failure",
            "Unexpected failure, please check server logs for more information",
        )
    }
    /// A component (an actor, the database) is unavailable for now; safe to retry.
    pub fn unavailable(context: &str, err: impl fmt::Display) -> Self {
        tracing::warn!(%err, context, "service unavailable");
        metrics::counter!("castellan_unavailable_total", "context" => context.to_string())
            .increment(1);
        Self::new(
            503,
            "unexpected_failure",
            "Service temporarily unavailable, please retry",
        )
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
                ApiError::unavailable("database", e)
            }
            e => ApiError::internal("database", e),
        }
    }
}
