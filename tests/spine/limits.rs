//! Rate limits changed while castellan runs (issue 14): `GET|PUT
//! /admin/rate_limits`, stored, audited, applied by every process.

use reqwest::Method;
use serde_json::json;

use crate::both;
use crate::common::{self, Backend, read};

both!(rate_limits_change_while_running, |_| {}, |t| {
    let r = t.admin(Method::GET, "/admin/rate_limits", None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    // The environment's values until changed (the test settings: 100 000).
    assert_eq!(
        r.body,
        json!({"anonymous_users": 100000, "email_sent": 30, "otp": 100000, "passkey": 30, "sms_sent": 30, "token_refresh": 100000, "verify": 100000, "web3": 30})
    );
    let user = t
        .request(Method::GET, "/admin/rate_limits", Some("not-a-jwt"), None)
        .await;
    user.assert_error(403, "bad_jwt");

    // Refused changes name the key, and change nothing.
    for (body, says) in [
        (json!({"nope": 1}), "\"nope\""),
        (json!({"verify": -1}), "\"verify\""),
        (json!({"verify": "10"}), "\"verify\""),
        (json!({"verify": 1.5}), "\"verify\""),
        (json!({"otp": 5, "verify": null}), "\"verify\""),
    ] {
        let r = t.admin(Method::PUT, "/admin/rate_limits", Some(body)).await;
        r.assert_error(400, "validation_failed");
        assert!(r.body["msg"].as_str().unwrap().contains(says), "{}", r.text);
    }
    assert_eq!(
        t.count_by_str(
            "SELECT count(*) FROM castellan_rate_limits WHERE name <> $1",
            ""
        )
        .await,
        0
    );

    let s = t.new_session("limits@example.com", "secret123").await;
    let r = t
        .admin(
            Method::PUT,
            "/admin/rate_limits",
            Some(json!({"token_refresh": 2})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["token_refresh"], 2);
    assert_eq!(r.body["verify"], 100000, "the others are kept");
    // In force at once in this process: two refreshes, then 429.
    let mut token = s["refresh_token"].as_str().unwrap().to_string();
    for _ in 0..2 {
        let r = t.refresh(&token).await;
        assert_eq!(r.status, 200, "{}", r.text);
        token = r.body["refresh_token"].as_str().unwrap().to_string();
    }
    let r = t.refresh(&token).await;
    r.assert_error(429, "over_request_rate_limit");
    assert!(r.header("retry-after").is_some());
    // Stored, and audited with the change.
    assert_eq!(
        t.count_by_str(
            "SELECT count(*) FROM castellan_rate_limits WHERE name = $1 AND events = 2",
            "token_refresh"
        )
        .await,
        1
    );
    let audit = t
        .admin(Method::GET, "/admin/audit?query=type:limits", None)
        .await;
    let entries = audit.body.as_array().unwrap();
    assert_eq!(entries.len(), 1, "{}", audit.text);
    assert_eq!(entries[0]["payload"]["traits"], json!({"token_refresh": 2}));
});

/// Waits (at most a second) until `base` reports `name` at `events`.
async fn until_reported(http: &reqwest::Client, base: &str, admin: &str, name: &str, events: u64) {
    let started = std::time::Instant::now();
    loop {
        let r = http
            .get(format!("{base}/admin/rate_limits"))
            .bearer_auth(admin)
            .send()
            .await
            .unwrap();
        let limits = read(r).await;
        if limits.body[name] == events {
            return;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(1),
            "{base}: {}",
            limits.text
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Two processes on one PostgreSQL: a limit lowered through one is enforced
/// by the other within a second, and a new process starts with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lowered_limit_reaches_every_process() {
    let (db, _) = common::fresh_database(Backend::Postgres).await;
    let castellan_core::config::DatabaseUrl::Postgres(url) = &db else {
        unreachable!()
    };
    let env = [("GOTRUE_MAILER_AUTOCONFIRM", "true")];
    let (mut a, base_a) = common::castellan_process(&["serve"], url, &env).await;
    let (mut b, base_b) = common::castellan_process(&["serve"], url, &env).await;
    let http = reqwest::Client::new();
    let admin = common::process_admin_key(&db);
    let signup = http
        .post(format!("{base_b}/signup"))
        .json(&json!({"email": "two-limits@example.com", "password": "secret123"}))
        .send()
        .await
        .unwrap();
    let mut token = read(signup).await.body["refresh_token"]
        .as_str()
        .unwrap()
        .to_string();
    let put = http
        .put(format!("{base_a}/admin/rate_limits"))
        .bearer_auth(&admin)
        .json(&json!({"token_refresh": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(read(put).await.status, 200);
    // Process B picks it up within a second: one refresh, then 429.
    let refresh = |token: String| {
        let http = http.clone();
        let url = format!("{base_b}/token?grant_type=refresh_token");
        async move {
            read(
                http.post(url)
                    .json(&json!({ "refresh_token": token }))
                    .send()
                    .await
                    .unwrap(),
            )
            .await
        }
    };
    until_reported(&http, &base_b, &admin, "token_refresh", 1).await;
    let r = refresh(token.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    token = r.body["refresh_token"].as_str().unwrap().to_string();
    refresh(token)
        .await
        .assert_error(429, "over_request_rate_limit");
    let _ = a.kill().await;
    let _ = b.kill().await;

    // A restart keeps the value.
    let (mut c, base_c) = common::castellan_process(&["serve"], url, &env).await;
    let limits = read(
        http.get(format!("{base_c}/admin/rate_limits"))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(limits.body["token_refresh"], 1, "{}", limits.text);
    // The command does the same, and the running server follows.
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_castellan"))
            .arg("limits")
            .args(args)
            .env_clear()
            .env("DATABASE_URL", url)
            .env("GOTRUE_JWT_SECRET", common::PROCESS_SECRET)
            .output()
            .unwrap()
    };
    let out = cli(&["set", "verify=7"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (shown["verify"].as_u64(), shown["token_refresh"].as_u64()),
        (Some(7), Some(1))
    );
    let out = cli(&["set", "nope=1"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("\"nope\""));
    until_reported(&http, &base_c, &admin, "verify", 7).await;
    let _ = c.kill().await;
    common::drop_database(&db).await;
}

// Issue 25: a limited route asks the `RateLimiter` by message, one check
// per request, counted as the actor's work; and a change of one limit
// leaves the other buckets' counts as they were (it used to rebuild every
// bucket, so any change forgave every client).
both!(
    the_rate_limiter_is_asked_and_keeps_unchanged_counts,
    |c| {
        c.rate_limits.verify.events = 2;
        c.rate_limits.verify.burst = 2;
    },
    |t| {
        // Each request asks once: allowed from what the actor holds, or (on
        // PostgreSQL's shared windows) told to lease, which lets it through.
        let asked = |m: &str| {
            ["allowed", "lease"]
                .iter()
                .map(|o| {
                    let series = format!("castellan_actor_messages_total{{actor=\"rate_limiter\",message=\"check\",outcome=\"{o}\"}}");
                    common::series_sum(m, &series)
                })
                .sum::<f64>()
        };
        let metrics = || async { t.request(Method::GET, "/metrics", None, None).await.text };
        let before = asked(&metrics().await);
        for i in 0..100 {
            let r = t
                .post("/recover", json!({"email": format!("n{i}@example.com")}))
                .await;
            assert_eq!(r.status, 200, "{}", r.text);
        }
        let after = t.metrics_until(|m| asked(m) >= before + 100.0).await;
        assert!(asked(&after) >= before + 100.0);

        let wrong = json!({"type": "signup", "email": "nobody@example.com", "token": "000000"});
        for _ in 0..2 {
            t.post("/verify", wrong.clone())
                .await
                .assert_error(403, "otp_expired");
        }
        let r = t
            .admin(Method::PUT, "/admin/rate_limits", Some(json!({"otp": 50})))
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        t.post("/verify", wrong)
            .await
            .assert_error(429, "over_request_rate_limit");
    }
);

// Issue 25: the send windows live in the `OtpIssuer` actor; a send asks it
// first (one `last_sent` message per send), and a send inside a window it
// saw is refused from memory, before any transaction.
both!(the_otp_issuer_is_asked_for_send_windows, |_| {}, |t| {
    assert_eq!(
        t.signup("window@example.com", "secret123").await.status,
        200
    );
    let asked = "castellan_actor_messages_total{actor=\"otp_issuer\",message=\"last_sent\",outcome=\"seen\"}";
    let refused = "castellan_otp_window_refusals_total{seen=\"memory\"}";
    let metrics = || async { t.request(Method::GET, "/metrics", None, None).await.text };
    let before = metrics().await;
    let r = t.post("/otp", json!({"email": "window@example.com"})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = t.post("/otp", json!({"email": "window@example.com"})).await;
    r.assert_error(429, "over_email_send_rate_limit");
    let grew =
        |m: &str, series| common::series_sum(m, series) > common::series_sum(&before, series);
    let after = t
        .metrics_until(|m| grew(m, asked) && grew(m, refused))
        .await;
    assert!(grew(&after, asked), "no last_sent message seen");
    assert!(grew(&after, refused), "no refusal from memory");
});

/// Issue 35: three servers on one PostgreSQL give a client one limit, not
/// three: wrong `/verify` guesses spread over them are refused past the
/// configured 30 (one may refill while they run), and the database holds
/// the client's window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gets_one_limit_across_three_servers() {
    let db = common::fresh_database(Backend::Postgres).await;
    let limited = |c: &mut castellan_core::Config| {
        c.rate_limits.verify.events = 30;
        c.rate_limits.verify.burst = 30;
        c.rate_limits.verify.per = std::time::Duration::from_secs(300);
    };
    let mut servers = vec![common::spawn_on(Backend::Postgres, db, limited).await];
    for _ in 0..2 {
        let shared = (servers[0].db.clone(), None);
        servers.push(common::spawn_on(Backend::Postgres, shared, limited).await);
    }
    let guess = json!({"type": "signup", "email": "nobody@example.com", "token": "123456"});
    let mut allowed = 0;
    for i in 0..120 {
        let r = servers[i % 3].post("/verify", guess.clone()).await;
        match r.status.as_u16() {
            429 => {
                r.assert_error(429, "over_request_rate_limit");
                assert!(r.header("retry-after").is_some());
            }
            _ => allowed += 1,
        }
    }
    assert!((30..=31).contains(&allowed), "{allowed} of 120 let through");
    let windows = "SELECT count(*) FROM castellan_rate_windows WHERE id LIKE $1";
    assert_eq!(servers[0].count_by_str(windows, "verify:%").await, 1);
    for t in servers.into_iter().rev() {
        t.stop().await;
    }
}

/// A client's burst sent at once on PostgreSQL's shared windows: every
/// request leases at the same moment, and the limit's whole burst still
/// gets through (requests that found the window taken by their siblings'
/// leases take from what the siblings hold).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_sent_at_once_gets_its_whole_allowance() {
    let t = common::spawn(Backend::Postgres, |c| {
        c.rate_limits.verify.events = 30;
        c.rate_limits.verify.burst = 30;
        c.rate_limits.verify.per = std::time::Duration::from_secs(300);
    })
    .await;
    let guess = json!({"type": "signup", "email": "nobody@example.com", "token": "123456"});
    let url = t.url("/verify");
    let replies = common::at_once((0..30).map(|_| t.http.post(&url).json(&guess))).await;
    let allowed = replies.iter().filter(|r| r.status != 429).count();
    assert_eq!(allowed, 30, "{allowed} of a burst of 30 let through");
    let r = t.post("/verify", guess).await;
    r.assert_error(429, "over_request_rate_limit");
    t.stop().await;
}
