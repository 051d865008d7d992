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
    let left = last + window - now;
    if left > chrono::Duration::zero() {
        // GoTrue's words truncate the seconds (so "after 0 seconds" in the
        // last one); Retry-After rounds up, never telling a client to retry early.
        let whole = left.num_seconds();
        let retry = whole + i64::from(left.subsec_nanos() > 0);
        return Err(ApiError::too_many_requests(
            code,
            format!("For security purposes, you can only request this after {whole} seconds."),
            retry.max(1) as u64,
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_holds_to_its_last_instant_in_gotrues_words() {
        let sent = chrono::DateTime::<Utc>::from_timestamp(1_000, 0).unwrap();
        let window = std::time::Duration::from_secs(60);
        let at = |ms: i64| sent + chrono::Duration::milliseconds(ms);
        let e = window_open(window, "over_email_send_rate_limit", sent, at(59_400)).unwrap_err();
        assert_eq!(e.status, 429);
        assert_eq!(e.code, "over_email_send_rate_limit");
        assert_eq!(
            e.message,
            "For security purposes, you can only request this after 0 seconds."
        );
        assert_eq!(e.retry_after, Some(1), "never told to retry early");
        let e = window_open(window, "c", sent, at(1_500)).unwrap_err();
        assert!(e.message.contains("after 58 seconds"), "{}", e.message);
        assert_eq!(e.retry_after, Some(59));
        assert!(window_open(window, "c", sent, at(60_000)).is_ok());
    }
}
