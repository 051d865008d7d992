use reqwest::Method;
use serde_json::json;
use uuid::Uuid;

use crate::both;
use crate::common::{TestServer, claims};

async fn create(t: &TestServer, body: serde_json::Value) -> serde_json::Value {
    let r = t.admin(Method::POST, "/admin/users", Some(body)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.body
}

both!(admin_endpoints_need_an_admin_role, |_| {}, |t| {
    let s = t.new_session("u1@example.com", "secret123").await;
    t.request(Method::GET, "/admin/users", None, None)
        .await
        .assert_error(401, "no_authorization");
    t.request(
        Method::GET,
        "/admin/users",
        s["access_token"].as_str(),
        None,
    )
    .await
    .assert_error(403, "not_admin");
    t.request(
        Method::GET,
        "/admin/audit",
        Some(&t.role_key("authenticated")),
        None,
    )
    .await
    .assert_error(403, "not_admin");
    assert_eq!(t.admin(Method::GET, "/admin/users", None).await.status, 200);
    assert_eq!(
        t.request(
            Method::GET,
            "/admin/users",
            Some(&t.role_key("supabase_admin")),
            None
        )
        .await
        .status,
        200
    );
});

both!(list_users_pages_like_gotrue, |_| {}, |t| {
    let empty = t.admin(Method::GET, "/admin/users", None).await;
    assert_eq!(empty.body, json!({"users": [], "aud": "authenticated"}));
    assert_eq!(empty.header("x-total-count"), Some("0"));
    assert_eq!(
        empty.header("link"),
        Some("</admin/users?page=0>; rel=\"last\"")
    );
    for (i, name) in ["Ann Lee", "Bo Chan", "Cy Twombly"].iter().enumerate() {
        create(&t, json!({"email": format!("list{i}@example.com"), "password": "secret123", "user_metadata": {"full_name": name}})).await;
    }
    let p1 = t.admin(Method::GET, "/admin/users?per_page=1", None).await;
    assert_eq!(p1.header("x-total-count"), Some("3"));
    assert_eq!(
        p1.header("link"),
        Some(
            "</admin/users?page=2&per_page=1>; rel=\"next\", </admin/users?page=3&per_page=1>; rel=\"last\""
        )
    );
    assert_eq!(p1.body["users"].as_array().unwrap().len(), 1);
    assert_eq!(
        p1.body["users"][0]["email"], "list2@example.com",
        "newest first"
    );
    assert_eq!(
        p1.body["users"][0]["identities"],
        json!(null),
        "identities are not loaded in lists"
    );
    let p3 = t
        .admin(Method::GET, "/auth/v1/admin/users?page=3&per_page=1", None)
        .await;
    assert_eq!(
        p3.header("link"),
        Some("</auth/v1/admin/users?page=3&per_page=1>; rel=\"last\"")
    );
    assert_eq!(p3.body["users"][0]["email"], "list0@example.com");
    let official = t
        .admin(Method::GET, "/admin/users?page=&per_page=", None)
        .await;
    assert_eq!(official.status, 200);
    assert_eq!(official.body["users"].as_array().unwrap().len(), 3);
    let asc = t
        .admin(Method::GET, "/admin/users?sort=created_at%20asc", None)
        .await;
    assert_eq!(asc.body["users"][0]["email"], "list0@example.com");
    let filtered = t.admin(Method::GET, "/admin/users?filter=chan", None).await;
    assert_eq!(filtered.header("x-total-count"), Some("1"));
    assert_eq!(filtered.body["users"][0]["email"], "list1@example.com");
    let wild = t.admin(Method::GET, "/admin/users?filter=%25", None).await;
    assert_eq!(
        wild.header("x-total-count"),
        Some("0"),
        "% is a literal, not a wildcard"
    );
    for bad in [
        "per_page=0",
        "page=0",
        "page=abc",
        "per_page=-5",
        "sort=email",
    ] {
        t.admin(Method::GET, &format!("/admin/users?{bad}"), None)
            .await
            .assert_error(400, "validation_failed");
    }
});

both!(create_user_as_admin, |_| {}, |t| {
    let id = Uuid::new_v4();
    let u = create(&t, json!({"id": id, "email": "New@Example.com", "password": "x", "email_confirm": true, "role": "editor",
        "user_metadata": {"full_name": "New Person"}, "app_metadata": {"plan": "pro"}})).await;
    assert_eq!(u["id"], id.to_string());
    assert_eq!(u["email"], "new@example.com");
    assert_eq!(u["role"], "editor");
    assert_eq!(
        u["app_metadata"],
        json!({"provider": "email", "providers": ["email"], "plan": "pro"})
    );
    assert_eq!(
        u["user_metadata"],
        json!({"full_name": "New Person", "email_verified": true})
    );
    assert!(u["email_confirmed_at"].is_string());
    // As GoTrue answers (issue 26): the identity is made unverified (the
    // metadata says what was confirmed), and the user just made carries
    // no computed `confirmed_at`; read back, it does.
    assert_eq!(u["identities"][0]["identity_data"]["email_verified"], false);
    assert!(u.get("confirmed_at").is_none(), "{u}");
    let read = t
        .admin(Method::GET, &format!("/admin/users/{id}"), None)
        .await;
    assert!(read.body["confirmed_at"].is_string(), "{}", read.text);
    // Admin create does not apply the strength rules: "x" signs in.
    assert_eq!(t.login("new@example.com", "x").await.status, 200);
    let audit = t
        .admin(Method::GET, "/admin/audit?query=action:user_signedup", None)
        .await;
    assert_eq!(audit.body[0]["payload"]["actor_username"], "service_role");
    assert_eq!(
        audit.body[0]["payload"]["actor_id"],
        Uuid::nil().to_string()
    );
    assert_eq!(
        audit.body[0]["payload"]["traits"]["user_email"],
        "new@example.com"
    );

    t.admin(
        Method::POST,
        "/admin/users",
        Some(json!({"email": "new@example.com"})),
    )
    .await
    .assert_error(422, "email_exists");
    let phone = create(&t, json!({"phone": "+15550001111", "phone_confirm": true})).await;
    assert_eq!(phone["phone"], "15550001111");
    assert_eq!(phone["app_metadata"]["provider"], "phone");
    t.admin(
        Method::POST,
        "/admin/users",
        Some(json!({"phone": "15550001111"})),
    )
    .await
    .assert_error(422, "phone_exists");
    t.admin(Method::POST, "/admin/users", Some(json!({"password": "x"})))
        .await
        .assert_error(400, "validation_failed");
    t.admin(
        Method::POST,
        "/admin/users",
        Some(json!({"email": "a@b.co", "password": "x", "password_hash": "y"})),
    )
    .await
    .assert_error(400, "validation_failed");
    t.admin(
        Method::POST,
        "/admin/users",
        Some(json!({"email": "a@b.co", "password_hash": "plaintext"})),
    )
    .await
    .assert_error(400, "validation_failed");
    t.admin(
        Method::POST,
        "/admin/users",
        Some(json!({"email": "a@b.co", "id": "nope"})),
    )
    .await
    .assert_error(400, "validation_failed");
    t.admin(
        Method::POST,
        "/admin/users",
        Some(json!({"email": "a@b.co", "ban_duration": "soon"})),
    )
    .await
    .assert_error(400, "validation_failed");
    assert_eq!(
        t.count_by_str("SELECT count(*) FROM users WHERE email = $1", "a@b.co")
            .await,
        0
    );
});

both!(imported_hashes_sign_in_and_are_upgraded, |_| {}, |t| {
    let bcrypt_hash = bcrypt::hash("from-gotrue", 10)
        .unwrap()
        .replacen("$2b$", "$2a$", 1);
    // An argon2id hash with parameters other than the server's.
    let argon_hash = {
        use argon2::password_hash::PasswordHasher;
        let params = argon2::Params::new(8192, 1, 1, None).unwrap();
        argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
            .hash_password(b"from-elsewhere")
            .unwrap()
            .to_string()
    };
    for (email, hash, pw) in [
        ("bc@example.com", &bcrypt_hash, "from-gotrue"),
        ("ar@example.com", &argon_hash, "from-elsewhere"),
    ] {
        let u = create(
            &t,
            json!({"email": email, "password_hash": hash, "email_confirm": true}),
        )
        .await;
        assert_eq!(
            t.user(u["id"].as_str().unwrap())
                .await
                .encrypted_password
                .as_deref(),
            Some(hash.as_str()),
            "stored as given"
        );
        t.login(email, "wrong")
            .await
            .assert_error(400, "invalid_credentials");
        assert_eq!(t.login(email, pw).await.status, 200);
        let upgraded = t
            .user(u["id"].as_str().unwrap())
            .await
            .encrypted_password
            .unwrap();
        assert!(
            upgraded.starts_with("$argon2id$v=19$m=4096,t=1,p=1$"),
            "{upgraded}"
        );
        assert_eq!(t.login(email, pw).await.status, 200);
    }
});

both!(get_update_and_ban, |_| {}, |t| {
    let s = t.new_session("ed@example.com", "secret123").await;
    let id = s["user"]["id"].as_str().unwrap().to_string();
    let path = format!("/admin/users/{id}");
    t.admin(Method::GET, "/admin/users/not-a-uuid", None)
        .await
        .assert_error(404, "validation_failed");
    t.admin(
        Method::GET,
        &format!("/admin/users/{}", Uuid::new_v4()),
        None,
    )
    .await
    .assert_error(404, "user_not_found");
    let got = t.admin(Method::GET, &path, None).await;
    assert_eq!(got.body["email"], "ed@example.com");
    assert_eq!(got.body["identities"].as_array().unwrap().len(), 1);
    assert_eq!(
        t.admin(Method::GET, &format!("{path}/factors"), None)
            .await
            .body,
        json!([])
    );

    let r = t.admin(Method::PUT, &path, Some(json!({"user_metadata": {"email_verified": null, "k": 1}, "app_metadata": {"plan": "pro"}, "role": "editor"}))).await;
    assert_eq!(r.status, 200, "{}", r.text);
    // The sign-up copied the email identity into the metadata (as GoTrue
    // does); the admin's `null` deleted `email_verified`.
    assert_eq!(
        r.body["user_metadata"],
        json!({"k": 1, "sub": r.body["id"], "email": "ed@example.com", "phone_verified": false})
    );
    assert_eq!(r.body["app_metadata"]["plan"], "pro");
    assert_eq!(r.body["role"], "editor");

    for (spec, hours) in [("24h", Some(24.0)), ("1h30m", Some(1.5)), ("none", None)] {
        let r = t
            .admin(Method::PUT, &path, Some(json!({"ban_duration": spec})))
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        let until = t.user(&id).await.banned_until;
        match hours {
            None => assert!(until.is_none() && r.body.get("banned_until").is_none()),
            Some(h) => {
                let left = (until.unwrap() - chrono::Utc::now()).num_seconds() as f64 / 3600.0;
                assert!((left - h).abs() < 0.01, "{spec}: {left}");
                assert!(r.body["banned_until"].is_string());
            }
        }
    }
    t.admin(Method::PUT, &path, Some(json!({"ban_duration": "1 day"})))
        .await
        .assert_error(400, "validation_failed");
    // Durations past what a clock can hold are refused, not a panic.
    for huge in [
        "9999999999999999h",
        "99999999999999999999999999999h",
        "9999999999999h",
    ] {
        t.admin(Method::PUT, &path, Some(json!({"ban_duration": huge})))
            .await
            .assert_error(400, "validation_failed");
    }
    assert!(t.user(&id).await.banned_until.is_none());
    t.admin(Method::PUT, &path, Some(json!({"ban_duration": "1h"})))
        .await;
    t.login("ed@example.com", "secret123")
        .await
        .assert_error(400, "user_banned");
    t.refresh(s["refresh_token"].as_str().unwrap())
        .await
        .assert_error(400, "user_banned");
    t.request(Method::GET, "/user", s["access_token"].as_str(), None)
        .await
        .assert_error(403, "user_banned");
    t.admin(Method::PUT, &path, Some(json!({"ban_duration": "none"})))
        .await;
    assert_eq!(
        t.request(Method::GET, "/user", s["access_token"].as_str(), None)
            .await
            .status,
        200,
        "banning kept the session"
    );

    // An admin password change ends every session.
    t.admin(Method::PUT, &path, Some(json!({"password": "abc"})))
        .await
        .assert_error(422, "weak_password");
    let r = t
        .admin(
            Method::PUT,
            &path,
            Some(json!({"password": "changed-by-admin"})),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        t.count_by_uuid(
            "SELECT count(*) FROM sessions WHERE user_id = $1",
            id.parse().unwrap()
        )
        .await,
        0
    );
    t.request(Method::GET, "/user", s["access_token"].as_str(), None)
        .await
        .assert_error(403, "session_not_found");
    assert_eq!(
        t.login("ed@example.com", "changed-by-admin").await.status,
        200
    );

    let other = create(&t, json!({"email": "taken@example.com"})).await;
    t.admin(
        Method::PUT,
        &path,
        Some(json!({"email": "taken@example.com"})),
    )
    .await
    .assert_error(422, "email_exists");
    let r = t
        .admin(
            Method::PUT,
            &path,
            Some(json!({"email": "moved@example.com", "email_confirm": true})),
        )
        .await;
    assert_eq!(r.body["email"], "moved@example.com");
    assert_eq!(
        r.body["identities"][0]["identity_data"]["email"],
        "moved@example.com"
    );
    assert_eq!(
        t.login("moved@example.com", "changed-by-admin")
            .await
            .status,
        200
    );
    assert!(other["id"].is_string());
    let mods = t
        .admin(Method::GET, "/admin/audit?query=action:user_modified", None)
        .await;
    assert!(mods.body.as_array().unwrap().len() >= 6);
});

both!(hard_and_soft_delete, |_| {}, |t| {
    let hard = t.new_session("hard@example.com", "secret123").await;
    let soft = t.new_session("soft@example.com", "secret123").await;
    let (hid, sid): (Uuid, Uuid) = (
        hard["user"]["id"].as_str().unwrap().parse().unwrap(),
        soft["user"]["id"].as_str().unwrap().parse().unwrap(),
    );

    let r = t
        .admin(Method::DELETE, &format!("/admin/users/{hid}"), None)
        .await;
    assert_eq!((r.status.as_u16(), &r.body), (200, &json!({})));
    for sql in [
        "SELECT count(*) FROM users WHERE id = $1",
        "SELECT count(*) FROM identities WHERE user_id = $1",
        "SELECT count(*) FROM sessions WHERE user_id = $1",
    ] {
        assert_eq!(t.count_by_uuid(sql, hid).await, 0, "{sql}");
    }
    t.refresh(hard["refresh_token"].as_str().unwrap())
        .await
        .assert_error(400, "refresh_token_not_found");
    t.admin(Method::DELETE, &format!("/admin/users/{hid}"), None)
        .await
        .assert_error(404, "user_not_found");

    let r = t
        .admin(
            Method::DELETE,
            &format!("/admin/users/{sid}"),
            Some(json!({"should_soft_delete": true})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let row = t.user(&sid.to_string()).await;
    assert!(row.deleted_at.is_some());
    let email = row.email.clone().unwrap();
    assert!(!email.contains("soft") && !email.contains('@'), "{email}");
    assert!(!row.has_password());
    assert_eq!(row.user_metadata(), json!({}));
    assert_eq!(
        t.count_by_uuid("SELECT count(*) FROM sessions WHERE user_id = $1", sid)
            .await,
        0
    );
    let ids = t.server.store.identities_of(sid).await.unwrap();
    assert!(
        ids.iter()
            .all(|i| i.identity_data.0 == json!({}) && !i.provider_id.contains(&sid.to_string()))
    );
    assert_eq!(
        t.count_by_str(
            "SELECT count(*) FROM users WHERE email = $1",
            "soft@example.com"
        )
        .await,
        0,
        "no identifying data left"
    );
    t.login("soft@example.com", "secret123")
        .await
        .assert_error(400, "invalid_credentials");
    let after = t
        .admin(Method::GET, &format!("/admin/users/{sid}"), None)
        .await;
    assert!(after.body["deleted_at"].is_string());
    let deleted = t
        .admin(Method::GET, "/admin/audit?query=action:user_deleted", None)
        .await;
    assert_eq!(deleted.body.as_array().unwrap().len(), 2);
    // Reusing the address afterwards works: nothing holds it.
    assert_eq!(t.signup("soft@example.com", "secret123").await.status, 200);
});

// Legacy tokens: a refresh audits the revocation too (v2 writes no rows).
both!(
    audit_log_queries,
    |c| c.refresh_token_algorithm_version = Some(1),
    |t| {
        let s = t.new_session("aud@example.com", "secret123").await;
        t.login("aud@example.com", "secret123").await;
        t.refresh(s["refresh_token"].as_str().unwrap()).await;
        let all = t.admin(Method::GET, "/admin/audit", None).await;
        assert_eq!(all.status, 200);
        let actions: Vec<&str> = all
            .body
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["payload"]["action"].as_str().unwrap())
            .collect();
        assert_eq!(
            actions,
            [
                "token_revoked",
                "token_refreshed",
                "login",
                "login",
                "user_signedup"
            ],
            "newest first"
        );
        assert_eq!(all.header("x-total-count"), Some("5"));
        assert!(
            all.body[0]["id"].is_string()
                && all.body[0]["created_at"].is_string()
                && all.body[0]["ip_address"] == "127.0.0.1"
        );
        let logins = t
            .admin(Method::GET, "/admin/audit?query=action:login", None)
            .await;
        assert_eq!(logins.body.as_array().unwrap().len(), 2);
        let tokens = t
            .admin(Method::GET, "/admin/audit?query=type:token", None)
            .await;
        assert_eq!(tokens.body.as_array().unwrap().len(), 2);
        let mine = t
            .admin(Method::GET, "/admin/audit?query=author:AUD@example", None)
            .await;
        assert_eq!(
            mine.body.as_array().unwrap().len(),
            5,
            "author matching ignores case"
        );
        let page = t
            .admin(Method::GET, "/admin/audit?page=2&per_page=2", None)
            .await;
        assert_eq!(page.body.as_array().unwrap().len(), 2);
        assert_eq!(page.body[0]["payload"]["action"], "login");
        assert_eq!(
            page.header("link"),
            Some(
                "</admin/audit?page=3&per_page=2>; rel=\"next\", </admin/audit?page=3&per_page=2>; rel=\"last\""
            )
        );
        t.admin(Method::GET, "/admin/audit?query=who:me", None)
            .await
            .assert_error(400, "validation_failed");
        assert_eq!(
            claims(s["access_token"].as_str().unwrap())["email"],
            "aud@example.com"
        );
    }
);

// Issue 9, defect 8: twenty simultaneous admin creates of one address: one
// user, nineteen clean 422 `email_exists`.
both!(concurrent_admin_creates_of_one_address, |_| {}, |t| {
    let key = t.service_key();
    let body = json!({"email": "dup@example.com", "password": "secret123"});
    let creates = (0..20).map(|_| {
        t.http
            .post(t.url("/admin/users"))
            .bearer_auth(&key)
            .json(&body)
    });
    let replies = crate::common::at_once(creates).await;
    assert_eq!(
        crate::common::successes_else(&replies, 422, "email_exists"),
        1
    );
    let holders = "SELECT count(*) FROM users WHERE email = $1";
    assert_eq!(t.count_by_str(holders, "dup@example.com").await, 1);
});
