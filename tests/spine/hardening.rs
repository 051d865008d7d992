//! Issue 24 ("Hardening II"): attacks that worked on the build before it,
//! each kept fixed. Input that reaches a bounded column or a cache is
//! refused with a 400 before it can cost memory or a 500; look-alike
//! addresses, not-yet-valid tokens, proxy headers from unconfigured peers.
//! The code-guessing paths are in `email` and `phone`, slow sockets in
//! `listener`, `/resend`'s timing in `timing`.

use reqwest::Method;
use serde_json::{Value, json};

use crate::both;
use crate::common::{self, TestServer};

/// `{"a": [0, 0, …]}`: `n` zeros, the shape that costs most in memory per
/// byte of JSON (each element is a whole `Value`).
fn zeros(n: usize) -> Value {
    json!({ "a": vec![0; n] })
}

/// Just under the 16 KiB bound as JSON text.
fn largest_metadata() -> Value {
    let v = zeros(8_000);
    assert!(
        serde_json::to_string(&v).unwrap().len() <= castellan_core::validate::MAX_METADATA_BYTES
    );
    v
}

/// A sign-up body carrying the largest metadata that fits.
fn heavy_signup(email: &str) -> Value {
    json!({"email": email, "password": "secret123", "data": largest_metadata()})
}

async fn metadata_of(t: &TestServer, email: &str) -> Value {
    let id = t.user_id_by_email(email).await;
    t.user(&id.to_string())
        .await
        .raw_user_meta_data
        .map(|j| j.0)
        .unwrap_or(Value::Null)
}

// P2: metadata is bounded as stored, after merging, on every way in.
both!(metadata_is_bounded_as_stored, |_| {}, |t| {
    let too_big = zeros(9_000);
    let r = t
        .post(
            "/signup",
            json!({"email": "big@example.com", "password": "secret123", "data": too_big}),
        )
        .await;
    r.assert_error(400, "validation_failed");
    assert!(r.text.contains("user_metadata"), "{}", r.text);
    let users = "SELECT count(*) FROM users WHERE email = $1";
    assert_eq!(
        t.count_by_str(users, "big@example.com").await,
        0,
        "nothing stored"
    );

    // Two updates that fit alone do not fit merged.
    let s = t.signup("grow@example.com", "secret123").await;
    let at = s.body["access_token"].as_str().unwrap();
    let half = |k: &str| json!({ k: "x".repeat(9_000) });
    let put = |data: Value| t.request(Method::PUT, "/user", Some(at), Some(json!({"data": data})));
    assert_eq!(put(half("one")).await.status, 200);
    put(half("two"))
        .await
        .assert_error(400, "validation_failed");
    let stored = metadata_of(&t, "grow@example.com").await;
    assert!(
        stored.get("one").is_some() && stored.get("two").is_none(),
        "{stored}"
    );

    // The admin API: both objects, on create and on update.
    let body =
        json!({"email": "adm@example.com", "password": "secret123", "app_metadata": too_big});
    t.admin(Method::POST, "/admin/users", Some(body))
        .await
        .assert_error(400, "validation_failed");
    let id = t.user_id_by_email("grow@example.com").await;
    let body = json!({"user_metadata": {"three": "x".repeat(9_000)}});
    t.admin(Method::PUT, &format!("/admin/users/{id}"), Some(body))
        .await
        .assert_error(400, "validation_failed");
    // The largest that fits is taken whole.
    let r = t.post("/signup", heavy_signup("fits@example.com")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        metadata_of(&t, "fits@example.com").await["a"]
            .as_array()
            .unwrap()
            .len(),
        8_000
    );
});

// P2: one user's many sessions with the largest metadata fill the session
// cache to its byte budget and no further (each session used to cost its
// own copy, counted as one entry whatever its size).
both!(
    the_session_cache_is_bounded_by_bytes,
    |c| c.session_cache_bytes = 2 << 20,
    |t| {
        let r = t.post("/signup", heavy_signup("heavy@example.com")).await;
        assert_eq!(r.status, 200, "{}", r.text);
        for _ in 0..40 {
            let login = t.login("heavy@example.com", "secret123").await;
            let at = login.body["access_token"].as_str().unwrap();
            assert_eq!(t.get_user(at).await.status, 200);
        }
        let stats = t.server.state.actors.session_cache.stats().await;
        eprintln!("session cache after 40 heavy sessions: {stats:?}");
        assert!(stats.bytes <= 2 * (2 << 20), "{stats:?}");
        assert!(stats.entries < 40, "nothing was evicted: {stats:?}");
    }
);

// P5: `X-JWT-AUD` and an admin's `role` are stored in GoTrue's
// varchar(255) columns: longer values are a 400 on both databases (a 500
// on PostgreSQL before).
both!(
    audiences_and_roles_longer_than_their_columns_are_refused,
    |_| {},
    |t| {
        let long = "a".repeat(256);
        for (path, body) in [
            (
                "/signup",
                json!({"email": "aud@example.com", "password": "secret123"}),
            ),
            ("/signup", json!({})),
            ("/otp", json!({"email": "aud2@example.com"})),
        ] {
            let r = common::read(
                t.http
                    .post(t.url(path))
                    .header("x-jwt-aud", &long)
                    .json(&body)
                    .send()
                    .await
                    .unwrap(),
            )
            .await;
            r.assert_error(400, "validation_failed");
        }
        let users = "SELECT count(*) FROM users WHERE aud = $1";
        assert_eq!(t.count_by_str(users, &"a".repeat(256)).await, 0);
        // 255 characters is a valid audience.
        let r = common::read(
            t.http
                .post(t.url("/signup"))
                .header("x-jwt-aud", "b".repeat(255))
                .json(&json!({"email": "aud3@example.com", "password": "secret123"}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text);

        let body = json!({"email": "role@example.com", "password": "secret123", "role": long});
        t.admin(Method::POST, "/admin/users", Some(body))
            .await
            .assert_error(400, "validation_failed");
        let body = json!({"email": "role@example.com", "password": "secret123"});
        let r = t.admin(Method::POST, "/admin/users", Some(body)).await;
        let id = r.body["id"].as_str().unwrap().to_string();
        t.admin(
            Method::PUT,
            &format!("/admin/users/{id}"),
            Some(json!({"role": long})),
        )
        .await
        .assert_error(400, "validation_failed");
        assert_eq!(t.user(&id).await.role.as_deref(), Some("authenticated"));
    }
);

// P6: a TOTP issuer too long for a QR code is the caller's error (400), not
// the server's (500), and so is a name too long for the factors' index.
both!(long_factor_labels_are_refused, |_| {}, |t| {
    let s = t.signup("totp@example.com", "secret123").await;
    let at = s.body["access_token"].as_str().unwrap();
    let enroll = |body: Value| t.request(Method::POST, "/factors", Some(at), Some(body));
    for body in [
        json!({"factor_type": "totp", "issuer": "i".repeat(1_000)}),
        json!({"factor_type": "totp", "issuer": "é".repeat(250)}),
        json!({"factor_type": "totp", "friendly_name": "n".repeat(300)}),
    ] {
        enroll(body).await.assert_error(400, "validation_failed");
    }
    let factors = "SELECT count(*) FROM mfa_factors WHERE user_id = $1";
    let id = t.user_id_by_email("totp@example.com").await;
    assert_eq!(t.count_by_uuid(factors, id).await, 0);
    let r = enroll(json!({"factor_type": "totp", "issuer": "i".repeat(200)})).await;
    assert_eq!(r.status, 200, "{}", r.text);
});

// P10: addresses that look like another's are refused, as GoTrue's pattern
// refuses them, instead of each making an account of its own.
both!(look_alike_addresses_are_refused, |_| {}, |t| {
    assert_eq!(t.signup("jose@example.com", "secret123").await.status, 200);
    for look_alike in [
        "jose\u{301}@example.com",
        "jos\u{e9}@example.com",
        "\u{ff4a}ose@example.com",
        "jose@example\u{3002}com",
    ] {
        t.signup(look_alike, "secret123")
            .await
            .assert_error(400, "validation_failed");
    }
    let users = "SELECT count(*) FROM users WHERE email LIKE $1";
    assert_eq!(t.count_by_str(users, "%@example%").await, 1);
    // Nor does a look-alike sign in to the account it resembles (a KELVIN
    // SIGN lower-cased by Unicode rules is a `k`).
    assert_eq!(t.signup("kay@example.com", "secret123").await.status, 200);
    t.login("\u{212a}ay@example.com", "secret123")
        .await
        .assert_error(400, "invalid_credentials");
});

// An access token is not accepted before its `nbf`.
both!(tokens_are_not_accepted_before_nbf, |_| {}, |t| {
    let s = t.signup("nbf@example.com", "secret123").await;
    let at = s.body["access_token"].as_str().unwrap();
    let mut claims = common::claims(at);
    let now = chrono::Utc::now().timestamp();
    claims["nbf"] = json!(now + 120);
    let secret = t.server.state.config.jwt.secret.clone().unwrap();
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    let early = jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap();
    let r = t.get_user(&early).await;
    r.assert_error(403, "bad_jwt");
    assert!(r.text.contains("not valid yet"), "{}", r.text);
    claims["nbf"] = json!(now - 1);
    let valid = jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap();
    assert_eq!(t.get_user(&valid).await.status, 200);
});

/// `/verify` with a wrong code from `X-Forwarded-For` (one header line per
/// item): its status.
async fn verify_from_lines(t: &TestServer, lines: &[&str]) -> u16 {
    let body = json!({"type": "signup", "email": "nobody@example.com", "token": "000000"});
    let mut req = t.http.post(t.url("/verify")).json(&body);
    for line in lines {
        req = req.header("x-forwarded-for", *line);
    }
    req.send().await.unwrap().status().as_u16()
}

async fn verify_from(t: &TestServer, xff: &str) -> u16 {
    verify_from_lines(t, &[xff]).await
}

fn two_verifies(c: &mut castellan_core::Config) {
    c.rate_limits.verify.events = 2;
    c.rate_limits.verify.burst = 2;
}

// `X-Forwarded-For` names the client only when the peer is a configured
// proxy (loopback by default): from any other peer every request is the
// peer's own, whatever the header says (a client on a private network
// could make itself a new client per request before).
both!(
    forwarded_for_is_believed_from_configured_proxies_only,
    two_verifies,
    |t| {
        // Loopback is a trusted proxy by default: each forwarded client has its own bucket.
        for i in 0..4 {
            assert_eq!(verify_from(&t, &format!("203.0.113.{i}")).await, 403);
        }
        // A client's own line before the one its proxy added (HAProxy adds
        // a line) names nobody: the lines are one list, the last entry the
        // proxy's, so this is one client.
        for i in 0..2 {
            let own = format!("10.1.0.{i}");
            assert_eq!(verify_from_lines(&t, &[&own, "203.0.113.10"]).await, 403);
        }
        assert_eq!(
            verify_from_lines(&t, &["10.1.0.9", "203.0.113.10"]).await,
            429
        );
        // An IPv6 host is its /64, whichever of its addresses it uses.
        for i in 1..=2 {
            assert_eq!(verify_from(&t, &format!("2001:db8:5:6::{i}")).await, 403);
        }
        assert_eq!(verify_from(&t, "2001:db8:5:6:ffff::9").await, 429);
    }
);

both!(
    forwarded_for_from_an_unconfigured_peer_is_ignored,
    |c| {
        two_verifies(c);
        c.trusted_proxies = castellan_core::config::TrustedProxies::none();
    },
    |t| {
        assert_eq!(verify_from(&t, "203.0.113.1").await, 403);
        assert_eq!(verify_from(&t, "203.0.113.2").await, 403);
        assert_eq!(verify_from(&t, "203.0.113.3").await, 429, "one client");
    }
);

// P7: by default `/metrics` is served on loopback only, not on the API
// port (whose counters would tell an outsider what the API hides).
#[test]
fn metrics_are_off_the_api_port_by_default() {
    let cfg = castellan_core::Config::from_vars(&Default::default()).unwrap();
    assert_eq!(cfg.metrics_addr.as_deref(), Some("127.0.0.1:9102"));
    let vars = [("CASTELLAN_METRICS_ADDR".to_string(), "api".to_string())].into();
    let cfg = castellan_core::Config::from_vars(&vars).unwrap();
    assert_eq!(cfg.metrics_addr, None, "`api` keeps them on the API port");
    // A server with a metrics address serves none on its API port:
    // `http::metrics_on_their_own_address`.
}

// P2 and the README's stated bound: a castellan process whose one user
// holds the largest metadata and signs in 300 times, each session reading
// `/user`, grows by less than its session cache budget and a margin (about
// 84 MB without the byte budget: one copy of the user per session).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_bounded_under_one_users_many_sessions() {
    let (db, _dir) = common::fresh_database(common::Backend::Sqlite).await;
    let castellan_core::config::DatabaseUrl::Sqlite(path) = &db else {
        unreachable!()
    };
    let env = [
        ("GOTRUE_MAILER_AUTOCONFIRM", "true"),
        ("CASTELLAN_SESSION_CACHE_BYTES", "8388608"),
    ];
    let (child, base) = common::castellan_process(&["serve"], path, &env).await;
    let pid = child.id().unwrap();
    let http = reqwest::Client::new();
    let post = |path: &str, body: Value| {
        let http = http.clone();
        let url = format!("{base}{path}");
        async move { common::read(http.post(url).json(&body).send().await.unwrap()).await }
    };
    let r = post("/signup", heavy_signup("rss@example.com")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let session = |_| async {
        let r = post(
            "/token?grant_type=password",
            json!({"email": "rss@example.com", "password": "secret123"}),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text);
        let at = r.body["access_token"].as_str().unwrap().to_string();
        let user = http
            .get(format!("{base}/user"))
            .bearer_auth(&at)
            .send()
            .await
            .unwrap();
        assert_eq!(user.status(), 200);
    };
    for i in 0..20 {
        session(i).await;
    }
    let before = rss_kib(pid);
    for i in 0..300 {
        session(i).await;
    }
    let grown = rss_kib(pid).saturating_sub(before) / 1024;
    eprintln!("300 sessions of one user with 16 KiB of metadata: RSS grew {grown} MiB");
    assert!(grown < 8 + 24, "RSS grew {grown} MiB");
    drop(child);
}

/// A process's resident memory, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}
