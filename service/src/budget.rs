//! What bounds sending: the deployment's email and SMS budgets
//! (`GOTRUE_RATE_LIMIT_EMAIL_SENT`, `GOTRUE_RATE_LIMIT_SMS_SENT`), one
//! message drawn per send, in the transaction that sends it, from a row
//! every process shares; and the send window of one recipient.

use castellan_core::config::SendBudget;
use castellan_core::store::{Budget, Tx};
use castellan_core::{ApiError, ApiResult};
use chrono::{DateTime, Utc};

/// Draws one message from `kind`'s budget in `tx`; 429 when it is spent.
pub(crate) async fn spend(
    tx: &mut Tx,
    kind: Budget,
    budget: SendBudget,
    now: DateTime<Utc>,
) -> ApiResult<()> {
    if tx.take_budget(kind, budget.events, budget.per, now).await? {
        return Ok(());
    }
    let (counter, code, message) = match kind {
        Budget::Email => (
            "castellan_email_budget_exhausted_total",
            "over_email_send_rate_limit",
            "email rate limit exceeded",
        ),
        Budget::Sms => (
            "castellan_sms_budget_exhausted_total",
            "over_sms_send_rate_limit",
            "SMS rate limit exceeded",
        ),
    };
    metrics::counter!(counter).increment(1);
    Err(ApiError::too_many_requests(
        code,
        message,
        budget.per.as_secs(),
    ))
}

/// 429 `code` while `window` since the `last` send is still open (GoTrue's
/// words, with the seconds left in `Retry-After`).
pub(crate) fn window_open(
    window: std::time::Duration,
    code: &'static str,
    last: DateTime<Utc>,
    now: DateTime<Utc>,
) -> ApiResult<()> {
    let window = chrono::Duration::from_std(window).unwrap_or_default();
    let left = (last + window - now).num_seconds();
    if left > 0 {
        return Err(ApiError::too_many_requests(
            code,
            format!("For security purposes, you can only request this after {left} seconds."),
            left as u64,
        ));
    }
    Ok(())
}
