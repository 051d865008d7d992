//! The OAuth server's whole sign-in, as an app and its consent page drive
//! it: `GET /oauth/authorize`, the consent page's read (a user who already
//! consented is approved at once) and `POST /oauth/token` for the code. One
//! operation is the three requests; each connection is one user of a
//! confidential client.

use anyhow::Context;
use base64::Engine;
use serde_json::{Value, json};
use sha2::Digest;

use crate::{Bench, SMALL_USERS, login, worker_client};

const REDIRECT: &str = "https://app.bench.test/callback";

/// The query value of `name` in `url`.
fn param(url: &str, name: &str) -> Option<String> {
    reqwest::Url::parse(url)
        .ok()?
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// A worker's client that leaves redirects to its caller.
fn no_redirects(worker: usize) -> reqwest::Client {
    worker_client(worker)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("http client")
}

/// An admin key for registering the client.
fn service_key() -> anyhow::Result<String> {
    let now = chrono::Utc::now().timestamp();
    let claims = json!({"role": "service_role", "iat": now - 60, "exp": now + 3600});
    let key = jsonwebtoken::EncodingKey::from_secret(crate::server::SECRET.as_bytes());
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &key,
    )?)
}

/// What one connection needs: its user's token and the flow's URLs.
struct Flow {
    http: reqwest::Client,
    user_token: String,
    authorize: String,
    base: String,
    client_id: String,
    client_secret: String,
    verifier: String,
}

impl Flow {
    /// One sign-in; false on any refusal.
    async fn run(&self) -> anyhow::Result<bool> {
        let r = self.http.get(&self.authorize).send().await?;
        let to = r.headers().get("location").context("location")?.to_str()?;
        let id = param(to, "authorization_id").context("authorization_id")?;
        let d: Value = self
            .http
            .get(format!("{}/oauth/authorizations/{id}", self.base))
            .bearer_auth(&self.user_token)
            .send()
            .await?
            .json()
            .await?;
        let back = match d["redirect_url"].as_str() {
            Some(back) => back.to_string(),
            None => self.approve(&id).await?,
        };
        let code = param(&back, "code").context("code")?;
        let form = [
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", &self.verifier),
            ("client_id", &self.client_id),
            ("client_secret", &self.client_secret),
        ];
        let t = self
            .http
            .post(format!("{}/oauth/token", self.base))
            .form(&form)
            .send()
            .await?;
        Ok(t.status() == 200)
    }

    /// The first consent of the connection's user.
    async fn approve(&self, id: &str) -> anyhow::Result<String> {
        let r: Value = self
            .http
            .post(format!("{}/oauth/authorizations/{id}/consent", self.base))
            .bearer_auth(&self.user_token)
            .json(&json!({"action": "approve"}))
            .send()
            .await?
            .json()
            .await?;
        Ok(r["redirect_url"]
            .as_str()
            .context("redirect_url")?
            .to_string())
    }
}

impl Bench {
    pub(crate) async fn oauth_code_flow(&mut self, name: &str) -> anyhow::Result<()> {
        let base = self.srv.base.clone();
        let service = service_key()?;
        let r: Value = self
            .http
            .post(format!("{base}/admin/oauth/clients"))
            .bearer_auth(&service)
            .json(&json!({"redirect_uris": [REDIRECT], "token_endpoint_auth_method": "client_secret_post"}))
            .send()
            .await?
            .json()
            .await?;
        let client_id = r["client_id"].as_str().context("client_id")?.to_string();
        let client_secret = r["client_secret"].as_str().context("secret")?.to_string();
        let verifier = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([7u8; 32]);
        let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(sha2::Sha256::digest(verifier.as_bytes()));
        let mut authorize = reqwest::Url::parse(&format!("{base}/oauth/authorize"))?;
        authorize.query_pairs_mut().extend_pairs([
            ("client_id", client_id.as_str()),
            ("redirect_uri", REDIRECT),
            ("scope", "email"),
            ("state", "bench"),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ]);
        let mut flows = Vec::new();
        for i in 0..self.connections {
            let s = login(&self.http, &base, 1 + i as u64 % SMALL_USERS).await?;
            let user_token = s["access_token"].as_str().context("token")?.to_string();
            let flow = Flow {
                http: no_redirects(i),
                user_token,
                authorize: authorize.to_string(),
                base: base.clone(),
                client_id: client_id.clone(),
                client_secret: client_secret.clone(),
                verifier: verifier.clone(),
            };
            anyhow::ensure!(flow.run().await?, "a first OAuth sign-in failed");
            flows.push(Some(flow));
        }
        let flows = std::sync::Arc::new(std::sync::Mutex::new(flows));
        self.measure(
            name,
            move |i| {
                let flow = flows.lock().unwrap()[i].take();
                async move { flow.expect("one flow a connection") }
            },
            |flow| async move {
                let ok = flow.run().await.unwrap_or(false);
                (flow, ok)
            },
        )
        .await;
        Ok(())
    }
}
