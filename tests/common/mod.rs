//! The test harness: a real castellan server on 127.0.0.1:0 over a fresh
//! SQLite file or a fresh PostgreSQL database, and an HTTP client.
#![allow(dead_code)]

use std::time::Duration;

use castellan::Server;
use castellan_core::config::DatabaseUrl;
use castellan_core::models::User;
use castellan_core::store::Pool;
use castellan_core::{Config, on};
use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// GoTrue's unkeyed link hash, hex SHA-224(identifier + otp): what anyone
/// who knows the address can compute for each possible code.
pub fn bare_token_hash(identifier: &str, otp: &str) -> String {
    use sha2::Digest;
    sha2::Sha224::digest(format!("{identifier}{otp}").as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The sum of the series in Prometheus text whose line starts with
/// `prefix` (a whole series, or a metric and some of its labels); 0 when none.
pub fn series_sum(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The WebAuthn relying party `rp_id` at `origin`, and passkeys on (at
/// most `max` a user).
pub fn passkeys_on(c: &mut castellan_core::Config, rp_id: &str, origin: &str, max: usize) {
    c.webauthn = Some(castellan_core::config::WebAuthnConfig {
        rp_id: rp_id.into(),
        rp_display_name: "Castellan Test".into(),
        rp_origins: vec![origin.parse().unwrap()],
        challenge_expiry: std::time::Duration::from_secs(300),
    });
    c.passkeys = Some(castellan_core::config::PasskeyConfig { max_per_user: max });
}

/// The PostgreSQL server tests create their databases on.
pub fn pg_admin_url() -> String {
    std::env::var("CASTELLAN_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A fresh, empty database of the backend.
pub async fn fresh_database(backend: Backend) -> (DatabaseUrl, Option<tempfile::TempDir>) {
    match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("castellan.db");
            (
                DatabaseUrl::Sqlite(path.to_string_lossy().into_owned()),
                Some(dir),
            )
        }
        Backend::Postgres => {
            use sqlx::Connection;
            let admin = pg_admin_url();
            let mut conn = sqlx::PgConnection::connect(&admin)
                .await
                .unwrap_or_else(|e| panic!("PostgreSQL is required for the tests ({admin}): {e}"));
            let name = format!("castellan_test_{}", Uuid::new_v4().simple());
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&mut conn)
                .await
                .expect("create database");
            let base = admin
                .rsplit_once('/')
                .map(|(b, _)| b.to_string())
                .unwrap_or(admin);
            (DatabaseUrl::Postgres(format!("{base}/{name}")), None)
        }
    }
}

pub struct TestServer {
    pub server: Server,
    pub base: String,
    pub http: reqwest::Client,
    pub backend: Backend,
    pub db: DatabaseUrl,
    _dir: Option<tempfile::TempDir>,
}

/// Settings for tests: fast hashing, generous rate limits, autoconfirm on.
pub fn test_config(db: DatabaseUrl) -> Config {
    let mut cfg = Config::for_tests(db);
    cfg.host = "127.0.0.1".into();
    cfg.port = 0;
    cfg.argon2.memory_kib = 4096;
    cfg.argon2.iterations = 1;
    cfg.mailer_autoconfirm = true;
    cfg.mailer.poll_interval = std::time::Duration::from_millis(50);
    // SMS to the log unless a test configures a provider.
    cfg.sms.log = true;
    for l in [
        &mut cfg.rate_limits.token_refresh,
        &mut cfg.rate_limits.sign_ups,
        &mut cfg.rate_limits.otp,
        &mut cfg.rate_limits.anonymous_users,
        &mut cfg.rate_limits.verify,
    ] {
        l.events = 100_000;
        l.burst = 100_000;
    }
    cfg
}

pub async fn spawn(backend: Backend, tweak: impl FnOnce(&mut Config)) -> TestServer {
    let (db, dir) = fresh_database(backend).await;
    spawn_on(backend, (db, dir), tweak).await
}

/// A server on a database made by [`fresh_database`] (one several servers
/// may share; the first stopped drops it).
pub async fn spawn_on(
    backend: Backend,
    (db, dir): (DatabaseUrl, Option<tempfile::TempDir>),
    tweak: impl FnOnce(&mut Config),
) -> TestServer {
    // CASTELLAN_TEST_LOG=debug (a tracing filter) shows the servers' logs.
    if let Ok(filter) = std::env::var("CASTELLAN_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
    let mut cfg = test_config(db.clone());
    tweak(&mut cfg);
    let server = castellan::start(cfg).await.expect("server starts");
    // Tests start once the session cache follows changes (it serves from
    // the database until then), so cache behaviour is deterministic.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !server.state.actors.session_cache.stats().await.following {
        assert!(
            std::time::Instant::now() < deadline,
            "the session cache never followed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let base = format!("http://{}", server.addr);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    TestServer {
        server,
        base,
        http,
        backend,
        db,
        _dir: dir,
    }
}

/// A token for `role` (a `service_role` key, say), signed as a server with
/// this JWT configuration signs, valid for an hour.
pub fn role_key_for(cfg: &castellan_core::config::JwtConfig, role: &str) -> String {
    let keys =
        castellan_core::crypto::jwt::JwtKeys::new(cfg, cfg.secret.as_deref().unwrap()).unwrap();
    let now = chrono::Utc::now().timestamp();
    keys.sign(&castellan_core::crypto::jwt::role_claims(
        role, &cfg.aud, now, 3600, None,
    ))
    .unwrap()
}

/// A response read whole: status, headers, JSON body (Null when empty).
pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    /// Asserts a legacy-dialect error.
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status.as_u16(), status, "status of {}", self.text);
        assert_eq!(self.body["error_code"], code, "error_code of {}", self.text);
        assert_eq!(self.body["code"], status, "code of {}", self.text);
        assert!(self.body["msg"].is_string(), "msg of {}", self.text);
        assert_eq!(self.header("x-sb-error-code"), Some(code));
    }
}

pub async fn read(r: Response) -> Reply {
    let status = r.status();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::Null)
    };
    Reply {
        status,
        headers,
        body,
        text,
    }
}

impl TestServer {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// The hash a one-time token is stored and linked by: keyed with the
    /// server's secret, which an attacker does not have.
    pub fn token_hash(&self, identifier: &str, otp: &str) -> String {
        let secret = castellan::server::resolve_secret(&self.server.state.config).unwrap();
        let key = castellan_core::crypto::token_hash_key(&secret);
        castellan_core::crypto::token_hash(&key, identifier, otp)
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut req = self.http.request(method, self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        read(req.send().await.unwrap()).await
    }

    /// `/metrics` once `done` holds of it, or after five seconds (the caller
    /// asserts): an actor counts a message after it has replied, so a
    /// reply's count can lag the response that carried it.
    pub async fn metrics_until(&self, done: impl Fn(&str) -> bool) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let text = self.request(Method::GET, "/metrics", None, None).await.text;
            if done(&text) || std::time::Instant::now() > deadline {
                return text;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.request(Method::POST, path, None, Some(body)).await
    }

    pub async fn signup(&self, email: &str, password: &str) -> Reply {
        self.post("/signup", json!({"email": email, "password": password}))
            .await
    }

    pub async fn login(&self, email: &str, password: &str) -> Reply {
        self.post(
            "/token?grant_type=password",
            json!({"email": email, "password": password}),
        )
        .await
    }

    pub async fn refresh(&self, token: &str) -> Reply {
        self.post(
            "/token?grant_type=refresh_token",
            json!({"refresh_token": token}),
        )
        .await
    }

    /// The server's clock: tests move it instead of sleeping.
    pub fn clock(&self) -> &castellan_core::Clock {
        &self.server.state.config.clock
    }

    /// Every email job ever queued (whatever its state). A job commits with
    /// the token it carries, so this is exact as soon as a response is in.
    pub async fn email_jobs(&self) -> i64 {
        let q = castellan_jobs::queue::Queue::Email.table_name();
        match self.pool() {
            Pool::Pg(p) => {
                sqlx::query_scalar("SELECT count(*) FROM apalis.jobs WHERE job_type = $1")
                    .bind(q)
                    .fetch_one(p)
                    .await
                    .unwrap()
            }
            Pool::Lite(p) => sqlx::query_scalar("SELECT count(*) FROM Jobs WHERE job_type = $1")
                .bind(q)
                .fetch_one(p)
                .await
                .unwrap(),
        }
    }

    pub async fn get_user(&self, access_token: &str) -> Reply {
        self.request(Method::GET, "/user", Some(access_token), None)
            .await
    }

    /// Refreshes, expecting success, and returns the new refresh token.
    pub async fn rotate(&self, token: &str) -> String {
        let r = self.refresh(token).await;
        assert_eq!(r.status, 200, "{}", r.text);
        r.body["refresh_token"].as_str().unwrap().to_string()
    }

    /// Signs a user up (autoconfirm) and returns the token response.
    pub async fn new_session(&self, email: &str, password: &str) -> Value {
        let r = self.signup(email, password).await;
        assert_eq!(r.status, 200, "{}", r.text);
        r.body
    }

    /// A `service_role` key signed with the server's secret.
    pub fn service_key(&self) -> String {
        self.role_key("service_role")
    }

    pub fn role_key(&self, role: &str) -> String {
        role_key_for(&self.server.state.config.jwt, role)
    }

    /// A request with the service key.
    pub async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> Reply {
        let key = self.service_key();
        self.request(method, path, Some(&key), body).await
    }

    pub fn pool(&self) -> &Pool {
        self.server.store.pool()
    }

    pub async fn user(&self, id: &str) -> User {
        self.server
            .store
            .user_by_id(id.parse().unwrap())
            .await
            .unwrap()
            .expect("user row")
    }

    /// `SELECT count(*) … WHERE … = $1` with one bound UUID.
    pub async fn user_id_by_email(&self, email: &str) -> Uuid {
        on!(pool self.pool(), p => sqlx::query_scalar::<_, Uuid>("SELECT id FROM users WHERE email = $1")
            .bind(email).fetch_one(p).await.unwrap())
    }

    pub async fn count_by_uuid(&self, sql: &'static str, id: Uuid) -> i64 {
        on!(pool self.pool(), p => sqlx::query_scalar::<_, i64>(sql).bind(id).fetch_one(p).await.unwrap())
    }

    /// `SELECT count(*) … WHERE … = $1` with one bound string.
    pub async fn count_by_str(&self, sql: &'static str, v: &str) -> i64 {
        on!(pool self.pool(), p => sqlx::query_scalar::<_, i64>(sql).bind(v).fetch_one(p).await.unwrap())
    }

    /// The audit actions written for a user, oldest first.
    pub async fn audit_actions(&self, user_id: &str) -> Vec<String> {
        let rows: Vec<sqlx::types::Json<Value>> = on!(pool self.pool(), p => sqlx::query_scalar(
            "SELECT payload FROM audit_log_entries ORDER BY created_at, id").fetch_all(p).await.unwrap());
        rows.into_iter()
            .filter(|p| p.0["actor_id"] == user_id)
            .map(|p| p.0["action"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    pub async fn stop(self) {
        let db = self.db.clone();
        self.server.stop().await;
        drop_database(&db).await;
    }
}

pub async fn drop_database(db: &DatabaseUrl) {
    if let DatabaseUrl::Postgres(url) = db {
        use sqlx::Connection;
        let name = url.rsplit('/').next().unwrap().to_string();
        if let Ok(mut conn) = sqlx::PgConnection::connect(&pg_admin_url()).await {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&mut conn)
            .await;
        }
    }
}

/// The claims of a JWT, unverified (the tests check their shape).
pub fn claims(jwt: &str) -> Value {
    use base64::Engine;
    let part = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .unwrap(),
    )
    .unwrap()
}

/// Defines one test per backend: `name::sqlite` and `name::postgres`.
#[macro_export]
macro_rules! both {
    ($name:ident, $tweak:expr, |$t:ident| $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            async fn run(backend: $crate::common::Backend) {
                let $t = $crate::common::spawn(backend, $tweak).await;
                $body
                $t.stop().await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                run($crate::common::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                run($crate::common::Backend::Postgres).await
            }
        }
    };
    // A server started by `$start(backend, tweak)`, which gives it with a
    // companion (an SMTP sink, a stand-in provider, …).
    ($name:ident, $start:ident, $tweak:expr, |$t:ident, $extra:ident| $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            async fn run(backend: $crate::common::Backend) {
                let ($t, $extra) = $start(backend, $tweak).await;
                $body
                $t.stop().await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                run($crate::common::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                run($crate::common::Backend::Postgres).await
            }
        }
    };
}

/// The JWT secret of every castellan process the tests start.
pub const PROCESS_SECRET: &str = "process-test-secret-process-test-secret";

/// A `service_role` key the castellan processes on `db` accept.
pub fn process_admin_key(db: &DatabaseUrl) -> String {
    let mut cfg = test_config(db.clone()).jwt;
    cfg.secret = Some(PROCESS_SECRET.into());
    role_key_for(&cfg, "service_role")
}

/// A castellan process (the real binary) on a database: its child handle and,
/// for `serve`, its base URL (it listens on a free port and logs it); for
/// `worker`, an empty string once it runs.
pub async fn castellan_process(
    args: &[&str],
    database_url: &str,
    env: &[(&str, &str)],
) -> (tokio::process::Child, String) {
    let (child, base, _) = castellan_process_in(&[], args, database_url, env).await;
    (child, base)
}

/// What a castellan process has written to stdout so far (its log).
pub type ProcessLog = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// As `castellan_process`, the binary run by `wrapper` (a command and its
/// arguments, the binary's path and `args` appended) when one is given.
pub async fn castellan_process_in(
    wrapper: &[&str],
    args: &[&str],
    database_url: &str,
    env: &[(&str, &str)],
) -> (tokio::process::Child, String, ProcessLog) {
    use tokio::io::AsyncBufReadExt;
    let binary = env!("CARGO_BIN_EXE_castellan");
    let mut cmd = match wrapper.split_first() {
        Some((program, rest)) => {
            let mut c = tokio::process::Command::new(program);
            c.args(rest).arg(binary);
            c
        }
        None => tokio::process::Command::new(binary),
    };
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", database_url)
        .env("GOTRUE_JWT_SECRET", PROCESS_SECRET)
        .env("GOTRUE_API_HOST", "127.0.0.1")
        .env("PORT", "0")
        .env("NO_COLOR", "1")
        .env("CASTELLAN_ARGON2_MEMORY_KIB", "4096")
        .env("CASTELLAN_ARGON2_ITERATIONS", "1")
        .env("CASTELLAN_SMS_LOG", "true")
        .env("CASTELLAN_QUEUE_POLL_INTERVAL", "50ms")
        .env("GOTRUE_RATE_LIMIT_TOKEN_REFRESH", "100000")
        .env("GOTRUE_RATE_LIMIT_OTP", "100000")
        // Processes run side by side: counters on each one's own API port.
        .env("CASTELLAN_METRICS_ADDR", "api")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("start castellan");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let marker = if args.first() == Some(&"worker") {
        "castellan workers running"
    } else {
        "castellan listening addr="
    };
    let log = ProcessLog::default();
    let base = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            log.lock().unwrap().push(line.clone());
            if let Some(rest) = line.split(marker).nth(1) {
                return rest
                    .split_whitespace()
                    .next()
                    .map(|a| format!("http://{a}"))
                    .unwrap_or_default();
            }
        }
        panic!("castellan exited before it was ready");
    })
    .await
    .expect("castellan was not ready within 30 s");
    // Keep draining its output so the process never blocks on a full pipe
    // (shown with CASTELLAN_TEST_LOG set, as the in-process servers' logs are).
    let show = std::env::var_os("CASTELLAN_TEST_LOG").is_some();
    let kept = log.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if show {
                eprintln!("{line}");
            }
            let mut kept = kept.lock().unwrap();
            if kept.len() < 100_000 {
                kept.push(line);
            }
        }
    });
    (child, base, log)
}

/// Sends every request at once; the replies, in order.
pub async fn at_once(requests: impl IntoIterator<Item = reqwest::RequestBuilder>) -> Vec<Reply> {
    let tasks: Vec<_> = requests
        .into_iter()
        .map(|req| tokio::spawn(async move { read(req.send().await.unwrap()).await }))
        .collect();
    let mut replies = Vec::new();
    for task in tasks {
        replies.push(task.await.unwrap());
    }
    replies
}

/// How many replies are 200; every other one must be `status` `code`.
pub fn successes_else(replies: &[Reply], status: u16, code: &str) -> usize {
    let ok = replies.iter().filter(|r| r.status == 200).count();
    for r in replies.iter().filter(|r| r.status != 200) {
        r.assert_error(status, code);
    }
    ok
}
