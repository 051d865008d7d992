//! castellan as an OAuth 2.1 server (issue 30), its clients: registered by
//! an admin or dynamically, listed in pages, changed, given new secrets
//! and deleted, with GoTrue's validation and errors; secrets kept hashed.

use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::both;
use crate::common::TestServer;

fn on(c: &mut castellan_core::Config) {
    c.oauth_server = Some(castellan_core::config::OAuthServerConfig {
        authorization_path: "/oauth/consent".into(),
        ..Default::default()
    });
}

fn dynamic(c: &mut castellan_core::Config) {
    on(c);
    if let Some(s) = c.oauth_server.as_mut() {
        s.allow_dynamic_registration = true;
    }
    c.rate_limits.oauth_client_register.events = 3;
    c.rate_limits.oauth_client_register.burst = 3;
}

async fn create(t: &TestServer, body: Value) -> crate::common::Reply {
    t.admin(Method::POST, "/admin/oauth/clients", Some(body))
        .await
}

both!(
    an_admin_registers_reads_changes_and_deletes_a_client,
    on,
    |t| {
        let r = create(
            &t,
            json!({
                "redirect_uris": ["https://app.example.com/callback", "http://localhost:3000/cb"],
                "client_name": "Example App",
                "client_uri": "https://app.example.com",
            }),
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.text);
        let id = r.body["client_id"].as_str().unwrap().to_string();
        let secret = r.body["client_secret"].as_str().unwrap().to_string();
        assert_eq!(r.header("cache-control"), Some("no-store"));
        assert!(secret.len() >= 43, "{secret}");
        assert_eq!(r.body["client_type"], "confidential");
        assert_eq!(r.body["token_endpoint_auth_method"], "client_secret_basic");
        assert_eq!(
            r.body["grant_types"],
            json!(["authorization_code", "refresh_token"])
        );
        assert_eq!(r.body["response_types"], json!(["code"]));
        assert_eq!(r.body["registration_type"], "manual");
        assert_eq!(r.body["redirect_uris"][1], "http://localhost:3000/cb");
        // Kept as its SHA-256, never as given.
        let uid = Uuid::parse_str(&id).unwrap();
        let hashed =
            "SELECT count(*) FROM oauth_clients WHERE id = $1 AND client_secret_hash IS NOT NULL";
        assert_eq!(t.count_by_uuid(hashed, uid).await, 1);
        let plain = "SELECT count(*) FROM oauth_clients WHERE client_secret_hash = $1";
        assert_eq!(t.count_by_str(plain, &secret).await, 0);
        let hash = castellan_service::oauth_clients::secret_hash(&secret);
        assert_eq!(t.count_by_str(plain, &hash).await, 1);

        let got = t
            .admin(Method::GET, &format!("/admin/oauth/clients/{id}"), None)
            .await;
        assert_eq!(got.status, 200, "{}", got.text);
        assert!(got.body.get("client_secret").is_none());
        assert_eq!(got.body["client_name"], "Example App");

        let path = format!("/admin/oauth/clients/{id}");
        let r = t.admin(Method::PUT, &path, Some(json!({"client_name": "Renamed", "token_endpoint_auth_method": "client_secret_post"}))).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.body["client_name"], "Renamed");
        assert_eq!(r.body["token_endpoint_auth_method"], "client_secret_post");
        t.admin(
            Method::PUT,
            &path,
            Some(json!({"token_endpoint_auth_method": "none"})),
        )
        .await
        .assert_error(400, "validation_failed");
        t.admin(Method::PUT, &path, Some(json!({})))
            .await
            .assert_error(400, "validation_failed");

        let r = t
            .admin(Method::POST, &format!("{path}/regenerate_secret"), None)
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        let fresh = r.body["client_secret"].as_str().unwrap();
        assert_ne!(fresh, secret);
        assert_eq!(t.count_by_str(plain, &hash).await, 0);

        let r = t.admin(Method::DELETE, &path, None).await;
        assert_eq!(r.status, 204, "{}", r.text);
        t.admin(Method::GET, &path, None)
            .await
            .assert_error(404, "oauth_client_not_found");
        t.admin(Method::DELETE, &path, None)
            .await
            .assert_error(404, "oauth_client_not_found");
        // Soft-deleted, as GoTrue's: the row stays with deleted_at.
        let kept = "SELECT count(*) FROM oauth_clients WHERE id = $1 AND deleted_at IS NOT NULL";
        assert_eq!(t.count_by_uuid(kept, uid).await, 1);
        t.admin(Method::GET, "/admin/oauth/clients/not-a-uuid", None)
            .await
            .assert_error(400, "validation_failed");
    }
);

both!(null_fields_are_absent_ones, on, |t| {
    // supabase-py's body: every optional field present, null.
    let r = create(
        &t,
        json!({
            "client_name": "Py", "client_uri": null, "logo_uri": null, "client_type": null,
            "token_endpoint_auth_method": null, "redirect_uris": ["https://example.com/callback"],
            "grant_types": null, "response_types": null, "scope": null,
        }),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(
        r.body["grant_types"],
        json!(["authorization_code", "refresh_token"])
    );
    let r = create(&t, json!({"redirect_uris": null})).await;
    r.assert_error(400, "validation_failed");
    assert_eq!(r.body["msg"], "redirect_uris is required");
});

both!(values_at_their_column_limits_are_kept_whole, on, |t| {
    // 1024 characters of a 3-byte character: within PostgreSQL's
    // char_length check and SQLite's length check alike.
    let name = "名".repeat(341);
    let uri = format!("https://a.example.com/{}", "x".repeat(2048 - 22));
    let logo = format!("https://a.example.com/{}", "y".repeat(2048 - 22));
    let r = create(
        &t,
        json!({"redirect_uris": [uri], "client_name": name, "logo_uri": logo}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["client_name"], name);
    assert_eq!(r.body["redirect_uris"][0], uri);
    let id = r.body["client_id"].as_str().unwrap();
    let got = t
        .admin(Method::GET, &format!("/admin/oauth/clients/{id}"), None)
        .await;
    assert_eq!(got.body["logo_uri"], logo);
});

both!(public_clients_have_no_secret, on, |t| {
    let r = create(
        &t,
        json!({"redirect_uris": ["myapp://callback"], "client_type": "public"}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert!(r.body.get("client_secret").is_none());
    assert_eq!(r.body["token_endpoint_auth_method"], "none");
    let id = r.body["client_id"].as_str().unwrap();
    t.admin(
        Method::POST,
        &format!("/admin/oauth/clients/{id}/regenerate_secret"),
        None,
    )
    .await
    .assert_error(400, "validation_failed");
    let r = create(&t, json!({"redirect_uris": ["https://a.example.com/cb"], "token_endpoint_auth_method": "none"})).await;
    assert_eq!(r.body["client_type"], "public");
});

both!(registrations_are_validated_as_gotrue_does, on, |t| {
    for (body, says) in [
        (json!({}), "redirect_uris is required"),
        (
            json!({"redirect_uris": ["http://app.example.com/cb"]}),
            "HTTP scheme only allowed for localhost",
        ),
        (
            json!({"redirect_uris": ["javascript://x/alert(1)"]}),
            "not allowed for security reasons",
        ),
        (
            json!({"redirect_uris": ["https://a.example.com/cb#x"]}),
            "fragment not allowed",
        ),
        (
            json!({"redirect_uris": ["/relative"]}),
            "invalid URL format",
        ),
        (
            json!({"redirect_uris": vec!["https://a.example.com/cb"; 11]}),
            "cannot exceed 10 items",
        ),
        (
            json!({"redirect_uris": ["https://a.example.com/cb"], "grant_types": ["password"]}),
            "grant_types must only contain",
        ),
        (
            json!({"redirect_uris": ["https://a.example.com/cb"], "client_type": "public", "token_endpoint_auth_method": "client_secret_basic"}),
            "is inconsistent with",
        ),
        (
            json!({"redirect_uris": ["https://a.example.com/cb"], "client_name": "x".repeat(1025)}),
            "client_name cannot exceed 1024",
        ),
        (
            json!({"redirect_uris": ["https://a.example.com/cb"], "logo_uri": "not a url"}),
            "logo_uri must be a valid URL",
        ),
        (
            json!({"redirect_uris": ["https://a.example.com/cb"], "client_name": "a\u{0}b"}),
            "NUL",
        ),
        (
            json!({"redirect_uris": [format!("https://a.example.com/{}", "x".repeat(2100))]}),
            "cannot exceed 2048",
        ),
        (
            json!({"redirect_uris": [" https://a.example.com/cb"]}),
            "whitespace",
        ),
        (
            json!({"redirect_uris": ["https://a.example.com/c\nb"]}),
            "whitespace",
        ),
        (
            json!({"redirect_uris": ["https://a.example.com/cb"], "grant_types": vec!["refresh_token"; 50]}),
            "must not repeat",
        ),
        (
            json!({"redirect_uris": ["https://a.example.com/cb"], "client_uri": "javascript:alert(1)"}),
            "client_uri must be a valid URL",
        ),
        (
            json!({"redirect_uris": ["https://a.example.com/cb"], "logo_uri": "data:image/svg+xml,<svg/>"}),
            "logo_uri must be a valid URL",
        ),
    ] {
        let r = create(&t, body).await;
        r.assert_error(400, "validation_failed");
        assert!(
            r.body["msg"].as_str().unwrap().contains(says),
            "{} / {says}",
            r.text
        );
    }
    let n = "SELECT count(*) FROM oauth_clients WHERE CAST(registration_type AS TEXT) = $1";
    assert_eq!(t.count_by_str(n, "manual").await, 0);
    // Not an admin: refused before anything is read.
    let user = t.new_session("not-admin@example.com", "secret123").await;
    let token = user["access_token"].as_str().unwrap();
    let r = t
        .request(Method::GET, "/admin/oauth/clients", Some(token), None)
        .await;
    assert_eq!(r.status, 403, "{}", r.text);
});

both!(clients_are_listed_in_pages, on, |t| {
    let r = t.admin(Method::GET, "/admin/oauth/clients", None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body, json!({"clients": []}));
    for i in 0..3 {
        let r = create(
            &t,
            json!({"redirect_uris": [format!("https://a{i}.example.com/cb")]}),
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
    let r = t
        .admin(Method::GET, "/admin/oauth/clients?per_page=2", None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["clients"].as_array().unwrap().len(), 2);
    assert_eq!(r.header("x-total-count"), Some("3"));
    assert!(r.header("link").unwrap().contains("rel=\"next\""));
    // Newest first, never a secret.
    assert_eq!(
        r.body["clients"][0]["redirect_uris"][0],
        "https://a2.example.com/cb"
    );
    assert!(r.body["clients"][0].get("client_secret").is_none());
});

both!(dynamic_registration_is_off_unless_allowed, on, |t| {
    let body = json!({"redirect_uris": ["https://a.example.com/cb"]});
    t.post("/oauth/clients/register", body)
        .await
        .assert_error(403, "oauth_dynamic_client_registration_disabled");
    // Refused before the body is read, as GoTrue does.
    let r = t
        .http
        .post(t.url("/oauth/clients/register"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // An unknown client is not found before its changes are read.
    let path = format!("/admin/oauth/clients/{}", Uuid::new_v4());
    t.admin(Method::PUT, &path, Some(json!({})))
        .await
        .assert_error(404, "oauth_client_not_found");
});

both!(dynamic_registration_is_rate_limited, dynamic, |t| {
    let body = json!({"redirect_uris": ["https://a.example.com/cb"], "client_name": "Self-made"});
    for _ in 0..3 {
        let r = t.post("/oauth/clients/register", body.clone()).await;
        assert_eq!(r.status, 201, "{}", r.text);
        assert_eq!(r.body["registration_type"], "dynamic");
    }
    let r = t.post("/oauth/clients/register", body).await;
    r.assert_error(429, "over_request_rate_limit");
    let n = "SELECT count(*) FROM oauth_clients WHERE CAST(registration_type AS TEXT) = $1";
    assert_eq!(t.count_by_str(n, "dynamic").await, 3);
});

both!(the_oauth_server_off_is_404_feature_disabled, |_| {}, |t| {
    t.admin(Method::GET, "/admin/oauth/clients", None)
        .await
        .assert_error(404, "feature_disabled");
    t.post("/oauth/clients/register", json!({}))
        .await
        .assert_error(404, "feature_disabled");
});

both!(
    dynamic_registrations_are_capped,
    |c: &mut castellan_core::Config| {
        dynamic(c);
        c.oauth_server.as_mut().unwrap().max_dynamic_clients = 2;
        c.rate_limits.oauth_client_register.events = 100;
        c.rate_limits.oauth_client_register.burst = 100;
    },
    |t| {
        let body = json!({"redirect_uris": ["https://app.example.com/cb"]});
        for _ in 0..2 {
            let r = t.post("/oauth/clients/register", body.clone()).await;
            assert_eq!(r.status, 201, "{}", r.text);
        }
        let r = t.post("/oauth/clients/register", body.clone()).await;
        r.assert_error(403, "oauth_dynamic_client_registration_disabled");
        // An admin's registrations are not counted, and a deletion makes room.
        assert_eq!(create(&t, body.clone()).await.status, 201);
        let list = t.admin(Method::GET, "/admin/oauth/clients", None).await;
        let dynamic = list.body["clients"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["registration_type"] == "dynamic")
            .unwrap()["client_id"]
            .as_str()
            .unwrap()
            .to_string();
        let path = format!("/admin/oauth/clients/{dynamic}");
        assert_eq!(t.admin(Method::DELETE, &path, None).await.status, 204);
        let r = t.post("/oauth/clients/register", body).await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
);
