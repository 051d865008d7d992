//! A closed-loop load generator: N workers, each with its own connection,
//! each sending the next request as soon as the previous one answered, for a
//! fixed time. Each worker carries its own state, so stateful flows (a
//! refresh uses the token the previous refresh returned) chain naturally.

use std::future::Future;
use std::time::{Duration, Instant};

/// What one run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Measured {
    pub requests: u64,
    pub errors: u64,
    pub seconds: f64,
    pub per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// Runs `step` in `workers` loops for `duration`. `init(i)` builds worker
/// `i`'s state; `step` performs one operation and returns whether it succeeded.
pub async fn run<S, I, IF, F, Fut>(workers: usize, duration: Duration, init: I, step: F) -> Measured
where
    S: Send + 'static,
    I: Fn(usize) -> IF,
    IF: Future<Output = S>,
    F: Fn(S) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = (S, bool)> + Send,
{
    let mut states = Vec::with_capacity(workers);
    for i in 0..workers {
        states.push(init(i).await);
    }
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::with_capacity(workers);
    for state in states {
        let step = step.clone();
        tasks.push(tokio::spawn(async move {
            let mut state = state;
            let mut latencies = Vec::with_capacity(4096);
            let mut errors = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                let (next, ok) = step(state).await;
                state = next;
                latencies.push(t.elapsed().as_micros() as u32);
                if !ok {
                    errors += 1;
                }
            }
            (latencies, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.expect("load worker");
        all.extend(l);
        errors += e;
    }
    let seconds = start.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| {
        if all.is_empty() {
            0.0
        } else {
            all[((all.len() as f64 * p) as usize).min(all.len() - 1)] as f64 / 1000.0
        }
    };
    let requests = all.len() as u64;
    Measured {
        requests,
        errors,
        seconds,
        per_second: (requests - errors.min(requests)) as f64 / seconds,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
    }
}
