//! Sending an SMS from a request. The message is queued in the caller's
//! transaction but held back; once that commits, the request sends it
//! itself and settles the queued copy: withdrawn when the provider took or
//! refused it, let go at once for the workers to retry when the provider
//! is down or slow. So a request never waits on a provider beyond a short
//! timeout, and a message survives the process dying at any point.

use std::time::Duration;

use castellan_core::hooks::Hook;
use castellan_core::models::User;
use castellan_core::store::Tx;
use castellan_core::{ApiError, ApiResult};
use castellan_jobs::queue::{self, Queue};
use castellan_jobs::sms::{SendError, SmsJob, SmsKind};
use serde_json::json;
use uuid::Uuid;

use crate::context::Ctx;

/// GoTrue's answer when no SMS can be sent (no provider, an unknown one,
/// or one without its credentials; the reason was logged at start): a 500
/// before anything is written, so a sign-up leaves no user behind.
pub fn provider_ready(ctx: &Ctx) -> ApiResult<()> {
    match ctx.sms.missing() {
        None => Ok(()),
        Some(why) => {
            metrics::counter!("castellan_sms_total", "provider" => "none", "outcome" => "no_provider")
                .increment(1);
            Err(
                ApiError::new(500, "unexpected_failure", "Unable to get SMS provider")
                    .with_detail("sms provider", why),
            )
        }
    }
}

/// How a request's own attempt went.
pub enum FirstTry {
    /// The provider took it (its message id is logged, never answered).
    Sent,
    /// The provider could not be reached in time: the queue has it.
    Queued,
    /// The provider (or the send-SMS hook) refused it: nothing more will
    /// be tried; the answer for the request.
    Refused(ApiError),
}

/// A message carrying `code` to `user` at `to` by `channel`, from
/// `template`; with the send-SMS hook on, what the hook is given too.
pub fn job(
    ctx: &Ctx,
    (kind, user): (SmsKind, &User),
    to: &str,
    template: &str,
    code: &str,
    channel: &str,
) -> SmsJob {
    let hook = crate::hooks::on(ctx, Hook::SendSms).then(|| {
        let mut sms = json!({"otp": code, "phone": to});
        // GoTrue tells a factor's code apart so the hook may word it so.
        if kind == SmsKind::Mfa {
            sms["sms_type"] = json!("mfa");
        }
        json!({"user": user.to_json(&[]), "sms": sms,
            "metadata": castellan_core::hooks::metadata_of_request()})
    });
    SmsJob {
        hook,
        id: Uuid::new_v4(),
        kind,
        to: to.to_string(),
        body: castellan_jobs::sms::render(template, code),
        channel: channel.to_string(),
        queued_at: ctx.config.clock.now(),
    }
}

/// Queues `job` in `tx`, held back past the request's own attempt so only
/// one of the two sends it.
pub async fn hold(ctx: &Ctx, tx: &mut Tx, job: &SmsJob) -> ApiResult<()> {
    let hold = ctx.config.sms.send_timeout + Duration::from_secs(10);
    queue::enqueue_sms(tx, job, &ctx.job_seal, ctx.config.mailer.max_attempts, hold).await
}

/// The request's own attempt at a held job (after its transaction committed).
pub async fn send_first(ctx: &Ctx, job: &SmsJob) -> ApiResult<FirstTry> {
    // A hook has its own budget (5 s for every attempt): waited out whole,
    // so a hook that delivers late is not asked again by the queue.
    let timeout = match ctx.config.hooks.get(Hook::SendSms) {
        Some(_) => ctx.config.sms.send_timeout.max(Duration::from_secs(6)),
        None => ctx.config.sms.send_timeout,
    };
    let sent = match tokio::time::timeout(timeout, ctx.sms.deliver(job)).await {
        Ok(r) => r,
        Err(_) => Err(SendError::Unavailable("timed out".into())),
    };
    Ok(match sent {
        Ok(message_id) => {
            if !queue::withdraw(&ctx.store, Queue::Sms, job.id).await? {
                tracing::warn!(job = %job.id, "a worker took the SMS while the request sent it: it may arrive twice");
            }
            tracing::debug!(job = %job.id, message_id = message_id.as_deref().unwrap_or(""), "SMS sent");
            FirstTry::Sent
        }
        Err(SendError::Refused(reason)) => {
            queue::withdraw(&ctx.store, Queue::Sms, job.id).await?;
            FirstTry::Refused(refused(job.kind, &reason))
        }
        Err(SendError::Rejected(e)) => {
            queue::withdraw(&ctx.store, Queue::Sms, job.id).await?;
            FirstTry::Refused(e)
        }
        Err(SendError::Unavailable(reason)) => {
            tracing::warn!(job = %job.id, %reason, "SMS provider unavailable; the queue retries");
            queue::release_now(&ctx.store, Queue::Sms, job.id).await?;
            FirstTry::Queued
        }
    })
}

/// GoTrue's answer to a refused message: 422 `sms_send_failed`.
fn refused(kind: SmsKind, reason: &str) -> ApiError {
    let what = match kind {
        SmsKind::Mfa => "MFA",
        k => k.as_str(),
    };
    ApiError::unprocessable(
        "sms_send_failed",
        format!("Error sending {what} OTP to provider: {reason}"),
    )
}
