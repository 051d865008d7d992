//! The `RateLimiter` actor: it alone holds the per-key token buckets
//! (governor) of every limited route and the limit settings in force.
//! Requests ask it by message (`Check`); it follows the settings stored in
//! the database with a task of its own that reads them and tells it
//! (`SetLimits`), so no message waits on I/O. A change of settings rebuilds
//! only the buckets whose limit changed: the others keep their counts.
//! Its state is its own: a restart starts every bucket afresh.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::actors::mailbox::Mail;
use crate::context::Ctx;
use arc_swap::ArcSwapOption;
use castellan_core::config::{RateLimit, RateLimits as Settings};
use castellan_core::{ApiError, ApiResult};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

/// The actor's name in logs and metrics.
const NAME: &str = "rate_limiter";

pub use castellan_core::limits::Bucket;

/// One bucket's keys under one limit. `None` = limit 0: refuse all.
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

    /// Takes a token of `key`, or says how long to wait for one.
    fn take(&self, key: &str) -> Option<Duration> {
        match &self.buckets {
            None => Some(self.limit.per),
            Some(l) => l
                .check_key(&key.to_string())
                .err()
                .map(|n| n.wait_time_from(DefaultClock::default().now())),
        }
    }
}

/// The actor's state: the settings in force and a limiter per bucket
/// (indexed like `Bucket::ALL`), and the task following stored settings.
pub struct Limiters {
    settings: Settings,
    limiters: Vec<Limiter>,
    follower: Option<tokio::task::JoinHandle<()>>,
}

impl Limiters {
    fn new(settings: Settings) -> Self {
        let limiters = Bucket::ALL
            .iter()
            .map(|b| Limiter::new(b.setting(&settings)))
            .collect();
        Self {
            settings,
            limiters,
            follower: None,
        }
    }

    /// New settings: the buckets whose limit changed start afresh, the
    /// others keep their counts.
    fn replace(&mut self, settings: Settings) {
        for (i, b) in Bucket::ALL.iter().enumerate() {
            let limit = b.setting(&settings);
            if self.limiters[i].limit != limit {
                self.limiters[i] = Limiter::new(limit);
            }
        }
        self.settings = settings;
    }

    fn sweep(&self) {
        for (b, l) in Bucket::ALL.iter().zip(&self.limiters) {
            if let Some(keys) = &l.buckets {
                keys.retain_recent();
                metrics::gauge!("castellan_rate_limit_keys", "bucket" => b.label())
                    .set(keys.len() as f64);
            }
        }
    }
}

impl Drop for Limiters {
    fn drop(&mut self) {
        if let Some(f) = self.follower.take() {
            f.abort();
        }
    }
}

/// What a `Check` answers: allowed, or refused with the limit and the wait.
pub type Checked = Result<(), (RateLimit, Duration)>;

pub enum RateLimiterMsg {
    /// Take one token of `key`'s bucket.
    Check {
        bucket: Bucket,
        key: String,
        reply: RpcReplyPort<Checked>,
    },
    /// Replace the settings (only changed buckets start afresh); answered
    /// when asked by a caller, not when told by the follower.
    SetLimits(Box<Settings>, Option<RpcReplyPort<()>>),
    GetLimits(RpcReplyPort<Settings>),
    /// Drop idle keys so memory stays bounded.
    Sweep,
}

impl RateLimiterMsg {
    fn kind(&self) -> &'static str {
        match self {
            RateLimiterMsg::Check { .. } => "check",
            RateLimiterMsg::SetLimits(..) => "set_limits",
            RateLimiterMsg::GetLimits(_) => "get_limits",
            RateLimiterMsg::Sweep => "sweep",
        }
    }
}

/// How long a caller waits for the actor while the supervisor restarts it.
const RESTART_WAIT: Duration = Duration::from_secs(1);

/// What handlers hold: where the actor is, and the environment's settings
/// (the answer of a process without the actor: tools).
#[derive(Clone)]
pub struct RateLimits {
    slot: Arc<ArcSwapOption<ActorRef<Mail<RateLimiterMsg>>>>,
    defaults: Settings,
}

impl RateLimits {
    pub fn new(
        slot: Arc<ArcSwapOption<ActorRef<Mail<RateLimiterMsg>>>>,
        defaults: Settings,
    ) -> Self {
        Self { slot, defaults }
    }

    /// Without an actor (tools): the environment's settings, never a check.
    pub fn standalone(defaults: Settings) -> Self {
        Self::new(Arc::new(ArcSwapOption::empty()), defaults)
    }

    /// Asks the actor, waiting out a restart (`RESTART_WAIT` at most): a
    /// dead actor still in the slot, or one that died with the question in
    /// its mailbox, is asked again once its successor is there. `None` when
    /// none answered in time.
    async fn ask<T: Send + 'static>(
        &self,
        msg: impl Fn(RpcReplyPort<T>) -> RateLimiterMsg,
    ) -> Option<T> {
        let deadline = Instant::now() + RESTART_WAIT;
        loop {
            if let Some(actor) = self.slot.load_full()
                && let Some(t) = crate::actors::mailbox::ask(&actor, NAME, &msg).await
            {
                return Some(t);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The settings in force (the environment's without the actor).
    pub async fn settings(&self) -> Settings {
        match self.ask(RateLimiterMsg::GetLimits).await {
            Some(s) => s,
            None => self.defaults.clone(),
        }
    }

    /// Applies `settings` through the actor; false when it could not.
    pub async fn apply(&self, settings: Settings) -> bool {
        self.ask(|reply| RateLimiterMsg::SetLimits(Box::new(settings.clone()), Some(reply)))
            .await
            .is_some()
    }

    /// Takes one token from `key`'s bucket, or answers 429 with
    /// `Retry-After`; 503 when the actor cannot answer (nothing is let
    /// through unlimited).
    pub async fn check(
        &self,
        bucket: Bucket,
        key: &str,
        key_source: &'static str,
    ) -> ApiResult<()> {
        let checked = self
            .ask(|reply| RateLimiterMsg::Check {
                bucket,
                key: key.to_string(),
                reply,
            })
            .await
            .ok_or_else(|| ApiError::unavailable("rate limiter", "restarting"))?;
        let Err((l, wait)) = checked else {
            return Ok(());
        };
        metrics::counter!("castellan_rate_limit_rejections_total", "bucket" => bucket.label(), "key" => key_source)
            .increment(1);
        Err(ApiError::too_many_requests(
            "over_request_rate_limit",
            format!(
                "Request rate limit reached: {} allows {} requests per {}s (burst {})",
                bucket.limit().variable,
                l.events,
                l.per.as_secs(),
                l.burst
            ),
            wait.as_secs_f64().ceil() as u64,
        ))
    }
}

/// How often the follower reads the stored settings.
const FOLLOW: Duration = Duration::from_millis(500);

/// Reads the stored settings every `FOLLOW` and tells the actor when they
/// changed (the read is the follower's, never the mailbox's).
fn follow(ctx: Arc<Ctx>, me: ActorRef<Mail<RateLimiterMsg>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last = None;
        loop {
            match ctx.store.rate_limit_overrides().await {
                Ok(stored) if last.as_ref() != Some(&stored) => {
                    let settings = crate::limit_settings::effective(&ctx, &stored);
                    let msg = RateLimiterMsg::SetLimits(Box::new(settings), None);
                    if me.cast(Mail::new(NAME, msg)).is_err() {
                        return;
                    }
                    last = Some(stored);
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "reading the stored rate limits failed; keeping the current ones");
                }
            }
            tokio::time::sleep(FOLLOW).await;
        }
    })
}

pub struct RateLimiter;

impl Actor for RateLimiter {
    type Msg = Mail<RateLimiterMsg>;
    type State = Limiters;
    type Arguments = Arc<Ctx>;

    async fn pre_start(
        &self,
        me: ActorRef<Self::Msg>,
        ctx: Arc<Ctx>,
    ) -> Result<Limiters, ActorProcessingErr> {
        me.send_interval(Duration::from_secs(60), || {
            Mail::new(NAME, RateLimiterMsg::Sweep)
        });
        // A successor starts from the stored settings, not the environment's
        // (an operator's lowered limit must not lapse with a restart); read
        // once here, before any message, bounded.
        let stored = tokio::time::timeout(RESTART_WAIT, ctx.store.rate_limit_overrides()).await;
        let settings = match stored {
            Ok(Ok(rows)) => crate::limit_settings::effective(&ctx, &rows),
            _ => {
                tracing::warn!(
                    "the stored rate limits could not be read at start; the environment's apply until the follower reads them"
                );
                ctx.config.rate_limits.clone()
            }
        };
        let mut limiters = Limiters::new(settings);
        limiters.follower = Some(follow(ctx, me));
        Ok(limiters)
    }

    async fn handle(
        &self,
        _me: ActorRef<Self::Msg>,
        msg: Self::Msg,
        st: &mut Limiters,
    ) -> Result<(), ActorProcessingErr> {
        let msg = msg.open();
        let kind = msg.kind();
        let start = Instant::now();
        let mut outcome = "ok";
        match msg {
            RateLimiterMsg::Check { bucket, key, reply } => {
                let limiter = &st.limiters[bucket as usize];
                let checked = match limiter.take(&key) {
                    None => Ok(()),
                    Some(wait) => Err((limiter.limit, wait)),
                };
                outcome = if checked.is_ok() {
                    "allowed"
                } else {
                    "refused"
                };
                let _ = reply.send(checked);
            }
            RateLimiterMsg::SetLimits(settings, reply) => {
                if *settings != st.settings {
                    tracing::info!(limits = ?crate::limit_settings::current(&settings), "rate limits in force");
                }
                st.replace(*settings);
                if let Some(reply) = reply {
                    let _ = reply.send(());
                }
            }
            RateLimiterMsg::GetLimits(reply) => {
                let _ = reply.send(st.settings.clone());
            }
            RateLimiterMsg::Sweep => st.sweep(),
        }
        crate::actors::supervisor::record_message(NAME, kind, outcome, start);
        Ok(())
    }
}
