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
    /// What went wrong inside, for the log line of a 5xx (never sent).
    pub detail: Option<String>,
    /// Said in OAuth's shape (RFC 6749 §5.2: `error`, `error_description`),
    /// as an OAuth client expects, instead of GoTrue's.
    pub oauth: bool,
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
            detail: None,
            oauth: false,
        }
    }
    /// An OAuth error (`code` is RFC 6749's `error`).
    pub fn oauth(status: u16, code: &'static str, description: impl Into<String>) -> Self {
        Self {
            oauth: true,
            ..Self::new(status, code, description)
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
    /// An internal failure: the details go to the log (once, with the
    /// request id, where the response is made), never to the client.
    pub fn internal(context: &'static str, err: impl fmt::Display) -> Self {
        metrics::counter!("castellan_internal_errors_total", "context" => context).increment(1);
        Self::new(
            500,
            "unexpected_failure",
            "Unexpected failure, please check server logs for more information",
        )
        .with_detail(context, err)
    }
    /// A component (an actor, the database) is unavailable for now; safe to
    /// retry, and `Retry-After` says when (the official clients retry 503s).
    pub fn unavailable(context: &'static str, err: impl fmt::Display) -> Self {
        metrics::counter!("castellan_unavailable_total", "context" => context).increment(1);
        Self {
            retry_after: Some(1),
            ..Self::new(
                503,
                "unexpected_failure",
                "Service temporarily unavailable, please retry",
            )
        }
        .with_detail(context, err)
    }

    /// The same failure, said to the client in other words.
    pub fn with_message(self, message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            ..self
        }
    }

    pub fn with_detail(self, context: &str, err: impl fmt::Display) -> Self {
        Self {
            detail: Some(format!("{context}: {err}")),
            ..self
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

/// A unique index refused a write: someone else holds this address (two
/// requests raced past the check that would have said so). GoTrue's 422s.
fn unique_violation(db: &dyn sqlx::error::DatabaseError) -> ApiError {
    // PostgreSQL names the constraint; SQLite names the column in its message.
    let what = db
        .constraint()
        .map(str::to_string)
        .unwrap_or_else(|| db.message().to_string());
    let (code, msg) = if what.contains("phone") {
        (
            "phone_exists",
            "Phone number already registered by another user",
        )
    } else if what.contains("email") {
        (
            "email_exists",
            "A user with this email address has already been registered",
        )
    } else if what.contains("identities") || what.contains("provider") {
        ("identity_already_exists", "Identity is already linked")
    } else {
        return ApiError::new(409, "conflict", "This was changed at the same time; retry");
    };
    ApiError::unprocessable(code, msg)
}

/// A database error that says the database is away or overloaded for now,
/// not that this request is wrong: PostgreSQL's SQLSTATE classes for
/// connection exceptions (08), rolled-back transactions such as deadlocks
/// (40), insufficient resources (53) and operator intervention (57: shut
/// down, restarting, cancelled); SQLite's busy, locked, I/O and full errors
/// (primary codes, the low byte of its extended codes).
fn transient(db: &dyn sqlx::error::DatabaseError) -> bool {
    let code = db.code().unwrap_or_default();
    if code.len() == 5 {
        return ["08", "40", "53", "57"].iter().any(|c| code.starts_with(c));
    }
    code.parse::<u32>()
        .is_ok_and(|n| matches!(n & 0xff, 5 | 6 | 10 | 13))
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::Database(db) if db.is_unique_violation() => unique_violation(&*db),
            sqlx::Error::Database(db) if transient(&*db) => ApiError::unavailable("database", db),
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed => ApiError::unavailable("database", e),
            e => ApiError::internal("database", e),
        }
    }
}
