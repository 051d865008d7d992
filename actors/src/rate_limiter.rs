//! The `RateLimiter` actor: owns per-key token buckets (governor) and the
//! live limit settings. The hot path (`RateLimits::check`) reads the buckets
//! the actor publishes through an `ArcSwap`, so a check costs no mailbox
//! round trip; every change of settings goes through the actor.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use crate::mailbox::Mail;
use arc_swap::ArcSwap;
use castellan_core::ApiError;
use castellan_core::config::{RateLimit, RateLimits as Settings};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

/// The actor's name in logs and metrics.
const NAME: &str = "rate_limiter";

/// One bucket per limited route family, as GoTrue keeps one limiter per
/// route; each is sized by the variable `setting` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    TokenRefresh,
    SignUps,
    AnonymousUsers,
    Verify,
    Otp,
    MagicLink,
    Recover,
    Resend,
    UserUpdate,
    MfaChallenge,
    MfaVerify,
    /// `/authorize`, `/callback` and `/user/identities/authorize`
    /// (castellan's own: each stores a flow state or calls a provider).
    Authorize,
}

impl Bucket {
    pub const ALL: [Bucket; 12] = [
        Bucket::TokenRefresh,
        Bucket::SignUps,
        Bucket::AnonymousUsers,
        Bucket::Verify,
        Bucket::Otp,
        Bucket::MagicLink,
        Bucket::Recover,
        Bucket::Resend,
        Bucket::UserUpdate,
        Bucket::MfaChallenge,
        Bucket::MfaVerify,
        Bucket::Authorize,
    ];

    /// The variable that sizes this bucket.
    pub fn variable(self) -> &'static str {
        match self {
            Bucket::TokenRefresh => "GOTRUE_RATE_LIMIT_TOKEN_REFRESH",
            Bucket::AnonymousUsers => "GOTRUE_RATE_LIMIT_ANONYMOUS_USERS",
            Bucket::Verify => "GOTRUE_RATE_LIMIT_VERIFY",
            Bucket::MfaChallenge | Bucket::MfaVerify => {
                "GOTRUE_MFA_RATE_LIMIT_CHALLENGE_AND_VERIFY"
            }
            Bucket::SignUps
            | Bucket::Otp
            | Bucket::MagicLink
            | Bucket::Recover
            | Bucket::Resend
            | Bucket::UserUpdate
            | Bucket::Authorize => "GOTRUE_RATE_LIMIT_OTP",
        }
    }

    /// The metric label (a closed set).
    pub fn label(self) -> &'static str {
        match self {
            Bucket::TokenRefresh => "token_refresh",
            Bucket::SignUps => "sign_ups",
            Bucket::AnonymousUsers => "anonymous_users",
            Bucket::Verify => "verify",
            Bucket::Otp => "otp",
            Bucket::MagicLink => "magic_link",
            Bucket::Recover => "recover",
            Bucket::Resend => "resend",
            Bucket::UserUpdate => "user_update",
            Bucket::MfaChallenge => "mfa_challenge",
            Bucket::MfaVerify => "mfa_verify",
            Bucket::Authorize => "authorize",
        }
    }

    fn setting(self, s: &Settings) -> RateLimit {
        match self {
            Bucket::TokenRefresh => s.token_refresh,
            Bucket::SignUps => s.sign_ups,
            Bucket::AnonymousUsers => s.anonymous_users,
            Bucket::Verify => s.verify,
            Bucket::MfaChallenge | Bucket::MfaVerify => s.mfa,
            Bucket::Otp
            | Bucket::MagicLink
            | Bucket::Recover
            | Bucket::Resend
            | Bucket::UserUpdate
            | Bucket::Authorize => s.otp,
        }
    }
}

/// A bucket set built from one version of the settings. `None` = limit 0: refuse all.
struct Limiter {
    limit: RateLimit,
    buckets: Option<DefaultKeyedRateLimiter<String>>,
}

impl Limiter {
    fn new(limit: RateLimit) -> Self {
        let buckets = (limit.events > 0).then(|| {
            let period = limit.per / limit.events;
            let burst = NonZeroU32::new(limit.burst.max(1)).expect("max(1)");
            let quota = Quota::with_period(period.max(Duration::from_nanos(1)))
                .expect("non-zero period")
                .allow_burst(burst);
            DefaultKeyedRateLimiter::keyed(quota)
        });
        Self { limit, buckets }
    }
}

pub struct Limiters {
    pub settings: Settings,
    /// Indexed like `Bucket::ALL`.
    limiters: Vec<Limiter>,
}

impl Limiters {
    fn new(settings: Settings) -> Self {
        let limiters = Bucket::ALL
            .iter()
            .map(|b| Limiter::new(b.setting(&settings)))
            .collect();
        Self { settings, limiters }
    }
    fn get(&self, b: Bucket) -> &Limiter {
        &self.limiters[b as usize]
    }
    fn sweep(&self) {
        for l in self.limiters.iter().filter_map(|l| l.buckets.as_ref()) {
            l.retain_recent();
        }
    }
}

/// What handlers hold: the published buckets.
#[derive(Clone)]
pub struct RateLimits {
    shared: Arc<ArcSwap<Limiters>>,
}

impl RateLimits {
    pub fn new(settings: Settings) -> Self {
        Self {
            shared: Arc::new(ArcSwap::from_pointee(Limiters::new(settings))),
        }
    }

    pub fn settings(&self) -> Settings {
        self.shared.load().settings.clone()
    }

    /// Replaces the settings; the buckets start afresh when they change
    /// (equal settings keep the counts).
    fn replace(&self, settings: Settings) {
        if self.settings() != settings {
            self.shared.store(Arc::new(Limiters::new(settings)));
        }
    }

    /// Applies `settings` through the `RateLimiter` actor, which owns the
    /// buckets (directly while it restarts).
    pub async fn apply(&self, actor: Option<ActorRef<Mail<RateLimiterMsg>>>, settings: Settings) {
        if let Some(actor) = actor {
            let s = settings.clone();
            let sent = actor
                .call(
                    |reply| Mail::new(NAME, RateLimiterMsg::SetLimits(Box::new(s), reply)),
                    None,
                )
                .await;
            if matches!(sent, Ok(ractor::rpc::CallResult::Success(()))) {
                return;
            }
        }
        self.replace(settings);
    }

    /// Takes one token from `key`'s bucket, or answers 429 with `Retry-After`.
    pub fn check(
        &self,
        bucket: Bucket,
        key: &str,
        key_source: &'static str,
    ) -> Result<(), ApiError> {
        let all = self.shared.load();
        let limiter = all.get(bucket);
        let wait = match &limiter.buckets {
            None => Some(limiter.limit.per),
            Some(l) => l
                .check_key(&key.to_string())
                .err()
                .map(|n| n.wait_time_from(DefaultClock::default().now())),
        };
        match wait {
            None => Ok(()),
            Some(wait) => {
                metrics::counter!("castellan_rate_limit_rejections_total", "bucket" => bucket.label(), "key" => key_source)
                    .increment(1);
                let l = limiter.limit;
                Err(ApiError::too_many_requests(
                    "over_request_rate_limit",
                    format!(
                        "Request rate limit reached: {} allows {} requests per {}s (burst {})",
                        bucket.variable(),
                        l.events,
                        l.per.as_secs(),
                        l.burst
                    ),
                    wait.as_secs_f64().ceil() as u64,
                ))
            }
        }
    }
}

pub enum RateLimiterMsg {
    /// Replace the settings; the buckets start afresh when they change.
    SetLimits(Box<Settings>, RpcReplyPort<()>),
    GetLimits(RpcReplyPort<Settings>),
    /// Drop idle keys so memory stays bounded.
    Sweep,
}

pub struct RateLimiter;

impl Actor for RateLimiter {
    type Msg = Mail<RateLimiterMsg>;
    type State = RateLimits;
    type Arguments = RateLimits;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        limits: RateLimits,
    ) -> Result<RateLimits, ActorProcessingErr> {
        myself.send_interval(Duration::from_secs(60), || {
            Mail::new(NAME, RateLimiterMsg::Sweep)
        });
        Ok(limits)
    }

    async fn handle(
        &self,
        _me: ActorRef<Self::Msg>,
        msg: Self::Msg,
        limits: &mut RateLimits,
    ) -> Result<(), ActorProcessingErr> {
        let msg = msg.open();
        let kind = match &msg {
            RateLimiterMsg::SetLimits(..) => "set_limits",
            RateLimiterMsg::GetLimits(_) => "get_limits",
            RateLimiterMsg::Sweep => "sweep",
        };
        let start = std::time::Instant::now();
        match msg {
            RateLimiterMsg::SetLimits(settings, reply) => {
                limits.replace(*settings);
                let _ = reply.send(());
            }
            RateLimiterMsg::GetLimits(reply) => {
                let _ = reply.send(limits.settings());
            }
            RateLimiterMsg::Sweep => limits.shared.load().sweep(),
        }
        crate::supervisor::record_message(NAME, kind, "ok", start);
        Ok(())
    }
}
