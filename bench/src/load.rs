//! A closed-loop load generator: N workers, each with its own connection,
//! each sending the next request as soon as the previous one answered, for a
//! fixed time or until a fixed number of operations is done. Each worker
//! carries its own state, so stateful flows (a refresh uses the token the
//! previous refresh returned) chain naturally.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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
    let deadline = Arc::new(Instant::now() + duration);
    drive(
        workers,
        init,
        move |s, _| step(s),
        move || (Instant::now() < *deadline).then_some(0),
    )
    .await
}

/// Runs `step(state, n)` once for each `n` in `0..count`, spread over
/// `workers` loops: a scenario whose operations each may happen once (a
/// magic link per user), timed from the first to the last answer.
pub async fn each<S, I, IF, F, Fut>(workers: usize, count: u64, init: I, step: F) -> Measured
where
    S: Send + 'static,
    I: Fn(usize) -> IF,
    IF: Future<Output = S>,
    F: Fn(S, u64) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = (S, bool)> + Send,
{
    let next = Arc::new(AtomicU64::new(0));
    drive(workers, init, step, move || {
        let n = next.fetch_add(1, Ordering::Relaxed);
        (n < count).then_some(n)
    })
    .await
}

/// The workers' loop: each takes the next operation from `next` until it
/// says there is none.
async fn drive<S, I, IF, F, Fut, N>(workers: usize, init: I, step: F, next: N) -> Measured
where
    S: Send + 'static,
    I: Fn(usize) -> IF,
    IF: Future<Output = S>,
    F: Fn(S, u64) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = (S, bool)> + Send,
    N: Fn() -> Option<u64> + Send + Sync + Clone + 'static,
{
    let mut states = Vec::with_capacity(workers);
    for i in 0..workers {
        states.push(init(i).await);
    }
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(workers);
    for state in states {
        let (step, next) = (step.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut state = state;
            let mut latencies = Vec::with_capacity(4096);
            let mut errors = 0u64;
            while let Some(n) = next() {
                let t = Instant::now();
                let (after, ok) = step(state, n).await;
                state = after;
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
    summarise(all, errors, start.elapsed().as_secs_f64())
}

fn summarise(mut all: Vec<u32>, errors: u64, seconds: f64) -> Measured {
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
