use serde_json::json;
use uuid::Uuid;

use crate::both;
use crate::common::claims;

both!(autoconfirmed_signup_returns_a_session, |_| {}, |t| {
    let r = t.post("/signup", json!({"email": "Alice@Example.com", "password": "secret123", "data": {"name": "Alice"}})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let b = &r.body;
    assert_eq!(b["token_type"], "bearer");
    assert!(b["expires_in"].as_i64().unwrap() > 3500);
    // A fresh castellan database hands out v2 refresh tokens.
    let refresh = b["refresh_token"].as_str().unwrap();
    assert!(
        castellan_core::crypto::refresh::parse(refresh).is_some(),
        "{refresh}"
    );
    let user = &b["user"];
    assert_eq!(user["email"], "alice@example.com");
    assert_eq!(user["role"], "authenticated");
    assert_eq!(user["aud"], "authenticated");
    assert_eq!(
        user["app_metadata"],
        json!({"provider": "email", "providers": ["email"]})
    );
    // GoTrue copies the email identity into the metadata (issue 26).
    assert_eq!(
        user["user_metadata"],
        json!({"name": "Alice", "email_verified": true, "sub": user["id"], "email": "alice@example.com", "phone_verified": false})
    );
    assert!(user.get("confirmed_at").is_none(), "{user}");
    assert_eq!(user["identities"][0]["provider"], "email");
    assert_eq!(
        user["identities"][0]["identity_data"]["email_verified"],
        false
    );
    assert_eq!(user["is_anonymous"], false);
    assert!(user["email_confirmed_at"].is_string());
    let c = claims(b["access_token"].as_str().unwrap());
    assert_eq!(c["sub"], user["id"]);
    assert_eq!(c["aud"], "authenticated");
    assert_eq!(c["amr"][0]["method"], "password");
    assert!(c["amr"][0]["timestamp"].is_i64());
    assert_eq!(c["aal"], "aal1");
    assert_eq!(c["email"], "alice@example.com");
    assert_eq!(c["phone"], "");
    assert!(c.get("iss").is_none());
    assert!(c["session_id"].is_string());

    let id = user["id"].as_str().unwrap();
    let row = t.user(id).await;
    assert_eq!(row.email.as_deref(), Some("alice@example.com"));
    assert!(
        row.encrypted_password
            .as_deref()
            .unwrap()
            .starts_with("$argon2id$")
    );
    assert!(row.last_sign_in_at.is_some());
    let uid: Uuid = id.parse().unwrap();
    assert_eq!(
        t.count_by_uuid("SELECT count(*) FROM identities WHERE user_id = $1", uid)
            .await,
        1
    );
    assert_eq!(
        t.count_by_uuid("SELECT count(*) FROM sessions WHERE user_id = $1", uid)
            .await,
        1
    );
    // v2: the session holds the token's key and counter; no token row.
    assert_eq!(
        t.count_by_uuid(
            "SELECT count(*) FROM sessions WHERE user_id = $1 AND refresh_token_counter = 0 AND refresh_token_hmac_key IS NOT NULL",
            uid
        )
        .await,
        1
    );
    assert_eq!(
        t.count_by_str(
            "SELECT count(*) FROM refresh_tokens WHERE user_id = $1",
            &uid.to_string()
        )
        .await,
        0
    );
    assert_eq!(t.audit_actions(id).await, vec!["user_signedup", "login"]);
});

both!(
    signup_needing_confirmation_returns_the_bare_user,
    |c| c.mailer_autoconfirm = false,
    |t| {
        let r = t.signup("bob@example.com", "secret123").await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert!(
            r.body.get("access_token").is_none(),
            "no session without confirmation"
        );
        assert_eq!(r.body["email"], "bob@example.com");
        assert!(r.body.get("email_confirmed_at").is_none());
        assert_eq!(r.body["identities"].as_array().unwrap().len(), 1);
        let uid: Uuid = r.body["id"].as_str().unwrap().parse().unwrap();
        assert_eq!(
            t.count_by_uuid("SELECT count(*) FROM sessions WHERE user_id = $1", uid)
                .await,
            0
        );
        assert!(t.user(&uid.to_string()).await.email_confirmed_at.is_none());

        // Signing in before confirming: only a correct password learns "not confirmed".
        t.login("bob@example.com", "wrong-password")
            .await
            .assert_error(400, "invalid_credentials");
        t.login("bob@example.com", "secret123")
            .await
            .assert_error(400, "email_not_confirmed");

        // A second sign-up of an unconfirmed address re-sends the confirmation,
        // which the per-user window refuses this soon; the user is unchanged.
        let again = t
            .post(
                "/signup",
                json!({"email": "bob@example.com", "password": "another-pw", "data": {"x": 1}}),
            )
            .await;
        again.assert_error(429, "over_email_send_rate_limit");
        let row = t.user(r.body["id"].as_str().unwrap()).await;
        assert_eq!(
            row.user_metadata(),
            json!({"sub": r.body["id"], "email": "bob@example.com", "email_verified": false, "phone_verified": false})
        );
        assert_eq!(t.login("bob@example.com", "another-pw").await.status, 400);
    }
);

both!(
    repeated_signup_of_a_confirmed_address_is_obfuscated,
    |c| c.mailer_autoconfirm = false,
    |t| {
        let r = t.signup("carol@example.com", "secret123").await;
        let id = r.body["id"].as_str().unwrap().to_string();
        // Confirm the address directly (the email flow is another issue).
        castellan_core::on!(pool t.pool(), p => sqlx::query("UPDATE users SET email_confirmed_at = $2 WHERE id = $1")
        .bind(Uuid::parse_str(&id).unwrap()).bind(chrono::Utc::now()).execute(p).await.unwrap().rows_affected());
        let fake = t
            .post(
                "/signup",
                json!({"email": "carol@example.com", "password": "whatever1", "data": {"k": "v"}}),
            )
            .await;
        assert_eq!(fake.status, 200, "{}", fake.text);
        assert_ne!(fake.body["id"], id.as_str(), "a fresh id, not the real one");
        assert_eq!(fake.body["identities"], json!([]));
        assert_eq!(fake.body["user_metadata"], json!({"k": "v"}));
        assert_eq!(fake.body["role"], "");
        assert!(fake.body.get("email_confirmed_at").is_none());
        assert!(fake.body.get("confirmed_at").is_none());
        assert!(fake.body.get("access_token").is_none());
        // Same shape as a real unconfirmed sign-up.
        let real = t.signup("dave@example.com", "secret123").await;
        let keys =
            |v: &serde_json::Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(&fake.body), keys(&real.body));
        assert_eq!(
            t.audit_actions(&id).await,
            vec!["user_confirmation_requested", "user_repeated_signup"]
        );
        assert_eq!(
            t.count_by_str(
                "SELECT count(*) FROM users WHERE email = $1",
                "carol@example.com"
            )
            .await,
            1
        );
    }
);

both!(repeated_signup_with_autoconfirm_is_refused, |_| {}, |t| {
    t.new_session("erin@example.com", "secret123").await;
    t.signup("ERIN@example.com", "secret123")
        .await
        .assert_error(422, "user_already_exists");
});

both!(
    signup_validation,
    |c| {
        c.password.min_length = 8;
        c.password.required_characters = vec!["0123456789".into()];
    },
    |t| {
        let weak = t.signup("f@example.com", "short").await;
        weak.assert_error(422, "weak_password");
        assert_eq!(
            weak.body["weak_password"]["reasons"],
            json!(["length", "characters"])
        );
        t.signup("f@example.com", &"a1".repeat(37))
            .await
            .assert_error(400, "validation_failed");
        t.signup("not-an-email", "longenough1")
            .await
            .assert_error(400, "validation_failed");
        t.post("/signup", json!({"email": "f@example.com", "password": ""}))
            .await
            .assert_error(400, "validation_failed");
        t.post(
            "/signup",
            json!({"email": "f@example.com", "phone": "15550100", "password": "longenough1"}),
        )
        .await
        .assert_error(400, "validation_failed");
        t.post(
            "/signup",
            json!({"phone": "15550100", "password": "longenough1"}),
        )
        .await
        .assert_error(400, "phone_provider_disabled");
        // Nothing was stored by any of these.
        assert_eq!(
            t.count_by_str("SELECT count(*) FROM users WHERE email = $1 OR $1 = ''", "")
                .await,
            0
        );
        // The client sends null PKCE fields and gotrue_meta_security; both are accepted.
        let ok = t
            .post(
                "/signup",
                json!({"email": "f@example.com", "password": "longenough1", "code_challenge": null,
        "code_challenge_method": null, "gotrue_meta_security": {}, "data": {}}),
            )
            .await;
        assert_eq!(ok.status, 200, "{}", ok.text);
    }
);

both!(
    phone_signup_stores_digits_only,
    |c| {
        c.external_phone_enabled = true;
        c.sms_autoconfirm = true;
    },
    |t| {
        let r = t
            .post(
                "/signup",
                json!({"phone": "+1 555 010 0999", "password": "secret123"}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.body["user"]["phone"], "15550100999");
        assert_eq!(r.body["user"]["email"], "");
        assert_eq!(r.body["user"]["app_metadata"]["provider"], "phone");
        assert!(
            r.body["user"]["identities"][0]["identity_data"]
                .get("phone")
                .is_none()
        );
        assert_eq!(
            t.count_by_str("SELECT count(*) FROM users WHERE phone = $1", "15550100999")
                .await,
            1
        );
        t.post("/signup", json!({"phone": "0123", "password": "secret123"}))
            .await
            .assert_error(400, "validation_failed");
        let login = t
            .post(
                "/token?grant_type=password",
                json!({"phone": "+15550100999", "password": "secret123"}),
            )
            .await;
        assert_eq!(login.status, 200, "{}", login.text);
        assert_eq!(
            claims(login.body["access_token"].as_str().unwrap())["phone"],
            "15550100999"
        );
    }
);

both!(
    disabled_signup_is_refused,
    |c| c.disable_signup = true,
    |t| {
        t.signup("g@example.com", "secret123")
            .await
            .assert_error(422, "signup_disabled");
        assert_eq!(
            t.count_by_str(
                "SELECT count(*) FROM users WHERE email = $1",
                "g@example.com"
            )
            .await,
            0
        );
    }
);

both!(
    anonymous_sign_in,
    |c| c.anonymous_users_enabled = true,
    |t| {
        let r = t.post("/signup", json!({"data": {"theme": "dark"}})).await;
        assert_eq!(r.status, 200, "{}", r.text);
        let c = claims(r.body["access_token"].as_str().unwrap());
        assert_eq!(c["is_anonymous"], true);
        assert_eq!(c["amr"][0]["method"], "anonymous");
        assert_eq!(r.body["user"]["app_metadata"], json!({}));
        assert_eq!(r.body["user"]["identities"], json!([]));
        let row = t.user(r.body["user"]["id"].as_str().unwrap()).await;
        assert!(row.is_anonymous && row.email.is_none() && row.encrypted_password.is_none());
        // An anonymous user cannot set a password without an email or phone.
        let up = t
            .request(
                reqwest::Method::PUT,
                "/user",
                r.body["access_token"].as_str(),
                Some(json!({"password": "secret123"})),
            )
            .await;
        up.assert_error(422, "validation_failed");
    }
);

both!(
    an_anonymous_user_takes_an_email_at_once_with_autoconfirm,
    |c| {
        c.anonymous_users_enabled = true;
        c.mailer_autoconfirm = true;
    },
    |t| {
        let r = t.post("/signup", json!({"data": {"k": 1}})).await;
        let at = r.body["access_token"].as_str().unwrap().to_string();
        let id = r.body["user"]["id"].as_str().unwrap().to_string();
        let put = |body| t.request(reqwest::Method::PUT, "/user", Some(&at), Some(body));
        let up = put(json!({"email": "Anon-Up@example.com"})).await;
        assert_eq!(up.status, 200, "{}", up.text);
        assert_eq!(up.body["email"], "anon-up@example.com");
        assert!(up.body["email_confirmed_at"].is_string(), "{}", up.text);
        // Computed from the user as it was when the request came (GoTrue's).
        assert!(up.body.get("confirmed_at").is_none(), "{}", up.text);
        assert!(up.body.get("new_email").is_none(), "{}", up.text);
        assert_eq!(up.body["is_anonymous"], false);
        assert_eq!(
            up.body["user_metadata"],
            json!({"k": 1, "email_verified": true})
        );
        let ids = up.body["identities"].as_array().unwrap();
        assert_eq!(ids.len(), 1, "{}", up.text);
        assert_eq!(ids[0]["provider"], "email");
        assert_eq!(ids[0]["identity_data"]["email"], "anon-up@example.com");
        assert_eq!(ids[0]["identity_data"]["email_verified"], true);
        let row = t.user(&id).await;
        assert!(!row.is_anonymous && row.email.as_deref() == Some("anon-up@example.com"));
        assert_eq!(t.email_jobs().await, 0, "nothing to confirm, nothing sent");
        // With an address, a password may be set, and it signs in.
        let up = put(json!({"password": "secret123"})).await;
        assert_eq!(up.status, 200, "{}", up.text);
        assert!(up.body["confirmed_at"].is_string(), "{}", up.text);
        assert_eq!(
            t.login("anon-up@example.com", "secret123").await.status,
            200
        );
    }
);

both!(anonymous_sign_in_disabled, |_| {}, |t| {
    t.post("/signup", json!({}))
        .await
        .assert_error(422, "anonymous_provider_disabled");
});

// Fifty sign-ups of one new address at once: one succeeds, the others get
// GoTrue's 422, none a 500, and one user row exists.
both!(concurrent_signups_of_one_address, |_| {}, |t| {
    let body = json!({"email": "race@example.com", "password": "secret123"});
    let signups = (0..50).map(|_| t.http.post(t.url("/signup")).json(&body));
    let replies = crate::common::at_once(signups).await;
    let ok = crate::common::successes_else(&replies, 422, "user_already_exists");
    assert_eq!(ok, 1);
    assert_eq!(
        t.count_by_str(
            "SELECT count(*) FROM users WHERE email = $1",
            "race@example.com"
        )
        .await,
        1
    );
});

// A server error carries the request id as `error_id`, the same id as the
// `x-request-id` header; a client cannot choose it.
both!(server_errors_carry_the_request_id, |_| {}, |t| {
    let s = t.new_session("err@example.com", "secret123").await;
    let access = s["access_token"].as_str().unwrap().to_string();
    // Break the identities table under the server: reading the user fails.
    castellan_core::on!(pool t.pool(), p => sqlx::query("ALTER TABLE identities RENAME TO identities_gone")
        .execute(p).await.map(drop).unwrap());
    let r = crate::common::read(
        t.http
            .post(t.url("/token?grant_type=password"))
            .header("x-request-id", "client-chosen")
            .json(&serde_json::json!({"email": "err@example.com", "password": "secret123"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    r.assert_error(500, "unexpected_failure");
    let id = r.header("x-request-id").expect("x-request-id").to_string();
    assert_ne!(id, "client-chosen");
    assert_eq!(r.body["error_id"], id.as_str());
    assert!(
        !r.text.contains("identities"),
        "no internals leak: {}",
        r.text
    );
    castellan_core::on!(pool t.pool(), p => sqlx::query("ALTER TABLE identities_gone RENAME TO identities")
        .execute(p).await.map(drop).unwrap());
    assert_eq!(t.get_user(&access).await.status, 200);
});

// Issue 15: the client's address and user agent on sessions and audit
// entries, as GoTrue records them; a refresh records the latest client.
both!(sessions_and_audit_entries_record_the_client, |_| {}, |t| {
    let post = |path: &str, agent: &str, body: serde_json::Value| {
        let req = t
            .http
            .post(t.url(path))
            .header("user-agent", agent)
            .json(&body);
        async move { crate::common::read(req.send().await.unwrap()).await }
    };
    let body = json!({"email": "client@example.com", "password": "secret123"});
    let r = post("/signup", "castellan-test/1.0", body).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let sid: Uuid = claims(r.body["access_token"].as_str().unwrap())["session_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let session = || async {
        castellan_core::on!(pool t.pool(), p => sqlx::query_as::<_, (Option<String>, Option<String>)>(
            "SELECT CAST(ip AS TEXT), user_agent FROM sessions WHERE id = $1")
            .bind(sid).fetch_one(p).await.unwrap())
    };
    let (ip, agent) = session().await;
    assert_eq!(
        ip.as_deref().map(|s| s.trim_end_matches("/32")),
        Some("127.0.0.1")
    );
    assert_eq!(agent.as_deref(), Some("castellan-test/1.0"));
    let audit = t.admin(reqwest::Method::GET, "/admin/audit", None).await;
    let entries = audit.body.as_array().unwrap();
    assert!(!entries.is_empty());
    for e in entries {
        assert_eq!(e["ip_address"], "127.0.0.1", "{e}");
    }

    let refresh = json!({"refresh_token": r.body["refresh_token"]});
    let r = post(
        "/token?grant_type=refresh_token",
        "castellan-test/2.0",
        refresh,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(session().await.1.as_deref(), Some("castellan-test/2.0"));
});
