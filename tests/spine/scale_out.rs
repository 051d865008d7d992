//! Scale-out (issue 35): three API processes (`castellan serve
//! --no-workers`) and two workers on one PostgreSQL, behind Debian's nginx
//! run with the shipped `nginx/castellan.conf` (only its addresses changed).
//! A client is limited as one server would limit it; a logout through one
//! process is refused by the others at once; a rolling restart under load
//! answers every request, none with a 5xx; workers started with 200 mails
//! queued deliver each once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::{self, Backend, read};
use crate::nginx::{self, free_port};
use crate::smtp_sink::SmtpSink;

/// The cluster's processes and how to start them again.
struct Cluster {
    url: String,
    env: Vec<(String, String)>,
    ports: Vec<u16>,
    apis: Vec<tokio::process::Child>,
}

impl Cluster {
    async fn api(&self, port: u16) -> tokio::process::Child {
        let port = port.to_string();
        let mut env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        env.push(("PORT", &port));
        let args = ["serve", "--no-workers"];
        common::castellan_process(&args, &self.url, &env).await.0
    }

    async fn worker(&self) -> tokio::process::Child {
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        common::castellan_process(&["worker"], &self.url, &env)
            .await
            .0
    }

    /// Stops API process `i` with SIGTERM and starts it again on its port,
    /// returning once its `/ready` says so.
    async fn restart(&mut self, i: usize, http: &reqwest::Client) {
        let pid = self.apis[i].id().expect("running").to_string();
        let killed = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(killed.success());
        let stopped = tokio::time::timeout(Duration::from_secs(30), self.apis[i].wait()).await;
        assert!(stopped.expect("stops within 30 s").unwrap().success());
        self.apis[i] = self.api(self.ports[i]).await;
        let ready = format!("http://127.0.0.1:{}/ready", self.ports[i]);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !matches!(http.get(&ready).send().await, Ok(r) if r.status() == 200) {
            assert!(Instant::now() < deadline, "process {i} never ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// What a load loop saw: every answer's status, or the transport error.
type Seen = Arc<Mutex<Vec<Result<u16, String>>>>;

/// Signs in, reads the user and refreshes, again and again, until `stop`.
async fn load(base: String, email: String, stop: Arc<AtomicBool>, seen: Seen) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let note = |r: Result<reqwest::Response, reqwest::Error>| match r {
        Ok(r) => Ok(r),
        Err(e) => {
            seen.lock().unwrap().push(Err(e.to_string()));
            Err(())
        }
    };
    while !stop.load(Ordering::Relaxed) {
        let password = json!({"email": email, "password": "correct-horse-9"});
        let sent = http
            .post(format!("{base}/token?grant_type=password"))
            .json(&password)
            .send()
            .await;
        let Ok(r) = note(sent) else { continue };
        let signed = read(r).await;
        seen.lock().unwrap().push(Ok(signed.status.as_u16()));
        let (Some(access), Some(refresh)) = (
            signed.body["access_token"].as_str(),
            signed.body["refresh_token"].as_str(),
        ) else {
            continue;
        };
        let user = http.get(format!("{base}/user")).bearer_auth(access).send();
        if let Ok(r) = note(user.await) {
            seen.lock().unwrap().push(Ok(r.status().as_u16()));
        }
        let body = json!({ "refresh_token": refresh });
        let url = format!("{base}/token?grant_type=refresh_token");
        if let Ok(r) = note(http.post(url).json(&body).send().await) {
            seen.lock().unwrap().push(Ok(r.status().as_u16()));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_api_processes_behind_nginx_behave_as_one_server() {
    let (db, _) = common::fresh_database(Backend::Postgres).await;
    let castellan_core::config::DatabaseUrl::Postgres(url) = &db else {
        unreachable!()
    };
    let sink = SmtpSink::start().await;
    let env = [
        ("GOTRUE_MAILER_AUTOCONFIRM", "true"),
        ("GOTRUE_RATE_LIMIT_VERIFY", "30"),
        ("GOTRUE_RATE_LIMIT_EMAIL_SENT", "100000"),
        ("GOTRUE_SMTP_HOST", "127.0.0.1"),
        ("GOTRUE_SMTP_PORT", &sink.port.to_string()),
    ];
    let mut cluster = Cluster {
        url: url.clone(),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ports: (0..3).map(|_| free_port()).collect(),
        apis: Vec::new(),
    };
    for i in 0..3 {
        let api = cluster.api(cluster.ports[i]).await;
        cluster.apis.push(api);
    }
    let dir = tempfile::tempdir().unwrap();
    let listen = free_port();
    let _nginx = nginx::start(dir.path(), listen, &cluster.ports).await;
    let base = format!("http://127.0.0.1:{listen}");
    let direct = |i: usize| format!("http://127.0.0.1:{}", cluster.ports[i]);
    let http = reqwest::Client::new();
    let admin = common::process_admin_key(&db);

    // One client's wrong guesses, spread by nginx over three processes: the
    // limit of one server.
    let guess = json!({"type": "signup", "email": "nobody@example.com", "token": "123456"});
    let mut allowed = 0;
    for _ in 0..120 {
        let r = http.post(format!("{base}/verify")).json(&guess).send();
        let r = read(r.await.unwrap()).await;
        match r.status.as_u16() {
            429 => r.assert_error(429, "over_request_rate_limit"),
            _ => allowed += 1,
        }
    }
    assert!((30..=31).contains(&allowed), "{allowed} of 120 let through");

    // A session ended through one process is refused by the others.
    let email = "scaled@example.com";
    let signup = json!({"email": email, "password": "correct-horse-9"});
    let r = read(
        http.post(format!("{base}/signup"))
            .json(&signup)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let access = r.body["access_token"].as_str().unwrap().to_string();
    for i in 0..3 {
        let r = http
            .get(format!("{}/user", direct(i)))
            .bearer_auth(&access)
            .send();
        assert_eq!(r.await.unwrap().status(), 200, "process {i}");
    }
    let out = http
        .post(format!("{}/logout", direct(0)))
        .bearer_auth(&access)
        .send();
    assert_eq!(out.await.unwrap().status(), 204);
    for i in 1..3 {
        let r = http
            .get(format!("{}/user", direct(i)))
            .bearer_auth(&access)
            .send();
        let r = read(r.await.unwrap()).await;
        r.assert_error(403, "session_not_found");
    }

    // A rolling restart under load: every request answered, none a 5xx.
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Seen = Arc::default();
    let loads: Vec<_> = (0..4)
        .map(|_| tokio::spawn(load(base.clone(), email.into(), stop.clone(), seen.clone())))
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    for i in 0..3 {
        cluster.restart(i, &http).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for l in loads {
        l.await.unwrap();
    }
    let seen = seen.lock().unwrap().clone();
    let failed: Vec<&Result<u16, String>> = seen
        .iter()
        .filter(|s| !matches!(s, Ok(status) if *status < 500))
        .collect();
    assert!(seen.len() > 100, "{} requests under load", seen.len());
    assert!(
        failed.is_empty(),
        "{} of {}: {failed:?}",
        failed.len(),
        seen.len()
    );
    eprintln!(
        "rolling restart: {} requests answered, none a 5xx",
        seen.len()
    );

    // 200 invitations queued with no worker running, then two workers:
    // each delivered once.
    for n in 0..200 {
        let invite = json!({"email": format!("invited-{n}@example.com")});
        let r = http
            .post(format!("{base}/invite"))
            .bearer_auth(&admin)
            .json(&invite);
        let r = read(r.send().await.unwrap()).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sink.all().len(), 0, "no worker runs yet");
    let _workers = [cluster.worker().await, cluster.worker().await];
    let deadline = Instant::now() + Duration::from_secs(60);
    while sink.all().len() < 200 {
        assert!(
            Instant::now() < deadline,
            "{} of 200 delivered",
            sink.all().len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(sink.all().len(), 200, "each delivered once");
    for n in 0..200 {
        assert_eq!(sink.count_to(&format!("invited-{n}@example.com")), 1);
    }
    common::drop_database(&db).await;
}
