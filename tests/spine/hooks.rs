//! Auth hooks (issue 28): the custom access token hook over HTTP, signed
//! with Standard Webhooks, and as a PostgreSQL function.

use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, StatusCode};
use reqwest::Method;
use serde_json::{Value, json};

use crate::common::{self, Backend, TestServer};

/// The hook's secret, as an operator writes it.
const SECRET: &str = "v1,whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// What the stand-in does with the claims it is given.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    AddTenant,
    Refuse,
    DropAud,
}

/// A custom access token hook on loopback: it checks each call's
/// signature, keeps the payloads, and answers as its mode says.
#[derive(Clone)]
struct ClaimsHook {
    url: String,
    calls: Arc<Mutex<Vec<Value>>>,
    mode: Arc<Mutex<Mode>>,
}

impl ClaimsHook {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let hook = ClaimsHook {
            url: format!(
                "http://127.0.0.1:{}/claims",
                listener.local_addr().unwrap().port()
            ),
            calls: Arc::default(),
            mode: Arc::new(Mutex::new(Mode::AddTenant)),
        };
        let app = axum::Router::new()
            .route("/claims", axum::routing::post(answer))
            .with_state(hook.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        hook
    }
}

async fn answer(
    axum::extract::State(hook): axum::extract::State<ClaimsHook>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> (StatusCode, axum::Json<Value>) {
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    };
    let key = castellan_core::crypto::webhook::key(SECRET).unwrap();
    let ts: i64 = h("webhook-timestamp").parse().unwrap_or_default();
    let expected = castellan_core::crypto::webhook::signature(&[key], h("webhook-id"), ts, &body);
    if h("webhook-signature") != expected {
        return (StatusCode::UNAUTHORIZED, axum::Json(json!({})));
    }
    let payload: Value = serde_json::from_slice(&body).unwrap();
    hook.calls.lock().unwrap().push(payload.clone());
    let mut claims = payload["claims"].clone();
    let out = match *hook.mode.lock().unwrap() {
        Mode::AddTenant => {
            claims["tenant_id"] = json!("acme");
            claims["role"] = json!("authenticated");
            json!({ "claims": claims })
        }
        Mode::Refuse => json!({"error": {"http_code": 403, "message": "this tenant is closed"}}),
        Mode::DropAud => {
            claims.as_object_mut().unwrap().remove("aud");
            json!({ "claims": claims })
        }
    };
    (StatusCode::OK, axum::Json(out))
}

async fn hooked(
    backend: Backend,
    tweak: impl FnOnce(&mut castellan_core::Config),
) -> (TestServer, ClaimsHook) {
    let hook = ClaimsHook::start().await;
    let url = hook.url.clone();
    let t = common::spawn(backend, move |c| {
        c.hooks.custom_access_token = Some(castellan_core::config::HookConfig {
            target: castellan_core::config::HookTarget::Http(url),
            keys: vec![castellan_core::crypto::webhook::key(SECRET).unwrap()],
        });
        c.mailer_autoconfirm = true;
        tweak(c);
    })
    .await;
    (t, hook)
}

crate::both!(
    the_custom_access_token_hook_shapes_every_token,
    hooked,
    |_| {},
    |t, hook| {
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
        let calls = hook.calls.lock().unwrap().clone();
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
        *hook.mode.lock().unwrap() = Mode::Refuse;
        let sessions = "SELECT count(*) FROM sessions WHERE user_id = $1";
        let user = t.user_id_by_email("hooked@example.com").await;
        let before = t.count_by_uuid(sessions, user).await;
        let r = t.login("hooked@example.com", "correct-horse-9").await;
        assert_eq!(r.status, 403, "{}", r.text);
        assert_eq!(r.body["msg"], "this tenant is closed");
        assert!(r.body.get("access_token").is_none());
        // Refused before anything was written: no session was started.
        assert_eq!(t.count_by_uuid(sessions, user).await, before);
        *hook.mode.lock().unwrap() = Mode::DropAud;
        let r = t.login("hooked@example.com", "correct-horse-9").await;
        r.assert_error(500, "unexpected_failure");
        assert!(
            r.body["msg"]
                .as_str()
                .unwrap()
                .contains("(root): aud is required"),
            "{}",
            r.text
        );
    }
);

crate::both!(
    a_hook_that_cannot_be_reached_refuses_the_token,
    hooked,
    |c| {
        // Nothing listens on port 9 of loopback.
        c.hooks.custom_access_token.as_mut().unwrap().target =
            castellan_core::config::HookTarget::Http("http://127.0.0.1:9/claims".into());
    },
    |t, _hook| {
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
        assert!(
            common::series_sum(
                &m,
                "castellan_hook_calls_total{hook=\"custom_access_token\",outcome=\"error\"}"
            ) >= 1.0
        );
    }
);

/// On PostgreSQL the hook may be a function in the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_function_shapes_the_token() {
    let t = common::spawn(Backend::Postgres, |c| {
        c.hooks.custom_access_token = Some(castellan_core::config::HookConfig {
            target: castellan_core::config::HookTarget::PgFunction {
                schema: "public".into(),
                function: "claims_hook".into(),
            },
            keys: vec![],
        });
        c.mailer_autoconfirm = true;
    })
    .await;
    let castellan_core::store::Pool::Pg(pool) = t.pool() else {
        panic!("a PostgreSQL server");
    };
    sqlx::query(
        "CREATE FUNCTION public.claims_hook(event jsonb) RETURNS jsonb LANGUAGE sql AS $$ \
         SELECT jsonb_build_object('claims', (event->'claims') || jsonb_build_object('plan', 'pg-' || (event->>'authentication_method'))) $$",
    )
    .execute(pool)
    .await
    .unwrap();
    let s = t
        .new_session("pg-hook@example.com", "correct-horse-9")
        .await;
    let claims = common::claims(s["access_token"].as_str().unwrap());
    assert_eq!(claims["plan"], "pg-password", "{claims}");
    t.stop().await;
}

/// A password verification attempt hook on loopback: it refuses every
/// attempt after the second wrong one, and signs the user out everywhere.
async fn attempts_hook() -> (String, Arc<Mutex<Vec<Value>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://127.0.0.1:{}/attempt",
        listener.local_addr().unwrap().port()
    );
    let seen: Arc<Mutex<Vec<Value>>> = Arc::default();
    let kept = seen.clone();
    let app = axum::Router::new().route(
        "/attempt",
        axum::routing::post(move |axum::Json(p): axum::Json<Value>| {
            let kept = kept.clone();
            async move {
                let mut seen = kept.lock().unwrap();
                seen.push(p);
                let wrong = seen.iter().filter(|p| p["valid"] == false).count();
                axum::Json(match wrong >= 2 {
                    true => json!({"decision": "reject", "message": "locked for an hour", "should_logout_user": true}),
                    false => json!({"decision": "continue"}),
                })
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

async fn attempts_server(
    backend: Backend,
    tweak: impl FnOnce(&mut castellan_core::Config),
) -> (TestServer, Arc<Mutex<Vec<Value>>>) {
    let (url, seen) = attempts_hook().await;
    let t = common::spawn(backend, move |c| {
        c.hooks.password_verification_attempt = Some(castellan_core::config::HookConfig {
            target: castellan_core::config::HookTarget::Http(url),
            keys: vec![],
        });
        c.mailer_autoconfirm = true;
        tweak(c);
    })
    .await;
    (t, seen)
}

crate::both!(
    a_password_attempt_hook_locks_an_account,
    attempts_server,
    |_| {},
    |t, seen| {
        t.new_session("locked@example.com", "correct-horse-9").await;
        let user = t.user_id_by_email("locked@example.com").await;
        assert!(seen.lock().unwrap().is_empty(), "a sign-up is no attempt");
        let s = t.login("locked@example.com", "correct-horse-9").await.body;
        assert_eq!(seen.lock().unwrap().len(), 1, "the sign-in told it");
        assert_eq!(seen.lock().unwrap()[0]["valid"], true);
        assert_eq!(seen.lock().unwrap()[0]["user_id"], user.to_string());
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
        let before = seen.lock().unwrap().len();
        t.login("nobody@example.com", "whatever-9").await;
        assert_eq!(seen.lock().unwrap().len(), before);
    }
);
