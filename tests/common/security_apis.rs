//! Stand-ins on loopback for the outside APIs castellan's bot defences ask:
//! a CAPTCHA verify endpoint answering as hCaptcha and Turnstile document
//! (each token spent once), and Have I Been Pwned's range API.
// Shared by test crates that each use a part of it.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::json;
use sha1::{Digest, Sha1};

/// A CAPTCHA provider's `siteverify`: tokens it issued pass once.
#[derive(Clone)]
pub struct FakeCaptcha {
    pub url: String,
    pub secret: String,
    issued: Arc<Mutex<HashSet<String>>>,
    spent: Arc<Mutex<HashSet<String>>>,
    received: Arc<Mutex<Vec<HashMap<String, String>>>>,
    delay: Arc<Mutex<Duration>>,
}

impl FakeCaptcha {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let fake = FakeCaptcha {
            url: format!("http://{}/siteverify", listener.local_addr().unwrap()),
            secret: "captcha-secret".into(),
            issued: Arc::default(),
            spent: Arc::default(),
            received: Arc::default(),
            delay: Arc::default(),
        };
        let app = axum::Router::new()
            .route("/siteverify", axum::routing::post(siteverify))
            .route("/_issue", axum::routing::post(issue_handler))
            .with_state(fake.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        fake
    }

    /// Points `c`'s CAPTCHA protection at this stand-in.
    pub fn configure(&self, c: &mut castellan_core::Config, provider: &str) {
        use castellan_core::config::{CaptchaConfig, CaptchaProvider};
        c.captcha = Some(CaptchaConfig {
            provider: match provider {
                "turnstile" => CaptchaProvider::Turnstile,
                _ => CaptchaProvider::Hcaptcha,
            },
            secret: self.secret.clone(),
            timeout: Duration::from_millis(500),
            verify_url: self.url.clone(),
        });
    }

    /// A token a browser would have been given after a solved challenge.
    pub fn issue(&self) -> String {
        let token = format!("P1_{}", uuid::Uuid::new_v4().simple());
        self.issued.lock().unwrap().insert(token.clone());
        token
    }

    pub fn received(&self) -> Vec<HashMap<String, String>> {
        self.received.lock().unwrap().clone()
    }

    /// Answers only after `d` (longer than castellan waits: unavailable).
    pub fn answer_after(&self, d: Duration) {
        *self.delay.lock().unwrap() = d;
    }
}

async fn issue_handler(State(fake): State<FakeCaptcha>) -> String {
    fake.issue()
}

async fn siteverify(
    State(fake): State<FakeCaptcha>,
    axum::Form(form): axum::Form<HashMap<String, String>>,
) -> impl IntoResponse {
    let delay = *fake.delay.lock().unwrap();
    tokio::time::sleep(delay).await;
    fake.received.lock().unwrap().push(form.clone());
    let token = form.get("response").cloned().unwrap_or_default();
    let verdict = if form.get("secret") != Some(&fake.secret) {
        Err("invalid-input-secret")
    } else if fake.issued.lock().unwrap().remove(&token) {
        fake.spent.lock().unwrap().insert(token);
        Ok(())
    } else if fake.spent.lock().unwrap().contains(&token) {
        Err("timeout-or-duplicate")
    } else {
        Err("invalid-input-response")
    };
    axum::Json(match verdict {
        Ok(()) => {
            json!({"success": true, "challenge_ts": "2026-12-07T00:00:00Z", "hostname": "localhost"})
        }
        Err(code) => json!({"success": false, "error-codes": [code]}),
    })
}

/// Have I Been Pwned's range API over a list of leaked passwords, with the
/// padding lines (count 0) the real one adds.
#[derive(Clone)]
pub struct FakePwned {
    pub base: String,
    leaked: Arc<Mutex<Vec<String>>>,
    asked: Arc<Mutex<Vec<String>>>,
    status: Arc<Mutex<u16>>,
    delay: Arc<Mutex<Duration>>,
}

impl FakePwned {
    pub async fn start(leaked: &[&str]) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let fake = FakePwned {
            base: format!("http://{}", listener.local_addr().unwrap()),
            leaked: Arc::new(Mutex::new(leaked.iter().map(|p| sha1_hex(p)).collect())),
            asked: Arc::default(),
            status: Arc::new(Mutex::new(200)),
            delay: Arc::default(),
        };
        let app = axum::Router::new()
            .route("/range/{prefix}", axum::routing::get(range))
            .with_state(fake.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        fake
    }

    /// Points `c`'s leaked-password protection at this stand-in.
    pub fn configure(&self, c: &mut castellan_core::Config, fail_closed: bool) {
        c.password.hibp = Some(castellan_core::config::HibpConfig {
            fail_closed,
            user_agent: "castellan-tests".into(),
            url: self.base.clone(),
            timeout: Duration::from_millis(500),
        });
    }

    /// Every path asked for (`/range/XXXXX`).
    pub fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }

    pub fn answer_status(&self, status: u16) {
        *self.status.lock().unwrap() = status;
    }

    pub fn answer_after(&self, d: Duration) {
        *self.delay.lock().unwrap() = d;
    }
}

pub fn sha1_hex(password: &str) -> String {
    Sha1::digest(password.as_bytes())
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect()
}

async fn range(State(fake): State<FakePwned>, Path(prefix): Path<String>) -> impl IntoResponse {
    let delay = *fake.delay.lock().unwrap();
    tokio::time::sleep(delay).await;
    fake.asked.lock().unwrap().push(format!("/range/{prefix}"));
    let status = *fake.status.lock().unwrap();
    if status != 200 {
        return (StatusCode::from_u16(status).unwrap(), String::new());
    }
    let mut lines: Vec<String> = fake
        .leaked
        .lock()
        .unwrap()
        .iter()
        .filter(|h| h.starts_with(&prefix))
        .map(|h| format!("{}:{}", &h[5..], 42))
        .collect();
    // Padding: suffixes nobody leaked, with a count of zero.
    lines.push("0000000000000000000000000000000000A:0".into());
    lines.sort();
    (StatusCode::OK, lines.join("\r\n"))
}

/// Two wallets, one per chain, made fresh: they sign what they are given,
/// in each chain's format. Served over HTTP too (`GET /<chain>/address`,
/// `POST /<chain>/sign` with the message as the body), for a client script
/// whose wallet interface asks them.
#[derive(Clone)]
pub struct Wallets {
    pub base: String,
    solana: Arc<ed25519_dalek::SigningKey>,
    ethereum: Arc<k256::ecdsa::SigningKey>,
}

impl Wallets {
    pub fn new() -> Self {
        Wallets {
            base: String::new(),
            solana: Arc::new(ed25519_dalek::SigningKey::from_bytes(&{
                let mut seed = [0u8; 32];
                rand_core_06::RngCore::fill_bytes(&mut rand_core_06::OsRng, &mut seed);
                seed
            })),
            ethereum: Arc::new(k256::ecdsa::SigningKey::random(&mut rand_core_06::OsRng)),
        }
    }

    pub async fn serve(mut self) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        self.base = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new()
            .route("/{chain}/address", axum::routing::get(wallet_address))
            .route("/{chain}/sign", axum::routing::post(wallet_sign))
            .with_state(self.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        self
    }

    pub fn solana_address(&self) -> String {
        bs58::encode(self.solana.verifying_key().as_bytes()).into_string()
    }

    pub fn ethereum_address(&self) -> String {
        castellan_core::crypto::web3::eth_address(self.ethereum.verifying_key())
    }

    /// 64 bytes, standard base64.
    pub fn solana_sign(&self, message: &str) -> String {
        use base64::Engine;
        use ed25519_dalek::Signer;
        let sig = self.solana.sign(message.as_bytes());
        base64::engine::general_purpose::STANDARD.encode(sig.to_bytes())
    }

    /// `personal_sign`: 65 bytes r‖s‖v (v 27 or 28), hex with `0x`.
    pub fn ethereum_sign(&self, message: &str) -> String {
        let hash = castellan_core::crypto::web3::personal_sign_hash(message);
        let (sig, id) = self.ethereum.sign_prehash_recoverable(&hash).unwrap();
        let mut bytes = sig.to_bytes().to_vec();
        bytes.push(27 + id.to_byte());
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        format!("0x{hex}")
    }
}

impl Wallets {
    /// The chain's wallet address.
    pub fn address(&self, chain: &str) -> String {
        match chain {
            "solana" => self.solana_address(),
            _ => self.ethereum_address(),
        }
    }

    /// The chain's signature of `message`, as its wallets encode it.
    pub fn sign(&self, chain: &str, message: &str) -> String {
        match chain {
            "solana" => self.solana_sign(message),
            _ => self.ethereum_sign(message),
        }
    }
}

impl Default for Wallets {
    fn default() -> Self {
        Self::new()
    }
}

async fn wallet_address(State(w): State<Wallets>, Path(chain): Path<String>) -> String {
    w.address(&chain)
}

async fn wallet_sign(
    State(w): State<Wallets>,
    Path(chain): Path<String>,
    message: String,
) -> String {
    w.sign(&chain, &message)
}
