//! The root supervisor. It starts every actor linked to itself; when one
//! fails or is killed it starts a replacement after a short backoff, swaps
//! it into the handle callers use, and counts the restart. Hot reads never
//! wait on a child: they read what it publishes, so a restart costs at most
//! a few reads served from the database.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SpawnErr, SupervisionEvent};

use crate::context::Ctx;
use crate::mailbox::Mail;
use crate::otp_issuer::{OtpIssuer, OtpIssuerActor, OtpMsg, SendWindows};
use crate::provider_broker::{BrokerMsg, KeyRing, ProviderBrokerActor};
use crate::rate_limiter::{RateLimiter, RateLimiterMsg, RateLimits};
use crate::session_manager::{SessionCache, SessionManager, SessionManagerArgs, SessionMsg};
use crate::sessions::Sessions;

/// Counts one handled message of an actor, with its outcome and time.
pub fn record_message(
    actor: &'static str,
    message: &'static str,
    outcome: &'static str,
    start: Instant,
) {
    metrics::counter!("castellan_actor_messages_total", "actor" => actor, "message" => message, "outcome" => outcome)
        .increment(1);
    metrics::histogram!("castellan_actor_handling_seconds", "actor" => actor, "message" => message)
        .record(start.elapsed().as_secs_f64());
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Child {
    SessionManager,
    OtpIssuer,
    RateLimiter,
    ProviderBroker,
}

impl Child {
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

pub struct SupervisorArgs {
    ctx: Arc<Ctx>,
    cache: Arc<SessionCache>,
    windows: Arc<SendWindows>,
    limits: RateLimits,
    ring: Arc<KeyRing>,
    slots: Slots,
}

pub struct SupervisorState {
    args: SupervisorArgs,
    children: HashMap<ActorId, Child>,
    restarts: HashMap<&'static str, u32>,
}

pub struct Supervisor;

impl Supervisor {
    async fn spawn(child: Child, me: ActorCell, st: &mut SupervisorState) -> Result<(), SpawnErr> {
        let id = match child {
            Child::SessionManager => {
                let args = SessionManagerArgs {
                    cache: st.args.cache.clone(),
                    store: st.args.ctx.store.clone(),
                    poll: st.args.ctx.config.cache_poll_interval,
                };
                let (r, _) = Actor::spawn_linked(None, SessionManager, args, me).await?;
                let id = r.get_id();
                st.args.slots.sessions.store(Some(Arc::new(r)));
                id
            }
            Child::OtpIssuer => {
                let windows = st.args.windows.clone();
                let (r, _) = Actor::spawn_linked(None, OtpIssuerActor, windows, me).await?;
                let id = r.get_id();
                st.args.slots.otp.store(Some(Arc::new(r)));
                id
            }
            Child::RateLimiter => {
                let (r, _) =
                    Actor::spawn_linked(None, RateLimiter, st.args.limits.clone(), me).await?;
                let id = r.get_id();
                st.args.slots.limiter.store(Some(Arc::new(r)));
                id
            }
            Child::ProviderBroker => {
                let ring = st.args.ring.clone();
                let (r, _) = Actor::spawn_linked(None, ProviderBrokerActor, ring, me).await?;
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
            Child::SessionManager => {
                // Nobody follows changes until the successor does: serve
                // from the store meanwhile.
                st.args.cache.set_following(false);
                st.args.slots.sessions.store(None)
            }
            Child::OtpIssuer => st.args.slots.otp.store(None),
            Child::RateLimiter => st.args.slots.limiter.store(None),
            Child::ProviderBroker => st.args.slots.broker.store(None),
        }
        let n = st.restarts.entry(child.name()).or_insert(0);
        *n += 1;
        metrics::counter!("castellan_actor_restarts_total", "actor" => child.name()).increment(1);
        tracing::error!(actor = child.name(), reason = %why, restarts = *n, "actor stopped; restarting");
        // Back off a little on repeated crashes, so a crash loop cannot spin.
        let backoff = Duration::from_millis(10 * u64::from((*n).min(50)));
        tokio::time::sleep(backoff).await;
        Self::spawn(child, me.get_cell(), st).await?;
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
        let mut st = SupervisorState {
            args,
            children: HashMap::new(),
            restarts: HashMap::new(),
        };
        Self::spawn(Child::SessionManager, me.get_cell(), &mut st).await?;
        Self::spawn(Child::OtpIssuer, me.get_cell(), &mut st).await?;
        Self::spawn(Child::RateLimiter, me.get_cell(), &mut st).await?;
        Self::spawn(Child::ProviderBroker, me.get_cell(), &mut st).await?;
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
    pub otp: OtpIssuer,
    pub rate_limits: RateLimits,
    pub session_cache: Arc<SessionCache>,
    /// The OIDC keys the `ProviderBroker` actor owns.
    pub oidc_keys: Arc<KeyRing>,
    slots: Slots,
    root: ActorRef<()>,
}

impl Actors {
    /// The current `RateLimiter` actor (`None` while it restarts).
    pub fn rate_limiter(&self) -> Option<ActorRef<Mail<RateLimiterMsg>>> {
        self.slots.limiter.load_full().map(|r| (*r).clone())
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
        self.root.stop(None);
    }
}

pub async fn start(ctx: Arc<Ctx>) -> Result<Actors, SpawnErr> {
    let limits = RateLimits::new(ctx.config.rate_limits.clone());
    let cache = SessionCache::new(
        ctx.config.session_cache_size,
        ctx.config.session_cache_bytes,
    );
    // Changes committed in this process reach the cache before the response.
    let published = cache.clone();
    ctx.store
        .on_change(Box::new(move |users| published.invalidate(users)));
    let windows = SendWindows::new(ctx.config.smtp.max_frequency);
    let slots = Slots {
        sessions: Arc::new(ArcSwapOption::empty()),
        otp: Arc::new(ArcSwapOption::empty()),
        limiter: Arc::new(ArcSwapOption::empty()),
        broker: Arc::new(ArcSwapOption::empty()),
    };
    let ring = Arc::new(KeyRing::default());
    let args = SupervisorArgs {
        ctx: ctx.clone(),
        cache: cache.clone(),
        windows: windows.clone(),
        limits: limits.clone(),
        ring: ring.clone(),
        slots: slots.clone(),
    };
    let (root, _) = Actor::spawn(None, Supervisor, args).await?;
    Ok(Actors {
        sessions: Sessions::new(ctx.clone(), cache.clone()),
        otp: OtpIssuer::new(ctx, windows, slots.otp.clone(), limits.clone()),
        rate_limits: limits,
        session_cache: cache,
        oidc_keys: ring,
        slots,
        root,
    })
}
