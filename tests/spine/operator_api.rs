//! The admin API's operator routes the console added (issue 34): the job
//! queues (counts, dead jobs listed, sent again or discarded) and the
//! signing keys kept in the database (listed, added, promoted, retired).

use std::time::{Duration, Instant};

use base64::Engine;
use reqwest::Method;
use serde_json::{Value, json};

use crate::common::{self, Backend, TestServer};
use crate::smtp_sink::SmtpSink;

/// A server whose mail gets one attempt, to a sink on loopback.
async fn one_attempt(
    backend: Backend,
    _: impl FnOnce(&mut castellan_core::Config),
) -> (TestServer, SmtpSink) {
    crate::email::mail_server(backend, |c| c.mailer.max_attempts = 1).await
}

async fn queues(t: &TestServer) -> Value {
    let r = t.admin(Method::GET, "/admin/queues", None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.body
}

/// Waits for the email queue to count `dead` dead jobs.
async fn dead_jobs(t: &TestServer, dead: i64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while queues(t).await[0]["dead"] != dead {
        assert!(Instant::now() < deadline, "{}", queues(t).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn audited(t: &TestServer, action: &str) -> i64 {
    let like = format!("%\"{action}\"%");
    t.count_by_str(
        "SELECT count(*) FROM audit_log_entries WHERE CAST(payload AS TEXT) LIKE $1",
        &like,
    )
    .await
}

crate::both!(
    a_dead_job_is_listed_sent_again_or_discarded,
    one_attempt,
    |_| {},
    |t, sink| {
        let q = queues(&t).await;
        assert_eq!(
            q[0],
            json!({"queue": "email", "pending": 0, "retrying": 0, "dead": 0})
        );
        assert_eq!(q[1]["queue"], "sms");
        // The server refuses for now: the one attempt fails, and the job is dead.
        sink.refuse(true);
        assert_eq!(
            t.signup("late@example.com", "correct-horse-9").await.status,
            200
        );
        dead_jobs(&t, 1).await;
        let r = t.admin(Method::GET, "/admin/queues/email/jobs", None).await;
        assert_eq!(r.status, 200, "{}", r.text);
        let jobs = r.body.as_array().unwrap();
        assert_eq!(jobs.len(), 1, "{}", r.text);
        assert_eq!(
            (jobs[0]["attempts"].clone(), jobs[0]["max_attempts"].clone()),
            (json!(1), json!(1))
        );
        assert!(
            !r.text.contains("late@example.com"),
            "a job's contents stay sealed: {}",
            r.text
        );
        let id = jobs[0]["id"].as_str().unwrap().to_string();
        // Only dead jobs are settled; an unknown queue or state is named.
        let retry = |id: &str| format!("/admin/queues/email/jobs/{id}/retry");
        t.admin(Method::POST, &retry("nope"), None)
            .await
            .assert_error(404, "job_not_found");
        t.admin(Method::GET, "/admin/queues/fax/jobs", None)
            .await
            .assert_error(404, "queue_not_found");
        t.admin(Method::GET, "/admin/queues/email/jobs?state=lost", None)
            .await
            .assert_error(400, "validation_failed");

        // Sent again once the server is back: delivered, once.
        sink.refuse(false);
        let r = t.admin(Method::POST, &retry(&id), None).await;
        assert_eq!(r.status, 204, "{}", r.text);
        sink.wait_for("late@example.com", 1).await;
        dead_jobs(&t, 0).await;
        t.admin(Method::POST, &retry(&id), None)
            .await
            .assert_error(404, "job_not_found");
        assert_eq!(audited(&t, "job_retried").await, 1);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(sink.count_to("late@example.com"), 1);

        // Another dies and is discarded: its row is gone.
        sink.refuse(true);
        assert_eq!(
            t.signup("gone@example.com", "correct-horse-9").await.status,
            200
        );
        dead_jobs(&t, 1).await;
        let r = t
            .admin(Method::GET, "/admin/queues/email/jobs?state=dead", None)
            .await;
        let id = r.body[0]["id"].as_str().unwrap().to_string();
        let path = format!("/admin/queues/email/jobs/{id}");
        let r = t.admin(Method::DELETE, &path, None).await;
        assert_eq!(r.status, 204, "{}", r.text);
        dead_jobs(&t, 0).await;
        assert_eq!(t.email_jobs().await, 1, "only the delivered job is left");
        assert_eq!(audited(&t, "job_discarded").await, 1);
    }
);

fn kid_of(jwt: &str) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header: Value =
        serde_json::from_slice(&b64.decode(jwt.split('.').next().unwrap()).unwrap()).unwrap();
    header["kid"].as_str().unwrap_or_default().to_string()
}

async fn published(t: &TestServer) -> Vec<String> {
    let r = t
        .request(Method::GET, "/.well-known/jwks.json", None, None)
        .await;
    r.body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap_or_default().to_string())
        .collect()
}

crate::both!(
    signing_keys_are_added_promoted_and_retired,
    |c| c.mailer_autoconfirm = true,
    |t| {
        let r = t.admin(Method::GET, "/admin/keys", None).await;
        assert_eq!(r.body, json!([]), "{}", r.text);
        t.admin(Method::POST, "/admin/keys", Some(json!({"alg": "HS256"})))
            .await
            .assert_error(400, "validation_failed");
        // Added: published at once by this server, not signing yet.
        let r = t
            .admin(Method::POST, "/admin/keys", Some(json!({"alg": "ES256"})))
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        let kid = r.body["kid"].as_str().unwrap().to_string();
        assert!(published(&t).await.contains(&kid));
        let r = t.admin(Method::GET, "/admin/keys", None).await;
        assert_eq!(r.body[0]["kid"], kid.as_str());
        assert_eq!(
            (r.body[0]["alg"].clone(), r.body[0]["state"].clone()),
            (json!("ES256"), json!("verify"))
        );
        assert!(!r.text.contains("\"d\""), "no private part: {}", r.text);
        let s = t.new_session("keys@example.com", "correct-horse-9").await;
        assert_ne!(kid_of(s["access_token"].as_str().unwrap()), kid);

        // Promoted: new tokens carry it, and they are accepted.
        let promote = format!("/admin/keys/{kid}/promote");
        let r = t.admin(Method::POST, &promote, None).await;
        assert_eq!(r.status, 204, "{}", r.text);
        let s = t.login("keys@example.com", "correct-horse-9").await;
        let token = s.body["access_token"].as_str().unwrap();
        assert_eq!(kid_of(token), kid);
        assert_eq!(
            t.request(Method::GET, "/user", Some(token), None)
                .await
                .status,
            200
        );
        // The signing key cannot be retired; a second verify key can.
        t.admin(Method::POST, &format!("/admin/keys/{kid}/retire"), None)
            .await
            .assert_error(404, "key_not_found");
        let r = t
            .admin(Method::POST, "/admin/keys", Some(json!({"alg": "EdDSA"})))
            .await;
        let other = r.body["kid"].as_str().unwrap().to_string();
        assert!(published(&t).await.contains(&other));
        let r = t
            .admin(Method::POST, &format!("/admin/keys/{other}/retire"), None)
            .await;
        assert_eq!(r.status, 204, "{}", r.text);
        assert!(!published(&t).await.contains(&other));
        let actions = [
            "signing_key_added",
            "signing_key_promoted",
            "signing_key_retired",
        ];
        let counts = futures_util::future::join_all(actions.map(|a| audited(&t, a))).await;
        assert_eq!(counts, vec![2, 1, 1]);
    }
);

async fn audit(t: &TestServer, q: String) -> Vec<Value> {
    let r = t
        .admin(Method::GET, &format!("/admin/audit?{q}"), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.body.as_array().unwrap().clone()
}

// The audit log narrowed as an operator asks: by the user an entry was
// made by or about, by address, and by a time window.
crate::both!(
    the_audit_log_is_filtered_by_user_address_and_time,
    |c| {
        c.mailer_autoconfirm = true;
        c.rate_limits.header = Some("x-test-client".into());
    },
    |t| {
        let a = t
            .new_session("trail-a@example.com", "correct-horse-9")
            .await;
        let a_id = a["user"]["id"].as_str().unwrap().to_string();
        t.new_session("trail-b@example.com", "correct-horse-9")
            .await;
        let all = audit(&t, String::new()).await;
        let mine = audit(&t, format!("user={a_id}")).await;
        assert!(!mine.is_empty() && mine.len() < all.len(), "{mine:?}");
        assert!(
            mine.iter().all(|e| e.to_string().contains(&a_id)),
            "{mine:?}"
        );
        // The tests' address is loopback; none is elsewhere.
        assert_eq!(audit(&t, "ip=127.0.0".into()).await.len(), all.len());
        assert!(audit(&t, "ip=203.0.113.".into()).await.is_empty());
        // A window after everything holds nothing; one around now, all.
        let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
        let earlier = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
        let enc = |s: &str| s.replace('+', "%2B");
        assert!(audit(&t, format!("since={}", enc(&later))).await.is_empty());
        let window = audit(&t, format!("since={}&until={}", enc(&earlier), enc(&later))).await;
        assert_eq!(window.len(), all.len());
        // With GoTrue's search too.
        let logins = audit(&t, format!("user={a_id}&query=action:signedup")).await;
        assert_eq!(logins.len(), 1, "{logins:?}");
        for bad in ["user=nope", "since=yesterday"] {
            t.admin(Method::GET, &format!("/admin/audit?{bad}"), None)
                .await
                .assert_error(400, "validation_failed");
        }
    }
);

// What each bucket holds: the clients this process has seen in it.
crate::both!(
    rate_limit_usage_counts_the_clients_each_bucket_holds,
    |c| c.rate_limits.header = Some("x-test-client".into()),
    |t| {
        let usage = || t.admin(Method::GET, "/admin/rate_limits/usage", None);
        let before = usage().await;
        assert_eq!(before.status, 200, "{}", before.text);
        assert_eq!(before.body["verify"], 0, "{}", before.text);
        for client in ["a", "b", "c"] {
            let r = t
                .http
                .post(t.url("/verify"))
                .header("x-test-client", client)
                .json(&json!({"type": "signup", "email": "x@example.com", "token": "000000"}))
                .send()
                .await
                .unwrap();
            assert_ne!(r.status().as_u16(), 429);
        }
        let after = usage().await;
        assert_eq!(after.body["verify"], 3, "{}", after.text);
        assert_eq!(after.body["otp"], 0, "{}", after.text);
        let r = t
            .request(Method::GET, "/admin/rate_limits/usage", None, None)
            .await;
        r.assert_error(401, "no_authorization");
    }
);

// A user may hold any number of sessions: the admin sees the newest 1 000,
// the newest first.
crate::both!(
    a_user_with_many_sessions_is_listed_newest_first_and_bounded,
    |c| c.mailer_autoconfirm = true,
    |t| {
        let s = t.new_session("many@example.com", "correct-horse-9").await;
        let id = s["user"]["id"].as_str().unwrap().to_string();
        let newest = common::claims(s["access_token"].as_str().unwrap())["session_id"].clone();
        let bulk = match t.pool() {
            castellan_core::store::Pool::Pg(p) => sqlx::query(
                "INSERT INTO auth.sessions (id, user_id, created_at, updated_at, aal) \
                 SELECT gen_random_uuid(), u.id, now() - make_interval(secs => g), now(), 'aal1' \
                 FROM auth.users u, generate_series(1, 1005) g WHERE u.email = $1",
            )
            .bind("many@example.com")
            .execute(p)
            .await
            .unwrap()
            .rows_affected(),
            castellan_core::store::Pool::Lite(p) => sqlx::query(
                "WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < 1005) \
                 INSERT INTO sessions (id, user_id, aal) \
                 SELECT randomblob(16), u.id, 'aal1' FROM users u, g WHERE u.email = $1",
            )
            .bind("many@example.com")
            .execute(p)
            .await
            .unwrap()
            .rows_affected(),
        };
        assert_eq!(bulk, 1005);
        let r = t
            .admin(Method::GET, &format!("/admin/users/{id}/sessions"), None)
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        let listed = r.body.as_array().unwrap();
        assert_eq!(listed.len(), 1000);
        assert_eq!(listed[0]["id"], newest, "the newest first");
    }
);
