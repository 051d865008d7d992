//! The root supervisor. It starts every actor linked to itself; when one
//! fails or is killed it starts a replacement after a short backoff, swaps
//! it into the handle callers use, and counts the restart. While a child is
//! down, callers get a 503 answer at once instead of waiting.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use ractor::factory::queues::DefaultQueue;
use ractor::factory::routing::KeyPersistentRouting;
use ractor::factory::{Factory, FactoryArguments, FactoryRef, worker_builder};
use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SpawnErr, SupervisionEvent};
use uuid::Uuid;

use crate::context::Ctx;
use crate::otp_issuer::{OtpIssuer, OtpMsg, OtpWorker};
use crate::rate_limiter::{RateLimiter, RateLimiterMsg, RateLimits};
use crate::session_manager::{SessionManager, SessionMsg, SessionWorker};

/// Calls the worker of `key` in the factory held by `slot`: the reply, or a
/// 503 when the factory is restarting, the worker died, or time ran out.
pub(crate) async fn call_keyed<M: ractor::Message, T: Send + 'static>(
    slot: &ArcSwapOption<FactoryRef<Uuid, M>>,
    actor: &'static str,
    key: Uuid,
    timeout: Duration,
    build: impl FnOnce(ractor::RpcReplyPort<castellan_core::ApiResult<T>>) -> M,
) -> castellan_core::ApiResult<T> {
    use castellan_core::ApiError;
    use ractor::rpc::CallResult;
    let Some(factory) = slot.load_full() else {
        return Err(ApiError::unavailable(actor, "restarting"));
    };
    match factory.call_job(key, build, Some(timeout)).await {
        Ok(CallResult::Success(r)) => r,
        Ok(CallResult::Timeout) => Err(ApiError::unavailable(actor, "call timed out")),
        Ok(CallResult::SenderError) => Err(ApiError::unavailable(
            actor,
            "worker stopped before replying",
        )),
        Err(e) => Err(ApiError::unavailable(actor, e)),
    }
}

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
}

impl Child {
    fn name(self) -> &'static str {
        match self {
            Child::SessionManager => "session_manager",
            Child::OtpIssuer => "otp_issuer",
            Child::RateLimiter => "rate_limiter",
        }
    }
}

type OtpFactory = Factory<
    Uuid,
    OtpMsg,
    Arc<Ctx>,
    OtpWorker,
    KeyPersistentRouting<Uuid, OtpMsg>,
    DefaultQueue<Uuid, OtpMsg>,
>;
type SessionFactory = Factory<
    Uuid,
    SessionMsg,
    Arc<Ctx>,
    SessionWorker,
    KeyPersistentRouting<Uuid, SessionMsg>,
    DefaultQueue<Uuid, SessionMsg>,
>;

/// The slots the supervisor fills with the current actor of each kind.
#[derive(Clone)]
pub struct Slots {
    sessions: Arc<ArcSwapOption<FactoryRef<Uuid, SessionMsg>>>,
    otp: Arc<ArcSwapOption<FactoryRef<Uuid, OtpMsg>>>,
    limiter: Arc<ArcSwapOption<ActorRef<RateLimiterMsg>>>,
}

pub struct SupervisorArgs {
    ctx: Arc<Ctx>,
    limits: RateLimits,
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
                let ctx = st.args.ctx.clone();
                // The factory replaces a failed worker itself by building it
                // again; a second build for the same worker id is a restart.
                let mut built = std::collections::HashSet::new();
                let builder = move |wid| {
                    if !built.insert(wid) {
                        metrics::counter!("castellan_actor_restarts_total", "actor" => "session_manager_worker").increment(1);
                        tracing::error!(worker = wid, "session manager worker failed; replaced");
                    }
                    (SessionWorker, ctx.clone())
                };
                let args = FactoryArguments::builder()
                    .worker_builder(Box::new(worker_builder(builder)))
                    .queue(DefaultQueue::default())
                    .router(KeyPersistentRouting::default())
                    .num_initial_workers(st.args.ctx.config.session_workers)
                    .build();
                let (r, _) = Actor::spawn_linked(None, SessionFactory::default(), args, me).await?;
                let id = r.get_id();
                st.args.slots.sessions.store(Some(Arc::new(r)));
                id
            }
            Child::OtpIssuer => {
                let ctx = st.args.ctx.clone();
                let args = FactoryArguments::builder()
                    .worker_builder(Box::new(worker_builder(move |_wid| {
                        (OtpWorker, ctx.clone())
                    })))
                    .queue(DefaultQueue::default())
                    .router(KeyPersistentRouting::default())
                    .num_initial_workers(st.args.ctx.config.session_workers)
                    .build();
                let (r, _) = Actor::spawn_linked(None, OtpFactory::default(), args, me).await?;
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
            Child::SessionManager => st.args.slots.sessions.store(None),
            Child::OtpIssuer => st.args.slots.otp.store(None),
            Child::RateLimiter => st.args.slots.limiter.store(None),
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

/// The running actor system, as handlers see it.
#[derive(Clone)]
pub struct Actors {
    pub sessions: SessionManager,
    pub otp: OtpIssuer,
    pub rate_limits: RateLimits,
    slots: Slots,
    root: ActorRef<()>,
}

impl Actors {
    /// The current `RateLimiter` actor (`None` while it restarts).
    pub fn rate_limiter(&self) -> Option<ActorRef<RateLimiterMsg>> {
        self.slots.limiter.load_full().map(|r| (*r).clone())
    }

    pub async fn shutdown(&self) {
        self.root.stop(None);
    }
}

pub async fn start(ctx: Arc<Ctx>) -> Result<Actors, SpawnErr> {
    let limits = RateLimits::new(ctx.config.rate_limits.clone());
    let slots = Slots {
        sessions: Arc::new(ArcSwapOption::empty()),
        otp: Arc::new(ArcSwapOption::empty()),
        limiter: Arc::new(ArcSwapOption::empty()),
    };
    let args = SupervisorArgs {
        ctx: ctx.clone(),
        limits: limits.clone(),
        slots: slots.clone(),
    };
    let (root, _) = Actor::spawn(None, Supervisor, args).await?;
    let sessions = SessionManager::new(slots.sessions.clone(), ctx.clone());
    let otp = OtpIssuer::new(slots.otp.clone(), ctx);
    Ok(Actors {
        sessions,
        otp,
        rate_limits: limits,
        slots,
        root,
    })
}
