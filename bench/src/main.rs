//! `cargo build --release -p castellan -p castellan-bench && target/release/castellan-bench --db sqlite|postgres`
//!
//! (One cargo invocation for both, so they share one feature resolution and
//! nothing is compiled twice.) Starts castellan in release mode, seeds users and measures, in
//! one run on this machine: the argon2id ceiling, the HTTP floor, password
//! sign-in, refresh chains, user look-ups and sign-ups, at 1 000 and at
//! 1 000 000 users, with peak RSS and database round trips per operation.
//! Prints a table and writes `bench/results/latest-<db>.json`.

mod actor;
// The software authenticator the passkey tests use.
#[path = "../../tests/common/authenticator.rs"]
mod authenticator;
mod cache;
mod compare;
mod floor;
mod http_scenarios;
mod load;
mod report;
// The same loopback SMTP server the tests use.
#[path = "../../tests/common/nginx.rs"]
mod nginx;
mod oauth_flow;
mod seed;
mod server;
#[path = "../../tests/common/smtp_sink.rs"]
mod smtp_sink;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use serde_json::{Value, json};

use load::Measured;
use server::Server;

#[derive(Parser)]
struct Args {
    /// `sqlite` or `postgres`.
    #[arg(long, default_value = "sqlite")]
    db: String,
    /// Seconds per scenario.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Concurrent connections.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// One castellan process against three on one PostgreSQL, each behind
    /// nginx (the shipped configuration), with database round trips per
    /// request: what coordination costs, and what PostgreSQL must serve.
    #[arg(long)]
    scale_out: bool,
    /// Only refresh against the write floor, printed, nothing written: a
    /// minute's check while working on the refresh path.
    #[arg(long)]
    refresh_only: bool,
    /// Times `/health` and `GET /user` are measured back to back; their
    /// ratio is the median (one pair varies by a fifth on a shared machine).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Users in the large-table runs.
    #[arg(long, default_value_t = 1_000_000)]
    big_users: u64,
    /// PostgreSQL server on which a throwaway database is created.
    #[arg(
        long,
        env = "CASTELLAN_TEST_PG_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pg_url: String,
    /// Measure only the HTTP scenarios, against this GoTrue-compatible
    /// server (castellan or GoTrue), through its API; needs `--secret`.
    #[arg(long, conflicts_with = "compare")]
    target: Option<String>,
    /// Start castellan on `--db` and measure it and this other server,
    /// interleaved scenario by scenario; needs `--secret`.
    #[arg(long)]
    compare: Option<String>,
    /// The other server's JWT secret (HS256): its admin API creates the users.
    #[arg(long, env = "CASTELLAN_BENCH_SECRET")]
    secret: Option<String>,
    /// The other server's process id, to read its memory from `/proc`.
    #[arg(long)]
    pid: Option<u32>,
    /// The other server's name in the report.
    #[arg(long, default_value = "other")]
    label: String,
    /// Users created through the admin API on each server (`--target`, `--compare`).
    #[arg(long, default_value_t = 600)]
    users: u64,
    /// The loopback port of the benchmark's SMTP sink (0: any), so the other
    /// server's mail can be pointed at it.
    #[arg(long, default_value_t = 0)]
    smtp_port: u16,
}

const SMALL_USERS: u64 = 1000;

/// A 200 whose body was read to its end, as a client reads it (an unread
/// body keeps its connection from going back to the pool).
async fn ok_body(r: reqwest::Result<reqwest::Response>) -> bool {
    match r {
        Ok(r) if r.status() == 200 => r.bytes().await.is_ok(),
        _ => false,
    }
}

fn client() -> reqwest::Client {
    client_at(0)
}

/// A client with one connection that presents itself (through
/// `X-Forwarded-For`, as a proxy in front of the server would) as its own
/// public address, so each load worker has its own rate-limit bucket like
/// the distinct users it stands for.
fn client_at(worker: usize) -> reqwest::Client {
    worker_client(worker).build().expect("http client")
}

/// The builder of [`client_at`]'s client.
fn worker_client(worker: usize) -> reqwest::ClientBuilder {
    let mut headers = reqwest::header::HeaderMap::new();
    let addr = format!("203.0.{}.{}", 113 + worker / 250, 1 + worker % 250);
    headers.insert(
        "x-forwarded-for",
        addr.parse().expect("an address is a header value"),
    );
    reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .default_headers(headers)
}

async fn login(http: &reqwest::Client, base: &str, i: u64) -> anyhow::Result<Value> {
    let r = http
        .post(format!("{base}/token?grant_type=password"))
        .json(&json!({"email": seed::email(i), "password": seed::PASSWORD}))
        .send()
        .await?;
    anyhow::ensure!(r.status() == 200, "login failed: {}", r.status());
    Ok(r.json().await?)
}

/// What lettre alone sends to the sink: 8 concurrent senders on one pooled transport.
async fn lettre_alone(port: u16, duration: Duration) -> anyhow::Result<f64> {
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
    let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(port)
        .build();
    let sent = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..8 {
        let (transport, sent) = (transport.clone(), sent.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            while start.elapsed() < duration {
                let msg = Message::builder()
                    .from("bench@castellan.test".parse().unwrap())
                    .to(format!("lettre-{w}-{n}@example.com").parse().unwrap())
                    .subject("Your sign-in link")
                    .body(String::from("Follow this link to sign in: http://127.0.0.1/verify?token=x&type=magiclink\nOr enter this code: 123456"))
                    .unwrap();
                if transport.send(msg).await.is_ok() {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                n += 1;
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    Ok(sent.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

/// The argon2id ceiling: verifications per second on every core, in-process,
/// with the server's parameters.
fn argon2_limit(duration: Duration) -> f64 {
    use argon2::password_hash::phc::PasswordHash;
    use argon2::password_hash::{PasswordHasher, PasswordVerifier};
    let argon = argon2::Argon2::default();
    let hash = argon
        .hash_password(seed::PASSWORD.as_bytes())
        .unwrap()
        .to_string();
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let count = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            let (count, hash) = (count.clone(), hash.clone());
            s.spawn(move || {
                let argon = argon2::Argon2::default();
                let parsed = PasswordHash::new(&hash).unwrap();
                while start.elapsed() < duration {
                    argon
                        .verify_password(seed::PASSWORD.as_bytes(), &parsed)
                        .unwrap();
                    count.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

struct Bench {
    srv: Server,
    http: reqwest::Client,
    duration: Duration,
    connections: usize,
    results: Vec<report::Row>,
    hit_rates: Vec<(String, f64)>,
}

impl Bench {
    /// Runs a scenario and records it with its database statements and
    /// transactions per successful operation.
    async fn measure<S, I, IF, F, Fut>(&mut self, name: &str, init: I, step: F) -> Measured
    where
        S: Send + 'static,
        I: Fn(usize) -> IF,
        IF: std::future::Future<Output = S>,
        F: Fn(S) -> Fut + Send + Sync + Clone + 'static,
        Fut: std::future::Future<Output = (S, bool)> + Send,
    {
        let q0 = self
            .srv
            .counter(&self.http, "castellan_db_queries_total")
            .await;
        let t0 = self
            .srv
            .counter(&self.http, "castellan_db_transactions_total")
            .await;
        let m = load::run(self.connections, self.duration, init, step).await;
        let q1 = self
            .srv
            .counter(&self.http, "castellan_db_queries_total")
            .await;
        let t1 = self
            .srv
            .counter(&self.http, "castellan_db_transactions_total")
            .await;
        let ok = (m.requests - m.errors).max(1) as f64;
        let (qpo, tpo) = ((q1 - q0) / ok, (t1 - t0) / ok);
        eprintln!(
            "{name:<28} {:>9.0}/s  p50 {:>7.2} ms  p99 {:>7.2} ms  errors {:>5}  statements/op {qpo:.2}  transactions/op {tpo:.2}",
            m.per_second, m.p50_ms, m.p99_ms, m.errors
        );
        self.results.push((name.to_string(), m.clone(), qpo, tpo));
        self.srv.wait_idle().await;
        m
    }

    /// Password sign-ins spread over the `count` seeded users from `first`.
    async fn password(&mut self, name: &str, first: u64, count: u64) -> Measured {
        let url = format!("{}/token?grant_type=password", self.srv.base);
        self.measure(
            name,
            |i| async move { (client_at(i), i as u64) },
            move |(c, n): (reqwest::Client, u64)| {
                let url = url.clone();
                async move {
                    let user = first + (n * 7919) % count;
                    let body = json!({"email": seed::email(user), "password": seed::PASSWORD});
                    let ok =
                        matches!(c.post(&url).json(&body).send().await, Ok(r) if r.status() == 200);
                    ((c, n + 64), ok)
                }
            },
        )
        .await
    }

    /// `/recover` for addresses no user has: the lookup alone, with no
    /// email sent and no per-address window in the way.
    async fn recover(&mut self, name: &str) -> Measured {
        let url = format!("{}/recover", self.srv.base);
        self.measure(
            name,
            |i| async move { (client_at(i), i as u64) },
            move |(c, n): (reqwest::Client, u64)| {
                let url = url.clone();
                async move {
                    let body = json!({"email": format!("nobody-{n}@example.com")});
                    let ok =
                        matches!(c.post(&url).json(&body).send().await, Ok(r) if r.status() == 200);
                    ((c, n + 64), ok)
                }
            },
        )
        .await
    }

    /// Passkey sign-ins: each connection's user registers one passkey (a
    /// software authenticator), then signs in with it again and again:
    /// options, an assertion, its verification (two requests an operation).
    async fn passkeys(&mut self, name: &str) -> anyhow::Result<()> {
        let base = self.srv.base.clone();
        let mut devices = Vec::new();
        for i in 0..self.connections as u64 {
            let s = login(&self.http, &base, 1 + i % SMALL_USERS).await?;
            let access = s["access_token"].as_str().context("access token")?;
            let mut device =
                authenticator::SoftAuthenticator::new(server::PASSKEY_ORIGIN, server::PASSKEY_RP);
            let post = |path: &str, body: Value| {
                self.http
                    .post(format!("{base}{path}"))
                    .bearer_auth(access)
                    .json(&body)
                    .send()
            };
            let o: Value = post("/passkeys/registration/options", json!({}))
                .await?
                .json()
                .await?;
            let credential = device.create(&o["options"]);
            let body = json!({"challenge_id": o["challenge_id"], "credential": credential});
            let r = post("/passkeys/registration/verify", body).await?;
            anyhow::ensure!(
                r.status() == 200,
                "passkey registration: {}",
                r.text().await?
            );
            devices.push(Some(device));
        }
        let devices = Arc::new(std::sync::Mutex::new(devices));
        let (options, verify) = (
            format!("{base}/passkeys/authentication/options"),
            format!("{base}/passkeys/authentication/verify"),
        );
        self.measure(
            name,
            move |i| {
                let device = devices.lock().unwrap()[i].take();
                async move { (client_at(i), device.expect("one device a connection")) }
            },
            move |(c, mut device)| {
                let (options, verify) = (options.clone(), verify.clone());
                async move {
                    let o = match c.post(&options).json(&json!({})).send().await {
                        Ok(r) => r.json::<Value>().await.ok(),
                        Err(_) => None,
                    };
                    let Some(o) = o else {
                        return ((c, device), false);
                    };
                    let credential = device.get(&o["options"]);
                    let body = json!({"challenge_id": o["challenge_id"], "credential": credential});
                    let ok = matches!(c.post(&verify).json(&body).send().await, Ok(r) if r.status() == 200);
                    ((c, device), ok)
                }
            },
        )
        .await;
        Ok(())
    }

    async fn get_user(&mut self, name: &str) -> anyhow::Result<Measured> {
        let base = self.srv.base.clone();
        let mut tokens = Vec::new();
        for i in 0..self.connections as u64 {
            tokens.push(
                login(&self.http, &base, 1 + i % SMALL_USERS).await?["access_token"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            );
        }
        let url = format!("{base}/user");
        let before = self.cache_counts("session").await;
        let m = self
            .measure(
                name,
                |i| {
                    let t = tokens[i].clone();
                    async move { (client_at(i), t) }
                },
                move |(c, t): (reqwest::Client, String)| {
                    let url = url.clone();
                    async move {
                        let ok = ok_body(c.get(&url).bearer_auth(&t).send().await).await;
                        ((c, t), ok)
                    }
                },
            )
            .await;
        self.record_hit_rate(name, "session", before).await;
        Ok(m)
    }

    /// `castellan_{cache}_cache_hits_total` and `_misses_total` now.
    async fn cache_counts(&self, cache: &str) -> (f64, f64) {
        let hits = format!("castellan_{cache}_cache_hits_total");
        let misses = format!("castellan_{cache}_cache_misses_total");
        (
            self.srv.counter(&self.http, &hits).await,
            self.srv.counter(&self.http, &misses).await,
        )
    }

    /// Records the hit rate of `cache` during scenario `name`.
    async fn record_hit_rate(&mut self, name: &str, cache: &str, (h0, m0): (f64, f64)) {
        let (h, ms) = self.cache_counts(cache).await;
        let (h, ms) = (h - h0, ms - m0);
        let rate = if h + ms > 0.0 { h / (h + ms) } else { 0.0 };
        eprintln!(
            "{:<28} {:>9.4} ({h} hits, {ms} misses)",
            format!("  {cache} cache hit rate"),
            rate
        );
        self.hit_rates
            .push((format!("{cache} cache, {name}"), rate));
    }

    /// Presents `tokens` once each (filling the session cache).
    async fn present_all(&self, tokens: Vec<String>) -> usize {
        let url = format!("{}/user", self.srv.base);
        let tokens = Arc::new(tokens);
        let next = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for w in 0..self.connections {
            let (tokens, next, url, c) = (tokens.clone(), next.clone(), url.clone(), client_at(w));
            tasks.push(tokio::spawn(async move {
                let mut ok = 0;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let Some(t) = tokens.get(i) else { return ok };
                    if matches!(c.get(&url).bearer_auth(t).send().await, Ok(r) if r.status() == 200)
                    {
                        ok += 1;
                    }
                }
            }));
        }
        let mut ok = 0;
        for t in tasks {
            ok += t.await.unwrap_or(0);
        }
        ok
    }

    async fn refresh(&mut self, name: &str) -> anyhow::Result<Measured> {
        let base = self.srv.base.clone();
        let mut tokens = Vec::new();
        for i in 0..self.connections as u64 {
            tokens.push(
                login(&self.http, &base, 1 + i % SMALL_USERS).await?["refresh_token"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            );
        }
        let url = format!("{base}/token?grant_type=refresh_token");
        let before = self.cache_counts("refresh").await;
        let m = self
            .measure(
                name,
                |i| {
                    let t = tokens[i].clone();
                    async move { (client_at(i), t) }
                },
                move |(c, t): (reqwest::Client, String)| {
                    let url = url.clone();
                    async move {
                        match c.post(&url).json(&json!({"refresh_token": t})).send().await {
                            Ok(r) if r.status() == 200 => {
                                let v: Value = r.json().await.unwrap_or_default();
                                let next = v["refresh_token"].as_str().unwrap_or(&t).to_string();
                                ((c, next), true)
                            }
                            Ok(r) => {
                                let status = r.status();
                                eprintln!(
                                    "refresh failed: {status} {}",
                                    r.text().await.unwrap_or_default()
                                );
                                ((c, t), false)
                            }
                            Err(e) => {
                                eprintln!("refresh failed: {e}");
                                ((c, t), false)
                            }
                        }
                    }
                },
            )
            .await;
        self.record_hit_rate(name, "refresh", before).await;
        Ok(m)
    }
}

/// A throwaway database for the run: a SQLite file in `tmp`, or a new
/// PostgreSQL database on `--pg-url`.
async fn create_database(args: &Args, tmp: &std::path::Path) -> anyhow::Result<String> {
    match args.db.as_str() {
        "sqlite" => Ok(format!("sqlite://{}", tmp.join("bench.db").display())),
        "postgres" => {
            use sqlx::Connection;
            let mut c = sqlx::PgConnection::connect(&args.pg_url)
                .await
                .context("PostgreSQL for the benchmark")?;
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {}", pg_db())))
                .execute(&mut c)
                .await?;
            let base = args
                .pg_url
                .rsplit_once('/')
                .map(|(b, _)| b.to_string())
                .unwrap_or_default();
            Ok(format!("{base}/{}", pg_db()))
        }
        other => anyhow::bail!("--db must be sqlite or postgres, not {other}"),
    }
}

fn pg_db() -> String {
    format!("castellan_bench_{}", std::process::id())
}

async fn drop_database(args: &Args) -> anyhow::Result<()> {
    if args.db == "postgres" {
        use sqlx::Connection;
        let mut c = sqlx::PgConnection::connect(&args.pg_url).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            pg_db()
        )))
        .execute(&mut c)
        .await?;
    }
    Ok(())
}

fn store_url(args: &Args, database_url: &str) -> castellan_core::config::DatabaseUrl {
    use castellan_core::config::DatabaseUrl;
    match args.db.as_str() {
        "sqlite" => DatabaseUrl::Sqlite(database_url.trim_start_matches("sqlite://").to_string()),
        _ => DatabaseUrl::Postgres(database_url.to_string()),
    }
}

impl Bench {
    async fn health(&mut self, name: &str) -> Measured {
        let url = format!("{}/health", self.srv.base);
        self.measure(
            name,
            |i| async move { client_at(i) },
            move |c: reqwest::Client| {
                let url = url.clone();
                async move {
                    let ok = ok_body(c.get(&url).send().await).await;
                    (c, ok)
                }
            },
        )
        .await
    }

    async fn signups(&mut self) -> Measured {
        let url = format!("{}/signup", self.srv.base);
        self.measure("POST /signup", |i| async move { (client_at(i), i, 0u64) }, move |(c, w, n): (reqwest::Client, usize, u64)| {
            let url = url.clone();
            async move {
                let body = json!({"email": format!("signup-{w}-{n}@example.com"), "password": "bench-signup-pw"});
                let ok = matches!(c.post(&url).json(&body).send().await, Ok(r) if r.status() == 200);
                ((c, w, n + 1), ok)
            }
        })
        .await
    }

    /// The scenarios on the large table (seeded), then the session cache
    /// filled and refresh on legacy tokens.
    async fn big(
        &mut self,
        args: &Args,
        database_url: &str,
        bin: &std::path::Path,
        smtp_port: u16,
    ) -> anyhow::Result<report::Big> {
        let recover_small = self.recover("POST /recover unknown address (1k)").await;
        let user_big = self.get_user("GET /user (big)").await?;
        let (first, count) = (SMALL_USERS + 1, args.big_users - SMALL_USERS);
        let logins_big = self
            .password("POST /token password (big)", first, count)
            .await;
        let recover_big = self.recover("POST /recover unknown address (big)").await;
        let refresh_big = self.refresh("POST /token refresh (big)").await?;
        let cache_sessions = 10_000.min(args.big_users);
        let (rss_before_fill, rss_cache_full) =
            self.fill_cache(database_url, cache_sessions).await?;
        let (_, peak_rss) = self.srv.rss_mib();
        let refresh_legacy = self.refresh_legacy(bin, database_url, smtp_port).await?;
        Ok(report::Big {
            recover_small,
            user_big,
            logins_big,
            recover_big,
            refresh_big,
            refresh_legacy,
            cache_sessions,
            rss_before_fill,
            rss_cache_full,
            peak_rss,
        })
    }

    /// The write floor's row in the table (three statements, one transaction).
    fn record_floor(&mut self, floor: &Measured) {
        eprintln!(
            "{:<28} {:>9.0}/s  p50 {:>7.2} ms  p99 {:>7.2} ms  errors {:>5}",
            "floor: write transaction", floor.per_second, floor.p50_ms, floor.p99_ms, floor.errors
        );
        self.results.push((
            "floor: write transaction (locked read, update, insert, commit)".into(),
            floor.clone(),
            3.0,
            1.0,
        ));
    }

    /// `GET /user` over `/health`: the first pair's ratio and `rounds - 1`
    /// more pairs measured back to back; the median.
    async fn user_over_health(&mut self, first: f64, rounds: usize) -> anyhow::Result<f64> {
        let mut ratios = vec![first];
        for round in 2..=rounds {
            let h = self.health(&format!("GET /health (round {round})")).await;
            let u = self
                .get_user(&format!("GET /user (1k users, round {round})"))
                .await?;
            ratios.push(u.per_second / h.per_second.max(1.0));
        }
        ratios.sort_by(f64::total_cmp);
        eprintln!("GET /user / health by round (sorted): {ratios:.2?}");
        Ok(ratios[ratios.len() / 2])
    }

    /// Email end to end: POST /otp (a magic link) for each seeded, confirmed
    /// user once -- no password hashing in the way -- then the time until
    /// the queue has delivered every accepted one to the loopback SMTP
    /// server; against lettre alone sending to the same server. Answers
    /// (lettre alone, delivered) per second.
    async fn email(&mut self, sink: &smtp_sink::SmtpSink) -> anyhow::Result<(f64, f64)> {
        let lettre_rate = lettre_alone(sink.port, self.duration).await?;
        eprintln!("{:<28} {lettre_rate:>9.0}/s", "lettre alone -> SMTP sink");
        let before = sink.all().len();
        let url = format!("{}/otp", self.srv.base);
        let start = Instant::now();
        let full = self.duration;
        // Long enough for every seeded user to ask once (more hit the per-user window).
        self.duration = Duration::from_secs(2);
        let otps = self
            .measure(
                "POST /otp magic link",
                |i| async move { (client_at(i), i as u64) },
                move |(c, n): (reqwest::Client, u64)| {
                    let url = url.clone();
                    async move {
                        let body = json!({"email": seed::email(1 + n % SMALL_USERS), "create_user": false});
                        let ok = matches!(c.post(&url).json(&body).send().await, Ok(r) if r.status() == 200);
                        ((c, n + 64), ok)
                    }
                },
            )
            .await;
        self.duration = full;
        let expected = before + (otps.requests - otps.errors) as usize;
        let deadline = Instant::now() + Duration::from_secs(300);
        while sink.all().len() < expected && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let delivered = sink.all().len() - before;
        let email_rate = delivered as f64 / start.elapsed().as_secs_f64();
        eprintln!(
            "{:<28} {email_rate:>9.0}/s  ({delivered} of {} accepted, end to end)",
            "emails delivered",
            expected - before
        );
        Ok((lettre_rate, email_rate))
    }

    /// The session cache at its default size (one live session per user):
    /// RSS before and after presenting `size` sessions once each.
    async fn fill_cache(&self, database_url: &str, size: u64) -> anyhow::Result<(f64, f64)> {
        let tokens = cache::sessions(database_url, server::SECRET, size).await?;
        let (before, _) = self.srv.rss_mib();
        let t = Instant::now();
        let presented = self.present_all(tokens).await;
        let (full, _) = self.srv.rss_mib();
        eprintln!(
            "cache filled with {presented} sessions in {:.1} s: RSS {before:.1} -> {full:.1} MiB",
            t.elapsed().as_secs_f64()
        );
        Ok((before, full))
    }

    /// Refresh with GoTrue's legacy token rows, last, so nothing else is
    /// measured beside it: a second server on the same database, told to
    /// hand them out (the first one, idle, waits).
    async fn refresh_legacy(
        &mut self,
        bin: &std::path::Path,
        database_url: &str,
        smtp_port: u16,
    ) -> anyhow::Result<Measured> {
        let legacy = [("GOTRUE_SECURITY_REFRESH_TOKEN_ALGORITHM_VERSION", "1")];
        let legacy_srv = server::start(bin, database_url, smtp_port, &legacy).await?;
        let v2_srv = std::mem::replace(&mut self.srv, legacy_srv);
        let m = self
            .refresh("POST /token refresh, legacy tokens (1k)")
            .await?;
        std::mem::replace(&mut self.srv, v2_srv).stop().await;
        Ok(m)
    }
}

impl Bench {
    /// Growth (after the big runs): a live session for every user, then as
    /// many that ended four days ago, swept by the server being measured
    /// (restarted to sweep every second, as one SQLite server does its own
    /// sweeping) while refresh and `GET /user` are measured.
    async fn growth(
        &mut self,
        args: &Args,
        database_url: &str,
        bin: &std::path::Path,
        smtp_port: u16,
    ) -> anyhow::Result<report::Growth> {
        seed::sessions(database_url, args.big_users, None).await?;
        let user = self
            .get_user("GET /user (big, a live session per user)")
            .await?;
        let refresh = self
            .refresh("POST /token refresh (big, a live session per user)")
            .await?;
        let four_days_ago = chrono::Utc::now() - chrono::Duration::days(4);
        let ended = seed::sessions(database_url, args.big_users, Some(four_days_ago)).await?;
        let sweeping = [("CASTELLAN_EXPIRY_SCHEDULE", "* * * * * *")];
        let sweeper = server::start(bin, database_url, smtp_port, &sweeping).await?;
        std::mem::replace(&mut self.srv, sweeper).stop().await;
        let started = Instant::now();
        // Writes first: on SQLite they share the writer with the sweep.
        let refresh_during_sweep = self
            .refresh("POST /token refresh during the expiry sweep")
            .await?;
        let user_during_sweep = self.get_user("GET /user during the expiry sweep").await?;
        let mut left = seed::ended_sessions(database_url).await?;
        while left > 0 && started.elapsed() < Duration::from_secs(600) {
            tokio::time::sleep(Duration::from_millis(500)).await;
            left = seed::ended_sessions(database_url).await?;
        }
        let sweep_seconds = started.elapsed().as_secs_f64();
        eprintln!("expiry sweep: {ended} ended sessions, {left} left after {sweep_seconds:.1} s");
        Ok(report::Growth {
            user,
            refresh,
            ended,
            refresh_during_sweep,
            user_during_sweep,
            left,
            sweep_seconds,
        })
    }
}

/// The server started on the database with the small table seeded: the
/// bench over it, the server's idle RSS, and the seeded password's hash.
async fn start(
    args: &Args,
    bin: &std::path::Path,
    database_url: &str,
    smtp_port: u16,
) -> anyhow::Result<(Bench, f64, String)> {
    let srv = server::start(bin, database_url, smtp_port, &[]).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (idle_rss, _) = srv.rss_mib();
    let hash = {
        use argon2::password_hash::PasswordHasher;
        argon2::Argon2::default()
            .hash_password(seed::PASSWORD.as_bytes())
            .unwrap()
            .to_string()
    };
    seed::users(database_url, &hash, 1, SMALL_USERS).await?;
    let b = Bench {
        srv,
        http: client(),
        duration: Duration::from_secs(args.duration),
        connections: args.connections,
        results: Vec::new(),
        hit_rates: Vec::new(),
    };
    Ok((b, idle_rss, hash))
}

/// The checkout's commit, to name what was measured.
fn commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "?".into())
}

/// `--target` or `--compare`: the HTTP scenarios through the servers' APIs.
async fn side_by_side(args: &Args) -> anyhow::Result<()> {
    use http_scenarios::Endpoint;
    let other = args
        .target
        .as_deref()
        .or(args.compare.as_deref())
        .unwrap_or_default();
    let secret = args
        .secret
        .as_deref()
        .context("--secret: the other server's JWT secret")?;
    let load = http_load(args);
    let sink = smtp_sink::SmtpSink::start_on(args.smtp_port).await;
    eprintln!("SMTP sink on 127.0.0.1:{}", sink.port);
    let mut endpoints = Vec::new();
    let mut castellan = None;
    if args.compare.is_some() {
        let bin = server::build_release()?;
        let tmp = std::env::temp_dir().join(format!("castellan-bench-{}", std::process::id()));
        std::fs::create_dir_all(&tmp)?;
        let database_url = create_database(args, &tmp).await?;
        let srv = server::start(&bin, &database_url, sink.port, &[]).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let label = format!("castellan {} ({})", commit(), args.db);
        let mut ours = Endpoint::new(&label, &srv.base, server::SECRET, Some(srv.pid))?;
        ours.metrics = vec![srv.base.clone()];
        endpoints.push(ours);
        castellan = Some((srv, tmp));
    }
    endpoints.push(Endpoint::new(&args.label, other, secret, args.pid)?);
    let sides = compare::run(endpoints, &load).await?;
    let table = compare::markdown(&sides, &load);
    println!("\n{table}");
    if let Some((srv, tmp)) = castellan {
        srv.stop().await;
        drop_database(args).await?;
        let _ = std::fs::remove_dir_all(&tmp);
        let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("results");
        let name = format!("compare-{}", args.db);
        std::fs::write(out.join(format!("{name}.md")), &table)?;
        let report = compare::json(&sides, &load);
        std::fs::write(
            out.join(format!("{name}.json")),
            serde_json::to_string_pretty(&report)?,
        )?;
        eprintln!("wrote bench/results/{name}.{{md,json}}");
    }
    Ok(())
}

/// How `--compare`, `--target` and `--scale-out` run their scenarios.
fn http_load(args: &Args) -> http_scenarios::Load {
    http_scenarios::Load {
        connections: args.connections,
        duration: Duration::from_secs(args.duration),
        users: args.users,
        rounds: args.rounds.max(1),
    }
}

/// `--scale-out`: one castellan process against three on one PostgreSQL,
/// each behind nginx with the shipped configuration, interleaved as
/// `--compare` runs; with the database round trips per request of each.
async fn scale_out(args: &Args) -> anyhow::Result<()> {
    use http_scenarios::Endpoint;
    anyhow::ensure!(args.db == "postgres", "--scale-out needs --db postgres");
    let load = http_load(args);
    let sink = smtp_sink::SmtpSink::start_on(args.smtp_port).await;
    let bin = server::build_release()?;
    let tmp = std::env::temp_dir().join(format!("castellan-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let database_url = create_database(args, &tmp).await?;
    // The first serves and runs the workers; the others only serve.
    let mut processes = vec![server::start(&bin, &database_url, sink.port, &[]).await?];
    for _ in 0..2 {
        let api = ["serve", "--no-workers"];
        processes.push(server::start_as(&bin, &api, &database_url, sink.port, &[]).await?);
    }
    let port = |s: &server::Server| -> anyhow::Result<u16> {
        Ok(s.base.rsplit(':').next().unwrap_or_default().parse()?)
    };
    let ports = processes
        .iter()
        .map(port)
        .collect::<anyhow::Result<Vec<u16>>>()?;
    let mut proxies = Vec::new();
    let mut endpoints = Vec::new();
    for (label, n) in [("1 process", 1), ("3 processes", 3)] {
        let dir = tmp.join(format!("nginx-{n}"));
        std::fs::create_dir_all(&dir)?;
        let listen = nginx::free_port();
        proxies.push(nginx::start(&dir, listen, &ports[..n]).await);
        let mut e = Endpoint::new(
            label,
            &format!("http://127.0.0.1:{listen}"),
            server::SECRET,
            None,
        )?;
        e.metrics = processes[..n].iter().map(|s| s.base.clone()).collect();
        endpoints.push(e);
    }
    let sides = compare::run(endpoints, &load).await?;
    let table = compare::markdown(&sides, &load);
    println!("\n{table}");
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("results");
    std::fs::write(out.join("scale-out-postgres.md"), &table)?;
    let report = compare::json(&sides, &load);
    std::fs::write(
        out.join("scale-out-postgres.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    eprintln!("wrote bench/results/scale-out-postgres.{{md,json}}");
    drop(proxies);
    for p in processes {
        p.stop().await;
    }
    drop_database(args).await?;
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.target.is_some() || args.compare.is_some() {
        return side_by_side(&args).await;
    }
    if args.scale_out {
        return scale_out(&args).await;
    }
    let duration = Duration::from_secs(args.duration);
    eprintln!("building castellan (release)…");
    let bin = server::build_release()?;
    let tmp = std::env::temp_dir().join(format!("castellan-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let database_url = create_database(&args, &tmp).await?;

    eprintln!("measuring the argon2id ceiling…");
    let argon = argon2_limit(duration);
    eprintln!("{:<28} {argon:>9.1}/s", "argon2id verify (all cores)");

    let sink = smtp_sink::SmtpSink::start().await;
    let (mut b, idle_rss, hash) = start(&args, &bin, &database_url, sink.port).await?;

    let health = b.health("GET /health").await;
    b.srv.reset_peak();
    let logins = b.password("POST /token password", 1, SMALL_USERS).await;
    let (_, login_peak_rss) = b.srv.rss_mib();
    let user_small = b.get_user("GET /user (1k users)").await?;
    let refresh_small = b.refresh("POST /token refresh (1k)").await?;
    b.passkeys("POST /passkeys sign-in (1k)").await?;
    b.oauth_code_flow("OAuth code flow (3 requests)").await?;
    let first = user_small.per_second / health.per_second.max(1.0);
    let user_over_health = b.user_over_health(first, args.rounds.max(1)).await?;
    let floor = floor::run(&store_url(&args, &database_url), args.connections, duration).await?;
    let trip = actor::round_trip(64, Duration::from_secs(2)).await?;
    eprintln!(
        "actor round trip: {:.0} ns with one caller, {:.0} ns a call with 64 callers",
        trip.0, trip.1
    );
    if args.refresh_only {
        eprintln!(
            "GET /user / health: {:.2} (median of {}); refresh / floor: {:.2} ({:.0} / {:.0})",
            user_over_health,
            args.rounds.max(1),
            refresh_small.per_second / floor.per_second,
            refresh_small.per_second,
            floor.per_second
        );
        b.srv.stop().await;
        return drop_database(&args).await;
    }
    b.record_floor(&floor);
    b.signups().await;
    let (lettre, email) = b.email(&sink).await?;

    seed::big(&database_url, &hash, SMALL_USERS + 1, args.big_users).await?;
    let big = b.big(&args, &database_url, &bin, sink.port).await?;
    let growth = b.growth(&args, &database_url, &bin, sink.port).await?;

    let figures = report::Figures {
        argon,
        lettre,
        email,
        health,
        user_over_health,
        logins,
        user_small,
        refresh_small,
        floor,
        trip,
        idle_rss,
        login_peak_rss,
        big,
        growth,
    };
    let run = report::Run {
        db: &args.db,
        connections: args.connections,
        seconds: args.duration,
        big_users: args.big_users,
    };
    report::write(&run, &figures, &b.results, &b.hit_rates)?;
    b.srv.stop().await;
    drop_database(&args).await?;
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}
