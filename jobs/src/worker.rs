//! The workers: deliver queued email with retries and exponential backoff.
//! A message that fails every attempt stays in the queue table marked
//! failed and is counted as dead; it is never dropped silently.

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use apalis::layers::retry::HasherRng;
use apalis::layers::retry::backoff::{ExponentialBackoffMaker, MakeBackoff};
use apalis::prelude::*;
use castellan_core::config::Config;
use castellan_core::crypto::at_rest::JobSeal;
use castellan_core::hooks::Hook;
use castellan_core::store::{Pool, Store};

use crate::email::{EmailJob, Mailer};
use crate::queue::{Queue, Queued};
use crate::sms::{Gateway, SendError, SmsJob};
use crate::templates::Templates;

/// The workers' heartbeat. Besides marking them alive, each beat makes an
/// idle worker look for jobs again: under load an interval poll's wake-up is
/// occasionally lost (seen in the test suite), and the beat bounds that delay.
const HEARTBEAT: Duration = Duration::from_secs(3);

pub struct EmailDeps {
    pub seal: JobSeal,
    pub mailer: Mailer,
    pub templates: Templates,
    pub attempts: usize,
    pub clock: castellan_core::Clock,
}

/// A queued job opened, or `None` (counted dead, logged) when it cannot be:
/// sealed under another secret, it will never open, so it is not retried.
fn opened<J: serde::Serialize + serde::de::DeserializeOwned>(
    job: Queued<J>,
    seal: &JobSeal,
    queue: &'static str,
) -> Option<J> {
    match job.open(seal) {
        Ok(job) => Some(job),
        Err(e) => {
            metrics::counter!("castellan_queue_dead_total", "queue" => queue).increment(1);
            tracing::error!(queue, error = %e, "a queued job does not open (was the secret changed?); not retried");
            None
        }
    }
}

async fn deliver(
    job: Queued<EmailJob>,
    deps: Data<Arc<EmailDeps>>,
    attempt: Attempt,
) -> Result<(), BoxDynError> {
    let Some(job) = opened(job, &deps.seal, "email") else {
        return Ok(());
    };
    let start = Instant::now();
    let rendered = match &job.message {
        Some(m) => m.clone(),
        None => deps.templates.render(&job),
    };
    let result = deps.mailer.deliver(&job, rendered).await;
    metrics::histogram!("castellan_queue_job_duration_seconds", "queue" => "email")
        .record(start.elapsed().as_secs_f64());
    match result {
        Ok(()) => {
            metrics::counter!("castellan_queue_succeeded_total", "queue" => "email", "kind" => job.kind.name()).increment(1);
            if let Some(at) = job.queued_at {
                let waited = (deps.clock.now() - at).to_std().unwrap_or_default();
                metrics::histogram!("castellan_queue_delivery_seconds", "queue" => "email")
                    .record(waited.as_secs_f64());
            }
            Ok(())
        }
        Err(e) if !e.retryable() => {
            metrics::counter!("castellan_queue_dead_total", "queue" => "email").increment(1);
            tracing::error!(job = %job.id, error = %e, "email refused; not retried");
            Ok(())
        }
        Err(e) => {
            let n = attempt.current();
            if n + 1 >= deps.attempts {
                metrics::counter!("castellan_queue_dead_total", "queue" => "email").increment(1);
                tracing::error!(job = %job.id, attempt = n, error = %e, "email failed its last attempt; marked failed in the queue");
            } else {
                metrics::counter!("castellan_queue_retried_total", "queue" => "email").increment(1);
                tracing::warn!(job = %job.id, attempt = n, error = %e, "email delivery failed; will retry");
            }
            Err(e.into())
        }
    }
}

pub struct SmsDeps {
    pub seal: JobSeal,
    pub gateway: Gateway,
    pub attempts: usize,
    pub clock: castellan_core::Clock,
}

/// Delivers one SMS. A refusal is final: the message is counted dead and
/// logged, not retried (the provider would refuse it again).
async fn deliver_sms(
    job: Queued<SmsJob>,
    deps: Data<Arc<SmsDeps>>,
    attempt: Attempt,
) -> Result<(), BoxDynError> {
    let Some(job) = opened(job, &deps.seal, "sms") else {
        return Ok(());
    };
    let start = Instant::now();
    let result = deps.gateway.deliver(&job).await;
    metrics::histogram!("castellan_queue_job_duration_seconds", "queue" => "sms")
        .record(start.elapsed().as_secs_f64());
    let provider = deps.gateway.name();
    match result {
        Ok(id) => {
            metrics::counter!("castellan_queue_succeeded_total", "queue" => "sms", "kind" => job.kind.as_str()).increment(1);
            let waited = (deps.clock.now() - job.queued_at)
                .to_std()
                .unwrap_or_default();
            metrics::histogram!("castellan_queue_delivery_seconds", "queue" => "sms")
                .record(waited.as_secs_f64());
            tracing::info!(job = %job.id, provider, message_id = ?id, "SMS delivered by the queue");
            Ok(())
        }
        Err(SendError::Rejected(castellan_core::ApiError { message: e, .. }))
        | Err(SendError::Refused(e)) => {
            metrics::counter!("castellan_queue_dead_total", "queue" => "sms").increment(1);
            tracing::error!(job = %job.id, provider, error = %e, "SMS refused by the provider; not retried");
            Ok(())
        }
        Err(e) => {
            let n = attempt.current();
            if n + 1 >= deps.attempts {
                metrics::counter!("castellan_queue_dead_total", "queue" => "sms").increment(1);
                tracing::error!(job = %job.id, attempt = n, provider, error = %e, "SMS failed its last attempt; marked failed in the queue");
            } else {
                metrics::counter!("castellan_queue_retried_total", "queue" => "sms").increment(1);
                tracing::warn!(job = %job.id, attempt = n, provider, error = %e, "SMS delivery failed; will retry");
            }
            Err(e.into())
        }
    }
}

/// A worker whose backend failed (the database went away, say) is started
/// again, and counted.
fn restart_worker(worker: &WorkerContext, error: &WorkerError) -> bool {
    // Worker names are `castellan-<queue>-<id>-<run>`.
    let queue = match worker.name().split('-').nth(1) {
        Some("email") => "email",
        Some("sms") => "sms",
        _ => "expiry",
    };
    metrics::counter!("castellan_queue_worker_restarts_total", "queue" => queue).increment(1);
    tracing::error!(queue, restarts = worker.restarts(), %error, "queue worker failed; restarting");
    true
}

/// The expiry sweep, on its cron schedule: batches of each kind until none
/// fills its batch (a backlog drains, a tick at a time, rather than 100 rows a
/// minute), or the tick's time is spent.
async fn sweep(
    _tick: apalis_cron::Tick,
    store: Data<Store>,
    otp_exp: Data<Duration>,
    clock: Data<castellan_core::Clock>,
    retention: Data<Retention>,
    sweeping: Data<Sweeping>,
) -> Result<(), BoxDynError> {
    let now = clock.now();
    let swept = sweep_dead_rows(&store, &sweeping, now, *otp_exp).await?;
    let jobs = crate::queue::purge_finished(&store, (*retention).0, 500).await?;
    metrics::counter!("castellan_expiry_swept_total", "kind" => "jobs").increment(jobs);
    // Change records every server has long since read (SQLite's change log).
    store
        .prune_changes(now - chrono::Duration::minutes(10))
        .await?;
    for (kind, n) in swept.kinds() {
        metrics::counter!("castellan_expiry_swept_total", "kind" => kind).increment(n);
    }
    // The same tick samples the queues' backlogs.
    for queue in Queue::ALL {
        let pending = crate::queue::pending(&store, queue).await?;
        metrics::gauge!("castellan_queue_pending", "queue" => queue.label()).set(pending as f64);
    }
    Ok(())
}

/// Rows a sweep batch deletes of each kind: few enough that a batch holds
/// SQLite's writer for tens of milliseconds (a deleted session also takes its
/// refresh tokens and change records with it).
const SWEEP_BATCH: u64 = 250;

/// How long one tick keeps sweeping a backlog (ticks are a minute apart by default).
const SWEEP_BUDGET: Duration = Duration::from_secs(20);

/// One sweep at a time in a worker: a tick that finds one under way leaves
/// it the work.
#[derive(Clone, Default)]
struct Sweeping(Arc<std::sync::atomic::AtomicBool>);

async fn sweep_dead_rows(
    store: &Store,
    sweeping: &Sweeping,
    now: chrono::DateTime<chrono::Utc>,
    otp_exp: Duration,
) -> Result<castellan_core::store::Swept, castellan_core::store::DbError> {
    use std::sync::atomic::Ordering;
    let mut total = castellan_core::store::Swept::default();
    if sweeping.0.swap(true, Ordering::AcqRel) {
        return Ok(total);
    }
    let started = Instant::now();
    let result = async {
        loop {
            let batch_started = Instant::now();
            let batch = store
                .sweep_expired(now, otp_exp, SWEEP_BATCH as i64)
                .await?;
            total.add(&batch);
            if !batch.filled(SWEEP_BATCH) || started.elapsed() > SWEEP_BUDGET {
                return Ok(total);
            }
            // At most half the writer's time: requests' writes take their
            // turns while the sweep rests as long as its batch took.
            tokio::time::sleep(batch_started.elapsed().max(Duration::from_millis(5))).await;
        }
    }
    .await;
    sweeping.0.store(false, Ordering::Release);
    result
}

/// How long finished jobs stay in the queue's table.
#[derive(Clone, Copy)]
struct Retention(Duration);

/// How long a stopping worker waits for the deliveries under way.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// One queue's apalis storage on either backend (on SQLite, in the
/// writer's turn: see [`crate::lite_backend`]).
macro_rules! storage {
    (pg $p:expr, $job:ty, $queue:expr) => {
        apalis_postgres::PostgresStorage::<$job>::new($p).with_config(
            apalis_postgres::Config::default()
                .queue($queue.table_name())
                .heartbeat_interval(HEARTBEAT),
        )
    };
    (lite $store:expr, $job:ty, $queue:expr) => {
        crate::lite_backend::LiteQueue::<$job>::new(
            $store.clone(),
            apalis_sqlite::Config::default()
                .queue($queue.table_name())
                .heartbeat_interval(HEARTBEAT),
        )
    };
}

/// Runs the email and SMS workers (and the expiry cron) until `shutdown` resolves.
pub async fn run(
    store: Store,
    config: &Config,
    seal: JobSeal,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let attempts = config.mailer.max_attempts.max(1);
    let (deps, sms_deps) = deps(&store, config, seal, attempts).await?;
    let backoff = backoff(config)?;
    // Names must be unique per process: a reused name stalls for 30 s.
    let [name, sms_name, cron_name] = ["email", "sms", "expiry"]
        .map(|q| format!("castellan-{q}-{}", uuid::Uuid::new_v4().simple()));
    let signal = async move {
        shutdown.await;
        Ok(())
    };
    let poll = config.mailer.poll_interval;
    let schedule = cron::Schedule::from_str(&config.expiry_schedule)
        .map_err(|e| format!("CASTELLAN_EXPIRY_SCHEDULE: {e}"))?;
    let (sweep_store, otp_exp) = (store.clone(), config.mailer.otp_exp);
    let (retention, clock) = (Retention(config.mailer.job_retention), config.clock.clone());
    let sweeping = Sweeping::default();
    let policy = RetryPolicy::retries(attempts - 1).with_backoff(backoff.clone().make_backoff());
    // The same monitor over either backend (their storage types differ).
    macro_rules! monitor {
        ($storage:expr, $sms_storage:expr) => {{
            let storage = $storage.poll_with_interval(poll);
            let sms_storage = $sms_storage.poll_with_interval(poll);
            let sms_policy = policy.clone();
            Monitor::new()
                .should_restart(restart_worker)
                // Deliveries under way finish; one waiting out a retry
                // backoff is put back in the queue below instead.
                .shutdown_timeout(STOP_GRACE)
                .register(move |restarts| {
                    // A fresh name per run: a name reused within the heartbeat window stalls.
                    WorkerBuilder::new(format!("{name}-{restarts}"))
                        .backend(storage.clone())
                        .retry(policy.clone())
                        .data(deps.clone())
                        .build(deliver)
                })
                .register(move |restarts| {
                    WorkerBuilder::new(format!("{sms_name}-{restarts}"))
                        .backend(sms_storage.clone())
                        .retry(sms_policy.clone())
                        .data(sms_deps.clone())
                        .build(deliver_sms)
                })
                .register(move |restarts| {
                    WorkerBuilder::new(format!("{cron_name}-{restarts}"))
                        .backend(apalis_cron::CronScheduler::new(schedule.clone()))
                        .data(sweep_store.clone())
                        .data(otp_exp)
                        .data(clock.clone())
                        .data(retention)
                        .data(sweeping.clone())
                        .build(sweep)
                })
                .run_with_signal(signal)
                .await
                .map_err(|e| e.to_string())
        }};
    }
    let held = [(Queue::Email, name.clone()), (Queue::Sms, sms_name.clone())];
    let ran = match store.pool() {
        Pool::Pg(p) => monitor!(
            storage!(pg p, Queued<EmailJob>, Queue::Email),
            storage!(pg p, Queued<SmsJob>, Queue::Sms)
        ),
        Pool::Lite(_) => monitor!(
            storage!(lite store, Queued<EmailJob>, Queue::Email),
            storage!(lite store, Queued<SmsJob>, Queue::Sms)
        ),
    };
    put_back(&store, held).await;
    ran
}

/// Jobs the stopped workers held (waiting out a retry backoff) go back in
/// the queue now, not after the heartbeat timeout.
async fn put_back(store: &Store, held: [(Queue, String); 2]) {
    for (queue, worker) in held {
        match crate::queue::release(store, queue, &worker).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(
                    jobs = n,
                    queue = queue.label(),
                    "stopped workers' jobs put back in the queue"
                )
            }
            Err(e) => {
                tracing::warn!(error = %e, "putting back the stopped workers' jobs failed; they return after the heartbeat timeout")
            }
        }
    }
}

/// The wait between a delivery's attempts: doubling from
/// `CASTELLAN_EMAIL_RETRY_MIN` to `_MAX`, with jitter.
fn backoff(config: &Config) -> Result<ExponentialBackoffMaker, String> {
    ExponentialBackoffMaker::new(
        config.mailer.retry_min,
        config.mailer.retry_max,
        0.2,
        HasherRng::default(),
    )
    .map_err(|e| format!("email retry backoff: {e}"))
}

/// What the email and SMS workers deliver with.
async fn deps(
    store: &Store,
    config: &Config,
    seal: JobSeal,
    attempts: usize,
) -> Result<(Arc<EmailDeps>, Arc<SmsDeps>), String> {
    let caller = castellan_core::hooks::Caller::new(store.clone())?;
    let hook = |h| crate::hooked::HookDelivery::of(config, h, &caller);
    let mailer = Mailer::from_config(&config.smtp)?.with_hook(hook(Hook::SendEmail));
    let templates = Templates::load(&config.mailer).await?;
    let deps = Arc::new(EmailDeps {
        seal: seal.clone(),
        mailer,
        templates,
        attempts,
        clock: config.clock.clone(),
    });
    let sms_deps = Arc::new(SmsDeps {
        seal,
        gateway: Gateway::from_config(&config.sms).with_hook(hook(Hook::SendSms)),
        attempts,
        clock: config.clock.clone(),
    });
    Ok((deps, sms_deps))
}

/// How long a delivery may be retried before it is dead, for the README.
pub fn retry_window(config: &Config) -> Duration {
    let mut total = Duration::ZERO;
    let mut d = config.mailer.retry_min;
    for _ in 1..config.mailer.max_attempts {
        total += d;
        d = (d * 2).min(config.mailer.retry_max);
    }
    total
}
