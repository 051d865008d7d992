//! A stand-in for Twitter's OAuth 1.0a API on loopback (what
//! `GOTRUE_EXTERNAL_TWITTER_URL` points at): request tokens, the
//! authenticate page, access tokens and `verify_credentials`. Every request
//! must carry a valid HMAC-SHA1 signature, checked here by a separate
//! implementation of RFC 5849, so a wrong signature from castellan fails
//! the round trip. Tests say which profile each `screen_name` signs in.
// Shared by test crates that each use a part of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use hmac::{KeyInit, Mac};
use serde_json::{Value, json};

pub const CONSUMER_KEY: &str = "tw-consumer";
pub const CONSUMER_SECRET: &str = "tw-consumer-secret";

/// A request token handed out, and what its approval settled.
struct Pending {
    secret: String,
    callback: String,
    verifier: Option<String>,
    profile: Option<Value>,
}

#[derive(Default)]
struct Inner {
    issued: u32,
    pending: HashMap<String, Pending>,
    /// Access token → its secret and the profile it reads.
    access: HashMap<String, (String, Value)>,
    profiles: HashMap<String, Value>,
    /// Status for every request, when set (503: down, 401: refused).
    failing: Option<u16>,
    /// Requests by path, and how many carried a bad signature.
    calls: Vec<String>,
    bad_signatures: u32,
}

#[derive(Clone)]
pub struct FakeTwitter {
    pub base: String,
    inner: Arc<Mutex<Inner>>,
}

impl FakeTwitter {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let fake = FakeTwitter {
            base,
            inner: Arc::default(),
        };
        let app = axum::Router::new()
            .route("/oauth/request_token", post(request_token))
            .route("/oauth/authenticate", get(authenticate))
            .route("/oauth/access_token", post(access_token))
            .route(
                "/1.1/account/verify_credentials.json",
                get(verify_credentials),
            )
            .with_state(fake.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        fake
    }

    /// The user `screen_name` signs in as.
    pub fn profile(&self, screen_name: &str, id: u64, email: &str) {
        let p = json!({"id": id, "id_str": id.to_string(), "screen_name": screen_name,
            "name": format!("{screen_name} name"),
            "profile_image_url_https": format!("https://pbs.test/{id}.jpg"), "email": email});
        self.inner
            .lock()
            .unwrap()
            .profiles
            .insert(screen_name.into(), p);
    }

    pub fn failing(&self, status: Option<u16>) {
        self.inner.lock().unwrap().failing = status;
    }

    pub fn calls(&self) -> Vec<String> {
        self.inner.lock().unwrap().calls.clone()
    }

    pub fn bad_signatures(&self) -> u32 {
        self.inner.lock().unwrap().bad_signatures
    }

    /// The callback URL a request token was asked with.
    pub fn callback_of(&self, request_token: &str) -> Option<String> {
        let i = self.inner.lock().unwrap();
        i.pending.get(request_token).map(|p| p.callback.clone())
    }
}

/// RFC 3986 percent-encoding, as RFC 5849 §3.6 asks.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The `OAuth k="v", …` parameters of an Authorization header, decoded.
fn oauth_params(headers: &HeaderMap) -> Option<Vec<(String, String)>> {
    let h = headers.get("authorization")?.to_str().ok()?;
    let list = h.strip_prefix("OAuth ")?;
    list.split(',')
        .map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            let v = v.strip_prefix('"')?.strip_suffix('"')?;
            let decoded: String = serde_urlencoded::from_str::<Vec<(String, String)>>(&format!(
                "v={}",
                v.replace('+', "%2B")
            ))
            .ok()?
            .pop()?
            .1;
            Some((k.to_string(), decoded))
        })
        .collect()
}

fn param<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Whether the request is signed by our consumer and the token whose
/// secret is `token_secret` (RFC 5849 §3.4: the base string over the
/// method, the URL and every parameter but the signature; HMAC-SHA1).
fn signed(
    method: &str,
    url: &str,
    oauth: &[(String, String)],
    query: &[(String, String)],
    token_secret: &str,
) -> bool {
    if param(oauth, "oauth_consumer_key") != Some(CONSUMER_KEY)
        || param(oauth, "oauth_signature_method") != Some("HMAC-SHA1")
        || param(oauth, "oauth_nonce").is_none_or(str::is_empty)
        || param(oauth, "oauth_timestamp").is_none_or(|t| t.parse::<u64>().is_err())
    {
        return false;
    }
    let Some(signature) = param(oauth, "oauth_signature") else {
        return false;
    };
    let mut pairs: Vec<(String, String)> = oauth
        .iter()
        .chain(query)
        .filter(|(k, _)| k != "oauth_signature")
        .map(|(k, v)| (enc(k), enc(v)))
        .collect();
    pairs.sort();
    let normalized: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let base = format!("{method}&{}&{}", enc(url), enc(&normalized.join("&")));
    let key = format!("{}&{}", enc(CONSUMER_SECRET), enc(token_secret));
    let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(base.as_bytes());
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    expected == signature
}

fn plain(status: StatusCode, body: String) -> Response {
    (
        status,
        [("content-type", "application/x-www-form-urlencoded")],
        body,
    )
        .into_response()
}

fn unauthorized(fake: &FakeTwitter, bad_signature: bool) -> Response {
    if bad_signature {
        fake.inner.lock().unwrap().bad_signatures += 1;
    }
    (
        StatusCode::UNAUTHORIZED,
        axum::Json(json!({"errors": [{"code": 32, "message": "Could not authenticate you."}]})),
    )
        .into_response()
}

/// Every call is recorded; a failing provider answers its status.
fn enter(fake: &FakeTwitter, path: &str) -> Option<Response> {
    let mut i = fake.inner.lock().unwrap();
    i.calls.push(path.into());
    i.failing
        .map(|s| (StatusCode::from_u16(s).unwrap(), "provider trouble").into_response())
}

async fn request_token(State(fake): State<FakeTwitter>, headers: HeaderMap) -> Response {
    if let Some(r) = enter(&fake, "request_token") {
        return r;
    }
    let url = format!("{}/oauth/request_token", fake.base);
    let oauth = oauth_params(&headers).unwrap_or_default();
    let callback = param(&oauth, "oauth_callback").map(str::to_string);
    let (Some(callback), true) = (callback, signed("POST", &url, &oauth, &[], "")) else {
        return unauthorized(&fake, true);
    };
    let mut i = fake.inner.lock().unwrap();
    i.issued += 1;
    let token = format!("rt{}", i.issued);
    let secret = format!("rts{}-{}", i.issued, rand::random::<u32>());
    i.pending.insert(
        token.clone(),
        Pending {
            secret: secret.clone(),
            callback,
            verifier: None,
            profile: None,
        },
    );
    plain(
        StatusCode::OK,
        format!("oauth_token={token}&oauth_token_secret={secret}&oauth_callback_confirmed=true"),
    )
}

/// The user approves at once: back to the callback with a verifier, as
/// the user `screen_name` names.
async fn authenticate(
    State(fake): State<FakeTwitter>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let mut i = fake.inner.lock().unwrap();
    i.calls.push("authenticate".into());
    let profile = q
        .get("screen_name")
        .and_then(|s| i.profiles.get(s))
        .cloned();
    let token = q.get("oauth_token").cloned().unwrap_or_default();
    let issued = i.issued;
    let Some(p) = i.pending.get_mut(&token) else {
        return (StatusCode::BAD_REQUEST, "unknown request token").into_response();
    };
    let verifier = format!("v{issued}-{token}");
    p.verifier = Some(verifier.clone());
    p.profile = profile;
    let sep = if p.callback.contains('?') { '&' } else { '?' };
    let to = format!(
        "{}{sep}oauth_token={token}&oauth_verifier={verifier}",
        p.callback
    );
    (StatusCode::FOUND, [("location", to)]).into_response()
}

async fn access_token(State(fake): State<FakeTwitter>, headers: HeaderMap) -> Response {
    if let Some(r) = enter(&fake, "access_token") {
        return r;
    }
    let url = format!("{}/oauth/access_token", fake.base);
    let oauth = oauth_params(&headers).unwrap_or_default();
    let token = param(&oauth, "oauth_token").unwrap_or_default().to_string();
    // A request token is exchanged once.
    let pending = fake.inner.lock().unwrap().pending.remove(&token);
    let Some(p) = pending else {
        return unauthorized(&fake, false);
    };
    if !signed("POST", &url, &oauth, &[], &p.secret) {
        return unauthorized(&fake, true);
    }
    let (Some(verifier), Some(profile)) = (p.verifier, p.profile) else {
        return unauthorized(&fake, false);
    };
    if param(&oauth, "oauth_verifier") != Some(verifier.as_str()) {
        return unauthorized(&fake, false);
    }
    let mut i = fake.inner.lock().unwrap();
    i.issued += 1;
    let access = format!("at{}", i.issued);
    let secret = format!("ats{}-{}", i.issued, rand::random::<u32>());
    let body = format!(
        "oauth_token={access}&oauth_token_secret={secret}&user_id={}&screen_name={}",
        profile["id_str"].as_str().unwrap(),
        profile["screen_name"].as_str().unwrap()
    );
    i.access.insert(access, (secret, profile));
    plain(StatusCode::OK, body)
}

async fn verify_credentials(State(fake): State<FakeTwitter>, req: Request) -> Response {
    if let Some(r) = enter(&fake, "verify_credentials") {
        return r;
    }
    let url = format!("{}/1.1/account/verify_credentials.json", fake.base);
    let oauth = oauth_params(req.headers()).unwrap_or_default();
    let query: Vec<(String, String)> =
        serde_urlencoded::from_str(req.uri().query().unwrap_or_default()).unwrap_or_default();
    let token = param(&oauth, "oauth_token").unwrap_or_default();
    let known = fake.inner.lock().unwrap().access.get(token).cloned();
    let Some((secret, profile)) = known else {
        return unauthorized(&fake, false);
    };
    if !signed("GET", &url, &oauth, &query, &secret) {
        return unauthorized(&fake, true);
    }
    let mut profile: Value = profile;
    // The email is only shared when asked for.
    if param(&query, "include_email") != Some("true") {
        profile.as_object_mut().unwrap().remove("email");
    }
    axum::Json(profile).into_response()
}
