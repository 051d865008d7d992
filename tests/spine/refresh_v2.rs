//! v2 refresh tokens (issue 13): stateless, HMAC-signed by the session's own
//! key, with GoTrue's rules for retries, reuse and concurrency, and the
//! upgrade of legacy sessions at their next refresh.

use std::collections::HashSet;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use castellan_core::crypto::refresh;
use serde_json::json;
use sha2::Digest;
use uuid::Uuid;

use crate::both;
use crate::common::{self, Backend, TestServer, claims};

async fn counter(t: &TestServer, session: Uuid) -> Option<i64> {
    castellan_core::on!(pool t.pool(), p => sqlx::query_scalar(
        "SELECT refresh_token_counter FROM sessions WHERE id = $1").bind(session).fetch_one(p).await.unwrap())
}

fn session_of(access_token: &str) -> Uuid {
    claims(access_token)["session_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// The same token with its counter replaced (and the checksum fixed), so
/// only the signature can refuse it.
fn with_counter(token: &str, n: u8) -> String {
    let mut raw = B64.decode(token).unwrap();
    raw[17] = n;
    let end = raw.len() - 4;
    let sum = sha2::Sha256::digest(&raw[..end]);
    raw[end..].copy_from_slice(&sum[..4]);
    B64.encode(raw)
}

both!(v2_tokens_rotate_retry_and_detect_reuse, |_| {}, |t| {
    let s = t.new_session("v2@example.com", "secret123").await;
    let t0 = s["refresh_token"].as_str().unwrap().to_string();
    let sid = session_of(s["access_token"].as_str().unwrap());
    let parsed = refresh::parse(&t0).expect("a v2 token");
    assert_eq!((parsed.session_id, parsed.counter), (sid, 0));
    assert_eq!(counter(&t, sid).await, Some(0));
    // Nothing at rest that could be presented.
    assert_eq!(
        t.count_by_uuid(
            "SELECT count(*) FROM refresh_tokens WHERE session_id = $1",
            sid
        )
        .await,
        0
    );

    let t1 = t.rotate(&t0).await;
    assert_eq!(refresh::parse(&t1).unwrap().counter, 1);
    assert_eq!(counter(&t, sid).await, Some(1));
    // The token just before the current one (a lost answer) gets the current one.
    let again = t.refresh(&t0).await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.body["refresh_token"], t1.as_str());
    assert_eq!(counter(&t, sid).await, Some(1), "a retry does not advance");

    let t2 = t.rotate(&t1).await;
    let access = t.refresh(&t2).await.body["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    // Signed with the session's key but ahead of its counter (a database
    // restored from a backup, say): not issued here.
    let key: String = castellan_core::on!(pool t.pool(), p => sqlx::query_scalar(
        "SELECT refresh_token_hmac_key FROM sessions WHERE id = $1").bind(sid).fetch_one(p).await.unwrap());
    let ahead = refresh::encode(&key, sid, 9).unwrap();
    t.refresh(&ahead)
        .await
        .assert_error(400, "validation_failed");
    // A forged signature (another key, or a changed counter): unknown.
    let foreign = refresh::encode(&refresh::new_key(), sid, 3).unwrap();
    t.refresh(&foreign)
        .await
        .assert_error(400, "refresh_token_not_found");
    t.refresh(&with_counter(&t1, 3))
        .await
        .assert_error(400, "refresh_token_not_found");
    let unknown = refresh::encode(&refresh::new_key(), Uuid::new_v4(), 0).unwrap();
    t.refresh(&unknown)
        .await
        .assert_error(400, "refresh_token_not_found");

    // t0 is two behind and the reuse interval is 0: a reuse, so the session ends.
    t.refresh(&t0)
        .await
        .assert_error(400, "refresh_token_already_used");
    assert_eq!(
        t.count_by_uuid("SELECT count(*) FROM sessions WHERE id = $1", sid)
            .await,
        0,
        "the session is over"
    );
    t.refresh(&t2)
        .await
        .assert_error(400, "refresh_token_not_found");
    t.get_user(&access)
        .await
        .assert_error(403, "session_not_found");
    let actions = t.audit_actions(s["user"]["id"].as_str().unwrap()).await;
    assert_eq!(
        actions.iter().filter(|a| *a == "token_refreshed").count(),
        4
    );
    assert_eq!(actions.iter().filter(|a| *a == "token_revoked").count(), 0);
});

both!(
    v2_reuse_within_the_interval_gets_the_current_token,
    |c| c.refresh_token_reuse_interval = std::time::Duration::from_secs(60),
    |t| {
        let s = t.new_session("v2i@example.com", "secret123").await;
        let t0 = s["refresh_token"].as_str().unwrap().to_string();
        let t1 = t.rotate(&t0).await;
        let t2 = t.rotate(&t1).await;
        let r = t.refresh(&t0).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(
            r.body["refresh_token"],
            t2.as_str(),
            "concurrent tabs converge"
        );
    }
);

both!(
    v2_reuse_without_rotation_fails_but_keeps_the_session,
    |c| c.refresh_token_rotation_enabled = false,
    |t| {
        let s = t.new_session("v2n@example.com", "secret123").await;
        let t0 = s["refresh_token"].as_str().unwrap().to_string();
        let t1 = t.rotate(&t0).await;
        let t2 = t.rotate(&t1).await;
        t.refresh(&t0)
            .await
            .assert_error(400, "refresh_token_already_used");
        assert_eq!(
            t.refresh(&t2).await.status,
            200,
            "the live token still works"
        );
    }
);

both!(v2_concurrent_refreshes_of_one_token, |_| {}, |t| {
    let s = t.new_session("v2c@example.com", "secret123").await;
    let t0 = s["refresh_token"].as_str().unwrap().to_string();
    let sid = session_of(s["access_token"].as_str().unwrap());
    let requests = (0..20).map(|_| {
        t.http
            .post(t.url("/token?grant_type=refresh_token"))
            .json(&json!({ "refresh_token": t0 }))
    });
    let replies = common::at_once(requests).await;
    let mut issued = HashSet::new();
    for r in &replies {
        assert_eq!(r.status, 200, "the first rotation or its retry: {}", r.text);
        issued.insert(r.body["refresh_token"].as_str().unwrap().to_string());
    }
    assert_eq!(issued.len(), 1, "every caller got the one new token");
    assert_eq!(counter(&t, sid).await, Some(1));
});

// Rotations after the first are decided on what the last one left in the
// process's cache; a ban, a sign-out or an idle session is obeyed at once.
both!(
    cached_rotations_obey_every_change_at_once,
    |c| c.sessions_inactivity_timeout = Some(std::time::Duration::from_secs(3600)),
    |t| {
        let s = t.new_session("cached@example.com", "secret123").await;
        let sid = session_of(s["access_token"].as_str().unwrap());
        let mut token = s["refresh_token"].as_str().unwrap().to_string();
        for n in 1..=3 {
            token = t.rotate(&token).await;
            assert_eq!(refresh::parse(&token).unwrap().counter, n);
            assert_eq!(counter(&t, sid).await, Some(n));
        }
        let path = format!("/admin/users/{}", s["user"]["id"].as_str().unwrap());
        let ban = t
            .admin(
                reqwest::Method::PUT,
                &path,
                Some(json!({"ban_duration": "1h"})),
            )
            .await;
        assert_eq!(ban.status, 200, "{}", ban.text);
        t.refresh(&token).await.assert_error(400, "user_banned");
        assert_eq!(counter(&t, sid).await, Some(3), "nothing written");

        let s = t.new_session("ended@example.com", "secret123").await;
        let access = s["access_token"].as_str().unwrap().to_string();
        let token = t
            .rotate(&t.rotate(s["refresh_token"].as_str().unwrap()).await)
            .await;
        let out = t
            .request(reqwest::Method::POST, "/logout", Some(&access), None)
            .await;
        assert_eq!(out.status, 204, "{}", out.text);
        t.refresh(&token)
            .await
            .assert_error(400, "refresh_token_not_found");

        let s = t.new_session("idle@example.com", "secret123").await;
        let token = t
            .rotate(&t.rotate(s["refresh_token"].as_str().unwrap()).await)
            .await;
        t.clock().advance(std::time::Duration::from_secs(3601));
        let r = t.refresh(&token).await;
        r.assert_error(400, "session_expired");
        assert_eq!(
            r.body["msg"],
            "Invalid Refresh Token: Session Expired (Inactivity)"
        );
    }
);

both!(
    v2_session_keys_are_sealed_at_rest,
    |c| {
        let keys = [("k1".to_string(), rand::random::<[u8; 32]>())].into();
        c.db_encryption =
            castellan_core::crypto::at_rest::DbEncryption::new(Some("k1".into()), keys);
    },
    |t| {
        let s = t.new_session("sealed@example.com", "secret123").await;
        let t0 = s["refresh_token"].as_str().unwrap().to_string();
        let sid = session_of(s["access_token"].as_str().unwrap());
        let stored: String = castellan_core::on!(pool t.pool(), p => sqlx::query_scalar(
            "SELECT refresh_token_hmac_key FROM sessions WHERE id = $1").bind(sid).fetch_one(p).await.unwrap());
        let sealed: serde_json::Value = serde_json::from_str(&stored).expect("a sealed value");
        assert_eq!(
            (sealed["key_id"].as_str(), sealed["alg"].as_str()),
            (Some("k1"), Some("aes-gcm-hkdf"))
        );
        // What the table holds does not sign the session's tokens.
        assert!(!refresh::parse(&t0).unwrap().signed_by(&stored));
        let t1 = t.rotate(&t0).await;
        let r = t.refresh(&t1).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
);

/// A session started on legacy tokens moves to v2 at its next refresh once
/// v2 is on: the legacy token is spent, later refreshes are v2.
async fn legacy_sessions_upgrade(backend: Backend) {
    let (db, _dir) = common::fresh_database(backend).await;
    let start = |version: u8| {
        let mut cfg = common::test_config(db.clone());
        cfg.refresh_token_algorithm_version = Some(version);
        castellan::start(cfg)
    };
    let old = start(1).await.unwrap();
    let base = format!("http://{}", old.addr);
    let http = reqwest::Client::new();
    let body = json!({"email": "up@example.com", "password": "secret123"});
    let s = common::read(
        http.post(format!("{base}/signup"))
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    let legacy = s.body["refresh_token"].as_str().unwrap().to_string();
    assert_eq!(legacy.len(), 12);
    old.stop().await;

    let new = start(2).await.unwrap();
    let base = format!("http://{}", new.addr);
    let refresh = |token: String| {
        let http = http.clone();
        let url = format!("{base}/token?grant_type=refresh_token");
        async move {
            common::read(
                http.post(url)
                    .json(&json!({ "refresh_token": token }))
                    .send()
                    .await
                    .unwrap(),
            )
            .await
        }
    };
    let r = refresh(legacy.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v2 = r.body["refresh_token"].as_str().unwrap().to_string();
    assert_eq!(refresh::parse(&v2).unwrap().counter, 0);
    let r = refresh(v2.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        refresh::parse(r.body["refresh_token"].as_str().unwrap())
            .unwrap()
            .counter,
        1
    );
    let (revoked, live): (i64, i64) = castellan_core::on!(pool new.store.pool(), p => sqlx::query_as(
        "SELECT (SELECT count(*) FROM refresh_tokens WHERE revoked = true), (SELECT count(*) FROM refresh_tokens WHERE revoked = false)")
        .fetch_one(p).await.unwrap());
    assert_eq!(
        (revoked, live),
        (1, 0),
        "the legacy token is spent, no new rows"
    );
    // The spent legacy token, presented again later, is a reuse: the session ends.
    let r = refresh(legacy).await;
    r.assert_error(400, "refresh_token_already_used");
    refresh(v2)
        .await
        .assert_error(400, "refresh_token_not_found");
    new.stop().await;
    common::drop_database(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_sessions_upgrade_on_sqlite() {
    legacy_sessions_upgrade(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_sessions_upgrade_on_postgres() {
    legacy_sessions_upgrade(Backend::Postgres).await
}
