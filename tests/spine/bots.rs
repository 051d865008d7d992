//! Bots (issue 32): CAPTCHA on the routes GoTrue guards, checked with the
//! provider's verify API; leaked passwords refused by k-anonymity lookups.
//! Both against stand-ins on loopback that answer as the real APIs do.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::common::{self, Backend, TestServer};
use crate::security_apis::{FakeCaptcha, FakePwned, sha1_hex};

async fn captcha_server(
    backend: Backend,
    tweak: impl FnOnce(&mut castellan_core::Config),
) -> (TestServer, FakeCaptcha) {
    let fake = FakeCaptcha::start().await;
    let stand_in = fake.clone();
    let t = common::spawn(backend, move |c| {
        stand_in.configure(c, "turnstile");
        c.mailer_autoconfirm = true;
        tweak(c);
    })
    .await;
    (t, fake)
}

fn with_captcha(mut body: Value, token: &str) -> Value {
    body["gotrue_meta_security"] = json!({ "captcha_token": token });
    body
}

const USERS: &str = "SELECT count(*) FROM users WHERE email = $1";

crate::both!(
    captcha_guards_sign_up_and_sign_in,
    captcha_server,
    // The console's sign-in is in the table; off, it is not routed at all.
    |c| c.console_enabled = true,
    |t, fake| {
        let body = json!({"email": "bot@example.com", "password": "correct-horse-9"});
        // No token, a token the provider never issued: refused, nobody made.
        let r = t.post("/signup", body.clone()).await;
        r.assert_error(400, "captcha_failed");
        assert_eq!(
            r.body["msg"],
            "captcha protection: request disallowed (no captcha_token found)"
        );
        let r = t
            .post("/signup", with_captcha(body.clone(), "made-up"))
            .await;
        r.assert_error(400, "captcha_failed");
        assert_eq!(
            r.body["msg"],
            "captcha protection: request disallowed (invalid-input-response)"
        );
        assert_eq!(t.count_by_str(USERS, "bot@example.com").await, 0);

        // A solved challenge's token passes once; the provider is told the
        // secret, the token and the client's address.
        let token = fake.issue();
        let r = t.post("/signup", with_captcha(body.clone(), &token)).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(t.count_by_str(USERS, "bot@example.com").await, 1);
        let asked = fake.received().pop().unwrap();
        assert_eq!(asked["secret"], fake.secret);
        assert_eq!(asked["response"], token);
        assert_eq!(asked["remoteip"], "127.0.0.1");
        let again = json!({"email": "bot2@example.com", "password": "correct-horse-9"});
        let r = t.post("/signup", with_captcha(again, &token)).await;
        r.assert_error(400, "captcha_failed");
        assert_eq!(
            r.body["msg"],
            "captcha protection: request disallowed (timeout-or-duplicate)"
        );
        assert_eq!(t.count_by_str(USERS, "bot2@example.com").await, 0);

        // The password grant asks for one; a refresh token does not.
        let login = json!({"email": "bot@example.com", "password": "correct-horse-9"});
        let r = t.post("/token?grant_type=password", login.clone()).await;
        r.assert_error(400, "captcha_failed");
        let r = t
            .post(
                "/token?grant_type=password",
                with_captcha(login, &fake.issue()),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        let refresh = r.body["refresh_token"].as_str().unwrap().to_string();
        assert_eq!(t.refresh(&refresh).await.status, 200);

        // Every other route the table marks refuses without a token.
        for row in castellan::api::RATE_LIMITS {
            if row.captcha != castellan::limit::Captcha::Yes || row.path == "/signup" {
                continue;
            }
            let r = t.post(row.path, json!({"email": "bot@example.com"})).await;
            r.assert_error(400, "captcha_failed");
        }
        // An admin's key passes without one, as with GoTrue.
        let r = t
            .request(
                Method::POST,
                "/signup",
                Some(&t.service_key()),
                Some(json!({"email": "ops@example.com", "password": "correct-horse-9"})),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);

        // A body that is not JSON says so; the handler never runs.
        let r = t
            .http
            .post(t.url("/otp"))
            .body("not json")
            .send()
            .await
            .unwrap();
        let r = common::read(r).await;
        r.assert_error(400, "bad_json");
    }
);

crate::both!(
    a_captcha_provider_that_cannot_answer_is_a_503_and_lets_nobody_in,
    captcha_server,
    |_| {},
    |t, fake| {
        fake.answer_after(Duration::from_secs(3));
        let body = json!({"email": "slow@example.com", "password": "correct-horse-9"});
        let r = t.post("/signup", with_captcha(body, &fake.issue())).await;
        r.assert_error(503, "unexpected_failure");
        assert_eq!(r.header("retry-after"), Some("1"));
        assert_eq!(r.body["msg"], "captcha verification process failed");
        assert_eq!(t.count_by_str(USERS, "slow@example.com").await, 0);
        let m = t.request(Method::GET, "/metrics", None, None).await.text;
        assert!(
            common::series_sum(
                &m,
                "castellan_captcha_total{provider=\"turnstile\",outcome=\"unavailable\"}"
            ) >= 1.0,
            "{m}"
        );
    }
);

async fn pwned_server(
    backend: Backend,
    tweak: impl FnOnce(&mut castellan_core::Config),
) -> (TestServer, FakePwned) {
    let fake = FakePwned::start(&["password123", "abc", "letmein-2024"]).await;
    let stand_in = fake.clone();
    let t = common::spawn(backend, move |c| {
        stand_in.configure(c, false);
        c.mailer_autoconfirm = true;
        tweak(c);
    })
    .await;
    (t, fake)
}

crate::both!(
    leaked_passwords_are_refused_by_their_hash_prefix_alone,
    pwned_server,
    |_| {},
    |t, fake| {
        let r = t.signup("leak@example.com", "password123").await;
        r.assert_error(422, "weak_password");
        assert_eq!(r.body["weak_password"]["reasons"], json!(["pwned"]));
        assert_eq!(
            r.body["msg"],
            "Password is known to be weak and easy to guess, please choose a different one."
        );
        assert_eq!(t.count_by_str(USERS, "leak@example.com").await, 0);
        // Only the first five characters of the SHA-1 left the server.
        let hash = sha1_hex("password123");
        assert_eq!(fake.asked(), vec![format!("/range/{}", &hash[..5])]);

        // Every reason at once, in GoTrue's order.
        let r = t.signup("leak@example.com", "abc").await;
        assert_eq!(
            r.body["weak_password"]["reasons"],
            json!(["length", "pwned"])
        );

        // A clean password signs up; changing to a leaked one is refused.
        let s = t.new_session("leak@example.com", "not-in-any-list-7").await;
        let access = s["access_token"].as_str().unwrap();
        let r = t
            .request(
                Method::PUT,
                "/user",
                Some(access),
                Some(json!({"password": "letmein-2024"})),
            )
            .await;
        r.assert_error(422, "weak_password");
        assert_eq!(r.body["weak_password"]["reasons"], json!(["pwned"]));
        assert_eq!(
            t.login("leak@example.com", "not-in-any-list-7")
                .await
                .status,
            200
        );

        // Signing in with a leaked password works and says so (GoTrue).
        let r = t
            .admin(
                Method::POST,
                "/admin/users",
                Some(json!({"email": "old@example.com", "password": "password123", "email_confirm": true})),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        let r = t.login("old@example.com", "password123").await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.body["weak_password"]["reasons"], json!(["pwned"]));
    }
);

crate::both!(
    an_unreachable_range_api_fails_open_by_default,
    pwned_server,
    |_| {},
    |t, fake| {
        // Down: allowed (GoTrue's default), and counted.
        fake.answer_status(503);
        assert_eq!(
            t.signup("open@example.com", "password123").await.status,
            200
        );
        // Slower than the setting: the answer that would refuse it comes too
        // late, and the sign-up goes on without it.
        fake.answer_status(200);
        fake.answer_after(Duration::from_secs(3));
        assert_eq!(
            t.signup("late@example.com", "password123").await.status,
            200
        );
        let m = t.request(Method::GET, "/metrics", None, None).await.text;
        assert!(
            common::series_sum(&m, "castellan_password_hibp_total{outcome=\"unavailable\"}") >= 2.0,
            "{m}"
        );
    }
);

crate::both!(
    fail_closed_refuses_what_it_cannot_check,
    pwned_server,
    |c| c.password.hibp.as_mut().unwrap().fail_closed = true,
    |t, fake| {
        fake.answer_status(503);
        let r = t.signup("closed@example.com", "not-in-any-list-7").await;
        r.assert_error(503, "unexpected_failure");
        assert_eq!(r.header("retry-after"), Some("1"));
        assert_eq!(
            r.body["msg"],
            "Unable to perform password strength check with HaveIBeenPwned.org."
        );
        assert_eq!(t.count_by_str(USERS, "closed@example.com").await, 0);
        // A password the server made itself (a sign-up by `/otp`) is not
        // looked up: passwordless sign-up works with the API down.
        let asked = fake.asked().len();
        let r = t.post("/otp", json!({"email": "otp@example.com"})).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(t.count_by_str(USERS, "otp@example.com").await, 1);
        assert_eq!(fake.asked().len(), asked);
    }
);
