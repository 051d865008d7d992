//! The `OtpIssuer` actor: it alone holds the send windows this process has
//! seen (when each user was last sent each kind of token) and the email and
//! SMS budget this process has leased from the deployment's shared row.
//! Issuing and verifying run in the callers' tasks ([`crate::otp`]), which
//! ask it for a window before opening a transaction (`LastSent`) and tell it
//! what they sent after commit (`Sent`); a send asks it for a message of
//! the lease (`Draw`) and, when it has none, draws a lease on the row
//! itself and hands it the spare after commit (`Leased`).

use std::time::Instant;

use castellan_core::store::{Budget, TokenType};
use chrono::{DateTime, Utc};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use uuid::Uuid;

use crate::actors::mailbox::Mail;

/// The send windows this process has seen: when each user was last sent
/// each kind of token. The database stays the authority (other processes
/// send too); a window seen here is a lower bound on the real one, so a
/// request inside it is refused without opening a transaction or taking
/// the user's row lock (on SQLite, the one writer's turn).
pub struct SendWindows {
    sent: moka::sync::Cache<(Uuid, TokenType), DateTime<Utc>>,
}

impl SendWindows {
    pub(crate) fn new(window: std::time::Duration) -> Self {
        Self {
            sent: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(window.max(std::time::Duration::from_secs(1)))
                .build(),
        }
    }

    /// The user's send times were reset (a password change): no window left.
    fn forget(&self, user: Uuid) {
        for tt in TokenType::ALL {
            self.sent.invalidate(&(user, tt));
        }
    }

    /// Only ever later: a window never moves back.
    fn sent(&self, user: Uuid, kinds: Vec<TokenType>, at: DateTime<Utc>) {
        for tt in kinds {
            if self.sent.get(&(user, tt)).is_none_or(|t| t < at) {
                self.sent.insert((user, tt), at);
            }
        }
    }
}

/// Messages of one budget this process drew on the shared row ahead of its
/// sends, good until the row's window ends.
#[derive(Debug, Clone, Copy)]
pub struct Lease {
    pub budget: Budget,
    /// The budget's size it was drawn under: a change voids it.
    pub events: u32,
    pub until: DateTime<Utc>,
    pub left: u32,
}

/// The leases held, one per budget; a lease of an ended window is void
/// (its messages were counted as sent: the row never gets them back).
#[derive(Default)]
struct Leases {
    email: Option<Lease>,
    sms: Option<Lease>,
}

impl Leases {
    fn slot(&mut self, budget: Budget) -> &mut Option<Lease> {
        match budget {
            Budget::Email => &mut self.email,
            Budget::Sms => &mut self.sms,
        }
    }

    /// One message of `budget`'s lease, if one is left in its window and
    /// the budget is still the size it was drawn under.
    fn draw(&mut self, budget: Budget, events: u32, now: DateTime<Utc>) -> bool {
        match self.slot(budget) {
            Some(l) if l.left > 0 && now < l.until && l.events == events => {
                l.left -= 1;
                true
            }
            _ => false,
        }
    }

    /// A new lease joins what is left of one of the same window, or
    /// replaces one of an earlier window.
    fn add(&mut self, new: Lease) {
        let slot = self.slot(new.budget);
        match slot {
            Some(l) if l.until == new.until && l.events == new.events => l.left += new.left,
            _ => *slot = Some(new),
        }
    }

    fn held(&self) -> u32 {
        [self.email, self.sms]
            .iter()
            .flatten()
            .map(|l| l.left)
            .sum()
    }
}

/// The actor's state: its send windows and its leases.
pub struct IssuerState {
    windows: SendWindows,
    leases: Leases,
}

pub enum OtpMsg {
    /// Tokens of these kinds went to this user at this time (committed).
    Sent {
        user: Uuid,
        kinds: Vec<TokenType>,
        at: DateTime<Utc>,
    },
    /// When this user was last sent this kind of token, as far as this
    /// process has seen.
    LastSent {
        user: Uuid,
        tt: TokenType,
        reply: RpcReplyPort<Option<DateTime<Utc>>>,
    },
    /// One message of this budget from the lease: true when there was one.
    Draw {
        budget: Budget,
        events: u32,
        now: DateTime<Utc>,
        reply: RpcReplyPort<bool>,
    },
    /// A lease's spare messages, drawn on the row by a committed send.
    Leased(Lease),
    /// The user's send times were reset (committed).
    Forget { user: Uuid },
}

/// The `OtpIssuer` actor: it alone holds the send windows; issuing and
/// verifying run in the callers' tasks, which ask it for a window before
/// opening a transaction and tell it what they sent after commit.
pub struct OtpIssuerActor;

impl Actor for OtpIssuerActor {
    type Msg = Mail<OtpMsg>;
    type State = IssuerState;
    type Arguments = std::time::Duration;

    async fn pre_start(
        &self,
        _me: ActorRef<Mail<OtpMsg>>,
        window: std::time::Duration,
    ) -> Result<IssuerState, ActorProcessingErr> {
        Ok(IssuerState {
            windows: SendWindows::new(window),
            leases: Leases::default(),
        })
    }

    async fn handle(
        &self,
        _me: ActorRef<Mail<OtpMsg>>,
        msg: Mail<OtpMsg>,
        state: &mut IssuerState,
    ) -> Result<(), ActorProcessingErr> {
        let start = Instant::now();
        let windows = &mut state.windows;
        let (kind, outcome) = match msg.open() {
            OtpMsg::Sent { user, kinds, at } => {
                windows.sent(user, kinds, at);
                metrics::gauge!("castellan_otp_windows").set(windows.sent.entry_count() as f64);
                ("sent", "ok")
            }
            OtpMsg::LastSent { user, tt, reply } => {
                let last = windows.sent.get(&(user, tt));
                let outcome = if last.is_some() { "seen" } else { "unseen" };
                let _ = reply.send(last);
                ("last_sent", outcome)
            }
            OtpMsg::Draw {
                budget,
                events,
                now,
                reply,
            } => {
                let drawn = state.leases.draw(budget, events, now);
                let _ = reply.send(drawn);
                ("draw", if drawn { "leased" } else { "none" })
            }
            OtpMsg::Leased(lease) => {
                state.leases.add(lease);
                ("leased", "ok")
            }
            OtpMsg::Forget { user } => {
                windows.forget(user);
                ("forget", "ok")
            }
        };
        metrics::gauge!("castellan_otp_leased_messages").set(f64::from(state.leases.held()));
        crate::actors::supervisor::record_message("otp_issuer", kind, outcome, start);
        Ok(())
    }
}
