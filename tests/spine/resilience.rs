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
    let following = || actors.session_cache.stats().following;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !following() {
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
    while restarts(&metrics().await, "session_manager") <= before || !following() {
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
