//! The live-session cache across processes: a revocation made by one
//! process is refused by every other one sharing the database, and a lost
//! notification channel never leaves a stale answer behind.

use std::time::{Duration, Instant};

use castellan_core::config::DatabaseUrl;
use reqwest::Method;
use serde_json::{Value, json};

use crate::common::{self, Backend, Reply, read};

const SECRET: &str = common::PROCESS_SECRET;

fn service_key() -> String {
    use castellan_core::crypto::jwt::{JwtKeys, role_claims};
    let cfg = castellan_core::Config::for_tests(DatabaseUrl::Sqlite("unused".into()));
    let now = chrono::Utc::now().timestamp();
    JwtKeys::new(&cfg.jwt, SECRET)
        .unwrap()
        .sign(&role_claims("service_role", &cfg.jwt.aud, now, 3600, None))
        .unwrap()
}

async fn call(base: &str, method: Method, path: &str, token: &str, body: Option<Value>) -> Reply {
    let mut req = reqwest::Client::new()
        .request(method, format!("{base}{path}"))
        .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    read(req.send().await.unwrap()).await
}

async fn signup(base: &str, email: &str) -> Value {
    let r = read(
        reqwest::Client::new()
            .post(format!("{base}/signup"))
            .json(&json!({"email": email, "password": "secret123"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.body
}

/// Polls `GET /user` on `base` until it is refused; returns how long that took.
async fn refused_after(base: &str, access: &str, since: Instant) -> Duration {
    loop {
        let r = call(base, Method::GET, "/user", access, None).await;
        if r.status == 403 {
            return since.elapsed();
        }
        assert_eq!(r.status, 200, "{}", r.text);
        assert!(
            since.elapsed() < Duration::from_secs(5),
            "still served 5 s after the revocation"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Sends `revocation` (to the other process), expecting `status`, then
/// reports how long `b` kept serving `access` after it was sent.
async fn revoked(
    what: &str,
    b: &str,
    access: &str,
    status: u16,
    revocation: impl std::future::Future<Output = Reply>,
) {
    let t = Instant::now();
    let r = revocation.await;
    assert_eq!(r.status, status, "{what}: {}", r.text);
    println!(
        "{what} refused by the other process after {:?}",
        refused_after(b, access, t).await
    );
}

/// Signs a user up on `a`, and warms `b`'s cache with their token.
async fn warmed(a: &str, b: &str, email: &str) -> (Value, String) {
    let s = signup(a, email).await;
    let access = s["access_token"].as_str().unwrap().to_string();
    for _ in 0..2 {
        assert_eq!(
            call(b, Method::GET, "/user", &access, None).await.status,
            200
        );
    }
    (s, access)
}

async fn metrics(base: &str) -> String {
    reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// A fresh PostgreSQL database and two castellan processes serving it.
async fn two_processes() -> (DatabaseUrl, [(tokio::process::Child, String); 2]) {
    let (db, _) = common::fresh_database(Backend::Postgres).await;
    let DatabaseUrl::Postgres(url) = &db else {
        unreachable!()
    };
    let env = [("GOTRUE_MAILER_AUTOCONFIRM", "true")];
    let a = common::castellan_process(&["serve"], url, &env).await;
    let b = common::castellan_process(&["serve"], url, &env).await;
    (db, [a, b])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_reach_every_process_on_postgres() {
    let (db, [(_ca, a), (_cb, b)]) = two_processes().await;
    let key = service_key();

    // Logout.
    let (_, access) = warmed(&a, &b, "logout@example.com").await;
    revoked(
        "logout",
        &b,
        &access,
        204,
        call(&a, Method::POST, "/logout", &access, None),
    )
    .await;

    // Ban.
    let (s, access) = warmed(&a, &b, "ban@example.com").await;
    let path = format!("/admin/users/{}", s["user"]["id"].as_str().unwrap());
    let ban = Some(json!({"ban_duration": "24h"}));
    revoked(
        "ban",
        &b,
        &access,
        200,
        call(&a, Method::PUT, &path, &key, ban),
    )
    .await;

    // Delete.
    let (s, access) = warmed(&a, &b, "delete@example.com").await;
    let path = format!("/admin/users/{}", s["user"]["id"].as_str().unwrap());
    revoked(
        "delete",
        &b,
        &access,
        200,
        call(&a, Method::DELETE, &path, &key, None),
    )
    .await;

    // A password change ends the user's other sessions.
    let (_, keep) = warmed(&a, &b, "password@example.com").await;
    let login = read(
        reqwest::Client::new()
            .post(format!("{a}/token?grant_type=password"))
            .json(&json!({"email": "password@example.com", "password": "secret123"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(login.status, 200, "{}", login.text);
    let other = login.body["access_token"].as_str().unwrap().to_string();
    assert_eq!(
        call(&b, Method::GET, "/user", &other, None).await.status,
        200
    );
    let password = Some(json!({"password": "another-secret"}));
    let change = call(&a, Method::PUT, "/user", &keep, password);
    revoked("password change", &b, &other, 200, change).await;
    assert_eq!(
        call(&b, Method::GET, "/user", &keep, None).await.status,
        200
    );

    // The notification connections are killed: nothing stale is served
    // while they are down, and once they are back notifications work again.
    let (_, access) = warmed(&a, &b, "listener@example.com").await;
    let admin = castellan_core::Store::connect(&db, 1).await.unwrap();
    let killed: i64 = castellan_core::on!(pool admin.pool(), p => sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND query ILIKE 'LISTEN%') k").fetch_one(p).await.unwrap());
    assert!(killed >= 2, "both processes listen ({killed})");
    let logout = call(&a, Method::POST, "/logout", &access, None);
    revoked("logout with the listener killed", &b, &access, 204, logout).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !metrics(&b)
        .await
        .contains("castellan_session_cache_following 1")
    {
        assert!(Instant::now() < deadline, "the listener never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        metrics(&b)
            .await
            .contains("castellan_session_cache_feed_lost_total")
    );
    let (_, access) = warmed(&a, &b, "again@example.com").await;
    let logout = call(&a, Method::POST, "/logout", &access, None);
    revoked(
        "logout after the listener came back",
        &b,
        &access,
        204,
        logout,
    )
    .await;
    admin.close().await;
    common::drop_database(&db).await;
}

async fn refresh(base: &str, token: &str) -> Reply {
    read(
        reqwest::Client::new()
            .post(format!("{base}/token?grant_type=refresh_token"))
            .json(&json!({"refresh_token": token}))
            .send()
            .await
            .unwrap(),
    )
    .await
}

/// Refreshes `token` on `base`, expecting success; the next token.
async fn rotate(base: &str, token: &str) -> String {
    let r = refresh(base, token).await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.body["refresh_token"].as_str().unwrap().to_string()
}

/// The value of a counter in `/metrics` (0 when absent).
async fn counter(base: &str, name: &str) -> f64 {
    metrics(base)
        .await
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A process serves a session's refreshes from what its last refresh left;
/// another process refreshing the session, a reuse, the session's end and
/// the user's ban elsewhere are each obeyed by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_refreshes_follow_other_processes_on_postgres() {
    let (db, [(_ca, a), (_cb, b)]) = two_processes().await;
    let key = service_key();
    let hits = "castellan_refresh_cache_hits_total";

    let s = signup(&a, "chain@example.com").await;
    let r1 = rotate(&b, s["refresh_token"].as_str().unwrap()).await;
    let before = counter(&b, hits).await;
    let r2 = rotate(&b, &r1).await;
    assert_eq!(
        counter(&b, hits).await,
        before + 1.0,
        "served from the cache"
    );
    // A moves the counter; B's entry is behind, and B still rotates A's token.
    let r3 = rotate(&a, &r2).await;
    let r4 = rotate(&b, &r3).await;
    let r5 = rotate(&b, &r4).await;
    // A token two behind is a reuse, whichever process sees it: the session
    // ends, and B's next refresh of its own latest token is refused.
    refresh(&b, &r3)
        .await
        .assert_error(400, "refresh_token_already_used");
    refresh(&b, &r5)
        .await
        .assert_error(400, "refresh_token_not_found");
    assert_eq!(
        counter(
            &a,
            "castellan_refresh_token_reuse_total{outcome=\"session_ended\"}"
        )
        .await
            + counter(
                &b,
                "castellan_refresh_token_reuse_total{outcome=\"session_ended\"}"
            )
            .await,
        1.0
    );

    // The session ended by the other process: B's cached entry is not used.
    let s = signup(&a, "ended@example.com").await;
    let access = s["access_token"].as_str().unwrap().to_string();
    let t = rotate(&b, s["refresh_token"].as_str().unwrap()).await;
    let t = rotate(&b, &t).await;
    let r = call(&a, Method::POST, "/logout", &access, None).await;
    assert_eq!(r.status, 204, "{}", r.text);
    refresh(&b, &t)
        .await
        .assert_error(400, "refresh_token_not_found");

    // A ban made by the other process.
    let s = signup(&a, "banned@example.com").await;
    let mut t = rotate(&b, s["refresh_token"].as_str().unwrap()).await;
    t = rotate(&b, &t).await;
    let path = format!("/admin/users/{}", s["user"]["id"].as_str().unwrap());
    let since = Instant::now();
    let r = call(
        &a,
        Method::PUT,
        &path,
        &key,
        Some(json!({"ban_duration": "24h"})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    loop {
        let r = refresh(&b, &t).await;
        if r.status == 400 {
            r.assert_error(400, "user_banned");
            break;
        }
        assert_eq!(r.status, 200, "{}", r.text);
        assert!(
            since.elapsed() < Duration::from_secs(5),
            "refreshed 5 s after the ban"
        );
        t = r.body["refresh_token"].as_str().unwrap().to_string();
    }
    println!(
        "ban refused by the other process's refresh after {:?}",
        since.elapsed()
    );
    common::drop_database(&db).await;
}

/// On SQLite the CLI writes from another process; the server sees it
/// through the change log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cli_sign_out_reaches_the_sqlite_server() {
    let t = common::spawn(Backend::Sqlite, |_| {}).await;
    let s = t.new_session("cli@example.com", "secret123").await;
    let access = s["access_token"].as_str().unwrap().to_string();
    assert_eq!(t.get_user(&access).await.status, 200);
    assert_eq!(t.get_user(&access).await.status, 200);
    let DatabaseUrl::Sqlite(path) = &t.db else {
        unreachable!()
    };
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_castellan"))
        .args(["admin", "sign-out", "--email", "cli@example.com"])
        .env_clear()
        .env("DATABASE_URL", format!("sqlite://{path}"))
        .env(
            "GOTRUE_JWT_SECRET",
            t.server.state.config.jwt.secret.clone().unwrap(),
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ended: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ended["sessions_ended"], 1);
    let since = Instant::now();
    println!(
        "CLI sign-out refused by the server after {:?}",
        refused_after(&t.base, &access, since).await
    );
    t.stop().await;
}
