//! Multi-factor authentication (issue 12): TOTP enrollment, challenges,
//! verification to aal2 with codes computed here from the returned secret,
//! GoTrue's errors, unenrollment, the admin's factor endpoints, secrets
//! sealed at rest, and castellan's replay and lockout guards.

use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::both;
use crate::common::{TestServer, claims};
use castellan_core::crypto::totp;

/// What an authenticator shows for `secret` now (by the server's clock),
/// `steps` periods away.
pub(crate) fn code(t: &TestServer, secret: &str, steps: i64) -> String {
    let at = t.clock().now().timestamp() + steps * totp::STEP as i64;
    totp::code_at(secret, at as u64).unwrap()
}

pub(crate) struct Enrolled {
    pub(crate) id: String,
    pub(crate) secret: String,
}

pub(crate) async fn enroll(t: &TestServer, access: &str, name: &str) -> Enrolled {
    let r = t
        .request(
            Method::POST,
            "/factors",
            Some(access),
            Some(json!({"factor_type": "totp", "friendly_name": name})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    Enrolled {
        id: r.body["id"].as_str().unwrap().to_string(),
        secret: r.body["totp"]["secret"].as_str().unwrap().to_string(),
    }
}

pub(crate) async fn challenge(t: &TestServer, access: &str, factor: &str) -> String {
    let r = t
        .request(
            Method::POST,
            &format!("/factors/{factor}/challenge"),
            Some(access),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.body["id"].as_str().unwrap().to_string()
}

pub(crate) async fn verify(
    t: &TestServer,
    access: &str,
    factor: &str,
    challenge: &str,
    code: &str,
) -> crate::common::Reply {
    t.request(
        Method::POST,
        &format!("/factors/{factor}/verify"),
        Some(access),
        Some(json!({"challenge_id": challenge, "code": code})),
    )
    .await
}

/// Enrolls and verifies a factor: the aal2 session's tokens and the factor.
async fn aal2_session(t: &TestServer, email: &str) -> (Value, Enrolled) {
    let s = t.new_session(email, "secret123").await;
    let access = s["access_token"].as_str().unwrap();
    let f = enroll(t, access, "app").await;
    let c = challenge(t, access, &f.id).await;
    let r = verify(t, access, &f.id, &c, &code(t, &f.secret, 0)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    (r.body, f)
}

fn amr_methods(jwt: &str) -> Vec<String> {
    claims(jwt)["amr"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["method"].as_str().unwrap().to_string())
        .collect()
}

both!(totp_enrollment_raises_the_session_to_aal2, |_| {}, |t| {
    let other = t.new_session("mfa@example.com", "secret123").await;
    let s = t.login("mfa@example.com", "secret123").await.body;
    let access = s["access_token"].as_str().unwrap();
    assert_eq!(claims(access)["aal"], "aal1");

    let r = t
        .request(
            Method::POST,
            "/factors",
            Some(access),
            Some(json!({"factor_type": "totp", "friendly_name": "phone app", "issuer": "Castellan Test"})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["type"], "totp");
    assert_eq!(r.body["friendly_name"], "phone app");
    let secret = r.body["totp"]["secret"].as_str().unwrap().to_string();
    assert_eq!(secret.len(), 32);
    assert_eq!(
        r.body["totp"]["uri"],
        format!(
            "otpauth://totp/Castellan%20Test:mfa@example.com?algorithm=SHA1&digits=6&issuer=Castellan%20Test&period=30&secret={secret}"
        )
    );
    assert!(r.body["totp"]["qr_code"].as_str().unwrap().contains("<svg"));
    let factor = r.body["id"].as_str().unwrap().to_string();
    let fid = Uuid::parse_str(&factor).unwrap();
    assert_eq!(
        t.count_by_uuid(
            "SELECT count(*) FROM mfa_factors WHERE id = $1 AND status = 'unverified'",
            fid
        )
        .await,
        1
    );
    let u = t.get_user(access).await;
    assert_eq!(u.body["factors"][0]["id"], factor.as_str());
    assert_eq!(u.body["factors"][0]["status"], "unverified");
    assert!(u.body["factors"][0].get("secret").is_none());

    let asked = t.clock().now().timestamp();
    let c = t
        .request(
            Method::POST,
            &format!("/factors/{factor}/challenge"),
            Some(access),
            None,
        )
        .await;
    assert_eq!(c.status, 200, "{}", c.text);
    assert_eq!(c.body["type"], "totp");
    // Five minutes from when it was made (the second may turn meanwhile).
    let expires = c.body["expires_at"].as_i64().unwrap();
    let answered = t.clock().now().timestamp();
    assert!(
        (asked + 300..=answered + 300).contains(&expires),
        "{expires}"
    );
    let ch = c.body["id"].as_str().unwrap().to_string();

    // A code two periods off is wrong; nothing changes.
    verify(&t, access, &factor, &ch, &code(&t, &secret, 2))
        .await
        .assert_error(422, "mfa_verification_failed");
    verify(&t, access, &factor, &ch, "")
        .await
        .assert_error(400, "validation_failed");

    let ok = verify(&t, access, &factor, &ch, &code(&t, &secret, 0)).await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    let raised = ok.body["access_token"].as_str().unwrap();
    assert_eq!(claims(raised)["aal"], "aal2");
    assert_eq!(amr_methods(raised), ["totp", "password"]);
    assert_eq!(claims(raised)["session_id"], claims(access)["session_id"]);
    assert_eq!(ok.body["user"]["factors"][0]["status"], "verified");
    assert_eq!(
        t.count_by_uuid(
            "SELECT count(*) FROM mfa_factors WHERE id = $1 AND status = 'verified'",
            fid
        )
        .await,
        1
    );

    // The challenge is spent; the same code on a new challenge is a replay.
    verify(&t, access, &factor, &ch, &code(&t, &secret, 0))
        .await
        .assert_error(422, "mfa_ip_address_mismatch");
    let again = challenge(&t, raised, &factor).await;
    verify(&t, raised, &factor, &again, &code(&t, &secret, 0))
        .await
        .assert_error(422, "mfa_verification_failed");

    // The user's other aal1 session ended; this one refreshes at aal2.
    t.refresh(other["refresh_token"].as_str().unwrap())
        .await
        .assert_error(400, "refresh_token_not_found");
    let r = t.refresh(ok.body["refresh_token"].as_str().unwrap()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        claims(r.body["access_token"].as_str().unwrap())["aal"],
        "aal2"
    );
    let actions = t
        .audit_actions(claims(access)["sub"].as_str().unwrap())
        .await;
    for a in [
        "factor_in_progress",
        "challenge_created",
        "verification_attempted",
    ] {
        assert!(actions.iter().any(|x| x == a), "{a} in {actions:?}");
    }
});

both!(factor_rules_as_gotrue_has_them, |_| {}, |t| {
    let (raised, f) = aal2_session(&t, "rules@example.com").await;
    let aal2 = raised["access_token"].as_str().unwrap();
    // Names are unique per user; a second factor needs aal2.
    let r = t
        .request(
            Method::POST,
            "/factors",
            Some(aal2),
            Some(json!({"factor_type": "totp", "friendly_name": "app"})),
        )
        .await;
    r.assert_error(422, "mfa_factor_name_conflict");
    let fresh = t.login("rules@example.com", "secret123").await.body;
    let aal1 = fresh["access_token"].as_str().unwrap();
    assert_eq!(claims(aal1)["aal"], "aal1");
    t.request(
        Method::POST,
        "/factors",
        Some(aal1),
        Some(json!({"factor_type": "totp", "friendly_name": "b"})),
    )
    .await
    .assert_error(403, "insufficient_aal");
    for (body, status, code) in [
        (json!({"factor_type": "sms"}), 400, "validation_failed"),
        (
            json!({"factor_type": "phone", "phone": "+15551234567"}),
            422,
            "mfa_phone_enroll_not_enabled",
        ),
    ] {
        t.request(Method::POST, "/factors", Some(aal2), Some(body))
            .await
            .assert_error(status, code);
    }
    // Unknown and malformed factor ids, another user's factor.
    t.request(
        Method::POST,
        &format!("/factors/{}/challenge", Uuid::new_v4()),
        Some(aal2),
        None,
    )
    .await
    .assert_error(404, "mfa_factor_not_found");
    t.request(Method::POST, "/factors/nope/challenge", Some(aal2), None)
        .await
        .assert_error(404, "validation_failed");
    let stranger = t.new_session("stranger@example.com", "secret123").await;
    t.request(
        Method::POST,
        &format!("/factors/{}/challenge", f.id),
        Some(stranger["access_token"].as_str().unwrap()),
        None,
    )
    .await
    .assert_error(404, "mfa_factor_not_found");
    // An expired challenge is refused (and gone).
    let ch = challenge(&t, aal2, &f.id).await;
    t.clock().advance(std::time::Duration::from_secs(301));
    verify(&t, aal2, &f.id, &ch, &code(&t, &f.secret, 0))
        .await
        .assert_error(422, "mfa_challenge_expired");
    assert_eq!(
        t.count_by_uuid(
            "SELECT count(*) FROM mfa_challenges WHERE id = $1",
            Uuid::parse_str(&ch).unwrap()
        )
        .await,
        0
    );
    // Unenrolling a verified factor needs aal2; it takes the session back to aal1.
    let aal1 = t.login("rules@example.com", "secret123").await.body;
    t.request(
        Method::DELETE,
        &format!("/factors/{}", f.id),
        Some(aal1["access_token"].as_str().unwrap()),
        None,
    )
    .await
    .assert_error(422, "insufficient_aal");
    let r = t
        .request(
            Method::DELETE,
            &format!("/factors/{}", f.id),
            Some(aal2),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body, json!({"id": f.id}));
    let r = t.refresh(raised["refresh_token"].as_str().unwrap()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        claims(r.body["access_token"].as_str().unwrap())["aal"],
        "aal1"
    );
    assert!(t.get_user(aal2).await.body.get("factors").is_none());
});

both!(
    wrong_codes_lock_the_factor,
    |c| c.rate_limits.mfa_lockout.failures = 3,
    |t| {
        let s = t.new_session("lock@example.com", "secret123").await;
        let access = s["access_token"].as_str().unwrap();
        let f = enroll(&t, access, "app").await;
        let ch = challenge(&t, access, &f.id).await;
        for _ in 0..3 {
            verify(&t, access, &f.id, &ch, &code(&t, &f.secret, 3))
                .await
                .assert_error(422, "mfa_verification_failed");
        }
        // Locked: even the right code waits, and says how long.
        let r = verify(&t, access, &f.id, &ch, &code(&t, &f.secret, 0)).await;
        r.assert_error(429, "mfa_verification_rejected");
        assert!(r.header("retry-after").is_some());
        t.clock().advance(std::time::Duration::from_secs(301));
        let ch = challenge(&t, access, &f.id).await;
        let r = verify(&t, access, &f.id, &ch, &code(&t, &f.secret, 0)).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
);

both!(
    totp_secrets_are_sealed_at_rest,
    |c| {
        let keys = [("k1".to_string(), rand::random::<[u8; 32]>())].into();
        c.db_encryption =
            castellan_core::crypto::at_rest::DbEncryption::new(Some("k1".into()), keys);
    },
    |t| {
        let (_, f) = aal2_session(&t, "sealed-mfa@example.com").await;
        let stored: String = castellan_core::on!(pool t.pool(), p => sqlx::query_scalar(
            "SELECT secret FROM mfa_factors WHERE id = $1").bind(Uuid::parse_str(&f.id).unwrap()).fetch_one(p).await.unwrap());
        let sealed: Value = serde_json::from_str(&stored).expect("GoTrue's sealed JSON");
        assert_eq!(sealed["key_id"], "k1");
        assert_eq!(sealed["alg"], "aes-gcm-hkdf");
        assert!(!stored.contains(&f.secret));
    }
);

both!(admins_list_rename_and_delete_factors, |_| {}, |t| {
    let (raised, f) = aal2_session(&t, "adminmfa@example.com").await;
    let user = claims(raised["access_token"].as_str().unwrap())["sub"]
        .as_str()
        .unwrap()
        .to_string();
    let list = t
        .admin(Method::GET, &format!("/admin/users/{user}/factors"), None)
        .await;
    assert_eq!(list.status, 200, "{}", list.text);
    assert_eq!(list.body[0]["id"], f.id.as_str());
    assert_eq!(list.body[0]["friendly_name"], "app");
    let path = format!("/admin/users/{user}/factors/{}", f.id);
    let r = t
        .admin(
            Method::PUT,
            &path,
            Some(json!({"friendly_name": "renamed"})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["friendly_name"], "renamed");
    let r = t.admin(Method::DELETE, &path, None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["id"], f.id.as_str());
    assert_eq!(r.body["status"], "verified");
    t.admin(Method::DELETE, &path, None)
        .await
        .assert_error(404, "mfa_factor_not_found");
    // The session it raised is aal1 again.
    let r = t.refresh(raised["refresh_token"].as_str().unwrap()).await;
    assert_eq!(
        claims(r.body["access_token"].as_str().unwrap())["aal"],
        "aal1"
    );
    // Audited as the admin's (GoTrue's pseudo-user with the nil id).
    let actions = t.audit_actions(&Uuid::nil().to_string()).await;
    for a in ["factor_updated", "factor_deleted"] {
        assert!(actions.iter().any(|x| x == a), "{a} in {actions:?}");
    }
});

both!(
    a_challenge_is_verified_from_where_it_was_made,
    |c| c.rate_limits.header = Some("X-Client-Ip".into()),
    |t| {
        let s = t.new_session("where@example.com", "secret123").await;
        let access = s["access_token"].as_str().unwrap();
        let f = enroll(&t, access, "app").await;
        let from = |ip: &'static str, path: String, body: Option<Value>| {
            let mut req = t
                .http
                .post(t.url(&path))
                .bearer_auth(access)
                .header("X-Client-Ip", ip);
            if let Some(b) = body {
                req = req.json(&b);
            }
            async move { crate::common::read(req.send().await.unwrap()).await }
        };
        let c = from("203.0.113.7", format!("/factors/{}/challenge", f.id), None).await;
        assert_eq!(c.status, 200, "{}", c.text);
        let ch = c.body["id"].as_str().unwrap().to_string();
        let body = json!({"challenge_id": ch, "code": code(&t, &f.secret, 0)});
        from(
            "198.51.100.9",
            format!("/factors/{}/verify", f.id),
            Some(body.clone()),
        )
        .await
        .assert_error(422, "mfa_ip_address_mismatch");
        let r = from(
            "203.0.113.7",
            format!("/factors/{}/verify", f.id),
            Some(body),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
);

/// The lockout is counted in the database: wrong codes sent to two
/// processes add up, and both refuse the factor while it is locked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lockout_holds_across_processes() {
    use crate::common::{self, Backend, read};
    let (db, _) = common::fresh_database(Backend::Postgres).await;
    let castellan_core::config::DatabaseUrl::Postgres(url) = &db else {
        unreachable!()
    };
    let env = [
        ("GOTRUE_MAILER_AUTOCONFIRM", "true"),
        ("CASTELLAN_MFA_MAX_FAILURES", "3"),
    ];
    let (_a, a) = common::castellan_process(&["serve"], url, &env).await;
    let (_b, b) = common::castellan_process(&["serve"], url, &env).await;
    let http = reqwest::Client::new();
    let post = |base: &str, path: String, token: &str, body: Value| {
        http.post(format!("{base}{path}"))
            .bearer_auth(token)
            .json(&body)
            .send()
    };
    let s = read(
        http.post(format!("{a}/signup"))
            .json(&json!({"email": "twolocks@example.com", "password": "secret123"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let access = s.body["access_token"].as_str().unwrap().to_string();
    let f = read(
        post(
            &a,
            "/factors".into(),
            &access,
            json!({"factor_type": "totp"}),
        )
        .await
        .unwrap(),
    )
    .await;
    let (id, secret) = (
        f.body["id"].as_str().unwrap(),
        f.body["totp"]["secret"].as_str().unwrap(),
    );
    let at = |steps: i64| {
        let t = chrono::Utc::now().timestamp() + steps * totp::STEP as i64;
        totp::code_at(secret, t as u64).unwrap()
    };
    let ch = read(
        post(&a, format!("/factors/{id}/challenge"), &access, json!({}))
            .await
            .unwrap(),
    )
    .await;
    let ch = ch.body["id"].as_str().unwrap().to_string();
    // Three wrong codes spread over both processes lock the factor for both.
    let attempts = [
        (&a, 4, 422, "mfa_verification_failed"),
        (&b, 4, 422, "mfa_verification_failed"),
        (&a, 4, 422, "mfa_verification_failed"),
        (&b, 0, 429, "mfa_verification_rejected"),
        (&a, 0, 429, "mfa_verification_rejected"),
    ];
    for (base, steps, status, error) in attempts {
        let body = json!({"challenge_id": ch, "code": at(steps)});
        let sent = post(base, format!("/factors/{id}/verify"), &access, body);
        read(sent.await.unwrap()).await.assert_error(status, error);
    }
    common::drop_database(&db).await;
}

both!(
    the_sweep_removes_old_challenges_and_unverified_factors,
    |c| c.expiry_schedule = "* * * * * *".into(),
    |t| {
        let (raised, kept) = aal2_session(&t, "sweep-mfa@example.com").await;
        let access = raised["access_token"].as_str().unwrap();
        let stale = enroll(&t, access, "stale").await;
        let fresh = enroll(&t, access, "fresh").await;
        let stale_id = Uuid::parse_str(&stale.id).unwrap();
        let long_ago = chrono::Utc::now() - chrono::Duration::days(2);
        castellan_core::on!(pool t.pool(), p => {
            sqlx::query("UPDATE mfa_challenges SET created_at = $1").bind(long_ago).execute(p).await.unwrap();
            sqlx::query("UPDATE mfa_factors SET created_at = $1 WHERE id = $2").bind(long_ago).bind(stale_id).execute(p).await.unwrap().rows_affected()
        });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        loop {
            let challenges = t
                .count_by_str("SELECT count(*) FROM mfa_challenges WHERE $1 = $1", "")
                .await;
            let factors = t
                .count_by_uuid("SELECT count(*) FROM mfa_factors WHERE id = $1", stale_id)
                .await;
            if challenges == 0 && factors == 0 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "not swept: {challenges} challenges, {factors} factors"
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        // The verified factor and the new unverified one stay.
        for id in [&kept.id, &fresh.id] {
            let id = Uuid::parse_str(id).unwrap();
            assert_eq!(
                t.count_by_uuid("SELECT count(*) FROM mfa_factors WHERE id = $1", id)
                    .await,
                1
            );
        }
    }
);

both!(
    low_aal_sessions_of_mfa_users_are_short_lived,
    |c| c.sessions_allow_low_aal = Some(std::time::Duration::from_secs(60)),
    |t| {
        let (raised, _) = aal2_session(&t, "low@example.com").await;
        let low = t.login("low@example.com", "secret123").await.body;
        let c = claims(low["access_token"].as_str().unwrap());
        assert_eq!(c["aal"], "aal1");
        let lifetime = c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap();
        assert!(
            lifetime <= 60,
            "an aal1 token of an MFA user lives {lifetime} s"
        );
        t.clock().advance(std::time::Duration::from_secs(61));
        t.refresh(low["refresh_token"].as_str().unwrap())
            .await
            .assert_error(400, "session_expired");
        // The aal2 session is not limited.
        let r = t.refresh(raised["refresh_token"].as_str().unwrap()).await;
        assert_eq!(r.status, 200, "{}", r.text);
        let c = claims(r.body["access_token"].as_str().unwrap());
        assert_eq!(
            c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(),
            3600
        );
    }
);

both!(
    enrolled_factors_are_bounded,
    |c| c.mfa.max_enrolled_factors = 2,
    |t| {
        let s = t.new_session("bounded@example.com", "secret123").await;
        let access = s["access_token"].as_str().unwrap();
        enroll(&t, access, "one").await;
        enroll(&t, access, "two").await;
        t.request(
            Method::POST,
            "/factors",
            Some(access),
            Some(json!({"factor_type": "totp", "friendly_name": "three"})),
        )
        .await
        .assert_error(422, "too_many_enrolled_mfa_factors");
        let user = Uuid::parse_str(claims(access)["sub"].as_str().unwrap()).unwrap();
        assert_eq!(
            t.count_by_uuid("SELECT count(*) FROM mfa_factors WHERE user_id = $1", user)
                .await,
            2
        );
    }
);

both!(
    challenges_have_a_route_limit,
    |c| {
        c.rate_limits.mfa = castellan_core::config::RateLimit {
            events: 2,
            per: std::time::Duration::from_secs(60),
            burst: 2,
        }
    },
    |t| {
        let s = t.new_session("limited-mfa@example.com", "secret123").await;
        let access = s["access_token"].as_str().unwrap();
        let f = enroll(&t, access, "app").await;
        challenge(&t, access, &f.id).await;
        challenge(&t, access, &f.id).await;
        let r = t
            .request(
                Method::POST,
                &format!("/factors/{}/challenge", f.id),
                Some(access),
                None,
            )
            .await;
        r.assert_error(429, "over_request_rate_limit");
        assert!(
            r.body["msg"]
                .as_str()
                .unwrap()
                .contains("GOTRUE_MFA_RATE_LIMIT_CHALLENGE_AND_VERIFY"),
            "{}",
            r.text
        );
        // Verification has a bucket of its own.
        let v = verify(&t, access, &f.id, &Uuid::new_v4().to_string(), "123456").await;
        v.assert_error(422, "mfa_factor_not_found");
    }
);

both!(
    racing_verifications_of_one_code_let_one_through,
    |_| {},
    |t| {
        let s = t.new_session("race-mfa@example.com", "secret123").await;
        let access = s["access_token"].as_str().unwrap().to_string();
        let f = enroll(&t, &access, "app").await;
        let (c1, c2) = (
            challenge(&t, &access, &f.id).await,
            challenge(&t, &access, &f.id).await,
        );
        let code = code(&t, &f.secret, 0);
        let send = |ch: &str| {
            t.http
                .post(t.url(&format!("/factors/{}/verify", f.id)))
                .bearer_auth(&access)
                .json(&json!({"challenge_id": ch, "code": code}))
        };
        let replies = crate::common::at_once([send(&c1), send(&c2)]).await;
        assert_eq!(
            crate::common::successes_else(&replies, 422, "mfa_verification_failed"),
            1,
            "one code, one success"
        );
        let verified = t
            .count_by_str(
                "SELECT count(*) FROM mfa_challenges WHERE verified_at IS NOT NULL AND $1 = $1",
                "",
            )
            .await;
        assert_eq!(verified, 1);
    }
);

both!(bad_factor_input_is_a_clear_4xx, |_| {}, |t| {
    let s = t.new_session("bad-mfa@example.com", "secret123").await;
    let access = s["access_token"].as_str().unwrap();
    let f = enroll(&t, access, "app").await;
    let ch = challenge(&t, access, &f.id).await;
    for (path, body, status, code) in [
        (
            "/factors".to_string(),
            json!({"factor_type": "totp", "friendly_name": "a\u{0}b"}),
            400,
            "validation_failed",
        ),
        (
            "/factors".to_string(),
            json!({"factor_type": ["totp"]}),
            400,
            "bad_json",
        ),
        (
            format!("/factors/{}/verify", f.id),
            json!({"challenge_id": ch, "code": "12\u{0}456"}),
            400,
            "validation_failed",
        ),
        (
            format!("/factors/{}/verify", f.id),
            json!({"challenge_id": "nope", "code": "123456"}),
            400,
            "bad_json",
        ),
        // No challenge named: GoTrue's zero id, asked for after the factor.
        (
            format!("/factors/{}/verify", Uuid::new_v4()),
            json!({"code": "123456"}),
            404,
            "mfa_factor_not_found",
        ),
        (
            format!("/factors/{}/verify", f.id),
            json!({"code": "123456"}),
            422,
            "mfa_factor_not_found",
        ),
        (
            format!("/factors/{}/verify", f.id),
            json!({"challenge_id": ch, "code": "9".repeat(100_000)}),
            422,
            "mfa_verification_failed",
        ),
    ] {
        t.request(Method::POST, &path, Some(access), Some(body))
            .await
            .assert_error(status, code);
    }
    // Nothing was enrolled or verified by any of it.
    let user = Uuid::parse_str(claims(access)["sub"].as_str().unwrap()).unwrap();
    assert_eq!(
        t.count_by_uuid(
            "SELECT count(*) FROM mfa_factors WHERE user_id = $1 AND status = 'unverified'",
            user
        )
        .await,
        1
    );
});
