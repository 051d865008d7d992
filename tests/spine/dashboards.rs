//! The operator's view (issue 14): every Grafana panel's PromQL returns
//! series from a real Prometheus scraping a real API process and a real
//! worker process after a workload through every endpoint family; the
//! alert rules load and evaluate there, and promtool checks and unit-tests
//! them.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{self, Backend, ProcessLog, read};

/// Where `scripts/ensure-prometheus.sh` found prometheus and promtool.
fn prometheus_dir() -> PathBuf {
    let dir = std::env::var("CASTELLAN_TEST_PROMETHEUS_DIR").unwrap_or_else(|_| {
        panic!("CASTELLAN_TEST_PROMETHEUS_DIR is not set: run the tests through scripts/test.sh, or set it to the directory of prometheus and promtool (scripts/ensure-prometheus.sh prints it)")
    });
    PathBuf::from(dir)
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The shipped dashboards' files, in name order.
fn dashboard_files() -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(repo("grafana/dashboards"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

/// Every panel's expressions, with the dashboard and panel title.
fn panel_queries() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for file in dashboard_files() {
        let board: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        for panel in board["panels"].as_array().expect("panels") {
            let targets = panel["targets"].as_array().expect("targets");
            assert!(
                !targets.is_empty(),
                "{name}: {} has no query",
                panel["title"]
            );
            for t in targets {
                let expr = t["expr"].as_str().expect("a PromQL expr");
                out.push((format!("{name} · {}", panel["title"]), expr.to_string()));
            }
        }
    }
    out
}

/// Every dashboard works outside compose too: provisioned from files or
/// imported into an existing Grafana, each queries the Prometheus its
/// `datasource` variable picks, and no panel or query names a datasource uid
/// of its own (an uid only the compose Grafana has would leave them empty).
/// No `__inputs` either: file provisioning does not fill them in.
#[test]
fn every_dashboard_queries_the_prometheus_its_variable_picks() {
    let files = dashboard_files();
    assert!(files.len() >= 4, "{files:?}");
    let wanted = json!({"type": "prometheus", "uid": "${datasource}"});
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        let board: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(board.get("__inputs").is_none(), "{name}: __inputs");
        let variables: Vec<&Value> = board["templating"]["list"]
            .as_array()
            .expect("templating.list")
            .iter()
            .filter(|v| v["type"] == "datasource")
            .collect();
        assert_eq!(variables.len(), 1, "{name}: one datasource variable");
        let variable = variables[0];
        assert_eq!(variable["name"], "datasource", "{name}");
        assert_eq!(variable["query"], "prometheus", "{name}");
        assert_eq!(variable["label"], "Prometheus", "{name}");
        assert_ne!(variable["includeAll"], true, "{name}");
        assert_ne!(variable["multi"], true, "{name}");
        for panel in board["panels"].as_array().expect("panels") {
            assert_eq!(panel["datasource"], wanted, "{name}: {}", panel["title"]);
            for target in panel["targets"].as_array().expect("targets") {
                assert_eq!(target["datasource"], wanted, "{name}: {}", panel["title"]);
            }
        }
        // Nor anywhere else (rows, annotations, other variables).
        let mut named = Vec::new();
        datasources(&board, &mut named);
        for ds in named {
            assert_eq!(ds["uid"], "${datasource}", "{name}: {ds}");
        }
    }
}

/// Every `datasource` object in a dashboard, however deep.
fn datasources<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Object(map) => {
            for (key, child) in map {
                if key.as_str() == "datasource" && child.is_object() {
                    out.push(child);
                }
                datasources(child, out);
            }
        }
        Value::Array(items) => {
            for item in items {
                datasources(item, out);
            }
        }
        _ => {}
    }
}

/// The address a process logged after `marker` (e.g. its metrics port).
async fn logged_addr(log: &ProcessLog, marker: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = log.lock().unwrap().iter().find_map(|l| {
            l.split(marker)
                .nth(1)
                .and_then(|r| r.split_whitespace().next().map(str::to_string))
        });
        if let Some(a) = found {
            return a;
        }
        assert!(Instant::now() < deadline, "no {marker:?} in the log");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Prometheus on loopback scraping `targets` (job name, address) every
/// second, with the shipped alert rules loaded.
async fn start_prometheus(dir: &Path, targets: &[(&str, &str)]) -> (tokio::process::Child, String) {
    let jobs: String = targets
        .iter()
        .map(|(job, at)| {
            format!("  - job_name: {job}\n    static_configs:\n      - targets: [\"{at}\"]\n")
        })
        .collect();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n{jobs}",
        repo("prometheus/alerts.yml").display()
    );
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let port = free_port();
    let child = tokio::process::Command::new(prometheus_dir().join("prometheus"))
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start prometheus");
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !reqwest::get(format!("{base}/-/ready"))
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(Instant::now() < deadline, "prometheus never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (child, base)
}

/// An instant query's result vector.
async fn query(prom: &str, expr: &str) -> Vec<Value> {
    let r = reqwest::Client::new()
        .get(format!("{prom}/api/v1/query"))
        .query(&[("query", expr)])
        .send()
        .await
        .unwrap();
    let body = read(r).await;
    assert_eq!(body.body["status"], "success", "{expr}: {}", body.text);
    body.body["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// A request through every endpoint family, the failures included, so every
/// panel has something to show.
async fn workload(api: &str, admin: &str) {
    let http = reqwest::Client::new();
    let post = |path: &str, body: Value| http.post(format!("{api}{path}")).json(&body).send();
    // A sign-up whose confirmation the worker mails.
    let r = read(
        post(
            "/signup",
            json!({"email": "dash-new@example.com", "password": "secret123"}),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    // A confirmed user, made by an admin.
    let r = http
        .post(format!("{api}/admin/users"))
        .bearer_auth(admin)
        .json(&json!({"email": "dash@example.com", "password": "secret123", "email_confirm": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A passkey sign-in started (its options), for the passkey panel.
    let r = post("/passkeys/authentication/options", json!({}))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let login = |password: &'static str| {
        post(
            "/token?grant_type=password",
            json!({"email": "dash@example.com", "password": password}),
        )
    };
    assert_eq!(login("wrong-one").await.unwrap().status(), 400);
    let s = read(login("secret123").await.unwrap()).await;
    assert_eq!(s.status, 200, "{}", s.text);
    let access = s.body["access_token"].as_str().unwrap().to_string();
    let first = s.body["refresh_token"].as_str().unwrap().to_string();
    for _ in 0..2 {
        let u = http
            .get(format!("{api}/user"))
            .bearer_auth(&access)
            .send()
            .await
            .unwrap();
        assert_eq!(u.status(), 200);
    }
    let refresh = |token: String| {
        post(
            "/token?grant_type=refresh_token",
            json!({"refresh_token": token}),
        )
    };
    let mut token = first.clone();
    for _ in 0..2 {
        let r = read(refresh(token).await.unwrap()).await;
        assert_eq!(r.status, 200, "{}", r.text);
        token = r.body["refresh_token"].as_str().unwrap().to_string();
    }
    // The first token again, two rotations later: a reuse detection.
    assert_eq!(refresh(first).await.unwrap().status(), 400);
    // A lowered refresh limit (through the RateLimiter's mailbox), hit.
    let limits = |body: Value| {
        http.put(format!("{api}/admin/rate_limits"))
            .bearer_auth(admin)
            .json(&body)
            .send()
    };
    assert_eq!(
        limits(json!({"token_refresh": 1})).await.unwrap().status(),
        200
    );
    let statuses: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(
                refresh("not-a-real-token-at-all".into())
                    .await
                    .unwrap()
                    .status()
                    .as_u16(),
            );
        }
        v
    };
    assert!(statuses.contains(&429), "{statuses:?}");
    assert_eq!(
        limits(json!({"token_refresh": 100000}))
            .await
            .unwrap()
            .status(),
        200
    );
    // A code by SMS (to the log: no provider is configured).
    assert_eq!(
        post("/otp", json!({"phone": "15550030000"}))
            .await
            .unwrap()
            .status(),
        200
    );
    // A magic link (the OtpIssuer's mailbox) and a wrong code for it.
    assert_eq!(
        post("/otp", json!({"email": "dash@example.com"}))
            .await
            .unwrap()
            .status(),
        200
    );
    let v = post(
        "/verify",
        json!({"type": "email", "email": "dash@example.com", "token": "000000"}),
    )
    .await
    .unwrap();
    assert_eq!(v.status(), 403);
    let page = http
        .get(format!("{api}/admin/users"))
        .bearer_auth(admin)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    for path in ["/health", "/settings", "/ready", "/.well-known/jwks.json"] {
        assert_eq!(
            http.get(format!("{api}{path}"))
                .send()
                .await
                .unwrap()
                .status(),
            200,
            "{path}"
        );
    }
    // The reuse ended that session: a new one logs out.
    let again = read(login("secret123").await.unwrap()).await;
    let access = again.body["access_token"].as_str().unwrap().to_string();
    // A second factor: enrolled, challenged, a wrong code.
    let mfa = |path: String, body: Value| {
        http.post(format!("{api}{path}"))
            .bearer_auth(&access)
            .json(&body)
            .send()
    };
    let f = read(
        mfa("/factors".into(), json!({"factor_type": "totp"}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(f.status, 200, "{}", f.text);
    let id = f.body["id"].as_str().unwrap();
    let ch = read(
        mfa(format!("/factors/{id}/challenge"), json!({}))
            .await
            .unwrap(),
    )
    .await;
    let ch = ch.body["id"].as_str().unwrap();
    let wrong = mfa(
        format!("/factors/{id}/verify"),
        json!({"challenge_id": ch, "code": "12345"}),
    )
    .await
    .unwrap();
    assert_eq!(wrong.status(), 422);
    let out = http
        .post(format!("{api}/logout"))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_panel_has_series_in_a_real_prometheus() {
    let (db, _) = common::fresh_database(Backend::Postgres).await;
    let castellan_core::config::DatabaseUrl::Postgres(url) = &db else {
        unreachable!()
    };
    let env = [
        ("CASTELLAN_METRICS_ADDR", "127.0.0.1:0"),
        // The sweep samples the queue's backlog: every second here.
        ("CASTELLAN_EXPIRY_SCHEDULE", "* * * * * *"),
        // A used refresh token is a reuse at once, not within a grace.
        ("GOTRUE_SECURITY_REFRESH_TOKEN_REUSE_INTERVAL", "0"),
        // Phone codes, delivered to the log (no SMS provider).
        ("GOTRUE_EXTERNAL_PHONE_ENABLED", "true"),
        // Passkeys on, for the passkey panel.
        ("GOTRUE_PASSKEY_ENABLED", "true"),
        ("GOTRUE_WEBAUTHN_RP_ID", "localhost"),
        ("GOTRUE_WEBAUTHN_RP_DISPLAY_NAME", "castellan"),
        ("GOTRUE_WEBAUTHN_RP_ORIGINS", "http://localhost:3000"),
        // A custom access token hook in the database, for the hook panels.
        ("GOTRUE_HOOK_CUSTOM_ACCESS_TOKEN_ENABLED", "true"),
        (
            "GOTRUE_HOOK_CUSTOM_ACCESS_TOKEN_URI",
            "pg-functions://postgres/public/same_claims",
        ),
    ];
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(url)
        .await
        .unwrap();
    sqlx::query(
        "CREATE FUNCTION public.same_claims(event jsonb) RETURNS jsonb LANGUAGE sql \
         AS $$ SELECT jsonb_build_object('claims', event->'claims') $$",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let (_api, base, api_log) =
        common::castellan_process_in(&[], &["serve", "--no-workers"], url, &env).await;
    let (_worker, _, worker_log) = common::castellan_process_in(&[], &["worker"], url, &env).await;
    let api_metrics = logged_addr(&api_log, "metrics listening addr=").await;
    let worker_metrics = logged_addr(&worker_log, "metrics listening addr=").await;
    // The API port no longer serves /metrics when it has its own address.
    let r = reqwest::get(format!("{base}/metrics")).await.unwrap();
    assert_eq!(r.status(), 404);

    let dir = tempfile::tempdir().unwrap();
    let (_prom, prom) = start_prometheus(
        dir.path(),
        &[
            ("castellan-api", &api_metrics),
            ("castellan-worker", &worker_metrics),
        ],
    )
    .await;
    let admin = common::process_admin_key(&db);
    workload(&base, &admin).await;

    // Until both processes are up in Prometheus and the mail was delivered
    // and scraped; then three more scrapes, so every rate has two samples.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let up = query(&prom, "up == 1").await.len();
        let sent = query(&prom, "castellan_queue_delivery_seconds_count > 0")
            .await
            .len();
        if up == 2 && sent > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "up: {up}, delivered: {sent}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;

    let queries = panel_queries();
    assert!(queries.len() >= 30, "{} panel queries", queries.len());
    let mut empty = Vec::new();
    for (panel, expr) in &queries {
        let expr = expr.replace("$__rate_interval", "1m");
        if query(&prom, &expr).await.is_empty() {
            empty.push(format!("{panel}: {expr}"));
        }
    }
    assert!(
        empty.is_empty(),
        "panels without series:\n{}",
        empty.join("\n")
    );

    // Both processes are scraped, each under its own job.
    let jobs = query(&prom, "count by (job) (castellan_db_pool_max_connections)").await;
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    // The shipped alert rules loaded and evaluate cleanly, and none fires
    // on a healthy pair of processes.
    let rules = reqwest::get(format!("{prom}/api/v1/rules")).await.unwrap();
    let rules = read(rules).await.body;
    let group = &rules["data"]["groups"][0]["rules"];
    let rules = group.as_array().expect("the alert rules are loaded");
    assert!(rules.len() >= 7, "{rules:?}");
    for rule in rules {
        assert_eq!(rule["health"], "ok", "{rule}");
        assert_ne!(rule["state"], "firing", "{rule}");
    }
}

/// promtool's own checks of the shipped Prometheus files and alert tests.
#[test]
fn promtool_checks_the_config_and_unit_tests_the_alerts() {
    let promtool = prometheus_dir().join("promtool");
    for args in [
        vec!["check", "config", "prometheus.yml"],
        vec!["check", "rules", "alerts.yml"],
        vec!["test", "rules", "alerts.test.yml"],
    ] {
        let out = std::process::Command::new(&promtool)
            .args(&args)
            .current_dir(repo("prometheus"))
            .output()
            .expect("run promtool");
        assert!(
            out.status.success(),
            "promtool {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
