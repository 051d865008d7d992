use reqwest::Method;
use serde_json::{Value, json};

use crate::both;
use crate::common::read;

both!(ready_reports_what_this_process_needs, |_| {}, |t| {
    for prefix in ["", "/auth/v1"] {
        let r = t
            .request(Method::GET, &format!("{prefix}/ready"), None, None)
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(
            r.body,
            json!({"status": "ready", "down": [], "database": "up", "storage": "up",
                   "actors": {"otp_issuer": "up", "provider_broker": "up", "rate_limiter": "up", "session_manager": "up"},
                   "workers": "up"})
        );
    }
});

both!(
    health_and_settings_on_both_prefixes,
    |c| c.anonymous_users_enabled = true,
    |t| {
        for prefix in ["", "/auth/v1"] {
            let h = t
                .request(Method::GET, &format!("{prefix}/health"), None, None)
                .await;
            assert_eq!(h.status, 200);
            assert_eq!(h.body["name"], "GoTrue");
            assert!(h.body["version"].is_string() && h.body["description"].is_string());
            let s = t
                .request(Method::GET, &format!("{prefix}/settings"), None, None)
                .await;
            assert_eq!(s.status, 200);
            assert_eq!(s.body["external"]["email"], true);
            assert_eq!(s.body["external"]["phone"], false);
            assert_eq!(s.body["external"]["anonymous_users"], true);
            assert_eq!(s.body["mailer_autoconfirm"], true);
            let keys: Vec<_> = s.body.as_object().unwrap().keys().cloned().collect();
            assert_eq!(
                keys,
                [
                    "external",
                    "disable_signup",
                    "mailer_autoconfirm",
                    "phone_autoconfirm",
                    "sms_provider",
                    "saml_enabled",
                    "saml_private_key_next_configured",
                    "passkeys_enabled"
                ]
            );
            assert_eq!(s.body["external"].as_object().unwrap().len(), 26);
        }
    }
);

both!(error_dialects, |_| {}, |t| {
    let legacy = t.login("nobody@example.com", "secret123").await;
    legacy.assert_error(400, "invalid_credentials");
    assert!(legacy.header("x-supabase-api-version").is_none());

    let modern = read(
        t.http
            .post(t.url("/token?grant_type=password"))
            .header("X-Supabase-Api-Version", "2024-01-01")
            .json(&json!({"email": "nobody@example.com", "password": "secret123"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(modern.status, 400);
    assert_eq!(
        modern.body,
        json!({"code": "invalid_credentials", "message": "Invalid login credentials"})
    );
    assert_eq!(modern.header("x-supabase-api-version"), Some("2024-01-01"));
    assert_eq!(
        modern.header("x-sb-error-code"),
        Some("invalid_credentials")
    );

    let weak = read(
        t.http
            .post(t.url("/signup"))
            .header("X-Supabase-Api-Version", "2024-01-01")
            .json(&json!({"email": "w@example.com", "password": "abc"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(weak.status, 422);
    assert_eq!(weak.body["code"], "weak_password");
    assert_eq!(weak.body["weak_password"]["reasons"], json!(["length"]));
    assert!(weak.body["message"].is_string());

    // An unparsable version is the legacy dialect.
    let odd = read(
        t.http
            .post(t.url("/signup"))
            .header("X-Supabase-Api-Version", "latest")
            .json(&json!({"email": "w@example.com", "password": "abc"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    odd.assert_error(422, "weak_password");
    assert_eq!(odd.body["weak_password"]["reasons"], json!(["length"]));

    // A refusal in OAuth's shape echoes the version too, as GoTrue's errors do.
    let oauth = read(
        t.http
            .post(t.url("/token?grant_type=id_token"))
            .header("X-Supabase-Api-Version", "2024-01-01")
            .json(&json!({"id_token": "x"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(oauth.status, 400);
    assert_eq!(oauth.body["error"], "invalid request");
    assert_eq!(oauth.header("x-supabase-api-version"), Some("2024-01-01"));
});

both!(bad_bodies_and_paths, |_| {}, |t| {
    let empty = read(t.http.post(t.url("/signup")).send().await.unwrap()).await;
    empty.assert_error(400, "bad_json");
    // In Go's words, as GoTrue answers (issue 26).
    assert_eq!(
        empty.body["msg"],
        "Could not parse request body as JSON: unexpected end of JSON input"
    );
    let not_json = read(
        t.http
            .post(t.url("/signup"))
            .body("hello")
            .send()
            .await
            .unwrap(),
    )
    .await;
    not_json.assert_error(400, "bad_json");
    assert_eq!(
        not_json.body["msg"],
        "Could not parse request body as JSON: invalid character 'h' looking for beginning of value"
    );
    let broken = read(
        t.http
            .post(t.url("/signup"))
            .body("{\"email\":")
            .send()
            .await
            .unwrap(),
    )
    .await;
    broken.assert_error(400, "bad_json");
    assert_eq!(
        broken.body["msg"],
        "Could not parse request body as JSON: unexpected end of JSON input"
    );
    let wrong_type = t
        .post("/signup", json!({"email": 5, "password": "x"}))
        .await;
    wrong_type.assert_error(400, "bad_json");
    let huge = "x".repeat(1024 * 1024 + 10);
    let big = read(
        t.http
            .post(t.url("/signup"))
            .body(format!("{{\"email\":\"{huge}\"}}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    big.assert_error(413, "request_entity_too_large");
    assert_eq!(
        t.count_by_str("SELECT count(*) FROM users WHERE $1 = $1", "x")
            .await,
        0,
        "nothing stored"
    );
    let missing = t.request(Method::GET, "/nope", None, None).await;
    assert_eq!(missing.status, 404);
    assert!(missing.body.is_object());
    let dup = t
        .post("/token?grant_type=password&grant_type=pkce", json!({}))
        .await;
    dup.assert_error(400, "validation_failed");
    let wrong_method = t.request(Method::DELETE, "/signup", None, None).await;
    assert_eq!(wrong_method.status, 405);
});

both!(
    rate_limit_answers_429_with_retry_after,
    |c| {
        c.rate_limits.token_refresh = castellan_core::config::RateLimit {
            events: 2,
            per: std::time::Duration::from_secs(300),
            burst: 2,
        };
    },
    |t| {
        for _ in 0..2 {
            t.login("x@example.com", "secret123")
                .await
                .assert_error(400, "invalid_credentials");
        }
        let r = t.login("x@example.com", "secret123").await;
        r.assert_error(429, "over_request_rate_limit");
        assert!(
            r.body["msg"]
                .as_str()
                .unwrap()
                .contains("GOTRUE_RATE_LIMIT_TOKEN_REFRESH")
        );
        let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=150).contains(&retry), "{retry}");
        // Another client (as the local proxy reports it) has its own bucket.
        let other = read(
            t.http
                .post(t.url("/token?grant_type=password"))
                .header("X-Forwarded-For", "203.0.113.9")
                .json(&json!({"email": "x@example.com", "password": "secret123"}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        other.assert_error(400, "invalid_credentials");
        let metrics = t.request(Method::GET, "/metrics", None, None).await.text;
        assert!(
            metrics.contains(
                "castellan_rate_limit_rejections_total{bucket=\"token_refresh\",key=\"peer\"}"
            ),
            "{metrics}"
        );
    }
);

both!(
    rate_limit_keyed_by_configured_header,
    |c| {
        c.rate_limits.header = Some("x-real-client".into());
        c.rate_limits.sign_ups = castellan_core::config::RateLimit {
            events: 1,
            per: std::time::Duration::from_secs(300),
            burst: 1,
        };
    },
    |t| {
        let send = |who: &'static str, email: &'static str| {
            let req = t
                .http
                .post(t.url("/signup"))
                .header("x-real-client", who)
                .json(&json!({"email": email, "password": "secret123"}));
            async move { read(req.send().await.unwrap()).await }
        };
        assert_eq!(send("a", "ra@example.com").await.status, 200);
        send("a", "rb@example.com")
            .await
            .assert_error(429, "over_request_rate_limit");
        assert_eq!(send("b", "rc@example.com").await.status, 200);
        assert_eq!(
            t.count_by_str(
                "SELECT count(*) FROM users WHERE email = $1",
                "rb@example.com"
            )
            .await,
            0
        );
    }
);

both!(metrics_are_exported, |_| {}, |t| {
    let s = t.new_session("y@example.com", "secret123").await;
    let access = s["access_token"].as_str().unwrap();
    assert_eq!(t.get_user(access).await.status, 200);
    assert_eq!(t.get_user(access).await.status, 200);
    let m = t.request(Method::GET, "/metrics", None, None).await;
    assert_eq!(m.status, 200);
    for needle in [
        "castellan_http_requests_total{route=\"/signup\",method=\"POST\",status=\"200\"}",
        "castellan_http_request_duration_seconds_bucket{route=\"/signup\",method=\"POST\"",
        "castellan_actor_messages_total{actor=\"session_manager\",message=\"feed_following\",outcome=\"ok\"}",
        "castellan_actor_handling_seconds_bucket{actor=\"session_manager\",message=\"feed_following\"",
        "castellan_session_cache_misses_total",
        "castellan_session_cache_hits_total",
        "castellan_db_queries_total",
    ] {
        assert!(m.text.contains(needle), "missing {needle}");
    }
});

// Walks the route table: every limited route answers 429 with
// `Retry-After` past its limit, for that client only, and nothing else
// happens (no user is created by a refused sign-up).
both!(
    every_route_in_the_limit_table_is_limited,
    |c| {
        c.rate_limits.header = Some("x-test-client".into());
        let two = castellan_core::config::RateLimit {
            events: 2,
            per: std::time::Duration::from_secs(300),
            burst: 2,
        };
        c.rate_limits.token_refresh = two;
        c.rate_limits.sign_ups = two;
        c.rate_limits.anonymous_users = two;
        c.rate_limits.verify = two;
        c.rate_limits.otp = two;
        c.rate_limits.mfa = two;
        c.rate_limits.passkey = two;
        c.rate_limits.oauth_client_register = two;
        // Its sign-in is in the table; off, it is not routed at all.
        c.console_enabled = true;
    },
    |t| {
        // Redirects (the OAuth routes answer with them) are not followed.
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let send = |method: Method, path: &str, client: &str, body: Value| {
            let mut req = http
                .request(method.clone(), t.url(path))
                .header("x-test-client", client);
            if method != Method::GET {
                req = req.json(&body);
            }
            async move { read(req.send().await.unwrap()).await }
        };
        // Anonymous sign-ins and sign-ups share the route, not the bucket.
        let mut cases: Vec<(Method, String, Value)> = vec![(
            Method::POST,
            "/signup".into(),
            json!({"email": "limited@example.com", "password": "secret123"}),
        )];
        for row in castellan::api::RATE_LIMITS {
            let method = Method::from_bytes(row.method.as_str().as_bytes()).unwrap();
            // Served under /auth/v1 too, with the same buckets.
            let path = if row.path == "/verify" && method == Method::GET {
                format!("/auth/v1{}", row.path)
            } else {
                row.path.to_string()
            };
            cases.push((method, path, json!({})));
        }
        for (i, (method, path, body)) in cases.iter().enumerate() {
            let client = format!("client-{i}");
            for n in 0..2 {
                let r = send(method.clone(), path, &client, body.clone()).await;
                assert_ne!(r.status, 429, "{method} {path} #{n}: {}", r.text);
            }
            let r = send(method.clone(), path, &client, body.clone()).await;
            r.assert_error(429, "over_request_rate_limit");
            let retry: u64 = r
                .header("retry-after")
                .expect("Retry-After")
                .parse()
                .unwrap();
            assert!(retry >= 1, "{method} {path}: Retry-After {retry}");
            let other = send(method.clone(), path, &format!("other-{i}"), body.clone()).await;
            assert_ne!(
                other.status, 429,
                "{method} {path} for another client: {}",
                other.text
            );
        }
        // The refused third sign-up created nobody; the other client's did.
        assert_eq!(
            t.count_by_str(
                "SELECT count(*) FROM users WHERE email = $1",
                "limited@example.com"
            )
            .await,
            1
        );
    }
);

// Metric labels come from closed sets: invented methods and paths do not
// become labels.
both!(metric_labels_are_bounded, |_| {}, |t| {
    for i in 0..20 {
        let method = Method::from_bytes(format!("INVENTED{i}").as_bytes()).unwrap();
        let r = t
            .request(method, &format!("/nowhere-{i}"), None, None)
            .await;
        assert_eq!(r.status, 404, "{}", r.text);
    }
    let m = t.request(Method::GET, "/metrics", None, None).await.text;
    assert!(!m.contains("INVENTED"), "{m}");
    assert!(!m.contains("nowhere"), "{m}");
    assert!(m.contains("method=\"other\""), "{m}");
});

// A NUL in any string a client sends is a 400 on both databases
// (PostgreSQL cannot store one in text), never a 500, and changes nothing.
both!(nul_characters_are_refused, |_| {}, |t| {
    let s = t.new_session("nul@example.com", "secret123").await;
    let access = s["access_token"].as_str().unwrap();
    let bodies = [
        (
            "/signup",
            json!({"email": "a\u{0}b@example.com", "password": "secret123"}),
        ),
        (
            "/signup",
            json!({"email": "c@example.com", "password": "secret\u{0}123"}),
        ),
        (
            "/signup",
            json!({"email": "d@example.com", "password": "secret123", "data": {"k\u{0}": "v"}}),
        ),
        (
            "/token?grant_type=refresh_token",
            json!({"refresh_token": "abcdefghijk\u{0}l"}),
        ),
        (
            "/token?grant_type=pkce",
            json!({"auth_code": "a\u{0}", "code_verifier": "v"}),
        ),
        (
            "/verify",
            json!({"type": "signup", "token_hash": "x\u{0}y"}),
        ),
        ("/otp", json!({"email": "e\u{0}@example.com"})),
    ];
    for (path, body) in bodies {
        t.post(path, body.clone())
            .await
            .assert_error(400, "validation_failed");
    }
    t.request(
        Method::PUT,
        "/user",
        Some(access),
        Some(json!({"data": {"name": "x\u{0}y"}})),
    )
    .await
    .assert_error(400, "validation_failed");
    t.admin(Method::GET, "/admin/users?filter=a%00b", None)
        .await
        .assert_error(400, "validation_failed");
    assert_eq!(
        t.count_by_str(
            "SELECT count(*) FROM users WHERE email <> $1",
            "nul@example.com"
        )
        .await,
        0
    );
    assert_eq!(
        t.get_user(access).await.body["user_metadata"].get("name"),
        None
    );
});

// Issue 9: `/metrics` on an address of its own, and then not on the API port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_on_their_own_address() {
    let t = crate::common::spawn(crate::common::Backend::Sqlite, |c| {
        c.metrics_addr = Some("127.0.0.1:0".into());
    })
    .await;
    assert_eq!(
        t.request(Method::GET, "/health", None, None).await.status,
        200
    );
    let public = t.request(Method::GET, "/metrics", None, None).await;
    public.assert_error(404, "not_found");
    let at = t.server.metrics_addr.expect("a metrics address");
    let r = t
        .http
        .get(format!("http://{at}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(text.contains("castellan_http_requests_total"), "{text}");
    let other = t
        .http
        .get(format!("http://{at}/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 404, "only /metrics there");
    t.stop().await;
}

/// A new deployment's panels read 0, not "No data": the labelled series
/// the dashboards query exist from the first scrape, and the queues'
/// backlog is counted when scraped, before any expiry tick. A route called
/// under `/auth/v1` counts as the route itself (issue 33).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_server_exports_its_series_at_zero() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("fresh.db").to_string_lossy().into_owned();
    let (_child, base, _log) = crate::common::castellan_process_in(&[], &["serve"], &db, &[]).await;
    let http = reqwest::Client::new();
    for path in ["/settings", "/auth/v1/settings", "/auth/v1/settings"] {
        let r = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    let m = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for zero in [
        "castellan_queue_pending{queue=\"email\"} 0",
        "castellan_queue_pending{queue=\"sms\"} 0",
        "castellan_rate_limit_rejections_total{bucket=\"verify\",key=\"peer\"} 0",
        "castellan_sms_total{provider=\"log\",outcome=\"sent\"} 0",
        "castellan_mfa_total{op=\"verify\",outcome=\"ok\"} 0",
        "castellan_otp_total{op=\"send\",outcome=\"ok\"} 0",
        "castellan_signups_total{provider=\"email\",confirmed=\"false\"} 0",
        "castellan_refreshes_total{outcome=\"refused\"} 0",
        "castellan_queue_enqueued_total{queue=\"email\",kind=\"magic_link\"} 0",
    ] {
        assert!(m.lines().any(|l| l == zero), "missing {zero:?}");
    }
    assert!(
        m.lines().any(|l| l
            == "castellan_http_requests_total{route=\"/settings\",method=\"GET\",status=\"200\"} 3"),
        "{m}"
    );
    assert!(!m.contains("route=\"/auth/v1/"), "a prefixed route label");
}
