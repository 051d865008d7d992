use std::collections::HashSet;

use serde_json::json;
use uuid::Uuid;

use crate::both;
use crate::common::claims;

both!(password_grant_errors_all_look_alike, |_| {}, |t| {
    t.new_session("h@example.com", "secret123").await;
    let wrong = t.login("h@example.com", "wrong-one").await;
    let unknown = t.login("nobody@example.com", "secret123").await;
    for r in [&wrong, &unknown] {
        r.assert_error(400, "invalid_credentials");
        assert_eq!(r.body["msg"], "Invalid login credentials");
    }
    let ok = t.login("H@Example.com", "secret123").await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    // GoTrue's key is there, null, for a password that is fine (issue 26);
    // the refresh grant's answer has none.
    assert_eq!(ok.body.get("weak_password"), Some(&serde_json::Value::Null));
    let refreshed = t.refresh(ok.body["refresh_token"].as_str().unwrap()).await;
    assert_eq!(refreshed.status, 200, "{}", refreshed.text);
    assert!(refreshed.body.get("weak_password").is_none());
    let uid = ok.body["user"]["id"].as_str().unwrap().to_string();
    assert_eq!(
        t.audit_actions(&uid).await,
        vec!["user_signedup", "login", "login", "token_refreshed"]
    );
    assert_eq!(
        t.count_by_uuid(
            "SELECT count(*) FROM sessions WHERE user_id = $1",
            uid.parse().unwrap()
        )
        .await,
        2
    );
    t.post(
        "/token?grant_type=password",
        json!({"email": "h@example.com", "phone": "1555", "password": "x"}),
    )
    .await
    .assert_error(400, "validation_failed");
    t.post("/token?grant_type=password", json!({"password": "x"}))
        .await
        .assert_error(400, "validation_failed");
});

both!(
    weak_but_correct_password_signs_in_with_a_warning,
    |c| c.password.min_length = 12,
    |t| {
        t.new_session("i@example.com", "long-enough-pw").await;
        // A password set before the rules tightened (here: imported as a bcrypt hash).
        castellan_core::on!(pool t.pool(), p => sqlx::query("UPDATE users SET encrypted_password = $1 WHERE email = 'i@example.com'")
        .bind(bcrypt::hash("short-pw", 4).unwrap()).execute(p).await.unwrap().rows_affected());
        let r = t.login("i@example.com", "short-pw").await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.body["weak_password"]["reasons"], json!(["length"]));
        assert!(
            r.body["weak_password"]["message"]
                .as_str()
                .unwrap()
                .contains("12")
        );
    }
);

both!(banned_users_are_refused, |_| {}, |t| {
    let s = t.new_session("j@example.com", "secret123").await;
    let uid: Uuid = s["user"]["id"].as_str().unwrap().parse().unwrap();
    castellan_core::on!(pool t.pool(), p => sqlx::query("UPDATE users SET banned_until = $2 WHERE id = $1")
        .bind(uid).bind(chrono::Utc::now() + chrono::Duration::hours(1)).execute(p).await.unwrap().rows_affected());
    t.login("j@example.com", "secret123")
        .await
        .assert_error(400, "user_banned");
    t.refresh(s["refresh_token"].as_str().unwrap())
        .await
        .assert_error(400, "user_banned");
    t.request(
        reqwest::Method::GET,
        "/user",
        s["access_token"].as_str(),
        None,
    )
    .await
    .assert_error(403, "user_banned");
});

both!(bcrypt_hashes_verify_and_are_upgraded, |_| {}, |t| {
    // A user imported from a GoTrue database, with its $2a$ cost-10 hash.
    let hash = bcrypt::hash("imported-pw", 10)
        .unwrap()
        .replacen("$2b$", "$2a$", 1);
    t.new_session("k@example.com", "placeholder1").await;
    castellan_core::on!(pool t.pool(), p => sqlx::query("UPDATE users SET encrypted_password = $1 WHERE email = 'k@example.com'")
        .bind(&hash).execute(p).await.unwrap().rows_affected());
    t.login("k@example.com", "nope-nope")
        .await
        .assert_error(400, "invalid_credentials");
    assert_eq!(
        t.count_by_str(
            "SELECT count(*) FROM users WHERE encrypted_password = $1",
            &hash
        )
        .await,
        1,
        "a failed sign-in changes nothing"
    );
    let r = t.login("k@example.com", "imported-pw").await;
    assert_eq!(r.status, 200, "{}", r.text);
    let row = t.user(r.body["user"]["id"].as_str().unwrap()).await;
    let upgraded = row.encrypted_password.unwrap();
    assert!(
        upgraded.starts_with("$argon2id$v=19$m=4096,t=1,p=1$"),
        "{upgraded}"
    );
    assert_eq!(
        t.login("k@example.com", "imported-pw").await.status,
        200,
        "the upgraded hash verifies"
    );
});

both!(unknown_grant_type, |_| {}, |t| {
    for q in ["/token?grant_type=client_credentials", "/token"] {
        let r = t.post(q, json!({})).await;
        r.assert_error(400, "invalid_credentials");
        assert_eq!(r.body["msg"], "unsupported_grant_type");
    }
});

/// These tests are of GoTrue's legacy token rows; `refresh_v2.rs` has the
/// same rules for v2 tokens.
fn legacy(c: &mut castellan_core::Config) {
    c.refresh_token_algorithm_version = Some(1);
}

both!(refresh_rotates_and_detects_reuse, legacy, |t| {
    let s = t.new_session("l@example.com", "secret123").await;
    let t0 = s["refresh_token"].as_str().unwrap().to_string();
    let sid = claims(s["access_token"].as_str().unwrap())["session_id"]
        .as_str()
        .unwrap()
        .to_string();

    let r1 = t.refresh(&t0).await;
    assert_eq!(r1.status, 200, "{}", r1.text);
    let t1 = r1.body["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(t1, t0);
    let c1 = claims(r1.body["access_token"].as_str().unwrap());
    assert_eq!(c1["session_id"], sid.as_str(), "same session");
    assert_eq!(
        c1["amr"][0]["method"], "password",
        "refresh adds no AMR entry"
    );
    assert_eq!(c1["amr"].as_array().unwrap().len(), 1);
    assert_eq!(
        t.count_by_str(
            "SELECT count(*) FROM refresh_tokens WHERE token = $1 AND revoked = true",
            &t0
        )
        .await,
        1
    );
    assert_eq!(
        t.count_by_str(
            "SELECT count(*) FROM refresh_tokens WHERE parent = $1 AND revoked = false",
            &t0
        )
        .await,
        1
    );

    // The parent of the active token gets the active token back (a lost response).
    let again = t.refresh(&t0).await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.body["refresh_token"], t1.as_str());

    let r2 = t.refresh(&t1).await;
    let t2 = r2.body["refresh_token"].as_str().unwrap().to_string();
    // t0 is now a grandparent: reuse. The whole family is revoked, committed.
    t.refresh(&t0)
        .await
        .assert_error(400, "refresh_token_already_used");
    let session: Uuid = sid.parse().unwrap();
    assert_eq!(
        t.count_by_uuid(
            "SELECT count(*) FROM refresh_tokens WHERE session_id = $1 AND revoked = false",
            session
        )
        .await,
        0
    );
    t.refresh(&t2)
        .await
        .assert_error(400, "refresh_token_already_used");
    let uid = s["user"]["id"].as_str().unwrap();
    let actions = t.audit_actions(uid).await;
    assert_eq!(
        actions.iter().filter(|a| *a == "token_refreshed").count(),
        2
    );
    assert_eq!(actions.iter().filter(|a| *a == "token_revoked").count(), 2);

    t.refresh("aaaaaaaaaaaa")
        .await
        .assert_error(400, "refresh_token_not_found");
    // GoTrue's syntax rules (issue 26): 12 lowercase letters and digits, or a
    // v2 token that parses; anything else is refused before any lookup.
    for malformed in [
        "short",
        "AAAAAAAAAAAA",
        "aaaaaaaaaaa-",
        "not-a-real-token-at-all",
    ] {
        let r = t.refresh(malformed).await;
        r.assert_error(400, "validation_failed");
        assert_eq!(r.body["msg"], "Refresh token is not valid", "{malformed}");
    }
    t.post("/token?grant_type=refresh_token", json!({}))
        .await
        .assert_error(400, "validation_failed");
});

both!(
    reuse_interval_allows_a_fork,
    |c| {
        legacy(c);
        c.refresh_token_reuse_interval = std::time::Duration::from_secs(60);
    },
    |t| {
        let s = t.new_session("m@example.com", "secret123").await;
        let t0 = s["refresh_token"].as_str().unwrap().to_string();
        let t1 = t.rotate(&t0).await;
        let t2 = t.rotate(&t1).await;
        let fork = t.refresh(&t0).await;
        assert_eq!(fork.status, 200, "{}", fork.text);
        let f = fork.body["refresh_token"].as_str().unwrap();
        assert!(f != t1 && f != t2);
        assert_eq!(
            t.count_by_str(
                "SELECT count(*) FROM refresh_tokens WHERE token = $1 AND parent IS NOT NULL",
                f
            )
            .await,
            1
        );
    }
);

both!(
    reuse_without_rotation_does_not_revoke,
    |c| {
        legacy(c);
        c.refresh_token_rotation_enabled = false;
    },
    |t| {
        let s = t.new_session("n@example.com", "secret123").await;
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

both!(concurrent_refreshes_of_one_token, legacy, |t| {
    let s = t.new_session("o@example.com", "secret123").await;
    let t0 = s["refresh_token"].as_str().unwrap().to_string();
    let sid: Uuid = claims(s["access_token"].as_str().unwrap())["session_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let http = t.http.clone();
        let url = t.url("/token?grant_type=refresh_token");
        let body = json!({"refresh_token": t0});
        tasks.push(tokio::spawn(async move {
            crate::common::read(http.post(url).json(&body).send().await.unwrap()).await
        }));
    }
    let mut issued = HashSet::new();
    for task in tasks {
        let r = task.await.unwrap();
        assert!(r.status.as_u16() < 500, "no 5xx: {} {}", r.status, r.text);
        assert_eq!(
            r.status, 200,
            "each is the first rotation or its retry: {}",
            r.text
        );
        issued.insert(r.body["refresh_token"].as_str().unwrap().to_string());
    }
    assert_eq!(issued.len(), 1, "every caller got the one new token");
    assert_eq!(
        t.count_by_uuid(
            "SELECT count(*) FROM refresh_tokens WHERE session_id = $1 AND revoked = false",
            sid
        )
        .await,
        1
    );
    assert_eq!(
        t.count_by_uuid(
            "SELECT count(*) FROM refresh_tokens WHERE session_id = $1",
            sid
        )
        .await,
        2
    );
});

// Issue 26: GoTrue's answers to a verification without a type, or with one
// it does not know: a code's owner is looked up whatever the type and no
// token of it is found (403); a token hash's type is checked first (400).
both!(verify_type_errors_answer_as_gotrue, |_| {}, |t| {
    let r = t
        .post(
            "/verify",
            json!({"email": "a@example.com", "token": "123456"}),
        )
        .await;
    r.assert_error(400, "validation_failed");
    assert_eq!(r.body["msg"], "Verify requires a verification type");
    let r = t
        .post(
            "/verify",
            json!({"type": "bogus", "email": "a@example.com", "token": "123456"}),
        )
        .await;
    r.assert_error(403, "otp_expired");
    assert_eq!(r.body["msg"], "Token has expired or is invalid");
    let r = t
        .post("/verify", json!({"type": "bogus", "token_hash": "abc"}))
        .await;
    r.assert_error(400, "validation_failed");
    assert_eq!(r.body["msg"], "Invalid email verification type");
});
