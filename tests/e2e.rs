//! The official `@supabase/auth-js` client (pinned in tests/e2e) against a
//! real castellan on each database. Needs Node and `npm ci` in tests/e2e,
//! which the README's test command does.

mod common;

use common::Backend;

/// Runs one scenario script of tests/e2e against a fresh server.
async fn run_client(backend: Backend, script: &str) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e");
    assert!(
        dir.join("node_modules/@supabase/auth-js").exists(),
        "@supabase/auth-js is not installed: run `npm ci` in tests/e2e (scripts/test.sh does)"
    );
    let t = common::spawn(backend, |c| c.anonymous_users_enabled = true).await;
    let out = tokio::process::Command::new("node")
        .arg(script)
        .arg(&t.base)
        .arg(t.service_key())
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
