//! Email delivery across processes on one PostgreSQL database: separate
//! workers, a killed server, a budget shared by every process.

use serde_json::json;

use crate::common::{self, Backend, read};
use crate::smtp_sink::SmtpSink;

async fn pg() -> (castellan_core::config::DatabaseUrl, String) {
    let (db, _) = common::fresh_database(Backend::Postgres).await;
    let castellan_core::config::DatabaseUrl::Postgres(url) = &db else {
        unreachable!()
    };
    let url = url.clone();
    (db, url)
}

async fn signup(http: &reqwest::Client, base: &str, email: &str) -> common::Reply {
    read(
        http.post(format!("{base}/signup"))
            .json(&json!({"email": email, "password": "secret123"}))
            .send()
            .await
            .unwrap(),
    )
    .await
}

/// Jobs queued by a server that is then killed are delivered by the workers
/// started afterwards, and two workers deliver each message once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_mail_survives_a_kill_and_two_workers_send_each_once() {
    let sink = SmtpSink::start().await;
    let port = sink.port.to_string();
    let (db, url) = pg().await;
    let smtp = [
        ("GOTRUE_SMTP_HOST", "127.0.0.1"),
        ("GOTRUE_SMTP_PORT", port.as_str()),
        ("GOTRUE_SMTP_ADMIN_EMAIL", "auth@castellan.test"),
    ];
    let (mut api, base) = common::castellan_process(&["serve", "--no-workers"], &url, &smtp).await;
    let http = reqwest::Client::new();
    let emails: Vec<String> = (0..12).map(|i| format!("queued{i}@example.com")).collect();
    for e in &emails {
        assert_eq!(signup(&http, &base, e).await.status, 200);
    }
    api.kill().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(sink.all().is_empty(), "no worker ran: nothing was sent yet");
    let (_w1, _) = common::castellan_process(&["worker"], &url, &smtp).await;
    let (_w2, _) = common::castellan_process(&["worker"], &url, &smtp).await;
    for e in &emails {
        sink.wait_for(e, 1).await;
    }
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    for e in &emails {
        assert_eq!(sink.count_to(e), 1, "{e} got exactly one mail");
    }
    common::drop_database(&db).await;
}

/// SMS a server queued while the provider was down, the server then
/// killed, are delivered by workers started afterwards: each once, with the
/// code the server stored. Two workers race for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_sms_survive_a_kill_and_two_workers_send_each_once() {
    let fake = crate::sms_provider::FakeProvider::start(503, json!({"message": "down"})).await;
    let (db, url) = pg().await;
    let env = [
        ("GOTRUE_EXTERNAL_PHONE_ENABLED", "true"),
        ("GOTRUE_SMS_PROVIDER", "twilio"),
        ("GOTRUE_SMS_TWILIO_ACCOUNT_SID", "AC1"),
        ("GOTRUE_SMS_TWILIO_AUTH_TOKEN", "tok"),
        ("GOTRUE_SMS_TWILIO_MESSAGE_SERVICE_SID", "MG1"),
        ("CASTELLAN_SMS_API_URL", fake.base.as_str()),
        ("CASTELLAN_EMAIL_RETRY_MIN", "200ms"),
    ];
    let (mut api, base) = common::castellan_process(&["serve", "--no-workers"], &url, &env).await;
    let http = reqwest::Client::new();
    let phones: Vec<String> = (0..6).map(|i| format!("1555002000{i}")).collect();
    for p in &phones {
        let r = read(
            http.post(format!("{base}/otp"))
                .json(&json!({"phone": p}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    // Each request tried once, found the provider down, and left the rest to the queue.
    assert_eq!(fake.wait_for(phones.len()).await.len(), phones.len());
    api.kill().await.unwrap();
    fake.answer(201, json!({"sid": "SM1", "status": "queued"}));
    let (_w1, _) = common::castellan_process(&["worker"], &url, &env).await;
    let (_w2, _) = common::castellan_process(&["worker"], &url, &env).await;
    fake.wait_for(2 * phones.len()).await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let got = fake.received();
    for p in &phones {
        let to = format!("+{p}");
        let bodies: Vec<_> = got
            .iter()
            .filter(|r| r.form["To"] == to)
            .map(|r| &r.form["Body"])
            .collect();
        assert_eq!(
            bodies.len(),
            2,
            "{p}: the server's attempt and one delivery"
        );
        assert_eq!(bodies[0], bodies[1], "{p}: the same code both times");
    }
    common::drop_database(&db).await;
}

/// GOTRUE_RATE_LIMIT_EMAIL_SENT holds across processes sharing the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_budget_is_shared_by_processes() {
    let sink = SmtpSink::start().await;
    let port = sink.port.to_string();
    let (db, url) = pg().await;
    let env = [
        ("GOTRUE_SMTP_HOST", "127.0.0.1"),
        ("GOTRUE_SMTP_PORT", port.as_str()),
        ("GOTRUE_RATE_LIMIT_EMAIL_SENT", "3"),
    ];
    let (_a, a) = common::castellan_process(&["serve"], &url, &env).await;
    let (_b, b) = common::castellan_process(&["serve"], &url, &env).await;
    let http = reqwest::Client::new();
    let mut statuses = Vec::new();
    for (i, base) in [&a, &b, &a, &b].iter().enumerate() {
        statuses.push(signup(&http, base, &format!("budget{i}@example.com")).await);
    }
    let codes: Vec<u16> = statuses.iter().map(|r| r.status.as_u16()).collect();
    assert_eq!(
        codes,
        [200, 200, 200, 429],
        "the fourth email exceeds the shared budget of 3"
    );
    statuses[3].assert_error(429, "over_email_send_rate_limit");
    for i in 0..3 {
        sink.wait_for(&format!("budget{i}@example.com"), 1).await;
    }
    common::drop_database(&db).await;
}

/// A message is rendered where it is queued: a worker configured with other
/// templates sends the queuing server's message (issue 9).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_send_the_message_the_server_rendered() {
    let sink = SmtpSink::start().await;
    let port = sink.port.to_string();
    let (db, url) = pg().await;
    let smtp = |subject: &'static str| {
        [
            ("GOTRUE_SMTP_HOST", "127.0.0.1"),
            ("GOTRUE_SMTP_PORT", port.as_str()),
            ("GOTRUE_SMTP_ADMIN_EMAIL", "auth@castellan.test"),
            ("GOTRUE_MAILER_SUBJECTS_CONFIRMATION", subject),
        ]
    };
    let server_env = smtp("Welcome from the server");
    let (mut api, base) =
        common::castellan_process(&["serve", "--no-workers"], &url, &server_env).await;
    let http = reqwest::Client::new();
    assert_eq!(
        signup(&http, &base, "rendered@example.com").await.status,
        200
    );
    api.kill().await.unwrap();
    let worker_env = smtp("Welcome from a worker");
    let (_w, _) = common::castellan_process(&["worker"], &url, &worker_env).await;
    let mail = sink.wait_for("rendered@example.com", 1).await;
    assert_eq!(mail.subject(), "Welcome from the server");
    common::drop_database(&db).await;
}

/// The embedded default as a process: `castellan serve` on a SQLite file,
/// after sign-ins have started sessions, delivers the magic links it queues.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_server_process_delivers_its_mail() {
    let sink = SmtpSink::start().await;
    let port = sink.port.to_string();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("mail.db").to_string_lossy().into_owned();
    let env = [
        ("GOTRUE_SMTP_HOST", "127.0.0.1"),
        ("GOTRUE_SMTP_PORT", port.as_str()),
        ("GOTRUE_SMTP_ADMIN_EMAIL", "auth@castellan.test"),
        ("GOTRUE_RATE_LIMIT_EMAIL_SENT", "1000"),
        ("GOTRUE_MAILER_AUTOCONFIRM", "true"),
    ];
    let (_api, base) = common::castellan_process(&["serve"], &db, &env).await;
    let http = reqwest::Client::new();
    let emails: Vec<String> = (0..20).map(|i| format!("lite{i}@example.com")).collect();
    for e in &emails {
        assert_eq!(signup(&http, &base, e).await.status, 200);
    }
    for e in &emails {
        let r = http
            .post(format!("{base}/otp"))
            .json(&json!({"email": e, "create_user": false}));
        assert_eq!(read(r.send().await.unwrap()).await.status, 200);
    }
    for e in &emails {
        sink.wait_for(e, 1).await;
    }
}

/// SIGTERM under load: every request the server accepted is answered in
/// full (new connections are refused once it stops accepting; none sees a
/// reset), it exits 0, and mail it queued but could not send (SMTP down) is
/// delivered once by the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_answers_every_request_and_loses_no_mail() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let sink = SmtpSink::start().await;
    sink.refuse(true);
    let port = sink.port.to_string();
    let (db, url) = pg().await;
    let env = [
        ("GOTRUE_SMTP_HOST", "127.0.0.1"),
        ("GOTRUE_SMTP_PORT", port.as_str()),
        ("GOTRUE_SMTP_ADMIN_EMAIL", "auth@castellan.test"),
        ("GOTRUE_RATE_LIMIT_EMAIL_SENT", "100000"),
        ("CASTELLAN_EMAIL_RETRY_MIN", "1s"),
        ("CASTELLAN_EMAIL_RETRY_MAX", "2s"),
    ];
    let (mut api, base) = common::castellan_process(&["serve"], &url, &env).await;
    // A fresh connection per request: a refused connect then means "no
    // longer accepting", never a request lost on a reused connection.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..6 {
        let (http, base, stop) = (http.clone(), base.clone(), stop.clone());
        clients.spawn(async move {
            let (mut answered, mut failed) = (Vec::new(), Vec::new());
            for i in 0.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let email = format!("term{c}-{i}@example.com");
                let sent = http
                    .post(format!("{base}/signup"))
                    .json(&json!({"email": email, "password": "secret123"}))
                    .send()
                    .await;
                match sent {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        match r.text().await {
                            Ok(_) => answered.push((email, status)),
                            Err(e) => failed.push(format!("{email}: body: {e:?}")),
                        }
                    }
                    // Refused: the listener is closed. Anything else is a
                    // request the server took and did not answer.
                    Err(e) if e.is_connect() => break,
                    Err(e) => failed.push(format!("{email}: {e:?}")),
                }
            }
            (answered, failed)
        });
    }
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let pid = api.id().expect("running").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let exit = tokio::time::timeout(std::time::Duration::from_secs(30), api.wait())
        .await
        .expect("castellan stops within 30 s of SIGTERM")
        .unwrap();
    assert!(exit.success(), "exit status {exit:?}");
    stop.store(true, Ordering::Relaxed);
    let (mut answered, mut failed) = (Vec::new(), Vec::new());
    while let Some(r) = clients.join_next().await {
        let (a, f) = r.unwrap();
        answered.extend(a);
        failed.extend(f);
    }
    assert!(failed.is_empty(), "requests cut off: {failed:#?}");
    assert!(answered.len() >= 6, "load ran: {} answers", answered.len());
    let codes: std::collections::BTreeSet<u16> = answered.iter().map(|(_, s)| *s).collect();
    assert_eq!(codes, [200].into(), "every answer a sign-up");
    assert!(sink.all().is_empty(), "SMTP was down: nothing sent yet");

    // The next start delivers every queued confirmation, once each.
    sink.refuse(false);
    let (_worker, _) = common::castellan_process(&["worker"], &url, &env).await;
    for (email, _) in &answered {
        sink.wait_for(email, 1).await;
    }
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    for (email, _) in &answered {
        assert_eq!(sink.count_to(email), 1, "{email} got exactly one mail");
    }
    common::drop_database(&db).await;
}
