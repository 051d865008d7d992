//! The database goes away and comes back (issue 9: an outage answered 500).
//! A TCP proxy on loopback stands between castellan and PostgreSQL, and the
//! test cuts it: every open connection dropped, new ones closed at once.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::common::{self, Backend};

/// A proxy to `upstream` that passes traffic while the flag is true.
async fn proxy(upstream: String) -> (SocketAddr, watch::Sender<bool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (flag, rx) = watch::channel(true);
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let mut up = rx.clone();
            if !*up.borrow() {
                continue;
            }
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let Ok(mut server) = TcpStream::connect(&upstream).await else {
                    return;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                    _ = up.wait_for(|v| !*v) => {}
                }
            });
        }
    });
    (addr, flag)
}

fn unavailable_count(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("castellan_unavailable_total{context=\"database\"}"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_is_503_with_retry_after_and_recovers() {
    // postgres://user@host:port/db: the host and port.
    let admin = common::pg_admin_url();
    let after_user = admin.rsplit_once('@').map_or(admin.as_str(), |(_, h)| h);
    let upstream = after_user.split('/').next().unwrap().to_string();
    let (addr, flag) = proxy(upstream.clone()).await;
    let t = common::spawn(Backend::Postgres, |c| {
        let castellan_core::config::DatabaseUrl::Postgres(url) = &mut c.database_url else {
            unreachable!()
        };
        *url = url.replace(&upstream, &addr.to_string());
    })
    .await;
    let s = t.new_session("down@example.com", "secret123").await;
    let refresh = s["refresh_token"].as_str().unwrap().to_string();
    let ready = t.request(reqwest::Method::GET, "/ready", None, None).await;
    assert_eq!(ready.status, 200, "{}", ready.text);

    flag.send(false).unwrap();
    // `/ready` names what is down (`/health` stays GoTrue's: 200).
    let ready = t.request(reqwest::Method::GET, "/ready", None, None).await;
    assert_eq!(ready.status, 503, "{}", ready.text);
    assert_eq!(ready.header("retry-after"), Some("1"));
    assert_eq!(ready.body["down"], serde_json::json!(["database"]));
    assert_eq!(ready.body["database"], "down");
    let health = t.request(reqwest::Method::GET, "/health", None, None).await;
    assert_eq!(health.status, 200);
    let r = t.refresh(&refresh).await;
    assert_eq!(r.status, 503, "{}", r.text);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.body["error_code"], "unexpected_failure");
    let r = t.login("down@example.com", "secret123").await;
    assert_eq!(r.status, 503, "{}", r.text);

    flag.send(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let fresh = loop {
        let r = t.refresh(&refresh).await;
        if r.status == 200 {
            break r;
        }
        assert_eq!(r.status, 503, "{}", r.text);
        assert!(Instant::now() < deadline, "never recovered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_ne!(fresh.body["refresh_token"], refresh.as_str());
    let ready = t.request(reqwest::Method::GET, "/ready", None, None).await;
    assert_eq!(
        (ready.status.as_u16(), &ready.body["status"]),
        (200, &serde_json::json!("ready"))
    );
    let metrics = t
        .request(reqwest::Method::GET, "/metrics", None, None)
        .await;
    assert!(unavailable_count(&metrics.text) >= 2.0, "{}", metrics.text);
    t.stop().await;
}
