//! The `OtpIssuer` actor: it alone holds the send windows this process has
//! seen (when each user was last sent each kind of token). Issuing and
//! verifying run in the callers' tasks ([`crate::otp`]), which ask it for a
//! window before opening a transaction (`LastSent`) and tell it what they
//! sent after commit (`Sent`).

use std::time::Instant;

use castellan_core::store::TokenType;
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

    /// Only ever later: a window never moves back.
    fn sent(&self, user: Uuid, kinds: Vec<TokenType>, at: DateTime<Utc>) {
        for tt in kinds {
            if self.sent.get(&(user, tt)).is_none_or(|t| t < at) {
                self.sent.insert((user, tt), at);
            }
        }
    }
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
}

/// The `OtpIssuer` actor: it alone holds the send windows; issuing and
/// verifying run in the callers' tasks, which ask it for a window before
/// opening a transaction and tell it what they sent after commit.
pub struct OtpIssuerActor;

impl Actor for OtpIssuerActor {
    type Msg = Mail<OtpMsg>;
    type State = SendWindows;
    type Arguments = std::time::Duration;

    async fn pre_start(
        &self,
        _me: ActorRef<Mail<OtpMsg>>,
        window: std::time::Duration,
    ) -> Result<SendWindows, ActorProcessingErr> {
        Ok(SendWindows::new(window))
    }

    async fn handle(
        &self,
        _me: ActorRef<Mail<OtpMsg>>,
        msg: Mail<OtpMsg>,
        windows: &mut SendWindows,
    ) -> Result<(), ActorProcessingErr> {
        let start = Instant::now();
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
        };
        crate::actors::supervisor::record_message("otp_issuer", kind, outcome, start);
        Ok(())
    }
}
