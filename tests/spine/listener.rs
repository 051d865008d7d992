//! Slow and stalled clients (issue 9, defects 9 and 10): a request's headers
//! have a deadline, open connections are bounded, and a shutdown waits a
//! grace period and no longer.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{self, Backend};

/// A connection that sent half a request's headers and then stalls.
async fn stalled(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: castellan\r\nX-Slow: ")
        .await
        .unwrap();
    s
}

/// Reads until the server closes the connection; what it sent.
async fn until_closed(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the server never closed the connection");
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_headers_are_cut_off_and_connections_are_bounded() {
    let t = common::spawn(Backend::Sqlite, |c| {
        c.listen.header_read_timeout = Duration::from_millis(500);
        c.listen.max_connections = 4;
    })
    .await;
    let mut slow = Vec::new();
    for _ in 0..4 {
        slow.push(stalled(t.server.addr).await);
    }
    // Every slot is held by a stalled client; this request is served once
    // their deadline frees the slots, not never.
    let r = t.http.get(t.url("/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    for s in &mut slow {
        let answer = until_closed(s).await;
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
            "{answer}"
        );
    }
    let metrics = t.http.get(t.url("/metrics")).send().await.unwrap();
    let text = metrics.text().await.unwrap();
    assert!(
        text.contains("castellan_http_connections"),
        "the gauge is exported"
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_a_stalled_client_no_longer_than_the_grace() {
    let t = common::spawn(Backend::Sqlite, |c| {
        c.listen.header_read_timeout = Duration::from_secs(120);
        c.listen.shutdown_grace = Duration::from_millis(300);
    })
    .await;
    let addr = t.server.addr;
    let mut slow = stalled(addr).await;
    // Other clients are served meanwhile.
    assert_eq!(
        t.http.get(t.url("/health")).send().await.unwrap().status(),
        200
    );
    let started = Instant::now();
    let stopped = tokio::time::timeout(Duration::from_secs(60), t.stop()).await;
    assert!(stopped.is_ok(), "stop waited on the stalled client");
    eprintln!(
        "stopped in {:?} with a client stalled mid-headers",
        started.elapsed()
    );
    assert_eq!(until_closed(&mut slow).await, "");
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no longer listening"
    );
}
