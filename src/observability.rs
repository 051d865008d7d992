//! Prometheus metrics: the global recorder, per-route HTTP metrics and the
//! `/metrics` endpoint.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::{FromRef, State};
use axum::response::{IntoResponse, Response};
use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use castellan_core::handles::Handles;
use castellan_core::store::Store;

use crate::server::AppState;

/// Delivery waits (enqueue to sent) run to minutes while SMTP is down.
const DELIVERY_BUCKETS: [f64; 12] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0,
];

const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Installs the process-wide recorder once and returns its handle; later
/// calls (several servers in one test process) share it.
pub fn recorder() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("castellan_queue_delivery_seconds".into()),
                    &DELIVERY_BUCKETS,
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)
                })
                .expect("buckets are not empty")
                .install_recorder()
                .expect("no other metrics recorder is installed");
            known_series();
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(Duration::from_secs(5));
                        upkeep.run_upkeep();
                    }
                })
                .expect("spawn the upkeep thread");
            handle
        })
        .clone()
}

/// The method as a metric label: a closed set, so invented methods cannot
/// grow the exporter's memory without bound.
pub fn method_label(m: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Marks a probe's answer (`/health`, `/ready`): the access log leaves it
/// out unless asked (`CASTELLAN_LOG_PROBES`) or it is a server error.
#[derive(Clone, Copy)]
pub struct Probe;

/// Counts requests by route template, method and status, and times them.
/// Every label comes from a closed set (the raw path never becomes one).
/// The request counters and timers, resolved once per route, method and
/// status. Bounded: routes are the router's templates (or "unmatched").
static HTTP_SERIES: Handles<Box<str>, Arc<RouteSeries>> = Handles::new();

type RouteSeries = Handles<(&'static str, u16), (Counter, Histogram)>;

pub(crate) fn record(route: &str, method: &'static str, status: u16, took: Duration) {
    // One route whichever prefix it was called by (supabase-js calls
    // `/auth/v1/token`, GoTrue's own clients `/token`): one series a panel.
    let route = route
        .strip_prefix("/auth/v1")
        .filter(|r| r.starts_with('/'))
        .unwrap_or(route);
    let series = HTTP_SERIES.get(route, || (route.into(), Arc::default()));
    let (requests, duration) = series.get(&(method, status), || {
        let name = route.to_string();
        let requests = metrics::counter!("castellan_http_requests_total", "route" => name.clone(), "method" => method, "status" => status.to_string());
        let duration = metrics::histogram!("castellan_http_request_duration_seconds", "route" => name, "method" => method);
        ((method, status), (requests, duration))
    });
    requests.increment(1);
    duration.record(took.as_secs_f64());
}

/// The series of events that may not have happened yet, at zero, so a
/// dashboard shows 0 rather than nothing and `increase()` sees the first.
fn known_series() {
    for actor in [
        "session_manager",
        "otp_issuer",
        "rate_limiter",
        "provider_broker",
    ] {
        metrics::counter!("castellan_actor_restarts_total", "actor" => actor).increment(0);
        metrics::gauge!("castellan_actor_mailbox_depth", "actor" => actor).increment(0.0);
    }
    for name in [
        "castellan_queue_retried_total",
        "castellan_queue_dead_total",
        "castellan_queue_worker_restarts_total",
    ] {
        for queue in ["email", "sms"] {
            metrics::counter!(name, "queue" => queue).increment(0);
        }
    }
    for outcome in ["family_revoked", "refused"] {
        metrics::counter!("castellan_refresh_token_reuse_total", "outcome" => outcome).increment(0);
    }
    for name in [
        "castellan_session_cache_evictions_total",
        "castellan_email_budget_exhausted_total",
        "castellan_sms_budget_exhausted_total",
        "castellan_not_ready_total",
        "castellan_panics_total",
    ] {
        metrics::counter!(name).increment(0);
    }
}

/// The labelled series a new deployment's panels read, at zero, so they
/// show 0 rather than "No data" before the first event of each kind: every
/// label value here is one the code counts with.
pub fn zero_series(config: &castellan_core::Config) {
    use castellan_jobs::email::EmailKind;
    use castellan_jobs::sms::SmsKind;
    for b in castellan_core::limits::Bucket::ALL {
        for key in ["peer", "forwarded", "header"] {
            metrics::counter!("castellan_rate_limit_rejections_total", "bucket" => b.label(), "key" => key).increment(0);
        }
    }
    let sms = match config.hooks.get(castellan_core::hooks::Hook::SendSms) {
        Some(_) => "hook",
        None => castellan_jobs::sms::Gateway::from_config(&config.sms).name(),
    };
    for outcome in ["sent", "refused", "unavailable"] {
        metrics::counter!("castellan_sms_total", "provider" => sms, "outcome" => outcome)
            .increment(0);
    }
    for op in ["enroll", "verify", "unenroll"] {
        metrics::counter!("castellan_mfa_total", "op" => op, "outcome" => "ok").increment(0);
    }
    for op in ["send", "send_sms", "verify"] {
        for outcome in ["ok", "error"] {
            metrics::counter!("castellan_otp_total", "op" => op, "outcome" => outcome).increment(0);
        }
    }
    for outcome in ["ok", "refused"] {
        metrics::counter!("castellan_refreshes_total", "outcome" => outcome).increment(0);
    }
    for (provider, confirmed) in [
        ("email", "true"),
        ("email", "false"),
        ("phone", "true"),
        ("phone", "false"),
    ] {
        metrics::counter!("castellan_signups_total", "provider" => provider, "confirmed" => confirmed).increment(0);
    }
    metrics::counter!("castellan_signins_total", "method" => "password", "outcome" => "ok")
        .increment(0);
    for (hook, _) in config.hooks.enabled() {
        for outcome in ["ok", "refused", "error"] {
            metrics::counter!("castellan_hook_calls_total", "hook" => hook.label(), "outcome" => outcome)
                .increment(0);
        }
    }
    for kind in [
        EmailKind::Confirmation,
        EmailKind::MagicLink,
        EmailKind::Recovery,
    ] {
        for name in [
            "castellan_queue_enqueued_total",
            "castellan_queue_succeeded_total",
        ] {
            metrics::counter!(name, "queue" => "email", "kind" => kind.name()).increment(0);
        }
    }
    for name in [
        "castellan_queue_enqueued_total",
        "castellan_queue_succeeded_total",
    ] {
        metrics::counter!(name, "queue" => "sms", "kind" => SmsKind::Confirmation.as_str())
            .increment(0);
    }
}

/// The queues' backlogs, counted in the database when scraped (at most once
/// a second whoever scrapes, one count at a time): every process reports
/// the same number. A scrape waits half a second for it at most; a slow or
/// absent database leaves the last sample, and `/ready` says why.
async fn sample_queues(store: &Store) {
    use std::sync::atomic::{AtomicBool, Ordering};
    static LAST: std::sync::Mutex<Option<std::time::Instant>> = std::sync::Mutex::new(None);
    static SAMPLING: AtomicBool = AtomicBool::new(false);
    /// Frees the one sampling slot however the count ends.
    struct Done;
    impl Drop for Done {
        fn drop(&mut self) {
            SAMPLING.store(false, Ordering::Release);
        }
    }
    {
        let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            return;
        }
        if SAMPLING.swap(true, Ordering::AcqRel) {
            return;
        }
        *last = Some(std::time::Instant::now());
    }
    let store = store.clone();
    let count = tokio::spawn(async move {
        let _done = Done;
        let counted = async {
            for queue in castellan_jobs::queue::Queue::ALL {
                let pending = castellan_jobs::queue::pending(&store, queue).await?;
                metrics::gauge!("castellan_queue_pending", "queue" => queue.label())
                    .set(pending as f64);
            }
            Ok::<_, castellan_core::store::DbError>(())
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), counted).await;
    });
    let _ = tokio::time::timeout(Duration::from_millis(500), count).await;
}

/// What `/metrics` reads: the recorder, and the store whose pool it samples.
#[derive(Clone)]
pub struct Scrape {
    pub handle: PrometheusHandle,
    pub store: Store,
}

impl FromRef<AppState> for Scrape {
    fn from_ref(st: &AppState) -> Scrape {
        st.metrics.clone()
    }
}

pub async fn metrics_endpoint(State(scrape): State<Scrape>) -> Response {
    // The pool is sampled when scraped: its numbers change on every query.
    let (open, idle, max) = scrape.store.pool_stats();
    let in_use = (open as usize).saturating_sub(idle);
    metrics::gauge!("castellan_db_pool_connections", "state" => "idle").set(idle as f64);
    metrics::gauge!("castellan_db_pool_connections", "state" => "in_use").set(in_use as f64);
    metrics::gauge!("castellan_db_pool_max_connections").set(f64::from(max));
    sample_queues(&scrape.store).await;
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        scrape.handle.render(),
    )
        .into_response()
}

/// `/metrics` alone, on its own address (`CASTELLAN_METRICS_ADDR`): for
/// the API beside its port, and for worker processes, which serve nothing else.
pub fn metrics_router(scrape: Scrape) -> axum::Router {
    axum::Router::new()
        .route("/metrics", axum::routing::get(metrics_endpoint))
        .with_state(scrape)
}
