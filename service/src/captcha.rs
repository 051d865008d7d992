//! CAPTCHA protection (GoTrue's `verifyCaptcha`): the token a client sends
//! as `gotrue_meta_security.captcha_token` is checked with the provider
//! (hCaptcha or Turnstile) before the route's handler runs. The provider
//! spends each token once; castellan keeps no state of its own for it.

use castellan_core::config::CaptchaConfig;
use castellan_core::{ApiError, ApiResult};
use oauth2::reqwest;
use serde::Deserialize;

/// The provider's answer (both document the same fields).
#[derive(Deserialize)]
struct Verdict {
    success: bool,
    #[serde(rename = "error-codes", default)]
    error_codes: Vec<String>,
}

/// The bytes of an answer read at most: a verdict is a few hundred.
const ANSWER_LIMIT: usize = 16 * 1024;

#[derive(Clone)]
pub struct Captcha {
    cfg: CaptchaConfig,
    http: reqwest::Client,
}

impl Captcha {
    pub fn new(cfg: &CaptchaConfig) -> Result<Self, String> {
        let http = castellan_core::outside::client(cfg.timeout, None)?;
        Ok(Self {
            cfg: cfg.clone(),
            http,
        })
    }

    /// Checks `token` (trimmed; none or blank is refused) for a client at
    /// `remote_ip`. A refusal is 400 `captcha_failed` in GoTrue's words; a
    /// provider that cannot be asked is a 503 in GoTrue's words.
    pub async fn verify(&self, token: Option<&str>, remote_ip: &str) -> ApiResult<()> {
        let token = token.map(str::trim).filter(|t| !t.is_empty());
        let outcome = match token {
            None => Err(refused("no captcha_token found".into())),
            Some(token) => self.ask(token, remote_ip).await,
        };
        let label = match &outcome {
            Ok(()) => "passed",
            Err(e) if e.status == 400 && token.is_none() => "missing",
            Err(e) if e.status == 400 => "refused",
            Err(_) => "unavailable",
        };
        metrics::counter!("castellan_captcha_total", "provider" => self.cfg.provider.name(), "outcome" => label)
            .increment(1);
        outcome
    }

    async fn ask(&self, token: &str, remote_ip: &str) -> ApiResult<()> {
        let form = [
            ("secret", self.cfg.secret.as_str()),
            ("response", token),
            ("remoteip", remote_ip),
        ];
        // GoTrue answers 500; castellan says what it is, a dependency down
        // for now: 503 with Retry-After, which the clients retry.
        let failed = |e: String| {
            tracing::warn!(provider = self.cfg.provider.name(), error = %e, "captcha verification failed");
            ApiError {
                message: "captcha verification process failed".into(),
                ..ApiError::unavailable("captcha", e)
            }
        };
        let answer = self
            .http
            .post(&self.cfg.verify_url)
            .form(&form)
            .send()
            .await
            .map_err(|e| failed(e.to_string()))?;
        let body = castellan_core::outside::read_bounded(answer, ANSWER_LIMIT)
            .await
            .map_err(failed)?;
        let verdict: Verdict = serde_json::from_slice(&body).map_err(|e| failed(e.to_string()))?;
        match verdict.success {
            true => Ok(()),
            false => Err(refused(verdict.error_codes.join(", "))),
        }
    }
}

fn refused(why: String) -> ApiError {
    ApiError::bad_request(
        "captcha_failed",
        format!("captcha protection: request disallowed ({why})"),
    )
}
