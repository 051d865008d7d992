use std::time::{Duration, Instant};

use serde_json::json;

use crate::both;
use crate::common::{self, Backend, read};

fn restarts(metrics: &str, actor: &str) -> u64 {
    let prefix = format!("castellan_actor_restarts_total{{actor=\"{actor}\"}}");
    metrics
        .lines()
        .find(|l| l.starts_with(&prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

both!(a_killed_session_manager_is_restarted, |_| {}, |t| {
    let s = t.new_session("z@example.com", "secret123").await;
    let access = s["access_token"].as_str().unwrap().to_string();
    let metrics = || async {
        t.request(reqwest::Method::GET, "/metrics", None, None)
            .await
            .text
    };
    let actors = &t.server.state.actors;
    let following = || async { actors.session_cache.stats().await.following };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !following().await {
        assert!(
            Instant::now() < deadline,
            "the cache never followed changes"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = restarts(&metrics().await, "session_manager");
    assert_eq!(t.get_user(&access).await.status, 200);

    // Killed: reads do not wait on it, and are served from the database.
    actors.session_manager().expect("running").kill();
    let r = t.get_user(&access).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = t.refresh(s["refresh_token"].as_str().unwrap()).await;
    assert_eq!(r.status, 200, "{}", r.text);

    // The supervisor starts a successor, which follows changes again.
    let deadline = Instant::now() + Duration::from_secs(10);
    while restarts(&metrics().await, "session_manager") <= before || !following().await {
        assert!(
            Instant::now() < deadline,
            "the session manager never came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Readiness sees the successor.
    let ready = t.request(reqwest::Method::GET, "/ready", None, None).await;
    assert_eq!(ready.status, 200, "{}", ready.text);
    assert_eq!(ready.body["actors"]["session_manager"], "up");
    // A logout after the restart is seen at once.
    let r = t
        .request(reqwest::Method::POST, "/logout", Some(&access), None)
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    assert_eq!(t.get_user(&access).await.status, 403);
});

/// Two castellan processes on one PostgreSQL database refresh the same
/// session at once: the row lock (legacy) or the guarded counter (v2)
/// serializes them and the rules hold: every caller gets the one new token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_one_postgres() {
    two_processes_refresh_one_session("1").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_one_postgres_with_v2_tokens() {
    two_processes_refresh_one_session("2").await
}

async fn two_processes_refresh_one_session(version: &str) {
    let (db, _) = common::fresh_database(Backend::Postgres).await;
    let castellan_core::config::DatabaseUrl::Postgres(url) = &db else {
        unreachable!()
    };
    let mut children = Vec::new();
    let mut bases = Vec::new();
    for _ in 0..2 {
        let (child, base) = common::castellan_process(
            &["serve"],
            url,
            &[
                ("GOTRUE_MAILER_AUTOCONFIRM", "true"),
                ("GOTRUE_SECURITY_REFRESH_TOKEN_ALGORITHM_VERSION", version),
            ],
        )
        .await;
        children.push(child);
        bases.push(base);
    }
    let http = reqwest::Client::new();
    let s = read(
        http.post(format!("{}/signup", bases[0]))
            .json(&json!({"email": "two@example.com", "password": "secret123"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s.status, 200, "{}", s.text);
    let t0 = s.body["refresh_token"].as_str().unwrap().to_string();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let url = format!("{}/token?grant_type=refresh_token", bases[i % 2]);
        let req = http.post(url).json(&json!({"refresh_token": t0}));
        tasks.push(tokio::spawn(async move {
            read(req.send().await.unwrap()).await
        }));
    }
    let mut issued = std::collections::HashSet::new();
    for task in tasks {
        let r = task.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text);
        issued.insert(r.body["refresh_token"].as_str().unwrap().to_string());
    }
    assert_eq!(
        issued.len(),
        1,
        "both processes handed out the same single child"
    );
    let store = castellan_core::Store::connect(&db, 2).await.unwrap();
    let (rows, counter): (i64, Option<i64>) = castellan_core::on!(pool store.pool(), p => sqlx::query_as(
        "SELECT (SELECT count(*) FROM refresh_tokens WHERE revoked = false), (SELECT refresh_token_counter FROM sessions)")
        .fetch_one(p).await.unwrap());
    match version {
        // One live row: the single child.
        "1" => assert_eq!((rows, counter), (1, None)),
        // No rows at all; the counter moved once.
        _ => assert_eq!((rows, counter), (0, Some(1))),
    }
    store.close().await;
    for mut c in children {
        let _ = c.kill().await;
    }
    common::drop_database(&db).await;
}

/// `/ready` until `ok` says yes of it (5 s at most).
async fn ready_until(t: &common::TestServer, what: &str, ok: impl Fn(&common::Reply) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = t.request(reqwest::Method::GET, "/ready", None, None).await;
        if ok(&r) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {}", r.text);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// Issue 25: each supervised actor, killed while requests run: the requests
// are answered, `/ready` names it down until its successor runs (held back
// here by the restart backoff), and the restart is counted.
both!(
    every_actor_killed_is_restarted_and_ready_tells,
    |c| c.supervision.backoff = Duration::from_millis(600),
    |t| {
        let s = t.new_session("kill@example.com", "secret123").await;
        let access = s["access_token"].as_str().unwrap().to_string();
        let mut refresh = s["refresh_token"].as_str().unwrap().to_string();
        let metrics = || async {
            t.request(reqwest::Method::GET, "/metrics", None, None)
                .await
                .text
        };
        for name in [
            "session_manager",
            "otp_issuer",
            "rate_limiter",
            "provider_broker",
        ] {
            let before = restarts(&metrics().await, name);
            assert!(t.server.state.actors.kill(name), "{name}");
            ready_until(&t, name, |r| {
                r.status == 503 && r.body["actors"][name] == "down"
            })
            .await;
            // Served meanwhile: a read, a rotation, a limited route with a send.
            assert_eq!(t.get_user(&access).await.status, 200, "{name}");
            refresh = t.rotate(&refresh).await;
            let r = t.post("/otp", json!({"email": "kill@example.com"})).await;
            assert!(r.status == 200 || r.status == 429, "{name}: {}", r.text);
            ready_until(&t, name, |r| {
                r.status == 200 && r.body["actors"][name] == "up"
            })
            .await;
            // Counted (the recorder is the test process's: other tests may add).
            assert!(restarts(&metrics().await, name) > before, "{name}");
        }
    }
);

// Issue 25: an actor that keeps stopping escalates: after
// CASTELLAN_ACTOR_MAX_RESTARTS restarts within the window the supervisor
// gives up, `/ready` says so, and the server's `wait` ends with why (the
// process then exits non-zero for its orchestrator to restart it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_actor_in_a_crash_loop_stops_the_process() {
    let mut t = common::spawn(Backend::Sqlite, |c| {
        c.supervision.max_restarts = 2;
        c.supervision.window = Duration::from_secs(60);
    })
    .await;
    for round in 0..3 {
        assert!(t.server.state.actors.kill("rate_limiter"));
        if round < 2 {
            ready_until(&t, "restarted", |r| r.status == 200).await;
        }
    }
    let why = tokio::time::timeout(Duration::from_secs(5), t.server.wait())
        .await
        .expect("the server ends after the supervisor gives up")
        .unwrap_err()
        .to_string();
    assert!(
        why.contains("rate_limiter") && why.contains("3 times"),
        "{why}"
    );
    let r = t.request(reqwest::Method::GET, "/ready", None, None).await;
    assert_eq!(r.status, 503, "{}", r.text);
    assert_eq!(r.body["actors"]["session_manager"], "down", "{}", r.text);
    t.stop().await;
}

// Issue 25: the session cache is reached by message only. Every
// authenticated request asks the shard that owns its user (one lookup
// each: a miss, then hits), and a shard that dies takes the manager with
// it: the supervisor restarts them, reads meanwhile go to the store, and
// the cache serves again once the successor follows changes.
both!(
    session_lookups_are_messages_and_a_dead_shard_restarts_the_cache,
    |_| {},
    |t| {
        let s = t.new_session("shard@example.com", "secret123").await;
        let access = s["access_token"].as_str().unwrap().to_string();
        let lookups = "castellan_actor_messages_total{actor=\"session_manager\",message=\"lookup\"";
        let metrics = || async {
            t.request(reqwest::Method::GET, "/metrics", None, None)
                .await
                .text
        };
        let actors = &t.server.state.actors;
        let before = common::series_sum(&metrics().await, lookups);
        for _ in 0..100 {
            assert_eq!(t.get_user(&access).await.status, 200);
        }
        let text = t
            .metrics_until(|m| common::series_sum(m, lookups) >= before + 100.0)
            .await;
        let after = common::series_sum(&text, lookups);
        assert!(after >= before + 100.0, "{before} -> {after}");
        let stats = actors.session_cache.stats().await;
        assert!(stats.following && stats.entries >= 1, "{stats:?}");

        let restarted = restarts(&metrics().await, "session_manager");
        assert!(actors.kill("session_shard"));
        assert_eq!(t.get_user(&access).await.status, 200);
        let deadline = Instant::now() + Duration::from_secs(10);
        while restarts(&metrics().await, "session_manager") <= restarted
            || !actors.session_cache.stats().await.following
        {
            assert!(
                Instant::now() < deadline,
                "the session cache never came back"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The successor starts empty, and sees a logout at once.
        let r = t
            .request(reqwest::Method::POST, "/logout", Some(&access), None)
            .await;
        assert_eq!(r.status, 204, "{}", r.text);
        assert_eq!(t.get_user(&access).await.status, 403);
    }
);
