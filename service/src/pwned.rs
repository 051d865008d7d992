//! Leaked-password protection (GoTrue's `GOTRUE_PASSWORD_HIBP_*`): a new
//! password is looked up in Have I Been Pwned's range API by k-anonymity,
//! only the first five hex characters of its SHA-1 leaving the server; the
//! answer lists the leaked suffixes under that prefix.

use castellan_core::config::HibpConfig;
use castellan_core::{ApiError, ApiResult};
use oauth2::reqwest;
use sha1::{Digest, Sha1};

/// A range answer holds about a thousand 40-byte lines (padding included).
const ANSWER_LIMIT: usize = 512 * 1024;

#[derive(Clone)]
pub struct Pwned {
    cfg: HibpConfig,
    http: reqwest::Client,
}

impl Pwned {
    pub fn new(cfg: &HibpConfig) -> Result<Self, String> {
        let http = castellan_core::outside::client(cfg.timeout, Some(&cfg.user_agent))?;
        Ok(Self {
            cfg: cfg.clone(),
            http,
        })
    }

    /// Whether `password` is known leaked. A lookup that fails allows it
    /// (false), unless fail-closed is set: then 503 in GoTrue's words.
    pub async fn leaked(&self, password: &str) -> ApiResult<bool> {
        let hash = hex_upper(&Sha1::digest(password.as_bytes()));
        let (prefix, suffix) = hash.split_at(5);
        let outcome = self.lookup(prefix).await.map(|body| listed(&body, suffix));
        let label = match &outcome {
            Ok(true) => "pwned",
            Ok(false) => "clean",
            Err(_) => "unavailable",
        };
        metrics::counter!("castellan_password_hibp_total", "outcome" => label).increment(1);
        match outcome {
            Ok(found) => Ok(found),
            // GoTrue answers 500; a dependency down for now is a 503 here.
            Err(e) if self.cfg.fail_closed => Err(ApiError {
                message: "Unable to perform password strength check with HaveIBeenPwned.org."
                    .into(),
                ..ApiError::unavailable("hibp", e)
            }),
            Err(e) => {
                tracing::warn!(error = %e, "Have I Been Pwned could not be asked: pwned passwords are being allowed");
                Ok(false)
            }
        }
    }

    async fn lookup(&self, prefix: &str) -> Result<String, String> {
        let url = format!("{}/range/{prefix}", self.cfg.url.trim_end_matches('/'));
        let answer = self.http.get(url).send().await.map_err(|e| e.to_string())?;
        if answer.status() != reqwest::StatusCode::OK {
            return Err(format!("answered {}", answer.status()));
        }
        let body = castellan_core::outside::read_bounded(answer, ANSWER_LIMIT).await?;
        String::from_utf8(body).map_err(|e| e.to_string())
    }
}

/// Why `password` is weak (`length`, `characters`, `pwned`, in GoTrue's
/// order; empty when it is not); 400 past 72 bytes, before any lookup.
pub async fn strength(ctx: &crate::Ctx, password: &str) -> ApiResult<Vec<String>> {
    let mut reasons = castellan_core::validate::password_strength(&ctx.config.password, password)?;
    if let Some(pwned) = &ctx.pwned
        && pwned.leaked(password).await?
    {
        reasons.push("pwned".to_string());
    }
    Ok(reasons)
}

/// A new password: 422 `weak_password` with every reason when it is weak.
pub async fn require_strong(ctx: &crate::Ctx, password: &str) -> ApiResult<()> {
    let reasons = strength(ctx, password).await?;
    match reasons.is_empty() {
        true => Ok(()),
        false => Err(ApiError::weak_password(
            castellan_core::validate::weak_password_message(&ctx.config.password, &reasons),
            reasons,
        )),
    }
}

/// Whether a range answer (`SUFFIX:COUNT` lines) lists `suffix` with a
/// count above zero (zero: the API's padding).
fn listed(body: &str, suffix: &str) -> bool {
    body.lines().any(|line| {
        let Some((s, count)) = line.trim().split_once(':') else {
            return false;
        };
        s.eq_ignore_ascii_case(suffix) && count.trim().parse::<u64>().is_ok_and(|n| n > 0)
    })
}

fn hex_upper(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_suffix_is_leaked_only_with_a_count() {
        let body = "0018A45C4D1DEF81644B54AB7F969B88D65:1\r\n\
                    00D4F6E8FA6EECAD2A3AA415EEC418D38EC:0\n\
                    011053FD0102E94D6AE2F8B83D76FAF94F6:13";
        assert!(listed(body, "0018A45C4D1DEF81644B54AB7F969B88D65"));
        assert!(listed(body, "011053fd0102e94d6ae2f8b83d76faf94f6"));
        assert!(
            !listed(body, "00D4F6E8FA6EECAD2A3AA415EEC418D38EC"),
            "padding"
        );
        assert!(!listed(body, "FFFFF6E8FA6EECAD2A3AA415EEC418D38EC"));
    }

    #[test]
    fn only_five_characters_of_the_hash_are_the_prefix() {
        // SHA-1("password") = 5BAA61E4C9B93F3F0682250B6CF8331B7EE68FD8
        let hash = hex_upper(&Sha1::digest(b"password"));
        assert_eq!(hash, "5BAA61E4C9B93F3F0682250B6CF8331B7EE68FD8");
        assert_eq!(hash.split_at(5).0, "5BAA6");
    }
}
