//! The admin console (issue 34): off, nothing of it is reachable; on, an
//! admin signs in with a password and the admin API takes the console's
//! HttpOnly cookie from the console's own origin, a change only with its
//! CSRF token. The browser test (`tests/e2e/console.mjs`) drives the page.

use reqwest::Method;
use serde_json::{Value, json};

use crate::common::{self, Reply, TestServer, read};

const PASSWORD: &str = "correct-horse-9";

/// A user whose role is an admin role; their id.
async fn admin_user(t: &TestServer, email: &str) -> String {
    let r = t.signup(email, PASSWORD).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let id = r.body["user"]["id"].as_str().unwrap().to_string();
    let set = json!({"role": "supabase_admin"});
    let r = t
        .admin(Method::PUT, &format!("/admin/users/{id}"), Some(set))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    id
}

/// A request as the console's page makes it: the cookie, from its own
/// origin, with the CSRF token when given.
async fn as_console(
    t: &TestServer,
    method: Method,
    path: &str,
    cookie: &str,
    csrf: Option<&str>,
    body: Option<Value>,
) -> Reply {
    let mut headers = vec![("cookie", cookie), ("sec-fetch-site", "same-origin")];
    headers.extend(csrf.map(|c| ("x-csrf-token", c)));
    with_headers(t, method, path, &headers, body).await
}

/// A request carrying the console's cookie with extra headers.
async fn with_headers(
    t: &TestServer,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> Reply {
    let mut req = t.http.request(method, t.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    read(req.send().await.unwrap()).await
}

/// Signs in to the console: the cookie to send back, and the CSRF token.
async fn sign_in(t: &TestServer, email: &str) -> (String, String, Reply) {
    let r = t
        .post(
            "/console/session",
            json!({"email": email, "password": PASSWORD}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let set = r.header("set-cookie").expect("a cookie").to_string();
    let cookie = set.split(';').next().unwrap().to_string();
    let csrf = r.body["csrf"].as_str().unwrap().to_string();
    (cookie, csrf, r)
}

/// Signs out of the console: 204, and the cookie cleared.
async fn sign_out(t: &TestServer, cookie: &str, csrf: &str) {
    let r = as_console(
        t,
        Method::DELETE,
        "/console/session",
        cookie,
        Some(csrf),
        None,
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text);
    assert!(r.header("set-cookie").unwrap().contains("Max-Age=0"));
}

async fn sessions_of(t: &TestServer, email: &str) -> i64 {
    t.count_by_str(
        "SELECT count(*) FROM sessions s JOIN users u ON u.id = s.user_id WHERE u.email = $1",
        email,
    )
    .await
}

// Off (the default): no page, no sign-in, and the admin API ignores even
// a real admin's token in the console's cookie.
crate::both!(nothing_of_the_console_is_reachable_when_off, |_| {}, |t| {
    for path in ["/console", "/console/app.js", "/auth/v1/console"] {
        let r = t.request(Method::GET, path, None, None).await;
        r.assert_error(404, "not_found");
    }
    admin_user(&t, "off-admin@example.com").await;
    let login = json!({"email": "off-admin@example.com", "password": PASSWORD});
    let r = t.post("/console/session", login).await;
    r.assert_error(404, "not_found");
    let s = t.login("off-admin@example.com", PASSWORD).await;
    let token = s.body["access_token"].as_str().unwrap();
    // The bearer works; the same token as the cookie does not.
    let r = t
        .request(Method::GET, "/admin/users", Some(token), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let cookie = format!("castellan_console={token}");
    let r = as_console(&t, Method::GET, "/admin/users", &cookie, None, None).await;
    r.assert_error(401, "no_authorization");
});

crate::both!(
    an_admin_signs_in_and_every_change_needs_the_csrf_token,
    |c| c.console_enabled = true,
    |t| {
        // The page: the console's files only, never in a frame.
        let r = t.request(Method::GET, "/console", None, None).await;
        assert_eq!(r.status, 200);
        assert!(
            r.text
                .contains("<script type=\"module\" src=\"console/app.js\">")
        );
        let csp = r.header("content-security-policy").unwrap();
        for rule in [
            "default-src 'none'",
            "script-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(rule), "{csp}");
        }
        assert_eq!(r.header("x-frame-options"), Some("DENY"));
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
        let js = t
            .request(Method::GET, "/auth/v1/console/app.js", None, None)
            .await;
        assert_eq!(js.status, 200);
        assert!(
            js.header("content-type")
                .unwrap()
                .starts_with("text/javascript")
        );
        assert!(
            !js.text.contains("innerHTML"),
            "the page puts data in as text only"
        );

        let admin = admin_user(&t, "root@example.com").await;
        let victim = t.new_session("victim@example.com", PASSWORD).await;
        let victim_id = victim["user"]["id"].as_str().unwrap().to_string();

        // A wrong password is the sign-in's own answer; a user who is not
        // an admin is refused and keeps no session from it.
        let wrong = json!({"email": "root@example.com", "password": "nope-nope-9"});
        t.post("/console/session", wrong)
            .await
            .assert_error(400, "invalid_credentials");
        // Anyone else's right password is answered as a wrong one: the
        // console tells nobody whether a password was right.
        let before = sessions_of(&t, "victim@example.com").await;
        let login = json!({"email": "victim@example.com", "password": PASSWORD});
        t.post("/console/session", login)
            .await
            .assert_error(400, "invalid_credentials");
        assert_eq!(sessions_of(&t, "victim@example.com").await, before);

        let (cookie, csrf, r) = sign_in(&t, "root@example.com").await;
        let set = r.header("set-cookie").unwrap();
        for flag in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=3600"] {
            assert!(set.contains(flag), "{set}");
        }
        // Loopback (the tests' Host) is the one place it may go without TLS.
        assert!(!set.contains("Secure"), "{set}");
        assert_eq!(r.body["user"]["id"], admin.as_str());
        assert_eq!(r.body["user"]["role"], "supabase_admin");

        let me = as_console(&t, Method::GET, "/console/session", &cookie, None, None).await;
        assert_eq!(me.status, 200, "{}", me.text);
        assert_eq!(me.body["csrf"], csrf.as_str());
        assert_eq!(me.body["user"]["email"], "root@example.com");

        // The admin API answers the cookie, searched by id as by address.
        let path = format!("/admin/users?filter={}", &victim_id[..8]);
        let r = as_console(&t, Method::GET, &path, &cookie, None, None).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.body["users"][0]["id"], victim_id.as_str());
        assert_eq!(r.header("cache-control"), Some("no-store"));
        // Not from another site's page, even a sibling's.
        let r = t
            .http
            .get(t.url("/admin/users"))
            .header("cookie", &cookie)
            .header("sec-fetch-site", "same-site")
            .send()
            .await
            .unwrap();
        read(r).await.assert_error(403, "console_refused");

        // A change without the CSRF token (or with a wrong one) is refused
        // and changes nothing.
        let user_path = format!("/admin/users/{victim_id}");
        let ban = json!({"ban_duration": "24h"});
        for token in [None, Some("0000")] {
            let r = as_console(
                &t,
                Method::PUT,
                &user_path,
                &cookie,
                token,
                Some(ban.clone()),
            )
            .await;
            r.assert_error(403, "console_refused");
        }
        let banned = "SELECT count(*) FROM users WHERE email = $1 AND banned_until IS NOT NULL";
        assert_eq!(t.count_by_str(banned, "victim@example.com").await, 0);
        let r = as_console(&t, Method::PUT, &user_path, &cookie, Some(&csrf), Some(ban)).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(t.count_by_str(banned, "victim@example.com").await, 1);

        // The user's sessions: listed, one ended, and its refresh refused.
        let sessions = format!("/admin/users/{victim_id}/sessions");
        let r = as_console(&t, Method::GET, &sessions, &cookie, None, None).await;
        assert_eq!(r.status, 200, "{}", r.text);
        let listed = r.body.as_array().unwrap().clone();
        assert_eq!(
            listed.len() as i64,
            sessions_of(&t, "victim@example.com").await
        );
        let sid = common::claims(victim["access_token"].as_str().unwrap())["session_id"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(listed.iter().any(|s| s["id"] == sid.as_str()), "{listed:?}");
        let one = format!("{sessions}/{sid}");
        let r = as_console(&t, Method::DELETE, &one, &cookie, Some(&csrf), None).await;
        assert_eq!(
            (r.status.as_u16(), r.body["ended"].clone()),
            (200, json!(1)),
            "{}",
            r.text
        );
        let logouts = "SELECT count(*) FROM audit_log_entries WHERE CAST(payload AS TEXT) LIKE $1";
        let before = t.count_by_str(logouts, "%\"logout\"%").await;
        let r = as_console(&t, Method::DELETE, &one, &cookie, Some(&csrf), None).await;
        r.assert_error(404, "session_not_found");
        assert_eq!(
            t.count_by_str(logouts, "%\"logout\"%").await,
            before,
            "no logout on record"
        );
        let refresh = t.refresh(victim["refresh_token"].as_str().unwrap()).await;
        assert_eq!(refresh.status, 400, "{}", refresh.text);
        let r = as_console(&t, Method::DELETE, &sessions, &cookie, Some(&csrf), None).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(sessions_of(&t, "victim@example.com").await, 0);

        // Signing out ends the console's session: the cookie is cleared and
        // the old one is refused.
        let r = as_console(&t, Method::DELETE, "/console/session", &cookie, None, None).await;
        r.assert_error(403, "console_refused");
        sign_out(&t, &cookie, &csrf).await;
        let r = as_console(&t, Method::GET, "/admin/users", &cookie, None, None).await;
        assert_eq!(r.status, 403, "{}", r.text);
        assert_eq!(
            sessions_of(&t, "root@example.com").await,
            1,
            "the sign-up's own session"
        );
    }
);

// The console's sign-in draws on /token's bucket, per client.
crate::both!(
    the_console_sign_in_is_rate_limited,
    |c| {
        c.console_enabled = true;
        c.rate_limits.token_refresh = castellan_core::config::RateLimit {
            events: 3,
            per: std::time::Duration::from_secs(300),
            burst: 3,
        };
    },
    |t| {
        let wrong = json!({"email": "nobody@example.com", "password": "nope-nope-9"});
        for _ in 0..3 {
            let r = t.post("/console/session", wrong.clone()).await;
            r.assert_error(400, "invalid_credentials");
        }
        let r = t.post("/console/session", wrong).await;
        r.assert_error(429, "over_request_rate_limit");
    }
);

// The review's attacks: another origin (by `Origin`, as browsers without
// Fetch Metadata send it), a shadowing second cookie, a form posted across
// sites, a demoted admin, an admin's unused second factor, a proxy.
crate::both!(
    the_console_holds_against_other_origins_demotions_and_skipped_factors,
    |c| c.console_enabled = true,
    |t| {
        let admin = admin_user(&t, "guard@example.com").await;
        let (cookie, csrf, _) = sign_in(&t, "guard@example.com").await;
        let host = t.base.trim_start_matches("http://").to_string();
        let own = format!("http://{host}");
        let ok = with_headers(
            &t,
            Method::GET,
            "/admin/users",
            &[("cookie", &cookie), ("origin", &own)],
            None,
        )
        .await;
        assert_eq!(ok.status, 200, "{}", ok.text);
        let other_scheme = format!("https://{host}");
        for origin in ["http://evil.example", "null", other_scheme.as_str()] {
            let r = with_headers(
                &t,
                Method::GET,
                "/console/session",
                &[("cookie", &cookie), ("origin", origin)],
                None,
            )
            .await;
            r.assert_error(403, "console_refused");
            assert!(!r.text.contains(&csrf));
        }
        let twice = format!("{cookie}; castellan_console=other");
        with_headers(&t, Method::GET, "/admin/users", &[("cookie", &twice)], None)
            .await
            .assert_error(403, "console_refused");
        // A sign-in posted by another site's form, or not as JSON.
        let login = json!({"email": "guard@example.com", "password": PASSWORD});
        let r = with_headers(
            &t,
            Method::POST,
            "/console/session",
            &[("sec-fetch-site", "cross-site")],
            Some(login.clone()),
        )
        .await;
        r.assert_error(403, "console_refused");
        let r = t
            .http
            .post(t.url("/console/session"))
            .header("content-type", "text/plain")
            .body(login.to_string())
            .send()
            .await
            .unwrap();
        read(r).await.assert_error(403, "console_refused");
        // Behind a proxy the cookie is Secure, loopback or not.
        let r = with_headers(
            &t,
            Method::POST,
            "/console/session",
            &[("x-forwarded-for", "203.0.113.9")],
            Some(login.clone()),
        )
        .await;
        assert!(
            r.header("set-cookie").unwrap().contains("; Secure"),
            "{:?}",
            r.headers
        );

        // Demoted: the console's session stops being an admin's at once,
        // though its token still says otherwise.
        let demote = json!({"role": "authenticated"});
        let r = t
            .admin(Method::PUT, &format!("/admin/users/{admin}"), Some(demote))
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        as_console(&t, Method::GET, "/admin/users", &cookie, None, None)
            .await
            .assert_error(403, "not_admin");
        // The same token as a bearer: stopped too (GoTrue trusts the claim).
        let token = cookie.trim_start_matches("castellan_console=");
        t.request(Method::GET, "/admin/users", Some(token), None)
            .await
            .assert_error(403, "not_admin");
        let promote = json!({"role": "supabase_admin"});
        let path = format!("/admin/users/{admin}");
        as_console(
            &t,
            Method::PUT,
            &path,
            &cookie,
            Some(&csrf),
            Some(promote.clone()),
        )
        .await
        .assert_error(403, "not_admin");
        let r = t.admin(Method::PUT, &path, Some(promote)).await;
        assert_eq!(r.status, 200, "{}", r.text);

        // With a verified factor, the password alone does not open it.
        let s = t.login("guard@example.com", PASSWORD).await;
        let access = s.body["access_token"].as_str().unwrap();
        let f = crate::mfa::enroll(&t, access, "console app").await;
        let c = crate::mfa::challenge(&t, access, &f.id).await;
        let r =
            crate::mfa::verify(&t, access, &f.id, &c, &crate::mfa::code(&t, &f.secret, 0)).await;
        assert_eq!(r.status, 200, "{}", r.text);
        // Nor does an aal1 token of the admin's as a bearer; aal2 does.
        t.request(Method::GET, "/admin/users", Some(access), None)
            .await
            .assert_error(403, "insufficient_aal");
        let aal2 = r.body["access_token"].as_str().unwrap();
        let ok = t
            .request(Method::GET, "/admin/users", Some(aal2), None)
            .await;
        assert_eq!(ok.status, 200, "{}", ok.text);
        let (cookie, csrf, r) = sign_in(&t, "guard@example.com").await;
        assert_eq!(r.body["mfa"][0]["id"], f.id.as_str(), "{}", r.text);
        as_console(&t, Method::GET, "/admin/users", &cookie, None, None)
            .await
            .assert_error(403, "insufficient_aal");
        let wrong = json!({"factor_id": f.id, "code": "000000"});
        let r = as_console(
            &t,
            Method::POST,
            "/console/session/mfa",
            &cookie,
            Some(&csrf),
            Some(wrong),
        )
        .await;
        assert!(r.status.is_client_error(), "{}", r.text);
        let right = json!({"factor_id": f.id, "code": crate::mfa::code(&t, &f.secret, 1)});
        let r = as_console(
            &t,
            Method::POST,
            "/console/session/mfa",
            &cookie,
            None,
            Some(right.clone()),
        )
        .await;
        r.assert_error(403, "console_refused");
        let r = as_console(
            &t,
            Method::POST,
            "/console/session/mfa",
            &cookie,
            Some(&csrf),
            Some(right),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text);
        let raised = r
            .header("set-cookie")
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_string();
        let raised_csrf = r.body["csrf"].as_str().unwrap().to_string();
        assert_eq!(
            common::claims(raised.trim_start_matches("castellan_console="))["aal"],
            "aal2"
        );
        let r = as_console(&t, Method::GET, "/admin/users", &raised, None, None).await;
        assert_eq!(r.status, 200, "{}", r.text);

        // Signing out of a session already ended still clears the cookie.
        let end_all = format!("/admin/users/{admin}/sessions");
        assert_eq!(t.admin(Method::DELETE, &end_all, None).await.status, 200);
        let me = as_console(&t, Method::GET, "/console/session", &raised, None, None).await;
        assert_eq!(me.status, 403, "{}", me.text);
        sign_out(&t, &raised, &raised_csrf).await;
    }
);
