//! SQLite on a full disk (issue 9, defect 3): writes fail cleanly while it
//! is full and succeed again within seconds of space being freed, without a
//! restart. The database lives on an 8 MiB tmpfs that only the server's own
//! mount namespace sees; the test reaches it through `/proc/<pid>/root`.

use std::io::Write;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::{self, read};

/// The mount namespace and tmpfs need root (as in CI and this project's
/// development machines).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

async fn signup(http: &reqwest::Client, base: &str, i: usize, padding: &str) -> common::Reply {
    let body = json!({"email": format!("disk{i}@example.com"), "password": "secret123",
        "data": {"padding": padding}});
    read(
        http.post(format!("{base}/signup"))
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_recovers_from_a_full_disk() {
    if !is_root() {
        eprintln!(
            "SKIPPED sqlite_recovers_from_a_full_disk: a tmpfs in a mount namespace needs root"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap().to_string();
    let db = format!("{d}/castellan.db");
    let script = "mount -t tmpfs -o size=8m tmpfs \"$CASTELLAN_DISK\" && exec \"$@\"";
    let wrapper = ["unshare", "-m", "sh", "-c", script, "sh"];
    let env = [
        ("CASTELLAN_DISK", d.as_str()),
        ("GOTRUE_MAILER_AUTOCONFIRM", "true"),
    ];
    let (child, base, _) = common::castellan_process_in(&wrapper, &["serve"], &db, &env).await;
    let http = reqwest::Client::new();
    // Below the metadata bound, large enough that each sign-up needs pages.
    let padding = "x".repeat(15_000);
    assert_eq!(signup(&http, &base, 0, &padding).await.status, 200);

    // Fill what is left of the disk.
    let ballast = format!("/proc/{}/root{d}/ballast", child.id().unwrap());
    let mut f = std::fs::File::create(&ballast).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while f.write_all(&chunk).and_then(|_| f.flush()).is_ok() {}
    drop(f);

    let mut refused = 0;
    for i in 1..=20 {
        let r = signup(&http, &base, i, &padding).await;
        assert!(r.status == 200 || r.status == 503, "{}", r.text);
        if r.status == 503 {
            assert_eq!(r.header("retry-after"), Some("1"));
            refused += 1;
        }
    }
    assert!(refused > 0, "a full disk refused no write");
    // Reads still answer, but the server is not ready to take writes.
    let ready = read(http.get(format!("{base}/ready")).send().await.unwrap()).await;
    assert_eq!(ready.status, 503, "{}", ready.text);
    assert_eq!(ready.body["storage"], "down", "{}", ready.text);
    assert_eq!(ready.body["database"], "up", "{}", ready.text);

    std::fs::remove_file(&ballast).unwrap();
    let freed = Instant::now();
    let mut i = 100;
    loop {
        i += 1;
        let r = signup(&http, &base, i, "").await;
        if r.status == 200 {
            break;
        }
        assert_eq!(r.status, 503, "{}", r.text);
        assert!(
            freed.elapsed() < Duration::from_secs(10),
            "writes still fail 10 s after space was freed: {}",
            r.text
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "writes recovered {:?} after space was freed",
        freed.elapsed()
    );
    let ready = read(http.get(format!("{base}/ready")).send().await.unwrap()).await;
    assert_eq!(ready.status, 200, "{}", ready.text);
    assert_eq!(ready.body["storage"], "up");
    for j in 0..10 {
        let r = signup(&http, &base, 1000 + j, "").await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let login = read(
        http.post(format!("{base}/token?grant_type=password"))
            .json(&json!({"email": "disk0@example.com", "password": "secret123"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(login.status, 200, "{}", login.text);
    drop(child);
}
