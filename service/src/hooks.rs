//! Auth hooks (GoTrue's `internal/hooks`): castellan hands a hook a JSON
//! payload and reads its answer, over HTTP signed with Standard Webhooks or
//! by calling a PostgreSQL function. One transport for every hook; each
//! hook's payload and rules beside its caller (the custom access token
//! hook: `custom_access_token`).

use std::time::{Duration, Instant};

use castellan_core::config::{HookConfig, HookTarget};
use castellan_core::{ApiError, ApiResult};
use oauth2::reqwest;
use serde_json::{Map, Value, json};

/// GoTrue's budget for all of one HTTP call's attempts together.
const HTTP_BUDGET: Duration = Duration::from_secs(5);
const ATTEMPTS: usize = 3;
const BACKOFF: Duration = Duration::from_secs(2);
/// The most of an answer read (GoTrue's 200 KiB).
const ANSWER_LIMIT: usize = 200 * 1024;

#[derive(Clone)]
pub struct Hooks {
    http: reqwest::Client,
}

impl Hooks {
    pub fn new() -> Result<Self, String> {
        Ok(Self {
            http: crate::outside::client(HTTP_BUDGET, None)?,
        })
    }

    /// Calls `hook` (named `name` in metrics) with `payload`: its answer, or
    /// the error GoTrue answers for what went wrong (the hook's own error
    /// object included).
    pub async fn call(
        &self,
        ctx: &crate::Ctx,
        name: &'static str,
        hook: &HookConfig,
        payload: &Value,
    ) -> ApiResult<Value> {
        let started = Instant::now();
        let answer = match &hook.target {
            HookTarget::Http(url) => self.http_call(url, &hook.keys, payload).await,
            HookTarget::PgFunction { schema, function } => ctx
                .store
                .call_hook_function(schema, function, payload)
                .await
                .map(|v| v.unwrap_or(Value::Null))
                .map_err(|e| {
                    ApiError::internal("hook", e).with_message(format!(
                        "Error running hook URI: pg-functions://postgres/{schema}/{function}"
                    ))
                }),
        };
        let answer = answer.and_then(reported_error);
        if let Err(e) = &answer {
            // The hook and what went wrong; never its URI or secrets.
            tracing::warn!(hook = name, status = e.status, code = e.code, error = %e.message, "hook call failed");
        }
        let outcome = if answer.is_ok() { "ok" } else { "error" };
        metrics::counter!("castellan_hook_calls_total", "hook" => name, "outcome" => outcome)
            .increment(1);
        metrics::histogram!("castellan_hook_seconds", "hook" => name)
            .record(started.elapsed().as_secs_f64());
        answer
    }

    /// POST, signed, within GoTrue's 5-second budget for up to 3 attempts.
    async fn http_call(&self, url: &str, keys: &[Vec<u8>], payload: &Value) -> ApiResult<Value> {
        let body = serde_json::to_vec(payload).map_err(|e| ApiError::internal("hook", e))?;
        let deadline = Instant::now() + HTTP_BUDGET;
        let timeout = || {
            ApiError::unprocessable(
                "hook_timeout",
                "Failed to reach hook within maximum time of 5.000000 seconds",
            )
        };
        for attempt in 1..=ATTEMPTS {
            let id = uuid::Uuid::new_v4().to_string();
            let ts = chrono::Utc::now().timestamp();
            let sent = self
                .http
                .post(url)
                .header("content-type", "application/json")
                .header("webhook-id", &id)
                .header("webhook-timestamp", ts.to_string())
                .header(
                    "webhook-signature",
                    castellan_core::crypto::webhook::signature(keys, &id, ts, &body),
                )
                .timeout(deadline.saturating_duration_since(Instant::now()))
                .body(body.clone())
                .send()
                .await;
            let answer = match sent {
                Ok(a) => a,
                Err(e) if e.is_timeout() => return Err(timeout()),
                Err(_) if attempt == ATTEMPTS => {
                    return Err(ApiError::unprocessable(
                        "hook_timeout_after_retry",
                        "Failed to reach hook after maximum retries",
                    ));
                }
                Err(_) => {
                    if Instant::now() + BACKOFF >= deadline {
                        return Err(timeout());
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
                429 | 503 => return Err(hook_failed("Service currently unavailable due to hook")),
                400 => return Err(hook_failed("Invalid payload sent to hook")),
                401 => return Err(hook_failed("Hook requires authorization token")),
                n => {
                    return Err(hook_failed(&format!(
                        "Unexpected status code returned from hook: {n}"
                    )));
                }
            }
        }
        Err(hook_failed("Service currently unavailable due to hook"))
    }
}

fn hook_failed(message: &str) -> ApiError {
    ApiError::new(500, "unexpected_failure", message.to_string())
}

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
            false => ApiError::unprocessable(
                "hook_timeout",
                "Failed to reach hook within maximum time of 5.000000 seconds",
            ),
        })?;
    serde_json::from_slice(&body).map_err(|_| hook_failed("Error unmarshaling JSON output."))
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
        "unknown"
    };
    Err(ApiError::new(status, code, message.to_string()))
}

/// Calls `hook` with `fields` and GoTrue's `metadata` (a fresh id, the
/// time, the hook's `name` as GoTrue gives it); `metric` names it in metrics.
async fn invoke(
    ctx: &crate::Ctx,
    metric: &'static str,
    name: &str,
    hook: &HookConfig,
    mut fields: Value,
) -> ApiResult<Value> {
    fields["metadata"] = json!({
        "uuid": uuid::Uuid::new_v4(),
        "time": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        "name": name,
    });
    let hooks = ctx
        .hooks
        .as_ref()
        .ok_or_else(|| hook_failed("hooks are not ready"))?;
    hooks.call(ctx, metric, hook, &fields).await
}

/// The password verification attempt hook, told of each password tried
/// on an account (right or wrong): it may refuse the sign-in, and end every
/// session of the user.
pub async fn password_attempt(
    ctx: &crate::Ctx,
    hook: &HookConfig,
    user_id: uuid::Uuid,
    valid: bool,
) -> ApiResult<()> {
    let fields = json!({"user_id": user_id, "valid": valid});
    let answer = invoke(
        ctx,
        "password_verification_attempt",
        "password-verification",
        hook,
        fields,
    )
    .await?;
    if answer["decision"] != "reject" {
        return Ok(());
    }
    if answer["should_logout_user"] == true {
        let mut tx = ctx.store.begin().await?;
        crate::sessions::end(&mut tx, user_id, castellan_core::store::SessionScope::All).await?;
        tx.commit().await?;
    }
    let message = answer["message"]
        .as_str()
        .filter(|m| !m.is_empty())
        .unwrap_or("Further password verification attempts will be rejected.");
    Err(ApiError::bad_request(
        "invalid_credentials",
        message.to_string(),
    ))
}

/// The claims an access token must keep, and the type each must have.
const REQUIRED_CLAIMS: [&str; 10] = [
    "aud",
    "exp",
    "iat",
    "sub",
    "email",
    "phone",
    "role",
    "aal",
    "session_id",
    "is_anonymous",
];

/// The custom access token hook: `claims` out are the token's claims,
/// checked against GoTrue's minimum schema before they are signed.
pub async fn custom_access_token(
    ctx: &crate::Ctx,
    hook: &HookConfig,
    user_id: uuid::Uuid,
    claims: Value,
    method: &str,
) -> ApiResult<Map<String, Value>> {
    let fields = json!({"user_id": user_id, "claims": claims, "authentication_method": method});
    let answer = invoke(
        ctx,
        "custom_access_token",
        "customize-access-token",
        hook,
        fields,
    )
    .await?;
    let Some(out) = answer.get("claims") else {
        return Err(hook_failed("output claims field is missing"));
    };
    let Value::Object(out) = out else {
        return Err(hook_failed("Error unmarshaling JSON output."));
    };
    let problems = schema_problems(out);
    if !problems.is_empty() {
        return Err(hook_failed(&format!(
            "output claims do not conform to the expected schema: \n{}",
            problems
                .iter()
                .map(|p| format!("- {p}\n"))
                .collect::<String>()
        )));
    }
    Ok(out.clone())
}

/// GoTrue's minimum viable token schema, as a list of what breaks it.
fn schema_problems(c: &Map<String, Value>) -> Vec<String> {
    let mut out: Vec<String> = REQUIRED_CLAIMS
        .iter()
        .filter(|k| !c.contains_key(**k))
        .map(|k| format!("(root): {k} is required"))
        .collect();
    let kind = |k: &str, ok: fn(&Value) -> bool, what: &str, out: &mut Vec<String>| {
        if let Some(v) = c.get(k)
            && !ok(v)
        {
            out.push(format!("{k}: Invalid type. Expected: {what}"));
        }
    };
    let integer = |v: &Value| v.as_i64().is_some() || v.as_u64().is_some();
    kind(
        "aud",
        |v| v.is_string() || v.is_array(),
        "string or array",
        &mut out,
    );
    for k in ["exp", "iat", "nbf"] {
        kind(k, integer, "integer", &mut out);
    }
    for k in [
        "jti",
        "iss",
        "sub",
        "email",
        "phone",
        "role",
        "aal",
        "session_id",
        "client_id",
    ] {
        kind(k, Value::is_string, "string", &mut out);
    }
    for k in ["app_metadata", "user_metadata"] {
        kind(k, Value::is_object, "object", &mut out);
    }
    // Stricter than GoTrue's schema: castellan reads it back as a boolean.
    kind("is_anonymous", Value::is_boolean, "boolean", &mut out);
    kind(
        "amr",
        |v| {
            v.as_array()
                .is_some_and(|a| a.iter().all(|i| i.is_string() || i.is_object()))
        },
        "array of strings or objects",
        &mut out,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_minimum_schema_names_what_is_missing_or_mistyped() {
        let good = json!({"aud": "authenticated", "exp": 1, "iat": 1, "sub": "u", "email": "",
            "phone": "", "role": "authenticated", "aal": "aal1", "session_id": "s",
            "is_anonymous": false, "tenant": "acme"});
        assert!(schema_problems(good.as_object().unwrap()).is_empty());
        let mut bad = good.as_object().unwrap().clone();
        bad.remove("aud");
        bad.insert("exp".into(), json!("soon"));
        assert_eq!(
            schema_problems(&bad),
            vec![
                "(root): aud is required",
                "exp: Invalid type. Expected: integer"
            ]
        );
    }

    #[test]
    fn a_hooks_error_object_becomes_the_answer() {
        let e = reported_error(json!({"error": {"http_code": 403, "message": "no"}})).unwrap_err();
        assert_eq!(
            (e.status, e.code, e.message.as_str()),
            (403, "unknown", "no")
        );
        let e = reported_error(json!({"error": {"message": "down"}})).unwrap_err();
        assert_eq!((e.status, e.code), (500, "unexpected_failure"));
        assert!(reported_error(json!({"error": {"message": ""}, "claims": {}})).is_ok());
    }
}
