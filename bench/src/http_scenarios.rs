//! The HTTP scenarios, through a server's API alone: users are created with
//! the admin API (a service-role token signed with the server's JWT
//! secret), so the same code measures castellan and any other
//! GoTrue-compatible server, GoTrue itself included.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use crate::load::{self, Measured};
use crate::seed::PASSWORD;
use crate::{client_at, ok_body};

/// Endpoints made so far in this run (each tags its users apart).
static TAGS: AtomicUsize = AtomicUsize::new(0);

/// A server reached over HTTP.
pub struct Endpoint {
    pub label: String,
    pub base: String,
    service: String,
    /// Its process, when known: memory is read from `/proc`.
    pub pid: Option<u32>,
    /// Where its castellan processes serve `/metrics` (none for another
    /// server): their database round trips are counted per request.
    pub metrics: Vec<String>,
    /// This run's mark in every address it creates, so a server that keeps
    /// its users can be measured again.
    tag: String,
}

/// The scenarios, in the order a round runs them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scenario {
    Health,
    User,
    SignIn,
    SignUp,
    Refresh,
    MagicLink,
}

impl Scenario {
    pub const ALL: [Scenario; 6] = [
        Scenario::Health,
        Scenario::User,
        Scenario::SignIn,
        Scenario::SignUp,
        Scenario::Refresh,
        Scenario::MagicLink,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Health => "GET /health",
            Scenario::User => "GET /user",
            Scenario::SignIn => "POST /token password",
            Scenario::SignUp => "POST /signup",
            Scenario::Refresh => "POST /token refresh chains",
            Scenario::MagicLink => "POST /otp magic link, each user once",
        }
    }
}

/// How each scenario is run.
pub struct Load {
    pub connections: usize,
    pub duration: Duration,
    /// Users created on each server; the magic links go to a `1 / rounds`
    /// share of them each round, so no user is asked twice.
    pub users: u64,
    pub rounds: usize,
}

impl Endpoint {
    pub fn new(label: &str, base: &str, secret: &str, pid: Option<u32>) -> anyhow::Result<Self> {
        let now = chrono::Utc::now().timestamp();
        let claims = json!({"role": "service_role", "iat": now - 60, "exp": now + 86_400});
        let service = jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )?;
        Ok(Endpoint {
            label: label.to_string(),
            base: base.trim_end_matches('/').to_string(),
            service,
            pid,
            metrics: Vec::new(),
            tag: format!(
                "{}-{now}-{}",
                std::process::id(),
                TAGS.fetch_add(1, Ordering::Relaxed)
            ),
        })
    }

    fn email(&self, i: u64) -> String {
        format!("cmp{}-{i}@example.com", self.tag)
    }

    /// The server's own name and version, as its `/health` says.
    pub async fn version(&self) -> String {
        let health: Value = match reqwest::get(format!("{}/health", self.base)).await {
            Ok(r) => r.json().await.unwrap_or_default(),
            Err(_) => Value::Null,
        };
        format!(
            "{} {}",
            health["name"].as_str().unwrap_or("?"),
            health["version"].as_str().unwrap_or("?")
        )
    }

    /// Creates `load.users` confirmed users with a password.
    pub async fn seed(&self, load: &Load) -> anyhow::Result<()> {
        let url = format!("{}/admin/users", self.base);
        let service = self.service.clone();
        let emails: Vec<String> = (0..load.users).map(|i| self.email(i)).collect();
        let emails = std::sync::Arc::new(emails);
        let m = load::each(
            load.connections,
            load.users,
            |i| async move { client_at(i) },
            move |c: reqwest::Client, n| {
                let (url, service, emails) = (url.clone(), service.clone(), emails.clone());
                async move {
                    let body = json!({"email": emails[n as usize], "password": PASSWORD, "email_confirm": true});
                    let ok = ok_body(c.post(&url).bearer_auth(&service).json(&body).send().await).await;
                    (c, ok)
                }
            },
        )
        .await;
        anyhow::ensure!(
            m.errors == 0,
            "{}: {} of {} users not created through /admin/users",
            self.label,
            m.errors,
            load.users
        );
        Ok(())
    }

    /// Signs the first `count` users in: each session's `field` (its access
    /// or refresh token), one per load worker.
    async fn tokens(&self, field: &str, count: usize) -> anyhow::Result<Vec<String>> {
        let http = client_at(0);
        let mut out = Vec::with_capacity(count);
        for i in 0..count as u64 {
            let r = http
                .post(format!("{}/token?grant_type=password", self.base))
                .json(&json!({"email": self.email(i), "password": PASSWORD}))
                .send()
                .await?;
            anyhow::ensure!(r.status() == 200, "{}: sign-in {}", self.label, r.status());
            let session: Value = r.json().await?;
            let token = session[field].as_str().unwrap_or_default().to_string();
            out.push(token);
        }
        Ok(out)
    }

    /// Runs `scenario` once (round `round`, counted from 0).
    pub async fn run(
        &self,
        scenario: Scenario,
        load: &Load,
        round: usize,
    ) -> anyhow::Result<Measured> {
        Ok(match scenario {
            Scenario::Health => self.health(load).await,
            Scenario::User => self.user(load).await?,
            Scenario::SignIn => self.sign_in(load).await,
            Scenario::SignUp => self.sign_up(load, round).await,
            Scenario::Refresh => self.refresh(load).await?,
            Scenario::MagicLink => self.magic_link(load, round).await,
        })
    }

    async fn health(&self, load: &Load) -> Measured {
        let url = format!("{}/health", self.base);
        load::run(
            load.connections,
            load.duration,
            |i| async move { client_at(i) },
            move |c: reqwest::Client| {
                let url = url.clone();
                async move {
                    let ok = ok_body(c.get(&url).send().await).await;
                    (c, ok)
                }
            },
        )
        .await
    }

    async fn user(&self, load: &Load) -> anyhow::Result<Measured> {
        let tokens = self.tokens("access_token", load.connections).await?;
        let url = format!("{}/user", self.base);
        Ok(load::run(
            load.connections,
            load.duration,
            |i| {
                let token = tokens[i].clone();
                async move { (client_at(i), token) }
            },
            move |(c, token): (reqwest::Client, String)| {
                let url = url.clone();
                async move {
                    let ok = ok_body(c.get(&url).bearer_auth(&token).send().await).await;
                    ((c, token), ok)
                }
            },
        )
        .await)
    }

    /// Sign-ins spread over every user.
    async fn sign_in(&self, load: &Load) -> Measured {
        let url = format!("{}/token?grant_type=password", self.base);
        let emails: std::sync::Arc<Vec<String>> =
            std::sync::Arc::new((0..load.users).map(|i| self.email(i)).collect());
        load::run(
            load.connections,
            load.duration,
            |i| async move { (client_at(i), i as u64) },
            move |(c, n): (reqwest::Client, u64)| {
                let (url, emails) = (url.clone(), emails.clone());
                async move {
                    let email = &emails[((n * 7919) % emails.len() as u64) as usize];
                    let body = json!({"email": email, "password": PASSWORD});
                    let ok = ok_body(c.post(&url).json(&body).send().await).await;
                    ((c, n + 64), ok)
                }
            },
        )
        .await
    }

    async fn sign_up(&self, load: &Load, round: usize) -> Measured {
        let url = format!("{}/signup", self.base);
        let tag = format!("{}-{round}", self.tag);
        load::run(
            load.connections,
            load.duration,
            |i| async move { (client_at(i), i, 0u64) },
            move |(c, w, n): (reqwest::Client, usize, u64)| {
                let (url, tag) = (url.clone(), tag.clone());
                async move {
                    let body = json!({"email": format!("signup{tag}-{w}-{n}@example.com"), "password": PASSWORD});
                    let ok = ok_body(c.post(&url).json(&body).send().await).await;
                    ((c, w, n + 1), ok)
                }
            },
        )
        .await
    }

    /// Each worker refreshes its own session's token, then the token that
    /// answered, and so on.
    async fn refresh(&self, load: &Load) -> anyhow::Result<Measured> {
        let tokens = self.tokens("refresh_token", load.connections).await?;
        let url = format!("{}/token?grant_type=refresh_token", self.base);
        Ok(load::run(
            load.connections,
            load.duration,
            |i| {
                let token = tokens[i].clone();
                async move { (client_at(i), token) }
            },
            move |(c, token): (reqwest::Client, String)| {
                let url = url.clone();
                async move {
                    let body = json!({"refresh_token": token});
                    match c.post(&url).json(&body).send().await {
                        Ok(r) if r.status() == 200 => {
                            let v: Value = r.json().await.unwrap_or_default();
                            match v["refresh_token"].as_str() {
                                Some(next) => ((c, next.to_string()), true),
                                None => ((c, token), false),
                            }
                        }
                        _ => ((c, token), false),
                    }
                }
            },
        )
        .await)
    }

    /// A magic link to each user of this round's share, once.
    async fn magic_link(&self, load: &Load, round: usize) -> Measured {
        let share = load.users / load.rounds.max(1) as u64;
        let url = format!("{}/otp", self.base);
        let emails: std::sync::Arc<Vec<String>> = std::sync::Arc::new(
            (0..share)
                .map(|i| self.email(round as u64 * share + i))
                .collect(),
        );
        load::each(
            load.connections,
            share,
            |i| async move { client_at(i) },
            move |c: reqwest::Client, n| {
                let (url, emails) = (url.clone(), emails.clone());
                async move {
                    let body = json!({"email": emails[n as usize], "create_user": false});
                    let ok = ok_body(c.post(&url).json(&body).send().await).await;
                    (c, ok)
                }
            },
        )
        .await
    }

    /// Resident memory now and at its peak, in MiB, when the process is known.
    pub fn rss_mib(&self) -> Option<(f64, f64)> {
        self.pid.map(crate::server::rss_mib)
    }

    /// Resets the process's peak-RSS mark.
    pub fn reset_peak(&self) {
        if let Some(pid) = self.pid {
            crate::server::reset_peak(pid);
        }
    }
}
