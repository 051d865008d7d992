//! Auth hooks on loopback, for the tests: one stand-in server, a path per
//! hook, checking each call's Standard Webhooks signature.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use castellan_core::config::{HookConfig, HookTarget};
use castellan_core::hooks::Hook;
use serde_json::{Value, json};

/// The hook's secret, as an operator writes it.
pub const SECRET: &str = "v1,whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// How a stand-in hook answers a payload, given how many calls it had
/// before: a status and a JSON body.
type Answer = Box<dyn Fn(&Value, usize) -> (u16, Value) + Send>;

/// Hooks on loopback, one path per hook: each call's signature checked
/// (401 when wrong, as a hook should), its payload kept, and answered as
/// the test says (`{}` unless told).
#[derive(Clone)]
pub struct HookServer {
    base: String,
    calls: Arc<Mutex<Vec<(String, Value)>>>,
    answers: Arc<Mutex<HashMap<String, Answer>>>,
}

impl HookServer {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let hooks = HookServer {
            base: format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port()),
            calls: Arc::default(),
            answers: Arc::default(),
        };
        let app = axum::Router::new()
            .route("/{hook}", axum::routing::post(answer))
            .with_state(hooks.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        hooks
    }

    /// `hook` turned on in `c`, pointing here.
    pub fn turn_on(&self, c: &mut castellan_core::Config, hook: Hook) {
        let target = HookTarget::Http(format!("{}/{}", self.base, hook.name()));
        let keys = vec![castellan_core::crypto::webhook::key(SECRET).unwrap()];
        c.hooks.set(hook, Some(HookConfig { target, keys }));
    }

    pub fn answer(&self, hook: Hook, f: impl Fn(&Value, usize) -> (u16, Value) + Send + 'static) {
        let mut answers = self.answers.lock().unwrap();
        answers.insert(hook.name().to_string(), Box::new(f));
    }

    pub fn calls(&self, hook: Hook) -> Vec<Value> {
        let calls = self.calls.lock().unwrap();
        calls
            .iter()
            .filter(|(n, _)| n == hook.name())
            .map(|(_, p)| p.clone())
            .collect()
    }

    /// The calls to `hook` once there are at least `n`.
    pub async fn wait_calls(&self, hook: Hook, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let calls = self.calls(hook);
            if calls.len() >= n {
                return calls;
            }
            assert!(Instant::now() < deadline, "{} got {calls:?}", hook.name());
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

async fn answer(
    axum::extract::State(hooks): axum::extract::State<HookServer>,
    axum::extract::Path(name): axum::extract::Path<String>,
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
    if h("webhook-signature") != expected || h("content-type") != "application/json" {
        return (StatusCode::UNAUTHORIZED, axum::Json(json!({})));
    }
    let mut payload: Value = serde_json::from_slice(&body).unwrap();
    // Kept beside the payload, for tests of retries (not sent by castellan).
    payload["_webhook_id"] = json!(h("webhook-id"));
    let before = {
        let mut calls = hooks.calls.lock().unwrap();
        let before = calls.iter().filter(|(n, _)| *n == name).count();
        calls.push((name.clone(), payload.clone()));
        before
    };
    let answers = hooks.answers.lock().unwrap();
    let (status, out) = match answers.get(&name) {
        Some(f) => f(&payload, before),
        None => (200, json!({})),
    };
    (StatusCode::from_u16(status).unwrap(), axum::Json(out))
}
