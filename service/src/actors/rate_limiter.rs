//! The `RateLimiter` actor: it alone holds the per-key buckets of every
//! limited route and the limit settings in force. Requests ask it by
//! message (`Check`); it follows the settings stored in the database with a
//! task of its own that reads them and tells it (`SetLimits`), so no
//! message waits on I/O. A change of settings rebuilds only the buckets
//! whose limit changed: the others keep their counts.
//!
//! On SQLite (one serving process) a bucket is a governor token bucket in
//! memory. On PostgreSQL, where several API processes share the database,
//! a bucket is a window row shared by all (GCRA, see
//! `castellan_core::store::rate_windows`): the actor holds the requests it
//! leased from it, a few at a time, and the asking request, not the
//! mailbox, takes a lease when none is held. Requests unused for a second
//! are given back by a task of the actor's. So a client gets a limit's
//! number across every process, never more, at one round trip per lease.

use std::collections::HashMap;
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

/// How long a lease lasts: what is left of it then is given back, used or
/// not (a lease kept alive by use would outlast the window's refill).
const LEASE_LIFE: Duration = Duration::from_secs(1);

/// The most keys a shared bucket holds leases for; past it, all are
/// dropped at once (stricter, never looser: what was leased is not given
/// back), so a flood of new client keys costs leases, not memory or time.
const MAX_HELD: usize = 100_000;

/// Leases taken from the database at once by one process, so a flood of
/// new keys cannot take every connection of the pool.
const LEASES_AT_ONCE: usize = 4;

/// How long a lease may wait for the database before the request is
/// answered 503.
const LEASE_TIMEOUT: Duration = Duration::from_secs(2);

/// A shared bucket's window, as the database counts it (µs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// One request's worth of refill.
    pub interval: i64,
    /// How far ahead of now the window may run: the burst.
    pub cap: i64,
    /// How many requests a lease asks for.
    pub lease: i64,
}

impl Window {
    fn of(limit: RateLimit) -> Self {
        // Rounded up: a shorter interval would let more through.
        let interval = (limit.per / limit.events)
            .as_nanos()
            .div_ceil(1000)
            .clamp(1, i64::MAX as u128) as i64;
        let burst = i64::from(limit.burst.max(1));
        Self {
            interval,
            cap: interval.saturating_mul(burst),
            // A tenth of the burst: a lease held by another process strands
            // at most that many (until given back, within a second).
            lease: (burst / 10).clamp(1, 100),
        }
    }
}

/// What a process holds of one key's shared window.
struct Held {
    requests: i64,
    /// Refused by the database until then: asked again only after.
    refused_until: Option<Instant>,
    /// When the requests held were leased, and at what interval (the
    /// window's then: a settings change may have come since).
    taken: Instant,
    interval: i64,
    /// A request is taking a lease for this key since then: the others
    /// wait for it here rather than each take one (a burst sent at once
    /// would strand most of its allowance in leases).
    leasing: Option<Instant>,
    waiting: Vec<RpcReplyPort<Checked>>,
}

impl Held {
    fn new(interval: i64) -> Self {
        Held {
            requests: 0,
            refused_until: None,
            taken: Instant::now(),
            interval,
            leasing: None,
            waiting: Vec::new(),
        }
    }

    /// What this key says to a request now, or `None` while a lease is
    /// being taken (the request waits for it).
    fn verdict(&mut self, window: Window, now: Instant) -> Option<Verdict> {
        if self.requests > 0 {
            self.requests -= 1;
            return Some(Verdict::Allowed);
        }
        if let Some(t) = self.refused_until.filter(|t| *t > now) {
            return Some(Verdict::Refused(t - now));
        }
        // A lease whose request vanished is not waited for forever.
        if self.leasing.is_some_and(|t| now - t < LEASE_TIMEOUT * 2) {
            return None;
        }
        self.leasing = Some(now);
        Some(Verdict::Lease(window))
    }

    /// Answers the waiting requests from what the key now holds; the first
    /// that finds nothing takes the next lease, the rest wait on.
    fn answer_waiting(&mut self, window: Window, limit: RateLimit) {
        let now = Instant::now();
        while !self.waiting.is_empty() {
            let Some(verdict) = self.verdict(window, now) else {
                return;
            };
            let reply = self.waiting.remove(0);
            let _ = reply.send((verdict, limit));
        }
    }
}

/// One bucket's keys under one limit. `None` = limit 0: refuse all.
struct Limiter {
    limit: RateLimit,
    keeper: Option<Keeper>,
}

enum Keeper {
    Local(DefaultKeyedRateLimiter<String>),
    Shared(Window, HashMap<String, Held>),
}

impl Limiter {
    fn new(limit: RateLimit, shared: bool) -> Self {
        let keeper = (limit.events > 0).then(|| match shared {
            true => Keeper::Shared(Window::of(limit), HashMap::new()),
            false => {
                let period = limit.per / limit.events;
                let burst = NonZeroU32::new(limit.burst.max(1)).expect("max(1)");
                let quota = Quota::with_period(period.max(Duration::from_nanos(1)))
                    .expect("non-zero period")
                    .allow_burst(burst);
                Keeper::Local(DefaultKeyedRateLimiter::keyed(quota))
            }
        });
        Self { limit, keeper }
    }

    /// Takes a request of `key`'s allowance, or says how long to wait for
    /// one, or that a lease must be taken first.
    fn take(&mut self, key: &str) -> Verdict {
        let now = Instant::now();
        match &mut self.keeper {
            None => Verdict::Refused(self.limit.per),
            Some(Keeper::Local(l)) => match l.check_key(&key.to_string()) {
                Ok(()) => Verdict::Allowed,
                Err(n) => Verdict::Refused(n.wait_time_from(DefaultClock::default().now())),
            },
            Some(Keeper::Shared(window, held)) => {
                if held.len() >= MAX_HELD && !held.contains_key(key) {
                    held.retain(|_, h| !h.waiting.is_empty());
                }
                let h = held
                    .entry(key.to_string())
                    .or_insert_with(|| Held::new(window.interval));
                match h.verdict(*window, now) {
                    Some(v) => v,
                    None => Verdict::Wait,
                }
            }
        }
    }

    /// A request told to wait: answered once the lease under way lands.
    fn park(&mut self, key: &str, reply: RpcReplyPort<Checked>) {
        let limit = self.limit;
        match &mut self.keeper {
            Some(Keeper::Shared(_, held)) if held.contains_key(key) => {
                held.get_mut(key).expect("present").waiting.push(reply)
            }
            // Its key is gone (a settings change): it leases itself.
            _ => {
                let window = Window::of(limit);
                let _ = reply.send((Verdict::Lease(window), limit));
            }
        }
    }

    /// A lease the asking request took at `interval`: one of `granted`
    /// was its own.
    fn leased(&mut self, key: String, (granted, interval): (i64, i64), wait: Duration) {
        let limit = self.limit;
        let Some(Keeper::Shared(window, held)) = &mut self.keeper else {
            return;
        };
        let now = Instant::now();
        if held.len() >= MAX_HELD && !held.contains_key(&key) {
            held.retain(|_, h| !h.waiting.is_empty());
        }
        let h = held.entry(key).or_insert_with(|| Held::new(interval));
        // Requests still held from an earlier lease are given back with it.
        if h.requests == 0 {
            (h.taken, h.interval) = (now, interval);
        }
        h.requests += (granted - 1).max(0);
        h.refused_until = (granted == 0).then(|| now + wait);
        h.leasing = None;
        h.answer_waiting(*window, limit);
    }

    /// A lease that failed (the database, or its request went away): the
    /// next waiting request tries in its place.
    fn lease_failed(&mut self, key: &str) {
        let limit = self.limit;
        if let Some(Keeper::Shared(window, held)) = &mut self.keeper
            && let Some(h) = held.get_mut(key)
        {
            h.leasing = None;
            h.answer_waiting(*window, limit);
        }
    }

    /// Leases past `LEASE_LIFE`, taken out to be given back (key,
    /// requests, interval); keys with nothing held and nothing refused are
    /// forgotten.
    fn expired(&mut self, out: &mut Vec<(String, i64, i64)>) {
        let Some(Keeper::Shared(_, held)) = &mut self.keeper else {
            return;
        };
        let now = Instant::now();
        held.retain(|key, h| {
            if h.requests > 0 && now - h.taken >= LEASE_LIFE {
                out.push((key.clone(), h.requests, h.interval));
                h.requests = 0;
            }
            h.requests > 0
                || h.refused_until.is_some_and(|t| t > now)
                || h.leasing.is_some_and(|t| now - t < LEASE_TIMEOUT * 2)
                || !h.waiting.is_empty()
        });
    }

    fn keys(&self) -> usize {
        match &self.keeper {
            None => 0,
            Some(Keeper::Local(l)) => {
                l.retain_recent();
                l.len()
            }
            Some(Keeper::Shared(_, held)) => held.len(),
        }
    }
}

/// What the actor says of a request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    Allowed,
    Refused(Duration),
    /// Nothing held: the request leases from the shared window itself.
    Lease(Window),
    /// Another request is taking a lease for this key: never sent, the
    /// request's question is answered when that lease lands.
    Wait,
}

/// The actor's state: the settings in force and a limiter per bucket
/// (indexed like `Bucket::ALL`), and the task following stored settings.
pub struct Limiters {
    settings: Settings,
    limiters: Vec<Limiter>,
    /// Whether buckets are the database's windows (PostgreSQL).
    shared: bool,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Limiters {
    fn new(settings: Settings, shared: bool) -> Self {
        let limiters = Bucket::ALL
            .iter()
            .map(|b| Limiter::new(b.setting(&settings), shared))
            .collect();
        Self {
            settings,
            limiters,
            shared,
            tasks: Vec::new(),
        }
    }

    /// New settings: the buckets whose limit changed start afresh, the
    /// others keep their counts.
    fn replace(&mut self, settings: Settings) {
        for (i, b) in Bucket::ALL.iter().enumerate() {
            let limit = b.setting(&settings);
            if self.limiters[i].limit != limit {
                self.limiters[i] = Limiter::new(limit, self.shared);
            }
        }
        self.settings = settings;
    }

    fn usage(&self) -> Vec<(&'static str, usize)> {
        Bucket::ALL
            .iter()
            .zip(&self.limiters)
            .map(|(b, l)| (b.label(), l.keys()))
            .collect()
    }

    fn sweep(&self) {
        for (b, l) in Bucket::ALL.iter().zip(&self.limiters) {
            metrics::gauge!("castellan_rate_limit_keys", "bucket" => b.label())
                .set(l.keys() as f64);
        }
    }

    /// Every lease past its life, to give back: window id, requests,
    /// interval.
    fn drain(&mut self) -> Vec<(String, i64, i64)> {
        let mut out = Vec::new();
        for (b, l) in Bucket::ALL.iter().zip(self.limiters.iter_mut()) {
            let mut expired = Vec::new();
            l.expired(&mut expired);
            out.extend(
                expired
                    .into_iter()
                    .map(|(key, n, interval)| (window_id(*b, &key), n, interval)),
            );
        }
        out
    }
}

/// A shared window's row: the bucket and the client's key (a long key, a
/// header's value, by its hash: the row stays small).
fn window_id(bucket: Bucket, key: &str) -> String {
    use sha2::Digest;
    match key.len() <= 64 {
        true => format!("{}:{key}", bucket.label()),
        false => {
            let hash = sha2::Sha256::digest(key.as_bytes());
            let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
            format!("{}:#{hex}", bucket.label())
        }
    }
}

impl Drop for Limiters {
    fn drop(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

/// What a `Check` answers: the verdict, and the limit in force.
pub type Checked = (Verdict, RateLimit);

pub enum RateLimiterMsg {
    /// Take one request of `key`'s bucket.
    Check {
        bucket: Bucket,
        key: String,
        reply: RpcReplyPort<Checked>,
    },
    /// A request leased `granted` at `interval` from the shared window
    /// (one for itself); with none, refused for `wait`.
    Leased {
        bucket: Bucket,
        key: String,
        granted: (i64, i64),
        wait: Duration,
    },
    /// A lease for `key` failed or was abandoned: its waiters go on.
    LeaseFailed {
        bucket: Bucket,
        key: String,
    },
    /// Leases past their life, handed to be given back.
    Drain(RpcReplyPort<Vec<(String, i64, i64)>>),
    /// Replace the settings (only changed buckets start afresh); answered
    /// when asked by a caller, not when told by the follower.
    SetLimits(Box<Settings>, Option<RpcReplyPort<()>>),
    GetLimits(RpcReplyPort<Settings>),
    /// How many clients each bucket holds in this process, by its label.
    Usage(RpcReplyPort<Vec<(&'static str, usize)>>),
    /// Drop idle keys so memory stays bounded.
    Sweep,
}

impl RateLimiterMsg {
    fn kind(&self) -> &'static str {
        match self {
            RateLimiterMsg::Check { .. } => "check",
            RateLimiterMsg::Leased { .. } => "leased",
            RateLimiterMsg::LeaseFailed { .. } => "lease_failed",
            RateLimiterMsg::Drain(_) => "drain",
            RateLimiterMsg::SetLimits(..) => "set_limits",
            RateLimiterMsg::GetLimits(_) => "get_limits",
            RateLimiterMsg::Usage(_) => "usage",
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
    /// The database leases come from.
    ctx: Option<Arc<Ctx>>,
    leasing: Arc<tokio::sync::Semaphore>,
}

impl RateLimits {
    pub fn new(
        slot: Arc<ArcSwapOption<ActorRef<Mail<RateLimiterMsg>>>>,
        defaults: Settings,
        ctx: Option<Arc<Ctx>>,
    ) -> Self {
        Self {
            slot,
            defaults,
            ctx,
            leasing: Arc::new(tokio::sync::Semaphore::new(LEASES_AT_ONCE)),
        }
    }

    /// Without an actor (tools): the environment's settings, never a check.
    pub fn standalone(defaults: Settings) -> Self {
        Self::new(Arc::new(ArcSwapOption::empty()), defaults, None)
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

    /// How many clients each bucket holds in this process (a client's
    /// bucket lives until it is full again and swept), by bucket; `None`
    /// when the actor cannot answer.
    pub async fn usage(&self) -> Option<Vec<(&'static str, usize)>> {
        self.ask(RateLimiterMsg::Usage).await
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
        let (verdict, l) = self
            .ask(|reply| RateLimiterMsg::Check {
                bucket,
                key: key.to_string(),
                reply,
            })
            .await
            .ok_or_else(|| ApiError::unavailable("rate limiter", "restarting"))?;
        let wait = match verdict {
            Verdict::Allowed => return Ok(()),
            Verdict::Refused(wait) => wait,
            Verdict::Lease(window) => match self.lease(bucket, key, window).await? {
                None => return Ok(()),
                Some(wait) => wait,
            },
            // Never sent (a waiting request is answered when its lease
            // lands); were it, the request is not let through unlimited.
            Verdict::Wait => return Err(ApiError::unavailable("rate limiter", "waiting")),
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

impl RateLimits {
    /// Leases from `key`'s shared window for this request and the next
    /// few, telling the actor what it got: `None` when allowed, else the wait.
    async fn lease(&self, bucket: Bucket, key: &str, w: Window) -> ApiResult<Option<Duration>> {
        let ctx = self
            .ctx
            .as_ref()
            .ok_or_else(|| ApiError::unavailable("rate limiter", "no database"))?;
        // Until the lease lands, the key's other requests wait for it: if
        // it fails, or this request is dropped, they are told to go on.
        let mut pending = Pending {
            slot: &self.slot,
            bucket,
            key,
            landed: false,
        };
        // A lease that fails is the database failing: counted as such.
        let unavailable = |e: String| ApiError::unavailable("database", e);
        // The database's clock, not this process's: processes agree.
        let leased = async {
            let _turn = self.leasing.acquire().await.map_err(|e| e.to_string())?;
            let id = window_id(bucket, key);
            let window = (w.interval, w.cap);
            ctx.store
                .lease_requests(&id, window, w.lease)
                .await
                .map_err(|e| e.to_string())
        };
        let got = tokio::time::timeout(LEASE_TIMEOUT, leased)
            .await
            .map_err(|_| unavailable("the database did not answer in time".into()))?
            .map_err(unavailable)?;
        // Empty: the next request's room comes when the window falls back
        // within the burst.
        let wait = Duration::from_micros((got.tat - w.cap + w.interval - got.now).max(0) as u64);
        let told = RateLimiterMsg::Leased {
            bucket,
            key: key.to_string(),
            granted: (got.granted, w.interval),
            wait,
        };
        if let Some(actor) = self.slot.load_full() {
            let _ = actor.cast(Mail::new(NAME, told));
        }
        pending.landed = true;
        Ok((got.granted == 0).then_some(wait))
    }
}

/// A lease under way for a key; dropped before it landed, it tells the
/// actor so the requests waiting on it go on.
struct Pending<'a> {
    slot: &'a ArcSwapOption<ActorRef<Mail<RateLimiterMsg>>>,
    bucket: Bucket,
    key: &'a str,
    landed: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if self.landed {
            return;
        }
        if let Some(actor) = self.slot.load_full() {
            let failed = RateLimiterMsg::LeaseFailed {
                bucket: self.bucket,
                key: self.key.to_string(),
            };
            let _ = actor.cast(Mail::new(NAME, failed));
        }
    }
}

/// How often idle leases are given back.
const GIVE_BACK: Duration = Duration::from_secs(1);

/// Every `GIVE_BACK`, takes the expired leases from the actor and returns
/// them to their windows in one statement (the write is this task's, never
/// the mailbox's).
fn give_back(ctx: Arc<Ctx>, me: ActorRef<Mail<RateLimiterMsg>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(GIVE_BACK).await;
            let Some(expired) = crate::actors::mailbox::ask(&me, NAME, RateLimiterMsg::Drain).await
            else {
                return;
            };
            if expired.is_empty() {
                continue;
            }
            if let Err(e) = ctx.store.return_requests(&expired).await {
                tracing::debug!(error = %e, "giving back unused rate-limit allowance failed; it refills with time");
            }
        }
    })
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
        let shared = matches!(ctx.store.pool(), castellan_core::store::Pool::Pg(_));
        let mut limiters = Limiters::new(settings, shared);
        if shared {
            limiters.tasks.push(give_back(ctx.clone(), me.clone()));
        }
        limiters.tasks.push(follow(ctx, me));
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
                let limiter = &mut st.limiters[bucket as usize];
                let verdict = limiter.take(&key);
                outcome = match verdict {
                    Verdict::Allowed => "allowed",
                    Verdict::Refused(_) => "refused",
                    Verdict::Lease(_) => "lease",
                    Verdict::Wait => "wait",
                };
                match verdict {
                    Verdict::Wait => limiter.park(&key, reply),
                    v => {
                        let _ = reply.send((v, limiter.limit));
                    }
                }
            }
            RateLimiterMsg::LeaseFailed { bucket, key } => {
                st.limiters[bucket as usize].lease_failed(&key)
            }
            RateLimiterMsg::Leased {
                bucket,
                key,
                granted,
                wait,
            } => st.limiters[bucket as usize].leased(key, granted, wait),
            RateLimiterMsg::Drain(reply) => {
                let _ = reply.send(st.drain());
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
            RateLimiterMsg::Usage(reply) => {
                let _ = reply.send(st.usage());
            }
            RateLimiterMsg::Sweep => st.sweep(),
        }
        crate::actors::supervisor::record_message(NAME, kind, outcome, start);
        Ok(())
    }
}
