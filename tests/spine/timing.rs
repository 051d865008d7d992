//! Known and unknown addresses are not told apart by time (issue 9):
//! `/recover` and `/otp` answer a registered address and an unknown one in
//! durations no test can separate (200 samples each, Mann-Whitney U,
//! |z| < 2.576, that is no difference at p < 0.01).

use std::time::{Duration, Instant};

use serde_json::json;

use crate::both;
use crate::common::TestServer;

async fn timed(t: &TestServer, path: &str, body: serde_json::Value) -> f64 {
    let start = Instant::now();
    let r = t.post(path, body.clone()).await;
    let took = start.elapsed().as_secs_f64();
    assert_eq!(r.status, 200, "{path} {body}: {}", r.text);
    // The same answer either way.
    assert_eq!(r.body, json!({}), "{path} {body}");
    took
}

/// The Mann-Whitney U statistic's z score (normal approximation).
fn mann_whitney_z(a: &[f64], b: &[f64]) -> f64 {
    let mut all: Vec<(f64, bool)> = a
        .iter()
        .map(|&x| (x, true))
        .chain(b.iter().map(|&x| (x, false)))
        .collect();
    all.sort_by(|x, y| x.0.total_cmp(&y.0));
    // Ranks, ties sharing their average rank.
    let mut rank_a = 0.0;
    let mut i = 0;
    while i < all.len() {
        let mut j = i;
        while j + 1 < all.len() && all[j + 1].0 == all[i].0 {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        rank_a += all[i..=j].iter().filter(|x| x.1).count() as f64 * rank;
        i = j + 1;
    }
    let (n1, n2) = (a.len() as f64, b.len() as f64);
    let u = rank_a - n1 * (n1 + 1.0) / 2.0;
    (u - n1 * n2 / 2.0) / (n1 * n2 * (n1 + n2 + 1.0) / 12.0).sqrt()
}

async fn compare(t: &TestServer, path: &str, known: &str) -> f64 {
    compare_bodies(t, path, known, |email| json!({"email": email})).await
}

/// As `compare`, with the body `body` makes for an address.
async fn compare_bodies(
    t: &TestServer,
    path: &str,
    known: &str,
    body: impl Fn(&str) -> serde_json::Value,
) -> f64 {
    let (mut k, mut u) = (Vec::new(), Vec::new());
    for i in 0..220 {
        let a = timed(t, path, body(known)).await;
        let b = timed(
            t,
            path,
            body(&format!("nobody{i}-{}@example.com", path.len())),
        )
        .await;
        // The first answers teach the server how long each branch takes.
        if i >= 20 {
            k.push(a);
            u.push(b);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2] * 1000.0
    };
    let z = mann_whitney_z(&k, &u);
    eprintln!(
        "{path}: known median {:.2} ms, unknown median {:.2} ms, z = {z:.2}",
        median(&mut k.clone()),
        median(&mut u.clone())
    );
    z
}

both!(
    known_and_unknown_addresses_take_the_same_time,
    |c| c.rate_limits.email_window = Duration::ZERO,
    |t| {
        let s = t.signup("known@example.com", "secret123").await;
        assert_eq!(s.status, 200, "{}", s.text);
        for path in ["/recover", "/otp"] {
            let z = compare(&t, path, "known@example.com").await;
            assert!(
                z.abs() < 2.576,
                "{path}: known and unknown addresses differ in time (z = {z:.2})"
            );
        }
    }
);

// Issue 24, P8: `/resend` answered a registered address by sending (and
// took that long); an unknown one at once. Now both are held to one time,
// with one body.
both!(
    resend_answers_known_and_unknown_addresses_alike,
    |c| {
        c.rate_limits.email_window = Duration::ZERO;
        c.rate_limits.email_sent.events = 1_000_000;
        c.mailer_autoconfirm = false;
    },
    |t| {
        let s = t.signup("pending@example.com", "secret123").await;
        assert_eq!(s.status, 200, "{}", s.text);
        let body = |email: &str| json!({"type": "signup", "email": email});
        let z = compare_bodies(&t, "/resend", "pending@example.com", body).await;
        assert!(
            z.abs() < 2.576,
            "/resend: known and unknown addresses differ in time (z = {z:.2})"
        );
    }
);
