//! What bounds sending: the deployment's email and SMS budgets
//! (`GOTRUE_RATE_LIMIT_EMAIL_SENT`, `GOTRUE_RATE_LIMIT_SMS_SENT`), drawn
//! from a row every process shares, and the send window of one recipient.
//!
//! A small budget (GoTrue's default is 30 an hour) is drawn one message per
//! send, in the transaction that sends it, so every process sees every send
//! at once. A large one is drawn a lease at a time: the send that finds no
//! lease takes up to [`lease_size`] messages in one row lock, and the
//! `OtpIssuer` actor holds the spare for this process's next sends, so the
//! row is locked once per lease instead of once per send, which would
//! serialise every process's sends. A lease dies with its window or the
//! actor, and with a change of the budget's size (its messages stay
//! counted: the budget is never exceeded, a window may end a few short).

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use castellan_core::config::SendBudget;
use castellan_core::store::{Budget, Tx};
use castellan_core::{ApiError, ApiResult};
use chrono::{DateTime, Utc};
use ractor::ActorRef;

use crate::actors::mailbox::{Mail, ask};
use crate::actors::otp_issuer::{Lease, OtpMsg};

/// Messages one draw on the shared row takes for a budget of `events` per
/// window: one up to 63 (each send counted where all see it), a 32nd of the
/// budget above, at most 64.
pub(crate) fn lease_size(events: u32) -> u32 {
    (events / 32).clamp(1, 64)
}

/// This process's draws on the budgets, through the `OtpIssuer` actor
/// (without it, as in tools, every send draws on the row).
#[derive(Clone)]
pub struct Budgets {
    issuer: Arc<ArcSwapOption<ActorRef<Mail<OtpMsg>>>>,
}

impl Budgets {
    pub fn new(issuer: Arc<ArcSwapOption<ActorRef<Mail<OtpMsg>>>>) -> Self {
        Self { issuer }
    }

    /// One message of `kind` for a send in `tx`: from this process's lease,
    /// else from a lease drawn on the row in `tx`, whose spare is handed to
    /// the actor once `tx` commits ([`Budgets::keep`]). 429 when spent.
    pub(crate) async fn spend(
        &self,
        tx: &mut Tx,
        kind: Budget,
        budget: SendBudget,
        now: DateTime<Utc>,
    ) -> ApiResult<Option<Lease>> {
        let size = lease_size(budget.events);
        if size > 1 && self.draw(kind, budget.events, now).await {
            return Ok(None);
        }
        let (granted, until) = tx
            .take_budget(kind, budget.events, budget.per, now, size)
            .await?;
        if granted == 0 {
            return Err(exhausted(kind, budget));
        }
        Ok((granted > 1).then_some(Lease {
            budget: kind,
            events: budget.events,
            until,
            left: granted - 1,
        }))
    }

    async fn draw(&self, budget: Budget, events: u32, now: DateTime<Utc>) -> bool {
        let Some(actor) = self.issuer.load_full() else {
            return false;
        };
        let msg = |reply| OtpMsg::Draw {
            budget,
            events,
            now,
            reply,
        };
        ask(&actor, "otp_issuer", msg).await.unwrap_or(false)
    }

    /// Hands a committed lease's spare to the actor.
    pub(crate) fn keep(&self, spare: impl IntoIterator<Item = Lease>) {
        let Some(actor) = self.issuer.load_full() else {
            return;
        };
        for lease in spare {
            let _ = actor.cast(Mail::new("otp_issuer", OtpMsg::Leased(lease)));
        }
    }
}

/// One send's draws on one budget: the budget in force, and the spare of
/// the leases its transaction drew, handed to the actor once it commits.
pub(crate) struct Draws<'a> {
    budgets: &'a Budgets,
    kind: Budget,
    pub budget: SendBudget,
    spare: Vec<Lease>,
}

impl<'a> Draws<'a> {
    pub(crate) fn new(budgets: &'a Budgets, kind: Budget, budget: SendBudget) -> Self {
        Self {
            budgets,
            kind,
            budget,
            spare: Vec::new(),
        }
    }

    /// One message for a send in `tx` (429 when the budget is spent).
    pub(crate) async fn spend(&mut self, tx: &mut Tx, now: DateTime<Utc>) -> ApiResult<()> {
        let spare = self.budgets.spend(tx, self.kind, self.budget, now).await?;
        self.spare.extend(spare);
        Ok(())
    }

    /// The send's transaction committed: its leases' spare is this process's.
    pub(crate) fn committed(self) {
        self.budgets.keep(self.spare);
    }
}

/// 429 for a spent budget, counted.
fn exhausted(kind: Budget, budget: SendBudget) -> ApiError {
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
    ApiError::too_many_requests(code, message, budget.per.as_secs())
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
    // GoTrue refuses until the window has passed, its last instant included.
    if left >= chrono::Duration::zero() {
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
    fn small_budgets_are_drawn_one_by_one_large_ones_by_leases() {
        assert_eq!(lease_size(30), 1);
        assert_eq!(lease_size(63), 1);
        assert_eq!(lease_size(1000), 31);
        assert_eq!(lease_size(100_000), 64);
        assert_eq!(lease_size(0), 1);
    }

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
        assert!(window_open(window, "c", sent, at(60_000)).is_err());
        assert!(window_open(window, "c", sent, at(60_001)).is_ok());
    }
}
