//! A stand-in for an OAuth provider on loopback, shaped like GitHub (what
//! `GOTRUE_EXTERNAL_GITHUB_URL` points a GitHub Enterprise at): the token
//! endpoint, `/api/v3/user` and `/api/v3/user/emails`. Tests say which
//! profile each authorization code signs in, and can make the provider
//! refuse, fail or stall. `GET /_authorize` completes a browser's visit the
//! way the real page would: 302 back to the callback with a code.
// Shared by test crates that each use a part of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

/// What the provider says about the user of one authorization code.
#[derive(Debug, Clone)]
pub struct Profile {
    pub user: Value,
    pub emails: Value,
}

impl Profile {
    /// A GitHub user with one primary email.
    pub fn github(id: u64, login: &str, email: &str, verified: bool) -> Self {
        Profile {
            user: json!({"id": id, "login": login, "name": format!("{login} name"), "avatar_url": format!("https://avatars.test/{id}")}),
            emails: json!([{"email": email, "primary": true, "verified": verified}]),
        }
    }
}

#[derive(Default)]
struct Inner {
    profiles: HashMap<String, Profile>,
    /// Token requests received: the form and the Authorization header.
    token_requests: Vec<(HashMap<String, String>, Option<String>)>,
    /// Status for every token request, when set (503: down).
    failing: Option<u16>,
    /// How long the token endpoint takes.
    delay: Duration,
}

#[derive(Clone)]
pub struct FakeOAuth {
    pub base: String,
    inner: Arc<Mutex<Inner>>,
}

impl FakeOAuth {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let fake = FakeOAuth {
            base,
            inner: Arc::default(),
        };
        let app = axum::Router::new()
            .route("/login/oauth/access_token", post(token))
            .route("/api/v3/user", get(user))
            .route("/api/v3/user/emails", get(emails))
            .route("/login/oauth/authorize", get(authorize))
            .with_state(fake.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        fake
    }

    /// The profile that authorization `code` signs in.
    pub fn profile(&self, code: &str, p: Profile) {
        self.inner.lock().unwrap().profiles.insert(code.into(), p);
    }

    /// Every token request answers `status` (None: normal again).
    pub fn failing(&self, status: Option<u16>) {
        self.inner.lock().unwrap().failing = status;
    }

    pub fn delay(&self, d: Duration) {
        self.inner.lock().unwrap().delay = d;
    }

    pub fn token_requests(&self) -> Vec<(HashMap<String, String>, Option<String>)> {
        self.inner.lock().unwrap().token_requests.clone()
    }
}

/// The provider's page, approved at once: back to `redirect_uri` with the
/// code `login_hint` names (default `code`) and the state.
async fn authorize(Query(q): Query<HashMap<String, String>>) -> Response {
    let code = q
        .get("login_hint")
        .cloned()
        .unwrap_or_else(|| "code".into());
    let to = format!(
        "{}?code={code}&state={}",
        q.get("redirect_uri").cloned().unwrap_or_default(),
        q.get("state").cloned().unwrap_or_default()
    );
    (StatusCode::FOUND, [("location", to)]).into_response()
}

async fn token(State(fake): State<FakeOAuth>, headers: HeaderMap, req: Request) -> Response {
    let bytes = axum::body::to_bytes(req.into_body(), 1 << 20)
        .await
        .unwrap();
    let form: HashMap<String, String> = serde_urlencoded::from_bytes(&bytes).unwrap_or_default();
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let (delay, failing, known) = {
        let mut i = fake.inner.lock().unwrap();
        i.token_requests.push((form.clone(), auth));
        let code = form.get("code").cloned().unwrap_or_default();
        (i.delay, i.failing, i.profiles.contains_key(&code))
    };
    tokio::time::sleep(delay).await;
    if let Some(status) = failing {
        return (StatusCode::from_u16(status).unwrap(), "provider trouble").into_response();
    }
    if !known {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "bad_verification_code", "error_description": "The code passed is incorrect or expired."})),
        )
            .into_response();
    }
    let code = &form["code"];
    axum::Json(json!({
        "access_token": format!("gho_{code}"),
        "token_type": "bearer",
        "scope": "user:email",
        "refresh_token": format!("ghr_{code}")
    }))
    .into_response()
}

fn profile_of(fake: &FakeOAuth, headers: &HeaderMap) -> Option<Profile> {
    let token = headers
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")?;
    let code = token.strip_prefix("gho_")?;
    fake.inner.lock().unwrap().profiles.get(code).cloned()
}

async fn user(State(fake): State<FakeOAuth>, headers: HeaderMap) -> Response {
    match profile_of(&fake, &headers) {
        Some(p) => axum::Json(p.user).into_response(),
        None => (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"message": "Bad credentials"})),
        )
            .into_response(),
    }
}

async fn emails(State(fake): State<FakeOAuth>, headers: HeaderMap) -> Response {
    match profile_of(&fake, &headers) {
        Some(p) => axum::Json(p.emails).into_response(),
        None => (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"message": "Bad credentials"})),
        )
            .into_response(),
    }
}
