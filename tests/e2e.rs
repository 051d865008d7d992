//! The official `@supabase/auth-js` client (pinned in tests/e2e) against a
//! real castellan on each database. Needs Node and `npm ci` in tests/e2e,
//! which the README's test command does.

mod common;
#[path = "common/hook_server.rs"]
mod hook_server;
#[path = "common/oauth_provider.rs"]
mod oauth_provider;
#[path = "common/oidc_issuer.rs"]
mod oidc_issuer;
#[path = "common/security_apis.rs"]
mod security_apis;
#[path = "common/sms_provider.rs"]
mod sms_provider;
#[path = "common/smtp_sink.rs"]
mod smtp_sink;

use castellan_core::crypto::jwk::{KeyKind, generate};
use common::Backend;
use oauth_provider::{FakeOAuth, Profile};
use sms_provider::FakeProvider;
use smtp_sink::SmtpSink;

/// Serves the sink's messages as JSON over HTTP (`GET /` → `[{to, data}]`),
/// so a Node script can read links and codes out of the delivered mail.
async fn mailbox(sink: SmtpSink) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let sink = sink.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let mails: Vec<serde_json::Value> = sink
                    .all()
                    .iter()
                    .map(|m| serde_json::json!({"to": m.to, "data": m.data}))
                    .collect();
                let body = serde_json::to_string(&mails).unwrap();
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}")
}

/// Runs one scenario script of tests/e2e against a fresh server (autoconfirm
/// on, or, with `mail`, confirmations sent to a loopback SMTP server whose
/// messages the script reads from a mailbox URL).
async fn run_client(backend: Backend, script: &str) {
    run_client_with(backend, script, false, None).await
}

/// As `run_client`; `mail` sends confirmations to the sink and SMS codes
/// to a stand-in Twilio whose requests the script reads (its fourth
/// argument, `<url>/_received`), `key` makes a new key of that kind the
/// signing key (`CASTELLAN_KEY_ALG` names it).
async fn run_client_with(backend: Backend, script: &str, mail: bool, key: Option<KeyKind>) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e");
    assert!(
        dir.join("node_modules/@supabase/auth-js").exists(),
        "@supabase/auth-js is not installed: run `npm ci` in tests/e2e (scripts/test.sh does)"
    );
    let sink = SmtpSink::start().await;
    let port = sink.port;
    let provider =
        FakeProvider::start(201, serde_json::json!({"sid": "SM1", "status": "queued"})).await;
    let provider_url = provider.base.clone();
    // A GitHub stand-in for the external sign-in scenarios: it sends the
    // browser back to castellan.test, which the scripts read as the server.
    let github = FakeOAuth::start().await;
    for (n, code) in ["new-root", "new-prefixed", "link-root", "link-prefixed"]
        .into_iter()
        .enumerate()
    {
        let p = Profile::github(900 + n as u64, code, &format!("{code}@example.com"), true);
        github.profile(code, p);
    }
    // An OpenID Connect issuer whose ID token signInWithIdToken presents.
    let issuer = oidc_issuer::Issuer::start().await;
    let id_token = issuer.token(serde_json::json!({}));
    // And one per scenario run that linkIdentity links to a signed-in user.
    let link_tokens = serde_json::json!({
        "root": issuer.token(serde_json::json!({"sub": "kc-link-root", "email": "kc-link-root@example.com"})),
        "prefixed": issuer.token(serde_json::json!({"sub": "kc-link-prefixed", "email": "kc-link-prefixed@example.com"})),
    });
    let t = common::spawn(backend, |c| {
        c.anonymous_users_enabled = true;
        c.oauth_server = Some(castellan_core::config::OAuthServerConfig {
            authorization_path: "/consent".into(),
            ..Default::default()
        });
        let kc = c.external.providers.get_mut("keycloak").unwrap();
        kc.enabled = true;
        kc.client_ids = vec!["kc-client".into()];
        kc.secret = "kc-secret".into();
        kc.url = Some(issuer.url.clone());
        let gh = c.external.providers.get_mut("github").unwrap();
        gh.enabled = true;
        gh.client_ids = vec!["e2e-client".into()];
        gh.secret = "e2e-secret".into();
        gh.url = Some(github.base.clone());
        gh.redirect_uri = "http://castellan.test/callback".into();
        c.external.manual_linking_enabled = true;
        c.uri_allow_list = vec!["http://app.test/**".into()];
        if mail {
            provider.configure_twilio(c);
            c.rate_limits.sms_window = std::time::Duration::from_millis(1);
            c.mfa.phone_enroll_enabled = true;
            c.mfa.phone_verify_enabled = true;
            c.mailer_autoconfirm = false;
            c.smtp.host = Some("127.0.0.1".into());
            c.smtp.port = port;
            c.rate_limits.email_sent.events = 1000;
            // The scenarios send several mails of a kind to one user in a row.
            c.rate_limits.email_window = std::time::Duration::from_millis(1);
            c.uri_allow_list = vec!["http://app.test/**".into()];
        }
        if let Some(kind) = key {
            c.jwt.keys = Some(serde_json::json!([generate(kind)]).to_string());
        }
    })
    .await;
    let mailbox = mailbox(sink).await;
    let out = tokio::process::Command::new("node")
        .arg(script)
        .arg(&t.base)
        .arg(t.service_key())
        .arg(mailbox)
        .arg(&provider_url)
        .env("CASTELLAN_KEY_ALG", key.map_or("HS256", alg_name))
        .env("CASTELLAN_E2E_ID_TOKEN", &id_token)
        .env("CASTELLAN_E2E_LINK_ID_TOKENS", link_tokens.to_string())
        .current_dir(&dir)
        .output()
        .await
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{script} failed on {backend:?}:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("ok root") && stdout.contains("ok prefixed"),
        "{stdout}"
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spine_on_sqlite() {
    run_client(Backend::Sqlite, "spine.mjs").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spine_on_postgres() {
    run_client(Backend::Postgres, "spine.mjs").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_on_sqlite() {
    run_client(Backend::Sqlite, "admin.mjs").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_on_postgres() {
    run_client(Backend::Postgres, "admin.mjs").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_on_sqlite() {
    run_client_with(Backend::Sqlite, "email.mjs", true, None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_on_postgres() {
    run_client_with(Backend::Postgres, "email.mjs", true, None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phone_on_sqlite() {
    run_client_with(Backend::Sqlite, "phone.mjs", true, None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phone_on_postgres() {
    run_client_with(Backend::Postgres, "phone.mjs", true, None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth_on_sqlite() {
    run_client(Backend::Sqlite, "oauth.mjs").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth_on_postgres() {
    run_client(Backend::Postgres, "oauth.mjs").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mfa_on_sqlite() {
    run_client(Backend::Sqlite, "mfa.mjs").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mfa_on_postgres() {
    run_client(Backend::Postgres, "mfa.mjs").await
}

fn alg_name(kind: KeyKind) -> &'static str {
    match kind {
        KeyKind::Es256 => "ES256",
        KeyKind::Rs256 => "RS256",
        KeyKind::EdDsa => "EdDSA",
    }
}

// `getClaims()` and an independent verifier on each kind of signing key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn es256_keys_on_sqlite() {
    run_client_with(Backend::Sqlite, "keys.mjs", false, Some(KeyKind::Es256)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_keys_on_postgres() {
    run_client_with(Backend::Postgres, "keys.mjs", false, Some(KeyKind::Rs256)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eddsa_keys_on_postgres() {
    run_client_with(Backend::Postgres, "keys.mjs", false, Some(KeyKind::EdDsa)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn es256_keys_on_postgres() {
    run_client_with(Backend::Postgres, "keys.mjs", false, Some(KeyKind::Es256)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_keys_on_sqlite() {
    run_client_with(Backend::Sqlite, "keys.mjs", false, Some(KeyKind::Rs256)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eddsa_keys_on_sqlite() {
    run_client_with(Backend::Sqlite, "keys.mjs", false, Some(KeyKind::EdDsa)).await
}

/// The README's "Use it from your app" snippets are the files in examples/,
/// included verbatim; this runs them against a real server, so they cannot
/// rot (issue 15). The server has GoTrue's default, no autoconfirm, as a
/// first run of the quick start has: the examples confirm their sign-ups
/// through the admin API with the service_role key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_examples_run() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let js = std::fs::read_to_string(root.join("examples/supabase-js.mjs")).unwrap();
    let py = std::fs::read_to_string(root.join("examples/supabase-py.py")).unwrap();
    let sh = std::fs::read_to_string(root.join("examples/curl.sh")).unwrap();
    for (name, text) in [
        ("examples/supabase-js.mjs", &js),
        ("examples/supabase-py.py", &py),
        ("examples/curl.sh", &sh),
    ] {
        assert!(
            readme.contains(text.as_str()),
            "the README does not include {name} as it is"
        );
    }
    let t = common::spawn(Backend::Sqlite, |c| c.mailer_autoconfirm = false).await;

    // supabase-js resolves from tests/e2e, where `npm ci` installed the
    // version examples/package.json pins (an ES module import ignores
    // NODE_PATH, so the script runs from a copy there).
    let e2e = root.join("tests/e2e");
    let copy = e2e.join(format!("readme-example-{}.mjs", std::process::id()));
    std::fs::write(&copy, &js).unwrap();
    let out = tokio::process::Command::new("node")
        .arg(&copy)
        .arg(&t.base)
        .arg(t.role_key("anon"))
        .arg(t.service_key())
        .current_dir(&e2e)
        .output()
        .await
        .expect("node runs");
    let _ = std::fs::remove_file(&copy);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "confirmed reader-",
        "signed in as reader-",
        "plan free",
        "refreshed true",
        "signed out",
    ] {
        assert!(stdout.contains(line), "{line} missing:\n{stdout}");
    }

    // supabase-py, from the virtual environment scripts/test.sh makes.
    let python = e2e.join(".venv/bin/python");
    assert!(
        python.exists(),
        "supabase-py is not installed: scripts/test.sh makes tests/e2e/.venv"
    );
    let out = tokio::process::Command::new(python)
        .arg(root.join("examples/supabase-py.py"))
        .arg(&t.base)
        .arg(t.role_key("anon"))
        .arg(t.service_key())
        .output()
        .await
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "confirmed py-reader-",
        "signed in as py-reader-",
        "plan free",
        "signed out",
    ] {
        assert!(stdout.contains(line), "{line} missing:\n{stdout}");
    }

    let out = tokio::process::Command::new("bash")
        .arg(root.join("examples/curl.sh"))
        .arg(&t.base)
        .arg(t.service_key())
        .output()
        .await
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Each run signs up addresses of its own, which the script prints.
    let after = |prefix: &str| -> String {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no line starting {prefix:?}:\n{stdout}"))
            .to_string()
    };
    let signed_up = after("signed up ");
    let (alice, how) = signed_up.split_once(", ").unwrap();
    assert_eq!(how, "confirmed through the admin API", "{stdout}");
    for line in [
        format!("user {alice}"),
        "plan pro".to_string(),
        "refreshed".to_string(),
        "signed out everywhere".to_string(),
    ] {
        assert!(
            stdout.lines().any(|l| l == line.as_str()),
            "{line} missing:\n{stdout}"
        );
    }
    let listed = after("admin: listed ").replace(" users", "");
    assert!(listed.parse::<u32>().unwrap() >= 1, "{stdout}");
    let bob = after("admin: created and deleted ");
    // What the script did is in the database.
    let alice_id = t.user_id_by_email(alice).await;
    let sessions = "SELECT count(*) FROM sessions WHERE user_id = $1";
    assert_eq!(
        t.count_by_uuid(sessions, alice_id).await,
        0,
        "signed out everywhere"
    );
    assert_eq!(
        t.user(&alice_id.to_string()).await.user_metadata()["plan"],
        "pro"
    );
    let users = "SELECT count(*) FROM users WHERE email = $1";
    assert_eq!(t.count_by_str(users, &bob).await, 0, "deleted");
    assert_eq!(t.login(alice, "a-new-secret").await.status, 200);
    t.stop().await;
}

/// Runs a script of tests/e2e that drives auth-js at the API's root and
/// under `/auth/v1` (see harness.mjs), and asserts both passed.
async fn run_everywhere(script: &str, args: &[&str], backend: Backend) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e");
    let out = tokio::process::Command::new("node")
        .arg(script)
        .args(args)
        .current_dir(&dir)
        .output()
        .await
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("ok root") && stdout.contains("ok prefixed"),
        "{script} on {backend:?}:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// auth-js drives a CAPTCHA-protected sign-up and sign-in through a
/// stand-in provider, meets a leaked password refused, and signs wallets
/// in with Solana and Ethereum (issue 32).
async fn bots(backend: Backend) {
    let captcha = security_apis::FakeCaptcha::start().await;
    let pwned = security_apis::FakePwned::start(&["Tr0ub4dor&3"]).await;
    let wallets = security_apis::Wallets::new().serve().await;
    let t = common::spawn(backend, |c| {
        captcha.configure(c, "hcaptcha");
        pwned.configure(c, false);
        c.mailer_autoconfirm = true;
        c.site_url = "http://localhost:3000".into();
        c.external.web3_solana = Some(std::time::Duration::from_secs(600));
        c.external.web3_ethereum = Some(std::time::Duration::from_secs(600));
    })
    .await;
    let issue = captcha.url.replace("/siteverify", "/_issue");
    let args = [t.base.as_str(), &issue, "Tr0ub4dor&3", &wallets.base];
    run_everywhere("bots.mjs", &args, backend).await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bots_on_sqlite() {
    bots(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bots_on_postgres() {
    bots(Backend::Postgres).await
}

/// auth-js reads the claims a custom access token hook added, with
/// getClaims(), after a sign-up, a sign-in and a refresh (issue 28).
async fn hooks(backend: Backend) {
    use castellan_core::hooks::Hook;
    let server = hook_server::HookServer::start().await;
    server.answer(Hook::CustomAccessToken, |p, _| {
        let mut claims = p["claims"].clone();
        claims["tenant_id"] = serde_json::json!("acme");
        (200, serde_json::json!({ "claims": claims }))
    });
    let on = server.clone();
    let t = common::spawn(backend, move |c| {
        on.turn_on(c, Hook::CustomAccessToken);
        c.mailer_autoconfirm = true;
    })
    .await;
    run_everywhere("hooks.mjs", &[t.base.as_str()], backend).await;
    // Every token auth-js was given went through the hook.
    let methods: Vec<String> = server
        .calls(Hook::CustomAccessToken)
        .iter()
        .map(|c| c["authentication_method"].as_str().unwrap().to_string())
        .collect();
    assert!(
        methods.contains(&"token_refresh".to_string()),
        "{methods:?}"
    );
    assert!(methods.contains(&"password".to_string()), "{methods:?}");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_on_sqlite() {
    hooks(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_on_postgres() {
    hooks(Backend::Postgres).await
}

/// Passkeys in Chromium with a virtual authenticator: auth-js in a page on
/// loopback registers one after a sign-up, signs in with it alone, lists
/// and renames it; a second past the maximum, a challenge answered twice,
/// a replayed assertion and a deleted passkey are refused; a WebAuthn
/// factor registers and raises a password sign-in to aal2 (issue 29).
async fn passkeys(backend: Backend) {
    // The page's port, chosen before castellan starts: it is the relying
    // party's origin.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let t = common::spawn(backend, move |c| {
        c.mailer_autoconfirm = true;
        common::passkeys_on(c, "localhost", &format!("http://localhost:{port}"), 1);
        c.mfa.webauthn_enroll_enabled = true;
        c.mfa.webauthn_verify_enabled = true;
    })
    .await;
    let port = port.to_string();
    let key = t.service_key();
    run_everywhere("passkeys.mjs", &[t.base.as_str(), &port, &key], backend).await;
    let created = "SELECT count(*) FROM audit_log_entries WHERE CAST(payload AS TEXT) LIKE $1";
    assert_eq!(t.count_by_str(created, "%passkey_created%").await, 2);
    let left = "SELECT count(*) FROM webauthn_credentials WHERE friendly_name <> $1";
    assert_eq!(t.count_by_str(left, "").await, 0);
    let factors =
        "SELECT count(*) FROM mfa_factors WHERE status = 'verified' AND friendly_name = $1";
    assert_eq!(t.count_by_str(factors, "This browser key").await, 2);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passkeys_on_sqlite() {
    passkeys(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passkeys_on_postgres() {
    passkeys(Backend::Postgres).await
}

/// The admin console in Chromium (issue 34): an admin signs in, finds a
/// user with hostile metadata, bans and unbans them, ends their session,
/// lowers a rate limit, sends a dead invitation again, adds and promotes a
/// signing key and reads the health page; a change without the CSRF token
/// is refused. Screenshots of each page go to target/tmp/console-screens.
async fn console(backend: Backend) {
    let sink = SmtpSink::start().await;
    let port = sink.port;
    let t = common::spawn(backend, move |c| {
        c.console_enabled = true;
        c.smtp.host = Some("127.0.0.1".into());
        c.smtp.port = port;
        c.smtp.admin_email = Some("auth@castellan.test".into());
        c.mailer.max_attempts = 1;
    })
    .await;
    // One dead invitation for each run of the script (root, prefixed): the
    // mail server refused their one attempt, and takes mail again now.
    sink.refuse(true);
    for tag in ["root", "prefixed"] {
        let body = serde_json::json!({ "email": format!("dead-{tag}@example.com") });
        let r = t.admin(reqwest::Method::POST, "/invite", Some(body)).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while t
        .admin(reqwest::Method::GET, "/admin/queues", None)
        .await
        .body[0]["dead"]
        != 2
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the invitations never died"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    sink.refuse(false);
    let shots = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/tmp/console-screens")
        .join(format!("{backend:?}").to_lowercase());
    let shots = shots.to_string_lossy().into_owned();
    let key = t.service_key();
    run_everywhere("console.mjs", &[t.base.as_str(), &key, &shots], backend).await;
    // Each run's session ending was the admin's, and audited as such.
    let ended = "SELECT count(*) FROM audit_log_entries WHERE CAST(payload AS TEXT) LIKE $1";
    assert!(t.count_by_str(ended, "%\"logout\"%").await >= 2);
    assert_eq!(t.count_by_str(ended, "%\"job_retried\"%").await, 2);
    let banned = "SELECT count(*) FROM users WHERE email LIKE $1 AND banned_until IS NOT NULL";
    assert_eq!(t.count_by_str(banned, "victim-%").await, 0);
    // Both invitations went out once each, when sent again.
    for tag in ["root", "prefixed"] {
        sink.wait_for(&format!("dead-{tag}@example.com"), 1).await;
        assert_eq!(sink.count_to(&format!("dead-{tag}@example.com")), 1);
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_on_sqlite() {
    console(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_on_postgres() {
    console(Backend::Postgres).await
}

/// castellan as an OpenID provider for libraries nobody here wrote:
/// `program script <issuer> <service_role key>` against a server whose
/// issuer is its own `/auth/v1` address (discovery checks it), with an
/// ES256 key to sign ID tokens.
async fn run_provider_client(backend: Backend, program: &str, script: &str) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let issuer = format!("http://127.0.0.1:{port}/auth/v1");
    let t = common::spawn(backend, |c| {
        c.port = port;
        c.jwt.issuer = Some(issuer.clone());
        c.jwt.keys = Some(serde_json::json!([generate(KeyKind::Es256)]).to_string());
        c.oauth_server = Some(castellan_core::config::OAuthServerConfig {
            authorization_path: "/consent".into(),
            ..Default::default()
        });
    })
    .await;
    // A path is the test folder's (its virtual environment); a name, the PATH's.
    let exe = match program.contains('/') {
        true => dir.join(program),
        false => std::path::PathBuf::from(program),
    };
    let out = tokio::process::Command::new(exe)
        .arg(script)
        .arg(&issuer)
        .arg(t.service_key())
        .current_dir(&dir)
        .output()
        .await
        .unwrap_or_else(|e| panic!("{program} runs: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("ok "),
        "{script} failed on {backend:?}:\n{stdout}\n{stderr}"
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openid_client_on_sqlite() {
    run_provider_client(Backend::Sqlite, "node", "oidc.mjs").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openid_client_on_postgres() {
    run_provider_client(Backend::Postgres, "node", "oidc.mjs").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authlib_on_postgres() {
    run_provider_client(Backend::Postgres, ".venv/bin/python", "oidc_authlib.py").await
}
