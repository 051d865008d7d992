//! A stand-in for an SMS provider's API on loopback: it records every
//! request (path, authentication, form) and answers as told. `GET
//! /_received` lists what it got as JSON, for the client tests' scripts.
// Shared by test crates that each use a part of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::{Value, json};

/// One request the stand-in received.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub authorization: Option<String>,
    pub form: HashMap<String, String>,
}

/// A provider's API on loopback: records requests, answers as told.
#[derive(Clone)]
pub struct FakeProvider {
    pub base: String,
    received: Arc<Mutex<Vec<Received>>>,
    answer: Arc<Mutex<(u16, Value)>>,
}

impl FakeProvider {
    pub async fn start(status: u16, body: Value) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let fake = FakeProvider {
            base,
            received: Arc::default(),
            answer: Arc::new(Mutex::new((status, body))),
        };
        let app = axum::Router::new()
            .route("/_received", axum::routing::get(listing))
            .fallback(record)
            .with_state(fake.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        fake
    }

    /// Points `c`'s phone sign-in at this stand-in as Twilio, phone
    /// enabled and confirmations by SMS.
    pub fn configure_twilio(&self, c: &mut castellan_core::Config) {
        c.external_phone_enabled = true;
        c.sms_autoconfirm = false;
        c.sms.provider = "twilio".into();
        c.sms.settings = [
            ("ACCOUNT_SID", "AC1"),
            ("AUTH_TOKEN", "tok"),
            ("MESSAGE_SERVICE_SID", "MG1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        c.sms.api_url = Some(self.base.clone());
        c.rate_limits.sms_sent.events = 1000;
    }

    pub fn answer(&self, status: u16, body: Value) {
        *self.answer.lock().unwrap() = (status, body);
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// The requests once there are at least `n` (10 s at most).
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the provider got {} requests, not {n}: {got:?}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn listing(State(fake): State<FakeProvider>) -> axum::Json<Value> {
    let got = fake.received();
    axum::Json(Value::Array(
        got.iter()
            .map(|r| json!({"path": r.path, "form": r.form}))
            .collect(),
    ))
}

async fn record(State(fake): State<FakeProvider>, req: Request) -> axum::response::Response {
    let path = req.uri().path().to_string();
    let authorization = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let bytes = axum::body::to_bytes(req.into_body(), 1 << 20)
        .await
        .unwrap();
    let form: HashMap<String, String> = serde_urlencoded_pairs(&bytes);
    fake.received.lock().unwrap().push(Received {
        path,
        authorization,
        form,
    });
    let (status, body) = fake.answer.lock().unwrap().clone();
    (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response()
}

/// A form body's pairs (the stand-in reads what the provider would).
fn serde_urlencoded_pairs(bytes: &[u8]) -> HashMap<String, String> {
    serde_urlencoded::from_bytes::<Vec<(String, String)>>(bytes)
        .unwrap()
        .into_iter()
        .collect()
}
