//! Auth hooks (GoTrue's `internal/hooks`): which hooks there are, and the
//! one transport that calls them, over HTTP signed with Standard Webhooks or
//! as a PostgreSQL function. Requests call it (service) and so do the
//! queue's workers (the send-email and send-SMS hooks); each hook's payload
//! and rules live beside its caller.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::config::{HookConfig, HookTarget};
use crate::{ApiError, ApiResult, Store};

/// GoTrue's seven hooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    MfaVerificationAttempt,
    PasswordVerificationAttempt,
    CustomAccessToken,
    SendEmail,
    SendSms,
    BeforeUserCreated,
    AfterUserCreated,
}

impl Hook {
    pub const ALL: [Hook; 7] = [
        Hook::MfaVerificationAttempt,
        Hook::PasswordVerificationAttempt,
        Hook::CustomAccessToken,
        Hook::SendEmail,
        Hook::SendSms,
        Hook::BeforeUserCreated,
        Hook::AfterUserCreated,
    ];

    /// `<NAME>` in `GOTRUE_HOOK_<NAME>_*`.
    pub fn env(self) -> &'static str {
        match self {
            Hook::MfaVerificationAttempt => "MFA_VERIFICATION_ATTEMPT",
            Hook::PasswordVerificationAttempt => "PASSWORD_VERIFICATION_ATTEMPT",
            Hook::CustomAccessToken => "CUSTOM_ACCESS_TOKEN",
            Hook::SendEmail => "SEND_EMAIL",
            Hook::SendSms => "SEND_SMS",
            Hook::BeforeUserCreated => "BEFORE_USER_CREATED",
            Hook::AfterUserCreated => "AFTER_USER_CREATED",
        }
    }

    /// The name GoTrue puts in a payload's `metadata.name`.
    pub fn name(self) -> &'static str {
        match self {
            Hook::MfaVerificationAttempt => "mfa-verification",
            Hook::PasswordVerificationAttempt => "password-verification",
            Hook::CustomAccessToken => "customize-access-token",
            Hook::SendEmail => "send-email",
            Hook::SendSms => "send-sms",
            Hook::BeforeUserCreated => "before-user-created",
            Hook::AfterUserCreated => "after-user-created",
        }
    }

    /// Its label in metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Hook::MfaVerificationAttempt => "mfa_verification_attempt",
            Hook::PasswordVerificationAttempt => "password_verification_attempt",
            Hook::CustomAccessToken => "custom_access_token",
            Hook::SendEmail => "send_email",
            Hook::SendSms => "send_sms",
            Hook::BeforeUserCreated => "before_user_created",
            Hook::AfterUserCreated => "after_user_created",
        }
    }
}

/// What GoTrue's `metadata` says of the request being served: the
/// client's address (`ip_address`, left out outside a request). A payload
/// built now and sent later (a queued message) carries it.
pub fn metadata_of_request() -> Value {
    let client = crate::client::current();
    match client.address.is_empty() {
        true => json!({}),
        false => json!({"ip_address": client.address}),
    }
}

/// GoTrue's budget for all of one HTTP call's attempts together.
const HTTP_BUDGET: Duration = Duration::from_secs(5);
const ATTEMPTS: usize = 3;
const BACKOFF: Duration = Duration::from_secs(2);
/// The most of an answer read (GoTrue's 200 KiB).
const ANSWER_LIMIT: usize = 200 * 1024;

/// Calls hooks: one HTTP client, and the database for function hooks.
#[derive(Clone)]
pub struct Caller {
    http: reqwest::Client,
    store: Store,
}

impl Caller {
    pub fn new(store: Store) -> Result<Self, String> {
        Ok(Self {
            http: crate::outside::client(HTTP_BUDGET, None)?,
            store,
        })
    }

    /// Calls `hook` (configured as `cfg`) with `fields` and GoTrue's
    /// `metadata` (a fresh id, the time, the hook's name): its answer, or
    /// the error GoTrue answers for what went wrong (the hook's own error
    /// object included). Counted and timed per hook.
    pub async fn call(&self, hook: Hook, cfg: &HookConfig, fields: Value) -> ApiResult<Value> {
        let id = uuid::Uuid::new_v4().to_string();
        self.call_as(hook, cfg, fields, &id, None).await
    }

    /// As [`Caller::call`], with the webhook id given: one id for every
    /// attempt of a message (Standard Webhooks' rule, so a hook can drop a
    /// message it has seen). A function hook runs inside `tx` when one is
    /// given; an HTTP hook never waits inside a transaction, and is called
    /// before or after one.
    pub async fn call_as(
        &self,
        hook: Hook,
        cfg: &HookConfig,
        mut fields: Value,
        id: &str,
        tx: Option<&mut crate::store::Tx>,
    ) -> ApiResult<Value> {
        // A queued message's metadata already holds its request's address.
        let mut metadata = match fields.get("metadata") {
            Some(Value::Object(m)) => Value::Object(m.clone()),
            _ => metadata_of_request(),
        };
        metadata["uuid"] = json!(uuid::Uuid::new_v4());
        metadata["time"] =
            json!(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true));
        metadata["name"] = json!(hook.name());
        fields["metadata"] = metadata;
        let started = Instant::now();
        let answer = match &cfg.target {
            HookTarget::Http(url) => self.http_call(url, (&cfg.keys, id), &fields).await,
            HookTarget::PgFunction { schema, function } => match tx {
                Some(tx) => tx.call_hook_function(schema, function, &fields).await,
                None => {
                    self.store
                        .call_hook_function(schema, function, &fields)
                        .await
                }
            }
            .map(|v| v.unwrap_or(Value::Null))
            .map_err(|e| {
                ApiError::internal("hook", e).with_message(format!(
                    "Error running hook URI: pg-functions://postgres/{schema}/{function}"
                ))
            }),
        };
        let answer = answer.and_then(reported_error);
        let outcome = match &answer {
            Ok(_) => "ok",
            Err(e) if is_refusal(e) => "refused",
            Err(_) => "error",
        };
        if let Err(e) = &answer {
            // The hook and what went wrong; never its URI or secrets.
            tracing::warn!(hook = hook.label(), status = e.status, code = e.code, error = %e.message, "hook call failed");
        }
        metrics::counter!("castellan_hook_calls_total", "hook" => hook.label(), "outcome" => outcome)
            .increment(1);
        metrics::histogram!("castellan_hook_seconds", "hook" => hook.label())
            .record(started.elapsed().as_secs_f64());
        answer
    }

    /// POST, signed, within GoTrue's 5-second budget for up to 3 attempts.
    async fn http_call(
        &self,
        url: &str,
        (keys, id): (&[Vec<u8>], &str),
        payload: &Value,
    ) -> ApiResult<Value> {
        let body = serde_json::to_vec(payload).map_err(|e| ApiError::internal("hook", e))?;
        let deadline = Instant::now() + HTTP_BUDGET;
        for attempt in 1..=ATTEMPTS {
            let ts = chrono::Utc::now().timestamp();
            let sent = self
                .http
                .post(url)
                .header("content-type", "application/json")
                .header("webhook-id", id)
                .header("webhook-timestamp", ts.to_string())
                .header(
                    "webhook-signature",
                    crate::crypto::webhook::signature(keys, id, ts, &body),
                )
                .timeout(deadline.saturating_duration_since(Instant::now()))
                .body(body.clone())
                .send()
                .await;
            let answer = match sent {
                Ok(a) => a,
                Err(e) if e.is_timeout() => return Err(timed_out()),
                Err(_) if attempt == ATTEMPTS => {
                    return Err(ApiError::unprocessable(
                        "hook_timeout_after_retry",
                        "Failed to reach hook after maximum retries",
                    ));
                }
                Err(_) => {
                    if Instant::now() + BACKOFF >= deadline {
                        return Err(timed_out());
                    }
                    tokio::time::sleep(BACKOFF).await;
                    continue;
                }
            };
            let status = answer.status().as_u16();
            let retry_after = answer.headers().contains_key("retry-after");
            match status {
                200 | 202 => return read_json(answer).await,
                204 => return Ok(Value::Null),
                429 | 503 if retry_after && attempt < ATTEMPTS => continue,
                429 | 503 => return Err(failed("Service currently unavailable due to hook")),
                400 => return Err(failed("Invalid payload sent to hook")),
                401 => return Err(failed("Hook requires authorization token")),
                n => {
                    return Err(failed(&format!(
                        "Unexpected status code returned from hook: {n}"
                    )));
                }
            }
        }
        Err(failed("Service currently unavailable due to hook"))
    }
}

fn timed_out() -> ApiError {
    ApiError::unprocessable(
        "hook_timeout",
        "Failed to reach hook within maximum time of 5.000000 seconds",
    )
}

/// GoTrue's answer when a hook failed (no error code of its own).
pub fn failed(message: &str) -> ApiError {
    ApiError::new(500, "unexpected_failure", message.to_string())
}

/// Whether `e` is a hook's own refusal with a client error (its error
/// object said 4xx): asking again would be refused again.
pub fn is_refusal(e: &ApiError) -> bool {
    e.code == REFUSED && e.status < 500
}

/// The code GoTrue renders for a hook's own error with a status not 500.
const REFUSED: &str = "unknown";

/// A 2xx answer's JSON: `application/json`, at most 200 KiB.
async fn read_json(answer: reqwest::Response) -> ApiResult<Value> {
    let content_type = answer
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let Some(ct) = content_type else {
        return Err(ApiError::bad_request(
            "hook_payload_invalid_content_type",
            "Invalid Content-Type: Missing Content-Type header",
        ));
    };
    if ct.split(';').next().map(str::trim) != Some("application/json") {
        return Err(ApiError::bad_request(
            "hook_payload_invalid_content_type",
            format!("Invalid JSON response. Received content-type: {ct}"),
        ));
    }
    let body = crate::outside::read_bounded(answer, ANSWER_LIMIT)
        .await
        .map_err(|e| match e.starts_with("answer longer than") {
            true => ApiError::unprocessable(
                "hook_payload_over_size_limit",
                "Payload size exceeded size limit of 204800 bytes",
            ),
            // Cut off by the budget (a trickling answer) or the connection.
            false => timed_out(),
        })?;
    serde_json::from_slice(&body).map_err(|_| failed("Error unmarshaling JSON output."))
}

/// A hook's own refusal, `{"error": {"http_code": N, "message": "…"}}`,
/// becomes the API's answer (GoTrue's rule: only with a message).
fn reported_error(answer: Value) -> ApiResult<Value> {
    let Some(e) = answer.get("error").filter(|e| e.is_object()) else {
        return Ok(answer);
    };
    let message = e["message"].as_str().unwrap_or_default();
    if message.is_empty() {
        return Ok(answer);
    }
    let status = e["http_code"]
        .as_u64()
        .and_then(|c| u16::try_from(c).ok())
        .filter(|c| (400..600).contains(c))
        .unwrap_or(500);
    let code = if status == 500 {
        "unexpected_failure"
    } else {
        REFUSED
    };
    Err(ApiError::new(status, code, message.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hooks_error_object_becomes_the_answer() {
        let e = reported_error(json!({"error": {"http_code": 403, "message": "no"}})).unwrap_err();
        assert_eq!(
            (e.status, e.code, e.message.as_str()),
            (403, "unknown", "no")
        );
        assert!(is_refusal(&e));
        let e = reported_error(json!({"error": {"message": "down"}})).unwrap_err();
        assert_eq!((e.status, e.code), (500, "unexpected_failure"));
        assert!(!is_refusal(&e));
        assert!(reported_error(json!({"error": {"message": ""}, "claims": {}})).is_ok());
    }

    #[test]
    fn every_hook_has_gotrues_names() {
        let envs: Vec<&str> = Hook::ALL.iter().map(|h| h.env()).collect();
        assert_eq!(envs.len(), 7);
        for h in Hook::ALL {
            assert_eq!(h.label(), h.env().to_lowercase());
        }
        assert_eq!(Hook::SendSms.name(), "send-sms");
    }
}
