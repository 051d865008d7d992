//! Auth hooks (issue 28): all seven of GoTrue's hooks, over HTTP signed
//! with Standard Webhooks (a stand-in server on loopback checks every
//! signature) and as PostgreSQL functions.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use castellan_core::config::{HookConfig, HookTarget};
use castellan_core::hooks::Hook;
use reqwest::Method;
use serde_json::{Value, json};

use crate::common::{self, Backend, TestServer};
use crate::hook_server::HookServer;

/// A server with `hooks` on, answered by one stand-in.
async fn hooked_with(
    backend: Backend,
    hooks: &'static [Hook],
    tweak: impl FnOnce(&mut castellan_core::Config),
) -> (TestServer, HookServer) {
    let server = HookServer::start().await;
    let on = server.clone();
    let t = common::spawn(backend, move |c| {
        for h in hooks {
            on.turn_on(c, *h);
        }
        c.mailer_autoconfirm = true;
        c.mailer.retry_min = Duration::from_millis(200);
        c.mailer.retry_max = Duration::from_millis(400);
        tweak(c);
    })
    .await;
    (t, server)
}

/// The count of users with this email.
async fn users_with(t: &TestServer, email: &str) -> i64 {
    t.count_by_str("SELECT count(*) FROM users WHERE email = $1", email)
        .await
}

/// A test on both databases with `hooks` on, answered by one stand-in.
macro_rules! with_hooks {
    ($name:ident, [$($hook:expr),*], $tweak:expr, |$t:ident, $h:ident| $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            async fn start(
                backend: Backend,
                tweak: impl FnOnce(&mut castellan_core::Config),
            ) -> (TestServer, HookServer) {
                hooked_with(backend, &[$($hook),*], tweak).await
            }
            crate::both!(on, start, $tweak, |$t, $h| $body);
        }
    };
}

/// The custom access token hook's answer: the claims with a tenant, or
/// what a test says.
fn add_tenant(p: &Value, _: usize) -> (u16, Value) {
    let mut claims = p["claims"].clone();
    claims["tenant_id"] = json!("acme");
    (200, json!({ "claims": claims }))
}

with_hooks!(
    the_custom_access_token_hook_shapes_every_token,
    [Hook::CustomAccessToken],
    |_| {},
    |t, hooks| {
        hooks.answer(Hook::CustomAccessToken, add_tenant);
        let s = t.new_session("hooked@example.com", "correct-horse-9").await;
        let claims = common::claims(s["access_token"].as_str().unwrap());
        assert_eq!(claims["tenant_id"], "acme", "{claims}");
        // Checked as the server's own: GET /user accepts it.
        let access = s["access_token"].as_str().unwrap();
        assert_eq!(t.get_user(access).await.status, 200);
        let r = t.refresh(s["refresh_token"].as_str().unwrap()).await;
        assert_eq!(r.status, 200, "{}", r.text);
        let claims = common::claims(r.body["access_token"].as_str().unwrap());
        assert_eq!(claims["tenant_id"], "acme");
        let calls = hooks.calls(Hook::CustomAccessToken);
        let methods: Vec<&str> = calls
            .iter()
            .map(|c| c["authentication_method"].as_str().unwrap())
            .collect();
        assert_eq!(methods.last(), Some(&"token_refresh"), "{methods:?}");
        let first = &calls[0];
        assert_eq!(first["user_id"], claims["sub"]);
        assert_eq!(first["metadata"]["name"], "customize-access-token");
        assert_eq!(first["claims"]["session_id"], claims["session_id"]);

        // A hook's refusal is the answer; claims that break the minimum
        // schema are never signed.
        hooks.answer(Hook::CustomAccessToken, |_, _| {
            (
                200,
                json!({"error": {"http_code": 403, "message": "this tenant is closed"}}),
            )
        });
        let sessions = "SELECT count(*) FROM sessions WHERE user_id = $1";
        let user = t.user_id_by_email("hooked@example.com").await;
        let before = t.count_by_uuid(sessions, user).await;
        let r = t.login("hooked@example.com", "correct-horse-9").await;
        assert_eq!(r.status, 403, "{}", r.text);
        assert_eq!(r.body["msg"], "this tenant is closed");
        assert!(r.body.get("access_token").is_none());
        // Refused before anything was written: no session was started.
        assert_eq!(t.count_by_uuid(sessions, user).await, before);
        hooks.answer(Hook::CustomAccessToken, |p, _| {
            let mut claims = p["claims"].clone();
            claims.as_object_mut().unwrap().remove("aud");
            (200, json!({ "claims": claims }))
        });
        let r = t.login("hooked@example.com", "correct-horse-9").await;
        r.assert_error(500, "unexpected_failure");
        let msg = r.body["msg"].as_str().unwrap();
        assert!(msg.contains("(root): aud is required"), "{}", r.text);
    }
);

with_hooks!(
    a_hook_that_cannot_be_reached_refuses_the_token,
    [Hook::CustomAccessToken],
    |c| {
        // Nothing listens on port 9 of loopback.
        let target = HookTarget::Http("http://127.0.0.1:9/claims".into());
        c.hooks.set(
            Hook::CustomAccessToken,
            Some(HookConfig {
                target,
                keys: vec![],
            }),
        );
    },
    |t, _hooks| {
        t.signup("unreached@example.com", "correct-horse-9").await;
        let r = t.login("unreached@example.com", "correct-horse-9").await;
        assert_eq!(r.status, 422, "{}", r.text);
        assert!(
            ["hook_timeout", "hook_timeout_after_retry"]
                .contains(&r.body["error_code"].as_str().unwrap()),
            "{}",
            r.text
        );
        let m = t.request(Method::GET, "/metrics", None, None).await.text;
        let errors = "castellan_hook_calls_total{hook=\"custom_access_token\",outcome=\"error\"}";
        assert!(common::series_sum(&m, errors) >= 1.0);
    }
);

/// On PostgreSQL a hook may be a function in the database.
async fn pg_hooked(hooks: &[(Hook, &str)], sql: &[&str]) -> TestServer {
    let hooks: Vec<(Hook, String)> = hooks.iter().map(|(h, f)| (*h, f.to_string())).collect();
    let t = common::spawn(Backend::Postgres, move |c| {
        for (hook, function) in hooks {
            let target = HookTarget::PgFunction {
                schema: "public".into(),
                function,
            };
            c.hooks.set(
                hook,
                Some(HookConfig {
                    target,
                    keys: vec![],
                }),
            );
        }
        c.mailer_autoconfirm = true;
    })
    .await;
    let castellan_core::store::Pool::Pg(pool) = t.pool() else {
        panic!("a PostgreSQL server");
    };
    for s in sql {
        sqlx::query(sqlx::AssertSqlSafe(*s))
            .execute(pool)
            .await
            .unwrap();
    }
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_function_shapes_the_token() {
    let t = pg_hooked(
        &[(Hook::CustomAccessToken, "claims_hook")],
        &["CREATE FUNCTION public.claims_hook(event jsonb) RETURNS jsonb LANGUAGE sql AS $$ \
         SELECT jsonb_build_object('claims', (event->'claims') || jsonb_build_object('plan', 'pg-' || (event->>'authentication_method'))) $$"],
    )
    .await;
    let s = t
        .new_session("pg-hook@example.com", "correct-horse-9")
        .await;
    let claims = common::claims(s["access_token"].as_str().unwrap());
    assert_eq!(claims["plan"], "pg-password", "{claims}");
    t.stop().await;
}

// GoTrue calls a function hook inside the request's transaction: it sees
// the session being written (its counter moved, on a refresh), and its
// refusal rolls the request back, so the refresh token stays good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_function_runs_inside_the_request() {
    let t = pg_hooked(
        &[(Hook::CustomAccessToken, "seen_hook")],
        &[
            "CREATE TABLE public.hook_switch (refuse boolean NOT NULL)",
            "INSERT INTO public.hook_switch VALUES (false)",
            "CREATE FUNCTION public.seen_hook(event jsonb) RETURNS jsonb LANGUAGE sql AS $$ \
             SELECT CASE WHEN (SELECT refuse FROM public.hook_switch) \
               THEN jsonb_build_object('error', jsonb_build_object('http_code', 403, 'message', 'not now')) \
               ELSE jsonb_build_object('claims', (event->'claims') || jsonb_build_object('counter', \
                 (SELECT refresh_token_counter FROM auth.sessions WHERE id = (event->'claims'->>'session_id')::uuid))) \
             END $$",
        ],
    )
    .await;
    let castellan_core::store::Pool::Pg(pool) = t.pool() else {
        unreachable!()
    };
    let refuse = |on: bool| {
        sqlx::query("UPDATE public.hook_switch SET refuse = $1")
            .bind(on)
            .execute(pool)
    };
    let counter = |token: &str| {
        let session = common::claims(token)["session_id"]
            .as_str()
            .unwrap()
            .to_string();
        sqlx::query_scalar::<_, Option<i64>>(
            "SELECT refresh_token_counter FROM auth.sessions WHERE id = $1::uuid",
        )
        .bind(session)
        .fetch_one(pool)
    };
    let s = t.new_session("inside@example.com", "correct-horse-9").await;
    let first = s["access_token"].as_str().unwrap();
    // The session row exists when the function runs.
    let at_start = counter(first).await.unwrap();
    assert!(at_start.is_some(), "v2 sessions count their tokens");
    assert_eq!(common::claims(first)["counter"].as_i64(), at_start, "{s}");
    let refresh = |token: &str| {
        t.post(
            "/token?grant_type=refresh_token",
            json!({ "refresh_token": token }),
        )
    };
    let rt = s["refresh_token"].as_str().unwrap();
    let r = refresh(rt).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let second = r.body["access_token"].as_str().unwrap();
    let moved = counter(second).await.unwrap();
    assert_eq!(moved, at_start.map(|c| c + 1));
    assert_eq!(
        common::claims(second)["counter"].as_i64(),
        moved,
        "seen moved"
    );
    // Refused: the rotation is rolled back with the token.
    refuse(true).await.unwrap();
    let rt = r.body["refresh_token"].as_str().unwrap();
    let r2 = refresh(rt).await;
    assert_eq!(
        (r2.status.as_u16(), r2.body["msg"].as_str()),
        (403, Some("not now")),
        "{}",
        r2.text
    );
    assert_eq!(counter(second).await.unwrap(), moved, "nothing written");
    let sessions = || {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM auth.sessions s JOIN auth.users u ON u.id = s.user_id \
             WHERE u.email = 'inside@example.com'",
        )
        .fetch_one(pool)
    };
    let before = sessions().await.unwrap();
    let login = json!({"email": "inside@example.com", "password": "correct-horse-9"});
    let r3 = t.post("/token?grant_type=password", login.clone()).await;
    assert_eq!(r3.status, 403, "{}", r3.text);
    assert_eq!(
        sessions().await.unwrap(),
        before,
        "a refused sign-in writes no session"
    );
    // Allowed again: the same refresh token is still good.
    refuse(false).await.unwrap();
    let r4 = refresh(rt).await;
    assert_eq!(r4.status, 200, "{}", r4.text);
    assert_eq!(counter(second).await.unwrap(), moved.map(|c| c + 1));
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_function_refuses_a_sign_up() {
    let t = pg_hooked(
        &[(Hook::BeforeUserCreated, "gate")],
        &["CREATE FUNCTION public.gate(event jsonb) RETURNS jsonb LANGUAGE sql AS $$ \
         SELECT CASE WHEN event->'user'->>'email' LIKE '%@blocked.example' \
           THEN jsonb_build_object('error', jsonb_build_object('http_code', 403, 'message', 'not from there')) \
           ELSE '{}'::jsonb END $$"],
    )
    .await;
    let r = t.signup("eve@blocked.example", "correct-horse-9").await;
    assert_eq!(
        (r.status.as_u16(), r.body["msg"].as_str()),
        (403, Some("not from there")),
        "{}",
        r.text
    );
    assert_eq!(users_with(&t, "eve@blocked.example").await, 0);
    assert_eq!(
        t.signup("ann@fine.example", "correct-horse-9").await.status,
        200
    );
    assert_eq!(users_with(&t, "ann@fine.example").await, 1);
    t.stop().await;
}

/// A verification attempt hook that refuses once it has seen two wrong
/// attempts, and says so in its own words.
fn two_strikes(logout: bool) -> impl Fn(&Value, usize) -> (u16, Value) + Send + 'static {
    let wrong = Arc::new(Mutex::new(0));
    move |p, _| {
        let mut wrong = wrong.lock().unwrap();
        *wrong += usize::from(p["valid"] == false);
        match *wrong >= 2 {
            true => (
                200,
                json!({"decision": "reject", "message": "locked for an hour", "should_logout_user": logout}),
            ),
            false => (200, json!({"decision": "continue"})),
        }
    }
}

with_hooks!(
    a_password_attempt_hook_locks_an_account,
    [Hook::PasswordVerificationAttempt],
    |_| {},
    |t, hooks| {
        hooks.answer(Hook::PasswordVerificationAttempt, two_strikes(true));
        t.new_session("locked@example.com", "correct-horse-9").await;
        let user = t.user_id_by_email("locked@example.com").await;
        let seen = || hooks.calls(Hook::PasswordVerificationAttempt);
        assert!(seen().is_empty(), "a sign-up is no attempt");
        let s = t.login("locked@example.com", "correct-horse-9").await.body;
        assert_eq!(seen().len(), 1, "the sign-in told it");
        assert_eq!(seen()[0]["valid"], true);
        assert_eq!(seen()[0]["user_id"], user.to_string());
        assert_eq!(seen()[0]["metadata"]["name"], "password-verification");
        // Two wrong passwords: the second is refused in the hook's words,
        // and every session of the user ends.
        t.login("locked@example.com", "wrong-one")
            .await
            .assert_error(400, "invalid_credentials");
        let r = t.login("locked@example.com", "wrong-two").await;
        r.assert_error(400, "invalid_credentials");
        assert_eq!(r.body["msg"], "locked for an hour");
        let sessions = "SELECT count(*) FROM sessions WHERE user_id = $1";
        assert_eq!(t.count_by_uuid(sessions, user).await, 0);
        assert_eq!(
            t.refresh(s["refresh_token"].as_str().unwrap()).await.status,
            400
        );
        // Even the right password is refused while the hook says so.
        let r = t.login("locked@example.com", "correct-horse-9").await;
        assert_eq!(r.body["msg"], "locked for an hour", "{}", r.text);
        // An address with no account is never told to the hook.
        let before = seen().len();
        t.login("nobody@example.com", "whatever-9").await;
        assert_eq!(seen().len(), before);
    }
);

with_hooks!(
    an_mfa_attempt_hook_locks_a_factor,
    [Hook::MfaVerificationAttempt],
    |_| {},
    |t, hooks| {
        use crate::mfa::{challenge, code, enroll, verify};
        hooks.answer(Hook::MfaVerificationAttempt, two_strikes(false));
        let s = t
            .new_session("mfa-hook@example.com", "correct-horse-9")
            .await;
        let access = s["access_token"].as_str().unwrap();
        let user = t.user_id_by_email("mfa-hook@example.com").await;
        let f = enroll(&t, access, "app").await;
        // A right code: told as valid, and the session rises.
        let c = challenge(&t, access, &f.id).await;
        let r = verify(&t, access, &f.id, &c, &code(&t, &f.secret, 0)).await;
        assert_eq!(r.status, 200, "{}", r.text);
        let seen = hooks.calls(Hook::MfaVerificationAttempt);
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0]["metadata"]["name"], "mfa-verification");
        assert_eq!(
            (
                &seen[0]["valid"],
                &seen[0]["factor_type"],
                &seen[0]["user_id"]
            ),
            (&json!(true), &json!("totp"), &json!(user.to_string()))
        );
        assert_eq!(seen[0]["factor_id"], f.id.as_str());
        let access = r.body["access_token"].as_str().unwrap().to_string();
        // A wrong code is GoTrue's own refusal; the second, the hook's.
        let c = challenge(&t, &access, &f.id).await;
        verify(&t, &access, &f.id, &c, "000000")
            .await
            .assert_error(422, "mfa_verification_failed");
        let c = challenge(&t, &access, &f.id).await;
        let r = verify(&t, &access, &f.id, &c, "000001").await;
        r.assert_error(403, "mfa_verification_rejected");
        assert_eq!(r.body["msg"], "locked for an hour");
        // GoTrue's rule: a refusal ends every session of the user.
        let sessions = "SELECT count(*) FROM sessions WHERE user_id = $1";
        assert_eq!(t.count_by_uuid(sessions, user).await, 0);
        assert_eq!(hooks.calls(Hook::MfaVerificationAttempt).len(), 3);
    }
);

with_hooks!(
    a_before_user_created_hook_refuses_a_domain,
    [Hook::BeforeUserCreated],
    |c| c.anonymous_users_enabled = true,
    |t, hooks| {
        hooks.answer(Hook::BeforeUserCreated, |p, _| {
            match p["user"]["email"]
                .as_str()
                .unwrap_or("")
                .ends_with("@blocked.example")
            {
                true => (
                    200,
                    json!({"error": {"http_code": 403, "message": "not from there"}}),
                ),
                false => (204, json!(null)),
            }
        });
        let r = t.signup("eve@blocked.example", "correct-horse-9").await;
        assert_eq!(r.status, 403, "{}", r.text);
        assert_eq!(r.body["msg"], "not from there");
        assert_eq!(users_with(&t, "eve@blocked.example").await, 0);
        // The hook saw the user about to be made, which then is made with
        // the same id.
        let s = t.new_session("ann@fine.example", "correct-horse-9").await;
        let calls = hooks.calls(Hook::BeforeUserCreated);
        let last = calls.last().unwrap();
        assert_eq!(last["metadata"]["name"], "before-user-created");
        // The client's address, as the limits count it.
        assert_eq!(last["metadata"]["ip_address"], "127.0.0.1");
        assert_eq!(last["user"]["email"], "ann@fine.example");
        assert_eq!(last["user"]["id"], s["user"]["id"]);
        assert!(last["user"].get("encrypted_password").is_none());
        // A sign-in to an existing user asks nothing; an anonymous sign-up does.
        let before = hooks.calls(Hook::BeforeUserCreated).len();
        t.login("ann@fine.example", "correct-horse-9").await;
        assert_eq!(hooks.calls(Hook::BeforeUserCreated).len(), before);
        let r = t.post("/signup", json!({})).await;
        assert_eq!(r.status, 200, "{}", r.text);
        let calls = hooks.calls(Hook::BeforeUserCreated);
        assert_eq!(calls.len(), before + 1);
        assert_eq!(calls.last().unwrap()["user"]["is_anonymous"], true);
    }
);

with_hooks!(
    the_after_user_created_hook_is_told_and_its_failure_answers,
    [Hook::AfterUserCreated, Hook::SendEmail],
    |_| {},
    |t, hooks| {
        let s = t.new_session("told@example.com", "correct-horse-9").await;
        let calls = hooks.calls(Hook::AfterUserCreated);
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0]["user"]["id"], s["user"]["id"]);
        assert_eq!(calls[0]["user"]["identities"][0]["provider"], "email");
        // A failing hook is the answer; the user, made before, stays.
        hooks.answer(Hook::AfterUserCreated, |_, _| (500, json!({})));
        let r = t.signup("kept@example.com", "correct-horse-9").await;
        r.assert_error(500, "unexpected_failure");
        assert_eq!(users_with(&t, "kept@example.com").await, 1);
        // An invitation is told after its mail is queued: the mail goes.
        let invite = json!({"email": "invited@example.com"});
        let r = t.admin(Method::POST, "/invite", Some(invite)).await;
        r.assert_error(500, "unexpected_failure");
        let mails = hooks.wait_calls(Hook::SendEmail, 1).await;
        assert_eq!(mails[0]["email_data"]["email_action_type"], "invite");
        assert_eq!(mails[0]["user"]["email"], "invited@example.com");
    }
);

with_hooks!(
    the_send_email_hook_delivers_through_the_queue_once,
    [Hook::SendEmail],
    |c| c.mailer_autoconfirm = false,
    |t, hooks| {
        // Down first: the request is answered, the queue keeps the message.
        hooks.answer(Hook::SendEmail, |_, n| match n < 2 {
            true => (503, json!({})),
            false => (200, json!({})),
        });
        let r = t.signup("hooked-mail@example.com", "correct-horse-9").await;
        assert_eq!(r.status, 200, "{}", r.text);
        let calls = hooks.wait_calls(Hook::SendEmail, 3).await;
        // Up again: delivered, and never again.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            hooks.calls(Hook::SendEmail).len(),
            3,
            "delivered exactly once"
        );
        let p = &calls[2];
        // One message, one webhook id on every retry: a hook can drop a repeat.
        assert!(calls.iter().all(|c| c["_webhook_id"] == p["_webhook_id"]));
        assert_ne!(calls[0]["metadata"]["uuid"], p["metadata"]["uuid"]);
        assert_eq!(p["metadata"]["name"], "send-email");
        // Queued by a request: its client's address rides with the message.
        assert_eq!(p["metadata"]["ip_address"], "127.0.0.1");
        assert_eq!(p["user"]["email"], "hooked-mail@example.com");
        let data = &p["email_data"];
        assert_eq!(data["email_action_type"], "signup");
        assert_eq!(data["site_url"], t.server.state.config.api_external_url);
        // The payload's token hash confirms the address.
        let r = t
            .post(
                "/verify",
                json!({"type": "signup", "token_hash": data["token_hash"]}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert!(r.body["access_token"].is_string());
        let m = t.request(Method::GET, "/metrics", None, None).await.text;
        let ok = "castellan_hook_calls_total{hook=\"send_email\",outcome=\"ok\"}";
        // (Metrics are one per test process: both databases' runs count.)
        assert!(common::series_sum(&m, ok) >= 1.0);
        assert!(common::series_sum(&m, "castellan_queue_retried_total{queue=\"email\"}") >= 2.0);
        // A refusal in the hook's words is final: counted dead, not retried.
        hooks.answer(Hook::SendEmail, |_, _| {
            (
                200,
                json!({"error": {"http_code": 400, "message": "no such mailbox"}}),
            )
        });
        let before = hooks.calls(Hook::SendEmail).len();
        t.post("/recover", json!({"email": "hooked-mail@example.com"}))
            .await;
        hooks.wait_calls(Hook::SendEmail, before + 1).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(hooks.calls(Hook::SendEmail).len(), before + 1);
    }
);

with_hooks!(
    the_send_sms_hook_takes_the_providers_place,
    [Hook::SendSms],
    |c| {
        // No SMS provider at all: the hook delivers.
        c.sms.log = false;
        c.external_phone_enabled = true;
    },
    |t, hooks| {
        let r = t
            .post(
                "/signup",
                json!({"phone": "15550001111", "password": "correct-horse-9"}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        let calls = hooks.calls(Hook::SendSms);
        assert_eq!(calls.len(), 1, "sent by the request itself");
        let p = &calls[0];
        assert_eq!(p["metadata"]["name"], "send-sms");
        assert_eq!(p["sms"]["phone"], "15550001111");
        assert_eq!(p["user"]["phone"], "15550001111");
        let otp = p["sms"]["otp"].as_str().unwrap();
        let r = t
            .post(
                "/verify",
                json!({"type": "sms", "phone": "15550001111", "token": otp}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        // The hook's refusal is the answer, and the sign-up is taken back.
        hooks.answer(Hook::SendSms, |_, _| {
            (
                200,
                json!({"error": {"http_code": 400, "message": "that number cannot take SMS"}}),
            )
        });
        let r = t
            .post(
                "/signup",
                json!({"phone": "15550002222", "password": "correct-horse-9"}),
            )
            .await;
        assert_eq!(
            (r.status.as_u16(), r.body["msg"].as_str()),
            (400, Some("that number cannot take SMS")),
            "{}",
            r.text
        );
        let users = "SELECT count(*) FROM users WHERE phone = $1";
        assert_eq!(t.count_by_str(users, "15550002222").await, 0);
    }
);

with_hooks!(
    an_email_change_is_one_send_email_call_with_both_codes,
    [Hook::SendEmail],
    // Secure change asks both addresses (not with autoconfirm).
    |c| c.mailer_autoconfirm = false,
    |t, hooks| {
        let user = json!({"email": "old-box@example.com", "password": "correct-horse-9", "email_confirm": true});
        let r = t.admin(Method::POST, "/admin/users", Some(user)).await;
        assert_eq!(r.status, 200, "{}", r.text);
        let s = t.login("old-box@example.com", "correct-horse-9").await.body;
        let access = s["access_token"].as_str().unwrap();
        let r = t
            .request(
                Method::PUT,
                "/user",
                Some(access),
                Some(json!({"email": "new-box@example.com"})),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        let calls = hooks.wait_calls(Hook::SendEmail, 1).await;
        // The letter to the current address rode along: never a second call.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(hooks.calls(Hook::SendEmail).len(), 1);
        let data = &calls[0]["email_data"];
        assert_eq!(data["email_action_type"], "email_change");
        assert_eq!(calls[0]["user"]["new_email"], "new-box@example.com");
        assert_eq!(data["redirect_to"], t.server.state.config.site_url);
        // GoTrue's fields: token_hash confirms the new address, token_hash_new the current one.
        for hash in [&data["token_hash"], &data["token_hash_new"]] {
            let r = t
                .post(
                    "/verify",
                    json!({"type": "email_change", "token_hash": hash}),
                )
                .await;
            assert_eq!(r.status, 200, "{}", r.text);
        }
        assert_eq!(users_with(&t, "new-box@example.com").await, 1);
        // The codes too: `token` is the current address's, `token_new` the new one's.
        assert_ne!(data["token"], data["token_new"]);
    }
);
