use reqwest::Method;
use serde_json::Value;

use crate::common;

fn castellan(db: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_castellan"))
        .args(args)
        .env_clear()
        .env("DATABASE_URL", format!("sqlite://{db}"))
        .env(
            "GOTRUE_JWT_SECRET",
            "test-secret-with-at-least-32-characters",
        )
        .env("CASTELLAN_ARGON2_MEMORY_KIB", "4096")
        .env("CASTELLAN_ARGON2_ITERATIONS", "1")
        .output()
        .expect("run castellan")
}

/// The operator's door: create a user and mint a service key from the
/// command line, then use both against the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_commands_create_a_user_and_mint_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("cli.db").to_string_lossy().into_owned();

    let migrate = castellan(&db, &["migrate"]);
    assert!(
        migrate.status.success(),
        "{}",
        String::from_utf8_lossy(&migrate.stderr)
    );
    let out = castellan(
        &db,
        &[
            "admin",
            "create-user",
            "--email",
            "Op@Example.com",
            "--password",
            "operator-pw",
            "--confirm",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let user: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(user["email"], "op@example.com");
    assert!(user["email_confirmed_at"].is_string());
    let dup = castellan(&db, &["admin", "create-user", "--email", "op@example.com"]);
    assert!(!dup.status.success());
    assert!(String::from_utf8_lossy(&dup.stderr).contains("already been registered"));

    let token = castellan(&db, &["admin", "token", "--role", "service_role"]);
    assert!(token.status.success());
    let key = String::from_utf8(token.stdout).unwrap().trim().to_string();
    assert_eq!(common::claims(&key)["role"], "service_role");

    let mut cfg = common::test_config(castellan_core::config::DatabaseUrl::Sqlite(db.clone()));
    cfg.mailer_autoconfirm = false;
    let server = castellan::start(cfg).await.unwrap();
    let base = format!("http://{}", server.addr);
    let http = reqwest::Client::new();
    let list = common::read(
        http.request(Method::GET, format!("{base}/admin/users"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(list.status, 200, "{}", list.text);
    assert_eq!(list.body["users"][0]["email"], "op@example.com");
    let login = common::read(
        http.post(format!("{base}/token?grant_type=password"))
            .json(&serde_json::json!({"email": "op@example.com", "password": "operator-pw"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(login.status, 200, "{}", login.text);
    server.stop().await;
}

/// A bad value stops start-up with a message that names the variable.
#[test]
fn bad_configuration_names_the_variable() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_castellan"))
        .arg("migrate")
        .env_clear()
        .env("GOTRUE_JWT_EXP", "an hour")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("GOTRUE_JWT_EXP"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// On the embedded default (no GOTRUE_JWT_SECRET: one is generated and
/// logged about), `castellan admin token` prints the token and nothing else
/// on stdout, so `KEY=$(castellan admin token)` works.
#[test]
fn admin_token_alone_on_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("fresh.db").to_string_lossy().into_owned();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_castellan"))
        .args(["admin", "token"])
        .env_clear()
        .env("DATABASE_URL", format!("sqlite://{db}"))
        .output()
        .expect("run castellan");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "only the token on stdout: {stdout:?}");
    assert_eq!(lines[0].split('.').count(), 3, "a JWT: {stdout:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("generated a secret"),
        "the log line went to stderr"
    );
    assert!(std::path::Path::new(&format!("{db}.jwt-secret")).exists());
}

/// Runs `castellan migrate` with `env` alone; its stderr, after a failure.
fn failing(env: &[(&str, &str)]) -> String {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_castellan"));
    cmd.arg("migrate").env_clear();
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{env:?} was accepted: {stderr}");
    stderr
}

/// Each bad configuration a newcomer meets stops start-up with one
/// sentence that names the variable, the address or file, and the fix
/// (issue 15).
#[test]
fn start_up_errors_say_what_to_fix() {
    let pg = common::pg_admin_url();
    let (base, _) = pg.rsplit_once('/').unwrap();
    let host_port = base.rsplit_once('@').map_or(base, |(_, h)| h).to_string();
    let no_role = format!("postgres://castellan_no_such_role@{host_port}/postgres");
    let no_db = format!("{base}/castellan_no_such_database");
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            "postgres://postgres@127.0.0.1:1/x".into(),
            vec![
                "refused the connection",
                "127.0.0.1:1",
                "DATABASE_URL",
                "running",
            ],
        ),
        // "does not exist" (trust) or "password authentication failed".
        (
            no_role,
            vec![
                "\"castellan_no_such_role\"",
                "check the user and password in DATABASE_URL",
            ],
        ),
        (no_db, vec!["castellan_no_such_database", "createdb"]),
        (
            "postgres://u@h h/x".into(),
            vec![
                "DATABASE_URL is not a valid PostgreSQL URL",
                "postgres://USER",
            ],
        ),
        (
            "/nonexistent/castellan/auth.db".into(),
            vec!["/nonexistent/castellan", "does not exist", "DATABASE_URL"],
        ),
        ("mysql://x".into(), vec!["DATABASE_URL", "postgres://"]),
    ];
    for (url, says) in cases {
        let env = [
            ("DATABASE_URL", url.as_str()),
            ("GOTRUE_JWT_SECRET", "0123456789abcdef0123456789abcdef"),
        ];
        let stderr = failing(&env);
        for s in says {
            assert!(stderr.contains(s), "{url}: {stderr:?} does not say {s:?}");
        }
        // One sentence, said once, with no source locations in it.
        assert_eq!(stderr.lines().count(), 1, "{url}: {stderr:?}");
        assert!(!stderr.contains(" at line "), "{url}: {stderr:?}");
    }
}

/// A key set that cannot sign stops start-up, naming the variable and the
/// key but never printing key material; `castellan keys generate` makes
/// keys it accepts (issue 13).
#[test]
fn bad_signing_keys_stop_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keys.db").to_string_lossy().into_owned();
    let generate = |alg: &str| -> serde_json::Value {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_castellan"))
            .args(["keys", "generate", "--alg", alg])
            .env_clear()
            .output()
            .unwrap();
        assert!(out.status.success());
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let (es, ed) = (generate("ES256"), generate("EdDSA"));
    assert_eq!(
        (es["kty"].as_str(), ed["crv"].as_str()),
        (Some("EC"), Some("Ed25519"))
    );
    let mut verify_only = ed.clone();
    verify_only["key_ops"] = serde_json::json!(["verify"]);
    let mut public = es.clone();
    public.as_object_mut().unwrap().remove("d");
    let key_name = format!("key 1 (kid {:?})", es["kid"].as_str().unwrap());
    for (keys, says) in [
        (
            serde_json::json!([es, ed]),
            vec!["GOTRUE_JWT_KEYS", "2 signing keys"],
        ),
        (
            serde_json::json!([verify_only]),
            vec!["GOTRUE_JWT_KEYS", "no signing key"],
        ),
        (
            serde_json::json!([public]),
            vec!["GOTRUE_JWT_KEYS", key_name.as_str(), "private key"],
        ),
        (
            serde_json::json!({"kty": "EC"}),
            vec!["GOTRUE_JWT_KEYS", "not a JSON array"],
        ),
    ] {
        let keys = keys.to_string();
        let env = [
            ("DATABASE_URL", db.as_str()),
            ("GOTRUE_JWT_KEYS", keys.as_str()),
        ];
        let stderr = failing(&env);
        for s in says {
            assert!(stderr.contains(s), "{stderr:?} does not say {s:?}");
        }
        assert_eq!(stderr.lines().count(), 1, "{stderr:?}");
        assert!(!stderr.contains(es["d"].as_str().unwrap()), "{stderr:?}");
    }
    // The generated pair is accepted: one signs, the other verifies.
    let keys = serde_json::json!([es, verify_only]).to_string();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_castellan"))
        .arg("migrate")
        .env_clear()
        .env("DATABASE_URL", &db)
        .env("GOTRUE_JWT_KEYS", &keys)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A short GOTRUE_JWT_SECRET is accepted (existing keys keep working) and
/// warned about at start-up.
#[test]
fn a_short_jwt_secret_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("short.db").to_string_lossy().into_owned();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_castellan"))
        .args(["admin", "token"])
        .env_clear()
        .env("DATABASE_URL", &db)
        .env("GOTRUE_JWT_SECRET", "12345")
        .output()
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("shorter than 32 bytes"), "{stderr}");
}

/// `castellan config example` lists every variable with its default, and
/// `config check` shows the effective configuration with secrets masked,
/// refusing a bad value by name (issue 15).
#[test]
fn config_example_and_check() {
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_castellan"));
        cmd.args(args).env_clear();
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    let example = run(&["config", "example"], &[]);
    assert!(example.status.success());
    let example = String::from_utf8(example.stdout).unwrap();
    for line in [
        "# DATABASE_URL=castellan.db",
        "# GOTRUE_JWT_EXP=3600",
        "# CASTELLAN_SHUTDOWN_GRACE=10s",
        "# GOTRUE_SMTP_PORT=587",
    ] {
        assert!(
            example.lines().any(|l| l == line),
            "{line} missing from:\n{example}"
        );
    }

    let env = [
        (
            "DATABASE_URL",
            "postgres://castellan:hunter2@db.internal:5432/auth",
        ),
        ("GOTRUE_JWT_SECRET", "a-secret-nobody-may-see-0123456789"),
        ("GOTRUE_SMTP_PASS", "smtp-password-123"),
        ("GOTRUE_JWT_EXP", "600"),
    ];
    let check = run(&["config", "check"], &env);
    let stdout = String::from_utf8(check.stdout).unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(
        stdout.contains("DATABASE_URL=postgres://castellan:********@db.internal:5432/auth"),
        "{stdout}"
    );
    assert!(
        stdout.contains("GOTRUE_JWT_SECRET=******** (set)"),
        "{stdout}"
    );
    assert!(stdout.contains("GOTRUE_JWT_EXP=600\n"), "{stdout}");
    assert!(
        stdout.contains("GOTRUE_SITE_URL=http://localhost:3000 (default)"),
        "{stdout}"
    );
    for secret in ["hunter2", "a-secret-nobody", "smtp-password"] {
        assert!(!stdout.contains(secret), "{secret} shown:\n{stdout}");
    }

    let help = String::from_utf8(run(&["--help"], &[]).stdout).unwrap();
    for says in [
        "DATABASE_URL",
        "GOTRUE_JWT_SECRET",
        "castellan config example",
    ] {
        assert!(help.contains(says), "--help does not name {says}:\n{help}");
    }

    // Issue 26: what GoTrue reads and castellan ignores, and what nobody
    // reads (a misspelling), are warned about; the configuration stays valid.
    let odd = run(
        &["config", "check"],
        &[
            ("GOTRUE_SAML_ENABLED", "true"),
            ("CASTELLAN_SESION_SHARDS", "2"),
        ],
    );
    let said = String::from_utf8_lossy(&odd.stderr).to_string();
    assert!(odd.status.success(), "{said}");
    assert!(
        said.contains("read by GoTrue, unused by castellan as configured: GOTRUE_SAML_ENABLED"),
        "{said}"
    );
    assert!(
        said.contains("unknown variables (misspelt?), ignored: CASTELLAN_SESION_SHARDS"),
        "{said}"
    );

    // The hooks that are on, and how each is reached; never a secret.
    let hooked = run(
        &["config", "check"],
        &[
            ("GOTRUE_HOOK_SEND_EMAIL_ENABLED", "true"),
            (
                "GOTRUE_HOOK_SEND_EMAIL_URI",
                "https://hooks.example.com/mail",
            ),
            (
                "GOTRUE_HOOK_SEND_EMAIL_SECRETS",
                "v1,whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            ),
        ],
    );
    let said = String::from_utf8_lossy(&hooked.stderr).to_string();
    assert!(hooked.status.success(), "{said}");
    assert!(
        said.contains("hook SEND_EMAIL is on (HTTP, signed)"),
        "{said}"
    );
    let shown = String::from_utf8_lossy(&hooked.stdout).to_string();
    assert!(!shown.contains("MfKQ9r8"), "{shown}");
    assert!(
        shown.contains("GOTRUE_HOOK_SEND_EMAIL_SECRETS=******** (set)"),
        "{shown}"
    );

    let bad = run(&["config", "check"], &[("GOTRUE_JWT_EXP", "an hour")]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("GOTRUE_JWT_EXP"));
}

/// One access-log line per request at the default level: method, route
/// template, status, latency and request id, and nothing a client sent
/// (issue 15).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_access_log_line_per_request_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("log.db").to_string_lossy().into_owned();
    let (_child, base, log) = common::castellan_process_in(&[], &["serve"], &db, &[]).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let secret = "tok3n-that-must-never-be-logged";
    let user = uuid::Uuid::new_v4();
    let r = http
        .get(format!("{base}/verify?token={secret}&type=signup"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error() || r.status().is_redirection());
    let r = http
        .get(format!("{base}/admin/users/{user}"))
        .bearer_auth(secret)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let lines = log.lock().unwrap().clone();
    let access: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("finished processing request"))
        .collect();
    assert_eq!(access.len(), 2, "{lines:#?}");
    let admin = access
        .iter()
        .find(|l| l.contains(&id))
        .expect("the line carries the request id");
    for part in [
        "INFO",
        "method=\"GET\"",
        "route=\"/admin/users/{user_id}\"",
        "status=403",
        "latency=",
    ] {
        assert!(admin.contains(part), "{part} missing: {admin}");
    }
    assert!(
        lines
            .iter()
            .all(|l| !l.contains(secret) && !l.contains(&user.to_string())),
        "{lines:#?}"
    );
}

/// Probes stay out of the access log unless `CASTELLAN_LOG_PROBES` asks
/// for them, as GoTrue leaves `/health` out; other routes are logged the
/// same either way (issue 27).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_are_logged_only_when_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    for (db, probes, logged) in [("quiet.db", "false", 1), ("probes.db", "true", 5)] {
        let db = dir.path().join(db).to_string_lossy().into_owned();
        let env = [("CASTELLAN_LOG_PROBES", probes)];
        let (_child, base, log) = common::castellan_process_in(&[], &["serve"], &db, &env).await;
        let before = log.lock().unwrap().len();
        let http = reqwest::Client::new();
        for path in [
            "/health",
            "/ready",
            "/auth/v1/health",
            "/auth/v1/ready",
            "/settings",
        ] {
            let r = http.get(format!("{base}{path}")).send().await.unwrap();
            assert_eq!(r.status(), 200, "{path}");
        }
        let access = || {
            let lines = log.lock().unwrap()[before..].to_vec();
            lines
                .into_iter()
                .filter(|l| l.contains("finished processing request"))
                .collect::<Vec<_>>()
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while access().len() < logged && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        // Time for a line that should not be there to arrive.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let lines = access();
        assert_eq!(
            lines.len(),
            logged,
            "CASTELLAN_LOG_PROBES={probes}: {lines:#?}"
        );
        assert!(lines.iter().any(|l| l.contains("route=\"/settings\"")));
        assert_eq!(
            lines
                .iter()
                .any(|l| l.contains("route=\"/auth/v1/health\"")),
            probes == "true",
            "{lines:#?}"
        );
    }
}

/// The generated secret beside the database, and the database itself, are
/// ignored by git, so a newcomer cannot commit them by accident (issue 15).
#[test]
fn the_generated_secret_is_git_ignored() {
    let root = env!("CARGO_MANIFEST_DIR");
    for path in [
        "castellan.db",
        "castellan.db.jwt-secret",
        "other.db.jwt-secret",
        ".env",
    ] {
        let out = std::process::Command::new("git")
            .args(["check-ignore", "--no-index", "-q", path])
            .current_dir(root)
            .status()
            .expect("git runs");
        assert!(out.success(), "{path} is not ignored by .gitignore");
    }
}

/// Runs `castellan ARGS` in `dir` with `env` alone.
fn run_in(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_castellan"));
    cmd.args(args).env_clear().current_dir(dir);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `config check` refuses exactly what `serve` refuses, in the same words,
/// and `serve` refuses it before it creates or migrates anything (issue 33):
/// one validation serves both.
#[test]
fn config_check_refuses_what_serve_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = held.local_addr().unwrap().port().to_string();
    let secret = ("GOTRUE_JWT_SECRET", "0123456789abcdef0123456789abcdef");
    type Env<'a> = Vec<(&'a str, &'a str)>;
    let cases: Vec<(Env, Vec<&str>)> = vec![
        (
            vec![("GOTRUE_API_HOST", "no such host!")],
            vec!["GOTRUE_API_HOST/PORT", "no such host!"],
        ),
        (
            vec![("PORT", "70000")],
            vec!["PORT", "70000 is out of range", "0 to 65535"],
        ),
        (
            vec![("GOTRUE_JWT_EXP", "-5")],
            vec!["GOTRUE_JWT_EXP", "-5 is out of range"],
        ),
        (
            vec![("DATABASE_URL", "missing/dir/auth.db")],
            vec!["DATABASE_URL", "missing/dir", "does not exist"],
        ),
        (
            vec![("CASTELLAN_METRICS_ADDR", "9102")],
            vec!["CASTELLAN_METRICS_ADDR", "HOST:PORT"],
        ),
        (
            vec![("CASTELLAN_METRICS_ADDR", "[127.0.0.1]:9102")],
            vec!["CASTELLAN_METRICS_ADDR", "[127.0.0.1]"],
        ),
        (
            vec![("GOTRUE_API_HOST", "192.0.2.1")],
            vec![
                "GOTRUE_API_HOST",
                "192.0.2.1 is not an address of this machine",
            ],
        ),
        (
            vec![("DATABASE_URL", ".")],
            vec!["DATABASE_URL", "it is not a file"],
        ),
        (
            vec![("GOTRUE_JWT_VALID_METHODS", "FOO")],
            vec!["GOTRUE_JWT_VALID_METHODS", "FOO"],
        ),
        (
            vec![(
                "GOTRUE_MAILER_TEMPLATES_CONFIRMATION",
                "/nonexistent/t.html",
            )],
            vec!["/nonexistent/t.html"],
        ),
        (
            vec![
                ("GOTRUE_HOOK_CUSTOM_ACCESS_TOKEN_ENABLED", "true"),
                (
                    "GOTRUE_HOOK_CUSTOM_ACCESS_TOKEN_URI",
                    "pg-functions://postgres/public/claims",
                ),
            ],
            vec!["GOTRUE_HOOK_CUSTOM_ACCESS_TOKEN_URI", "PostgreSQL"],
        ),
        (
            vec![("DATABASE_URL", "postgres://u@127.0.0.1:1/x")],
            vec![
                "GOTRUE_JWT_SECRET",
                "required when DATABASE_URL is PostgreSQL",
            ],
        ),
    ];
    for (env, says) in cases {
        let mut env = env;
        if !env.iter().any(|(k, _)| *k == "DATABASE_URL") {
            env.push(secret);
        }
        // A port in use, never reached: each case is refused before binding.
        if !env.iter().any(|(k, _)| *k == "PORT") {
            env.push(("PORT", &taken));
        }
        let (ok, check) = run_in(dir.path(), &["config", "check"], &env);
        assert!(!ok, "{env:?}: config check accepted it: {check}");
        let (ok, serve) = run_in(dir.path(), &["serve"], &env);
        assert!(!ok, "{env:?}: serve started");
        for s in &says {
            assert!(
                check.contains(s),
                "{env:?}: check {check:?} does not say {s:?}"
            );
            assert!(
                serve.contains(s),
                "{env:?}: serve {serve:?} does not say {s:?}"
            );
        }
        let last = |t: &str| t.lines().last().unwrap_or_default().to_string();
        assert_eq!(last(&check), last(&serve), "{env:?}: said differently");
        assert!(
            std::fs::read_dir(dir.path()).unwrap().next().is_none(),
            "{env:?}: something was written before the refusal"
        );
    }
    // A port in use is said before the database is made, naming the variable.
    let (ok, serve) = run_in(dir.path(), &["serve"], &[secret, ("PORT", &taken)]);
    assert!(!ok);
    assert!(
        serve.contains("GOTRUE_API_HOST/PORT") && serve.contains(&taken),
        "{serve}"
    );
    assert!(!dir.path().join("castellan.db").exists(), "migrated first");
}

/// What GoTrue accepts starts castellan too: a host name to listen on; a
/// provider enabled without credentials, a short secret and a misspelt
/// variable are warned about, by `config check` and at start alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_check_warns_as_serve_starts() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("warned.db").to_string_lossy().into_owned();
    let env = [
        ("GOTRUE_API_HOST", "localhost"),
        ("GOTRUE_JWT_SECRET", "12345"),
        ("GOTRUE_EXTERNAL_GITHUB_ENABLED", "true"),
        ("GOTRUE_JWT_SECERT", "typo"),
    ];
    let mut with_db = env.to_vec();
    with_db.push(("DATABASE_URL", db.as_str()));
    let (ok, check) = run_in(dir.path(), &["config", "check"], &with_db);
    assert!(ok, "{check}");
    let warned = [
        "shorter than 32 bytes",
        "GOTRUE_EXTERNAL_GITHUB_CLIENT_ID: missing OAuth client ID",
        "GOTRUE_JWT_SECERT",
    ];
    for w in warned {
        assert!(check.contains(w), "check {check:?} does not warn {w:?}");
    }
    let (_child, base, log) = common::castellan_process_in(&[], &["serve"], &db, &env).await;
    assert!(base.contains("127.0.0.1"), "{base}");
    let health = reqwest::get(format!("{base}/health")).await.unwrap();
    assert_eq!(health.status(), 200);
    let lines = log.lock().unwrap().join("\n");
    for w in warned {
        assert!(
            lines.contains(w),
            "serve's log does not warn {w:?}:\n{lines}"
        );
    }
}

/// The small words a newcomer reads (issue 33): `limits set --help` names
/// the limits, `admin token --help` says what a role is, `keys list` says
/// when it has nothing to list, and a command run on a generated secret
/// does not say so at every call.
#[test]
fn the_cli_says_what_a_newcomer_needs() {
    let dir = tempfile::tempdir().unwrap();
    let help = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_castellan"))
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let limits = help(&["limits", "set", "--help"]);
    for name in [
        "token_refresh",
        "verify",
        "email_sent",
        "GOTRUE_RATE_LIMIT_VERIFY",
    ] {
        assert!(limits.contains(name), "{name} missing from:\n{limits}");
    }
    let token = help(&["admin", "token", "--help"]);
    assert!(
        token.contains("anon") && token.contains("service_role"),
        "{token}"
    );

    let db = dir.path().join("cli.db").to_string_lossy().into_owned();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_castellan"))
            .args(args)
            .env_clear()
            .env("DATABASE_URL", &db)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // The first call generates the secret and says so; later ones are quiet.
    assert!(run(&["admin", "token"]).contains("generated a secret"));
    let again = run(&["admin", "token"]);
    assert!(!again.contains("secret"), "{again}");
    let keys = run(&["keys", "list"]);
    assert!(keys.contains("no signing keys are stored"), "{keys}");
}
