//! The auth hooks a request asks (GoTrue's `internal/api/hooks.go`): each
//! hook's payload and rules, sent by the one transport in
//! [`castellan_core::hooks`]. The send-email and send-SMS hooks are asked by
//! whoever delivers the message (see `sms_out` and the queue's workers).

use castellan_core::hooks::{Hook, failed};
use castellan_core::models::User;
use castellan_core::store::{NewUser, SessionScope, Tx};
use castellan_core::{ApiError, ApiResult};
use castellan_jobs::EmailJob;
use serde_json::{Map, Value, json};
use uuid::Uuid;

/// Asks `hook` with `fields` when it is on: its answer, or `None` when off.
async fn ask(ctx: &crate::Ctx, hook: Hook, fields: Value) -> ApiResult<Option<Value>> {
    ask_in(ctx, None, hook, fields).await
}

/// As [`ask`], a function hook inside `tx` when one is given.
async fn ask_in(
    ctx: &crate::Ctx,
    tx: Option<&mut Tx>,
    hook: Hook,
    fields: Value,
) -> ApiResult<Option<Value>> {
    let Some(cfg) = ctx.config.hooks.get(hook) else {
        return Ok(None);
    };
    let caller = ctx
        .hooks
        .as_ref()
        .ok_or_else(|| failed("hooks are not ready"))?;
    let id = Uuid::new_v4().to_string();
    caller.call_as(hook, cfg, fields, &id, tx).await.map(Some)
}

/// Ends every session of `user` (a verification hook's lockout).
async fn log_out(ctx: &crate::Ctx, user: Uuid) -> ApiResult<()> {
    let mut tx = ctx.store.begin().await?;
    crate::sessions::end(&mut tx, user, SessionScope::All).await?;
    tx.commit().await?;
    Ok(())
}

/// The hook's message, or GoTrue's default for its refusal.
fn message(answer: &Value, default: &str) -> String {
    answer["message"]
        .as_str()
        .filter(|m| !m.is_empty())
        .unwrap_or(default)
        .to_string()
}

/// The password verification attempt hook, told of each password tried
/// on an account (right or wrong): it may refuse the sign-in, and end every
/// session of the user.
pub async fn password_attempt(ctx: &crate::Ctx, user: Uuid, valid: bool) -> ApiResult<()> {
    let fields = json!({"user_id": user, "valid": valid});
    let Some(answer) = ask(ctx, Hook::PasswordVerificationAttempt, fields).await? else {
        return Ok(());
    };
    if answer["decision"] != "reject" {
        return Ok(());
    }
    if answer["should_logout_user"] == true {
        log_out(ctx, user).await?;
    }
    let default = "Further password verification attempts will be rejected.";
    Err(ApiError::bad_request(
        "invalid_credentials",
        message(&answer, default),
    ))
}

/// The MFA verification attempt hook, told of each code checked against a
/// factor: a refusal ends every session of the user (GoTrue's rule).
pub async fn mfa_attempt(
    ctx: &crate::Ctx,
    user: Uuid,
    factor: (Uuid, &str),
    valid: bool,
) -> ApiResult<()> {
    let fields =
        json!({"user_id": user, "factor_id": factor.0, "factor_type": factor.1, "valid": valid});
    let Some(answer) = ask(ctx, Hook::MfaVerificationAttempt, fields).await? else {
        return Ok(());
    };
    if answer["decision"] != "reject" {
        return Ok(());
    }
    log_out(ctx, user).await?;
    let default = "Further MFA verification attempts will be rejected.";
    Err(ApiError::new(
        403,
        "mfa_verification_rejected",
        message(&answer, default),
    ))
}

/// The before-user-created hook, shown the user about to be inserted; only
/// its error object refuses. Asked before the creating transaction opens.
pub async fn before_user_created(ctx: &crate::Ctx, user: &NewUser<'_>) -> ApiResult<()> {
    if !on(ctx, Hook::BeforeUserCreated) {
        return Ok(());
    }
    let fields = json!({"user": user.preview().to_json(&[])});
    ask(ctx, Hook::BeforeUserCreated, fields).await.map(|_| ())
}

/// The after-user-created hook, shown the committed user: its failure is
/// the request's answer, though the user stays (as in GoTrue).
pub async fn after_user_created(ctx: &crate::Ctx, user: &User) -> ApiResult<()> {
    if ctx.config.hooks.get(Hook::AfterUserCreated).is_none() {
        return Ok(());
    }
    let identities = ctx.store.identities_of(user.id).await?;
    let fields = json!({"user": user.to_json(&identities)});
    ask(ctx, Hook::AfterUserCreated, fields).await.map(|_| ())
}

/// What the send-email hook is given for a send's emails: the user and
/// GoTrue's `email_data`. An email change with two letters (secure change)
/// carries both codes in GoTrue's fields: `token` and `token_hash_new` for
/// the current address, `token_new` and `token_hash` for the new one.
pub fn send_email_payload(ctx: &crate::Ctx, user: &User, jobs: &[EmailJob]) -> Value {
    let Some(first) = jobs.first() else {
        return Value::Null;
    };
    let mut data = json!({
        "token": first.token,
        "token_hash": first.token_hash,
        // GoTrue's referrer: the site when no redirect was asked for.
        "redirect_to": match first.redirect_to.is_empty() {
            true => &ctx.config.site_url,
            false => &first.redirect_to,
        },
        "email_action_type": first.kind.action_type(),
        "site_url": ctx.config.api_external_url,
        "token_new": "",
        "token_hash_new": "",
        "old_email": "",
        "old_phone": "",
        "provider": "",
        "factor_type": "",
    });
    if let [new, current] = jobs {
        data["token"] = json!(current.token);
        data["token_hash_new"] = json!(current.token_hash);
        data["token_new"] = json!(new.token);
    }
    json!({"user": user.to_json(&[]), "email_data": data,
        "metadata": castellan_core::hooks::metadata_of_request()})
}

/// Whether a hook is on.
pub fn on(ctx: &crate::Ctx, hook: Hook) -> bool {
    ctx.config.hooks.get(hook).is_some()
}

/// Whether a hook is on and a PostgreSQL function, which GoTrue runs inside
/// the request's transaction (an HTTP hook castellan calls outside any).
pub fn in_database(ctx: &crate::Ctx, hook: Hook) -> bool {
    ctx.config.hooks.get(hook).is_some_and(|c| {
        matches!(
            c.target,
            castellan_core::config::HookTarget::PgFunction { .. }
        )
    })
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
    tx: Option<&mut Tx>,
    user_id: Uuid,
    claims: Value,
    method: &str,
) -> ApiResult<Map<String, Value>> {
    let fields = json!({"user_id": user_id, "claims": claims, "authentication_method": method});
    // Off, the hook's answer is empty: GoTrue's "missing claims" error.
    let answer = ask_in(ctx, tx, Hook::CustomAccessToken, fields)
        .await?
        .unwrap_or_default();
    let Some(out) = answer.get("claims") else {
        return Err(failed("output claims field is missing"));
    };
    let Value::Object(out) = out else {
        return Err(failed("Error unmarshaling JSON output."));
    };
    let problems = schema_problems(out);
    if !problems.is_empty() {
        return Err(failed(&format!(
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
}
