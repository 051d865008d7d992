//! The root supervisor. It starts every actor linked to itself; when one
//! fails or is killed it starts a replacement after a backoff that doubles
//! with each recent restart, swaps it into the handle callers use, and
//! counts the restart. Too many restarts of one actor within the window
//! (`CASTELLAN_ACTOR_MAX_RESTARTS` in `CASTELLAN_ACTOR_RESTART_WINDOW`), or
//! a replacement that cannot start, escalate: the supervisor stops, says why,
//! and the process stops with a non-zero status for its orchestrator to
//! restart. A caller whose actor is restarting does not wait for it: it
//! reads the database, or is told to retry (see each actor's handle).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use castellan_core::config::Supervision;
use castellan_core::handles::Handles;
use ractor::ActorStatus;
use tokio::sync::watch;

use arc_swap::ArcSwapOption;
use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SpawnErr, SupervisionEvent};

use crate::actors::mailbox::Mail;
use crate::actors::otp_issuer::{OtpIssuerActor, OtpMsg};
use crate::actors::provider_broker::{BrokerMsg, ProviderBrokerActor};
use crate::actors::rate_limiter::{RateLimiter, RateLimiterMsg, RateLimits};
use crate::actors::session_manager::{
    SessionCache, SessionManager, SessionManagerArgs, SessionMsg,
};
use crate::context::Ctx;
use crate::otp::OtpIssuer;
use crate::refresh::Refresher;
use crate::sessions::Sessions;

type MessageKey = (&'static str, &'static str, &'static str);

static MESSAGES: Handles<MessageKey, (metrics::Counter, metrics::Histogram)> = Handles::new();

/// Counts one handled message of an actor, with its outcome and time.
pub fn record_message(
    actor: &'static str,
    message: &'static str,
    outcome: &'static str,
    start: Instant,
) {
    let key = (actor, message, outcome);
    let (count, took) = MESSAGES.get(&key, || {
        let count = metrics::counter!("castellan_actor_messages_total", "actor" => actor, "message" => message, "outcome" => outcome);
        let took = metrics::histogram!("castellan_actor_handling_seconds", "actor" => actor, "message" => message);
        (key, (count, took))
    });
    count.increment(1);
    took.record(start.elapsed().as_secs_f64());
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Child {
    SessionManager,
    OtpIssuer,
    RateLimiter,
    ProviderBroker,
}

impl Child {
    const ALL: [Child; 4] = [
        Child::SessionManager,
        Child::OtpIssuer,
        Child::RateLimiter,
        Child::ProviderBroker,
    ];

    fn name(self) -> &'static str {
        match self {
            Child::SessionManager => "session_manager",
            Child::OtpIssuer => "otp_issuer",
            Child::RateLimiter => "rate_limiter",
            Child::ProviderBroker => "provider_broker",
        }
    }
}

/// The slots the supervisor fills with the current actor of each kind.
#[derive(Clone)]
pub struct Slots {
    sessions: Arc<ArcSwapOption<ActorRef<Mail<SessionMsg>>>>,
    otp: Arc<ArcSwapOption<ActorRef<Mail<OtpMsg>>>>,
    limiter: Arc<ArcSwapOption<ActorRef<Mail<RateLimiterMsg>>>>,
    broker: Arc<ArcSwapOption<ActorRef<Mail<BrokerMsg>>>>,
}

impl Slots {
    /// The current actor of a kind, whatever its messages' type.
    fn cell(&self, child: Child) -> Option<ActorCell> {
        fn cell<M>(slot: &ArcSwapOption<ActorRef<M>>) -> Option<ActorCell> {
            slot.load().as_ref().map(|r| r.get_cell())
        }
        match child {
            Child::SessionManager => cell(&self.sessions),
            Child::OtpIssuer => cell(&self.otp),
            Child::RateLimiter => cell(&self.limiter),
            Child::ProviderBroker => cell(&self.broker),
        }
    }
}

pub struct SupervisorArgs {
    ctx: Arc<Ctx>,
    stopped: Arc<Mutex<Option<String>>>,
    cache: SessionCache,
    slots: Slots,
}

pub struct SupervisorState {
    args: SupervisorArgs,
    children: HashMap<ActorId, Child>,
    /// Each actor's restarts within the window, oldest first.
    recent: HashMap<&'static str, VecDeque<Instant>>,
    policy: Supervision,
    /// Why the supervisor stopped, for whoever waits on it.
    stopped: Arc<Mutex<Option<String>>>,
}

/// What the policy says to a child's stop: restart after a backoff, or
/// escalate.
enum Verdict {
    Restart(Duration),
    Escalate(usize),
}

/// Forgets restarts older than the window, then decides on this one.
fn verdict(recent: &mut VecDeque<Instant>, policy: Supervision, now: Instant) -> Verdict {
    while recent
        .front()
        .is_some_and(|t| now.duration_since(*t) > policy.window)
    {
        recent.pop_front();
    }
    recent.push_back(now);
    let n = recent.len();
    if n > policy.max_restarts as usize {
        return Verdict::Escalate(n);
    }
    let doubled = policy.backoff.saturating_mul(1 << (n - 1).min(16));
    Verdict::Restart(doubled.min(Duration::from_secs(5)))
}

pub struct Supervisor;

impl Supervisor {
    async fn spawn(child: Child, me: ActorCell, st: &mut SupervisorState) -> Result<(), SpawnErr> {
        let id = match child {
            Child::SessionManager => {
                let config = &st.args.ctx.config;
                let args = SessionManagerArgs {
                    cache: st.args.cache.clone(),
                    store: st.args.ctx.store.clone(),
                    poll: config.cache_poll_interval,
                    shards: config.session_shards,
                    capacity: config.session_cache_size,
                    bytes: config.session_cache_bytes,
                };
                let (r, _) = Actor::spawn_linked(None, SessionManager, args, me).await?;
                let id = r.get_id();
                st.args.slots.sessions.store(Some(Arc::new(r)));
                id
            }
            Child::OtpIssuer => {
                // A successor starts with no windows: the database decides
                // until it has seen sends again.
                let window = st.args.ctx.config.rate_limits.email_window;
                let (r, _) = Actor::spawn_linked(None, OtpIssuerActor, window, me).await?;
                let id = r.get_id();
                st.args.slots.otp.store(Some(Arc::new(r)));
                id
            }
            Child::RateLimiter => {
                let ctx = st.args.ctx.clone();
                let (r, _) = Actor::spawn_linked(None, RateLimiter, ctx, me).await?;
                let id = r.get_id();
                st.args.slots.limiter.store(Some(Arc::new(r)));
                id
            }
            Child::ProviderBroker => {
                // A successor starts with no keys: the first token fetches.
                let (r, _) = Actor::spawn_linked(None, ProviderBrokerActor, (), me).await?;
                let id = r.get_id();
                st.args.slots.broker.store(Some(Arc::new(r)));
                id
            }
        };
        st.children.insert(id, child);
        Ok(())
    }

    async fn restart(
        &self,
        me: ActorRef<()>,
        id: ActorId,
        why: String,
        st: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let Some(child) = st.children.remove(&id) else {
            return Ok(());
        };
        match child {
            // Its shards went with it: reads go to the store until the
            // successor's shards follow changes.
            Child::SessionManager => st.args.slots.sessions.store(None),
            Child::OtpIssuer => st.args.slots.otp.store(None),
            Child::RateLimiter => st.args.slots.limiter.store(None),
            Child::ProviderBroker => st.args.slots.broker.store(None),
        }
        let recent = st.recent.entry(child.name()).or_default();
        let backoff = match verdict(recent, st.policy, Instant::now()) {
            Verdict::Restart(backoff) => backoff,
            Verdict::Escalate(n) => {
                let why = format!(
                    "actor {} stopped {n} times within {:?} (last: {why}): the supervisor gives up",
                    child.name(),
                    st.policy.window
                );
                return Self::escalate(&me, st, why);
            }
        };
        metrics::counter!("castellan_actor_restarts_total", "actor" => child.name()).increment(1);
        tracing::error!(actor = child.name(), reason = %why, recent = recent.len(), ?backoff, "actor stopped; restarting");
        tokio::time::sleep(backoff).await;
        if let Err(e) = Self::spawn(child, me.get_cell(), st).await {
            let why = format!("actor {} could not be started again: {e}", child.name());
            return Self::escalate(&me, st, why);
        }
        Ok(())
    }

    /// Stops the supervisor (and every actor) for `why`: the process is no
    /// longer what it claims to be, so it stops too (see `Actors::stopped`).
    fn escalate(
        me: &ActorRef<()>,
        st: &mut SupervisorState,
        why: String,
    ) -> Result<(), ActorProcessingErr> {
        tracing::error!(reason = %why, "supervision escalated: stopping; the process exits non-zero for its orchestrator to restart it");
        metrics::counter!("castellan_actor_escalations_total").increment(1);
        *st.stopped.lock().expect("never poisoned") = Some(why.clone());
        me.stop(Some(why));
        Ok(())
    }
}

impl Actor for Supervisor {
    type Msg = ();
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        me: ActorRef<()>,
        args: SupervisorArgs,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        let policy = args.ctx.config.supervision;
        let stopped = args.stopped.clone();
        let mut st = SupervisorState {
            args,
            children: HashMap::new(),
            recent: HashMap::new(),
            policy,
            stopped,
        };
        for child in Child::ALL {
            Self::spawn(child, me.get_cell(), &mut st).await?;
        }
        Ok(st)
    }

    async fn handle_supervisor_evt(
        &self,
        me: ActorRef<()>,
        evt: SupervisionEvent,
        st: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match evt {
            SupervisionEvent::ActorFailed(cell, err) => {
                self.restart(me, cell.get_id(), err.to_string(), st).await
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                self.restart(
                    me,
                    cell.get_id(),
                    reason.unwrap_or_else(|| "stopped".into()),
                    st,
                )
                .await
            }
            _ => Ok(()),
        }
    }

    async fn post_stop(
        &self,
        me: ActorRef<()>,
        _st: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        me.stop_children(None);
        Ok(())
    }
}

/// The running actor system and the services beside it, as handlers see them.
#[derive(Clone)]
pub struct Actors {
    pub sessions: Sessions,
    pub refresh: Refresher,
    pub otp: OtpIssuer,
    pub rate_limits: RateLimits,
    pub session_cache: SessionCache,
    slots: Slots,
    root: ActorRef<()>,
    /// Set once the supervisor has stopped: why, when it gave up.
    ended: watch::Receiver<Option<String>>,
    /// Whether a shutdown was asked for (then its end is no failure).
    asked: Arc<AtomicBool>,
}

impl Actors {
    /// Each supervised actor by name, and whether it is running now (not
    /// while it restarts, nor after the supervisor gave up).
    pub fn liveness(&self) -> [(&'static str, bool); 4] {
        Child::ALL.map(|c| {
            let running = self
                .slots
                .cell(c)
                .is_some_and(|a| a.get_status() == ActorStatus::Running);
            (c.name(), running)
        })
    }

    /// Kills the named actor as a crash would (for tests and drills): the
    /// supervisor restarts it under its policy. False for an unknown name.
    /// `session_shard` kills one of the session manager's shards.
    pub fn kill(&self, name: &str) -> bool {
        let cell = match name {
            "session_shard" => self
                .slots
                .cell(Child::SessionManager)
                .and_then(|m| m.get_children().into_iter().next()),
            _ => Child::ALL
                .into_iter()
                .find(|c| c.name() == name)
                .and_then(|c| self.slots.cell(c)),
        };
        cell.map(|a| a.kill()).is_some()
    }

    /// Resolves with the reason once the supervisor has stopped on its own
    /// (an escalation); never while it runs.
    pub async fn stopped(&self) -> String {
        let mut ended = self.ended.clone();
        loop {
            if let Some(why) = ended.borrow_and_update().clone() {
                return why;
            }
            if ended.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Where the current `ProviderBroker` actor is (empty while it restarts).
    pub fn broker_slot(&self) -> Arc<ArcSwapOption<ActorRef<Mail<BrokerMsg>>>> {
        self.slots.broker.clone()
    }

    /// The current `SessionManager` actor (`None` while it restarts).
    pub fn session_manager(&self) -> Option<ActorRef<Mail<SessionMsg>>> {
        self.slots.sessions.load_full().map(|r| (*r).clone())
    }

    pub async fn shutdown(&self) {
        self.asked.store(true, Ordering::SeqCst);
        self.root.stop(None);
    }
}

pub async fn start(ctx: Arc<Ctx>) -> Result<Actors, SpawnErr> {
    let cache = SessionCache::new();
    // Changes committed in this process reach the cache before the response.
    let published = cache.clone();
    ctx.store
        .on_change(Box::new(move |users| published.invalidate(users)));
    let slots = Slots {
        sessions: Arc::new(ArcSwapOption::empty()),
        otp: Arc::new(ArcSwapOption::empty()),
        limiter: Arc::new(ArcSwapOption::empty()),
        broker: Arc::new(ArcSwapOption::empty()),
    };
    let limits = RateLimits::new(
        slots.limiter.clone(),
        ctx.config.rate_limits.clone(),
        Some(ctx.clone()),
    );
    let stopped = Arc::new(Mutex::new(None));
    let args = SupervisorArgs {
        ctx: ctx.clone(),
        stopped: stopped.clone(),
        cache: cache.clone(),
        slots: slots.clone(),
    };
    let (root, running) = Actor::spawn(None, Supervisor, args).await?;
    // When the supervisor ends, say why to whoever waits (`Actors::stopped`);
    // a shutdown asked for says nothing.
    let (ended_tx, ended) = watch::channel(None);
    let asked = Arc::new(AtomicBool::new(false));
    let shutting_down = asked.clone();
    tokio::spawn(async move {
        let _ = running.await;
        let why = stopped.lock().expect("never poisoned").take();
        if shutting_down.load(Ordering::SeqCst) {
            // Keep the channel open: `stopped` stays pending.
            return std::future::pending::<()>().await;
        }
        let why = why.unwrap_or_else(|| "the actor supervisor stopped unexpectedly".into());
        let _ = ended_tx.send(Some(why));
    });
    Ok(Actors {
        sessions: Sessions::new(ctx.clone(), cache.clone()),
        refresh: Refresher::new(ctx.clone(), cache.clone()),
        otp: OtpIssuer::new(ctx, slots.otp.clone(), limits.clone()),
        rate_limits: limits,
        session_cache: cache,
        slots,
        root,
        ended,
        asked,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_back_off_escalate_and_are_forgotten_after_the_window() {
        let policy = Supervision {
            backoff: Duration::from_millis(10),
            max_restarts: 3,
            window: Duration::from_secs(30),
        };
        let t0 = Instant::now();
        let mut recent = VecDeque::new();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let backoffs: Vec<_> = (0..3)
            .map(|i| match verdict(&mut recent, policy, at(i)) {
                Verdict::Restart(b) => b.as_millis(),
                Verdict::Escalate(_) => panic!("escalated at {i}"),
            })
            .collect();
        assert_eq!(backoffs, [10, 20, 40], "doubling");
        assert!(matches!(
            verdict(&mut recent, policy, at(3)),
            Verdict::Escalate(4)
        ));
        // Quiet for the window: the history is forgotten, the backoff short again.
        let mut recent = VecDeque::from([at(0), at(1)]);
        assert!(matches!(
            verdict(&mut recent, policy, at(40)),
            Verdict::Restart(b) if b == Duration::from_millis(10)
        ));
        assert_eq!(recent.len(), 1);
    }
}
